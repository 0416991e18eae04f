"""SQLAlchemy 2 ORM tables of the autolabel store (projects, images, tasks, predictions, annotations, jobs).

All times are UTC. JSON columns hold plain dicts/lists. The Alembic migrations in
``autolabel/store/migrations/versions`` create exactly these tables; change both together.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    """Declarative base; ``Base.metadata`` is the schema the migrations build."""


class Project(Base):
    """A Label Studio project as seen by /setup or /predict (``ls_project`` is LS's "<id>.<created_ts>")."""

    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ls_project: Mapped[str] = mapped_column(String(64), unique=True)
    ls_project_id: Mapped[int | None] = mapped_column(Integer, index=True)
    label_config: Mapped[str | None] = mapped_column(Text)
    method: Mapped[str | None] = mapped_column(String(64))
    backbone: Mapped[str | None] = mapped_column(String(128))
    hostname: Mapped[str | None] = mapped_column(String(512))
    access_token: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class Image(Base):
    """Distinct image content, identified by the sha256 of its bytes."""

    __tablename__ = "images"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    num_bytes: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ImageSource(Base):
    """Where image bytes were fetched from (absolute URL or file path) → their content, to skip re-downloads."""

    __tablename__ = "image_sources"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source: Mapped[str] = mapped_column(String(2048), unique=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    fetched_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    image: Mapped[Image] = relationship()


class Task(Base):
    """A Label Studio task of a project, with the image source it named and the content it resolved to."""

    __tablename__ = "tasks"
    __table_args__ = (UniqueConstraint("project_id", "ls_task_id", name="uq_tasks_project_task"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    ls_task_id: Mapped[int | None] = mapped_column(Integer, index=True)
    source: Mapped[str | None] = mapped_column(String(2048))
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id", ondelete="SET NULL"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    project: Mapped[Project | None] = relationship()
    image: Mapped[Image | None] = relationship()


class Prediction(Base):
    """Cached detections of one image content by one model version (config-independent, see ``store.codec``)."""

    __tablename__ = "predictions"
    __table_args__ = (UniqueConstraint("image_id", "model_version", name="uq_predictions_image_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    task_id: Mapped[int | None] = mapped_column(ForeignKey("tasks.id", ondelete="SET NULL"), index=True)
    model_version: Mapped[str] = mapped_column(String(256), index=True)
    method: Mapped[str | None] = mapped_column(String(64))
    regions: Mapped[dict[str, Any]] = mapped_column(JSON)
    score: Mapped[float] = mapped_column(Float, default=0.0)
    seconds: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    image: Mapped[Image] = relationship()


class Annotation(Base):
    """Current state of one Label Studio annotation (its full history is in ``annotation_events``)."""

    __tablename__ = "annotations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ls_annotation_id: Mapped[int] = mapped_column(Integer, unique=True)
    project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id", ondelete="SET NULL"), index=True)
    task_id: Mapped[int | None] = mapped_column(ForeignKey("tasks.id", ondelete="SET NULL"), index=True)
    ls_task_id: Mapped[int | None] = mapped_column(Integer, index=True)
    result: Mapped[list[Any] | None] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16))  # created | updated | deleted
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    events: Mapped[list["AnnotationEvent"]] = relationship(back_populates="annotation",
                                                            order_by="AnnotationEvent.id")


class AnnotationEvent(Base):
    """One webhook event about an annotation, kept forever (the annotation's history)."""

    __tablename__ = "annotation_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    annotation_id: Mapped[int] = mapped_column(ForeignKey("annotations.id", ondelete="CASCADE"), index=True)
    action: Mapped[str] = mapped_column(String(32))
    result: Mapped[list[Any] | None] = mapped_column(JSON)
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    annotation: Mapped[Annotation] = relationship(back_populates="events")


class ModelVersion(Base):
    """A model version the backend has served (name is what Label Studio sees as ``model_version``)."""

    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(256), unique=True)
    backbone: Mapped[str | None] = mapped_column(String(128))
    method: Mapped[str | None] = mapped_column(String(64))
    detector_checkpoint: Mapped[str | None] = mapped_column(String(1024))
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Job(Base):
    """A long-running piece of work (prelabel, train, ...) with progress; ``status`` follows JOB_STATUSES."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_kind_status", "kind", "status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id", ondelete="SET NULL"), index=True)
    params: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    done: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int | None] = mapped_column(Integer)
    message: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    worker: Mapped[str | None] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


JOB_STATUSES = ("queued", "running", "done", "failed", "cancelled")
ANNOTATION_STATES = ("created", "updated", "deleted")
