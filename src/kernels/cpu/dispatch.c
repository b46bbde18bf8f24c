/*
 * dispatch.c - the fast kernels the model calls: weight matmul, fp32 GEMMs,
 * RMSNorm, exp, softmax, SiLU-gate.
 *
 * dsc_k_matmul has two paths:
 *  - m < GEMM_MIN_M (decode, small batches): one pass over W computing up to
 *    4 dot products per weight load (the SIMD table's matvec), threads over
 *    row ranges. Memory bound; each stored byte is read and converted once
 *    per 4 rows of x, from cache after the first.
 *  - m >= GEMM_MIN_M (prefill): each thread owns a range of W's rows and,
 *    one 128-row panel at a time, dequantizes it to fp32 in its scratch and
 *    multiplies x by it. The dequantization writes the panel straight into
 *    the GEMM micro-kernel's packed layout ([16-row group][cols][16]), so W
 *    is converted and packed in one pass and the micro-kernel streams it
 *    from L1 while x is read in place. F32 weights skip the copy and go
 *    from the mapped file to the single-threaded sgemm (OpenBLAS or built-in).
 *    The packed path does not go through OpenBLAS: measured on the dev
 *    machine (Zen 5, OpenBLAS 0.3.21, BF16 2048x2048, one thread), handing
 *    the fp32 panel to cblas_sgemm instead was 1.7x slower for m = 16..64
 *    (OpenBLAS repacks the panel on every call, ~0.2 ns per weight) and
 *    1.5x slower at m = 512 (125 vs 188 GFLOP/s).
 * All threading is dsc_parallel_for over an explicit part index t with the
 * cyclic schedule, so part t always uses scratch slot t (no
 * omp_get_thread_num); with one thread, or without OpenMP, the parts simply
 * run in turn on the caller, with no OpenMP region at all.
 */
#include <math.h>
#include <string.h>

#include "kernels/cpu/kcpu.h"
#include "util/util.h"

/* From this many rows of x on, dequantize-and-pack + GEMM beats the
   matvec. Measured on 2048x2048 BF16 and FP8, one thread: the two tie at
   m = 14 with AVX-512 and at m = 16 with AVX2; at m = 32 the GEMM path is
   1.3-1.8x faster. (The packed path's cost steps at multiples of the
   micro-kernel's 8 or 4 rows.) */
#define GEMM_MIN_M 16

/* Row-range boundaries are kept at multiples of this (the packed panel's
   row-group height), so threads do not share y's cache lines more than
   necessary and every panel group starts on a group boundary. */
#define ROW_ALIGN 16

/* matvec kernels take at most this many vectors per weight pass */
#define MATVEC_MAX_M 4
/* W rows one matvec call covers before moving to the next group of x */
#define MATVEC_ROW_BLOCK 16

/* Blocking of the packed GEMM: a KC-deep slice of a 128-row panel is 128
   KiB ([8 groups][KC][16]) and a block of MC rows of x is another 128 KiB,
   so both stay in L2 while the micro-kernel sweeps them; x is read from
   memory once per panel. MC is a multiple of every table's gemm_mr. */
#define KC 256
#define MC 128

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* C[m][n] = A[m][k] . B^T for B packed by ops->pack_panel ([g][k][16]). */
static void gemm_packed(const dsc_simd_ops *ops, int64_t m, int64_t n, int64_t k, const float *a,
                        int64_t lda, const float *bpk, float *c, int64_t ldc) {
    const int64_t mr = ops->gemm_mr;
    for (int64_t i0 = 0; i0 < m; i0 += MC) {
        const int64_t ie = min64(m, i0 + MC);
        for (int64_t k0 = 0; k0 < k; k0 += KC) {
            const int64_t kc = min64(KC, k - k0);
            for (int64_t j0 = 0; j0 < n; j0 += DSC_GEMM_NR) {
                const int64_t nr = min64(DSC_GEMM_NR, n - j0);
                const float *bg = bpk + ((size_t)(j0 / DSC_GEMM_NR) * (size_t)k + (size_t)k0) * DSC_GEMM_NR;
                for (int64_t i = i0; i < ie; i += mr)
                    ops->gemm_ukernel(kc, a + (size_t)i * (size_t)lda + (size_t)k0, lda, bg,
                                      c + (size_t)i * (size_t)ldc + (size_t)j0, ldc, min64(mr, ie - i),
                                      nr, k0 > 0);
            }
        }
    }
}

