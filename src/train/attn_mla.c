/*
 * attn_mla.c - MLA (spec §2) in its training (naive) form, forward and
 * backward, as the trainer's default attention (tm_attn_ops, tm_impl.h).
 *
 *   q        = W^UQ RMSNorm(W^DQ x)            or W^Q x      (N, H*dqk)
 *   [c ; kr] = W^DKV x;  cn = RMSNorm(c);  kv = W^UKV cn     (N, H*(dn+dv))
 *   per head: K = [k_nope ; RoPE(kr)], Q = [q_nope ; RoPE(q_pe)],
 *             o = softmax(s Q K^T + causal) V,  s = dqk^-1/2 m^2
 *   y        = W^O o
 * Heads run in parallel (each writes only its own slices and uses its
 * thread's attention scratch), so results do not depend on the thread
 * count.
 */
#include "train/tk_sparse.h"
#include "train/tm_impl.h"

/* The projections: a->q (roped), a->k (B, H, T, dqk), a->kv (V in place). */
void dsc_tmla_proj_fwd(dsc_train_model_t *tm, int64_t l, int64_t B, int64_t T) {
    const dsc_config *c = &tm->cfg;
    const tm_layer *w = &tm->layers[l];
    tm_act *a = &tm->act[l];
    int64_t N = B * T, d = c->hidden_size, H = c->num_attention_heads;
    int64_t dq = c->q_lora_rank, dc = c->kv_lora_rank, dr = c->qk_rope_head_dim;
    int64_t dn = c->qk_nope_head_dim, dv = c->v_head_dim, dqk = dn + dr, lkv = H * (dn + dv);
    /* q = W^UQ RMSNorm(W^DQ x)  or  q = W^Q x                    (N, H*dqk) */
    if (dq > 0) {
        lin_fwd(tm, a->qa, a->xn, w->q_a, N, d, dq);
        dsc_tk_rmsnorm_fwd(tm->k, a->qan, a->qa, w->q_a_norm, N, dq, LATENT_EPS);
        lin_fwd(tm, a->q, a->qan, w->q_b, N, dq, H * dqk);
    } else {
        lin_fwd(tm, a->q, a->xn, w->q_b, N, d, H * dqk);
    }
    /* [c ; k_pe] = W^DKV x; cn = RMSNorm(c); kv = W^UKV cn        */
    lin_fwd(tm, tm->kva, a->xn, w->kv_a, N, d, dc + dr);
    dsc_op_copy_cols_f32(a->c, dc, tm->kva, dc + dr, N, dc);
    dsc_op_copy_cols_f32(a->kpe, dr, tm->kva + dc, dc + dr, N, dr);
    dsc_tk_rmsnorm_fwd(tm->k, a->cn, a->c, w->kv_a_norm, N, dc, LATENT_EPS);
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
}

void dsc_tmla_attend(dsc_train_model_t *tm, int64_t l, int64_t B, int64_t T, const int32_t *sel,
                     int64_t kk, float *P) {
    const dsc_config *c = &tm->cfg;
    const tm_layer *w = &tm->layers[l];
    tm_act *a = &tm->act[l];
    int64_t H = c->num_attention_heads, dr = c->qk_rope_head_dim;
    int64_t dn = c->qk_nope_head_dim, dv = c->v_head_dim, dqk = dn + dr, lkv = H * (dn + dv);
    /* per head: o = softmax(s q K^T) V, s = dqk^-1/2 m^2, over every
       earlier key (dense) or the selected ones */
    dsc_op_attn_dims ad = {T, dqk, dv, H * dqk, dqk, lkv, H * dv};
    float scale = (float)c->softmax_scale;
#pragma omp parallel for num_threads(tm->n_threads) schedule(dynamic, 1)
    for (int64_t bh = 0; bh < B * H; bh++) {
        int64_t b = bh / H, h = bh % H;
        float *o = a->o + b * T * H * dv + h * dv;
        const float *q = a->q + b * T * H * dqk + h * dqk, *k = a->k + bh * T * dqk;
        const float *v = a->kv + b * T * lkv + h * (dn + dv) + dn;
        if (sel)
            dsc_tks_fast_fwd(o, a->lse + bh * T, P ? P + bh * T * kk : NULL, q, k, v,
                             sel + b * T * kk, kk, &ad, scale, tm_thread_ws(tm));
        else
            dsc_tk_attn_fwd(o, a->lse + bh * T, q, k, v, &ad, scale, tm_thread_ws(tm));
    }
    /* y = W^O o */
    lin_fwd(tm, tm->y, a->o, w->o, B * T, H * dv, c->hidden_size);
}

