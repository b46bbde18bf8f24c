/*
 * model_train.c - the trainable fp32 model: parameters, saved activations,
 * forward and backward (see model_train.h).
 *
 * Three allocations, one per lifetime class, each carved from a size table
 * walked twice (count, then assign), as llm.c's train_gpt2.c does:
 *   meta   the dsc_param list, tensor names, layer and expert tables;
 *   params parameters then gradients (P floats each, the same layout, so a
 *          parameter's gradient is at the same offset in the second half);
 *   acts   every activation the backward needs, per layer, plus scratch
 *          shared by the layers, for N = max_b * max_t tokens.
 * The backward walks the forward in reverse, each op's backward adding into
 * gradient buffers zeroed just before (ops.h convention). Heads run in
 * parallel (each writes only its own slices); experts run in expert order,
 * so the sums, and hence the gradients, do not depend on the thread count.
 */
#include <math.h>
#include <string.h>

#include "model/model.h"
#include "train/model_train.h"
#include "train/ops.h"
#include "util/util.h"

/* q_a_layernorm / kv_a_layernorm eps, fixed as in mla.c and transformers. */
#define LATENT_EPS 1e-6

typedef struct {
    float *gate, *up, *down;   /* gate/up: (ff, d)  down: (d, ff) */
    int64_t ff;
} tm_mlp;

typedef struct {
    float *attn_norm, *ffn_norm;   /* (d)                              */
    float *q_a, *q_a_norm;         /* (dq, d), (dq); NULL when dq == 0  */
    float *q_b;                    /* (H*dqk, dq) or q_proj (H*dqk, d)  */
    float *kv_a, *kv_a_norm;       /* (dc + dr, d), (dc)                */
    float *kv_b;                   /* (H*(dn+dv), dc)                   */
    float *o;                      /* (d, H*dv)                         */
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
    float *o;        /* (N, H*dv) attention outputs                    */
    float *lse;      /* (B, H, T) log-sum-exp of each attention row    */
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
    float *logits, *dlogits;       /* (N, V)                               */
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
};

/* The linear layers through the fast fp32 GEMMs (the same contracts as
   dsc_op_linear_fwd/bwd_f32, which stay the tested reference):
   y = x W^T; dx += dy W; dW += dy^T x (NULL pointers skip a gradient). */
static void lin_fwd(dsc_train_model_t *tm, float *y, const float *x, const float *W, int64_t n,
                    int64_t din, int64_t dout) {
    dsc_k_sgemm_nt(tm->k, n, dout, din, x, din, W, din, y, dout, 0);
}

static void lin_bwd(dsc_train_model_t *tm, float *dx, float *dW, const float *dy, const float *x,
                    const float *W, int64_t n, int64_t din, int64_t dout) {
    if (dx) dsc_k_sgemm_nn(tm->k, n, din, dout, dy, dout, W, din, dx, din, 1);
    if (dW) dsc_k_sgemm_tn(tm->k, dout, din, n, dy, dout, x, din, dW, din, 1);
}


/* The MTP module's tensors in the checkpoint (bound by model_train.c: the
   inference loader skips model.layers.{L}.*). */
typedef struct {
    dsc_layer ly;
    dsc_mlp *experts;              /* [E], ly.experts                      */
    dsc_wmat enorm, hnorm, eh, head_norm;
} mtp_src;

/* ---- carving: count on the first walk (base NULL), assign on the second ---- */

typedef struct {
    char *base;
    size_t used;
} carver;

static void *carve(carver *cv, int64_t n, size_t elem) {
    size_t bytes = ((size_t)(n > 0 ? n : 0) * elem + 63) / 64 * 64;
    void *p = cv->base && n > 0 ? cv->base + cv->used : NULL;
    cv->used += bytes;
    return p;
}
#define CARVE(cv, n, T) ((T *)carve((cv), (n), sizeof(T)))

/* ---- parameters ---- */

typedef struct {
    const dsc_model_t *m;
    dsc_train_model_t *tm;
    int pass;                /* 0: count, 1: assign and copy */
    int64_t n_params, n_floats;
    size_t name_bytes;
    char *names;             /* pass 1: where the next name goes */
    const mtp_src *mtp;      /* NULL: no MTP layer */
} pwalk;

/* One tensor: takes its floats from the parameter block, copies (dequantises)
   the bound weight into it, and lists it under `name`. */
static float *ptake(pwalk *pw, const dsc_wmat *w, const char *name, int decay) {
    int64_t numel = w->rows * w->cols;
    size_t nlen = strlen(name) + 1;
    float *p = NULL;
    if (pw->pass == 1) {
        dsc_train_model_t *tm = pw->tm;
        p = tm->data + pw->n_floats;
        for (int64_t r = 0; r < w->rows; r++) dsc_wmat_row(w, r, 0, w->cols, p + r * w->cols);
        dsc_param *pr = &tm->params[pw->n_params];
        memcpy(pw->names, name, nlen);
        pr->name = pw->names;
        pr->data = p;
        pr->grad = tm->grad + pw->n_floats;
        pr->decay = decay;
        /* a vector is bound as one row of cols values */
        if (w->rows == 1 && !decay) {
            pr->ndim = 1;
            pr->shape[0] = w->cols;
        } else {
            pr->ndim = 2;
            pr->shape[0] = w->rows;
            pr->shape[1] = w->cols;
        }
        pw->names += nlen;
    }
    pw->n_params++;
    pw->n_floats += (numel + 15) / 16 * 16;   /* 64-byte aligned tensors */
    pw->name_bytes += nlen;
    return p;
}

static void pmlp(pwalk *pw, const dsc_mlp *src, tm_mlp *dst, const char *prefix) {
    char n[256];
    tm_mlp t = {0};
    snprintf(n, sizeof n, "%s.gate_proj.weight", prefix);
    t.gate = ptake(pw, &src->gate, n, 1);
    snprintf(n, sizeof n, "%s.up_proj.weight", prefix);
    t.up = ptake(pw, &src->up, n, 1);
    snprintf(n, sizeof n, "%s.down_proj.weight", prefix);
    t.down = ptake(pw, &src->down, n, 1);
    t.ff = src->gate.rows;
    if (dst) *dst = t;
}

/* One decoder layer's tensors (index l: its checkpoint names) into tm->layers[l]. */
static void player(pwalk *pw, const dsc_layer *ly, int64_t l) {
    const dsc_config *c = &pw->m->cfg;
    dsc_train_model_t *tm = pw->tm;
    int assign = pw->pass == 1;
    char n[256];
    tm_layer t = {0};
#define NAME(fmt) (snprintf(n, sizeof n, "model.layers.%lld." fmt, (long long)l), n)
    t.attn_norm = ptake(pw, &ly->attn_norm, NAME("input_layernorm.weight"), 0);
    t.ffn_norm = ptake(pw, &ly->ffn_norm, NAME("post_attention_layernorm.weight"), 0);
    if (c->q_lora_rank > 0) {
        t.q_a = ptake(pw, &ly->q_a, NAME("self_attn.q_a_proj.weight"), 1);
        t.q_a_norm = ptake(pw, &ly->q_a_norm, NAME("self_attn.q_a_layernorm.weight"), 0);
        t.q_b = ptake(pw, &ly->q_b, NAME("self_attn.q_b_proj.weight"), 1);
    } else {
        t.q_b = ptake(pw, &ly->q_b, NAME("self_attn.q_proj.weight"), 1);
    }
    t.kv_a = ptake(pw, &ly->kv_a, NAME("self_attn.kv_a_proj_with_mqa.weight"), 1);
    t.kv_a_norm = ptake(pw, &ly->kv_a_norm, NAME("self_attn.kv_a_layernorm.weight"), 0);
    t.kv_b = ptake(pw, &ly->kv_b, NAME("self_attn.kv_b_proj.weight"), 1);
    t.o = ptake(pw, &ly->o, NAME("self_attn.o_proj.weight"), 1);
    t.is_moe = ly->is_moe;
    if (!ly->is_moe) {
        snprintf(n, sizeof n, "model.layers.%lld.mlp", (long long)l);
        pmlp(pw, &ly->dense, &t.dense, n);
    } else {
        t.router = ptake(pw, &ly->router, NAME("mlp.gate.weight"), 1);
        if (ly->router_bias.data)
            t.router_bias =
                ptake(pw, &ly->router_bias, NAME("mlp.gate.e_score_correction_bias"), 0);
        if (c->n_shared_experts > 0) {
            snprintf(n, sizeof n, "model.layers.%lld.mlp.shared_experts", (long long)l);
            pmlp(pw, &ly->shared, &t.shared, n);
        }
        if (assign) t.experts = tm->layers[l].experts;   /* table carved in meta */
        for (int64_t x = 0; x < c->n_routed_experts; x++) {
            snprintf(n, sizeof n, "model.layers.%lld.mlp.experts.%lld", (long long)l,
                     (long long)x);
            pmlp(pw, &ly->experts[x], assign ? &t.experts[x] : NULL, n);
        }
    }
#undef NAME
    if (assign) tm->layers[l] = t;
}

