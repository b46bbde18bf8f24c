#!/bin/sh
# Long-context study (project issue 7): three small models of about the same
# size, trained on the same token budget with a share of passkey examples
# (dsc train --passkey-mix), then compared on held-out loss, passkey
# retrieval at CTX and 2 x CTX, and speed:
#   mla  dense MLA (deepseek_v3, like configs/demo-v3-tiny.json)
#   dsa  MLA + DSA (deepseek_v32; a 2-head, 32-dim lightning indexer and
#        index_topk TOPK, CTX/32 unless set)
#   nsa  NSA ("attention_type": "nsa"; the paper's l 32, d 16, l' 64 and
#        n 16 at CTX >= 2048, with a 64-token window (32 in phase 1): a
#        sparse budget of CTX/16 + 1088 keys; scaled down below); q is one
#        q_proj (q_lora_rank 0); H_kv 1, d_k = d_v = 32 (8 of d_k under
#        RoPE: NSA_ROPE), a K/V per branch
#        (the paper's §3.3.3), MLP compression with 8 hidden units, which
#        keeps the parameter count within 2.5% of mla's. The first two
#        runs used n 8 and a 256-token window throughout (NSA_N2=8
#        NSA_W1=256 NSA_W2=256): at 128 tokens that window covers every
#        needle, so phase 1 taught retrieval to the window branch only,
#        and NSA retrieved nothing beyond it. NSA_SHARED=1 gives the second
#        run's variant: H_kv 2, one K/V shared by the three branches and
#        mean-pooled compression, as fla does (a compressed key's score is
#        then the block's mean slc score); it retrieved no further)
#
# Schedule (the way DeepSeek trains: short context first, then long; one
# cosine learning-rate schedule over both phases, the same for every model):
#   phase 1  STEPS1 steps of BATCH1 x SHORT tokens, passkey share MIX1 (short
#            examples carry many answers per token: this is where retrieval
#            is learned; at 512 tokens and mix 0.3 a model this small had
#            not learned it after 12M tokens, at 128 tokens and mix 0.5 one
#            run had by step 1250 and another not by 1500, so 3000 steps).
#            mla and nsa train as
#            they are; dsa trains as dense MLA with its indexer learning
#            from the KL loss (--dsa-stage none).
#   phase 2  STEPS2 steps of BATCH2 x CTX tokens, passkey share MIX2.
#   phase 3  STEPS3 steps of BATCH2 x CTX tokens at a constant learning
#            rate LR3, passkey share MIX2 packed (--passkey-pack PACK3:
#            several examples of log-uniform lengths >= PACK3 per passkey
#            sequence, so retrieval is trained at every distance up to
#            CTX; phase 2's one example per 4096 tokens taught none).
#   mla trains as it is throughout. nsa, in phase 3, selects every block
#   for its first NSA_DENSE3 steps (its slc branch then learns at every
#   distance, as dense attention does), then n again, with the selection
#   alignment loss (--nsa-align NSA_ALIGN: the selection scores learn the
#   slc branch's attention) throughout (run 4: 15 of dense's 19 passkey
#   cells, against 13 for the alignment alone and 13 for neither).
#   dsa follows DeepSeek-V3.2
#   (§2.1), which made DSA by continued training of a dense model: it
#   trains as dense MLA with its indexer learning from the KL loss
#   (--dsa-stage none) until the last DSA_SPARSE + WARM steps, then runs
#   the two DSA stages: a dense warm-up of WARM steps (only the indexer
#   trains) and the sparse stage (MLA over the indexer's top-k; everything
#   trains) for the last DSA_SPARSE steps. (A first study ran the sparse
#   stage through all of phases 2 and 3: DSA_SPARSE = STEPS2 + STEPS3 -
#   WARM. Its main attention never learned retrieval beyond what phase 1
#   taught: with the top-k chosen by an indexer that imitates that
#   attention, a far needle is neither attended nor selected.)
# Every model sees the same tokens budget (STEPS1 BATCH1 SHORT + (STEPS2 +
# STEPS3) BATCH2 CTX) and the same data order (seed).
#
# Then: held-out loss at CTX, passkey accuracy at PK_CTXS (SHORT, 512,
# 1024, 2048, CTX and 2 x CTX; depths 0..100%; 2 x CTX also with YaRN), and
# a speed phase on fresh copies of the
# three architectures at each context of SPEED_CTXS (CTX, 2 CTX, 4 CTX):
# training tok/s over SPEED_STEPS steps, decode tok/s of 128 tokens after a
# ~ctx-token prompt. The speeds can be remeasured alone on a quiet machine:
# PHASE=speed.
#
# Everything goes to $OUT: the configs, one checkpoint directory per model
# (rerunning resumes each run where it stopped; finished runs are skipped),
# the eval outputs and $OUT/results.md (the table). Options (environment):
#   CTX      long context (default 4096); SHORT phase-1 context (128)
#   STEPS1   phase-1 steps (3000); BATCH1 sequences per step (16)
#   STEPS2   phase-2 steps (300); BATCH2 sequences per step (2)
#   WARM     DSA dense warm-up steps before its sparse stage (10)
#   DSA_SPARSE  DSA sparse-stage steps at the end of training (STEPS3 / 3)
#   STEPS3   phase-3 steps at CTX (1200; 0: none), at the constant rate LR3 (1e-3)
#   PACK2, PACK3  --passkey-pack of phase 2 and 3 (0: one example per
#            passkey sequence; 0 and 128)
#   PK_CTXS  passkey contexts (SHORT,512,1024,2048,CTX,2 CTX)
#   MIX1, MIX2  share of passkey sequences in phase 1 and 2 (0.5, 0.5)
#   TRIALS   passkey trials per (context, depth) cell (default 20)
#   TRIAL_SEED  seed of the passkey draws (default 1, the split's seed); another
#            value draws fresh trials over the same held-out text
#   THREADS  threads (2)
#   XWARM, XSPARSE  dsa-x (DSA made from the trained dense model): warm-up and
#            sparse steps (300, 100; with 100 warm-up steps the indexer's
#            top-128 recall was 0.94 and one of dense's passkey cells fell
#            short, 93% against 99% in 100 trials; with 300, 0.95 and none)
#   PHASE    all (default), train, eval, xfer, speed, report; recheck (not in
#            all: passkey with RECHECK_TRIALS (100) trials per cell at
#            RECHECK_CTXS (PK_CTXS up to CTX) for mla and RECHECK_NAMES,
#            and recheck.md, below)
#   NAMES    the models that train, eval and speed run on (mla dsa nsa)
#   NSA_W2   NSA's window from phase 2 on (64 at CTX >= 2048, CTX / 16 below)
#   NSA_N2   NSA's selected blocks n from phase 2 on (16 at CTX >= 2048, else 4)
#   NSA_ROPE  NSA's RoPE dims of its d_k = 32 (8; the rest match by content
#            alone). Runs before the rope-8 one used 16, MLA's qk_rope_head_dim:
#            with 8 NSA retrieves much further (docs/long-context-study.md)
#   NSA_HIDDEN  hidden units of NSA's compression MLP (8; each unit adds
#            l * (d_k + d_v) + d_k + d_v = 2112 parameters per layer)
#   NSA_W1   NSA's window in phase 1 (32 at CTX >= 2048, else 8). Below SHORT,
#            so that phase 1 teaches retrieval to the selected branch (at
#            SHORT tokens it covers every block) instead of the window
#            (window and n are not weights: the checkpoint's config.json is
#            switched to NSA_W2 and NSA_N2 after phase 1; nsa.json is the
#            final config, nsa.start.json phase 1's when it differs)
#   NSA_ALIGN   weight of NSA's selection alignment loss in phase 3
#            (dsc train --nsa-align; 0.2; 0: off), and in the speed phase's
#            training
#   NSA_DENSE3  phase-3 steps at its start during which NSA selects every
#            block (n = CTX / l'; its slc branch is then dense attention),
#            then n again (2 STEPS3 / 3; 0: natively sparse throughout)
#   OUT      output directory (default build/study)
#   DSC      the dsc binary (default build/dsc)
#   SMOKE=1  a quick end-to-end check: CTX 256, SHORT 64, a few steps, 1 trial
set -eu
DSC=${DSC:-build/dsc}
if [ "${SMOKE:-0}" = 1 ]; then
    CTX=${CTX:-256}; SHORT=${SHORT:-96}; STEPS1=${STEPS1:-6}; STEPS2=${STEPS2:-6}
    WARM=${WARM:-2}; TRIALS=${TRIALS:-1}; SPEED_STEPS=${SPEED_STEPS:-3}; STEPS3=${STEPS3:-4}
    SPEED_CTXS=${SPEED_CTXS:-"256 512"}; XWARM=${XWARM:-2}; XSPARSE=${XSPARSE:-2}
