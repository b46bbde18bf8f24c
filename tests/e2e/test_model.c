/*
 * test_model.c - the forward pass against transformers, and the model-level
 * contracts: naive == absorbed MLA, incremental == full-sequence logits, the
 * -inf group-masking rule, and clear errors on bad checkpoints.
 *
 * Fixtures (tests/fixtures/<name>/) come from tests/reference/make_fixtures.py:
 * tiny random DeepseekV2/V3ForCausalLM models run by transformers in float64;
 * ref_ids.i32 holds the ids, ref_logits.f64 the expected logits [n][vocab].
 *
 * Tolerance: max |logit diff| <= 1e-4 (the bar). dsc computes in fp32
 * with fp32 accumulation in BLAS; on these tiny models (|logits| < ~5, a few
 * layers) fp32 rounding gives ~1e-6, so 1e-4 leaves room without hiding a
 * wrong formula (a wrong YaRN ramp, scale or routing moves logits by >1e-2).
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/safetensors.h"
#include "model/model.h"
#include "test.h"

static const char *fixtures[] = {"v2_lite", "v2", "v3", "v3_nointerleave", "v3_bf16", "v3_fp8"};
#define N_FIX (sizeof fixtures / sizeof fixtures[0])
#define LOGIT_TOL 1e-4

typedef struct {
    int32_t *ids;
    int64_t n;
    double *logits;
    int64_t vocab;
} ref_data;

static int load_ref(dsc_t *t, const char *name, int64_t vocab, ref_data *r) {
    char p[512];
    size_t len = 0, llen = 0;
    snprintf(p, sizeof p, "tests/fixtures/%s/ref_ids.i32", name);
    r->ids = t_read_file(p, &len);
    snprintf(p, sizeof p, "tests/fixtures/%s/ref_logits.f64", name);
    r->logits = t_read_file(p, &llen);
    r->n = (int64_t)(len / 4);
    r->vocab = vocab;
    if (!r->ids || !r->logits || r->n == 0 || llen != (size_t)(r->n * vocab) * 8) {
        T_CHECK(t, 0, "fixture %s: missing or inconsistent ref files (%zu ids bytes, %zu "
                "logits bytes, vocab %lld)", name, len, llen, (long long)vocab);
        free(r->ids);
        free(r->logits);
        return 0;
    }
    return 1;
}

/* Full-sequence logits of a fixture in the given attention mode. */
static float *run_full(dsc_t *t, dsc_model_t *m, const ref_data *r, dsc_attn_mode mode,
                       int threads) {
    dsc_ctx_params p = dsc_ctx_default_params();
    p.n_ctx = r->n;
    p.n_batch = r->n;
    p.attn = mode;
    p.n_threads = threads;
    dsc_ctx_t *c = NULL;
    dsc_err e = {0};
    if (dsc_ctx_new(m, &p, &c, &e) != DSC_OK) {
        T_CHECK(t, 0, "ctx: %s", e.msg);
        return NULL;
    }
    float *lg = malloc((size_t)(r->n * r->vocab) * sizeof *lg);
    dsc_status s = dsc_forward(c, r->ids, r->n, 0, lg, &e);
    T_CHECK(t, s == DSC_OK, "forward: %s", e.msg);
    dsc_ctx_free(c);
    return lg;
}

static void test_parity(dsc_t *t) {
    for (size_t f = 0; f < N_FIX; f++) {
        dsc_model_t *m = t_load_fixture(t, fixtures[f]);
        if (!m) continue;
        ref_data r;
        if (load_ref(t, fixtures[f], m->cfg.vocab_size, &r)) {
            for (int mode = 0; mode < 2; mode++) {
                float *lg = run_full(t, m, &r, (dsc_attn_mode)mode, mode ? 1 : 2);
                if (!lg) continue;
                char what[96];
                snprintf(what, sizeof what, "%s %s logits", fixtures[f],
                         mode == DSC_ATTN_NAIVE ? "naive" : "absorbed");
                double d = t_close_f64(t, what, lg, r.logits, r.n * r.vocab, LOGIT_TOL, 0);
                printf("       %-28s max|diff| %.2e over %lld logits\n", what, d,
                       (long long)(r.n * r.vocab));
                free(lg);
            }
            free(r.ids);
            free(r.logits);
        }
        dsc_model_free(m);
    }
}

/* Prefill a prefix in one call, a chunk of several tokens at pos0 > 0, then
   one token at a time: every row must equal the full-sequence logits. */
