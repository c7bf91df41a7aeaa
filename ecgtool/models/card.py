"""Model cards as data (no torch here).

Each model family ships one JSON file in ``ecgtool/models/cards/``: the
family's facts (module, paper, licences, where the released weights are
published, pretraining data, published numbers, preprocess presets) and its
registered variants, each with its input contract, label vocabulary and exact
parameter count. A variant's fields override the family's. The registry, the
preprocess presets, ``ecgtool models`` and the leakage warnings all read these
files, so a family's facts are written once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from ecgtool.models.contract import InputContract

CARD_DIR = Path(__file__).resolve().parent / "cards"
CARD_FORMAT = "ecgtool-model-card/1"

_FAMILY_FIELDS = ("title", "paper", "code_licence", "weights_licence", "weights_source", "pretraining_data",
                  "published", "notes")


@dataclass(frozen=True)
class ModelCard:
    """One registered variant: what it is, what it takes, where it comes from, under which licence."""

    name: str
    family: str
    module: str
    description: str
    contract: InputContract
    labels: str | None = None              # a vocabulary in labels/vocab (output order), or None
    parameters: int | None = None          # exact parameter count of the module ecgtool builds
    released_file_parameters: int | None = None  # tensors the released file holds, if it differs
    released: bool = False                 # the size of a released checkpoint (False: a size for CPUs / tests)
    tiny: bool = False                     # small enough to build and run in tests
    title: str = ""
    paper: str = ""
    code_licence: str = ""
    weights_licence: str = ""
    weights_source: str = ""               # where the released weights are published (never downloaded)
    weights_files: tuple[dict, ...] = ()   # {"name", "size", "sha256"} where known
    pretraining_data: tuple[str, ...] = ()
    published: dict = field(default_factory=dict, compare=False)
    notes: str = ""
    config: dict = field(default_factory=dict, compare=False)  # architecture overrides of the variant

    @property
    def non_commercial(self) -> bool:
        text = f"{self.weights_licence} {self.code_licence}".upper().replace("-", " ")
        return " NC" in f" {text}" or "NON COMMERCIAL" in text

    @property
    def licence(self) -> str:
        """Short licence text for tables: the weights' licence, and the code's when it differs."""
        w, c = self.weights_licence or "not stated", self.code_licence or "not stated"
        if w == c:
            text = c
        elif w.lower().startswith("not stated"):
            text = f"{c} (weights: not stated)"
        else:
            text = f"{c} (weights: {w})"
        return text + (" [NC]" if self.non_commercial and "NC" not in text.upper().replace("-", " ").split() else "")

    def licence_note(self) -> str | None:
        """The one-line note printed when non-commercial weights are loaded."""
        if not self.non_commercial:
            return None
        return (f"{self.title or self.family} weights are licensed {self.weights_licence}"
                f"{'' if self.code_licence == self.weights_licence else f' (code: {self.code_licence})'}: "
                "non-commercial use only")

    def label_names(self) -> list[str] | None:
        if not self.labels:
            return None
        from ecgtool.labels.vocabulary import load_vocabulary

        return [lab.name for lab in load_vocabulary(self.labels).labels]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "family": self.family, "title": self.title, "description": self.description,
            "parameters": self.parameters, "released_file_parameters": self.released_file_parameters,
            "released": self.released, "contract": self.contract.to_dict(), "labels": self.labels,
            "licence": {"code": self.code_licence, "weights": self.weights_licence,
                        "non_commercial": self.non_commercial},
            "weights": {"source": self.weights_source, "files": [dict(f) for f in self.weights_files]},
            "pretraining_data": list(self.pretraining_data), "paper": self.paper,
            "published": dict(self.published), "notes": self.notes,
        }


@dataclass(frozen=True)
class FamilyCard:
    family: str
    module: str
    variants: dict[str, ModelCard]
    presets: dict[str, dict]
    facts: dict


def _contract(d: dict, where: str) -> InputContract:
    try:
        return InputContract.from_dict(d)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{where}: bad contract ({exc})") from None


def _read_family(path: Path) -> FamilyCard:
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("format") != CARD_FORMAT:
        raise ValueError(f"{path}: not a model card file (format {data.get('format')!r}, expected {CARD_FORMAT})")
    family, module = data["family"], data["module"]
    facts = {k: data[k] for k in _FAMILY_FIELDS if k in data}
    variants: dict[str, ModelCard] = {}
    for name, v in data["variants"].items():
        merged = {**facts, **v}
        variants[name] = ModelCard(
            name=name, family=family, module=module, description=merged.get("description", ""),
            contract=_contract(merged["contract"], f"{path.name}: {name}"), labels=merged.get("labels"),
            parameters=merged.get("parameters"), released_file_parameters=merged.get("released_file_parameters"),
            released=bool(merged.get("released", False)), tiny=bool(merged.get("tiny", False)),
            title=merged.get("title", ""), paper=merged.get("paper", ""),
            code_licence=merged.get("code_licence", ""), weights_licence=merged.get("weights_licence", ""),
            weights_source=merged.get("weights_source", ""),
            weights_files=tuple(merged.get("weights_files", ())),
            pretraining_data=tuple(merged.get("pretraining_data", ())), published=dict(merged.get("published", {})),
            notes=merged.get("notes", ""), config=dict(merged.get("config", {})),
        )
    return FamilyCard(family, module, variants, dict(data.get("presets", {})), facts)


@lru_cache(maxsize=1)
def family_cards() -> dict[str, FamilyCard]:
    """Every family's card file, by family name."""
    out: dict[str, FamilyCard] = {}
    for path in sorted(CARD_DIR.glob("*.json")):
        fam = _read_family(path)
        if fam.family in out:
            raise ValueError(f"{path}: family {fam.family!r} has two card files")
        out[fam.family] = fam
    return out


@lru_cache(maxsize=1)
def model_cards() -> dict[str, ModelCard]:
    """Every registered variant's card, by variant name."""
    out: dict[str, ModelCard] = {}
    for fam in family_cards().values():
        for name, card in fam.variants.items():
            if name in out:
                raise ValueError(f"model {name!r} has cards in two families ({out[name].family}, {fam.family})")
            out[name] = card
    return out


def card(name: str) -> ModelCard | None:
    return model_cards().get(name)


@lru_cache(maxsize=1)
def presets() -> dict[str, dict]:
    """Preprocess presets by name, from the cards (each names the settings of a published pipeline)."""
    out: dict[str, dict] = {}
    for fam in family_cards().values():
        for name, settings in fam.presets.items():
            if name in out:
                raise ValueError(f"preset {name!r} is defined by two families")
            out[name] = {k: v for k, v in settings.items() if not k.startswith("_")}
    return out


def preset_notes(name: str) -> str:
    """The ``_note`` of a preset (what it reproduces), or ''."""
    for fam in family_cards().values():
        if name in fam.presets:
            return str(fam.presets[name].get("_note", ""))
    return ""
