"""Model archives under hostile input (caffe.deploy): decompression bombs, members whose headers lie, too
many members and corrupt archives end in a ModelFilesError naming the archive, with nothing left in the
cache and no more than the cap written or held in memory; a valid DIGITS archive still unpacks."""

from __future__ import annotations

import bz2
import io
import json
import struct
import tarfile
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import pytest
from conftest import asset

from caffe import deploy
from caffe.deploy import archive as deploy_archive

LENET = "models/lenet_mnist_newformat"
MiB = 1 << 20
BOMB_MB = 600  # what the 0.6 MB bombs unpack to


def _zeros_deflate(n_mib: int) -> tuple[bytes, int]:
    """Raw deflate data of ``n_mib`` MiB of zeros, and its CRC-32 (built from one repeated fully-flushed block,
    so a 600 MB bomb costs milliseconds)."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(bytes(MiB)) + c.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(n_mib):
        crc = zlib.crc32(bytes(MiB), crc)
    return block * n_mib + c.flush(), crc


def _raw_zip(members: list[tuple[str, bytes, int, int, int]]) -> bytes:
    """A zip of (name, stored data, method, CRC-32, declared size) members, sizes as declared (may lie)."""
    out, central = io.BytesIO(), io.BytesIO()
    for name, data, method, crc, size in members:
        offset, raw = out.tell(), name.encode()
        out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc, len(data), size, len(raw), 0))
        out.write(raw + data)
        central.write(
            struct.pack(
                "<IHHHHHHIIIHHHHHII",
                0x02014B50,
                0x0314,
                20,
                0,
                method,
                0,
                0x21,
                crc,
                len(data),
                size,
                len(raw),
                0,
                0,
                0,
                0,
                0o100644 << 16,
                offset,
            )
            + raw
        )
    cd = central.getvalue()
    eocd = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(cd), out.tell(), 0)
    return out.getvalue() + cd + eocd


def _targz_bomb(n_mib: int) -> bytes:
    """A .tar.gz of one member of ``n_mib`` MiB of zeros (the gzip stream assembled from repeated blocks)."""
    header = tarfile.TarInfo("snapshot_iter_1.caffemodel")
    header.size = n_mib * MiB
    head = header.tobuf(format=tarfile.GNU_FORMAT)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = c.compress(head) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(bytes(MiB)) + c.flush(zlib.Z_FULL_FLUSH)
    tail = c.compress(bytes(1024)) + c.flush()  # the end-of-archive blocks
    crc = zlib.crc32(head)
    for _ in range(n_mib):
        crc = zlib.crc32(bytes(MiB), crc)
    crc = zlib.crc32(bytes(1024), crc)
    size = len(head) + n_mib * MiB + 1024
    gz_header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    return gz_header + first + block * n_mib + tail + struct.pack("<II", crc, size & 0xFFFFFFFF)


def _cache_files(cache: Path) -> list[Path]:
    return [p for p in cache.rglob("*") if p.is_file()] if cache.exists() else []


def test_zip_bomb_is_refused_before_writing(tmp_path: Path):
    data, crc = _zeros_deflate(BOMB_MB)
    bomb = tmp_path / "bomb.zip"
    bomb.write_bytes(
        _raw_zip([("deploy.prototxt", b"", 0, 0, 0), ("snapshot_iter_1.caffemodel", data, 8, crc, BOMB_MB * MiB)])
    )
    assert bomb.stat().st_size < MiB
    with zipfile.ZipFile(bomb) as z:  # a real, valid bomb: 600 MB of zeros
        assert z.getinfo("snapshot_iter_1.caffemodel").file_size == BOMB_MB * MiB
    with pytest.raises(deploy.ModelFilesError, match=r"bomb\.zip: unpacks to more than the 64\.0 MiB allowed"):
        deploy.find_model(bomb, cache_dir=tmp_path / "cache")
    assert _cache_files(tmp_path / "cache") == []


def test_targz_bomb_is_refused_before_writing(tmp_path: Path):
    bomb = tmp_path / "bomb.tar.gz"
    bomb.write_bytes(_targz_bomb(BOMB_MB))
    assert bomb.stat().st_size < MiB
    with pytest.raises(deploy.ModelFilesError, match=r"bomb\.tar\.gz: unpacks to more than the 64\.0 MiB allowed"):
        deploy.find_model(bomb, cache_dir=tmp_path / "cache")
    assert _cache_files(tmp_path / "cache") == []


def test_member_lying_about_its_size_is_bounded_in_memory(tmp_path: Path):
    # the central directory says 1 KiB; the bzip2 data holds 600 MB, which zipfile would inflate in one call
    data = bz2.compress(bytes(BOMB_MB * MiB), 9)
    liar = tmp_path / "liar.zip"
    liar.write_bytes(_raw_zip([("snapshot_iter_1.caffemodel", data, 12, 0, 1024)]))
    tracemalloc.start()
    try:
        with pytest.raises(deploy.ModelFilesError) as e:
            deploy.find_model(liar, cache_dir=tmp_path / "cache")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 * MiB
    assert "liar.zip: refusing member 'snapshot_iter_1.caffemodel' (compression method 12" in str(e.value)
    assert _cache_files(tmp_path / "cache") == []


def test_deflate_member_lying_about_its_size_writes_no_more_than_declared(tmp_path: Path):
    data, crc = _zeros_deflate(100)
    liar = tmp_path / "liar.zip"
    liar.write_bytes(_raw_zip([("snapshot_iter_1.caffemodel", data, 8, crc, 1024)]))
    with pytest.raises(deploy.ModelFilesError, match=r"liar\.zip: cannot unpack the archive \(Bad CRC-32"):
        deploy.find_model(liar, cache_dir=tmp_path / "cache")
    assert _cache_files(tmp_path / "cache") == []


def test_writing_is_capped_even_when_the_headers_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    weights = asset(f"{LENET}/lenet_iter_10000.caffemodel")
    archive = deploy.package_model(tmp_path / "m.tar.gz", deploy=asset(f"{LENET}/lenet.prototxt"), weights=weights)
    limits = deploy.ArchiveLimits(max_bytes=MiB, max_files=100)
    original = deploy_archive._Tally.add

    def add(self: deploy_archive._Tally, name: str, n: int, declared: bool = True) -> None:
        if not declared:  # as if every header understated its member: only the bytes written count
            original(self, name, n, declared=False)

    monkeypatch.setattr(deploy_archive._Tally, "add", add)
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(deploy.ModelFilesError, match=r"m\.tar\.gz: wrote more than the 1\.0 MiB allowed"):
        deploy_archive._unpack(archive, dest, limits)
    assert sum(p.stat().st_size for p in dest.rglob("*") if p.is_file()) <= MiB


def test_too_many_members_is_refused(tmp_path: Path):
    archive = tmp_path / "many.tar.gz"
    with tarfile.open(archive, "w:gz") as t:
        for i in range(10_001):
            t.addfile(tarfile.TarInfo(f"f{i}.txt"), io.BytesIO(b""))
    with pytest.raises(deploy.ModelFilesError, match=r"many\.tar\.gz: more than 10000 members"):
        deploy.find_model(archive, cache_dir=tmp_path / "cache")
    assert _cache_files(tmp_path / "cache") == []


def _lenet_archive(tmp_path: Path, name: str, info: dict | None = None) -> Path:
    return deploy.package_model(
        tmp_path / name,
        deploy=asset(f"{LENET}/lenet.prototxt"),
        weights=asset(f"{LENET}/lenet_iter_10000.caffemodel"),
        info=info,
    )


def _corrupt_zip_deflate(good: bytes) -> bytes:
    """The zip with bytes inside its first member's deflate data replaced (zlib.error when inflated)."""
    start = 30 + struct.unpack_from("<H", good, 26)[0] + struct.unpack_from("<H", good, 28)[0]
    return good[:start] + b"\xff" * 64 + good[start + 64 :]


