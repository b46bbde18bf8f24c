/*
 * test_kernels.c - the kernel suite: conversions against closed forms
 * computed here (independently of src/kernels/ref), the references against
 * closed forms where one exists, and every fast kernel (each SIMD variant
 * this CPU runs, 1 and 2 threads) against the references.
 *
 * Tolerances: conversions and dequantization are exact (compared bit for
 * bit). Dot-product kernels use the classical bound for fp32 summation in
 * any order, |err| <= n * u * sum|x_i * w_i| (u = 2^-24), with n counted
 * generously; see matmul_bound(). Each elementwise tolerance says why next to
 * the comparison.
 */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "kernels/cpu/kcpu.h"
#include "kernels/kernels.h"
#include "test.h"

static const double U32 = 0x1p-24; /* unit roundoff of fp32 */

static const char *const k_variants[] = {"scalar", "avx2", "avx512"};
#define N_VARIANTS 3

static uint32_t bits32(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float from_bits32(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* ================= closed forms, written from the format definitions ================= */

static double e4m3_closed(int b) {
    int e = (b >> 3) & 15, m = b & 7;
    if (e == 15 && m == 7) return NAN;
    double v = e == 0 ? (m / 8.0) * ldexp(1.0, -6) : (1.0 + m / 8.0) * ldexp(1.0, e - 7);
    return (b & 0x80) ? -v : v;
}

static double bf16_closed(int h) {
    int e = (h >> 7) & 0xff, m = h & 0x7f;
    double v = e == 255 ? (m ? NAN : INFINITY) : e == 0 ? ldexp(m, -133) : ldexp(128 + m, e - 134);
    return (h & 0x8000) ? -v : v;
}

static double f16_closed(int h) {
    int e = (h >> 10) & 31, m = h & 1023;
    double v = e == 31 ? (m ? NAN : INFINITY) : e == 0 ? ldexp(m, -24) : ldexp(1024 + m, e - 25);
    return (h & 0x8000) ? -v : v;
}

/* got (a float) equals want exactly, zero signs included; NaN matches NaN. */
static int same_value(float got, double want) {
    if (isnan(want)) return isnan(got);
    return (double)got == want && !signbit(got) == !signbit(want);
}

/* ================= conversions ================= */

static void test_e4m3_all_codes(dsc_t *t) {
    for (int b = 0; b < 256; b++) {
        double want = e4m3_closed(b);
        float got = dsc_e4m3_to_f32((uint8_t)b);
        T_CHECK(t, same_value(got, want), "e4m3 0x%02x: got %a want %a", b, (double)got, want);
        /* every finite code round-trips; both NaN codes come back as 0x7f */
        uint8_t back = dsc_f32_to_e4m3(got);
        int expect = isnan(want) ? 0x7f : b;
        T_CHECK(t, back == expect, "e4m3 0x%02x round trip gave 0x%02x", b, back);
    }
    T_CHECK(t, dsc_e4m3_to_f32(0x7e) == 448.0f, "max finite");
    T_CHECK(t, dsc_e4m3_to_f32(0x01) == 0x1p-9f, "min subnormal");
    T_CHECK(t, dsc_e4m3_to_f32(0x08) == 0x1p-6f, "min normal");
}

/* Nearest e4m3 code to v by exhaustive search (ties to the even code),
   saturating: the definition f32 -> e4m3 must meet. */
static int e4m3_nearest(double v) {
    if (isnan(v)) return 0x7f;
    int sign = signbit(v) ? 0x80 : 0;
    double a = fabs(v);
    if (a >= 448.0) return sign | 0x7e;
    int best = 0;
    for (int c = 1; c <= 0x7e; c++) {
        double dc = fabs(e4m3_closed(c) - a), db = fabs(e4m3_closed(best) - a);
        if (dc < db || (dc == db && (c & 1) == 0)) best = c;
    }
    return sign | best;
}

static void test_e4m3_rounding(dsc_t *t) {
    /* midpoints between neighbouring codes go to the even code; one float
       step either side goes to the nearer code */
    for (int c = 0; c < 0x7e; c++) {
        for (int s = 0; s < 2; s++) {
            int sg = s ? 0x80 : 0;
            float mid = (float)((e4m3_closed(c) + e4m3_closed(c + 1)) / 2.0);
            if (s) mid = -mid;
            int even = (c & 1) ? c + 1 : c;
            T_CHECK(t, dsc_f32_to_e4m3(mid) == (sg | even), "tie between 0x%02x and 0x%02x", c, c + 1);
            float up = nextafterf(mid, s ? -INFINITY : INFINITY), dn = nextafterf(mid, 0.0f);
            T_CHECK(t, dsc_f32_to_e4m3(up) == (sg | (c + 1)), "above tie 0x%02x", c);
            T_CHECK(t, dsc_f32_to_e4m3(dn) == (sg | c), "below tie 0x%02x", c);
        }
    }
    /* saturation (no inf in e4m3fn) and specials */
    const float sat[] = {448.0f, 449.0f, 464.0f, 479.0f, 480.0f, 1e6f, FLT_MAX, INFINITY};
    for (size_t i = 0; i < sizeof sat / sizeof sat[0]; i++) {
        T_CHECK(t, dsc_f32_to_e4m3(sat[i]) == 0x7e, "saturate %g", (double)sat[i]);
        T_CHECK(t, dsc_f32_to_e4m3(-sat[i]) == 0xfe, "saturate %g", -(double)sat[i]);
    }
    T_CHECK(t, dsc_f32_to_e4m3(NAN) == 0x7f, "NaN");
    T_CHECK(t, dsc_f32_to_e4m3(-0.0f) == 0x80, "-0");
    T_CHECK(t, dsc_f32_to_e4m3(0x1p-10f) == 0x00, "half the smallest subnormal ties to 0");
    T_CHECK(t, dsc_f32_to_e4m3(1e-30f) == 0x00 && dsc_f32_to_e4m3(-1e-30f) == 0x80, "underflow");
    /* random values against the exhaustive search, over the whole range */
    t_rng rng = {12345};
    for (int i = 0; i < 20000; i++) {
        float v = (t_rng_uniform(&rng) * 2.0f - 1.0f) * ldexpf(1.0f, (int)(t_rng_u64(&rng) % 22) - 12);
        int want = e4m3_nearest(v);
        uint8_t got = dsc_f32_to_e4m3(v);
        if (got != want) {
            T_CHECK(t, 0, "f32 %a -> e4m3 0x%02x, nearest is 0x%02x", (double)v, got, want);
            break;
        }
    }
}

static void test_bf16_all_codes(dsc_t *t) {
    int bad = 0;
    for (int h = 0; h < 65536 && bad < 5; h++) {
        double want = bf16_closed(h);
        float got = dsc_bf16_to_f32((uint16_t)h);
        if (!same_value(got, want)) {
            T_CHECK(t, 0, "bf16 0x%04x: got %a want %a", h, (double)got, want);
            bad++;
        }
        uint16_t back = dsc_f32_to_bf16(got);
        if (isnan(want)) {
            /* NaN stays NaN (never becomes inf), sign kept */
            if (!isnan(dsc_bf16_to_f32(back)) || (back & 0x8000) != (h & 0x8000)) {
                T_CHECK(t, 0, "bf16 NaN 0x%04x came back as 0x%04x", h, back);
                bad++;
            }
        } else if (back != h) {
            T_CHECK(t, 0, "bf16 0x%04x round trip gave 0x%04x", h, back);
            bad++;
        }
    }
    /* a NaN whose payload is only in the dropped half must stay NaN */
    T_CHECK(t, isnan(dsc_bf16_to_f32(dsc_f32_to_bf16(from_bits32(0x7f800001u)))), "low-payload NaN");
    T_CHECK(t, isnan(dsc_bf16_to_f32(dsc_f32_to_bf16(from_bits32(0xff800001u)))), "low-payload -NaN");
}

/* Value of a 16-bit code for the tie tests, with the code after the largest
   finite one (inf) read as the next power of two, which is where IEEE
   rounding puts the overflow threshold. */
static double code_value(double (*closed)(int), int c, double next_pow2) {
    double v = closed(c);
    return isinf(v) ? next_pow2 : v;
}

static void test_bf16_rounding(dsc_t *t) {
    int bad = 0;
    for (int c = 0; c < 0x7f80 && bad < 5; c++) {
        float mid = (float)((code_value(bf16_closed, c, 0x1p128) +
                             code_value(bf16_closed, c + 1, 0x1p128)) / 2.0);
        int even = (c & 1) ? c + 1 : c;
        float up = nextafterf(mid, INFINITY), dn = nextafterf(mid, 0.0f);
        if (dsc_f32_to_bf16(mid) != even || dsc_f32_to_bf16(up) != c + 1 ||
            dsc_f32_to_bf16(dn) != c || dsc_f32_to_bf16(-mid) != (0x8000 | even)) {
            T_CHECK(t, 0, "bf16 rounding around the tie after 0x%04x", c);
            bad++;
        }
    }
    /* the tie above max finite rounds to even = inf */
    T_CHECK(t, dsc_f32_to_bf16(FLT_MAX) == 0x7f80, "FLT_MAX -> inf");
    T_CHECK(t, dsc_f32_to_bf16(INFINITY) == 0x7f80 && dsc_f32_to_bf16(-INFINITY) == 0xff80, "inf");
    T_CHECK(t, dsc_f32_to_bf16(-0.0f) == 0x8000, "-0");
}

static void test_f16_all_codes(dsc_t *t) {
    int bad = 0;
    for (int h = 0; h < 65536 && bad < 5; h++) {
        double want = f16_closed(h);
        float got = dsc_f16_to_f32((uint16_t)h);
        if (!same_value(got, want)) {
            T_CHECK(t, 0, "f16 0x%04x: got %a want %a", h, (double)got, want);
            bad++;
        }
        uint16_t back = dsc_f32_to_f16(got);
        if (isnan(want) ? !isnan(dsc_f16_to_f32(back)) || (back & 0x8000) != (h & 0x8000)
                        : back != h) {
            T_CHECK(t, 0, "f16 0x%04x round trip gave 0x%04x", h, back);
            bad++;
        }
    }
}

static void test_f16_rounding(dsc_t *t) {
    int bad = 0;
    for (int c = 0; c < 0x7c00 && bad < 5; c++) {
        float mid = (float)((code_value(f16_closed, c, 65536.0) +
                             code_value(f16_closed, c + 1, 65536.0)) / 2.0);
        int even = (c & 1) ? c + 1 : c;
        float up = nextafterf(mid, INFINITY), dn = nextafterf(mid, 0.0f);
        if (dsc_f32_to_f16(mid) != even || dsc_f32_to_f16(up) != c + 1 ||
            dsc_f32_to_f16(dn) != c || dsc_f32_to_f16(-mid) != (0x8000 | even)) {
            T_CHECK(t, 0, "f16 rounding around the tie after 0x%04x", c);
            bad++;
        }
    }
    T_CHECK(t, dsc_f32_to_f16(65504.0f) == 0x7bff, "max finite");
    T_CHECK(t, dsc_f32_to_f16(65520.0f) == 0x7c00, "65520 ties to inf");
    T_CHECK(t, dsc_f32_to_f16(1e9f) == 0x7c00 && dsc_f32_to_f16(-INFINITY) == 0xfc00, "overflow");
    T_CHECK(t, dsc_f32_to_f16(0x1p-25f) == 0x0000, "half the smallest subnormal ties to 0");
    T_CHECK(t, dsc_f32_to_f16(0x1.8p-24f) == 0x0002, "1.5 subnormal units tie to 2");
    T_CHECK(t, dsc_f32_to_f16(1e-30f) == 0 && dsc_f32_to_f16(-1e-30f) == 0x8000, "underflow");
    T_CHECK(t, isnan(dsc_f16_to_f32(dsc_f32_to_f16(NAN))), "NaN");
}

/* ================= weight matrices ================= */

/* A test weight matrix and the memory behind it. */
typedef struct {
    dsc_wmat w;
    void *data;
    float *scale;
} test_w;

/* Random weights ~N(0,1) in dtype dt. FP8 codes are uniform over the
   finite codes (all magnitudes, subnormals included) times per-block scales
   in [2^-7, 2^-6), so values stay O(1). nan_every > 0 puts an FP8 NaN code
   at every nan_every-th element. */
static void tw_make(test_w *tw, dsc_dtype dt, int64_t rows, int64_t cols, uint64_t seed,
                    int nan_every) {
    t_rng rng = {seed};
    size_t n = (size_t)rows * (size_t)cols;
    memset(tw, 0, sizeof *tw);
    tw->w.dtype = dt;
    tw->w.rows = rows;
    tw->w.cols = cols;
    tw->data = malloc(n * dsc_dtype_size(dt) + 1);
    for (size_t i = 0; i < n; i++) {
        float v = t_rng_normal(&rng);
        switch (dt) {
        case DSC_F32: ((float *)tw->data)[i] = v; break;
        case DSC_BF16: ((uint16_t *)tw->data)[i] = dsc_f32_to_bf16(v); break;
        case DSC_F16: ((uint16_t *)tw->data)[i] = dsc_f32_to_f16(v); break;
        case DSC_F8_E4M3: {
            uint8_t b = (uint8_t)(t_rng_u64(&rng) & 0xff);
            if ((b & 0x7f) == 0x7f) b ^= 0x01;
            if (nan_every > 0 && i % (size_t)nan_every == 0) b = 0x7f;
            ((uint8_t *)tw->data)[i] = b;
            break;
        }
        }
    }
    if (dt == DSC_F8_E4M3) {
        int64_t sr = (rows + 127) / 128, sc = (cols + 127) / 128;
        tw->scale = malloc((size_t)(sr * sc) * sizeof(float));
        for (int64_t i = 0; i < sr * sc; i++) tw->scale[i] = (1.0f + t_rng_uniform(&rng)) * 0x1p-7f;
        tw->w.scale = tw->scale;
        tw->w.scale_cols = sc;
    }
    tw->w.data = tw->data;
}

static void tw_free(test_w *tw) {
    free(tw->data);
    free(tw->scale);
}

/* W[r][c] from the closed forms of this file, rounded once to fp32. */
static double closed_weight(const test_w *tw, int64_t r, int64_t c) {
    size_t i = (size_t)r * (size_t)tw->w.cols + (size_t)c;
    switch (tw->w.dtype) {
    case DSC_F32: return ((const float *)tw->data)[i];
    case DSC_BF16: return bf16_closed(((const uint16_t *)tw->data)[i]);
    case DSC_F16: return f16_closed(((const uint16_t *)tw->data)[i]);
    case DSC_F8_E4M3:
        /* e4m3 has 4 significant bits, the scale 24: the double product is
           exact and its rounding to float is the one fp32 multiply */
        return (float)(e4m3_closed(((const uint8_t *)tw->data)[i]) *
                       (double)tw->scale[(r / 128) * tw->w.scale_cols + c / 128]);
    }
    return NAN;
}

static void test_wmat_row(dsc_t *t) {
    const dsc_dtype dts[] = {DSC_F32, DSC_BF16, DSC_F16, DSC_F8_E4M3};
    const int64_t rows = 200, cols = 300; /* neither a multiple of 128: ragged blocks */
    float *row = malloc((size_t)cols * sizeof(float));
    for (int d = 0; d < 4; d++) {
        test_w tw;
        tw_make(&tw, dts[d], rows, cols, 100 + (uint64_t)d, dts[d] == DSC_F8_E4M3 ? 97 : 0);
        int bad = 0;
        for (int64_t r = 0; r < rows && !bad; r++) {
            dsc_wmat_row(&tw.w, r, 0, cols, row);
            for (int64_t c = 0; c < cols && !bad; c++) {
                double want = closed_weight(&tw, r, c);
                if (!same_value(row[c], want)) {
                    T_CHECK(t, 0, "%s W[%lld][%lld] = %a, want %a", dsc_dtype_name(dts[d]),
                            (long long)r, (long long)c, (double)row[c], want);
                    bad = 1;
                }
            }
        }
        /* a window that starts inside one scale block and ends in the next */
        dsc_wmat_row(&tw.w, 150, 100, 150, row);
        for (int64_t c = 0; c < 150; c++)
            if (!same_value(row[c], closed_weight(&tw, 150, 100 + c))) {
                T_CHECK(t, 0, "%s window at column %lld", dsc_dtype_name(dts[d]), (long long)(100 + c));
                break;
            }
        tw_free(&tw);
    }
    free(row);
}

/* Each SIMD table's panel packing holds exactly dsc_wmat_row's values
   (the GEMM path depends on it), NaN codes included, in the packed layout
   [16-row group][col][16] with rows past the panel zeroed. */
static void test_simd_pack(dsc_t *t) {
    const dsc_simd_ops *ops[] = {&dsc_simd_scalar, &dsc_simd_avx2, &dsc_simd_avx512};
    const dsc_dtype dts[] = {DSC_F32, DSC_BF16, DSC_F16, DSC_F8_E4M3};
    const int64_t rows = 260, cols = 301;
    /* panel starts at a row that is not a multiple of 16 or 128 and ends
       inside a 16-row group, crossing both FP8 row-block edges */
    const int64_t r0 = 3, nr = 253, groups = (nr + 15) / 16;
    float *got = malloc((size_t)(groups * 16 * cols) * sizeof(float));
    float *want = malloc((size_t)cols * sizeof(float));
    for (int d = 0; d < 4; d++) {
        test_w tw;
        tw_make(&tw, dts[d], rows, cols, 200 + (uint64_t)d, dts[d] == DSC_F8_E4M3 ? 53 : 0);
        for (int v = 0; v < N_VARIANTS; v++) {
            if (!dsc_simd_supported(ops[v])) continue;
            for (int64_t i = 0; i < groups * 16 * cols; i++) got[i] = NAN;
            ops[v]->pack_panel(&tw.w, r0, nr, got);
            int bad = 0;
            for (int64_t j = 0; j < groups * 16 && !bad; j++) {
                if (j < nr) dsc_wmat_row(&tw.w, r0 + j, 0, cols, want);
                for (int64_t c = 0; c < cols; c++) {
                    float g = got[(size_t)(j / 16) * (size_t)cols * 16 + (size_t)c * 16 + (size_t)(j % 16)];
                    float e = j < nr ? want[c] : 0.0f;
                    if (!(isnan(g) && isnan(e)) && bits32(g) != bits32(e)) {
                        T_CHECK(t, 0, "%s %s packed row %lld col %lld: %a vs %a", ops[v]->name,
                                dsc_dtype_name(dts[d]), (long long)(r0 + j), (long long)c, (double)g,
                                (double)e);
                        bad = 1;
                        break;
                    }
                }
            }
        }
        tw_free(&tw);
    }
    free(got);
    free(want);
}

/* ================= matmul ================= */

/* Bound for an fp32 dot product of n terms summed in any order (blocked,
   FMA, BLAS, ...): |err| <= n*u * sum|x_i w_i|. We count n generously as
   cols + cols/128 + 10: one rounding per term, one per FP8 block scale and
   block sum, a few for the final reduction, and the reference's own final
   rounding to fp32. A real bug (a missed, doubled or misplaced term) is off
   by ~|x_i w_i|, about sum/n, far above this for n <= 400. */
static int check_matmul(dsc_t *t, const char *what, const float *got, const float *want,
                        const double *absdot, int64_t n, int64_t cols) {
    const double kfac = (double)(cols + cols / 128 + 10) * U32;
    for (int64_t i = 0; i < n; i++) {
        double tol = kfac * absdot[i] + 1e-30;
        if (!(fabs((double)got[i] - (double)want[i]) <= tol)) {
            T_CHECK(t, 0, "%s: y[%lld] = %.9g, ref %.9g, |d| %.3g > tol %.3g", what, (long long)i,
                    (double)got[i], (double)want[i], fabs((double)got[i] - (double)want[i]), tol);
            return 0;
        }
    }
    return 1;
}

/* sum_c |x[i][c] * W[r][c]| for the bound above */
static void abs_dots(const float *x, const test_w *tw, int64_t m, double *out) {
    const int64_t rows = tw->w.rows, cols = tw->w.cols;
    float *wr = malloc((size_t)cols * sizeof(float));
    for (int64_t r = 0; r < rows; r++) {
        dsc_wmat_row(&tw->w, r, 0, cols, wr);
        for (int64_t i = 0; i < m; i++) {
            double s = 0.0;
            for (int64_t c = 0; c < cols; c++) s += fabs((double)x[i * cols + c] * (double)wr[c]);
            out[i * rows + r] = s;
        }
    }
    free(wr);
}

static void test_matmul(dsc_t *t) {
    const dsc_dtype dts[] = {DSC_F32, DSC_BF16, DSC_F16, DSC_F8_E4M3};
    const int64_t shapes[][2] = {{1, 1}, {7, 13}, {33, 129}, {130, 257}, {300, 400}, {17, 128}};
    const int64_t ms[] = {1, 2, 3, 5, 16, 21, 64, 130};
    dsc_kctx *k1 = NULL, *k2 = NULL;
    T_CHECK(t, dsc_kctx_new(1, 400, &k1, NULL) == DSC_OK, "kctx 1 thread");
    T_CHECK(t, dsc_kctx_new(2, 400, &k2, NULL) == DSC_OK, "kctx 2 threads");
    if (!k1 || !k2) goto out;
    dsc_kctx *ks[2] = {k1, k2};
    float *x = malloc(130 * 400 * sizeof(float));
    float *y = malloc(130 * 300 * sizeof(float));
    float *yref = malloc(130 * 300 * sizeof(float));
    double *absdot = malloc(130 * 300 * sizeof(double));
    t_rng rng = {777};
    for (int i = 0; i < 130 * 400; i++) x[i] = t_rng_normal(&rng);
    for (int d = 0; d < 4; d++) {
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            const int64_t rows = shapes[s][0], cols = shapes[s][1];
            test_w tw;
            tw_make(&tw, dts[d], rows, cols, 1000 + 10 * (uint64_t)d + s, 0);
            for (size_t mi = 0; mi < sizeof ms / sizeof ms[0]; mi++) {
                const int64_t m = ms[mi];
                /* the biggest m only on the biggest shape, to keep the
                   reference's cost down */
                if (m > 5 && rows * cols < 30000) continue;
                dsc_ref_matmul(yref, x, &tw.w, m);
                abs_dots(x, &tw, m, absdot);
                for (int v = 0; v < N_VARIANTS; v++) {
                    for (int th = 0; th < 2; th++) {
                        if (dsc_kctx_set_simd(ks[th], k_variants[v]) != DSC_OK) continue;
                        for (int64_t i = 0; i < m * rows; i++) y[i] = NAN;
                        dsc_k_matmul(ks[th], y, x, &tw.w, m);
                        char what[128];
                        snprintf(what, sizeof what, "%s %lldx%lld m=%lld %s %d thr",
                                 dsc_dtype_name(dts[d]), (long long)rows, (long long)cols,
                                 (long long)m, k_variants[v], th + 1);
                        check_matmul(t, what, y, yref, absdot, m * rows, cols);
                    }
                }
            }
            tw_free(&tw);
        }
    }
    /* a weight wider than the context's scratch still gets a right answer
       (matvec path for every m, in groups of 4 rows of x) */
    dsc_kctx *ksmall = NULL;
    T_CHECK(t, dsc_kctx_new(2, 64, &ksmall, NULL) == DSC_OK, "small kctx");
    if (ksmall) {
        test_w tw;
        tw_make(&tw, DSC_BF16, 300, 400, 4242, 0);
        dsc_ref_matmul(yref, x, &tw.w, 7);
        abs_dots(x, &tw, 7, absdot);
        dsc_k_matmul(ksmall, y, x, &tw.w, 7);
        check_matmul(t, "BF16 300x400 m=7 beyond max_cols", y, yref, absdot, 7 * 300, 400);
        tw_free(&tw);
        dsc_kctx_free(ksmall);
    }
    free(x);
    free(y);
    free(yref);
    free(absdot);
out:
    dsc_kctx_free(k1);
    dsc_kctx_free(k2);
}

/* A NaN weight poisons exactly the outputs of its row, on every path. */
static void test_matmul_nan_weight(dsc_t *t) {
    dsc_kctx *k = NULL;
    T_CHECK(t, dsc_kctx_new(2, 256, &k, NULL) == DSC_OK, "kctx");
    if (!k) return;
    test_w tw;
    tw_make(&tw, DSC_F8_E4M3, 40, 200, 31, 0);
    ((uint8_t *)tw.data)[5 * 200 + 150] = 0xff; /* row 5 */
    float x[17 * 200], y[17 * 40];
    for (int i = 0; i < 17 * 200; i++) x[i] = 1.0f;
    for (int v = 0; v < N_VARIANTS; v++) {
        if (dsc_kctx_set_simd(k, k_variants[v]) != DSC_OK) continue;
        for (int m = 1; m <= 17; m += 16) { /* the matvec and the packed-GEMM path */
            dsc_k_matmul(k, y, x, &tw.w, m);
            for (int i = 0; i < m; i++)
                for (int r = 0; r < 40; r++)
                    T_CHECK(t, (r == 5) == !!isnan(y[i * 40 + r]), "%s m=%d y[%d][%d] = %g",
                            k_variants[v], m, i, r, (double)y[i * 40 + r]);
        }
    }
    tw_free(&tw);
    dsc_kctx_free(k);
}

static void test_kctx(dsc_t *t) {
    dsc_kctx *k = NULL;
    dsc_err err = {0};
    T_CHECK(t, dsc_kctx_new(0, 1000, &k, &err) == DSC_OK, "default threads: %s", err.msg);
    if (!k) return;
    T_CHECK(t, dsc_kctx_threads(k) >= 1, "threads");
    T_CHECK(t, dsc_kctx_bytes(k) >= (int64_t)(128 * 1000 * sizeof(float)), "bytes %lld",
            (long long)dsc_kctx_bytes(k));
    T_CHECK(t, strcmp(dsc_kctx_simd_name(k), dsc_kernels_simd_name()) == 0, "picks the best");
    T_CHECK(t, dsc_kctx_set_simd(k, "neon") == DSC_ERR_ARG, "unknown variant");
    T_CHECK(t, dsc_kctx_set_simd(k, "scalar") == DSC_OK, "scalar always runs");
    T_CHECK(t, strcmp(dsc_kctx_simd_name(k), "scalar") == 0, "forced");
    const char *blas = dsc_kernels_blas_name();
    T_CHECK(t, !strcmp(blas, "openblas") || !strcmp(blas, "builtin"), "blas name %s", blas);
    printf("     simd %s, gemm %s\n", dsc_kernels_simd_name(), blas);
    dsc_kctx_free(k);
    dsc_kctx *bad = (dsc_kctx *)1;
    T_CHECK(t, dsc_kctx_new(1, -1, &bad, NULL) == DSC_ERR_ARG && bad == NULL, "negative max_cols");
    dsc_kctx_free(NULL);
}

/* ================= sgemm ================= */

static void test_sgemm(dsc_t *t) {
    /* m, n, k; lda/ldc get padding so strides differ from widths, and ldb
       with and without it (nt with ldb == k and m <= 8 is the matvec path
       of decode's attention: {8, 150, 80} is a verify pass's scores) */
    const int64_t shapes[][3] = {{1, 1, 1}, {5, 7, 3}, {37, 53, 300}, {130, 67, 257},
                                 {64, 200, 128}, {3, 2, 0}, {8, 150, 80}, {2, 32, 64}};
    const int pad = 5;
    dsc_kctx *ks[2] = {NULL, NULL};
    T_CHECK(t, dsc_kctx_new(1, 0, &ks[0], NULL) == DSC_OK && dsc_kctx_new(2, 0, &ks[1], NULL) == DSC_OK,
            "kctx");
    if (!ks[0] || !ks[1]) goto out;
#ifdef _OPENMP
    /* the OpenBLAS path lowers the OpenMP thread count of its own parallel
       region's tasks only; the caller's must not change */
    const int omp_before = omp_get_max_threads();
#endif
    t_rng rng = {99};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int64_t m = shapes[s][0], n = shapes[s][1], kk = shapes[s][2];
        for (int form = 0; form < 4; form++) {
            /* nt: B is n x k; nn: B is k x n; forms 2, 3: B unpadded */
            const int nn = form & 1, pad_b = form < 2 ? pad : 0;
            const int64_t lda = kk + pad, ldb = (nn ? n : kk) + pad_b, ldc = n + pad;
            const int64_t brows = nn ? kk : n;
            float *a = malloc((size_t)(m * lda + 1) * sizeof(float));
            float *b = malloc((size_t)(brows * ldb + 1) * sizeof(float));
            float *c0 = malloc((size_t)(m * ldc) * sizeof(float));
            float *c = malloc((size_t)(m * ldc) * sizeof(float));
            float *cref = malloc((size_t)(m * ldc) * sizeof(float));
            double *bound = malloc((size_t)(m * n) * sizeof(double));
            for (int64_t i = 0; i < m * lda; i++) a[i] = t_rng_normal(&rng);
            for (int64_t i = 0; i < brows * ldb; i++) b[i] = t_rng_normal(&rng);
            for (int64_t i = 0; i < m * ldc; i++) c0[i] = t_rng_normal(&rng);
            for (int64_t i = 0; i < m; i++)
                for (int64_t j = 0; j < n; j++) {
                    double sum = 0.0;
                    for (int64_t p = 0; p < kk; p++)
                        sum += fabs((double)a[i * lda + p] * (nn ? b[p * ldb + j] : b[j * ldb + p]));
                    bound[i * n + j] = sum;
                }
            for (int acc = 0; acc < 2; acc++) {
                memcpy(cref, c0, (size_t)(m * ldc) * sizeof(float));
                (nn ? dsc_ref_sgemm_nn : dsc_ref_sgemm_nt)(m, n, kk, a, lda, b, ldb, cref, ldc, acc);
                for (int v = 0; v < N_VARIANTS; v++) {
                    for (int th = 0; th < 2; th++) {
                        if (dsc_kctx_set_simd(ks[th], k_variants[v]) != DSC_OK) continue;
                        memcpy(c, c0, (size_t)(m * ldc) * sizeof(float));
                        (nn ? dsc_k_sgemm_nn : dsc_k_sgemm_nt)(ks[th], m, n, kk, a, lda, b, ldb, c,
                                                               ldc, acc);
                        int bad = 0;
                        for (int64_t i = 0; i < m && !bad; i++) {
                            for (int64_t j = 0; j < ldc && !bad; j++) {
                                float g = c[i * ldc + j], w = cref[i * ldc + j];
                                /* the padding columns must be untouched */
                                double tol = j >= n ? 0.0
                                                    : (double)(kk + 4) * U32 *
                                                          (bound[i * n + j] + (acc ? fabs(c0[i * ldc + j]) : 0.0));
                                if (!(fabs((double)g - (double)w) <= tol)) {
                                    T_CHECK(t, 0,
                                            "sgemm_%s %lldx%lldx%lld acc=%d %s %d thr: C[%lld][%lld] "
                                            "= %.9g ref %.9g tol %.3g",
                                            nn ? "nn" : "nt", (long long)m, (long long)n,
                                            (long long)kk, acc, k_variants[v], th + 1, (long long)i,
                                            (long long)j, (double)g, (double)w, tol);
                                    bad = 1;
                                }
                            }
                        }
                    }
                }
            }
            free(a);
            free(b);
            free(c0);
            free(c);
            free(cref);
            free(bound);
        }
    }
#ifdef _OPENMP
    T_CHECK(t, omp_get_max_threads() == omp_before, "caller's omp_get_max_threads changed: %d -> %d",
            omp_before, omp_get_max_threads());
#endif
out:
    dsc_kctx_free(ks[0]);
    dsc_kctx_free(ks[1]);
}