double dsc_tmla_fwd(dsc_train_model_t *tm, int64_t l, int64_t B, int64_t T) {
    dsc_tmla_proj_fwd(tm, l, B, T);
    dsc_tmla_attend(tm, l, B, T, NULL, 0, NULL);
    return 0.0;
}

static void proj_bwd(dsc_train_model_t *tm, int64_t l, int64_t B, int64_t T, float *dx);

void dsc_tmla_attend_bwd(dsc_train_model_t *tm, int64_t l, int64_t B, int64_t T, const float *dy,
                         float *dx, const int32_t *sel, int64_t kk) {
    const dsc_config *c = &tm->cfg;
    const tm_layer *w = &tm->layers[l];
    const tm_act *a = &tm->act[l];
    int64_t N = B * T, d = c->hidden_size, H = c->num_attention_heads;
    int64_t dr = c->qk_rope_head_dim;
    int64_t dn = c->qk_nope_head_dim, dv = c->v_head_dim, dqk = dn + dr, lkv = H * (dn + dv);
    zero(tm->dO, N * H * dv);
    lin_bwd(tm, tm->dO, G(tm, w->o), dy, a->o, w->o, N, H * dv, d);
    zero(tm->dq, N * H * dqk);
    zero(tm->dk, N * H * dqk);
    zero(tm->dkv, N * lkv);
    dsc_op_attn_dims ad = {T, dqk, dv, H * dqk, dqk, lkv, H * dv};
    float scale = (float)c->softmax_scale;
    /* heads in parallel: each writes only its own dq/dk/dkv slices, and
       each kernel's sums run in a fixed order */
#pragma omp parallel for num_threads(tm->n_threads) schedule(dynamic, 1)
    for (int64_t bh = 0; bh < B * H; bh++) {
        int64_t b = bh / H, h = bh % H;
        int64_t qo = b * T * H * dqk + h * dqk, vo = b * T * lkv + h * (dn + dv) + dn;
        int64_t oo = b * T * H * dv + h * dv;
        if (sel)
            dsc_tks_fast_bwd(tm->dq + qo, tm->dk + bh * T * dqk, tm->dkv + vo, tm->dO + oo,
                             a->q + qo, a->k + bh * T * dqk, a->kv + vo, a->o + oo,
                             a->lse + bh * T, sel + b * T * kk, kk, &ad, scale,
                             tm_thread_ws(tm));
        else
            dsc_tk_attn_bwd(tm->dq + qo, tm->dk + bh * T * dqk, tm->dkv + vo, tm->dO + oo,
                            a->q + qo, a->k + bh * T * dqk, a->kv + vo, a->o + oo,
                            a->lse + bh * T, &ad, scale, tm_thread_ws(tm));
    }
    proj_bwd(tm, l, B, T, dx);
}

void dsc_tmla_bwd(dsc_train_model_t *tm, int64_t l, int64_t B, int64_t T, const float *dy,
                  float *dx) {
    dsc_tmla_attend_bwd(tm, l, B, T, dy, dx, NULL, 0);
}

/* From the attention's gradients in tm->dq, tm->dk, tm->dkv back through
   the projections: their parameter gradients, and dx (added into). */
static void proj_bwd(dsc_train_model_t *tm, int64_t l, int64_t B, int64_t T, float *dx) {
    const dsc_config *c = &tm->cfg;
    const tm_layer *w = &tm->layers[l];
    const tm_act *a = &tm->act[l];
    int64_t N = B * T, d = c->hidden_size, H = c->num_attention_heads;
    int64_t dq = c->q_lora_rank, dc = c->kv_lora_rank, dr = c->qk_rope_head_dim;
    int64_t dn = c->qk_nope_head_dim, dv = c->v_head_dim, dqk = dn + dr, lkv = H * (dn + dv);
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
    dsc_tk_rmsnorm_bwd(tm->k, tm->dc, G(tm, w->kv_a_norm), tm->dcn, a->c, w->kv_a_norm, N, dc,
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
        dsc_tk_rmsnorm_bwd(tm->k, tm->dqa, G(tm, w->q_a_norm), tm->dqan, a->qa, w->q_a_norm, N,
                           dq, LATENT_EPS);
        lin_bwd(tm, dx, G(tm, w->q_a), tm->dqa, a->xn, w->q_a, N, d, dq);
    } else {
        lin_bwd(tm, dx, G(tm, w->q_b), tm->dq, a->xn, w->q_b, N, d, H * dqk);
    }
}

const tm_attn_ops dsc_tattn_mla = {"mla", dsc_tmla_fwd, dsc_tmla_bwd};
