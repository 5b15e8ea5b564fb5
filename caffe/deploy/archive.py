"""Model archives (DIGITS' "Download Model" ``.tar.gz``/``.tgz``/``.tar``/``.zip``): checked, then unpacked once.

Archives are checked before anything is written (absolute names, ``..``, links and special files are
refused, and the unpacked size and member count are capped: :func:`archive_limits`) and unpacked once
into a cache keyed by their content (``$CAFFE_CACHE_DIR``, default ``~/.cache/neocaffe``), atomically, so
later calls reuse it. The caps hold while writing too (headers can lie); archives inside an archive stay
files. Whatever a corrupt archive makes the decompressors raise ends in a :class:`ModelFilesError`.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import re
import shutil
import stat
import struct
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from caffe.deploy.errors import ModelFilesError, PathLike
from caffe.limits import env_count, env_mib, format_bytes

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
#: Archive caps (:func:`archive_limits`): an archive may unpack to ARCHIVE_RATIO times its own size, but at
#: least ARCHIVE_FLOOR_BYTES and at most ARCHIVE_MAX_BYTES, in at most ARCHIVE_MAX_FILES members.
ARCHIVE_RATIO = 20
ARCHIVE_FLOOR_BYTES = 64 << 20
ARCHIVE_MAX_BYTES = 4 << 30
ARCHIVE_MAX_FILES = 10_000


def is_archive(path: PathLike) -> bool:
    """Whether ``path``'s name ends like an archive :func:`caffe.deploy.find_model` can unpack."""
    return Path(path).name.lower().endswith(ARCHIVE_SUFFIXES)


