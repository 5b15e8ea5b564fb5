"""The model zoo: model folders described by a ``readme.md`` with YAML front matter.

A model folder (``models/bvlc_alexnet``, or one fetched from a Gist) holds the net and solver
prototxts and a ``readme.md`` that starts with a YAML block between two ``---`` lines::

    ---
    name: BAIR/BVLC AlexNet Model
    caffemodel: bvlc_alexnet.caffemodel
    caffemodel_url: http://dl.caffe.berkeleyvision.org/bvlc_alexnet.caffemodel
    sha1: 9116a64c0fbe4459d18f4bb6b56d647b63920377
    license: unrestricted
    caffe_commit: 709dc15af4a06bebda027c1eb2b3f3e3375d5077
    gist_id: ...            (optional: the Gist this folder is published as)
    ---

What Caffe's ``scripts/`` did with it, as a library (the ``caffe zoo`` commands call these):

* :func:`download_model`: fetch the ``.caffemodel`` named in the front matter into the folder and
  check its SHA1 (``scripts/download_model_binary.py``), through :func:`caffe.tools.download.download`
  (resume of a partial download, a mirror folder or server for offline use);
* :func:`publish_model`: upload the folder's text files as a GitHub Gist, or update the Gist named by
  ``gist_id`` (``scripts/upload_model_to_gist.sh``); a new Gist's id is written into the readme;
* :func:`fetch_gist`: download a Gist's files into ``DIRNAME/GIST_ID/``
  (``scripts/download_model_from_gist.sh``).

The Caffe2 model zoo (caffe2/models) is understood too: a folder per model, named after it, holding
``predict_net.pb`` and ``init_net.pb`` (+ ``value_info.json``), and no readme. In a clone of that repository
the ``.pb`` files are Git-LFS pointers (``oid sha256:...``, ``size``). :func:`download_model` on such a folder
(or on a new folder whose name is a zoo model's) fetches both nets (:func:`download_caffe2_model`) from
``$CAFFE2_MODEL_URL`` (default Caffe2's own ``https://s3.amazonaws.com/download.caffe2.ai/models``) as
``<url>/<model>/<file>``, or from a mirror holding ``<mirror>/<model>/<file>``, checking an LFS pointer's
SHA-256 and size when the folder has one. :func:`list_models` lists such folders as Caffe2 entries.

The Gist functions speak GitHub's REST API (``POST /gists``, ``PATCH /gists/{id}``, ``GET /gists/{id}``)
with the standard library's ``urllib``; the API's base URL can point anywhere (``CAFFE_GIST_API``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from caffe.errors import CaffeError, DataError
from caffe.protoio import atomic_write
from caffe.tools.download import ChecksumError, download

log = logging.getLogger("caffe")

README = "readme.md"
REQUIRED_KEYS = ("caffemodel", "caffemodel_url", "sha1")
MIRROR_ENV = "CAFFE_MODEL_MIRROR"
GIST_API_ENV = "CAFFE_GIST_API"
DEFAULT_GIST_API = "https://api.github.com"
DEFAULT_TOKEN_ENV = "GITHUB_TOKEN"
CAFFE2_URL_ENV = "CAFFE2_MODEL_URL"
DEFAULT_CAFFE2_URL = "https://s3.amazonaws.com/download.caffe2.ai/models"
CAFFE2_NETS = ("predict_net.pb", "init_net.pb")
CAFFE2_OPTIONAL = ("value_info.json",)
CAFFE2_FORMAT = "caffe2"
_USER_AGENT = "neocaffe-zoo/1"
_CHUNK = 1 << 20


class ZooError(CaffeError):
    """A model folder, readme or Gist that cannot be used as asked."""


class ModelDownloadError(ChecksumError):
    """The downloaded caffemodel is not the one the readme names (its SHA1 differs); it was removed."""


# ---------------------------------------------------------------------------------------------
# readme front matter


def _readme_path(model_dir: str | os.PathLike) -> Path:
    return Path(model_dir) / README


def _front_matter_span(lines: list[str], readme: Path) -> tuple[int, int]:
    """Indexes of the opening and closing ``---`` lines (the first non-blank line opens the block)."""
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None or lines[first].strip().lstrip("\ufeff") != "---":
        raise ZooError(f"{readme}: no YAML front matter (the file must start with a '---' line)")
    for i in range(first + 1, len(lines)):
        if lines[i].strip() == "---":
            return first, i
    raise ZooError(f"{readme}: the YAML front matter has no closing '---' line")


def parse_front_matter(text: str, readme: str | os.PathLike = README) -> dict[str, Any]:
    """The YAML mapping between the ``---`` lines at the top of a readme's ``text``."""
    readme = Path(readme)
    lines = text.splitlines()
    top, bottom = _front_matter_span(lines, readme)
    try:
        data = yaml.safe_load("\n".join(lines[top + 1 : bottom]))
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" (line {top + 2 + where.line})" if where is not None else ""
        raise ZooError(f"{readme}: the front matter is not valid YAML{at}: {getattr(e, 'problem', e)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ZooError(f"{readme}: the front matter must be a YAML mapping (key: value lines)")
    return data


def read_front_matter(model_dir: str | os.PathLike) -> dict[str, Any]:
    readme = _readme_path(model_dir)
    try:
        text = readme.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ZooError(f"{model_dir}: not a model folder ({README} not found)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ZooError(f"{readme}: cannot read ({e})") from None
    return parse_front_matter(text, readme)


def set_front_matter_key(model_dir: str | os.PathLike, key: str, value: str) -> None:
    """Set ``key: value`` in the readme's front matter (replacing the key's line, or adding one
    before the closing ``---``), leaving the rest of the file as it is; written atomically."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) or "\n" in value:
        raise ValueError(f"bad front matter entry {key!r}: {value!r}")
    readme = _readme_path(model_dir)
    text = readme.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    top, bottom = _front_matter_span([line.rstrip("\r\n") for line in lines], readme)
    newline = "\r\n" if lines[top].endswith("\r\n") else "\n"
    plain = yaml.safe_load(value) == value  # else quote it (an all-digit id would read as a number)
    entry = f"{key}: {value if plain else json.dumps(value)}{newline}"
    for i in range(top + 1, bottom):
        if re.match(rf"{re.escape(key)}\s*:", lines[i]):
            lines[i] = entry
            break
    else:
        lines.insert(bottom, entry)
    new = "".join(lines)
    if parse_front_matter(new, readme).get(key) != value:  # e.g. a value YAML would read as a number
        raise ZooError(f"{readme}: cannot store {key}: {value} in the front matter")
    atomic_write(readme, new.encode("utf-8"))


# ---------------------------------------------------------------------------------------------
# model folders


@dataclass
class ModelInfo:
    """A model folder and its readme's front matter."""

    dir: Path
    front: dict[str, Any] = field(default_factory=dict)

    @property
    def readme(self) -> Path:
        return self.dir / README

    @property
    def name(self) -> str:
        return str(self.front.get("name") or self.dir.name)

    @property
    def license(self) -> str:
        return str(self.front.get("license", "") or "")

    @property
    def missing_keys(self) -> list[str]:
        return [k for k in REQUIRED_KEYS if self.front.get(k) in (None, "")]

    def check(self) -> None:
        """ZooError unless the front matter has usable caffemodel, caffemodel_url and sha1 entries."""
        missing = self.missing_keys
        if missing:
            raise ZooError(
                f"{self.readme}: the front matter lacks the required key{'s' if len(missing) > 1 else ''} "
                f"{', '.join(missing)} (a downloadable model needs {', '.join(REQUIRED_KEYS)})"
            )
        for key in REQUIRED_KEYS:
            if not isinstance(self.front[key], str):
                raise ZooError(f"{self.readme}: {key} must be a string (quote it): got {self.front[key]!r}")
        if not re.fullmatch(r"[0-9a-fA-F]{40}", self.sha1):
            raise ZooError(f"{self.readme}: sha1 must be 40 hexadecimal digits, got {self.front['sha1']!r}")
        name = self.front["caffemodel"]
        if name in (".", "..") or "/" in name or "\\" in name or name != name.strip():
            raise ZooError(f"{self.readme}: caffemodel must be a plain file name in the folder, got {name!r}")

    @property
    def sha1(self) -> str:
        return str(self.front.get("sha1", "")).lower()

    @property
    def caffemodel(self) -> Path:
        return self.dir / str(self.front["caffemodel"])

    @property
    def partial(self) -> Path:
        return self.dir / f"{self.front['caffemodel']}.part"


def load_model(model_dir: str | os.PathLike, require_download_keys: bool = True) -> ModelInfo:
    """The model folder ``model_dir`` (ZooError if it has no readable readme, or, with
    ``require_download_keys``, if the front matter lacks caffemodel, caffemodel_url or sha1)."""
    d = Path(model_dir)
    if not d.is_dir():
        raise ZooError(f"{model_dir}: no such model folder")
    info = ModelInfo(d, read_front_matter(d))
    if require_download_keys:
        info.check()
    return info


def sha1_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha1(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def model_status(info: ModelInfo, verify: bool = True) -> str:
    """What is on disk: 'downloaded, SHA1 OK', 'downloaded, SHA1 mismatch', 'downloaded' (not
    verified), 'partial download (N bytes)', 'not downloaded', or what the readme lacks."""
    if info.front.get("format") == CAFFE2_FORMAT:
        missing = [n for n in CAFFE2_NETS if _lfs_pointer(info.dir / n) is not None or not (info.dir / n).is_file()]
        return f"Caffe2 model, {'not downloaded: ' + ', '.join(missing) if missing else 'downloaded'}"
    if info.missing_keys:
        return f"readme lacks {', '.join(info.missing_keys)}"
    try:
        info.check()
    except ZooError as e:
        return f"bad readme ({str(e).split(': ', 1)[-1]})"
    if info.caffemodel.is_file():
        if not verify:
            return "downloaded"
        return "downloaded, SHA1 OK" if sha1_of(info.caffemodel) == info.sha1 else "downloaded, SHA1 mismatch"
    if info.partial.is_file():
        return f"partial download ({info.partial.stat().st_size} bytes)"
    return "not downloaded"


def list_models(models_dir: str | os.PathLike = "models") -> list[ModelInfo | tuple[Path, str]]:
    """The model folders under ``models_dir`` (those with a readme.md), sorted by name; a folder
    whose readme cannot be read comes as ``(folder, problem)``."""
    root = Path(models_dir)
    if not root.is_dir():
        raise ZooError(f"{models_dir}: no such folder")
    out: list[ModelInfo | tuple[Path, str]] = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and ((p / README).is_file() or is_caffe2_entry(p))):
        if not (d / README).is_file():
            out.append(ModelInfo(d, {"name": d.name, "format": CAFFE2_FORMAT}))
            continue
        try:
            out.append(load_model(d, require_download_keys=False))
        except ZooError as e:
            out.append((d, str(e)))
    return out


# ---------------------------------------------------------------------------------------------
# downloading the caffemodel


def download_model(
    model_dir: str | os.PathLike,
    *,
    mirror: str | None = None,
    force: bool = False,
    timeout: float = 60.0,
    retries: int = 3,
) -> tuple[Path, bool]:
    """Fetch the folder's caffemodel (its readme's ``caffemodel_url``) and check its SHA1.

    Returns ``(path, downloaded)``: ``downloaded`` is False when a file with the right SHA1 was
    already there (and ``force`` is not set). ``mirror``: a folder (or file:// URL) holding the
    caffemodel file, or an http(s) URL to append its name to; None means ``$CAFFE_MODEL_MIRROR``.
    A connection that breaks is resumed (HTTP range request) up to ``retries`` times while it makes
    progress; a partial download (``NAME.part``) left by a failed run is resumed by the next.
    Raises ModelDownloadError when the SHA1 does not match (the file is removed), ZooError for
    a bad readme, DataError when the file cannot be fetched.
    """
    if not Path(model_dir).exists() or is_caffe2_entry(model_dir):  # a Caffe2 zoo model (see the module)
        return download_caffe2_model(model_dir, mirror=mirror, force=force, timeout=timeout)
    info = load_model(model_dir)
    dest, part = info.caffemodel, info.partial
    if dest.exists() and not dest.is_file():
        raise ZooError(f"{dest}: exists and is not a file")
    if dest.is_file() and not force:
        got = sha1_of(dest)
        if got == info.sha1:
            log.info("%s is already here with the right SHA1 (%s): nothing to download", dest, got)
            return dest, False
        log.warning("%s has the SHA1 %s, not %s as %s says: downloading it again", dest, got, info.sha1, info.readme)
    if force:
        part.unlink(missing_ok=True)
    dest.unlink(missing_ok=True)  # never continue a complete file that is wrong: start afresh

    url = str(info.front["caffemodel_url"])
    for attempt in range(retries + 1):
        before = part.stat().st_size if part.exists() else 0
        try:
            path = download(
                url, info.dir, mirror=mirror, sha1=info.sha1, timeout=timeout, filename=dest.name, mirror_env=MIRROR_ENV
            )
            return path, True
        except ChecksumError as e:
            raise ModelDownloadError(
                f"{e}. Check caffemodel_url and sha1 in {info.readme}, or run the download again"
            ) from None
        except DataError:
            after = part.stat().st_size if part.exists() else 0
            if attempt == retries or after <= before:
                raise
            log.warning(
                "The download of %s stopped at byte %d; resuming it (retry %d of %d)", url, after, attempt + 1, retries
            )
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------
# the Caffe2 model zoo


def _lfs_pointer(path: Path) -> tuple[str, int] | None:
    """The (sha256, size) of a Git-LFS pointer file, None when ``path`` is not one."""
    try:
        if not path.is_file() or path.stat().st_size > 1024:
            return None
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    oid = re.search(r"^oid sha256:([0-9a-f]{64})$", text, re.M)
    size = re.search(r"^size (\d+)$", text, re.M)
    if not text.startswith("version https://git-lfs") or oid is None or size is None:
        return None
    return oid.group(1), int(size.group(1))


def is_caffe2_entry(model_dir: str | os.PathLike) -> bool:
    """Whether ``model_dir`` is a Caffe2 zoo folder: no readme, and a Caffe2 net or value_info.json in it."""
    d = Path(model_dir)
    names = (*CAFFE2_NETS, *CAFFE2_OPTIONAL, "predict_net.pbtxt")
    return d.is_dir() and not (d / README).is_file() and any((d / n).is_file() for n in names)


def _caffe2_source(base: str, model: str) -> str:
    """``base/model`` for a URL or a folder (a file:// URL stays one)."""
    return f"{base.rstrip('/')}/{urllib.parse.quote(model)}" if "://" in base else str(Path(base) / model)


def download_caffe2_model(
    model_dir: str | os.PathLike,
    *,
    mirror: str | None = None,
    base_url: str | None = None,
    force: bool = False,
    timeout: float = 60.0,
) -> tuple[Path, bool]:
    """Fetch a Caffe2 zoo model's ``predict_net.pb`` and ``init_net.pb`` (and ``value_info.json`` when the
    source has it) into ``model_dir``, whose name is the model's (see the module). Returns ``(folder,
    downloaded)``; ``downloaded`` is False when both nets were already there (not LFS pointers) and
    ``force`` is not set. A net whose LFS pointer gives a SHA-256 is checked against it."""
    folder = Path(model_dir)
    model = folder.resolve().name
    mirror = os.environ.get(MIRROR_ENV, "") if mirror is None else mirror
    base = mirror or base_url or os.environ.get(CAFFE2_URL_ENV) or DEFAULT_CAFFE2_URL
    source = _caffe2_source(base, model)
    pointers = {n: _lfs_pointer(folder / n) for n in CAFFE2_NETS}
    todo = [n for n in CAFFE2_NETS if force or pointers[n] is not None or not (folder / n).is_file()]
    if not todo:
        log.info("%s: the Caffe2 nets are already here: nothing to download", folder)
        return folder, False
    folder.mkdir(parents=True, exist_ok=True)
    for name in todo:
        (folder / name).unlink(missing_ok=True)
        path = download(f"{source}/{name}", folder, mirror=source if mirror else "", timeout=timeout, filename=name)
        expected = pointers[name]
        if expected is not None:
            got = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_size)
            if got != expected:
                path.unlink()
                raise ModelDownloadError(
                    f"{path}: SHA-256 {got[0]} ({got[1]} bytes) is not the {expected[0]} ({expected[1]} bytes) "
                    "of its Git-LFS pointer; the file was removed"
                )
    for name in CAFFE2_OPTIONAL:
        if not (folder / name).is_file():
            with contextlib.suppress(DataError):
                download(f"{source}/{name}", folder, mirror=source if mirror else "", timeout=timeout, filename=name)
    return folder, True


# ---------------------------------------------------------------------------------------------
# Gists


def gist_api(api: str | None = None) -> str:
    """The GitHub API base URL: ``api``, else ``$CAFFE_GIST_API``, else https://api.github.com."""
    base = api or os.environ.get(GIST_API_ENV) or DEFAULT_GIST_API
    if not re.match(r"^https?://", base, re.IGNORECASE):
        raise ZooError(f"{base}: the Gist API must be an http:// or https:// URL")
    return base.rstrip("/")


def token_from_env(token_env: str = DEFAULT_TOKEN_ENV, required: bool = True) -> str:
    """The token in the environment variable ``token_env`` ('' if unset and not ``required``)."""
    token = os.environ.get(token_env, "").strip()
    if not token and required:
        raise ZooError(
            f"no GitHub token: set the environment variable {token_env} to a token allowed to write Gists "
            "(a classic token with the 'gist' scope, or a fine-grained one with Gists read/write)"
        )
    return token


def _text_content(path: Path) -> str | None:
    """The file's text, or None when it is binary (a NUL byte, or not UTF-8)."""
    data = path.read_bytes()
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


#: Weights, solver states, means, arrays and archives: never uploaded, whatever their bytes look like.
BINARY_SUFFIXES = (
    ".caffemodel", ".solverstate", ".h5", ".hdf5", ".binaryproto", ".npy", ".npz", ".part",
    ".zip", ".gz", ".tar", ".tgz", ".pkl", ".onnx", ".pt", ".pth",
)  # fmt: skip


def _is_binary_name(name: str) -> bool:
    lower = name.lower()
    return any(lower.endswith(s) or f"{s}." in lower for s in BINARY_SUFFIXES)


def gist_files(model_dir: str | os.PathLike) -> dict[str, str]:
    """The files of a model folder that go into its Gist: the regular files at its top level, except
    hidden ones, weights and other binary formats (by suffix, e.g. ``.caffemodel``,
    ``.solverstate``, ``.caffemodel.h5``, ``.part``), files whose bytes are not UTF-8 text, and empty ones."""
    files: dict[str, str] = {}
    for p in sorted(Path(model_dir).iterdir()):
        if not p.is_file() or p.name.startswith("."):
            continue
        text = None if _is_binary_name(p.name) else _text_content(p)
        if text is None:
            log.info("Not uploading %s: a binary file", p)
        elif not text.strip():
            log.info("Not uploading %s: empty (a Gist cannot hold empty files)", p)
        else:
            files[p.name] = text
    return files


def _api_request(
    method: str, url: str, token: str | None, body: dict[str, Any] | None = None, timeout: float = 60.0
) -> Any:
    headers = {
        "Accept": "application/vnd.github+json",
        "X-GitHub-Api-Version": "2022-11-28",
        "User-Agent": _USER_AGENT,
    }
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = json.dumps(body).encode("utf-8")
        headers["Content-Type"] = "application/json; charset=utf-8"
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    path = urllib.parse.urlparse(url).path
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as e:
        detail = ""
        with contextlib.suppress(ValueError, AttributeError, OSError):
            detail = str(json.loads(e.read().decode("utf-8", "replace")).get("message", ""))
        hint = {
            401: " (the token was refused: check it)",
            403: " (the token may lack the gist scope)",
            404: " (no such Gist, or the token cannot see it)",
        }
        raise ZooError(
            f"Gist API {method} {path}: HTTP {e.code} {e.reason}{': ' + detail if detail else ''}{hint.get(e.code, '')}"
        ) from None
    except (urllib.error.URLError, OSError) as e:
        raise ZooError(f"Gist API {method} {url}: {getattr(e, 'reason', None) or e}") from None
    try:
        return json.loads(raw.decode("utf-8")) if raw.strip() else {}
    except ValueError:
        raise ZooError(f"Gist API {method} {path}: the answer is not JSON") from None


@dataclass
class Published:
    gist_id: str
    url: str
    created: bool
    files: list[str]


def publish_model(
    model_dir: str | os.PathLike,
    token: str,
    *,
    api: str | None = None,
    public: bool = False,
    timeout: float = 60.0,
) -> Published:
    """Upload the model folder's text files as a Gist described by the readme's ``name``: a new
    Gist (``POST /gists``; its id is then written into the readme as ``gist_id`` and the readme
    uploaded again), or, when the readme has ``gist_id``, an update of that Gist (``PATCH``)."""
    info = load_model(model_dir, require_download_keys=False)
    base = gist_api(api)
    files = gist_files(info.dir)
    if README not in files:
        raise ZooError(f"{info.readme}: not uploadable (empty or not UTF-8 text)")
    payload = {name: {"content": text} for name, text in files.items()}
    description = info.name
    gist_id = str(info.front.get("gist_id") or "").strip()
    if gist_id:
        gid = split_gist_id(gist_id, f"{info.readme}: gist_id: ")[0]
        log.info("Updating the existing Gist %s with %d files", gid, len(files))
        answer = _api_request(
            "PATCH",
            f"{base}/gists/{urllib.parse.quote(gid)}",
            token,
            {"description": description, "files": payload},
            timeout,
        )
        return Published(gid, str(answer.get("html_url") or ""), False, sorted(files))
    log.info("Uploading a new %s Gist with %d files", "public" if public else "secret", len(files))
    answer = _api_request(
        "POST", f"{base}/gists", token, {"description": description, "public": public, "files": payload}, timeout
    )
    gid = str(answer.get("id") or "")
    if not re.fullmatch(r"[0-9A-Za-z]+", gid):
        raise ZooError(f"Gist API POST /gists: the answer has no usable Gist id ({gid!r})")
    try:
        set_front_matter_key(info.dir, "gist_id", gid)
    except (OSError, ZooError) as e:
        raise ZooError(f"created the Gist {gid}, but could not write gist_id: {gid} into {info.readme}: {e}") from None
    log.info("Wrote gist_id: %s into %s", gid, info.readme)
    # the uploaded readme should carry its Gist's id too
    readme = info.readme.read_text(encoding="utf-8")
    answer2 = _api_request("PATCH", f"{base}/gists/{gid}", token, {"files": {README: {"content": readme}}}, timeout)
    url = str(answer.get("html_url") or answer2.get("html_url") or "")
    return Published(gid, url, True, sorted(files))


def split_gist_id(gist_id: str, where: str = "") -> tuple[str, str]:
    """``(id, folder name)`` of a Gist given as ``ID`` or ``USER/ID`` (the folder: the whole text
    with '/' replaced by '-', as Caffe's script named it). ZooError for anything else."""
    text = gist_id.strip()
    if not re.fullmatch(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?/)?[0-9A-Za-z]+", text):
        raise ZooError(f"{where}{gist_id!r} is not a Gist id (ID or USER/ID, ID made of letters and digits)")
    return text.rsplit("/", 1)[-1], text.replace("/", "-")


def fetch_gist(
    gist_id: str,
    dirname: str | os.PathLike = "models",
    *,
    api: str | None = None,
    token: str | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download the files of the Gist ``gist_id`` (``ID`` or ``USER/ID``) into ``DIRNAME/GIST_ID``
    (Caffe's layout, ``/`` in the id becoming ``-``), which must not exist yet; returns that folder.
    The folder appears complete or not at all."""
    base = gist_api(api)
    gid, folder = split_gist_id(gist_id)
    target = Path(dirname) / folder
    if target.exists():
        raise _exists(target)
    answer = _api_request("GET", f"{base}/gists/{urllib.parse.quote(gid)}", token, None, timeout)
    files = answer.get("files") if isinstance(answer, dict) else None
    if not isinstance(files, dict) or not files:
        raise ZooError(f"Gist {gist_id}: it holds no files")
    api_host = urllib.parse.urlparse(base).netloc
    contents: dict[str, bytes] = {}
    for key, entry in files.items():
        entry = entry if isinstance(entry, dict) else {}
        name = str(entry.get("filename") or key)
        if name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
            raise ZooError(f"Gist {gist_id}: refusing the file name {name!r}")
        content = entry.get("content")
        if entry.get("truncated") or content is None:
            raw_url = entry.get("raw_url")
            if not raw_url or not re.match(r"^https?://", str(raw_url), re.IGNORECASE):
                raise ZooError(f"Gist {gist_id}: {name} has neither content nor an http(s) raw_url")
            same_host = urllib.parse.urlparse(raw_url).netloc == api_host
            contents[name] = _get_raw(str(raw_url), token if same_host else None, timeout)
        else:
            contents[name] = str(content).encode("utf-8")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for name, data in contents.items():
            (tmp / name).write_bytes(data)
        if target.exists():
            raise _exists(target)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _exists(target: Path) -> ZooError:
    return ZooError(f"{target}: already exists; remove or rename it first (fetch_gist never writes over a folder)")


def _get_raw(url: str, token: str | None, timeout: float) -> bytes:
    headers = {"User-Agent": _USER_AGENT}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:
            return resp.read()
    except urllib.error.HTTPError as e:
        raise ZooError(f"{urllib.parse.urlparse(url).path}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise ZooError(f"{url}: {getattr(e, 'reason', None) or e}") from None
