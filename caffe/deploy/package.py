"""``package_model``: write the archive DIGITS' "Download Model" gives, with DIGITS' file names.

``deploy.prototxt``, ``mean.binaryproto``, ``solver.prototxt``, ``info.json``, ``original.prototxt``,
``labels.txt``, ``snapshot_iter_N.caffemodel``, ``train_val.prototxt``. ``info.json`` records how images
were prepared in training (``image dimensions``, ``image resize mode``, ``mean subtraction``), which
:class:`caffe.deploy.DeployModel` follows.
"""

from __future__ import annotations

import datetime
import io
import json
import re
import stat
import tarfile
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from caffe.deploy.archive import archive_stem
from caffe.deploy.errors import ModelFilesError, PathLike
from caffe.deploy.files import input_shape, read_info
from caffe.deploy.readers import read_labels, read_mean
from caffe.protoio import atomic_write


def _iteration_of(weights: Path, solver: PathLike | None) -> int:
    m = re.search(r"_iter_(\d+)", weights.name)
    if m:
        return int(m.group(1))
    if solver is not None:
        from caffe.protoio import read_solver_param

        return int(read_solver_param(solver).max_iter)
    return 0


#: The info.json keys that say how a training prepared its images (DIGITS' names; ``input scale``, the studio's
#: detectors trained with ``transform_param.scale``, is ours).
PREPROCESSING_KEYS = ("image dimensions", "image resize mode", "mean subtraction", "input scale")


def _training_preprocessing(info_json: Path) -> dict[str, Any]:
    """How the training beside the deploy net prepared its images (a DIGITS/studio job's info.json), so
    that the archive is classified as the training's own model is; {} without one."""
    if not info_json.is_file():
        return {}
    info = read_info(info_json)
    return {key: info[key] for key in PREPROCESSING_KEYS if info.get(key) not in (None, "")}


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
    file names, ...; a DIGITS/studio job's ``info.json`` beside the deploy net gives its ``image dimensions``,
    ``image resize mode`` and ``mean subtraction``; ``info`` adds or overrides keys). The deploy net is checked
    to parse first.
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
        "name": archive_stem(out),
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
    record.update(_training_preprocessing(deploy.parent / "info.json"))
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
