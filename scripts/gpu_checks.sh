#!/usr/bin/env bash
# The GPU checks of issue 13, as one short script for a lent one-GPU machine (target: <= 7 minutes on an H100).
#
#   scripts/gpu_checks.sh --prepare            HERE, before: wheels the GPU image lacks into .whl/ and the
#                                              assets the checks read into .gpu-assets/ (both git-ignored;
#                                              carry both to the GPU machine)
#   scripts/gpu_checks.sh [OUTDIR] [--write-docs]
#                                              THERE, from the repository root: results into OUTDIR
#                                              (default ./gpu-results); docs/benchmarks.md is only
#                                              rewritten with --write-docs
#
# Steps, each bounded by `timeout` (a failing step is reported and the next one runs):
#   0. torch / CUDA / imports;  1. nvidia-smi + `caffe device_query --gpu all`;  2. tests/test_gpu.py;
#   3. the CUDA tests of tests/test_distributed.py (2 gloo ranks sharing the GPU; NCCL with 1 rank);
#   4. benchmarks/forward.py and benchmarks/train.py with --device cuda;  5. a summary.
# OUTDIR gets at most 6 files: env.txt, tests.log, bench.log, forward_gpu.md, train_gpu.md, summary.txt.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# ------------------------------------------------------------------------------------------ --prepare
if [[ "${1:-}" == "--prepare" ]]; then
    ASSETS_SRC="${CAFFE_TEST_ASSETS:-$ROOT/../shared/assets}"
    echo "== prepare: wheels for Python 3.12 / x86-64 into .whl/ (the GPU image lacks them or has an older one)"
    mkdir -p .whl .gpu-assets
    grep -qxF '/.gpu-assets/' .git/info/exclude 2>/dev/null || echo '/.gpu-assets/' >>.git/info/exclude
    plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
    for spec in "lmdb==$(python -c 'import lmdb; print(lmdb.__version__)')" \
        "protobuf==$(python -c 'import google.protobuf as p; print(p.__version__)')" \
        simplejpeg pydot; do
        timeout 120 python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
            --implementation cp "${plat[@]}" -d .whl "$spec"
    done
    echo "== prepare: assets from $ASSETS_SRC into .gpu-assets/"
    for rel in mnist models/lenet_mnist_newformat models/open_nsfw_resnet50_1by2 caffe-ref; do
        mkdir -p ".gpu-assets/$(dirname "$rel")"
        rm -rf ".gpu-assets/$rel"
        cp -r "$ASSETS_SRC/$rel" ".gpu-assets/$rel"
    done
    ls .whl
    du -sh .whl .gpu-assets
    echo "carry: .whl .gpu-assets  (the working tree that travels must stay under 64 MiB)"
    exit 0
fi

# ------------------------------------------------------------------------------------------ the checks
OUT_DIR="${1:-./gpu-results}"
WRITE=(--no-write)
[[ "${2:-}" == "--write-docs" || "${1:-}" == "--write-docs" ]] && WRITE=()
[[ "$OUT_DIR" == "--write-docs" ]] && OUT_DIR=./gpu-results
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
export PYTHONUNBUFFERED=1
if [[ -z "${CAFFE_TEST_ASSETS:-}" && -d "$ROOT/.gpu-assets" ]]; then
    export CAFFE_TEST_ASSETS="$ROOT/.gpu-assets"
