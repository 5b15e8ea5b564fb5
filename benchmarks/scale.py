"""Scale-out: training throughput of one `caffe train` process against N of them (torchrun, gloo on the CPU).

    python benchmarks/scale.py [--procs 1,2] [--rounds 3] [--models lenet,caffenet] [--quick] [--no-write]

Weak scaling, Caffe's multi-GPU semantics: every rank runs the prototxt's full batch, so N ranks train
N x batch images per iteration. Each configuration is a real subprocess (`python -m caffe train` for one
process, `python -m torch.distributed.run --standalone --nproc-per-node N -m caffe train` for N), with
OMP/MKL threads set so that the ranks share the cores (C cores: 1 process x C threads against N processes
x C/N threads each; 1 process x C/N threads is also run, the rank with the same resources). The rate is
read from rank 0's display lines ("Iteration 40 (12.3 iter/s, 1.6s/20 iters)") after a warm-up, so start-up
and net construction are excluded. With >= 2 CUDA devices, `caffe train --gpu 0` against `--gpu 0,..,N-1`
(NCCL) is measured too. The table goes to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from common import REPO, assets_dir, machine_info, median, write_docs_section
from google.protobuf import text_format
from train import drop_test_layers, mnist_lmdb

from caffe.proto import caffe_pb2 as pb

SECTION = "## Scale-out (multi-process training)"
DISPLAY = re.compile(r"Iteration (\d+) \(\S+ iter/s, (\S+)s/(\d+) iters\)")


@dataclass(frozen=True)
class Workload:
    """A training net written to disk with its per-rank batch and its timing window (in iterations)."""

    title: str
    net: Path
    batch: int
    warmup: int  # iterations before the measured window (a multiple of display)
    display: int  # iterations per display line
    windows: int  # display lines measured after the warm-up

    @property
    def max_iter(self) -> int:
        return self.warmup + self.windows * self.display + 1  # the last display line is at max_iter - 1


@dataclass(frozen=True)
class Config:
    """One way to run a workload: ``procs`` ranks of ``threads`` torch threads, on the CPU or ``gpus`` GPUs."""

    procs: int
    threads: int
    gpus: bool = False
    independent: bool = False  # N separate 1-process trainings at once: the same load without any exchange

    @property
    def label(self) -> str:
        where = f"GPU{'s' if self.procs > 1 else ''} (`--gpu {','.join(map(str, range(self.procs)))}`)"
        unit = (
            where
            if self.gpus
            else f"{'independent ' if self.independent else ''}process{'es' if self.procs > 1 else ''}"
        )
        threads = f"{self.threads} thread{'s' if self.threads > 1 else ''}"
        return f"{self.procs} {unit} x {threads}" + (" (no exchange)" if self.independent else "")


# ---------------------------------------------------------------------------- the nets
def lenet_net(folder: Path, db: Path) -> Path:
    """The MNIST tutorial's lenet_train_test.prototxt (batch 64) reading ``db``; its TEST layers are never
    built, as the solver sets no ``test_iter``."""
    text = (assets_dir() / "caffe-ref/examples/mnist/lenet_train_test.prototxt").read_text()
    source = '"examples/mnist/mnist_train_lmdb"'
    if source not in text:
        raise RuntimeError(f"lenet_train_test.prototxt no longer reads {source}")
    path = folder / "lenet_train_test.prototxt"
    path.write_text(text.replace(source, f'"{db}"'))
    return path


def caffenet_net(folder: Path, batch: int) -> Path:
    """CaffeNet's train_val (TRAIN phase, random weights from its fillers) fed by a DummyData layer."""
    net = text_format.Parse(
        (assets_dir() / "caffe-ref/models/bvlc_reference_caffenet/train_val.prototxt").read_text(), pb.NetParameter()
    )
    drop_test_layers(net)
    for layer in (x for x in net.layer if x.type == "Data"):
        dummy = pb.DummyDataParameter(
            shape=[pb.BlobShape(dim=[batch, 3, 227, 227]), pb.BlobShape(dim=[batch])],
            data_filler=[pb.FillerParameter(type="constant", value=v) for v in (1.0, 3.0)],
        )
        layer.CopyFrom(pb.LayerParameter(name=layer.name, type="DummyData", top=layer.top, dummy_data_param=dummy))
    path = folder / f"caffenet_b{batch}_train.prototxt"
    path.write_text(text_format.MessageToString(net))
    return path