fi
CTX=${CTX:-4096}
SHORT=${SHORT:-128}
STEPS1=${STEPS1:-3000}
BATCH1=${BATCH1:-16}
STEPS2=${STEPS2:-300}
BATCH2=${BATCH2:-2}
WARM=${WARM:-10}
STEPS3=${STEPS3:-1200}
DSA_SPARSE=${DSA_SPARSE:-$((STEPS3 / 3))}
PACK2=${PACK2:-0}
PACK3=${PACK3:-128}
LR3=${LR3:-1e-3}
NSA_ALIGN=${NSA_ALIGN:-0.2}
NSA_DENSE3=${NSA_DENSE3:-$((STEPS3 * 2 / 3))}
MIX1=${MIX1:-0.5}
MIX2=${MIX2:-0.5}
TRIALS=${TRIALS:-20}
THREADS=${THREADS:-2}
PHASE=${PHASE:-all}
NAMES=${NAMES:-"mla dsa nsa"}
SPEED_STEPS=${SPEED_STEPS:-6}
SPEED_CTXS=${SPEED_CTXS:-"$CTX $((2 * CTX)) $((4 * CTX))"}
OUT=${OUT:-build/study}
SEED=1
TRIAL_SEED=${TRIAL_SEED:-$SEED}
CTX2=$((2 * CTX))
if [ -z "${PK_CTXS:-}" ]; then   # SHORT, the powers of two from 512 below CTX, CTX, 2 CTX
    PK_CTXS=$SHORT; pc=512
    while [ "$pc" -lt "$CTX" ]; do
        [ "$pc" -gt "$SHORT" ] && PK_CTXS="$PK_CTXS,$pc"
        pc=$((pc * 2))
    done
    PK_CTXS="$PK_CTXS,$CTX,$CTX2"
