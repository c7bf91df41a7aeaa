"""ecgtool probe: a probe on embeddings (linear, attention or kNN), with CIs, calibration, conformal
prediction, subgroups, a random-encoder baseline and figures."""

from __future__ import annotations

import logging
from typing import List, Optional

import typer
from typing_extensions import Annotated

from ecgtool.provenance import command_line
from ecgtool.cli.app import app
from ecgtool.cli.common import cell, delta, emit_report, parse_list
from ecgtool.cli.options import (Device, FoldColumn, Input, Json, LabelNames, LabelTable, NBoot, PatientColumn, Report,
                                 Seed, TestFolds, ValFolds)

log = logging.getLogger("ecgtool")


@app.command("probe")
def probe(
    src: Input = "-",
    label_table: LabelTable = None,
    label_names: LabelNames = None,
    multiclass: Annotated[bool, typer.Option(
        "--multiclass", help="Labels are exclusive: one softmax probe (one column of class names, "
                             "or one-hot columns).")] = False,
    fold_column: FoldColumn = None,
    test_folds: TestFolds = "10",
    val_folds: ValFolds = "9",
    patient_column: PatientColumn = None,
    cv: Annotated[Optional[int], typer.Option("--cv", min=3, metavar="K", help="Number of grouped cross-validation folds.")] = None,
    c_value: Annotated[Optional[float], typer.Option(
        "--C", metavar="C", help="Inverse L2 strength (default: chosen per label on validation from "
                             "0.001, 0.01, 0.1, 1).")] = None,
    threshold: Annotated[str, typer.Option(
        "--threshold", metavar="f1|youden", help="Threshold rule on validation: f1 (max F1) or youden (max sens+spec-1).")] = "f1",
    n_boot: NBoot = 1000,
    seed: Seed = 0,
    subgroup: Annotated[Optional[List[str]], typer.Option(
        "--subgroup", metavar="COL[:bands[=EDGES]]", help="Metadata column for a subgroup table; COL:bands for age bands "
                           "(<40, 40-60, 60-80, >=80) or COL:bands=30,50,70. Repeatable.")] = None,
    scaling: Annotated[Optional[str], typer.Option(
        "--scaling", metavar="N,...", help="Training-set sizes for the data-scaling curve, e.g. 50,100,200.")] = None,
    scaling_seeds: Annotated[int, typer.Option("--scaling-seeds", min=1, metavar="N", help="Seeds per scaling size.")] = 3,
    report: Report = None,
    figures: Annotated[Optional[str], typer.Option("--figures", metavar="DIR", help="Write PNG figures into this folder.")] = None,
    head: Annotated[str, typer.Option(
        "--head", metavar="linear|attention|knn", help="linear (logistic regression on the pooled embedding), attention (learnable-query "
                       "attention pooling + linear layer over the per-token features of 'embed --local') "
                       "or knn (vote of the k nearest training records).")] = "linear",
    k: Annotated[int, typer.Option("--k", min=1, metavar="K", help="Neighbours for --head knn.")] = 10,
    alpha: Annotated[float, typer.Option(
        "--alpha", metavar="ALPHA", help="Conformal miscoverage level, calibrated on the validation split: prediction sets "
                        "(--multiclass) or positive/negative/abstain per label; coverage reported on test.")] = 0.1,
    baseline: Annotated[Optional[str], typer.Option(
        "--baseline", metavar="random|FILE", help="random: also probe the same architecture with random weights (embedded from "
                           "--records) and report the paired difference; or an embedding table to compare "
                           "against.")] = None,
    records: Annotated[Optional[str], typer.Option(
        "--records", metavar="SRC", help="The records the embeddings were made from (table or ECG files), for --baseline "
                          "random.")] = None,
    device: Device = "auto",
    as_json: Json = False,
) -> None:
    """Evaluate embeddings with a probe: metrics with CIs, calibration, conformal sets, subgroups.

    Reports per-label and macro AUROC, AUPRC, F1, sensitivity and specificity with
    bootstrap 95% CIs (1000 resamples; an interval that misses its point estimate is
    replaced by BCa, else the normal interval, and says so), calibration before/after temperature scaling, split-conformal
    coverage on test, the risk-coverage curve, subgroup tables and a data-scaling
    curve, as a table, a JSON report (which 'ecgtool compare' reads) and PNG figures.
    Segment embeddings are averaged per record first. C (or the attention head's
    epoch), the decision threshold, the temperature and the conformal calibration
    are chosen on the validation split; the test split is only reported on.
    --baseline random probes the same architecture untrained and reports the paired
    difference. A warning says when the model card's pretraining data holds the
    evaluated dataset. A metric that cannot be computed (no positive or no negative
    record) is null with a reason in the JSON and n/a in the table.

    \b
    Examples:
      ecgtool probe emb.parquet -l superclass.parquet --fold-column strat_fold --test-folds 10 --val-folds 9
      ecgtool probe emb.parquet -l labels.parquet --patient-column patient_id --cv 5 --report r.json --figures figs/
      ecgtool probe emb.parquet -l cinc2017.parquet --label-names label --multiclass --patient-column record_id --cv 5
      ecgtool probe emb.parquet -l lab.parquet --fold-column strat_fold --subgroup sex --subgroup age:bands \\
          --scaling 50,100,200
      ecgtool probe emb.parquet -l labels.parquet --fold-column strat_fold --baseline random --records rec.parquet
      ecgtool probe emb.local.parquet -l labels.parquet --fold-column strat_fold --head attention
    """
    from ecgtool.analysis import probe as pr
    from ecgtool.errors import UsageError
    from ecgtool.io import read_table

    if c_value is not None and c_value <= 0:
        raise UsageError(f"--C {c_value}: must be greater than 0", "e.g. --C 0.1, or leave it out to choose on validation")
    if fold_column and (patient_column or cv):
        raise UsageError("--fold-column and --patient-column/--cv both given", "choose one way to split")
    if not fold_column and not cv:
        raise UsageError("no split given",
                         "use --fold-column strat_fold --test-folds 10 --val-folds 9, "
                         "or --patient-column patient_id --cv 5")
    sizes: list[int] = []
    if scaling:
        try:
            sizes = [int(x) for x in scaling.split(",") if x.strip()]
        except ValueError:
            raise UsageError(f"--scaling {scaling}: sizes must be whole numbers", "e.g. --scaling 50,100,200")
    from ecgtool.analysis.conformal import check_alpha
    from ecgtool.analysis.leakage import detect_sources, pretraining_of, warn_overlap

    check_alpha(alpha)
    if head not in pr.HEADS:
        raise UsageError(f"--head {head!r}: expected one of {', '.join(pr.HEADS)}")
    if baseline == "random" and not records:
        raise UsageError("--baseline random needs the records the embeddings were made from",
                         "add --records rec.parquet (the table or ECG files given to 'ecgtool embed')")
    emb_tab, emb_meta = read_table(src)
    lab_tab, lab_meta = (read_table(label_table) if label_table else (None, None))
    names = parse_list(label_names) or None
    meta_names = lab_meta.label_names if lab_meta is not None else None
    emb_name = src if src != "-" else "stdin"
    data = pr.load_probe_data(emb_tab, lab_tab, names, meta_names, multiclass=multiclass,
                              emb_name=emb_name, labels_name=label_table or "labels", tokens=head == "attention")
    sources = sorted(set(detect_sources(emb_tab, emb_meta))
                     | (set(detect_sources(lab_tab, lab_meta)) if lab_tab is not None else set()))
    model_label, pre_data = pretraining_of(emb_meta)
    leak = warn_overlap(model_label, pre_data, sources, f"{emb_name}")
    base_data, base_label = None, None
    if baseline:
        if baseline == "random":
            base_tab, base_meta = _random_embeddings(records, emb_meta, seed, device, head == "attention")
            base_src = "random"
        else:
            base_tab, base_meta = read_table(baseline)
            base_src = baseline
        base_label = str(base_meta.model or baseline)
        base_data = pr.load_probe_data(base_tab, lab_tab, names, meta_names, multiclass=multiclass,
                                       emb_name=base_src, labels_name=label_table or "labels",
                                       tokens=head == "attention")
        del base_tab
        data, base_data = pr.align_records(data, base_data, emb_name, base_src)
    del emb_tab, lab_tab
    if fold_column:
        if fold_column not in data.meta:
            raise UsageError(f"--fold-column {fold_column}: no such column",
                             f"metadata columns: {', '.join(sorted(data.meta)) or '(none)'}")
        splits = pr.fold_splits(data.meta[fold_column], test_folds, val_folds, fold_column)
    else:
        if patient_column is None:
            from ecgtool.evaluation.splits import default_group_column

            patient_column = default_group_column(data.meta)
            log.warning("--cv without --patient-column: grouping by %s",
                        "patient_id" if patient_column == "patient_id" else "record (each record its own group)")
        if patient_column == "record_id":
            groups = data.record_ids
        elif patient_column in data.meta:
            groups = data.meta[patient_column]
        else:
            raise UsageError(f"--patient-column {patient_column}: no such column",
                             f"metadata columns: {', '.join(sorted(data.meta)) or '(none)'}")
        splits = pr.group_cv_splits(groups, cv, seed)
    opts = pr.ProbeOptions(C=c_value, threshold_rule=threshold, n_boot=n_boot, seed=seed,
                           subgroups=subgroup or (), scaling=sizes, scaling_seeds=scaling_seeds, head=head, k=k,
                           alpha=alpha)
    rep, arrays = pr.run_probe(data, splits, opts)
    rep["name"] = f"{model_label or emb_name} {head} probe"
    rep["model"] = model_label
    rep["pretraining_data"] = pre_data
    rep["data_sources"] = sources
    rep["leakage"] = leak
    if base_data is not None:
        base_opts = pr.ProbeOptions(**{**opts.__dict__, "subgroups": (), "scaling": ()})
        base_rep, base_arrays = pr.run_probe(base_data, splits, base_opts)
        rep["baseline"] = pr.paired_difference(arrays, base_arrays, rep["name"], f"{base_label} {head} probe", opts)
        rep["baseline"]["embeddings"] = baseline if baseline != "random" else f"random init ({base_label})"
        rep["baseline"]["conformal"] = base_rep.get("conformal", {}).get("test")
    rep["command"] = _command_line()
    if figures:
        from ecgtool.analysis.figures import forest_plot, write_figures

        paths = write_figures(rep, arrays, figures)
        if "baseline" in rep:
            from pathlib import Path

            paths.append(forest_plot(rep["baseline"], Path(figures) / "baseline_forest.png"))
        rep["figures"] = [str(p) for p in paths]
        log.info("wrote %d figures into %s", len(paths), figures)
    emit_report(rep, report, as_json, _print_table)


