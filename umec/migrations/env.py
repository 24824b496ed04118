"""Alembic environment: one schema made of every domain package's tables."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from admission.service.models import admission_metadata
from attest.service.models import AttestBase
from kernel.lease import kernel_metadata
from mec_api.mec011.models import Mec011Base
from mec_api.sensor.models import SensorBase
from mec_api.tokens.models import TokensBase

target_metadata = [kernel_metadata, AttestBase.metadata, admission_metadata, SensorBase.metadata,
                   Mec011Base.metadata, TokensBase.metadata]

engine = context.config.attributes["engine"]
with engine.connect() as connection:
    if connection.dialect.name == "sqlite":
        # Batch migrations copy and drop tables; with foreign keys on, dropping attest_nodes
        # would cascade into attest_nonces. The pragma only takes effect outside a transaction.
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
    if connection.dialect.name == "postgresql":
        # Replicas starting together: serialize migrations on a transaction-scoped advisory lock.
        connection.execute(text("SELECT pg_advisory_xact_lock(7273)"))
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql("PRAGMA foreign_keys=ON")  # pooled: back as umec.db sets it
