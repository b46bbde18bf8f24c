#!/bin/sh
# Long-context study (project issue 7): three small models of about the same
# size, trained on the same token budget with a share of passkey examples
# (dsc train --passkey-mix), then compared on held-out loss, passkey
# retrieval at CTX and 2 x CTX, and speed:
#   mla  dense MLA (deepseek_v3, like configs/demo-v3-tiny.json)
#   dsa  MLA + DSA (deepseek_v32, index_topk CTX/16): --dsa-stage warmup for
#        ~3% of the steps (only the indexer trains), then --dsa-stage sparse
#   nsa  NSA ("attention_type": "nsa"; the paper's l 32, d 16, l' 64, n 16,
#        w 512 at CTX >= 2048, scaled down below; NSA's q is one q_proj,
#        q_lora_rank 0; H_kv 1, d_k = d_v 32, MLP compression)
# Everything goes to $OUT: the configs, one checkpoint directory per model
# (rerunning resumes each run where it stopped), the eval outputs and
# $OUT/results.md (the table). Options (environment):
#   CTX     training / eval context (default 4096)
#   STEPS   optimizer steps per model (default 1000); BATCH sequences/step (2)
#   TRIALS  passkey trials per (context, depth) cell (default 5)
#   OUT     output directory (default build/study)
#   DSC     the dsc binary (default build/dsc)
#   SMOKE=1 a quick end-to-end check: CTX 256, 20 steps, 1 trial
set -eu
DSC=${DSC:-build/dsc}
if [ "${SMOKE:-0}" = 1 ]; then
    CTX=${CTX:-256}; STEPS=${STEPS:-20}; TRIALS=${TRIALS:-1}
fi
CTX=${CTX:-4096}
STEPS=${STEPS:-1000}
BATCH=${BATCH:-2}
TRIALS=${TRIALS:-5}
OUT=${OUT:-build/study}
MIX=${MIX:-0.1}
SEED=1
CTX2=$((2 * CTX))
mkdir -p "$OUT"
CORPUS=$OUT/brown.txt
[ -f "$CORPUS" ] || xz -dc data/brown.txt.xz > "$CORPUS"

# ---- the three configs (same everything but the attention) ----
common='"vocab_size": 4096, "hidden_size": 128, "intermediate_size": 344,
 "moe_intermediate_size": 96, "num_hidden_layers": 4, "num_attention_heads": 4,
 "kv_lora_rank": 64, "qk_nope_head_dim": 32, "qk_rope_head_dim": 16,
 "v_head_dim": 32, "n_routed_experts": 8, "n_shared_experts": 1, "num_experts_per_tok": 2,
 "n_group": 1, "topk_group": 1, "topk_method": "noaux_tc", "scoring_func": "sigmoid",
 "norm_topk_prob": true, "routed_scaling_factor": 1.0, "first_k_dense_replace": 1,
 "max_position_embeddings": '$CTX', "rms_norm_eps": 1e-06, "rope_theta": 10000.0,
 "tie_word_embeddings": false, "num_nextn_predict_layers": 0, "bos_token_id": 0,
 "eos_token_id": 1, "hidden_act": "silu", "attention_bias": false'
TOPK=$((CTX / 16))
if [ "$CTX" -ge 2048 ]; then
    NSA_L=32; NSA_D=16; NSA_LS=64; NSA_N=16; NSA_W=512
else   # the same ratios at a small context
    NSA_L=8; NSA_D=4; NSA_LS=16; NSA_N=4; NSA_W=$((CTX / 8))
fi
cat > "$OUT/mla.json" <<EOF
{"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
 "q_lora_rank": 64, $common}
EOF
cat > "$OUT/dsa.json" <<EOF
{"architectures": ["DeepseekV32ForCausalLM"], "model_type": "deepseek_v32",
 "index_n_heads": 4, "index_head_dim": 32, "index_topk": $TOPK,
 "q_lora_rank": 64, $common}
EOF
cat > "$OUT/nsa.json" <<EOF
{"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
 "attention_type": "nsa", "nsa": {"num_key_value_heads": 1, "head_dim_k": 32,
  "head_dim_v": 32, "block_size": $NSA_L, "stride": $NSA_D, "select_block": $NSA_LS,
  "n_select": $NSA_N, "window": $NSA_W, "compress": "mlp", "compress_hidden": 32,
  "shared_kv": false},
 "q_lora_rank": 0, $common}
EOF

