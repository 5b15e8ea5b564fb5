"""WindowData: batch composition, Caffe's crop geometry (context padding, clipping, square mode,
mirroring), mean and scale, against hand-computed numbers and a NumPy/cv2 re-computation, and
malformed window files. Images: the assets' dolphins-and-seahorses."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import asset
from google.protobuf import text_format

import caffe
import caffe.layers.window_data  # registers WindowData
from caffe.layers.window_data import Geometry, window_geometry
from caffe.proto import caffe_pb2 as pb

IMAGES = ["dolphin/image_0001.jpg", "seahorse/image_0001.jpg", "dolphin/image_0042.jpg"]  # the last is grayscale

# (image, label, overlap, x1, y1, x2, y2): with fg_threshold 0.5 and bg_threshold 0.3
A = (0, 1, 0.9, 50, 40, 200, 150)  # foreground
IGNORED = (0, 1, 0.4, 100, 60, 180, 140)  # between the thresholds: never used
B = (0, 0, 0.1, 0, 0, 60, 60)  # background at the top-left corner (context falls outside)
C = (0, 1, 0.6, 10, 10, 120, 100)  # foreground near the corner
D = (1, 2, 0.7, 100, 50, 250, 230)  # foreground, class 2
E = (1, 3, 0.2, 200, 150, 299, 241)  # background (its class index is replaced by 0) at the bottom-right corner
F = (2, 1, 0.8, 20, 30, 150, 200)  # foreground in the grayscale image
ALL = [A, IGNORED, B, C, D, E, F]


def window_file(path: Path, windows: list[tuple], images: list[str] = IMAGES) -> Path:
    lines = []
    for i, name in enumerate(images):
        mine = [w for w in windows if w[0] == i]
        h, w = cv2.imread(str(asset(f"dolphins-and-seahorses/{name}")), cv2.IMREAD_GRAYSCALE).shape
        lines += [f"# {i}", name, "3", str(h), str(w), str(len(mine))]
        lines += [" ".join(map(str, win[1:])) for win in mine]
    path.write_text("\n".join(lines) + "\n")
    return path


def window_net(
    source: Path, batch: int = 8, phase: int = caffe.TEST, transform: str = "", **params: object
) -> caffe.Net:
    fields = {"fg_threshold": 0.5, "bg_threshold": 0.3, "fg_fraction": 0.25, "context_pad": 4, **params}
    text = " ".join(f'{k}: "{v}"' if isinstance(v, str) else f"{k}: {str(v).lower()}" for k, v in fields.items())
    root = str(asset("dolphins-and-seahorses")) + "/"
    net = pb.NetParameter(name="windows")
    text_format.Parse(
        f"""layer {{ name: "win" type: "WindowData" top: "data" top: "label"
              transform_param {{ crop_size: 32 {transform} }}
              window_data_param {{ source: "{source}" root_folder: "{root}" batch_size: {batch} {text} }} }}""",
        net,
    )
    return caffe.Net(net, phase)


def image(index: int) -> np.ndarray:
    return cv2.imread(str(asset(f"dolphins-and-seahorses/{IMAGES[index]}")), cv2.IMREAD_COLOR)


def expected(g: Geometry, img: np.ndarray, mirror: bool = False, mean=None, scale: float = 1.0) -> np.ndarray:
    """Caffe's item: the box warped to width x height, flipped, placed at (pad_h, pad_w) in a zero
    32x32 canvas; (pixel - mean) * scale inside, exactly 0 outside. ``mean``: (3,) values or the
    (3, H, W) mean file, read at its centre offset plus the output position."""
    patch = cv2.resize(img[g.y1 : g.y2 + 1, g.x1 : g.x2 + 1], (g.width, g.height), interpolation=cv2.INTER_LINEAR)
    if mirror:
        patch = patch[:, ::-1]
    v = patch.transpose(2, 0, 1).astype(np.float32)
    if mean is not None and np.ndim(mean) == 1:
        v -= np.asarray(mean, np.float32)[:, None, None]
    elif mean is not None:
        off = (mean.shape[2] - 32) // 2
        v -= mean[:, off + g.pad_h : off + g.pad_h + g.height, off + g.pad_w : off + g.pad_w + g.width]
    out = np.zeros((3, 32, 32), np.float32)
    out[:, g.pad_h : g.pad_h + g.height, g.pad_w : g.pad_w + g.width] = v * np.float32(scale)
    return out


def geometry(win: tuple, square: bool = False, mirror: bool = False, pad: int = 4) -> Geometry:
    rows, cols = image(win[0]).shape[:2]
    return window_geometry(*win[3:], rows, cols, 32, pad, square, mirror)


# ---------------------------------------------------------------------------- geometry
def test_geometry_by_hand():
    """Caffe's arithmetic worked by hand (crop 32, context_pad 4: context scale 32/24 in float)."""
    # A: centre (125.5, 95.5), half sizes 75.5 x 55.5 scaled to 100.67 x 74 -> inside the 300x179 image
    assert geometry(A) == Geometry(25, 22, 226, 170, 32, 32, 0, 0)
    # one pixel lower, A's rows land on halves: round(22.5) = 23 and round(170.5) = 171 (C's round, halves
    # away from zero; rounding halves to even would give 22 and 170)
    assert geometry((0, 1, 0.9, 50, 41, 200, 151)) == Geometry(25, 23, 226, 171, 32, 32, 0, 0)
    # without context or square mode the window itself is warped
    assert geometry(A, pad=0) == Geometry(50, 40, 200, 150, 32, 32, 0, 0)
    # B: expanded to -10..71 on both axes (82 px), clipped to 0..71 (72 px): 72*32/82 -> 28, 10*32/82 -> 4
    assert geometry(B) == Geometry(0, 0, 71, 71, 28, 28, 4, 4)
    assert geometry(B, mirror=True) == Geometry(0, 0, 71, 71, 28, 28, 0, 4)  # the padding is mirrored too
    # E: expanded to 183..317 x 135..257 in a 300x242 image: clipped at the right and bottom
    assert geometry(E) == Geometry(183, 135, 299, 241, 28, 28, 0, 0)
    assert geometry(E, mirror=True) == Geometry(183, 135, 299, 241, 28, 28, 4, 0)
    # C square: 111x91 -> half 55.5 both ways, scaled to 74 around (65.5, 55.5): x -9..140, y -19..130
    # (150 px each), clipped to 141 x 131 px: 141*32/150 -> 30, 131*32/150 -> 28, 9*32/150 -> 2, 19*32/150 -> 4
    assert geometry(C, square=True) == Geometry(0, 0, 140, 130, 30, 28, 2, 4)


