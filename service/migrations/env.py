"""Alembic environment: the URL comes from the caller (`service.store.migrate`)."""

from alembic import context
from sqlalchemy import create_engine

from service.store import Base

config = context.config
url = config.attributes.get("database_url") or config.get_main_option("sqlalchemy.url")

connectable = create_engine(url)
with connectable.connect() as connection:
    context.configure(
        connection=connection, target_metadata=Base.metadata, render_as_batch=True
    )
    with context.begin_transaction():
        context.run_migrations()
connectable.dispose()
