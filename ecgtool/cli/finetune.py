"""ecgtool finetune: train a classifier head (and optionally the backbone) on labelled ECGs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer
from typing_extensions import Annotated

from ecgtool.cli.app import app
from ecgtool.cli.options import (Betas, Eps, FoldColumn, Input, LabelNames, LabelTable, LoopOptions, MaxEpochs, MaxSteps,
                                 PatientColumn, Report, TestFolds, TrainBatch, ValFolds, WeightDecay,
                                 training_loop_options)
from ecgtool.errors import UsageError

log = logging.getLogger("ecgtool")


@app.command("finetune")
@training_loop_options(checkpoint_every=500)
def finetune(
    src: Input,
    model: Annotated[str, typer.Option("-m", "--model", metavar="MODEL", help="Checkpoint to start from (native .safetensors, "
                                       "fairseq .pt, ECGFounder .pth), or a registered name with --from-scratch.")],
    output: Annotated[Path, typer.Option("-o", "--output", metavar="FILE", help="The finetuned model (.safetensors).")],
    label_table: LabelTable = None,
    label_names: LabelNames = None,
    task: Annotated[str, typer.Option("--task", metavar="multilabel|multiclass|pu", help="multilabel (BCE with pos_weight), multiclass "
                                      "(cross-entropy) or pu (non-negative PU: 0 = unlabeled).")] = "multilabel",
    mode: Annotated[str, typer.Option("--mode", metavar="full|frozen-features|linear", help="full, frozen-features (conv extractor frozen, as "
                                      "ECG-FM) or linear (linear probing).")] = "full",
    from_scratch: Annotated[bool, typer.Option("--from-scratch", help="Random initial weights (baselines for "
                                               "data-efficiency studies).")] = False,
    no_pos_weight: Annotated[bool, typer.Option("--no-pos-weight", help="Plain BCE (no pos_weight).")] = False,
    pu_prior_scale: Annotated[float, typer.Option("--pu-prior-scale", metavar="X", help="PU class prior = this x the "
                                                  "observed positive rate.")] = 1.0,
    fold_column: FoldColumn = None,
    val_folds: ValFolds = None,
    test_folds: TestFolds = None,
    patient_column: PatientColumn = None,
    val_fraction: Annotated[float, typer.Option("--val-fraction", metavar="P", help="Without --fold-column: the "
                                                "fraction of patients (records) drawn for validation.")] = 0.1,
    test_fraction: Annotated[float, typer.Option("--test-fraction", metavar="P", help="Without --fold-column: the "
                                                 "fraction of patients (records) held out for test.")] = 0.0,
    lead_augment: Annotated[bool, typer.Option("--lead-augment", help="Single-lead models: train on Lead I "
                                               "rotated towards aVF (I cos t + aVF sin t).")] = False,
    lead_augment_angles: Annotated[str, typer.Option("--lead-augment-angles", metavar="DEG,...", help="Rotation angles in "
                                                     "degrees (each used with both signs).")] = "15,30,45",
    lead_dropout: Annotated[float, typer.Option("--lead-dropout", metavar="P", help="Zero each lead of a training sample with "
                                                "this probability (random lead masking), so the model works "
                                                "with missing leads.")] = 0.0,
    single_lead_prob: Annotated[float, typer.Option("--single-lead-prob", metavar="P", help="Zero all leads but one (chosen "
                                                    "among those with a signal) in this fraction of training "
                                                    "samples.")] = 0.0,
    batch_size: TrainBatch = 32,
    lr: Annotated[float, typer.Option("--lr", metavar="LR", help="Learning rate of the head (and of the encoder unless "
                                      "--lr-scales says otherwise).")] = 5e-5,
    lr_scales: Annotated[str, typer.Option("--lr-scales", metavar="UPPER,LOWER", help="Layer-wise learning rates: "
                                           "the upper and the lower half of the encoder train at --lr times these "
                                           "(the benchmark's 0.1,0.01 by default; 1,1: one learning rate).")] = "0.1,0.01",
    alpha: Annotated[float, typer.Option("--alpha", metavar="ALPHA", help="Conformal miscoverage level calibrated on the validation "
                                         "split and stored in the model: prediction sets (multiclass) or a "
                                         "positive/negative/abstain decision per label that errs at most this "
                                         "often.")] = 0.1,
    betas: Betas = "0.9,0.98",
    eps: Eps = 1e-8,
    weight_decay: WeightDecay = 0.0,
    schedule: Annotated[str, typer.Option("--schedule", metavar="constant|cosine", help="Learning rate over the run: "
                                          "constant, or a half cosine from --lr down to 0 at the last update "
                                          "(--max-steps, or --max-epochs epochs).")] = "constant",
    warmup_steps: Annotated[int, typer.Option("--warmup-steps", metavar="N", help="Raise the learning rate "
                                              "linearly from 0 over the first N updates.")] = 0,
    max_epochs: MaxEpochs = None,
    max_steps: MaxSteps = None,
    patience: Annotated[int, typer.Option("--patience", metavar="N", help="Evaluations without a better validation "
                                          "macro AUPRC before stopping.")] = 5,
    eval_every: Annotated[Optional[int], typer.Option("--eval-every", metavar="N", help="Updates between evaluations "
                                                      "(default: every epoch).")] = None,
    run_dir: Annotated[Optional[Path], typer.Option("--run-dir", metavar="DIR", help="Checkpoints and train_log.jsonl "
                                                    "(default: OUTPUT without suffix + '.run').")] = None,
    report: Report = None,
    loop_options: LoopOptions = None,
) -> None:
    """Finetune a model on a labelled record or segment table; keep the best by validation macro AUPRC.

    Labels come from a label table joined by record_id (-l/--label-table) or
    from label columns of the input (--label-names); null means unobserved (the
    label is masked out of the loss); with --task multiclass, one column of
    class names (N, A, O, ...) becomes one class each. The input is a
    fixed-shape table ('ecgtool preprocess --preset' of the model's family).
    Segments train one by one and are
    scored per record (mean logit). The saved checkpoint carries the label
    names, per-label thresholds chosen on validation, a temperature fitted
    on validation and a split-conformal calibration at --alpha (predict then
    writes prediction sets or per-label positive/negative/abstain decisions).
    Layer-wise learning rates: the head at --lr, the upper and lower encoder
    blocks at --lr x --lr-scales (default 0.1, 0.01). Under torchrun or srun
    the run uses DDP.

    \b
    Examples:
      ecgtool finetune seg.parquet -m pretrained.safetensors -l labels.parquet -o ft.safetensors \\
          --fold-column strat_fold --val-folds 9 --test-folds 10 --max-epochs 2
      ecgtool finetune seg.parquet -m ecgfm-tiny --from-scratch -l labels.parquet --max-epochs 2 -o scratch.safetensors
      ecgtool finetune seg10.parquet -m ecgfounder.pth -l labels.parquet --task pu --mode linear -o lp.safetensors
      ecgtool finetune cinc.parquet -m model.safetensors -l rhythm.parquet --label-names label --task multiclass \\
          --max-epochs 2 -o af.safetensors
      ecgtool finetune seg.parquet -m pretrained.safetensors -l labels.parquet --lr 1e-3 --lr-scales 0.1,0.01 \\
          --max-epochs 2 -o lw.safetensors
    """
    from ecgtool.cli.common import emit_report, parse_floats, parse_list, run_steps, training_status
    from ecgtool.train.finetune import FinetuneConfig, Finetuner
    from ecgtool.train.loop import LoopConfig

    try:
        angles = tuple(float(a) for a in parse_list(lead_augment_angles))
    except ValueError:
        raise UsageError(f"--lead-augment-angles {lead_augment_angles!r}: expected numbers") from None
    cfg = FinetuneConfig(task=task, mode=mode, labels=parse_list(label_names) or None, pos_weight=not no_pos_weight,
                         pu_prior_scale=pu_prior_scale, lr=lr,
                         lr_scales=parse_floats(lr_scales, 2, "--lr-scales"), betas=parse_floats(betas, 2, "--betas"), eps=eps,
                         weight_decay=weight_decay, batch_size=batch_size, fold_column=fold_column,
                         val_folds=parse_list(val_folds), test_folds=parse_list(test_folds), group_column=patient_column,
                         val_fraction=val_fraction, test_fraction=test_fraction, lead_augment=lead_augment,
                         lead_augment_angles=angles, lead_dropout=lead_dropout,
                         single_lead_prob=single_lead_prob, alpha=alpha,
                         schedule=schedule, warmup_steps=warmup_steps)
    if max_steps is None and max_epochs is None:
        max_epochs = 10
    rd = run_dir or output.with_name(output.stem + ".run")
    lo = loop_options
    loop = LoopConfig(out_dir=rd, max_steps=max_steps, max_epochs=max_epochs, checkpoint_every=lo.checkpoint_every,
                      keep_checkpoints=lo.keep_checkpoints, seed=lo.seed, resume=lo.resume, eval_every=eval_every,
                      patience=patience, clip_norm=lo.clip_norm, amp=not lo.no_amp)
    loop.check()
    cfg.check()
    ft = Finetuner(src, model, output, labels=label_table, cfg=cfg, loop=loop, device=lo.device,
                   from_scratch=from_scratch, run_dir=rd)
    r = ft.report
    if ft.dist.is_main:
        log.info("finetune: %s, %s %s, %d labels; %d train / %d val / %d test rows (%s)", model, task, mode,
                 len(ft.label_names), r["train_rows"], r["val_rows"], r["test_rows"], r["split"])
    run_steps(ft, "finetune", training_status)
    result = ft.finish()
    if ft.dist.is_main:
        val = result["val"]
        if result["best_step"] is None:
            log.warning("finetune: %d updates and no validation evaluation ran (training ended before the first "
                        "one; lower --eval-every or raise --max-steps); model written to %s", result["steps"], output)
        else:
            log.info("finetune: %d updates (best at step %s%s); validation macro AUPRC %.4f, macro AUROC %.4f; "
                     "temperature %.3f; model written to %s", result["steps"], result["best_step"],
                     ", stopped early" if result["stopped_early"] else "", val["macro_auprc"], val["macro_auroc"],
                     result["temperature"], output)
        if "test" in result:
            log.info("finetune: test macro AUPRC %.4f, macro AUROC %.4f", result["test"]["macro_auprc"],
                     result["test"]["macro_auroc"])
        if report is not None:
            emit_report(result, report, False, None)
