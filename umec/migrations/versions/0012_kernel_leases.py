"""leases move below the domains: ``attest_leases`` becomes ``leases``

The lease elects the one replica that runs a periodic job. Deadline checks (attest), the
Kubernetes re-sync (attest) and the pod reconcile (admission) all use it, so its table now
belongs to ``kernel.lease`` rather than to attest. Rows keep their meaning; a holder that was
running during the upgrade simply takes its lease again after at most one TTL.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.rename_table('attest_leases', 'leases')


def downgrade() -> None:
    op.rename_table('leases', 'attest_leases')
