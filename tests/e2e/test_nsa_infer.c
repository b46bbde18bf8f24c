/*
 * test_nsa_infer.c - inference on an NSA model (attention_type "nsa",
 * src/model/nsa_attn.c), the tiny config of test_nsa_model.c (hidden 32, 2
 * dense layers, H_q 4 over H_kv 1, d_k 16 (8 roped), d_v 8, l 8, d 4, l' 8,
 * w 8; T 40 so that the selection really selects), initialised with std 0.2
 * and saved by the trainer's init path, in two variants: MLP compression
 * with independent K/V per branch, half-split RoPE and n 4 (a block chosen
 * by score), and mean compression with shared K/V, interleaved RoPE and n 3.
 *  - nsa_infer_vs_train: the mean next-token cross-entropy from dsc_forward's
 *    logits over T tokens equals the trainer's loss (dsc_train_forward on the
 *    same tokens, fast operator) within 1e-5 relative: the trainer's
 *    whole-sequence fast operator against the decode state, projections,
 *    gates and RoPE included.
 *  - nsa_infer_split: the logits of one prefill of T tokens equal those of
 *    feeding the tokens one at a time and in chunks of 7 (1e-5).
 *  - nsa_infer_rollback: after T tokens, rewriting from an earlier pos0 (mid
 *    compression block and on a boundary) with other tokens gives the logits
 *    of a fresh context fed the new sequence; dsc_ctx_reset empties the
 *    states (the same logits as a fresh context after it).
 *  - nsa_infer_bf16_phi: a checkpoint storing phi's six tensors in BF16
 *    (converted to fp32 once, when the context is made) gives exactly the
 *    logits of the same checkpoint with those values stored in F32, over a
 *    prefill and steps.
 *  - nsa_infer_cli: `dsc run --ids ... -n 8 --temp 0 --print-ids` works and
 *    equals greedy dsc_generate in-process, `dsc logits` equals dsc_forward;
 *    --spec mtp is refused clearly.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "io/safetensors.h"
#include "kernels/kernels.h"
#include "model/model.h"
#include "test.h"
#include "train/init.h"
#include "train/model_train.h"

enum { T = 40, V = 64 };

static const char *CFG =
    "{\"model_type\": \"deepseek_v3\", \"vocab_size\": 64, \"hidden_size\": 32,\n"
    " \"intermediate_size\": 48, \"num_hidden_layers\": 2, \"num_attention_heads\": 4,\n"
    " \"qk_rope_head_dim\": 8, \"n_routed_experts\": 0,\n"
    " \"attention_type\": \"nsa\", \"nsa\": {\"num_key_value_heads\": 1, \"head_dim_k\": 16,\n"
    "  \"head_dim_v\": 8, \"block_size\": 8, \"stride\": 4, \"select_block\": 8,\n"
    "  \"n_select\": %d, \"window\": 8, \"compress\": \"%s\", \"compress_hidden\": 16,\n"
    "  \"shared_kv\": %s},\n"
    " \"max_position_embeddings\": 128, \"rms_norm_eps\": 1e-06, \"rope_theta\": 10000,\n"
    " \"rope_interleave\": %s, \"tie_word_embeddings\": false}\n";

/* n_select 4: from t = 32 on, one of blocks 1, 2 is chosen by score (0, cur
   and cur - 1 are forced); n_select 3: only the forced blocks, which drops
   blocks 1 .. cur-2 from t = 24 on */
static const struct {
    const char *name, *compress, *shared, *interleave;
    int n_select;
} VARIANTS[] = {
    {"mlp", "mlp", "false", "false", 4},
    {"mean_shared", "mean", "true", "true", 3},
};
#define NVAR (int)(sizeof VARIANTS / sizeof VARIANTS[0])

/* The model of variant v (a new directory under tmpdir); NULL on failure
   (recorded). */
