/*
 * test_train_model.c - the trainable model (src/train/model_train.h) on the
 * committed fixtures.
 *
 *  - params: the parameter list covers every weight the engine binds (the
 *    element count equals dsc_model_info.n_params) and holds the dequantised
 *    values;
 *  - loss: the training forward's loss equals the cross-entropy computed
 *    (in double) from dsc_forward's logits on the same tokens, for V3 (q
 *    LoRA, sigmoid + noaux_tc, YaRN, interleaved RoPE), V2-Lite (q_proj,
 *    softmax greedy), and V3 in BF16 and FP8 (dequantised copies). Both run
 *    in fp32 and sum in double, but in a different order (BLAS vs the ops'
 *    loops, absorbed vs naive MLA), so they differ by fp32 rounding through
 *    3 layers: ~1e-7 relative on the logits; we allow 1e-5 relative on the
 *    loss. A batch of two sequences gives the mean of their losses;
 *  - fd: central finite differences of the fp32 loss against the backward,
 *    for the 3 largest-gradient elements of each kind of tensor;
 *  - determinism: two passes give bit-identical gradients; the expert load
 *    counts sum to tokens x K in each MoE layer.
 *
 * FD tolerance. The model is fp32 (the loss is summed in double but every
 * activation is rounded to fp32), so the loss carries rounding noise of
 * about 1e-7 relative (L ~ 5: ~5e-7 absolute, and it is not smooth in the
 * weights). With a step h = 1e-2 |w| (w ~ 0.02..1, so h ~ 2e-4..1e-2) the
 * difference L(w+h) - L(w-h) ~ 2h|g| must stand well above that noise; we
 * check the elements with the largest |g| of each tensor, where that holds.
 * Noise / (2 h |g|) and the truncation error (h^2/6) L''' / L' are then both
 * of order 1e-3 relative; we require 2e-2 relative per element, while a
 * missing or wrong term of the backward gives errors of order 1. A
 * perturbation that changes the routing (the selection is not
 * differentiated, so the loss jumps) is skipped, and counted.
 */
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "test.h"
#include "train/model_train.h"

#define LOSS_RTOL 1e-5
#define FD_REL 1e-2
#define FD_TOL 2e-2

static int verbose(void) { return getenv("DSC_TEST_VERBOSE") != NULL; }

/* Cross-entropy of the inference engine's logits on ids[0..T] (B = 1). */
static double ref_loss(dsc_t *t, const dsc_model_t *m, const int32_t *ids, int64_t T) {
    const dsc_config *c = dsc_model_config(m);
    int64_t V = c->vocab_size;
    dsc_ctx_params p = dsc_ctx_default_params();
    p.n_ctx = T;
    p.n_batch = T;
    dsc_ctx_t *ctx = NULL;
    dsc_err e = {0};
    float *logits = malloc((size_t)(T * V) * sizeof *logits);
    double loss = NAN;
    if (dsc_ctx_new(m, &p, &ctx, &e) == DSC_OK && logits &&
        dsc_forward(ctx, ids, T, 0, logits, &e) == DSC_OK) {
        loss = 0.0;
        for (int64_t i = 0; i < T; i++) {
            const float *z = logits + i * V;
            double mx = z[0], s = 0.0;
            for (int64_t v = 1; v < V; v++) mx = z[v] > mx ? z[v] : mx;
            for (int64_t v = 0; v < V; v++) s += exp((double)z[v] - mx);
            loss += mx + log(s) - z[ids[i + 1]];
        }
        loss /= (double)T;
    } else {
        T_CHECK(t, 0, "inference forward: %s", e.msg);
    }
    free(logits);
    dsc_ctx_free(ctx);
    return loss;
}

static dsc_train_model_t *make_tm(dsc_t *t, const dsc_model_t *m, int64_t B, int64_t T) {
    dsc_train_model_t *tm = NULL;
    dsc_err e = {0};
    dsc_status s = dsc_train_model_new(m, B, T, &tm, &e);
    T_CHECK(t, s == DSC_OK, "dsc_train_model_new: %s", e.msg);
    return tm;
}

static const dsc_param *find_param(const dsc_train_model_t *tm, const char *name) {
    int64_t n;
    const dsc_param *p = dsc_train_model_params(tm, &n);
    for (int64_t i = 0; i < n; i++)
        if (!strcmp(p[i].name, name)) return &p[i];
    return NULL;
}

/* ---- params ---- */

