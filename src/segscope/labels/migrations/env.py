"""Alembic environment: run by segscope on the connection it opened (``config.attributes["connection"]``)."""

from alembic import context

from segscope.labels.schema import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
