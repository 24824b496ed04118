"""The admission record survives in SQL and is replaced, not duplicated, on re-review."""

from __future__ import annotations

from pathlib import Path

from admission.records import AdmittedImage, SqlAdmissionRecords
from umec.db import open_database


def test_record_and_lookup(tmp_path: Path) -> None:
    _, sessions = open_database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    records = SqlAdmissionRecords(sessions)
    image = AdmittedImage("spec.containers[0]", "reg/app:1", "sha256:" + "a" * 64, ("kid1",))
    records.record(namespace="tenant-a", name="app", uid="u-1", images=[image], verified=True,
                   policy_generation="g1")
    got = records.lookup("u-1")
    assert got is not None and got.images == (image,) and got.verified
    records.record(namespace="tenant-a", name="app", uid="u-1", images=[], verified=False,
                   policy_generation="g2")
    again = records.lookup("u-1")
    assert again is not None and again.images == () and not again.verified
    assert records.lookup("u-2") is None
