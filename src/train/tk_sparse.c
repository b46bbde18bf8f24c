/*
 * tk_sparse.c - sparse causal attention over per-query selected keys (the
 * contract is in tk_sparse.h). First the scalar double reference
 * (dsc_tks_attn_*, the oracle), then the fp32 SIMD kernels
 * (dsc_tks_fast_*). One head on the calling thread; the scratch holds the
 * used columns' positions and scores / probabilities.
 */
#include <math.h>
#include <string.h>

#include "kernels/kernels.h"
#include "train/tk_sparse.h"
#include "util/rows.h"
#include "util/util.h"

int64_t dsc_tks_attn_scratch(int64_t kk) { return kk > 0 ? 2 * kk : 1; }

static double dot(const float *a, const float *b, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

/* The used key positions of query t into pos, in sel order;
   returns how many. */
static int64_t used_keys(const int32_t *row, int64_t kk, int64_t t, int32_t *pos) {
    int64_t m = 0;
    for (int64_t j = 0; j < kk; j++)
        if (row[j] >= 0 && row[j] <= t) pos[m++] = row[j];
    return m;
}

void dsc_tks_attn_fwd(float *O, float *lse, const float *Q, const float *K, const float *V,
                      const int32_t *sel, int64_t kk, const dsc_op_attn_dims *d, float scale,
                      float *ws) {
    int32_t *pos = (int32_t *)(ws + kk);
    float *s = ws;
    for (int64_t t = 0; t < d->n; t++) {
        const float *q = Q + t * d->ldq;
        float *o = O + t * d->ldo;
        int64_t m = used_keys(sel + t * kk, kk, t, pos);
        for (int64_t i = 0; i < d->dv; i++) o[i] = 0.0f;
        if (m == 0) {
            lse[t] = -INFINITY;
            continue;
        }
        double mx = -INFINITY;
        for (int64_t j = 0; j < m; j++) {
            double x = (double)scale * dot(q, K + pos[j] * d->ldk, d->dqk);
            s[j] = (float)x;
            if (x > mx) mx = x;
        }
        /* exact softmax in double from the float scores */
        double sum = 0;
        for (int64_t j = 0; j < m; j++) sum += exp((double)s[j] - mx);
        double l = mx + log(sum);
        lse[t] = (float)l;
        for (int64_t i = 0; i < d->dv; i++) {
            double acc = 0;
            for (int64_t j = 0; j < m; j++)
                acc += exp((double)s[j] - l) * V[pos[j] * d->ldv + i];
            o[i] = (float)acc;
        }
    }
}

void dsc_tks_attn_bwd(float *dQ, float *dK, float *dV, const float *dO, const float *Q,
                      const float *K, const float *V, const float *O, const float *lse,
                      const int32_t *sel, int64_t kk, const dsc_op_attn_dims *d, float scale,
                      float *ws) {
    int32_t *pos = (int32_t *)(ws + kk);
    float *ds = ws;
    for (int64_t t = 0; t < d->n; t++) {
        const float *q = Q + t * d->ldq, *go = dO + t * d->ldo;
        int64_t m = used_keys(sel + t * kk, kk, t, pos);
        if (m == 0) continue;
        double D = dot(go, O + t * d->ldo, d->dv), l = lse[t];
        for (int64_t j = 0; j < m; j++) {
            const float *kr = K + pos[j] * d->ldk;
            double p = exp((double)(float)((double)scale * dot(q, kr, d->dqk)) - l);
            double dp = dot(go, V + pos[j] * d->ldv, d->dv);
            ds[j] = (float)(p * (dp - D));
            if (dV) {
                float *dv = dV + pos[j] * d->ldv;
                for (int64_t i = 0; i < d->dv; i++) dv[i] += (float)(p * go[i]);
            }
        }
        if (dQ) {
            float *dq = dQ + t * d->ldq;
            for (int64_t i = 0; i < d->dqk; i++) {
                double acc = 0;
                for (int64_t j = 0; j < m; j++) acc += (double)ds[j] * K[pos[j] * d->ldk + i];
                dq[i] += (float)(scale * acc);
            }
        }
        if (dK)
            for (int64_t j = 0; j < m; j++) {
                float *dk = dK + pos[j] * d->ldk;
                double g = (double)scale * ds[j];
                for (int64_t i = 0; i < d->dqk; i++) dk[i] += (float)(g * q[i]);
            }
    }
}

/* ---- the fast fp32 kernels ----

   The row loops are plain C for the vectoriser: this file is built with
   -O3 and the per-call loops are DSC_VEC_CLONES (util.h), built for
   AVX-512, AVX2 and the baseline. The selected rows are scattered in K and
   V, so a query works key by key on rows read in place (no gathered copy),
   prefetching the rows PF keys ahead: each score is a dot product over 16
   explicit lanes (one AVX-512 vector, two AVX2 ones, written with GCC
   vector types, see dot_f) closed by a fixed tree; the exps run over the query's
   used entries at once (dsc_k_exp); P V and dQ accumulate four keys per
   step into the output row (a short dependency chain); dK, dV get one
   row update per key. */
#define FAST DSC_VEC_CLONES
#define LANES 16

/* s (kk) | p or dp (kk) | pos (kk int32) | col (kk int32) | acc (dqk) */
int64_t dsc_tks_fast_scratch(int64_t kk, int64_t dqk, int64_t dv) {
    (void)dv;
    int64_t k = kk > 0 ? kk : 0, q = dqk > 0 ? dqk : 0;
    return 4 * k + q + LANES;
}

/* a . b over n floats: lane l of a 16-float vector sums the products
   i = l (mod 16) in order (the tail adds into the low lanes), then the
   lanes are added as a fixed tree (16 -> 8 -> 4 -> 1). GCC vector types
   (lowered to two AVX2 or four SSE vectors where AVX-512 is missing): the
   loop vectoriser keeps a per-key reduction like this scalar when it is
   inlined in a loop over keys. */
typedef float v16f __attribute__((vector_size(64)));
typedef float v8f __attribute__((vector_size(32)));
typedef float v4f __attribute__((vector_size(16)));

static inline float dot_f(const float *restrict a, const float *restrict b, int64_t n) {
    v16f acc = {0}, x, y;
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES) {
        memcpy(&x, a + i, sizeof x);
        memcpy(&y, b + i, sizeof y);
        acc += x * y;
    }
    if (i < n) {
        float ta[LANES] = {0}, tb[LANES] = {0};
        memcpy(ta, a + i, (size_t)(n - i) * sizeof *ta);
        memcpy(tb, b + i, (size_t)(n - i) * sizeof *tb);
        memcpy(&x, ta, sizeof x);
        memcpy(&y, tb, sizeof y);
        acc += x * y;
    }
    v8f h0, h1;
    memcpy(&h0, &acc, sizeof h0);
    memcpy(&h1, (const char *)&acc + sizeof h0, sizeof h1);
    h0 += h1;
    v4f g0, g1;
    memcpy(&g0, &h0, sizeof g0);
    memcpy(&g1, (const char *)&h0 + sizeof g0, sizeof g1);
    g0 += g1;
    return (g0[0] + g0[2]) + (g0[1] + g0[3]);
}

