/*
 * test_idx_ops.c - checks of the DSA indexer's training ops
 * (src/train/idx_ops.h): the score, its backward, the KL loss of spec §4.6,
 * the recall metric and LayerNorm with bias.
 *
 *  - fd_dense / fd_sparse: the fp64 gradients of loss = KL(P || softmax I)
 *    (I = idx_score(q, k, w)) w.r.t. q, k, w against central finite
 *    differences; the inputs are drawn so that every visible q.k is at least
 *    KINK_MIN away from the ReLU kink (checked), so a step of FD_H never
 *    changes the ReLU pattern. fd_dense uses D_I = 67 > the 64-dim chunk of
 *    the backward, so the chunked accumulation is covered.
 *  - layernorm: fd of sum(r * y) w.r.t. x, g, b.
 *  - f32: the fp32 instance against the fp64 one on the same inputs.
 *  - torch: the whole indexer chain (LayerNorm + bias, half-split RoPE on the
 *    first dims, score, KL, and back) against torch autograd in float32
 *    (tests/fixtures/idx, tests/reference/make_idx_fixtures.py), dense and
 *    sparse forms.
 *  - causal: query t writes no gradient into k rows s > t, whatever dI
 *    holds there; a query with one visible key, and a sparse query with
 *    none, give finite values (KL 0, gradient 0), never NaN.
 *  - recall: hand-made cases with exact values.
 *
 * Tolerances.
 *  FD: h = 1e-5 on O(1) inputs: truncation ~h^2 |L'''| and rounding
 *  ~eps_64 |L| / h are both ~1e-11; we require max|fd - an| / max|an|
 *  <= 1e-6 (as test_train_ops.c), while a wrong term gives O(1).
 *  f32 vs f64: both instances sum in double and differ by rounding at
 *  stores (a few fp32 ulp, ~1e-7 relative); 1e-5 relative (of the tensor's
 *  max magnitude).
 *  torch: torch float32 itself is within ~2e-7 of float64 here (measured by
 *  the script, which asserts < 1e-5); we require 1e-5 relative (max-norm)
 *  for loss and every gradient, for both instances.
 */
#include <stdlib.h>
#include <string.h>

#include "test.h"
#include "train/idx_ops.h"
#include "train/ops.h"

#define FD_H 1e-5
#define FD_TOL 1e-6
#define AGREE_TOL 1e-5
#define TORCH_TOL 1e-5
#define KINK_MIN 1e-3

static int verbose(void) { return getenv("DSC_TEST_VERBOSE") != NULL; }

static double maxabs(const double *x, int64_t n) {
    double m = 0;
    for (int64_t i = 0; i < n; i++) m = fabs(x[i]) > m ? fabs(x[i]) : m;
    return m;
}

static void agree(dsc_t *t, const char *what, const float *got, const double *want, int64_t n) {
    double m = maxabs(want, n);
    double d = t_close_f64(t, what, got, want, n, AGREE_TOL * m + 1e-30, AGREE_TOL);
    if (verbose()) printf("      f32 %-10s max|d|/max|want| = %.2e\n", what, m > 0 ? d / m : d);
}

/* ---- the problem: q, k, w, P and (sparse) sel ---- */

typedef struct {
    dsc_idx_dims d;
    double *q, *k, *w, *P;    /* P (n, m): dense (n, n), sparse (n, kk) */
    int32_t *sel;             /* NULL: dense */
    double *I;                /* (n, m) scratch */
    int64_t m;
} prob;

static double kl_loss(void *p) {
    prob *c = p;
    dsc_op_idx_score_fwd_f64(c->I, c->q, c->k, c->w, c->sel, &c->d);
    return dsc_op_idx_kl_f64(NULL, c->I, c->P, c->d.n, c->m, 1.0);
}

