"""Initial schema: projects, images, image_sources, tasks, predictions, annotations (+ events), model
versions and jobs.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _times(*names: str, nullable: bool = False) -> list[sa.Column]:
    return [sa.Column(n, sa.DateTime(timezone=True), nullable=nullable) for n in names]


def upgrade() -> None:
    op.create_table(
        "images",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("width", sa.Integer()),
        sa.Column("height", sa.Integer()),
        sa.Column("num_bytes", sa.Integer()),
        *_times("created_at"),
    )
    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(256), nullable=False, unique=True),
        sa.Column("backbone", sa.String(128)),
        sa.Column("method", sa.String(64)),
        sa.Column("detector_checkpoint", sa.String(1024)),
        sa.Column("metrics", sa.JSON()),
        *_times("created_at"),
    )
    op.create_table(
        "projects",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("ls_project", sa.String(64), nullable=False, unique=True),
        sa.Column("ls_project_id", sa.Integer()),
        sa.Column("label_config", sa.Text()),
        sa.Column("method", sa.String(64)),
        sa.Column("backbone", sa.String(128)),
        sa.Column("hostname", sa.String(512)),
        sa.Column("access_token", sa.Text()),
        *_times("created_at", "updated_at"),
    )
    op.create_index("ix_projects_ls_project_id", "projects", ["ls_project_id"])
    op.create_table(
        "image_sources",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("source", sa.String(2048), nullable=False, unique=True),
        sa.Column("image_id", sa.Integer(), sa.ForeignKey("images.id", ondelete="CASCADE"), nullable=False),
        *_times("fetched_at"),
    )
    op.create_index("ix_image_sources_image_id", "image_sources", ["image_id"])
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("project_id", sa.Integer(), sa.ForeignKey("projects.id", ondelete="SET NULL")),
        sa.Column("params", sa.JSON()),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("done", sa.Integer(), nullable=False),
        sa.Column("total", sa.Integer()),
        sa.Column("message", sa.Text()),
        sa.Column("error", sa.Text()),
        sa.Column("result", sa.JSON()),
        sa.Column("worker", sa.String(256)),
        *_times("created_at"),
        *_times("started_at", "heartbeat_at", "finished_at", nullable=True),
    )
    op.create_index("ix_jobs_kind_status", "jobs", ["kind", "status"])
    op.create_index("ix_jobs_project_id", "jobs", ["project_id"])
    op.create_table(
        "tasks",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("project_id", sa.Integer(), sa.ForeignKey("projects.id", ondelete="CASCADE")),
        sa.Column("ls_task_id", sa.Integer()),
        sa.Column("source", sa.String(2048)),
        sa.Column("image_id", sa.Integer(), sa.ForeignKey("images.id", ondelete="SET NULL")),
        *_times("created_at", "updated_at"),
        sa.UniqueConstraint("project_id", "ls_task_id", name="uq_tasks_project_task"),
    )
    op.create_index("ix_tasks_project_id", "tasks", ["project_id"])
    op.create_index("ix_tasks_ls_task_id", "tasks", ["ls_task_id"])
    op.create_index("ix_tasks_image_id", "tasks", ["image_id"])
    op.create_table(
        "annotations",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("ls_annotation_id", sa.Integer(), nullable=False, unique=True),
        sa.Column("project_id", sa.Integer(), sa.ForeignKey("projects.id", ondelete="SET NULL")),
        sa.Column("task_id", sa.Integer(), sa.ForeignKey("tasks.id", ondelete="SET NULL")),
        sa.Column("ls_task_id", sa.Integer()),
        sa.Column("result", sa.JSON()),
        sa.Column("state", sa.String(16), nullable=False),
        *_times("created_at", "updated_at"),
        *_times("deleted_at", nullable=True),
    )
    op.create_index("ix_annotations_project_id", "annotations", ["project_id"])
    op.create_index("ix_annotations_task_id", "annotations", ["task_id"])
    op.create_index("ix_annotations_ls_task_id", "annotations", ["ls_task_id"])
    op.create_table(
        "predictions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("image_id", sa.Integer(), sa.ForeignKey("images.id", ondelete="CASCADE"), nullable=False),
        sa.Column("task_id", sa.Integer(), sa.ForeignKey("tasks.id", ondelete="SET NULL")),
        sa.Column("model_version", sa.String(256), nullable=False),
        sa.Column("method", sa.String(64)),
        sa.Column("regions", sa.JSON(), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("seconds", sa.Float()),
        *_times("created_at"),
        sa.UniqueConstraint("image_id", "model_version", name="uq_predictions_image_version"),
    )
    op.create_index("ix_predictions_model_version", "predictions", ["model_version"])
    op.create_index("ix_predictions_task_id", "predictions", ["task_id"])
    op.create_table(
        "annotation_events",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("annotation_id", sa.Integer(), sa.ForeignKey("annotations.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("result", sa.JSON()),
        sa.Column("payload", sa.JSON()),
        *_times("received_at"),
    )
    op.create_index("ix_annotation_events_annotation_id", "annotation_events", ["annotation_id"])


def downgrade() -> None:
    for table in ("annotation_events", "predictions", "annotations", "tasks", "jobs", "image_sources",
                  "projects", "model_versions", "images"):
        op.drop_table(table)
