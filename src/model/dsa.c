/*
 * dsa.c - DeepSeek Sparse Attention (V3.2-Exp §1; spec §4).
 *
 * The lightning indexer, per layer:
 *   k_s   = RoPE_half(LayerNorm(W_k x_s))              one D_I key per token, cached
 *   q_t,j = RoPE_half(W_qb c_q,t)_j                    H_I heads of D_I
 *   w_t,j = (W_w x_t)_j * H_I^-1/2 * D_I^-1/2
 *   I(t,s) = sum_j w_t,j * ReLU(q_t,j . k_s)           for s <= t
 * RoPE here pairs (i, i + dr/2) on the FIRST dr dims of a head (MLA uses
 * interleaved pairs on the last dr dims). S_t = the top-k s by I(t,s), with
 * k = min(index_topk, t + 1), ties to the lower position; shared by heads.
 *
 * Sparse absorbed MLA then attends only to S_t: the selected latent rows
 * [c ; k_pe] are gathered once per query and all H heads score them in one
 * GEMM (the MQA form of MLA), so the attention costs O(k) per query however
 * long the context. When no query of a call sees more than index_topk keys
 * the selection keeps everything and the dense path runs instead: the two
 * are then identical by construction.
 *
 * Work is done in blocks of DSC_DSA_QB queries; indexer scores are computed
 * key block by key block (KB keys: read in place from an fp32 cache,
 * dequantised into fp32 scratch from BF16 or FP8), in parallel over key
 * blocks, so decode with a long context uses every thread.
 */
#include <math.h>
#include <string.h>

#include "model/model.h"
#include "util/util.h"

#define KB 256 /* keys per indexer scoring block */
#define INDEX_NORM_EPS 1e-6f

/* bytes of one cached key of d dims: fp32 or BF16 values, or FP8 codes
   and their fp32 scale */
static int64_t key_bytes(int64_t d, dsc_index_cache_type t) {
    return t == DSC_INDEX_CACHE_F32 ? 4 * d : t == DSC_INDEX_CACHE_BF16 ? 2 * d : d + 4;
}

int64_t dsc_dsa_key_bytes(const dsc_config *cf, dsc_index_cache_type t) {
    return key_bytes(cf->index_head_dim, t);
}

int64_t dsc_dsa_ws_floats(const dsc_config *cf, int64_t n_ctx) {
    return DSC_DSA_QB * cf->index_n_heads * KB + KB * cf->index_head_dim + n_ctx;
}

int dsc_dsa_sparse(const dsc_ctx_t *c, int64_t n, int64_t pos0) {
    return c->m->cfg.index_topk > 0 && !c->p.dense &&
           (pos0 + n > c->m->cfg.index_topk || c->force_sparse);
}

/* ---- the official FP8 scoring option ---- */

/* In-place fast Walsh-Hadamard transform of n = 2^m values in Sylvester
   order, scaled by n^-1/2 so that it is orthonormal: q.k is unchanged in
   exact arithmetic, outliers are spread before FP8 quantisation. */
void dsc_dsa_hadamard(float *v, int64_t n) {
    for (int64_t h = 1; h < n; h *= 2)
        for (int64_t i = 0; i < n; i += 2 * h)
            for (int64_t j = i; j < i + h; j++) {
                float a = v[j], b = v[j + h];
                v[j] = a + b;
                v[j + h] = a - b;
            }
    float s = (float)(1.0 / sqrt((double)n));
    for (int64_t i = 0; i < n; i++) v[i] *= s;
}

/* Per-block FP8 scale: max(amax, 1e-4) / 448, rounded up to a power of two
   when the checkpoint's scale format is ue8m0 (exponent-only scales). */
float dsc_dsa_fp8_scale(const float *v, int64_t n, int ue8m0) {
    float amax = 1e-4f;
    for (int64_t i = 0; i < n; i++) amax = fabsf(v[i]) > amax ? fabsf(v[i]) : amax;
    float scale = amax / 448.0f;
    return ue8m0 ? exp2f(ceilf(log2f(scale))) : scale;
}

/* ---- the key cache ---- */

