/*
 * train_step.c - the forward and backward of the whole trainable model
 * (model_train.h; layout in tm_impl.h, the attention in attn_mla.c).
 *
 * The backward walks the forward in reverse, each op's backward adding into
 * gradient buffers zeroed just before (ops.h convention). Experts run in
 * expert order and every parallel loop writes disjoint slices, so the sums,
 * and hence the gradients, do not depend on the thread count.
 * The linears are the fast GEMMs, norms / SwiGLU / attention / the loss the
 * kernels of tk.h; the rest (RoPE, routing, gathers) the ops.h references.
 */
#include <math.h>
#include <string.h>

#include "train/tm_impl.h"
#include "util/util.h"

/* ---- forward ---- */

/* SwiGLU MLP on n rows: g = x Wg^T, u = x Wu^T, h = silu(g)*u, y = h Wd^T. */
static void mlp_fwd(dsc_train_model_t *tm, const tm_mlp *w, const float *x, int64_t n, int64_t d,
                    float *g, float *u, float *h, float *y) {
    lin_fwd(tm, g, x, w->gate, n, d, w->ff);
    lin_fwd(tm, u, x, w->up, n, d, w->ff);
    dsc_tk_swiglu_fwd(tm->k, h, g, u, n * w->ff);
    lin_fwd(tm, y, h, w->down, n, w->ff, d);
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
            if (id >= V || id < -1)
                return dsc_err_set(err, DSC_ERR_ARG,
                                   "token id %d at (%lld, %lld) is out of range [0, %lld) "
                                   "(or -1, padding)", id, (long long)b, (long long)t,
                                   (long long)V);
        }
    return DSC_OK;
}

/* Decoder layer l over B sequences of T tokens: tm->act[l].x in, out (N, d). */
static double layer_fwd(dsc_train_model_t *tm, int64_t l, int64_t B, int64_t T, float *out) {
    const tm_layer *w = &tm->layers[l];
    tm_act *a = &tm->act[l];
    int64_t N = B * T, d = tm->cfg.hidden_size;
    float eps = (float)tm->cfg.rms_norm_eps;
    /* h = h + Attention(RMSNorm(h)) */
    dsc_tk_rmsnorm_fwd(tm->k, a->xn, a->x, w->attn_norm, N, d, eps);
    double aux = w->attn->fwd(tm, l, B, T);
    for (int64_t i = 0; i < N * d; i++) a->xm[i] = a->x[i] + tm->y[i];
    /* h = h + FFN(RMSNorm(h)) */
    dsc_tk_rmsnorm_fwd(tm->k, a->xn2, a->xm, w->ffn_norm, N, d, eps);
    if (w->is_moe)
        moe_fwd(tm, l, N);
    else
        mlp_fwd(tm, &w->dense, a->xn2, N, d, a->fg, a->fu, a->fh, tm->y);
    for (int64_t i = 0; i < N * d; i++) out[i] = a->xm[i] + tm->y[i];
    return aux;
}

/*
 * The MTP module (D = 1; spec §6) after the main forward: for i < T-1,
 *   x_i = eh_proj([enorm(Emb(tok[i+1])) ; hnorm(h_i)])   (h_i = main xfn row)
 * then decoder layer L causally over the T-1 positions (RoPE 0..T-2),
 * shared_head.norm, the shared lm_head; returns the mean CE against tok[i+2].
 */