/* Every bound tensor in weights.c's order (the checkpoint's). */
static void pwalk_model(pwalk *pw) {
    const dsc_model_t *m = pw->m;
    const dsc_config *c = &m->cfg;
    dsc_train_model_t *tm = pw->tm;
    int assign = pw->pass == 1;
    char n[256];
    float *e = ptake(pw, &m->embed, "model.embed_tokens.weight", 1);
    float *fn = ptake(pw, &m->final_norm, "model.norm.weight", 0);
    int tied = m->lm_head.data == m->embed.data;
    float *lm = tied ? e : ptake(pw, &m->lm_head, "lm_head.weight", 1);
    if (assign) tm->embed = e, tm->final_norm = fn, tm->lm_head = lm;
    for (int64_t l = 0; l < c->num_hidden_layers; l++) player(pw, &m->layers[l], l);
    if (pw->mtp) {
        const mtp_src *x = pw->mtp;
        int64_t l = c->num_hidden_layers;
#define NAME(fmt) (snprintf(n, sizeof n, "model.layers.%lld." fmt, (long long)l), n)
        float *en = ptake(pw, &x->enorm, NAME("enorm.weight"), 0);
        float *hn = ptake(pw, &x->hnorm, NAME("hnorm.weight"), 0);
        float *eh = ptake(pw, &x->eh, NAME("eh_proj.weight"), 1);
        player(pw, &x->ly, l);
        float *sn = ptake(pw, &x->head_norm, NAME("shared_head.norm.weight"), 0);
#undef NAME
        if (assign)
            tm->mtp_enorm = en, tm->mtp_hnorm = hn, tm->mtp_eh = eh, tm->mtp_head_norm = sn;
    }
}

/* ---- activations ---- */

static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

static void carve_acts(dsc_train_model_t *tm, carver *cv) {
    const dsc_config *c = &tm->cfg;
    int64_t N = tm->max_b * tm->max_t, d = c->hidden_size, H = c->num_attention_heads;
    int64_t dq = c->q_lora_rank, dc = c->kv_lora_rank, dr = c->qk_rope_head_dim;
    int64_t dn = c->qk_nope_head_dim, dv = c->v_head_dim, dqk = dn + dr;
    int64_t E = c->n_routed_experts, K = c->num_experts_per_tok, V = c->vocab_size;
    int64_t ff_sh = c->n_shared_experts * c->moe_intermediate_size;
    int64_t ff_max = max64(max64(c->intermediate_size, ff_sh), c->moe_intermediate_size);
    for (int64_t l = 0; l < tm->n_layers + tm->has_mtp; l++) {
        tm_act *a = &tm->act[l];
        int moe = tm->layers[l].is_moe;
        int64_t ff = moe ? ff_sh : c->intermediate_size;
        a->x = CARVE(cv, N * d, float);
        a->xn = CARVE(cv, N * d, float);
        a->qa = CARVE(cv, N * dq, float);
        a->qan = CARVE(cv, N * dq, float);
        a->q = CARVE(cv, N * H * dqk, float);
        a->c = CARVE(cv, N * dc, float);
        a->cn = CARVE(cv, N * dc, float);
        a->kpe = CARVE(cv, N * dr, float);
        a->kv = CARVE(cv, N * H * (dn + dv), float);
        a->k = CARVE(cv, N * H * dqk, float);
        a->o = CARVE(cv, N * H * dv, float);
        a->lse = CARVE(cv, N * H, float);
        a->xm = CARVE(cv, N * d, float);
        a->xn2 = CARVE(cv, N * d, float);
        a->fg = CARVE(cv, N * ff, float);
        a->fu = CARVE(cv, N * ff, float);
        a->fh = CARVE(cv, N * ff, float);
        if (moe) {
            int64_t NK = N * K, mf = c->moe_intermediate_size;
            a->z = CARVE(cv, N * E, float);
            a->sel = CARVE(cv, NK, int32_t);
            a->gw = CARVE(cv, NK, float);
            a->row_of = CARVE(cv, NK, int32_t);
            a->tok = CARVE(cv, NK, int32_t);
            a->slot = CARVE(cv, NK, int32_t);
            a->off = CARVE(cv, E + 1, int64_t);
            a->eg = CARVE(cv, NK * mf, float);
            a->eu = CARVE(cv, NK * mf, float);
            a->eh = CARVE(cv, NK * mf, float);
            a->ey = CARVE(cv, NK * d, float);
        }
    }
    tm->rope_cos = CARVE(cv, tm->max_t * (dr / 2), float);
    tm->rope_sin = CARVE(cv, tm->max_t * (dr / 2), float);
    tm->ids = CARVE(cv, N, int32_t);
    tm->tgt = CARVE(cv, N, int32_t);
    tm->kva = CARVE(cv, N * (dc + dr), float);
    tm->y = CARVE(cv, N * d, float);
    tm->xf = CARVE(cv, N * d, float);
    tm->xfn = CARVE(cv, N * d, float);
    tm->logits = CARVE(cv, N * V, float);
    tm->dlogits = CARVE(cv, N * V, float);
    tm->scores = CARVE(cv, N * E, float);
    tm->sel_score = CARVE(cv, N * E, float);
    tm->sel_w = CARVE(cv, N * K, float);
    tm->group_ws = CARVE(cv, max64(c->n_group, 1), float);
    tm->xe = CARVE(cv, N * d, float);
    tm->dxe = CARVE(cv, N * d, float);
    tm->dye = CARVE(cv, N * d, float);
    tm->dx = CARVE(cv, N * d, float);
    tm->dxn = CARVE(cv, N * d, float);
    tm->dq = CARVE(cv, N * H * dqk, float);
    tm->dqan = CARVE(cv, N * dq, float);
    tm->dqa = CARVE(cv, N * dq, float);
    tm->dkva = CARVE(cv, N * (dc + dr), float);
    tm->dc = CARVE(cv, N * dc, float);
    tm->dcn = CARVE(cv, N * dc, float);
    tm->dkpe = CARVE(cv, N * dr, float);
    tm->dkv = CARVE(cv, N * H * (dn + dv), float);
    tm->dk = CARVE(cv, N * H * dqk, float);
    tm->dO = CARVE(cv, N * H * dv, float);
    tm->dh = CARVE(cv, N * ff_max, float);
    tm->dg = CARVE(cv, N * ff_max, float);
    tm->du = CARVE(cv, N * ff_max, float);
    tm->dz = CARVE(cv, N * E, float);
    tm->dgw = CARVE(cv, N * K, float);
    tm->load = CARVE(cv, (tm->n_layers + tm->has_mtp) * E, int64_t);
    int64_t Nm = tm->has_mtp ? N : 0;
    tm->mtp_ids = CARVE(cv, Nm, int32_t);
    tm->mtp_tgt = CARVE(cv, Nm, int32_t);
    tm->mtp_e = CARVE(cv, Nm * d, float);
    tm->mtp_en = CARVE(cv, Nm * d, float);
    tm->mtp_h = CARVE(cv, Nm * d, float);
    tm->mtp_hn = CARVE(cv, Nm * d, float);
    tm->mtp_cat = CARVE(cv, Nm * 2 * d, float);
    tm->mtp_dcat = CARVE(cv, Nm * 2 * d, float);
    tm->mtp_out = CARVE(cv, Nm * d, float);
    tm->mtp_outn = CARVE(cv, Nm * d, float);
    tm->mtp_logits = CARVE(cv, Nm * V, float);
    tm->mtp_dxf = CARVE(cv, Nm * d, float);
    tm->bal_f = CARVE(cv, E, double);
    tm->bal_c = CARVE(cv, E, double);
}