/* a . b in double over eight partials (the backward's D). */
static inline double dot_d(const float *a, const float *b, int64_t n) {
    double acc[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) acc[l] += (double)a[i + l] * b[i + l];
    double s = 0.0;
    for (; i < n; i++) s += (double)a[i] * b[i];
    for (int l = 0; l < 8; l++) s += acc[l];
    return s;
}

/* The used entries of query t's row: positions into pos, their columns
   into col, in sel order, branch-free (the -1 / future mix is random);
   returns how many. */
static inline int64_t used_cols(const int32_t *row, int64_t kk, int64_t t, int32_t *pos,
                                int32_t *col) {
    int64_t m = 0;
    for (int64_t j = 0; j < kk; j++) {
        int32_t s = row[j];
        pos[m] = s;
        col[m] = (int32_t)j;
        m += (s >= 0) & ((int64_t)s <= t);
    }
    return m;
}

/* acc[c] = sum_j w[j] R[pos[j]][c] for c < w_n (overwritten), four keys per
   step: acc += (w0 r0 + w1 r1) + (w2 r2 + w3 r3). */
static inline void wsum_rows(float *restrict acc, const float *w, const int32_t *pos,
                             const float *R, int64_t ld, int64_t m, int64_t wn) {
    for (int64_t c = 0; c < wn; c++) acc[c] = 0.0f;
    int64_t j = 0;
    for (; j + 4 <= m; j += 4) {
        const float *r0 = R + pos[j] * ld, *r1 = R + pos[j + 1] * ld;
        const float *r2 = R + pos[j + 2] * ld, *r3 = R + pos[j + 3] * ld;
        float w0 = w[j], w1 = w[j + 1], w2 = w[j + 2], w3 = w[j + 3];
        for (int64_t c = 0; c < wn; c++)
            acc[c] += (w0 * r0[c] + w1 * r1[c]) + (w2 * r2[c] + w3 * r3[c]);
    }
    for (; j < m; j++) {
        const float *r = R + pos[j] * ld;
        float wj = w[j];
        for (int64_t c = 0; c < wn; c++) acc[c] += wj * r[c];
    }
}