/* y[i][r] = x_i . W_r for rows r in [r0, r1) of W and m vectors x (row
   stride W's cols; y's stride ldy), at most MATVEC_MAX_M per weight pass. */
static void matvec_groups(const dsc_simd_ops *ops, const dsc_wmat *w, const float *x, int64_t m,
                          int64_t r0, int64_t r1, float *y, int64_t ldy) {
    for (int64_t i0 = 0; i0 < m; i0 += MATVEC_MAX_M)
        ops->matvec(w, x + (size_t)i0 * (size_t)w->cols, min64(MATVEC_MAX_M, m - i0), r0, r1,
                    y + (size_t)i0 * (size_t)ldy, ldy);
}

/* One dsc_k_matmul call, split into nt parts of W's rows. */
typedef struct {
    const dsc_simd_ops *ops;
    dsc_kctx *k;
    float *y;
    const float *x;
    const dsc_wmat *w;
    int64_t m;
    int nt;
} matmul_job;

/* Part t of the matvec path: every group of x rows sweeps a short block of
   W rows while that block is still in L1/L2, so W streams from memory once. */
static void matvec_part(void *arg, int64_t t) {
    const matmul_job *j = arg;
    const int64_t rows = j->w->rows;
    int64_t lo, hi;
    dsc_kcpu_split(rows, j->nt, (int)t, ROW_ALIGN, &lo, &hi);
    for (int64_t rb = lo; rb < hi; rb += MATVEC_ROW_BLOCK)
        matvec_groups(j->ops, j->w, j->x, j->m, rb, min64(rb + MATVEC_ROW_BLOCK, hi), j->y, rows);
}

/* Part t of the GEMM path (uses scratch slot t). */
static void gemm_part(void *arg, int64_t t) {
    const matmul_job *j = arg;
    const dsc_wmat *w = j->w;
    const int64_t rows = w->rows, cols = w->cols;
    int64_t lo, hi;
    dsc_kcpu_split(rows, j->nt, (int)t, ROW_ALIGN, &lo, &hi);
    if (hi <= lo) return;
    if (w->dtype == DSC_F32) {
        dsc_kcpu_sgemm_nt_1t(j->ops, j->m, hi - lo, cols, j->x, cols,
                             (const float *)w->data + (size_t)lo * (size_t)cols, cols, j->y + lo,
                             rows, 0);
        return;
    }
    float *panel = j->k->scratch + (size_t)t * (size_t)j->k->panel_floats;
    for (int64_t p = lo; p < hi; p += j->k->panel_rows) {
        int64_t nr = min64(j->k->panel_rows, hi - p);
        j->ops->pack_panel(w, p, nr, panel);
        gemm_packed(j->ops, j->m, nr, cols, j->x, cols, panel, j->y + p, rows);
    }
}

void dsc_k_matmul(dsc_kctx *k, float *y, const float *x, const dsc_wmat *w, int64_t m) {
    const int64_t rows = w->rows, cols = w->cols;
    if (m <= 0 || rows <= 0) return;
    if (cols <= 0) {
        memset(y, 0, (size_t)m * (size_t)rows * sizeof(float));
        return;
    }
    matmul_job j = {k->ops, k, y, x, w, m,
                    dsc_kctx_threads_for(k, (double)m * (double)rows * (double)cols)};
    const int f32 = w->dtype == DSC_F32;
    /* A weight wider than the context was sized for has no panel scratch;
       it still gets a correct (slower) answer from the matvec path. */
    const int have_panel = cols <= k->max_cols && k->panel_rows > 0;
    dsc_parallel_for(j.nt, j.nt, DSC_SCHED_CYCLIC,
                     m < GEMM_MIN_M || (!f32 && !have_panel) ? matvec_part : gemm_part, &j);
}

