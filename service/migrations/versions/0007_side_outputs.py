"""jobs.side_outputs (name → blob key) and jobs.compliance (the preset check of the result)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-09
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("side_outputs", sa.JSON()))
        batch.add_column(sa.Column("compliance", sa.JSON()))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("compliance")
        batch.drop_column("side_outputs")
