/*
 * test_nsa_decode_fast.c - the fast fp32 NSA decode path
 * (src/nsa/nsa_decode_fast.h) against the whole-sequence f64 forward
 * (dsc_nsa_fwd_f64) and the scalar reference decode state (nsa_decode.h).
 *
 * Each geometry gets float-representable random inputs and runs schedules
 * of fast prefills and steps over one state:
 *   all         one prefill of every token (several 64-row tiles and, for
 *               the long case, more than one DSC_NSA_DFAST_CHUNK);
 *   mixed       prefill mid-block, steps, a prefill from len > 0 (a
 *               continuation crossing tiles and block boundaries), steps;
 *   steps       token by token;
 *   rollback    prefill most of sequence A, truncate to p (mid-block),
 *               continue with sequence B (A's first p tokens, then new
 *               ones) by a prefill and steps: compared with B's forward.
 * Checked each time:
 *  - every output row against dsc_nsa_fwd_f64's: max |fast - f64| <=
 *    TOL * max |f64| (TOL = 2e-5, as test_nsa_fast.c: dot products and
 *    P.V sums in fp32 over <= 1100 keys, ~1e-7 .. 1e-6 of the magnitude;
 *    a wrong key, block, branch or gate moves an output by 1e-2 .. 1);
 *  - every selection equal to the forward's (the fast path scores from
 *    fp32 probabilities, so a near-tie of two blocks' group scores could
 *    flip one; the inputs here have none, and a mismatch is reported);
 *  - the state (len, n_cmp, raw K/V rows, k_cmp, v_cmp, hid_k, hid_v) byte
 *    identical to a reference decode state fed the same tokens (the
 *    compress piece is the reference's);
 *  - a prefill at 1 and 2 threads bitwise identical.
 * Geometries: the study's (l 32, d 16, l' 64, n 8, w 256, H_q 4 over 1 KV
 * head, d_k = d_v = 32, MLP m 32) at T = 1100 (so 1100 is not a multiple
 * of 32, 64 or the 64-row tile); the same ratios scaled down; mean pooling
 * with shared K/V, d_k != d_v and not multiples of 8, 2 KV heads; l = d =
 * l' (identity score map); G = 6 (a group of 4 heads and one of 2 in the
 * step's kernels); G = 1. bad_input: the reference's error cases.
 * DSC_TEST_VERBOSE=1 prints the measured errors.
 */
#include <stdlib.h>
#include <string.h>

#include "nsa/nsa_decode.h"
#include "nsa/nsa_decode_fast.h"
#include "nsa_test.h"
#include "test.h"

#define TOL 2e-5

static int verbose(void) { return getenv("DSC_TEST_VERBOSE") != NULL; }

/* ---- a sequence and its forward ---- */

typedef struct {
    dsc_nsa_config c;
    int64_t T, rq, rk, rv, rg, ro;
    double *q, *k[3], *v[3], *g, *par[6];
    float *qf, *kf[3], *vf[3], *gf, *parf[6];
    double *o;     /* the f64 forward's output (T, H_q*d_v) */
    int32_t *sel;  /* and selection (T, H_kv, n)            */
} seq;

static void seq_inputs(t_pool *pl, seq *s, const dsc_nsa_config *c, int64_t T, uint64_t seed) {
    memset(s, 0, sizeof *s);
    s->c = *c;
    s->T = T;
    t_rng r = {seed};
    s->rq = c->H_q * c->d_k, s->rk = c->H_kv * c->d_k, s->rv = c->H_kv * c->d_v;
    s->rg = c->H_q * 3, s->ro = c->H_q * c->d_v;
    s->q = t_rnd(pl, &r, T * s->rq, 1.2);
    for (int b = 0; b < (c->shared_kv ? 1 : 3); b++) {
        s->k[b] = t_rnd(pl, &r, T * s->rk, 1.2);
        s->v[b] = t_rnd(pl, &r, T * s->rv, 1.0);
    }
    s->g = t_dalloc(pl, T * s->rg);
    for (int64_t i = 0; i < T * s->rg; i++)
        s->g[i] = (double)(float)(0.05 + 0.9 * t_rng_uniform(&r));
    if (c->phi == DSC_NSA_PHI_MLP) {
        dsc_nsa_sizes sz;
        dsc_nsa_sizes_get(c, T, &sz, NULL);
        t_nsa_phi_rnd(pl, &r, c, &sz, s->par, NULL);
    }
}

