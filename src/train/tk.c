/*
 * tk.c - fast fp32 training kernels (contracts in tk.h; the scalar
 * references they are tested against are in ops_impl.inc).
 */
#include <math.h>
#include <string.h>

#include "kernels/row_exp.h"
#include "train/tk.h"
#include "util/rows.h"
#include "util/util.h"

/* The row loops below (max, sums, scaling, the SwiGLU and RMSNorm
   formulas) are plain C for the vectoriser: this file is built with -O3
   and the functions holding them are DSC_VEC_CLONES (util.h), i.e. built
   for AVX-512, AVX2 and the baseline. The exps are dsc_k_exp (SIMD on its
   own). */
#define TK_ROW DSC_VEC_CLONES

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* Threads for a row-wise pass over `work` elements: forking costs
   microseconds, so small passes stay on the calling thread. */
static int row_threads(const dsc_kctx *k, int64_t work) {
    int nt = k ? dsc_kctx_threads(k) : 1;
    return work < 32768 ? 1 : nt;
}

/* ---- attention ---- */

int64_t dsc_tk_attn_scratch(int64_t n) { return 2 * DSC_TK_QB * (n > 0 ? n : 1); }

/* Rows [i0, i0+rows) of a score tile S (rows, lk): row r sees keys
   [0, i0+r+1) and becomes softmax(scale s) over them, 0 past them; its
   log-sum-exp goes to lse[r]. */
TK_ROW static void softmax_tile(float *S, float *lse, int64_t rows, int64_t lk, int64_t i0,
                                float scale) {
    for (int64_t r = 0; r < rows; r++) {
        float *s = S + r * lk;
        int64_t vis = i0 + r + 1;
        float mx;
        double sum = dsc_row_exp_sum(s, vis, scale, &mx);
        float inv = (float)(1.0 / sum);
        for (int64_t j = 0; j < vis; j++) s[j] *= inv;
        if (lk > vis) memset(s + vis, 0, (size_t)(lk - vis) * sizeof *s);
        lse[r] = (float)((double)mx + log(sum));
    }
}

/* The backward's tiles: P = exp(scale S - lse) (masked to 0), then
   dS = scale P (dP - D) with D_r = dO_r . O_r, dP given in dS. */
TK_ROW static void attn_bwd_tile(float *P, float *dS, const float *lse, const float *dOb,
                                 const float *Ob, int64_t ldo, int64_t dv, int64_t rows,
                                 int64_t lk, int64_t i0, float scale) {
    for (int64_t r = 0; r < rows; r++) {
        float *p = P + r * lk, l = lse[r];
        int64_t vis = i0 + r + 1;
        for (int64_t j = 0; j < vis; j++) p[j] = p[j] * scale - l;
        dsc_k_exp(NULL, p, p, vis);
        if (lk > vis) memset(p + vis, 0, (size_t)(lk - vis) * sizeof *p);
        const float *go = dOb + r * ldo, *o = Ob + r * ldo;
        double Di = 0.0;
        for (int64_t c = 0; c < dv; c++) Di += (double)go[c] * o[c];
        float D = (float)Di, *ds = dS + r * lk;
        for (int64_t j = 0; j < lk; j++) ds[j] = scale * p[j] * (ds[j] - D);
    }
}

void dsc_tk_attn_fwd(float *O, float *lse, const float *Q, const float *K, const float *V,
                     const dsc_op_attn_dims *d, float scale, float *ws) {
    int64_t n = d->n, dqk = d->dqk, dv = d->dv;
    float *S = ws; /* (rows, lk) */
    for (int64_t i0 = 0; i0 < n; i0 += DSC_TK_QB) {
        int64_t rows = min64(DSC_TK_QB, n - i0), lk = i0 + rows;
        dsc_k_sgemm_nt(NULL, rows, lk, dqk, Q + i0 * d->ldq, d->ldq, K, d->ldk, S, lk, 0);
        softmax_tile(S, lse + i0, rows, lk, i0, scale);
        dsc_k_sgemm_nn(NULL, rows, dv, lk, S, lk, V, d->ldv, O + i0 * d->ldo, d->ldo, 0);
    }
}

void dsc_tk_attn_bwd(float *dQ, float *dK, float *dV, const float *dO, const float *Q,
                     const float *K, const float *V, const float *O, const float *lse,
                     const dsc_op_attn_dims *d, float scale, float *ws) {
    int64_t n = d->n, dqk = d->dqk, dv = d->dv;
    for (int64_t i0 = 0; i0 < n; i0 += DSC_TK_QB) {
        int64_t rows = min64(DSC_TK_QB, n - i0), lk = i0 + rows;
        float *P = ws, *dS = ws + rows * lk; /* (rows, lk) each */
        const float *Qb = Q + i0 * d->ldq, *dOb = dO + i0 * d->ldo;
        /* P = exp(scale Q K^T - lse), recomputed */
        dsc_k_sgemm_nt(NULL, rows, lk, dqk, Qb, d->ldq, K, d->ldk, P, lk, 0);
        /* dP = dO V^T; dS = scale P (dP - D), D_i = dO_i . O_i */
        dsc_k_sgemm_nt(NULL, rows, lk, dv, dOb, d->ldo, V, d->ldv, dS, lk, 0);
        attn_bwd_tile(P, dS, lse + i0, dOb, O + i0 * d->ldo, d->ldo, dv, rows, lk, i0, scale);
        if (dQ) dsc_k_sgemm_nn(NULL, rows, dqk, lk, dS, lk, K, d->ldk, dQ + i0 * d->ldq, d->ldq, 1);
        if (dK) dsc_k_sgemm_tn(NULL, lk, dqk, rows, dS, lk, Qb, d->ldq, dK, d->ldk, 1);
        if (dV) dsc_k_sgemm_tn(NULL, lk, dv, rows, P, lk, dOb, d->ldo, dV, d->ldv, 1);
    }
}

