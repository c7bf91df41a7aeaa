"""ecgtool preprocess: model-ready, fixed-shape signals."""

from __future__ import annotations

import logging
from enum import Enum
from typing import Optional

import typer
from typing_extensions import Annotated

from ecgtool.cli.app import app
from ecgtool.cli.options import BatchSize, Input, NoShard, OnError, Output, OutputFormat, Shard

log = logging.getLogger("ecgtool")


def _preset_enum() -> type[Enum]:
    """The --preset choices: every preset a model card defines."""
    from ecgtool.models.card import presets

    return Enum("Preset", {name: name for name in presets()}, type=str)


Preset = _preset_enum()


def _opt(*names: str, help: str, **kw):
    return typer.Option(*names, help=help, **kw)


def _floats(text: str, name: str, n: int) -> tuple[float, ...]:
    from ecgtool.errors import UsageError

    try:
        vals = tuple(float(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        vals = ()
    if len(vals) != n:
        raise UsageError(f"{name} expects {n} comma-separated numbers, not {text!r}")
    return vals


@app.command("preprocess")
def preprocess(
    src: Input = "-",
    output: Output = "-",
    output_format: OutputFormat = None,
    preset: Annotated[Optional[Preset], _opt(
        "--preset", metavar="NAME",
        help="A published pipeline, from the model cards ('ecgtool models info NAME' shows which model takes which): "
        f"{', '.join(p.value for p in Preset)}; other options override its values.")] = None,
    rename: Annotated[Optional[list[str]], _opt(
        "--rename", metavar="OLD=NEW",
        help="Rename a lead before selection, OLD=NEW (repeatable), e.g. ECG=I for CinC 2017's AliveCor lead I.")
    ] = None,
    leads: Annotated[Optional[str], _opt(
        "--leads", metavar="LEAD,...",
        help="Output leads in order: '12', 'I,II,V1', 'limb', ... (default: the first record's).")] = None,
    derive: Annotated[Optional[bool], typer.Option(
        "--derive/--no-derive", help="Derive III, aVR, aVL, aVF from I and II when absent (default on).")] = None,
    missing: Annotated[Optional[str], _opt(
        "--missing", metavar="zero|drop",
        help="Leads a record lacks: zero (zero-fill, lead_mask False) or drop (drop the record).")] = None,
    fs: Annotated[Optional[float], _opt(
        "--fs", metavar="HZ", help="Output sampling rate in Hz (records at this rate are untouched).")] = None,
    resample_method: Annotated[Optional[str], _opt(
        "--resample-method", metavar="linear|poly|fft",
        help="linear (ECG-FM's interpolation), poly (scipy resample_poly, anti-aliased) or fft (scipy resample, "
        "Fourier).")] = None,
    filter_set: Annotated[Optional[str], _opt(
        "--filter", metavar="none|ecgfounder",
        help="none: no band-pass, notch or baseline removal; ecgfounder: ECGFounder's filters. "
        "Options below override.")] = None,
    bandpass: Annotated[Optional[str], _opt(
        "--bandpass", metavar="LOW,HIGH",
        help="LOW,HIGH band-pass in Hz, zero-phase (see --bandpass-design), or none.")] = None,
    bandpass_design: Annotated[Optional[str], _opt(
        "--bandpass-design", metavar="butter|butter-hp-lp|fir",
        help="butter (one Butterworth band-pass), butter-hp-lp (Butterworth high-pass then low-pass) "
        "or fir (FIR, int(0.3 fs) taps, filtfilt).")] = None,
    filter_order: Annotated[Optional[int], _opt(
        "--filter-order", metavar="N", help="Butterworth order of the band-pass / high-pass.", min=1)] = None,
    notch: Annotated[Optional[str], _opt(
        "--notch", metavar="HZ|none", help="Mains notch at this frequency in Hz (usually 50 or 60), or none.")] = None,
    notch_q: Annotated[Optional[float], _opt(
        "--notch-q", metavar="Q", help="Quality factor of the notch (centre frequency / bandwidth).")] = None,
    baseline: Annotated[Optional[str], _opt(
        "--baseline", metavar="none|median|highpass",
        help="Baseline-wander removal: median (running median), highpass or none.")] = None,
    baseline_window: Annotated[Optional[float], _opt(
        "--baseline-window", metavar="S",
        help="Window of --baseline median in seconds (0.4 = ECGFounder's).")] = None,
    highpass_hz: Annotated[Optional[float], _opt(
        "--highpass-hz", metavar="HZ", help="Cut-off of --baseline highpass, Hz.")] = None,
    normalise: Annotated[Optional[str], _opt(
        "--normalise", "--normalize", metavar="METHOD",
        help="per-lead-zscore, record-zscore, record-minmax ([0, 1] over the record), lead-minmax ([-1, 1] per lead) "
        "or none.")] = None,
    norm_scope: Annotated[Optional[str], _opt(
        "--norm-scope", metavar="record|output",
        help="record: statistics over the whole record before cropping/windowing; output: over each output row.")
    ] = None,
    length: Annotated[Optional[float], _opt(
        "--length", metavar="S", help="Crop / zero-pad every record to this many seconds.")] = None,
    crop: Annotated[Optional[str], _opt(
        "--crop", metavar="start|center", help="Which part --length keeps: start or center.")] = None,
    segment: Annotated[Optional[float], _opt(
        "--segment", metavar="S",
        help="Cut into non-overlapping windows of this many seconds (remainder dropped).")] = None,
    hop: Annotated[Optional[float], _opt(
        "--hop", metavar="S",
        help="With --segment: start a window every this many seconds (overlapping windows when shorter than "
        "--segment; e.g. more training windows).")] = None,
    short: Annotated[Optional[str], _opt(
        "--short", metavar="skip|pad",
        help="Records shorter than one window: skip (a per-record error) or pad (zero-pad to one window).")] = None,
    nan: Annotated[Optional[str], _opt(
        "--nan", metavar="zero|drop",
        help="NaN samples (always flagged in q_nan): zero (replace by 0) or drop the record.")] = None,
    drop_flagged: Annotated[Optional[str], _opt(
        "--drop-flagged", metavar="FLAG,...",
        help="Drop records with these quality flags: nan,flat,clipping,amplitude or all.")] = None,
    precision: Annotated[Optional[str], _opt(
        "--precision", metavar="float32|float16|bfloat16",
        help="Round output samples to float16 or bfloat16 precision (still stored as float32; compresses to about "
        "half / 40%). Default float32.")] = None,
    batch_size: BatchSize = 64,
    shard: Shard = None,
    no_shard: NoShard = False,
    on_error: OnError = None,
) -> None:
    """Resample, filter, normalise and window record tables into fixed-shape model input.

    Every output row shares sampling rate, lead order and length. Quality flags
    (q_nan, q_flat_leads, q_clipping, q_amplitude) and lead_mask are added; all
    other columns pass through. See docs/preprocessing.md for the presets.

    \b
    Examples:
      ecgtool convert data/ -o - | ecgtool preprocess --preset ecg-fm - -o seg.parquet
      ecgtool preprocess --preset ecgfounder --notch 60 records.parquet -o x.parquet
      ecgtool preprocess --leads I,II --fs 250 --segment 10 --normalise per-lead-zscore rec.parquet -o seg.parquet
      ecgtool preprocess --preset ecg-fm --drop-flagged flat,nan --on-error skip rec.parquet -o seg.parquet
    """

    from ecgtool.cli.common import finish, parse_list, progress, record_errors
    from ecgtool.errors import UsageError
    from ecgtool.io import open_table
    from ecgtool.io.threads import default_threads
    from ecgtool.preprocess import make_config, preprocess_table
    from ecgtool.signal.quality import FLAGS

    bp = None
    if bandpass is not None:
        bp = False if bandpass.strip().lower() == "none" else _floats(bandpass, "--bandpass", 2)
    nf = None
    if notch is not None:
        if notch.strip().lower() in ("none", "off", "0"):
            nf = False
        else:
            nf = _floats(notch, "--notch", 1)[0]
            if nf not in (50.0, 60.0):
                log.warning("--notch %g: mains frequency is usually 50 or 60 Hz", nf)
    flags = None
    if drop_flagged is not None:
        flags = parse_list(drop_flagged)
        if flags == ["all"]:
            flags = list(FLAGS)
        bad = [f for f in flags if f not in FLAGS]
        if bad:
            raise UsageError(f"--drop-flagged: unknown flag {', '.join(bad)}", f"choose from {', '.join(FLAGS)} or all")

    cfg = make_config(
        preset.value if preset is not None else None,
        filter=filter_set,
        rename=rename or None,
        leads=leads,
        derive=derive,
        missing=missing,
        fs=fs,
        resample_method=resample_method,
        bandpass=bp,
        bandpass_design=bandpass_design,
        filter_order=filter_order,
        notch=nf,
        notch_q=notch_q,
        baseline=baseline,
        baseline_window_s=baseline_window,
        highpass_hz=highpass_hz,
        normalisation=normalise,
        norm_scope=norm_scope,
        length_s=length,
        crop=crop,
        segment_s=segment,
        hop_s=hop,
        short=short,
        nan=nan,
        drop_flagged=flags,
        precision=precision,
    )
    from ecgtool.io.shard import parse_shard, shard_batches, shard_path

    errors = record_errors(on_error)
    sh = parse_shard(shard, use_env=not no_shard)
    with open_table(src, batch_size=batch_size, threads=default_threads()) as reader:
        total = getattr(reader, "num_rows", None)
        batches = progress(reader, total=total, desc="preprocess", unit="rec", count=lambda b: b.num_rows)
        pre = preprocess_table(reader, shard_path(output, sh), cfg, fmt=output_format, errors=errors, argv=None,
                               batches=shard_batches(batches, sh))
    finish(errors, pre.summary())
