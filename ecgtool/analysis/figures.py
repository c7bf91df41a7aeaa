"""PNG figures of a probe report (matplotlib, Agg backend, imported lazily).

* ``roc_pr_<label>.png``: ROC and precision–recall curves of one label, with
  AUROC / AUPRC and their 95% CIs in the legend, the chance line and the
  operating point chosen on validation.
* ``roc_all.png``: every label's ROC curve on one axis (up to 12 labels).
* ``reliability_<label>.png`` (multi-class: ``reliability.png``): the
  reliability diagram before and after temperature scaling, ECE in the legend,
  and the histogram of predicted probabilities under it.
* ``scaling.png``: macro AUROC against the number of training records
  (mean ± SD over seeds, each seed as a dot).
* ``risk_coverage.png``: selective prediction, the error rate among the
  records kept against the fraction kept (most confident first), AURC in the
  legend; the conformal coverage when the report has it.

:func:`forest_plot` draws the paired differences of ``ecgtool compare`` (and
of ``probe --baseline``): per label and macro, the difference with its CI.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

MAX_OVERLAY = 12


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def safe_name(label: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", str(label)).strip("_")
    return s or "label"


def roc_curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=bool)
    order = np.argsort(-np.asarray(s, dtype=np.float64), kind="mergesort")
    so, yo = np.asarray(s)[order], y[order]
    last = np.r_[so[1:] != so[:-1], True]
    tp = np.r_[0, np.cumsum(yo)[last]]
    fp = np.r_[0, np.cumsum(~yo)[last]]
    return fp / max(fp[-1], 1), tp / max(tp[-1], 1)


def pr_curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=bool)
    order = np.argsort(-np.asarray(s, dtype=np.float64), kind="mergesort")
    so, yo = np.asarray(s)[order], y[order]
    last = np.r_[so[1:] != so[:-1], True]
    tp = np.cumsum(yo)[last]
    fp = np.cumsum(~yo)[last]
    recall = np.r_[0, tp / max(tp[-1], 1)]
    precision = np.r_[1, tp / np.maximum(tp + fp, 1)]
    return recall, precision


def _fmt(m: dict, name: str) -> str:
    if not m or m.get("value") is None:
        return f"{name} n/a"
    ci = m.get("ci")
    if ci:
        return f"{name} {m['value']:.3f} [{ci[0]:.3f}–{ci[1]:.3f}]"
    return f"{name} {m['value']:.3f}"


def write_figures(report: dict, arrays: dict, out_dir: str | Path) -> list[Path]:
    plt = _plt()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    names = arrays["labels"]
    Y, M, P, Pc = arrays["Y"], arrays["M"], arrays["P"], arrays["P_cal"]
    per = report["metrics"]["per_label"]
    used: set[tuple[str, str]] = set()

    def fname(prefix: str, label: str) -> Path:
        base = safe_name(label)
        k, stem = 1, base
        while (prefix, stem) in used:
            k += 1
            stem = f"{base}_{k}"
        used.add((prefix, stem))
        return out / f"{prefix}_{stem}.png"

    for j, name in enumerate(names):
        m = M[:, j]
        y, s = Y[m, j], P[m, j]
        entry = per[name]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4.6))
        computable = y.any() and (~y).any()
        if computable:
            fpr, tpr = roc_curve(y, s)
            a1.plot(fpr, tpr, lw=2, color="C0", label=_fmt(entry["auroc"], "AUROC"))
            rec, prec = pr_curve(y, s)
            a2.step(rec, prec, where="post", lw=2, color="C1", label=_fmt(entry["auprc"], "AUPRC"))
            thr = entry.get("threshold")
            if isinstance(thr, (int, float)):
                pred = s >= thr
                tp, fp = (pred & y).sum(), (pred & ~y).sum()
                sens, fpr0 = tp / y.sum(), fp / (~y).sum()
                a1.plot([fpr0], [sens], "o", color="k", ms=7,
                        label=f"threshold {thr:.2f} (chosen on validation)")
                if tp + fp:
                    a2.plot([sens], [tp / (tp + fp)], "o", color="k", ms=7, label=f"threshold {thr:.2f}")
            prev = y.mean()
            a2.axhline(prev, ls="--", color="grey", lw=1, label=f"chance (prevalence {prev:.2f})")
        else:
            reason = entry["auroc"].get("reason", "not computable")
            for a in (a1, a2):
                a.text(0.5, 0.5, f"not computable:\n{reason}", ha="center", va="center", fontsize=10,
                       transform=a.transAxes)
        a1.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance (AUROC 0.5)")
        a1.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 − specificity (false positive rate)",
               ylabel="sensitivity (true positive rate)", title="ROC curve")
        a2.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall (sensitivity)", ylabel="precision (PPV)",
               title="Precision–recall curve")
        for a in (a1, a2):
            a.grid(alpha=0.3)
            a.legend(loc="lower right" if a is a1 else "lower left", fontsize=8)
            a.set_aspect("equal")
        fig.suptitle(f"{name}: test n={entry['n_test']} ({entry['n_pos']} positive)", fontsize=12)
        fig.tight_layout()
        p = fname("roc_pr", name)
        fig.savefig(p, dpi=110)
        plt.close(fig)
        written.append(p)

    if 1 < len(names) <= MAX_OVERLAY:
        fig, ax = plt.subplots(figsize=(6.4, 6))
        for j, name in enumerate(names):
            m = M[:, j]
            y, s = Y[m, j], P[m, j]
            if y.any() and (~y).any():
                fpr, tpr = roc_curve(y, s)
                v = per[name]["auroc"]["value"]
                ax.plot(fpr, tpr, lw=1.6, color=f"C{j % 10}", ls="-" if j < 10 else ":",
                        label=f"{name} (AUROC {v:.3f})")
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
        mac = report["metrics"]["macro"]["auroc"]
        ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 − specificity (false positive rate)",
               ylabel="sensitivity (true positive rate)",
               title="ROC curves, test split\n" + _fmt(mac, "macro AUROC"))
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        p = out / "roc_all.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        written.append(p)

    if arrays.get("multiclass"):
        cal = report.get("calibration", {})
        yc = arrays["y_class"]
        known = yc >= 0
        written.append(_reliability(plt, cal, P[known], Pc[known], out / "reliability.png",
                                    "top-label confidence", "accuracy", "all classes (top label)"))
    else:
        for j, name in enumerate(names):
            c = per[name].get("calibration", {})
            m = M[:, j]
            if "before" not in c:
                continue
            written.append(_reliability(plt, c, P[m, j], Pc[m, j], fname("reliability", name),
                                        "predicted probability", "observed frequency of the label", name))

    sc = report.get("scaling")
    if sc and sc.get("points"):
        pts = sc["points"]
        fig, ax = plt.subplots(figsize=(6.4, 4.6))
        x = np.array([p["n_train"] for p in pts], dtype=float)
        mean = np.array([np.nan if p["macro_auroc_mean"] is None else p["macro_auroc_mean"] for p in pts])
        sd = np.array([0.0 if p["macro_auroc_sd"] is None else p["macro_auroc_sd"] for p in pts])
        for xi, p in zip(x, pts):
            seeds = [v for v in p["macro_auroc_per_seed"] if v is not None]
            ax.plot([xi] * len(seeds), seeds, ".", color="C0", alpha=0.4, ms=6)
        ax.errorbar(x, mean, yerr=sd, fmt="-o", color="C0", capsize=4, lw=2,
                    label=f"macro AUROC, mean ± SD over {sc['seeds']} seeds")
        full = report["metrics"]["macro"]["auroc"]
        if full.get("value") is not None:
            ax.axhline(full["value"], ls="--", color="C2", lw=1.2,
                       label=f"all {sc['train_available']} training records: {full['value']:.3f}")
        ax.axhline(0.5, ls=":", color="grey", lw=1, label="chance (0.5)")
        ax.set_xscale("log")
        ax.set_xticks(x)
        ax.set_xticklabels([str(int(v)) for v in x])
        ax.minorticks_off()
        ax.set(xlabel="labelled training records (log scale)", ylabel="macro AUROC on the test split",
               title="Data-scaling curve of the linear probe")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        p = out / "scaling.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        written.append(p)
    sel = report.get("selective")
    if sel:
        written.append(risk_coverage_figure(plt, report, out / "risk_coverage.png"))
    return written


def risk_coverage_figure(plt, report: dict, path: Path) -> Path:
    sel = report["selective"]
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    if "per_label" in sel:
        curves = [(n, c) for n, c in sel["per_label"].items() if c.get("aurc") is not None][:MAX_OVERLAY]
        title = "Risk–coverage, test split" + (f"\nmacro AURC {sel['macro_aurc']:.3f}"
                                               if sel.get("macro_aurc") is not None else "")
    else:
        curves = [("all classes", sel)] if sel.get("aurc") is not None else []
        title = "Risk–coverage, test split (top-class probability)"
    for j, (name, c) in enumerate(curves):
        ax.plot(c["coverage"], c["risk"], lw=1.6, color=f"C{j % 10}", ls="-" if j < 10 else ":",
                label=f"{name} (AURC {c['aurc']:.3f})")
    conf = report.get("conformal", {}).get("test", {})
    cov = conf.get("coverage") or conf.get("coverage_all_labels")
    if cov and cov.get("value") is not None:
        ci = cov.get("ci") or [cov["value"], cov["value"]]
        ax.text(0.02, 0.97, f"conformal coverage {cov['value']:.3f} [{ci[0]:.3f}–{ci[1]:.3f}] "
                f"(target {report['conformal']['target_coverage']:.2f})", transform=ax.transAxes,
                va="top", fontsize=8)
    ax.set(xlim=(0, 1), ylim=(0, None), xlabel="coverage (fraction of records kept, most confident first)",
           ylabel="risk (error rate among kept records)", title=title)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0, 0.92))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def forest_plot(cmp: dict, path: str | Path, metrics: tuple[str, ...] = ("auroc", "auprc", "f1")) -> Path:
    """Paired differences (model − reference) per label and macro, with CIs, one panel per metric."""
    plt = _plt()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    diffs = cmp["differences"]
    labels = list(cmp["labels"])
    rows = labels + ["macro"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 0.42 * len(rows) * max(1, len(diffs))
                                                        + 1.6), sharey=True, squeeze=False)
    axes = axes[0]
    step = 0.8 / max(1, len(diffs))
    for a, met in zip(axes, metrics):
        for d_i, d in enumerate(diffs):
            for r, name in enumerate(rows):
                e = (d["macro"] if name == "macro" else d["per_label"][name])[met]
                y = r + (d_i - (len(diffs) - 1) / 2) * step
                if e.get("value") is None:
                    a.plot([0], [y], "x", color="grey", ms=5)
                    continue
                ci = e.get("ci") or [e["value"], e["value"]]
                color = f"C{d_i % 10}"
                a.plot(ci, [y, y], "-", color=color, lw=2 if name == "macro" else 1.4)
                a.plot([e["value"]], [y], "D" if name == "macro" else "o", color=color, ms=6 if name == "macro" else 4,
                       label=f"{d['model']} − {d['reference']}" if r == 0 else None)
        a.axvline(0, color="k", lw=1, ls="--")
        a.set_title(f"Δ {met.upper() if met != 'f1' else 'F1'} (paired {int(cmp['bootstrap']['level'] * 100)}% CI)")
        a.grid(alpha=0.3, axis="x")
        a.set_xlabel("difference")
    axes[0].set_yticks(range(len(rows)))
    axes[0].set_yticklabels(rows)
    axes[0].invert_yaxis()
    handles, texts = axes[0].get_legend_handles_labels()
    fig.legend(handles, texts, loc="lower center", ncol=min(3, max(1, len(diffs))), fontsize=8, frameon=False)
    fig.suptitle(f"{cmp['n_records']} records, {cmp['bootstrap']['n']} paired bootstrap resamples", fontsize=10)
    fig.tight_layout(rect=(0, 0.1 if len(diffs) <= 3 else 0.16, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _reliability(plt, c: dict, p_before, p_after, path: Path, xlabel: str, ylabel: str, title: str) -> Path:
    fig, (ax, axh) = plt.subplots(2, 1, figsize=(5.8, 6.6), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    b = c["before"]
    r = b["reliability"]
    ax.plot(r["mean_predicted"], r["observed"], "-o", color="C3", ms=4,
            label=f"before (ECE {b['ece']:.3f}, Brier {b['brier']:.3f})")
    a = c.get("after")
    T = c.get("temperature")
    if a:
        r = a["reliability"]
        t_txt = f"T={T:.2f}, " if isinstance(T, (int, float)) else ""
        ax.plot(r["mean_predicted"], r["observed"], "-s", color="C0", ms=4,
                label=f"after temperature scaling ({t_txt}ECE {a['ece']:.3f}, Brier {a['brier']:.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), ylabel=ylabel, title=f"Reliability diagram: {title}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    pb = np.asarray(p_before)
    pa = np.asarray(p_after)
    if pb.ndim == 2:
        pb, pa = pb.max(axis=1), pa.max(axis=1)
    bins = np.linspace(0, 1, 16)
    axh.hist(pb, bins=bins, color="C3", alpha=0.5, label="before")
    if a:
        axh.hist(pa, bins=bins, color="C0", histtype="step", lw=2, label="after")
    axh.set(xlabel=xlabel, ylabel="records")
    axh.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
