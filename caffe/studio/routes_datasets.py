"""Dataset pages and DIGITS' dataset JSON routes (``router``, included by ``caffe.studio.app``).

* ``GET  /datasets/images/classification/new``: the "New Image Classification Dataset" form;
* ``POST /datasets/images/classification``: create the job, then redirect to its page;
* ``POST /datasets/images/classification.json``: the same for API callers -> ``{job_id, name, status}``
  or 400 ``{errors: [...]}``;
* ``GET  /datasets/images/object-detection/new``, ``POST /datasets/images/object-detection`` [``.json``]: the same for
  an object detection dataset (:mod:`caffe.studio.detection_datasets`; also at DIGITS' addresses,
  ``/datasets/generic/new/image-object-detection`` and ``/datasets/generic/create/image-object-detection[.json]``);
* ``GET  /datasets/images/segmentation/new``, ``POST /datasets/images/segmentation`` [``.json``]: the same for a
  semantic segmentation dataset (:mod:`caffe.studio.segmentation_datasets`; also at DIGITS'
  ``/datasets/generic/.../image-segmentation``);
* ``GET  /datasets/{id}``, ``/datasets/{id}.json``: status, progress, counts per class (detection: images per split
  and boxes per class; segmentation: images per split and pixels per class), mean image;
* ``GET  /datasets/{id}/explore?db=train&label=&page=&size=``: the stored images by class, paged;
  ``/datasets/{id}/explore/image?db=&index=`` serves one record as PNG (a detection record with its boxes drawn, a
  segmentation record with its class map coloured in),
  ``/datasets/{id}/mean.jpg``;
* ``GET  /folders.json?path=``: the folder picker's listing of server folders inside the data roots.

Every form is checked before a job is queued (folder, list and image paths, symlinks followed, against the
studio's data roots; list files bounded; the class folders, the list lines), so a newcomer sees what is wrong
on the form itself, and a path outside the roots is refused before anything in it is read.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from google.protobuf.message import DecodeError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from caffe.data.datum import datum_to_array, parse_datum
from caffe.data.db import item_key, open_db
from caffe.errors import CaffeError, DataError
from caffe.proto import caffe_pb2 as pb
from caffe.protoio import atomic_write
from caffe.studio import datasets as ds
from caffe.studio import detection_datasets as dd
from caffe.studio import segmentation_datasets as sd
from caffe.studio.models import task_of
from caffe.studio.paths import list_folders
from caffe.studio.scheduler import python_module_argv
from caffe.studio.store import Job
from caffe.studio.web import data_roots, job_of_kind, json_fields, studio_of

router = APIRouter()

PAGE_SIZES = (10, 25, 50, 100)
_PARAM_NAMES = {f.name for f in fields(ds.DatasetParams)} - {"data_roots"}
_DETECTION_PARAM_NAMES = {f.name for f in fields(dd.DetectionParams)} - {"data_roots", "task"}
_SEGMENTATION_PARAM_NAMES = {f.name for f in fields(sd.SegmentationParams)} - {"data_roots", "task"}
CreateFn = Callable[[Request, dict[str, Any], dict[str, tuple[str, bytes]]], Job]
FormPageFn = Callable[..., Response]
_UPLOADS = ("train_images", "val_images", "test_images", "labels_file")  # textfile_<x> / textfile_local_<x>


def _dataset_job(request: Request, job_id: str) -> Job:
    return job_of_kind(request, job_id, "dataset")


# ---------------------------------------------------------------------------------------------
# creating


async def _form_values(request: Request) -> tuple[dict[str, Any], dict[str, tuple[str, bytes]]]:
    """The submitted fields (form or JSON body) and the uploaded files (name, contents)."""
    body = await json_fields(request)
    if body is not None:
        return body, {}
    form = await request.form()
    values: dict[str, Any] = {}
    uploads: dict[str, tuple[str, bytes]] = {}
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            if value.filename:
                data = await value.read(ds.MAX_LIST_BYTES + 1)
                if len(data) > ds.MAX_LIST_BYTES:
                    raise DataError(f"{key}: the uploaded file is over the {ds.MAX_LIST_BYTES >> 20} MiB limit")
                if data:
                    uploads[key] = (value.filename, data)
        else:
            values[key] = value
    return values, uploads


def _params_values(values: dict[str, Any], job_dir: Path, uploads: dict[str, tuple[str, bytes]]) -> dict[str, Any]:
    """Form fields -> DatasetParams values; uploads are saved in the job folder (``upload_<field>/<name>``,
    so that messages name the file as uploaded) and used by path."""
    out = {k: v for k, v in values.items() if k in _PARAM_NAMES}
    for name in _UPLOADS:
        field = f"textfile_{name}"
        if field in uploads:
            filename, data = uploads[field]
            safe = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(filename.replace("\\", "/")).name).lstrip(".") or "list.txt"
            path = job_dir / f"upload_{name}" / safe
            path.parent.mkdir()
            atomic_write(path, data)
            out[field] = str(path)
        elif not str(out.get(field) or "").strip():
            out[field] = values.get(f"textfile_local_{name}", "")
    if out.get("method") != "textfile":
        for name in _UPLOADS:
            out.pop(f"textfile_{name}", None)
    return out


def create_dataset_job(request: Request, values: dict[str, Any], uploads: dict[str, tuple[str, bytes]]) -> Job:
    """Check the form, create the job (params.json, uploads) and submit it; DataError if the form is bad."""
    studio = studio_of(request)
    store = studio.store
    name = str(values.get("dataset_name") or "").strip()
    if not name:
        folder = str(values.get("folder_train") or "").strip().rstrip("/")
        name = Path(folder).name if folder and values.get("method", "folder") == "folder" else ""
    if not name:
        raise DataError("dataset_name: give the dataset a name")
    job = store.create("dataset", name, {})
    job_dir = store.job_dir(job.id)
    try:
        clean = _params_values(values, job_dir, uploads)
        clean["data_roots"] = [str(r) for r in data_roots(request)]  # never None: the job reads only these
        params = ds.DatasetParams.from_dict(clean)
        ds.make_plan(params, extra_roots=[job_dir.resolve()])  # every check the job makes, now
    except (CaffeError, ValueError) as e:
        store.delete(job.id)
        raise DataError(str(e)) from None
    submitted = {**params.to_dict(), "dataset_name": name}
    atomic_write(job_dir / "params.json", json.dumps(submitted, indent=1).encode("utf-8"))
    store.update(job.id, params=submitted)
    return studio.scheduler.submit(job.id, python_module_argv("caffe.studio.datasets", str(job_dir)), None)


def _shown(value: Any) -> Any:
    """A value as the form shows it (25.0 as 25)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _form_page(request: Request, values: dict[str, Any] | None = None, error: str = "", status: int = 200) -> Response:
    shown = ds.DatasetParams().to_dict()
    shown.update({k: v for k, v in (values or {}).items() if isinstance(v, str | int | float)})
    context = {
        "values": {k: _shown(v) for k, v in shown.items()},
        "error": error,
        "roots": [str(r) for r in data_roots(request)],
        "resize_modes": ds.RESIZE_MODES,
        "encodings": ds.ENCODINGS,
    }
    return studio_of(request).templates.TemplateResponse(request, "dataset_new.html", context, status_code=status)


