/*
 * test_nsa.c - the NSA operator (src/nsa/nsa.h): geometry, selection,
 * forward, backward, precision instances, errors, and parity with fla.
 *
 *  score_map   the spec's worked example of the compressed-to-selection
 *              mapping (l=32, d=16, l'=64, block j=2: weights 1,2,2,2,1 on
 *              compressed blocks 7..11), its identity case l = d = l', and
 *              the top-n rule on hand-made scores (forced blocks, ties);
 *  select      invariants of select_row on random inputs over several
 *              geometries, against scores recomputed here by brute force;
 *  early       rows with no visible compressed block (t < l-1; T = 1;
 *              T < l): o_cmp exactly 0, lse -inf, everything else finite,
 *              the cmp branch's gradients exactly 0 when nothing is visible;
 *  dense       with n >= #blocks and w >= T the slc and win branches are
 *              full causal attention: compared with dsc_op_attn_fwd_f64
 *              (independent code); the mean-pooled cmp branch against an
 *              explicit pooled attention;
 *  fd_mlp,     central finite differences (f64) of every gradient: q, each
 *  fd_mean     branch's k and v (cmp through phi), phi's parameters and the
 *              gates; MLP phi with independent K/V, mean phi with shared K/V
 *              and padded strides; d_k != d_v, G > 1. The selection is held
 *              fixed (DSC_NSA_SEL_GIVEN with the base forward's indices), as
 *              the operator defines it (no gradient through top-n);
 *  f32         the f32 instance against the f64 one, forward and backward;
 *  gate        the gate helper g = sigmoid(x W^T): finite differences, f32;
 *  bad_config  every invalid field -> DSC_ERR_ARG naming it; bad calls;
 *  fla         parity with fla's naive_nsa (tests/fixtures/nsa, written by
 *              tests/reference/make_nsa_fixtures.py): selection identical,
 *              output and q/k/v/gate gradients.
 *
 * Tolerances.
 *  FD: h = 1e-5 on O(1) inputs; truncation h^2/6 |L'''| ~ 2e-11 and rounding
 *  eps_64 |L| / h ~ 1e-11, both < 1e-9 of the gradients here. Compared as
 *  max|fd - an| / max|an| <= 1e-6 (as test_train_ops.c): three orders above
 *  the noise, while any wrong term gives an error of order 1.
 *  f32 vs f64: both instances sum in double, so they differ by rounding at
 *  stores (inputs are float-representable): <= 1e-5 relative to the tensor's
 *  max magnitude.
 *  fla: fla's naive runs in float32 (its own cast), ours in float32 storage
 *  with double sums: 1e-4 relative to each tensor's max magnitude (brief),
 *  measured ~1e-7. Against the float64 transcription: 1e-10.
 */
#include <stdlib.h>
#include <string.h>

#include "nsa/nsa.h"
#include "nsa_test.h"
#include "test.h"
#include "train/ops.h"

#define FD_H 1e-5
#define FD_TOL 1e-6
#define AGREE_TOL 1e-5
#define FLA_TOL 1e-4

/* ---- helpers ---- */

static double maxabs(const double *x, int64_t n) {
    double m = 0;
    for (int64_t i = 0; i < n; i++) m = fabs(x[i]) > m ? fabs(x[i]) : m;
    return m;
}

static int verbose(void) { return getenv("DSC_TEST_VERBOSE") != NULL; }

static int all_finite_d(const double *x, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return 0;
    return 1;
}

/* got (f32) against want (f64), relative to max|want| */
static double agree(dsc_t *t, const char *what, const float *got, const double *want, int64_t n,
                    double tol) {
    double m = maxabs(want, n);
    double d = t_close_f64(t, what, got, want, n, tol * m + 1e-30, tol);
    if (verbose()) printf("      %-14s max|d|/max|want| = %.2e\n", what, m > 0 ? d / m : d);
    return m > 0 ? d / m : d;
}

/* ---- a problem: config, inputs and the f64 instance's buffers ---- */

enum { P_PE_K, P_W1_K, P_W2_K, P_PE_V, P_W1_V, P_W2_V, P_N };
static const char *par_name[P_N] = {"pe_k", "w1_k", "w2_k", "pe_v", "w1_v", "w2_v"};

typedef struct {
    dsc_nsa_config c;
    int64_t T, ldq, ldk, ldv, ldg, ldo;
    dsc_nsa_sizes sz;
    int nkv;                      /* distinct k/v tensors: 1 shared, else 3 */
    double *q, *k[3], *v[3], *g, *par[P_N], *r;
    int64_t n_par[P_N];
    double *o, *o_br, *lse, *kc, *vc, *hk, *hv;
    int32_t *sel;
    void *ws;
    double *dq, *dk[3], *dv[3], *dg, *dpar[P_N];
} prob;

/* Random inputs (q, k, v ~ N(0,1) * xs; gates in (0,1); MLP weights ~
   1/sqrt(fan-in)); strides padded by pad elements. */
static void prob_init(t_pool *pl, prob *p, const dsc_nsa_config *c, int64_t T, int64_t pad,
                      uint64_t seed, double xs) {
    memset(p, 0, sizeof *p);
    p->c = *c;
    p->T = T;
    t_rng r = {seed};
    dsc_nsa_sizes_get(c, T, &p->sz, NULL);
    p->ldq = c->H_q * c->d_k + pad;
    p->ldk = c->H_kv * c->d_k + pad;
    p->ldv = c->H_kv * c->d_v + pad;
    p->ldg = c->H_q * 3 + pad;
    p->ldo = c->H_q * c->d_v + pad;
    p->nkv = c->shared_kv ? 1 : 3;
    p->q = t_rnd(pl, &r, T * p->ldq, xs);
    for (int b = 0; b < p->nkv; b++) {
        p->k[b] = t_rnd(pl, &r, T * p->ldk, xs);
        p->v[b] = t_rnd(pl, &r, T * p->ldv, 1.0);
    }
    p->g = t_dalloc(pl, T * p->ldg);
    for (int64_t i = 0; i < T * p->ldg; i++)
        p->g[i] = (double)(float)(0.05 + 0.9 * t_rng_uniform(&r));
    p->r = t_rnd(pl, &r, T * p->ldo, 1.0);
    if (c->phi == DSC_NSA_PHI_MLP) {
        t_nsa_phi_rnd(pl, &r, c, &p->sz, p->par, p->n_par);
        for (int i = 0; i < P_N; i++) p->dpar[i] = t_dalloc(pl, p->n_par[i]);
    }
    p->o = t_dalloc(pl, T * p->ldo);
    p->o_br = t_dalloc(pl, p->sz.o_br);
    p->lse = t_dalloc(pl, p->sz.lse);
    p->kc = t_dalloc(pl, p->sz.k_cmp);
    p->vc = t_dalloc(pl, p->sz.v_cmp);
    p->hk = t_dalloc(pl, p->sz.hid);
    p->hv = t_dalloc(pl, p->sz.hid);
    p->sel = t_palloc(pl, p->sz.sel * (int64_t)sizeof(int32_t));
    p->ws = t_palloc(pl, (int64_t)p->sz.scratch_bytes);
    p->dq = t_dalloc(pl, T * p->ldq);
    for (int b = 0; b < p->nkv; b++) {
        p->dk[b] = t_dalloc(pl, T * p->ldk);
        p->dv[b] = t_dalloc(pl, T * p->ldv);
    }
    p->dg = t_dalloc(pl, T * p->ldg);
}