fi
TOTAL=$((STEPS1 + STEPS2))
mkdir -p "$OUT"
CORPUS=$OUT/brown.txt
[ -f "$CORPUS" ] || xz -dc data/brown.txt.xz > "$CORPUS"

# ---- the three configs (same everything but the attention) ----
common() {   # common ROPE: the keys all three share, with ROPE RoPE dims per head
    printf '%s' '"vocab_size": 4096, "hidden_size": 128, "intermediate_size": 344,
 "moe_intermediate_size": 96, "num_hidden_layers": 4, "num_attention_heads": 4,
 "kv_lora_rank": 64, "qk_nope_head_dim": 32, "qk_rope_head_dim": '"$1"',
 "v_head_dim": 32, "n_routed_experts": 8, "n_shared_experts": 1, "num_experts_per_tok": 2,
 "n_group": 1, "topk_group": 1, "topk_method": "noaux_tc", "scoring_func": "sigmoid",
 "norm_topk_prob": true, "routed_scaling_factor": 1.0, "first_k_dense_replace": 1,
 "max_position_embeddings": '"$CTX"', "rms_norm_eps": 1e-06, "rope_theta": 10000.0,
 "tie_word_embeddings": false, "num_nextn_predict_layers": 0, "bos_token_id": 0,
 "eos_token_id": 1, "hidden_act": "silu", "attention_bias": false'
}
TOPK=${TOPK:-$((CTX / 32))}
if [ "$CTX" -ge 2048 ]; then
    NSA_L=32; NSA_D=16; NSA_LS=64; NSA_N=${NSA_N2:-16}; NSA_W2=${NSA_W2:-64}; NSA_W1=${NSA_W1:-32}
else   # the same ratios at a small context
    NSA_L=8; NSA_D=4; NSA_LS=16; NSA_N=${NSA_N2:-4}; NSA_W2=${NSA_W2:-$((CTX / 16))}
    NSA_W1=${NSA_W1:-8}
fi
if [ "${NSA_SHARED:-0}" = 1 ]; then   # the second run's NSA (see the header)
    NSA_HKV=2; NSA_PHI='"compress": "mean"'; NSA_SHARED=true
else
    NSA_HKV=1; NSA_PHI='"compress": "mlp", "compress_hidden": '"${NSA_HIDDEN:-8}"; NSA_SHARED=false
fi
cat > "$OUT/mla.json" <<EOF
{"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
 "q_lora_rank": 64, $(common 16)}
EOF
cat > "$OUT/dsa.json" <<EOF
{"architectures": ["DeepseekV32ForCausalLM"], "model_type": "deepseek_v32",
 "index_n_heads": 2, "index_head_dim": 32, "index_topk": $TOPK,
 "q_lora_rank": 64, $(common 16)}
EOF
nsa_config() {   # nsa_config WINDOW: the NSA config with that window, on stdout
    cat <<EOF
{"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
 "attention_type": "nsa", "nsa": {"num_key_value_heads": $NSA_HKV, "head_dim_k": 32,
  "head_dim_v": 32, "block_size": $NSA_L, "stride": $NSA_D, "select_block": $NSA_LS,
  "n_select": $NSA_N, "window": $1, $NSA_PHI,
  "shared_kv": $NSA_SHARED},
 "q_lora_rank": 0, $(common "${NSA_ROPE:-8}")}
EOF
}
nsa_config "$NSA_W2" > "$OUT/nsa.json"   # the final config; phase 1's when it differs:
if [ "$NSA_W1" != "$NSA_W2" ]; then nsa_config "$NSA_W1" > "$OUT/nsa.start.json"
else rm -f "$OUT/nsa.start.json"; fi

