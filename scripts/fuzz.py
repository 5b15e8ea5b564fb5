#!/usr/bin/env python
"""Fuzz neocaffe's parsers and upload routes with mutated real files; count outcomes; keep reproducers.

    python scripts/fuzz.py --inputs N [--seconds S] [--targets a,b] [--jobs J] [--out DIR] [--write_docs]
    python scripts/fuzz.py --replay DIR/findings/<name>.bin --targets <target>   # rerun one reproducer

Every input is a pure function of (run seed, target, index): a seed file picked and mutated by a
``random.Random`` seeded with that triple, so any input can be made again (``--dump``). Each target turns
bytes into a call of the project (a parser, ``caffe.Net``, ``find_model``, a studio or ``caffe serve``
route through FastAPI's TestClient) and its outcome is one of:

* ``ok`` - accepted; ``caffe error`` - refused with a :class:`caffe.errors.CaffeError` (for the web
  targets: any answer below 500);
* ``non-caffe`` - any other exception, or a 5xx answer (a finding);
* ``hang`` - one input ran longer than ``--hang_s`` (the parent kills and restarts the worker);
* ``crash`` - the worker died (a signal, ``os.abort``, the address-space limit hit in C code).

Workers are processes (``--jobs``) with an address-space limit (``--max_memory_mb``); the parent hands
them batches of indices, watches a shared slot per worker (which input, since when) and records hangs
and crashes with their input. A finding is deduplicated by (target, exception type, innermost frame in
``caffe/``) and its input shrunk (chunks removed while the same failure recurs) before it is saved
under ``DIR/findings``. Targets get shares of ``--inputs`` by their cost (``WEIGHTS``): cheap parsers
thousands per second, Net building and web routes fewer; the summary reports the counts honestly.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import hashlib
import io
import json
import math
import multiprocessing as mp
import os
import random
import re
import resource
import shutil
import signal
import struct
import sys
import tempfile
import time
import traceback
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CAFFE_DIR = str(ROOT / "caffe") + os.sep
ASSETS = Path(os.environ.get("CAFFE_TEST_ASSETS", ROOT.parent / "shared" / "assets")).resolve()
OUTCOMES = ("ok", "caffe error", "non-caffe", "hang", "crash")
DOCS_BEGIN, DOCS_END = "<!-- fuzz-table:begin -->", "<!-- fuzz-table:end -->"

# ================================================================================================ inputs


@dataclass
class Seed:
    """One file to mutate: ``kind`` picks the structure-aware mutators (proto, text, json, image, tar, bytes)."""

    name: str
    data: bytes
    kind: str
    _fields: list[tuple[int, int, int, int]] | None = field(default=None, repr=False)
    _tokens: list[tuple[int, int, str]] | None = field(default=None, repr=False)

    def fields(self) -> list[tuple[int, int, int, int]]:
        """Protobuf fields (tag start, value start, value end, wire type), nested messages included."""
        if self._fields is None:
            self._fields = []
            _proto_fields(self.data, 0, len(self.data), 0, self._fields)
        return self._fields

    def tokens(self) -> list[tuple[int, int, str]]:
        """Text tokens (start, end, kind: number, string, word, brace)."""
        if self._tokens is None:
            kinds = {"n": "number", "s": "string", "w": "word", "b": "brace"}
            self._tokens = [
                (m.start(), m.end(), kinds[m.lastgroup or "w"]) for m in _TOKEN.finditer(self.data.decode("latin-1"))
            ][:50_000]
        return self._tokens


_TOKEN = re.compile(
    r'(?P<n>-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)|(?P<s>"(?:[^"\\]|\\.)*")|(?P<w>[A-Za-z_]\w*)|(?P<b>[{}\[\]])'
)


def _varint(buf: bytes, i: int, end: int) -> tuple[int, int]:
    value, shift = 0, 0
    while i < end and shift < 70:
        b = buf[i]
        value |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return value, i
        shift += 7
    raise ValueError("bad varint")


def _proto_fields(buf: bytes, start: int, end: int, depth: int, out: list[tuple[int, int, int, int]]) -> bool:
    """Append the fields of the message in ``buf[start:end]`` (recursing into what parses as a message)."""
    i, found = start, []
    try:
        while i < end:
            tag_at = i
            key, i = _varint(buf, i, end)
            wire = key & 7
            if key >> 3 == 0 or wire in (3, 4, 6, 7):
                return False
            if wire == 0:
                _, j = _varint(buf, i, end)
            elif wire == 1:
                j = i + 8
            elif wire == 5:
                j = i + 4
            else:
                n, i = _varint(buf, i, end)
                j = i + n
            if j > end:
                return False
            found.append((tag_at, i, j, wire))
            i = j
    except ValueError:
        return False
    for f in found:
        out.append(f)
        if f[3] == 2 and depth < 5 and f[2] - f[1] >= 2 and len(out) < 20_000:
            _proto_fields(buf, f[1], f[2], depth + 1, out)
    return True


def _encode_varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        out.append(b | (0x80 if value else 0))
        if not value:
            return bytes(out)


INTERESTING_INTS = (0, 1, -1, 2, 255, 256, 65535, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, -(2**31))
INTERESTING_TEXT = (
    "0",
    "-1",
    "-2147483648",
    "2147483647",
    "2147483648",
    "4294967296",
    "9223372036854775807",
    "18446744073709551616",
    "1e309",
    "-1e309",
    "nan",
    "inf",
    "1e-320",
    "99999999999999999999999999",
)
INTERESTING_STRINGS = (
    '"a\\000b"',
    '"\\000"',
    '""',
    '"/dev/zero"',
    '"/etc/passwd"',
    '"../../../../etc/passwd"',
    '"' + "A" * 5000 + '"',
    '"\\377\\376"',
    '"/proc/self/environ"',
    '"x\\n\\ny"',
)


def _chunk(n: int, rng: random.Random) -> tuple[int, int]:
    start = rng.randrange(n)
    size = min(n - start, rng.choice((1, 2, 4, 8, 16, 64, 256, 4096, n)))
    return start, start + max(size, 1)


def m_flip(d: bytearray, rng: random.Random, seed: Seed) -> bytearray:
    if d:
        for _ in range(rng.choice((1, 1, 2, 8))):
            d[rng.randrange(len(d))] ^= 1 << rng.randrange(8)
    return d


def m_byte(d: bytearray, rng: random.Random, seed: Seed) -> bytearray:
    if d:
        d[rng.randrange(len(d))] = rng.choice((0, 0xFF, 0x7F, 0x80, 0x01, 0x0A, 0x7B, 0x22))
    return d


def m_int(d: bytearray, rng: random.Random, seed: Seed) -> bytearray:
    if len(d) >= 8:
        at = rng.randrange(len(d) - 7)
        fmt = rng.choice(("<i", "<I", "<q", ">i", "<f"))
        value = rng.choice((float("nan"), float("inf"), 1e38)) if fmt == "<f" else rng.choice(INTERESTING_INTS)
        try:
            packed = struct.pack(fmt, value)
        except struct.error:
            packed = struct.pack(
                fmt.replace("i", "I").replace("q", "Q"), value & ((1 << (8 * struct.calcsize(fmt))) - 1)
            )
        d[at : at + len(packed)] = packed
    return d


def m_truncate(d: bytearray, rng: random.Random, seed: Seed) -> bytearray:
    return d[: rng.randrange(len(d) + 1)] if d else d


def m_delete(d: bytearray, rng: random.Random, seed: Seed) -> bytearray:
    if d:
        a, b = _chunk(len(d), rng)
        del d[a:b]
    return d


def m_duplicate(d: bytearray, rng: random.Random, seed: Seed) -> bytearray:
    if d:
        a, b = _chunk(len(d), rng)
        at = rng.randrange(len(d) + 1)
        d[at:at] = d[a:b] * rng.choice((1, 1, 2, 16))
    return d


def m_insert(d: bytearray, rng: random.Random, seed: Seed) -> bytearray:
    at = rng.randrange(len(d) + 1)
    d[at:at] = rng.randbytes(rng.choice((1, 4, 16, 100)))
    return d


def m_varint(d: bytearray, rng: random.Random, seed: Seed) -> bytearray:
    """A varint field's value set to 0, -1, 2^31, 2^63, ... (only when ``d`` is still the seed's layout)."""
    fields = [f for f in seed.fields() if f[3] == 0] if len(d) == len(seed.data) else []
    if fields:
        _, a, b, _ = rng.choice(fields)
        d[a:b] = _encode_varint(rng.choice(INTERESTING_INTS))
    return d


def m_length(d: bytearray, rng: random.Random, seed: Seed) -> bytearray:
    """A length prefix made longer, shorter, zero or huge."""
    fields = [f for f in seed.fields() if f[3] == 2] if len(d) == len(seed.data) else []
    if fields:
        tag_at, a, b, _ = rng.choice(fields)
        _, prefix_at = _varint(seed.data, tag_at, len(seed.data))
        n = b - a
        new = rng.choice((0, n + 1, max(n - 1, 0), n * 2, 2**31 - 1, 2**32 + n, 2**63))
        d[prefix_at:a] = _encode_varint(new)
    return d


def m_fixed(d: bytearray, rng: random.Random, seed: Seed) -> bytearray:
    fields = [f for f in seed.fields() if f[3] in (1, 5)] if len(d) == len(seed.data) else []
    if fields:
        _, a, b, wire = rng.choice(fields)
        value = rng.choice((float("nan"), float("inf"), -float("inf"), 3e38, 0.0, -1.0))
        d[a:b] = struct.pack("<d" if wire == 1 else "<f", value)
    return d


def m_token(d: bytearray, rng: random.Random, seed: Seed) -> bytearray:
    """A prototxt/JSON token replaced: numbers by huge/negative ones, strings by NUL bytes and odd paths."""
    tokens = seed.tokens() if len(d) == len(seed.data) else []
    if not tokens:
        return m_insert(d, rng, seed)
    a, b, kind = rng.choice(tokens)
    if kind == "number":
        new = rng.choice(INTERESTING_TEXT)
    elif kind == "string":
        new = rng.choice(INTERESTING_STRINGS)
    elif kind == "word":
        new = rng.choice(
            (
                "layer",
                "type",
                "bottom",
                "top",
                "include",
                "dim",
                "shape",
                "x",
                "0",
                "{",
                "}",
                ":",
                "input_dim",
                "layers",
                "net",
                "learned_net",
                "source",
                "mean_file",
                "null",
                "true",
            )
        )
    else:
        new = rng.choice(("{", "}", "[", "]", "", "{}"))
    d[a:b] = new.encode()
    return d


def m_nest(d: bytearray, rng: random.Random, seed: Seed) -> bytearray:
    """Deep nesting inserted (prototxt blocks or JSON arrays)."""
    depth = rng.choice((100, 1000, 20_000))
    at = rng.randrange(len(d) + 1)
    if seed.kind == "json":
        d[at:at] = b"[" * depth + b"1" + b"]" * depth
    else:
        d[at:at] = b"layer { " * depth + b"}" * rng.choice((0, depth))
    return d


def m_lines(d: bytearray, rng: random.Random, seed: Seed) -> bytearray:
    lines = bytes(d).split(b"\n")
    if len(lines) > 1:
        i = rng.randrange(len(lines))
        op = rng.randrange(3)
        if op == 0:
            del lines[i]
        elif op == 1:
            lines.insert(rng.randrange(len(lines)), lines[i])
        else:
            lines[i] = lines[i] + rng.choice((b"\x00", b" \x00 ", b"\xff\xfe", b"#", b" {"))
    return bytearray(b"\n".join(lines))


def m_png_size(d: bytearray, rng: random.Random, seed: Seed) -> bytearray:
    """A PNG's IHDR width/height set to extremes, with the chunk CRC fixed so decoders believe it."""
    if d[:8] == b"\x89PNG\r\n\x1a\n" and len(d) >= 33:
        d[16:24] = struct.pack(
            ">II", rng.choice((0, 1, 2**31 - 1, 65535, 100_000)), rng.choice((0, 1, 2**31 - 1, 70_000))
        )
        d[29:33] = struct.pack(">I", zlib.crc32(bytes(d[12:29])))
    return d


