/*
 * attn_nsa.c - NSA (Native Sparse Attention with GQA, src/nsa/nsa.h) as the
 * trainer's attention of every layer of an attention_type "nsa" model
 * (tm_attn_ops, tm_impl.h; the config keys are in src/model/config.c).
 *
 *   q      = x W_q^T                            (N, H_q*d_k)
 *   k_b    = x W_k_b^T, v_b = x W_v_b^T         b = cmp, slc, win (one pair
 *                                               when shared_kv)
 *   g      = sigmoid(x W_gate^T)                (N, 3*H_q), row h*3 + b:
 *                                               independent sigmoids per
 *                                               head and branch
 *   RoPE   on the first qk_rope_head_dim dims of every head of q and of
 *          every branch's k, positions 0..T-1 of each sequence, with the
 *          trainer's tables (rope_theta, YaRN if configured), pairs per
 *          rope_interleave. The cmp branch compresses roped keys (as fla's
 *          and lucidrains' NSA do: rotary before compression).
 *   o      = NSA(q, k, v, g) per sequence, by the fast fp32 operator
 *            (dsc_nsa_fast_fwd_f32 / _bwd_f32, OpenMP inside, threads =
 *            the trainer's, default chunk count: bitwise independent of
 *            the thread count), scale 1/sqrt(d_k)
 *   y      = o W_o^T
 * The selection (top-n blocks) is not differentiated (spec §5.2): the
 * backward uses the forward's saved selection. With a selection alignment
 * weight W > 0 (dsc_train_set_nsa_align, src/nsa/nsa_align.h) each layer
 * adds W x (mean KL over its counted rows, every sequence of the batch)
 * to the loss, and its gradient reaches q and the compressed keys. The
 * operator's saved buffers (o_br, lse, k_cmp, v_cmp, hid_k, hid_v, sel;
 * and the alignment's tau, dKL/ds and row KLs) are kept per sequence,
 * strided by their sizes at max_t tokens.
 */
#include <math.h>
#include <stdio.h>

#include "train/tm_impl.h"
#include "util/util.h"

float **dsc_tnsa_slot(tm_layer *t, int slot) {
    switch (slot) {
    case DSC_NSA_W_Q: return &t->nsa.q;
    case DSC_NSA_W_GATE: return &t->nsa.gate;
    case DSC_NSA_W_O: return &t->o;
    case DSC_NSA_W_PE_K: return &t->nsa.pe_k;
    case DSC_NSA_W_W1_K: return &t->nsa.w1_k;
    case DSC_NSA_W_W2_K: return &t->nsa.w2_k;
    case DSC_NSA_W_PE_V: return &t->nsa.pe_v;
    case DSC_NSA_W_W1_V: return &t->nsa.w1_v;
    case DSC_NSA_W_W2_V: return &t->nsa.w2_v;
    default:
        if (slot >= DSC_NSA_W_K && slot < DSC_NSA_W_K + 3) return &t->nsa.k[slot - DSC_NSA_W_K];
        return &t->nsa.v[slot - DSC_NSA_W_V];
    }
}

dsc_status dsc_tnsa_setup(dsc_train_model_t *tm, dsc_err *err) {
    const dsc_config *c = &tm->cfg;
    tm->is_nsa = 1;
    dsc_config_nsa(c, &tm->nsa);
    tm->nsa_opts.threads = tm->n_threads > 0 ? tm->n_threads : 1;
    tm->nsa_opts.chunks = 0;
    tm->nsa_opts.prof = NULL;
    tm->nsa_opts.align = NULL;
    tm->nsa_al_weight = 0.0;
    if (c->qk_rope_head_dim > c->nsa_head_dim_k || c->qk_rope_head_dim % 2)
        return dsc_err_set(err, DSC_ERR_CONFIG,
                           "NSA: qk_rope_head_dim = %lld must be even and <= head_dim_k = %lld",
                           (long long)c->qk_rope_head_dim, (long long)c->nsa_head_dim_k);
    DSC_TRY(dsc_nsa_sizes_get(&tm->nsa, tm->max_t, &tm->nsa_sz, err));
    size_t fb = 0, bb = 0;
    DSC_TRY(dsc_nsa_fast_sizes(&tm->nsa, tm->max_t, &tm->nsa_opts, &fb, &bb, err));
    tm->nsa_ws_bytes = fb > bb ? fb : bb;
    return DSC_OK;
}

