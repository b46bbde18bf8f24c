/*
 * tm_impl.h - private to src/train/: the layout of the trainable model
 * (parameters, saved activations, scratch) shared by its three files:
 *   model_train.c  creation: parameters, activations, the public getters;
 *   train_step.c   the forward and backward of the whole model;
 *   attn_mla.c     MLA, the attention of a layer, behind tm_attn_ops;
 *   attn_nsa.c     NSA (attention_type "nsa"), the other table, with its
 *                  setup and its part of the activation carving;
 *   attn_dsa.c     DSA's dense warm-up and sparse stage (deepseek_v32): MLA plus the
 *                  lightning indexer trained by its KL loss on detached
 *                  inputs, with its part of the activation carving.
 *
 * The attention seam. A decoder layer reaches its attention only through
 * tm_attn_ops (forward: a->xn -> tm->y; backward: dy -> dx and the
 * attention's parameter gradients), so that another attention (DSA's
 * indexer on top of MLA, NSA) is a new table plus its tensors in
 * model_train.c's parameter walk and its saved activations in carve_acts;
 * the layer loop, MoE, MTP, the loss, the optimizer and the checkpoints do
 * not change. An attention may add a loss of its own (DSA's indexer KL
 * loss): fwd returns it (0 for MLA), the step adds it to the total, and
 * bwd adds its gradient with the LM loss's (DSA's detached indexer inputs
 * are then the attention's own business).
 */
#ifndef DSC_TRAIN_TM_IMPL_H
#define DSC_TRAIN_TM_IMPL_H

#include <string.h>

#include "kernels/kernels.h"
#include "model/model.h"
#include "train/model_train.h"
#include "nsa/nsa_fast.h"
#include "train/ops.h"
#include "train/tk.h"
#include "util/util.h"

/* ---- carving (model_train.c, attn_nsa.c): count on the first walk (base
   NULL), assign on the second ---- */
typedef struct {
    char *base;
    size_t used;
} carver;

static inline void *carve(carver *cv, int64_t n, size_t elem) {
    size_t bytes = ((size_t)(n > 0 ? n : 0) * elem + 63) / 64 * 64;
    void *p = cv->base && n > 0 ? cv->base + cv->used : NULL;
    cv->used += bytes;
    return p;
}
#define CARVE(cv, n, T) ((T *)carve((cv), (n), sizeof(T)))

/* q_a_layernorm / kv_a_layernorm eps, fixed as in mla.c and transformers. */
#define LATENT_EPS 1e-6

typedef struct {
    float *gate, *up, *down;   /* gate/up: (ff, d)  down: (d, ff) */
    int64_t ff;
} tm_mlp;

typedef struct tm_attn_ops tm_attn_ops;

/* An NSA layer's attention parameters (o_proj is tm_layer.o). */
typedef struct {
    float *q;               /* (H_q*d_k, d)                                   */
    float *k[3], *v[3];     /* (H_kv*d_k, d), (H_kv*d_v, d); [0] only when shared */
    float *gate;            /* (3*H_q, d)                                     */
    float *pe_k, *w1_k, *w2_k, *pe_v, *w1_v, *w2_v;   /* NULL for mean        */
} tm_nsa_w;

typedef struct {
    const tm_attn_ops *attn;       /* the layer's attention (MLA)      */
    float *attn_norm, *ffn_norm;   /* (d)                              */
    float *q_a, *q_a_norm;         /* (dq, d), (dq); NULL when dq == 0  */
    float *q_b;                    /* (H*dqk, dq) or q_proj (H*dqk, d)  */
    float *kv_a, *kv_a_norm;       /* (dc + dr, d), (dc)                */
    float *kv_b;                   /* (H*(dn+dv), dc)                   */
    float *o;                      /* (d, H*dv)   (NSA: (d, H_q*d_v))   */
    tm_nsa_w nsa;                  /* NSA layers only                   */
    /* DSA lightning indexer (deepseek_v32 only; NULL otherwise) */
    float *ix_wq_b;                /* (H_I*D_I, dq)                     */
    float *ix_wk;                  /* (D_I, d)                          */
    float *ix_kn_w, *ix_kn_b;      /* (D_I) k_norm LayerNorm            */
    float *ix_w;                   /* (H_I, d) weights_proj             */
    int is_moe;
    tm_mlp dense, shared;          /* shared.ff == 0: no shared experts */
    float *router, *router_bias;   /* (E, d), (E) or NULL               */
    tm_mlp *experts;               /* [E]                               */
} tm_layer;

