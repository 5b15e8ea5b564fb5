"""Data and ImageData layers: what comes out equals decoding the same records/files directly."""

from __future__ import annotations

import gc
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import ASSETS, asset
from google.protobuf import text_format

import caffe
from caffe.data.datum import array_to_datum, image_to_datum
from caffe.data.db import item_key, open_db
from caffe.data.prefetch import Decoded, Prefetcher, Record
from caffe.data.transform import DataTransformer
from caffe.layers.data import DatumSource
from caffe.proto import caffe_pb2 as pb
from caffe.weights import array_to_blob_proto

DOLPHINS = sorted((ASSETS / "dolphins-and-seahorses" / "dolphin").glob("*.jpg"))[:12]


def data_net(source: Path, batch: int = 4, phase: int = caffe.TEST, extra: str = "", data: str = "") -> caffe.Net:
    text = f"""
    layer {{ name: "data" type: "Data" top: "data" top: "label"
            data_param {{ source: "{source}" batch_size: {batch} {data} }} {extra} }}
    """
    return caffe.Net(text_format.Parse(text, pb.NetParameter()), phase)


def write_db(path: Path, datums: list[pb.Datum | bytes], backend: str = "lmdb") -> None:
    """Datums (or records as they are, given as bytes) under keys ``00000000_item0``, ..."""
    with open_db(path, backend, "new") as db:
        txn = db.transaction()
        for i, d in enumerate(datums):
            txn.put(item_key(i, f"item{i}"), d if isinstance(d, bytes) else d.SerializeToString())
        txn.commit()


def raw_items(n: int = 7, c: int = 3, h: int = 6, w: int = 5) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (c, h, w), dtype=np.uint8) for _ in range(n)]


@pytest.mark.parametrize("backend", ["lmdb", "leveldb"])
def test_raw_datums_in_order_with_labels_and_wrap_around(tmp_path: Path, backend: str):
    items = raw_items()
    write_db(tmp_path / "db", [array_to_datum(a, label=i) for i, a in enumerate(items)], backend)
    bk = "LMDB" if backend == "lmdb" else "LEVELDB"
    net = data_net(tmp_path / "db", batch=4, data=f"backend: {bk}")
    assert net.blobs["data"].shape == (4, 3, 6, 5) and net.blobs["label"].shape == (4,)
    seen = []
    for _ in range(3):
        out = net.forward()
        seen += out["label"].astype(int).tolist()
        for k, label in enumerate(out["label"].astype(int)):
            np.testing.assert_array_equal(out["data"][k], items[label].astype(np.float32))
    assert seen == [0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4]


