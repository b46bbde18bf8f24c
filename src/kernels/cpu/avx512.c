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
 * 16 e4m3 codes -> 16 floats equal to e4m3(code) * 2^-8, exactly.
 * Shifting the 7 magnitude bits left by 7 lines e4m3's 4-bit exponent and 3
 * mantissa bits up with f16's low exponent bits and top mantissa bits: the
 * f16 read back is the e4m3 value times 2^(7-15) = 2^-8, subnormals
 * included (f16 subnormals are m10 * 2^-24 = (m/8) * 2^-6 * 2^-8). VCVTPH2PS
 * is exact and gives normal floats, so no denormal operand ever reaches the
 * FMA units. The one NaN magnitude (0x7f) would read as 1.875 and is
 * replaced.
 */
INLINE __m512 e4m3x16_div256(__m128i b) {
    __m256i v = _mm256_cvtepu8_epi16(b);
    __m256i mag = _mm256_and_si256(v, _mm256_set1_epi16(0x7f));
    __m256i sign = _mm256_slli_epi16(_mm256_and_si256(v, _mm256_set1_epi16(0x80)), 8);
    __m256i h = _mm256_or_si256(sign, _mm256_slli_epi16(mag, 7));
    __m512 f = _mm512_cvtph_ps(h);
    __mmask16 nan = _mm256_cmpeq_epi16_mask(mag, _mm256_set1_epi16(0x7f));
    return _mm512_mask_mov_ps(f, nan, _mm512_set1_ps(NAN));
}

/* 16 weights from element offset `off` (lanes outside mk read as 0). FP8
   comes back divided by 256 (see above); callers fold the 256 back in. */
INLINE __m512 load16(const void *base, dsc_dtype dt, size_t off, __mmask16 mk) {
    switch (dt) {
    case DSC_F32: return _mm512_maskz_loadu_ps(mk, (const float *)base + off);
    case DSC_BF16: {
        __m256i h = _mm256_maskz_loadu_epi16(mk, (const uint16_t *)base + off);
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    case DSC_F16: return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mk, (const uint16_t *)base + off));
    case DSC_F8_E4M3: return e4m3x16_div256(_mm_maskz_loadu_epi8(mk, (const uint8_t *)base + off));
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
#pragma GCC unroll 4
        for (int i = 0; i < M; i++) tot[i] = _mm512_setzero_ps();
        for (int64_t c0 = 0, blk = 0; c0 < cols; c0 += bw, blk++) {
            const int64_t ce = cols - c0 > bw ? c0 + bw : cols;
#pragma GCC unroll 4
            for (int i = 0; i < M; i++) a0[i] = a1[i] = _mm512_setzero_ps();
            int64_t c = c0;
            for (; c + 32 <= ce; c += 32) {
                __m512 w0 = load16(w->data, dt, roff + (size_t)c, 0xffff);
                __m512 w1 = load16(w->data, dt, roff + (size_t)c + 16, 0xffff);
#pragma GCC unroll 4
                for (int i = 0; i < M; i++) {
                    const float *xi = x + (size_t)i * (size_t)cols + (size_t)c;
                    a0[i] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xi), a0[i]);
                    a1[i] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xi + 16), a1[i]);
                }
            }
            for (; c < ce; c += 16) {
                __mmask16 mk = tail_mask(ce - c);
                __m512 w0 = load16(w->data, dt, roff + (size_t)c, mk);
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
            y[(size_t)i * (size_t)ldy + (size_t)r] = fp8 ? v * 256.0f : v;
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

/* FP8: (q * 2^-8) * 256 is exact, so the one rounding is that of q * scale,
   the same as dsc_wmat_row's. */
INLINE void dequant_rows(const dsc_wmat *w, const dsc_dtype dt, int64_t r0, int64_t r1, float *out) {
    const int64_t cols = w->cols;
    const int fp8 = dt == DSC_F8_E4M3;
    const int64_t bw = fp8 ? DSC_FP8_BLOCK : cols;
    for (int64_t r = r0; r < r1; r++) {
        const size_t roff = (size_t)r * (size_t)cols;
        float *o = out + (size_t)(r - r0) * (size_t)cols;
        const float *srow = fp8 ? w->scale + (size_t)(r / DSC_FP8_BLOCK) * (size_t)w->scale_cols : NULL;
        for (int64_t c0 = 0, blk = 0; c0 < cols; c0 += bw, blk++) {
            const int64_t ce = cols - c0 > bw ? c0 + bw : cols;
            const __m512 s = fp8 ? _mm512_set1_ps(srow[blk]) : _mm512_setzero_ps();
            for (int64_t c = c0; c < ce; c += 16) {
                __mmask16 mk = tail_mask(ce - c);
                __m512 v = load16(w->data, dt, roff + (size_t)c, mk);
                if (fp8) v = _mm512_mul_ps(_mm512_mul_ps(v, _mm512_set1_ps(256.0f)), s);
                _mm512_mask_storeu_ps(o + c, mk, v);
            }
        }
    }
}

static void avx512_dequant(const dsc_wmat *w, int64_t r0, int64_t r1, float *out) {
    switch (w->dtype) {
    case DSC_F32: dequant_rows(w, DSC_F32, r0, r1, out); break;
    case DSC_BF16: dequant_rows(w, DSC_BF16, r0, r1, out); break;
    case DSC_F16: dequant_rows(w, DSC_F16, r0, r1, out); break;
    case DSC_F8_E4M3: dequant_rows(w, DSC_F8_E4M3, r0, r1, out); break;
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
    .dequant = avx512_dequant,
    .gemm_ukernel = avx512_ukernel,
    .gemm_mr = MR512,
};