/* Keys ahead of the one being worked on whose rows are prefetched: the
   rows are scattered (V's row stride is H (dn + dv) floats, a page apart),
   so the hardware prefetcher cannot see them coming. */
#define PF 8

/* Prefetch the w floats of row r (one touch per 64-byte line). */
static inline void pf_row(const float *r, int64_t w, int rw) {
    for (int64_t c = 0; c < w; c += 16) {
        if (rw)
            __builtin_prefetch(r + c, 1);
        else
            __builtin_prefetch(r + c, 0);
    }
    __builtin_prefetch(r + w - 1, rw);
}

/* y[c] += a x[c] */
static inline void axpy(float *restrict y, float a, const float *restrict x, int64_t n) {
    for (int64_t c = 0; c < n; c++) y[c] += a * x[c];
}

FAST static void fast_fwd_rows(float *O, float *lse, float *P, const float *Q, const float *K,
                               const float *V, const int32_t *sel, int64_t kk,
                               const dsc_op_attn_dims *d, float scale, float *ws) {
    int64_t dqk = d->dqk, dv = d->dv;
    float *s = ws, *p = ws + kk;
    int32_t *pos = (int32_t *)(ws + 2 * kk), *col = pos + kk;
    for (int64_t t = 0; t < d->n; t++) {
        const float *q = Q + t * d->ldq;
        float *o = O + t * d->ldo, *pr = P ? P + t * kk : NULL;
        int64_t m = used_cols(sel + t * kk, kk, t, pos, col);
        if (pr) memset(pr, 0, (size_t)kk * sizeof *pr);
        if (m == 0) {
            for (int64_t c = 0; c < dv; c++) o[c] = 0.0f;
            lse[t] = -INFINITY;
            continue;
        }
        for (int64_t j = 0; j < m; j++) {
            if (j + PF < m) pf_row(K + pos[j + PF] * d->ldk, dqk, 0);
            if (j + 2 * PF < m) pf_row(V + pos[j + 2 * PF] * d->ldv, dv, 0);
            s[j] = scale * dot_f(q, K + pos[j] * d->ldk, dqk);
        }
        /* lse from exp(s - max), summed in double; then P = exp(s - lse)
           with the fp32 lse, as the backward recomputes it */
        float mx = dsc_row_max(s, m);
        for (int64_t j = 0; j < m; j++) p[j] = s[j] - mx;
        dsc_k_exp(NULL, p, p, m);
        float l = (float)((double)mx + log(dsc_row_sum(p, m)));
        lse[t] = l;
        for (int64_t j = 0; j < m; j++) p[j] = s[j] - l;
        dsc_k_exp(NULL, p, p, m);
        if (pr)
            for (int64_t j = 0; j < m; j++) pr[col[j]] = p[j];
        wsum_rows(o, p, pos, V, d->ldv, m, dv);
    }
}

