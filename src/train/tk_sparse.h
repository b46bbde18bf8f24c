/*
 * tk_sparse.h - sparse causal attention for DSA's sparse training stage
 * (spec §4.4, §4.6): each query attends only to the keys the lightning
 * indexer selected for it, the same set for every head (the selection is
 * per query token, spec §4.3 step 8).
 *
 * One head over one sequence of n tokens, with the strides of
 * dsc_op_attn_dims (ops.h) and the lse layout of dsc_tk_attn_fwd (tk.h), so
 * that it drops into the trainer where the dense kernel sits. The selected
 * sets come as sel (n, kk) int32: row t holds the key positions chosen for
 * query t (dsc_k_topk_set's output, ascending). An entry is USED when
 * 0 <= sel[t][j] <= t; -1 padding and future keys are skipped (the demo's
 * causal mask). The used entries of a row must be distinct (a key listed
 * twice would count twice); dsc_k_topk_set guarantees it.
 *
 *   fwd: S_j = scale * Q_t . K_{sel[t][j]}, P = softmax over the used j,
 *        O_t = sum_j P_j V_{sel[t][j]}, lse[t] = log sum_j exp(S_j).
 *        A query with no used entry gets O_t = 0, lse[t] = -INFINITY.
 *   bwd: P recomputed from lse; dP_j = dO_t . V_j, D = dO_t . O_t,
 *        dS_j = P_j (dP_j - D); dQ_t += scale sum_j dS_j K_j,
 *        dK_j += scale dS_j Q_t, dV_j += P_j dO_t (NULL skips one;
 *        gradients are ADDED).
 * With sel row t = {0..t} for every t this is dsc_op_attn_fwd/bwd.
 *
 * Determinism: queries run in order on the calling thread, so the
 * scatter-adds into dK, dV rows happen in a fixed order and the result does
 * not depend on how the caller spreads heads over threads. Dot products and
 * row sums are in double, the stored values fp32; exp in double. This is a
 * correctness-first kernel (O(n kk (dqk + dv)) per head, no GEMM tiles);
 * dsc_tks_fast_* below are the fp32 SIMD kernels checked against it.
 */
#ifndef DSC_TRAIN_TK_SPARSE_H
#define DSC_TRAIN_TK_SPARSE_H

#include <stdint.h>

#include "train/ops.h"

/* Floats of scratch one call needs for kk selected keys per query. */
int64_t dsc_tks_attn_scratch(int64_t kk);

void dsc_tks_attn_fwd(float *O, float *lse, const float *Q, const float *K, const float *V,
                      const int32_t *sel, int64_t kk, const dsc_op_attn_dims *d, float scale,
                      float *ws);
void dsc_tks_attn_bwd(float *dQ, float *dK, float *dV, const float *dO, const float *Q,
                      const float *K, const float *V, const float *O, const float *lse,
                      const int32_t *sel, int64_t kk, const dsc_op_attn_dims *d, float scale,
                      float *ws);

/*
 * The fast fp32 variant of the pair above, the one the trainer runs; the
 * double kernels stay as its oracle. Same contract (shapes, strides, lse
 * layout, the used-entry rule, gradients ADDED, NULL skips one), plus:
 *
 *   P (n, kk) row-major, may be NULL: P[t][j] = exp(S_j - lse[t]) (the
 *   fp32 lse just stored) for a used entry j of row t, 0 for the others
 *   (a row with no used entry is all 0). Summed over heads by the caller
 *   for the indexer's KL target.
 *
 * Arithmetic: per query the used K (and V) rows are read in place; each
 * score is an fp32 dot product over 16 explicit lanes with a fixed
 * reduction tree, the exps are dsc_k_exp, the softmax denominator is
 * summed in double, P V, dQ and the row updates of dK, dV are fp32 SIMD.
 * The lane layout is written out in C (no reassociation by the compiler),
 * so every ISA variant gives the same bits. The backward recomputes P
 * exactly as the forward wrote it (same scores, same fp32 lse, same exp).
 * Single-threaded, queries in order (deterministic scatter-adds into dK,
 * dV), no allocation; ws holds dsc_tks_fast_scratch(kk, dqk, dv) floats.
 */
int64_t dsc_tks_fast_scratch(int64_t kk, int64_t dqk, int64_t dv);

void dsc_tks_fast_fwd(float *O, float *lse, float *P, const float *Q, const float *K,
                      const float *V, const int32_t *sel, int64_t kk, const dsc_op_attn_dims *d,
                      float scale, float *ws);
void dsc_tks_fast_bwd(float *dQ, float *dK, float *dV, const float *dO, const float *Q,
                      const float *K, const float *V, const float *O, const float *lse,
                      const int32_t *sel, int64_t kk, const dsc_op_attn_dims *d, float scale,
                      float *ws);

#endif
