"""Settings of ``ecgtool preprocess``: the config, its allowed values and presets.

:class:`PreprocessConfig` (every setting of a run, validated, stored in the
output's metadata), the policy constants it is checked against (``BASELINES``,
``MISSING``, ``NAN_POLICIES``, ``SHORT_POLICIES``, ``NORM_SCOPES``,
``PRECISIONS``, ``FILTER_SETS``), :func:`make_config` (a preset plus explicit
settings), :func:`presets`, :func:`rename_map` (``--rename OLD=NEW``) and
:func:`round_precision` (``--precision``). The pipeline that applies a config
is :mod:`ecgtool.preprocess.pipeline`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Sequence

import numpy as np

from ecgtool.errors import UsageError
from ecgtool.signal import filters as F
from ecgtool.signal import normalise as N
from ecgtool.signal import quality as Q
from ecgtool.signal import resample as R
from ecgtool.signal import segment as G
from ecgtool.signal.leads import parse_lead_list

BASELINES = ("none", "median", "highpass")
MISSING = ("zero", "drop")
NAN_POLICIES = ("zero", "drop")
SHORT_POLICIES = ("skip", "pad")
NORM_SCOPES = ("record", "output")
PRECISIONS = {"float32": 0, "float16": 13, "bfloat16": 16}  # low float32 mantissa bits rounded away


@dataclass
class PreprocessConfig:
    """All settings of one preprocess run (stored in the output's metadata)."""

    preset: str | None = None
    rename: list[str] | None = None  # "OLD=NEW" lead renames applied before lead selection
    leads: list[str] | None = None
    derive: bool = True
    missing: str = "zero"
    fs: float | None = None
    resample_method: str = "poly"
    bandpass: tuple[float, float] | None = None
    bandpass_design: str = "butter"  # butter | butter-hp-lp | fir (see ecgtool.signal.filters)
    filter_order: int = 4
    notch: float | None = None
    notch_q: float = 30.0
    baseline: str = "none"
    baseline_window_s: float = 0.4
    highpass_hz: float = 0.5
    normalisation: str = "none"
    norm_scope: str = "record"
    length_s: float | None = None
    crop: str = "start"
    segment_s: float | None = None
    hop_s: float | None = None      # windows start every hop_s seconds (default segment_s: no overlap)
    short: str = "skip"
    nan: str = "zero"
    drop_flagged: list[str] = field(default_factory=list)
    flat_mv: float = 0.01
    clip_ms: float = 10.0
    clip_plateaus: int = 3
    amplitude_mv: float = 15.0
    precision: str = "float32"  # round output samples to this precision (storage stays float32)

    def validate(self) -> "PreprocessConfig":
        def one_of(name, value, allowed):
            if value not in allowed:
                raise UsageError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")

        try:
            for name in ("fs", "notch", "length_s", "segment_s", "hop_s"):
                v = getattr(self, name)
                if v is not None:
                    setattr(self, name, float(v))
            if self.bandpass is not None:
                self.bandpass = (float(self.bandpass[0]), float(self.bandpass[1]))
        except (TypeError, ValueError, IndexError) as exc:
            raise UsageError(f"a numeric preprocess setting is not a number ({exc})")
        one_of("--missing", self.missing, MISSING)
        one_of("--resample-method", self.resample_method, R.METHODS)
        one_of("--baseline", self.baseline, BASELINES)
        one_of("--bandpass-design", self.bandpass_design, F.BANDPASS_DESIGNS)
        one_of("--normalise", self.normalisation, N.METHODS)
        one_of("--norm-scope", self.norm_scope, NORM_SCOPES)
        one_of("--crop", self.crop, G.CROP_MODES)
        one_of("--short", self.short, SHORT_POLICIES)
        one_of("--nan", self.nan, NAN_POLICIES)
        one_of("--precision", self.precision, tuple(PRECISIONS))
        for flag in self.drop_flagged:
            one_of("--drop-flagged", flag, Q.FLAGS)
        if self.segment_s is not None and self.length_s is not None:
            raise UsageError("--segment and --length exclude each other", "give one of them")
        if self.hop_s is not None and self.segment_s is None:
            raise UsageError("--hop needs --segment", "give the window length with --segment")
        for name, v in (("--segment", self.segment_s), ("--hop", self.hop_s), ("--length", self.length_s),
                        ("--fs", self.fs)):
            if v is not None and v <= 0:
                raise UsageError(f"{name} must be positive, not {v}")
        if self.bandpass is not None and not (0 < self.bandpass[0] < self.bandpass[1]):
            raise UsageError(f"--bandpass needs 0 < LOW < HIGH, not {self.bandpass[0]},{self.bandpass[1]}")
        if self.leads is not None and len(set(self.leads)) != len(self.leads):
            raise UsageError(f"--leads names a lead twice: {','.join(self.leads)}")
        rename_map(self.rename)
        return self

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["bandpass"] is not None:
            d["bandpass"] = list(d["bandpass"])
        return d


def round_precision(x: np.ndarray, precision: str) -> np.ndarray:
    """Round float32 samples to the significand of ``precision`` (float16: 11 bits, bfloat16: 8 bits).

    Round half to even on the dropped low mantissa bits; the result is still
    float32 (the record-table contract) but its low bits are zero, so a
    compressed file of it is about half (float16) or 40% (bfloat16) the size.
    Exponent range is float32's: nothing overflows or flushes to zero.
    """
    drop = PRECISIONS[precision]
    if not drop:
        return x
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).copy()
    finite = np.isfinite(u.view(np.float32))
    half = np.uint32((1 << (drop - 1)) - 1)
    r = (u + half + ((u >> np.uint32(drop)) & np.uint32(1))) & np.uint32((0xFFFFFFFF << drop) & 0xFFFFFFFF)
    u = np.where(finite, r, u)
    return u.view(np.float32)