/* ================= row-wise ops ================= */

static void test_rmsnorm(dsc_t *t) {
    const int64_t dims[] = {1, 7, 64, 1000, 7168};
    const int64_t n = 3;
    const float eps = 1e-6f;
    dsc_kctx *k = NULL;
    T_CHECK(t, dsc_kctx_new(2, 0, &k, NULL) == DSC_OK, "kctx");
    if (!k) return;
    t_rng rng = {5};
    for (size_t di = 0; di < sizeof dims / sizeof dims[0]; di++) {
        const int64_t d = dims[di];
        for (int bf = 0; bf < 2; bf++) {
            float *x = malloc((size_t)(n * d) * sizeof(float));
            float *y = malloc((size_t)(n * d) * sizeof(float));
            float *wf = malloc((size_t)d * sizeof(float));
            uint16_t *wb = malloc((size_t)d * sizeof(uint16_t));
            double *want = malloc((size_t)(n * d) * sizeof(double));
            for (int64_t i = 0; i < n * d; i++) x[i] = t_rng_normal(&rng) * (i < d ? 1e-3f : 30.0f);
            for (int64_t i = 0; i < d; i++) {
                wb[i] = dsc_f32_to_bf16(1.0f + 0.5f * t_rng_normal(&rng));
                wf[i] = dsc_bf16_to_f32(wb[i]);
            }
            /* the row layout (1 x d) for BF16, the column layout (d x 1) for
               F32: both must read the same d values */
            dsc_wmat w = {.dtype = bf ? DSC_BF16 : DSC_F32,
                          .rows = bf ? 1 : d,
                          .cols = bf ? d : 1,
                          .data = bf ? (const void *)wb : (const void *)wf};
            for (int64_t r = 0; r < n; r++) {
                double ss = 0.0;
                for (int64_t i = 0; i < d; i++) ss += (double)x[r * d + i] * x[r * d + i];
                double rms = sqrt(ss / (double)d + (double)eps);
                for (int64_t i = 0; i < d; i++) want[r * d + i] = (double)wf[i] * x[r * d + i] / rms;
            }
            /* reference: computed in double, rounded once -> within an fp32
               ulp (2^-23 relative) of the closed form */
            dsc_ref_rmsnorm(y, x, &w, n, d, eps);
            t_close_f64(t, "ref rmsnorm", y, want, n * d, 1e-38, 0x1p-23);
            /* fast, in place (y aliases x): three fp32 roundings (inv, x*inv,
               w*...) plus the double sum's -> 4 ulps */
            dsc_k_rmsnorm(k, x, x, &w, n, d, eps);
            t_close_f64(t, "fast rmsnorm in place", x, want, n * d, 1e-38, 4 * 0x1p-23);
            free(x);
            free(y);
            free(wf);
            free(wb);
            free(want);
        }
    }
    dsc_kctx_free(k);
}

