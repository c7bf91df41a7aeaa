"""Saliency: where in the tracing a model looked.

Two methods:

* ``attention`` (transformers): the last layer's attention, averaged over
  heads, maximum over keys for each query frame, stretched to the signal by
  linear interpolation and min-max normalised — what ECG-FM's saliency script
  does. One trace, shared by every lead.
* ``gradient`` (any model, the CNN too): integrated gradients of the chosen
  label's logit from an all-zero baseline (``steps`` points of the straight
  path, Riemann midpoint rule), absolute value, smoothed over 40 ms and
  min-max normalised per record. One trace per lead.

Records longer than the model's window are explained window by window, and
the traces are joined in time order; segments of one record are joined too.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
import torch

from ecgtool.errors import RecordErrors, UsageError
from ecgtool.io import schema as S
from ecgtool.io.stream import TableReader, TableWriter
from ecgtool.models.inference import Adapter, RecordGrouper, Runner, probabilities, run_windows

log = logging.getLogger("ecgtool")

METHODS = ("auto", "attention", "gradient")


def minmax(x: np.ndarray, axis=None) -> np.ndarray:
    lo = x.min(axis=axis, keepdims=True)
    hi = x.max(axis=axis, keepdims=True)
    return np.where(hi > lo, (x - lo) / np.where(hi > lo, hi - lo, 1), 0.0).astype(np.float32)


def attention_saliency(model, x: torch.Tensor, n_leads: int | None = None, n_samples: int | None = None) -> torch.Tensor:
    """Model input -> (B, L, T): last-layer attention, head-averaged, max over keys, per token, spread
    over the samples each token covers (the model says how: :meth:`EcgModel.token_saliency`).
    ``n_leads`` / ``n_samples``: the contract's, when ``x`` is a prepared input of another shape."""
    attn = model.attention(x, layer=-1)  # (B, queries, keys)
    per_token = attn.max(dim=2).values.float().cpu().numpy()
    L = n_leads if n_leads is not None else x.shape[1]
    T = n_samples if n_samples is not None else x.shape[-1]
    return torch.from_numpy(np.ascontiguousarray(model.token_saliency(per_token, L, T), dtype=np.float32))


def integrated_gradients(model, x: torch.Tensor, target: torch.Tensor, steps: int = 16) -> torch.Tensor:
    """(B, L, T) attributions of ``logits[:, target]`` (zero baseline)."""
    total = torch.zeros_like(x)
    alphas = (torch.arange(steps, dtype=x.dtype, device=x.device) + 0.5) / steps
    for a in alphas:
        xa = (a * x).detach().requires_grad_(True)
        logits = model.logits(xa)
        sel = logits.gather(1, target[:, None]).sum()
        (g,) = torch.autograd.grad(sel, xa)
        total += g
    return total * x / steps


def smooth(x: np.ndarray, width: int) -> np.ndarray:
    if width <= 1:
        return x
    k = np.ones(width, dtype=np.float32) / width
    flat = x.reshape(-1, x.shape[-1])
    out = np.stack([np.convolve(r, k, mode="same") for r in flat])
    return out.reshape(x.shape)


def choose_method(model, method: str) -> str:
    if method not in METHODS:
        raise UsageError(f"--method must be one of {', '.join(METHODS)}, not {method!r}")
    from ecgtool.models.base import ATTENTION

    has_attention = model.has(ATTENTION)
    if method == "auto":
        return "attention" if has_attention else "gradient"
    if method == "attention" and not has_attention:
        raise UsageError(f"a {model.family} model has no attention", "use --method gradient")
    return method


