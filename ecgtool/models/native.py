"""ecgtool's native checkpoint: safetensors tensors plus one JSON metadata entry (nothing pickled).

The metadata entry ``ecgtool`` holds ``format_version``, ``family``,
``config`` (architecture), ``contract`` (input contract), ``label_names``,
``thresholds``, ``temperature`` (calibration), ``provenance`` (source file,
its sha256, importer, ecgtool version, time) and further ``extra`` values.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from ecgtool.errors import CheckpointError, UsageError
from ecgtool.models.serial import match_state_dict, read_safetensors_header

FORMAT_VERSION = 1
META_KEY = "ecgtool"
# extras kept on ``model.extra`` and stored at the top of the metadata
KNOWN_EXTRAS = ("thresholds", "temperature", "provenance")


def checkpoint_metadata(model: torch.nn.Module, **extra: Any) -> dict:
    from ecgtool import __version__

    extras = {**(getattr(model, "extra", None) or {}), **extra}
    prov = dict(extras.pop("provenance", None) or {})
    prov.setdefault("source", None)
    prov.setdefault("importer", None)
    prov["saved_by"] = f"ecgtool {__version__}"
    prov["saved_at"] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    thresholds = extras.pop("thresholds", None)
    if thresholds is not None:
        thresholds = [float(t) for t in (thresholds.tolist() if hasattr(thresholds, "tolist") else thresholds)]
    temperature = extras.pop("temperature", None)
    return {
        "format_version": FORMAT_VERSION,
        "family": model.family,
        "config": model.config,
        "contract": model.contract.to_dict(),
        "label_names": list(model.label_names) if model.label_names is not None else None,
        "thresholds": thresholds,
        "temperature": float(temperature) if temperature is not None else None,
        "provenance": prov,
        "extra": extras,
    }


def save_checkpoint(model: torch.nn.Module, path: str | Path, **extra: Any) -> Path:
    """Write ``model`` as a native checkpoint (atomically: a temporary file, then a rename).

    ``extra`` (``thresholds=``, ``temperature=``, ``provenance=``, or anything
    JSON-serialisable) is merged over ``model.extra`` and stored in the metadata.
    """
    from safetensors.torch import save

    from ecgtool.io.files import write_bytes_atomic

    path = Path(path)
    meta = checkpoint_metadata(model, **extra)
    try:
        text = json.dumps(meta)
    except TypeError as exc:
        raise UsageError(f"checkpoint metadata is not JSON-serialisable: {exc}") from None
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    write_bytes_atomic(path, save(tensors, metadata={META_KEY: text}))
    return path


def read_metadata(path: str | Path) -> dict:
    """The ``ecgtool`` metadata of a native checkpoint (no tensors read)."""
    header = read_safetensors_header(path)
    if header is None:
        raise CheckpointError(f"{path}: not a safetensors file")
    meta = (header.get("__metadata__") or {}).get(META_KEY)
    if meta is None:
        raise CheckpointError(f"{path}: safetensors file without ecgtool metadata",
                              "it was not written by ecgtool; import released files with 'ecgtool models import'")
    try:
        meta = json.loads(meta)
    except ValueError as exc:
        raise CheckpointError(f"{path}: ecgtool metadata is not valid JSON ({exc})") from None
    for key in ("family", "config", "contract"):
        if key not in meta:
            raise CheckpointError(f"{path}: ecgtool metadata lacks {key!r}")
    if int(meta.get("format_version", 1)) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {meta['format_version']} is newer than this ecgtool "
                              f"reads ({FORMAT_VERSION})", "upgrade ecgtool")
    return meta


def model_from_metadata(meta: dict) -> torch.nn.Module:
    """An (uninitialised-weights) model from a checkpoint's family, config, contract and label names."""
    from ecgtool.models.registry import family_class

    cls = family_class(meta["family"])
    try:
        return cls.from_config(meta["config"], meta["contract"], meta.get("label_names"))
    except (ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"invalid {meta['family']} config: {exc}") from None


def load_checkpoint(path: str | Path) -> torch.nn.Module:
    """Load a native checkpoint; the model comes back in eval mode with ``extra`` attached."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    meta = read_metadata(path)
    model = model_from_metadata(meta)
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read tensors ({exc})", "the file may be truncated; write it again") from None
    match_state_dict(model.state_dict(), tensors, str(path))
    model.load_state_dict(tensors, strict=True)
    extra = dict(meta.get("extra") or {})
    for key in KNOWN_EXTRAS:
        if meta.get(key) is not None:
            extra[key] = meta[key]
    model.extra = extra
    return model.eval()
