"""Alembic migrations of the authz database (run by `Store.migrate`, i.e. `amora-authz migrate`)."""
