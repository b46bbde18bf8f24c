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
#include "kernels/v16.h"
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

   The row loops are plain C / GCC vector types for the vectoriser: this
   file is built with -O3 and the per-call loops are DSC_VEC_CLONES
   (util.h), built for AVX-512, AVX2 and the baseline. The selected rows
   are scattered in K and V, so a query works on rows read in place (no
   gathered copy):
   - scores (and the backward's dP) eight keys at a time (dot8): each key
     sums its products in 16 lanes (lane l: the products i = l mod 16, in
     order; the tail adds into the low lanes), then the eight keys' lanes
     are added pairwise by a transposing tree of two-vector shuffles
     (16 -> 8 -> 4 -> 2 -> 1 lanes per key), which ends with the eight
     scores in one vector: the per-key tree is the fixed
     ((l0 + l8) + (l4 + l12)) ... order of a lone 16-lane dot product,
     and a key's score does not depend on the keys beside it;
   - the exps over the query's used entries at once (dsc_k_exp);
   - P V and dQ (wsum): column blocks of up to 128 floats held in
     registers across all the query's keys, four keys per step,
     acc += (w0 r0 + w1 r1) + (w2 r2 + w3 r3);
   - dK, dV: one 16-lane row update per key. */
#define FAST DSC_VEC_CLONES
#define LANES 16
/* the helpers are inlined into each ISA clone (a plain static function
   would be built for the baseline only) */
#define INL static inline __attribute__((always_inline))

/* s (kk) | p or dp (kk) | pos (kk int32) | col (kk int32) | acc (dqk) */
int64_t dsc_tks_fast_scratch(int64_t kk, int64_t dqk, int64_t dv) {
    (void)dv;
    int64_t k = kk > 0 ? kk : 0, q = dqk > 0 ? dqk : 0;
    return 4 * k + q + LANES;
}

/* out[i] = x . r[i] over n floats for the eight rows r[0..7] (see the
   note above: per key the lane sums and the tree of a 16-lane dot). */
INL void dot8(float *out, const float *restrict x,
                                                       const float *const r[8], int64_t n) {
    v16f a[8] = {{0}};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES) {
        v16f xv, y;
        LD16(xv, x + i);
        for (int k = 0; k < 8; k++) {
            LD16(y, r[k] + i);
            a[k] += xv * y;
        }
    }
    if (i < n) {
        v16f xv, y;
        LD16P(xv, x + i, n - i);
        for (int k = 0; k < 8; k++) {
            LD16P(y, r[k] + i, n - i);
            a[k] += xv * y;
        }
    }
    /* 16 lanes -> 8: b[k] = [key 2k | key 2k+1], lane l + lane l+8 */
    const v16i lo8 = {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23};
    const v16i hi8 = {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31};
    v16f b[4];
    for (int k = 0; k < 4; k++)
        b[k] = __builtin_shuffle(a[2 * k], a[2 * k + 1], lo8) +
               __builtin_shuffle(a[2 * k], a[2 * k + 1], hi8);
    /* 8 -> 4: c[k] = keys 4k..4k+3, lane l + lane l+4 */
    const v16i lo4 = {0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27};
    const v16i hi4 = {4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31};
    v16f c0 = __builtin_shuffle(b[0], b[1], lo4) + __builtin_shuffle(b[0], b[1], hi4);
    v16f c1 = __builtin_shuffle(b[2], b[3], lo4) + __builtin_shuffle(b[2], b[3], hi4);
    /* 4 -> 2: keys 0..7, (l0 + l2), (l1 + l3) */
    const v16i lo2 = {0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29};
    const v16i hi2 = {2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31};
    v16f e = __builtin_shuffle(c0, c1, lo2) + __builtin_shuffle(c0, c1, hi2);
    /* 2 -> 1: (l0 + l2) + (l1 + l3) into the low eight lanes */
    const v16i ev = {0, 2, 4, 6, 8, 10, 12, 14, 0, 2, 4, 6, 8, 10, 12, 14};
    const v16i od = {1, 3, 5, 7, 9, 11, 13, 15, 1, 3, 5, 7, 9, 11, 13, 15};
    v16f f = __builtin_shuffle(e, ev) + __builtin_shuffle(e, od);
    memcpy(out, &f, 8 * sizeof *out);
}

/* Prefetch the w floats of row r (one touch per 64-byte line). */
INL void pf_row(const float *r, int64_t w, int rw) {
    for (int64_t c = 0; c < w; c += 16) {
        if (rw)
            __builtin_prefetch(r + c, 1);
        else
            __builtin_prefetch(r + c, 0);
    }
    __builtin_prefetch(r + w - 1, rw);
}

/* out[j] = mul * (x . R[pos[j]]) for j < m over n floats, eight keys per
   dot8 (the last block repeats pos[0] for its missing keys). No software
   prefetch: measured slower here (the eight independent row streams of a
   block already overlap their misses). */
