"""Batch inference shared by ``embed``, ``predict`` and ``saliency``.

The flow, for any model and any input table:

1. **adapt** each batch to the model's input contract
   (:func:`adapt_batches`): a raw records table goes through the preprocess
   preset the model names (``contract.preset``); a preprocessed table is
   checked against the contract — leads reordered or zero-filled (with a
   warning), a different rate resampled (with a note), a longer row cut into
   non-overlapping windows, a shorter one zero-padded (with a warning), a
   different normalisation refused;
2. **run** the model over windows in batches (:class:`Runner`), under
   ``torch.inference_mode`` and optional bf16 autocast;
3. **aggregate** windows back to rows and rows back to records
   (:class:`RecordGrouper`): adjacent rows with the same ``record_id`` form one
   record, so 5 s segments of a 10 s ECG pool into one embedding or one
   prediction per record. Memory stays bounded by the batch size.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import torch

from ecgtool.errors import InputError, RecordError, RecordErrors, UsageError
from ecgtool.io import arrays as A
from ecgtool.io import schema as S
from ecgtool.io.shard import in_shard, parse_shard, shard_path  # noqa: F401  (the commands import them here)
from ecgtool.models.contract import InputContract

log = logging.getLogger("ecgtool")

POOLS = ("mean", "max", "none")
PRECISIONS = ("auto", "fp32", "bf16")


# --------------------------------------------------------------------------- adaptation


@dataclass
class Adapted:
    """One input batch made ready for the model."""

    batch: pa.RecordBatch  # the input rows (signal dropped), one per row of ``x``'s first axis
    x: np.ndarray  # (rows, windows, leads, samples) float32
    valid: np.ndarray  # (rows,) bool: rows that could be used
    display: np.ndarray | None = None  # like x, in mV (not normalised), when asked for and available


class Adapter:
    """Turns table batches into (rows, windows, leads, samples) model input."""

    def __init__(self, contract: InputContract, meta: S.TableMeta, errors: RecordErrors,
                 shard: tuple[int, int] | None = None, display: bool = False, writable: bool = True,
                 crops: int | None = None):
        self.contract = contract
        # K evenly spaced windows over a row longer than the model's window (test-time averaging),
        # instead of the non-overlapping ones
        self.crops = crops
        # False: ``x`` may be a read-only view of the Arrow buffer (the caller copies it into batches)
        self.writable = writable
        self.errors = errors
        self.shard = shard
        self.notes: set[str] = set()
        self.meta = meta
        self.maps: dict[tuple, object] = {}
        self.preprocessed = meta.preprocessing is not None
        if self.preprocessed:
            from ecgtool.models.adapt import check_preprocessed

            check_preprocessed(meta.preprocessing, contract)
            self.pre = None
            self.display_pre = None
        else:
            from ecgtool.preprocess import Preprocessor, make_config

            if contract.preset is None:
                raise UsageError("the model names no preprocessing preset; preprocess the table first")
            cfg = make_config(preset=contract.preset, leads=list(contract.leads))
            if crops:  # whole records, cropped below (rather than the preset's non-overlapping windows)
                cfg.segment_s = None
            self.pre = Preprocessor(cfg, errors, for_model=True)
            # the same steps without normalisation: the signal in mV, for pictures
            self.display_pre = (Preprocessor(make_config(preset=contract.preset, leads=list(contract.leads),
                                                         normalisation="none"), RecordErrors("skip"))
                                if display else None)
            self._note(f"applying preprocess preset {contract.preset!r} ({contract.describe()})")

    def _note(self, msg: str, warn: bool = False) -> None:
        if msg not in self.notes:
            self.notes.add(msg)
            (log.warning if warn else log.info)(msg)

    def __call__(self, batches: Iterable[pa.RecordBatch]) -> Iterator[Adapted]:
        for batch in batches:
            if self.shard is not None and batch.num_rows:
                ids = S.column_values(batch, S.RECORD_ID)
                keep = [i for i, r in enumerate(ids) if in_shard(r, self.shard)]
                if not keep:
                    continue
                batch = A.take(batch, keep)
            shown = None
            if self.pre is not None:
                out = self.pre.process(batch)
                if self.display_pre is not None:
                    shown = self.display_pre.process(batch)
                if out is None or out.num_rows == 0:
                    continue
                batch = out
            if batch.num_rows == 0:
                continue
            ad = self._adapt(batch)
            if shown is not None and shown.num_rows == batch.num_rows:
                ad.display = self._adapt(shown).x
            yield ad

    def _adapt(self, batch: pa.RecordBatch) -> Adapted:
        from ecgtool.signal.resample import resample
        from ecgtool.signal.segment import crop_or_pad, windows

        c = self.contract
        x = S.batch_signal_array(batch)
        fs = S.column_values(batch, S.FS)
        leads = S.column_values(batch, S.LEADS)
        if len(set(fs)) > 1 or any(l != leads[0] for l in leads):
            raise InputError("rows of one batch differ in sampling rate or leads",
                             "run 'ecgtool preprocess' so that every row shares them")
        fs0, leads0 = float(fs[0]), list(leads[0])
        if S.LEAD_MASK in batch.schema.names:
            for m in {tuple(m) for m in S.column_values(batch, S.LEAD_MASK) if m is not None}:
                absent = [name for name, ok in zip(leads0, m) if not ok and name in c.leads]  # the model's only
                if absent:
                    self._note(f"leads {','.join(absent)} are absent and zero-filled (as random lead masking "
                               "trains for); predictions may be less reliable", warn=True)
        key = tuple(leads0)
        if key not in self.maps:
            from ecgtool.models.adapt import lead_map_for

            self.maps[key] = lead_map_for(self.meta, leads0, c)
        lead_map = self.maps[key]
        for msg in lead_map.messages():
            self._note(msg, warn="zero-filled" in msg)
        x = lead_map(x)
        if fs0 != c.fs:
            self._note(f"resampling {fs0:g} Hz to the model's {c.fs:g} Hz (linear interpolation)")
            x = resample(x, fs0, c.fs, method="linear").astype(np.float32)
        t = x.shape[-1]
        if t > c.n_samples and self.crops:
            starts = np.linspace(0, t - c.n_samples, self.crops).round().astype(np.int64)
            self._note(f"rows of {t} samples: {self.crops} crop(s) of {c.n_samples} samples, evenly spaced "
                       f"(starts {', '.join(map(str, starts[:6]))}{', ...' if len(starts) > 6 else ''})")
            w = np.stack([x[..., a:a + c.n_samples] for a in starts], axis=-3)
        elif t > c.n_samples:
            if t % c.n_samples:
                self._note(f"rows of {t} samples are cut into {t // c.n_samples} window(s) of {c.n_samples}; "
                           f"the last {t % c.n_samples} samples are dropped")
            w = windows(x, c.n_samples)  # (N, W, L, n)
        else:
            if self.crops and self.crops > 1:
                self._note(f"rows of {t} samples are not longer than the model's window ({c.n_samples}): "
                           f"one window, --crops {self.crops} has no effect on them", warn=True)
            if t < c.n_samples:
                self._note(f"rows of {t} samples ({t / c.fs:g} s) are zero-padded to the model's "
                           f"{c.n_samples} ({c.seconds:g} s)", warn=True)
                x = crop_or_pad(x, c.n_samples)
            w = x[:, None]
        w = np.ascontiguousarray(w, dtype=np.float32)
        if self.writable and not w.flags.writeable:  # a zero-copy view of the Arrow buffer
            w = w.copy()
        valid = np.isfinite(w).all(axis=(1, 2, 3))
        if not valid.all():
            ids = S.column_values(batch, S.RECORD_ID)
            for i in np.flatnonzero(~valid):
                self.errors(RecordError(str(ids[i]), "NaN or infinite values in the signal",
                                        "run 'ecgtool preprocess' (its --nan policy) first"))
        keep = [i for i, col in enumerate(batch.schema.names) if col != S.SIGNAL]
        slim = pa.RecordBatch.from_arrays([batch.column(i) for i in keep],
                                          names=[batch.schema.names[i] for i in keep])
        return Adapted(slim, w, valid)


# --------------------------------------------------------------------------- running


def probabilities(logits: torch.Tensor, temperature: float = 1.0, task: str = "multilabel") -> torch.Tensor:
    """Logits to probabilities: softmax over labels for ``multiclass``, else a sigmoid per label,
    after dividing by the checkpoint's temperature."""
    z = logits / float(temperature)
    return torch.softmax(z, dim=-1) if task == "multiclass" else torch.sigmoid(z)


