/*
 * test_tk_sparse.c - the sparse attention kernel of DSA's sparse stage
 * (src/train/tk_sparse.c) against fp64 references:
 *  full:   every query selects all its visible keys (rows 0..t, -1 padded):
 *          outputs, lse and dQ/dK/dV equal dsc_op_attn_fwd/bwd_f64 (dense
 *          causal);
 *  masked: random selections (kk of n, with -1 padding, future keys and a
 *          query with nothing selected) against a brute-force masked fp64
 *          attention written here.
 * Heads are strided inside wider rows (the trainer's layout); gradients
 * start from random values (the kernel adds). Tolerance: 1e-5 of the
 * largest reference value of each tensor (the kernel's dot products and
 * sums are in double, its inputs and outputs fp32: measured errors are
 * ~1e-7 relative).
 *
 * The fast fp32 kernel (dsc_tks_fast_*) runs on the same inputs and is
 * checked against the same fp64 references AND against the scalar kernel's
 * outputs, with TOL_FAST = 2e-5 of the largest reference value: its scores
 * are fp32 dot products over <= 48 terms (inputs ~N(0, 1.5^2), |S| up to
 * ~10), P V, dQ and the dK / dV updates are fp32 sums over <= 70 keys;
 * measured errors are ~1e-6 relative. Its P output is checked against
 * exp(S - lse) computed in fp64 (0 off the used entries), to TOL_FAST
 * absolute (P <= 1). Also: the scratch is not overrun, P = NULL and NULL
 * gradients change nothing else (bit for bit: the kernel is
 * deterministic). Shapes cover n = 1, kk and dqk / dv that are not
 * multiples of 16 (the kernel's lane width), and strided heads.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "test.h"
#include "train/tk_sparse.h"

#define TOL 1e-5
#define TOL_FAST 2e-5

typedef struct {
    int64_t n, dqk, dv, ld;   /* ld: row stride of every tensor (>= dqk, dv) */
} shape;

static float *rnd(t_pool *pl, t_rng *r, int64_t n, float sd) {
    float *x = t_palloc(pl, n * (int64_t)sizeof(float));
    for (int64_t i = 0; i < n; i++) x[i] = sd * t_rng_normal(r);
    return x;
}

static double *wide(t_pool *pl, const float *x, int64_t n) {
    double *y = t_palloc(pl, n * (int64_t)sizeof(double));
    for (int64_t i = 0; i < n; i++) y[i] = x[i];
    return y;
}

/* max |got - want| <= tol * max |want| over the first w columns of n rows */
static void close_tol(dsc_t *t, const char *what, const float *got, const double *want,
                      int64_t n, int64_t w, int64_t ld, double tol) {
    double mag = 0, err = 0;
    for (int64_t i = 0; i < n; i++)
        for (int64_t c = 0; c < w; c++) {
            double v = want[i * ld + c];
            if (isfinite(v) && fabs(v) > mag) mag = fabs(v);
        }
    for (int64_t i = 0; i < n; i++)
        for (int64_t c = 0; c < w; c++) {
            double g = got[i * ld + c], v = want[i * ld + c];
            double e = (isinf(v) && g == v) ? 0 : fabs(g - v);
            if (!(e <= err)) err = e;   /* NaN wins */
        }
    T_CHECK(t, err <= tol * (mag > 1e-30 ? mag : 1), "%s: max err %.3g vs scale %.3g", what,
            err, mag);
}

static void close_rows(dsc_t *t, const char *what, const float *got, const double *want,
                       int64_t n, int64_t w, int64_t ld) {
    close_tol(t, what, got, want, n, w, ld, TOL);
}

/* Pd (n, kk) = exp(S - lse) in double for the used entries of sel, 0 for
   the others: what the fast kernel's P must hold. */
static void ref_probs(double *Pd, const double *Q, const double *K, const double *lse,
                      const int32_t *sel, int64_t kk, const shape *sh, double scale) {
    for (int64_t t = 0; t < sh->n; t++)
        for (int64_t j = 0; j < kk; j++) {
            int32_t s = sel[t * kk + j];
            double p = 0;
            if (s >= 0 && s <= t) {
                double x = 0;
                for (int64_t i = 0; i < sh->dqk; i++) x += Q[t * sh->ld + i] * K[s * sh->ld + i];
                p = exp(scale * x - lse[t]);
            }
            Pd[t * kk + j] = p;
        }
}

