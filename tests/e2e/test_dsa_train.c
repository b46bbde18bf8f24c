/*
 * test_dsa_train.c - DSA's dense warm-up in the trainer (spec §4.6;
 * src/train/attn_dsa.c) and in `dsc train --dsa-stage warmup`.
 *
 *  grad:   on the v32 fixture (tests/fixtures/v32: 3 layers, index_topk 7),
 *          B 2 x T 12 tokens: the indexer tensors' gradients match central
 *          differences of the trainer's loss (only the KL term depends on
 *          them), the KL adds exactly nothing to any other gradient (the
 *          gradient block with --dsa-kl-weight 1 and 0 agree bit for bit
 *          outside the indexer), and weight 0 gives the indexer no
 *          gradient.
 *  warmup: a tiny v32 model (library init), 30 steps of `dsc train
 *          --dsa-stage warmup`: the logged idx_kl falls, idx_recall is
 *          logged and in train_log.csv, every non-indexer tensor of the
 *          checkpoint is bitwise the initial one, every indexer tensor
 *          changed, and `dsc run --temp 0` runs on the result (sparse: the
 *          context exceeds index_topk).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "io/safetensors.h"
#include "model/model.h"
#include "test.h"
#include "train/init.h"
#include "train/model_train.h"
#include "train/tm_impl.h"

#define TOKDIR "tests/fixtures/tokenizer_brown"
#define NSTEP 30

static void test_grad(dsc_t *t) {
    dsc_model_t *m = NULL;
    dsc_err e = {0};
    T_CHECK(t, dsc_model_load("tests/fixtures/v32", &m, &e) == DSC_OK, "load: %s", e.msg);
    if (!m) return;
    enum { B = 2, T = 12 };
    dsc_train_model_t *tm = NULL;
    T_CHECK(t, dsc_train_model_new(m, B, T, &tm, &e) == DSC_OK, "train model: %s", e.msg);
    dsc_model_free(m);
    if (!tm) return;
    T_CHECK(t, dsc_train_model_is_dsa(tm), "v32 model is not DSA");
    int32_t tok[B * (T + 1)];
    t_rng r = {11};
    for (int i = 0; i < B * (T + 1); i++) tok[i] = (int32_t)(t_rng_u64(&r) % 128);
    int64_t np = 0, nf = 0;
    const dsc_param *ps = dsc_train_model_params(tm, &np);
    float *grad = dsc_train_model_grad(tm, &nf);
    float *g1 = malloc((size_t)nf * sizeof *g1), *g0 = malloc((size_t)nf * sizeof *g0);
    double l1 = 0, l0 = 0;
    int n_idx = 0;
    for (int64_t i = 0; i < np; i++) n_idx += dsc_train_param_is_indexer(&ps[i]);
    T_CHECK(t, n_idx == 5 * 3, "%d indexer tensors listed, want 15", n_idx);

    dsc_train_set_dsa_kl_weight(tm, 1.0);
    T_CHECK(t, dsc_train_forward_backward(tm, tok, B, T, &l1, &e) == DSC_OK, "%s", e.msg);
    memcpy(g1, grad, (size_t)nf * sizeof *g1);
    double kl = 0, rec = 0;
    dsc_train_dsa_stats(tm, &kl, &rec);
    dsc_train_set_dsa_kl_weight(tm, 0.0);
    T_CHECK(t, dsc_train_forward_backward(tm, tok, B, T, &l0, &e) == DSC_OK, "%s", e.msg);
    memcpy(g0, grad, (size_t)nf * sizeof *g0);
    /* the loss is ce + 3 layers x kl: the difference is the KL sum */
    T_CHECK(t, kl > 0 && fabs((l1 - l0) - 3 * kl) < 1e-9 * (1 + l1),
            "loss %g - %g is not 3 x kl %g", l1, l0, kl);
    T_CHECK(t, rec > 0 && rec <= 1, "recall %g outside (0, 1]", rec);
    int64_t bad_other = 0, nz_idx = 0;
    for (int64_t i = 0; i < np; i++) {
        const dsc_param *p = &ps[i];
        int64_t off = p->grad - grad, n = dsc_param_numel(p);
        if (dsc_train_param_is_indexer(p)) {
            for (int64_t j = 0; j < n; j++) nz_idx += g0[off + j] != 0.0f;
        } else if (memcmp(g1 + off, g0 + off, (size_t)n * sizeof(float))) {
            bad_other++;
            T_CHECK(t, 0, "%s: the KL term changed its gradient (not detached)", p->name);
        }
    }
    T_CHECK(t, nz_idx == 0, "weight 0: %lld indexer gradient values are not 0",
            (long long)nz_idx);

    /* central differences of the trainer's loss (weight 1) on a few values
       of each indexer tensor. h = 1e-3: the loss is a double sum of fp32
       terms of size ~1, so its rounding noise (~1e-7) over 2h is ~1e-4;
       the curvature error is ~h^2. Measured: max |fd - analytic| 4.9e-6
       over 60 values; tolerance 5e-5 + 1%. */
    dsc_train_set_dsa_kl_weight(tm, 1.0);
    double worst = 0, worst_rel = 0;
    int n_chk = 0;
    for (int64_t i = 0; i < np; i++) {
        const dsc_param *p = &ps[i];
        if (!dsc_train_param_is_indexer(p)) continue;
        int64_t n = dsc_param_numel(p), off = p->grad - grad;
        for (int k = 0; k < 4; k++) {
            int64_t j = (int64_t)(t_rng_u64(&r) % (uint64_t)n);
            float keep = p->data[j];
            const float h = 1e-3f;
            double lp = 0, lm = 0;
            p->data[j] = keep + h;
            float up = p->data[j];
            dsc_train_forward(tm, tok, B, T, &lp, &e);
            p->data[j] = keep - h;
            float dn = p->data[j];
            dsc_train_forward(tm, tok, B, T, &lm, &e);
            p->data[j] = keep;
            double fd = (lp - lm) / ((double)up - (double)dn), an = g1[off + j];
            double err = fabs(fd - an);
            if (err > worst) worst = err;
            if (err / (fabs(an) + 1e-3) > worst_rel) worst_rel = err / (fabs(an) + 1e-3);
            T_CHECK(t, err <= 5e-5 + 0.01 * fabs(an), "%s[%lld]: analytic %.6g vs fd %.6g",
                    p->name, (long long)j, an, fd);
            n_chk++;
        }
    }
    fprintf(stderr, "  [dsa_train/grad] %d values, max |fd - analytic| %.3g (rel %.3g); "
            "kl %.4f recall %.4f\n", n_chk, worst, worst_rel, kl, rec);
    free(g1);
    free(g0);
    dsc_train_model_free(tm);
}

