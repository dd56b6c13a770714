"""A little sample data for a tenant: members, roles, projects, tasks, customers, invoices.

Written through :func:`tenant_session` as the application role, so RLS, the write guard and the
audit trigger all see it like any application write. PII (members' e-mail, name, phone) is
encrypted with the keyring; e-mails get a blind index.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

from sqlalchemy import func, insert, select

from bizosctl.catalog.control import Control
from bizosctl.security.fields import blind_index, encrypt, normalize_email
from bizosctl.tenancy.router import tenant_session
from tenant_schema.models import (
    Customer,
    Invoice,
    InvoiceItem,
    Member,
    MemberRole,
    Permission,
    Project,
    ProjectMember,
    Role,
    Task,
    Transaction,
)

PEOPLE = [
    ("Ayu Lestari", "ayu", "+62 811 1000 001"),
    ("Budi Santoso", "budi", "+62 811 1000 002"),
    ("Citra Dewi", "citra", None),
    ("Dimas Pratama", "dimas", "+62 811 1000 004"),
    ("Eka Putri", "eka", None),
]
ROLES = {"admin": ["*"], "finance": ["invoices:read", "invoices:write"], "member": ["tasks:write"]}
CUSTOMERS = [("PT Maju Jaya", "ID"), ("Acme Pte Ltd", "SG"), ("Nordwind GmbH", "DE")]
VAT = Decimal("0.11")


def load_sample_data(ctl: Control, slug: str) -> bool:
    """Load the sample set once. False when the tenant already has members."""
    route = ctl.route(slug)
    tid = route.tenant_id
    ring = ctl.keyring
    domain = f"{slug}.example"
    today = dt.date(2026, 11, 2)

    def enc(value: str, table: str, column: str, row: uuid.UUID) -> str:
        return encrypt(ring, value, tenant_id=tid, table=table, column=column, row=row)

    with tenant_session(ctl, slug, actor="bizosctl:sample") as s:
        if s.execute(select(func.count()).select_from(Member)).scalar_one():
            return False
        member_ids = []
        from bizosctl.privacy.subjects import note_subjects, subject_ref

        note_subjects(  # before the tenant commits (see bizosctl.privacy.subjects)
            ctl,
            [(subject_ref(ring, normalize_email(f"{p[1]}@{domain}")), tid) for p in PEOPLE],
        )
        for name, local, phone in PEOPLE:
            email = f"{local}@{domain}"
            mid = uuid.uuid4()
            member_ids.append(mid)
            s.execute(
                insert(Member).values(
                    tenant_id=tid,
                    id=mid,
                    email_enc=enc(email, "members", "email", mid),
                    email_bidx=blind_index(ring, normalize_email(email)),
                    name_enc=enc(name, "members", "name", mid),
                    phone_enc=enc(phone, "members", "phone", mid) if phone else None,
                )
            )
        role_ids = {}
        for role, perms in ROLES.items():
            rid = role_ids[role] = uuid.uuid4()
            s.execute(insert(Role).values(tenant_id=tid, id=rid, name=role))
            for perm in perms:
                s.execute(insert(Permission).values(tenant_id=tid, role_id=rid, permission=perm))
        for i, mid in enumerate(member_ids):
            role = "admin" if i == 0 else "finance" if i == 1 else "member"
            s.execute(
                insert(MemberRole).values(tenant_id=tid, member_id=mid, role_id=role_ids[role])
            )
        statuses = ["todo", "doing", "review", "done"]
        for p, pname in enumerate(["Website relaunch", "Year-end closing"]):
            pid = uuid.uuid4()
            s.execute(insert(Project).values(tenant_id=tid, id=pid, name=pname))
            for mid in member_ids[p : p + 3]:
                s.execute(
                    insert(ProjectMember).values(tenant_id=tid, project_id=pid, member_id=mid)
                )
            for t in range(4):
                s.execute(
                    insert(Task).values(
                        tenant_id=tid,
                        project_id=pid,
                        title=f"{pname}: step {t + 1}",
                        status=statuses[t],
                        position=t,
                        assignee_id=member_ids[(p + t) % len(member_ids)],
                        due_on=today + dt.timedelta(days=7 * (t + 1)),
                    )
                )
        for c, (cname, country) in enumerate(CUSTOMERS):
            cid = uuid.uuid4()
            s.execute(insert(Customer).values(tenant_id=tid, id=cid, name=cname, country=country))
            for n in range(2 if c < 2 else 1):
                inv_id = uuid.uuid4()
                qty, price = Decimal(2 + n), Decimal(1_500_000 + 250_000 * c)
                subtotal = qty * price
                discount = (
                    (subtotal * Decimal("0.05")).quantize(Decimal("0.01")) if n else Decimal(0)
                )
                tax = ((subtotal - discount) * VAT).quantize(Decimal("0.01"))
                paid = n == 0
                issued = today - dt.timedelta(days=30 - 10 * c)
                s.execute(
                    insert(Invoice).values(
                        tenant_id=tid,
                        id=inv_id,
                        customer_id=cid,
                        number=f"INV-2026-{c + 1:02d}{n + 1:02d}",
                        status="paid" if paid else "sent",
                        subtotal=subtotal,
                        discount=discount,
                        tax=tax,
                        total=subtotal - discount + tax,
                        issued_on=issued,
                        due_on=issued + dt.timedelta(days=30),
                        paid_at=dt.datetime(2026, 11, 1, tzinfo=dt.UTC) if paid else None,
                    )
                )
                s.execute(
                    insert(InvoiceItem).values(
                        tenant_id=tid,
                        invoice_id=inv_id,
                        description="Consulting days",
                        quantity=qty,
                        unit_price=price,
                        amount=subtotal,
                    )
                )
                if paid:
                    s.execute(
                        insert(Transaction).values(
                            tenant_id=tid,
                            invoice_id=inv_id,
                            kind="payment",
                            amount=subtotal - discount + tax,
                            reference=f"bank-{c}{n}",
                        )
                    )
    return True
