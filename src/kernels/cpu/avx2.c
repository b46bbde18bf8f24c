/*
 * avx2.c - AVX2 + FMA + F16C kernel table. Built with -mavx2 -mfma -mf16c;
 * only reached through dsc_simd_avx2 after dsc_simd_supported() said yes.
 *
 * Same structure as avx512.c (one always-inline body per kernel,
 * instantiated per constant dtype and m), 8 lanes wide. AVX2 has no masked
 * byte loads, so ragged tails (< 8 columns) are copied into a zeroed stack
 * buffer and run through the same vector code.
 */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "kernels/cpu/kcpu.h"

#define INLINE static inline __attribute__((always_inline))

/* 8 e4m3 codes (low 8 bytes of b) -> e4m3(code) * 2^-8, exactly, with the
   NaN codes reading as +-1.875; the f16 re-biasing trick is explained in
   avx512.c. */
INLINE __m256 e4m3x8_div256(__m128i b) {
    __m128i h = _mm_slli_epi16(_mm_cvtepi8_epi16(b), 7);
    return _mm256_cvtph_ps(_mm_and_si128(h, _mm_set1_epi16((short)0xbf80)));
}

/* 0xff in each of the low 8 bytes of b that holds a NaN code S.1111.111 */
INLINE __m128i e4m3_nan8(__m128i b) {
    return _mm_cmpeq_epi8(_mm_or_si128(b, _mm_set1_epi8((char)0x80)), _mm_set1_epi8((char)0xff));
}

/* 8 weights from element offset `off`. FP8 comes back divided by 256, NaN
   codes not yet NaN: *nan collects their bytes (see avx512.c). */
INLINE __m256 load8(const void *base, dsc_dtype dt, size_t off, __m128i *nan) {
    switch (dt) {
    case DSC_F32: return _mm256_loadu_ps((const float *)base + off);
    case DSC_BF16: {
        __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)base + off));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    case DSC_F16:
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)base + off)));
    case DSC_F8_E4M3: {
        __m128i b = _mm_loadl_epi64((const __m128i *)((const uint8_t *)base + off));
        *nan = _mm_or_si128(*nan, e4m3_nan8(b));
        return e4m3x8_div256(b);
    }
    }
    return _mm256_setzero_ps();
}

/* n < 8 weights from `off`, zero-padded to 8 lanes. */
INLINE __m256 load8_tail(const void *base, dsc_dtype dt, size_t off, int64_t n, __m128i *nan) {
    size_t es = dsc_dtype_size(dt);
    unsigned char buf[32] = {0};
    memcpy(buf, (const unsigned char *)base + off * es, (size_t)n * es);
    return load8(buf, dt, 0, nan);
}

INLINE __m256 loadx_tail(const float *x, int64_t n) {
    float buf[8] = {0};
    memcpy(buf, x, (size_t)n * sizeof(float));
    return _mm256_loadu_ps(buf);
}

INLINE float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Rows [r0, r1) of y = x . W^T for M (1..4) vectors, the next row
   prefetched; see avx512.c. */
INLINE void matvec_rows(const dsc_wmat *w, const float *x, const int M, const dsc_dtype dt,
                        int64_t r0, int64_t r1, float *y, int64_t ldy) {
    const int64_t cols = w->cols;
    const size_t esz = dsc_dtype_size(dt);
    const int fp8 = dt == DSC_F8_E4M3;
    const int64_t bw = fp8 ? DSC_FP8_BLOCK : cols;
    for (int64_t r = r0; r < r1; r++) {
        const size_t roff = (size_t)r * (size_t)cols;
        const char *next = (const char *)w->data + (roff + (size_t)cols) * esz;
        const float *srow = fp8 ? w->scale + (size_t)(r / DSC_FP8_BLOCK) * (size_t)w->scale_cols : NULL;
        __m256 tot[4], a0[4], a1[4];
        __m128i nan = _mm_setzero_si128(); /* a NaN weight makes the row's outputs NaN */
#pragma GCC unroll 4
        for (int i = 0; i < M; i++) tot[i] = _mm256_setzero_ps();
        for (int64_t c0 = 0, blk = 0; c0 < cols; c0 += bw, blk++) {
            const int64_t ce = cols - c0 > bw ? c0 + bw : cols;
#pragma GCC unroll 4
            for (int i = 0; i < M; i++) a0[i] = a1[i] = _mm256_setzero_ps();
            int64_t c = c0;
            for (; c + 16 <= ce; c += 16) {
                if (r + 1 < w->rows) _mm_prefetch(next + (size_t)c * esz, _MM_HINT_T0);
                __m256 w0 = load8(w->data, dt, roff + (size_t)c, &nan);
                __m256 w1 = load8(w->data, dt, roff + (size_t)c + 8, &nan);
#pragma GCC unroll 4
                for (int i = 0; i < M; i++) {
                    const float *xi = x + (size_t)i * (size_t)cols + (size_t)c;
                    a0[i] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xi), a0[i]);
                    a1[i] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xi + 8), a1[i]);
                }
            }
            for (; c < ce; c += 8) {
                int64_t n = ce - c;
                __m256 w0 = n >= 8 ? load8(w->data, dt, roff + (size_t)c, &nan)
                                   : load8_tail(w->data, dt, roff + (size_t)c, n, &nan);
#pragma GCC unroll 4
                for (int i = 0; i < M; i++) {
                    const float *xi = x + (size_t)i * (size_t)cols + (size_t)c;
                    __m256 xv = n >= 8 ? _mm256_loadu_ps(xi) : loadx_tail(xi, n);
                    a0[i] = _mm256_fmadd_ps(w0, xv, a0[i]);
                }
            }