/* Smallest |q[t,h] . k[s]| over the visible pairs (the distance to a kink). */
static double min_kink(const prob *c) {
    int64_t n = c->d.n, H = c->d.heads, D = c->d.dim;
    double mn = INFINITY;
    for (int64_t t = 0; t < n; t++)
        for (int64_t s = 0; s <= t; s++)
            for (int64_t h = 0; h < H; h++) {
                double dot = 0;
                for (int64_t i = 0; i < D; i++) dot += c->q[(t * H + h) * D + i] * c->k[s * D + i];
                mn = fabs(dot) < mn ? fabs(dot) : mn;
            }
    return mn;
}

/* P: random non-negative, rows not normalised (the op normalises); zero at
   some visible entries so that 0 log 0 is exercised. */
static double *make_P(t_pool *pl, t_rng *r, int64_t n, int64_t m) {
    double *P = t_dalloc(pl, n * m);
    for (int64_t i = 0; i < n * m; i++) {
        float u = t_rng_uniform(r);
        P[i] = u < 0.15f ? 0.0 : (double)(float)(u * u * 3.0f);
    }
    return P;
}

/* Sparse selection: kk distinct keys of [0, t] in random order, -1 padded
   when t + 1 < kk; one slot per row also names a future key (masked). */
static int32_t *make_sel(t_pool *pl, t_rng *r, int64_t n, int64_t kk) {
    int32_t *sel = t_palloc(pl, n * kk * 4);
    for (int64_t t = 0; t < n; t++) {
        int64_t nv = t + 1 < kk ? t + 1 : kk;
        int32_t pool[64];
        for (int64_t s = 0; s <= t; s++) pool[s] = (int32_t)s;
        for (int64_t j = 0; j < nv; j++) {   /* partial Fisher-Yates */
            int64_t x = j + (int64_t)(t_rng_u64(r) % (uint64_t)(t + 1 - j));
            int32_t tmp = pool[j];
            pool[j] = pool[x], pool[x] = tmp;
            sel[t * kk + j] = pool[j];
        }
        for (int64_t j = nv; j < kk; j++) sel[t * kk + j] = j == nv && t + 1 < n ? (int32_t)(t + 1) : -1;
    }
    return sel;
}

static void fd_var(dsc_t *t, const char *op, const char *name, prob *c, double *x,
                   const double *grad, int64_t n) {
    double maxd = 0, m = maxabs(grad, n);
    int64_t worst = 0;
    for (int64_t i = 0; i < n; i++) {
        double x0 = x[i];
        x[i] = x0 + FD_H;
        double lp = kl_loss(c);
        x[i] = x0 - FD_H;
        double lm = kl_loss(c);
        x[i] = x0;
        double d = fabs((lp - lm) / (2 * FD_H) - grad[i]);
        if (d > maxd) maxd = d, worst = i;
    }
    double rel = maxd / (m > 0 ? m : 1.0);
    if (verbose()) printf("      fd  %s d%-2s rel err %.2e (max|g| %.2g)\n", op, name, rel, m);
    T_CHECK(t, m > 0, "%s: gradient of %s is all zero (test cannot fail)", op, name);
    T_CHECK(t, rel <= FD_TOL, "%s: d%s[%lld] off by %.3g, rel err %.3g > %.0e", op, name,
            (long long)worst, maxd, rel, FD_TOL);
}

