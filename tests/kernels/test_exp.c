/*
 * test_exp.c - the vectorised exp (dsc_k_exp, each SIMD table's vexp) and
 * the kernels built on it (softmax, SiLU-gate), for every SIMD table this
 * CPU runs.
 *
 * The oracle is (float)exp((double)x): double exp is accurate to well under
 * an fp32 ulp, so rounding it gives the correctly rounded fp32 result
 * (barring a double-rounding tie, which the tolerances absorb). Tolerances,
 * the contract in kernels.h:
 *  - normal results: within 2 ulp (distance in fp32 bit patterns, which are
 *    ordered for positive floats). The AVX2/AVX-512 versions measure 1 ulp
 *    over every float input; libm expf (the scalar table) 1 ulp as well.
 *  - subnormal results: within 1 ulp of the subnormal grid (2^-149). They
 *    are computed, not flushed: the polynomial's ~1 normal ulp shrinks to
 *    under one subnormal ulp before the single rounding into the grid.
 *  - 0 (got or wanted), +inf, NaN and exp(+-0) = 1: exact, so the overflow
 *    and underflow cuts sit exactly where the correctly rounded exp's do.
 * Results must not depend on an element's position: the tails of the SIMD
 * loops (masked, or through a stack buffer) have to give the same bits as
 * the vector body.
 */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/kcpu.h"
#include "kernels/kernels.h"
#include "test.h"

static const dsc_simd_ops *const tables[] = {&dsc_simd_scalar, &dsc_simd_avx2, &dsc_simd_avx512};
#define N_TABLES 3

/* Failures reported per check before the rest are only counted. */
#define MAX_REPORTS 5

static uint32_t fbits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* 0 when got is acceptable for exp(x) (see the file comment), else the
   tolerance it broke: 2 (normal), 1 (subnormal) or -1 (must be exact).
   *dist gets the ulp distance for finite non-negative results. */
static int exp_bad(float x, float got, int64_t *dist) {
    *dist = 0;
    if (isnan(x)) return isnan(got) ? 0 : -1;
    const float want = (float)exp((double)x);
    if (isnan(got) || want == 0.0f || got == 0.0f || isinf(want) || isinf(got) || x == 0.0f)
        return fbits(got) == fbits(want) ? 0 : -1;
    if (signbit(got)) return -1;
    *dist = llabs((long long)fbits(got) - (long long)fbits(want));
    if (want >= FLT_MIN) return *dist <= 2 ? 0 : 2;
    return *dist <= 1 ? 0 : 1;
}

/* Runs every x through the table in one call and checks each result. */
static void check_values(dsc_t *t, const dsc_simd_ops *ops, const char *what, const float *x,
                            int64_t n) {
    float *y = malloc((size_t)n * sizeof(float));
    ops->vexp(y, x, n);
    int64_t nbad = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t d;
        int tol = exp_bad(x[i], y[i], &d);
        if (!tol) continue;
        if (nbad++ >= MAX_REPORTS) continue;
        if (tol > 0)
            T_CHECK(t, 0, "%s %s: exp(%a) = %a, want %a (%lld ulp apart; tolerance %d ulp%s)",
                    ops->name, what, (double)x[i], (double)y[i],
                    (double)(float)exp((double)x[i]), (long long)d, tol,
                    tol == 1 ? " of the subnormal grid" : " for normal results");
        else
            T_CHECK(t, 0,
                    "%s %s: exp(%a) = %a, want exactly %a (NaN, +-inf, 0 and exp(0) are exact)",
                    ops->name, what, (double)x[i], (double)y[i],
                    (double)(float)exp((double)x[i]));
    }
    T_CHECK(t, nbad <= MAX_REPORTS, "%s %s: %lld bad results in all", ops->name, what,
            (long long)nbad);
    free(y);
}

/* A dense grid over [-110, 90] (past both ends of the finite, nonzero
   range), random values over the same range, and random values of every
   magnitude from 2^-40 to 2^7 (the region near exp = 1 and the
   polynomial's small-s behaviour). The count is odd, so there is a tail. */
