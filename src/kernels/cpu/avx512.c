/*
 * avx512.c - AVX-512 (F+BW+VL+DQ, with FMA and F16C) kernel table.
 * Built with -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mf16c; only
 * reached through dsc_simd_avx512 after dsc_simd_supported() said yes.
 *
 * Each kernel is written once as an always-inline function of (dtype, m);
 * the switch at the bottom instantiates it per constant dtype and m so the
 * compiler specializes the loads, instead of one hand-copied loop per dtype.
 * Ragged edges use masked loads/stores (they never touch masked-out bytes).
 */
#include <immintrin.h>
#include <math.h>

#include "kernels/cpu/kcpu.h"

#define INLINE static inline __attribute__((always_inline))

/*
 * 16 e4m3 codes -> 16 floats equal to e4m3(code) * 2^-8, exactly, except
 * that the NaN codes read as +-1.875 (see e4m3_nan16).
 * Sign-extending a code to 16 bits and shifting left by 7 puts the sign in
 * bits 15 and 14 and lines e4m3's 4 exponent and 3 mantissa bits up with
 * f16's low exponent bits and top mantissa bits; clearing bit 14 leaves an
 * f16 whose value is the e4m3 value times 2^(7-15) = 2^-8, subnormals
 * included (f16 subnormals are m10 * 2^-24 = (m/8) * 2^-6 * 2^-8).
 * VCVTPH2PS is exact and gives normal floats, so no denormal operand ever
 * reaches the FMA units.
 */
INLINE __m512 e4m3x16_div256(__m128i b) {
    __m256i h = _mm256_slli_epi16(_mm256_cvtepi8_epi16(b), 7);
    return _mm512_cvtph_ps(_mm256_and_si256(h, _mm256_set1_epi16((short)0xbf80)));
}

/* Lanes holding one of the NaN codes S.1111.111. */
INLINE __mmask16 e4m3_nan16(__m128i b) {
    return _mm_cmpeq_epi8_mask(_mm_or_si128(b, _mm_set1_epi8((char)0x80)), _mm_set1_epi8((char)0xff));
}

/* 16 weights from element offset `off` (lanes outside mk read as 0). FP8
   comes back divided by 256 (callers fold the 256 back in) and with NaN
   codes not yet NaN: *nan collects their lanes so the caller can fix them
   up once (per vector when packing, per row for matvec). */
INLINE __m512 load16(const void *base, dsc_dtype dt, size_t off, __mmask16 mk, __mmask16 *nan) {
    switch (dt) {
    case DSC_F32: return _mm512_maskz_loadu_ps(mk, (const float *)base + off);
    case DSC_BF16: {
        __m256i h = _mm256_maskz_loadu_epi16(mk, (const uint16_t *)base + off);
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    case DSC_F16: return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mk, (const uint16_t *)base + off));
    case DSC_F8_E4M3: {
        __m128i b = _mm_maskz_loadu_epi8(mk, (const uint8_t *)base + off);
        *nan |= e4m3_nan16(b);
        return e4m3x16_div256(b);
    }
    }
    return _mm512_setzero_ps();
}

INLINE __mmask16 tail_mask(int64_t n) {
    return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1u);
}

/*
 * Rows [r0, r1) of y = x . W^T for M (1..4) vectors x at once, so each
 * weight is loaded and converted once for all M. Two accumulators per
 * vector hide FMA latency. FP8 sums each 128-column block on its own and
 * adds it times the block's scale.
 */
