/*
 * test_tk.c - the fast fp32 training kernels (src/train/tk.h) against their
 * fp64 references (dsc_op_*_f64, src/train/ops.h), on random data with
 * fixed seeds:
 *  - attention forward + backward, one head, over shapes that cross the
 *    64-row query tile (n = 1, 63, 64, 65, 129, 130), dqk != dv, strided
 *    heads read in place (ldq = 3 dqk with the head at an offset, as MLA's
 *    q), scale != 1 and peaky softmaxes (Q, K with standard deviation 3);
 *    the gradients are added into random initial buffers in both versions
 *    (the += contract), and the columns of strided buffers outside the head
 *    must stay untouched, bit for bit;
 *  - cross-entropy: loss and in-place gradient, ignored rows, grad = 0
 *    leaving the logits alone, nothing counted, and the same bits at one
 *    and two threads;
 *  - RMSNorm forward + backward (dx, dw added into random initial values),
 *    rows compared each at its own scale (one row has mean(x^2) ~ eps),
 *    and rows of size 1e-30 .. 1e30 (rmsnorm_range);
 *  - SwiGLU forward + backward (which overwrites dg, du) including g = +-30,
 *    +-100, +-88 and -104 (exp(-|g|) subnormal or 0);
 *  - attention rows read through V = I: the rows of P are normalised and
 *    masked exactly, and n = 1 gives O = V with any score magnitude.
 * DSC_TEST_VERBOSE=1 prints the measured max errors of every comparison.
 *
 * Tolerances. The kernels differ from the fp64 references only in
 * arithmetic: fp32 products and sums inside GEMM tiles and SIMD lanes, a
 * <= 2-ulp SIMD exp (dsc_k_exp), and fp32 rounding of every stored value.
 * Every comparison is |got - want| <= atol + rtol |want|, with atol scaled
 * by the magnitude of the quantity being compared (element-wise relative
 * error is meaningless for values that are ~0 by cancellation: masked or
 * near-tied keys, the zero of silu'). The numbers:
 *  OUT_TOL 1e-5, forward outputs (O, lse, rmsnorm y): fp32 sums of k terms
 *    carry at most ~k eps relative error in the worst case and ~sqrt(k)
 *    eps typically (eps = 6e-8; k <= 130 keys, so <= 8e-6; RMSNorm sums
 *    its squares in 8 lanes of d/8 terms, (d/8 + 8) eps <= 8e-6 at
 *    d = 1000, halved by the square root), and the exp of a score with an
 *    fp32 error delta is off by delta relative, delta ~ eps * scale *
 *    sum|q_c k_c| <= ~3e-6 on the peaky cases. 1e-5 sits above those
 *    bounds; a wrong mask, tile edge or scale is an O(1) error.
 *  GRAD_TOL 1e-5 (atol, times max |reference gradient|) and rtol 1e-5 for
 *    the gradients: the same fp32 sums, plus the cancellation in
 *    dP - rowsum(dO O) (both O(|dO||V|), their difference can be much
 *    smaller), which an atol scaled to the whole tensor absorbs. The rtol
 *    covers the final fp32 add into the random initial value (0.5 ulp of
 *    |want|, 6e-8 relative). Dropping the initial value (= instead of +=)
 *    is an O(1) error.
 *  The elementwise kernels (SwiGLU, the cross-entropy gradient) have a few
 *    roundings and one exp per value, < 1e-6 relative, and are held to
 *    ELEM_TOL 1e-6 (scaled atol) + 1e-5 rtol on the outputs; their
 *    gradients take GRAD_TOL.
 *  The mean loss is a double sum of fp32 row terms log(sum exp) - (z_y -
 *    mx) whose exps carry 2 ulp: relative 1e-6 against the fp64 loss.
 */
#include <stdlib.h>
#include <string.h>

#include "test.h"
#include "train/tk.h"

#define OUT_TOL 1e-5
#define GRAD_TOL 1e-5
#define GRAD_RTOL 1e-5
#define ELEM_TOL 1e-6
#define ELEM_RTOL 1e-5
#define LOSS_TOL 1e-6

/* ---- small helpers: comparisons (allocation and random data: test.h) ---- */

static float *frnd(t_pool *pl, t_rng *r, int64_t n, float sd) {
    float *x = t_falloc(pl, n);
    for (int64_t i = 0; i < n; i++) x[i] = t_rng_normal(r) * sd;
    return x;
}

static float *fcopy(t_pool *pl, const float *x, int64_t n) {
    float *y = t_falloc(pl, n);
    memcpy(y, x, (size_t)n * sizeof *y);
    return y;
}

