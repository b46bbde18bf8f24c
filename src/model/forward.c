/*
 * forward.c - the inference context and the forward pass.
 *
 *   h_0 = Emb(ids)
 *   for each layer:  h += MLA(RMSNorm_in(h));  h += FFN(RMSNorm_post(h))
 *                    (NSA in place of MLA for attention_type "nsa", nsa_attn.c)
 *   logits = lm_head(RMSNorm_final(h))
 *
 * dsc_ctx_new sizes every buffer from the config and the context parameters
 * and makes exactly two allocations: the latent cache and the work arena
 * (plus the indexer key cache for DSA, and one block of per-layer decode
 * states for NSA, whose latent cache is empty).
 * dsc_forward validates its arguments, then runs without allocating.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "nsa/nsa_decode_fast.h"
#include "util/util.h"

#define ALIGN 64

dsc_ctx_params dsc_ctx_default_params(void) {
    dsc_ctx_params p = {0};
    p.n_ctx = 4096;
    p.n_batch = 512;
    p.n_threads = 0;
    p.attn = DSC_ATTN_ABSORBED;
    p.spec_probe = 4;
    return p;
}

/* Arena plan: a list of (pointer slot, bytes) carved from one block. */
typedef struct {
    void **slot[64];
    size_t bytes[64];
    int n;
    size_t total;
    int overflow;
} plan;

static void plan_add(plan *p, void **slot, int64_t count, size_t elem) {
    size_t b;
    if (count < 0 || !dsc_mul_ok((size_t)count, elem, &b)) {
        p->overflow = 1;
        return;
    }
    b = (b + ALIGN - 1) / ALIGN * ALIGN;
    DSC_CHECK(p->n < 64);
    p->slot[p->n] = slot;
    p->bytes[p->n] = b;
    p->n++;
    if (!dsc_add_ok(p->total, b, &p->total)) p->overflow = 1;
}

static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