def test_encoded_jpegs_equal_opencv_decoding(tmp_path: Path):
    datums = [image_to_datum(p, label=i, encoding="jpg") for i, p in enumerate(DOLPHINS[:4])]
    sizes = {cv2.imread(str(p)).shape for p in DOLPHINS[:4]}
    batch = 1 if len(sizes) > 1 else 4  # images of different sizes: one per batch, as Caffe allows
    write_db(tmp_path / "db", datums)
    net = data_net(tmp_path / "db", batch=batch)
    for i in range(4 // batch):
        out = net.forward()
        for k in range(batch):
            idx = int(out["label"][k])
            ref = cv2.imread(str(DOLPHINS[idx]), cv2.IMREAD_COLOR).transpose(2, 0, 1).astype(np.float32)
            np.testing.assert_array_equal(out["data"][k], ref)
        assert i < 4


def test_mean_file_and_scale_and_center_crop(tmp_path: Path):
    items = raw_items(n=2, h=8, w=8)
    write_db(tmp_path / "db", [array_to_datum(a, label=0) for a in items])
    mean = np.random.default_rng(3).random((1, 3, 8, 8)).astype(np.float32) * 50
    (tmp_path / "mean.binaryproto").write_bytes(array_to_blob_proto(mean).SerializeToString())
    net = data_net(
        tmp_path / "db",
        batch=2,
        extra=(
            f'transform_param {{ mean_file: "{tmp_path / "mean.binaryproto"}" scale: 0.25 crop_size: 4 mirror: true }}'
        ),
    )
    out = net.forward()["data"]
    expected = (items[1].astype(np.float32) - mean[0])[:, 2:6, 2:6] * 0.25
    np.testing.assert_allclose(out[1], expected, rtol=1e-6)


def test_backend_is_detected_unless_given_wrong(tmp_path: Path):
    write_db(tmp_path / "db", [array_to_datum(a) for a in raw_items(n=2)], "lmdb")
    net = data_net(tmp_path / "db", batch=2)  # no backend: Caffe's default would be LEVELDB
    assert net.blobs["data"].shape[0] == 2
    with pytest.raises(caffe.DataError, match=r"is a lmdb database but data_param\.backend is LEVELDB"):
        data_net(tmp_path / "db", batch=2, data="backend: LEVELDB")


def test_data_layer_errors(tmp_path: Path):
    with pytest.raises(caffe.DataError, match="does not exist"):
        data_net(tmp_path / "missing_lmdb")
    write_db(tmp_path / "db", [array_to_datum(a) for a in raw_items(n=2, h=6, w=6)])
    with pytest.raises(caffe.DataError, match=r"crop_size 10 is larger than the image \(6x6\)"):
        data_net(tmp_path / "db", extra="transform_param { crop_size: 10 }")
    mean = np.zeros((1, 3, 4, 4), np.float32)
    (tmp_path / "m.binaryproto").write_bytes(array_to_blob_proto(mean).SerializeToString())
    with pytest.raises(caffe.DataError, match="the mean file is 3x4x4 but the data is 3x6x6"):
        data_net(tmp_path / "db", extra=f'transform_param {{ mean_file: "{tmp_path / "m.binaryproto"}" }}')
    # a corrupt record in the middle: a clear error naming the record when its batch is used
    with open_db(tmp_path / "bad", "lmdb", "new") as db:
        txn = db.transaction()
        txn.put(item_key(0, "good"), array_to_datum(raw_items(1)[0]).SerializeToString())
        txn.put(item_key(1, "bad"), b"\xff\xfe not a datum")
        txn.commit()
    net = data_net(tmp_path / "bad", batch=2)
    with pytest.raises(caffe.DataError, match="00000001_bad"):
        net.forward()
    write_db(tmp_path / "empty", [])
    with pytest.raises(caffe.DataError, match="the lmdb database is empty"):
        data_net(tmp_path / "empty")


def test_image_data_layer(tmp_path: Path):
    root = ASSETS / "dolphins-and-seahorses"
    lines = [f"dolphin/{p.name} {i % 2}" for i, p in enumerate(DOLPHINS[:6])]
    lines.append("dolphin/image_0042.jpg 1")  # the grayscale one
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(lines) + "\n")
    text = f"""
    layer {{ name: "d" type: "ImageData" top: "data" top: "label"
            image_data_param {{ source: "{listing}" root_folder: "{root}/" batch_size: 7
                                new_height: 32 new_width: 40 }} }}
    """
    net = caffe.Net(text_format.Parse(text, pb.NetParameter()), caffe.TEST)
    out = net.forward()
    assert out["data"].shape == (7, 3, 32, 40)
    for k, line in enumerate(lines):
        path = root / line.split()[0]
        ref = cv2.resize(cv2.imread(str(path), cv2.IMREAD_COLOR), (40, 32)).transpose(2, 0, 1)
        np.testing.assert_array_equal(out["data"][k], ref.astype(np.float32))
    np.testing.assert_array_equal(out["label"], [int(x.split()[1]) for x in lines])
    gray = text.replace("new_width: 40", "new_width: 40 is_color: false")
    assert caffe.Net(text_format.Parse(gray, pb.NetParameter()), caffe.TEST).blobs["data"].shape == (7, 1, 32, 40)


