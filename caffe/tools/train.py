"""``caffe train``, ``caffe test`` and ``caffe time``: Caffe's training, scoring and benchmark commands.

They take Caffe's flags and print Caffe's log lines (``Solving``, ``Iteration N ... loss = L``,
``Batch k, name = v``, ``Average Forward pass: X ms.`` ...), so scripts and log parsers written for
the C++ tool keep working. What differs:

* ``--events=FILE`` (train): the solver appends one JSON object per line to FILE at the start, at
  every display, test and snapshot, and at the end (programs follow a training through it).
* ``--gpu`` on a machine without CUDA is an error (exit 1); several GPU ids (or ``all``) start one
  process per GPU (NCCL) with Caffe's multi-GPU semantics (``caffe.parallel``). Under ``torchrun``
  (``WORLD_SIZE`` > 1) each process joins the group from the environment and takes its
  ``LOCAL_RANK``'s GPU, or the CPU (gloo) without CUDA; rank 0 alone logs (others only warnings).
* ``caffe time`` also accepts ``--weights`` (Caffe's tutorial passes it; Caffe ignored it), and
  times the layers one by one with the eager engine; it adds the whole-net forward time of the
  inference engine in use (``fused`` by default) after Caffe's totals. ``--engine compiled`` adds, after
  Caffe's lines, each layer's figures beside those of its forward compiled alone
  (``caffe.tools.layer_timing``), then the whole-net forward-backward of both training engines.

Signals during ``caffe train`` are Caffe's: SIGINT and SIGHUP only set a flag, which the solver
reads after each iteration and before each test batch; ``--sigint_effect`` (default ``stop``) and
``--sighup_effect`` (default ``snapshot``) say what it does then. ``stop`` finishes the iteration,
snapshots (unless ``snapshot_after_train: false``, or the iteration was just snapshotted) and ends
with "Optimization stopped early." and exit status 0; further signals while stopping are ignored.
"""

from __future__ import annotations

import argparse
import functools
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from caffe import common, parallel
from caffe.errors import CaffeError, DeviceError, SolverError
from caffe.precision import PRECISIONS
from caffe.proto import caffe_pb2 as pb
from caffe.tools.flags import ToolParser, UsageError, gflags_int
from caffe.tools.registry import command, run_command
from caffe.train_step import TRAIN_ENGINES
from caffe.util.detection_ap import AP_VERSIONS, DetectionTally

log = logging.getLogger("caffe")

USAGE = """caffe <command> <args>

commands:
  train           train or finetune a model
  test            score a model
  device_query    show GPU diagnostic information
  time            benchmark model execution time"""

EFFECTS = ("stop", "snapshot", "none")


# ---------------------------------------------------------------------------------------------
# flags


class _Usage(Exception):
    """A wrong or missing flag: the command's usage and flags go to stderr, exit status 1."""


def _parser(name: str, summary: str) -> ToolParser:
    return ToolParser(prog=f"caffe {name}", usage=USAGE, description=f"caffe {name}: {summary}")


def _common_flags(parser: ToolParser) -> None:
    parser.add_argument(
        "--gpu",
        default="",
        help="optional; run in GPU mode on the given device ids separated by ',' (or 'all'). "
        "caffe train runs one process per device (data parallel); caffe test and time use the first",
    )
    parser.add_argument("--level", type=gflags_int, default=0, help="optional; network level (default 0)")
    parser.add_argument(
        "--stage", default="", help="optional; network stages (not to be confused with phase), separated by ','"
    )
    parser.add_argument(
        "--dtype",
        default="float",
        choices=("float", "double"),
        help="optional (neocaffe); the precision nets compute in: float (Caffe's, the default) or double "
        "(Caffe's Dtype=double: snapshots then hold double_data)",
    )


def _parse(parser: ToolParser, argv: Sequence[str]) -> argparse.Namespace | int:
    """Flags as gflags takes them; on a usage error the usage with the flags goes to stderr (exit 1)."""
    try:
        args = parser.parse_args(list(argv))
        if getattr(args, "dtype", None):
            common.set_dtype(args.dtype)
        return args
    except (_Usage, UsageError) as e:
        return _usage_error(parser, str(e))
    except SystemExit as e:  # --help
        return int(e.code or 0)


def _usage_error(parser: ToolParser, message: str) -> int:
    print(f"{parser.format_help().rstrip()}\n\n{parser.prog}: error: {message}", file=sys.stderr)
    return 1


