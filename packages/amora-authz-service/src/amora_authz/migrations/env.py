"""Alembic environment: migrations run on the connection the store hands over.

The store runs Alembic inside ``AsyncConnection.run_sync`` and passes the synchronous
connection in ``config.attributes["connection"]`` (Alembic's "sharing a connection"
recipe), so migrations use the same engine, driver and pool as the service.
"""

from __future__ import annotations

from alembic import context

from amora_authz._schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only the store runs these migrations
    msg = "run migrations through amora_authz (amora-authz migrate), which hands over a connection"
    raise RuntimeError(msg)

# render_as_batch: SQLite cannot ALTER most things; batch mode copies the table instead.
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
