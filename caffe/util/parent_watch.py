"""Jobs that stop when the studio server that started them is gone.

The studio starts each job (``caffe train``, dataset creation) in a session of its own and names
itself in ``CAFFE_STUDIO_PID``. A server that exits cleanly ends its jobs; one that is killed
(SIGKILL, a crash) cannot. So a job started with that variable checks once a second whether its
parent is still that server; when it is not, the job acts as if the server had stopped it: SIGINT
to itself (a training snapshots and stops, as ``caffe train`` does on SIGINT), and at exit the
processes it started itself (its process group) are ended too. A job that does not stop within
``STOP_GRACE_S`` is killed with its group. A job that inherited SIGINT ignored takes it back (Python's
KeyboardInterrupt), since SIGINT is how the studio stops it.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import threading
import time

from caffe.processes import group_members, pid_alive

log = logging.getLogger("caffe")

ENV = "CAFFE_STUDIO_PID"
POLL_S = 1.0
STOP_GRACE_S = 60.0


def stop_when_parent_exits() -> threading.Thread | None:
    """Watch the parent named by ``CAFFE_STUDIO_PID`` (a daemon thread); None when it is not set or not ours."""
    value = os.environ.pop(ENV, "")  # not passed on to what this job starts
    try:
        parent = int(value)
    except ValueError:
        return None
    if os.getppid() != parent and pid_alive(parent):
        log.warning("%s=%s is not this process's parent: not watching it", ENV, value)
        return None
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        # A server started as a background command of a shell without job control passes SIGINT on ignored;
        # the studio stops its jobs with SIGINT, and so does the watch below.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    thread = threading.Thread(target=_watch, args=(parent,), name="studio-parent-watch", daemon=True)
    thread.start()
    return thread


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(POLL_S)
    log.warning("The studio server (pid %d) is gone: stopping this job", parent)
    if os.getpgrp() == os.getpid():  # this job leads its process group: what it started goes with it
        atexit.register(_end_own_group, signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(STOP_GRACE_S)
    log.error("The job did not stop %.0f s after its server went away: killing it", STOP_GRACE_S)
    if os.getpgrp() == os.getpid():
        _end_own_group(signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def _end_own_group(sig: int) -> None:
    """Send ``sig`` to the other processes of this process's group (this one ignores it while sending)."""
    previous = signal.signal(sig, signal.SIG_IGN) if sig != signal.SIGKILL else None
    try:
        if sig == signal.SIGKILL:  # cannot be ignored: send it to each of the others
            for pid in group_members(os.getpgrp()) or []:
                if pid != os.getpid():
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, sig)
        else:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(os.getpgrp(), sig)
    finally:
        if previous is not None:
            signal.signal(sig, previous)