/* ---- the MTP module's tensors ---- */

/* Bind `name` as (rows, cols) (cols == 0: a vector of rows) from m's files,
   as weights.c binds the main model's. */
static dsc_status mbind(const dsc_model_t *m, dsc_wmat *w, const char *name, int64_t rows,
                        int64_t cols, dsc_err *err) {
    dsc_st_tensor *t = dsc_st_find(m->st, name);
    if (!t)
        return dsc_err_set(err, DSC_ERR_MISSING,
                           "MTP tensor \"%s\" is missing from the checkpoint "
                           "(num_nextn_predict_layers = %lld)", name,
                           (long long)m->cfg.num_nextn_predict_layers);
    int nd = cols ? 2 : 1;
    if (t->ndim != nd || t->shape[0] != rows || (cols && t->shape[1] != cols))
        return dsc_err_set(err, DSC_ERR_SHAPE, "MTP tensor \"%s\" has %d dims [%lld, ...], "
                           "expected [%lld%s%lld]", name, t->ndim, (long long)t->shape[0],
                           (long long)rows, cols ? ", " : "", (long long)cols);
    if (t->dtype != DSC_F32 && t->dtype != DSC_BF16 && t->dtype != DSC_F16 &&
        t->dtype != DSC_F8_E4M3)
        return dsc_err_set(err, DSC_ERR_UNSUPPORTED, "MTP tensor \"%s\": dtype %s", name,
                           dsc_dtype_name(t->dtype));
    if ((uintptr_t)t->data % dsc_dtype_size(t->dtype) != 0)
        return dsc_err_set(err, DSC_ERR_UNSUPPORTED, "MTP tensor \"%s\": unaligned data",
                           name);
    memset(w, 0, sizeof *w);
    w->dtype = t->dtype;
    w->rows = cols ? rows : 1;
    w->cols = cols ? cols : rows;
    w->data = t->data;
    if (t->dtype != DSC_F8_E4M3) return DSC_OK;
    char sname[512];
    snprintf(sname, sizeof sname, "%s_scale_inv", name);
    dsc_st_tensor *sc = dsc_st_find(m->st, sname);
    int64_t sr = (rows + DSC_FP8_BLOCK - 1) / DSC_FP8_BLOCK;
    int64_t scc = (cols + DSC_FP8_BLOCK - 1) / DSC_FP8_BLOCK;
    if (!cols || !sc || sc->dtype != DSC_F32 || sc->ndim != 2 || sc->shape[0] != sr ||
        sc->shape[1] != scc || (uintptr_t)sc->data % 4 != 0)
        return dsc_err_set(err, DSC_ERR_SHAPE, "MTP tensor \"%s\" is F8_E4M3 without a valid "
                           "F32 [%lld, %lld] scale \"%s\"", name, (long long)sr,
                           (long long)scc, sname);
    w->scale = sc->data;
    w->scale_cols = scc;
    return DSC_OK;
}

static dsc_status mbind_mlp(const dsc_model_t *m, dsc_mlp *mlp, const char *prefix,
                            int64_t ff, dsc_err *err) {
    int64_t d = m->cfg.hidden_size;
    char n[512];
    snprintf(n, sizeof n, "%s.gate_proj.weight", prefix);
    DSC_TRY(mbind(m, &mlp->gate, n, ff, d, err));
    snprintf(n, sizeof n, "%s.up_proj.weight", prefix);
    DSC_TRY(mbind(m, &mlp->up, n, ff, d, err));
    snprintf(n, sizeof n, "%s.down_proj.weight", prefix);
    DSC_TRY(mbind(m, &mlp->down, n, d, ff, err));
    return DSC_OK;
}

/* The MTP module model.layers.{L}.* (x->experts allocated by the caller). */
static dsc_status mtp_bind(const dsc_model_t *m, mtp_src *x, dsc_err *err) {
    const dsc_config *c = &m->cfg;
    int64_t L = c->num_hidden_layers, d = c->hidden_size, H = c->num_attention_heads;
    int64_t dqk = c->qk_nope_head_dim + c->qk_rope_head_dim, E = c->n_routed_experts;
    dsc_layer *ly = &x->ly;
    char n[512];
#define NAME(fmt) (snprintf(n, sizeof n, "model.layers.%lld." fmt, (long long)L), n)
    DSC_TRY(mbind(m, &x->enorm, NAME("enorm.weight"), d, 0, err));
    DSC_TRY(mbind(m, &x->hnorm, NAME("hnorm.weight"), d, 0, err));
    DSC_TRY(mbind(m, &x->eh, NAME("eh_proj.weight"), d, 2 * d, err));
    DSC_TRY(mbind(m, &x->head_norm, NAME("shared_head.norm.weight"), d, 0, err));
    DSC_TRY(mbind(m, &ly->attn_norm, NAME("input_layernorm.weight"), d, 0, err));
    DSC_TRY(mbind(m, &ly->ffn_norm, NAME("post_attention_layernorm.weight"), d, 0, err));
    if (c->q_lora_rank > 0) {
        DSC_TRY(mbind(m, &ly->q_a, NAME("self_attn.q_a_proj.weight"), c->q_lora_rank, d, err));
        DSC_TRY(mbind(m, &ly->q_a_norm, NAME("self_attn.q_a_layernorm.weight"), c->q_lora_rank,
                      0, err));
        DSC_TRY(mbind(m, &ly->q_b, NAME("self_attn.q_b_proj.weight"), H * dqk, c->q_lora_rank,
                      err));
    } else {
        DSC_TRY(mbind(m, &ly->q_b, NAME("self_attn.q_proj.weight"), H * dqk, d, err));
    }
    DSC_TRY(mbind(m, &ly->kv_a, NAME("self_attn.kv_a_proj_with_mqa.weight"),
                  c->kv_lora_rank + c->qk_rope_head_dim, d, err));
    DSC_TRY(mbind(m, &ly->kv_a_norm, NAME("self_attn.kv_a_layernorm.weight"), c->kv_lora_rank,
                  0, err));
    DSC_TRY(mbind(m, &ly->kv_b, NAME("self_attn.kv_b_proj.weight"),
                  H * (c->qk_nope_head_dim + c->v_head_dim), c->kv_lora_rank, err));
    DSC_TRY(mbind(m, &ly->o, NAME("self_attn.o_proj.weight"), d, H * c->v_head_dim, err));
    ly->is_moe = dsc_config_layer_is_moe(c, L);
    if (!ly->is_moe) {
        snprintf(n, sizeof n, "model.layers.%lld.mlp", (long long)L);
        return mbind_mlp(m, &ly->dense, n, c->intermediate_size, err);
    }
    DSC_TRY(mbind(m, &ly->router, NAME("mlp.gate.weight"), E, d, err));
    if (c->topk_method == DSC_TOPK_NOAUX_TC)
        DSC_TRY(mbind(m, &ly->router_bias, NAME("mlp.gate.e_score_correction_bias"), E, 0, err));
#undef NAME
    if (c->n_shared_experts > 0) {
        snprintf(n, sizeof n, "model.layers.%lld.mlp.shared_experts", (long long)L);
        DSC_TRY(mbind_mlp(m, &ly->shared, n, c->n_shared_experts * c->moe_intermediate_size,
                          err));
    }
    ly->experts = x->experts;
    for (int64_t e = 0; e < E; e++) {
        snprintf(n, sizeof n, "model.layers.%lld.mlp.experts.%lld", (long long)L,
                 (long long)e);
        DSC_TRY(mbind_mlp(m, &x->experts[e], n, c->moe_intermediate_size, err));
    }
    return DSC_OK;
}