/* f32 copies of the inputs, then the f64 forward. */
static void seq_finish(t_pool *pl, seq *s) {
    const dsc_nsa_config *c = &s->c;
    int64_t T = s->T;
    dsc_nsa_sizes sz;
    dsc_nsa_sizes_get(c, T, &sz, NULL);
    s->qf = t_to_f32(pl, s->q, T * s->rq);
    s->gf = t_to_f32(pl, s->g, T * s->rg);
    for (int b = 0; b < 3; b++) {
        int bb = c->shared_kv ? 0 : b;
        if (b == bb) {
            s->kf[b] = t_to_f32(pl, s->k[b], T * s->rk);
            s->vf[b] = t_to_f32(pl, s->v[b], T * s->rv);
        } else {
            s->k[b] = s->k[bb], s->v[b] = s->v[bb], s->kf[b] = s->kf[bb], s->vf[b] = s->vf[bb];
        }
    }
    if (c->phi == DSC_NSA_PHI_MLP) {
        const int64_t cnt[6] = {sz.pe_k, sz.w1_k, sz.w2_k, sz.pe_v, sz.w1_v, sz.w2_v};
        for (int i = 0; i < 6; i++) s->parf[i] = t_to_f32(pl, s->par[i], cnt[i]);
    }
    dsc_nsa_in_f64 in = {s->q, 0, {{s->k[0], s->k[1], s->k[2]}, 0, {s->v[0], s->v[1], s->v[2]}, 0},
                         s->g, 0};
    dsc_nsa_params_f64 pp = {s->par[0], s->par[1], s->par[2], s->par[3], s->par[4], s->par[5]};
    s->o = t_dalloc(pl, T * s->ro);
    s->sel = t_palloc(pl, sz.sel * (int64_t)sizeof(int32_t));
    dsc_nsa_saved_f64 sv = {t_dalloc(pl, sz.o_br), t_dalloc(pl, sz.lse), t_dalloc(pl, sz.k_cmp),
                            t_dalloc(pl, sz.v_cmp), t_dalloc(pl, sz.hid), t_dalloc(pl, sz.hid),
                            s->sel};
    void *ws = t_palloc(pl, (int64_t)sz.scratch_bytes);
    dsc_err e = {0};
    if (dsc_nsa_fwd_f64(c, T, &in, &pp, s->o, 0, &sv, 0, ws, &e) != DSC_OK)
        fprintf(stderr, "test_nsa_decode_fast: fwd_f64: %s\n", e.msg);
}

static dsc_nsa_params_f32 par32(const seq *s) {
    dsc_nsa_params_f32 p = {s->parf[0], s->parf[1], s->parf[2], s->parf[3], s->parf[4], s->parf[5]};
    return p;
}

/* The f32 inputs of tokens t .. (packed). */
static dsc_nsa_in_f32 in32_at(const seq *s, int64_t t) {
    dsc_nsa_in_f32 in = {s->qf + t * s->rq,
                         0,
                         {{s->kf[0] + t * s->rk, s->kf[1] + t * s->rk, s->kf[2] + t * s->rk},
                          0,
                          {s->vf[0] + t * s->rv, s->vf[1] + t * s->rv, s->vf[2] + t * s->rv},
                          0},
                         s->gf + t * s->rg,
                         0};
    return in;
}

/* ---- driving a state ---- */

/* Appends tokens [t0, t1) of s: a fast prefill when pre, else fast steps
   (or, ref, the reference's prefill). Outputs to o / sel at rows t0... */
