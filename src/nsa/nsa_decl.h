/*
 * nsa_decl.h - the types and prototypes of one instance of the NSA operator.
 *
 * Included twice by nsa.h, with DSC_NSA_T the storage type (float / double)
 * and DSC_NSA(name) the instance's name (dsc_nsa_<name>_f32 / _f64); so it
 * has no include guard on purpose. Shapes, layouts and conventions are in
 * nsa.h; below, R is the storage type.
 */

/* Raw keys and values of the three branches. Branch b reads k[b], v[b]
   (k[0], v[0] for every branch when shared_kv; then k[1..2], v[1..2] are
   ignored and may be NULL). k[b] (T, H_kv*d_k) stride ldk, v[b]
   (T, H_kv*d_v) stride ldv; 0 = packed. */
typedef struct {
    const DSC_NSA_T *k[3];
    int64_t ldk;
    const DSC_NSA_T *v[3];
    int64_t ldv;
} DSC_NSA(kv);

/* Everything the forward reads besides phi's parameters. */
typedef struct {
    const DSC_NSA_T *q;  /* (T, H_q*d_k)  stride ldq                       */
    int64_t ldq;
    DSC_NSA(kv) kv;
    const DSC_NSA_T *g;  /* (T, H_q*3)    stride ldg; gates in [0, 1]      */
    int64_t ldg;
} DSC_NSA(in);

/* phi's parameters (MLP; all NULL for mean pooling), per KV head h:
   keys   pe_k (H_kv, l, d_k)  w1_k (H_kv, m, l*d_k)  w2_k (H_kv, d_k, m)
   values pe_v (H_kv, l, d_v)  w1_v (H_kv, m, l*d_v)  w2_v (H_kv, d_v, m)
   w1's column index is r*d_in + c for row r of the block, dim c. */
typedef struct {
    const DSC_NSA_T *pe_k, *w1_k, *w2_k;
    const DSC_NSA_T *pe_v, *w1_v, *w2_v;
} DSC_NSA(params);

/* What the forward saves for the backward (layouts in nsa.h). hid_k and
   hid_v only for the MLP. With DSC_NSA_SEL_GIVEN, sel is an input. */
typedef struct {
    DSC_NSA_T *o_br;   /* (T, H_q, 3, d_v)   */
    DSC_NSA_T *lse;    /* (T, H_q, 3)        */
    DSC_NSA_T *k_cmp;  /* (T_c, H_kv, d_k)   */
    DSC_NSA_T *v_cmp;  /* (T_c, H_kv, d_v)   */
    DSC_NSA_T *hid_k;  /* (T_c, H_kv, m)     */
    DSC_NSA_T *hid_v;  /* (T_c, H_kv, m)     */
    int32_t *sel;      /* (T, H_kv, n)       */
} DSC_NSA(saved);

/* Gradients, each added into (+=) and skipped when NULL. dq, dk[b], dv[b],
   dg have the layout (and stride) of q, k[b], v[b], g. When shared_kv, the
   three branches' key/value gradients all go to dk[0], dv[0]. The parameter
   gradients have their parameters' shapes (MLP only). */
typedef struct {
    DSC_NSA_T *dq;
    DSC_NSA_T *dk[3], *dv[3];
    DSC_NSA_T *dg;
    DSC_NSA_T *pe_k, *w1_k, *w2_k;
    DSC_NSA_T *pe_v, *w1_v, *w2_v;
} DSC_NSA(grads);

/* ---- whole sequence ------------------------------------------------------
   fwd: o (T, H_q*d_v) stride ldo (0 = packed) and every field of *sv, for
        T >= 1 tokens: compress, then per token select_row (unless flags has
        DSC_NSA_SEL_GIVEN) and attend_row. scratch: dsc_nsa_sizes'
        scratch_bytes. o must not alias an input.
   bwd: the gradients of L w.r.t. q, every branch's k/v (the cmp branch's
        through phi), phi's parameters and the gates, given dL/do (dO, stride
        ldo) and the forward's inputs and saved outputs. The selection in
        sv->sel is a constant (no gradient through top-n, §5.2), so the
        backward is exact for the forward that used it.
   Both return DSC_ERR_ARG (nothing written) on a bad config, T < 1, or a
   NULL pointer they need (names it). */
