"""Deployable models: find a model's files, read its labels and mean, decode images, write DIGITS archives.

A deployable model is a ``deploy.prototxt``, its weights, and optionally a mean and a labels file. It
comes as a folder, as a DIGITS "Download Model" archive (``.tar.gz``/``.tgz``/``.tar``/``.zip``), or as
explicit files; :func:`find_model` turns any of these into a :class:`ModelFiles`:

* deploy: ``deploy.prototxt``, else the only ``*deploy*.prototxt``, else the only ``.prototxt`` whose
  name does not say solver, train, val or original (as Caffe's ``lenet.prototxt``);
* weights: the newest snapshot (``<prefix>_iter_N.caffemodel``, highest N), else the only
  ``.caffemodel`` (or ``.caffemodel.h5``); several non-snapshot candidates are an error listing them;
* mean: ``mean.binaryproto``, ``mean.npy``, else the only ``*.binaryproto`` / ``*mean*.npy``;
* labels: ``labels.txt``, ``synset_words.txt``, ``synset.txt``, else the only ``*label*.txt``;
* info: ``info.json`` (DIGITS' job description) when present.

Archives are checked before anything is written (absolute names, ``..``, links and special files are
refused, and the unpacked size and member count are capped: :func:`archive_limits`) and unpacked once
into a cache keyed by their content (``$CAFFE_CACHE_DIR``, default ``~/.cache/neocaffe``), atomically, so
later calls reuse it. The caps hold while writing too (headers can lie); archives inside an archive stay
files. Whatever a corrupt archive makes the decompressors raise ends in a :class:`ModelFilesError`.

:func:`package_model` writes the archive DIGITS' "Download Model" gives, with DIGITS' file names:
``deploy.prototxt``, ``mean.binaryproto``, ``solver.prototxt``, ``info.json``, ``original.prototxt``,
``labels.txt``, ``snapshot_iter_N.caffemodel``, ``train_val.prototxt``.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
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
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

import numpy as np

from caffe.errors import DataError
from caffe.limits import env_count, env_mib, format_bytes, read_file
from caffe.protoio import atomic_write

PathLike = str | os.PathLike

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
WEIGHTS_SUFFIXES = (".caffemodel", ".caffemodel.h5")
LABEL_NAMES = ("labels.txt", "synset_words.txt", "synset.txt")
#: Archive caps (:func:`archive_limits`): an archive may unpack to ARCHIVE_RATIO times its own size, but at
#: least ARCHIVE_FLOOR_BYTES and at most ARCHIVE_MAX_BYTES, in at most ARCHIVE_MAX_FILES members.
ARCHIVE_RATIO = 20
ARCHIVE_FLOOR_BYTES = 64 << 20
ARCHIVE_MAX_BYTES = 4 << 30
ARCHIVE_MAX_FILES = 10_000
#: The largest info.json and labels file read.
MAX_TEXT_BYTES = 64 << 20
#: Decoded images above this many pixels are refused (decompression bombs).
MAX_PIXELS = 64_000_000

_SNAPSHOT = re.compile(r"^(?P<prefix>.*)_iter_(?P<iter>\d+)\.caffemodel(\.h5)?$")


class ModelFilesError(DataError):
    """A folder, archive or file that does not give a usable model, or a model file that cannot be read."""


class ImageDecodeError(DataError, OSError):
    """Bytes that are not a readable image."""


@dataclass
class ModelFiles:
    """The files of one deployable model (mean and labels optional); ``folder`` is where they were found."""

    deploy: Path
    weights: Path
    mean: Path | None = None
    labels: Path | None = None
    folder: Path | None = None
    info: dict[str, Any] | None = None
    name: str = field(default="")


# ---------------------------------------------------------------------------------------------- finding


def is_archive(path: PathLike) -> bool:
    """Whether ``path``'s name ends like an archive :func:`find_model` can unpack."""
    return Path(path).name.lower().endswith(ARCHIVE_SUFFIXES)


