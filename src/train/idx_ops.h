/*
 * idx_ops.h - training ops of the DSA lightning indexer (spec §4.3, §4.6):
 * the score I(t,s), its backward, the KL loss that trains it, and the
 * recall metric logged beside it; plus LayerNorm with bias (the key norm).
 *
 * One sequence of n tokens, causal. Same conventions as ops.h: one generic
 * body (idx_impl.inc) instantiated for float (idx_f32.c, dsc_op_idx_*_f32)
 * and double (idx_f64.c, dsc_op_idx_*_f64); every sum and transcendental in
 * double; caller buffers, no allocation; backward ops ADD into gradients and
 * skip NULL ones.
 *
 * How the inference indexer (src/model/dsa.c) maps onto these ops:
 *   kraw  = x W_k^T                       linear_fwd            (n, D_I)
 *   kn    = LayerNorm(kraw) * g + b       dsc_op_idx_layernorm_fwd (eps 1e-6)
 *   k     = RoPE_half(kn) on dims [0, dr) rope_fwd, interleaved = 0, slice
 *                                         {n, D_I, 1, D_I, 0, dr}
 *   q     = RoPE_half(c_q W_qb^T) per head  rope_fwd, interleaved = 0, slice
 *                                         {n, H_I*D_I, H_I, D_I, 0, dr}
 *   w     = x W_w^T * H_I^-1/2 * D_I^-1/2 linear_fwd, then a constant scale
 *   I     = dsc_op_idx_score_fwd(q, k, w)
 * The ops below take q, k, w in that final form (roped, normed, scaled).
 *
 * Shapes (row-major):
 *   q   (n, H_I, D_I)   k (n, D_I)   w (n, H_I)
 *   dense form : I, dI, P (n, n)   row t, column s = key position s
 *   sparse form: sel (n, kk) int32 key positions chosen for query t
 *                (-1 = padding); I, dI, P (n, kk), column j = key sel[t][j]
 * An entry (t, s) is VISIBLE when 0 <= s <= t (and, sparse, s = sel[t][j]
 * for that column). I holds -INFINITY exactly at the entries that are not
 * visible; the loss and the recall take the visible set of a row to be the
 * entries of I that are > -INFINITY, so they work unchanged on both forms
 * (and on any caller-made mask that writes -INFINITY).
 *
 * The training signal (spec §4.6; V32-paper §2.1), per query t with
 * visible set V_t:
 *   p_t = P[t] restricted to V_t and L1-normalised over V_t
 *         (dense warm-up: P = the MLA attention probabilities summed over
 *         heads, so p_t is their mean over heads; sparse stage: P = the same
 *         values gathered at sel, renormalised over the selected set). The
 *         op does the normalisation, so the caller may pass the head sum.
 *         P is a constant here: the indexer's inputs are detached, so no
 *         gradient flows into P.
 *   q_t = softmax of I[t] over V_t
 *   KL_t = sum_{s in V_t} p log p - p log q     (0 log 0 = 0)
 *   loss = dscale * mean of KL_t over the COUNTED queries: those with a
 *          non-empty V_t and sum_{V_t} P > 0 (others contribute nothing).
 */
#ifndef DSC_TRAIN_IDX_OPS_H
#define DSC_TRAIN_IDX_OPS_H

#include <stdint.h>

/* Sizes of one indexer call. */
typedef struct {
    int64_t n;      /* tokens (queries = keys), positions 0..n-1       */
    int64_t heads;  /* H_I                                             */
    int64_t dim;    /* D_I                                             */
    int64_t kk;     /* sparse form: columns of sel/I/P per query;
                       ignored when sel is NULL (dense form)           */
} dsc_idx_dims;

#define DSC_OP_T float
#define DSC_OP(name) dsc_op_##name##_f32
#include "train/idx_ops.h"
#undef DSC_OP
#undef DSC_OP_T

#define DSC_OP_T double
#define DSC_OP(name) dsc_op_##name##_f64
#include "train/idx_ops.h"
#undef DSC_OP
#undef DSC_OP_T

#endif /* DSC_TRAIN_IDX_OPS_H */

/* ---- the prototypes of one instance (this file includes itself twice,
   with DSC_OP_T and DSC_OP(name) set as in ops_decl.h) ---- */
#if defined(DSC_OP_T) && defined(DSC_TRAIN_IDX_OPS_H)

