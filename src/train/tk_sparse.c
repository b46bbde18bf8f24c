/*
 * tk_sparse.c - sparse causal attention over per-query selected keys (the
 * contract is in tk_sparse.h). Scalar loops, one head on the calling
 * thread; the scratch holds the used columns' scores / probabilities.
 */
#include <math.h>

#include "train/tk_sparse.h"

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