static double *widen(t_pool *pl, const float *x, int64_t n) {
    double *y = t_dalloc(pl, n);
    for (int64_t i = 0; i < n; i++) y[i] = x[i];
    return y;
}

static double maxabs(const double *x, int64_t n) {
    double m = 0;
    for (int64_t i = 0; i < n; i++) m = fabs(x[i]) > m ? fabs(x[i]) : m;
    return m;
}

static int verbose(void) { return getenv("DSC_TEST_VERBOSE") != NULL; }

/* got against want with atol = arel * mag (mag: the size of the quantity,
   e.g. of the gradient alone when want also holds an initial value). */
static void close_mag(dsc_t *t, const char *what, const float *got, const double *want,
                      int64_t n, double mag, double arel, double rtol) {
    double d = t_close_f64(t, what, got, want, n, arel * mag + 1e-30, rtol);
    if (verbose())
        printf("      %-28s max|d| %.2e  max|d|/mag %.2e  (mag %.3g)\n", what, d,
               mag > 0 ? d / mag : d, mag);
}

/* Columns [off, off + cols) of n rows of stride ld, packed. */
static float *gather_f(t_pool *pl, const float *b, int64_t ld, int64_t off, int64_t n, int64_t cols) {
    float *y = t_falloc(pl, n * cols);
    for (int64_t i = 0; i < n; i++) memcpy(y + i * cols, b + i * ld + off, (size_t)cols * sizeof *y);
    return y;
}

static double *gather_d(t_pool *pl, const double *b, int64_t ld, int64_t off, int64_t n,
                        int64_t cols) {
    double *y = t_dalloc(pl, n * cols);
    for (int64_t i = 0; i < n; i++) memcpy(y + i * cols, b + i * ld + off, (size_t)cols * sizeof *y);
    return y;
}

/* Every element of the (n, ld) buffer outside columns [off, off + cols)
   still has its original bits. */
static void outside_same(dsc_t *t, const char *what, const float *b, const float *orig,
                         int64_t ld, int64_t off, int64_t n, int64_t cols) {
    for (int64_t i = 0; i < n; i++)
        for (int64_t c = 0; c < ld; c++) {
            if (c >= off && c < off + cols) continue;
            if (memcmp(b + i * ld + c, orig + i * ld + c, sizeof *b)) {
                t_fail(t, __FILE__, __LINE__, "%s: [%lld][%lld] outside the head changed (%g -> %g)",
                       what, (long long)i, (long long)c, orig[i * ld + c], b[i * ld + c]);
                return;
            }
        }
}

/* want - init: the reference gradient alone, for its magnitude. */
static double grad_mag(const double *want, const float *init, int64_t n) {
    double m = 0;
    for (int64_t i = 0; i < n; i++) {
        double g = fabs(want[i] - (double)init[i]);
        m = g > m ? g : m;
    }
    return m;
}

/* Row by row, atol scaled by each row's own magnitude (of want - init when
   init is given): RMSNorm's rows differ in size by the 1/rms factor, and
   one big row must not set the tolerance of the others. A failure names
   the first failing row and how many rows fail. */
static void close_rows(dsc_t *t, const char *what, const float *got, const double *want,
                       const float *init, int64_t n, int64_t d, double arel, double rtol) {
    double worst = 0;
    int64_t nbad = 0, bi = -1, bj = -1;
    double bmag = 0;
    for (int64_t i = 0; i < n; i++) {
        const double *wr = want + i * d;
        double mag = init ? grad_mag(wr, init + i * d, d) : maxabs(wr, d), md = 0;
        int bad = 0;
        for (int64_t j = 0; j < d; j++) {
            double e = fabs((double)got[i * d + j] - wr[j]);
            if (!(e <= arel * mag + rtol * fabs(wr[j]))) {   /* also NaN */
                if (!bad && bi < 0) bi = i, bj = j, bmag = mag;
                bad = 1;
            }
            md = e > md ? e : md;
        }
        nbad += bad;
        if (mag > 0 && md / mag > worst) worst = md / mag;
    }
    if (nbad)
        t_fail(t, __FILE__, __LINE__,
               "%s: %lld of %lld rows fail; first: row %lld col %lld got %.9g want %.9g "
               "(atol %.1g * row mag %.3g + rtol %.1g)",
               what, (long long)nbad, (long long)n, (long long)bi, (long long)bj,
               (double)got[bi * d + bj], want[bi * d + bj], arel, bmag, rtol);
    if (verbose()) printf("      %-28s max over rows of max|d|/row mag %.2e\n", what, worst);
}