static float *copy_f(t_pool *pl, const float *x, int64_t n) {
    float *y = t_palloc(pl, n * (int64_t)sizeof(float));
    memcpy(y, x, (size_t)n * sizeof *y);
    return y;
}

static int same_f(const float *a, const float *b, int64_t n) {
    return memcmp(a, b, (size_t)n * sizeof *a) == 0;
}

/* Brute-force masked attention in double: query t uses the entries of its
   sel row with 0 <= s <= t. Gradients are added. */
static void ref_masked(double *O, double *lse, double *dQ, double *dK, double *dV,
                       const double *dO, const double *Q, const double *K, const double *V,
                       const int32_t *sel, int64_t kk, const shape *sh, double scale) {
    int64_t ld = sh->ld;
    for (int64_t t = 0; t < sh->n; t++) {
        double s[64], p[64], mx = -INFINITY, sum = 0;
        int64_t u[64], m = 0;
        for (int64_t j = 0; j < kk; j++)
            if (sel[t * kk + j] >= 0 && sel[t * kk + j] <= t) u[m++] = sel[t * kk + j];
        for (int64_t i = 0; i < sh->dv; i++) O[t * ld + i] = 0;
        if (!m) {
            lse[t] = -INFINITY;
            continue;
        }
        for (int64_t j = 0; j < m; j++) {
            double x = 0;
            for (int64_t i = 0; i < sh->dqk; i++) x += Q[t * ld + i] * K[u[j] * ld + i];
            s[j] = scale * x;
            mx = s[j] > mx ? s[j] : mx;
        }
        for (int64_t j = 0; j < m; j++) sum += exp(s[j] - mx);
        lse[t] = mx + log(sum);
        for (int64_t j = 0; j < m; j++) p[j] = exp(s[j] - lse[t]);
        for (int64_t j = 0; j < m; j++)
            for (int64_t i = 0; i < sh->dv; i++) O[t * ld + i] += p[j] * V[u[j] * ld + i];
        double D = 0;
        for (int64_t i = 0; i < sh->dv; i++) D += dO[t * ld + i] * O[t * ld + i];
        for (int64_t j = 0; j < m; j++) {
            double dp = 0;
            for (int64_t i = 0; i < sh->dv; i++) dp += dO[t * ld + i] * V[u[j] * ld + i];
            double ds = p[j] * (dp - D);
            for (int64_t i = 0; i < sh->dqk; i++) {
                dQ[t * ld + i] += scale * ds * K[u[j] * ld + i];
                dK[u[j] * ld + i] += scale * ds * Q[t * ld + i];
            }
            for (int64_t i = 0; i < sh->dv; i++) dV[u[j] * ld + i] += p[j] * dO[t * ld + i];
        }
    }
}

/* Runs the kernel and both references' comparisons for one selection. With
   dense != 0 the reference is dsc_op_attn_fwd/bwd_f64 (sel must then hold
   every visible key). */
