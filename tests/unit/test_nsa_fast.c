/*
 * test_nsa_fast.c - the fast fp32 NSA operator (src/nsa/nsa_fast.h)
 * against the scalar reference (src/nsa/nsa.h), f32 and f64 instances.
 *
 * Every case builds float-representable random inputs and runs, on them:
 * the f64 reference, the f32 reference, and the fast path at 1 and 2
 * threads (same chunk count) and at another chunk count. Checked:
 *  - selections identical to the f32 and f64 references';
 *  - forward (o, o_br, lse, k_cmp, v_cmp, hid_k, hid_v) and every gradient
 *    (q, each branch's k and v, the gates, phi's parameters) close to both;
 *  - -inf lse (rows with no visible compressed block) in the same places;
 *  - 1 vs 2 threads bitwise identical (forward and backward): each output
 *    element is written by one work item, and the backward's key/value
 *    gradients are summed per fixed chunk in a fixed order;
 *  - another chunk count within tolerance; DSC_NSA_SEL_GIVEN with the
 *    reference's selection reproduces the forward bitwise; bad calls.
 * Shapes: d_k != d_v; G = 1, 2, 8, 16; T not a multiple of the tile (64) nor
 * of l, l', d; T < l (empty compressed branch); l = d = l' (identity score
 * map); the paper's l/d/l' over several tiles with real top-n choices;
 * both compression kinds; shared and independent K/V; padded strides.
 *
 * Tolerances (relative to each tensor's max magnitude):
 *  forward 2e-5: the fast path sums in fp32 inside GEMM tiles (scores over
 *  d_k <= 24 products, P V over <= 700 keys) where the reference sums in
 *  double; fp32 rounding of such sums is ~1e-7 .. 1e-6 of their magnitude
 *  (measured: DSC_TEST_VERBOSE=1 prints each error);
 *  gradients 1e-4 (the brief's bound): dK/dV add up to T per-query terms
 *  in fp32 chunk accumulators, dq crosses three branches;
 *  lse absolute 2e-5 * max|lse|.
 */
#include <stdlib.h>
#include <string.h>

#include "nsa/nsa.h"
#include "nsa/nsa_fast.h"
#include "nsa_test.h"
#include "test.h"

#define FWD_TOL 2e-5
#define GRAD_TOL 1e-4

enum { P_PE_K, P_W1_K, P_W2_K, P_PE_V, P_W1_V, P_W2_V, P_N };
static const char *par_name[P_N] = {"pe_k", "w1_k", "w2_k", "pe_v", "w1_v", "w2_v"};

static int verbose(void) { return getenv("DSC_TEST_VERBOSE") != NULL; }

/* Every output of one run, in float (the f64 reference's rounded after). */
typedef struct {
    float *o, *o_br, *lse, *kc, *vc, *hk, *hv;
    int32_t *sel;
    float *dq, *dk[3], *dv[3], *dg, *dpar[P_N];
} outs;

typedef struct {
    dsc_nsa_config c;
    int64_t T, ldq, ldk, ldv, ldg, ldo, nq, nk, nv, ng, no;
    dsc_nsa_sizes sz;
    int nkv;
    double *q, *k[3], *v[3], *g, *par[P_N], *r;   /* f64 inputs */
    float *qf, *kf[3], *vf[3], *gf, *parf[P_N], *rf;
    int64_t n_par[P_N];
} prob;