/* ---- 1. attention forward + backward ---- */

typedef struct {
    int64_t n, dqk, dv;
    int64_t ldq, oq, ldk, ok, ldv, ov, ldo, oo;   /* row strides, head column offsets */
    float scale, sd;                              /* scale, std of Q and K */
} attn_case;

static void attn_check(dsc_t *t, const attn_case *ac, uint64_t seed) {
    t_pool pl = {0};
    t_rng r = {seed};
    const int64_t n = ac->n, dqk = ac->dqk, dv = ac->dv;
    const dsc_op_attn_dims d = {n, dqk, dv, ac->ldq, ac->ldk, ac->ldv, ac->ldo};
    char w[64];
    if (verbose())
        printf("    n %lld dqk %lld dv %lld ldq %lld ldk %lld ldv %lld ldo %lld scale %g sd %g\n",
               (long long)n, (long long)dqk, (long long)dv, (long long)ac->ldq, (long long)ac->ldk,
               (long long)ac->ldv, (long long)ac->ldo, ac->scale, ac->sd);

    /* whole strided buffers; the head is at column offset o* of each row */
    float *Q = frnd(&pl, &r, n * ac->ldq, ac->sd), *K = frnd(&pl, &r, n * ac->ldk, ac->sd);
    float *V = frnd(&pl, &r, n * ac->ldv, 1), *dO = frnd(&pl, &r, n * ac->ldo, 1);
    float *O = frnd(&pl, &r, n * ac->ldo, 1), *O0 = fcopy(&pl, O, n * ac->ldo);
    float *lse = t_falloc(&pl, n);
    float *dQ = frnd(&pl, &r, n * ac->ldq, 1), *dK = frnd(&pl, &r, n * ac->ldk, 1);
    float *dV = frnd(&pl, &r, n * ac->ldv, 1);
    float *dQ0 = fcopy(&pl, dQ, n * ac->ldq), *dK0 = fcopy(&pl, dK, n * ac->ldk);
    float *dV0 = fcopy(&pl, dV, n * ac->ldv);
    float *ws = t_falloc(&pl, dsc_tk_attn_scratch(n));

    dsc_tk_attn_fwd(O + ac->oo, lse, Q + ac->oq, K + ac->ok, V + ac->ov, &d, ac->scale, ws);
    dsc_tk_attn_bwd(dQ + ac->oq, dK + ac->ok, dV + ac->ov, dO + ac->oo, Q + ac->oq, K + ac->ok,
                    V + ac->ov, O + ac->oo, lse, &d, ac->scale, ws);

    /* the reference, same layouts, same (float) inputs and initial gradients */
    double *Qd = widen(&pl, Q, n * ac->ldq), *Kd = widen(&pl, K, n * ac->ldk);
    double *Vd = widen(&pl, V, n * ac->ldv), *dOd = widen(&pl, dO, n * ac->ldo);
    double *Od = t_dalloc(&pl, n * ac->ldo), *lsed = t_dalloc(&pl, n);
    double *dQd = widen(&pl, dQ0, n * ac->ldq), *dKd = widen(&pl, dK0, n * ac->ldk);
    double *dVd = widen(&pl, dV0, n * ac->ldv);
    dsc_op_attn_fwd_f64(Od + ac->oo, lsed, Qd + ac->oq, Kd + ac->ok, Vd + ac->ov, &d, ac->scale);
    dsc_op_attn_bwd_f64(dQd + ac->oq, dKd + ac->ok, dVd + ac->ov, dOd + ac->oo, Qd + ac->oq,
                        Kd + ac->ok, Vd + ac->ov, Od + ac->oo, lsed, &d, ac->scale);

    double *Ow = gather_d(&pl, Od, ac->ldo, ac->oo, n, dv);
    snprintf(w, sizeof w, "n%lld O", (long long)n);
    close_mag(t, w, gather_f(&pl, O, ac->ldo, ac->oo, n, dv), Ow, n * dv, maxabs(Ow, n * dv),
              OUT_TOL, OUT_TOL);
    snprintf(w, sizeof w, "n%lld lse", (long long)n);
    close_mag(t, w, lse, lsed, n, maxabs(lsed, n), OUT_TOL, OUT_TOL);

    struct {
        const char *name;
        const float *got, *init;
        const double *want;
        int64_t ld, off, cols;
    } g[] = {{"dQ", dQ, dQ0, dQd, ac->ldq, ac->oq, dqk},
             {"dK", dK, dK0, dKd, ac->ldk, ac->ok, dqk},
             {"dV", dV, dV0, dVd, ac->ldv, ac->ov, dv}};
    double dv_mag = 0;
    for (int q = 0; q < 3; q++) {
        const int64_t m = n * g[q].cols;
        double *want = gather_d(&pl, g[q].want, g[q].ld, g[q].off, n, g[q].cols);
        float *init = gather_f(&pl, g[q].init, g[q].ld, g[q].off, n, g[q].cols);
        double mag = grad_mag(want, init, m);
        if (q == 2) dv_mag = mag;
        snprintf(w, sizeof w, "n%lld %s (+= init)", (long long)n, g[q].name);
        close_mag(t, w, gather_f(&pl, g[q].got, g[q].ld, g[q].off, n, g[q].cols), want, m, mag,
                  GRAD_TOL, GRAD_RTOL);
        snprintf(w, sizeof w, "n%lld %s", (long long)n, g[q].name);
        outside_same(t, w, g[q].got, g[q].init, g[q].ld, g[q].off, n, g[q].cols);
    }
    snprintf(w, sizeof w, "n%lld O", (long long)n);
    outside_same(t, w, O, O0, ac->ldo, ac->oo, n, dv);

    /* NULL gradients are skipped: dV alone, into zeros, is the increment */
    float *dV1 = t_falloc(&pl, n * ac->ldv);
    dsc_tk_attn_bwd(NULL, NULL, dV1 + ac->ov, dO + ac->oo, Q + ac->oq, K + ac->ok, V + ac->ov,
                    O + ac->oo, lse, &d, ac->scale, ws);
    double *inc = t_dalloc(&pl, n * dv);
    for (int64_t i = 0; i < n; i++)
        for (int64_t c = 0; c < dv; c++)
            inc[i * dv + c] = dVd[i * ac->ldv + ac->ov + c] - (double)dV0[i * ac->ldv + ac->ov + c];
    snprintf(w, sizeof w, "n%lld dV (alone)", (long long)n);
    close_mag(t, w, gather_f(&pl, dV1, ac->ldv, ac->ov, n, dv), inc, n * dv, dv_mag, GRAD_TOL,
              GRAD_RTOL);
    t_pool_free(&pl);
}

