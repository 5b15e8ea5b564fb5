"""Compiled training kernels: inductor's generated code against the eager kernels neocaffe calls as operators
of their own (MAX pooling, LRN across channels), forward + backward.

    python benchmarks/compiled_ops.py [--rounds 7] [--no-write]

Each case compiles ``(op(x * 1.0) ** 2).sum()`` and its gradient twice in one process: once with the plain
formula inductor lowers itself (``F.max_pool2d``; LRN's formula with ``channel_window_sum``), once with
``caffe.ops``' function, which under ``torch.compile`` on the CPU with a gradient calls the operator
(``caffe::max_pool2d``, ``caffe::lrn_across_channels``). Inputs are channels-last, the layout inductor gives
a convolution's top. The two run in alternating rounds; the table gives the medians and their ratio and goes
to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
import torch.nn.functional as F
from common import machine_info, median, write_docs_section

from caffe.ops.channel_window import channel_window_sum, lrn_across_channels
from caffe.ops.pooling import max_pool2d_with_indices

SECTION = "## Compiled MAX pooling and LRN"
Op = Callable[[torch.Tensor], torch.Tensor]


def pool(k: int, s: int, p: int, ceil: bool) -> tuple[Op, Op]:
    """(inductor's, the operator's) MAX pooling k x k / s, pad p."""
    return (
        lambda t: F.max_pool2d(t, k, s, p, ceil_mode=ceil),
        lambda t: max_pool2d_with_indices(t, (k, k), (s, s), (p, p), ceil)[0],
    )


def lrn(size: int, alpha: float = 1e-4, beta: float = 0.75) -> tuple[Op, Op]:
    """(inductor's, the operator's) LRN across channels, Caffe's AlexNet/GoogLeNet parameters."""

    def formula(t: torch.Tensor) -> torch.Tensor:
        return t * (channel_window_sum(t * t, (size - 1) // 2) * (alpha / size) + 1.0).pow(-beta)

    return formula, lambda t: lrn_across_channels(t, size, alpha, beta, 1.0)


# (what, input shape, the two implementations)
CASES = [
    ("MAX pool, LeNet pool1 (batch 64), 2x2/2", (64, 20, 24, 24), pool(2, 2, 0, False)),
    ("MAX pool, LeNet pool2 (batch 64), 2x2/2", (64, 50, 8, 8), pool(2, 2, 0, False)),
    ("MAX pool, CaffeNet pool1 (batch 32), 3x3/2", (32, 96, 55, 55), pool(3, 2, 0, True)),
    ("MAX pool, ResNet-50 pool1 (batch 10), 3x3/2", (10, 64, 112, 112), pool(3, 2, 0, True)),
    ("MAX pool, GoogLeNet inception (batch 10), 3x3/1 pad 1", (10, 192, 28, 28), pool(3, 1, 1, True)),
    ("LRN 5, CaffeNet norm1 (batch 32)", (32, 96, 27, 27), lrn(5)),
    ("LRN 5, CaffeNet norm2 (batch 32)", (32, 256, 13, 13), lrn(5)),
    ("LRN 5, GoogLeNet norm2 (batch 10)", (10, 192, 56, 56), lrn(5)),
]


def step_fn(op: Op, shape: tuple[int, ...]) -> Callable[[], None]:
    """One compiled forward + backward of ``op``; returns a callable running it once."""
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last).requires_grad_()
    compiled = torch.compile(lambda t: op(t * 1.0).square().sum())  # t * 1.0: produced inside the graph

    def run() -> None:
        torch.autograd.grad(compiled(x), x)

    return run


def rate_ms(run: Callable[[], None], seconds: float = 0.3) -> float:
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
    for what, shape, ops in CASES:
        torch._dynamo.reset()  # each case compiles afresh (past dynamo's cache limit it would run eagerly)
        runs = [step_fn(op, shape) for op in ops]
        for run in runs:  # compile, then warm up
            for _ in range(3):
                run()
        ms: list[list[float]] = [[], []]
        for r in range(args.rounds):
            for i in (0, 1) if r % 2 else (1, 0):
                ms[i].append(rate_ms(runs[i]))
        a, b = median(ms[0]), median(ms[1])
        rows.append(f"| {what}: {'x'.join(map(str, shape))} | {a:.2f} | {b:.2f} | {a / b:.2f}x |")
        print(rows[-1], flush=True)
    lines = [
        SECTION,
        "",
        f"Reproduce with `python benchmarks/compiled_ops.py` ({info['date']}; {info['cpu']}, {info['cores']} "
        f"cores, torch {info['torch']}). Forward and backward of one operation compiled with `torch.compile`, "
        "channels-last input, medians of alternating rounds: inductor's code for the plain formula against the "
        "eager kernels called as operators of their own (`caffe::max_pool2d`, `caffe::lrn_across_channels`: "
        "what the Pooling and LRN layers use when a compiled training step captures them on the CPU).",
        "",
        "| operation | inductor's code (ms) | the operator (ms) | speed-up |",
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
