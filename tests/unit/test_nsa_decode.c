/*
 * test_nsa_decode.c - NSA decode (src/nsa/nsa_decode.h) against the
 * whole-sequence forward (src/nsa/nsa.h), in both instances.
 *
 *  steps       token-by-token decode over T = 200..260 tokens equals the
 *              forward's output at every position and makes the same
 *              selections: l=8 d=4 l'=8 n=4 w=16 and the paper's ratios
 *              scaled down (l/d = 2, l'/l = 2, n*l'/w = 2, G = 4), the
 *              l = d = l' case, d_k != d_v, G > 1, MLP and mean phi,
 *              shared and independent K/V;
 *  prefill     prefill of P tokens then steps (P = 1, mid-block, block
 *              boundary, all), and mixed step / prefill chunks, equal the
 *              forward; the state after a prefill is identical to the
 *              state after the same tokens stepped;
 *  rollback    truncate to p (0, l-1, l, mid-block, boundary, len) then
 *              stepping a different continuation equals a fresh state fed
 *              the new sequence: outputs, selections and state bit for bit,
 *              and the new sequence's forward within tolerance;
 *  far_select  the raw KV is never truncated: keys of selection block 1
 *              are planted to win the selection of every query t >= 120
 *              (>= 105 tokens behind the window); decode selects block 1
 *              and matches the forward, and zeroing that block's raw values
 *              (what a window-truncated cache would lose) changes those
 *              outputs by > 0.05, so the comparison would catch it;
 *  reads       the per-token read counts equal the formulas documented in
 *              nsa_decode.h (slc and raw recomputed here by brute force
 *              from the selection) and cmp + slc + win <= s/d + n*l' + w;
 *  bad_input   a full state, rollback past len, prefill past capacity,
 *              NULL inputs / parameters, bad init -> DSC_ERR_ARG naming
 *              the problem, the state byte-identical and still usable.
 *
 * Tolerances. A step runs the operator's own pieces (compress, select_row,
 * attend_row) on the same stored values as the forward, so the expected
 * difference is exactly 0 (and measured 0; DSC_TEST_VERBOSE=1 prints it).
 * The checks allow |decode - forward| <= tol * (1 + |forward|) with tol =
 * 1e-5 for f32 and 1e-12 for f64 (the brief's bounds): a wrong key, block,
 * compressed row or gate changes outputs by 1e-2 .. 1 here. Selections
 * and the read counts must be equal exactly; rollback against a fresh
 * state must be bit-identical (same code, same data).
 */
#include <stdlib.h>
#include <string.h>

#include "nsa/nsa_decode.h"
#include "nsa_test.h"
#include "test.h"

#define TOL_F32 1e-5
#define TOL_F64 1e-12

static int verbose(void) { return getenv("DSC_TEST_VERBOSE") != NULL; }

/* ---- a sequence: inputs in f64 and the same values in f32 ---- */

enum { X_Q = 0, X_K = 1, X_V = 4, X_G = 7, X_N = 8 };   /* q, k[3], v[3], g */

typedef struct {
    dsc_nsa_config c;
    int64_t T, row[X_N], ro;   /* row lengths (packed), ro of the output */
    double *x[X_N], *par[6];   /* k/v[1..2] NULL when shared             */
    float *xf[X_N], *parf[6];
} seq;

/* Random q, k ~ N(0,1)*xs, v ~ N(0,1), gates in (0.05, 0.95), MLP weights ~
   1/sqrt(fan-in) (as test_nsa.c), all float-representable. */
static void seq_init(t_pool *pl, seq *s, const dsc_nsa_config *c, int64_t T, uint64_t seed,
                     double xs) {
    memset(s, 0, sizeof *s);
    s->c = *c;
    s->T = T;
    t_rng r = {seed};
    int nkv = c->shared_kv ? 1 : 3;
    s->row[X_Q] = c->H_q * c->d_k;
    s->row[X_G] = c->H_q * 3;
    for (int b = 0; b < 3; b++) {
        s->row[X_K + b] = c->H_kv * c->d_k;
        s->row[X_V + b] = c->H_kv * c->d_v;
    }
    s->ro = c->H_q * c->d_v;
    s->x[X_Q] = t_rnd(pl, &r, T * s->row[X_Q], xs);
    for (int b = 0; b < nkv; b++) {
        s->x[X_K + b] = t_rnd(pl, &r, T * s->row[X_K], xs);
        s->x[X_V + b] = t_rnd(pl, &r, T * s->row[X_V], 1.0);
    }
    s->x[X_G] = t_dalloc(pl, T * s->row[X_G]);
    for (int64_t i = 0; i < T * s->row[X_G]; i++)
        s->x[X_G][i] = (double)(float)(0.05 + 0.9 * t_rng_uniform(&r));
    if (c->phi == DSC_NSA_PHI_MLP) {
        dsc_nsa_sizes sz;
        dsc_nsa_sizes_get(c, T, &sz, NULL);
        int64_t cnt[6];
        t_nsa_phi_rnd(pl, &r, c, &sz, s->par, cnt);
        for (int i = 0; i < 6; i++) s->parf[i] = t_to_f32(pl, s->par[i], cnt[i]);
    }
    for (int i = 0; i < X_N; i++) s->xf[i] = t_to_f32(pl, s->x[i], s->x[i] ? T * s->row[i] : 0);
}

/* After editing s->x: refresh the f32 copy. */
static void seq_sync(seq *s) {
    for (int i = 0; i < X_N; i++)
        for (int64_t e = 0; s->x[i] && e < s->T * s->row[i]; e++) s->xf[i][e] = (float)s->x[i][e];
}

/* dst: src's first p tokens, then fresh random ones (seed); same params. */
static void seq_fork(t_pool *pl, seq *dst, const seq *src, int64_t p, uint64_t seed) {
    seq_init(pl, dst, &src->c, src->T, seed, 1.0);
    for (int i = 0; i < X_N; i++)
        if (src->x[i]) memcpy(dst->x[i], src->x[i], (size_t)(p * src->row[i]) * sizeof(double));
    for (int i = 0; i < 6; i++) dst->par[i] = src->par[i], dst->parf[i] = src->parf[i];
    seq_sync(dst);
}

/* Type-free views of a sequence from token t on. */
typedef struct {
    const void *x[X_N];
    const void *par[6];
} bufs;