static void test_attention(dsc_t *t) {
    static const attn_case cases[] = {
        /* n  dqk dv   ldq oq  ldk ok  ldv ov  ldo oo   scale   sd */
        {1, 8, 8, 8, 0, 8, 0, 8, 0, 8, 0, 0.35f, 1},
        {2, 5, 3, 15, 5, 7, 1, 8, 5, 3, 0, 1.0f, 1},
        {63, 24, 16, 72, 24, 24, 0, 48, 16, 32, 16, 0.2f, 1},
        {64, 16, 16, 48, 32, 21, 3, 16, 0, 16, 0, 0.25f, 1},
        {65, 40, 24, 120, 40, 40, 0, 64, 40, 48, 0, 0.2055f, 1},   /* 1.3 / sqrt(40) */
        {65, 16, 48, 48, 16, 17, 1, 96, 48, 50, 2, 0.25f, 1},      /* dv > dqk */
        {130, 24, 32, 72, 48, 29, 5, 96, 32, 64, 32, 0.2f, 1},
        {130, 16, 16, 48, 16, 16, 0, 32, 16, 16, 0, 0.25f, 3},     /* peaky: scores ~ N(0, 9^2) */
        {129, 32, 8, 96, 64, 32, 0, 16, 8, 8, 0, 0.265f, 3},       /* peakier, dv small */
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) attn_check(t, &cases[c], 1000 + c);
}

/* ---- 2. cross-entropy ---- */