@dataclass
class WindowBatch:
    """One adapted input batch and the model's outputs for its windows."""

    batch: pa.RecordBatch        # the valid input rows (signal dropped)
    x: np.ndarray                # (rows, windows, leads, samples) model input
    display: np.ndarray | None   # like x in mV, when the adapter was asked for it
    out: dict[str, np.ndarray]   # fn's outputs by name, each (rows, windows, ...)


def run_windows(adapter: "Adapter", runner: "Runner", fn, source: Iterable[pa.RecordBatch],
                prefetch: int = 2, counts: dict | None = None) -> Iterator[WindowBatch]:
    """The inference path every command shares: adapt each batch, drop invalid rows, run ``fn``
    (with ``fn.names``) over all windows in full batches, and yield the outputs per input batch.

    ``counts`` (if given) accumulates ``rows_in`` and ``windows``."""
    counts = counts if counts is not None else {}
    counts.setdefault("rows_in", 0)
    counts.setdefault("windows", 0)

    def items():
        for ad in adapter(source):
            counts["rows_in"] += ad.batch.num_rows
            if not ad.valid.all():
                keep = np.flatnonzero(ad.valid)
                if not len(keep):
                    continue
                ad.batch, ad.x = A.take(ad.batch, keep), ad.x[keep]
                if ad.display is not None:
                    ad.display = ad.display[keep]
            n, w = ad.x.shape[:2]
            counts["windows"] += n * w
            yield ad, ad.x.reshape((n * w,) + ad.x.shape[2:])

    for ad, res in runner.stream(fn, items(), prefetch=prefetch):
        n, w = ad.x.shape[:2]
        yield WindowBatch(ad.batch, ad.x, ad.display,
                          {k: v.reshape((n, w) + v.shape[1:]) for k, v in zip(fn.names, res)})