/* ---- creation ---- */

static dsc_status model_new(const dsc_model_t *m, int64_t max_b, int64_t max_t, int with_mtp,
                            double mtp_weight, dsc_train_model_t **out, dsc_err *err) {
    *out = NULL;
    const dsc_config *c = &m->cfg;
    if (max_b < 1 || max_t < 1)
        return dsc_err_set(err, DSC_ERR_ARG, "batch %lld x %lld tokens: both must be >= 1",
                           (long long)max_b, (long long)max_t);
    if (c->index_topk > 0)
        return dsc_err_set(err, DSC_ERR_UNSUPPORTED,
                           "training a %s model (DSA indexer) is not supported yet",
                           c->model_type);
    size_t nn = 0;
    if (!dsc_mul_ok((size_t)max_b, (size_t)max_t, &nn) || nn > (size_t)INT32_MAX / 64)
        return dsc_err_set(err, DSC_ERR_ARG, "batch %lld x %lld tokens is too large",
                           (long long)max_b, (long long)max_t);
    dsc_train_model_t *tm = calloc(1, sizeof *tm);
    if (!tm) return dsc_err_set(err, DSC_ERR_OOM, "cannot allocate the training model");
    dsc_status ks = dsc_kctx_new(0, 1, &tm->k, err);
    if (ks != DSC_OK) {
        free(tm);
        return ks;
    }
    tm->cfg = *c;
    tm->max_b = max_b;
    tm->max_t = max_t;
    tm->n_layers = c->num_hidden_layers;
    int64_t L = tm->n_layers, E = c->n_routed_experts;

    /* the MTP module (D = 1), read from the checkpoint's files */
    mtp_src mtp = {0};
    if (with_mtp && c->num_nextn_predict_layers != 1) {
        dsc_train_model_free(tm);
        return dsc_err_set(err, c->num_nextn_predict_layers > 1 ? DSC_ERR_UNSUPPORTED
                                                                : DSC_ERR_MISSING,
                           "num_nextn_predict_layers = %lld: MTP training needs exactly one "
                           "MTP module (D = 1)", (long long)c->num_nextn_predict_layers);
    }
    if (with_mtp) {
        mtp.experts = calloc((size_t)(E > 0 ? E : 1), sizeof *mtp.experts);
        if (!mtp.experts) {
            dsc_train_model_free(tm);
            return dsc_err_set(err, DSC_ERR_OOM, "cannot allocate the MTP expert table");
        }
        dsc_status st = mtp_bind(m, &mtp, err);
        if (st != DSC_OK) {
            free(mtp.experts);
            dsc_train_model_free(tm);
            return st;
        }
        tm->has_mtp = 1;
        tm->mtp_lambda = mtp_weight;
    }
    int64_t LM = L + tm->has_mtp;

    /* count parameters and names */
    pwalk pw = {m, tm, 0, 0, 0, 0, NULL, tm->has_mtp ? &mtp : NULL};
    pwalk_model(&pw);
    int64_t n_moe = 0;
    for (int64_t l = 0; l < L; l++) n_moe += m->layers[l].is_moe;
    n_moe += tm->has_mtp && mtp.ly.is_moe;

    /* meta: params, names, layers, expert tables, activation table */
    carver mc = {NULL, 0};
    for (int k = 0; k < 2; k++) {
        mc.used = 0;
        tm->params = CARVE(&mc, pw.n_params, dsc_param);
        tm->layers = CARVE(&mc, LM, tm_layer);
        tm->act = CARVE(&mc, LM, tm_act);
        tm_mlp *pool = CARVE(&mc, n_moe * E, tm_mlp);
        char *names = CARVE(&mc, (int64_t)pw.name_bytes, char);
        if (k == 0) {
            tm->meta = calloc(1, mc.used ? mc.used : 64);
            if (!tm->meta) break;
            mc.base = tm->meta;
        } else {
            for (int64_t l = 0; l < LM; l++)
                if (l < L ? m->layers[l].is_moe : mtp.ly.is_moe)
                    tm->layers[l].experts = pool, pool += E;
            pw.names = names;
        }
    }
    size_t pbytes = 0;
    int ok = tm->meta && dsc_mul_ok((size_t)pw.n_floats, 2 * sizeof(float), &pbytes);
    if (ok) tm->data = calloc(1, pbytes);
    ok = ok && tm->data;
    if (ok) {
        tm->n_floats = pw.n_floats;
        tm->grad = tm->data + pw.n_floats;
        tm->n_params = pw.n_params;
        pw.pass = 1;
        pw.n_params = pw.n_floats = 0;
        pw.name_bytes = 0;
        pwalk_model(&pw);
        /* activations (layers' is_moe is now known) */
        carver ac = {NULL, 0};
        carve_acts(tm, &ac);
        tm->acts = calloc(1, ac.used ? ac.used : 64);
        ok = tm->acts != NULL;
        if (ok) {
            ac.base = (char *)tm->acts;
            ac.used = 0;
            carve_acts(tm, &ac);
        }
    }
    free(mtp.experts);
    if (!ok) {
        dsc_train_model_free(tm);
        return dsc_err_set(err, DSC_ERR_OOM,
                           "cannot allocate the training model (%lld parameters, batch %lld x "
                           "%lld)", (long long)pw.n_floats, (long long)max_b, (long long)max_t);
    }

    dsc_rope_params rp;
    dsc_config_rope_params(c, &rp);
    dsc_rope_tables(&rp, max_t, tm->rope_cos, tm->rope_sin);
    *out = tm;
    return DSC_OK;
}

dsc_status dsc_train_model_new(const dsc_model_t *m, int64_t max_b, int64_t max_t,
                               dsc_train_model_t **out, dsc_err *err) {
    return model_new(m, max_b, max_t, 0, 0.0, out, err);
}

dsc_status dsc_train_model_new_mtp(const dsc_model_t *m, int64_t max_b, int64_t max_t,
                                   double mtp_weight, dsc_train_model_t **out, dsc_err *err) {
    return model_new(m, max_b, max_t, 1, mtp_weight, out, err);
}

void dsc_train_model_free(dsc_train_model_t *tm) {
    if (!tm) return;
    dsc_kctx_free(tm->k);
    free(tm->acts);
    free(tm->data);
    free(tm->meta);
    free(tm);
}

const dsc_config *dsc_train_model_config(const dsc_train_model_t *tm) { return &tm->cfg; }

const dsc_param *dsc_train_model_params(const dsc_train_model_t *tm, int64_t *n) {
    *n = tm->n_params;
    return tm->params;
}

float *dsc_train_model_data(dsc_train_model_t *tm, int64_t *n) {
    *n = tm->n_floats;
    return tm->data;
}

float *dsc_train_model_grad(dsc_train_model_t *tm, int64_t *n) {
    *n = tm->n_floats;
    return tm->grad;
}

const int32_t *dsc_train_model_routing(const dsc_train_model_t *tm, int64_t l) {
    if (l < 0 || l >= tm->n_layers + tm->has_mtp || !tm->layers[l].is_moe) return NULL;
    return tm->act[l].sel;
}

const int64_t *dsc_train_model_expert_load(const dsc_train_model_t *tm) { return tm->load; }

void dsc_train_set_balance_alpha(dsc_train_model_t *tm, double alpha) { tm->bal_alpha = alpha; }

int dsc_train_model_has_mtp(const dsc_train_model_t *tm) { return tm->has_mtp; }

void dsc_train_set_mtp_weight(dsc_train_model_t *tm, double lambda) { tm->mtp_lambda = lambda; }