/* FD of the fp64 instance, then the fp32 instance against the fp64 one. */
static void kl_case(dsc_t *t, const char *op, uint64_t seed, int64_t n, int64_t H, int64_t D,
                    int64_t kk) {
    t_pool pl = {0};
    t_rng r = {seed};
    prob c = {.d = {n, H, D, kk}};
    c.q = t_rnd(&pl, &r, n * H * D, 1);
    c.k = t_rnd(&pl, &r, n * D, 1);
    c.w = t_rnd(&pl, &r, n * H, 0.7);
    c.sel = kk ? make_sel(&pl, &r, n, kk) : NULL;
    c.m = kk ? kk : n;
    c.P = make_P(&pl, &r, n, c.m);
    c.I = t_dalloc(&pl, n * c.m);
    double kink = min_kink(&c);
    T_CHECK(t, kink >= KINK_MIN, "%s: a visible q.k is %.2e from the ReLU kink: change the seed", op,
            kink);

    double *dI = t_dalloc(&pl, n * c.m), *dq = t_dalloc(&pl, n * H * D), *dk = t_dalloc(&pl, n * D),
           *dw = t_dalloc(&pl, n * H);
    dsc_op_idx_score_fwd_f64(c.I, c.q, c.k, c.w, c.sel, &c.d);
    double loss = dsc_op_idx_kl_f64(dI, c.I, c.P, n, c.m, 1.0);
    dsc_op_idx_score_bwd_f64(dq, dk, dw, dI, c.q, c.k, c.w, c.sel, &c.d);
    T_CHECK(t, loss > 0 && isfinite(loss), "%s: loss %g", op, loss);
    fd_var(t, op, "q", &c, c.q, dq, n * H * D);
    fd_var(t, op, "k", &c, c.k, dk, n * D);
    fd_var(t, op, "w", &c, c.w, dw, n * H);

    /* fp32 instance on the same (float-representable) inputs */
    float *I32 = t_falloc(&pl, n * c.m), *dI32 = t_falloc(&pl, n * c.m);
    float *dq32 = t_falloc(&pl, n * H * D), *dk32 = t_falloc(&pl, n * D), *dw32 = t_falloc(&pl, n * H);
    float *q32 = t_to_f32(&pl, c.q, n * H * D), *k32 = t_to_f32(&pl, c.k, n * D),
          *w32 = t_to_f32(&pl, c.w, n * H);
    dsc_op_idx_score_fwd_f32(I32, q32, k32, w32, c.sel, &c.d);
    double loss32 = dsc_op_idx_kl_f32(dI32, I32, t_to_f32(&pl, c.P, n * c.m), n, c.m, 1.0);
    dsc_op_idx_score_bwd_f32(dq32, dk32, dw32, dI32, q32, k32, w32, c.sel, &c.d);
    dsc_op_idx_score_fwd_f64(c.I, c.q, c.k, c.w, c.sel, &c.d);
    /* -inf entries compare equal (t_close treats inf == inf); finite ones by value */
    int64_t ninf = 0;
    for (int64_t i = 0; i < n * c.m; i++) {
        int a = !!isinf(c.I[i]), b = !!isinf(I32[i]);
        ninf += a;
        T_CHECK(t, a == b, "%s: I[%lld] masked in one instance only", op, (long long)i);
        if (a) I32[i] = 0, c.I[i] = 0;
    }
    T_CHECK(t, ninf > 0, "%s: no masked entry (test cannot fail)", op);
    agree(t, "I", I32, c.I, n * c.m);
    T_CHECK(t, fabs(loss32 - loss) <= AGREE_TOL * fabs(loss), "%s: loss f32 %.9g vs f64 %.9g", op,
            loss32, loss);
    agree(t, "dI", dI32, dI, n * c.m);
    agree(t, "dq", dq32, dq, n * H * D);
    agree(t, "dk", dk32, dk, n * D);
    agree(t, "dw", dw32, dw, n * H);
    t_pool_free(&pl);
}

static void test_fd_dense(dsc_t *t) { kl_case(t, "kl dense", 7001, 7, 3, 67, 0); }
static void test_fd_sparse(dsc_t *t) { kl_case(t, "kl sparse", 7002, 9, 3, 5, 4); }

/* ---- LayerNorm with bias ---- */

typedef struct {
    double *x, *g, *b, *r, *y;
    int64_t n, d;
} ln_ctx;

static double ln_loss(ln_ctx *c) {
    dsc_op_idx_layernorm_fwd_f64(c->y, c->x, c->g, c->b, c->n, c->d, 1e-6);
    double s = 0;
    for (int64_t i = 0; i < c->n * c->d; i++) s += c->r[i] * c->y[i];
    return s;
}