def saliency_table(
    reader: TableReader,
    dest: str,
    model: torch.nn.Module,
    *,
    device: torch.device,
    label: str | None = None,
    method: str = "auto",
    steps: int = 16,
    batch_size: int = 8,
    png_dir: str | Path | None = None,
    errors: RecordErrors | None = None,
    fmt: str | None = None,
    argv: Sequence[str] | None = None,
    batches: Iterable[pa.RecordBatch] | None = None,
) -> int:
    """Write one row per record: the label explained, its probability, and the
    saliency per lead (lead-major, same length as the model-input signal);
    with ``png_dir`` a PNG per record on ECG grid paper. Returns the row count."""
    from ecgtool.analysis.ecgplot import plot_saliency
    from ecgtool.models.apply import label_settings, model_name

    errors = errors or RecordErrors()
    method = choose_method(model, method)
    has_head = model.get_classifier() is not None
    names = None
    if has_head:
        names, _, temperature, task, _ = label_settings(model)
    elif method == "gradient":
        raise UsageError("the gradient method explains a label, and this model has no classifier head",
                         "use a finetuned checkpoint, or --method attention for a transformer")
    if label is not None:
        if names is None:
            raise UsageError("--label needs a model with a classifier head")
        if label not in names:
            import difflib

            close = difflib.get_close_matches(label, names, n=3)
            raise UsageError(f"unknown label {label!r}",
                             f"did you mean {', '.join(close)}?" if close else "see the model's label names")
    adapter = Adapter(model.contract, reader.meta, errors, display=True)
    runner = Runner(model, device, "fp32", batch_size)
    model.eval().to(device)
    c = model.contract
    width = max(1, int(round(0.04 * c.fs)))
    schema = pa.schema(S.saliency_fields())
    meta = reader.meta.derive(kind="saliency", model=model_name(model), method=method,
                              contract=c.to_dict()).add_step(argv)
    writer = TableWriter(dest, schema, meta, fmt=fmt, errors=errors)
    grouper = RecordGrouper()
    rows = 0
    png = Path(png_dir) if png_dir else None
    if png is not None:
        png.mkdir(parents=True, exist_ok=True)

    def probs_of(x):
        if names is None:
            return torch.zeros(x.shape[0], 1, device=x.device)
        return probabilities(model.logits(x), temperature, task)

    probs_of.names = ["p"]

    def emit(groups, units):
        nonlocal rows
        out = []
        for first, vals in groups:
            rid = first.column(first.schema.get_field_index(S.RECORD_ID))[0].as_py()
            sig = np.concatenate(vals["x"], axis=-1)  # windows/segments joined in time
            sal = np.concatenate(vals["s"], axis=-1)
            sal = minmax(np.minimum(sal, np.percentile(sal, 99)))  # a few extreme values would wash the rest out
            lab, prob = None, None
            if names is not None:
                k = int(vals["k"][0])
                lab, prob = names[k], float(np.mean(vals["p"]))
            out.append({S.RECORD_ID: rid, S.FS: c.fs, S.LEADS: list(c.leads), S.LABEL: lab,
                        S.PROBABILITY: prob, S.METHOD: method, S.SIGNAL: sig, S.SALIENCY: sal})
            if png is not None:
                plot_saliency(sig, sal, c.fs, list(c.leads), png / f"{_safe(rid)}.png",
                              title=f"{rid}: {lab} (p = {prob:.2f})" if lab else f"{rid}",
                              subtitle=f"{method} saliency, {model_name(model)}",
                              units=units)
        if out:
            batch = pa.RecordBatch.from_pydict({
                k: (S.signals_to_arrow([r[k] for r in out]) if k in (S.SIGNAL, S.SALIENCY)
                    else pa.array([r[k] for r in out], type=schema.field(k).type)) for k in schema.names})
            writer.write(batch)
            rows += batch.num_rows

    units = "mV"
    try:
        for wb in run_windows(adapter, runner, probs_of, batches if batches is not None else reader, prefetch=0):
            n, w, L, t = wb.x.shape
            flat = wb.x.reshape(n * w, L, t)
            p = wb.out["p"]
            if names is not None:
                if label is not None:
                    k = np.full(n, names.index(label))
                else:
                    k = p.mean(axis=1).argmax(axis=1)  # the most probable label of each row
                pk = p[np.arange(n), :, k]  # (n, w)
            else:
                k = np.zeros(n, dtype=int)
                pk = np.zeros((n, w), dtype=np.float32)
            sal = np.empty((n * w, L, t), dtype=np.float32)
            kk = np.repeat(k, w)
            for start in range(0, n * w, batch_size):
                chunk = np.ascontiguousarray(model.prepare(flat[start:start + batch_size]), dtype=np.float32)
                xb = torch.from_numpy(chunk).to(device)
                if method == "attention":
                    with torch.inference_mode():
                        s = attention_saliency(model, xb, L, t).numpy()
                    sal[start:start + len(xb)] = s
                else:
                    tb = torch.from_numpy(kk[start:start + batch_size]).to(device)
                    a = integrated_gradients(model, xb, tb, steps).abs().detach().cpu().numpy()
                    sal[start:start + len(xb)] = smooth(model.input_saliency(a, L, t), width)
            sal = sal.reshape(n, w, L, t).transpose(0, 2, 1, 3).reshape(n, L, w * t)
            shown = wb.display if wb.display is not None else wb.x
            units = "mV" if wb.display is not None else c.normalisation
            xs = shown.transpose(0, 2, 1, 3).reshape(n, L, w * t)
            emit(grouper.push(wb.batch, {"x": xs, "s": sal, "k": k, "p": pk.mean(axis=1)}), units)
        emit(grouper.flush(), units)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return rows


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(name))