def rename_map(pairs: Sequence[str] | None) -> dict[str, str]:
    """``["ECG=I", ...]`` -> ``{"ECG": "I"}`` with both sides in canonical lead spelling."""
    from ecgtool.signal.leads import normalize_lead

    out: dict[str, str] = {}
    for pair in pairs or ():
        old, sep, new = str(pair).partition("=")
        if not sep or not old.strip() or not new.strip():
            raise UsageError(f"--rename {pair!r} is not OLD=NEW", "e.g. --rename ECG=I")
        out[normalize_lead(old.strip())] = normalize_lead(new.strip())
    return out


def presets() -> dict[str, dict[str, Any]]:
    """The published pipelines, by name, as the model cards define them (docs/preprocessing.md)."""
    from ecgtool.models.card import presets as card_presets

    return card_presets()


FILTER_SETS = ("none", "ecgfounder")


def make_config(preset: str | None = None, filter: str | None = None, **overrides: Any) -> PreprocessConfig:
    """A config from a preset plus explicit settings.

    ``None`` means "not given" (the preset's value stays); ``False`` for
    ``bandpass`` or ``notch`` switches that filter off. ``filter="none"``
    switches every filter off (band-pass, notch, baseline) before the
    explicit settings apply; ``filter="ecgfounder"`` switches ECGFounder's on.
    """
    base: dict[str, Any] = {}
    if preset is not None:
        known = presets()
        if preset not in known:
            raise UsageError(f"unknown preset {preset!r}", f"choose one of {', '.join(known)}")
        base.update(known[preset])
        base["preset"] = preset
    if filter is not None:
        if filter not in FILTER_SETS:
            raise UsageError(f"unknown --filter {filter!r}", f"choose one of {', '.join(FILTER_SETS)}")
        base.update(bandpass=None, notch=None, baseline="none")
        if filter == "ecgfounder":
            eg = presets()["ecgfounder"]
            for k in ("notch", "notch_q", "bandpass", "filter_order", "baseline", "baseline_window_s"):
                base[k] = eg[k]
    names = {f.name for f in fields(PreprocessConfig)}
    # a window given explicitly replaces the preset's: --segment instead of ECGFounder's --length 10, and back
    if overrides.get("segment_s") is not None:
        base["length_s"] = None
    if overrides.get("length_s") is not None:
        base["segment_s"] = None
    for k, v in overrides.items():
        if k not in names:
            raise TypeError(f"unknown preprocess setting {k!r}")
        if v is False and k in ("bandpass", "notch"):
            base[k] = None
        elif v is not None:
            base[k] = v
    if base.get("leads") is not None:
        base["leads"] = parse_lead_list(base["leads"])
    return PreprocessConfig(**base).validate()

