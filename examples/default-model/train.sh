#!/usr/bin/env bash
# Train ecgtool's default model (ecgtool/data/models/default.safetensors) from ../shared/data.
#
#   examples/default-model/train.sh data      convert + preprocess + label (CPU, a few minutes)
#   examples/default-model/train.sh train     finetune the Net1D from random weights (CPU: ~1 h on 2 cores)
#   examples/default-model/train.sh install   copy the trained model into the package
#   examples/default-model/train.sh all       all three
#
# Run from the repository root. Settings (environment variables, defaults below):
#   DATA      the data folder (../shared/data)            WORK     working folder (out/default-model)
#   ECGTOOL   the ecgtool command ("ecgtool"; e.g. "python3 -m ecgtool" without pip install)
#   DEVICE    auto | cpu | cuda                             SEED     0
#   EPOCHS    passes over the training windows (25; the learning rate follows a cosine to 0 over them;
#             the best epoch by validation is kept: epoch 12 for the shipped model)
#   HOP       seconds between the starts of training windows (unset: they do not overlap; 5 doubles the
#             windows of the longer CinC strips)
#   FT_BATCH  (64); FT_STEPS: stop after this many updates instead (quick tests; the cosine then
#             ends there); FT_LABELS: a label subset (quick tests)
# Every step is an ecgtool command except merge_labels.py (puts label tables side by side).
set -euo pipefail

HERE=examples/default-model
DATA=${DATA:-../shared/data}
WORK=${WORK:-out/default-model}
ECGTOOL=${ECGTOOL:-ecgtool}
DEVICE=${DEVICE:-auto}
SEED=${SEED:-0}
PY=${PYTHON:-python3}
et() { $ECGTOOL "$@"; }

# Finetuning from random weights: one head for 9 outputs (PTB-XL superclasses + CinC 2017 classes), BCE with
# pos_weight, each record's loss over its own dataset's labels only (the other dataset's labels are null);
# leads zeroed at random (each with p 0.3; all but one in 20% of samples) so that any lead subset works;
# one learning rate for every layer (no pretrained layers to protect), AdamW 1e-3 with weight decay 0.01,
# 300 updates of warm-up then a cosine to 0; gradients clipped at 1; the best epoch by validation macro AUPRC.
FT_ARGS=(-l "$WORK/labels.parquet" --task multilabel --mode full --fold-column split --val-folds val
         --batch-size "${FT_BATCH:-64}" --lr 1e-3 --lr-scales 1,1 --weight-decay 0.01 --betas 0.9,0.99
         --schedule cosine --warmup-steps 300 --clip-norm 1.0 --patience 1000
         --seed "$SEED" --device "$DEVICE" --checkpoint-every 500
         --lead-dropout 0.3 --single-lead-prob 0.2)

data() {
  mkdir -p "$WORK"
  # REFERENCE.csv has no header row; give it one so that the join never depends on which records are read
  { echo record,label; cat "$DATA/cinc2017/REFERENCE.csv"; } > "$WORK/cinc2017_reference.csv"
  # test records (PTB-XL strat_fold 10, the fixed 20% of CinC 2017 in splits.csv) are never converted here
  # (PTB-XL rows name the 100 Hz file, 00009_lr; its 500 Hz twin 00009_hr is the same ECG)
  awk -F, 'NR > 1 && $2 == "test" {print "/" $1 ".hea"; if (sub(/_lr$/, "_hr", $1)) print "/" $1 ".hea"}' "$HERE/splits.csv" > "$WORK/test_files.txt"
  # PTB-XL at 500 Hz (records500; the 100 Hz copies of the same ECGs are not added twice) and CinC 2017 at 300 Hz
  find "$DATA/ptbxl-500/records500" "$DATA/cinc2017" -name '*.hea' | sort | grep -v -F -f "$WORK/test_files.txt" \
    > "$WORK/train_inputs.txt"
  et convert - --join "$DATA/ptbxl-500/ptbxl_database.csv" --join "$WORK/cinc2017_reference.csv" \
     --join "$HERE/splits.csv" -o "$WORK/train.raw.parquet" < "$WORK/train_inputs.txt"
  # 250 Hz, 12 leads, 0.5-45 Hz, per-lead z-score, 10 s windows; CinC 2017's lead 'ECG' is lead I; samples
  # rounded to bfloat16 precision to shrink the file (the zero-filled leads of CinC 2017 cost almost nothing)
  # training windows start every HOP s (--hop 5: overlapping by half)
  et preprocess --preset ecgtool-default --rename ECG=I --precision bfloat16 ${HOP:+--hop "$HOP"} \
     "$WORK/train.raw.parquet" -o "$WORK/train.seg.parquet"
  et label "$WORK/train.raw.parquet" --scp-column scp_codes --vocab ptbxl-superclass --split-column split \
     -o "$WORK/labels.ptbxl.parquet"
  et label "$WORK/train.raw.parquet" --class-column label --vocab cinc2017 --split-column split \
     -o "$WORK/labels.cinc2017.parquet"
  # AF also from PTB-XL's AFIB/AFLT statements, so that the AF output sees 12-lead ECGs too
  et label "$WORK/train.raw.parquet" --scp-column scp_codes --vocab "$HERE/af-ptbxl.json" --split-column split \
     -o "$WORK/labels.af-ptbxl.parquet"
  $PY "$HERE/merge_labels.py" "$WORK/labels.ptbxl.parquet" "$WORK/labels.cinc2017.parquet" \
     "$WORK/labels.af-ptbxl.parquet" -o "$WORK/labels.parquet"
  ls -l "$WORK/train.seg.parquet" "$WORK/labels.parquet"
}

train() {
  rm -rf "$WORK"/finetuned.*
  local stop=(--max-epochs "${EPOCHS:-25}")
  [[ -n "${FT_STEPS:-}" ]] && stop+=(--max-steps "$FT_STEPS")
  et finetune "$WORK/train.seg.parquet" -m ecgtool-default --from-scratch "${FT_ARGS[@]}" "${stop[@]}" \
     ${FT_LABELS:+--label-names "$FT_LABELS"} -o "$WORK/finetuned.safetensors" --report "$WORK/finetuned.json"
}

install() {
  mkdir -p ecgtool/data/models
  cp "$WORK/finetuned.safetensors" ecgtool/data/models/default.safetensors
  ls -l ecgtool/data/models/default.safetensors
}

case "${1:-all}" in
  data) data ;;
  train) train ;;
  install) install ;;
  all) data; train; install ;;
  *) echo "usage: $0 [data|train|install|all]" >&2; exit 2 ;;
esac
