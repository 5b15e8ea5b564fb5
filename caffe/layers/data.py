"""Prefetching data layers: Data (LMDB/LevelDB of Datums) and ImageData (a list of image files).

Both read ahead in background threads (``caffe.data.prefetch``) and apply Caffe's transformation
(``transform_param``: crop, mirror, mean, scale). Tops: the data (N, C, H, W) and, if asked for,
the labels (N,). The top shape comes from the first item, as in Caffe; with ``batch_size: 1`` the
size may change from batch to batch.

A database whose first Datum holds L > 1 labels (caffe_ocr's ``repeated int32 label``: a text line's
character classes) gives a label top of (N, L, 1, 1), as that fork's Data layer does; every record must
then hold L labels, and in a database of single labels none may hold several (a DataError naming the
record, never the last label silently).
"""

from __future__ import annotations

import logging
import math
import threading
import weakref
from collections import deque
from collections.abc import Iterator
from itertools import islice
from operator import attrgetter, methodcaller
from pathlib import Path

import numpy as np
import torch

from caffe import common
from caffe.blob import Shape
from caffe.data.datum import datum_labels, one_label_each, wire_labels
from caffe.data.prefetch import Decoded, DeviceCopies, Prefetcher, Record, Source
from caffe.data.shard import ALONE, Shard, shared_seed
from caffe.data.transform import CHW, HWC, DataTransformer
from caffe.errors import DataError
from caffe.layer import Layer, register
from caffe.limits import check_blob, read_text
from caffe.proto import caffe_pb2 as pb

log = logging.getLogger("caffe")


def _layer_seed() -> int:
    """A seed for a layer's data order and augmentation: follows ``caffe.set_random_seed``."""
    return int(torch.randint(0, 2**31 - 1, (1,)).item())


def _release(prefetcher: Prefetcher, source: Source) -> None:
    """A data layer's finalizer: stop the prefetching threads and, once they have ended, close the source.
    Collected on one of those threads (the collector runs wherever memory is allocated, maybe with one of
    their queue locks held), it hands the work to a thread of its own."""
    if prefetcher.runs_on_current_thread():
        threading.Thread(target=_release, args=(prefetcher, source), name="data-release", daemon=True).start()
        return
    prefetcher.stop(join=True)
    close = getattr(source, "close", None)
    if close is not None and not prefetcher.running:  # never under a thread still reading
        close()


class SharedSeed:
    """A data layer's seed (``_seed``: its order and augmentation), the same on every rank of a TRAIN net
    (:func:`caffe.data.shard.shared_seed`): each rank draws its own, then takes rank 0's once a group exists."""

    shard: Shard
    _seed: int
    _seed_pending: bool

    def draw_seed(self) -> None:
        """Draw the layer's seed (after ``self.shard`` is set), rank 0's when the group already exists."""
        seed = _layer_seed()
        shared = shared_seed(seed, self.shard)
        self._seed = seed if shared is None else shared
        self._seed_pending = shared is None

    def share_seed_late(self, batches_read: int) -> None:
        """Take rank 0's seed if the group was joined after set-up (pycaffe), restarting where the layer is."""
        if not self._seed_pending:
            return
        shared = shared_seed(self._seed, self.shard)
        if shared is None:
            return
        self._seed_pending = False
        if shared != self._seed:
            self._seed = shared
            self.fast_forward(batches_read)

    def fast_forward(self, batches: int) -> None:
        """Start again from ``self._seed`` as a layer that has read ``batches`` batches (each layer's own)."""
        raise NotImplementedError


