"""A probe run and its report: :func:`run_probe` and the blocks of its JSON report.

:func:`run_probe` fits the head on every split, chooses thresholds and
temperatures on validation, and reports on test: metrics with bootstrap CIs,
calibration before and after temperature scaling, conformal coverage,
selective prediction, subgroups, the data-scaling curve and the per-record
test predictions. :func:`paired_difference` compares the probe with its
baseline on the same test records.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
from scipy.special import expit, softmax

from ecgtool.analysis import calibration as cal
from ecgtool.analysis import metrics as mt
from ecgtool.analysis.probe.data import ProbeData, _label_matrix
from ecgtool.analysis.probe.heads import HEADS, ProbeOptions, _head_description, fit_head
from ecgtool.analysis.probe.linear import fit_logistic, fit_stats, standardise
from ecgtool.analysis.probe.splits import Split
from ecgtool.analysis.probe.subgroups import _subgroups
from ecgtool.errors import InputError, UsageError
from ecgtool.evaluation import calibration as ecal

log = logging.getLogger("ecgtool")


def run_probe(data: ProbeData, splits: list[Split], opts: ProbeOptions) -> tuple[dict, dict]:
    """Fit, predict, evaluate. Returns (JSON-ready report, arrays for figures)."""
    from ecgtool.analysis import conformal as cf

    if opts.threshold_rule not in ("f1", "youden"):
        raise UsageError(f"unknown threshold rule {opts.threshold_rule!r}", "use f1 or youden")
    if opts.head not in HEADS:
        raise UsageError(f"--head {opts.head!r}: expected one of {', '.join(HEADS)}")
    if opts.alpha is not None:
        cf.check_alpha(opts.alpha)
    names = data.label_names
    L = len(names)
    Yb, Mb = _label_matrix(data)
    n = len(data.record_ids)
    logits = np.full((n, L), np.nan)
    probs = np.full((n, L), np.nan)
    probs_cal = np.full((n, L), np.nan)
    preds = np.zeros((n, L), dtype=bool)
    thr_rec = np.full((n, L), np.nan)  # the validation threshold each test record was decided with
    in_test = np.zeros(n, dtype=bool)
    fold_info = []
    has_threshold = np.ones(L, dtype=bool)
    temps_all: list[list[float | None]] = []
    thr_all: list[list[float | None]] = []
    C_all: list = []
    head_info: list[dict] = []
    conf_cal: list[dict] = []
    sets = np.zeros((n, L), dtype=bool)          # multi-class: APS set membership
    has1 = np.ones((n, L), dtype=bool)           # multi-label: 1 in the set
    has0 = np.ones((n, L), dtype=bool)           # multi-label: 0 in the set
    conf_ok = np.ones(L, dtype=bool)
    clock = {"fit": 0.0, "evaluate": 0.0, "subgroups": 0.0, "scaling": 0.0}
    t0 = time.perf_counter()
    for sp in splits:
        tr = sp.train[data.mask[sp.train] if data.multiclass else Mb[sp.train].any(axis=1)]
        if tr.size == 0:
            raise InputError(f"{sp.name}: no labelled record in the training split")
        hf = fit_head(data, tr, sp.val, sp.test, opts)
        zv, zt = hf.zv, hf.zt
        if hf.C is not None:
            C_all.append(hf.C)
        head_info.append(hf.info)
        logits[sp.test] = zt
        in_test[sp.test] = True
        if data.multiclass:
            mv = data.mask[sp.val]
            T = ecal.fit_temperature(zv[mv], data.Y[sp.val][mv], multiclass=True)
            probs[sp.test] = softmax(zt, axis=1)
            probs_cal[sp.test] = ecal.apply_temperature(zt, T, multiclass=True)
            pred = np.zeros_like(zt, dtype=bool)
            pred[np.arange(len(zt)), zt.argmax(axis=1)] = True
            preds[sp.test] = pred
            temps_all.append([T])
            thr_all.append([])
            if opts.alpha is not None:
                c = cf.calibrate_aps(ecal.apply_temperature(zv, T, multiclass=True), data.Y[sp.val],
                                     opts.alpha, names)
                conf_cal.append(c)
                sets[sp.test] = cf.aps_sets(probs_cal[sp.test], c)
        else:
            ts, thr = [], []
            pv = expit(zv)
            pv_cal = np.full_like(pv, np.nan)
            for j in range(L):
                mv = Mb[sp.val, j]
                yv = Yb[sp.val, j][mv]
                t = mt.choose_threshold(yv, pv[mv, j], opts.threshold_rule)
                T = ecal.fit_temperature(zv[mv, j], yv)
                thr.append(t)
                ts.append(T)
                if t is None:
                    has_threshold[j] = False
                else:
                    preds[sp.test, j] = expit(zt[:, j]) >= t
                    thr_rec[sp.test, j] = t
                probs_cal[sp.test, j] = ecal.apply_temperature(zt[:, j], T)
                pv_cal[:, j] = ecal.apply_temperature(zv[:, j], T)
            probs[sp.test] = expit(zt)
            temps_all.append(ts)
            thr_all.append(thr)
            if opts.alpha is not None:
                c = cf.calibrate_labels(pv_cal, Yb[sp.val], Mb[sp.val], opts.alpha, names)
                conf_cal.append(c)
                h1, h0, ok = cf.label_sets(probs_cal[sp.test], c, names)
                has1[sp.test], has0[sp.test] = h1, h0
                conf_ok &= ok
        fold_info.append({"name": sp.name, "train": int(tr.size), "val": int(sp.val.size), "test": int(sp.test.size)})

    clock["fit"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    test = np.flatnonzero(in_test)
    Yt, Mt, Pt = Yb[test], Mb[test], probs[test]
    ev = mt.evaluate(Yt, Pt, Mt, preds=preds[test], has_pred=has_threshold, n_boot=opts.n_boot, seed=opts.seed,
                     level=opts.level)
    per_label: dict[str, dict] = {}
    for j, name in enumerate(names):
        m = Mt[:, j]
        npos, nneg = int(Yt[m, j].sum()), int((~Yt[m, j]).sum())
        entry: dict[str, Any] = {"n_test": int(m.sum()), "n_pos": npos, "n_neg": nneg}
        if not data.multiclass:
            entry["threshold"] = [t[j] for t in thr_all] if len(splits) > 1 else thr_all[0][j]
            if C_all:
                entry["C"] = [c[j] for c in C_all] if len(splits) > 1 else C_all[0][j]
        for k in mt.ALL_METRICS:
            reason = mt.metric_reason(k, npos, nneg, bool(has_threshold[j]))
            entry[k] = mt.ev_summary(ev, k, j, reason)
        if not data.multiclass:
            entry["calibration"] = _calibration_binary(Yt[m, j], logits[test][m, j], probs_cal[test][m, j],
                                                       [t[j] for t in temps_all], opts.n_bins, npos, nneg)
        per_label[name] = entry
    macro = {k: mt.ev_summary(ev, k, None, "no label is computable on the test split") for k in mt.ALL_METRICS}
    macro["labels_computable"] = {k: int(np.isfinite(ev["point"][k]).sum()) for k in mt.ALL_METRICS}
    protocol: dict[str, Any] = {
        "pooling": "mean of segment embeddings per record" if opts.head != "attention"
        else "per-token features of every segment of a record, concatenated",
        "head": opts.head,
        "model": _head_description(opts, data.multiclass),
        "threshold": "argmax" if data.multiclass else f"max {'F1' if opts.threshold_rule == 'f1' else 'Youden J'} on validation",
        "temperature": "fitted on validation (NLL)",
        "bootstrap": {"n": opts.n_boot, "seed": opts.seed, "level": opts.level,
                      "method": "percentile, checked to contain the point estimate; where it does not, BCa, "
                                "else the normal interval (bootstrap SD)"},
        "splits": fold_info,
    }
    if opts.head == "linear":
        protocol["C"] = opts.C if opts.C is not None else {"chosen_on": "validation log-loss",
                                                           "grid": list(opts.c_grid)}
    else:
        protocol["head_fit"] = head_info if len(head_info) > 1 else head_info[0]
    report: dict[str, Any] = {
        "task": "multiclass" if data.multiclass else "multilabel",
        "head": opts.head,
        "labels": names,
        "records": data.counts,
        "embedding_dim": int(data.X.shape[1]),
        "protocol": protocol,
        "metrics": {"per_label": per_label, "macro": macro},
    }
    if data.multiclass:
        mk = data.mask[test]
        zt = logits[test][mk]
        yt = data.Y[test][mk]
        report["metrics"]["accuracy"] = float(np.mean(zt.argmax(axis=1) == yt)) if yt.size else None
        report["calibration"] = _calibration_multiclass(yt, zt, probs_cal[test][mk], [t[0] for t in temps_all],
                                                        opts.n_bins)
        if opts.head == "linear" and opts.C is None:
            report["protocol"]["C"] = {"chosen_on": "validation log-loss", "grid": list(opts.c_grid),
                                       "chosen": [c[0] for c in C_all]}
    # conformal prediction, calibrated on validation, coverage on test
    if opts.alpha is not None:
        report["conformal"] = _conformal_report(data, test, conf_cal, sets, has1, has0, conf_ok, Yt, Mt,
                                                probs_cal[test], opts)
    # selective prediction: the risk–coverage curve
    if data.multiclass:
        report["selective"] = cf.selective_multiclass(probs_cal[test], data.Y[test])
    else:
        report["selective"] = cf.selective_labels(Pt, Yt, Mt, thr_rec[test], names)
    clock["evaluate"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if opts.subgroups:
        report["subgroups"] = _subgroups(data, test, Yt, Mt, Pt, preds[test], has_threshold, opts)
    clock["subgroups"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if opts.scaling:
        report["scaling"] = _scaling(data, splits[0], Yb, Mb, opts, C_all[0] if C_all else None)
    clock["scaling"] = time.perf_counter() - t0
    report["protocol"]["bootstrap"]["intervals"] = mt.ci_methods(report["metrics"])
    report["test_predictions"] = _test_predictions(data, test, Yt, Mt, Pt, preds[test], has_threshold)
    report["timings_s"] = {k: round(v, 3) for k, v in clock.items()}
    arrays = {"Y": Yt, "M": Mt, "P": Pt, "P_cal": probs_cal[test], "labels": names, "multiclass": data.multiclass,
              "y_class": data.Y[test] if data.multiclass else None, "preds": preds[test],
              "has_pred": has_threshold, "record_ids": data.record_ids[test]}
    return report, arrays


def _test_predictions(data, test, Yt, Mt, Pt, Pr, has_threshold) -> dict:
    """Per test record: truth (null = unknown), probabilities and decisions, for ``ecgtool compare``."""
    y = np.where(Mt, Yt.astype(np.float64), np.nan)
    return {"record_ids": [str(r) for r in data.record_ids[test]], "labels": list(data.label_names),
            "y": [[None if not np.isfinite(v) else int(v) for v in row] for row in y],
            "p": Pt.tolist(), "pred": Pr.astype(int).tolist(), "has_pred": [bool(v) for v in has_threshold]}


def _conformal_report(data, test, cals, sets, has1, has0, ok, Yt, Mt, Pt_cal, opts) -> dict:
    from ecgtool.analysis import conformal as cf

    names = data.label_names
    out: dict[str, Any] = {"alpha": opts.alpha, "target_coverage": 1 - opts.alpha,
                           "calibrated_on": "the validation split of each fold (the same records that chose "
                                            "the threshold and the temperature)"}
    if data.multiclass:
        out["method"] = ("adaptive prediction sets (APS, Romano et al. 2020), non-randomised: the classes, most "
                         "probable first, whose probability mass ranked above them is at most qhat")
        out["calibration"] = cals if len(cals) > 1 else cals[0]
        out["test"] = cf.evaluate_sets(sets[test], data.Y[test], names, opts.n_boot, opts.seed, opts.level)
        return out
    out["method"] = ("class-conditional split conformal per label: positive if p >= t_pos and p > t_neg, "
                     "negative if p <= t_neg and p < t_pos, abstain otherwise")
    per_fold = [c["labels"] for c in cals]
    cal_labels = {}
    for name in names:
        es = [f[name] for f in per_fold]
        cal_labels[name] = es[0] if len(es) == 1 else {"folds": es}
    out["calibration"] = cal_labels
    d = np.full(has1[test].shape, cf.ABSTAIN, dtype=np.int8)
    h1, h0 = has1[test], has0[test]
    d[h1 & ~h0] = cf.POSITIVE
    d[h0 & ~h1] = cf.NEGATIVE
    out["test"] = cf.evaluate_decisions(d, ok, Yt, Mt, names, h1, h0, opts.n_boot, opts.seed, opts.level)
    for name in names:
        if not ok[names.index(name)]:
            reasons = [f[name].get("reason") for f in per_fold if f[name].get("reason")]
            out["test"]["per_label"][name]["reason"] = reasons[0] if reasons else "not computable"
    return out


def _calib_block(y, p, n_bins, logits=None, T=None, multiclass=False) -> dict:
    return {
        "ece": mt.ece(y, p, n_bins),
        "brier": mt.brier(y, p),
        "nll": mt.log_loss(y, p),
        "reliability": cal.reliability_curve(y, p, n_bins),
    }


def _calibration_binary(y, z, p_cal, temps, n_bins, npos, nneg) -> dict:
    out: dict[str, Any] = {"temperature": temps[0] if len(temps) == 1 else temps}
    if y.size == 0:
        out["reason"] = "no labelled records in the test split"
        return out
    out["before"] = _calib_block(y, expit(z), n_bins)
    if any(t is None for t in temps):
        out["after"] = None
        out["reason_after"] = "no temperature: the validation split has no positive or no negative records"
    else:
        out["after"] = _calib_block(y, p_cal, n_bins)
    if npos == 0 or nneg == 0:
        out["note"] = "the test split has a single class; ECE and Brier measure only that class"
    return out


def _calibration_multiclass(y, z, p_cal, temps, n_bins) -> dict:
    out: dict[str, Any] = {"temperature": temps[0] if len(temps) == 1 else temps,
                           "before": _calib_block(y, softmax(z, axis=1), n_bins)}
    if any(t is None for t in temps):
        out["after"] = None
        out["reason_after"] = "no temperature: the validation split has a single class"
    else:
        out["after"] = _calib_block(y, p_cal, n_bins)
    return out


def _scaling(data: ProbeData, sp: Split, Yb, Mb, opts: ProbeOptions, C_chosen) -> dict:
    """Macro AUROC on the test split against the number of training records."""
    tr = sp.train[data.mask[sp.train] if data.multiclass else Mb[sp.train].any(axis=1)]
    Cs = np.asarray(C_chosen if C_chosen is not None else [np.nan], dtype=np.float64)
    points = []
    skipped = [int(s) for s in opts.scaling if int(s) > tr.size]
    sizes = sorted({int(s) for s in opts.scaling if 0 < int(s) <= tr.size})
    if skipped:
        log.warning("--scaling: %s exceed the %d training records; left out", ",".join(map(str, skipped)), tr.size)
    Xt = data.X[sp.test]
    Yt, Mt = Yb[sp.test], Mb[sp.test]
    for size in sizes:
        vals, per_label = [], []
        for s in range(opts.scaling_seeds):
            rng = np.random.default_rng(opts.seed + 1000 + s)
            sub = np.sort(rng.choice(tr, size=size, replace=False))
            if opts.head != "linear":
                # the head refitted on the subset, with its choices made on the same validation split
                z = fit_head(data, sub, sp.val, sp.test, opts).zt
                if data.multiclass:
                    ok = np.isin(np.arange(len(data.label_names)), np.unique(data.Y[sub][data.mask[sub]]))
                else:
                    ok = np.array([(data.Y[sub][Mb[sub][:, j], j] == 1).any()
                                   and (data.Y[sub][Mb[sub][:, j], j] == 0).any() for j in range(len(data.label_names))])
                au = np.array([mt.auroc(Yt[Mt[:, j], j], z[Mt[:, j], j]) if ok[j] else np.nan
                               for j in range(z.shape[1])])
                per_label.append(au)
                vals.append(float(np.nanmean(au)) if np.isfinite(au).any() else float("nan"))
                continue
            Xs_mean, Xs_scale = fit_stats(data.X[sub])
            Xs = standardise(data.X[sub], Xs_mean, Xs_scale)
            if data.multiclass:
                m = data.mask[sub]
                present = np.unique(data.Y[sub][m])
                W, b = fit_logistic(Xs, data.Y[sub], m, float(Cs[0]), True, len(data.label_names),
                                    max_iter=opts.max_iter)
                ok = np.isin(np.arange(len(data.label_names)), present)
            else:
                Ysub, Msub = data.Y[sub], Mb[sub]
                ok = np.array([(Ysub[Msub[:, j], j] == 1).any() and (Ysub[Msub[:, j], j] == 0).any()
                               for j in range(Ysub.shape[1])])
                Msub = Msub & ok[None, :]
                W, b = fit_logistic(Xs, Ysub, Msub, Cs, False, max_iter=opts.max_iter)
            z = (standardise(Xt, Xs_mean, Xs_scale) @ W.astype(np.float32)).astype(np.float64) + b
            au = np.array([mt.auroc(Yt[Mt[:, j], j], z[Mt[:, j], j]) if ok[j] else np.nan
                           for j in range(z.shape[1])])
            per_label.append(au)
            vals.append(float(np.nanmean(au)) if np.isfinite(au).any() else float("nan"))
        v = np.array(vals)
        fin = v[np.isfinite(v)]
        points.append({
            "n_train": size,
            "macro_auroc_mean": float(fin.mean()) if fin.size else None,
            "macro_auroc_sd": float(fin.std(ddof=1)) if fin.size > 1 else None,
            "macro_auroc_per_seed": [None if not math.isfinite(x) else x for x in vals],
            "per_label_auroc_mean": {
                name: (float(np.nanmean(col)) if np.isfinite(col).any() else None)
                for name, col in zip(data.label_names, np.array(per_label).T)
            },
        })
    return {"metric": "macro AUROC on the test split", "split": sp.name, "seeds": opts.scaling_seeds,
            "head": opts.head,
            "C" if opts.head == "linear" else "choices": "as chosen on validation with all training records"
            if opts.head == "linear" else "made on validation for each subset",
            "train_available": int(tr.size), "points": points}


def paired_difference(arrays: dict, base_arrays: dict, name: str, base_name: str, opts: ProbeOptions) -> dict:
    """The probe minus the baseline probe on the same test records: per label and macro AUROC, AUPRC and
    F1 differences with paired bootstrap CIs (the resamples of the probe's own CIs) and DeLong's test."""
    from ecgtool.analysis.compare import ModelScores, compare_from, paired_bootstrap

    if list(arrays["record_ids"]) != list(base_arrays["record_ids"]):
        raise InputError("the probe and its baseline were tested on different records")
    Y, M = arrays["Y"], arrays["M"]
    labels = list(arrays["labels"])
    models = [ModelScores(name=n, source=n, kind="probe", record_ids=a["record_ids"], labels=labels, scores=a["P"],
                          preds=a["preds"], has_pred=a["has_pred"])
              for n, a in ((base_name, base_arrays), (name, arrays))]
    res = paired_bootstrap(Y, M, [m.scores for m in models], [m.preds for m in models],
                           [m.has_pred for m in models], opts.n_boot, opts.seed)
    c = compare_from(res, models, Y, M, labels, reference=0, level=opts.level)
    return {"model": name, "reference": base_name, "n_records": c["n_records"], "labels": labels,
            "bootstrap": c["bootstrap"], "models": c["models"], "differences": c["differences"]}
