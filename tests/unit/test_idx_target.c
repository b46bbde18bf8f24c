/*
 * test_idx_target.c - the fast indexer-target kernels (src/train/
 * idx_target.h) against fp64 references, random data with fixed seeds,
 * n = 1, 63, 64, 65, 200 (across the 64-query tile):
 *  - attn: lse and the head-summed P (separately and fused) against a brute-force fp64 version of
 *    attn_dsa.c's double loops written here, heads read in place through
 *    padded strides (ldq > H dqk, ldk > dqk, kstride > n ldk), P first
 *    filled with NaN (every entry must be written, s > t exactly 0);
 *  - kl: loss and dI against dsc_op_idx_kl_f64, dense causal rows and a
 *    sparse-style mask (any pattern of -inf, rows with none or one
 *    visible entry, rows with P = 0), NaN in P where not visible, dI
 *    started from random values (-0 where not visible: those must keep
 *    their bits), NULL dI;
 *  - recall: against dsc_op_idx_recall_f64 (and _f32), including heavy ties
 *    in I and P (values on a coarse grid, +0 and -0), constant rows, and
 *    k = 1 .. past the row length;
 *  - every kernel gives the same bits at 1 and 2 threads.
 * DSC_TEST_VERBOSE=1 prints the measured errors.
 *
 * Tolerances (eps = 6e-8, fp32):
 *  LSE_TOL 1e-5 absolute: lse = mx + log(sum exp) with fp32 scores, whose
 *    error is ~eps * scale * sum_c |q_c k_c| (~1e-6 here, q, k ~ N(0, 1.5^2),
 *    dqk = 24) plus the 2-ulp exps summed in double (2.4e-7 relative in the
 *    sum, the same absolute in lse). Measured <= 2.3e-6 (n = 200).
 *  P_TOL 1e-5 of max|P| absolute + 1e-5 relative: each head's probability
 *    carries the score error above (relative, ~1e-6) plus the exp's 2 ulp,
 *    and H = 3 fp32 additions. Measured <= 8.9e-7 of max|P|
 *    (fused: <= 3e-7).
 *  KL_TOL 1e-6 relative for the loss: every sum is double; the per-row
 *    error is that of lse (2 ulp exps, ~2e-7 absolute), the log of P is
 *    double. Measured <= 8.4e-10 relative.
 *  GRAD_TOL 1e-5 of max|gradient| absolute + 1e-5 relative, the gradient
 *    alone (from dI = 0): q = exp(I - lse) in fp32 is off by
 *    ~eps |I - lse| + 2 ulp relative, the rest is double. Measured
 *    <= 7e-8 of max|gradient|.
 *    Added into a random start ~N(0, 1): GRAD_ATOL (1e-5 of max|gradient|)
 *    + GRAD_RTOL 1e-6 of |start + gradient| (the fp32 add costs 0.5 ulp
 *    of it); dropping the start, or the gradient, is an O(1) error.
 *  RECALL_TOL 1e-12 relative: the same selection on the same fp32 values
 *    as the reference (exact), only the double sums run in another order.
 *    Measured: 0 (bitwise equal) on every case here.
 */
#include <stdlib.h>
#include <string.h>

#include "test.h"
#include "train/idx_ops.h"
#include "kernels/kernels.h"
#include "train/idx_target.h"

#define LSE_TOL 1e-5
#define P_TOL 1e-5
#define KL_TOL 1e-6
#define GRAD_ATOL 1e-5
#define GRAD_RTOL 1e-6
#define GRAD_TOL 1e-5
#define RECALL_TOL 1e-12

static const int64_t sizes[] = {1, 63, 64, 65, 200};
#define NSIZES ((int)(sizeof sizes / sizeof sizes[0]))

static int verbose(void) { return getenv("DSC_TEST_VERBOSE") != NULL; }

static double maxabs(const double *x, int64_t n) {
    double m = 0;
    for (int64_t i = 0; i < n; i++) m = fabs(x[i]) > m ? fabs(x[i]) : m;
    return m;
}

static int same_bits(const void *a, const void *b, size_t bytes) { return !memcmp(a, b, bytes); }

