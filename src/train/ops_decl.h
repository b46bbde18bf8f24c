/*
 * ops_decl.h - the prototypes of one instance of the training ops.
 *
 * Included twice by ops.h, with DSC_OP_T the element type and DSC_OP(name)
 * the instance's function name (dsc_op_<name>_f32 / _f64); so it has no
 * include guard on purpose. Conventions (row-major, caller buffers, backward
 * adds into gradients, NULL gradients skipped) are in ops.h.
 * Shapes: n tokens (rows), d model dims, V vocabulary, E experts.
 */

/* ---- 1. embedding ---------------------------------------------------------
   fwd: y[t] = W[ids[t]]            y (n, d), W (V, d), ids in [0, V)
   bwd: dW[ids[t]] += dy[t]         (scatter-add; repeated ids add up) */
void DSC_OP(embed_fwd)(DSC_OP_T *y, const DSC_OP_T *W, const int32_t *ids, int64_t n,
                       int64_t d);
void DSC_OP(embed_bwd)(DSC_OP_T *dW, const DSC_OP_T *dy, const int32_t *ids, int64_t n,
                       int64_t d);

/* ---- 2. RMSNorm -----------------------------------------------------------
   fwd: y[t] = w * x[t] / sqrt(mean(x[t]^2) + eps)   x, y (n, d), w (d);
        y may alias x (but the backward needs x).
   bwd: dx, dw from dy; the 1/rms factor is recomputed from x (d flops a row,
        cheaper than keeping it). */
void DSC_OP(rmsnorm_fwd)(DSC_OP_T *y, const DSC_OP_T *x, const DSC_OP_T *w, int64_t n,
                         int64_t d, double eps);
void DSC_OP(rmsnorm_bwd)(DSC_OP_T *dx, DSC_OP_T *dw, const DSC_OP_T *dy, const DSC_OP_T *x,
                         const DSC_OP_T *w, int64_t n, int64_t d, double eps);

/* ---- 3. linear (no bias: DeepSeek's projections have none) ----------------
   fwd: y = x W^T          x (n, din), W (dout, din), y (n, dout); y must
                           not alias x.
   bwd: dx += dy W, dW += dy^T x. */
void DSC_OP(linear_fwd)(DSC_OP_T *y, const DSC_OP_T *x, const DSC_OP_T *W, int64_t n,
                        int64_t din, int64_t dout);
void DSC_OP(linear_bwd)(DSC_OP_T *dx, DSC_OP_T *dW, const DSC_OP_T *dy, const DSC_OP_T *x,
                        const DSC_OP_T *W, int64_t n, int64_t din, int64_t dout);

/* ---- 4. SwiGLU ------------------------------------------------------------
   fwd: h = silu(g) * u, elementwise over m values (m = n * d_ff).
   bwd: dg += dh * u * silu'(g), du += dh * silu(g). */
void DSC_OP(swiglu_fwd)(DSC_OP_T *h, const DSC_OP_T *g, const DSC_OP_T *u, int64_t m);
void DSC_OP(swiglu_bwd)(DSC_OP_T *dg, DSC_OP_T *du, const DSC_OP_T *dh, const DSC_OP_T *g,
                        const DSC_OP_T *u, int64_t m);

/* ---- 5. RoPE on a slice (spec §3.3) --------------------------------------
   Rotates, in place, the slice s of x: token t at position pos[t] (pos NULL:
   position t) by the angles whose cos/sin are rows pos[t] of the tables
   cos_t, sin_t (n_pos, dim/2) (the YaRN tables of dsc_rope_tables, in T).
   interleaved: pairs (2i, 2i+1) (MLA); else pairs (i, i + dim/2) (indexer).
   bwd: the rotation is orthogonal, so the gradient w.r.t. the input slice is
   the gradient w.r.t. the output rotated by -angle; dsc_op_rope_bwd does
   that in place on dx (the slice of the gradient buffer), which first holds
   d(out) and then d(in). Elements outside the slice are left alone. */
void DSC_OP(rope_fwd)(DSC_OP_T *x, const dsc_op_rope_slice *s, const int32_t *pos,
                      const DSC_OP_T *cos_t, const DSC_OP_T *sin_t, int interleaved);
void DSC_OP(rope_bwd)(DSC_OP_T *dx, const dsc_op_rope_slice *s, const int32_t *pos,
                      const DSC_OP_T *cos_t, const DSC_OP_T *sin_t, int interleaved);