static void test_exp_sweep(dsc_t *t) {
    const int64_t n_grid = 2000001, n_rand = 500000, n_mag = 200000;
    const int64_t n = n_grid + n_rand + n_mag;
    float *x = malloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n_grid; i++)
        x[i] = (float)(-110.0 + 200.0 * (double)i / (double)(n_grid - 1));
    t_rng rng = {0xe4};
    for (int64_t i = 0; i < n_rand; i++) x[n_grid + i] = -110.0f + 200.0f * t_rng_uniform(&rng);
    for (int64_t i = 0; i < n_mag; i++) {
        float m = ldexpf(1.0f + t_rng_uniform(&rng), -40 + (int)(t_rng_u64(&rng) % 47));
        x[n_grid + n_rand + i] = (t_rng_u64(&rng) & 1) ? -m : m;
    }
    for (int v = 0; v < N_TABLES; v++) {
        if (!dsc_simd_supported(tables[v])) continue;
        check_values(t, tables[v], "sweep", x, n);
    }
    free(x);
}

/* The largest x with a finite exp (88.7228317). */
#define X_FINITE_MAX 0x1.62e42ep+6f

/* Special values, and the floats on each side of the overflow and
   underflow cuts. */
static const float specials[] = {
    NAN, -NAN, INFINITY, -INFINITY, 0.0f, -0.0f, 88.72f, 88.73f, -87.33f, -103.97f, -104.0f,
    X_FINITE_MAX,
    0x1.62e430p+6f,   /* the next float: exp overflows */
    -0x1.9fe368p+6f,  /* -103.972076: exp rounds up to 2^-149 */
    -0x1.9fe36ap+6f,  /* -103.972084, the next float: exp rounds to 0 */
    -87.3365f, -87.3366f, /* around FLT_MIN's log */
    FLT_MAX, -FLT_MAX, FLT_MIN, -FLT_MIN, 0x1p-149f, -0x1p-149f, 0x1p-24f, -0x1p-25f, 1.0f,
    -1.0f, 0.34657359f, -0.34657359f, 0.5f * 0.6931472f, 1e4f, -1e4f, 100.0f, -100.0f,
};
#define N_SPECIALS ((int64_t)(sizeof specials / sizeof specials[0]))

static void test_exp_special(dsc_t *t) {
    for (int v = 0; v < N_TABLES; v++) {
        const dsc_simd_ops *ops = tables[v];
        if (!dsc_simd_supported(ops)) continue;
        check_values(t, ops, "special values", specials, N_SPECIALS);
        /* the values named in kernels.h, spelled out */
        const float x[] = {NAN, INFINITY, -INFINITY, 0.0f, -0.0f, 88.73f, -103.97f, -104.0f,
                           0x1.62e430p+6f, -0x1.9fe368p+6f, -0x1.9fe36ap+6f};
        const float want[] = {NAN, INFINITY, 0.0f, 1.0f, 1.0f, INFINITY, 0x1p-149f, 0.0f,
                             INFINITY, 0x1p-149f, 0.0f};
        enum { NX = sizeof x / sizeof x[0] };
        float y[NX];
        ops->vexp(y, x, NX);
        for (int i = 0; i < NX; i++) {
            int ok = isnan(want[i]) ? isnan(y[i]) != 0 : fbits(y[i]) == fbits(want[i]);
            T_CHECK(t, ok, "%s: exp(%a) = %a, want exactly %a", ops->name, (double)x[i],
                    (double)y[i], (double)want[i]);
        }
        const float xf = X_FINITE_MAX;
        float yf;
        ops->vexp(&yf, &xf, 1);
        T_CHECK(t, isfinite(yf), "%s: exp(%a) must be finite, got %a", ops->name, (double)xf,
                (double)yf);
    }
}

/* Position independence, tails and aliasing: every element of a mixed
   array (specials among random values, so general-path and fast-path
   vectors both occur) through every (offset, n <= 33) window must give the
   bits that the same table gives it alone; nothing past y[n-1] is written;
   y == x gives the same bits. */
