"""ecgtool models: list the registered models, describe one, import a released checkpoint."""

from __future__ import annotations

import json
from typing import Optional

import typer
from typing_extensions import Annotated

from ecgtool.cli.app import EcgtoolGroup, app
from ecgtool.cli.options import Json

models_app = typer.Typer(
    cls=EcgtoolGroup,
    invoke_without_command=True,
    no_args_is_help=False,
    add_completion=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
app.add_typer(models_app, name="models")


def _params(d: dict) -> str:
    text = f"{d['parameters']:,}"
    if "released_file_parameters" in d:
        text += f" ({d['released_file_parameters']:,} in file*)"
    return text


@models_app.callback()
def models(
    ctx: typer.Context,
    pattern: Annotated[Optional[str], typer.Option("--pattern", help="Only names matching this glob.")] = None,
    as_json: Json = False,
) -> None:
    """List the registered models: name, family, parameters and input contract.

    A registered name is an architecture; weights come from a checkpoint
    (a .safetensors written by ecgtool, or a released file, see 'models import').
    ECGFounder's released .pth files also carry 66,368 BatchNorm parameters the
    network never uses; the list shows both counts.

    \b
    Examples:
      ecgtool models
      ecgtool models --json | jq '.[].name'
      ecgtool models info ecgfounder-12lead
      ecgtool models import 12_lead_ECGFounder.pth -o ecgfounder-12lead.safetensors
    """
    if ctx.invoked_subcommand is not None:
        return
    from ecgtool.models.checkpoint import list_model_summaries

    rows = list_model_summaries(pattern)
    if as_json:
        for r in rows:
            r.pop("label_names", None)
        typer.echo(json.dumps(rows, indent=2))
        return
    header = ("name", "family", "parameters", "fs", "leads", "samples", "normalisation", "outputs")
    table = [header]
    for r in rows:
        leads = "12 (I..V6)" if len(r["leads"]) == 12 and r["leads"][0] == "I" else ",".join(r["leads"])
        table.append((r["name"], r["family"], _params(r), f"{r['fs']:g} Hz", leads,
                      f"{r['n_samples']} ({r['seconds']:g} s)", r["normalisation"],
                      f"{r['n_classes']} labels" if r["n_classes"] else "embedding"))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    if any("released_file_parameters" in r for r in rows):
        typer.echo("* the released ECGFounder .pth files also hold BatchNorm tensors the network never uses "
                   "(66,368 parameters); the importer skips them")


@models_app.command("info")
def info(
    spec: Annotated[str, typer.Argument(help="A registered model name or a checkpoint file.")],
    as_json: Json = False,
) -> None:
    """Describe one model: a registered name or a checkpoint (.safetensors, fairseq .pt, ECGFounder .pth).

    \b
    Examples:
      ecgtool models info ecgfounder-1lead
      ecgtool models info ecgfounder-12lead.safetensors --json
    """
    from ecgtool.models.checkpoint import describe_model

    d = describe_model(spec)
    if as_json:
        typer.echo(json.dumps(d, indent=2, default=str))
        return
    typer.echo(f"{d['name']}: {d.get('description') or d['family']}")
    typer.echo(f"family: {d['family']}")
    typer.echo(f"parameters: {d['parameters']:,}")
    if "released_file_parameters" in d:
        typer.echo(f"parameters in the released file: {d['released_file_parameters']:,} "
                   f"(incl. {d['released_file_parameters'] - d['parameters']:,} unused BatchNorm)")
    typer.echo(f"input: {d['fs']:g} Hz, {d['n_samples']} samples ({d['seconds']:g} s), {d['normalisation']}"
               + (f", preset {d['preset']}" if d.get("preset") else ""))
    typer.echo(f"leads: {' '.join(d['leads'])}")
    labels = d.get("label_names")
    if labels:
        shown = ", ".join(labels[:6]) + (f", … ({len(labels)} in all)" if len(labels) > 6 else "")
        typer.echo(f"outputs: {len(labels)} labels: {shown}")
    elif d.get("n_classes"):
        typer.echo(f"outputs: {d['n_classes']} (no label names)")
    else:
        typer.echo("outputs: embedding only (no classification head)")
    typer.echo("config: " + json.dumps(d["config"]))
    if d.get("random_weights"):
        typer.echo("weights: none (a registry architecture; load a checkpoint for trained weights)")
    for key in ("thresholds", "temperature"):
        if d.get(key) is not None:
            typer.echo(f"{key}: {json.dumps(d[key])[:200]}")
    if d.get("provenance"):
        typer.echo("provenance: " + json.dumps(d["provenance"], default=str))


@models_app.command("import")
def import_(
    src: Annotated[str, typer.Argument(help="A released checkpoint: ECGFounder .pth or fairseq-signals .pt.")],
    output: Annotated[str, typer.Option("-o", "--output", help="The .safetensors file to write.")],
    labels: Annotated[Optional[str], typer.Option(
        "--labels", help="Names of the outputs, in order: comma-separated, a text file with one per line, "
        "or 'mimic-iv-ecg' (the released ECG-FM classifier's 17). fairseq-signals files carry none.")] = None,
) -> None:
    """Convert a released checkpoint once into ecgtool's safetensors format (no pickle on later loads).

    The file's kind is read from its content. Every tensor must map onto the
    model; the report lists what was read.

    \b
    Examples:
      ecgtool models import 12_lead_ECGFounder.pth -o ecgfounder-12lead.safetensors
      ecgtool models import mimic_iv_ecg_physionet_pretrained.pt -o ecgfm-base.safetensors
      ecgtool models import mimic_iv_ecg_finetuned.pt --labels mimic-iv-ecg -o ecgfm-mimic17.safetensors
      ecgtool models import my_finetuned.pt --labels NORM,MI,STTC,CD,HYP -o mine.safetensors
    """
    from ecgtool.models.checkpoint import import_released, parse_label_names

    names = parse_label_names(labels) if labels is not None else None
    lines = import_released(src, output, label_names=names)
    for line in lines:
        typer.echo(line)
