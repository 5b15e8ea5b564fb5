"""The studio's forms and charts (issue 16, items 3, 5, 6): the model form builds its nets at submit and answers
a misspelled type, a wrong bottom or a shape error at once on the network field (line and layer named, what was
typed kept); the classify forms answer errors inline; charts and lists say what they should."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import asset
from fastapi.testclient import TestClient
from markupsafe import escape
from test_studio_inference import CAT, CLASSIFY, TINY_NET, make_client, upload_tiny
from test_studio_jobs_keep_work import add_dataset, wait_for
from test_studio_models import LENET

import caffe
from caffe.proto import caffe_pb2 as pb
from caffe.studio.app import create_app
from caffe.studio.networks import standard_network

HTML = {"Accept": "text/html"}


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    """A CPU studio with one tiny 2-class 28x28 grayscale dataset: ``(client, studio, dataset id)``."""
    tmp = tmp_path_factory.mktemp("forms")
    app = create_app({"jobs_dir": tmp / "jobs", "devices": ["cpu"], "data_roots": [str(tmp)]})
    with TestClient(app) as client:
        yield client, app.state.studio, add_dataset(app.state.studio.store, tmp / "images")


def custom(dataset: str, text: str) -> dict[str, str]:
    return {**LENET, "dataset": dataset, "method": "custom", "custom_network": text}


def lenet_with(old: str, new: str) -> str:
    text = standard_network("lenet")
    assert old in text
    return text.replace(old, new, 1)


def line_of(text: str, layer: str) -> int:
    """The line that names ``layer``."""
    return next(i for i, line in enumerate(text.splitlines(), 1) if f'name: "{layer}"' in line)


# ---------------------------------------------------------------------------------------------- item 3
def submit_error(client: TestClient, fields: dict[str, str]) -> str:
    """The network field's error for a submit (JSON API), checking nothing was queued."""
    r = client.post("/models/images/classification.json", data=fields)
    assert r.status_code == 400, r.text
    assert client.get("/index.json").json()["models"] == []
    return r.json()["fields"]["custom_network"]


def test_a_misspelled_layer_type_is_refused_at_submit_with_its_line_and_a_suggestion(studio):
    client, _, dataset = studio
    text = lenet_with('name: "ip2"\n  type: "InnerProduct"', 'name: "ip2"\n  type: "InnerProdcut"')
    message = submit_error(client, custom(dataset, text))
    assert message.startswith(f"custom network:{line_of(text, 'ip2')}: ")
    assert "layer 'ip2'" in message and "'InnerProdcut'" in message and "did you mean 'InnerProduct'" in message
    page = client.post("/models/images/classification", data=custom(dataset, text), headers=HTML)
    assert page.status_code == 400 and 'id="error-custom-network"' in page.text
    assert str(escape(text)) in page.text  # what was typed is kept


def test_a_wrong_bottom_names_the_layer_and_the_missing_blob(studio):
    client, _, dataset = studio
    text = lenet_with('bottom: "pool2"', 'bottom: "pool_2"')
    message = submit_error(client, custom(dataset, text))
    assert "one input blob" not in message
    assert "layer 'ip1'" in message and "'pool_2'" in message and "did you mean 'pool2'" in message
    assert message.startswith(f"custom network:{line_of(text, 'ip1')}: ")


def test_a_shape_error_is_refused_at_submit(studio):
    client, _, dataset = studio
    text = lenet_with("kernel_size: 5", "kernel_size: 50")  # conv1's kernel is larger than the 28x28 images
    message = submit_error(client, custom(dataset, text))
    assert "layer 'conv1'" in message and message.startswith(f"custom network:{line_of(text, 'conv1')}: ")


def test_a_valid_custom_network_is_still_queued(studio):
    client, _, dataset = studio
    r = client.post("/models/images/classification.json", data=custom(dataset, standard_network("lenet")))
    assert r.status_code == 201, r.text
    client.post(f"/jobs/{r.json()['job_id']}/abort")
    client.delete(f"/jobs/{r.json()['job_id']}")


