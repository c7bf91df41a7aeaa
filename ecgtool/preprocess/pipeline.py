"""The preprocess pipeline: :class:`Preprocessor` and the table-level drivers.

:class:`Preprocessor` turns record batches into fixed-shape output batches
(leads, quality flags, NaN policy, resampling, filters, normalisation,
length; see :mod:`ecgtool.preprocess`), with its output schema and metadata.
:func:`preprocess_batches` runs it over an iterable of batches;
:func:`preprocess_table` streams a table reader through it into a file.
``QUALITY_COLUMNS`` and ``OWNED`` name the output columns the pipeline
writes. Its settings are :class:`~ecgtool.preprocess.config.PreprocessConfig`.
"""

from __future__ import annotations

import logging
import shlex
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa

from ecgtool.errors import InputError, RecordError, RecordErrors, UsageError
from ecgtool.io import arrays as A
from ecgtool.io import schema as S
from ecgtool.preprocess.config import PreprocessConfig, rename_map, round_precision
from ecgtool.signal import filters as F
from ecgtool.signal import normalise as N
from ecgtool.signal import quality as Q
from ecgtool.signal import resample as R
from ecgtool.signal import segment as G
from ecgtool.signal.derive import apply_plan, lead_plan
from ecgtool.signal.leads import KNOWN, normalize_leads

log = logging.getLogger("ecgtool")

QUALITY_COLUMNS = S.QUALITY_COLUMNS
OWNED = {S.RECORD_ID, S.FS, S.LEADS, S.SIGNAL, S.SEGMENT, S.LEAD_MASK, *QUALITY_COLUMNS}


# --------------------------------------------------------------------------- reading rows


def _signal_rows(batch: pa.RecordBatch) -> S.SignalRows | None:
    """Row access to a variable-shape signal column, read once per batch (None for fixed-shape tables)."""
    col = S.signal_column(batch)
    return None if S.fixed_shape(col.type) is not None else S.SignalRows(col)


def _row(rows: S.SignalRows, i: int) -> np.ndarray:
    x = rows[i]
    if x.shape[0] == 0:
        raise ValueError("the record has no leads")
    return x


# --------------------------------------------------------------------------- the pipeline