/* One fp32 GEMM call (nn, nt or tn), split into nt parts. */
typedef enum { GEMM_NN, GEMM_NT, GEMM_TN } gemm_form;
typedef struct {
    const dsc_simd_ops *ops;
    gemm_form form;
    int64_t m, n, kk, lda, ldb, ldc;
    const float *a, *b;
    float *c;
    int accumulate, nt;
} sgemm_job;

/*
 * C = A B^T with few rows of A (decode's attention scores: a token's heads
 * against the cached latents, and the W^UV absorption) skips BLAS, which
 * packs B on every call: here it is the SIMD matvec over B's rows (B
 * row-contiguous, as the latent cache and kv_b are), A's rows copied
 * contiguous when strided (at most SMALL_M x SMALL_K floats). Measured on
 * build/long-run's decode, one thread: 88-95 -> 79-80 us per token. The nn
 * form stays on BLAS: a packed micro-kernel path was slower there (80 -> 89
 * us), and so was a plain loop of row updates. Not for accumulating calls (none of
 * decode's are).
 */
#define SMALL_M 8
#define SMALL_K 1024

static int small_nt_ok(const sgemm_job *j) {
    return j->form == GEMM_NT && j->m <= SMALL_M && j->kk <= SMALL_K && j->ldb == j->kk &&
           !j->accumulate;
}

static void small_nt(const dsc_simd_ops *ops, int64_t m, int64_t n, int64_t kk, const float *a,
                     int64_t lda, const float *b, float *c, int64_t ldc) {
    float ac[SMALL_M * SMALL_K];
    if (lda != kk) {
        for (int64_t i = 0; i < m; i++)
            memcpy(ac + i * kk, a + (size_t)i * (size_t)lda, (size_t)kk * sizeof(float));
        a = ac;
    }
    const dsc_wmat w = {DSC_F32, n, kk, b, NULL, 0};
    matvec_groups(ops, &w, a, m, 0, n, c, ldc);
}

/* nn / nt: threads split C's larger dimension, columns (rows of B for nt,
   columns of B for nn) when n >= m, else rows of A. tn: columns of C
   (columns of B), so every thread reads all of A and each element is summed
   by one thread in one order. */
static void sgemm_part(void *arg, int64_t t) {
    const sgemm_job *j = arg;
    const int split_n = j->form == GEMM_TN || j->n >= j->m;
    int64_t lo, hi;
    dsc_kcpu_split(split_n ? j->n : j->m, j->nt, (int)t, ROW_ALIGN, &lo, &hi);
    if (hi <= lo) return;
    const float *at = j->a, *bt = j->b;
    float *ct = j->c;
    int64_t mt = j->m, ntt = j->n;
    if (split_n) {
        bt = j->form == GEMM_NT ? j->b + (size_t)lo * (size_t)j->ldb : j->b + lo;
        ct = j->c + lo;
        ntt = hi - lo;
    } else {
        at = j->a + (size_t)lo * (size_t)j->lda;
        ct = j->c + (size_t)lo * (size_t)j->ldc;
        mt = hi - lo;
    }
    if (small_nt_ok(j)) {
        small_nt(j->ops, mt, ntt, j->kk, at, j->lda, bt, ct, j->ldc);
        return;
    }
    switch (j->form) {
    case GEMM_NT:
        dsc_kcpu_sgemm_nt_1t(j->ops, mt, ntt, j->kk, at, j->lda, bt, j->ldb, ct, j->ldc,
                             j->accumulate);
        break;
    case GEMM_NN:
        dsc_kcpu_sgemm_nn_1t(j->ops, mt, ntt, j->kk, at, j->lda, bt, j->ldb, ct, j->ldc,
                             j->accumulate);
        break;
    case GEMM_TN:
        dsc_kcpu_sgemm_tn_1t(j->ops, mt, ntt, j->kk, at, j->lda, bt, j->ldb, ct, j->ldc,
                             j->accumulate);
        break;
    }
}

