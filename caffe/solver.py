"""Solver: trains a Net as Caffe's ``Solver`` does, from a SolverParameter.

It builds the train net and the test nets (sharing the train net's weights), runs iterations
(``iter_size`` forward/backward passes, then an update), tests every ``test_interval``, prints
Caffe's log lines (so Caffe's log parsers and DIGITS read them), writes snapshots and restores them
exactly (the files and formats are ``caffe.snapshot``'s), and can also write one JSON line per
display, test and snapshot for programs that follow a training (``events``).

The update rule is the subclass's (``caffe.solvers``): SGD, Nesterov, AdaGrad, RMSProp, AdaDelta,
Adam, each keeping Caffe's history blobs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
from google.protobuf import text_format

from caffe import common, parallel
from caffe import snapshot as snapshots
from caffe.blob import Blob
from caffe.errors import SolverError
from caffe.limits import check_path
from caffe.net import Net
from caffe.precision import LossScaler, check_precision
from caffe.precision import precision as default_precision
from caffe.proto import caffe_pb2 as pb
from caffe.protoio import read_net_param, read_solver_param
from caffe.train_step import (
    TrainEngine,
    check_engine_precision,
    check_train_engine,
    resolve_engine,
    train_engine,
)
from caffe.util.detection_ap import AP_VERSIONS, DetectionTally

log = logging.getLogger("caffe")

_SOLVERS: dict[str, type[Solver]] = {}


def fmt(x: float) -> str:
    """A number as C++'s default stream output (6 significant digits), as Caffe's log lines print it."""
    return f"{x:g}"


def _cpow(base: float, exponent: float) -> float:
    """``pow`` as C's: inf on overflow and NaN for a negative base with a fractional exponent."""
    try:
        value = base**exponent
    except OverflowError:
        return math.inf
    return math.nan if isinstance(value, complex) else float(value)


def register_solver(name: str) -> Callable[[type[Solver]], type[Solver]]:
    """Class decorator: register an update rule's Solver subclass under its ``type`` name."""

    def deco(cls: type[Solver]) -> type[Solver]:
        _SOLVERS[name] = cls
        cls.type_name = name
        return cls

    return deco


def solver_class(type_name: str) -> type[Solver]:
    """The Solver subclass registered for ``type_name`` (``caffe.solvers`` registers Caffe's six; ``import
    caffe`` imports it, so this module never imports its subclasses)."""
    cls = _SOLVERS.get(type_name)
    if cls is None:
        raise SolverError(f"unknown solver type '{type_name}' (known: {', '.join(sorted(_SOLVERS))})")
    return cls


def get_solver(solver: str | os.PathLike | pb.SolverParameter, **kwargs: Any) -> Solver:
    """pycaffe's ``caffe.get_solver``: the solver class named by the parameter's ``type``."""
    if isinstance(solver, pb.SolverParameter):
        return solver_class(solver.type)(solver, **kwargs)
    param = read_solver_param(solver)
    kwargs.setdefault("source", str(solver))
    return solver_class(param.type)(param, **kwargs)