static int feed(dsc_t *t, dsc_nsa_decode_f32 *st, const seq *s, int64_t t0, int64_t t1, int pre,
                int ref, int threads, float *o, int32_t *sel) {
    dsc_err e = {0};
    dsc_nsa_params_f32 pp = par32(s);
    int64_t hn = s->c.H_kv * s->c.n;
    dsc_status rc = DSC_OK;
    if (ref) {
        dsc_nsa_in_f32 in = in32_at(s, t0);
        rc = dsc_nsa_decode_prefill_f32(st, &pp, t1 - t0, &in, o + t0 * s->ro, 0, sel + t0 * hn,
                                        &e);
    } else if (pre) {
        dsc_nsa_in_f32 in = in32_at(s, t0);
        /* the caller's scratch at 2 threads, the function's own at 1: both
           paths run */
        size_t nb = 0;
        void *scr = NULL;
        if (threads == 2 && dsc_nsa_decode_fast_prefill_bytes(&s->c, st->cap, threads, &nb, &e) ==
                                DSC_OK)
            scr = malloc(nb);
        rc = dsc_nsa_decode_fast_prefill(st, &pp, t1 - t0, &in, o + t0 * s->ro, 0, sel + t0 * hn,
                                         threads, scr, scr ? nb : 0, &e);
        free(scr);
    } else {
        for (int64_t i = t0; i < t1 && rc == DSC_OK; i++) {
            dsc_nsa_in_f32 in = in32_at(s, i);
            rc = dsc_nsa_decode_fast_step(st, &pp, in.q, in.kv.k, in.kv.v, in.g, o + i * s->ro,
                                          sel + i * hn, &e);
        }
    }
    T_CHECK(t, rc == DSC_OK, "feed [%lld, %lld): %s", (long long)t0, (long long)t1, e.msg);
    return rc == DSC_OK;
}

/* Rows [t0, t1) of o / sel against s's forward. Returns the relative
   error max|o - f64| / max|f64|. */
static double check_rows(dsc_t *t, const char *what, const seq *s, int64_t t0, int64_t t1,
                         const float *o, const int32_t *sel) {
    double mx = 0, err = 0;
    for (int64_t i = t0 * s->ro; i < t1 * s->ro; i++) {
        double d = fabs((double)o[i] - s->o[i]);
        if (!(d <= err)) err = d;   /* NaN sticks */
        if (fabs(s->o[i]) > mx) mx = fabs(s->o[i]);
    }
    double rel = err / (mx > 0 ? mx : 1);
    T_CHECK(t, rel <= TOL, "%s: outputs of rows [%lld, %lld) off by %.3g of max %.3g (tol %g)",
            what, (long long)t0, (long long)t1, rel, mx, TOL);
    int64_t hn = s->c.H_kv * s->c.n, bad = -1;
    for (int64_t i = t0 * hn; i < t1 * hn && bad < 0; i++)
        if (sel[i] != s->sel[i]) bad = i;
    T_CHECK(t, bad < 0, "%s: selection of row %lld differs from the forward's (%d vs %d)", what,
            (long long)(bad / (hn ? hn : 1)), bad >= 0 ? sel[bad] : 0, bad >= 0 ? s->sel[bad] : 0);
    if (verbose())
        fprintf(stderr, "      %-28s rows [%4lld, %4lld)  max err %.3g of max|o| %.3g\n", what,
                (long long)t0, (long long)t1, rel, mx);
    return rel;
}

