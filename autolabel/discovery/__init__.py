"""Discovery method registry: name → class, one module per method (features → patch regions)."""

from __future__ import annotations

import importlib

from autolabel.discovery.base import DiscoveryMethod, PatchRegion

#: method name → "module:Class"
METHODS: dict[str, str] = {
    "lost": "autolabel.discovery.lost:Lost",
    "tokencut": "autolabel.discovery.tokencut:TokenCut",
    "maskcut": "autolabel.discovery.maskcut:MaskCut",
    "found": "autolabel.discovery.found:Found",
    "spectral": "autolabel.discovery.spectral:DeepSpectral",
    "rankcut": "autolabel.discovery.rankcut:RankCut",
}


def method_class(name: str) -> type[DiscoveryMethod]:
    try:
        target = METHODS[name]
    except KeyError:
        raise KeyError(f"unknown discovery method {name!r}; known: {', '.join(METHODS)}") from None
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)


def create_method(name: str, **params) -> DiscoveryMethod:
    """Instantiate method ``name`` with hyper-parameters ``params`` (unknown ones raise TypeError)."""
    return method_class(name)(**params)


__all__ = ["DiscoveryMethod", "PatchRegion", "METHODS", "method_class", "create_method"]
