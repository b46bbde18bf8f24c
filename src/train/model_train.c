/*
 * model_train.c - the trainable fp32 model: creation, parameters, saved
 * activations, the public getters (see model_train.h; the forward and
 * backward are in train_step.c, the layout in tm_impl.h).
 *
 * Three allocations, one per lifetime class, each carved from a size table
 * walked twice (count, then assign), as llm.c's train_gpt2.c does:
 *   meta   the dsc_param list, tensor names, layer and expert tables;
 *   params parameters then gradients (P floats each, the same layout, so a
 *          parameter's gradient is at the same offset in the second half);
 *   acts   every activation the backward needs, per layer, plus scratch
 *          shared by the layers, for N = max_b * max_t tokens.
 */
#include <math.h>
#include <string.h>

#include "train/tm_impl.h"
#include "util/util.h"

/* ---- parameters ---- */

typedef struct {
    const dsc_model_t *m;
    dsc_train_model_t *tm;
    int pass;                /* 0: count, 1: assign and copy */
    int64_t n_params, n_floats;
    size_t name_bytes;
    char *names;             /* pass 1: where the next name goes */
    const dsc_mtp *mtp;      /* NULL: no MTP layer */
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
    t.attn = &dsc_tattn_mla;
#define NAME(fmt) (snprintf(n, sizeof n, "model.layers.%lld." fmt, (long long)l), n)
    t.attn_norm = ptake(pw, &ly->attn_norm, NAME("input_layernorm.weight"), 0);
    t.ffn_norm = ptake(pw, &ly->ffn_norm, NAME("post_attention_layernorm.weight"), 0);
    if (c->attention_nsa) {   /* NSA's tensors in place of MLA's (attn_nsa.c) */
        t.attn = &dsc_tattn_nsa;
        dsc_nsa_tensor nt[DSC_NSA_W_N];
        int nn = dsc_nsa_tensors(c, nt);
        for (int i = 0; i < nn; i++) {
            snprintf(n, sizeof n, "model.layers.%lld.self_attn.%s", (long long)l, nt[i].name);
            *dsc_tnsa_slot(&t, nt[i].slot) =
                ptake(pw, dsc_nsa_slot((dsc_layer *)ly, nt[i].slot), n, nt[i].decay);
        }
    } else if (c->q_lora_rank > 0) {
        t.q_a = ptake(pw, &ly->q_a, NAME("self_attn.q_a_proj.weight"), 1);
        t.q_a_norm = ptake(pw, &ly->q_a_norm, NAME("self_attn.q_a_layernorm.weight"), 0);
        t.q_b = ptake(pw, &ly->q_b, NAME("self_attn.q_b_proj.weight"), 1);
    } else {
        t.q_b = ptake(pw, &ly->q_b, NAME("self_attn.q_proj.weight"), 1);
    }
    if (!c->attention_nsa) {
        t.kv_a = ptake(pw, &ly->kv_a, NAME("self_attn.kv_a_proj_with_mqa.weight"), 1);
        t.kv_a_norm = ptake(pw, &ly->kv_a_norm, NAME("self_attn.kv_a_layernorm.weight"), 0);
        t.kv_b = ptake(pw, &ly->kv_b, NAME("self_attn.kv_b_proj.weight"), 1);
        t.o = ptake(pw, &ly->o, NAME("self_attn.o_proj.weight"), 1);
    }
    if (c->index_topk > 0 && !c->attention_nsa) {   /* DSA's indexer (attn_dsa.c) */
        t.attn = &dsc_tattn_dsa;
        t.ix_wq_b = ptake(pw, &ly->idx_wq_b, NAME("self_attn.indexer.wq_b.weight"), 1);
        t.ix_wk = ptake(pw, &ly->idx_wk, NAME("self_attn.indexer.wk.weight"), 1);
        t.ix_kn_w = ptake(pw, &ly->idx_k_norm_w, NAME("self_attn.indexer.k_norm.weight"), 0);
        t.ix_kn_b = ptake(pw, &ly->idx_k_norm_b, NAME("self_attn.indexer.k_norm.bias"), 0);
        t.ix_w = ptake(pw, &ly->idx_weights, NAME("self_attn.indexer.weights_proj.weight"), 1);
    }
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
        const dsc_mtp *x = pw->mtp;
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
    if (tm->is_nsa) dq = dc = dn = dv = dqk = 0;   /* MLA's buffers: none */
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
        a->lse = CARVE(cv, tm->is_nsa ? 0 : N * H, float);
        if (tm->is_nsa) dsc_tnsa_carve_layer(tm, cv, a);
        if (tm->is_dsa) dsc_tdsa_carve_layer(tm, cv, a);
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
    tm->attn_ws = CARVE(cv, tm->n_threads * tm->attn_ws_floats, float);
    tm->row_loss = CARVE(cv, N, double);
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
    if (tm->is_nsa) dsc_tnsa_carve_shared(tm, cv);
    if (tm->is_dsa) dsc_tdsa_carve_shared(tm, cv);
}

