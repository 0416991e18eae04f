"""A background thread that runs queued jobs from the store (``prelabel`` jobs in the backend).

On start it first takes back jobs whose worker died: a 'running' job whose worker is a process on this host
that no longer exists (killed, crashed) or whose heartbeat is older than ``stale_after_s`` goes back to
'queued'. Then it claims queued jobs one at a time (``claim_next_job`` is atomic, so several server workers
can each run a runner without running a job twice) and hands each to the handler registered for its kind.

A handler is ``handler(job_id, stop_event)``; it reports progress and the final status itself (as
:func:`autolabel.prelabel.run_prelabel_job` does). If it raises, the job is marked failed.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Callable

from sqlalchemy import select

from autolabel.store import Store
from autolabel.store import repository as repo
from autolabel.store.models import Job

log = logging.getLogger("autolabel.jobs")

Handler = Callable[[int, threading.Event], object]
#: A 'running' job whose heartbeat is older than this is taken over (its worker is presumed dead).
DEFAULT_STALE_AFTER_S = 300.0


def _pid_alive(pid: int) -> bool:
    """True when process ``pid`` exists on this host and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (OSError, IndexError):
        return True


def worker_is_dead(worker: str | None, host: str | None = None) -> bool:
    """True when ``worker`` ("host:pid") names a process of this host that is gone."""
    if not worker or ":" not in worker:
        return False
    name, _, pid = worker.rpartition(":")
    if name != (host or socket.gethostname()) or not pid.isdigit():
        return False
    return not _pid_alive(int(pid))


def recover_orphaned_jobs(store: Store, kinds: list[str], stale_after_s: float = DEFAULT_STALE_AFTER_S) -> list[int]:
    """Put 'running' jobs of ``kinds`` whose worker is dead (or silent too long) back to 'queued'."""
    recovered: list[int] = []
    with store.write() as s:
        for kind in kinds:
            for job in repo.list_jobs(s, kind=kind, status="running", limit=10_000):
                if worker_is_dead(job.worker):
                    job.status, job.message = "queued", f"requeued: worker {job.worker} is gone"
                    job.worker = None
                    recovered.append(job.id)
            recovered.extend(repo.requeue_stale_jobs(s, stale_after_s, kind=kind))
    if recovered:
        log.info("requeued jobs of dead workers: %s", recovered)
    return recovered


class JobRunner:
    """Runs queued jobs of the registered kinds in one daemon thread.

    Args:
        store: the store with the ``jobs`` table.
        handlers: job kind → ``handler(job_id, stop_event)``.
        poll_s: seconds between looks for new jobs when idle.
        stale_after_s: heartbeat age after which another worker's running job is taken over.
        recover_every_s: how often to look for jobs of dead workers (also once at start).
    """

    def __init__(self, store: Store, handlers: dict[str, Handler], poll_s: float = 2.0,
                 stale_after_s: float = DEFAULT_STALE_AFTER_S, recover_every_s: float = 30.0) -> None:
        if not handlers:
            raise ValueError("a job runner needs at least one handler")
        self.store = store
        self.handlers = dict(handlers)
        self.poll_s = poll_s
        self.stale_after_s = stale_after_s
        self.recover_every_s = recover_every_s
        self.stop_event = threading.Event()
        self.current_job: int | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "JobRunner":
        if self._thread is None or not self._thread.is_alive():
            self.stop_event.clear()
            self._thread = threading.Thread(target=self._loop, name="autolabel-job-runner", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the running job to stop (it is left queued) and wait for the thread."""
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _queued_kinds(self) -> list[str]:
        """Kinds with a queued job (a read, so idle runners never take SQLite's write lock)."""
        with self.store.read() as s:
            found = s.scalars(select(Job.kind).where(Job.kind.in_(list(self.handlers)), Job.status == "queued")
                              .distinct())
            return [k for k in self.handlers if k in set(found)]

    def run_once(self) -> int | None:
        """Claim and run one queued job; its id, or None when nothing was queued."""
        for kind in self._queued_kinds():
            handler = self.handlers[kind]
            with self.store.write() as s:
                job: Job | None = repo.claim_next_job(s, kind)
                job_id = job.id if job is not None else None
            if job_id is None:
                continue
            self.current_job = job_id
            log.info("running %s job %d", kind, job_id)
            try:
                handler(job_id, self.stop_event)
            except Exception as exc:  # noqa: BLE001 - one bad job must not kill the runner
                log.exception("%s job %d failed", kind, job_id)
                with self.store.write() as s:
                    current = repo.get_job(s, job_id)
                    if current is not None and current.status == "running":
                        repo.fail_job(s, job_id, f"{type(exc).__name__}: {exc}")
            finally:
                self.current_job = None
            return job_id
        return None

    def _loop(self) -> None:
        kinds = list(self.handlers)
        last_recovery = float("-inf")
        while not self.stop_event.is_set():
            try:
                if time.monotonic() - last_recovery >= self.recover_every_s:
                    recover_orphaned_jobs(self.store, kinds, self.stale_after_s)
                    last_recovery = time.monotonic()
                if self.run_once() is not None:
                    continue
            except Exception:  # noqa: BLE001 - e.g. the database is briefly unavailable
                log.exception("job runner loop error")
            self.stop_event.wait(self.poll_s)


def prelabel_runner(store: Store, predictor: object | None = None, **kwargs: float) -> JobRunner:
    """A runner for 'prelabel' jobs; ``predictor`` is the backend's own (sharing its loaded model).

    The shared predictor serves jobs that name no method/backbone/max size, or the ones its model has;
    other jobs build their own model.
    """
    from autolabel.prelabel import JOB_KIND, MODEL_LOAD_TIMEOUT_S, PrelabelParams, run_prelabel_job

    def handle(job_id: int, stop: threading.Event) -> object:
        use = None
        if predictor is not None:
            with store.read() as s:
                job = repo.get_job(s, job_id)
                params = PrelabelParams.from_dict(job.params if job is not None else None)
            if not (params.method or params.backbone or params.max_size):
                use = predictor
            elif _pipeline_matches(predictor.model.get(MODEL_LOAD_TIMEOUT_S), params):  # type: ignore[attr-defined]
                use = predictor
        return run_prelabel_job(job_id, store=store, predictor=use, stop=stop)

    return JobRunner(store, {JOB_KIND: handle}, **kwargs)


def _pipeline_matches(pipeline: object, params: object) -> bool:
    """Whether a loaded pipeline has the method, backbone and max size a PrelabelParams asks for."""
    method = getattr(getattr(pipeline, "method", None), "name", None)
    backbone = getattr(getattr(pipeline, "backbone", None), "name", None)
    return (getattr(params, "method", None) in (None, method)
            and getattr(params, "backbone", None) in (None, "auto", backbone)
            and getattr(params, "max_size", None) in (None, getattr(pipeline, "max_size", None)))