static void test_incremental(dsc_t *t) {
    /* v3_bf16 / v3_fp8 also take the decode path that applies kv_b_proj
       from its stored dtype (SIMD view for BF16; FP8 heads off a 128-row
       block boundary, the reference fallback) */
    const char *names[] = {"v2_lite", "v3", "v3_bf16", "v3_fp8"};
    for (int f = 0; f < 4; f++) {
        dsc_model_t *m = t_load_fixture(t, names[f]);
        if (!m) continue;
        ref_data r;
        if (!load_ref(t, names[f], m->cfg.vocab_size, &r)) {
            dsc_model_free(m);
            continue;
        }
        for (int mode = 0; mode < 2; mode++) {
            float *full = run_full(t, m, &r, (dsc_attn_mode)mode, 2);
            dsc_ctx_params p = dsc_ctx_default_params();
            p.n_ctx = r.n + 3;
            p.n_batch = 5;
            p.attn = (dsc_attn_mode)mode;
            dsc_ctx_t *c = NULL;
            dsc_err e = {0};
            T_CHECK(t, dsc_ctx_new(m, &p, &c, &e) == DSC_OK, "%s", e.msg);
            float *lg = malloc((size_t)(r.n * r.vocab) * sizeof *lg);
            int64_t pos = 0;
            while (pos < r.n && c) {
                int64_t step = pos < 5 ? 5 : pos < 9 ? 4 : 1;
                if (pos + step > r.n) step = r.n - pos;
                dsc_status s = dsc_forward(c, r.ids + pos, step, pos, lg + pos * r.vocab, &e);
                T_CHECK(t, s == DSC_OK, "step at %lld: %s", (long long)pos, e.msg);
                pos += step;
            }
            char what[96];
            snprintf(what, sizeof what, "%s %s incremental", names[f],
                     mode == DSC_ATTN_NAIVE ? "naive" : "absorbed");
            /* same maths, different GEMM shapes: fp32 reassociation only */
            if (full) t_close_f32(t, what, lg, full, r.n * r.vocab, 1e-4, 0);
            t_close_f64(t, what, lg, r.logits, r.n * r.vocab, LOGIT_TOL, 0);
            free(lg);
            free(full);
            dsc_ctx_free(c);
        }
        free(r.ids);
        free(r.logits);
        dsc_model_free(m);
    }
}

/* Bad arguments to dsc_forward are refused, and the cache is untouched. */
static void test_forward_args(dsc_t *t) {
    dsc_model_t *m = t_load_fixture(t, "v3");
    if (!m) return;
    dsc_ctx_params p = dsc_ctx_default_params();
    p.n_ctx = 8;
    p.n_batch = 4;
    dsc_ctx_t *c = NULL;
    dsc_err e = {0};
    T_CHECK(t, dsc_ctx_new(m, &p, &c, &e) == DSC_OK, "%s", e.msg);
    if (!c) {
        dsc_model_free(m);
        return;
    }
    int32_t ids[6] = {1, 2, 3, 4, 5, 6};
    float *lg = malloc((size_t)(6 * m->cfg.vocab_size) * sizeof *lg);
    int32_t bad = (int32_t)m->cfg.vocab_size;
    T_CHECK(t, dsc_forward(c, &bad, 1, 0, lg, &e) == DSC_ERR_ARG && strstr(e.msg, "out of range"),
            "id == vocab accepted: %s", e.msg);
    bad = -1;
    T_CHECK(t, dsc_forward(c, &bad, 1, 0, lg, &e) == DSC_ERR_ARG, "negative id accepted");
    T_CHECK(t, dsc_forward(c, ids, 5, 0, lg, &e) == DSC_ERR_ARG, "n > n_batch accepted");
    T_CHECK(t, dsc_forward(c, ids, 2, 7, lg, &e) == DSC_ERR_ARG, "past n_ctx accepted");
    T_CHECK(t, dsc_forward(c, ids, 0, 0, lg, &e) == DSC_ERR_ARG, "n = 0 accepted");
    dsc_ctx_free(c);
    free(lg);
    dsc_model_free(m);
}

/* ---- the -inf rule for dropped groups, against a brute-force reference ---- */

/* Brute force: try every set of topk_group groups, keep the set with the
   largest summed group score (group score = sum of its top-2 biased scores),
   then take the K best biased scores inside it. `zero_mask` reproduces
   transformers' variant (dropped experts scored 0.0 instead of excluded). */