/* ---- dsc train --dsa-stage warmup ---- */

static const char *CONFIG =
    "{\"architectures\": [\"DeepseekV32ForCausalLM\"], \"model_type\": \"deepseek_v32\",\n"
    " \"vocab_size\": 4096, \"hidden_size\": 16, \"intermediate_size\": 24,\n"
    " \"moe_intermediate_size\": 8, \"num_hidden_layers\": 2, \"first_k_dense_replace\": 1,\n"
    " \"moe_layer_freq\": 1, \"num_attention_heads\": 2, \"num_key_value_heads\": 2,\n"
    " \"q_lora_rank\": 8, \"kv_lora_rank\": 8, \"qk_nope_head_dim\": 4,\n"
    " \"qk_rope_head_dim\": 4, \"v_head_dim\": 4, \"n_routed_experts\": 4,\n"
    " \"n_shared_experts\": 1, \"num_experts_per_tok\": 2, \"n_group\": 2, \"topk_group\": 1,\n"
    " \"topk_method\": \"noaux_tc\", \"scoring_func\": \"sigmoid\", \"norm_topk_prob\": true,\n"
    " \"routed_scaling_factor\": 2.5, \"num_nextn_predict_layers\": 0,\n"
    " \"index_n_heads\": 2, \"index_head_dim\": 8, \"index_topk\": 4,\n"
    " \"max_position_embeddings\": 128, \"rms_norm_eps\": 1e-06, \"rope_theta\": 10000,\n"
    " \"bos_token_id\": 0, \"eos_token_id\": 1, \"tie_word_embeddings\": false}\n";

/* Two copies of a new tiny v32 model (CONFIG; init seed, std 0 = the
   default) in tmpdir/NAME0 (kept as it was) and tmpdir/NAME (to train), and
   the word corpus; their paths into d0, d1, data (512 bytes each). */
