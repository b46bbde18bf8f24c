/*
 * mla.c - Multi-head Latent Attention (DeepSeek-V2 §2.1, V3 §2.1.1).
 *
 * Per token t (x = input_layernorm(h)):
 *   c_q   = RMSNorm(W^DQ x)            q = W^UQ c_q          (V2-Lite: q = W^Q x)
 *   [c ; k_pe] = W^DKV x ; c = RMSNorm(c) ; k_pe = RoPE(k_pe)   -> latent cache
 *   head i: q_i = [q_nope_i ; RoPE(q_pe_i)]
 * The cache holds only (dc + dr) values per token per layer. Two ways to
 * attend over it, which must agree (tests check that):
 *   naive    : K_i = C W^UK_i^T, V_i = C W^UV_i^T decompressed per head, then
 *              softmax(s (q_nope K_i^T + q_pe Kpe^T)) V_i
 *   absorbed : q_lat_i = q_nope_i W^UK_i (a dc-vector), then
 *              o_lat = softmax(s (q_lat C^T + q_pe Kpe^T)) C, o_i = W^UV_i o_lat
 * s = d_qk^-1/2 * m^2 (config.c). The absorbed form runs as MQA: all heads
 * of a block of queries score the shared latent rows in one GEMM. The naive
 * form runs heads in parallel with queries in blocks of QB rows, so no score
 * buffer is ever T x context.
 */
#include <math.h>
#include <string.h>

#include "model/model.h"
#include "util/util.h"

#define QB 64 /* query rows per attention block */

/* q_a_layernorm and kv_a_layernorm use eps 1e-6 whatever rms_norm_eps says
   (transformers hard-codes it; the official demo uses 1e-6 everywhere). */
#define DSC_LATENT_NORM_EPS 1e-6f

/* Up to this many queries per call (decode, short drafts), absorbed
   attention applies W^UK / W^UV from kv_b_proj's stored dtype row by row
   instead of dequantising the whole matrix first. */
#define DSC_MLA_STREAM_ROWS 4

int64_t dsc_mla_head_ws_floats(const dsc_config *c, int64_t n_ctx, int64_t n_batch) {
    int64_t qb = n_batch < QB ? n_batch : QB;
    return qb * n_ctx + n_ctx * (c->qk_nope_head_dim + c->v_head_dim);
}

int64_t dsc_mla_mqa_rows(const dsc_config *c, int64_t n_batch) {
    /* about 256 (query, head) rows per score GEMM: big enough for the GEMM,
       small enough that the score block stays (rows*H, n_ctx) */
    int64_t r = 256 / c->num_attention_heads;
    r = r < 1 ? 1 : r > DSC_DSA_QB ? DSC_DSA_QB : r;
    return r < n_batch ? r : n_batch;
}

/* Scale scores of a query block, mask the future, softmax each row.
   Row r is the query at absolute position p0 + r; it sees keys 0..p0+r. */
static void scale_mask_softmax(float *s, int64_t rows, int64_t lk, int64_t p0, float scale) {
    for (int64_t r = 0; r < rows; r++) {
        float *row = s + r * lk;
        int64_t visible = p0 + r + 1;
        for (int64_t j = 0; j < visible; j++) row[j] *= scale;
        for (int64_t j = visible; j < lk; j++) row[j] = -INFINITY;
    }
    dsc_k_softmax(NULL, s, rows, lk);
}

/* Naive MLA over queries [0, n) at positions pos0.., per head i (a work
   item; its scratch is the running thread's slot of head_ws). */
typedef struct {
    dsc_ctx_t *c;
    const float *cache_l, *kvb;
    int64_t n, pos0;
} naive_job;

/* Head i: K_i and V_i are decompressed from the cached latents, then
   ordinary causal attention. Writes attn[t][i*dv .. (i+1)*dv). */