static unsigned char *key_row(const dsc_ctx_t *c, int64_t l, int64_t pos) {
    int64_t kb = dsc_dsa_key_bytes(&c->m->cfg, c->p.index_cache);
    return (unsigned char *)c->index_cache + ((size_t)l * (size_t)c->p.n_ctx + (size_t)pos) * (size_t)kb;
}

static void store_key(const dsc_ctx_t *c, int64_t l, int64_t pos, const float *k) {
    int64_t d = c->m->cfg.index_head_dim;
    unsigned char *row = key_row(c, l, pos);
    switch (c->p.index_cache) {
    case DSC_INDEX_CACHE_F32:
        memcpy(row, k, (size_t)d * sizeof *k);
        break;
    case DSC_INDEX_CACHE_BF16:
        for (int64_t i = 0; i < d; i++) {
            uint16_t h = dsc_f32_to_bf16(k[i]);
            memcpy(row + 2 * i, &h, 2);
        }
        break;
    case DSC_INDEX_CACHE_FP8: {
        /* one scale per token (the official demo's rule) */
        float scale = dsc_dsa_fp8_scale(k, d, c->m->cfg.scale_ue8m0);
        for (int64_t i = 0; i < d; i++) row[i] = dsc_f32_to_e4m3(k[i] / scale);
        memcpy(row + d, &scale, sizeof scale);
        break;
    }
    }
}

const float *dsc_dsa_block_keys(dsc_index_cache_type t, const unsigned char *rows, int64_t n,
                               int64_t d, float *scratch) {
    if (t == DSC_INDEX_CACHE_F32) return (const float *)rows;
    int64_t kb = key_bytes(d, t);
    /* FP8 keys: a 256-entry table per block of keys turns each decode into
       one load (a block holds up to KB * D_I codes) */
    float lut[256];
    if (t == DSC_INDEX_CACHE_FP8)
        for (int b = 0; b < 256; b++) lut[b] = dsc_e4m3_to_f32((uint8_t)b);
    for (int64_t s = 0; s < n; s++) {
        const unsigned char *row = rows + s * kb;
        float *o = scratch + s * d;
        if (t == DSC_INDEX_CACHE_BF16) {
            for (int64_t i = 0; i < d; i++) {
                uint16_t h;
                memcpy(&h, row + 2 * i, 2);
                o[i] = dsc_bf16_to_f32(h);
            }
        } else {
            float scale;
            memcpy(&scale, row + d, sizeof scale);
            for (int64_t i = 0; i < d; i++) o[i] = lut[row[i]] * scale;
        }
    }
    return scratch;
}

/* LayerNorm with weight and bias over d values, in place. */
static void layer_norm(float *x, const dsc_wmat *w, const dsc_wmat *b, int64_t d, float *tmp) {
    double mean = 0, var = 0;
    for (int64_t i = 0; i < d; i++) mean += x[i];
    mean /= (double)d;
    for (int64_t i = 0; i < d; i++) var += (x[i] - mean) * (x[i] - mean);
    var /= (double)d;
    float inv = (float)(1.0 / sqrt(var + INDEX_NORM_EPS));
    dsc_wmat_row(w, 0, 0, d, tmp);
    dsc_wmat_row(b, 0, 0, d, tmp + d);
    for (int64_t i = 0; i < d; i++) x[i] = (float)(x[i] - mean) * inv * tmp[i] + tmp[d + i];
}

void dsc_dsa_keys(dsc_ctx_t *c, const dsc_layer *ly, int64_t l, int64_t n, int64_t pos0) {
    const dsc_config *cf = &c->m->cfg;
    dsc_work *w = &c->w;
    int64_t DI = cf->index_head_dim, dr = cf->qk_rope_head_dim;
    /* k = RoPE_half(LayerNorm(W_k x))                               (n, D_I) */
    dsc_k_matmul(c->k, w->idx_k, w->xn, &ly->idx_wk, n);
    float *tmp = w->gather; /* 2*D_I floats of scratch: not in use yet */
    for (int64_t t = 0; t < n; t++) {
        int64_t p = pos0 + t;
        float *k = w->idx_k + t * DI;
        layer_norm(k, &ly->idx_k_norm_w, &ly->idx_k_norm_b, DI, tmp);
        dsc_ref_rope(k, dr, w->rope_cos + p * (dr / 2), w->rope_sin + p * (dr / 2), 0);
        if (c->p.index_fp8) dsc_dsa_hadamard(k, DI); /* then FP8 in store_key */
        store_key(c, l, p, k);
    }
}

