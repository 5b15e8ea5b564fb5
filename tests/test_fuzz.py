"""scripts/fuzz.py: a short run of every target ends in caffe errors only, inputs are reproducible, and the
harness itself sees a planted non-caffe exception, hang and crash (so it cannot silently pass)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import fuzz  # noqa: E402

#: Inputs per target in the suite's quick run (the slow targets build nets or go through a web app).
QUICK = {
    "net": 40,
    "caffemodel": 30,
    "solverstate": 15,
    "studio_pretrained": 15,
    "studio_dataset": 15,
    "studio_classify_one": 20,
    "serve_predict": 30,
}


@pytest.mark.parametrize("name", fuzz._public())
def test_target_ends_in_caffe_errors_only(name: str):
    report = fuzz.run_inprocess([name], QUICK.get(name, 200), shrink_s=0.2)
    counts = report.counts[name]
    assert sum(counts.values()) == QUICK.get(name, 200)
    found = "\n".join(f"{f.key}: {f.error[:200]}\n{f.trace[-1500:]}" for f in report.failures.values())
    assert counts["non-caffe"] == 0, found
    assert counts["caffe error"] > 0  # the mutations reach the parser's refusals


def test_inputs_are_a_function_of_seed_target_and_index():
    seeds = [fuzz.Seed("a", bytes(range(256)) * 4, "bytes"), fuzz.Seed("b", b'layer { name: "x" }', "text")]
    first = [fuzz.make_input(7, "t", i, seeds)[0] for i in range(50)]
    assert first == [fuzz.make_input(7, "t", i, seeds)[0] for i in range(50)]
    assert len(set(first)) > 40
    assert first != [fuzz.make_input(8, "t", i, seeds)[0] for i in range(50)]


def test_protobuf_fields_are_found_and_edited():
    from caffe.proto import caffe_pb2 as pb

    datum = pb.Datum(channels=3, height=2, width=2, data=bytes(12), label=1)
    seed = fuzz.Seed("d", datum.SerializeToString(), "proto")
    assert {f[3] for f in seed.fields()} == {0, 2}
    import random

    values = set()
    for i in range(40):
        out = fuzz.m_varint(bytearray(seed.data), random.Random(i), seed)
        try:
            d = pb.Datum.FromString(bytes(out))
        except Exception:  # a varint of 10 bytes may make the message unparsable: that is the point
            continue
        values |= {d.channels, d.height, d.width, d.label}
    assert {0, 2**31 - 1} <= values or 0 in values


def test_harness_records_planted_error_hang_and_crash(tmp_path: Path):
    names = ["planted_error", "planted_hang", "planted_crash"]
    harness = fuzz.Harness(names, jobs=1, run_seed=0, hang_s=1.5, max_memory_mb=0, out=tmp_path, progress=False)
    report = harness.run(45, None)
    assert report.total() == 45
    assert report.counts["planted_error"]["non-caffe"] >= 1
    assert report.counts["planted_hang"]["hang"] >= 1
    assert report.counts["planted_crash"]["crash"] >= 1
    kinds = {f.outcome for f in report.failures.values()}
    assert kinds == {"non-caffe", "hang", "crash"}
    fuzz.save_findings(report, tmp_path)
    for f in report.failures.values():
        if f.outcome in ("hang", "crash"):  # the saved input is the one that hung or crashed, made again
            seeds, _ = fuzz.TARGETS[f.target].setup(tmp_path)
            assert f.data == fuzz.make_input(0, f.target, f.index, seeds)[0]
    assert len(list((tmp_path / "findings").glob("*.bin"))) == 3
    table = report.table()
    assert "| planted_hang | 15 |" in table and "**45**" in table


@pytest.mark.parametrize("name", sorted(fuzz.FORK_TRAINING_NETS))
def test_every_fork_training_seed_runs_as_written(name: str, tmp_path: Path):
    """A seed that does not parse would leave its layer unfuzzed (only its mutants, which fail earlier)."""
    seeds, run = fuzz.TARGETS["fork_training_layers"].setup(tmp_path)
    seed = next(s for s in seeds if s.name == name)
    run(seed.data, seed)
