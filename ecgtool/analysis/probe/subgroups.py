"""Subgroups of a probe's report: ``--subgroup`` specs, the group of each record, the table per group.

:func:`parse_subgroup` reads ``col``, ``col:bands`` or ``col:bands=40,60,80``;
:func:`subgroup_values` gives each record its group (a value, an age band or
``missing``); ``_subgroups`` evaluates the test split per group.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from ecgtool.analysis import metrics as mt
from ecgtool.errors import UsageError
from ecgtool.evaluation.values import value_text

log = logging.getLogger("ecgtool")

AGE_BANDS = (40.0, 60.0, 80.0)


def parse_subgroup(spec: str) -> tuple[str, list[float] | None]:
    """``col`` or ``col:bands`` (age bands <40, 40-60, 60-80, >=80) or ``col:bands=30,50,70``."""
    if ":" not in spec:
        return spec, None
    col, how = spec.split(":", 1)
    if how == "bands":
        return col, list(AGE_BANDS)
    if how.startswith("bands="):
        try:
            edges = sorted(float(x) for x in how[6:].split(",") if x.strip())
        except ValueError:
            raise UsageError(f"--subgroup {spec}: band edges must be numbers", "e.g. age:bands=40,60,80")
        if not edges:
            raise UsageError(f"--subgroup {spec}: no band edges", "e.g. age:bands=40,60,80")
        return col, edges
    raise UsageError(f"--subgroup {spec}: unknown form {how!r}", "use COLUMN, COLUMN:bands or COLUMN:bands=40,60,80")


def _fmt_edge(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def subgroup_values(values: np.ndarray, edges: list[float] | None) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        nv = value_text(v)
        if nv is None:
            out[i] = "missing"
            continue
        if edges is None:
            out[i] = nv
            continue
        try:
            x = float(v)
        except (TypeError, ValueError):
            out[i] = "missing"
            continue
        if math.isnan(x):
            out[i] = "missing"
        elif x < edges[0]:
            out[i] = f"<{_fmt_edge(edges[0])}"
        elif x >= edges[-1]:
            out[i] = f">={_fmt_edge(edges[-1])}"
        else:
            j = int(np.searchsorted(edges, x, side="right"))
            out[i] = f"{_fmt_edge(edges[j - 1])}-{_fmt_edge(edges[j])}"
    return out


def _band_order(keys: list[str], edges: list[float] | None) -> list[str]:
    if edges is None:
        return sorted(keys, key=lambda k: (k == "missing", k))
    names = [f"<{_fmt_edge(edges[0])}"] + [f"{_fmt_edge(a)}-{_fmt_edge(b)}" for a, b in zip(edges, edges[1:])] \
        + [f">={_fmt_edge(edges[-1])}", "missing"]
    return [n for n in names if n in keys]


def _subgroups(data, test, Yt, Mt, Pt, Pr, has_threshold, opts) -> dict:
    out = {}
    for spec in opts.subgroups:
        col, edges = parse_subgroup(spec)
        if col not in data.meta:
            raise UsageError(f"--subgroup {spec}: no column {col!r}",
                             f"metadata columns: {', '.join(sorted(data.meta)) or '(none)'}")
        g = subgroup_values(data.meta[col][test], edges)
        keys, cnt = np.unique(g.astype(str), return_counts=True)
        keys = list(keys)
        if len(keys) > opts.max_subgroup_values:
            top = set(np.array(keys)[np.argsort(-cnt)[: opts.max_subgroup_values]])
            log.warning("--subgroup %s: %d values; the %d largest are reported", spec, len(keys),
                        opts.max_subgroup_values)
            keys = [k for k in keys if k in top]
        table = {}
        for key in _band_order(keys, edges):
            rows = np.flatnonzero(g == key)
            ev = mt.evaluate(Yt[rows], Pt[rows], Mt[rows], preds=Pr[rows], has_pred=has_threshold,
                             n_boot=opts.n_boot, seed=opts.seed, level=opts.level)
            per = {}
            for j, name in enumerate(data.label_names):
                m = Mt[rows, j]
                npos, nneg = int(Yt[rows][m, j].sum()), int((~Yt[rows][m, j]).sum())
                per[name] = {"n": int(m.sum()), "n_pos": npos}
                for k in mt.ALL_METRICS:
                    per[name][k] = mt.ev_summary(ev, k, j, mt.metric_reason(k, npos, nneg, bool(has_threshold[j])))
            macro = {k: mt.ev_summary(ev, k, None, "no label is computable in this subgroup")
                     for k in ("auroc", "auprc")}
            table[key] = {"n": int(rows.size), "per_label": per, "macro": macro}
        out[spec] = {"column": col, "bands": edges, "groups": table}
    return out