/* ---- 1. index scores --------------------------------------------------------
   fwd: I(t,s) = sum_h w[t,h] * ReLU(q[t,h] . k[s]) for visible (t, s),
        -INFINITY otherwise. sel NULL: dense, I (n, n); else sparse, I (n, kk)
        with column j for key sel[t][j] (-1 or a future key: -INFINITY, as
        the demo's causal mask does for t < index_topk).
   bwd: from dI (same shape as I; entries that are not visible are ignored,
        whatever they hold):
          dq[t,h] += sum_s dI(t,s) w[t,h] 1[q.k > 0] k[s]
          dk[s]   += sum_t sum_h dI(t,s) w[t,h] 1[q.k > 0] q[t,h]
          dw[t,h] += sum_s dI(t,s) ReLU(q[t,h] . k[s])
        The ReLU derivative at exactly 0 is taken as 0 (torch's relu
        backward does the same), so a dot product of exactly 0 passes no
        gradient to q or k. Query t touches only dk rows s <= t. In the
        sparse form a key selected by several queries gets the sum. */
void DSC_OP(idx_score_fwd)(DSC_OP_T *I, const DSC_OP_T *q, const DSC_OP_T *k,
                           const DSC_OP_T *w, const int32_t *sel, const dsc_idx_dims *d);
void DSC_OP(idx_score_bwd)(DSC_OP_T *dq, DSC_OP_T *dk, DSC_OP_T *dw, const DSC_OP_T *dI,
                           const DSC_OP_T *q, const DSC_OP_T *k, const DSC_OP_T *w,
                           const int32_t *sel, const dsc_idx_dims *d);

/* ---- 2. the indexer's KL loss (spec §4.6), forward and backward -------------
   I, P: (n, m) with m = n (dense) or kk (sparse); see the file header for
   p_t, q_t and the counted queries. Returns the loss (0 when no query
   counts). dI (n, m), may be NULL: += dscale * dloss/dI, which is
   (q_t - p_t) * dscale / count on the visible entries of counted rows and
   nothing elsewhere (so -INFINITY never meets arithmetic: no NaN, even for
   a query with one visible key, whose KL and gradient are exactly 0).
   Requires P >= 0 on the visible entries. */
double DSC_OP(idx_kl)(DSC_OP_T *dI, const DSC_OP_T *I, const DSC_OP_T *P, int64_t n,
                      int64_t m, double dscale);

/* ---- 3. recall of the indexer's top-k (a metric; no gradient) --------------
   For query t with visible set V_t (the entries of I[t] > -INFINITY) and
   k_t = min(k, |V_t|):
     A_t = the indexer's top-k_t of V_t by I (ties to the lower column,
           as dsc_k_topk_set breaks them),
     B_t = the top-k_t of V_t by P (the true top-k attention mass),
     recall_t = sum_{A_t} P / sum_{B_t} P     (in [0, 1]; 1 when k_t = |V_t|)
   P need not be normalised (the ratio is the same). Returns the mean of
   recall_t over the queries whose sum_{B_t} P > 0 (0 when none), and
   writes recall_t to per_query[t] when per_query is not NULL (-1 for a
   query not counted). ws: scratch of m doubles from the caller. Serial. */
double DSC_OP(idx_recall)(const DSC_OP_T *I, const DSC_OP_T *P, int64_t n, int64_t m,
                          int64_t k, double *per_query, double *ws);

/* ---- 4. LayerNorm with bias (the indexer's k_norm) --------------------------
   fwd: y[t] = (x[t] - mean) / sqrt(var + eps) * g + b over d values
        (biased variance, as torch.nn.LayerNorm and dsa.c); x, y (n, d),
        g, b (d); y may alias x (but the backward needs x).
   bwd: dx, dg, db from dy (any may be NULL); mean and variance are
        recomputed from x. */
void DSC_OP(idx_layernorm_fwd)(DSC_OP_T *y, const DSC_OP_T *x, const DSC_OP_T *g,
                               const DSC_OP_T *b, int64_t n, int64_t d, double eps);
void DSC_OP(idx_layernorm_bwd)(DSC_OP_T *dx, DSC_OP_T *dg, DSC_OP_T *db, const DSC_OP_T *dy,
                               const DSC_OP_T *x, const DSC_OP_T *g, int64_t n, int64_t d,
                               double eps);

#endif