def m_tar_header(d: bytearray, rng: random.Random, seed: Seed) -> bytearray:
    """A tar header field (name, mode, size, type, link name) replaced."""
    headers = [i for i in range(0, len(d) - 511, 512) if d[i + 257 : i + 262] == b"ustar"]
    if headers:
        h = rng.choice(headers)
        what = rng.randrange(4)
        if what == 0:
            name = rng.choice((b"../evil", b"/etc/x", b"a/../../b", b"", b"\x00", b"deploy.prototxt", b"x" * 99))
            d[h : h + 100] = name.ljust(100, b"\x00")[:100]
        elif what == 1:
            d[h + 124 : h + 136] = rng.choice(
                (b"77777777777\x00", b"-1\x00", b"\x80" + b"\xff" * 11, b"0" * 12, b"00000001000\x00")
            )
        elif what == 2:
            d[h + 156 : h + 157] = rng.choice((b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"x", b"S", b"L", b"K"))
        else:
            d[h + 157 : h + 257] = rng.choice((b"/etc/passwd", b"../x", b"deploy.prototxt")).ljust(100, b"\x00")
    return d


GENERIC = (m_flip, m_byte, m_int, m_truncate, m_delete, m_duplicate, m_insert)
MUTATORS: dict[str, tuple[Callable[[bytearray, random.Random, Seed], bytearray], ...]] = {
    "bytes": GENERIC,
    "proto": (*GENERIC, m_varint, m_varint, m_varint, m_length, m_length, m_fixed),
    "text": (m_token, m_token, m_token, m_nest, m_lines, m_lines, m_truncate, m_delete, m_duplicate, m_flip),
    "json": (m_token, m_token, m_token, m_nest, m_truncate, m_delete, m_duplicate, m_byte),
    "image": (*GENERIC, m_png_size, m_png_size),
    "tar": (*GENERIC, m_tar_header, m_tar_header, m_tar_header),
}


def make_input(run_seed: int, target: str, index: int, seeds: list[Seed]) -> tuple[bytes, Seed]:
    """Input ``index`` of ``target``: a seed, mutated 1 to 8 times (a few are left as they are)."""
    rng = random.Random(f"{run_seed}:{target}:{index}")
    seed = seeds[rng.randrange(len(seeds))]
    d = bytearray(seed.data)
    if rng.random() < 0.02:
        return bytes(d), seed
    pool = MUTATORS[seed.kind]
    for _ in range(1 + min(int(rng.expovariate(0.7)), 7)):
        d = rng.choice(pool)(d, rng, seed)
    return bytes(d), seed


# ================================================================================================ targets


class ServerError(Exception):
    """A web route answered 5xx without raising."""


@dataclass
class Target:
    """A named setup returning (seeds, run); ``web`` targets count every escaped exception as a finding."""

    name: str
    setup: Callable[[Path], tuple[list[Seed], Callable[[bytes, Seed], Any]]]
    weight: float
    batch: int
    web: bool = False
    planted: bool = False


TARGETS: dict[str, Target] = {}
#: Relative shares of --inputs (roughly inverse to cost, so every target gets minutes, not seconds).
WEIGHTS: dict[str, float] = {}


def target(name: str, weight: float, batch: int = 100, web: bool = False, planted: bool = False) -> Callable:
    def register(setup: Callable) -> Callable:
        TARGETS[name] = Target(name, setup, weight, batch, web, planted)
        WEIGHTS[name] = weight
        return setup

    return register


def _asset(rel: str) -> Path:
    path = ASSETS / rel
    if not path.exists():
        raise SystemExit(f"fuzz: missing asset {path} (set CAFFE_TEST_ASSETS)")
    return path


LENET = "models/lenet_mnist_newformat"
LENET_V1 = "models/lenet_mnist_v1format_2014"
TINY_NET = """name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 2 kernel_size: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc" inner_product_param { num_output: 2
  weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def _tiny_model(work: Path) -> tuple[Path, Path, Any]:
    """The tiny net's deploy file, seeded weights (.caffemodel and .h5 beside) and the Net."""
    import caffe

    deploy = work / "tiny.prototxt"
    deploy.write_text(TINY_NET)
    caffe.set_random_seed(5)
    net = caffe.Net(str(deploy), caffe.TEST)
    net.save(str(work / "tiny.caffemodel"))
    net.save_hdf5(str(work / "tiny.caffemodel.h5"))
    return deploy, work / "tiny.caffemodel", net


def _scratch(work: Path, name: str, data: bytes) -> Path:
    path = work / name
    path.write_bytes(data)
    return path


def _images() -> list[Seed]:
    from PIL import Image

    gray = Image.frombytes("L", (8, 8), bytes(range(0, 256, 4)))
    out = io.BytesIO()
    gray.convert("RGB").save(out, "PNG")
    small_png = out.getvalue()
    out = io.BytesIO()
    gray.convert("RGB").resize((16, 16)).save(out, "JPEG", quality=80)
    return [
        Seed("small.png", small_png, "image"),
        Seed("small.jpg", out.getvalue(), "image"),
        Seed("dolphin.jpg", _asset("dolphins-and-seahorses/dolphin/image_0042.jpg").read_bytes(), "image"),
    ]


def _text_files(work: Path, files: list[str], read: Callable[[str], Any]):
    """Seeds from asset text files, and a run that writes the input to a file and calls ``read(path)``."""
    seeds = [Seed(Path(f).name, _asset(f).read_bytes(), "text") for f in files]
    return seeds, lambda data, seed: read(str(_scratch(work, "in.prototxt", data)))


@target("prototxt", weight=150, batch=200)
def _prototxt(work: Path):
    from caffe.protoio import read_net_param

    files = [
        f"{LENET}/lenet.prototxt",
        f"{LENET_V1}/lenet.prototxt",
        f"{LENET_V1}/lenet_train_test.prototxt",
        "caffe-ref/examples/cifar10/cifar10_quick.prototxt",
    ]
    return _text_files(work, files, read_net_param)


@target("solver_prototxt", weight=150, batch=300)
def _solver_prototxt(work: Path):
    from caffe.protoio import read_solver_param

    files = [
        "caffe-ref/examples/mnist/lenet_solver.prototxt",
        "caffe-ref/examples/mnist/lenet_solver_adam.prototxt",
        f"{LENET_V1}/lenet_solver.prototxt",
    ]
    return _text_files(work, files, read_solver_param)


@target("net", weight=20, batch=50)
def _net(work: Path):
    import caffe

    seeds, run = _text_files(
        work, [f"{LENET}/lenet.prototxt", f"{LENET_V1}/lenet.prototxt"], lambda path: caffe.Net(path, caffe.TEST)
    )
    return [*seeds, Seed("tiny", TINY_NET.encode(), "text")], run


