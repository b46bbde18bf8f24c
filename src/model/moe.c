/*
 * moe.c - the FFN block: dense SwiGLU, or DeepSeekMoE (V2 §2.2, V3 §2.1.2):
 *   y = sum_shared FFN_s(x) + sum_{i in topK} g_i FFN_i(x)
 *
 * Routing (dsc_moe_route), per token:
 *   s = softmax(z) (V2) or sigmoid(z) (V3), z = W_gate x
 *   selection scores: s, plus e_score_correction_bias for noaux_tc (the bias
 *   chooses experts but never weights them)
 *   group-limited methods: group score = max (group_limited_greedy) or sum of
 *   the top-2 (noaux_tc); experts outside the topk_group best groups get -inf
 *   (the official rule; transformers uses 0.0, which differs only when
 *   biased scores can be negative)
 *   top-K by selection score; g_i = s_i, divided by their sum when
 *   norm_topk_prob, times routed_scaling_factor.
 * Experts then run on the rows routed to them, gathered into one batch each,
 * so every expert's weights are read once per call; outputs are added in
 * expert order, which keeps the result deterministic.
 */
#include <math.h>
#include <string.h>

#include "model/model.h"
#include "util/util.h"

/* SwiGLU MLP on n rows: y = down(silu(gate x) * up x). g, u: (n, ff) scratch. */
static void mlp_forward(dsc_ctx_t *c, const dsc_mlp *mlp, const float *x, int64_t n,
                        float *y) {
    int64_t ff = mlp->gate.rows;
    dsc_k_matmul(c->k, c->w.ffn_g, x, &mlp->gate, n);
    dsc_k_matmul(c->k, c->w.ffn_u, x, &mlp->up, n);
    dsc_k_silu_mul(c->k, c->w.ffn_g, c->w.ffn_g, c->w.ffn_u, n * ff);
    dsc_k_matmul(c->k, y, c->w.ffn_g, &mlp->down, n);
}

void dsc_moe_route(const dsc_config *cfg, const float *logits, const float *bias, int64_t n,
                   float *scores, float *sel_score, float *group_ws, int32_t *sel_idx,
                   float *sel_w) {
    int64_t E = cfg->n_routed_experts, K = cfg->num_experts_per_tok;
    int64_t G = cfg->n_group, per = E / G;
    for (int64_t t = 0; t < n; t++) {
        const float *z = logits + t * E;
        float *s = scores + t * E, *sel = sel_score + t * E;
        if (cfg->scoring_func == DSC_SCORE_SOFTMAX) {
            memcpy(s, z, (size_t)E * sizeof *s);
            dsc_ref_softmax(s, 1, E);
        } else {
            for (int64_t e = 0; e < E; e++) s[e] = 1.0f / (1.0f + expf(-z[e]));
        }
        for (int64_t e = 0; e < E; e++) sel[e] = s[e] + (bias ? bias[e] : 0.0f);

        if (cfg->topk_method != DSC_TOPK_GREEDY && cfg->topk_group < G) {
            float *gs = group_ws;
            for (int64_t g = 0; g < G; g++) {
                const float *v = sel + g * per;
                if (cfg->topk_method == DSC_TOPK_NOAUX_TC) {
                    int32_t top2[2];
                    dsc_ref_topk(v, per, 2, top2);
                    gs[g] = v[top2[0]] + v[top2[1]];
                } else {
                    float mx = v[0];
                    for (int64_t e = 1; e < per; e++) mx = v[e] > mx ? v[e] : mx;
                    gs[g] = mx;
                }
            }
            /* keep the topk_group best groups: mark them, mask the others */
            int32_t keep[256];
            int64_t kg = cfg->topk_group;
            int32_t *kp = kg <= 256 ? keep : NULL;
            DSC_CHECK(kp != NULL);
            dsc_ref_topk(gs, G, kg, kp);
            for (int64_t g = 0; g < G; g++) {
                int kept = 0;
                for (int64_t j = 0; j < kg; j++) kept |= kp[j] == g;
                if (!kept)
                    for (int64_t e = 0; e < per; e++) sel[g * per + e] = -INFINITY;
            }
        }
        int32_t *idx = sel_idx + t * K;
        float *wt = sel_w + t * K;
        dsc_ref_topk(sel, E, K, idx);
        double sum = 0.0;
        for (int64_t j = 0; j < K; j++) {
            wt[j] = s[idx[j]];
            sum += wt[j];
        }
        for (int64_t j = 0; j < K; j++) {
            double g = wt[j];
            if (cfg->norm_topk_prob) g /= sum + 1e-20;
            wt[j] = (float)(g * cfg->routed_scaling_factor);
        }
    }
}

static void moe_forward(dsc_ctx_t *c, const dsc_layer *ly, int64_t n) {
    const dsc_config *cf = &c->m->cfg;
    dsc_work *w = &c->w;
    int64_t d = cf->hidden_size, E = cf->n_routed_experts, K = cf->num_experts_per_tok;
    int64_t B = c->p.n_batch;

    /* router logits z = W_gate x (n, E); the bias row as fp32 */
    dsc_k_matmul(c->k, w->ffn_u, w->xn, &ly->router, n);
    const float *bias = NULL;
    if (ly->router_bias.data) {
        dsc_wmat_row(&ly->router_bias, 0, 0, E, w->ffn_g);
        bias = w->ffn_g;
    }
    dsc_moe_route(cf, w->ffn_u, bias, n, w->router, w->sel_score, w->group_ws, w->sel_idx,
                  w->sel_w);

    /* token lists per expert, in token order */
    memset(w->n_tok, 0, (size_t)E * sizeof *w->n_tok);
    for (int64_t t = 0; t < n; t++)
        for (int64_t j = 0; j < K; j++) {
            int64_t e = w->sel_idx[t * K + j];
            int64_t slot = w->n_tok[e]++;
            w->tok_of[e * B + slot] = (int32_t)t;
            w->tok_w[e * B + slot] = w->sel_w[t * K + j];
        }

    for (int64_t e = 0; e < E; e++) c->experts_touched += w->n_tok[e] > 0;

    /* shared experts, weight 1 */
    if (cf->n_shared_experts > 0)
        mlp_forward(c, &ly->shared, w->xn, n, w->y);
    else
        memset(w->y, 0, (size_t)(n * d) * sizeof(float));

    for (int64_t e = 0; e < E; e++) {
        int64_t ne = w->n_tok[e];
        if (!ne) continue;
        const int32_t *toks = w->tok_of + e * B;
        for (int64_t j = 0; j < ne; j++)
            memcpy(w->xe + j * d, w->xn + (int64_t)toks[j] * d, (size_t)d * sizeof(float));
        mlp_forward(c, &ly->experts[e], w->xe, ne, w->ye);
        for (int64_t j = 0; j < ne; j++) {
            float g = w->tok_w[e * B + j];
            float *dst = w->y + (int64_t)toks[j] * d;
            const float *src = w->ye + j * d;
            for (int64_t i = 0; i < d; i++) dst[i] += g * src[i];
        }
    }
}

void dsc_ffn_forward(dsc_ctx_t *c, const dsc_layer *ly, int64_t n) {
    if (ly->is_moe)
        moe_forward(c, ly, n);
    else
        mlp_forward(c, &ly->dense, c->w.xn, n, c->w.y);
}