/* ---- attention lse and target ---- */

static void attn_case(dsc_t *t, int64_t n, uint64_t seed) {
    t_pool pl = {0};
    t_rng r = {seed};
    const int64_t H = 3, dqk = 24;
    dsc_idxt_dims d = {n, H, dqk, H * dqk + 5, dqk + 3, n * (dqk + 3) + 7};
    float scale = 0.3f;
    float *Q = t_to_f32(&pl, t_rnd(&pl, &r, n * d.ldq, 1.5), n * d.ldq);
    float *K = t_to_f32(&pl, t_rnd(&pl, &r, H * d.kstride, 1.5), H * d.kstride);
    /* fp64 reference: as attn_dsa.c, every dot and exp in double */
    double *lse_ref = t_dalloc(&pl, H * n), *P_ref = t_dalloc(&pl, n * n);
    double *dots = t_dalloc(&pl, n), *Pf_ref = t_dalloc(&pl, n * n);
    float *lse32 = t_falloc(&pl, H * n);
    for (int64_t h = 0; h < H; h++)
        for (int64_t i = 0; i < n; i++) {
            const float *q = Q + i * d.ldq + h * dqk;
            double mx = -INFINITY, sum = 0;
            for (int64_t s = 0; s <= i; s++) {
                const float *k = K + h * d.kstride + s * d.ldk;
                double dot = 0;
                for (int64_t c = 0; c < dqk; c++) dot += (double)q[c] * k[c];
                dots[s] = (double)scale * dot;
                mx = dots[s] > mx ? dots[s] : mx;
            }
            for (int64_t s = 0; s <= i; s++) sum += exp(dots[s] - mx);
            lse_ref[h * n + i] = mx + log(sum);
            lse32[h * n + i] = (float)lse_ref[h * n + i];
            /* the target from the fp32 lse the kernel is given */
            for (int64_t s = 0; s <= i; s++) {
                P_ref[i * n + s] += exp(dots[s] - (double)lse32[h * n + i]);
                Pf_ref[i * n + s] += exp(dots[s] - lse_ref[h * n + i]); /* fused: exact */
            }
        }
    int64_t wsz = dsc_idxt_attn_scratch(&d, 2);
    float *ws = t_falloc(&pl, wsz);
    float *lse1 = t_falloc(&pl, H * n), *lse2 = t_falloc(&pl, H * n);
    float *P1 = t_falloc(&pl, n * n), *P2 = t_falloc(&pl, n * n);
    for (int64_t i = 0; i < n * n; i++) P1[i] = P2[i] = NAN;
    dsc_idxt_attn_lse(lse1, Q, K, &d, scale, 1, ws);
    dsc_idxt_attn_lse(lse2, Q, K, &d, scale, 2, ws);
    dsc_idxt_attn_target(P1, Q, K, lse32, &d, scale, 1, ws);
    dsc_idxt_attn_target(P2, Q, K, lse32, &d, scale, 2, ws);
    float *lsef1 = t_falloc(&pl, H * n), *lsef2 = t_falloc(&pl, H * n);
    float *Pf1 = t_falloc(&pl, n * n), *Pf2 = t_falloc(&pl, n * n);
    for (int64_t i = 0; i < n * n; i++) Pf1[i] = Pf2[i] = NAN;
    dsc_idxt_attn_lse_target(lsef1, Pf1, Q, K, &d, scale, 1, ws);
    dsc_idxt_attn_lse_target(lsef2, Pf2, Q, K, &d, scale, 2, ws);

    double dl = t_close_f64(t, "lse", lse1, lse_ref, H * n, LSE_TOL, 0);
    double pm = maxabs(P_ref, n * n);
    double dp = t_close_f64(t, "P", P1, P_ref, n * n, P_TOL * pm, P_TOL);
    double pfm = maxabs(Pf_ref, n * n);
    double dpf = t_close_f64(t, "P fused", Pf1, Pf_ref, n * n, P_TOL * pfm, P_TOL);
    T_CHECK(t, same_bits(lse1, lsef1, (size_t)(H * n) * sizeof *lse1), "fused lse differs");
    int64_t nonzero = 0;
    for (int64_t i = 0; i < n; i++)
        for (int64_t s = i + 1; s < n; s++)
            nonzero += !(P1[i * n + s] == 0.0f) + !(Pf1[i * n + s] == 0.0f);
    T_CHECK(t, nonzero == 0, "n=%lld: %lld entries s > t not 0", (long long)n, (long long)nonzero);
    T_CHECK(t, same_bits(lse1, lse2, (size_t)(H * n) * sizeof *lse1), "lse differs at 2 threads");
    T_CHECK(t, same_bits(P1, P2, (size_t)(n * n) * sizeof *P1), "P differs at 2 threads");
    T_CHECK(t, same_bits(lsef1, lsef2, (size_t)(H * n) * sizeof *lsef1) &&
                   same_bits(Pf1, Pf2, (size_t)(n * n) * sizeof *Pf1),
            "fused lse / P differ at 2 threads");
    if (verbose())
        printf("      attn n=%-4lld max|dlse| %.2e  max|dP|/max|P| %.2e  fused %.2e\n",
               (long long)n, dl, dp / pm, dpf / pfm);
    t_pool_free(&pl);
}

