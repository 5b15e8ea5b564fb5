"""Segmentation model jobs: a fully convolutional net trained on a segmentation dataset (DIGITS 5's "New Image
Segmentation Model": DIGITS trained FCN-AlexNet there; the studio trains any FCN, SegNet or ENet-style net).

The form is :class:`caffe.studio.models.ModelForm` (same fields, same solver mapping); the network is a pretrained
segmentation net (its deploy net, or the training net uploaded with it), a previous segmentation model, or a custom
net (deploy or training form); there is no standard one. :mod:`caffe.studio.segmentation_networks` makes the job's
nets: image and label ``Data`` layers reading the dataset's paired LMDBs (the images with the form's mean: the
dataset's mean image, its per-channel values, or none), the score layers set to the dataset's classes,
``SoftmaxWithLoss`` over the pixels (255 ignored) and a per-pixel ``Accuracy`` on the chart. Crop size does not
apply (the image and its label map would be cropped apart); the images keep the dataset's size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from caffe.errors import NetError
from caffe.protoio import to_text
from caffe.studio import segmentation_networks as sn
from caffe.studio.models import (
    DatasetInfo,
    FormError,
    ModelFiles,
    ModelForm,
    Network,
    choose_network,
    finished_dataset,
    job_info_fields,
    job_solver,
    mean_values,
    network_field,
    set_mean,
)
from caffe.studio.networks import DEFAULT_BATCH_SIZE, fill_missing_fillers

TASK = "segmentation"


def segmentation_dataset(store: Any, job_id: str) -> DatasetInfo:
    """What a segmentation model job needs from a finished segmentation dataset job (its result's counts, labels
    and image size)."""
    job = finished_dataset(store, job_id, TASK)
    result = job.result or {}
    counts = result.get("counts") or {}
    labels = [str(x) for x in result.get("labels") or []]
    dims = result.get("image_dims") or []
    if int(counts.get("train", 0)) < 1:
        raise FormError({"dataset": f"dataset {job_id} has no training images"})
    if len(labels) < 2 or len(dims) != 3:
        raise FormError({"dataset": f"dataset {job_id} has no classes or no image size"})
    h, w, c = (int(d) for d in dims)
    return DatasetInfo(
        job_id, store.job_dir(job_id), int(counts["train"]), int(counts.get("val", 0)), labels, (c, h, w)
    )


def _parts(chosen: Network, form: ModelForm, data: DatasetInfo) -> tuple[sn.SegParts, list[tuple[str, str]]]:
    """The chosen network taken apart and set to the dataset's classes; errors go to the network's field."""
    if form.method == "standard":
        raise FormError(
            {
                "standard_networks": "there is no standard segmentation network: fine-tune a pretrained one (FCN, "
                "SegNet, ...: upload it under Pretrained Models), or paste a network as a custom network"
            }
        )
    try:
        parts = sn.seg_parts(chosen.net)
        renamed = sn.retarget(parts, data.classes, finetune=chosen.weights is not None)
    except NetError as e:
        raise FormError({network_field(form): str(e)}) from None
    fill_missing_fillers(parts.body)
    return parts, renamed


def _sources(form: ModelForm, data: DatasetInfo, parts: sn.SegParts, job_dir: Path) -> sn.SegSources:
    """The paired databases, the batch sizes and the images' transformation (the form's mean)."""
    transform = sn.image_transform(parts)
    values = mean_values(data.dir / "mean.binaryproto", data.shape) if form.use_mean == "pixel" else None
    set_mean(transform, form.use_mean, job_dir, values)
    batch = form.batch_size or parts.train_batch or DEFAULT_BATCH_SIZE
    validate = bool(data.val_count and form.val_interval)
    return sn.SegSources(
        train_db=str(data.dir / "train_db"),
        train_labels_db=str(data.dir / "train_labels_db"),
        val_db=str(data.dir / "val_db") if validate else None,
        val_labels_db=str(data.dir / "val_labels_db") if validate else None,
        train_batch=batch,
        val_batch=min(parts.test_batch or batch, max(data.val_count, 1)),
        transform=transform,
    )


def customize(store: Any, form: ModelForm) -> dict[str, Any]:
    """The chosen network as editable text ("Customize"): the train/val net a job on the form's dataset trains
    (its classes set; nothing renamed, since a custom network starts without weights)."""
    data = segmentation_dataset(store, form.dataset)
    chosen = choose_network(store, form)
    parts, _ = _parts(Network(chosen.net, None, chosen.source), form, data)
    sources = _sources(form, data, parts, store.job_dir(form.dataset))
    net = sn.train_val_net(parts, sources)
    return {"network": to_text(net), "renamed": [], "finetune": False, "suggested_lr": None,
            "batch_size": sources.train_batch, "crop_size": None}  # fmt: skip


def build_files(store: Any, form: ModelForm, job_dir: Path, devices: list[str] | None = None) -> ModelFiles:
    """Check the form and compute a segmentation job's files (nothing is written); see the module."""
    form.check(devices)
    if form.crop_size:
        raise FormError({"crop_size": "segmentation models train on whole images: the label maps cannot be cropped"})
    data = segmentation_dataset(store, form.dataset)
    chosen = choose_network(store, form)
    parts, renamed = _parts(chosen, form, data)
    sources = _sources(form, data, parts, job_dir)
    train_val = sn.train_val_net(parts, sources)
    deploy = sn.deploy_net(parts, data.shape)
    solver = job_solver(form, job_dir, data, sources.train_batch, sources.val_batch, validate=bool(sources.val_db))
    info = {
        **job_info_fields(job_dir, form, data, chosen, renamed, solver, sources.train_batch),
        "task": TASK,
        "crop size": None,
        "mean subtraction": form.use_mean,
        "input scale": float(sources.transform.scale) if sources.transform.HasField("scale") else 1.0,
        "accuracy outputs": [sn.ACCURACY_BLOB] if sources.val_db else [],
        "mean file": "mean.binaryproto",
    }
    files = ModelFiles(train_val, train_val, deploy, solver, info, chosen.weights, chosen.layer_files)
    files.input_shapes = {sn.LABEL_BLOB: (1, *data.shape[1:])}
    return files
