/*
 * test_generate.c - the generation loop: greedy ids identical to
 * transformers' generate (fixtures gen_prompt.i32 / gen_ids.i32, made with
 * min_new_tokens = max_new_tokens = 24, i.e. EOS masked like --ignore-eos),
 * the pending-token continuation that chat relies on, a full context and a
 * prompt that does not fit.
 */
#include <stdlib.h>
#include <string.h>

#include "dsc.h"
#include "test.h"

typedef struct {
    int32_t *ids;
    int64_t n;
} idbuf;

static int collect(void *user, int32_t id) {
    idbuf *b = user;
    b->ids[b->n++] = id;
    return 0;
}

static dsc_ctx_t *ctx_for(dsc_t *t, dsc_model_t *m, int64_t n_ctx, int64_t n_batch,
                          dsc_attn_mode mode) {
    dsc_ctx_params p = dsc_ctx_default_params();
    p.n_ctx = n_ctx;
    p.n_batch = n_batch;
    p.attn = mode;
    return t_new_ctx(t, m, &p);
}

static dsc_sampler_t *greedy(dsc_t *t, const dsc_model_t *m) {
    dsc_sampler_params sp = dsc_sampler_default_params();
    sp.temp = 0;
    sp.ignore_eos = 1;
    sp.eos_id = (int32_t)dsc_model_config(m)->eos_token_id;
    dsc_sampler_t *s = NULL;
    dsc_err e = {0};
    T_CHECK(t, dsc_sampler_new(&sp, dsc_model_config(m)->vocab_size, &s, &e) == DSC_OK, "%s",
            e.msg);
    return s;
}

/* Greedy ids equal transformers' generate, token for token, in both MLA
   forms and with a prompt split over several prefill chunks. */
static void test_greedy_matches_hf(dsc_t *t) {
    const char *names[] = {"v2_lite", "v3", "v3_fp8", "v3_tok"};
    for (int f = 0; f < 4; f++) {
        char p[256];
        size_t np = 0, ng = 0;
        snprintf(p, sizeof p, "tests/fixtures/%s/gen_prompt.i32", names[f]);
        int32_t *prompt = t_read_file(p, &np);
        snprintf(p, sizeof p, "tests/fixtures/%s/gen_ids.i32", names[f]);
        int32_t *want = t_read_file(p, &ng);
        dsc_model_t *m = t_load_fixture(t, names[f]);
        T_CHECK(t, prompt && want && ng / 4 == 24, "%s: generation fixture missing", names[f]);
        if (!prompt || !want || !m) goto next;
        for (int mode = 0; mode < 2; mode++) {
            int64_t n_prompt = (int64_t)(np / 4);
            dsc_ctx_t *c = ctx_for(t, m, n_prompt + 30, mode ? 3 : 512, (dsc_attn_mode)mode);
            dsc_sampler_t *s = greedy(t, m);
            int32_t got[32];
            idbuf b = {got, 0};
            dsc_gen_stats st;
            dsc_err e = {0};
            dsc_status rc = dsc_generate(c, s, prompt, n_prompt, 24,
                                         (int32_t)dsc_model_config(m)->eos_token_id, collect, &b,
                                         &st, &e);
            T_CHECK(t, rc == DSC_OK, "%s: %s", names[f], e.msg);
            T_CHECK(t, b.n == 24 && st.stop == DSC_STOP_LENGTH, "%s: %lld ids, stop %d",
                    names[f], (long long)b.n, (int)st.stop);
            int first_bad = -1;
            for (int i = 0; i < 24 && i < b.n; i++)
                if (got[i] != want[i] && first_bad < 0) first_bad = i;
            T_CHECK(t, first_bad < 0, "%s %s: id %d differs: got %d want %d", names[f],
                    mode ? "naive" : "absorbed", first_bad, first_bad >= 0 ? got[first_bad] : 0,
                    first_bad >= 0 ? want[first_bad] : 0);
            dsc_sampler_free(s);
            dsc_ctx_free(c);
        }
    next:
        free(prompt);
        free(want);
        dsc_model_free(m);
    }
}

/* Two calls (the second appending a new prompt behind a pending id) give the
   same ids as one context fed the whole history at once: no re-prefill, no
   lost or doubled token. */
