"""Model pages and DIGITS' model JSON routes (``router``, included by ``caffe.studio.app``).

* ``GET  /models/images/classification/new`` (and ``/models/new``): the "New Image Classification Model" form;
* ``POST /models/images/classification``: create the job, then redirect to its page (errors: the form again);
* ``POST /models/images/classification.json``: the same for API callers -> ``{job_id, name, status}`` or
  400 ``{errors: [...], fields: {field: message}}``; the fields are DIGITS' (see ``models.ModelForm``);
* ``GET  /models/images/object-detection/new``, ``POST /models/images/object-detection[.json]``: the same for an SSD
  detector trained on an object-detection dataset (:mod:`caffe.studio.detection_models`), and
  ``/models/images/segmentation/...`` for a segmentation net on a segmentation dataset
  (:mod:`caffe.studio.segmentation_models`); what trains follows the dataset the form names, whichever route it
  reaches;
* ``POST /models/customize.json``: the chosen network as editable text (classifier set/renamed for the dataset);
* ``POST /models/visualize-lr.json``: the learning rate over the training, computed by the solver's own code;
* ``GET  /models/{id}`` (page), ``/models/{id}.json``: status, progress, ETA, snapshots, chart series, NaN advice;
* ``GET  /models/{id}/download[.tar.gz|.zip]?epoch=N&fmt=tar.gz|zip``: the DIGITS archive of a snapshot;
* ``POST /jobs/{id}/resume``: continue an interrupted/aborted training from its newest ``.solverstate`` (409 when
  it failed or left none); ``POST /jobs/{id}/restart``: run it again from iteration 0.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from caffe.errors import CaffeError, DataError
from caffe.studio import charts
from caffe.studio import detection_models as dm
from caffe.studio import models as m
from caffe.studio import networks as nets
from caffe.studio import segmentation_models as sm
from caffe.studio.paths import check_job_id, is_job_id
from caffe.studio.store import Job
from caffe.studio.web import data_roots, job_of_kind, json_fields, json_safe, studio_of, wants_html

router = APIRouter()

ARCHIVE_FORMATS = ("tar.gz", "zip")
MAX_FORM_BYTES = 16 << 20  # a custom network pasted in the editor
LIST_FIELDS = frozenset({"select_gpus"})  # form fields that may repeat (a multiple select)


def _model_job(request: Request, job_id: str) -> Job:
    return job_of_kind(request, job_id, "model")


async def _values(request: Request) -> dict[str, Any]:
    """The submitted fields, from a form (urlencoded or multipart) or a JSON object."""
    try:
        body = await json_fields(request)
    except DataError as e:
        raise m.FormError({"body": str(e)}) from None
    if body is not None:
        return body
    form = await request.form()
    values: dict[str, Any] = {}
    for key, value in form.multi_items():
        if key in LIST_FIELDS:
            values.setdefault(key, []).append(value)
        elif isinstance(value, str):
            values[key] = value
        elif key == "custom_network_file":  # a prototxt file instead of the editor's text
            data = await value.read(MAX_FORM_BYTES + 1)
            if len(data) > MAX_FORM_BYTES:
                raise m.FormError({key: f"over the {MAX_FORM_BYTES >> 20} MiB limit"})
            if data:
                values["custom_network"] = data.decode("utf-8", errors="replace")
    return values


def _errors(e: CaffeError) -> dict[str, str]:
    return e.errors if isinstance(e, m.FormError) else {"network": str(e)}


def _error_response(e: CaffeError) -> JSONResponse:
    fields = _errors(e)
    return JSONResponse({"errors": [f"{k}: {v}" for k, v in fields.items()], "fields": fields}, status_code=400)


# ---------------------------------------------------------------------------------------------- the form
ROUTE_TASKS = (*m.TASKS, "generic")  # DIGITS' generic models (POST /models/images/generic[.json]): the dataset's task
BUILDERS = {"object-detection": dm.build_files, "segmentation": sm.build_files}  # classification: models'
CUSTOMIZERS = {"object-detection": dm.customize, "segmentation": sm.customize}


def _choices(request: Request, task: str = "classification") -> dict[str, Any]:
    """The form's choices: the finished datasets and the previous models of the form's task."""
    store = studio_of(request).store
    return {
        "task": task,
        "datasets": [j for j in store.list("dataset") if j.status == "Done" and m.task_of(j) == task],
        "previous": [(j, m.snapshots(store.job_dir(j.id))) for j in store.list("model") if m.task_of(j) == task],
        "pretrained": [j for j in store.list("pretrained") if j.status == "Done"],
        "standard": nets.STANDARD_NETWORKS,
        "solver_types": m.SOLVER_TYPES,
        "lr_policies": m.LR_POLICIES,
        "gpus": studio_of(request).scheduler.gpus,
        "free_gpus": studio_of(request).scheduler.free_gpus(),
        "roots": [str(r) for r in data_roots(request)],
    }


def _form_page(
    request: Request, values: dict[str, Any], errors: dict[str, str] | None = None, task: str | None = None
) -> Response:
    """The form (``task`` None: the task of the dataset the values name, else classification)."""
    defaults = m.ModelForm().to_dict()
    task = task or _dataset_task(request, values.get("dataset"))
    choices = _choices(request, task)
    if task != "classification":  # no standard network: fine-tune a pretrained one
        defaults["method"] = "pretrained"
    if task == "object-detection":  # the mean is the network's
        defaults["use_mean"] = "pixel"
    if not values.get("dataset") and len(choices["datasets"]) == 1:  # the only dataset: chosen already
        values = {**values, "dataset": choices["datasets"][0].id}
    context = {"values": {**defaults, **values}, "errors": errors or {}, **choices}
    return studio_of(request).templates.TemplateResponse(
        request, "model_new.html", context, status_code=400 if errors else 200
    )


@router.get("/models/new", include_in_schema=False)
def model_new_short() -> RedirectResponse:
    return RedirectResponse("/models/images/classification/new", status_code=303)


def _preset(request: Request, clone: str) -> dict[str, Any]:
    """``?clone=<model id>`` fills the form with that model's form (DIGITS' Clone), other query parameters preset
    single fields (``?method=pretrained&pretrained_networks=<id>``)."""
    values: dict[str, Any] = dict(studio_of(request).store.get(check_job_id(clone)).params) if clone else {}
    values.update({k: v for k, v in request.query_params.items() if k in m.ModelForm.__dataclass_fields__})
    return values


@router.get("/models/images/{task}/new", include_in_schema=False)
def model_new(request: Request, task: str, clone: str = "") -> Response:
    """The "New Image Classification / Object Detection / Segmentation Model" form (see :func:`_preset`); a clone,
    and DIGITS' generic address (``/models/images/generic/new?dataset=<id>``), get their dataset's form."""
    if task not in ROUTE_TASKS:
        raise HTTPException(404, f"no {task!r} models: {', '.join(m.TASKS)}")
    values = _preset(request, clone)
    follow = clone or task == "generic"
    return _form_page(request, values, task=_dataset_task(request, values.get("dataset")) if follow else task)


def _dataset_task(request: Request, job_id: Any) -> str:
    """The task of the dataset ``job_id`` names (classification for anything else, unknown ids included)."""
    if not isinstance(job_id, str) or not is_job_id(job_id):
        return "classification"
    try:
        return m.task_of(studio_of(request).store.get(job_id))
    except KeyError:
        return "classification"


def _create(request: Request, values: dict[str, Any]) -> Job:
    """The model job of a form, for its dataset's task (a detector, a segmentation net or a classifier)."""
    studio = studio_of(request)
    form = m.ModelForm.from_dict(values)
    form.data_roots = data_roots(request)
    build = BUILDERS.get(_dataset_task(request, form.dataset))
    return m.create_model_job(studio.store, studio.scheduler, form, studio.config.allow_python_layers, build)


