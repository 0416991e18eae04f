"""Give Label Studio's ML-backend webhook this backend's basic-auth credentials.

Connecting an ML backend makes Label Studio 1.23.2 register ``<backend url>/webhook`` for the project, but that
webhook is sent without the basic-auth credentials Label Studio uses for /health, /setup and /predict, so a
backend behind basic auth would refuse every annotation event with 401. /setup carries Label Studio's address
and an API token, so the backend can fix this itself: it finds the project's webhook that posts to it and adds
``Authorization: Basic ...`` to the webhook's ``headers`` (``PATCH /api/webhooks/<id>``).

This runs in a background thread (/setup must answer within 3 s, and on the first /setup of a new connection
the webhook does not exist yet), is retried a few times, and only logs failures.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Iterable
from urllib.parse import urlsplit

from autolabel.lsclient import LabelStudio, LabelStudioError

log = logging.getLogger("autolabel.backend")

#: Seconds to wait before each attempt: the webhook appears only after Label Studio saved the connection.
RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0, 8.0)
#: After a successful check, /setup calls for the same project skip the check for this long.
RECHECK_AFTER_S = 60.0
WEBHOOK_PATH = "/webhook"


def basic_auth_header(user: str, password: str) -> str:
    """The ``Authorization`` header value for HTTP basic auth."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def normalize_netloc(netloc: str, scheme: str = "http") -> str:
    """``host[:port]`` lower-cased, without user info and without the scheme's default port."""
    host = netloc.rpartition("@")[2].lower()
    for default_scheme, port in (("http", ":80"), ("https", ":443")):
        if scheme == default_scheme and host.endswith(port):
            return host[: -len(port)]
    return host


def _hook_target(url: str) -> tuple[str, str] | None:
    """(normalized host, path) of a webhook URL, or None when it cannot be parsed."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if not parts.netloc:
        return None
    return normalize_netloc(parts.netloc, parts.scheme), parts.path.rstrip("/")


def hooks_posting_to(hooks: Iterable[dict], hosts: Iterable[str], path: str = WEBHOOK_PATH) -> list[dict]:
    """The webhooks whose URL has one of ``hosts`` (as this backend was called) and ``path`` (scheme ignored:
    a TLS-terminating proxy makes Label Studio's https URL arrive here as http)."""
    wanted = {normalize_netloc(h) for h in hosts if h}
    found = []
    for hook in hooks:
        target = _hook_target(str(hook.get("url") or ""))
        if target is not None and target[0] in wanted and target[1] == path.rstrip("/"):
            found.append(hook)
    return found


def hooks_of_backends_using(hooks: Iterable[dict], ml_backends: Iterable[dict], user: str) -> list[dict]:
    """The webhooks of the one ML backend that logs in as ``user`` (basic auth); none when several do.

    Used when the Host this backend saw differs from the URL Label Studio has (a proxy rewrote it).
    """
    urls = {str(b.get("url") or "").rstrip("/") + WEBHOOK_PATH for b in ml_backends
            if b.get("auth_method") == "BASIC_AUTH" and b.get("basic_auth_user") == user and b.get("url")}
    if len(urls) != 1:
        return []
    return [h for h in hooks if h.get("url") in urls]


class WebhookAuthFixer:
    """Adds this backend's basic-auth header to Label Studio webhooks, one background thread per project.

    Args:
        user, password: the backend's basic-auth credentials.
        delays: seconds to wait before each attempt.
        recheck_after_s: how long a project whose webhook is fixed is not looked at again.
    """

    def __init__(self, user: str, password: str, delays: tuple[float, ...] = RETRY_DELAYS_S,
                 recheck_after_s: float = RECHECK_AFTER_S) -> None:
        self.user = user
        self.header = basic_auth_header(user, password)
        self.delays = delays
        self.recheck_after_s = recheck_after_s
        self._lock = threading.Lock()
        self._busy: set[tuple[str, int]] = set()
        self._fixed_at: dict[tuple[str, int], float] = {}
        self._stop = threading.Event()

    def schedule(self, ls_url: str, token: str, project: int, hosts: list[str], path: str = WEBHOOK_PATH) -> bool:
        """Start fixing ``project``'s webhook in the background; False when not needed or already under way.

        ``hosts`` are the names this backend was called by (Host, X-Forwarded-Host), ``path`` its webhook path.
        """
        key = (ls_url.rstrip("/"), project)
        with self._lock:
            recent = self._fixed_at.get(key)
            if key in self._busy or (recent is not None and time.monotonic() - recent < self.recheck_after_s):
                return False
            self._busy.add(key)
        thread = threading.Thread(target=self._run, args=(key, token, hosts, path), daemon=True,
                                  name=f"autolabel-webhook-auth-{project}")
        thread.start()
        return True

    def stop(self) -> None:
        """Make running attempts give up (at shutdown)."""
        self._stop.set()

    def _run(self, key: tuple[str, int], token: str, hosts: list[str], path: str) -> None:
        ls_url, project = key
        last = "no attempt"
        try:
            for delay in self.delays:
                if self._stop.wait(delay):
                    return
                try:
                    changed = self.fix_once(ls_url, token, project, hosts, path)
                except (LabelStudioError, ValueError, KeyError, TypeError) as exc:
                    last = f"{type(exc).__name__}: {exc}"
                    continue
                if changed is not None:
                    with self._lock:
                        self._fixed_at[key] = time.monotonic()
                    if changed:
                        log.info("added basic-auth credentials to Label Studio webhook(s) %s of project %d",
                                 changed, project)
                    return
                last = f"no webhook of project {project} posts to {' or '.join(h + path for h in hosts)}"
            log.warning("could not give Label Studio's webhook of project %d at %s the backend's credentials "
                        "(annotation events will be refused with 401): %s", project, ls_url, last)
        except Exception:  # noqa: BLE001 - a background helper must never take the server down
            log.exception("webhook credentials for project %d at %s failed", project, ls_url)
        finally:
            with self._lock:
                self._busy.discard(key)

    def fix_once(self, ls_url: str, token: str, project: int, hosts: list[str],
                 path: str = WEBHOOK_PATH) -> list[int] | None:
        """One attempt: ids of the webhooks patched now ([] when all had the header), None when none was found."""
        with LabelStudio(ls_url, token, timeout=10.0) as ls:
            hooks = ls.list_webhooks(project)
            if not isinstance(hooks, list):
                raise TypeError(f"GET /api/webhooks answered {type(hooks).__name__}, expected a list")
            mine = hooks_posting_to(hooks, hosts, path)
            if not mine and any(str(h.get("url") or "").rstrip("/").endswith(WEBHOOK_PATH) for h in hooks):
                mine = hooks_of_backends_using(hooks, ls.list_ml_backends(project), self.user)
            if not mine:
                return None
            changed = []
            for hook in mine:
                old = dict(hook.get("headers") or {})
                if old.get("Authorization") == self.header:
                    continue
                headers = {k: v for k, v in old.items() if k.lower() != "authorization"}
                headers["Authorization"] = self.header
                ls.update_webhook(int(hook["id"]), headers=headers)
                changed.append(int(hook["id"]))
            return changed