static dsc_model_t *model(dsc_t *t, int v) {
    char text[4096], dir[512];
    snprintf(text, sizeof text, CFG, VARIANTS[v].n_select, VARIANTS[v].compress,
             VARIANTS[v].shared, VARIANTS[v].interleave);
    snprintf(dir, sizeof dir, "%s/nsa_inf_%s", t->tmpdir, VARIANTS[v].name);
    dsc_config cfg;
    dsc_err e = {0};
    if (dsc_config_parse(text, strlen(text), "nsa_config", &cfg, &e) != DSC_OK) {
        T_CHECK(t, 0, "config: %s", e.msg);
        return NULL;
    }
    dsc_init_params p = dsc_init_default_params();
    p.seed = 13;
    p.std = 0.2;
    if (dsc_train_init_save(dir, &cfg, &p, &e) != DSC_OK) {
        T_CHECK(t, 0, "init: %s", e.msg);
        return NULL;
    }
    dsc_model_t *m = NULL;
    T_CHECK(t, dsc_model_load(dir, &m, &e) == DSC_OK, "load %s: %s", dir, e.msg);
    return m;
}

static dsc_ctx_t *ctx(dsc_t *t, const dsc_model_t *m) {
    dsc_ctx_params p = dsc_ctx_default_params();
    p.n_ctx = 64;
    p.n_batch = 64;
    return t_new_ctx(t, m, &p);
}

static void tokens(int32_t *tok, int n, uint64_t seed) {
    t_rng r = {seed};
    for (int i = 0; i < n; i++) tok[i] = (int32_t)(t_rng_u64(&r) % V);
}

static void test_vs_train(dsc_t *t) {
    for (int v = 0; v < NVAR; v++) {
        dsc_model_t *m = model(t, v);
        if (!m) return;
        int32_t tok[T + 1];
        tokens(tok, T + 1, 5 + (uint64_t)v);
        dsc_err e = {0};
        dsc_train_model_t *tm = NULL;
        double loss = 0;
        T_CHECK(t, dsc_train_model_new(m, 1, T, &tm, &e) == DSC_OK, "train model: %s", e.msg);
        if (tm) T_CHECK(t, dsc_train_forward(tm, tok, 1, T, &loss, &e) == DSC_OK, "%s", e.msg);
        dsc_train_model_free(tm);
        dsc_ctx_t *c = ctx(t, m);
        float *lg = malloc((size_t)T * V * sizeof *lg);
        if (c && lg) {
            T_CHECK(t, dsc_forward(c, tok, T, 0, lg, &e) == DSC_OK, "forward: %s", e.msg);
            double ce = 0;
            for (int i = 0; i < T; i++) {
                const float *row = lg + (int64_t)i * V;
                double mx = row[0], s = 0;
                for (int j = 1; j < V; j++) mx = row[j] > mx ? row[j] : mx;
                for (int j = 0; j < V; j++) s += exp((double)row[j] - mx);
                ce += mx + log(s) - row[tok[i + 1]];
            }
            ce /= T;
            double rel = fabs(ce - loss) / fabs(loss);
            printf("       %-12s inference CE %.7f, trainer loss %.7f, rel %.2e\n",
                   VARIANTS[v].name, ce, loss, rel);
            T_CHECK(t, isfinite(loss) && rel <= 1e-5,
                    "%s: inference CE %.9g vs trainer loss %.9g (rel %.3g)", VARIANTS[v].name,
                    ce, loss, rel);
        }
        free(lg);
        dsc_ctx_free(c);
        dsc_model_free(m);
    }
}

/* Logits of tok[0..n) fed in calls of `chunk` tokens into out (n, V). */
static void feed(dsc_t *t, dsc_ctx_t *c, const int32_t *tok, int n, int chunk, float *out) {
    dsc_err e = {0};
    for (int p = 0; p < n; p += chunk) {
        int k = n - p < chunk ? n - p : chunk;
        T_CHECK(t, dsc_forward(c, tok + p, k, p, out + (int64_t)p * V, &e) == DSC_OK,
                "forward at %d: %s", p, e.msg);
    }
}