static void xent_case(dsc_t *t, int64_t V, dsc_kctx *k1, dsc_kctx *k2, uint64_t seed) {
    t_pool pl = {0};
    t_rng r = {seed};
    enum { N = 37 };   /* N * V >= 32768: the 2-thread context really splits */
    const double dscale = 0.3;
    int32_t tg[N];
    for (int64_t i = 0; i < N; i++) tg[i] = (int32_t)(t_rng_u64(&r) % (uint64_t)V);
    tg[3] = tg[10] = tg[11] = tg[N - 1] = -1;   /* ignored */
    tg[0] = 0, tg[1] = (int32_t)(V - 1);         /* the edges of a row */
    float *z = frnd(&pl, &r, N * V, 3);
    for (int64_t j = 0; j < V; j++) z[5 * V + j] *= 10;   /* one very peaky row */
    double *zd = widen(&pl, z, N * V), *dz = t_dalloc(&pl, N * V);
    double want = dsc_op_xent_f64(dz, zd, tg, N, V, dscale);
    double *rl = t_dalloc(&pl, N);
    char w[64];

    /* grad = 0: the loss, logits left bit for bit */
    float *z0 = fcopy(&pl, z, N * V);
    double l0 = dsc_tk_xent(k1, z0, tg, N, V, 0, dscale, rl);
    T_CHECK(t, fabs(l0 - want) <= LOSS_TOL * fabs(want), "V %lld loss %.17g want %.17g (rel %.2e)",
            (long long)V, l0, want, fabs(l0 - want) / fabs(want));
    T_CHECK(t, !memcmp(z0, z, (size_t)(N * V) * sizeof *z), "V %lld: grad = 0 changed the logits",
            (long long)V);
    T_CHECK(t, rl[3] == 0.0 && rl[N - 1] == 0.0, "V %lld: ignored rows have row loss %g, %g",
            (long long)V, rl[3], rl[N - 1]);
    double l0b = dsc_tk_xent(k2, z0, tg, N, V, 0, dscale, rl);
    double l0c = dsc_tk_xent(NULL, z0, tg, N, V, 0, dscale, rl);
    T_CHECK(t, !memcmp(&l0, &l0b, sizeof l0) && !memcmp(&l0, &l0c, sizeof l0),
            "V %lld: grad = 0 loss %.17g at 1 thread, %.17g at 2, %.17g with k NULL", (long long)V,
            l0, l0b, l0c);

    /* grad = 1: the same loss and dscale * dloss/dlogits in place */
    float *z1 = fcopy(&pl, z, N * V), *z2 = fcopy(&pl, z, N * V);
    double l1 = dsc_tk_xent(k1, z1, tg, N, V, 1, dscale, rl);
    double l2 = dsc_tk_xent(k2, z2, tg, N, V, 1, dscale, rl);
    T_CHECK(t, fabs(l1 - want) <= LOSS_TOL * fabs(want), "V %lld grad loss %.17g want %.17g",
            (long long)V, l1, want);
    T_CHECK(t, !memcmp(&l1, &l2, sizeof l1), "V %lld: loss %.17g at 1 thread, %.17g at 2",
            (long long)V, l1, l2);
    T_CHECK(t, !memcmp(z1, z2, (size_t)(N * V) * sizeof *z1),
            "V %lld: gradient differs between 1 and 2 threads", (long long)V);
    snprintf(w, sizeof w, "V%lld dlogits", (long long)V);
    close_mag(t, w, z1, dz, N * V, maxabs(dz, N * V), ELEM_TOL, ELEM_RTOL);
    for (int64_t i = 0; i < N; i++) {
        if (tg[i] >= 0) continue;
        for (int64_t j = 0; j < V; j++)
            if (z1[i * V + j] != 0.0f) {
                t_fail(t, __FILE__, __LINE__, "V %lld: ignored row %lld has gradient %g", (long long)V,
                       (long long)i, z1[i * V + j]);
                break;
            }
    }
    if (verbose())
        printf("      V%lld loss %.10f want %.10f rel %.2e (grad=1 rel %.2e)\n", (long long)V, l0,
               want, fabs(l0 - want) / fabs(want), fabs(l1 - want) / fabs(want));

    /* nothing counted: loss 0, and with grad every row becomes 0 */
    int32_t none[N];
    for (int64_t i = 0; i < N; i++) none[i] = -1;
    float *z3 = fcopy(&pl, z, N * V);
    double l3 = dsc_tk_xent(k2, z3, none, N, V, 1, dscale, rl);
    T_CHECK(t, l3 == 0.0, "V %lld: all ignored, loss %g", (long long)V, l3);
    int64_t nz = 0;
    for (int64_t i = 0; i < N * V; i++) nz += z3[i] != 0.0f;
    T_CHECK(t, nz == 0, "V %lld: all ignored, %lld gradient values not 0", (long long)V, (long long)nz);
    t_pool_free(&pl);
}

static void test_xent(dsc_t *t) {
    dsc_kctx *k1 = NULL, *k2 = NULL;
    T_CHECK(t, dsc_kctx_new(1, 64, &k1, NULL) == DSC_OK, "kctx 1 thread");
    T_CHECK(t, dsc_kctx_new(2, 64, &k2, NULL) == DSC_OK, "kctx 2 threads");
    if (k1 && k2) {
        xent_case(t, 1000, k1, k2, 2001);
        xent_case(t, 4097, k1, k2, 2002);
    }
    dsc_kctx_free(k1);
    dsc_kctx_free(k2);
}

/* ---- 3. RMSNorm ---- */