static dsc_nsa_in_f64 prob_in(const prob *p) {
    dsc_nsa_in_f64 in = {p->q, p->ldq, {{p->k[0], p->k[1], p->k[2]}, p->ldk,
                                        {p->v[0], p->v[1], p->v[2]}, p->ldv}, p->g, p->ldg};
    return in;
}

static dsc_nsa_params_f64 prob_params(const prob *p) {
    dsc_nsa_params_f64 pp = {p->par[0], p->par[1], p->par[2], p->par[3], p->par[4], p->par[5]};
    return pp;
}

static dsc_nsa_saved_f64 prob_saved(const prob *p) {
    dsc_nsa_saved_f64 s = {p->o_br, p->lse, p->kc, p->vc, p->hk, p->hv, p->sel};
    return s;
}

static dsc_status prob_fwd(prob *p, int flags, dsc_err *err) {
    dsc_nsa_in_f64 in = prob_in(p);
    dsc_nsa_params_f64 pp = prob_params(p);
    dsc_nsa_saved_f64 sv = prob_saved(p);
    return dsc_nsa_fwd_f64(&p->c, p->T, &in, &pp, p->o, p->ldo, &sv, flags, p->ws, err);
}

static dsc_status prob_bwd(prob *p, dsc_err *err) {
    dsc_nsa_in_f64 in = prob_in(p);
    dsc_nsa_params_f64 pp = prob_params(p);
    dsc_nsa_saved_f64 sv = prob_saved(p);
    dsc_nsa_grads_f64 gr = {p->dq, {p->dk[0], p->dk[1], p->dk[2]}, {p->dv[0], p->dv[1], p->dv[2]},
                            p->dg, p->dpar[0], p->dpar[1], p->dpar[2], p->dpar[3], p->dpar[4],
                            p->dpar[5]};
    return dsc_nsa_bwd_f64(&p->c, p->T, &in, &pp, &sv, p->r, p->ldo, &gr, p->ws, err);
}

/* L = sum r . o over the valid columns (the forward with the fixed selection) */
static double prob_loss(prob *p) {
    if (prob_fwd(p, DSC_NSA_SEL_GIVEN, NULL) != DSC_OK) return NAN;
    double s = 0;
    for (int64_t t = 0; t < p->T; t++)
        for (int64_t e = 0; e < p->c.H_q * p->c.d_v; e++)
            s += p->r[t * p->ldo + e] * p->o[t * p->ldo + e];
    return s;
}

/* ---- 1. the score mapping and the top-n rule ---- */

static void test_score_map(dsc_t *t) {
    /* the spec's worked example (§1.3) */
    dsc_nsa_config c = {.l = 32, .d = 16, .l_sel = 64, .n = 16, .w = 512, .H_q = 1, .H_kv = 1,
                        .d_k = 1, .d_v = 1, .phi = DSC_NSA_PHI_MEAN};
    static const double want[16] = {0, 0, 0, 0, 0, 0, 0, 1, 2, 2, 2, 1, 0, 0, 0, 0};
    for (int64_t i = 0; i < 16; i++) {
        double w = dsc_nsa_overlap_weight(&c, i, 2);
        T_CHECK(t, w == want[i], "w(%lld, 2) = %g, want %g", (long long)i, w, want[i]);
    }
    /* the literal Eq. 9 would weight blocks 4..8; the mapping must not */
    T_CHECK(t, dsc_nsa_overlap_weight(&c, 4, 2) == 0 && dsc_nsa_overlap_weight(&c, 6, 2) == 0,
            "blocks 4..6 lie before selection block 2");
    /* map_scores with one-hot p_cmp puts w(i, j) on every j */
    for (int64_t i = 0; i < 16; i++) {
        double p[16] = {0}, sc[5] = {0};
        p[i] = 1;
        dsc_nsa_map_scores(&c, p, 16, sc, 5);
        for (int64_t j = 0; j < 5; j++)
            T_CHECK(t, sc[j] == dsc_nsa_overlap_weight(&c, i, j), "map_scores i=%lld j=%lld",
                    (long long)i, (long long)j);
    }
    /* a whole p_cmp: p_slc[2] = 1 p7 + 2 p8 + 2 p9 + 2 p10 + 1 p11 */
    double p[16], sc[5] = {0};
    for (int i = 0; i < 16; i++) p[i] = 0.01 * (i + 1);
    dsc_nsa_map_scores(&c, p, 16, sc, 5);
    double w2 = p[7] + 2 * p[8] + 2 * p[9] + 2 * p[10] + p[11];
    T_CHECK(t, fabs(sc[2] - w2) < 1e-15, "p_slc[2] = %.17g want %.17g", sc[2], w2);

    /* identity case l = d = l' (fla's 64/64/64): p_slc = p_cmp */
    dsc_nsa_config c1 = c;
    c1.l = c1.d = c1.l_sel = 64;
    double q[6] = {0.1, 0.3, 0.05, 0.2, 0.15, 0.2}, s1[6] = {0};
    dsc_nsa_map_scores(&c1, q, 6, s1, 6);
    for (int j = 0; j < 6; j++) T_CHECK(t, s1[j] == q[j], "identity mapping at %d", j);

    /* top-n: forced 0, cur-1, cur; ties to the lower index; ascending; -1 pad */
    dsc_nsa_config c2 = c;
    c2.l = 4, c2.d = 2, c2.l_sel = 4, c2.n = 4;
    int32_t sel[8];
    double zero[16] = {0};
    int64_t k = dsc_nsa_topn(&c2, 43, zero, sel);   /* cur = 10 */
    T_CHECK(t, k == 4 && sel[0] == 0 && sel[1] == 1 && sel[2] == 9 && sel[3] == 10,
            "all-zero scores: got %lld [%d %d %d %d], want [0 1 9 10]", (long long)k, sel[0],
            sel[1], sel[2], sel[3]);
    double s2[16] = {0};
    s2[3] = 0.1, s2[5] = 0.3, s2[7] = 0.3, s2[0] = 0, s2[9] = -1, s2[10] = -1;
    k = dsc_nsa_topn(&c2, 43, s2, sel);
    T_CHECK(t, k == 4 && sel[0] == 0 && sel[1] == 5 && sel[2] == 9 && sel[3] == 10,
            "tie 5 vs 7: got [%d %d %d %d], want [0 5 9 10]", sel[0], sel[1], sel[2], sel[3]);
    c2.n = 6;
    k = dsc_nsa_topn(&c2, 43, s2, sel);
    T_CHECK(t, k == 6 && sel[1] == 3 && sel[2] == 5 && sel[3] == 7,
            "n=6: got [%d %d %d %d %d %d]", sel[0], sel[1], sel[2], sel[3], sel[4], sel[5]);
    /* few blocks: t = 5 (cur 1) -> {0, 1}, then -1 */
    k = dsc_nsa_topn(&c2, 5, s2, sel);
    T_CHECK(t, k == 2 && sel[0] == 0 && sel[1] == 1 && sel[2] == -1 && sel[5] == -1,
            "t=5: got %lld [%d %d %d]", (long long)k, sel[0], sel[1], sel[2]);
    k = dsc_nsa_topn(&c2, 0, s2, sel);
    T_CHECK(t, k == 1 && sel[0] == 0 && sel[1] == -1, "t=0: got %lld [%d %d]", (long long)k,
            sel[0], sel[1]);
}