class Runner:
    """Applies a model function to many windows in fixed-size batches."""

    def __init__(self, model: torch.nn.Module, device: torch.device, precision: str = "fp32",
                 batch_size: int = 32):
        if precision not in PRECISIONS:
            raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        if batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, not {batch_size}")
        self.model = model.eval().to(device)
        self.device = device
        from ecgtool.models.devices import resolve_precision

        self.precision = resolve_precision(precision, device)
        self.batch_size = batch_size
        from ecgtool.models.base import EcgModel

        prepare = getattr(type(model), "prepare", None)
        self.prepares = prepare is not None and prepare is not EcgModel.prepare

    def _forward(self, fn, x: np.ndarray | torch.Tensor) -> list[np.ndarray]:
        if self.prepares:  # the model's own numpy input transform (e.g. HuBERT-ECG's flatten + decimate)
            x = np.ascontiguousarray(self.model.prepare(x.numpy() if isinstance(x, torch.Tensor) else x),
                                     dtype=np.float32)
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x if x.flags.writeable else x.copy())
        xb = x.to(self.device, non_blocking=True)
        with torch.inference_mode(), torch.autocast(device_type=self.device.type, dtype=torch.bfloat16,
                                                    enabled=self.precision == "bf16"):
            res = fn(xb)
        res = res if isinstance(res, tuple) else (res,)
        return [r.float().cpu().numpy() for r in res]

    def __call__(self, fn: Callable[[torch.Tensor], torch.Tensor | tuple], x: np.ndarray) -> list[np.ndarray]:
        """``fn(model_input) -> tensor or tuple of tensors`` over ``x`` (M, L, T); outputs as float32 numpy."""
        outs = [self._forward(fn, x[start:start + self.batch_size]) for start in range(0, len(x), self.batch_size)]
        if not outs:
            return []
        return [np.concatenate([o[k] for o in outs]) for k in range(len(outs[0]))]

    def stream(self, fn, items: Iterable[tuple[object, np.ndarray]], prefetch: int = 2
               ) -> Iterator[tuple[object, list[np.ndarray]]]:
        """``fn`` over a stream of ``(key, x)`` with ``x`` (m, L, T): yields ``(key, outputs)`` in order.

        Windows of consecutive items share full batches of ``batch_size``, whatever the size of the
        input batches. With ``prefetch`` > 0, reading the items and assembling the next batches
        (in pinned memory for CUDA) run in a background thread, ``prefetch`` batches ahead.
        """
        from ecgtool.io.threads import background

        batches = _assemble(items, self.batch_size, pin=self.device.type == "cuda")
        if prefetch > 0:
            batches = background(batches, depth=prefetch, name="ecgtool-batches")
        done: deque = deque()  # output arrays of windows run, not yet handed out
        for xb, finished in batches:
            done.append(self._forward(fn, xb))
            for key, n in finished:
                yield key, _take(done, n)


