"""SQL adapter for the admission record: what was admitted, with which digests and signers."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from admission.models import AdmittedPodRow


@dataclass(frozen=True)
class AdmittedImage:
    path: str
    image: str
    digest: str
    signers: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "image": self.image, "digest": self.digest,
                "signers": list(self.signers)}


@dataclass(frozen=True)
class AdmittedPod:
    namespace: str
    name: str
    uid: str
    images: tuple[AdmittedImage, ...]
    verified: bool
    policy_generation: str
    admitted_at: datetime


class SqlAdmissionRecords:
    def __init__(self, sessions: sessionmaker[Session],
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.sessions, self.now = sessions, now

    def record(self, *, namespace: str, name: str, uid: str, images: Sequence[AdmittedImage],
               verified: bool, policy_generation: str) -> None:
        """Insert or replace the record of one pod UID (a re-review replaces the old one)."""
        with self.sessions.begin() as session:
            row = session.scalars(select(AdmittedPodRow).where(AdmittedPodRow.uid == uid)).first()
            if row is None:
                row = AdmittedPodRow(id=str(uuid.uuid4()), uid=uid)
                session.add(row)
            row.namespace, row.name = namespace, name
            row.images = [i.as_dict() for i in images]
            row.verified, row.policy_generation = verified, policy_generation
            row.admitted_at = self.now()

    def lookup(self, uid: str) -> AdmittedPod | None:
        with self.sessions() as session:
            row = session.scalars(select(AdmittedPodRow).where(AdmittedPodRow.uid == uid)).first()
            if row is None:
                return None
            return AdmittedPod(
                namespace=row.namespace, name=row.name, uid=row.uid,
                images=tuple(AdmittedImage(i["path"], i["image"], i["digest"],
                                           tuple(i["signers"])) for i in row.images),
                verified=row.verified, policy_generation=row.policy_generation,
                admitted_at=row.admitted_at)