@router.get("/datasets/images/classification/new", name="dataset_new")
def dataset_new(request: Request, clone: str = "") -> Response:
    """The form; ``?clone=<dataset id>`` fills it with that dataset's parameters (DIGITS' Clone)."""
    values = _dataset_job(request, clone).params if clone else None
    return _form_page(request, values)


async def _create_response(request: Request, create: CreateFn, form_page: FormPageFn | None) -> Response:
    """Run ``create`` on the submitted form: the job's ``{job_id, name, status}`` (``form_page`` None) or a redirect
    to its page; a bad form is 400 ``{errors: [...]}``, or the form again with the error."""
    values: dict[str, Any] = {}
    try:
        values, uploads = await _form_values(request)
        job = await run_in_threadpool(create, request, values, uploads)
    except DataError as e:
        if form_page is None:
            return JSONResponse({"errors": [str(e)]}, status_code=400)
        return form_page(request, values, str(e), status=400)
    if form_page is None:
        return JSONResponse({"job_id": job.id, "name": job.name, "status": job.status})
    return RedirectResponse(f"/datasets/{job.id}", status_code=303)


@router.post("/datasets/images/classification.json", name="dataset_create_json")
async def dataset_create_json(request: Request) -> Response:
    return await _create_response(request, create_dataset_job, None)