static void test_softmax(dsc_t *t) {
    enum { D = 9, N = 8 };
    const float NI = -INFINITY;
    float rows[N][D] = {
        {0, 1, 2, 3, 4, 5, 6, 7, 8},
        {NI, NI, NI, NI, NI, NI, NI, NI, NI},           /* all -inf: all 0, never NaN */
        {NI, 5, NI, NI, NI, NI, NI, NI, NI},            /* one finite: exactly 1 */
        {1000, 1000, NI, NI, NI, NI, NI, NI, NI},       /* large: no overflow */
        {1e30f, 0, -1e30f, 88, 89, NI, 0, 0, 0},        /* huge spread */
        {-1000, -1001, -1002, -5000, NI, 0, NI, NI, NI},
        {3, 3, 3, 3, 3, 3, 3, 3, 3},                    /* uniform: exactly 1/9 */
        {-100, -90, -80, -70, -60, -50, -40, -30, -20},
    };
    double want[N][D];
    for (int r = 0; r < N; r++) {
        /* closed form, independently: p_i = 1 / sum_j exp(x_j - x_i) */
        for (int i = 0; i < D; i++) {
            if (rows[r][i] == NI) {
                want[r][i] = 0.0;
                continue;
            }
            double s = 0.0;
            for (int j = 0; j < D; j++)
                if (rows[r][j] != NI) s += exp((double)rows[r][j] - (double)rows[r][i]);
            want[r][i] = 1.0 / s;
        }
    }
    float a[N][D], b[N][D];
    memcpy(a, rows, sizeof a);
    memcpy(b, rows, sizeof b);
    dsc_ref_softmax(&a[0][0], N, D);
    dsc_k_softmax(NULL, &b[0][0], N, D);
    /* ref: double arithmetic rounded once -> 1 ulp. fast: expf (<= 1 ulp)
       times a rounded reciprocal -> 4 ulps. atol covers results that
       underflow to subnormals, where relative error is meaningless. */
    t_close_f64(t, "ref softmax", &a[0][0], &want[0][0], N * D, 1e-40, 0x1p-23);
    t_close_f64(t, "fast softmax", &b[0][0], &want[0][0], N * D, 1e-40, 4 * 0x1p-23);
    for (int i = 0; i < D; i++)
        T_CHECK(t, a[1][i] == 0.0f && b[1][i] == 0.0f, "all -inf row must be 0, got %g %g",
                (double)a[1][i], (double)b[1][i]);
    T_CHECK(t, a[2][1] == 1.0f && b[2][1] == 1.0f, "single finite entry gets exactly 1");

    /* many long rows: parallel path, against the reference */
    const int64_t n = 64, d = 3000;
    float *x = malloc((size_t)(n * d) * sizeof(float)), *y = malloc((size_t)(n * d) * sizeof(float));
    t_rng rng = {8};
    for (int64_t i = 0; i < n * d; i++) x[i] = t_rng_normal(&rng) * 10.0f;
    memcpy(y, x, (size_t)(n * d) * sizeof(float));
    float *spread = malloc((size_t)n * sizeof(float));
    for (int64_t r = 0; r < n; r++) {
        float lo = INFINITY, hi = -INFINITY;
        for (int64_t i = 0; i < d; i++) {
            lo = fminf(lo, x[r * d + i]);
            hi = fmaxf(hi, x[r * d + i]);
        }
        spread[r] = hi - lo;
    }
    dsc_ref_softmax(x, n, d);
    dsc_k_softmax(NULL, y, n, d);
    /* the fast kernel rounds x - max to fp32 before expf; exp turns that
       absolute error (|x - max| * u) into a relative one, so each row gets
       (spread + 4) * u relative: the 4 for expf, the reciprocal and the
       products, the spread (~100 here) for the rounded difference */
    for (int64_t r = 0; r < n; r++) {
        char what[64];
        snprintf(what, sizeof what, "fast vs ref softmax row %lld", (long long)r);
        t_close_f32(t, what, y + r * d, x + r * d, d, 1e-40, ((double)spread[r] + 4.0) * U32);
    }
    free(spread);
    free(x);
    free(y);
}