class _PrefetchingDataLayer(SharedSeed, Layer):
    """Shared by the prefetching layers: transformer, source, prefetcher, shapes, forward."""

    exact_num_bottom = 0
    min_top, max_top = 1, 2
    traceable = False

    def make_source(self, rng: np.random.Generator) -> Source:
        raise NotImplementedError

    def batch_size(self) -> int:
        raise NotImplementedError

    def prefetch_depth(self) -> int:
        return 4

    def make_transformer(self, where: str) -> DataTransformer:
        """The layer's ``transform_param`` applier (set up before the source)."""
        return DataTransformer(self.layer_param.transform_param, self.phase, where, self.shard)

    def layer_setup(self, bottom: list[Shape]) -> None:
        where = f"layer '{self.name}' ({self.type})"
        self.shard = Shard.current(self.phase)  # this process's records (and draws) when several train together
        self.transformer = self.make_transformer(where)
        if self.batch_size() <= 0:
            raise self.error(f"batch_size must be positive, got {self.batch_size()}")
        self.draw_seed()
        self.source = self.make_source(np.random.default_rng(self._seed))
        first = self.source.decode(self.source.peek())
        a = first.array
        c, h, w = (a.shape[2], *a.shape[:2]) if first.layout == HWC else a.shape
        self.transformer.check_item(c, h, w, self.source.peek().name)
        self._data_shape = (self.batch_size(), *self.transformer.output_shape(c, h, w))
        log.info("output data size: %s", ",".join(map(str, self._data_shape)))
        check_blob(self._data_shape, 4, f"{where} top '{self.layer_param.top[0]}'")  # before prefetching allocates it
        self._start_prefetching(0)

    def _start_prefetching(self, skip_batches: int) -> None:
        where = f"layer '{self.name}' ({self.type})"
        self._skipped = skip_batches
        self.prefetcher = Prefetcher(
            self.source,
            self.transformer,
            self.batch_size(),
            depth=self.prefetch_depth(),
            seed=self._seed + 1,
            name=where,
            skip_batches=skip_batches,
            pin_memory=common.device().type == "cuda",
        )
        self._copies = DeviceCopies()  # a replaced prefetcher's batches in flight go back to its own pool
        old = getattr(self, "_finalizer", None)
        if old is not None:  # fast_forward stopped and closed what it held
            old.detach()
        # When the layer goes: its threads stopped and waited for, then its database closed (LevelDB admits one
        # opener: a net deleted leaves the database free for the next, in this process or another).
        self._finalizer = weakref.finalize(self, _release, self.prefetcher, self.source)

    def fast_forward(self, batches: int) -> None:
        """Continue as a run that has already read ``batches`` batches: same records, same random draws
        (the solver calls it when it restores a snapshot, so a resumed training reads what an uninterrupted
        one would have read next). Nothing skipped is read: the sources and the draws jump ahead."""
        self.prefetcher.stop(join=True)
        close = getattr(self.source, "close", None)
        if close is not None:
            close()
        self.source = self.make_source(np.random.default_rng(self._seed))  # the fresh start, then skipped
        if batches:
            log.info("layer '%s': fast-forwarding the data by %d batches", self.name, batches)
        self._start_prefetching(int(batches))

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        return [self._data_shape, (self._data_shape[0],)][: len(self.tops)]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        self.share_seed_late(self._skipped + self.prefetcher.batches)
        data, labels = self.prefetcher.next()
        self._data_shape = tuple(data.shape)
        device, dtype = self.tops[0].device, self.tops[0].dtype
        if device.type != "cpu" or dtype != torch.float32:
            data, labels = self._copies.copy([data, labels], device, dtype)
        return [data, labels][: len(self.tops)]