static bufs seq_at(const seq *s, int f32, int64_t t) {
    bufs b;
    size_t esz = f32 ? sizeof(float) : sizeof(double);
    for (int i = 0; i < X_N; i++) {
        const char *base = f32 ? (const char *)s->xf[i] : (const char *)s->x[i];
        b.x[i] = base ? base + (size_t)(t * s->row[i]) * esz : NULL;
    }
    for (int i = 0; i < 6; i++) b.par[i] = f32 ? (const void *)s->parf[i] : (const void *)s->par[i];
    return b;
}

/* ---- the two instances behind one table ---- */

typedef struct {
    const char *name;
    int f32;
    size_t esz;
    double tol;
    /* the whole-sequence forward: o (T, H_q*d_v), sel (T, H_kv, n) */
    dsc_status (*fwd)(const dsc_nsa_config *c, int64_t T, const bufs *b, void *o, int32_t *sel,
                      dsc_err *err);
    dsc_status (*make)(const dsc_nsa_config *c, int64_t cap, void **st, dsc_err *err);
    void (*drop)(void *st);
    dsc_status (*step)(void *st, const bufs *b, void *o, int32_t *sel, dsc_nsa_decode_stats *s,
                       dsc_err *err);
    dsc_status (*prefill)(void *st, const bufs *b, int64_t P, void *o, int32_t *sel,
                          dsc_err *err);
    dsc_status (*trunc)(void *st, int64_t pos, dsc_err *err);
    int64_t (*len)(const void *st);
    int64_t (*ncmp)(const void *st);
    /* 1 when two states hold the same tokens: len, n_cmp, the raw rows
       < len, the compressed rows < n_cmp (and MLP pre-activations) */
    int (*same)(const void *a, const void *b);
} inst;

#define DEF_INST(R, S)                                                                          \
    static dsc_nsa_params_##S par_##S(const bufs *b) {                                          \
        dsc_nsa_params_##S p = {b->par[0], b->par[1], b->par[2], b->par[3], b->par[4], b->par[5]}; \
        return p;                                                                               \
    }                                                                                           \
    static dsc_nsa_in_##S in_##S(const bufs *b) {                                               \
        dsc_nsa_in_##S in = {b->x[X_Q],                                                         \
                             0,                                                                 \
                             {{b->x[X_K], b->x[X_K + 1], b->x[X_K + 2]},                        \
                              0,                                                                \
                              {b->x[X_V], b->x[X_V + 1], b->x[X_V + 2]},                        \
                              0},                                                               \
                             b->x[X_G],                                                         \
                             0};                                                                \
        return in;                                                                              \
    }                                                                                           \
    static dsc_status fwd_##S(const dsc_nsa_config *c, int64_t T, const bufs *b, void *o,       \
                              int32_t *sel, dsc_err *err) {                                     \
        dsc_nsa_sizes sz;                                                                       \
        dsc_status st = dsc_nsa_sizes_get(c, T, &sz, err);                                      \
        if (st != DSC_OK) return st;                                                            \
        t_pool pl = {0};                                                                        \
        dsc_nsa_in_##S in = in_##S(b);                                                          \
        dsc_nsa_params_##S pp = par_##S(b);                                                     \
        dsc_nsa_saved_##S sv = {t_palloc(&pl, sz.o_br * (int64_t)sizeof(R)),                    \
                                t_palloc(&pl, sz.lse * (int64_t)sizeof(R)),                     \
                                t_palloc(&pl, sz.k_cmp * (int64_t)sizeof(R)),                   \
                                t_palloc(&pl, sz.v_cmp * (int64_t)sizeof(R)),                   \
                                t_palloc(&pl, sz.hid * (int64_t)sizeof(R)),                     \
                                t_palloc(&pl, sz.hid * (int64_t)sizeof(R)),                     \
                                sel};                                                           \
        st = dsc_nsa_fwd_##S(c, T, &in, &pp, o, 0, &sv, 0,                                      \
                             t_palloc(&pl, (int64_t)sz.scratch_bytes), err);                    \
        t_pool_free(&pl);                                                                       \
        return st;                                                                              \
    }                                                                                           \
    static dsc_status make_##S(const dsc_nsa_config *c, int64_t cap, void **st, dsc_err *err) { \
        dsc_nsa_decode_##S *s = NULL;                                                           \
        dsc_status rc = dsc_nsa_decode_new_##S(c, cap, &s, err);                                \
        *st = s;                                                                                \
        return rc;                                                                              \
    }                                                                                           \
    static void drop_##S(void *st) { dsc_nsa_decode_free_##S(st); }                             \
    static dsc_status step_##S(void *st, const bufs *b, void *o, int32_t *sel,                  \
                               dsc_nsa_decode_stats *s, dsc_err *err) {                         \
        const R *k[3] = {b->x[X_K], b->x[X_K + 1], b->x[X_K + 2]};                              \
        const R *v[3] = {b->x[X_V], b->x[X_V + 1], b->x[X_V + 2]};                              \
        dsc_nsa_params_##S pp = par_##S(b);                                                     \
        return dsc_nsa_decode_step_##S(st, &pp, b->x[X_Q], k, v, b->x[X_G], o, sel, s, err);    \
    }                                                                                           \
    static dsc_status prefill_##S(void *st, const bufs *b, int64_t P, void *o, int32_t *sel,    \
                                  dsc_err *err) {                                               \
        dsc_nsa_in_##S in = in_##S(b);                                                          \
        dsc_nsa_params_##S pp = par_##S(b);                                                     \
        return dsc_nsa_decode_prefill_##S(st, &pp, P, &in, o, 0, sel, err);                     \
    }                                                                                           \
    static dsc_status trunc_##S(void *st, int64_t pos, dsc_err *err) {                          \
        return dsc_nsa_decode_truncate_##S(st, pos, err);                                       \
    }                                                                                           \
    static int64_t len_##S(const void *st) { return ((const dsc_nsa_decode_##S *)st)->len; }    \
    static int64_t ncmp_##S(const void *st) { return ((const dsc_nsa_decode_##S *)st)->n_cmp; } \
    static int same_##S(const void *pa, const void *pb) {                                       \
        const dsc_nsa_decode_##S *a = pa, *b = pb;                                              \
        const dsc_nsa_config *c = &a->c;                                                        \
        if (a->len != b->len || a->n_cmp != b->n_cmp) return 0;                                 \
        size_t rk = (size_t)(a->len * c->H_kv * c->d_k) * sizeof(R);                            \
        size_t rv = (size_t)(a->len * c->H_kv * c->d_v) * sizeof(R);                            \
        for (int i = 0; i < (c->shared_kv ? 1 : 3); i++)                                        \
            if (memcmp(a->k[i], b->k[i], rk) || memcmp(a->v[i], b->v[i], rv)) return 0;         \
        size_t ck = (size_t)(a->n_cmp * c->H_kv * c->d_k) * sizeof(R);                          \
        size_t cv = (size_t)(a->n_cmp * c->H_kv * c->d_v) * sizeof(R);                          \
        size_t ch = (size_t)(a->n_cmp * c->H_kv * c->phi_hidden) * sizeof(R);                   \
        if (a->n_cmp && (memcmp(a->k_cmp, b->k_cmp, ck) || memcmp(a->v_cmp, b->v_cmp, cv)))     \
            return 0;                                                                           \
        if (a->n_cmp && a->hid_k &&                                                             \
            (memcmp(a->hid_k, b->hid_k, ch) || memcmp(a->hid_v, b->hid_v, ch)))                 \
            return 0;                                                                           \
        return 1;                                                                               \
    }

