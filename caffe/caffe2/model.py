"""Caffe2 model folders: ``init_net.pb`` + ``predict_net.pb`` (+ ``value_info.json``) <-> Caffe files.

* :func:`find_caffe2_files` - a folder's (or two given files') init net, predict net and value_info;
* :func:`convert_caffe2` - read and convert them to a deploy NetParameter and its weights;
* :func:`write_caffe` / :func:`write_caffe2` - the converted files written into a folder.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from caffe.caffe2.errors import Caffe2Error
from caffe.caffe2.from_caffe import Caffe2Model
from caffe.caffe2.io import init_blobs, read_netdef, read_value_info, write_netdef, write_value_info
from caffe.caffe2.to_caffe import to_caffe
from caffe.proto import caffe_pb2 as pb
from caffe.protoio import write_binary, write_text

PathLike = str | os.PathLike
INIT_NAMES = ("init_net.pb", "init_net.pbtxt")
PREDICT_NAMES = ("predict_net.pb", "predict_net.pbtxt")
VALUE_INFO = "value_info.json"


@dataclass
class Caffe2Files:
    """The files of a Caffe2 model."""

    init_net: Path
    predict_net: Path
    value_info: Path | None = None


def _first(folder: Path, names: tuple[str, ...]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


def is_caffe2_folder(folder: PathLike) -> bool:
    """Whether ``folder`` holds a Caffe2 model (an init net and a predict net)."""
    p = Path(folder)
    return p.is_dir() and _first(p, INIT_NAMES) is not None and _first(p, PREDICT_NAMES) is not None


def find_caffe2_files(folder: PathLike) -> Caffe2Files:
    """The init net, predict net and (optional) ``value_info.json`` of the model folder ``folder``."""
    p = Path(folder)
    init, predict = _first(p, INIT_NAMES), _first(p, PREDICT_NAMES)
    if init is None or predict is None:
        missing = " and ".join(n for n, f in (("init_net.pb", init), ("predict_net.pb", predict)) if f is None)
        raise Caffe2Error(f"{p}: not a Caffe2 model folder: no {missing}")
    info = p / VALUE_INFO
    return Caffe2Files(init, predict, info if info.is_file() else None)


def convert_caffe2(
    files: Caffe2Files, input_shape: list[int] | dict[str, list[int]] | None = None
) -> tuple[pb.NetParameter, pb.NetParameter]:
    """The deploy NetParameter and weights of a Caffe2 model (``input_shape`` wins over value_info.json)."""
    predict = read_netdef(files.predict_net, "Caffe2 predict net")
    blobs = init_blobs(read_netdef(files.init_net, "Caffe2 init net"), str(files.init_net))
    shapes: list[int] | dict[str, list[int]]
    if input_shape is not None:
        shapes = input_shape
    elif files.value_info is not None:
        shapes = read_value_info(files.value_info)
    else:
        raise Caffe2Error(
            f"{files.predict_net}: no {VALUE_INFO} beside it to give the input's shape: write one "
            '(e.g. {"data": [1, [1, 3, 224, 224]]}) or, converting, give --input_shape 1,3,224,224'
        )
    return to_caffe(predict, blobs, shapes, str(files.predict_net))


def model_stem(name: str) -> str:
    """A file-name stem from a net's name (``AlexNet`` -> ``alexnet``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._").lower() or "model"


def write_caffe(deploy: pb.NetParameter, weights: pb.NetParameter, out_dir: PathLike) -> tuple[Path, Path]:
    """Write ``deploy.prototxt`` and ``<name>.caffemodel`` into ``out_dir`` (created); return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prototxt, caffemodel = out / "deploy.prototxt", out / f"{model_stem(deploy.name)}.caffemodel"
    write_text(prototxt, deploy)
    write_binary(caffemodel, weights)
    return prototxt, caffemodel


def write_caffe2(model: Caffe2Model, out_dir: PathLike) -> Caffe2Files:
    """Write ``init_net.pb``, ``predict_net.pb`` and ``value_info.json`` into ``out_dir`` (created)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = Caffe2Files(out / "init_net.pb", out / "predict_net.pb", out / VALUE_INFO)
    write_netdef(files.init_net, model.init_net)
    write_netdef(files.predict_net, model.predict_net)
    assert files.value_info is not None
    write_value_info(files.value_info, model.value_info)
    return files


def converted_files(folder: PathLike, cache_dir: PathLike | None = None) -> tuple[Path, Path]:
    """The deploy prototxt and caffemodel of the Caffe2 model folder ``folder``, converted once into a cache
    keyed by the files' content (``<cache>/caffe2/<sha1>/``; ``cache_dir`` default: the archives' cache root),
    so that every consumer of model files (``caffe classify``, ``caffe serve``'s workers, the studio) reads
    ordinary Caffe files."""
    import hashlib

    from caffe.deploy.archive import cache_root
    from caffe.limits import read_file

    files = find_caffe2_files(folder)
    digest = hashlib.sha1()
    for path in (files.init_net, files.predict_net, files.value_info):
        data = read_file(path, "Caffe2 model file", error=Caffe2Error) if path is not None else b""
        digest.update(len(data).to_bytes(8, "little") + data)
    out = (Path(cache_dir) if cache_dir is not None else cache_root()) / "caffe2" / digest.hexdigest()
    done = [out / "deploy.prototxt", *sorted(out.glob("*.caffemodel"))] if out.is_dir() else []
    if len(done) == 2 and done[0].is_file():
        return done[0], done[1]
    deploy, weights = convert_caffe2(files)
    return write_caffe(deploy, weights, out)