static void test_layernorm(dsc_t *t) {
    t_pool pl = {0};
    t_rng r = {7003};
    enum { N = 4, D = 70 };
    ln_ctx c = {t_rnd(&pl, &r, N * D, 1), t_rnd(&pl, &r, D, 1), t_rnd(&pl, &r, D, 1),
                t_rnd(&pl, &r, N * D, 1), t_dalloc(&pl, N * D), N, D};
    double *dx = t_dalloc(&pl, N * D), *dg = t_dalloc(&pl, D), *db = t_dalloc(&pl, D);
    dsc_op_idx_layernorm_bwd_f64(dx, dg, db, c.r, c.x, c.g, N, D, 1e-6);
    struct { const char *name; double *x; const double *g; int64_t n; } v[] = {
        {"x", c.x, dx, N * D}, {"g", c.g, dg, D}, {"b", c.b, db, D}};
    for (int k = 0; k < 3; k++) {
        double maxd = 0, m = maxabs(v[k].g, v[k].n);
        for (int64_t i = 0; i < v[k].n; i++) {
            double x0 = v[k].x[i];
            v[k].x[i] = x0 + FD_H;
            double lp = ln_loss(&c);
            v[k].x[i] = x0 - FD_H;
            double lm = ln_loss(&c);
            v[k].x[i] = x0;
            double d = fabs((lp - lm) / (2 * FD_H) - v[k].g[i]);
            maxd = d > maxd ? d : maxd;
        }
        if (verbose()) printf("      fd  layernorm d%s rel err %.2e\n", v[k].name, maxd / m);
        T_CHECK(t, m > 0 && maxd / m <= FD_TOL, "layernorm d%s rel err %.3g", v[k].name, maxd / m);
    }
    float *y32 = t_falloc(&pl, N * D), *dx32 = t_falloc(&pl, N * D), *dg32 = t_falloc(&pl, D),
          *db32 = t_falloc(&pl, D);
    float *x32 = t_to_f32(&pl, c.x, N * D), *g32 = t_to_f32(&pl, c.g, D);
    dsc_op_idx_layernorm_fwd_f32(y32, x32, g32, t_to_f32(&pl, c.b, D), N, D, 1e-6);
    dsc_op_idx_layernorm_bwd_f32(dx32, dg32, db32, t_to_f32(&pl, c.r, N * D), x32, g32, N, D, 1e-6);
    ln_loss(&c);
    agree(t, "ln y", y32, c.y, N * D);
    agree(t, "ln dx", dx32, dx, N * D);
    agree(t, "ln dg", dg32, dg, D);
    agree(t, "ln db", db32, db, D);
    t_pool_free(&pl);
}

/* ---- parity with torch (tests/fixtures/idx) ---- */

#define IDX_DIR "tests/fixtures/idx/"

static void *load(dsc_t *t, t_pool *pl, const char *name, int64_t bytes) {
    char path[128];
    snprintf(path, sizeof path, IDX_DIR "%s", name);
    size_t n = 0;
    void *p = t_read_file(path, &n);
    T_CHECK(t, p && n == (size_t)bytes, "%s: %s (%zu bytes, want %lld)", path,
            p ? "wrong size" : "missing", n, (long long)bytes);
    if (!p || n != (size_t)bytes) {
        free(p);
        return t_palloc(pl, bytes);   /* zeros: the comparisons then fail */
    }
    void *q = t_palloc(pl, bytes);
    memcpy(q, p, (size_t)bytes);
    free(p);
    return q;
}

/* Compare got against want (float32 file), relative to max|want|. */
static void vs_torch(dsc_t *t, const char *what, const double *got, const float *want, int64_t n) {
    double m = 0, d = 0;
    for (int64_t i = 0; i < n; i++) {
        m = fmax(m, fabs(want[i]));
        d = fmax(d, fabs(got[i] - want[i]));
    }
    if (verbose()) printf("      torch %-14s max|d|/max = %.2e\n", what, m > 0 ? d / m : d);
    T_CHECK(t, m > 0, "torch %s: all zero (test cannot fail)", what);
    T_CHECK(t, d <= TORCH_TOL * m, "torch %s: max|d| %.3g > %.0e * %.3g", what, d, TORCH_TOL, m);
}