static void sgemm_run(dsc_kctx *k, gemm_form form, int64_t m, int64_t n, int64_t kk,
                      const float *a, int64_t lda, const float *b, int64_t ldb, float *c,
                      int64_t ldc, int accumulate) {
    if (m <= 0 || n <= 0) return;
    sgemm_job j = {k ? k->ops : dsc_simd_best(), form, m, n, kk, lda, ldb, ldc, a, b, c,
                   accumulate, dsc_kctx_threads_for(k, (double)m * (double)n * (double)kk)};
    dsc_parallel_for(j.nt, j.nt, DSC_SCHED_CYCLIC, sgemm_part, &j);
}

void dsc_k_sgemm_nt(dsc_kctx *k, int64_t m, int64_t n, int64_t kk, const float *a, int64_t lda,
                    const float *b, int64_t ldb, float *c, int64_t ldc, int accumulate) {
    sgemm_run(k, GEMM_NT, m, n, kk, a, lda, b, ldb, c, ldc, accumulate);
}

void dsc_k_sgemm_nn(dsc_kctx *k, int64_t m, int64_t n, int64_t kk, const float *a, int64_t lda,
                    const float *b, int64_t ldb, float *c, int64_t ldc, int accumulate) {
    sgemm_run(k, GEMM_NN, m, n, kk, a, lda, b, ldb, c, ldc, accumulate);
}

void dsc_k_sgemm_tn(dsc_kctx *k, int64_t m, int64_t n, int64_t kk, const float *a, int64_t lda,
                    const float *b, int64_t ldb, float *c, int64_t ldc, int accumulate) {
    sgemm_run(k, GEMM_TN, m, n, kk, a, lda, b, ldb, c, ldc, accumulate);
}

/* ---------------- element-wise and row-wise ops ---------------- */

/* Columns of the norm weight converted per step (a stack buffer). */
#define VEC_CHUNK 256

/* w[i0 .. i0+n) of a norm weight as fp32: flat indexing, valid for both the
   1 x d and d x 1 shapes (see dsc_ref_rmsnorm). */
static void vec_chunk(const dsc_wmat *w, int64_t i0, int64_t n, float *out) {
    switch (w->dtype) {
    case DSC_F32: memcpy(out, (const float *)w->data + i0, (size_t)n * sizeof(float)); break;
    case DSC_BF16:
        for (int64_t i = 0; i < n; i++) out[i] = dsc_bf16_to_f32(((const uint16_t *)w->data)[i0 + i]);
        break;
    case DSC_F16:
        for (int64_t i = 0; i < n; i++) out[i] = dsc_f16_to_f32(((const uint16_t *)w->data)[i0 + i]);
        break;
    case DSC_F8_E4M3:
        for (int64_t i = 0; i < n; i++)
            out[i] = dsc_e4m3_to_f32(((const uint8_t *)w->data)[i0 + i]) *
                     w->scale[(i0 + i) / DSC_FP8_BLOCK];
        break;
    }
}

/* One row. The sum of squares runs in 8 independent double lanes: as fast
   as fp32 here (the loop is bound by the loads) and exact enough that the
   only visible error is the final fp32 roundings. */
static void rmsnorm_row(float *y, const float *x, const dsc_wmat *w, int64_t d, float eps) {
    double s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= d; i += 8)
        for (int j = 0; j < 8; j++) s[j] += (double)x[i + j] * (double)x[i + j];
    for (; i < d; i++) s[0] += (double)x[i] * (double)x[i];
    double ss = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
    const float inv = (float)(1.0 / sqrt(ss / (double)d + (double)eps));
    float wb[VEC_CHUNK];
    for (int64_t c0 = 0; c0 < d; c0 += VEC_CHUNK) {
        int64_t n = min64(VEC_CHUNK, d - c0);
        vec_chunk(w, c0, n, wb);
        /* element c is read before it is written, so y may alias x */
        for (int64_t c = 0; c < n; c++) y[c0 + c] = wb[c] * (x[c0 + c] * inv);
    }
}

