"""Sniff and dispatch: one loader for every model source.

:func:`load_model` takes a native ``.safetensors`` checkpoint, any released
file a family's importer reads (the kind is read from the file's content, not
its name), or a registry name (random weights only when asked for).
:func:`import_released` converts a released file into a native checkpoint once.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from ecgtool.errors import CheckpointError, InputError, UsageError
from ecgtool.models.base import parameter_count
from ecgtool.models.native import KNOWN_EXTRAS, load_checkpoint, save_checkpoint
from ecgtool.models.serial import FileInfo

log = logging.getLogger("ecgtool")


def released_hint() -> str:
    from ecgtool.models.card import family_cards

    parts = [f"{f.facts.get('title', f.family)}: {f.facts.get('weights_source', '?')}"
             for f in family_cards().values() if f.facts.get("weights_source")]
    return "; ".join(parts)


def sniff(path: str | Path) -> str:
    """What a file or folder is: ``safetensors`` (an ecgtool checkpoint), an importer's name, or
    ``torch`` / ``safetensors-foreign`` / ``unknown`` when no importer recognises it."""
    from ecgtool.models.registry import importers

    info = FileInfo(path)
    if info.native:
        return "safetensors"
    for imp in importers():
        if imp.sniff(info):
            return imp.name
    return {"torch": "torch", "safetensors": "safetensors-foreign"}.get(info.kind, "unknown")


def _importer(name: str):
    from ecgtool.models.registry import importers

    return next(i for i in importers() if i.name == name)


def _unknown_file(path: Path, kind: str) -> CheckpointError:
    from ecgtool.models.registry import importers

    known = "; ".join(i.description for i in importers())
    if kind == "torch":
        return CheckpointError(f"{path}: a PyTorch file, but no released layout ecgtool reads",
                               f"ecgtool reads its own .safetensors and: {known}")
    return CheckpointError(f"{path}: not a model checkpoint ecgtool reads",
                           f"pass a registry name ('ecgtool models'), an ecgtool .safetensors, or: {known}")


def licence_note(model: torch.nn.Module) -> str | None:
    from ecgtool.models.card import family_cards, model_cards

    c = getattr(model, "card", None)
    if c is None:
        fam = family_cards().get(getattr(model, "family", ""))
        c = next(iter(fam.variants.values()), None) if fam else None
    return c.licence_note() if c is not None else None


def _announce(model: torch.nn.Module) -> None:
    note = licence_note(model)
    if note:
        log.warning(note)


def load_file(path: str | Path, **overrides: Any) -> tuple[torch.nn.Module, list[str], str]:
    """(model, report lines, kind) for a native checkpoint or a released file."""
    path = Path(path)
    kind = sniff(path)
    if kind == "safetensors":
        if overrides:
            raise UsageError(f"{path}: an ecgtool checkpoint stores its whole architecture; "
                             f"nothing to set ({', '.join(overrides)})")
        model = load_checkpoint(path)
        return model, [f"read {path} (ecgtool checkpoint)"], kind
    if kind == "safetensors-foreign":
        raise CheckpointError(f"{path}: safetensors file without ecgtool metadata, in no layout ecgtool reads",
                              "import released files with 'ecgtool models import'; ecgtool's own checkpoints carry "
                              "their metadata")
    if kind in ("torch", "unknown"):
        damaged = FileInfo(path).damaged
        if damaged:
            raise CheckpointError(f"{path}: a PyTorch file, but {damaged}", "download it again")
        raise _unknown_file(path, kind)
    model, lines = _importer(kind).load(path, **overrides)
    return model, list(lines), kind


def load_model(spec: str | Path, *, allow_random: bool = False, device: str | torch.device | None = None,
               **overrides: Any) -> torch.nn.Module:
    """A model from a native ``.safetensors``, a released file (imported on the fly), or a registry name.

    ``overrides`` set architecture fields a released file does not store (under
    the names its card uses), or change a registry variant's config. A registry
    name builds random weights, allowed only with ``allow_random=True`` (tests,
    training from scratch); ``ecgtool-default`` loads the weights that ship with ecgtool.
    """
    from ecgtool.models.registry import create_model, list_models, model_card

    text = str(spec)
    path = Path(text).expanduser()
    if path.is_file() or (path.is_dir() and FileInfo(path).kind == "folder" and sniff(path) != "unknown"):
        model = load_file(path, **overrides)[0]
        model.checkpoint_path = str(path)  # what commands name as "the model" (not stored in checkpoints)
    elif path.is_dir():
        raise InputError(f"{path}: is a directory, not a checkpoint (nor a model folder ecgtool reads)")
    else:
        if text not in list_models():
            if os.sep in text or path.suffix.lower() in (".safetensors", ".pt", ".pth", ".ckpt", ".bin"):
                raise InputError(f"{text}: no such checkpoint file")
            model_card(text)  # raises the unknown-model error with suggestions
        if not allow_random:
            from ecgtool.models.default import default_model_path

            shipped = default_model_path()
            if text == "ecgtool-default" and shipped is not None:
                return load_model(shipped, device=device)  # the weights that ship with ecgtool
            raise CheckpointError(
                f"{text!r} names an architecture in the registry, which carries no trained weights",
                f"pass a checkpoint with -m instead ({released_hint()}), or leave out -m (or give -m ecgtool-default) "
                "for the model that ships with ecgtool")
        try:
            model = create_model(text, **overrides)
        except (TypeError, ValueError, KeyError) as exc:
            if not overrides:
                raise
            raise UsageError(f"{text}: bad settings {', '.join(f'{k}={v!r}' for k, v in overrides.items())} ({exc})",
                             "see 'ecgtool models info NAME' for the config fields") from None
        model.extra.setdefault("provenance", {"source": None, "importer": None, "random_init": text})
    model.eval()
    if not allow_random:
        _announce(model)
    if device is not None:
        from ecgtool.models.devices import resolve_device

        model.to(resolve_device(device))
    return model


# --------------------------------------------------------------------------- descriptions


def build_on_meta(name: str, **overrides: Any) -> torch.nn.Module:
    """A registered variant built on the meta device (shapes only, no memory, no init time)."""
    from ecgtool.models.registry import create_model

    with torch.device("meta"):
        return create_model(name, **overrides)


def _summary(model: torch.nn.Module) -> dict[str, Any]:
    c = model.contract
    return {
        "family": model.family, "parameters": parameter_count(model),
        "fs": c.fs, "leads": list(c.leads), "n_samples": c.n_samples, "seconds": c.seconds,
        "normalisation": c.normalisation, "filters": c.filters, "preset": c.preset,
        "n_classes": model.n_classes,
        "label_names": list(model.label_names) if model.label_names is not None else None,
        "capabilities": sorted(model.capabilities),
        "config": model.config,
    }


def card_summary(name: str) -> dict[str, Any]:
    """A registered variant's card as a table row (no model built)."""
    from ecgtool.models.registry import model_card

    c = model_card(name)
    k = c.contract
    labels = c.label_names()
    return {"name": name, "family": c.family, "title": c.title, "description": c.description,
            "parameters": c.parameters, "released_file_parameters": c.released_file_parameters,
            "fs": k.fs, "leads": list(k.leads), "n_samples": k.n_samples, "seconds": k.seconds,
            "normalisation": k.normalisation, "preset": k.preset,
            "n_classes": len(labels) if labels else None, "licence": c.licence,
            "non_commercial": c.non_commercial, "released": c.released}


