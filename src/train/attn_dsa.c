/*
 * attn_dsa.c - DSA's training stages (spec §4.6; V3.2-Exp §2.1), dense
 * warm-up and sparse, as a trainer attention (tm_attn_ops, tm_impl.h) for
 * deepseek_v32 layers.
 *
 * Forward: MLA exactly as attn_mla.c (dense causal attention; the layer's
 * output and the LM loss do not depend on the indexer), then the lightning
 * indexer on DETACHED inputs, fed as src/model/dsa.c feeds it:
 *   q = RoPE_half(wq_b(qan)) per head       qan: MLA's normed q latent
 *   k = RoPE_half(LayerNorm(wk(xn)))        xn: the layer input
 *   w = weights_proj(xn) * H_I^-1/2 * D_I^-1/2
 *   I = idx_score(q, k, w)                  dense causal (T, T) per sequence
 * and its target P_t = MLA's attention probabilities summed over the heads
 * (recomputed from the saved per-head lse: p = exp(s q.k - lse)), which
 * the KL (idx_ops.h's contract) L1-normalises. The layer's loss term is
 *   weight * mean over the B sequences of idx_kl (a mean over queries).
 * The recall of the indexer's top-k (index_topk) against P is a metric.
 *
 * Backward: MLA's backward unchanged, plus the indexer's: I and P are
 * recomputed per sequence (nothing (T, T) is kept per layer), dI from the
 * KL, then the score, RoPE, LayerNorm and linear backwards into the five
 * indexer tensors only. Nothing flows into qan or xn (the indexer's inputs
 * are detached), so the LM gradients are bit-identical to MLA's.
 *
 * Sparse stage (tm->dsa_sparse, spec §4.6 step 2): MLA's projections, then
 * the indexer, then per query t the indexer's top-index_topk keys of
 * I(t, 0..t) (dsc_k_topk_set's set: ties to the lower position; all keys
 * when t+1 <= index_topk; saved in a->ix_sel, not differentiated), MLA's
 * attention over that set only (tk_sparse.h; every MLA weight trains from
 * the LM loss through it), and the KL on the selected set with P = the
 * sparse attention's probabilities summed over heads (I and P at the
 * selected keys are kept per layer for the backward, (N, k) each). The
 * recall is the selection's share of the dense attention's mass (dense lse
 * recomputed).
 *
 * Kernels: the fast fp32 ones, each tested against its scalar reference
 * (which stays the oracle): the indexer's scores and their backward on
 * GEMM tiles (dense) or gathered rows (sparse) (idx_fast.h), the target,
 * the dense lse for the recall, the KL and the recall (idx_target.h), and
 * the sparse attention (dsc_tks_fast_*, tk_sparse.h), which also hands back
 * each head's probabilities at the selected keys, so the sparse stage's KL
 * target costs a sum over heads. The recall is a metric that needs the
 * dense attention (O(T^2)): it runs only while tm->dsa_recall_on.
 */
#include <math.h>
#include "train/idx_fast.h"
#include "train/idx_ops.h"
#include "train/idx_target.h"
#include "train/tk_sparse.h"
#include "train/tm_impl.h"
#include "util/util.h"

/* LayerNorm eps of k_norm, as dsa.c (INDEX_NORM_EPS). */
#define IDX_NORM_EPS 1e-6

/* Columns of a selection row for T tokens: kk = min(index_topk, T). */
static int64_t sel_cols(const dsc_config *c, int64_t T) {
    return c->index_topk < T ? c->index_topk : T;
}

static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* MLA's attention of sequence b as idx_target.h reads it. */
static dsc_idxt_dims mla_dims(const dsc_config *c, int64_t T) {
    int64_t H = c->num_attention_heads, dqk = c->qk_nope_head_dim + c->qk_rope_head_dim;
    return (dsc_idxt_dims){T, H, dqk, H * dqk, dqk, T * dqk};
}