/* Indexer queries and weights for the n new tokens. */
static void index_queries(dsc_ctx_t *c, const dsc_layer *ly, int64_t n, int64_t pos0) {
    const dsc_config *cf = &c->m->cfg;
    dsc_work *w = &c->w;
    int64_t HI = cf->index_n_heads, DI = cf->index_head_dim, dr = cf->qk_rope_head_dim;
    /* q = RoPE_half(W_qb c_q) per head; w = W_w x * H_I^-1/2 * D_I^-1/2 */
    dsc_k_matmul(c->k, w->idx_q, w->qa, &ly->idx_wq_b, n);
    dsc_k_matmul(c->k, w->idx_w, w->xn, &ly->idx_weights, n);
    float s = (float)(1.0 / sqrt((double)HI) / sqrt((double)DI));
    for (int64_t t = 0; t < n; t++) {
        int64_t p = pos0 + t;
        for (int64_t j = 0; j < HI; j++) {
            float *q = w->idx_q + (t * HI + j) * DI;
            dsc_ref_rope(q, dr, w->rope_cos + p * (dr / 2), w->rope_sin + p * (dr / 2), 0);
            if (c->p.index_fp8) {
                /* Hadamard, then e4m3 with one scale per (token, head); the
                   dequantised values are what the FP8 kernel multiplies */
                dsc_dsa_hadamard(q, DI);
                float sc = dsc_dsa_fp8_scale(q, DI, cf->scale_ue8m0);
                for (int64_t i = 0; i < DI; i++) q[i] = dsc_e4m3_to_f32(dsc_f32_to_e4m3(q[i] / sc)) * sc;
            }
        }
        for (int64_t j = 0; j < HI; j++) w->idx_w[t * HI + j] *= s;
    }
}

/* I(t, s) for queries [t0, t0 + nq) of this call over their visible keys,
   into w->iscore rows of n_ctx; then each query's top-k into w->sel. */
static void index_select(dsc_ctx_t *c, int64_t l, int64_t t0, int64_t nq, int64_t pos0) {
    const dsc_config *cf = &c->m->cfg;
    dsc_work *w = &c->w;
    int64_t HI = cf->index_n_heads, DI = cf->index_head_dim, n_ctx = c->p.n_ctx;
    int64_t lk = pos0 + t0 + nq; /* keys the last query of the block sees */
    int64_t nblk = (lk + KB - 1) / KB;
    const float *q = w->idx_q + t0 * HI * DI;
#pragma omp parallel for num_threads(c->n_threads) schedule(dynamic, 1)
    for (int64_t b = 0; b < nblk; b++) {
        float *ws = w->dsa_ws + (int64_t)dsc_thread_id() * w->dsa_ws_floats;
        float *T = ws;                           /* (nq*H_I, KB) */
        float *K = T + DSC_DSA_QB * HI * KB;     /* (KB, D_I)    */
        int64_t s0 = b * KB, ns = lk - s0 < KB ? lk - s0 : KB;
        const float *keys = dsc_dsa_block_keys(c->p.index_cache, key_row(c, l, s0), ns, DI, K);
        /* T = Q K^T: every head of every query against the block's keys */
        dsc_k_sgemm_nt(c->k, nq * HI, ns, DI, q, DI, keys, DI, T, ns, 0);
        for (int64_t t = 0; t < nq; t++) {
            int64_t p = pos0 + t0 + t;
            const float *wt = w->idx_w + (t0 + t) * HI;
            float *restrict out = w->iscore + t * n_ctx + s0;
            /* sum over heads of w_j * ReLU(q_j . k_s): heads outer, keys
               inner and branch-free, so the key loop vectorizes (the signs
               of the dot products are random: a branch per term mispredicts
               half the time) */
            for (int64_t s = 0; s < ns; s++) out[s] = 0.0f;
            for (int64_t j = 0; j < HI; j++) {
                const float *restrict row = T + (t * HI + j) * ns;
                float wj = wt[j];
#pragma omp simd
                for (int64_t s = 0; s < ns; s++) out[s] += wj * (row[s] > 0.0f ? row[s] : 0.0f);
            }
            /* causal mask before the top-k */
            for (int64_t s = p + 1 - s0 > 0 ? p + 1 - s0 : 0; s < ns; s++) out[s] = -INFINITY;
        }
    }
#pragma omp parallel for num_threads(c->n_threads) schedule(dynamic, 1)
    for (int64_t t = 0; t < nq; t++) {
        float *ws = w->dsa_ws + (int64_t)dsc_thread_id() * w->dsa_ws_floats;
        float *scratch = ws + DSC_DSA_QB * HI * KB + KB * DI;
        int64_t visible = pos0 + t0 + t + 1;
        w->n_sel[t] = dsc_k_topk_set(w->iscore + t * n_ctx, visible, cf->index_topk,
                                     w->sel + t * cf->index_topk, scratch);
    }
    if (c->dbg_scores && c->dbg_layer == l)
        for (int64_t t = 0; t < nq; t++) {
            int64_t K = cf->index_topk, visible = pos0 + t0 + t + 1;
            float *ds = c->dbg_scores + (t0 + t) * n_ctx;
            for (int64_t s = 0; s < n_ctx; s++)
                ds[s] = s < visible ? w->iscore[t * n_ctx + s] : -INFINITY;
            for (int64_t j = 0; j < K; j++)
                c->dbg_sel[(t0 + t) * K + j] = j < w->n_sel[t] ? w->sel[t * K + j] : -1;
        }
}

