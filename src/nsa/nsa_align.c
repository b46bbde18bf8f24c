/*
 * nsa_align.c - the selection alignment loss's rows (contract and the
 * formulas in nsa_align.h). Sums in double, in slot order.
 */
#include <math.h>
#include <string.h>

#include "nsa/nsa_align.h"

/* Block b (a slot of sel; -1 for an empty one) is free: a block other
   than 0, cur - 1 and cur. */
static int is_free(int64_t b, int64_t cur) { return b >= 1 && b <= cur - 2; }

void dsc_nsa_align_row(const dsc_nsa_config *c, int64_t t, const int32_t *sel,
                       const double *score, const float *P, int64_t ldp, int64_t G,
                       int tgt_given, float *tgt, float *gs, float *kl) {
    int64_t n = c->n, cur = t / c->l_sel, nfree = 0;
    double msum = 0, ssum = 0;
    int ok = 1;
    /* pass 1: each free slot's mass (into tgt, unless given), the sums */
    for (int64_t u = 0; u < n; u++) {
        gs[u] = 0;
        if (!tgt_given) tgt[u] = 0;
        if (!is_free(sel[u], cur)) continue;
        nfree++;
        double s = score[sel[u]];
        if (!(s > 0) || !isfinite(s)) ok = 0;
        ssum += s;
        if (!tgt_given) {
            double m = 0;
            for (int64_t g = 0; g < G; g++) {
                const float *p = P + g * ldp + u * c->l_sel;
                for (int64_t k = 0; k < c->l_sel; k++) m += p[k];
            }
            tgt[u] = (float)m;
        }
        msum += tgt[u];
    }
    if (nfree < 2 || !ok || !(msum > 0) || !isfinite(msum)) {
        if (!tgt_given) memset(tgt, 0, (size_t)n * sizeof *tgt);
        *kl = -1.0f;
        return;
    }
    /* pass 2: tau (normalised over the free slots), KL, dKL/ds */
    double loss = 0;
    for (int64_t u = 0; u < n; u++) {
        if (!is_free(sel[u], cur)) continue;
        double tau = tgt[u] / msum, s = score[sel[u]];
        if (!tgt_given) tgt[u] = (float)tau;
        if (tau > 0) loss += tau * (log(tau) - log(s / ssum));
        gs[u] = (float)(1.0 / ssum - tau / s);
    }
    *kl = (float)loss;
}

int dsc_nsa_align_dp(const dsc_nsa_config *c, int64_t t, const int32_t *sel, const float *gs,
                     double scale, float *dp, int64_t nv) {
    int64_t cur = t / c->l_sel, l = c->l, d = c->d, ls = c->l_sel;
    int any = 0;
    memset(dp, 0, (size_t)(nv > 0 ? nv : 0) * sizeof *dp);
    if (scale == 0.0) return 0;
    for (int64_t u = 0; u < c->n; u++) {
        int64_t j = sel[u];
        if (!is_free(j, cur) || gs[u] == 0.0f) continue;
        /* compressed blocks i overlapping [j l', (j+1) l' - 1]:
           i d <= (j+1) l' - 1 and i d + l - 1 >= j l' */
        int64_t lo = j * ls - l + 1, i0 = lo > 0 ? (lo + d - 1) / d : 0;
        int64_t i1 = ((j + 1) * ls - 1) / d;
        if (i1 > nv - 1) i1 = nv - 1;
        for (int64_t i = i0; i <= i1; i++) {
            dp[i] += (float)(scale * dsc_nsa_overlap_weight(c, i, j) * (double)gs[u]);
            any = 1;
        }
    }
    return any;
}
