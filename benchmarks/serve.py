"""Serving SqueezeNet over HTTP: requests/second and latency with and without request batching.

    python benchmarks/serve.py [--requests 400] [--rounds 3] [--clients 8] [--no-write]

Three ways of classifying the same JPEG (cat.jpg, multipart upload), in one script:

* direct loop: the serving preprocessing (decode, resize, mean) and ``net.forward()`` at batch 1,
  one image after the other, in this process: no HTTP, no batching (the baseline);
* ``caffe serve --max_batch 1``: the REST server, every request its own forward;
* ``caffe serve --max_batch 8 --max_wait_ms 5``: the REST server batching concurrent requests.

Both servers run as ``caffe serve`` subprocesses on 127.0.0.1 (started once, idle while the others
are timed); ``--clients`` threads of this process send the requests (httpx, keep-alive). The modes
are timed round-robin, ``--rounds`` times, so that drift on a noisy machine hits each alike;
requests/second is the median over rounds, p50/p99 latency is over every request of a mode (client
side, from sending to the parsed answer). The table goes to docs/benchmarks.md ("Serving").
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
import numpy as np
import torch
from common import MODELS, assets_dir, machine_info, median, write_docs_section

SECTION = "## Serving"
IMAGE = "caffe-ref/examples/images/cat.jpg"
LABELS = "models/imagenet-common/synset_words.txt"
MEAN = "104,117,123"
RUN = "import sys; from caffe.tools.cli import main; sys.exit(main(sys.argv[1:]))"


@dataclass
class Mode:
    title: str
    rates: list[float] = field(default_factory=list)  # requests/second, one per round
    latencies: list[float] = field(default_factory=list)  # seconds, every request
    images: int = 0  # server side: images and forwards (batches) while timed
    forwards: int = 0
    cpu_s: float = 0.0  # CPU time of every process involved (server and clients), all rounds
    requests: int = 0

    @property
    def per_forward(self) -> float:
        return self.images / self.forwards if self.forwards else 1.0


class Server:
    """A ``caffe serve`` subprocess on a free port of 127.0.0.1."""

    def __init__(self, name: str, torch_threads: int, *flags: str) -> None:
        model_dir = assets_dir() / "models/squeezenet_v1.0_deepcompression"
        cmd = [sys.executable, "-c", RUN, "serve", "--port=0", f"sq={model_dir}", *flags]
        cmd += [f"--labels={assets_dir() / LABELS}", f"--mean={MEAN}"]
        self.name = name
        env = {**os.environ, "OMP_NUM_THREADS": str(torch_threads)}  # torch's intra-op threads
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
        self.url = ""
        ready = threading.Event()
        threading.Thread(target=self._read, args=(ready,), daemon=True).start()
        if not ready.wait(180) or not self.url:
            self.stop()
            raise SystemExit(f"{name}: caffe serve did not start")

    def _read(self, ready: threading.Event) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            m = re.search(r"\] Serving .* on (http://127\.0\.0\.1:\d+)", line)
            if m:
                self.url = m.group(1)
            if "Application startup complete" in line:
                ready.set()
        ready.set()

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (all its threads)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stats(self) -> dict:
        return httpx.get(f"{self.url}/models/sq", timeout=30).json()["stats"]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def direct_loop(n: int, data: bytes, mode: Mode) -> None:
    """The baseline: preprocessing + net.forward() at batch 1, one image after the other."""
    net, preprocess = _direct_net()
    x = net.blobs[net.inputs[0]]
    cpu0, t0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        x.data[0] = preprocess(data)
        prob = net.forward()[net.outputs[0]]
        int(np.argmax(prob[0]))
        mode.latencies.append(time.perf_counter() - t)
    mode.rates.append(n / (time.perf_counter() - t0))
    mode.cpu_s += time.process_time() - cpu0
    mode.requests += n


_NET: tuple = ()


def _direct_net() -> tuple:
    global _NET
    if not _NET:
        import caffe
        from caffe.deploy import Preprocessing, fit_mean, parse_mean

        spec = MODELS["squeezenet"]
        net = caffe.Net(str(spec.prototxt_path), caffe.TEST, weights=str(spec.weights_path))
        shape = tuple(net.blobs[net.inputs[0]].shape[1:])
        _NET = (net, Preprocessing(shape, mean=fit_mean(parse_mean(MEAN), shape).array))
    return _NET


def forward_ms_per_image(batch: int, repeat: int = 10) -> float:
    """Median CPU time of ``net.forward()`` at ``batch``, per image, in ms (the direct loop's net)."""
    net, _ = _direct_net()
    x = net.blobs[net.inputs[0]]
    x.reshape(batch, *x.shape[1:])
    net.reshape()
    x.data[...] = np.random.default_rng(0).uniform(-120, 120, x.shape)
    net.forward()
    times = []
    for _ in range(repeat):
        t = time.process_time()
        net.forward()
        times.append(time.process_time() - t)
    x.reshape(1, *x.shape[1:])
    net.reshape()
    return median(times) * 1e3 / batch


def http_load(server: Server, n: int, clients: int, data: bytes, mode: Mode) -> None:
    """``n`` requests from ``clients`` threads at once; every answer must be the expected top-1."""
    before = server.stats()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    with httpx.Client(base_url=server.url, timeout=120, limits=limits) as client:

        def one(_: int) -> tuple[float, int]:
            t = time.perf_counter()
            r = client.post("/models/sq/predict", files={"file": ("cat.jpg", data, "image/jpeg")}, params={"top_k": 1})
            index = r.json()["predictions"][0]["index"] if r.status_code == 200 else -1
            return time.perf_counter() - t, index

        one(0)  # connection up
        with ThreadPoolExecutor(clients) as pool:
            cpu0, server_cpu0, t0 = time.process_time(), server.cpu_seconds(), time.perf_counter()
            results = list(pool.map(one, range(n)))
            seconds = time.perf_counter() - t0
            mode.cpu_s += time.process_time() - cpu0 + server.cpu_seconds() - server_cpu0
            mode.requests += n
    wrong = sum(index != 278 for _, index in results)  # 278: kit fox, the reference top-1 of cat.jpg
    if wrong:
        raise SystemExit(f"{mode.title}: {wrong} of {n} answers are not the reference top-1")
    mode.rates.append(n / seconds)
    mode.latencies.extend(lat for lat, _ in results)
    after = server.stats()
    mode.images += after["images"] - before["images"]
    mode.forwards += after["forwards"] - before["forwards"]


def percentile_ms(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="requests per mode and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8, help="concurrent HTTP clients")
    parser.add_argument("--max_batch", type=int, default=8)
    parser.add_argument("--max_wait_ms", type=float, default=5.0)
    parser.add_argument("--torch_threads", type=int, default=1, help="intra-op threads of every net")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    data = (assets_dir() / IMAGE).read_bytes()
    torch.set_num_threads(args.torch_threads)
    load_before = os.getloadavg()[0]
    batched_flags = (f"--max_batch={args.max_batch}", f"--max_wait_ms={args.max_wait_ms}")
    servers = {
        "unbatched": Server("unbatched", args.torch_threads, "--max_batch=1"),
        "batched": Server("batched", args.torch_threads, *batched_flags),
    }
    modes = {
        "direct": Mode("direct loop: preprocessing + `net.forward()` at batch 1, no HTTP"),
        "unbatched": Mode(f"`caffe serve --max_batch 1` (no batching), {args.clients} clients"),
        "batched": Mode(
            f"`caffe serve --max_batch {args.max_batch} --max_wait_ms {args.max_wait_ms:g}`, {args.clients} clients"
        ),
    }
    try:
        direct_loop(5, data, Mode("warm-up"))
        for key in servers:
            http_load(servers[key], 2 * args.clients, args.clients, data, Mode("warm-up"))
        for r in range(args.rounds):
            order = list(modes)[r % 3 :] + list(modes)[: r % 3]
            for key in order:
                if key == "direct":
                    direct_loop(args.requests, data, modes[key])
                else:
                    http_load(servers[key], args.requests, args.clients, data, modes[key])
                print(f"round {r + 1}: {key} {modes[key].rates[-1]:.1f} requests/s", flush=True)
    finally:
        for s in servers.values():
            s.stop()

    base = median(modes["direct"].rates)
    forward_ms = {n: forward_ms_per_image(n) for n in (1, args.max_batch)}
    info = machine_info()
    load = ", ".join(f"{v:.1f}" for v in (load_before, os.getloadavg()[0]))
    lines = [
        SECTION,
        "",
        f"Reproduce with `python benchmarks/serve.py`. Machine: {info['cpu']}, {info['cores']} cores; "
        f"torch {info['torch']}; default inference engine, {args.torch_threads} intra-op torch thread(s) per net "
        "(with 2, the two OpenMP workers of a net spin-wait for each other whenever other jobs oversubscribe the "
        "cores: a batch-1 forward took ~5x more CPU time here).",
        f"SqueezeNet v1.0 (real weights) classifying `cat.jpg` ({len(data) // 1024} KB JPEG, multipart upload, top-1 "
        f"checked on every answer). {args.rounds} rounds of {args.requests} requests per mode, modes taken "
        "round-robin; requests/s is the median over rounds, latencies are client-side over all requests; CPU ms "
        "per request counts every process involved (server and client threads, or the direct loop's process). "
        "The servers are `caffe serve` subprocesses on 127.0.0.1, the clients httpx threads on the same cores.",
        f"Short settings (`--requests {args.requests} --rounds {args.rounds}`) on a machine shared with other "
        f"jobs (1-minute load average {load} before/after, on {info['cores']} cores): wall-clock numbers are "
        "noisy, CPU ms per request is steadier. With 8 clients the latency is mostly queueing (8 requests in "
        "flight at the server's rate). Batching can only raise throughput as far as a batch costs less per "
        "image than single images; the net alone, in this process, takes "
        f"{forward_ms[1]:.1f} CPU ms per image at batch 1 and {forward_ms[args.max_batch]:.1f} at batch "
        f"{args.max_batch} (medians of 10 forwards).",
        "",
        "| mode | requests/s | p50 latency ms | p99 latency ms | CPU ms per request | images per forward "
        "| requests/s vs direct loop |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode in modes.values():
        rate = median(mode.rates)
        lines.append(
            f"| {mode.title} | {rate:.1f} | {percentile_ms(mode.latencies, 50):.0f} | "
            f"{percentile_ms(mode.latencies, 99):.0f} | {1e3 * mode.cpu_s / max(1, mode.requests):.0f} | "
            f"{mode.per_forward:.2f} | {rate / base:.2f}x |"
        )
    print("\n".join(lines))
    if not args.no_write:
        write_docs_section(SECTION, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
