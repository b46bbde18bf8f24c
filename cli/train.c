/*
 * train.c - `dsc train`: pre-train (or continue training) a DeepSeek-V3-style
 * model on a text file, on the CPU, in fp32.
 *
 *   dsc train -m OUT_DIR --data FILE --tokenizer DIR [--config CONFIG.json | --preset NAME] ...
 *
 * One run:
 *  1. OUT_DIR without config.json: a new model is initialised there from
 *     --config, or from --preset NAME, a built-in architecture (PRESETS
 *     below: tiny = configs/demo-v3-tiny.json, small ~25M parameters) with
 *     the tokenizer's vocabulary size and BOS/EOS ids (train/init.h: N(0,
 *     0.006^2) matrices, unit norms, zero router bias; seeded by --seed),
 *     together with the tokenizer files.
 *  2. The checkpoint is loaded and copied into a trainable fp32 model
 *     (train/model_train.h), with its MTP module (spec §6, D = 1) when the
 *     config has num_nextn_predict_layers = 1: the loss is then
 *     CE + --mtp-weight x MTP CE (0.3 by default, as V3's first 10T tokens;
 *     0 skips the module, whose tensors are still kept in the checkpoints,
 *     though AdamW's weight decay still shrinks its matrices); when OUT_DIR
 *     also holds optimizer.safetensors + trainer_state.json, the AdamW
 *     moments, step count, seed and the data position are restored and
 *     training continues where it stopped.
 *  3. --data is tokenized and split into train / validation documents
 *     (train/data.h); batches of --batch sequences of --seq tokens are drawn
 *     in a seeded shuffled order. --passkey-mix F (0 <= F < 1, default 0)
 *     replaces each sequence, with probability F, by a passkey example of
 *     the same length: [BOS] filler needle filler question answer, with the
 *     needle and question of `dsc eval --passkey` (cli/passkey.h), filler
 *     read cyclically from the TRAINING split (BOS/EOS removed), a random
 *     5-7 digit key, a random depth, and the answer " K" as the last ids,
 *     so that the ordinary next-token loss over the whole sequence teaches
 *     the model to answer. --passkey-pack MIN fills such a sequence with
 *     several examples instead, of log-uniform lengths >= MIN (retrievals
 *     over every distance up to --seq; more answers per token). Whether
 *     sequence i (= batch x --batch + slot of
 *     the run) is replaced, and how, is a pure function of (seed, i), so a
 *     resumed run draws the same examples.
 *  4. Per step: forward + backward, global grad-norm clipping (--clip),
 *     AdamW (beta 0.9/0.95, --wd on matrices only) at the warm-up + cosine
 *     learning rate (--lr, --min-lr, --warmup; the cosine ends at --steps,
 *     or, resuming without --steps, where the run that wrote the checkpoint
 *     ended it: train_run.json), then the auxiliary-loss-free balancing
 *     update of every noaux_tc router's e_score_correction_bias (spec §5.5,
 *     dsc_train_update_bias):
 *         b_i += gamma * sign(mean_j load_j - load_i)
 *     per MoE layer, with load_i the (token, slot) picks of expert i in the
 *     step's batch (an overloaded expert's bias falls, an underloaded one's
 *     rises; gamma = --bias-gamma, 1e-3 as DeepSeek-V3; 0 turns it off).
 *  5. Every --eval-every steps (and at the end): validation loss (the main
 *     next-token CE; and the MTP CE) and the max/mean expert load per MoE
 *     layer. Every --save-every steps (and at the end): OUT_DIR is replaced
 *     whole by a checkpoint holding the model (F32, loadable by `dsc run` /
 *     `dsc logits`; an MTP module under model.layers.{L}.* with the stored
 *     copies of the embedding and head, as DeepSeek-V3's files), the
 *     tokenizer files, the optimizer moments and the trainer state
 *     (train/ckpt.h), and this tool's own files:
 *         train_log.csv    one row per step 1..k (format: cli/train_log.c)
 *         loss.svg         the loss curves against the step (the same rows)
 *         train_run.json   {"steps", "warmup"}: the LR schedule's length and
 *                          warm-up, so that a resume keeps the schedule
 *     A checkpoint of step k is written only once the model of step k has
 *     given a finite loss (the next step's forward, or at the end the
 *     validation loss or one more forward), so that it is good. It is
 *     written whole into OUT_DIR.next (dsc_ckpt_save), the three files are
 *     added there, and then OUT_DIR.next and OUT_DIR are exchanged in one
 *     atomic rename (renameat2 RENAME_EXCHANGE; where the file system lacks
 *     it, moved aside and renamed as dsc_ckpt_save does) and the old one
 *     deleted: a killed run leaves a checkpoint whose log has exactly its
 *     steps. A resumed run reads the log back (rows after the checkpoint's
 *     step, if any, are dropped) and appends to it.
 *  6. --time-budget MIN: after each step the run ends (with the final
 *     validation and checkpoint of that step; resumable) when one more step
 *     and the final validation would end past MIN minutes from the start of
 *     the command. With --steps the schedule is --steps long. Without it
 *     (and no train_run.json to resume) the schedule is sized to fit: two
 *     untimed passes (forward + backward, no update) warm up and give a
 *     first estimate N0 of the steps that fit (the warm-up is min(100,
 *     N0 / 10) unless --warmup is given; the cosine provisionally ends at
 *     N0); steps 3..22 of the run are timed, and the schedule's length is
 *     then fixed at N = steps done + time left / (time per step + the
 *     validation's share), printed ("time budget 5 min: ~1234 steps at
 *     0.243 s/step") and stored in train_run.json.
 *
 * Errors (message on stderr, exit 1; before any training where possible):
 * an OUT_DIR where checkpoints cannot be written, --seq above the model's
 * max_position_embeddings, an empty or non-UTF-8 --data file, and a loss
 * that is not finite (NaN / inf, e.g. from a far too large --lr): training
 * stops at once and OUT_DIR keeps the last good checkpoint. Bad usage (exit
 * 2): an unknown --preset, or both --preset and --config.
 *
 * Determinism: the same seed, options and thread count give bit-identical
 * losses, and a run resumed from a step-k checkpoint continues exactly as
 * the uninterrupted run would have (the schedule spans --steps both times;
 * --stop-after k ends a run early, as an interruption would). A schedule
 * sized by --time-budget depends on the measured speed, so two such runs
 * differ; resuming one keeps its schedule.
 *
 * Log lines (stderr; none with -q):
 *   step 12/100  loss 7.123456  lr 3.000e-04  gnorm 1.2345  2345 tok/s  eta 1m05s
 *   step 12/100  loss 9.100000  main 7.123456  mtp 6.589514  lr ...   (MTP)
 *   step 12/100  loss 7.123556  main 7.123456  bal 0.000100  lr ...   (--balance-alpha)
 *   step 12/100  loss 7.9  main 7.1  idx_kl 0.8  idx_recall 0.9312  lr ...   (DSA)
 *   step 12/100  loss 7.5  main 7.1  sel_kl 0.4  lr ...   (NSA with --nsa-align;
 *                train_log.csv's idx_kl column holds sel_kl)
 *   step 12/?    ...            (--time-budget: the schedule is not sized yet)
 *   step 12      val loss 7.234567 (40 seqs)       (+ "  mtp X" with MTP)
 *   step 12      expert load max/mean: L1 1.75 L2 2.00
 * The ETA is the steps left to this run's end (--stop-after, the schedule,
 * or the time budget) times the mean time of the last 20 steps (the run's
 * first step not counted), plus the validations still due.
 *
 * DSA (deepseek_v32 configs; spec §4.6): attention
 * is dense MLA and each layer's indexer learns, from detached inputs, to
 * match MLA's head-summed attention by a KL loss (weight --dsa-kl-weight,
 * 1) added to the loss. --dsa-stage none (the default) trains everything
 * together; --dsa-stage warmup trains only the indexer tensors: the others'
 * gradients are zeroed (so the clipping norm is the indexer's), AdamW skips
 * them (no update, no weight decay) and the router-bias balancing is off,
 * so every non-indexer tensor is saved bit for bit as it was loaded. The
 * log and train_log.csv show idx_kl (unweighted) and idx_recall (top-
 * index_topk recall of the true attention mass), means over the layers;
 * the recall is computed on the run's first step, every --dsa-recall-every
 * steps (10) and the last ("-" and a blank CSV cell on the others).
 * --dsa-topk K sets the model's index_topk (its config.json: the k of
 * training and of inference). --dsa-stage sparse is the sparse stage: each query's MLA attention runs
 * over the indexer's top-index_topk keys only, every tensor trains (router
 * bias balancing on), the KL is taken on the selected set, and idx_recall
 * is the selection's share of the dense attention's mass.
 *
 * What this is not: multi-device (one process, fp32, CPU), or an MTP
 * trainer for D > 1 (refused).
 */
