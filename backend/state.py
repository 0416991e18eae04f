"""What every request handler of one backend process shares: store, model, fetcher, predictor, settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from autolabel.store import Store
from backend.fetch import ImageFetcher
from backend.model import ModelHolder
from backend.predictor import Predictor
from backend.webhook_auth import WebhookAuthFixer

MODEL_CLASS = "AutolabelDiscovery"


@dataclass
class BackendState:
    """Shared per-process objects; ``settings`` holds the configured method/backbone names (for records).

    ``webhook_auth`` is set when basic auth is on: it gives Label Studio's webhook the credentials.
    """

    store: Store
    model: ModelHolder
    fetcher: ImageFetcher
    predictor: Predictor
    model_class: str = MODEL_CLASS
    settings: dict[str, str | None] = field(default_factory=dict)
    webhook_auth: WebhookAuthFixer | None = None
