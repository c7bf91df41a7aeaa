"""Option types shared by every command (one definition, used everywhere)."""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Optional

import typer
from typing_extensions import Annotated

Input = Annotated[str, typer.Argument(metavar="INPUT", help="Input table (Parquet, Arrow IPC or NPZ); '-' for stdin.")]
Inputs = Annotated[
    Optional[list[str]],
    typer.Argument(metavar="INPUT...", help="Input tables (Parquet, Arrow IPC or NPZ; several, a folder of part files "
                   "or a glob are read as one table) or raw ECG files and folders (converted on the fly); '-' "
                   "(the default) for stdin."),
]
Output = Annotated[
    str,
    typer.Option("-o", "--output", metavar="FILE",
                 help="Output file; '-' for stdout (Arrow IPC stream unless -O says otherwise); a folder (a name "
                 "ending in /, or an existing folder) gets part files part-00000.parquet, ... encoded in parallel "
                 "(-@), which every command reads as one table; {part} in a name names them (out/x-{part}.parquet)."),
]
OutputFormat = Annotated[
    Optional[str],
    typer.Option(
        "-O",
        "--output-format",
        metavar="FORMAT",
        help="parquet, arrow or npz (default: from the -o extension; Arrow on stdout).",
    ),
]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, metavar="N", help="Records per batch (bounds memory).")]
OnError = Annotated[
    Optional[str],
    typer.Option(
        "--on-error",
        metavar="POLICY",
        help="fail: stop at the first bad record; skip: drop bad records and exit 0. "
        "Default: drop them, exit 3 if any was dropped.",
    ),
]
Workers = Annotated[int, typer.Option("-j", "--workers", min=1, metavar="N", help="Worker processes.")]
Device = Annotated[str, typer.Option("--device", metavar="DEVICE", help="auto, cpu, cuda or cuda:N.")]
Model = Annotated[
    Optional[str],
    typer.Option("-m", "--model", metavar="MODEL", help="A registered model name, a .safetensors checkpoint, or a released .pt/.pth."),
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
Precision = Annotated[str, typer.Option("--precision", metavar="PRECISION", help="auto (the default: bf16 where the CPU has AVX512-BF16/AMX or the GPU has bf16, else fp32; said once), fp32 or bf16 (autocast).")]
Shard = Annotated[
    Optional[str],
    typer.Option(
        "--shard",
        metavar="K/N",
        help="K/N: process shard K of N (records split by a stable hash of record_id; the output name gets "
        ".shardKofN, or replaces {shard}; a folder -o gets part files part-shardKofN-00000.parquet, ..., so "
        "the N shards share it). Default: from SLURM_ARRAY_TASK_ID/COUNT when set.",
    ),
]
NoShard = Annotated[bool, typer.Option("--no-shard", help="Ignore SLURM array variables: process every record.")]

# Labels and splits: the same names in finetune, probe, compare and index.
LabelTable = Annotated[
    Optional[str],
    typer.Option("-l", "--label-table", metavar="FILE",
                 help="Label table ('ecgtool label': record_id and one 1/0/empty column per label, or a column of "
                 "class names), joined by record_id."),
]
LabelNames = Annotated[
    Optional[str],
    typer.Option("--label-names", metavar="NAME,...",
                 help="Comma-separated labels to use: a subset of the label table's (default: all of its "
                 "label_names), or label columns of the input table."),
]
FoldColumn = Annotated[
    Optional[str],
    typer.Option("--fold-column", metavar="COL",
                 help="Column holding each record's fold (e.g. PTB-XL's strat_fold); whole-number values match "
                 "however they are written (9, 9.0, '9')."),
]
TestFolds = Annotated[
    Optional[str],
    typer.Option("--test-folds", metavar="FOLD,...", help="Values of --fold-column held out for test, e.g. 10 or 8,9,10."),
]
ValFolds = Annotated[
    Optional[str],
    typer.Option("--val-folds", metavar="FOLD,...",
                 help="Values of --fold-column for validation (model selection, thresholds, temperature, conformal "
                 "calibration), e.g. 9."),
]
PatientColumn = Annotated[
    Optional[str],
    typer.Option("--patient-column", metavar="COL",
                 help="Column with the patient id: a patient's records never span two splits (default: "
                 "patient_id when present, else record_id)."),
]
Seed = Annotated[int, typer.Option("--seed", metavar="N", help="Random seed (resamples, folds, initialisation, order).")]
NBoot = Annotated[int, typer.Option("--n-boot", min=0, metavar="N", help="Bootstrap resamples for the 95% CIs.")]
Report = Annotated[Optional[str], typer.Option("--report", metavar="FILE", help="Write the JSON report here ('-' for stdout).")]

# Old option spellings, per command (its path below ecgtool): still accepted for one release (hidden from --help and completion), each
# with a deprecation note on stderr (once per command line).
RENAMED: dict[str, dict[str, str]] = {
    "convert": {"--join-key": "--join-on"},
    "finetune": {"--labels-table": "--label-table", "--labels": "--label-names", "--group-column": "--patient-column"},
    "probe": {"--labels": "--label-table", "--label-cols": "--label-names", "--fold-col": "--fold-column",
              "--test-fold": "--test-folds", "--val-fold": "--val-folds", "--group-col": "--patient-column"},
    "compare": {"--labels": "--label-table", "--label-cols": "--label-names"},
    "index": {"--labels": "--label-table"},
    "models import": {"--labels": "--label-names"},
}


def rename_options(command: str, args: list[str], takes_value: set[str] = frozenset(),
                   notes: list[str] | None = None) -> list[str]:
    """``args`` of ``command`` with old option spellings replaced by the current ones; one deprecation note per
    old spelling used (however often it is given) is appended to ``notes``. ``takes_value``: the command's
    options that take a value, whose value is never mistaken for an option; nothing after ``--`` is touched."""
    notes = [] if notes is None else notes
    seen: set[str] = set()
    table = RENAMED.get(command)
    if not table:
        return args
    out, skip = [], False
    for i, tok in enumerate(args):
        if skip:  # the value of the option before
            out.append(tok)
            skip = False
            continue
        if tok == "--":
            out.extend(args[i:])
            break
        name, eq, value = tok.partition("=")
        if name in table:
            new = table[name]
            if name not in seen:
                seen.add(name)
                notes.append(f"{command} {name} is deprecated and will be removed in the next release; use {new}")
            tok, name = new + eq + value, new
        out.append(tok)
        skip = not eq and name in takes_value
    return out

# Training runs (pretrain, finetune): the loop and the optimiser.
TrainBatch = Annotated[int, typer.Option("--batch-size", min=1, metavar="N", help="Samples (segments) per update.")]
Betas = Annotated[str, typer.Option("--betas", metavar="B1,B2", help="AdamW's two moment decay rates, each in [0, 1).")]
Eps = Annotated[float, typer.Option("--eps", metavar="EPS", help="AdamW's epsilon (added to the denominator).")]
WeightDecay = Annotated[float, typer.Option("--weight-decay", metavar="WD", help="AdamW's decoupled weight decay.")]
MaxSteps = Annotated[Optional[int], typer.Option("--max-steps", metavar="N", help="Stop after N updates.")]
MaxEpochs = Annotated[Optional[int], typer.Option("--max-epochs", metavar="N",
                                                  help="Stop after N passes over the training rows (when neither "
                                                  "this nor --max-steps is given: 10 in finetune, 200 in pretrain).")]
CheckpointEvery = Annotated[int, typer.Option("--checkpoint-every", metavar="N",
                                              help="Updates between checkpoints in the run folder (for --resume).")]
KeepCheckpoints = Annotated[int, typer.Option("--keep-checkpoints", metavar="N",
                                              help="Checkpoints kept in the run folder (older ones are deleted).")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue the run in the run folder exactly where its last "
                                      "checkpoint left it (same data order and random state).")]