INLINE void matvec_rows(const dsc_wmat *w, const float *x, const int M, const dsc_dtype dt,
                        int64_t r0, int64_t r1, float *y, int64_t ldy) {
    const int64_t cols = w->cols;
    const int fp8 = dt == DSC_F8_E4M3;
    const int64_t bw = fp8 ? DSC_FP8_BLOCK : cols;
    for (int64_t r = r0; r < r1; r++) {
        const size_t roff = (size_t)r * (size_t)cols;
        const float *srow = fp8 ? w->scale + (size_t)(r / DSC_FP8_BLOCK) * (size_t)w->scale_cols : NULL;
        __m512 tot[4], a0[4], a1[4];
        __mmask16 nan = 0; /* a NaN weight makes the whole row's outputs NaN */
#pragma GCC unroll 4
        for (int i = 0; i < M; i++) tot[i] = _mm512_setzero_ps();
        for (int64_t c0 = 0, blk = 0; c0 < cols; c0 += bw, blk++) {
            const int64_t ce = cols - c0 > bw ? c0 + bw : cols;
#pragma GCC unroll 4
            for (int i = 0; i < M; i++) a0[i] = a1[i] = _mm512_setzero_ps();
            int64_t c = c0;
            for (; c + 32 <= ce; c += 32) {
                __m512 w0 = load16(w->data, dt, roff + (size_t)c, 0xffff, &nan);
                __m512 w1 = load16(w->data, dt, roff + (size_t)c + 16, 0xffff, &nan);
#pragma GCC unroll 4
                for (int i = 0; i < M; i++) {
                    const float *xi = x + (size_t)i * (size_t)cols + (size_t)c;
                    a0[i] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xi), a0[i]);
                    a1[i] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xi + 16), a1[i]);
                }
            }
            for (; c < ce; c += 16) {
                __mmask16 mk = tail_mask(ce - c);
                __m512 w0 = load16(w->data, dt, roff + (size_t)c, mk, &nan);
#pragma GCC unroll 4
                for (int i = 0; i < M; i++) {
                    const float *xi = x + (size_t)i * (size_t)cols + (size_t)c;
                    a0[i] = _mm512_fmadd_ps(w0, _mm512_maskz_loadu_ps(mk, xi), a0[i]);
                }
            }
#pragma GCC unroll 4
            for (int i = 0; i < M; i++) {
                __m512 s = _mm512_add_ps(a0[i], a1[i]);
                tot[i] = fp8 ? _mm512_fmadd_ps(s, _mm512_set1_ps(srow[blk]), tot[i])
                             : _mm512_add_ps(s, tot[i]);
            }
        }
#pragma GCC unroll 4
        for (int i = 0; i < M; i++) {
            float v = _mm512_reduce_add_ps(tot[i]);
            y[(size_t)i * (size_t)ldy + (size_t)r] = !fp8 ? v : nan ? NAN : v * 256.0f;
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

static void avx512_matvec(const dsc_wmat *w, const float *x, int64_t m, int64_t r0, int64_t r1,
                          float *y, int64_t ldy) {
    switch (w->dtype) {
    case DSC_F32: MATVEC_M(DSC_F32); break;
    case DSC_BF16: MATVEC_M(DSC_BF16); break;
    case DSC_F16: MATVEC_M(DSC_F16); break;
    case DSC_F8_E4M3: MATVEC_M(DSC_F8_E4M3); break;
    }
}

/* In-register transpose: on return r[q] holds what was column q of the 16
   rows r[0..15]. Three rounds of shuffles: pairs of floats, pairs of
   doubles (r[4i+q] then holds, in 128-bit lane L, column 4L+q of rows
   4i..4i+3), then 128-bit lanes. */
INLINE void transpose16(__m512 r[16]) {
    __m512 t[16];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) {
        __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]);
        __m512d c = _mm512_castps_pd(t[4 * i + 2]), d = _mm512_castps_pd(t[4 * i + 3]);
        r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
#pragma GCC unroll 4
    for (int q = 0; q < 4; q++) {
        __m512 t0 = _mm512_shuffle_f32x4(r[q], r[4 + q], 0x88);
        __m512 t1 = _mm512_shuffle_f32x4(r[q], r[4 + q], 0xdd);
        __m512 t2 = _mm512_shuffle_f32x4(r[8 + q], r[12 + q], 0x88);
        __m512 t3 = _mm512_shuffle_f32x4(r[8 + q], r[12 + q], 0xdd);
        t[q] = _mm512_shuffle_f32x4(t0, t2, 0x88);
        t[8 + q] = _mm512_shuffle_f32x4(t0, t2, 0xdd);
        t[4 + q] = _mm512_shuffle_f32x4(t1, t3, 0x88);
        t[12 + q] = _mm512_shuffle_f32x4(t1, t3, 0xdd);
    }
#pragma GCC unroll 16
    for (int q = 0; q < 16; q++) r[q] = t[q];
}

