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
 * correctness-first kernel (O(n kk (dqk + dv)) per head, no GEMM tiles).
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

#endif
