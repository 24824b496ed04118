"""pending enrolments apart from activated nodes; one EK, one name

A name is bound to an EK only when ActivateCredential succeeds: outstanding credential challenges
move to ``attest_enrollments`` and ``attest_nodes`` keeps activated nodes only, with a unique EK.
Names that never activated are dropped (they bound nothing; the agent enrols again).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def _refuse_shared_eks() -> None:
    shared = op.get_bind().execute(sa.text(
        "SELECT ek_hash, COUNT(*) FROM attest_nodes WHERE ak_public IS NOT NULL "
        "GROUP BY ek_hash HAVING COUNT(*) > 1")).all()
    if shared:
        names = op.get_bind().execute(sa.text(
            "SELECT name FROM attest_nodes WHERE ek_hash = :h ORDER BY name"),
            {"h": shared[0][0]}).scalars().all()
        raise RuntimeError(
            f"one TPM (EK sha256:{shared[0][0]}) is activated under several names "
            f"({', '.join(names)}): keep one and remove the others with `umec nodes remove "
            f"NAME` on the previous version, then upgrade")


def upgrade() -> None:
    _refuse_shared_eks()
    op.execute("DELETE FROM attest_nonces WHERE node IN "
               "(SELECT name FROM attest_nodes WHERE ak_public IS NULL)")
    op.execute("DELETE FROM attest_nodes WHERE ak_public IS NULL")
    op.execute("UPDATE attest_nodes SET activated_at = created_at WHERE activated_at IS NULL")
    op.create_table(
        'attest_enrollments',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('name', sa.String(length=253), nullable=False),
        sa.Column('node_class', sa.String(length=128), nullable=False),
        sa.Column('ek_public', sa.LargeBinary(), nullable=False),
        sa.Column('ek_hash', sa.String(length=64), nullable=False),
        sa.Column('ek_certificate', sa.LargeBinary(), nullable=True),
        sa.Column('ak_public', sa.LargeBinary(), nullable=False),
        sa.Column('secret_hash', sa.LargeBinary(), nullable=False),
        sa.Column('failed_proofs', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'))
    with op.batch_alter_table('attest_enrollments') as batch:
        batch.create_index('ix_attest_enrollments_name', ['name'], unique=False)
        batch.create_index('ix_attest_enrollments_expires_at', ['expires_at'], unique=False)
    with op.batch_alter_table('attest_nodes') as batch:
        batch.drop_index('ix_attest_nodes_ek_hash')
        batch.create_unique_constraint('uq_attest_nodes_ek_hash', ['ek_hash'])
        batch.alter_column('ak_public', existing_type=sa.LargeBinary(), nullable=False)
        batch.alter_column('activated_at', existing_type=sa.DateTime(timezone=True),
                           nullable=False)
        for column in ('pending_ak_public', 'pending_secret_hash', 'pending_expires_at',
                       'failed_activations'):
            batch.drop_column(column)


def downgrade() -> None:
    with op.batch_alter_table('attest_nodes') as batch:
        batch.add_column(sa.Column('pending_ak_public', sa.LargeBinary(), nullable=True))
        batch.add_column(sa.Column('pending_secret_hash', sa.LargeBinary(), nullable=True))
        batch.add_column(sa.Column('pending_expires_at', sa.DateTime(timezone=True),
                                   nullable=True))
        batch.add_column(sa.Column('failed_activations', sa.Integer(), nullable=False,
                                   server_default='0'))
        batch.alter_column('ak_public', existing_type=sa.LargeBinary(), nullable=True)
        batch.alter_column('activated_at', existing_type=sa.DateTime(timezone=True),
                           nullable=True)
        batch.drop_constraint('uq_attest_nodes_ek_hash', type_='unique')
        batch.create_index('ix_attest_nodes_ek_hash', ['ek_hash'], unique=False)
    op.drop_table('attest_enrollments')