def _archive_stem(path: Path) -> str:
    name = path.name
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def find_model(
    path_or_archive: PathLike | None = None,
    *,
    deploy: PathLike | None = None,
    weights: PathLike | None = None,
    mean: PathLike | None = None,
    labels: PathLike | None = None,
    cache_dir: PathLike | None = None,
) -> ModelFiles:
    """The files of a model: a folder, a DIGITS archive, a ``.prototxt`` or ``.caffemodel`` (whose folder is
    searched), and/or explicit files, which win over what is found (see the module)."""
    folder: Path | None = None
    name = ""
    if path_or_archive is not None:
        p = Path(path_or_archive)
        if p.is_dir():
            folder, name = p, p.resolve().name
        elif p.is_file() and is_archive(p):
            folder, name = extract_archive(p, cache_dir=cache_dir), _archive_stem(p)
        elif p.is_file() and p.suffix == ".prototxt":
            deploy, folder, name = deploy or p, p.parent, p.parent.resolve().name
        elif p.is_file() and p.name.endswith(WEIGHTS_SUFFIXES):
            weights, folder, name = weights or p, p.parent, p.parent.resolve().name
        elif p.exists():
            raise ModelFilesError(
                f"{p}: not a model folder, a model archive ({', '.join(ARCHIVE_SUFFIXES)}), "
                "a .prototxt or a .caffemodel"
            )
        else:
            raise ModelFilesError(f"{p}: no such model folder or file")
    explicit = {
        "deploy prototxt": deploy,
        "weights": weights,
        "mean": mean,
        "labels": labels,
    }
    for what, f in explicit.items():
        if f is not None and not Path(f).is_file():
            raise ModelFilesError(f"{what} file {f}: not found")
    if deploy is None:
        if folder is None:
            raise ModelFilesError("no model given: name a model folder or archive, or the deploy prototxt")
        deploy = _pick_deploy(folder)
    deploy = Path(deploy)
    if weights is None:
        weights = _pick_weights(folder if folder is not None else deploy.parent)
    files = ModelFiles(deploy, Path(weights), folder=folder, name=name or deploy.stem)
    files.mean = Path(mean) if mean is not None else (_pick_mean(folder) if folder is not None else None)
    files.labels = Path(labels) if labels is not None else (_pick_labels(folder) if folder is not None else None)
    if folder is not None and (folder / "info.json").is_file():
        files.info = _read_info(folder / "info.json")
    return files


def _only(folder: Path, found: list[Path], what: str, how: str) -> Path | None:
    """The one candidate, None for none, an error listing them for several."""
    if len(found) > 1:
        names = ", ".join(q.name for q in found)
        raise ModelFilesError(f"{folder}: {len(found)} candidate {what} files ({names}); {how}")
    return found[0] if found else None


def _pick_deploy(folder: Path) -> Path:
    if (folder / "deploy.prototxt").is_file():
        return folder / "deploy.prototxt"
    protos = sorted(folder.glob("*.prototxt"))
    named = [q for q in protos if "deploy" in q.name.lower()]
    if not named:  # Caffe's examples: lenet.prototxt beside lenet_solver.prototxt and lenet_train_test.prototxt
        named = [q for q in protos if not re.search(r"solver|train|val|original", q.name.lower())]
    found = _only(folder, named, "deploy prototxt", "name the deploy prototxt")
    if found is None:
        seen = ", ".join(q.name for q in protos) or "no .prototxt files"
        raise ModelFilesError(f"{folder}: no deploy prototxt (deploy.prototxt or *deploy*.prototxt); found {seen}")
    return found


def _pick_weights(folder: Path) -> Path:
    found = sorted(q for q in folder.iterdir() if q.is_file() and q.name.endswith(WEIGHTS_SUFFIXES))
    if not found:
        raise ModelFilesError(f"{folder}: no weights (.caffemodel or .caffemodel.h5) found")
    snapshots = [(q, _SNAPSHOT.match(q.name)) for q in found]
    snapshots = [(q, m) for q, m in snapshots if m]
    if snapshots:
        prefixes = sorted({m["prefix"] for _, m in snapshots})
        if len(prefixes) > 1:
            raise ModelFilesError(
                f"{folder}: snapshots of {len(prefixes)} trainings ({', '.join(p + '_iter_*' for p in prefixes)}); "
                "name the weights to use"
            )
        # the highest iteration; .caffemodel before .caffemodel.h5 at the same one
        return max(snapshots, key=lambda qm: (int(qm[1]["iter"]), qm[0].suffix == ".caffemodel"))[0]
    only = _only(folder, found, "weights", "none is a snapshot (*_iter_N.caffemodel): name the weights to use")
    assert only is not None
    return only


