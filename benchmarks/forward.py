"""Forward (inference) time per image: neocaffe's engines against cv2.dnn and hand-written PyTorch.

    python benchmarks/forward.py                 # everything, writes docs/benchmarks.md
    python benchmarks/forward.py --quick --no-write --models squeezenet alexnet --batches 1
    python benchmarks/forward.py --device cuda --no-write --out gpu.md   # GPU 0, its own section

For each model (ResNet-50 1by2 open_nsfw, SqueezeNet v1.0, the res10 SSD face detector, AlexNet,
GoogLeNet) and batch size, in one process and on the same input:

* neocaffe: ``caffe.Net`` + ``net.forward()`` under each inference engine that exists
  (``caffe.set_inference_engine``: eager, fused, compiled), one Net per engine;
* ``cv2.dnn.readNetFromCaffe`` with the OpenCV backend, same threads as torch;
* the same network written by hand as a ``torch.nn.Module`` (benchmarks/torch_models.py) with the
  Net's weights, in four variants: eager NCHW, eager channels_last, TorchScript (trace + freeze +
  optimize_for_inference) and torch.compile (inductor, freezing); models without a hand-written
  module (the SSD detector) have no torch rows.

Every engine's output is first checked against neocaffe's eager (layer by layer) output. Then the
engines are timed round-robin (a rotating order, one call each per round) and the median per
engine is reported, so that drift on a noisy machine hits every engine alike. Times read as
achieved GFLOP/s (convolution + inner-product FLOPs from the Net's shapes) and as a share of the
machine's measured fp32 GEMM peak.

With ``--device cuda`` the nets, the torch modules and the inputs live on GPU 0, each timed call is
bracketed by ``torch.cuda.synchronize()``, cv2.dnn (CPU only) is left out, the GEMM peak is the GPU's,
and the report is a section of its own ("Forward (inference), GPU").
"""

from __future__ import annotations

import argparse
import copy
import gc
import math
import os
import resource
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    DOCS,
    MODELS,
    GemmProbe,
    ModelSpec,
    Progress,
    build_net,
    forward_flops,
    gemm_peak,
    machine_info,
    make_input,
    median,
    reshape_input,
    write_docs_section,
)
from torch_models import BUILDERS, load_from_net

TOLERANCE = 1e-3
NOISY = 0.25  # cores used by other processes (plus steal) that make a timed round count as noisy
SECTION = "## Forward (inference)"
GPU_SECTION = "## Forward (inference), GPU"
DEVICE = torch.device("cpu")  # where nets, modules and inputs live: main() sets it from --device


def _sync() -> None:
    """Wait for the GPU's queued work (a no-op on the CPU): timings bracket each call with it."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def _use_device() -> None:
    """neocaffe's mode for DEVICE (nets move there at their next forward)."""
    import caffe

    if DEVICE.type == "cuda":
        caffe.set_device(DEVICE.index or 0)
        caffe.set_mode_gpu()
    else:
        caffe.set_mode_cpu()


