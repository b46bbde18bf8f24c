/*
 * test_train_ops.c - gradient checks of the training ops (src/train/ops.h).
 *
 * For every op, on random small shapes (odd sizes, strides wider than the
 * rows where the op takes strides):
 *  - fd: the fp64 instance's backward against central finite differences of
 *    the scalar L = sum(r * y) (r a fixed random cotangent; the loss itself
 *    for cross-entropy), over every input and parameter;
 *  - f32: the fp32 instance agrees with the fp64 instance, forward and
 *    backward, on the same (float-representable) inputs.
 * Plus a composed MLA attention block (q/kv projections, RMSNorm on the
 * latent, RoPE on q_pe and the shared k_pe, per-head attention, o_proj)
 * checked end to end, which exercises the split/concat helpers.
 *
 * Tolerances.
 *  FD: step h = 1e-5 on inputs of size O(1). The central difference has a
 *  truncation error of h^2/6 |L'''| ~ 2e-11 |L'''| and a rounding error of
 *  about eps_64 |L| / h ~ 1e-11 |L|; with L and its derivatives O(1..10) on
 *  these shapes both are < 1e-9 of the gradient's size. We compare with the
 *  max-norm relative error max|fd - an| / max|an| (element-wise relative
 *  error is meaningless for gradients that are ~0, e.g. masked keys) and
 *  require <= 1e-6: three orders above the expected noise, while any wrong
 *  term in a backward formula gives an error of order 1.
 *  f32 vs f64: the ops sum in double in both instances, so the fp32 results
 *  differ from the fp64 ones by rounding at stores (a few ulp, ~1e-7
 *  relative) plus attention's fp32 accumulation of O over <= n rows; we
 *  allow 1e-5 relative, scaled by the tensor's max magnitude for values near
 *  zero.
 */
#include <stdlib.h>
#include <string.h>

#include "test.h"
#include "train/ops.h"

#define FD_H 1e-5
#define FD_TOL 1e-6
#define AGREE_TOL 1e-5

/* ---- small helpers: comparisons (allocation and random data: test.h) ---- */

static double maxabs(const double *x, int64_t n) {
    double m = 0;
    for (int64_t i = 0; i < n; i++) m = fabs(x[i]) > m ? fabs(x[i]) : m;
    return m;
}