typedef struct {
    float *y;
    const float *x;
    const dsc_wmat *w;
    int64_t d;
    float eps;
} rmsnorm_job;

static void rmsnorm_item(void *arg, int64_t r) {
    const rmsnorm_job *j = arg;
    rmsnorm_row(j->y + (size_t)r * (size_t)j->d, j->x + (size_t)r * (size_t)j->d, j->w, j->d,
                j->eps);
}

void dsc_k_rmsnorm(dsc_kctx *k, float *y, const float *x, const dsc_wmat *w, int64_t n,
                   int64_t d, float eps) {
    rmsnorm_job j = {y, x, w, d, eps};
    dsc_parallel_for(dsc_kctx_threads_for(k, (double)n * (double)d), n, DSC_SCHED_BLOCKS,
                     rmsnorm_item, &j);
}

/* Rows shorter than this product are not worth a thread fork. */
#define ROWWISE_PARALLEL_MIN 32768

void dsc_k_exp(const dsc_kctx *k, float *y, const float *x, int64_t n) {
    if (n > 0) (k ? k->ops : dsc_simd_best())->vexp(y, x, n);
}

/* One row: x - max (<= 0, so exp cannot overflow) into the row, the SIMD
   exp in place, then the sum in double (8 lanes, as in rmsnorm_row) so a
   long attention row (100k+ keys) loses nothing to the order of addition. */
static void softmax_row(const dsc_simd_ops *ops, float *x, int64_t d) {
    float mx = -INFINITY;
    for (int64_t i = 0; i < d; i++) mx = x[i] > mx ? x[i] : mx;
    if (mx == -INFINITY) {
        /* all -inf (or empty): defined as all zero, not 0/0 */
        memset(x, 0, (size_t)d * sizeof(float));
        return;
    }
    for (int64_t i = 0; i < d; i++) x[i] -= mx; /* -inf stays -inf: exp gives 0 */
    ops->vexp(x, x, d);
    double s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= d; i += 8)
        for (int j = 0; j < 8; j++) s[j] += (double)x[i + j];
    for (; i < d; i++) s[0] += (double)x[i];
    const double sum = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
    const float inv = (float)(1.0 / sum);
    for (i = 0; i < d; i++) x[i] *= inv;
}

typedef struct {
    const dsc_simd_ops *ops;
    float *x;
    int64_t d;
} softmax_job;

static void softmax_item(void *arg, int64_t r) {
    const softmax_job *j = arg;
    softmax_row(j->ops, j->x + (size_t)r * (size_t)j->d, j->d);
}

/* Threads for a row-wise op over `work` elements: all of them from
   ROWWISE_PARALLEL_MIN elements on, else one. */
static int rowwise_threads(const dsc_kctx *k, double work) {
    return k && work >= ROWWISE_PARALLEL_MIN ? k->n_threads : 1;
}

void dsc_k_softmax(dsc_kctx *k, float *x, int64_t n, int64_t d) {
    softmax_job j = {k ? k->ops : dsc_simd_best(), x, d};
    dsc_parallel_for(rowwise_threads(k, (double)n * (double)d), n, DSC_SCHED_BLOCKS,
                     softmax_item, &j);
}

/* silu(g) = g * sigmoid(g), with sigmoid from exp(-|g|) so the exponential
   never overflows: g / (1 + exp(-g)) would give 0 for g < -88.7, where the
   true value is still a normal float. exp(-|g|) runs through the SIMD exp a
   stack chunk at a time (item i is chunk i); out may alias g or u (each
   element is read before it is written). */
typedef struct {
    const dsc_simd_ops *ops;
    float *out;
    const float *g, *u;
    int64_t n;
} silu_mul_job;