/* ---- 2. selection invariants on random inputs ---- */

/* w(i, j) by counting tokens: independent of dsc_nsa_overlap_weight */
static double overlap_count(const dsc_nsa_config *c, int64_t i, int64_t j) {
    int64_t n = 0;
    for (int64_t x = i * c->d; x < i * c->d + c->l; x++) n += x / c->l_sel == j;
    return (double)n / (double)c->d;
}

static void test_select(dsc_t *t) {
    static const int64_t geo[][6] = {
        /* l, d, l_sel, n, T, H_kv (G = 2) */
        {4, 2, 4, 4, 41, 2},  {4, 2, 8, 5, 70, 1},  {6, 2, 8, 4, 53, 2},
        {8, 4, 8, 3, 40, 3},  {4, 4, 4, 6, 37, 2},  {6, 3, 12, 7, 90, 1},
    };
    t_pool pl = {0};
    for (size_t gi = 0; gi < sizeof geo / sizeof geo[0]; gi++) {
        dsc_nsa_config c = {.l = geo[gi][0], .d = geo[gi][1], .l_sel = geo[gi][2],
                            .n = geo[gi][3], .w = 4, .H_kv = geo[gi][5], .d_k = 5, .d_v = 3,
                            .phi = DSC_NSA_PHI_MEAN};
        c.H_q = 2 * c.H_kv;
        int64_t T = geo[gi][4];
        dsc_err err = {0};
        T_CHECK(t, dsc_nsa_config_check(&c, &err) == DSC_OK, "geometry %zu: %s", gi, err.msg);
        dsc_nsa_sizes sz;
        dsc_nsa_sizes_get(&c, T, &sz, NULL);
        t_rng r = {1000 + gi};
        double *q = t_rnd(&pl, &r, T * c.H_q * c.d_k, 1.5);
        double *kc = t_rnd(&pl, &r, sz.k_cmp, 1.0);
        double *ws = t_palloc(&pl, (int64_t)sz.row_scratch_bytes);
        int32_t *sel = t_palloc(&pl, c.n * c.H_kv * (int64_t)sizeof(int32_t));
        double *score = t_dalloc(&pl, sz.n_blk), *pr = t_dalloc(&pl, sz.n_cmp + 1);
        int64_t bad = 0;
        for (int64_t tt = 0; tt < T; tt++) {
            dsc_nsa_select_row_f64(&c, tt, q + tt * c.H_q * c.d_k, kc, sel, ws);
            int64_t cur = tt / c.l_sel, nv = dsc_nsa_n_visible(&c, tt);
            int64_t want = c.n < cur + 1 ? c.n : cur + 1;
            for (int64_t h = 0; h < c.H_kv; h++) {
                const int32_t *s = sel + h * c.n;
                /* brute-force group scores */
                for (int64_t j = 0; j <= cur; j++) score[j] = 0;
                for (int64_t g = 0; g < 2; g++) {
                    const double *qv = q + tt * c.H_q * c.d_k + (h * 2 + g) * c.d_k;
                    double mx = -INFINITY, sum = 0;
                    for (int64_t i = 0; i < nv; i++) {
                        double d = 0;
                        for (int64_t e = 0; e < c.d_k; e++)
                            d += qv[e] * kc[(i * c.H_kv + h) * c.d_k + e];
                        pr[i] = d / sqrt((double)c.d_k);
                        mx = pr[i] > mx ? pr[i] : mx;
                    }
                    for (int64_t i = 0; i < nv; i++) sum += exp(pr[i] - mx);
                    for (int64_t i = 0; i < nv; i++)
                        for (int64_t j = 0; j <= cur; j++)
                            score[j] += overlap_count(&c, i, j) * exp(pr[i] - mx) / sum;
                }
                int64_t cnt = 0, has0 = 0, hascur = 0, hasprev = cur < 1;
                double min_dyn = INFINITY;
                int64_t min_dyn_j = -1;
                for (int64_t a = 0; a < c.n; a++) {
                    if (s[a] < 0) {
                        for (int64_t b = a; b < c.n; b++) bad += s[b] != -1;   /* pad at the end */
                        break;
                    }
                    cnt++;
                    bad += s[a] > cur;                                 /* no future block */
                    bad += a > 0 && s[a] <= s[a - 1];                  /* ascending, distinct */
                    has0 |= s[a] == 0, hascur |= s[a] == cur, hasprev |= s[a] == cur - 1;
                    if (s[a] != 0 && s[a] != cur && s[a] != cur - 1 &&
                        (score[s[a]] < min_dyn ||
                         (score[s[a]] == min_dyn && s[a] > min_dyn_j)))
                        min_dyn = score[s[a]], min_dyn_j = s[a];
                }
                bad += cnt != want;
                bad += !has0 || !hascur || !hasprev;
                /* optimality: no left-out candidate beats the weakest dynamic pick
                   (scores recomputed independently: allow 1e-12 of rounding) */
                if (min_dyn_j >= 0)
                    for (int64_t j = 1; j < cur - 1; j++) {
                        int in = 0;
                        for (int64_t a = 0; a < cnt; a++) in |= s[a] == j;
                        if (!in && score[j] > min_dyn + 1e-12) bad++;
                        if (!in && fabs(score[j] - min_dyn) <= 1e-12 && j < min_dyn_j) bad++;
                    }
                if (bad) {
                    T_CHECK(t, 0, "geometry %zu t=%lld h=%lld: selection [%d %d %d ...] breaks "
                            "an invariant", gi, (long long)tt, (long long)h, s[0],
                            c.n > 1 ? s[1] : -9, c.n > 2 ? s[2] : -9);
                    bad = 0;
                    tt = T;
                    break;
                }
            }
        }
    }
    t_pool_free(&pl);
}

/* ---- 3. early queries: nothing visible in the cmp branch ---- */

