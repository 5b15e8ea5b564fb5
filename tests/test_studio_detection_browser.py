"""The studio's object-detection workflow in a real headless browser (the system Chromium driven by Playwright):
photos with Pascal VOC boxes -> "New Object Detection Dataset" -> "New Object Detection Model" fine-tuning an
uploaded SSD face detector -> mean AP on the model page -> the boxes on an uploaded image. Screenshots of each
page go to the test artifacts (see ``studio_e2e_helpers``)."""

from __future__ import annotations

import shutil
import sys

import cv2
import pytest
from conftest import ROOT, asset
from studio_e2e_helpers import Shots, artifacts_dir, browser_page, create_and_finish, paste
from test_detectnet import TWO_CLASSES

from caffe.studio.app import create_app, serve_in_thread

SSD_DEPLOY = "models/res10_ssd_face_prototxt_only/deploy.prototxt"
SSD_WEIGHTS = "models/res10_ssd_face/res10_300x300_ssd_iter_140000.caffemodel"
FACES = {  # the res10 detector's own boxes (confidence > 0.5), in pixels
    "test1.jpg": [(297, 87, 363, 170), (89, 18, 155, 107)],
    "test2.jpg": [(192, 62, 346, 268)],
}


def voc_xml(name: str, width: int, height: int, boxes: list[tuple[int, int, int, int]]) -> str:
    objects = "".join(
        f"<object><name>face</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax>"
        "</bndbox></object>"
        for x0, y0, x1, y1 in boxes
    )
    return f"<annotation><filename>{name}</filename><size><width>{width}</width><height>{height}</height>" + (
        f"<depth>3</depth></size>{objects}</annotation>"
    )


@pytest.fixture
def studio(tmp_path):
    """A studio served in-process; the photos and their VOC files in a data root."""
    faces = tmp_path / "data" / "faces"
    faces.mkdir(parents=True)
    for name, boxes in FACES.items():
        shutil.copy(asset(f"models/mtcnn_face_caffe/{name}"), faces / name)
        h, w = cv2.imread(str(faces / name)).shape[:2]
        (faces / name).with_suffix(".xml").write_text(voc_xml(name, w, h, boxes))
    jobs = tmp_path / "jobs"
    app = create_app({"jobs_dir": jobs, "devices": ["cpu"], "data_roots": [tmp_path / "data"]})
    url, stop = serve_in_thread(app.state.studio.config, app)
    try:
        yield url, jobs, faces
    finally:
        stop()


def _upload_res10(url: str) -> str:
    sys.path.insert(0, str(ROOT / "examples" / "studio"))
    try:
        from guide_attempts import StudioAPI
    finally:
        sys.path.pop(0)
    api = StudioAPI(url)
    try:
        return api.upload_pretrained(
            "res10 faces", weights=asset(SSD_WEIGHTS), deploy=asset(SSD_DEPLOY), mean_values="104,117,123",
            width=300, height=300,
        )  # fmt: skip
    finally:
        api.close()


@pytest.mark.slow
def test_object_detection_walkthrough_in_a_browser(studio):
    url, jobs, faces = studio
    pretrained = _upload_res10(url)
    shot = Shots(artifacts_dir() / "detection")
    shot.folder.mkdir(parents=True, exist_ok=True)
    with browser_page(shot.folder) as (page, js_errors):
        # ---- the dataset: the photos and their VOC files, validated on themselves
        page.goto(url + "/")
        page.click("#new-detection-dataset")
        page.wait_for_selector("#detection-dataset-form")
        page.fill("#train-image-folder", str(faces))
        page.fill("#val-image-folder", str(faces))
        page.fill("#dataset-name", "faces")
        shot(page, "detection dataset form")
        dataset_id = create_and_finish(page, jobs, "dataset", 90)
        assert page.text_content("#count-train") == "2" and page.text_content("#count-val") == "2"
        assert page.text_content("#boxes-train-1") == "3"  # class 1, face: three boxes
        shot(page, "detection dataset done")

        # ---- the model: fine-tune the uploaded detector for one epoch (one iteration of two images)
        page.goto(url + "/")
        page.click("#tab-models")
        page.click("#new-detection-model")
        page.wait_for_selector("#model-form")
        assert page.is_checked("#method-pretrained") and not page.locator("#method-standard").count()
        page.select_option("#model-dataset", dataset_id)
        page.select_option("#model-pretrained-networks", pretrained)
        for field, value in (("train-epochs", "1"), ("batch-size", "2"), ("learning-rate", "0.0001"),
                             ("random-seed", "1"), ("name", "faces again")):  # fmt: skip
            page.fill(f"#model-{field}", value)
        shot(page, "detection model form")
        create_and_finish(page, jobs, "model", 240)
        assert "detection_eval" in page.content()  # the mean AP's chart series
        shot(page, "detection model done")

        # ---- the fine-tuned detector's boxes on an uploaded photo
        page.click("#model-classify")
        page.wait_for_selector("#classify-one-form")
        page.set_input_files("#image-file", str(faces / "test1.jpg"))
        page.click("#classify-one-submit")
        page.wait_for_selector("#detections")
        rows = page.locator("#detections tr.detection")
        assert rows.count() == 2, page.inner_text("#detections")
        assert all("face" in text for text in rows.all_text_contents())
        assert page.evaluate("() => document.getElementById('detected-image').naturalWidth") > 0
        shot(page, "detections")
        assert not js_errors, js_errors
    assert all(path.stat().st_size > 10_000 for path in shot.paths)