DEF_INST(double, f64)
DEF_INST(float, f32)
#undef DEF_INST

static const inst INST[2] = {
    {"f64", 0, sizeof(double), TOL_F64, fwd_f64, make_f64, drop_f64, step_f64, prefill_f64,
     trunc_f64, len_f64, ncmp_f64, same_f64},
    {"f32", 1, sizeof(float), TOL_F32, fwd_f32, make_f32, drop_f32, step_f32, prefill_f32,
     trunc_f32, len_f32, ncmp_f32, same_f32},
};

static double getv(const inst *I, const void *p, int64_t i) {
    return I->f32 ? (double)((const float *)p)[i] : ((const double *)p)[i];
}

/* ---- the geometries ---- */

typedef struct {
    const char *name;
    dsc_nsa_config c;
    int64_t T;
} geom;

/* A: the brief's l=8 d=4 l'=8 n=4 w=16. B: A, mean phi, shared K/V.
   C, D: the paper's l=32 d=16 l'=64 n=16 w=512 scaled to keep l/d = 2,
   l'/l = 2, n*l'/w = 2, d_k:d_v = 3:2 and G = 4 (n scaled to 4 so that the
   selection stays sparse at this length). E: l = d = l' (fla's case). */
static const geom GEOMS[] = {
    {"A l8 d4 l'8 n4 w16 MLP indep",
     {.l = 8, .d = 4, .l_sel = 8, .n = 4, .w = 16, .H_q = 4, .H_kv = 2, .d_k = 16, .d_v = 8,
      .phi = DSC_NSA_PHI_MLP, .phi_hidden = 8, .shared_kv = 0},
     200},
    {"B l8 d4 l'8 n4 w16 mean shared",
     {.l = 8, .d = 4, .l_sel = 8, .n = 4, .w = 16, .H_q = 4, .H_kv = 2, .d_k = 16, .d_v = 8,
      .phi = DSC_NSA_PHI_MEAN, .shared_kv = 1},
     203},
    {"C paper/ratios l8 d4 l'16 n4 w32 mean indep",
     {.l = 8, .d = 4, .l_sel = 16, .n = 4, .w = 32, .H_q = 8, .H_kv = 2, .d_k = 12, .d_v = 8,
      .phi = DSC_NSA_PHI_MEAN, .shared_kv = 0},
     260},
    {"D paper/ratios l8 d4 l'16 n4 w32 MLP shared",
     {.l = 8, .d = 4, .l_sel = 16, .n = 4, .w = 32, .H_q = 8, .H_kv = 2, .d_k = 12, .d_v = 8,
      .phi = DSC_NSA_PHI_MLP, .phi_hidden = 6, .shared_kv = 1},
     257},
    {"E l=d=l'=8 n3 w8 mean shared",
     {.l = 8, .d = 8, .l_sel = 8, .n = 3, .w = 8, .H_q = 6, .H_kv = 3, .d_k = 8, .d_v = 4,
      .phi = DSC_NSA_PHI_MEAN, .shared_kv = 1},
     201},
};
#define N_GEOMS ((int)(sizeof GEOMS / sizeof GEOMS[0]))

/* ---- helpers: run, compare ---- */

/* Steps tokens t0 .. t1-1 of s; outputs to rows t of o, selections to sel. */
static int run_steps(dsc_t *t, const inst *I, void *st, const seq *s, int64_t t0, int64_t t1,
                     void *o, int32_t *sel) {
    const dsc_nsa_config *c = &s->c;
    for (int64_t tt = t0; tt < t1; tt++) {
        bufs b = seq_at(s, I->f32, tt);
        dsc_err err = {0};
        dsc_status rc = I->step(st, &b, (char *)o + (size_t)(tt * s->ro) * I->esz,
                                sel + tt * c->H_kv * c->n, NULL, &err);
        if (rc != DSC_OK) {
            T_CHECK(t, 0, "%s: step t=%lld: %s", I->name, (long long)tt, err.msg);
            return 0;
        }
    }
    return 1;
}

/* Rows t0 .. t1-1 of (o, sel) against (o_ref, sel_ref): outputs within
   tol (1 + |ref|), selections equal. Returns max |d| / (1 + |ref|). */
static double check_rows(dsc_t *t, const inst *I, const char *what, const seq *s, int64_t t0,
                         int64_t t1, const void *o, const int32_t *sel, const void *o_ref,
                         const int32_t *sel_ref) {
    const dsc_nsa_config *c = &s->c;
    double worst = 0;
    int64_t bad_o = -1, bad_s = -1;
    for (int64_t tt = t0; tt < t1; tt++) {
        for (int64_t e = 0; e < s->ro; e++) {
            double a = getv(I, o, tt * s->ro + e), w = getv(I, o_ref, tt * s->ro + e);
            double d = fabs(a - w) / (1 + fabs(w));
            if (!(d <= I->tol) && bad_o < 0) bad_o = tt;
            if (d > worst || isnan(d)) worst = isnan(d) ? INFINITY : d;
        }
        int64_t ns = c->H_kv * c->n;
        if (memcmp(sel + tt * ns, sel_ref + tt * ns, (size_t)ns * sizeof(int32_t)) && bad_s < 0)
            bad_s = tt;
    }
    T_CHECK(t, bad_o < 0, "%s %s: output at t=%lld differs from the forward (max |d|/(1+|ref|) "
            "%.3g > %.0e)", I->name, what, (long long)bad_o, worst, I->tol);
    T_CHECK(t, bad_s < 0, "%s %s: selection at t=%lld differs from the forward", I->name, what,
            (long long)bad_s);
    return worst;
}