/* The two states hold the same tokens, byte for byte. */
static void check_state(dsc_t *t, const char *what, const dsc_nsa_decode_f32 *a,
                        const dsc_nsa_decode_f32 *b) {
    const dsc_nsa_config *c = &a->c;
    T_CHECK(t, a->len == b->len && a->n_cmp == b->n_cmp, "%s: len %lld / %lld, n_cmp %lld / %lld",
            what, (long long)a->len, (long long)b->len, (long long)a->n_cmp, (long long)b->n_cmp);
    if (a->len != b->len || a->n_cmp != b->n_cmp) return;
    int same = 1;
    size_t rk = (size_t)(a->len * c->H_kv * c->d_k) * sizeof(float);
    size_t rv = (size_t)(a->len * c->H_kv * c->d_v) * sizeof(float);
    for (int bb = 0; bb < (c->shared_kv ? 1 : 3); bb++)
        same &= !memcmp(a->k[bb], b->k[bb], rk) && !memcmp(a->v[bb], b->v[bb], rv);
    size_t nc = (size_t)(a->n_cmp * c->H_kv);
    if (nc) {
        same &= !memcmp(a->k_cmp, b->k_cmp, nc * (size_t)c->d_k * sizeof(float));
        same &= !memcmp(a->v_cmp, b->v_cmp, nc * (size_t)c->d_v * sizeof(float));
        if (a->hid_k) {
            same &= !memcmp(a->hid_k, b->hid_k, nc * (size_t)c->phi_hidden * sizeof(float));
            same &= !memcmp(a->hid_v, b->hid_v, nc * (size_t)c->phi_hidden * sizeof(float));
        }
    }
    T_CHECK(t, same, "%s: state (raw K/V or compressed rows) differs from the reference's", what);
}

/* ---- geometries ---- */

typedef struct {
    const char *name;
    dsc_nsa_config c;
    int64_t T;
} geom;

static const geom GEOMS[] = {
    {"study", {32, 16, 64, 8, 256, 4, 1, 32, 32, DSC_NSA_PHI_MLP, 32, 0, 0.0}, 1100},
    {"scaled", {8, 4, 16, 4, 32, 4, 1, 16, 16, DSC_NSA_PHI_MLP, 8, 0, 0.0}, 301},
    {"mean_shared", {8, 4, 16, 5, 24, 4, 2, 12, 10, DSC_NSA_PHI_MEAN, 0, 1, 0.0}, 203},
    {"l=d=l'", {8, 8, 8, 4, 16, 2, 1, 16, 8, DSC_NSA_PHI_MEAN, 0, 0, 0.0}, 150},
    {"G=6", {8, 4, 16, 4, 20, 6, 1, 8, 8, DSC_NSA_PHI_MLP, 6, 0, 0.0}, 180},
    {"G=1", {4, 2, 8, 3, 12, 3, 3, 8, 16, DSC_NSA_PHI_MEAN, 0, 0, 0.0}, 97},
};
#define NGEOM (int64_t)(sizeof GEOMS / sizeof GEOMS[0])

typedef struct {
    float *o;
    int32_t *sel;
} outs;

static outs outs_new(t_pool *pl, const seq *s) {
    outs u = {t_falloc(pl, s->T * s->ro),
              t_palloc(pl, s->T * s->c.H_kv * s->c.n * (int64_t)sizeof(int32_t))};
    return u;
}