/* ---- cross-entropy ---- */

/* Exps summed in chunks through a stack buffer, logits left as they are. */
#define XCHUNK 512

/* One row's loss term lse(z) - z[y]; with grad, z becomes
   gscale (softmax(z) - onehot(y)). */
TK_ROW static double xent_row(float *z, int64_t V, int32_t y, int grad, double gscale) {
    float mx = dsc_row_max(z, V), zy = z[y];
    double sum = 0.0;
    if (grad) {
        for (int64_t v = 0; v < V; v++) z[v] -= mx;
        dsc_k_exp(NULL, z, z, V);
        sum = dsc_row_sum(z, V);
        float g = (float)(gscale / sum);
        for (int64_t v = 0; v < V; v++) z[v] *= g;
        z[y] -= (float)gscale;
    } else {
        float buf[XCHUNK];
        for (int64_t v0 = 0; v0 < V; v0 += XCHUNK) {
            int64_t m = min64(XCHUNK, V - v0);
            for (int64_t i = 0; i < m; i++) buf[i] = z[v0 + i] - mx;
            dsc_k_exp(NULL, buf, buf, m);
            sum += dsc_row_sum(buf, m);
        }
    }
    return log(sum) - ((double)zy - (double)mx);
}

double dsc_tk_xent(dsc_kctx *k, float *logits, const int32_t *targets, int64_t n, int64_t V,
                   int grad, double dscale, double *row_loss) {
    int64_t count = 0;
    for (int64_t t = 0; t < n; t++) count += targets[t] >= 0;
    double gscale = count ? dscale / (double)count : 0.0;
    const int nt = row_threads(k, n * V);
    (void)nt; /* only read by the pragma, which NO_OMP builds ignore */
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t t = 0; t < n; t++) {
        float *z = logits + t * V;
        if (targets[t] < 0) {
            row_loss[t] = 0.0;
            if (grad) memset(z, 0, (size_t)V * sizeof *z);
        } else {
            row_loss[t] = xent_row(z, V, targets[t], grad, gscale);
        }
    }
    double total = 0.0;
    for (int64_t t = 0; t < n; t++) total += row_loss[t];
    return count ? total / (double)count : 0.0;
}

/* ---- RMSNorm ---- */

/* 1 / sqrt(mean(x^2) + eps), summed in double (eight partial sums, so the
   loop still vectorises): a float sum of squares overflows for |x| ~ 1e19,
   which would turn a diverged model's rows into zeros and hide the
   divergence behind a finite loss. */
static inline float rms_inv(const float *x, int64_t d, float eps) {
    double acc[8] = {0};
    int64_t j = 0;
    for (; j + 8 <= d; j += 8)
        for (int q = 0; q < 8; q++) acc[q] += (double)x[j + q] * x[j + q];
    double ss = 0.0;
    for (; j < d; j++) ss += (double)x[j] * x[j];
    for (int q = 0; q < 8; q++) ss += acc[q];
    return (float)(1.0 / sqrt(ss / (double)d + eps));
}

/* sum_j a_j b_j c_j, in double as above. */
static inline double dot3(const float *a, const float *b, const float *c, int64_t d) {
    double acc[8] = {0};
    int64_t j = 0;
    for (; j + 8 <= d; j += 8)
        for (int q = 0; q < 8; q++) acc[q] += (double)a[j + q] * b[j + q] * c[j + q];
    double s = 0.0;
    for (; j < d; j++) s += (double)a[j] * b[j] * c[j];
    for (int q = 0; q < 8; q++) s += acc[q];
    return s;
}

/* Rows [0, n) of width d. */
TK_ROW static void rmsnorm_fwd_rows(float *y, const float *x, const float *w, int64_t n,
                                    int64_t d, float eps) {
    for (int64_t t = 0; t < n; t++) {
        const float *xr = x + t * d;
        float *yr = y + t * d, r = rms_inv(xr, d, eps);
        for (int64_t j = 0; j < d; j++) yr[j] = w[j] * (xr[j] * r);
    }
}

/* dx = r (w g - xhat m), xhat = r x, m = mean(w g xhat): no r^3 factor,
   which underflows for large rows. */