# ---------------------------------------------------------------------------- batches
def test_batch_composition_and_crops(tmp_path: Path):
    """bg windows first, then int(8 * 0.25) = 2 fg windows; each item is one candidate's crop."""
    source = window_file(tmp_path / "win.txt", ALL)
    mean = [104.0, 117.0, 123.0]
    net = window_net(source, transform=" ".join(f"mean_value: {m}" for m in mean), scale=0.5)
    assert net.blobs["data"].data.shape == (8, 3, 32, 32) and net.blobs["label"].data.shape == (8,)
    candidates = {w: expected(geometry(w), image(w[0]), mean=mean, scale=0.5) for w in (A, B, C, D, E, F, IGNORED)}
    seen = set()
    for _ in range(16):  # 32 foreground draws from 4 windows: one is missed with probability < 1e-3
        net.forward()
        data, labels = net.blobs["data"].data, net.blobs["label"].data
        np.testing.assert_array_equal(labels[:6], 0)
        assert np.all(labels[6:] > 0)
        for i in range(8):
            match = [w for w, want in candidates.items() if np.allclose(data[i], want, rtol=0, atol=1e-4)]
            assert len(match) == 1, f"item {i} matches {match}"
            w = match[0]
            assert w in ((B, E) if i < 6 else (A, C, D, F))
            assert labels[i] == (0 if i < 6 else w[1])
            seen.add(w)
    assert seen == {A, B, C, D, E, F}  # every usable window drawn, the ignored one never


def test_mean_file_and_scale_keep_padding_zero(tmp_path: Path):
    rng = np.random.default_rng(3)
    mean = rng.uniform(0, 255, (3, 40, 40)).astype(np.float32)  # centre offset (40 - 32) / 2 = 4
    blob = pb.BlobProto()
    blob.shape.dim.extend([1, 3, 40, 40])
    blob.data.extend(mean.ravel().tolist())
    (tmp_path / "mean.binaryproto").write_bytes(blob.SerializeToString())
    source = window_file(tmp_path / "win.txt", [A, B])
    net = window_net(
        source, batch=2, fg_fraction=0.5, scale=0.25, transform=f'mean_file: "{tmp_path / "mean.binaryproto"}"'
    )
    net.forward()
    data = net.blobs["data"].data
    np.testing.assert_array_equal(net.blobs["label"].data, [0, 1])
    np.testing.assert_allclose(data[0], expected(geometry(B), image(0), mean=mean, scale=0.25), atol=1e-5)
    np.testing.assert_allclose(data[1], expected(geometry(A), image(0), mean=mean, scale=0.25), atol=1e-5)
    assert np.all(data[0][:, :4] == 0) and np.all(data[0][:, :, :4] == 0)  # padding: 0, not -mean * scale


