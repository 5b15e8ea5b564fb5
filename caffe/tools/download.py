"""``caffe download_data [FLAGS] URL [URL ...]``: fetch data files as Caffe's ``get_*.sh`` scripts do, verified.

What ``wget -c URL`` did in Caffe's scripts, plus what they lacked:

* **resume**: a download in progress is kept as ``NAME.part`` and continued with an HTTP range
  request on the next run (a server that ignores ranges sends the whole file again);
* **verification**: ``--md5``/``--sha1``, or the published checksums of files this tool knows
  (the four MNIST files). A mismatch removes the file and is an error (exit status 1); a complete
  file that is already there is verified and kept (or continued when it fails, as ``wget -c``
  would);
* **mirror**: ``--mirror DIR``, ``--mirror file:///DIR`` or ``--mirror http://host/path`` (default:
  the ``CAFFE_DATA_MIRROR`` environment variable) takes each file, by its name, from there instead
  of its URL, so everything can run offline. With a mirror set nothing else is contacted;
* alternates: a known file whose original host fails is fetched from its known mirrors (MNIST's
  yann.lecun.com has been unreliable; the checksums make any source safe);
* ``--gunzip``: unpack ``NAME.gz`` into ``NAME`` afterwards (and remove the ``.gz``, as gunzip does).

A progress bar is shown when stderr is a terminal. :func:`download` is also the machinery of
``caffe zoo download`` (:mod:`caffe.zoo`): it takes the name to save under (``filename``), a progress
display (``progress``), and tells a checksum failure (:class:`ChecksumError`) from a network one.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import os
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from caffe.errors import DataError
from caffe.tools.flags import ToolParser, parse_flags, usage_error
from caffe.tools.registry import command
from caffe.util.progress import Progress

log = logging.getLogger("caffe")

MIRROR_ENV = "CAFFE_DATA_MIRROR"
CHUNK = 1 << 20


@dataclass(frozen=True)
class KnownFile:
    md5: str = ""
    sha1: str = ""
    alternates: tuple[str, ...] = field(default_factory=tuple)  # other URLs serving the same bytes


_MNIST_ALT = "https://ossci-datasets.s3.amazonaws.com/mnist/"

#: Published checksums of files the scripts fetch (MNIST: the md5s every MNIST loader checks).
KNOWN_FILES: dict[str, KnownFile] = {
    "train-images-idx3-ubyte.gz": KnownFile(
        "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "6c95f4b05d2bf285e1bfb0e7960c31bd3b3f8a7d",
        (_MNIST_ALT + "train-images-idx3-ubyte.gz",),
    ),
    "train-labels-idx1-ubyte.gz": KnownFile(
        "d53e105ee54ea40749a09fcbcd1e9432",
        "2a80914081dc54586dbdf242f9805a6b8d2a15fc",
        (_MNIST_ALT + "train-labels-idx1-ubyte.gz",),
    ),
    "t10k-images-idx3-ubyte.gz": KnownFile(
        "9fb629c4189551a2d022fa330f9573f3",
        "c3a25af1f52dad7f726cce8cacb138654b760d48",
        (_MNIST_ALT + "t10k-images-idx3-ubyte.gz",),
    ),
    "t10k-labels-idx1-ubyte.gz": KnownFile(
        "ec29112dd5afa0611ce80d1b7f02629c",
        "763e7fa3757d93b0cdec073cef058b2004252c17",
        (_MNIST_ALT + "t10k-labels-idx1-ubyte.gz",),
    ),
}

USAGE = """caffe download_data [--output_dir=DIR] [--mirror=DIR|URL] [--md5=HEX] [--sha1=HEX] [--gunzip] URL [URL ...]

