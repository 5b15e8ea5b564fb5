"""``caffe zoo <list|download|publish|fetch_gist>``: the model zoo workflow of Caffe's ``scripts/``.

* ``caffe zoo list [--models_dir=models] [--quick]``: the model folders, what their readmes name
  and whether the caffemodel is here (and has the right SHA1);
* ``caffe zoo download DIR [--mirror=DIR|URL] [--force]``: ``scripts/download_model_binary.py DIR``;
* ``caffe zoo publish DIR [--token_env=GITHUB_TOKEN] [--api=URL] [--public]``:
  ``scripts/upload_model_to_gist.sh DIR``;
* ``caffe zoo fetch_gist GIST_ID [DIRNAME]``: ``scripts/download_model_from_gist.sh GIST_ID [DIRNAME]``.

The work is done by :mod:`caffe.zoo`.
"""

from __future__ import annotations

import logging
import sys

from caffe import zoo
from caffe.tools.flags import ToolParser, parse_flags
from caffe.tools.registry import command

log = logging.getLogger("caffe")

SUBCOMMANDS = {
    "list": "list the model folders: name, caffemodel, downloaded (SHA1 checked), license",
    "download": "download a model folder's caffemodel (resumed, SHA1-checked; --mirror for offline use)",
    "publish": "upload a model folder's text files as a GitHub Gist (or update its gist_id)",
    "fetch_gist": "download a Gist's files into DIRNAME/GIST_ID",
}

USAGE = "caffe zoo <list|download|publish|fetch_gist> [args]\n\n" + "\n".join(
    f"  {name:<11} {summary}" for name, summary in SUBCOMMANDS.items()
)


def _flag_alias(parser: ToolParser, name: str, **kwargs: object) -> None:
    """``--token_env`` also spelled ``--token-env`` (gflags style and the usual style)."""
    dashed = name.replace("_", "-")
    names = [f"--{name}"] + ([f"--{dashed}"] if dashed != name else [])
    parser.add_argument(*names, dest=name, **kwargs)  # type: ignore[arg-type]


def zoo_list(argv: list[str]) -> int:
    parser = ToolParser(
        "caffe zoo list",
        "caffe zoo list [--models_dir=models] [--quick]\n\nList the model folders of --models_dir "
        "(those with a readme.md): name, caffemodel file, whether it is downloaded, license.",
    )
    _flag_alias(parser, "models_dir", default="models", help="Folder holding the model folders")
    parser.add_bool("quick", "Do not check the SHA1 of downloaded caffemodels")
    args = parse_flags(parser, argv)
    if isinstance(args, int):
        return args
    rows = [("MODEL", "NAME", "CAFFEMODEL", "STATUS", "LICENSE")]
    for entry in zoo.list_models(args.models_dir):
        if isinstance(entry, tuple):
            folder, problem = entry
            rows.append((folder.name, "?", "?", f"unreadable readme: {problem.split(': ', 1)[-1]}", "?"))
            continue
        caffemodel, status = str(entry.front.get("caffemodel") or "-"), zoo.model_status(entry, verify=not args.quick)
        rows.append((entry.dir.name, entry.name, caffemodel, status, entry.license or "-"))
    if len(rows) == 1:
        print(f"No model folders (with a {zoo.README}) in {args.models_dir}")
        return 0
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    return 0


def zoo_download(argv: list[str]) -> int:
    parser = ToolParser(
        "caffe zoo download",
        "caffe zoo download DIR [--mirror=DIR|file://DIR|http://HOST/PATH] [--force] [--timeout=60]\n\n"
        "Download the caffemodel that DIR/readme.md names (caffemodel, caffemodel_url, sha1) into DIR,\n"
        "resuming a partial download and checking the SHA1. --mirror (default: $CAFFE_MODEL_MIRROR)\n"
        "takes the file, by its name, from a folder or another server instead.",
    )
    parser.add_argument("--mirror", default=None, help=f"Folder or URL holding the caffemodel (${zoo.MIRROR_ENV})")
    parser.add_bool("force", "Download again even if the file is there with the right SHA1")
    parser.add_argument("--timeout", type=float, default=60.0, help="Network timeout in seconds")
    parser.add_argument("--retries", type=int, default=3, help="Resume a broken connection this many times")
    parser.add_argument("dirname", metavar="DIR")
    args = parse_flags(parser, argv)
    if isinstance(args, int):
        return args
    path, downloaded = zoo.download_model(
        args.dirname, mirror=args.mirror, force=args.force, timeout=args.timeout, retries=max(0, args.retries)
    )
    check = "Caffe2 nets; SHA-256 checked where an LFS pointer gave one" if path.is_dir() else "SHA1 OK"
    if downloaded:
        print(f"Downloaded {path} ({check})")
    else:
        print(f"{path} is already downloaded ({check})")
    return 0


