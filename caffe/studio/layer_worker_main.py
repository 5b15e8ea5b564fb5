"""The Python-layer worker process (``python -m caffe.studio.layer_worker_main``): the handlers of its requests.

:mod:`caffe.studio.layer_worker` holds the protocol, the server's side and the request loop; the handlers build,
check and run nets through the studio's inference, pretrained-model and validation code, which this module sits
above (the studio's modules never import it).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from caffe.studio import layer_worker


def _check(state: dict[str, Any], header: dict[str, Any], _: list[np.ndarray]) -> tuple[dict, list]:
    from caffe.studio.pretrained import weights_facts

    py = header.get("python_layer")
    facts, output = weights_facts(Path.cwd(), Path(py) if py else None)
    return {"facts": facts, "output": output}, []


def _validate(state: dict[str, Any], header: dict[str, Any], _: list[np.ndarray]) -> tuple[dict, list]:
    from caffe.studio.validate import NetToBuild, build_all

    nets = header.get("nets")
    if not isinstance(nets, list) or not all(isinstance(n, dict) for n in nets):
        raise layer_worker.PythonLayerError("worker: validate needs a list of nets")
    build_all([NetToBuild.from_dict(n) for n in nets])
    return {"built": len(nets)}, []


def _load(state: dict[str, Any], header: dict[str, Any], _: list[np.ndarray]) -> tuple[dict, list]:
    from caffe.studio import inference

    py = header.get("python_layer")
    source = inference.ModelSource(
        job_id="",
        deploy=Path(header["deploy"]).resolve(),
        weights=Path(header["weights"]),
        python_layer=Path(py) if py else None,
    )
    model = state["model"] = inference.load_here(source)
    return {
        "input": model.input,
        "input_shape": list(model.input_shape),
        "output": model.output,
        "softmax": model.softmax,
    }, []


def _forward(state: dict[str, Any], _: dict[str, Any], arrays: list[np.ndarray]) -> tuple[dict, list]:
    from caffe.studio import inference

    return {}, [inference.forward(state["model"], np.array(arrays[0], dtype=np.float32))]


def _views(state: dict[str, Any], _: dict[str, Any], __: list[np.ndarray]) -> tuple[dict, list]:
    from caffe.studio import inference

    rows, arrays = [], []
    for view in inference.layer_views(state["model"].net):
        row = {
            "layer": view.layer,
            "type": view.type,
            "blob": view.blob,
            "shape": view.shape,
            "params": view.params,
            "data": None,
            "weights": None,
        }
        for key in ("data", "weights"):
            value = getattr(view, key)
            if value is not None and value.size:
                row[key] = len(arrays)
                arrays.append(np.asarray(value, np.float32))
        rows.append(row)
    return {"views": rows}, arrays


HANDLERS: dict[str, layer_worker.Handler] = {
    "check": _check,
    "load": _load,
    "validate": _validate,
    "forward": _forward,
    "views": _views,
}
MODEL_FREE = ("check", "load", "validate")  # the requests that need no loaded model


def main() -> int:
    """Serve the studio's requests on stdin until it closes."""
    return layer_worker.serve(HANDLERS, MODEL_FREE)


if __name__ == "__main__":
    sys.exit(main())