# the step a checkpoint directory holds (0 when none)
ckpt_step() {
    sed -n 's/.*"step": *\([0-9]*\).*/\1/p' "$1/trainer_state.json" 2>/dev/null | head -1 |
        grep . || echo 0
}

nsa_set() {   # nsa_set KEY N: set the nsa checkpoint's KEY (window, n_select: not weights) to N
    sed -i 's/"'"$1"'": [0-9]*/"'"$1"'": '"$2"'/' "$OUT/nsa/config.json"
}

has() {   # has NAME: NAME is one of NAMES
    case " $NAMES " in *" $1 "*) return 0 ;; esac
    return 1
}

# ---- train (resumable: each call skips what its checkpoint already has) ----
EVERY1=$((STEPS1 / 5)); [ "$EVERY1" -ge 1 ] || EVERY1=1
EVERY2=$((STEPS2 / 5)); [ "$EVERY2" -ge 1 ] || EVERY2=1
train() {   # train NAME UNTIL SEQ BATCH EVERY MIX [extra options]
    name=$1; until=$2; seq=$3; batch=$4; every=$5; mix=$6; shift 6
    # (dsa-x trains with dsa: the xfer phase runs only when NAMES has dsa)
    [ "$(ckpt_step "$OUT/$name")" -lt "$until" ] && has "${name%-x}" || return 0
    cfg=$OUT/$name.json; [ ! -f "$OUT/$name.start.json" ] || cfg=$OUT/$name.start.json
    echo "\$ dsc train -m $OUT/$name --seq $seq --batch $batch --stop-after $until $*"
    "$DSC" train -m "$OUT/$name" --data "$CORPUS" --tokenizer tests/fixtures/tokenizer_brown \
        --config "$cfg" --steps "${STEPS_ARG:-$TOTAL}" --stop-after "$until" --batch "$batch" \
        --seq "$seq" --passkey-mix "$mix" --lr 3e-3 --warmup $((STEPS1 / 20 + 1)) \
        --eval-every "$every" --save-every "$every" --val-frac 0.01 --seed "$SEED" \
        -t "$THREADS" "$@" 2>> "$OUT/$name.train.log" \
        || { tail -5 "$OUT/$name.train.log"; exit 1; }
    tail -1 "$OUT/$name.train.log"
}
# dsa through step UNTIL of one phase (EVERY, then the phase's options):
# stage none before step S_WARM, warmup before S_SPARSE, sparse after
END=$((TOTAL + STEPS3))
S_SPARSE=$((END - DSA_SPARSE)); [ "$S_SPARSE" -ge "$((STEPS1 + WARM))" ] || S_SPARSE=$((STEPS1 + WARM))
S_WARM=$((S_SPARSE - WARM))
# (its own variable names: sh has no locals, and train sets until, every)
dsa_train() {
    d_until=$1; d_every=$2; shift 2
    for piece in "$S_WARM none" "$S_SPARSE warmup" "$d_until sparse"; do
        stop=${piece% *}; [ "$stop" -le "$d_until" ] || stop=$d_until
        train dsa "$stop" "$CTX" "$BATCH2" "$d_every" "$MIX2" --dsa-stage "${piece#* }" \
            --dsa-topk "$TOPK" "$@"
    done
}
if [ "$PHASE" = all ] || [ "$PHASE" = train ]; then
    for name in mla dsa nsa; do
        train "$name" "$STEPS1" "$SHORT" "$BATCH1" "$EVERY1" "$MIX1"
    done
    # the end of phase 1 kept beside each model (NAME.phase1)
    for name in mla dsa nsa; do
        [ -d "$OUT/$name.phase1" ] || [ "$(ckpt_step "$OUT/$name")" -ne "$STEPS1" ] ||
            cp -r "$OUT/$name" "$OUT/$name.phase1"
    done
    # NSA's window and n from phase 2 on (a no-op unless NSA_W1 differs)
    [ "$(ckpt_step "$OUT/nsa")" -lt "$STEPS1" ] ||
        { nsa_set window "$NSA_W2" && nsa_set n_select "$NSA_N"; }
    train mla "$TOTAL" "$CTX" "$BATCH2" "$EVERY2" "$MIX2" --passkey-pack "$PACK2"
    train nsa "$TOTAL" "$CTX" "$BATCH2" "$EVERY2" "$MIX2" --passkey-pack "$PACK2"
    dsa_train "$TOTAL" "$EVERY2" --passkey-pack "$PACK2"
    # phase 3 (STEPS3 > 0): more steps at CTX at a constant learning rate
    # LR3 (the cosine of phases 1-2 leaves phase 2 near its minimum), the
    # end of phase 2 kept beside each model (NAME.phase2)
    if [ "$STEPS3" -gt 0 ]; then
        for name in mla dsa nsa; do
            [ -d "$OUT/$name.phase2" ] || [ "$(ckpt_step "$OUT/$name")" -ne "$TOTAL" ] ||
                cp -r "$OUT/$name" "$OUT/$name.phase2"
        done
        EVERY3=$((STEPS3 / 5)); [ "$EVERY3" -ge 1 ] || EVERY3=1
        STEPS_ARG=$END
        train mla "$END" "$CTX" "$BATCH2" "$EVERY3" "$MIX2" --lr "$LR3" --min-lr "$LR3" \
            --passkey-pack "$PACK3"
        # NSA: the first NSA_DENSE3 steps with every block selected, then
        # n again; the selection alignment loss (weight NSA_ALIGN) throughout
        if [ "$NSA_DENSE3" -gt 0 ] && [ "$(ckpt_step "$OUT/nsa")" -lt $((TOTAL + NSA_DENSE3)) ] &&
           has nsa; then
            nsa_set n_select $((CTX / NSA_LS))
            train nsa $((TOTAL + NSA_DENSE3)) "$CTX" "$BATCH2" "$EVERY3" "$MIX2" --lr "$LR3" \
                --min-lr "$LR3" --passkey-pack "$PACK3" --nsa-align "$NSA_ALIGN"
        fi
        ! has nsa || [ "$(ckpt_step "$OUT/nsa")" -lt "$TOTAL" ] || nsa_set n_select "$NSA_N"
        train nsa "$END" "$CTX" "$BATCH2" "$EVERY3" "$MIX2" --lr "$LR3" --min-lr "$LR3" \
            --passkey-pack "$PACK3" --nsa-align "$NSA_ALIGN"
        dsa_train "$END" "$EVERY3" --lr "$LR3" --min-lr "$LR3" --passkey-pack "$PACK3"
    fi