#pragma GCC unroll 4
            for (int i = 0; i < M; i++) {
                __m256 s = _mm256_add_ps(a0[i], a1[i]);
                tot[i] = fp8 ? _mm256_fmadd_ps(s, _mm256_set1_ps(srow[blk]), tot[i])
                             : _mm256_add_ps(s, tot[i]);
            }
        }
#pragma GCC unroll 4
        for (int i = 0; i < M; i++) {
            float v = hsum8(tot[i]);
            y[(size_t)i * (size_t)ldy + (size_t)r] =
                !fp8 ? v : _mm_movemask_epi8(nan) ? NAN : v * 256.0f;
        }
    }
}

#define MATVEC_M(dt)                                                                  \
    switch (m) {                                                                      \
    case 1: matvec_rows(w, x, 1, dt, r0, r1, y, ldy); break;                          \
    case 2: matvec_rows(w, x, 2, dt, r0, r1, y, ldy); break;                          \
    case 3: matvec_rows(w, x, 3, dt, r0, r1, y, ldy); break;                          \
    default: matvec_rows(w, x, 4, dt, r0, r1, y, ldy); break;                         \
    }

static void avx2_matvec(const dsc_wmat *w, const float *x, int64_t m, int64_t r0, int64_t r1,
                        float *y, int64_t ldy) {
    switch (w->dtype) {
    case DSC_F32: MATVEC_M(DSC_F32); break;
    case DSC_BF16: MATVEC_M(DSC_BF16); break;
    case DSC_F16: MATVEC_M(DSC_F16); break;
    case DSC_F8_E4M3: MATVEC_M(DSC_F8_E4M3); break;
    }
}

