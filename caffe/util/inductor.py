"""``torch.compile`` as neocaffe uses it (:func:`compiled`: our graphs kept by AOTAutograd's on-disk cache),
inductor's per-process start-up work done once per machine, whether this machine has the C++ compiler its CPU
code needs (:func:`cpp_compiler_found`), and what this machine has compiled.

Before its first C++ kernel in a process, inductor checks every vector instruction set the CPU reports
(AVX2, AVX-512, ...) by building a probe library and loading it in a fresh Python process, one process
per set: about 1.5 s of every compile on this project's 2-core machine, even with its on-disk caches
warm. :func:`prepare_inductor` keeps the probe's verdict beside inductor's cache, keyed by torch, the
Python, the C++ compiler and the sets the CPU reports; once every reported set has passed, later
processes tell inductor so (``config.cpp.vec_isa_ok``) and skip those probes (inductor still checks the
AVX-512 extensions, BF16 and VNNI, itself). A set that fails is never remembered: those processes probe
as inductor always did. Measured: LeNet's first compiled step with inductor's cache warm, 5.8-6.2 s ->
4.6-5.3 s from the start of the process.

:func:`remember_compiled` and :func:`compiled_before` keep, beside inductor's cache, which training steps
(a net's structure, input shapes and settings) this machine has compiled: their code is then in that
cache and a new process compiles them in about a second instead of 15-25 s, so the ``auto`` training
engine can compile shorter runs (``caffe.train_step``). Cleared with inductor's cache.
"""

from __future__ import annotations

import functools
import getpass
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from caffe._version import __version__
from caffe.protoio import atomic_write

log = logging.getLogger("caffe")

_lock = threading.Lock()
_prepared = False


# Autocast's enter and exit nodes (bf16/fp16 training) are functions of their arguments, which the graph holds,
# yet AOTAutograd's cache bypasses any graph with them unless they are marked (keyed by torch's version).
AUTOCAST_CACHEABLE = {f"torch.amp.autocast_mode.{n}": torch.__version__ for n in ("_enter_autocast", "_exit_autocast")}


def compiled(function: Callable[..., Any], **options: Any) -> Callable[..., Any]:
    """``torch.compile`` of ``function`` for fixed shapes (one compile per input shape) with inductor
    ``options`` for this compile only, after :func:`prepare_inductor`.

    Its compiles may keep their traced forward and backward graphs in AOTAutograd's on-disk cache even when
    they hold custom ``autograd.Function`` s (``caffe.ops``'s are pure: their graphs are functions of the
    traced inputs alone), which torch leaves out by default: a later process skips the joint-graph trace
    and the partition (LeNet's compiled training step: 3.0-3.3 s -> 1.7-2.1 s with warm caches). So may the
    graphs of a reduced precision, whose autocast regions torch also leaves out (``AUTOCAST_CACHEABLE``)."""
    prepare_inductor()
    if options.get("freezing"):  # AOTAutograd never caches frozen graphs: no flag to set (13 us a call)
        return torch.compile(function, dynamic=False, options=options)
    options = {"unsafe_marked_cacheable_functions": AUTOCAST_CACHEABLE, **options}
    function_compiled = torch.compile(function, dynamic=False, options=options)

    def call(*args: Any) -> Any:
        with _custom_functions_cacheable:
            return function_compiled(*args)

    return call