/* One 16 x 16 tile at a time: load and convert 16 columns of each of the
   16 rows, transpose, store 16 columns of the packed panel. FP8: (q * 2^-8)
   * 256 is exact, so the one rounding is that of q * scale, the same as
   dsc_wmat_row's; NaN codes are made NaN per lane. */
INLINE void pack_rows(const dsc_wmat *w, const dsc_dtype dt, int64_t r0, int64_t nr, float *out) {
    const int64_t cols = w->cols;
    const int fp8 = dt == DSC_F8_E4M3;
    for (int64_t g0 = 0; g0 < nr; g0 += 16) {
        const int64_t gr = nr - g0 < 16 ? nr - g0 : 16;
        float *og = out + (size_t)(g0 / 16) * (size_t)cols * 16;
        const float *srow[16];
        for (int64_t j = 0; j < gr; j++)
            srow[j] = fp8 ? w->scale + (size_t)((r0 + g0 + j) / DSC_FP8_BLOCK) * (size_t)w->scale_cols : NULL;
        for (int64_t c0 = 0; c0 < cols; c0 += 16) {
            const __mmask16 mk = tail_mask(cols - c0);
            __m512 v[16];
#pragma GCC unroll 16
            for (int j = 0; j < 16; j++) {
                if (j >= gr) {
                    v[j] = _mm512_setzero_ps();
                    continue;
                }
                __mmask16 nan = 0;
                v[j] = load16(w->data, dt, (size_t)(r0 + g0 + j) * (size_t)cols + (size_t)c0, mk, &nan);
                if (fp8) {
                    v[j] = _mm512_mask_mov_ps(v[j], nan, _mm512_set1_ps(NAN));
                    v[j] = _mm512_mul_ps(_mm512_mul_ps(v[j], _mm512_set1_ps(256.0f)),
                                         _mm512_set1_ps(srow[j][c0 / DSC_FP8_BLOCK]));
                }
            }
            transpose16(v);
            const int64_t nc = cols - c0 < 16 ? cols - c0 : 16;
            for (int64_t q = 0; q < nc; q++) _mm512_storeu_ps(og + (size_t)(c0 + q) * 16, v[q]);
        }
    }
}

static void avx512_pack_panel(const dsc_wmat *w, int64_t r0, int64_t nr, float *out) {
    switch (w->dtype) {
    case DSC_F32: pack_rows(w, DSC_F32, r0, nr, out); break;
    case DSC_BF16: pack_rows(w, DSC_BF16, r0, nr, out); break;
    case DSC_F16: pack_rows(w, DSC_F16, r0, nr, out); break;
    case DSC_F8_E4M3: pack_rows(w, DSC_F8_E4M3, r0, nr, out); break;
    }
}

/* 8 x 16 tile: one zmm accumulator per row of A. Rows past mr repeat the
   last valid row (same work, results dropped) so there is one code path. */
#define MR512 8

static void avx512_ukernel(int64_t kc, const float *a, int64_t lda, const float *bp, float *c,
                           int64_t ldc, int64_t mr, int64_t nr, int load_c) {
    const float *ar[MR512];
    __m512 acc[MR512];
#pragma GCC unroll 8
    for (int i = 0; i < MR512; i++) {
        ar[i] = a + (size_t)(i < mr ? i : mr - 1) * (size_t)lda;
        acc[i] = _mm512_setzero_ps();
    }
    for (int64_t p = 0; p < kc; p++) {
        __m512 b = _mm512_loadu_ps(bp + (size_t)p * DSC_GEMM_NR);
#pragma GCC unroll 8
        for (int i = 0; i < MR512; i++) acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(ar[i][p]), b, acc[i]);
    }
    __mmask16 mk = tail_mask(nr);
    for (int64_t i = 0; i < mr; i++) {
        float *ci = c + (size_t)i * (size_t)ldc;
        __m512 v = load_c ? _mm512_add_ps(_mm512_maskz_loadu_ps(mk, ci), acc[i]) : acc[i];
        _mm512_mask_storeu_ps(ci, mk, v);
    }
}

const dsc_simd_ops dsc_simd_avx512 = {
    .name = "avx512",
    .matvec = avx512_matvec,
    .pack_panel = avx512_pack_panel,
    .gemm_ukernel = avx512_ukernel,
    .gemm_mr = MR512,
};