/* The forward's outputs and selections of s (T rows). */
typedef struct {
    void *o;
    int32_t *sel;
} ref;

static int ref_run(dsc_t *t, t_pool *pl, const inst *I, const seq *s, ref *r) {
    r->o = t_palloc(pl, s->T * s->ro * (int64_t)I->esz);
    r->sel = t_palloc(pl, s->T * s->c.H_kv * s->c.n * (int64_t)sizeof(int32_t));
    bufs b = seq_at(s, I->f32, 0);
    dsc_err err = {0};
    dsc_status rc = I->fwd(&s->c, s->T, &b, r->o, r->sel, &err);
    T_CHECK(t, rc == DSC_OK, "%s: forward: %s", I->name, err.msg);
    return rc == DSC_OK;
}

/* ---- 1. token by token ---- */

static void test_steps(dsc_t *t) {
    for (int gi = 0; gi < N_GEOMS; gi++)
        for (int ii = 0; ii < 2; ii++) {
            const inst *I = &INST[ii];
            const geom *G = &GEOMS[gi];
            t_pool pl = {0};
            seq s;
            seq_init(&pl, &s, &G->c, G->T, 1000 + (uint64_t)gi, 1.0);
            ref r;
            void *st = NULL;
            dsc_err err = {0};
            if (ref_run(t, &pl, I, &s, &r)) {
                /* capacity exactly T: the last step fills the state */
                T_CHECK(t, I->make(&G->c, G->T, &st, &err) == DSC_OK, "new: %s", err.msg);
                void *o = t_palloc(&pl, s.T * s.ro * (int64_t)I->esz);
                int32_t *sel = t_palloc(&pl, s.T * G->c.H_kv * G->c.n * (int64_t)sizeof(int32_t));
                if (st && run_steps(t, I, st, &s, 0, s.T, o, sel)) {
                    double e = check_rows(t, I, G->name, &s, 0, s.T, o, sel, r.o, r.sel);
                    T_CHECK(t, I->len(st) == s.T &&
                                   I->ncmp(st) == dsc_nsa_decode_n_cmp(&G->c, s.T),
                            "%s %s: len %lld n_cmp %lld after T=%lld steps", I->name, G->name,
                            (long long)I->len(st), (long long)I->ncmp(st), (long long)s.T);
                    if (verbose())
                        printf("      %s %-44s T=%lld max|d|/(1+|ref|) = %.3g\n", I->name,
                               G->name, (long long)s.T, e);
                }
                I->drop(st);
            }
            t_pool_free(&pl);
        }
}

/* ---- 2. prefill ---- */

static void test_prefill(dsc_t *t) {
    static const int gis[2] = {0, 3};   /* MLP indep; MLP shared with the paper's ratios */
    for (int k = 0; k < 2; k++)
        for (int ii = 0; ii < 2; ii++) {
            const inst *I = &INST[ii];
            const geom *G = &GEOMS[gis[k]];
            const dsc_nsa_config *c = &G->c;
            t_pool pl = {0};
            seq s;
            seq_init(&pl, &s, c, G->T, 2000 + (uint64_t)k, 1.0);
            ref r;
            if (!ref_run(t, &pl, I, &s, &r)) {
                t_pool_free(&pl);
                continue;
            }
            void *o = t_palloc(&pl, s.T * s.ro * (int64_t)I->esz);
            int32_t *sel = t_palloc(&pl, s.T * c->H_kv * c->n * (int64_t)sizeof(int32_t));
            double worst = 0;
            /* prefill P (1 token, a mid-block count, a block boundary, all), then steps */
            const int64_t Ps[4] = {1, 37, 64, s.T};
            for (int pi = 0; pi < 4; pi++) {
                int64_t P = Ps[pi];
                void *st = NULL, *ref_st = NULL;
                dsc_err err = {0};
                memset(o, 0, (size_t)(s.T * s.ro) * I->esz);
                memset(sel, 0xff, (size_t)(s.T * c->H_kv * c->n) * sizeof(int32_t));
                T_CHECK(t, I->make(c, s.T, &st, &err) == DSC_OK, "new: %s", err.msg);
                T_CHECK(t, I->make(c, s.T, &ref_st, &err) == DSC_OK, "new: %s", err.msg);
                if (!st || !ref_st) {
                    I->drop(st);
                    I->drop(ref_st);
                    continue;
                }
                bufs b = seq_at(&s, I->f32, 0);
                T_CHECK(t, I->prefill(st, &b, P, o, sel, &err) == DSC_OK, "prefill %lld: %s",
                        (long long)P, err.msg);
                /* the same P tokens stepped: the states must be identical */
                void *o2 = t_palloc(&pl, s.T * s.ro * (int64_t)I->esz);
                int32_t *sel2 = t_palloc(&pl, s.T * c->H_kv * c->n * (int64_t)sizeof(int32_t));
                run_steps(t, I, ref_st, &s, 0, P, o2, sel2);
                T_CHECK(t, I->same(st, ref_st), "%s %s: state after prefill(%lld) differs from "
                        "the state after %lld steps", I->name, G->name, (long long)P,
                        (long long)P);
                run_steps(t, I, st, &s, P, s.T, o, sel);
                char what[96];
                snprintf(what, sizeof what, "%s prefill %lld + steps", G->name, (long long)P);
                double e = check_rows(t, I, what, &s, 0, s.T, o, sel, r.o, r.sel);
                worst = e > worst ? e : worst;
                I->drop(st);
                I->drop(ref_st);
            }
            /* chunks on a non-empty state: 5 steps, prefill 50, 3 steps, prefill 60, steps */
            void *st = NULL;
            dsc_err err = {0};
            T_CHECK(t, I->make(c, s.T, &st, &err) == DSC_OK, "new: %s", err.msg);
            if (st) {
                int64_t at = 0;
                const int64_t plan[4][2] = {{0, 5}, {1, 50}, {0, 3}, {1, 60}};
                for (int q = 0; q < 4; q++) {
                    int64_t n = plan[q][1];
                    if (plan[q][0]) {
                        bufs b = seq_at(&s, I->f32, at);
                        T_CHECK(t, I->prefill(st, &b, n, (char *)o + (size_t)(at * s.ro) * I->esz,
                                              sel + at * c->H_kv * c->n, &err) == DSC_OK,
                                "prefill chunk at %lld: %s", (long long)at, err.msg);
                    } else {
                        run_steps(t, I, st, &s, at, at + n, o, sel);
                    }
                    at += n;
                }
                run_steps(t, I, st, &s, at, s.T, o, sel);
                double e = check_rows(t, I, "mixed chunks", &s, 0, s.T, o, sel, r.o, r.sel);
                worst = e > worst ? e : worst;
                I->drop(st);
            }
            if (verbose())
                printf("      %s %-44s prefill max|d|/(1+|ref|) = %.3g\n", I->name, G->name,
                       worst);
            t_pool_free(&pl);
        }
}

