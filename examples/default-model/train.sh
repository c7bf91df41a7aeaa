#!/usr/bin/env bash
# Train ecgtool's default model (ecgtool/data/models/default.safetensors) from ../shared/data.
#
#   examples/default-model/train.sh data      convert + preprocess + label (CPU, ~2 min)
#   examples/default-model/train.sh train     pretrain, finetune, finetune from scratch (GPU or CPU)
#   examples/default-model/train.sh install   copy the finetuned model into the package
#   examples/default-model/train.sh all       all three
#
# Run from the repository root. Settings (environment variables, defaults below):
#   DATA      the data folder (../shared/data)            WORK     working folder (out/default-model)
#   ECGTOOL   the ecgtool command ("ecgtool"; e.g. "python3 -m ecgtool" without pip install)
#   DEVICE    auto | cpu | cuda                             SEED     0
#   PRETRAIN_STEPS  pretraining updates (4000), or PRETRAIN_SECONDS: time 100 updates first and run as
#                   many as fit in that many seconds (the run that made the shipped model used 210)
#   FT_STEPS  finetuning updates at most (3000), or FT_SECONDS likewise (from the pretraining rate)
#   PT_BATCH (128 pairs), FT_BATCH (64), PROBE_STEPS (100); PT_EXTRA: more pretrain options; FT_LABELS: a label subset (quick tests)
# Every step is an ecgtool command except merge_labels.py (puts two label tables side by side).
set -euo pipefail

HERE=examples/default-model
DATA=${DATA:-../shared/data}
WORK=${WORK:-out/default-model}
ECGTOOL=${ECGTOOL:-ecgtool}
DEVICE=${DEVICE:-auto}
SEED=${SEED:-0}
PY=${PYTHON:-python3}
et() { $ECGTOOL "$@"; }

# Pretraining: the published ECG-FM objective (wav2vec 2.0 + CMSC + RLM) and loss weights; for a run of
# thousands (not hundreds of thousands) of updates: lr 3e-4 instead of 5e-5, gradient clipping at 1,
# Gumbel temperature decay 0.9995 per update (reaches its floor of 0.5 after ~2800 updates).
PT_ARGS=(-m ecgtool-default --batch-size "${PT_BATCH:-128}" --lr 3e-4 --clip-norm 1.0 --latent-temp 2,0.5,0.9995
         --seed "$SEED" --device "$DEVICE" ${PT_EXTRA:-})
# Finetuning: one head for 9 outputs (PTB-XL superclasses + CinC 2017 classes), BCE with pos_weight, leads
# zeroed at random (each with p 0.3; all but one in 20% of samples) so that any lead subset works;
# each record's loss over its own dataset's labels only (the other dataset's labels are null).
FT_ARGS=(-l "$WORK/labels.parquet" --task multilabel --mode full --fold-column split --val-folds val
         --batch-size "${FT_BATCH:-64}" --lr 1e-4 --patience 4 --seed "$SEED" --device "$DEVICE" --checkpoint-every 100000
         --lead-dropout 0.3 --single-lead-prob 0.2)

data() {
  mkdir -p "$WORK"
  # REFERENCE.csv has no header row; give it one so that the join never depends on which records are read
  { echo record,label; cat "$DATA/cinc2017/REFERENCE.csv"; } > "$WORK/cinc2017_reference.csv"
  # test records (PTB-XL strat_fold 10, the fixed 20% of CinC 2017 in splits.csv) are never converted here
  awk -F, 'NR > 1 && $2 == "test" {print "/" $1 ".hea"}' "$HERE/splits.csv" > "$WORK/test_files.txt"
  { find "$DATA/ptbxl-500/records100" "$DATA/cinc2017" -name '*.hea' | sort | grep -v -F -f "$WORK/test_files.txt"
    for d in ludb/data cinc2021-sample cpsc2021-sample wfdb-samples formats; do echo "$DATA/$d"; done
  } > "$WORK/train_inputs.txt"
  # records that cannot be read (missing .dat files, Philips XML) are skipped with a message
  et convert - --join "$DATA/ptbxl-500/ptbxl_database.csv" --join "$WORK/cinc2017_reference.csv" \
     --join "$HERE/splits.csv" --on-error skip -o "$WORK/train.raw.parquet" < "$WORK/train_inputs.txt"
  # 100 Hz, 12 leads, 5 s windows, per-lead z-score; CinC 2017's lead 'ECG' is lead I; records with
  # none of the 12 leads (blood pressure, respiration, ... in wfdb-samples) are skipped; samples are
  # rounded to bfloat16 precision (what bf16 autocast feeds the model anyway) to halve the file
  et preprocess --preset ecgtool-default --rename ECG=I --precision bfloat16 --on-error skip \
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

rate_of() {  # updates per second of a timed run: rate_of STEPS SECONDS
  awk -v n="$1" -v t="$2" 'BEGIN { if (t < 1) t = 1; printf "%.4f", n / t }'
}

train() {
  local seg="$WORK/train.seg.parquet" pt="$WORK/pretrain" n rate
  rm -rf "$pt" "$WORK"/finetuned.* "$WORK"/scratch.*
  if [[ -n "${PRETRAIN_SECONDS:-}" ]]; then
    # time PROBE_STEPS updates (start-up included, so the estimate errs short), then resume up to the budget
    local probe=${PROBE_STEPS:-100} t0=$(date +%s)
    et pretrain "$seg" -o "$pt" "${PT_ARGS[@]}" --max-steps "$probe" --checkpoint-every "$probe"
    rate=$(rate_of "$probe" $(( $(date +%s) - t0 )))
    n=$(awk -v r="$rate" -v s="$PRETRAIN_SECONDS" 'BEGIN { printf "%d", r * s }')
    (( n < probe )) && n=$probe
    echo "pretrain: $rate updates/s -> $n updates" >&2
    et pretrain "$seg" -o "$pt" "${PT_ARGS[@]}" --max-steps "$n" --checkpoint-every 1000 --resume
  else
    rate=""
    et pretrain "$seg" -o "$pt" "${PT_ARGS[@]}" --max-steps "${PRETRAIN_STEPS:-4000}" --checkpoint-every 1000
  fi
  local ft=${FT_STEPS:-3000}
  if [[ -n "${FT_SECONDS:-}" && -n "$rate" ]]; then
    ft=$(awk -v r="$rate" -v s="$FT_SECONDS" 'BEGIN { printf "%d", r * s }')
    (( ft < 10 )) && ft=10
    echo "finetune: at most $ft updates" >&2
  fi
  et finetune "$seg" -m "$pt/model.safetensors" "${FT_ARGS[@]}" ${FT_LABELS:+--labels "$FT_LABELS"} --max-steps "$ft" \
     -o "$WORK/finetuned.safetensors" --report "$WORK/finetuned.json"
  # the data-efficiency baseline: the same finetuning from random weights
  et finetune "$seg" -m ecgtool-default --from-scratch "${FT_ARGS[@]}" ${FT_LABELS:+--labels "$FT_LABELS"} --max-steps "$ft" \
     -o "$WORK/scratch.safetensors" --report "$WORK/scratch.json"
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