def test_image_list_errors(tmp_path: Path):
    listing = tmp_path / "list.txt"
    listing.write_text("a.jpg 0\nno_label_here.jpg\n")
    text = (
        f'layer {{ name: "d" type: "ImageData" top: "data" top: "label" image_data_param {{ source: "{listing}" }} }}'
    )
    with pytest.raises(caffe.DataError, match=r"list.txt:2: expected 'path label'"):
        caffe.Net(text_format.Parse(text, pb.NetParameter()), caffe.TEST)
    listing.write_text("missing.jpg 0\n")
    with pytest.raises(caffe.DataError, match=r"missing\.jpg"):
        caffe.Net(text_format.Parse(text, pb.NetParameter()), caffe.TEST)


def test_data_layer_feeds_a_real_net(tmp_path: Path):
    import gzip

    with gzip.open(asset("mnist/t10k-images-idx3-ubyte.gz")) as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)[:200]
    with gzip.open(asset("mnist/t10k-labels-idx1-ubyte.gz")) as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)[:200]
    write_db(tmp_path / "mnist", [array_to_datum(im, int(lb)) for im, lb in zip(images, labels, strict=True)])
    text = asset("caffe-ref/examples/mnist/lenet_train_test.prototxt").read_text()
    text = text.replace("examples/mnist/mnist_test_lmdb", str(tmp_path / "mnist"))
    text = text.replace("examples/mnist/mnist_train_lmdb", str(tmp_path / "mnist"))
    proto = tmp_path / "lenet_train_test.prototxt"
    proto.write_text(text)
    net = caffe.Net(
        str(proto), caffe.TEST, weights=str(asset("models/lenet_mnist_newformat/lenet_iter_10000.caffemodel"))
    )
    accuracy = np.mean([net.forward()["accuracy"] for _ in range(2)])  # 2 x 100 images
    assert accuracy >= 0.97


def test_force_gray_and_force_color_on_encoded_datums(tmp_path: Path):
    gray_file = ASSETS / "dolphins-and-seahorses" / "dolphin" / "image_0042.jpg"  # a grayscale JPEG
    color_file = DOLPHINS[0]
    for name, path in (("color", color_file), ("gray", gray_file)):
        write_db(tmp_path / name, [image_to_datum(path, label=0, encoding="jpg")])
    native_gray = data_net(tmp_path / "gray", batch=1).forward()["data"]
    assert native_gray.shape[1] == 1  # a gray file stays 1 channel unless forced
    forced = data_net(tmp_path / "gray", batch=1, extra="transform_param { force_color: true }").forward()["data"]
    ref = cv2.imread(str(gray_file), cv2.IMREAD_COLOR).transpose(2, 0, 1).astype(np.float32)
    np.testing.assert_array_equal(forced[0], ref)
    grayed = data_net(tmp_path / "color", batch=1, extra="transform_param { force_gray: true }").forward()["data"]
    np.testing.assert_array_equal(grayed[0, 0], cv2.imread(str(color_file), cv2.IMREAD_GRAYSCALE).astype(np.float32))


def test_undecodable_image_in_a_database_is_named(tmp_path: Path):
    good = image_to_datum(DOLPHINS[0], label=0, encoding="jpg")
    bad = pb.Datum(data=b"\xff\xd8\xff\xe0 definitely not a jpeg", encoded=True, label=1)
    with open_db(tmp_path / "db", "lmdb", "new") as db:
        txn = db.transaction()
        txn.put(item_key(0, "good.jpg"), good.SerializeToString())
        txn.put(item_key(1, "broken.jpg"), bad.SerializeToString())
        txn.commit()
    net = data_net(tmp_path / "db", batch=1)
    net.forward()
    with pytest.raises(caffe.DataError, match=r"00000001_broken\.jpg.*could not decode"):
        net.forward()


