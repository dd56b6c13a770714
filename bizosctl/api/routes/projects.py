"""Projects and their kanban tasks (``projects:read|write``; tasks are under projects).

A member sees the projects they are on, or every one with ``project:manage``; the others
are 404 with their tasks. Task changes need ``task:write`` and editor access on the project.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, status

from bizosctl.api.deps import Caller, Ctx, Needs
from bizosctl.resources import projects as core
from bizosctl.resources import tasks as task_core
from bizosctl.resources.pages import Page
from bizosctl.security.rbac import allowed

router = APIRouter(prefix="/api/v1", tags=["projects"])

Read = Annotated[Ctx, Depends(Needs("project:read", "projects:read"))]
Create = Annotated[Ctx, Depends(Needs("project:create", "projects:write"))]
Manage = Annotated[Ctx, Depends(Needs("project:manage", "projects:write"))]
TaskWrite = Annotated[Ctx, Depends(Needs("task:write", "projects:write"))]
Limit = Annotated[int, Query(ge=1, le=100)]
Cursor = Annotated[str | None, Query(max_length=200)]


def viewer(caller: Caller) -> core.Viewer:
    if caller.kind == "api_key":
        return core.Viewer(member_id=None, sees_all=True)
    return core.Viewer(
        member_id=caller.member_id, sees_all=allowed(caller.permissions, "project:manage")
    )


@router.post("/projects", status_code=status.HTTP_201_CREATED, summary="Create a project")
def create_project(body: core.ProjectCreate, ctx: Create) -> core.ProjectPublic:
    with ctx.session() as s:
        return core.create_project(
            s, tenant_id=ctx.caller.tenant_id, data=body, creator=ctx.caller.member_id
        )


@router.get("/projects", summary="The projects the caller sees, newest first")
def list_projects(
    ctx: Read,
    status: Annotated[core.ProjectStatus | None, Query()] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[core.ProjectPublic]:
    with ctx.session(read_only=True) as s:
        return core.list_projects(
            s, viewer=viewer(ctx.caller), status=status, limit=limit, cursor=cursor
        )


@router.get("/projects/{project_id}", summary="One project")
def get_project(project_id: uuid.UUID, ctx: Read) -> core.ProjectPublic:
    with ctx.session(read_only=True) as s:
        return core.get_project(s, project_id, viewer=viewer(ctx.caller))


@router.patch("/projects/{project_id}", summary="Rename, describe, archive a project")
def update_project(
    project_id: uuid.UUID, body: core.ProjectUpdate, ctx: Manage
) -> core.ProjectPublic:
    with ctx.session() as s:
        return core.update_project(s, project_id=project_id, data=body, viewer=viewer(ctx.caller))


@router.delete(
    "/projects/{project_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a project and its tasks",
)
def delete_project(project_id: uuid.UUID, ctx: Manage) -> None:
    with ctx.session() as s:
        core.delete_project(s, project_id=project_id, viewer=viewer(ctx.caller))


@router.get("/projects/{project_id}/members", summary="Who is on a project")
def list_project_members(project_id: uuid.UUID, ctx: Read) -> list[core.ProjectMemberPublic]:
    with ctx.session(read_only=True) as s:
        return core.list_project_members(s, project_id=project_id, viewer=viewer(ctx.caller))


@router.post(
    "/projects/{project_id}/members",
    status_code=status.HTTP_201_CREATED,
    summary="Put a member on a project (or change their access)",
)
def add_project_member(
    project_id: uuid.UUID, body: core.ProjectMemberAdd, ctx: Manage
) -> core.ProjectMemberPublic:
    with ctx.session() as s:
        return core.add_project_member(
            s,
            tenant_id=ctx.caller.tenant_id,
            project_id=project_id,
            data=body,
            viewer=viewer(ctx.caller),
        )


@router.delete(
    "/projects/{project_id}/members/{member_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Take a member off a project",
)
def remove_project_member(project_id: uuid.UUID, member_id: uuid.UUID, ctx: Manage) -> None:
    with ctx.session() as s:
        core.remove_project_member(
            s, project_id=project_id, member_id=member_id, viewer=viewer(ctx.caller)
        )


@router.post(
    "/projects/{project_id}/tasks", status_code=status.HTTP_201_CREATED, summary="Add a task"
)
def create_task(
    project_id: uuid.UUID, body: task_core.TaskCreate, ctx: TaskWrite
) -> task_core.TaskPublic:
    with ctx.session() as s:
        core.require_editor(s, project_id, viewer(ctx.caller))
        return task_core.create_task(
            s,
            tenant_id=ctx.caller.tenant_id,
            project_id=project_id,
            data=body,
            by=ctx.caller.member_id,
        )


@router.get("/projects/{project_id}/tasks", summary="The board: by column, by position")
def list_tasks(
    project_id: uuid.UUID,
    ctx: Read,
    status: Annotated[task_core.Column | None, Query()] = None,
) -> list[task_core.TaskPublic]:
    with ctx.session(read_only=True) as s:
        core.access_of(s, project_id, viewer(ctx.caller))
        return task_core.list_tasks(s, project_id=project_id, status=status)


@router.get("/projects/{project_id}/tasks/{task_id}", summary="One task")
def get_task(project_id: uuid.UUID, task_id: uuid.UUID, ctx: Read) -> task_core.TaskPublic:
    with ctx.session(read_only=True) as s:
        core.access_of(s, project_id, viewer(ctx.caller))
        return task_core.get_task(s, project_id=project_id, task_id=task_id)


@router.patch(
    "/projects/{project_id}/tasks/{task_id}",
    summary="Change a task; status/position move it between columns or reorder it",
)
def update_task(
    project_id: uuid.UUID, task_id: uuid.UUID, body: task_core.TaskUpdate, ctx: TaskWrite
) -> task_core.TaskPublic:
    with ctx.session() as s:
        core.require_editor(s, project_id, viewer(ctx.caller))
        return task_core.update_task(
            s, project_id=project_id, task_id=task_id, data=body, by=ctx.caller.member_id
        )


@router.delete(
    "/projects/{project_id}/tasks/{task_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a task",
)
def delete_task(project_id: uuid.UUID, task_id: uuid.UUID, ctx: TaskWrite) -> None:
    with ctx.session() as s:
        core.require_editor(s, project_id, viewer(ctx.caller))
        task_core.delete_task(s, project_id=project_id, task_id=task_id)