FAST static void fast_bwd_rows(float *dQ, float *dK, float *dV, const float *dO,
                               const float *Q, const float *K, const float *V, const float *O,
                               const float *lse, const int32_t *sel, int64_t kk,
                               const dsc_op_attn_dims *d, float scale, float *ws) {
    int64_t dqk = d->dqk, dv = d->dv;
    float *p = ws, *ds = ws + kk;
    int32_t *pos = (int32_t *)(ws + 2 * kk), *col = pos + kk;
    float *acc = ws + 4 * kk;
    int need_ds = dQ || dK;
    for (int64_t t = 0; t < d->n; t++) {
        const float *q = Q + t * d->ldq, *go = dO + t * d->ldo;
        int64_t m = used_cols(sel + t * kk, kk, t, pos, col);
        if (m == 0) continue;
        /* P = exp(scale q.k - lse), bit for bit the forward's */
        float l = lse[t];
        for (int64_t j = 0; j < m; j++) {
            if (j + PF < m) {
                pf_row(K + pos[j + PF] * d->ldk, dqk, 0);
                if (need_ds) pf_row(V + pos[j + PF] * d->ldv, dv, 0);
            }
            p[j] = scale * dot_f(q, K + pos[j] * d->ldk, dqk);
            /* dP_j = dO_t . V_j, in the same pass over the keys */
            if (need_ds) ds[j] = dot_f(go, V + pos[j] * d->ldv, dv);
        }
        for (int64_t j = 0; j < m; j++) p[j] = p[j] - l;
        dsc_k_exp(NULL, p, p, m);
        if (need_ds) {
            /* dS = P (dP - D), D = dO_t . O_t */
            float D = (float)dot_d(go, O + t * d->ldo, dv);
            for (int64_t j = 0; j < m; j++) ds[j] = p[j] * (ds[j] - D);
        }
        if (dQ) {
            float *dq = dQ + t * d->ldq;
            wsum_rows(acc, ds, pos, K, d->ldk, m, dqk);
            for (int64_t c = 0; c < dqk; c++) dq[c] += scale * acc[c];
        }
        /* dK_j += scale dS_j q_t, dV_j += P_j dO_t, key by key */
        if (dK || dV)
            for (int64_t j = 0; j < m; j++) {
                if (j + PF < m) {
                    if (dK) pf_row(dK + pos[j + PF] * d->ldk, dqk, 1);
                    if (dV) pf_row(dV + pos[j + PF] * d->ldv, dv, 1);
                }
                if (dK) axpy(dK + pos[j] * d->ldk, scale * ds[j], q, dqk);
                if (dV) axpy(dV + pos[j] * d->ldv, p[j], go, dv);
            }
    }
}

void dsc_tks_fast_fwd(float *O, float *lse, float *P, const float *Q, const float *K,
                      const float *V, const int32_t *sel, int64_t kk, const dsc_op_attn_dims *d,
                      float scale, float *ws) {
    fast_fwd_rows(O, lse, P, Q, K, V, sel, kk, d, scale, ws);
}

void dsc_tks_fast_bwd(float *dQ, float *dK, float *dV, const float *dO, const float *Q,
                      const float *K, const float *V, const float *O, const float *lse,
                      const int32_t *sel, int64_t kk, const dsc_op_attn_dims *d, float scale,
                      float *ws) {
    fast_bwd_rows(dQ, dK, dV, dO, Q, K, V, O, lse, sel, kk, d, scale, ws);
}
