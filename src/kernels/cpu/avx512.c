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
 * adds it times the block's scale. The next row is prefetched as this one
 * streams: without it, loads wait on memory behind the FMAs of the M
 * vectors (a 1024 x 2048 F32 matrix from DRAM, one thread: 285 -> 239 us).
 */
INLINE void matvec_rows(const dsc_wmat *w, const float *x, const int M, const dsc_dtype dt,
                        int64_t r0, int64_t r1, float *y, int64_t ldy) {
    const int64_t cols = w->cols;
    const int fp8 = dt == DSC_F8_E4M3;
    const size_t esz = dsc_dtype_size(dt);
    const int64_t bw = fp8 ? DSC_FP8_BLOCK : cols;
    for (int64_t r = r0; r < r1; r++) {
        const size_t roff = (size_t)r * (size_t)cols;
        const char *next = (const char *)w->data + (roff + (size_t)cols) * esz;
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
                if (r + 1 < w->rows) {
                    _mm_prefetch(next + (size_t)c * esz, _MM_HINT_T0);
                    _mm_prefetch(next + (size_t)c * esz + 64, _MM_HINT_T0);
                }
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

/* The four horizontal sums of a, b, c, d as one vector [sa, sb, sc, sd].
   Each sum adds its own lanes in a fixed tree ((lanes of each 128-bit
   quarter, pairwise), then the quarters), whatever the other three hold. */
INLINE __m128 hsum4(__m512 a, __m512 b, __m512 c, __m512 d) {
    __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
    __m512 q = _mm512_add_ps(_mm512_shuffle_ps(ab, cd, _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_ps(ab, cd, _MM_SHUFFLE(3, 2, 3, 2)));
    __m256 h = _mm256_add_ps(_mm512_castps512_ps256(q), _mm512_extractf32x8_ps(q, 1));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

/*
 * The same for unscaled dtypes (F32, BF16, F16), four weight rows at a
 * time: one accumulator per (vector, row) gives 4*M independent FMA chains
 * without splitting a row's sum, and hsum4 reduces four rows at once
 * instead of one full horizontal reduction per row, which dominates for
 * the short rows of small models (2-row decode of a d = 128 model's FFN:
 * 10.1 -> 7.4 us). The next group of rows is prefetched as this one
 * streams: without it the loads queue behind the 4*M FMA chains and the
 * cost grows with M though the weights are read once (a 192 x 256 F32
 * expert matrix from DRAM, one thread: 10.3 / 12.6 / 18.4 us for M = 1 / 2
 * / 4 without, 5.9 / 5.9 / 6.1 with).
 * A missing row of the last group (r1 - r0 not a multiple of 4) is a zero
 * vector, so every row's value is the same whichever group it falls in.
 */
INLINE void matvec_rows4(const dsc_wmat *w, const float *x, const int M, const dsc_dtype dt,
                         int64_t r0, int64_t r1, float *y, int64_t ldy) {
    const int64_t cols = w->cols;
    const size_t esz = dsc_dtype_size(dt);
    __mmask16 nan = 0; /* unused for these dtypes */
    for (int64_t r = r0; r < r1; r += 4) {
        const int nr = r1 - r < 4 ? (int)(r1 - r) : 4;
        __m512 acc[4][4];
#pragma GCC unroll 4
        for (int i = 0; i < M; i++)
#pragma GCC unroll 4
            for (int k = 0; k < 4; k++) acc[i][k] = _mm512_setzero_ps();
        /* the next group of rows, prefetched while this one is summed */
        const char *ahead = r + 8 <= w->rows
                                ? (const char *)w->data + (size_t)(r + 4) * (size_t)cols * esz
                                : NULL;
        for (int64_t c = 0; c < cols; c += 16) {
            const __mmask16 mk = tail_mask(cols - c);
            __m512 wv[4];
            if (ahead) {
#pragma GCC unroll 4
                for (int k = 0; k < 4; k++)
                    _mm_prefetch(ahead + ((size_t)k * (size_t)cols + (size_t)c) * esz, _MM_HINT_T0);
            }
#pragma GCC unroll 4
            for (int k = 0; k < 4; k++)
                wv[k] = k < nr ? load16(w->data, dt, (size_t)(r + k) * (size_t)cols + (size_t)c,
                                        mk, &nan)
                               : _mm512_setzero_ps();
#pragma GCC unroll 4
            for (int i = 0; i < M; i++) {
                __m512 xv = _mm512_maskz_loadu_ps(mk, x + (size_t)i * (size_t)cols + (size_t)c);
#pragma GCC unroll 4
                for (int k = 0; k < 4; k++) acc[i][k] = _mm512_fmadd_ps(wv[k], xv, acc[i][k]);
            }
        }
        const __mmask8 sm = (__mmask8)((1u << nr) - 1u);
#pragma GCC unroll 4
        for (int i = 0; i < M; i++)
            _mm_mask_storeu_ps(y + (size_t)i * (size_t)ldy + (size_t)r, sm,
                               hsum4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]));
    }
}

#define MATVEC_M(dt)                                                                  \
    switch (m) {                                                                      \
    case 1: matvec_rows(w, x, 1, dt, r0, r1, y, ldy); break;                          \
    case 2: matvec_rows(w, x, 2, dt, r0, r1, y, ldy); break;                          \
    case 3: matvec_rows(w, x, 3, dt, r0, r1, y, ldy); break;                          \
    default: matvec_rows(w, x, 4, dt, r0, r1, y, ldy); break;                         \
    }

/* Rows up to this long take matvec_rows4 whatever the vector count. */
#define MATVEC4_MAX_COLS 512

#define MATVEC4_M(dt)                                                                 \
    switch (m) {                                                                      \
    case 1: matvec_rows4(w, x, 1, dt, r0, r1, y, ldy); break;                         \
    case 2: matvec_rows4(w, x, 2, dt, r0, r1, y, ldy); break;                         \
    case 3: matvec_rows4(w, x, 3, dt, r0, r1, y, ldy); break;                         \
    default: matvec_rows4(w, x, 4, dt, r0, r1, y, ldy); break;                        \
    }

static void avx512_matvec(const dsc_wmat *w, const float *x, int64_t m, int64_t r0, int64_t r1,
                          float *y, int64_t ldy) {
    /* the 4-row kernel, except for one vector against long rows, which
       streams better one row at a time (measured on a 102400 x 2048 BF16
       head, one thread: 11.1 ms one row at a time, 13.1 ms four; with two
       vectors four rows at a time win, 11.0 vs 12.0 ms; and on short rows
       the horizontal sums dominate, which the 4-row kernel shares) */
    const int rows4 = w->cols <= MATVEC4_MAX_COLS || m > 1;
    switch (w->dtype) {
    case DSC_F32:
        if (rows4) MATVEC4_M(DSC_F32) else MATVEC_M(DSC_F32);
        break;
    case DSC_BF16:
        if (rows4) MATVEC4_M(DSC_BF16) else MATVEC_M(DSC_BF16);
        break;
    case DSC_F16:
        if (rows4) MATVEC4_M(DSC_F16) else MATVEC_M(DSC_F16);
        break;
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

/* ---------------- exp ----------------
 *
 * exp(x) = 2^q * exp(s) with q = round(x * log2(e)) and s = x - q*ln2, so
 * |s| <= ln2/2. The reduction is exact to well below an ulp: q is rounded
 * inside the FMA that forms x*log2(e) (the 1.5*2^23 shifter leaves q in the
 * low mantissa bits), x - q*LN2_HI is exact in one FMA (LN2_HI = ln2 to 24
 * bits, |q| <= 150), and q*LN2_LO adds the next 24 bits of ln2. exp(s) is
 * a degree-7 minimax polynomial (Horner, FMA, ending in two FMAs with 1;
 * coefficients as in SLEEF's expf). Checked over every float input: within
 * 0.874 ulp of the exact exp, so at most 1 ulp from the correctly rounded
 * result (tests/kernels/test_exp.c holds it to 2).
 *
 * Scaling by 2^q: when every lane's result is a normal float or 0 (the
 * common case: -87.33 <= x <= EXP_HI, or x < EXP_LO, -inf included) q is
 * added to the exponent field. Otherwise (gradual underflow, overflow,
 * +inf, NaN) the vector takes the general path, which also rounds results
 * below 2^-125 into the subnormal grid (once, nearest even) and blends in
 * the overflow / underflow cuts and NaN. Both paths give bit-identical
 * results wherever both apply, so a lane's result does not depend on its
 * neighbours (or on whether it sits in a tail).
 */
#define EXP_HI 0x1.62e42ep+6f     /* 88.7228317: largest x whose exp is finite */
#define EXP_LO -0x1.9fe368p+6f    /* -103.972076: smallest x whose exp is not 0 */
#define EXP_FAST_LO -87.33f       /* from here up, 2^q * exp(s) is normal */

/* exp(s) for the reduced s, and q (as int32) in *q. */
INLINE __m512 exp16_reduced(__m512 x, __m512i *q) {
    const __m512 shifter = _mm512_set1_ps(0x1.8p23f);
    __m512 t = _mm512_fmadd_ps(x, _mm512_set1_ps(0x1.715476p+0f), shifter);
    __m512 qf = _mm512_sub_ps(t, shifter);
    *q = _mm512_sub_epi32(_mm512_castps_si512(t), _mm512_castps_si512(shifter));
    __m512 s = _mm512_fnmadd_ps(qf, _mm512_set1_ps(0x1.62e43p-1f), x);
    s = _mm512_fnmadd_ps(qf, _mm512_set1_ps(-0x1.05c61p-29f), s);
    __m512 p = _mm512_set1_ps(0.000198527617612853646278381f);
    p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(0.00139304355252534151077271f));
    p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(0.00833336077630519866943359f));
    p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(0.0416664853692054748535156f));
    p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(0.166666671633720397949219f));
    p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(1.0f));
    return _mm512_fmadd_ps(p, s, _mm512_set1_ps(1.0f));
}