static void rmsnorm_case(dsc_t *t, dsc_kctx *k, int64_t d, uint64_t seed) {
    t_pool pl = {0};
    t_rng r = {seed};
    enum { N = 40 };   /* N * d = 40000 for d = 1000: the rows are split */
    const float eps = 1e-6f;
    float *x = frnd(&pl, &r, N * d, 1), *w = frnd(&pl, &r, d, 0.1f), *dy = frnd(&pl, &r, N * d, 1);
    for (int64_t j = 0; j < d; j++) w[j] += 1.0f;
    for (int64_t j = 0; j < d; j++) x[2 * d + j] *= 1e-3f;   /* mean(x^2) ~ eps: eps matters */
    for (int64_t j = 0; j < d; j++) x[7 * d + j] *= 100.0f;
    float *dx = frnd(&pl, &r, N * d, 1), *dw = frnd(&pl, &r, d, 1);
    float *dx0 = fcopy(&pl, dx, N * d), *dw0 = fcopy(&pl, dw, d), *y = t_falloc(&pl, N * d);
    dsc_tk_rmsnorm_fwd(k, y, x, w, N, d, eps);
    dsc_tk_rmsnorm_bwd(k, dx, dw, dy, x, w, N, d, eps);

    double *xd = widen(&pl, x, N * d), *wd = widen(&pl, w, d), *dyd = widen(&pl, dy, N * d);
    double *yd = t_dalloc(&pl, N * d), *dxd = widen(&pl, dx0, N * d), *dwd = widen(&pl, dw0, d);
    dsc_op_rmsnorm_fwd_f64(yd, xd, wd, N, d, (double)eps);
    dsc_op_rmsnorm_bwd_f64(dxd, dwd, dyd, xd, wd, N, d, (double)eps);
    char s[64];
    snprintf(s, sizeof s, "d%lld y", (long long)d);
    close_rows(t, s, y, yd, NULL, N, d, OUT_TOL, OUT_TOL);
    snprintf(s, sizeof s, "d%lld dx (+= init)", (long long)d);
    close_rows(t, s, dx, dxd, dx0, N, d, GRAD_TOL, GRAD_RTOL);
    snprintf(s, sizeof s, "d%lld dw (+= init)", (long long)d);
    close_mag(t, s, dw, dwd, d, grad_mag(dwd, dw0, d), GRAD_TOL, GRAD_RTOL);
    t_pool_free(&pl);
}

static void test_rmsnorm(dsc_t *t) {
    dsc_kctx *k = NULL;
    T_CHECK(t, dsc_kctx_new(2, 64, &k, NULL) == DSC_OK, "kctx 2 threads");
    rmsnorm_case(t, k, 7, 3001);
    rmsnorm_case(t, k, 128, 3002);
    rmsnorm_case(t, k, 1000, 3003);
    rmsnorm_case(t, NULL, 1000, 3004);   /* k NULL: one thread */
    dsc_kctx_free(k);
}

/* Rows of very different sizes: RMSNorm's output does not depend on the
   size of x, and the reference (double sums) handles any finite float
   row; fp32 has the range for it too (r = 1/rms is representable for
   every rms in [1e-19, 1e30]), so the same OUT_TOL / GRAD_TOL hold row by
   row. dx starts at 0 here, so that a gradient of size 1/rms is not lost
   in the rounding of an O(1) initial value. */
static void test_rmsnorm_range(dsc_t *t) {
    t_pool pl = {0};
    t_rng r = {3101};
    static const float scale[] = {1e-30f, 1e-10f, 1, 1e6f, 1e10f, 1e12f, 1e13f, 1e16f, 1e18f, 1e20f, 1e30f};
    enum { D = 128, N = sizeof scale / sizeof scale[0] };
    const float eps = 1e-6f;
    float *x = frnd(&pl, &r, N * D, 1), *w = frnd(&pl, &r, D, 0.1f), *dy = frnd(&pl, &r, N * D, 1);
    for (int64_t j = 0; j < D; j++) w[j] += 1.0f;
    for (int64_t i = 0; i < N; i++)
        for (int64_t j = 0; j < D; j++) x[i * D + j] *= scale[i];
    float *y = t_falloc(&pl, N * D), *dx = t_falloc(&pl, N * D), *dw = frnd(&pl, &r, D, 1);
    float *dw0 = fcopy(&pl, dw, D);
    dsc_tk_rmsnorm_fwd(NULL, y, x, w, N, D, eps);
    dsc_tk_rmsnorm_bwd(NULL, dx, dw, dy, x, w, N, D, eps);
    double *xd = widen(&pl, x, N * D), *wd = widen(&pl, w, D), *dyd = widen(&pl, dy, N * D);
    double *yd = t_dalloc(&pl, N * D), *dxd = t_dalloc(&pl, N * D), *dwd = widen(&pl, dw0, D);
    dsc_op_rmsnorm_fwd_f64(yd, xd, wd, N, D, (double)eps);
    dsc_op_rmsnorm_bwd_f64(dxd, dwd, dyd, xd, wd, N, D, (double)eps);
    close_rows(t, "range y", y, yd, NULL, N, D, OUT_TOL, OUT_TOL);
    close_rows(t, "range dx", dx, dxd, NULL, N, D, GRAD_TOL, GRAD_RTOL);
    close_mag(t, "range dw (+= init)", dw, dwd, D, grad_mag(dwd, dw0, D), GRAD_TOL, GRAD_RTOL);
    t_pool_free(&pl);
}

