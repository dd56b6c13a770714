"""procrastinate's tables, types and functions in the catalog: the job queue every
``bizosctl worker`` shares.

The schema is procrastinate's own (``SchemaManager.get_schema()`` of the installed version,
pinned below 4 in pyproject). Applying it twice fails (its CREATE TYPE/TABLE have no IF NOT
EXISTS), so a catalog that already has ``procrastinate_jobs`` is left as it is. A later
procrastinate release that changes the schema needs a revision of its own applying that
release's ``sql/migrations`` files.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-09
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    from procrastinate.schema import SchemaManager

    conn = op.get_bind()
    if conn.exec_driver_sql("SELECT to_regclass('procrastinate_jobs')").scalar() is not None:
        return
    _run_script(SchemaManager.get_schema())


def _run_script(sql: str) -> None:
    """Several statements with '%' inside (RAISE '... %'): sent to the driver without
    parameters (SQLAlchemy would pass an empty set, and psycopg would then read every '%'
    as a placeholder), as one simple query, in the migration's transaction."""
    dbapi = op.get_bind().connection.dbapi_connection
    assert dbapi is not None
    with dbapi.cursor() as cur:
        cur.execute(sql)


#: Every object procrastinate's schema creates is named procrastinate_*: dropping by that
#: prefix removes what this (or any 3.x) version made, triggers and indexes with their tables.
DROP_ALL = """
DO $$
DECLARE r record;
BEGIN
    DROP TABLE IF EXISTS procrastinate_events, procrastinate_periodic_defers,
        procrastinate_jobs, procrastinate_workers CASCADE;
    FOR r IN SELECT p.oid::regprocedure AS f FROM pg_proc AS p
             JOIN pg_namespace AS n ON n.oid = p.pronamespace
             WHERE n.nspname = current_schema() AND p.proname LIKE 'procrastinate\\_%'
    LOOP
        EXECUTE 'DROP FUNCTION ' || r.f || ' CASCADE';
    END LOOP;
    FOR r IN SELECT t.oid::regtype AS ty FROM pg_type AS t
             JOIN pg_namespace AS n ON n.oid = t.typnamespace
             WHERE n.nspname = current_schema() AND t.typname LIKE 'procrastinate\\_%'
               AND t.typtype IN ('e', 'c')
    LOOP
        EXECUTE 'DROP TYPE ' || r.ty || ' CASCADE';
    END LOOP;
END
$$
"""


def downgrade() -> None:
    _run_script(DROP_ALL)
