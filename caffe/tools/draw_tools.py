"""``caffe draw_net input_net_proto_file output_image_file [--rankdir=LR] [--phase=ALL]``: draw a net.

pycaffe's ``python/draw_net.py`` as a ``caffe`` command (``python/draw_net.py`` runs this). The image
format is the output file's extension (``.png``, ``.svg``, ``.pdf``, ``.jpg`` ...; ``.raw`` writes the
DOT source). V0/V1 prototxts are upgraded first. Beyond the original flags, ``--level`` and
``--stage`` select layers by their level/stage rules as ``caffe train`` does.
"""

from __future__ import annotations

import logging

from caffe.errors import CaffeError
from caffe.protoio import atomic_write, read_net_param
from caffe.tools.flags import ToolParser, gflags_int, parse_flags, usage_error
from caffe.tools.registry import command

log = logging.getLogger("caffe")

USAGE = "caffe draw_net input_net_proto_file output_image_file [--rankdir=LR] [--phase=TRAIN|TEST|ALL] [--display_lrm]"


def _parser() -> ToolParser:
    p = ToolParser("draw_net", USAGE, "Draw a graph of the net architecture.")
    p.add_argument("input_net_proto_file", help="Input network prototxt file")
    p.add_argument("output_image_file", help="Output image file (its extension picks the format)")
    p.add_argument(
        "--rankdir",
        default="LR",
        help="One of TB (top-bottom, i.e., vertical), RL (right-left, i.e., horizontal), or another valid "
        "dot option; see http://www.graphviz.org/doc/info/attrs.html#k:rankdir (default: LR)",
    )
    p.add_argument(
        "--phase",
        default="ALL",
        help="Which network phase to draw: can be TRAIN, TEST, or ALL. If ALL, then all layers are drawn "
        "regardless of phase. (default: ALL)",
    )
    p.add_bool(
        "display_lrm",
        "Use this flag to visualize the learning rate multiplier, when non-zero, for the learning layers "
        "(Convolution, Deconvolution, InnerProduct).",
    )
    p.add_argument("--level", type=gflags_int, default=None, help="net level for level rules (default 0)")
    p.add_argument("--stage", default=None, help="comma-separated net stages for stage rules")
    return p


@command("draw_net", "draw a net prototxt as a graph image (Graphviz)")
def draw_net(argv: list[str]) -> int:
    from caffe import draw

    parser = _parser()
    args = parse_flags(parser, argv)
    if isinstance(args, int):
        return args
    phase_name = args.phase.upper()
    if phase_name not in ("TRAIN", "TEST", "ALL"):
        return usage_error(parser, f"Unknown phase: {args.phase} (use TRAIN, TEST or ALL)")
    phase = None if phase_name == "ALL" else phase_name
    out = args.output_image_file
    ext = out.rsplit(".", 1)[1] if "." in out.replace("\\", "/").rsplit("/", 1)[-1] else ""
    if not ext:
        return usage_error(parser, f"{out}: no extension to tell the image format (.png, .svg, .pdf, .raw ...)")
    stages = [s for s in args.stage.split(",") if s] if args.stage is not None else None

    net = read_net_param(args.input_net_proto_file)
    print(f"Drawing net to {out}", flush=True)
    try:
        data = draw.draw_net(net, args.rankdir, ext, phase, args.display_lrm, level=args.level, stages=stages)
    except ValueError as e:
        raise CaffeError(f"{args.input_net_proto_file}: {e}") from None
    except (OSError, RuntimeError) as e:  # Graphviz's dot missing, or failing on the format
        raise CaffeError(f"cannot draw {out}: {e}") from None
    try:
        atomic_write(out, data)
    except OSError as e:
        raise CaffeError(f"cannot write {out}: {e}") from None
    return 0
