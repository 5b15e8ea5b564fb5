"""What a job's deletion would break: the models that use a dataset or a pretrained model.

A dataset is used by the models trained on it (their ``parent``, their form's ``dataset``); a pretrained model by
the models fine-tuned from it (form ``method=pretrained``, ``pretrained_networks``). Deleting a job that models
use is refused (:class:`InUse`, answered 409 with the models) unless the caller asks to delete it together with
its models (``with_models``): they are ended if they run, deleted, then the job itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from caffe.errors import CaffeError
from caffe.studio.store import Job, JobStore

TRUE_WORDS = frozenset({"1", "true", "on", "yes"})
MODEL_PAGE = "/models/{id}"


class InUse(CaffeError):
    """A dataset or pretrained model that models use (``users``) was asked to be deleted alone."""

    def __init__(self, job: Job, users: list[Job]) -> None:
        self.job = job
        self.users = users
        what = "dataset" if job.kind == "dataset" else "pretrained model"
        names = ", ".join(f"'{u.name}' ({u.id})" for u in users)
        super().__init__(
            f"the {what} '{job.name}' is used by {len(users)} model(s): {names}; delete them first, or delete it "
            "together with its models (with_models=1)"
        )

    def to_dict(self) -> dict[str, Any]:
        """The 409 body: the message and the models, each with its page."""
        return {
            "detail": str(self),
            "errors": [str(self)],
            "models": [
                {"id": u.id, "name": u.name, "status": u.status, "url": MODEL_PAGE.format(id=u.id)} for u in self.users
            ],
        }


def flag(value: Any) -> bool:
    """A form or query flag: ``1``, ``true``, ``on``, ``yes``."""
    return str(value or "").strip().lower() in TRUE_WORDS


def uses(model: Job, job: Job) -> bool:
    """Whether the model job ``model`` was made from ``job`` (its dataset or its pretrained model)."""
    params = model.params or {}
    if job.kind == "dataset":
        return job.id in (model.parent, params.get("dataset"))
    if job.kind == "pretrained":
        return params.get("method") == "pretrained" and params.get("pretrained_networks") == job.id
    return False


def models_using(store: JobStore, job: Job) -> list[Job]:
    """The model jobs that use ``job`` (none for a model job), newest first."""
    if job.kind not in ("dataset", "pretrained"):
        return []
    return [m for m in store.list("model") if m.id != job.id and uses(m, job)]


def delete_job(
    store: JobStore,
    scheduler: Any,
    job_id: str,
    with_models: bool = False,
    remove: Callable[[str], None] | None = None,
) -> list[str]:
    """Delete a job; InUse when models use it, unless ``with_models``: then they go first (ended if they run).
    ``remove`` deletes the job itself (default ``scheduler.delete``). Returns the ids of the models deleted."""
    job = store.get(job_id)
    users = models_using(store, job)
    if users and not with_models:
        raise InUse(job, users)
    for model in users:
        scheduler.delete(model.id)  # a running training is ended first (no snapshot: it is deleted)
    (remove or scheduler.delete)(job_id)
    return [m.id for m in users]