def test_a_training_net_hands_its_batch_buffers_back(tmp_path: Path):
    """Forward + backward through a real net: the Data layer's float buffers are recycled (the net keeps
    none beyond the current batch), and a batch read through pycaffe is not overwritten while held."""
    items = raw_items(n=8)
    write_db(tmp_path / "db", [array_to_datum(a, label=i % 2) for i, a in enumerate(items)])
    text = f"""
    layer {{ name: "data" type: "Data" top: "data" top: "label"
            data_param {{ source: "{tmp_path / "db"}" batch_size: 4 }} }}
    layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param {{ num_output: 2
            weight_filler {{ type: "xavier" }} }} }}
    layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }}
    """
    net = caffe.Net(text_format.Parse(text, pb.NetParameter()), caffe.TRAIN)
    held = net.blobs["data"].data
    snapshot = held.copy()
    for _ in range(30):
        net.forward()
        net.backward()
    np.testing.assert_array_equal(held, snapshot)
    prefetcher = net.layer_dict["data"].prefetcher
    assert prefetcher.pool.made <= prefetcher.depth + prefetcher.workers + 4


# ---------------------------------------------------------------------------- fast-forward (solver restore)
def fast_forward_net(tmp_path: Path, kind: str, records: int, batch: int, extra: str = "") -> pb.NetParameter:
    """A TRAIN-style data layer with random crops and mirrors over ``records`` items labelled 0, 1, ...:
    a Data layer on an LMDB/LevelDB of raw 3x6x6 Datums, or an ImageData layer on a list of JPEGs."""
    transform = "transform_param { crop_size: 4 mirror: true }"
    if kind == "imagedata":
        listing = tmp_path / "list.txt"
        listing.write_text("".join(f"{p.name} {i}\n" for i, p in enumerate(DOLPHINS[:records])))
        text = f"""layer {{ name: "data" type: "ImageData" top: "data" top: "label" {transform}
            image_data_param {{ source: "{listing}" root_folder: "{DOLPHINS[0].parent}/" batch_size: {batch}
                                new_height: 6 new_width: 6 {extra} }} }}"""
    else:
        items = raw_items(n=records, h=6, w=6)
        write_db(tmp_path / kind, [array_to_datum(a, label=i) for i, a in enumerate(items)], kind)
        text = f"""layer {{ name: "data" type: "Data" top: "data" top: "label" {transform}
            data_param {{ source: "{tmp_path / kind}" backend: {kind.upper()} batch_size: {batch} {extra} }} }}"""
    return text_format.Parse(text, pb.NetParameter())


def reference_items(kind: str, records: int) -> list[np.ndarray]:
    """The items of ``fast_forward_net`` before cropping, as float32 (C, H, W)."""
    if kind == "imagedata":
        images = [cv2.resize(cv2.imread(str(p), cv2.IMREAD_COLOR), (6, 6)) for p in DOLPHINS[:records]]
        return [im.transpose(2, 0, 1).astype(np.float32) for im in images]
    return [a.astype(np.float32) for a in raw_items(n=records, h=6, w=6)]


def release(net: caffe.Net) -> None:
    """Stop a net's data layer and close its database now, not when the net is collected."""
    layer = net.layer_dict["data"]
    layer.prefetcher.stop(join=True)
    getattr(layer.source, "close", lambda: None)()


def start_of(layer: caffe.Layer) -> int:
    """Where a fresh layer's source starts reading (rand_skip's draw)."""
    return int(getattr(layer.source, "_position", getattr(layer.source, "_pos", 0)))


def test_nothing_is_read_ahead_before_the_first_forward(tmp_path: Path):
    """Set-up reads only the first record (the top shape); prefetching starts with the first forward, so
    the prefetcher a fast-forward replaces has read and decoded nothing."""
    net = caffe.Net(fast_forward_net(tmp_path, "lmdb", 5, 2), caffe.TRAIN)
    layer = net.layer_dict["data"]
    assert net.blobs["data"].shape == (2, 3, 4, 4)
    replaced, source = layer.prefetcher, layer.source
    layer.fast_forward(3)
    assert not replaced._threads and source._iter is None  # no thread started, the database never opened
    assert not layer.prefetcher._threads
    np.testing.assert_array_equal(net.forward()["label"], [1, 2])  # records 6, 7 of 5
    assert layer.prefetcher._threads or not layer.prefetcher.workers