#include "cli.h"
#include "passkey.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "model/model.h"
#include "train/ckpt.h"
#include "train/data.h"
#include "train/init.h"
#include "train/model_train.h"
#include "train/optim.h"

/* Validation looks at no more than this many batches per evaluation. */
#define EVAL_MAX_BATCHES 50
/* --time-budget without --steps: steps timed before the schedule is sized,
   after the run's first two. */
#define SIZE_SKIP 2
#define SIZE_STEPS 20
/* The ETA's moving average: the last this many step times. */
#define ETA_WINDOW 20

/*
 * Built-in architectures for --preset. The JSON is config.json without
 * vocab_size and the BOS/EOS ids, which come from the tokenizer. tiny is
 * configs/demo-v3-tiny.json field for field (tested); small is the same
 * design at about 9x the parameters.
 */
typedef struct {
    const char *name;
    const char *what;   /* one line for --help */
    const char *json;
} train_preset;

static const train_preset PRESETS[] = {
    {"tiny", "configs/demo-v3-tiny.json (4 layers, d 128, 2.9M params)",
     "\"architectures\": [\"DeepseekV3ForCausalLM\"], \"model_type\": \"deepseek_v3\", "
     "\"hidden_size\": 128, \"intermediate_size\": 344, \"moe_intermediate_size\": 96, "
     "\"num_hidden_layers\": 4, \"num_attention_heads\": 4, \"q_lora_rank\": 64, "
     "\"kv_lora_rank\": 64, \"qk_nope_head_dim\": 32, \"qk_rope_head_dim\": 16, "
     "\"v_head_dim\": 32, \"n_routed_experts\": 8, \"n_shared_experts\": 1, "
     "\"num_experts_per_tok\": 2, \"n_group\": 1, \"topk_group\": 1, "
     "\"topk_method\": \"noaux_tc\", \"scoring_func\": \"sigmoid\", \"norm_topk_prob\": true, "
     "\"routed_scaling_factor\": 1.0, \"first_k_dense_replace\": 1, "
     "\"max_position_embeddings\": 1024, \"rms_norm_eps\": 1e-06, \"rope_theta\": 10000.0, "
     "\"tie_word_embeddings\": false, \"num_nextn_predict_layers\": 1, "
     "\"hidden_act\": \"silu\", \"attention_bias\": false"},
    {"small", "8 layers, d 256, 16+1 experts top-2, MTP (25M params)",
     "\"architectures\": [\"DeepseekV3ForCausalLM\"], \"model_type\": \"deepseek_v3\", "
     "\"hidden_size\": 256, \"intermediate_size\": 688, \"moe_intermediate_size\": 192, "
     "\"num_hidden_layers\": 8, \"num_attention_heads\": 8, \"q_lora_rank\": 128, "
     "\"kv_lora_rank\": 64, \"qk_nope_head_dim\": 32, \"qk_rope_head_dim\": 16, "
     "\"v_head_dim\": 32, \"n_routed_experts\": 16, \"n_shared_experts\": 1, "
     "\"num_experts_per_tok\": 2, \"n_group\": 1, \"topk_group\": 1, "
     "\"topk_method\": \"noaux_tc\", \"scoring_func\": \"sigmoid\", \"norm_topk_prob\": true, "
     "\"routed_scaling_factor\": 1.0, \"first_k_dense_replace\": 1, "
     "\"max_position_embeddings\": 2048, \"rms_norm_eps\": 1e-06, \"rope_theta\": 10000.0, "
     "\"tie_word_embeddings\": false, \"num_nextn_predict_layers\": 1, "
     "\"hidden_act\": \"silu\", \"attention_bias\": false"},
};
#define N_PRESETS ((int)(sizeof PRESETS / sizeof PRESETS[0]))

void cli_train_usage_presets(FILE *f) {
    for (int i = 0; i < N_PRESETS; i++)
        fprintf(f, "                           %-6s %s\n", PRESETS[i].name, PRESETS[i].what);
    fprintf(f, "                         (parameter counts at a 4096-id vocabulary)\n");
}

cli_train_opts cli_train_default_opts(void) {
    cli_train_opts t = {0};
    t.steps = 0;            /* not given: the checkpoint's run, else 100 */
    t.batch = 4;
    t.seq = 64;
    t.lr = 3e-4;
    t.min_lr = -1;          /* lr / 10 */
    t.warmup = -1;          /* min(100, steps / 10) */
    t.wd = 0.1;
    t.clip = 1.0;
    t.bias_gamma = 1e-3;
    t.val_frac = 0.05;
    t.init_std = 0.006;
    t.mtp_weight = 0.3;
    t.dsa_kl_weight = 1.0;
    t.dsa_recall_every = 10;
    return t;
}