# (before the page route: "/models/images/{task}" would take "classification.json" as its task)
@router.post("/models/images/{task}.json", summary="Create a classification, object-detection or segmentation model")
async def model_create_json(request: Request, task: str) -> Response:
    """DIGITS' fields; the dataset's task decides what trains (an SSD detector, a segmentation net, a classifier)."""
    if task not in ROUTE_TASKS:
        return JSONResponse({"errors": [f"no {task!r} models: {', '.join(m.TASKS)}"]}, status_code=404)
    try:
        values = await _values(request)
        job = await run_in_threadpool(_create, request, values)
    except CaffeError as e:
        return _error_response(e)
    return JSONResponse({"job_id": job.id, "name": job.name, "status": job.status}, status_code=201)


@router.post("/models/images/{task}", include_in_schema=False)
async def model_create(request: Request, task: str) -> Response:
    """Create the job (the dataset's task decides what trains), then its page; errors: the form again."""
    values: dict[str, Any] = {}
    if task not in ROUTE_TASKS:
        raise HTTPException(404, f"no {task!r} models: {', '.join(m.TASKS)}")
    try:
        values = await _values(request)
        job = await run_in_threadpool(_create, request, values)
    except CaffeError as e:
        shown = _dataset_task(request, values["dataset"]) if values.get("dataset") else task
        shown = shown if shown in m.TASKS else "classification"
        return _form_page(request, values, _errors(e), shown)
    return RedirectResponse(f"/models/{job.id}", status_code=303)


