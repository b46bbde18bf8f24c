#!/bin/sh
# The main job on the bundled default model: describe it, then run one
# forward pass and show the most likely next token at each position.
set -eu
DSC=${1:-build/dsc}
MODEL=${DSC_MODEL:-tests/fixtures/v3}
IDS=${DSC_IDS:-5,17,42,7,99,3,64,12}
OUT=${TMPDIR:-/tmp}/dsc_demo_logits.bin
echo "\$ dsc info -m $MODEL"
"$DSC" info -m "$MODEL"
echo
echo "\$ dsc logits -m $MODEL --ids $IDS -o $OUT"
"$DSC" logits -m "$MODEL" --ids "$IDS" -o "$OUT"
python3 - "$OUT" "$MODEL" <<'PY'
import json, struct, sys
out, model = sys.argv[1], sys.argv[2]
vocab = json.load(open(model + "/config.json"))["vocab_size"]
data = open(out, "rb").read()
vals = struct.unpack("<%df" % (len(data) // 4), data)
n = len(vals) // vocab
print("position  argmax  logit")
for t in range(n):
    row = vals[t * vocab:(t + 1) * vocab]
    k = max(range(vocab), key=row.__getitem__)
    print("%8d  %6d  %.4f" % (t, k, row[k]))
PY
echo
echo "\$ dsc run -m tests/fixtures/v3_tok -p \"The jury further said\" -n 24 --seed 42"
echo "(a tiny random-weight model with the bundled brown-corpus tokenizer: the text is noise;"
echo " what it shows is the pipeline: tokenizer, prefill, absorbed-MLA decode, sampling, timings)"
"$DSC" run -m tests/fixtures/v3_tok -p "The jury further said" -n 24 --seed 42
echo