FORK_TRAINING_NETS = {
    # name -> (layer text, {input: shape}); inputs are filled with N(0, 1), label-like ones with small integers
    "smooth_l1_fast_rcnn": (
        'type: "SmoothL1Loss" bottom: "a" bottom: "b" bottom: "c" bottom: "d" top: "l"'
        " smooth_l1_loss_param { sigma: 3.0 }",
        {"a": (2, 8, 3, 3), "b": (2, 8, 3, 3), "c": (2, 8, 3, 3), "d": (2, 8, 3, 3)},
    ),
    "smooth_l1_ohem": (
        'type: "SmoothL1LossOHEM" bottom: "a" bottom: "b" bottom: "c" top: "l" top: "each" loss_weight: 1'
        " loss_weight: 0 loss_param { normalization: PRE_FIXED pre_fixed_normalizer: 128 }",
        {"a": (4, 8, 1, 1), "b": (4, 8, 1, 1), "c": (4, 8, 1, 1)},
    ),
    "softmax_ohem": (
        'type: "SoftmaxWithLossOHEM" bottom: "a" bottom: "label" top: "l" top: "p" top: "each" loss_weight: 1'
        " loss_weight: 0 loss_weight: 0 loss_param { ignore_label: -1 }",
        {"a": (4, 3, 1, 1), "label": (4, 1, 1, 1)},
    ),
    "box_annotator_ohem": (
        'type: "BoxAnnotatorOHEM" bottom: "rois" bottom: "a" bottom: "label" bottom: "c" top: "lo" top: "wo"'
        " box_annotator_ohem_param { roi_per_img: 2 ignore_label: -1 }",
        {"rois": (4, 5, 1, 1), "a": (4, 1, 1, 1), "label": (4, 1, 1, 1), "c": (4, 8, 1, 1)},
    ),
    "center_loss": (
        'type: "CenterLoss" bottom: "a" bottom: "label" top: "l" center_loss_param { num_output: 3'
        ' center_filler { type: "gaussian" } }',
        {"a": (4, 5), "label": (4,)},
    ),
    "margin_inner_product": (
        'type: "MarginInnerProduct" bottom: "a" bottom: "label" top: "y" top: "lambda" margin_inner_product_param {'
        ' num_output: 3 type: QUADRUPLE weight_filler { type: "xavier" } base: 1000 gamma: 0.12 power: 1'
        " lambda_min: 5 iteration: 0 }",
        {"a": (4, 5), "label": (4,)},
    ),
    "reorg": ('type: "Reorg" bottom: "a" top: "y" reorg_param { stride: 2 }', {"a": (1, 8, 4, 6)}),
    "relu6": ('type: "ReLU6" bottom: "a" top: "y" relu6_param { negative_slope: 0.1 }', {"a": (2, 3, 4)}),
    "yolo_detection_output": (
        'type: "YoloDetectionOutput" bottom: "a" bottom: "b" top: "det" yolo_detection_output_param {'
        " num_classes: 2 num_box: 2 biases: 1 biases: 1 biases: 2 biases: 2 confidence_threshold: 0.1"
        " nms_threshold: 0.45 }",
        {"a": (1, 14, 3, 3), "b": (1, 14, 5, 5)},
    ),
    "yolov3_loss": (
        'type: "Yolov3" bottom: "a" bottom: "label" top: "l" yolov3_param { num_class: 3 num: 2 biases: 8 biases: 8'
        " biases: 16 biases: 24 biases: 30 biases: 20 mask: 1 mask: 2 anchors_scale: 8 thresh: 0.5 }",
        {"a": (2, 16, 3, 4), "label": (2, 1, 4, 5)},
    ),
    "yolov3_ciou_loss": (
        'type: "Yolov3" bottom: "a" bottom: "label" top: "l" yolov3_param { num_class: 3 num: 2 biases: 8 biases: 8'
        " biases: 16 biases: 24 mask: 0 mask: 1 anchors_scale: 8 iou_loss: CIOU accumulate: false max_delta: 5 }",
        {"a": (1, 16, 4, 4), "label": (1, 1, 3, 5)},
    ),
    "assisted_excitation": (
        'type: "AssistedExcitation" bottom: "a" bottom: "label" bottom: "m" top: "y"',
        {"a": (2, 3, 4, 5), "label": (2, 1, 3, 5), "m": (2, 4, 5)},
    ),
    "detectnet_transformation": (
        'type: "DetectNetTransformation" bottom: "a" bottom: "boxes" top: "y" top: "label"'
        " detectnet_groundtruth_param { stride: 4 scale_cvg: 0.4 gridbox_type: GRIDBOX_MIN min_cvg_len: 4"
        " obj_norm: true image_size_x: 32 image_size_y: 16 object_class { src: 1 dst: 0 } object_class { src: 2"
        " dst: 1 } } detectnet_augmentation_param { crop_prob: 1 shift_x: 8 shift_y: 4 flip_prob: 0.5"
        " rotation_prob: 0.5 max_rotate_degree: 5 scale_prob: 0.5 scale_min: 0.8 scale_max: 1.2"
        " hue_rotation_prob: 0.5 hue_rotation: 30 desaturation_prob: 0.5 desaturation_max: 0.8 }"
        " transform_param { mean_value: 127 }",
        {"a": (2, 3, 20, 36), "boxes": (2, 1, 4, 16)},
    ),
    "l1_loss": ('type: "L1Loss" bottom: "a" bottom: "b" top: "l" loss_weight: 2', {"a": (2, 4, 3), "b": (2, 12)}),
    "detectnet_clustering": (
        'type: "Python" bottom: "a" bottom: "b" top: "det" python_param { module:'
        ' "caffe.layers.detectnet.clustering" layer: "ClusterDetections" param_str: "32, 16, 4, 0.1, 1, 0.2, 2, 1" }',
        {"a": (2, 1, 4, 8), "b": (2, 4, 4, 8)},
    ),
    "detectnet_scoring": (
        'type: "ScoreDetections" bottom: "a" bottom: "b" top: "s"',
        {"a": (2, 50, 5), "b": (2, 50, 5)},
    ),
    "region_loss": (
        'type: "RegionLoss" bottom: "a" bottom: "label" top: "l" region_loss_param { num_class: 3 num: 2'
        " biases: 1 biases: 1.5 biases: 2.5 biases: 2 thresh: 0.6 rescore: 1 }",
        {"a": (2, 16, 4, 4), "label": (2, 1, 4, 5)},
    ),
    "normface_normalize": (
        'type: "Normalize" bottom: "a" top: "y" top: "norm" normalize_param { normalize_type: "L1" bp_norm: true }',
        {"a": (2, 3, 4, 5)},
    ),
    "normalized_inner_product": (
        'type: "InnerProduct" bottom: "a" top: "y" inner_product_param { num_output: 3 normalize: true'
        ' transpose: true weight_filler { type: "xavier" } }',
        {"a": (4, 5)},
    ),
    "label_specific_add": (
        'type: "LabelSpecificAdd" bottom: "a" bottom: "label" top: "y" top: "m" label_specific_add_param {'
        " bias: -0.35 bias_base: -0.5 bias_gamma: 0.1 bias_power: 2 bias_min: -0.5 bias_max: -0.1 iteration: 3 }",
        {"a": (4, 3), "label": (4,)},
    ),
    "flip": ('type: "Flip" bottom: "a" top: "y" flip_param { flip_height: true }', {"a": (2, 3, 4, 5)}),
    "warp_ctc_loss": ('type: "WarpCTCLoss" bottom: "a" bottom: "label" top: "l"', {"a": (6, 2, 4), "label": (2, 3)}),
    "ctc_greedy_decoder": (
        'type: "CTCGreedyDecoder" bottom: "a" bottom: "label" top: "acc" ctc_decoder_param { blank_index: -1 }',
        {"a": (6, 2, 4, 1), "label": (2, 3)},
    ),
    "lstm": (
        'type: "Lstm" bottom: "a" top: "h" lstm_param { num_output: 3 clipping_threshold: 0.1'
        ' weight_filler { type: "gaussian" std: 0.1 } }',
        {"a": (4, 2, 5)},
    ),
    "transpose": (
        'type: "Transpose" bottom: "a" top: "y" transpose_param { dim: 3 dim: 0 dim: 2 dim: 1 }',
        {"a": (2, 3, 1, 4)},
    ),
    "reverse": ('type: "Reverse" bottom: "a" top: "y" reverse_param { axis: 1 }', {"a": (3, 2, 4)}),
    "dense_block": (
        'type: "DenseBlock" bottom: "a" top: "y" denseblock_param { numTransition: 2 growthRate: 3 use_BC: true'
        ' use_dropout: true dropout_amount: 0.2 Filter_Filler { type: "msra" } BN_Scaler_Filler { type: "constant"'
        " value: 1 } }",
        {"a": (2, 4, 5, 6)},
    ),
    "ctc_loss_pr4681": (
        'type: "CTCLoss" bottom: "a" bottom: "cont" bottom: "label" top: "l" ctc_loss_param { blank_index: 3 }',
        {"a": (6, 2, 4), "cont": (6, 2), "label": (6, 2)},
    ),
    "ctc_loss_deepdetect": (
        'type: "CtcLoss" bottom: "a" bottom: "label" top: "l"'
        " ctc_loss_param { alphabet_size: 4 time_step: 5 blank_label: 3 }",
        {"a": (6, 2, 4), "label": (2, 3)},
    ),
    "labelsequence_accuracy": (
        'type: "LabelsequenceAccuracy" bottom: "a" bottom: "label" top: "acc"'
        " labelsequence_accuracy_param { blank_label: 1 }",
        {"a": (2, 6, 4), "label": (2, 3)},
    ),
    "continuation_indicator": (
        'type: "ContinuationIndicator" bottom: "a" top: "c" continuation_indicator_param { time_step: 4 axis: 1 }',
        {"a": (4, 3, 2)},
    ),
    "reverse_time": (
        'type: "ReverseTime" bottom: "a" bottom: "label" top: "y" reverse_time_param { copy_remaining: true }',
        {"a": (4, 3, 2), "label": (3,)},
    ),
}


def fork_training_net(layer: str, inputs: dict[str, tuple[int, ...]]) -> str:
    """One Input layer (a top per input) and the fork layer, as prototxt."""
    shapes = " ".join(f"shape {{ {' '.join(f'dim: {d}' for d in s)} }}" for s in inputs.values())
    tops = " ".join(f'top: "{name}"' for name in inputs)
    net = f'force_backward: true layer {{ name: "in" type: "Input" {tops} input_param {{ {shapes} }} }}\n'
    return net + f'layer {{ name: "f" {layer} }}\n'


def detectnet_tables(shape: tuple[int, ...], rng: Any) -> Any:
    """Random box tables of DIGITS' DetectNet datasets, (N, 1, rows, 16): a box count, then pixel boxes."""
    from caffe.data.detectnet import box_table

    tables = []
    for _ in range(shape[0]):
        boxes = rng.uniform(-8, 40, (int(rng.integers(0, shape[2])), 16))
        boxes[:, 5] = rng.integers(0, 3, len(boxes))
        tables.append(box_table(boxes, shape[2] - 1))
    return tables


@target("fork_training_layers", weight=30, batch=100)
def _fork_training_layers(work: Path):
    """The forks' training layers (R-CNN, R-FCN OHEM, face recognition with AM-Softmax's, the YOLO heads and loss,
    DetectNet, caffe_ocr's CTC, Lstm, DenseBlock and sequence layers) from mutated prototxts: built in TRAIN, run
    forward and backward on random inputs (labels 0, 1 or 2: every seed's classes; DetectNet's box tables random
    boxes; a "cont" input one sequence per column)."""
    import numpy as np

    import caffe

    def run(data: bytes, seed: Seed) -> None:
        net = caffe.Net(str(_scratch(work, "in.prototxt", data)), caffe.TRAIN)
        rng = np.random.default_rng(len(data))
        for name in net.inputs:
            blob = net.blobs[name]
            if name == "label":
                blob.data[...] = rng.integers(0, 3, blob.shape)
            elif name == "boxes" and len(blob.shape) == 4 and blob.shape[3] == 16 and blob.shape[2]:  # DetectNet's
                blob.data[...] = detectnet_tables(blob.shape, rng)
            elif name == "cont" and blob.shape:  # sequence continuation indicators: 0 where one starts
                blob.data[...] = 1
                blob.data[0] = 0
            else:
                blob.data[...] = rng.normal(0, 1, blob.shape)
        net.forward()
        net.backward()

    seeds = [Seed(name, fork_training_net(*spec).encode(), "text") for name, spec in FORK_TRAINING_NETS.items()]
    return seeds, run


@target("caffemodel", weight=20, batch=20)
def _caffemodel(work: Path):
    import caffe

    _, tiny_weights, tiny = _tiny_model(work)
    lenet = caffe.Net(str(_asset(f"{LENET}/lenet.prototxt")), caffe.TEST)
    seeds = [
        Seed("lenet_newformat", _asset(f"{LENET}/lenet_iter_10000.caffemodel").read_bytes(), "proto"),
        Seed("lenet_v1", _asset(f"{LENET_V1}/lenet_iter_10000.caffemodel").read_bytes(), "proto"),
        Seed("tiny", tiny_weights.read_bytes(), "proto"),
    ]

    def run(data: bytes, seed: Seed) -> None:
        (tiny if seed.name == "tiny" else lenet).copy_from(str(_scratch(work, "in.caffemodel", data)))

    return seeds, run


