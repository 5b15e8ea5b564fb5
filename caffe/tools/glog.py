"""Caffe's log line format (glog): ``I1122 16:20:00.123456 12345 solver.py:204] message``.

Tools that read Caffe logs (``parse_log.py``, DIGITS) match these lines, so the CLI logs this way.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

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


def setup(level: int = logging.INFO, stream: object = None) -> logging.Logger:
    """Log the ``caffe`` logger's messages in glog format to ``stream`` (stderr by default)."""
    logger = logging.getLogger("caffe")
    for handler in list(logger.handlers):
        if getattr(handler, "_caffe_glog", False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.setFormatter(GlogFormatter())
    handler._caffe_glog = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
    return logger
