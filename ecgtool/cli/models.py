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
    if d.get("parameters") is None:
        return "?"
    text = f"{d['parameters']:,}"
    if d.get("released_file_parameters"):
        text += f" ({d['released_file_parameters']:,} in file*)"
    return text


def _leads(leads: list[str]) -> str:
    from ecgtool.signal.leads import STANDARD_12

    return "12 (I..V6)" if tuple(leads) == STANDARD_12 else ",".join(leads)


def _settings(pairs: list[str] | None) -> dict:
    """``--set KEY=VALUE`` pairs; values are read as JSON where they parse (4 -> int, true -> bool)."""
    from ecgtool.errors import UsageError

    out: dict = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set {pair!r} is not KEY=VALUE", "e.g. --set num_heads=16")
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


Set = Annotated[Optional[list[str]], typer.Option(
    "--set", metavar="KEY=VALUE", help="An architecture field the released file does not store, under the name "
    "its card uses (repeatable), e.g. --set num_heads=16 for ECG-JEPA.")]


@models_app.callback()
def models(
    ctx: typer.Context,
    pattern: Annotated[Optional[str], typer.Option("--pattern", metavar="GLOB", help="Only names matching this glob.")] = None,
    as_json: Json = False,
) -> None:
    """List the registered models: name, family, parameters, input contract, outputs and licence.

    A registered name is an architecture with its model card; weights come
    from a checkpoint (a .safetensors written by ecgtool, or a released file,
    see 'models import'). Released files that hold tensors the network never
    uses (ECGFounder's BatchNorm) show both counts.

    \b
    Examples:
      ecgtool models
      ecgtool models --pattern 'ecgfm-*'
      ecgtool models --json
      ecgtool models info ecgfm-base
      ecgtool models import 12_lead_ECGFounder.pth -o ecgfounder-12lead.safetensors
    """
    if ctx.invoked_subcommand is not None:
        return
    from ecgtool.models.checkpoint import list_model_summaries

    rows = list_model_summaries(pattern)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    header = ("name", "family", "parameters", "fs", "leads", "samples", "normalisation", "outputs", "licence")
    table = [header]
    for r in rows:
        table.append((r["name"], r["title"] or r["family"], _params(r), f"{r['fs']:g} Hz", _leads(r["leads"]),
                      f"{r['n_samples']} ({r['seconds']:g} s)", r["normalisation"],
                      f"{r['n_classes']} labels" if r["n_classes"] else "embedding", r["licence"]))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    if any(r.get("released_file_parameters") for r in rows):
        typer.echo("* the released file also holds tensors the network never uses (ECGFounder: 66,368 BatchNorm "
                   "parameters); the importer skips them")
    if any(r["non_commercial"] for r in rows):
        typer.echo("NC: non-commercial licence; ecgtool says so whenever such weights are loaded")


@models_app.command("info")
def info(
    spec: Annotated[str, typer.Argument(help="A registered model name or a checkpoint file.", metavar="MODEL")],
    settings: Set = None,
    as_json: Json = False,
) -> None:
    """Describe one model: a registered name (its whole model card) or a checkpoint file.

    \b
    Examples:
      ecgtool models info ecgfm-base
      ecgtool models info ecgfounder-1lead --json
      ecgtool models info ecgfounder-12lead.safetensors --json
    """
    from ecgtool.models.checkpoint import describe_model

    d = describe_model(spec, **_settings(settings))
    if as_json:
        typer.echo(json.dumps(d, indent=2, default=str))
        return
    title = f" ({d['title']})" if d.get("title") else ""
    typer.echo(f"{d['name']}{title}: {d.get('description') or d['family']}")
    typer.echo(f"family: {d['family']}")
    typer.echo(f"parameters: {d['parameters']:,}")
    if d.get("released_file_parameters"):
        typer.echo(f"parameters in the released file: {d['released_file_parameters']:,} "
                   f"(incl. {d['released_file_parameters'] - d['parameters']:,} the network never uses)")
    typer.echo(f"input: {d['fs']:g} Hz, {d['n_samples']} samples ({d['seconds']:g} s), {d['normalisation']}"
               + (f", filters: {d['filters']}" if d.get("filters") not in (None, "none") else "")
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
    if d.get("capabilities"):
        typer.echo(f"capabilities: {', '.join(d['capabilities'])}")
    lic = d.get("licence")
    if lic:
        typer.echo(f"licence: code {lic['code']}; weights {lic['weights']}"
                   + (" (NON-COMMERCIAL)" if lic.get("non_commercial") else ""))
    elif d.get("licence_note"):
        typer.echo(f"licence: {d['licence_note']}")
    w = d.get("weights")
    if w:
        typer.echo(f"weights: {w['source'] or 'none published'}")
        for f in w.get("files") or ():
            extra = ", ".join(f"{k} {v}" for k, v in f.items() if k != "name")
            typer.echo(f"  {f['name']}" + (f" ({extra})" if extra else ""))
    if d.get("pretraining_data"):
        typer.echo(f"pretrained on: {'; '.join(d['pretraining_data'])}")
    if d.get("paper"):
        typer.echo(f"paper: {d['paper']}")
    for k, v in (d.get("published") or {}).items():
        typer.echo(f"published: {k}: {v}")
    if d.get("notes"):
        typer.echo(f"notes: {d['notes']}")
    typer.echo("config: " + json.dumps(d["config"]))
    if d.get("random_weights"):
        typer.echo("this is an architecture: load a checkpoint for trained weights")
    for key in ("thresholds", "temperature"):
        if d.get(key) is not None:
            typer.echo(f"{key}: {json.dumps(d[key])[:200]}")
    if d.get("provenance"):
        typer.echo("provenance: " + json.dumps(d["provenance"], default=str))


@models_app.command("import")
def import_(
    src: Annotated[str, typer.Argument(help="A released checkpoint file or model folder.", metavar="FILE")],
    output: Annotated[str, typer.Option("-o", "--output", metavar="FILE", help="The .safetensors file to write.")],
    labels: Annotated[Optional[str], typer.Option(
        "--label-names", metavar="NAME,...", help="Names of the outputs, in order: comma-separated, a text file with one "
        "per line, or a vocabulary ('ecgfm-17', alias 'mimic-iv-ecg': the released ECG-FM classifier's 17). "
        "fairseq-signals files carry none.")] = None,
    settings: Set = None,
) -> None:
    """Convert a released checkpoint once into ecgtool's safetensors format (no pickle on later loads).

    The file's kind is read from its content; each model family reads its
    own released layouts ('ecgtool models info NAME' says where they are
    published). Every tensor must map onto the model; the report lists what
    was read.

    \b
    Examples:
      ecgtool models import 12_lead_ECGFounder.pth -o ecgfounder-12lead.safetensors
      ecgtool models import mimic_iv_ecg_physionet_pretrained.pt -o ecgfm-base.safetensors
      ecgtool models import mimic_iv_ecg_finetuned.pt --label-names mimic-iv-ecg -o ecgfm-mimic17.safetensors
      ecgtool models import my_finetuned.pt --label-names NORM,MI,STTC,CD,HYP -o mine.safetensors
    """
    from ecgtool.models.checkpoint import import_released, parse_label_names

    names = parse_label_names(labels) if labels is not None else None
    lines = import_released(src, output, label_names=names, **_settings(settings))
    for line in lines:
        typer.echo(line)
