"""``keys.load_or_create_secret``: the challenge key's file (issue 15). Created 0600 once,
the same value for concurrent first starts, refused when it is of another length or others
can read it, with typed errors naming the file."""

from __future__ import annotations

import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from keys import KeyFileInsecure, KeyFileMalformed, load_or_create_secret


def test_created_once_private_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "challenge-key"
    first = load_or_create_secret(path)
    assert len(first) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_or_create_secret(path) == first


def test_concurrent_first_starts_agree(tmp_path: Path) -> None:
    path = tmp_path / "challenge-key"
    with ThreadPoolExecutor(8) as pool:
        values = set(pool.map(lambda _: load_or_create_secret(path), range(16)))
    assert len(values) == 1


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_a_file_of_another_length_is_refused(tmp_path: Path, size: int) -> None:
    path = tmp_path / "challenge-key"
    path.write_bytes(os.urandom(size))
    path.chmod(0o600)
    with pytest.raises(KeyFileMalformed) as caught:
        load_or_create_secret(path)
    assert str(path) in caught.value.detail and f"holds {size} bytes" in caught.value.detail
    assert path.read_bytes() != b"" or size == 0  # never replaced


@pytest.mark.skipif(os.geteuid() != 0, reason="owner rules differ for non-root")
def test_a_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "challenge-key"
    path.write_bytes(os.urandom(32))
    path.chmod(0o644)
    with pytest.raises(KeyFileInsecure) as caught:
        load_or_create_secret(path)
    assert "0644" in caught.value.detail