/* The chain of idx_ops.h's header in T = double or float (is32), back to
   double for the comparison. */
#define CHAIN(SFX, TY)                                                                          \
    static double chain_##SFX(double *out_I, double **grads, const float *const *in,            \
                              const int32_t *sel, int64_t n, int64_t H, int64_t D, int64_t DR,  \
                              int64_t kk, t_pool *pl) {                                         \
        int64_t m = sel ? kk : n;                                                               \
        dsc_idx_dims d = {n, H, D, kk};                                                         \
        TY *x[8];                                                                               \
        const int64_t cnt[8] = {n * D, D, D, n * H * D, n * H, n * DR / 2, n * DR / 2, n * m};  \
        for (int i = 0; i < 8; i++) {                                                           \
            x[i] = t_palloc(pl, cnt[i] * (int64_t)sizeof(TY));                                  \
            for (int64_t j = 0; j < cnt[i]; j++) x[i][j] = (TY)in[i][j];                        \
        }                                                                                       \
        TY *kn = t_palloc(pl, n * D * (int64_t)sizeof(TY)), *k = t_palloc(pl, n * D * (int64_t)sizeof(TY)); \
        TY *q = t_palloc(pl, n * H * D * (int64_t)sizeof(TY));                                  \
        TY *I = t_palloc(pl, n * m * (int64_t)sizeof(TY)), *dI = t_palloc(pl, n * m * (int64_t)sizeof(TY)); \
        TY *dq = t_palloc(pl, n * H * D * (int64_t)sizeof(TY)), *dk = t_palloc(pl, n * D * (int64_t)sizeof(TY)); \
        TY *dw = t_palloc(pl, n * H * (int64_t)sizeof(TY)), *dxk = t_palloc(pl, n * D * (int64_t)sizeof(TY)); \
        TY *dg = t_palloc(pl, D * (int64_t)sizeof(TY)), *db = t_palloc(pl, D * (int64_t)sizeof(TY)); \
        dsc_op_rope_slice ks = {n, D, 1, D, 0, DR}, qs = {n, H * D, H, D, 0, DR};                \
        dsc_op_idx_layernorm_fwd_##SFX(kn, x[0], x[1], x[2], n, D, 1e-6);                       \
        memcpy(k, kn, (size_t)(n * D) * sizeof(TY));                                            \
        dsc_op_rope_fwd_##SFX(k, &ks, NULL, x[5], x[6], 0);                                     \
        memcpy(q, x[3], (size_t)(n * H * D) * sizeof(TY));                                      \
        dsc_op_rope_fwd_##SFX(q, &qs, NULL, x[5], x[6], 0);                                     \
        dsc_op_idx_score_fwd_##SFX(I, q, k, x[4], sel, &d);                                     \
        double loss = dsc_op_idx_kl_##SFX(dI, I, x[7], n, m, 1.0);                              \
        dsc_op_idx_score_bwd_##SFX(dq, dk, dw, dI, q, k, x[4], sel, &d);                        \
        dsc_op_rope_bwd_##SFX(dq, &qs, NULL, x[5], x[6], 0);                                    \
        dsc_op_rope_bwd_##SFX(dk, &ks, NULL, x[5], x[6], 0);                                    \
        dsc_op_idx_layernorm_bwd_##SFX(dxk, dg, db, dk, x[0], x[1], n, D, 1e-6);                \
        TY *g[5] = {dxk, dg, db, dq, dw};                                                       \
        const int64_t gc[5] = {n * D, D, D, n * H * D, n * H};                                  \
        for (int i = 0; i < 5; i++) {                                                           \
            grads[i] = t_dalloc(pl, gc[i]);                                                     \
            for (int64_t j = 0; j < gc[i]; j++) grads[i][j] = g[i][j];                          \
        }                                                                                       \
        for (int64_t j = 0; j < n * m; j++) out_I[j] = isinf(I[j]) ? 0.0 : I[j];                 \
        return loss;                                                                            \
    }
CHAIN(f32, float)
CHAIN(f64, double)