@pytest.mark.slow
def test_detectnet_walkthrough_in_a_browser(tmp_path):
    """DIGITS' DetectNet tutorial in miniature: KITTI folders -> a dataset stored for DetectNet, padded ->
    NVIDIA/caffe's cars-and-pedestrians network pasted as a custom network (a missing "Pretrained model" file is
    named at its field) -> the validation's mAP on the model page -> the classify-one page with the model."""
    from test_detectnet import _kitti_folders
    from test_studio_detectnet import small_network

    from caffe.data.detectnet import KITTI_CLASS_NAMES

    train, val = _kitti_folders(tmp_path / "data" / "train", 4, 0), _kitti_folders(tmp_path / "data" / "val", 2, 1)
    jobs = tmp_path / "jobs"
    app = create_app({"jobs_dir": jobs, "devices": ["cpu"], "data_roots": [tmp_path / "data"]})
    url, stop = serve_in_thread(app.state.studio.config, app)
    shot = Shots(artifacts_dir() / "detectnet")
    shot.folder.mkdir(parents=True, exist_ok=True)
    try:
        with browser_page(shot.folder) as (page, js_errors):
            page.goto(url + "/datasets/images/object-detection/new")
            page.wait_for_selector("#detection-dataset-form")
            for field, folder in (("train-image", train[0]), ("train-label", train[1]), ("val-image", val[0]),
                                  ("val-label", val[1])):  # fmt: skip
                page.fill(f"#{field}-folder", str(folder))
            page.select_option("#detector", "detectnet")
            for field, value in (("padding-image-width", "256"), ("padding-image-height", "128"),
                                 ("dataset-name", "kitti")):  # fmt: skip
                page.fill(f"#{field}", value)
            shot(page, "detectnet dataset form")
            dataset_id = create_and_finish(page, jobs, "dataset", 90)
            car = KITTI_CLASS_NAMES.index("car")
            assert int(page.text_content(f"#boxes-train-{car}")) > 0 and "train_db/features" in page.content()
            shot(page, "detectnet dataset done")

            page.goto(url + "/models/images/object-detection/new")
            page.wait_for_selector("#model-form")
            page.select_option("#model-dataset", dataset_id)
            page.check("#method-custom")
            paste(page, "#model-custom-network", small_network(TWO_CLASSES))  # 43 KB
            page.fill("#model-custom-snapshot", str(tmp_path / "data" / "googlenet.caffemodel"))  # not there
            for field, value in (("train-epochs", "1"), ("batch-size", "2"), ("learning-rate", "0.0001"),
                                 ("random-seed", "1"), ("name", "detectnet")):  # fmt: skip
                page.fill(f"#model-{field}", value)
            page.select_option("#model-use-mean", "none")
            page.click("#create-model")
            page.wait_for_selector("#error-custom-network-snapshot")
            assert "no file" in page.text_content("#error-custom-network-snapshot")
            page.fill("#model-custom-snapshot", "")
            shot(page, "detectnet model form")
            create_and_finish(page, jobs, "model", 240)
            assert "mAP-class0" in page.content()  # the validation's chart series
            shot(page, "detectnet model done")

            page.click("#model-classify")
            page.wait_for_selector("#classify-one-form")
            page.set_input_files("#image-file", str(next(val[0].iterdir())))
            page.click("#classify-one-submit")
            page.wait_for_selector("#detections")
            assert page.evaluate("() => document.getElementById('detected-image').naturalWidth") > 0
            shot(page, "detectnet detections")
            assert not js_errors, js_errors
    finally:
        stop()