@target("solverstate", weight=10, batch=10)
def _solverstate(work: Path):
    import caffe
    from caffe.proto import caffe_pb2 as pb
    from caffe.protoio import parse_text

    net = parse_text(_asset(f"{LENET}/lenet.prototxt").read_text(), pb.NetParameter())
    net.layer.add(name="label", type="Input", top=["label"]).input_param.shape.add(dim=[64])
    net.layer.add(name="loss", type="SoftmaxWithLoss", bottom=["ip2", "label"], top=["loss"])
    del net.layer[[layer.name for layer in net.layer].index("prob")]
    solver_param = pb.SolverParameter(
        net_param=net, base_lr=0.01, momentum=0.9, lr_policy="fixed", snapshot_prefix=str(work / "snap")
    )
    solver = caffe.get_solver(str(_scratch(work, "solver.prototxt", str(solver_param).encode())))
    state = _asset(f"{LENET_V1}/lenet_iter_10000.solverstate").read_bytes()
    learned = pb.SolverState.FromString(state).learned_net
    shutil.copy(_asset(f"{LENET_V1}/lenet_iter_10000.caffemodel"), work / Path(learned).name)
    seeds = [Seed("lenet_v1.solverstate", state, "proto")]

    def run(data: bytes, seed: Seed) -> None:
        solver.restore(str(_scratch(work, "in.solverstate", data)))

    return seeds, run


@target("binaryproto", weight=50, batch=100)
def _binaryproto(work: Path):
    import numpy as np

    from caffe import deploy
    from caffe import io as cio

    small = cio.array_to_blobproto(np.arange(3 * 4 * 4, dtype=np.float32).reshape(1, 3, 4, 4)).SerializeToString()
    seeds = [
        Seed("imagenet_mean", _asset("models/imagenet-common/imagenet_mean.binaryproto").read_bytes(), "proto"),
        Seed("small_mean", small, "proto"),
    ]

    def run(data: bytes, seed: Seed) -> None:
        deploy.read_mean(_scratch(work, "in.binaryproto", data))

    return seeds, run


@target("caffe2_netdef", weight=100, batch=200)
def _caffe2_netdef(work: Path):
    import numpy as np

    from caffe.caffe2.io import fill_op, init_blobs, read_netdef
    from caffe.caffe2.to_caffe import to_caffe
    from caffe.proto import caffe2_pb2

    text = _asset("caffe2/bvlc_alexnet/predict_net.pbtxt").read_bytes()
    binary = read_netdef(_asset("caffe2/inception_v2/predict_net.pbtxt")).SerializeToString()
    init = caffe2_pb2.NetDef(
        op=[fill_op("conv1_w", np.ones((2, 3, 3, 3), np.float32)), fill_op("conv1_b", np.zeros(2, np.float32))]
    ).SerializeToString()
    seeds = [
        Seed("alexnet.pbtxt", text, "text"),
        Seed("inception_v2.pb", binary, "proto"),
        Seed("init.pb", init, "proto"),
    ]

    def run(data: bytes, seed: Seed) -> None:
        net = read_netdef(_scratch(work, "in.pb", data))
        if seed.name == "init.pb":
            init_blobs(net, "init")
        else:
            to_caffe(net, {}, {"data": [1, 3, 224, 224]}, "predict")

    return seeds, run


@target("datum", weight=500, batch=2000)
def _datum(work: Path):
    import numpy as np

    from caffe.data.datum import array_to_datum, datum_labels, datum_to_array, serialize_datum
    from caffe.proto import caffe_pb2 as pb
    from caffe.protoio import parse_binary

    rng = np.random.default_rng(0)
    raw = array_to_datum(rng.integers(0, 255, (3, 8, 8), dtype=np.uint8), label=3)
    flt = array_to_datum(rng.standard_normal((2, 4, 4)).astype(np.float32), label=1)
    encoded = [pb.Datum(encoded=True, data=s.data, label=1) for s in _images()[:2]]
    seeds = [
        Seed(n, d.SerializeToString(), "proto")
        for n, d in (("raw", raw), ("float", flt), ("png", encoded[0]), ("jpeg", encoded[1]))
    ]
    gray = array_to_datum(rng.integers(0, 255, (1, 4, 10), dtype=np.uint8))
    seeds.append(Seed("multi_label", serialize_datum(gray, [3, 7, 0, -1, 300]), "proto"))  # caffe_ocr's

    def run(data: bytes, seed: Seed) -> None:
        datum_to_array(parse_binary(data, pb.Datum(), "fuzz", "Datum"), "fuzz")
        datum_labels(data, "fuzz")

    return seeds, run


ANNOTATED_NET = """name: "anno"
layer {{ name: "data" type: "AnnotatedData" top: "data" top: "label"
  data_param {{ source: "{source}" batch_size: 1 backend: LMDB }}
  transform_param {{ mirror: true mean_value: 104 mean_value: 117 mean_value: 123
    resize_param {{ height: 32 width: 32 interp_mode: LINEAR interp_mode: NEAREST }}
    emit_constraint {{ emit_type: CENTER }} expand_param {{ prob: 0.5 max_expand_ratio: 2 }}
    distort_param {{ brightness_prob: 0.5 brightness_delta: 32 hue_prob: 0.5 hue_delta: 18 }} }}
  annotated_data_param {{ batch_sampler {{ max_sample: 1 max_trials: 1 }}
    batch_sampler {{ sampler {{ min_scale: 0.3 max_scale: 1 min_aspect_ratio: 0.5 max_aspect_ratio: 2 }}
      sample_constraint {{ min_jaccard_overlap: 0.3 }} max_sample: 1 max_trials: 20 }} }} }}
"""


@target("annotated_datum", weight=100, batch=300)
def _annotated_datum(work: Path):
    """An SSD training record through AnnotatedData's TRAIN path: parse, decode, distort, expand, sample, resize,
    crop its boxes, then MobileNet-YOLO's label rows of them; mutated boxes (NaN, inverted, huge) and images
    included."""
    import numpy as np

    import caffe
    from caffe.data.annotation import annotated_datum
    from caffe.data.db import item_key, open_db
    from caffe.data.prefetch import Record
    from caffe.layers.annotated_data import yolo_label_rows

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
    boxes = [(1, 0.1, 0.2, 0.6, 0.7), (2, 0.5, 0.5, 0.9, 0.95, True)]
    records = [annotated_datum(image, boxes), annotated_datum(image, boxes[:1], encoding="png")]
    with open_db(work / "anno_lmdb", "lmdb", "new") as db:
        txn = db.transaction()
        txn.put(item_key(0, "seed"), records[0].SerializeToString())
        txn.commit()
    (work / "anno.prototxt").write_text(ANNOTATED_NET.format(source=work / "anno_lmdb"))
    layer = caffe.Net(str(work / "anno.prototxt"), caffe.TRAIN).layer_dict["data"]
    draws = np.random.default_rng(1)
    seeds = [Seed(n, r.SerializeToString(), "proto") for n, r in (("raw", records[0]), ("png", records[1]))]

    def run(data: bytes, seed: Seed) -> None:
        item = layer.source.decode(Record(data, "fuzz record"))
        out = np.empty((32, 32, 3), dtype=np.float32)
        table = layer.transformer.place_item(item, out, layer.transformer.draw(draws), "fuzz record")
        yolo_label_rows([table], False, "fuzz")  # MobileNet-YOLO's label rows of the same boxes

    return seeds, run


@target("annotation_file", weight=100, batch=300)
def _annotation_file(work: Path):
    """The annotation readers of create_annoset, create_detectnet_db and the studio's detection datasets: a Pascal
    VOC XML file, the fork's per-image JSON (COCO boxes) and DIGITS' KITTI text."""
    from caffe.data.annotation import read_json_boxes, read_kitti_objects, read_kitti_rows, read_voc_xml
    from caffe.data.detectnet import KITTI_CLASSES, box_table, kitti_box_rows

    xml = (
        b"<annotation><filename>a.jpg</filename><size><width>640</width><height>480</height><depth>3</depth>"
        b"</size><object><name>face</name><difficult>0</difficult><bndbox><xmin>10</xmin><ymin>20</ymin>"
        b"<xmax>300</xmax><ymax>400</ymax></bndbox></object><object><name>cat</name><difficult>1</difficult>"
        b"<bndbox><xmin>1</xmin><ymin>2</ymin><xmax>3</xmax><ymax>4</ymax></bndbox></object></annotation>\n"
    )
    doc = (
        b'{"image": {"file_name": "a.jpg", "height": 480, "width": 640}, "annotation": ['
        b'{"category_id": "cat", "bbox": [10, 20, 300, 400], "iscrowd": 0}, '
        b'{"category_id": "face", "bbox": [1.5, 2, 3, 4], "iscrowd": 1}]}\n'
    )
    names = {"face": 1, "cat": 2}

    kitti = (
        b"Car 0.00 0 -1.58 587.01 173.33 614.12 200.12 1.65 1.67 3.64 -0.65 1.71 46.70 -1.59\n"
        b"DontCare -1 -1 -10 503.89 169.71 590.61 190.13 -1 -1 -1 -1000 -1000 -1000 -10 0.9\n"
    )

    def run(data: bytes, seed: Seed) -> None:
        if seed.kind == "json":
            read_json_boxes(_scratch(work, "in.json", data), names, (480, 640))
        elif seed.name == "kitti.txt":
            path = _scratch(work, "in.txt", data)
            read_kitti_objects(path, 1 << 20)
            rows = kitti_box_rows(read_kitti_rows(path, 1 << 20), KITTI_CLASSES)  # DetectNet's tables
            box_table(rows, len(rows))
        else:
            read_voc_xml(_scratch(work, "in.xml", data), names)

    return [Seed("voc.xml", xml, "text"), Seed("coco.json", doc, "json"), Seed("kitti.txt", kitti, "text")], run