def _host(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().cpu().numpy().copy()


class CudaGemm:
    """fp32 ``torch.mm`` (n x n) on the GPU: ``peak(seconds)`` the best GFLOP/s, a call one timed GEMM (the
    GPU counterpart of common.gemm_peak / GemmProbe)."""

    def __init__(self, n: int = 4096) -> None:
        self.n = n
        self.a, self.b = torch.randn(n, n, device=DEVICE), torch.randn(n, n, device=DEVICE)
        self.c = torch.empty(n, n, device=DEVICE)
        self()

    def __call__(self) -> float:
        _sync()
        t = time.perf_counter()
        torch.mm(self.a, self.b, out=self.c)
        _sync()
        return 2.0 * self.n**3 / (time.perf_counter() - t) / 1e9

    def peak(self, seconds: float = 3.0) -> float:
        best, start, reps = 0.0, time.perf_counter(), 0
        while reps < 5 or time.perf_counter() - start < seconds:
            best, reps = max(best, self()), reps + 1
        return best


# ---------------------------------------------------------------------------- CPU load of other processes
def _busy_jiffies() -> tuple[float, float]:
    """(busy, steal) seconds summed over all CPUs, from /proc/stat."""
    try:
        fields = [float(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return math.nan, math.nan
    hz = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0.0] * 8)[:8]
    return (user + nice + system + irq + softirq) / hz, steal / hz


def _own_cpu() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


class LoadMeter:
    """Average CPU use (in cores) of other processes, and steal, between start() and stop()."""

    def start(self) -> None:
        self._t, (self._busy, self._steal), self._own = time.perf_counter(), _busy_jiffies(), _own_cpu()

    def stop(self) -> tuple[float, float]:
        dt = time.perf_counter() - self._t
        busy, steal = _busy_jiffies()
        other = (busy - self._busy - (_own_cpu() - self._own)) / dt
        return max(other, 0.0), (steal - self._steal) / dt


def wait_for_quiet(max_wait: float, threshold: float = 0.3) -> float:
    """Wait (at most ``max_wait`` s) until other processes use less than ``threshold`` cores over 1 s."""
    meter, other = LoadMeter(), math.nan
    deadline = time.perf_counter() + max_wait
    while time.perf_counter() < deadline:
        meter.start()
        time.sleep(1.0)
        other, _ = meter.stop()
        if other < threshold:
            break
    return other


# ---------------------------------------------------------------------------- engines
@dataclass
class Engine:
    """One way of running a model. ``prepare(batch)`` returns a zero-argument forward."""

    name: str
    group: str  # neocaffe | cv2 | torch
    prepare: Callable[[int], Callable[[], object]]
    output: Callable[[], np.ndarray]
    note: str = ""
    run: Callable[[], object] | None = None
    first_call: float = math.nan  # prepare + first forward (compile time for the compiled ones)
    samples: list[float] = field(default_factory=list)
    noisy_samples: list[float] = field(default_factory=list)
    all_rounds: bool = False  # noisy rounds had to be counted
    diff: float = math.nan
    logit_diff: float = math.nan
    error: str = ""


@dataclass
class Result:
    model: str
    batch: int
    engine: str
    group: str
    per_image: float  # seconds, median
    spread: tuple[float, float]  # min, max per image
    n: int
    first_call: float
    diff: float
    error: str = ""
    all_rounds: bool = False


def neocaffe_engine_names() -> list[str | None]:
    import caffe

    if not hasattr(caffe, "set_inference_engine"):
        return [None]  # only the default forward exists
    return ["eager", "fused", "compiled"]


class ModelBench:
    """Everything for one model: the Nets, the torch module and its variants, cv2's net, the input."""

    def __init__(self, spec: ModelSpec, tmp: Path, say: Callable[[str], None], skip: Sequence[str] = ()) -> None:
        import caffe

        self.spec, self.say = spec, say
        self.engines: list[Engine] = []
        self.x_np: np.ndarray | None = None

        # the reference net (eager, layer by layer) and, for random weights, its caffemodel
        self.ref = build_net(spec)
        self.flops, _ = forward_flops(self.ref)
        weights = spec.weights_path
        if weights is None:
            weights = tmp / f"{spec.key}.caffemodel"
            self.ref.save(str(weights))
        self.weights = weights

        for eng in neocaffe_engine_names():
            net = self.ref if eng in (None, "eager") else build_net(spec, weights)
            self.engines.append(self._neocaffe(net, eng))
        # the reference output is computed by the eager net under the "eager" engine (or the default)
        self.ref_engine = self.engines[0]

        if DEVICE.type == "cpu":  # cv2.dnn's OpenCV backend runs on the CPU only
            try:
                import cv2

                self.engines.append(self._cv2(cv2))
            except ImportError as e:
                say(f"  cv2.dnn skipped: {e}")

        caffe.set_mode_cpu()
        self.module = None
        if spec.key in BUILDERS:
            self.module = load_from_net(BUILDERS[spec.key](), self.ref).to(DEVICE)
            self.engines += self._torch_variants()
        skipped = [e.name for e in self.engines if e.name in skip]
        if skipped:
            say(f"  skipped (--skip-engines): {', '.join(skipped)}")
            self.engines = [e for e in self.engines if e.name not in skip]

    # ---------------------------------------------------------------- neocaffe
    def _neocaffe(self, net, eng: str | None) -> Engine:
        import caffe

        state: dict[str, object] = {}

        def select() -> None:
            _use_device()
            if eng is not None:
                caffe.set_inference_engine(eng)

        def prepare(batch: int) -> Callable[[], object]:
            select()
            name = reshape_input(net, batch, self.spec.size)
            net.blobs[name].data[...] = self.x_np
            state["out"] = net.outputs[0]
            net.forward()

            def run() -> object:
                select()
                return net.forward()

            return run

        def output() -> np.ndarray:
            return np.array(net.blobs[state["out"]].data, copy=True)

        label = "neocaffe" if eng is None else f"neocaffe {eng}"
        e = Engine(label, "neocaffe", prepare, output)
        e.net = net  # type: ignore[attr-defined]
        return e

    # ---------------------------------------------------------------- cv2.dnn
    def _cv2(self, cv2) -> Engine:
        cnet = cv2.dnn.readNetFromCaffe(str(self.spec.prototxt_path), str(self.weights))
        cnet.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        cnet.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        state: dict[str, np.ndarray] = {}

        def prepare(batch: int) -> Callable[[], object]:
            cnet.setInput(self.x_np)
            cnet.forward()

            def run() -> object:
                state["out"] = cnet.forward()
                return state["out"]

            return run

        def output() -> np.ndarray:
            return np.array(state["out"], copy=True)

        return Engine("cv2.dnn", "cv2", prepare, output)

    # ---------------------------------------------------------------- hand-written torch
    def _torch_variants(self) -> list[Engine]:
        m = self.module
        assert m is not None
        state: dict[str, object] = {}

        def plain(name: str, model: torch.nn.Module, channels_last: bool) -> Engine:
            def prepare(batch: int) -> Callable[[], object]:
                x = torch.from_numpy(self.x_np).to(DEVICE)

                def run() -> object:
                    with torch.inference_mode():
                        xi = x.contiguous(memory_format=torch.channels_last) if channels_last else x
                        state[name] = model(xi)
                    return state[name]

                run()
                return run

            return Engine(name, "torch", prepare, lambda: _host(state[name]))

        m_cl = copy.deepcopy(m).to(memory_format=torch.channels_last)

        def jit_prepare(batch: int) -> Callable[[], object]:
            x = torch.from_numpy(self.x_np).to(DEVICE)
            with torch.no_grad():
                traced = torch.jit.trace(copy.deepcopy(m), x, check_trace=False)
                frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
                frozen(x)

            def run() -> object:
                with torch.no_grad():
                    state["jit"] = frozen(x)
                return state["jit"]

            run()
            return run

        compiled = torch.compile(copy.deepcopy(m), dynamic=False)

        def compile_prepare(batch: int) -> Callable[[], object]:
            x = torch.from_numpy(self.x_np).to(DEVICE)

            def run() -> object:
                with torch.no_grad():
                    state["compile"] = compiled(x)
                return state["compile"]

            run()  # compiles for this input shape
            return run

        def out(key: str) -> Callable[[], np.ndarray]:
            return lambda: _host(state[key])

        return [
            plain("torch eager", m, False),
            plain("torch channels_last", m_cl, True),
            Engine("torch.jit", "torch", jit_prepare, out("jit"), note="trace+freeze+optimize_for_inference"),
            Engine("torch.compile", "torch", compile_prepare, out("compile"), note="inductor, freezing"),
        ]

    # ---------------------------------------------------------------- one batch size
    def prepare(self, batch: int) -> None:
        self.x_np = make_input(self.spec, batch)
        for e in self.engines:
            e.samples, e.noisy_samples, e.all_rounds, e.run, e.error = [], [], False, None, ""
            e.diff = e.logit_diff = e.first_call = math.nan
            t = time.perf_counter()
            try:
                e.run = e.prepare(batch)
                e.first_call = time.perf_counter() - t
            except Exception as exc:
                e.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
                self.say(f"  ! {e.name} failed at batch {batch}: {e.error}")
                if os.environ.get("BENCH_DEBUG"):
                    traceback.print_exc()

    def check(self, batch: int) -> None:
        ref = self.ref_engine
        if ref.run is None:
            self.say(f"  ! no reference output ({ref.name} failed); outputs not checked")
            return
        ref.run()
        want = self._comparable(ref.output(), batch)
        for e in self.engines:
            if e.run is None:
                continue
            try:
                e.run()
                got = self._comparable(e.output(), batch)
                e.diff = float(np.abs(got - want).max()) if got.shape == want.shape else math.inf
            except Exception as exc:
                e.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
                e.run = None
                self.say(f"  ! {e.name} failed at batch {batch}: {e.error}")
                continue
            extra = ""
            if e.name == "torch eager" and self.module is not None:
                logits_ref = np.array(self.ref.blobs[self.module.logit_blob].data).reshape(batch, -1)
                with torch.inference_mode():
                    lg = _host(self.module.logits(torch.from_numpy(self.x_np).to(DEVICE))).reshape(batch, -1)
                e.logit_diff = float(np.abs(lg - logits_ref).max())
                extra = f", {self.module.logit_blob} max|diff| {e.logit_diff:.2e}"
            worst = max(e.diff, 0.0 if math.isnan(e.logit_diff) else e.logit_diff)
            verdict = "ok" if worst <= TOLERANCE else "MISMATCH"
            if e.name == "torch eager" and verdict != "ok":
                e.error = f"output differs from neocaffe by {worst:.2e} (> {TOLERANCE})"
            self.say(
                f"  check {self.spec.key} b{batch} {e.name:<20s} output max|diff| vs {ref.name}: "
                f"{e.diff:.2e}{extra} -> {verdict}"
            )

    def _comparable(self, out: np.ndarray, batch: int) -> np.ndarray:
        """The output as rows to compare: per image, or a detector's detections (cv2.dnn pads its
        keep_top_k rows with zeros; a real detection never has label 0, the background)."""
        if self.spec.detector:
            rows = out.reshape(-1, 7)
            return rows[np.any(rows != 0, axis=1)]
        return out.reshape(batch, -1)

    def breakdown(self, batch: int, top: int = 5) -> tuple[str, str]:
        """Where neocaffe's time goes at this batch: share per layer type (eager engine, per-layer timers)
        and the heaviest torch ops of the fused engine (torch.profiler, self CPU time)."""
        import caffe

        by_type: dict[str, float] = {}
        if hasattr(caffe, "set_inference_engine"):
            caffe.set_inference_engine("eager")
        net = build_net(self.spec, self.weights)  # callbacks cannot be removed: a net of its own
        _use_device()
        name = reshape_input(net, batch, self.spec.size)
        net.blobs[name].data[...] = self.x_np
        started: dict[int, float] = {}
        types = [layer.type for layer in net.layers]

        def start(i: int) -> None:
            _sync()
            started[i] = time.perf_counter()

        net.before_forward(start)

        def done(i: int) -> None:
            _sync()
            by_type[types[i]] = by_type.get(types[i], 0.0) + time.perf_counter() - started[i]

        net.forward()
        by_type.clear()
        net.after_forward(done)
        for _ in range(2):
            net.forward()
        total = sum(by_type.values()) or 1.0
        eager = ", ".join(
            f"{t} {100 * v / total:.0f}%" for t, v in sorted(by_type.items(), key=lambda kv: -kv[1])[:top]
        )
        fused = next((e for e in self.engines if e.name == "neocaffe fused" and e.run is not None), None)
        ops = "—"
        if fused is not None:
            from torch.profiler import ProfilerActivity, profile

            fused.run()
            gpu = DEVICE.type == "cuda"
            activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if gpu else [ProfilerActivity.CPU]
            with profile(activities=activities) as prof:
                for _ in range(2):
                    fused.run()
                _sync()

            def own(a) -> float:  # self time on the device that computes
                return getattr(a, "self_device_time_total", 0.0) if gpu else a.self_cpu_time_total

            avgs = [a for a in prof.key_averages() if a.key.startswith(("aten::", "mkldnn::", "mkl::", "cudnn"))]
            tot = sum(own(a) for a in avgs) or 1.0
            avgs.sort(key=lambda a: -own(a))
            ops = ", ".join(f"`{a.key}` {100 * own(a) / tot:.0f}%" for a in avgs[:top])
        return eager, ops

    def close(self) -> None:
        self.engines.clear()
        self.ref = self.module = None  # type: ignore[assignment]


def run_batch(
    bench: ModelBench,
    batch: int,
    rounds: int,
    warmup: int,
    progress: Progress,
    wait: float,
    gemm: Callable[[], float],
    gemm_samples: list[float],
) -> tuple[list[Result], tuple[float, float]]:
    spec = bench.spec
    bench.prepare(batch)
    progress.step(f"{spec.key} b{batch} prepared")
    bench.check(batch)
    live = [e for e in bench.engines if e.run is not None]
    for e in live:  # prepare and check already ran each engine twice
        for _ in range(warmup if batch == 1 else max(warmup - 1, 0)):
            e.run()  # type: ignore[misc]
    if wait > 0:
        wait_for_quiet(wait)
    # Rounds during which other processes (or the hypervisor: steal) took more than NOISY cores are
    # repeated, up to 3x the asked rounds: with 2 OpenMP threads on 2 cores, one busy core can slow a
    # forward down 10x (threads wait at barriers for a descheduled sibling).
    whole, per_round = LoadMeter(), LoadMeter()
    whole.start()
    clean = done = 0
    noisy_rounds = 0
    while clean < rounds and done < 3 * rounds:
        order = live[done % len(live) :] + live[: done % len(live)] if live else []
        per_round.start()
        times: dict[str, float] = {}
        for e in order:
            if e.run is None:
                continue
            _sync()
            t = time.perf_counter()
            try:
                e.run()
                _sync()
            except Exception as exc:
                e.error, e.run = f"{type(exc).__name__}: {exc}".splitlines()[0][:200], None
                continue
            times[e.name] = time.perf_counter() - t
        gflops = gemm()  # the GEMM peak, measured under the same conditions as the engines
        other, steal = per_round.stop()
        done += 1
        noisy = other + steal > NOISY
        if not noisy:
            gemm_samples.append(gflops)
        for e in order:
            if e.name in times:
                (e.noisy_samples if noisy else e.samples).append(times[e.name])
        if noisy:
            noisy_rounds += 1
            progress.step(f"{spec.key} b{batch} noisy round ({other + steal:.1f} cores busy elsewhere), again", 0)
        else:
            clean += 1
            progress.step(f"{spec.key} b{batch} round {clean}/{rounds}")
    progress.step(f"{spec.key} b{batch} done", rounds - clean)
    other, steal = whole.stop()
    for e in bench.engines:
        if len(e.samples) < max(2, rounds // 2):  # too few quiet rounds: use every round
            e.samples += e.noisy_samples
            e.all_rounds = True
    results = []
    for e in bench.engines:
        per = [s / batch for s in e.samples]
        results.append(
            Result(
                spec.key,
                batch,
                e.name,
                e.group,
                median(per) if per and not e.error else math.nan,
                (min(per), max(per)) if per else (math.nan, math.nan),
                len(per),
                e.first_call,
                e.diff,
                e.error,
                e.all_rounds,
            )
        )
    return results, (other, steal, noisy_rounds, done)


# ---------------------------------------------------------------------------- report
def fmt_ms(s: float) -> str:
    if math.isnan(s):
        return "—"
    ms = s * 1e3
    return f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}"


def fmt_ratio(r: float) -> str:
    return "—" if math.isnan(r) else f"{r:.2f}x"


def best(results: list[Result], group: str) -> Result | None:
    ok = [r for r in results if r.group == group and not math.isnan(r.per_image)]
    return min(ok, key=lambda r: r.per_image) if ok else None


def summary_table(all_results: list[Result], flops: dict[str, int], engines: list[str]) -> list[str]:
    default = "neocaffe fused" if "neocaffe fused" in engines else None
    has_cv = any(r.group == "cv2" for r in all_results)  # cv2.dnn runs on the CPU only
    head = ["model", "batch", "GFLOP/img", *engines]
    head += ["neocaffe best / cv2", "neocaffe best / best torch"] if has_cv else ["neocaffe best / best torch"]
    if default:
        head.append("fused (default) / cv2" if has_cv else "fused (default) / best torch")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    keys = list(dict.fromkeys((r.model, r.batch) for r in all_results))
    for model, batch in keys:
        rs = [r for r in all_results if r.model == model and r.batch == batch]
        by = {r.engine: r for r in rs}
        bn, bt, cv = best(rs, "neocaffe"), best(rs, "torch"), by.get("cv2.dnn")
        cells = []
        for name in engines:
            r = by.get(name)
            cell = fmt_ms(r.per_image) if r else "—"
            if r and bn is r:
                cell = f"**{cell}**"
            if r and bt is r:
                cell = f"{cell} ★"
            cells.append(cell)
        ratio_cv = bn.per_image / cv.per_image if bn and cv and not math.isnan(cv.per_image) else math.nan
        ratio_t = bn.per_image / bt.per_image if bn and bt else math.nan
        fu = by.get(default) if default else None
        peer = cv if has_cv else bt
        ok = fu and peer and not math.isnan(fu.per_image) and not math.isnan(peer.per_image)
        ratio_default = fu.per_image / peer.per_image if ok else math.nan
        best_name = bn.engine.removeprefix("neocaffe ") if bn else "—"
        lines.append(
            f"| {MODELS[model].title} | {batch} | {flops[model] / 1e9:.2f} | "
            + " | ".join(cells)
            + (f" | {fmt_ratio(ratio_cv)} ({best_name})" if has_cv else "")
            + f" | {fmt_ratio(ratio_t)}{'' if has_cv else f' ({best_name})'} |"
            + (f" {fmt_ratio(ratio_default)} |" if default else "")
        )
    return lines


def efficiency_table(all_results: list[Result], flops: dict[str, int], peak: float, engines: list[str]) -> list[str]:
    head = ["model", "batch", *engines]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model, batch in dict.fromkeys((r.model, r.batch) for r in all_results):
        by = {r.engine: r for r in all_results if r.model == model and r.batch == batch}
        cells = []
        for name in engines:
            r = by.get(name)
            if r is None or math.isnan(r.per_image):
                cells.append("—")
                continue
            gfs = flops[model] / r.per_image / 1e9
            cells.append(f"{gfs:.0f} ({100 * gfs / peak:.0f}%)")
        lines.append(f"| {MODELS[model].title} | {batch} | " + " | ".join(cells) + " |")
    return lines


def detail_table(all_results: list[Result], flops: dict[str, int], peak: float) -> list[str]:
    head = ["model", "batch", "engine", "ms/img", "min–max ms", "n", "GFLOP/s", "% peak", "first call s"]
    head.append("max abs diff")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in all_results:
        gfs = flops[r.model] / r.per_image / 1e9 if not math.isnan(r.per_image) else math.nan
        pct = 100 * gfs / peak if not math.isnan(gfs) else math.nan
        if r.error:
            lines.append(
                f"| {r.model} | {r.batch} | {r.engine} | failed: {r.error.replace('|', '/')} | | | | | "
                f"{'' if math.isnan(r.first_call) else f'{r.first_call:.1f}'} | |"
            )
            continue
        diff = "—" if math.isnan(r.diff) else f"{r.diff:.1e}"
        lines.append(
            f"| {r.model} | {r.batch} | {r.engine} | {fmt_ms(r.per_image)} | "
            f"{fmt_ms(r.spread[0])}–{fmt_ms(r.spread[1])} | {r.n}{'†' if r.all_rounds else ''} | "
            f"{gfs:.1f} | {pct:.1f} | "
            f"{r.first_call:.2f} | {diff} |"
        )
    return lines


def compile_lines(all_results: list[Result]) -> list[str]:
    """First call (compile) times of the compiled engines, which the medians above leave out."""
    names = [n for n in ("neocaffe compiled", "torch.compile", "torch.jit") if any(r.engine == n for r in all_results)]
    if not names:
        return []
    parts = []
    for model, batch in dict.fromkeys((r.model, r.batch) for r in all_results):
        by = {r.engine: r for r in all_results if r.model == model and r.batch == batch}
        times = "/".join(
            "—" if n not in by or math.isnan(by[n].first_call) else f"{by[n].first_call:.1f}" for n in names
        )
        parts.append(f"{MODELS[model].title} b{batch} {times}")
    return [
        f"First call for a new input shape (compile or trace time, s; {' / '.join(names)}): " + "; ".join(parts) + ".",
        "",
    ]


def allocator_note() -> list[str]:
    """neocaffe may tune glibc's malloc for the whole process: say so, since every engine then shares it."""
    try:
        from caffe import common as caffe_common
    except ImportError:
        return []
    if not getattr(caffe_common, "_allocator_tuned", False):
        return []
    return [
        "neocaffe tuned glibc's allocator for the whole process (`mallopt` mmap/trim thresholds; "
        "`CAFFE_MALLOC_TUNING=0` turns it off), so the cv2 and plain-PyTorch rows of this run ran with it too.",
        "",
    ]


def breakdown_lines(breakdowns: dict[tuple[str, int], tuple[str, str]]) -> list[str]:
    if not breakdowns:
        return []
    lines = [
        "Where neocaffe's time goes: share of the forward per layer type under the `eager` engine (per-layer "
        "timers), and the heaviest torch ops under the default `fused` engine (torch.profiler, self CPU time).",
        "",
        "| model | batch | eager: time by layer type | fused: top ops |",
        "|---|---|---|---|",
    ]
    for (m, b), (eager, ops) in breakdowns.items():
        lines.append(f"| {MODELS[m].title} | {b} | {eager} | {ops} |")
    return [*lines, ""]


def report(
    all_results: list[Result],
    flops: dict[str, int],
    peak: float,
    gemm_info: dict[str, float],
    info: dict[str, str],
    args: argparse.Namespace,
    loads: dict[tuple[str, int], tuple[float, float, int, int]],
    breakdowns: dict[tuple[str, int], tuple[str, str]],
    wall: float,
) -> str:
    engines = list(dict.fromkeys(r.engine for r in all_results))
    gpu = DEVICE.type == "cuda"
    gemm_what = (
        f"`torch.mm` {CUDA_GEMM_N}x{CUDA_GEMM_N} on the GPU (TF32 for matmuls: {torch.backends.cuda.matmul.allow_tf32})"
        if gpu
        else "`torch.mm` 2048x2048 on all threads"
    )
    out = [
        GPU_SECTION if gpu else SECTION,
        "",
        f"Reproduce with `python benchmarks/forward.py{' --device cuda' if gpu else ''}` (flags: `--models`, "
        "`--batches`, `--rounds`, `--quick`, `--no-write`). Generated by that script; every number below was "
        "measured in this run.",
        "",
        *(
            [
                f"- GPU: {torch.cuda.get_device_name(DEVICE)}, CUDA {torch.version.cuda}, cuDNN "
                f"{torch.backends.cudnn.version()}, TF32 for convolutions {torch.backends.cudnn.allow_tf32} "
                "(PyTorch's defaults, the same for every engine); each timed call is bracketed by "
                "`torch.cuda.synchronize()`; cv2.dnn (CPU only) is left out"
            ]
            if gpu
            else []
        ),
        f"- Machine: {info['cpu']}; {info['cpu_flags']}; {info['cores']} cores visible, "
        f"torch threads {info['torch_threads']} (cv2 threads the same); {info['os']}",
        f"- Versions: torch {info['torch']}, OpenCV {info['opencv']}, neocaffe {info['neocaffe']}, "
        f"Python {info['python']}",
        f"- Date: {info['date']}; run: `{' '.join(['python benchmarks/forward.py', *sys.argv[1:]])}`, "
        f"{wall / 60:.1f} min wall in all",
        f"- fp32 GEMM peak measured here: **{peak:.0f} GFLOP/s**: the best {gemm_what}, "
        f"over a 3-s measurement at the start (best {gemm_info['start']:.0f}) and {gemm_info['n']:.0f} single GEMMs "
        f"timed inside the quiet rounds with the engines (median {gemm_info['median']:.0f})",
        f"- Method: one process; each engine warmed up, outputs checked against neocaffe eager (tolerance "
        f"{TOLERANCE:g}), then timed round-robin in a rotating order ({args.rounds} rounds at batch 1, "
        f"{big_rounds(args.rounds)} above), medians reported. FLOPs count Convolution + InnerProduct "
        "(2 per multiply-add) from the Net's shapes.",
        "",
        "Forward time per image, ms (median). **bold**: neocaffe's best engine; ★: best plain-PyTorch variant. "
        "Ratios are times (above 1: neocaffe slower).",
        "",
        *summary_table(all_results, flops, engines),
        "",
        "GFLOP per image: " + ", ".join(f"{MODELS[m].title} {f / 1e9:.2f}" for m, f in flops.items()) + ".",
        "",
        *compile_lines(all_results),
        f"The same times as achieved GFLOP/s (and % of the {peak:.0f} GFLOP/s GEMM peak):",
        "",
        *efficiency_table(all_results, flops, peak, engines),
        "",
        "<details><summary>Every engine: spread, achieved GFLOP/s, % of GEMM peak, first-call time, "
        "output check</summary>",
        "",
        "`first call s`: set-up for the batch size plus the first forward: the compile time for "
        "`neocaffe compiled` and `torch.compile` (inductor's on-disk cache may make repeats faster), "
        "trace+freeze for `torch.jit`. `max abs diff`: largest difference of the net's output to neocaffe eager.",
        "",
        *detail_table(all_results, flops, peak),
        "",
        "</details>",
        "",
        *breakdown_lines(breakdowns),
        "This VM is shared: a timed round during which other processes (or hypervisor steal) used more than "
        f"{NOISY} cores was repeated (at most 3x the rounds asked); n counts the quiet rounds used, † marks "
        "engines for which too few were quiet and every round was used. Other processes' average CPU use "
        "(cores) over the timed rounds, and noisy/total rounds: "
        + ", ".join(f"{m} b{b} {o + st:.2f} ({nz}/{tot})" for (m, b), (o, st, nz, tot) in loads.items())
        + ".",
        "",
        *allocator_note(),
        "Engines: `neocaffe eager` runs each layer's forward; `fused` folds BatchNorm/Scale/ReLU into "
        "oneDNN convolutions (and runs the BatchNorm/Scale/ReLU chains that follow no convolution as one pass); "
        "`compiled` is the fused plan under torch.compile. `cv2.dnn` is "
        "`readNetFromCaffe` on the OpenCV backend. The `torch` rows are the same networks written by hand "
        "(`benchmarks/torch_models.py`) with the Net's weights: eager NCHW, eager channels_last, "
        "`torch.jit.trace` + `freeze` + `optimize_for_inference`, `torch.compile` (inductor, freezing). "
        "AlexNet and GoogLeNet have random weights (seed 0; AlexNet's deploy prototxt has no fillers, so its "
        "zero weights get N(0, 2/fan_in)); inputs are uniform noise of image-like range, except for the res10 SSD "
        "face detector (real weights, no hand-written torch module): a real photo with faces "
        "(`mtcnn_face_caffe/test1.jpg` resized to 300x300 minus the mean (104, 177, 123), as "
        "`cv2.dnn.blobFromImage` makes it), so that its DetectionOutput works on real candidates; its output "
        "check compares the detection rows (cv2.dnn's zero padding rows left out).",
        "",
    ]
    return "\n".join(out)


def write_docs(section: str) -> None:
    write_docs_section(GPU_SECTION if DEVICE.type == "cuda" else SECTION, section)


# ---------------------------------------------------------------------------- main
CUDA_GEMM_N = 4096


def measure_peak(wait: float, seconds: float = 3.0) -> float:
    """GEMM peak, after waiting (at most ``wait`` s) for a quiet machine; the run keeps the best of several."""
    if wait > 0:
        wait_for_quiet(wait)
    if DEVICE.type == "cuda":
        return CudaGemm(CUDA_GEMM_N).peak(seconds)
    return gemm_peak(2048, seconds)


def big_rounds(rounds: int) -> int:
    return max(2, rounds // 5)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS), help="subset of models")
    p.add_argument("--batches", nargs="+", type=int, default=[1, 32], help="batch sizes (default 1 32)")
    p.add_argument(
        "--rounds", type=int, default=None, help="timed rounds at batch 1 (default 20; larger batches: rounds // 5)"
    )
    p.add_argument("--quick", action="store_true", help="fewer rounds and warm-ups (a smoke test)")
    p.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="time breakdown per layer type and top ops for neocaffe (default: on, off with --quick)",
    )
    p.add_argument("--no-write", action="store_true", help=f"do not update {DOCS.relative_to(DOCS.parents[1])}")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=None,
        help="before timing, wait up to this many s for other processes to go quiet (default 10, --quick 0)",
    )
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where every engine runs (cuda: GPU 0)")
    p.add_argument(
        "--skip-engines", nargs="+", default=[], metavar="NAME", help='engines to leave out, e.g. "torch.compile"'
    )
    p.add_argument("--out", type=Path, help="also write the report section (markdown) to this file")
    args = p.parse_args(argv)
    if args.rounds is None:
        args.rounds = 5 if args.quick else 20
    if args.profile is None:
        args.profile = not args.quick
    if args.wait_quiet is None:
        args.wait_quiet = 0.0 if args.quick else 10.0
    return args


