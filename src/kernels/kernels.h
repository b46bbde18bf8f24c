/*
 * kernels.h - every numeric kernel of libdsc.
 *
 * Two layers:
 *  - dsc_ref_*  (src/kernels/ref/): plain scalar C, written once, obviously
 *    correct, always compiled. They are the oracle the tests compare against.
 *  - dsc_k_*    (src/kernels/cpu/): the fast versions used by the model
 *    (OpenBLAS sgemm, AVX2/AVX-512 dot products and GEMM micro-kernels,
 *    OpenMP over row ranges). dsc_kctx_new() picks the SIMD variant once and
 *    keeps it in the context; the tests check each against dsc_ref_*.
 *
 * Weights are never converted wholesale: a dsc_wmat points into the mmapped
 * file in its stored dtype, and kernels dequantize row panels on the fly.
 * FP8 e4m3 weights carry a block scale (weight_scale_inv, multiplied):
 *   W[r][c] = e4m3(Wq[r][c]) * scale[(r/128) * scale_cols + c/128].
 *
 * All matrices are row-major. No kernel allocates memory; scratch comes from
 * the caller (dsc_kctx).
 */
#ifndef DSC_KERNELS_H
#define DSC_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "dsc.h"

#define DSC_FP8_BLOCK 128

/* A weight matrix [rows][cols] (PyTorch Linear layout: rows = out features). */
typedef struct {
    dsc_dtype dtype;
    int64_t rows, cols;
    const void *data;
    const float *scale;      /* F8_E4M3 only: [ceil(rows/128)][ceil(cols/128)] */
    int64_t scale_cols;      /* ceil(cols/128) */
} dsc_wmat;

/* ---- scalar conversions (exact; NaN/inf/subnormals handled) ---- */
float dsc_bf16_to_f32(uint16_t h);
uint16_t dsc_f32_to_bf16(float f);        /* round to nearest even, NaN kept NaN */
float dsc_f16_to_f32(uint16_t h);
uint16_t dsc_f32_to_f16(float f);         /* round to nearest even */
float dsc_e4m3_to_f32(uint8_t b);         /* 0x7f/0xff -> NaN; no infinities */
uint8_t dsc_f32_to_e4m3(float f);         /* RNE, saturates to +-448, NaN -> 0x7f */

/* Dequantize W[r][c0 .. c0+n) to fp32 (scale applied for FP8). */
void dsc_wmat_row(const dsc_wmat *w, int64_t r, int64_t c0, int64_t n, float *out);

/* ================= scalar references ================= */

/* y[m][rows] = x[m][cols] . W^T   (double accumulation) */
void dsc_ref_matmul(float *y, const float *x, const dsc_wmat *w, int64_t m);
/* C[m][n] = A[m][k] . B[n][k]^T  (+ C if accumulate) -- fp32 x fp32 */
void dsc_ref_sgemm_nt(int64_t m, int64_t n, int64_t k, const float *a, int64_t lda,
                      const float *b, int64_t ldb, float *c, int64_t ldc, int accumulate);
/* C[m][n] = A[m][k] . B[k][n]  (+ C if accumulate) */
void dsc_ref_sgemm_nn(int64_t m, int64_t n, int64_t k, const float *a, int64_t lda,
                      const float *b, int64_t ldb, float *c, int64_t ldc, int accumulate);
/* C[m][n] = A[k][m]^T . B[k][n]  (+ C if accumulate): the weight gradient of
   a linear layer, dW += dy^T x, without transposing dy. */
void dsc_ref_sgemm_tn(int64_t m, int64_t n, int64_t k, const float *a, int64_t lda,
                      const float *b, int64_t ldb, float *c, int64_t ldc, int accumulate);
/* y[i][:] = w * x[i][:] / sqrt(mean(x[i]^2) + eps), n rows of dim d; y may alias x.
   w holds d values (shape 1 x d or d x 1) in any dtype (norm weights are BF16
   in checkpoints). */
void dsc_ref_rmsnorm(float *y, const float *x, const dsc_wmat *w, int64_t n, int64_t d,
                     float eps);
/* In-place softmax over each of n rows of length d; -inf entries get 0.
   A row of all -inf becomes all 0 (never NaN). */
void dsc_ref_softmax(float *x, int64_t n, int64_t d);
/* out[i] = silu(g[i]) * u[i] */
void dsc_ref_silu_mul(float *out, const float *g, const float *u, int64_t n);
/* Indices of the k largest of x[0..n) into idx, in descending value order.
   Ties: the lower index ranks first. NaN ranks below every number, -inf
   included. Requires k <= n. */
void dsc_ref_topk(const float *x, int64_t n, int64_t k, int32_t *idx);

/* ---- RoPE / YaRN ---- */
typedef struct {
    int64_t dim;            /* rotary dims D (even) */
    double theta;           /* rope_theta */
    int yarn;               /* 0: plain RoPE */
    double factor, beta_fast, beta_slow;
    int64_t original_max_pos;
    double attention_factor;/* multiplies cos/sin (1.0 for DeepSeek configs) */
} dsc_rope_params;

/* inv_freq[D/2]: base theta^(-2i/D), blended by the YaRN ramp when yarn. */
void dsc_rope_inv_freq(const dsc_rope_params *p, double *inv_freq);
/* cos/sin tables [n_pos][D/2] for positions 0..n_pos-1 (angle = p * inv_freq[i],
   computed in double, stored fp32, times attention_factor). */
void dsc_rope_tables(const dsc_rope_params *p, int64_t n_pos, float *cos_t, float *sin_t);
/* Rotate x[D] in place at one position given that position's cos/sin rows.
   interleaved: pairs (2i, 2i+1), output in place (official DeepSeek layout).
   !interleaved: pairs (i, i+D/2) (NeoX / rotate-half layout). */