FAILING_LAYER = """
import caffe

class NeedsTwo(caffe.Layer):
    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise ValueError(f"NeedsTwo takes 2 bottoms, got {len(bottom)}")

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)
"""


def test_python_layers_are_validated_in_a_worker_with_consent_and_refused_without(tmp_path, monkeypatch):
    (tmp_path / "layers").mkdir()
    (tmp_path / "layers" / "needs_two.py").write_text(FAILING_LAYER)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "layers"), os.environ.get("PYTHONPATH", "")]))
    layer = (
        'layer { name: "two" type: "Python" bottom: "ip2" top: "two" '
        'python_param { module: "needs_two" layer: "NeedsTwo" } }\n'
    )
    text = standard_network("lenet") + layer
    for allowed, expected in ((False, "--allow_python_layers"), (True, "NeedsTwo takes 2 bottoms, got 1")):
        app = create_app({"jobs_dir": tmp_path / f"jobs-{allowed}", "devices": ["cpu"], "allow_python_layers": allowed})
        with TestClient(app) as client:
            dataset = add_dataset(app.state.studio.store, tmp_path / f"images-{allowed}")
            message = submit_error(client, custom(dataset, text))
            assert expected in message and "layer 'two'" in message


# ---------------------------------------------------------------------------------------------- item 5
def selected(page: str, job_id: str) -> bool:
    return re.search(rf'<option value="{job_id}"[^>]*selected', page) is not None