static void test_silu_mul(dsc_t *t) {
    const int64_t n = 300000; /* over the parallel threshold */
    float *g = malloc((size_t)n * sizeof(float)), *u = malloc((size_t)n * sizeof(float));
    float *o1 = malloc((size_t)n * sizeof(float)), *o2 = malloc((size_t)n * sizeof(float));
    double *want = malloc((size_t)n * sizeof(double));
    t_rng rng = {17};
    for (int64_t i = 0; i < n; i++) {
        g[i] = t_rng_normal(&rng) * 8.0f;
        u[i] = t_rng_normal(&rng);
    }
    const float ext[] = {0.0f, -0.0f, 100.0f, -100.0f, 1e4f, -1e4f, 88.8f, -88.8f, 1e-30f};
    for (size_t i = 0; i < sizeof ext / sizeof ext[0]; i++) g[i] = ext[i];
    for (int64_t i = 0; i < n; i++) want[i] = (double)g[i] / (1.0 + exp(-(double)g[i])) * u[i];
    dsc_ref_silu_mul(o1, g, u, n);
    dsc_k_silu_mul(NULL, o2, g, u, n);
    /* ref: double, rounded once -> 1 ulp. fast: expf, add, divide, multiply
       in fp32 -> 5 ulps; atol for results in the subnormal range (g << 0) */
    t_close_f64(t, "ref silu_mul", o1, want, n, 1e-40, 0x1p-23);
    t_close_f64(t, "fast silu_mul", o2, want, n, 1e-40, 5 * 0x1p-23);
    free(g);
    free(u);
    free(o1);
    free(o2);
    free(want);
}