static void params_case(dsc_t *t, const char *fx) {
    dsc_model_t *m = t_load_fixture(t, fx);
    if (!m) return;
    dsc_train_model_t *tm = make_tm(t, m, 1, 4);
    if (tm) {
        dsc_model_info info;
        dsc_model_get_info(m, &info);
        int64_t n, total = 0;
        const dsc_param *p = dsc_train_model_params(tm, &n);
        for (int64_t i = 0; i < n; i++) total += dsc_param_numel(&p[i]);
        T_CHECK(t, total == info.n_params, "%s: %lld parameter elements, the engine binds %lld",
                fx, (long long)total, (long long)info.n_params);
        /* FP8 checkpoints bind a weight_scale_inv beside each matrix */
        if (info.dtype_bytes[DSC_F8_E4M3] == 0)
            T_CHECK(t, n == info.n_tensors, "%s: %lld tensors, the engine binds %lld", fx,
                    (long long)n, (long long)info.n_tensors);
        /* spot values: embedding row 3 and layer 0's kv_b row 1 */
        const dsc_param *e = find_param(tm, "model.embed_tokens.weight");
        const dsc_param *kb = find_param(tm, "model.layers.0.self_attn.kv_b_proj.weight");
        T_CHECK(t, e && kb && e->decay == 1 && kb->ndim == 2, "%s: tensors not listed", fx);
        if (e && kb) {
            int64_t d = m->cfg.hidden_size, dc = m->cfg.kv_lora_rank;
            float *want = malloc((size_t)(d > dc ? d : dc) * sizeof *want);
            dsc_wmat_row(&m->embed, 3, 0, d, want);
            t_close_f32(t, "embed row 3", e->data + 3 * d, want, d, 0, 0);
            dsc_wmat_row(&m->layers[0].kv_b, 1, 0, dc, want);
            t_close_f32(t, "kv_b row 1", kb->data + dc, want, dc, 0, 0);
            free(want);
        }
        const dsc_param *nw = find_param(tm, "model.norm.weight");
        T_CHECK(t, nw && nw->decay == 0 && nw->ndim == 1, "%s: final norm entry", fx);
    }
    dsc_train_model_free(tm);
    dsc_model_free(m);
}

static void test_params(dsc_t *t) {
    params_case(t, "v3");
    params_case(t, "v2_lite");
    params_case(t, "v3_fp8");
}

/* ---- loss against the inference engine ---- */

static void loss_case(dsc_t *t, const char *fx, int64_t T) {
    dsc_model_t *m = t_load_fixture(t, fx);
    int64_t n_ids = 0;
    int32_t *ids = t_fixture_ids(fx, "ref_ids.i32", &n_ids);
    T_CHECK(t, ids && n_ids >= T + 3, "%s: ref_ids.i32 too short", fx);
    dsc_train_model_t *tm = m && ids && n_ids >= T + 3 ? make_tm(t, m, 2, T) : NULL;
    if (tm) {
        dsc_err e = {0};
        double want = ref_loss(t, m, ids, T), got = NAN, got_fb = NAN;
        T_CHECK(t, dsc_train_forward(tm, ids, 1, T, &got, &e) == DSC_OK, "%s", e.msg);
        double rel = fabs(got - want) / fabs(want);
        if (verbose()) printf("      %-8s T=%lld loss %.9f engine %.9f rel %.2e\n", fx,
                              (long long)T, got, want, rel);
        T_CHECK(t, rel <= LOSS_RTOL, "%s: loss %.9g, engine's %.9g (rel %.2e)", fx, got, want,
                rel);
        T_CHECK(t, dsc_train_forward_backward(tm, ids, 1, T, &got_fb, &e) == DSC_OK, "%s", e.msg);
        T_CHECK(t, got_fb == got, "%s: forward_backward loss %.17g != forward %.17g", fx, got_fb,
                got);
        /* two sequences in one batch: the mean of their losses (equal counts) */
        int32_t *two = malloc((size_t)(2 * (T + 1)) * sizeof *two);
        memcpy(two, ids, (size_t)(T + 1) * sizeof *two);
        memcpy(two + T + 1, ids + 2, (size_t)(T + 1) * sizeof *two);
        double l0 = 0, l1 = 0, l01 = 0;
        dsc_train_forward(tm, two, 1, T, &l0, &e);
        dsc_train_forward(tm, two + T + 1, 1, T, &l1, &e);
        dsc_train_forward(tm, two, 2, T, &l01, &e);
        T_CHECK(t, fabs(l01 - 0.5 * (l0 + l1)) <= 1e-6 * fabs(l01),
                "%s: batch loss %.9g, mean of its rows %.9g", fx, l01, 0.5 * (l0 + l1));
        /* padding (-1, dsc_data's tail): a sequence whose ids from k on are
           -1 has the loss of its first k ids as a sequence of k - 1 inputs
           (the padded targets are not counted and, causally, padded inputs
           reach no counted position) */
        int64_t k = T / 2 + 1;
        memcpy(two, ids, (size_t)(T + 1) * sizeof *two);
        for (int64_t j = k; j <= T; j++) two[j] = -1;
        double lpad = NAN, lcut = NAN;
        T_CHECK(t, dsc_train_forward(tm, two, 1, T, &lpad, &e) == DSC_OK, "padded: %s", e.msg);
        T_CHECK(t, dsc_train_forward(tm, ids, 1, k - 1, &lcut, &e) == DSC_OK, "%s", e.msg);
        T_CHECK(t, fabs(lpad - lcut) <= 1e-6 * fabs(lcut),
                "%s: padded loss %.9g, loss of the unpadded part %.9g", fx, lpad, lcut);
        /* argument checks */
        T_CHECK(t, dsc_train_forward(tm, ids, 1, T + 1, &got, &e) == DSC_ERR_ARG, "T > max_t");
        two[3] = (int32_t)m->cfg.vocab_size;
        T_CHECK(t, dsc_train_forward(tm, two, 1, T, &got, &e) == DSC_ERR_ARG, "bad id");
        two[3] = -2;
        T_CHECK(t, dsc_train_forward(tm, two, 1, T, &got, &e) == DSC_ERR_ARG, "id -2");
        free(two);
    }
    dsc_train_model_free(tm);
    free(ids);
    dsc_model_free(m);
}