/* ---- 4. SwiGLU ---- */

static void swiglu_case(dsc_t *t, dsc_kctx *k, int64_t m, uint64_t seed) {
    t_pool pl = {0};
    t_rng r = {seed};
    static const float special[] = {-100, 100, -30, 30, -88, 88, -104, 0, -1.2785f, 1e-3f};
    const int ns = (int)(sizeof special / sizeof special[0]);
    float *g = frnd(&pl, &r, m, 3), *u = frnd(&pl, &r, m, 1), *dh = frnd(&pl, &r, m, 1);
    for (int64_t i = 0; i < m; i++)   /* every 37th value from 5 on, and the last one (m > 1) */
        if (i % 37 == 5 || (m > 1 && i == m - 1)) g[i] = special[(i / 37) % ns];
    float *h = t_falloc(&pl, m), *dg = t_falloc(&pl, m), *du = t_falloc(&pl, m);
    for (int64_t i = 0; i < m; i++) dg[i] = du[i] = NAN;   /* overwritten, never read */
    dsc_tk_swiglu_fwd(k, h, g, u, m);
    dsc_tk_swiglu_bwd(k, dg, du, dh, g, u, m);

    double *gd = widen(&pl, g, m), *ud = widen(&pl, u, m), *dhd = widen(&pl, dh, m);
    double *hd = t_dalloc(&pl, m), *dgd = t_dalloc(&pl, m), *dud = t_dalloc(&pl, m);
    dsc_op_swiglu_fwd_f64(hd, gd, ud, m);
    dsc_op_swiglu_bwd_f64(dgd, dud, dhd, gd, ud, m);   /* adds into zeros */
    int64_t bad = -1;
    for (int64_t i = 0; i < m && bad < 0; i++)
        if (!isfinite(h[i]) || !isfinite(dg[i]) || !isfinite(du[i])) bad = i;
    T_CHECK(t, bad < 0, "m %lld: g = %g gives h %g dg %g du %g", (long long)m, bad >= 0 ? g[bad] : 0.0f,
            bad >= 0 ? h[bad] : 0.0f, bad >= 0 ? dg[bad] : 0.0f, bad >= 0 ? du[bad] : 0.0f);
    char s[64];
    snprintf(s, sizeof s, "m%lld h", (long long)m);
    close_mag(t, s, h, hd, m, maxabs(hd, m), ELEM_TOL, ELEM_RTOL);
    snprintf(s, sizeof s, "m%lld dg", (long long)m);
    close_mag(t, s, dg, dgd, m, maxabs(dgd, m), GRAD_TOL, GRAD_RTOL);
    snprintf(s, sizeof s, "m%lld du", (long long)m);
    close_mag(t, s, du, dud, m, maxabs(dud, m), GRAD_TOL, GRAD_RTOL);
    t_pool_free(&pl);
}

static void test_swiglu(dsc_t *t) {
    dsc_kctx *k = NULL;
    T_CHECK(t, dsc_kctx_new(2, 64, &k, NULL) == DSC_OK, "kctx 2 threads");
    static const int64_t ms[] = {1, 255, 256, 257, 10000, 40000};   /* 40000: split in 2 */
    for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++) swiglu_case(t, k, ms[i], 4000 + i);
    dsc_kctx_free(k);
    swiglu_case(t, NULL, 513, 4100);   /* k NULL */
}

/* ---- 5. attention rows through V = I ---- */

/* With dv = n and V = I, O's row i is P's row i: the GEMM against the
   identity adds exact zeros, so O[i][j] = 0 exactly for the masked keys
   j > i, and the row sums to 1 up to the rounding of its vis <= n
   normalised terms ((n + 1) eps / 2 ~ 4e-6 for n = 70; we allow 1e-5).
   n = 1 with a huge score: p = exp(0) = 1 exactly and 1 / 1 = 1, so O = V,
   bit for bit, and nothing is NaN in either direction. */
