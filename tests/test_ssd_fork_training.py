"""The SSD fork's own training files, unchanged: chuanqi305/MobileNet-SSD's VOC train and test nets and solver
(tests/data/forks/SOURCES.md) train and test here. Only what a user edits is changed: the database paths, the
batch sizes and the iteration counts."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from fork_nets import FORKS
from google.protobuf import text_format

import caffe
from caffe.data.annotation import annotated_datum
from caffe.data.db import item_key, open_db
from caffe.proto import caffe_pb2 as pb
from caffe.protoio import read_net_param, read_solver_param

TRAIN = FORKS / "MobileNet-SSD_voc_MobileNetSSD_train.prototxt"
TEST = FORKS / "MobileNet-SSD_voc_MobileNetSSD_test.prototxt"
SOLVER = FORKS / "MobileNet-SSD_voc_solver.prototxt"


def _annotated_lmdb(path: Path, count: int, seed: int) -> None:
    """``count`` JPEG images, each with one or two filled rectangles of VOC classes and their boxes."""
    rng = np.random.default_rng(seed)
    with open_db(path, "lmdb", "new") as db:
        txn = db.transaction()
        for i in range(count):
            h, w = int(rng.integers(120, 200)), int(rng.integers(120, 200))
            image = rng.integers(0, 60, size=(h, w, 3), dtype=np.uint8)
            boxes = []
            for _ in range(int(rng.integers(1, 3))):
                x0, y0 = rng.uniform(0, 0.5, 2)
                x1, y1 = x0 + rng.uniform(0.3, 0.5), y0 + rng.uniform(0.3, 0.5)
                colour = tuple(int(c) for c in rng.integers(100, 255, 3))
                cv2.rectangle(image, (int(x0 * w), int(y0 * h)), (int(x1 * w) - 1, int(y1 * h) - 1), colour, -1)
                boxes.append((int(rng.integers(1, 21)), x0, y0, x1, y1))
            txn.put(item_key(i, f"img{i}.jpg"), annotated_datum(image, boxes, encoding="jpg").SerializeToString())
        txn.commit()


def _user_copy(source: Path, tmp: Path, lmdb: Path, batch: int) -> Path:
    """The fork's net with its AnnotatedData pointed at ``lmdb`` and ``batch`` images, as a user edits it."""
    net = read_net_param(source)
    data = next(layer for layer in net.layer if layer.type == "AnnotatedData")
    data.data_param.source, data.data_param.batch_size = str(lmdb), batch
    out = tmp / source.name
    out.write_text(text_format.MessageToString(net))
    return out


def solve_two_iterations(
    solver: pb.SolverParameter, nets: tuple[Path, Path], tmp: Path, caplog: pytest.LogCaptureFixture
) -> tuple[caffe.Solver, list[str]]:
    """A fork's solver and its (train, test) nets as a user edits them for a short run - two iterations of batch 2
    from small LMDBs of boxes, one test pass at the end, on the CPU, seeded, no snapshots - solved; with the log."""
    _annotated_lmdb(tmp / "trainval_lmdb", 4, seed=0)
    _annotated_lmdb(tmp / "test_lmdb", 2, seed=1)
    solver.train_net = str(_user_copy(nets[0], tmp, tmp / "trainval_lmdb", 2))
    solver.test_net[0] = str(_user_copy(nets[1], tmp, tmp / "test_lmdb", 2))
    solver.test_iter[0], solver.test_interval, solver.max_iter = 1, 2, 2
    solver.solver_mode, solver.snapshot, solver.snapshot_after_train = pb.SolverParameter.CPU, 0, False
    solver.random_seed = 1
    path = tmp / "solver.prototxt"
    path.write_text(text_format.MessageToString(solver))
    s = caffe.get_solver(str(path))
    with caplog.at_level(logging.INFO, logger="caffe"):
        s.solve()
    return s, [r.getMessage() for r in caplog.records]


def test_mobilenet_ssd_trains_and_reports_map_with_its_own_files(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    solver = read_solver_param(SOLVER)  # RMSProp, multistep, eval_type "detection", ap_version "11point"
    assert (solver.type, solver.eval_type, solver.ap_version) == ("RMSProp", "detection", "11point")
    s, lines = solve_two_iterations(solver, (TRAIN, TEST), tmp_path, caplog)
    losses = [float(line.rsplit("= ", 1)[1]) for line in lines if line.startswith("Iteration ") and "loss = " in line]
    assert losses and all(math.isfinite(v) and v > 0 for v in losses)
    evaluation = [line for line in lines if "Test net output #0: detection_eval = " in line]
    assert len(evaluation) == 1  # the final test (test_initialization: false)
    assert 0.0 <= float(evaluation[0].rsplit("= ", 1)[1]) <= 1.0
    label = s.net.blobs["label"].data
    assert label.shape[:2] == (1, 1) and label.shape[3] == 8 and set(label[0, 0, :, 0]) <= {0.0, 1.0}
