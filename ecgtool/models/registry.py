"""Model registry in the style of timm: named variants, one entry point.

The variants and their cards are read from ``ecgtool/models/cards/*.json``
(no torch needed to list them). Each card names its family's module; that
module, imported when a model is built or a file imported, registers

* its model class with :func:`register_family` (a subclass of
  :class:`ecgtool.models.base.EcgModel`),
* each variant's constructor with :func:`register_model` (``fn(**overrides)``),
* the importers of its released files with :func:`register_importer`.

A new family is therefore one module plus one card file; nothing else changes.
"""

from __future__ import annotations

import fnmatch
import importlib
from dataclasses import dataclass
from typing import Any, Callable

from ecgtool.errors import CheckpointError, UsageError
from ecgtool.models.card import ModelCard, family_cards, model_cards
from ecgtool.models.contract import InputContract


@dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str
    description: str
    contract: InputContract
    card: ModelCard
    fn: Callable | None = None


@dataclass(frozen=True)
class Importer:
    """Reads one released checkpoint layout: ``sniff(info) -> bool``, ``load(path, **overrides)``
    returning ``(model, report_lines)``."""

    name: str
    family: str
    sniff: Callable[[Any], bool]
    load: Callable[..., tuple[Any, list[str]]]
    description: str = ""


_BUILDERS: dict[str, Callable] = {}
_FAMILIES: dict[str, type] = {}
_IMPORTERS: dict[str, Importer] = {}
_imported: set[str] = set()


def _family_of_module(module: str) -> str:
    for fam in family_cards().values():
        if fam.module == module:
            return fam.family
    raise ValueError(f"{module} has no card file in ecgtool/models/cards/")


def register_family(cls: type) -> type:
    """Class decorator: the model class of ``cls.family`` (used to rebuild stored configs)."""
    fam = cls.family
    if fam not in family_cards():
        raise ValueError(f"model family {fam!r} has no card file in ecgtool/models/cards/")
    if fam in _FAMILIES and _FAMILIES[fam] is not cls:
        raise ValueError(f"model family {fam!r} registered twice")
    _FAMILIES[fam] = cls
    return cls


def register_model(name: str) -> Callable:
    """Decorator for a variant function ``fn(**overrides) -> EcgModel``; its card must exist."""

    def deco(fn: Callable) -> Callable:
        c = model_cards().get(name)
        if c is None:
            raise ValueError(f"model {name!r} has no card (add it to ecgtool/models/cards/)")
        if c.module != fn.__module__:
            raise ValueError(f"model {name!r}: its card names {c.module}, but {fn.__module__} registers it")
        if name in _BUILDERS and _BUILDERS[name] is not fn:
            raise ValueError(f"model {name!r} registered twice")
        _BUILDERS[name] = fn
        return fn

    return deco


def register_importer(name: str, sniff: Callable[[Any], bool], description: str = "") -> Callable:
    """Decorator for ``load(path, **overrides) -> (model, report_lines)`` of a released layout."""

    def deco(fn: Callable) -> Callable:
        fam = _family_of_module(fn.__module__)
        if name in _IMPORTERS and _IMPORTERS[name].load is not fn:
            raise ValueError(f"importer {name!r} registered twice")
        _IMPORTERS[name] = Importer(name, fam, sniff, fn, description or (fn.__doc__ or "").strip().split("\n")[0])
        return fn

    return deco


def refuse_overrides(path, overrides: dict[str, Any], files: str, where: str = "") -> None:
    """An importer's check that it was given no architecture settings: ``files`` (e.g. "ECGFounder
    files") store their whole architecture (``where``: e.g. " in cfg['model']"), so any is refused."""
    if overrides:
        raise CheckpointError(f"{path}: {files} store their whole architecture{where}; "
                              f"nothing to set ({', '.join(overrides)})")


def _import_family(family: str) -> None:
    fam = family_cards().get(family)
    if fam is None:
        raise CheckpointError(f"unknown model family {family!r}", f"known: {', '.join(family_cards())}")
    if fam.module not in _imported:
        importlib.import_module(fam.module)
        _imported.add(fam.module)


def load_all_families() -> None:
    for family in family_cards():
        _import_family(family)


def list_families() -> list[str]:
    return sorted(family_cards())


def list_models(pattern: str | None = None) -> list[str]:
    """Registered variant names (sorted), optionally filtered by a shell pattern (``'ecgfm-*'``)."""
    names = sorted(model_cards())
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    return names


def model_card(name: str) -> ModelCard:
    c = model_cards().get(name)
    if c is None:
        import difflib

        close = difflib.get_close_matches(name, list(model_cards()), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "see 'ecgtool models' for the list"
        raise UsageError(f"unknown model {name!r}", hint)
    return c


def model_info(name: str) -> ModelInfo:
    c = model_card(name)
    return ModelInfo(name, c.family, c.description, c.contract, c, _BUILDERS.get(name))


def family_class(family: str) -> type:
    _import_family(family)
    if family not in _FAMILIES:
        raise CheckpointError(f"model family {family!r}: its module registers no model class")
    return _FAMILIES[family]


def importers() -> list[Importer]:
    load_all_families()
    return list(_IMPORTERS.values())


def create_model(name: str, **overrides: Any):
    """Build a registered variant with random weights (``overrides`` change its config)."""
    c = model_card(name)
    _import_family(c.family)
    fn = _BUILDERS.get(name)
    if fn is None:
        raise CheckpointError(f"model {name!r} has a card but {c.module} does not register it")
    model = fn(**overrides)
    model.card = c
    return model