def test_square_mode(tmp_path: Path):
    source = window_file(tmp_path / "win.txt", [C, E])
    net = window_net(source, batch=2, fg_fraction=0.5, crop_mode="square")
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data[1], expected(Geometry(0, 0, 140, 130, 30, 28, 2, 4), image(0)))
    np.testing.assert_array_equal(net.blobs["data"].data[0], expected(geometry(E, square=True), image(1)))


def test_mirror_in_train_is_random_and_repeatable(tmp_path: Path):
    source = window_file(tmp_path / "win.txt", [A, B])
    plain = expected(geometry(B), image(0))
    flipped = expected(geometry(B, mirror=True), image(0), mirror=True)
    runs = []
    for _ in range(2):
        caffe.set_random_seed(11)
        net = window_net(source, batch=16, fg_fraction=0.5, phase=caffe.TRAIN, transform="mirror: true")
        net.forward()
        runs.append(net.blobs["data"].data.copy())
    np.testing.assert_array_equal(runs[0], runs[1])
    flips = []
    for item in runs[0][:8]:
        if np.array_equal(item, plain):
            flips.append(False)
        else:
            np.testing.assert_array_equal(item, flipped)
            flips.append(True)
    assert 0 < sum(flips) < 8
    # TEST never mirrors (this project's rule), whatever transform_param.mirror says
    net = window_net(source, batch=16, fg_fraction=0.5, phase=caffe.TEST, transform="mirror: true")
    net.forward()
    for item in net.blobs["data"].data[:8]:
        np.testing.assert_array_equal(item, plain)


def test_cached_images_give_the_same_batches(tmp_path: Path):
    source = window_file(tmp_path / "win.txt", ALL)
    out = []
    for cache in (False, True):
        caffe.set_random_seed(4)
        net = window_net(source, cache_images=cache)
        net.forward()
        out.append((net.blobs["data"].data.copy(), net.blobs["label"].data.copy()))
    np.testing.assert_array_equal(out[0][0], out[1][0])
    np.testing.assert_array_equal(out[0][1], out[1][1])


# ---------------------------------------------------------------------------- fast-forward (solver restore)
def test_fast_forward_continues_as_reading_on(tmp_path: Path):
    """Fast-forwarding by n batches draws on exactly as reading n batches would (windows and mirrors), also
    for a layer that has already read batches (it starts again from its beginning)."""
    source = window_file(tmp_path / "win.txt", ALL)
    nets = []
    for _ in range(2):
        caffe.set_random_seed(6)
        nets.append(window_net(source, batch=4, fg_fraction=0.5, phase=caffe.TRAIN, transform="mirror: true"))
    reader, skipper = nets
    for _ in range(7):
        reader.forward()
    skipper.forward()
    skipper.layer_dict["win"].fast_forward(7)
    for _ in range(3):
        want, got = reader.forward(), skipper.forward()
        np.testing.assert_array_equal(got["data"], want["data"])
        np.testing.assert_array_equal(got["label"], want["label"])


def test_fast_forward_by_a_million_batches_is_one_jump(tmp_path: Path):
    """10^6 batches are skipped in constant time; the batch after them is the one uniforms 2 x 4 x 10^6 ...
    of the layer's generator pick: per window its index in its set (background first) and its mirror coin."""
    source = window_file(tmp_path / "win.txt", ALL)
    net = window_net(source, batch=4, fg_fraction=0.5, phase=caffe.TRAIN, transform="mirror: true")
    layer = net.layer_dict["win"]
    start = time.perf_counter()
    layer.fast_forward(10**6)
    out = net.forward()
    elapsed = time.perf_counter() - start
    rng = np.random.default_rng(layer._seed)
    rng.bit_generator.advance(2 * 4 * 10**6)
    u = rng.random((4, 2))
    pools = [[B, E], [B, E], [A, C, D, F], [A, C, D, F]]  # in window-file order
    for i, pool in enumerate(pools):
        w, flip = pool[int(u[i, 0] * len(pool))], bool(u[i, 1] < 0.5)
        assert out["label"][i] == (w[1] if i >= 2 else 0)
        np.testing.assert_array_equal(out["data"][i], expected(geometry(w, mirror=flip), image(w[0]), mirror=flip))
    assert elapsed < 0.5, f"fast-forward by 10^6 batches took {elapsed:.2f} s"


