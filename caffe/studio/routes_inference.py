"""Pretrained-model and inference pages and DIGITS' inference JSON routes (``router``, included by the app).

Pretrained models:

* ``GET  /pretrained_models`` (``.json``): the list; ``GET /pretrained_models/new``: the upload form;
* ``POST /pretrained_models`` (``.json``): upload ``weights_file`` + ``deploy_file`` and/or ``model_def_file``
  (train_val, kept as original.prototxt) + [``labels_file``, ``python_layer_file``, ``mean_file``,
  ``mean_values``], ``image_type``, ``resize_mode``, ``width``, ``height``, ``job_name``; or a Caffe2 model:
  ``init_net_file`` + ``predict_net_file`` [+ ``value_info_file``], converted to a deploy net and weights;
* ``GET  /pretrained_models/{id}`` (``.json``); ``DELETE /pretrained_models/{id}`` (or ``POST .../delete``);
* ``POST /models/{id}/to_pretrained`` (``snapshot_epoch``, ``job_name``): promote a trained model;
* ``POST /pretrained_models/{id}/imagenet_labels``: a 1000-class model without labels gets the server's ImageNet
  labels (``synset_words.txt`` in the project's ``data/ilsvrc12`` or a data root; never downloaded).

Inference (every route takes ``job_id`` - a model or pretrained job - and ``snapshot_epoch``, default the last):

* ``POST /models/images/classification/classify_one`` (page) and ``classify_one.json``: ``image_file`` (upload),
  ``image_url`` (http/https) or ``image_path`` (a URL or a server path), ``show_visualizations``
  -> ``{"predictions": [[label, percent], ...]}`` (top-5; with visualizations also ``"visualizations"``);
  a detector (SSD ``DetectionOutput`` or ``Yolov3DetectionOutput``) gives its boxes above ``threshold`` (default
  0.5) as ``"detections": [{label, label_id, confidence, box: [xmin, ymin, xmax, ymax]}]`` (image pixels), and
  its page draws them on the image; classify-many then lists ``{"detections": {path: [...]}}``; a segmentation net
  (its output N x C x H x W: SegNet, FCN, ENet, PSPNet) gives each class's share of the pixels as
  ``"segmentation": [{label, label_id, pixels, percent}]`` (largest first; the predictions are these labels and
  percentages), its page colours the classes in, and classify-many lists ``{"segmentations": {path: [...]}}``;
* ``POST .../classify_many`` (page) and ``classify_many.json``: ``image_list`` (upload of ``path [label]`` lines;
  relative paths are under ``image_folder``) or ``image_folder`` alone (a folder of class sub-folders), and
  ``num_test_images`` -> ``{"classifications": {path: [[label, percent], ...]}}`` plus, with ground truth,
  ``top1_accuracy``, ``top5_accuracy``, ``confusion_matrix``, ``per_class_accuracy``;
* ``POST .../top_n`` (page) and ``top_n.json``: the same images, ``top_n`` (default 9) best per class.

The ``GET`` of each inference route shows its form. Server paths must lie inside the studio's data roots.
Networks with Python layers are refused (403) unless the studio runs with ``--allow_python_layers``; with it
they run in a worker process (:mod:`caffe.studio.layer_worker`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from caffe.errors import CaffeError, DataError
from caffe.studio import inference, pretrained
from caffe.studio.datasets import RESIZE_MODES
from caffe.studio.dependents import InUse, delete_job
from caffe.studio.paths import is_within, resolve_user_path
from caffe.studio.web import (
    data_roots,
    error_response,
    in_use_response,
    job_of_kind,
    json_fields,
    studio_of,
    wants_html,
    with_models_flag,
)

router = APIRouter()

MAX_TEXT_BYTES = 16 << 20  # a prototxt, labels, list or Python file
MAX_MEAN_BYTES = 256 << 20
MAX_CAFFE2_BYTES = 512 << 20  # a Caffe2 init_net.pb holds all the weights (as a .caffemodel does)
URL_TIMEOUT_S = 10.0
CLASSIFY = "/models/images/classification"


# --------------------------------------------------------------------------------------- helpers
def _page(request: Request, template: str, context: dict[str, Any], status: int = 200) -> Response:
    return studio_of(request).templates.TemplateResponse(request, template, context, status_code=status)


def _fail(request: Request, error: CaffeError, html: bool) -> Response:
    return error_response(request, getattr(error, "status", None) or 400, str(error), html)


FORM_FIELDS = frozenset(
    {
        "job_id",
        "snapshot_epoch",
        "image_file",
        "image_url",
        "image_path",
        "image_list",
        "image_folder",
        "num_test_images",
        "top_n",
        "threshold",
    }
)  # the inference forms' fields
_FIELD_PREFIX = re.compile(r"^([a-z_]+):")


def _at(field: str, error: CaffeError) -> CaffeError:
    """``error``, marked as the fault of the form's ``field`` (unless its message names another field)."""
    named = _FIELD_PREFIX.match(str(error))
    if not getattr(error, "field", None):
        error.field = named.group(1) if named and named.group(1) in FORM_FIELDS else field  # type: ignore[attr-defined]
    return error