void dsc_train_loss_parts(const dsc_train_model_t *tm, double *ce, double *bal, double *mtp) {
    if (ce) *ce = tm->part_ce;
    if (bal) *bal = tm->part_bal;
    if (mtp) *mtp = tm->part_mtp;
}

void dsc_train_update_bias(dsc_train_model_t *tm, float gamma) {
    const dsc_config *c = &tm->cfg;
    int64_t E = c->n_routed_experts;
    if (gamma == 0.0f || E == 0) return;
    for (int64_t l = 0; l < tm->n_layers + tm->has_mtp; l++) {
        float *bias = tm->layers[l].router_bias;
        if (!bias) continue;
        const int64_t *load = tm->load + l * E;
        int64_t total = 0;
        for (int64_t e = 0; e < E; e++) total += load[e];
        double mean = (double)total / (double)E;
        for (int64_t e = 0; e < E; e++) {
            float sgn = mean > (double)load[e] ? 1.0f : mean < (double)load[e] ? -1.0f : 0.0f;
            bias[e] = bias[e] + gamma * sgn;
        }
    }
}

/* The gradient of a parameter: same offset in the gradient half. */
static float *G(const dsc_train_model_t *tm, const float *p) {
    return tm->grad + (p - tm->data);
}

static void zero(float *x, int64_t n) {
    if (n > 0) memset(x, 0, (size_t)n * sizeof *x);
}

/* ---- forward ---- */

/* SwiGLU MLP on n rows: g = x Wg^T, u = x Wu^T, h = silu(g)*u, y = h Wd^T. */
static void mlp_fwd(dsc_train_model_t *tm, const tm_mlp *w, const float *x, int64_t n, int64_t d,
                    float *g, float *u, float *h, float *y) {
    lin_fwd(tm, g, x, w->gate, n, d, w->ff);
    lin_fwd(tm, u, x, w->up, n, d, w->ff);
    dsc_op_swiglu_fwd_f32(h, g, u, n * w->ff);
    lin_fwd(tm, y, h, w->down, n, w->ff, d);
}

/* MLA (spec §2): a->xn in, tm->y out (B*T, d). */
static void mla_fwd(dsc_train_model_t *tm, const tm_layer *w, tm_act *a, int64_t B, int64_t T) {
    const dsc_config *c = &tm->cfg;
    int64_t N = B * T, d = c->hidden_size, H = c->num_attention_heads;
    int64_t dq = c->q_lora_rank, dc = c->kv_lora_rank, dr = c->qk_rope_head_dim;
    int64_t dn = c->qk_nope_head_dim, dv = c->v_head_dim, dqk = dn + dr, lkv = H * (dn + dv);
    /* q = W^UQ RMSNorm(W^DQ x)  or  q = W^Q x                    (N, H*dqk) */
    if (dq > 0) {
        lin_fwd(tm, a->qa, a->xn, w->q_a, N, d, dq);
        dsc_op_rmsnorm_fwd_f32(a->qan, a->qa, w->q_a_norm, N, dq, LATENT_EPS);
        lin_fwd(tm, a->q, a->qan, w->q_b, N, dq, H * dqk);
    } else {
        lin_fwd(tm, a->q, a->xn, w->q_b, N, d, H * dqk);
    }
    /* [c ; k_pe] = W^DKV x; cn = RMSNorm(c); kv = W^UKV cn        */
    lin_fwd(tm, tm->kva, a->xn, w->kv_a, N, d, dc + dr);
    dsc_op_copy_cols_f32(a->c, dc, tm->kva, dc + dr, N, dc);
    dsc_op_copy_cols_f32(a->kpe, dr, tm->kva + dc, dc + dr, N, dr);
    dsc_op_rmsnorm_fwd_f32(a->cn, a->c, w->kv_a_norm, N, dc, LATENT_EPS);
    lin_fwd(tm, a->kv, a->cn, w->kv_b, N, dc, lkv);
    /* decoupled RoPE on q_pe (per head) and the shared k_pe, positions 0..T-1 */
    dsc_op_rope_slice qs = {T, H * dqk, H, dqk, dn, dr}, ks = {T, dr, 1, dr, 0, dr};
    for (int64_t b = 0; b < B; b++) {
        dsc_op_rope_fwd_f32(a->q + b * T * H * dqk, &qs, NULL, tm->rope_cos, tm->rope_sin,
                            c->rope_interleave);
        dsc_op_rope_fwd_f32(a->kpe + b * T * dr, &ks, NULL, tm->rope_cos, tm->rope_sin,
                            c->rope_interleave);
        dsc_op_mla_k_fwd_f32(a->k + b * H * T * dqk, a->kv + b * T * lkv, a->kpe + b * T * dr,
                             T, H, dn, dr, dv);
    }
    /* per head: o = softmax(s q K^T) V, s = dqk^-1/2 m^2 */
    dsc_op_attn_dims ad = {T, dqk, dv, H * dqk, dqk, lkv, H * dv};
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t bh = 0; bh < B * H; bh++) {
        int64_t b = bh / H, h = bh % H;
        dsc_op_attn_fwd_f32(a->o + b * T * H * dv + h * dv, a->lse + bh * T,
                            a->q + b * T * H * dqk + h * dqk, a->k + bh * T * dqk,
                            a->kv + b * T * lkv + h * (dn + dv) + dn, &ad, c->softmax_scale);
    }
    /* y = W^O o */
    lin_fwd(tm, tm->y, a->o, w->o, N, H * dv, d);
}

/* DeepSeekMoE (spec §5): a->xn2 in, tm->y out. */
static void moe_fwd(dsc_train_model_t *tm, int64_t l, int64_t N) {
    const dsc_config *c = &tm->cfg;
    const tm_layer *w = &tm->layers[l];
    tm_act *a = &tm->act[l];
    int64_t d = c->hidden_size, E = c->n_routed_experts, K = c->num_experts_per_tok;
    int64_t mf = c->moe_intermediate_size;
    /* z = W_gate x; the inference routing chooses; gate_fwd weighs */
    lin_fwd(tm, a->z, a->xn2, w->router, N, d, E);
    dsc_moe_route(c, a->z, w->router_bias, N, tm->scores, tm->sel_score, tm->group_ws, a->sel,
                  tm->sel_w);
    dsc_op_gate_params gp = {E, K, c->scoring_func, c->norm_topk_prob,
                             c->routed_scaling_factor};
    dsc_op_gate_fwd_f32(a->gw, a->z, a->sel, N, &gp);
    /* expert rows: tokens grouped by expert, in token order */
    int64_t *load = tm->load + l * E;
    memset(load, 0, (size_t)E * sizeof *load);
    for (int64_t i = 0; i < N * K; i++) load[a->sel[i]]++;
    a->off[0] = 0;
    for (int64_t e = 0; e < E; e++) a->off[e + 1] = a->off[e] + load[e];
    for (int64_t e = 0; e < E; e++) load[e] = 0;
    for (int64_t i = 0; i < N * K; i++) {
        int64_t e = a->sel[i], r = a->off[e] + load[e]++;
        a->row_of[i] = (int32_t)r;
        a->tok[r] = (int32_t)(i / K);
        a->slot[r] = (int32_t)i;
    }
    /* shared experts, weight 1 */
    if (w->shared.ff > 0)
        mlp_fwd(tm, &w->shared, a->xn2, N, d, a->fg, a->fu, a->fh, tm->y);
    else
        zero(tm->y, N * d);
    /* routed experts on their gathered rows; y[t] += g * FFN_e(x[t]) */
    for (int64_t e = 0; e < E; e++) {
        int64_t r0 = a->off[e], ne = a->off[e + 1] - r0;
        if (!ne) continue;
        for (int64_t j = 0; j < ne; j++)
            memcpy(tm->xe + j * d, a->xn2 + (int64_t)a->tok[r0 + j] * d, (size_t)d * sizeof(float));
        mlp_fwd(tm, &w->experts[e], tm->xe, ne, d, a->eg + r0 * mf, a->eu + r0 * mf,
                a->eh + r0 * mf, a->ey + r0 * d);
        for (int64_t j = 0; j < ne; j++) {
            float g = a->gw[a->slot[r0 + j]];
            float *dst = tm->y + (int64_t)a->tok[r0 + j] * d;
            const float *src = a->ey + (r0 + j) * d;
            for (int64_t i = 0; i < d; i++) dst[i] += g * src[i];
        }
    }
}

