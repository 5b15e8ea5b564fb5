"""Job metadata in SQLite (WAL) plus one folder per job: ``<jobs_dir>/studio.sqlite3`` and ``<jobs_dir>/<id>/``.

Every method is one transaction, safe to call from any thread (one connection, one lock) and from
several processes (WAL, busy timeout). Ids are DIGITS' ``YYYYMMDD-HHMMSS-xxxx``: sortable and safe in paths.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from caffe.studio.paths import is_job_id

KINDS = ("dataset", "model", "pretrained")
STATUSES = ("Initialized", "Waiting", "Running", "Done", "Error", "Aborted", "Interrupted")
ACTIVE = frozenset({"Waiting", "Running"})  # a scheduler owns the job
FINISHED = frozenset({"Done", "Error", "Aborted", "Interrupted"})

_JSON_FIELDS = ("params", "result", "argv", "gpu_request", "gpus")
_COLUMNS = (
    "id",
    "kind",
    "name",
    "status",
    "created",
    "updated",
    "params",
    "result",
    "parent",
    "argv",
    "resource",
    "pid",
    "returncode",
    "gpu_request",
    "gpus",
)
_UPDATABLE = frozenset(_COLUMNS) - {"id", "kind", "created"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, name TEXT NOT NULL, status TEXT NOT NULL,
    created REAL NOT NULL, updated REAL NOT NULL,
    params TEXT NOT NULL DEFAULT '{}', result TEXT NOT NULL DEFAULT '{}', parent TEXT,
    argv TEXT, resource TEXT, pid INTEGER, returncode INTEGER, gpu_request TEXT, gpus TEXT
)
"""
_ADDED_COLUMNS = ("gpu_request TEXT", "gpus TEXT")  # absent from stores made before them


class JobNotFound(KeyError):
    """No job with this id (answered 404)."""

    def __str__(self) -> str:
        return f"no job {self.args[0]!r}"


@dataclass
class Job:
    id: str
    kind: str
    name: str
    status: str
    created: float
    updated: float
    params: dict = field(default_factory=dict)
    result: dict = field(default_factory=dict)
    parent: str | None = None
    argv: list[str] | None = None
    resource: str | None = None  # "cpu", "cuda" (see gpu_request) or None (no device: datasets)
    pid: int | None = None
    returncode: int | None = None
    gpu_request: int | list[int] | None = None  # a "cuda" job's wish: a number of GPUs or their ids
    gpus: list[int] | None = None  # the GPUs it holds (while Running) or held (its last run)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def new_job_id(now: float | None = None) -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.localtime(now)) + "-" + secrets.token_hex(2)


class JobStore:
    def __init__(self, jobs_dir: str | os.PathLike) -> None:
        self.jobs_dir = Path(jobs_dir).expanduser().resolve()
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.jobs_dir / "studio.sqlite3"
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.db_path, timeout=30, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        self._add_columns()

    def _add_columns(self) -> None:
        """Give a store made by an older version the columns added since."""
        with self._transaction() as db:
            have = {row["name"] for row in db.execute("PRAGMA table_info(jobs)")}
            for column in _ADDED_COLUMNS:
                if column.split()[0] not in have:
                    db.execute(f"ALTER TABLE jobs ADD COLUMN {column}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._db.in_transaction:  # nested in one of ours (same thread: the lock is held)
                yield self._db
                return
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @staticmethod
    def _job(row: sqlite3.Row) -> Job:
        values = dict(row)
        for k in _JSON_FIELDS:
            values[k] = json.loads(values[k]) if values[k] is not None else None
        return Job(**values)

    def _row(self, db: sqlite3.Connection, job_id: str) -> Job:
        row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone() if is_job_id(job_id) else None
        if row is None:
            raise JobNotFound(job_id)
        return self._job(row)

    def job_dir(self, job_id: str) -> Path:
        """The job's folder (the id is checked, so the path never leaves ``jobs_dir``)."""
        if not is_job_id(job_id):
            raise JobNotFound(job_id)
        return self.jobs_dir / job_id

    def create(self, kind: str, name: str, params: dict | None = None, parent: str | None = None) -> Job:
        if kind not in KINDS:
            raise ValueError(f"unknown job kind {kind!r} (expected one of {', '.join(KINDS)})")
        now = time.time()
        for _ in range(100):
            job = Job(new_job_id(now), kind, name, "Initialized", now, now, dict(params or {}), {}, parent)
            try:
                (self.jobs_dir / job.id).mkdir()
            except FileExistsError:
                continue
            try:
                with self._transaction() as db:
                    db.execute(
                        f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
                        self._values(job.to_dict()),
                    )
            except sqlite3.IntegrityError:  # a row left without its folder: try another id
                continue
            return job
        raise RuntimeError(f"cannot find a free job id in {self.jobs_dir}")

    @staticmethod
    def _values(fields: dict[str, Any]) -> list[Any]:
        return [json.dumps(v) if k in _JSON_FIELDS and v is not None else v for k, v in fields.items()]

    def get(self, job_id: str) -> Job:
        with self._lock:
            return self._row(self._db, job_id)

    def list(self, kind: str | None = None) -> list[Job]:
        """Jobs, newest first (optionally of one kind)."""
        sql, args = "SELECT * FROM jobs", ()
        if kind is not None:
            sql, args = sql + " WHERE kind = ?", (kind,)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY created DESC, id DESC", args).fetchall()
        return [self._job(r) for r in rows]

    def update(self, job_id: str, **fields: Any) -> Job:
        """Set ``fields`` atomically; returns the job as stored."""
        job = self.update_if(job_id, None, **fields)
        assert job is not None
        return job

    def update_if(self, job_id: str, expected: dict[str, Any] | None, **fields: Any) -> Job | None:
        """Set ``fields`` only if the job's current values match ``expected`` (compare-and-set);
        returns the updated job, or None when they did not match."""
        bad = set(fields) - _UPDATABLE
        if bad:
            raise ValueError(f"cannot update job field(s): {', '.join(sorted(bad))}")
        if "status" in fields and fields["status"] not in STATUSES:
            raise ValueError(f"unknown job status {fields['status']!r}")
        with self._transaction() as db:
            job = self._row(db, job_id)
            if expected and any(getattr(job, k) != v for k, v in expected.items()):
                return None
            fields = {**fields, "updated": time.time()}
            db.execute(
                f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?",
                [*self._values(fields), job_id],
            )
            return self._row(db, job_id)

    def merge_result(self, job_id: str, **items: Any) -> Job:
        """Add ``items`` to the job's ``result`` dict in one transaction (no lost updates)."""
        with self._transaction():
            job = self.get(job_id)
            return self.update(job_id, result={**job.result, **items})

    def delete(self, job_id: str) -> None:
        """Remove the row and the folder."""
        folder = self.job_dir(job_id)
        with self._transaction() as db:
            if db.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount == 0:
                raise JobNotFound(job_id)
        shutil.rmtree(folder, ignore_errors=True)