dsc_status dsc_tdsa_setup(dsc_train_model_t *tm, dsc_err *err) {
    const dsc_config *c = &tm->cfg;
    if (c->q_lora_rank < 1 || c->index_n_heads < 1 || c->index_head_dim < c->qk_rope_head_dim)
        return dsc_err_set(err, DSC_ERR_CONFIG,
                           "DSA training needs q_lora_rank >= 1, index_n_heads >= 1 and "
                           "index_head_dim >= qk_rope_head_dim (got %lld, %lld, %lld < %lld)",
                           (long long)c->q_lora_rank, (long long)c->index_n_heads,
                           (long long)c->index_head_dim, (long long)c->qk_rope_head_dim);
    tm->is_dsa = 1;
    tm->dsa_kl_weight = 1.0;
    tm->dsa_recall_on = 1;
    int64_t kk = sel_cols(c, tm->max_t), dqk = c->qk_nope_head_dim + c->qk_rope_head_dim;
    tm->attn_ws_floats =
        max64(tm->attn_ws_floats, dsc_tks_fast_scratch(kk, dqk, c->v_head_dim));
    return DSC_OK;
}

void dsc_tdsa_carve_layer(dsc_train_model_t *tm, carver *cv, tm_act *a) {
    const dsc_config *c = &tm->cfg;
    int64_t N = tm->max_b * tm->max_t, HI = c->index_n_heads, DI = c->index_head_dim;
    int64_t kk = sel_cols(c, tm->max_t);
    a->ix_q = CARVE(cv, N * HI * DI, float);
    a->ix_kraw = CARVE(cv, N * DI, float);
    a->ix_k = CARVE(cv, N * DI, float);
    a->ix_w = CARVE(cv, N * HI, float);
    a->ix_sel = CARVE(cv, N * kk, int32_t);
    a->ix_isel = CARVE(cv, N * kk, float);
    a->ix_tgt = CARVE(cv, N * kk, float);
}

void dsc_tdsa_carve_shared(dsc_train_model_t *tm, carver *cv) {
    const dsc_config *c = &tm->cfg;
    int64_t N = tm->max_b * tm->max_t, HI = c->index_n_heads, DI = c->index_head_dim;
    int64_t T = tm->max_t, H = c->num_attention_heads, kk = sel_cols(c, T);
    int nt = tm->n_threads;
    dsc_idxt_dims md = mla_dims(c, T);
    tm->ix_dq = CARVE(cv, N * HI * DI, float);
    tm->ix_dk = CARVE(cv, N * DI, float);
    tm->ix_dkraw = CARVE(cv, N * DI, float);
    tm->ix_dw = CARVE(cv, N * HI, float);
    tm->ix_I = CARVE(cv, T * T, float);
    tm->ix_P = CARVE(cv, T * T, float);
    tm->ix_dI = CARVE(cv, T * T, float);
    tm->ix_Ph = CARVE(cv, tm->max_b * H * T * kk, float);
    tm->ix_lse = CARVE(cv, H * T, float);
    tm->ix_fws = CARVE(cv, max64(dsc_idxf_scratch(T, HI, DI, kk, nt),
                                 dsc_idxt_attn_scratch(&md, nt)), float);
    tm->ix_ws = CARVE(cv, max64(T, dsc_idxt_recall_scratch(T, T, nt)), double);
    tm->ix_sws = CARVE(cv, dsc_idxt_select_scratch(T, nt), uint32_t);
}

/* Sequence b of layer l: the indexer's dense causal scores I (T, T) into
   tm->ix_I. */
static void dense_scores(dsc_train_model_t *tm, int64_t l, int64_t b, int64_t T) {
    const dsc_config *c = &tm->cfg;
    const tm_act *a = &tm->act[l];
    int64_t HI = c->index_n_heads, DI = c->index_head_dim;
    dsc_idx_dims id = {T, HI, DI, 0};
    dsc_idxf_score_fwd(tm->ix_I, a->ix_q + b * T * HI * DI, a->ix_k + b * T * DI,
                       a->ix_w + b * T * HI, NULL, &id, tm->n_threads, tm->ix_fws);
}

