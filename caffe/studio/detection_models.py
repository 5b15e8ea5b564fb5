"""Object-detection model jobs: an SSD network, or DIGITS' DetectNet, trained on an object-detection dataset (the
"New Object Detection Model" form).

A DetectNet network (one with NVIDIA/caffe's ``DetectNetTransformation``, e.g. DIGITS' KITTI example pasted as a
custom network) trains on a dataset stored for DetectNet, as DIGITS trains it: :mod:`caffe.studio.detectnet_networks`
makes its nets, its classes and their names are the network's own (``object_class``), the mean is its own, and
the chart shows its validation layer's mAP, precision and recall. The rest of this docstring is about SSD.

The form is :class:`caffe.studio.models.ModelForm` (same fields, same solver mapping); the network comes from a
pretrained SSD detector (its deploy net, or the training net uploaded with it; weights copied by layer name, so the
body and the box regressors start trained), a previous detection model, or a custom SSD network (deploy or
training form). :mod:`caffe.studio.detection_networks` turns it into the job's nets: ``AnnotatedData`` layers
reading the dataset's LMDBs, the confidence layers set to the dataset's classes (renamed ``*_retrain`` when their
size changes under pretrained weights), ``MultiBoxLoss`` for training and, for validation, ``DetectionOutput`` +
``DetectionEvaluate``: the solver runs the fork's ``eval_type: "detection"`` and the chart shows the mean average
precision (``detection_eval``, 11-point, as the fork's VOC scripts). Crop size does not apply (SSD warps each image
to the net's input); the mean is the network's own (its training data layer's, or the pretrained job's mean
values), else the fork's 104, 117, 123; ``use_mean: none`` subtracts none. The job's ``info.json`` carries what
the studio's inference needs: ``task: object-detection``, ``mean_values``, ``input scale``, ``image dimensions``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from caffe.errors import NetError
from caffe.proto import caffe_pb2 as pb
from caffe.protoio import to_text
from caffe.studio import detection_networks as dn
from caffe.studio import detectnet_networks as dtn
from caffe.studio.models import (
    FormError,
    ModelFiles,
    ModelForm,
    Network,
    choose_network,
    finished_dataset,
    job_info_fields,
    job_solver,
    network_field,
)
from caffe.studio.networks import fill_missing_fillers

TASK = "object-detection"
DEFAULT_BATCH_SIZE = 8  # SSD's 300 x 300 images: the fork's 32 needs a GPU
AP_VERSION = "11point"  # the fork's VOC scripts' choice


@dataclass
class DetectionDataset:
    """What a detection model job needs from a finished object-detection dataset job."""

    id: str
    dir: Path
    train_count: int
    val_count: int
    labels: list[str]  # background first
    detector: str = "ssd"  # what the records are stored for (caffe.studio.detection_datasets)
    image_dims: list[int] | None = None  # [height, width, channels] when all images have one size

    @property
    def classes(self) -> int:
        return len(self.labels)

    @property
    def label_map(self) -> Path:
        return self.dir / "labelmap.prototxt"

    @classmethod
    def from_job(cls, store: Any, job_id: str) -> DetectionDataset:
        job = finished_dataset(store, job_id, TASK)
        result = job.result or {}
        counts = result.get("counts") or {}
        labels = [str(x) for x in result.get("labels") or []]
        if int(counts.get("train", 0)) < 1:
            raise FormError({"dataset": f"dataset {job_id} has no training images"})
        if len(labels) < 2:
            raise FormError({"dataset": f"dataset {job_id} has no object classes"})
        dims = result.get("image_dims")
        return cls(
            job_id,
            store.job_dir(job_id),
            int(counts["train"]),
            int(counts.get("val", 0)),
            labels,
            str(result.get("detector") or "ssd"),
            [int(d) for d in dims] if dims else None,
        )

    def check_detector(self, detector: str) -> None:
        """FormError (on the dataset) when its records are not stored for ``detector``."""
        if self.detector == detector:
            return
        shown = {"ssd": "SSD", "detectnet": "DetectNet"}
        raise FormError(
            {
                "dataset": f"dataset {self.id} is stored for {shown[self.detector]}; this network is a "
                f"{shown[detector]} network: make the dataset again with Detector: {shown[detector]}"
            }
        )


def _parts(chosen: Network, form: ModelForm) -> dn.SsdParts:
    """The chosen network taken apart; its errors go to the network's field."""
    if form.method == "standard":
        raise FormError(
            {
                "standard_networks": "there is no standard object-detection network yet: fine-tune a pretrained SSD "
                "detector (upload its deploy.prototxt and .caffemodel under Pretrained Models), or paste an SSD or "
                "DetectNet network as a custom network"
            }
        )
    try:
        return dn.ssd_parts(chosen.net)
    except NetError as e:
        raise FormError({network_field(form): str(e)}) from None


