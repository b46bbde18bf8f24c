/*
 * nsa.c - the parts of the NSA operator that do not depend on the storage
 * type: config validation, buffer sizes, the compressed-to-selection score
 * mapping and the top-n rule (contracts in nsa.h). The typed forward and
 * backward are in nsa_impl.inc, instantiated by nsa_f32.c and nsa_f64.c.
 */
#include "nsa/nsa.h"

#include <math.h>

#include "util/util.h"

dsc_status dsc_nsa_config_check(const dsc_nsa_config *c, dsc_err *err) {
    if (!c) return dsc_err_set(err, DSC_ERR_ARG, "nsa: config is NULL");
    /* every size first, so that the divisibility messages below never divide by 0 */
    const struct {
        const char *name;
        int64_t v;
    } pos[] = {{"l", c->l},     {"d", c->d},       {"l_sel", c->l_sel}, {"H_q", c->H_q},
               {"H_kv", c->H_kv}, {"d_k", c->d_k}, {"d_v", c->d_v}};
    for (size_t i = 0; i < sizeof pos / sizeof pos[0]; i++)
        if (pos[i].v <= 0)
            return dsc_err_set(err, DSC_ERR_ARG, "nsa: %s = %lld must be > 0", pos[i].name,
                               (long long)pos[i].v);
    if (c->l % c->d)
        return dsc_err_set(err, DSC_ERR_ARG,
                           "nsa: compression block l = %lld must be a multiple of the stride "
                           "d = %lld",
                           (long long)c->l, (long long)c->d);
    if (c->l_sel % c->d)
        return dsc_err_set(err, DSC_ERR_ARG,
                           "nsa: selection block l_sel = %lld must be a multiple of the stride "
                           "d = %lld",
                           (long long)c->l_sel, (long long)c->d);
    if (c->l > c->l_sel)
        return dsc_err_set(err, DSC_ERR_ARG,
                           "nsa: compression block l = %lld must be <= selection block "
                           "l_sel = %lld",
                           (long long)c->l, (long long)c->l_sel);
    if (c->n < 3)
        return dsc_err_set(err, DSC_ERR_ARG,
                           "nsa: n = %lld selected blocks must be >= 3 (1 initial + 2 local "
                           "blocks are forced)",
                           (long long)c->n);
    if (c->n > INT32_MAX)
        return dsc_err_set(err, DSC_ERR_ARG, "nsa: n = %lld is too large", (long long)c->n);
    if (c->w <= 0)
        return dsc_err_set(err, DSC_ERR_ARG, "nsa: window w = %lld must be >= 1",
                           (long long)c->w);
    if (c->H_q % c->H_kv)
        return dsc_err_set(err, DSC_ERR_ARG,
                           "nsa: H_q = %lld query heads must be a multiple of H_kv = %lld",
                           (long long)c->H_q, (long long)c->H_kv);
    if (c->phi != DSC_NSA_PHI_MLP && c->phi != DSC_NSA_PHI_MEAN)
        return dsc_err_set(err, DSC_ERR_ARG, "nsa: phi = %d is not a compression kind",
                           (int)c->phi);
    if (c->phi == DSC_NSA_PHI_MLP && c->phi_hidden <= 0)
        return dsc_err_set(err, DSC_ERR_ARG,
                           "nsa: phi_hidden = %lld must be > 0 for the MLP compression",
                           (long long)c->phi_hidden);
    if (c->shared_kv != 0 && c->shared_kv != 1)
        return dsc_err_set(err, DSC_ERR_ARG, "nsa: shared_kv = %d must be 0 or 1",
                           c->shared_kv);
    if (!(c->scale >= 0) || isinf(c->scale))
        return dsc_err_set(err, DSC_ERR_ARG,
                           "nsa: scale = %g must be finite and >= 0 (0: 1/sqrt(d_k))", c->scale);
    return DSC_OK;
}

double dsc_nsa_scale(const dsc_nsa_config *c) {
    return c->scale > 0 ? c->scale : 1.0 / sqrt((double)c->d_k);
}

int64_t dsc_nsa_n_visible(const dsc_nsa_config *c, int64_t t) {
    return t + 1 >= c->l ? (t + 1 - c->l) / c->d + 1 : 0;
}

double dsc_nsa_overlap_weight(const dsc_nsa_config *c, int64_t i, int64_t j) {
    int64_t a0 = i * c->d, a1 = a0 + c->l - 1;          /* compressed block i */
    int64_t b0 = j * c->l_sel, b1 = b0 + c->l_sel - 1;  /* selection block j  */
    int64_t lo = a0 > b0 ? a0 : b0, hi = a1 < b1 ? a1 : b1;
    return hi >= lo ? (double)(hi - lo + 1) / (double)c->d : 0.0;
}

/* Compressed block i touches selection blocks (i*d)/l' .. (i*d+l-1)/l' only
   (at most 2, as l <= l'), so the map costs O(n_cmp), not O(n_cmp n_blk). */
void dsc_nsa_map_scores(const dsc_nsa_config *c, const double *p_cmp, int64_t n_cmp,
                        double *score, int64_t n_blk) {
    for (int64_t i = 0; i < n_cmp; i++) {
        int64_t j0 = i * c->d / c->l_sel, j1 = (i * c->d + c->l - 1) / c->l_sel;
        for (int64_t j = j0; j <= j1 && j < n_blk; j++)
            score[j] += dsc_nsa_overlap_weight(c, i, j) * p_cmp[i];
    }
}