static void attend_head_naive(void *arg, int64_t i) {
    const naive_job *j = arg;
    dsc_ctx_t *c = j->c;
    const float *cache_l = j->cache_l, *kvb = j->kvb;
    int64_t n = j->n, pos0 = j->pos0;
    float *ws = c->w.head_ws + (int64_t)dsc_thread_id() * c->w.head_ws_floats;
    const dsc_config *cf = &c->m->cfg;
    dsc_kctx *k = c->k;
    int64_t H = cf->num_attention_heads, dc = cf->kv_lora_rank, dr = cf->qk_rope_head_dim;
    int64_t dn = cf->qk_nope_head_dim, dv = cf->v_head_dim, dqk = dn + dr;
    int64_t ldq = H * dqk, ldkv = dc + dr, ldo = H * dv;
    int64_t qb = n < QB ? n : QB;
    const float *w_uk = kvb + i * (dn + dv) * dc; /* (dn, dc) */
    const float *w_uv = w_uk + dn * dc;           /* (dv, dc) */
    float scale = (float)cf->softmax_scale;

    float *S = ws;                    /* (qb, n_ctx) scores   */
    float *K = S + qb * c->p.n_ctx;   /* (lk, dn) then V (lk, dv) */
    int64_t lk_all = pos0 + n;
    float *V = K + lk_all * dn;

    /* K_i = C W^UK_i^T, V_i = C W^UV_i^T for every visible position */
    dsc_k_sgemm_nt(k, lk_all, dn, dc, cache_l, ldkv, w_uk, dc, K, dn, 0);
    dsc_k_sgemm_nt(k, lk_all, dv, dc, cache_l, ldkv, w_uv, dc, V, dv, 0);
    for (int64_t t0 = 0; t0 < n; t0 += qb) {
        int64_t rows = n - t0 < qb ? n - t0 : qb;
        int64_t lk = pos0 + t0 + rows; /* keys the last row of the block sees */
        const float *q_nope = c->w.q + t0 * ldq + i * dqk;
        const float *q_pe = q_nope + dn;
        /* S = q_nope K^T + q_pe Kpe^T ; out = softmax(S) V */
        dsc_k_sgemm_nt(k, rows, lk, dn, q_nope, ldq, K, dn, S, lk, 0);
        dsc_k_sgemm_nt(k, rows, lk, dr, q_pe, ldq, cache_l + dc, ldkv, S, lk, 1);
        scale_mask_softmax(S, rows, lk, pos0 + t0, scale);
        dsc_k_sgemm_nn(k, rows, dv, lk, S, lk, V, dv, c->w.attn + t0 * ldo + i * dv, ldo, 0);
    }
}

/* One absorption call: rows queries from t0, per head i (a work item). */
typedef struct {
    dsc_ctx_t *c;
    const dsc_layer *ly;
    const float *kvb;
    int64_t t0, rows;
} absorb_job;

static void absorb_q_head(void *arg, int64_t i) {
    const absorb_job *j = arg;
    const dsc_config *cf = &j->c->m->cfg;
    dsc_work *w = &j->c->w;
    int64_t H = cf->num_attention_heads, dc = cf->kv_lora_rank, dr = cf->qk_rope_head_dim;
    int64_t dn = cf->qk_nope_head_dim, dv = cf->v_head_dim, ldq = H * (dn + dr);
    int64_t ldkv = dc + dr, rows = j->rows;
    const float *q_nope = w->q + j->t0 * ldq + i * (dn + dr);
    float *dst = w->qfull + i * ldkv;
    if (j->kvb)
        dsc_k_sgemm_nn(j->c->k, rows, dc, dn, q_nope, ldq, j->kvb + i * (dn + dv) * dc, dc, dst,
                       H * ldkv, 0);
    else
        dsc_k_matvec_t(j->c->k, &j->ly->kv_b, i * (dn + dv), dn, q_nope, ldq, rows, dst,
                       H * ldkv);
    for (int64_t t = 0; t < rows; t++)
        memcpy(dst + t * H * ldkv + dc, q_nope + t * ldq + dn, (size_t)dr * sizeof(float));
}

static void absorb_out_head(void *arg, int64_t i) {
    const absorb_job *j = arg;
    const dsc_config *cf = &j->c->m->cfg;
    dsc_work *w = &j->c->w;
    int64_t H = cf->num_attention_heads, dc = cf->kv_lora_rank;
    int64_t dn = cf->qk_nope_head_dim, dv = cf->v_head_dim, ldo = H * dv;
    int64_t uv = i * (dn + dv) + dn;
    float *out = w->attn + j->t0 * ldo + i * dv;
    if (j->kvb) {
        dsc_k_sgemm_nt(j->c->k, j->rows, dv, dc, w->olat + i * dc, H * dc, j->kvb + uv * dc, dc,
                       out, ldo, 0);
    } else {
        for (int64_t t = 0; t < j->rows; t++)
            dsc_k_matvec_rows(j->c->k, &j->ly->kv_b, uv, uv + dv, w->olat + (t * H + i) * dc, 1,
                              out + t * ldo, ldo);
    }
}