class Preprocessor:
    """Turns input record batches into fixed-shape output batches.

    The output's fs, leads and length come from the config, else from the
    first good record; later records that cannot be brought to them are
    per-record errors.
    """

    def __init__(self, config: PreprocessConfig, errors: RecordErrors | None = None, for_model: bool = False):
        self.cfg = config
        self.for_model = for_model  # run by embed/predict/saliency for a model's preset (hints name preprocess)
        self.errors = errors if errors is not None else RecordErrors("fail")
        self.fs: float | None = config.fs
        self.leads: list[str] | None = list(config.leads) if config.leads else None
        self.n_samples: int | None = None
        self._plans: dict[tuple, list] = {}
        self._names: dict[tuple, tuple] = {}
        self._rename = rename_map(config.rename)
        self._generic_told: set[str] = set()
        self._sos: dict[float, list] = {}
        self.limits = Q.QualityLimits(config.flat_mv, config.clip_ms, config.clip_plateaus, config.amplitude_mv)
        self.records_in = 0
        self.records_out = 0
        self.rows_out = 0
        self.dropped: dict[str, int] = {}
        self.cropped = 0  # records longer than --length, of which only one window was kept
        self._crop_told = False

    # -- targets -------------------------------------------------------------------
    def _window(self, fs: float) -> int | None:
        sec = self.cfg.segment_s if self.cfg.segment_s is not None else self.cfg.length_s
        if sec is None:
            return None
        n = sec * fs
        if abs(n - round(n)) > 1e-6:
            raise UsageError(f"{sec} s at {fs:g} Hz is not a whole number of samples", "choose another length or --fs")
        return int(round(n))

    def _filters(self, fs: float) -> list:
        if fs in self._sos:
            return self._sos[fs]
        c = self.cfg
        steps = []
        try:
            if c.notch is not None:
                steps.append(("sos", F.notch_sos(fs, c.notch, c.notch_q)))
            if c.bandpass is not None:
                steps += F.bandpass_steps(fs, c.bandpass[0], c.bandpass[1], c.filter_order, c.bandpass_design)
            if c.baseline == "highpass":
                steps.append(("sos", F.highpass_sos(fs, c.highpass_hz, c.filter_order)))
            elif c.baseline == "median":
                steps.append(("median", F.median_kernel(fs, c.baseline_window_s)))
        except ValueError as exc:
            raise UsageError(f"cannot filter at {fs:g} Hz: {exc}", "resample first with --fs, or change the cut-offs")
        self._sos[fs] = steps
        return steps

    def output_kind(self) -> str:
        return "segments" if self.cfg.segment_s is not None else "records"

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        """Schema of the output (needs the target leads and length, known after the first record)."""
        L = len(self.leads) if self.leads is not None else None
        names = input_schema.names
        segment = self.cfg.segment_s is not None or (
            S.SEGMENT in names and pa.field(S.SEGMENT, input_schema.field(S.SEGMENT).type))
        lead_mask = self.cfg.leads is not None or (S.LEAD_MASK in names and input_schema.field(S.LEAD_MASK))
        cols = S.segments_fields(L, self.n_samples, segment, lead_mask)
        cols += [f for f in input_schema if f.name not in OWNED]
        return pa.schema(cols)

    def output_meta(self, meta_in: S.TableMeta) -> S.TableMeta:
        return meta_in.derive(
            kind=self.output_kind(),
            normalisation=self.cfg.normalisation,
            fs=self.fs,
            leads=self.leads,
            n_samples=self.n_samples,
            preprocess=self.cfg.to_dict(),
        )

    # -- one batch -----------------------------------------------------------------
    def _drop(self, why: str, rid: str | None = None) -> None:
        """A record dropped on purpose (by --nan drop or --drop-flagged): counted, and named at -v."""
        self.dropped[why] = self.dropped.get(why, 0) + 1
        if rid is not None:
            log.debug("dropped %s (%s)", rid, why)

    def _fail(self, rid: str, cause: str, hint: str | None = None) -> None:
        self.errors(RecordError(rid, cause, hint))

    def process(self, batch: pa.RecordBatch) -> pa.RecordBatch | None:
        if S.RECORD_ID not in batch.schema.names or S.FS not in batch.schema.names or S.LEADS not in batch.schema.names:
            raise InputError(
                f"the input lacks the record-table columns ({S.RECORD_ID}, {S.FS}, {S.LEADS}, {S.SIGNAL}); "
                f"it has {', '.join(batch.schema.names)}",
                "give a table made by 'ecgtool convert'",
            )
        n = batch.num_rows
        self.records_in += n
        ids = [str(x) for x in batch.column(batch.schema.get_field_index(S.RECORD_ID)).to_pylist()]
        fs_in = S.numeric_column(batch, S.FS)
        leads_in = batch.column(batch.schema.get_field_index(S.LEADS)).to_pylist()
        parts = _signal_rows(batch)
        fixed = S.batch_signal_array(batch) if parts is None else None

        groups: dict[tuple, list[int]] = {}
        rows: dict[int, np.ndarray] = {}
        for i in range(n):
            rid = ids[i]
            try:
                x = fixed[i] if fixed is not None else _row(parts, i)
            except ValueError as exc:
                self._fail(rid, str(exc))
                continue
            if x.shape[1] == 0:
                self._fail(rid, "the record has no samples")
                continue
            fs = float(fs_in[i]) if fs_in[i] is not None and np.isfinite(fs_in[i]) else 0.0
            if fs <= 0:
                self._fail(rid, f"sampling rate {fs_in[i]} is not a positive number")
                continue
            raw = tuple(leads_in[i] or ())
            names = self._names.get(raw)
            if names is None:
                names = self._names[raw] = tuple(normalize_leads(raw))
            if self._rename:
                names = tuple(self._rename.get(n, n) for n in names)
            names = self._single_lead_as_i(names, rid)
            if len(names) != x.shape[0]:
                self._fail(rid, f"{len(names)} lead names for {x.shape[0]} leads")
                continue
            if self.leads is None:
                self.leads = list(names)
            if self.fs is None:
                self.fs = fs
            if fs != self.fs and self.cfg.fs is None:
                self._fail(rid, f"sampled at {fs:g} Hz, earlier records at {self.fs:g} Hz",
                           "give --fs to resample every record to one rate")
                continue
            plan = self._plans.get(names)
            if plan is None:
                plan = lead_plan(names, self.leads, self.cfg.derive)
                self._plans[names] = plan
            absent = [w for w, p in zip(self.leads, plan) if p[0] == "missing"]
            if absent and (self.cfg.missing == "drop" or self.cfg.leads is None):
                if self.cfg.leads is None:
                    self._fail(rid, f"lacks lead{'s' if len(absent) > 1 else ''} {', '.join(absent)} of the "
                               f"first record ({', '.join(self.leads)})",
                               "give --leads to choose the leads (missing ones are zero-filled)")
                else:
                    self._drop("missing leads")
                continue
            key = (fs, x.shape[1], names)
            groups.setdefault(key, []).append(i)
            rows[i] = x

        out_idx: list[np.ndarray] = []
        out_seg: list[np.ndarray] = []
        out_sig: list[np.ndarray] = []
        out_mask: list[np.ndarray] = []
        out_q: list[dict] = []
        for (fs, _t, names), idx in groups.items():
            if fixed is not None and len(idx) == n:
                stack = fixed
            else:
                stack = np.stack([rows[i] for i in idx]) if len(idx) > 1 else rows[idx[0]][None]
            stack, mask = apply_plan(stack, self._plans[names])
            res = self._process_group(stack, mask, fs, [ids[i] for i in idx], names)
            if res is None:
                continue
            keep, seg, sig, q = res
            if len(keep) == 0:
                continue
            out_idx.append(np.asarray(idx, dtype=np.int64)[keep])
            out_seg.append(seg)
            out_sig.append(sig)
            out_mask.append(np.broadcast_to(mask, (len(keep), len(mask))))
            out_q.append(q)
        if not out_idx:
            return None
        idx = np.concatenate(out_idx)
        seg = np.concatenate(out_seg)
        order = np.lexsort((seg, idx))
        sig = np.concatenate(out_sig) if len(out_sig) > 1 else out_sig[0]
        mask = np.concatenate(out_mask)
        qcols = {c: np.concatenate([q[c] for q in out_q]) for c in QUALITY_COLUMNS}
        if not np.array_equal(order, np.arange(len(order))):  # rows back in input order
            idx, seg, sig, mask = idx[order], seg[order], sig[order], mask[order]
            qcols = {c: v[order] for c, v in qcols.items()}
        self.rows_out += len(idx)
        self.records_out += len(np.unique(idx))
        return self._assemble(batch, idx, seg, sig, mask, qcols)

    def _single_lead_as_i(self, names: tuple, rid: str) -> tuple:
        """A record with one lead under a generic name (CinC 2017's AliveCor 'ECG', 'ECG1', ...) is taken as
        lead I, what handheld and patch single-lead recorders record, when lead I is asked for;
        --rename says otherwise. Told once per name."""
        if (len(names) == 1 and names[0] not in KNOWN and names[0].upper().startswith("ECG")
                and self.cfg.leads is not None and "I" in self.cfg.leads and not self._rename):
            if names[0] not in self._generic_told:
                self._generic_told.add(names[0])
                log.warning("single lead %r (first in %s) taken as lead I; to say otherwise, give "
                            "'ecgtool preprocess' --rename %s=LEAD (before embed or predict)",
                            names[0], rid, shlex.quote(names[0]))
            return ("I",)
        return names

    def _process_group(self, x: np.ndarray, mask: np.ndarray, fs: float, ids: Sequence[str], names: Sequence[str] = ()):
        """x (n, L, T) in mV -> (kept row positions, segment index, (rows, L, T) float32, flags)."""
        c = self.cfg
        if not mask.any():
            for r in ids:
                rename = f"--rename {shlex.quote(names[0] + '=I')}"
                hint = (f"name its lead with {rename}" if "," in names[0] else
                        f"choose leads it has with --leads, e.g. --leads {shlex.quote(names[0])}, "
                        f"or name its lead with {rename}")
                if self.for_model:  # embed / predict / saliency have no such options: name the command that has
                    hint = f"rename its lead first: ecgtool preprocess {rename} ... (then give that table)"
                self._fail(r, f"has none of the leads {', '.join(self.leads)} (it has {', '.join(names)})", hint)
            return None
        q = Q.quality_flags(x, mask, self.limits, fs)
        keep = np.ones(len(x), dtype=bool)
        present_nan = q["q_nan"]
        if present_nan.any():
            all_nan = np.isnan(x[:, mask, :]).all(axis=(1, 2)) if mask.any() else np.ones(len(x), bool)
            for k in np.flatnonzero(all_nan):
                self._fail(ids[k], "every sample is NaN")
                keep[k] = False
            if c.nan == "drop":
                for k in np.flatnonzero((present_nan > 0) & keep):
                    self._drop("NaN samples", ids[k])
                    keep[k] = False
        for flag in c.drop_flagged:
            hit = q[Q.COLUMNS[flag]] > 0
            for k in np.flatnonzero(hit & keep):
                self._drop(f"flagged {flag}", ids[k])
                keep[k] = False
        if not keep.all():
            x = x[keep]
            q = {k: v[keep] for k, v in q.items()}
            ids = [r for r, k in zip(ids, keep) if k]
        pos = np.flatnonzero(keep)
        if len(x) == 0:
            return None
        if present_nan.any():
            x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
        # resample
        target_fs = self.fs if c.fs is not None else fs
        x = R.resample(x, fs, target_fs, c.resample_method)
        if x.shape[-1] == 0:
            for r in ids:
                self._fail(r, "too short to resample")
            return None
        # filter
        steps = self._filters(target_fs)
        if steps:
            x = np.asarray(x, dtype=np.float64)
            for kind, arg in steps:
                x = F.apply_step(x, kind, arg)
        if not mask.all():
            x = x * mask[:, None]
        if c.norm_scope == "record":
            x = N.normalise(x, c.normalisation, mask)
        # length
        win = self._window(target_fs)
        t = x.shape[-1]
        if win is None:
            if self.n_samples is None:
                self.n_samples = t
            if t != self.n_samples:
                for r in ids:
                    self._fail(r, f"{t} samples after resampling, earlier records have {self.n_samples}",
                               "give --length SECONDS (crop/pad) or --segment SECONDS (windows)")
                return None
            seg = np.zeros(len(x), dtype=np.int32)
            out = x
            rowpos = pos
        else:
            self.n_samples = win
            if c.segment_s is None:
                if t > win:
                    self.cropped += len(x)
                    if not self._crop_told:
                        self._crop_told = True
                        log.warning("records longer than %g s keep only their %s %g s (--length %g, --crop %s); "
                                    "to keep all of a record, cut it into windows with --segment %g instead",
                                    c.length_s, "first" if c.crop == "start" else "central", c.length_s,
                                    c.length_s, c.crop, c.length_s)
                out = G.crop_or_pad(x, win, c.crop)
                seg = np.zeros(len(x), dtype=np.int32)
                rowpos = pos
            else:
                hop = None if c.hop_s is None else max(1, int(round(c.hop_s * target_fs)))
                k = G.n_windows(t, win, hop)
                if k == 0:
                    if c.short == "pad":
                        x = G.crop_or_pad(x, win)
                        k = 1
                    else:
                        for r in ids:
                            self._fail(r, f"{t / target_fs:.2f} s is shorter than one {c.segment_s:g} s window",
                                       "use --short pad to zero-pad short records into one window")
                        return None
                w = G.windows(x, win, hop)  # (n, k, L, win)
                out = w.reshape((-1,) + w.shape[2:])
                seg = np.tile(np.arange(k, dtype=np.int32), len(x))
                rowpos = np.repeat(pos, k)
                q = {name: np.repeat(v, k) for name, v in q.items()}
        if c.norm_scope == "output":
            out = N.normalise(out, c.normalisation, mask)
        out = np.ascontiguousarray(out, dtype=np.float32)
        if c.precision != "float32":
            out = round_precision(out, c.precision)
        return rowpos, seg, out, q

    def _assemble(self, batch, idx, seg, sig, mask, qcols) -> pa.RecordBatch:
        n_out = len(idx)
        L, T = sig.shape[1], sig.shape[2]
        data: dict[str, pa.Array] = {}
        take = A.indices(idx)
        names = batch.schema.names
        data[S.RECORD_ID] = batch.column(names.index(S.RECORD_ID)).take(take).cast(pa.string())
        if self.cfg.segment_s is not None:
            data[S.SEGMENT] = A.from_numpy(seg, pa.int32())
        elif S.SEGMENT in names:
            data[S.SEGMENT] = batch.column(names.index(S.SEGMENT)).take(take)
        data[S.FS] = A.from_numpy(np.full(n_out, float(self.fs)), pa.float64())
        data[S.LEADS] = A.string_lists([self.leads] * n_out)
        values = A.from_numpy(sig.reshape(-1), pa.float32())
        data[S.SIGNAL] = pa.FixedSizeListArray.from_arrays(pa.FixedSizeListArray.from_arrays(values, T), L)
        if self.cfg.leads is not None:
            data[S.LEAD_MASK] = pa.FixedSizeListArray.from_arrays(
                A.from_numpy(np.ascontiguousarray(mask).reshape(-1), pa.bool_()), L
            )
        elif S.LEAD_MASK in names:
            data[S.LEAD_MASK] = batch.column(names.index(S.LEAD_MASK)).take(take)
        for c in QUALITY_COLUMNS:
            data[c] = A.from_numpy(qcols[c], pa.int32())
        for i, name in enumerate(names):
            if name not in OWNED:  # passed through: may be a fixed-shape column of a sliced batch
                data[name] = A.take(batch.column(i), take)
        return pa.RecordBatch.from_pydict(data)

    def summary(self) -> str:
        what = "segments" if self.cfg.segment_s is not None else "rows"
        msg = f"{self.records_in} records in, {self.rows_out} {what} out from {self.records_out} records"
        if self.cropped:
            msg += f"; {self.cropped} cropped to {self.cfg.length_s:g} s"
        if self.dropped:
            msg += "; dropped: " + ", ".join(f"{v} ({k})" for k, v in sorted(self.dropped.items()))
        return msg