@router.post("/datasets/images/classification", name="dataset_create")
async def dataset_create(request: Request) -> Response:
    return await _create_response(request, create_dataset_job, _form_page)


# ---------------------------------------------------------------------------------------------
# creating an object detection dataset


def create_detection_job(request: Request, values: dict[str, Any], uploads: dict[str, tuple[str, bytes]]) -> Job:
    """Check the detection form (every folder, against the data roots; images with label files), then create
    and submit the job; DataError naming the field if the form is bad. Uploads are not used."""
    parse, module = dd.DetectionParams.from_dict, "caffe.studio.detection_datasets"
    return _task_job(request, values, "train_image_folder", _DETECTION_PARAM_NAMES, parse, dd.scan, module)


def _task_job(
    request: Request,
    values: dict[str, Any],
    folder_field: str,
    names: set[str],
    parse: Callable[[dict[str, Any]], Any],
    check: Callable[[Any], Any],
    module: str,
) -> Job:
    """The ``names`` fields of ``values`` (with the studio's data roots) parsed and checked, then a dataset job
    (named ``dataset_name``, else after ``folder_field``'s folder) made of them (its params.json) and submitted
    (``python -m module JOB_DIR``); DataError naming the field if the form is bad, before anything is created."""
    name = str(values.get("dataset_name") or "").strip()
    name = name or Path(str(values.get(folder_field) or "").strip().rstrip("/")).name
    if not name:
        raise DataError("dataset_name: give the dataset a name")
    clean = {k: v for k, v in values.items() if k in names}
    clean["data_roots"] = [str(r) for r in data_roots(request)]
    try:
        params = parse(clean)
        check(params)
    except (CaffeError, ValueError) as e:
        raise DataError(str(e)) from None
    studio = studio_of(request)
    job = studio.store.create("dataset", name, {})
    job_dir = studio.store.job_dir(job.id)
    submitted = {**params.to_dict(), "dataset_name": name}
    atomic_write(job_dir / "params.json", json.dumps(submitted, indent=1).encode("utf-8"))
    studio.store.update(job.id, params=submitted)
    return studio.scheduler.submit(job.id, python_module_argv(module, str(job_dir)), None)


def _task_form_page(
    request: Request,
    template: str,
    shown: dict[str, Any],
    values: dict[str, Any] | None,
    error: str,
    status: int,
    **extra: Any,
) -> Response:
    """A dataset form ``template``: the defaults ``shown`` updated with the submitted or cloned ``values``."""
    shown.update({k: v for k, v in (values or {}).items() if isinstance(v, str | int | float)})
    context = {
        "values": {k: "" if v is None else _shown(v) for k, v in shown.items()},
        "error": error,
        "roots": [str(r) for r in data_roots(request)],
        **extra,
    }
    return studio_of(request).templates.TemplateResponse(request, template, context, status_code=status)


def _detection_form_page(
    request: Request, values: dict[str, Any] | None = None, error: str = "", status: int = 200
) -> Response:
    defaults = dd.DetectionParams().to_dict()
    extra = {
        "label_formats": dd.LABEL_FORMATS,
        "encodings": dd.ENCODINGS,
        "detectors": dd.DETECTORS,
        "channel_conversions": dd.CHANNEL_CONVERSIONS,
    }
    return _task_form_page(request, "detection_dataset_new.html", defaults, values, error, status, **extra)


