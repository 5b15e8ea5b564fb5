"""Data layer throughput: images/s of the ``Data`` layer against a plain Pillow decode loop, and
whether the layer ever makes a CPU AlexNet training step wait.

    python benchmarks/data.py [--records 1536] [--steps 6] [--no-write]

The database holds 256x256 JPEG-encoded Datums (the dolphins-and-seahorses images, squashed to
256x256 and repeated); the layer crops 227, mirrors and subtracts a mean file (TRAIN phase), in
batches of 32. The peer is the simplest possible loop in the same process: read each record, parse
the Datum, decode the JPEG with Pillow, one thread. The table goes to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import io
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cv2
import numpy as np
import simplejpeg
import torch
from common import assets_dir, machine_info, median, write_docs_section
from google.protobuf import text_format
from PIL import Image

import caffe
from caffe.data.datum import decode_image_bytes
from caffe.data.db import open_db
from caffe.data.prefetch import set_data_workers
from caffe.proto import caffe_pb2 as pb
from caffe.tools.convert_imageset import convert_imageset_db
from caffe.util.mean import compute_mean, mean_blob_proto

SECTION = "## Data layer"
BATCH = 32


def build_database(folder: Path, records: int) -> tuple[Path, Path]:
    """The tutorial's way: ``convert_imageset --encoded --resize_width 256 --resize_height 256`` over a list
    naming the dolphins-and-seahorses images again and again (``records`` lines), then ``compute_image_mean``."""
    root = assets_dir() / "dolphins-and-seahorses"
    images = sorted(p.relative_to(root).as_posix() for p in root.glob("*/*.jpg"))
    listing = folder / "list.txt"
    listing.write_text("".join(f"{images[i % len(images)]} {i % 2}\n" for i in range(records)))
    db_path, mean_path = folder / "bench_lmdb", folder / "mean.binaryproto"
    convert_imageset_db(f"{root}/", listing, db_path, encoded=True, resize_width=256, resize_height=256)
    mean, _ = compute_mean(str(db_path))
    mean_path.write_bytes(mean_blob_proto(mean).SerializeToString())
    return db_path, mean_path


class Timed:
    """Wall-clock and process CPU time (every thread, user + system) of a block."""

    def __enter__(self) -> Timed:
        self.wall, self.cpu = time.perf_counter(), process_cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, process_cpu() - self.cpu


def process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def pillow_loop(db_path: Path, records: int) -> tuple[float, float]:
    """(images/s, CPU us per image) of the plain loop: read, parse, decode with Pillow, one thread."""
    with open_db(db_path, "lmdb", "read") as db, Timed() as t:
        n = 0
        for _, value in db.cursor():
            datum = pb.Datum.FromString(value)
            np.asarray(Image.open(io.BytesIO(datum.data)).convert("RGB"))
            n += 1
            if n == records:
                break
    return n / t.wall, 1e6 * t.cpu / n


def decode_threads(db_path: Path, records: int, threads: int, opencv: bool = False) -> float:
    """Images/s of the layer's bare JPEG decoding (``opencv``: ``cv2.imdecode`` instead) split over ``threads``
    threads: the machine's own scaling."""
    with open_db(db_path, "lmdb", "read") as db:
        blobs = [pb.Datum.FromString(v).data for _, v in db.cursor()][:records]

    def work(part: list[bytes]) -> None:
        for blob in part:
            if opencv:
                cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_UNCHANGED)
            else:
                decode_image_bytes(blob)

    pool = [threading.Thread(target=work, args=(blobs[k::threads],)) for k in range(threads)]
    start = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return len(blobs) / (time.perf_counter() - start)


def data_net(db_path: Path, mean_path: Path, workers: int) -> caffe.Net:
    set_data_workers(workers)
    text = f"""
    layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: TRAIN }}
            transform_param {{ crop_size: 227 mirror: true mean_file: "{mean_path}" }}
            data_param {{ source: "{db_path}" batch_size: {BATCH} backend: LMDB }} }}
    """
    return caffe.Net(text_format.Parse(text, pb.NetParameter()), caffe.TRAIN)


