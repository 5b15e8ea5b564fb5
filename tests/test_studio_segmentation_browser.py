"""The studio's segmentation workflow in a real headless browser (the system Chromium driven by Playwright):
painted pictures with palette-PNG label maps -> "New Image Segmentation Dataset" -> "New Image Segmentation Model"
with a small network typed into the editor -> per-pixel accuracy on the model page -> the classes coloured in on
an uploaded picture. Screenshots of each page go to the test artifacts (see ``studio_e2e_helpers``)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image
from studio_e2e_helpers import Shots, artifacts_dir, browser_page, create_and_finish

from caffe.deploy import palette
from caffe.studio.app import create_app, serve_in_thread

# a training net (its data layer's scale is kept): colour to class is a per-pixel map
PAINT_NET = """name: "PaintNet"
layer { name: "images" type: "Data" top: "data" transform_param { scale: 0.00390625 } data_param { batch_size: 4 } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 1 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "score" type: "Convolution" bottom: "conv1" top: "score"
  convolution_param { num_output: 3 kernel_size: 1 weight_filler { type: "xavier" } } }
"""
COLOURS = {1: (220, 0, 0), 2: (0, 200, 0)}  # RGB: class 1 red, class 2 green; class 0 a dark background


def paint(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A 24 x 24 RGB picture with a red and a green rectangle on a dark background, and its class map."""
    image = rng.integers(0, 40, (24, 24, 3)).astype(np.uint8)
    labels = np.zeros((24, 24), np.uint8)
    for label, colour in COLOURS.items():
        x0, y0 = rng.integers(0, 14, 2)
        w, h = rng.integers(5, 10, 2)
        image[y0 : y0 + h, x0 : x0 + w] = colour
        labels[y0 : y0 + h, x0 : x0 + w] = label
    return image, labels


@pytest.fixture
def studio(tmp_path):
    """A studio served in-process; 16 painted pictures and their palette label maps in a data root."""
    features, labels = tmp_path / "data" / "pictures", tmp_path / "data" / "labels"
    features.mkdir(parents=True)
    labels.mkdir()
    rng = np.random.default_rng(5)
    colours = palette(256).reshape(-1).tolist()
    for i in range(16):
        image, classes = paint(rng)
        cv2.imwrite(str(features / f"{i:02d}.png"), image[:, :, ::-1])
        label_image = Image.fromarray(classes, mode="P")
        label_image.putpalette(colours)
        label_image.save(labels / f"{i:02d}.png")
    jobs = tmp_path / "jobs"
    app = create_app({"jobs_dir": jobs, "devices": ["cpu"], "data_roots": [tmp_path / "data"]})
    url, stop = serve_in_thread(app.state.studio.config, app)
    try:
        yield url, jobs, tmp_path
    finally:
        stop()


@pytest.mark.slow
def test_segmentation_walkthrough_in_a_browser(studio):
    url, jobs, tmp = studio
    shot = Shots(artifacts_dir() / "segmentation")
    shot.folder.mkdir(parents=True, exist_ok=True)
    with browser_page(shot.folder) as (page, js_errors):
        # ---- the dataset: pictures and palette label maps, a quarter split off for validation
        page.goto(url + "/")
        page.click("#new-segmentation-dataset")
        page.wait_for_selector("#segmentation-dataset-form")
        page.fill("#feature-folder", str(tmp / "data" / "pictures"))
        page.fill("#label-folder", str(tmp / "data" / "labels"))
        page.fill("#folder-pct-val", "25")
        page.fill("#dataset-name", "paint")
        shot(page, "segmentation dataset form")
        dataset_id = create_and_finish(page, jobs, "dataset", 90)
        assert page.text_content("#count-train") == "12" and page.text_content("#count-val") == "4"
        shot(page, "segmentation dataset done")

        # ---- the model: a small network typed into the editor, trained from scratch
        page.goto(url + "/")
        page.click("#tab-models")
        page.click("#new-segmentation-model")
        page.wait_for_selector("#model-form")
        assert "New Image Segmentation Model" in page.content()
        page.select_option("#model-dataset", dataset_id)
        page.check("#method-custom")
        page.fill("#model-custom-network", PAINT_NET)
        for field, value in (("train-epochs", "20"), ("learning-rate", "0.5"), ("val-interval", "10"),
                             ("random-seed", "3"), ("name", "paint net")):  # fmt: skip
            page.fill(f"#model-{field}", value)
        shot(page, "segmentation model form")
        create_and_finish(page, jobs, "model", 240)
        shot(page, "segmentation model done")

        # ---- the trained net's classes on an uploaded picture
        image, classes = paint(np.random.default_rng(77))
        cv2.imwrite(str(tmp / "new.png"), image[:, :, ::-1])
        page.click("#model-classify")
        page.wait_for_selector("#classify-one-form")
        page.set_input_files("#image-file", str(tmp / "new.png"))
        page.click("#classify-one-submit")
        page.wait_for_selector("#segmentation")
        shares = dict(
            zip(
                page.locator("#segmentation .segment-label").all_text_contents(),
                (float(p.rstrip("%")) for p in page.locator("#segmentation .segment-pct").all_text_contents()),
                strict=True,
            )
        )
        painted = {name: 100.0 * (classes == c).mean() for c, name in ((0, "class 0"), (1, "class 1"), (2, "class 2"))}
        assert set(shares) <= set(painted), shares
        for name, pct in shares.items():
            assert pct == pytest.approx(painted[name], abs=3.0), (shares, painted)
        assert page.evaluate("() => document.getElementById('segmented-image').naturalWidth") == 24
        shot(page, "segmentation")
        assert not js_errors, js_errors
