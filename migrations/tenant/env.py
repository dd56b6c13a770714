"""Alembic environment of a tenant target (any server, database and schema).

In-process (``bizosctl.db.migrate``) the connection arrives configured and this file is not
used. From the plain command line:
``alembic -c migrations/tenant/alembic.ini -x url=postgresql://... -x schema=t_acme upgrade head``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from bizosctl.db.migrate import configure_target
from tenant_schema import metadata
from tenant_schema.ddl import OWNER_ROLE

x = context.get_x_argument(as_dictionary=True)
schema = x.get("schema", "shared")
url = x.get("url") or context.config.get_main_option("sqlalchemy.url")
if not url:
    raise SystemExit("pass -x url=postgresql://... (and -x schema=NAME)")
if url.startswith("postgresql://"):
    url = "postgresql+psycopg://" + url.removeprefix("postgresql://")

engine = create_engine(url)
with engine.connect() as conn, conn.begin():
    configure_target(conn, schema=schema, owner_role=OWNER_ROLE)
    context.configure(
        connection=conn,
        target_metadata=metadata,
        version_table_schema=schema,
        transactional_ddl=True,
    )
    context.run_migrations()
engine.dispose()