/*
 * Sequence-wise balance loss of MoE layer l (spec §5.6) over B sequences of
 * T tokens: per sequence b, f_i = E/(K T) #{t : i chosen for t} (the routed
 * selection: biased scores, group limits; a constant), s'_t = s_t / sum_j
 * s_jt with s = score(z) over all E experts (no bias), P_i = mean_t s'_it,
 * L_b = alpha sum_i f_i P_i; returns mean_b L_b. With dz != NULL, adds
 * d(mean_b L_b)/dz into dz (N, E) (through P only):
 *   dL/dz_jt = (c_j - sum_i c_i s'_it) s'_jt (1 - s_jt for sigmoid),
 *   c_i = alpha f_i / (B T).
 */
static double bal_term(dsc_train_model_t *tm, int64_t l, int64_t B, int64_t T, float *dz) {
    const dsc_config *c = &tm->cfg;
    const tm_act *a = &tm->act[l];
    int64_t E = c->n_routed_experts, K = c->num_experts_per_tok;
    int sig = c->scoring_func == DSC_SCORE_SIGMOID;
    double alpha = tm->bal_alpha, total = 0.0;
    double *f = tm->bal_f, *s = tm->bal_c;
    for (int64_t b = 0; b < B; b++) {
        for (int64_t i = 0; i < E; i++) f[i] = 0.0;
        for (int64_t r = b * T * K; r < (b + 1) * T * K; r++) f[a->sel[r]] += 1.0;
        for (int64_t i = 0; i < E; i++) f[i] *= (double)E / (double)(K * T);
        double lb = 0.0;
        for (int64_t t = b * T; t < (b + 1) * T; t++) {
            const float *zt = a->z + t * E;
            double mx = zt[0], S = 0.0, dot = 0.0;
            for (int64_t i = 1; i < E; i++) mx = zt[i] > mx ? zt[i] : mx;
            for (int64_t i = 0; i < E; i++) {
                s[i] = sig ? 1.0 / (1.0 + exp(-(double)zt[i])) : exp((double)zt[i] - mx);
                S += s[i];
            }
            for (int64_t i = 0; i < E; i++) {
                lb += f[i] * s[i] / S;
                dot += f[i] * s[i] / S;
            }
            if (!dz) continue;
            double cs = alpha / (double)(B * T);
            for (int64_t j = 0; j < E; j++) {
                double sp = s[j] / S;
                dz[t * E + j] += (float)(cs * (f[j] - dot) * sp * (sig ? 1.0 - s[j] : 1.0));
            }
        }
        total += alpha * lb / (double)T;
    }
    return total / (double)B;
}

static dsc_status check_call(const dsc_train_model_t *tm, const int32_t *tokens, int64_t B,
                             int64_t T, dsc_err *err) {
    int64_t V = tm->cfg.vocab_size;
    if (!tokens || B < 1 || T < 1 || T > tm->max_t || B * T > tm->max_b * tm->max_t)
        return dsc_err_set(err, DSC_ERR_ARG,
                           "batch %lld x %lld tokens does not fit the model's %lld x %lld",
                           (long long)B, (long long)T, (long long)tm->max_b,
                           (long long)tm->max_t);
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t <= T; t++) {
            int32_t id = tokens[b * (T + 1) + t];
            if (id >= V || (t < T && id < 0))
                return dsc_err_set(err, DSC_ERR_ARG,
                                   "token id %d at (%lld, %lld) is out of range [0, %lld)", id,
                                   (long long)b, (long long)t, (long long)V);
        }
    return DSC_OK;
}

/* Decoder layer l over B sequences of T tokens: tm->act[l].x in, out (N, d). */
static void layer_fwd(dsc_train_model_t *tm, int64_t l, int64_t B, int64_t T, float *out) {
    const tm_layer *w = &tm->layers[l];
    tm_act *a = &tm->act[l];
    int64_t N = B * T, d = tm->cfg.hidden_size;
    double eps = tm->cfg.rms_norm_eps;
    /* h = h + MLA(RMSNorm(h)) */
    dsc_op_rmsnorm_fwd_f32(a->xn, a->x, w->attn_norm, N, d, eps);
    mla_fwd(tm, w, a, B, T);
    for (int64_t i = 0; i < N * d; i++) a->xm[i] = a->x[i] + tm->y[i];
    /* h = h + FFN(RMSNorm(h)) */
    dsc_op_rmsnorm_fwd_f32(a->xn2, a->xm, w->ffn_norm, N, d, eps);
    if (w->is_moe)
        moe_fwd(tm, l, N);
    else
        mlp_fwd(tm, &w->dense, a->xn2, N, d, a->fg, a->fu, a->fh, tm->y);
    for (int64_t i = 0; i < N * d; i++) out[i] = a->xm[i] + tm->y[i];
}

/*
 * The MTP module (D = 1; spec §6) after the main forward: for i < T-1,
 *   x_i = eh_proj([enorm(Emb(tok[i+1])) ; hnorm(h_i)])   (h_i = main xfn row)
 * then decoder layer L causally over the T-1 positions (RoPE 0..T-2),
 * shared_head.norm, the shared lm_head; returns the mean CE against tok[i+2].
 */
static double mtp_fwd(dsc_train_model_t *tm, int64_t B, int64_t T) {
    const dsc_config *c = &tm->cfg;
    int64_t L = tm->n_layers, Tm = T - 1, Nm = B * Tm, d = c->hidden_size, V = c->vocab_size;
    double eps = c->rms_norm_eps;
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < Tm; i++) {
            int64_t r = b * Tm + i, src = b * T + i;
            tm->mtp_ids[r] = tm->ids[src + 1];
            tm->mtp_tgt[r] = tm->tgt[src + 1];
            memcpy(tm->mtp_h + r * d, tm->xfn + src * d, (size_t)d * sizeof(float));
        }
    dsc_op_embed_fwd_f32(tm->mtp_e, tm->embed, tm->mtp_ids, Nm, d);
    dsc_op_rmsnorm_fwd_f32(tm->mtp_en, tm->mtp_e, tm->mtp_enorm, Nm, d, eps);
    dsc_op_rmsnorm_fwd_f32(tm->mtp_hn, tm->mtp_h, tm->mtp_hnorm, Nm, d, eps);
    dsc_op_copy_cols_f32(tm->mtp_cat, 2 * d, tm->mtp_en, d, Nm, d);
    dsc_op_copy_cols_f32(tm->mtp_cat + d, 2 * d, tm->mtp_hn, d, Nm, d);
    lin_fwd(tm, tm->act[L].x, tm->mtp_cat, tm->mtp_eh, Nm, 2 * d, d);
    layer_fwd(tm, L, B, Tm, tm->mtp_out);
    dsc_op_rmsnorm_fwd_f32(tm->mtp_outn, tm->mtp_out, tm->mtp_head_norm, Nm, d, eps);
    lin_fwd(tm, tm->mtp_logits, tm->mtp_outn, tm->lm_head, Nm, d, V);
    return dsc_op_xent_f32(NULL, tm->mtp_logits, tm->mtp_tgt, Nm, V, 1.0);
}