static void test_attn(dsc_t *t) {
    for (int i = 0; i < NSIZES; i++) attn_case(t, sizes[i], 100 + (uint64_t)i);
}

/* ---- KL ---- */

/* I, P (n, m): sparse = 0: dense causal rows (m = n); else a random mask
   with row 0 empty, row 1 one entry, row 2 all P = 0. Invisible: I = -inf,
   P = NaN. Values in double, exactly representable in float. */
static void kl_inputs(t_rng *r, double *I, double *P, int64_t n, int64_t m, int sparse) {
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < m; j++) {
            int vis = sparse ? t_rng_uniform(r) < 0.6f : j <= i;
            if (sparse && i == 0) vis = 0;
            if (sparse && i == 1) vis = j == m / 2;
            double p = (double)(float)exp(2.0 * t_rng_normal(r));
            if (t_rng_uniform(r) < 0.1f || (sparse && i == 2)) p = 0; /* 0 log 0 */
            I[i * m + j] = vis ? (double)(2.0f * t_rng_normal(r)) : -INFINITY;
            P[i * m + j] = vis ? p : NAN;
        }
}

static void kl_case(dsc_t *t, int64_t n, int64_t m, int sparse, uint64_t seed) {
    t_pool pl = {0};
    t_rng r = {seed};
    double *Id = t_dalloc(&pl, n * m), *Pd = t_dalloc(&pl, n * m);
    kl_inputs(&r, Id, Pd, n, m, sparse);
    float *I = t_to_f32(&pl, Id, n * m), *P = t_to_f32(&pl, Pd, n * m);
    double *g0 = t_rnd(&pl, &r, n * m, 1.0);
    for (int64_t i = 0; i < n * m; i++)
        if (Id[i] == -INFINITY && (i & 1)) g0[i] = -0.0;
    double *gref = t_dalloc(&pl, n * m), *gonly = t_dalloc(&pl, n * m);
    memcpy(gref, g0, (size_t)(n * m) * sizeof *gref);
    double dscale = 0.7;
    double want = dsc_op_idx_kl_f64(gref, Id, Pd, n, m, dscale);
    for (int64_t i = 0; i < n * m; i++) gonly[i] = gref[i] - g0[i];
    double gmag = maxabs(gonly, n * m);

    float *dI1 = t_to_f32(&pl, g0, n * m), *dI2 = t_to_f32(&pl, g0, n * m);
    float *dI0 = t_to_f32(&pl, g0, n * m);
    double *row_ws = t_dalloc(&pl, n);
    double got1 = dsc_idxt_kl(dI1, I, P, n, m, dscale, 1, row_ws);
    double got2 = dsc_idxt_kl(dI2, I, P, n, m, dscale, 2, row_ws);
    double got0 = dsc_idxt_kl(NULL, I, P, n, m, dscale, 2, row_ws);

    double rel = fabs(got1 - want) / (fabs(want) > 0 ? fabs(want) : 1.0);
    T_CHECK(t, rel <= KL_TOL, "kl n=%lld m=%lld: %.17g vs %.17g (rel %.2e)", (long long)n,
            (long long)m, got1, want, rel);
    T_CHECK(t, same_bits(&got1, &got2, sizeof got1) && same_bits(&got1, &got0, sizeof got1),
            "kl: loss differs at 2 threads or without dI (%.17g %.17g %.17g)", got1, got2, got0);
    T_CHECK(t, same_bits(dI1, dI2, (size_t)(n * m) * sizeof *dI1), "kl: dI differs at 2 threads");
    /* the += into the random start (rounding: 0.5 ulp of it), then the
       gradient alone, from zeros, at its own scale */
    t_close_f64(t, "kl dI", dI1, gref, n * m, GRAD_ATOL * gmag + 1e-30, GRAD_RTOL);
    float *dIz = t_falloc(&pl, n * m);
    dsc_idxt_kl(dIz, I, P, n, m, dscale, 2, row_ws);
    double dg = t_close_f64(t, "kl grad", dIz, gonly, n * m, GRAD_ATOL * gmag + 1e-30, GRAD_TOL);
    int64_t touched = 0;
    for (int64_t i = 0; i < n * m; i++)
        if (Id[i] == -INFINITY) touched += !same_bits(dI1 + i, dI0 + i, sizeof *dI1);
    T_CHECK(t, touched == 0, "kl: %lld entries not visible changed", (long long)touched);
    if (verbose())
        printf("      kl n=%-4lld m=%-4lld loss %.6f rel %.2e  max|ddI|/max|g| %.2e\n",
               (long long)n, (long long)m, got1, rel, gmag > 0 ? dg / gmag : dg);
    t_pool_free(&pl);
}

