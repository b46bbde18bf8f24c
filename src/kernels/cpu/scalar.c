/*
 * scalar.c - the portable SIMD-table entries, used on CPUs without AVX2
 * (and tested everywhere). Built with the default flags only.
 */
#include <math.h>
#include <string.h>

#include "kernels/cpu/kcpu.h"

/* Columns converted per step: one FP8 scale block, so a chunk never
   straddles two scales. */
#define CHUNK DSC_FP8_BLOCK

static void scalar_matvec(const dsc_wmat *w, const float *x, int64_t m, int64_t r0, int64_t r1,
                          float *y, int64_t ldy) {
    const int64_t cols = w->cols;
    float wbuf[CHUNK];
    for (int64_t r = r0; r < r1; r++) {
        float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int64_t c0 = 0; c0 < cols; c0 += CHUNK) {
            int64_t n = cols - c0 < CHUNK ? cols - c0 : CHUNK;
            dsc_wmat_row(w, r, c0, n, wbuf);
            for (int64_t i = 0; i < m; i++) {
                const float *xi = x + (size_t)i * (size_t)cols + (size_t)c0;
                float s = 0.0f;
                for (int64_t c = 0; c < n; c++) s += xi[c] * wbuf[c];
                acc[i] += s;
            }
        }
        for (int64_t i = 0; i < m; i++) y[(size_t)i * (size_t)ldy + (size_t)r] = acc[i];
    }
}

static void scalar_pack_panel(const dsc_wmat *w, int64_t r0, int64_t nr, float *out) {
    const int64_t cols = w->cols;
    float buf[CHUNK];
    for (int64_t g0 = 0; g0 < nr; g0 += DSC_GEMM_NR) {
        float *og = out + (size_t)(g0 / DSC_GEMM_NR) * (size_t)cols * DSC_GEMM_NR;
        for (int64_t j = 0; j < DSC_GEMM_NR; j++) {
            for (int64_t c0 = 0; c0 < cols; c0 += CHUNK) {
                int64_t n = cols - c0 < CHUNK ? cols - c0 : CHUNK;
                if (g0 + j < nr)
                    dsc_wmat_row(w, r0 + g0 + j, c0, n, buf);
                else
                    memset(buf, 0, sizeof buf);
                for (int64_t c = 0; c < n; c++) og[(size_t)(c0 + c) * DSC_GEMM_NR + (size_t)j] = buf[c];
            }
        }
    }
}

/* 4 x 16 tile kept in a local array; the j loops have a constant trip count
   so the compiler can vectorize them with whatever SIMD the base ABI has. */
static void scalar_ukernel(int64_t kc, const float *a, int64_t lda, const float *bp, float *c,
                           int64_t ldc, int64_t mr, int64_t nr, int load_c) {
    float acc[4][DSC_GEMM_NR];
    memset(acc, 0, sizeof acc);
    for (int64_t p = 0; p < kc; p++) {
        const float *b = bp + (size_t)p * DSC_GEMM_NR;
        for (int64_t i = 0; i < mr; i++) {
            float av = a[(size_t)i * (size_t)lda + (size_t)p];
            for (int j = 0; j < DSC_GEMM_NR; j++) acc[i][j] += av * b[j];
        }
    }
    for (int64_t i = 0; i < mr; i++) {
        float *ci = c + (size_t)i * (size_t)ldc;
        for (int64_t j = 0; j < nr; j++) ci[j] = load_c ? ci[j] + acc[i][j] : acc[i][j];
    }
}

/* The C library's expf (glibc's is within 0.502 ulp over every float). */
static void scalar_vexp(float *y, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = expf(x[i]);
}

const dsc_simd_ops dsc_simd_scalar = {
    .name = "scalar",
    .matvec = scalar_matvec,
    .pack_panel = scalar_pack_panel,
    .gemm_ukernel = scalar_ukernel,
    .gemm_mr = 4,
    .vexp = scalar_vexp,
};
