"""Pretrained models in the studio: upload weights + network (+ labels, + Python layer), or a Caffe2 model's
``init_net.pb`` + ``predict_net.pb`` (converted), promote a trained job, list, delete.

A pretrained job's folder holds ``deploy.prototxt``, ``original.prototxt`` (the train_val network when one was
given, else the deploy net), ``weights.caffemodel``, [``labels.txt``], [``python_layer.py``],
[``mean.binaryproto``] and ``info.json`` (image type/size/resize mode, mean values, where it came from).

Everything is validated before a job is kept: each prototxt parses (the error names its line), the Python
layer file compiles, the deploy net builds and the weights load into it; a deploy layer with parameters that
the weights file does not name is an error listing the names on both sides (fine-tuning renames are made
later, on the model form, never in the uploaded network). A network with Python layers, or a Python layer
file, is refused unless the studio runs with ``--allow_python_layers``; with it, such a net is built and
checked by a worker process, never in the server (:mod:`caffe.studio.layer_worker`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from caffe import deploy
from caffe.deploy import is_detector
from caffe.deploy.segmentation import is_segmenter
from caffe.errors import CaffeError, DataError, NetError, ParseError, WeightsError
from caffe.layers.python import CONSENT_FLAG
from caffe.proto import caffe_pb2 as pb
from caffe.protoio import atomic_write, to_text
from caffe.studio import inference, layer_worker
from caffe.studio.networks import parse_network


class PretrainedError(CaffeError):
    """A pretrained-model request that cannot be honoured; ``status`` is the HTTP code."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------------------- networks
def deploy_from_original(param: pb.NetParameter, channels: int, height: int, width: int) -> pb.NetParameter:
    """The deploy net of a train_val (or DIGITS all-in-one) network, by :func:`caffe.studio.networks.deploy_net`.

    The input is the net's own ``Input`` shape when it has one, else 1 x C x crop x crop when its data layers
    crop, else 1 x C x ``height`` x ``width`` (the form's image size).
    """
    from caffe.studio import networks

    sources = networks.data_layers(param)
    shaped = next((s for s in sources if s.type == "Input" and s.input_param.shape), None)
    if shaped is not None and len(shaped.input_param.shape[0].dim) == 4:
        shape = tuple(int(d) for d in shaped.input_param.shape[0].dim[1:])
    else:
        crop = max((s.transform_param.crop_size for s in sources), default=0)
        shape = (channels, crop, crop) if crop else (channels, height, width)
    return networks.deploy_net(param, shape)


def network_mean_values(param: pb.NetParameter) -> list[float]:
    """The ``mean_value``s of a train_val's first data layer that has them (the mean the weights were trained with)."""
    from caffe.studio import networks

    for layer in networks.data_layers(param):
        if layer.transform_param.mean_value:
            return [float(v) for v in layer.transform_param.mean_value]
    return []


# --------------------------------------------------------------------------------------- validation
def check_python_layer(code: bytes, source: str = "python_layer.py") -> None:
    """The Python layer file must be UTF-8 Python that compiles; ParseError names its line."""
    try:
        compile(code.decode("utf-8"), source, "exec")
    except UnicodeDecodeError:
        raise ParseError(f"{source}: not a UTF-8 text file") from None
    except SyntaxError as e:
        raise ParseError(f"{source}:{e.lineno}:{e.offset or 0}: {e.msg}") from None


