"""ecgtool compare: paired comparison of models on the same records and labels."""

from __future__ import annotations

import logging
from typing import List, Optional

import typer
from typing_extensions import Annotated

from ecgtool.cli.app import app
from ecgtool.cli.common import cell, delta, emit_report, parse_list
from ecgtool.cli.options import Json, LabelNames, LabelTable, NBoot, Report, Seed

log = logging.getLogger("ecgtool")


@app.command("compare")
def compare(
    inputs: Annotated[List[str], typer.Argument(
        metavar="INPUT...", help="Two or more prediction tables ('ecgtool predict') or probe reports "
                                 "('ecgtool probe --report').")],
    label_table: LabelTable = None,
    names: Annotated[Optional[str], typer.Option(
        "--names", metavar="NAME,...", help="Comma-separated display names, one per input (default: the model names).")] = None,
    label_names: LabelNames = None,
    reference: Annotated[Optional[str], typer.Option(
        "--reference", metavar="NAME|N", help="The model the others are compared to: a name or a 1-based position (default: "
                            "the first input).")] = None,
    intersect: Annotated[bool, typer.Option(
        "--intersect", help="Compare on the records all inputs share when their record sets differ "
                            "(otherwise refused, with the counts).")] = False,
    n_boot: NBoot = 1000,
    seed: Seed = 0,
    report: Report = None,
    figure: Annotated[Optional[str], typer.Option(
        "--figure", metavar="PNG", help="Write the forest plot (differences with CIs per label) to this PNG.")] = None,
    as_json: Json = False,
) -> None:
    """Compare models on the same records: AUROC, AUPRC and F1 differences with paired CIs.

    Every model is evaluated on the same bootstrap resamples of the records, so the
    interval of a difference accounts for the models being tested on the same ECGs;
    AUROC differences also get DeLong's test. F1 is at each model's own validation
    threshold (a checkpoint's thresholds, a probe's validation choice; argmax for
    exclusive classes). Inputs on different record sets are refused with the
    counts of their overlap unless --intersect; labels not predicted by every input
    are left out and listed. A warning says when a model card's pretraining data
    holds the evaluated dataset.

    \b
    Examples:
      ecgtool compare pred.parquet probe.json -l labels.parquet --intersect
      ecgtool compare probe.json probe.random.json --report cmp.json --figure forest.png
      ecgtool compare a.parquet b.parquet c.parquet -l labels.parquet --names A,B,C --reference B
    """
    from ecgtool.analysis import compare as cp
    from ecgtool.analysis.leakage import detect_sources, pretraining_of, warn_overlap
    from ecgtool.errors import UsageError
    from ecgtool.io import read_table

    shown = [n.strip() for n in names.split(",")] if names else None
    models = cp.load_model_scores(list(inputs), shown)
    lab_tab = None
    if label_table:
        lab_tab, _ = read_table(label_table)
    only = parse_list(label_names) or None
    Y, M, used, info = cp.align(models, lab_tab, None, label_table or "labels", intersect, only)
    ref = 0
    if reference is not None:
        by_name = [m.name for m in models]
        if reference in by_name:
            ref = by_name.index(reference)
        elif reference.isdigit() and 1 <= int(reference) <= len(models):
            ref = int(reference) - 1
        else:
            raise UsageError(f"--reference {reference}: not an input", f"names: {', '.join(by_name)}")
    leakage = {}
    extra = detect_sources(lab_tab) if lab_tab is not None else []
    for m in models:
        srcs = sorted(set(m.info.get("data_sources") or []) | set(extra))
        pre = m.info.get("pretraining_data")
        if pre is None and m.info.get("model"):
            pre = pretraining_of({"model": m.info.get("model"), "architecture": m.info.get("architecture")})[1]
        found = warn_overlap(m.name, pre, srcs, m.source) if pre else []
        if found:
            leakage[m.name] = found
    rep = cp.compare(models, Y, M, used, reference=ref, n_boot=n_boot, seed=seed)
    rep["inputs"] = [{"name": m.name, "source": m.source, "kind": m.kind, "task": m.task} for m in models]
    rep["records"] = info
    rep["leakage"] = leakage
    if figure:
        from ecgtool.analysis.figures import forest_plot

        forest_plot(rep, figure)
        rep["figure"] = figure
        log.info("wrote the forest plot to %s", figure)
    emit_report(rep, report, as_json, _print)






def _print(rep: dict) -> None:
    from rich.table import Table

    from ecgtool.cli.common import console

    con = console(soft_wrap=True)
    if not con.is_terminal:
        con = console(soft_wrap=True, width=200)
    left = rep["records"].get("labels_left_out") or {}
    con.print(f"{rep['n_records']} records, {len(rep['labels'])} labels; {rep['bootstrap']['n']} paired bootstrap "
              f"resamples ({int(rep['bootstrap']['level'] * 100)}% CI); reference: {rep['reference']}")
    if left:
        con.print("labels left out: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in left.items()))
    if rep["records"].get("labels_without_truth"):
        con.print("no truth in the label table for: " + ", ".join(rep["records"]["labels_without_truth"]))
    t = Table(title="AUROC per model", box=None, pad_edge=False, header_style="bold")
    t.add_column("label")
    t.add_column("n (pos)", justify="right")
    for m in rep["models"]:
        t.add_column(m["name"], justify="right", no_wrap=True)
    for name in rep["labels"]:
        c = rep["label_counts"][name]
        t.add_row(name, f"{c['n']} ({c['n_pos']})", *[cell(m["per_label"][name]["auroc"]) for m in rep["models"]])
    t.add_row("[bold]macro[/bold]", "", *[cell(m["macro"]["auroc"]) for m in rep["models"]])
    con.print(t)
    for d in rep["differences"]:
        t = Table(title=f"{d['model']} − {d['reference']}", box=None, pad_edge=False, header_style="bold")
        for col in ("label", "Δ AUROC", "DeLong p", "Δ AUPRC", "Δ F1"):
            t.add_column(col, justify="left" if col == "label" else "right", no_wrap=col != "label")
        for name in rep["labels"]:
            e = d["per_label"][name]
            dl = e["auroc"].get("delong") or {}
            t.add_row(name, delta(e["auroc"]), "n/a" if dl.get("p") is None else f"{dl['p']:.3g}",
                      delta(e["auprc"]), delta(e["f1"]))
        t.add_row("[bold]macro[/bold]", delta(d["macro"]["auroc"]), "", delta(d["macro"]["auprc"]),
                  delta(d["macro"]["f1"]))
        con.print(t)