static void two_models(dsc_t *t, const char *name, uint64_t seed, double std, char *d0, char *d1,
                       char *data) {
    dsc_config cfg;
    dsc_err e = {0};
    T_CHECK(t, dsc_config_parse(CONFIG, strlen(CONFIG), "test", &cfg, &e) == DSC_OK, "%s",
            e.msg);
    snprintf(d0, 512, "%s/%s0", t->tmpdir, name);
    snprintf(d1, 512, "%s/%s", t->tmpdir, name);
    dsc_init_params ip = dsc_init_default_params();
    ip.seed = seed;
    if (std > 0) ip.std = std;
    ip.tokenizer_dir = TOKDIR;
    T_CHECK(t, dsc_train_init_save(d0, &cfg, &ip, &e) == DSC_OK, "init: %s", e.msg);
    T_CHECK(t, dsc_train_init_save(d1, &cfg, &ip, &e) == DSC_OK, "init: %s", e.msg);
    t_write_words(t, "dsa_data.txt", 200, data, 512);
}

static void test_warmup(dsc_t *t) {
    dsc_err e = {0};
    char d0[512], d1[512], data[512], args[3072];
    /* std 0.5, not the default 0.006: at 0.006 MLA's attention and the
       indexer's scores are both ~uniform, the KL starts at ~0 and there is
       nothing to learn (a real warm-up starts from a trained dense model) */
    two_models(t, "dsa_w", 5, 0.5, d0, d1, data);
    snprintf(args, sizeof args,
             "train -m %s --data %s --tokenizer " TOKDIR " --steps %d --batch 2 --seq 16 "
             "--lr 5e-2 --warmup 2 --val-frac 0.2 --seed 7 -t 2 --dsa-stage warmup",
             d1, data, NSTEP);
    char *o = NULL;
    int st = t_run_dsc(t, "dsa_w.txt", args, &o);
    T_CHECK(t, st == 0, "dsc %s: exit %d: %s", args, st, o ? o : "");
    T_CHECK(t, o && strstr(o, "dense warm-up") && strstr(o, "idx_recall "),
            "no DSA warm-up / recall in the log: %s", o ? o : "");
    /* idx_kl of each step */
    double kl[NSTEP + 1] = {0};
    int n = t_log_steps(o, "idx_kl ", NSTEP, kl, NULL);
    T_CHECK(t, n == NSTEP, "%d steps logged idx_kl", n);
    double first = 0, last = 0;
    for (int s = 1; s <= 5; s++) first += kl[s] / 5, last += kl[NSTEP - 5 + s] / 5;
    fprintf(stderr, "  [dsa_train/warmup] idx_kl mean of steps 1-5 %.4f, %d-%d %.4f\n", first,
            NSTEP - 4, NSTEP, last);
    /* measured: 1.085 -> 0.537 (means of steps 1-5, 26-30); 0.85 x is a wide margin */
    T_CHECK(t, last < 0.85 * first, "idx_kl did not fall: %g -> %g", first, last);
    free(o);
    if (st != 0) return;

    /* train_log.csv has the columns, with values */
    char path[700];
    snprintf(path, sizeof path, "%s/train_log.csv", d1);
    char *csv = t_read_file(path, NULL);
    T_CHECK(t, csv && strstr(csv, ",idx_kl,idx_recall\n") && !strstr(csv, ",,\n"),
            "train_log.csv lacks idx columns / values: %.300s", csv ? csv : "(none)");
    free(csv);

    /* non-indexer tensors bitwise unchanged, indexer tensors changed */
    dsc_st_set *a = NULL, *b = NULL;
    snprintf(path, sizeof path, "%s/model.safetensors", d0);
    T_CHECK(t, dsc_st_set_open_file(path, &a, &e) == DSC_OK, "%s: %s", path, e.msg);
    snprintf(path, sizeof path, "%s/model.safetensors", d1);
    T_CHECK(t, dsc_st_set_open_file(path, &b, &e) == DSC_OK, "%s: %s", path, e.msg);
    if (a && b) {
        T_CHECK(t, dsc_st_count(a) == dsc_st_count(b), "tensor count %lld vs %lld",
                (long long)dsc_st_count(a), (long long)dsc_st_count(b));
        int n_idx = 0, n_other = 0;
        for (int64_t i = 0; i < dsc_st_count(a); i++) {
            dsc_st_tensor *x = dsc_st_at(a, i), *y = dsc_st_find(b, x->name);
            T_CHECK(t, y && y->nbytes == x->nbytes, "%s missing or resized", x->name);
            if (!y || y->nbytes != x->nbytes) continue;
            int same = !memcmp(x->data, y->data, x->nbytes);
            if (strstr(x->name, ".self_attn.indexer.")) {
                n_idx++;
                T_CHECK(t, !same, "indexer tensor %s did not change", x->name);
            } else {
                n_other++;
                T_CHECK(t, same, "frozen tensor %s changed in the warm-up", x->name);
            }
        }
        T_CHECK(t, n_idx == 10 && n_other > 10, "%d indexer / %d other tensors", n_idx,
                n_other);
    }
    if (a) dsc_st_set_close(a);
    if (b) dsc_st_set_close(b);

    /* the result loads and runs (8 tokens of context > index_topk 4: sparse) */
    snprintf(args, sizeof args, "run -m %s --ids 1,2,3,4,5 -n 4 --temp 0 --print-ids -q", d1);
    st = t_run_dsc(t, "dsa_run.txt", args, &o);
    int ids[4], k = o ? sscanf(o, "%d %d %d %d", &ids[0], &ids[1], &ids[2], &ids[3]) : 0;
    T_CHECK(t, st == 0 && k == 4, "dsc %s: exit %d, %d ids: %s", args, st, k, o ? o : "");
    free(o);
}