@pytest.mark.parametrize(
    "kind, extra",
    [("lmdb", "rand_skip: 100"), ("leveldb", "rand_skip: 100"), ("imagedata", "shuffle: true rand_skip: 100")],
)
def test_fast_forward_continues_as_reading_on(tmp_path: Path, kind: str, extra: str):
    """Fast-forwarding by n batches gives exactly the data and labels that reading n batches and going on
    gives: over 5 epochs (reshuffled each time for ImageData), after rand_skip, with TRAIN crops and
    mirrors; a layer that has already read batches starts again from its beginning (as a restored solver's)."""
    records, batch, skipped = 5, 4, 6  # 24 items: 4 passes and a bit more over the 5 records (plus rand_skip)
    param = fast_forward_net(tmp_path, kind, records, batch, extra)
    caffe.set_random_seed(3)
    reader = caffe.Net(param, caffe.TRAIN)
    start = start_of(reader.layer_dict["data"])
    assert start % records != 0  # rand_skip is in play
    for _ in range(skipped):
        reader.forward()
    expected = [{k: v.copy() for k, v in reader.forward().items()} for _ in range(5)]
    release(reader)  # a LevelDB has one reader at a time
    caffe.set_random_seed(3)
    skipper = caffe.Net(param, caffe.TRAIN)
    for _ in range(2):
        skipper.forward()
    skipper.layer_dict["data"].fast_forward(skipped)
    labels = []
    for want in expected:
        got = skipper.forward()
        np.testing.assert_array_equal(got["data"], want["data"])
        np.testing.assert_array_equal(got["label"], want["label"])
        labels += want["label"].astype(int).tolist()
    first = -(start + skipped * batch) % records  # where the next pass begins
    passes = [labels[i : i + records] for i in range(first, len(labels) - records + 1, records)]
    assert len(passes) >= 3 and all(sorted(p) == list(range(records)) for p in passes)
    if kind == "imagedata":  # reshuffled each pass
        assert len({tuple(p) for p in passes}) > 1
    else:
        assert all(p == list(range(records)) for p in passes)


@pytest.mark.parametrize("kind", ["lmdb", "leveldb", "imagedata"])
def test_fast_forward_by_a_million_batches_reads_nothing(tmp_path: Path, kind: str):
    """10^6 batches (4 x 10^6 items, 400000 passes over 10 records) are skipped in constant time: the
    position is arithmetic and the crops' and mirrors' draws one jump of the generator. The batch after
    them is exact: records 0-3, with the crops and mirrors of uniforms 12 x 10^6 ... of the layer's draws."""
    records, batch, skipped = 10, 4, 10**6
    net = caffe.Net(fast_forward_net(tmp_path, kind, records, batch), caffe.TRAIN)
    layer = net.layer_dict["data"]
    start = time.perf_counter()
    layer.fast_forward(skipped)
    out = net.forward()
    elapsed = time.perf_counter() - start
    np.testing.assert_array_equal(out["label"], [0, 1, 2, 3])
    rng = np.random.default_rng(layer._seed + 1)  # the prefetcher's draws
    rng.bit_generator.advance(3 * batch * skipped)
    u = rng.random((batch, 3))
    whole = reference_items(kind, records)
    for i in range(batch):
        h, w = int(u[i, 0] * 3), int(u[i, 1] * 3)
        crop = whole[i][:, h : h + 4, w : w + 4]
        np.testing.assert_array_equal(out["data"][i], crop[:, :, ::-1] if u[i, 2] < 0.5 else crop)
    assert elapsed < 0.5, f"fast-forward by {skipped} batches took {elapsed:.2f} s"


