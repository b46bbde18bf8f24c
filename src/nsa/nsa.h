/*
 * nsa.h - Native Sparse Attention (Yuan et al., arXiv:2502.11089): the
 * operator on one sequence, forward and backward, as a scalar reference.
 *
 * This is the oracle that later SIMD / GEMM / CUDA versions, the decode path
 * and the model integration are tested against; it favours being obviously
 * right over being fast. The spec is ../shared/spec/nsa.md (section numbers
 * below refer to it); positions are 0-based.
 *
 * What it computes, for one sequence of T tokens, H_q query heads over H_kv
 * key/value heads (GQA: query head h reads KV head h / G, G = H_q / H_kv),
 * query/key dim d_k, value dim d_v, scale = 1/sqrt(d_k) unless given:
 *
 *   o[t,h] = g[t,h,CMP] * o_cmp[t,h] + g[t,h,SLC] * o_slc[t,h]
 *          + g[t,h,WIN] * o_win[t,h]                               (§1.1)
 *
 * three independent softmax attentions of q[t,h]:
 *
 *  cmp (§1.2) over the compressed keys/values. Compression block i covers
 *      raw tokens [i*d, i*d + l - 1]; there are T_c = (T - l)/d + 1 of them
 *      (0 when T < l); query t sees block i iff i*d + l - 1 <= t, i.e. the
 *      first n_vis(t) = (t + 1 - l)/d + 1 blocks (0 when t < l - 1). With no
 *      visible block o_cmp = 0, its lse is -inf and its gradient is 0: no
 *      0/0 is ever evaluated. A block of keys becomes one key by phi_K and a
 *      block of values one value by phi_V (separate maps, one per KV head):
 *       - DSC_NSA_PHI_MEAN: the mean of the block's l rows (no parameters;
 *         what fla supports, there with l = d = l');
 *       - DSC_NSA_PHI_MLP: the paper's "learnable MLP with intra-block
 *         position encoding", in LUC's shape (spec §1.2 table) with a smooth
 *         activation: for KV head h and block i, X the block's (l, d_in)
 *         rows (d_in = d_k for keys, d_v for values),
 *             hid = W1[h] . vec(X + PE[h])    W1 (m, l*d_in), PE (l, d_in)
 *             out = W2[h] . silu(hid)         W2 (d_in, m), silu(z) = z*sigmoid(z)
 *         no biases (PE is the learned shift; W1 . vec(PE) acts as one),
 *         m = phi_hidden. SiLU rather than LUC's ReLU: smooth, so the
 *         finite-difference checks are exact and no kink stalls gradients.
 *  slc (§1.3) over the raw tokens of n selected blocks of l' tokens (block j
 *      covers [j*l', (j+1)*l' - 1]), with a token-level causal mask (keys
 *      <= t) inside the block containing t. Selection: see below.
 *  win (§1.4) over the w keys max(0, t-w+1) .. t: w keys INCLUDING t (fla's
 *      window_size = (w-1, 0) in flash-attn terms; XL and LUC use w+1).
 *
 * Selection (§1.3, not differentiated). Per query t and KV head:
 *  1. each query head's compressed softmax p_cmp[i] (the cmp branch's own
 *     probabilities) is mapped to selection blocks with the overlap weights
 *         p_slc[j] = sum_i w(i,j) p_cmp[i],
 *         w(i,j) = |[i*d, i*d+l-1] ∩ [j*l', (j+1)*l'-1]| / d
 *     (XL's transform_score, MDY's area overlap; NOT the literal Eq. 9,
 *     which aggregates blocks of the previous selection block: for l=32,
 *     d=16, l'=64, j=2 the weights are 1,2,2,2,1 on blocks 7..11, where the
 *     literal formula puts them on 4..8). With l = d = l', p_slc = p_cmp;
 *  2. the group score is the SUM over the G query heads of p_slc
 *     (probabilities, not logits; the mean, as fla uses, ranks alike);
 *  3. candidates are the blocks j <= cur = t / l' (block j is visible iff
 *     j*l' <= t); forced and always kept: block 0, cur and cur - 1 (1
 *     initial + 2 local, counted in n); the other n - #forced slots go to the
 *     highest group scores among the remaining candidates. Ties: the lower
 *     block index wins (so with no compressed block visible, which gives
 *     every score 0, the earliest blocks are taken). Exactly
 *     min(n, cur + 1) distinct blocks are selected, stored ascending, the
 *     remaining slots of the n are -1.
 *
 * Layouts (row-major; every size and stride an int64_t element count):
 *   q    (T, H_q*d_k)       token stride ldq; head h at q + t*ldq + h*d_k
 *   k[b] (T, H_kv*d_k)      token stride ldk, one tensor per branch b
 *   v[b] (T, H_kv*d_v)      token stride ldv
 *   g    (T, H_q*3)         token stride ldg; g[t][h*3 + b], b = CMP, SLC,
 *                            WIN (fla's g_proj layout "(h 3)"), values in [0,1]
 *   o    (T, H_q*d_v)       token stride ldo
 * A stride of 0 means packed (ldq = H_q*d_k, ...). A gradient buffer has the
 * layout of its tensor. Branch b uses k[b], v[b], or k[0], v[0] for all three
 * when shared_kv (fla, XL, LUC share; the paper's §3.3.3 has independent
 * K/V per branch, the default here).
 *
 * Forward outputs saved for the backward (the dsc_nsa_saved_* struct; sizes
 * from dsc_nsa_sizes), token-major so that a decode cache can append rows:
 *   o_br  (T, H_q, 3, d_v)  the three branch outputs before the gates
 *   lse   (T, H_q, 3)       log sum exp of each branch's scaled scores
 *                            (-inf for a cmp row with nothing visible)
 *   k_cmp (T_c, H_kv, d_k), v_cmp (T_c, H_kv, d_v)  compressed keys/values
 *   hid_k, hid_v (T_c, H_kv, m)  MLP pre-activations (MLP only)
 *   sel   (T, H_kv, n) int32    selected blocks (ascending, -1 padded)
 *
 * Conventions (as src/train/ops.h): every buffer comes from the caller, no
 * function allocates or keeps state; the whole-sequence functions take a
 * scratch buffer of dsc_nsa_sizes.scratch_bytes (any malloc'd block:
 * aligned for double); backward functions ADD into every gradient buffer
 * (zero them first) and skip NULL gradient pointers; storage is float or
 * double (the _f32 / _f64 instances, generated from nsa_impl.inc) while
 * every sum, exp and log is evaluated in double, so the f32 instance is the
 * f64 result rounded where values are stored. Everything runs on the
 * calling thread, deterministically (a caller parallelises over the
 * sequences of a batch, each with its own scratch).
 *
 * Errors: the whole-sequence functions validate the config and the
 * pointers they need and return DSC_ERR_ARG with a message naming the field;
 * they never exit or abort on bad input. The row functions (for decode and
 * faster paths to build on) trust a config that passed dsc_nsa_config_check.
 *
 * What this is not: the model layer (projections, RoPE, the gate's linear
 * map; a helper for gate = sigmoid(x W^T) is here), varlen batches, decode
 * state, or anything fast.
 */