static double mtp_fwd(dsc_train_model_t *tm, int64_t B, int64_t T, int grad, double *aux) {
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
    dsc_tk_rmsnorm_fwd(tm->k, tm->mtp_en, tm->mtp_e, tm->mtp_enorm, Nm, d, eps);
    dsc_tk_rmsnorm_fwd(tm->k, tm->mtp_hn, tm->mtp_h, tm->mtp_hnorm, Nm, d, eps);
    dsc_op_copy_cols_f32(tm->mtp_cat, 2 * d, tm->mtp_en, d, Nm, d);
    dsc_op_copy_cols_f32(tm->mtp_cat + d, 2 * d, tm->mtp_hn, d, Nm, d);
    lin_fwd(tm, tm->act[L].x, tm->mtp_cat, tm->mtp_eh, Nm, 2 * d, d);
    *aux += layer_fwd(tm, L, B, Tm, tm->mtp_out);
    dsc_tk_rmsnorm_fwd(tm->k, tm->mtp_outn, tm->mtp_out, tm->mtp_head_norm, Nm, d, eps);
    lin_fwd(tm, tm->mtp_logits, tm->mtp_outn, tm->lm_head, Nm, d, V);
    return dsc_tk_xent(tm->k, tm->mtp_logits, tm->mtp_tgt, Nm, V, grad, tm->mtp_lambda,
                       tm->row_loss);
}

/* The forward over tokens (B, T+1); returns the mean loss. With grad, the
   logits buffers are left holding the loss's gradient (dsc_tk_xent). */
static double forward(dsc_train_model_t *tm, const int32_t *tokens, int64_t B, int64_t T,
                      int grad) {
    const dsc_config *c = &tm->cfg;
    int64_t N = B * T, d = c->hidden_size, V = c->vocab_size;
    double eps = c->rms_norm_eps;
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++) {
            int32_t id = tokens[b * (T + 1) + t];
            tm->ids[b * T + t] = id < 0 ? 0 : id;   /* padding: fed as id 0 */
            tm->tgt[b * T + t] = tokens[b * (T + 1) + t + 1];
        }
    tm->last_n = N;
    if (tm->load) /* NULL for a model without routed experts */
        memset(tm->load, 0,
               (size_t)((tm->n_layers + tm->has_mtp) * c->n_routed_experts) * sizeof *tm->load);
    /* h = Emb(x) */
    float *h = tm->n_layers > 0 ? tm->act[0].x : tm->xf;
    dsc_op_embed_fwd_f32(h, tm->embed, tm->ids, N, d);
    double aux = 0.0;
    tm->dsa_kl_sum = tm->dsa_recall_sum = 0.0;   /* summed by attn_dsa.c */
    tm->dsa_n = tm->dsa_rec_n = 0;
    tm->nsa_al_sum = 0.0;   /* summed by attn_nsa.c */
    tm->nsa_al_n = 0;
    for (int64_t l = 0; l < tm->n_layers; l++)
        aux += layer_fwd(tm, l, B, T, l + 1 < tm->n_layers ? tm->act[l + 1].x : tm->xf);
    /* logits = lm_head(RMSNorm(h)); loss = mean CE */
    dsc_tk_rmsnorm_fwd(tm->k, tm->xfn, tm->xf, tm->final_norm, N, d, eps);
    lin_fwd(tm, tm->logits, tm->xfn, tm->lm_head, N, d, V);
    double ce = dsc_tk_xent(tm->k, tm->logits, tm->tgt, N, V, grad, 1.0, tm->row_loss);
    double bal = 0.0;
    if (tm->bal_alpha != 0.0)
        for (int64_t l = 0; l < tm->n_layers; l++)
            if (tm->layers[l].is_moe) bal += bal_term(tm, l, B, T, NULL);
    tm->mtp_ran = tm->has_mtp && tm->mtp_lambda != 0.0 && T >= 2;
    double mtp = tm->mtp_ran ? mtp_fwd(tm, B, T, grad, &aux) : 0.0;
    tm->part_ce = ce;
    tm->part_bal = bal;
    tm->part_mtp = mtp;
    return ce + bal + aux + (tm->mtp_ran ? tm->mtp_lambda * mtp : 0.0);
}

/* ---- backward ---- */

/* MLP backward on n rows: dy in, adds into dx and the weights' gradients.
   g, u, h: the forward's saved values; uses tm->dh/dg/du as scratch. */