/* ---- the sparse stage ---- */

static dsc_train_model_t *load_v32(dsc_t *t, int64_t B, int64_t T) {
    dsc_model_t *m = NULL;
    dsc_err e = {0};
    T_CHECK(t, dsc_model_load("tests/fixtures/v32", &m, &e) == DSC_OK, "load: %s", e.msg);
    if (!m) return NULL;
    dsc_train_model_t *tm = NULL;
    T_CHECK(t, dsc_train_model_new(m, B, T, &tm, &e) == DSC_OK, "train model: %s", e.msg);
    dsc_model_free(m);
    return tm;
}

static void test_sparse_eq(dsc_t *t) {
    enum { B = 2, T = 7 };   /* the fixture's index_topk is 7: all keys kept */
    dsc_train_model_t *tm = load_v32(t, B, T);
    if (!tm) return;
    T_CHECK(t, tm->cfg.index_topk >= T, "index_topk %lld < T", (long long)tm->cfg.index_topk);
    int32_t tok[B * (T + 1)];
    t_rng r = {21};
    for (int i = 0; i < B * (T + 1); i++) tok[i] = (int32_t)(t_rng_u64(&r) % 128);
    int64_t np = 0, nf = 0;
    const dsc_param *ps = dsc_train_model_params(tm, &np);
    float *grad = dsc_train_model_grad(tm, &nf);
    float *gd = malloc((size_t)nf * sizeof *gd);
    double ld = 0, ls = 0, kld = 0, kls = 0, rd = 0, rs = 0;
    dsc_err e = {0};
    dsc_train_set_dsa_kl_weight(tm, 1.0);
    T_CHECK(t, dsc_train_forward_backward(tm, tok, B, T, &ld, &e) == DSC_OK, "%s", e.msg);
    dsc_train_dsa_stats(tm, &kld, &rd);
    memcpy(gd, grad, (size_t)nf * sizeof *gd);
    dsc_train_set_dsa_sparse(tm, 1);
    T_CHECK(t, dsc_train_forward_backward(tm, tok, B, T, &ls, &e) == DSC_OK, "%s", e.msg);
    dsc_train_dsa_stats(tm, &kls, &rs);
    /* the dense kernel sums in fp32 GEMM tiles, the sparse one in double:
       the same maths up to fp32 rounding. Loss and KL within 1e-5
       relative; each tensor's gradient within 1e-3 of its largest value
       (a routing flip would give errors of order 1) */
    fprintf(stderr, "  [dsa_train/sparse_eq] loss %.8f vs %.8f, kl %.6g vs %.6g, recall %.4f "
            "vs %.4f\n", ls, ld, kls, kld, rs, rd);
    T_CHECK(t, fabs(ls - ld) <= 1e-5 * fabs(ld), "loss %.9g vs dense %.9g", ls, ld);
    T_CHECK(t, fabs(kls - kld) <= 1e-5 * fabs(kld) + 1e-9, "kl %.9g vs dense %.9g", kls, kld);
    T_CHECK(t, fabs(rs - 1) < 1e-6 && fabs(rd - 1) < 1e-6, "recall %g / %g, want 1", rs, rd);
    double worst = 0;
    for (int64_t i = 0; i < np; i++) {
        const dsc_param *p = &ps[i];
        int64_t off = p->grad - grad, n = dsc_param_numel(p);
        double mag = 0, err = 0;
        for (int64_t j = 0; j < n; j++) {
            mag = fmax(mag, fabs(gd[off + j]));
            err = fmax(err, fabs((double)grad[off + j] - gd[off + j]));
        }
        if (mag > 0) worst = fmax(worst, err / mag);
        T_CHECK(t, err <= 1e-3 * mag + 1e-7, "%s: sparse vs dense gradient %.3g (max %.3g)",
                p->name, err, mag);
    }
    fprintf(stderr, "  [dsa_train/sparse_eq] worst gradient difference %.3g of the max\n",
            worst);
    free(gd);
    dsc_train_model_free(tm);
}