TK_ROW static void rmsnorm_dx_rows(float *dx, const float *dy, const float *x, const float *w,
                                   int64_t n, int64_t d, float eps) {
    for (int64_t t = 0; t < n; t++) {
        const float *xr = x + t * d, *g = dy + t * d;
        float r = rms_inv(xr, d, eps);
        float m = (float)(dot3(w, g, xr, d) * r / (double)d);
        float *o = dx + t * d;
        for (int64_t j = 0; j < d; j++) o[j] += r * (w[j] * g[j] - (r * xr[j]) * m);
    }
}

/* dw_j += sum_t dy_tj x_tj r_t, rows in order (a fixed sum). */
TK_ROW static void rmsnorm_dw_rows(float *dw, const float *dy, const float *x, int64_t n,
                                   int64_t d, float eps) {
    for (int64_t t = 0; t < n; t++) {
        const float *xr = x + t * d, *g = dy + t * d;
        float r = rms_inv(xr, d, eps);
        for (int64_t j = 0; j < d; j++) dw[j] += g[j] * xr[j] * r;
    }
}

/* Rows split in nt contiguous parts, one per thread. */
#define FOR_ROW_PARTS(nt, n, lo, hi)                                              \
    _Pragma("omp parallel for num_threads(nt) schedule(static, 1)")             \
    for (int part = 0; part < (nt); part++)                                       \
        for (int64_t lo = (n) * part / (nt), hi = (n) * (part + 1) / (nt); lo < hi; lo = hi)

void dsc_tk_rmsnorm_fwd(dsc_kctx *k, float *y, const float *x, const float *w, int64_t n,
                        int64_t d, float eps) {
    const int nt = row_threads(k, n * d);
    FOR_ROW_PARTS(nt, n, lo, hi)
    rmsnorm_fwd_rows(y + lo * d, x + lo * d, w, hi - lo, d, eps);
}

void dsc_tk_rmsnorm_bwd(dsc_kctx *k, float *dx, float *dw, const float *dy, const float *x,
                        const float *w, int64_t n, int64_t d, float eps) {
    const int nt = row_threads(k, n * d);
    if (dx) {
        FOR_ROW_PARTS(nt, n, lo, hi)
        rmsnorm_dx_rows(dx + lo * d, dy + lo * d, x + lo * d, w, hi - lo, d, eps);
    }
    if (dw) rmsnorm_dw_rows(dw, dy, x, n, d, eps);
}

/* ---- SwiGLU ---- */

#define SCHUNK 256

/* sigmoid of m <= SCHUNK values from exp(-|g|) (never overflows), through
   dsc_k_exp; branch-free (the signs of g are random): numerator 1 for
   g >= 0, e otherwise. */
static inline void sigmoid_chunk(float *sig, const float *g, int64_t m) {
    for (int64_t i = 0; i < m; i++) sig[i] = -fabsf(g[i]);
    dsc_k_exp(NULL, sig, sig, m);
    for (int64_t i = 0; i < m; i++) {
        float e = sig[i], num = g[i] >= 0.0f ? 1.0f : e;
        sig[i] = num / (1.0f + e);
    }
}

TK_ROW static void swiglu_fwd_span(float *h, const float *g, const float *u, int64_t m) {
    float sig[SCHUNK];
    for (int64_t i0 = 0; i0 < m; i0 += SCHUNK) {
        int64_t len = min64(SCHUNK, m - i0);
        sigmoid_chunk(sig, g + i0, len);
        for (int64_t i = 0; i < len; i++) h[i0 + i] = g[i0 + i] * sig[i] * u[i0 + i];
    }
}

/* silu'(g) = sig(g) (1 + g (1 - sig(g))). */
TK_ROW static void swiglu_bwd_span(float *dg, float *du, const float *dh, const float *g,
                                   const float *u, int64_t m) {
    float sig[SCHUNK];
    for (int64_t i0 = 0; i0 < m; i0 += SCHUNK) {
        int64_t len = min64(SCHUNK, m - i0);
        sigmoid_chunk(sig, g + i0, len);
        for (int64_t i = 0; i < len; i++) {
            float gv = g[i0 + i], s = sig[i], gh = dh[i0 + i];
            dg[i0 + i] = gh * u[i0 + i] * s * (1.0f + gv * (1.0f - s));
            du[i0 + i] = gh * gv * s;
        }
    }
}

void dsc_tk_swiglu_fwd(dsc_kctx *k, float *h, const float *g, const float *u, int64_t m) {
    const int nt = row_threads(k, m);
    FOR_ROW_PARTS(nt, m, lo, hi)
    swiglu_fwd_span(h + lo, g + lo, u + lo, hi - lo);
}

void dsc_tk_swiglu_bwd(dsc_kctx *k, float *dg, float *du, const float *dh, const float *g,
                       const float *u, int64_t m) {
    const int nt = row_threads(k, m);
    FOR_ROW_PARTS(nt, m, lo, hi)
    swiglu_bwd_span(dg + lo, du + lo, dh + lo, g + lo, u + lo, hi - lo);
}
