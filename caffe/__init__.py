"""neocaffe: Caffe's formats, nets, layers and tools on PyTorch, with pycaffe's interface.

``import caffe`` gives what pycaffe gives: ``caffe.Net``, ``caffe.TRAIN``/``caffe.TEST``,
``caffe.set_mode_cpu()``/``set_mode_gpu()``, ``caffe.Layer`` for Python layers, ``caffe.io`` ...
"""

from caffe import io, layers  # layers: importing it registers every layer family
from caffe._version import __version__
from caffe.blob import Blob
from caffe.common import (
    TEST,
    TRAIN,
    set_device,
    set_dtype,
    set_mode_cpu,
    set_mode_gpu,
    set_random_seed,
)
from caffe.engine import inference_engine, set_inference_engine
from caffe.errors import (
    CaffeError,
    DataError,
    DeviceError,
    LayerError,
    NetError,
    ParseError,
    ShapeError,
    SolverError,
    UnknownLayerTypeError,
    WeightsError,
)
from caffe.layer import layer_type_list
from caffe.layers.python import Layer
from caffe.net import Net
from caffe.proto import caffe_pb2 as proto_pb2  # noqa: F401
from caffe.pycaffe_extras import (
    NCCL,
    Timer,
    has_nccl,
    init_log,
    log,
    set_multiprocess,
    set_solver_count,
    set_solver_rank,
    solver_count,
    solver_rank,
)
from caffe.solver import Solver, get_solver
from caffe.solvers import (  # registers the solver types for get_solver
    AdaDeltaSolver,
    AdaGradSolver,
    AdamSolver,
    NesterovSolver,
    RMSPropSolver,
    SGDSolver,
)

# pycaffe's heavier modules load on first use, so ``import caffe`` stays quick.
_LAZY_ATTRS = {
    "Classifier": ("caffe.classifier", "Classifier"),
    "Detector": ("caffe.detector", "Detector"),
    "NetSpec": ("caffe.net_spec", "NetSpec"),
    "params": ("caffe.net_spec", "params"),
    "to_proto": ("caffe.net_spec", "to_proto"),
}
_LAZY_MODULES = {"classifier", "coord_map", "detector", "draw", "net_spec", "zoo", "deploy", "export"}


def __getattr__(name: str) -> object:
    import importlib

    if name in _LAZY_ATTRS:
        module, attr = _LAZY_ATTRS[name]
        value = getattr(importlib.import_module(module), attr)
    elif name in _LAZY_MODULES:
        value = importlib.import_module(f"caffe.{name}")
    else:
        raise AttributeError(f"module 'caffe' has no attribute {name!r}")
    globals()[name] = value
    return value


__all__ = [
    "NCCL",
    "TEST",
    "TRAIN",
    "AdaDeltaSolver",
    "AdaGradSolver",
    "AdamSolver",
    "Blob",
    "CaffeError",
    "Classifier",
    "DataError",
    "Detector",
    "DeviceError",
    "Layer",
    "LayerError",
    "NesterovSolver",
    "Net",
    "NetError",
    "NetSpec",
    "ParseError",
    "RMSPropSolver",
    "SGDSolver",
    "ShapeError",
    "Solver",
    "SolverError",
    "Timer",
    "UnknownLayerTypeError",
    "WeightsError",
    "__version__",
    "get_solver",
    "has_nccl",
    "inference_engine",
    "init_log",
    "io",
    "layer_type_list",
    "layers",
    "log",
    "params",
    "set_device",
    "set_dtype",
    "set_inference_engine",
    "set_mode_cpu",
    "set_mode_gpu",
    "set_multiprocess",
    "set_random_seed",
    "set_solver_count",
    "set_solver_rank",
    "solver_count",
    "solver_rank",
    "to_proto",
]