def _inline(request: Request, template: str, form: _Form | None, error: CaffeError) -> Response:
    """A browser's failed inference form: the form again, what was typed kept, the error next to its field
    (``form`` when it is no field's); the answer keeps the error's 4xx status."""
    field = getattr(error, "field", None) or "form"
    status = getattr(error, "status", None) or 400
    return _page(request, template, _context(request, form, errors={field: str(error)}), status)


def _python_allowed(request: Request) -> bool:
    """Whether the operator started the studio with ``--allow_python_layers``."""
    return bool(studio_of(request).config.allow_python_layers)


class _Form:
    """A submitted form (multipart, urlencoded or a JSON body): text values and uploaded files."""

    def __init__(self, values: dict[str, Any], files: dict[str, UploadFile]) -> None:
        self.values, self.files = values, files

    def text(self, name: str, default: str = "") -> str:
        value = self.values.get(name)
        return default if value is None else str(value).strip()

    def number(self, name: str, default: int | None, lo: int = 0, hi: int = 1 << 30) -> int | None:
        raw = self.text(name)
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise DataError(f"{name}: expected a whole number, got {raw!r}") from None
        if not lo <= value <= hi:
            raise DataError(f"{name}: must be between {lo} and {hi} (got {value})")
        return value

    def flag(self, name: str) -> bool:
        return self.text(name).lower() in ("1", "true", "on", "yes")

    async def read(self, name: str, limit: int = MAX_TEXT_BYTES) -> bytes | None:
        """An uploaded file's bytes (None when no file was chosen); over ``limit`` is a 413."""
        upload = self.files.get(name)
        if upload is None:
            return None
        data = await upload.read(limit + 1)
        if len(data) > limit:
            raise inference.InferenceError(f"{name}: the file is over the {limit >> 20} MiB limit", 413)
        return data

    async def read_text(self, name: str) -> str | None:
        data = await self.read(name)
        if data is None:
            return None
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise DataError(f"{name}: not a UTF-8 text file") from None


async def _form(request: Request) -> _Form:
    body = await json_fields(request)
    if body is not None:
        return _Form(body, {})
    form = await request.form()
    values: dict[str, Any] = {}
    files: dict[str, UploadFile] = {}
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            if value.filename:
                files[key] = value
        else:
            values[key] = value
    return _Form(values, files)


def _job_choices(request: Request) -> list[dict[str, Any]]:
    """Model and pretrained jobs that can classify, with their snapshot epochs."""
    store = studio_of(request).store
    out = []
    for job in store.list():
        if job.kind == "pretrained" and job.status == "Done":
            out.append({"id": job.id, "name": job.name, "kind": job.kind, "epochs": []})
        elif job.kind == "model":
            epochs = _epochs(request, job.id)
            if epochs:
                out.append({"id": job.id, "name": job.name, "kind": job.kind, "epochs": epochs})
    return out


