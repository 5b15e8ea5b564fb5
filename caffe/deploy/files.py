"""Finding a deployable model's files: a folder, a DIGITS archive, a zoo entry, or explicit files.

:func:`find_model` turns any of these into a :class:`ModelFiles`:

* deploy: ``deploy.prototxt``, else the only ``*deploy*.prototxt``, else the only ``.prototxt`` whose
  name does not say solver, train, val or original (as Caffe's ``lenet.prototxt``);
* weights: a zoo entry's ``caffemodel`` (its ``readme.md`` front matter; ``caffe zoo download`` fetches
  it), else the newest snapshot (``<prefix>_iter_N.caffemodel``, highest N), else the only ``.caffemodel``
  (or ``.caffemodel.h5``); several non-snapshot candidates are an error listing them;
* mean: ``mean.binaryproto``, ``mean.npy``, ``mean_values.txt`` (senlinuc/caffe_ocr's channel means, one a line),
  else the only ``*.binaryproto`` / ``*mean*.npy``;
* labels: ``labels.txt``, ``synset_words.txt``, ``synset.txt``, else the only ``*label*.txt``, else the only
  ``*labelmap*.prototxt`` (an SSD label map);
* info: ``info.json`` (DIGITS' job description) when present: it makes the model a DIGITS model, whose
  preprocessing follows it (see :mod:`caffe.deploy.model`).

A Caffe2 model folder (``init_net.pb`` + ``predict_net.pb``, optional ``value_info.json``, no ``.prototxt``)
is converted (:mod:`caffe.caffe2`) once into the cache beside unpacked archives; deploy and weights are
the converted files, mean and labels are still looked for in the folder.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from caffe.deploy.archive import ARCHIVE_SUFFIXES, archive_stem, extract_archive, is_archive
from caffe.deploy.errors import ModelFilesError, PathLike
from caffe.deploy.readers import MAX_TEXT_BYTES
from caffe.limits import read_file

WEIGHTS_SUFFIXES = (".caffemodel", ".caffemodel.h5")
LABEL_NAMES = ("labels.txt", "synset_words.txt", "synset.txt")

_SNAPSHOT = re.compile(r"^(?P<prefix>.*)_iter_(?P<iter>\d+)\.caffemodel(\.h5)?$")


@dataclass
class ModelFiles:
    """The files of one deployable model (mean and labels optional); ``folder`` is where they were found."""

    deploy: Path
    weights: Path
    mean: Path | None = None
    labels: Path | None = None
    folder: Path | None = None
    info: dict[str, Any] | None = None
    name: str = field(default="")


def find_model(
    path_or_archive: PathLike | None = None,
    *,
    deploy: PathLike | None = None,
    weights: PathLike | None = None,
    mean: PathLike | None = None,
    labels: PathLike | None = None,
    cache_dir: PathLike | None = None,
) -> ModelFiles:
    """The files of a model: a folder, a DIGITS archive, a ``.prototxt`` or ``.caffemodel`` (whose folder is
    searched), and/or explicit files, which win over what is found (see the module)."""
    folder: Path | None = None
    name = ""
    if path_or_archive is not None:
        p = Path(path_or_archive)
        if p.is_dir():
            folder, name = p, p.resolve().name
        elif p.is_file() and is_archive(p):
            folder, name = extract_archive(p, cache_dir=cache_dir), archive_stem(p)
        elif p.is_file() and p.suffix == ".prototxt":
            deploy, folder, name = deploy or p, p.parent, p.parent.resolve().name
        elif p.is_file() and p.name.endswith(WEIGHTS_SUFFIXES):
            weights, folder, name = weights or p, p.parent, p.parent.resolve().name
        elif p.exists():
            raise ModelFilesError(
                f"{p}: not a model folder, a model archive ({', '.join(ARCHIVE_SUFFIXES)}), "
                "a .prototxt or a .caffemodel"
            )
        else:
            raise ModelFilesError(f"{p}: no such model folder or file")
    explicit = {
        "deploy prototxt": deploy,
        "weights": weights,
        "mean": mean,
        "labels": labels,
    }
    for what, f in explicit.items():
        if f is not None and not Path(f).is_file():
            raise ModelFilesError(f"{what} file {f}: not found")
    if deploy is None and weights is None and folder is not None and _is_caffe2(folder):
        deploy, weights = _caffe2_files(folder, cache_dir)
    if deploy is None:
        if folder is None:
            raise ModelFilesError("no model given: name a model folder or archive, or the deploy prototxt")
        deploy = _pick_deploy(folder)
    deploy = Path(deploy)
    if weights is None:
        weights = _pick_weights(folder if folder is not None else deploy.parent)
    files = ModelFiles(deploy, Path(weights), folder=folder, name=name or deploy.stem)
    files.mean = Path(mean) if mean is not None else (_pick_mean(folder) if folder is not None else None)
    files.labels = Path(labels) if labels is not None else (_pick_labels(folder) if folder is not None else None)
    if folder is not None and (folder / "info.json").is_file():
        files.info = read_info(folder / "info.json")
    return files


def _is_caffe2(folder: Path) -> bool:
    """A Caffe2 model folder: its two nets and no prototxt (a Caffe model beside them wins)."""
    from caffe.caffe2.model import is_caffe2_folder

    return is_caffe2_folder(folder) and not any(folder.glob("*.prototxt"))


def _caffe2_files(folder: Path, cache_dir: PathLike | None) -> tuple[Path, Path]:
    """The converted deploy prototxt and caffemodel of a Caffe2 model folder; failures as ModelFilesError."""
    from caffe.caffe2.model import converted_files
    from caffe.errors import CaffeError

    try:
        return converted_files(folder, cache_dir)
    except ModelFilesError:
        raise
    except CaffeError as e:
        raise ModelFilesError(f"{folder}: Caffe2 model: {e}") from None


def _only(folder: Path, found: list[Path], what: str, how: str) -> Path | None:
    """The one candidate, None for none, an error listing them for several."""
    if len(found) > 1:
        names = ", ".join(q.name for q in found)
        raise ModelFilesError(f"{folder}: {len(found)} candidate {what} files ({names}); {how}")
    return found[0] if found else None


def _pick_deploy(folder: Path) -> Path:
    if (folder / "deploy.prototxt").is_file():
        return folder / "deploy.prototxt"
    protos = sorted(folder.glob("*.prototxt"))
    named = [q for q in protos if "deploy" in q.name.lower()]
    if not named:  # Caffe's examples: lenet.prototxt beside lenet_solver.prototxt and lenet_train_test.prototxt
        named = [q for q in protos if not re.search(r"solver|train|val|original|labelmap", q.name.lower())]
    found = _only(folder, named, "deploy prototxt", "name the deploy prototxt")
    if found is None:
        seen = ", ".join(q.name for q in protos) or "no .prototxt files"
        raise ModelFilesError(f"{folder}: no deploy prototxt (deploy.prototxt or *deploy*.prototxt); found {seen}")
    return found


def _pick_weights(folder: Path) -> Path:
    zoo = _zoo_weights(folder)
    if zoo is not None:
        return zoo
    found = sorted(q for q in folder.iterdir() if q.is_file() and q.name.endswith(WEIGHTS_SUFFIXES))
    if not found:
        raise ModelFilesError(f"{folder}: no weights (.caffemodel or .caffemodel.h5) found")
    snapshots = [(q, _SNAPSHOT.match(q.name)) for q in found]
    snapshots = [(q, m) for q, m in snapshots if m]
    if snapshots:
        prefixes = sorted({m["prefix"] for _, m in snapshots})
        if len(prefixes) > 1:
            raise ModelFilesError(
                f"{folder}: snapshots of {len(prefixes)} trainings ({', '.join(p + '_iter_*' for p in prefixes)}); "
                "name the weights to use"
            )
        # the highest iteration; .caffemodel before .caffemodel.h5 at the same one
        return max(snapshots, key=lambda qm: (int(qm[1]["iter"]), qm[0].suffix == ".caffemodel"))[0]
    only = _only(folder, found, "weights", "none is a snapshot (*_iter_N.caffemodel): name the weights to use")
    assert only is not None
    return only


def _pick_mean(folder: Path) -> Path | None:
    for name in ("mean.binaryproto", "mean.npy", "mean_values.txt"):
        if (folder / name).is_file():
            return folder / name
    found = sorted(folder.glob("*.binaryproto")) or sorted(folder.glob("*mean*.npy"))
    return _only(folder, found, "mean", "name the mean to use")


def _pick_labels(folder: Path) -> Path | None:
    for name in LABEL_NAMES:
        if (folder / name).is_file():
            return folder / name
    found = sorted(folder.glob("*label*.txt")) or sorted(folder.glob("*labelmap*.prototxt"))
    return _only(folder, found, "labels", "name the labels to use")


def read_info(path: Path) -> dict[str, Any]:
    data = read_file(path, "info.json", max_bytes=MAX_TEXT_BYTES, error=ModelFilesError)
    try:
        info = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ModelFilesError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ModelFilesError(f"{path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg})") from None
    except RecursionError:
        raise ModelFilesError(f"{path}: JSON nested too deeply") from None
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        raise ModelFilesError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(info, dict):
        raise ModelFilesError(f"{path}: expected a JSON object, got {type(info).__name__}")
    return info


def input_shape(deploy: PathLike) -> list[int] | None:
    """The shape of the deploy net's first ``Input`` (legacy ``input:`` fields upgraded), or None."""
    from caffe.protoio import read_net_param

    for layer in read_net_param(deploy).layer:
        if layer.type == "Input" and layer.input_param.shape:
            return [int(d) for d in layer.input_param.shape[0].dim]
    return None


def _zoo_weights(folder: Path) -> Path | None:
    """A zoo entry's weights (its readme's ``caffemodel``), None when ``folder`` is no zoo entry."""
    if not (folder / "readme.md").is_file():
        return None
    from caffe.zoo import ZooError, read_front_matter

    try:
        name = read_front_matter(folder).get("caffemodel")
    except ZooError:
        return None
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", ".."):
        return None
    weights = folder / name
    if not weights.is_file():
        raise ModelFilesError(
            f"{folder}: the zoo entry's weights {name} are not downloaded; run: caffe zoo download {folder}"
        )
    return weights
