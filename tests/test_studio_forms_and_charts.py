"""The studio's forms and charts (issue 16, items 3, 5, 6): the model form builds its nets at submit and answers
a misspelled type, a wrong bottom or a shape error at once on the network field (line and layer named, what was
typed kept); the classify forms answer errors inline; charts and lists say what they should."""

from __future__ import annotations

import os
import re

import pytest
from fastapi.testclient import TestClient
from markupsafe import escape
from test_studio_inference import CLASSIFY, make_client, upload_tiny
from test_studio_jobs_keep_work import add_dataset
from test_studio_models import LENET

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
