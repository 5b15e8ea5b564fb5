"""caffe_ocr's multi-label Datums (``repeated int32 label = 5``): read from the wire, written by
``convert_imageset --multi_label``, fed by the Data layer as an (N, L, 1, 1) label top."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

import caffe
from caffe.data.datum import array_to_datum, datum_labels, image_to_raw_datum, serialize_datum
from caffe.data.db import item_key, open_db
from caffe.proto import caffe_pb2 as pb
from caffe.tools.cli import main

# channels 1, height 1, width 2, data b"\xaa\xbb", labels 7, -3 (a 10-byte varint), 300, encoded false
THREE_LABELS = (
    b"\x08\x01\x10\x01\x18\x02\x22\x02\xaa\xbb"
    + b"\x28\x07"
    + b"\x28\xfd\xff\xff\xff\xff\xff\xff\xff\xff\x01"
    + b"\x28\xac\x02"
    + b"\x38\x00"
)


def fork_datum_class() -> type:
    """caffe_ocr's Datum message (label repeated), built in a pool of its own: protobuf's reference encoding."""
    f = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="caffe_ocr_datum_test.proto", package="ocrtest", syntax="proto2")
    message = proto.message_type.add(name="Datum")
    for name, number, kind, label in [
        ("channels", 1, f.TYPE_INT32, f.LABEL_OPTIONAL),
        ("height", 2, f.TYPE_INT32, f.LABEL_OPTIONAL),
        ("width", 3, f.TYPE_INT32, f.LABEL_OPTIONAL),
        ("data", 4, f.TYPE_BYTES, f.LABEL_OPTIONAL),
        ("label", 5, f.TYPE_INT32, f.LABEL_REPEATED),
        ("float_data", 6, f.TYPE_FLOAT, f.LABEL_REPEATED),
        ("encoded", 7, f.TYPE_BOOL, f.LABEL_OPTIONAL),
    ]:
        message.field.add(name=name, number=number, type=kind, label=label)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("ocrtest.Datum"))


def data_net(source: Path, batch: int) -> caffe.Net:
    text = f"""layer {{ name: "data" type: "Data" top: "data" top: "label"
                data_param {{ source: "{source}" batch_size: {batch} }} }}"""
    return caffe.Net(text_format.Parse(text, pb.NetParameter()), caffe.TEST)


def write_db(path: Path, payloads: list[bytes]) -> None:
    with open_db(path, "lmdb", "new") as db:
        txn = db.transaction()
        for i, payload in enumerate(payloads):
            txn.put(item_key(i, f"item{i}"), payload)
        txn.commit()


def items(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [rng.integers(0, 256, (3, 4, 5), dtype=np.uint8) for _ in range(n)]


def encoded_datum(item: np.ndarray) -> pb.Datum:
    ok, png = cv2.imencode(".png", item.transpose(1, 2, 0))
    assert ok
    return pb.Datum(data=png.tobytes(), encoded=True)


# ---------------------------------------------------------------------------------------------
# the wire


def test_datum_labels_reads_every_label_of_a_hand_written_wire():
    assert datum_labels(THREE_LABELS) == [7, -3, 300]
    parsed = pb.Datum.FromString(THREE_LABELS)
    assert parsed.label == 300 and datum_labels(parsed) == [300]  # what pb.Datum alone keeps: the last
    assert datum_labels(b"\x08\x01\x2a\x04\x01\x02\x80\x01") == [1, 2, 128]  # packed
    assert datum_labels(pb.Datum(channels=1, label=-9).SerializeToString()) == [-9]
    assert datum_labels(pb.Datum(channels=1).SerializeToString()) == []
    with pytest.raises(caffe.DataError, match="record 7"):
        datum_labels(b"\x28\xff", name="record 7")


def test_serialize_datum_writes_the_forks_bytes():
    fork = fork_datum_class()
    datum = pb.Datum(channels=1, height=2, width=1, data=b"\x01\x02", encoded=False, label=99)
    expected = fork(channels=1, height=2, width=1, data=b"\x01\x02", label=[3, -1, 0, 2**31 - 1], encoded=False)
    payload = serialize_datum(datum, [3, -1, 0, 2**31 - 1])
    assert payload == expected.SerializeToString()
    assert datum_labels(payload) == [3, -1, 0, 2**31 - 1]
    assert list(fork.FromString(THREE_LABELS).label) == [7, -3, 300]
    floats = pb.Datum(channels=2, height=1, width=1, float_data=[0.5, 2.0])
    assert (
        serialize_datum(floats, [4, 5])
        == fork(channels=2, height=1, width=1, float_data=[0.5, 2.0], label=[4, 5]).SerializeToString()
    )
    assert (
        serialize_datum(datum, [6])
        == pb.Datum(channels=1, height=2, width=1, data=b"\x01\x02", encoded=False, label=6).SerializeToString()
    )
    with pytest.raises(caffe.DataError, match="2147483648 does not fit"):
        serialize_datum(datum, [1, 2**31])


# ---------------------------------------------------------------------------------------------
# convert_imageset --multi_label -> Data layer


def write_images(root: Path, names: list[str]) -> list[np.ndarray]:
    """Tiny colour PNGs (6x7) under ``root``; returns them as Caffe reads them, (C, H, W) float32."""
    root.mkdir(exist_ok=True)
    rng = np.random.default_rng(1)
    out = []
    for name in names:
        image = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
        assert cv2.imwrite(str(root / name), image)
        out.append(image.transpose(2, 0, 1).astype(np.float32))
    return out


@pytest.mark.parametrize("flags", [[], ["--encoded"]])
def test_convert_imageset_multi_label_feeds_an_n_l_1_1_label_top(tmp_path: Path, flags: list[str]):
    names = ["a.png", "word 1.png", "c.png"]  # the name ends at the first space after the last '.'
    images = write_images(tmp_path / "img", names)
    labels = [[12, 7, 0, 33], [5, 6, 0, 0], [1, -2, 3, 4]]
    listfile = tmp_path / "list.txt"
    listfile.write_text("".join(f"{n} {' '.join(map(str, lab))}\n" for n, lab in zip(names, labels)))
    db = tmp_path / "db"
    assert main(["convert_imageset", "--multi_label", *flags, f"{tmp_path / 'img'}/", str(listfile), str(db)]) == 0
    with open_db(db, "lmdb", "read") as d:
        stored = [(k, v) for k, v in d.cursor()]
    assert [k for k, _ in stored] == [b"00000000_a.png", b"00000001_word 1.png", b"00000002_c.png"]
    assert [datum_labels(v) for _, v in stored] == labels
    net = data_net(db, batch=2)
    assert net.blobs["label"].shape == (2, 4, 1, 1) and net.blobs["data"].shape == (2, 3, 6, 7)
    seen = []
    for _ in range(3):  # 6 items: wraps around the 3 records
        out = net.forward()
        assert out["label"].shape == (2, 4, 1, 1)
        seen += out["label"].reshape(2, 4).astype(int).tolist()
        for k in range(2):
            np.testing.assert_array_equal(
                out["data"][k], images[labels.index(out["label"][k].ravel().astype(int).tolist())]
            )
    assert seen == labels + labels


def test_a_multi_label_raw_batch_is_still_decoded_whole(tmp_path: Path, item_decodes: list[str]):
    decoded = item_decodes
    data = items(4)
    write_db(tmp_path / "db", [serialize_datum(array_to_datum(a), [i, 10 + i, -i]) for i, a in enumerate(data)])
    net = data_net(tmp_path / "db", batch=4)
    out = net.forward()
    assert len(decoded) == 1  # set-up's first record only
    np.testing.assert_array_equal(out["label"][:, :, 0, 0], [[0, 10, 0], [1, 11, -1], [2, 12, -2], [3, 13, -3]])
    np.testing.assert_array_equal(out["data"][3], data[3].astype(np.float32))
    layer = net.layer_dict["data"]
    layer.fast_forward(1)  # a restart skips whole batches: the labels keep their shape
    assert net.forward()["label"].shape == (4, 3, 1, 1)


@pytest.mark.parametrize("kind", ["raw", "encoded"])
def test_another_label_count_is_an_error_naming_the_record(tmp_path: Path, kind: str):
    data = items(4)
    make = array_to_datum if kind == "raw" else encoded_datum
    counts = [3, 3, 3, 2]
    write_db(tmp_path / "db", [serialize_datum(make(a), list(range(c))) for a, c in zip(data, counts)])
    net = data_net(tmp_path / "db", batch=2)
    np.testing.assert_array_equal(net.forward()["label"][:, :, 0, 0], [[0, 1, 2], [0, 1, 2]])
    with pytest.raises(caffe.DataError, match=r"record '00000003_item3'.*holds 2 labels.*first record holds 3"):
        net.forward()


@pytest.mark.parametrize("kind", ["raw", "encoded"])
def test_several_labels_in_a_single_label_database_is_an_error(tmp_path: Path, kind: str):
    data = items(4)
    make = array_to_datum if kind == "raw" else encoded_datum
    payloads = [serialize_datum(make(a), [i]) for i, a in enumerate(data[:3])]
    write_db(tmp_path / "db", [*payloads, serialize_datum(make(data[3]), [8, 9])])
    net = data_net(tmp_path / "db", batch=2)
    assert net.blobs["label"].shape == (2,)
    np.testing.assert_array_equal(net.forward()["label"], [0, 1])
    with pytest.raises(caffe.DataError, match=r"record '00000003_item3'.*holds 2 labels \(a multi-label Datum"):
        net.forward()


def test_single_label_databases_keep_an_n_label_top(tmp_path: Path):
    data = items(3)
    write_db(
        tmp_path / "db",
        [image_to_raw_datum(a.transpose(1, 2, 0), label=4 + i).SerializeToString() for i, a in enumerate(data)],
    )
    net = data_net(tmp_path / "db", batch=3)
    assert net.blobs["label"].shape == (3,)
    out = net.forward()
    assert out["label"].shape == (3,)
    np.testing.assert_array_equal(out["label"], [4, 5, 6])


# ---------------------------------------------------------------------------------------------
# list files


def test_a_multi_label_list_without_the_flag_hints_at_it(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    write_images(tmp_path / "img", ["a.png", "b.png"])
    listfile = tmp_path / "list.txt"
    listfile.write_text("a.png 3\nb.png 3 4 5\n")
    with caplog.at_level(logging.ERROR, logger="caffe"):
        assert main(["convert_imageset", f"{tmp_path / 'img'}/", str(listfile), str(tmp_path / "db")]) == 1
    assert (
        f"{listfile}:2:" in caplog.text
        and "pass --multi_label" in caplog.text
        and "'b.png' followed by 3 labels" in caplog.text
    )
    assert not (tmp_path / "db").exists()


def test_malformed_multi_label_lines_name_file_and_line(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    write_images(tmp_path / "img", ["a.png"])
    listfile = tmp_path / "list.txt"
    for text, line, message in [
        ("a.png 1 2\na.png 3 x 4\n", 2, "the label 'x' is not an integer"),
        ("a.png\n", 1, "found no label"),
        ("a.png 1 4294967296\n", 1, "does not fit"),
    ]:
        listfile.write_text(text)
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="caffe"):
            assert (
                main(["convert_imageset", "--multi_label", f"{tmp_path / 'img'}/", str(listfile), str(tmp_path / "db")])
                == 1
            )
        assert f"{listfile}:{line}: " in caplog.text and message in caplog.text