def _epochs(request: Request, job_id: str) -> list[float]:
    store = studio_of(request).store
    try:
        job = store.get(job_id)
    except KeyError:
        return []
    return inference.snapshot_epochs(Path(store.job_dir(job_id))) if job.kind == "model" else []


def _context(request: Request, form: _Form | None, **extra: Any) -> dict[str, Any]:
    values = dict(form.values) if form else dict(request.query_params)
    job_id = str(values.get("job_id") or "")
    return {
        "jobs": _job_choices(request),
        "values": values,
        "job_id": job_id,
        "epochs": _epochs(request, job_id) if job_id else [],
        "errors": {},
        "roots": [str(r) for r in data_roots(request)],
        **extra,
    }


# --------------------------------------------------------------------------------------- pretrained
@router.get("/pretrained_models.json", summary="Pretrained models")
def pretrained_list_json(request: Request) -> dict[str, Any]:
    return {"pretrained_models": pretrained.summary(pretrained.list_pretrained(studio_of(request).store))}


@router.get("/pretrained_models", include_in_schema=False)
def pretrained_list(request: Request) -> Response:
    jobs = pretrained.list_pretrained(studio_of(request).store)
    return _page(request, "pretrained_list.html", {"jobs": jobs, "rows": pretrained.summary(jobs)})


@router.get("/pretrained_models/new", include_in_schema=False)
def pretrained_new(request: Request) -> Response:
    return _page(
        request,
        "pretrained_new.html",
        {"values": {}, "resize_modes": RESIZE_MODES, "python_layers": _python_allowed(request)},
    )


async def _upload(request: Request) -> Any:
    """A pretrained model from the upload form: Caffe weights + network, or a Caffe2 ``init_net_file`` +
    ``predict_net_file`` [+ ``value_info_file``] (converted, :func:`caffe.studio.pretrained.upload_caffe2`)."""
    form = await _form(request)
    store = studio_of(request).store
    common = {
        "name": form.text("job_name"),
        "labels": await form.read("labels_file"),
        "python_layer": await form.read("python_layer_file"),
        "mean_file": await form.read("mean_file", MAX_MEAN_BYTES),
        "mean_values": form.text("mean_values"),
        "image_type": form.text("image_type", "color"),
        "width": form.number("width", 256, 1, 8192),
        "height": form.number("height", 256, 1, 8192),
        "resize_mode": form.text("resize_mode", "squash"),
        "allow_python_layers": _python_allowed(request),
    }
    init_net = await form.read("init_net_file", MAX_CAFFE2_BYTES)
    predict_net = await form.read("predict_net_file", MAX_TEXT_BYTES)
    if init_net is not None or predict_net is not None:
        if "weights_file" in form.files or "deploy_file" in form.files or "model_def_file" in form.files:
            raise DataError(
                "init_net_file: upload either a Caffe model (weights + network) or a Caffe2 model "
                "(init_net.pb + predict_net.pb), not both"
            )
        if init_net is None or predict_net is None:
            missing = "init_net_file" if init_net is None else "predict_net_file"
            raise DataError(f"{missing}: a Caffe2 model needs both init_net.pb and predict_net.pb")
        value_info = await form.read("value_info_file")
        caffe2_args = {**common, "init_net": init_net, "predict_net": predict_net, "value_info": value_info}
        return form, await run_in_threadpool(lambda: pretrained.upload_caffe2(store, **caffe2_args))
    weights = form.files.get("weights_file")
    if weights is None:
        raise DataError(
            "weights_file: the weights (.caffemodel) are required (or a Caffe2 init_net.pb + predict_net.pb)"
        )
    args = {
        **common,
        "weights": weights.file,
        "deploy": await form.read_text("deploy_file"),
        "original": await form.read_text("model_def_file"),
    }
    return form, await run_in_threadpool(lambda: pretrained.upload(store, **args))


@router.post("/pretrained_models.json", summary="Upload a pretrained model (weights + network [+ labels])")
async def pretrained_create_json(request: Request) -> Response:
    try:
        _, job = await _upload(request)
    except CaffeError as e:
        return _fail(request, e, False)
    return JSONResponse({"job_id": job.id, "name": job.name, "status": job.status}, status_code=201)


