/*
 * gemm_openblas.c - the single-threaded fp32 GEMMs on top of OpenBLAS
 * (cblas_sgemm). The Makefile links this file when OpenBLAS is found and
 * gemm_builtin.c otherwise (or with NO_BLAS=1).
 *
 * Threading stays ours: callers split the work into row ranges (inside an
 * OpenMP parallel region, or in a plain loop when one thread does it all,
 * see dsc_parallel_for) and call these once per part. The OpenMP build of
 * OpenBLAS runs single-threaded inside an active parallel region, but in a
 * team of one, or outside any region, omp_in_parallel() is false and it
 * would start omp_get_max_threads() threads of its own. So each call sets
 * the calling task's nthreads-var to 1 and puts it back after: outside a
 * region that ICV is the application's own, which must not change.
 */
#include <limits.h>
#include <string.h>

#include <cblas.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "kernels/cpu/kcpu.h"
#include "util/util.h"

const char *dsc_kernels_blas_name(void) { return "openblas"; }

/* Shapes cblas cannot take (k == 0 trips its lda >= max(1, k) check).
   Returns 1 if the caller should go on to cblas. */
static int prepare(int64_t m, int64_t n, int64_t k, float *c, int64_t ldc, int accumulate) {
    if (m <= 0 || n <= 0) return 0;
    if (k <= 0) {
        if (!accumulate)
            for (int64_t i = 0; i < m; i++) memset(c + (size_t)i * (size_t)ldc, 0, (size_t)n * sizeof(float));
        return 0;
    }
    /* cblas takes int dimensions; DeepSeek's largest is ~130k */
    DSC_CHECK(m <= INT_MAX && n <= INT_MAX && k <= INT_MAX);
    return 1;
}

/* One cblas_sgemm on the calling thread alone (see the top of the file). */
static void sgemm_1t(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int64_t m, int64_t n, int64_t k,
                     const float *a, int64_t lda, const float *b, int64_t ldb, float *c,
                     int64_t ldc, int accumulate) {
#ifdef _OPENMP
    const int saved = omp_get_max_threads();
    omp_set_num_threads(1);
#endif
    cblas_sgemm(CblasRowMajor, ta, tb, (int)m, (int)n, (int)k, 1.0f, a, (int)lda, b, (int)ldb,
                accumulate ? 1.0f : 0.0f, c, (int)ldc);
#ifdef _OPENMP
    omp_set_num_threads(saved);
#endif
}

void dsc_kcpu_sgemm_nt_1t(const dsc_simd_ops *ops, int64_t m, int64_t n, int64_t k,
                          const float *a, int64_t lda, const float *b, int64_t ldb, float *c,
                          int64_t ldc, int accumulate) {
    (void)ops;
    if (!prepare(m, n, k, c, ldc, accumulate)) return;
    sgemm_1t(CblasNoTrans, CblasTrans, m, n, k, a, lda, b, ldb, c, ldc, accumulate);
}

void dsc_kcpu_sgemm_nn_1t(const dsc_simd_ops *ops, int64_t m, int64_t n, int64_t k,
                          const float *a, int64_t lda, const float *b, int64_t ldb, float *c,
                          int64_t ldc, int accumulate) {
    (void)ops;
    if (!prepare(m, n, k, c, ldc, accumulate)) return;
    sgemm_1t(CblasNoTrans, CblasNoTrans, m, n, k, a, lda, b, ldb, c, ldc, accumulate);
}

void dsc_kcpu_sgemm_tn_1t(const dsc_simd_ops *ops, int64_t m, int64_t n, int64_t k,
                          const float *a, int64_t lda, const float *b, int64_t ldb, float *c,
                          int64_t ldc, int accumulate) {
    (void)ops;
    if (!prepare(m, n, k, c, ldc, accumulate)) return;
    sgemm_1t(CblasTrans, CblasNoTrans, m, n, k, a, lda, b, ldb, c, ldc, accumulate);
}