static void early_case(dsc_t *t, dsc_nsa_phi phi, int64_t T) {
    t_pool pl = {0};
    dsc_nsa_config c = {.l = 8, .d = 4, .l_sel = 8, .n = 3, .w = 3, .H_q = 4, .H_kv = 2,
                        .d_k = 5, .d_v = 3, .phi = phi, .phi_hidden = 4};
    prob p;
    prob_init(&pl, &p, &c, T, 0, 77 + (uint64_t)T, 1.0);
    dsc_err err = {0};
    if (T < c.l) p.kc = p.vc = p.hk = p.hv = NULL;   /* T_c = 0: may be NULL */
    T_CHECK(t, prob_fwd(&p, 0, &err) == DSC_OK, "fwd T=%lld: %s", (long long)T, err.msg);
    T_CHECK(t, prob_bwd(&p, &err) == DSC_OK, "bwd T=%lld: %s", (long long)T, err.msg);
    for (int64_t tt = 0; tt < T; tt++)
        for (int64_t h = 0; h < c.H_q; h++) {
            const double *ob = p.o_br + (tt * c.H_q + h) * 3 * c.d_v;
            const double *ls = p.lse + (tt * c.H_q + h) * 3;
            int empty = tt < c.l - 1;
            for (int64_t e = 0; e < c.d_v && empty; e++)
                T_CHECK(t, ob[e] == 0.0, "T=%lld t=%lld: o_cmp = %g, want exactly 0", (long long)T,
                        (long long)tt, ob[e]);
            T_CHECK(t, empty ? (isinf(ls[0]) && ls[0] < 0) : isfinite(ls[0]),
                    "T=%lld t=%lld: cmp lse %g", (long long)T, (long long)tt, ls[0]);
            T_CHECK(t, isfinite(ls[1]) && isfinite(ls[2]), "slc/win lse not finite");
        }
    T_CHECK(t, all_finite_d(p.o, T * p.ldo) && all_finite_d(p.o_br, p.sz.o_br),
            "T=%lld: non-finite output", (long long)T);
    int fin = all_finite_d(p.dq, T * p.ldq) && all_finite_d(p.dg, T * p.ldg);
    for (int b = 0; b < 3; b++)
        fin &= all_finite_d(p.dk[b], T * p.ldk) && all_finite_d(p.dv[b], T * p.ldv);
    for (int i = 0; i < P_N; i++) fin &= !p.dpar[i] || all_finite_d(p.dpar[i], p.n_par[i]);
    T_CHECK(t, fin, "T=%lld: non-finite gradient", (long long)T);
    /* the gate of an empty cmp row gets 0; with T < l the whole cmp path gets 0 */
    for (int64_t tt = 0; tt < T && tt < c.l - 1; tt++)
        for (int64_t h = 0; h < c.H_q; h++)
            T_CHECK(t, p.dg[tt * p.ldg + h * 3] == 0.0, "dg_cmp at early t=%lld", (long long)tt);
    if (T < c.l) {
        T_CHECK(t, maxabs(p.dk[0], T * p.ldk) == 0 && maxabs(p.dv[0], T * p.ldv) == 0,
                "T=%lld: cmp k/v gradient not 0", (long long)T);
        for (int i = 0; i < P_N; i++)
            T_CHECK(t, !p.dpar[i] || maxabs(p.dpar[i], p.n_par[i]) == 0, "T=%lld: d%s not 0",
                    (long long)T, par_name[i]);
    }
    t_pool_free(&pl);
}

static void test_early(dsc_t *t) {
    early_case(t, DSC_NSA_PHI_MLP, 1);
    early_case(t, DSC_NSA_PHI_MLP, 5);
    early_case(t, DSC_NSA_PHI_MEAN, 7);
    early_case(t, DSC_NSA_PHI_MLP, 13);
    early_case(t, DSC_NSA_PHI_MEAN, 13);
}

/* ---- 4. dense limits against independent code ---- */

static void test_dense(dsc_t *t) {
    t_pool pl = {0};
    enum { T = 17 };
    dsc_nsa_config c = {.l = 4, .d = 2, .l_sel = 4, .n = 5, .w = T, .H_q = 4, .H_kv = 2,
                        .d_k = 6, .d_v = 3, .phi = DSC_NSA_PHI_MEAN, .scale = 0.37};
    prob p;
    prob_init(&pl, &p, &c, T, 0, 31, 1.0);   /* 5 blocks <= n: every block selected */
    dsc_err err = {0};
    T_CHECK(t, prob_fwd(&p, 0, &err) == DSC_OK, "fwd: %s", err.msg);
    double *O = t_dalloc(&pl, T * c.d_v), *lse = t_dalloc(&pl, T), *ref = t_dalloc(&pl, T * c.d_v);
    float *got = t_falloc(&pl, T * c.d_v);
    for (int64_t h = 0; h < c.H_q; h++) {
        int64_t kh = h / 2;
        /* slc and win (independent k/v) against causal attention */
        for (int b = 1; b < 3; b++) {
            dsc_op_attn_dims ad = {T, c.d_k, c.d_v, p.ldq, p.ldk, p.ldv, c.d_v};
            dsc_op_attn_fwd_f64(O, lse, p.q + h * c.d_k, p.k[b] + kh * c.d_k,
                                p.v[b] + kh * c.d_v, &ad, c.scale);
            for (int64_t tt = 0; tt < T; tt++)
                for (int64_t e = 0; e < c.d_v; e++)
                    got[tt * c.d_v + e] = (float)p.o_br[((tt * c.H_q + h) * 3 + b) * c.d_v + e];
            t_close_f64(t, b == 1 ? "slc = dense" : "win = dense", got, O, T * c.d_v, 1e-6, 1e-6);
        }
        /* cmp against explicitly pooled keys/values (n_visible by brute force) */
        for (int64_t tt = 0; tt < T; tt++) {
            double s[T], mx = -INFINITY, sum = 0;
            int64_t nv = 0;
            for (int64_t i = 0; i * c.d + c.l - 1 < T; i++) {
                if (i * c.d + c.l - 1 > tt) continue;
                double d = 0;
                for (int64_t e = 0; e < c.d_k; e++) {
                    double kk = 0;
                    for (int64_t r = 0; r < c.l; r++)
                        kk += p.k[0][(i * c.d + r) * p.ldk + kh * c.d_k + e];
                    d += p.q[tt * p.ldq + h * c.d_k + e] * kk / c.l;
                }
                s[nv] = d * c.scale;
                mx = s[nv] > mx ? s[nv] : mx;
                nv++;
            }
            for (int64_t i = 0; i < nv; i++) sum += exp(s[i] - mx);
            for (int64_t e = 0; e < c.d_v; e++) {
                double acc = 0;
                for (int64_t i = 0; i < nv; i++) {
                    double vv = 0;
                    for (int64_t r = 0; r < c.l; r++)
                        vv += p.v[0][(i * c.d + r) * p.ldv + kh * c.d_v + e];
                    acc += exp(s[i] - mx) / sum * vv / c.l;
                }
                ref[tt * c.d_v + e] = acc;
                got[tt * c.d_v + e] = (float)p.o_br[((tt * c.H_q + h) * 3 + 0) * c.d_v + e];
            }
        }
        t_close_f64(t, "cmp = pooled", got, ref, T * c.d_v, 1e-6, 1e-6);
    }
    /* the gated sum */
    for (int64_t tt = 0; tt < T; tt++)
        for (int64_t h = 0; h < c.H_q; h++)
            for (int64_t e = 0; e < c.d_v; e++) {
                double s = 0;
                for (int b = 0; b < 3; b++)
                    s += p.g[tt * p.ldg + h * 3 + b] *
                         p.o_br[((tt * c.H_q + h) * 3 + b) * c.d_v + e];
                T_CHECK(t, fabs(s - p.o[tt * p.ldo + h * c.d_v + e]) < 1e-12, "gated sum");
            }
    t_pool_free(&pl);
}