static int file_exists(const char *dir, const char *name) {
    char p[4096];
    if ((size_t)snprintf(p, sizeof p, "%s/%s", dir, name) >= sizeof p) return 0;
    return access(p, R_OK) == 0;
}

static void die_msg(const char *fmt, const char *a) {
    fprintf(stderr, "dsc: ");
    fprintf(stderr, fmt, a);
    fprintf(stderr, "\n");
    exit(1);
}

/* Read and parse --config; exits on error. */
static void read_config(const char *path, dsc_config *cfg) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "dsc: cannot open %s: %s\n", path, strerror(errno));
        exit(1);
    }
    size_t len = 0;
    char *text = cli_read_all(f, path, &len);
    fclose(f);
    dsc_err e = {0};
    if (dsc_config_parse(text, len, path, cfg, &e) != DSC_OK) cli_die(&e);
    free(text);
}

static const train_preset *find_preset(const char *name) {
    for (int i = 0; i < N_PRESETS; i++)
        if (!strcmp(PRESETS[i].name, name)) return &PRESETS[i];
    return NULL;
}

/* The config of preset p for tokenizer tok; exits on error. */
static void preset_config(const train_preset *p, const dsc_tokenizer_t *tok, dsc_config *cfg) {
    char ids[96] = "", what[64];
    int32_t bos = dsc_tokenizer_bos(tok), eos = dsc_tokenizer_eos(tok);
    if (bos >= 0) snprintf(ids, sizeof ids, "\"bos_token_id\": %d, ", (int)bos);
    if (eos >= 0)
        snprintf(ids + strlen(ids), sizeof ids - strlen(ids), "\"eos_token_id\": %d, ", (int)eos);
    size_t cap = strlen(p->json) + 256;
    char *text = malloc(cap);
    if (!text) die_msg("out of memory%s", "");
    snprintf(text, cap, "{\"vocab_size\": %lld, %s%s}", (long long)dsc_tokenizer_vocab(tok), ids,
             p->json);
    snprintf(what, sizeof what, "--preset %s", p->name);
    dsc_err e = {0};
    if (dsc_config_parse(text, strlen(text), what, cfg, &e) != DSC_OK) cli_die(&e);
    free(text);
}

/* Mean validation loss over (at most EVAL_MAX_BATCHES batches of) the
   validation sequences, each batch weighted by its sequences: the main
   next-token CE (returned) and the MTP CE (*mtp; 0 without MTP). */
static double val_loss(dsc_train_model_t *tm, const dsc_dataset_t *ds, int64_t B, int64_t T,
                       int32_t *ids, int64_t *n_seen, double *mtp) {
    int64_t n = dsc_data_n_seqs(ds, DSC_SPLIT_VAL);
    if (n > EVAL_MAX_BATCHES * B) n = EVAL_MAX_BATCHES * B;
    double sum = 0, sum_mtp = 0;
    for (int64_t i = 0; i < n; i += B) {
        int64_t k = n - i < B ? n - i : B;
        for (int64_t b = 0; b < k; b++) dsc_data_seq(ds, DSC_SPLIT_VAL, i + b, ids + b * (T + 1));
        double l = 0, ce = 0, lm = 0;
        dsc_err e = {0};
        if (dsc_train_forward(tm, ids, k, T, &l, &e) != DSC_OK) cli_die(&e);
        dsc_train_loss_parts(tm, &ce, NULL, &lm);
        if (!isfinite(l)) ce = l;   /* a non-finite total must show */
        sum += ce * (double)k;
        sum_mtp += lm * (double)k;
    }
    *n_seen = n;
    *mtp = n ? sum_mtp / (double)n : 0;
    return n ? sum / (double)n : NAN;
}

/* A non-finite loss: say so; the caller stops at once (through its normal
   cleanup), leaving OUT_DIR's last good checkpoint. */
static void report_nonfinite(const char *what, int64_t step, double loss, const char *dir,
                             int64_t good_step) {
    fprintf(stderr, "dsc: step %lld: the %s is %g (not finite); training stopped. %s keeps "
            "the last good checkpoint (step %lld%s). Lower --lr, or raise --warmup, or set "
            "--clip.\n", (long long)step, what, loss, dir, (long long)good_step,
            good_step == 0 ? ": the initial weights" : "");
}

/* One line: max/mean tokens per expert of each MoE layer in the last pass. */
static void log_load(const dsc_config *c, const int64_t *load, int64_t step) {
    int64_t E = c->n_routed_experts;
    if (E <= 0) return;
    fprintf(stderr, "step %-6lld expert load max/mean:", (long long)step);
    for (int64_t l = 0; l < c->num_hidden_layers; l++) {
        if (!dsc_config_layer_is_moe(c, l)) continue;
        int64_t mx = 0, sum = 0;
        for (int64_t x = 0; x < E; x++) {
            sum += load[l * E + x];
            if (load[l * E + x] > mx) mx = load[l * E + x];
        }
        fprintf(stderr, " L%lld %.2f", (long long)l,
                sum ? (double)mx * (double)E / (double)sum : 0.0);
    }
    fprintf(stderr, "\n");
}

/* "45s", "3m12s", "2h05m"; "?" when unknown. */
static void fmt_duration(char *buf, size_t cap, double s) {
    if (!(s >= 0) || s > 1e8) snprintf(buf, cap, "?");
    else if (s < 59.5) snprintf(buf, cap, "%.0fs", s);
    else if (s < 3600) snprintf(buf, cap, "%dm%02ds", (int)(s / 60), (int)fmod(s, 60));
    else snprintf(buf, cap, "%dh%02dm", (int)(s / 3600), (int)fmod(s / 60, 60));
}

/* ---- the run's files next to the checkpoint ---- */

/* train_run.json: what the run decided about the schedule. */
typedef struct {
    int64_t steps;        /* length of the LR schedule; 0 = not decided yet */
    int64_t warmup;
    double budget_min;    /* > 0: sized by --time-budget (recorded only)    */
} run_info;

/* Read dir/train_run.json; 0 and *ri, or -1 (absent or unreadable: a
   checkpoint of an older dsc, or one saved before the budget was sized). */
static int read_run_info(const char *dir, run_info *ri) {
    char p[4096];
    if ((size_t)snprintf(p, sizeof p, "%s/train_run.json", dir) >= sizeof p) return -1;
    json_error_t je;
    json_t *j = json_load_file(p, 0, &je);
    if (!j) return -1;
    json_t *s = json_object_get(j, "steps"), *w = json_object_get(j, "warmup");
    int ok = json_is_integer(s) && json_is_integer(w) && json_integer_value(s) >= 1 &&
             json_integer_value(w) >= 0;
    if (ok) {
        ri->steps = json_integer_value(s);
        ri->warmup = json_integer_value(w);
        json_t *b = json_object_get(j, "time_budget_min");
        ri->budget_min = json_is_number(b) ? json_number_value(b) : 0;
    }
    json_decref(j);
    return ok ? 0 : -1;
}

