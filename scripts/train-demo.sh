#!/bin/sh
# Train a tiny DeepSeek-V3-style model (configs/demo-v3-tiny.json: 4 layers,
# MLA, 8 routed experts + 1 shared, noaux_tc routing) on the bundled Brown
# corpus with the bundled tokenizer, then generate from it. About 3 minutes
# on 2 cores; rerunning resumes the checkpoint in $OUT. $OUT also gets
# train_log.csv (one row per step) and loss.svg (the loss curves).
set -eu
DSC=${1:-build/dsc}
OUT=${DSC_TRAIN_OUT:-build/demo-model}
STEPS=${DSC_TRAIN_STEPS:-2000}
CORPUS=build/brown.txt
[ -f "$CORPUS" ] || xz -dc data/brown.txt.xz > "$CORPUS"
echo "\$ dsc train -m $OUT --data $CORPUS --tokenizer tests/fixtures/tokenizer_brown --config configs/demo-v3-tiny.json --steps $STEPS ..."
"$DSC" train -m "$OUT" --data "$CORPUS" --tokenizer tests/fixtures/tokenizer_brown \
    --config configs/demo-v3-tiny.json --steps "$STEPS" --batch 8 --seq 128 --lr 3e-3 \
    --warmup 100 --eval-every 100 --save-every 100 --val-frac 0.01 --seed 1
echo
echo "\$ dsc run -m $OUT -p \"The jury said\" -n 40 --temp 0.7 --seed 1"
"$DSC" run -m "$OUT" -p "The jury said" -n 40 --temp 0.7 --seed 1