void dsc_tnsa_carve_layer(dsc_train_model_t *tm, carver *cv, tm_act *a) {
    const dsc_config *c = &tm->cfg;
    const dsc_nsa_sizes *z = &tm->nsa_sz;
    int64_t N = tm->max_b * tm->max_t, B = tm->max_b, Hq = c->num_attention_heads;
    int64_t Hkv = c->nsa_kv_heads, dk = c->nsa_head_dim_k, dv = c->nsa_head_dim_v;
    int nb = c->nsa_shared_kv ? 1 : 3;
    a->o = CARVE(cv, N * Hq * dv, float);
    a->nq = CARVE(cv, N * Hq * dk, float);
    for (int b = 0; b < 3; b++) {
        a->nk[b] = CARVE(cv, b < nb ? N * Hkv * dk : 0, float);
        a->nv[b] = CARVE(cv, b < nb ? N * Hkv * dv : 0, float);
    }
    a->ng = CARVE(cv, N * 3 * Hq, float);
    a->n_obr = CARVE(cv, B * z->o_br, float);
    a->n_lse = CARVE(cv, B * z->lse, float);
    a->n_kc = CARVE(cv, B * z->k_cmp, float);
    a->n_vc = CARVE(cv, B * z->v_cmp, float);
    a->n_hk = CARVE(cv, B * z->hid, float);
    a->n_hv = CARVE(cv, B * z->hid, float);
    a->n_sel = CARVE(cv, B * z->sel, int32_t);
    a->n_atgt = CARVE(cv, B * z->sel, float);
    a->n_ags = CARVE(cv, B * z->sel, float);
    a->n_akl = CARVE(cv, B * tm->max_t * Hkv, float);
}

void dsc_tnsa_carve_shared(dsc_train_model_t *tm, carver *cv) {
    const dsc_config *c = &tm->cfg;
    int64_t N = tm->max_b * tm->max_t, Hq = c->num_attention_heads;
    int64_t Hkv = c->nsa_kv_heads, dk = c->nsa_head_dim_k, dv = c->nsa_head_dim_v;
    int nb = c->nsa_shared_kv ? 1 : 3;
    tm->nsa_ws = CARVE(cv, (int64_t)tm->nsa_ws_bytes, char);
    tm->nsa_dq = CARVE(cv, N * Hq * dk, float);
    for (int b = 0; b < 3; b++) {
        tm->nsa_dk[b] = CARVE(cv, b < nb ? N * Hkv * dk : 0, float);
        tm->nsa_dv[b] = CARVE(cv, b < nb ? N * Hkv * dv : 0, float);
    }
    tm->nsa_dg = CARVE(cv, N * 3 * Hq, float);
    tm->nsa_dO = CARVE(cv, N * Hq * dv, float);
}

/* The operator's inputs, parameters and saved buffers of sequence s. */
static void views(const dsc_train_model_t *tm, const tm_layer *w, const tm_act *a, int64_t s,
                  int64_t T, dsc_nsa_in_f32 *in, dsc_nsa_params_f32 *p, dsc_nsa_saved_f32 *sv) {
    const dsc_config *c = &tm->cfg;
    const dsc_nsa_sizes *z = &tm->nsa_sz;
    int64_t Hq = c->num_attention_heads, Hkv = c->nsa_kv_heads;
    int64_t dk = c->nsa_head_dim_k, dv = c->nsa_head_dim_v;
    int shared = c->nsa_shared_kv;
    memset(in, 0, sizeof *in);
    in->q = a->nq + s * T * Hq * dk;
    for (int b = 0; b < 3; b++) {
        int bb = shared ? 0 : b;
        in->kv.k[b] = a->nk[bb] + s * T * Hkv * dk;
        in->kv.v[b] = a->nv[bb] + s * T * Hkv * dv;
    }
    in->g = a->ng + s * T * 3 * Hq;
    p->pe_k = w->nsa.pe_k, p->w1_k = w->nsa.w1_k, p->w2_k = w->nsa.w2_k;
    p->pe_v = w->nsa.pe_v, p->w1_v = w->nsa.w1_v, p->w2_v = w->nsa.w2_v;
    sv->o_br = a->n_obr + s * z->o_br;
    sv->lse = a->n_lse + s * z->lse;
    sv->k_cmp = a->n_kc ? a->n_kc + s * z->k_cmp : NULL;
    sv->v_cmp = a->n_vc ? a->n_vc + s * z->v_cmp : NULL;
    sv->hid_k = a->n_hk ? a->n_hk + s * z->hid : NULL;
    sv->hid_v = a->n_hv ? a->n_hv + s * z->hid : NULL;
    sv->sel = a->n_sel + s * z->sel;
}

