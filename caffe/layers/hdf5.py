"""HDF5 layers: HDF5Data (batches from the datasets of a list of .h5 files) and HDF5Output (writes
its two bottoms to an .h5 file).

HDF5Data
    ``hdf5_data_param.source`` is a text file naming one .h5 file per line. Each top is the dataset
    of the same name, of any number of axes (N x ...), floating point or integer (converted to the
    net's dtype). As in Caffe, one file is held in memory at a time; batches run through the files
    in order and wrap around, and a batch may span two files. ``shuffle`` shuffles the file order
    every epoch and the rows of each file every time it is (re)loaded, never mixing files. There is
    no transformation (Caffe refuses ``transform_param``). Relative paths in the list are opened as
    written (relative to the current directory, as Caffe does); one not found there is looked for
    beside the list file, and the log says so.

    Reading is synchronous, on the net's thread: once a file is loaded a batch is one gather from
    memory (about 3 ms for a 12 MB batch), so a background thread would hide little; only loading
    the next file stalls (about 0.1 s per 100 MB). HDF5 itself is not thread-safe in default builds
    (h5py serialises every call under one lock), so keeping its reads here also keeps them out of
    the way of any other h5py use in the process.

HDF5Output
    ``hdf5_output_param.file_name`` receives datasets ``data`` and ``label`` (Caffe's names), each
    with Caffe's legacy 4-axis shape (N x C x H x W; missing axes are 1), in the net's float type.
    Caffe creates (truncates) the file at set-up and writes the first batch; its second forward
    fails because the datasets already exist (BVLC/caffe#1726). Here every forward *appends* its
    batch (the file after one forward is exactly Caffe's) and the file is replaced atomically
    (written to a temporary file beside it, then renamed), so it is complete after every forward.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from caffe.blob import Shape
from caffe.data.shard import Shard
from caffe.errors import DataError
from caffe.layer import Layer, register
from caffe.layers.data import SharedSeed
from caffe.limits import check_blob, check_regular_file, hdf5_errors, read_text

log = logging.getLogger("caffe")


def _h5py():
    try:
        import h5py
    except ImportError as e:  # pragma: no cover - h5py is a dependency
        raise DataError("the HDF5 layers need the h5py package (pip install h5py)") from e
    return h5py


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) if shape else "scalar"


def read_hdf5_list(source: str, where: str) -> list[str]:
    """The .h5 paths named by ``source`` (one per line), resolved: as written, else beside the list."""
    try:
        lines = read_text(source, "HDF5 file list").splitlines()
    except DataError as e:
        raise DataError(f"{where}: cannot read the HDF5 file list ({e})") from None
    here = Path(source).parent
    paths = []
    for n, line in enumerate(lines, start=1):
        name = line.strip()
        if not name:
            continue
        path = Path(name)
        if not path.is_file() and not path.is_absolute() and (here / path).is_file():
            log.info(
                "%s: %s:%d: %s is not in the current directory (%s); using %s, beside the list file",
                where,
                source,
                n,
                name,
                os.getcwd(),
                here / path,
            )
            path = here / path
        elif not path.is_file():
            looked = "" if path.is_absolute() else f" (looked in the current directory {os.getcwd()} and in {here})"
            raise DataError(f"{where}: {source}:{n}: HDF5 file {name} not found{looked}")
        paths.append(str(path))
    if not paths:
        raise DataError(f"{where}: {source} lists no HDF5 files (one path per line expected)")
    return paths


@register("HDF5Data")
class HDF5DataLayer(SharedSeed, Layer):
    """Rows of the datasets named like the tops, from the .h5 files listed in ``hdf5_data_param.source``."""

    exact_num_bottom = 0
    min_top = 1
    traceable = False

    def layer_setup(self, bottom: list[Shape]) -> None:
        p = self.layer_param.hdf5_data_param
        if self.layer_param.HasField("transform_param"):
            raise self.error("HDF5Data does not transform data: remove transform_param")
        if not p.source:
            raise self.error("hdf5_data_param.source is not set")
        self.batch = int(p.batch_size)
        if self.batch <= 0:
            raise self.error(f"hdf5_data_param.batch_size must be positive, got {self.batch}")
        self.where = f"layer '{self.name}' (HDF5Data)"
        self.names = list(self.layer_param.top)
        log.info("Loading list of HDF5 filenames from: %s", p.source)
        self.files = read_hdf5_list(p.source, self.where)
        log.info("Number of HDF5 files: %d", len(self.files))
        self.shuffle = bool(p.shuffle)
        # with several ranks, this one reads every shard.size-th row from shard.rank (counted over all files),
        # the files and rows shuffled alike on every rank (the seed they share)
        self.shard = Shard.current(self.phase)
        self.draw_seed()
        self.rng = np.random.default_rng(self._seed)
        self.order = np.arange(len(self.files))
        if self.shuffle:
            self.rng.shuffle(self.order)
        self.position = 0  # index into self.order of the loaded file
        self.item_shapes: list[tuple[int, ...]] | None = None
        self._load()
        self.row = self.shard.rank
        self._batches = 0  # batches read (or skipped) so far
        assert self.item_shapes is not None
        self._top_shapes_fixed = [(self.batch, *s) for s in self.item_shapes]

    def fast_forward(self, batches: int) -> None:
        """Continue as a run that has already read ``batches`` batches (all ranks' rows counted): the
        solver calls it when it restores a snapshot. Only the file read next is loaded; the files passed
        are opened for their row counts alone, and the shuffles they made are drawn again."""
        self.rng = np.random.default_rng(self._seed)  # the fresh start, then skipped
        self._batches = int(batches)
        self.order = np.arange(len(self.files))
        if self.shuffle:
            self.rng.shuffle(self.order)
        row = self.shard.rank + int(batches) * self.batch * self.shard.size
        if batches:
            log.info("layer '%s': fast-forwarding the data by %d batches", self.name, batches)
        if len(self.files) == 1:  # the file stays; each pass over it reshuffles its rows
            self.position = 0
            self._load()
            passes, self.row = divmod(row, self.rows)
            if self.shuffle:
                for _ in range(passes):
                    self.rng.shuffle(self.perm)
            return
        counts: dict[int, int] = {}
        if not self.shuffle:  # whole epochs are arithmetic
            row %= sum(counts.setdefault(i, self._rows_in(i)) for i in range(len(self.files)))
        position = 0
        while row >= (rows := counts.setdefault(int(self.order[position]), self._rows_in(int(self.order[position])))):
            if self.shuffle:
                self.rng.shuffle(np.arange(rows))  # the row shuffle that loading this file made
            row -= rows
            position += 1
            if position == len(self.files):
                position = 0
                if self.shuffle:
                    self.rng.shuffle(self.order)
        self.position = position
        self._load()
        self.row = row

    def _rows_in(self, index: int) -> int:
        """The number of rows of file ``index`` of the list (its first top's dataset; no data is read)."""
        path = self.files[index]
        h5py = _h5py()
        check_regular_file(path, f"HDF5 data file of {self.where}")
        with hdf5_errors(path, f"HDF5 data file of {self.where}"), h5py.File(path, "r") as f:
            node = f.get(self.names[0])
            if not isinstance(node, h5py.Dataset) or node.ndim < 1:
                raise DataError(f"{self.where}: HDF5 file {path} has no dataset '{self.names[0]}' of rows")
            if node.shape[0] == 0:
                raise DataError(f"{self.where}: HDF5 file {path}: the datasets have no rows")
            return int(node.shape[0])

    # ------------------------------------------------------------------ file loading
    def _load(self) -> None:
        """Read every top's dataset of the current file into memory (replacing the previous file's)."""
        path = self.files[int(self.order[self.position])]
        self.arrays: list[np.ndarray] = []  # release the previous file before reading the next
        h5py = _h5py()
        check_regular_file(path, f"HDF5 data file of {self.where}")
        with hdf5_errors(path, f"HDF5 data file of {self.where}"):
            arrays = self._read_datasets(h5py, path)
        self._accept(path, arrays)

    def _read_datasets(self, h5py: ModuleType, path: str) -> list[np.ndarray]:
        """Every top's dataset of ``path``, each checked (numeric, rows, size within the blob budget) before reading."""
        try:
            f = h5py.File(path, "r")
        except OSError as e:
            raise DataError(f"{self.where}: cannot open HDF5 file {path}: {e}") from None
        arrays = []
        with f:
            for name in self.names:
                node = f.get(name)
                if node is None:
                    have = ", ".join(sorted(k for k in list(f) if isinstance(f.get(k), h5py.Dataset))) or "none"
                    raise DataError(
                        f"{self.where}: HDF5 file {path} has no dataset '{name}' (for top '{name}'; datasets: {have})"
                    )
                if not isinstance(node, h5py.Dataset):
                    raise DataError(f"{self.where}: HDF5 file {path}: '{name}' is a group, not a dataset")
                if node.dtype.kind not in "fiu":
                    raise DataError(
                        f"{self.where}: HDF5 file {path}: dataset '{name}' has type {node.dtype}; "
                        "only floating point and integer datasets can be read"
                    )
                if node.ndim < 1:
                    raise DataError(f"{self.where}: HDF5 file {path}: dataset '{name}' is a scalar; need N x ... rows")
                check_blob(node.shape, node.dtype.itemsize, f"{self.where}: HDF5 file {path}: dataset '{name}'")
                try:
                    arrays.append(node[()])
                except OSError as e:
                    raise DataError(f"{self.where}: cannot read dataset '{name}' of HDF5 file {path}: {e}") from None
        return arrays

    def _accept(self, path: str, arrays: list[np.ndarray]) -> None:
        """Make ``arrays`` (one per top, from ``path``) the current file's rows after checking they agree."""
        rows = {a.shape[0] for a in arrays}
        if len(rows) != 1:
            listed = ", ".join(f"'{n}' {_dims(a.shape)}" for n, a in zip(self.names, arrays, strict=True))
            raise DataError(
                f"{self.where}: HDF5 file {path}: the datasets must have the same number of rows "
                f"(first dimension): {listed}"
            )
        if arrays[0].shape[0] == 0:
            raise DataError(f"{self.where}: HDF5 file {path}: the datasets have no rows")
        shapes = [a.shape[1:] for a in arrays]
        if self.item_shapes is None:
            self.item_shapes = shapes
        else:
            for name, want, got in zip(self.names, self.item_shapes, shapes, strict=True):
                if want != got:
                    raise DataError(
                        f"{self.where}: HDF5 file {path}: dataset '{name}' has rows of shape {_dims(got)}, "
                        f"but the earlier files' rows are {_dims(want)}"
                    )
        self.arrays = arrays
        self.rows = int(arrays[0].shape[0])
        self.perm = np.arange(self.rows)
        if self.shuffle:
            self.rng.shuffle(self.perm)
        self.row = 0
        log.debug("Successfully loaded %d rows from %s%s", self.rows, path, " (shuffled)" if self.shuffle else "")

    def _advance(self) -> None:
        """Move to the next file (the same one reshuffled if there is one file); new epoch at the end."""
        if len(self.files) == 1:
            self.row = 0
            if self.shuffle:
                self.rng.shuffle(self.perm)
            return
        self.position += 1
        if self.position == len(self.files):
            self.position = 0
            if self.shuffle:
                self.rng.shuffle(self.order)
            log.debug("Looping around to first file.")
        self._load()

    # ------------------------------------------------------------------ shapes and forward
    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        return list(self._top_shapes_fixed)

    def next_batch(self) -> list[np.ndarray]:
        """The next ``batch_size`` rows of every dataset (this rank's), in the files' native dtypes."""
        parts: list[list[np.ndarray]] = [[] for _ in self.names]
        need, step = self.batch, self.shard.size
        while need:
            if self.row >= self.rows:  # past this file: the rows beyond it are counted in the next ones
                beyond = self.row - self.rows
                self._advance()
                self.row = beyond
                continue
            k = min(need, (self.rows - self.row + step - 1) // step)
            index = self.perm[self.row : self.row + (k - 1) * step + 1 : step]
            for part, array in zip(parts, self.arrays, strict=True):
                part.append(array[index])  # fancy indexing: a copy, never a view of the file's data
            self.row += k * step
            need -= k
        return [p[0] if len(p) == 1 else np.concatenate(p) for p in parts]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        self.share_seed_late(self._batches)
        self._batches += 1
        out = []
        for array, top in zip(self.next_batch(), self.tops, strict=True):
            # integers, other widths and big-endian data become native float on the NumPy side
            array = np.asarray(array, dtype=np.float64 if top.dtype == torch.float64 else np.float32)
            out.append(torch.from_numpy(array).to(device=top.device, dtype=top.dtype))
        return out


# ---------------------------------------------------------------------------- HDF5Output
DATA_NAME, LABEL_NAME = "data", "label"  # Caffe's HDF5_DATA_DATASET_NAME / HDF5_DATA_LABEL_NAME


def _legacy_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Caffe writes num x channels x height x width (missing axes are 1; more than 4 are kept here)."""
    return tuple(shape) + (1,) * (4 - len(shape)) if len(shape) <= 4 else tuple(shape)


@register("HDF5Output")
class HDF5OutputLayer(Layer):
    """Appends bottom 0 to dataset ``data`` and bottom 1 to ``label`` of ``hdf5_output_param.file_name``."""

    exact_num_bottom = 2
    exact_num_top = 0
    traceable = False

    def allow_force_backward(self, bottom_index: int) -> bool:
        return False

    def layer_setup(self, bottom: list[Shape]) -> None:
        self.file_name = self.layer_param.hdf5_output_param.file_name
        if not self.file_name:
            raise self.error("hdf5_output_param.file_name is not set")
        self.where = f"layer '{self.name}' (HDF5Output)"
        self.rows_written = 0
        self._publish(None, None)  # Caffe creates (truncates) the file at set-up

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        if not bottom[0] or not bottom[1]:
            raise self.shape_error(f"bottoms need a batch axis, got {_dims(bottom[0])} and {_dims(bottom[1])}")
        if bottom[0][0] != bottom[1][0]:
            raise self.shape_error(
                f"data and label must have the same batch size, got {_dims(bottom[0])} and {_dims(bottom[1])}"
            )
        return []

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        arrays = []
        for t in bottom:
            t = t.detach()
            if t.dtype not in (torch.float32, torch.float64):
                t = t.float()
            a = t.cpu().numpy()
            arrays.append(a.reshape(_legacy_shape(a.shape)))
        self._publish(arrays[0], arrays[1])
        log.info("Successfully saved %d rows to %s", arrays[0].shape[0], self.file_name)
        return []

    def _publish(self, data: np.ndarray | None, label: np.ndarray | None) -> None:
        """Write the file anew beside the target (the previous rows, then this batch) and rename it over it."""
        h5py = _h5py()
        target = Path(self.file_name)
        # created by h5py / copyfile (not mkstemp), so the file gets the usual umask-based permissions
        tmp = target.parent / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            if data is not None and self.rows_written:
                shutil.copyfile(target, tmp)  # the rows so far; this batch is appended below
            with h5py.File(tmp, "a" if data is not None and self.rows_written else "w") as f:
                if data is not None and label is not None:
                    for name, array in ((DATA_NAME, data), (LABEL_NAME, label)):
                        self._append(f, name, array)
            os.replace(tmp, target)
        except OSError as e:
            Path(tmp).unlink(missing_ok=True)
            raise DataError(f"{self.where}: cannot write HDF5 file {self.file_name}: {e}") from None
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        if data is not None:
            self.rows_written += data.shape[0]

    def _append(self, f, name: str, array: np.ndarray) -> None:
        if name not in f:
            f.create_dataset(name, data=array, maxshape=(None, *array.shape[1:]), chunks=True)
            return
        ds = f[name]
        if ds.shape[1:] != array.shape[1:] or ds.dtype != array.dtype:
            raise DataError(
                f"{self.where}: cannot append a {_dims(array.shape)} {array.dtype} batch to dataset '{name}' of "
                f"{self.file_name}, whose rows are {_dims(ds.shape[1:])} {ds.dtype}"
            )
        n = ds.shape[0]
        ds.resize(n + array.shape[0], axis=0)
        ds[n:] = array