/* ---- 5. finite differences and the f32 instance ---- */

typedef struct {
    const char *name;
    double *x, *grad;
    int64_t n;
} fd_var;

static void fd_run(dsc_t *t, const char *what, prob *p) {
    fd_var vars[4 + 6 + P_N];
    int nv = 0;
    static const char *kn[3] = {"k_cmp_raw", "k_slc", "k_win"},
                      *vn[3] = {"v_cmp_raw", "v_slc", "v_win"};
    vars[nv++] = (fd_var){"q", p->q, p->dq, p->T * p->ldq};
    vars[nv++] = (fd_var){"g", p->g, p->dg, p->T * p->ldg};
    for (int b = 0; b < p->nkv; b++) {
        vars[nv++] = (fd_var){p->nkv == 1 ? "k" : kn[b], p->k[b], p->dk[b], p->T * p->ldk};
        vars[nv++] = (fd_var){p->nkv == 1 ? "v" : vn[b], p->v[b], p->dv[b], p->T * p->ldv};
    }
    for (int i = 0; i < P_N; i++)
        if (p->par[i]) vars[nv++] = (fd_var){par_name[i], p->par[i], p->dpar[i], p->n_par[i]};
    for (int k = 0; k < nv; k++) {
        double maxd = 0, m = maxabs(vars[k].grad, vars[k].n);
        int64_t worst = 0;
        for (int64_t i = 0; i < vars[k].n; i++) {
            double x0 = vars[k].x[i];
            vars[k].x[i] = x0 + FD_H;
            double lp = prob_loss(p);
            vars[k].x[i] = x0 - FD_H;
            double lm = prob_loss(p);
            vars[k].x[i] = x0;
            double d = fabs((lp - lm) / (2 * FD_H) - vars[k].grad[i]);
            if (!(d <= maxd)) maxd = d, worst = i;
        }
        double rel = maxd / (m > 0 ? m : 1.0);
        if (verbose())
            printf("      fd %s d%-10s rel err %.2e (max|g| %.2g)\n", what, vars[k].name, rel, m);
        T_CHECK(t, m > 0, "%s: gradient of %s is all zero (test cannot fail)", what, vars[k].name);
        T_CHECK(t, rel <= FD_TOL, "%s: d%s[%lld] off by %.3g, rel err %.3g > %.0e", what,
                vars[k].name, (long long)worst, maxd, rel, FD_TOL);
    }
}

/* The f32 instance on the same (float-representable) inputs, with the f64
   forward's selection given, against p's f64 forward and backward (already
   run). Also reports whether the f32 instance's own selection matches. */
static void f32_vs_f64(dsc_t *t, prob *p) {
    t_pool pl = {0};
    const dsc_nsa_config *c = &p->c;
    int64_t T = p->T;
    float *q = t_to_f32(&pl, p->q, T * p->ldq), *g = t_to_f32(&pl, p->g, T * p->ldg);
    float *k[3] = {0}, *v[3] = {0}, *par[P_N] = {0}, *dpar[P_N] = {0}, *dk[3] = {0}, *dv[3] = {0};
    for (int b = 0; b < p->nkv; b++) {
        k[b] = t_to_f32(&pl, p->k[b], T * p->ldk);
        v[b] = t_to_f32(&pl, p->v[b], T * p->ldv);
        dk[b] = t_falloc(&pl, T * p->ldk);
        dv[b] = t_falloc(&pl, T * p->ldv);
    }
    for (int i = 0; i < P_N; i++)
        if (p->par[i])
            par[i] = t_to_f32(&pl, p->par[i], p->n_par[i]), dpar[i] = t_falloc(&pl, p->n_par[i]);
    float *o = t_falloc(&pl, T * p->ldo), *o_br = t_falloc(&pl, p->sz.o_br),
          *lse = t_falloc(&pl, p->sz.lse);
    float *kc = t_falloc(&pl, p->sz.k_cmp), *vc = t_falloc(&pl, p->sz.v_cmp);
    float *hk = t_falloc(&pl, p->sz.hid), *hv = t_falloc(&pl, p->sz.hid);
    float *dq = t_falloc(&pl, T * p->ldq), *dg = t_falloc(&pl, T * p->ldg);
    float *r = t_to_f32(&pl, p->r, T * p->ldo);
    int32_t *sel = t_palloc(&pl, p->sz.sel * (int64_t)sizeof(int32_t));
    void *ws = t_palloc(&pl, (int64_t)p->sz.scratch_bytes);

    dsc_nsa_in_f32 in = {
        q, p->ldq, {{k[0], k[1], k[2]}, p->ldk, {v[0], v[1], v[2]}, p->ldv}, g, p->ldg};
    dsc_nsa_params_f32 pp = {par[0], par[1], par[2], par[3], par[4], par[5]};
    dsc_nsa_saved_f32 sv = {o_br, lse, kc, vc, hk, hv, sel};
    dsc_err err = {0};
    T_CHECK(t, dsc_nsa_fwd_f32(c, T, &in, &pp, o, p->ldo, &sv, 0, ws, &err) == DSC_OK, "%s",
            err.msg);
    int same = !memcmp(sel, p->sel, (size_t)p->sz.sel * sizeof *sel);
    T_CHECK(t, same, "the f32 instance selects other blocks than the f64 one");
    memcpy(sel, p->sel, (size_t)p->sz.sel * sizeof *sel);
    T_CHECK(t,
            dsc_nsa_fwd_f32(c, T, &in, &pp, o, p->ldo, &sv, DSC_NSA_SEL_GIVEN, ws, &err) == DSC_OK,
            "%s", err.msg);
    dsc_nsa_grads_f32 gr = {dq, {dk[0], dk[1], dk[2]}, {dv[0], dv[1], dv[2]}, dg,
                            dpar[0], dpar[1], dpar[2], dpar[3], dpar[4], dpar[5]};
    T_CHECK(t, dsc_nsa_bwd_f32(c, T, &in, &pp, &sv, r, p->ldo, &gr, ws, &err) == DSC_OK, "%s",
            err.msg);

    agree(t, "o", o, p->o, T * p->ldo, AGREE_TOL);
    agree(t, "o_br", o_br, p->o_br, p->sz.o_br, AGREE_TOL);
    agree(t, "k_cmp", kc, p->kc, p->sz.k_cmp, AGREE_TOL);
    agree(t, "v_cmp", vc, p->vc, p->sz.v_cmp, AGREE_TOL);
    agree(t, "dq", dq, p->dq, T * p->ldq, AGREE_TOL);
    agree(t, "dg", dg, p->dg, T * p->ldg, AGREE_TOL);
    for (int b = 0; b < p->nkv; b++) {
        agree(t, "dk", dk[b], p->dk[b], T * p->ldk, AGREE_TOL);
        agree(t, "dv", dv[b], p->dv[b], T * p->ldv, AGREE_TOL);
    }
    for (int i = 0; i < P_N; i++)
        if (p->par[i]) agree(t, par_name[i], dpar[i], p->dpar[i], p->n_par[i], AGREE_TOL);
    /* lse: -inf rows must match exactly, the rest within tolerance */
    for (int64_t i = 0; i < p->sz.lse; i++)
        if (isinf(p->lse[i]) || isinf(lse[i]))
            T_CHECK(t, lse[i] == p->lse[i], "lse[%lld]: %g vs %g", (long long)i, lse[i], p->lse[i]);
        else
            T_CHECK(t, fabs(lse[i] - p->lse[i]) <= AGREE_TOL * (1 + fabs(p->lse[i])), "lse[%lld]",
                    (long long)i);
    t_pool_free(&pl);
}