fi
if compgen -G ".whl/*.whl" >/dev/null; then
    python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu-site .whl/*.whl
    export PYTHONPATH="/tmp/gpu-site${PYTHONPATH:+:$PYTHONPATH}"
fi

START=$SECONDS
declare -a RESULTS=()

header() {
    printf '\n==================== %s  (t=%ds)\n' "$1" $((SECONDS - START))
}

# step NAME LOG SECONDS CMD...: run CMD under `timeout`, append its output to LOG, record ok/FAILED.
step() {
    local name="$1" log="$2" limit="$3"
    shift 3
    header "$name"
    printf '\n==================== %s\n$ %s\n' "$name" "$*" >>"$log"
    local t0=$SECONDS rc=0
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$log" || rc=$?
    local verdict="ok"
    ((rc == 124 || rc == 137)) && verdict="TIMED OUT after ${limit}s"
    ((rc != 0 && rc != 124 && rc != 137)) && verdict="FAILED (exit $rc)"
    RESULTS+=("$(printf '%-48s %-24s %4ds' "$name" "$verdict" $((SECONDS - t0)))")
}

header "0. environment"
{
    echo "date: $(date -u +%FT%TZ)  host: $(hostname)  repo: $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo "CAFFE_TEST_ASSETS=${CAFFE_TEST_ASSETS:-<default>}  PYTHONPATH=${PYTHONPATH:-}"
    timeout 120 python -c 'import torch; print(torch.__version__, torch.cuda.is_available())'
    timeout 120 python -c 'import torch, google.protobuf as pb, lmdb, caffe
print("CUDA", torch.version.cuda, "cuDNN", torch.backends.cudnn.version(), "devices", torch.cuda.device_count(),
      "| cudnn.allow_tf32", torch.backends.cudnn.allow_tf32, "matmul.allow_tf32", torch.backends.cuda.matmul.allow_tf32)
print("neocaffe", caffe.__version__, "protobuf", pb.__version__, "lmdb", lmdb.__version__)'
} 2>&1 | tee "$OUT_DIR/env.txt"
if ! python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "no CUDA device visible to torch: nothing to check here" | tee -a "$OUT_DIR/env.txt"
    exit 1
fi

step "1a. nvidia-smi" "$OUT_DIR/env.txt" 30 nvidia-smi
step "1b. caffe device_query --gpu all" "$OUT_DIR/env.txt" 90 python -m caffe device_query --gpu all

# `-o addopts=`: in this process, without pyproject's xdist workers (which would hide `-s` output, and which the GPU
# image may not have installed)
step "2. pytest tests/test_gpu.py" "$OUT_DIR/tests.log" 300 \
    python -m pytest -o addopts= -q -rA -s -p no:cacheprovider tests/test_gpu.py
step "3. pytest tests/test_distributed.py -k cuda" "$OUT_DIR/tests.log" 200 \
    python -m pytest -o addopts= -q -rA -s -p no:cacheprovider tests/test_distributed.py -k cuda

# 4. GPU rows: ResNet-50 (real weights), AlexNet and GoogLeNet (random), batches 1 and 32; the compiled engines
# are left out (inductor needs about a minute per model and batch size on a GPU: over this script's budget).
step "4a. benchmarks/forward.py --device cuda" "$OUT_DIR/bench.log" 240 \
    python benchmarks/forward.py --device cuda "${WRITE[@]}" --out "$OUT_DIR/forward_gpu.md" \
    --models resnet50 alexnet googlenet --batches 1 32 --rounds 10 --wait-quiet 0 --no-profile \
    --skip-engines "neocaffe compiled" torch.compile
step "4b. benchmarks/train.py --device cuda" "$OUT_DIR/bench.log" 150 \
    python benchmarks/train.py --device cuda "${WRITE[@]}" --out "$OUT_DIR/train_gpu.md" --iters 200 --rounds 5

header "5. summary"
{
    echo "GPU checks, $(date -u +%FT%TZ), $((SECONDS - START)) s in all; results in $OUT_DIR"
    grep -m1 -E '^[0-9]+\.[0-9]+' "$OUT_DIR/env.txt" || true
    printf '%s\n' "${RESULTS[@]}"
    echo
    echo "-- tests (pytest's short summary and the measured agreements):"
    grep -E '^(PASSED|FAILED|ERROR|SKIPPED)|CPU vs GPU|gloo ranks on one GPU|NCCL world of 1|[0-9]+ (passed|failed)' \
        "$OUT_DIR/tests.log" || true
    for md in forward_gpu.md train_gpu.md; do
        echo
        echo "-- $md:"
        if [[ -f "$OUT_DIR/$md" ]]; then grep -E '^\|' "$OUT_DIR/$md" | head -20; else echo "(not written)"; fi
    done
} 2>&1 | tee "$OUT_DIR/summary.txt"
! printf '%s\n' "${RESULTS[@]}" | grep -qE 'FAILED|TIMED OUT'
