"""Database-side security of a tenant target: RLS, the write guard and the audit trigger.

Rendered per target schema, because the SECURITY DEFINER functions pin their search_path to
it (a definer function that follows the caller's search_path can be hijacked).

Revision 0001 executes this SQL, so a new target (built by rendering the whole history) gets
the current definitions at once. Once a release has shipped, change it only together with a new
revision that replaces the functions, policies or triggers in existing targets: 0002 replaces the
functions (``CREATE OR REPLACE``) and the ``tenant_isolation`` policies (:func:`policy_sql`,
drop and create), which is a no-op on a target that 0001 built from this version.
"""

from __future__ import annotations

OWNER_ROLE = "bizos_owner"  # NOLOGIN: owns every tenant table, so FORCE RLS applies to it
APP_GROUP = "bizos_app"  # NOLOGIN: DML on tenant tables; login roles are its members
TENANT_EXPR = "NULLIF(current_setting('bizos.tenant_id', true), '')::uuid"
#: What the policies compare with: the tenant of the context, or NULL when it is suspended. A
#: sub-select, so the planner evaluates the (STABLE) function once per statement, not per row.
POLICY_TENANT = "(SELECT bizos_tenant())"
#: Columns the audit trail never copies: ciphertexts and blind indexes (a retired key would
#: still decrypt them there), password and token hashes. The trail records only that they
#: changed.
SECRET_COLUMN_RE = "_(enc|bidx|hash)$"
#: Tables a ``read_only`` tenant (the dunning soft lock) still writes: its members keep
#: logging in and out (reads keep working, so must sessions).
SESSION_TABLES = ("auth_sessions", "refresh_tokens", "login_throttle", "member_identities")

#: Tables the application may only read: written by triggers or by the control plane.
READ_ONLY_TABLES = ("audit_logs", "tenant_state")
#: Where a committed outbox insert is announced: the payload is the target schema, so the relay
#: listening on a database knows which of its schemas to drain (``bizosctl.notify.relay``).
OUTBOX_CHANNEL = "bizos_outbox"


def _q(ident: str) -> str:
    return '"' + ident.replace('"', '""') + '"'


def functions_sql(schema: str) -> list[str]:
    path = f"{_q(schema)}, pg_catalog, pg_temp"
    return [
        # IMMUTABLE and not SECURITY DEFINER: also used by 0002 to scrub existing audit rows.
        f"""
CREATE OR REPLACE FUNCTION bizos_redact(j jsonb, other jsonb DEFAULT NULL) RETURNS jsonb
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $fn$
  SELECT CASE WHEN j IS NULL OR jsonb_typeof(j) <> 'object' THEN j ELSE
    j || COALESCE((
      SELECT jsonb_object_agg(e.key, CASE
        WHEN e.value = 'null'::jsonb THEN e.value
        WHEN other IS NOT NULL AND (other -> e.key) IS DISTINCT FROM e.value
          THEN '"<changed>"'::jsonb
        ELSE '"<redacted>"'::jsonb END)
      FROM jsonb_each(j) AS e WHERE e.key ~ '{SECRET_COLUMN_RE}'), '{{}}'::jsonb)
  END
$fn$""",
        # SECURITY DEFINER (owner role): reads tenant_state, whose own policy compares with
        # the raw setting (a policy calling this function on tenant_state would recurse).
        f"""
CREATE OR REPLACE FUNCTION bizos_tenant() RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = {path} AS $fn$
  SELECT c.tid FROM (SELECT {TENANT_EXPR} AS tid) AS c
  WHERE NOT EXISTS (
    SELECT 1 FROM tenant_state AS s WHERE s.tenant_id = c.tid AND s.status = 'suspended')
$fn$""",
        f"""
CREATE OR REPLACE FUNCTION bizos_audit() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = {path} AS $fn$
DECLARE
  o jsonb;
  n jsonb;
  k jsonb := '{{}}'::jsonb;
  col text;
BEGIN
  IF TG_OP <> 'INSERT' THEN o := to_jsonb(OLD); END IF;
  IF TG_OP <> 'DELETE' THEN n := to_jsonb(NEW); END IF;
  IF TG_NARGS > 0 THEN
    FOREACH col IN ARRAY TG_ARGV LOOP
      k := k || jsonb_build_object(col, COALESCE(n -> col, o -> col));
    END LOOP;
  END IF;
  INSERT INTO audit_logs (tenant_id, actor, action, table_name, row_key, old, new)
  VALUES (COALESCE(n ->> 'tenant_id', o ->> 'tenant_id')::uuid,
          NULLIF(current_setting('bizos.actor', true), ''),
          lower(TG_OP), TG_TABLE_NAME, k, bizos_redact(o), bizos_redact(n, o));
  RETURN NULL;
END
$fn$""",
        f"""
CREATE OR REPLACE FUNCTION bizos_guard() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = {path} AS $fn$
DECLARE
  tid uuid := {TENANT_EXPR};
  st text;
BEGIN
  -- No tenant context: only the operator gets here (RLS stops the application role).
  IF tid IS NULL THEN RETURN NULL; END IF;
  SELECT status INTO st FROM tenant_state WHERE tenant_id = tid;
  IF st = 'active' THEN RETURN NULL; END IF;
  IF st = 'read_only' AND TG_TABLE_NAME IN ({", ".join(f"'{t}'" for t in SESSION_TABLES)})
    THEN RETURN NULL; END IF;
  IF st = 'moving' THEN
    RAISE EXCEPTION 'tenant is moving: writes pause briefly, retry'
      USING ERRCODE = 'BZ503', HINT = 'retry in a moment';
  END IF;
  RAISE EXCEPTION 'tenant is %: writes are refused', COALESCE(st, 'not provisioned')
    USING ERRCODE = 'BZ423';
END
$fn$""",
    ]