def preprocess_batches(
    batches: Iterable[pa.RecordBatch],
    config: PreprocessConfig,
    errors: RecordErrors | None = None,
) -> Iterable[pa.RecordBatch]:
    """The processed batches of ``batches`` (a generator; see :class:`Preprocessor`)."""
    pre = Preprocessor(config, errors)
    for batch in batches:
        out = pre.process(batch)
        if out is not None:
            yield out


def preprocess_table(
    reader,
    dest: str,
    config: PreprocessConfig,
    fmt: str | None = None,
    errors: RecordErrors | None = None,
    argv: Sequence[str] | None = None,
    batches: Iterable[pa.RecordBatch] | None = None,
) -> Preprocessor:
    """Stream ``reader``'s batches through the pipeline into ``dest``.

    ``batches`` may wrap the reader (e.g. with a progress bar). The writer opens
    with the first output batch (the output's shape is known then); a run that
    yields nothing still writes an empty table. Encoding and writing run in a
    background thread, at most two batches behind, so that they overlap with
    the signal processing (memory stays bounded by the batch size). Returns
    the :class:`Preprocessor` (counts, targets).
    """
    from ecgtool.io.stream import TableWriter

    pre = Preprocessor(config, errors)
    writer = None

    def open_writer():
        schema = pre.output_schema(reader.schema)
        meta = pre.output_meta(reader.meta).add_step(argv)
        # a folder dest: part files encoded in parallel, at least as many as the input's rows make busy threads
        return TableWriter(dest, schema, meta, fmt=fmt, background=True, errors=pre.errors,
                           expected_rows=getattr(reader, "num_rows", None))

    try:
        for batch in batches if batches is not None else reader:
            out = pre.process(batch)
            if out is None:
                continue
            if writer is None:
                writer = open_writer()
            writer.write(out)
        if writer is None:
            writer = open_writer()
        writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return pre