@router.post("/models/customize.json", summary="The chosen network as text, ready for the custom editor")
async def customize_json(request: Request) -> Response:
    try:
        values = await _values(request)
        form = m.ModelForm.from_dict(values)
        form.data_roots = data_roots(request)
        customize = CUSTOMIZERS.get(_dataset_task(request, form.dataset), m.customize)
        body = await run_in_threadpool(customize, studio_of(request).store, form)
    except CaffeError as e:
        return _error_response(e)
    return JSONResponse(body)


@router.post("/models/visualize-lr.json", summary="The learning rate schedule of a model form (x in epochs)")
async def visualize_lr_json(request: Request) -> Response:
    try:
        form = m.ModelForm.from_dict(await _values(request))
        body = await run_in_threadpool(_lr_preview, request, form)
    except CaffeError as e:
        return _error_response(e)
    except ValueError as e:  # e.g. multistep values that are not numbers
        return _error_response(m.FormError({"lr_policy": str(e)}))
    return JSONResponse(body)


def _lr_preview(request: Request, form: m.ModelForm) -> dict[str, Any]:
    """Without a dataset, 100 iterations per epoch stand in for the real count (the curve's shape is
    the same: its parameters are percentages of the training)."""
    train_count, batch = 100, 1
    task = _dataset_task(request, form.dataset)
    if task != "classification":
        store = studio_of(request).store
        find = dm.DetectionDataset.from_job if task == "object-detection" else sm.segmentation_dataset
        train_count = find(store, form.dataset).train_count
        batch = form.batch_size or (dm.DEFAULT_BATCH_SIZE if task == "object-detection" else nets.DEFAULT_BATCH_SIZE)
    elif form.dataset:
        data = m.DatasetInfo.from_job(studio_of(request).store, form.dataset)
        chosen = m.choose_network(studio_of(request).store, form) if form.method != "custom" else None
        net_batch = m.network_defaults(nets.trainable(chosen.net))["batch_size"] if chosen else None
        train_count, batch = data.train_count, form.batch_size or net_batch or nets.DEFAULT_BATCH_SIZE
    solver = m.solver_param(form, train_count, 0, batch, batch)
    iters, rates = m.lr_schedule(solver)
    per_epoch = m.iterations_per_epoch(train_count, batch, form.batch_accumulation or 1)
    return {
        "iterations": iters,
        "epochs": [m.epoch_of(i, per_epoch) for i in iters],
        "lr": rates,
        "max_iter": solver.max_iter,
        "chart": charts.learning_rate([m.epoch_of(i, per_epoch) for i in iters], rates, solver.lr_policy),
        "solver": {
            "lr_policy": solver.lr_policy,
            "base_lr": solver.base_lr,
            "gamma": solver.gamma,
            "power": solver.power,
            "stepsize": solver.stepsize,
            "stepvalue": list(solver.stepvalue),
        },
    }


# ---------------------------------------------------------------------------------------------- a model
@router.get("/models/{job_id}.json", summary="A model: status, snapshots (epochs), progress and chart series")
def model_json(request: Request, job_id: str) -> Response:
    _model_job(request, job_id)
    return JSONResponse(json_safe(_summary(request, job_id)))


def _summary(request: Request, job_id: str) -> dict[str, Any]:
    """The model's summary, with what it waits for when it waits (the scheduler knows)."""
    studio = studio_of(request)
    return {**m.model_summary(studio.store, job_id), "waiting_for": studio.scheduler.waiting_for(job_id)}


