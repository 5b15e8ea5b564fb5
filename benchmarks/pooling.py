"""Compiled MAX pooling with a gradient: inductor's generated kernels against ATen's, forward + backward.

    python benchmarks/pooling.py [--rounds 7] [--no-write]

Each case compiles ``(pool(x * 1.0) * dy).sum()`` and its gradient twice in one process: once with
``F.max_pool2d`` (inductor lowers it to kernels of its own), once with ``caffe.ops.pooling``'s
``max_pool2d_with_indices``, which under ``torch.compile`` on the CPU calls ATen's kernels as an operator
inductor leaves alone (``caffe::max_pool2d``). Inputs are channels-last, the layout inductor gives a
convolution's top. The two run in alternating rounds; the table gives the medians and their ratio and goes
to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
import torch.nn.functional as F
from common import machine_info, median, write_docs_section

from caffe.ops.pooling import max_pool2d_with_indices

SECTION = "## Compiled MAX pooling"
# (what, input shape, kernel, stride, pad, ceil)
CASES = [
    ("LeNet pool1 (batch 64)", (64, 20, 24, 24), 2, 2, 0, False),
    ("LeNet pool2 (batch 64)", (64, 50, 8, 8), 2, 2, 0, False),
    ("CaffeNet pool1 (batch 32)", (32, 96, 55, 55), 3, 2, 0, True),
    ("ResNet-50 pool1 (batch 10)", (10, 64, 112, 112), 3, 2, 0, True),
    ("GoogLeNet inception 3x3/1 pool (batch 10)", (10, 192, 28, 28), 3, 1, 1, True),
]


def step_fn(use_caffe: bool, shape: tuple[int, ...], k: int, s: int, p: int, ceil: bool):
    """One compiled forward + backward of the pool; returns a callable running it once."""
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last).requires_grad_()

    def loss(t: torch.Tensor) -> torch.Tensor:
        t = t * 1.0  # produced inside the graph, as a convolution's top would be
        if use_caffe:
            y = max_pool2d_with_indices(t, (k, k), (s, s), (p, p), ceil)[0]
        else:
            y = F.max_pool2d(t, k, s, p, ceil_mode=ceil)
        return (y * y).sum()

    compiled = torch.compile(loss)

    def run() -> None:
        torch.autograd.grad(compiled(x), x)

    return run


def rate_ms(run, seconds: float = 0.3) -> float:
    """Milliseconds per call over a loop of about ``seconds``."""
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        run()
        n += 1
    return (time.perf_counter() - start) / n * 1e3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--no-write", action="store_true", help="print the table only")
    args = ap.parse_args(argv)
    info = machine_info()
    rows = []
    for what, shape, k, s, p, ceil in CASES:
        torch._dynamo.reset()  # each case compiles afresh (one code object: past the cache limit it would run eagerly)
        runs = {name: step_fn(name == "caffe", shape, k, s, p, ceil) for name in ("inductor", "caffe")}
        for run in runs.values():  # compile, then warm up
            for _ in range(3):
                run()
        ms: dict[str, list[float]] = {"inductor": [], "caffe": []}
        for r in range(args.rounds):
            for name in ("inductor", "caffe") if r % 2 else ("caffe", "inductor"):
                ms[name].append(rate_ms(runs[name]))
        a, b = median(ms["inductor"]), median(ms["caffe"])
        rows.append(f"| {what}: {'x'.join(map(str, shape))}, {k}x{k}/{s} pad {p} | {a:.2f} | {b:.2f} | {a / b:.2f}x |")
        print(rows[-1], flush=True)
    lines = [
        SECTION,
        "",
        f"Reproduce with `python benchmarks/pooling.py` ({info['date']}; {info['cpu']}, {info['cores']} cores, "
        f"torch {info['torch']}). Forward and backward of one MAX pooling compiled with `torch.compile`, "
        "channels-last input, medians of alternating rounds: inductor's own kernels (`F.max_pool2d`) against "
        "ATen's called as the operator `caffe::max_pool2d` (what the Pooling layer uses when a compiled "
        "training step captures it on the CPU).",
        "",
        "| pooling | inductor's kernels (ms) | ATen's, as `caffe::max_pool2d` (ms) | speed-up |",
        "|---|---|---|---|",
        *rows,
        "",
    ]
    if args.no_write:
        print("\n".join(lines))
    else:
        write_docs_section(SECTION, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