def _pick_mean(folder: Path) -> Path | None:
    for name in ("mean.binaryproto", "mean.npy"):
        if (folder / name).is_file():
            return folder / name
    found = sorted(folder.glob("*.binaryproto")) or sorted(folder.glob("*mean*.npy"))
    return _only(folder, found, "mean", "name the mean to use")


def _pick_labels(folder: Path) -> Path | None:
    for name in LABEL_NAMES:
        if (folder / name).is_file():
            return folder / name
    return _only(folder, sorted(folder.glob("*label*.txt")), "labels", "name the labels to use")


def _read_info(path: Path) -> dict[str, Any]:
    data = read_file(path, "info.json", max_bytes=MAX_TEXT_BYTES, error=ModelFilesError)
    try:
        info = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ModelFilesError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ModelFilesError(f"{path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg})") from None
    except RecursionError:
        raise ModelFilesError(f"{path}: JSON nested too deeply") from None
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        raise ModelFilesError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(info, dict):
        raise ModelFilesError(f"{path}: expected a JSON object, got {type(info).__name__}")
    return info


# ---------------------------------------------------------------------------------------------- archives


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
    tarfile.TarError, zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, zlib.error, lzma.LZMAError,
    struct.error, UnicodeError, ValueError, OverflowError, RuntimeError, NotImplementedError,
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
    target = root / f"{_archive_stem(archive)}-{digest[:16]}"
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


# ---------------------------------------------------------------------------------------------- reading


def read_labels(path: PathLike) -> list[str]:
    """One label per line (surrounding blanks and trailing empty lines removed)."""
    if not os.path.lexists(path):
        raise ModelFilesError(f"labels file {path}: not found")
    data = read_file(path, "labels file", max_bytes=MAX_TEXT_BYTES, error=ModelFilesError)
    text = data.decode("utf-8", errors="replace")
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise ModelFilesError(f"labels file {path}: empty")
    return lines


def read_mean(path: PathLike) -> np.ndarray:
    """A mean file (``.binaryproto`` BlobProto or ``.npy``) as a float32 C x H x W array (C values: C x 1 x 1)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFilesError(f"mean file {path}: not found")
    if path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ModelFilesError(f"mean file {path}: not a NumPy array file ({e})") from None
    else:
        from caffe.io import blobproto_to_array
        from caffe.proto import caffe_pb2
        from caffe.protoio import read_binary

        arr = blobproto_to_array(read_binary(path, caffe_pb2.BlobProto(), "mean binaryproto"))
    arr = np.asarray(arr, dtype=np.float32)
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 1:
        arr = arr[:, np.newaxis, np.newaxis]
    elif arr.ndim == 2:
        arr = arr[np.newaxis]
    if arr.ndim != 3 or arr.size == 0:
        raise ModelFilesError(f"mean file {path}: expected C x H x W values, got shape {arr.shape}")
    return arr


def parse_mean(spec: PathLike) -> np.ndarray:
    """A mean given as a file (see :func:`read_mean`) or as values ``"104,117,123"`` (C x 1 x 1)."""
    text = os.fspath(spec)
    if re.fullmatch(r"\s*[-+0-9.eE]+(\s*,\s*[-+0-9.eE]+)*\s*", str(text)) and not Path(text).exists():
        try:
            return np.array([float(v) for v in text.split(",")], dtype=np.float32)[:, np.newaxis, np.newaxis]
        except ValueError:
            raise ModelFilesError(f"mean {text!r}: expected a file or comma-separated numbers") from None
    return read_mean(text)


def channel_mean(mean: np.ndarray) -> np.ndarray:
    """The per-channel mean (C values) of a C x H x W mean, as Caffe's classification example and DIGITS use it."""
    return np.asarray(mean, dtype=np.float32).reshape(mean.shape[0], -1).mean(axis=1)


# ---------------------------------------------------------------------------------------------- images