def add_task_routes(
    task: str,
    name: str,
    create: CreateFn,
    form_page: FormPageFn,
    extension: str,
    digits_defaults: dict[str, Any] | None = None,
) -> None:
    """``GET /datasets/images/<task>/new`` (the form; ``?clone=<dataset id>`` fills it with that dataset's
    parameters), ``POST /datasets/images/<task>`` (-> the dataset page) and ``.json`` (-> ``{job_id, name,
    status}``); the routes are named ``<name>_new``, ``<name>_create``, ``<name>_create_json``. The same at
    DIGITS' generic-dataset addresses of the data ``extension`` (``/datasets/generic/new/<extension>``,
    ``/datasets/generic/create/<extension>[.json]``), so DIGITS' REST scripts work unchanged; a form posted
    there gets ``digits_defaults`` for the fields it does not give (what DIGITS made)."""
    digits_values = digits_defaults or {}

    def digits_create(request: Request, values: dict[str, Any], uploads: dict[str, tuple[str, bytes]]) -> Job:
        return create(request, {**digits_values, **values}, uploads)

    def new(request: Request, clone: str = "") -> Response:
        values = _dataset_job(request, clone).params if clone else None
        return form_page(request, values)

    async def create_json(request: Request) -> Response:
        return await _create_response(request, create, None)

    async def create_form(request: Request) -> Response:
        return await _create_response(request, create, form_page)

    base = f"/datasets/images/{task}"
    router.add_api_route(f"{base}/new", new, methods=["GET"], name=f"{name}_new")
    router.add_api_route(f"{base}.json", create_json, methods=["POST"], name=f"{name}_create_json")
    router.add_api_route(base, create_form, methods=["POST"], name=f"{name}_create")
    digits = "/datasets/generic"
    router.add_api_route(f"{digits}/new/{extension}", new, methods=["GET"], include_in_schema=False)

    async def digits_json(request: Request) -> Response:
        return await _create_response(request, digits_create, None)

    async def digits_form(request: Request) -> Response:
        return await _create_response(request, digits_create, form_page)

    router.add_api_route(f"{digits}/create/{extension}.json", digits_json, methods=["POST"], include_in_schema=False)
    router.add_api_route(f"{digits}/create/{extension}", digits_form, methods=["POST"], include_in_schema=False)


add_task_routes(
    dd.TASK,
    "detection_dataset",
    create_detection_job,
    _detection_form_page,
    "image-object-detection",
    # DIGITS stored its object-detection datasets for DetectNet, padded to KITTI's 1248 x 384 unless told otherwise
    {"detector": "detectnet", "padding_image_width": 1248, "padding_image_height": 384},
)


# ---------------------------------------------------------------------------------------------
# creating a segmentation dataset


def create_segmentation_job(request: Request, values: dict[str, Any], uploads: dict[str, tuple[str, bytes]]) -> Job:
    """Check the segmentation form (every folder and file against the data roots, the image/label pairs, the colour
    map and class labels files), then create and submit the job; DataError naming the field if the form is bad."""
    parse, module = sd.SegmentationParams.from_dict, "caffe.studio.segmentation_datasets"
    return _task_job(request, values, "feature_folder", _SEGMENTATION_PARAM_NAMES, parse, sd.make_plan, module)


def _segmentation_form_page(
    request: Request, values: dict[str, Any] | None = None, error: str = "", status: int = 200
) -> Response:
    values = dict(values or {})
    values["has_val_folder"] = ds.coerce_field("has_val_folder", values.get("has_val_folder", False), False)
    extra = {
        "encodings": sd.ENCODINGS,
        "channel_conversions": sd.CHANNEL_CONVERSIONS,
        "colormap_methods": sd.COLORMAP_METHODS,
    }
    defaults = sd.SegmentationParams().to_dict()
    return _task_form_page(request, "segmentation_dataset_new.html", defaults, values, error, status, **extra)


