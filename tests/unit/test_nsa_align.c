/*
 * test_nsa_align.c - NSA's selection alignment loss (src/nsa/nsa_align.h)
 * through the fast operator (opts->align of nsa_fast.h).
 *
 * Checked, on random inputs (fixed seeds) in two geometries, one with real
 * top-n choices (n below the blocks) and one where every block is selected
 * (the dense form):
 *  - each row's KL against a direct double computation from the spec's
 *    formulas (written out here: compressed softmax, overlap weights as
 *    interval lengths, group scores, the selected branch's softmax over
 *    the operator's selection, free slots, KL), abs 1e-4 (fp32
 *    probabilities against double ones; the KLs are O(0.01 .. 1)); the
 *    skipped rows (-1) are the same;
 *  - the gradient: with dO = 0, selection and target held fixed
 *    (DSC_NSA_SEL_GIVEN, tgt_given) and scale 1, the backward's dq, dk_cmp
 *    and phi's key-side parameters against central finite differences of
 *    the summed KL (h = 1e-2 on fp32 inputs: the sum's fp32 noise is
 *    ~1e-6, so the differences carry ~1e-4; bound 2e-3 x (1 + |g|) over 24
 *    sampled coordinates per tensor);
 *  - alignment on leaves the forward's outputs bitwise unchanged, and
 *    scale 0 leaves the backward's bitwise unchanged.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nsa/nsa.h"
#include "nsa/nsa_fast.h"
#include "nsa_test.h"
#include "test.h"

typedef struct {
    dsc_nsa_config c;
    int64_t T, nq, nk, nv, ng, no;
    dsc_nsa_sizes sz;
    float *q, *k[3], *v[3], *g, *par[6];
    int64_t n_par[6];
    void *ws;
} prob;

typedef struct {
    float *o, *o_br, *lse, *kc, *vc, *hk, *hv, *tgt, *gs, *kl;
    int32_t *sel;
    float *dq, *dk[3], *dv[3], *dg, *dpar[6];
} outs;

static void prob_init(t_pool *pl, prob *p, const dsc_nsa_config *c, int64_t T, uint64_t seed) {
    memset(p, 0, sizeof *p);
    p->c = *c;
    p->T = T;
    t_rng r = {seed};
    dsc_nsa_sizes_get(c, T, &p->sz, NULL);
    p->nq = T * c->H_q * c->d_k, p->nk = T * c->H_kv * c->d_k, p->nv = T * c->H_kv * c->d_v;
    p->ng = T * c->H_q * 3, p->no = T * c->H_q * c->d_v;
    p->q = t_to_f32(pl, t_rnd(pl, &r, p->nq, 1.2), p->nq);
    for (int b = 0; b < 3; b++) {
        p->k[b] = t_to_f32(pl, t_rnd(pl, &r, p->nk, 1.2), p->nk);
        p->v[b] = t_to_f32(pl, t_rnd(pl, &r, p->nv, 1.0), p->nv);
    }
    p->g = t_falloc(pl, p->ng);
    for (int64_t i = 0; i < p->ng; i++) p->g[i] = 0.05f + 0.9f * t_rng_uniform(&r);
    double *par[6];
    t_nsa_phi_rnd(pl, &r, c, &p->sz, par, p->n_par);
    for (int i = 0; i < 6; i++) p->par[i] = t_to_f32(pl, par[i], p->n_par[i]);
    dsc_nsa_fast_opts op = {1, 0, NULL, NULL};
    size_t fb = 0, bb = 0;
    dsc_nsa_fast_sizes(c, T, &op, &fb, &bb, NULL);
    p->ws = t_palloc(pl, (int64_t)(fb > bb ? fb : bb));
}

static void outs_alloc(t_pool *pl, const prob *p, outs *u) {
    memset(u, 0, sizeof *u);
    u->o = t_falloc(pl, p->no);
    u->o_br = t_falloc(pl, p->sz.o_br);
    u->lse = t_falloc(pl, p->sz.lse);
    u->kc = t_falloc(pl, p->sz.k_cmp);
    u->vc = t_falloc(pl, p->sz.v_cmp);
    u->hk = t_falloc(pl, p->sz.hid);
    u->hv = t_falloc(pl, p->sz.hid);
    u->sel = t_palloc(pl, p->sz.sel * (int64_t)sizeof(int32_t));
    u->tgt = t_falloc(pl, p->sz.sel);
    u->gs = t_falloc(pl, p->sz.sel);
    u->kl = t_falloc(pl, p->T * p->c.H_kv);
    u->dq = t_falloc(pl, p->nq);
    for (int b = 0; b < 3; b++) u->dk[b] = t_falloc(pl, p->nk), u->dv[b] = t_falloc(pl, p->nv);
    u->dg = t_falloc(pl, p->ng);
    for (int i = 0; i < 6; i++) u->dpar[i] = t_falloc(pl, p->n_par[i]);
}

/* Forward (align: 0 off, 1 on, 2 on with sel and tgt given from u), then,
   when dO, the backward with alignment scale bscale (< 0: off). */
