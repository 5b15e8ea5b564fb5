"""SSD's AnnotatedData layer and the annotated-record writer, against hand-computed boxes and OpenCV's pixels."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import asset
from google.protobuf import text_format

import caffe
from caffe.data.annotation import Box, annotated_datum, label_map_names, read_label_map, read_voc_xml
from caffe.data.db import item_key, open_db
from caffe.errors import DataError
from caffe.proto import caffe_pb2 as pb

RES10 = "models/res10_ssd_face/res10_300x300_ssd_iter_140000.caffemodel"


def write_db(path: Path, records: list[pb.AnnotatedDatum | bytes]) -> Path:
    with open_db(path, "lmdb", "new") as db:
        txn = db.transaction()
        for i, r in enumerate(records):
            txn.put(item_key(i, f"im{i}"), r if isinstance(r, bytes) else r.SerializeToString())
        txn.commit()
    return path


def net(source: Path, phase: int = caffe.TEST, batch: int = 1, transform: str = "", anno: str = "") -> caffe.Net:
    text = f"""
    layer {{ name: "data" type: "AnnotatedData" top: "data" top: "label"
            data_param {{ source: "{source}" batch_size: {batch} backend: LMDB }}
            transform_param {{ {transform} }} annotated_data_param {{ {anno} }} }}
    """
    return caffe.Net(text_format.Parse(text, pb.NetParameter()), phase)


def gradient(h: int = 100, w: int = 100) -> np.ndarray:
    """B = column, G = row, R = 7: every pixel tells where it was."""
    img = np.empty((h, w, 3), np.uint8)
    img[:, :, 0] = np.arange(w)[None, :]
    img[:, :, 1] = np.arange(h)[:, None]
    img[:, :, 2] = 7
    return img


def chw(img: np.ndarray) -> np.ndarray:
    return img.transpose(2, 0, 1).astype(np.float32)


def rows(label: np.ndarray) -> np.ndarray:
    assert label.ndim == 4 and label.shape[:2] == (1, 1) and label.shape[3] == 8
    return label[0, 0]


# ---------------------------------------------------------------------------- the label blob
def test_label_rows_for_known_boxes(tmp_path: Path):
    a = annotated_datum(gradient(), [(3, 0.1, 0.2, 0.3, 0.4), (1, 0.5, 0.5, 0.9, 1.0, 1), (3, 0.0, 0.0, 1.0, 0.5)])
    b = annotated_datum(gradient(50, 60), [Box(2, 0.25, 0.25, 0.75, 0.75)], encoding="png")
    n = net(write_db(tmp_path / "db", [a, b]), batch=1)
    assert n.blobs["label"].shape == (1, 1, 3, 8)
    first = rows(n.forward()["label"])
    expect = [
        [0, 3, 0, 0.1, 0.2, 0.3, 0.4, 0],  # grouped by class in order of appearance, instances counted per class
        [0, 3, 1, 0.0, 0.0, 1.0, 0.5, 0],
        [0, 1, 0, 0.5, 0.5, 0.9, 1.0, 1],
    ]
    np.testing.assert_allclose(first, expect, rtol=0, atol=1e-7)
    out = n.forward()
    np.testing.assert_array_equal(out["data"][0], chw(gradient(50, 60)))  # PNG: lossless
    np.testing.assert_allclose(rows(out["label"]), [[0, 2, 0, 0.25, 0.25, 0.75, 0.75, 0]])


def test_batch_rows_carry_item_ids_and_no_box_gives_minus_one_row(tmp_path: Path):
    boxed = annotated_datum(gradient(), [(1, 0.1, 0.1, 0.2, 0.2)])
    empty = annotated_datum(gradient(), [])
    n = net(write_db(tmp_path / "db", [empty, boxed, empty, empty]), batch=2)
    np.testing.assert_allclose(rows(n.forward()["label"]), [[1, 1, 0, 0.1, 0.1, 0.2, 0.2, 0]], atol=1e-7)
    label = n.forward()["label"]
    assert label.shape == (1, 1, 1, 8) and (label == -1).all()


def test_records_without_annotation_type_give_the_datum_labels(tmp_path: Path):
    records = []
    for i in range(2):
        r = annotated_datum(gradient(), [(1, 0.1, 0.1, 0.2, 0.2)], label=5 + i)
        r.ClearField("type")
        records.append(r)
    n = net(write_db(tmp_path / "db", records), batch=2)
    assert n.blobs["label"].shape == (2,)
    np.testing.assert_array_equal(n.forward()["label"], [5, 6])


# ---------------------------------------------------------------------------- transformations
def test_mean_scale_and_warp_resize_equal_opencv(tmp_path: Path):
    img = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 256, (40, 70, 3), dtype=np.uint8), (5, 5), 0)
    src = write_db(tmp_path / "db", [annotated_datum(img, [(1, 0.2, 0.2, 0.6, 0.8)], encoding="png")])
    resize = "resize_param { resize_mode: WARP height: 32 width: 24 interp_mode: CUBIC interp_mode: AREA }"
    n = net(src, transform=f"mean_value: 10 mean_value: 20 mean_value: 30 scale: 0.5 {resize}")
    out = n.forward()
    ref = cv2.resize(img, (24, 32), interpolation=cv2.INTER_CUBIC)  # TEST: the first interp_mode listed
    expect = (chw(ref) - np.array([10, 20, 30], np.float32)[:, None, None]) * np.float32(0.5)
    np.testing.assert_allclose(out["data"][0], expect, rtol=0, atol=1e-5)
    np.testing.assert_allclose(rows(out["label"])[0, 3:7], [0.2, 0.2, 0.6, 0.8], atol=1e-7)  # WARP: same fractions


def test_fit_large_size_and_pad_resize(tmp_path: Path):
    img = gradient(50, 100)  # aspect 2 into 40 x 40: 40 x 20 image, 10 rows of padding above and below
    src = write_db(tmp_path / "db", [annotated_datum(img, [(1, 0.0, 0.0, 1.0, 1.0)])])
    resize = "resize_param { resize_mode: FIT_LARGE_SIZE_AND_PAD height: 40 width: 40 pad_value: 9 }"
    out = net(src, transform=resize).forward()
    ref = cv2.resize(img, (40, 20), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(out["data"][0][:, 10:30], chw(ref))
    assert (out["data"][0][:, :10] == 9).all() and (out["data"][0][:, 30:] == 9).all()
    np.testing.assert_allclose(rows(out["label"])[0, 3:7], [0.0, 0.25, 1.0, 0.75], atol=1e-6)


def test_mirror_flips_image_and_box_x_exactly(tmp_path: Path):
    img = gradient(30, 40)
    box = [0.1, 0.2, 0.35, 0.9]
    src = write_db(tmp_path / "db", [annotated_datum(img, [(1, *box)])])
    caffe.set_random_seed(3)
    n = net(src, caffe.TRAIN, batch=2, transform="mirror: true")
    seen = set()
    for _ in range(4):
        out = n.forward()
        for k, row in zip(range(2), rows(out["label"])):
            flipped = not np.array_equal(out["data"][k], chw(img))
            if flipped:
                np.testing.assert_array_equal(out["data"][k], chw(img[:, ::-1]))
            expect = [1 - box[2], box[1], 1 - box[0], box[3]] if flipped else box
            assert row[0] == k
            np.testing.assert_allclose(row[3:7], expect, atol=1e-6)
            seen.add(flipped)
    assert seen == {True, False}


def test_center_crop_with_emit_center_drops_a_box_whose_centre_is_outside(tmp_path: Path):
    boxes = [(1, 0.2, 0.3, 0.5, 0.6), (2, 0.0, 0.0, 0.3, 0.3)]  # centres (0.35, 0.45) in, (0.15, 0.15) out
    src = write_db(tmp_path / "db", [annotated_datum(gradient(), boxes)])
    window = "crop_size: 50"  # TEST: the centre 50 x 50, the window [0.25, 0.75]^2
    kept = rows(net(src, transform=f"{window} emit_constraint {{ emit_type: CENTER }}").forward()["label"])
    np.testing.assert_allclose(kept, [[0, 1, 0, 0.0, 0.1, 0.5, 0.7, 0]], atol=1e-6)
    both = rows(net(src, transform=window).forward()["label"])  # no constraint: any overlap, clipped
    np.testing.assert_allclose(both[:, 3:7], [[0.0, 0.1, 0.5, 0.7], [0.0, 0.0, 0.1, 0.1]], atol=1e-6)
    overlap = rows(net(src, transform=f"{window} emit_constraint {{ emit_type: MIN_OVERLAP emit_overlap: 0.5 }}")
                   .forward()["label"])  # fmt: skip
    assert overlap[:, 1].tolist() == [1]  # 1/3 of box 1's area is cut off, 8/9 of box 2's


def test_crop_h_and_crop_w_cut_the_centre_in_test(tmp_path: Path):
    src = write_db(tmp_path / "db", [annotated_datum(gradient(), [(1, 0.3, 0.4, 0.5, 0.9)])])
    out = net(src, transform="crop_h: 40 crop_w: 60").forward()  # rows 30..69, columns 20..79
    np.testing.assert_array_equal(out["data"][0], chw(gradient()[30:70, 20:80]))
    np.testing.assert_allclose(rows(out["label"])[0, 3:7], [(0.3 - 0.2) / 0.6, (0.4 - 0.3) / 0.4, 0.5, 1.0], atol=1e-6)


def test_sampled_crop_moves_boxes_as_computed_by_hand(tmp_path: Path):
    # Crops of half the side; where each one lies is read back from the pixels (B = column, G = row).
    img = gradient(200, 200)
    box = (0.3, 0.35, 0.6, 0.55)
    src = write_db(tmp_path / "db", [annotated_datum(img, [(1, *box)])])
    sampler = """batch_sampler { sampler { min_scale: 0.5 max_scale: 0.5 }
                 sample_constraint { min_object_coverage: 0.9 } max_trials: 50 max_sample: 1 }"""
    resize = "resize_param { height: 100 width: 100 interp_mode: NEAREST }"
    caffe.set_random_seed(1)
    n = net(src, caffe.TRAIN, transform=resize, anno=sampler)
    corners = set()
    for _ in range(5):
        out = n.forward()
        left, top = int(out["data"][0, 0, 0, 0]), int(out["data"][0, 1, 0, 0])
        row = rows(out["label"])[0]
        # the crop starts within a pixel after (left, top) and spans 0.5; the box lies 90 % inside it
        lo = np.clip((np.array(box) - np.array([left + 1, top + 1] * 2) / 200) / 0.5, 0, 1)
        hi = np.clip((np.array(box) - np.array([left, top] * 2) / 200) / 0.5, 0, 1)
        assert np.all(row[3:7] >= lo - 1e-6) and np.all(row[3:7] <= hi + 1e-6), (left, top, row)
        assert left <= 100 and top <= 100
        corners.add((left, top))
    assert len(corners) > 1


def test_unmet_sampler_constraint_keeps_the_whole_image(tmp_path: Path):
    src = write_db(tmp_path / "db", [annotated_datum(gradient(), [(1, 0.1, 0.1, 0.2, 0.2)])])
    sampler = (
        "batch_sampler { sampler { min_scale: 0.3 max_scale: 0.4 } sample_constraint { min_jaccard_overlap: 0.99 } }"
    )
    out = net(src, caffe.TRAIN, anno=sampler).forward()
    np.testing.assert_array_equal(out["data"][0], chw(gradient()))
    np.testing.assert_allclose(rows(out["label"])[0, 3:7], [0.1, 0.1, 0.2, 0.2], atol=1e-7)


def test_expansion_keeps_boxes_on_the_same_pixels(tmp_path: Path):
    img = np.full((60, 80, 3), 100, np.uint8)
    img[12:36, 20:52] = 255  # the object, exactly the box
    src = write_db(tmp_path / "db", [annotated_datum(img, [(1, 20 / 80, 12 / 60, 52 / 80, 36 / 60)])])
    expand = "expand_param { prob: 1 max_expand_ratio: 3 } resize_param { height: 240 width: 240 interp_mode: NEAREST }"
    caffe.set_random_seed(2)
    n = net(src, caffe.TRAIN, transform=f"mean_value: 40 {expand}")
    sizes = set()
    for _ in range(4):
        out = n.forward()
        x0, y0, x1, y1 = rows(out["label"])[0, 3:7] * 240
        plane = out["data"][0, 0]
        assert (plane[int(y0) + 2 : int(y1) - 2, int(x0) + 2 : int(x1) - 2] == 255 - 40).all()
        ring = np.ones_like(plane, bool)
        ring[int(y0) - 2 : int(y1) + 3, int(x0) - 2 : int(x1) + 3] = False
        assert not (plane[ring] == 255 - 40).any()
        assert (plane == 0).any()  # the canvas: the mean value, 0 once subtracted
        sizes.add(round(float(x1 - x0)))
    assert len(sizes) > 1  # different zoom-outs


def test_an_expansion_beyond_the_blob_budget_is_a_clean_error(tmp_path: Path):
    """max_expand_ratio is bounded only by the prototxt: a canvas past the blob budget is refused, not allocated."""
    src = write_db(tmp_path / "db", [annotated_datum(np.zeros((60, 80, 3), np.uint8), [(1, 0.1, 0.1, 0.5, 0.5)])])
    expand = "expand_param { prob: 1 max_expand_ratio: 100000 } resize_param { height: 32 width: 32 }"
    caffe.set_random_seed(0)
    with pytest.raises(caffe.CaffeError, match=r"expansion canvas .* budget for one blob"):
        net(src, caffe.TRAIN, transform=expand).forward()


def test_distortion_changes_pixels_not_boxes(tmp_path: Path):
    src = write_db(tmp_path / "db", [annotated_datum(gradient(), [(1, 0.1, 0.1, 0.2, 0.2)])])
    distort = "distort_param { brightness_prob: 1 brightness_delta: 32 hue_prob: 1 hue_delta: 18 }"
    caffe.set_random_seed(4)
    out = net(src, caffe.TRAIN, transform=distort).forward()
    assert not np.array_equal(out["data"][0], chw(gradient()))
    np.testing.assert_allclose(rows(out["label"])[0, 3:7], [0.1, 0.1, 0.2, 0.2], atol=1e-7)


@pytest.mark.parametrize("kind", ["brightness", "contrast"])
def test_brightness_shifts_and_contrast_scales_every_pixel_alike(tmp_path: Path, kind: str):
    img = np.random.default_rng(1).integers(40, 210, (20, 30, 3), dtype=np.uint8)
    src = write_db(tmp_path / "db", [annotated_datum(img, [(1, 0.1, 0.1, 0.2, 0.2)])])
    distort = {"brightness": "brightness_prob: 1 brightness_delta: 32",
               "contrast": "contrast_prob: 1 contrast_lower: 0.5 contrast_upper: 1.5"}[kind]  # fmt: skip
    caffe.set_random_seed(5)
    n = net(src, caffe.TRAIN, transform=f"distort_param {{ {distort} }}")
    changes = set()
    for _ in range(3):
        out = n.forward()["data"][0].transpose(1, 2, 0).astype(np.float64)
        if kind == "brightness":  # one integer shift within +-32 (no pixel saturates)
            shift = np.unique(out - img)
            assert len(shift) == 1 and abs(shift[0]) <= 32
            changes.add(float(shift[0]))
        else:  # one factor in [0.5, 1.5], each pixel rounded to the nearest integer (saturated at 255)
            factor = float(np.median((out / img)[img > 100]))
            assert 0.5 - 0.01 <= factor <= 1.5 + 0.01
            np.testing.assert_allclose(out, np.minimum(np.rint(img * factor), 255), atol=1.0)
            changes.add(round(factor, 3))
    assert len(changes) > 1


TRAIN_ALL = """mirror: true mean_value: 104 mean_value: 117 mean_value: 123
    resize_param { resize_mode: WARP height: 64 width: 64 interp_mode: LINEAR interp_mode: AREA interp_mode: CUBIC }
    emit_constraint { emit_type: CENTER }
    distort_param { brightness_prob: 0.5 brightness_delta: 32 contrast_prob: 0.5 contrast_lower: 0.5
                    contrast_upper: 1.5 hue_prob: 0.5 hue_delta: 18 saturation_prob: 0.5 saturation_lower: 0.5
                    saturation_upper: 1.5 random_order_prob: 0.5 }
    expand_param { prob: 0.5 max_expand_ratio: 4 }"""
SAMPLERS = """batch_sampler { max_sample: 1 max_trials: 1 }
    batch_sampler { sampler { min_scale: 0.3 max_scale: 1 min_aspect_ratio: 0.5 max_aspect_ratio: 2 }
                    sample_constraint { min_jaccard_overlap: 0.3 } max_sample: 1 max_trials: 50 }"""


def augmented_db(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (48 + 8 * i, 64, 3), dtype=np.uint8) for i in range(3)]
    records = [annotated_datum(img, [(1, 0.2, 0.2, 0.7, 0.6)], encoding="jpg") for img in images]
    return write_db(tmp_path / "db", records)


def test_seeded_train_runs_repeat_and_test_phase_is_deterministic(tmp_path: Path):
    src = augmented_db(tmp_path)

    def run(seed: int, phase: int) -> list[tuple[np.ndarray, np.ndarray]]:
        caffe.set_random_seed(seed)
        n = net(src, phase, batch=2, transform=TRAIN_ALL, anno=SAMPLERS)
        return [(o["data"].copy(), o["label"].copy()) for o in (n.forward() for _ in range(3))]

    a, b, c = run(7, caffe.TRAIN), run(7, caffe.TRAIN), run(8, caffe.TRAIN)
    for (da, la), (db, lb) in zip(a, b):
        np.testing.assert_array_equal(da, db)
        np.testing.assert_array_equal(la, lb)
    assert any(not np.array_equal(x[0], y[0]) for x, y in zip(a, c))
    t1, t2 = run(7, caffe.TEST), run(8, caffe.TEST)
    for (d1, l1), (d2, l2) in zip(t1, t2):
        np.testing.assert_array_equal(d1, d2)
        np.testing.assert_array_equal(l1, l2)
        np.testing.assert_allclose(rows(l1)[:, 3:7], [[0.2, 0.2, 0.7, 0.6]] * 2, atol=1e-6)  # no random operation


def test_fast_forward_gives_what_reading_on_gives(tmp_path: Path):
    """A resumed training's layer skips n batches without reading them: the same records and random draws."""
    src = augmented_db(tmp_path)

    def fresh() -> caffe.Net:
        caffe.set_random_seed(11)
        return net(src, caffe.TRAIN, batch=2, transform=TRAIN_ALL, anno=SAMPLERS)

    reader = fresh()
    for _ in range(4):
        reader.forward()
    want = [(o["data"].copy(), o["label"].copy()) for o in (reader.forward() for _ in range(2))]
    skipper = fresh()
    skipper.layer_dict["data"].fast_forward(4)
    for data, label in want:
        got = skipper.forward()
        np.testing.assert_array_equal(got["data"], data)
        np.testing.assert_array_equal(got["label"], label)