def _random_embeddings(records: str, emb_meta, seed: int, device: str, local: bool):
    """Embed ``records`` with the embedding table's architecture at random weights (seeded)."""
    import tempfile

    from ecgtool.cli.common import record_errors
    from ecgtool.cli.modelrun import open_input
    from ecgtool.errors import UsageError
    from ecgtool.io import read_table
    from ecgtool.models.apply import embed_table, random_init_model
    from ecgtool.models.devices import resolve_device
    from ecgtool.models.registry import list_models

    emb = emb_meta.embedding or {}
    if emb.get("random_init"):
        raise UsageError("--baseline random: these embeddings come from random weights already",
                         "probe the pretrained model's embeddings with --baseline random")
    arch = emb_meta.architecture or (emb_meta.model if emb_meta.model in list_models() else None)
    if not arch:
        raise UsageError("--baseline random: the embedding table names no registered architecture",
                         "embed the baseline yourself ('ecgtool embed -m ARCH --random-init') and pass it with "
                         "--baseline FILE")
    if local and not emb.get("local"):
        raise UsageError("--head attention needs per-token features", "embed with 'ecgtool embed --local'")
    dev = resolve_device(device)
    net = random_init_model(arch, seed).to(dev)
    log.info("--baseline random: embedding %s with %s at random weights (seed %d)", records, arch, seed)
    errors = record_errors("skip")
    with tempfile.TemporaryDirectory(prefix="ecgtool-baseline-") as tmp:
        dest = f"{tmp}/random.parquet"
        with open_input(records, 32, errors) as reader:
            embed_table(reader, dest, net, device=dev, pool=emb.get("pool") or "mean", local=local,
                        layer=emb.get("layer"), errors=errors, argv=command_line())
        if errors.summary():
            log.warning("--baseline random: %s", errors.summary())
        return read_table(dest)