void dsc_ref_rope(float *x, int64_t d, const float *cos_row, const float *sin_row,
                  int interleaved);

/* ================= fast kernels ================= */

/*
 * Kernel context: thread count and per-thread scratch for weight panels,
 * created once per inference context. `max_cols` is the widest weight the
 * context will multiply by. Like the inference context, one kctx must not
 * be used from two threads at once (its scratch is shared).
 */
typedef struct dsc_kctx dsc_kctx;
dsc_status dsc_kctx_new(int n_threads, int64_t max_cols, dsc_kctx **out, dsc_err *err);
void dsc_kctx_free(dsc_kctx *k);
int dsc_kctx_threads(const dsc_kctx *k);
/* Threads worth using for `work` multiply-adds: at most the context's, and
   few enough that each gets a meaningful share (a fork costs microseconds);
   1 for a NULL context. */
int dsc_kctx_threads_for(const dsc_kctx *k, double work);
int64_t dsc_kctx_bytes(const dsc_kctx *k);
/* Name of the SIMD variant in use, e.g. "avx512", "avx2", "scalar". */
const char *dsc_kernels_simd_name(void);
/* Whether the fp32 GEMM goes through BLAS ("openblas") or the built-in path. */
const char *dsc_kernels_blas_name(void);
/* The SIMD variant this context uses (dsc_kctx_new picks the best one). */
const char *dsc_kctx_simd_name(const dsc_kctx *k);
/* Force a variant ("scalar", "avx2", "avx512"), for tests and benchmarks.
   DSC_ERR_UNSUPPORTED if this CPU cannot run it, DSC_ERR_ARG if unknown;
   k is unchanged then. */
dsc_status dsc_kctx_set_simd(dsc_kctx *k, const char *name);

/* y[m][rows] = x[m][cols] . W^T, W in any dtype. y must not alias x. */
void dsc_k_matmul(dsc_kctx *k, float *y, const float *x, const dsc_wmat *w, int64_t m);
/* fp32 GEMMs with the same contracts as the dsc_ref_ versions. */
void dsc_k_sgemm_nt(dsc_kctx *k, int64_t m, int64_t n, int64_t kk, const float *a, int64_t lda,
                    const float *b, int64_t ldb, float *c, int64_t ldc, int accumulate);
void dsc_k_sgemm_nn(dsc_kctx *k, int64_t m, int64_t n, int64_t kk, const float *a, int64_t lda,
                    const float *b, int64_t ldb, float *c, int64_t ldc, int accumulate);
void dsc_k_sgemm_tn(dsc_kctx *k, int64_t m, int64_t n, int64_t kk, const float *a, int64_t lda,
                    const float *b, int64_t ldb, float *c, int64_t ldc, int accumulate);
/*
 * Single-threaded row-range products, for callers that parallelise on their
 * own (MLA decode runs one head per thread and applies that head's slice of
 * kv_b_proj straight from its stored dtype):
 *   matvec_rows: y[i*ldy + (r - r0)] = x[i] . W[r]       r in [r0, r1), x rows of w->cols
 *   matvec_t   : y[i*ldy + c] = sum_{r < nr} x[i*ldx + r] * W[r0 + r][c]   c < w->cols
 */
void dsc_k_matvec_rows(const dsc_kctx *k, const dsc_wmat *w, int64_t r0, int64_t r1,
                       const float *x, int64_t m, float *y, int64_t ldy);
void dsc_k_matvec_t(const dsc_kctx *k, const dsc_wmat *w, int64_t r0, int64_t nr,
                    const float *x, int64_t ldx, int64_t m, float *y, int64_t ldy);
/*
 * The k largest of x[0..n) as a set: their indices in ascending order into
 * idx, returns min(k, n). Ties at the boundary go to the lower index (the
 * same rule as dsc_ref_topk); NaN ranks below -inf. scratch: n floats.
 * Expected O(n) (quickselect; on long rows with a small k, over the values
 * that reach the k-th largest of per-bucket maxima), for selections over
 * long contexts.
 */
int64_t dsc_k_topk_set(const float *x, int64_t n, int64_t k, int32_t *idx, float *scratch);
void dsc_k_rmsnorm(dsc_kctx *k, float *y, const float *x, const dsc_wmat *w, int64_t n,
                   int64_t d, float eps);
/*
 * y[i] = exp(x[i]) for i < n, single-threaded, the SIMD variant of k (k
 * NULL: the best this CPU runs). y may alias x (y == x: in place; no other
 * overlap). Accuracy contract, for every variant:
 *  - normal results: within 2 ulp of the correctly rounded exp (checked
 *    over every float input: avx2/avx512 within 1 ulp, 0.874 ulp of the
 *    exact value; scalar is the C library's expf);
 *  - subnormal results (-103.97 < x < -87.34) are computed (gradual
 *    underflow), within 1 ulp of the subnormal grid; exp(x) = +0 for
 *    x <= -103.972084 and for x = -inf;
 *  - exp(x) = +inf for x > 88.7228317 (where exp overflows) and x = +inf;
 *    exp(+-0) = 1 exactly; NaN in, NaN out.
 * A result depends only on x[i] and the variant, never on i or n (tails
 * give the same bits as the vector body).
 */
void dsc_k_exp(const dsc_kctx *k, float *y, const float *x, int64_t n);
/* k may be NULL (one thread, the best SIMD variant); otherwise at most k's
   thread count is used. Both use the SIMD variant's exp (see dsc_k_exp). */
void dsc_k_softmax(dsc_kctx *k, float *x, int64_t n, int64_t d);
void dsc_k_silu_mul(dsc_kctx *k, float *out, const float *g, const float *u, int64_t n);

#endif
