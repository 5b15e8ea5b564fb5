#!/usr/bin/env python3
"""Run Caffe's MNIST/LeNet tutorial in full, as it is written, and report how it went.

From a Caffe root (by default this repository) it runs the tutorial's three commands:

    ./data/mnist/get_mnist.sh
    ./examples/mnist/create_mnist.sh
    ./examples/mnist/train_lenet.sh

that is, 10,000 iterations of LeNet, tested every 500, snapshots at 5,000 and 10,000; then it prints
the final test accuracy and loss, the snapshot files and the time of each step. The log of the
training is saved beside the snapshots (examples/mnist/train_lenet.log). Exit status 0 when every
step succeeded (and, with --min-accuracy, the final accuracy reached it).

    python examples/mnist/run_tutorial.py --cpu                    # in this repository
    python examples/mnist/run_tutorial.py --cpu --root /tmp/caffe  # in a fresh folder (files copied)

--cpu trains on the CPU as the tutorial's one-line change ``solver_mode: CPU`` does: in a folder given
with --root the copied lenet_solver.prototxt gets that line; in this repository, whose solver is kept
as Caffe ships it (``solver_mode: GPU``), CUDA is hidden from the training instead. Without --cpu the
solver's GPU mode is used where CUDA exists (neocaffe trains on the CPU, and logs so, where not).

get_mnist.sh reads CAFFE_DATA_MIRROR: --mirror sets it (a folder holding the four .gz files); by
default the environment's value, else the test assets' mnist/ folder if there is one
($CAFFE_TEST_ASSETS, or ../shared/assets), else the files are downloaded. ``caffe`` must be on PATH
(``pip install -e .``); if it is not, a wrapper running this checkout is put on PATH.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STEPS = ["data/mnist/get_mnist.sh", "examples/mnist/create_mnist.sh", "examples/mnist/train_lenet.sh"]
FILES = [*STEPS, "examples/mnist/lenet_solver.prototxt", "examples/mnist/lenet_train_test.prototxt"]
SOLVER = "examples/mnist/lenet_solver.prototxt"


def default_mirror() -> str | None:
    if os.environ.get("CAFFE_DATA_MIRROR"):
        return os.environ["CAFFE_DATA_MIRROR"]
    assets = Path(os.environ.get("CAFFE_TEST_ASSETS", REPO.parent / "shared" / "assets"))
    return str(assets / "mnist") if (assets / "mnist" / "train-images-idx3-ubyte.gz").is_file() else None


def prepare_root(root: Path, cpu: bool) -> None:
    """Copy the tutorial's files into another Caffe root; --cpu: the tutorial's solver_mode edit."""
    for rel in FILES:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        if not (root / rel).exists():
            shutil.copy2(REPO / rel, root / rel)
    if cpu:
        solver = root / SOLVER
        text, n = re.subn(r"(?m)^solver_mode:\s*GPU\s*$", "solver_mode: CPU", solver.read_text())
        if n:
            solver.write_text(text)


def environment(cpu_by_env: bool, mirror: str | None, scratch: Path) -> dict[str, str]:
    env = dict(os.environ)
    if mirror:
        env["CAFFE_DATA_MIRROR"] = mirror
    if cpu_by_env:
        env["CUDA_VISIBLE_DEVICES"] = ""
    if shutil.which("caffe", path=env.get("PATH")) is None:
        wrapper = scratch / "caffe"
        run = "import sys; from caffe.tools.cli import main; sys.exit(main())"
        wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -c "{run}" "$@"\n')
        wrapper.chmod(0o755)
        env["PATH"] = f"{scratch}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def run_step(root: Path, script: str, env: dict[str, str], log_file: Path | None) -> tuple[int, float, str]:
    """Run one script from the root, echoing its output; returns (status, seconds, output)."""
    print(f"$ ./{script}", flush=True)
    start = time.perf_counter()
    lines = []
    with subprocess.Popen(
        [f"./{script}"], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if not log_file or "Test net output" in line or "Snapshotting" in line or "Iteration" in line:
                print(f"    {line}", end="", flush=True)
    output = "".join(lines)
    if log_file:
        log_file.write_text(output)
    return proc.returncode, time.perf_counter() - start, output


def parse_tests(log: str) -> list[tuple[int, float, float]]:
    """(iteration, accuracy, loss) of each test of the first test net, from Caffe's log lines."""
    results, iteration, accuracy = [], None, None
    for line in log.splitlines():
        if m := re.search(r"Iteration (\d+), Testing net \(#0\)", line):
            iteration, accuracy = int(m.group(1)), None
        elif iteration is not None and (m := re.search(r"Test net output #\d+: accuracy = (\S+)", line)):
            accuracy = float(m.group(1))
        elif (
            iteration is not None
            and accuracy is not None
            and (m := re.search(r"Test net output #\d+: loss = (\S+)", line))
        ):
            results.append((iteration, accuracy, float(m.group(1))))
            iteration = None
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=REPO, help="the Caffe root to run in (default: this repository)")
    parser.add_argument("--cpu", action="store_true", help="train on the CPU (the tutorial's solver_mode: CPU)")
    parser.add_argument("--mirror", help="folder holding the four MNIST .gz files (CAFFE_DATA_MIRROR)")
    parser.add_argument("--min-accuracy", type=float, help="fail unless the final test accuracy reaches this")
    args = parser.parse_args(argv)

    root = args.root.resolve()
    in_repo = root == REPO
    if not in_repo:
        prepare_root(root, args.cpu)
    mirror = args.mirror or default_mirror()
    print(f"Caffe root: {root}\nMNIST from: {mirror or 'the internet'}\n", flush=True)

    timings = []
    with tempfile.TemporaryDirectory() as scratch:
        env = environment(args.cpu and in_repo, mirror, Path(scratch))
        total = time.perf_counter()
        for script in STEPS:
            is_training = script.endswith("train_lenet.sh")
            log_file = root / "examples/mnist/train_lenet.log" if is_training else None
            status, seconds, output = run_step(root, script, env, log_file)
            timings.append((script, seconds))
            if status != 0:
                print(f"\n./{script} failed (exit status {status})", file=sys.stderr)
                return 1
        total = time.perf_counter() - total

    tests = parse_tests(output)
    snapshots = sorted((root / "examples/mnist").glob("lenet_iter_*"), key=lambda p: (len(p.name), p.name))
    print("\nResult")
    for script, seconds in timings:
        print(f"  {script:34s} {seconds:8.1f} s")
    print(f"  {'total':34s} {total:8.1f} s")
    device = "CPU" if "Use CPU." in output else "GPU"
    print(f"  trained on: {device}")
    if tests:
        it, acc, loss = tests[-1]
        print(f"  final test (iteration {it}): accuracy = {acc:g}, loss = {loss:g}")
    else:
        print("  no test result found in the log", file=sys.stderr)
        return 1
    print("  snapshots:")
    for path in snapshots:
        print(f"    {path.relative_to(root)} ({path.stat().st_size} bytes)")
    print(f"  log: {(root / 'examples/mnist/train_lenet.log').relative_to(root)}")
    if args.min_accuracy is not None and acc < args.min_accuracy:
        print(f"final accuracy {acc:g} is below {args.min_accuracy}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