/* The forward over tokens (B, T+1); returns the mean loss. */
static double forward(dsc_train_model_t *tm, const int32_t *tokens, int64_t B, int64_t T) {
    const dsc_config *c = &tm->cfg;
    int64_t N = B * T, d = c->hidden_size, V = c->vocab_size;
    double eps = c->rms_norm_eps;
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++) {
            tm->ids[b * T + t] = tokens[b * (T + 1) + t];
            tm->tgt[b * T + t] = tokens[b * (T + 1) + t + 1];
        }
    tm->last_n = N;
    memset(tm->load, 0,
           (size_t)((tm->n_layers + tm->has_mtp) * c->n_routed_experts) * sizeof *tm->load);
    /* h = Emb(x) */
    float *h = tm->n_layers > 0 ? tm->act[0].x : tm->xf;
    dsc_op_embed_fwd_f32(h, tm->embed, tm->ids, N, d);
    for (int64_t l = 0; l < tm->n_layers; l++)
        layer_fwd(tm, l, B, T, l + 1 < tm->n_layers ? tm->act[l + 1].x : tm->xf);
    /* logits = lm_head(RMSNorm(h)); loss = mean CE */
    dsc_op_rmsnorm_fwd_f32(tm->xfn, tm->xf, tm->final_norm, N, d, eps);
    lin_fwd(tm, tm->logits, tm->xfn, tm->lm_head, N, d, V);
    double ce = dsc_op_xent_f32(NULL, tm->logits, tm->tgt, N, V, 1.0), bal = 0.0;
    if (tm->bal_alpha != 0.0)
        for (int64_t l = 0; l < tm->n_layers; l++)
            if (tm->layers[l].is_moe) bal += bal_term(tm, l, B, T, NULL);
    tm->mtp_ran = tm->has_mtp && tm->mtp_lambda != 0.0 && T >= 2;
    double mtp = tm->mtp_ran ? mtp_fwd(tm, B, T) : 0.0;
    tm->part_ce = ce;
    tm->part_bal = bal;
    tm->part_mtp = mtp;
    return ce + bal + (tm->mtp_ran ? tm->mtp_lambda * mtp : 0.0);
}

/* ---- backward ---- */

/* MLP backward on n rows: dy in, adds into dx and the weights' gradients.
   g, u, h: the forward's saved values; uses tm->dh/dg/du as scratch. */
static void mlp_bwd(dsc_train_model_t *tm, const tm_mlp *w, const float *x, int64_t n,
                    int64_t d, const float *g, const float *u, const float *h, const float *dy,
                    float *dx) {
    int64_t m = n * w->ff;
    zero(tm->dh, m);
    zero(tm->dg, m);
    zero(tm->du, m);
    lin_bwd(tm, tm->dh, G(tm, w->down), dy, h, w->down, n, w->ff, d);
    dsc_op_swiglu_bwd_f32(tm->dg, tm->du, tm->dh, g, u, m);
    lin_bwd(tm, dx, G(tm, w->gate), tm->dg, x, w->gate, n, d, w->ff);
    lin_bwd(tm, dx, G(tm, w->up), tm->du, x, w->up, n, d, w->ff);
}

/* MoE backward: dy (N, d) in, adds into dx (N, d) and the layer's gradients. */
static void moe_bwd(dsc_train_model_t *tm, int64_t l, int64_t B, int64_t T, const float *dy,
                    float *dx) {
    int64_t N = B * T;
    const dsc_config *c = &tm->cfg;
    const tm_layer *w = &tm->layers[l];
    const tm_act *a = &tm->act[l];
    int64_t d = c->hidden_size, E = c->n_routed_experts, K = c->num_experts_per_tok;
    int64_t mf = c->moe_intermediate_size;
    if (w->shared.ff > 0) mlp_bwd(tm, &w->shared, a->xn2, N, d, a->fg, a->fu, a->fh, dy, dx);
    zero(tm->dgw, N * K);
    for (int64_t e = 0; e < E; e++) {
        int64_t r0 = a->off[e], ne = a->off[e + 1] - r0;
        if (!ne) continue;
        /* y[t] += g * ye: dye = g dy[t], dg = dy[t] . ye */
        for (int64_t j = 0; j < ne; j++) {
            int64_t t = a->tok[r0 + j], s = a->slot[r0 + j];
            const float *dyt = dy + t * d, *ye = a->ey + (r0 + j) * d;
            float g = a->gw[s];
            double dot = 0.0;
            for (int64_t i = 0; i < d; i++) {
                tm->dye[j * d + i] = g * dyt[i];
                dot += (double)dyt[i] * ye[i];
            }
            tm->dgw[s] = (float)dot;
            memcpy(tm->xe + j * d, a->xn2 + t * d, (size_t)d * sizeof(float));
        }
        zero(tm->dxe, ne * d);
        mlp_bwd(tm, &w->experts[e], tm->xe, ne, d, a->eg + r0 * mf, a->eu + r0 * mf,
                a->eh + r0 * mf, tm->dye, tm->dxe);
        for (int64_t j = 0; j < ne; j++) {
            float *dst = dx + (int64_t)a->tok[r0 + j] * d;
            const float *src = tm->dxe + j * d;
            for (int64_t i = 0; i < d; i++) dst[i] += src[i];
        }
    }
    /* gate weights into the router logits, then into W_gate and x */
    dsc_op_gate_params gp = {E, K, c->scoring_func, c->norm_topk_prob,
                             c->routed_scaling_factor};
    zero(tm->dz, N * E);
    dsc_op_gate_bwd_f32(tm->dz, tm->dgw, a->z, a->sel, N, &gp);
    if (tm->bal_alpha != 0.0 && l < tm->n_layers) bal_term(tm, l, B, T, tm->dz);
    lin_bwd(tm, dx, G(tm, w->router), tm->dz, a->xn2, w->router, N, d, E);
}

/* MLA backward: dy (N, d) in, adds into dx (N, d) and the layer's gradients. */
static void mla_bwd(dsc_train_model_t *tm, const tm_layer *w, const tm_act *a, int64_t B,
                    int64_t T, const float *dy, float *dx) {
    const dsc_config *c = &tm->cfg;
    int64_t N = B * T, d = c->hidden_size, H = c->num_attention_heads;
    int64_t dq = c->q_lora_rank, dc = c->kv_lora_rank, dr = c->qk_rope_head_dim;
    int64_t dn = c->qk_nope_head_dim, dv = c->v_head_dim, dqk = dn + dr, lkv = H * (dn + dv);
    zero(tm->dO, N * H * dv);
    lin_bwd(tm, tm->dO, G(tm, w->o), dy, a->o, w->o, N, H * dv, d);
    zero(tm->dq, N * H * dqk);
    zero(tm->dk, N * H * dqk);
    zero(tm->dkv, N * lkv);
    dsc_op_attn_dims ad = {T, dqk, dv, H * dqk, dqk, lkv, H * dv};
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t bh = 0; bh < B * H; bh++) {
        int64_t b = bh / H, h = bh % H;
        int64_t qo = b * T * H * dqk + h * dqk, vo = b * T * lkv + h * (dn + dv) + dn;
        int64_t oo = b * T * H * dv + h * dv;
        dsc_op_attn_bwd_f32(tm->dq + qo, tm->dk + bh * T * dqk, tm->dkv + vo, tm->dO + oo,
                            a->q + qo, a->k + bh * T * dqk, a->kv + vo, a->o + oo,
                            a->lse + bh * T, &ad, c->softmax_scale);
    }
    zero(tm->dkpe, N * dr);
    dsc_op_rope_slice qs = {T, H * dqk, H, dqk, dn, dr}, ks = {T, dr, 1, dr, 0, dr};
    for (int64_t b = 0; b < B; b++) {
        dsc_op_mla_k_bwd_f32(tm->dkv + b * T * lkv, tm->dkpe + b * T * dr,
                             tm->dk + b * H * T * dqk, T, H, dn, dr, dv);
        dsc_op_rope_bwd_f32(tm->dkpe + b * T * dr, &ks, NULL, tm->rope_cos, tm->rope_sin,
                            c->rope_interleave);
        dsc_op_rope_bwd_f32(tm->dq + b * T * H * dqk, &qs, NULL, tm->rope_cos, tm->rope_sin,
                            c->rope_interleave);
    }
    /* kv = W^UKV RMSNorm(c); [c ; k_pe] = W^DKV x */
    zero(tm->dcn, N * dc);
    lin_bwd(tm, tm->dcn, G(tm, w->kv_b), tm->dkv, a->cn, w->kv_b, N, dc, lkv);
    zero(tm->dc, N * dc);
    dsc_op_rmsnorm_bwd_f32(tm->dc, G(tm, w->kv_a_norm), tm->dcn, a->c, w->kv_a_norm, N, dc,
                           LATENT_EPS);
    zero(tm->dkva, N * (dc + dr));
    dsc_op_add_cols_f32(tm->dkva, dc + dr, tm->dc, dc, N, dc);
    dsc_op_add_cols_f32(tm->dkva + dc, dc + dr, tm->dkpe, dr, N, dr);
    lin_bwd(tm, dx, G(tm, w->kv_a), tm->dkva, a->xn, w->kv_a, N, d, dc + dr);
    /* q */
    if (dq > 0) {
        zero(tm->dqan, N * dq);
        lin_bwd(tm, tm->dqan, G(tm, w->q_b), tm->dq, a->qan, w->q_b, N, dq, H * dqk);
        zero(tm->dqa, N * dq);
        dsc_op_rmsnorm_bwd_f32(tm->dqa, G(tm, w->q_a_norm), tm->dqan, a->qa, w->q_a_norm, N, dq,
                               LATENT_EPS);
        lin_bwd(tm, dx, G(tm, w->q_a), tm->dqa, a->xn, w->q_a, N, d, dq);
    } else {
        lin_bwd(tm, dx, G(tm, w->q_b), tm->dq, a->xn, w->q_b, N, d, H * dqk);
    }
}