/* ================= top-k ================= */

static int ranks_before(float a, int ia, float b, int ib) {
    if (isnan(a) != isnan(b)) return isnan(b);
    if (!isnan(a) && a != b) return a > b;
    return ia < ib;
}

/* C = A^T B (training weight gradients) against the reference, with and
   without accumulation, 1 and 2 threads; tolerance as for the other GEMMs:
   fp32 sums of k terms in another order, relative to sum |a b|. */
static void test_sgemm_tn(dsc_t *t) {
    t_rng rng = {31};
    const int64_t shapes[][3] = {{1, 1, 1}, {7, 33, 5}, {64, 96, 130}, {131, 17, 64}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        int64_t m = shapes[si][0], n = shapes[si][1], kk = shapes[si][2];
        int64_t lda = m + 3, ldb = n + 1, ldc = n + 2;
        float *a = malloc((size_t)(kk * lda) * sizeof *a), *b = malloc((size_t)(kk * ldb) * sizeof *b);
        float *c = malloc((size_t)(m * ldc) * sizeof *c), *r = malloc((size_t)(m * ldc) * sizeof *r);
        for (int64_t i = 0; i < kk * lda; i++) a[i] = t_rng_normal(&rng);
        for (int64_t i = 0; i < kk * ldb; i++) b[i] = t_rng_normal(&rng);
        for (int th = 1; th <= 2; th++)
            for (int acc = 0; acc < 2; acc++) {
                for (int64_t i = 0; i < m * ldc; i++) c[i] = r[i] = 0.5f;
                dsc_kctx *k = NULL;
                dsc_err e = {0};
                T_CHECK(t, dsc_kctx_new(th, 64, &k, &e) == DSC_OK, "%s", e.msg);
                dsc_k_sgemm_tn(k, m, n, kk, a, lda, b, ldb, c, ldc, acc);
                dsc_ref_sgemm_tn(m, n, kk, a, lda, b, ldb, r, ldc, acc);
                dsc_kctx_free(k);
                char what[64];
                snprintf(what, sizeof what, "tn %lldx%lldx%lld t%d acc%d", (long long)m,
                         (long long)n, (long long)kk, th, acc);
                t_close_f32(t, what, c, r, m * ldc, 1e-5 * sqrt((double)kk) * 4, 1e-5);
            }
        free(a);
        free(b);
        free(c);
        free(r);
    }
}