static void silu_mul_item(void *arg, int64_t i0) {
    const silu_mul_job *j = arg;
    const int64_t c0 = i0 * VEC_CHUNK, m = min64(VEC_CHUNK, j->n - c0);
    if (m <= 0) return; /* never (i0 < ceil(n / VEC_CHUNK)); tells GCC e[] gets written */
    const float *g = j->g + c0, *u = j->u + c0;
    float e[VEC_CHUNK];
    for (int64_t i = 0; i < m; i++) e[i] = -fabsf(g[i]);
    j->ops->vexp(e, e, m);
    /* sigmoid(g) = 1 / (1 + e) for g >= 0, e / (1 + e) below: one division
       with a selected numerator, so the loop vectorizes */
    for (int64_t i = 0; i < m; i++) {
        float gv = g[i];
        float sig = (gv >= 0.0f ? 1.0f : e[i]) / (1.0f + e[i]);
        j->out[c0 + i] = gv * sig * u[i];
    }
}

void dsc_k_silu_mul(dsc_kctx *k, float *out, const float *g, const float *u, int64_t n) {
    silu_mul_job j = {k ? k->ops : dsc_simd_best(), out, g, u, n};
    dsc_parallel_for(rowwise_threads(k, (double)n / 4.0), (n + VEC_CHUNK - 1) / VEC_CHUNK,
                     DSC_SCHED_BLOCKS, silu_mul_item, &j);
}

/* ---- row-range products for a caller's own parallel loop (MLA decode) ---- */

void dsc_k_matvec_rows(const dsc_kctx *k, const dsc_wmat *w, int64_t r0, int64_t r1,
                       const float *x, int64_t m, float *y, int64_t ldy) {
    const int64_t cols = w->cols;
    const int fp8 = w->dtype == DSC_F8_E4M3;
    if (r1 <= r0 || m <= 0) return;
    if (!fp8 || r0 % DSC_FP8_BLOCK == 0) {
        /* a view starting at row r0: the SIMD matvec indexes y by row, and
           an FP8 view must start on a scale-block boundary */
        dsc_wmat sub = *w;
        sub.data = (const char *)w->data + (size_t)r0 * (size_t)cols * dsc_dtype_size(w->dtype);
        sub.rows = r1 - r0;
        if (fp8) sub.scale = w->scale + (size_t)(r0 / DSC_FP8_BLOCK) * (size_t)w->scale_cols;
        matvec_groups(k->ops, &sub, x, m, 0, r1 - r0, y, ldy);
        return;
    }
    /* FP8 rows off a block boundary: through the exact reference dequant */
    float buf[256];
    for (int64_t r = r0; r < r1; r++)
        for (int64_t i = 0; i < m; i++) {
            const float *xi = x + (size_t)i * (size_t)cols;
            float acc = 0.0f;
            for (int64_t c0 = 0; c0 < cols; c0 += 256) {
                int64_t n = min64(256, cols - c0);
                dsc_wmat_row(w, r, c0, n, buf);
                for (int64_t c = 0; c < n; c++) acc += xi[c0 + c] * buf[c];
            }
            y[(size_t)i * (size_t)ldy + (size_t)(r - r0)] = acc;
        }
}

/* One axpy of a dequantised chunk into a query's output; restrict lets the
   compiler vectorize it. */
static void axpy(float *restrict y, const float *restrict v, float a, int64_t n) {
    for (int64_t c = 0; c < n; c++) y[c] += a * v[c];
}