def main(argv: list[str] | None = None) -> int:
    global DEVICE
    args = parse_args(argv)
    DEVICE = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    t_start = time.perf_counter()
    torch.set_num_threads(os.cpu_count() or 1)
    try:
        import cv2

        cv2.setNumThreads(torch.get_num_threads())
    except ImportError:
        pass
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True

    info = machine_info()
    print(f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, OpenCV {info['opencv']}")
    print(f"neocaffe engines: {[e or 'default' for e in neocaffe_engine_names()]}")
    peaks = [measure_peak(args.wait_quiet)]
    where = torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else f"{torch.get_num_threads()} threads"
    size = CUDA_GEMM_N if DEVICE.type == "cuda" else 2048
    print(f"fp32 GEMM peak (torch.mm {size}^2, {where}): {peaks[0]:.1f} GFLOP/s")
    gemm, gemm_samples = (CudaGemm(CUDA_GEMM_N) if DEVICE.type == "cuda" else GemmProbe(2048)), []

    warmup = 1 if args.quick else 2
    total = sum(1 + (args.rounds if b == 1 else big_rounds(args.rounds)) for b in args.batches) * len(args.models)
    progress = Progress(total, "forward")
    all_results: list[Result] = []
    flops: dict[str, int] = {}
    loads: dict[tuple[str, int], tuple[float, float, int, int]] = {}
    breakdowns: dict[tuple[str, int], tuple[str, str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.models:
            spec = MODELS[key]
            progress.write(f"== {spec.title}")
            bench = ModelBench(spec, Path(tmp), progress.write, args.skip_engines)
            flops[key] = bench.flops
            progress.write(f"  {bench.flops / 1e9:.3f} GFLOP/image (conv + fc), {len(bench.engines)} engines")
            for batch in args.batches:
                rounds = args.rounds if batch == 1 else big_rounds(args.rounds)
                results, load = run_batch(bench, batch, rounds, warmup, progress, args.wait_quiet, gemm, gemm_samples)
                loads[(key, batch)] = load
                all_results += results
                for r in results:
                    gfs = flops[key] / r.per_image / 1e9 if not math.isnan(r.per_image) else math.nan
                    progress.write(
                        f"  b{batch:<3d} {r.engine:<20s} {fmt_ms(r.per_image):>7s} ms/img  {gfs:6.1f} GFLOP/s "
                        f"{100 * gfs / max([*peaks, *gemm_samples]):5.1f}% peak  first call {r.first_call:6.2f} s"
                        + (f"  [{r.error}]" if r.error else "")
                    )
                if args.profile:
                    try:
                        breakdowns[(key, batch)] = bench.breakdown(batch)
                        progress.write(f"  b{batch} eager time by layer type: {breakdowns[(key, batch)][0]}")
                        progress.write(f"  b{batch} fused engine, top ops: {breakdowns[(key, batch)][1]}")
                    except Exception as exc:
                        progress.write(f"  ! breakdown failed: {type(exc).__name__}: {exc}")
            bench.close()
            del bench
            gc.collect()
            torch._dynamo.reset()
    progress.close()
    peak = max([*peaks, *gemm_samples])
    gemm_median = median(gemm_samples)
    print(
        f"fp32 GEMM peak: {peak:.1f} GFLOP/s (best of a {peaks[0]:.0f} GFLOP/s 3-s measurement at the start and "
        f"{len(gemm_samples)} single GEMMs interleaved with the quiet rounds, median {gemm_median:.0f})"
    )
    gemm_info = {"start": peaks[0], "median": gemm_median, "n": float(len(gemm_samples))}
    wall = time.perf_counter() - t_start
    section = report(all_results, flops, peak, gemm_info, info, args, loads, breakdowns, wall)
    print()
    print(section)
    if args.out:
        args.out.write_text(section)
        print(f"written: {args.out}")
    if not args.no_write:
        write_docs(section)
        print(f"written: {DOCS}")
    print(f"total wall time {wall / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
