"""ecgtool pretrain: ECG-FM self-supervised pretraining (wav2vec 2.0 + CMSC + RLM)."""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from typing_extensions import Annotated

from ecgtool.cli.app import app
from ecgtool.cli.options import (Betas, Eps, Input, LoopOptions, MaxEpochs, MaxSteps, WeightDecay,
                                 training_loop_options)

log = logging.getLogger("ecgtool")


@app.command("pretrain")
@training_loop_options(checkpoint_every=1000)
def pretrain(
    src: Input,
    output_dir: Annotated[Path, typer.Option("-o", "--output-dir", metavar="DIR", help="Run folder: checkpoints/, "
                                             "train_log.jsonl and the final model.safetensors.")],
    model: Annotated[str, typer.Option("-m", "--model", metavar="MODEL", help="Registered ECG-FM variant (random init) "
                                       "or a pretraining checkpoint to continue from.")] = "ecgfm-base",
    no_w2v: Annotated[bool, typer.Option("--no-w2v", help="Drop the wav2vec 2.0 loss.")] = False,
    no_cmsc: Annotated[bool, typer.Option("--no-cmsc", help="Drop CMSC (then items are single segments).")] = False,
    no_rlm: Annotated[bool, typer.Option("--no-rlm", help="No random lead masking.")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", metavar="N", help="Items per process and update "
                                            "(segment pairs with CMSC, segments without).")] = 64,
    max_steps: MaxSteps = None,
    max_epochs: MaxEpochs = None,
    lr: Annotated[float, typer.Option("--lr", metavar="LR", help="Learning rate (fixed).")] = 5e-5,
    betas: Betas = "0.9,0.98",
    eps: Eps = 1e-6,
    weight_decay: WeightDecay = 0.01,
    mask_prob: Annotated[float, typer.Option("--mask-prob", metavar="P", help="wav2vec 2.0 masking: about this "
                                             "fraction of frames is masked before overlapping spans merge "
                                             "(P x frames / --mask-length spans).")] = 0.65,
    mask_length: Annotated[int, typer.Option("--mask-length", metavar="N", help="Span length in frames.")] = 10,
    min_masks: Annotated[int, typer.Option("--min-masks", metavar="N", help="Minimum spans per segment.")] = 2,
    num_negatives: Annotated[int, typer.Option("--num-negatives", metavar="N", help="InfoNCE distractors per masked "
                                               "frame, drawn from the other masked frames of its segment.")] = 100,
    logit_temp: Annotated[float, typer.Option("--logit-temp", metavar="T", help="InfoNCE temperature (cosine "
                                              "similarities are divided by it).")] = 0.1,
    latent_temp: Annotated[str, typer.Option("--latent-temp", metavar="MAX,MIN,DECAY", help="Gumbel-softmax "
                                             "temperature of the quantizer: max(MAX x DECAY^updates, MIN).")]
    = "2,0.5,0.999995",
    diversity_weight: Annotated[float, typer.Option("--diversity-weight", metavar="X", help="Weight of the codebook "
                                                    "diversity loss (G*V - perplexity) / (G*V).")] = 0.1,
    feature_penalty_weight: Annotated[float, typer.Option("--feature-penalty-weight", metavar="X", help="Weight of "
                                                          "the penalty on the mean squared conv features.")] = 10.0,
    cmsc_weight: Annotated[float, typer.Option("--cmsc-weight", metavar="X",
                                               help="Weight of the CMSC loss in the total.")] = 1.0,
    cmsc_temp: Annotated[float, typer.Option("--cmsc-temp", metavar="T", help="CMSC temperature.")] = 0.1,
    rlm_prob: Annotated[float, typer.Option("--rlm-prob", metavar="P", help="Probability of zeroing each lead "
                                            "of each segment.")] = 0.5,
    loop_options: LoopOptions = None,
) -> None:
    """Pretrain an ECG-FM transformer on a segment table (wav2vec 2.0 + CMSC + RLM, as published).

    The input is a fixed-shape segment table from 'ecgtool preprocess'
    (5 s at 500 Hz, 12 leads, per-lead z-score for the ECG-FM variants);
    CMSC pairs adjacent segments of the same record. Every hyperparameter
    defaults to the published value. Checkpoints go to OUTPUT_DIR/checkpoints
    every --checkpoint-every updates; --resume continues bit for bit. Under
    torchrun or srun each process trains on its share of every batch (DDP).

    \b
    Examples:
      ecgtool pretrain seg.parquet -m ecgfm-tiny -o runs/pt --batch-size 8 --max-steps 2
      ecgtool pretrain seg.parquet -m ecgfm-tiny -o runs/pt --batch-size 8 --max-steps 4 --resume
      ecgtool pretrain seg.parquet -m ecgfm-tiny -o runs/w2v --no-cmsc --no-rlm --batch-size 16 --max-epochs 2
      torchrun --standalone --nproc_per_node 2 -m ecgtool pretrain seg.parquet -m ecgfm-tiny -o runs/ddp \\
          --batch-size 4 --max-steps 2
    """
    from ecgtool.cli.common import parse_floats, run_steps, training_status
    from ecgtool.train.loop import LoopConfig
    from ecgtool.train.pretrain import PretrainConfig, Pretrainer

    cfg = PretrainConfig(
        w2v=not no_w2v, cmsc=not no_cmsc, rlm=not no_rlm, mask_prob=mask_prob, mask_length=mask_length,
        min_masks=min_masks, num_negatives=num_negatives, logit_temp=logit_temp,
        latent_temp=parse_floats(latent_temp, 3, "--latent-temp"), diversity_weight=diversity_weight,
        feature_penalty_weight=feature_penalty_weight, cmsc_weight=cmsc_weight, cmsc_temp=cmsc_temp,
        rlm_prob=rlm_prob, lr=lr, betas=parse_floats(betas, 2, "--betas"), eps=eps, weight_decay=weight_decay,
        batch_size=batch_size)
    if max_steps is None and max_epochs is None:
        max_epochs = 200
    lo = loop_options
    loop = LoopConfig(out_dir=output_dir, max_steps=max_steps, max_epochs=max_epochs,
                      checkpoint_every=lo.checkpoint_every, keep_checkpoints=lo.keep_checkpoints, seed=lo.seed,
                      resume=lo.resume, clip_norm=lo.clip_norm, amp=not lo.no_amp)
    loop.check()
    trainer = Pretrainer(src, model, output_dir, cfg, loop, device=lo.device)
    if trainer.dist.is_main:
        log.info("pretrain: %s on %d items (%d segments), %d updates per epoch, device %s, %d process(es)",
                 model, trainer.plan.n_items, len(trainer.data), trainer.plan.batches_per_epoch, trainer.device,
                 trainer.dist.world_size)
    last = run_steps(trainer, "pretrain", training_status)
    path = trainer.finish()
    if path is not None:
        loss = f", last loss {last['loss']:.4f}" if last else ""
        log.info("pretrain: %d updates%s; model written to %s (log: %s)", trainer.loop.state.step, loss, path,
                 trainer.loop.log_path)
