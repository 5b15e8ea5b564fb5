"""``caffe studio``: the DIGITS-style web app (datasets, training with live charts, classification, download).

Binds to 127.0.0.1 by default. Another address needs ``--token`` (or CAFFE_STUDIO_TOKEN), the password of
the login page and the bearer token of the REST API, unless ``--unsafe_no_auth`` says the network is trusted.
Jobs live in ``--jobs-dir`` (default CAFFE_STUDIO_JOBS or ``~/.neocaffe/studio``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from caffe.tools.flags import ToolParser, gflags_int, parse_flags, usage_error
from caffe.tools.registry import command
from caffe.util import glog
from caffe.util.http import is_loopback

log = logging.getLogger("caffe")

USAGE = """caffe studio [--host 127.0.0.1] [--port 5000] [--jobs-dir DIR] [--token T] [--devices cpu,cuda:0,...] \
[--unsafe_no_auth] [--data_roots DIR,...] [--allowed_hosts NAME,...] [--max_upload_mb 512] \
[--allow_python_layers]

Serve the studio web app: make image datasets, train and fine-tune models with live charts, classify
images and download trained models, from a browser (http://HOST:PORT/) or its REST API (/openapi.json)."""


def build_parser() -> ToolParser:
    p = ToolParser("caffe studio", USAGE)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=gflags_int, default=5000, help="TCP port (default 5000; 0: any free port)")
    p.add_argument(
        "--jobs-dir",
        "--jobs_dir",
        dest="jobs_dir",
        default=None,
        help="where jobs are kept (default $CAFFE_STUDIO_JOBS or ~/.neocaffe/studio)",
    )
    p.add_argument(
        "--token",
        default=None,
        help="password / bearer token required by every page and route (default $CAFFE_STUDIO_TOKEN)",
    )
    p.add_argument(
        "--devices",
        default=None,
        help="devices trainings may use, e.g. cpu or cpu,cuda:0,cuda:1 (default: cpu and every GPU)",
    )
    p.add_argument(
        "--data_roots",
        default=None,
        help="the only folders (separated by ',') that forms and API calls may name as image folders, "
        "list and labels files or images, symlinks followed (default: the current working directory; "
        "'/': any folder this process can read; '': none, uploads only)",
    )
    p.add_argument(
        "--allowed_hosts",
        default=None,
        help="dotted host names (separated by ',') the Host header may carry besides IP addresses, "
        "localhost and --host, e.g. the name of a machine serving the studio on a trusted network "
        "(default $CAFFE_STUDIO_ALLOWED_HOSTS); other names are refused (DNS rebinding)",
    )
    p.add_argument("--max_upload_mb", type=float, default=512.0, help="largest request body in MiB (default 512)")
    p.add_argument(
        "--stop_grace",
        type=float,
        default=3.0,
        help="once the server stops, a running training gets SIGINT and two of its measured iterations "
        "plus these seconds to finish its iteration and snapshot before it is terminated (other jobs: "
        "these seconds; default 3)",
    )
    p.add_bool("unsafe_no_auth", "serve a non-loopback address without a token (trusted networks only)")
    p.add_bool("access_log", "log every request (uvicorn's access log)")
    p.add_bool(
        "allow_python_layers",
        "accept networks with Python layers (run in worker processes, never in the server); off: refused",
    )
    return p


def _devices(text: str | None) -> list[str] | None:
    if text is None:
        return None
    devices = [d.strip().lower() for d in text.split(",") if d.strip()]
    for d in devices:
        if d != "cpu" and not (d.startswith("cuda:") and d[5:].isdigit()):
            raise ValueError(f"unknown device {d!r} (expected cpu or cuda:N)")
    return devices


@command("studio", "serve the studio web app (datasets, training, classification)")
def studio(argv: list[str]) -> int:
    parser = build_parser()
    args = parse_flags(parser, argv)
    if isinstance(args, int):
        return args
    if not 0 <= args.port < 65536:
        return usage_error(parser, f"--port must be 0..65535, got {args.port}")
    if args.max_upload_mb <= 0:
        return usage_error(parser, f"--max_upload_mb must be positive, got {args.max_upload_mb:g}")
    if not args.stop_grace >= 0:
        return usage_error(parser, f"--stop_grace must be a number of seconds >= 0, got {args.stop_grace:g}")
    try:
        devices = _devices(args.devices)
    except ValueError as e:
        return usage_error(parser, f"--devices: {e}")

    from caffe.studio.app import StudioConfig, default_jobs_dir, serve
    from caffe.studio.paths import default_data_roots

    if args.data_roots is None:
        data_roots = default_data_roots()
    else:
        data_roots = [Path(r.strip()).expanduser().resolve() for r in args.data_roots.split(",") if r.strip()]
        missing = [str(r) for r in data_roots if not r.is_dir()]
        if missing:
            return usage_error(parser, f"--data_roots: no such folder {', '.join(missing)}")

    config = StudioConfig(
        jobs_dir=default_jobs_dir() if args.jobs_dir is None else os.path.expanduser(args.jobs_dir),
        token=args.token or os.environ.get("CAFFE_STUDIO_TOKEN") or None,
        max_upload_bytes=int(args.max_upload_mb * (1 << 20)),
        devices=devices,
        host=args.host,
        port=args.port,
        unsafe_no_auth=args.unsafe_no_auth,
        stop_grace=args.stop_grace,
        allow_python_layers=args.allow_python_layers,
        data_roots=data_roots,
        allowed_hosts=None
        if args.allowed_hosts is None
        else [h.strip() for h in args.allowed_hosts.split(",") if h.strip()],
    )
    glog.route("uvicorn", "uvicorn.error", "uvicorn.access")  # uvicorn's messages as glog lines

    def ready(url: str) -> None:
        log.info("Studio jobs in %s; devices: %s", config.jobs_dir, ", ".join(config.devices or []))
        log.info("Forms may name server files under: %s", ", ".join(map(str, data_roots)) or "(nothing: uploads only)")
        if config.token:
            log.info("Login required (token set)")
        elif not is_loopback(args.host):
            log.warning("No authentication on %s: anyone who reaches it can run jobs", args.host)
        log.info("Studio at %s/ (Ctrl-C to stop)", url)

    with contextlib.suppress(KeyboardInterrupt):  # uvicorn has shut down cleanly and re-raises the signal
        serve(config, access_log=args.access_log, on_ready=ready)
    return 0