static void test_torch(dsc_t *t) {
    /* tests/fixtures/idx/meta.json */
    enum { N = 13, H = 3, D = 12, DR = 8, KK = 5 };
    t_pool pl = {0};
    static const char *iname[8] = {"xk.f32", "g.f32", "b.f32", "qraw.f32", "w.f32", "cos.f32", "sin.f32", "P.f32"};
    const int64_t icnt[8] = {N * D, D, D, N * H * D, N * H, N * DR / 2, N * DR / 2, N * N};
    const float *in[8];
    for (int i = 0; i < 8; i++) in[i] = load(t, &pl, iname[i], icnt[i] * 4);
    const int32_t *sel = load(t, &pl, "sel.i32", N * KK * 4);
    const float *Ps = load(t, &pl, "Ps.f32", N * KK * 4);
    static const char *gname[5] = {"dxk", "dg", "db", "dqraw", "dw"};
    const int64_t gc[5] = {N * D, D, D, N * H * D, N * H};
    for (int form = 0; form < 2; form++) {
        const char *fn = form ? "sparse" : "dense";
        int64_t m = form ? KK : N;
        const float *inf[8];
        memcpy(inf, in, sizeof inf);
        if (form) inf[7] = Ps;
        char name[64];
        snprintf(name, sizeof name, "I_%s.f32", fn);
        float *Iw = load(t, &pl, name, N * m * 4);
        for (int64_t j = 0; j < N * m; j++) Iw[j] = isinf(Iw[j]) ? 0.0f : Iw[j];
        snprintf(name, sizeof name, "loss_%s.f32", fn);
        const float *lw = load(t, &pl, name, 4);
        const float *gw[5];
        for (int i = 0; i < 5; i++) {
            snprintf(name, sizeof name, "%s_%s.f32", gname[i], fn);
            gw[i] = load(t, &pl, name, gc[i] * 4);
        }
        for (int inst = 0; inst < 2; inst++) {
            double *I = t_dalloc(&pl, N * m), *g[5];
            double loss = inst ? chain_f64(I, g, inf, form ? sel : NULL, N, H, D, DR, KK, &pl)
                               : chain_f32(I, g, inf, form ? sel : NULL, N, H, D, DR, KK, &pl);
            char what[40];
            snprintf(what, sizeof what, "%s %s loss", fn, inst ? "f64" : "f32");
            vs_torch(t, what, &loss, lw, 1);
            snprintf(what, sizeof what, "%s %s I", fn, inst ? "f64" : "f32");
            vs_torch(t, what, I, Iw, N * m);
            for (int i = 0; i < 5; i++) {
                snprintf(what, sizeof what, "%s %s %s", fn, inst ? "f64" : "f32", gname[i]);
                vs_torch(t, what, g[i], gw[i], gc[i]);
            }
        }
    }
    t_pool_free(&pl);
}

/* ---- causal mask and -inf handling ---- */

