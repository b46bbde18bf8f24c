/*
 * ops.h - forward and backward of every op a DeepSeek-V3-style model needs
 * for training, on the CPU, in fp32 and fp64.
 *
 * Each op is written once, type-generically, in ops_impl.inc and
 * instantiated twice (ops_f32.c, ops_f64.c): dsc_op_<name>_f32 works on
 * float buffers, dsc_op_<name>_f64 on double buffers. Both accumulate every
 * sum in double, so the f32 instance is the f64 result rounded at the points
 * where it stores a value; the f64 instance is the one the finite-difference
 * tests check, and the oracle a faster (BLAS, SIMD, CUDA) training path is
 * compared against later.
 *
 * Conventions (all ops):
 *  - row-major, sizes and strides are int64_t element counts;
 *  - every buffer comes from the caller; no op allocates or keeps state;
 *  - backward ops ADD into every gradient buffer (dx += ..., dW += ...), as a
 *    tensor that feeds several consumers gets the sum of their gradients;
 *    zero the gradients before a step. Any gradient pointer may be NULL when
 *    that gradient is not wanted. The exception is RoPE, whose backward
 *    rewrites the gradient in place (see dsc_op_rope_bwd_*);
 *  - inputs of a backward op are the forward's inputs (and, where stated, its
 *    output); nothing else is saved between the two;
 *  - ops parallelise over rows with OpenMP where rows are independent; the
 *    attention backward is one head on one thread (callers run heads in
 *    parallel).
 *
 * What this is not: a graph, an autograd tape or an optimizer. The model's
 * training step calls these in order, as llm.c's train_gpt2.c does.
 */
#ifndef DSC_TRAIN_OPS_H
#define DSC_TRAIN_OPS_H

#include <stdint.h>

#include "dsc.h"

/* Where RoPE applies inside an activation buffer: n tokens, each holding
   `heads` slices; the rotated part of slice (t, h) is the `dim` elements at
   x + t*ld + h*hs + off. MLA's q: heads = H, hs = dn + dr, off = dn,
   dim = dr, ld = H*(dn + dr); MLA's shared k_pe: heads = 1. */
typedef struct {
    int64_t n;      /* tokens                                  */
    int64_t ld;     /* elements between consecutive tokens     */
    int64_t heads;  /* slices per token                        */
    int64_t hs;     /* elements between consecutive slices     */
    int64_t off;    /* first rotated element inside a slice    */
    int64_t dim;    /* rotated dims D (even)                   */
} dsc_op_rope_slice;

/* One causal attention head over n tokens: Q (n, dqk) with row stride ldq,
   K (n, dqk) ldk, V (n, dv) ldv, O (n, dv) ldo. A gradient buffer has the
   same layout (stride) as its tensor, so heads can be read and written in
   place inside (n, H*d) buffers. */
typedef struct {
    int64_t n, dqk, dv;
    int64_t ldq, ldk, ldv, ldo;
} dsc_op_attn_dims;

/* The MoE gate (spec §5.2, §5.3): affinities s = softmax(z) or sigmoid(z)
   over E experts; the K chosen experts' weights are
   g = s_chosen (/ sum(s_chosen) when norm_topk_prob) * scaling. */
typedef struct {
    int64_t n_experts;        /* E                          */
    int64_t k;                /* K, chosen per token        */
    dsc_scoring scoring;      /* DSC_SCORE_SOFTMAX/SIGMOID  */
    int norm_topk_prob;
    double scaling;           /* routed_scaling_factor      */
} dsc_op_gate_params;

#define DSC_OP_T float
#define DSC_OP(name) dsc_op_##name##_f32
#include "train/ops_decl.h"
#undef DSC_OP
#undef DSC_OP_T

#define DSC_OP_T double
#define DSC_OP(name) dsc_op_##name##_f64
#include "train/ops_decl.h"
#undef DSC_OP
#undef DSC_OP_T

#endif