fi

# ---- evaluate: held-out loss at CTX, passkey at CTX and 2 x CTX ----
passkey() {   # passkey DIR CTXS TRIALS PREFIX: PREFIX.{txt,csv,svg}
    "$DSC" eval -m "$1" --data "$CORPUS" --passkey --ctx-list "$2" \
        --depths 0,25,50,75,100 --trials "$3" --val-frac 0.01 --seed "$SEED" \
        --trial-seed "$TRIAL_SEED" \
        -t "$THREADS" -o "$4" -q > "$4.txt"
}
eval_model() {   # eval_model DIR: DIR.loss.txt, DIR.passkey.{txt,csv,svg}
    echo "\$ dsc eval -m $1 --ctx $CTX; --passkey --ctx-list $PK_CTXS"
    "$DSC" eval -m "$1" --data "$CORPUS" --ctx "$CTX" --val-frac 0.01 \
        --seed "$SEED" -t "$THREADS" -q > "$1.loss.txt"
    passkey "$1" "$PK_CTXS" "$TRIALS" "$1.passkey"
}
if [ "$PHASE" = all ] || [ "$PHASE" = eval ]; then
    for name in $NAMES; do
        eval_model "$OUT/$name"
        # 2 x CTX with YaRN (factor 2 over CTX, DeepSeek-V3's other
        # settings), applied at inference only: a copy of the config beside
        # links to the same weights
        y=$OUT/$name-yarn
        mkdir -p "$y"
        for f in model.safetensors tokenizer.json tokenizer_config.json; do
            ln -sf "$(cd "$OUT/$name" && pwd)/$f" "$y/$f"
        done
        sed -e 's/"rope_scaling": null/"rope_scaling": {"type": "yarn", "factor": 2.0, "original_max_position_embeddings": '"$CTX"', "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}/' \
            -e 's/"max_position_embeddings": [0-9]*/"max_position_embeddings": '"$CTX2"'/' \
            "$OUT/$name/config.json" > "$y/config.json"
        passkey "$y" "$CTX2" "$TRIALS" "$OUT/$name.passkey_yarn"
    done
fi