@target("segmentation_labels", weight=60, batch=200)
def _segmentation_labels(work: Path):
    """The studio's segmentation datasets: a label image (palette PNG, or RGB through a colour map file) and the
    colour map file itself."""
    import numpy as np
    from PIL import Image

    from caffe.studio.segmentation_datasets import label_map, read_colormap

    colours = [[0, 0, 0], [128, 0, 0], [0, 128, 0]]
    classes = np.zeros((6, 8), np.uint8)
    classes[1:4, 2:6], classes[4:, :3] = 1, 2
    paletted = Image.fromarray(classes, mode="P")
    paletted.putpalette([v for c in colours for v in c])
    pal, rgb = io.BytesIO(), io.BytesIO()
    paletted.save(pal, "PNG")
    Image.fromarray(np.asarray(colours, np.uint8)[classes]).save(rgb, "PNG")
    colormap = np.asarray(colours, np.uint8)

    def run(data: bytes, seed: Seed) -> None:
        if seed.name == "colormap.txt":
            read_colormap(_scratch(work, "colormap.txt", data))
        else:
            label_map(str(_scratch(work, "label.png", data)), colormap if seed.name == "rgb.png" else None)

    seeds = [Seed("palette.png", pal.getvalue(), "image"), Seed("rgb.png", rgb.getvalue(), "image")]
    return [*seeds, Seed("colormap.txt", b"0 0 0\n128 0 0\n0 128 0\n", "text")], run


@target("task_networks", weight=30, batch=100)
def _task_networks(work: Path):
    """The studio's network surgery for detection and segmentation model jobs: a mutated SSD, DetectNet or
    FCN/SegNet prototxt taken apart, retargeted to other classes and written back as train/val and deploy nets."""
    from caffe.data.detectnet import KITTI_CLASS_NAMES
    from caffe.studio import detection_networks as dn
    from caffe.studio import detectnet_networks as dtn
    from caffe.studio import segmentation_networks as sn
    from caffe.studio.networks import fill_missing_fillers, parse_network

    forks = ROOT / "tests" / "data" / "forks"
    ssd = [
        ("res10.prototxt", _asset("models/res10_ssd_face_prototxt_only/deploy.prototxt").read_bytes()),
        ("mobilenet_ssd_train.prototxt", (forks / "MobileNet-SSD_voc_MobileNetSSD_train.prototxt").read_bytes()),
    ]
    fcn = (
        b'name: "fcn" layer { name: "d" type: "Data" top: "data" include { phase: TRAIN }'
        b" data_param { batch_size: 2 } }"
        b' layer { name: "l" type: "Data" top: "label" include { phase: TRAIN } data_param { batch_size: 2 } }'
        b' layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 21'
        b' kernel_size: 1 } } layer { name: "up" type: "Deconvolution" bottom: "c" top: "up" param { lr_mult: 0 }'
        b" convolution_param { num_output: 21 kernel_size: 4 stride: 2 bias_term: false } }"
        b' layer { name: "score" type: "Crop" bottom: "up" bottom: "data" top: "score" }'
        b' layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss"'
        b" loss_param { ignore_label: 255 normalize: false } }"
        b' layer { name: "acc" type: "Accuracy" bottom: "score" bottom: "label" top: "acc" include { phase: TEST } }'
    )
    seg = [("segnet.prototxt", (forks / "SegNet-Tutorial_segnet_basic_inference.prototxt").read_bytes()),
           ("enet.prototxt", (forks / "ENet_enet_deploy_final.prototxt").read_bytes()),
           ("fcn_train.prototxt", fcn)]  # fmt: skip
    detection = {name for name, _ in ssd}
    two_classes = forks / "NVIDIA-caffe_kitti_detectnet_network-2classes.prototxt"
    detectnet = [("detectnet.prototxt", two_classes.read_bytes())]

    def run(data: bytes, seed: Seed) -> None:
        net = parse_network(data.decode("utf-8", errors="replace"), seed.name)
        if seed.name == "detectnet.prototxt":
            if dtn.is_detectnet(net):  # as the studio's DetectNet model jobs use it
                dtn.class_names(net, list(KITTI_CLASS_NAMES))
                dtn.size_mismatches(net, (64, 32))
                dtn.train_val_net(net, dtn.DetectNetSources(Path("t"), Path("v"), 2))
                dtn.deploy_net(net, (3, 32, 64))
                dtn.percent_outputs(net)
        elif seed.name in detection:
            parts = dn.ssd_parts(net)
            dn.retarget(parts, 3, finetune=True)
            fill_missing_fillers(parts.body)
            dn.train_val_net(parts, dn.DataSources("t", "v", "map", 2, 1, [104.0, 117.0, 123.0]))
            dn.deploy_net(parts)
        else:
            parts = sn.seg_parts(net)
            sn.retarget(parts, 4, finetune=True)
            fill_missing_fillers(parts.body)
            sn.train_val_net(parts, sn.SegSources("t", "tl", "v", "vl", 2, 1, sn.image_transform(parts)))
            sn.deploy_net(parts, (3, 32, 32))

    return [Seed(name, data, "text") for name, data in (*ssd, *seg, *detectnet)], run


@target("hdf5_weights", weight=40, batch=100)
def _hdf5(work: Path):
    _, weights, tiny = _tiny_model(work)
    seeds = [Seed("tiny.caffemodel.h5", weights.with_name("tiny.caffemodel.h5").read_bytes(), "bytes")]

    def run(data: bytes, seed: Seed) -> None:
        tiny.copy_from(str(_scratch(work, "in.caffemodel.h5", data)))

    return seeds, run


def _gzip(data: bytes) -> bytes:
    c = zlib.compressobj(1, zlib.DEFLATED, 31)
    return c.compress(data) + c.flush()


@target("archive", weight=40, batch=100)
def _archive(work: Path):
    from caffe import deploy

    tiny_deploy, weights, _ = _tiny_model(work)
    labels = _scratch(work, "labels.txt", b"dolphin\nseahorse\n")
    seeds = []
    for fmt in ("tar", "zip"):
        path = deploy.package_model(work / f"tiny.{fmt}", deploy=tiny_deploy, weights=weights, labels=labels)
        seeds.append(Seed(f"tiny.{fmt}", path.read_bytes(), "tar" if fmt == "tar" else "bytes"))
    with zipfile.ZipFile(io.BytesIO(seeds[1].data)) as z, zipfile.ZipFile(buf := io.BytesIO(), "w") as stored:
        for info in z.infolist():
            stored.writestr(info.filename, z.read(info))
    seeds.append(Seed("tiny_stored.zip", buf.getvalue(), "bytes"))
    seeds.append(Seed("tiny.tar.gz", seeds[0].data, "tar"))  # the tar mutated, then gzipped
    cache = work / "cache"

    def run(data: bytes, seed: Seed) -> None:
        suffix = ".tar.gz" if seed.name.endswith(".tar.gz") else Path(seed.name).suffix
        archive = _scratch(work, f"in{suffix}", _gzip(data) if suffix == ".tar.gz" else data)
        try:
            files = deploy.find_model(archive, cache_dir=cache)
            if files.labels is not None:
                deploy.read_labels(files.labels)
        finally:
            shutil.rmtree(cache, ignore_errors=True)

    return seeds, run


class _Web:
    """A TestClient kept open for the worker's life; answers >= 500 raise ServerError; ``refused(r)`` says 4xx."""

    def __init__(self, app: Any) -> None:
        from fastapi.testclient import TestClient

        self.client = TestClient(app, raise_server_exceptions=True)
        self.client.__enter__()

    def post(self, url: str, **kwargs: Any) -> Any:
        r = self.client.post(url, **kwargs)
        if r.status_code >= 500:
            raise ServerError(f"{url}: {r.status_code} {r.text[:300]!r}")
        return r

    @staticmethod
    def refused(r: Any) -> bool:
        return r.status_code >= 400


def _studio(work: Path) -> tuple[_Web, Any]:
    from caffe.studio.app import create_app

    app = create_app({"jobs_dir": work / "jobs", "devices": ["cpu"], "data_roots": [str(work)]})
    studio = app.state.studio
    studio.scheduler.submit = lambda job_id, argv, resource=None, **_: studio.store.get(job_id)  # never run jobs
    return _Web(app), studio.store


def _forget(store: Any, response: Any) -> None:
    """Delete the job a successful request created (the fuzzer keeps the jobs folder small)."""
    if response.status_code < 300:
        job_id = response.json().get("job_id")
        if job_id:
            store.delete(job_id)