INL void dots(float *out, const float *x, const int32_t *pos, const float *R,
                        int64_t ld, int64_t m, int64_t n, float mul) {
    for (int64_t j = 0; j < m; j += 8) {
        const float *r[8];
        for (int k = 0; k < 8; k++) r[k] = R + (int64_t)pos[j + k < m ? j + k : 0] * ld;
        float t[8];
        dot8(t, x, r, n);
        for (int k = 0; k < 8 && j + k < m; k++) out[j + k] = mul * t[k];
    }
}

/* acc[c] = sum_j w[j] R[pos[j]][c] for c0 <= c < c0 + 16 nv, held in nv
   vectors, four keys per step: acc += (w0 r0 + w1 r1) + (w2 r2 + w3 r3),
   then the last m % 4 keys one by one. */
INL void wsum_blk(float *restrict acc, const float *w,
                                                           const int32_t *pos, const float *R,
                                                           int64_t ld, int64_t m, int64_t c0,
                                                           int nv) {
    v16f a[8];
    for (int v = 0; v < nv; v++) a[v] = (v16f){0};
    int64_t j = 0;
    for (; j + 4 <= m; j += 4) {
        const float *r0 = R + (int64_t)pos[j] * ld + c0, *r1 = R + (int64_t)pos[j + 1] * ld + c0;
        const float *r2 = R + (int64_t)pos[j + 2] * ld + c0;
        const float *r3 = R + (int64_t)pos[j + 3] * ld + c0;
        float w0 = w[j], w1 = w[j + 1], w2 = w[j + 2], w3 = w[j + 3];
        for (int v = 0; v < nv; v++) {
            v16f y0, y1, y2, y3;
            LD16(y0, r0 + 16 * v);
            LD16(y1, r1 + 16 * v);
            LD16(y2, r2 + 16 * v);
            LD16(y3, r3 + 16 * v);
            a[v] += (w0 * y0 + w1 * y1) + (w2 * y2 + w3 * y3);
        }
    }
    for (; j < m; j++) {
        const float *r = R + (int64_t)pos[j] * ld + c0;
        float wj = w[j];
        for (int v = 0; v < nv; v++) {
            v16f y;
            LD16(y, r + 16 * v);
            a[v] += wj * y;
        }
    }
    for (int v = 0; v < nv; v++) ST16(acc + c0 + 16 * v, a[v]);
}

/* acc[c] = sum_j w[j] R[pos[j]][c] for c < wn (overwritten): whole
   16-column vectors in blocks of up to eight, the last wn % 16 columns
   by the same sums in scalar code (the same bits per column). */
INL void wsum(float *restrict acc, const float *w, const int32_t *pos, const float *R,
                        int64_t ld, int64_t m, int64_t wn) {
    int64_t c0 = 0;
    for (; c0 + 8 * LANES <= wn; c0 += 8 * LANES) wsum_blk(acc, w, pos, R, ld, m, c0, 8);
    switch ((wn - c0) / LANES) {
    case 7: wsum_blk(acc, w, pos, R, ld, m, c0, 7); break;
    case 6: wsum_blk(acc, w, pos, R, ld, m, c0, 6); break;
    case 5: wsum_blk(acc, w, pos, R, ld, m, c0, 5); break;
    case 4: wsum_blk(acc, w, pos, R, ld, m, c0, 4); break;
    case 3: wsum_blk(acc, w, pos, R, ld, m, c0, 3); break;
    case 2: wsum_blk(acc, w, pos, R, ld, m, c0, 2); break;
    case 1: wsum_blk(acc, w, pos, R, ld, m, c0, 1); break;
    default: break;
    }
    c0 += (wn - c0) / LANES * LANES;
    if (c0 == wn) return;
    for (int64_t c = c0; c < wn; c++) acc[c] = 0.0f;
    int64_t j = 0;
    for (; j + 4 <= m; j += 4) {
        const float *r0 = R + (int64_t)pos[j] * ld, *r1 = R + (int64_t)pos[j + 1] * ld;
        const float *r2 = R + (int64_t)pos[j + 2] * ld, *r3 = R + (int64_t)pos[j + 3] * ld;
        float w0 = w[j], w1 = w[j + 1], w2 = w[j + 2], w3 = w[j + 3];
        for (int64_t c = c0; c < wn; c++)
            acc[c] += (w0 * r0[c] + w1 * r1[c]) + (w2 * r2[c] + w3 * r3[c]);
    }
    for (; j < m; j++) {
        const float *r = R + (int64_t)pos[j] * ld;
        float wj = w[j];
        for (int64_t c = c0; c < wn; c++) acc[c] += wj * r[c];
    }
}