static void brute_route(const float *s, const float *bias, int E, int G, int TG, int K,
                        int zero_mask, int *idx) {
    int per = E / G;
    double gs[16];
    for (int g = 0; g < G; g++) {
        double a = -1e30, b = -1e30;
        for (int e = 0; e < per; e++) {
            double v = (double)s[g * per + e] + bias[g * per + e];
            if (v > a) {
                b = a;
                a = v;
            } else if (v > b) {
                b = v;
            }
        }
        gs[g] = a + b;
    }
    int best_mask = 0;
    double best = -1e300;
    for (int mask = 0; mask < (1 << G); mask++) {
        if (__builtin_popcount((unsigned)mask) != TG) continue;
        double tot = 0;
        for (int g = 0; g < G; g++)
            if (mask >> g & 1) tot += gs[g];
        if (tot > best) {
            best = tot;
            best_mask = mask;
        }
    }
    int taken[64] = {0};
    for (int k = 0; k < K; k++) {
        int arg = -1;
        double bv = -1e300;
        for (int e = 0; e < E; e++) {
            int in = best_mask >> (e / per) & 1;
            if (taken[e] || (!in && !zero_mask)) continue;
            double v = in ? (double)s[e] + bias[e] : 0.0;
            if (v > bv) {
                bv = v;
                arg = e;
            }
        }
        taken[arg] = 1;
        idx[k] = arg;
    }
}

static int same_set(const int32_t *a, const int *b, int k) {
    for (int i = 0; i < k; i++) {
        int found = 0;
        for (int j = 0; j < k; j++) found |= a[i] == b[j];
        if (!found) return 0;
    }
    return 1;
}

static void test_group_mask_inf(dsc_t *t) {
    dsc_config c = {0};
    c.n_routed_experts = 16;
    c.n_group = 4;
    c.topk_group = 2;
    c.num_experts_per_tok = 6;
    c.topk_method = DSC_TOPK_NOAUX_TC;
    c.scoring_func = DSC_SCORE_SIGMOID;
    c.norm_topk_prob = 1;
    c.routed_scaling_factor = 2.5;
    enum { E = 16, K = 6, TRIALS = 400 };
    t_rng rng = {42};
    int differs_from_zero_mask = 0;
    for (int trial = 0; trial < TRIALS; trial++) {
        float z[E], bias[E], scores[E], sel[E], gws[4], w[K];
        int32_t idx[K];
        int want[K], hf[K];
        /* strongly negative biases make biased scores < 0, where 0.0 masking
           would wrongly prefer experts of dropped groups */
        for (int e = 0; e < E; e++) {
            z[e] = 3.0f * t_rng_normal(&rng);
            bias[e] = -1.2f * t_rng_uniform(&rng);
        }
        dsc_moe_route(&c, z, bias, 1, scores, sel, gws, idx, w);
        float s[E];
        for (int e = 0; e < E; e++) s[e] = 1.0f / (1.0f + expf(-z[e]));
        brute_route(s, bias, E, 4, 2, K, 0, want);
        brute_route(s, bias, E, 4, 2, K, 1, hf);
        T_CHECK(t, same_set(idx, want, K), "trial %d: routed set differs from brute force",
                trial);
        differs_from_zero_mask += !same_set(idx, hf, K);
        /* weights: unbiased sigmoid of the chosen, normalised, times 2.5 */
        double sum = 0;
        for (int k = 0; k < K; k++) sum += s[want[k]];
        for (int k = 0; k < K; k++) {
            double g = s[idx[k]] / sum * 2.5;
            T_CHECK(t, fabs(w[k] - g) <= 1e-6 * fabs(g), "trial %d: weight %d is %g, want %g",
                    trial, k, (double)w[k], g);
        }
    }
    /* the test is only meaningful if the two masking rules disagree somewhere */
    T_CHECK(t, differs_from_zero_mask > 0, "no trial separated -inf from 0.0 masking");
    printf("       -inf vs 0.0 group masking disagree in %d of %d trials\n",
           differs_from_zero_mask, (int)TRIALS);
}

/* ---- bad checkpoints ---- */

static int copy_file(const char *from, const char *to) {
    size_t n = 0;
    void *b = t_read_file(from, &n);
    if (!b) return -1;
    int r = t_write_file(to, b, n);
    free(b);
    return r;
}

/* Rewrite fixture v3_nointerleave into dir, with tensor `victim` dropped,
   reshaped (one row less) or joined by an extra tensor. */