add_task_routes(sd.TASK, "segmentation_dataset", create_segmentation_job, _segmentation_form_page, "image-segmentation")


# ---------------------------------------------------------------------------------------------
# showing


def _read_events(job_dir: Path) -> tuple[dict | None, str]:
    """The last ``progress`` event and the ``error`` message (if any) of a dataset job."""
    last, error = None, ""
    try:
        lines = (job_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return None, ""
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "progress":
            last = event
        elif event.get("event") == "error":
            error = str(event.get("message", ""))
    return last, error


def dataset_info(request: Request, job: Job) -> dict[str, Any]:
    """What the page and the JSON route show about a dataset job."""
    job_dir = studio_of(request).store.job_dir(job.id)
    progress, error = _read_events(job_dir)
    params = {k: _shown(v) for k, v in job.params.items() if k != "data_roots"}
    return {
        "id": job.id,
        "name": job.name,
        "directory": str(job_dir),
        "status": job.status,
        "created": job.created,
        "updated": job.updated,
        "returncode": job.returncode,
        "params": params,
        "result": job.result,
        "progress": progress,
        "error": error,
        "dbs": [s for s in ds.SPLITS if (job_dir / f"{s}_db").is_dir()],
        "has_mean": (job_dir / "mean.jpg").is_file(),
        "task": task_of(job),
    }


@router.get("/datasets/{job_id}.json", name="dataset_json")
def dataset_json(request: Request, job_id: str) -> Response:
    return JSONResponse(dataset_info(request, _dataset_job(request, job_id)))


@router.get("/datasets/{job_id}/mean.jpg", name="dataset_mean")
def dataset_mean(request: Request, job_id: str) -> Response:
    path = studio_of(request).store.job_dir(_dataset_job(request, job_id).id) / "mean.jpg"
    if not path.is_file():
        raise HTTPException(404, "the mean image is not made yet")
    return FileResponse(path, media_type="image/jpeg")


@router.get("/datasets/{job_id}", name="dataset_show")
def dataset_show(request: Request, job_id: str) -> Response:
    info = dataset_info(request, _dataset_job(request, job_id))
    return studio_of(request).templates.TemplateResponse(request, "dataset_show.html", {"job": info})


# ---------------------------------------------------------------------------------------------
# exploring


def _split_name(db: str) -> str:
    if db not in ds.SPLITS:
        raise HTTPException(400, f"db must be one of {', '.join(ds.SPLITS)} (got {db!r})")
    return db


def _db_entries(job_dir: Path, split: str) -> list[tuple[str, int]]:
    """The records of a split's database, in key order, from its list file (``path label`` lines)."""
    try:
        lines = (job_dir / f"{split}.txt").read_text(encoding="utf-8").splitlines()
    except OSError:
        raise HTTPException(404, f"this dataset has no {split} database") from None
    out = []
    for line in lines:
        path, _, label = line.rpartition(" ")
        if path:
            out.append((path, int(label)))
    return out


def _read_labels(job_dir: Path) -> list[str]:
    try:
        return [s for s in (job_dir / "labels.txt").read_text(encoding="utf-8").splitlines() if s]
    except OSError:
        return []


@router.get("/datasets/{job_id}/explore", name="dataset_explore")
def dataset_explore(
    request: Request, job_id: str, db: str = "train", label: str = "", page: int = 0, size: int = 25
) -> Response:
    job = _dataset_job(request, job_id)
    split = _split_name(db)
    job_dir = studio_of(request).store.job_dir(job.id)
    if task_of(job) == dd.TASK:
        return _detection_explore(request, job, job_dir, split, page, size)
    if task_of(job) == sd.TASK:
        names = _record_names(job_dir / f"{split}_db")
        return _paths_explore(request, job, job_dir, split, names, page, size, _class_legend(job_dir))
    labels = _read_labels(job_dir)
    entries = list(enumerate(_db_entries(job_dir, split)))
    counts = [0] * len(labels)
    for _, (_, lab) in entries:
        if 0 <= lab < len(counts):
            counts[lab] += 1
    chosen: int | None = None
    if label.strip():
        try:
            chosen = int(label)
        except ValueError:
            raise HTTPException(400, f"label must be a class number (got {label!r})") from None
        entries = [e for e in entries if e[1][1] == chosen]
    size = size if size in PAGE_SIZES else 25
    pages = max(1, math.ceil(len(entries) / size))
    page = min(max(page, 0), pages - 1)
    shown = []
    for i, (path, lab) in entries[page * size : (page + 1) * size]:
        name = labels[lab] if 0 <= lab < len(labels) else str(lab)
        shown.append({"index": i, "path": path, "name": Path(path).name, "label": lab, "class": name})
    context = {
        "job": {"id": job.id, "name": job.name, "status": job.status},
        "db": split,
        "dbs": [s for s in ds.SPLITS if (job_dir / f"{s}_db").is_dir()],
        "labels": labels,
        "counts": counts,
        "label": chosen,
        "page": page,
        "pages": pages,
        "size": size,
        "sizes": PAGE_SIZES,
        "total": len(entries),
        "images": shown,
    }
    return studio_of(request).templates.TemplateResponse(request, "dataset_explore.html", context)


def _detection_explore(request: Request, job: Job, job_dir: Path, split: str, page: int, size: int) -> Response:
    """The explore page of a detection dataset: its images in record order, paged (no class filter)."""
    try:
        paths = [p for p in (job_dir / f"{split}.txt").read_text(encoding="utf-8").splitlines() if p]
    except OSError:
        raise HTTPException(404, f"this dataset has no {split} database") from None
    return _paths_explore(request, job, job_dir, split, paths, page, size)


def _class_legend(job_dir: Path) -> list[dict[str, str]]:
    """Each class of a segmentation dataset with its colour (``#rrggbb``), as the explore page shows them."""
    try:
        colours = sd.read_palette(job_dir / "palette.json")
    except DataError:
        return []
    labels = _read_labels(job_dir)
    return [{"name": name, "colour": "#" + bytes(colours[i]).hex()} for i, name in enumerate(labels[: len(colours)])]


def _paths_explore(
    request: Request,
    job: Job,
    job_dir: Path,
    split: str,
    paths: list[str],
    page: int,
    size: int,
    legend: list[dict[str, str]] | None = None,
) -> Response:
    """The explore page of the records named ``paths`` (record order), paged, without a class filter; ``legend``:
    the class colours drawn over the images."""
    size = size if size in PAGE_SIZES else 25
    pages = max(1, math.ceil(len(paths) / size))
    page = min(max(page, 0), pages - 1)
    first = page * size
    shown = [
        {"index": first + i, "path": p, "name": Path(p).name, "label": "", "class": ""}
        for i, p in enumerate(paths[first : first + size])
    ]
    context = {
        "job": {"id": job.id, "name": job.name, "status": job.status},
        "db": split,
        "dbs": [s for s in dd.SPLITS if (job_dir / f"{s}_db").is_dir()],
        "labels": [],
        "counts": [],
        "label": None,
        "page": page,
        "pages": pages,
        "size": size,
        "sizes": PAGE_SIZES,
        "total": len(paths),
        "images": shown,
        "legend": legend or [],
    }
    return studio_of(request).templates.TemplateResponse(request, "dataset_explore.html", context)


_RECORD_LOCK = threading.Lock()


def record_png(db_path: Path, index: int) -> bytes:
    """The ``index``-th record of a dataset LMDB (key ``%08d_...``) as PNG bytes.

    A page asks for many records at once: python-lmdb refuses a second ``lmdb.open`` of a database
    already open in the process, so the database is opened through caffe.data.db (one shared
    environment per process), and reads are serialized because a release closing that environment
    can race with the next open."""
    key, value = _record(db_path, index)
    name = f"{db_path.name} record {key.decode('utf-8', 'replace')!r}"
    try:
        chw = datum_to_array(parse_datum(value, name), name)
    except DataError as e:
        raise HTTPException(500, str(e)) from None
    img = chw[0] if chw.shape[0] == 1 else chw.transpose(1, 2, 0)  # BGR(A) planes: what cv2 encodes
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(img))
    if not ok:
        raise HTTPException(500, f"{name}: cannot encode as PNG")
    return buf.tobytes()