/* ---- 3. rollback ---- */

static void test_rollback(dsc_t *t) {
    static const int gis[2] = {0, 3};
    for (int k = 0; k < 2; k++)
        for (int ii = 0; ii < 2; ii++) {
            const inst *I = &INST[ii];
            const geom *G = &GEOMS[gis[k]];
            const dsc_nsa_config *c = &G->c;
            const int64_t len_a = 150;
            /* 0, l-1, l (first block), mid-block, a selection-block boundary,
               a compression-block boundary off it, len (no-op) */
            const int64_t ps[7] = {0, c->l - 1, c->l, 61, 64, 100, len_a};
            double worst = 0;
            for (int pi = 0; pi < 7; pi++) {
                int64_t p = ps[pi];
                t_pool pl = {0};
                seq a, bq;
                seq_init(&pl, &a, c, G->T, 3000 + (uint64_t)k, 1.0);
                seq_fork(&pl, &bq, &a, p, 4000 + (uint64_t)(k * 100 + pi));
                int64_t nrow = G->T * c->H_kv * c->n;
                void *o = t_palloc(&pl, G->T * a.ro * (int64_t)I->esz);
                void *o_fresh = t_palloc(&pl, G->T * a.ro * (int64_t)I->esz);
                int32_t *sel = t_palloc(&pl, nrow * (int64_t)sizeof(int32_t));
                int32_t *sel_fresh = t_palloc(&pl, nrow * (int64_t)sizeof(int32_t));
                void *st = NULL, *fresh = NULL;
                dsc_err err = {0};
                ref r;
                if (I->make(c, G->T, &st, &err) != DSC_OK || I->make(c, G->T, &fresh, &err) ||
                    !ref_run(t, &pl, I, &bq, &r)) {
                    T_CHECK(t, 0, "setup: %s", err.msg);
                    I->drop(st);
                    I->drop(fresh);
                    t_pool_free(&pl);
                    continue;
                }
                run_steps(t, I, st, &a, 0, len_a, o, sel);
                T_CHECK(t, I->trunc(st, p, &err) == DSC_OK, "truncate %lld: %s", (long long)p,
                        err.msg);
                /* block i survives iff its last token i*d + l - 1 < p */
                int64_t want_cmp = p >= c->l ? (p - c->l) / c->d + 1 : 0;
                T_CHECK(t, I->len(st) == p && I->ncmp(st) == want_cmp,
                        "%s truncate %lld: len %lld n_cmp %lld, want %lld %lld", I->name,
                        (long long)p, (long long)I->len(st), (long long)I->ncmp(st),
                        (long long)p, (long long)want_cmp);
                run_steps(t, I, st, &bq, p, G->T, o, sel);
                run_steps(t, I, fresh, &bq, 0, G->T, o_fresh, sel_fresh);
                size_t ob = (size_t)((G->T - p) * a.ro) * I->esz;
                size_t so = (size_t)(p * c->H_kv * c->n);
                T_CHECK(t, !memcmp((char *)o + (size_t)(p * a.ro) * I->esz,
                                   (char *)o_fresh + (size_t)(p * a.ro) * I->esz, ob) &&
                               !memcmp(sel + so, sel_fresh + so,
                                       (size_t)(nrow - (int64_t)so) * sizeof(int32_t)),
                        "%s %s rollback to %lld: outputs / selections not bit-identical to a "
                        "fresh state's", I->name, G->name, (long long)p);
                T_CHECK(t, I->same(st, fresh), "%s %s rollback to %lld: state differs from a "
                        "fresh state's", I->name, G->name, (long long)p);
                double e = check_rows(t, I, "rollback", &bq, p, G->T, o, sel, r.o, r.sel);
                worst = e > worst ? e : worst;
                I->drop(st);
                I->drop(fresh);
                t_pool_free(&pl);
            }
            if (verbose())
                printf("      %s %-44s rollback max|d|/(1+|ref|) = %.3g\n", I->name, G->name,
                       worst);
        }
}

/* ---- 4. a block far behind the window wins the selection ---- */