static void prob_init(t_pool *pl, prob *p, const dsc_nsa_config *c, int64_t T, int64_t pad,
                      uint64_t seed) {
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
    p->nq = T * p->ldq, p->nk = T * p->ldk, p->nv = T * p->ldv, p->ng = T * p->ldg;
    p->no = T * p->ldo;
    p->nkv = c->shared_kv ? 1 : 3;
    /* q, k scaled so that the softmaxes are neither flat nor one-hot */
    p->q = t_rnd(pl, &r, p->nq, 1.2);
    for (int b = 0; b < p->nkv; b++) {
        p->k[b] = t_rnd(pl, &r, p->nk, 1.2);
        p->v[b] = t_rnd(pl, &r, p->nv, 1.0);
    }
    p->g = t_dalloc(pl, p->ng);
    for (int64_t i = 0; i < p->ng; i++) p->g[i] = (double)(float)(0.05 + 0.9 * t_rng_uniform(&r));
    p->r = t_rnd(pl, &r, p->no, 1.0);
    if (c->phi == DSC_NSA_PHI_MLP) {
        t_nsa_phi_rnd(pl, &r, c, &p->sz, p->par, p->n_par);
        for (int i = 0; i < P_N; i++) p->parf[i] = t_to_f32(pl, p->par[i], p->n_par[i]);
    }
    p->qf = t_to_f32(pl, p->q, p->nq);
    for (int b = 0; b < p->nkv; b++) {
        p->kf[b] = t_to_f32(pl, p->k[b], p->nk);
        p->vf[b] = t_to_f32(pl, p->v[b], p->nv);
    }
    p->gf = t_to_f32(pl, p->g, p->ng);
    p->rf = t_to_f32(pl, p->r, p->no);
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
    u->dq = t_falloc(pl, p->nq);
    for (int b = 0; b < p->nkv; b++) {
        u->dk[b] = t_falloc(pl, p->nk);
        u->dv[b] = t_falloc(pl, p->nv);
    }
    u->dg = t_falloc(pl, p->ng);
    for (int i = 0; i < P_N; i++)
        if (p->n_par[i]) u->dpar[i] = t_falloc(pl, p->n_par[i]);
}

static dsc_nsa_in_f32 in32(const prob *p) {
    dsc_nsa_in_f32 in = {p->qf, p->ldq, {{p->kf[0], p->kf[1], p->kf[2]}, p->ldk,
                                         {p->vf[0], p->vf[1], p->vf[2]}, p->ldv}, p->gf, p->ldg};
    return in;
}
static dsc_nsa_params_f32 par32(const prob *p) {
    dsc_nsa_params_f32 pp = {p->parf[0], p->parf[1], p->parf[2],
                             p->parf[3], p->parf[4], p->parf[5]};
    return pp;
}
static dsc_nsa_saved_f32 sv32(const outs *u) {
    dsc_nsa_saved_f32 s = {u->o_br, u->lse, u->kc, u->vc, u->hk, u->hv, u->sel};
    return s;
}
static dsc_nsa_grads_f32 gr32(const outs *u) {
    dsc_nsa_grads_f32 g = {u->dq, {u->dk[0], u->dk[1], u->dk[2]}, {u->dv[0], u->dv[1], u->dv[2]},
                           u->dg, u->dpar[0], u->dpar[1], u->dpar[2], u->dpar[3], u->dpar[4],
                           u->dpar[5]};
    return g;
}

/* The f32 reference, forward (own selection) and backward. */
static int run_ref32(dsc_t *t, t_pool *pl, const prob *p, outs *u) {
    outs_alloc(pl, p, u);
    void *ws = t_palloc(pl, (int64_t)p->sz.scratch_bytes);
    dsc_nsa_in_f32 in = in32(p);
    dsc_nsa_params_f32 pp = par32(p);
    dsc_nsa_saved_f32 sv = sv32(u);
    dsc_nsa_grads_f32 gr = gr32(u);
    dsc_err err = {0};
    dsc_status s = dsc_nsa_fwd_f32(&p->c, p->T, &in, &pp, u->o, p->ldo, &sv, 0, ws, &err);
    if (s == DSC_OK) s = dsc_nsa_bwd_f32(&p->c, p->T, &in, &pp, &sv, p->rf, p->ldo, &gr, ws, &err);
    T_CHECK(t, s == DSC_OK, "reference f32: %s", err.msg);
    return s == DSC_OK;
}