# ---- DSA made from the trained dense model (DeepSeek-V3.2's way; after
# train and eval): dsa-x = mla's final weights and optimizer state plus the
# dsa run's indexer (trained alongside the same dense trajectory by its KL
# loss), then XWARM steps of dense warm-up (only the indexer trains: the
# model is dense's, sparse at inference; kept as dsa-x.warm) and XSPARSE
# steps of the sparse stage, each evaluated like the others. These steps
# come on top of the token budget: XWARM + XSPARSE steps of BATCH2 x CTX.
XWARM=${XWARM:-300}
XSPARSE=${XSPARSE:-100}
if { [ "$PHASE" = all ] || [ "$PHASE" = xfer ]; } && has dsa &&
   [ "$(ckpt_step "$OUT/mla")" -eq "$END" ] && [ "$(ckpt_step "$OUT/dsa")" -eq "$END" ]; then
    x=$OUT/dsa-x
    if [ ! -f "$x/model.safetensors" ]; then
        mkdir -p "$x"
        python3 scripts/st-merge.py "$OUT/mla/model.safetensors" "$OUT/dsa/model.safetensors" \
            "$x/model.safetensors"
        python3 scripts/st-merge.py "$OUT/mla/optimizer.safetensors" \
            "$OUT/dsa/optimizer.safetensors" "$x/optimizer.safetensors"
        for f in config.json tokenizer.json tokenizer_config.json; do cp "$OUT/dsa/$f" "$x/"; done
        for f in trainer_state.json train_run.json; do cp "$OUT/mla/$f" "$x/"; done
    fi
    # (constant rate: --steps, the schedule's length, changes nothing)
    STEPS_ARG=$((END + XWARM + XSPARSE))
    for piece in "$((END + XWARM)) warmup" "$STEPS_ARG sparse"; do
        train dsa-x "${piece% *}" "$CTX" "$BATCH2" 50 "$MIX2" --lr "$LR3" --min-lr "$LR3" \
            --passkey-pack "$PACK3" --dsa-stage "${piece#* }" --dsa-topk "$TOPK"
        [ -d "$x.warm" ] || [ "$(ckpt_step "$x")" -ne $((END + XWARM)) ] ||
            { cp -r "$x" "$x.warm"; eval_model "$x.warm"; }
    done
    [ -f "$x.passkey.txt" ] || eval_model "$x"
fi

# ---- recheck: passkey again with RECHECK_TRIALS trials per cell (100) at
# the contexts up to CTX, for mla and each of RECHECK_NAMES (dsa nsa
# dsa-x.warm dsa-x) that exists: NAME.recheck.{txt,csv,svg}. 20 trials put a 95% cell's
# 95% interval at about +-10 points; 100 at about +-4. Then, per sparse
# model, how many of the cells where dense reaches >= 95% it holds at >= 95%,
# and the cells where it is below dense by a one-sided test
# at the 5% level (Fisher's exact test), in $OUT/recheck.md.
RECHECK_TRIALS=${RECHECK_TRIALS:-100}
RECHECK_NAMES=${RECHECK_NAMES:-"dsa nsa dsa-x.warm dsa-x"}   # each against mla
RECHECK_CTXS=${RECHECK_CTXS:-$(echo "$PK_CTXS" | tr ',' '\n' | awk -v c="$CTX" '$1 <= c' |
    paste -sd, -)}
pk_compare() {   # pk_compare DENSE.csv SPARSE.csv: one line of the recheck table
    # (Fisher's exact test, one-sided: P(X <= ours) for X hypergeometric with
    # both models' trials and correct answers pooled; log n! tabled as needed)
    awk -F, 'function lf(n) { while (nl < n) { nl++; L[nl] = L[nl - 1] + log(nl) } return L[n] }
        function lc(n, k) { return lf(n) - lf(k) - lf(n - k) }
        FNR == 1 { f++; next }
        f == 1 { n[$1 "," $2] = $3; d[$1 "," $2] = $4; next }
        ($1 "," $2) in d && d[$1 "," $2] >= 0.95 * n[$1 "," $2] {
            k = $1 "," $2; cells++
            if ($4 >= 0.95 * $3) held++
            K = d[k] + $4; N = n[k] + $3; pv = 0
            for (x = 0; x <= $4; x++)
                if (x <= K && K - x <= n[k]) pv += exp(lc(K, x) + lc(N - K, $3 - x) - lc(N, $3))
            if (pv < 0.05)
                below = below sprintf(" %s@%s %.0f vs %.0f;", $2, $1, 100 * $4 / $3,
                                      100 * d[k] / n[k])
        }
        END { printf "%d of %d |%s |", held, cells, below == "" ? " none" : below }' "$1" "$2"
}
if [ "$PHASE" = recheck ]; then
    for name in mla $RECHECK_NAMES; do
        [ -f "$OUT/$name/model.safetensors" ] || continue
        [ -f "$OUT/$name.recheck.csv" ] && continue
        echo "\$ dsc eval -m $OUT/$name --passkey --ctx-list $RECHECK_CTXS --trials $RECHECK_TRIALS"
        passkey "$OUT/$name" "$RECHECK_CTXS" "$RECHECK_TRIALS" "$OUT/$name.recheck"
    done
    {
        echo "Passkey, $RECHECK_TRIALS trials per cell (trial seed $TRIAL_SEED) at $RECHECK_CTXS (depths 0,25,50,75,100):"
        echo "of the cells where dense reaches >= 95%, those the model holds at >= 95%, and"
        echo "those where it is significantly below dense (one-sided Fisher's exact test, 5%;"
        echo "depth@ctx: ours vs dense, %)."
        echo
        echo "| model | held | significantly below dense |"
        echo "|---|---|---|"
        for name in $RECHECK_NAMES; do
            [ -f "$OUT/$name.recheck.csv" ] || continue
            echo "| $name | $(pk_compare "$OUT/mla.recheck.csv" "$OUT/$name.recheck.csv")"
        done
    } > "$OUT/recheck.md"
    cat "$OUT/recheck.md"