def zoo_publish(argv: list[str]) -> int:
    parser = ToolParser(
        "caffe zoo publish",
        "caffe zoo publish DIR [--token_env=GITHUB_TOKEN] [--api=https://api.github.com] [--public]\n\n"
        "Upload DIR's text files (not *.caffemodel*, not binary files) as a GitHub Gist described by\n"
        "the readme's name, or update the Gist named by the readme's gist_id. A new Gist's id is\n"
        "written into DIR/readme.md. The token is read from the environment variable --token_env.",
    )
    _flag_alias(parser, "token_env", default=zoo.DEFAULT_TOKEN_ENV, help="Environment variable holding the token")
    parser.add_argument("--api", default=None, help=f"GitHub API base URL (${zoo.GIST_API_ENV}, else api.github.com)")
    parser.add_bool("public", "Make a new Gist public (default: secret, as Caffe's script did)")
    parser.add_argument("--timeout", type=float, default=60.0, help="Network timeout in seconds")
    parser.add_argument("dirname", metavar="DIR")
    args = parse_flags(parser, argv)
    if isinstance(args, int):
        return args
    token = zoo.token_from_env(args.token_env)
    result = zoo.publish_model(args.dirname, token, api=args.api, public=args.public, timeout=args.timeout)
    if result.created:
        print(f"Uploaded a new Gist, id {result.gist_id}: {result.url}")
        print(f"Wrote gist_id: {result.gist_id} into {args.dirname}/{zoo.README}.")
        print("Share your model on the Caffe Model Zoo wiki: https://github.com/BVLC/caffe/wiki/Model-Zoo")
    else:
        print(f"Updated the Gist {result.gist_id}: {result.url}")
    log.info("Files: %s", ", ".join(result.files))
    return 0


def zoo_fetch_gist(argv: list[str]) -> int:
    parser = ToolParser(
        "caffe zoo fetch_gist",
        "caffe zoo fetch_gist GIST_ID [DIRNAME=models] [--api=https://api.github.com]\n\n"
        "Download the files of a Gist into DIRNAME/GIST_ID (a '/' in GIST_ID becomes '-').",
    )
    parser.add_argument("--api", default=None, help=f"GitHub API base URL (${zoo.GIST_API_ENV}, else api.github.com)")
    _flag_alias(parser, "token_env", default=zoo.DEFAULT_TOKEN_ENV, help="Environment variable with a token (optional)")
    parser.add_argument("--timeout", type=float, default=60.0, help="Network timeout in seconds")
    parser.add_argument("gist_id", metavar="GIST_ID")
    parser.add_argument("dirname", metavar="DIRNAME", nargs="?", default="models")
    args = parse_flags(parser, argv)
    if isinstance(args, int):
        return args
    token = zoo.token_from_env(args.token_env, required=False)
    folder = zoo.fetch_gist(args.gist_id, args.dirname, api=args.api, token=token or None, timeout=args.timeout)
    names = sorted(p.name for p in folder.iterdir())
    print(f"Fetched the Gist {args.gist_id} into {folder}: {', '.join(names)}")
    return 0


_RUN = {"list": zoo_list, "download": zoo_download, "publish": zoo_publish, "fetch_gist": zoo_fetch_gist}


@command("zoo", "model zoo: list model folders, download caffemodels, publish to / fetch from Gists")
def zoo_command(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 1
    sub = argv[0].replace("-", "_")
    run = _RUN.get(sub)
    if run is None:
        print(f"caffe zoo: unknown subcommand '{argv[0]}'\n\nusage: {USAGE}", file=sys.stderr)
        return 1
    return run(argv[1:])