def test_train_and_test_nets_read_one_leveldb_together(tmp_path: Path):
    """Both nets of a solver may name the same LevelDB (Caffe's second opener failed on the LOCK file)."""
    items = raw_items(n=5)
    write_db(tmp_path / "db", [array_to_datum(a, label=i) for i, a in enumerate(items)], "leveldb")
    train = data_net(tmp_path / "db", batch=2, phase=caffe.TRAIN, data="backend: LEVELDB")
    test = data_net(tmp_path / "db", batch=3, phase=caffe.TEST, data="backend: LEVELDB")
    seen = {"train": [], "test": []}
    for _ in range(3):
        seen["train"] += train.forward()["label"].astype(int).tolist()
        seen["test"] += test.forward()["label"].astype(int).tolist()
    assert seen == {"train": [0, 1, 2, 3, 4, 0], "test": [0, 1, 2, 3, 4, 0, 1, 2, 3]}


def test_a_collected_net_leaves_its_leveldb_free_for_another_process(tmp_path: Path):
    """LevelDB admits one opener per machine: once a net that read it is collected, its prefetching threads
    have ended and the database is closed, so another process may open it at once."""
    items = raw_items(n=5)
    write_db(tmp_path / "db", [array_to_datum(a, label=i) for i, a in enumerate(items)], "leveldb")
    net = data_net(tmp_path / "db", batch=2, phase=caffe.TRAIN, data="backend: LEVELDB")
    net.forward()  # the threads are reading ahead
    del net
    gc.collect()
    script = f"from caffe.data.db import open_db; print(len(open_db({str(tmp_path / 'db')!r}, 'leveldb')))"
    other = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert other.returncode == 0 and other.stdout.split()[-1] == "5", other.stderr[-1000:]


def test_a_data_layer_collected_on_its_own_thread_is_released_from_another(tmp_path: Path, monkeypatch):
    """The collector may run a layer's finalizer on one of its prefetching threads (holding one of their queue
    locks): stopping and joining them there could deadlock, so the work moves to a thread of its own."""
    from caffe.layers import data as data_layers

    items = raw_items(n=5)
    write_db(tmp_path / "db", [array_to_datum(a, label=i) for i, a in enumerate(items)])
    net = data_net(tmp_path / "db", batch=2)
    net.forward()
    layer = net.layer_dict["data"]
    prefetcher = layer.prefetcher
    assert prefetcher.running
    here = threading.current_thread()
    monkeypatch.setattr(prefetcher, "runs_on_current_thread", lambda: threading.current_thread() is here)
    stopped_on: list[threading.Thread] = []
    stop = prefetcher.stop

    def recording_stop(join: bool = False) -> None:
        stopped_on.append(threading.current_thread())
        stop(join)

    monkeypatch.setattr(prefetcher, "stop", recording_stop)
    data_layers._release(prefetcher, layer.source)  # as if collected on one of its threads: returns at once
    deadline = time.monotonic() + 30
    while prefetcher.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not prefetcher.running
    assert [t.name for t in stopped_on] == ["data-release"] and here not in stopped_on


# ---------------------------------------------------------------------------- whole-batch decoding of raw Datums
class CountingSource(DatumSource):
    """A DatumSource counting the records it decodes one by one."""

    decoded = 0

    def decode(self, record: Record) -> Decoded:
        self.decoded += 1
        return super().decode(record)


class ItemByItemSource(CountingSource):
    """A DatumSource that leaves every batch to the per-item path."""

    def decode_batch(self, records: list[Record]) -> None:
        return None


def transformer(phase: int, **fields) -> DataTransformer:
    values = fields.pop("mean_value", [])
    param = pb.TransformationParameter(**fields)
    param.mean_value.extend(values)
    return DataTransformer(param, phase, "test")


def read_batches(
    source_class: type[CountingSource], path: Path, phase: int, fields: dict, batches: int = 3, workers: int = 0
) -> tuple[list[tuple[np.ndarray, np.ndarray]], int]:
    """``batches`` batches of 5 through a Prefetcher (seeded alike each time), and the records decoded one by one."""
    t = transformer(phase, **fields)
    source = source_class(str(path), "lmdb", t, 0, np.random.default_rng(0))
    prefetcher = Prefetcher(source, t, 5, workers=workers, seed=11)
    try:
        out = [tuple(x.numpy().copy() for x in prefetcher.next()) for _ in range(batches)]
    finally:
        prefetcher.stop(join=True)
        source.close()
    return out, source.decoded


