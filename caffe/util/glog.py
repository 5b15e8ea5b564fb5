"""Caffe's log line format (glog): ``I1122 16:20:00.123456 12345 solver.py:204] message``.

Tools that read Caffe logs (``parse_log.py``, DIGITS) match these lines, so the CLI logs this way.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import TextIO

_LEVEL_LETTER = {logging.DEBUG: "I", logging.INFO: "I", logging.WARNING: "W", logging.ERROR: "E", logging.CRITICAL: "F"}


class GlogFormatter(logging.Formatter):
    """Format records as glog does: level letter, date, time with microseconds, thread, file:line."""

    def format(self, record: logging.LogRecord) -> str:
        t = time.localtime(record.created)
        micros = int((record.created - int(record.created)) * 1e6)
        thread = threading.get_native_id() if record.thread == threading.get_ident() else record.thread % 100000
        where = f"{os.path.basename(record.pathname)}:{record.lineno}"
        letter = _LEVEL_LETTER.get(record.levelno, "I")
        head = (
            f"{letter}{t.tm_mon:02d}{t.tm_mday:02d} {time.strftime('%H:%M:%S', t)}.{micros:06d} {thread:5d} {where}] "
        )
        return head + record.getMessage()


class GlogHandler(logging.StreamHandler):
    """The stream handler :func:`setup` adds to the ``caffe`` logger (glog lines). Without a stream of its
    own it writes to whatever ``sys.stderr`` is when a record comes (as logging's last-resort handler does):
    a background thread (a data layer's prefetcher) logging after a redirection of stderr has ended then
    writes to the current stderr instead of a closed one."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._own_stream = stream
        super().__init__(stream)

    @property
    def stream(self) -> TextIO:  # type: ignore[override]
        return self._own_stream if self._own_stream is not None else sys.stderr

    @stream.setter
    def stream(self, value: TextIO | None) -> None:
        self._own_stream = value if value is not sys.stderr else None


def handlers(logger: logging.Logger | None = None) -> list[logging.Handler]:
    """The glog handlers of ``logger`` (the ``caffe`` logger by default)."""
    logger = logger or logging.getLogger("caffe")
    return [h for h in logger.handlers if isinstance(h, GlogHandler)]


def setup(level: int = logging.INFO, stream: TextIO | None = None) -> logging.Logger:
    """Log the ``caffe`` logger's messages in glog format to ``stream`` (stderr by default)."""
    logger = logging.getLogger("caffe")
    for handler in handlers(logger):
        logger.removeHandler(handler)
    handler = GlogHandler(stream)
    handler.setFormatter(GlogFormatter())
    logger.addHandler(handler)
    logger.setLevel(level)
    return logger


def route(*names: str, level: int = logging.INFO) -> None:
    """Write the messages of the loggers ``names`` (uvicorn's, say) as glog lines, through the ``caffe`` handlers."""
    glog = handlers()
    for name in names:
        logger = logging.getLogger(name)
        logger.handlers = list(glog)
        logger.propagate = False
        logger.setLevel(level)