static double nsa_fwd(dsc_train_model_t *tm, int64_t l, int64_t B, int64_t T) {
    const dsc_config *c = &tm->cfg;
    const tm_layer *w = &tm->layers[l];
    tm_act *a = &tm->act[l];
    int64_t N = B * T, d = c->hidden_size, Hq = c->num_attention_heads;
    int64_t Hkv = c->nsa_kv_heads, dk = c->nsa_head_dim_k, dv = c->nsa_head_dim_v;
    int64_t dr = c->qk_rope_head_dim;
    int nb = c->nsa_shared_kv ? 1 : 3;
    lin_fwd(tm, a->nq, a->xn, w->nsa.q, N, d, Hq * dk);
    for (int b = 0; b < nb; b++) {
        lin_fwd(tm, a->nk[b], a->xn, w->nsa.k[b], N, d, Hkv * dk);
        lin_fwd(tm, a->nv[b], a->xn, w->nsa.v[b], N, d, Hkv * dv);
    }
    lin_fwd(tm, a->ng, a->xn, w->nsa.gate, N, d, 3 * Hq);
    for (int64_t i = 0; i < N * 3 * Hq; i++)
        a->ng[i] = (float)(1.0 / (1.0 + exp(-(double)a->ng[i])));
    if (dr > 0) {
        dsc_op_rope_slice qs = {T, Hq * dk, Hq, dk, 0, dr}, ks = {T, Hkv * dk, Hkv, dk, 0, dr};
        for (int64_t s = 0; s < B; s++) {
            dsc_op_rope_fwd_f32(a->nq + s * T * Hq * dk, &qs, NULL, tm->rope_cos, tm->rope_sin,
                                c->rope_interleave);
            for (int b = 0; b < nb; b++)
                dsc_op_rope_fwd_f32(a->nk[b] + s * T * Hkv * dk, &ks, NULL, tm->rope_cos,
                                    tm->rope_sin, c->rope_interleave);
        }
    }
    int align = tm->nsa_al_weight > 0.0;
    int64_t nsel = tm->nsa_sz.sel, akl = tm->max_t * Hkv;
    for (int64_t s = 0; s < B; s++) {
        dsc_nsa_in_f32 in;
        dsc_nsa_params_f32 p;
        dsc_nsa_saved_f32 sv;
        views(tm, w, a, s, T, &in, &p, &sv);
        dsc_nsa_fast_opts op = tm->nsa_opts;
        dsc_nsa_align al = {a->n_atgt + s * nsel, a->n_ags + s * nsel, a->n_akl + s * akl, 0, 0};
        if (align) op.align = &al;
        dsc_err e = {0};
        if (dsc_nsa_fast_fwd_f32(&tm->nsa, T, &in, &p, a->o + s * T * Hq * dv, 0, &sv, 0, &op,
                                 tm->nsa_ws, &e) != DSC_OK) {
            /* cannot happen with a checked config and our buffers; a NaN
               loss makes the trainer stop with its non-finite message */
            fprintf(stderr, "dsc: NSA forward, layer %lld: %s\n", (long long)l, e.msg);
            return NAN;
        }
    }
    lin_fwd(tm, tm->y, a->o, w->o, N, Hq * dv, d);
    a->n_ascale = 0.0;
    if (!align) return 0.0;
    /* the layer's KL: the mean over the counted rows (kl >= 0), in order */
    double sum = 0.0;
    int64_t cnt = 0;
    for (int64_t s = 0; s < B; s++)
        for (int64_t i = 0; i < T * Hkv; i++) {
            float k = a->n_akl[s * akl + i];
            if (k >= 0.0f) sum += k, cnt++;
        }
    double kl = cnt ? sum / (double)cnt : 0.0;
    a->n_ascale = cnt ? tm->nsa_al_weight / (double)cnt : 0.0;
    tm->nsa_al_sum += kl;
    tm->nsa_al_n++;
    return tm->nsa_al_weight * kl;
}

