"""HDF5Data and HDF5Output, on Caffe's own test files (src/caffe/test/test_data/sample_data*.h5).

sample_data.h5: data 10x8x6x5 float32 holding 0..2399 in order, label 10x1 = 1..10, label2 = 2..11;
sample_data_2_gzip.h5: the same with data 2400..4799, gzip-compressed, labels stored as uint8.
sample_data_list.txt names both, relative to Caffe's root (Caffe's tests run from there).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import asset
from google.protobuf import text_format

import caffe
import caffe.layers.hdf5  # registers HDF5Data, HDF5Output
from caffe.proto import caffe_pb2 as pb

TEST_DATA = "src/caffe/test/test_data"
ROW = 8 * 6 * 5  # values per data row


@pytest.fixture
def caffe_root(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run from the reference Caffe tree, as Caffe's tests do (the list's paths are relative to it)."""
    root = asset("caffe-ref")
    monkeypatch.chdir(root)
    return root


def data_net(
    source: str | Path,
    batch_size: int,
    tops: tuple[str, ...] = ("data", "label"),
    shuffle: bool = False,
    extra: str = "",
    phase: int = caffe.TEST,
    dtype: torch.dtype = torch.float32,
) -> caffe.Net:
    net = pb.NetParameter(name="hdf5")
    text_format.Parse(
        f"""layer {{ name: "h5" type: "HDF5Data" {" ".join(f'top: "{t}"' for t in tops)}
        hdf5_data_param {{ source: "{source}" batch_size: {batch_size} shuffle: {str(shuffle).lower()} }} {extra} }}""",
        net,
    )
    return caffe.Net(net, phase, dtype=dtype)


def stream(n: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows start..start+n of the unshuffled stream: file 1's ten rows, then file 2's, then again."""
    i = (np.arange(start, start + n)) % 20
    data = i[:, None] * ROW + np.arange(ROW)  # file 2 continues file 1's values
    return data.reshape(n, 8, 6, 5).astype(np.float32), (i % 10 + 1).reshape(n, 1).astype(np.float32)


# ---------------------------------------------------------------------------- HDF5Data
def test_caffe_test_read(caffe_root: Path):
    """Caffe's TestRead: batch 5 over the two 10-row files, three tops, ten iterations."""
    net = data_net(f"{TEST_DATA}/sample_data_list.txt", 5, ("data", "label", "label2"))
    assert net.blobs["data"].data.shape == (5, 8, 6, 5)
    assert net.blobs["label"].data.shape == (5, 1)
    assert net.blobs["label2"].data.shape == (5, 1)
    for it in range(10):
        net.forward()
        label_offset = 1 + (0 if it % 2 == 0 else 5)
        data_offset = 0 if it % 2 == 0 else 5 * ROW
        file_offset = 0 if it % 4 < 2 else 2400
        np.testing.assert_array_equal(net.blobs["label"].data.ravel(), label_offset + np.arange(5))
        np.testing.assert_array_equal(net.blobs["label2"].data.ravel(), label_offset + 1 + np.arange(5))
        want = file_offset + data_offset + np.arange(5 * ROW)
        np.testing.assert_array_equal(net.blobs["data"].data.ravel(), want)


@pytest.mark.parametrize("batch", [3, 7, 10, 13, 25])
def test_batches_cross_files_and_wrap_around(caffe_root: Path, batch: int):
    net = data_net(f"{TEST_DATA}/sample_data_list.txt", batch)
    assert net.blobs["data"].data.shape == (batch, 8, 6, 5)
    for it in range(4):
        net.forward()
        data, label = stream(batch, it * batch)
        np.testing.assert_array_equal(net.blobs["data"].data, data)
        np.testing.assert_array_equal(net.blobs["label"].data, label)


def test_gzip_file_with_integer_labels_in_float64(tmp_path: Path, caffe_root: Path):
    (tmp_path / "list.txt").write_text(str(caffe_root / TEST_DATA / "sample_data_2_gzip.h5") + "\n")
    with h5py.File(caffe_root / TEST_DATA / "sample_data_2_gzip.h5") as f:
        assert f["label"].dtype == np.uint8 and f["data"].compression == "gzip"
    net = data_net(tmp_path / "list.txt", 4, dtype=torch.float64)
    net.forward()
    assert net.blobs["data"].data.dtype == np.float64 and net.blobs["label"].data.dtype == np.float64
    np.testing.assert_array_equal(net.blobs["data"].data.ravel(), 2400 + np.arange(4 * ROW))
    np.testing.assert_array_equal(net.blobs["label"].data.ravel(), [1, 2, 3, 4])


def test_any_number_of_axes_and_float64_datasets(tmp_path: Path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 2, 3, 4, 5))  # float64, 5 axes
    y = np.arange(6, dtype=np.float64)  # 1 axis
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["x"], f["y"] = x, y
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'a.h5'}\n")
    net = data_net(tmp_path / "list.txt", 4, ("x", "y"), dtype=torch.float64)
    assert net.blobs["x"].data.shape == (4, 2, 3, 4, 5) and net.blobs["y"].data.shape == (4,)
    net.forward()
    np.testing.assert_array_equal(net.blobs["x"].data, x[:4])
    net.forward()  # wraps around the single file
    np.testing.assert_array_equal(net.blobs["x"].data, x[[4, 5, 0, 1]])
    np.testing.assert_array_equal(net.blobs["y"].data, [4, 5, 0, 1])


