/*
 * test_dsa.c - DeepSeek Sparse Attention against transformers'
 * DeepseekV32ForCausalLM (fixtures v32, v32_fp8: index_topk smaller than the
 * sequence, so selection drops keys) and against dsc's own dense path.
 *
 * Tolerances: logits 1e-4 absolute as for the other models (fp32 compute,
 * float64 reference); indexer scores 1e-5 relative to the row's largest
 * magnitude (fp32 dot products of D_I terms); selections exactly (the fixture
 * script keeps a 1e-4 relative gap at every top-k boundary).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "test.h"

static dsc_ctx_t *mkctx(dsc_t *t, dsc_model_t *m, int64_t n_ctx, int64_t n_batch,
                        dsc_index_cache_type ic) {
    dsc_ctx_params p = dsc_ctx_default_params();
    p.n_ctx = n_ctx;
    p.n_batch = n_batch;
    p.index_cache = ic;
    return t_new_ctx(t, m, &p);
}

/* Logits of the whole sequence in one call, in batches of n_batch. */
static float *logits_of(dsc_t *t, dsc_ctx_t *c, const int32_t *ids, int64_t n, int64_t V,
                        int64_t n_batch) {
    float *lg = malloc((size_t)(n * V) * sizeof *lg);
    dsc_err e = {0};
    for (int64_t i = 0; i < n; i += n_batch) {
        int64_t step = n - i < n_batch ? n - i : n_batch;
        T_CHECK(t, dsc_forward(c, ids + i, step, i, lg + i * V, &e) == DSC_OK, "%s", e.msg);
    }
    return lg;
}

static void test_parity(dsc_t *t) {
    const char *names[] = {"v32", "v32_fp8"};
    for (int f = 0; f < 2; f++) {
        dsc_model_t *m = t_load_fixture(t, names[f]);
        int64_t n = 0;
        int32_t *ids = t_fixture_ids(names[f], "ref_ids.i32", &n);
        char p[256];
        size_t len = 0;
        snprintf(p, sizeof p, "tests/fixtures/%s/ref_logits.f64", names[f]);
        double *ref = t_read_file(p, &len);
        if (!m || !ids || !ref) {
            T_CHECK(t, 0, "%s: fixture missing", names[f]);
            goto next;
        }
        int64_t V = m->cfg.vocab_size;
        T_CHECK(t, m->cfg.index_topk < n, "%s: index_topk must be below the sequence", names[f]);
        /* one call; and prefill + one token at a time (decode selects from
           the cached indexer keys) */
        for (int mode = 0; mode < 2; mode++) {
            dsc_ctx_t *c = mkctx(t, m, n, mode ? 1 : n, DSC_INDEX_CACHE_F32);
            if (!c) continue;
            float *lg = logits_of(t, c, ids, n, V, mode ? 1 : n);
            char what[64];
            snprintf(what, sizeof what, "%s %s", names[f], mode ? "token by token" : "one call");
            double d = t_close_f64(t, what, lg, ref, n * V, 1e-4, 0);
            printf("       %-28s max|diff| %.2e\n", what, d);
            free(lg);
            dsc_ctx_free(c);
        }
    next:
        free(ids);
        free(ref);
        dsc_model_free(m);
    }
}

