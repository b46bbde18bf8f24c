/*
 * test_idx_fast.c - the fast fp32 indexer score op (src/train/idx_fast.h)
 * against the fp64 reference dsc_op_idx_score_fwd_f64 / _bwd_f64.
 *
 *  - dense / sparse: sizes n = 1, 63, 64, 65, 130 (one tile, a tile edge,
 *    two and three tiles), D_I not a multiple of 16, 1 to 16 heads (16
 *    heads make the dense score tile span several key blocks); sparse
 *    selections with -1 padding, future keys, duplicates and empty rows.
 *    q and k are multiples of 1/4 (|x| <= 2), so every q.k is exact in
 *    fp32 and in fp64: the ReLU pattern of the two is the same by
 *    construction, including the many dot products that are exactly 0
 *    (plus whole zero q rows), where ReLU'(0) = 0 must pass no gradient.
 *    The products with w and dI, and all the sums of the backward, still
 *    round in fp32.
 *  - normal: one dense and one sparse case on unrounded N(0,1) inputs (the
 *    GEMM's dot products round too); the seed is one whose visible q.k are
 *    all >= KINK_MIN from 0 (checked), so fp32 rounding cannot flip the
 *    ReLU pattern.
 *  Every case: I's -INFINITY exactly at the entries the reference masks;
 *  the gradients start from random values (they are added into), dI holds
 *  NaN and 1e30 at the entries that are not visible (they must be
 *  ignored); 1 and 2 threads give bitwise the same I, dq, dk, dw; a
 *  backward with two of dq/dk/dw NULL gives bitwise the same third one.
 *
 * Tolerance: fp32 sums (GEMM tiles, SIMD lanes) of up to n*H_I terms of
 * O(1) against fp64 ones: ~sqrt(terms) * 2^-24 relative to the terms, far
 * below 1e-5 of the largest magnitude of the reference result (or of the
 * random start the gradient is added to, whichever is larger). A wrong
 * mask, head, scale or ReLU pattern is off by O(1) of that.
 */
#include <stdlib.h>
#include <string.h>

#include "test.h"
#include "train/idx_fast.h"
#include "train/idx_ops.h"

#define FAST_TOL 1e-5
#define KINK_MIN 1e-4

static int verbose(void) { return getenv("DSC_TEST_VERBOSE") != NULL; }

static double maxabs(const double *x, int64_t n) {
    double m = 0;
    for (int64_t i = 0; i < n; i++) m = fabs(x[i]) > m ? fabs(x[i]) : m;
    return m;
}

/* Random selection (n, kk): per slot -1 (15%), a future key (10%, -1 for
   the last query), else a key of [0, t] (duplicates allowed); every
   eleventh query (t % 11 == 5) selects nothing visible. */
static int32_t *make_sel(t_pool *pl, t_rng *r, int64_t n, int64_t kk) {
    int32_t *sel = t_palloc(pl, n * kk * 4 + 4);
    for (int64_t t = 0; t < n; t++)
        for (int64_t j = 0; j < kk; j++) {
            float u = t_rng_uniform(r);
            int64_t s;
            if (u < 0.15f || (t % 11 == 5 && u < 0.5f)) s = -1;
            else if (u < 0.25f || t % 11 == 5)
                s = t + 1 < n ? t + 1 + (int64_t)(t_rng_u64(r) % (uint64_t)(n - t - 1)) : -1;
            else s = (int64_t)(t_rng_u64(r) % (uint64_t)(t + 1));
            sel[t * kk + j] = (int32_t)s;
        }
    return sel;
}

static int visible(const int32_t *sel, int64_t kk, int64_t t, int64_t j) {
    int64_t s = sel ? sel[t * kk + j] : j;
    return s >= 0 && s <= t;
}

/* Smallest nonzero |q[t,h] . k[s]| over the visible pairs. */
static double min_kink(const double *q, const double *k, const int32_t *sel, int64_t n,
                       int64_t H, int64_t D, int64_t kk) {
    double mn = INFINITY;
    int64_t m = sel ? kk : n;
    for (int64_t t = 0; t < n; t++)
        for (int64_t j = 0; j < m; j++) {
            if (!visible(sel, kk, t, j)) continue;
            int64_t s = sel ? sel[t * kk + j] : j;
            for (int64_t h = 0; h < H; h++) {
                double dot = 0;
                for (int64_t i = 0; i < D; i++) dot += q[(t * H + h) * D + i] * k[s * D + i];
                if (dot != 0 && fabs(dot) < mn) mn = fabs(dot);
            }
        }
    return mn;
}

