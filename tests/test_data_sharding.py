"""Data sharding across ranks (issue 13): the record at global offset k goes to rank k mod N.

No process group: ``caffe.parallel.world`` is patched to each ``(rank, N)`` in turn while that rank's
layer is set up (the layer reads its shard there). In every iteration the ranks' batches of B, interleaved
(rank r's j-th item is item j·N + r), are exactly the batch of N·B that one process reads. TRAIN nets
only: rank 0 alone tests, on every record.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import ASSETS
from google.protobuf import text_format

import caffe
import caffe.layers.hdf5  # registers HDF5Data
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


def release(net: caffe.Net) -> None:
    """Stop a prefetching layer and close its database (a LevelDB has one reader at a time)."""
    layer = net.layer_dict["data"]
    prefetcher = getattr(layer, "prefetcher", None)
    if prefetcher is not None:
        prefetcher.stop(join=True)
        getattr(layer.source, "close", lambda: None)()


def build(monkeypatch: pytest.MonkeyPatch, param: pb.NetParameter, rank: int, size: int, phase: int) -> caffe.Net:
    """The net as rank ``rank`` of ``size`` sets it up."""
    monkeypatch.setattr(caffe.parallel, "world", lambda: (rank, size))
    try:
        return caffe.Net(param, phase)
    finally:
        monkeypatch.undo()


def read(net: caffe.Net, iterations: int) -> list[dict[str, np.ndarray]]:
    out = [{k: v.copy() for k, v in net.forward().items()} for _ in range(iterations)]
    release(net)
    return out


def interleave(per_rank: list[list[dict[str, np.ndarray]]], i: int, top: str) -> np.ndarray:
    """Iteration ``i`` of all ranks, rank r's j-th item at j·N + r."""
    stacked = np.stack([batches[i][top] for batches in per_rank], axis=1)  # (B, N, ...)
    return stacked.reshape(-1, *stacked.shape[2:])


def check_union(monkeypatch: pytest.MonkeyPatch, make: Callable[[int], pb.NetParameter], records: int) -> None:
    whole = read(build(monkeypatch, make(N * B), 0, 1, caffe.TRAIN), ITERS)
    per_rank = [read(build(monkeypatch, make(B), r, N, caffe.TRAIN), ITERS) for r in range(N)]
    for i in range(ITERS):
        for top in ("data", "label"):
            np.testing.assert_array_equal(interleave(per_rank, i, top), whole[i][top])
        assert all(len(batches[i]["label"]) == B for batches in per_rank)
    labels = np.concatenate([w["label"] for w in whole]).astype(int)
    assert labels.tolist() == [k % records for k in range(ITERS * N * B)]  # across several epoch boundaries


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


@pytest.mark.parametrize("kind", ["lmdb", "leveldb", "imagedata"])
def test_fast_forward_counts_global_records(tmp_path: Path, monkeypatch, kind: str):
    """A rank fast-forwarded by k batches (a resumed run) reads what it would have read after k batches,
    random crops, mirrors and ImageData's per-epoch shuffles included: its j-th item of batch i is item
    i·N·B + j·N + r of the stream one process with the rank's seed reads."""
    transform = "transform_param { crop_size: 4 mirror: true }"
    records, skipped, rank = (5, 4, 1)
    if kind == "imagedata":
        param = image_param(tmp_path, B, transform, "shuffle: true")
        alone = image_param(tmp_path, N * B, transform, "shuffle: true")
    else:
        source = write_db(tmp_path / kind, kind, records)
        param, alone = data_param(source, kind, B, transform), data_param(source, kind, N * B, transform)
    caffe.set_random_seed(7 + rank)  # Caffe's per-rank seed
    stream = np.concatenate([b["label"] for b in read(build(monkeypatch, alone, 0, 1, caffe.TRAIN), skipped + 3)])
    caffe.set_random_seed(7 + rank)
    expected = read(build(monkeypatch, param, rank, N, caffe.TRAIN), skipped + 3)[skipped:]
    caffe.set_random_seed(7 + rank)
    net = build(monkeypatch, param, rank, N, caffe.TRAIN)
    net.forward()  # a restored solver's layer may have read already: it starts again, then skips
    net.layer_dict["data"].fast_forward(skipped)
    got = read(net, 3)
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        np.testing.assert_array_equal(g["data"], e["data"])
        np.testing.assert_array_equal(g["label"], e["label"])
        np.testing.assert_array_equal(g["label"], stream[[(skipped + i) * N * B + j * N + rank for j in range(B)]])


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


def test_rand_skip_under_several_ranks_is_a_warning(tmp_path: Path, monkeypatch, caplog):
    """rand_skip draws with each rank's seed, so the shards would start apart: the log says so."""
    source = write_db(tmp_path / "db", "lmdb")
    text = f"""layer {{ name: "data" type: "Data" top: "data" top: "label"
        data_param {{ source: "{source}" backend: LMDB batch_size: 2 rand_skip: 5 }} }}"""
    with caplog.at_level("WARNING", logger="caffe"):
        release(build(monkeypatch, text_format.Parse(text, pb.NetParameter()), 1, N, caffe.TRAIN))
    assert "rand_skip with 3 ranks" in caplog.text