def describe_model(spec: str | Path, **overrides: Any) -> dict[str, Any]:
    """A checkpoint (what it holds, its provenance) or a registered variant (its whole card)."""
    from ecgtool.models.registry import model_card

    path = Path(str(spec)).expanduser()
    if path.exists():
        model = load_model(path, **overrides)
        d = {"name": path.name, "path": str(path), **_summary(model), "random_weights": False}
        for key in KNOWN_EXTRAS:
            if model.extra.get(key) is not None:
                d[key] = model.extra[key]
        note = licence_note(model)
        if note:
            d["licence_note"] = note
        return d
    c = model_card(str(spec))
    model = build_on_meta(c.name, **overrides)
    return {**c.to_dict(), **_summary(model), "description": c.description, "random_weights": True}


def list_model_summaries(pattern: str | None = None) -> list[dict[str, Any]]:
    from ecgtool.models.registry import list_models

    return [card_summary(name) for name in list_models(pattern)]


def parse_label_names(spec: str) -> list[str]:
    """Label names from ``--label-names``: a vocabulary name ('ecgfm-17', alias 'mimic-iv-ecg'), a text
    file with one name per line, or comma-separated names."""
    text = spec.strip()
    alias = {"mimic-iv-ecg": "ecgfm-17", "mimic": "ecgfm-17"}
    vocab = alias.get(text.lower(), text)
    path = Path(text).expanduser()
    if not path.is_file() and "," not in text:
        from ecgtool.labels.vocabulary import list_vocabularies, load_vocabulary

        if vocab in list_vocabularies():
            return [lab.name for lab in load_vocabulary(vocab).labels]
    if path.is_file():
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"--label-names {text}: cannot read ({e})") from None
        names = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    else:
        names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UsageError(f"--label-names {text!r}: no label names",
                         "give comma-separated names, a file with one name per line, or a vocabulary such as ecgfm-17")
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise UsageError(f"--label-names: repeated label names: {', '.join(dup)}")
    return names


def _attach_label_names(model: torch.nn.Module, names: list[str], src: Path) -> None:
    n_out = model.n_classes
    if not n_out:
        raise UsageError(f"{src}: the checkpoint has no classifier head, so --label-names does not apply",
                         "label names belong to a finetuned checkpoint")
    if len(names) != n_out:
        raise UsageError(f"--label-names: {len(names)} names for the {n_out} outputs of {src.name}",
                         "give one name per output, in the order of the outputs")
    model.label_names = list(names)


def import_released(src: str | Path, output: str | Path, label_names: list[str] | None = None,
                    **overrides: Any) -> list[str]:
    """Convert a released checkpoint to a native one; returns report lines (what was read and written).

    ``label_names`` (one per output) replaces the names the file carries;
    ``overrides`` set architecture fields the file does not store.
    """
    src, output = Path(src), Path(output)
    if not src.exists():
        raise InputError(f"{src}: no such file")
    if output.exists() and output.resolve() == src.resolve():
        raise UsageError(f"-o {output}: would overwrite the source checkpoint")
    kind = sniff(src)
    if kind == "safetensors":
        raise UsageError(f"{src}: already an ecgtool checkpoint; nothing to import",
                         "use it directly with -m, or 'ecgtool models info' to inspect it")
    model, lines, _ = load_file(src, **overrides)
    if label_names is not None:
        _attach_label_names(model, label_names, src)
        shown = ", ".join(label_names[:4]) + (", …" if len(label_names) > 4 else "")
        lines.append(f"  label names: {shown} ({len(label_names)})")
    note = licence_note(model)
    if note:
        lines.append(f"  note: {note}")
    save_checkpoint(model, output)
    n = len(model.state_dict())
    lines.append(f"wrote {output} ({n} tensors, {parameter_count(model):,} parameters, "
                 f"{output.stat().st_size:,} bytes)")
    return lines