enum { DROP, RESHAPE, EXTRA, NONE };
static void make_variant(dsc_t *t, const char *dir, const char *victim, int how) {
    char p[512], q[512];
    snprintf(p, sizeof p, "mkdir -p '%s'", dir);
    T_CHECK(t, system(p) == 0, "mkdir");
    snprintf(p, sizeof p, "tests/fixtures/v3_nointerleave/config.json");
    snprintf(q, sizeof q, "%s/config.json", dir);
    T_CHECK(t, copy_file(p, q) == 0, "copy config");
    dsc_st_set *s = NULL;
    dsc_err e = {0};
    T_CHECK(t, dsc_st_set_open_file("tests/fixtures/v3_nointerleave/model.safetensors", &s,
                                    &e) == DSC_OK, "%s", e.msg);
    if (!s) return;
    int64_t n = dsc_st_count(s), k = 0;
    dsc_st_write_entry *ent = calloc((size_t)n + 1, sizeof *ent);
    for (int64_t i = 0; i < n; i++) {
        dsc_st_tensor *tt = dsc_st_at(s, i);
        int hit = !strcmp(tt->name, victim);
        if (hit && how == DROP) continue;
        dsc_st_write_entry *w = &ent[k++];
        w->name = tt->name;
        w->dtype = tt->dtype;
        w->ndim = tt->ndim;
        memcpy(w->shape, tt->shape, sizeof w->shape);
        w->data = tt->data;
        if (hit && how == RESHAPE) w->shape[0] -= 1;
    }
    static const float extra[4] = {1, 2, 3, 4};
    if (how == EXTRA) {
        dsc_st_write_entry *w = &ent[k++];
        w->name = "model.layers.0.self_attn.rotary_emb.stray";
        w->dtype = DSC_F32;
        w->ndim = 1;
        w->shape[0] = 4;
        w->data = extra;
    }
    snprintf(q, sizeof q, "%s/model.safetensors", dir);
    T_CHECK(t, dsc_st_write(q, ent, k, &e) == DSC_OK, "%s", e.msg);
    free(ent);
    dsc_st_set_close(s);
}

static void expect_load_fail(dsc_t *t, const char *dir, dsc_status want, const char *needle) {
    dsc_model_t *m = NULL;
    dsc_err e = {0};
    dsc_status s = dsc_model_load(dir, &m, &e);
    T_CHECK(t, s == want && m == NULL, "%s: got %s (%s), expected %s", dir, dsc_status_str(s),
            e.msg, dsc_status_str(want));
    T_CHECK(t, s == DSC_OK || strstr(e.msg, needle), "%s: message \"%s\" lacks \"%s\"", dir,
            e.msg, needle);
    dsc_model_free(m);
}

