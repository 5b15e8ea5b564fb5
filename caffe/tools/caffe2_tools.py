"""``caffe convert_caffe2`` and ``caffe convert_to_caffe2``: Caffe2 model-zoo files to Caffe's and back.

    caffe convert_caffe2 INIT_NET PREDICT_NET OUT_DIR [--input_shape 1,3,224,224]
    caffe convert_to_caffe2 DEPLOY WEIGHTS OUT_DIR

The first writes ``deploy.prototxt`` and ``<net name>.caffemodel`` into OUT_DIR (the input shape comes from
``value_info.json`` beside the predict net unless given); the second writes ``init_net.pb``,
``predict_net.pb`` and ``value_info.json``. See :mod:`caffe.caffe2`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from caffe.tools.flags import ToolParser, parse_flags, usage_error
from caffe.tools.registry import command

log = logging.getLogger("caffe")

FROM_USAGE = "caffe convert_caffe2 INIT_NET PREDICT_NET OUT_DIR [--input_shape 1,3,224,224]"
TO_USAGE = "caffe convert_to_caffe2 DEPLOY WEIGHTS OUT_DIR"


def _shape(text: str) -> list[int] | None:
    try:
        dims = [int(d) for d in text.replace("x", ",").split(",") if d.strip()]
    except ValueError:
        return None
    return dims if dims and all(d > 0 for d in dims) else None


def _parser(name: str, usage: str, summary: str, inputs: tuple[str, str]) -> ToolParser:
    """The parser of ``caffe <name> INPUT1 INPUT2 OUT_DIR`` (positionals optional: usage errors are ours)."""
    parser = ToolParser(f"caffe {name}", usage, f"caffe {name}: {summary}")
    for positional in (*inputs, "out_dir"):
        parser.add_argument(positional, nargs="?", default="", help=f"{positional.upper()} (see the usage)")
    return parser


@command("convert_caffe2", "convert a Caffe2 model (init_net.pb + predict_net.pb) to a deploy prototxt + caffemodel")
def convert_caffe2(argv: list[str]) -> int:
    parser = _parser("convert_caffe2", FROM_USAGE, "Caffe2 model -> Caffe files", ("init_net", "predict_net"))
    parser.add_argument("--input_shape", default="", help="the input's shape (default: value_info.json)")
    args = parse_flags(parser, argv)
    if isinstance(args, int):
        return args
    if not (args.init_net and args.predict_net and args.out_dir):
        return usage_error(parser, "Need INIT_NET, PREDICT_NET and OUT_DIR.")
    shape = None
    if args.input_shape:
        shape = _shape(args.input_shape)
        if shape is None:
            return usage_error(parser, f"--input_shape {args.input_shape!r}: expected positive integers (1,3,224,224)")
    from caffe.caffe2.model import VALUE_INFO, Caffe2Files, convert_caffe2, write_caffe

    predict = Path(args.predict_net)
    info = predict.parent / VALUE_INFO
    files = Caffe2Files(Path(args.init_net), predict, info if info.is_file() else None)
    deploy, weights = convert_caffe2(files, shape)
    prototxt, caffemodel = write_caffe(deploy, weights, args.out_dir)
    log.info("Wrote %s (%d layers) and %s", prototxt, len(deploy.layer), caffemodel)
    return 0


@command("convert_to_caffe2", "convert a deploy prototxt + weights to a Caffe2 model (init_net.pb + predict_net.pb)")
def convert_to_caffe2(argv: list[str]) -> int:
    parser = _parser("convert_to_caffe2", TO_USAGE, "Caffe files -> Caffe2 model", ("deploy", "weights"))
    args = parse_flags(parser, argv)
    if isinstance(args, int):
        return args
    if not (args.deploy and args.weights and args.out_dir):
        return usage_error(parser, "Need DEPLOY, WEIGHTS and OUT_DIR.")
    from caffe.caffe2 import caffe_to_caffe2, write_caffe2

    model = caffe_to_caffe2(args.deploy, args.weights)
    files = write_caffe2(model, args.out_dir)
    count = len(model.predict_net.op)
    log.info("Wrote %s (%d operators), %s and %s", files.predict_net, count, files.init_net, files.value_info)
    return 0