/* Threads for the per-head absorption: H heads of rows x dc x d_head
   multiply-adds (a decode step of a small model is worth no fork). */
static int absorb_threads(const dsc_ctx_t *c, int64_t rows, int64_t d_head) {
    const dsc_config *cf = &c->m->cfg;
    return dsc_kctx_threads_for(c->k, (double)cf->num_attention_heads * (double)rows *
                                          (double)cf->kv_lora_rank * (double)d_head);
}

void dsc_mla_absorb_q(dsc_ctx_t *c, const dsc_layer *ly, const float *kvb, int64_t t0,
                      int64_t rows) {
    absorb_job j = {c, ly, kvb, t0, rows};
    dsc_parallel_for(absorb_threads(c, rows, c->m->cfg.qk_nope_head_dim),
                     c->m->cfg.num_attention_heads, DSC_SCHED_DYNAMIC, absorb_q_head, &j);
}

void dsc_mla_absorb_out(dsc_ctx_t *c, const dsc_layer *ly, const float *kvb, int64_t t0,
                        int64_t rows) {
    absorb_job j = {c, ly, kvb, t0, rows};
    dsc_parallel_for(absorb_threads(c, rows, c->m->cfg.v_head_dim),
                     c->m->cfg.num_attention_heads, DSC_SCHED_DYNAMIC, absorb_out_head, &j);
}

/* Absorbed MLA in its MQA form: all heads of a block of queries score the
   shared latent rows in one GEMM, so each cached row is read once per block
   (not once per head):
     S[(t,i)][s] = s * [q_lat_i(t) ; q_pe_i(t)] . [c_s ; k_pe_s]
     o_lat(t,i) = softmax(S[(t,i)]) C                                   */
static void attend_absorbed(dsc_ctx_t *c, const dsc_layer *ly, const float *cache_l,
                            const float *kvb, int64_t n, int64_t pos0) {
    const dsc_config *cf = &c->m->cfg;
    dsc_work *w = &c->w;
    int64_t H = cf->num_attention_heads, dc = cf->kv_lora_rank, ldkv = dc + cf->qk_rope_head_dim;
    float scale = (float)cf->softmax_scale;
    for (int64_t t0 = 0; t0 < n; t0 += w->mqa_rows) {
        int64_t rows = n - t0 < w->mqa_rows ? n - t0 : w->mqa_rows;
        int64_t lk = pos0 + t0 + rows;
        dsc_mla_absorb_q(c, ly, kvb, t0, rows);
        dsc_k_sgemm_nt(c->k, rows * H, lk, ldkv, w->qfull, ldkv, cache_l, ldkv, w->mqa_s, lk, 0);
        /* row (t, i) sees keys 0 .. pos0 + t0 + t */
        for (int64_t t = 0; t < rows; t++)
            for (int64_t i = 0; i < H; i++) {
                float *row = w->mqa_s + (t * H + i) * lk;
                int64_t visible = pos0 + t0 + t + 1;
                for (int64_t j = 0; j < visible; j++) row[j] *= scale;
                for (int64_t j = visible; j < lk; j++) row[j] = -INFINITY;
            }
        dsc_k_softmax(c->k, w->mqa_s, rows * H, lk);
        dsc_k_sgemm_nn(c->k, rows * H, dc, lk, w->mqa_s, lk, cache_l, ldkv, w->olat, dc, 0);
        dsc_mla_absorb_out(c, ly, kvb, t0, rows);
    }
}

/* kv_b as fp32 (H*(dn+dv), dc): the mapped data when stored F32, otherwise
   dequantised into the context's buffer (once per layer per call). */
typedef struct {
    const dsc_wmat *w;
    float *dst;
} rows_job;

static void kv_b_row(void *arg, int64_t r) {
    const rows_job *j = arg;
    dsc_wmat_row(j->w, r, 0, j->w->cols, j->dst + r * j->w->cols);
}