# ---------------------------------------------------------------------------- Data (databases)
class DatumSource:
    """Datums read in key order from an LMDB or LevelDB, wrapping around at the end; with a ``shard`` of
    several ranks, only this rank's records (every ``shard.size``-th from ``shard.rank``, counted globally,
    after the ``rand_skip`` every rank draws alike from the shared seed)."""

    def __init__(
        self,
        path: str,
        backend: str,
        transformer: DataTransformer,
        rand_skip: int,
        rng: np.random.Generator,
        shard: Shard = ALONE,
    ):
        from caffe.data.db import open_db

        self.path, self.backend, self.transformer = path, backend, transformer
        self._open = lambda: open_db(path, backend, "read")
        with self._open() as db, db.cursor() as cursor:  # (no len(db): a LevelDB counts its keys for it)
            if not cursor.valid:
                raise DataError(f"{path}: the {backend} database is empty")
            first_key, first_value = cursor.key, cursor.value
        self._first = Record(first_value, self._describe(first_key))
        try:  # the labels per record (caffe_ocr's multi-label Datums: more than 1), from the first record
            self.label_count = len(datum_labels(first_value, self._first.name))
        except DataError:  # a corrupt first record: decoding it names what is wrong
            self.label_count = 1
        skip = int(rng.integers(rand_skip)) if rand_skip else 0
        if skip:
            log.info("Skipping first %d data points.", skip)
        self._step = shard.size
        # global records passed since the first one, in all passes (rand_skip and the rank's offset included)
        self._position = skip + shard.rank
        self._iter: Iterator[Record] | None = None

    @property
    def label_shape(self) -> tuple[int, ...]:
        """One item's label shape: () for a label per record, (L, 1, 1) for L > 1 (caffe_ocr's)."""
        return (self.label_count, 1, 1) if self.label_count > 1 else ()

    def _describe(self, key: bytes) -> str:
        return f"{self.path} record {key.decode('utf-8', 'replace')!r}"

    def peek(self) -> Record:
        return self._first

    def _records(self, position: int) -> Iterator[Record]:
        """Records from ``position`` (modulo the number of records) on, round and round (feeder thread:
        the database is opened there)."""
        with self._open() as db, db.cursor() as cursor:  # the cursor closes first (LevelDB needs it)
            cursor.seek_index(position)  # keys only, at most one pass
            if not cursor.valid:
                raise DataError(f"{self.path}: the {self.backend} database is empty")
            while True:
                for key, value in cursor:
                    yield Record(value, self._describe(key))
                log.info("Restarting data prefetching from start.")
                cursor.seek_to_first()

    def next_records(self, n: int) -> list[Record]:
        if self._iter is None:
            self._iter = self._records(self._position)
        it = self._iter
        if self._step == 1:
            out = [next(it) for _ in range(n)]
        else:  # this rank's record, then past the other ranks' ones
            out = []
            for _ in range(n):
                out.append(next(it))
                deque(islice(it, self._step - 1), maxlen=0)
        self._position += n * self._step
        return out

    def skip(self, n: int) -> None:
        """Move on ``n`` of this rank's records without reading them."""
        self.close()
        self._position += int(n) * self._step

    def close(self) -> None:
        """Close the database if records were read (reading again reopens it where it was)."""
        if self._iter is not None:
            self._iter.close()
            self._iter = None

    def decode_batch(self, records: list[Record]) -> tuple[np.ndarray, np.ndarray] | None:
        """Raw Datums of bytes, all of one shape, as one (N, C, H, W) uint8 array and their float32 labels (one
        copy for the batch); None for anything else (encoded or float Datums, mixed shapes, a corrupt record,
        label counts other than the first record's), which :meth:`decode` then decodes one by one, naming what
        is wrong."""
        try:
            first = pb.Datum.FromString(records[0].payload)
            if first.encoded or not first.data:  # an encoded database: one record parsed, not the batch
                return None
            datums = [first] + [pb.Datum.FromString(r.payload) for r in records[1:]]
        except Exception:
            return None
        shape = (first.channels, first.height, first.width)
        if min(shape) <= 0 or set(map(_raw_shape, datums)) != {(*shape, False)}:
            return None
        data = [d.data for d in datums]
        size = math.prod(shape)
        if set(map(len, data)) != {size}:
            return None
        deque(map(_clear_data, datums), 0)  # the bytes are held: checking the labels re-serializes the rest only
        array = np.frombuffer(b"".join(data), dtype=np.uint8).reshape(len(datums), *shape)
        if one_label_each([r.payload for r in records], datums, size):
            if self.label_count > 1:  # records of one label in a multi-label database: decode names them
                return None
            return array, np.fromiter(map(_label, datums), dtype=np.float32, count=len(datums))
        try:  # several labels, or a rarer encoding of one
            found = [wire_labels(r.payload, d, size, r.name) for r, d in zip(records, datums)]
        except DataError:
            return None
        if self.label_count <= 1 or any(f is None or len(f) != self.label_count for f in found):
            return None
        return array, np.array(found, dtype=np.float32).reshape(len(datums), *self.label_shape)

    def decode(self, record: Record) -> Decoded:
        try:
            datum = pb.Datum.FromString(record.payload)
        except Exception:
            raise DataError(f"{record.name}: not a valid Datum (corrupt record)") from None
        item = self.decode_datum(datum, record.name)
        size = None
        if item.layout == CHW and item.array.dtype == np.uint8:  # raw bytes, now held by the item
            datum.ClearField("data")
            size = item.array.size
        labels = wire_labels(record.payload, datum, size, record.name)
        if labels is not None or self.label_count > 1:
            item.label = self.item_label(datum, labels, record.name)
        return item

    def item_label(self, datum: pb.Datum, labels: list[int] | None, name: str) -> float | np.ndarray:
        """A record's label as the label top holds it: a float, or (L, 1, 1) float32 when the first record holds
        L > 1 labels. ``labels``: :func:`~caffe.data.datum.wire_labels`' answer (None: at most ``datum.label``).
        A record holding another number of labels than the first record is a DataError naming it."""
        count = (1 if datum.HasField("label") else 0) if labels is None else len(labels)
        if self.label_count <= 1 and count <= 1:
            return float(labels[0] if labels else datum.label)
        if count == self.label_count:
            return np.array(labels, dtype=np.float32).reshape(self.label_shape)
        kind = "a multi-label Datum, as caffe_ocr writes" if count > 1 else "a single-label Datum"
        raise DataError(
            f"{name}: the Datum holds {count} label{'s' * (count != 1)} ({kind}) but the database's first record "
            f"holds {self.label_count} ({self._first.name}); every record must hold as many labels as the first"
        )

    def decode_datum(self, datum: pb.Datum, name: str) -> Decoded:
        """A parsed Datum's image (encoded: HWC as the transformer's force_color/force_gray decode it; raw: CHW
        bytes or floats) and label; DataError naming ``name`` (its record) when it is inconsistent."""
        from caffe.data.datum import datum_image_hwc

        t = self.transformer
        if datum.encoded:
            image = datum_image_hwc(datum, t.force_color, t.force_gray, name=name)
            return Decoded(image, HWC, float(datum.label))
        shape = (datum.channels, datum.height, datum.width)
        if min(shape) < 0:
            raise DataError(f"{name}: Datum has a negative dimension ({'x'.join(map(str, shape))})")
        count = math.prod(shape)
        data = datum.data  # (each read of the field is a copy of its bytes)
        if data:
            if len(data) != count:
                raise DataError(f"{name}: Datum holds {len(data)} bytes but is {'x'.join(map(str, shape))}")
            array = np.frombuffer(data, dtype=np.uint8).reshape(shape)
        else:
            if len(datum.float_data) != count:
                raise DataError(
                    f"{name}: Datum holds {len(datum.float_data)} floats but is {'x'.join(map(str, shape))}"
                )
            array = np.array(datum.float_data, dtype=np.float32).reshape(shape)
        if count == 0:
            raise DataError(f"{name}: empty Datum (0 channels, height or width)")
        return Decoded(array, CHW, float(datum.label))


