"""A project's tasks, kanban style: a column (``status``), a place in it (``position``),
a priority, an assignee.

Positions in every column are dense (0, 1, 2, ...) in the order shown. Every change to a
project's board (create, move, reorder, delete) first takes the board's transaction lock,
so two moves at once are applied one after the other, each on what the other committed;
each then renumbers only the rows whose place changed. ``task.assigned`` is emitted (and
the assignee notified) when a task gets a new assignee, on creation too.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Literal, get_args

from pydantic import BaseModel, Field, StringConstraints
from sqlalchemy import bindparam, delete, func, insert, select, text, update
from sqlalchemy.orm import Session

from bizosctl.errors import InvalidInput, NotFound
from bizosctl.notify.outbox import emit_event
from bizosctl.resources.notifications import notify_member
from bizosctl.security.rbac import allowed, member_permissions
from bizosctl.tenancy.members import get_member
from tenant_schema.models import ProjectMember, Task

Column = Literal["backlog", "todo", "in_progress", "review", "done"]
COLUMNS: tuple[str, ...] = get_args(Column)
#: 0 none, 1 low, 2 medium, 3 high, 4 urgent
MAX_PRIORITY = 4
Title = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=300)]


class TaskCreate(BaseModel):
    title: Title
    description: str | None = Field(default=None, max_length=20000)
    status: Column = "todo"
    priority: int = Field(default=0, ge=0, le=MAX_PRIORITY)
    assignee_id: uuid.UUID | None = None
    due_on: dt.date | None = None
    #: Place in the column (default: the end); past the end means the end.
    position: int | None = Field(default=None, ge=0)


class TaskUpdate(BaseModel):
    """Only the fields sent change; ``assignee_id``, ``description`` and ``due_on`` may be
    null (unassign, clear). ``status`` and/or ``position`` move the task."""

    title: Title | None = None
    description: str | None = Field(default=None, max_length=20000)
    status: Column | None = None
    priority: int | None = Field(default=None, ge=0, le=MAX_PRIORITY)
    assignee_id: uuid.UUID | None = None
    due_on: dt.date | None = None
    position: int | None = Field(default=None, ge=0)


class TaskPublic(BaseModel):
    id: uuid.UUID
    project_id: uuid.UUID
    title: str
    description: str | None
    status: str
    position: int
    priority: int
    assignee_id: uuid.UUID | None
    due_on: dt.date | None
    created_at: dt.datetime
    updated_at: dt.datetime


def _public(t: Task) -> TaskPublic:
    return TaskPublic(
        id=t.id,
        project_id=t.project_id,
        title=t.title,
        description=t.description,
        status=t.status,
        position=t.position,
        priority=t.priority,
        assignee_id=t.assignee_id,
        due_on=t.due_on,
        created_at=t.created_at,
        updated_at=t.updated_at,
    )


def lock_board(s: Session, project_id: uuid.UUID) -> None:
    """Serialise changes to one project's board until the transaction ends."""
    s.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
        {"k": f"tasks:{project_id}"},
    )


def _column(
    s: Session, project_id: uuid.UUID, status: str, *, without: uuid.UUID | None = None
) -> list[tuple[uuid.UUID, int]]:
    stmt = (
        select(Task.id, Task.position)
        .where(Task.project_id == project_id, Task.status == status)
        .order_by(Task.position, Task.created_at, Task.id)
    )
    if without is not None:
        stmt = stmt.where(Task.id != without)
    return [(tid, pos) for tid, pos in s.execute(stmt)]


_SET_POSITION = (
    update(Task.__table__)  # type: ignore[arg-type]
    .where(Task.__table__.c.id == bindparam("row_id"))
    .values(position=bindparam("pos"))
)


def _renumber(s: Session, rows: list[tuple[uuid.UUID, int]]) -> None:
    """Give ``rows`` (in their new order) the positions 0..n-1, writing only changed ones."""
    changed = [{"row_id": tid, "pos": i} for i, (tid, pos) in enumerate(rows) if pos != i]
    if changed:
        s.execute(_SET_POSITION, changed)


def _check_assignee(s: Session, project_id: uuid.UUID, member_id: uuid.UUID) -> None:
    get_member(s, member_id)  # another tenant's member is unknown: 404
    on = s.execute(
        select(ProjectMember.access).where(
            ProjectMember.project_id == project_id, ProjectMember.member_id == member_id
        )
    ).scalar_one_or_none()
    if on is None and not allowed(member_permissions(s, member_id), "project:manage"):
        raise InvalidInput(
            "assignee_id: that member is not on this project (add them with "
            "POST /api/v1/projects/{id}/members first)"
        )