@target("studio_pretrained", weight=2.5, batch=10, web=True)
def _studio_pretrained(work: Path):
    _, weights, _ = _tiny_model(work)
    web, store = _studio(work)
    form = {"job_name": "fuzz", "width": "8", "height": "8", "image_type": "color", "resize_mode": "squash"}
    base = {"weights_file": weights.read_bytes(), "deploy_file": TINY_NET.encode(), "labels_file": b"a\nb\n"}
    seeds = [Seed(f"{k}", v, "proto" if k == "weights_file" else "text") for k, v in base.items()]
    seeds.append(Seed("form", json.dumps(form).encode(), "json"))

    def run(data: bytes, seed: Seed) -> None:
        fields, files = dict(form), dict(base)
        if seed.name == "form":
            try:
                value = json.loads(data.decode("utf-8", "replace"))
                fields = (
                    {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {"width": str(value)}
                )
            except (ValueError, RecursionError):
                fields = {"job_name": "fuzz", "width": data.decode("latin-1")}
        else:
            files[seed.name] = data
        r = web.post("/pretrained_models.json", data=fields, files={k: (k, v) for k, v in files.items()})
        _forget(store, r)
        return web.refused(r)

    return seeds, run


def _labelled_folder(work: Path) -> Path:
    root = work / "labelled"
    for cls, names in (
        ("dolphin", ("image_0042.jpg", "image_0001.jpg")),
        ("seahorse", ("image_0001.jpg", "image_0002.jpg")),
    ):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for n in names:
            shutil.copy(_asset(f"dolphins-and-seahorses/{cls}/{n}"), root / cls / n)
    return root


@target("studio_dataset", weight=2.5, batch=10, web=True)
def _studio_dataset(work: Path):
    web, store = _studio(work)
    folder = _labelled_folder(work)
    listing = work / "train.txt"
    listing.write_text(f"{folder}/dolphin/image_0042.jpg 0\n{folder}/seahorse/image_0001.jpg 1\n")
    (work / "labels.txt").write_text("dolphin\nseahorse\n")
    by_folder = {
        "dataset_name": "fuzz",
        "method": "folder",
        "folder_train": str(folder),
        "resize_width": 16,
        "resize_height": 16,
        "resize_channels": 3,
        "resize_mode": "squash",
        "folder_pct_val": 25,
    }
    by_text = {
        "dataset_name": "fuzz",
        "method": "textfile",
        "textfile_local_train_images": str(listing),
        "textfile_local_labels_file": str(work / "labels.txt"),
        "resize_width": 16,
        "resize_height": 16,
    }
    boxes, maps = _boxed_folder(work), _painted_folders(work)
    by_boxes = {
        "dataset_name": "fuzz",
        "train_image_folder": str(boxes),
        "val_image_folder": str(boxes),
        "label_format": "auto",
        "custom_classes": "dontcare,face",
        "val_min_box_size": 4,
        "encoding": "png",
    }
    by_detectnet = {**by_boxes, "detector": "detectnet", "padding_image_width": 450, "padding_image_height": 400}
    by_maps = {
        "dataset_name": "fuzz",
        "feature_folder": str(maps / "images"),
        "label_folder": str(maps / "labels"),
        "folder_pct_val": 50,
        "colormap_method": "label",
        "resize_image_width": 8,
        "resize_image_height": 8,
    }
    seeds = [
        Seed("folder.json", json.dumps(by_folder).encode(), "json"),
        Seed("textfile.json", json.dumps(by_text).encode(), "json"),
        Seed("object-detection.json", json.dumps(by_boxes).encode(), "json"),
        Seed("detectnet.json", json.dumps(by_detectnet).encode(), "json"),
        Seed("segmentation.json", json.dumps(by_maps).encode(), "json"),
    ]  # fmt: skip
    routes = {"object-detection.json": "object-detection", "detectnet.json": "object-detection",
              "segmentation.json": "segmentation"}  # fmt: skip

    def run(data: bytes, seed: Seed) -> None:
        task = routes.get(seed.name, "classification")
        r = web.post(f"/datasets/images/{task}.json", content=data, headers={"content-type": "application/json"})
        _forget(store, r)
        return web.refused(r)

    return seeds, run


def _boxed_folder(work: Path) -> Path:
    """Two photos with Pascal VOC boxes beside them (the object-detection form's folder)."""
    root = work / "boxed"
    root.mkdir(parents=True, exist_ok=True)
    for n, (x0, y0, x1, y1) in (("test1", (89, 18, 155, 107)), ("test2", (192, 62, 346, 268))):
        shutil.copy(_asset(f"models/mtcnn_face_caffe/{n}.jpg"), root / f"{n}.jpg")
        (root / f"{n}.xml").write_text(
            f"<annotation><size><width>450</width><height>400</height><depth>3</depth></size><object><name>face"
            f"</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox>"
            "</object></annotation>"
        )
    return root


def _painted_folders(work: Path) -> Path:
    """Four 8 x 8 pictures and their grayscale label maps (the segmentation form's folders)."""
    import cv2
    import numpy as np

    root = work / "painted"
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(4):
        classes = np.zeros((8, 8), np.uint8)
        classes[i : i + 3, 2:6] = 1
        cv2.imwrite(str(root / "images" / f"{i}.png"), np.stack([classes * 200] * 3, axis=2))
        cv2.imwrite(str(root / "labels" / f"{i}.png"), classes)
    return root


@target("studio_model", weight=2.5, batch=10, web=True)
def _studio_model(work: Path):
    """The model forms of the three tasks (DIGITS' JSON fields; jobs are never run): a classifier, an SSD detector
    fine-tuned from a pretrained upload and a segmentation net typed in, on finished datasets of each task."""
    import numpy as np

    from caffe.io import array_to_blobproto
    from caffe.studio import datasets as ds

    web, store = _studio(work)
    made = store.create("dataset", "images", {})
    params = ds.DatasetParams.from_dict({"folder_train": str(_labelled_folder(work)), "resize_width": 16,
                                         "resize_height": 16, "folder_pct_val": 50})  # fmt: skip
    store.update(made.id, status="Done", result=ds.create_dataset(store.job_dir(made.id), params))
    boxes = store.create("dataset", "boxes", {"task": "object-detection"})
    store.update(boxes.id, status="Done", result={"task": "object-detection", "labels": ["dontcare", "face"],
                                                   "classes": 2, "counts": {"train": 2, "val": 2}})  # fmt: skip
    maps = store.create("dataset", "maps", {"task": "segmentation"})
    mean = array_to_blobproto(np.full((1, 3, 8, 8), 100.0, np.float32)).SerializeToString()
    (store.job_dir(maps.id) / "mean.binaryproto").write_bytes(mean)
    result = {"task": "segmentation", "labels": ["a", "b", "c"], "classes": 3, "counts": {"train": 4, "val": 2},
              "image_dims": [8, 8, 3]}  # fmt: skip
    store.update(maps.id, status="Done", result=result)
    weights = _asset("models/res10_ssd_face/res10_300x300_ssd_iter_140000.caffemodel").read_bytes()
    deploy = _asset("models/res10_ssd_face_prototxt_only/deploy.prototxt").read_bytes()
    r = web.post(
        "/pretrained_models.json",
        data={"job_name": "res10", "width": "300", "height": "300", "mean_values": "104,117,123"},
        files={"weights_file": ("w.caffemodel", weights), "deploy_file": ("d.prototxt", deploy)},
    )
    pretrained = r.json()["job_id"]
    seg_net = (
        'name: "n" layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }'
        ' layer { name: "score" type: "Convolution" bottom: "data" top: "score" convolution_param { num_output: 3'
        " kernel_size: 1 } }"
    )
    common = {"train_epochs": 1, "batch_size": 2, "learning_rate": 0.01, "lr_policy": "fixed", "random_seed": 1}
    forms = {
        "classification": {"dataset": made.id, "method": "standard", "standard_networks": "lenet", **common},
        "object-detection": {"dataset": boxes.id, "method": "pretrained", "pretrained_networks": pretrained, **common},
        "segmentation": {"dataset": maps.id, "method": "custom", "custom_network": seg_net, "use_mean": "pixel",
                         **common},
    }  # fmt: skip
    seeds = [Seed(f"{task}.json", json.dumps({"model_name": "fuzz", **form}).encode(), "json") for task, form in
             forms.items()]  # fmt: skip

    def run(data: bytes, seed: Seed) -> None:
        task = seed.name.removesuffix(".json")
        r = web.post(f"/models/images/{task}.json", content=data, headers={"content-type": "application/json"})
        _forget(store, r)
        return web.refused(r)

    return seeds, run


@target("studio_classify_one", weight=5, batch=20, web=True)
def _studio_classify_one(work: Path):
    _, weights, _ = _tiny_model(work)
    web, _ = _studio(work)
    r = web.post(
        "/pretrained_models.json",
        data={"job_name": "tiny", "width": "8", "height": "8"},
        files={
            "weights_file": ("w.caffemodel", weights.read_bytes()),
            "deploy_file": ("d.prototxt", TINY_NET),
            "labels_file": ("labels.txt", b"a\nb\n"),
        },
    )
    if r.status_code != 201:
        raise RuntimeError(f"fuzz setup: the tiny model upload failed: {r.status_code} {r.text}")
    job_id = r.json()["job_id"]

    def run(data: bytes, seed: Seed) -> None:
        return web.refused(
            web.post(
                "/models/images/classification/classify_one.json",
                data={"job_id": job_id},
                files={"image_file": (seed.name, data)},
            )
        )

    return _images(), run


@target("serve_predict", weight=10, batch=50, web=True)
def _serve_predict(work: Path):
    from caffe import deploy
    from caffe.serve import create_app, load_model

    tiny_deploy, weights, _ = _tiny_model(work)
    folder = work / "served"
    folder.mkdir()
    shutil.copy(tiny_deploy, folder / "deploy.prototxt")
    shutil.copy(weights, folder / "snapshot_iter_1.caffemodel")
    (folder / "labels.txt").write_text("a\nb\n")
    del deploy
    web = _Web(create_app([load_model(f"tiny={folder}")]))

    def run(data: bytes, seed: Seed) -> None:
        if seed.name.endswith(".jpg"):  # a raw body, as curl --data-binary sends it
            return web.refused(web.post("/models/tiny/predict", content=data, headers={"content-type": "image/jpeg"}))
        return web.refused(web.post("/models/tiny/predict", files={"file": (seed.name, data)}))

    return _images(), run


# planted failures: the harness's own tests (not in --targets all)
@target("planted_error", weight=1, batch=10, planted=True)
def _planted_error(work: Path):
    def run(data: bytes, seed: Seed) -> None:
        if data.count(b"\x00") % 3 == 1:
            raise ValueError("planted non-caffe exception")

    return [Seed("zeros", bytes(64), "bytes")], run


@target("planted_hang", weight=1, batch=10, planted=True)
def _planted_hang(work: Path):
    def run(data: bytes, seed: Seed) -> None:
        if data.count(b"\x00") % 5 == 1:
            time.sleep(3600)

    return [Seed("zeros", bytes(64), "bytes")], run


@target("planted_crash", weight=1, batch=10, planted=True)
def _planted_crash(work: Path):
    def run(data: bytes, seed: Seed) -> None:
        if data.count(b"\x00") % 5 == 2:
            os.abort()

    return [Seed("zeros", bytes(64), "bytes")], run


# ================================================================================================ running


@dataclass
class Failure:
    """A distinct finding: where it was first seen and its (shrunk) reproducer."""

    target: str
    outcome: str
    key: str
    index: int
    seed: str
    error: str
    frame: str
    trace: str
    data: bytes = b""
    count: int = 1


def _innermost(tb: Any) -> str:
    """The innermost traceback frame in ``caffe/`` as ``path:line in function`` (else the innermost one)."""
    frames = traceback.extract_tb(tb)
    ours = [f for f in frames if f.filename.startswith(CAFFE_DIR)] or frames[-1:]
    if not ours:
        return "?"
    f = ours[-1]
    return f"{os.path.relpath(f.filename, ROOT)}:{f.lineno} in {f.name}"


def classify(exc: BaseException, web: bool) -> str:
    from caffe.errors import CaffeError

    return "caffe error" if isinstance(exc, CaffeError) and not web else "non-caffe"


class Runner:
    """The targets set up in this process (lazily), running inputs and shrinking findings."""

    def __init__(self, run_seed: int, work: Path, shrink_s: float = 3.0) -> None:
        self.run_seed, self.work, self.shrink_s = run_seed, work, shrink_s
        self.ready: dict[str, tuple[list[Seed], Callable[[bytes, Seed], Any]]] = {}
        self.seen: set[str] = set()
        self.on_input: Callable[[], None] = lambda: None

    def setup(self, name: str) -> tuple[list[Seed], Callable[[bytes, Seed], Any]]:
        if name not in self.ready:
            folder = self.work / name
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            self.ready[name] = TARGETS[name].setup(folder)
        return self.ready[name]

    def attempt(self, name: str, data: bytes, seed: Seed) -> tuple[str, BaseException | None]:
        self.on_input()
        try:
            refused = self.ready[name][1](data, seed)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # every escape is what is counted (MemoryError, RecursionError included)
            return classify(e, TARGETS[name].web), e
        return ("caffe error" if refused is True else "ok"), None  # web targets return True for a 4xx

    def run(self, name: str, index: int) -> tuple[str, Failure | None]:
        seeds, _ = self.setup(name)
        data, seed = make_input(self.run_seed, name, index, seeds)
        outcome, exc = self.attempt(name, data, seed)
        if outcome != "non-caffe" or exc is None:
            return outcome, None
        frame = _innermost(exc.__traceback__)
        key = f"{name} | {type(exc).__name__} | {frame}"
        failure = Failure(
            name,
            outcome,
            key,
            index,
            seed.name,
            f"{type(exc).__name__}: {exc}"[:500],
            frame,
            "".join(traceback.format_exception(exc, limit=-12))[-4000:],
        )
        if key not in self.seen:
            self.seen.add(key)
            failure.data = self.shrink(name, data, seed, key)
        return outcome, failure

    def shrink(self, name: str, data: bytes, seed: Seed, key: str) -> bytes:
        """``data`` with chunks removed while the same failure recurs (bounded by ``shrink_s``)."""
        deadline = time.monotonic() + self.shrink_s

        def same(candidate: bytes) -> bool:
            outcome, exc = self.attempt(name, candidate, seed)
            return (
                exc is not None
                and outcome == "non-caffe"
                and f"{name} | {type(exc).__name__} | {_innermost(exc.__traceback__)}" == key
            )

        size = max(len(data) // 2, 1)
        while size >= 1 and time.monotonic() < deadline:
            i = 0
            while i < len(data) and time.monotonic() < deadline:
                candidate = data[:i] + data[i + size :]
                if same(candidate):
                    data = candidate
                else:
                    i += size
            size //= 2
        return data


# --------------------------------------------------------------------------------------------- workers


def _work_dir() -> Path:
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="caffe-fuzz-", dir=base))