dsc_status dsc_ctx_new(const dsc_model_t *m, const dsc_ctx_params *pp, dsc_ctx_t **out,
                       dsc_err *err) {
    *out = NULL;
    const dsc_config *cf = &m->cfg;
    dsc_ctx_params p = pp ? *pp : dsc_ctx_default_params();
    if (p.n_ctx < 1 || p.n_batch < 1 || p.n_ctx > INT32_MAX)
        return dsc_err_set(err, DSC_ERR_ARG,
                           "n_ctx (%lld) must be in 1..2^31-1 and n_batch (%lld) >= 1",
                           (long long)p.n_ctx, (long long)p.n_batch);
    if (p.n_threads < 0 || p.n_threads > 4096)
        return dsc_err_set(err, DSC_ERR_ARG, "n_threads %d out of range", p.n_threads);
    if (p.n_batch > p.n_ctx) p.n_batch = p.n_ctx;
    if (p.attn != DSC_ATTN_ABSORBED && p.attn != DSC_ATTN_NAIVE)
        return dsc_err_set(err, DSC_ERR_ARG, "unknown attention mode %d", (int)p.attn);
    if ((unsigned)p.index_cache > DSC_INDEX_CACHE_FP8)
        return dsc_err_set(err, DSC_ERR_ARG, "unknown index cache type %d", (int)p.index_cache);
    if ((unsigned)p.spec > DSC_SPEC_AUTO)
        return dsc_err_set(err, DSC_ERR_ARG, "unknown speculation mode %d", (int)p.spec);
    if (p.draft_n < 0 || p.draft_n > DSC_SPEC_MAX_DRAFT)
        return dsc_err_set(err, DSC_ERR_ARG, "draft_n %d out of range 0..%d", p.draft_n,
                           DSC_SPEC_MAX_DRAFT);
    if (p.draft_vocab < 0 || p.draft_vocab > cf->vocab_size)
        return dsc_err_set(err, DSC_ERR_ARG, "draft_vocab %lld out of range 0..%lld",
                           (long long)p.draft_vocab, (long long)cf->vocab_size);
    if (p.spec_probe < 0)
        return dsc_err_set(err, DSC_ERR_ARG, "spec_probe %d < 0", p.spec_probe);
    if (p.spec == DSC_SPEC_MTP && cf->attention_nsa)
        return dsc_err_set(err, DSC_ERR_UNSUPPORTED,
                           "speculative decoding is not supported on NSA models yet (this "
                           "model has attention_type \"nsa\"); run without --spec");
    if (p.spec == DSC_SPEC_MTP && m->n_mtp == 0)
        return dsc_err_set(err, DSC_ERR_MISSING,
                           "speculative decoding with MTP needs the model's MTP module, and "
                           "this checkpoint has none (num_nextn_predict_layers = %lld%s)",
                           (long long)cf->num_nextn_predict_layers,
                           cf->num_nextn_predict_layers > 0 ? ", but no model.layers.N.eh_proj "
                                                              "in the files" : "");
    if (p.index_fp8 && cf->index_topk > 0) {
        int64_t d = cf->index_head_dim;
        if (d & (d - 1))
            return dsc_err_set(err, DSC_ERR_ARG,
                               "index_fp8 needs index_head_dim to be a power of two for the "
                               "Hadamard rotation (it is %lld)", (long long)d);
        p.index_cache = DSC_INDEX_CACHE_FP8;
    }

    dsc_ctx_t *c = calloc(1, sizeof *c);
    if (!c) return dsc_err_set(err, DSC_ERR_OOM, "cannot allocate the context");
    c->m = m;
    c->p = p;
    c->n_threads = p.n_threads > 0 ? p.n_threads : dsc_max_threads();

    int64_t B = p.n_batch, d = cf->hidden_size, H = cf->num_attention_heads;
    int64_t dc = cf->kv_lora_rank, dr = cf->qk_rope_head_dim, dn = cf->qk_nope_head_dim;
    int64_t dv = cf->v_head_dim, E = cf->n_routed_experts, K = cf->num_experts_per_tok;
    int64_t ff_max = max64(cf->intermediate_size,
                           max64(cf->n_shared_experts * cf->moe_intermediate_size,
                                 max64(cf->moe_intermediate_size, E)));
    int64_t widest = max64(max64(d, ff_max), max64(H * dv, max64(cf->q_lora_rank, dc)));
    int nsa = cf->attention_nsa;
    if (nsa) widest = max64(widest, H * cf->nsa_head_dim_v); /* o_proj's input */

    dsc_status s = dsc_kctx_new(c->n_threads, widest, &c->k, err);
    if (s != DSC_OK) {
        free(c);
        return s;
    }

    /* speculation: the MTP module's cache layers follow the main ones */
    dsc_spec *sp = &c->spec;
    sp->enabled = p.spec != DSC_SPEC_NONE && m->n_mtp > 0 && !cf->attention_nsa;
    sp->draft_n = sp->enabled ? (p.draft_n > 0 ? p.draft_n : (int)m->n_mtp) : 0;
    if (sp->draft_n > DSC_SPEC_MAX_DRAFT) sp->draft_n = DSC_SPEC_MAX_DRAFT;
    snprintf(sp->note, sizeof sp->note, "%s",
             p.spec == DSC_SPEC_NONE ? "speculation off"
             : sp->enabled      ? "speculation with the MTP module"
             : cf->attention_nsa ? "NSA model: no speculation yet, plain decoding"
                                 : "the model has no MTP module: plain decoding");
    int64_t n_cache_layers = cf->num_hidden_layers + (sp->enabled ? 1 : 0);
    int64_t N1 = sp->draft_n + 1, V = cf->vocab_size;
    sp->h_cap = B + N1;

    int need_kvb = 0;
    for (int64_t l = 0; l < cf->num_hidden_layers; l++)
        need_kvb |= m->layers[l].kv_b.dtype != DSC_F32;
    if (sp->enabled) need_kvb |= m->mtp[0].ly.kv_b.dtype != DSC_F32;
    dsc_work *w = &c->w;
    w->head_ws_floats = p.attn == DSC_ATTN_NAIVE ? dsc_mla_head_ws_floats(cf, p.n_ctx, B) : 0;
    w->mqa_rows = dsc_mla_mqa_rows(cf, B);
    int64_t qrows = cf->index_topk > 0 && w->mqa_rows < DSC_DSA_QB ? DSC_DSA_QB : w->mqa_rows;

    plan pl = {0};
    plan_add(&pl, (void **)&w->x, B * d, 4);
    plan_add(&pl, (void **)&w->xn, B * d, 4);
    plan_add(&pl, (void **)&w->qa, B * cf->q_lora_rank, 4);
    plan_add(&pl, (void **)&w->q, B * H * (dn + dr), 4);
    plan_add(&pl, (void **)&w->kva, B * (dc + dr), 4);
    plan_add(&pl, (void **)&w->attn, B * H * dv, 4);
    plan_add(&pl, (void **)&w->ffn_g, B * ff_max, 4);
    plan_add(&pl, (void **)&w->ffn_u, B * ff_max, 4);
    plan_add(&pl, (void **)&w->y, B * d, 4);
    plan_add(&pl, (void **)&w->ye, B * d, 4);
    plan_add(&pl, (void **)&w->xe, B * d, 4);
    plan_add(&pl, (void **)&w->router, B * E, 4);
    plan_add(&pl, (void **)&w->sel_score, B * E, 4);
    plan_add(&pl, (void **)&w->sel_idx, B * K, 4);
    plan_add(&pl, (void **)&w->sel_w, B * K, 4);
    plan_add(&pl, (void **)&w->tok_of, E * B, 4);
    plan_add(&pl, (void **)&w->tok_w, E * B, 4);
    plan_add(&pl, (void **)&w->n_tok, E, 8);
    plan_add(&pl, (void **)&w->group_ws, cf->n_group, 4);
    plan_add(&pl, (void **)&w->kvb, need_kvb ? H * (dn + dv) * dc : 0, 4);
    plan_add(&pl, (void **)&w->rope_cos, p.n_ctx * (dr / 2), 4);
    plan_add(&pl, (void **)&w->rope_sin, p.n_ctx * (dr / 2), 4);
    plan_add(&pl, (void **)&w->head_ws, (int64_t)c->n_threads * w->head_ws_floats, 4);
    plan_add(&pl, (void **)&w->logits, cf->vocab_size, 4);
    plan_add(&pl, (void **)&w->qfull, qrows * H * (dc + dr), 4);
    plan_add(&pl, (void **)&w->olat, qrows * H * dc, 4);
    plan_add(&pl, (void **)&w->mqa_s, p.attn == DSC_ATTN_ABSORBED ? w->mqa_rows * H * p.n_ctx : 0,
             4);
    if (cf->index_topk > 0 && !p.dense) {
        int64_t HI = cf->index_n_heads, DI = cf->index_head_dim, KI = cf->index_topk;
        int64_t QB = DSC_DSA_QB;
        w->dsa_ws_floats = dsc_dsa_ws_floats(cf, p.n_ctx);
        plan_add(&pl, (void **)&w->idx_q, B * HI * DI, 4);
        plan_add(&pl, (void **)&w->idx_k, B * DI, 4);
        plan_add(&pl, (void **)&w->idx_w, B * HI, 4);
        plan_add(&pl, (void **)&w->sel, QB * KI, 4);
        plan_add(&pl, (void **)&w->n_sel, QB, 8);
        plan_add(&pl, (void **)&w->gather, max64(KI * (dc + dr), 2 * DI), 4);
        plan_add(&pl, (void **)&w->sscore, H * KI, 4);
        plan_add(&pl, (void **)&w->iscore, QB * p.n_ctx, 4);
        plan_add(&pl, (void **)&w->dsa_ws, (int64_t)c->n_threads * w->dsa_ws_floats, 4);
    }
    plan_add(&pl, (void **)&w->tokens, p.n_ctx, 4);
    if (nsa) {
        int64_t Hkv = cf->nsa_kv_heads, nk = cf->nsa_head_dim_k, nv = cf->nsa_head_dim_v;
        int nb = cf->nsa_shared_kv ? 1 : 3;
        plan_add(&pl, (void **)&w->nsa_q, B * H * nk, 4);
        for (int b = 0; b < nb; b++) {
            plan_add(&pl, (void **)&w->nsa_k[b], B * Hkv * nk, 4);
            plan_add(&pl, (void **)&w->nsa_v[b], B * Hkv * nv, 4);
        }
        plan_add(&pl, (void **)&w->nsa_g, B * 3 * H, 4);
        plan_add(&pl, (void **)&w->nsa_o, B * H * nv, 4);
        plan_add(&pl, (void **)&w->nsa_phi, cf->num_hidden_layers * dsc_nsa_phi_floats(m), 4);
        /* the fast prefill's scratch, for any prefill onto an n_ctx state */
        dsc_config_nsa(cf, &c->nsa);
        dsc_status ns = dsc_nsa_decode_fast_prefill_bytes(&c->nsa, p.n_ctx, c->n_threads,
                                                          &w->nsa_prefill_bytes, err);
        if (ns != DSC_OK) {
            dsc_ctx_free(c);
            return ns;
        }
        plan_add(&pl, &w->nsa_prefill, (int64_t)w->nsa_prefill_bytes, 1);
    }
    if (sp->enabled) {
        plan_add(&pl, (void **)&sp->h, sp->h_cap * d, 4);
        plan_add(&pl, (void **)&sp->cat, B * 2 * d, 4);
        plan_add(&pl, (void **)&sp->g, d, 4);
        plan_add(&pl, (void **)&sp->logits, N1 * V, 4);
        plan_add(&pl, (void **)&sp->qlogits, sp->draft_n * V, 4);
        plan_add(&pl, (void **)&sp->q_ids, sp->draft_n * V, 4);
        plan_add(&pl, (void **)&sp->q_p, sp->draft_n * V, 4);
        plan_add(&pl, (void **)&sp->q_n, sp->draft_n, 8);
        plan_add(&pl, (void **)&sp->p_ids, V, 4);
        plan_add(&pl, (void **)&sp->p_p, V, 4);
        plan_add(&pl, (void **)&sp->dense, V, 4);
        plan_add(&pl, (void **)&sp->next, sp->h_cap, 4);
    }

    /* NSA layers keep no latent cache: one decode state per layer instead
       (structs then buffers, one block) */
    size_t cache_n = 0, cache_b = 0;
    int ok = !pl.overflow &&
             dsc_mul_ok((size_t)n_cache_layers, (size_t)p.n_ctx, &cache_n) &&
             dsc_mul_ok(cache_n, (size_t)(nsa ? 0 : dc + dr), &cache_n) &&
             dsc_mul_ok(cache_n, sizeof(float), &cache_b);
    size_t nsa_one = 0, nsa_head = 0, nsa_b = 0;
    if (nsa) {
        dsc_status ns = dsc_nsa_decode_sizes_f32(&c->nsa, p.n_ctx, &nsa_one, err);
        if (ns != DSC_OK) {
            dsc_ctx_free(c);
            return ns;
        }
        nsa_one = (nsa_one + ALIGN - 1) / ALIGN * ALIGN;
        nsa_head = ((size_t)n_cache_layers * sizeof(dsc_nsa_decode_f32) + ALIGN - 1) / ALIGN *
                   ALIGN;
        ok = ok && dsc_mul_ok(nsa_one, (size_t)n_cache_layers, &nsa_b) &&
             dsc_add_ok(nsa_b, nsa_head, &nsa_b);
    }
    size_t index_b = 0;
    if (ok && cf->index_topk > 0 && !p.dense)
        ok = dsc_mul_ok((size_t)n_cache_layers * (size_t)p.n_ctx,
                        (size_t)dsc_dsa_key_bytes(cf, p.index_cache), &index_b);
    if (ok) {
        c->work_mem = aligned_alloc(ALIGN, pl.total ? pl.total : ALIGN);
        c->cache = aligned_alloc(ALIGN, cache_b ? (cache_b + ALIGN - 1) / ALIGN * ALIGN : ALIGN);
        if (index_b) c->index_cache = aligned_alloc(ALIGN, (index_b + ALIGN - 1) / ALIGN * ALIGN);
        if (nsa_b) c->nsa_mem = aligned_alloc(ALIGN, nsa_b);
    }
    if (!ok || !c->work_mem || !c->cache || (index_b && !c->index_cache) ||
        (nsa_b && !c->nsa_mem)) {
        dsc_ctx_free(c);
        return dsc_err_set(err, DSC_ERR_OOM,
                           "cannot allocate the context: %zu bytes of work buffers + %zu "
                           "bytes of %s cache (n_ctx %lld, n_batch %lld)",
                           pl.total, nsa ? nsa_b : cache_b, nsa ? "NSA decode" : "latent",
                           (long long)p.n_ctx, (long long)p.n_batch);
    }
    if (nsa) {
        c->nsa_st = c->nsa_mem;
        for (int64_t l = 0; l < n_cache_layers; l++) {
            char *mem = (char *)c->nsa_mem + nsa_head + (size_t)l * nsa_one;
            dsc_status ns = dsc_nsa_decode_init_f32(&c->nsa_st[l], &c->nsa, p.n_ctx, mem,
                                                    nsa_one, err);
            if (ns != DSC_OK) {
                dsc_ctx_free(c);
                return ns;
            }
        }
    }
    c->work_bytes = (int64_t)pl.total + dsc_kctx_bytes(c->k);
    c->cache_bytes = (int64_t)(cache_b + index_b + nsa_b);
    char *at = c->work_mem;
    for (int i = 0; i < pl.n; i++) {
        *pl.slot[i] = pl.bytes[i] ? at : NULL;
        at += pl.bytes[i];
    }

    dsc_rope_params rp;
    dsc_config_rope_params(cf, &rp);
    dsc_rope_tables(&rp, p.n_ctx, w->rope_cos, w->rope_sin);
    if (nsa) dsc_nsa_phi_load(c);
    if (sp->enabled) memset(sp->dense, 0, (size_t)V * sizeof *sp->dense);
    c->pending = -1;
    *out = c;
    return DSC_OK;
}