def write_solver(work: Workload, folder: Path) -> Path:
    """Caffe's SGD settings, no test, no snapshot; display lines time the windows."""
    solver = pb.SolverParameter(
        net=str(work.net),
        base_lr=0.01,
        momentum=0.9,
        weight_decay=0.0005,
        lr_policy="fixed",
        display=work.display,
        max_iter=work.max_iter,
        snapshot=0,
        snapshot_after_train=False,
        random_seed=1,
        solver_mode=pb.SolverParameter.CPU,
    )
    path = folder / f"{work.net.stem}_solver.prototxt"
    path.write_text(text_format.MessageToString(solver))
    return path


# ---------------------------------------------------------------------------- running
def command(solver: Path, cfg: Config) -> list[str]:
    train = ["-m", "caffe", "train", "--solver", str(solver)]
    if cfg.gpus:
        return [sys.executable, *train, "--gpu", ",".join(map(str, range(cfg.procs)))]
    if cfg.procs == 1 or cfg.independent:
        return [sys.executable, *train]
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(cfg.procs)]
    return [*run, "--log-dir=torchrun-logs", *train]  # the agent's logs in the run's folder, not a new /tmp one


def iter_rate(log: str, warmup: int) -> float:
    """Iterations per second over rank 0's display windows that end after ``warmup``."""
    iters, seconds = 0, 0.0
    for m in DISPLAY.finditer(log):
        if int(m.group(1)) > warmup:
            iters += int(m.group(3))
            seconds += float(m.group(2))
    if not iters or seconds <= 0:
        raise RuntimeError(f"no display line after iteration {warmup} in the log:\n{log[-3000:]}")
    return iters / seconds


def run(work: Workload, solver: Path, cfg: Config, timeout: float) -> float:
    """Train ``work`` as ``cfg`` in a subprocess; its iterations/s in the measured window."""
    threads = str(cfg.threads)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    copies = cfg.procs if cfg.independent else 1
    procs = [
        subprocess.Popen(
            command(solver, cfg),
            cwd=solver.parent,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(copies)
    ]
    rates = []
    for proc in procs:
        try:
            log, _ = proc.communicate(timeout=timeout)
        finally:
            proc.kill()
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(command(solver, cfg))} exited {proc.returncode}:\n{log[-3000:]}")
        rates.append(iter_rate(log, work.warmup))
    return sum(rates) / len(rates)  # independent copies: their mean rate, each training its own batch


