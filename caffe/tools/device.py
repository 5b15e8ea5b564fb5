"""``caffe device_query``: what Caffe's tool prints about the GPUs (and, here, the CPU)."""

from __future__ import annotations

import argparse
import logging
import os

import torch

from caffe.tools.registry import command
from caffe.util import machine

log = logging.getLogger("caffe")


def parse_gpus(spec: str) -> list[int]:
    """``--gpu`` as Caffe reads it: comma-separated ids, or ``all``."""
    if not spec:
        return []
    if spec == "all":
        return list(range(torch.cuda.device_count()))
    try:
        return [int(x) for x in spec.split(",")]
    except ValueError:
        raise SystemExit(f"--gpu must be comma-separated device ids or 'all', got '{spec}'") from None


@command("device_query", "show GPU diagnostic information")
def device_query(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="caffe device_query")
    parser.add_argument("--gpu", default="", help="GPU ids (comma-separated) or 'all'")
    args = parser.parse_args(argv)
    log.info("Querying GPUs %s", args.gpu)
    log.info(
        "CPU: %s, %d cores, torch %s (%d threads)",
        machine.cpu_model(),
        os.cpu_count() or 0,
        torch.__version__,
        torch.get_num_threads(),
    )
    gpus = parse_gpus(args.gpu)
    if gpus and not torch.cuda.is_available():
        log.error("No CUDA device is available on this machine (CPU mode only)")
        return 1
    for i in gpus:
        if i >= torch.cuda.device_count():
            log.error("GPU %d does not exist (%d device(s))", i, torch.cuda.device_count())
            return 1
        p = torch.cuda.get_device_properties(i)
        log.info("Device id:                     %d", i)
        log.info("Major revision number:         %d", p.major)
        log.info("Minor revision number:         %d", p.minor)
        log.info("Name:                          %s", p.name)
        log.info("Total global memory:           %d", p.total_memory)
        log.info("Number of multiprocessors:     %d", p.multi_processor_count)
    return 0
