"""ASGI app of the Label Studio ML backend (Starlette).

``create_app(pipeline_factory=..., db_url=...)`` builds one app with an injected pipeline factory: the
pipeline is built once per process in a background thread started at app startup. ``app_from_env()`` builds
the app of a uvicorn worker from the environment (AUTOLABEL_METHOD, AUTOLABEL_BACKBONE,
AUTOLABEL_PIPELINE_FACTORY, AUTOLABEL_DB_URL, BASIC_AUTH_USER/PASS, LABEL_STUDIO_URL, ...).

While the app runs, a job runner thread runs queued ``prelabel`` jobs (``autolabel prelabel --queue``) and
resumes jobs whose worker died (AUTOLABEL_RUN_JOBS=0 turns it off).
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, AsyncIterator, Callable

from anyio import to_thread
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import Route

from autolabel.jobrunner import prelabel_runner
from autolabel.store import Store
from autolabel.store import repository as repo
from backend import handlers
from backend.auth import BasicAuthMiddleware, basic_auth_from_env
from backend.errors import ClientError, client_error_handler, http_error_handler, internal_error_handler
from backend.fetch import ImageFetcher
from backend.model import ModelHolder, PipelineLike
from backend.predictor import MODEL_WAIT_S, Predictor
from backend.state import MODEL_CLASS, BackendState
from backend.webhook_auth import WebhookAuthFixer

log = logging.getLogger("autolabel.backend")

METHOD_ENV = "AUTOLABEL_METHOD"
BACKBONE_ENV = "AUTOLABEL_BACKBONE"
SKIP_MIGRATE_ENV = "AUTOLABEL_SKIP_MIGRATE"
FACTORY_ENV = "AUTOLABEL_PIPELINE_FACTORY"
RUN_JOBS_ENV = "AUTOLABEL_RUN_JOBS"
#: At shutdown, wait this long for a running job to reach its next batch boundary and put itself back in the queue.
RUNNER_STOP_TIMEOUT_S = 10.0

ROUTES = [
    Route("/", handlers.health, methods=["GET"]),
    Route("/health", handlers.health, methods=["GET"]),
    Route("/setup", handlers.setup, methods=["POST"]),
    Route("/predict", handlers.predict, methods=["POST"]),
    Route("/webhook", handlers.webhook, methods=["POST"]),
    Route("/metrics", handlers.metrics, methods=["GET"]),
    Route("/versions", handlers.versions, methods=["GET"]),
    Route("/jobs", handlers.list_jobs, methods=["GET"]),
    Route("/jobs/{job_id}", handlers.get_job, methods=["GET"]),
]


def default_pipeline_factory(method: str | None = None, backbone: str | None = None) -> Callable[[], PipelineLike]:
    """A factory building ``autolabel.pipeline.Pipeline(method, backbone)`` (imported only when called)."""
    def build() -> PipelineLike:
        from autolabel.pipeline import DEFAULT_METHOD, Pipeline

        return Pipeline(method=method or DEFAULT_METHOD, backbone=backbone or "auto")

    return build


def _record_version(store: Store) -> Callable[[PipelineLike], None]:
    def on_loaded(pipeline: PipelineLike) -> None:
        method = getattr(getattr(pipeline, "method", None), "name", None)
        backbone = getattr(getattr(pipeline, "backbone", None), "name", None)
        with store.write() as s:
            repo.ensure_model_version(s, pipeline.model_version, method=method, backbone=backbone)
        try:  # the brush encoder's first import takes ~1-2 s; pay it here, not in the first /predict
            import label_studio_sdk.converter.brush  # noqa: F401
        except ImportError:
            pass

    return on_loaded


def create_app(pipeline_factory: Callable[[], PipelineLike] | None = None, db_url: str | None = None, *,
               store: Store | None = None, fetcher: ImageFetcher | None = None,
               basic_auth: tuple[str, str] | None | bool = True, load_on_startup: bool = True,
               migrate: bool = True, method: str | None = None, backbone: str | None = None,
               model_class: str = MODEL_CLASS, model_wait_s: float = MODEL_WAIT_S,
               run_jobs: bool | None = None) -> Starlette:
    """The backend ASGI app.

    Args:
        pipeline_factory: zero-argument callable building the pipeline (default: ``Pipeline(method, backbone)``).
        db_url: store URL (default: env AUTOLABEL_DB_URL or the user-data SQLite file); ignored if ``store``.
        store, fetcher: ready-made instances to use instead of building them.
        basic_auth: (user, password); True (default) reads BASIC_AUTH_USER/PASS from the environment;
            None or False turns auth off.
        load_on_startup: start loading the pipeline when the app starts (else on first /setup or /predict).
        migrate: bring the database schema up to date first.
        method, backbone: configured names, recorded with projects and used by the default factory.
        model_wait_s: how long /predict waits for a loading model before answering 503.
        run_jobs: run queued prelabel jobs in a background thread while the app runs (this also resumes a job
            whose backend was killed); None (default) reads AUTOLABEL_RUN_JOBS (on unless "0").
    """
    store = store or Store(db_url, migrate=migrate)
    fetcher = fetcher or ImageFetcher()
    factory = pipeline_factory or default_pipeline_factory(method, backbone)
    model = ModelHolder(factory, on_loaded=_record_version(store))
    state = BackendState(store=store, model=model, fetcher=fetcher,
                         predictor=Predictor(store, model, fetcher, model_wait_s=model_wait_s),
                         model_class=model_class, settings={"method": method, "backbone": backbone})

    credentials = basic_auth_from_env() if basic_auth is True else (basic_auth or None)
    if credentials:
        state.webhook_auth = WebhookAuthFixer(*credentials)
    if run_jobs is None:
        run_jobs = os.environ.get(RUN_JOBS_ENV, "1").strip().lower() not in ("0", "false", "no", "off")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if load_on_startup:
            model.start_loading()
        runner = prelabel_runner(store, state.predictor).start() if run_jobs else None
        app.state.job_runner = runner
        try:
            yield
        finally:
            if state.webhook_auth is not None:
                state.webhook_auth.stop()
            if runner is not None:  # a running job stops between batches and is left queued
                await to_thread.run_sync(runner.stop, RUNNER_STOP_TIMEOUT_S)
            fetcher.close()

    middleware = [Middleware(BasicAuthMiddleware, user=credentials[0], password=credentials[1])] if credentials else []
    exception_handlers: dict[Any, Any] = {ClientError: client_error_handler, HTTPException: http_error_handler,
                                          Exception: internal_error_handler}
    app = Starlette(routes=ROUTES, middleware=middleware, exception_handlers=exception_handlers, lifespan=lifespan)
    app.state.backend = state
    return app


def factory_from_string(spec: str) -> Callable[[], PipelineLike]:
    """The callable named by ``"module:attribute"`` (e.g. a custom pipeline factory)."""
    import importlib

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{FACTORY_ENV} must look like 'package.module:function', got {spec!r}")
    factory = getattr(importlib.import_module(module_name), attr, None)
    if not callable(factory):
        raise ValueError(f"{spec!r} is not a callable")
    return factory


def app_from_env() -> Starlette:
    """The app as configured by environment variables (used by ``autolabel serve`` workers).

    AUTOLABEL_METHOD / AUTOLABEL_BACKBONE (and AUTOLABEL_METHOD_PARAMS / AUTOLABEL_REFINE, read by the pipeline)
    choose the default pipeline; AUTOLABEL_PIPELINE_FACTORY ("module:function") replaces it with any zero-argument
    callable returning a pipeline.
    """
    method = os.environ.get(METHOD_ENV) or None
    backbone = os.environ.get(BACKBONE_ENV) or None
    spec = os.environ.get(FACTORY_ENV)
    factory = factory_from_string(spec) if spec else default_pipeline_factory(method, backbone)
    return create_app(factory, method=method, backbone=backbone,
                      migrate=os.environ.get(SKIP_MIGRATE_ENV) != "1")