/* What one layer's backward needs, for N = B*T tokens (rows). */
typedef struct {
    float *x;        /* (N, d) residual stream entering the layer      */
    float *xn;       /* (N, d) attn_norm(x)                            */
    float *qa;       /* (N, dq) q_a_proj(xn)                           */
    float *qan;      /* (N, dq) q_a_layernorm(qa)                      */
    float *q;        /* (N, H*dqk) per head [q_nope ; RoPE(q_pe)]      */
    float *c;        /* (N, dc) latent before kv_a_layernorm           */
    float *cn;       /* (N, dc) normed latent                          */
    float *kpe;      /* (N, dr) RoPE(k_pe), shared by the heads        */
    float *kv;       /* (N, H*(dn+dv)) kv_b_proj(cn)                   */
    float *k;        /* (B, H, T, dqk) per-head keys [k_nope ; kpe]    */
    float *o;        /* (N, H*dv) attention outputs (NSA: (N, H_q*d_v)) */
    /* NSA (attn_nsa.c): roped q and k, v, gates after the sigmoid, and the
       operator's saved buffers, one block per sequence (tm->nsa_sz strides) */
    float *nq, *nk[3], *nv[3], *ng;
    float *n_obr, *n_lse, *n_kc, *n_vc, *n_hk, *n_hv;
    int32_t *n_sel;
    /* NSA selection alignment (nsa_align.h; --nsa-align): per sequence
       tau and dKL/ds (T, H_kv, n), the rows' KL (T, H_kv), and dL/dKL of
       each row for the backward (0 when off or no row counted) */
    float *n_atgt, *n_ags, *n_akl;
    double n_ascale;
    float *lse;      /* (B, H, T) log-sum-exp of each attention row    */
    /* DSA indexer (attn_dsa.c), in the final form of idx_ops.h */
    float *ix_q;     /* (N, H_I*D_I) RoPE_half(wq_b(qan))              */
    float *ix_kraw;  /* (N, D_I) wk(xn), before k_norm                 */
    float *ix_k;     /* (N, D_I) RoPE_half(LayerNorm(kraw))            */
    float *ix_w;     /* (N, H_I) weights_proj(xn) H_I^-1/2 D_I^-1/2    */
    int32_t *ix_sel; /* (N, min(index_topk, max_t)) sparse stage: the
                        indexer's top-k keys of each query, ascending, -1
                        padded (per call kk = min(index_topk, T) columns) */
    float *ix_isel;  /* (N, kk) sparse stage: I at the selected keys       */
    float *ix_tgt;   /* (N, kk) sparse stage: the KL target there (MLA's
                        sparse attention probabilities summed over heads) */
    float *xm;       /* (N, d) residual after attention                */
    float *xn2;      /* (N, d) ffn_norm(xm)                            */
    float *fg, *fu, *fh; /* (N, ff) dense or shared: gate, up, silu(g)*u */
    /* MoE */
    float *z;        /* (N, E) router logits                           */
    int32_t *sel;    /* (N, K) chosen experts                          */
    float *gw;       /* (N, K) their gate weights (gate_fwd)           */
    int32_t *row_of; /* (N*K) row of (t, j) in the expert buffers      */
    int32_t *tok;    /* (N*K) token of each expert row, grouped by expert */
    int32_t *slot;   /* (N*K) t*K + j of each expert row               */
    int64_t *off;    /* (E+1) first row of each expert                 */
    float *eg, *eu, *eh; /* (N*K, moe_ff) experts' gate, up, hidden    */
    float *ey;       /* (N*K, d) experts' outputs (before the gate weight) */
} tm_act;

