"""Caffe's data transformation (crop, mirror, mean, scale) and the prefetcher, against hand computation."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import caffe
from caffe.data.prefetch import Decoded, Prefetcher, Record
from caffe.data.transform import CHW, HWC, DataTransformer
from caffe.proto import caffe_pb2 as pb


def transformer(phase: int = caffe.TRAIN, **fields) -> DataTransformer:
    mean_values = fields.pop("mean_value", [])
    p = pb.TransformationParameter(**fields)
    p.mean_value.extend(mean_values)
    return DataTransformer(p, phase, "test")


class ArraySource:
    """Items from memory: HWC uint8 images, with label = index."""

    def __init__(self, images: list[np.ndarray], layout: str = HWC, bad: int | None = None) -> None:
        self.images, self.layout, self.bad, self.pos = images, layout, bad, 0

    def peek(self) -> Record:
        return Record(0, "item 0")

    def next_records(self, n: int) -> list[Record]:
        out = []
        for _ in range(n):
            out.append(Record(self.pos, f"item {self.pos}"))
            self.pos = (self.pos + 1) % len(self.images)
        return out

    def decode(self, record: Record) -> Decoded:
        if record.payload == self.bad:
            raise caffe.DataError(f"{record.name}: cannot decode")
        return Decoded(self.images[record.payload], self.layout, float(record.payload))


def images(n: int = 6, h: int = 8, w: int = 10, c: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (h, w, c), dtype=np.uint8) for _ in range(n)]


def run_batch(t: DataTransformer, imgs: list[np.ndarray], batch: int, workers: int, seed: int = 5, layout: str = HWC):
    src = ArraySource(imgs if layout == HWC else [np.ascontiguousarray(i.transpose(2, 0, 1)) for i in imgs], layout)
    p = Prefetcher(src, t, batch, workers=workers, seed=seed)
    try:
        return p.next()
    finally:
        p.stop()


def test_test_phase_center_crop_mean_values_then_scale():
    imgs = images()
    t = transformer(caffe.TEST, crop_size=4, scale=0.5, mirror=True, mean_value=[10, 20, 30])
    data, labels = run_batch(t, imgs, 2, workers=0)
    assert data.shape == (2, 3, 4, 4)
    h0, w0 = (8 - 4) // 2, (10 - 4) // 2
    for i in range(2):
        chw = imgs[i].transpose(2, 0, 1).astype(np.float32)[:, h0 : h0 + 4, w0 : w0 + 4]
        expected = (chw - np.array([10, 20, 30], np.float32)[:, None, None]) * 0.5  # mean first, then scale
        np.testing.assert_array_equal(data[i].numpy(), expected)  # TEST: centre crop, never mirrored
    np.testing.assert_array_equal(labels.numpy(), [0, 1])


def test_train_random_crop_within_bounds_and_mirror_with_unmirrored_mean():
    imgs = images(n=32, h=9, w=9)
    mean = np.random.default_rng(1).random((3, 9, 9)).astype(np.float32) * 100
    t = transformer(caffe.TRAIN, crop_size=5, mirror=True)
    t.mean = mean
    data, _ = run_batch(t, imgs, 32, workers=2)
    offsets, flips = set(), []
    for i in range(32):
        x = imgs[i].transpose(2, 0, 1).astype(np.float32)
        found = None
        for h in range(5):
            for w in range(5):
                for flip in (False, True):
                    crop = x[:, h : h + 5, w : w + 5] - mean[:, h : h + 5, w : w + 5]  # Caffe: mean then mirror
                    if flip:
                        crop = crop[:, :, ::-1]
                    if np.allclose(data[i].numpy(), crop):
                        found = (h, w, flip)
        assert found is not None, f"item {i} is not a crop of its image"
        offsets.add(found[:2])
        flips.append(found[2])
    assert len(offsets) > 5 and 0 < sum(flips) < 32  # random positions and mirrors


def test_no_crop_mean_value_broadcast_and_single_value_for_all_channels():
    imgs = images(n=2)
    t = transformer(caffe.TRAIN, mean_value=[7])
    data, _ = run_batch(t, imgs, 2, workers=1)
    np.testing.assert_array_equal(data[1].numpy(), imgs[1].transpose(2, 0, 1).astype(np.float32) - 7)
    assert data.is_contiguous(memory_format=__import__("torch").channels_last)


def test_raw_chw_items_and_float_items():
    imgs = images(n=3)
    t = transformer(caffe.TEST, crop_size=6, scale=2.0)
    data, _ = run_batch(t, imgs, 3, workers=2, layout=CHW)
    h0, w0 = 1, 2
    np.testing.assert_array_equal(data[2].numpy(), imgs[2].transpose(2, 0, 1)[:, h0 : h0 + 6, w0 : w0 + 6] * 2.0)


def test_runs_repeat_exactly_whatever_the_worker_count():
    imgs = images(n=16, h=12, w=12)
    results = []
    for workers in (0, 1, 2, 3):
        t = transformer(caffe.TRAIN, crop_size=7, mirror=True)
        results.append(run_batch(t, imgs, 16, workers=workers)[0].numpy())
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


def test_batches_come_in_order_and_wrap_around():
    imgs = images(n=5)
    src = ArraySource(imgs)
    p = Prefetcher(src, transformer(caffe.TEST), 3, workers=2, depth=2)
    try:
        labels = [p.next()[1].numpy().tolist() for _ in range(4)]
    finally:
        p.stop()
    assert labels == [[0, 1, 2], [3, 4, 0], [1, 2, 3], [4, 0, 1]]


def test_crop_and_mirror_are_three_uniforms_per_item():
    """Item i's crop and mirror come from uniforms 3i, 3i+1, 3i+2 of the prefetcher's generator: rows
    int(u * (h - crop + 1)), columns likewise, mirrored when the third is below 0.5."""
    imgs = images(n=8, h=9, w=11)
    data, _ = run_batch(transformer(caffe.TRAIN, crop_size=5, mirror=True), imgs, 8, workers=2, seed=5)
    u = np.random.default_rng(5).random((8, 3))
    for i in range(8):
        h, w = int(u[i, 0] * 5), int(u[i, 1] * 7)
        crop = imgs[i].transpose(2, 0, 1)[:, h : h + 5, w : w + 5]
        np.testing.assert_array_equal(data[i].numpy(), crop[:, :, ::-1] if u[i, 2] < 0.5 else crop)
    assert 0 < int(np.sum(u[:, 2] < 0.5)) < 8  # both kinds occur in this batch


@pytest.mark.parametrize(
    "phase, fields, per_item",
    [
        (caffe.TRAIN, {"crop_size": 4, "mirror": True}, 3),
        (caffe.TRAIN, {"crop_size": 4}, 3),
        (caffe.TRAIN, {"mirror": True}, 3),
        (caffe.TRAIN, {}, 0),
        (caffe.TEST, {"crop_size": 4, "mirror": True}, 0),  # TEST: centre crop, no mirror, nothing drawn
    ],
)
def test_skip_draws_is_the_draws_of_that_many_items(phase: int, fields: dict, per_item: int):
    t = transformer(phase, **fields)
    assert t.draws_per_item == per_item
    drawn, skipped = np.random.default_rng(3), np.random.default_rng(3)
    for _ in range(1000):
        t.draw(drawn)
    t.skip_draws(skipped, 1000)
    assert t.draw(drawn) == t.draw(skipped)
    assert drawn.random() == skipped.random() == np.random.default_rng(3).random(1 + 1001 * per_item)[-1]


class SkippingArraySource(ArraySource):
    """ArraySource with ``skip`` (the prefetcher then jumps instead of reading the skipped records)."""

    def __init__(self, images: list[np.ndarray]) -> None:
        super().__init__(images)
        self.read = 0

    def next_records(self, n: int) -> list[Record]:
        self.read += n
        return super().next_records(n)

    def skip(self, n: int) -> None:
        self.pos = (self.pos + n) % len(self.images)


@pytest.mark.parametrize("source", [ArraySource, SkippingArraySource])
def test_skip_batches_continues_as_reading_them(source: type):
    imgs = images(n=7, h=9, w=9)
    t = transformer(caffe.TRAIN, crop_size=5, mirror=True)
    reader = Prefetcher(ArraySource(imgs), t, 3, workers=2, seed=8)
    skipper = Prefetcher(source(imgs), t, 3, workers=2, seed=8, skip_batches=5)
    try:
        for _ in range(5):
            reader.next()
        for _ in range(4):
            (a, la), (b, lb) = reader.next(), skipper.next()
            np.testing.assert_array_equal(a.numpy(), b.numpy())
            np.testing.assert_array_equal(la.numpy(), lb.numpy())
    finally:
        reader.stop()
        skipper.stop()
    if source is SkippingArraySource:  # the skipped 5 batches were never read: only the 4 used and read-ahead
        assert skipper.source.read <= 3 * (4 + skipper.depth)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_bad_item_is_a_clear_error_naming_it(workers: int):
    src = ArraySource(images(n=8), bad=2)  # the first batch holds the bad item, the second does not
    p = Prefetcher(src, transformer(caffe.TEST), 4, workers=workers)
    with pytest.raises(caffe.DataError, match="item 2: cannot decode"):
        p.next()
    again: list[BaseException] = []  # a second call says it again (it used to wait forever for stopped threads)

    def call() -> None:
        try:
            p.next()
        except BaseException as e:
            again.append(e)

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(10)
    assert again and isinstance(again[0], caffe.DataError) and "item 2: cannot decode" in str(again[0])
    p.stop()


def test_checks_on_sizes():
    t = transformer(caffe.TRAIN, crop_size=20)
    with pytest.raises(caffe.DataError, match=r"crop_size 20 is larger than the image \(8x10\)"):
        t.check_item(3, 8, 10, "img.jpg")
    t = transformer(caffe.TEST, mean_value=[1, 2])
    with pytest.raises(caffe.DataError, match="either 1 mean_value or as many as channels"):
        t.check_item(3, 8, 10)
    t = transformer(caffe.TEST)
    t.mean = np.zeros((3, 4, 4), np.float32)
    with pytest.raises(caffe.DataError, match="the mean file is 3x4x4 but the data is 3x8x10"):
        t.check_item(3, 8, 10)
    with pytest.raises(caffe.DataError, match="both force_color and force_gray"):
        transformer(force_color=True, force_gray=True)
    with pytest.raises(caffe.DataError, match="mean_file and mean_value"):
        transformer(mean_file="m.binaryproto", mean_value=[1])


def test_items_of_different_sizes_in_one_batch():
    imgs = [np.zeros((8, 8, 3), np.uint8), np.zeros((9, 8, 3), np.uint8)]
    p = Prefetcher(ArraySource(imgs), transformer(caffe.TEST), 2, workers=0)
    with pytest.raises(caffe.DataError, match=r"item 1: item of shape .* must have the same size"):
        p.next()


def test_batch_buffers_are_recycled_only_after_the_net_lets_go():
    """The pool lends a buffer again once every tensor and view of it is gone, never before."""
    imgs = images(n=6)
    p = Prefetcher(ArraySource(imgs), transformer(caffe.TEST), 3, workers=0)
    try:
        first, _ = p.next()
        kept = first.numpy()  # a pycaffe-style view: keeps the buffer alive
        snapshot = kept.copy()
        for _ in range(5):
            data, _ = p.next()
        assert not np.shares_memory(data.numpy(), kept)
        np.testing.assert_array_equal(kept, snapshot)  # never overwritten while held
        made = p.pool.made
        del first, kept, data
        for _ in range(20):  # now the buffers come back: no new arrays after the first rounds
            p.next()
        assert p.pool.made <= made + 1
    finally:
        p.stop()


def test_buffer_pool_gives_back_and_keeps_a_bounded_number():
    from caffe.data.prefetch import BufferPool

    pool = BufferPool(keep=2)
    a = pool.take((2, 3))
    address = a.__array_interface__["data"][0]
    del a
    b = pool.take((2, 3))
    assert b.__array_interface__["data"][0] == address and pool.made == 1
    c = pool.take((2, 3))  # b is still held: a new array
    assert not np.shares_memory(b, c) and pool.made == 2
    other = pool.take((4,), np.float64)
    assert other.dtype == np.float64 and pool.made == 3
    held = [pool.take((2, 3)) for _ in range(4)]
    del b, c, held
    assert len(pool._free[((2, 3), np.dtype(np.float32))]) == 2  # keep=2: the rest are left to the GC


def test_device_copies_keep_each_host_batch_until_its_copy_is_done():
    """On the CPU nothing is pinned and nothing is held (the GPU half: tests/test_gpu.py)."""
    from caffe.data.prefetch import DeviceCopies

    copies = DeviceCopies(limit=2)
    x = torch.arange(6, dtype=torch.float32)
    (y,) = copies.copy([x], torch.device("cpu"), torch.float64)
    assert y.dtype == torch.float64 and torch.equal(y, x.double()) and not copies._in_flight


@pytest.mark.parametrize(
    "phase, fields, mean_file, dtype",
    [
        (caffe.TRAIN, {"scale": 0.00390625}, False, np.uint8),
        (caffe.TRAIN, {"scale": 0.00390625}, True, np.uint8),
        (caffe.TRAIN, {"crop_size": 5, "mirror": True, "scale": 0.017, "mean_value": [104, 117, 123]}, False, np.uint8),
        (caffe.TRAIN, {"crop_size": 5, "mirror": True, "scale": 0.017}, True, np.uint8),
        (caffe.TRAIN, {"crop_size": 5, "mirror": True, "scale": 0.25}, True, np.float32),
        (caffe.TRAIN, {"mirror": True, "mean_value": [7.5]}, False, np.uint8),
        (caffe.TEST, {"crop_size": 5, "mirror": True, "scale": 0.017, "mean_value": [104, 117, 123]}, False, np.uint8),
        (caffe.TEST, {"crop_size": 5, "mirror": True, "scale": 0.017}, True, np.uint8),
        (caffe.TEST, {"crop_size": 4, "scale": 0.5}, False, np.float32),
    ],
)
def test_place_batch_is_place_for_every_item_bit_for_bit(phase: int, fields: dict, mean_file: bool, dtype: type):
    rng = np.random.default_rng(4)
    items = (rng.random((12, 3, 9, 11)) * 256).astype(dtype)
    t = transformer(phase, **fields)
    if mean_file:
        t.mean = (rng.random((3, 9, 11)) * 100).astype(np.float32)
    draws = [t.draw(rng) for _ in range(12)]
    shape = (12, *t.output_shape(3, 9, 11))
    each, whole = np.full(shape, np.nan, np.float32), np.full(shape, np.nan, np.float32)
    for i in range(12):
        t.place(items[i], CHW, each[i], draws[i])
    t.place_batch(items, whole, draws)
    assert np.array_equal(whole, each)
    if t.mirror:
        assert 0 < sum(d[2] for d in draws) < 12  # mirrored and unmirrored items in the batch


def test_place_with_a_mean_file_is_mean_then_scale_in_float32():
    """The numbers :meth:`place` and :meth:`place_batch` give: float32(x) - mean, then times float32(scale)."""
    rng = np.random.default_rng(2)
    items = rng.integers(0, 256, (4, 3, 6, 6), dtype=np.uint8)
    t = transformer(caffe.TEST, crop_size=4, scale=0.017)
    t.mean = (rng.random((3, 6, 6)) * 100).astype(np.float32)
    out = np.empty((4, 3, 4, 4), np.float32)
    t.place_batch(items, out, [t.draw(rng)] * 4)
    expected = (items[:, :, 1:5, 1:5].astype(np.float32) - t.mean[:, 1:5, 1:5]) * np.float32(0.017)
    assert expected.dtype == np.float32 and np.array_equal(out, expected)
