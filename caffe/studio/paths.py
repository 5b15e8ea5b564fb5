"""Safe paths for the studio: every job id, file name and server path taken from a request goes through here.

``check_job_id`` accepts only the DIGITS-style ids the store makes; ``safe_join`` keeps a relative name
inside a folder (no ``..``, no absolute paths, no symlink leading out); ``resolve_user_path`` checks a
server-side path typed in a form (e.g. a dataset's image folder) against the allowed roots.

The studio's allowed roots ("data roots") are ``caffe studio --data_roots DIR,...``; by default
(:func:`default_data_roots`) the one folder the server was started in. ``--data_roots /`` allows every
folder the process can read; ``--data_roots ""`` none (uploads only).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath, PureWindowsPath

from caffe.errors import CaffeError

JOB_ID_RE = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{4}$")


class UnsafePathError(CaffeError):
    """A path or id from a request that would leave its folder (answered 400)."""


def is_job_id(text: object) -> bool:
    return isinstance(text, str) and JOB_ID_RE.fullmatch(text) is not None


def check_job_id(text: str) -> str:
    if not is_job_id(text):
        raise UnsafePathError(f"not a job id: {text!r}")
    return text


def _parts(relpath: str) -> list[str]:
    """The components of a relative path; absolute paths, drives and ``..`` are refused."""
    if not relpath or "\x00" in relpath:
        raise UnsafePathError(f"bad path {relpath!r}")
    if PurePosixPath(relpath).is_absolute() or PureWindowsPath(relpath).is_absolute() or PureWindowsPath(relpath).drive:
        raise UnsafePathError(f"absolute path not allowed here: {relpath!r}")
    parts = [p for p in re.split(r"[\\/]+", relpath) if p not in ("", ".")]
    if not parts or ".." in parts:
        raise UnsafePathError(f"path leaves its folder: {relpath!r}")
    return parts


def is_within(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """Whether ``path`` (symlinks resolved) is ``root`` or lies under it."""
    return Path(path).resolve().is_relative_to(Path(root).resolve())


def safe_join(root: str | os.PathLike, relpath: str) -> Path:
    """``root / relpath``, refused (UnsafePathError) if it would lead outside ``root``."""
    path = Path(root).joinpath(*_parts(relpath))
    if not is_within(path, root):
        raise UnsafePathError(f"path leads outside its folder: {relpath!r}")
    return path


def default_data_roots() -> list[Path]:
    """The studio's data roots when none are configured: the working directory it was started in."""
    return [Path.cwd().resolve()]


def resolve_user_path(text: str, roots: Iterable[str | os.PathLike] | None = None, shown: str | None = None) -> Path:
    """A server path typed in a form: ``~`` expanded, no ``..`` component, and (when ``roots`` are
    given; None is no restriction, for trusted callers only) resolved, symlinks followed, inside one
    of them. Existence is the caller's check. Messages quote the path as ``shown`` (default its repr)."""
    text = (text or "").strip()
    quoted = repr(text) if shown is None else shown
    if not text or "\x00" in text:
        raise UnsafePathError(f"bad path {quoted}")
    if ".." in re.split(r"[\\/]+", text):
        raise UnsafePathError(f"'..' is not allowed in a path: {quoted}")
    try:
        path = Path(text).expanduser()
        if roots is None:
            return path.resolve()
        roots = [Path(r).expanduser() for r in roots]
        if not any(is_within(path, r) for r in roots):
            listed = ", ".join(str(r) for r in roots) or "(none)"
            raise UnsafePathError(f"path {quoted} is outside the folders this server may read: {listed}")
        return path.resolve()
    except (OSError, RuntimeError) as e:  # a name too long, a symlink loop, ~user unknown
        raise UnsafePathError(f"cannot use the path {quoted}: {getattr(e, 'strerror', None) or e}") from None


MAX_FOLDERS = 500  # the most sub-folders one listing shows


def list_folders(text: str, roots: Iterable[str | os.PathLike], limit: int = MAX_FOLDERS) -> dict[str, object]:
    """The folder picker's listing: with no ``text``, the roots; else the sub-folders of the folder ``text``
    (inside a root, symlinks resolved: UnsafePathError outside; FileNotFoundError when it is no folder), each
    inside a root too (a link leading out is left out), hidden ones left out, sorted, at most ``limit``.
    ``{"path", "parent" (None at a root), "folders": [{"name", "path"}], "truncated"}``."""
    roots = [Path(r).expanduser().resolve() for r in roots]
    if not (text or "").strip():
        folders = [{"name": str(r), "path": str(r)} for r in roots if r.is_dir()]
        return {"path": None, "parent": None, "folders": folders, "truncated": False}
    folder = resolve_user_path(text, roots)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such folder {text!r}")
    children: list[Path] = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if not entry.name.startswith(".") and entry.is_dir():
                children.append(Path(entry.path))
    inside = sorted((c for c in children if any(is_within(c, r) for r in roots)), key=lambda c: c.name.lower())
    parent = folder.parent if folder not in roots and any(is_within(folder.parent, r) for r in roots) else None
    return {
        "path": str(folder),
        "parent": str(parent) if parent else None,
        "folders": [{"name": c.name, "path": str(folder / c.name)} for c in inside[:limit]],
        "truncated": len(inside) > limit,
    }
