/*
 * kcpu.h - private to src/kernels/cpu/ (and the kernel tests): the layout of
 * the kernel context and the table of per-ISA kernels.
 *
 * Each SIMD file (scalar.c, avx2.c, avx512.c) defines one constant
 * dsc_simd_ops table; dsc_kctx_new picks the best one this CPU runs and
 * stores it in the context, so there is no global "current ISA". avx2.c and
 * avx512.c are built with their own -m flags, so nothing outside them may be
 * called on a CPU that lacks the ISA: every entry is reached only through a
 * table whose dsc_simd_supported() check passed.
 */
#ifndef DSC_KCPU_H
#define DSC_KCPU_H

#include "kernels/kernels.h"

/* The fp32 GEMM micro-kernel's tile width; packed B panels are [kc][NR]. */
#define DSC_GEMM_NR 16

typedef struct {
    const char *name;
    /* y[i*ldy + r] = sum_c x[i*cols + c] * W[r][c] for i < m, r in [r0, r1);
       1 <= m <= 4. Sums in fp32 (FP8: per 128-column block, then scaled). */
    void (*matvec)(const dsc_wmat *w, const float *x, int64_t m, int64_t r0, int64_t r1,
                   float *y, int64_t ldy);
    /* Dequantize rows [r0, r0+nr) of W into the micro-kernel's packed B
       layout: out[g][c][j] = W[r0 + 16g + j][c] for g < ceil(nr/16),
       c < cols, j < 16, with rows past nr as 0. Values are bit-identical to
       dsc_wmat_row. */
    void (*pack_panel)(const dsc_wmat *w, int64_t r0, int64_t nr, float *out);
    /* GEMM micro-kernel (used by the built-in GEMM):
       C[i][j] (=, or += when load_c) sum_p A[i][p] * bp[p*NR + j]
       for i < mr <= gemm_mr, j < nr <= NR, p < kc. */
    void (*gemm_ukernel)(int64_t kc, const float *a, int64_t lda, const float *bp, float *c,
                         int64_t ldc, int64_t mr, int64_t nr, int load_c);
    int gemm_mr;
    /* y[i] = exp(x[i]) for i < n, the contract of dsc_k_exp (y may equal x). */
    void (*vexp)(float *y, const float *x, int64_t n);
} dsc_simd_ops;

extern const dsc_simd_ops dsc_simd_scalar;
extern const dsc_simd_ops dsc_simd_avx2;
extern const dsc_simd_ops dsc_simd_avx512;

/* Whether this CPU (and OS) can run the table's instructions. */
int dsc_simd_supported(const dsc_simd_ops *ops);
/* The fastest supported table. */
const dsc_simd_ops *dsc_simd_best(void);

struct dsc_kctx {
    int n_threads;             /* >= 1 */
    int64_t max_cols;
    int64_t panel_rows;        /* rows of a dequantized weight panel */
    int64_t panel_floats;      /* scratch per thread = panel_rows * max_cols */
    float *scratch;            /* [n_threads][panel_floats], 64-byte aligned */
    const dsc_simd_ops *ops;   /* the SIMD variant in use */
};

/* Single-threaded fp32 GEMMs (gemm_openblas.c or gemm_builtin.c), same
   contracts as dsc_ref_sgemm_nt / _nn. They must be called from inside an
   OpenMP parallel region (a team of one is fine): the OpenBLAS version
   lowers the calling task's thread count so OpenBLAS cannot start its own
   threads, and that change must die with the region. */
void dsc_kcpu_sgemm_nt_1t(const dsc_simd_ops *ops, int64_t m, int64_t n, int64_t k,
                          const float *a, int64_t lda, const float *b, int64_t ldb, float *c,
                          int64_t ldc, int accumulate);
void dsc_kcpu_sgemm_tn_1t(const dsc_simd_ops *ops, int64_t m, int64_t n, int64_t k,
                          const float *a, int64_t lda, const float *b, int64_t ldb, float *c,
                          int64_t ldc, int accumulate);
void dsc_kcpu_sgemm_nn_1t(const dsc_simd_ops *ops, int64_t m, int64_t n, int64_t k,
                          const float *a, int64_t lda, const float *b, int64_t ldb, float *c,
                          int64_t ldc, int accumulate);

/* [lo, hi) of part t of n split into nt parts, boundaries rounded down to
   multiples of `align` (the last part takes the remainder). */
void dsc_kcpu_split(int64_t n, int nt, int t, int64_t align, int64_t *lo, int64_t *hi);

#endif