# ---------------------------------------------------------------------------- errors
HEAD = "# 0\ndolphin/image_0001.jpg\n3\n179\n300\n"


@pytest.mark.parametrize(
    "text, message",
    [
        (HEAD + "1\n1 0.9 1 2 x 4\n", r"win\.txt:7: expected a window's x2 \(int\), got 'x'"),
        ("% 0\ndolphin/image_0001.jpg\n3 179 300\n0\n", r"win\.txt:1: expected '# image_index'"),
        (HEAD + "1\n0 0.9 1 2 3 4\n", r"win\.txt:7: foreground window \(overlap 0.9\) has class_index 0"),
        (HEAD + "2\n1 0.9 1 2 3 4\n", r"win\.txt:7: the window file ends early: expected a window's class_index"),
        (HEAD + "1\n1 0.9 1 2 3\n4\n", r"win\.txt:7: a window line is 'class_index overlap x1 y1 x2 y2'"),
        (HEAD + "1\n1 0.9 10 2 3 4\n", r"win\.txt:7: window \(10, 2, 3, 4\) has x2 < x1"),
        (HEAD + "-1\n", r"win\.txt:6: the number of windows must not be negative"),
        ("\n\n", r"window file .*win\.txt is empty"),
    ],
)
def test_bad_window_file_lines(tmp_path: Path, text: str, message: str):
    (tmp_path / "win.txt").write_text(text)
    with pytest.raises(caffe.DataError, match=message):
        window_net(tmp_path / "win.txt", batch=2, fg_fraction=0.5)


def test_missing_files(tmp_path: Path):
    with pytest.raises(caffe.DataError, match=r"cannot read window file .*nope\.txt"):
        window_net(tmp_path / "nope.txt")
    (tmp_path / "win.txt").write_text("# 0\ndolphin/missing.jpg\n3 10 10\n2\n1 0.9 1 1 5 5\n0 0.1 1 1 5 5\n")
    net = window_net(tmp_path / "win.txt", batch=2, fg_fraction=0.5)
    with pytest.raises(caffe.DataError, match=r"dolphin/missing\.jpg"):
        net.forward()
    with pytest.raises(caffe.DataError, match=r"cannot read image .*dolphin/missing\.jpg"):
        window_net(tmp_path / "win.txt", batch=2, fg_fraction=0.5, cache_images=True)


def test_window_outside_its_image(tmp_path: Path):
    source = window_file(tmp_path / "win.txt", [A, (0, 0, 0.1, 250, 150, 320, 200)])
    net = window_net(source, batch=2, fg_fraction=0.5, context_pad=0)
    with pytest.raises(
        caffe.DataError, match=r"window \(250, 150, 320, 200\) at .*win\.txt:\d+: .*not inside the 300x179"
    ):
        net.forward()


def test_bad_parameters(tmp_path: Path):
    source = window_file(tmp_path / "win.txt", [A])
    with pytest.raises(caffe.DataError, match="has no background window"):
        window_net(source)
    window_net(source, fg_fraction=1.0)  # no background needed: fine
    with pytest.raises(caffe.LayerError, match="crop_mode must be"):
        window_net(source, fg_fraction=1.0, crop_mode="stretch")
    with pytest.raises(caffe.LayerError, match="context_pad 16 leaves nothing"):
        window_net(source, fg_fraction=1.0, context_pad=16)
    with pytest.raises(caffe.LayerError, match="fg_fraction must be in"):
        window_net(source, fg_fraction=1.5)
    with pytest.raises(caffe.LayerError, match="mean_value"):
        window_net(source, fg_fraction=1.0, transform="mean_value: 1 mean_value: 2")
    net = pb.NetParameter()
    text_format.Parse(
        f"""layer {{ name: "w" type: "WindowData" top: "data" top: "label"
              window_data_param {{ source: "{source}" batch_size: 2 crop_size: 32 }} }}""",
        net,
    )
    with pytest.raises(caffe.LayerError, match=r"transform_param\.crop_size must be positive.*deprecated"):
        caffe.Net(net, caffe.TEST)
