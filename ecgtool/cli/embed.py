"""ecgtool embed: embeddings from a model."""

from __future__ import annotations

from typing import Optional

import typer
from typing_extensions import Annotated

from ecgtool.provenance import command_line
from ecgtool.cli.app import app
from ecgtool.cli.options import Inputs, ModelRun, model_run_options


@app.command("embed")
@model_run_options(batch_size=32)
def embed(
    src: Inputs = None,
    pool: Annotated[str, typer.Option(
        "--pool", metavar="mean|max|none",
        help="Per record: mean or max over windows and segments; none: one row per window.")] = "mean",
    local: Annotated[bool, typer.Option("--local", help="Also write the per-frame (local) features as column 'local'.")] = False,
    layer: Annotated[Optional[int], typer.Option(
        "--layer", metavar="N",
        help="Features of this transformer layer / network stage (0-based; -1 = last).")] = None,
    random_init: Annotated[bool, typer.Option("--random-init", help="Random weights for the registered architecture -m NAME (default ecgtool-default), drawn from --seed: the untrained baseline of a pretrained model. Named as such in the output's metadata.")] = False,
    seed: Annotated[int, typer.Option("--seed", metavar="N", help="Seed of the --random-init weights.")] = 0,
    run: ModelRun = None,
) -> None:
    """Embed ECGs with a model: one vector per record (or per window).

    The input is adapted to the model's contract: a raw records table gets the
    model's preprocess preset; a preprocessed table is resampled if its rate
    differs (with a note), longer rows are cut into windows and pooled,
    missing leads are zero-filled (with a warning), a different normalisation
    is refused. Raw ECG files or folders are converted on the fly.

    \b
    Examples:
      ecgtool embed -m ecgfm.safetensors seg.parquet -o emb.parquet
      ecgtool convert data/ -o - | ecgtool embed -m ecgfounder-12lead.safetensors - -o emb.parquet
      ecgtool embed -m model.safetensors seg.parquet --pool none --local -o frames.parquet
      sbatch --array=1-4 --wrap 'ecgtool embed -m m.safetensors big.parquet -o emb.parquet'
      ecgtool embed -m ecgtool-default --random-init --seed 0 rec.parquet -o emb.random.parquet
    """

    from ecgtool.cli.common import finish, progress, record_errors
    from ecgtool.cli.modelrun import open_input, open_model
    from ecgtool.models.apply import embed_table
    from ecgtool.models.inference import parse_shard, shard_path

    from ecgtool.io.stream import refuse_terminal

    errors = record_errors(run.on_error)
    sh = parse_shard(run.shard, use_env=not run.no_shard)
    refuse_terminal(shard_path(run.output, sh))
    if random_init:
        from ecgtool.models.apply import random_init_model
        from ecgtool.models.devices import resolve_device

        dev = resolve_device(run.device)
        net = random_init_model(run.model, seed).to(dev)
    else:
        net, dev = open_model(run.model, run.device)
    with open_input(src, run.batch_size, errors) as reader:
        stats = embed_table(reader, shard_path(run.output, sh), net, device=dev, precision=run.precision,
                            batch_size=run.batch_size, pool=pool, local=local, layer=layer, shard=sh,
                            errors=errors, fmt=run.output_format, argv=command_line(),
                            batches=progress(reader, getattr(reader, "num_rows", None), "embed",
                                             count=lambda b: b.num_rows))
    finish(errors, f"embedded {stats.rows_in} rows ({stats.windows} windows) into {stats.rows_out} rows")