static void check(dsc_t *t, const char *tag, const shape *sh, const int32_t *sel, int64_t kk,
                  int dense, uint64_t seed) {
    t_pool pl = {0};
    t_rng r = {seed};
    int64_t n = sh->n, ld = sh->ld, sz = n * ld;
    float scale = 0.3f;
    float *Q = rnd(&pl, &r, sz, 1.5f), *K = rnd(&pl, &r, sz, 1.5f), *V = rnd(&pl, &r, sz, 1);
    float *dO = rnd(&pl, &r, sz, 1), *O = rnd(&pl, &r, sz, 1);
    float *dQ = rnd(&pl, &r, sz, 1), *dK = rnd(&pl, &r, sz, 1), *dV = rnd(&pl, &r, sz, 1);
    float *lse = t_palloc(&pl, n * (int64_t)sizeof(float));
    double *Qd = wide(&pl, Q, sz), *Kd = wide(&pl, K, sz), *Vd = wide(&pl, V, sz);
    double *dOd = wide(&pl, dO, sz), *Od = wide(&pl, O, sz);
    double *dQd = wide(&pl, dQ, sz), *dKd = wide(&pl, dK, sz), *dVd = wide(&pl, dV, sz);
    double *lsed = t_palloc(&pl, n * (int64_t)sizeof(double));
    float *ws = t_palloc(&pl, dsc_tks_attn_scratch(kk) * (int64_t)sizeof(float));
    dsc_op_attn_dims d = {n, sh->dqk, sh->dv, ld, ld, ld, ld};
    /* the fast kernel's copies: the same starting gradients, O and P junk */
    float *Of = rnd(&pl, &r, sz, 1), *dQf = copy_f(&pl, dQ, sz), *dKf = copy_f(&pl, dK, sz);
    float *dVf = copy_f(&pl, dV, sz), *dKn = copy_f(&pl, dK, sz);
    float *lsef = t_palloc(&pl, n * (int64_t)sizeof(float));
    float *Pf = t_palloc(&pl, n * kk * (int64_t)sizeof(float));
    for (int64_t i = 0; i < n * kk; i++) Pf[i] = 7.0f;
    int64_t nws = dsc_tks_fast_scratch(kk, sh->dqk, sh->dv);
    float *wsf = t_palloc(&pl, (nws + 16) * (int64_t)sizeof(float));
    for (int64_t i = 0; i < nws + 16; i++) wsf[i] = -3.0f;
    dsc_tks_attn_fwd(O, lse, Q, K, V, sel, kk, &d, scale, ws);
    dsc_tks_attn_bwd(dQ, dK, dV, dO, Q, K, V, O, lse, sel, kk, &d, scale, ws);
    dsc_tks_fast_fwd(Of, lsef, Pf, Q, K, V, sel, kk, &d, scale, wsf);
    dsc_tks_fast_bwd(dQf, dKf, dVf, dO, Q, K, V, Of, lsef, sel, kk, &d, scale, wsf);
    int canary = 1;
    for (int64_t i = nws; i < nws + 16; i++) canary &= wsf[i] == -3.0f;
    T_CHECK(t, canary, "%s: fast scratch overrun (%lld floats)", tag, (long long)nws);
    {
        /* P = NULL and NULL gradients: the rest bit for bit as above */
        float *On = rnd(&pl, &r, sz, 1), *lsen = t_palloc(&pl, n * (int64_t)sizeof(float));
        for (int64_t i = 0; i < sz; i++) On[i] = i % ld < sh->dv ? 5.0f : Of[i];
        dsc_tks_fast_fwd(On, lsen, NULL, Q, K, V, sel, kk, &d, scale, wsf);
        T_CHECK(t, same_f(On, Of, sz) && same_f(lsen, lsef, n), "%s: fast fwd P=NULL differs",
                tag);
        dsc_tks_fast_bwd(NULL, dKn, NULL, dO, Q, K, V, Of, lsef, sel, kk, &d, scale, wsf);
        T_CHECK(t, same_f(dKn, dKf, sz), "%s: fast bwd dK alone differs", tag);
    }
    /* the scalar kernel's outputs, widened, as a second reference */
    double *Os = wide(&pl, O, sz), *lses = wide(&pl, lse, n), *dQs = wide(&pl, dQ, sz);
    double *dKs = wide(&pl, dK, sz), *dVs = wide(&pl, dV, sz);
    if (dense) {
        dsc_op_attn_fwd_f64(Od, lsed, Qd, Kd, Vd, &d, scale);
        dsc_op_attn_bwd_f64(dQd, dKd, dVd, dOd, Qd, Kd, Vd, Od, lsed, &d, scale);
    } else {
        ref_masked(Od, lsed, dQd, dKd, dVd, dOd, Qd, Kd, Vd, sel, kk, sh, scale);
    }
    char w[96];
    snprintf(w, sizeof w, "%s O", tag);
    close_rows(t, w, O, Od, n, sh->dv, ld);
    snprintf(w, sizeof w, "%s lse", tag);
    close_rows(t, w, lse, lsed, n, 1, 1);
    snprintf(w, sizeof w, "%s dQ", tag);
    close_rows(t, w, dQ, dQd, n, sh->dqk, ld);
    snprintf(w, sizeof w, "%s dK", tag);
    close_rows(t, w, dK, dKd, n, sh->dqk, ld);
    snprintf(w, sizeof w, "%s dV", tag);
    close_rows(t, w, dV, dVd, n, sh->dv, ld);
    /* fast vs fp64 and vs the scalar kernel */
    static const char *const vs[2] = {"f64", "scalar"};
    for (int k = 0; k < 2; k++) {
        snprintf(w, sizeof w, "%s fast O vs %s", tag, vs[k]);
        close_tol(t, w, Of, k ? Os : Od, n, sh->dv, ld, TOL_FAST);
        snprintf(w, sizeof w, "%s fast lse vs %s", tag, vs[k]);
        close_tol(t, w, lsef, k ? lses : lsed, n, 1, 1, TOL_FAST);
        snprintf(w, sizeof w, "%s fast dQ vs %s", tag, vs[k]);
        close_tol(t, w, dQf, k ? dQs : dQd, n, sh->dqk, ld, TOL_FAST);
        snprintf(w, sizeof w, "%s fast dK vs %s", tag, vs[k]);
        close_tol(t, w, dKf, k ? dKs : dKd, n, sh->dqk, ld, TOL_FAST);
        snprintf(w, sizeof w, "%s fast dV vs %s", tag, vs[k]);
        close_tol(t, w, dVf, k ? dVs : dVd, n, sh->dv, ld, TOL_FAST);
    }
    double *Pd = t_palloc(&pl, n * kk * (int64_t)sizeof(double));
    ref_probs(Pd, Qd, Kd, lsed, sel, kk, sh, scale);
    snprintf(w, sizeof w, "%s fast P", tag);
    close_tol(t, w, Pf, Pd, n, kk, kk, TOL_FAST);
    t_pool_free(&pl);
}

