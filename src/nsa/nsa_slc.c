/*
 * nsa_slc.c - the selected branch's per-token kernels (contracts in
 * nsa_slc.h), on 16-lane fp32 vectors (kernels/v16.h).
 *
 * Summation orders (fixed, so every clone and thread count gives the same
 * bits; ISO C mode keeps fp-contract off):
 *   scores  per key, over e in order;
 *   pv      per output, over the runs' keys in order;
 *   outer   per output, over g in order, then added to A.
 */
#include <string.h>

#include "kernels/v16.h"
#include "nsa/nsa_slc.h"
#include "util/util.h"

#define ROW DSC_VEC_CLONES
/* helpers are inlined into each clone (a plain static function would be
   built for the baseline only) */
#define INL static inline __attribute__((always_inline))
#define LANES DSC_V16_LANES

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* s0[0, 64) = q0 . kt[., 0 .. 64) and, when two, s1 for q1: eight
   independent accumulators sharing each key load */
INL void dot_cols64(int64_t d, const float *q0, const float *q1, int two, const float *kt,
                    int64_t ldt, float *s0, float *s1) {
    v16f a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, k0, k1, k2, k3;
    v16f b0 = {0}, b1 = {0}, b2 = {0}, b3 = {0};
    for (int64_t e = 0; e < d; e++) {
        const float *kr = kt + e * ldt;
        LD16(k0, kr);
        LD16(k1, kr + 16);
        LD16(k2, kr + 32);
        LD16(k3, kr + 48);
        float x = q0[e];
        a0 += x * k0;
        a1 += x * k1;
        a2 += x * k2;
        a3 += x * k3;
        if (two) {
            float y = q1[e];
            b0 += y * k0;
            b1 += y * k1;
            b2 += y * k2;
            b3 += y * k3;
        }
    }
    ST16(s0, a0);
    ST16(s0 + 16, a1);
    ST16(s0 + 32, a2);
    ST16(s0 + 48, a3);
    if (two) {
        ST16(s1, b0);
        ST16(s1 + 16, b1);
        ST16(s1 + 32, b2);
        ST16(s1 + 48, b3);
    }
}

/* s[0, w) = q . kt[., 0 .. w), w <= 16 */
INL void dot_cols16(int64_t d, const float *q, const float *kt, int64_t ldt, int64_t w,
                    float *s) {
    v16f a = {0}, k;
    for (int64_t e = 0; e < d; e++) {
        LDW(k, kt + e * ldt, w);
        a += q[e] * k;
    }
    STW(s, a, w);
}

ROW void dsc_nsa_slc_scores(int64_t G, int64_t d, const float *Q, int64_t ldq, const float *KT,
                            int64_t ldt, int64_t nr, const int64_t *ra, const int64_t *rl,
                            float *S, int64_t lds) {
    /* key chunks outer, heads in pairs inner: a chunk of 64 keys (d x 256
       bytes) stays cached while every head reads it (heads outer re-read
       all n l' keys per pair: 8 times at G = 16, d = 192, from L3) */
    for (int64_t u = 0, off = 0; u < nr; off += rl[u], u++) {
        const float *kt = KT + ra[u];
        int64_t n = rl[u];
        for (int64_t j = 0; j < n; j += 64) {
            int64_t m = min64(64, n - j);
            for (int64_t g = 0; g < G; g += 2) {
                const float *q = Q + g * ldq;
                float *s = S + g * lds + off + j;
                int two = g + 1 < G;
                if (m == 64) {
                    if (two)
                        dot_cols64(d, q, q + ldq, 1, kt + j, ldt, s, s + lds);
                    else
                        dot_cols64(d, q, q, 0, kt + j, ldt, s, s);
                    continue;
                }
                for (int64_t c = 0; c < m; c += LANES) {
                    int64_t w = min64(LANES, m - c);
                    dot_cols16(d, q, kt + j + c, ldt, w, s + c);
                    if (two) dot_cols16(d, q + ldq, kt + j + c, ldt, w, s + lds + c);
                }
            }
        }
    }
}

/* One 16-wide column group [e0, e0 + w) of pv for heads g0 .. g0 + ng - 1
   (ng <= 4): each value row loaded once for the heads. */