static dsc_status run(const prob *p, outs *u, int align, const float *dO, double bscale) {
    dsc_nsa_in_f32 in = {p->q, 0, {{p->k[0], p->k[1], p->k[2]}, 0,
                                   {p->v[0], p->v[1], p->v[2]}, 0}, p->g, 0};
    dsc_nsa_params_f32 pp = {p->par[0], p->par[1], p->par[2], p->par[3], p->par[4], p->par[5]};
    dsc_nsa_saved_f32 sv = {u->o_br, u->lse, u->kc, u->vc, u->hk, u->hv, u->sel};
    dsc_nsa_align al = {u->tgt, u->gs, u->kl, align == 2, bscale};
    dsc_nsa_fast_opts op = {1, 0, NULL, align ? &al : NULL};
    dsc_status s = dsc_nsa_fast_fwd_f32(&p->c, p->T, &in, &pp, u->o, 0, &sv,
                                        align == 2 ? DSC_NSA_SEL_GIVEN : 0, &op, p->ws, NULL);
    if (s != DSC_OK || !dO) return s;
    op.align = bscale >= 0 ? &al : NULL;
    dsc_nsa_grads_f32 gr = {u->dq, {u->dk[0], u->dk[1], u->dk[2]}, {u->dv[0], u->dv[1], u->dv[2]},
                            u->dg, u->dpar[0], u->dpar[1], u->dpar[2], u->dpar[3], u->dpar[4],
                            u->dpar[5]};
    return dsc_nsa_fast_bwd_f32(&p->c, p->T, &in, &pp, &sv, dO, 0, &gr, &op, p->ws, NULL);
}

/* |[a0, a1] ∩ [b0, b1]| (closed integer intervals) */
static double overlap(int64_t a0, int64_t a1, int64_t b0, int64_t b1) {
    int64_t lo = a0 > b0 ? a0 : b0, hi = a1 < b1 ? a1 : b1;
    return hi >= lo ? (double)(hi - lo + 1) : 0.0;
}