def _stages(spec: str) -> list[str]:
    return [s for s in spec.split(",") if s]


# ---------------------------------------------------------------------------------------------
# devices


def _gpu_ids(spec: str) -> list[int]:
    """``--gpu``: comma-separated ids or ``all``; a request this machine cannot serve is a DeviceError."""
    spec = spec.strip()
    if not spec:
        return []
    if not common.cuda_available():
        raise DeviceError(
            f"--gpu={spec}: no CUDA device is available on this machine (torch {torch.__version__}, "
            f"torch.cuda.is_available() is False); leave out --gpu to run on the CPU"
        )
    if spec == "all":
        return list(range(torch.cuda.device_count()))
    try:
        ids = [int(x) for x in spec.split(",")]
    except ValueError:
        raise _Usage(f"--gpu must be comma-separated device ids or 'all', got '{spec}'") from None
    count = torch.cuda.device_count()
    for i in ids:
        if not 0 <= i < count:
            raise DeviceError(f"--gpu={spec}: GPU {i} does not exist (this machine has {count} CUDA device(s))")
    return ids


def _use_gpu(device_id: int) -> None:
    common.set_device(device_id)
    common.set_mode_gpu()


def select_device(spec: str) -> list[int]:
    """``caffe test``/``caffe time``: the first of ``--gpu``'s devices, or the CPU."""
    gpus = _gpu_ids(spec)
    if gpus:
        log.info("Use GPU with device ID %d", gpus[0])
        log.info("GPU device name: %s", torch.cuda.get_device_name(gpus[0]))
        if len(gpus) > 1:
            log.warning("Several GPUs given (%s): using GPU %d only", spec, gpus[0])
        _use_gpu(gpus[0])
    else:
        log.info("Use CPU.")
        common.set_mode_cpu()
    return gpus