def _record(db_path: Path, index: int, prefix: bytes | None = None) -> tuple[bytes, bytes]:
    """The key and value of the ``index``-th record of a dataset LMDB (see :func:`record_png`), the first key
    starting with ``prefix`` (default the studio's ``%08d_``); 404 if none."""
    if not db_path.is_dir():
        raise HTTPException(404, f"no database {db_path.name}")
    prefix = item_key(index, "") if prefix is None else prefix
    with (
        _RECORD_LOCK,
        open_db(db_path, "lmdb", "read", readahead=False) as db,
        db.env.begin() as txn,
        txn.cursor() as cur,
    ):
        if not cur.set_range(prefix) or not cur.key().startswith(prefix):
            raise HTTPException(404, f"no record {index} in {db_path.name}")
        return bytes(cur.key()), bytes(cur.value())


def _drawable(chw: np.ndarray) -> np.ndarray:
    """A record's C x H x W pixels as H x W x C for drawing: BGR turned to RGB, one channel kept."""
    hwc = chw.transpose(1, 2, 0)
    return hwc[:, :, ::-1] if chw.shape[0] == 3 else hwc


def detection_record_png(db_path: Path, index: int, labels: list[str]) -> bytes:
    """The ``index``-th AnnotatedDatum of a detection dataset LMDB as PNG bytes, its boxes drawn and named."""
    from caffe.deploy.detection import Detection
    from caffe.deploy.drawing import draw_detections, encode_image

    key, value = _record(db_path, index)
    name = f"{db_path.name} record {key.decode('utf-8', 'replace')!r}"
    try:
        anno = pb.AnnotatedDatum.FromString(value)
        chw = datum_to_array(anno.datum, name)
    except (DataError, DecodeError) as e:
        raise HTTPException(500, f"{name}: not a readable AnnotatedDatum ({e})") from None
    rgb = _drawable(chw)
    h, w = rgb.shape[:2]
    found = [
        Detection(g.group_label, 1.0, (a.bbox.xmin * w, a.bbox.ymin * h, a.bbox.xmax * w, a.bbox.ymax * h))
        for g in anno.annotation_group
        for a in g.annotation
    ]
    drawn = draw_detections(rgb, found, lambda i: labels[i] if 0 <= i < len(labels) else str(i))
    return encode_image(drawn, ".png")