#ifndef DSC_NSA_H
#define DSC_NSA_H

#include <stddef.h>
#include <stdint.h>

#include "dsc.h"

/* Branch indices into g, o_br, lse, k[], v[]. */
enum { DSC_NSA_CMP = 0, DSC_NSA_SLC = 1, DSC_NSA_WIN = 2, DSC_NSA_NBR = 3 };

/* The compression map phi (see the file comment). */
typedef enum {
    DSC_NSA_PHI_MLP = 0,   /* W2 . silu(W1 . vec(X + PE)), per KV head, K and V apart */
    DSC_NSA_PHI_MEAN = 1,  /* mean of the block's rows, no parameters                  */
} dsc_nsa_phi;

/* Flags of dsc_nsa_fwd_*. */
enum {
    /* Use the selection already in saved->sel instead of computing it (to
       replay a forward with the selection held fixed: finite differences,
       a kernel compared against this one, recomputation in the backward). */
    DSC_NSA_SEL_GIVEN = 1,
};

typedef struct {
    int64_t l;          /* compression block length                          */
    int64_t d;          /* compression stride; d | l, d | l_sel              */
    int64_t l_sel;      /* selection block length l' (>= l)                  */
    int64_t n;          /* selected blocks per query, forced ones included (>= 3) */
    int64_t w;          /* sliding window keys, t included (>= 1)            */
    int64_t H_q, H_kv;  /* query heads, key/value heads; H_kv | H_q          */
    int64_t d_k, d_v;   /* query/key dim, value dim                          */
    dsc_nsa_phi phi;    /* compression map                                   */
    int64_t phi_hidden; /* m, the MLP's hidden width (MLP only; ignored for mean) */
    int shared_kv;      /* 0: each branch its own k/v (paper); 1: k[0], v[0] for all */
    double scale;       /* softmax scale; 0 means 1/sqrt(d_k)                 */
} dsc_nsa_config;

