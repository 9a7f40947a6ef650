"""webhook_deliveries table; jobs.webhook_url and jobs.key_id, batches.key_id

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(32)),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("asset_id", sa.String(32)),
        sa.Column("batch_id", sa.String(32)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.JSON(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_webhook_deliveries_tenant_id", "webhook_deliveries", ["tenant_id"])
    op.create_index("ix_webhook_deliveries_status", "webhook_deliveries", ["status"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("webhook_url", sa.Text()))
        batch.add_column(sa.Column("key_id", sa.String(32)))
    with op.batch_alter_table("batches") as batch:
        batch.add_column(sa.Column("key_id", sa.String(32)))


def downgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        batch.drop_column("key_id")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("key_id")
        batch.drop_column("webhook_url")
    op.drop_index("ix_webhook_deliveries_status", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_tenant_id", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