void dsc_ctx_free(dsc_ctx_t *c) {
    if (!c) return;
    dsc_kctx_free(c->k);
    free(c->work_mem);
    free(c->cache);
    free(c->index_cache);
    free(c->nsa_mem);
    free(c);
}

int64_t dsc_ctx_cache_bytes(const dsc_ctx_t *c) { return c->cache_bytes; }
int64_t dsc_ctx_work_bytes(const dsc_ctx_t *c) { return c->work_bytes; }

static void add_rows(float *x, const float *y, int64_t count) {
    for (int64_t i = 0; i < count; i++) x[i] += y[i];
}

dsc_status dsc_forward_check(const dsc_ctx_t *c, const int32_t *ids, int64_t n, int64_t pos0,
                             dsc_err *err) {
    const dsc_config *cf = &c->m->cfg;
    if (!ids || n < 1 || n > c->p.n_batch)
        return dsc_err_set(err, DSC_ERR_ARG, "%lld tokens in one call; expected 1..%lld "
                           "(n_batch)", (long long)n, (long long)c->p.n_batch);
    if (pos0 > c->n_past)
        return dsc_err_set(err, DSC_ERR_ARG,
                           "position %lld would leave a gap: the cache holds %lld positions",
                           (long long)pos0, (long long)c->n_past);
    if (pos0 < 0 || pos0 + n > c->p.n_ctx)
        return dsc_err_set(err, DSC_ERR_ARG,
                           "positions %lld..%lld do not fit the context of %lld", (long long)pos0,
                           (long long)(pos0 + n - 1), (long long)c->p.n_ctx);
    for (int64_t t = 0; t < n; t++)
        if (ids[t] < 0 || ids[t] >= cf->vocab_size)
            return dsc_err_set(err, DSC_ERR_ARG,
                               "token id %d at index %lld is out of range [0, %lld)", ids[t],
                               (long long)t, (long long)cf->vocab_size);
    return DSC_OK;
}