/* Sequence b of layer l: the dense target P (T, T) into tm->ix_P, MLA's
   attention probabilities summed over heads (0 where not visible), from
   the saved lse (warm-up) or, with lse NULL, with each head's normaliser
   recomputed into tm->ix_lse (sparse stage: a->lse holds the sparse
   attention's). */
static void dense_target(dsc_train_model_t *tm, int64_t l, int64_t b, int64_t T,
                         const float *lse) {
    const dsc_config *c = &tm->cfg;
    const tm_act *a = &tm->act[l];
    int64_t H = c->num_attention_heads, dqk = c->qk_nope_head_dim + c->qk_rope_head_dim;
    dsc_idxt_dims md = mla_dims(c, T);
    const float *Q = a->q + b * T * H * dqk, *K = a->k + b * H * T * dqk;
    float scale = (float)c->softmax_scale;
    if (lse)
        dsc_idxt_attn_target(tm->ix_P, Q, K, lse, &md, scale, tm->n_threads, tm->ix_fws);
    else
        dsc_idxt_attn_lse_target(tm->ix_lse, tm->ix_P, Q, K, &md, scale, tm->n_threads,
                                 tm->ix_fws);
}

/* Sparse stage, sequence b of layer l, after dense_scores: the top-kk keys
   of each query t by I(t, 0..t) (all t+1 of them when t+1 <= kk), as
   dsc_k_topk_set returns them: ascending positions, ties at the boundary
   to the LOWER position (NaN below -inf); the rest of the row is -1. Not
   differentiated. Also a->ix_isel: I at the selected keys (-INFINITY at
   padding). */
static void select_keys(dsc_train_model_t *tm, int64_t l, int64_t b, int64_t T) {
    int64_t kk = sel_cols(&tm->cfg, T);
    int32_t *sel = tm->act[l].ix_sel + b * T * kk;
    float *isel = tm->act[l].ix_isel + b * T * kk;
    const float *I = tm->ix_I;
    dsc_idxt_select(sel, I, T, kk, tm->n_threads, tm->ix_sws);
    /* I at the selected keys, for the KL: gathered from the scores the
       selection was made from (the same values; no second score pass) */
#pragma omp parallel for num_threads(tm->n_threads) schedule(static)
    for (int64_t t = 0; t < T; t++)
        for (int64_t j = 0; j < kk; j++) {
            int32_t s = sel[t * kk + j];
            isel[t * kk + j] = s >= 0 ? I[t * T + s] : -INFINITY;
        }
}

/* Sparse stage, layer l, after select_keys: MLA's attention over the
   selected keys (every head of every sequence in parallel), y = W^O o, the
   KL target at the selected keys (a->ix_tgt: the heads' probabilities
   summed) and the KL against the indexer's scores there (a->ix_isel).
   Returns the KL summed over the B sequences. */
static double sparse_attend(dsc_train_model_t *tm, int64_t l, int64_t B, int64_t T) {
    const dsc_config *c = &tm->cfg;
    tm_act *a = &tm->act[l];
    int64_t N = B * T, H = c->num_attention_heads, kk = sel_cols(c, T);
    dsc_tmla_attend(tm, l, B, T, a->ix_sel, kk, tm->ix_Ph);
    /* the target: heads summed in order 0..H-1 */
#pragma omp parallel for num_threads(tm->n_threads) schedule(static)
    for (int64_t r = 0; r < N; r++) {
        int64_t b = r / T, t = r % T;
        float *tg = a->ix_tgt + r * kk;
        for (int64_t j = 0; j < kk; j++) tg[j] = 0.0f;
        for (int64_t h = 0; h < H; h++) {
            const float *ph = tm->ix_Ph + ((b * H + h) * T + t) * kk;
            for (int64_t j = 0; j < kk; j++) tg[j] += ph[j];
        }
    }
    double kl = 0;
    for (int64_t b = 0; b < B; b++)
        kl += dsc_idxt_kl(NULL, a->ix_isel + b * T * kk, a->ix_tgt + b * T * kk, T, kk, 1.0,
                          tm->n_threads, tm->ix_ws);
    return kl;
}