static void test_schedules(dsc_t *t) {
    for (int64_t gi = 0; gi < NGEOM; gi++) {
        const geom *G = &GEOMS[gi];
        t_pool pl = {0};
        seq s;
        seq_inputs(&pl, &s, &G->c, G->T, 4100 + (uint64_t)gi);
        seq_finish(&pl, &s);
        int64_t T = G->T, l = G->c.l, lp = G->c.l_sel;
        dsc_nsa_decode_f32 *st = NULL, *rs = NULL;
        dsc_err e = {0};
        T_CHECK(t, dsc_nsa_decode_new_f32(&G->c, T, &st, &e) == DSC_OK, "new: %s", e.msg);
        T_CHECK(t, dsc_nsa_decode_new_f32(&G->c, T, &rs, &e) == DSC_OK, "new: %s", e.msg);
        if (!st || !rs) goto next;
        char what[96];
        outs a = outs_new(&pl, &s), r = outs_new(&pl, &s), b = outs_new(&pl, &s);

        /* the reference decode state, for the state comparisons */
        feed(t, rs, &s, 0, T, 0, 1, 1, r.o, r.sel);

        /* all: one prefill, at 1 and 2 threads (bitwise equal) */
        snprintf(what, sizeof what, "%s all", G->name);
        feed(t, st, &s, 0, T, 1, 0, 1, a.o, a.sel);
        check_rows(t, what, &s, 0, T, a.o, a.sel);
        check_state(t, what, st, rs);
        dsc_nsa_decode_reset_f32(st);
        feed(t, st, &s, 0, T, 1, 0, 2, b.o, b.sel);
        T_CHECK(t, !memcmp(a.o, b.o, (size_t)(T * s.ro) * sizeof(float)),
                "%s: prefill at 2 threads differs from 1 thread", what);

        /* mixed: prefill mid-block, steps, prefill from len > 0 (over tile
           and block boundaries), steps */
        snprintf(what, sizeof what, "%s mixed", G->name);
        dsc_nsa_decode_reset_f32(st);
        int64_t p0 = l + l / 2 + 1, p1 = p0 + 5, p2 = p1 + 2 * lp + 70 < T - 3 ? p1 + 2 * lp + 70
                                                                              : T - 3;
        if (p2 <= p1 + 1) p2 = p1 + 2;
        feed(t, st, &s, 0, p0, 1, 0, 2, a.o, a.sel);
        feed(t, st, &s, p0, p1, 0, 0, 1, a.o, a.sel);
        feed(t, st, &s, p1, p2, 1, 0, 2, a.o, a.sel);
        feed(t, st, &s, p2, T, 0, 0, 1, a.o, a.sel);
        check_rows(t, what, &s, 0, T, a.o, a.sel);
        check_state(t, what, st, rs);

        /* steps: token by token (the continuation prefill of a short
           geometry is also run token by token above) */
        snprintf(what, sizeof what, "%s steps", G->name);
        dsc_nsa_decode_reset_f32(st);
        int64_t ts = T < 400 ? T : 400;   /* the f64 forward is the oracle for any prefix */
        feed(t, st, &s, 0, ts, 0, 0, 1, a.o, a.sel);
        check_rows(t, what, &s, 0, ts, a.o, a.sel);

        /* rollback: A to 3/4, truncate to a mid-block p, continue with B */
        {
            int64_t pr = (T / 2) / lp * lp + lp / 2 + 1;
            seq sb;
            seq_inputs(&pl, &sb, &G->c, T, 9100 + (uint64_t)gi);
            int nkv = G->c.shared_kv ? 1 : 3;
            memcpy(sb.q, s.q, (size_t)(pr * s.rq) * sizeof(double));
            memcpy(sb.g, s.g, (size_t)(pr * s.rg) * sizeof(double));
            for (int bb = 0; bb < nkv; bb++) {
                memcpy(sb.k[bb], s.k[bb], (size_t)(pr * s.rk) * sizeof(double));
                memcpy(sb.v[bb], s.v[bb], (size_t)(pr * s.rv) * sizeof(double));
            }
            for (int i = 0; i < 6; i++) sb.par[i] = s.par[i];
            seq_finish(&pl, &sb);
            snprintf(what, sizeof what, "%s rollback", G->name);
            dsc_nsa_decode_reset_f32(st);
            feed(t, st, &s, 0, T * 3 / 4, 1, 0, 2, a.o, a.sel);
            T_CHECK(t, dsc_nsa_decode_truncate_f32(st, pr, &e) == DSC_OK, "truncate: %s", e.msg);
            int64_t mid = pr + (T - pr) / 2;
            feed(t, st, &sb, pr, mid, 1, 0, 2, a.o, a.sel);
            feed(t, st, &sb, mid, T, 0, 0, 1, a.o, a.sel);
            check_rows(t, what, &sb, pr, T, a.o, a.sel);
            dsc_nsa_decode_reset_f32(rs);
            feed(t, rs, &sb, 0, T, 0, 1, 1, r.o, r.sel);
            check_state(t, what, st, rs);
        }
    next:
        dsc_nsa_decode_free_f32(st);
        dsc_nsa_decode_free_f32(rs);
        t_pool_free(&pl);
    }
}

