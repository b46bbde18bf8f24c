/*
 * test_sampler.c - sampling against closed forms: greedy and its tie rule,
 * the repetition penalty's exact arithmetic, EOS masking, seeds, and the
 * sampled frequencies of temperature / top-k / top-p / min-p against the
 * distributions they define (chi-square tests at significance 0.001 with a
 * fixed seed, so a pass is deterministic and a wrong rule fails by a wide
 * margin).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dsc.h"
#include "gen/sample.h"
#include "test.h"

static dsc_sampler_t *mk(dsc_t *t, dsc_sampler_params p, int64_t V) {
    dsc_sampler_t *s = NULL;
    dsc_err e = {0};
    T_CHECK(t, dsc_sampler_new(&p, V, &s, &e) == DSC_OK, "%s", e.msg);
    return s;
}

static dsc_sampler_params plain(void) {
    dsc_sampler_params p = dsc_sampler_default_params();
    p.temp = 1.0f;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.seed = 1234;
    return p;
}

static void test_greedy(dsc_t *t) {
    dsc_sampler_params p = plain();
    p.temp = 0;
    dsc_sampler_t *s = mk(t, p, 5);
    float a[5] = {0.5f, 2.0f, -1.0f, 2.0f, 1.0f};
    T_CHECK(t, dsc_sampler_sample(s, a, NULL, 0) == 1, "argmax tie goes to the lower id");
    float b[5] = {NAN, 0.1f, 0.3f, NAN, 0.2f};
    T_CHECK(t, dsc_sampler_sample(s, b, NULL, 0) == 2, "NaN never wins");
    dsc_sampler_free(s);

    p.ignore_eos = 1;
    p.eos_id = 1;
    s = mk(t, p, 5);
    float c[5] = {0.5f, 9.0f, -1.0f, 2.0f, 1.0f};
    T_CHECK(t, dsc_sampler_sample(s, c, NULL, 0) == 3, "EOS masked with ignore_eos");
    T_CHECK(t, isinf(c[1]) && c[1] < 0, "EOS logit is -inf");
    dsc_sampler_free(s);
}

/* penalty 2 on ids {0, 1} (0 twice: once only): 2 -> 1, -2 -> -4 */
static void test_repeat_penalty(dsc_t *t) {
    dsc_sampler_params p = plain();
    p.temp = 0;
    p.repeat_penalty = 2.0f;
    p.repeat_last_n = 3;
    dsc_sampler_t *s = mk(t, p, 4);
    float l[4] = {2.0f, -2.0f, 1.5f, 0.25f};
    int32_t hist[5] = {2, 3, 0, 1, 0}; /* last 3: 0, 1, 0 */
    int32_t id = dsc_sampler_sample(s, l, hist, 5);
    T_CHECK(t, l[0] == 1.0f && l[1] == -4.0f && l[2] == 1.5f && l[3] == 0.25f,
            "penalised logits %g %g %g %g", (double)l[0], (double)l[1], (double)l[2],
            (double)l[3]);
    T_CHECK(t, id == 2, "greedy after penalty picks 2, got %d", id);
    dsc_sampler_free(s);
}

/* Chi-square of n draws against probabilities q (zero-probability ids must
   never be drawn). Critical values at 0.001 for df 1..4. */
static void check_dist(dsc_t *t, const char *what, dsc_sampler_params p, const float *logits,
                       const double *q, int V, int n) {
    static const double crit[] = {0, 10.83, 13.82, 16.27, 18.47};
    dsc_sampler_t *s = mk(t, p, V);
    if (!s) return;
    int64_t cnt[8] = {0};
    float l[8];
    for (int i = 0; i < n; i++) {
        memcpy(l, logits, (size_t)V * sizeof *l);
        int32_t id = dsc_sampler_sample(s, l, NULL, 0);
        if (id >= 0 && id < V) cnt[id]++;
    }
    double chi = 0;
    int df = -1;
    for (int i = 0; i < V; i++) {
        if (q[i] == 0) {
            T_CHECK(t, cnt[i] == 0, "%s: id %d has probability 0 but was drawn %lld times", what,
                    i, (long long)cnt[i]);
            continue;
        }
        double e = q[i] * n;
        chi += (cnt[i] - e) * (cnt[i] - e) / e;
        df++;
    }
    T_CHECK(t, df >= 1 && df <= 4 && chi < crit[df], "%s: chi-square %.2f >= %.2f (df %d)", what,
            chi, df >= 1 && df <= 4 ? crit[df] : 0.0, df);
    dsc_sampler_free(s);
}

static void test_distributions(dsc_t *t) {
    /* probabilities 0.5, 0.3, 0.15, 0.05 as logits */
    const double pr[4] = {0.5, 0.3, 0.15, 0.05};
    float lg[4];
    for (int i = 0; i < 4; i++) lg[i] = (float)log(pr[i]);
    enum { N = 100000 };

    check_dist(t, "temp 1", plain(), lg, pr, 4, N);

    dsc_sampler_params p = plain();
    p.temp = 0.5f; /* p^2 renormalised */
    double z = 0, q2[4];
    for (int i = 0; i < 4; i++) z += pr[i] * pr[i];
    for (int i = 0; i < 4; i++) q2[i] = pr[i] * pr[i] / z;
    check_dist(t, "temp 0.5", p, lg, q2, 4, N);

    p = plain();
    p.top_k = 2;
    const double qk[4] = {0.625, 0.375, 0, 0};
    check_dist(t, "top-k 2", p, lg, qk, 4, N);

    p = plain();
    p.top_p = 0.9f; /* 0.5 + 0.3 + 0.15 = 0.95 >= 0.9: keep three */
    const double qp[4] = {0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0};
    check_dist(t, "top-p 0.9", p, lg, qp, 4, N);

    p = plain();
    p.min_p = 0.2f; /* keep p >= 0.1: the first three */
    check_dist(t, "min-p 0.2", p, lg, qp, 4, N);
}

