/*
 * tk.h - the fast fp32 training kernels the trainer runs: causal attention
 * (forward and backward) on GEMM tiles, fused cross-entropy, RMSNorm and
 * SwiGLU with the SIMD exp.
 *
 * Each has the same contract as its scalar reference in ops.h (dsc_op_*),
 * which stays the oracle: tests/unit/test_tk.c checks every kernel here
 * against the fp64 reference. What differs is arithmetic, not meaning:
 * sums are fp32 inside GEMM tiles and SIMD lanes (attention row sums and
 * the loss stay in double), exp is dsc_k_exp.
 *
 * Threads: the row-wise ops take the kernel context's thread count; the
 * attention kernels work on one head on the calling thread (the trainer
 * runs heads in parallel) and use the caller's scratch.
 */
#ifndef DSC_TRAIN_TK_H
#define DSC_TRAIN_TK_H

#include <stdint.h>

#include "kernels/kernels.h"
#include "train/ops.h"

/* Query rows per attention tile: the score tile is (DSC_TK_QB, keys). */
#define DSC_TK_QB 64

/* Floats of scratch one attention call needs for up to n keys. */
int64_t dsc_tk_attn_scratch(int64_t n);

/*
 * One causal head, as dsc_op_attn_fwd / dsc_op_attn_bwd (shapes, strides,
 * lse, the gradients added into dQ/dK/dV; NULL skips one), computed by
 * query tiles: S = Q K^T over the visible keys by GEMM, masked softmax
 * with dsc_k_exp, O = P V by GEMM; the backward recomputes P from lse and
 * runs dP = dO V^T, dS = P (dP - rowsum(dO O)), dQ += s dS K,
 * dK += s dS^T Q, dV += P^T dO as GEMMs. Single-threaded; ws holds
 * dsc_tk_attn_scratch(d->n) floats.
 */
void dsc_tk_attn_fwd(float *O, float *lse, const float *Q, const float *K, const float *V,
                     const dsc_op_attn_dims *d, float scale, float *ws);
void dsc_tk_attn_bwd(float *dQ, float *dK, float *dV, const float *dO, const float *Q,
                     const float *K, const float *V, const float *O, const float *lse,
                     const dsc_op_attn_dims *d, float scale, float *ws);

/*
 * Cross-entropy of n rows of V logits against targets (< 0: not counted),
 * returns the mean loss over the counted rows (0 when none counts).
 * With grad != 0 it overwrites logits, in place, by dscale * dloss/dlogits
 * (rows not counted become 0): the logits are not needed after the loss,
 * and the lm_head backward reads only its input and weight. row_loss (n
 * doubles, caller's) keeps the per-row terms so that their sum is taken
 * in a fixed order (the same loss at any thread count).
 */
double dsc_tk_xent(dsc_kctx *k, float *logits, const int32_t *targets, int64_t n, int64_t V,
                   int grad, double dscale, double *row_loss);

/* RMSNorm, as dsc_op_rmsnorm_fwd / _bwd (dx, dw added into; NULL skips). */
void dsc_tk_rmsnorm_fwd(dsc_kctx *k, float *y, const float *x, const float *w, int64_t n,
                        int64_t d, float eps);
void dsc_tk_rmsnorm_bwd(dsc_kctx *k, float *dx, float *dw, const float *dy, const float *x,
                        const float *w, int64_t n, int64_t d, float eps);

/* SwiGLU, as dsc_op_swiglu_fwd / _bwd, over m values. The backward
   overwrites dg and du (it does not add into them). */
void dsc_tk_swiglu_fwd(dsc_kctx *k, float *h, const float *g, const float *u, int64_t m);
void dsc_tk_swiglu_bwd(dsc_kctx *k, float *dg, float *du, const float *dh, const float *g,
                       const float *u, int64_t m);

#endif