static void test_split(dsc_t *t) {
    for (int v = 0; v < NVAR; v++) {
        dsc_model_t *m = model(t, v);
        if (!m) return;
        int32_t tok[T];
        tokens(tok, T, 21 + (uint64_t)v);
        float *all = malloc((size_t)T * V * sizeof(float));
        float *one = malloc((size_t)T * V * sizeof(float));
        float *ch = malloc((size_t)T * V * sizeof(float));
        dsc_ctx_t *c = ctx(t, m);
        if (c && all && one && ch) {
            feed(t, c, tok, T, T, all);
            dsc_ctx_reset(c);
            feed(t, c, tok, T, 1, one);
            dsc_ctx_reset(c);
            feed(t, c, tok, T, 7, ch);
            char what[64];
            snprintf(what, sizeof what, "%s: one at a time", VARIANTS[v].name);
            double d1 = t_close_f32(t, what, one, all, (int64_t)T * V, 1e-5, 1e-5);
            snprintf(what, sizeof what, "%s: chunks of 7", VARIANTS[v].name);
            double d7 = t_close_f32(t, what, ch, all, (int64_t)T * V, 1e-5, 1e-5);
            printf("       %-12s max|diff| vs one prefill: one at a time %.2e, chunks of 7 "
                   "%.2e\n", VARIANTS[v].name, d1, d7);
        }
        free(all), free(one), free(ch);
        dsc_ctx_free(c);
        dsc_model_free(m);
    }
}

static void test_rollback(dsc_t *t) {
    for (int v = 0; v < NVAR; v++) {
        dsc_model_t *m = model(t, v);
        if (!m) return;
        int32_t a[T], b[T];
        tokens(a, T, 31 + (uint64_t)v);
        float *lg = malloc((size_t)T * V * sizeof(float));
        float *ref = malloc((size_t)T * V * sizeof(float));
        dsc_ctx_t *c = ctx(t, m), *f = ctx(t, m);
        /* rewrite from pos0 = 21 (inside a compression block), 16 (a
           boundary) and 3 (before the first block), each time after the
           whole of a (itself a rewrite from 0 after the first round) */
        static const int P0[] = {21, 16, 3};
        for (size_t k = 0; c && f && lg && ref && k < sizeof P0 / sizeof P0[0]; k++) {
            int p0 = P0[k];
            memcpy(b, a, sizeof b);
            tokens(b + p0, T - p0, 77 + k);
            feed(t, c, a, T, T, lg);
            dsc_err e = {0};
            T_CHECK(t, dsc_forward(c, b + p0, T - p0, p0, lg + (int64_t)p0 * V, &e) == DSC_OK,
                    "rewrite at %d: %s", p0, e.msg);
            dsc_ctx_reset(f);
            feed(t, f, b, T, T, ref);
            char what[64];
            snprintf(what, sizeof what, "%s: rewrite from %d", VARIANTS[v].name, p0);
            double d = t_close_f32(t, what, lg + (int64_t)p0 * V, ref + (int64_t)p0 * V,
                                   (int64_t)(T - p0) * V, 1e-5, 1e-5);
            printf("       %-12s rewrite from %2d: max|diff| %.2e\n", VARIANTS[v].name, p0, d);
            /* and a reset context computes b from scratch */
            dsc_ctx_reset(c);
            feed(t, c, b, T, 9, lg);
            snprintf(what, sizeof what, "%s: after reset (%d)", VARIANTS[v].name, p0);
            t_close_f32(t, what, lg, ref, (int64_t)T * V, 1e-5, 1e-5);
        }
        free(lg), free(ref);
        dsc_ctx_free(c);
        dsc_ctx_free(f);
        dsc_model_free(m);
    }
}

typedef struct {
    int32_t id[16];
    int n;
} idbuf;

static int collect(void *user, int32_t id) {
    idbuf *b = user;
    if (b->n < 16) b->id[b->n++] = id;
    return 0;
}