static void test_bad_checkpoints(dsc_t *t) {
    char d[512], p[600], q[600];
    const char *victim = "model.layers.1.self_attn.kv_b_proj.weight";

    snprintf(d, sizeof d, "%s/ok", t->tmpdir);
    make_variant(t, d, victim, NONE);
    dsc_model_t *m = NULL;
    dsc_err e = {0};
    T_CHECK(t, dsc_model_load(d, &m, &e) == DSC_OK, "rewritten fixture: %s", e.msg);
    dsc_model_free(m);

    snprintf(d, sizeof d, "%s/missing", t->tmpdir);
    make_variant(t, d, victim, DROP);
    expect_load_fail(t, d, DSC_ERR_MISSING, victim);

    snprintf(d, sizeof d, "%s/shape", t->tmpdir);
    make_variant(t, d, victim, RESHAPE);
    expect_load_fail(t, d, DSC_ERR_SHAPE, victim);

    snprintf(d, sizeof d, "%s/extra", t->tmpdir);
    make_variant(t, d, victim, EXTRA);
    expect_load_fail(t, d, DSC_ERR_MISSING, "rotary_emb.stray");

    /* truncated weights file */
    snprintf(d, sizeof d, "%s/trunc", t->tmpdir);
    make_variant(t, d, victim, NONE);
    snprintf(p, sizeof p, "%s/model.safetensors", d);
    T_CHECK(t, truncate(p, 4096) == 0, "truncate");
    expect_load_fail(t, d, DSC_ERR_FORMAT, "model.safetensors");

    /* no config.json */
    snprintf(d, sizeof d, "%s/noconfig", t->tmpdir);
    make_variant(t, d, victim, NONE);
    snprintf(p, sizeof p, "%s/config.json", d);
    remove(p);
    expect_load_fail(t, d, DSC_ERR_IO, "config.json");

    /* malformed config.json */
    snprintf(d, sizeof d, "%s/badjson", t->tmpdir);
    make_variant(t, d, victim, NONE);
    snprintf(p, sizeof p, "%s/config.json", d);
    T_CHECK(t, t_write_file(p, "{\"model_type\": ", 15) == 0, "write");
    expect_load_fail(t, d, DSC_ERR_FORMAT, "config.json");

    /* config says V3.2 but the files have no indexer; then a bad index_topk */
    snprintf(d, sizeof d, "%s/v32", t->tmpdir);
    make_variant(t, d, victim, NONE);
    snprintf(p, sizeof p, "%s/config.json", d);
    char *cfg = t_read_file("tests/fixtures/v3_nointerleave/config.json", NULL);
    const char *mt = "\"model_type\": \"deepseek_v3\"";
    char *at = cfg ? strstr(cfg, mt) : NULL;
    T_CHECK(t, at != NULL, "fixture config has no model_type line");
    for (int topk = 4; at && topk >= 0; topk -= 4) {
        char buf[8192];
        snprintf(buf, sizeof buf, "%.*s\"model_type\": \"deepseek_v32\", \"index_n_heads\": 2, "
                 "\"index_head_dim\": 32, \"index_topk\": %d%s", (int)(at - cfg), cfg, topk,
                 at + strlen(mt));
        T_CHECK(t, t_write_file(p, buf, strlen(buf)) == 0, "write");
        if (topk) expect_load_fail(t, d, DSC_ERR_MISSING, "self_attn.indexer.");
        else expect_load_fail(t, d, DSC_ERR_CONFIG, "index_topk");
    }
    free(cfg);

    /* config.json that is a directory */
    snprintf(d, sizeof d, "%s/dirconf", t->tmpdir);
    snprintf(p, sizeof p, "mkdir -p '%s/config.json'", d);
    T_CHECK(t, system(p) == 0, "mkdir");
    expect_load_fail(t, d, DSC_ERR_IO, "not a regular file");

    /* missing directory */
    expect_load_fail(t, "tests/fixtures/does-not-exist", DSC_ERR_IO, "does-not-exist");

    /* sharded checkpoint with a shard gone */
    snprintf(d, sizeof d, "%s/shard", t->tmpdir);
    snprintf(p, sizeof p, "mkdir -p '%s'", d);
    T_CHECK(t, system(p) == 0, "mkdir");
    const char *keep[] = {"config.json", "model.safetensors.index.json",
                          "model-00001-of-00002.safetensors"};
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "tests/fixtures/v3/%s", keep[i]);
        snprintf(q, sizeof q, "%s/%s", d, keep[i]);
        T_CHECK(t, copy_file(p, q) == 0, "copy %s", p);
    }
    expect_load_fail(t, d, DSC_ERR_IO, "model-00002-of-00002.safetensors");
}

/* MTP layers in the files are bound as MTP modules (counted apart); their
   stored copies of the embedding / head are skipped and counted. */
static void test_mtp_skipped(dsc_t *t) {
    dsc_model_t *m = t_load_fixture(t, "v3");
    if (!m) return;
    dsc_model_info in;
    dsc_model_get_info(m, &in);
    T_CHECK(t, m->cfg.num_nextn_predict_layers == 1, "fixture v3 has one MTP layer");
    T_CHECK(t, in.n_mtp_modules == 1 && m->n_mtp == 1 && in.n_params_mtp > 0,
            "MTP module not bound: %lld modules, %lld params", (long long)in.n_mtp_modules,
            (long long)in.n_params_mtp);
    T_CHECK(t, in.latent_cache_values_per_token ==
                   m->cfg.num_hidden_layers * (m->cfg.kv_lora_rank + m->cfg.qk_rope_head_dim),
            "latent cache size");
    T_CHECK(t, in.n_params_active < in.n_params, "active < total for MoE");
    dsc_model_free(m);
}

const dsc_test_case dsc_tests_model[] = {
    {"parity_transformers", test_parity},
    {"incremental_equals_full", test_incremental},
    {"forward_bad_args", test_forward_args},
    {"moe_group_mask_inf", test_group_mask_inf},
    {"bad_checkpoints", test_bad_checkpoints},
    {"mtp_skipped", test_mtp_skipped},
    {NULL, NULL},
};