/* In-register 8 x 8 transpose: on return r[q] holds column q of the 8 rows. */
INLINE void transpose8(__m256 r[8]) {
    __m256 t[8], u[8];
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
#pragma GCC unroll 2
    for (int i = 0; i < 2; i++) {
        u[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
#pragma GCC unroll 4
    for (int q = 0; q < 4; q++) {
        r[q] = _mm256_permute2f128_ps(u[q], u[4 + q], 0x20);
        r[4 + q] = _mm256_permute2f128_ps(u[q], u[4 + q], 0x31);
    }
}

/* Packs 8 x 8 tiles: each 16-row group is two 8-row halves, each 8
   columns wide. FP8: (q * 2^-8) * 256 is exact, so the one rounding is that
   of q * scale, as in dsc_wmat_row; NaN codes are made NaN per lane. */
INLINE void pack_rows(const dsc_wmat *w, const dsc_dtype dt, int64_t r0, int64_t nr, float *out) {
    const int64_t cols = w->cols;
    const int fp8 = dt == DSC_F8_E4M3;
    for (int64_t g0 = 0; g0 < nr; g0 += 16) {
        float *og = out + (size_t)(g0 / 16) * (size_t)cols * 16;
        for (int h = 0; h < 2; h++) {
            const int64_t rb = g0 + 8 * h;              /* first row of this half */
            const int64_t hr = nr - rb < 0 ? 0 : nr - rb < 8 ? nr - rb : 8;
            const float *srow[8];
            for (int64_t j = 0; j < hr; j++)
                srow[j] = fp8 ? w->scale + (size_t)((r0 + rb + j) / DSC_FP8_BLOCK) * (size_t)w->scale_cols : NULL;
            for (int64_t c0 = 0; c0 < cols; c0 += 8) {
                const int64_t nc = cols - c0 < 8 ? cols - c0 : 8;
                __m256 v[8];
#pragma GCC unroll 8
                for (int j = 0; j < 8; j++) {
                    if (j >= hr) {
                        v[j] = _mm256_setzero_ps();
                        continue;
                    }
                    __m128i nan = _mm_setzero_si128();
                    size_t off = (size_t)(r0 + rb + j) * (size_t)cols + (size_t)c0;
                    v[j] = nc == 8 ? load8(w->data, dt, off, &nan) : load8_tail(w->data, dt, off, nc, &nan);
                    if (fp8) {
                        __m256 isnan = _mm256_castsi256_ps(_mm256_cvtepi8_epi32(nan));
                        v[j] = _mm256_blendv_ps(v[j], _mm256_set1_ps(NAN), isnan);
                        v[j] = _mm256_mul_ps(_mm256_mul_ps(v[j], _mm256_set1_ps(256.0f)),
                                             _mm256_set1_ps(srow[j][c0 / DSC_FP8_BLOCK]));
                    }
                }
                transpose8(v);
                for (int64_t q = 0; q < nc; q++) _mm256_storeu_ps(og + (size_t)(c0 + q) * 16 + 8 * h, v[q]);
            }
        }
    }
}

static void avx2_pack_panel(const dsc_wmat *w, int64_t r0, int64_t nr, float *out) {
    switch (w->dtype) {
    case DSC_F32: pack_rows(w, DSC_F32, r0, nr, out); break;
    case DSC_BF16: pack_rows(w, DSC_BF16, r0, nr, out); break;
    case DSC_F16: pack_rows(w, DSC_F16, r0, nr, out); break;
    case DSC_F8_E4M3: pack_rows(w, DSC_F8_E4M3, r0, nr, out); break;
    }
}

/* 4 x 16 tile: two ymm accumulators per row of A (8 in flight, enough to
   cover FMA latency); rows past mr repeat the last valid row. */
#define MR2 4

static void avx2_ukernel(int64_t kc, const float *a, int64_t lda, const float *bp, float *c,
                         int64_t ldc, int64_t mr, int64_t nr, int load_c) {
    const float *ar[MR2];
    __m256 lo[MR2], hi[MR2];
#pragma GCC unroll 4
    for (int i = 0; i < MR2; i++) {
        ar[i] = a + (size_t)(i < mr ? i : mr - 1) * (size_t)lda;
        lo[i] = hi[i] = _mm256_setzero_ps();
    }
    for (int64_t p = 0; p < kc; p++) {
        __m256 b0 = _mm256_loadu_ps(bp + (size_t)p * DSC_GEMM_NR);
        __m256 b1 = _mm256_loadu_ps(bp + (size_t)p * DSC_GEMM_NR + 8);
#pragma GCC unroll 4
        for (int i = 0; i < MR2; i++) {
            __m256 av = _mm256_broadcast_ss(ar[i] + p);
            lo[i] = _mm256_fmadd_ps(av, b0, lo[i]);
            hi[i] = _mm256_fmadd_ps(av, b1, hi[i]);
        }
    }
    for (int64_t i = 0; i < mr; i++) {
        float t[DSC_GEMM_NR];
        _mm256_storeu_ps(t, lo[i]);
        _mm256_storeu_ps(t + 8, hi[i]);
        float *ci = c + (size_t)i * (size_t)ldc;
        for (int64_t j = 0; j < nr; j++) ci[j] = load_c ? ci[j] + t[j] : t[j];
    }
}

/* ---------------- exp ----------------
 * The same algorithm and constants as avx512.c (see the note there): exact
 * Cody-Waite reduction, degree-7 polynomial, exponent-field scaling when
 * every lane's result is normal or 0, the general path (subnormals,
 * overflow, NaN) otherwise. */
#define EXP_HI 0x1.62e42ep+6f     /* 88.7228317: largest x whose exp is finite */
#define EXP_LO -0x1.9fe368p+6f    /* -103.972076: smallest x whose exp is not 0 */
#define EXP_FAST_LO -87.33f       /* from here up, 2^q * exp(s) is normal */

INLINE __m256 exp8_reduced(__m256 x, __m256i *q) {
    const __m256 shifter = _mm256_set1_ps(0x1.8p23f);
    __m256 t = _mm256_fmadd_ps(x, _mm256_set1_ps(0x1.715476p+0f), shifter);
    __m256 qf = _mm256_sub_ps(t, shifter);
    *q = _mm256_sub_epi32(_mm256_castps_si256(t), _mm256_castps_si256(shifter));
    __m256 s = _mm256_fnmadd_ps(qf, _mm256_set1_ps(0x1.62e43p-1f), x);
    s = _mm256_fnmadd_ps(qf, _mm256_set1_ps(-0x1.05c61p-29f), s);
    __m256 p = _mm256_set1_ps(0.000198527617612853646278381f);
    p = _mm256_fmadd_ps(p, s, _mm256_set1_ps(0.00139304355252534151077271f));
    p = _mm256_fmadd_ps(p, s, _mm256_set1_ps(0.00833336077630519866943359f));
    p = _mm256_fmadd_ps(p, s, _mm256_set1_ps(0.0416664853692054748535156f));
    p = _mm256_fmadd_ps(p, s, _mm256_set1_ps(0.166666671633720397949219f));
    p = _mm256_fmadd_ps(p, s, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, s, _mm256_set1_ps(1.0f));
    return _mm256_fmadd_ps(p, s, _mm256_set1_ps(1.0f));
}

/* 2^k for -126 <= k <= 127 */
INLINE __m256 pow2i8(__m256i k) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k, _mm256_set1_epi32(127)), 23));
}

