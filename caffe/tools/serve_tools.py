"""``caffe serve [flags] MODEL [MODEL ...]``: a REST inference server for classification models and SSD detectors.

Each MODEL is ``NAME=PATH`` or ``PATH``: a model folder (a ``*deploy*.prototxt``, a ``.caffemodel``,
optionally ``mean.binaryproto`` and ``labels.txt``), a DIGITS model archive (``.tar.gz``/``.zip``),
or ``DEPLOY.prototxt,WEIGHTS.caffemodel``. ``--labels`` and ``--mean`` apply to models whose files
bring none. Endpoints, batching and limits: see :mod:`caffe.serve`.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from caffe.errors import CaffeError
from caffe.tools.flags import ToolParser, gflags_int, parse_flags, usage_error
from caffe.tools.registry import command
from caffe.util.http import run_app

if TYPE_CHECKING:
    from caffe.serve import ServedModel, ServeOptions

log = logging.getLogger("caffe")

USAGE = """caffe serve [--host 127.0.0.1] [--port 8000] [--max_batch 8] [--max_wait_ms 5] \
[--max_body_bytes 10485760] [--engine fused|compiled|eager] [--labels FILE] [--mean FILE|B,G,R] \
[--allow_python_layers] MODEL [MODEL ...]

Serve classification models and SSD detectors over HTTP: POST /models/NAME/predict or /predict (the
first MODEL): a multipart 'file', JSON {"url": ...} or {"base64": ...}, optional top_k; detectors: POST
/models/NAME/detect or /detect, optional threshold; GET /health, /models, /models/NAME, /openapi.json, /docs.
MODEL: NAME=PATH or PATH, PATH a model folder, a DIGITS archive or DEPLOY.prototxt,WEIGHTS.caffemodel."""


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return v


def _int_list(text: str) -> list[int] | None:
    if text.strip().lower() in ("", "none"):
        return None
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated channel indexes, got {text!r}") from None


def build_parser() -> ToolParser:
    p = ToolParser("caffe serve", USAGE)
    p.add_argument("models", nargs="*", metavar="MODEL", help="NAME=PATH or PATH")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=gflags_int, default=8000, help="TCP port (0: any free port)")
    p.add_argument("--max_batch", type=gflags_int, default=8, help="most requests run in one forward (1: no batching)")
    p.add_argument("--max_wait_ms", type=float, default=5.0, help="longest wait for a batch to fill")
    p.add_argument("--max_body_bytes", type=gflags_int, default=10 << 20, help="largest request body / fetched image")
    p.add_argument("--engine", choices=("fused", "compiled", "eager"), default=None, help="inference engine")
    p.add_argument("--labels", default=None, help="labels file (one per line) for models without one")
    p.add_argument("--mean", default=None, help="mean (.binaryproto, .npy or values B,G,R) for models without one")
    p.add_argument("--raw_scale", type=float, default=255.0, help="scale of [0, 1] pixels before the mean")
    p.add_argument("--input_scale", type=float, default=1.0, help="scale after the mean is subtracted")
    p.add_argument("--channel_swap", type=_int_list, default=[2, 1, 0], help="RGB -> net order (default 2,1,0: BGR)")
    p.add_argument("--url_timeout", type=_positive_float, default=10.0, help="seconds to fetch an image URL")
    p.add_argument("--max_queue", type=gflags_int, default=256, help="queued requests per model before 503")
    p.add_argument("--threads", type=gflags_int, default=0, help="preprocessing threads (0: one per core, <= 8)")
    p.add_argument("--docs", action="store_true", default=True, help="serve /docs (Swagger UI, from a CDN)")
    p.add_argument("--nodocs", action="store_false", dest="docs", help=argparse.SUPPRESS)
    p.add_argument("--allow_urls", action="store_true", default=True, help='fetch {"url": ...} images')
    p.add_argument("--noallow_urls", action="store_false", dest="allow_urls", help=argparse.SUPPRESS)
    p.add_bool("access_log", "log every request (uvicorn's access log)")
    p.add_bool("allow_python_layers", "serve models whose nets have Python layers (their code runs in the server)")
    p.bool_flags += ["docs", "allow_urls"]
    return p


@command("serve", "serve classification models and SSD detectors over HTTP (REST, batched)")
def serve(argv: list[str]) -> int:
    parser = build_parser()
    args = parse_flags(parser, argv)
    if isinstance(args, int):
        return args
    if not args.models:
        return usage_error(parser, "give at least one MODEL (NAME=PATH or PATH)")
    if not 0 <= args.port < 65536:
        return usage_error(parser, f"--port must be 0..65535, got {args.port}")

    import caffe
    from caffe.serve import ServeOptions, create_app, load_model

    opts = ServeOptions(
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_body_bytes=args.max_body_bytes,
        url_timeout_s=args.url_timeout,
        allow_urls=args.allow_urls,
        max_queue=args.max_queue,
        threads=args.threads,
        docs=args.docs,
        allow_python_layers=args.allow_python_layers,
    )
    try:
        opts.check()
    except CaffeError as e:
        return usage_error(parser, f"--{e}")
    if args.engine:
        caffe.set_inference_engine(args.engine)
    engine = caffe.inference_engine()
    models = []
    for spec in args.models:
        model = load_model(
            spec,
            labels=args.labels,
            mean=args.mean,
            raw_scale=args.raw_scale,
            channel_swap=args.channel_swap,
            input_scale=args.input_scale,
            engine=engine,
            allow_python_layers=opts.allow_python_layers,
        )
        if engine == "compiled":
            log.info("%s: compiling the batch shapes (torch.compile)", model.name)
            model.warm_up(args.max_batch)
        models.append(model)
    app = create_app(models, opts)
    return run_server(app, args.host, args.port, models, opts, access_log=args.access_log)


def run_server(
    app: object, host: str, port: int, models: Sequence[ServedModel], opts: ServeOptions, access_log: bool = False
) -> int:
    """Run ``app`` under uvicorn until interrupted, logging through the ``caffe`` logger (glog lines)."""
    from caffe.serve import log_startup

    run_app(app, host, port, access_log, lambda bound: log_startup(models, host, bound, opts))
    return 0