/* Every layer's DSA selection and MoE routing, for "did it flip". */
static int64_t route_size(const dsc_train_model_t *tm, int64_t N, int64_t T) {
    int64_t kk = tm->cfg.index_topk < T ? tm->cfg.index_topk : T, n = 0;
    for (int64_t l = 0; l < tm->n_layers; l++)
        n += N * kk + (tm->layers[l].is_moe ? N * tm->cfg.num_experts_per_tok : 0);
    return n;
}

static void route_snap(const dsc_train_model_t *tm, int64_t N, int64_t T, int32_t *out) {
    int64_t kk = tm->cfg.index_topk < T ? tm->cfg.index_topk : T;
    for (int64_t l = 0; l < tm->n_layers; l++) {
        memcpy(out, tm->act[l].ix_sel, (size_t)(N * kk) * sizeof *out);
        out += N * kk;
        if (tm->layers[l].is_moe) {
            int64_t k = N * tm->cfg.num_experts_per_tok;
            memcpy(out, tm->act[l].sel, (size_t)k * sizeof *out);
            out += k;
        }
    }
}

static void test_sparse_fd(dsc_t *t) {
    enum { B = 2, T = 12 };   /* > index_topk 7: queries 7.. attend to 7 of their keys */
    dsc_train_model_t *tm = load_v32(t, B, T);
    if (!tm) return;
    dsc_train_set_dsa_sparse(tm, 1);
    int32_t tok[B * (T + 1)];
    t_rng r = {31};
    for (int i = 0; i < B * (T + 1); i++) tok[i] = (int32_t)(t_rng_u64(&r) % 128);
    int64_t np = 0, nf = 0, nr = route_size(tm, B * T, T);
    const dsc_param *ps = dsc_train_model_params(tm, &np);
    float *grad = dsc_train_model_grad(tm, &nf);
    float *g[2] = {malloc((size_t)nf * sizeof(float)), malloc((size_t)nf * sizeof(float))};
    int32_t *r0 = malloc((size_t)nr * sizeof *r0), *r1 = malloc((size_t)nr * sizeof *r1);
    dsc_err e = {0};
    double l = 0;
    /* g[0]: KL weight 0 (LM loss only), g[1]: weight 1 */
    for (int wgt = 0; wgt < 2; wgt++) {
        dsc_train_set_dsa_kl_weight(tm, wgt);
        T_CHECK(t, dsc_train_forward_backward(tm, tok, B, T, &l, &e) == DSC_OK, "%s", e.msg);
        memcpy(g[wgt], grad, (size_t)nf * sizeof(float));
    }
    route_snap(tm, B * T, T, r0);
    /* the selection's shape: query t keeps min(kk, t+1) distinct visible
       keys, ascending, then -1 padding */
    int64_t kk = tm->cfg.index_topk;
    for (int64_t ly = 0; ly < tm->n_layers; ly++)
        for (int64_t q = 0; q < B * T; q++) {
            const int32_t *row = tm->act[ly].ix_sel + q * kk;
            int64_t tt = q % T, want = kk < tt + 1 ? kk : tt + 1, m = 0, okr = 1;
            for (int64_t j = 0; j < kk; j++) {
                if (row[j] < 0) continue;
                okr &= row[j] <= tt && (m == 0 || row[j] > row[j - 1]) && j == m;
                m++;
            }
            T_CHECK(t, okr && m == want, "layer %lld query %lld: bad selection (%lld of %lld)",
                    (long long)ly, (long long)q, (long long)m, (long long)want);
        }
    /* Tolerance as test_train_model's fd: the 3 largest-|g| elements of each
       tensor, step h = max(1e-2 |w|, 1e-3), 2e-2 relative (fp32 loss noise
       ~1e-7 relative against 2h|g|); a step that flips the DSA selection or
       the MoE routing is retried at h/4, h/16 and else skipped (counted). */
    int checked = 0, skipped = 0;
    double worst = 0;
    for (int64_t i = 0; i < np; i++) {
        const dsc_param *p = &ps[i];
        int idx = dsc_train_param_is_indexer(p);
        if (!strstr(p->name, ".self_attn.") || strstr(p->name, "norm")) continue;
        const float *gw = g[idx];   /* MLA: weight 0; indexer: weight 1 */
        dsc_train_set_dsa_kl_weight(tm, idx);
        int64_t off = p->grad - grad, n = dsc_param_numel(p);
        int64_t top[3] = {-1, -1, -1};
        for (int64_t j = 0; j < n; j++)
            for (int k = 0; k < 3; k++)
                if (top[k] < 0 || fabs(gw[off + j]) > fabs(gw[off + top[k]])) {
                    for (int q = 2; q > k; q--) top[q] = top[q - 1];
                    top[k] = j;
                    break;
                }
        for (int k = 0; k < 3 && top[k] >= 0; k++) {
            float *w = p->data + top[k], w0 = *w;
            double an = gw[off + top[k]];
            if (an == 0) continue;
            double h = fmax(1e-2 * fabs(w0), 1e-3);
            int ok = 0;
            for (int tries = 0; tries < 3 && !ok; tries++, h *= 0.25) {
                float wp = (float)(w0 + h), wm = (float)(w0 - h);
                double lp = 0, lm = 0;
                *w = wp;
                dsc_train_forward(tm, tok, B, T, &lp, &e);
                route_snap(tm, B * T, T, r1);
                int same = !memcmp(r0, r1, (size_t)nr * sizeof *r0);
                *w = wm;
                dsc_train_forward(tm, tok, B, T, &lm, &e);
                route_snap(tm, B * T, T, r1);
                same &= !memcmp(r0, r1, (size_t)nr * sizeof *r0);
                *w = w0;
                if (!same) continue;
                ok = 1;
                double fd = (lp - lm) / ((double)wp - (double)wm), rel = fabs(fd - an) / fabs(an);
                worst = fmax(worst, rel);
                checked++;
                T_CHECK(t, rel <= 2e-2, "%s[%lld]: fd %.6g, backward %.6g (rel %.2e)", p->name,
                        (long long)top[k], fd, an, rel);
            }
            skipped += !ok;
        }
    }
    fprintf(stderr, "  [dsa_train/sparse_fd] %d values checked, %d skipped (selection or "
            "routing flipped), worst rel %.3g\n", checked, skipped, worst);
    T_CHECK(t, checked >= 20 && skipped * 4 <= checked, "%d checked, %d skipped", checked,
            skipped);
    free(g[0]);
    free(g[1]);
    free(r0);
    free(r1);
    dsc_train_model_free(tm);
}

