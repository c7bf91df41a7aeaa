"""The default model that ships inside the package (used when -m is not given)."""

from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "data" / "models" / "default.safetensors"


def default_model_path() -> Path | None:
    return DEFAULT_MODEL if DEFAULT_MODEL.is_file() else None