def test_solver_data_and_big_endian_integers(tmp_path: Path, caffe_root: Path):
    net = data_net(f"{TEST_DATA}/solver_data_list.txt", 6, ("data", "targets"))
    with h5py.File(caffe_root / TEST_DATA / "solver_data.h5") as f:
        data, targets = f["data"][()], f["targets"][()]
    net.forward()
    net.forward()  # rows 6, 7, then 0..3 again
    rows = [6, 7, 0, 1, 2, 3]
    np.testing.assert_array_equal(net.blobs["data"].data, data[rows])
    np.testing.assert_array_equal(net.blobs["targets"].data, targets[rows])
    with h5py.File(tmp_path / "be.h5", "w") as f:
        f.create_dataset("data", data=np.arange(12, dtype=">f4").reshape(6, 2))
        f.create_dataset("label", data=np.arange(6, dtype=">u2"))
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'be.h5'}\n")
    net = data_net(tmp_path / "list.txt", 4)
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data, np.arange(8).reshape(4, 2))
    np.testing.assert_array_equal(net.blobs["label"].data, [0, 1, 2, 3])


def shuffled_epochs(epochs: int, seed: int) -> list[np.ndarray]:
    """Labels as row ids (file * 10 + row) of each epoch of a shuffled batch-5 read."""
    caffe.set_random_seed(seed)
    net = data_net(f"{TEST_DATA}/sample_data_list.txt", 5, shuffle=True)
    out = []
    for _ in range(epochs):
        rows = []
        for _ in range(4):
            net.forward()
            rows.extend(net.blobs["data"].data[:, 0, 0, 0] / ROW)  # the row index in the 20-row stream
        out.append(np.array(rows, dtype=int))
    return out