@pytest.mark.parametrize(
    "channels, phase, fields, workers",
    [
        (1, caffe.TRAIN, {"scale": 0.00390625}, 0),  # MNIST's
        (1, caffe.TRAIN, {"scale": 0.00390625}, 2),
        (3, caffe.TEST, {"mean_file": "mean", "scale": 0.017}, 0),
        (3, caffe.TRAIN, {"mean_value": [104, 117, 123], "scale": 0.017}, 0),
        (3, caffe.TRAIN, {"mean_value": [104.5]}, 0),
        (3, caffe.TRAIN, {"crop_size": 4, "mirror": True, "mean_file": "mean", "scale": 0.25}, 0),
        (3, caffe.TRAIN, {"crop_size": 4, "mirror": True, "mean_value": [104, 117, 123], "scale": 0.017}, 2),
        (3, caffe.TEST, {"crop_size": 4, "mirror": True, "mean_file": "mean"}, 0),  # centre crop
        (3, caffe.TEST, {"crop_size": 5, "mean_value": [104, 117, 123], "scale": 0.5}, 0),
    ],
)
def test_raw_batches_decoded_whole_equal_item_by_item_bit_for_bit(
    tmp_path: Path, channels: int, phase: int, fields: dict, workers: int
):
    """Raw Datums of one shape are decoded and transformed a batch at once: the same floats and labels (and, with
    random crops and mirrors, the same draws) as decoding and placing them one by one, and nothing decoded singly."""
    items = raw_items(n=7, c=channels, h=8, w=7)
    write_db(tmp_path / "db", [array_to_datum(a, label=1000 * i - 3) for i, a in enumerate(items)])
    if fields.get("mean_file"):
        mean = np.random.default_rng(3).random((1, channels, 8, 7)).astype(np.float32) * 120
        (tmp_path / "mean.binaryproto").write_bytes(array_to_blob_proto(mean).SerializeToString())
        fields = {**fields, "mean_file": str(tmp_path / "mean.binaryproto")}
    whole, singly = read_batches(CountingSource, tmp_path / "db", phase, fields, workers=workers)
    each, each_singly = read_batches(ItemByItemSource, tmp_path / "db", phase, fields, workers=workers)
    assert singly == 0 and each_singly >= 15  # (with workers, batches read ahead too)
    for (data, labels), (each_data, each_labels) in zip(whole, each, strict=True):
        assert data.dtype == each_data.dtype == np.float32 and np.array_equal(data, each_data)
        assert labels.dtype == each_labels.dtype == np.float32 and np.array_equal(labels, each_labels)
    np.testing.assert_array_equal(whole[1][1], [4997, 5997, -3, 997, 1997])  # records 5, 6, then 0, 1, 2
    if fields == {"scale": 0.00390625}:
        expected = np.stack(items[:5]).astype(np.float32) * np.float32(0.00390625)
        assert np.array_equal(whole[0][0], expected)


def test_a_data_layer_decodes_a_raw_batch_whole(tmp_path: Path, item_decodes: list[str]):
    """Through a Data layer, only set-up's first record is decoded on its own; the batches are decoded whole."""
    decoded = item_decodes
    items = raw_items(n=7)
    write_db(tmp_path / "db", [array_to_datum(a, label=i) for i, a in enumerate(items)])
    net = data_net(tmp_path / "db", batch=4, extra="transform_param { scale: 0.5 }")
    for _ in range(3):
        out = net.forward()
    release(net)
    assert len(decoded) == 1
    np.testing.assert_array_equal(out["data"][0], items[1].astype(np.float32) * 0.5)  # batch 3 starts at record 8 of 7