void dsc_block_forward(dsc_ctx_t *c, const dsc_layer *ly, int64_t l, int64_t n, int64_t pos0) {
    dsc_work *w = &c->w;
    int64_t d = c->m->cfg.hidden_size;
    float eps = (float)c->m->cfg.rms_norm_eps;
    /* h += MLA(RMSNorm_in(h)); h += FFN(RMSNorm_post(h)) */
    dsc_k_rmsnorm(c->k, w->xn, w->x, &ly->attn_norm, n, d, eps);
    if (c->m->cfg.attention_nsa)
        dsc_nsa_attn_forward(c, ly, l, n, pos0);
    else
        dsc_mla_forward(c, ly, l, n, pos0);
    add_rows(w->x, w->y, n * d);
    dsc_k_rmsnorm(c->k, w->xn, w->x, &ly->ffn_norm, n, d, eps);
    dsc_ffn_forward(c, ly, n);
    add_rows(w->x, w->y, n * d);
}

/* Validate a call, then run every layer over the n tokens; leaves the
   final hidden states (before the final norm) in w->x. */
static dsc_status run_layers(dsc_ctx_t *c, const int32_t *ids, int64_t n, int64_t pos0,
                             dsc_err *err) {
    const dsc_model_t *m = c->m;
    const dsc_config *cf = &m->cfg;
    int64_t d = cf->hidden_size;
    DSC_TRY(dsc_forward_check(c, ids, n, pos0, err));
    dsc_work *w = &c->w;
    /* h = Emb(ids)                                                 (n, d) */
    for (int64_t t = 0; t < n; t++) dsc_wmat_row(&m->embed, ids[t], 0, d, w->x + t * d);

    /* a rewrite of cached positions invalidates the MTP rows from there */
    dsc_spec *sp = &c->spec;
    if (pos0 < sp->mtp_n) sp->mtp_n = pos0;
    if (pos0 < sp->mtp_n + sp->n_h) sp->n_h = pos0 - sp->mtp_n;
    memcpy(w->tokens + pos0, ids, (size_t)n * sizeof *ids);
    c->n_past = pos0 + n;
    c->pending = -1;
    for (int64_t l = 0; l < cf->num_hidden_layers; l++)
        dsc_block_forward(c, &m->layers[l], l, n, pos0);
    return DSC_OK;
}