static void nsa_bwd(dsc_train_model_t *tm, int64_t l, int64_t B, int64_t T, const float *dy,
                    float *dx) {
    const dsc_config *c = &tm->cfg;
    const tm_layer *w = &tm->layers[l];
    const tm_act *a = &tm->act[l];
    int64_t N = B * T, d = c->hidden_size, Hq = c->num_attention_heads;
    int64_t Hkv = c->nsa_kv_heads, dk = c->nsa_head_dim_k, dv = c->nsa_head_dim_v;
    int64_t dr = c->qk_rope_head_dim;
    int nb = c->nsa_shared_kv ? 1 : 3;
    zero(tm->nsa_dO, N * Hq * dv);
    lin_bwd(tm, tm->nsa_dO, G(tm, w->o), dy, a->o, w->o, N, Hq * dv, d);
    zero(tm->nsa_dq, N * Hq * dk);
    for (int b = 0; b < nb; b++) {
        zero(tm->nsa_dk[b], N * Hkv * dk);
        zero(tm->nsa_dv[b], N * Hkv * dv);
    }
    zero(tm->nsa_dg, N * 3 * Hq);
    for (int64_t s = 0; s < B; s++) {
        dsc_nsa_in_f32 in;
        dsc_nsa_params_f32 p;
        dsc_nsa_saved_f32 sv;
        views(tm, w, (tm_act *)a, s, T, &in, &p, &sv);
        dsc_nsa_grads_f32 gr = {0};
        gr.dq = tm->nsa_dq + s * T * Hq * dk;
        for (int b = 0; b < nb; b++) {
            gr.dk[b] = tm->nsa_dk[b] + s * T * Hkv * dk;
            gr.dv[b] = tm->nsa_dv[b] + s * T * Hkv * dv;
        }
        gr.dg = tm->nsa_dg + s * T * 3 * Hq;
        if (w->nsa.pe_k) {
            gr.pe_k = G(tm, w->nsa.pe_k), gr.w1_k = G(tm, w->nsa.w1_k);
            gr.w2_k = G(tm, w->nsa.w2_k), gr.pe_v = G(tm, w->nsa.pe_v);
            gr.w1_v = G(tm, w->nsa.w1_v), gr.w2_v = G(tm, w->nsa.w2_v);
        }
        dsc_nsa_fast_opts op = tm->nsa_opts;
        dsc_nsa_align al = {NULL, a->n_ags + s * tm->nsa_sz.sel, NULL, 0, a->n_ascale};
        if (a->n_ascale > 0.0) op.align = &al;
        dsc_err e = {0};
        if (dsc_nsa_fast_bwd_f32(&tm->nsa, T, &in, &p, &sv, tm->nsa_dO + s * T * Hq * dv, 0,
                                 &gr, &op, tm->nsa_ws, &e) != DSC_OK)
            fprintf(stderr, "dsc: NSA backward, layer %lld: %s\n", (long long)l, e.msg);
    }
    if (dr > 0) {
        dsc_op_rope_slice qs = {T, Hq * dk, Hq, dk, 0, dr}, ks = {T, Hkv * dk, Hkv, dk, 0, dr};
        for (int64_t s = 0; s < B; s++) {
            dsc_op_rope_bwd_f32(tm->nsa_dq + s * T * Hq * dk, &qs, NULL, tm->rope_cos,
                                tm->rope_sin, c->rope_interleave);
            for (int b = 0; b < nb; b++)
                dsc_op_rope_bwd_f32(tm->nsa_dk[b] + s * T * Hkv * dk, &ks, NULL, tm->rope_cos,
                                    tm->rope_sin, c->rope_interleave);
        }
    }
    /* g = sigmoid(z): dz = dg g (1 - g), in place */
    for (int64_t i = 0; i < N * 3 * Hq; i++) {
        float g = a->ng[i];
        tm->nsa_dg[i] = tm->nsa_dg[i] * g * (1.0f - g);
    }
    lin_bwd(tm, dx, G(tm, w->nsa.gate), tm->nsa_dg, a->xn, w->nsa.gate, N, d, 3 * Hq);
    for (int b = 0; b < nb; b++) {
        lin_bwd(tm, dx, G(tm, w->nsa.k[b]), tm->nsa_dk[b], a->xn, w->nsa.k[b], N, d, Hkv * dk);
        lin_bwd(tm, dx, G(tm, w->nsa.v[b]), tm->nsa_dv[b], a->xn, w->nsa.v[b], N, d, Hkv * dv);
    }
    lin_bwd(tm, dx, G(tm, w->nsa.q), tm->nsa_dq, a->xn, w->nsa.q, N, d, Hq * dk);
}

const tm_attn_ops dsc_tattn_nsa = {"nsa", nsa_fwd, nsa_bwd};