/* Any x; lanes outside [EXP_LO, EXP_HI] (and NaN) compute exp(0) and are
   replaced afterwards; results below 2^-125 come from rounding
   p * 2^(q+149) to an integer, their bit pattern (see avx512.c). */
static __attribute__((noinline)) __m256 exp8_general(__m256 x) {
    __m256 in = _mm256_and_ps(_mm256_cmp_ps(x, _mm256_set1_ps(EXP_LO), _CMP_GE_OQ),
                              _mm256_cmp_ps(x, _mm256_set1_ps(EXP_HI), _CMP_LE_OQ));
    __m256i q;
    __m256 p = exp8_reduced(_mm256_and_ps(x, in), &q); /* -150 <= q <= 128 */
    __m256i bits = _mm256_add_epi32(_mm256_castps_si256(p), _mm256_slli_epi32(q, 23));
    __m256i tiny = _mm256_cmpgt_epi32(_mm256_set1_epi32(-125), q); /* q <= -126 */
    __m256 ps = _mm256_mul_ps(p, pow2i8(_mm256_add_epi32(q, _mm256_set1_epi32(149))));
    bits = _mm256_blendv_epi8(bits, _mm256_cvtps_epi32(ps), tiny); /* MXCSR: nearest even */
    __m256 y = _mm256_and_ps(_mm256_castsi256_ps(bits), in); /* x < EXP_LO: 0 */
    y = _mm256_blendv_ps(y, _mm256_set1_ps(INFINITY),
                         _mm256_cmp_ps(x, _mm256_set1_ps(EXP_HI), _CMP_GT_OQ));
    return _mm256_blendv_ps(y, _mm256_add_ps(x, x), _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
}

/* Fast when every lane's result is normal or 0 (x < EXP_LO, -inf included). */
INLINE __m256 exp8(__m256 x) {
    __m256 zero = _mm256_cmp_ps(x, _mm256_set1_ps(EXP_LO), _CMP_LT_OQ);
    __m256 normal = _mm256_and_ps(_mm256_cmp_ps(x, _mm256_set1_ps(EXP_FAST_LO), _CMP_GE_OQ),
                                  _mm256_cmp_ps(x, _mm256_set1_ps(EXP_HI), _CMP_LE_OQ));
    if (__builtin_expect(_mm256_movemask_ps(_mm256_or_ps(zero, normal)) != 0xff, 0))
        return exp8_general(x);
    __m256i q;
    __m256 p = exp8_reduced(x, &q);
    __m256 y = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), _mm256_slli_epi32(q, 23)));
    return _mm256_and_ps(y, normal);
}

/* The tail (< 8 elements) goes through exp8 from a zeroed stack buffer, so
   each element gets the value it would get in the body. */
static void avx2_vexp(float *y, const float *x, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, exp8(_mm256_loadu_ps(x + i)));
    if (i < n) {
        float buf[8] = {0};
        memcpy(buf, x + i, (size_t)(n - i) * sizeof(float));
        _mm256_storeu_ps(buf, exp8(_mm256_loadu_ps(buf)));
        memcpy(y + i, buf, (size_t)(n - i) * sizeof(float));
    }
}

const dsc_simd_ops dsc_simd_avx2 = {
    .name = "avx2",
    .matvec = avx2_matvec,
    .pack_panel = avx2_pack_panel,
    .gemm_ukernel = avx2_ukernel,
    .gemm_mr = MR2,
    .vexp = avx2_vexp,
};