static double dotd(const double *a, const double *b, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

static int verbose(void) { return getenv("DSC_TEST_VERBOSE") != NULL; }

/* fp32 result against the fp64 one (see the header for the tolerance). */
static void agree(dsc_t *t, const char *what, const float *got, const double *want, int64_t n) {
    double m = maxabs(want, n);
    double d = t_close_f64(t, what, got, want, n, AGREE_TOL * m + 1e-30, AGREE_TOL);
    if (verbose()) printf("      f32 %-12s max|d|/max|want| = %.2e\n", what, m > 0 ? d / m : d);
}

/* ---- the finite-difference checker ---- */

typedef struct {
    const char *name;
    double *x;            /* the input, perturbed in place    */
    const double *grad;   /* the analytic dL/dx               */
    int64_t n;
} fd_var;

typedef double (*loss_fn)(void *ctx);

static void fd_check(dsc_t *t, const char *op, loss_fn f, void *ctx, const fd_var *v, int nv) {
    for (int k = 0; k < nv; k++) {
        double maxd = 0, m = maxabs(v[k].grad, v[k].n);
        int64_t worst = 0;
        for (int64_t i = 0; i < v[k].n; i++) {
            double x0 = v[k].x[i];
            v[k].x[i] = x0 + FD_H;
            double lp = f(ctx);
            v[k].x[i] = x0 - FD_H;
            double lm = f(ctx);
            v[k].x[i] = x0;
            double d = fabs((lp - lm) / (2 * FD_H) - v[k].grad[i]);
            if (d > maxd) maxd = d, worst = i;
        }
        double rel = maxd / (m > 0 ? m : 1.0);
        if (verbose()) printf("      fd  %s d%-10s rel err %.2e (max|g| %.2g)\n", op, v[k].name, rel, m);
        T_CHECK(t, m > 0, "%s: gradient of %s is all zero (test cannot fail)", op, v[k].name);
        T_CHECK(t, rel <= FD_TOL, "%s: d%s[%lld] off by %.3g, rel err %.3g > %.0e", op,
                v[k].name, (long long)worst, maxd, rel, FD_TOL);
    }
}

/* ---- 1. embedding ---- */

typedef struct {
    double *W, *r, *y;
    const int32_t *ids;
    int64_t n, d;
} embed_ctx;

static double embed_loss(void *p) {
    embed_ctx *c = p;
    dsc_op_embed_fwd_f64(c->y, c->W, c->ids, c->n, c->d);
    return dotd(c->r, c->y, c->n * c->d);
}

static void test_embed(dsc_t *t) {
    t_pool pl = {0};
    t_rng r = {101};
    enum { V = 5, D = 3, N = 7 };
    static const int32_t ids[N] = {4, 0, 2, 4, 1, 4, 0};   /* repeats: scatter-add */
    embed_ctx c = {t_rnd(&pl, &r, V * D, 1), t_rnd(&pl, &r, N * D, 1), t_dalloc(&pl, N * D), ids, N, D};
    double *dW = t_dalloc(&pl, V * D);
    dsc_op_embed_bwd_f64(dW, c.r, ids, N, D);
    fd_var v[] = {{"W", c.W, dW, V * D}};
    fd_check(t, "embed", embed_loss, &c, v, 1);

    float *y32 = t_falloc(&pl, N * D), *dW32 = t_falloc(&pl, V * D);
    dsc_op_embed_fwd_f32(y32, t_to_f32(&pl, c.W, V * D), ids, N, D);
    dsc_op_embed_bwd_f32(dW32, t_to_f32(&pl, c.r, N * D), ids, N, D);
    embed_loss(&c);
    agree(t, "y", y32, c.y, N * D);
    agree(t, "dW", dW32, dW, V * D);
    t_pool_free(&pl);
}

/* ---- 2. RMSNorm ---- */

typedef struct {
    double *x, *w, *r, *y;
    int64_t n, d;
    double eps;
} rms_ctx;

static double rms_loss(void *p) {
    rms_ctx *c = p;
    dsc_op_rmsnorm_fwd_f64(c->y, c->x, c->w, c->n, c->d, c->eps);
    return dotd(c->r, c->y, c->n * c->d);
}

static void test_rmsnorm(dsc_t *t) {
    t_pool pl = {0};
    t_rng r = {202};
    enum { N = 3, D = 7 };
    rms_ctx c = {t_rnd(&pl, &r, N * D, 1), t_rnd(&pl, &r, D, 1), t_rnd(&pl, &r, N * D, 1),
                 t_dalloc(&pl, N * D), N, D, 1e-6};
    double *dx = t_dalloc(&pl, N * D), *dw = t_dalloc(&pl, D);
    dsc_op_rmsnorm_bwd_f64(dx, dw, c.r, c.x, c.w, N, D, c.eps);
    fd_var v[] = {{"x", c.x, dx, N * D}, {"w", c.w, dw, D}};
    fd_check(t, "rmsnorm", rms_loss, &c, v, 2);

    float *y32 = t_falloc(&pl, N * D), *dx32 = t_falloc(&pl, N * D), *dw32 = t_falloc(&pl, D);
    float *x32 = t_to_f32(&pl, c.x, N * D), *w32 = t_to_f32(&pl, c.w, D);
    dsc_op_rmsnorm_fwd_f32(y32, x32, w32, N, D, c.eps);
    dsc_op_rmsnorm_bwd_f32(dx32, dw32, t_to_f32(&pl, c.r, N * D), x32, w32, N, D, c.eps);
    rms_loss(&c);
    agree(t, "y", y32, c.y, N * D);
    agree(t, "dx", dx32, dx, N * D);
    agree(t, "dw", dw32, dw, D);
    t_pool_free(&pl);
}

/* ---- 3. linear ---- */

typedef struct {
    double *x, *W, *r, *y;
    int64_t n, din, dout;
} lin_ctx;

static double lin_loss(void *p) {
    lin_ctx *c = p;
    dsc_op_linear_fwd_f64(c->y, c->x, c->W, c->n, c->din, c->dout);
    return dotd(c->r, c->y, c->n * c->dout);
}

static void test_linear(dsc_t *t) {
    t_pool pl = {0};
    t_rng r = {303};
    enum { N = 3, DIN = 5, DOUT = 4 };
    lin_ctx c = {t_rnd(&pl, &r, N * DIN, 1), t_rnd(&pl, &r, DOUT * DIN, 1), t_rnd(&pl, &r, N * DOUT, 1),
                 t_dalloc(&pl, N * DOUT), N, DIN, DOUT};
    double *dx = t_dalloc(&pl, N * DIN), *dW = t_dalloc(&pl, DOUT * DIN);
    dsc_op_linear_bwd_f64(dx, dW, c.r, c.x, c.W, N, DIN, DOUT);
    fd_var v[] = {{"x", c.x, dx, N * DIN}, {"W", c.W, dW, DOUT * DIN}};
    fd_check(t, "linear", lin_loss, &c, v, 2);

    float *y32 = t_falloc(&pl, N * DOUT), *dx32 = t_falloc(&pl, N * DIN), *dW32 = t_falloc(&pl, DOUT * DIN);
    float *x32 = t_to_f32(&pl, c.x, N * DIN), *W32 = t_to_f32(&pl, c.W, DOUT * DIN);
    dsc_op_linear_fwd_f32(y32, x32, W32, N, DIN, DOUT);
    dsc_op_linear_bwd_f32(dx32, dW32, t_to_f32(&pl, c.r, N * DOUT), x32, W32, N, DIN, DOUT);
    lin_loss(&c);
    agree(t, "y", y32, c.y, N * DOUT);
    agree(t, "dx", dx32, dx, N * DIN);
    agree(t, "dW", dW32, dW, DOUT * DIN);
    t_pool_free(&pl);
}

/* ---- 4. SwiGLU ---- */

typedef struct {
    double *g, *u, *r, *h;
    int64_t m;
} swi_ctx;

static double swi_loss(void *p) {
    swi_ctx *c = p;
    dsc_op_swiglu_fwd_f64(c->h, c->g, c->u, c->m);
    return dotd(c->r, c->h, c->m);
}

static void test_swiglu(dsc_t *t) {
    t_pool pl = {0};
    t_rng r = {404};
    enum { M = 11 };
    /* g spread wide (sd 3) so both tails of the sigmoid are exercised */
    swi_ctx c = {t_rnd(&pl, &r, M, 3), t_rnd(&pl, &r, M, 1), t_rnd(&pl, &r, M, 1), t_dalloc(&pl, M), M};
    double *dg = t_dalloc(&pl, M), *du = t_dalloc(&pl, M);
    dsc_op_swiglu_bwd_f64(dg, du, c.r, c.g, c.u, M);
    fd_var v[] = {{"g", c.g, dg, M}, {"u", c.u, du, M}};
    fd_check(t, "swiglu", swi_loss, &c, v, 2);

    float *h32 = t_falloc(&pl, M), *dg32 = t_falloc(&pl, M), *du32 = t_falloc(&pl, M);
    float *g32 = t_to_f32(&pl, c.g, M), *u32 = t_to_f32(&pl, c.u, M);
    dsc_op_swiglu_fwd_f32(h32, g32, u32, M);
    dsc_op_swiglu_bwd_f32(dg32, du32, t_to_f32(&pl, c.r, M), g32, u32, M);
    swi_loss(&c);
    agree(t, "h", h32, c.h, M);
    agree(t, "dg", dg32, dg, M);
    agree(t, "du", du32, du, M);
    t_pool_free(&pl);
}

/* ---- 5. RoPE ---- */

typedef struct {
    double *x, *r, *tmp, *cs, *sn;
    const int32_t *pos;
    dsc_op_rope_slice s;
    int64_t len;
    int interleaved;
} rope_ctx;

static double rope_loss(void *p) {
    rope_ctx *c = p;
    memcpy(c->tmp, c->x, (size_t)c->len * sizeof *c->tmp);
    dsc_op_rope_fwd_f64(c->tmp, &c->s, c->pos, c->cs, c->sn, c->interleaved);
    return dotd(c->r, c->tmp, c->len);
}

/* 5 tokens x 2 slices of 7 (rope part: dims 2..5 of each slice), rows 15
   wide; positions out of order. Elements outside the slice pass through, so
   their gradient (identity) is checked too. */
static void rope_case(dsc_t *t, int interleaved) {
    t_pool pl = {0};
    t_rng r = {505u + (uint64_t)interleaved};
    enum { N = 5, NPOS = 6, DIM = 4, LD = 15 };
    static const int32_t pos[N] = {3, 0, 5, 1, 2};
    double *cs = t_dalloc(&pl, NPOS * DIM / 2), *sn = t_dalloc(&pl, NPOS * DIM / 2);
    for (int i = 0; i < NPOS * DIM / 2; i++) {
        double a = 6.283185307179586 * t_rng_uniform(&r);
        cs[i] = (float)cos(a), sn[i] = (float)sin(a);
    }
    rope_ctx c = {t_rnd(&pl, &r, N * LD, 1), t_rnd(&pl, &r, N * LD, 1), t_dalloc(&pl, N * LD), cs, sn,
                  pos, {N, LD, 2, 7, 2, DIM}, N * LD, interleaved};
    double *dx = t_dalloc(&pl, N * LD);
    memcpy(dx, c.r, sizeof(double) * N * LD);
    dsc_op_rope_bwd_f64(dx, &c.s, pos, cs, sn, interleaved);
    fd_var v[] = {{"x", c.x, dx, N * LD}};
    fd_check(t, interleaved ? "rope_interleaved" : "rope_half", rope_loss, &c, v, 1);

    float *x32 = t_to_f32(&pl, c.x, N * LD), *dx32 = t_to_f32(&pl, c.r, N * LD);
    float *cs32 = t_to_f32(&pl, cs, NPOS * DIM / 2), *sn32 = t_to_f32(&pl, sn, NPOS * DIM / 2);
    dsc_op_rope_fwd_f32(x32, &c.s, pos, cs32, sn32, interleaved);
    dsc_op_rope_bwd_f32(dx32, &c.s, pos, cs32, sn32, interleaved);
    rope_loss(&c);
    agree(t, "y", x32, c.tmp, N * LD);
    agree(t, "dx", dx32, dx, N * LD);
    t_pool_free(&pl);
}

static void test_rope_interleaved(dsc_t *t) { rope_case(t, 1); }
static void test_rope_half(dsc_t *t) { rope_case(t, 0); }

/* ---- 6. attention ---- */

typedef struct {
    double *Q, *K, *V, *r, *O, *lse;
    dsc_op_attn_dims d;
    double scale;
} attn_ctx;

static double attn_loss(void *p) {
    attn_ctx *c = p;
    dsc_op_attn_fwd_f64(c->O, c->lse, c->Q, c->K, c->V, &c->d, c->scale);
    return dotd(c->r, c->O, c->d.n * c->d.ldo);
}

/* n = 7 queries, dqk 5, dv 3; every stride wider than its row (the padding
   columns must get no gradient and are part of the FD check). */
static void test_attention(dsc_t *t) {
    t_pool pl = {0};
    t_rng r = {606};
    enum { N = 7, DQK = 5, DV = 3 };
    dsc_op_attn_dims d = {N, DQK, DV, 8, 6, 4, 5};
    attn_ctx c = {t_rnd(&pl, &r, N * d.ldq, 1), t_rnd(&pl, &r, N * d.ldk, 1), t_rnd(&pl, &r, N * d.ldv, 1),
                  t_rnd(&pl, &r, N * d.ldo, 1), t_dalloc(&pl, N * d.ldo), t_dalloc(&pl, N), d,
                  0.8 * 1.8738542 / sqrt(DQK)};
    for (int64_t i = 0; i < N; i++)   /* the padding of O is never written: r = 0 there */
        for (int64_t j = DV; j < d.ldo; j++) c.r[i * d.ldo + j] = 0;
    double *dQ = t_dalloc(&pl, N * d.ldq), *dK = t_dalloc(&pl, N * d.ldk), *dV = t_dalloc(&pl, N * d.ldv);
    attn_loss(&c);
    dsc_op_attn_bwd_f64(dQ, dK, dV, c.r, c.Q, c.K, c.V, c.O, c.lse, &d, c.scale);
    fd_var v[] = {{"Q", c.Q, dQ, N * d.ldq}, {"K", c.K, dK, N * d.ldk}, {"V", c.V, dV, N * d.ldv}};
    fd_check(t, "attention", attn_loss, &c, v, 3);

    float *Q32 = t_to_f32(&pl, c.Q, N * d.ldq), *K32 = t_to_f32(&pl, c.K, N * d.ldk);
    float *V32 = t_to_f32(&pl, c.V, N * d.ldv), *O32 = t_falloc(&pl, N * d.ldo), *l32 = t_falloc(&pl, N);
    float *dQ32 = t_falloc(&pl, N * d.ldq), *dK32 = t_falloc(&pl, N * d.ldk), *dV32 = t_falloc(&pl, N * d.ldv);
    dsc_op_attn_fwd_f32(O32, l32, Q32, K32, V32, &d, c.scale);
    dsc_op_attn_bwd_f32(dQ32, dK32, dV32, t_to_f32(&pl, c.r, N * d.ldo), Q32, K32, V32, O32, l32, &d,
                        c.scale);
    attn_loss(&c);
    agree(t, "O", O32, c.O, N * d.ldo);
    agree(t, "lse", l32, c.lse, N);
    agree(t, "dQ", dQ32, dQ, N * d.ldq);
    agree(t, "dK", dK32, dK, N * d.ldk);
    agree(t, "dV", dV32, dV, N * d.ldv);
    t_pool_free(&pl);
}

/* The causal mask: with a gradient only on the outputs of queries 0..2, the
   keys and values of positions 3.. (and the later queries) get exactly 0,
   and position 2's key/value do get gradient. Also query 0 sees only key 0,
   so O[0] == V[0]. */
static void test_attention_causal(dsc_t *t) {
    t_pool pl = {0};
    t_rng r = {607};
    enum { N = 6, DQK = 4, DV = 3, SEEN = 3 };
    dsc_op_attn_dims d = {N, DQK, DV, DQK, DQK, DV, DV};
    double *Q = t_rnd(&pl, &r, N * DQK, 1), *K = t_rnd(&pl, &r, N * DQK, 1), *V = t_rnd(&pl, &r, N * DV, 1);
    double *O = t_dalloc(&pl, N * DV), *lse = t_dalloc(&pl, N), *dO = t_rnd(&pl, &r, N * DV, 1);
    for (int64_t i = SEEN * DV; i < N * DV; i++) dO[i] = 0;
    double *dQ = t_dalloc(&pl, N * DQK), *dK = t_dalloc(&pl, N * DQK), *dV = t_dalloc(&pl, N * DV);
    dsc_op_attn_fwd_f64(O, lse, Q, K, V, &d, 0.5);
    dsc_op_attn_bwd_f64(dQ, dK, dV, dO, Q, K, V, O, lse, &d, 0.5);
    for (int64_t i = SEEN * DQK; i < N * DQK; i++) {
        T_CHECK(t, dK[i] == 0.0, "dK[%lld] = %g: a future key got gradient", (long long)i, dK[i]);
        T_CHECK(t, dQ[i] == 0.0, "dQ[%lld] = %g without upstream gradient", (long long)i, dQ[i]);
    }
    for (int64_t i = SEEN * DV; i < N * DV; i++)
        T_CHECK(t, dV[i] == 0.0, "dV[%lld] = %g: a future value got gradient", (long long)i, dV[i]);
    T_CHECK(t, maxabs(dK + (SEEN - 1) * DQK, DQK) > 0 && maxabs(dV + (SEEN - 1) * DV, DV) > 0,
            "the last visible key/value got no gradient");
    /* exact up to rounding of p = exp(s - lse) = 1 */
    for (int64_t c = 0; c < DV; c++)
        T_CHECK(t, fabs(O[c] - V[c]) <= 1e-15, "O[0][%lld] = %g, V[0] = %g", (long long)c, O[c], V[c]);
    t_pool_free(&pl);
}

/* ---- MLA block composed from the ops (V2-Lite form: q = x Wq^T) ---- */

enum { MN = 5, MD = 6, MH = 2, MDN = 3, MDR = 2, MDV = 3, MDC = 4 };
enum { MQK = MDN + MDR, MKV = MDN + MDV };

typedef struct {
    double *x, *Wq, *Wa, *wn, *Wb, *Wo, *r, *cs, *sn;   /* inputs, params, cotangent */
    double *q, *a, *c, *cn, *kpe, *kv, *k, *o, *lse, *out;   /* activations */
    dsc_op_rope_slice qs, ks;
    dsc_op_attn_dims ad;
    double scale;
} mla_ctx;

static double mla_loss(void *p) {
    mla_ctx *m = p;
    dsc_op_linear_fwd_f64(m->q, m->x, m->Wq, MN, MD, MH * MQK);
    dsc_op_rope_fwd_f64(m->q, &m->qs, NULL, m->cs, m->sn, 1);
    dsc_op_linear_fwd_f64(m->a, m->x, m->Wa, MN, MD, MDC + MDR);
    dsc_op_copy_cols_f64(m->c, MDC, m->a, MDC + MDR, MN, MDC);
    dsc_op_copy_cols_f64(m->kpe, MDR, m->a + MDC, MDC + MDR, MN, MDR);
    dsc_op_rmsnorm_fwd_f64(m->cn, m->c, m->wn, MN, MDC, 1e-6);
    dsc_op_rope_fwd_f64(m->kpe, &m->ks, NULL, m->cs, m->sn, 1);
    dsc_op_linear_fwd_f64(m->kv, m->cn, m->Wb, MN, MDC, MH * MKV);
    dsc_op_mla_k_fwd_f64(m->k, m->kv, m->kpe, MN, MH, MDN, MDR, MDV);
    for (int64_t h = 0; h < MH; h++)
        dsc_op_attn_fwd_f64(m->o + h * MDV, m->lse + h * MN, m->q + h * MQK, m->k + h * MN * MQK,
                            m->kv + h * MKV + MDN, &m->ad, m->scale);
    dsc_op_linear_fwd_f64(m->out, m->o, m->Wo, MN, MH * MDV, MD);
    return dotd(m->r, m->out, MN * MD);
}

static void test_mla_block(dsc_t *t) {
    t_pool pl = {0};
    t_rng r = {707};
    mla_ctx m = {0};
    m.x = t_rnd(&pl, &r, MN * MD, 1);
    m.Wq = t_rnd(&pl, &r, MH * MQK * MD, 0.5);
    m.Wa = t_rnd(&pl, &r, (MDC + MDR) * MD, 0.5);
    m.wn = t_rnd(&pl, &r, MDC, 1);
    m.Wb = t_rnd(&pl, &r, MH * MKV * MDC, 0.5);
    m.Wo = t_rnd(&pl, &r, MD * MH * MDV, 0.5);
    m.r = t_rnd(&pl, &r, MN * MD, 1);
    m.cs = t_dalloc(&pl, MN * MDR / 2), m.sn = t_dalloc(&pl, MN * MDR / 2);
    for (int64_t p = 0; p < MN; p++)   /* plain RoPE angles p * theta^(-2i/D) */
        for (int64_t i = 0; i < MDR / 2; i++) {
            double ang = (double)p * pow(10000.0, -2.0 * (double)i / MDR);
            m.cs[p * MDR / 2 + i] = cos(ang), m.sn[p * MDR / 2 + i] = sin(ang);
        }
    m.q = t_dalloc(&pl, MN * MH * MQK), m.a = t_dalloc(&pl, MN * (MDC + MDR));
    m.c = t_dalloc(&pl, MN * MDC), m.cn = t_dalloc(&pl, MN * MDC), m.kpe = t_dalloc(&pl, MN * MDR);
    m.kv = t_dalloc(&pl, MN * MH * MKV), m.k = t_dalloc(&pl, MH * MN * MQK);
    m.o = t_dalloc(&pl, MN * MH * MDV), m.lse = t_dalloc(&pl, MH * MN), m.out = t_dalloc(&pl, MN * MD);
    m.qs = (dsc_op_rope_slice){MN, MH * MQK, MH, MQK, MDN, MDR};
    m.ks = (dsc_op_rope_slice){MN, MDR, 1, MDR, 0, MDR};
    m.ad = (dsc_op_attn_dims){MN, MQK, MDV, MH * MQK, MQK, MH * MKV, MH * MDV};
    m.scale = 1.5896262 / sqrt(MQK);   /* V2-Lite's m^2 */
    mla_loss(&m);

    /* backward, in reverse order of mla_loss */
    double *dx = t_dalloc(&pl, MN * MD), *dWq = t_dalloc(&pl, MH * MQK * MD);
    double *dWa = t_dalloc(&pl, (MDC + MDR) * MD), *dwn = t_dalloc(&pl, MDC);
    double *dWb = t_dalloc(&pl, MH * MKV * MDC), *dWo = t_dalloc(&pl, MD * MH * MDV);
    double *dq = t_dalloc(&pl, MN * MH * MQK), *da = t_dalloc(&pl, MN * (MDC + MDR));
    double *dc = t_dalloc(&pl, MN * MDC), *dcn = t_dalloc(&pl, MN * MDC), *dkpe = t_dalloc(&pl, MN * MDR);
    double *dkv = t_dalloc(&pl, MN * MH * MKV), *dk = t_dalloc(&pl, MH * MN * MQK);
    double *dO = t_dalloc(&pl, MN * MH * MDV);
    dsc_op_linear_bwd_f64(dO, dWo, m.r, m.o, m.Wo, MN, MH * MDV, MD);
    for (int64_t h = 0; h < MH; h++)
        dsc_op_attn_bwd_f64(dq + h * MQK, dk + h * MN * MQK, dkv + h * MKV + MDN, dO + h * MDV,
                            m.q + h * MQK, m.k + h * MN * MQK, m.kv + h * MKV + MDN, m.o + h * MDV,
                            m.lse + h * MN, &m.ad, m.scale);
    dsc_op_mla_k_bwd_f64(dkv, dkpe, dk, MN, MH, MDN, MDR, MDV);
    dsc_op_linear_bwd_f64(dcn, dWb, dkv, m.cn, m.Wb, MN, MDC, MH * MKV);
    dsc_op_rope_bwd_f64(dkpe, &m.ks, NULL, m.cs, m.sn, 1);
    dsc_op_rmsnorm_bwd_f64(dc, dwn, dcn, m.c, m.wn, MN, MDC, 1e-6);
    dsc_op_add_cols_f64(da, MDC + MDR, dc, MDC, MN, MDC);
    dsc_op_add_cols_f64(da + MDC, MDC + MDR, dkpe, MDR, MN, MDR);
    dsc_op_linear_bwd_f64(dx, dWa, da, m.x, m.Wa, MN, MD, MDC + MDR);
    dsc_op_rope_bwd_f64(dq, &m.qs, NULL, m.cs, m.sn, 1);
    dsc_op_linear_bwd_f64(dx, dWq, dq, m.x, m.Wq, MN, MD, MH * MQK);

    fd_var v[] = {{"x", m.x, dx, MN * MD},          {"Wq", m.Wq, dWq, MH * MQK * MD},
                  {"Wkv_a", m.Wa, dWa, (MDC + MDR) * MD}, {"kv_norm", m.wn, dwn, MDC},
                  {"Wkv_b", m.Wb, dWb, MH * MKV * MDC},   {"Wo", m.Wo, dWo, MD * MH * MDV}};
    fd_check(t, "mla", mla_loss, &m, v, 6);
    t_pool_free(&pl);
}

/* ---- 7. MoE gate ---- */

typedef struct {
    double *z, *r, *g;
    const int32_t *idx;
    int64_t n;
    dsc_op_gate_params p;
} gate_ctx;

static double gate_loss(void *p) {
    gate_ctx *c = p;
    dsc_op_gate_fwd_f64(c->g, c->z, c->idx, c->n, &c->p);
    return dotd(c->r, c->g, c->n * c->p.k);
}

static void gate_case(dsc_t *t, dsc_scoring sf, int norm) {
    t_pool pl = {0};
    t_rng r = {808u + 2u * (uint64_t)sf + (uint64_t)norm};
    enum { N = 4, E = 7, K = 3 };
    static const int32_t idx[N * K] = {6, 0, 3, 2, 5, 1, 4, 1, 0, 3, 6, 5};
    gate_ctx c = {t_rnd(&pl, &r, N * E, 1.5), t_rnd(&pl, &r, N * K, 1), t_dalloc(&pl, N * K), idx, N,
                  {E, K, sf, norm, 2.5}};
    double *dz = t_dalloc(&pl, N * E);
    dsc_op_gate_bwd_f64(dz, c.r, c.z, idx, N, &c.p);
    char name[48];
    snprintf(name, sizeof name, "gate_%s%s", sf == DSC_SCORE_SOFTMAX ? "softmax" : "sigmoid",
             norm ? "_norm" : "");
    fd_var v[] = {{"z", c.z, dz, N * E}};
    fd_check(t, name, gate_loss, &c, v, 1);

    float *z32 = t_to_f32(&pl, c.z, N * E), *g32 = t_falloc(&pl, N * K), *dz32 = t_falloc(&pl, N * E);
    dsc_op_gate_fwd_f32(g32, z32, idx, N, &c.p);
    dsc_op_gate_bwd_f32(dz32, t_to_f32(&pl, c.r, N * K), z32, idx, N, &c.p);
    gate_loss(&c);
    agree(t, "g", g32, c.g, N * K);
    agree(t, "dz", dz32, dz, N * E);
    if (norm) {   /* normalised weights sum to the scaling factor */
        for (int64_t i = 0; i < N; i++) {
            double s = c.g[i * K] + c.g[i * K + 1] + c.g[i * K + 2];
            T_CHECK(t, fabs(s - 2.5) <= 1e-14, "token %lld: gate weights sum to %.17g", (long long)i, s);
        }
    }
    t_pool_free(&pl);
}

static void test_gate(dsc_t *t) {
    gate_case(t, DSC_SCORE_SOFTMAX, 0);
    gate_case(t, DSC_SCORE_SOFTMAX, 1);
    gate_case(t, DSC_SCORE_SIGMOID, 0);
    gate_case(t, DSC_SCORE_SIGMOID, 1);
}

/* ---- 8. cross-entropy ---- */

typedef struct {
    double *z;
    const int32_t *tg;
    int64_t n, V;
} xent_ctx;

static double xent_loss(void *p) {
    xent_ctx *c = p;
    return dsc_op_xent_f64(NULL, c->z, c->tg, c->n, c->V, 1.0);
}

static void test_xent(dsc_t *t) {
    t_pool pl = {0};
    t_rng r = {909};
    enum { N = 5, V = 9 };
    static const int32_t tg[N] = {3, -1, 8, 0, 3};   /* token 1 ignored */
    xent_ctx c = {t_rnd(&pl, &r, N * V, 2), tg, N, V};
    double *dz = t_dalloc(&pl, N * V);
    double loss = dsc_op_xent_f64(dz, c.z, tg, N, V, 1.0);
    fd_var v[] = {{"logits", c.z, dz, N * V}};
    fd_check(t, "xent", xent_loss, &c, v, 1);
    for (int64_t j = 0; j < V; j++)
        T_CHECK(t, dz[1 * V + j] == 0.0, "ignored token got gradient %g", dz[V + j]);

    /* loss by hand for the mean over the 4 counted tokens */
    double want = 0;
    for (int64_t i = 0; i < N; i++) {
        if (tg[i] < 0) continue;
        double s = 0;
        for (int64_t j = 0; j < V; j++) s += exp(c.z[i * V + j]);
        want += log(s) - c.z[i * V + tg[i]];
    }
    want /= 4;
    T_CHECK(t, fabs(loss - want) <= 1e-14 * fabs(want), "loss %.17g want %.17g", loss, want);

    float *dz32 = t_falloc(&pl, N * V);
    double loss32 = dsc_op_xent_f32(dz32, t_to_f32(&pl, c.z, N * V), tg, N, V, 1.0);
    T_CHECK(t, fabs(loss32 - loss) <= AGREE_TOL * fabs(loss), "f32 loss %.9g vs %.9g", loss32, loss);
    agree(t, "dlogits", dz32, dz, N * V);

    /* dscale multiplies the gradient; nothing counted: loss 0, no gradient */
    double *dz2 = t_dalloc(&pl, N * V);
    dsc_op_xent_f64(dz2, c.z, tg, N, V, 0.25);
    for (int64_t i = 0; i < N * V; i++)
        T_CHECK(t, fabs(dz2[i] - 0.25 * dz[i]) <= 1e-16, "dscale: dz[%lld]", (long long)i);
    static const int32_t none[N] = {-1, -1, -1, -1, -1};
    double *dz3 = t_dalloc(&pl, N * V);
    T_CHECK(t, dsc_op_xent_f64(dz3, c.z, none, N, V, 1.0) == 0.0, "all ignored: loss not 0");
    T_CHECK(t, maxabs(dz3, N * V) == 0.0, "all ignored: gradient not 0");
    t_pool_free(&pl);
}

const dsc_test_case dsc_tests_train_ops[] = {
    {"embed", test_embed},
    {"rmsnorm", test_rmsnorm},
    {"linear", test_linear},
    {"swiglu", test_swiglu},
    {"rope_interleaved", test_rope_interleaved},
    {"rope_half", test_rope_half},
    {"attention", test_attention},
    {"attention_causal", test_attention_causal},
    {"mla_block", test_mla_block},
    {"gate", test_gate},
    {"xent", test_xent},
    {NULL, NULL},
};