# ---- train (resumable) ----
WARM=$((STEPS * 3 / 100)); [ "$WARM" -ge 1 ] || WARM=1
EVERY=$((STEPS / 10)); [ "$EVERY" -ge 1 ] || EVERY=1
train() {   # train NAME [extra options]
    name=$1; shift
    echo "\$ dsc train -m $OUT/$name --config $OUT/$name.json --seq $CTX --passkey-mix $MIX $*"
    "$DSC" train -m "$OUT/$name" --data "$CORPUS" --tokenizer tests/fixtures/tokenizer_brown \
        --config "$OUT/$name.json" --steps "$STEPS" --batch "$BATCH" --seq "$CTX" \
        --passkey-mix "$MIX" --lr 3e-3 --warmup $((STEPS / 20 + 1)) --eval-every "$EVERY" \
        --save-every "$EVERY" --val-frac 0.01 --seed "$SEED" "$@" 2> "$OUT/$name.train.log" \
        || { tail -5 "$OUT/$name.train.log"; exit 1; }
    tail -1 "$OUT/$name.train.log"
}
train mla
train dsa --dsa-stage warmup --stop-after "$WARM"
train dsa --dsa-stage sparse
train nsa

# ---- evaluate (decode speed: 64 tokens after a ~CTX-token prompt) ----
head -c $((CTX * 4)) "$CORPUS" | tr -s '\n' ' ' > "$OUT/decode_prompt.txt"
for name in mla dsa nsa; do
    echo "\$ dsc eval -m $OUT/$name --ctx $CTX; --passkey --ctx-list $CTX,$CTX2; dsc run"
    "$DSC" eval -m "$OUT/$name" --data "$CORPUS" --ctx "$CTX" --val-frac 0.01 --seed "$SEED" \
        -q > "$OUT/$name.loss.txt"
    "$DSC" eval -m "$OUT/$name" --data "$CORPUS" --passkey --ctx-list "$CTX,$CTX2" \
        --depths 0,25,50,75,100 --trials "$TRIALS" --val-frac 0.01 --seed "$SEED" \
        -o "$OUT/$name.passkey" -q > "$OUT/$name.passkey.txt"
    "$DSC" run -m "$OUT/$name" -f "$OUT/decode_prompt.txt" -c "$CTX2" -n 64 --temp 0 \
        > /dev/null 2> "$OUT/$name.run.log"
done

# ---- results.md ----
csv_mean() {   # csv_mean FILE COLUMN: mean of a train_log.csv column (blank cells skipped)
    awk -F, -v col="$2" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == col) c = i; next }
        c && $c != "" { s += $c; n++ } END { if (n) printf "%.0f", s / n; else printf "-" }' "$1"
}
pk_acc() {   # pk_acc FILE CTX: accuracy (%) over the depths at one context
    awk -F, -v ctx="$2" 'NR > 1 && $1 == ctx { t += $3; c += $4 }
        END { if (t) printf "%.0f", 100 * c / t; else printf "-" }' "$1"
}
{
    echo "# Long-context study: MLA vs MLA + DSA vs NSA"
    echo
    echo "Context $CTX, $STEPS steps x $BATCH x $CTX tokens per model, passkey mix $MIX, seed $SEED;"
    echo "passkey: $TRIALS trials per (context, depth), depths 0,25,50,75,100."
    echo "DSA: index_topk $TOPK, $WARM warm-up steps then sparse. NSA: l $NSA_L, d $NSA_D,"
    echo "l' $NSA_LS, n $NSA_N, w $NSA_W."
    echo
    echo "| model | params | eval loss @$CTX | ppl | passkey @$CTX (%) | passkey @$CTX2 (%) | train tok/s | decode tok/s |"
    echo "|---|---|---|---|---|---|---|---|"
    for name in mla dsa nsa; do
        params=$(sed -n 's/.*training [^:]*: \([0-9]*\) params.*/\1/p' "$OUT/$name.train.log" | tail -1)
        loss=$(sed -n 's/.*loss \([0-9.]*\)  ppl \([0-9.]*\).*/\1/p' "$OUT/$name.loss.txt")
        ppl=$(sed -n 's/.*ppl \([0-9.]*\).*/\1/p' "$OUT/$name.loss.txt")
        dec=$(grep -v 'prompt eval' "$OUT/$name.run.log" |
              sed -n 's/.* eval time .*, *\([0-9.]*\) tokens per second.*/\1/p' | tail -1)
        echo "| $name | ${params:--} | ${loss:--} | ${ppl:--} | $(pk_acc "$OUT/$name.passkey.csv" "$CTX") |" \
             "$(pk_acc "$OUT/$name.passkey.csv" "$CTX2") | $(csv_mean "$OUT/$name/train_log.csv" tokens_per_s) |" \
             "${dec:--} |"
    done
    echo
    echo "Per-depth tables: \`$OUT/NAME.passkey.txt\` (heat maps: NAME.passkey.svg);"
    echo "training curves: \`$OUT/NAME/loss.svg\`."
} > "$OUT/results.md"
cat "$OUT/results.md"