/* 2^k for -126 <= k <= 127 */
INLINE __m512 pow2i16(__m512i k) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(k, _mm512_set1_epi32(127)), 23));
}

/* The general path: any x, subnormal results computed. Lanes outside
   [EXP_LO, EXP_HI] (and NaN) compute exp(0) and are replaced afterwards.
   Where q <= -126 the result is below 2^-125, where a float's bit pattern
   is its value in units of 2^-149: p * 2^(q+149) (exact, a normal float)
   rounded to an integer (nearest even, once) is the result's bits,
   subnormal or not, with no subnormal arithmetic (which costs a micro-code
   assist on many CPUs, and would be flushed under FTZ). */
static __attribute__((noinline)) __m512 exp16_general(__m512 x) {
    __mmask16 in = _mm512_cmp_ps_mask(x, _mm512_set1_ps(EXP_LO), _CMP_GE_OQ);
    in = _mm512_mask_cmp_ps_mask(in, x, _mm512_set1_ps(EXP_HI), _CMP_LE_OQ);
    __m512i q;
    __m512 p = exp16_reduced(_mm512_maskz_mov_ps(in, x), &q); /* -150 <= q <= 128 */
    __m512i bits = _mm512_add_epi32(_mm512_castps_si512(p), _mm512_slli_epi32(q, 23));
    __mmask16 tiny = _mm512_cmp_epi32_mask(q, _mm512_set1_epi32(-126), _MM_CMPINT_LE);
    __m512 ps = _mm512_mul_ps(p, pow2i16(_mm512_add_epi32(q, _mm512_set1_epi32(149))));
    bits = _mm512_mask_mov_epi32(
        bits, tiny, _mm512_cvt_roundps_epi32(ps, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    __m512 y = _mm512_maskz_mov_ps(in, _mm512_castsi512_ps(bits)); /* x < EXP_LO: 0 */
    y = _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(x, _mm512_set1_ps(EXP_HI), _CMP_GT_OQ),
                           _mm512_set1_ps(INFINITY));
    return _mm512_mask_add_ps(y, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), x, x);
}