@router.post("/pretrained_models", include_in_schema=False)
async def pretrained_create(request: Request) -> Response:
    html = wants_html(request)
    form: _Form | None = None
    try:
        form, job = await _upload(request)
    except CaffeError as e:
        if not html:
            return _fail(request, e, False)
        values = form.values if form else {}
        status = getattr(e, "status", 400)
        return _page(
            request,
            "pretrained_new.html",
            {
                "values": values,
                "resize_modes": RESIZE_MODES,
                "error": str(e),
                "python_layers": _python_allowed(request),
            },
            status,
        )
    if html:
        return RedirectResponse(f"/pretrained_models/{job.id}", status_code=303)
    return JSONResponse({"job_id": job.id, "name": job.name, "status": job.status}, status_code=201)


def _pretrained_job(request: Request, job_id: str) -> Any:
    return job_of_kind(
        request, job_id, "pretrained", "pretrained model", lambda message: pretrained.PretrainedError(message, 404)
    )


@router.get("/pretrained_models/{job_id}.json", summary="A pretrained model")
def pretrained_show_json(request: Request, job_id: str) -> Response:
    try:
        job = _pretrained_job(request, job_id)
    except CaffeError as e:
        return _fail(request, e, False)
    info = inference.read_info(Path(studio_of(request).store.job_dir(job_id)))
    return JSONResponse({**pretrained.summary([job])[0], "info": info})