Download files into --output_dir (default: the current folder), resuming partial downloads and
verifying checksums. --mirror (default: $CAFFE_DATA_MIRROR) copies each file by name from a local
folder or another server instead."""


class _NetworkError(Exception):
    pass


class ChecksumError(DataError):
    """A downloaded file that is not the expected one (wrong MD5/SHA1); it has been removed."""


#: ``progress(total_bytes_or_None, name, initial_bytes)``: a context manager with ``update(n)``.
ProgressFactory = Callable[[int | None, str, int], AbstractContextManager[Any]]


def byte_progress(total: int | None, name: str, initial: int = 0) -> Progress:
    """The default progress display: a tqdm bar in bytes when stderr is a terminal, else nothing."""
    bar = Progress(total, name, "B", unit_scale=True)
    bar.update(initial)
    return bar


def file_name(url: str) -> str:
    name = os.path.basename(urllib.parse.urlparse(url).path)
    if not name:
        raise DataError(f"{url}: the URL names no file")
    return urllib.parse.unquote(name)


def hashes(path: Path) -> tuple[str, str]:
    """(md5, sha1) hex digests of a file."""
    md5, sha1 = hashlib.md5(usedforsecurity=False), hashlib.sha1(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            md5.update(chunk)
            sha1.update(chunk)
    return md5.hexdigest(), sha1.hexdigest()


def _mismatch(path: Path, md5: str, sha1: str) -> str:
    """'' when ``path`` has the expected checksums (those given), else what differs."""
    if not md5 and not sha1:
        return ""
    got_md5, got_sha1 = hashes(path)
    if sha1 and got_sha1 != sha1.lower():
        return f"SHA1 mismatch: expected {sha1.lower()}, got {got_sha1}"
    if md5 and got_md5 != md5.lower():
        return f"MD5 mismatch: expected {md5.lower()}, got {got_md5}"
    return ""


def _local_mirror(mirror: str) -> Path | None:
    """The folder of a local mirror (a path or a file:// URL), None for an http(s) mirror."""
    if re.match(r"^https?://", mirror, re.IGNORECASE):
        return None
    if mirror.lower().startswith("file://"):
        return Path(urllib.request.url2pathname(urllib.parse.urlparse(mirror).path))
    return Path(mirror)


def _copy(src: Path, part: Path, name: str, progress: ProgressFactory = byte_progress) -> None:
    size = src.stat().st_size
    log.info("Copying %s from the mirror %s (%d bytes)", name, src.parent, size)
    with open(src, "rb") as fin, open(part, "wb") as fout, progress(size, name, 0) as bar:
        while chunk := fin.read(CHUNK):
            fout.write(chunk)
            bar.update(len(chunk))


def _fetch(url: str, part: Path, name: str, timeout: float, progress: ProgressFactory = byte_progress) -> None:
    """Download ``url`` into ``part``, continuing what ``part`` already holds when the server allows."""
    start = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "neocaffe-download_data/1"}
    if start:
        headers["Range"] = f"bytes={start}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and start:  # nothing past what we have: the partial file is complete
            log.info("%s: the server has nothing past byte %d; the file is complete", name, start)
            return
        raise _NetworkError(f"HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", None) or e
        raise _NetworkError(str(reason)) from None
    with resp:
        length = resp.headers.get("Content-Length")
        mode = "wb"
        if start and resp.status == 206:
            m = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
            if m and int(m.group(1)) == start:
                mode = "ab"
                log.info("Resuming %s at byte %d", name, start)
        if mode == "wb":
            if start:
                log.info("%s: the server does not resume downloads; starting again", name)
            start = 0
        total = start + int(length) if length and length.isdigit() else None
        log.info("Downloading %s%s", url, f" ({total} bytes)" if total else "")
        try:
            with open(part, mode) as out, progress(total, name, start) as bar:
                while chunk := resp.read(CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as e:
            raise _NetworkError(f"connection lost after {part.stat().st_size} bytes ({e})") from None
    if total is not None and part.stat().st_size < total:
        raise _NetworkError(f"connection closed after {part.stat().st_size} of {total} bytes")


def gunzip_file(path: Path) -> Path:
    """Unpack ``NAME.gz`` into ``NAME`` (atomically) and remove ``NAME.gz``; returns ``NAME``."""
    if path.suffix != ".gz":
        raise DataError(f"{path}: --gunzip needs a .gz file")
    target = path.with_suffix("")
    tmp = target.with_name(f".{target.name}.gunzip-{os.getpid()}")
    try:
        with gzip.open(path, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, CHUNK)
        os.replace(tmp, target)
    except (OSError, EOFError) as e:
        tmp.unlink(missing_ok=True)
        raise DataError(f"{path}: cannot gunzip ({e})") from None
    path.unlink()
    log.info("Unzipped %s", target)
    return target


def download(
    url: str,
    output_dir: str | os.PathLike = ".",
    *,
    mirror: str | None = None,
    md5: str = "",
    sha1: str = "",
    gunzip: bool = False,
    timeout: float = 60.0,
    filename: str | None = None,
    progress: ProgressFactory = byte_progress,
    mirror_env: str = MIRROR_ENV,
) -> Path:
    """Fetch ``url`` (or its namesake in ``mirror``) into ``output_dir``, verified; returns the file's path.

    ``mirror`` None means the environment variable ``mirror_env`` (default ``CAFFE_DATA_MIRROR``); ''
    means no mirror.
    ``filename`` is the name to save as (and to look for in a mirror); default: the URL's file name.
    A checksum mismatch raises :class:`ChecksumError` (the file is removed); other failures
    :class:`~caffe.errors.DataError` (a partial download is kept as ``NAME.part`` for the next run).
    """
    name = filename or file_name(url)
    known = KNOWN_FILES.get(name, KnownFile())
    md5, sha1 = (md5 or known.md5).lower(), (sha1 or known.sha1).lower()
    mirror = os.environ.get(mirror_env, "") if mirror is None else mirror
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    dest, part = out / name, out / f"{name}.part"
    if gunzip and name.endswith(".gz") and dest.with_suffix("").exists() and not dest.exists():
        log.info("%s already exists", dest.with_suffix(""))
        return dest.with_suffix("")

    if dest.exists():
        problem = _mismatch(dest, md5, sha1)
        if not problem:
            log.info("%s already exists%s", dest, " (checksum OK)" if md5 or sha1 else "")
            return gunzip_file(dest) if gunzip else dest
        log.warning("%s exists but fails verification (%s); continuing it as a partial download", dest, problem)
        os.replace(dest, part)

    if mirror:
        local = _local_mirror(mirror)
        if local is not None:
            src = local / name
            if not src.is_file():
                raise DataError(
                    f"{name}: not found in the mirror {local} ({mirror_env}/--mirror); with a mirror set nothing "
                    "is downloaded from the internet"
                )
            _copy(src, part, name, progress)
            sources = []
        else:
            sources = [mirror.rstrip("/") + "/" + urllib.parse.quote(name)]
    else:
        sources = [url, *known.alternates]

    errors = []
    for i, source in enumerate(sources):
        try:
            _fetch(source, part, name, timeout, progress)
            break
        except _NetworkError as e:
            errors.append(f"{source}: {e}")
            more = i + 1 < len(sources)
            log.warning("cannot download %s: %s%s", source, e, "; trying the next source" if more else "")
    else:
        if sources:
            kept = f"; the partial file {part} is kept, run again to resume" if part.exists() else ""
            raise DataError(f"{name}: download failed ({'; '.join(errors)}){kept}")

    problem = _mismatch(part, md5, sha1)
    if problem:
        part.unlink(missing_ok=True)
        raise ChecksumError(f"{name}: {problem}; the downloaded file was removed (corrupt, or not the expected file)")
    os.replace(part, dest)
    log.info("Saved %s (%d bytes%s)", dest, dest.stat().st_size, ", checksum OK" if md5 or sha1 else "")
    return gunzip_file(dest) if gunzip else dest


@command("download_data", "download data files (or copy them from a mirror), resuming and verifying them")
def download_data(argv: list[str]) -> int:
    parser = ToolParser("caffe download_data", USAGE)
    parser.add_argument("--output_dir", default=".", help="Folder to save the files in")
    parser.add_argument("--mirror", default=None, help=f"Folder or URL to copy files from (default: ${MIRROR_ENV})")
    parser.add_argument("--md5", default="", help="Expected MD5 of the file (one URL only)")
    parser.add_argument("--sha1", default="", help="Expected SHA1 of the file (one URL only)")
    parser.add_bool("gunzip", "Unpack NAME.gz into NAME after the download")
    parser.add_argument("--timeout", type=float, default=60.0, help="Network timeout in seconds")
    parser.add_argument("urls", nargs="+", metavar="URL")
    args = parse_flags(parser, argv)
    if isinstance(args, int):
        return args
    if (args.md5 or args.sha1) and len(args.urls) > 1:
        return usage_error(parser, "--md5/--sha1 apply to one URL; give one URL per command")
    for digest, size in ((args.md5, 32), (args.sha1, 40)):
        if digest and not re.fullmatch(rf"[0-9a-fA-F]{{{size}}}", digest):
            return usage_error(parser, f"{digest!r} is not a {size}-digit hex checksum")
    for url in args.urls:
        download(
            url,
            args.output_dir,
            mirror=args.mirror,
            md5=args.md5,
            sha1=args.sha1,
            gunzip=args.gunzip,
            timeout=args.timeout,
        )
    return 0