static void test_kl(dsc_t *t) {
    for (int i = 0; i < NSIZES; i++) {
        kl_case(t, sizes[i], sizes[i], 0, 200 + (uint64_t)i);
        kl_case(t, sizes[i], 37, 1, 300 + (uint64_t)i);
    }
    kl_case(t, 40, 1100, 1, 399); /* rows longer than the 512-entry chunks */
}

/* ---- recall ---- */

/* grid: values rounded to multiples of 0.5 (ties, +-0); constant: row 3
   and every 7th row all equal I. */
static void recall_case(dsc_t *t, int64_t n, int64_t m, int sparse, int grid, uint64_t seed) {
    t_pool pl = {0};
    t_rng r = {seed};
    double *Id = t_dalloc(&pl, n * m), *Pd = t_dalloc(&pl, n * m);
    kl_inputs(&r, Id, Pd, n, m, sparse);
    for (int64_t i = 0; i < n * m; i++) {
        if (Id[i] == -INFINITY) continue;
        if (grid) {
            Id[i] = round(Id[i] * 2) / 2;
            if (Id[i] == 0 && (i & 1)) Id[i] = -0.0;
            Pd[i] = round(Pd[i] * 2) / 2;
        }
        if (i / m == 3 || (i / m) % 7 == 0) Id[i] = 0.25;
    }
    float *I = t_to_f32(&pl, Id, n * m), *P = t_to_f32(&pl, Pd, n * m);
    double *rws = t_dalloc(&pl, m > 0 ? m : 1);
    double *ws = t_dalloc(&pl, dsc_idxt_recall_scratch(n, m, 2));
    static const int64_t ks[] = {1, 2, 5, 16, 64, 100000};
    for (int ki = 0; ki < (int)(sizeof ks / sizeof ks[0]); ki++) {
        int64_t k = ks[ki];
        double want = dsc_op_idx_recall_f64(Id, Pd, n, m, k, NULL, rws);
        double want32 = dsc_op_idx_recall_f32(I, P, n, m, k, NULL, rws);
        double got1 = dsc_idxt_recall(I, P, n, m, k, 1, ws);
        double got2 = dsc_idxt_recall(I, P, n, m, k, 2, ws);
        double e = fabs(got1 - want), e32 = fabs(got1 - want32);
        T_CHECK(t, e <= RECALL_TOL * fabs(want) && e32 <= RECALL_TOL * fabs(want32),
                "recall n=%lld m=%lld k=%lld grid=%d: %.17g vs f64 %.17g, f32 %.17g",
                (long long)n, (long long)m, (long long)k, grid, got1, want, want32);
        T_CHECK(t, same_bits(&got1, &got2, sizeof got1), "recall differs at 2 threads");
        if (verbose())
            printf("      recall n=%-4lld m=%-4lld k=%-6lld grid=%d  %.6f  |d| %.1e\n",
                   (long long)n, (long long)m, (long long)k, grid, got1, e);
    }
    t_pool_free(&pl);
}