void dsc_dsa_attend(dsc_ctx_t *c, const dsc_layer *ly, int64_t l, int64_t n, int64_t pos0,
                    const float *kvb) {
    const dsc_config *cf = &c->m->cfg;
    dsc_work *w = &c->w;
    dsc_kctx *k = c->k;
    int64_t H = cf->num_attention_heads, dc = cf->kv_lora_rank, dr = cf->qk_rope_head_dim;
    int64_t ldkv = dc + dr, K = cf->index_topk;
    const float *cache_l = c->cache + l * c->p.n_ctx * ldkv;
    float scale = (float)cf->softmax_scale;

    index_queries(c, ly, n, pos0);
    for (int64_t t0 = 0; t0 < n; t0 += DSC_DSA_QB) {
        int64_t rows = n - t0 < DSC_DSA_QB ? n - t0 : DSC_DSA_QB;
        index_select(c, l, t0, rows, pos0);

        /* absorbed queries [q_nope W^UK_i ; q_pe_i] for every head   (rows, H, dc+dr) */
        dsc_mla_absorb_q(c, ly, kvb, t0, rows);

        /* per query: gather the selected rows, all heads score them at once */
        for (int64_t t = 0; t < rows; t++) {
            int64_t ks = w->n_sel[t];
            const int32_t *sel = w->sel + t * K;
            for (int64_t j = 0; j < ks; j++)
                memcpy(w->gather + j * ldkv, cache_l + (int64_t)sel[j] * ldkv,
                       (size_t)ldkv * sizeof(float));
            /* S = s * Q G^T (H, ks); softmax; o_lat = S G[:, :dc] (H, dc) */
            dsc_k_sgemm_nt(k, H, ks, ldkv, w->qfull + t * H * ldkv, ldkv, w->gather, ldkv,
                           w->sscore, ks, 0);
            for (int64_t e = 0; e < H * ks; e++) w->sscore[e] *= scale;
            dsc_k_softmax(k, w->sscore, H, ks);
            dsc_k_sgemm_nn(k, H, dc, ks, w->sscore, ks, w->gather, ldkv, w->olat + t * H * dc, dc,
                           0);
        }

        /* o_i = W^UV_i o_lat_i                                          (rows, H*dv) */
        dsc_mla_absorb_out(c, ly, kvb, t0, rows);
    }
}