# ---------------------------------------------------------------------------- refusals and bad records
@pytest.mark.parametrize(
    ("transform", "anno", "words"),
    [
        ("noise_param { prob: 0.5 }", "", "noise_param"),
        ("resize_param { resize_mode: FIT_SMALL_SIZE height: 30 width: 30 }", "", "FIT_SMALL_SIZE"),
        ("crop_h: 10", "", "crop_h and crop_w together"),
        ("expand_param { max_expand_ratio: 1 }", "", "max_expand_ratio"),
        ("", "batch_sampler { sampler { min_scale: 0 } }", "batch_sampler[0]"),
    ],
)
def test_unsupported_options_are_refused_at_set_up(tmp_path: Path, transform: str, anno: str, words: str):
    src = write_db(tmp_path / "db", [annotated_datum(gradient(), [(1, 0.1, 0.1, 0.2, 0.2)])])
    with pytest.raises(DataError, match="layer 'data' \\(AnnotatedData\\)") as e:
        net(src, caffe.TRAIN, transform=transform, anno=anno)
    assert words in str(e.value)


def test_bad_records_are_errors_naming_the_record(tmp_path: Path):
    good = annotated_datum(gradient(), [(1, 0.1, 0.1, 0.2, 0.2)])
    untyped = annotated_datum(gradient(), [])
    untyped.ClearField("type")
    n = net(write_db(tmp_path / "db", [good, b"\xff\xff not a message", untyped]))
    n.forward()
    with pytest.raises(DataError, match=r"db record '00000001_im1': not a valid AnnotatedDatum"):
        n.forward()
    n = net(write_db(tmp_path / "db2", [good, untyped]))
    n.forward()
    with pytest.raises(DataError, match=r"record '00000001_im1': .*no annotation type"):
        n.forward()


