"""Alembic environment: the URL comes from the caller (`service.store.migrate`)."""

from alembic import context
from sqlalchemy import create_engine, text

from service.rows import Base

# API and workers all migrate at start-up; on PostgreSQL they take turns under this lock
# (two first-time migrations at once would both try to create the same tables).
MIGRATION_LOCK_ID = 0x666C61746C6179  # "flatlay"

config = context.config
url = config.attributes.get("database_url") or config.get_main_option("sqlalchemy.url")

connectable = create_engine(url)
with connectable.connect() as connection:
    postgres = connection.dialect.name == "postgresql"
    if postgres:
        connection.execute(text("SELECT pg_advisory_lock(:id)"), {"id": MIGRATION_LOCK_ID})
        connection.commit()
    try:
        context.configure(
            connection=connection, target_metadata=Base.metadata, render_as_batch=True
        )
        with context.begin_transaction():
            context.run_migrations()
    finally:
        if postgres:
            connection.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": MIGRATION_LOCK_ID})
            connection.commit()
connectable.dispose()