def table_security_sql(table: str) -> list[str]:
    """RLS (enabled and forced), policies, triggers and grants for one tenant table."""
    from tenant_schema.models import metadata  # late: OWNER_ROLE alone must not load the models

    t = _q(table)
    pk = [c.name for c in metadata.tables[table].primary_key.columns if c.name != "tenant_id"]
    key_args = ", ".join(f"'{c}'" for c in pk)
    stmts = [
        f"ALTER TABLE {t} ENABLE ROW LEVEL SECURITY",
        f"ALTER TABLE {t} FORCE ROW LEVEL SECURITY",
    ]
    if table == "audit_logs":
        stmts += [
            *policy_sql(table),
            # Only the trigger function (owned by the owner role) inserts audit rows.
            f"CREATE POLICY audit_writer ON {t} FOR INSERT TO {OWNER_ROLE} WITH CHECK (true)",
            f"GRANT SELECT ON {t} TO {APP_GROUP}",
        ]
        return stmts
    stmts += policy_sql(table)
    if table in READ_ONLY_TABLES:
        stmts.append(f"GRANT SELECT ON {t} TO {APP_GROUP}")
    else:
        stmts += [
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON {t} TO {APP_GROUP}",
            f"CREATE TRIGGER bizos_guard BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON {t} "
            "FOR EACH STATEMENT EXECUTE FUNCTION bizos_guard()",
        ]
    stmts.append(
        f"CREATE TRIGGER bizos_audit AFTER INSERT OR UPDATE OR DELETE ON {t} "
        f"FOR EACH ROW EXECUTE FUNCTION bizos_audit({key_args})"
    )
    return stmts


def policy_sql(table: str) -> list[str]:
    """The ``tenant_isolation`` policy of one table, dropped first (0002 replaces it)."""
    t = _q(table)
    drop = f"DROP POLICY IF EXISTS tenant_isolation ON {t}"
    if table == "audit_logs":
        return [drop, f"CREATE POLICY tenant_isolation ON {t} FOR SELECT USING "
                f"(tenant_id = {POLICY_TENANT})"]  # fmt: skip
    # tenant_state keeps the raw setting: bizos_tenant() reads it (no recursion), and a
    # suspended tenant may still read its own status.
    tenant = TENANT_EXPR if table == "tenant_state" else POLICY_TENANT
    return [
        drop,
        f"CREATE POLICY tenant_isolation ON {t} USING (tenant_id = {tenant}) "
        f"WITH CHECK (tenant_id = {tenant})",
    ]


def outbox_sql(schema: str) -> list[str]:
    """Security of the ``outbox`` table (revision 0003): RLS like every tenant table, the write
    guard, INSERT and SELECT for the application (only the relay, as the operator, deletes),
    no audit trail (an event is a consequence of a change that is audited already), and a
    statement trigger announcing the commit on :data:`OUTBOX_CHANNEL`. NOTIFY is sent at
    commit and folded per transaction and payload: one wake-up however many events."""
    path = f"{_q(schema)}, pg_catalog, pg_temp"
    channel = "'" + OUTBOX_CHANNEL + "'"
    return [
        "ALTER TABLE outbox ENABLE ROW LEVEL SECURITY",
        "ALTER TABLE outbox FORCE ROW LEVEL SECURITY",
        *policy_sql("outbox"),
        f"GRANT SELECT, INSERT ON outbox TO {APP_GROUP}",
        "CREATE TRIGGER bizos_guard BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON outbox "
        "FOR EACH STATEMENT EXECUTE FUNCTION bizos_guard()",
        f"""
CREATE OR REPLACE FUNCTION bizos_outbox_notify() RETURNS trigger
LANGUAGE plpgsql SET search_path = {path} AS $fn$
BEGIN
  PERFORM pg_notify({channel}, TG_TABLE_SCHEMA);
  RETURN NULL;
END
$fn$""",
        "CREATE TRIGGER bizos_outbox_notify AFTER INSERT ON outbox "
        "FOR EACH STATEMENT EXECUTE FUNCTION bizos_outbox_notify()",
    ]


def ai_usage_sql() -> list[str]:
    """Security of the usage ledger and its budget counter (revision 0004): RLS like every
    tenant table and the write guard; the application inserts and settles its own rows
    (SELECT, INSERT, UPDATE) but never deletes them; no audit trail (the ledger is a record
    already, and an audit row per call would double the gate's writes)."""
    stmts: list[str] = []
    for table in ("ai_usage", "ai_spend"):
        stmts += [
            f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY",
            f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY",
            *policy_sql(table),
            f"GRANT SELECT, INSERT, UPDATE ON {table} TO {APP_GROUP}",
            f"CREATE TRIGGER bizos_guard BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION bizos_guard()",
        ]
    return stmts


def scrub_audit_sql() -> list[str]:
    """Replace the ciphertexts and blind indexes in existing audit rows (revision 0002).

    audit_logs has FORCE ROW LEVEL SECURITY and no UPDATE policy, so the owner lifts FORCE
    for this one statement (the transaction is the migration's: no one sees it lifted).
    """
    return [
        "ALTER TABLE audit_logs NO FORCE ROW LEVEL SECURITY",
        "UPDATE audit_logs SET old = bizos_redact(old), new = bizos_redact(new, old) "
        "WHERE old IS DISTINCT FROM bizos_redact(old) "
        "OR new IS DISTINCT FROM bizos_redact(new, old)",
        "ALTER TABLE audit_logs FORCE ROW LEVEL SECURITY",
    ]


def schema_grants_sql(schema: str) -> list[str]:
    return [f"GRANT USAGE ON SCHEMA {_q(schema)} TO {APP_GROUP}"]