static void test_cli(dsc_t *t) {
    if (!t->dsc_bin) return;
    dsc_model_t *m = model(t, 0);
    if (!m) return;
    /* in-process greedy */
    dsc_sampler_params sp = dsc_sampler_default_params();
    sp.temp = 0;
    sp.ignore_eos = 1;
    sp.eos_id = (int32_t)dsc_model_config(m)->eos_token_id;
    dsc_sampler_t *s = NULL;
    dsc_err e = {0};
    T_CHECK(t, dsc_sampler_new(&sp, V, &s, &e) == DSC_OK, "%s", e.msg);
    dsc_ctx_params cp = dsc_ctx_default_params();
    dsc_ctx_t *c = t_new_ctx(t, m, &cp);
    idbuf want = {{0}, 0};
    const int32_t prompt[] = {1, 2, 3, 5, 8, 13, 21, 34, 55, 9, 4};
    if (c && s) {
        dsc_gen_stats st;
        T_CHECK(t, dsc_generate(c, s, prompt, 11, 8, -1, collect, &want, &st, &e) == DSC_OK,
                "generate: %s", e.msg);
    }
    T_CHECK(t, want.n == 8, "generate gave %d ids", want.n);
    dsc_sampler_free(s);
    dsc_ctx_free(c);

    char args[2048], *o = NULL;
    snprintf(args, sizeof args,
             "run -m %s/nsa_inf_mlp --ids 1,2,3,5,8,13,21,34,55,9,4 -n 8 --temp 0 --ignore-eos "
             "--print-ids -q", t->tmpdir);
    int st = t_run_dsc(t, "nsa_inf_run.txt", args, &o);
    int got[8], n = o ? sscanf(o, "%d %d %d %d %d %d %d %d", &got[0], &got[1], &got[2], &got[3],
                               &got[4], &got[5], &got[6], &got[7]) : 0;
    T_CHECK(t, st == 0 && n == 8, "dsc %s: exit %d, %d ids: %s", args, st, n, o ? o : "");
    for (int i = 0; i < n && i < want.n; i++)
        T_CHECK(t, got[i] == want.id[i], "id %d: dsc run %d, dsc_generate %d", i, got[i],
                want.id[i]);
    free(o);

    /* dsc logits equals dsc_forward over the prompt */
    float want_lg[11 * V];
    c = t_new_ctx(t, m, &cp);
    if (c) T_CHECK(t, dsc_forward(c, prompt, 11, 0, want_lg, &e) == DSC_OK, "%s", e.msg);
    dsc_ctx_free(c);
    snprintf(args, sizeof args,
             "logits -m %s/nsa_inf_mlp --ids 1,2,3,5,8,13,21,34,55,9,4 -o %s/nsa_inf_lg.bin",
             t->tmpdir, t->tmpdir);
    st = t_run_dsc(t, "nsa_inf_logits.txt", args, &o);
    T_CHECK(t, st == 0, "dsc %s: exit %d: %s", args, st, o ? o : "");
    free(o);
    char path[600];
    snprintf(path, sizeof path, "%s/nsa_inf_lg.bin", t->tmpdir);
    size_t len = 0;
    float *lg = t_read_file(path, &len);
    T_CHECK(t, lg && len == sizeof want_lg, "%s: %zu bytes, expected %zu", path, len,
            sizeof want_lg);
    if (lg && len == sizeof want_lg) t_close_f32(t, "dsc logits", lg, want_lg, 11 * V, 1e-5, 1e-5);
    free(lg);

    /* speculation is refused with a clear message */
    snprintf(args, sizeof args, "run -m %s/nsa_inf_mlp --ids 1,2,3 -n 4 --temp 0 --spec mtp -q",
             t->tmpdir);
    st = t_run_dsc(t, "nsa_inf_spec.txt", args, &o);
    T_CHECK(t, st != 0 && o && strstr(o, "not supported on NSA models"), "dsc %s: exit %d: %s",
            args, st, o ? o : "");
    free(o);
    dsc_model_free(m);
}

/* dir/model.safetensors rewritten from src's, phi's tensors (compress_k /
   compress_v) rounded to BF16 and stored as BF16 (bf16 != 0) or as the
   rounded values in F32; config.json copied. */
