"""Rotations of the access-token ring are serialised across threads and processes: none is
lost to a concurrent index write (mec_api.tokens.keyring.rotate_token_key)."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import pytest

from keys import KeyRing
from mec_api.tokens.keyring import MAX_PUBLISHED_KEYS, TooManyKeys, rotate_token_key


def _rotate(directory: str) -> str:
    return rotate_token_key(Path(directory), 900, 300)


def test_concurrent_rotations_all_land(tmp_path: Path) -> None:
    rotate_token_key(tmp_path, 900, 300)            # the ring exists: one old key, one active
    with ProcessPoolExecutor(3) as procs, ThreadPoolExecutor(3) as threads:
        kids = [f.result() for f in [procs.submit(_rotate, str(tmp_path)) for _ in range(3)]
                + [threads.submit(_rotate, str(tmp_path)) for _ in range(3)]]
    ring = KeyRing.load(tmp_path)
    assert len(set(kids)) == 6
    assert set(kids) <= {m.kid for m in ring.members()}
    assert len(ring.members()) == 8 == MAX_PUBLISHED_KEYS
    with pytest.raises(TooManyKeys, match="8 keys are published already"):
        _rotate(str(tmp_path))