/* dsc_k_topk_set (quickselect, O(n)) selects exactly the set the O(n*k)
   reference ranks first, ties, NaN and -0 == +0 included, and lists it
   ascending. Half the trials are long rows with a small k, where it first
   bounds the k-th value by bucket maxima: random rows, sorted either way,
   a few ties (1000 levels), scattered NaN and -inf, -0 / +0 at the
   threshold, rows tied at the top (4 levels: the bound is the threshold),
   and rows it must hand to the whole-row path (mostly NaN, mostly -inf,
   tied at the bound with more than k values above it in a few tiles). */
static void test_topk_set(dsc_t *t) {
    t_rng rng = {77};
    enum { N = 20000 };
    static float x[N], scratch[N];
    static int32_t got[N], ref[N];
    static uint8_t in_ref[N];
    for (int trial = 0; trial < 120; trial++) {
        int64_t n, k;
        int shape = trial % 2 ? (trial / 2) % 10 : -1, levels = 1000000;
        if (shape >= 0) {
            n = 4096 + (int64_t)(t_rng_u64(&rng) % (N - 4096));
            k = 1 + (int64_t)(t_rng_u64(&rng) % (uint64_t)(n / 16)); /* tiles of 16, 8, 4 rows */
            levels = shape == 3 ? 1000 : shape == 6 ? 4 : levels;
        } else {
            n = 1 + (int64_t)(t_rng_u64(&rng) % 3000);
            k = 1 + (int64_t)(t_rng_u64(&rng) % (uint64_t)(n + 5)); /* sometimes k > n */
            levels = trial % 3 == 0 ? 4 : levels; /* few distinct values: many ties */
        }
        for (int64_t i = 0; i < n; i++) {
            uint64_t r = t_rng_u64(&rng);
            x[i] = (float)(r % (uint64_t)levels) - levels / 2.0f;
            if (shape < 0 && trial % 5 == 1 && r % 17 == 0) x[i] = NAN;
            if (shape < 0 && trial % 5 == 2 && r % 13 == 0) x[i] = -INFINITY;
            if (shape < 0 && trial % 7 == 3 && r % 3 == 0) x[i] = (r >> 8) & 1 ? -0.0f : 0.0f;
            if (shape == 1) x[i] = (float)i;       /* ascending */
            if (shape == 2) x[i] = (float)(n - i); /* descending */
            if (shape == 4 && r % 1000) x[i] = NAN;
            if (shape == 5 && r % 1000) x[i] = -INFINITY;
            if (shape == 7) /* ~k/2 positive, ~k zeros of either sign, the rest negative */
                x[i] = r % (uint64_t)(2 * n) < (uint64_t)k ? 1.0f + (float)(r % 1000)
                       : r % (uint64_t)(2 * n) < (uint64_t)(3 * k) ? ((r >> 40) & 1 ? -0.0f : 0.0f)
                       : -1.0f - (float)(r % 1000);
            if (shape == 8) /* 2k values above a row of ties, packed in the first tiles */
                x[i] = i < 2 * k ? 1.0f + (float)(r % 1000) : (r >> 40) & 1 ? 0.0f : -1.0f;
            if (shape == 9 && r % 17 == 0) x[i] = NAN;
            if (shape == 9 && r % 13 == 0) x[i] = -INFINITY;
        }
        int64_t m = dsc_k_topk_set(x, n, k, got, scratch);
        int64_t want = k < n ? k : n;
        T_CHECK(t, m == want, "trial %d: %lld selected, want %lld", trial, (long long)m,
                (long long)want);
        dsc_ref_topk(x, n, want, ref);
        memset(in_ref, 0, (size_t)n);
        for (int64_t i = 0; i < want; i++) in_ref[ref[i]] = 1;
        int ok = 1;
        for (int64_t i = 0; i < m && ok; i++) {
            ok = got[i] >= 0 && got[i] < n && in_ref[got[i]] && (i == 0 || got[i] > got[i - 1]);
        }
        T_CHECK(t, ok, "trial %d (n %lld, k %lld): set differs from the reference or is not "
                "ascending", trial, (long long)n, (long long)k);
    }
}