/* The indexer of layer l (tm->act[l].qan, .xn in), then its loss and
   recall; returns weight * KL (mean over sequences). */
static double dsa_fwd(dsc_train_model_t *tm, int64_t l, int64_t B, int64_t T) {
    double zero_loss = 0;
    if (tm->dsa_sparse) dsc_tmla_proj_fwd(tm, l, B, T);
    else zero_loss = dsc_tmla_fwd(tm, l, B, T);
    const dsc_config *c = &tm->cfg;
    const tm_layer *w = &tm->layers[l];
    tm_act *a = &tm->act[l];
    int64_t N = B * T, d = c->hidden_size, dq = c->q_lora_rank, dr = c->qk_rope_head_dim;
    int64_t HI = c->index_n_heads, DI = c->index_head_dim;
    /* q = RoPE_half(W_qb qan); k = RoPE_half(LayerNorm(W_k xn)); w = W_w xn * s */
    lin_fwd(tm, a->ix_q, a->qan, w->ix_wq_b, N, dq, HI * DI);
    lin_fwd(tm, a->ix_kraw, a->xn, w->ix_wk, N, d, DI);
    dsc_op_idx_layernorm_fwd_f32(a->ix_k, a->ix_kraw, w->ix_kn_w, w->ix_kn_b, N, DI,
                                 IDX_NORM_EPS);
    lin_fwd(tm, a->ix_w, a->xn, w->ix_w, N, d, HI);
    float s = (float)(1.0 / sqrt((double)HI) / sqrt((double)DI));
    for (int64_t i = 0; i < N * HI; i++) a->ix_w[i] *= s;
    dsc_op_rope_slice qs = {T, HI * DI, HI, DI, 0, dr}, ks = {T, DI, 1, DI, 0, dr};
    for (int64_t b = 0; b < B; b++) {
        dsc_op_rope_fwd_f32(a->ix_q + b * T * HI * DI, &qs, NULL, tm->rope_cos, tm->rope_sin, 0);
        dsc_op_rope_fwd_f32(a->ix_k + b * T * DI, &ks, NULL, tm->rope_cos, tm->rope_sin, 0);
    }
    double kl = 0, rec = 0;
    int64_t H = c->num_attention_heads;
    if (tm->dsa_sparse) {
        /* the selection from the indexer's dense causal scores (and, when
           asked, the recall of that top-k against the dense attention's
           head-summed mass, the dense normalisers recomputed), then MLA's
           attention over the selected keys and the KL on the selected set */
        for (int64_t b = 0; b < B; b++) {
            dense_scores(tm, l, b, T);
            select_keys(tm, l, b, T);
            if (tm->dsa_recall_on) {
                dense_target(tm, l, b, T, NULL);
                rec += dsc_idxt_recall(tm->ix_I, tm->ix_P, T, T, c->index_topk, tm->n_threads,
                                       tm->ix_ws);
            }
        }
        kl = sparse_attend(tm, l, B, T);
    } else {
        /* the KL against MLA's head-summed probabilities, and the recall */
        for (int64_t b = 0; b < B; b++) {
            dense_scores(tm, l, b, T);
            dense_target(tm, l, b, T, a->lse + b * H * T);
            kl += dsc_idxt_kl(NULL, tm->ix_I, tm->ix_P, T, T, 1.0, tm->n_threads, tm->ix_ws);
            if (tm->dsa_recall_on)
                rec += dsc_idxt_recall(tm->ix_I, tm->ix_P, T, T, c->index_topk, tm->n_threads,
                                       tm->ix_ws);
        }
    }
    kl /= (double)B;
    tm->dsa_kl_sum += kl;
    if (tm->dsa_recall_on) {
        tm->dsa_recall_sum += rec / (double)B;
        tm->dsa_rec_n++;
    }
    tm->dsa_n++;
    return zero_loss + tm->dsa_kl_weight * kl;
}