# ---------------------------------------------------------------------------- the res10 face detector's training net
def test_res10_training_data_layer_builds_and_runs(tmp_path: Path):
    from caffe.protoio import read_net_param_binary

    trained = read_net_param_binary(asset(RES10))
    layer = next(lay for lay in trained.layer if lay.type == "AnnotatedData")
    param = pb.NetParameter()
    param.layer.add().CopyFrom(layer)
    param.layer[0].data_param.source = str(augmented_db(tmp_path))
    param.layer[0].data_param.batch_size = 2
    caffe.set_random_seed(0)
    n = caffe.Net(param, caffe.TRAIN)
    for _ in range(2):
        out = n.forward()
        assert out["data"].shape == (2, 3, 300, 300)
        table = rows(out["label"])
        if (table == -1).all():
            continue
        assert set(table[:, 0].tolist()) <= {0.0, 1.0} and (table[:, 1] == 1).all()
        assert ((table[:, 3:7] >= 0) & (table[:, 3:7] <= 1)).all()
        assert (table[:, 3] <= table[:, 5]).all() and (table[:, 4] <= table[:, 6]).all()


def test_res10_whole_training_net_trains_on_an_annotated_database(tmp_path: Path):
    """AnnotatedData feeding the fork's MultiBoxLoss: the detector's embedded training net, with its weights, gives
    a finite loss and finite gradients."""
    from caffe.protoio import read_net_param_binary

    param = read_net_param_binary(asset(RES10))
    for layer in param.layer:
        layer.ClearField("blobs")
    param.layer[0].data_param.source = str(augmented_db(tmp_path))
    param.layer[0].data_param.batch_size = 2
    caffe.set_random_seed(0)
    n = caffe.Net(param, caffe.TRAIN, weights=str(asset(RES10)))
    loss = float(n.forward()["mbox_loss"])
    assert np.isfinite(loss) and loss > 0
    n.backward()
    diffs = [blobs[0].diff for blobs in n.params.values()]
    assert all(np.isfinite(d).all() for d in diffs) and any(np.abs(d).sum() > 0 for d in diffs)