def worker_main(
    conn: Connection, slot: Any, run_seed: int, max_memory_mb: int, names: list[str], log: str | None = None
) -> None:
    """Run batches ``(target, start, stop)`` sent on ``conn``; ``slot`` = [target number, index, start ns, busy]."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if log:  # libpng, libjpeg and HDF5 write to the C stderr: keep it out of the progress line
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 2)
        os.close(fd)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # the parent asks for the stacks of a hang
    if max_memory_mb:  # a blob over the project's budget is refused before the address-space limit is hit
        os.environ.setdefault("CAFFE_MAX_BLOB_MB", str(max_memory_mb // 4))
    import logging
    import warnings

    logging.disable(logging.CRITICAL)
    warnings.simplefilter("ignore")
    work = _work_dir()
    runner = Runner(run_seed, work)
    try:
        import torch

        torch.set_num_threads(1)
        if max_memory_mb:
            limit = max_memory_mb << 20
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

        def mark() -> None:
            slot[2] = time.monotonic_ns()

        runner.on_input = mark
        peak = 0
        while (msg := conn.recv()) is not None:
            if msg[0] == "rerun":
                _, name, index = msg
                runner.setup(name)
                conn.send(("ready",))
                slot[0], slot[1], slot[3] = names.index(name), index, 1
                conn.send(("rerun", *runner.run(name, index)))
                slot[3] = 0
                continue
            if msg[0] == "dump":
                _, name, index, path = msg
                seeds, _ = runner.setup(name)
                Path(path).write_bytes(make_input(run_seed, name, index, seeds)[0])
                conn.send(("dumped", path))
                continue
            name, start, stop = msg
            slot[0], slot[3], slot[2] = names.index(name), 2, time.monotonic_ns()  # 2: setting up
            runner.setup(name)
            counts: Counter[str] = Counter()
            failures: list[Failure] = []
            t0 = time.perf_counter()
            for index in range(start, stop):
                slot[1], slot[3] = index, 1
                outcome, failure = runner.run(name, index)
                counts[outcome] += 1
                if failure is not None:
                    failures.append(failure)
            slot[3] = 0
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10
            grew, peak = rss > peak, max(peak, rss)
            recycle = bool(max_memory_mb) and rss > (max_memory_mb << 20) // 2  # freed memory stays mapped
            conn.send(("done", name, start, stop, dict(counts), failures, time.perf_counter() - t0, rss, grew, recycle))
            if recycle:  # near the address-space limit even threads cannot start: a fresh worker goes on
                break
    finally:
        shutil.rmtree(work, ignore_errors=True)


@dataclass
class Worker:
    process: Any
    conn: Connection
    slot: Any
    batch: tuple[str, int, int] | None = None


@dataclass
class Report:
    """Counts per target, distinct findings, peak memory, time."""

    counts: dict[str, Counter] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    failures: dict[str, Failure] = field(default_factory=dict)
    peak_rss: int = 0
    rss_after: dict[str, int] = field(default_factory=dict)  # the worker peaks its batches raised
    recycled: int = 0  # workers restarted because their memory came near the limit
    slow: list[str] = field(default_factory=list)  # inputs over --hang_s that finished when run again alone
    wall: float = 0.0
    jobs: int = 1
    run_seed: int = 0

    def add(self, name: str, counts: dict[str, int], failures: list[Failure], seconds: float = 0.0) -> None:
        self.counts.setdefault(name, Counter()).update(counts)
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        for f in failures:
            if f.key in self.failures:
                self.failures[f.key].count += 1
            else:
                self.failures[f.key] = f

    def total(self, outcome: str | None = None) -> int:
        return sum((c[outcome] if outcome else sum(c.values())) for c in self.counts.values())

    def table(self) -> str:
        """The Markdown summary: one row per target, then the totals."""
        rows = [
            "| target | inputs | ok | caffe error | non-caffe | hang | crash | inputs/s per worker |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name in sorted(self.counts):
            c = self.counts[name]
            n = sum(c.values())
            rate = n / self.seconds[name] if self.seconds.get(name) else 0.0
            rows.append(f"| {name} | {n:,} | " + " | ".join(f"{c[o]:,}" for o in OUTCOMES) + f" | {rate:,.0f} |")
        rows.append(
            f"| **all** | **{self.total():,}** | "
            + " | ".join(f"**{self.total(o):,}**" for o in OUTCOMES)
            + f" | {self.total() / self.wall if self.wall else 0:,.0f} (wall, {self.jobs} workers) |"
        )
        peak = f"{self.peak_rss / (1 << 20):,.0f} MiB" if self.peak_rss else "n/a"
        rows.append("")
        rows.append(
            f"Run seed {self.run_seed}; {self.wall:,.0f} s wall with {self.jobs} worker(s); peak memory of a "
            f"worker (max RSS) {peak}; workers restarted for memory: {self.recycled}; inputs over the hang "
            f"limit that finished when rerun alone (counted by that outcome): {len(self.slow)}; "
            f"{len(self.failures)} distinct finding(s)."
        )
        return "\n".join(rows)


def plan(total: int, names: list[str]) -> dict[str, int]:
    """``total`` inputs shared by the targets' weights (at least one each)."""
    weight = sum(TARGETS[n].weight for n in names)
    return {n: max(1, math.floor(total * TARGETS[n].weight / weight)) for n in names}


def batches(counts: dict[str, int]) -> Iterator[tuple[str, int, int]]:
    """Round-robin batches of each target's indices, so that a --seconds cutoff still covers every target."""
    nexts = dict.fromkeys(counts, 0)
    while nexts:
        for name in list(nexts):
            start = nexts[name]
            stop = min(start + TARGETS[name].batch, counts[name])
            yield name, start, stop
            if stop >= counts[name]:
                del nexts[name]
            else:
                nexts[name] = stop


class Harness:
    """The parent: hands batches to worker processes, watches for hangs and deaths, saves reproducers."""

    def __init__(
        self,
        names: list[str],
        *,
        jobs: int,
        run_seed: int,
        hang_s: float,
        max_memory_mb: int,
        out: Path,
        progress: bool = True,
    ) -> None:
        self.names, self.jobs, self.run_seed = names, jobs, run_seed
        self.hang_s, self.max_memory_mb, self.out, self.show = hang_s, max_memory_mb, out, progress
        self.ctx = mp.get_context("spawn")
        self.report = Report(jobs=jobs, run_seed=run_seed)
        self.setup_s = max(120.0, hang_s)

    def _start(self) -> Worker:
        parent, child = self.ctx.Pipe()
        slot = self.ctx.Array("q", 4, lock=False)
        p = self.ctx.Process(
            target=worker_main,
            args=(child, slot, self.run_seed, self.max_memory_mb, self.names, str(self.out / "workers.log")),
            daemon=True,
        )
        p.start()
        child.close()
        return Worker(p, parent, slot)

    def _stop(self, w: Worker, kill: bool) -> None:
        if kill:
            w.process.kill()
        else:
            with contextlib.suppress(OSError):
                w.conn.send(None)
        w.process.join(10)
        if w.process.is_alive():
            w.process.kill()
            w.process.join()
        w.conn.close()

    def _lost(self, w: Worker, outcome: str, pending: list[tuple[str, int, int]]) -> Worker:
        """Record the input ``w`` was running as a hang or crash, requeue the rest, start a new worker."""
        assert w.batch is not None
        name, start, stop = w.batch
        index = int(w.slot[1]) if w.slot[3] == 1 else start
        if outcome == "hang" and w.process.pid:
            with contextlib.suppress(OSError):  # every thread's stack into workers.log, then the kill
                os.kill(w.process.pid, signal.SIGUSR1)
                time.sleep(0.5)
                with open(self.out / "workers.log", "a") as log:
                    log.write(f"\n^^^ stacks of the worker hung on {name}:{index}\n")
        self._stop(w, kill=True)
        code = w.process.exitcode
        if index > start:  # the finished part of the batch was not reported: run it again
            pending.insert(0, (name, start, index))
        if index + 1 < stop:
            pending.insert(0, (name, index + 1, stop))
        new = self._start()
        if outcome == "hang":  # confirm it alone in a fresh worker: a starved worker on a busy machine is slow
            new.conn.send(("rerun", name, index))
            if new.conn.poll(self.setup_s) and new.conn.recv() and new.conn.poll(2 * self.hang_s):
                _, rerun, failure = new.conn.recv()
                self.report.add(name, {rerun: 1}, [failure] if failure else [])
                self.report.slow.append(f"{name}:{index}")
                return new
            self._stop(new, kill=True)
            new = self._start()
        detail = (
            f"worker killed after {self.hang_s:g} s (its threads' stacks: workers.log)"
            if outcome == "hang"
            else f"worker died (exit code {code})"
        )
        key = f"{name} | {outcome}"
        failure = Failure(name, outcome, key, index, "?", detail, "?", "")
        self.report.add(name, {outcome: 1}, [failure])
        if key in self.report.failures and not self.report.failures[key].data:
            path = self.out / "findings" / f"{_slug(key)}.bin"
            path.parent.mkdir(parents=True, exist_ok=True)
            new.conn.send(("dump", name, index, str(path)))
            if new.conn.poll(self.setup_s):
                new.conn.recv()
                self.report.failures[key].data = path.read_bytes()
        return new

    def run(self, total: int, seconds: float | None) -> Report:
        self.out.mkdir(parents=True, exist_ok=True)
        counts = plan(total, self.names)
        pending = list(batches(counts))
        workers = [self._start() for _ in range(self.jobs)]
        t0 = last = time.monotonic()
        deadline = t0 + seconds if seconds else math.inf
        try:
            while True:
                now = time.monotonic()
                for w in workers:
                    if w.batch is None and pending and now < deadline:
                        w.batch = pending.pop(0)
                        w.slot[3], w.slot[2] = 2, time.monotonic_ns()
                        w.conn.send(w.batch)
                busy = [w for w in workers if w.batch is not None]
                if not busy:
                    break
                for conn in wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout=0.25):
                    w = next((w for w in busy if conn in (w.conn, w.process.sentinel)), None)
                    if w is None or w.batch is None or w not in workers:  # handled already (pipe and sentinel)
                        continue
                    try:
                        msg = w.conn.recv() if w.conn.poll() else None
                    except (EOFError, OSError):
                        msg = None
                    if msg is not None and msg[0] == "done":
                        _, name, _, _, c, failures, secs, rss, grew, recycle = msg
                        self.report.add(name, c, failures, secs)
                        self.report.peak_rss = max(self.report.peak_rss, rss)
                        if grew:  # this target's batch raised the worker's peak
                            self.report.rss_after[name] = max(self.report.rss_after.get(name, 0), rss)
                        w.batch = None
                        if recycle:
                            self._stop(w, kill=False)
                            workers[workers.index(w)] = self._start()
                            self.report.recycled += 1
                    elif not w.process.is_alive():
                        workers[workers.index(w)] = self._lost(w, "crash", pending)
                for i, w in enumerate(workers):
                    if w.batch is not None and w.process.is_alive():
                        allowed = self.setup_s if w.slot[3] == 2 else self.hang_s
                        if (time.monotonic_ns() - w.slot[2]) / 1e9 > allowed:
                            workers[i] = self._lost(w, "hang", pending)
                if self.show and time.monotonic() - last >= 1.0:
                    last = time.monotonic()
                    self._progress(last - t0, sum(counts.values()))
        finally:
            for w in workers:
                self._stop(w, kill=w.batch is not None)
        self.report.wall = time.monotonic() - t0
        children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss << 10
        self.report.peak_rss = max(self.report.peak_rss, children)
        if self.show:
            self._progress(self.report.wall, sum(counts.values()))
            sys.stderr.write("\n")
        return self.report

    def _progress(self, elapsed: float, planned: int) -> None:
        r = self.report
        done = r.total()
        line = (
            f"[{elapsed:6.0f}s] {done:,}/{planned:,} inputs  {done / max(elapsed, 1e-9):,.0f}/s  "
            + "  ".join(f"{o} {r.total(o):,}" for o in OUTCOMES)
            + f"  peak {r.peak_rss >> 20:,} MiB"
        )
        sys.stderr.write(("\r" + line) if sys.stderr.isatty() else line + "\n")
        sys.stderr.flush()


