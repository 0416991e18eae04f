"""The per-process model: the pipeline is built once, in a background thread, and shared by all requests.

``ModelHolder.start_loading()`` returns at once, so /health answers while the backbone loads; requests that
need the model wait for it (``get(timeout)``). Inference is serialised with a lock: on CPU one image at a time
is fastest and keeps memory bounded. A failed load is reported (503) and retried on the next request.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Protocol

from autolabel.detections import Detections

log = logging.getLogger("autolabel.backend")


class PipelineLike(Protocol):
    """What the backend needs from ``autolabel.pipeline.Pipeline``."""

    model_version: str

    def __call__(self, source: Any, name: str | None = None) -> Detections: ...


class ModelUnavailable(RuntimeError):
    """The model is still loading (``loading`` True) or failed to load."""

    def __init__(self, message: str, loading: bool) -> None:
        super().__init__(message)
        self.loading = loading


class ModelHolder:
    """Builds the pipeline with ``factory`` once and hands it out.

    Args:
        factory: zero-argument callable returning the pipeline.
        on_loaded: called with the pipeline after a successful load (e.g. to record its model version).
    """

    def __init__(self, factory: Callable[[], PipelineLike],
                 on_loaded: Callable[[PipelineLike], None] | None = None) -> None:
        self._factory = factory
        self._on_loaded = on_loaded
        self._pipeline: PipelineLike | None = None
        self._error: str | None = None
        self._thread: threading.Thread | None = None
        self._state_lock = threading.Lock()
        self._ready = threading.Event()
        self._run_lock = threading.Lock()
        self.load_seconds: float | None = None

    # ------------------------------------------------------------------------------------------------ state
    @property
    def state(self) -> str:
        """'idle' (not asked to load yet), 'loading', 'ready' or 'failed'."""
        if self._pipeline is not None:
            return "ready"
        if self._thread is not None and self._thread.is_alive():
            return "loading"
        return "failed" if self._error else "idle"

    @property
    def error(self) -> str | None:
        return self._error

    @property
    def model_version(self) -> str | None:
        """The pipeline's model version, None until it is loaded."""
        return self._pipeline.model_version if self._pipeline is not None else None

    def start_loading(self) -> None:
        """Start loading in a background thread unless loaded or loading already (a failed load is retried)."""
        with self._state_lock:
            if self._pipeline is not None or (self._thread is not None and self._thread.is_alive()):
                return
            self._error = None
            self._ready.clear()
            self._thread = threading.Thread(target=self._load, name="autolabel-model-load", daemon=True)
            self._thread.start()

    def _load(self) -> None:
        t0 = time.perf_counter()
        try:
            pipeline = self._factory()
            if self._on_loaded is not None:
                self._on_loaded(pipeline)
        except BaseException as exc:  # noqa: BLE001 - reported to every waiting request
            self._error = f"{type(exc).__name__}: {exc}"
            log.exception("loading the model failed")
        else:
            self.load_seconds = time.perf_counter() - t0
            self._pipeline = pipeline
            log.info("model %s loaded in %.1f s", pipeline.model_version, self.load_seconds)
        finally:
            self._ready.set()

    def wait(self, timeout: float | None) -> bool:
        """Start loading if needed and wait up to ``timeout`` s; True once the pipeline is ready."""
        self.start_loading()
        self._ready.wait(timeout)
        return self._pipeline is not None

    def get(self, timeout: float | None = None) -> PipelineLike:
        """The pipeline, waiting up to ``timeout`` s for it; raises ModelUnavailable otherwise."""
        if self._pipeline is not None:
            return self._pipeline
        if not self.wait(timeout):
            if self._error:
                raise ModelUnavailable(f"model failed to load: {self._error}", loading=False)
            raise ModelUnavailable("model is still loading, retry shortly", loading=True)
        assert self._pipeline is not None
        return self._pipeline

    def run(self, source: Any, name: str | None = None, timeout: float | None = None) -> Detections:
        """Run the pipeline on one image (one call at a time in this process)."""
        pipeline = self.get(timeout)
        with self._run_lock:
            return pipeline(source, name=name)