static void test_causal(dsc_t *t) {
    t_pool pl = {0};
    t_rng r = {7004};
    enum { N = 6, H = 2, D = 5 };
    dsc_idx_dims d = {N, H, D, 0};
    double *q = t_rnd(&pl, &r, N * H * D, 1), *k = t_rnd(&pl, &r, N * D, 1),
           *w = t_rnd(&pl, &r, N * H, 1), *I = t_dalloc(&pl, N * N), *dI = t_dalloc(&pl, N * N);
    dsc_op_idx_score_fwd_f64(I, q, k, w, NULL, &d);
    for (int64_t a = 0; a < N; a++)
        for (int64_t s = 0; s < N; s++)
            T_CHECK(t, (s > a) == (isinf(I[a * N + s]) && I[a * N + s] < 0), "I[%lld][%lld] = %g",
                    (long long)a, (long long)s, I[a * N + s]);
    /* query tq alone, dI = 1 everywhere in its row (masked entries too) */
    double any = 0;
    for (int64_t tq = 0; tq < N; tq++) {
        double *dk = t_dalloc(&pl, N * D);
        memset(dI, 0, N * N * sizeof *dI);
        for (int64_t s = 0; s < N; s++) dI[tq * N + s] = 1.0;
        dsc_op_idx_score_bwd_f64(NULL, dk, NULL, dI, q, k, w, NULL, &d);
        for (int64_t s = tq + 1; s < N; s++)
            for (int64_t c = 0; c < D; c++)
                T_CHECK(t, dk[s * D + c] == 0.0, "query %lld wrote dk[%lld][%lld] = %g",
                        (long long)tq, (long long)s, (long long)c, dk[s * D + c]);
        any = fmax(any, maxabs(dk, (tq + 1) * D));
    }
    T_CHECK(t, any > 0, "no gradient to any visible key (test cannot fail)");
    /* query 0 has one visible key: KL 0 and dI 0 there; the rest finite */
    double *P = make_P(&pl, &r, N, N);
    P[0] = 0.5;
    memset(dI, 0, N * N * sizeof *dI);
    double loss = dsc_op_idx_kl_f64(dI, I, P, N, N, 1.0);
    T_CHECK(t, isfinite(loss), "dense loss %g", loss);
    for (int64_t i = 0; i < N * N; i++) T_CHECK(t, isfinite(dI[i]), "dI[%lld] = %g", (long long)i, dI[i]);
    T_CHECK(t, dI[0] == 0.0, "one visible key: dI[0][0] = %g, want exactly 0", dI[0]);
    for (int64_t s = 1; s < N; s++) T_CHECK(t, dI[s] == 0.0, "masked dI[0][%lld] written", (long long)s);
    /* the single-key row alone: loss exactly 0 */
    double l0 = dsc_op_idx_kl_f64(NULL, I, P, 1, N, 1.0);
    T_CHECK(t, l0 == 0.0, "single visible key: loss %g, want 0", l0);

    /* sparse: row 0 selects nothing visible (-1 and a future key), row 1 one key */
    int32_t sel[N * 2] = {-1, 3, 1, -1, 0, 2, 1, 3, 4, 0, 5, 2};
    dsc_idx_dims ds = {N, H, D, 2};
    double *Is = t_dalloc(&pl, N * 2), *dIs = t_dalloc(&pl, N * 2), *Pss = make_P(&pl, &r, N, 2);
    Pss[2] = 1.0;
    dsc_op_idx_score_fwd_f64(Is, q, k, w, sel, &ds);
    T_CHECK(t, isinf(Is[0]) && isinf(Is[1]) && isinf(Is[3]) && !isinf(Is[2]), "sparse mask wrong");
    double ls = dsc_op_idx_kl_f64(dIs, Is, Pss, N, 2, 1.0);
    T_CHECK(t, isfinite(ls), "sparse loss %g", ls);
    for (int64_t i = 0; i < N * 2; i++) T_CHECK(t, isfinite(dIs[i]), "sparse dI[%lld] = %g", (long long)i, dIs[i]);
    T_CHECK(t, dIs[0] == 0 && dIs[1] == 0 && dIs[2] == 0 && dIs[3] == 0,
            "rows with <= 1 visible key got gradient");
    double *dq = t_dalloc(&pl, N * H * D), *dk = t_dalloc(&pl, N * D), *dw = t_dalloc(&pl, N * H);
    dsc_op_idx_score_bwd_f64(dq, dk, dw, dIs, q, k, w, sel, &ds);
    for (int64_t i = 0; i < N * H * D; i++) T_CHECK(t, isfinite(dq[i]), "sparse dq NaN");
    for (int64_t i = 0; i < H * D; i++) T_CHECK(t, dq[i] == 0.0, "query 0 (nothing visible) got dq");
    /* nothing visible anywhere: loss 0, no gradient */
    int32_t none[N * 2];
    for (int i = 0; i < N * 2; i++) none[i] = -1;
    dsc_op_idx_score_fwd_f64(Is, q, k, w, none, &ds);
    memset(dIs, 0, N * 2 * sizeof *dIs);
    T_CHECK(t, dsc_op_idx_kl_f64(dIs, Is, Pss, N, 2, 1.0) == 0.0, "empty loss not 0");
    T_CHECK(t, maxabs(dIs, N * 2) == 0.0, "empty rows got gradient");
    t_pool_free(&pl);
}