ClipNorm = Annotated[float, typer.Option("--clip-norm", metavar="NORM",
                                         help="Clip the gradients' global L2 norm to NORM (0: no clipping).")]
NoAmp = Annotated[bool, typer.Option("--no-amp", help="No bf16 autocast on CUDA: train in float32 throughout.")]


@dataclass
class ModelRun:
    """The options of every command that runs a model over records (embed, predict, saliency)."""

    model: Optional[str]
    output: str
    output_format: Optional[str]
    device: str
    batch_size: int
    shard: Optional[str]
    no_shard: bool
    on_error: Optional[str]
    precision: str = "auto"


def _opt(name: str, annotation, default) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def _inject(head: list, tail: list, into: str, cls):
    """A decorator that adds the options ``head`` after a command's first parameter (its input) and ``tail`` after
    its own options, and hands their values to the command as one ``cls`` object in parameter ``into``."""
    names = [p.name for p in head + tail]

    def decorate(fn):
        sig = inspect.signature(fn, eval_str=True)
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for n, p in sig.parameters.items() if n != into]
        params = [*own[:1], *head, *own[1:], *tail]

        @functools.wraps(fn)
        def command(**kwargs):
            shared = cls(**{n: kwargs.pop(n) for n in names})  # before kwargs is passed on
            return fn(**kwargs, **{into: shared})

        command.__signature__ = sig.replace(parameters=params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return decorate


def model_run_options(batch_size: int = 32, precision: bool = True, output=Output, output_default: str = "-"):
    """Decorator (as sqlite-utils' ``output_options``): adds ``-m``, ``-o``, ``-O`` after the command's input
    argument and ``--device``, ``--precision``, ``--batch-size``, ``--shard``, ``--no-shard``, ``--on-error`` after
    its own options; the command receives them as one ``run: ModelRun``."""
    head = [_opt("model", Model, None), _opt("output", output, output_default), _opt("output_format", OutputFormat, None)]
    tail = [_opt("device", Device, "auto"), *([_opt("precision", Precision, "auto")] if precision else []),
            _opt("batch_size", BatchSize, batch_size), _opt("shard", Shard, None), _opt("no_shard", NoShard, False),
            _opt("on_error", OnError, None)]
    return _inject(head, tail, "run", ModelRun)


@dataclass
class LoopOptions:
    """The training-loop options of pretrain and finetune."""

    checkpoint_every: int
    keep_checkpoints: int
    resume: bool
    seed: int
    clip_norm: float
    no_amp: bool
    device: str


def training_loop_options(checkpoint_every: int):
    """Decorator: adds ``--checkpoint-every``, ``--keep-checkpoints``, ``--resume``, ``--seed``, ``--clip-norm``,
    ``--no-amp`` and ``--device`` after a training command's own options, handed over as ``loop_options``."""
    tail = [_opt("checkpoint_every", CheckpointEvery, checkpoint_every), _opt("keep_checkpoints", KeepCheckpoints, 2),
            _opt("resume", Resume, False), _opt("seed", Seed, 0), _opt("clip_norm", ClipNorm, 0.0),
            _opt("no_amp", NoAmp, False), _opt("device", Device, "auto")]
    return _inject([], tail, "loop_options", LoopOptions)