dsc_status dsc_forward_hidden(dsc_ctx_t *c, const int32_t *ids, int64_t n, int64_t pos0,
                              float *hn, dsc_err *err) {
    DSC_TRY(run_layers(c, ids, n, pos0, err));
    const dsc_model_t *m = c->m;
    dsc_k_rmsnorm(c->k, hn, c->w.x, &m->final_norm, n, m->cfg.hidden_size,
                  (float)m->cfg.rms_norm_eps);
    return DSC_OK;
}

/* logits = lm_head(RMSNorm_final(h[r0 .. r0+rows)))                 (rows, V) */
static void head(dsc_ctx_t *c, int64_t r0, int64_t rows, float *logits) {
    const dsc_model_t *m = c->m;
    int64_t d = m->cfg.hidden_size;
    dsc_k_rmsnorm(c->k, c->w.xn, c->w.x + r0 * d, &m->final_norm, rows, d,
                  (float)m->cfg.rms_norm_eps);
    dsc_k_matmul(c->k, logits, c->w.xn, &m->lm_head, rows);
}

dsc_status dsc_forward(dsc_ctx_t *c, const int32_t *ids, int64_t n, int64_t pos0,
                       float *logits, dsc_err *err) {
    DSC_TRY(run_layers(c, ids, n, pos0, err));
    if (logits) head(c, 0, n, logits);
    return DSC_OK;
}