static void test_far_select(dsc_t *t) {
    for (int shared = 0; shared <= 1; shared++)
        for (int ii = 0; ii < 2; ii++) {
            const inst *I = &INST[ii];
            dsc_nsa_config c = {.l = 8, .d = 4, .l_sel = 8, .n = 4, .w = 16, .H_q = 4, .H_kv = 2,
                                .d_k = 16, .d_v = 8, .phi = DSC_NSA_PHI_MEAN,
                                .shared_kv = shared};
            const int64_t T = 240, t_far = 120, blk = 1;
            t_pool pl = {0};
            seq s;
            seq_init(&pl, &s, &c, T, 5000 + (uint64_t)shared, 0.5);
            /* keys of selection block 1 (tokens 8..15) and queries t >= 120
               share a large component on dim 0 of every head (q.k*scale ~ 4);
               the block's values are shifted so that it matters to o_slc */
            for (int b = 0; b < (shared ? 1 : 3); b++)
                for (int64_t r = blk * c.l_sel; r < (blk + 1) * c.l_sel; r++)
                    for (int64_t h = 0; h < c.H_kv; h++) {
                        s.x[X_K + b][r * s.row[X_K] + h * c.d_k] = 4.0;
                        for (int64_t e = 0; e < c.d_v; e++)
                            s.x[X_V + b][r * s.row[X_V] + h * c.d_v + e] += 3.0;
                    }
            for (int64_t tt = t_far; tt < T; tt++)
                for (int64_t h = 0; h < c.H_q; h++) s.x[X_Q][tt * s.row[X_Q] + h * c.d_k] = 4.0;
            seq_sync(&s);
            ref r;
            void *st = NULL;
            dsc_err err = {0};
            if (!ref_run(t, &pl, I, &s, &r) || I->make(&c, T, &st, &err) != DSC_OK) {
                T_CHECK(t, 0, "setup: %s", err.msg);
                t_pool_free(&pl);
                continue;
            }
            void *o = t_palloc(&pl, T * s.ro * (int64_t)I->esz);
            int32_t *sel = t_palloc(&pl, T * c.H_kv * c.n * (int64_t)sizeof(int32_t));
            run_steps(t, I, st, &s, 0, T, o, sel);
            /* block 1 is selected by every KV head of every far query, and
               is neither forced (0, cur-1, cur) nor near the window */
            int64_t missing = 0;
            for (int64_t tt = t_far; tt < T; tt++)
                for (int64_t h = 0; h < c.H_kv; h++) {
                    int has = 0;
                    for (int64_t k = 0; k < c.n; k++)
                        has |= sel[(tt * c.H_kv + h) * c.n + k] == blk;
                    missing += !has;
                }
            T_CHECK(t, t_far - ((blk + 1) * c.l_sel - 1) >= c.w && t_far / c.l_sel - 1 > blk + 1,
                    "test setup: block 1 not far behind the window");
            T_CHECK(t, missing == 0, "%s shared=%d: block %lld not selected in %lld (t, head) "
                    "pairs of t >= %lld", I->name, shared, (long long)blk, (long long)missing,
                    (long long)t_far);
            double e = check_rows(t, I, "far block", &s, 0, T, o, sel, r.o, r.sel);
            /* sensitivity: without block 1's raw values (a window-truncated
               cache) the outputs of the far queries move by far more than tol */
            seq s2 = s;
            int vb = shared ? X_V : X_V + DSC_NSA_SLC;
            s2.x[vb] = t_dalloc(&pl, T * s.row[vb]);
            s2.xf[vb] = t_falloc(&pl, T * s.row[vb]);
            memcpy(s2.x[vb], s.x[vb], (size_t)(T * s.row[vb]) * sizeof(double));
            memset(s2.x[vb] + blk * c.l_sel * s.row[vb], 0,
                   (size_t)(c.l_sel * s.row[vb]) * sizeof(double));
            seq_sync(&s2);
            ref r2;
            double moved = 0;
            if (ref_run(t, &pl, I, &s2, &r2))
                for (int64_t i = t_far * s.ro; i < T * s.ro; i++) {
                    double d = fabs(getv(I, r2.o, i) - getv(I, r.o, i));
                    moved = d > moved ? d : moved;
                }
            T_CHECK(t, moved > 0.05, "%s shared=%d: block 1's values barely matter (%.3g): the "
                    "test could not catch a truncated cache", I->name, shared, moved);
            if (verbose())
                printf("      %s shared=%d far block: max|d|/(1+|ref|) = %.3g, dropping it moves "
                       "o by %.3g\n", I->name, shared, e, moved);
            I->drop(st);
            t_pool_free(&pl);
        }
}

/* ---- 5. read counts ---- */

static void test_reads(dsc_t *t) {
    for (int gi = 0; gi < N_GEOMS; gi++)
        for (int ii = 0; ii < 2; ii++) {
            const inst *I = &INST[ii];
            const geom *G = &GEOMS[gi];
            const dsc_nsa_config *c = &G->c;
            t_pool pl = {0};
            seq s;
            seq_init(&pl, &s, c, G->T, 6000 + (uint64_t)gi, 1.0);
            void *st = NULL;
            dsc_err err = {0};
            if (I->make(c, G->T, &st, &err) != DSC_OK) {
                T_CHECK(t, 0, "new: %s", err.msg);
                t_pool_free(&pl);
                continue;
            }
            void *o = t_palloc(&pl, s.ro * (int64_t)I->esz);
            int32_t *sel = t_palloc(&pl, c->H_kv * c->n * (int64_t)sizeof(int32_t));
            char *mark = t_palloc(&pl, G->T);
            int64_t bad = -1, over = -1, raw_lt = 0;
            dsc_nsa_decode_stats last = {0};
            for (int64_t tt = 0; tt < G->T; tt++) {
                bufs b = seq_at(&s, I->f32, tt);
                dsc_nsa_decode_stats S;
                memset(&S, 0x5a, sizeof S);
                if (I->step(st, &b, o, sel, &S, &err) != DSC_OK) {
                    T_CHECK(t, 0, "step %lld: %s", (long long)tt, err.msg);
                    break;
                }
                int64_t sl = tt + 1, lp = c->l_sel;
                int64_t kk = c->n < tt / lp + 1 ? c->n : tt / lp + 1;
                int64_t cmp = sl >= c->l ? (sl - c->l) / c->d + 1 : 0;
                int64_t slc = (kk - 1) * lp + tt % lp + 1;
                int64_t win = c->w < sl ? c->w : sl;
                int64_t comp = sl >= c->l && (sl - c->l) % c->d == 0 ? c->l : 0;
                /* raw: brute force from the selection, the max over heads */
                int64_t raw = 0;
                for (int64_t h = 0; h < c->H_kv; h++) {
                    int64_t slc_h = 0, u = 0;
                    memset(mark, 0, (size_t)sl);
                    for (int64_t k = 0; k < c->n; k++) {
                        int32_t j = sel[h * c->n + k];
                        if (j < 0) continue;
                        for (int64_t x = (int64_t)j * lp; x < (j + 1) * lp && x <= tt; x++)
                            mark[x] = 1, slc_h++;
                    }
                    for (int64_t x = sl - win; x <= tt; x++) mark[x] |= 2;
                    for (int64_t x = 0; x < sl; x++) u += mark[x] != 0;
                    int64_t r = c->shared_kv ? u : slc_h + win;
                    raw = r > raw ? r : raw;
                    if (slc_h != slc) bad = bad < 0 ? tt : bad;
                }
                if (S.t != tt || S.cmp != cmp || S.slc != slc || S.win != win || S.raw != raw ||
                    S.compress != comp)
                    bad = bad < 0 ? tt : bad;
                if (S.cmp + S.slc + S.win > sl / c->d + c->n * lp + c->w && over < 0) over = tt;
                raw_lt += S.raw < S.slc + S.win;
                last = S;
                if (bad >= 0 && bad == tt)
                    T_CHECK(t, 0, "%s %s t=%lld: stats t %lld cmp %lld slc %lld win %lld raw %lld "
                            "compress %lld, want %lld %lld %lld %lld %lld %lld", I->name, G->name,
                            (long long)tt, (long long)S.t, (long long)S.cmp, (long long)S.slc,
                            (long long)S.win, (long long)S.raw, (long long)S.compress,
                            (long long)tt, (long long)cmp, (long long)slc, (long long)win,
                            (long long)raw, (long long)comp);
            }
            T_CHECK(t, over < 0, "%s %s: reads exceed s/d + n*l' + w at t=%lld", I->name, G->name,
                    (long long)over);
            /* with shared K/V the window lies inside the forced local blocks
               at these sizes (w <= 2 l'), so the distinct count is smaller */
            if (c->shared_kv && c->w <= 2 * c->l_sel)
                T_CHECK(t, raw_lt > 0, "%s %s: shared K/V never overlapped slc and win", I->name,
                        G->name);
            if (verbose() && ii == 0) {
                int64_t sl = last.t + 1;
                printf("      %-44s s=%lld: cmp %lld + slc %lld + win %lld = %lld <= s/d + n*l' "
                       "+ w = %lld; raw %lld, compress %lld\n", G->name, (long long)sl,
                       (long long)last.cmp, (long long)last.slc, (long long)last.win,
                       (long long)(last.cmp + last.slc + last.win),
                       (long long)(sl / c->d + c->n * c->l_sel + c->w), (long long)last.raw,
                       (long long)last.compress);
            }
            I->drop(st);
            t_pool_free(&pl);
        }
}