/* The KL of row (t, KV head h) straight from the formulas; -1 if skipped. */
static double kl_direct(const prob *p, const outs *u, int64_t t, int64_t h) {
    const dsc_nsa_config *c = &p->c;
    int64_t G = c->H_q / c->H_kv, dk = c->d_k, n = c->n, cur = t / c->l_sel;
    int64_t nv = t >= c->l - 1 ? (t + 1 - c->l) / c->d + 1 : 0;
    double scale = 1.0 / sqrt((double)dk), s[64] = {0}, M[64] = {0};
    const int32_t *sel = u->sel + (t * c->H_kv + h) * n;
    for (int64_t gi = 0; gi < G; gi++) {
        const float *q = p->q + t * c->H_q * dk + (h * G + gi) * dk;
        /* compressed softmax, mapped to blocks */
        double z[512], mx = -INFINITY, sum = 0;
        for (int64_t i = 0; i < nv; i++) {
            double d = 0;
            for (int64_t e = 0; e < dk; e++) d += (double)q[e] * u->kc[(i * c->H_kv + h) * dk + e];
            z[i] = scale * d;
            mx = z[i] > mx ? z[i] : mx;
        }
        for (int64_t i = 0; i < nv; i++) sum += exp(z[i] - mx);
        for (int64_t i = 0; i < nv; i++)
            for (int64_t j = 0; j <= cur; j++)
                s[j] += exp(z[i] - mx) / sum *
                        overlap(i * c->d, i * c->d + c->l - 1, j * c->l_sel,
                                (j + 1) * c->l_sel - 1) / (double)c->d;
        /* the selected branch's softmax over the selected keys <= t */
        double y[4096], my = -INFINITY, sy = 0;
        int64_t nk = 0;
        for (int64_t u2 = 0; u2 < n; u2++) {
            if (sel[u2] < 0) continue;
            for (int64_t r = sel[u2] * c->l_sel; r < (sel[u2] + 1) * c->l_sel && r <= t; r++) {
                double d = 0;
                for (int64_t e = 0; e < dk; e++)
                    d += (double)q[e] * p->k[DSC_NSA_SLC][(r * c->H_kv + h) * dk + e];
                y[nk] = scale * d;
                my = y[nk] > my ? y[nk] : my;
                nk++;
            }
        }
        for (int64_t i = 0; i < nk; i++) sy += exp(y[i] - my);
        nk = 0;
        for (int64_t u2 = 0; u2 < n; u2++) {
            if (sel[u2] < 0) continue;
            for (int64_t r = sel[u2] * c->l_sel; r < (sel[u2] + 1) * c->l_sel && r <= t; r++)
                M[sel[u2]] += exp(y[nk++] - my) / sy;
        }
    }
    double ms = 0, ss = 0;
    int nfree = 0;
    for (int64_t u2 = 0; u2 < n; u2++)
        if (sel[u2] >= 1 && sel[u2] <= cur - 2) ms += M[sel[u2]], ss += s[sel[u2]], nfree++;
    if (nfree < 2) return -1;
    double kl = 0;
    for (int64_t u2 = 0; u2 < n; u2++) {
        int64_t j = sel[u2];
        if (j < 1 || j > cur - 2) continue;
        double tau = M[j] / ms;
        if (tau > 0) kl += tau * log(tau / (s[j] / ss));
    }
    return kl;
}

static double kl_sum(const prob *p, const outs *u) {
    double s = 0;
    for (int64_t i = 0; i < p->T * p->c.H_kv; i++)
        if (u->kl[i] >= 0) s += u->kl[i];
    return s;
}

/* Central differences of the summed KL (selection and target fixed) for 24
   coordinates of x against the analytic gradient g. */
static void fd_check(dsc_t *t, const char *what, const prob *p, outs *fixed, outs *tmp, float *x,
                     int64_t nx, const float *g) {
    t_rng r = {0x5eed + (uint64_t)nx};
    const double h = 1e-2;
    double worst = 0;
    for (int k = 0; k < 24; k++) {
        int64_t i = (int64_t)(t_rng_u64(&r) % (uint64_t)nx);
        float x0 = x[i], xs[2] = {(float)(x0 + h), (float)(x0 - h)};
        double f[2];
        for (int sgn = 0; sgn < 2; sgn++) {
            x[i] = xs[sgn];
            memcpy(tmp->sel, fixed->sel, (size_t)p->sz.sel * sizeof(int32_t));
            memcpy(tmp->tgt, fixed->tgt, (size_t)p->sz.sel * sizeof(float));
            T_CHECK(t, run(p, tmp, 2, NULL, 0) == DSC_OK, "%s: fd forward", what);
            f[sgn] = kl_sum(p, tmp);
        }
        x[i] = x0;
        double fd = (f[0] - f[1]) / ((double)xs[0] - (double)xs[1]);
        double err = fabs(fd - g[i]) / (1.0 + fabs(g[i]));
        if (err > worst) worst = err;
        T_CHECK(t, err <= 2e-3, "%s[%lld]: analytic %.6g vs finite differences %.6g", what,
                (long long)i, (double)g[i], fd);
    }
    if (getenv("DSC_TEST_VERBOSE")) fprintf(stderr, "  %s: worst rel err %.2e\n", what, worst);
}

