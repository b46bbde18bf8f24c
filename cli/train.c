/*
 * train.c - `dsc train`: pre-train (or continue training) a DeepSeek-V3-style
 * model on a text file, on the CPU, in fp32.
 *
 *   dsc train -m OUT_DIR --data FILE --tokenizer DIR [--config CONFIG.json] ...
 *
 * One run:
 *  1. OUT_DIR without config.json: a new model is initialised there from
 *     --config (train/init.h: N(0, 0.006^2) matrices, unit norms, zero router
 *     bias; seeded by --seed) together with the tokenizer files.
 *  2. The checkpoint is loaded and copied into a trainable fp32 model
 *     (train/model_train.h), with its MTP module (spec §6, D = 1) when the
 *     config has num_nextn_predict_layers = 1: the loss is then
 *     CE + --mtp-weight x MTP CE (0.3 by default, as V3's first 10T tokens;
 *     0 skips the module, whose tensors are still kept in the checkpoints,
 *     though AdamW's weight decay still shrinks its matrices); when OUT_DIR also holds optimizer.safetensors +
 *     trainer_state.json, the AdamW moments, step count, seed and the data
 *     position are restored and training continues where it stopped.
 *  3. --data is tokenized and split into train / validation documents
 *     (train/data.h); batches of --batch sequences of --seq tokens are drawn
 *     in a seeded shuffled order.
 *  4. Per step: forward + backward, global grad-norm clipping (--clip),
 *     AdamW (beta 0.9/0.95, --wd on matrices only) at the warm-up + cosine
 *     learning rate (--lr, --min-lr, --warmup; the cosine ends at --steps),
 *     then the auxiliary-loss-free balancing update of every noaux_tc
 *     router's e_score_correction_bias (spec §5.5, dsc_train_update_bias):
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
 *     (train/ckpt.h). A checkpoint of step k is written only once the model
 *     of step k has given a finite loss (the next step's forward, or at the
 *     end the validation loss or one more forward), so that it is good.
 *
 * Errors (message on stderr, exit 1; before any training where possible):
 * an OUT_DIR where checkpoints cannot be written, --seq above the model's
 * max_position_embeddings, an empty or non-UTF-8 --data file, and a loss
 * that is not finite (NaN / inf, e.g. from a far too large --lr): training
 * stops at once and OUT_DIR keeps the last good checkpoint.
 *
 * Determinism: the same seed, options and thread count give bit-identical
 * losses, and a run resumed from a step-k checkpoint continues exactly as
 * the uninterrupted run would have (the schedule spans --steps both times;
 * --stop-after k ends a run early, as an interruption would).
 *
 * Log lines (stderr; none with -q):
 *   step 12/100  loss 7.123456  lr 3.000e-04  gnorm 1.2345  2345 tok/s
 *   step 12/100  loss 9.100000  main 7.123456  mtp 6.589514  lr ...   (MTP)
 *   step 12      val loss 7.234567 (40 seqs)       (+ "  mtp X" with MTP)
 *   step 12      expert load max/mean: L1 1.75 L2 2.00
 *
 * What this is not: fast (fp32, CPU), multi-device, a DSA (deepseek_v32)
 * trainer, or an MTP trainer for D > 1 (refused).
 */
#include "cli.h"


#include <errno.h>
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