static void grad_case(dsc_t *t, const char *what, const dsc_nsa_config *c, int64_t T,
                      int64_t pad, uint64_t seed) {
    t_pool pl = {0};
    prob p;
    prob_init(&pl, &p, c, T, pad, seed, 1.0);
    dsc_err err = {0};
    T_CHECK(t, prob_fwd(&p, 0, &err) == DSC_OK, "%s fwd: %s", what, err.msg);
    T_CHECK(t, prob_bwd(&p, &err) == DSC_OK, "%s bwd: %s", what, err.msg);
    /* the selection must make real choices, or the test checks less than it says */
    int64_t dyn = 0;
    for (int64_t tt = 0; tt < T; tt++) {
        int64_t cur = tt / c->l_sel;
        for (int64_t h = 0; h < c->H_kv; h++)
            for (int64_t a = 0; a < c->n; a++) {
                int32_t j = p.sel[(tt * c->H_kv + h) * c->n + a];
                dyn += j > 0 && j < cur - 1 && cur - 2 > c->n - 3;
            }
    }
    T_CHECK(t, dyn > 0, "%s: no row chooses among more candidates than slots", what);
    fd_run(t, what, &p);
    prob_fwd(&p, DSC_NSA_SEL_GIVEN, NULL);   /* restore the base forward's saved values */
    f32_vs_f64(t, &p);
    t_pool_free(&pl);
}

static void test_fd_mlp(dsc_t *t) {
    /* independent K/V per branch, overlapping compression (l = 2d), G = 2 */
    dsc_nsa_config c = {.l = 4, .d = 2, .l_sel = 4, .n = 4, .w = 5, .H_q = 4, .H_kv = 2,
                        .d_k = 5, .d_v = 3, .phi = DSC_NSA_PHI_MLP, .phi_hidden = 6};
    grad_case(t, "mlp", &c, 23, 0, 4242);
}

static void test_fd_mean(dsc_t *t) {
    /* shared K/V, l' = 2l (compressed blocks straddle selection blocks),
       d_v > d_k, G = 2 with 3 KV heads, padded strides */
    dsc_nsa_config c = {.l = 4, .d = 2, .l_sel = 8, .n = 4, .w = 3, .H_q = 6, .H_kv = 3,
                        .d_k = 4, .d_v = 6, .phi = DSC_NSA_PHI_MEAN, .shared_kv = 1};
    grad_case(t, "mean", &c, 37, 3, 777);
}

static void test_fd_mlp_shared(dsc_t *t) {
    /* MLP with shared K/V, l = 3d, l' not a multiple of l, G = 3 */
    dsc_nsa_config c = {.l = 6, .d = 2, .l_sel = 8, .n = 4, .w = 4, .H_q = 3, .H_kv = 1,
                        .d_k = 3, .d_v = 2, .phi = DSC_NSA_PHI_MLP, .phi_hidden = 5,
                        .shared_kv = 1, .scale = 0.6};
    grad_case(t, "mlp_shared", &c, 35, 1, 99);
}

/* ---- 6. the gate helper ---- */

typedef struct {
    double *x, *W, *r, *g;
    int64_t T, dm, H, ldx, ldg;
} gate_ctx;

static double gate_loss(gate_ctx *c) {
    dsc_nsa_gate_fwd_f64(c->g, c->ldg, c->x, c->ldx, c->W, c->T, c->dm, c->H);
    double s = 0;
    for (int64_t t = 0; t < c->T; t++)
        for (int64_t j = 0; j < 3 * c->H; j++) s += c->r[t * c->ldg + j] * c->g[t * c->ldg + j];
    return s;
}

static void test_gate(dsc_t *t) {
    t_pool pl = {0};
    t_rng r = {55};
    enum { TT = 5, DM = 7, H = 2, LDX = 9, LDG = 8 };
    gate_ctx c = {t_rnd(&pl, &r, TT * LDX, 1),
                  t_rnd(&pl, &r, 3 * H * DM, 0.5),
                  t_rnd(&pl, &r, TT * LDG, 1),
                  t_dalloc(&pl, TT * LDG),
                  TT,
                  DM,
                  H,
                  LDX,
                  LDG};
    double *dx = t_dalloc(&pl, TT * LDX), *dW = t_dalloc(&pl, 3 * H * DM);
    gate_loss(&c);
    dsc_nsa_gate_bwd_f64(dx, dW, c.r, c.g, LDG, c.x, LDX, c.W, TT, DM, H);
    struct { const char *n; double *x, *gr; int64_t cnt; } v[2] = {{"x", c.x, dx, TT * LDX},
                                                                   {"W", c.W, dW, 3 * H * DM}};
    for (int k = 0; k < 2; k++) {
        double maxd = 0, m = maxabs(v[k].gr, v[k].cnt);
        for (int64_t i = 0; i < v[k].cnt; i++) {
            double x0 = v[k].x[i];
            v[k].x[i] = x0 + FD_H;
            double lp = gate_loss(&c);
            v[k].x[i] = x0 - FD_H;
            double lm = gate_loss(&c);
            v[k].x[i] = x0;
            double d = fabs((lp - lm) / (2 * FD_H) - v[k].gr[i]);
            maxd = d > maxd ? d : maxd;
        }
        T_CHECK(t, m > 0 && maxd / m <= FD_TOL, "gate d%s rel err %.3g", v[k].n, maxd / m);
    }
    gate_loss(&c);
    float *g32 = t_falloc(&pl, TT * LDG), *dx32 = t_falloc(&pl, TT * LDX),
          *dW32 = t_falloc(&pl, 3 * H * DM);
    float *x32 = t_to_f32(&pl, c.x, TT * LDX), *W32 = t_to_f32(&pl, c.W, 3 * H * DM);
    dsc_nsa_gate_fwd_f32(g32, LDG, x32, LDX, W32, TT, DM, H);
    dsc_nsa_gate_bwd_f32(dx32, dW32, t_to_f32(&pl, c.r, TT * LDG), g32, LDG, x32, LDX, W32, TT, DM,
                         H);
    for (int64_t tt = 0; tt < TT; tt++)
        for (int64_t j = 0; j < 3 * H; j++)
            T_CHECK(t, fabs(g32[tt * LDG + j] - c.g[tt * LDG + j]) < 1e-7, "gate f32 g");
    agree(t, "gate dx", dx32, dx, TT * LDX, AGREE_TOL);
    agree(t, "gate dW", dW32, dW, 3 * H * DM, AGREE_TOL);
    t_pool_free(&pl);
}