fi

# ---- speed: fresh copies of the three architectures, nothing else running ----
# at each context of SPEED_CTXS (the configs with max_position_embeddings
# raised to it; DSA keeps k = index_topk, NSA its block geometry): training
# tok/s (steps 2..SPEED_STEPS of a fresh run, BATCH2 x CTX / ctx sequences
# of ctx tokens) and decode tok/s (128 tokens after a prompt of ~0.9 ctx)
if [ "$PHASE" = all ] || [ "$PHASE" = speed ]; then
    mkdir -p "$OUT/speed"
    for sc in $SPEED_CTXS; do
        # ~0.9 ctx tokens of text (Brown: ~0.27 tokens per byte), + 128 generated
        head -c $((sc * 3)) "$CORPUS" | tr -s '\n' ' ' > "$OUT/speed/prompt_$sc.txt"
        sb=$((BATCH2 * CTX / sc)); [ "$sb" -ge 1 ] || sb=1
        for name in $NAMES; do
            stage=""
            [ "$name" = dsa ] && stage="--dsa-stage sparse"
            [ "$name" = nsa ] && stage="--nsa-align $NSA_ALIGN"
            d=$OUT/speed/$name-$sc
            rm -rf "$d"
            sed 's/"max_position_embeddings": [0-9]*/"max_position_embeddings": '"$sc"'/' \
                "$OUT/$name.json" > "$d.json"
            echo "\$ dsc train -m $d --seq $sc --batch $sb --steps $SPEED_STEPS $stage; dsc run -c $sc"
            # shellcheck disable=SC2086
            "$DSC" train -m "$d" --data "$CORPUS" --tokenizer tests/fixtures/tokenizer_brown \
                --config "$d.json" --steps "$SPEED_STEPS" --batch "$sb" --seq "$sc" \
                --eval-every 0 --save-every "$SPEED_STEPS" --val-frac 0.01 --seed "$SEED" \
                -t "$THREADS" $stage 2> "$d.train.log"
            "$DSC" run -m "$d" -f "$OUT/speed/prompt_$sc.txt" -c "$sc" -n 128 --temp 0 \
                -t "$THREADS" > /dev/null 2> "$d.run.log"
        done
    done
fi