struct dsc_train_model {
    dsc_config cfg;
    int64_t max_b, max_t, n_layers;
    dsc_kctx *k;       /* fp32 GEMMs of the linear layers (OpenBLAS / packed) */
    /* meta */
    void *meta;
    dsc_param *params;
    int64_t n_params;
    tm_layer *layers;
    /* parameters, then gradients */
    float *data, *grad;
    int64_t n_floats;
    float *embed, *final_norm, *lm_head;   /* lm_head == embed when tied */
    /* activations */
    float *acts;
    tm_act *act;                   /* [L] (in meta)                       */
    float *rope_cos, *rope_sin;    /* (max_t, dr/2) YaRN tables            */
    int32_t *ids, *tgt;            /* (N) inputs, targets                  */
    float *kva;                    /* (N, dc + dr)                         */
    float *y;                      /* (N, d) block output                  */
    float *xf, *xfn;               /* (N, d) final residual, final_norm    */
    float *logits;                 /* (N, V); its gradient after the loss */
    float *scores, *sel_score;     /* (N, E) routing scratch               */
    float *sel_w;                  /* (N, K)                               */
    float *group_ws;               /* (n_group)                            */
    float *xe, *dxe, *dye;         /* (N, d) one expert's rows             */
    float *dx, *dxn;               /* (N, d)                               */
    float *dq, *dqan, *dqa;        /* (N, H*dqk), (N, dq), (N, dq)         */
    float *dkva, *dc, *dcn, *dkpe; /* (N, dc+dr), (N, dc), (N, dc), (N, dr) */
    float *dkv, *dk, *dO;          /* (N, H*(dn+dv)), (B,H,T,dqk), (N, H*dv) */
    float *dh, *dg, *du;           /* (N, ff_max)                          */
    float *dz, *dgw;               /* (N, E), (N, K)                       */
    float *attn_ws;                /* [n_threads][dsc_tk_attn_scratch(max_t)] */
    int64_t attn_ws_floats;        /* per thread                           */
    int n_threads;                 /* of k                                 */
    double *row_loss;              /* (N) cross-entropy terms              */
    int64_t *load;                 /* (L, E)                               */
    int64_t last_n;                /* tokens of the last forward           */
    /* sequence-wise balance loss (spec §5.6) */
    double bal_alpha;              /* 0: off                               */
    double *bal_f, *bal_c;         /* (E) scratch                          */
    double part_ce, part_bal, part_mtp;   /* of the last forward          */
    /* MTP (spec §6, D = 1): layer n_layers of layers/act/load when has_mtp */
    int has_mtp, mtp_ran;
    double mtp_lambda;
    float *mtp_enorm, *mtp_hnorm, *mtp_eh, *mtp_head_norm;   /* (d), (d), (d, 2d), (d) */
    int32_t *mtp_ids, *mtp_tgt;    /* (N) tok[i+1], tok[i+2]               */
    float *mtp_e, *mtp_en;         /* (N, d) Emb(tok[i+1]), enorm of it     */
    float *mtp_h, *mtp_hn;         /* (N, d) main h_i (post-norm), hnorm    */
    float *mtp_cat, *mtp_dcat;     /* (N, 2d) [en ; hn], its gradient       */
    float *mtp_out, *mtp_outn;     /* (N, d) block output, shared_head.norm */
    float *mtp_logits;             /* (N, V)                               */
    float *mtp_dxf;                /* (N, d) MTP's gradient into main xfn   */
    /* NSA (attention_type "nsa", attn_nsa.c) */
    int is_nsa;
    dsc_nsa_config nsa;
    dsc_nsa_fast_opts nsa_opts;    /* threads = n_threads, default chunks  */
    dsc_nsa_sizes nsa_sz;          /* for max_t tokens: per-sequence strides */
    size_t nsa_ws_bytes;
    char *nsa_ws;                  /* the fast operator's scratch          */
    float *nsa_dq, *nsa_dk[3], *nsa_dv[3], *nsa_dg, *nsa_dO;
    double nsa_al_weight;          /* selection alignment weight (0: off)  */
    double nsa_al_sum;             /* its unweighted KL, summed over layers */
    int64_t nsa_al_n;              /* layers summed                        */
    /* DSA (index_topk > 0, attn_dsa.c): the indexer's KL loss weight, the
       statistics of the last forward (sums over the layers that ran it),
       and scratch shared by the layers */
    int is_dsa;
    double dsa_kl_weight;          /* 1 by default                         */
    double dsa_kl_sum, dsa_recall_sum;   /* unweighted KL, recall          */
    int64_t dsa_n, dsa_rec_n;      /* layers summed (KL, recall)           */
    int dsa_recall_on;             /* compute the recall in the forward    */
    float *ix_dq, *ix_dk, *ix_dkraw, *ix_dw;   /* like a->ix_*             */
    float *ix_I, *ix_P, *ix_dI;    /* (max_t, max_t) one sequence          */
    float *ix_Ph;                  /* (max_b, H, max_t, kk) per-head P     */
    float *ix_lse;                 /* (H, max_t) dense lse for the recall  */
    float *ix_fws;                 /* idx_fast / idx_target scratch        */
    double *ix_ws;                 /* kl / recall scratch                  */
    uint32_t *ix_sws;              /* selection scratch                    */
    int dsa_sparse;                /* sparse stage: MLA over the top-k     */
};

/* The linear layers through the fast fp32 GEMMs (the same contracts as
   dsc_op_linear_fwd/bwd_f32, which stay the tested reference):
   y = x W^T; dx += dy W; dW += dy^T x (NULL pointers skip a gradient). */
static inline void lin_fwd(dsc_train_model_t *tm, float *y, const float *x, const float *W,
                           int64_t n, int64_t din, int64_t dout) {
    dsc_k_sgemm_nt(tm->k, n, dout, din, x, din, W, din, y, dout, 0);
}