#define NSPARSE 20

static void test_sparse_cli(dsc_t *t) {
    dsc_err e = {0};
    char d0[512], d1[512], data[512], args[3072];
    two_models(t, "dsa_s", 6, 0, d0, d1, data);
    snprintf(args, sizeof args,
             "train -m %s --data %s --tokenizer " TOKDIR " --steps %d --batch 2 --seq 16 "
             "--lr 1e-2 --warmup 2 --val-frac 0.2 --seed 7 -t 2 --dsa-stage sparse",
             d1, data, NSPARSE);
    char *o = NULL;
    int st = t_run_dsc(t, "dsa_s.txt", args, &o);
    T_CHECK(t, st == 0, "dsc %s: exit %d: %s", args, st, o ? o : "");
    T_CHECK(t, o && strstr(o, "sparse stage") && strstr(o, "idx_kl ") && strstr(o, "idx_recall "),
            "no DSA sparse stage / idx_kl / recall in the log: %s", o ? o : "");
    double lm[NSPARSE + 1] = {0};
    int n = t_log_steps(o, "main ", NSPARSE, lm, NULL);
    T_CHECK(t, n == NSPARSE, "%d steps logged the LM loss", n);
    double first = 0, last = 0;
    for (int s = 1; s <= 3; s++) first += lm[s] / 3, last += lm[NSPARSE - 3 + s] / 3;
    fprintf(stderr, "  [dsa_train/sparse_cli] LM loss mean of steps 1-3 %.4f, %d-%d %.4f\n",
            first, NSPARSE - 2, NSPARSE, last);
    T_CHECK(t, last < first - 0.1, "LM loss did not fall: %g -> %g", first, last);
    free(o);
    if (st != 0) return;

    /* every tensor trained (the router bias too: balancing on) */
    dsc_st_set *a = NULL, *b = NULL;
    char path[700];
    snprintf(path, sizeof path, "%s/model.safetensors", d0);
    T_CHECK(t, dsc_st_set_open_file(path, &a, &e) == DSC_OK, "%s: %s", path, e.msg);
    snprintf(path, sizeof path, "%s/model.safetensors", d1);
    T_CHECK(t, dsc_st_set_open_file(path, &b, &e) == DSC_OK, "%s: %s", path, e.msg);
    if (a && b) {
        int n_changed = 0, n_all = 0;
        for (int64_t i = 0; i < dsc_st_count(a); i++) {
            dsc_st_tensor *x = dsc_st_at(a, i), *y = dsc_st_find(b, x->name);
            T_CHECK(t, y && y->nbytes == x->nbytes, "%s missing or resized", x->name);
            if (!y || y->nbytes != x->nbytes) continue;
            n_all++;
            int same = !memcmp(x->data, y->data, x->nbytes);
            n_changed += !same;
            if (strstr(x->name, "self_attn.") || strstr(x->name, "e_score_correction_bias"))
                T_CHECK(t, !same, "%s did not change in the sparse stage", x->name);
        }
        fprintf(stderr, "  [dsa_train/sparse_cli] %d of %d tensors changed\n", n_changed,
                n_all);
    }
    if (a) dsc_st_set_close(a);
    if (b) dsc_st_set_close(b);

    snprintf(args, sizeof args, "run -m %s --ids 1,2,3,4,5 -n 4 --temp 0 --print-ids -q", d1);
    st = t_run_dsc(t, "dsa_srun.txt", args, &o);
    int ids[4], k = o ? sscanf(o, "%d %d %d %d", &ids[0], &ids[1], &ids[2], &ids[3]) : 0;
    T_CHECK(t, st == 0 && k == 4, "dsc %s: exit %d, %d ids: %s", args, st, k, o ? o : "");
    free(o);

    /* --dsa-topk: the checkpoint's index_topk becomes K (4 -> 9), and the
       next checkpoint keeps it */
    snprintf(args, sizeof args,
             "train -m %s --data %s --steps %d --batch 2 --seq 16 --val-frac 0.2 --seed 7 "
             "-t 1 --dsa-stage sparse --dsa-topk 9 -q", d1, data, NSPARSE + 2);
    st = t_run_dsc(t, "dsa_topk.txt", args, &o);
    T_CHECK(t, st == 0, "dsc %s: exit %d: %s", args, st, o ? o : "");
    free(o);
    snprintf(path, sizeof path, "%s/config.json", d1);
    char *cj = t_read_file(path, NULL);
    T_CHECK(t, cj && strstr(cj, "\"index_topk\": 9"), "index_topk not 9 in %s: %.400s", path,
            cj ? cj : "(none)");
    free(cj);
    /* a model without an indexer: refused */
    char dm[512];
    snprintf(dm, sizeof dm, "%s/dsa_topk_mla", t->tmpdir);
    snprintf(args, sizeof args,
             "train -m %s --data %s --tokenizer " TOKDIR " --preset tiny --steps 1 --batch 2 "
             "--seq 16 --dsa-topk 9 -q", dm, data);
    st = t_run_dsc(t, "dsa_topk_mla.txt", args, &o);
    T_CHECK(t, st == 1 && o && strstr(o, "--dsa-topk") && strstr(o, "not a DSA model"),
            "dsc %s: exit %d: %s", args, st, o ? o : "");
    free(o);
}

const dsc_test_case dsc_tests_dsa_train[] = {
    {"grad", test_grad},
    {"warmup", test_warmup},
    {"sparse_eq", test_sparse_eq},
    {"sparse_fd", test_sparse_fd},
    {"sparse_cli", test_sparse_cli},
    {NULL, NULL},
};
