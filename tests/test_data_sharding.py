"""Data sharding across ranks (issue 13): the record at global offset k goes to rank k mod N.

No process group: ``caffe.parallel.world`` is patched to each ``(rank, N)`` in turn while that rank's
layer is set up (the layer reads its shard there). In every iteration the ranks' batches of B, interleaved
(rank r's j-th item is item j·N + r), are exactly the batch of N·B that one process reads, random crops,
mirrors, shuffles, ``rand_skip`` and WindowData's windows included (the ranks share the layer's seed: seeded
alike, or rank 0's through a pretend group when seeded apart). TRAIN nets only: rank 0 alone tests, on every
record.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from conftest import ASSETS
from google.protobuf import text_format

import caffe
import caffe.layers.hdf5  # registers HDF5Data
import caffe.layers.window_data  # registers WindowData
import caffe.parallel
from caffe.data.datum import array_to_datum
from caffe.data.db import item_key, open_db
from caffe.data.shard import Shard
from caffe.proto import caffe_pb2 as pb

DOLPHINS = sorted((ASSETS / "dolphins-and-seahorses" / "dolphin").glob("*.jpg"))[:5]
N, B, ITERS = 3, 2, 5  # 30 items per rank set: several passes over the 7 (Data), 11 (HDF5) or 5 (ImageData)


def items(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (3, 6, 6), dtype=np.uint8) for _ in range(n)]


def write_db(path: Path, backend: str, n: int = 7) -> Path:
    with open_db(path, backend, "new") as db:
        txn = db.transaction()
        for i, a in enumerate(items(n)):
            txn.put(item_key(i, f"item{i}"), array_to_datum(a, label=i).SerializeToString())
        txn.commit()
    return path


def data_param(source: Path, backend: str, batch: int, transform: str = "") -> pb.NetParameter:
    text = f"""layer {{ name: "data" type: "Data" top: "data" top: "label" {transform}
        data_param {{ source: "{source}" backend: {backend.upper()} batch_size: {batch} }} }}"""
    return text_format.Parse(text, pb.NetParameter())


def image_param(tmp_path: Path, batch: int, transform: str = "", extra: str = "") -> pb.NetParameter:
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{p.name} {i}\n" for i, p in enumerate(DOLPHINS)))
    text = f"""layer {{ name: "data" type: "ImageData" top: "data" top: "label" {transform}
        image_data_param {{ source: "{listing}" root_folder: "{DOLPHINS[0].parent}/" batch_size: {batch}
                            new_height: 6 new_width: 6 {extra} }} }}"""
    return text_format.Parse(text, pb.NetParameter())


def hdf5_param(
    tmp_path: Path, batch: int, files: tuple[int, ...] = (5, 2, 4), shuffle: bool = False
) -> pb.NetParameter:
    """Files of so many rows (by default 5, 2 and 4: the middle one shorter than N): label = row number."""
    start, names = 0, []
    for rows in files:
        path = tmp_path / f"part{start}.h5"
        ids = np.arange(start, start + rows)
        with h5py.File(path, "w") as f:
            f["data"] = (ids[:, None, None, None] * 10 + np.arange(4).reshape(1, 1, 2, 2)).astype(np.float32)
            f["label"] = ids.astype(np.float32)
        names.append(str(path))
        start += rows
    listing = tmp_path / "h5.txt"
    listing.write_text("\n".join(names) + "\n")
    text = f"""layer {{ name: "data" type: "HDF5Data" top: "data" top: "label"
        hdf5_data_param {{ source: "{listing}" batch_size: {batch} shuffle: {str(shuffle).lower()} }} }}"""
    return text_format.Parse(text, pb.NetParameter())


def window_param(tmp_path: Path, batch: int, transform: str = "crop_size: 8 mirror: true") -> pb.NetParameter:
    """Windows of two images: labels 1, 2 (foreground, overlap 0.9) and background ones (label 0); with
    fg_fraction 0.25, N·B = 6 holds one foreground window, at position 5 (rank 2's second)."""
    lines = []
    for i, path in enumerate(DOLPHINS[:2]):
        h, w = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE).shape
        boxes = [(i + 1, 0.9, 5, 5, w // 2, h // 2), (0, 0.1, w // 3, h // 3, w - 1, h - 1), (0, 0.2, 0, 0, 20, 30)]
        lines += [f"# {i}", path.name, "3", str(h), str(w), str(len(boxes))]
        lines += [" ".join(map(str, box)) for box in boxes]
    source = tmp_path / "windows.txt"
    source.write_text("\n".join(lines) + "\n")
    text = f"""layer {{ name: "data" type: "WindowData" top: "data" top: "label" transform_param {{ {transform} }}
        window_data_param {{ source: "{source}" root_folder: "{DOLPHINS[0].parent}/" batch_size: {batch}
                             fg_threshold: 0.5 bg_threshold: 0.3 fg_fraction: 0.25 context_pad: 1 }} }}"""
    return text_format.Parse(text, pb.NetParameter())


def release(net: caffe.Net) -> None:
    """Stop a prefetching layer and close its database (a LevelDB has one reader at a time)."""
    layer = net.layer_dict["data"]
    prefetcher = getattr(layer, "prefetcher", None)
    if prefetcher is not None:
        prefetcher.stop(join=True)
        getattr(layer.source, "close", lambda: None)()


def build(
    monkeypatch: pytest.MonkeyPatch, param: pb.NetParameter, rank: int, size: int, phase: int, seed: int | None = None
) -> caffe.Net:
    """The net as rank ``rank`` of ``size`` sets it up (after ``caffe.set_random_seed(seed)`` if given)."""
    if seed is not None:
        caffe.set_random_seed(seed)
    monkeypatch.setattr(caffe.parallel, "world", lambda: (rank, size))
    try:
        return caffe.Net(param, phase)
    finally:
        monkeypatch.undo()


@contextmanager
def pretend_group() -> Iterator[None]:
    """A process group as the data layers see it: ``root_value`` gives every rank the first value offered
    (rank 0's: it sets up, or reads, first)."""
    root: dict[str, int] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(caffe.parallel, "joined", lambda: True)
        mp.setattr(caffe.parallel, "root_value", lambda value: root.setdefault("value", value))
        yield


def read(net: caffe.Net, iterations: int) -> list[dict[str, np.ndarray]]:
    out = [{k: v.copy() for k, v in net.forward().items()} for _ in range(iterations)]
    release(net)
    return out


def interleave(per_rank: list[list[dict[str, np.ndarray]]], i: int, top: str) -> np.ndarray:
    """Iteration ``i`` of all ranks, rank r's j-th item at j·N + r."""
    stacked = np.stack([batches[i][top] for batches in per_rank], axis=1)  # (B, N, ...)
    return stacked.reshape(-1, *stacked.shape[2:])


def check_union(
    monkeypatch: pytest.MonkeyPatch,
    make: Callable[[int], pb.NetParameter],
    records: int | None,
    seed: int | None = None,
    rank_seeds: Callable[[int], int | None] = lambda rank: None,
) -> np.ndarray:
    """Every iteration's interleaved rank batches equal one process's batch of N·B (set up after
    ``set_random_seed(seed)``, rank r after ``set_random_seed(rank_seeds(r))``); ``records``: the
    sequential labels it reads across several epoch boundaries (None: a random order). Returns its labels."""
    whole = read(build(monkeypatch, make(N * B), 0, 1, caffe.TRAIN, seed), ITERS)
    per_rank = [read(build(monkeypatch, make(B), r, N, caffe.TRAIN, rank_seeds(r)), ITERS) for r in range(N)]
    for i in range(ITERS):
        for top in ("data", "label"):
            np.testing.assert_array_equal(interleave(per_rank, i, top), whole[i][top])
        assert all(len(batches[i]["label"]) == B for batches in per_rank)
    labels = np.concatenate([w["label"] for w in whole]).astype(int)
    if records is not None:
        assert labels.tolist() == [k % records for k in range(ITERS * N * B)]  # across several epoch boundaries
    return labels


@pytest.mark.parametrize("backend", ["lmdb", "leveldb"])
def test_data_ranks_together_read_the_single_process_batch(tmp_path: Path, monkeypatch, backend: str):
    source = write_db(tmp_path / backend, backend)
    check_union(monkeypatch, lambda batch: data_param(source, backend, batch), 7)


def test_hdf5_ranks_together_read_the_single_process_batch(tmp_path: Path, monkeypatch):
    check_union(monkeypatch, lambda batch: hdf5_param(tmp_path, batch), 11)


def test_imagedata_ranks_together_read_the_single_process_batch(tmp_path: Path, monkeypatch):
    check_union(monkeypatch, lambda batch: image_param(tmp_path, batch), len(DOLPHINS))


def test_world_size_one_reads_everything(tmp_path: Path, monkeypatch):
    """Alone, a layer's shard is every record (the default when no process group exists)."""
    net = caffe.Net(data_param(write_db(tmp_path / "db", "lmdb"), "lmdb", 4), caffe.TRAIN)
    assert net.layer_dict["data"].shard == Shard(0, 1)
    assert net.forward()["label"].astype(int).tolist() == [0, 1, 2, 3]
    release(net)


@pytest.mark.parametrize("kind", ["lmdb", "leveldb", "imagedata", "windowdata"])
def test_fast_forward_counts_global_records(tmp_path: Path, monkeypatch, kind: str):
    """A rank fast-forwarded by k batches (a resumed run) reads what it would have read after k batches,
    random crops, mirrors, ImageData's per-epoch shuffles and WindowData's windows included: its j-th item of
    batch i is item i·N·B + j·N + r of what one process with the shared seed reads, data and label."""
    transform = "transform_param { crop_size: 4 mirror: true }"
    records, skipped, rank, seed = (5, 4, 1, 7)
    if kind == "imagedata":
        param = image_param(tmp_path, B, transform, "shuffle: true")
        alone = image_param(tmp_path, N * B, transform, "shuffle: true")
    elif kind == "windowdata":
        param, alone = window_param(tmp_path, B), window_param(tmp_path, N * B)
    else:
        source = write_db(tmp_path / kind, kind, records)
        param, alone = data_param(source, kind, B, transform), data_param(source, kind, N * B, transform)
    whole = read(build(monkeypatch, alone, 0, 1, caffe.TRAIN, seed), skipped + 3)
    stream = {top: np.concatenate([b[top] for b in whole]) for top in ("data", "label")}
    expected = read(build(monkeypatch, param, rank, N, caffe.TRAIN, seed), skipped + 3)[skipped:]
    net = build(monkeypatch, param, rank, N, caffe.TRAIN, seed)
    net.forward()  # a restored solver's layer may have read already: it starts again, then skips
    net.layer_dict["data"].fast_forward(skipped)
    got = read(net, 3)
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        mine = [(skipped + i) * N * B + j * N + rank for j in range(B)]
        for top in ("data", "label"):
            np.testing.assert_array_equal(g[top], e[top])
            np.testing.assert_array_equal(g[top], stream[top][mine])


@pytest.mark.parametrize("kind", ["lmdb", "hdf5", "imagedata"])
def test_test_nets_are_not_sharded(tmp_path: Path, monkeypatch, kind: str):
    """Rank 0 alone tests, so a TEST net reads every record whatever the rank (Caffe keeps TEST records)."""
    if kind == "lmdb":
        param = data_param(write_db(tmp_path / "db", "lmdb"), "lmdb", 4)
    elif kind == "hdf5":
        param = hdf5_param(tmp_path, 4)
    else:
        param = image_param(tmp_path, 4)
    net = build(monkeypatch, param, 1, N, caffe.TEST)
    assert net.layer_dict["data"].shard == Shard(0, 1)
    assert read(net, 1)[0]["label"].astype(int).tolist() == [0, 1, 2, 3]


def test_hdf5_rank_offsets_span_files_shorter_than_the_world(tmp_path: Path, monkeypatch):
    """Rank 2 of 3 starts past the 2-row middle file when it reaches it: rows 2, 5, 8 (file 3), 0 (wrap)."""
    net = build(monkeypatch, hdf5_param(tmp_path, 4), 2, N, caffe.TRAIN)
    assert net.forward()["label"].astype(int).tolist() == [2, 5, 8, 0]


@pytest.mark.parametrize("files", [(5, 2, 4), (7,)])
@pytest.mark.parametrize("shuffle", [False, True])
def test_hdf5_fast_forward_counts_global_rows(tmp_path: Path, monkeypatch, files: tuple[int, ...], shuffle: bool):
    """HDF5Data resumes too: rank r fast-forwarded by k batches reads what it would have after k batches
    (the files' and rows' shuffles replayed), item i·N·B + j·N + r of the stream one process with its seed reads."""
    skipped, rank = 6, 1  # 36 global rows: three passes over the 11 (or five over the 7) and more
    param, alone = hdf5_param(tmp_path, B, files, shuffle), hdf5_param(tmp_path, N * B, files, shuffle)
    caffe.set_random_seed(5 + rank)
    stream = np.concatenate([b["label"] for b in read(build(monkeypatch, alone, 0, 1, caffe.TRAIN), skipped + 3)])
    caffe.set_random_seed(5 + rank)
    expected = read(build(monkeypatch, param, rank, N, caffe.TRAIN), skipped + 3)[skipped:]
    caffe.set_random_seed(5 + rank)
    net = build(monkeypatch, param, rank, N, caffe.TRAIN)
    net.forward()
    net.layer_dict["data"].fast_forward(skipped)
    for i, e in enumerate(expected):
        g = net.forward()
        np.testing.assert_array_equal(g["data"], e["data"])
        np.testing.assert_array_equal(g["label"], stream[[(skipped + i) * N * B + j * N + rank for j in range(B)]])
    if shuffle:  # the shuffles were in play
        assert stream[: sum(files)].tolist() != list(range(sum(files)))


SEED = 3  # (its rand_skip draws are not 0)
SHUFFLED = "shuffle: true rand_skip: 4"


def test_windowdata_ranks_together_draw_the_single_process_batch(tmp_path: Path, monkeypatch):
    """Seeded alike, the ranks draw one process's windows and mirror coins and keep their positions' ones:
    rank r's j-th window is window j·N + r of the batch of N·B (background first, then foreground)."""
    labels = check_union(monkeypatch, lambda batch: window_param(tmp_path, batch), None, SEED, lambda r: SEED)
    per_batch = labels.reshape(ITERS, N * B)
    assert (per_batch[:, :5] == 0).all() and (per_batch[:, 5] > 0).all()  # one foreground window, at the end


def test_imagedata_shuffle_and_rand_skip_ranks_together_read_the_single_process_batch(tmp_path: Path, monkeypatch):
    """``shuffle`` and ``rand_skip`` are drawn alike on every rank (the shared seed), random crops and mirrors
    per global item: across several epochs the ranks together read one process's shuffled batches."""
    make = lambda batch: image_param(tmp_path, batch, "transform_param { crop_size: 4 mirror: true }", SHUFFLED)  # noqa: E731
    labels = check_union(monkeypatch, make, None, SEED, lambda r: SEED)
    epochs = labels[: len(DOLPHINS) * 5].reshape(-1, len(DOLPHINS))
    assert labels[: len(DOLPHINS)].tolist() != list(range(len(DOLPHINS)))  # skipped and shuffled
    assert len({tuple(e) for e in epochs[1:]}) > 1  # the order changes from epoch to epoch


@pytest.mark.parametrize("backend", ["lmdb", "leveldb"])
def test_data_rand_skip_ranks_together_read_the_single_process_batch(tmp_path: Path, monkeypatch, backend: str):
    """Every rank skips the same random count (the shared seed), so the shards stay disjoint after it."""
    source = write_db(tmp_path / backend, backend)
    text = f"""layer {{ name: "data" type: "Data" top: "data" top: "label"
        transform_param {{ crop_size: 4 mirror: true }}
        data_param {{ source: "{source}" backend: {backend.upper()} batch_size: BATCH rand_skip: 5 }} }}"""
    make = lambda batch: text_format.Parse(text.replace("BATCH", str(batch)), pb.NetParameter())  # noqa: E731
    labels = check_union(monkeypatch, make, None, SEED, lambda r: SEED)
    skip = int(labels[0])
    assert skip > 0 and labels.tolist() == [(skip + k) % 7 for k in range(ITERS * N * B)]


def seeded_apart(tmp_path: Path, kind: str) -> Callable[[int], pb.NetParameter]:
    if kind == "imagedata":
        return lambda batch: image_param(tmp_path, batch, "transform_param { crop_size: 4 mirror: true }", SHUFFLED)
    if kind == "windowdata":
        return lambda batch: window_param(tmp_path, batch)
    return lambda batch: hdf5_param(tmp_path, batch, shuffle=True)


@pytest.mark.parametrize("kind", ["imagedata", "windowdata", "hdf5"])
def test_ranks_seeded_apart_take_rank_0s_seed_from_the_group(tmp_path: Path, monkeypatch, kind: str):
    """The solver seeds rank r with random_seed + r; in a process group every data layer takes rank 0's seed,
    so the ranks together read what one process with random_seed reads (and apart they would not)."""
    make = seeded_apart(tmp_path, kind)
    with pretend_group():
        check_union(monkeypatch, make, None, SEED, lambda r: SEED + r)
    with pytest.raises(AssertionError):  # without the group the ranks' orders differ
        check_union(monkeypatch, make, None, SEED, lambda r: SEED + r)


@pytest.mark.parametrize("kind", ["imagedata", "windowdata", "hdf5"])
def test_group_joined_after_set_up_still_shares_rank_0s_seed(tmp_path: Path, monkeypatch, kind: str):
    """pycaffe's flow: the nets are built, then ``caffe.NCCL`` joins the group; the layers take rank 0's seed
    at their first forward (restarting where they are) and read one process's batches from there on."""
    make = seeded_apart(tmp_path, kind)
    whole = read(build(monkeypatch, make(N * B), 0, 1, caffe.TRAIN, SEED), ITERS)
    nets = [build(monkeypatch, make(B), r, N, caffe.TRAIN, SEED + r) for r in range(N)]
    with pretend_group():
        per_rank = [read(net, ITERS) for net in nets]
    for i in range(ITERS):
        for top in ("data", "label"):
            np.testing.assert_array_equal(interleave(per_rank, i, top), whole[i][top])


def test_root_value_gives_rank_0s_value(tmp_path: Path):
    """The exchange behind the shared seed, in a real (one-rank, gloo) group."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert caffe.parallel.root_value(2**31 - 2) == 2**31 - 2
    finally:
        dist.destroy_process_group()