def _sync(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


# ---------------------------------------------------------------------------------------------
# signals


class SignalHandler:
    """Caffe's SignalHandler: SIGINT and SIGHUP set flags; ``check`` turns them into a solver action.

    SIGHUP is looked at first; each flag is cleared when read. Installed only from the main thread
    (Python delivers signals there); the previous handlers come back on ``close``.
    """

    def __init__(self, sigint_effect: str, sighup_effect: str) -> None:
        self.effects = {signal.SIGINT: sigint_effect}
        if hasattr(signal, "SIGHUP"):
            self.effects[signal.SIGHUP] = sighup_effect
        self._got = dict.fromkeys(self.effects, False)
        self._previous: dict[int, object] = {}

    def install(self) -> SignalHandler:
        if threading.current_thread() is not threading.main_thread():
            log.warning("Not on the main thread: SIGINT and SIGHUP keep their usual effect during training")
            return self
        for sig in self.effects:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        self._got[signum] = True

    def check(self) -> str:
        for sig in sorted(self.effects, key=lambda s: s != getattr(signal, "SIGHUP", None)):
            if self._got[sig]:
                self._got[sig] = False
                return self.effects[sig]
        return "none"

    def close(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)  # type: ignore[arg-type]
        self._previous.clear()


# ---------------------------------------------------------------------------------------------
# caffe train


def _train_parser() -> ToolParser:
    parser = _parser("train", "train or finetune a model")
    parser.add_argument("--solver", default="", help="the solver definition protocol buffer text file")
    parser.add_argument(
        "--weights",
        default="",
        help="optional; the pretrained weights to initialize finetuning, separated by ','. "
        "Cannot be set simultaneously with snapshot",
    )
    parser.add_argument("--snapshot", default="", help="optional; the snapshot solver state to resume training")
    _common_flags(parser)
    parser.add_argument(
        "--sigint_effect",
        default="stop",
        choices=EFFECTS,
        help="optional; action to take when a SIGINT signal is received: snapshot, stop or none (default stop)",
    )
    parser.add_argument(
        "--sighup_effect",
        default="snapshot",
        choices=EFFECTS,
        help="optional; action to take when a SIGHUP signal is received: snapshot, stop or none (default snapshot)",
    )
    parser.add_argument(
        "--events",
        default="",
        help="optional (neocaffe); append one JSON object per line to this file at the start, at every "
        "display, test and snapshot, and at the end of the training",
    )
    parser.add_argument(
        "--engine",
        default=None,
        choices=TRAIN_ENGINES,
        help="optional (neocaffe); how each forward + backward runs: compiled (torch.compile, per input shape), "
        "eager (layer by layer), or auto: compiled for runs long enough to repay the compile, of nets without "
        "large convolutions or with BatchNorm layers (default auto; CAFFE_TRAIN_ENGINE sets it too)",
    )
    parser.add_argument(
        "--precision",
        default=None,
        choices=PRECISIONS,
        help="optional (neocaffe, beyond Caffe); fp32 (default: Caffe's numerics), or bf16 / fp16: the compiled "
        "training step computes convolutions and products in that type under autocast (weights, diffs, update "
        "and snapshots stay float32; fp16 with a dynamic loss scale); CAFFE_PRECISION sets it too",
    )
    return parser


@command("train", "train or finetune a model")
def train(argv: list[str]) -> int:
    parser = _train_parser()
    args = _parse(parser, argv)
    if isinstance(args, int):
        return args
    if not args.solver:
        return _usage_error(parser, "Need a solver definition to train (--solver).")
    if args.snapshot and args.weights:
        return _usage_error(
            parser, "Give a snapshot to resume training or weights to finetune but not both (--snapshot, --weights)."
        )
    from caffe.protoio import read_solver_param
    from caffe.solver import EventLog, SolverAction, get_solver

    if args.snapshot and not Path(args.snapshot).is_file():
        raise SolverError(f"--snapshot={args.snapshot}: solver state file not found")
    param = read_solver_param(args.solver)

    if param.train_state.level not in (0, args.level):
        log.warning(
            "--level=%d replaces the solver's train_state level %d (as Caffe's tool does)",
            args.level,
            param.train_state.level,
        )
    param.train_state.level = args.level  # set even when 0: it then overrides the net's own state level
    param.train_state.stage.extend(_stages(args.stage))

    spec = args.gpu
    solver_gpu = param.HasField("solver_mode") and param.solver_mode == pb.SolverParameter.GPU
    if not spec and solver_gpu and common.cuda_available():  # without CUDA the solver notes it trains on the CPU
        spec = str(param.device_id)
    try:
        gpus = _gpu_ids(spec)
    except _Usage as e:
        return _usage_error(parser, str(e))
    distributed = parallel.env_world_size() > 1
    if len(gpus) > 1 and not distributed:
        log.info("Using GPUs %s", ", ".join(map(str, gpus)))
        for i in gpus:
            log.info("GPU %d: %s", i, torch.cuda.get_device_name(i))
        return _launch(gpus, argv)
    if distributed:
        gpus = _rank_gpu(gpus)
        if gpus:  # NCCL and caffe.parallel's one-number exchanges use the current CUDA device: this rank's
            torch.cuda.set_device(gpus[0])
        rank, size = parallel.init("cuda" if gpus else "cpu")
        if gpus:  # every rank says where it runs (Caffe logs each GPU too); CPU ranks other than 0 stay quiet
            backend = torch.distributed.get_backend() if parallel.joined() else "none"
            log.info(
                "Rank %d of %d: GPU %d (%s), %s backend",
                rank,
                size,
                gpus[0],
                torch.cuda.get_device_name(gpus[0]),
                backend,
            )
        if not parallel.is_root():
            log.setLevel(logging.WARNING)
    if gpus:
        if not distributed:
            log.info("Using GPUs %s", ", ".join(map(str, gpus)))
            log.info("GPU %d: %s", gpus[0], torch.cuda.get_device_name(gpus[0]))
        param.device_id = gpus[0]
        _use_gpu(gpus[0])
    else:
        log.info("Use CPU.")
        common.set_mode_cpu()

    handler = SignalHandler(args.sigint_effect, args.sighup_effect).install()
    actions = {"stop": SolverAction.STOP, "snapshot": SolverAction.SNAPSHOT, "none": SolverAction.NONE}
    events = EventLog(args.events) if args.events else None
    try:
        if args.snapshot:
            del param.weights[:]
        elif args.weights:
            del param.weights[:]
            param.weights.append(args.weights)
        solver = get_solver(
            param,
            events=events,
            action=lambda: actions[handler.check()],
            source=args.solver,
            engine=args.engine,
            precision=args.precision,
        )
        if args.snapshot:
            log.info("Resuming from %s", args.snapshot)
            solver.restore(args.snapshot)
        log.info("Starting Optimization")
        solver.solve()
        log.info("Optimization Done.")
    finally:
        handler.close()
        if events is not None:
            events.close()
        if distributed:  # on an error too: a gloo group left to the interpreter's exit after a lost peer can
            parallel.shutdown()  # abort the process ("terminate called without an active exception")
    return 0


def _rank_gpu(gpus: list[int]) -> list[int]:
    """Under torchrun or ``_launch``: this process's GPU (``--gpu``'s entry for LOCAL_RANK, else LOCAL_RANK's
    own GPU when CUDA is there), or none for the CPU."""
    rank = parallel.local_rank()
    if gpus:
        return [gpus[rank % len(gpus)]]
    if common.cuda_available():
        return [rank % torch.cuda.device_count()]
    return []


def _launch(gpus: list[int], argv: list[str]) -> int:
    """``--gpu 0,1`` / ``all``: one ``caffe train`` process per GPU, joined into one NCCL group."""
    return parallel.launch(len(gpus), functools.partial(_rank_main, list(argv)))


def _rank_main(argv: list[str]) -> int:
    """One rank started by ``_launch``: ``caffe train`` with the same flags (it finds its GPU by LOCAL_RANK)."""
    return run_command(train, list(argv))


# ---------------------------------------------------------------------------------------------
# caffe test


def _test_parser() -> ToolParser:
    parser = _parser("test", "score a model")
    parser.add_argument("--model", default="", help="the model definition protocol buffer text file")
    parser.add_argument("--weights", default="", help="the trained weights (.caffemodel or .caffemodel.h5)")
    parser.add_argument(
        "--iterations", type=gflags_int, default=50, help="the number of iterations to run (default 50)"
    )
    parser.add_argument(
        "--ap_version",
        default="Integral",
        choices=AP_VERSIONS,
        help="optional (neocaffe); how the mean AP of DetectionEvaluate outputs is computed (the SSD fork's "
        "solver field ap_version; default Integral)",
    )
    _common_flags(parser)
    return parser


def _f32(x: float) -> str:
    """A float as Caffe's log prints a C++ float: rounded to float32, 6 significant digits."""
    return f"{float(np.float32(x)):g}"


@command("test", "score a model")
def test(argv: list[str]) -> int:
    parser = _test_parser()
    args = _parse(parser, argv)
    if isinstance(args, int):
        return args
    if not args.model:
        return _usage_error(parser, "Need a model definition to score (--model).")
    if not args.weights:
        return _usage_error(parser, "Need model weights to score (--weights).")
    if args.iterations < 1:
        return _usage_error(parser, f"--iterations must be positive, got {args.iterations}")
    try:
        select_device(args.gpu)
    except _Usage as e:
        return _usage_error(parser, str(e))
    from caffe.net import Net

    net = Net(args.model, common.TEST, level=args.level, stages=_stages(args.stage))
    net.copy_from(args.weights)
    log.info("Running for %d iterations.", args.iterations)
    producer = {top: net.layer_dict[layer].type for layer, tops in net.top_names.items() for top in tops}
    detection = [name for name in net.outputs if producer.get(name) == "DetectionEvaluate"]
    outputs = [name for name in net.outputs if name not in detection]
    tally = DetectionTally(detection)
    weights = net.blob_loss_weights
    scores: list[np.ndarray] = []
    loss = np.float32(0)
    for i in range(args.iterations):
        with torch.no_grad():
            iter_loss = net.forward_from_to(0, net.num_layers - 1)
        loss += np.float32(iter_loss)
        tally.add([np.asarray(net.blobs[name].data, dtype=np.float32) for name in detection])
        for j, name in enumerate(outputs):
            values = np.asarray(net.blobs[name].data, dtype=np.float32).reshape(-1)
            for v in values:
                log.info("Batch %d, %s = %s", i, name, _f32(v))
            if i == 0:
                scores.append(values.copy())
            elif values.size != scores[j].size:
                raise CaffeError(
                    f"{args.model}: output '{name}' holds {values.size} values at batch {i}, {scores[j].size} at "
                    "batch 0: caffe test averages outputs of a fixed size"
                )
            else:
                scores[j] += values
    loss /= np.float32(args.iterations)
    log.info("Loss: %s", _f32(loss))
    for name, total in zip(outputs, scores, strict=True):
        weight = np.float32(weights[name])
        for score in total:
            mean = np.float32(score) / np.float32(args.iterations)
            extra = f" (* {_f32(weight)} = {_f32(weight * mean)} loss)" if weight else ""
            log.info("%s = %s%s", name, _f32(mean), extra)
    for k, name in enumerate(detection):  # the SSD fork's evaluation rows: their mean average precision
        mean_ap, _ = tally.precisions(k, args.ap_version)
        log.info("%s = %s (mean AP, %s)", name, _f32(mean_ap), args.ap_version)
    return 0


# ---------------------------------------------------------------------------------------------
# caffe time


def _time_parser() -> ToolParser:
    parser = _parser("time", "benchmark model execution time")
    parser.add_argument("--model", default="", help="the model definition protocol buffer text file")
    parser.add_argument("--phase", default="", help="optional; network phase (TRAIN or TEST); default TRAIN.")
    parser.add_argument(
        "--iterations", type=gflags_int, default=50, help="the number of iterations to run (default 50)"
    )
    parser.add_argument(
        "--weights", default="", help="optional; weights to load first, separated by ',' (Caffe ignores this flag)"
    )
    parser.add_argument(
        "--engine",
        default="eager",
        choices=("eager", "compiled"),
        help="optional (neocaffe); compiled: after Caffe's per-layer (eager) figures and totals, print "
        "'Average time per layer, eager and compiled:', each layer's eager forward and backward beside "
        "those of its forward compiled alone by torch.compile (data, Python and untraceable layers: eager "
        "only), then the whole-net forward-backward of the eager and the compiled training step and their "
        "ratio (each compile happens before its timing)",
    )
    _common_flags(parser)
    return parser


def _benchmark(net: object, iterations: int) -> tuple[list[float], list[float]]:
    """Caffe's layer-by-layer benchmark, logged; returns each layer's average forward and backward (ms)."""
    from caffe.net import Net

    assert isinstance(net, Net)
    n = len(net.layers)
    names = net.layer_names
    sync = _sync(net.device)
    clock = time.perf_counter
    forward_per_layer = [0.0] * n
    backward_per_layer = [0.0] * n
    forward_time = backward_time = 0.0
    log.info("*** Benchmark begins ***")
    log.info("Testing for %d iterations.", iterations)
    sync()
    total_start = clock()
    for j in range(iterations):
        iter_start = clock()
        for i in range(n):
            start = clock()
            net.forward_from_to(i, i)
            sync()
            forward_per_layer[i] += clock() - start
        forward_time += clock() - iter_start
        backward_start = clock()
        for i in range(n - 1, -1, -1):
            start = clock()
            net.backward_from_to(i, i)
            sync()
            backward_per_layer[i] += clock() - start
        backward_time += clock() - backward_start
        log.info("Iteration: %d forward-backward time: %s ms.", j + 1, _f32((clock() - iter_start) * 1e3))
    forward_ms = [t * 1e3 / iterations for t in forward_per_layer]
    backward_ms = [t * 1e3 / iterations for t in backward_per_layer]
    log.info("Average time per layer: ")
    for i in range(n):
        log.info("%10s\tforward: %s ms.", names[i], _f32(forward_ms[i]))
        log.info("%10s\tbackward: %s ms.", names[i], _f32(backward_ms[i]))
    total = (clock() - total_start) * 1e3
    log.info("Average Forward pass: %s ms.", _f32(forward_time * 1e3 / iterations))
    log.info("Average Backward pass: %s ms.", _f32(backward_time * 1e3 / iterations))
    log.info("Average Forward-Backward: %s ms.", _f32(total / iterations))
    log.info("Total Time: %s ms.", _f32(total))
    return forward_ms, backward_ms


def _compiled_layers(net: object, iterations: int, eager: tuple[list[float], list[float]]) -> None:
    """Each layer's eager figures (from ``_benchmark``) beside those of its forward compiled alone."""
    from caffe.net import Net
    from caffe.tools.layer_timing import CompiledLayerTime, time_compiled_layers

    assert isinstance(net, Net)
    log.info("Compiling and timing the layers one by one (torch.compile per layer)")
    compiled = time_compiled_layers(net, iterations, _sync(net.device))
    log.info("Average time per layer, eager and compiled:")
    for name, forward, backward, c in zip(net.layer_names, *eager, compiled, strict=True):
        if not isinstance(c, CompiledLayerTime):
            log.info("%10s\tforward: %s ms (eager only: %s).\tbackward: %s ms.", name, _f32(forward), c, _f32(backward))
            continue
        after = "compiled: no backward" if c.backward is None else f"compiled {_f32(c.backward)} ms"
        log.info(
            "%10s\tforward: %s ms (compiled %s ms).\tbackward: %s ms (%s).",
            name,
            _f32(forward),
            _f32(c.forward),
            _f32(backward),
            after,
        )


def _whole_net_forward(net: object, engine: str, iterations: int) -> None:
    """The gradient-free whole-net forward under ``engine`` (what inference uses), averaged."""
    from caffe.engine import set_inference_engine
    from caffe.net import Net

    assert isinstance(net, Net)
    set_inference_engine(engine)
    sync = _sync(net.device)
    last = len(net.layers) - 1
    with torch.no_grad():
        net.forward_from_to(0, last)  # builds the engine's plan
        sync()
        start = time.perf_counter()
        for _ in range(iterations):
            net.forward_from_to(0, last)
        sync()
    elapsed = (time.perf_counter() - start) * 1e3
    log.info("Average Forward pass without gradients, whole net, %s engine: %s ms.", engine, _f32(elapsed / iterations))


def _whole_step(net: object, iterations: int) -> None:
    """Forward + backward of the whole net per iteration, eager then compiled (``caffe.train_step``)."""
    from caffe.net import Net
    from caffe.train_step import TrainEngine

    assert isinstance(net, Net)
    compiled = TrainEngine(net, "compiled")
    if compiled.name != "compiled":
        return  # TrainEngine said why
    if compiled.step is not None and not compiled.step.losses:
        log.info("No loss in the net: no training step to compile (time the TRAIN net)")
        return
    sync = _sync(net.device)
    timings = {}
    for engine in (TrainEngine(net, "eager"), compiled):
        sync()
        start = time.perf_counter()
        engine.forward_backward()  # the compiled one compiles here
        sync()
        first = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(iterations):
            net.clear_param_diffs()
            engine.forward_backward()
        sync()
        timings[engine.name] = (time.perf_counter() - start) * 1e3 / iterations
        log.info(
            "Average Forward-Backward, whole net, %s training engine: %s ms (first iteration %s s)",
            engine.name,
            _f32(timings[engine.name]),
            _f32(first),
        )
    log.info("Compiled / eager time: %s", _f32(timings["compiled"] / timings["eager"]))


@command("time", "benchmark model execution time")
def time_(argv: list[str]) -> int:
    parser = _time_parser()
    args = _parse(parser, argv)
    if isinstance(args, int):
        return args
    if not args.model:
        return _usage_error(parser, "Need a model definition to time (--model).")
    phases = {"": common.TRAIN, "TRAIN": common.TRAIN, "TEST": common.TEST}
    if args.phase not in phases:
        return _usage_error(parser, f'phase must be "TRAIN" or "TEST", got "{args.phase}"')
    if args.iterations < 1:
        return _usage_error(parser, f"--iterations must be positive, got {args.iterations}")
    try:
        select_device(args.gpu)
    except _Usage as e:
        return _usage_error(parser, str(e))
    from caffe.engine import inference_engine, set_inference_engine
    from caffe.net import Net

    net = Net(args.model, phases[args.phase], level=args.level, stages=_stages(args.stage))
    for weights in (w.strip() for w in args.weights.split(",")):
        if weights:
            log.info("Loading weights from %s", weights)
            net.copy_from(weights)
    engine = inference_engine()
    set_inference_engine("eager")
    try:
        with net.every_layer_backward() as added:
            if added:
                log.info(
                    "%d layer(s) need no backward (no loss above them); their backward times the parameter "
                    "gradients, as Caffe's does",
                    added,
                )
            log.info("Timing layer by layer with the eager engine (%s)", "GPU" if net.device.type == "cuda" else "CPU")
            last = len(net.layers) - 1
            log.info("Performing Forward")
            initial_loss = net.forward_from_to(0, last)
            log.info("Initial loss: %s", _f32(initial_loss))
            log.info("Performing Backward")
            net.backward_from_to(last, 0)
            eager = _benchmark(net, args.iterations)
            if args.engine == "compiled":
                _compiled_layers(net, args.iterations, eager)
                _whole_step(net, args.iterations)
        if engine != "eager":
            _whole_net_forward(net, engine, args.iterations)
    finally:
        set_inference_engine(engine)
    log.info("*** Benchmark ends ***")
    return 0