def decode_image(
    data: bytes, *, color: bool = True, size: tuple[int, int] | None = None, source: str = "image"
) -> np.ndarray:
    """Image bytes as ``caffe.io.load_image`` gives a file: H x W x (3 RGB | 1) float32 in [0, 1], resized to
    ``size`` = (H, W) with Pillow's bilinear filter when given. Alpha is dropped, palettes expanded, 16-bit
    images scaled to [0, 1], EXIF orientation not applied. ``source`` names the bytes in errors."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ImageDecodeError(f"{source}: empty, not an image")
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise ImageDecodeError(f"{source}: {w} x {h} pixels, more than the {MAX_PIXELS} accepted")
            im.load()
            return pil_to_array(im, color=color, size=size)
    except ImageDecodeError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        kind = "not an image" if isinstance(e, UnidentifiedImageError) else f"cannot decode the image ({e})"
        raise ImageDecodeError(f"{source}: {kind}") from None


def pil_to_array(im: Any, *, color: bool = True, size: tuple[int, int] | None = None) -> np.ndarray:
    """A Pillow image as H x W x K float32 in [0, 1] (see :func:`decode_image`); 8-bit images are resized by
    Pillow (bilinear), deeper ones by OpenCV."""
    from PIL import Image

    full = 65535.0 if im.mode.startswith("I;16") else {"I": float(2**31 - 1), "F": 1.0}.get(im.mode)
    if full is None:  # 8 bits per channel
        if im.mode in ("P", "PA"):  # palettes may carry transparency
            im = im.convert("RGBA")
        im = im.convert("RGB" if color else "L")
        if size is not None and im.size != (size[1], size[0]):
            im = im.resize((size[1], size[0]), Image.BILINEAR)
        arr = np.asarray(im, dtype=np.float32) * np.float32(1.0 / 255.0)
    else:
        arr = np.asarray(im, dtype=np.float32) * np.float32(1.0 / full)
    if arr.ndim == 2:
        arr = arr[:, :, np.newaxis]
    if size is not None and arr.shape[:2] != tuple(size):
        import cv2

        arr = cv2.resize(arr, (size[1], size[0]), interpolation=cv2.INTER_LINEAR).reshape(size[0], size[1], -1)
    if color and arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif not color and arr.shape[2] != 1:
        arr = arr.mean(axis=2, keepdims=True)
    return np.ascontiguousarray(arr, dtype=np.float32)


# ---------------------------------------------------------------------------------------------- packaging


def _iteration_of(weights: Path, solver: PathLike | None) -> int:
    m = re.search(r"_iter_(\d+)", weights.name)
    if m:
        return int(m.group(1))
    if solver is not None:
        from caffe.protoio import read_solver_param

        return int(read_solver_param(solver).max_iter)
    return 0


def input_shape(deploy: PathLike) -> list[int] | None:
    """The shape of the deploy net's first ``Input`` (legacy ``input:`` fields upgraded), or None."""
    from caffe.protoio import read_net_param

    for layer in read_net_param(deploy).layer:
        if layer.type == "Input" and layer.input_param.shape:
            return [int(d) for d in layer.input_param.shape[0].dim]
    return None


def _mean_bytes(mean: Path) -> bytes:
    """The mean as DIGITS writes ``mean.binaryproto``: a BlobProto with num/channels/height/width."""
    from caffe.proto import caffe_pb2

    arr = read_mean(mean)
    c, h, w = arr.shape
    blob = caffe_pb2.BlobProto(num=1, channels=c, height=h, width=w)
    blob.data.extend(arr.ravel().tolist())
    return blob.SerializeToString()