# ---------------------------------------------------------------------------- the writer
def test_voc_xml_and_label_map(tmp_path: Path):
    (tmp_path / "labelmap.prototxt").write_text(
        'item { name: "none_of_the_above" label: 0 } item { name: "cat" label: 8 } item { name: "dog" label: 12 }'
    )
    names = label_map_names(read_label_map(tmp_path / "labelmap.prototxt"))
    assert names == {"none_of_the_above": 0, "cat": 8, "dog": 12}
    (tmp_path / "a.xml").write_text(
        "<annotation><size><width>200</width><height>100</height><depth>3</depth></size>"
        "<object><name>dog</name><difficult>1</difficult><bndbox><xmin>20</xmin><ymin>10</ymin>"
        "<xmax>120</xmax><ymax>60</ymax></bndbox></object>"
        "<object><name>cat</name><bndbox><xmin>0</xmin><ymin>0</ymin><xmax>200</xmax><ymax>100</ymax></bndbox>"
        "</object></annotation>"
    )
    boxes, width, height = read_voc_xml(tmp_path / "a.xml", names)
    assert (width, height) == (200, 100)
    assert boxes == [Box(12, 0.1, 0.1, 0.6, 0.6, True), Box(8, 0.0, 0.0, 1.0, 1.0, False)]
    (tmp_path / "b.xml").write_text("<annotation><size><width>2</width><height>1</height></size>"
                                    "<object><name>horse</name></object></annotation>")  # fmt: skip
    with pytest.raises(DataError, match=r"b.xml: unknown class name 'horse'"):
        read_voc_xml(tmp_path / "b.xml", names)


