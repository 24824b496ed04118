"""The webhook's denials: ``admission_denials`` (issue 14, the dashboard's Admission page)

Until now a denial was only logged and counted. Each denied review is a row (namespace, pod
name, kind, operation, endpoint, uid, per container: path, image, digest, signers and the
failed checks; the answer's message; the time). Bounded: the webhook's writer keeps the newest
rows only (``admission.service.denials.KEEP``). Starts empty.

Revision ID: 0016
Revises: 0015
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'admission_denials',
        sa.Column('id', sa.String(36), primary_key=True),
        sa.Column('namespace', sa.String(253), nullable=False),
        sa.Column('name', sa.String(253), nullable=False),
        sa.Column('kind', sa.String(64), nullable=False),
        sa.Column('operation', sa.String(16), nullable=False),
        sa.Column('endpoint', sa.String(16), nullable=False),
        sa.Column('uid', sa.String(64), nullable=False),
        sa.Column('containers', sa.JSON(), nullable=False),
        sa.Column('message', sa.String(2000), nullable=False),
        sa.Column('denied_at', sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index('ix_admission_denials_namespace', 'admission_denials', ['namespace'])
    op.create_index('ix_admission_denials_denied_at', 'admission_denials', ['denied_at'])


def downgrade() -> None:
    op.drop_index('ix_admission_denials_denied_at', table_name='admission_denials')
    op.drop_index('ix_admission_denials_namespace', table_name='admission_denials')
    op.drop_table('admission_denials')