def learning_rate_at(
    p: pb.SolverParameter,
    it: int,
    step: int = 0,
    dtype: type[np.floating] = np.float32,
    source: str = "SolverParameter",
) -> tuple[float, int]:
    """Caffe's GetLearningRate as a pure function: the rate at iteration ``it`` (rounded to Caffe's ``Dtype``)
    and the step after it (``step``: the current step before it, which ``multistep`` advances at most once
    per call, as Caffe does; ``step`` sets it from ``it``; the SSD fork's ``plateau`` is ``base_lr * gamma^step``
    with the step :func:`plateau_step` advances)."""
    policy = p.lr_policy
    if policy in ("step", "exp", "inv", "multistep", "plateau") and p.gamma < 0:
        raise SolverError(f"{source}: lr_policy '{policy}' needs gamma >= 0, got {fmt(p.gamma)}")
    if policy == "fixed":
        rate = p.base_lr
    elif policy == "step":
        if p.stepsize <= 0:
            raise SolverError(f"{source}: lr_policy 'step' needs a positive stepsize")
        step = it // p.stepsize
        rate = p.base_lr * p.gamma**step
    elif policy == "exp":
        rate = p.base_lr * _cpow(p.gamma, it)
    elif policy == "inv":
        rate = p.base_lr * (1.0 + p.gamma * it) ** (-p.power)
    elif policy == "multistep":
        if step < len(p.stepvalue) and it >= p.stepvalue[step]:
            step += 1
        rate = p.base_lr * p.gamma**step
    elif policy == "plateau":
        rate = p.base_lr * p.gamma**step
    elif policy == "poly":
        rate = p.base_lr * _cpow(1.0 - it / p.max_iter, p.power)
    elif policy == "sigmoid":
        if p.stepsize <= 0:
            raise SolverError(f"{source}: lr_policy 'sigmoid' needs a positive stepsize")
        z = -p.gamma * (it - p.stepsize)  # exp overflows to inf, the rate to 0, as in C++ (no OverflowError)
        rate = p.base_lr * (1.0 / (1.0 + (math.exp(z) if z < 700 else math.inf)))
    else:
        raise SolverError(
            f"{source}: unknown lr_policy '{policy}' (fixed, step, exp, inv, multistep, poly, sigmoid, plateau)"
        )
    return float(dtype(rate)), step


class Plateau(NamedTuple):
    """The SSD fork's ``plateau`` policy's memory: the lowest smoothed loss so far and the iteration of the last
    event (a new lowest loss or a step). Not in snapshots, as in the fork: a resumed run starts afresh."""

    minimum_loss: float = float(np.finfo(np.float32).max)
    last_event: int = 0


def plateau_step(p: pb.SolverParameter, it: int, step: int, state: Plateau, loss: float) -> tuple[int, Plateau]:
    """The fork's ``plateau`` rule at iteration ``it`` with the smoothed ``loss``: a lower loss is an event; when
    ``plateau_winsize[step]`` iterations passed since the last event, the step advances (another event)."""
    if loss < state.minimum_loss:
        state = Plateau(loss, it)
    if step < len(p.plateau_winsize) and it >= state.last_event + p.plateau_winsize[step]:
        step, state = step + 1, state._replace(last_event=it)
    return step, state


class SolverAction:
    NONE, STOP, SNAPSHOT = "none", "stop", "snapshot"


class Callback:
    """pycaffe's solver callback: ``on_start`` before each iteration, ``on_gradients_ready`` before the update."""

    def __init__(self, on_start: Callable[[], Any], on_gradients_ready: Callable[[], Any]) -> None:
        self.on_start, self.on_gradients_ready = on_start, on_gradients_ready