def _mean(store: Any, form: ModelForm, parts: dn.SsdParts) -> tuple[list[float], float]:
    """The mean values and input scale: the network's own, the pretrained job's mean values, else the fork's."""
    own = dn.network_mean(parts)
    if form.use_mean == "none":
        return [], own[1] if own else 1.0
    if own is not None:
        return own
    if form.method == "pretrained":
        values = (store.get(form.pretrained_networks).params or {}).get("mean_values") or []
        if values:
            return [float(v) for v in values], 1.0
    return list(dn.DEFAULT_MEAN), 1.0


def _sources(store: Any, form: ModelForm, data: DetectionDataset, parts: dn.SsdParts) -> dn.DataSources:
    """Where and how the job's data layers read: the dataset's LMDBs, the batch sizes, the mean."""
    mean, scale = _mean(store, form, parts)
    batch = form.batch_size or parts.train_batch or DEFAULT_BATCH_SIZE
    return dn.DataSources(
        train_db=str(data.dir / "train_db"),
        val_db=str(data.dir / "val_db") if data.val_count and form.val_interval else None,
        label_map=str(data.label_map),
        train_batch=batch,
        val_batch=min(parts.test_batch or batch, max(data.val_count, 1)),
        mean=mean,
        scale=scale,
    )


def _is_detectnet(form: ModelForm, chosen: Network) -> bool:
    """Whether the chosen network is DetectNet's (trained by DIGITS' rules); a DetectNet deploy net is refused."""
    if form.method == "standard":
        return False
    if dtn.is_detectnet_deploy(chosen.net):
        raise FormError(
            {
                network_field(form): "this is a DetectNet deploy net (its clustering, no DetectNetTransformation): "
                "training needs the whole network, with its train and val stages (NVIDIA/caffe's "
                "detectnet_network.prototxt form, DIGITS' original.prototxt): upload the model with it, or paste "
                "it as a custom network"
            }
        )
    return dtn.is_detectnet(chosen.net)


def _detectnet_nets(
    form: ModelForm, data: DetectionDataset, chosen: Network
) -> tuple[pb.NetParameter, pb.NetParameter, int, int, bool]:
    """A DetectNet job's train/val and deploy nets, TRAIN and TEST batch sizes and whether it validates."""
    data.check_detector("detectnet")
    if not data.image_dims:
        raise FormError(
            {
                "dataset": f"dataset {data.id}: its images have different sizes, and DetectNet trains on one: make it "
                "again with a padding or resize size"
            }
        )
    where = network_field(form)
    try:
        unknown = dtn.unknown_classes(chosen.net, data.labels)
    except NetError as e:
        raise FormError({where: str(e)}) from None
    if unknown:
        have = ", ".join(f"{i} {name}" for i, name in enumerate(data.labels) if i)
        raise FormError(
            {
                where: f"object_class maps dataset class {', '.join(map(str, unknown))}, which dataset {data.id} "
                f"does not have (its classes: {have})"
            }
        )
    h, w, c = data.image_dims
    wrong = dtn.size_mismatches(chosen.net, (w, h))
    if wrong:
        raise FormError(
            {
                where: f"the network is sized for other images than dataset {data.id}'s {w} x {h} ("
                f"{'; '.join(wrong[:4])}): set image_size_x/image_size_y of its DetectNetTransformation layers and "
                f"the first two values of its clustering layers' param_str to {w}, {h}, or make the dataset that size"
            }
        )
    val_db = data.dir / "val_db" if data.val_count and form.val_interval else None
    sources = dtn.DetectNetSources(data.dir / "train_db", val_db, form.batch_size)
    try:
        train_val, batch, val_batch = dtn.train_val_net(chosen.net, sources)
        deploy = dtn.deploy_net(chosen.net, (c, h, w))
    except NetError as e:
        raise FormError({where: str(e)}) from None
    validate = any(x.type == "Data" and x.include and x.include[0].phase == pb.TEST for x in train_val.layer)
    fill_missing_fillers(list(train_val.layer))
    return train_val, deploy, batch, val_batch, validate