/* ---- creation ---- */

static dsc_status model_new(const dsc_model_t *m, int64_t max_b, int64_t max_t, int with_mtp,
                            double mtp_weight, dsc_train_model_t **out, dsc_err *err) {
    *out = NULL;
    const dsc_config *c = &m->cfg;
    if (max_b < 1 || max_t < 1)
        return dsc_err_set(err, DSC_ERR_ARG, "batch %lld x %lld tokens: both must be >= 1",
                           (long long)max_b, (long long)max_t);
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
    tm->n_threads = dsc_kctx_threads(tm->k);
    tm->attn_ws_floats = dsc_tk_attn_scratch(max_t);
    int64_t L = tm->n_layers, E = c->n_routed_experts;
    if (c->attention_nsa) {
        dsc_status ns = dsc_tnsa_setup(tm, err);
        if (ns != DSC_OK) {
            dsc_train_model_free(tm);
            return ns;
        }
        tm->attn_ws_floats = 0;   /* MLA's attention scratch: none */
    } else if (c->index_topk > 0) {
        dsc_status ds = dsc_tdsa_setup(tm, err);
        if (ds != DSC_OK) {
            dsc_train_model_free(tm);
            return ds;
        }
    }

    /* the MTP module (D = 1), as the loader bound it */
    const dsc_mtp *mtp = NULL;
    if (with_mtp && c->num_nextn_predict_layers != 1) {
        dsc_train_model_free(tm);
        return dsc_err_set(err, c->num_nextn_predict_layers > 1 ? DSC_ERR_UNSUPPORTED
                                                                : DSC_ERR_MISSING,
                           "num_nextn_predict_layers = %lld: MTP training needs exactly one "
                           "MTP module (D = 1)", (long long)c->num_nextn_predict_layers);
    }
    if (with_mtp) {
        if (m->n_mtp < 1) {
            dsc_train_model_free(tm);
            return dsc_err_set(err, DSC_ERR_MISSING,
                               "MTP tensors model.layers.%lld.* are missing from the checkpoint "
                               "(num_nextn_predict_layers = 1)", (long long)L);
        }
        mtp = &m->mtp[0];
        tm->has_mtp = 1;
        tm->mtp_lambda = mtp_weight;
    }
    int64_t LM = L + tm->has_mtp;

    /* count parameters and names */
    pwalk pw = {m, tm, 0, 0, 0, 0, NULL, mtp};
    pwalk_model(&pw);
    int64_t n_moe = 0;
    for (int64_t l = 0; l < L; l++) n_moe += m->layers[l].is_moe;
    n_moe += mtp && mtp->ly.is_moe;

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
                if (l < L ? m->layers[l].is_moe : mtp->ly.is_moe)
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


int dsc_train_model_is_dsa(const dsc_train_model_t *tm) { return tm->is_dsa; }

void dsc_train_set_dsa_kl_weight(dsc_train_model_t *tm, double weight) {
    tm->dsa_kl_weight = weight;
}

void dsc_train_set_dsa_sparse(dsc_train_model_t *tm, int on) {
    if (tm->is_dsa) tm->dsa_sparse = on != 0;
}

void dsc_train_dsa_stats(const dsc_train_model_t *tm, double *kl, double *recall) {
    double n = tm->dsa_n > 0 ? (double)tm->dsa_n : 1.0;
    if (kl) *kl = tm->dsa_kl_sum / n;
    if (recall) *recall = tm->dsa_rec_n > 0 ? tm->dsa_recall_sum / (double)tm->dsa_rec_n : NAN;
}

int dsc_train_model_is_nsa(const dsc_train_model_t *tm) { return tm->is_nsa; }

void dsc_train_set_nsa_align(dsc_train_model_t *tm, double weight) {
    if (tm->is_nsa) tm->nsa_al_weight = weight;
}

double dsc_train_nsa_align_kl(const dsc_train_model_t *tm) {
    return tm->nsa_al_n > 0 ? tm->nsa_al_sum / (double)tm->nsa_al_n : NAN;
}

void dsc_train_set_dsa_recall(dsc_train_model_t *tm, int on) {
    tm->dsa_recall_on = on != 0;
}

int dsc_train_param_is_indexer(const dsc_param *p) {
    return p->name && strstr(p->name, ".self_attn.indexer.") != NULL;
}