INL void pv_group(int64_t ng, const float *P, int64_t lds, const float *V, int64_t ldv,
                  int64_t nr, const int64_t *ra, const int64_t *rl, int64_t w, v16f acc[4]) {
    v16f a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, v;
    const float *p0 = P, *p1 = P + lds, *p2 = P + 2 * lds, *p3 = P + 3 * lds;
    for (int64_t u = 0, off = 0; u < nr; off += rl[u], u++) {
        const float *vr = V + ra[u] * ldv;
        for (int64_t j = 0; j < rl[u]; j++) {
            LDW(v, vr + j * ldv, w);
            int64_t c = off + j;
            a0 += p0[c] * v;
            if (ng > 1) a1 += p1[c] * v;
            if (ng > 2) a2 += p2[c] * v;
            if (ng > 3) a3 += p3[c] * v;
        }
    }
    acc[0] = a0, acc[1] = a1, acc[2] = a2, acc[3] = a3;
}

ROW void dsc_nsa_slc_pv(int64_t G, int64_t d, const float *P, int64_t lds, const float *V,
                        int64_t ldv, int64_t nr, const int64_t *ra, const int64_t *rl, float *O,
                        int64_t ldo, int accumulate) {
    for (int64_t e0 = 0; e0 < d; e0 += LANES) {
        int64_t w = min64(LANES, d - e0);
        for (int64_t g0 = 0; g0 < G; g0 += 4) {
            int64_t ng = min64(4, G - g0);
            v16f acc[4];
            if (ng == 4)
                pv_group(4, P + g0 * lds, lds, V + e0, ldv, nr, ra, rl, w, acc);
            else
                pv_group(ng, P + g0 * lds, lds, V + e0, ldv, nr, ra, rl, w, acc);
            for (int64_t k = 0; k < ng; k++) {
                float *o = O + (g0 + k) * ldo + e0;
                if (accumulate) {
                    v16f x;
                    LDW(x, o, w);
                    x += acc[k];
                    STW(o, x, w);
                } else {
                    STW(o, acc[k], w);
                }
            }
        }
    }
}

/* Keys j .. j + nk - 1 (nk <= 4, columns c .. c + nk - 1 of P) of one
   run starting at row a: four independent sums share each X load. */
INL void outer_keys(int64_t G, int64_t d, const float *P, int64_t lds, const float *X,
                    int64_t ldx, int64_t c, int64_t nk, float *const rows[4]) {
    for (int64_t e0 = 0; e0 < d; e0 += LANES) {
        int64_t w = min64(LANES, d - e0);
        v16f a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, x;
        for (int64_t g = 0; g < G; g++) {
            const float *p = P + g * lds + c;
            LDW(x, X + g * ldx + e0, w);
            a0 += p[0] * x;
            if (nk > 1) a1 += p[1] * x;
            if (nk > 2) a2 += p[2] * x;
            if (nk > 3) a3 += p[3] * x;
        }
        v16f r, acc[4] = {a0, a1, a2, a3};
        for (int64_t k = 0; k < nk; k++) {
            LDW(r, rows[k] + e0, w);
            r += acc[k];
            STW(rows[k] + e0, r, w);
        }
    }
}

ROW void dsc_nsa_slc_outer(int64_t G, int64_t d, const float *P, int64_t lds, const float *X,
                           int64_t ldx, int64_t nr, const int64_t *ra, const int64_t *rl,
                           float *A, int64_t lda) {
    for (int64_t u = 0, off = 0; u < nr; off += rl[u], u++)
        for (int64_t j = 0; j < rl[u]; j += 4) {
            int64_t nk = min64(4, rl[u] - j);
            float *rows[4];
            for (int64_t k = 0; k < 4; k++) rows[k] = A + (ra[u] + j + min64(k, nk - 1)) * lda;
            if (nk == 4)
                outer_keys(G, d, P, lds, X, ldx, off + j, 4, rows);
            else
                outer_keys(G, d, P, lds, X, ldx, off + j, nk, rows);
        }
}

void dsc_nsa_slc_transpose(int64_t t_lo, int64_t T, int64_t d, const float *K, int64_t ldk,
                           float *KT, int64_t ldt) {
    for (int64_t t0 = t_lo; t0 < T; t0 += 64) {   /* 64-row blocks: both sides stay cached */
        int64_t t1 = min64(T, t0 + 64);
        for (int64_t e = 0; e < d; e++)
            for (int64_t t = t0; t < t1; t++) KT[e * ldt + t] = K[t * ldk + e];
    }
}