/* ---- 6. bad input ---- */

/* The state struct and its whole memory block, to check "unchanged". */
typedef struct {
    dsc_nsa_decode_f64 st;
    char *mem;
} snap;

static void snap_take(snap *sn, const dsc_nsa_decode_f64 *st) {
    sn->st = *st;
    memcpy(sn->mem, st->mem, st->mem_bytes);
}

static int snap_same(const snap *sn, const dsc_nsa_decode_f64 *st) {
    return !memcmp(&sn->st, st, sizeof *st) && !memcmp(sn->mem, st->mem, st->mem_bytes);
}

static void test_bad_input(dsc_t *t) {
    const dsc_nsa_config c = GEOMS[0].c;   /* MLP, independent K/V */
    const int64_t cap = 20, T = 20;
    t_pool pl = {0};
    seq s;
    seq_init(&pl, &s, &c, T, 7000, 1.0);
    ref r;
    if (!ref_run(t, &pl, &INST[0], &s, &r)) {
        t_pool_free(&pl);
        return;
    }
    dsc_err e = {0};
    size_t bytes = 0;
    T_CHECK(t, dsc_nsa_decode_sizes_f64(&c, cap, &bytes, &e) == DSC_OK && bytes > 0, "%s",
            e.msg);
    /* init and sizes refuse bad arguments */
    dsc_nsa_config badc = c;
    badc.n = 2;
    T_CHECK(t, dsc_nsa_decode_sizes_f64(&badc, cap, &bytes, &e) == DSC_ERR_ARG &&
                   strstr(e.msg, "n = 2"),
            "bad config: %s", e.msg);
    T_CHECK(t, dsc_nsa_decode_sizes_f64(&c, 0, &bytes, &e) == DSC_ERR_ARG &&
                   strstr(e.msg, "n_ctx"),
            "cap 0: %s", e.msg);
    dsc_nsa_decode_f64 *nst = (void *)1;
    T_CHECK(t, dsc_nsa_decode_new_f64(&c, -1, &nst, &e) == DSC_ERR_ARG && nst == NULL,
            "new with cap -1: %s", e.msg);
    void *mem = t_palloc(&pl, (int64_t)bytes);
    dsc_nsa_decode_f64 st;
    memset(&st, 0x33, sizeof st);
    dsc_nsa_decode_f64 st0 = st;
    T_CHECK(t, dsc_nsa_decode_init_f64(&st, &c, cap, mem, bytes - 1, &e) == DSC_ERR_ARG &&
                   strstr(e.msg, "smaller") && !memcmp(&st, &st0, sizeof st),
            "small block: %s", e.msg);
    T_CHECK(t, dsc_nsa_decode_init_f64(&st, &c, cap, mem, bytes, &e) == DSC_OK, "init: %s",
            e.msg);

    snap sn = {.mem = t_palloc(&pl, (int64_t)bytes)};
    const int64_t ro = s.ro, nsel = c.H_kv * c.n;
    double *o = t_dalloc(&pl, T * ro), o_t[64];
    int32_t *sel = t_palloc(&pl, T * nsel * (int64_t)sizeof(int32_t));
    dsc_nsa_params_f64 pp = par_f64(&(bufs){.par = {s.par[0], s.par[1], s.par[2], s.par[3],
                                                     s.par[4], s.par[5]}});
    for (int64_t tt = 0; tt < cap; tt++) {
        bufs b = seq_at(&s, 0, tt);
        T_CHECK(t, step_f64(&st, &b, o + tt * ro, sel + tt * nsel, NULL, &e) == DSC_OK,
                "step %lld: %s", (long long)tt, e.msg);
    }
    check_rows(t, &INST[0], "fill", &s, 0, T, o, sel, r.o, r.sel);

    /* a full state refuses a step and a prefill; nothing is written */
    bufs b0 = seq_at(&s, 0, 0);
    snap_take(&sn, &st);
    for (int i = 0; i < 64; i++) o_t[i] = -7;
    T_CHECK(t, step_f64(&st, &b0, o_t, NULL, NULL, &e) == DSC_ERR_ARG && strstr(e.msg, "full") &&
                   snap_same(&sn, &st) && o_t[0] == -7 && o_t[ro - 1] == -7,
            "step on a full state: %s", e.msg);
    if (verbose()) printf("      full state: \"%s\"\n", e.msg);
    T_CHECK(t, prefill_f64(&st, &b0, 1, o_t, NULL, &e) == DSC_ERR_ARG &&
                   strstr(e.msg, "does not fit") && snap_same(&sn, &st),
            "prefill on a full state: %s", e.msg);
    /* rollback outside 0 .. len */
    T_CHECK(t, trunc_f64(&st, cap + 1, &e) == DSC_ERR_ARG && strstr(e.msg, "outside") &&
                   snap_same(&sn, &st),
            "rollback past len: %s", e.msg);
    if (verbose()) printf("      rollback: \"%s\"\n", e.msg);
    T_CHECK(t, trunc_f64(&st, -1, &e) == DSC_ERR_ARG && snap_same(&sn, &st), "rollback to -1");
    T_CHECK(t, trunc_f64(&st, 12, &e) == DSC_OK && st.len == 12, "rollback to 12: %s", e.msg);
    T_CHECK(t, trunc_f64(&st, 13, &e) == DSC_ERR_ARG, "rollback forward (13 > len 12) accepted");

    /* missing inputs: named, nothing written */
    snap_take(&sn, &st);
    bufs b = seq_at(&s, 0, 12);
    const double *k[3] = {b.x[X_K], b.x[X_K + 1], b.x[X_K + 2]};
    const double *v[3] = {b.x[X_V], b.x[X_V + 1], b.x[X_V + 2]};
    const double *k_miss[3] = {k[0], k[1], NULL};
    dsc_nsa_params_f64 pp_miss = pp;
    pp_miss.w2_v = NULL;
    struct {
        const char *want;
        dsc_status rc;
    } cases[] = {
        {"q_t", dsc_nsa_decode_step_f64(&st, &pp, NULL, k, v, b.x[X_G], o_t, NULL, NULL, &e)},
        {"k_t[WIN]",
         dsc_nsa_decode_step_f64(&st, &pp, b.x[X_Q], k_miss, v, b.x[X_G], o_t, NULL, NULL, &e)},
        {"params",
         dsc_nsa_decode_step_f64(&st, NULL, b.x[X_Q], k, v, b.x[X_G], o_t, NULL, NULL, &e)},
        {"w2_v",
         dsc_nsa_decode_step_f64(&st, &pp_miss, b.x[X_Q], k, v, b.x[X_G], o_t, NULL, NULL, &e)},
        {"o_t", dsc_nsa_decode_step_f64(&st, &pp, b.x[X_Q], k, v, b.x[X_G], NULL, NULL, NULL, &e)},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        T_CHECK(t, cases[i].rc == DSC_ERR_ARG && snap_same(&sn, &st),
                "missing %s: status %d, state %s", cases[i].want, (int)cases[i].rc,
                snap_same(&sn, &st) ? "unchanged" : "CHANGED");
    }
    /* each message names its input (checked one call at a time) */
    dsc_nsa_decode_step_f64(&st, &pp, b.x[X_Q], k_miss, v, b.x[X_G], o_t, NULL, NULL, &e);
    T_CHECK(t, strstr(e.msg, "k_t[WIN]") != NULL, "message \"%s\" does not name k_t[WIN]", e.msg);
    dsc_nsa_decode_step_f64(&st, &pp_miss, b.x[X_Q], k, v, b.x[X_G], o_t, NULL, NULL, &e);
    T_CHECK(t, strstr(e.msg, "w2_v") != NULL, "message \"%s\" does not name w2_v", e.msg);
    T_CHECK(t, prefill_f64(&st, &b, cap - 12 + 1, o, NULL, &e) == DSC_ERR_ARG &&
                   snap_same(&sn, &st),
            "prefill past capacity accepted");
    T_CHECK(t, prefill_f64(&st, &b, -1, o, NULL, &e) == DSC_ERR_ARG && snap_same(&sn, &st),
            "prefill of -1 tokens accepted");
    dsc_nsa_in_f64 in = in_f64(&b);
    in.g = NULL;
    T_CHECK(t, dsc_nsa_decode_prefill_f64(&st, &pp, 3, &in, o, 0, NULL, &e) == DSC_ERR_ARG &&
                   strstr(e.msg, "in->g") && snap_same(&sn, &st),
            "prefill without g: %s", e.msg);

    /* still usable: the rest of the sequence matches the forward */
    memset(o + 12 * ro, 0, (size_t)(8 * ro) * sizeof(double));
    for (int64_t tt = 12; tt < cap; tt++) {
        bufs bt = seq_at(&s, 0, tt);
        T_CHECK(t, step_f64(&st, &bt, o + tt * ro, sel + tt * nsel, NULL, &e) == DSC_OK,
                "step %lld after the errors: %s", (long long)tt, e.msg);
    }
    check_rows(t, &INST[0], "after errors", &s, 0, T, o, sel, r.o, r.sel);

    /* shared K/V reads only k_t[0], v_t[0]: NULL elsewhere is fine */
    dsc_nsa_config cs = GEOMS[1].c;
    dsc_nsa_decode_f64 *ss = NULL;
    T_CHECK(t, dsc_nsa_decode_new_f64(&cs, 4, &ss, &e) == DSC_OK, "%s", e.msg);
    if (ss) {
        seq s2;
        seq_init(&pl, &s2, &cs, 4, 7001, 1.0);
        const double *k1[3] = {s2.x[X_K], NULL, NULL}, *v1[3] = {s2.x[X_V], NULL, NULL};
        T_CHECK(t, dsc_nsa_decode_step_f64(ss, NULL, s2.x[X_Q], k1, v1, s2.x[X_G], o_t, NULL, NULL,
                                           &e) == DSC_OK,
                "shared K/V step with NULL k_t[1..2] and mean phi without params: %s", e.msg);
        dsc_nsa_decode_free_f64(ss);
    }
    t_pool_free(&pl);
}

const dsc_test_case dsc_tests_nsa_decode[] = {
    {"steps", test_steps},
    {"prefill", test_prefill},
    {"rollback", test_rollback},
    {"far_select", test_far_select},
    {"reads", test_reads},
    {"bad_input", test_bad_input},
    {NULL, NULL},
};
