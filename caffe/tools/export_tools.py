"""``caffe export``: a deploy net and its weights as an ONNX model or a TorchScript module.

    caffe export --model deploy.prototxt --weights W.caffemodel -o model.onnx [--format onnx|torchscript]
                 [--batch N] [--dynamic_batch] [--opset 17] [--input_shape 1,3,224,224] [--fold]
                 [--outputs blob1,blob2] [--level L] [--stage S] [--noverify]

The format defaults to the output file's extension (``.onnx``; ``.pt``/``.pth``/``.ts`` for TorchScript).
``--input_shape`` sets the shape of the net's input (``name:1,3,224,224`` for one of several inputs;
repeat the flag or separate shapes with ``;``); ``--batch`` then sets axis 0 of every input. After
writing the file the command runs it (ONNX in onnxruntime when installed) and the net's own eager
forward on the same random input and logs the largest difference (``--noverify`` skips this).
See :mod:`caffe.export` for what the files contain and how to load them without neocaffe.
"""

from __future__ import annotations

import argparse
import logging

from caffe.errors import CaffeError
from caffe.tools.flags import ToolParser, gflags_int, parse_flags, usage_error
from caffe.tools.registry import command

log = logging.getLogger("caffe")

USAGE = (
    "caffe export --model deploy.prototxt [--weights W.caffemodel] -o out.onnx|out.pt [--format onnx|torchscript] "
    "[--batch N] [--dynamic_batch] [--opset 17] [--input_shape 1,3,224,224] [--fold] [--outputs a,b]"
)


def _parser() -> ToolParser:
    p = ToolParser("caffe export", USAGE, "caffe export: write a deploy net as ONNX or TorchScript")
    p.add_argument("--model", default="", help="the deploy net definition (prototxt)")
    p.add_argument("--weights", default="", help="the trained weights (.caffemodel or .caffemodel.h5)")
    p.add_argument("-o", "--o", "--output", dest="output", default="", help="the file to write")
    p.add_argument("--format", default="", help="onnx or torchscript (default: from the output file's extension)")
    p.add_argument("--batch", type=gflags_int, default=None, help="batch size of the exported graph (axis 0 of inputs)")
    p.add_bool("dynamic_batch", "make the batch axis symbolic (any batch size at run time)")
    p.add_argument("--opset", type=gflags_int, default=17, help="ONNX opset version, 13 or newer (default 17)")
    p.add_argument(
        "--input_shape",
        action="append",
        default=[],
        help="input shape, e.g. 1,3,224,224 or data:1,3,224,224 (repeat, or separate with ';', for several inputs)",
    )
    p.add_bool("fold", "fold BatchNorm/Scale/Bias (and the activation) into the preceding convolutions")
    p.add_argument("--outputs", default="", help="blobs to export as outputs, separated by ',' (default: the net's)")
    p.add_argument("--level", type=gflags_int, default=0, help="optional; network level (default 0)")
    p.add_argument("--stage", default="", help="optional; network stages, separated by ','")
    p.add_argument("--verify", action="store_true", default=True, help="run the exported file and compare (default)")
    p.add_argument("--noverify", action="store_false", dest="verify", help=argparse.SUPPRESS)
    p.bool_flags.append("verify")
    return p


def parse_input_shapes(specs: list[str]) -> dict[str, list[int]] | list[list[int]]:
    """``["1,3,224,224"]`` -> ``[[1, 3, 224, 224]]``; ``["data:1,3,8,8;im_info:1,3"]`` -> a dict by name."""
    named: dict[str, list[int]] = {}
    ordered: list[list[int]] = []
    for spec in specs:
        for part in (s.strip() for s in spec.split(";")):
            if not part:
                continue
            name, _, dims = part.rpartition(":")
            try:
                shape = [int(d) for d in dims.replace("x", ",").split(",") if d.strip()]
            except ValueError:
                raise ValueError(f"--input_shape {part!r}: expected integers such as 1,3,224,224") from None
            if not shape or any(d < 1 for d in shape):
                raise ValueError(f"--input_shape {part!r}: every dimension must be a positive integer")
            if name:
                named[name.strip()] = shape
            else:
                ordered.append(shape)
    if named and ordered:
        raise ValueError("--input_shape: name every shape (name:1,3,224,224) or none of them")
    return named or ordered


@command("export", "export a deploy net to ONNX or TorchScript")
def export(argv: list[str]) -> int:
    parser = _parser()
    args = parse_flags(parser, argv)
    if isinstance(args, int):
        return args
    if not args.model:
        return usage_error(parser, "Need a model definition to export (--model).")
    if not args.output:
        return usage_error(parser, "Need an output file (-o out.onnx or -o out.pt).")
    from caffe import export as ex

    fmt = args.format.lower()
    if fmt and fmt not in ex.FORMATS:
        return usage_error(parser, f"--format must be one of {', '.join(ex.FORMATS)}, got {args.format!r}")
    if not fmt:
        try:
            fmt = ex.format_for_path(args.output)
        except CaffeError as e:
            return usage_error(parser, f"{e} (--format onnx or --format torchscript)")
    try:
        shapes = parse_input_shapes(args.input_shape)
    except ValueError as e:
        return usage_error(parser, str(e))
    if args.batch is not None and args.batch < 1:
        return usage_error(parser, f"--batch must be positive, got {args.batch}")
    if fmt == "onnx" and args.opset < ex.MIN_OPSET:
        return usage_error(parser, f"--opset must be {ex.MIN_OPSET} or more, got {args.opset}")

    stages = [s for s in args.stage.split(",") if s]
    net = ex.load_net(args.model, args.weights or None, level=args.level, stages=stages)
    if not args.weights:
        log.warning("No --weights given: exporting the weights the fillers initialized (random)")
    outputs = [s for s in args.outputs.split(",") if s] or None
    kwargs = dict(
        batch=args.batch, input_shapes=shapes or None, outputs=outputs, dynamic_batch=args.dynamic_batch, fold=args.fold
    )
    if fmt == "onnx":
        result = ex.to_onnx(net, args.output, opset=args.opset, **kwargs)
    else:
        result = ex.to_torchscript(net, args.output, **kwargs)
    for line in ex.describe(result).splitlines():
        log.info("%s", line)
    if args.verify:
        try:
            diffs = ex.verify(net, result)
        except ex.ExportError as e:
            log.warning("Not verified: %s", e)
        else:
            for batch, diff in diffs.items():
                log.info("Verified batch %d: max abs difference from the net's own forward %.3g", batch, diff)
    return 0