/* The f64 reference, its results rounded to float. */
static int run_ref64(dsc_t *t, t_pool *pl, const prob *p, outs *u) {
    outs_alloc(pl, p, u);
    const dsc_nsa_config *c = &p->c;
    void *ws = t_palloc(pl, (int64_t)p->sz.scratch_bytes);
    double *o = t_dalloc(pl, p->no), *obr = t_dalloc(pl, p->sz.o_br),
           *lse = t_dalloc(pl, p->sz.lse), *kc = t_dalloc(pl, p->sz.k_cmp),
           *vc = t_dalloc(pl, p->sz.v_cmp), *hk = t_dalloc(pl, p->sz.hid),
           *hv = t_dalloc(pl, p->sz.hid), *dq = t_dalloc(pl, p->nq), *dg = t_dalloc(pl, p->ng);
    double *dk[3] = {0}, *dv[3] = {0}, *dpar[P_N] = {0};
    for (int b = 0; b < p->nkv; b++) dk[b] = t_dalloc(pl, p->nk), dv[b] = t_dalloc(pl, p->nv);
    for (int i = 0; i < P_N; i++)
        if (p->n_par[i]) dpar[i] = t_dalloc(pl, p->n_par[i]);
    dsc_nsa_in_f64 in = {p->q, p->ldq, {{p->k[0], p->k[1], p->k[2]}, p->ldk,
                                        {p->v[0], p->v[1], p->v[2]}, p->ldv}, p->g, p->ldg};
    dsc_nsa_params_f64 pp = {p->par[0], p->par[1], p->par[2], p->par[3], p->par[4], p->par[5]};
    dsc_nsa_saved_f64 sv = {obr, lse, kc, vc, hk, hv, u->sel};
    dsc_nsa_grads_f64 gr = {dq, {dk[0], dk[1], dk[2]}, {dv[0], dv[1], dv[2]}, dg, dpar[0],
                            dpar[1], dpar[2], dpar[3], dpar[4], dpar[5]};
    dsc_err err = {0};
    dsc_status s = dsc_nsa_fwd_f64(c, p->T, &in, &pp, o, p->ldo, &sv, 0, ws, &err);
    if (s == DSC_OK) s = dsc_nsa_bwd_f64(c, p->T, &in, &pp, &sv, p->r, p->ldo, &gr, ws, &err);
    T_CHECK(t, s == DSC_OK, "reference f64: %s", err.msg);
#define RND(dst, src, n) \
    for (int64_t i_ = 0; i_ < (n); i_++) (dst)[i_] = (float)(src)[i_]
    RND(u->o, o, p->no);
    RND(u->o_br, obr, p->sz.o_br);
    RND(u->lse, lse, p->sz.lse);
    RND(u->kc, kc, p->sz.k_cmp);
    RND(u->vc, vc, p->sz.v_cmp);
    RND(u->hk, hk, p->sz.hid);
    RND(u->hv, hv, p->sz.hid);
    RND(u->dq, dq, p->nq);
    RND(u->dg, dg, p->ng);
    for (int b = 0; b < p->nkv; b++) {
        RND(u->dk[b], dk[b], p->nk);
        RND(u->dv[b], dv[b], p->nv);
    }
    for (int i = 0; i < P_N; i++)
        if (p->n_par[i]) RND(u->dpar[i], dpar[i], p->n_par[i]);
#undef RND
    return s == DSC_OK;
}

/* The fast path; sel_from: NULL (own selection) or a selection to use. */
static int run_fast(dsc_t *t, t_pool *pl, const prob *p, outs *u, int threads, int chunks,
                    const int32_t *sel_from) {
    outs_alloc(pl, p, u);
    dsc_nsa_fast_opts op = {threads, chunks, NULL, NULL};
    size_t fb = 0, bb = 0;
    dsc_err err = {0};
    dsc_status s = dsc_nsa_fast_sizes(&p->c, p->T, &op, &fb, &bb, &err);
    T_CHECK(t, s == DSC_OK, "fast sizes: %s", err.msg);
    if (s != DSC_OK) return 0;
    void *ws = t_palloc(pl, (int64_t)(fb > bb ? fb : bb));
    dsc_nsa_in_f32 in = in32(p);
    dsc_nsa_params_f32 pp = par32(p);
    dsc_nsa_saved_f32 sv = sv32(u);
    dsc_nsa_grads_f32 gr = gr32(u);
    if (sel_from) memcpy(u->sel, sel_from, (size_t)p->sz.sel * sizeof(int32_t));
    s = dsc_nsa_fast_fwd_f32(&p->c, p->T, &in, &pp, u->o, p->ldo, &sv,
                             sel_from ? DSC_NSA_SEL_GIVEN : 0, &op, ws, &err);
    if (s == DSC_OK)
        s = dsc_nsa_fast_bwd_f32(&p->c, p->T, &in, &pp, &sv, p->rf, p->ldo, &gr, &op, ws, &err);
    T_CHECK(t, s == DSC_OK, "fast (%d threads, %d chunks): %s", threads, chunks, err.msg);
    return s == DSC_OK;
}

