/*
 * idx_target.h - fast fp32 kernels for the rest of the DSA indexer's
 * training path (spec §4.6): the MLA attention's per-head log-normaliser
 * and the head-summed probabilities P that the indexer's KL is trained
 * against, the KL itself (loss and dI), and the recall metric.
 *
 * The scalar references stay the oracle: dsc_op_idx_kl_* and
 * dsc_op_idx_recall_* (idx_ops.h) for 3 and 4, and the double loops of
 * attn_dsa.c's scores_and_target for 1 and 2; tests/unit/test_idx_target.c
 * checks every kernel here against fp64 versions of them. What differs is
 * arithmetic, not meaning: scores are fp32 GEMM tiles, exps are dsc_k_exp
 * (fp32, <= 2 ulp), the sums that make a loss or a normaliser are in double.
 *
 * Layout (one sequence of n tokens, causal; as the trainer stores MLA's
 * activations, see attn_dsa.c):
 *   Q    (n, ldq)      query t of head h: Q + t*ldq + h*dqk   (dqk floats)
 *   K    per head      key s of head h:   K + h*kstride + s*ldk
 *   lse  (H, n)        head h, query t:   lse[h*n + t]
 *   P    (n, n)        row t = query, column s = key
 *
 * Threads: each call takes n_threads (< 1 counts as 1) and runs an OpenMP
 * team of at most that many (one when the work is small); per-thread
 * scratch comes from the caller. Every result is independent of the thread
 * count, bit for bit (fixed summation orders, no reductions across
 * threads).
 */
#ifndef DSC_TRAIN_IDX_TARGET_H
#define DSC_TRAIN_IDX_TARGET_H

#include <stdint.h>

/* The MLA attention that the target is read from. */
typedef struct {
    int64_t n;        /* tokens (queries = keys)                         */
    int64_t heads;    /* H                                               */
    int64_t dqk;      /* query/key dims of one head                      */
    int64_t ldq;      /* row stride of Q (>= heads * dqk)                */
    int64_t ldk;      /* row stride of K (>= dqk)                        */
    int64_t kstride;  /* floats from head h's K to head h+1's (>= n*ldk) */
} dsc_idxt_dims;

/* Floats of scratch dsc_idxt_attn_lse / dsc_idxt_attn_target need:
   one (64, n) score tile per thread. */
int64_t dsc_idxt_attn_scratch(const dsc_idxt_dims *d, int n_threads);

/*
 * 1. lse[h*n + t] = log sum_{s <= t} exp(scale q_h[t] . k_h[s]) for every
 *    head h and query t: the value dsc_tk_attn_fwd writes (same tiles and
 *    the same row arithmetic: the scores of a 64-query tile against its
 *    visible keys by GEMM, fp32 max, dsc_k_exp, the row sum in double).
 *    ws: dsc_idxt_attn_scratch floats.
 */
void dsc_idxt_attn_lse(float *lse, const float *Q, const float *K, const dsc_idxt_dims *d,
                       float scale, int n_threads, float *ws);

/*
 * 2. P[t][s] = sum_h exp(scale q_h[t] . k_h[s] - lse[h*n + t]) for s <= t,
 *    0 for s > t (P is overwritten, all n*n entries): the attention
 *    probabilities summed over heads, as the attention's backward
 *    recomputes them (each head's exp as dsc_tk_attn_bwd computes it),
 *    heads added in fp32 in the order 0..H-1. ws: dsc_idxt_attn_scratch.
 */
void dsc_idxt_attn_target(float *P, const float *Q, const float *K, const float *lse,
                          const dsc_idxt_dims *d, float scale, int n_threads, float *ws);

/*
 * 1+2 in one pass, for when the lse is not saved (the sparse stage's dense
 * recall): lse as 1 (the same bits), and P with each head's probability
 * taken as the row's exps over their sum, exp(scale s - mx) / sum, from the
 * same score tile (one GEMM and one exp per entry instead of two; equal to
 * 2's exp(scale s - lse) up to a few ulp). ws: dsc_idxt_attn_scratch.
 */
void dsc_idxt_attn_lse_target(float *lse, float *P, const float *Q, const float *K,
                              const dsc_idxt_dims *d, float scale, int n_threads, float *ws);

/*
 * 3. The indexer's KL loss: the contract of dsc_op_idx_kl_f32 (idx_ops.h):
 *    I, P (n, m), visible = I > -INFINITY, counted rows (some visible
 *    entry with P > 0: sum_V P > 0, as P >= 0 is required), 0 log 0 = 0; returns dscale * mean KL over
 *    the counted rows (0 when none); dI (may be NULL) gets
 *    (q - p) * dscale / count ADDED on the visible entries of counted
 *    rows, nothing elsewhere (not even a +0). row_ws: n doubles (the
 *    per-row terms, summed in row order, so the loss is the same at any
 *    thread count).
 *    Arithmetic: the softmax exps are dsc_k_exp (fp32, <= 2 ulp; their
 *    sum is in double, so lse carries ~1e-7 absolute error at most and the
 *    gradient's q ~1e-6 relative), the log of P is a double-precision
 *    polynomial (~1e-15; an fp32 log would put eps * |log P| ~ 1e-6 into
 *    every term, a large relative error once the KL gets small), every
 *    term and sum in double.
 */
double dsc_idxt_kl(float *dI, const float *I, const float *P, int64_t n, int64_t m,
                   double dscale, int n_threads, double *row_ws);

/* Doubles of scratch dsc_idxt_recall needs: the per-row values and one
   row of selection keys per thread. */
int64_t dsc_idxt_recall_scratch(int64_t n, int64_t m, int n_threads);

/*
 * 4. The recall of the indexer's top-k: the value of dsc_op_idx_recall_f32
 *    (idx_ops.h; per_query not offered): A_t by I with ties to the lower
 *    column (dsc_k_topk_set's rule), B_t's mass as the sum of the k_t
 *    largest P. Both thresholds come from a radix selection on the fp32
 *    bit patterns (O(m) per row, no sorting, exact: the same k-th value
 *    as the reference's quickselect, -0 == +0); the sums are in double.
 *    A row whose visible set all fits (k_t = |V_t|) has recall exactly 1.
 *    ws: dsc_idxt_recall_scratch doubles.
 */
double dsc_idxt_recall(const float *I, const float *P, int64_t n, int64_t m, int64_t k,
                       int n_threads, double *ws);

/* Uint32s of scratch dsc_idxt_select needs: three rows per thread. */
int64_t dsc_idxt_select_scratch(int64_t n, int n_threads);

/*
 * 5. DSA's causal selection: row t of sel (n, kk) gets the kk largest of
 *    I[t][0..t] (I dense (n, n), row stride n) as a set, the result of
 *    dsc_k_topk_set(I + t*n, t + 1, kk, ...): positions ascending, ties at
 *    the boundary to the LOWER position, NaN below every number; all t+1
 *    positions when t + 1 <= kk; the rest of the row -1. By the radix
 *    selection of 4 (O(t) per row, no sorting) over candidates: the keys at or
 *    above the previous row's threshold when there are at least kk of them
 *    (rows of I change little from one query to the next), else all.
 *    ws: dsc_idxt_select_scratch.
 */
void dsc_idxt_select(int32_t *sel, const float *I, int64_t n, int64_t kk, int n_threads,
                     uint32_t *ws);

#endif