/* ---- 7. errors ---- */

static void test_bad_config(dsc_t *t) {
    const dsc_nsa_config ok = {.l = 4, .d = 2, .l_sel = 8, .n = 4, .w = 5, .H_q = 4, .H_kv = 2,
                               .d_k = 5, .d_v = 3, .phi = DSC_NSA_PHI_MLP, .phi_hidden = 6};
    dsc_err err = {0};
    T_CHECK(t, dsc_nsa_config_check(&ok, &err) == DSC_OK, "valid config refused: %s", err.msg);
    struct {
        const char *field;
        dsc_nsa_config c;
    } bad[] = {
        {"l = 0", ok},      {"d = -1", ok},     {"l_sel = 0", ok},      {"l_sel = 9", ok},
        {"n = 2", ok},      {"w = 0", ok},      {"H_q = 0", ok},        {"H_q = 5", ok},
        {"d_k = 0", ok},    {"d_v = -3", ok},   {"phi_hidden = 0", ok}, {"phi = 7", ok},
        {"shared_kv = 2", ok}, {"scale = -1", ok}, {"l = 12", ok},      {"H_kv = 0", ok},
        {"l = 5", ok},      {"d = 0", ok},
    };
    bad[0].c.l = 0;
    bad[1].c.d = -1;
    bad[2].c.l_sel = 0;
    bad[3].c.l_sel = 9;        /* l_sel % d */
    bad[4].c.n = 2;
    bad[5].c.w = 0;
    bad[6].c.H_q = 0;
    bad[7].c.H_q = 5;          /* H_q % H_kv: message names H_q and H_kv */
    bad[8].c.d_k = 0;
    bad[9].c.d_v = -3;
    bad[10].c.phi_hidden = 0;
    bad[11].c.phi = (dsc_nsa_phi)7;
    bad[12].c.shared_kv = 2;
    bad[13].c.scale = -1;
    bad[14].c.l = 12;          /* l > l_sel */
    bad[15].c.H_kv = 0;
    bad[16].c.l = 5;           /* l % d */
    bad[17].c.d = 0;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        dsc_err e = {0};
        dsc_status s = dsc_nsa_config_check(&bad[i].c, &e);
        T_CHECK(t, s == DSC_ERR_ARG && strstr(e.msg, bad[i].field),
                "case %zu (%s): status %d, message \"%s\"", i, bad[i].field, (int)s, e.msg);
    }
    /* mean pooling needs no hidden width */
    dsc_nsa_config mean = ok;
    mean.phi = DSC_NSA_PHI_MEAN, mean.phi_hidden = 0;
    T_CHECK(t, dsc_nsa_config_check(&mean, NULL) == DSC_OK, "mean with phi_hidden 0 refused");

    /* bad calls: T < 1, a missing input, a selection that reads the future */
    t_pool pl = {0};
    prob p;
    prob_init(&pl, &p, &ok, 12, 0, 5, 1.0);
    dsc_nsa_sizes sz;
    dsc_err e = {0};
    T_CHECK(t, dsc_nsa_sizes_get(&ok, 0, &sz, &e) == DSC_ERR_ARG && strstr(e.msg, "T"),
            "T = 0: %s", e.msg);
    dsc_nsa_in_f64 in = prob_in(&p);
    dsc_nsa_params_f64 pp = prob_params(&p);
    dsc_nsa_saved_f64 sv = prob_saved(&p);
    in.kv.v[2] = NULL;
    T_CHECK(t, dsc_nsa_fwd_f64(&ok, 12, &in, &pp, p.o, 0, &sv, 0, p.ws, &e) == DSC_ERR_ARG &&
                   strstr(e.msg, "v[WIN]"),
            "missing v[WIN]: %s", e.msg);
    in = prob_in(&p);
    pp.w1_v = NULL;
    T_CHECK(t, dsc_nsa_fwd_f64(&ok, 12, &in, &pp, p.o, 0, &sv, 0, p.ws, &e) == DSC_ERR_ARG &&
                   strstr(e.msg, "w1_v"),
            "missing w1_v: %s", e.msg);
    pp = prob_params(&p);
    T_CHECK(t, dsc_nsa_fwd_f64(&ok, 12, &in, &pp, p.o, 0, &sv, 0, p.ws, &e) == DSC_OK, "%s", e.msg);
    p.sel[5 * ok.H_kv * ok.n + 1] = 1;   /* t = 5 (block 0): block 1 is in the future */
    T_CHECK(t, dsc_nsa_fwd_f64(&ok, 12, &in, &pp, p.o, 0, &sv, DSC_NSA_SEL_GIVEN, p.ws, &e) ==
                       DSC_ERR_ARG && strstr(e.msg, "t=5"),
            "future block: %s", e.msg);
    T_CHECK(t, prob_bwd(&p, &e) == DSC_ERR_ARG, "bwd accepted a future block");
    t_pool_free(&pl);
}

/* ---- 8. parity with fla's naive_nsa ---- */

#define FLA_DIR "tests/fixtures/nsa/"

static void *load(dsc_t *t, const char *name, size_t want_bytes) {
    size_t n = 0;
    void *p = t_read_file(name, &n);
    T_CHECK(t, p && n == want_bytes, "%s: %s (%zu bytes, want %zu)", name,
            p ? "wrong size" : "missing", n, want_bytes);
    if (p && n == want_bytes) return p;
    free(p);
    return NULL;
}

