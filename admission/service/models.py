"""SQL record of what the webhook admitted (the token service relies on it).

One row per admitted pod UID: every container path with the image reference it was admitted
under, the pinned digest and the keys that signed it. ``verified`` is false for images allowed in
``warn`` mode or by a ``noMatch: allow`` rule, so that a consumer can insist on verified images.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    MetaData,
    String,
    Table,
    UniqueConstraint,
)

from kernel.sql_types import UtcDateTime

# Core, not the ORM: the webhook process never imports sqlalchemy.orm (≈6 MiB it would keep
# resident against its 120 MB budget).
admission_metadata = MetaData()

admission_pods = Table(
    "admission_pods", admission_metadata,
    Column("id", String(36), primary_key=True),
    Column("namespace", String(253), nullable=False, index=True),
    Column("name", String(253), nullable=False),
    Column("uid", String(64), nullable=False),
    # [{"path": "spec.containers[0]", "image": "...", "digest": "sha256:…", "signers": [kid…]}]
    Column("images", JSON, nullable=False),
    Column("verified", Boolean, nullable=False),
    Column("policy_generation", String(64), nullable=False),
    Column("admitted_at", UtcDateTime, nullable=False),
    # Set when the pod was deleted (or found gone): the row stays as a tombstone, so a review
    # racing the deletion can never record that UID again; pruned after TOMBSTONE_SECONDS.
    Column("forgotten_at", UtcDateTime, nullable=True, index=True),
    UniqueConstraint("uid", name="uq_admission_pods_uid"),
)

# What the webhook denied (issue 14: the dashboard's Admission page). Bounded: the newest
# ``admission.service.denials.KEEP`` rows are kept, older ones pruned by the writer. Written
# off the answer's path (a queue and one writer thread), so no review waits for it.
admission_denials = Table(
    "admission_denials", admission_metadata,
    Column("id", String(36), primary_key=True),
    Column("namespace", String(253), nullable=False, index=True),
    Column("name", String(253), nullable=False),
    Column("kind", String(64), nullable=False),
    Column("operation", String(16), nullable=False),
    Column("endpoint", String(16), nullable=False),       # "mutate" | "validate"
    Column("uid", String(64), nullable=False),
    # [{"path", "image", "digest", "signers": [kid…], "failed": [{"check", "detail"}]}]
    Column("containers", JSON, nullable=False),
    Column("message", String(2000), nullable=False),       # the answer's message, as sent
    Column("denied_at", UtcDateTime, nullable=False, index=True),
)