static double maxabs_f(const float *x, int64_t n) {
    double m = 0;
    for (int64_t i = 0; i < n; i++)
        if (isfinite(x[i])) m = fabs(x[i]) > m ? fabs(x[i]) : m;
    return m;
}

/* got vs want relative to max|want|; -inf must match -inf (then skipped). */
static double agree(dsc_t *t, const char *ctx, const char *what, const float *got,
                    const float *want, int64_t n, double tol) {
    if (n == 0) return 0;
    double m = maxabs_f(want, n), d = 0;
    int64_t bad = -1;
    for (int64_t i = 0; i < n; i++) {
        int ig = isinf(got[i]), iw = isinf(want[i]);
        if (ig || iw) {
            if (!(ig && iw && got[i] == want[i]) && bad < 0) bad = i;
            continue;
        }
        double e = fabs((double)got[i] - want[i]);
        if (!(e <= d)) d = e;   /* NaN propagates */
    }
    T_CHECK(t, bad < 0, "%s %s: index %lld got %g want %g (infinities must match)", ctx, what,
            (long long)bad, bad >= 0 ? got[bad] : 0.0, bad >= 0 ? want[bad] : 0.0);
    double rel = m > 0 ? d / m : d;
    T_CHECK(t, rel <= tol, "%s %s: max|d| / max|want| = %.3g > %.1g (max|want| %.3g)", ctx, what,
            rel, tol, m);
    if (verbose()) printf("      %-8s %-6s max|d|/max = %.2e\n", ctx, what, rel);
    return rel;
}

static void compare(dsc_t *t, const char *ctx, const prob *p, const outs *a, const outs *b) {
    static const char *kn[3] = {"dk0", "dk1", "dk2"}, *vn[3] = {"dv0", "dv1", "dv2"};
    int64_t diff = 0;
    for (int64_t i = 0; i < p->sz.sel; i++) diff += a->sel[i] != b->sel[i];
    T_CHECK(t, diff == 0, "%s: %lld of %lld selected block ids differ", ctx, (long long)diff,
            (long long)p->sz.sel);
    agree(t, ctx, "o", a->o, b->o, p->no, FWD_TOL);
    agree(t, ctx, "o_br", a->o_br, b->o_br, p->sz.o_br, FWD_TOL);
    agree(t, ctx, "lse", a->lse, b->lse, p->sz.lse, FWD_TOL);
    agree(t, ctx, "k_cmp", a->kc, b->kc, p->sz.k_cmp, FWD_TOL);
    agree(t, ctx, "v_cmp", a->vc, b->vc, p->sz.v_cmp, FWD_TOL);
    agree(t, ctx, "hid_k", a->hk, b->hk, p->sz.hid, FWD_TOL);
    agree(t, ctx, "hid_v", a->hv, b->hv, p->sz.hid, FWD_TOL);
    agree(t, ctx, "dq", a->dq, b->dq, p->nq, GRAD_TOL);
    agree(t, ctx, "dg", a->dg, b->dg, p->ng, GRAD_TOL);
    for (int k = 0; k < p->nkv; k++) {
        agree(t, ctx, kn[k], a->dk[k], b->dk[k], p->nk, GRAD_TOL);
        agree(t, ctx, vn[k], a->dv[k], b->dv[k], p->nv, GRAD_TOL);
    }
    for (int i = 0; i < P_N; i++)
        if (p->n_par[i]) agree(t, ctx, par_name[i], a->dpar[i], b->dpar[i], p->n_par[i], GRAD_TOL);
}

static int same_bits(const void *a, const void *b, int64_t n) {
    return n == 0 || memcmp(a, b, (size_t)n * sizeof(float)) == 0;
}