static inline void lin_bwd(dsc_train_model_t *tm, float *dx, float *dW, const float *dy,
                           const float *x, const float *W, int64_t n, int64_t din, int64_t dout) {
    if (dx) dsc_k_sgemm_nn(tm->k, n, din, dout, dy, dout, W, din, dx, din, 1);
    if (dW) dsc_k_sgemm_tn(tm->k, dout, din, n, dy, dout, x, din, dW, din, 1);
}



/* The gradient of a parameter: same offset in the gradient half. */
static inline float *G(const dsc_train_model_t *tm, const float *p) {
    return tm->grad + (p - tm->data);
}

/* The calling thread's attention scratch (attn_ws, attn_ws_floats each). */
static inline float *tm_thread_ws(const dsc_train_model_t *tm) {
    return tm->attn_ws + (int64_t)dsc_thread_id() * tm->attn_ws_floats;
}

static inline void zero(float *x, int64_t n) {
    if (n > 0) memset(x, 0, (size_t)n * sizeof *x);
}

/* An attention for decoder layer l over B sequences of T tokens, whose
   input is tm->act[l].xn (N, d), N = B*T. */
struct tm_attn_ops {
    const char *name;
    /* output into tm->y (N, d); returns the attention's own loss term
       (already weighted; 0 when it has none) */
    double (*fwd)(dsc_train_model_t *tm, int64_t l, int64_t B, int64_t T);
    /* dy (N, d) in; adds into dx (N, d) and the attention's gradients */
    void (*bwd)(dsc_train_model_t *tm, int64_t l, int64_t B, int64_t T, const float *dy,
                float *dx);
};

/* MLA in its training (naive) form, spec §2 (attn_mla.c). */
extern const tm_attn_ops dsc_tattn_mla;

/* NSA (attn_nsa.c): the table; setup of tm->nsa* from tm->cfg before the
   activations are carved (DSC_ERR_CONFIG / DSC_ERR_ARG); an NSA layer's
   activations and the shared NSA scratch in carve_acts; the parameter
   pointer of a dsc_nsa_tensors slot. */
extern const tm_attn_ops dsc_tattn_nsa;
dsc_status dsc_tnsa_setup(dsc_train_model_t *tm, dsc_err *err);
void dsc_tnsa_carve_layer(dsc_train_model_t *tm, carver *cv, tm_act *a);
void dsc_tnsa_carve_shared(dsc_train_model_t *tm, carver *cv);
float **dsc_tnsa_slot(tm_layer *t, int slot);

/* DSA dense warm-up (attn_dsa.c): MLA's forward and backward unchanged,
   plus the indexer's KL loss (weight tm->dsa_kl_weight) whose gradient
   reaches the indexer's tensors only. Setup checks the config
   (DSC_ERR_CONFIG); carve_layer / carve_shared add the indexer's
   activations and scratch in carve_acts. MLA's own functions are shared
   with it here. */
extern const tm_attn_ops dsc_tattn_dsa;
dsc_status dsc_tdsa_setup(dsc_train_model_t *tm, dsc_err *err);
void dsc_tdsa_carve_layer(dsc_train_model_t *tm, carver *cv, tm_act *a);
void dsc_tdsa_carve_shared(dsc_train_model_t *tm, carver *cv);
double dsc_tmla_fwd(dsc_train_model_t *tm, int64_t l, int64_t B, int64_t T);
/* MLA in two halves (attn_mla.c), for DSA's sparse stage, which puts its
   selection between them: proj_fwd fills a->q, a->k, a->kv (the
   attention's inputs); attend runs the attention of every head, dense
   (sel NULL) or over the selected keys (sel (B, T, kk), tk_sparse.h; P,
   when not NULL, gets each head's probabilities there, (B, H, T, kk)), and
   y = W^O o. attend_bwd is its backward through the projections: the
   parameters' gradients, and dx (added into). */
void dsc_tmla_proj_fwd(dsc_train_model_t *tm, int64_t l, int64_t B, int64_t T);
void dsc_tmla_attend(dsc_train_model_t *tm, int64_t l, int64_t B, int64_t T, const int32_t *sel,
                     int64_t kk, float *P);
void dsc_tmla_attend_bwd(dsc_train_model_t *tm, int64_t l, int64_t B, int64_t T, const float *dy,
                         float *dx, const int32_t *sel, int64_t kk);
void dsc_tmla_bwd(dsc_train_model_t *tm, int64_t l, int64_t B, int64_t T, const float *dy,
                  float *dx);

#endif