/* a . b in double over eight partials (the backward's D). */
INL double dot_d(const float *a, const float *b, int64_t n) {
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
   returns how many. When every entry is used (the common case once
   t >= kk) *rows points at the sel row itself and pos, col are not
   written (col[j] = j); otherwise *rows = pos. */
INL int64_t used_cols(const int32_t *row, int64_t kk, int64_t t, int32_t *pos, int32_t *col,
                      const int32_t **rows) {
    int32_t bad = 0, t32 = t < INT32_MAX ? (int32_t)t : INT32_MAX;
    for (int64_t j = 0; j < kk; j++) bad |= (row[j] < 0) | (row[j] > t32);
    if (!bad) {
        *rows = row;
        return kk;
    }
    int64_t m = 0;
    for (int64_t j = 0; j < kk; j++) {
        int32_t s = row[j];
        pos[m] = s;
        col[m] = (int32_t)j;
        m += (s >= 0) & ((int64_t)s <= t);
    }
    *rows = pos;
    return m;
}

/* y[c] += a x[c], 16 lanes at a time */
INL void axpy(float *restrict y, float a, const float *restrict x, int64_t n) {
    int64_t c = 0;
    for (; c + LANES <= n; c += LANES) {
        v16f u, v;
        LD16(u, y + c);
        LD16(v, x + c);
        u += a * v;
        ST16(y + c, u);
    }
    for (; c < n; c++) y[c] += a * x[c];
}

FAST static void fast_fwd_rows(float *O, float *lse, float *P, const float *Q, const float *K,
                               const float *V, const int32_t *sel, int64_t kk,
                               const dsc_op_attn_dims *d, float scale, float *ws) {
    int64_t dqk = d->dqk, dv = d->dv;
    float *s = ws, *p = ws + kk;
    int32_t *pbuf = (int32_t *)(ws + 2 * kk), *col = pbuf + kk;
    for (int64_t t = 0; t < d->n; t++) {
        const float *q = Q + t * d->ldq;
        float *o = O + t * d->ldo, *pr = P ? P + t * kk : NULL;
        const int32_t *pos;
        int64_t m = used_cols(sel + t * kk, kk, t, pbuf, col, &pos);
        if (pr && m < kk) memset(pr, 0, (size_t)kk * sizeof *pr);
        if (m == 0) {
            for (int64_t c = 0; c < dv; c++) o[c] = 0.0f;
            lse[t] = -INFINITY;
            continue;
        }
        dots(s, q, pos, K, d->ldk, m, dqk, scale);
        /* lse from exp(s - max), summed in double; then P = exp(s - lse)
           with the fp32 lse, as the backward recomputes it */
        float mx = dsc_row_max(s, m);
        for (int64_t j = 0; j < m; j++) p[j] = s[j] - mx;
        dsc_k_exp(NULL, p, p, m);
        float l = (float)((double)mx + log(dsc_row_sum(p, m)));
        lse[t] = l;
        for (int64_t j = 0; j < m; j++) p[j] = s[j] - l;
        dsc_k_exp(NULL, p, p, m);
        if (pr && m == kk) memcpy(pr, p, (size_t)kk * sizeof *pr);
        else if (pr)
            for (int64_t j = 0; j < m; j++) pr[col[j]] = p[j];
        wsum(o, p, pos, V, d->ldv, m, dv);
    }
}

FAST static void fast_bwd_rows(float *dQ, float *dK, float *dV, const float *dO,
                               const float *Q, const float *K, const float *V, const float *O,
                               const float *lse, const int32_t *sel, int64_t kk,
                               const dsc_op_attn_dims *d, float scale, float *ws) {
    int64_t dqk = d->dqk, dv = d->dv;
    float *p = ws, *ds = ws + kk;
    int32_t *pbuf = (int32_t *)(ws + 2 * kk), *col = pbuf + kk;
    float *acc = ws + 4 * kk;
    int need_ds = dQ || dK;
    for (int64_t t = 0; t < d->n; t++) {
        const float *q = Q + t * d->ldq, *go = dO + t * d->ldo;
        const int32_t *pos;
        int64_t m = used_cols(sel + t * kk, kk, t, pbuf, col, &pos);
        if (m == 0) continue;
        /* P = exp(scale q.k - lse), bit for bit the forward's */
        float l = lse[t];
        dots(p, q, pos, K, d->ldk, m, dqk, scale);
        /* dP_j = dO_t . V_j */
        if (need_ds) dots(ds, go, pos, V, d->ldv, m, dv, 1.0f);
        for (int64_t j = 0; j < m; j++) p[j] = p[j] - l;
        dsc_k_exp(NULL, p, p, m);
        if (need_ds) {
            /* dS = P (dP - D), D = dO_t . O_t */
            float D = (float)dot_d(go, O + t * d->ldo, dv);
            for (int64_t j = 0; j < m; j++) ds[j] = p[j] * (ds[j] - D);
        }
        if (dQ) {
            float *dq = dQ + t * d->ldq;
            wsum(acc, ds, pos, K, d->ldk, m, dqk);
            for (int64_t c = 0; c < dqk; c++) dq[c] += scale * acc[c];
        }
        /* dK_j += scale dS_j q_t, dV_j += P_j dO_t, key by key */
        if (dK || dV)
            for (int64_t j = 0; j < m; j++) {
                if (j + 8 < m) {
                    if (dK) pf_row(dK + (int64_t)pos[j + 8] * d->ldk, dqk, 1);
                    if (dV) pf_row(dV + (int64_t)pos[j + 8] * d->ldv, dv, 1);
                }
                if (dK) axpy(dK + (int64_t)pos[j] * d->ldk, scale * ds[j], q, dqk);
                if (dV) axpy(dV + (int64_t)pos[j] * d->ldv, p[j], go, dv);
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