static void dsa_bwd(dsc_train_model_t *tm, int64_t l, int64_t B, int64_t T, const float *dy,
                    float *dx) {
    dsc_tmla_attend_bwd(tm, l, B, T, dy, dx, tm->dsa_sparse ? tm->act[l].ix_sel : NULL,
                        sel_cols(&tm->cfg, T));
    if (tm->dsa_kl_weight == 0.0) return;
    const dsc_config *c = &tm->cfg;
    const tm_layer *w = &tm->layers[l];
    const tm_act *a = &tm->act[l];
    int64_t N = B * T, d = c->hidden_size, dq = c->q_lora_rank, dr = c->qk_rope_head_dim;
    int64_t HI = c->index_n_heads, DI = c->index_head_dim;
    /* dI from the KL (scaled for the mean over sequences), into dq, dk, dw */
    zero(tm->ix_dq, N * HI * DI);
    zero(tm->ix_dk, N * DI);
    zero(tm->ix_dw, N * HI);
    /* dense: I, P, dI (T, T) recomputed; sparse: (T, kk) on the selected
       set, I and the target as the forward saved them */
    int64_t m = tm->dsa_sparse ? sel_cols(c, T) : T, H = c->num_attention_heads;
    dsc_idx_dims id = {T, HI, DI, m};
    for (int64_t b = 0; b < B; b++) {
        const int32_t *sel = NULL;
        const float *I = tm->ix_I, *P = tm->ix_P;
        if (tm->dsa_sparse) {
            sel = a->ix_sel + b * T * m;
            I = a->ix_isel + b * T * m;
            P = a->ix_tgt + b * T * m;
        } else {
            dense_scores(tm, l, b, T);
            dense_target(tm, l, b, T, a->lse + b * H * T);
        }
        zero(tm->ix_dI, T * m);
        dsc_idxt_kl(tm->ix_dI, I, P, T, m, tm->dsa_kl_weight / (double)B, tm->n_threads,
                    tm->ix_ws);
        dsc_idxf_score_bwd(tm->ix_dq + b * T * HI * DI, tm->ix_dk + b * T * DI,
                           tm->ix_dw + b * T * HI, tm->ix_dI, a->ix_q + b * T * HI * DI,
                           a->ix_k + b * T * DI, a->ix_w + b * T * HI, sel, &id, tm->n_threads,
                           tm->ix_fws);
    }
    dsc_op_rope_slice qs = {T, HI * DI, HI, DI, 0, dr}, ks = {T, DI, 1, DI, 0, dr};
    for (int64_t b = 0; b < B; b++) {
        dsc_op_rope_bwd_f32(tm->ix_dq + b * T * HI * DI, &qs, NULL, tm->rope_cos, tm->rope_sin, 0);
        dsc_op_rope_bwd_f32(tm->ix_dk + b * T * DI, &ks, NULL, tm->rope_cos, tm->rope_sin, 0);
    }
    /* parameters only: the inputs qan and xn get nothing (detached) */
    lin_bwd(tm, NULL, G(tm, w->ix_wq_b), tm->ix_dq, a->qan, w->ix_wq_b, N, dq, HI * DI);
    zero(tm->ix_dkraw, N * DI);
    dsc_op_idx_layernorm_bwd_f32(tm->ix_dkraw, G(tm, w->ix_kn_w), G(tm, w->ix_kn_b), tm->ix_dk,
                                 a->ix_kraw, w->ix_kn_w, N, DI, IDX_NORM_EPS);
    lin_bwd(tm, NULL, G(tm, w->ix_wk), tm->ix_dkraw, a->xn, w->ix_wk, N, d, DI);
    float s = (float)(1.0 / sqrt((double)HI) / sqrt((double)DI));
    for (int64_t i = 0; i < N * HI; i++) tm->ix_dw[i] *= s;
    lin_bwd(tm, NULL, G(tm, w->ix_w), tm->ix_dw, a->xn, w->ix_w, N, d, HI);
}

const tm_attn_ops dsc_tattn_dsa = {"dsa", dsa_fwd, dsa_bwd};