cli_train_opts cli_train_default_opts(void) {
    cli_train_opts t = {0};
    t.steps = 100;
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

static void save(const char *dir, dsc_train_model_t *tm, dsc_ckpt_tensor *ct, const char *tokdir,
                 dsc_adamw_t *opt, const dsc_train_state *st) {
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
    if (dsc_ckpt_save(dir, &sp, &e) != DSC_OK) cli_die(&e);
}

int cmd_train(const cli_opts *o) {
    const cli_train_opts *a = &o->train;
    const char *dir = o->model_dir;
    dsc_err e = {0};
    if (!a->data) cli_die_usage("train needs --data FILE", NULL);
    if (a->batch < 1 || a->seq < 1) cli_die_usage("--batch and --seq must be >= 1", NULL);
    int64_t warmup = a->warmup >= 0 ? a->warmup : (a->steps / 10 < 100 ? a->steps / 10 : 100);
    if (warmup > a->steps) cli_die_usage("--warmup must not exceed --steps", NULL);
#ifdef _OPENMP
    if (o->threads > 0) omp_set_num_threads(o->threads);
#endif
    int has_ckpt = file_exists(dir, "config.json");
    int has_opt = has_ckpt && file_exists(dir, "optimizer.safetensors") &&
                  file_exists(dir, "trainer_state.json");
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
        if (!a->config)
            die_msg("%s holds no checkpoint (config.json): pass --config CONFIG.json to "
                    "initialise a new model there", dir);
        dsc_config cfg;
        read_config(a->config, &cfg);
        if (cfg.max_position_embeddings > 0 && a->seq > cfg.max_position_embeddings) {
            fprintf(stderr, "dsc: --seq %lld is larger than the model's max_position_embeddings "
                    "%lld (%s)\n", (long long)a->seq, (long long)cfg.max_position_embeddings,
                    a->config);
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
            fprintf(stderr, "dsc: new %s model in %s (init std %g, seed %llu)\n",
                    cfg.model_type, dir, a->init_std, (unsigned long long)seed);
    } else if (a->config && !o->quiet) {
        fprintf(stderr, "dsc: %s already holds a checkpoint; --config ignored\n", dir);
    }

    /* 2. trainable copy, optimizer, resume */
    int64_t B = a->batch, T = a->seq;
    dsc_model_t *m = cli_load_model(o, NULL);
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
    dsc_train_set_balance_alpha(tm, a->balance_alpha);
    dsc_model_free(m);
    const dsc_config *c = dsc_train_model_config(tm);
    if (dsc_tokenizer_vocab(tok) > c->vocab_size) {
        fprintf(stderr, "dsc: the tokenizer has %lld ids but the model's vocab_size is %lld\n",
                (long long)dsc_tokenizer_vocab(tok), (long long)c->vocab_size);
        exit(1);
    }
    int64_t np = 0;
    const dsc_param *params = dsc_train_model_params(tm, &np);
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
    int64_t n_val = dsc_data_n_seqs(ds, DSC_SPLIT_VAL);

    int32_t *ids = malloc((size_t)(B * (T + 1)) * sizeof *ids);
    dsc_ckpt_tensor *ct = calloc((size_t)np, sizeof *ct);
    if (!ids || !ct) die_msg("out of memory%s", "");

    dsc_lr_schedule sched = {a->lr, a->min_lr >= 0 ? a->min_lr : a->lr / 10, warmup, a->steps};
    int64_t end = a->stop_after > 0 && a->stop_after < a->steps ? a->stop_after : a->steps;
    char mtp_desc[96] = "";
    if (mtp_on) snprintf(mtp_desc, sizeof mtp_desc, ", MTP (D = 1) weight %g", a->mtp_weight);
    else if (dsc_train_model_has_mtp(tm))
        snprintf(mtp_desc, sizeof mtp_desc, ", MTP module kept but not trained (weight 0)");
    int64_t n_par = 0;
    for (int64_t i = 0; i < np; i++) n_par += dsc_param_numel(&params[i]);
    if (!o->quiet)
        fprintf(stderr, "dsc: training %s: %lld params, %lld x %lld tokens/step, steps %lld..%lld "
                "of %lld, %lld train / %lld val sequences (%lld / %lld tokens), seed %llu%s%s\n",
                dir, (long long)n_par, (long long)B, (long long)T, (long long)st.step + 1,
                (long long)end, (long long)a->steps,
                (long long)dsc_data_n_seqs(ds, DSC_SPLIT_TRAIN), (long long)n_val,
                (long long)dsc_data_n_tokens(ds, DSC_SPLIT_TRAIN),
                (long long)dsc_data_n_tokens(ds, DSC_SPLIT_VAL), (unsigned long long)seed,
                has_opt ? " (resumed)" : "", mtp_desc);
    if (st.step >= end && !o->quiet)
        fprintf(stderr, "dsc: %s is already at step %lld; nothing to do\n", dir,
                (long long)st.step);

    /* 4. the loop. A due checkpoint of step k waits (pending) until the
       model of step k has given a finite loss: step k+1's forward, or at
       the end the validation loss or one more forward. */
    double t_all = cli_now(), loss = NAN;
    int64_t done0 = st.step, good_step = st.step;
    int pending = 0, failed = 0;
    dsc_train_state pst = st;
    for (int64_t step = st.step; step < end; step++) {
        double t0 = cli_now();
        dsc_data_iter_next(it, ids, NULL);
        st.data_batches++;
        if (dsc_train_forward_backward(tm, ids, B, T, &loss, &e) != DSC_OK) cli_die(&e);
        if (!isfinite(loss)) {
            report_nonfinite("loss", step + 1, loss, dir, good_step);
            failed = 1;
            break;
        }
        if (pending) {
            save(dir, tm, ct, tokdir, opt, &pst);
            good_step = pst.step;
            pending = 0;
            if (!o->quiet) fprintf(stderr, "step %-6lld saved %s\n", (long long)pst.step, dir);
        }
        double ce = 0, mtp = 0;
        dsc_train_loss_parts(tm, &ce, NULL, &mtp);
        double gn = dsc_clip_grad_norm(params, np, a->clip);
        double lr = dsc_lr_at(&sched, step);
        int skipped = !isfinite(gn);
        if (!skipped) dsc_adamw_step(opt, lr);
        else dsc_adamw_set_steps(opt, dsc_adamw_steps(opt) + 1);
        /* spec §5.5: b_i += gamma * sign(mean load - load_i), from this batch */
        if (!skipped) dsc_train_update_bias(tm, (float)a->bias_gamma);
        const int64_t *load = dsc_train_model_expert_load(tm);
        st.step = step + 1;
        st.lr = lr;
        double dt = cli_now() - t0;
        if (!o->quiet) {
            char parts[96] = "";
            if (mtp_on) snprintf(parts, sizeof parts, "  main %.6f  mtp %.6f", ce, mtp);
            fprintf(stderr, "step %lld/%lld  loss %.6f%s  lr %.3e  gnorm %.4f  %.0f tok/s%s\n",
                    (long long)st.step, (long long)a->steps, loss, parts, lr, gn,
                    (double)(B * T) / (dt > 0 ? dt : 1e-9),
                    skipped ? "  (non-finite gradient: step skipped)" : "");
        }
        int last = st.step == end, checked = 0;
        if ((a->eval_every > 0 && st.step % a->eval_every == 0) || last) {
            if (!o->quiet) log_load(c, load, st.step);
            if (n_val > 0) {
                int64_t seen = 0;
                double vm = 0, vl = val_loss(tm, ds, B, T, ids, &seen, &vm);
                if (!isfinite(vl) || !isfinite(vm)) {
                    report_nonfinite("validation loss", st.step, isfinite(vl) ? vm : vl, dir,
                                     good_step);
                    failed = 1;
                    break;
                }
                checked = 1;
                if (!o->quiet) {
                    char parts[64] = "";
                    if (mtp_on) snprintf(parts, sizeof parts, "  mtp %.6f", vm);
                    fprintf(stderr, "step %-6lld val loss %.6f%s (%lld seqs)\n",
                            (long long)st.step, vl, parts, (long long)seen);
                }
            }
        }
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
            save(dir, tm, ct, tokdir, opt, &pst);
            good_step = pst.step;
            pending = 0;
            if (!o->quiet) fprintf(stderr, "step %-6lld saved %s\n", (long long)pst.step, dir);
        }
    }
    if (!failed && !o->quiet && st.step > done0) {
        double dt = cli_now() - t_all;
        fprintf(stderr, "dsc: %lld steps in %.1f s (%.0f tok/s), final loss %.6f\n",
                (long long)(st.step - done0), dt,
                (double)((st.step - done0) * B * T) / (dt > 0 ? dt : 1e-9), loss);
    }
    free(ct);
    free(ids);
    dsc_data_iter_free(it);
    dsc_data_free(ds);
    dsc_adamw_free(opt);
    dsc_train_model_free(tm);
    dsc_tokenizer_free(tok);
    return failed ? 1 : 0;
}