static void align_case(dsc_t *t, const dsc_nsa_config *c, int64_t T, uint64_t seed) {
    t_pool pl = {0};
    prob p;
    prob_init(&pl, &p, c, T, seed);
    outs a, b, z;
    outs_alloc(&pl, &p, &a);
    outs_alloc(&pl, &p, &b);
    outs_alloc(&pl, &p, &z);
    float *dO = t_falloc(&pl, p.no);   /* 0: only the alignment's gradient */
    t_rng r = {seed + 1};
    float *dO2 = t_to_f32(&pl, t_rnd(&pl, &r, p.no, 1.0), p.no);

    /* 1. forward outputs unchanged by the alignment; the KLs */
    T_CHECK(t, run(&p, &a, 1, dO2, 0.0) == DSC_OK, "align forward");
    T_CHECK(t, run(&p, &b, 0, dO2, -1) == DSC_OK, "plain forward");
    T_CHECK(t, !memcmp(a.o, b.o, (size_t)p.no * sizeof(float)) &&
                   !memcmp(a.sel, b.sel, (size_t)p.sz.sel * sizeof(int32_t)),
            "the alignment changed the forward");
    T_CHECK(t, !memcmp(a.dq, b.dq, (size_t)p.nq * sizeof(float)) &&
                   !memcmp(a.dk[0], b.dk[0], (size_t)p.nk * sizeof(float)) &&
                   !memcmp(a.dpar[1], b.dpar[1], (size_t)p.n_par[1] * sizeof(float)),
            "alignment scale 0 changed the backward");
    int64_t counted = 0;
    double worst = 0;
    for (int64_t tt = 0; tt < T; tt++)
        for (int64_t h = 0; h < c->H_kv; h++) {
            double want = kl_direct(&p, &a, tt, h), got = a.kl[tt * c->H_kv + h];
            if (want < 0 || got < 0) {
                T_CHECK(t, want < 0 && got < 0, "row t=%lld h=%lld: kl %g, direct %g",
                        (long long)tt, (long long)h, got, want);
                continue;
            }
            counted++;
            worst = fabs(got - want) > worst ? fabs(got - want) : worst;
            T_CHECK(t, fabs(got - want) <= 1e-4, "row t=%lld h=%lld: kl %.7f, direct %.7f",
                    (long long)tt, (long long)h, got, want);
        }
    T_CHECK(t, counted > T / 2, "only %lld rows counted", (long long)counted);
    if (getenv("DSC_TEST_VERBOSE"))
        fprintf(stderr, "  %lld rows, worst |kl - direct| %.2e\n", (long long)counted, worst);

    /* 2. gradients against finite differences (selection, target fixed) */
    T_CHECK(t, run(&p, &z, 1, NULL, 0) == DSC_OK, "forward");
    outs g;
    outs_alloc(&pl, &p, &g);
    memcpy(g.sel, z.sel, (size_t)p.sz.sel * sizeof(int32_t));
    memcpy(g.tgt, z.tgt, (size_t)p.sz.sel * sizeof(float));
    T_CHECK(t, run(&p, &g, 2, dO, 1.0) == DSC_OK, "align backward");
    fd_check(t, "dq", &p, &z, &b, p.q, p.nq, g.dq);
    fd_check(t, "dk_cmp", &p, &z, &b, p.k[DSC_NSA_CMP], p.nk, g.dk[DSC_NSA_CMP]);
    fd_check(t, "pe_k", &p, &z, &b, p.par[0], p.n_par[0], g.dpar[0]);
    fd_check(t, "w1_k", &p, &z, &b, p.par[1], p.n_par[1], g.dpar[1]);
    fd_check(t, "w2_k", &p, &z, &b, p.par[2], p.n_par[2], g.dpar[2]);
    t_pool_free(&pl);
}

static dsc_nsa_config cfg(int64_t n) {
    dsc_nsa_config c = {0};
    c.l = 8, c.d = 4, c.l_sel = 16, c.n = n, c.w = 8;
    c.H_q = 4, c.H_kv = 2, c.d_k = 12, c.d_v = 8;
    c.phi = DSC_NSA_PHI_MLP, c.phi_hidden = 4;
    return c;
}

/* n 6 of up to 10 blocks: real top-n choices (3 free slots) */
static void test_sparse(dsc_t *t) {
    dsc_nsa_config c = cfg(6);
    align_case(t, &c, 150, 11);
}

/* n 12 >= every block: each row's free slots are all its blocks 1..cur-2 */
static void test_dense(dsc_t *t) {
    dsc_nsa_config c = cfg(12);
    align_case(t, &c, 150, 12);
}

const dsc_test_case dsc_tests_nsa_align[] = {
    {"sparse", test_sparse},
    {"dense", test_dense},
    {NULL, NULL},
};
