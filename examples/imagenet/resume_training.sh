#!/usr/bin/env bash
# Continue a CaffeNet training (train_caffenet.sh) from its snapshot at iteration 10,000: weights,
# momentum history and iteration count come from the .solverstate. To resume from another
# snapshot, call `caffe train --solver=models/bvlc_reference_caffenet/solver.prototxt
# --snapshot=<its .solverstate>` directly. Run from the Caffe root; arguments are passed on.
set -e

SOLVER=models/bvlc_reference_caffenet/solver.prototxt
STATE=models/bvlc_reference_caffenet/caffenet_train_iter_10000.solverstate
if [ ! -f "$SOLVER" ]; then
    echo "Error: run this script from the Caffe root (no $SOLVER in $(pwd))" >&2
    exit 1
fi

caffe train --solver="$SOLVER" --snapshot="$STATE" "$@"
