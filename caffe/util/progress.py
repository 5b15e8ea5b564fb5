"""A tqdm bar on stderr when stderr is a terminal (log lines are printed above it); nothing when it is not,
so logs and pipes get only Caffe's own log lines."""

from __future__ import annotations

import contextlib
import logging
import sys

log = logging.getLogger("caffe")


class Progress:
    """A tqdm progress bar on stderr when stderr is a terminal, else nothing (use as a context manager).

    While the bar is shown, the ``caffe`` logger's console lines are written above it.
    """

    def __init__(self, total: int | None, desc: str, unit: str = "it", unit_scale: bool = False) -> None:
        self.bar = None
        self._stack = contextlib.ExitStack()
        if _stderr_is_tty():
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self.bar = tqdm(
                total=total, desc=desc, unit=unit, unit_scale=unit_scale, file=sys.stderr, dynamic_ncols=True
            )
            self._stack.enter_context(logging_redirect_tqdm([log]))

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
        if self.bar is not None:
            self.bar.close()


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
