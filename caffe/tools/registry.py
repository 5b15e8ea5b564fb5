"""The ``caffe`` commands: each module implementing one registers it here with :func:`command`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from caffe.errors import CaffeError
from caffe.util import glog
from caffe.util.parent_watch import stop_when_parent_exits

log = logging.getLogger("caffe")


@dataclass
class Command:
    name: str
    summary: str
    run: Callable[[list[str]], int]


COMMANDS: dict[str, Command] = {}


def command(name: str, summary: str) -> Callable[[Callable[[list[str]], int]], Callable[[list[str]], int]]:
    """Register ``fn(argv) -> exit code`` as ``caffe <name>``."""

    def deco(fn: Callable[[list[str]], int]) -> Callable[[list[str]], int]:
        COMMANDS[name] = Command(name, summary, fn)
        return fn

    return deco


def run_command(run: Callable[[list[str]], int], argv: list[str]) -> int:
    """Run a command as ``caffe`` does: glog lines, stop with a studio server that is gone, errors logged (exit 1)."""
    glog.setup()
    stop_when_parent_exits()  # a job of the studio: stop if its server is killed
    try:
        return run(argv)
    except CaffeError as e:
        log.error("%s", e)
        return 1
    except KeyboardInterrupt:
        log.error("Interrupted.")
        return 130