static void test_seed(dsc_t *t) {
    float lg[16];
    for (int i = 0; i < 16; i++) lg[i] = (float)(i % 5) * 0.3f;
    int32_t a[64], b[64], c[64];
    dsc_sampler_params p = plain();
    for (int run = 0; run < 3; run++) {
        p.seed = run == 2 ? 99 : 7;
        dsc_sampler_t *s = mk(t, p, 16);
        if (!s) return;
        for (int i = 0; i < 64; i++) {
            float l[16];
            memcpy(l, lg, sizeof l);
            (run == 0 ? a : run == 1 ? b : c)[i] = dsc_sampler_sample(s, l, NULL, 0);
        }
        dsc_sampler_free(s);
    }
    T_CHECK(t, memcmp(a, b, sizeof a) == 0, "same seed gave different ids");
    T_CHECK(t, memcmp(a, c, sizeof a) != 0, "different seeds gave the same 64 ids");
}

static void test_bad_params(dsc_t *t) {
    dsc_sampler_params p = plain();
    dsc_sampler_t *s = NULL;
    dsc_err e = {0};
    p.repeat_penalty = 0;
    T_CHECK(t, dsc_sampler_new(&p, 10, &s, &e) == DSC_ERR_ARG && !s, "penalty 0 accepted");
    p = plain();
    T_CHECK(t, dsc_sampler_new(&p, 0, &s, &e) == DSC_ERR_ARG && !s, "empty vocab accepted");
}

/* Brute force: all V ids sorted by (tempered logit desc, id asc) in
   double, then the top-p and min-p cuts; the sampler's distribution must
   hold the same ids in the same order with the same probabilities. */
typedef struct {
    double z;
    int32_t id;
} zid;

static int zid_cmp(const void *a, const void *b) {
    const zid *x = a, *y = b;
    if (x->z != y->z) return x->z > y->z ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

/* Large vocabularies without top-k take the sorted-prefix path of
   sample.c: the distribution equals the full sort's (ids exactly,
   probabilities within 1e-9 relative: the same double sums in another
   order). */
static void test_large_vocab_cuts(dsc_t *t) {
    enum { V = 5000 };
    static float lg[V], work[V];
    static zid ref[V];
    int32_t *ids = malloc(V * sizeof *ids);
    float *pr = malloc(V * sizeof *pr);
    t_rng r = {77};
    for (int i = 0; i < V; i++) lg[i] = t_rng_normal(&r) * 3.0f;
    /* flat (temp 3, 5) and peaked cases: the cut lands past the first
       sorted prefix of 256, so the prefix grows */
    const float tps[4] = {0.9f, 1.0f, 0.5f, 0.999f}, mps[4] = {0.0f, 0.05f, 0.01f, 0.0f};
    const float temps[4] = {0.8f, 0.8f, 3.0f, 5.0f};
    for (int c = 0; c < 4 && ids && pr; c++) {
        dsc_sampler_params p = plain();
        p.temp = temps[c];
        p.top_p = tps[c];
        p.min_p = mps[c];
        dsc_sampler_t *s = mk(t, p, V);
        if (!s) break;
        memcpy(work, lg, sizeof lg);
        int64_t n = dsc_sampler_dist(s, work, NULL, 0, ids, pr);
        dsc_sampler_free(s);
        for (int i = 0; i < V; i++) ref[i] = (zid){(double)(lg[i] / p.temp), i};
        qsort(ref, V, sizeof *ref, zid_cmp);
        double mx = ref[0].z, sum = 0.0, acc = 0.0;
        for (int i = 0; i < V; i++) sum += exp(ref[i].z - mx);
        int64_t keep = V;
        if (p.top_p < 1.0f)
            for (int i = 0; i < V; i++) {
                acc += exp(ref[i].z - mx) / sum;
                if (acc >= p.top_p) {
                    keep = i + 1;
                    break;
                }
            }
        if (p.min_p > 0.0f) {
            int64_t k = 1;
            while (k < keep && ref[k].z - mx >= log((double)p.min_p)) k++;
            keep = k;
        }
        double ks = 0.0;
        for (int64_t i = 0; i < keep; i++) ks += exp(ref[i].z - mx);
        T_CHECK(t, n == keep, "top-p %g min-p %g: %lld candidates, full sort keeps %lld",
                (double)p.top_p, (double)p.min_p, (long long)n, (long long)keep);
        if (getenv("DSC_TEST_VERBOSE"))
            fprintf(stderr, "    temp %g top-p %g min-p %g: %lld candidates\n", (double)p.temp,
                    (double)p.top_p, (double)p.min_p, (long long)n);
        for (int64_t i = 0; i < n && i < keep; i++) {
            double want = exp(ref[i].z - mx) / ks;
            if (ids[i] != ref[i].id || fabs(pr[i] - want) > 1e-6 * want + 1e-9) {
                T_CHECK(t, 0, "top-p %g min-p %g: candidate %lld is id %d p %.9g, want %d %.9g",
                        (double)p.top_p, (double)p.min_p, (long long)i, ids[i], pr[i],
                        ref[i].id, want);
                break;
            }
        }
    }
    free(ids);
    free(pr);
}

const dsc_test_case dsc_tests_sampler[] = {
    {"large_vocab_cuts", test_large_vocab_cuts},
    {"greedy_and_eos", test_greedy},
    {"repeat_penalty", test_repeat_penalty},
    {"distributions_chi2", test_distributions},
    {"seed", test_seed},
    {"bad_params", test_bad_params},
    {NULL, NULL},
};