VOC = """<annotation><size><width>{w}</width><height>{h}</height></size>{objects}</annotation>"""
OBJECT = "<object><name>{name}</name><difficult>{d}</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>" \
         "<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"  # fmt: skip


def test_create_annoset_writes_what_the_layer_reads(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    from caffe.tools.cli import main

    (tmp_path / "labelmap.prototxt").write_text('item { name: "background" label: 0 } item { name: "face" label: 1 }')
    images = [gradient(40, 60), gradient(30, 30)]
    objects = [
        [dict(name="face", d=0, x0=6, y0=4, x1=30, y1=20), dict(name="face", d=1, x0=30, y1=40, x1=60, y0=0)],
        [],
    ]
    lines = []
    for i, (img, objs) in enumerate(zip(images, objects)):
        cv2.imwrite(str(tmp_path / f"im{i}.png"), img)
        h, w = img.shape[:2]
        (tmp_path / f"im{i}.xml").write_text(VOC.format(w=w, h=h, objects="".join(OBJECT.format(**o) for o in objs)))
        lines.append(f"im{i}.png im{i}.xml")
    (tmp_path / "list.txt").write_text("\n".join(lines))
    db = tmp_path / "annoset"
    args = [
        "--label_map_file",
        str(tmp_path / "labelmap.prototxt"),
        "--encoded",
        f"{tmp_path}/",
        str(tmp_path / "list.txt"),
    ]
    assert main(["create_annoset", *args, str(db)]) == 0
    n = net(db)
    out = n.forward()
    np.testing.assert_array_equal(out["data"][0], chw(images[0]))
    expect = [[0, 1, 0, 0.1, 0.1, 0.5, 0.5, 0], [0, 1, 1, 0.5, 0.0, 1.0, 1.0, 1]]
    np.testing.assert_allclose(rows(out["label"]), expect, atol=1e-7)
    out = n.forward()
    assert out["data"].shape == (1, 3, 30, 30) and (out["label"] == -1).all()
    assert main(["create_annoset", "--anno_type=classification", *args, str(tmp_path / "x")]) == 1
    assert "--anno_type: only 'detection'" in caplog.text and not (tmp_path / "x").exists()


def test_sample_constraints_by_hand():
    """The three kinds of bound, against two objects: jaccard overlap, the part of the window a box covers, the
    part of a box the window covers; the first kind set decides; any one object suffices."""
    from caffe.data import bbox

    windows = np.array([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    objects = np.array([[0.0, 0.0, 0.25, 0.5], [0.6, 0.6, 0.8, 0.8]])
    # jaccard: window 0 / object 0 = 0.125 / 0.25 = 0.5; window 1 / object 1 = 0.04 / 0.25 = 0.16; window 2:
    # 0.125 and 0.04 of 1
    c = pb.SampleConstraint(min_jaccard_overlap=0.5)
    assert bbox.constraint_mask(windows, objects, c).tolist() == [True, False, False]
    c = pb.SampleConstraint(min_jaccard_overlap=0.1, max_jaccard_overlap=0.2)
    assert bbox.constraint_mask(windows, objects, c).tolist() == [False, True, True]
    # sample coverage (window's part covered): 0.5, 0.16, 0.125 at best
    c = pb.SampleConstraint(min_sample_coverage=0.15)
    assert bbox.constraint_mask(windows, objects, c).tolist() == [True, True, False]
    # object coverage (object's part inside the window): 1 for every window that holds an object whole
    c = pb.SampleConstraint(min_object_coverage=1.0, min_jaccard_overlap=0.45)  # jaccard is set: it decides
    assert bbox.constraint_mask(windows, objects, c).tolist() == [True, False, False]
    c = pb.SampleConstraint(min_object_coverage=1.0)
    assert bbox.constraint_mask(windows, objects, c).tolist() == [True, True, True]
    assert bbox.constraint_mask(windows, objects[:0], c).tolist() == [False, False, False]  # no object: none
    assert bbox.constraint_mask(windows, objects[:0], pb.SampleConstraint()).all()  # no bound: all


def test_a_sampler_keeps_the_first_max_sample_crops_that_pass():
    from caffe.data import bbox

    sampler = pb.BatchSampler(max_trials=200, max_sample=3)
    sampler.sampler.min_scale, sampler.sampler.max_scale = 0.3, 1.0
    sampler.sample_constraint.min_jaccard_overlap = 0.5
    objects = np.array([[0.2, 0.2, 0.6, 0.7]])
    kept = bbox.sample_windows([sampler], objects, np.random.default_rng(0))
    drawn = bbox.sample_candidates(sampler.sampler, 200, np.random.default_rng(0))
    passing = [w for w in drawn if bbox.jaccard_matrix(w[None], objects)[0, 0] >= 0.5]
    assert len(passing) > 3 and np.array_equal(np.array(kept), np.array(passing[:3]))
    assert all(0 <= v <= 1 for w in drawn for v in w)


@pytest.mark.parametrize("label_type", ["json", "txt"])
def test_create_annoset_reads_the_forks_json_and_txt_labels(tmp_path: Path, label_type: str):
    """The fork's other annotation formats, boxes normalized by hand: its per-image JSON (COCO's x, y, width,
    height; category names through the label map; iscrowd as difficult) and plain ``label x0 y0 x1 y1`` text.
    An image listed with an annotation file that does not exist is stored without boxes (a background image)."""
    import json

    from caffe.data.db import open_db
    from caffe.tools.cli import main

    (tmp_path / "labelmap.prototxt").write_text('item { name: "none" label: 0 } item { name: "cat" label: 3 }')
    cv2.imwrite(str(tmp_path / "a.png"), gradient(40, 80))  # height 40, width 80
    cv2.imwrite(str(tmp_path / "b.png"), gradient(20, 20))
    if label_type == "json":
        doc = {
            "image": {"height": 40, "width": 80},
            "annotation": [
                {"category_id": "cat", "bbox": [8, 4, 32, 16], "iscrowd": 0},
                {"category_id": "cat", "bbox": [40, 0, 40, 40], "iscrowd": 1},
            ],
        }
        (tmp_path / "a.json").write_text(json.dumps(doc))
    else:
        (tmp_path / "a.txt").write_text("3 8 4 40 20\n3 40 0 80 40\n")
    (tmp_path / "list.txt").write_text(f"a.png a.{label_type}\nb.png b.{label_type}\n")
    args = ["--label_type", label_type, "--encoded", f"{tmp_path}/", str(tmp_path / "list.txt"), str(tmp_path / "db")]
    if label_type == "json":
        args = ["--label_map_file", str(tmp_path / "labelmap.prototxt"), *args]
    assert main(["create_annoset", *args]) == 0
    with open_db(tmp_path / "db", "lmdb", "read") as db, db.cursor() as cursor:
        records = [pb.AnnotatedDatum.FromString(value) for _, value in cursor]
    (group,) = records[0].annotation_group
    boxes = [
        (a.instance_id, a.bbox.xmin, a.bbox.ymin, a.bbox.xmax, a.bbox.ymax, a.bbox.difficult) for a in group.annotation
    ]
    crowd = label_type == "json"
    assert group.group_label == 3
    assert boxes == [
        (0, pytest.approx(0.1), pytest.approx(0.1), pytest.approx(0.5), pytest.approx(0.5), False),
        (1, pytest.approx(0.5), 0.0, 1.0, 1.0, crowd),
    ]
    assert len(records) == 2 and not records[1].annotation_group and records[1].type == pb.AnnotatedDatum.BBOX


def test_annotation_readers_refuse_non_finite_and_deep_input(tmp_path: Path):
    """Found by the fuzz targets voc_xml and annotation_json: an infinite or NaN size, and JSON nested past
    Python's recursion limit, are DataErrors naming the file (were OverflowError, ValueError, RecursionError)."""
    from caffe.data.annotation import read_json_boxes, read_voc_xml

    for size in ("inf", "nan"):
        (tmp_path / "a.xml").write_text(VOC.format(w=size, h=10, objects=""))
        with pytest.raises(caffe.DataError, match=r"a\.xml: <size/width> is .*not a finite number"):
            read_voc_xml(tmp_path / "a.xml", {})
    for text in ('{"image": {"height": 1e999, "width": 5}, "annotation": []}', "[" * 100_000 + "]" * 100_000):
        (tmp_path / "a.json").write_text(text)
        with pytest.raises(caffe.DataError, match=r"a\.json: not a valid JSON annotation file"):
            read_json_boxes(tmp_path / "a.json", {}, (10, 10))