static void test_loss(dsc_t *t) {
    loss_case(t, "v3", 20);
    loss_case(t, "v2_lite", 17);
    loss_case(t, "v3_bf16", 12);
    loss_case(t, "v3_fp8", 12);
}

/* ---- finite differences ---- */

/* The routing of every MoE layer of the last forward: saved into buf, or
   compared with it. */
static int64_t routing_size(const dsc_train_model_t *tm, int64_t n_tok) {
    const dsc_config *c = dsc_train_model_config(tm);
    return c->num_hidden_layers * n_tok * c->num_experts_per_tok;
}

static void routing_save(const dsc_train_model_t *tm, int32_t *buf, int64_t n_tok) {
    const dsc_config *c = dsc_train_model_config(tm);
    int64_t nk = n_tok * c->num_experts_per_tok;
    for (int64_t l = 0; l < c->num_hidden_layers; l++) {
        const int32_t *r = dsc_train_model_routing(tm, l);
        if (r) memcpy(buf + l * nk, r, (size_t)nk * sizeof *r);
    }
}

static int routing_same(const dsc_train_model_t *tm, const int32_t *buf, int64_t n_tok) {
    const dsc_config *c = dsc_train_model_config(tm);
    int64_t nk = n_tok * c->num_experts_per_tok;
    int same = 1;
    for (int64_t l = 0; l < c->num_hidden_layers; l++) {
        const int32_t *r = dsc_train_model_routing(tm, l);
        if (r) same &= !memcmp(buf + l * nk, r, (size_t)nk * sizeof *r);
    }
    return same;
}

/* One kind of tensor: the FD error of its 3 largest-|grad| elements. */
static void fd_tensor(dsc_t *t, dsc_train_model_t *tm, const char *fx, const char *name,
                      const int32_t *toks, int64_t B, int64_t T, const float *grad0,
                      const float *data0, const int32_t *route0) {
    const dsc_param *p = find_param(tm, name);
    T_CHECK(t, p != NULL, "%s: no tensor %s", fx, name);
    if (!p) return;
    int64_t n = dsc_param_numel(p), off = p->data - data0, NT = B * T;
    enum { CAND = 8, WANT = 3 };
    int32_t top[CAND];
    for (int k = 0; k < CAND; k++) top[k] = -1;
    for (int64_t i = 0; i < n; i++) {      /* the CAND largest |grad|, in order */
        double g = fabs(grad0[off + i]);
        for (int k = 0; k < CAND; k++)
            if (top[k] < 0 || g > fabs(grad0[off + top[k]])) {
                for (int j = CAND - 1; j > k; j--) top[j] = top[j - 1];
                top[k] = (int32_t)i;
                break;
            }
    }
    double worst = 0;
    int checked = 0, skipped = 0;
    dsc_err e = {0};
    for (int k = 0; k < CAND && top[k] >= 0 && checked < WANT; k++) {
        float *w = p->data + top[k];
        float w0 = *w;
        double h = FD_REL * fabs(w0) > 1e-3 ? FD_REL * fabs(w0) : 1e-3;
        /* a step that flips the routing is retried at 1/4 and 1/16 of it */
        for (int tries = 0; tries < 3; tries++, h *= 0.25) {
            float wp = (float)(w0 + h), wm = (float)(w0 - h);
            double lp = 0, lm = 0;
            *w = wp;
            dsc_train_forward(tm, toks, B, T, &lp, &e);
            int same = routing_same(tm, route0, NT);
            *w = wm;
            dsc_train_forward(tm, toks, B, T, &lm, &e);
            same &= routing_same(tm, route0, NT);
            *w = w0;
            if (!same) {
                skipped++;
                continue;
            }
            double fd = (lp - lm) / ((double)wp - (double)wm), an = grad0[off + top[k]];
            double rel = fabs(fd - an) / fabs(an);
            worst = rel > worst ? rel : worst;
            checked++;
            T_CHECK(t, rel <= FD_TOL, "%s %s[%d]: fd %.6g, backward %.6g (rel %.2e > %.0e)",
                    fx, name, top[k], fd, an, rel, FD_TOL);
            break;
        }
    }
    if (verbose())
        printf("      fd %-8s %-52s rel err %.2e  (%d checked, %d steps skipped: routing)\n", fx, name,
               worst, checked, skipped);
    T_CHECK(t, checked > 0, "%s %s: every perturbation changed the routing", fx, name);
    T_CHECK(t, fabs(grad0[off + top[0]]) > 0, "%s %s: zero gradient", fx, name);
}