static void test_exp_tails(dsc_t *t) {
    enum { L = 128, MAXN = 33, GUARD = 2 };
    float v[L], single[L], out[MAXN + GUARD], inplace[MAXN + GUARD];
    t_rng rng = {0x7a11};
    for (int i = 0; i < L; i++) v[i] = -110.0f + 200.0f * t_rng_uniform(&rng);
    for (int i = 0; i < N_SPECIALS; i++) v[(i * 37) % L] = specials[i];
    const float sentinel = 12345.0f;
    for (int vi = 0; vi < N_TABLES; vi++) {
        const dsc_simd_ops *ops = tables[vi];
        if (!dsc_simd_supported(ops)) continue;
        for (int i = 0; i < L; i++) ops->vexp(&single[i], &v[i], 1);
        check_values(t, ops, "mixed array", v, L);
        /* the whole array at once: mostly the vector body */
        float whole[L];
        ops->vexp(whole, v, L);
        int64_t nbad = 0;
        for (int i = 0; i < L; i++)
            if (fbits(whole[i]) != fbits(single[i]) && nbad++ < MAX_REPORTS)
                T_CHECK(t, 0, "%s: exp(%a) is %a at position %d of %d but %a alone", ops->name,
                        (double)v[i], (double)whole[i], i, L, (double)single[i]);
        for (int n = 0; n <= MAXN; n++)
            for (int o = 0; o + n <= L; o++) {
                for (int j = 0; j < n + GUARD; j++) out[j] = sentinel;
                memcpy(inplace, v + o, (size_t)n * sizeof(float));
                inplace[n] = inplace[n + 1] = sentinel;
                ops->vexp(out, v + o, n);
                ops->vexp(inplace, inplace, n);
                for (int j = 0; j < n; j++) {
                    int ok = fbits(out[j]) == fbits(single[o + j]) &&
                             fbits(inplace[j]) == fbits(single[o + j]);
                    if (!ok && nbad++ < MAX_REPORTS)
                        T_CHECK(t, 0,
                                "%s: exp(%a) at %d of n=%d (offset %d) is %a (in place %a), "
                                "%a alone; results must not depend on position",
                                ops->name, (double)v[o + j], j, n, o, (double)out[j],
                                (double)inplace[j], (double)single[o + j]);
                }
                for (int j = n; j < n + GUARD; j++)
                    if ((out[j] != sentinel || inplace[j] != sentinel) && nbad++ < MAX_REPORTS)
                        T_CHECK(t, 0, "%s: n=%d wrote y[%d]", ops->name, n, j);
            }
        T_CHECK(t, nbad <= MAX_REPORTS, "%s: %lld position/tail mismatches in all", ops->name,
                (long long)nbad);
    }
}

/* dsc_k_exp: NULL means the best table; a context uses the one it holds. */
static void test_exp_dispatch(dsc_t *t) {
    enum { N = 301 };
    float x[N], y[N], w[N];
    t_rng rng = {99};
    for (int i = 0; i < N; i++) x[i] = -110.0f + 200.0f * t_rng_uniform(&rng);
    dsc_k_exp(NULL, y, x, N);
    dsc_simd_best()->vexp(w, x, N);
    T_CHECK(t, !memcmp(y, w, sizeof y), "dsc_k_exp(NULL) differs from the best table (%s)",
            dsc_simd_best()->name);
    dsc_kctx *k = NULL;
    if (dsc_kctx_new(1, 0, &k, NULL) != DSC_OK) {
        T_CHECK(t, 0, "dsc_kctx_new failed");
        return;
    }
    for (int v = 0; v < N_TABLES; v++) {
        if (!dsc_simd_supported(tables[v])) continue;
        T_CHECK(t, dsc_kctx_set_simd(k, tables[v]->name) == DSC_OK, "set_simd %s", tables[v]->name);
        dsc_k_exp(k, y, x, N);
        tables[v]->vexp(w, x, N);
        T_CHECK(t, !memcmp(y, w, sizeof y), "dsc_k_exp with a %s context differs from that table",
                tables[v]->name);
    }
    dsc_k_exp(k, y, x, 0); /* n = 0 is a no-op */
    dsc_kctx_free(k);
}

/* Softmax through each table's exp: every row sums to 1 within 1e-6 and
   matches exp(x_i - max) / sum in double (from the same fp32 inputs)
   within 2e-6 relative. Budget for the relative error: x - max rounded to
   fp32 (|x - max| * 2^-24, at most ~11 * 6e-8 = 6.6e-7 for these rows of
   1.5 * N(0,1)), exp (<= 2 ulp = 2.4e-7), the same again through the sum,
   then the fp32 reciprocal and product (1.2e-7): under 2e-6. The sum of
   the outputs only sees the last two roundings (~1.2e-7), so 1e-6 is loose.
   Masked (-inf) entries must come out exactly 0. */