/* ---- 6. causal softmax attention, one head --------------------------------
   fwd: P = softmax(scale * Q K^T + causal mask) (query i sees keys j <= i),
        O = P V; lse[i] = log sum_j exp(scale * q_i.k_j) (n values), kept for
        the backward so that P is recomputed row by row instead of stored
        (O(n) memory per head instead of O(n^2)). Shapes and strides in *d.
   bwd: dQ, dK, dV from dO, given the forward's inputs, O and lse. One head
        on the calling thread (it scatters into dK, dV over queries).
   MLA (spec §2.2) is this with Q = per-head [q_nope ; RoPE(q_pe)] read in
   place from q (n, H*dqk), K built by dsc_op_mla_k_fwd, V read in place from
   kv_b_proj's output, scale = dqk^-1/2 * m^2. */
void DSC_OP(attn_fwd)(DSC_OP_T *O, DSC_OP_T *lse, const DSC_OP_T *Q, const DSC_OP_T *K,
                      const DSC_OP_T *V, const dsc_op_attn_dims *d, double scale);
void DSC_OP(attn_bwd)(DSC_OP_T *dQ, DSC_OP_T *dK, DSC_OP_T *dV, const DSC_OP_T *dO,
                      const DSC_OP_T *Q, const DSC_OP_T *K, const DSC_OP_T *V,
                      const DSC_OP_T *O, const DSC_OP_T *lse, const dsc_op_attn_dims *d,
                      double scale);

/* ---- column blocks: splitting and concatenating rows ----------------------
   copy_cols: dst[t][0:cols] = src[t][0:cols]   (forward of a split/concat)
   add_cols : dst[t][0:cols] += src[t][0:cols]  (its backward)
   over n rows with strides ldd, lds. E.g. kv_a_proj's output (n, dc + dr)
   splits into c (copy_cols, cols = dc) and k_pe (src + dc, cols = dr); the
   gradients come back with add_cols. */
void DSC_OP(copy_cols)(DSC_OP_T *dst, int64_t ldd, const DSC_OP_T *src, int64_t lds,
                       int64_t n, int64_t cols);
void DSC_OP(add_cols)(DSC_OP_T *dst, int64_t ldd, const DSC_OP_T *src, int64_t lds,
                      int64_t n, int64_t cols);

/* ---- MLA keys: per-head [k_nope ; k_pe] with k_pe shared by the heads -----
   fwd: k[h][t] = [ kv[t][h*(dn+dv) : h*(dn+dv)+dn] ; kpe[t][0:dr] ]
        k (H, n, dn+dr): head h's K for dsc_op_attn_* is k + h*n*(dn+dr),
        ldk = dn + dr; kv (n, H*(dn+dv)) is kv_b_proj's output (spec §2.1
        row layout); kpe (n, dr) is the roped shared key.
   bwd: dkv[t][h nope part] += dk[h][t][0:dn], and
        dkpe[t] += sum_h dk[h][t][dn:dn+dr] (the shared key's gradient is the
        sum over the heads that read it). Parallel over tokens. */
void DSC_OP(mla_k_fwd)(DSC_OP_T *k, const DSC_OP_T *kv, const DSC_OP_T *kpe, int64_t n,
                       int64_t H, int64_t dn, int64_t dr, int64_t dv);
void DSC_OP(mla_k_bwd)(DSC_OP_T *dkv, DSC_OP_T *dkpe, const DSC_OP_T *dk, int64_t n,
                       int64_t H, int64_t dn, int64_t dr, int64_t dv);

/* ---- 7. MoE gate weights (spec §5.2-5.3) ---------------------------------
   fwd: g[t][j] = weight of expert idx[t][j], j < K, from router logits
        z (n, E): s = softmax(z[t]) or sigmoid(z[t]); g = s[idx] (divided by
        sum_j s[idx[t][j]] when norm_topk_prob) * scaling. g (n, K).
        idx (n, K) holds K distinct experts per token, chosen by the caller
        (dsc_moe_route; with V3's correction bias and group limits): the
        choice is not differentiated, and the bias never enters g.
   bwd: dz += d g / d z . dg (only the chosen experts' s receive gradient;
        softmax spreads it to every logit, sigmoid does not). */
void DSC_OP(gate_fwd)(DSC_OP_T *g, const DSC_OP_T *z, const int32_t *idx, int64_t n,
                      const dsc_op_gate_params *p);
void DSC_OP(gate_bwd)(DSC_OP_T *dz, const DSC_OP_T *dg, const DSC_OP_T *z,
                      const int32_t *idx, int64_t n, const dsc_op_gate_params *p);

/* ---- 8. cross-entropy (forward and backward in one pass) ------------------
   Returns the mean over counted tokens of -log softmax(logits[t])[targets[t]]
   (logits (n, V)); tokens with targets[t] < 0 are ignored (not counted);
   0 when none counts. dlogits (n, V), may be NULL: += dscale * dloss/dlogits
   (dscale = 1 for the plain loss; a loss weight such as MTP's lambda
   otherwise). Requires targets[t] < V. */
double DSC_OP(xent)(DSC_OP_T *dlogits, const DSC_OP_T *logits, const int32_t *targets,
                    int64_t n, int64_t V, double dscale);