static void test_recall(dsc_t *t) {
    for (int i = 0; i < NSIZES; i++)
        for (int grid = 0; grid < 2; grid++) {
            recall_case(t, sizes[i], sizes[i], 0, grid, 400 + (uint64_t)(2 * i + grid));
            recall_case(t, sizes[i], 37, 1, grid, 500 + (uint64_t)(2 * i + grid));
        }
    recall_case(t, 30, 3000, 1, 0, 600); /* candidates through all three digit levels */
    recall_case(t, 30, 3000, 1, 1, 601);
}

/* ---- select ---- */

/* dsc_idxt_select against dsc_k_topk_set row by row (the exact same sets,
   ascending, -1 padded), on random rows, rows of heavy ties (values on a
   grid of 0.5 with +-0), a NaN and infinities, at 1 and 2 threads. */
static void select_case(dsc_t *t, int64_t n, int64_t kk, int grid, uint64_t seed) {
    t_pool pl = {0};
    t_rng r = {seed};
    float *I = t_palloc(&pl, n * n * (int64_t)sizeof(float));
    for (int64_t i = 0; i < n * n; i++) {
        float v = (float)t_rng_normal(&r);
        if (grid) v = (float)(round(v * 2) / 2) * ((i & 1) ? -1.0f : 1.0f);
        I[i] = v;
    }
    if (n > 5) {
        I[5 * n + 2] = NAN;
        I[5 * n + 3] = INFINITY;
        I[5 * n + 4] = -INFINITY;
    }
    int32_t *got1 = t_palloc(&pl, n * kk * (int64_t)sizeof(int32_t));
    int32_t *got2 = t_palloc(&pl, n * kk * (int64_t)sizeof(int32_t));
    int32_t *want = t_palloc(&pl, kk * (int64_t)sizeof(int32_t));
    float *scr = t_palloc(&pl, n * (int64_t)sizeof(float));
    uint32_t *ws = t_palloc(&pl, dsc_idxt_select_scratch(n, 2) * (int64_t)sizeof(uint32_t));
    dsc_idxt_select(got1, I, n, kk, 1, ws);
    dsc_idxt_select(got2, I, n, kk, 2, ws);
    int64_t bad = 0;
    for (int64_t row = 0; row < n; row++) {
        int64_t m = dsc_k_topk_set(I + row * n, row + 1, kk, want, scr);
        for (int64_t j = m; j < kk; j++) want[j] = -1;
        bad += memcmp(want, got1 + row * kk, (size_t)kk * sizeof *want) != 0;
        bad += memcmp(want, got2 + row * kk, (size_t)kk * sizeof *want) != 0;
    }
    T_CHECK(t, bad == 0, "select n=%lld kk=%lld grid=%d: %lld rows differ from dsc_k_topk_set",
            (long long)n, (long long)kk, grid, (long long)bad);
    t_pool_free(&pl);
}

static void test_select(dsc_t *t) {
    static const int64_t kks[] = {1, 3, 16, 37};
    for (int i = 0; i < NSIZES; i++)
        for (int k = 0; k < 4; k++)
            for (int grid = 0; grid < 2; grid++)
                select_case(t, sizes[i], kks[k], grid, 700 + (uint64_t)(8 * i + 2 * k + grid));
    select_case(t, 3000, 256, 0, 790); /* candidates through all three digit levels */
    select_case(t, 600, 100, 1, 791);
}

const dsc_test_case dsc_tests_idx_target[] = {
    {"attn_lse_target", test_attn},
    {"kl", test_kl},
    {"recall", test_recall},
    {"select", test_select},
    {NULL, NULL},
};