def _command_line() -> str:
    import shlex

    return shlex.join(command_line() or ["ecgtool", "probe"])






def _print_table(rep: dict) -> None:
    from ecgtool.cli.common import console
    from rich.table import Table

    con = console(soft_wrap=True)
    if not con.is_terminal:
        con = console(soft_wrap=True, width=160)  # a file or pipe: no wrapping of the table
    rec = rep["records"]
    line = f"{rec['records']} records"
    if "joined" in rec:
        line += f", {rec['joined']} joined with labels"
    if rec.get("rows_dropped_nonfinite"):
        line += f", {rec['rows_dropped_nonfinite']} NaN/inf embedding rows dropped"
    if "segments_pooled" in rec:
        line += f", {rec['segments_pooled']['rows']} segments averaged per record"
    splits = rep["protocol"]["splits"]
    con.print(line + f"; embedding dim {rep['embedding_dim']}; " + "; ".join(
        f"{s['name']}: train {s['train']} / val {s['val']} / test {s['test']}" for s in splits[:1])
        + (f" (+{len(splits) - 1} more folds)" if len(splits) > 1 else ""))
    b = rep["protocol"]["bootstrap"]
    t = Table(title=f"{rep.get('head', 'linear').capitalize()} probe, test split "
                    f"({int(b['level'] * 100)}% bootstrap CI, n={b['n']})",
              box=None, pad_edge=False, header_style="bold")
    for c in ("label", "n (pos)", "AUROC", "AUPRC", "F1", "sens", "spec", "ECE before→after"):
        t.add_column(c, justify="left" if c == "label" else "right", no_wrap=c != "label")
    for name, e in rep["metrics"]["per_label"].items():
        c = e.get("calibration") or {}
        before = (c.get("before") or {}).get("ece")
        after = (c.get("after") or {}).get("ece")
        ece = "n/a" if before is None else f"{before:.3f}→" + ("n/a" if after is None else f"{after:.3f}")
        t.add_row(name, f"{e['n_test']} ({e['n_pos']})", cell(e["auroc"]), cell(e["auprc"]),
                  cell(e["f1"]), cell(e["sensitivity"], False), cell(e["specificity"], False), ece)
    m = rep["metrics"]["macro"]
    t.add_row("[bold]macro[/bold]", "", cell(m["auroc"]), cell(m["auprc"]), cell(m["f1"]),
              cell(m["sensitivity"], False), cell(m["specificity"], False), "")
    con.print(t)
    if rep["task"] == "multiclass":
        c = rep["calibration"]
        acc = rep["metrics"].get("accuracy")
        after = (c.get("after") or {}).get("ece")
        con.print(f"accuracy {acc:.3f}; top-label ECE {c['before']['ece']:.3f} → "
                  + ("n/a" if after is None else f"{after:.3f}") + " after temperature scaling")
    for spec, sg in (rep.get("subgroups") or {}).items():
        st = Table(title=f"Subgroups by {spec}", box=None, pad_edge=False, header_style="bold")
        for c in ("group", "n", "macro AUROC", "macro AUPRC"):
            st.add_column(c, justify="left" if c == "group" else "right")
        for key, g in sg["groups"].items():
            st.add_row(key, str(g["n"]), cell(g["macro"]["auroc"]), cell(g["macro"]["auprc"]))
        con.print(st)
    sc = rep.get("scaling")
    if sc and sc["points"]:
        st = Table(title=f"Data scaling ({sc['metric']}, {sc['seeds']} seeds)", box=None, pad_edge=False,
                   header_style="bold")
        st.add_column("train records", justify="right")
        st.add_column("macro AUROC mean ± SD", justify="right")
        for p in sc["points"]:
            mean, sd = p["macro_auroc_mean"], p["macro_auroc_sd"]
            st.add_row(str(p["n_train"]), "n/a" if mean is None else
                       f"{mean:.3f}" + ("" if sd is None else f" ± {sd:.3f}"))
        con.print(st)
    _print_conformal(con, rep)
    _print_baseline(con, rep)
    na = [(n, k, e[k].get("reason")) for n, e in rep["metrics"]["per_label"].items()
          for k in ("auroc", "f1") if e[k].get("value") is None]
    for n, k, reason in na[:10]:
        con.print(f"n/a: {n} {k}: {reason}")
    bca = [(n, k) for n, e in rep["metrics"]["per_label"].items() for k in ("auroc", "auprc", "f1")
           if e[k].get("ci_method") == "bca"]
    if bca:
        con.print("BCa intervals (the percentile interval excluded the point estimate): "
                  + ", ".join(f"{n} {k}" for n, k in bca[:10]))