_raw_shape = attrgetter("channels", "height", "width", "encoded")
_label = attrgetter("label")
_clear_data = methodcaller("ClearField", "data")


def _backend_name(value: int) -> str:
    return "lmdb" if value == pb.DataParameter.LMDB else "leveldb"


@register("Data")
class DataLayer(_PrefetchingDataLayer):
    """Datums from an LMDB or LevelDB (``data_param``: source, backend, batch_size, rand_skip, prefetch)."""

    source_class: type[DatumSource] = DatumSource  # what reads the records (a subclass may read other messages)

    def batch_size(self) -> int:
        return int(self.layer_param.data_param.batch_size)

    def layer_setup(self, bottom: list[Shape]) -> None:
        super().layer_setup(bottom)
        assert isinstance(self.source, DatumSource)
        self.transformer.label_shape = self.source.label_shape  # (L, 1, 1) per item for caffe_ocr's Datums

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        return [self._data_shape, (self._data_shape[0], *self.transformer.label_shape)][: len(self.tops)]

    def prefetch_depth(self) -> int:
        return max(1, int(self.layer_param.data_param.prefetch))

    def make_source(self, rng: np.random.Generator) -> Source:
        from caffe.data.db import detect_backend

        p = self.layer_param.data_param
        if not p.source:
            raise self.error("data_param.source is not set")
        if not Path(p.source).exists():
            raise DataError(f"layer '{self.name}' ({self.type}): database {p.source} does not exist")
        backend = _backend_name(p.backend)
        found = detect_backend(p.source)
        if found != backend:
            if p.HasField("backend"):
                raise DataError(
                    f"layer '{self.name}' ({self.type}): {p.source} is a {found} database but data_param.backend is "
                    f"{backend.upper()}; set backend: {found.upper()}"
                )
            backend = found  # Caffe's default (LEVELDB) was not chosen by the user: read what is there
        return self.source_class(p.source, backend, self.transformer, int(p.rand_skip), rng, self.shard)


