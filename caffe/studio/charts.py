"""The model page's charts as Plotly figures (``{data, layout}``), built here so that what they show is decided
(and tested) in one place: accuracy in % on a 0-100 axis at round ticks, top-k accuracies only when k is less
than the number of classes (top-5 of a 2-class problem is always 100 %), markers on short series (a one-point
series is visible), and the learning rate in its policy's true shape (steps for ``step`` and ``multistep``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from caffe.errors import CaffeError
from caffe.proto import caffe_pb2 as pb

MARKERS_BELOW = 30  # a series with fewer points is drawn with markers
STEP_POLICIES = frozenset({"step", "multistep"})  # the lr stays constant between drops
ACCURACY_AXIS = {
    "title": {"text": "accuracy (%)"},
    "overlaying": "y",
    "side": "right",
    "range": [0, 100],
    "tickmode": "linear",
    "tick0": 0,
    "dtick": 20,
    "showgrid": False,
}


def accuracy_top_k(train_val: Path) -> dict[str, int]:
    """``{top blob: k}`` of the Accuracy layers of a job's ``train_val.prototxt`` (empty when unreadable)."""
    from caffe.protoio import read_net_param

    try:
        net = read_net_param(train_val) if train_val.is_file() else pb.NetParameter()
    except CaffeError:
        return {}
    return {
        top: layer.accuracy_param.top_k or 1 for layer in net.layer if layer.type == "Accuracy" for top in layer.top
    }


def shown(name: str, top_k: dict[str, int], classes: int | None) -> bool:
    """Whether a validation output is worth a trace: a top-k accuracy only when k < classes."""
    k = top_k.get(name, 1)
    return k == 1 or classes is None or k < classes


def mode(points: int) -> str:
    return "lines+markers" if points < MARKERS_BELOW else "lines"


def line_shape(lr_policy: str | None) -> str:
    """Plotly's line shape for an lr policy: "hv" (hold, then drop) for the step policies."""
    return "hv" if lr_policy in STEP_POLICIES else "linear"


def _percent(v: Any) -> Any:
    return 100.0 * v if isinstance(v, (int, float)) and math.isfinite(v) else v


def loss_accuracy(progress: dict[str, Any], top_k: dict[str, int], classes: int | None) -> dict[str, Any]:
    """The loss (left axis) and accuracy (right axis, %) figure."""
    train = progress["train"]
    data = [{"x": train["epoch"], "y": train["loss"], "name": "loss (train)", "mode": mode(len(train["epoch"]))}]
    for name, series in progress["val"].items():
        accuracy = series["kind"] in ("accuracy", "percent")
        if accuracy and not shown(name, top_k, classes):
            continue
        values = [_percent(v) for v in series["value"]] if series["kind"] == "accuracy" else series["value"]
        shown_name = progress.get("names", {}).get(name, name)  # e.g. a detector's detection_eval as "mAP"
        trace = {"x": series["epoch"], "y": values, "name": f"{shown_name} (val)", "mode": mode(len(values))}
        data.append({**trace, "yaxis": "y2"} if accuracy else trace)
    layout: dict[str, Any] = {
        "margin": {"t": 10, "r": 60, "b": 45, "l": 60},
        "height": 340,
        "xaxis": {"title": {"text": "Epoch"}},
        "yaxis": {"title": {"text": "loss"}, "rangemode": "tozero"},
        "legend": {"orientation": "h", "y": -0.2},
    }
    if any(t.get("yaxis") == "y2" for t in data):
        layout["yaxis2"] = ACCURACY_AXIS
    return {"data": data, "layout": layout}


def learning_rate(epochs: list[Any], rates: list[Any], lr_policy: str | None) -> dict[str, Any]:
    """The learning-rate figure, in the policy's shape."""
    trace = {"x": epochs, "y": rates, "name": "learning rate", "mode": mode(len(epochs)),
             "line": {"shape": line_shape(lr_policy)}}  # fmt: skip
    layout = {
        "margin": {"t": 10, "r": 20, "b": 40, "l": 70},
        "height": 220,
        "xaxis": {"title": {"text": "Epoch"}},
        "yaxis": {"title": {"text": "learning rate"}, "rangemode": "tozero"},
    }
    return {"data": [trace], "layout": layout}


def model_charts(progress: dict[str, Any], job_dir: Path, classes: int | None, lr_policy: str | None) -> dict:
    """Both figures of a model page (``{"main", "lr"}``)."""
    top_k = accuracy_top_k(job_dir / "train_val.prototxt") if progress["val"] else {}
    train = progress["train"]
    return {
        "main": loss_accuracy(progress, top_k, classes),
        "lr": learning_rate(train["epoch"], train["lr"], lr_policy),
    }