static int write_run_info(const char *path, const run_info *ri) {
    json_t *j = json_object();
    json_object_set_new(j, "steps", json_integer(ri->steps));
    json_object_set_new(j, "warmup", json_integer(ri->warmup));
    if (ri->budget_min > 0) json_object_set_new(j, "time_budget_min", json_real(ri->budget_min));
    int rc = json_dump_file(j, path, JSON_INDENT(2) | JSON_PRESERVE_ORDER |
                            JSON_REAL_PRECISION(7));
    json_decref(j);
    return rc;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

/* Delete the directory tree at path (best effort). */
static void rm_tree(const char *path) {
    nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* Put the complete checkpoint directory `stage` in the place of `dir` and
   delete the old one. 0, or -1 with a message (dir, or the old checkpoint
   at a named place, is left whole). */
static int swap_into_place(const char *stage, const char *dir, char *msg, size_t cap) {
    if (access(dir, F_OK) != 0) {
        if (rename(stage, dir) == 0) return 0;
        snprintf(msg, cap, "cannot rename %s to %s: %s", stage, dir, strerror(errno));
        return -1;
    }
#ifdef RENAME_EXCHANGE
    if (renameat2(AT_FDCWD, stage, AT_FDCWD, dir, RENAME_EXCHANGE) == 0) {
        rm_tree(stage);   /* now the old checkpoint */
        return 0;
    }
    if (errno != EINVAL && errno != ENOSYS && errno != ENOTSUP) {
        snprintf(msg, cap, "cannot exchange %s and %s: %s", stage, dir, strerror(errno));
        return -1;
    }
#endif
    char old[4200];
    snprintf(old, sizeof old, "%s.old.XXXXXX", dir);
    if (!mkdtemp(old) || rename(dir, old) != 0) {
        snprintf(msg, cap, "cannot move the old checkpoint %s aside: %s", dir, strerror(errno));
        return -1;
    }
    if (rename(stage, dir) != 0) {
        int err = errno;
        if (rename(old, dir) != 0)
            snprintf(msg, cap, "cannot rename %s to %s (%s); the old checkpoint is at %s", stage,
                     dir, strerror(err), old);
        else
            snprintf(msg, cap, "cannot rename %s to %s: %s", stage, dir, strerror(err));
        return -1;
    }
    rm_tree(old);
    return 0;
}

/* What a save writes besides dsc_ckpt_save's files. */
typedef struct {
    const char *stage;          /* OUT_DIR.next */
    const cli_train_log *log;
    const char *title;          /* of loss.svg */
    run_info run;               /* run.steps 0: no train_run.json */
} save_extra;

/* Save the step-st->step checkpoint with its log into dir (see 5. above);
   exits on error, leaving dir's previous checkpoint. */
static void save(const char *dir, dsc_train_model_t *tm, dsc_ckpt_tensor *ct, const char *tokdir,
                 dsc_adamw_t *opt, const dsc_train_state *st, const save_extra *x) {
    int64_t np = 0;
    const dsc_param *params = dsc_train_model_params(tm, &np);
    for (int64_t i = 0; i < np; i++) {
        ct[i].name = params[i].name;
        ct[i].ndim = params[i].ndim;
        memcpy(ct[i].shape, params[i].shape, sizeof ct[i].shape);
        ct[i].data = params[i].data;
    }
    dsc_ckpt_save_params sp = {0};
    sp.cfg = dsc_train_model_config(tm);
    sp.tensors = ct;
    sp.n_tensors = np;
    sp.tokenizer_dir = tokdir;
    sp.opt = opt;
    sp.state = *st;
    dsc_err e = {0};
    if (dsc_ckpt_save(x->stage, &sp, &e) != DSC_OK) cli_die(&e);
    char p[4200], msg[8600];
    const char *failed = NULL;
    snprintf(p, sizeof p, "%s/train_log.csv", x->stage);
    if (cli_log_write_csv(x->log, p, st->step) != 0) failed = p;
    if (!failed) {
        snprintf(p, sizeof p, "%s/loss.svg", x->stage);
        if (cli_log_write_svg(x->log, p, st->step, x->title) != 0) failed = p;
    }
    if (!failed && x->run.steps > 0) {
        snprintf(p, sizeof p, "%s/train_run.json", x->stage);
        if (write_run_info(p, &x->run) != 0) failed = p;
    }
    if (failed) {
        fprintf(stderr, "dsc: cannot write %s: %s; %s keeps its previous checkpoint\n", failed,
                strerror(errno), dir);
        exit(1);
    }
    if (swap_into_place(x->stage, dir, msg, sizeof msg) != 0) {
        fprintf(stderr, "dsc: %s\n", msg);
        exit(1);
    }
}

/* --dsa-topk K on an existing checkpoint: index_topk in DIR/config.json
   becomes K (the model's k, for training and for inference), written to a
   temporary file and renamed over the old one. Exits 1 on a model without
   an indexer or a config that cannot be read or written. */
static void set_index_topk(const char *dir, int64_t k) {
    char path[4200], tmp[4300];
    snprintf(path, sizeof path, "%s/config.json", dir);
    snprintf(tmp, sizeof tmp, "%s.topk.tmp", path);
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    if (!root) die_msg("--dsa-topk: cannot read %s", path);
    json_t *cur = json_object_get(root, "index_topk");
    if (!json_is_integer(cur) || json_integer_value(cur) < 1) {
        json_decref(root);
        die_msg("--dsa-topk: %s has no index_topk (not a DSA model)", path);
    }
    json_object_set_new(root, "index_topk", json_integer((json_int_t)k));
    int bad = json_dump_file(root, tmp, JSON_INDENT(2)) != 0 || rename(tmp, path) != 0;
    json_decref(root);
    if (bad) die_msg("--dsa-topk: cannot write %s", path);
}

int cmd_train(const cli_opts *o) {
    const cli_train_opts *a = &o->train;
    dsc_err e = {0};
    double t_start = cli_now();
    if (!a->data) cli_die_usage("train needs --data FILE", NULL);
    if (a->batch < 1 || a->seq < 1) cli_die_usage("--batch and --seq must be >= 1", NULL);
    if (a->preset && a->config)
        cli_die_usage("--preset and --config both give the architecture; pass one", NULL);
    const train_preset *preset = NULL;
    if (a->preset && !(preset = find_preset(a->preset))) {
        char names[256] = "";
        for (int i = 0; i < N_PRESETS; i++)
            snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", i ? ", " : "",
                     PRESETS[i].name);
        fprintf(stderr, "dsc: unknown --preset \"%s\" (presets: %s)\n", a->preset, names);
        exit(2);
    }
    /* OUT_DIR without trailing slashes: OUT_DIR.next must be its sibling */
    char dir[4096];
    if (strlen(o->model_dir) >= sizeof dir - 16) cli_die_usage("-m path too long", NULL);
    snprintf(dir, sizeof dir, "%s", o->model_dir);
    for (size_t n = strlen(dir); n > 1 && dir[n - 1] == '/'; n--) dir[n - 1] = '\0';
    char stage[4200];
    snprintf(stage, sizeof stage, "%s.next", dir);
#ifdef _OPENMP
    if (o->threads > 0) omp_set_num_threads(o->threads);
#endif
    int has_ckpt = file_exists(dir, "config.json");
    int has_opt = has_ckpt && file_exists(dir, "optimizer.safetensors") &&
                  file_exists(dir, "trainer_state.json");

    /* the schedule: --steps, else the checkpoint's run, else sized by the
       time budget, else 100 (see 4. and 6. above) */
    run_info prev = {0};
    int has_prev = has_opt && read_run_info(dir, &prev) == 0;
    int64_t total = a->steps > 0 ? a->steps : has_prev ? prev.steps : 0;
    int sizing = total == 0 && a->time_budget > 0;
    if (total == 0 && !sizing) total = 100;
    int64_t warmup = a->warmup;
    if (warmup < 0 && a->steps <= 0 && has_prev) warmup = prev.warmup;
    if (warmup < 0 && !sizing) warmup = total / 10 < 100 ? total / 10 : 100;
    if (!sizing && warmup > total)
        cli_die_usage(a->steps > 0 ? "--warmup must not exceed --steps"
                                   : "--warmup must not exceed the run's steps", NULL);

    const char *tokdir = a->tokenizer ? a->tokenizer : has_ckpt ? dir : NULL;
    if (!tokdir) cli_die_usage("train needs --tokenizer DIR", NULL);
    uint64_t seed = o->seed_set ? o->sp.seed : 0;
    /* fail now rather than after training */
    if (dsc_ckpt_check_writable(dir, &e) != DSC_OK) {
        fprintf(stderr, "dsc: %s\n", e.msg);
        exit(1);
    }

    dsc_tokenizer_t *tok = NULL;
    if (dsc_tokenizer_load(tokdir, &tok, &e) != DSC_OK) cli_die(&e);

    /* 1. a new model when OUT_DIR has none */
    if (!has_ckpt) {
        if (!a->config && !preset)
            die_msg("%s holds no checkpoint (config.json): pass --config CONFIG.json or "
                    "--preset NAME to initialise a new model there", dir);
        const char *src = a->config ? a->config : a->preset;
        dsc_config cfg;
        if (preset) preset_config(preset, tok, &cfg);
        else read_config(a->config, &cfg);
        if (a->dsa_topk > 0) {
            if (cfg.index_topk < 1) die_msg("--dsa-topk: %s is not a DSA model", src);
            cfg.index_topk = a->dsa_topk;
        }
        if (cfg.max_position_embeddings > 0 && a->seq > cfg.max_position_embeddings) {
            fprintf(stderr, "dsc: --seq %lld is larger than the model's max_position_embeddings "
                    "%lld (%s)\n", (long long)a->seq, (long long)cfg.max_position_embeddings,
                    src);
            exit(1);
        }
        if (dsc_tokenizer_vocab(tok) > cfg.vocab_size) {
            fprintf(stderr, "dsc: the tokenizer has %lld ids but the config's vocab_size is "
                    "%lld\n", (long long)dsc_tokenizer_vocab(tok), (long long)cfg.vocab_size);
            exit(1);
        }
        dsc_init_params ip = dsc_init_default_params();
        ip.seed = seed;
        ip.std = a->init_std;
        ip.tokenizer_dir = tokdir;
        if (dsc_train_init_save(dir, &cfg, &ip, &e) != DSC_OK) cli_die(&e);
        if (!o->quiet)
            fprintf(stderr, "dsc: new %s model in %s from %s%s (init std %g, seed %llu)\n",
                    cfg.model_type, dir, preset ? "preset " : "", src, a->init_std,
                    (unsigned long long)seed);
    } else {
        if ((a->config || preset) && !o->quiet)
            fprintf(stderr, "dsc: %s already holds a checkpoint; %s ignored\n", dir,
                    a->config ? "--config" : "--preset");
        if (a->dsa_topk > 0) set_index_topk(dir, a->dsa_topk);
    }

    /* 2. trainable copy, optimizer, resume */
    int64_t B = a->batch, T = a->seq;
    cli_opts lo = *o;
    lo.model_dir = dir;
    dsc_model_t *m = cli_load_model(&lo, NULL);
    const dsc_config *mc = dsc_model_config(m);
    if (mc->max_position_embeddings > 0 && T > mc->max_position_embeddings) {
        fprintf(stderr, "dsc: --seq %lld is larger than the model's max_position_embeddings "
                "%lld (%s/config.json)\n", (long long)T, (long long)mc->max_position_embeddings,
                dir);
        exit(1);
    }
    if (mc->num_nextn_predict_layers > 1) {
        fprintf(stderr, "dsc: %s has %lld MTP layers (num_nextn_predict_layers); dsc train "
                "handles 0 or 1\n", dir, (long long)mc->num_nextn_predict_layers);
        exit(1);
    }
    dsc_train_model_t *tm = NULL;
    if (mc->num_nextn_predict_layers == 1) {
        if (dsc_train_model_new_mtp(m, B, T, a->mtp_weight, &tm, &e) != DSC_OK) cli_die(&e);
    } else if (dsc_train_model_new(m, B, T, &tm, &e) != DSC_OK) {
        cli_die(&e);
    }
    int mtp_on = dsc_train_model_has_mtp(tm) && a->mtp_weight > 0;
    int bal_on = a->balance_alpha > 0;
    dsc_train_set_balance_alpha(tm, a->balance_alpha);
    dsc_model_free(m);
    const dsc_config *c = dsc_train_model_config(tm);
    if (dsc_tokenizer_vocab(tok) > c->vocab_size) {
        fprintf(stderr, "dsc: the tokenizer has %lld ids but the model's vocab_size is %lld\n",
                (long long)dsc_tokenizer_vocab(tok), (long long)c->vocab_size);
        exit(1);
    }
    /* DSA (deepseek_v32): the indexer's KL weight; in the dense warm-up
       (--dsa-stage warmup) every other tensor is frozen: its gradient is
       zeroed after the backward and AdamW neither updates nor decays it */
    int dsa_on = dsc_train_model_is_dsa(tm), warm = a->dsa_warmup, sparse = a->dsa_sparse;
    if ((warm || sparse) && !dsa_on) {
        fprintf(stderr, "dsc: --dsa-stage %s needs a DSA model (deepseek_v32, index_topk > "
                "0); %s is %s\n", warm ? "warmup" : "sparse", dir, c->model_type);
        exit(1);
    }
    if (dsa_on) dsc_train_set_dsa_kl_weight(tm, a->dsa_kl_weight);
    /* NSA: the selection alignment loss (src/nsa/nsa_align.h) */
    int nal_on = a->nsa_align > 0;
    if (nal_on && !dsc_train_model_is_nsa(tm)) {
        fprintf(stderr, "dsc: --nsa-align needs an NSA model (attention_type \"nsa\"); %s is "
                "not one\n", dir);
        exit(1);
    }
    if (nal_on) dsc_train_set_nsa_align(tm, a->nsa_align);
    if (dsa_on) dsc_train_set_dsa_sparse(tm, sparse);
    int64_t np = 0;
    const dsc_param *mparams = dsc_train_model_params(tm, &np);
    dsc_param *params = malloc((size_t)np * sizeof *params);
    if (!params) die_msg("out of memory%s", "");
    for (int64_t i = 0; i < np; i++) {
        params[i] = mparams[i];
        params[i].frozen = warm && !dsc_train_param_is_indexer(&mparams[i]);
    }
    dsc_adamw_params hp = dsc_adamw_default_params();
    hp.weight_decay = a->wd;
    dsc_adamw_t *opt = NULL;
    if (dsc_adamw_new(&hp, params, np, &opt, &e) != DSC_OK) cli_die(&e);
    dsc_train_state st = {0};
    st.seed = seed;
    if (has_opt) {
        if (dsc_ckpt_load_optimizer(dir, opt, &st, &e) != DSC_OK) cli_die(&e);
        if (o->seed_set && st.seed != seed && !o->quiet)
            fprintf(stderr, "dsc: warning: resuming a run of seed %llu with --seed %llu\n",
                    (unsigned long long)st.seed, (unsigned long long)seed);
        if (!o->seed_set) seed = st.seed;
        st.seed = seed;
    }

    /* the log of the checkpoint's steps, continued */
    cli_train_log log = {0};
    if (has_opt) {
        char p[4200], msg[4600];
        snprintf(p, sizeof p, "%s/train_log.csv", dir);
        int rc = cli_log_read_csv(&log, p, st.step, msg, sizeof msg);
        if (rc < 0 && !o->quiet)
            fprintf(stderr, "dsc: warning: %s; the log keeps the %lld rows before it\n", msg,
                    (long long)log.n);
        else if (rc == 1 && st.step > 0 && !o->quiet)
            fprintf(stderr, "dsc: %s has no train_log.csv; the log starts at step %lld\n", dir,
                    (long long)st.step + 1);
    }
    double elapsed0 = log.n ? log.rows[log.n - 1].elapsed_s : 0;
    if (!isfinite(elapsed0)) elapsed0 = 0;

    /* 3. data */
    dsc_data_params dp = dsc_data_default_params();
    dp.seq_len = T;
    dp.val_fraction = a->val_frac;
    dp.seed = seed;
    dsc_dataset_t *ds = NULL;
    if (dsc_data_load(a->data, tok, &dp, &ds, &e) != DSC_OK) {
        if (e.code == DSC_ERR_ARG)   /* invalid UTF-8, naming where */
            fprintf(stderr, "dsc: --data %s is not UTF-8 text: %s\n", a->data, e.msg);
        else
            fprintf(stderr, "dsc: cannot read --data %s: %s\n", a->data, e.msg);
        exit(1);
    }
    if (dsc_data_n_seqs(ds, DSC_SPLIT_TRAIN) == 0) {
        if (dsc_data_n_docs(ds, DSC_SPLIT_VAL) > 0)
            fprintf(stderr, "dsc: all %lld documents of %s went to validation; lower "
                    "--val-frac\n", (long long)dsc_data_n_docs(ds, DSC_SPLIT_VAL), a->data);
        else
            fprintf(stderr, "dsc: --data %s holds no text to train on (empty, or only blank "
                    "lines)\n", a->data);
        exit(1);
    }
    dsc_data_iter_t *it = NULL;
    if (dsc_data_iter_new(ds, DSC_SPLIT_TRAIN, B, 1, seed, &it, &e) != DSC_OK) cli_die(&e);
    dsc_data_iter_seek(it, st.data_batches);
    passkey_mix pk = {0};
    if (a->passkey_mix > 0) {
        char msg[256];
        if (passkey_mix_init(&pk, a->passkey_mix, a->passkey_pack, seed, tok,
                             dsc_data_stream(ds, DSC_SPLIT_TRAIN),
                             dsc_data_n_tokens(ds, DSC_SPLIT_TRAIN), T, msg, sizeof msg) != 0) {
            fprintf(stderr, "dsc: --passkey-mix: %s\n", msg);
            exit(1);
        }
    }
    int64_t n_val = dsc_data_n_seqs(ds, DSC_SPLIT_VAL);
    int64_t n_val_batches = n_val < EVAL_MAX_BATCHES * B ? (n_val + B - 1) / B : EVAL_MAX_BATCHES;

    int32_t *ids = malloc((size_t)(B * (T + 1)) * sizeof *ids);
    dsc_ckpt_tensor *ct = calloc((size_t)np, sizeof *ct);
    if (!ids || !ct) die_msg("out of memory%s", "");

    double budget_s = a->time_budget * 60, deadline = t_start + budget_s;
    if (sizing) {
        /* two untimed passes (no update; the data position is kept): the
           second gives a first estimate N0 of the steps that fit */
        double t_pass = 0;
        for (int i = 0; i < 2; i++) {
            double t0 = cli_now(), l = 0;
            dsc_data_iter_next(it, ids, NULL);
            if (dsc_train_forward_backward(tm, ids, B, T, &l, &e) != DSC_OK) cli_die(&e);
            t_pass = cli_now() - t0;
        }
        dsc_data_iter_seek(it, st.data_batches);
        double left = deadline - cli_now();
        total = st.step + (int64_t)(left > 0 ? left / (t_pass > 1e-6 ? t_pass : 1e-6) : 0);
        if (total > st.step + 100000000) total = st.step + 100000000;
        if (total < st.step + 1) total = st.step + 1;
        if (warmup < 0) warmup = total / 10 < 100 ? total / 10 : 100;
    }
    dsc_lr_schedule sched = {a->lr, a->min_lr >= 0 ? a->min_lr : a->lr / 10, warmup,
                             total > warmup ? total : warmup};
    /* end: the last step of this run (sizing: until the budget fixes it) */
    int64_t end = sizing ? INT64_MAX : total;
    if (a->stop_after > 0 && a->stop_after < end) end = a->stop_after;
    char mtp_desc[192] = "", budget_desc[96] = "";
    if (mtp_on) snprintf(mtp_desc, sizeof mtp_desc, ", MTP (D = 1) weight %g", a->mtp_weight);
    else if (dsc_train_model_has_mtp(tm))
        snprintf(mtp_desc, sizeof mtp_desc, ", MTP module kept but not trained (weight 0)");
    if (a->time_budget > 0)
        snprintf(budget_desc, sizeof budget_desc, ", time budget %g min", a->time_budget);
    if (pk.frac > 0) {
        size_t k = strlen(budget_desc);
        snprintf(budget_desc + k, sizeof budget_desc - k, ", passkey mix %g", pk.frac);
        k = strlen(budget_desc);
        if (pk.pack)
            snprintf(budget_desc + k, sizeof budget_desc - k, " (packed, >= %lld ids)",
                     (long long)(pk.pack > pk.need ? pk.pack : pk.need));
    }
    if (dsa_on) {
        size_t k = strlen(mtp_desc);
        snprintf(mtp_desc + k, sizeof mtp_desc - k, ", DSA %s, indexer KL weight %g",
                 warm     ? "dense warm-up (only the indexer trains)"
                 : sparse ? "sparse stage (MLA over the indexer's top-k, everything trains)"
                          : "dense",
                 a->dsa_kl_weight);
    }
    int64_t n_par = 0;
    for (int64_t i = 0; i < np; i++) n_par += dsc_param_numel(&params[i]);
    char total_txt[32], end_txt[32];
    snprintf(total_txt, sizeof total_txt, sizing ? "? (sized by the time budget)" : "%lld",
             (long long)total);
    snprintf(end_txt, sizeof end_txt, end == INT64_MAX ? "?" : "%lld", (long long)end);
    if (!o->quiet)
        fprintf(stderr, "dsc: training %s: %lld params, %lld x %lld tokens/step, steps %lld..%s "
                "of %s, %lld train / %lld val sequences (%lld / %lld tokens), seed %llu%s%s%s\n",
                dir, (long long)n_par, (long long)B, (long long)T, (long long)st.step + 1,
                end_txt, total_txt, (long long)dsc_data_n_seqs(ds, DSC_SPLIT_TRAIN),
                (long long)n_val, (long long)dsc_data_n_tokens(ds, DSC_SPLIT_TRAIN),
                (long long)dsc_data_n_tokens(ds, DSC_SPLIT_VAL), (unsigned long long)seed,
                has_opt ? " (resumed)" : "", mtp_desc, budget_desc);
    if (st.step >= end && !o->quiet)
        fprintf(stderr, "dsc: %s is already at step %lld; nothing to do\n", dir,
                (long long)st.step);

    save_extra sx = {stage, &log, NULL, {sizing ? 0 : total, warmup, 0}};
    if (a->steps <= 0 && has_prev) sx.run.budget_min = prev.budget_min;
    char title[256], moe[64] = "dense";
    if (c->n_routed_experts > 0)
        snprintf(moe, sizeof moe, "%lld+%lld experts top-%lld", (long long)c->n_routed_experts,
                 (long long)c->n_shared_experts, (long long)c->num_experts_per_tok);
    snprintf(title, sizeof title, "%s, %.*f%s params: %lld layers, d %lld, %s%s; batch %lld x %lld",
             c->model_type, n_par < 1000000 ? 0 : 1, (double)n_par / (n_par < 1000000 ? 1e3 : 1e6),
             n_par < 1000000 ? "k" : "M", (long long)c->num_hidden_layers,
             (long long)c->hidden_size, moe, dsc_train_model_has_mtp(tm) ? ", MTP" : "",
             (long long)B, (long long)T);
    sx.title = title;

    /* 4. the loop. A due checkpoint of step k waits (pending) until the
       model of step k has given a finite loss: step k+1's forward, or at
       the end the validation loss or one more forward. */
    double t_all = cli_now(), loss = NAN;
    double win[ETA_WINDOW], t_first = 0, t_eval = -1;   /* step times; last validation's */
    int64_t n_win = 0;
    int64_t done0 = st.step, good_step = st.step;
    int pending = 0, failed = 0;
    dsc_train_state pst = st;
    for (int64_t step = st.step; step < end; step++) {
        double t0 = cli_now(), t_save = 0;
        dsc_data_iter_next(it, ids, NULL);
        if (pk.frac > 0)
            for (int64_t b = 0; b < B; b++)
                passkey_mix_seq(&pk, st.data_batches * B + b, ids + b * (T + 1), T);
        st.data_batches++;
        /* the recall (a metric) on the run's first step, every
           --dsa-recall-every steps and the last; never in validation */
        if (dsa_on)
            dsc_train_set_dsa_recall(tm, step == done0 || (step + 1) % a->dsa_recall_every == 0 ||
                                             step + 1 == end);
        if (dsc_train_forward_backward(tm, ids, B, T, &loss, &e) != DSC_OK) cli_die(&e);
        if (dsa_on) dsc_train_set_dsa_recall(tm, 0);
        if (!isfinite(loss)) {
            report_nonfinite("loss", step + 1, loss, dir, good_step);
            failed = 1;
            break;
        }
        if (pending) {
            double ts = cli_now();
            save(dir, tm, ct, tokdir, opt, &pst, &sx);
            good_step = pst.step;
            pending = 0;
            t_save = cli_now() - ts;
            if (!o->quiet) fprintf(stderr, "step %-6lld saved %s\n", (long long)pst.step, dir);
        }
        double ce = 0, mtp = 0, bal = 0, ikl = NAN, irec = NAN;
        dsc_train_loss_parts(tm, &ce, &bal, &mtp);
        if (dsa_on) dsc_train_dsa_stats(tm, &ikl, &irec);
        if (nal_on) ikl = dsc_train_nsa_align_kl(tm);
        if (warm)   /* frozen: no gradient (and none in the clipping norm) */
            for (int64_t i = 0; i < np; i++)
                if (params[i].frozen)
                    memset(params[i].grad, 0, (size_t)dsc_param_numel(&params[i]) * sizeof(float));
        double gn = dsc_clip_grad_norm(params, np, a->clip);
        double lr = dsc_lr_at(&sched, step);
        int skipped = !isfinite(gn);
        if (!skipped) dsc_adamw_step(opt, lr);
        else dsc_adamw_set_steps(opt, dsc_adamw_steps(opt) + 1);
        /* spec §5.5: b_i += gamma * sign(mean load - load_i), from this batch */
        if (!skipped && !warm) dsc_train_update_bias(tm, (float)a->bias_gamma);
        const int64_t *load = dsc_train_model_expert_load(tm);
        st.step = step + 1;
        st.lr = lr;
        double dt = cli_now() - t0 - t_save;
        /* mean of the last ETA_WINDOW step times, the run's first not
           counted (it stands in only until there is another) */
        if (st.step == done0 + 1) t_first = dt;
        else win[n_win++ % ETA_WINDOW] = dt;
        double avg = t_first;
        if (n_win > 0) {
            int64_t k = n_win < ETA_WINDOW ? n_win : ETA_WINDOW;
            avg = 0;
            for (int64_t i = 0; i < k; i++) avg += win[i];
            avg /= (double)k;
        }
        double t_val = n_val == 0 ? 0 : t_eval >= 0 ? t_eval : 0.4 * avg * (double)n_val_batches;

        /* --time-budget: size the schedule after steps 3..22 of the run */
        int64_t ran = st.step - done0;
        if (sizing && ran == SIZE_SKIP + SIZE_STEPS) {
            double per = avg + (a->eval_every > 0 ? t_val / (double)a->eval_every : 0);
            double left = deadline - cli_now() - t_val;
            int64_t more = left > 0 ? (int64_t)floor(left / per) : 0;
            if (more > 100000000) more = 100000000;
            total = st.step + more;
            sizing = 0;
            sched.total_steps = total > warmup ? total : warmup;
            sx.run = (run_info){total, warmup, a->time_budget};
            if (end > total) end = total;
            if (!o->quiet)
                fprintf(stderr, "dsc: time budget %g min: ~%lld steps at %.3g s/step\n",
                        a->time_budget, (long long)total, avg);
        }
        int last = st.step == end, checked = 0, out_of_time = 0;
        if (!last && budget_s > 0 && cli_now() + avg + t_val > deadline) {
            last = out_of_time = 1;
            end = st.step;
            if (sizing) {   /* the budget ran out before the schedule was sized */
                total = st.step;
                sizing = 0;
                sx.run = (run_info){total, warmup < total ? warmup : total, a->time_budget};
            }
        }
        if (!o->quiet) {
            char parts[192] = "", eta[32], of[32];
            int np_ = 0;
            if (mtp_on || bal_on || dsa_on || nal_on)
                np_ += snprintf(parts + np_, sizeof parts - (size_t)np_, "  main %.6f", ce);
            if (mtp_on) np_ += snprintf(parts + np_, sizeof parts - (size_t)np_, "  mtp %.6f", mtp);
            if (bal_on) np_ += snprintf(parts + np_, sizeof parts - (size_t)np_, "  bal %.6f", bal);
            if (dsa_on) {
                char rec[16] = "-";
                if (isfinite(irec)) snprintf(rec, sizeof rec, "%.4f", irec);
                snprintf(parts + np_, sizeof parts - (size_t)np_, "  idx_kl %.6f  idx_recall %s",
                         ikl, rec);
            }
            if (nal_on)
                snprintf(parts + np_, sizeof parts - (size_t)np_, "  sel_kl %.6f", ikl);
            /* the ETA: steps left x mean step time + the validations due */
            double left_s;
            if (sizing) {
                left_s = deadline - cli_now();
            } else {
                int64_t rem = end - st.step, evals = 0;
                if (a->eval_every > 0) evals = end / a->eval_every - st.step / a->eval_every;
                if (rem > 0 && (a->eval_every <= 0 || end % a->eval_every)) evals++;
                left_s = (double)rem * avg + (double)evals * t_val;
                if (budget_s > 0 && left_s > deadline - cli_now()) left_s = deadline - cli_now();
            }
            fmt_duration(eta, sizeof eta, left_s);
            snprintf(of, sizeof of, sizing ? "?" : "%lld", (long long)total);
            fprintf(stderr, "step %lld/%s  loss %.6f%s  lr %.3e  gnorm %.4f  %.0f tok/s  "
                    "eta %s%s\n", (long long)st.step, of, loss, parts, lr, gn,
                    (double)(B * T) / (dt > 0 ? dt : 1e-9), eta,
                    skipped ? "  (non-finite gradient: step skipped)" : "");
            if (out_of_time)
                fprintf(stderr, "dsc: time budget %g min: stopping after step %lld of %lld "
                        "(resumable)\n", a->time_budget, (long long)st.step, (long long)total);
        }
        cli_log_row row = {st.step, loss, ce, mtp_on ? mtp : NAN, bal_on ? bal : NAN, lr, gn,
                           (double)(B * T) / (dt > 0 ? dt : 1e-9), 0, NAN, NAN, ikl, irec};
        if ((a->eval_every > 0 && st.step % a->eval_every == 0) || last) {
            if (!o->quiet) log_load(c, load, st.step);
            if (n_val > 0) {
                int64_t seen = 0;
                double te = cli_now(), vm = 0, vl = val_loss(tm, ds, B, T, ids, &seen, &vm);
                t_eval = cli_now() - te;
                if (!isfinite(vl) || !isfinite(vm)) {
                    report_nonfinite("validation loss", st.step, isfinite(vl) ? vm : vl, dir,
                                     good_step);
                    failed = 1;
                    break;
                }
                checked = 1;
                row.val_loss = vl;
                row.val_mtp = mtp_on ? vm : NAN;
                if (!o->quiet) {
                    char parts[64] = "";
                    if (mtp_on) snprintf(parts, sizeof parts, "  mtp %.6f", vm);
                    fprintf(stderr, "step %-6lld val loss %.6f%s (%lld seqs)\n",
                            (long long)st.step, vl, parts, (long long)seen);
                }
            }
        }
        row.elapsed_s = elapsed0 + (cli_now() - t_all);
        if (cli_log_add(&log, &row) != 0) die_msg("out of memory%s", "");
        if ((a->save_every > 0 && st.step % a->save_every == 0) || last) {
            pending = 1;
            pst = st;
        }
        if (last && pending) {
            if (!checked) {   /* one more forward, on the next batch (not counted) */
                double l = 0;
                dsc_data_iter_next(it, ids, NULL);
                if (dsc_train_forward(tm, ids, B, T, &l, &e) != DSC_OK) cli_die(&e);
                if (!isfinite(l)) {
                    report_nonfinite("loss", st.step + 1, l, dir, good_step);
                    failed = 1;
                    break;
                }
            }
            save(dir, tm, ct, tokdir, opt, &pst, &sx);
            good_step = pst.step;
            pending = 0;
            if (!o->quiet) fprintf(stderr, "step %-6lld saved %s\n", (long long)pst.step, dir);
        }
    }
    if (!failed && !o->quiet && st.step > done0) {
        double dt = cli_now() - t_all;
        fprintf(stderr, "dsc: %lld steps in %.1f s (%.0f tok/s), final loss %.6f; log in "
                "%s/train_log.csv, plot in %s/loss.svg\n", (long long)(st.step - done0), dt,
                (double)((st.step - done0) * B * T) / (dt > 0 ? dt : 1e-9), loss, dir, dir);
    }
    cli_log_free(&log);
    free(ct);
    free(ids);
    passkey_mix_free(&pk);
    dsc_data_iter_free(it);
    dsc_data_free(ds);
    dsc_adamw_free(opt);
    free(params);
    dsc_train_model_free(tm);
    dsc_tokenizer_free(tok);
    return failed ? 1 : 0;
}