def _detectnet_files(form: ModelForm, job_dir: Path, data: DetectionDataset, chosen: Network) -> ModelFiles:
    """A DetectNet job's files (see the module)."""
    train_val, deploy, batch, val_batch, validate = _detectnet_nets(form, data, chosen)
    solver = job_solver(form, job_dir, data, batch, val_batch, validate=validate)
    names = dtn.class_names(chosen.net, data.labels)
    h, w, c = data.image_dims or (0, 0, 0)
    info = {
        **job_info_fields(job_dir, form, data, chosen, [], solver, batch),
        "task": TASK,
        "detector": "detectnet",
        "classes": len(names),
        "image dimensions": [h, w, c],
        "crop size": None,
        "mean subtraction": "none",  # the network subtracts its own (DetectNetTransformation)
        "mean_values": [],
        "input scale": 1.0,
        "resize_mode": "squash",
        "accuracy outputs": [],
        "percent outputs": dtn.percent_outputs(train_val) if validate else [],
    }
    return ModelFiles(chosen.net, train_val, deploy, solver, info, chosen.weights, chosen.layer_files, labels=names)


def customize(store: Any, form: ModelForm) -> dict[str, Any]:
    """The chosen network as editable text ("Customize"): the train/val net a job on the form's dataset trains
    (SSD: its classes set; nothing renamed, since a custom network starts without weights)."""
    data = DetectionDataset.from_job(store, form.dataset)
    chosen = choose_network(store, form)
    if _is_detectnet(form, chosen):
        train_val, _, batch, _, _ = _detectnet_nets(form, data, chosen)
        network = to_text(train_val)
        return {"network": network, "renamed": [], "finetune": False, "suggested_lr": None, "batch_size": batch,
                "crop_size": None}  # fmt: skip
    data.check_detector("ssd")
    parts = _parts(chosen, form)
    try:
        dn.retarget(parts, data.classes, finetune=False)
    except NetError as e:
        raise FormError({network_field(form): str(e)}) from None
    fill_missing_fillers(parts.body)
    sources = _sources(store, form, data, parts)
    return {
        "network": to_text(dn.train_val_net(parts, sources)),
        "renamed": [],
        "finetune": False,
        "suggested_lr": None,
        "batch_size": sources.train_batch,
        "crop_size": None,
    }


def build_files(store: Any, form: ModelForm, job_dir: Path, devices: list[str] | None = None) -> ModelFiles:
    """Check the form and compute a detection job's files (nothing is written); see the module."""
    form.check(devices)
    if form.crop_size:
        raise FormError({"crop_size": "object detection models resize each image to the network's input: no crop"})
    data = DetectionDataset.from_job(store, form.dataset)
    chosen = choose_network(store, form)
    if _is_detectnet(form, chosen):
        return _detectnet_files(form, job_dir, data, chosen)
    data.check_detector("ssd")
    parts = _parts(chosen, form)
    try:
        renamed = dn.retarget(parts, data.classes, finetune=chosen.weights is not None)
    except NetError as e:
        raise FormError({network_field(form): str(e)}) from None
    fill_missing_fillers(parts.body)
    sources = _sources(store, form, data, parts)
    batch, val_batch, mean, scale = sources.train_batch, sources.val_batch, sources.mean, sources.scale
    train_val = dn.train_val_net(parts, sources)
    deploy = dn.deploy_net(parts)
    solver = job_solver(form, job_dir, data, batch, val_batch, validate=bool(sources.val_db))
    if sources.val_db:
        solver.eval_type, solver.ap_version = "detection", AP_VERSION
    c, h, w = parts.input_shape
    info = {
        **job_info_fields(job_dir, form, data, chosen, renamed, solver, batch),
        "task": TASK,
        "image dimensions": [h, w, c],
        "crop size": None,
        "mean subtraction": "pixel" if mean else "none",
        "mean_values": mean,
        "input scale": scale,
        "resize_mode": "squash",
        "accuracy outputs": [dn.EVAL_BLOB] if sources.val_db else [],
        "output names": {dn.EVAL_BLOB: "mAP"},
        "mean file": "mean.binaryproto" if mean else None,
    }
    # the mean values as a mean image too, so the job's archive and promoted model carry them as DIGITS' do
    image = np.broadcast_to(np.asarray(mean, np.float32)[:, None, None], (c, h, w)) if len(mean) in (1, c) else None
    return ModelFiles(train_val, train_val, deploy, solver, info, chosen.weights, chosen.layer_files, image)