def detectnet_record_png(split_db: Path, index: int, labels: list[str]) -> bytes:
    """The ``index``-th image of a DetectNet dataset split (``features`` and ``labels`` inside ``split_db``) as PNG
    bytes, every box of its table drawn and named by its class (0: don't care)."""
    from caffe.data.detectnet import CLASS, read_boxes, record_key
    from caffe.deploy.detection import Detection
    from caffe.deploy.drawing import draw_detections, encode_image

    key, image = _record(split_db / "features", index, record_key(index))
    _, table = _record(split_db / "labels", index, key)
    name = f"{split_db.name} record {key.decode('utf-8', 'replace')!r}"
    try:
        chw = datum_to_array(parse_datum(image, name), name)
        rows = read_boxes(datum_to_array(parse_datum(table, name), name))
    except (DataError, ValueError) as e:
        raise HTTPException(500, f"{name}: {e}") from None
    rgb = _drawable(chw)
    found = [Detection(int(r[CLASS]), 1.0, (r[0], r[1], r[0] + r[2], r[1] + r[3])) for r in rows]
    drawn = draw_detections(rgb, found, lambda i: labels[i] if 0 <= i < len(labels) else str(i))
    return encode_image(drawn, ".png")


def _record_names(db_path: Path) -> list[str]:
    """The names of a dataset LMDB's records (their keys less the ``%08d_`` index), in key order; 404 if none."""
    if not db_path.is_dir():
        raise HTTPException(404, f"this dataset has no {db_path.name.removesuffix('_db')} database")
    prefix = len(item_key(0, ""))
    with (
        _RECORD_LOCK,
        open_db(db_path, "lmdb", "read", readahead=False) as db,
        db.env.begin() as txn,
        txn.cursor() as cur,
    ):
        return [bytes(k)[prefix:].decode("utf-8", "replace") for k in cur.iternext(keys=True, values=False)]