static void phi_copy(dsc_t *t, const char *src, const char *dir, int bf16) {
    char path[700], cmd[1600];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s' && cp '%s/config.json' '%s/'", dir, src, dir);
    T_CHECK(t, system(cmd) == 0, "%s", cmd);
    snprintf(path, sizeof path, "%s/model.safetensors", src);
    dsc_err e = {0};
    dsc_st_set *in = NULL;
    T_CHECK(t, dsc_st_set_open_file(path, &in, &e) == DSC_OK, "%s: %s", path, e.msg);
    if (!in) return;
    int64_t n = dsc_st_count(in);
    dsc_st_write_entry *ent = calloc((size_t)n, sizeof *ent);
    void **own = calloc((size_t)n, sizeof *own);
    for (int64_t i = 0; ent && own && i < n; i++) {
        const dsc_st_tensor *x = dsc_st_at(in, i);
        ent[i] = (dsc_st_write_entry){x->name, x->dtype, x->ndim, {0}, x->data};
        memcpy(ent[i].shape, x->shape, sizeof ent[i].shape);
        if (x->dtype != DSC_F32 || !strstr(x->name, ".compress_")) continue;
        const float *f = x->data;
        if (bf16) {
            uint16_t *h = malloc((size_t)x->numel * sizeof *h);
            for (int64_t j = 0; h && j < x->numel; j++) h[j] = dsc_f32_to_bf16(f[j]);
            own[i] = h, ent[i].dtype = DSC_BF16;
        } else {
            float *r = malloc((size_t)x->numel * sizeof *r);
            for (int64_t j = 0; r && j < x->numel; j++) r[j] = dsc_bf16_to_f32(dsc_f32_to_bf16(f[j]));
            own[i] = r;
        }
        ent[i].data = own[i];
    }
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    T_CHECK(t, ent && own && dsc_st_write(path, ent, n, &e) == DSC_OK, "%s: %s", path, e.msg);
    for (int64_t i = 0; own && i < n; i++) free(own[i]);
    free(own), free(ent);
    dsc_st_set_close(in);
}

static void test_bf16_phi(dsc_t *t) {
    dsc_model_t *m0 = model(t, 0);   /* "mlp": writes tmpdir/nsa_inf_mlp */
    dsc_model_free(m0);
    if (!m0) return;
    char src[512], dirs[2][512];
    snprintf(src, sizeof src, "%s/nsa_inf_mlp", t->tmpdir);
    float *out[2] = {malloc((size_t)T * V * sizeof(float)), malloc((size_t)T * V * sizeof(float))};
    int32_t tok[T];
    tokens(tok, T, 41);
    for (int k = 0; k < 2; k++) {
        snprintf(dirs[k], sizeof dirs[k], "%s/nsa_phi_%s", t->tmpdir, k ? "bf16" : "f32");
        phi_copy(t, src, dirs[k], k);
        dsc_model_t *m = NULL;
        dsc_err e = {0};
        T_CHECK(t, dsc_model_load(dirs[k], &m, &e) == DSC_OK, "load %s: %s", dirs[k], e.msg);
        dsc_ctx_t *c = m ? ctx(t, m) : NULL;
        if (c && out[k]) {
            feed(t, c, tok, T / 2, T / 2, out[k]);   /* a prefill, then steps */
            feed(t, c, tok + T / 2, T - T / 2, 1, out[k] + (int64_t)(T / 2) * V);
        }
        dsc_ctx_free(c);
        dsc_model_free(m);
    }
    if (out[0] && out[1]) {
        double d = t_close_f32(t, "bf16 phi vs the same values in f32", out[1], out[0],
                               (int64_t)T * V, 0, 0);
        printf("       max|diff| %.2e\n", d);
    }
    free(out[0]), free(out[1]);
}

const dsc_test_case dsc_tests_nsa_infer[] = {
    {"nsa_infer_vs_train", test_vs_train},
    {"nsa_infer_split", test_split},
    {"nsa_infer_rollback", test_rollback},
    {"nsa_infer_bf16_phi", test_bf16_phi},
    {"nsa_infer_cli", test_cli},
    {NULL, NULL},
};