static const float *kv_b_f32(dsc_ctx_t *c, const dsc_wmat *w) {
    if (w->dtype == DSC_F32) return w->data;
    rows_job j = {w, c->w.kvb};
    dsc_parallel_for(c->n_threads, w->rows, DSC_SCHED_BLOCKS, kv_b_row, &j);
    return j.dst;
}

void dsc_mla_forward(dsc_ctx_t *c, const dsc_layer *ly, int64_t l, int64_t n, int64_t pos0) {
    const dsc_config *cf = &c->m->cfg;
    dsc_work *w = &c->w;
    dsc_kctx *k = c->k;
    int64_t H = cf->num_attention_heads, dc = cf->kv_lora_rank, dr = cf->qk_rope_head_dim;
    int64_t dqk = cf->qk_nope_head_dim + dr;
    int64_t ldkv = dc + dr;
    float *cache_l = c->cache + l * c->p.n_ctx * ldkv;

    /* q = W^UQ RMSNorm(W^DQ x)  or  q = W^Q x                 (n, H*dqk) */
    if (cf->q_lora_rank > 0) {
        dsc_k_matmul(k, w->qa, w->xn, &ly->q_a, n);
        dsc_k_rmsnorm(k, w->qa, w->qa, &ly->q_a_norm, n, cf->q_lora_rank,
                      DSC_LATENT_NORM_EPS);
        dsc_k_matmul(k, w->q, w->qa, &ly->q_b, n);
    } else {
        dsc_k_matmul(k, w->q, w->xn, &ly->q_b, n);
    }
    /* [c ; k_pe] = W^DKV x                                     (n, dc + dr) */
    dsc_k_matmul(k, w->kva, w->xn, &ly->kv_a, n);
    /* cache row = [RMSNorm(c) ; RoPE(k_pe)]; the rope part of q rotated alike */
    for (int64_t t = 0; t < n; t++) {
        int64_t p = pos0 + t;
        const float *cs = w->rope_cos + p * (dr / 2), *sn = w->rope_sin + p * (dr / 2);
        float *row = cache_l + p * ldkv;
        memcpy(row, w->kva + t * ldkv, (size_t)ldkv * sizeof(float));
        dsc_ref_rope(row + dc, dr, cs, sn, cf->rope_interleave);
        for (int64_t i = 0; i < H; i++)
            dsc_ref_rope(w->q + t * H * dqk + i * dqk + cf->qk_nope_head_dim, dr, cs, sn,
                         cf->rope_interleave);
    }
    /* normalise the latent part of the new rows in place (stride dc + dr) */
    for (int64_t t = 0; t < n; t++) {
        float *row = cache_l + (pos0 + t) * ldkv;
        dsc_ref_rmsnorm(row, row, &ly->kv_a_norm, 1, dc, DSC_LATENT_NORM_EPS);
    }

    /* DSA: every new token's indexer key is cached; the sparse path runs
       when some query sees more keys than index_topk. */
    int dsa = cf->index_topk > 0 && !c->p.dense;
    if (dsa) dsc_dsa_keys(c, ly, l, n, pos0);
    int sparse = dsa && dsc_dsa_sparse(c, n, pos0);

    /* Few queries in absorbed mode: use kv_b's rows in place (stored dtype). */
    int stream = (c->p.attn == DSC_ATTN_ABSORBED || sparse) && n <= DSC_MLA_STREAM_ROWS &&
                 ly->kv_b.dtype != DSC_F32;
    const float *kvb = stream ? NULL : kv_b_f32(c, &ly->kv_b);
    if (sparse) {
        dsc_dsa_attend(c, ly, l, n, pos0, kvb);
    } else if (c->p.attn == DSC_ATTN_ABSORBED) {
        attend_absorbed(c, ly, cache_l, kvb, n, pos0);
    } else {
        naive_job j = {c, cache_l, kvb, n, pos0};
        dsc_parallel_for(c->n_threads, H, DSC_SCHED_DYNAMIC, attend_head_naive, &j);
    }
    /* out = W^O concat_i(o_i)                                      (n, d) */
    dsc_k_matmul(k, w->y, w->attn, &ly->o, n);
}
