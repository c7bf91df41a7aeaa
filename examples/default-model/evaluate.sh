#!/usr/bin/env bash
# The model card's numbers: held-out PTB-XL strat_fold 10 and the fixed CinC 2017 test split
# (examples/default-model/splits.csv), for the shipped default model, the same finetuning from scratch,
# and the default model given lead I only. Run from the repository root after train.sh:
#
#   examples/default-model/evaluate.sh            # writes $WORK/eval.json and prints the table
#
# DATA, WORK, ECGTOOL, PYTHON as in train.sh; MODEL: the model to measure (default: the one in the package);
# PREVIOUS: optionally a previous default model to compare with, side by side on the same resamples
# (e.g. git show ffd3b93:ecgtool/data/models/default.safetensors > out/previous_default.safetensors),
# preprocessed with PREVIOUS_PRESET (ecgfm-mini: the 100 Hz ECG-FM default of ecgtool 0.x); PRECISION: fp32
# (default) or auto / bf16, the precision predict runs in.
set -euo pipefail

HERE=examples/default-model
DATA=${DATA:-../shared/data}
WORK=${WORK:-out/default-model}
ECGTOOL=${ECGTOOL:-ecgtool}
PY=${PYTHON:-python3}
MODEL=${MODEL:-}
PREVIOUS=${PREVIOUS:-}
PREVIOUS_PRESET=${PREVIOUS_PRESET:-ecgfm-mini}
et() { $ECGTOOL "$@"; }

mkdir -p "$WORK"
# REFERENCE.csv has no header row; give it one so that the join never depends on which records are read
{ echo record,label; cat "$DATA/cinc2017/REFERENCE.csv"; } > "$WORK/cinc2017_reference.csv"
# (PTB-XL rows name the 100 Hz file, 00009_lr; its 500 Hz twin 00009_hr is the same ECG)
  awk -F, 'NR > 1 && $2 == "test" {print "/" $1 ".hea"; if (sub(/_lr$/, "_hr", $1)) print "/" $1 ".hea"}' "$HERE/splits.csv" > "$WORK/test_files.txt"
find "$DATA/ptbxl-500/records500" "$DATA/cinc2017" -name '*.hea' | sort | grep -F -f "$WORK/test_files.txt" \
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
# lead I alone (the other 11 leads are zero-filled by predict, as finetuning's lead dropout trained for)
et preprocess --preset ecgtool-default --rename ECG=I --leads I "$WORK/test.raw.parquet" -o "$WORK/test.leadI.parquet"

m=(${MODEL:+-m "$MODEL"})   # no -m: the packaged model
# float32 (PRECISION=auto: bf16 where the CPU has it, as predict does by default), so that the card's numbers
# are the same on every machine
p=(--precision "${PRECISION:-fp32}")
et predict "${m[@]}" "${p[@]}" "$WORK/test.seg.parquet" -o "$WORK/pred.default.parquet"
et predict "${m[@]}" "${p[@]}" "$WORK/test.leadI.parquet" -o "$WORK/pred.default.leadI.parquet"
preds=(default="$WORK/pred.default.parquet" "default, lead I only"="$WORK/pred.default.leadI.parquet")
if [[ -n "$PREVIOUS" ]]; then
  et preprocess --preset "$PREVIOUS_PRESET" --rename ECG=I "$WORK/test.raw.parquet" -o "$WORK/test.prev.parquet"
  et predict -m "$PREVIOUS" "${p[@]}" "$WORK/test.prev.parquet" -o "$WORK/pred.previous.parquet"
  preds+=(previous="$WORK/pred.previous.parquet")
fi

$PY "$HERE/evaluate.py" "$WORK/test.labels.parquet" "${preds[@]}" --json "$WORK/eval.json"