def _print_conformal(con, rep: dict) -> None:
    from rich.table import Table

    c = rep.get("conformal")
    sel = rep.get("selective") or {}
    if c:
        test = c["test"]
        target = f"target {c['target_coverage']:.2f}"
        if rep["task"] == "multiclass":
            cov = test["coverage"]
            q = c["calibration"].get("qhat") if isinstance(c["calibration"], dict) else None
            con.print(f"Conformal prediction sets (APS, alpha={c['alpha']:g}, calibrated on validation"
                      + (f", qhat {q:.3f}" if isinstance(q, float) else "") + f"): coverage {cell(cov)} on "
                      f"{test['n_test']} test records ({target}); mean set size "
                      f"{test.get('mean_set_size', float('nan')):.2f}; sizes "
                      + ", ".join(f"{k}: {v}" for k, v in (test.get("set_size_counts") or {}).items()))
        else:
            t = Table(title=f"Conformal decisions per label (alpha={c['alpha']:g}, class-conditional, calibrated on "
                            f"validation; {target})", box=None, pad_edge=False, header_style="bold")
            for col in ("label", "coverage", "pos / neg", "positive", "negative", "abstain", "decided acc."):
                t.add_column(col, justify="left" if col == "label" else "right")
            for name, e in test["per_label"].items():
                if not e.get("computable"):
                    t.add_row(name, "n/a", "", "", "", "", e.get("reason", "not computable"))
                    continue
                f = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
                t.add_row(name, cell(e["coverage"]), f"{f(e['coverage_pos'])} / {f(e['coverage_neg'])}",
                          f(e.get("rate_positive")), f(e.get("rate_negative")), f(e.get("rate_abstain")),
                          f(e.get("decided_accuracy")))
            con.print(t)
    if sel:
        aurc = sel.get("macro_aurc", sel.get("aurc"))
        if aurc is not None:
            con.print(f"Selective prediction: {'macro ' if 'macro_aurc' in sel else ''}AURC {aurc:.3f} "
                      f"(area under the risk–coverage curve; confidence: {sel['confidence']})")


