"""Model registry in the style of timm: named variants, one entry point.

Each model family module (``ecgtool.models.ecgfm``, ``ecgtool.models.net1d``)
registers its variants with :func:`register_model`; a variant function takes
``**overrides`` and returns an ``nn.Module`` that follows the model interface
(see :class:`ModelInfo` and docs/models.md). Family modules import torch, so
they are imported only when a model is listed or created.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from ecgtool.errors import UsageError
from ecgtool.models.contract import InputContract

FAMILY_MODULES = ("ecgtool.models.ecgfm", "ecgtool.models.net1d")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str
    description: str
    contract: InputContract
    fn: Callable


_REGISTRY: dict[str, ModelInfo] = {}
_loaded = False


def register_model(name: str, family: str, contract: InputContract, description: str = ""):
    """Decorator for a variant function ``fn(**overrides) -> nn.Module``."""

    def deco(fn: Callable) -> Callable:
        if name in _REGISTRY and _REGISTRY[name].fn is not fn:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelInfo(name, family, description or (fn.__doc__ or "").strip().split("\n")[0],
                                    contract, fn)
        return fn

    return deco


def _load_families() -> None:
    global _loaded
    if _loaded:
        return
    for mod in FAMILY_MODULES:
        importlib.import_module(mod)
    _loaded = True


def list_models(pattern: str | None = None) -> list[str]:
    import fnmatch

    _load_families()
    names = sorted(_REGISTRY)
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    return names


def model_info(name: str) -> ModelInfo:
    _load_families()
    if name not in _REGISTRY:
        import difflib

        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "see 'ecgtool models' for the list"
        raise UsageError(f"unknown model {name!r}", hint)
    return _REGISTRY[name]


def create_model(name: str, **overrides):
    """Build a registered variant with random weights (``overrides`` change its config)."""
    return model_info(name).fn(**overrides)