def test_shuffle_is_repeatable_and_permutes_rows_within_files(caffe_root: Path):
    a, b = shuffled_epochs(3, seed=5), shuffled_epochs(3, seed=5)
    for ea, eb in zip(a, b, strict=True):
        np.testing.assert_array_equal(ea, eb)
    for epoch in a:
        assert sorted(epoch) == list(range(20))
        # one file's rows, all of them, then the other's: files are never interleaved
        assert len({r // 10 for r in epoch[:10]}) == 1 and len({r // 10 for r in epoch[10:]}) == 1
    assert any(not np.array_equal(e, np.arange(20)) for e in a)
    assert not all(np.array_equal(x, y) for x, y in zip(a, shuffled_epochs(3, seed=6), strict=True))
    # data and labels stay paired
    caffe.set_random_seed(5)
    net = data_net(f"{TEST_DATA}/sample_data_list.txt", 5, shuffle=True)
    net.forward()
    rows = (net.blobs["data"].data[:, 0, 0, 0] / ROW).astype(int)
    np.testing.assert_array_equal(net.blobs["label"].data.ravel(), rows % 10 + 1)


def test_relative_paths_fall_back_to_the_list_folder(tmp_path: Path, monkeypatch, caplog):
    listed = tmp_path / "lists"
    listed.mkdir()
    os.symlink(asset(f"caffe-ref/{TEST_DATA}/sample_data.h5"), listed / "one.h5")
    (listed / "list.txt").write_text("one.h5\n\n")
    monkeypatch.chdir(tmp_path)  # one.h5 is not in the current directory
    with caplog.at_level(logging.INFO, logger="caffe"):
        net = data_net(listed / "list.txt", 10)
    assert any("beside the list file" in r.getMessage() for r in caplog.records)
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data, stream(10)[0])


def test_large_batch_memory_is_one_file(caffe_root: Path):
    net = data_net(f"{TEST_DATA}/sample_data_list.txt", 5)
    layer = net.layers[0]
    assert len(layer.arrays) == 2 and layer.arrays[0].shape == (10, 8, 6, 5)


# ---------------------------------------------------------------------------- HDF5Output
def output_net(src: Path, out: Path, batch: int) -> caffe.Net:
    net = pb.NetParameter(name="roundtrip")
    text_format.Parse(
        f"""layer {{ name: "h5" type: "HDF5Data" top: "data" top: "label"
              hdf5_data_param {{ source: "{src}" batch_size: {batch} }} }}
            layer {{ name: "out" type: "HDF5Output" bottom: "data" bottom: "label"
              hdf5_output_param {{ file_name: "{out}" }} }}""",
        net,
    )
    return caffe.Net(net, caffe.TEST)


def test_round_trip_appends_each_batch_atomically(tmp_path: Path, caffe_root: Path):
    out = tmp_path / "out.h5"
    net = output_net(caffe_root / TEST_DATA / "sample_data_list.txt", out, 4)
    with h5py.File(out) as f:  # created (empty) at set-up, as Caffe does
        assert list(f) == []
    for it in range(1, 4):
        net.forward()
        with h5py.File(out) as f:  # complete after every forward
            assert set(f) == {"data", "label"}
            data, label = stream(4 * it)
            assert f["data"].dtype == np.float32 and f["data"].shape == (4 * it, 8, 6, 5)
            assert f["label"].shape == (4 * it, 1, 1, 1)  # Caffe's 4-axis layout
            np.testing.assert_array_equal(f["data"][()], data)
            np.testing.assert_array_equal(f["label"][()].reshape(-1, 1), label)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5"]  # no temporary file left behind
    (tmp_path / "back.txt").write_text(f"{out}\n")
    back = data_net(tmp_path / "back.txt", 12)
    back.forward()
    np.testing.assert_array_equal(back.blobs["data"].data, stream(12)[0])
    np.testing.assert_array_equal(back.blobs["label"].data.reshape(-1, 1), stream(12)[1])


def test_output_of_one_forward_is_caffes_file(tmp_path: Path):
    """Caffe's TestForward: data 5x8x5x5 and a label, written once, read back unchanged."""
    rng = np.random.default_rng(1)
    net = pb.NetParameter()
    text_format.Parse(
        f"""layer {{ name: "in" type: "Input" top: "data" top: "label"
              input_param {{ shape {{ dim: 5 dim: 8 dim: 5 dim: 5 }} shape {{ dim: 5 }} }} }}
            layer {{ name: "out" type: "HDF5Output" bottom: "data" bottom: "label"
              hdf5_output_param {{ file_name: "{tmp_path / "o.h5"}" }} }}""",
        net,
    )
    n = caffe.Net(net, caffe.TEST, dtype=torch.float64)
    d, lab = rng.standard_normal((5, 8, 5, 5)), np.arange(5.0)
    n.forward(data=d, label=lab)
    with h5py.File(tmp_path / "o.h5") as f:
        assert f["data"].dtype == np.float64
        np.testing.assert_array_equal(f["data"][()], d)
        np.testing.assert_array_equal(f["label"][()], lab.reshape(5, 1, 1, 1))


# ---------------------------------------------------------------------------- errors
def write_h5(path: Path, **datasets: np.ndarray) -> Path:
    with h5py.File(path, "w") as f:
        for k, v in datasets.items():
            f[k] = v
    return path


def test_missing_list_file(tmp_path: Path):
    with pytest.raises(caffe.DataError, match=r"cannot read the HDF5 file list .*nope\.txt"):
        data_net(tmp_path / "nope.txt", 2)


def test_missing_h5_file_names_the_list_line(tmp_path: Path):
    write_h5(tmp_path / "a.h5", data=np.zeros((2, 3)), label=np.zeros(2))
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'a.h5'}\n{tmp_path / 'gone.h5'}\n")
    with pytest.raises(caffe.DataError, match=r"list\.txt:2: HDF5 file .*gone\.h5 not found"):
        data_net(tmp_path / "list.txt", 2)