static void test_full(dsc_t *t) {
    /* n = 1; odd widths; kk = n = 70 (not a multiple of 16), dqk 19 = 16 + 3,
       dv 13 < 16; the realistic head widths 48 / 32 */
    static const shape shapes[] = {{1, 4, 3, 5},    {17, 12, 8, 20}, {40, 24, 16, 24},
                                   {70, 19, 13, 23}, {33, 48, 32, 56}};
    for (int c = 0; c < 5; c++) {
        const shape *sh = &shapes[c];
        int64_t n = sh->n, kk = n;
        int32_t *sel = malloc((size_t)(n * kk) * sizeof *sel);
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < kk; j++) sel[i * kk + j] = j <= i ? (int32_t)j : -1;
        char tag[32];
        snprintf(tag, sizeof tag, "full n%lld", (long long)n);
        check(t, tag, sh, sel, kk, 1, 100 + (uint64_t)c);
        free(sel);
    }
}

static void test_masked(dsc_t *t) {
    static const shape shapes[] = {{12, 6, 4, 8},    {40, 16, 12, 16}, {1, 5, 3, 8},
                                   {90, 37, 21, 40}, {120, 48, 32, 50}};
    static const int64_t kks[] = {3, 7, 1, 37, 64}; /* <= 64: ref_masked's arrays */
    t_rng r = {77};
    for (int c = 0; c < 5; c++) {
        const shape *sh = &shapes[c];
        int64_t n = sh->n, kk = kks[c];
        int32_t *sel = malloc((size_t)(n * kk) * sizeof *sel);
        for (int64_t i = 0; i < n; i++) {
            /* kk distinct positions of [0, n) (future keys included, as the
               demo's selection for t < k), some replaced by -1 padding */
            int64_t m = 0;
            while (m < kk) {
                int32_t s = (int32_t)(t_rng_u64(&r) % (uint64_t)n);
                int dup = 0;
                for (int64_t j = 0; j < m; j++) dup |= sel[i * kk + j] == s;
                if (!dup) sel[i * kk + m++] = s;
            }
            if (t_rng_u64(&r) % 4 == 0) sel[i * kk + t_rng_u64(&r) % (uint64_t)kk] = -1;
        }
        if (n > 3) /* query 3 uses nothing: padding and future keys only */
            for (int64_t j = 0; j < kk; j++) sel[3 * kk + j] = j ? 3 + (int32_t)j : -1;
        char tag[32];
        snprintf(tag, sizeof tag, "masked n%lld kk%lld", (long long)n, (long long)kk);
        check(t, tag, sh, sel, kk, 0, 200 + (uint64_t)c);
        free(sel);
    }
}

const dsc_test_case dsc_tests_tk_sparse[] = {
    {"full", test_full},
    {"masked", test_masked},
    {NULL, NULL},
};