@router.get("/pretrained_models/{job_id}", include_in_schema=False)
def pretrained_show(request: Request, job_id: str) -> Response:
    try:
        job = _pretrained_job(request, job_id)
    except CaffeError as e:
        return _fail(request, e, True)
    job_dir = Path(studio_of(request).store.job_dir(job_id))
    files = sorted(p.name for p in job_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    info = inference.read_info(job_dir)
    offer = pretrained.lacks_labels(job_dir, info)
    imagenet = pretrained.imagenet_labels_file(data_roots(request)) if offer else None
    return _page(
        request,
        "pretrained_show.html",
        {
            "job": job,
            "info": info,
            "files": files,
            "parent": job.parent,
            "lacks_labels": offer,
            "imagenet_labels": imagenet,
        },
    )


@router.post("/pretrained_models/{job_id}/imagenet_labels", summary="Give a 1000-class model the ImageNet labels")
def pretrained_imagenet_labels(request: Request, job_id: str) -> Response:
    """The server's ImageNet labels file (never downloaded) as the model's labels.txt; 404 when the server has
    none, 400 when the model does not have 1000 outputs."""
    html = wants_html(request)
    try:
        _pretrained_job(request, job_id)
        path = pretrained.imagenet_labels_file(data_roots(request))
        if path is None:
            raise pretrained.PretrainedError("this server has no ImageNet labels file (synset_words.txt)", 404)
        pretrained.use_labels(studio_of(request).store, job_id, path)
    except CaffeError as e:
        return _fail(request, e, html)
    if html:
        return RedirectResponse(f"/pretrained_models/{job_id}", status_code=303)
    return JSONResponse({"job_id": job_id, "labels_file": str(path)})


async def _delete(request: Request, job_id: str) -> None:
    """Delete a pretrained model; InUse when models were fine-tuned from it, unless ``with_models``."""
    _pretrained_job(request, job_id)
    studio = studio_of(request)
    with_models = await with_models_flag(request)

    def remove(pretrained_id: str) -> None:
        pretrained.delete(studio.store, pretrained_id)

    await run_in_threadpool(delete_job, studio.store, studio.scheduler, job_id, with_models, remove)


@router.delete("/pretrained_models/{job_id}", summary="Delete a pretrained model (?with_models=1: with its models)")
async def pretrained_delete(request: Request, job_id: str) -> Response:
    """409 listing the models fine-tuned from it, unless ``?with_models=1`` (they are deleted first)."""
    try:
        await _delete(request, job_id)
    except InUse as e:
        return in_use_response(request, e, f"/pretrained_models/{job_id}/delete", False)
    except CaffeError as e:
        return _fail(request, e, False)
    return JSONResponse({"job_id": job_id, "deleted": True})


@router.post("/pretrained_models/{job_id}/delete", include_in_schema=False)
async def pretrained_delete_form(request: Request, job_id: str) -> Response:
    html = wants_html(request)
    try:
        await _delete(request, job_id)
    except InUse as e:
        return in_use_response(request, e, f"/pretrained_models/{job_id}/delete", html)
    except CaffeError as e:
        return _fail(request, e, html)
    if html:
        return RedirectResponse("/pretrained_models", status_code=303)
    return JSONResponse({"job_id": job_id, "deleted": True})


@router.post("/models/{job_id}/to_pretrained", summary="Make a pretrained model from a trained model's snapshot")
async def promote(request: Request, job_id: str) -> Response:
    html = wants_html(request)
    try:
        form = await _form(request)
        epoch = form.text("snapshot_epoch") or None
        name = form.text("job_name") or None
        job = await run_in_threadpool(
            pretrained.promote, studio_of(request).store, job_id, epoch, name, _python_allowed(request)
        )
    except CaffeError as e:
        return _fail(request, e, html)
    if html:
        return RedirectResponse(f"/pretrained_models/{job.id}", status_code=303)
    return JSONResponse({"job_id": job.id, "name": job.name, "status": job.status}, status_code=201)


# --------------------------------------------------------------------------------------- classify one
async def _image_bytes(request: Request, form: _Form) -> tuple[bytes, str]:
    """The image of a classify-one request: an upload, an http(s) URL, or a server path inside the data roots."""
    limit = studio_of(request).config.max_image_bytes
    data = await form.read("image_file", limit)
    if data is not None:
        return data, form.files["image_file"].filename or "image_file"
    where = form.text("image_url") or form.text("image_path")
    if not where:
        raise DataError("image_file: choose an image to upload, or give its URL (image_url)")
    if "://" in where:
        from caffe.util.http import RequestError, fetch_url

        try:
            return await run_in_threadpool(fetch_url, where, URL_TIMEOUT_S, limit), where
        except RequestError as e:
            raise inference.InferenceError(e.message, e.status) from None
    path = _server_path(where, data_roots(request), "file", "image_path")
    return inference.read_image_file(path), str(path)


def _server_path(text: str, roots: list[Path], what: str = "file", field: str = "", shown: str | None = None) -> Path:
    """The server ``what`` ("file", "image" or "folder") at ``text``, inside the data roots (symlinks
    followed): a 403 outside them, a 404 when missing (naming it as ``shown``, default ``text``); messages
    start with ``field``."""
    prefix = f"{field}: " if field else ""
    try:
        path = resolve_user_path(text, roots)
    except CaffeError as e:
        raise inference.InferenceError(f"{prefix}{e}", 403) from None
    if not (path.is_dir() if what == "folder" else path.is_file()):
        raise inference.InferenceError(f"{prefix}no such {what} {shown or text!r}", 404)
    return path


def _model_choice(form: _Form) -> tuple[str, str | None]:
    """The ``job_id`` (required) and ``snapshot_epoch`` (None: the last) an inference form names."""
    job_id = form.text("job_id")
    if not job_id:
        raise DataError("job_id: choose a model")
    return job_id, form.text("snapshot_epoch") or None


def _image_field(form: _Form) -> str:
    """Which field of a classify-one form gave the image."""
    if "image_file" in form.files:
        return "image_file"
    return "image_url" if form.text("image_url") else "image_path" if form.text("image_path") else "image_file"


async def _classify_one(request: Request, form: _Form) -> tuple[Any, inference.OneResult, str]:
    try:
        job_id, epoch = _model_choice(form)
    except CaffeError as e:
        raise _at("job_id", e) from None
    field = _image_field(form)
    try:
        data, name = await _image_bytes(request, form)
    except CaffeError as e:
        raise _at(field, e) from None
    store, allowed = studio_of(request).store, _python_allowed(request)

    def run() -> tuple[Any, inference.OneResult]:
        try:
            model = inference.load_model(store, job_id, epoch, allowed)
        except CaffeError as e:
            raise _at("job_id", e) from None
        try:
            threshold = inference.parse_threshold(form.text("threshold"))
        except CaffeError as e:
            raise _at("threshold", e) from None
        try:
            return model, inference.classify_one(model, data, form.flag("show_visualizations"), name, threshold)
        except CaffeError as e:
            raise _at(field, e) from None

    model, result = await run_in_threadpool(run)
    return model, result, name


@router.post(f"{CLASSIFY}/classify_one.json", summary="Classify one image: top-5 [label, percent]")
async def classify_one_json(request: Request) -> Response:
    try:
        model, result, _ = await _classify_one(request, await _form(request))
    except CaffeError as e:
        return _fail(request, e, False)
    body: dict[str, Any] = {"predictions": [[label, pct] for label, pct in result.predictions]}
    if result.detections is not None:
        body["detections"] = result.detections
    if result.segmentation is not None:
        body["segmentation"] = result.segmentation
    if result.layers is not None:
        body["visualizations"] = result.layers
    if model.source.epoch is not None:
        body["snapshot_epoch"] = model.source.epoch
    return JSONResponse(body)


@router.get(f"{CLASSIFY}/classify_one", include_in_schema=False)
def classify_one_form(request: Request) -> Response:
    return _page(request, "classify_one.html", _context(request, None))


@router.post(f"{CLASSIFY}/classify_one", include_in_schema=False)
async def classify_one_page(request: Request) -> Response:
    form: _Form | None = None
    try:
        form = await _form(request)
        model, result, name = await _classify_one(request, form)
    except CaffeError as e:
        return _inline(request, "classify_one.html", form, e)
    return _page(request, "classify_one.html", _context(request, form, result=result, model=model, image_name=name))


# --------------------------------------------------------------------------------------- classify many / top N
async def _images(request: Request, form: _Form, labels: tuple[str, ...]) -> list[tuple[Path, int | None]]:
    """The images of a classify-many or top-N request, each validated against the data roots."""
    folder_text = form.text("image_folder")
    folder = _server_path(folder_text, data_roots(request), "folder", "image_folder") if folder_text else None
    listing = await form.read_text("image_list")
    if listing is None and form.text("image_list"):
        listing = form.text("image_list")  # a JSON body may carry the list's text
    roots = data_roots(request)

    def resolve(text: str) -> Path:
        relative = not Path(text).is_absolute()
        target = str(folder / text) if relative and folder is not None else text
        if relative and folder is None:
            raise DataError(f"relative path {text!r}: give image_folder to resolve it, or an absolute path")
        return _server_path(target, roots, "image", shown=text)

    if listing is not None:
        items = inference.parse_image_list(listing, resolve, labels, "image_list")
    elif folder is not None:
        items = inference.scan_folder(folder, labels)
        for path, _ in items:  # a link in the folder may lead out of the roots (named by its folder only)
            if not any(is_within(path, r) for r in roots):
                raise inference.InferenceError(
                    f"image_folder: {str(path.parent)!r} holds a link to a place outside the folders this server "
                    f"may read: {', '.join(map(str, roots)) or '(none)'}",
                    403,
                )
    else:
        raise DataError("image_list: upload a list of images, or give image_folder (a folder of class sub-folders)")
    count = form.number("num_test_images", None, 1)
    return items[:count] if count else items


async def _classify_many(request: Request, form: _Form) -> tuple[Any, inference.ManyResult]:
    store = studio_of(request).store
    try:
        job_id, epoch = _model_choice(form)
        source = await run_in_threadpool(inference.resolve, store, job_id, epoch)
    except CaffeError as e:
        raise _at("job_id", e) from None
    try:
        items = await _images(request, form, source.labels)
    except CaffeError as e:
        raise _at("image_list" if "image_list" in form.files else "image_folder", e) from None

    try:
        threshold = inference.parse_threshold(form.text("threshold"))
    except CaffeError as e:
        raise _at("threshold", e) from None

    def run() -> tuple[Any, inference.ManyResult]:
        model = inference.CACHE.get(source, _python_allowed(request))
        return model, inference.classify_many(model, items, threshold=threshold)

    model, result = await run_in_threadpool(run)
    return model, result


def _many_body(result: inference.ManyResult) -> dict[str, Any]:
    if result.detections is not None:
        body: dict[str, Any] = {"detections": result.detections}
    elif result.segmentations is not None:
        body = {"segmentations": result.segmentations}
    else:
        body = {"classifications": result.classifications()}
    if result.errors:
        body["errors_by_image"] = result.errors
    evaluation = result.evaluation()
    if evaluation:
        body.update(evaluation)
    return body


@router.post(f"{CLASSIFY}/classify_many.json", summary="Classify many images (list or folder): top-5 per image")
async def classify_many_json(request: Request) -> Response:
    try:
        _, result = await _classify_many(request, await _form(request))
        body = _many_body(result)
    except CaffeError as e:
        return _fail(request, e, False)
    return JSONResponse(body)


@router.get(f"{CLASSIFY}/classify_many", include_in_schema=False)
def classify_many_form(request: Request) -> Response:
    return _page(request, "classify_many.html", _context(request, None))


@router.post(f"{CLASSIFY}/classify_many", include_in_schema=False)
async def classify_many_page(request: Request) -> Response:
    form: _Form | None = None
    try:
        form = await _form(request)
        model, result = await _classify_many(request, form)
        evaluation = result.evaluation()
    except CaffeError as e:
        return _inline(request, "classify_many.html", form, e)
    detections, segmentations = result.detections, result.segmentations
    rows = [
        {
            "path": p,
            "truth": result.label(t) if t is not None else None,
            "top5": result.top5(i) if detections is None and segmentations is None else [],
            "detections": detections.get(p, []) if detections is not None else None,
            "segmentation": segmentations.get(p, []) if segmentations is not None else None,
        }
        for i, (p, t) in enumerate(zip(result.paths, result.truth, strict=True))
    ]
    return _page(
        request,
        "classify_many.html",
        _context(request, form, result=result, rows=rows, evaluation=evaluation, model=model),
    )


async def _top_n(request: Request, form: _Form) -> tuple[Any, list[dict[str, Any]]]:
    try:
        n = form.number("top_n", 9, 1, 100)
    except CaffeError as e:
        raise _at("top_n", e) from None
    model, result = await _classify_many(request, form)
    if result.detections is not None or result.segmentations is not None:
        kind = "detector" if result.detections is not None else "segmentation net"
        raise _at(
            "job_id",
            inference.InferenceError(
                f"top N images per class is for classifiers; this model is a {kind}: use classify many"
            ),
        )
    return model, inference.top_n(result, n or 9)


@router.post(f"{CLASSIFY}/top_n.json", summary="The N best-scoring images of each class")
async def top_n_json(request: Request) -> Response:
    try:
        _, classes = await _top_n(request, await _form(request))
    except CaffeError as e:
        return _fail(request, e, False)
    return JSONResponse(
        {"top_n": [{"label": c["label"], "images": [[p, pct] for p, pct in c["images"]]} for c in classes]}
    )


@router.get(f"{CLASSIFY}/top_n", include_in_schema=False)
def top_n_form(request: Request) -> Response:
    return _page(request, "top_n.html", _context(request, None))


@router.post(f"{CLASSIFY}/top_n", include_in_schema=False)
async def top_n_page(request: Request) -> Response:
    form: _Form | None = None
    try:
        form = await _form(request)
        model, classes = await _top_n(request, form)
        thumbs = await run_in_threadpool(
            lambda: {p: inference.thumbnail_uri(p) for c in classes for p, _ in c["images"]}
        )
    except CaffeError as e:
        return _inline(request, "top_n.html", form, e)
    return _page(request, "top_n.html", _context(request, form, classes=classes, thumbs=thumbs, model=model))