/* ---- recall ---- */

static void test_recall(dsc_t *t) {
    const double NI = -INFINITY;
    /* 3 queries, 4 columns (dense causal layout), k = 2.
       t=0: one visible key -> k_t = 1 = |V|: recall 1.
       t=1: two visible, k_t = 2 = |V|: recall 1.
       t=2: I picks keys {0, 2} (p 0.1 + 0.3 = 0.4); p's top-2 {1, 2} (0.6 + 0.3 = 0.9)
            -> 0.4 / 0.9. Key 3 is masked even though its P is large. */
    double I[12] = {1, NI, NI, NI, 0.5, 2, NI, NI, 3, 1, 2, NI};
    double P[12] = {1, 0, 0, 0, 0.2, 0.8, 0, 0, 0.1, 0.6, 0.3, 5};
    double per[3], ws[5];
    double mean = dsc_op_idx_recall_f64(I, P, 3, 4, 2, per, ws);
    T_CHECK(t, per[0] == 1.0 && per[1] == 1.0, "recall t<k: %g %g, want 1 1", per[0], per[1]);
    T_CHECK(t, fabs(per[2] - 0.4 / 0.9) < 1e-15, "recall t=2: %.17g, want 4/9", per[2]);
    T_CHECK(t, fabs(mean - (2.0 + 0.4 / 0.9) / 3.0) < 1e-15, "mean recall %.17g", mean);

    /* ties in I go to the lower column: I = {2, 2, 2, 1}, k = 2 -> columns 0, 1;
       P = {0, 1, 3, 0}: got 1, best 4 -> 0.25. A row of P all zero is not
       counted (-1). */
    double I2[8] = {2, 2, 2, 1, 1, 2, 3, 4};
    double P2[8] = {0, 1, 3, 0, 0, 0, 0, 0};
    double per2[2];
    double mean2 = dsc_op_idx_recall_f64(I2, P2, 2, 4, 2, per2, ws);
    T_CHECK(t, per2[0] == 0.25, "tie recall %.17g, want 0.25", per2[0]);
    T_CHECK(t, per2[1] == -1.0, "zero-mass row: %g, want -1", per2[1]);
    T_CHECK(t, mean2 == 0.25, "mean over counted rows %.17g, want 0.25", mean2);

    /* perfect indexer (I a monotone function of P) -> 1; reversed -> exact */
    double I3[5] = {5, 4, 3, 2, 1}, P3[5] = {0.5, 0.2, 0.15, 0.1, 0.05}, I4[5] = {1, 2, 3, 4, 5};
    T_CHECK(t, dsc_op_idx_recall_f64(I3, P3, 1, 5, 3, NULL, ws) == 1.0, "perfect indexer");
    double rv = dsc_op_idx_recall_f64(I4, P3, 1, 5, 3, NULL, ws);
    T_CHECK(t, fabs(rv - 0.3 / 0.85) < 1e-15, "reversed: %.17g, want 0.3/0.85", rv);
    /* f32 instance: same answer */
    float I4f[5] = {1, 2, 3, 4, 5}, P3f[5] = {0.5f, 0.2f, 0.15f, 0.1f, 0.05f};
    double rf = dsc_op_idx_recall_f32(I4f, P3f, 1, 5, 3, NULL, ws);
    T_CHECK(t, fabs(rf - 0.3 / 0.85) < 1e-7, "f32 reversed: %.9g", rf);
}

const dsc_test_case dsc_tests_idx_ops[] = {
    {"fd_dense", test_fd_dense},
    {"fd_sparse", test_fd_sparse},
    {"layernorm", test_layernorm},
    {"torch", test_torch},
    {"causal", test_causal},
    {"recall", test_recall},
    {NULL, NULL},
};