def archive_stem(path: Path) -> str:
    """The archive's name without its archive suffix."""
    name = path.name
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def cache_root() -> Path:
    """Where unpacked archives go: ``$CAFFE_CACHE_DIR``, else ``$XDG_CACHE_HOME/neocaffe`` (``~/.cache/neocaffe``)."""
    if os.environ.get("CAFFE_CACHE_DIR"):
        return Path(os.environ["CAFFE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "neocaffe"


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_name(archive: Path, name: str) -> None:
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if not name or name.startswith(("/", "\\")) or ".." in parts or re.match(r"^[A-Za-z]:", name):
        raise ModelFilesError(f"{archive}: refusing unsafe member {name!r} (absolute path or '..')")


@dataclass(frozen=True)
class ArchiveLimits:
    """Caps on what one archive may unpack to: total bytes of its files and number of members."""

    max_bytes: int
    max_files: int


def archive_limits(archive_bytes: int) -> ArchiveLimits:
    """The caps for an archive of ``archive_bytes``: it may unpack to ``ARCHIVE_RATIO`` times its size but at
    least ``ARCHIVE_FLOOR_BYTES`` and at most ``ARCHIVE_MAX_BYTES`` (``CAFFE_ARCHIVE_MAX_MB``), in at most
    ``ARCHIVE_MAX_FILES`` members (``CAFFE_ARCHIVE_MAX_FILES``)."""
    ceiling = env_mib("CAFFE_ARCHIVE_MAX_MB", ModelFilesError) or ARCHIVE_MAX_BYTES
    files = env_count("CAFFE_ARCHIVE_MAX_FILES", ModelFilesError) or ARCHIVE_MAX_FILES
    return ArchiveLimits(min(ceiling, max(ARCHIVE_FLOOR_BYTES, ARCHIVE_RATIO * archive_bytes)), files)


#: What a corrupt archive makes the zip, tar and decompression modules raise.
_CORRUPT = (
    tarfile.TarError,
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    EOFError,
    OSError,
    zlib.error,
    lzma.LZMAError,
    struct.error,
    UnicodeError,
    ValueError,
    OverflowError,
    RuntimeError,
    NotImplementedError,
)


@contextmanager
def _reading(archive: Path, doing: str) -> Iterator[None]:
    """Turn what a corrupt archive raises while ``doing`` into one ModelFilesError naming ``archive``."""
    try:
        yield
    except ModelFilesError:
        raise
    except RecursionError:
        raise ModelFilesError(f"{archive}: cannot {doing} the archive (nested too deeply)") from None
    except _CORRUPT as e:
        detail = " ".join(str(e).split()) or type(e).__name__
        raise ModelFilesError(f"{archive}: cannot {doing} the archive ({detail})") from None


def _is_zip(archive: Path) -> bool:
    return archive.name.lower().endswith(".zip")


@dataclass
class _Tally:
    """Members and bytes seen so far, refused past ``limits``."""

    archive: Path
    limits: ArchiveLimits
    files: int = 0
    size: int = 0

    def member(self, name: str) -> None:
        self.files += 1
        if self.files > self.limits.max_files:
            raise ModelFilesError(
                f"{self.archive}: more than {self.limits.max_files} members (at {name!r}); "
                "set CAFFE_ARCHIVE_MAX_FILES to allow more"
            )

    def add(self, name: str, n: int, declared: bool = True) -> None:
        self.size += n
        if self.size > self.limits.max_bytes:
            how = "unpacks to" if declared else "wrote"
            raise ModelFilesError(
                f"{self.archive}: {how} more than the {format_bytes(self.limits.max_bytes)} allowed (at member "
                f"{name!r}); set CAFFE_ARCHIVE_MAX_MB to allow more"
            )


def _zip_members(archive: Path, z: zipfile.ZipFile, tally: _Tally) -> Iterator[zipfile.ZipInfo]:
    """``z``'s members, each checked (name, type, compression, caps from the central directory)."""
    for info in z.infolist():
        tally.member(info.filename)
        _check_name(archive, info.filename)
        kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the writer set no Unix type
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise ModelFilesError(f"{archive}: refusing member {info.filename!r} (a link or special file)")
        if info.flag_bits & 0x1:
            raise ModelFilesError(f"{archive}: refusing member {info.filename!r} (encrypted)")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ModelFilesError(
                f"{archive}: refusing member {info.filename!r} (compression method {info.compress_type}; "
                "only stored and deflate members are unpacked)"
            )
        tally.add(info.filename, info.file_size)
        yield info


def _tar_members(archive: Path, t: tarfile.TarFile, tally: _Tally) -> Iterator[tarfile.TarInfo]:
    """``t``'s members, each checked as its header is read (so a bomb is refused before its end is read)."""
    while (m := t.next()) is not None:
        tally.member(m.name)
        _check_name(archive, m.name)
        if not (m.isfile() or m.isdir()):
            raise ModelFilesError(f"{archive}: refusing member {m.name!r} (a link or special file)")
        if m.issparse():
            raise ModelFilesError(f"{archive}: refusing member {m.name!r} (a sparse file)")
        tally.add(m.name, m.size)
        yield m
        t.members.clear()  # the names are checked as they come; keep none of them


def check_archive(archive: PathLike, limits: ArchiveLimits | None = None) -> list[str]:
    """The names of the files in ``archive``, after refusing unsafe members and archives over ``limits``
    (default :func:`archive_limits` of its size) from the headers alone (see the module)."""
    archive = Path(archive)
    names: list[str] = []
    with _reading(archive, "read"):
        tally = _Tally(archive, limits or archive_limits(archive.stat().st_size))
        if _is_zip(archive):
            with zipfile.ZipFile(archive) as z:
                names = [i.filename for i in _zip_members(archive, z, tally) if not i.is_dir()]
        else:
            with tarfile.open(archive) as t:
                names = [m.name for m in _tar_members(archive, t, tally) if m.isfile()]
    return names


def _write(src: IO[bytes], dest: Path, name: str, written: _Tally) -> None:
    """Copy ``src`` to a new file ``dest`` (never through a link), counting its bytes against the caps."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with os.fdopen(fd, "wb") as out:
        while chunk := src.read(1 << 20):
            written.add(name, len(chunk), declared=False)
            out.write(chunk)


def _unpack(archive: Path, dest: Path, limits: ArchiveLimits) -> None:
    """Write ``archive``'s members under ``dest``, checking each again and counting what is written."""
    tally, written = _Tally(archive, limits), _Tally(archive, limits)
    with _reading(archive, "unpack"):
        if _is_zip(archive):
            with zipfile.ZipFile(archive) as z:
                for info in _zip_members(archive, z, tally):
                    target = dest / info.filename
                    if info.is_dir():
                        target.mkdir(parents=True, exist_ok=True)
                    else:
                        with z.open(info) as src:
                            _write(src, target, info.filename, written)
        else:
            with tarfile.open(archive) as t:
                for m in _tar_members(archive, t, tally):
                    target = dest / m.name
                    if m.isdir():
                        target.mkdir(parents=True, exist_ok=True)
                    else:
                        src = t.extractfile(m)
                        assert src is not None  # a regular file
                        _write(src, target, m.name, written)
                # read the compressed stream to its end so that its checksum is verified (bounded by the caps)
                while chunk := t.fileobj.read(1 << 20):
                    written.add("(data after the end of the archive)", len(chunk), declared=False)


def extract_archive(
    archive: PathLike, *, cache_dir: PathLike | None = None, limits: ArchiveLimits | None = None
) -> Path:
    """Unpack a checked ``archive`` into the cache (once per content) and return the model's folder
    (the archive's single top-level folder if it has one). Archives are never unpacked recursively."""
    archive = Path(archive)
    try:
        limits = limits or archive_limits(archive.stat().st_size)
        check_archive(archive, limits)
        digest = _file_digest(archive)
    except OSError as e:
        raise ModelFilesError(f"{archive}: cannot read the archive ({e.strerror or e})") from None
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "models"
    target = root / f"{archive_stem(archive)}-{digest[:16]}"
    if not target.is_dir():
        try:
            root.mkdir(parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
        except OSError as e:
            raise ModelFilesError(f"{root}: cannot create the model cache ({e.strerror or e})") from None
        try:
            _unpack(archive, work, limits)
            os.replace(work, target)
        except OSError as e:
            if not target.is_dir():  # not merely another process that finished first
                raise ModelFilesError(f"{target}: cannot move the unpacked archive into place ({e})") from None
        finally:
            shutil.rmtree(work, ignore_errors=True)
    entries = [e for e in target.iterdir() if not e.name.startswith(".")]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else target