static void fd_case(dsc_t *t, const char *fx, int64_t B, int64_t T) {
    dsc_model_t *m = t_load_fixture(t, fx);
    int64_t n_ids = 0;
    int32_t *ids = t_fixture_ids(fx, "ref_ids.i32", &n_ids);
    T_CHECK(t, ids && n_ids >= B + T, "%s: ref_ids.i32 too short", fx);
    dsc_train_model_t *tm = m && ids && n_ids >= B + T ? make_tm(t, m, B, T) : NULL;
    if (tm) {
        const dsc_config *c = dsc_train_model_config(tm);
        int64_t NT = B * T, E = c->n_routed_experts;
        int32_t *toks = malloc((size_t)(B * (T + 1)) * sizeof *toks);
        for (int64_t b = 0; b < B; b++)   /* B overlapping windows of the ids */
            for (int64_t i = 0; i <= T; i++) toks[b * (T + 1) + i] = ids[b + i];
        dsc_err e = {0};
        double L0 = 0;
        T_CHECK(t, dsc_train_forward_backward(tm, toks, B, T, &L0, &e) == DSC_OK, "%s", e.msg);
        int64_t nf;
        const float *data0 = dsc_train_model_data(tm, &nf);
        float *grad0 = malloc((size_t)nf * sizeof *grad0);
        memcpy(grad0, dsc_train_model_grad(tm, &nf), (size_t)nf * sizeof *grad0);
        int32_t *route0 = calloc((size_t)routing_size(tm, NT) + 1, sizeof *route0);
        routing_save(tm, route0, NT);

        /* the routed expert of the first MoE layer with the most tokens */
        int64_t lm = -1;
        for (int64_t l = 0; l < c->num_hidden_layers && lm < 0; l++)
            if (dsc_train_model_routing(tm, l)) lm = l;
        const int64_t *load = dsc_train_model_expert_load(tm);
        int64_t best = 0;
        for (int64_t x = 0; lm >= 0 && x < E; x++)
            if (load[lm * E + x] > load[lm * E + best]) best = x;
        char names[24][160];
        int nn = 0;
#define ADD(...) snprintf(names[nn++], sizeof names[0], __VA_ARGS__)
        ADD("model.embed_tokens.weight");
        if (c->q_lora_rank > 0) {
            ADD("model.layers.0.self_attn.q_a_proj.weight");
            ADD("model.layers.0.self_attn.q_a_layernorm.weight");
            ADD("model.layers.0.self_attn.q_b_proj.weight");
        } else {
            ADD("model.layers.0.self_attn.q_proj.weight");
        }
        ADD("model.layers.0.self_attn.kv_a_proj_with_mqa.weight");
        ADD("model.layers.0.self_attn.kv_a_layernorm.weight");
        ADD("model.layers.0.self_attn.kv_b_proj.weight");
        ADD("model.layers.0.self_attn.o_proj.weight");
        ADD("model.layers.0.input_layernorm.weight");
        ADD("model.layers.0.mlp.down_proj.weight");
        if (lm >= 0) {
            ADD("model.layers.%lld.post_attention_layernorm.weight", (long long)lm);
            ADD("model.layers.%lld.self_attn.kv_b_proj.weight", (long long)lm);
            ADD("model.layers.%lld.mlp.gate.weight", (long long)lm);
            ADD("model.layers.%lld.mlp.experts.%lld.gate_proj.weight", (long long)lm,
                (long long)best);
            ADD("model.layers.%lld.mlp.experts.%lld.up_proj.weight", (long long)lm,
                (long long)best);
            ADD("model.layers.%lld.mlp.experts.%lld.down_proj.weight", (long long)lm,
                (long long)best);
            if (c->n_shared_experts > 0) {
                ADD("model.layers.%lld.mlp.shared_experts.gate_proj.weight", (long long)lm);
                ADD("model.layers.%lld.mlp.shared_experts.down_proj.weight", (long long)lm);
            }
        }
        ADD("model.norm.weight");
        if (!c->tie_word_embeddings) ADD("lm_head.weight");
#undef ADD
        for (int i = 0; i < nn; i++)
            fd_tensor(t, tm, fx, names[i], toks, B, T, grad0, data0, route0);
        free(route0);
        free(grad0);
        free(toks);
    }
    dsc_train_model_free(tm);
    free(ids);
    dsc_model_free(m);
}