/* Forced blocks first (0, cur-1, cur), then n - #forced rounds of "the best
   unchosen candidate": a scan in ascending j with a strict >, so equal
   scores go to the lower index (and a NaN score never wins a comparison, yet
   a slot is still filled). Membership is checked against the picks so far:
   O(n^2 * cur) per row, fine for a reference (n is small). */
int64_t dsc_nsa_topn(const dsc_nsa_config *c, int64_t t, const double *score, int32_t *sel) {
    int64_t cur = t / c->l_sel, cand = cur + 1;
    int64_t want = c->n < cand ? c->n : cand, k = 0;
    sel[k++] = 0;
    if (cur >= 2) sel[k++] = (int32_t)(cur - 1);
    if (cur >= 1) sel[k++] = (int32_t)cur;
    int64_t forced = k;
    while (k < want) {
        int64_t best = -1;
        for (int64_t j = 1; j < cur - 1; j++) {   /* the non-forced candidates */
            int taken = 0;
            for (int64_t s = forced; s < k; s++) taken |= sel[s] == j;
            if (taken) continue;
            if (best < 0 || score[j] > score[best]) best = j;
        }
        DSC_CHECK(best >= 0);   /* want <= cand guarantees a free candidate */
        sel[k++] = (int32_t)best;
    }
    dsc_nsa_sel_finish(c, sel, k);
    return k;
}

/* ---- sizes ---- */

/* *acc += a*b*c, returning 0 on overflow (operands are >= 0). */
static int madd3(int64_t *acc, int64_t a, int64_t b, int64_t c) {
    int64_t p;
    return !__builtin_mul_overflow(a, b, &p) && !__builtin_mul_overflow(p, c, &p) &&
           !__builtin_add_overflow(*acc, p, acc);
}

dsc_status dsc_nsa_sizes_get(const dsc_nsa_config *c, int64_t T, dsc_nsa_sizes *s,
                             dsc_err *err) {
    DSC_TRY(dsc_nsa_config_check(c, err));
    if (T < 1) return dsc_err_set(err, DSC_ERR_ARG, "nsa: T = %lld tokens must be >= 1",
                                  (long long)T);
    if (!s) return dsc_err_set(err, DSC_ERR_ARG, "nsa: sizes output is NULL");
    *s = (dsc_nsa_sizes){0};
    int64_t Tc = T >= c->l ? (T - c->l) / c->d + 1 : 0;
    int64_t m = c->phi == DSC_NSA_PHI_MLP ? c->phi_hidden : 0;
    int64_t dmax = c->d_k > c->d_v ? c->d_k : c->d_v;
    int ok = 1;
    s->n_cmp = Tc;
    s->n_blk = (T + c->l_sel - 1) / c->l_sel;
    ok &= madd3(&s->o_br, T, c->H_q, 3 * c->d_v);
    ok &= madd3(&s->lse, T, c->H_q, 3);
    ok &= madd3(&s->k_cmp, Tc, c->H_kv, c->d_k);
    ok &= madd3(&s->v_cmp, Tc, c->H_kv, c->d_v);
    ok &= madd3(&s->hid, Tc, c->H_kv, m);
    ok &= madd3(&s->sel, T, c->H_kv, c->n);
    if (m) {
        ok &= madd3(&s->pe_k, c->H_kv, c->l, c->d_k);
        ok &= madd3(&s->w1_k, c->H_kv, m, c->l * c->d_k);
        ok &= madd3(&s->w2_k, c->H_kv, c->d_k, m);
        ok &= madd3(&s->pe_v, c->H_kv, c->l, c->d_v);
        ok &= madd3(&s->w1_v, c->H_kv, m, c->l * c->d_v);
        ok &= madd3(&s->w2_v, c->H_kv, c->d_v, m);
    }
    /* Row functions (doubles): select_row keeps n_visible(t) probabilities
       and t/l' + 1 scores; attend_row the 3 branch accumulators (3 d_v), one
       score and one key row id per key (<= t + 1 each); the backward's row
       dq (d_k), dO_b (d_v) and the same scores and ids. */
    int64_t row = 0;
    ok &= madd3(&row, 3, T, 1) && madd3(&row, 1, 1, 2 * c->d_k + 4 * c->d_v + 16);
    /* The backward adds double accumulators: raw dK/dV per distinct k/v
       tensor (1 when shared, else 3), dK_cmp/dV_cmp, and for the MLP the
       pre-activation gradients (reused for K then V), a block's dX and the
       dPE of one head. */
    int64_t bwd = row;
    ok &= madd3(&bwd, c->shared_kv ? 1 : 3, T, c->H_kv * (c->d_k + c->d_v));
    ok &= madd3(&bwd, Tc, c->H_kv, c->d_k + c->d_v);
    ok &= madd3(&bwd, Tc, c->H_kv, m);
    if (m) ok &= madd3(&bwd, 2, c->l, dmax);
    size_t bytes;
    ok &= dsc_mul_ok((size_t)bwd, sizeof(double), &bytes);
    if (!ok)
        return dsc_err_set(err, DSC_ERR_ARG, "nsa: buffer sizes for T = %lld overflow",
                           (long long)T);
    s->scratch_bytes = bytes;
    s->row_scratch_bytes = (size_t)row * sizeof(double);
    return DSC_OK;
}

void dsc_nsa_sel_finish(const dsc_nsa_config *c, int32_t *sel, int64_t k) {
    /* insertion sort: k <= n, a handful of ids */
    for (int64_t a = 1; a < k; a++)
        for (int64_t b = a; b > 0 && sel[b - 1] > sel[b]; b--) {
            int32_t tmp = sel[b];
            sel[b] = sel[b - 1];
            sel[b - 1] = tmp;
        }
    for (int64_t s = k; s < c->n; s++) sel[s] = -1;
}