def odd_record(kind: str) -> pb.Datum | bytes:
    """A record that a batch of raw 3x6x5 Datums cannot be decoded whole with."""
    if kind == "float":
        return array_to_datum(np.full((3, 6, 5), 2.5, np.float32), label=9)
    if kind == "shape":
        return array_to_datum(np.zeros((3, 5, 5), np.uint8))
    if kind == "encoded":
        return image_to_datum(DOLPHINS[0], label=0, encoding="jpg")
    if kind == "corrupt":
        return b"\xff\xfe not a datum"
    if kind == "bytes":
        return pb.Datum(channels=3, height=6, width=5, data=b"\0" * 10)
    if kind == "negative":
        return pb.Datum(channels=-3, height=6, width=5, data=b"\0" * 90)
    assert kind == "empty"
    return pb.Datum(channels=0, height=6, width=5)


@pytest.mark.parametrize(
    "kind, error",
    [
        ("float", None),  # a float Datum of the same shape is a valid item
        ("shape", r"00000002_item2'?: item of shape \(3, 5, 5\) in a batch whose first item is \(3, 6, 5\)"),
        ("encoded", r"00000002_item2'?: item of shape \(\d+, \d+, 3\) in a batch whose first item is \(3, 6, 5\)"),
        ("corrupt", r"00000002_item2'?: not a valid Datum \(corrupt record\)"),
        ("bytes", r"00000002_item2'?: Datum holds 10 bytes but is 3x6x5"),
        ("negative", r"00000002_item2'?: Datum has a negative dimension \(-3x6x5\)"),
        ("empty", r"00000002_item2'?: empty Datum"),
    ],
)
def test_a_batch_not_decodable_whole_is_decoded_item_by_item(tmp_path: Path, kind: str, error: str | None):
    """decode_batch leaves a batch holding an odd record to decode, which names what is wrong as before."""
    items = raw_items(n=4, h=6, w=5)
    records: list[pb.Datum | bytes] = [array_to_datum(a, label=i) for i, a in enumerate(items)]
    records[2] = odd_record(kind)
    write_db(tmp_path / "db", records)
    t = transformer(caffe.TEST)
    source = CountingSource(str(tmp_path / "db"), "lmdb", t, 0, np.random.default_rng(0))
    assert source.decode_batch(source.next_records(4)) is None
    prefetcher = Prefetcher(source, t, 4, workers=0)
    try:
        if error is not None:
            with pytest.raises(caffe.DataError, match=error):
                prefetcher.next()
            return
        data, labels = prefetcher.next()
    finally:
        prefetcher.stop(join=True)
        source.close()
    assert source.decoded == 4  # item by item
    np.testing.assert_array_equal(data[2].numpy(), np.full((3, 6, 5), 2.5, np.float32))
    np.testing.assert_array_equal(data[3].numpy(), items[3].astype(np.float32))
    np.testing.assert_array_equal(labels.numpy(), [0, 1, 9, 3])


class PlacingItself(DataTransformer):
    """A transformer that places items its own way (as the SegNet fork's DenseTransformer does)."""

    places_batches = False

    def place(self, item: np.ndarray, layout: str, out: np.ndarray, draw: tuple) -> tuple[int, int]:
        out[...] = -1.0
        return 0, 0


def test_a_transformer_placing_its_own_way_gets_every_item(tmp_path: Path):
    """A batch the source could decode whole still goes item by item through a transformer whose ``place`` is
    its own, so its placing is never skipped."""
    write_db(tmp_path / "db", [array_to_datum(a, label=i) for i, a in enumerate(raw_items(n=4, h=6, w=5))])
    t = PlacingItself(pb.TransformationParameter(), caffe.TEST, "test")
    source = CountingSource(str(tmp_path / "db"), "lmdb", t, 0, np.random.default_rng(0))
    prefetcher = Prefetcher(source, t, 4, workers=0)
    try:
        data, _ = prefetcher.next()
    finally:
        prefetcher.stop(join=True)
        source.close()
    assert source.decoded == 4 and np.all(data.numpy() == -1.0)