def _assemble(items: Iterable[tuple[object, np.ndarray]], size: int, pin: bool = False):
    """Yields ``(batch of windows, [(key, n), ...] of the items complete with this batch)``."""
    buf: list[np.ndarray] = []
    nbuf = 0
    waiting: list[tuple[object, int]] = []  # items whose windows are (partly) still in ``buf``

    def cut(n: int):
        nonlocal nbuf
        out = torch.empty((n,) + buf[0].shape[1:], dtype=torch.float32, pin_memory=pin)
        dst = out.numpy()
        filled = 0
        while filled < n:
            part = buf[0]
            k = min(n - filled, len(part))
            dst[filled:filled + k] = part[:k]
            filled += k
            if k == len(part):
                buf.pop(0)
            else:
                buf[0] = part[k:]
        nbuf -= n
        return out

    for key, x in items:
        if not len(x):
            raise ValueError("an item without windows")
        buf.append(x)
        nbuf += len(x)
        waiting.append((key, len(x)))
        while nbuf >= size:
            xb = cut(size)
            # items whose last window is in this batch are complete
            finished, pending = _complete(waiting, nbuf)
            waiting = pending
            yield xb, finished
    if nbuf:
        yield cut(nbuf), waiting


def _complete(waiting: list[tuple[object, int]], left: int):
    """Split ``waiting`` into items fully run and items with some of the last ``left`` windows."""
    total = sum(n for _, n in waiting)
    run = total - left
    finished, acc = [], 0
    for i, (key, n) in enumerate(waiting):
        if acc + n > run:
            return finished, waiting[i:]
        acc += n
        finished.append((key, n))
    return finished, []


def _take(done: deque, n: int) -> list[np.ndarray]:
    """The first ``n`` windows' outputs from the queue of output chunks."""
    parts: list[list[np.ndarray]] = []
    got = 0
    while got < n:
        head = done[0]
        m = len(head[0])
        if got + m <= n:
            parts.append(done.popleft())
            got += m
        else:
            k = n - got
            parts.append([a[:k] for a in head])
            done[0] = [a[k:] for a in head]
            got = n
    if len(parts) == 1:
        return parts[0]
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]


# --------------------------------------------------------------------------- grouping


class RecordGrouper:
    """Groups adjacent rows with the same ``record_id`` across batches.

    ``push(batch, values)`` takes the rows of one batch (signal dropped) and a
    dict of per-row arrays (first axis = rows); it returns the finished groups
    as a list of ``(first_row_batch, {name: [value of each row of the record]})``.
    Call ``flush()`` at the end for the last group.
    """

    def __init__(self):
        self._pending_row: pa.RecordBatch | None = None
        self._pending_id = None
        self._pending_vals: dict[str, list[np.ndarray]] = {}

    def push(self, batch: pa.RecordBatch, values: dict[str, np.ndarray]):
        ids = S.column_values(batch, S.RECORD_ID)
        done = []
        for i, rid in enumerate(ids):
            if rid != self._pending_id and self._pending_row is not None:
                done.append(self._take())
            if self._pending_row is None:
                self._pending_row = batch.slice(i, 1)
                self._pending_id = rid
                self._pending_vals = {k: [] for k in values}
            for k, v in values.items():
                self._pending_vals[k].append(v[i])
        return done

    def _take(self):
        out = (self._pending_row, self._pending_vals)
        self._pending_row, self._pending_id, self._pending_vals = None, None, {}
        return out

    def flush(self):
        return [self._take()] if self._pending_row is not None else []


def pool_windows(v: np.ndarray, how: str) -> np.ndarray:
    if how == "mean":
        return v.mean(axis=0)
    if how == "max":
        return v.max(axis=0)
    raise ValueError(how)


def passthrough(batch: pa.RecordBatch, drop: Sequence[str] = ()) -> pa.RecordBatch:
    names = [n for n in batch.schema.names if n not in drop]
    return pa.RecordBatch.from_arrays([batch.column(batch.schema.get_field_index(n)) for n in names], names=names)


def vector_column(v: np.ndarray) -> pa.Array:
    """(N, D) float32 -> fixed_size_list<float32, D>."""
    v = np.ascontiguousarray(v, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(A.from_numpy(v.reshape(-1), pa.float32()), v.shape[1])


def frames_column(rows: Sequence[np.ndarray]) -> pa.Array:
    """Per-row (frames, D) arrays -> list<fixed_size_list<float32, D>>."""
    d = rows[0].shape[1]
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum([r.shape[0] for r in rows], out=offsets[1:])
    flat = np.concatenate([np.ascontiguousarray(r, dtype=np.float32).reshape(-1) for r in rows])
    inner = pa.FixedSizeListArray.from_arrays(A.from_numpy(flat, pa.float32()), d)
    return pa.ListArray.from_arrays(A.from_numpy(offsets), inner)