def segmentation_record_png(job_dir: Path, split: str, index: int) -> bytes:
    """The ``index``-th image of a segmentation dataset with its class map (same index, labels database) coloured
    in with the dataset's palette, as PNG bytes."""
    from caffe.deploy.drawing import encode_image

    key, image = _record(job_dir / f"{split}_db", index)
    _, label = _record(job_dir / f"{split}_labels_db", index)
    name = f"{split} record {key.decode('utf-8', 'replace')!r}"
    try:
        chw = datum_to_array(parse_datum(image, name), name)
        classes = datum_to_array(parse_datum(label, name), name)[0]
        colours = sd.read_palette(job_dir / "palette.json")
    except DataError as e:
        raise HTTPException(500, str(e)) from None
    rgb = chw[::-1].transpose(1, 2, 0) if chw.shape[0] == 3 else np.repeat(chw.transpose(1, 2, 0), 3, axis=2)
    if classes.shape != rgb.shape[:2]:
        raise HTTPException(500, f"{name}: its class map is {classes.shape}, the image {rgb.shape[:2]}")
    return encode_image(sd.overlay_classes(rgb, classes, colours), ".png")


@router.get("/datasets/{job_id}/explore/image", name="dataset_explore_image")
def dataset_explore_image(request: Request, job_id: str, db: str = "train", index: int = 0) -> Response:
    job = _dataset_job(request, job_id)
    split = _split_name(db)
    if index < 0:
        raise HTTPException(400, "index must be >= 0")
    job_dir = studio_of(request).store.job_dir(job.id)
    if task_of(job) == dd.TASK and (job_dir / f"{split}_db" / "features").is_dir():
        data = detectnet_record_png(job_dir / f"{split}_db", index, _read_labels(job_dir))
    elif task_of(job) == dd.TASK:
        data = detection_record_png(job_dir / f"{split}_db", index, _read_labels(job_dir))
    elif task_of(job) == sd.TASK:
        data = segmentation_record_png(job_dir, split, index)
    else:
        data = record_png(job_dir / f"{split}_db", index)
    return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=86400"})


@router.get("/folders.json", summary="The folder picker: sub-folders of a server folder inside the data roots")
def folders_json(request: Request, path: str = "") -> Response:
    """No ``path``: the data roots; a path outside them (symlinks resolved) is 403, a missing folder 404."""
    if len(path) > 4096:
        return JSONResponse({"detail": "path too long", "errors": ["path too long"]}, status_code=400)
    try:
        return JSONResponse(list_folders(path, data_roots(request)))
    except CaffeError as e:
        return JSONResponse({"detail": str(e), "errors": [str(e)]}, status_code=403)
    except (FileNotFoundError, NotADirectoryError) as e:
        return JSONResponse({"detail": str(e), "errors": [str(e)]}, status_code=404)
    except PermissionError:
        message = f"cannot read the folder {path!r}"
        return JSONResponse({"detail": message, "errors": [message]}, status_code=403)