static void test_attention_rows(dsc_t *t) {
    t_pool pl = {0};
    t_rng r = {5001};
    enum { N = 70, DQK = 16 };
    const dsc_op_attn_dims d = {N, DQK, N, DQK, DQK, N, N};
    float *Q = frnd(&pl, &r, N * DQK, 2), *K = frnd(&pl, &r, N * DQK, 2), *V = t_falloc(&pl, N * N);
    for (int64_t i = 0; i < N; i++) V[i * N + i] = 1.0f;
    float *O = frnd(&pl, &r, N * N, 1), *lse = t_falloc(&pl, N);
    float *ws = t_falloc(&pl, dsc_tk_attn_scratch(N));
    dsc_tk_attn_fwd(O, lse, Q, K, V, &d, 0.25f, ws);
    double worst = 0;
    for (int64_t i = 0; i < N; i++) {
        double s = 0;
        int64_t masked_nz = 0, neg = 0;
        for (int64_t j = 0; j < N; j++) {
            s += O[i * N + j];
            masked_nz += j > i && O[i * N + j] != 0.0f;
            neg += !(O[i * N + j] >= 0.0f);   /* also catches NaN */
        }
        T_CHECK(t, masked_nz == 0, "row %lld: %lld masked keys with nonzero P", (long long)i,
                (long long)masked_nz);
        T_CHECK(t, neg == 0, "row %lld: %lld values of P negative or NaN", (long long)i, (long long)neg);
        worst = fabs(s - 1) > worst ? fabs(s - 1) : worst;
    }
    T_CHECK(t, worst <= 1e-5, "rows of P sum to 1 +- %.3g", worst);
    if (verbose()) printf("      P row sums: max |sum - 1| = %.2e\n", worst);

    /* n = 1, q.k = 1e4: O = V, finite lse, finite gradients */
    const dsc_op_attn_dims d1 = {1, 4, 3, 4, 4, 3, 3};
    float q1[4] = {50, 50, 50, 50}, k1[4] = {50, 50, 50, 50}, v1[3] = {1.5f, -2.25f, 3e-3f};
    float o1[3] = {NAN, NAN, NAN}, l1 = NAN, dO1[3] = {1, 2, -3};
    float dq1[4] = {0}, dk1[4] = {0}, dv1[3] = {0.5f, 0.25f, -1};
    dsc_tk_attn_fwd(o1, &l1, q1, k1, v1, &d1, 1.0f, ws);
    T_CHECK(t, !memcmp(o1, v1, sizeof o1), "n = 1: O = (%g %g %g), V = (%g %g %g)", o1[0], o1[1],
            o1[2], v1[0], v1[1], v1[2]);
    T_CHECK(t, fabsf(l1 - 1e4f) <= 1e-6f * 1e4f, "n = 1: lse %g, want 1e4", l1);
    dsc_tk_attn_bwd(dq1, dk1, dv1, dO1, q1, k1, v1, o1, &l1, &d1, 1.0f, ws);
    int fin = 1;
    for (int c = 0; c < 4; c++) fin &= isfinite(dq1[c]) && isfinite(dk1[c]);
    T_CHECK(t, fin, "n = 1: dQ or dK not finite");
    /* dV = 0.5 + p dO with p = 1: one rounded add */
    T_CHECK(t, dv1[0] == 1.5f && dv1[1] == 2.25f && dv1[2] == -4.0f, "n = 1: dV = (%g %g %g)",
            dv1[0], dv1[1], dv1[2]);
    /* dS = p (dP - dO.O) with O = V: 0 up to fp32 rounding of the two dots
       (|dO||V| ~ 10, eps 6e-8), times |K| = 50 */
    for (int c = 0; c < 4; c++)
        T_CHECK(t, fabsf(dq1[c]) <= 1e-4f && fabsf(dk1[c]) <= 1e-4f, "n = 1: dQ[%d] %g dK[%d] %g", c,
                dq1[c], c, dk1[c]);
    t_pool_free(&pl);
}

const dsc_test_case dsc_tests_tk[] = {
    {"attention", test_attention},
    {"xent", test_xent},
    {"rmsnorm", test_rmsnorm},
    {"rmsnorm_range", test_rmsnorm_range},
    {"swiglu", test_swiglu},
    {"attention_rows", test_attention_rows},
    {NULL, NULL},
};
