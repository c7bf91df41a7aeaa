"""The input contract every model carries (no torch here)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any



@dataclass(frozen=True)
class InputContract:
    """What a model expects: sampling rate, lead names and order, samples, normalisation.

    ``embed``/``predict`` adapt a table to it (resample, reorder / zero-fill
    leads, window and pool) or refuse with a message that says what differs.
    """

    fs: float
    leads: tuple[str, ...]
    n_samples: int
    normalisation: str = "per-lead-zscore"
    preset: str | None = None  # the preprocess preset that produces this input
    filters: str = "none"      # the filters the original applies (text, e.g. "band-pass 0.67-40 Hz")
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def seconds(self) -> float:
        return self.n_samples / self.fs

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["leads"] = list(self.leads)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "InputContract":
        d = dict(d)
        d["leads"] = tuple(d["leads"])
        d.setdefault("extra", {})
        known = {"fs", "leads", "n_samples", "normalisation", "preset", "filters", "extra"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown contract fields {', '.join(unknown)}")
        d["fs"] = float(d["fs"])
        d["n_samples"] = int(d["n_samples"])
        return cls(**d)

    def describe(self) -> str:
        return (f"{self.fs:g} Hz, {len(self.leads)} lead{'s' if len(self.leads) != 1 else ''} "
                f"({','.join(self.leads)}), {self.n_samples} samples ({self.seconds:g} s), {self.normalisation}"
                + (f", {self.filters}" if self.filters and self.filters != "none" else ""))
