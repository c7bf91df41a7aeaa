#!/usr/bin/env bash
# The model card's numbers: held-out PTB-XL strat_fold 10 and the fixed CinC 2017 test split
# (examples/default-model/splits.csv), for the shipped default model, the same finetuning from scratch,
# and the default model given lead I only. Run from the repository root after train.sh:
#
#   examples/default-model/evaluate.sh            # writes $WORK/eval.json and prints the table
#
# DATA, WORK, ECGTOOL, PYTHON as in train.sh; SCRATCH: the from-scratch model ($WORK/scratch.safetensors).
set -euo pipefail

HERE=examples/default-model
DATA=${DATA:-../shared/data}
WORK=${WORK:-out/default-model}
ECGTOOL=${ECGTOOL:-ecgtool}
PY=${PYTHON:-python3}
SCRATCH=${SCRATCH:-$WORK/scratch.safetensors}
et() { $ECGTOOL "$@"; }

mkdir -p "$WORK"
# REFERENCE.csv has no header row; give it one so that the join never depends on which records are read
{ echo record,label; cat "$DATA/cinc2017/REFERENCE.csv"; } > "$WORK/cinc2017_reference.csv"
awk -F, 'NR > 1 && $2 == "test" {print "/" $1 ".hea"}' "$HERE/splits.csv" > "$WORK/test_files.txt"
find "$DATA/ptbxl-500/records100" "$DATA/cinc2017" -name '*.hea' | sort | grep -F -f "$WORK/test_files.txt" \
  > "$WORK/test_inputs.txt"
et convert - --join "$DATA/ptbxl-500/ptbxl_database.csv" --join "$WORK/cinc2017_reference.csv" \
   --join "$HERE/splits.csv" -o "$WORK/test.raw.parquet" < "$WORK/test_inputs.txt"
et label "$WORK/test.raw.parquet" --scp-column scp_codes --vocab ptbxl-superclass -o "$WORK/test.labels.ptbxl.parquet"
et label "$WORK/test.raw.parquet" --class-column label --vocab cinc2017 -o "$WORK/test.labels.cinc2017.parquet"
et label "$WORK/test.raw.parquet" --scp-column scp_codes --vocab "$HERE/af-ptbxl.json" -o "$WORK/test.labels.af.parquet"
$PY "$HERE/merge_labels.py" "$WORK/test.labels.ptbxl.parquet" "$WORK/test.labels.cinc2017.parquet" \
   "$WORK/test.labels.af.parquet" -o "$WORK/test.labels.parquet"

# the model's own preset (full float32 precision here); CinC 2017's 'ECG' is lead I
et preprocess --preset ecgtool-default --rename ECG=I "$WORK/test.raw.parquet" -o "$WORK/test.seg.parquet"
# lead I alone (the other 11 leads are zero-filled by predict, as RLM trained for)
et preprocess --preset ecgtool-default --rename ECG=I --leads I "$WORK/test.raw.parquet" -o "$WORK/test.leadI.parquet"

et predict "$WORK/test.seg.parquet" -o "$WORK/pred.default.parquet"          # no -m: the packaged model
et predict "$WORK/test.leadI.parquet" -o "$WORK/pred.default.leadI.parquet"
et predict -m "$SCRATCH" "$WORK/test.seg.parquet" -o "$WORK/pred.scratch.parquet"
et predict -m "$SCRATCH" "$WORK/test.leadI.parquet" -o "$WORK/pred.scratch.leadI.parquet"

$PY "$HERE/evaluate.py" "$WORK/test.labels.parquet" \
   pretrained="$WORK/pred.default.parquet" from-scratch="$WORK/pred.scratch.parquet" \
   "pretrained, lead I only"="$WORK/pred.default.leadI.parquet" \
   "from scratch, lead I only"="$WORK/pred.scratch.leadI.parquet" --json "$WORK/eval.json"