static void bitwise(dsc_t *t, const char *ctx, const prob *p, const outs *a, const outs *b,
                    int with_bwd) {
    int ok = same_bits(a->o, b->o, p->no) && same_bits(a->o_br, b->o_br, p->sz.o_br) &&
             same_bits(a->lse, b->lse, p->sz.lse) && same_bits(a->kc, b->kc, p->sz.k_cmp) &&
             same_bits(a->vc, b->vc, p->sz.v_cmp) && same_bits(a->hk, b->hk, p->sz.hid) &&
             same_bits(a->hv, b->hv, p->sz.hid) &&
             !memcmp(a->sel, b->sel, (size_t)p->sz.sel * sizeof(int32_t));
    T_CHECK(t, ok, "%s: forward not bitwise identical", ctx);
    if (!with_bwd) return;
    ok = same_bits(a->dq, b->dq, p->nq) && same_bits(a->dg, b->dg, p->ng);
    for (int k = 0; k < p->nkv; k++)
        ok &= same_bits(a->dk[k], b->dk[k], p->nk) && same_bits(a->dv[k], b->dv[k], p->nv);
    for (int i = 0; i < P_N; i++) ok &= same_bits(a->dpar[i], b->dpar[i], p->n_par[i]);
    T_CHECK(t, ok, "%s: gradients not bitwise identical", ctx);
}

static void fast_case(dsc_t *t, const char *name, const dsc_nsa_config *c, int64_t T,
                      int64_t pad, uint64_t seed) {
    t_pool pl = {0};
    prob p;
    dsc_err err = {0};
    T_CHECK(t, dsc_nsa_config_check(c, &err) == DSC_OK, "%s: %s", name, err.msg);
    prob_init(&pl, &p, c, T, pad, seed);
    if (verbose()) printf("    case %s (T=%lld)\n", name, (long long)T);
    outs r32, r64, f1, f2, f3, fg;
    if (!run_ref32(t, &pl, &p, &r32) || !run_ref64(t, &pl, &p, &r64) ||
        !run_fast(t, &pl, &p, &f1, 1, 0, NULL) || !run_fast(t, &pl, &p, &f2, 2, 0, NULL) ||
        !run_fast(t, &pl, &p, &f3, 2, 3, NULL) || !run_fast(t, &pl, &p, &fg, 2, 0, r32.sel)) {
        t_pool_free(&pl);
        return;
    }
    char ctx[64];
    snprintf(ctx, sizeof ctx, "%s/ref32", name);
    compare(t, ctx, &p, &f1, &r32);
    snprintf(ctx, sizeof ctx, "%s/ref64", name);
    compare(t, ctx, &p, &f1, &r64);
    snprintf(ctx, sizeof ctx, "%s/1v2thr", name);
    bitwise(t, ctx, &p, &f1, &f2, 1);
    snprintf(ctx, sizeof ctx, "%s/chunks3", name);
    compare(t, ctx, &p, &f3, &f1);
    snprintf(ctx, sizeof ctx, "%s/selgiven", name);
    bitwise(t, ctx, &p, &fg, &f1, 0);
    /* the empty compressed rows: o_cmp exactly 0 and lse -inf where
       nothing is visible */
    int64_t bad = 0;
    for (int64_t tt = 0; tt < T && tt + 1 < c->l; tt++)
        for (int64_t qh = 0; qh < c->H_q; qh++) {
            bad += !isinf(f1.lse[(tt * c->H_q + qh) * 3]);
            for (int64_t e = 0; e < c->d_v; e++)
                bad += f1.o_br[((tt * c->H_q + qh) * 3) * c->d_v + e] != 0.0f;
        }
    T_CHECK(t, bad == 0, "%s: %lld values of empty cmp rows are not 0 / -inf", name,
            (long long)bad);
    t_pool_free(&pl);
}

static void test_mlp_indep(dsc_t *t) {
    dsc_nsa_config c = {.l = 8, .d = 4, .l_sel = 16, .n = 5, .w = 20, .H_q = 4, .H_kv = 2,
                        .d_k = 12, .d_v = 8, .phi = DSC_NSA_PHI_MLP, .phi_hidden = 6};
    fast_case(t, "mlp_indep", &c, 150, 3, 11);
}

static void test_g16_mean_shared(dsc_t *t) {
    dsc_nsa_config c = {.l = 4, .d = 2, .l_sel = 8, .n = 4, .w = 9, .H_q = 16, .H_kv = 1,
                        .d_k = 10, .d_v = 6, .phi = DSC_NSA_PHI_MEAN, .shared_kv = 1};
    fast_case(t, "g16_mean_shared", &c, 101, 0, 22);
}

static void test_g1_identity(dsc_t *t) {
    dsc_nsa_config c = {.l = 8, .d = 8, .l_sel = 8, .n = 3, .w = 5, .H_q = 2, .H_kv = 2,
                        .d_k = 8, .d_v = 8, .phi = DSC_NSA_PHI_MLP, .phi_hidden = 4,
                        .shared_kv = 1};
    fast_case(t, "g1_identity_mlp", &c, 77, 1, 33);
}