static void test_softmax_exp(dsc_t *t) {
    static const int64_t lens[] = {1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 100, 1000, 4099};
    const int64_t dmax = 4099, nrows = 6;
    float *x = malloc((size_t)(nrows * dmax) * sizeof(float));
    float *y = malloc((size_t)(nrows * dmax) * sizeof(float));
    double *want = malloc((size_t)(nrows * dmax) * sizeof(double));
    dsc_kctx *k = NULL;
    T_CHECK(t, dsc_kctx_new(2, 0, &k, NULL) == DSC_OK, "dsc_kctx_new failed");
    for (size_t li = 0; k && li < sizeof lens / sizeof lens[0]; li++) {
        const int64_t d = lens[li];
        t_rng rng = {1000 + (uint64_t)d};
        for (int64_t r = 0; r < nrows; r++) {
            float *xr = x + r * d;
            for (int64_t i = 0; i < d; i++) xr[i] = 1.5f * t_rng_normal(&rng);
            if (r == 1)
                for (int64_t i = 0; i < d; i++) xr[i] += 500.0f; /* shift: same softmax */
            if (r == 2)
                for (int64_t i = d / 2 + 1; i < d; i++) xr[i] = -INFINITY; /* causal mask */
            if (r == 3)
                for (int64_t i = 0; i < d; i += 3) xr[i] = -INFINITY; /* (first one too) */
            if (r == 3 && d == 1) xr[0] = 0.0f;
        }
        for (int64_t r = 0; r < nrows; r++) {
            const float *xr = x + r * d;
            double mx = -INFINITY, s = 0.0;
            for (int64_t i = 0; i < d; i++) mx = xr[i] > mx ? xr[i] : mx;
            for (int64_t i = 0; i < d; i++) s += exp((double)xr[i] - mx);
            for (int64_t i = 0; i < d; i++) want[r * d + i] = exp((double)xr[i] - mx) / s;
        }
        for (int v = -1; v < N_TABLES; v++) {
            if (v >= 0 && (!dsc_simd_supported(tables[v]) ||
                           dsc_kctx_set_simd(k, tables[v]->name) != DSC_OK))
                continue;
            memcpy(y, x, (size_t)(nrows * d) * sizeof(float));
            dsc_k_softmax(v < 0 ? NULL : k, y, nrows, d);
            for (int64_t r = 0; r < nrows; r++) {
                char what[96];
                snprintf(what, sizeof what, "softmax (%s) d=%lld row %lld",
                         v < 0 ? "NULL ctx" : tables[v]->name, (long long)d, (long long)r);
                t_close_f64(t, what, y + r * d, want + r * d, d, 0.0, 2e-6);
                double s = 0.0;
                for (int64_t i = 0; i < d; i++) s += y[r * d + i];
                T_CHECK(t, fabs(s - 1.0) <= 1e-6, "%s sums to 1 %+.3g (tolerance 1e-6)", what,
                        s - 1.0);
            }
        }
    }
    dsc_kctx_free(k);
    free(x);
    free(y);
    free(want);
}

/* SiLU-gate through each table's exp, in place (out == g, as the MoE
   calls it), over a length that is not a multiple of the 256-float chunk:
   exp (<= 2 ulp), add, divide, two products -> 5 * 2^-23 relative as in
   test_kernels.c; atol for results in the subnormal range (g << 0). */
static void test_silu_exp(dsc_t *t) {
    enum { N = 1337 };
    float g[N], u[N], o[N];
    double want[N];
    t_rng rng = {4242};
    for (int i = 0; i < N; i++) {
        g[i] = t_rng_normal(&rng) * 8.0f;
        u[i] = t_rng_normal(&rng);
    }
    for (int64_t i = 0; i < N_SPECIALS; i++)
        if (isfinite(specials[i])) g[3 * i + 1] = specials[i];
    for (int i = 0; i < N; i++) want[i] = (double)g[i] / (1.0 + exp(-(double)g[i])) * u[i];
    dsc_kctx *k = NULL;
    if (dsc_kctx_new(1, 0, &k, NULL) != DSC_OK) {
        T_CHECK(t, 0, "dsc_kctx_new failed");
        return;
    }
    for (int v = 0; v < N_TABLES; v++) {
        if (!dsc_simd_supported(tables[v]) || dsc_kctx_set_simd(k, tables[v]->name) != DSC_OK)
            continue;
        memcpy(o, g, sizeof o);
        dsc_k_silu_mul(k, o, o, u, N);
        char what[64];
        snprintf(what, sizeof what, "silu_mul (%s, in place)", tables[v]->name);
        t_close_f64(t, what, o, want, N, 1e-40, 5 * 0x1p-23);
    }
    dsc_kctx_free(k);
}

const dsc_test_case dsc_tests_kernels_exp[] = {
    {"exp_sweep", test_exp_sweep},
    {"exp_special", test_exp_special},
    {"exp_tails_alias", test_exp_tails},
    {"exp_dispatch", test_exp_dispatch},
    {"softmax_exp", test_softmax_exp},
    {"silu_exp", test_silu_exp},
    {NULL, NULL},
};