@router.get("/models/{job_id}", include_in_schema=False)
def model_show(request: Request, job_id: str) -> Response:
    job = _model_job(request, job_id)
    store = studio_of(request).store
    summary = _summary(request, job_id)
    context = {
        "job": job,
        "summary": summary,
        "formats": ARCHIVE_FORMATS,
        "dataset_name": _name(store, job.parent),
        "network": _network(store, summary["info"].get("network") or ""),
    }
    return studio_of(request).templates.TemplateResponse(request, "model_show.html", context)


def _name(store: Any, job_id: str | None) -> str | None:
    """A job's name; None when there is none or it was deleted."""
    try:
        return store.get(job_id).name if job_id else None
    except KeyError:
        return None


def _network(store: Any, source: str) -> dict[str, str | None]:
    """A model's network for its page: ``{text, href}`` - a standard network's title, a previous or pretrained
    model's name (linked), never a bare id."""
    kind, _, key = source.partition(":")
    if kind == "standard":
        return {"text": f"{nets.STANDARD_NETWORKS.get(key, key)} (standard)", "href": None}
    if kind in ("previous", "pretrained"):
        name = _name(store, key)
        what = "previous model" if kind == "previous" else "pretrained model"
        page = "/models/" if kind == "previous" else "/pretrained_models/"
        return {"text": f"{name} ({what})" if name else f"a deleted {what}", "href": page + key if name else None}
    return {"text": source or "custom", "href": None}


def _download(request: Request, job_id: str, epoch: float | None, fmt: str) -> Response:
    _model_job(request, job_id)
    if fmt not in ARCHIVE_FORMATS:
        raise HTTPException(400, f"fmt must be one of {', '.join(ARCHIVE_FORMATS)}")
    tmp = Path(tempfile.mkdtemp(prefix="caffe-studio-download-"))
    try:
        path = m.package(studio_of(request).store.job_dir(job_id), epoch, fmt, tmp)
    except CaffeError as e:
        _remove(tmp)
        raise HTTPException(404, str(e)) from None
    media = "application/zip" if fmt == "zip" else "application/gzip"
    return FileResponse(path, media_type=media, filename=path.name, background=BackgroundTask(_remove, tmp))


def _remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


@router.get("/models/{job_id}/download", summary="Download a snapshot as a DIGITS archive (fmt: tar.gz or zip)")
def download(request: Request, job_id: str, epoch: float | None = None, fmt: str = "tar.gz") -> Response:
    return _download(request, job_id, epoch, fmt)


@router.get("/models/{job_id}/download.tar.gz", include_in_schema=False)
def download_tgz(request: Request, job_id: str, epoch: float | None = None) -> Response:
    return _download(request, job_id, epoch, "tar.gz")


@router.get("/models/{job_id}/download.zip", include_in_schema=False)
def download_zip(request: Request, job_id: str, epoch: float | None = None) -> Response:
    return _download(request, job_id, epoch, "zip")


def _run_again(request: Request, job_id: str, how: str) -> Response:
    studio = studio_of(request)
    try:
        job = m.run_again(studio.store, studio.scheduler, job_id, how, studio.config.allow_python_layers)
    except KeyError:
        raise HTTPException(404, f"no job {job_id!r}") from None
    except (CaffeError, RuntimeError, ValueError) as e:
        if wants_html(request):
            raise HTTPException(409, str(e)) from None
        return JSONResponse({"errors": [str(e)]}, status_code=409)
    if wants_html(request):
        return RedirectResponse(f"/models/{job.id}", status_code=303)
    point = m.resume_point(studio.store.job_dir(job_id)) if how == "resume" else None
    return JSONResponse({"job_id": job.id, "status": job.status, "argv": job.argv, "resumed_from": point})


@router.post("/jobs/{job_id}/resume", summary="Resume an interrupted or aborted training from its last snapshot")
def resume(request: Request, job_id: str) -> Response:
    """409 for a failed job (clone it instead) and for one that left no snapshot (restart it); the answer's
    ``resumed_from`` names the snapshot: ``{iter, epoch, file}``."""
    return _run_again(request, job_id, "resume")


@router.post("/jobs/{job_id}/restart", summary="Run an interrupted or aborted training again from iteration 0")
def restart(request: Request, job_id: str) -> Response:
    return _run_again(request, job_id, "restart")