/* |got - (start + delta)| <= FAST_TOL * max(max|delta|, max|start|). */
static void check_grad(dsc_t *t, const char *op, const char *what, const float *got,
                       const float *start, const double *delta, int64_t n, int nonzero,
                       t_pool *pl) {
    double *want = t_dalloc(pl, n);
    double sm = 0;
    for (int64_t i = 0; i < n; i++) {
        want[i] = (double)start[i] + delta[i];
        sm = fabs(start[i]) > sm ? fabs(start[i]) : sm;
    }
    double dm = maxabs(delta, n), scale = dm > sm ? dm : sm;
    if (nonzero) T_CHECK(t, dm > 0, "%s: reference d%s is all zero (test cannot fail)", op, what);
    double err = t_close_f64(t, what, got, want, n, FAST_TOL * scale, 0);
    if (verbose())
        printf("      %-12s d%-2s max|err| %.2e = %.2e of max %.2g\n", op, what, err,
               err / scale, scale);
}

static float *copy_f(t_pool *pl, const float *x, int64_t n) {
    float *y = t_falloc(pl, n);
    memcpy(y, x, (size_t)n * sizeof *y);
    return y;
}

/* Whether two float arrays are bitwise equal. */
static int same(const float *a, const float *b, int64_t n) {
    return memcmp(a, b, (size_t)n * sizeof *a) == 0;
}

/* One case; kk = 0: dense. quant: q, k multiples of 1/4 (exact dots). */
static void run_case(dsc_t *t, uint64_t seed, int64_t n, int64_t H, int64_t D, int64_t kk,
                     int quant) {
    char op[64];
    snprintf(op, sizeof op, "%s n%lld H%lld D%lld k%lld", kk ? "sp" : "de", (long long)n,
             (long long)H, (long long)D, (long long)kk);
    t_pool pl = {0};
    t_rng r = {seed};
    dsc_idx_dims d = {n, H, D, kk};
    int64_t m = kk ? kk : n, nq = n * H * D, nk = n * D, nw = n * H, ni = n * m;
    double *q = t_rnd(&pl, &r, nq, 1), *k = t_rnd(&pl, &r, nk, 1), *w = t_rnd(&pl, &r, nw, 0.7);
    if (quant) {
        for (int64_t i = 0; i < nq; i++) q[i] = fmax(-2, fmin(2, round(q[i] * 4) / 4));
        for (int64_t i = 0; i < nk; i++) k[i] = fmax(-2, fmin(2, round(k[i] * 4) / 4));
        /* whole zero query rows: q.k = 0 for every key */
        for (int64_t i = 2; i < n; i += 5) memset(q + (i * H + (i % H)) * D, 0, (size_t)D * 8);
    } else {
        double kink = min_kink(q, k, NULL, n, H, D, 0);
        T_CHECK(t, kink >= KINK_MIN, "%s: a q.k is %.2e from the kink: change the seed", op, kink);
    }
    int32_t *sel = kk ? make_sel(&pl, &r, n, kk) : NULL;
    if (sel && !quant) {
        double kink = min_kink(q, k, sel, n, H, D, kk);
        T_CHECK(t, kink >= KINK_MIN, "%s: a q.k is %.2e from the kink: change the seed", op, kink);
    }
    double *dI = t_rnd(&pl, &r, ni, 1);
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < m; j++)
            if (!visible(sel, kk, i, j)) dI[i * m + j] = (i + j) % 2 ? NAN : 1e30;

    /* reference, fp64 */
    double *I64 = t_dalloc(&pl, ni), *dq64 = t_dalloc(&pl, nq), *dk64 = t_dalloc(&pl, nk),
           *dw64 = t_dalloc(&pl, nw);
    dsc_op_idx_score_fwd_f64(I64, q, k, w, sel, &d);
    dsc_op_idx_score_bwd_f64(dq64, dk64, dw64, dI, q, k, w, sel, &d);

    /* fast, 1 and 2 threads */
    float *q32 = t_to_f32(&pl, q, nq), *k32 = t_to_f32(&pl, k, nk), *w32 = t_to_f32(&pl, w, nw),
          *dI32 = t_to_f32(&pl, dI, ni);
    float *dq0 = t_to_f32(&pl, t_rnd(&pl, &r, nq, 0.5), nq);
    float *dk0 = t_to_f32(&pl, t_rnd(&pl, &r, nk, 0.5), nk);
    float *dw0 = t_to_f32(&pl, t_rnd(&pl, &r, nw, 0.5), nw);
    float *ws = t_falloc(&pl, dsc_idxf_scratch(n, H, D, kk, 2));
    float *I[2], *dq[2], *dk[2], *dw[2];
    for (int th = 0; th < 2; th++) {
        I[th] = t_falloc(&pl, ni);
        dq[th] = copy_f(&pl, dq0, nq), dk[th] = copy_f(&pl, dk0, nk), dw[th] = copy_f(&pl, dw0, nw);
        dsc_idxf_score_fwd(I[th], q32, k32, w32, sel, &d, th + 1, ws);
        dsc_idxf_score_bwd(dq[th], dk[th], dw[th], dI32, q32, k32, w32, sel, &d, th + 1, ws);
    }

    /* I: masked exactly where the reference is, close elsewhere */
    int64_t bad = 0;
    float *If = copy_f(&pl, I[0], ni);
    double *Iw = t_dalloc(&pl, ni);
    for (int64_t i = 0; i < ni; i++) {
        int a = I64[i] == -INFINITY, b = If[i] == -INFINITY;
        bad += a != b || (!a && !isfinite(If[i]));
        Iw[i] = a ? 0 : I64[i];
        if (b) If[i] = 0;
    }
    T_CHECK(t, bad == 0, "%s: %lld entries of I masked differently", op, (long long)bad);
    double im = maxabs(Iw, ni);
    if (n > 1) T_CHECK(t, im > 0, "%s: I all zero (test cannot fail)", op);
    double ie = t_close_f64(t, "I", If, Iw, ni, FAST_TOL * (im > 0 ? im : 1), 0);
    if (verbose())
        printf("      %-12s I   max|err| %.2e = %.2e of max %.2g\n", op, ie, ie / (im > 0 ? im : 1),
               im);
    /* n = 1: one key, often masked or below the kink: gradients may be 0 */
    check_grad(t, op, "q", dq[0], dq0, dq64, nq, n > 1, &pl);
    check_grad(t, op, "k", dk[0], dk0, dk64, nk, n > 1, &pl);
    check_grad(t, op, "w", dw[0], dw0, dw64, nw, n > 1, &pl);

    T_CHECK(t, same(I[0], I[1], ni), "%s: I differs between 1 and 2 threads", op);
    T_CHECK(t, same(dq[0], dq[1], nq), "%s: dq differs between 1 and 2 threads", op);
    T_CHECK(t, same(dk[0], dk[1], nk), "%s: dk differs between 1 and 2 threads", op);
    T_CHECK(t, same(dw[0], dw[1], nw), "%s: dw differs between 1 and 2 threads", op);

    /* NULL skips: each gradient alone is the same as in the full call */
    float *g1 = copy_f(&pl, dq0, nq), *g2 = copy_f(&pl, dk0, nk), *g3 = copy_f(&pl, dw0, nw);
    dsc_idxf_score_bwd(g1, NULL, NULL, dI32, q32, k32, w32, sel, &d, 2, ws);
    dsc_idxf_score_bwd(NULL, g2, NULL, dI32, q32, k32, w32, sel, &d, 2, ws);
    dsc_idxf_score_bwd(NULL, NULL, g3, dI32, q32, k32, w32, sel, &d, 1, ws);
    T_CHECK(t, same(g1, dq[0], nq), "%s: dq alone differs", op);
    T_CHECK(t, same(g2, dk[0], nk), "%s: dk alone differs", op);
    T_CHECK(t, same(g3, dw[0], nw), "%s: dw alone differs", op);
    t_pool_free(&pl);
}