/* DSC_OK, or DSC_ERR_ARG with a message naming the first bad field and its
   value(s): a size <= 0, l % d, l_sel % d, l > l_sel, n < 3, w < 1,
   H_q % H_kv, an unknown phi, phi_hidden <= 0 for the MLP, shared_kv not 0/1,
   a negative or non-finite scale. */
dsc_status dsc_nsa_config_check(const dsc_nsa_config *c, dsc_err *err);

/* The scale actually used: c->scale, or 1/sqrt(d_k) when it is 0. */
double dsc_nsa_scale(const dsc_nsa_config *c);

/* Element counts for a sequence of T tokens (from dsc_nsa_sizes). */
typedef struct {
    int64_t n_cmp;        /* T_c compressed tokens                            */
    int64_t n_blk;        /* selection blocks ceil(T / l')                    */
    int64_t o_br, lse;    /* T*H_q*3*d_v, T*H_q*3                             */
    int64_t k_cmp, v_cmp; /* T_c*H_kv*d_k, T_c*H_kv*d_v                       */
    int64_t hid;          /* T_c*H_kv*m for each of hid_k, hid_v (0 for mean) */
    int64_t sel;          /* T*H_kv*n (int32)                                  */
    int64_t pe_k, w1_k, w2_k;  /* H_kv*l*d_k, H_kv*m*l*d_k, H_kv*d_k*m (0 for mean) */
    int64_t pe_v, w1_v, w2_v;  /* H_kv*l*d_v, H_kv*m*l*d_v, H_kv*d_v*m (0 for mean) */
    size_t scratch_bytes; /* scratch of dsc_nsa_fwd_* and dsc_nsa_bwd_*       */
    size_t row_scratch_bytes; /* scratch of the row functions for any t < T   */
} dsc_nsa_sizes;

/* Fills *s for T >= 1 tokens. DSC_ERR_ARG on a bad config, T < 1, or sizes
   that overflow. */
dsc_status dsc_nsa_sizes_get(const dsc_nsa_config *c, int64_t T, dsc_nsa_sizes *s,
                             dsc_err *err);

/* ---- geometry and selection, independent of the storage type ---- */

/* Compressed blocks visible to query t: (t + 1 - l)/d + 1, 0 when t < l-1. */
int64_t dsc_nsa_n_visible(const dsc_nsa_config *c, int64_t t);

/* w(i, j) = |[i*d, i*d+l-1] ∩ [j*l', (j+1)*l'-1]| / d: the weight of
   compressed block i in selection block j's score (spec §1.3). */
double dsc_nsa_overlap_weight(const dsc_nsa_config *c, int64_t i, int64_t j);

/* score[j] += sum_{i < n_cmp} w(i, j) p_cmp[i] for j < n_blk (blocks past
   n_blk are dropped; accumulate over a group's heads by calling once per
   head). */
void dsc_nsa_map_scores(const dsc_nsa_config *c, const double *p_cmp, int64_t n_cmp,
                        double *score, int64_t n_blk);

/* The top-n rule for query t (step 3 above) from the group scores
   score[0 .. t/l'] (read only there): writes sel[0 .. n-1] (ascending
   block ids, then -1) and returns the count, min(n, t/l' + 1). */
int64_t dsc_nsa_topn(const dsc_nsa_config *c, int64_t t, const double *score, int32_t *sel);

/* The tail of every top-n: sel[0 .. k) (distinct block ids) into ascending
   order, then sel[k .. n-1] = -1. */
void dsc_nsa_sel_finish(const dsc_nsa_config *c, int32_t *sel, int64_t k);

/* ---- the typed instances: dsc_nsa_<name>_f32 and dsc_nsa_<name>_f64 ---- */

#define DSC_NSA_T float
#define DSC_NSA(name) dsc_nsa_##name##_f32
#include "nsa/nsa_decl.h"
#undef DSC_NSA_T
#undef DSC_NSA

#define DSC_NSA_T double
#define DSC_NSA(name) dsc_nsa_##name##_f64
#include "nsa/nsa_decl.h"
#undef DSC_NSA_T
#undef DSC_NSA

#endif