def test_classify_forms_answer_errors_inline_keeping_what_was_typed(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    with make_client(tmp_path, [root]) as client:
        tiny = upload_tiny(client, tmp_path / "weights")
        fields = {"job_id": tiny, "show_visualizations": "1", "image_url": ""}
        one = client.post(
            f"{CLASSIFY}/classify_one",
            data=fields,
            headers=HTML,
            files={"image_file": ("notes.txt", b"this is not an image")},
        )
        assert one.status_code == 415 and 'id="classify-one-form"' in one.text
        assert 'id="error-image-file"' in one.text and "not an image" in one.text
        assert selected(one.text, tiny) and 'name="show_visualizations" value="1" checked' in one.text
        nothing = client.post(f"{CLASSIFY}/classify_one", data={"image_url": "https://x.example/a.jpg"}, headers=HTML)
        assert nothing.status_code == 400 and 'id="error-job-id"' in nothing.text
        assert 'value="https://x.example/a.jpg"' in nothing.text
        listing = {"image_list": ("list.txt", b"missing.png 0\n")}
        many = client.post(
            f"{CLASSIFY}/classify_many",
            data={"job_id": tiny, "image_folder": str(root), "num_test_images": "7"},
            files=listing,
            headers=HTML,
        )
        assert many.status_code == 404 and 'id="classify-many-form"' in many.text
        assert 'id="error-image-list"' in many.text and "missing.png" in many.text
        assert f'value="{root}"' in many.text and 'value="7"' in many.text and selected(many.text, tiny)
        top = client.post(
            f"{CLASSIFY}/top_n", data={"job_id": tiny, "image_folder": str(root), "top_n": "0"}, headers=HTML
        )
        assert top.status_code == 400 and 'id="error-top-n"' in top.text and 'id="top-n-form"' in top.text
        # API clients still get 4xx JSON
        api = client.post(
            f"{CLASSIFY}/classify_one.json",
            data={"job_id": tiny},
            files={"image_file": ("notes.txt", b"this is not an image")},
        )
        assert api.status_code == 415 and "not an image" in api.json()["detail"]


# ---------------------------------------------------------------------------------------------- item 6
TWO_ACCURACIES = """
layer { name: "data" type: "Input" top: "data" top: "label" }
layer { name: "accuracy" type: "Accuracy" bottom: "data" bottom: "label" top: "accuracy" }
layer { name: "accuracy-top5" type: "Accuracy" bottom: "data" bottom: "label" top: "accuracy-top5"
  accuracy_param { top_k: 5 } }
"""


def one_point_job(folder: Path, classes: int) -> Path:
    """A model folder after one training iteration and one validation: one point per series."""
    folder.mkdir(parents=True)
    info = {"classes": classes, "iterations per epoch": 1, "max iterations": 4, "epochs": 4,
            "accuracy outputs": ["accuracy", "accuracy-top5"]}  # fmt: skip
    (folder / "info.json").write_text(json.dumps(info))
    (folder / "train_val.prototxt").write_text(TWO_ACCURACIES)
    events = [{"event": "start", "iter": 0, "max_iter": 4, "time": 0.0},
              {"event": "train", "iter": 1, "loss": 0.7, "lr": 0.01, "time": 1.0},
              {"event": "test", "iter": 1, "outputs": {"accuracy": 0.5, "accuracy-top5": 1.0, "loss": 0.69},
               "time": 1.5}]  # fmt: skip
    (folder / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return folder


def test_charts_accuracy_in_percent_at_round_ticks_top_k_below_classes_markers_and_lr_steps(tmp_path):
    from caffe.studio import charts
    from caffe.studio import models as m

    job = one_point_job(tmp_path / "two", classes=2)
    figures = charts.model_charts(m.training_progress(job), job, 2, "step")
    main, lr = figures["main"], figures["lr"]
    axis = main["layout"]["yaxis2"]
    assert axis["range"] == [0, 100] and (axis["tickmode"], axis["tick0"], axis["dtick"]) == ("linear", 0, 20)
    names = [t["name"] for t in main["data"]]
    assert names == ["loss (train)", "accuracy (val)", "loss (val)"]  # no top-5 of a 2-class problem
    accuracy = next(t for t in main["data"] if t["name"] == "accuracy (val)")
    assert accuracy["y"] == [50.0] and accuracy["yaxis"] == "y2"
    assert all("markers" in t["mode"] for t in main["data"] + lr["data"])  # one point each: visible
    assert lr["data"][0]["line"]["shape"] == "hv"
    assert charts.learning_rate([0, 1], [0.1, 0.1], "poly")["data"][0]["line"]["shape"] == "linear"
    many = charts.model_charts(m.training_progress(job), job, 10, "fixed")["main"]
    assert "accuracy-top5 (val)" in [t["name"] for t in many["data"]]  # 5 < 10 classes: shown
    assert charts.mode(200) == "lines"


@pytest.mark.parametrize(("policy", "fields", "drops"), [
    ("step", {"lr_step_size": "33.3", "lr_step_gamma": "0.1"}, [999, 1998, 2997]),
    ("multistep", {"lr_multistep_values": "50,85.1", "lr_multistep_gamma": "0.5"}, [1500, 2553]),
])  # fmt: skip
def test_lr_preview_draws_step_policies_as_steps_at_their_exact_drops(studio, policy, fields, drops):
    from caffe.solver import learning_rate_at

    client = studio[0]
    r = client.post("/models/visualize-lr.json", data={"lr_policy": policy, "train_epochs": "30", **fields}).json()
    assert r["max_iter"] == 3000 and r["chart"]["data"][0]["line"]["shape"] == "hv"
    assert set(drops) <= set(r["iterations"])
    param = pb.SolverParameter(base_lr=0.01, lr_policy=policy, max_iter=3000, gamma=r["solver"]["gamma"],
                               stepsize=r["solver"]["stepsize"], stepvalue=r["solver"]["stepvalue"])  # fmt: skip
    for it in drops:
        k = r["iterations"].index(it)
        assert r["lr"][k] < r["lr"][k - 1]  # the drop is at its iteration, not one sample later
        step = sum(1 for v in param.stepvalue if v <= it)
        assert r["lr"][k] == pytest.approx(learning_rate_at(param, it, step, np.float32, "lr")[0])


def test_a_waiting_job_says_what_it_waits_for_and_the_home_list_shows_progress(studio):
    client, st, _ = studio
    blocker = st.store.create("model", "blocker", {})
    waiting = st.store.create("model", "patient", {})
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    st.scheduler.submit(blocker.id, sleep, "cpu")
    st.scheduler.submit(waiting.id, sleep, "cpu")
    try:
        wait_for(lambda: st.store.get(blocker.id).status == "Running", 30, "the blocker to run")
        summary = client.get(f"/models/{waiting.id}.json").json()
        assert summary["status"] == "Waiting"
        assert summary["waiting_for"] == "the CPU (job 'blocker' runs on it); 1st of 1 in the queue"
        page = client.get(f"/models/{waiting.id}", headers=HTML).text
        assert re.search(r'<p id="model-waiting" class="muted">Waiting for <span[^>]*>the CPU', page)
        assert client.get(f"/models/{blocker.id}.json").json()["waiting_for"] is None
        home = client.get("/", headers=HTML).text
        assert "<th>Progress</th>" in home and 'class="progress-cell">0 %</td>' in home
        models = {j["id"]: j for j in client.get("/index.json").json()["models"]}
        assert models[waiting.id]["progress"] == {"fraction": 0.0, "eta_seconds": None, "text": "0 %"}
    finally:
        for job in (waiting, blocker):
            st.scheduler.abort(job.id)
            st.scheduler.wait(job.id, 30)
            st.store.delete(job.id)


def test_home_progress_text_has_the_eta_of_a_running_training(tmp_path):
    from caffe.studio.app import _model_progress
    from caffe.studio.store import JobStore

    store = JobStore(tmp_path / "jobs")
    job = store.create("model", "half", {})
    folder = store.job_dir(job.id)
    (folder / "info.json").write_text(json.dumps({"iterations per epoch": 10, "max iterations": 100}))
    events = [{"event": "start", "iter": 0, "max_iter": 100, "time": 0.0},
              {"event": "train", "iter": 50, "loss": 1.0, "lr": 0.1, "time": 100.0}]  # fmt: skip
    (folder / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    running = store.update(job.id, status="Running")
    assert _model_progress(store, running)["text"] == "50 %, about 1m 40s left"


def test_names_not_ids_and_the_only_dataset_preselected(studio):
    client, st, dataset = studio
    page = client.get("/models/images/classification/new").text
    assert re.search(rf'<option value="{dataset}"\s+selected', page)
    base = st.store.create("pretrained", "ImageNet GoogLeNet", {})
    st.store.update(base.id, status="Done")
    job = st.store.create("model", "tuned", {}, parent=dataset)
    info = {"network": f"pretrained:{base.id}", "classes": 2}
    (st.store.job_dir(job.id) / "info.json").write_text(json.dumps(info))
    shown = client.get(f"/models/{job.id}", headers=HTML).text
    cell = re.search(r'<td id="model-network">(.*?)</td>', shown, re.S).group(1)
    assert "ImageNet GoogLeNet (pretrained model)" in cell and f'href="/pretrained_models/{base.id}"' in cell
    assert f">{base.id}<" not in cell
    st.store.delete(job.id)
    st.store.delete(base.id)


def test_folder_picker_lists_folders_inside_the_data_roots_only(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    for folder in (root / "cats" / "young", root / "dogs", root / ".hidden", outside / "secret"):
        folder.mkdir(parents=True)
    (root / "notes.txt").write_text("a file, not a folder")
    (root / "escape").symlink_to(outside)  # a link leading out of the root
    with TestClient(create_app({"jobs_dir": tmp_path / "jobs", "devices": ["cpu"], "data_roots": [str(root)]})) as c:
        top = c.get("/folders.json").json()
        assert top == {"path": None, "parent": None, "truncated": False,
                       "folders": [{"name": str(root), "path": str(root)}]}  # fmt: skip
        inside = c.get("/folders.json", params={"path": str(root)}).json()
        assert [f["name"] for f in inside["folders"]] == ["cats", "dogs"] and inside["parent"] is None
        cats = c.get("/folders.json", params={"path": str(root / "cats")}).json()
        assert cats["folders"] == [{"name": "young", "path": str(root / "cats" / "young")}]
        assert cats["parent"] == str(root)
        for path, status in ((outside, 403), (root / "escape", 403), (root / "cats" / ".." / "..", 403),
                             (root / "missing", 404), (root / "notes.txt", 404)):  # fmt: skip
            r = c.get("/folders.json", params={"path": str(path)})
            assert r.status_code == status, (path, r.text)
            assert "secret" not in r.text
        assert c.get("/folders.json", params={"path": "x" * 5000}).status_code == 400
        page = c.get("/datasets/images/classification/new").text
        assert 'id="folder-train" data-folder-picker' in page and "studio.folderPickers()" in page


THOUSAND_NET = TINY_NET.replace("num_output: 2", "num_output: 1000")


def test_a_1000_class_pretrained_model_without_labels_is_offered_the_imagenet_labels(tmp_path):
    root = tmp_path / "data"
    (root / "data" / "ilsvrc12").mkdir(parents=True)
    words = [f"n{k:08d} class number {k}" for k in range(1000)]
    (root / "data" / "ilsvrc12" / "synset_words.txt").write_text("\n".join(words) + "\n")
    deploy = tmp_path / "deploy.prototxt"
    deploy.write_text(THOUSAND_NET)
    weights = tmp_path / "w.caffemodel"
    caffe.Net(str(deploy), caffe.TEST).save(str(weights))
    with make_client(tmp_path, [root]) as client:
        r = client.post("/pretrained_models.json", data={"job_name": "imagenet-ish", "width": "24", "height": "24"},
                        files={"weights_file": ("w.caffemodel", weights.read_bytes()),
                               "deploy_file": ("d.prototxt", THOUSAND_NET)})  # fmt: skip
        assert r.status_code == 201, r.text
        job = r.json()["job_id"]
        page = client.get(f"/pretrained_models/{job}", headers=HTML).text
        assert 'id="pretrained-imagenet-labels"' in page and "synset_words.txt" in page
        image = {"image_file": ("cat.jpg", asset(CAT).read_bytes())}
        before = client.post(f"{CLASSIFY}/classify_one.json", data={"job_id": job}, files=image).json()
        assert before["predictions"][0][0].isdigit()  # class numbers
        done = client.post(f"/pretrained_models/{job}/imagenet_labels", headers=HTML, follow_redirects=False)
        assert done.status_code == 303
        after = client.post(f"{CLASSIFY}/classify_one.json", data={"job_id": job}, files=image).json()
        assert after["predictions"][0][0] in words
        assert 'id="pretrained-imagenet-labels"' not in client.get(f"/pretrained_models/{job}").text


def test_classify_many_shows_top5_accuracy_only_with_more_than_5_classes(tmp_path):
    import cv2

    root = tmp_path / "data"
    for k, label in enumerate(("dolphin", "seahorse")):
        (root / label).mkdir(parents=True)
        cv2.imwrite(str(root / label / "a.png"), np.full((24, 24, 3), 60 + 120 * k, np.uint8))
    with make_client(tmp_path, [root]) as client:
        tiny = upload_tiny(client, tmp_path / "weights")
        page = client.post(f"{CLASSIFY}/classify_many", data={"job_id": tiny, "image_folder": str(root)}, headers=HTML)
        assert page.status_code == 200 and 'id="accuracy-top1"' in page.text
        assert 'id="accuracy-top5"' not in page.text  # top-5 of 2 classes is always 100 %


# ---------------------------------------------------------------------------------------------- item 7
@pytest.mark.slow
def test_failure_paths_in_a_browser(tmp_path):
    """The guide's forms through their failure paths in the system Chromium: a misspelled type and a wrong
    bottom refused at submit with the typed network kept, a training whose charts have round accuracy ticks and
    a step lr, a non-image and a bad list answered inline, the folder picker; screenshots in tmp_path."""
    from studio_e2e_helpers import Shots, browser_page, job_log, paste, wait_until_ended

    from caffe.studio.app import serve_in_thread

    app = create_app({"jobs_dir": tmp_path / "jobs", "devices": ["cpu"], "data_roots": [str(tmp_path)]})
    dataset = add_dataset(app.state.studio.store, tmp_path / "images")
    url, stop = serve_in_thread(app.state.studio.config, app)
    shot = Shots(tmp_path / "artifacts")
    shot.folder.mkdir()
    lenet = standard_network("lenet")
    try:
        with browser_page(shot.folder) as (page, js_errors):
            page.goto(url + "/models/images/classification/new")
            assert page.input_value("#model-dataset") == dataset  # the only dataset, preselected
            page.check("#method-custom")
            page.fill("#model-train-epochs", "2")
            page.fill("#model-batch-size", "8")
            page.fill("#model-name", "browser lenet")
            for old, new, expected in (
                ('type: "InnerProduct"', 'type: "InnerProdcut"', "did you mean 'InnerProduct'"),
                ('bottom: "pool2"', 'bottom: "pool_2"', "layer 'ip1' reads bottom 'pool_2'"),
            ):
                typed = lenet.replace(old, new, 1)
                paste(page, "#model-custom-network", typed)
                page.click("#create-model")
                page.wait_for_selector("#error-custom-network")
                assert expected in page.text_content("#error-custom-network")
                assert page.input_value("#model-custom-network") == typed and page.is_checked("#method-custom")
                assert page.input_value("#model-train-epochs") == "2"
                shot(page, f"refused at submit {new}")
            paste(page, "#model-custom-network", lenet)
            page.click("#create-model")
            page.wait_for_url(re.compile(r"/models/[\w-]+$"))
            model = page.get_attribute("#model-page", "data-job-id")
            wait_until_ended(page, 120)
            assert page.text_content("#job-status") == "Done", job_log(tmp_path / "jobs", model)
            axis = page.evaluate("() => document.getElementById('model-chart').layout.yaxis2")
            assert axis["range"] == [0, 100] and axis["dtick"] == 20
            lr = page.evaluate("() => document.getElementById('model-lr-chart').data[0].line.shape")
            assert lr == "hv"
            shot(page, "trained")

            page.click("#model-classify")
            page.wait_for_selector("#classify-one-form")
            page.set_input_files("#image-file", {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"no"})
            page.click("#classify-one-submit")
            page.wait_for_selector("#error-image-file")
            assert page.input_value("#job-id") == model
            shot(page, "classify one not an image")

            page.goto(f"{url}/models/images/classification/classify_many?job_id={model}")
            page.set_input_files("#image-list", {"name": "l.txt", "mimeType": "text/plain", "buffer": b"gone.png 0\n"})
            page.fill("#image-folder", str(tmp_path))
            page.click("#classify-many-submit")
            page.wait_for_selector("#error-image-list")
            assert "gone.png" in page.text_content("#error-image-list")
            assert page.input_value("#image-folder") == str(tmp_path)
            shot(page, "classify many bad list")
            page.click("#image-folder-browse")
            page.get_by_role("button", name="images/").click()
            page.get_by_role("button", name=f"Use {tmp_path / 'images'}").click()
            assert page.input_value("#image-folder") == str(tmp_path / "images")
            shot(page, "folder picked")

            page.goto(url + "/")
            page.click("#tab-models")
            assert page.text_content(f"#job-{model} .progress-cell") == "100 %"
            shot(page, "home")
            assert not js_errors, js_errors
    finally:
        stop()
    assert len(shot.paths) == 7 and all(p.stat().st_size > 5_000 for p in shot.paths)