static const int64_t SIZES[5] = {1, 63, 64, 65, 130};

static void test_dense(dsc_t *t) {
    static const int64_t HD[5][2] = {{1, 5}, {2, 19}, {4, 32}, {3, 33}, {16, 20}};
    for (int i = 0; i < 5; i++)
        for (int hd = 0; hd < 5; hd++)
            run_case(t, 9100 + (uint64_t)(10 * i + hd), SIZES[i], HD[hd][0], HD[hd][1], 0, 1);
}

static void test_sparse(dsc_t *t) {
    static const int64_t HDK[5][3] = {{1, 5, 3}, {2, 19, 7}, {4, 32, 16}, {3, 33, 20}, {16, 20, 40}};
    for (int i = 0; i < 5; i++)
        for (int c = 0; c < 5; c++)
            run_case(t, 9200 + (uint64_t)(10 * i + c), SIZES[i], HDK[c][0], HDK[c][1], HDK[c][2], 1);
}

static void test_normal(dsc_t *t) {
    run_case(t, 9303, 65, 3, 33, 0, 0);
    run_case(t, 9302, 130, 2, 67, 24, 0);
}

const dsc_test_case dsc_tests_idx_fast[] = {
    {"dense", test_dense},
    {"sparse", test_sparse},
    {"normal", test_normal},
    {NULL, NULL},
};