/* The reference's error cases, with the state left as it was. */
static void test_bad_input(dsc_t *t) {
    t_pool pl = {0};
    const geom *G = &GEOMS[1];
    seq s;
    seq_inputs(&pl, &s, &G->c, 40, 77);
    seq_finish(&pl, &s);
    dsc_nsa_decode_f32 *st = NULL;
    dsc_err e = {0};
    T_CHECK(t, dsc_nsa_decode_new_f32(&G->c, 40, &st, &e) == DSC_OK, "new: %s", e.msg);
    if (!st) return;
    outs a = outs_new(&pl, &s);
    feed(t, st, &s, 0, 20, 1, 0, 1, a.o, a.sel);
    dsc_nsa_params_f32 pp = par32(&s), none = {0};
    dsc_nsa_in_f32 in = in32_at(&s, 20);
    T_CHECK(t, dsc_nsa_decode_fast_prefill(st, &pp, 21, &in, a.o, 0, NULL, 1, NULL, 0, &e) == DSC_ERR_ARG &&
                   strstr(e.msg, "capacity"),
            "prefill past capacity: %s", e.msg);
    T_CHECK(t, dsc_nsa_decode_fast_prefill(st, &pp, 4, &in, a.o, 0, NULL, 0, NULL, 0, &e) == DSC_ERR_ARG &&
                   strstr(e.msg, "threads"),
            "threads 0: %s", e.msg);
    T_CHECK(t, dsc_nsa_decode_fast_prefill(st, &none, 4, &in, a.o, 0, NULL, 1, NULL, 0, &e) ==
                       DSC_ERR_ARG &&
                   strstr(e.msg, "pe_k"),
            "MLP without params: %s", e.msg);
    dsc_nsa_in_f32 bad = in;
    bad.kv.v[2] = NULL;
    T_CHECK(t, dsc_nsa_decode_fast_prefill(st, &pp, 4, &bad, a.o, 0, NULL, 1, NULL, 0, &e) ==
                       DSC_ERR_ARG &&
                   strstr(e.msg, "v[WIN]"),
            "NULL v[WIN]: %s", e.msg);
    T_CHECK(t, dsc_nsa_decode_fast_step(st, &pp, NULL, in.kv.k, in.kv.v, in.g, a.o, NULL, &e) ==
                       DSC_ERR_ARG &&
                   strstr(e.msg, "q_t"),
            "NULL q_t: %s", e.msg);
    T_CHECK(t, st->len == 20, "a failed call changed len to %lld", (long long)st->len);
    /* still usable: the rest of the sequence, checked against the forward */
    feed(t, st, &s, 20, 40, 1, 0, 1, a.o, a.sel);
    check_rows(t, "bad_input continued", &s, 0, 40, a.o, a.sel);
    dsc_nsa_decode_f32 *full = NULL;
    T_CHECK(t, dsc_nsa_decode_new_f32(&G->c, 3, &full, &e) == DSC_OK, "new: %s", e.msg);
    if (full) {   /* a tiny state (scratch too small for the fast step?) still works */
        outs f = outs_new(&pl, &s);
        feed(t, full, &s, 0, 3, 0, 0, 1, f.o, f.sel);
        check_rows(t, "capacity 3", &s, 0, 3, f.o, f.sel);
        T_CHECK(t, dsc_nsa_decode_fast_step(full, &pp, in.q, in.kv.k, in.kv.v, in.g, f.o, NULL,
                                            &e) == DSC_ERR_ARG &&
                       strstr(e.msg, "full"),
                "step on a full state: %s", e.msg);
        dsc_nsa_decode_free_f32(full);
    }
    dsc_nsa_decode_free_f32(st);
    t_pool_free(&pl);
}

const dsc_test_case dsc_tests_nsa_decode_fast[] = {
    {"schedules", test_schedules},
    {"bad_input", test_bad_input},
    {NULL, NULL},
};