/* Layer-0 indexer scores and selections against transformers. */
static void test_indexer(dsc_t *t) {
    dsc_model_t *m = t_load_fixture(t, "v32");
    int64_t n = 0, nsel = 0;
    int32_t *ids = t_fixture_ids("v32", "ref_ids.i32", &n);
    int32_t *want_sel = t_fixture_ids("v32", "indexer_topk.i32", &nsel);
    size_t len = 0;
    double *want = t_read_file("tests/fixtures/v32/indexer_ref.f64", &len);
    if (!m || !ids || !want || !want_sel || len != (size_t)(n * n) * 8) {
        T_CHECK(t, 0, "v32 indexer fixture missing or inconsistent");
        goto done;
    }
    int64_t K = m->cfg.index_topk;
    dsc_ctx_t *c = mkctx(t, m, n, n, DSC_INDEX_CACHE_F32);
    if (!c) goto done;
    float *sc = malloc((size_t)(n * n) * sizeof *sc);
    int32_t *sel = malloc((size_t)(n * K) * sizeof *sel);
    c->dbg_layer = 0;
    c->dbg_scores = sc;
    c->dbg_sel = sel;
    dsc_err e = {0};
    T_CHECK(t, dsc_forward(c, ids, n, 0, NULL, &e) == DSC_OK, "%s", e.msg);
    int64_t bad = 0, dropped = 0;
    for (int64_t q = 0; q < n; q++) {
        double mx = 0;
        for (int64_t s = 0; s <= q; s++) mx = fmax(mx, fabs(want[q * n + s]));
        for (int64_t s = 0; s < n; s++) {
            double w = want[q * n + s], g = sc[q * n + s];
            int masked = s > q;
            if (masked) {
                bad += !(isinf(g) && g < 0);
                continue;
            }
            if (fabs(g - w) > 1e-5 * (mx > 1 ? mx : 1)) {
                if (bad++ < 3)
                    T_CHECK(t, 0, "I(%lld, %lld) = %.9g, want %.9g", (long long)q, (long long)s,
                            (double)g, w);
            }
        }
        dropped += q + 1 > K;
    }
    T_CHECK(t, bad == 0, "%lld indexer scores differ", (long long)bad);
    T_CHECK(t, nsel == n * K && memcmp(sel, want_sel, (size_t)(n * K) * sizeof *sel) == 0,
            "layer-0 selections differ from transformers");
    printf("       indexer: %lld x %lld scores, %lld queries with keys dropped (top-%lld)\n",
           (long long)n, (long long)n, (long long)dropped, (long long)K);
    free(sc);
    free(sel);
    dsc_ctx_free(c);
done:
    free(ids);
    free(want_sel);
    free(want);
    dsc_model_free(m);
}

/* Sparse attention that keeps every visible key equals dense attention: the
   first index_topk positions run both ways (fp32 reassociation only). And
   the F32/BF16/FP8 key caches give the same rows there (selection keeps
   everything, whatever the key precision), finite logits everywhere. */
static void test_sparse_equals_dense(dsc_t *t) {
    dsc_model_t *m = t_load_fixture(t, "v32");
    int64_t n = 0;
    int32_t *ids = t_fixture_ids("v32", "ref_ids.i32", &n);
    if (!m || !ids) goto done;
    int64_t V = m->cfg.vocab_size, K = m->cfg.index_topk;
    dsc_ctx_t *dense = mkctx(t, m, n, n, DSC_INDEX_CACHE_F32);
    dsc_ctx_t *sparse = mkctx(t, m, n, n, DSC_INDEX_CACHE_F32);
    if (!dense || !sparse) goto done;
    sparse->force_sparse = 1;
    float *a = logits_of(t, dense, ids, K, V, K);
    float *b = logits_of(t, sparse, ids, K, V, K);
    t_close_f32(t, "sparse(all keys) vs dense", b, a, K * V, 1e-5, 1e-5);
    free(a);
    free(b);
    dsc_ctx_free(dense);
    dsc_ctx_free(sparse);

    dsc_ctx_t *c32 = mkctx(t, m, n, n, DSC_INDEX_CACHE_F32);
    float *ref = c32 ? logits_of(t, c32, ids, n, V, n) : NULL;
    for (int ic = DSC_INDEX_CACHE_BF16; ref && ic <= DSC_INDEX_CACHE_FP8; ic++) {
        dsc_ctx_t *c = mkctx(t, m, n, n, (dsc_index_cache_type)ic);
        if (!c) continue;
        float *lg = logits_of(t, c, ids, n, V, n);
        t_close_f32(t, ic == DSC_INDEX_CACHE_BF16 ? "bf16 index cache, rows < k"
                                                   : "fp8 index cache, rows < k",
                    lg, ref, K * V, 1e-5, 1e-5);
        int finite = 1;
        for (int64_t i = 0; i < n * V; i++) finite &= isfinite(lg[i]);
        T_CHECK(t, finite, "non-finite logits with index cache type %d", ic);
        free(lg);
        dsc_ctx_free(c);
    }
    free(ref);
    dsc_ctx_free(c32);
done:
    free(ids);
    dsc_model_free(m);
}