static void test_short(dsc_t *t) {
    /* the paper's geometry with T < l: no compressed block anywhere */
    dsc_nsa_config c = {.l = 32, .d = 16, .l_sel = 64, .n = 16, .w = 512, .H_q = 4, .H_kv = 1,
                        .d_k = 16, .d_v = 8, .phi = DSC_NSA_PHI_MEAN};
    fast_case(t, "short_mean", &c, 20, 0, 44);
    c.phi = DSC_NSA_PHI_MLP, c.phi_hidden = 5, c.shared_kv = 1;
    fast_case(t, "short_mlp", &c, 31, 2, 45);
}

static void test_paper_geom(dsc_t *t) {
    /* l/d/l' of the paper, G = 16, several tiles, n < #blocks (real top-n) */
    dsc_nsa_config c = {.l = 32, .d = 16, .l_sel = 64, .n = 6, .w = 100, .H_q = 16, .H_kv = 1,
                        .d_k = 24, .d_v = 16, .phi = DSC_NSA_PHI_MEAN};
    fast_case(t, "paper_geom", &c, 700, 0, 55);
}

static void test_mlp_g8(dsc_t *t) {
    dsc_nsa_config c = {.l = 16, .d = 8, .l_sel = 32, .n = 4, .w = 40, .H_q = 16, .H_kv = 2,
                        .d_k = 20, .d_v = 12, .phi = DSC_NSA_PHI_MLP, .phi_hidden = 8};
    fast_case(t, "mlp_g8", &c, 260, 2, 66);
}

static void test_bad_calls(dsc_t *t) {
    dsc_nsa_config c = {.l = 4, .d = 2, .l_sel = 8, .n = 4, .w = 9, .H_q = 2, .H_kv = 1,
                        .d_k = 4, .d_v = 4, .phi = DSC_NSA_PHI_MEAN, .shared_kv = 1};
    dsc_nsa_fast_opts op = {0, 0, NULL, NULL};
    size_t fb, bb;
    dsc_err err = {0};
    T_CHECK(t, dsc_nsa_fast_sizes(&c, 10, &op, &fb, &bb, &err) == DSC_ERR_ARG &&
                   strstr(err.msg, "threads"), "threads 0: %s", err.msg);
    op.threads = 1, op.chunks = 1000;
    T_CHECK(t, dsc_nsa_fast_sizes(&c, 10, &op, &fb, &bb, &err) == DSC_ERR_ARG, "chunks 1000");
    op.chunks = 0;
    T_CHECK(t, dsc_nsa_fast_sizes(&c, 0, &op, &fb, &bb, &err) == DSC_ERR_ARG, "T = 0");
    c.n = 2;
    T_CHECK(t, dsc_nsa_fast_sizes(&c, 10, &op, &fb, &bb, &err) == DSC_ERR_ARG &&
                   strstr(err.msg, "n = 2"), "n = 2: %s", err.msg);
    c.n = 4;
    T_CHECK(t, dsc_nsa_fast_sizes(&c, 10, &op, &fb, &bb, &err) == DSC_OK, "%s", err.msg);
    float buf[64] = {0}, o[64];
    void *ws = malloc(fb);
    dsc_nsa_in_f32 in = {buf, 0, {{NULL}, 0, {buf}, 0}, buf, 0};
    dsc_nsa_saved_f32 sv = {o, o, o, o, NULL, NULL, (int32_t *)o};
    T_CHECK(t, dsc_nsa_fast_fwd_f32(&c, 10, &in, NULL, o, 0, &sv, 0, &op, ws, &err) ==
                       DSC_ERR_ARG && strstr(err.msg, "in->kv.k[CMP]"),
            "NULL k: %s", err.msg);
    free(ws);
}

const dsc_test_case dsc_tests_nsa_fast[] = {
    {"mlp_indep", test_mlp_indep},
    {"g16_mean_shared", test_g16_mean_shared},
    {"g1_identity", test_g1_identity},
    {"short", test_short},
    {"paper_geom", test_paper_geom},
    {"mlp_g8", test_mlp_g8},
    {"bad_calls", test_bad_calls},
    {NULL, NULL},
};
