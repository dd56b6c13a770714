"""Projects and who is on them.

Project-level access: a member sees a project (and its tasks) when they are on it
(``project_members``) or hold ``project:manage``; to anyone else it does not exist (404, like
another tenant's). An API key sees every project of its tenant (its scope is the check). On
a project, ``editor`` changes tasks and ``viewer`` only reads them.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, Field, StringConstraints
from sqlalchemy import delete, exists, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session
from sqlalchemy.sql.selectable import Exists

from bizosctl.errors import Forbidden, InvalidInput, NotFound
from bizosctl.resources.notifications import notify_member
from bizosctl.resources.pages import Page, keyset
from bizosctl.tenancy.members import get_member
from tenant_schema.models import Project, ProjectMember

Access = Literal["editor", "viewer"]
ProjectStatus = Literal["active", "archived"]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


@dataclass(frozen=True)
class Viewer:
    """Who asks: a member (``member_id``), or an API key (None). ``sees_all``: an API key, or
    a member holding ``project:manage``."""

    member_id: uuid.UUID | None
    sees_all: bool


class ProjectCreate(BaseModel):
    name: Name
    description: str | None = Field(default=None, max_length=5000)


class ProjectUpdate(BaseModel):
    name: Name | None = None
    description: str | None = Field(default=None, max_length=5000)
    status: ProjectStatus | None = None


class ProjectPublic(BaseModel):
    id: uuid.UUID
    name: str
    description: str | None
    status: str
    created_at: dt.datetime


class ProjectMemberAdd(BaseModel):
    member_id: uuid.UUID
    access: Access = "editor"


class ProjectMemberPublic(BaseModel):
    member_id: uuid.UUID
    access: str


def _public(p: Project) -> ProjectPublic:
    return ProjectPublic(
        id=p.id, name=p.name, description=p.description, status=p.status, created_at=p.created_at
    )


def _visible(viewer: Viewer) -> Exists:
    return exists().where(
        ProjectMember.project_id == Project.id, ProjectMember.member_id == viewer.member_id
    )


def access_of(s: Session, project_id: uuid.UUID, viewer: Viewer) -> str:
    """``manage`` (sees all), ``editor`` or ``viewer``; NotFound when the project is not there
    for this viewer."""
    found = s.execute(select(Project.id).where(Project.id == project_id)).scalar_one_or_none()
    if found is not None and viewer.sees_all:
        return "manage"
    access = None
    if found is not None and viewer.member_id is not None:
        access = s.execute(
            select(ProjectMember.access).where(
                ProjectMember.project_id == project_id,
                ProjectMember.member_id == viewer.member_id,
            )
        ).scalar_one_or_none()
    if access is None:
        raise NotFound(f"no project {project_id}")
    return access


def require_editor(s: Session, project_id: uuid.UUID, viewer: Viewer) -> None:
    if access_of(s, project_id, viewer) == "viewer":
        raise Forbidden("you are a viewer on this project: an editor changes its tasks")


def create_project(
    s: Session, *, tenant_id: uuid.UUID, data: ProjectCreate, creator: uuid.UUID | None
) -> ProjectPublic:
    """A project; the member creating it is its first editor."""
    row = s.execute(
        insert(Project)
        .values(tenant_id=tenant_id, name=data.name, description=data.description)
        .returning(Project)
    ).scalar_one()
    if creator is not None:
        s.execute(
            insert(ProjectMember).values(
                tenant_id=tenant_id, project_id=row.id, member_id=creator, access="editor"
            )
        )
    return _public(row)


def list_projects(
    s: Session,
    *,
    viewer: Viewer,
    status: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> Page[ProjectPublic]:
    """The projects the viewer sees, newest first."""
    stmt = select(Project)
    if not viewer.sees_all:
        stmt = stmt.where(_visible(viewer))
    if status:
        stmt = stmt.where(Project.status == status)
    rows, nxt = keyset(
        s, stmt, at=Project.created_at, row_id=Project.id, limit=limit, cursor=cursor
    )
    return Page(items=[_public(p) for p in rows], next_cursor=nxt)


def get_project(s: Session, project_id: uuid.UUID, *, viewer: Viewer) -> ProjectPublic:
    access_of(s, project_id, viewer)
    row = s.execute(select(Project).where(Project.id == project_id)).scalar_one()
    return _public(row)


def update_project(
    s: Session, *, project_id: uuid.UUID, data: ProjectUpdate, viewer: Viewer
) -> ProjectPublic:
    access_of(s, project_id, viewer)
    values: dict[str, object] = {}
    for name in ("name", "status"):
        if name in data.model_fields_set:
            value = getattr(data, name)
            if value is None:
                raise InvalidInput(f"{name}: cannot be null")
            values[name] = value
    if "description" in data.model_fields_set:
        values["description"] = data.description
    if values:
        s.execute(update(Project).where(Project.id == project_id).values(**values))
    return get_project(s, project_id, viewer=viewer)


def delete_project(s: Session, *, project_id: uuid.UUID, viewer: Viewer) -> None:
    """Delete a project with its tasks."""
    access_of(s, project_id, viewer)
    s.execute(delete(Project).where(Project.id == project_id))


def list_project_members(
    s: Session, *, project_id: uuid.UUID, viewer: Viewer
) -> list[ProjectMemberPublic]:
    access_of(s, project_id, viewer)
    rows = s.execute(
        select(ProjectMember.member_id, ProjectMember.access)
        .where(ProjectMember.project_id == project_id)
        .order_by(ProjectMember.member_id)
    )
    return [ProjectMemberPublic(member_id=m, access=a) for m, a in rows]


def add_project_member(
    s: Session,
    *,
    tenant_id: uuid.UUID,
    project_id: uuid.UUID,
    data: ProjectMemberAdd,
    viewer: Viewer,
) -> ProjectMemberPublic:
    """Put a member on the project (or change their access); they are told."""
    access_of(s, project_id, viewer)
    get_member(s, data.member_id)  # another tenant's member: 404
    before = s.execute(
        select(ProjectMember.access).where(
            ProjectMember.project_id == project_id, ProjectMember.member_id == data.member_id
        )
    ).scalar_one_or_none()
    s.execute(
        insert(ProjectMember)
        .values(
            tenant_id=tenant_id, project_id=project_id, member_id=data.member_id, access=data.access
        )
        .on_conflict_do_update(
            index_elements=["tenant_id", "project_id", "member_id"], set_={"access": data.access}
        )
    )
    if before is None and data.member_id != viewer.member_id:
        name = s.execute(select(Project.name).where(Project.id == project_id)).scalar_one()
        notify_member(
            s,
            member_id=data.member_id,
            kind="project.joined",
            title=f"You were added to the project {name}",
            body=f"access: {data.access}",
        )
    return ProjectMemberPublic(member_id=data.member_id, access=data.access)


def remove_project_member(
    s: Session, *, project_id: uuid.UUID, member_id: uuid.UUID, viewer: Viewer
) -> None:
    access_of(s, project_id, viewer)
    gone = s.execute(
        delete(ProjectMember).where(
            ProjectMember.project_id == project_id, ProjectMember.member_id == member_id
        )
    )
    if not getattr(gone, "rowcount", 0):
        raise NotFound(f"member {member_id} is not on project {project_id}")