def layer_rate(db_path: Path, mean_path: Path, workers: int, records: int) -> tuple[float, float]:
    """(images/s, CPU us per image of the whole process) of the Data layer in steady state."""
    net = data_net(db_path, mean_path, workers)
    warm_up = 8  # steady state: threads started, the buffer pool filled (first-touch page faults paid)
    for _ in range(warm_up):
        net.forward()
    batches = records // BATCH - warm_up
    with Timed() as t:
        for _ in range(batches):
            net.forward()
    net.layer_dict["data"].prefetcher.stop(join=True)
    return batches * BATCH / t.wall, 1e6 * t.cpu / (batches * BATCH)


def alexnet_wait(db_path: Path, mean_path: Path, steps: int) -> tuple[float, float, float]:
    """Forward+backward steps of AlexNet (batch 32) fed by the Data layer: (step ms, wait ms, waits>1ms)."""
    set_data_workers(2)
    text = (assets_dir() / "caffe-ref/models/bvlc_alexnet/train_val.prototxt").read_text()
    param = text_format.Parse(text, pb.NetParameter())
    for layer in param.layer:
        if layer.type == "Data":
            layer.data_param.source = str(db_path)
            layer.data_param.batch_size = BATCH
            layer.transform_param.mean_file = str(mean_path)
    net = caffe.Net(param, caffe.TRAIN)
    data_layer = net.layer_dict["data"]
    net.forward()
    net.backward()
    before_batches = data_layer.prefetcher.batches
    waits = []
    times = []
    for _ in range(steps):
        w0 = data_layer.prefetcher.wait_seconds
        start = time.perf_counter()
        net.forward()
        net.backward()
        times.append(time.perf_counter() - start)
        waits.append(data_layer.prefetcher.wait_seconds - w0)
    assert data_layer.prefetcher.batches - before_batches == steps
    return median(times) * 1e3, median(waits) * 1e3, float(max(waits) * 1e3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=3072)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        db_path, mean_path = build_database(Path(tmp), args.records)
        rates: dict[str, list[float]] = {"pillow": [], "w0": [], "w1": [], "w2": []}
        cpus: dict[str, list[float]] = {k: [] for k in rates}
        scaling = []  # bare decoding, 2 threads vs 1
        turbo_gain = []  # bare decoding, 1 thread: the layer's TurboJPEG path vs cv2.imdecode
        for r in range(args.rounds):  # interleaved rounds: this VM's speed drifts
            for key, run in [("pillow", lambda: pillow_loop(db_path, args.records))] + [
                (f"w{w}", lambda w=w: layer_rate(db_path, mean_path, w, args.records)) for w in (0, 1, 2)
            ]:
                rate, cpu = run()
                rates[key].append(rate)
                cpus[key].append(cpu)
            one = decode_threads(db_path, args.records, 1)
            scaling.append(decode_threads(db_path, args.records, 2) / one)
            turbo_gain.append(one / decode_threads(db_path, args.records, 1, opencv=True))
            print(
                f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f}/s {cpus[k][-1]:.0f}us" for k, v in rates.items()),
                flush=True,
            )
        best = {k: median(v) for k, v in rates.items()}
        ratios = {k: median([r / p for r, p in zip(v, rates["pillow"], strict=True)]) for k, v in rates.items()}
        cpu = {k: median(v) for k, v in cpus.items()}
        per_round = [r / p for r, p in zip(rates["w2"], rates["pillow"], strict=True)]
        print(f"2 workers / Pillow per round: {', '.join(f'{x:.2f}' for x in per_round)}")
        print(f"bare JPEG decoding, 2 threads / 1 thread: {', '.join(f'{x:.2f}' for x in scaling)}")
        step_ms, wait_ms, worst_ms = alexnet_wait(db_path, mean_path, args.steps)
        print(f"AlexNet step {step_ms:.0f} ms, data wait median {wait_ms:.3f} ms, worst {worst_ms:.3f} ms")
    info = machine_info()
    lines = [
        SECTION,
        "",
        f"Reproduce with `python benchmarks/data.py`. Machine: {info['cpu']}, {info['cores']} cores; "
        f"torch {info['torch']}, OpenCV {info['opencv']}, simplejpeg {simplejpeg.__version__}.",
        f"LMDB of {args.records} JPEG-encoded 256x256 Datums (`convert_imageset --encoded --resize_width 256 "
        "--resize_height 256` over the dolphins-and-seahorses images, listed again and again; mean from "
        "`compute_image_mean`); `Data` layer in TRAIN with `crop_size: 227`, "
        f"`mirror: true` and a mean file, batch {BATCH}. Medians of {args.rounds} interleaved rounds (this VM's "
        "speed drifts, so each round runs every reader back to back and the ratio is taken per round).",
        "",
        "| reader | images/s | vs Pillow loop (per-round ratio) | CPU us per image (all threads) |",
        "|---|---|---|---|",
        f"| plain loop: parse Datum + Pillow decode, 1 thread | {best['pillow']:.0f} | 1.00x | {cpu['pillow']:.0f} |",
    ]
    for w, label in ((0, "no workers (decode in the net's thread)"), (1, "1 worker"), (2, "2 workers (default)")):
        lines.append(f"| `Data` layer, {label} | {best[f'w{w}']:.0f} | {ratios[f'w{w}']:.2f}x | {cpu[f'w{w}']:.0f} |")
    lines += [
        "",
        "Images/s are medians over rounds; the ratio column is the median of the per-round ratios (2 workers: "
        + ", ".join(f"{x:.2f}" for x in per_round)
        + "). The CPU column is the process's CPU time (every thread, user + system) per image while the reader "
        "ran, in steady state (8 batches read first: threads started, the batch-buffer pool filled). The layer "
        "decodes JPEGs with libjpeg-turbo's TurboJPEG API (`simplejpeg`: OpenCV's exact pixels, "
        f"{median(turbo_gain):.2f}x the images/s of `cv2.imdecode` on these records, one thread), so without "
        f"workers it costs {cpu['w0']:.0f} us of CPU per image against the peer's {cpu['pillow']:.0f}, its "
        "crop/mirror/mean/float pass (one OpenCV call per image into a recycled batch buffer) included. Two workers "
        "are then as parallel as this machine runs two decoding threads: the same bare decoding calls over the same "
        "records, split over two threads, ran "
        f"{median(scaling):.2f}x as fast as in one (median of "
        + ", ".join(f"{x:.2f}" for x in scaling)
        + "). So expect 2 workers / peer = two-thread scaling x peer CPU / layer CPU = "
        f"{median(scaling):.2f} x {cpu['pillow']:.0f} / {cpu['w0']:.0f} = "
        f"{median(scaling) * cpu['pillow'] / cpu['w0']:.2f}x; measured {ratios['w2']:.2f}x. The target of this "
        f"benchmark, 2 workers >= 1.8x the plain loop, {'holds' if ratios['w2'] >= 1.8 else 'is not reached'} in "
        f"this run ({sum(x >= 1.8 for x in per_round)} of {len(per_round)} rounds reach 1.8x on their own; this "
        "VM's speed drifts within seconds, which scatters single rounds).",
        "",
        f"Feeding a CPU AlexNet (caffe-ref `bvlc_alexnet/train_val.prototxt`, batch {BATCH}, forward + backward): "
        f"a step takes {step_ms:.0f} ms (median of {args.steps}); the net waited for the Data layer "
        f"{wait_ms:.3f} ms per step (median), {worst_ms:.3f} ms at worst: the next batch is always ready.",
        "",
    ]
    if not args.no_write:
        write_docs_section(SECTION, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