static void test_fla(dsc_t *t) {
    /* tests/fixtures/nsa/meta.json */
    enum { T = 24, HQ = 32, H = 2, K = 6, V = 4, BS = 4, N = 4, W = 6 };
    const dsc_nsa_config c = {.l = BS, .d = BS, .l_sel = BS, .n = N, .w = W, .H_q = HQ, .H_kv = H,
                              .d_k = K, .d_v = V, .phi = DSC_NSA_PHI_MEAN, .shared_kv = 1};
    static const char *gname[4] = {"dq", "dk", "dv", "dg"};
    const int64_t cnt[4] = {T * HQ * K, T * H * K, T * H * V, T * HQ * 3};
    t_pool pl = {0};
    float *in32[5] = {0}, *g_f32[4] = {0};
    double *g_f64[4] = {0};
    static const char *iname[5] = {"q", "k", "v", "g", "dout"};
    const int64_t icnt[5] = {T * HQ * K, T * H * K, T * H * V, T * HQ * 3, T * HQ * V};
    int okf = 1;
    for (int i = 0; i < 5; i++) {
        char path[128];
        snprintf(path, sizeof path, FLA_DIR "%s.f32", iname[i]);
        in32[i] = load(t, path, (size_t)icnt[i] * 4);
        okf &= in32[i] != NULL;
    }
    int32_t *sel_want = load(t, FLA_DIR "sel.i32", (size_t)T * H * N * 4);
    float *o_f32 = load(t, FLA_DIR "o.f32", (size_t)T * HQ * V * 4);
    double *o_f64 = load(t, FLA_DIR "o.f64", (size_t)T * HQ * V * 8);
    for (int i = 0; i < 4; i++) {
        char path[128];
        snprintf(path, sizeof path, FLA_DIR "%s.f32", gname[i]);
        g_f32[i] = load(t, path, (size_t)cnt[i] * 4);
        snprintf(path, sizeof path, FLA_DIR "%s.f64", gname[i]);
        g_f64[i] = load(t, path, (size_t)cnt[i] * 8);
        okf &= g_f32[i] && g_f64[i];
    }
    if (!okf || !sel_want || !o_f32 || !o_f64) goto done;

    dsc_nsa_sizes sz;
    dsc_nsa_sizes_get(&c, T, &sz, NULL);
    void *ws = t_palloc(&pl, (int64_t)sz.scratch_bytes);
    int32_t *sel = t_palloc(&pl, sz.sel * 4);
    dsc_err err = {0};

    /* f32 instance against fla's float32 naive_nsa */
    {
        float *o = t_falloc(&pl, T * HQ * V), *o_br = t_falloc(&pl, sz.o_br),
              *lse = t_falloc(&pl, sz.lse);
        float *kc = t_falloc(&pl, sz.k_cmp), *vc = t_falloc(&pl, sz.v_cmp);
        float *gr[4];
        for (int i = 0; i < 4; i++) gr[i] = t_falloc(&pl, cnt[i]);
        dsc_nsa_in_f32 in = {in32[0], 0, {{in32[1]}, 0, {in32[2]}, 0}, in32[3], 0};
        dsc_nsa_saved_f32 sv = {o_br, lse, kc, vc, NULL, NULL, sel};
        T_CHECK(t, dsc_nsa_fwd_f32(&c, T, &in, NULL, o, 0, &sv, 0, ws, &err) == DSC_OK, "%s",
                err.msg);
        int64_t diff = 0;
        for (int64_t i = 0; i < sz.sel; i++) diff += sel[i] != sel_want[i];
        T_CHECK(t, diff == 0, "selection differs from fla's in %lld of %lld slots", (long long)diff,
                (long long)sz.sel);
        dsc_nsa_grads_f32 g = {.dq = gr[0], .dk = {gr[1]}, .dv = {gr[2]}, .dg = gr[3]};
        T_CHECK(t, dsc_nsa_bwd_f32(&c, T, &in, NULL, &sv, in32[4], 0, &g, ws, &err) == DSC_OK, "%s",
                err.msg);
        double m = 0, d = 0;
        for (int64_t i = 0; i < T * HQ * V; i++) m = fmax(m, fabs(o_f32[i]));
        d = t_close_f32(t, "fla o (f32)", o, o_f32, T * HQ * V, FLA_TOL * m, FLA_TOL);
        if (verbose()) printf("      fla f32 %-3s max|d|/max = %.2e\n", "o", d / m);
        for (int i = 0; i < 4; i++) {
            m = 0;
            for (int64_t j = 0; j < cnt[i]; j++) m = fmax(m, fabs(g_f32[i][j]));
            char what[32];
            snprintf(what, sizeof what, "fla %s (f32)", gname[i]);
            d = t_close_f32(t, what, gr[i], g_f32[i], cnt[i], FLA_TOL * m, FLA_TOL);
            if (verbose()) printf("      fla f32 %-3s max|d|/max = %.2e\n", gname[i], d / m);
        }
    }
    /* f64 instance against the float64 transcription (same selection) */
    {
        double *x[5];
        for (int i = 0; i < 5; i++) {
            x[i] = t_dalloc(&pl, icnt[i]);
            for (int64_t j = 0; j < icnt[i]; j++) x[i][j] = in32[i][j];
        }
        double *o = t_dalloc(&pl, T * HQ * V), *o_br = t_dalloc(&pl, sz.o_br),
               *lse = t_dalloc(&pl, sz.lse);
        double *kc = t_dalloc(&pl, sz.k_cmp), *vc = t_dalloc(&pl, sz.v_cmp);
        double *gr[4];
        for (int i = 0; i < 4; i++) gr[i] = t_dalloc(&pl, cnt[i]);
        dsc_nsa_in_f64 in = {x[0], 0, {{x[1]}, 0, {x[2]}, 0}, x[3], 0};
        dsc_nsa_saved_f64 sv = {o_br, lse, kc, vc, NULL, NULL, sel};
        T_CHECK(t, dsc_nsa_fwd_f64(&c, T, &in, NULL, o, 0, &sv, 0, ws, &err) == DSC_OK, "%s",
                err.msg);
        T_CHECK(t, !memcmp(sel, sel_want, (size_t)sz.sel * 4), "f64 selection differs from fla's");
        dsc_nsa_grads_f64 g = {.dq = gr[0], .dk = {gr[1]}, .dv = {gr[2]}, .dg = gr[3]};
        T_CHECK(t, dsc_nsa_bwd_f64(&c, T, &in, NULL, &sv, x[4], 0, &g, ws, &err) == DSC_OK, "%s",
                err.msg);
        /* compare as doubles: t_close_f64 takes float "got", so check by hand */
        const double *got[5] = {o, gr[0], gr[1], gr[2], gr[3]};
        const double *want[5] = {o_f64, g_f64[0], g_f64[1], g_f64[2], g_f64[3]};
        const int64_t n5[5] = {T * HQ * V, cnt[0], cnt[1], cnt[2], cnt[3]};
        static const char *n5name[5] = {"o", "dq", "dk", "dv", "dg"};
        for (int i = 0; i < 5; i++) {
            double m = maxabs(want[i], n5[i]), d = 0;
            for (int64_t j = 0; j < n5[i]; j++) d = fmax(d, fabs(got[i][j] - want[i][j]));
            if (verbose()) printf("      fla f64 %-3s max|d|/max = %.2e\n", n5name[i], d / m);
            T_CHECK(t, d <= 1e-10 * m, "f64 %s: max|d| %.3g > 1e-10 * %.3g", n5name[i], d, m);
        }
    }
done:
    for (int i = 0; i < 5; i++) free(in32[i]);
    for (int i = 0; i < 4; i++) free(g_f32[i]), free(g_f64[i]);
    free(sel_want), free(o_f32), free(o_f64);
    t_pool_free(&pl);
}

const dsc_test_case dsc_tests_nsa[] = {
    {"score_map", test_score_map},
    {"select", test_select},
    {"early", test_early},
    {"dense", test_dense},
    {"fd_mlp", test_fd_mlp},
    {"fd_mean", test_fd_mean},
    {"fd_mlp_shared", test_fd_mlp_shared},
    {"gate", test_gate},
    {"bad_config", test_bad_config},
    {"fla", test_fla},
    {NULL, NULL},
};