class _CustomFunctionsCacheable:
    """Sets torch's ``autograd_cache_allow_custom_autograd_functions`` while any of this module's compiled
    functions runs (in any thread) and gives the flag back its own value when the last one returns."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0
        self._before = False

    def __enter__(self) -> None:
        from torch._functorch import config

        with self._lock:
            if self._running == 0:
                self._before = config.autograd_cache_allow_custom_autograd_functions
                config.autograd_cache_allow_custom_autograd_functions = True
            self._running += 1

    def __exit__(self, *exc: object) -> None:
        from torch._functorch import config

        with self._lock:
            self._running -= 1
            if self._running == 0:
                config.autograd_cache_allow_custom_autograd_functions = self._before


_custom_functions_cacheable = _CustomFunctionsCacheable()


def prepare_inductor() -> None:
    """Call before a ``torch.compile`` whose code may run on the CPU; idempotent, never fatal."""
    global _prepared
    with _lock:
        if _prepared:
            return
        _prepared = True
        if platform.machine() not in ("x86_64", "AMD64"):
            return  # inductor probes only x86 instruction sets
        try:
            _skip_probe_when_known_good()
        except Exception as exc:  # the probe then runs as usual
            log.debug("Inductor's vector ISA probe left to inductor: %s", exc)


NO_CPP_COMPILER = "no C++ compiler for inductor's CPU code: install g++, or name one in CXX"


@functools.cache
def cpp_compiler_found() -> bool:
    """Whether the C++ compiler inductor needs for CPU code is on this machine (``CXX``, else ``g++``; looked
    up once per process, never run). Without one every CPU compile fails: callers choose their eager path."""
    from torch._inductor import config

    search = config.cpp.cxx if isinstance(config.cpp.cxx, (list, tuple)) else (config.cpp.cxx,)
    for name in search:
        if name is None:  # inductor's opt-in download of g++ through conda
            if os.environ.get("TORCH_INDUCTOR_INSTALL_GXX"):
                return True
        elif shutil.which(name) is not None:
            return True
    return False


def probe_marker() -> Path:
    """The file that records a passed probe for this torch, Python, compiler and CPU."""
    from torch._inductor.cpp_builder import get_cpp_compiler

    compiler = shutil.which(get_cpp_compiler()) or get_cpp_compiler()
    stat = os.stat(compiler)
    identity = [torch.__version__, sys.executable, compiler, stat.st_size, stat.st_mtime_ns, list(reported_isas())]
    key = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:24]
    return inductor_cache_dir() / "neocaffe" / f"vec-isa-ok-{key}"


def inductor_cache_dir() -> Path:
    """Inductor's on-disk cache folder (``$TORCHINDUCTOR_CACHE_DIR``, else ``torchinductor_<user>`` in the
    temporary folder), found without importing inductor (about a second) when it is not loaded yet."""
    loaded = sys.modules.get("torch._inductor.runtime.cache_dir_utils")
    if loaded is not None:
        return Path(loaded.cache_dir())
    given = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if given is not None:
        return Path(os.path.abspath(given))
    try:
        user = getpass.getuser()
    except (KeyError, ModuleNotFoundError, OSError):
        user = f"uid_{os.getuid()}" if hasattr(os, "getuid") else "unknown_user"
    return Path(tempfile.gettempdir()) / ("torchinductor_" + re.sub(r'[\\/:*?"<>|]', "_", user))


def _compiled_marker(identity: Sequence[Any]) -> Path:
    key = json.dumps([torch.__version__, __version__, sys.version, list(identity)])
    return inductor_cache_dir() / "neocaffe" / "compiled" / hashlib.sha256(key.encode()).hexdigest()[:32]


def compiled_before(identity: Sequence[Any]) -> bool:
    """Whether :func:`remember_compiled` was told of ``identity`` (JSON values) by this torch, neocaffe and
    Python, with inductor's current cache."""
    try:
        return _compiled_marker(identity).is_file()
    except OSError:
        return False


def remember_compiled(identity: Sequence[Any], seconds: float) -> None:
    """Record that the compile known as ``identity`` succeeded (in ``seconds``); never fatal."""
    try:
        marker = _compiled_marker(identity)
        marker.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(marker, json.dumps({"compile seconds": round(seconds, 3)}).encode() + b"\n")
    except OSError as exc:
        log.debug("Could not remember the compile in inductor's cache folder: %s", exc)


@functools.cache
def reported_isas() -> tuple[str, ...]:
    """The vector instruction sets inductor would probe on this CPU (read once per process)."""
    from torch._inductor import cpu_vec_isa

    flags = cpu_vec_isa.x86_isa_checker()
    return tuple(str(isa) for isa in cpu_vec_isa.supported_vec_isa_list if all(f in flags for f in str(isa).split()))


def _skip_probe_when_known_good() -> None:
    from torch._inductor import config, cpu_vec_isa

    if config.cpp.vec_isa_ok is not None:
        return  # the user decided
    marker = probe_marker()
    if not marker.is_file():
        if tuple(str(isa) for isa in cpu_vec_isa.valid_vec_isa_list()) != reported_isas():
            return  # a set failed its probe: keep probing in every process
        marker.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(marker, b"every vector ISA this CPU reports passed inductor's probe\n")
    # The same setting in the probing process and the later ones: inductor's cache keys include it.
    config.cpp.vec_isa_ok = True