static void test_topk(dsc_t *t) {
    const float NI = -INFINITY;
    {
        /* ties: the lower index first; NaN below everything, -inf included */
        const float x[] = {1, 3, NAN, 3, NI, 2, 3, NAN, NI, 0};
        int32_t idx[10];
        const int32_t all[10] = {1, 3, 6, 5, 0, 9, 4, 8, 2, 7};
        dsc_ref_topk(x, 10, 10, idx); /* k = n */
        for (int i = 0; i < 10; i++) T_CHECK(t, idx[i] == all[i], "k=n: idx[%d] = %d want %d", i, idx[i], all[i]);
        dsc_ref_topk(x, 10, 1, idx);
        T_CHECK(t, idx[0] == 1, "k=1: %d", idx[0]);
        dsc_ref_topk(x, 10, 4, idx);
        for (int i = 0; i < 4; i++) T_CHECK(t, idx[i] == all[i], "k=4: idx[%d] = %d", i, idx[i]);
    }
    {
        const float x[] = {NAN, NAN, NI};
        int32_t idx[3];
        dsc_ref_topk(x, 3, 3, idx);
        T_CHECK(t, idx[0] == 2 && idx[1] == 0 && idx[2] == 1, "NaN below -inf: %d %d %d", idx[0], idx[1], idx[2]);
    }
    /* random with many ties against a brute-force selection */
    t_rng rng = {3};
    float x[256];
    int32_t idx[256];
    for (int trial = 0; trial < 20; trial++) {
        for (int i = 0; i < 256; i++) {
            x[i] = (float)(t_rng_u64(&rng) % 16);
            if (i % 37 == 5) x[i] = NAN;
            if (i % 41 == 7) x[i] = NI;
        }
        int k = 1 + (int)(t_rng_u64(&rng) % 256);
        dsc_ref_topk(x, 256, k, idx);
        char taken[256] = {0};
        for (int j = 0; j < k; j++) {
            int best = -1;
            for (int i = 0; i < 256; i++)
                if (!taken[i] && (best < 0 || ranks_before(x[i], i, x[best], best))) best = i;
            taken[best] = 1;
            if (idx[j] != best) {
                T_CHECK(t, 0, "trial %d k=%d: idx[%d] = %d want %d", trial, k, j, idx[j], best);
                break;
            }
        }
    }
}

/* ================= RoPE ================= */

static dsc_rope_params rope_v3(void) {
    dsc_rope_params p = {.dim = 64, .theta = 10000.0, .yarn = 1, .factor = 40.0, .beta_fast = 32.0,
                         .beta_slow = 1.0, .original_max_pos = 4096, .attention_factor = 1.0};
    return p;
}