def configs(procs: list[int], cores: int) -> list[Config]:
    """CPU runs: for each N, N processes sharing the cores, and 1 process with each thread count used."""
    per_rank = {n: max(1, cores // n) for n in procs}
    threads = sorted({cores, 1, *per_rank.values()}, reverse=True)
    ranks = [Config(n, per_rank[n]) for n in procs if n > 1]
    alone = [Config(n, per_rank[n], independent=True) for n in procs if n > 1]
    return [Config(1, t) for t in threads] + ranks + alone


def gpu_configs(procs: list[int], cores: int) -> list[Config]:
    count = torch.cuda.device_count()
    used = sorted({1, *(n for n in procs if 1 < n <= count)})
    return [Config(n, max(1, cores // n), gpus=True) for n in used] if count >= 2 else []


# ---------------------------------------------------------------------------- the table
def table(rows: dict[str, dict[Config, float]], batches: dict[str, int], cores: int) -> list[str]:
    """Markdown rows: it/s, images/s, efficiency against the 1-rank run of the same per-rank resources,
    images/s relative to 1 process on all cores, and per-core efficiency against 1 process x 1 thread."""
    out = [
        "| model (batch per rank) | run | cores busy | iter/s | images/s | efficiency: N-rank / (N x 1-rank) "
        f"| images/s vs 1 process x {cores} threads | per-core efficiency vs 1 process x 1 thread |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for title, rates in rows.items():
        b = batches[title]
        ips = {c: c.procs * b * r for c, r in rates.items()}
        one_thread = ips.get(Config(1, 1))
        all_cores = ips.get(Config(1, cores))
        for c, r in rates.items():
            same = [x for x in ips if x.procs == 1 and x.gpus == c.gpus and (c.gpus or x.threads == c.threads)]
            single = ips[same[0]] if same else None
            eff = f"{ips[c] / (c.procs * single):.2f}" if c.procs > 1 and single else "—"
            busy = c.procs * c.threads
            if c.gpus:
                busy_s, vs_all, per_core = f"{c.procs} GPU(s)", "—", "—"
            else:
                busy_s = str(busy)
                vs_all = f"{ips[c] / all_cores:.2f}x" if all_cores else "—"
                per_core = f"{ips[c] / (busy * one_thread):.2f}" if one_thread else "—"
            out.append(
                f"| {title} ({b}) | {c.label} | {busy_s} | {r:.2f} | {ips[c]:.1f} | {eff} | {vs_all} | {per_core} |"
            )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--procs", default="1,2", help="process counts, comma-separated (1 is always run)")
    parser.add_argument("--models", default="lenet,caffenet", help="lenet and/or caffenet")
    parser.add_argument("--caffenet-batch", type=int, default=16, help="CaffeNet images per rank and iteration")
    parser.add_argument("--rounds", type=int, default=3, help="each configuration runs this often (median)")
    parser.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)), help="cores the ranks share")
    parser.add_argument("--quick", action="store_true", help="a tiny run for smoke testing (numbers meaningless)")
    parser.add_argument("--no-write", action="store_true", help="print the table, leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    procs = sorted({1, *(int(p) for p in args.procs.split(","))})
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if unknown := set(models) - {"lenet", "caffenet"}:
        parser.error(f"unknown models: {', '.join(sorted(unknown))}")
    rounds = 1 if args.quick else args.rounds
    cpu_runs, gpu_runs = configs(procs, args.cores), gpu_configs(procs, args.cores)
    load_before, start = os.getloadavg()[0], time.perf_counter()

    rows: dict[str, dict[Config, float]] = {}
    batches: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        works = []
        if "lenet" in models:
            db, _, _ = mnist_lmdb(folder, count=640 if args.quick else 6400)
            w = (2, 2, 2) if args.quick else (50, 50, 4)
            works.append(Workload("LeNet, MNIST LMDB", lenet_net(folder, db), 64, *w))
        if "caffenet" in models:
            b = 2 if args.quick else args.caffenet_batch
            w = (1, 1, 1) if args.quick else (2, 2, 4)
            works.append(Workload("CaffeNet, DummyData", caffenet_net(folder, b), b, *w))
        for work in works:
            solver = write_solver(work, folder)
            timeout = 120 if args.quick else 600
            samples: dict[Config, list[float]] = {c: [] for c in cpu_runs + gpu_runs}
            for r in range(rounds):
                for cfg in samples:
                    samples[cfg].append(run(work, solver, cfg, timeout))
                    rate = samples[cfg][-1]
                    print(f"{work.title} round {r + 1}: {cfg.label}: {rate:.2f} it/s", flush=True)
            rows[work.title] = {c: median(v) for c, v in samples.items()}
            batches[work.title] = work.batch
    load_after, minutes = os.getloadavg()[0], (time.perf_counter() - start) / 60

    info = machine_info()
    cmd = " ".join(["python", "benchmarks/scale.py", *(argv if argv is not None else sys.argv[1:])])
    skipped = (
        ""
        if gpu_runs
        else f" GPU runs (`caffe train --gpu 0,1`, NCCL) skipped: {torch.cuda.device_count()} CUDA device(s) here."
    )
    lines = [
        SECTION,
        "",
        f"Reproduce with `python benchmarks/scale.py`; this table: `{cmd}`, {info['date']}. "
        f"Machine: {info['cpu']}, {info['cores']} cores ({args.cores} used); torch {info['torch']}; "
        f"1-minute load average {load_before:.1f} before, {load_after:.1f} after; "
        f"the whole run took {minutes:.1f} min.",
        "Weak scaling as in Caffe: every rank trains the prototxt's full batch, so N ranks train N x batch images "
        "per iteration (images/s = N x batch x iter/s) and average their gradients once per iteration "
        "(gloo on the CPU). Each run is a `caffe train` subprocess (N processes through "
        "`python -m torch.distributed.run --standalone --nproc-per-node N -m caffe train`), its torch/OpenMP "
        "threads set by `OMP_NUM_THREADS`; iter/s is read from rank 0's display lines after "
        f"a warm-up (start-up and net construction excluded), median of {rounds} round(s). "
        "Efficiency is the issue's N-rank images/s / (N x images/s of 1 process with the same threads per rank); "
        f"the next column compares with 1 process using all {args.cores} cores, the last divides images/s by "
        "the cores busy and by 1 process x 1 thread's images/s." + skipped,
        "",
        *table(rows, batches, args.cores),
        "",
        f"On this {args.cores}-core CPU machine the N processes share the same cores, so these figures show the "
        "overhead of the gradient exchange (and of running N processes instead of N threads), not a speed-up. "
        "The 'independent processes (no exchange)' rows run N separate trainings at once with the same threads: "
        "the most N ranks could reach here; the gap between them and the N-rank row is what the exchange costs "
        "(and the most that overlapping it with backward could win back on these cores). "
        "The target on real GPUs, >= 0.9 efficiency at 2 GPUs for CaffeNet and ResNet-50 at batch >= 32 per GPU, "
        "is to be measured when a multi-GPU machine is available.",
        "",
    ]
    print("\n".join(lines))
    if not (args.no_write or args.quick):
        write_docs_section(SECTION, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