def package_model(
    out_path: PathLike,
    *,
    deploy: PathLike,
    weights: PathLike,
    solver: PathLike | None = None,
    train_val: PathLike | None = None,
    original: PathLike | None = None,
    mean: PathLike | None = None,
    labels: PathLike | None = None,
    info: dict[str, Any] | None = None,
    fmt: str | None = None,
) -> Path:
    """Write a DIGITS-style model archive (``.tar.gz``/``.tgz``/``.tar``/``.zip`` by ``out_path``'s suffix or
    ``fmt``) atomically and return its path.

    Members, under DIGITS' names: deploy.prototxt, snapshot_iter_N.caffemodel (N from the weights' name,
    else the solver's max_iter), and when given solver.prototxt, train_val.prototxt, original.prototxt
    (the network as written; defaults to ``train_val``), mean.binaryproto (converted from ``.npy`` if need
    be), labels.txt; and info.json (DIGITS' keys: framework, caffe flavor/version, image dimensions, the
    file names, ...; ``info`` adds or overrides keys). The deploy net is checked to parse first.
    """
    from caffe import __version__

    out = Path(out_path)
    lower = out.name.lower()
    fmt = fmt or ("zip" if lower.endswith(".zip") else "tar" if lower.endswith(".tar") else "tar.gz")
    if fmt not in ("tar.gz", "tgz", "tar", "zip"):
        raise ModelFilesError(f"package format {fmt!r}: expected tar.gz, tar or zip")
    given = {"deploy": deploy, "weights": weights, "solver": solver, "train_val": train_val}
    given.update({"original": original, "mean": mean, "labels": labels})
    for what, f in given.items():
        if f is not None and not Path(f).is_file():
            raise ModelFilesError(f"{what} file {f}: not found")
    deploy, weights = Path(deploy), Path(weights)
    shape = input_shape(deploy)
    if labels is not None:
        read_labels(labels)  # refuse an empty or unreadable labels file now
    iteration = _iteration_of(weights, solver)
    weights_name = f"snapshot_iter_{iteration}.caffemodel" + (".h5" if weights.name.endswith(".h5") else "")
    original = original if original is not None else train_val
    members: list[tuple[str, Path | bytes]] = [("deploy.prototxt", deploy)]
    if mean is not None:
        members.append(("mean.binaryproto", _mean_bytes(Path(mean))))
    if solver is not None:
        members.append(("solver.prototxt", Path(solver)))
    if original is not None:
        members.append(("original.prototxt", Path(original)))
    if labels is not None:
        members.append(("labels.txt", Path(labels)))
    members.append((weights_name, weights))
    if train_val is not None:
        members.append(("train_val.prototxt", Path(train_val)))
    names = dict(members)
    record: dict[str, Any] = {
        "framework": "caffe",
        "caffe flavor": "neocaffe",
        "caffe version": __version__,
        "name": _archive_stem(out),
        "creation time": datetime.datetime.now().isoformat(sep=" "),
        "deploy file": "deploy.prototxt",
        "snapshot file": weights_name,
        "image resize mode": "squash",
    }
    if shape is not None and len(shape) == 4:  # DIGITS' [height, width, channels]
        record["image dimensions"] = [shape[2], shape[3], shape[1]]
    optional = {
        "mean file": "mean.binaryproto",
        "labels file": "labels.txt",
        "solver file": "solver.prototxt",
        "train_val file": "train_val.prototxt",
        "model file": "original.prototxt",
    }
    record.update({key: name for key, name in optional.items() if name in names})
    record.update(info or {})
    members.append(("info.json", json.dumps(record, indent=4, sort_keys=True).encode("utf-8")))
    try:
        atomic_write(out, _archive_bytes(fmt, members))
    except OSError as e:
        raise ModelFilesError(f"{out}: cannot write the archive ({e.strerror or e})") from None
    return out


def _archive_bytes(fmt: str, members: Iterable[tuple[str, Path | bytes]]) -> bytes:
    """A zip or (gzipped) tar holding ``members`` = (name, file or bytes) as plain 0644 files."""
    buf = io.BytesIO()
    now = int(datetime.datetime.now().timestamp())
    if fmt == "zip":
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for name, src in members:
                entry = zipfile.ZipInfo(name, datetime.datetime.fromtimestamp(now).timetuple()[:6])
                entry.external_attr, entry.compress_type = (stat.S_IFREG | 0o644) << 16, zipfile.ZIP_DEFLATED
                z.writestr(entry, src if isinstance(src, bytes) else src.read_bytes())
    else:
        with tarfile.open(fileobj=buf, mode="w" if fmt == "tar" else "w:gz") as t:
            for name, src in members:
                data = src if isinstance(src, bytes) else src.read_bytes()
                entry = tarfile.TarInfo(name)
                entry.size, entry.mode, entry.mtime = len(data), 0o644, now
                t.addfile(entry, io.BytesIO(data))
    return buf.getvalue()