def _print_baseline(con, rep: dict) -> None:
    from rich.table import Table

    b = rep.get("baseline")
    if not b:
        return
    d = b["differences"][0]
    ref, mod = b["models"][0], b["models"][1]
    t = Table(title=f"{d['model']} − {d['reference']} (paired bootstrap, {b['bootstrap']['n']} resamples)",
              box=None, pad_edge=False, header_style="bold")
    for col in ("label", "AUROC", "baseline AUROC", "Δ AUROC", "DeLong p", "Δ AUPRC", "Δ F1"):
        t.add_column(col, justify="left" if col == "label" else "right", no_wrap=col != "label")

    def p_of(e):
        dl = e["auroc"].get("delong") or {}
        return "n/a" if dl.get("p") is None else f"{dl['p']:.3f}"

    for name in b["labels"]:
        e = d["per_label"][name]
        t.add_row(name, cell(mod["per_label"][name]["auroc"], False), cell(ref["per_label"][name]["auroc"], False),
                  delta(e["auroc"]), p_of(e), delta(e["auprc"]), delta(e["f1"]))
    t.add_row("[bold]macro[/bold]", cell(mod["macro"]["auroc"], False), cell(ref["macro"]["auroc"], False),
              delta(d["macro"]["auroc"]), "", delta(d["macro"]["auprc"]), delta(d["macro"]["f1"]))
    con.print(t)

