"""``autolabel serve``: run the ML backend with uvicorn (one process, or N worker processes).

The database is migrated once here, before any worker starts; each worker then builds its own pipeline once
(in the background, so /health answers immediately). With N workers each gets ``cpu_count // N`` torch threads.
"""

from __future__ import annotations

import logging
import os
import socket

import click

from autolabel.store import DB_URL_ENV, resolve_db_url, upgrade_db
from backend.app import BACKBONE_ENV, METHOD_ENV, SKIP_MIGRATE_ENV, create_app, default_pipeline_factory

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9090
TORCH_THREADS_ENV = "AUTOLABEL_TORCH_THREADS"


def _threads_per_worker(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def serve(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, workers: int = 1, *, db_url: str | None = None,
          method: str | None = None, backbone: str | None = None, log_level: str = "info") -> None:
    """Serve the backend until interrupted. ``workers`` > 1 starts that many uvicorn worker processes."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvicorn

    url = resolve_db_url(db_url)
    upgrade_db(url)
    os.environ[DB_URL_ENV] = url
    os.environ.setdefault(TORCH_THREADS_ENV, str(_threads_per_worker(workers)))
    if workers == 1:
        _set_torch_threads()
        app = create_app(default_pipeline_factory(method, backbone), url, migrate=False, method=method,
                         backbone=backbone)
        uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_keep_alive=75)
        return
    if method:
        os.environ[METHOD_ENV] = method
    if backbone:
        os.environ[BACKBONE_ENV] = backbone
    os.environ[SKIP_MIGRATE_ENV] = "1"
    from uvicorn.supervisors import Multiprocess

    config = uvicorn.Config("backend.serve:worker_app", factory=True, host=host, port=port, workers=workers,
                            log_level=log_level, timeout_keep_alive=75)
    # uvicorn's own bind_socket() makes a proto-0 socket, whose connections then miss TCP_NODELAY (see
    # listen_socket); bind it here and hand it to uvicorn's worker supervisor as uvicorn.run would.
    sock = listen_socket(host, port)
    logging.getLogger("autolabel.backend").info("serving on http://%s:%d with %d workers", host, port, workers)
    Multiprocess(config, sockets=[sock]).run()


def listen_socket(host: str, port: int) -> socket.socket:
    """A bound TCP socket created with proto=IPPROTO_TCP.

    That matters: asyncio sets TCP_NODELAY only on connections accepted from such a listener, and without it
    every response waits ~40 ms for a delayed ACK (uvicorn writes headers and body separately).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def _set_torch_threads() -> None:
    raw = os.environ.get(TORCH_THREADS_ENV)
    if raw and raw.isdigit():
        import torch

        torch.set_num_threads(int(raw))


def worker_app():  # noqa: ANN201 - Starlette, imported lazily by uvicorn workers
    """App factory of one uvicorn worker process."""
    from backend.app import app_from_env

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _set_torch_threads()
    return app_from_env()


@click.command("serve")
@click.option("--host", default=DEFAULT_HOST, show_default=True, help="Interface to listen on (0.0.0.0 for all).")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=int, help="TCP port.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Worker processes (each loads the backbone once).")
@click.option("--method", default=None, help="Discovery method (default: the pipeline's default).")
@click.option("--backbone", default=None, help="Backbone name or checkpoint (default: auto).")
@click.option("--db", "db_url", default=None, envvar=DB_URL_ENV,
              help="Store URL (default: env AUTOLABEL_DB_URL or <user data dir>/autolabel.sqlite).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def serve_command(host: str, port: int, workers: int, method: str | None, backbone: str | None,
                  db_url: str | None, log_level: str) -> None:
    """Run the Label Studio ML backend (connect it in Label Studio: Settings → Model → Connect Model).

    HTTP basic auth is on when BASIC_AUTH_USER and BASIC_AUTH_PASS are set; images are fetched from
    LABEL_STUDIO_URL with LABEL_STUDIO_API_KEY, or with what the project sends when it connects.
    """
    serve(host, port, workers, db_url=db_url, method=method, backbone=backbone, log_level=log_level)


class ServerThread:
    """Run an ASGI app with uvicorn in a background thread on a free loopback port (tests, embedding).

    Usage: ``with ServerThread(app) as server: httpx.get(server.url + "/health")``.
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:  # noqa: ANN001
        import threading

        import uvicorn

        self.sock = listen_socket(host, port)
        self.host, self.port = self.sock.getsockname()[:2]
        config = uvicorn.Config(app, log_level=log_level, lifespan="on", timeout_keep_alive=75)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True,
                                        name=f"uvicorn-{self.port}")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> "ServerThread":
        import time

        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on {self.url}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=10)
        self.sock.close()

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
