/*
 * gemm_builtin.c - the single-threaded fp32 GEMMs without BLAS (NO_BLAS=1,
 * or OpenBLAS not found). A classic three-level blocking: the k dimension
 * in KC slices, A in MC-row blocks (MC x KC floats stay in L2), B in
 * NR-column panels packed to [kc][NR] (16 KiB, stays in L1) on the stack.
 * The inner tile is the SIMD table's micro-kernel (AVX-512 8x16, AVX2 4x16,
 * portable C 4x16), so the fallback still uses the vector units.
 */
#include <string.h>

#include "kernels/cpu/kcpu.h"

#define KC 256
#define MC 128 /* a multiple of every table's gemm_mr */

const char *dsc_kernels_blas_name(void) { return "builtin"; }

/* bp[p][j] = B^T[k0+p][j0+j] (nt) or B[k0+p][j0+j] (nn); columns past nr
   are zero so the micro-kernel never reads uninitialized memory. */
static void pack_b(float *bp, const float *b, int64_t ldb, int trans_b, int64_t j0, int64_t nr,
                   int64_t k0, int64_t kc) {
    if (nr < DSC_GEMM_NR) memset(bp, 0, (size_t)kc * DSC_GEMM_NR * sizeof(float));
    if (trans_b) {
        for (int64_t j = 0; j < nr; j++) {
            const float *bj = b + (size_t)(j0 + j) * (size_t)ldb + (size_t)k0;
            for (int64_t p = 0; p < kc; p++) bp[(size_t)p * DSC_GEMM_NR + (size_t)j] = bj[p];
        }
    } else {
        for (int64_t p = 0; p < kc; p++)
            memcpy(bp + (size_t)p * DSC_GEMM_NR, b + (size_t)(k0 + p) * (size_t)ldb + (size_t)j0,
                   (size_t)nr * sizeof(float));
    }
}

static void gemm_1t(const dsc_simd_ops *ops, int64_t m, int64_t n, int64_t k, const float *a,
                    int64_t lda, const float *b, int64_t ldb, int trans_b, float *c, int64_t ldc,
                    int accumulate) {
    if (m <= 0 || n <= 0) return;
    if (k <= 0) {
        if (!accumulate)
            for (int64_t i = 0; i < m; i++) memset(c + (size_t)i * (size_t)ldc, 0, (size_t)n * sizeof(float));
        return;
    }
    _Alignas(64) float bp[KC * DSC_GEMM_NR];
    const int64_t mr = ops->gemm_mr;
    for (int64_t k0 = 0; k0 < k; k0 += KC) {
        const int64_t kc = k - k0 < KC ? k - k0 : KC;
        /* the first slice overwrites C unless accumulating; later ones add */
        const int load_c = accumulate || k0 > 0;
        for (int64_t i0 = 0; i0 < m; i0 += MC) {
            const int64_t ie = m - i0 < MC ? m : i0 + MC;
            for (int64_t j0 = 0; j0 < n; j0 += DSC_GEMM_NR) {
                const int64_t nr = n - j0 < DSC_GEMM_NR ? n - j0 : DSC_GEMM_NR;
                pack_b(bp, b, ldb, trans_b, j0, nr, k0, kc);
                for (int64_t i = i0; i < ie; i += mr) {
                    const int64_t rows = ie - i < mr ? ie - i : mr;
                    ops->gemm_ukernel(kc, a + (size_t)i * (size_t)lda + (size_t)k0, lda, bp,
                                      c + (size_t)i * (size_t)ldc + (size_t)j0, ldc, rows, nr,
                                      load_c);
                }
            }
        }
    }
}

void dsc_kcpu_sgemm_nt_1t(const dsc_simd_ops *ops, int64_t m, int64_t n, int64_t k,
                          const float *a, int64_t lda, const float *b, int64_t ldb, float *c,
                          int64_t ldc, int accumulate) {
    gemm_1t(ops, m, n, k, a, lda, b, ldb, 1, c, ldc, accumulate);
}

void dsc_kcpu_sgemm_nn_1t(const dsc_simd_ops *ops, int64_t m, int64_t n, int64_t k,
                          const float *a, int64_t lda, const float *b, int64_t ldb, float *c,
                          int64_t ldc, int accumulate) {
    gemm_1t(ops, m, n, k, a, lda, b, ldb, 0, c, ldc, accumulate);
}

/* C += A^T B as rank-1 row updates: row i of C gathers A[p][i] * B[p][:]
   over p; the inner loop is a plain axpy the compiler vectorizes. Slower
   than the packed kernel, but only the training weight gradients use it. */
static void axpy_row(float *restrict c, const float *restrict b, float a, int64_t n) {
    for (int64_t j = 0; j < n; j++) c[j] += a * b[j];
}

void dsc_kcpu_sgemm_tn_1t(const dsc_simd_ops *ops, int64_t m, int64_t n, int64_t k,
                          const float *a, int64_t lda, const float *b, int64_t ldb, float *c,
                          int64_t ldc, int accumulate) {
    (void)ops;
    for (int64_t i = 0; i < m; i++) {
        float *ci = c + (size_t)i * (size_t)ldc;
        if (!accumulate) memset(ci, 0, (size_t)n * sizeof *ci);
        for (int64_t p = 0; p < k; p++)
            axpy_row(ci, b + (size_t)p * (size_t)ldb, a[(size_t)p * (size_t)lda + (size_t)i], n);
    }
}