# ---- results.md ----
csv_mean() {   # csv_mean FILE COLUMN FIRST: mean of a column from step FIRST on (blanks skipped)
    awk -F, -v col="$2" -v first="$3" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == col) c = i; next }
        c && $1 >= first && $c != "" { s += $c; n++ } END { if (n) printf "%.0f", s / n; else printf "-" }' "$1"
}
csv_at() {   # csv_at FILE COLUMN STEP: the column's value at one step
    awk -F, -v col="$2" -v step="$3" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == col) c = i; next }
        $1 == step { printf "%s", $c }' "$1"
}
train_tps() {   # train_tps NAME CTX: speed phase, mean training tok/s of steps 2..
    csv_mean "$OUT/speed/$1-$2/train_log.csv" tokens_per_s 2 2>/dev/null || echo -
}
decode_tps() {   # decode_tps NAME CTX: speed phase, decode tok/s
    v=$(grep -v 'prompt eval' "$OUT/speed/$1-$2.run.log" 2>/dev/null |
        sed -n 's/.* eval time .*, *\([0-9.]*\) tokens per second.*/\1/p' | tail -1)
    echo "${v:--}"
}
pk_acc() {   # pk_acc FILE CTX: accuracy (%) over the depths at one context
    awk -F, -v ctx="$2" 'NR > 1 && $1 == ctx { t += $3; c += $4 }
        END { if (t) printf "%.0f", 100 * c / t; else printf "-" }' "$1"
}
{
    echo "# Long-context study: MLA vs MLA + DSA vs NSA"
    echo
    echo "Phase 1: $STEPS1 steps x $BATCH1 x $SHORT tokens; phase 2: $STEPS2 steps x $BATCH2 x $CTX"
    echo "tokens; phase 3: $STEPS3 steps x $BATCH2 x $CTX tokens at a constant learning rate $LR3"
    echo "($((STEPS1 * BATCH1 * SHORT + (STEPS2 + STEPS3) * BATCH2 * CTX)) tokens per model); passkey mix $MIX1 / $MIX2 / $MIX2"
    echo "(phase 2 --passkey-pack $PACK2, phase 3 --passkey-pack $PACK3), seed $SEED;"
    echo "passkey: $TRIALS trials per (context, depth), depths 0,25,50,75,100."
    echo "DSA: 2 x 32 indexer, index_topk $TOPK; dense (indexer by KL) to step $S_WARM, $WARM warm-up"
    echo "steps, then sparse for the last $((END - S_SPARSE)) steps."
    echo "NSA: l $NSA_L, d $NSA_D, l' $NSA_LS, n $NSA_N, w $NSA_W2 (phase 1: $NSA_W1); phase 3:"
    echo "every block selected for its first $NSA_DENSE3 steps, selection alignment $NSA_ALIGN."
    echo
    ctxs=$(echo "$PK_CTXS" | tr ',' ' ')
    hdr="| model | params | val loss end of phase 1 | phase 2 | end | eval loss @$CTX | ppl |"
    sep="|---|---|---|---|---|---|---|"
    for pc in $ctxs; do hdr="$hdr passkey @$pc (%) |"; sep="$sep---|"; done
    echo "$hdr passkey @$CTX2 YaRN (%) | train tok/s @$CTX | decode tok/s @$CTX |"
    echo "$sep---|---|---|"
    for name in mla dsa nsa; do
        params=$(sed -n 's/.*training [^:]*: \([0-9]*\) params.*/\1/p' "$OUT/$name.train.log" 2>/dev/null | tail -1)
        v1=$(csv_at "$OUT/$name/train_log.csv" val_loss "$STEPS1" 2>/dev/null || true)
        v2=$(csv_at "$OUT/$name/train_log.csv" val_loss "$TOTAL" 2>/dev/null || true)
        v3=$(csv_at "$OUT/$name/train_log.csv" val_loss "$((TOTAL + STEPS3))" 2>/dev/null || true)
        loss=$(sed -n 's/.*loss \([0-9.]*\)  ppl \([0-9.]*\).*/\1/p' "$OUT/$name.loss.txt" 2>/dev/null || true)
        ppl=$(sed -n 's/.*ppl \([0-9.]*\).*/\1/p' "$OUT/$name.loss.txt" 2>/dev/null || true)
        tps=$(train_tps "$name" "$CTX")
        dec=$(decode_tps "$name" "$CTX")
        row="| $name | ${params:--} | ${v1:--} | ${v2:--} | ${v3:--} | ${loss:--} | ${ppl:--} |"
        for pc in $ctxs; do
            row="$row $(pk_acc "$OUT/$name.passkey.csv" "$pc" 2>/dev/null || echo -) |"
        done
        echo "$row $(pk_acc "$OUT/$name.passkey_yarn.csv" "$CTX2" 2>/dev/null || echo -) | ${tps:--} | ${dec:--} |"
    done
    echo
    echo "Speed by context ($THREADS threads; fresh models; training: mean tok/s of steps 2..$SPEED_STEPS,"
    echo "$((BATCH2 * CTX)) tokens per step; decode: 128 tokens after a prompt of ~0.9 ctx tokens):"
    echo
    hdr="| model |"; sep="|---|"
    for sc in $SPEED_CTXS; do hdr="$hdr train @$sc |"; sep="$sep---|"; done
    for sc in $SPEED_CTXS; do hdr="$hdr decode @$sc |"; sep="$sep---|"; done
    echo "$hdr"; echo "$sep"
    for name in mla dsa nsa; do
        row="| $name |"
        for sc in $SPEED_CTXS; do row="$row $(train_tps "$name" "$sc") |"; done
        for sc in $SPEED_CTXS; do row="$row $(decode_tps "$name" "$sc") |"; done
        echo "$row"
    done
    echo
    echo "Per-depth tables: \`$OUT/NAME.passkey.txt\` (heat maps: NAME.passkey.svg);"
    echo "training curves: \`$OUT/NAME/loss.svg\`."
} > "$OUT/results.md"
cat "$OUT/results.md"