/* Decoder layer l's backward: tm->dx holds d out on entry, d x on return. */
static void layer_bwd(dsc_train_model_t *tm, int64_t l, int64_t B, int64_t T) {
    const tm_layer *w = &tm->layers[l];
    const tm_act *a = &tm->act[l];
    int64_t N = B * T, d = tm->cfg.hidden_size;
    double eps = tm->cfg.rms_norm_eps;
    /* h_out = xm + FFN(norm(xm)): dx stays, plus the path through the FFN */
    zero(tm->dxn, N * d);
    if (w->is_moe)
        moe_bwd(tm, l, B, T, tm->dx, tm->dxn);
    else
        mlp_bwd(tm, &w->dense, a->xn2, N, d, a->fg, a->fu, a->fh, tm->dx, tm->dxn);
    dsc_op_rmsnorm_bwd_f32(tm->dx, G(tm, w->ffn_norm), tm->dxn, a->xm, w->ffn_norm, N, d, eps);
    /* xm = x + MLA(norm(x)) */
    zero(tm->dxn, N * d);
    mla_bwd(tm, w, a, B, T, tm->dx, tm->dxn);
    dsc_op_rmsnorm_bwd_f32(tm->dx, G(tm, w->attn_norm), tm->dxn, a->x, w->attn_norm, N, d, eps);
}

/* The MTP module's backward (weight mtp_lambda): its gradients added, and
   tm->mtp_dxf (B*T, d) = its gradient w.r.t. the main model's xfn. */
static void mtp_bwd(dsc_train_model_t *tm, int64_t B, int64_t T) {
    const dsc_config *c = &tm->cfg;
    int64_t L = tm->n_layers, Tm = T - 1, Nm = B * Tm, d = c->hidden_size, V = c->vocab_size;
    double eps = c->rms_norm_eps;
    zero(tm->dlogits, Nm * V);
    dsc_op_xent_f32(tm->dlogits, tm->mtp_logits, tm->mtp_tgt, Nm, V, tm->mtp_lambda);
    zero(tm->dxn, Nm * d);
    lin_bwd(tm, tm->dxn, G(tm, tm->lm_head), tm->dlogits, tm->mtp_outn, tm->lm_head,
                          Nm, d, V);
    zero(tm->dx, Nm * d);
    dsc_op_rmsnorm_bwd_f32(tm->dx, G(tm, tm->mtp_head_norm), tm->dxn, tm->mtp_out,
                           tm->mtp_head_norm, Nm, d, eps);
    layer_bwd(tm, L, B, Tm);
    /* x = eh_proj([en ; hn]) */
    zero(tm->mtp_dcat, Nm * 2 * d);
    lin_bwd(tm, tm->mtp_dcat, G(tm, tm->mtp_eh), tm->dx, tm->mtp_cat, tm->mtp_eh, Nm,
                          2 * d, d);
    /* en = enorm(Emb(tok[i+1])) */
    zero(tm->dxn, Nm * d);
    dsc_op_add_cols_f32(tm->dxn, d, tm->mtp_dcat, 2 * d, Nm, d);
    zero(tm->dx, Nm * d);
    dsc_op_rmsnorm_bwd_f32(tm->dx, G(tm, tm->mtp_enorm), tm->dxn, tm->mtp_e, tm->mtp_enorm, Nm,
                           d, eps);
    dsc_op_embed_bwd_f32(G(tm, tm->embed), tm->dx, tm->mtp_ids, Nm, d);
    /* hn = hnorm(h_i), h_i = row (b, i) of the main xfn */
    zero(tm->dxn, Nm * d);
    dsc_op_add_cols_f32(tm->dxn, d, tm->mtp_dcat + d, 2 * d, Nm, d);
    zero(tm->dx, Nm * d);
    dsc_op_rmsnorm_bwd_f32(tm->dx, G(tm, tm->mtp_hnorm), tm->dxn, tm->mtp_h, tm->mtp_hnorm, Nm,
                           d, eps);
    zero(tm->mtp_dxf, B * T * d);
    for (int64_t b = 0; b < B; b++)
        memcpy(tm->mtp_dxf + b * T * d, tm->dx + b * Tm * d, (size_t)(Tm * d) * sizeof(float));
}

static void backward(dsc_train_model_t *tm, int64_t B, int64_t T) {
    const dsc_config *c = &tm->cfg;
    int64_t N = B * T, d = c->hidden_size, V = c->vocab_size;
    double eps = c->rms_norm_eps;
    zero(tm->grad, tm->n_floats);
    if (tm->mtp_ran) mtp_bwd(tm, B, T);
    /* loss -> logits -> final norm -> residual stream dx */
    zero(tm->dlogits, N * V);
    dsc_op_xent_f32(tm->dlogits, tm->logits, tm->tgt, N, V, 1.0);
    zero(tm->dxn, N * d);
    lin_bwd(tm, tm->dxn, G(tm, tm->lm_head), tm->dlogits, tm->xfn, tm->lm_head, N, d,
                          V);
    if (tm->mtp_ran)
        for (int64_t i = 0; i < N * d; i++) tm->dxn[i] += tm->mtp_dxf[i];
    zero(tm->dx, N * d);
    dsc_op_rmsnorm_bwd_f32(tm->dx, G(tm, tm->final_norm), tm->dxn, tm->xf, tm->final_norm, N, d,
                           eps);
    for (int64_t l = tm->n_layers - 1; l >= 0; l--) layer_bwd(tm, l, B, T);
    dsc_op_embed_bwd_f32(G(tm, tm->embed), tm->dx, tm->ids, N, d);
}

dsc_status dsc_train_forward(dsc_train_model_t *tm, const int32_t *tokens, int64_t B,
                             int64_t T, double *loss, dsc_err *err) {
    DSC_TRY(check_call(tm, tokens, B, T, err));
    double l = forward(tm, tokens, B, T);
    if (loss) *loss = l;
    return DSC_OK;
}

dsc_status dsc_train_forward_backward(dsc_train_model_t *tm, const int32_t *tokens, int64_t B,
                                      int64_t T, double *loss, dsc_err *err) {
    DSC_TRY(check_call(tm, tokens, B, T, err));
    double l = forward(tm, tokens, B, T);
    backward(tm, B, T);
    if (loss) *loss = l;
    return DSC_OK;
}