class EventLog:
    """One JSON object per line, flushed at once (the web app follows trainings through it)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._f = open(self.path, "a", buffering=1)  # noqa: SIM115  (kept open for the training)

    def write(self, event: str, **fields: Any) -> None:
        record = {"event": event, "time": round(time.time(), 3), **fields}
        self._f.write(json.dumps(record, allow_nan=True) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


class Solver:
    """Caffe's Solver; subclasses implement the update rule (``update_rule``) and its history."""

    type_name: ClassVar[str] = ""
    history_per_param: ClassVar[int] = 1  # AdaDelta and Adam keep two history blobs per parameter

    def __init__(
        self,
        solver: str | os.PathLike | pb.SolverParameter,
        *,
        events: str | os.PathLike | EventLog | None = None,
        action: Callable[[], str] | None = None,
        source: str | None = None,
        engine: str | None = None,
        precision: str | None = None,
    ) -> None:
        if isinstance(solver, pb.SolverParameter):
            self.param = pb.SolverParameter()
            self.param.CopyFrom(solver)
            from caffe.upgrade import upgrade_solver_as_needed

            self.source = source or "SolverParameter"  # the file it came from, for messages
            upgrade_solver_as_needed(self.param, self.source)
        else:
            self.param = read_solver_param(solver)
            self.source = str(solver)
        p = self.param
        log.info("Initializing solver from parameters: \n%s", text_format.MessageToString(p).rstrip())
        if p.average_loss < 1:
            raise SolverError(f"{self.source}: average_loss should be at least 1, got {p.average_loss}")
        if p.iter_size < 1:
            raise SolverError(f"{self.source}: iter_size should be at least 1, got {p.iter_size}")
        self.rank, self.world_size = parallel.world()  # several ranks: rank 0 alone logs, tests, snapshots
        self.root = self.rank == 0
        self._check_fork_fields()
        if not self.root:
            events = None
        self.events = EventLog(events) if isinstance(events, (str, os.PathLike)) else events
        self.action = action
        self.callbacks: list[Callback] = []
        self.requested_early_exit = False
        self.iter = 0
        self.current_step = 0
        self.plateau = Plateau()
        self.engine = check_train_engine(engine) if engine is not None else train_engine()
        self.precision = check_precision(precision) if precision is not None else default_precision()
        if self.precision != "fp32":
            check_engine_precision(self.engine, self.precision)
            if common.dtype() != torch.float32:
                raise SolverError(f"training precision {self.precision} is for float nets, not {common.dtype()}")
        # fp16's dynamic loss scale: the solver's (snapshots keep it), lent to the compiled step
        self.loss_scaler = LossScaler() if self.precision == "fp16" else None
        self._train_engine: TrainEngine | None = None
        self._groups_key: tuple[tuple[float, ...], tuple[float, ...]] | None = None  # see _update_groups
        self._groups: list[tuple[list[int], float, float]] = []
        if self.root:
            snapshots.check_snapshot_prefix(self.param, self.source)
        if p.random_seed >= 0:
            common.set_random_seed(p.random_seed + self.rank)
        if p.HasField("solver_mode") and p.solver_mode == pb.SolverParameter.GPU and common.mode() == "CPU":
            log.info("solver_mode is GPU, but the CPU mode was chosen (no --gpu, or no CUDA): training on the CPU")
        self.net = self._train_net()
        self.test_nets = self._test_nets()
        if self.world_size > 1 and parallel.joined():  # every rank starts from rank 0's weights
            self.broadcast_weights()
        log.info("Solver scaffolding done.")
        self.losses: list[float] = []
        self.smoothed_loss = 0.0
        self.history: list[Blob] = [
            Blob(b.shape, dtype=b.dtype, device=b.device)
            for _ in range(self.history_per_param)
            for b in self.net.learnable_params
        ]

    def _check_fork_fields(self) -> None:
        """The SSD fork's solver fields: a known eval_type and ap_version; plateau with one process only."""
        p = self.param
        if p.eval_type not in ("classification", "detection"):
            raise SolverError(f"{self.source}: unknown eval_type '{p.eval_type}' (classification, detection)")
        if p.eval_type == "detection" and p.ap_version not in AP_VERSIONS:
            raise SolverError(f"{self.source}: unknown ap_version '{p.ap_version}' ({', '.join(AP_VERSIONS)})")
        if p.lr_policy == "plateau" and self.world_size > 1:
            raise SolverError(
                f"{self.source}: lr_policy 'plateau' follows each process's own smoothed loss, so several "
                "processes would part ways: train it with one"
            )

    # ------------------------------------------------------------------ nets
    def _net_param(self, field: str) -> pb.NetParameter:
        value = getattr(self.param, field)
        if field.endswith("_param"):
            net = pb.NetParameter()
            net.CopyFrom(value)
            return net
        return self._read_net_file(value, field)

    def _read_net_file(self, path: str, field: str) -> pb.NetParameter:
        """The net prototxt a solver field names; a NUL byte or empty path is a SolverError naming the field."""
        check_path(path, f"{field} of {self.source}", SolverError)
        return read_net_param(path)

    def _train_net(self) -> Net:
        p = self.param
        given = [f for f in ("net", "net_param", "train_net", "train_net_param") if p.HasField(f)]
        if len(given) != 1:
            raise SolverError(
                f"{self.source}: the solver must specify exactly one train net with one of net, net_param, "
                f"train_net, train_net_param (found {len(given) or 'none'}: {', '.join(given)})"
            )
        net_param = self._net_param(given[0])
        log.info("Creating training net from %s", given[0] if given[0].endswith("_param") else getattr(p, given[0]))
        state = pb.NetState(phase=pb.TRAIN)
        state.MergeFrom(net_param.state)
        state.MergeFrom(p.train_state)
        net_param.state.CopyFrom(state)
        net = Net(net_param)
        for weights in p.weights:
            self.load_weights(net, weights)
        return net

    def _test_nets(self) -> list[Net]:
        p = self.param
        generic = [f for f in ("net", "net_param") if p.HasField(f)]
        specific: list[tuple[str, pb.NetParameter]] = [("test_net_param", n) for n in p.test_net_param]
        specific += [(f"test_net file: {f}", self._read_net_file(f, "test_net")) for f in p.test_net]
        if generic and len(p.test_iter) < len(specific):
            raise SolverError(f"{self.source}: test_iter must be specified for each test network")
        if not generic and len(p.test_iter) != len(specific):
            raise SolverError(
                f"{self.source}: test_iter must be specified for each test network "
                f"({len(specific)} test net(s), {len(p.test_iter)} test_iter value(s))"
            )
        sources = list(specific)
        for _ in range(len(p.test_iter) - len(specific)):
            sources.append((generic[0], self._net_param(generic[0])))
        if len(p.test_state) and len(p.test_state) != len(sources):
            raise SolverError(
                f"{self.source}: test_state must be unspecified or specified once per test net "
                f"({len(sources)} test net(s), {len(p.test_state)} test_state value(s))"
            )
        if sources and p.test_interval <= 0:
            raise SolverError(f"{self.source}: test_interval must be positive when there are test nets")
        nets = []
        for i, (source, net_param) in enumerate(sources):
            state = pb.NetState(phase=pb.TEST)
            state.MergeFrom(net_param.state)
            if len(p.test_state):
                state.MergeFrom(p.test_state[i])
            net_param.state.CopyFrom(state)
            log.info("Creating test net (#%d) specified by %s", i, source)
            net = Net(net_param)
            net.debug_info = p.debug_info
            for weights in p.weights:
                self.load_weights(net, weights)
            net.share_with(self.net)
            nets.append(net)
        return nets

    @staticmethod
    def load_weights(net: Net, model_list: str) -> list[str]:
        """Caffe's LoadNetWeights: a comma-separated list of weight files, copied in order."""
        copied: list[str] = []
        for name in (m.strip() for m in model_list.split(",")):
            if name:
                log.info("Finetuning from %s", name)
                copied += net.copy_from(name)
        return copied

    # ------------------------------------------------------------------ learning rate
    def learning_rate(self) -> float:
        """Caffe's GetLearningRate for the current iteration (updates ``current_step`` as Caffe does)."""
        if self.param.lr_policy == "plateau":
            self._advance_plateau()
        rate, step = learning_rate_at(self.param, self.iter, self.current_step, self._np_dtype, self.source)
        if self.param.lr_policy == "multistep" and step != self.current_step:
            log.info("MultiStep Status: Iteration %d, step = %d", self.iter, step)
        self.current_step = step
        return rate

    def _advance_plateau(self) -> None:
        """The fork's plateau bookkeeping for this iteration, with its log lines."""
        p, it = self.param, self.iter
        step, self.plateau = plateau_step(p, it, self.current_step, self.plateau, self.smoothed_loss)
        if step != self.current_step:
            log.info("Plateau Status: Iteration %d, step = %d", it, step)
        self.current_step = step
        if p.display and it % p.display == 0 and self.plateau.last_event > it - p.display:
            log.info("Plateau Status: Iteration %d, current minimum_loss = %s", it, fmt(self.plateau.minimum_loss))

    @property
    def _np_dtype(self) -> type[np.floating]:
        """The NumPy type of Caffe's ``Dtype`` for this solver's net: rates and states are computed and saved in it."""
        return np.float64 if self.net.dtype == torch.float64 else np.float32

    def broadcast_weights(self) -> None:
        """Give every rank rank 0's learnable weights (at the start; pycaffe's ``NCCL.bcast``)."""
        with torch.no_grad():
            parallel.broadcast([b.mutable_tensor for b in self.net.learnable_params])

    # ------------------------------------------------------------------ update
    def apply_update(self) -> None:
        """Caffe's ApplyUpdate: rate, clipping, then normalize, regularize and the rule; w -= diff.

        The parameters are updated in groups sharing ``lr_mult`` and ``decay_mult`` (usually two: weights
        and biases), each step of the rule one ``torch._foreach_*`` call over the group.
        """
        rate = self.learning_rate()
        if self.param.display and self.iter % self.param.display == 0:
            log.info("Iteration %d, lr = %s", self.iter, fmt(rate))
        self._last_rate = rate
        params = self.net.learnable_params
        with torch.no_grad():
            if self.world_size > 1:  # Caffe's multi-GPU rule: the ranks' diffs averaged before clip/normalize
                parallel.average([b.mutable_grad for b in params])
            if not self._overflowed(params):
                self._update(params, rate)
        self.iter += 1

    def _update(self, params: list[Blob], rate: float) -> None:
        """Clip, then per (lr_mult, decay_mult) group: normalize, regularize, the rule; w -= diff (no_grad)."""
        self.clip_gradients()
        n = len(params)
        for indices, lr_mult, decay_mult in self._update_groups():
            grads = [params[i].mutable_grad for i in indices]
            if self.param.iter_size > 1:
                torch._foreach_mul_(grads, 1.0 / self.param.iter_size)
            self._regularize(grads, [params[i].tensor for i in indices], decay_mult)
            history = [[self.history[k * n + i].mutable_tensor for i in indices] for k in range(self.history_per_param)]
            self.update_rule(grads, history, self._local_rate(rate, lr_mult))
        self.net.update()
        if self.world_size > 1 and self.net.debug_info:  # debug_info: every rank holds rank 0's weights
            parallel.check_identical([b.tensor for b in params], f"iteration {self.iter}'s weights")

    def _overflowed(self, params: list[Blob]) -> bool:
        """fp16 training: whether the (averaged) diffs overflowed, so the update is skipped (weights and
        history untouched) and the loss scale halves."""
        scaler = self.loss_scaler
        if scaler is None or scaler.diffs_finite([b.grad for b in params]):
            return False
        log.info("Iteration %d: fp16 diffs overflowed; update skipped, loss scale now %g", self.iter, scaler.scale)
        return True

    def _update_groups(self) -> list[tuple[list[int], float, float]]:
        """The learnable parameters' indices grouped by (lr_mult, decay_mult), in first-seen order."""
        key = (tuple(self.net.params_lr), tuple(self.net.params_weight_decay))
        if self._groups_key != key:
            groups: dict[tuple[float, float], list[int]] = {}
            for i, mults in enumerate(zip(*key, strict=True)):
                groups.setdefault(mults, []).append(i)
            self._groups = [(indices, lr, decay) for (lr, decay), indices in groups.items()]
            self._groups_key = key
        return self._groups

    def clip_gradients(self) -> None:
        clip = self.param.clip_gradients
        if clip < 0:
            return
        params = self.net.learnable_params
        norm = math.sqrt(sum(float(b.grad.double().pow(2).sum()) for b in params))
        if norm > clip:
            factor = clip / norm
            log.info(
                "Gradient clipping: scaling down gradients (L2 norm %s > %s) by scale factor %s",
                fmt(norm),
                fmt(clip),
                fmt(factor),
            )
            torch._foreach_mul_([b.mutable_grad for b in params], factor)

    def _regularize(self, grads: list[torch.Tensor], weights: list[torch.Tensor], decay_mult: float) -> None:
        """Add the weight decay's gradient (L2: decay * w; L1: decay * sign(w)) to ``grads``."""
        decay = self.param.weight_decay * decay_mult
        if not decay:
            return
        kind = self.param.regularization_type
        if kind == "L2":
            torch._foreach_add_(grads, weights, alpha=decay)
        elif kind == "L1":
            torch._foreach_add_(grads, torch._foreach_sign(weights), alpha=decay)
        else:
            raise SolverError(f"{self.source}: unknown regularization_type '{kind}' (L2 or L1)")

    def update_rule(self, grads: list[torch.Tensor], history: list[list[torch.Tensor]], rate: float) -> None:
        """Turn a group's diffs into the steps to subtract (the solver type's rule); ``history[k][j]`` is
        the k-th history blob of the group's j-th parameter, ``rate`` the group's local rate."""
        raise NotImplementedError

    def _local_rate(self, rate: float, lr_mult: float) -> float:
        """``rate * lr_mult`` rounded as Caffe's ``Dtype`` computes it."""
        return float(self._np_dtype(rate) * self._np_dtype(lr_mult))

    # ------------------------------------------------------------------ the loop
    def add_callback(self, on_start: Callable[[], Any] | Callback, on_gradients_ready: Callable[[], Any] | None = None):
        if isinstance(on_start, Callback) or hasattr(on_start, "on_gradients_ready"):  # e.g. caffe.NCCL
            cb = on_start
        else:
            cb = Callback(on_start, on_gradients_ready or (lambda: None))
        self.callbacks.append(cb)

    def _requested(self) -> str:
        return self.action() if self.action is not None else SolverAction.NONE

    def train_engine_for(self, iterations: int) -> TrainEngine:
        """The training engine (``caffe.train_step``) for a run of ``iterations``; kept while its choice holds."""
        name = resolve_engine(self.engine, iterations, self.net, self.precision)
        if self._train_engine is None or self._train_engine.requested != name:
            self._train_engine = TrainEngine(self.net, name, self.precision, self.loss_scaler)
        return self._train_engine

    def update_smoothed_loss(self, loss: float, start_iter: int) -> None:
        average = self.param.average_loss
        if len(self.losses) < average:
            self.losses.append(loss)
            size = len(self.losses)
            self.smoothed_loss = (self.smoothed_loss * (size - 1) + loss) / size
        else:
            idx = (self.iter - start_iter) % average
            self.smoothed_loss += (loss - self.losses[idx]) / average
            self.losses[idx] = loss

    def step(self, iters: int) -> None:
        """Run ``iters`` iterations (Caffe's Step)."""
        p = self.param
        start_iter, stop_iter = self.iter, self.iter + int(iters)
        self.losses, self.smoothed_loss = [], 0.0
        runner = self.train_engine_for(stop_iter - start_iter)
        timer, last_iter = time.perf_counter(), self.iter
        while self.iter < stop_iter:
            self.net.clear_param_diffs()
            self.net.set_progress(self.iter, stop_iter)
            if (
                p.test_interval
                and self.iter % p.test_interval == 0
                and (self.iter > 0 or p.test_initialization)
                and self.root
            ):
                self.test_all()
                if self.requested_early_exit:
                    break
            for cb in self.callbacks:
                cb.on_start()
            display = bool(p.display) and self.iter % p.display == 0
            self.net.debug_info = display and p.debug_info
            loss = 0.0
            for _ in range(p.iter_size):
                loss += runner.forward_backward()
            loss /= p.iter_size
            self.update_smoothed_loss(loss, start_iter)
            if display:
                lapse = time.perf_counter() - timer
                per_s = (self.iter - last_iter) / (lapse or 1.0)
                log.info(
                    "Iteration %d (%s iter/s, %ss/%d iters), loss = %s",
                    self.iter,
                    fmt(per_s),
                    fmt(lapse),
                    p.display,
                    fmt(self.smoothed_loss),
                )
                timer, last_iter = time.perf_counter(), self.iter
                outputs = self._log_outputs(self.net, "Train", None)
            for cb in self.callbacks:
                cb.on_gradients_ready()
            self.apply_update()
            if display and self.events is not None:
                self.events.write(
                    "train",
                    iter=self.iter - 1,
                    loss=self.smoothed_loss,
                    lr=self._last_rate,
                    iter_per_s=per_s,
                    outputs=outputs,
                )
            request = self._requested()
            if self.world_size > 1:  # a signal to any rank acts on all: stop wins over snapshot over none
                order = (SolverAction.NONE, SolverAction.SNAPSHOT, SolverAction.STOP)
                request = order[parallel.max_over_ranks(order.index(request))]
            if ((p.snapshot and self.iter % p.snapshot == 0) or request == SolverAction.SNAPSHOT) and self.root:
                self.snapshot()
            if request == SolverAction.STOP:
                self.requested_early_exit = True
                break

    def solve(self, resume_file: str | os.PathLike | None = None) -> None:
        """Caffe's Solve: restore if asked, run to max_iter, snapshot, final display and test."""
        p = self.param
        log.info("Solving %s", self.net.name)
        log.info("Learning Rate Policy: %s", p.lr_policy)
        self.requested_early_exit = False
        if resume_file:
            log.info("Restoring previous solver status from %s", resume_file)
            self.restore(resume_file)
        if self.events is not None:
            self.events.write("start", iter=self.iter, max_iter=p.max_iter, net=self.net.name, solver=self.source)
        start_iter = self.iter
        self.step(p.max_iter - self.iter)
        if p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot != 0) and self.root:
            self.snapshot()
        if self.requested_early_exit:
            log.info("Optimization stopped early.")
            if self.events is not None:
                self.events.write("done", iter=self.iter, stopped_early=True)
            return
        if p.display and self.iter % p.display == 0:
            with torch.no_grad():
                loss = self.net.forward_from_to(0, self.net.num_layers - 1)
            self.update_smoothed_loss(loss, start_iter)
            log.info("Iteration %d, loss = %s", self.iter, fmt(self.smoothed_loss))
        if p.test_interval and self.iter % p.test_interval == 0 and self.root:
            self.test_all()
        log.info("Optimization Done.")
        if self.events is not None:
            self.events.write("done", iter=self.iter, stopped_early=False)

    # ------------------------------------------------------------------ testing
    def test_all(self) -> None:
        for i in range(len(self.test_nets)):
            if self.requested_early_exit:
                break
            self.test(i)

    def test(self, test_net_id: int = 0) -> dict[str, float]:
        """Caffe's Test: mean of each output over test_iter batches, logged as 'Test net output #k'; with the SSD
        fork's ``eval_type: "detection"`` each output's mean AP over its DetectionEvaluate rows instead."""
        p = self.param
        log.info("Iteration %d, Testing net (#%d)", self.iter, test_net_id)
        net = self.test_nets[test_net_id]
        iters = p.test_iter[test_net_id]
        tally = DetectionTally(list(net.outputs)) if p.eval_type == "detection" else None
        totals: list[np.ndarray] | None = None
        loss = 0.0
        for _ in range(iters):
            request = self._requested()
            while request != SolverAction.NONE:
                if request == SolverAction.SNAPSHOT:
                    self.snapshot()
                elif request == SolverAction.STOP:
                    self.requested_early_exit = True
                request = self._requested()
            if self.requested_early_exit:
                break
            with torch.no_grad():
                batch_loss = net.forward_from_to(0, net.num_layers - 1)
            if p.test_compute_loss:
                loss += batch_loss
            if tally is not None:
                tally.add([net.blobs[name].data for name in net.outputs])
                continue
            values = [net.blobs[name].data.astype(np.float64).reshape(-1).copy() for name in net.outputs]
            totals = values if totals is None else [t + v for t, v in zip(totals, values, strict=True)]
        if self.requested_early_exit:
            log.info("Test interrupted.")
            return {}
        if p.test_compute_loss:
            log.info("Test loss: %s", fmt(loss / iters))
        if tally is not None:
            means = self._mean_precisions(tally)
        else:
            means = [t / iters for t in totals] if totals is not None else []
        results = self._log_outputs(net, "Test", means)
        if self.events is not None:
            self.events.write("test", iter=self.iter, net=test_net_id, outputs=results)
        return results

    def _mean_precisions(self, tally: DetectionTally) -> list[np.ndarray]:
        """Each output's mean AP (``ap_version``), each class's AP logged with ``show_per_class_result``."""
        means = []
        for index in range(len(tally.names)):
            mean, per_class = tally.precisions(index, self.param.ap_version)
            if self.param.show_per_class_result:
                for label, ap in per_class.items():
                    log.info("class%d: %s", label, fmt(ap))
            means.append(np.array([mean]))
        return means

    @staticmethod
    def _log_outputs(net: Net, kind: str, values: list[np.ndarray] | None) -> dict[str, float | list[float]]:
        """Log every element of every output as Caffe does; return {name: value(s)}."""
        results: dict[str, float | list[float]] = {}
        index = 0
        weights = net.blob_loss_weights
        for j, name in enumerate(net.outputs):
            data = values[j] if values is not None else net.blobs[name].data.reshape(-1)
            weight = weights[name]
            for v in data:
                extra = f" (* {fmt(weight)} = {fmt(weight * float(v))} loss)" if weight else ""
                log.info("    %s net output #%d: %s = %s%s", kind, index, name, fmt(float(v)), extra)
                index += 1
            results[name] = float(data[0]) if len(data) == 1 else [float(v) for v in data]
        return results

    # ------------------------------------------------------------------ snapshots (caffe.snapshot)
    def snapshot_filename(self, extension: str) -> str:
        return snapshots.snapshot_filename(self.param.snapshot_prefix, self.iter, extension)

    def snapshot(self) -> tuple[str, str]:
        """Write the weights, then the solver state (each atomically); returns both file names."""
        model = snapshots.write_weights(self.net, self.param, self.iter)
        state = self.snapshot_solver_state(model)
        if self.net.draws_random or self.loss_scaler is not None:
            snapshots.save_state_extras(state, self.loss_scaler.state() if self.loss_scaler is not None else None)
        if self.events is not None:
            self.events.write("snapshot", iter=self.iter, model=model, state=state)
        return model, state

    def snapshot_solver_state(self, model_filename: str) -> str:
        """Write the iteration, the weights' file name, the lr step and the history; returns the file name."""
        state = snapshots.SolverState(self.iter, model_filename, self.current_step, [b.data for b in self.history])
        return snapshots.write_state(self.param, state, self._np_dtype)

    def restore(self, state_file: str | os.PathLike) -> None:
        """Continue from a ``.solverstate`` (or ``.solverstate.h5``): iteration, weights, step, history."""
        path, state = snapshots.read_state(state_file)
        if len(state.history) != len(self.history):
            raise SolverError(
                f"{state_file}: incorrect length of history blobs: the state has {len(state.history)}, "
                f"the {self.type_name} solver of this net needs {len(self.history)}"
            )
        self.iter, self.current_step = state.iter, state.current_step
        if state.learned_net:
            self.net.copy_from(str(snapshots.learned_net_path(path, state.learned_net)))
        log.info("%sSolver: restoring history", self.type_name)
        snapshots.load_history(self.history, state.history, self._np_dtype, state_file)
        snapshots.fast_forward_data(self.param, self.iter, self.net, self.test_nets)
        loss_scale = snapshots.restore_state_extras(path)
        if self.loss_scaler is not None and loss_scale is not None:
            try:
                self.loss_scaler.load_state(*loss_scale)
            except ValueError as e:
                raise SolverError(f"{snapshots.rng_file(path)}: {e}") from None
            log.info("Restored the fp16 loss scale %g", self.loss_scaler.scale)

    # ------------------------------------------------------------------ pycaffe
    def share_weights(self, net: Net) -> None:
        net.share_with(self.net)

    def __repr__(self) -> str:
        return f"<caffe.{type(self).__name__} net='{self.net.name}' iter={self.iter}>"