# ---------------------------------------------------------------------------- ImageData (list of files)
class ImageListSource:
    """``path label`` lines (split at the last space), optionally shuffled every epoch; with a ``shard`` of
    several ranks, only this rank's items (every ``shard.size``-th from ``shard.rank``, counted globally, in
    the order and after the ``rand_skip`` every rank draws alike from the shared seed)."""

    param_field = "image_data_param"  # the layer's parameter message (source, root_folder, shuffle...)

    def __init__(
        self, layer: Layer, rng: np.random.Generator, records: list[Record] | None = None, shard: Shard = ALONE
    ) -> None:
        """``records``: the list already read (a restart), else it is read from ``image_data_param.source``."""
        p = getattr(layer.layer_param, self.param_field)
        field = self.param_field
        self.root = p.root_folder
        self.height, self.width, self.is_color = int(p.new_height), int(p.new_width), bool(p.is_color)
        self.shuffle, self.rng = bool(p.shuffle), rng
        if (self.height == 0) != (self.width == 0):
            raise layer.error(f"{field}: new_height and new_width must be set together")
        if not p.source:
            raise layer.error(f"{field}.source is not set")
        self.records = self.read_list(p.source) if records is None else records  # never reordered
        if not self.records:
            raise DataError(f"{p.source}: the image list is empty")
        # The epoch's order, shuffled in place as the list itself would be (same permutation, same draws).
        self.order = np.arange(len(self.records))
        if self.shuffle:
            log.info("Shuffling data")
            self.rng.shuffle(self.order)
        log.info("A total of %d images.", len(self.records))
        self._pos = int(rng.integers(p.rand_skip)) % len(self.records) if p.rand_skip else 0
        if self._pos:
            log.info("Skipping first %d data points.", self._pos)
        self._step = shard.size
        self._move(shard.rank)

    def peek(self) -> Record:
        return self.records[self.order[self._pos]]

    def next_records(self, n: int) -> list[Record]:
        out = []
        for _ in range(n):
            out.append(self.records[self.order[self._pos]])
            self._pos += self._step
            if self._pos >= len(self.records):
                log.info("Restarting data prefetching from start.")
                epochs, self._pos = divmod(self._pos, len(self.records))
                self._reshuffle(epochs)
        return out

    def skip(self, n: int) -> None:
        """Move on ``n`` of this rank's records without reading them: only the epochs' shuffles are replayed."""
        self._move(int(n) * self._step)

    def _move(self, n: int) -> None:
        """Move on ``n`` global records (all ranks' ones)."""
        epochs, self._pos = divmod(self._pos + n, len(self.records))
        self._reshuffle(epochs)

    def _reshuffle(self, epochs: int) -> None:
        """The shuffles that starting ``epochs`` new epochs makes (none without ``shuffle``)."""
        if self.shuffle:
            for _ in range(epochs):
                self.rng.shuffle(self.order)

    @staticmethod
    def read_list(path: str) -> list[Record]:
        return read_image_list(path)

    def decode(self, record: Record) -> Decoded:
        from caffe.data.datum import read_image

        image = read_image(self.root + record.payload, self.height, self.width, self.is_color)
        if image.ndim == 2:
            image = image[:, :, None]
        return Decoded(image, HWC, record.label)


def read_image_list(path: str) -> list[Record]:
    """Caffe's list file: ``relative/path.jpg label`` per line (the label after the last space)."""
    lines = read_text(path, "image list").splitlines()
    records = []
    for n, line in enumerate(lines, start=1):
        line = line.strip()
        if not line:
            continue
        name, _, label = line.rpartition(" ")
        try:
            value = int(label)
        except ValueError:
            raise DataError(f"{path}:{n}: expected 'path label', got {line!r}") from None
        if not name:
            raise DataError(f"{path}:{n}: expected 'path label', got {line!r}")
        records.append(Record(name, name, float(value)))
    return records


@register("ImageData")
class ImageDataLayer(_PrefetchingDataLayer):
    """Images listed in a text file (``image_data_param``: source, root_folder, batch_size, shuffle,
    new_height/new_width, is_color, rand_skip)."""

    def batch_size(self) -> int:
        return int(self.layer_param.image_data_param.batch_size)

    def make_source(self, rng: np.random.Generator) -> Source:
        previous = getattr(self, "source", None)  # a fast-forward's restart: the list is not read again
        return ImageListSource(self, rng, previous.records if previous is not None else None, self.shard)