static void test_rope_freq(dsc_t *t) {
    double f[32];
    /* plain: theta^(-2i/D), written here as exp(-2i/D * ln theta) */
    dsc_rope_params p = rope_v3();
    p.yarn = 0;
    dsc_rope_inv_freq(&p, f);
    for (int i = 0; i < 32; i++) {
        double base = exp(-2.0 * i / 64.0 * log(10000.0));
        /* pow vs exp/log differ by a few ulps of a double */
        T_CHECK(t, fabs(f[i] - base) <= 1e-14 * base, "plain pair %d: %.17g vs %.17g", i, f[i], base);
    }
    /* V3 YaRN: cd(32) = 10.47 -> low 10, cd(1) = 22.51 -> high 23 */
    const double pi = 3.14159265358979323846;
    double cd_fast = 64.0 * log(4096.0 / (2 * pi * 32.0)) / (2 * log(10000.0));
    double cd_slow = 64.0 * log(4096.0 / (2 * pi * 1.0)) / (2 * log(10000.0));
    T_CHECK(t, floor(cd_fast) == 10.0 && ceil(cd_slow) == 23.0, "correction range %g %g", cd_fast, cd_slow);
    p = rope_v3();
    dsc_rope_inv_freq(&p, f);
    for (int i = 0; i < 32; i++) {
        double base = exp(-2.0 * i / 64.0 * log(10000.0));
        double want;
        if (i <= 10)
            want = base; /* high-frequency pairs keep the original frequency */
        else if (i >= 23)
            want = base / 40.0; /* low-frequency pairs are interpolated fully */
        else {
            double r = (i - 10) / 13.0;
            want = base * (1.0 - r) + base / 40.0 * r;
            T_CHECK(t, f[i] < base && f[i] > base / 40.0, "pair %d blends", i);
        }
        T_CHECK(t, fabs(f[i] - want) <= 1e-14 * want, "yarn pair %d: %.17g vs %.17g", i, f[i], want);
    }
    /* low == high: the ramp gets a 0.001 width. With beta_fast 6.4 and
       beta_slow 6.6 around cd = 16 (beta 6.519), floor(cd_fast) = 16 =
       ceil(cd_slow): pairs 0..16 keep f_i, 17..31 are divided. */
    p = rope_v3();
    p.beta_fast = 6.4;
    p.beta_slow = 6.6;
    double cf = 64.0 * log(4096.0 / (2 * pi * 6.4)) / (2 * log(10000.0));
    double cs = 64.0 * log(4096.0 / (2 * pi * 6.6)) / (2 * log(10000.0));
    T_CHECK(t, floor(cf) == 16.0 && ceil(cs) == 16.0, "low == high setup %g %g", cf, cs);
    dsc_rope_inv_freq(&p, f);
    for (int i = 0; i < 32; i++) {
        double base = exp(-2.0 * i / 64.0 * log(10000.0));
        double want = i <= 16 ? base : base / 40.0;
        T_CHECK(t, fabs(f[i] - want) <= 1e-14 * want, "low==high pair %d: %.17g vs %.17g", i, f[i], want);
    }
    /* tables: cos/sin(p * f'_i) * attention_factor, rounded once to fp32 */
    p = rope_v3();
    p.attention_factor = 0.75;
    const int64_t npos = 70;
    float *ct = malloc(npos * 32 * sizeof(float)), *st = malloc(npos * 32 * sizeof(float));
    dsc_rope_tables(&p, npos, ct, st);
    dsc_rope_inv_freq(&p, f);
    double *wc = malloc(npos * 32 * sizeof(double)), *ws = malloc(npos * 32 * sizeof(double));
    for (int64_t pos = 0; pos < npos; pos++)
        for (int i = 0; i < 32; i++) {
            wc[pos * 32 + i] = 0.75 * cos((double)pos * f[i]);
            ws[pos * 32 + i] = 0.75 * sin((double)pos * f[i]);
        }
    /* one fp32 rounding of a value <= 0.75 in magnitude: 2^-25 absolute */
    t_close_f64(t, "rope cos table", ct, wc, npos * 32, 0x1p-25, 0);
    t_close_f64(t, "rope sin table", st, ws, npos * 32, 0x1p-25, 0);
    free(ct);
    free(st);
    free(wc);
    free(ws);
}

static void test_rope_rotate(dsc_t *t) {
    enum { D = 64, H = 32 };
    dsc_rope_params p = rope_v3();
    const int64_t pos = 1234;
    float *ct = malloc((size_t)(pos + 1) * H * sizeof(float));
    float *st = malloc((size_t)(pos + 1) * H * sizeof(float));
    dsc_rope_tables(&p, pos + 1, ct, st);
    const float *c = ct + pos * H, *s = st + pos * H;
    /* unit vectors: the first member of pair i goes to (cos, sin) */
    for (int i = 0; i < H; i++) {
        for (int inter = 0; inter < 2; inter++) {
            float x[D] = {0};
            int a = inter ? 2 * i : i, b = inter ? 2 * i + 1 : i + H;
            x[a] = 1.0f;
            dsc_ref_rope(x, D, c, s, inter);
            for (int j = 0; j < D; j++) {
                float want = j == a ? c[i] : j == b ? s[i] : 0.0f;
                T_CHECK(t, x[j] == want, "%s pair %d: x[%d] = %g want %g",
                        inter ? "interleaved" : "half-split", i, j, (double)x[j], (double)want);
            }
        }
    }
    t_rng rng = {21};
    float x[D], xp[D], y[D];
    for (int j = 0; j < D; j++) x[j] = t_rng_normal(&rng);
    /* P x = [x0, x2, ..., x62, x1, x3, ..., x63] */
    for (int i = 0; i < H; i++) {
        xp[i] = x[2 * i];
        xp[i + H] = x[2 * i + 1];
    }
    double n0 = 0.0, n1 = 0.0;
    for (int j = 0; j < D; j++) n0 += (double)x[j] * x[j];
    memcpy(y, x, sizeof y);
    dsc_ref_rope(y, D, c, s, 1);
    dsc_ref_rope(xp, D, c, s, 0);
    for (int j = 0; j < D; j++) n1 += (double)y[j] * y[j];
    /* the rotation is exact in double and rounded once per element; cos^2 +
       sin^2 of fp32 tables is 1 within ~2^-23 */
    T_CHECK(t, fabs(n1 - n0) <= 1e-6 * n0, "norm %.9g -> %.9g", n0, n1);
    /* half-split of P x is P of interleaved x, exactly (same arithmetic) */
    for (int i = 0; i < H; i++)
        T_CHECK(t, xp[i] == y[2 * i] && xp[i + H] == y[2 * i + 1], "layouts differ at pair %d", i);
    free(ct);
    free(st);
}

const dsc_test_case dsc_tests_kernels[] = {
    {"e4m3_all_codes", test_e4m3_all_codes},
    {"e4m3_rounding", test_e4m3_rounding},
    {"bf16_all_codes", test_bf16_all_codes},
    {"bf16_rounding", test_bf16_rounding},
    {"f16_all_codes", test_f16_all_codes},
    {"f16_rounding", test_f16_rounding},
    {"wmat_row_ragged", test_wmat_row},
    {"simd_pack", test_simd_pack},
    {"kctx", test_kctx},
    {"matmul", test_matmul},
    {"matmul_nan_weight", test_matmul_nan_weight},
    {"sgemm", test_sgemm},
    {"rmsnorm", test_rmsnorm},
    {"softmax", test_softmax},
    {"silu_mul", test_silu_mul},
    {"topk", test_topk},
    {"topk_set", test_topk_set},
    {"sgemm_tn", test_sgemm_tn},
    {"rope_freq", test_rope_freq},
    {"rope_rotate", test_rope_rotate},
    {NULL, NULL},
};