dsc_status dsc_forward_last(dsc_ctx_t *c, const int32_t *ids, int64_t n, int64_t pos0,
                            float *logits, dsc_err *err) {
    DSC_TRY(run_layers(c, ids, n, pos0, err));
    if (logits) head(c, n - 1, 1, logits); /* only the last row */
    return DSC_OK;
}

int64_t dsc_ctx_size(const dsc_ctx_t *c) { return c->p.n_ctx; }
int64_t dsc_ctx_n_past(const dsc_ctx_t *c) { return c->n_past; }
const int32_t *dsc_ctx_tokens(const dsc_ctx_t *c) { return c->w.tokens; }
void dsc_ctx_reset(dsc_ctx_t *c) {
    c->n_past = 0;
    c->pending = -1;
    c->spec.mtp_n = 0;
    c->spec.n_h = 0;
    if (c->nsa_st)
        for (int64_t l = 0; l < c->m->cfg.num_hidden_layers; l++)
            dsc_nsa_decode_reset_f32(&c->nsa_st[l]);
}
int dsc_ctx_spec_enabled(const dsc_ctx_t *c) { return c->spec.enabled; }
int dsc_ctx_spec_draft_n(const dsc_ctx_t *c) { return c->spec.draft_n; }
const char *dsc_ctx_spec_note(const dsc_ctx_t *c) { return c->spec.note; }
int64_t dsc_ctx_batch(const dsc_ctx_t *c) { return c->p.n_batch; }