static void test_fd(dsc_t *t) {
    fd_case(t, "v3", 2, 8);
    fd_case(t, "v2_lite", 2, 8);
}

/* ---- determinism and the expert load ---- */

static void det_case(dsc_t *t, const char *fx) {
    dsc_model_t *m = t_load_fixture(t, fx);
    int64_t n_ids = 0, B = 2, T = 9;
    int32_t *ids = t_fixture_ids(fx, "ref_ids.i32", &n_ids);
    T_CHECK(t, ids && n_ids >= B * (T + 1), "%s: ref_ids.i32 too short", fx);
    dsc_train_model_t *tm = m && ids && n_ids >= B * (T + 1) ? make_tm(t, m, B, T) : NULL;
    if (tm) {
        const dsc_config *c = dsc_train_model_config(tm);
        int64_t E = c->n_routed_experts, K = c->num_experts_per_tok;
        dsc_err e = {0};
        double l1 = 0, l2 = 0;
        int64_t nf;
        T_CHECK(t, dsc_train_forward_backward(tm, ids, B, T, &l1, &e) == DSC_OK, "%s", e.msg);
        float *g = dsc_train_model_grad(tm, &nf);
        float *g1 = malloc((size_t)nf * sizeof *g1);
        memcpy(g1, g, (size_t)nf * sizeof *g1);
        double norm = 0;
        for (int64_t i = 0; i < nf; i++) norm += (double)g1[i] * g1[i];
        T_CHECK(t, isfinite(norm) && norm > 0, "%s: gradient norm^2 %g", fx, norm);
        T_CHECK(t, dsc_train_forward_backward(tm, ids, B, T, &l2, &e) == DSC_OK, "%s", e.msg);
        T_CHECK(t, l1 == l2, "%s: losses %.17g and %.17g", fx, l1, l2);
        T_CHECK(t, !memcmp(g1, g, (size_t)nf * sizeof *g1),
                "%s: two passes gave different gradients", fx);
        const int64_t *load = dsc_train_model_expert_load(tm);
        for (int64_t l = 0; l < c->num_hidden_layers; l++) {
            int64_t s = 0;
            for (int64_t x = 0; x < E; x++) s += load[l * E + x];
            int64_t want = dsc_train_model_routing(tm, l) ? B * T * K : 0;
            T_CHECK(t, s == want, "%s layer %lld: load sums to %lld, want %lld", fx,
                    (long long)l, (long long)s, (long long)want);
        }
        /* the correction bias is listed but gets no gradient */
        char bn[96];
        snprintf(bn, sizeof bn, "model.layers.%lld.mlp.gate.e_score_correction_bias",
                 (long long)c->first_k_dense_replace);
        const dsc_param *bp = find_param(tm, bn);
        if (c->topk_method == DSC_TOPK_NOAUX_TC) {
            T_CHECK(t, bp && bp->decay == 0, "%s: %s not listed", fx, bn);
            for (int64_t x = 0; bp && x < E; x++)
                T_CHECK(t, bp->grad[x] == 0.0f, "%s: bias gradient %g", fx, bp->grad[x]);
        }
        free(g1);
    }
    dsc_train_model_free(tm);
    free(ids);
    dsc_model_free(m);
}

static void test_determinism(dsc_t *t) {
    det_case(t, "v3");
    det_case(t, "v2_lite");
}

const dsc_test_case dsc_tests_train_model[] = {
    {"params", test_params},
    {"loss_vs_engine", test_loss},
    {"finite_differences", test_fd},
    {"determinism", test_determinism},
    {NULL, NULL},
};