void dsc_k_matvec_t(const dsc_kctx *k, const dsc_wmat *w, int64_t r0, int64_t nr,
                    const float *x, int64_t ldx, int64_t m, float *y, int64_t ldy) {
    (void)k;
    const int64_t cols = w->cols;
    for (int64_t i = 0; i < m; i++) memset(y + (size_t)i * (size_t)ldy, 0, (size_t)cols * sizeof *y);
    float buf[256];
    for (int64_t r = 0; r < nr; r++)
        for (int64_t c0 = 0; c0 < cols; c0 += 256) {
            int64_t n = min64(256, cols - c0);
            if (w->dtype == DSC_BF16) {
                /* inline widening: BF16 is the top half of an fp32 */
                const uint16_t *src = (const uint16_t *)w->data +
                                      (size_t)(r0 + r) * (size_t)cols + (size_t)c0;
                for (int64_t c = 0; c < n; c++) {
                    uint32_t u = (uint32_t)src[c] << 16;
                    memcpy(&buf[c], &u, sizeof u);
                }
            } else {
                dsc_wmat_row(w, r0 + r, c0, n, buf);
            }
            for (int64_t i = 0; i < m; i++)
                axpy(y + (size_t)i * (size_t)ldy + (size_t)c0, buf, x[(size_t)i * (size_t)ldx + (size_t)r], n);
        }
}

/* ---- top-k as a set, in O(n): the DSA selection over long contexts ---- */

/* k-th largest of v[0..n) (1-based k), reordering v: Hoare-style
   quickselect with a middle pivot. */
static float kth_largest(float *v, int64_t n, int64_t k) {
    int64_t lo = 0, hi = n - 1, want = k - 1;
    while (lo < hi) {
        float pivot = v[lo + (hi - lo) / 2];
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (v[i] > pivot) i++;
            while (v[j] < pivot) j--;
            if (i <= j) {
                float tmp = v[i];
                v[i] = v[j];
                v[j] = tmp;
                i++;
                j--;
            }
        }
        if (want <= j) hi = j;
        else if (want >= i) lo = i;
        else return v[want];
    }
    return v[want];
}

/* idx = in ascending order every index i in [i0, n) with x[i] above thr,
   and those equal to it while *ties lasts (*ties is decremented for each);
   returns their count. The ties are tested after the count: a row can be
   mostly ties, and once the count is spent the branch is predictable
   (counts in locals: through the pointer the loop ran ~5x slower). */
static int64_t topk_emit(const float *x, int64_t i0, int64_t n, float thr, int64_t *ties,
                         int32_t *idx) {
    int64_t m = 0, left = *ties;
    for (int64_t i = i0; i < n; i++) {
        float v = x[i];
        if (v > thr) {
            idx[m++] = (int32_t)i;
        } else if (left > 0 && v == thr) {
            idx[m++] = (int32_t)i;
            left--;
        }
    }
    *ties = left;
    return m;
}

/* The top k of a long row when k is small against it, from bucket maxima.
   The row's first nt * R * TK_W values form nt tiles of R rows of TK_W
   (R = 16, or 8 or 4 on shorter rows, so that there are >= 8k buckets when
   the row allows); bucket (g, j) is column j of tile g, so all bucket
   maxima come from element-wise maxima of contiguous rows (a loop the
   compiler vectorizes). The k-th largest bucket maximum lb is a lower bound
   on the row's k-th largest value (k buckets hold a value >= lb), so the
   exact threshold is selected among the values >= lb of the buckets whose
   maximum reaches lb and of the tail (typically ~k buckets: k * R values),
   and only the buckets reaching it are swept to list the result, in
   ascending order ((tile, row, column) order is index order). Returns -1,
   having written nothing to idx, when that does not pay (short row, k not
   small, a row heavy in -inf, NaN or ties above the k-th value); the
   caller then selects from the whole row. */