def parse_labels(data: bytes, source: str = "labels.txt") -> list[str]:
    """Labels, one a line; a non-text file or one without labels is a DataError."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{source}: not a UTF-8 text file (one label a line expected)") from None
    labels = deploy.parse_labels(text)
    if not labels or not any(labels):
        raise DataError(f"{source}: no labels in it (one label a line expected)")
    return labels


def check_python_layers(params: dict[str, pb.NetParameter | None], python_layer: bytes | None, allowed: bool) -> None:
    """An upload's networks (by file name) and Python layer file: refused (403) unless Python layers are
    allowed; an uploaded module must not be named like a module the server can import (400)."""
    for source, param in params.items():
        if param is not None:
            layer_worker.require_consent(param, source, allowed)
            if python_layer:
                layer_worker.check_module_names(param, source)
    if python_layer and not allowed:
        raise layer_worker.PythonLayerError(
            f"python_layer.py: Python layer files are accepted only when the studio is started with {CONSENT_FLAG}", 403
        )


def check_weights(
    job_dir: Path, python_layer: Path | None = None, allow_python_layers: bool = False
) -> tuple[dict[str, Any], str | None]:
    """:func:`weights_facts` of the job's folder; a net with Python layers (when allowed) is checked by a
    worker process."""
    source = inference.ModelSource(
        "", job_dir / "deploy.prototxt", job_dir / "weights.caffemodel", python_layer=python_layer
    )
    if inference.require_consent(source, allow_python_layers):
        return layer_worker.check_weights(job_dir, python_layer)
    return weights_facts(job_dir, python_layer)


def weights_facts(job_dir: Path, python_layer: Path | None = None) -> tuple[dict[str, Any], str | None]:
    """Build the job's deploy net (in this process) and load its weights; a name or shape mismatch is a
    WeightsError.

    Returns facts for the job's result (input shape, output size - a segmentation net's: its classes; a
    detector's: None -, layer and parameter counts) and the name of the net's last output.
    """
    from caffe.weights import is_hdf5, load_net_param

    deploy, weights = job_dir / "deploy.prototxt", job_dir / "weights.caffemodel"
    net = inference.build_net(deploy, None, python_layer)
    in_file: list[str] | None = None
    try:
        if is_hdf5(weights):
            copied = set(net.copy_from(str(weights)))
        else:
            param = load_net_param(weights)
            in_file = [layer.name for layer in param.layer if layer.blobs]
            copied = set(net.copy_from(param))
    except (WeightsError, ParseError) as e:
        detail = str(e)
        for prefix in (f"{weights}: ", "NetParameter: "):
            detail = detail.removeprefix(prefix)
        raise WeightsError(f"weights.caffemodel: {detail}") from None
    wanted = [name for name, blobs in net.params.items() if blobs]
    missing = [name for name in wanted if name not in copied]
    if missing:
        listing = f"; the weights file has: {', '.join(in_file[:40])}" if in_file is not None else ""
        raise WeightsError(
            f"weights.caffemodel: no weights for layer(s) {', '.join(missing)} of the network "
            f"(layer names must match){listing}"
        )
    inp = net.inputs[0] if net.inputs else None
    out = net.outputs[-1] if net.outputs else None
    if inp is not None and len(net.blobs[inp].shape) != 4:
        raise NetError(
            f"deploy.prototxt: input '{inp}' has shape {list(net.blobs[inp].shape)}; an image "
            "classifier's input is N x C x H x W"
        )
    if out is not None and not net.blobs[out].shape:
        raise NetError(f"deploy.prototxt: output '{out}' is a scalar; a classifier's output has a value per class")
    outputs = None  # a detector's rows are boxes, not classes: its labels are not counted
    if out is not None and not is_detector(net):  # a segmentation net's classes are its output's channels
        shape = net.blobs[out].shape
        outputs = int(shape[1]) if is_segmenter(net, out) else int(net.blobs[out].count // max(1, shape[0]))
    return {
        "input_shape": list(net.blobs[inp].shape) if inp else None,
        "outputs": outputs,
        "layers": len(net.layers),
        "parameters": int(sum(b.count for blobs in net.params.values() for b in blobs)),
    }, out


# --------------------------------------------------------------------------------------- jobs
def _write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def _copy_stream(src: IO[bytes] | Path, dest: Path) -> None:
    """Copy a file object or a file to ``dest`` atomically (temp file in the same folder, then rename)."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            if isinstance(src, Path):
                with src.open("rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
            else:
                shutil.copyfileobj(src, out, 1 << 20)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def image_settings(
    image_type: str | int = "color", width: int = 256, height: int = 256, resize_mode: str = "squash"
) -> dict[str, Any]:
    """The image options of the upload form (DIGITS' defaults: color, 256 x 256, squash), checked."""
    kind = str(image_type).lower()
    if kind not in ("color", "3", "grayscale", "gray", "1"):
        raise DataError(f"image_type: must be 'color' or 'grayscale' (got {image_type!r})")
    channels = 3 if kind in ("color", "3") else 1
    for name, value in (("width", width), ("height", height)):
        if not isinstance(value, int) or not 1 <= value <= 8192:
            raise DataError(f"{name}: must be a whole number of pixels between 1 and 8192 (got {value!r})")
    if resize_mode not in inference.RESIZE_MODES:
        raise DataError(f"resize_mode: must be one of {', '.join(inference.RESIZE_MODES)} (got {resize_mode!r})")
    return {"channels": channels, "width": width, "height": height, "resize_mode": resize_mode}


def parse_mean_values(text: str | None) -> list[float]:
    """``"104,117,123"`` -> [104.0, 117.0, 123.0]; empty -> []."""
    if not text or not str(text).strip():
        return []
    try:
        return [float(v) for v in str(text).replace(" ", "").split(",")]
    except ValueError:
        raise DataError(f"mean_values: expected comma-separated numbers such as 104,117,123 (got {text!r})") from None


def upload(
    store: Any,
    *,
    name: str,
    weights: IO[bytes] | Path,
    deploy: str | None = None,
    original: str | None = None,
    labels: bytes | None = None,
    python_layer: bytes | None = None,
    mean_file: bytes | None = None,
    mean_values: str | None = None,
    image_type: str | int = "color",
    width: int = 256,
    height: int = 256,
    resize_mode: str = "squash",
    allow_python_layers: bool = False,
) -> Any:
    """Create a pretrained job from uploaded files (see the module); the job is kept only when all is valid.

    ``deploy`` and ``original`` are prototxt texts; at least one is needed (a deploy net is derived from
    ``original`` when ``deploy`` is missing). Python layers need ``allow_python_layers``.
    """
    if not (name or "").strip():
        raise DataError("job_name: a name is required")
    settings = image_settings(image_type, width, height, resize_mode)
    if not (deploy or "").strip() and not (original or "").strip():
        raise DataError("model_def_file: a network (deploy.prototxt or train_val.prototxt) is required")
    original_param = parse_network(original, "original.prototxt") if (original or "").strip() else None
    if (deploy or "").strip():
        deploy_param = parse_network(deploy, "deploy.prototxt")
    else:
        assert original_param is not None
        try:
            deploy_param = deploy_from_original(
                original_param, settings["channels"], settings["height"], settings["width"]
            )
        except NetError as e:
            raise NetError(f"original.prototxt: cannot derive a deploy network: {e}") from None
    check_python_layers(
        {"deploy.prototxt": deploy_param, "original.prototxt": original_param}, python_layer, allow_python_layers
    )
    label_list = parse_labels(labels) if labels else []
    if python_layer:
        check_python_layer(python_layer)
    means = parse_mean_values(mean_values)
    if not means and not mean_file and original_param is not None:
        means = network_mean_values(original_param)
    if means and len(means) not in (1, settings["channels"]):
        raise DataError(f"mean_values: {len(means)} values for {settings['channels']}-channel images")

    job = store.create("pretrained", name.strip(), {"source": "upload", **settings, "mean_values": means})
    job_dir = Path(store.job_dir(job.id))
    try:
        deploy_text = deploy if (deploy or "").strip() else to_text(deploy_param)
        atomic_write(job_dir / "deploy.prototxt", str(deploy_text).encode("utf-8"))
        atomic_write(
            job_dir / "original.prototxt", (original if original_param is not None else deploy or "").encode("utf-8")
        )
        _copy_stream(weights, job_dir / "weights.caffemodel")
        if label_list:
            atomic_write(job_dir / "labels.txt", ("\n".join(label_list) + "\n").encode("utf-8"))
        if python_layer:
            atomic_write(job_dir / "python_layer.py", python_layer)
        if mean_file:
            atomic_write(job_dir / "mean.binaryproto", mean_file)
        return _finish(
            store, job, job_dir, {"source": "upload", **settings, "mean_values": means}, label_list, allow_python_layers
        )
    except BaseException:
        store.delete(job.id)
        raise


def upload_caffe2(
    store: Any, *, name: str, init_net: bytes, predict_net: bytes, value_info: bytes | None = None, **kwargs: Any
) -> Any:
    """Create a pretrained job from a Caffe2 model: ``init_net.pb`` and ``predict_net.pb`` (binary or text)
    [+ ``value_info.json``; without it the image settings give the input shape], converted to a deploy net and
    weights (:mod:`caffe.caffe2`); ``kwargs`` as :func:`upload` (labels, mean, image settings)."""
    import io

    from caffe.caffe2.model import convert_caffe2, find_caffe2_files

    with tempfile.TemporaryDirectory(prefix="caffe2-upload-") as tmp:
        folder = Path(tmp)
        (folder / "init_net.pb").write_bytes(init_net)
        (folder / "predict_net.pb").write_bytes(predict_net)
        shape = None
        if value_info is not None:
            (folder / "value_info.json").write_bytes(value_info)
        else:  # the form's image settings give the input's shape
            names = ("image_type", "width", "height", "resize_mode")
            settings = image_settings(**{k: kwargs[k] for k in names if k in kwargs})
            shape = [1, settings["channels"], settings["height"], settings["width"]]
        try:
            deploy_param, weights = convert_caffe2(find_caffe2_files(folder), shape)
        except CaffeError as e:
            if shape is None:
                raise
            raise DataError(
                f"no value_info.json: the input shape {'x'.join(map(str, shape))} from the image settings does not "
                f"fit this net ({e}); upload its value_info.json or set the image size it takes"
            ) from None
    return upload(
        store, name=name, weights=io.BytesIO(weights.SerializeToString()), deploy=to_text(deploy_param), **kwargs
    )


def _finish(
    store: Any, job: Any, job_dir: Path, info: dict[str, Any], labels: list[str], allow_python_layers: bool = False
) -> Any:
    """Validate the written folder (net builds, weights fit, labels match), write info.json, mark Done."""
    py = job_dir / "python_layer.py"
    facts, output = check_weights(job_dir, py if py.is_file() else None, allow_python_layers)
    if labels and facts["outputs"] and len(labels) != facts["outputs"]:
        raise DataError(
            f"labels.txt: {len(labels)} labels, but the network's output '{output}' has "
            f"{facts['outputs']} values per image"
        )
    if (job_dir / "mean.binaryproto").is_file():
        deploy.fit_mean(
            deploy.read_mean(job_dir / "mean.binaryproto"), tuple(facts["input_shape"][1:]), "image", "mean.binaryproto"
        )
    info = {
        **info,
        "name": job.name,
        "framework": "caffe",
        "deploy_file": "deploy.prototxt",
        "original_file": "original.prototxt",
        "weights_file": "weights.caffemodel",
        "labels_file": "labels.txt" if labels else None,
        "mean_file": "mean.binaryproto" if (job_dir / "mean.binaryproto").is_file() else None,
        "python_layer_file": "python_layer.py" if py.is_file() else None,
        **facts,
    }
    _write_json(job_dir / "info.json", info)
    return store.update(job.id, status="Done", result={**facts, "labels": len(labels)})


def promote(
    store: Any,
    model_job_id: str,
    epoch: float | str | None = None,
    name: str | None = None,
    allow_python_layers: bool = False,
) -> Any:
    """A pretrained job from a model job's snapshot (``epoch``, default the last), as DIGITS' "Make Pretrained Model".

    Copies deploy.prototxt, original.prototxt (the model's network), the snapshot as weights.caffemodel,
    labels.txt, mean.binaryproto (unless the model subtracted no mean) and the Python layer file (the model's
    ``<module>.py``), with the dataset's image settings and the model's mean subtraction in info.json.
    """
    source = inference.resolve(store, model_job_id, epoch)
    model = store.get(model_job_id)
    if model.kind != "model":
        raise PretrainedError(f"job {model_job_id} is a {model.kind} job; only a trained model can be promoted")
    src_dir = Path(store.job_dir(model_job_id))
    settings = {
        "channels": source.channels,
        "width": source.width,
        "height": source.height,
        "resize_mode": source.resize_mode,
    }
    info = {
        "source": "model",
        "model_job": model_job_id,
        "snapshot_epoch": source.epoch,
        "snapshot_file": source.weights.name,
        **settings,
        "mean_values": list(source.mean_values),
        "input scale": source.input_scale,
        "mean subtraction": source.mean_mode,  # none: the model was trained without one (its net may hold its own)
    }
    title = name or f"{model.name} (epoch {source.epoch:g})"
    job = store.create("pretrained", title, info, parent=model_job_id)
    job_dir = Path(store.job_dir(job.id))
    try:
        _copy_stream(source.deploy, job_dir / "deploy.prototxt")
        original = next(
            (p for p in (src_dir / "original.prototxt", src_dir / "train_val.prototxt") if p.is_file()), source.deploy
        )
        _copy_stream(original, job_dir / "original.prototxt")
        _copy_stream(source.weights, job_dir / "weights.caffemodel")
        for src, dest in (
            (src_dir / "labels.txt", "labels.txt"),
            (source.mean_file if source.mean_mode != "none" else None, "mean.binaryproto"),
            (source.python_layer or _module_file(source.deploy), "python_layer.py"),
        ):
            if src is not None and src.is_file():
                _copy_stream(src, job_dir / dest)
        return _finish(store, job, job_dir, info, list(source.labels), allow_python_layers)
    except BaseException:
        store.delete(job.id)
        raise


def _module_file(deploy: Path) -> Path | None:
    """The one module file (``<module>.py``) of a model job's Python layers, if it has one."""
    from caffe.protoio import read_net_param
    from caffe.studio.models import layer_files

    found = set(layer_files(read_net_param(deploy), deploy.parent).values())
    return found.pop() if len(found) == 1 else None


def list_pretrained(store: Any) -> list[Any]:
    """Pretrained jobs, newest first."""
    return store.list("pretrained")


def users(store: Any, job_id: str) -> list[Any]:
    """Model jobs that were made from this pretrained job and are still waiting or running."""
    return [j for j in store.list("model") if j.parent == job_id and j.status in ("Waiting", "Running")]


IMAGENET_CLASSES = 1000
# where a server keeps ImageNet's labels (Caffe's data/ilsvrc12/get_ilsvrc_aux.sh writes the second): looked up in
# the project's folder and in each data root, never downloaded
IMAGENET_PLACES = ("synset_words.txt", "data/ilsvrc12/synset_words.txt", "models/imagenet-common/synset_words.txt")
MAX_LABELS_BYTES = 1 << 20


def imagenet_labels_file(roots: Iterable[Path]) -> Path | None:
    """A file of the 1000 ImageNet labels on this server (see IMAGENET_PLACES), None when there is none."""
    project = Path(__file__).resolve().parents[2]
    for base in (project, *roots):
        for place in IMAGENET_PLACES:
            path = Path(base) / place
            try:
                small = path.is_file() and path.stat().st_size <= MAX_LABELS_BYTES
                if small and len(parse_labels(path.read_bytes(), place)) == IMAGENET_CLASSES:
                    return path
            except (OSError, DataError):
                continue
    return None


def lacks_labels(job_dir: Path, info: dict[str, Any]) -> bool:
    """Whether a pretrained model is a 1000-class one without labels (the ImageNet labels may be offered)."""
    return info.get("outputs") == IMAGENET_CLASSES and not (job_dir / "labels.txt").is_file()


def use_labels(store: Any, job_id: str, path: Path) -> None:
    """Give a pretrained model the labels of ``path`` (as its labels.txt), if their count fits its outputs."""
    job_dir = store.job_dir(job_id)
    info = inference.read_info(job_dir)
    labels = parse_labels(path.read_bytes(), path.name)
    if info.get("outputs") and len(labels) != info["outputs"]:
        raise PretrainedError(f"{path.name}: {len(labels)} labels, but the network has {info['outputs']} outputs")
    atomic_write(job_dir / "labels.txt", ("\n".join(labels) + "\n").encode("utf-8"))
    _write_json(job_dir / "info.json", {**info, "labels_file": "labels.txt"})
    store.merge_result(job_id, labels=len(labels))


def delete(store: Any, job_id: str) -> None:
    """Delete a pretrained job (row and folder); refused while a training that uses it is queued or running."""
    try:
        job = store.get(job_id)
    except KeyError:
        raise PretrainedError(f"no job {job_id!r}", 404) from None
    if job.kind != "pretrained":
        raise PretrainedError(f"job {job_id} is a {job.kind} job, not a pretrained model")
    busy = users(store, job_id)
    if busy:
        raise PretrainedError(
            f"pretrained model {job_id} is used by training(s) in progress: {', '.join(j.id for j in busy)}", 409
        )
    store.delete(job_id)
    inference.CACHE.forget(Path(store.job_dir(job_id)))


def summary(jobs: Iterable[Any]) -> list[dict[str, Any]]:
    """JSON rows of pretrained jobs for the list page and ``/pretrained_models.json``."""
    return [
        {
            "id": j.id,
            "name": j.name,
            "status": j.status,
            "created": j.created,
            "source": j.params.get("source"),
            "parent": j.parent,
            **{k: j.result.get(k) for k in ("input_shape", "outputs", "labels", "parameters")},
        }
        for j in jobs
    ]