dsc_status DSC_NSA(fwd)(const dsc_nsa_config *c, int64_t T, const DSC_NSA(in) *in,
                        const DSC_NSA(params) *p, DSC_NSA_T *o, int64_t ldo,
                        DSC_NSA(saved) *sv, int flags, void *scratch, dsc_err *err);
dsc_status DSC_NSA(bwd)(const dsc_nsa_config *c, int64_t T, const DSC_NSA(in) *in,
                        const DSC_NSA(params) *p, const DSC_NSA(saved) *sv,
                        const DSC_NSA_T *dO, int64_t ldo, DSC_NSA(grads) *gr,
                        void *scratch, dsc_err *err);

/* ---- pieces (for decode and for faster paths; no validation) -------------
   compress:   compressed blocks i0 <= i < i1 into rows i of k_cmp, v_cmp and,
               for the MLP, of hid_k, hid_v (required then: the outputs are
               computed from the stored pre-activations, as the backward
               reads them); reads raw rows up to (i1-1)*d + l - 1 of the cmp
               branch's k, v.
   select_row: sel_t (H_kv, n) for query t from q_t (H_q*d_k, head h at
               q_t + h*d_k) and the first n_visible(t) rows of k_cmp.
   attend_row: for query t, the three branch outputs o_br_t (H_q, 3, d_v),
               their lse_t (H_q, 3) and the gated o_t (H_q*d_v), from q_t,
               g_t (H_q*3), raw rows 0..t of kv, the visible rows of k_cmp /
               v_cmp and sel_t. o_br_t / lse_t may be NULL when not wanted.
   ws: row_scratch_bytes of dsc_nsa_sizes for any T > t. */
void DSC_NSA(compress)(const dsc_nsa_config *c, int64_t i0, int64_t i1, const DSC_NSA(kv) *kv,
                       const DSC_NSA(params) *p, DSC_NSA_T *k_cmp, DSC_NSA_T *v_cmp,
                       DSC_NSA_T *hid_k, DSC_NSA_T *hid_v);
void DSC_NSA(select_row)(const dsc_nsa_config *c, int64_t t, const DSC_NSA_T *q_t,
                         const DSC_NSA_T *k_cmp, int32_t *sel_t, double *ws);
void DSC_NSA(attend_row)(const dsc_nsa_config *c, int64_t t, const DSC_NSA_T *q_t,
                         const DSC_NSA_T *g_t, const DSC_NSA(kv) *kv, const DSC_NSA_T *k_cmp,
                         const DSC_NSA_T *v_cmp, const int32_t *sel_t, DSC_NSA_T *o_t,
                         DSC_NSA_T *o_br_t, DSC_NSA_T *lse_t, double *ws);

/* ---- the gate helper: g = sigmoid(x W^T) -----------------------------------
   fwd: g[t][j] = sigmoid(sum_i x[t][i] W[j][i]), j < 3*H_q (row j = h*3 + b),
        x (T, dm) stride ldx, W (3*H_q, dm), g (T, 3*H_q) stride ldg.
   bwd: with z the pre-activation, dz = dg * g * (1 - g) (g is the forward's
        output), dx += dz W (stride ldx), dW += dz^T x. dx / dW may be NULL. */
void DSC_NSA(gate_fwd)(DSC_NSA_T *g, int64_t ldg, const DSC_NSA_T *x, int64_t ldx,
                       const DSC_NSA_T *W, int64_t T, int64_t dm, int64_t H_q);
void DSC_NSA(gate_bwd)(DSC_NSA_T *dx, DSC_NSA_T *dW, const DSC_NSA_T *dg, const DSC_NSA_T *g,
                       int64_t ldg, const DSC_NSA_T *x, int64_t ldx, const DSC_NSA_T *W,
                       int64_t T, int64_t dm, int64_t H_q);