def run_inprocess(names: list[str], inputs: int, run_seed: int = 0, shrink_s: float = 1.0) -> Report:
    """Run ``inputs`` inputs of each target in this process (no watchdog): the test suite's quick run."""
    report = Report(run_seed=run_seed)
    work = _work_dir()
    runner = Runner(run_seed, work, shrink_s)
    t0 = time.monotonic()
    try:
        for name in names:
            counts: Counter[str] = Counter()
            failures = []
            runner.setup(name)
            t = time.perf_counter()
            for index in range(inputs):
                outcome, failure = runner.run(name, index)
                counts[outcome] += 1
                if failure is not None:
                    failures.append(failure)
            report.add(name, counts, failures, time.perf_counter() - t)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report.wall = time.monotonic() - t0
    report.peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10
    return report


# ================================================================================================ output


def _slug(key: str) -> str:
    name, _, rest = key.partition(" | ")
    kind = rest.split(" | ")[0] if rest else "x"
    return f"{name}-{re.sub(r'[^A-Za-z0-9]+', '_', kind)}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def save_findings(report: Report, out: Path) -> list[Path]:
    """Each distinct finding's reproducer (``.bin``) and description (``.txt``) under ``out/findings``."""
    folder = out / "findings"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for f in report.failures.values():
        base = folder / _slug(f.key)
        base.with_suffix(".bin").write_bytes(f.data)
        base.with_suffix(".txt").write_text(
            f"target: {f.target}\noutcome: {f.outcome}\nerror: {f.error}\nframe: {f.frame}\nseen: {f.count}\n"
            f"first input: --seed {report.run_seed} --dump {f.target}:{f.index} (seed file {f.seed})\n"
            f"reproducer: {base.with_suffix('.bin')} ({len(f.data)} bytes; rerun: python scripts/fuzz.py --replay "
            f"{base.with_suffix('.bin')} --targets {f.target})\n\n{f.trace}"
        )
        paths.append(base.with_suffix(".bin"))
    return paths


def findings_markdown(report: Report, out: Path) -> str:
    lines = [f"## Fuzz findings (scripts/fuzz.py, run seed {report.run_seed}, {report.total():,} inputs)", ""]
    if not report.failures:
        lines.append("None.")
    for f in sorted(report.failures.values(), key=lambda f: f.key):
        repro = out / "findings" / f"{_slug(f.key)}.bin"
        lines.append(
            f"- **{f.target}** - {f.outcome}: `{f.error[:200]}` at `{f.frame}` (seen {f.count}x); "
            f"reproducer `{repro}` ({len(f.data)} bytes)"
        )
    return "\n".join(lines) + "\n"


def write_docs(report: Report, path: Path) -> None:
    """Replace the table between the fuzz-table markers in ``path`` (docs/security.md)."""
    text = path.read_text()
    if DOCS_BEGIN not in text or DOCS_END not in text:
        raise SystemExit(f"fuzz: {path} has no {DOCS_BEGIN} ... {DOCS_END} block")
    head, rest = text.split(DOCS_BEGIN, 1)
    _, tail = rest.split(DOCS_END, 1)
    command = f"python scripts/fuzz.py --inputs {report.total():,} --seed {report.run_seed} --jobs {report.jobs}"
    path.write_text(f"{head}{DOCS_BEGIN}\n`{command.replace(',', '')}`\n\n{report.table()}\n{DOCS_END}{tail}")


def replay(path: Path, name: str) -> int:
    """Run one saved input against ``name`` in this process and print what it does."""
    work = _work_dir()
    try:
        runner = Runner(0, work)
        seeds, run = runner.setup(name)
        data = path.read_bytes()
        seed = next((s for s in seeds if path.name.startswith(s.name)), seeds[0])
        seed_name = os.environ.get("FUZZ_SEED_NAME")
        if seed_name:
            seed = next(s for s in seeds if s.name == seed_name)
        try:
            run(data, seed)
        except Exception as e:
            outcome = classify(e, TARGETS[name].web)
            traceback.print_exc()
            print(f"{name}: {outcome}: {type(e).__name__}: {e}")
            return 1 if outcome == "non-caffe" else 0
        print(f"{name}: ok")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--inputs", type=int, default=10_000, help="inputs over all targets (shared by WEIGHTS)")
    p.add_argument("--seconds", type=float, default=None, help="stop handing out inputs after this long")
    p.add_argument("--targets", default="all", help=f"comma-separated, or all: {', '.join(_public())}")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes")
    p.add_argument("--out", type=Path, default=Path("fuzz-out"), help="reproducers, report.json, findings.md")
    p.add_argument("--seed", type=int, default=0, help="run seed: inputs are a function of (seed, target, index)")
    p.add_argument("--hang_s", type=float, default=10.0, help="one input running longer is a hang")
    p.add_argument("--max_memory_mb", type=int, default=4096, help="address-space limit of each worker (0: none)")
    p.add_argument("--write_docs", action="store_true", help="update the table in docs/security.md")
    p.add_argument("--findings_md", type=Path, default=None, help="also write the findings as Markdown here")
    p.add_argument("--dump", default=None, metavar="TARGET:INDEX", help="write that input to --out and exit")
    p.add_argument("--replay", type=Path, default=None, help="run one saved input against --targets (one name)")
    args = p.parse_args(argv)
    names = _public() if args.targets == "all" else [n.strip() for n in args.targets.split(",") if n.strip()]
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        p.error(f"unknown target(s) {', '.join(unknown)}; known: {', '.join(TARGETS)}")
    if args.replay:
        return replay(args.replay, names[0])
    if args.dump:
        name, _, index = args.dump.partition(":")
        work = _work_dir()
        try:
            seeds, _ = Runner(args.seed, work).setup(name)
            data, seed = make_input(args.seed, name, int(index), seeds)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        args.out.mkdir(parents=True, exist_ok=True)
        dest = args.out / f"{name}-{index}.bin"
        dest.write_bytes(data)
        print(f"{dest} (seed file {seed.name}, {len(data)} bytes)")
        return 0
    harness = Harness(
        names, jobs=args.jobs, run_seed=args.seed, hang_s=args.hang_s, max_memory_mb=args.max_memory_mb, out=args.out
    )
    report = harness.run(args.inputs, args.seconds)
    args.out.mkdir(parents=True, exist_ok=True)
    save_findings(report, args.out)
    summary = report.table()
    (args.out / "summary.md").write_text(summary + "\n")
    (args.out / "findings.md").write_text(findings_markdown(report, args.out))
    (args.out / "report.json").write_text(
        json.dumps(
            {
                "counts": {k: dict(v) for k, v in report.counts.items()},
                "seconds": report.seconds,
                "wall": report.wall,
                "peak_rss": report.peak_rss,
                "rss_after": report.rss_after,
                "recycled": report.recycled,
                "slow": report.slow,
                "jobs": report.jobs,
                "seed": report.run_seed,
                "findings": [{k: v for k, v in vars(f).items() if k != "data"} for f in report.failures.values()],
            },
            indent=1,
        )
    )
    if args.findings_md:
        args.findings_md.write_text(findings_markdown(report, args.out))
    if args.write_docs:
        write_docs(report, ROOT / "docs" / "security.md")
    print(summary)
    for f in report.failures.values():
        print(f"finding: {f.key} (seen {f.count}x): {f.error[:160]}")
    bad = report.total("non-caffe") + report.total("hang") + report.total("crash")
    return 1 if bad else 0


def _public() -> list[str]:
    return [n for n, t in TARGETS.items() if not t.planted]


if __name__ == "__main__":
    sys.exit(main())