def test_empty_list(tmp_path: Path):
    (tmp_path / "list.txt").write_text("\n")
    with pytest.raises(caffe.DataError, match="lists no HDF5 files"):
        data_net(tmp_path / "list.txt", 2)


def test_dataset_missing_for_a_top(tmp_path: Path):
    write_h5(tmp_path / "a.h5", data=np.zeros((2, 3)), label=np.zeros(2))
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'a.h5'}\n")
    with pytest.raises(caffe.DataError, match=r"a\.h5 has no dataset 'target' .*datasets: data, label"):
        data_net(tmp_path / "list.txt", 2, ("data", "target"))


def test_dataset_missing_in_a_later_file(tmp_path: Path):
    write_h5(tmp_path / "a.h5", data=np.zeros((2, 3)), label=np.zeros(2))
    write_h5(tmp_path / "b.h5", data=np.zeros((2, 3)))
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'a.h5'}\n{tmp_path / 'b.h5'}\n")
    net = data_net(tmp_path / "list.txt", 2)
    net.forward()
    with pytest.raises(caffe.DataError, match=r"b\.h5 has no dataset 'label'"):
        net.forward()


def test_mismatched_first_dimensions(tmp_path: Path):
    write_h5(tmp_path / "a.h5", data=np.zeros((4, 3)), label=np.zeros(5))
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'a.h5'}\n")
    with pytest.raises(caffe.DataError, match=r"a\.h5: the datasets must have the same number of rows.*'data' 4x3.*5"):
        data_net(tmp_path / "list.txt", 2)


def test_row_shape_change_between_files(tmp_path: Path):
    write_h5(tmp_path / "a.h5", data=np.zeros((2, 3)))
    write_h5(tmp_path / "b.h5", data=np.zeros((2, 4)))
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'a.h5'}\n{tmp_path / 'b.h5'}\n")
    net = data_net(tmp_path / "list.txt", 3, ("data",))
    with pytest.raises(caffe.DataError, match=r"b\.h5: dataset 'data' has rows of shape 4, but the earlier files"):
        net.forward()


def test_unreadable_file_and_bad_types(tmp_path: Path):
    (tmp_path / "bad.h5").write_bytes(b"not an hdf5 file at all")
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'bad.h5'}\n")
    with pytest.raises(caffe.DataError, match=r"cannot open HDF5 file .*bad\.h5"):
        data_net(tmp_path / "list.txt", 2)
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f["data"] = np.array([b"a", b"b"])
    (tmp_path / "list.txt").write_text(f"{tmp_path / 's.h5'}\n")
    with pytest.raises(caffe.DataError, match=r"s\.h5: dataset 'data' has type"):
        data_net(tmp_path / "list.txt", 2, ("data",))


def test_bad_parameters(tmp_path: Path):
    write_h5(tmp_path / "a.h5", data=np.zeros((2, 3)))
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'a.h5'}\n")
    with pytest.raises(caffe.LayerError, match="does not transform data"):
        data_net(tmp_path / "list.txt", 2, ("data",), extra="transform_param { scale: 2 }")
    with pytest.raises(caffe.LayerError, match="batch_size must be positive"):
        data_net(tmp_path / "list.txt", 0, ("data",))


def test_output_batch_sizes_must_match(tmp_path: Path):
    net = pb.NetParameter()
    text_format.Parse(
        f"""layer {{ name: "in" type: "Input" top: "a" top: "b"
              input_param {{ shape {{ dim: 2 dim: 3 }} shape {{ dim: 3 }} }} }}
            layer {{ name: "out" type: "HDF5Output" bottom: "a" bottom: "b"
              hdf5_output_param {{ file_name: "{tmp_path / "o.h5"}" }} }}""",
        net,
    )
    with pytest.raises(caffe.ShapeError, match="same batch size"):
        caffe.Net(net, caffe.TEST)
    net.layer[1].hdf5_output_param.file_name = str(tmp_path / "no" / "such" / "dir.h5")
    net.layer[0].input_param.shape[1].dim[0] = 2
    with pytest.raises(caffe.DataError, match="cannot write HDF5 file"):
        caffe.Net(net, caffe.TEST)