static void mlp_bwd(dsc_train_model_t *tm, const tm_mlp *w, const float *x, int64_t n,
                    int64_t d, const float *g, const float *u, const float *h, const float *dy,
                    float *dx) {
    int64_t m = n * w->ff;
    zero(tm->dh, m);
    lin_bwd(tm, tm->dh, G(tm, w->down), dy, h, w->down, n, w->ff, d);
    dsc_tk_swiglu_bwd(tm->k, tm->dg, tm->du, tm->dh, g, u, m);
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
    dsc_tk_rmsnorm_bwd(tm->k, tm->dx, G(tm, w->ffn_norm), tm->dxn, a->xm, w->ffn_norm, N, d, eps);
    /* xm = x + MLA(norm(x)) */
    zero(tm->dxn, N * d);
    w->attn->bwd(tm, l, B, T, tm->dx, tm->dxn);
    dsc_tk_rmsnorm_bwd(tm->k, tm->dx, G(tm, w->attn_norm), tm->dxn, a->x, w->attn_norm, N, d, eps);
}

/* The MTP module's backward (weight mtp_lambda): its gradients added, and
   tm->mtp_dxf (B*T, d) = its gradient w.r.t. the main model's xfn. */
static void mtp_bwd(dsc_train_model_t *tm, int64_t B, int64_t T) {
    const dsc_config *c = &tm->cfg;
    int64_t L = tm->n_layers, Tm = T - 1, Nm = B * Tm, d = c->hidden_size, V = c->vocab_size;
    double eps = c->rms_norm_eps;
    zero(tm->dxn, Nm * d);
    lin_bwd(tm, tm->dxn, G(tm, tm->lm_head), tm->mtp_logits, tm->mtp_outn, tm->lm_head,
                          Nm, d, V);
    zero(tm->dx, Nm * d);
    dsc_tk_rmsnorm_bwd(tm->k, tm->dx, G(tm, tm->mtp_head_norm), tm->dxn, tm->mtp_out,
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
    dsc_tk_rmsnorm_bwd(tm->k, tm->dx, G(tm, tm->mtp_enorm), tm->dxn, tm->mtp_e, tm->mtp_enorm, Nm,
                           d, eps);
    dsc_op_embed_bwd_f32(G(tm, tm->embed), tm->dx, tm->mtp_ids, Nm, d);
    /* hn = hnorm(h_i), h_i = row (b, i) of the main xfn */
    zero(tm->dxn, Nm * d);
    dsc_op_add_cols_f32(tm->dxn, d, tm->mtp_dcat + d, 2 * d, Nm, d);
    zero(tm->dx, Nm * d);
    dsc_tk_rmsnorm_bwd(tm->k, tm->dx, G(tm, tm->mtp_hnorm), tm->dxn, tm->mtp_h, tm->mtp_hnorm, Nm,
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
    zero(tm->dxn, N * d);
    lin_bwd(tm, tm->dxn, G(tm, tm->lm_head), tm->logits, tm->xfn, tm->lm_head, N, d,
                          V);
    if (tm->mtp_ran)
        for (int64_t i = 0; i < N * d; i++) tm->dxn[i] += tm->mtp_dxf[i];
    zero(tm->dx, N * d);
    dsc_tk_rmsnorm_bwd(tm->k, tm->dx, G(tm, tm->final_norm), tm->dxn, tm->xf, tm->final_norm, N, d,
                           eps);
    for (int64_t l = tm->n_layers - 1; l >= 0; l--) layer_bwd(tm, l, B, T);
    dsc_op_embed_bwd_f32(G(tm, tm->embed), tm->dx, tm->ids, N, d);
}

dsc_status dsc_train_forward(dsc_train_model_t *tm, const int32_t *tokens, int64_t B,
                             int64_t T, double *loss, dsc_err *err) {
    DSC_TRY(check_call(tm, tokens, B, T, err));
    double l = forward(tm, tokens, B, T, 0);
    if (loss) *loss = l;
    return DSC_OK;
}

dsc_status dsc_train_forward_backward(dsc_train_model_t *tm, const int32_t *tokens, int64_t B,
                                      int64_t T, double *loss, dsc_err *err) {
    DSC_TRY(check_call(tm, tokens, B, T, err));
    double l = forward(tm, tokens, B, T, 1);
    backward(tm, B, T);
    if (loss) *loss = l;
    return DSC_OK;
}
