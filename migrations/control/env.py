"""Alembic environment of the control-plane catalog (``bizos_control``).

bizosctl runs it in-process (``bizosctl.db.migrate``); from the command line:
``alembic -c migrations/control/alembic.ini -x url=postgresql://.../bizos_control upgrade head``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from bizosctl.catalog.models import metadata

url = context.get_x_argument(as_dictionary=True).get("url")
if not url:
    raise SystemExit("pass -x url=postgresql://.../bizos_control")
if url.startswith("postgresql://"):
    url = "postgresql+psycopg://" + url.removeprefix("postgresql://")

engine = create_engine(url)
with engine.connect() as conn, conn.begin():
    context.configure(connection=conn, target_metadata=metadata, transactional_ddl=True)
    context.run_migrations()
engine.dispose()