#define TK_W 16
static int64_t topk_buckets(const float *x, int64_t n, int64_t k, int32_t *idx, float *scratch) {
    int R = 16;
    while (R > 4 && n / R < 8 * k) R /= 2;
    int64_t tile = (int64_t)R * TK_W, nt = n / tile, nb = nt * TK_W, tail0 = nt * tile;
    if (nb < 4 * k) return -1;
    float *bm = scratch, *cand = scratch + nb; /* nb maxima, then n - nb values */
    for (int64_t g = 0; g < nt; g++) {
        const float *t = x + g * tile;
        float mx[TK_W];
        for (int j = 0; j < TK_W; j++) mx[j] = -INFINITY;
        for (int r = 0; r < R; r++)
            for (int j = 0; j < TK_W; j++) {
                float v = t[r * TK_W + j];
                mx[j] = v > mx[j] ? v : mx[j]; /* NaN never wins */
            }
        memcpy(bm + g * TK_W, mx, sizeof mx);
    }
    memcpy(cand, bm, (size_t)nb * sizeof *bm);
    float lb = kth_largest(cand, nb, k);
    if (!(lb > -INFINITY)) return -1;
    int64_t reach = 0;
    for (int64_t b = 0; b < nb; b++) reach += bm[b] >= lb;
    if (reach * R + (n - tail0) > (n - nb) / 2) {
        /* most buckets reach lb: a row of ties at lb (a ReLU'd index score
           of 0 tops it). When fewer than k values exceed lb, lb is the
           threshold; else the whole row decides */
        int64_t above = 0;
        for (int64_t i = 0; i < n; i++) above += x[i] > lb;
        if (above >= k) return -1;
        int64_t ties = k - above;
        return topk_emit(x, 0, n, lb, &ties, idx);
    }
    int64_t nc = 0;
    for (int64_t b = 0; b < nb; b++) {
        if (bm[b] < lb) continue;
        const float *col = x + (b / TK_W) * tile + b % TK_W;
        for (int r = 0; r < R; r++) {
            float v = col[r * TK_W];
            cand[nc] = v;
            nc += v >= lb;
        }
    }
    for (int64_t i = tail0; i < n; i++) {
        cand[nc] = x[i];
        nc += x[i] >= lb;
    }
    float thr = kth_largest(cand, nc, k);
    int64_t above = 0;
    for (int64_t i = 0; i < nc; i++) above += cand[i] > thr;
    int64_t ties = k - above, m = 0;
    /* thr >= lb > -inf: every NaN ranks below it, none is taken */
    for (int64_t g = 0; g < nt; g++) {
        int js[TK_W], nj = 0;
        for (int j = 0; j < TK_W; j++)
            if (bm[g * TK_W + j] >= thr) js[nj++] = j;
        for (int r = 0; r < R && nj; r++)
            for (int q = 0; q < nj; q++) {
                int64_t i = g * tile + r * TK_W + js[q];
                if (x[i] > thr) {
                    idx[m++] = (int32_t)i;
                } else if (ties > 0 && x[i] == thr) {
                    idx[m++] = (int32_t)i;
                    ties--;
                }
            }
    }
    return m + topk_emit(x, tail0, n, thr, &ties, idx + m);
}

int64_t dsc_k_topk_set(const float *x, int64_t n, int64_t k, int32_t *idx, float *scratch) {
    if (k <= 0 || n <= 0) return 0;
    if (k >= n) {
        for (int64_t i = 0; i < n; i++) idx[i] = (int32_t)i;
        return n;
    }
    int64_t got = topk_buckets(x, n, k, idx, scratch);
    if (got >= 0) return got;
    /* the whole row: NaN ranks below everything, -inf in the copy */
    for (int64_t i = 0; i < n; i++) scratch[i] = isnan(x[i]) ? -INFINITY : x[i];
    float thr = kth_largest(scratch, n, k);
    int64_t above = 0;
    for (int64_t i = 0; i < n; i++) above += scratch[i] > thr;
    /* in ascending order: everything above thr, threshold ties by lower
       index; NaN (below -inf) only when the numbers run out (thr = -inf) */
    int64_t ties = k - above, m = topk_emit(x, 0, n, thr, &ties, idx);
    if (ties > 0) {
        for (int64_t i = 0; i < n && ties > 0; i++)
            if (isnan(x[i])) {
                idx[m++] = (int32_t)i;
                ties--;
            }
        /* ascending again: insertion of the NaN entries among the rest */
        for (int64_t i = 1; i < m; i++) {
            int32_t v = idx[i];
            int64_t j = i - 1;
            while (j >= 0 && idx[j] > v) {
                idx[j + 1] = idx[j];
                j--;
            }
            idx[j + 1] = v;
        }
    }
    return m;
}
