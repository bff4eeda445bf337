"""Content keys of caches: file hashes (memoised by file version), code digest, zip checks."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest

from kappaflow.io_utils import (
    RESULT_CODE,
    CorruptFileError,
    code_digest,
    content_key,
    file_sha256,
    verify_zip,
)


def test_file_sha256_is_chunked_memoised_and_sees_replacements(tmp_path: Path) -> None:
    import hashlib

    f = tmp_path / "w.bin"
    data = os.urandom(3 * 1024 + 17)
    f.write_bytes(data)
    assert file_sha256(f, chunk=1024) == hashlib.sha256(data).hexdigest()
    other = tmp_path / "other.bin"
    other.write_bytes(b"x" * len(data))  # same size
    os.replace(other, f)  # a new file version (inode, mtime): hashed again
    assert file_sha256(f) == hashlib.sha256(b"x" * len(data)).hexdigest()


def test_tracking_reexports_the_one_file_sha256() -> None:
    from kappaflow.tracking.runs import file_sha256 as tracked

    assert tracked is file_sha256


def test_content_key_covers_file_bytes_config_and_code(tmp_path: Path) -> None:
    a, b = tmp_path / "a.pt", tmp_path / "b.parquet"
    a.write_bytes(b"encoder 1")
    b.write_bytes(b"rows")
    key = content_key([a, b], {"lr": 1e-3})
    assert key == content_key([a, b], {"lr": 1e-3})
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "a.pt").write_bytes(b"encoder 1")
    assert content_key([moved / "a.pt", b], {"lr": 1e-3}) == key  # by content, not by path
    assert content_key([a, b], {"lr": 2e-3}) != key
    assert content_key([a, b], {"lr": 1e-3}, code=("graphs",)) != key
    assert content_key([a, tmp_path / "missing"], {"lr": 1e-3}) != key
    a.write_bytes(b"encoder 2")
    os.utime(a, ns=(1, 1))  # other bytes, even with an old mtime
    assert content_key([a, b], {"lr": 1e-3}) != key


def test_code_digest_is_cached_and_covers_the_result_packages() -> None:
    assert code_digest(RESULT_CODE) is code_digest(RESULT_CODE)
    assert code_digest(RESULT_CODE) != code_digest(("graphs",))
    assert len(code_digest(("no_such_package",))) == 64


def test_verify_zip_reports_truncation_and_bad_crc(tmp_path: Path) -> None:
    z = tmp_path / "a.zip"
    with zipfile.ZipFile(z, "w") as archive:  # stored (no compression), like torch.save
        archive.writestr("a/data/0", b"\x01" * 4096)
    verify_zip(z)
    data = z.read_bytes()
    z.write_bytes(data[:-30])
    with pytest.raises(CorruptFileError, match="not a complete zip archive"):
        verify_zip(z)
    i = data.index(b"\x01" * 16) + 100
    z.write_bytes(data[:i] + b"\x02" + data[i + 1 :])
    with pytest.raises(CorruptFileError, match="CRC-32"):
        verify_zip(z)
