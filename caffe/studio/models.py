"""Model jobs: the "New Image Classification Model" form turned into Caffe files and a ``caffe train`` run.

:class:`ModelForm` holds DIGITS' form fields (same names, so DIGITS' REST calls work). A job's folder
gets ``original.prototxt`` (the network as this job trains it: chosen or edited, classifier set to the
dataset's classes and, when fine-tuning, renamed), ``train_val.prototxt`` (data layers pointed at the
dataset's LMDBs and mean), ``deploy.prototxt``, ``solver.prototxt``, ``info.json``, ``labels.txt`` and
``mean.binaryproto``, then the scheduler runs ``caffe train --solver ... --events ... [--weights W]
[--gpu=0,2]``. GPUs: DIGITS' ``select_gpu_count`` (that many, the scheduler picks free ones) or
``select_gpus`` (these ids); neither trains on the CPU.

DIGITS' form-to-solver mapping (CAFFE.md §2.4): ``max_iter = ceil(train / (batch * iter_size)) * epochs``;
snapshot and test_interval are the intervals in epochs times iterations per epoch (at least 1; an
interval reaching the end means "only at the end"); ``test_iter = ceil(val / val_batch)``; lr policy
parameters are percentages of the training, scaled by ``max_iter / 100``; momentum 0.9 (not for
AdaGrad/RMSProp), ``weight_decay = base_lr / 100``, ``display = max(1, min(floor(max_iter /
(epochs * 8)), ceil(5000 / (batch * iter_size))))``.

Python layers: a network with one is refused unless the studio runs with ``--allow_python_layers``; with it,
the training runs them in its own process (``caffe train``, in the job's folder). The module file of a
pretrained model's (or a previous model's) Python layers is copied into the job's folder as ``<module>.py``,
where ``caffe train`` imports it.

Resume: ``caffe train --snapshot`` from the newest ``snapshot_iter_N.solverstate``. The solver state
holds the iteration, lr step and history; the restore also moves the data layers to where the
interrupted run was (reads and crop/mirror draws included, see ``caffe.snapshot.fast_forward_data``), so with
the form's random seed a resumed run ends with the weights of an uninterrupted one (Dropout included:
torch's random-number state is kept beside the solver state, ``snapshot_iter_N.solverstate.rng``).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from caffe.data.db import open_db
from caffe.errors import CaffeError, NetError
from caffe.proto import caffe_pb2 as pb
from caffe.protoio import atomic_write, read_net_param, to_text
from caffe.studio import charts, layer_worker, validate
from caffe.studio import networks as nets
from caffe.studio.failure import job_failure
from caffe.studio.gpus import GpuRequest, device_gpu, gpu_pool, job_hardware, parse_gpu_list, request_error
from caffe.studio.paths import is_job_id, resolve_user_path

#: The largest values the form takes (beyond them the solver's and data layers' int32 fields overflow, or the
#: rate schedule's percentages say nothing more).
LIMITS = {"train_epochs": 1_000_000, "batch_size": 1_000_000, "batch_accumulation": 1_000_000, "crop_size": 65_536,
          "random_seed": 2**63 - 1, "select_gpu_count": 4096, "snapshot_interval": 1_000_000, "val_interval": 1_000_000,
          "previous_epoch": 1_000_000, "lr_step_size": 100.0, "lr_sigmoid_step": 100.0}  # fmt: skip
MAX_ITER = 2**31 - 1  # SolverParameter.max_iter is an int32
FLOAT32_MAX = 3.4028234663852886e38
SOLVER_CLASSES = {"SGD": "SGD", "NESTEROV": "Nesterov", "ADAGRAD": "AdaGrad", "RMSPROP": "RMSProp",
                  "ADADELTA": "AdaDelta", "ADAM": "Adam"}  # fmt: skip
SOLVER_TYPES = tuple(SOLVER_CLASSES)
LR_POLICIES = ("fixed", "step", "multistep", "exp", "inv", "poly", "sigmoid")
NETWORK_METHODS = ("standard", "previous", "pretrained", "custom")
MEAN_MODES = ("image", "pixel", "none")
FINETUNE_LR = 0.001  # proposed base lr when starting from pretrained weights (the guide's choice)
SNAPSHOT_RE = re.compile(r"^snapshot_iter_(\d+)\.(caffemodel|solverstate)(\.h5)?$")
NAN_ADVICE = (
    "The network output NaN or infinity for {what}. Training diverged: try a lower base learning rate "
    "(e.g. 10x smaller), and check the data (labels within 0..classes-1, mean subtraction, image scale)."
)


class FormError(CaffeError):
    """Bad model form input; ``errors`` maps each field at fault to its message."""

    def __init__(self, errors: dict[str, str]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))


# ---------------------------------------------------------------------------------------------- the form
@dataclass
class ModelForm:
    """DIGITS' "New Image Classification Model" fields, with DIGITS' defaults."""

    dataset: str = ""
    model_name: str = ""
    method: str = "standard"
    standard_networks: str = "alexnet"
    previous_networks: str = ""
    previous_epoch: float = 0.0  # weights of that epoch's snapshot; 0: the architecture only
    pretrained_networks: str = ""
    custom_network: str = ""
    custom_network_snapshot: str = ""  # DIGITS' "Pretrained model" of a custom network: a weights file on the server
    solver_type: str = "SGD"
    train_epochs: int = 30
    snapshot_interval: float = 1.0
    val_interval: float = 1.0
    batch_size: int | None = None
    batch_accumulation: int | None = None
    learning_rate: float = 0.01
    lr_policy: str = "step"
    lr_step_size: float = 33.0
    lr_step_gamma: float = 0.1
    lr_multistep_values: str = "50,85"
    lr_multistep_gamma: float = 0.5
    lr_exp_gamma: float = 0.95
    lr_inv_gamma: float = 0.1
    lr_inv_power: float = 0.5
    lr_poly_power: float = 3.0
    lr_sigmoid_step: float = 50.0
    lr_sigmoid_gamma: float = 0.1
    crop_size: int | None = None
    use_mean: str = "image"
    random_seed: int | None = None
    device: str = "cpu"  # or "cuda:N": GPU N (as select_gpus=[N])
    select_gpu_count: int | None = None  # train on this many GPUs (any free ones); None or 0: see select_gpus
    select_gpus: list[int] = field(default_factory=list)  # train on these GPUs; neither: the CPU
    # not a form field: the folders custom_network_snapshot may name, set by the server (none by default)
    data_roots: list[Path] = field(default_factory=list)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelForm:
        """Coerce submitted strings; empty optional fields are None. Unknown keys are ignored."""
        form, errors = cls(), {}
        try:
            form.select_gpus = parse_gpu_list(values.get("select_gpus"))
        except ValueError as e:
            errors["select_gpus"] = f"GPU ids are whole numbers: {e}"
        for f in fields(cls):
            if f.name not in values or f.name in ("select_gpus", "data_roots"):  # data_roots: never from a request
                continue
            raw = values[f.name]
            raw = raw.strip() if isinstance(raw, str) and f.name != "custom_network" else raw
            kind = str(f.type)
            if raw in ("", None):
                if "None" in kind:
                    setattr(form, f.name, None)
                continue
            try:
                number = float(raw) if kind != "str" else None
            except (TypeError, ValueError, OverflowError):
                errors[f.name] = f"not a number: {raw!r}"
                continue
            if number is None:
                setattr(form, f.name, str(raw))
            elif not math.isfinite(number):
                errors[f.name] = f"not a finite number: {raw!r}"
            elif kind.startswith("float") and abs(number) > FLOAT32_MAX:  # the solver's fields are 32-bit floats
                errors[f.name] = f"out of range: {raw!r}"
            elif kind.startswith("int") and number != int(number):
                errors[f.name] = f"not a whole number: {raw!r}"
            else:
                setattr(form, f.name, int(number) if kind.startswith("int") else number)
        if errors:
            raise FormError(errors)
        return form

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        del values["data_roots"]
        return values

    def check(self, devices: list[str] | None = None) -> None:
        """Ranges and choices; raises FormError naming every bad field."""
        e: dict[str, str] = {}
        if not is_job_id(self.dataset):
            e["dataset"] = "choose a dataset"
        choices = (
            ("method", NETWORK_METHODS),
            ("standard_networks", tuple(nets.STANDARD_NETWORKS)),
            ("solver_type", SOLVER_TYPES),
            ("lr_policy", LR_POLICIES),
            ("use_mean", MEAN_MODES),
        )
        for name, allowed in choices:
            if getattr(self, name) not in allowed:
                e[name] = f"{getattr(self, name)!r} is not one of {', '.join(allowed)}"
        if self.train_epochs < 1:
            e["train_epochs"] = "must be at least 1"
        for name, most in LIMITS.items():
            value = getattr(self, name)
            if value is not None and abs(value) > most:
                e[name] = f"must be at most {most:,}"
        if not self.snapshot_interval > 0:
            e["snapshot_interval"] = "must be more than 0 epochs (an interrupted training resumes from a snapshot)"
        if self.val_interval < 0:
            e["val_interval"] = "must be 0 (no validation) or more epochs"
        for name in ("batch_size", "batch_accumulation", "crop_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                e[name] = "must be at least 1 (or left empty)"
        if not self.learning_rate > 0:
            e["learning_rate"] = "must be more than 0"
        if self.random_seed is not None and self.random_seed < 0:
            e["random_seed"] = "must be 0 or more (or left empty)"
        if self.lr_policy == "multistep":
            try:
                steps = _percentages(self.lr_multistep_values)
                if not steps or steps != sorted(steps) or not all(0 <= v <= 100 for v in steps):
                    raise ValueError
            except ValueError:
                e["lr_multistep_values"] = "give increasing percentages of the training (0-100), e.g. 50,85"
        if self.lr_policy in ("step", "sigmoid"):
            key = "lr_step_size" if self.lr_policy == "step" else "lr_sigmoid_step"
            if not getattr(self, key) > 0:
                e[key] = "must be more than 0 (% of the training)"
        if self.method == "custom" and not self.custom_network.strip():
            e["custom_network"] = "paste or customize a network"
        if self.method == "previous" and not is_job_id(self.previous_networks):
            e["previous_networks"] = "choose a previous model"
        if self.method == "pretrained" and not is_job_id(self.pretrained_networks):
            e["pretrained_networks"] = "choose a pretrained model"
        if devices is not None and self.device not in devices:
            e["device"] = f"{self.device!r} is not one of this server's devices ({', '.join(devices)})"
        if "device" not in e:
            e.update(self._gpu_errors(devices))
        if e:
            raise FormError(e)

    def _gpu_errors(self, devices: list[str] | None) -> dict[str, str]:
        """What is wrong with the GPU fields (against ``devices``' GPUs when given)."""
        count, listed = self.select_gpu_count or 0, self.select_gpus
        if count < 0:
            return {"select_gpu_count": "must be 0 (train on the CPU) or more GPUs"}
        if count and listed:
            return {"select_gpus": "give a number of GPUs or which GPUs, not both"}
        if (count or listed) and device_gpu(self.device) is not None:
            return {"device": f"give the GPUs once: {self.device!r} and the GPU fields"}
        request = self.gpu_request()
        pool = gpu_pool(devices) if devices is not None else None
        if request is None or pool is None:
            return {}
        where = "select_gpus" if listed else "select_gpu_count" if count else "device"
        error = request_error(request, pool) if pool else "this server has no GPU: leave it empty"
        return {where: error} if error else {}

    def gpu_request(self) -> GpuRequest | None:
        """The GPUs to train on (a number or their ids), None for the CPU."""
        if self.select_gpus:
            return list(self.select_gpus)
        if self.select_gpu_count:
            return self.select_gpu_count
        gpu = device_gpu(self.device)
        return None if gpu is None else [gpu]


def _percentages(text: str) -> list[float]:
    return [float(x) for x in re.split(r"[,\s]+", text.strip()) if x]


# ---------------------------------------------------------------------------------------------- datasets
@dataclass
class DatasetInfo:
    """What a model job needs from a finished dataset job."""

    id: str
    dir: Path
    train_count: int
    val_count: int
    labels: list[str]
    shape: tuple[int, int, int]  # C, H, W

    @property
    def classes(self) -> int:
        return len(self.labels)

    @classmethod
    def from_job(cls, store: Any, job_id: str) -> DatasetInfo:
        job = finished_dataset(store, job_id)
        d = store.job_dir(job_id)
        labels = [s.strip() for s in (d / "labels.txt").read_text(encoding="utf-8").splitlines() if s.strip()]
        counts = {}
        for split in ("train", "val"):
            db_dir = d / f"{split}_db"
            if db_dir.exists():
                with open_db(db_dir, "lmdb", "read") as db:
                    counts[split] = len(db)
        h, w, c = job.result.get("image_dims") or _mean_dims(d / "mean.binaryproto")
        if counts.get("train", 0) < 1:
            raise FormError({"dataset": f"dataset {job_id} has no training images"})
        return cls(job_id, d, counts["train"], counts.get("val", 0), labels, (int(c), int(h), int(w)))


TASKS = ("classification", "object-detection", "segmentation")


def task_of(job: Any) -> str:
    """A dataset or model job's task (a model's is in its info): ``classification`` unless it says another."""
    result = job.result or {}
    task = result.get("task") or (result.get("info") or {}).get("task") or (job.params or {}).get("task")
    return task if task in TASKS else "classification"


def finished_dataset(store: Any, job_id: str, task: str = "classification") -> Any:
    """The finished ``task`` dataset job ``job_id``; a FormError on the dataset field otherwise."""
    try:
        job = store.get(job_id)
    except KeyError:
        raise FormError({"dataset": f"no dataset job {job_id!r}"}) from None
    if job.kind != "dataset" or job.status != "Done":
        raise FormError({"dataset": f"job {job_id} is not a finished dataset (status {job.status})"})
    if task_of(job) != task:
        raise FormError({"dataset": f"dataset {job_id} is for {task_of(job)}, not {task}"})
    return job


def _mean_dims(path: Path) -> tuple[int, int, int]:
    from caffe.protoio import read_binary

    blob = read_binary(path, pb.BlobProto(), "mean file")
    c, h, w = list(blob.shape.dim)[-3:] if blob.shape.dim else (blob.channels, blob.height, blob.width)
    return h, w, c


# ---------------------------------------------------------------------------------------------- solver
def iterations_per_epoch(train_count: int, batch: int, iter_size: int = 1) -> int:
    return math.ceil(train_count / (batch * iter_size))


def _interval(epochs: float, per_epoch: int, max_iter: int, *, at_end: int) -> int:
    """DIGITS: an interval in epochs as iterations, at least 1; reaching max_iter means ``at_end``."""
    its = epochs * per_epoch
    if 0 < its <= 1:
        return 1
    if 1 < its < max_iter:
        return int(its)
    return at_end


def solver_param(
    form: ModelForm, train_count: int, val_count: int, train_batch: int, val_batch: int
) -> pb.SolverParameter:
    """DIGITS' mapping of the form to a SolverParameter (net and snapshot_prefix are set by the caller)."""
    iter_size = form.batch_accumulation or 1
    per_epoch = iterations_per_epoch(train_count, train_batch, iter_size)
    s = pb.SolverParameter(type=SOLVER_CLASSES[form.solver_type])
    if per_epoch * form.train_epochs > MAX_ITER:
        raise FormError({"train_epochs": f"{form.train_epochs} epochs of {per_epoch} iterations: over {MAX_ITER:,}"})
    s.max_iter = per_epoch * form.train_epochs
    if iter_size > 1:
        s.iter_size = iter_size
    s.snapshot = _interval(form.snapshot_interval, per_epoch, s.max_iter, at_end=0)
    if val_count and form.val_interval:
        s.test_iter.append(math.ceil(val_count / val_batch))
        s.test_interval = _interval(form.val_interval, per_epoch, s.max_iter, at_end=s.max_iter)
    s.base_lr = form.learning_rate
    _lr_policy(s, form)
    if form.solver_type not in ("ADAGRAD", "RMSPROP"):
        s.momentum = 0.9
    if form.solver_type == "RMSPROP":
        s.rms_decay = 0.99
    s.weight_decay = form.learning_rate / 100.0
    s.display = max(1, min(s.max_iter // (form.train_epochs * 8), math.ceil(5000 / (train_batch * iter_size))))
    if form.random_seed is not None:
        s.random_seed = form.random_seed
    s.snapshot_after_train = True  # also on a stop (SIGINT): a stopped training resumes from where it was
    return s


def _lr_policy(s: pb.SolverParameter, form: ModelForm) -> None:
    """The lr policy, its parameters given in % of the training scaled to iterations (DIGITS)."""
    s.lr_policy = form.lr_policy
    scale = s.max_iter / 100.0
    policy = form.lr_policy
    if policy == "step":
        s.stepsize, s.gamma = math.ceil(form.lr_step_size * scale), form.lr_step_gamma
    elif policy == "multistep":
        s.stepvalue.extend(math.ceil(v * scale) for v in _percentages(form.lr_multistep_values))
        s.gamma = form.lr_multistep_gamma
    elif policy == "exp":
        s.gamma = form.lr_exp_gamma ** (1.0 / scale)
    elif policy == "inv":
        s.gamma, s.power = form.lr_inv_gamma / scale, form.lr_inv_power
    elif policy == "poly":
        s.power = form.lr_poly_power
    elif policy == "sigmoid":
        s.gamma, s.stepsize = -form.lr_sigmoid_gamma / scale, math.ceil(form.lr_sigmoid_step * scale)


def lr_drops(param: pb.SolverParameter) -> list[int]:
    """The iterations where a step policy changes the rate (drawn exactly: the chart holds, then drops)."""
    last = param.max_iter
    if param.lr_policy == "step" and param.stepsize > 0:
        return list(range(param.stepsize, last + 1, param.stepsize))[:1000]
    if param.lr_policy == "multistep":
        return [v for v in param.stepvalue if 0 < v <= last]
    return []


def lr_schedule(param: pb.SolverParameter, points: int = 101) -> tuple[list[int], list[float]]:
    """The learning rate at ``points`` iterations from 0 to max_iter and at each drop of a step policy, computed
    by the solver's own schedule (every iteration is visited for ``multistep``, whose step advances one at a
    time)."""
    from caffe.solver import learning_rate_at

    last = max(param.max_iter, 1)
    wanted = sorted({round(k * last / (points - 1)) for k in range(points)} | set(lr_drops(param)))
    rates: list[float] = []
    step = 0
    visit = range(last + 1) if param.lr_policy == "multistep" else wanted
    keep = set(wanted)
    for it in visit:
        rate, step = learning_rate_at(param, it, step, np.float32, "lr policy")  # the studio trains in float32
        if it in keep:
            rates.append(rate)
    return wanted, rates


# ---------------------------------------------------------------------------------------------- networks
@dataclass
class Network:
    """The network a form chose: its NetParameter, the weights to start from, where it came from."""

    net: pb.NetParameter
    weights: Path | None
    source: str
    layer_files: dict[str, Path] = field(default_factory=dict)  # Python layer module -> its file


def layer_files(net: pb.NetParameter, job_dir: Path, uploaded: str | None = None) -> dict[str, Path]:
    """The module files of a job's Python layers: ``uploaded`` (a pretrained job's python_layer.py) or each
    ``<module>.py`` of the folder; only plain module names (never a path)."""
    modules = {x.python_param.module for x in layer_worker.python_layers(net) if x.python_param.module.isidentifier()}
    files = {name: job_dir / (uploaded or f"{name}.py") for name in sorted(modules)}
    return {name: path for name, path in files.items() if path.is_file()}


def choose_network(store: Any, form: ModelForm) -> Network:
    """The form's network (standard, previous job, pretrained job or custom text)."""
    if form.method == "standard":
        key = form.standard_networks
        return Network(nets.parse_network(nets.standard_network(key), f"{key}.prototxt"), None, f"standard:{key}")
    if form.method == "custom":
        net = nets.parse_network(form.custom_network, "custom network")
        return Network(net, custom_weights(form), "custom")
    job_id = form.previous_networks if form.method == "previous" else form.pretrained_networks
    field = f"{form.method}_networks"
    try:
        job = store.get(job_id)
    except KeyError:
        raise FormError({field: f"no job {job_id!r}"}) from None
    d = store.job_dir(job_id)
    if form.method == "previous":
        if job.kind != "model":
            raise FormError({field: f"job {job_id} is not a model"})
        weights = None
        if form.previous_epoch:
            snap = snapshot_for_epoch(d, form.previous_epoch)
            if snap is None:
                raise FormError({"previous_epoch": f"model {job_id} has no snapshot at epoch {form.previous_epoch:g}"})
            weights = snap
        net = read_net_param(d / "original.prototxt")
        return Network(net, weights, f"previous:{job_id}", layer_files(net, d))
    if job.kind != "pretrained":
        raise FormError({field: f"job {job_id} is not a pretrained model"})
    original = d / "original.prototxt"
    net = read_net_param(original if original.is_file() else d / "deploy.prototxt")
    return Network(net, d / "weights.caffemodel", f"pretrained:{job_id}", layer_files(net, d, "python_layer.py"))


def custom_weights(form: ModelForm) -> Path | None:
    """The weights a custom network starts from (``custom_network_snapshot``, DIGITS' "Pretrained model"): a file
    on the server inside ``form.data_roots``; layers of the same name copy them (``caffe train --weights``)."""
    text = form.custom_network_snapshot
    if not text:
        return None
    try:
        path = resolve_user_path(text, form.data_roots)
    except CaffeError as e:
        raise FormError({"custom_network_snapshot": str(e)}) from None
    if not path.is_file():
        raise FormError({"custom_network_snapshot": f"no file {text!r} on the server"})
    return path


def network_defaults(net: pb.NetParameter) -> dict[str, int | None]:
    """The batch and crop sizes a network's train Data layer carries (the form's placeholders)."""
    train = next((x for x in nets.data_layers(net) if x.type == "Data" and nets.included(x, nets.TRAIN_STATE)), None)
    if train is None:
        return {"batch_size": None, "crop_size": None}
    return {
        "batch_size": train.data_param.batch_size or None,
        "crop_size": train.transform_param.crop_size or None,
    }


@dataclass
class ModelFiles:
    """Everything a model job writes before it trains."""

    original: pb.NetParameter
    train_val: pb.NetParameter
    deploy: pb.NetParameter
    solver: pb.SolverParameter
    info: dict[str, Any]
    weights: Path | None
    layer_files: dict[str, Path] = field(default_factory=dict)
    mean: np.ndarray | None = None  # C x H x W: written as the job's mean.binaryproto instead of the dataset's
    input_shapes: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # C, H, W of other Data tops
    labels: list[str] | None = None  # the model's class names, written as its labels.txt instead of the dataset's


def build_files(store: Any, form: ModelForm, job_dir: Path, devices: list[str] | None = None) -> ModelFiles:
    """Check the form and compute the job's files (nothing is written)."""
    form.check(devices)
    data = DatasetInfo.from_job(store, form.dataset)
    chosen = choose_network(store, form)
    net = nets.trainable(chosen.net)
    renamed = nets.retarget(net, data.classes, finetune=chosen.weights is not None)
    train_val = nets.train_val_net(net)
    layers = [x for x in train_val.layer if nets.is_source(x)]
    if not layers or any(x.type != "Data" for x in layers):
        kinds = sorted({x.type for x in layers}) or ["none"]
        raise NetError(f"network '{net.name}': its data layers must be of type Data (found {', '.join(kinds)})")
    val = [x for x in layers if x.include and x.include[0].phase == pb.TEST]
    train = [x for x in layers if x not in val]
    if not train:
        raise NetError(f"network '{net.name}': no Data layer for the TRAIN phase")
    crop = form.crop_size or train[0].transform_param.crop_size or None
    c, h, w = data.shape
    if crop and crop > min(h, w):
        raise FormError({"crop_size": f"{crop} is larger than the dataset's {w}x{h} images"})
    mean = mean_values(data.dir / "mean.binaryproto", data.shape) if form.use_mean == "pixel" else None
    for layer in layers:
        is_train = layer in train
        db = data.dir / ("train_db" if is_train else "val_db")
        layer.data_param.source, layer.data_param.backend = str(db), pb.DataParameter.LMDB
        if form.batch_size:
            layer.data_param.batch_size = form.batch_size
        elif not layer.data_param.batch_size:
            layer.data_param.batch_size = nets.DEFAULT_BATCH_SIZE
        tp = layer.transform_param
        set_mean(tp, form.use_mean, job_dir, mean)
        if crop:
            tp.crop_size = crop
        else:
            tp.ClearField("crop_size")
    if not data.val_count:
        for layer in val:
            train_val.layer.remove(layer)
    val_batch = val[0].data_param.batch_size if val else train[0].data_param.batch_size
    solver = job_solver(form, job_dir, data, train[0].data_param.batch_size, val_batch, validate=bool(val))
    deploy = nets.deploy_net(net, (c, crop or h, crop or w))
    info = {
        **job_info_fields(job_dir, form, data, chosen, renamed, solver, train[0].data_param.batch_size),
        "crop size": crop,
        "mean subtraction": form.use_mean,
        "accuracy outputs": [t for x in train_val.layer if x.type == "Accuracy" for t in x.top],
        "mean file": "mean.binaryproto",
    }
    return ModelFiles(net, train_val, deploy, solver, info, chosen.weights, chosen.layer_files)


def job_solver(
    form: ModelForm, job_dir: Path, data: Any, train_batch: int, val_batch: int, *, validate: bool
) -> pb.SolverParameter:
    """The job's solver (:func:`solver_param`; validation only with ``validate``), pointed at its folder;
    ``data``: a dataset with train and val counts."""
    solver = solver_param(form, data.train_count, data.val_count if validate else 0, train_batch, val_batch)
    solver.net = str(job_dir / "train_val.prototxt")
    solver.snapshot_prefix = str(job_dir / "snapshot")
    if form.gpu_request() is not None:
        solver.solver_mode = pb.SolverParameter.GPU
    return solver


def job_info_fields(
    job_dir: Path,
    form: ModelForm,
    data: Any,
    chosen: Network,
    renamed: list[tuple[str, str]],
    solver: pb.SolverParameter,
    train_batch: int,
) -> dict[str, Any]:
    """The ``info.json`` fields every model job has (``data``: a dataset with id, classes, counts; a detection
    dataset has no image size of its own: the net's is added by its job)."""
    fields = {
        "job id": job_dir.name,
        "name": form.model_name,
        "framework": "caffe",
        "dataset": data.id,
        "network": chosen.source,
        "pretrained weights": str(chosen.weights) if chosen.weights else None,
        "renamed layers": [list(r) for r in renamed],
        "classes": data.classes,
        "train count": data.train_count,
        "val count": data.val_count,
        "iterations per epoch": iterations_per_epoch(data.train_count, train_batch, form.batch_accumulation or 1),
        "max iterations": solver.max_iter,
        "epochs": form.train_epochs,
        "labels file": "labels.txt",
    }
    if getattr(data, "shape", None):
        c, h, w = data.shape
        fields["image dimensions"] = [h, w, c]
    return fields


def mean_values(mean_file: Path, shape: tuple[int, int, int]) -> list[float]:
    """Per-channel means of a dataset's mean image of ``shape`` (C, H, W) ("pixel" mean subtraction)."""
    from caffe.io import blobproto_to_array
    from caffe.protoio import read_binary

    blob = read_binary(mean_file, pb.BlobProto(), "mean file")
    arr = blobproto_to_array(blob).reshape(-1, shape[1], shape[2])
    return [float(v) for v in arr.mean(axis=(1, 2))]


def set_mean(tp: pb.TransformationParameter, use_mean: str, job_dir: Path, values: list[float] | None) -> None:
    """A data layer's mean as the form chose: ``image`` the job's mean.binaryproto, ``pixel`` ``values``, or none."""
    tp.ClearField("mean_file")
    tp.ClearField("mean_value")
    if use_mean == "image":
        tp.mean_file = str(job_dir / "mean.binaryproto")
    elif use_mean == "pixel" and values is not None:
        tp.mean_value.extend(values)


def write_files(job_dir: Path, files: ModelFiles, dataset_dir: Path) -> None:
    """Write the job's files atomically (labels and mean copied from the dataset, or the job's own mean)."""
    for name, message in (
        ("original.prototxt", files.original),
        ("train_val.prototxt", files.train_val),
        ("deploy.prototxt", files.deploy),
        ("solver.prototxt", files.solver),
    ):
        atomic_write(job_dir / name, to_text(message).encode())
    atomic_write(job_dir / "info.json", json.dumps(files.info, indent=2).encode())
    for name in ("labels.txt", "mean.binaryproto"):
        if (dataset_dir / name).is_file():
            shutil.copyfile(dataset_dir / name, job_dir / name)
    if files.labels is not None:
        atomic_write(job_dir / "labels.txt", "".join(f"{name}\n" for name in files.labels).encode())
    if files.mean is not None:
        from caffe.io import array_to_blobproto

        blob = array_to_blobproto(files.mean[np.newaxis].astype(np.float32))
        atomic_write(job_dir / "mean.binaryproto", blob.SerializeToString())
    for module, path in files.layer_files.items():
        shutil.copyfile(path, job_dir / f"{module}.py")


def train_argv(job_dir: Path, *, weights: Path | None = None, snapshot: Path | None = None) -> list[str]:
    """``caffe train`` for a job folder (run by the scheduler with this Python, which adds ``--gpu=...``)."""
    from caffe.studio.scheduler import caffe_argv

    # SIGINT (abort, server shutdown) has caffe train's default effect, stop: finish the iteration, snapshot it
    # (the solver's snapshot_after_train, see solver_param), exit 0
    args = ["train", f"--solver={job_dir / 'solver.prototxt'}", f"--events={job_dir / 'events.jsonl'}"]
    if snapshot is not None:
        args.append(f"--snapshot={snapshot}")
    elif weights is not None:
        args.append(f"--weights={weights}")
    return caffe_argv(*args)


def check_python_layers(form: ModelForm, files: ModelFiles, allowed: bool) -> None:
    """FormError (on the network's field) for a network with Python layers when they are not allowed, or
    whose module files would be named like a module the server can import."""
    where = network_field(form)
    try:
        layer_worker.require_consent(files.original, "the network", allowed)
        layer_worker.check_module_names(files.original, "the network", files.layer_files)
    except layer_worker.PythonLayerError as e:
        raise FormError({where: str(e)}) from None


def network_field(form: ModelForm) -> str:
    """The form field that chose the network (where its errors are shown)."""
    return "custom_network" if form.method == "custom" else f"{form.method}_networks"


def network_source(store: Any, form: ModelForm) -> tuple[str, str | None]:
    """The name and text of the form's network as it was written (for the line of a layer), text None when
    it cannot be read."""
    if form.method == "custom":
        return "custom network", form.custom_network
    if form.method == "standard":
        return f"{form.standard_networks}.prototxt", nets.standard_network(form.standard_networks)
    job_dir = store.job_dir(form.previous_networks if form.method == "previous" else form.pretrained_networks)
    for name in ("original.prototxt", "deploy.prototxt"):
        if (job_dir / name).is_file():
            return name, (job_dir / name).read_text(encoding="utf-8", errors="replace")
    return "the network", None


def network_error(store: Any, form: ModelForm, e: CaffeError) -> FormError:
    """A net's build error as the network field's error, at the line of the layer it names."""
    source, text = network_source(store, form)
    return FormError({network_field(form): validate.where(str(e), source, text)})


def create_model_job(
    store: Any,
    scheduler: Any,
    form: ModelForm,
    allow_python_layers: bool = False,
    build: Callable[..., ModelFiles] | None = None,
) -> Any:
    """Check the form, create the job, write its files and submit the training; returns the job.

    A network with Python layers needs ``allow_python_layers`` (the studio's ``--allow_python_layers``).
    ``build`` computes the files (default :func:`build_files`; object detection:
    :func:`caffe.studio.detection_models.build_files`)."""
    devices = list(scheduler.devices)
    form.check(devices)
    job = store.create("model", form.model_name or "model", form.to_dict(), parent=form.dataset)
    job_dir = store.job_dir(job.id)
    try:
        try:
            files = (build or build_files)(store, form, job_dir, devices)
            check_python_layers(form, files, allow_python_layers)
            write_files(job_dir, files, store.job_dir(form.dataset))
            h, w, c = files.info["image dimensions"]
            validate.check(
                files.train_val,
                files.deploy,
                (c, h, w),
                validation=bool(files.solver.test_iter),
                job_dir=job_dir,
                tops=files.input_shapes,
            )
        except validate.NET_ERRORS as e:
            raise network_error(store, form, e) from None
        store.update(job.id, result={"info": files.info})
        request = form.gpu_request()
        argv = train_argv(job_dir, weights=files.weights)
        return scheduler.submit(job.id, argv, "cpu" if request is None else None, gpus=request)
    except BaseException:
        store.delete(job.id)
        raise


# ---------------------------------------------------------------------------------------------- snapshots
def job_info(job_dir: Path) -> dict[str, Any]:
    path = job_dir / "info.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def epoch_of(iteration: int, per_epoch: int) -> float:
    """An iteration as epochs (3 decimals; whole epochs as ints, as DIGITS shows them)."""
    e = round(iteration / max(per_epoch, 1), 3)
    return int(e) if e == int(e) else e


def iteration_of(epoch: float, per_epoch: int) -> int:
    return round(epoch * per_epoch)


def snapshot_files(job_dir: Path, kind: str = "caffemodel") -> dict[int, Path]:
    """``{iteration: path}`` of the job's ``snapshot_iter_N.<kind>`` files."""
    found: dict[int, Path] = {}
    for p in job_dir.iterdir() if job_dir.is_dir() else ():
        m = SNAPSHOT_RE.match(p.name)
        if m and m.group(2) == kind:
            found[int(m.group(1))] = p
    return dict(sorted(found.items()))


def snapshots(job_dir: Path) -> list[dict[str, Any]]:
    """The weight snapshots as ``[{iter, epoch, file}]`` (oldest first)."""
    per_epoch = job_info(job_dir).get("iterations per epoch", 1)
    return [{"iter": i, "epoch": epoch_of(i, per_epoch), "file": p.name} for i, p in snapshot_files(job_dir).items()]


def snapshot_for_epoch(job_dir: Path, epoch: float | None) -> Path | None:
    """The weights of ``epoch`` (None: the newest)."""
    files = snapshot_files(job_dir)
    if not files:
        return None
    if epoch is None:
        return files[max(files)]
    per_epoch = job_info(job_dir).get("iterations per epoch", 1)
    return files.get(iteration_of(epoch, per_epoch))


def latest_solverstate(job_dir: Path) -> Path | None:
    states = snapshot_files(job_dir, "solverstate")
    return states[max(states)] if states else None


STOPPED = ("Interrupted", "Aborted")  # trainings that were stopped (they may have a snapshot to resume from)


def resume_point(job_dir: Path) -> dict[str, Any] | None:
    """The snapshot a resume continues from: ``{iter, epoch, file}`` of the newest solver state, or None."""
    state = latest_solverstate(job_dir)
    if state is None:
        return None
    iteration = int(SNAPSHOT_RE.match(state.name).group(1))  # type: ignore[union-attr]
    per_epoch = job_info(job_dir).get("iterations per epoch", 1)
    return {"iter": iteration, "epoch": epoch_of(iteration, per_epoch), "file": state.name}


def run_again(store: Any, scheduler: Any, job_id: str, how: str, allow_python_layers: bool = False) -> Any:
    """``how`` = "resume": continue a stopped training from its newest snapshot (FormError without one);
    "restart": run it again from iteration 0 (its pretrained weights, if any)."""
    job = store.get(job_id)
    if job.kind != "model":
        raise FormError({"job": f"job {job_id} is a {job.kind}, not a model"})
    if job.status == "Error":
        raise FormError({"job": f"job {job_id} failed: fix the cause in a clone of it (Clone), then run that"})
    if job.status not in STOPPED:
        raise FormError({"job": f"job {job_id} is {job.status}: only interrupted or aborted trainings run again"})
    point = resume_point(store.job_dir(job_id))
    if how == "resume" and point is None:
        raise FormError({"job": f"job {job_id} left no snapshot: it can only restart from iteration 0"})
    return resume_model_job(store, scheduler, job_id, allow_python_layers, from_start=how == "restart")


def resume_model_job(
    store: Any, scheduler: Any, job_id: str, allow_python_layers: bool = False, from_start: bool = False
) -> Any:
    """Continue a stopped training from its newest solver state (from the start when it has none, or when
    ``from_start``)."""
    job = store.get(job_id)
    if job.kind != "model":
        raise FormError({"job": f"job {job_id} is a {job.kind}, not a model"})
    if job.status not in ("Interrupted", "Aborted", "Error"):
        raise FormError({"job": f"job {job_id} is {job.status}: only interrupted, aborted or failed trainings resume"})
    job_dir = store.job_dir(job_id)
    if (job_dir / "train_val.prototxt").is_file():
        layer_worker.require_consent(
            read_net_param(job_dir / "train_val.prototxt"), "train_val.prototxt", allow_python_layers
        )
    state = None if from_start else latest_solverstate(job_dir)
    weights = None
    if state is None:
        w = job.result.get("info", {}).get("pretrained weights")
        weights = Path(w) if w else None
    argv = train_argv(job_dir, weights=weights, snapshot=state)
    if job.resource == "cuda":  # the GPUs it asked for (any free ones, or the same ids)
        return scheduler.submit(job_id, argv, gpus=job.gpu_request)
    return scheduler.submit(job_id, argv, job.resource or job.params.get("device", "cpu"))


# ---------------------------------------------------------------------------------------------- progress
def read_events(job_dir: Path) -> list[dict[str, Any]]:
    path = job_dir / "events.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:  # a line being written
            continue
    return out


def _finite(x: Any) -> bool:
    return not isinstance(x, (int, float)) or math.isfinite(x)


def training_progress(job_dir: Path, events: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Charts, progress, ETA and NaN advice from the job's events (a resumed run replaces what came
    after its starting iteration). x values are epochs."""
    info = job_info(job_dir)
    per_epoch = info.get("iterations per epoch", 1)
    max_iter = info.get("max iterations", 0)
    accuracy = set(info.get("accuracy outputs", []))
    percent = set(info.get("percent outputs", []))  # accuracies already in percent (DetectNet's mAP layer)
    train: list[dict[str, Any]] = []
    val: list[dict[str, Any]] = []
    it, session = 0, None
    nan: str | None = None
    for ev in read_events(job_dir) if events is None else events:
        kind = ev.get("event")
        if kind == "start":
            k = ev.get("iter", 0)
            train = [p for p in train if p["iter"] < k]
            val = [p for p in val if p["iter"] < k]
            max_iter = ev.get("max_iter", max_iter)
            session = (ev.get("time", 0.0), k)
            it = k
        elif kind == "train":
            train.append({"iter": ev["iter"], "loss": ev.get("loss"), "lr": ev.get("lr")})
            it = max(it, ev["iter"])
            if nan is None and not _finite(ev.get("loss")):
                nan = f"the training loss (iteration {ev['iter']})"
        elif kind == "test":
            outputs = ev.get("outputs", {})
            val.append({"iter": ev["iter"], **outputs})
            for name, v in outputs.items():
                if nan is None and not all(_finite(x) for x in (v if isinstance(v, list) else [v])):
                    nan = f"'{name}' (validation, iteration {ev['iter']})"
        elif kind in ("snapshot", "done"):
            it = max(it, ev.get("iter", 0))
    eta = None
    last_time = max((ev.get("time", 0.0) for ev in (events or read_events(job_dir))), default=0.0)
    if session and it > session[1] and max_iter:
        rate = (it - session[1]) / max(last_time - session[0], 1e-6)
        eta = round((max_iter - it) / rate, 1)
    val_series: dict[str, dict[str, list]] = {}
    for p in val:
        for name, v in p.items():
            if name != "iter" and not isinstance(v, list):
                s = val_series.setdefault(name, {"epoch": [], "value": []})
                s["epoch"].append(epoch_of(p["iter"], per_epoch))
                s["value"].append(v)
    return {
        "iter": it,
        "max_iter": max_iter,
        "epoch": epoch_of(it, per_epoch),
        "epochs": info.get("epochs"),
        "progress": round(it / max_iter, 4) if max_iter else 0.0,
        "eta_seconds": eta,
        "train": {
            "epoch": [epoch_of(p["iter"], per_epoch) for p in train],
            "loss": [p["loss"] for p in train],
            "lr": [p["lr"] for p in train],
        },
        "val": {name: {**s, "kind": _kind(name, accuracy, percent)} for name, s in val_series.items()},
        "names": info.get("output names") or {},  # how the charts call an output (a detector's mean AP: "mAP")
        "nan": nan,
        "advice": NAN_ADVICE.format(what=nan) if nan else None,
    }


def _kind(name: str, accuracy: set[str], percent: set[str]) -> str:
    """How a validation output is charted: ``accuracy`` (a fraction), ``percent`` (already in %) or ``loss``."""
    return "accuracy" if name in accuracy else "percent" if name in percent else "loss"


def model_summary(store: Any, job_id: str) -> dict[str, Any]:
    """``GET /models/{id}.json``: DIGITS' fields plus the series the charts draw."""
    job = store.get(job_id)
    job_dir = store.job_dir(job_id)
    snaps = snapshots(job_dir)
    point = resume_point(job_dir) if job.status in STOPPED else None
    progress = training_progress(job_dir)
    return {
        "id": job.id,
        "name": job.name,
        "directory": str(job_dir),
        "status": job.status,
        "dataset": job.parent,
        "snapshots": [s["epoch"] for s in snaps],
        "snapshot_files": snaps,
        "can_resume": point is not None,  # stopped, with a snapshot: resume continues from resume_from
        "resume_from": point,
        "no_snapshot": job.status in STOPPED and point is None,  # stopped before any snapshot: restart only
        "error": job_failure(job_dir, job.result, job.returncode).to_dict() if job.status == "Error" else None,
        "has_data": bool(progress["train"]["epoch"] or progress["val"]),
        "charts": charts.model_charts(progress, job_dir, job_info(job_dir).get("classes"), job.params.get("lr_policy")),
        "gpus": job.gpus,  # held now (Running) or by the last run
        "gpu_request": job.gpu_request,
        "hardware": job_hardware(job),
        "params": job.params,
        "info": job_info(job_dir),
        **progress,
        "updated": job.updated,
        "now": time.time(),
    }


def package(job_dir: Path, epoch: float | None, fmt: str, out_dir: Path) -> Path:
    """A DIGITS-style archive of the snapshot of ``epoch`` (newest when None) in ``out_dir``."""
    from caffe.deploy import package_model

    weights = snapshot_for_epoch(job_dir, epoch)
    if weights is None:
        what = f"epoch {epoch:g}" if epoch is not None else "any epoch"
        raise FormError({"epoch": f"no snapshot for {what} (snapshots: {[s['epoch'] for s in snapshots(job_dir)]})"})
    info = job_info(job_dir)
    per_epoch = info.get("iterations per epoch", 1)
    iteration = int(SNAPSHOT_RE.match(weights.name).group(1))  # type: ignore[union-attr]
    ep = epoch_of(iteration, per_epoch)
    out = out_dir / f"{job_dir.name}_epoch_{ep}.{fmt}"

    def opt(name: str) -> Path | None:
        return job_dir / name if (job_dir / name).is_file() else None

    return package_model(
        out,
        deploy=job_dir / "deploy.prototxt",
        weights=weights,
        solver=opt("solver.prototxt"),
        train_val=opt("train_val.prototxt"),
        original=opt("original.prototxt"),
        mean=opt("mean.binaryproto"),
        labels=opt("labels.txt"),
        info={"job id": job_dir.name, "epoch": ep, "classes": info.get("classes"), "network": info.get("network")},
        fmt=fmt,
    )


def customize(store: Any, form: ModelForm) -> dict[str, Any]:
    """The chosen network as editable text ("Customize"): with a dataset, its classifier already set
    (and renamed when weights come with it)."""
    chosen = choose_network(store, form)
    net = nets.trainable(chosen.net)
    renamed: list[tuple[str, str]] = []
    if is_job_id(form.dataset):
        data = DatasetInfo.from_job(store, form.dataset)
        renamed = nets.retarget(net, data.classes, finetune=chosen.weights is not None)
    return {
        "network": to_text(net),
        "renamed": [list(r) for r in renamed],
        "finetune": chosen.weights is not None,
        "suggested_lr": FINETUNE_LR if chosen.weights is not None else None,
        **network_defaults(net),
    }