/* Fast when every lane's result is normal or 0 (x < EXP_LO: -inf is common,
   the masked entries of causal attention rows); zero lanes compute garbage
   that the zero-masked exponent add drops. */
INLINE __m512 exp16(__m512 x) {
    __mmask16 zero = _mm512_cmp_ps_mask(x, _mm512_set1_ps(EXP_LO), _CMP_LT_OQ);
    __mmask16 normal = _mm512_cmp_ps_mask(x, _mm512_set1_ps(EXP_FAST_LO), _CMP_GE_OQ);
    normal = _mm512_mask_cmp_ps_mask(normal, x, _mm512_set1_ps(EXP_HI), _CMP_LE_OQ);
    if (__builtin_expect((__mmask16)(zero | normal) != 0xffff, 0)) return exp16_general(x);
    __m512i q;
    __m512 p = exp16_reduced(x, &q);
    return _mm512_castsi512_ps(
        _mm512_maskz_add_epi32(normal, _mm512_castps_si512(p), _mm512_slli_epi32(q, 23)));
}

/* The tail goes through the same exp16 with masked loads/stores (lanes past
   n read as 0 and are not stored). */
static void avx512_vexp(float *y, const float *x, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, exp16(_mm512_loadu_ps(x + i)));
    if (i < n) {
        __mmask16 mk = tail_mask(n - i);
        _mm512_mask_storeu_ps(y + i, mk, exp16(_mm512_maskz_loadu_ps(mk, x + i)));
    }
}

const dsc_simd_ops dsc_simd_avx512 = {
    .name = "avx512",
    .matvec = avx512_matvec,
    .pack_panel = avx512_pack_panel,
    .gemm_ukernel = avx512_ukernel,
    .gemm_mr = MR512,
    .vexp = avx512_vexp,
};