/* Greedy ids equal transformers' generate (min_new_tokens = 24). */
static void test_greedy(dsc_t *t) {
    dsc_model_t *m = t_load_fixture(t, "v32");
    int64_t np = 0, ng = 0;
    int32_t *prompt = t_fixture_ids("v32", "gen_prompt.i32", &np);
    int32_t *want = t_fixture_ids("v32", "gen_ids.i32", &ng);
    if (!m || !prompt || !want || ng != 24) {
        T_CHECK(t, 0, "v32 generation fixture missing");
        goto done;
    }
    dsc_ctx_t *c = mkctx(t, m, np + 30, 512, DSC_INDEX_CACHE_F32);
    dsc_sampler_params sp = dsc_sampler_default_params();
    sp.temp = 0;
    sp.ignore_eos = 1;
    sp.eos_id = (int32_t)m->cfg.eos_token_id;
    dsc_sampler_t *s = NULL;
    dsc_err e = {0};
    T_CHECK(t, dsc_sampler_new(&sp, m->cfg.vocab_size, &s, &e) == DSC_OK, "%s", e.msg);
    int32_t got[32];
    int64_t k = 0;
    dsc_gen_stats st;
    if (c && s) {
        T_CHECK(t, dsc_generate(c, s, prompt, np, 24, sp.eos_id, NULL, NULL, &st, &e) == DSC_OK,
                "%s", e.msg);
        /* the generated ids are the cached tokens after the prompt, plus the
           pending last one */
        const int32_t *tok = dsc_ctx_tokens(c);
        for (int64_t i = np; i < dsc_ctx_n_past(c) && k < 32; i++) got[k++] = tok[i];
        got[k++] = c->pending;
        T_CHECK(t, k == 24 && memcmp(got, want, 24 * sizeof *got) == 0,
                "greedy ids differ from transformers (first: got %d want %d)", got[0], want[0]);
    }
    dsc_sampler_free(s);
    dsc_ctx_free(c);
done:
    free(prompt);
    free(want);
    dsc_model_free(m);
}

/* The official FP8 scoring pieces against closed forms. */
static void test_fp8_scoring_parts(dsc_t *t) {
    enum { N = 128 };
    float e[N] = {0}, x[N], y[N], hx[N], hy[N];
    e[1] = 1.0f; /* Sylvester order: H e_1 = column 1 = (+1, -1, +1, ...) / sqrt(N) */
    dsc_dsa_hadamard(e, N);
    int ok = 1;
    for (int i = 0; i < N; i++) ok &= fabsf(e[i] - (i % 2 ? -1.0f : 1.0f) / sqrtf(N)) < 1e-7f;
    T_CHECK(t, ok, "H e_1 is not the alternating column");
    t_rng rng = {5};
    double dxy = 0, dh = 0;
    for (int i = 0; i < N; i++) {
        x[i] = hx[i] = t_rng_normal(&rng);
        y[i] = hy[i] = t_rng_normal(&rng);
        dxy += (double)x[i] * y[i];
    }
    dsc_dsa_hadamard(hx, N);
    dsc_dsa_hadamard(hy, N);
    for (int i = 0; i < N; i++) dh += (double)hx[i] * hy[i];
    /* orthonormal: dot products kept (fp32 butterflies: ~log2(N) roundings) */
    T_CHECK(t, fabs(dh - dxy) < 1e-4 * (1 + fabs(dxy)), "q.k changed: %g vs %g", dh, dxy);
    dsc_dsa_hadamard(hx, N); /* H is its own inverse */
    t_close_f32(t, "H(H(x))", hx, x, N, 1e-5, 1e-5);

    float v[4] = {0.5f, -3.0f, 1.0f, 2.0f};
    float s = dsc_dsa_fp8_scale(v, 4, 0), s8 = dsc_dsa_fp8_scale(v, 4, 1);
    T_CHECK(t, s == 3.0f / 448.0f, "scale %g, want amax/448", (double)s);
    T_CHECK(t, s8 == 0.0078125f, "ue8m0 scale %g, want 2^-7 (the power of two above 3/448)",
            (double)s8);
    float z[2] = {0, 0};
    T_CHECK(t, dsc_dsa_fp8_scale(z, 2, 0) == 1e-4f / 448.0f, "amax floor 1e-4");

    /* the option needs a power-of-two index_head_dim (v32 has 24) */
    dsc_model_t *m = t_load_fixture(t, "v32");
    if (!m) return;
    dsc_ctx_params p = dsc_ctx_default_params();
    p.n_ctx = 8;
    p.index_fp8 = 1;
    dsc_ctx_t *c = NULL;
    dsc_err er = {0};
    T_CHECK(t, dsc_ctx_new(m, &p, &c, &er) == DSC_ERR_ARG && strstr(er.msg, "power of two"),
            "index_fp8 with D_I 24: %s", er.msg);
    dsc_ctx_free(c);
    dsc_model_free(m);
}

const dsc_test_case dsc_tests_dsa[] = {
    {"fp8_scoring_parts", test_fp8_scoring_parts},
    {"parity_transformers", test_parity},
    {"indexer_scores_and_topk", test_indexer},
    {"sparse_equals_dense", test_sparse_equals_dense},
    {"greedy_matches_transformers", test_greedy},
    {NULL, NULL},
};