def _assigned(s: Session, task: Task, *, previous: uuid.UUID | None, by: uuid.UUID | None) -> None:
    assert task.assignee_id is not None
    emit_event(
        s,
        "task.assigned",
        {
            "id": str(task.id),
            "project_id": str(task.project_id),
            "assignee_id": str(task.assignee_id),
            "previous_assignee_id": None if previous is None else str(previous),
        },
    )
    if task.assignee_id != by:  # no need to tell someone what they just did
        notify_member(
            s,
            member_id=task.assignee_id,
            kind="task.assigned",
            title=f"Assigned to you: {task.title}",
            body=f"project {task.project_id}, task {task.id}",
        )


def _get(s: Session, project_id: uuid.UUID, task_id: uuid.UUID) -> Task:
    row = s.execute(
        select(Task)
        .where(Task.id == task_id, Task.project_id == project_id)
        .execution_options(populate_existing=True)
    ).scalar_one_or_none()
    if row is None:
        raise NotFound(f"no task {task_id} in project {project_id}")
    return row


def create_task(
    s: Session,
    *,
    tenant_id: uuid.UUID,
    project_id: uuid.UUID,
    data: TaskCreate,
    by: uuid.UUID | None,
) -> TaskPublic:
    """Add a task to a column (the caller checked the project is theirs to change).

    Args:
        by: the member creating it (None: an API key).
    """
    if data.assignee_id is not None:
        _check_assignee(s, project_id, data.assignee_id)
    lock_board(s, project_id)
    column = _column(s, project_id, data.status)
    at = len(column) if data.position is None else min(data.position, len(column))
    task_id = uuid.uuid4()
    s.execute(
        insert(Task).values(
            tenant_id=tenant_id,
            id=task_id,
            project_id=project_id,
            title=data.title,
            description=data.description,
            status=data.status,
            priority=data.priority,
            position=at,
            assignee_id=data.assignee_id,
            due_on=data.due_on,
        )
    )
    _renumber(s, [*column[:at], (task_id, at), *column[at:]])
    task = _get(s, project_id, task_id)
    if task.assignee_id is not None:
        _assigned(s, task, previous=None, by=by)
    return _public(task)


def list_tasks(s: Session, *, project_id: uuid.UUID, status: str | None = None) -> list[TaskPublic]:
    """The board: by column (in :data:`COLUMNS` order), each by position."""
    stmt = select(Task).where(Task.project_id == project_id)
    if status:
        stmt = stmt.where(Task.status == status)
    rows = list(s.execute(stmt).scalars())
    rows.sort(key=lambda t: (COLUMNS.index(t.status), t.position, t.created_at, t.id))
    return [_public(t) for t in rows]


def get_task(s: Session, *, project_id: uuid.UUID, task_id: uuid.UUID) -> TaskPublic:
    return _public(_get(s, project_id, task_id))


def update_task(
    s: Session,
    *,
    project_id: uuid.UUID,
    task_id: uuid.UUID,
    data: TaskUpdate,
    by: uuid.UUID | None,
) -> TaskPublic:
    """Change the fields sent; ``status``/``position`` move it (to the end of the new column
    when only the status is sent), keeping both columns dense."""
    sent = data.model_fields_set
    for name in ("title", "status", "priority", "position"):
        if name in sent and getattr(data, name) is None:
            raise InvalidInput(f"{name}: cannot be null")
    if "assignee_id" in sent and data.assignee_id is not None:
        _check_assignee(s, project_id, data.assignee_id)
    lock_board(s, project_id)  # before reading the task: a concurrent move commits first
    task = _get(s, project_id, task_id)
    previous = task.assignee_id
    values: dict[str, object] = {
        name: getattr(data, name)
        for name in ("title", "description", "priority", "assignee_id", "due_on")
        if name in sent
    }
    if "status" in sent or "position" in sent:
        source = task.status
        target = data.status or source
        column = _column(s, project_id, target, without=task_id)
        if data.position is not None:
            at = min(data.position, len(column))
        else:  # a new column: its end; the same one: where it is
            at = len(column) if target != source else min(task.position, len(column))
        values.update(status=target, position=at)
        s.execute(update(Task).where(Task.id == task_id).values(**values, updated_at=func.now()))
        _renumber(s, [*column[:at], (task_id, at), *column[at:]])
        if target != source:
            _renumber(s, _column(s, project_id, source))
    elif values:
        s.execute(update(Task).where(Task.id == task_id).values(**values, updated_at=func.now()))
    task = _get(s, project_id, task_id)
    if task.assignee_id is not None and task.assignee_id != previous:
        _assigned(s, task, previous=previous, by=by)
    return _public(task)


def delete_task(s: Session, *, project_id: uuid.UUID, task_id: uuid.UUID) -> None:
    """Delete a task; the ones after it in its column move up."""
    lock_board(s, project_id)
    task = _get(s, project_id, task_id)
    s.execute(delete(Task).where(Task.id == task_id))
    _renumber(s, _column(s, project_id, task.status))