static void test_continuation(dsc_t *t) {
    dsc_model_t *m = t_load_fixture(t, "v3_bf16");
    if (!m) return;
    int32_t a[4] = {3, 14, 15, 9}, b2[3] = {26, 5, 35};
    int32_t g1[8], g2[8], h[8];
    idbuf b = {g1, 0};
    dsc_err e = {0};
    dsc_ctx_t *c = ctx_for(t, m, 64, 8, DSC_ATTN_ABSORBED);
    dsc_sampler_t *s = greedy(t, m);
    T_CHECK(t, dsc_generate(c, s, a, 4, 5, -1, collect, &b, NULL, &e) == DSC_OK, "%s", e.msg);
    T_CHECK(t, dsc_ctx_n_past(c) == 8, "4 prompt + 4 fed, the 5th pending: n_past %lld",
            (long long)dsc_ctx_n_past(c));
    b = (idbuf){g2, 0};
    T_CHECK(t, dsc_generate(c, s, b2, 3, 5, -1, collect, &b, NULL, &e) == DSC_OK, "%s", e.msg);

    /* reference: one prompt = a + g1 + b2 */
    int32_t all[12];
    memcpy(all, a, sizeof a);
    memcpy(all + 4, g1, 5 * sizeof *g1);
    memcpy(all + 9, b2, sizeof b2);
    dsc_ctx_t *r = ctx_for(t, m, 64, 8, DSC_ATTN_ABSORBED);
    b = (idbuf){h, 0};
    T_CHECK(t, dsc_generate(r, s, all, 12, 5, -1, collect, &b, NULL, &e) == DSC_OK, "%s", e.msg);
    T_CHECK(t, memcmp(g2, h, 5 * sizeof *h) == 0, "continued generation differs from a fresh "
            "prefill of the same history");
    T_CHECK(t, memcmp(dsc_ctx_tokens(c), dsc_ctx_tokens(r), 16 * sizeof(int32_t)) == 0,
            "cached token history differs");
    dsc_ctx_free(r);
    dsc_ctx_free(c);
    dsc_sampler_free(s);
    dsc_model_free(m);
}

static void test_context_limits(dsc_t *t) {
    dsc_model_t *m = t_load_fixture(t, "v3");
    if (!m) return;
    dsc_ctx_t *c = ctx_for(t, m, 12, 4, DSC_ATTN_ABSORBED);
    dsc_sampler_t *s = greedy(t, m);
    int32_t prompt[13] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13};
    int32_t out[32];
    idbuf b = {out, 0};
    dsc_gen_stats st;
    dsc_err e = {0};
    /* 13 tokens never fit 12 positions: refused before anything is fed */
    T_CHECK(t, dsc_generate(c, s, prompt, 13, 4, -1, collect, &b, &st, &e) == DSC_ERR_ARG &&
                   strstr(e.msg, "does not fit"), "long prompt: %s", e.msg);
    T_CHECK(t, dsc_ctx_n_past(c) == 0 && b.n == 0, "a refused prompt changed the context");
    /* 8 fit; generation stops cleanly when the 12 positions are used: the
       last id sampled needs no position of its own */
    T_CHECK(t, dsc_generate(c, s, prompt, 8, -1, -1, collect, &b, &st, &e) == DSC_OK, "%s",
            e.msg);
    T_CHECK(t, st.stop == DSC_STOP_CONTEXT && b.n == 5 && dsc_ctx_n_past(c) == 12,
            "stop %d after %lld ids, n_past %lld", (int)st.stop, (long long)b.n,
            (long long)dsc_ctx_n_past(c));
    T_CHECK(t, dsc_generate(c, s, prompt, 1, 1, -1, collect, &b, &st, &e) == DSC_ERR_ARG,
            "a full context accepted more");
    dsc_ctx_reset(c);
    T_CHECK(t, dsc_generate(c, s, prompt, 2, 1, -1, NULL, NULL, &st, &e) == DSC_OK,
            "after reset: %s", e.msg);

    /* a gap in the cache, a bad id in a later chunk, a sampler of another
       vocabulary: refused, nothing fed */
    dsc_ctx_reset(c);
    T_CHECK(t, dsc_forward(c, prompt, 1, 3, NULL, &e) == DSC_ERR_ARG && strstr(e.msg, "gap"),
            "a forward past n_past was accepted: %s", e.msg);
    int32_t badp[6] = {1, 2, 3, 4, 5, 1 << 30};
    T_CHECK(t, dsc_generate(c, s, badp, 6, 1, -1, NULL, NULL, &st, &e) == DSC_ERR_ARG &&
                   strstr(e.msg, "index 5") && dsc_ctx_n_past(c) == 0,
            "bad id in the last chunk: %s (n_past %lld)", e.msg, (long long)dsc_ctx_n_past(c));
    dsc_sampler_params sp = dsc_sampler_default_params();
    dsc_sampler_t *small = NULL;
    T_CHECK(t, dsc_sampler_new(&sp, 7, &small, &e) == DSC_OK, "%s", e.msg);
    T_CHECK(t, dsc_generate(c, small, prompt, 2, 1, -1, NULL, NULL, &st, &e) == DSC_ERR_ARG,
            "a sampler for 7 ids was accepted");
    dsc_sampler_free(small);
    /* an empty prompt continues from the cache */
    T_CHECK(t, dsc_forward(c, prompt, 3, 0, NULL, &e) == DSC_OK, "%s", e.msg);
    T_CHECK(t, dsc_generate(c, s, NULL, 0, 2, -1, NULL, NULL, &st, &e) == DSC_OK && st.n_gen == 2,
            "empty prompt after a forward: %s", e.msg);
    dsc_sampler_free(s);
    dsc_ctx_free(c);
    dsc_model_free(m);
}

const dsc_test_case dsc_tests_generate[] = {
    {"greedy_matches_transformers", test_greedy_matches_hf},
    {"continuation_keeps_cache", test_continuation},
    {"context_limits", test_context_limits},
    {NULL, NULL},
};