def _corrupt_gzip_body(good: bytes) -> bytes:
    middle = len(good) // 2
    return good[:middle] + bytes(b ^ 0x5A for b in good[middle : middle + 256]) + good[middle + 256 :]


@pytest.mark.parametrize(
    "case",
    [
        "zip deflate",
        "zip truncated",
        "tar.gz body",
        "tar.gz truncated",
        "tar.xz garbage",
        "tar.bz2 garbage",
        "zip empty",
    ],
)
def test_corrupt_archive_is_a_caffe_error_naming_it(tmp_path: Path, case: str):
    kind = "zip" if case.startswith("zip") else "tar.gz"
    good = _lenet_archive(tmp_path, f"good.{kind}").read_bytes()
    corrupt = {
        "zip deflate": lambda: _corrupt_zip_deflate(good),
        "zip truncated": lambda: good[: len(good) - 300],
        "tar.gz body": lambda: _corrupt_gzip_body(good),
        "tar.gz truncated": lambda: good[: len(good) // 2],
        "tar.xz garbage": lambda: b"\xfd7zXZ\x00\x00" + bytes(range(256)) * 8,
        "tar.bz2 garbage": lambda: b"BZh91AY&SY" + bytes(range(256)) * 8,
        "zip empty": lambda: b"",
    }[case]()
    suffix = {"tar.xz garbage": "tar.xz", "tar.bz2 garbage": "tar.bz2"}.get(case, kind)
    bad = tmp_path / f"bad.{suffix}"
    bad.write_bytes(corrupt)
    with pytest.raises(deploy.ModelFilesError, match=rf"bad\.{suffix.replace('.', '[.]')}: cannot (read|unpack)") as e:
        deploy.find_model(bad, cache_dir=tmp_path / "cache")
    assert "\n" not in str(e.value)


def test_deeply_nested_info_json_is_a_caffe_error(tmp_path: Path):
    archive = _lenet_archive(tmp_path, "nested.tar.gz")
    with tarfile.open(archive) as t:
        members = {m.name: t.extractfile(m).read() for m in t.getmembers()}
    members["info.json"] = b"[" * 100_000 + b"]" * 100_000
    with tarfile.open(archive, "w:gz") as t:
        for name, data in members.items():
            entry = tarfile.TarInfo(name)
            entry.size = len(data)
            t.addfile(entry, io.BytesIO(data))
    with pytest.raises(deploy.ModelFilesError, match=r"info\.json: JSON nested too deeply"):
        deploy.find_model(archive, cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("name", ["lenet.tar.gz", "lenet.zip", "lenet.tar"])
def test_valid_digits_archive_still_unpacks(tmp_path: Path, name: str):
    archive = _lenet_archive(tmp_path, name)
    files = deploy.find_model(archive, cache_dir=tmp_path / "cache")
    assert files.deploy.read_bytes() == asset(f"{LENET}/lenet.prototxt").read_bytes()
    assert files.weights.read_bytes() == asset(f"{LENET}/lenet_iter_10000.caffemodel").read_bytes()
    assert files.info is not None and files.info["framework"] == "caffe"


def test_nested_archive_stays_a_file(tmp_path: Path):
    inner = _lenet_archive(tmp_path, "inner.tar.gz")
    outer = tmp_path / "outer.tar.gz"
    with tarfile.open(outer, "w:gz") as t:
        t.add(asset(f"{LENET}/lenet.prototxt"), "deploy.prototxt")
        t.add(asset(f"{LENET}/lenet_iter_10000.caffemodel"), "w.caffemodel")
        t.add(inner, "inner.tar.gz")
    files = deploy.find_model(outer, cache_dir=tmp_path / "cache")
    names = sorted(p.name for p in files.folder.iterdir())
    assert names == ["deploy.prototxt", "inner.tar.gz", "w.caffemodel"]
    assert (files.folder / "inner.tar.gz").read_bytes() == inner.read_bytes()


def test_caps_follow_the_archive_size_and_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    assert deploy.archive_limits(1000) == deploy.ArchiveLimits(64 * MiB, 10_000)
    assert deploy.archive_limits(10 * MiB).max_bytes == 200 * MiB
    assert deploy.archive_limits(1 << 40).max_bytes == 4 << 30
    archive = _lenet_archive(tmp_path, "lenet.zip")
    monkeypatch.setenv("CAFFE_ARCHIVE_MAX_MB", "1")
    with pytest.raises(deploy.ModelFilesError, match=r"lenet\.zip: unpacks to more than the 1\.0 MiB allowed"):
        deploy.find_model(archive, cache_dir=tmp_path / "cache")
    monkeypatch.setenv("CAFFE_ARCHIVE_MAX_MB", "2")
    monkeypatch.setenv("CAFFE_ARCHIVE_MAX_FILES", "2")
    with pytest.raises(deploy.ModelFilesError, match="more than 2 members"):
        deploy.find_model(archive, cache_dir=tmp_path / "cache")
    monkeypatch.setenv("CAFFE_ARCHIVE_MAX_FILES", "many")
    with pytest.raises(deploy.ModelFilesError, match="MAX_FILES='many': expected a positive whole"):
        deploy.find_model(archive, cache_dir=tmp_path / "cache")
    assert json.loads(zipfile.ZipFile(archive).read("info.json"))["framework"] == "caffe"
