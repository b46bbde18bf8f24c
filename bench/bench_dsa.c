/*
 * bench_dsa.c - DeepSeek Sparse Attention (deepseek_v32) against dense
 * absorbed MLA. A benchmark, not a test: it exits 0 whatever the speed,
 * non-zero only when something fails (a checkpoint cannot be written or
 * loaded, a forward errs or gives non-finite values).
 *
 *  1. Decode: one layer with V3.2's attention shapes (d 7168, 128 heads,
 *     q_lora 1536, kv_lora 512, nope 128, rope 64, v 128, indexer 64 x 128,
 *     top-2048), random weights, tiny FFN and vocab (not timed). At each
 *     context P the latent cache rows 0..P-1 and the indexer's key cache
 *     rows 0..P-1 are filled with N(0,1) values (a shortcut, not a prefill),
 *     and the attention block of the token at position P is timed alone:
 *     dsc_mla_forward(ctx, layer 0, 1 token, pos P), with dense = 1 (dense
 *     absorbed MLA) and dense = 0 (DSA), for each index cache format.
 *  2. The indexer alone: the library's indexer query and scoring are static
 *     in dsa.c, so they are rebuilt here from the same public kernels in
 *     the same blocking (the "replica"); dsc_dsa_keys, dsc_dsa_block_keys
 *     (a block of cached keys as fp32) and dsc_k_topk_set are the library's
 *     own. The replica's selection is compared with the one
 *     the library made, so it is known to do the same work. DSA attention
 *     = DSA step - indexer. The projections and the kv_b absorption are
 *     timed alone too, so the rest (the attention core) is known.
 *  3. Bytes read and FLOPs per step, from formulas printed with the tables.
 *  4. Prefill at a few lengths, dense vs DSA, on one layer with V2-Lite's
 *     attention (16 heads) plus a q latent and the indexer: the whole forward
 *     (dsc_forward_last in 512-token chunks), and attention alone from a
 *     block-timed pass (bench_forward_phases).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "dsc.h"
#include "kernels/kernels.h"
#include "model/model.h"
#include "util/util.h"

#define WARMUP 1      /* untimed steps first: they page the weights in       */
#define BUSY_MAX 0.25 /* CPUs others may keep busy before a timing is redone  */
#define TRIES 3       /* timings per measurement at most                      */
#define KB 256        /* keys per indexer block: dsa.c's, so the replica's
                         GEMMs (and hence its scores) match the library's     */
#define CHUNK 512     /* prefill tokens per dsc_forward_last call (n_batch)   */
#define MAX_IC 3      /* index cache formats: f32, bf16, fp8                  */

typedef struct {
    int64_t steps, threads, dq_prefill, phases, index_fp8;
    int64_t contexts[BENCH_MAX_LIST], prefill[BENCH_MAX_LIST];
    int n_contexts, n_prefill;
    dsc_dtype dtypes[BENCH_MAX_LIST], ics[BENCH_MAX_LIST]; /* ics: index caches as dtypes */
    int n_dtypes, n_ics;
    const char *dir;
} options;

static dsc_index_cache_type ic_of(dsc_dtype t) {
    return t == DSC_F32 ? DSC_INDEX_CACHE_F32
                        : t == DSC_BF16 ? DSC_INDEX_CACHE_BF16 : DSC_INDEX_CACHE_FP8;
}

/* One layer, dense FFN of 256 and vocab 1024: the FFN and lm_head are not
   timed, so they are made small enough not to matter for memory or time. */
static bench_shapes dsa_shapes(int v32, int64_t dq) {
    bench_shapes s = bench_v2lite_shapes(1, 1024);
    s.ff = 256;
    s.mff = 0, s.E = 0, s.K = 0, s.ns = 0; /* no MoE: "n_routed_experts": 0 */
    s.HI = 64, s.DI = 128, s.topk = 2048;  /* spec §4.1 */
    s.mscale = 1.0;                        /* YaRN as V3 / V3.2 */
    s.dq = dq;
    if (v32) {
        s.desc = "DeepSeek-V3.2 attention (1 layer)", s.tag = "v32attn";
        s.d = 7168, s.H = 128;
    } else {
        s.desc = "V2-Lite attention + q_lora + DSA (1 layer)", s.tag = "v2lite-dsa";
    }
    return s;
}

/* ------------------------------------------------------------ timing */

typedef void (*step_fn)(void *arg);
typedef struct {
    double ms, others; /* median ms of the kept try; CPUs others kept busy */
    int tries;
} timing;

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* WARMUP calls, then `steps` timed ones. On a shared 2-core machine one
   descheduled thread stalls every barrier, so a try during which others kept
   more than BUSY_MAX CPUs busy is redone (TRIES at most); the lowest median
   is kept with the busy figure of its try. */
static timing time_steps(step_fn f, void *arg, int64_t steps, double *buf) {
    timing r = {1e30, 0.0, 0};
    for (int i = 0; i < WARMUP; i++) f(arg);
    for (int tr = 0; tr < TRIES && (tr == 0 || r.others > BUSY_MAX); tr++) {
        bench_mark m0 = bench_mark_now();
        for (int64_t s = 0; s < steps; s++) {
            double t0 = bench_now();
            f(arg);
            buf[s] = bench_now() - t0;
        }
        double busy = bench_others(m0, bench_mark_now());
        qsort(buf, (size_t)steps, sizeof *buf, cmp_double);
        double med = steps % 2 ? buf[steps / 2] : 0.5 * (buf[steps / 2 - 1] + buf[steps / 2]);
        r.tries++;
        if (1e3 * med < r.ms) r.ms = 1e3 * med, r.others = busy;
    }
    return r;
}

/* ------------------------------------------------------------ the indexer, rebuilt */

/* The indexer of one query at position P over keys 0..P (dsa.c's
   index_queries and index_select for n = 1, which are static there). */
typedef struct {
    float *q;       /* (H_I, D_I) roped queries        */
    float *wt;      /* (H_I) scaled head weights       */
    float *score;   /* (P + 1) I(P, s)                 */
    float *scratch; /* (P + 1) for dsc_k_topk_set      */
    float *blk;     /* per thread: H_I*KB + KB*D_I     */
    int32_t *sel;   /* (topk)                          */
    int64_t nsel, blk_floats;
    int upto;       /* scoring stops after: 0 all, 1 loading keys, 2 the GEMM */
} replica;

typedef struct {
    dsc_ctx_t *c;
    const dsc_layer *ly;
    int64_t P;
    replica *r;
    const dsc_wmat *w; /* step_matmul: y = x W^T */
    const float *x;
    float *y;
} step_arg;

static void step_forward(void *a) {
    step_arg *s = a;
    dsc_mla_forward(s->c, s->ly, 0, 1, s->P);
}

static void step_key(void *a) {
    step_arg *s = a;
    dsc_dsa_keys(s->c, s->ly, 0, 1, s->P);
}

/* q = RoPE_half(W_qb c_q) per head, w = W_w x / sqrt(H_I D_I): from the q
   latent and normed input that the forward left in the context. */
static void step_iquery(void *a) {
    step_arg *s = a;
    dsc_ctx_t *c = s->c;
    const dsc_config *cf = &c->m->cfg;
    int64_t HI = cf->index_n_heads, DI = cf->index_head_dim, dr = cf->qk_rope_head_dim;
    dsc_k_matmul(c->k, s->r->q, c->w.qa, &s->ly->idx_wq_b, 1);
    dsc_k_matmul(c->k, s->r->wt, c->w.xn, &s->ly->idx_weights, 1);
    const float *cs = c->w.rope_cos + s->P * (dr / 2), *sn = c->w.rope_sin + s->P * (dr / 2);
    float scale = (float)(1.0 / sqrt((double)HI * (double)DI));
    for (int64_t j = 0; j < HI; j++) {
        float *q = s->r->q + j * DI;
        dsc_ref_rope(q, dr, cs, sn, 0);
        s->r->wt[j] *= scale;
        if (!c->p.index_fp8) continue;
        /* official FP8 scoring: Hadamard, then e4m3 with one scale per head */
        dsc_dsa_hadamard(q, DI);
        float sc = dsc_dsa_fp8_scale(q, DI, cf->scale_ue8m0);
        for (int64_t i = 0; i < DI; i++) q[i] = dsc_e4m3_to_f32(dsc_f32_to_e4m3(q[i] / sc)) * sc;
    }
}

/* I(P, s) = sum_j w_j ReLU(q_j . k_s) for s = 0..P, key blocks of KB in
   parallel: each block's keys are read from the cache's format into fp32,
   all heads score them in one GEMM, then the weighted ReLU sum. */
static void step_iscore(void *a) {
    step_arg *s = a;
    dsc_ctx_t *c = s->c;
    const dsc_config *cf = &c->m->cfg;
    int64_t HI = cf->index_n_heads, DI = cf->index_head_dim, lk = s->P + 1;
    int64_t kbytes = dsc_dsa_key_bytes(cf, c->p.index_cache), nblk = (lk + KB - 1) / KB;
    replica *r = s->r;
#pragma omp parallel for num_threads(c->n_threads) schedule(dynamic, 1)
    for (int64_t b = 0; b < nblk; b++) {
        float *T = r->blk + (int64_t)dsc_thread_id() * r->blk_floats, *K = T + HI * KB;
        int64_t s0 = b * KB, ns = lk - s0 < KB ? lk - s0 : KB;
        const float *keys = dsc_dsa_block_keys(
            c->p.index_cache, (const unsigned char *)c->index_cache + s0 * kbytes, ns, DI, K);
        if (r->upto == 1) continue;
        dsc_k_sgemm_nt(c->k, HI, ns, DI, r->q, DI, keys, DI, T, ns, 0);
        if (r->upto == 2) continue;
        /* the same branch-free, heads-outer sum as dsa.c's index_select */
        float *restrict out = r->score + s0;
        for (int64_t t = 0; t < ns; t++) out[t] = 0.0f;
        for (int64_t j = 0; j < HI; j++) {
            const float *restrict row = T + j * ns;
            float wj = r->wt[j];
#pragma omp simd
            for (int64_t t = 0; t < ns; t++) out[t] += wj * (row[t] > 0.0f ? row[t] : 0.0f);
        }
    }
}

static void step_topk(void *a) {
    step_arg *s = a;
    s->r->nsel = dsc_k_topk_set(s->r->score, s->P + 1, s->c->m->cfg.index_topk, s->r->sel,
                                s->r->scratch);
}

static void step_matmul(void *a) {
    step_arg *s = a;
    dsc_k_matmul(s->c->k, s->y, s->x, s->w, 1);
}

/* W^UK into the query and W^UV out of the latent outputs, kv_b applied as
   the decode step applies it (in place from its stored dtype). */
static void step_absorb_q(void *a) {
    step_arg *s = a;
    dsc_mla_absorb_q(s->c, s->ly, s->ly->kv_b.dtype == DSC_F32 ? s->ly->kv_b.data : NULL, 0, 1);
}

static void step_absorb_out(void *a) {
    step_arg *s = a;
    dsc_mla_absorb_out(s->c, s->ly, s->ly->kv_b.dtype == DSC_F32 ? s->ly->kv_b.data : NULL, 0, 1);
}

/* ------------------------------------------------------------ bytes and FLOPs */

static double wbytes(const dsc_wmat *w) {
    if (!w->data) return 0.0;
    double b = (double)w->rows * (double)w->cols * (double)dsc_dtype_size(w->dtype);
    if (w->dtype == DSC_F8_E4M3)
        b += (double)((w->rows + DSC_FP8_BLOCK - 1) / DSC_FP8_BLOCK) * (double)w->scale_cols * 4;
    return b;
}

typedef struct {
    double w_attn, w_key, w_query; /* bytes: MLA block; indexer key side; query side */
    double f_proj, f_absorb;       /* FLOPs, context-independent                     */
    double f_key, f_query;
    int64_t H, HI, DI, dc, dr, topk, row; /* row: latent floats per position         */
} cost_model;

static void cost_init(const dsc_model_t *m, cost_model *cm) {
    const dsc_config *cf = dsc_model_config(m);
    const dsc_layer *ly = &m->layers[0];
    double d = (double)cf->hidden_size, dq = (double)cf->q_lora_rank;
    double H = (double)cf->num_attention_heads, dc = (double)cf->kv_lora_rank;
    double dr = (double)cf->qk_rope_head_dim, dn = (double)cf->qk_nope_head_dim;
    double dv = (double)cf->v_head_dim, HI = (double)cf->index_n_heads;
    double DI = (double)cf->index_head_dim;
    cm->w_attn = wbytes(&ly->q_a) + wbytes(&ly->q_a_norm) + wbytes(&ly->q_b) + wbytes(&ly->kv_a) +
                 wbytes(&ly->kv_a_norm) + wbytes(&ly->kv_b) + wbytes(&ly->o);
    cm->w_key = wbytes(&ly->idx_wk) + wbytes(&ly->idx_k_norm_w) + wbytes(&ly->idx_k_norm_b);
    cm->w_query = wbytes(&ly->idx_wq_b) + wbytes(&ly->idx_weights);
    cm->f_proj = 2 * (d * dq + dq * H * (dn + dr) + d * (dc + dr) + H * dv * d);
    cm->f_absorb = 2 * H * dc * (dn + dv);
    cm->f_key = 2 * d * DI;
    cm->f_query = 2 * (dq * HI * DI + d * HI);
    cm->H = cf->num_attention_heads, cm->HI = cf->index_n_heads, cm->DI = cf->index_head_dim;
    cm->dc = cf->kv_lora_rank, cm->dr = cf->qk_rope_head_dim, cm->topk = cf->index_topk;
    cm->row = cm->dc + cm->dr;
}

/* Per decode step at context P (keys 0..P are visible, the new one
   included). sparse: whether DSA selects (P + 1 > topk), else it runs the
   dense path plus the new key. kb: bytes of one cached index key. */
typedef struct {
    double w, lat, keys, gath, total; /* bytes */
    double f_fixed, f_idx, f_core, f_total;
} step_cost;

static step_cost cost_step(const cost_model *cm, int64_t P, int dsa, int64_t kb) {
    step_cost s = {0};
    double n = (double)(P + 1), H = (double)cm->H, dc = (double)cm->dc, dr = (double)cm->dr;
    int sparse = dsa && P + 1 > cm->topk;
    double k = sparse ? (double)cm->topk : n; /* latent rows attended */
    s.w = cm->w_attn + (dsa ? cm->w_key : 0) + (sparse ? cm->w_query : 0);
    s.lat = sparse ? 0 : n * (double)cm->row * 4;
    s.gath = sparse ? k * (double)cm->row * 4 : 0;
    s.keys = sparse ? n * (double)kb : 0;
    s.total = s.w + s.lat + s.gath + s.keys;
    s.f_fixed = cm->f_proj + cm->f_absorb;
    s.f_idx = (dsa ? cm->f_key : 0) +
              (sparse ? cm->f_query + 2 * (double)cm->HI * (double)cm->DI * n +
                            2 * (double)cm->HI * n
                      : 0);
    s.f_core = 2 * H * k * (2 * dc + dr);
    s.f_total = s.f_fixed + s.f_idx + s.f_core;
    return s;
}

/* ------------------------------------------------------------ decode */

/* What one context measured. dsa[i]: with index cache format ics[i]. */
typedef struct {
    timing dense, dsa[MAX_IC], key[MAX_IC], iq[MAX_IC], isc[MAX_IC], itk[MAX_IC];
    timing ild[MAX_IC], igm[MAX_IC]; /* scoring stopped after loading keys / the GEMM */
    double idx[MAX_IC], attn[MAX_IC]; /* indexer ms (key+query+scores+top-k); DSA - idx */
    int64_t same[MAX_IC], nsel[MAX_IC]; /* replica selection vs the library's       */
    int sparse;
} drow;

typedef struct {
    timing q_a, q_b, kv_a, o, absorb_q, absorb_out;
    double sum;
} fixed_costs;

/*
 * Benchmark shortcut (as bench_decode): the latent rows 0..P-1 get N(0,1)
 * values, the scale the model writes (the normalised latent has RMS 1, the
 * rotated k_pe of a 0.02-std projection of a unit-RMS input std ~0.9), and
 * the index keys 0..P-1 N(0,1), the scale of LayerNorm's output (weight 1,
 * bias 0), stored in the context's format as dsa.c stores them (fp8: e4m3
 * of k / s with one fp32 scale s = amax / 448 per token after the 128 bytes).
 * The same seeds for every context, so dense and DSA read the same cache.
 * The normed input row is N(0,1) too (input_layernorm output, RMS 1).
 */
static int fill_context(dsc_ctx_t *c, int64_t P) {
    const dsc_config *cf = &c->m->cfg;
    int64_t row = cf->kv_lora_rank + cf->qk_rope_head_dim, DI = cf->index_head_dim;
    bench_fill_normal(c->cache, P * row, 1.0f, BENCH_SEED + 10);
    bench_fill_normal(c->w.xn, cf->hidden_size, 1.0f, BENCH_SEED + 11);
    if (!c->index_cache || c->p.dense) return 0; /* dense never reads the keys */
    int64_t kb = dsc_dsa_key_bytes(cf, c->p.index_cache);
    float *k = c->p.index_cache == DSC_INDEX_CACHE_F32 ? c->index_cache
                                                        : malloc((size_t)(P * DI) * sizeof *k);
    if (!k) return fprintf(stderr, "error: out of memory filling the index cache\n"), 1;
    bench_fill_normal(k, P * DI, 1.0f, BENCH_SEED + 12);
    if (c->p.index_cache == DSC_INDEX_CACHE_F32) return 0;
#pragma omp parallel for schedule(static)
    for (int64_t s = 0; s < P; s++) {
        unsigned char *dst = (unsigned char *)c->index_cache + s * kb;
        const float *src = k + s * DI;
        if (c->p.index_cache == DSC_INDEX_CACHE_BF16) {
            for (int64_t i = 0; i < DI; i++) {
                uint16_t h = dsc_f32_to_bf16(src[i]);
                memcpy(dst + 2 * i, &h, 2);
            }
            continue;
        }
        float amax = 1e-4f;
        for (int64_t i = 0; i < DI; i++) amax = fabsf(src[i]) > amax ? fabsf(src[i]) : amax;
        float sc = amax / 448.0f;
        for (int64_t i = 0; i < DI; i++) dst[i] = dsc_f32_to_e4m3(src[i] / sc);
        memcpy(dst + DI, &sc, sizeof sc);
    }
    free(k);
    return 0;
}

static int finite_rows(const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return 0;
    return 1;
}

static dsc_ctx_t *new_ctx(const dsc_model_t *m, const options *o, int64_t n_ctx, int64_t batch,
                          int dense, dsc_index_cache_type ic) {
    dsc_ctx_params cp = dsc_ctx_default_params();
    cp.n_ctx = n_ctx, cp.n_batch = batch, cp.n_threads = (int)o->threads;
    cp.attn = DSC_ATTN_ABSORBED, cp.dense = dense, cp.index_cache = ic;
    cp.index_fp8 = o->index_fp8 && !dense && ic == DSC_INDEX_CACHE_FP8;
    dsc_ctx_t *c = NULL;
    dsc_err err = {0};
    if (dsc_ctx_new(m, &cp, &c, &err) != DSC_OK)
        fprintf(stderr, "error: dsc_ctx_new (n_ctx %lld): %s\n", (long long)n_ctx, err.msg);
    return c;
}

/* Elements common to two ascending index lists. */
static int64_t common_sorted(const int32_t *a, int64_t na, const int32_t *b, int64_t nb) {
    int64_t i = 0, j = 0, n = 0;
    while (i < na && j < nb) {
        if (a[i] == b[j]) n++, i++, j++;
        else if (a[i] < b[j]) i++;
        else j++;
    }
    return n;
}

static int decode_context(const dsc_model_t *m, const options *o, int64_t P, drow *r,
                          fixed_costs *fx, double *buf) {
    const dsc_config *cf = dsc_model_config(m);
    const dsc_layer *ly = &m->layers[0];
    int64_t d = cf->hidden_size, topk = cf->index_topk;
    memset(r, 0, sizeof *r);
    r->sparse = P + 1 > topk;
    dsc_ctx_t *c = new_ctx(m, o, P + 2, 1, 1, DSC_INDEX_CACHE_F32);
    if (!c || fill_context(c, P)) return dsc_ctx_free(c), 1;
    step_arg sa = {.c = c, .ly = ly, .P = P};
    r->dense = time_steps(step_forward, &sa, o->steps, buf);
    int ok = finite_rows(c->w.y, d);
    dsc_ctx_free(c);
    if (!ok) return fprintf(stderr, "error: dense MLA output not finite at %lld\n", (long long)P), 1;

    replica rep = {0};
    int64_t nt = o->threads;
    rep.blk_floats = cf->index_n_heads * KB + KB * cf->index_head_dim;
    rep.q = malloc((size_t)(cf->index_n_heads * cf->index_head_dim) * sizeof(float));
    rep.wt = malloc((size_t)cf->index_n_heads * sizeof(float));
    rep.score = malloc((size_t)(P + 1) * sizeof(float));
    rep.scratch = malloc((size_t)(P + 1) * sizeof(float));
    rep.blk = malloc((size_t)(nt * rep.blk_floats) * sizeof(float));
    rep.sel = malloc((size_t)topk * sizeof(int32_t));
    int32_t *lib_sel = malloc((size_t)topk * sizeof(int32_t));
    /* output of the projections timed alone: the widest is q_b's H*dqk */
    int64_t ny = cf->num_attention_heads * (cf->qk_nope_head_dim + cf->qk_rope_head_dim) + d +
                 cf->q_lora_rank + cf->kv_lora_rank + cf->qk_rope_head_dim;
    float *y = malloc((size_t)ny * sizeof(float));
    int rc = 1;
    if (!rep.q || !rep.wt || !rep.score || !rep.scratch || !rep.blk || !rep.sel || !lib_sel || !y) {
        fprintf(stderr, "error: out of memory for the indexer replica\n");
        goto done;
    }
    sa.r = &rep;
    for (int i = 0; i < o->n_ics; i++) {
        c = new_ctx(m, o, P + 2, 1, 0, ic_of(o->ics[i]));
        if (!c || fill_context(c, P)) goto done;
        sa.c = c;
        r->dsa[i] = time_steps(step_forward, &sa, o->steps, buf);
        if (!finite_rows(c->w.y, d)) {
            fprintf(stderr, "error: DSA output not finite at context %lld\n", (long long)P);
            goto done;
        }
        if (r->sparse) {
            /* the library's own selection for this step, then the replica's */
            step_forward(&sa);
            r->nsel[i] = c->w.n_sel[0];
            memcpy(lib_sel, c->w.sel, (size_t)r->nsel[i] * sizeof *lib_sel);
            r->iq[i] = time_steps(step_iquery, &sa, o->steps, buf);
            r->isc[i] = time_steps(step_iscore, &sa, o->steps, buf);
            r->itk[i] = time_steps(step_topk, &sa, o->steps, buf);
            r->same[i] = common_sorted(lib_sel, r->nsel[i], rep.sel, rep.nsel);
            if (rep.nsel != r->nsel[i] || !finite_rows(rep.score, P + 1)) r->same[i] = -1;
            /* the scoring's parts: stopped after loading the keys, after the GEMM */
            rep.upto = 1, r->ild[i] = time_steps(step_iscore, &sa, o->steps, buf);
            rep.upto = 2, r->igm[i] = time_steps(step_iscore, &sa, o->steps, buf);
            rep.upto = 0;
        }
        r->key[i] = time_steps(step_key, &sa, o->steps, buf);
        r->idx[i] = r->key[i].ms + r->iq[i].ms + r->isc[i].ms + r->itk[i].ms;
        r->attn[i] = r->dsa[i].ms - r->idx[i];
        if (i == 0 && fx->sum == 0.0) { /* context-independent: once */
            step_arg m1 = sa;
            m1.y = y;
            m1.w = &ly->q_a, m1.x = c->w.xn, fx->q_a = time_steps(step_matmul, &m1, o->steps, buf);
            m1.w = &ly->q_b, m1.x = c->w.qa, fx->q_b = time_steps(step_matmul, &m1, o->steps, buf);
            m1.w = &ly->kv_a, m1.x = c->w.xn, fx->kv_a = time_steps(step_matmul, &m1, o->steps, buf);
            m1.w = &ly->o, m1.x = c->w.attn, fx->o = time_steps(step_matmul, &m1, o->steps, buf);
            fx->absorb_q = time_steps(step_absorb_q, &sa, o->steps, buf);
            fx->absorb_out = time_steps(step_absorb_out, &sa, o->steps, buf);
            fx->sum = fx->q_a.ms + fx->q_b.ms + fx->kv_a.ms + fx->o.ms + fx->absorb_q.ms +
                      fx->absorb_out.ms;
        }
        dsc_ctx_free(c);
        c = NULL;
        printf("  context %6lld, %-4s index cache: dense %.2f ms, DSA %.2f ms (indexer %.2f)%s\n",
               (long long)P, bench_dtype_tag(o->ics[i]), r->dense.ms, r->dsa[i].ms, r->idx[i],
               r->sparse ? "" : " - selection keeps every key: dense path + new key");
    }
    rc = 0;
done:
    dsc_ctx_free(c);
    free(rep.q), free(rep.wt), free(rep.score), free(rep.scratch), free(rep.blk), free(rep.sel);
    free(lib_sel), free(y);
    return rc;
}

static double max_busy(const drow *r, int n_ics) {
    double b = r->dense.others;
    for (int i = 0; i < n_ics; i++) {
        const timing *t[] = {&r->dsa[i], &r->key[i], &r->iq[i], &r->isc[i], &r->itk[i]};
        for (int j = 0; j < 5; j++) b = t[j]->others > b ? t[j]->others : b;
        /* ild / igm (the scoring's parts) are diagnostics: not in the busy column */
    }
    return b;
}

static int run_decode(const bench_store *st, const options *o, dsc_dtype dt) {
    bench_shapes s = dsa_shapes(1, 1536);
    dsc_model_t *m = NULL;
    drow rows[BENCH_MAX_LIST];
    fixed_costs fx = {0};
    cost_model cm;
    double *buf = malloc((size_t)o->steps * sizeof *buf);
    int rc = 1;
    bench_print_header("bench_dsa (decode)", &s);
    if (!buf || bench_load_model(st, &s, dt, &m)) goto out;
    cost_init(m, &cm);
    printf("\n== decode: one layer's attention block, dsc_mla_forward(1 token at position P), "
           "%s weights, %lld threads; median of %lld steps after %d warm-up ==\n",
           bench_dtype_tag(dt), (long long)o->threads, (long long)o->steps, WARMUP);
    if (o->index_fp8)
        printf("fp8 index cache runs use the official FP8 scoring (index_fp8 = 1: Hadamard-"
               "rotated, e4m3-quantised q and k)\n");
    for (int ci = 0; ci < o->n_contexts; ci++)
        if (decode_context(m, o, o->contexts[ci], &rows[ci], &fx, buf)) goto out;

    const double MB = 1e-6, GF = 1e-9;
    printf("\n== decode step time (ms); indexer = new key + query + scores over P+1 keys + top-k "
           "(timed alone); DSA attn = DSA - indexer ==\n");
    printf("%7s | %8s |", "ctx", "dense");
    for (int i = 0; i < o->n_ics; i++)
        printf(" %5s: %7s %7s %7s %6s |", bench_dtype_tag(o->ics[i]), "DSA", "indexer", "attn",
               "ratio");
    printf(" %-9s | %4s\n", "same sel", "busy");
    for (int ci = 0; ci < o->n_contexts; ci++) {
        const drow *r = &rows[ci];
        printf("%7lld | %8.2f |", (long long)o->contexts[ci], r->dense.ms);
        for (int i = 0; i < o->n_ics; i++)
            printf("        %7.2f %7.2f %7.2f %5.1fx |", r->dsa[i].ms, r->idx[i], r->attn[i],
                   r->dense.ms / r->dsa[i].ms);
        char same[32] = "-";
        if (r->sparse)
            snprintf(same, sizeof same, "%lld/%lld", (long long)r->same[0], (long long)r->nsel[0]);
        printf(" %-9s | %4.2f\n", same, max_busy(r, o->n_ics));
    }
    printf("ratio = dense / DSA; same sel = indices the replica indexer selected that the library "
           "also selected (%s index cache), out of its selection (-1: the sizes differ)\n",
           bench_dtype_tag(o->ics[0]));

    printf("\n== where the time goes (ms, medians timed alone; 'rest' = the step minus the "
           "parts) ==\nfixed per step: q_a %.2f + q_b %.2f + kv_a %.2f + o_proj %.2f + kv_b "
           "absorb: W_UK into q %.2f, W_UV out %.2f = %.2f ms\n",
           fx.q_a.ms, fx.q_b.ms, fx.kv_a.ms, fx.o.ms, fx.absorb_q.ms, fx.absorb_out.ms, fx.sum);
    printf("%7s | %-5s | %10s | %6s %6s %7s (%6s %6s %6s) %6s | %11s\n", "ctx", "index",
           "dense rest", "key", "query", "scores", "load", "GEMM", "ReLU+", "top-k", "sparse rest");
    for (int ci = 0; ci < o->n_contexts; ci++)
        for (int i = 0; i < o->n_ics; i++) {
            const drow *r = &rows[ci];
            printf("%7lld | %-5s | %10.2f | %6.2f %6.2f %7.2f (%6.2f %6.2f %6.2f) %6.2f | %11.2f\n",
                   (long long)o->contexts[ci], bench_dtype_tag(o->ics[i]), r->dense.ms - fx.sum,
                   r->key[i].ms, r->iq[i].ms, r->isc[i].ms, r->ild[i].ms,
                   r->igm[i].ms - r->ild[i].ms, r->isc[i].ms - r->igm[i].ms, r->itk[i].ms,
                   r->dsa[i].ms - fx.sum - r->idx[i]);
        }
    printf("dense rest = the attention core: scores over P+1 latent rows, softmax, P.C; sparse "
           "rest = gather top-k rows + the same core over them (dense core at contexts <= "
           "top-k);\nscores = load (keys into fp32 blocks) + GEMM (64 heads x 256 keys x 128 "
           "per block) + ReLU+ (the weighted ReLU sum over heads), from the scoring timed "
           "stopped after each part\n");

    printf("\n== bytes read (MB, 1e6 B) and FLOPs per step ==\n");
    printf("weights as stored: MLA block %.1f MB (q_a, q_b, kv_a, kv_b, o_proj, norms); indexer "
           "key side %.2f MB (wk, k_norm), query side %.1f MB (wq_b, weights_proj)\n",
           cm.w_attn * MB, cm.w_key * MB, cm.w_query * MB);
    printf("dense: weights + latent rows (P+1) x %lld x 4 B; DSA: weights + index keys "
           "(P+1) x key bytes + gathered rows k x %lld x 4 B, k = min(%lld, P+1)\n",
           (long long)cm.row, (long long)cm.row, (long long)cm.topk);
    printf("FLOPs: fixed 2(d dq + dq H dqk + d (dc+dr) + H dv d) + 2 H dc (dn+dv) = %.3f G; "
           "dense core 2 H (P+1) (2 dc + dr);\n  DSA: + key 2 d D_I, + query 2 (dq H_I D_I + "
           "d H_I) = %.3f G, + scores 2 H_I D_I (P+1) + 2 H_I (P+1); core 2 H k (2 dc + dr)\n",
           (cm.f_proj + cm.f_absorb) * GF, cm.f_query * GF);
    printf("(not counted: the score rows written and re-read, H x (P+1) x 4 B for dense, "
           "(P+1) x 4 B x 3 for the indexer's top-k)\n");
    printf("%7s | %8s %8s %7s %7s | %7s %7s %7s | %8s %8s | %7s %7s\n", "ctx", "dense MB",
           "latent", "GB/s", "GFLOP", "DSA MB", "keys", "gather", "DSA GF", "idx GF", "GB/s",
           "GFLOP/s");
    for (int ci = 0; ci < o->n_contexts; ci++) {
        int64_t P = o->contexts[ci];
        const drow *r = &rows[ci];
        int64_t kb = dsc_dsa_key_bytes(dsc_model_config(m), ic_of(o->ics[0]));
        step_cost dn = cost_step(&cm, P, 0, kb), ds = cost_step(&cm, P, 1, kb);
        printf("%7lld | %8.1f %8.1f %7.1f %7.3f | %7.1f %7.1f %7.1f | %8.3f %8.3f | %7.1f %7.1f\n",
               (long long)P, dn.total * MB, dn.lat * MB, dn.total / r->dense.ms * 1e-6,
               dn.f_total * GF, ds.total * MB, ds.keys * MB, ds.gath * MB, ds.f_total * GF,
               ds.f_idx * GF, ds.total / r->dsa[0].ms * 1e-6, ds.f_total / r->dsa[0].ms * 1e-6);
    }
    printf("(DSA columns for the %s index cache; fp8 keys are %lld B, f32 %lld B)\n",
           bench_dtype_tag(o->ics[0]),
           (long long)dsc_dsa_key_bytes(dsc_model_config(m), DSC_INDEX_CACHE_FP8),
           (long long)dsc_dsa_key_bytes(dsc_model_config(m), DSC_INDEX_CACHE_F32));

    /* targets: the largest context's ratio; flatness of DSA attention over
       the contexts >= 4096 (the requirement's range) */
    int last = o->n_contexts - 1;
    printf("\n== targets ==\n");
    for (int i = 0; i < o->n_ics; i++) {
        double lo = 1e30, hi = 0;
        int n = 0;
        for (int ci = 0; ci < o->n_contexts; ci++) {
            if (o->contexts[ci] < 4096) continue;
            double a = rows[ci].attn[i];
            lo = a < lo ? a : lo, hi = a > hi ? a : hi, n++;
        }
        double ratio = rows[last].dense.ms / rows[last].dsa[i].ms;
        printf("%-4s index cache: at context %lld dense/DSA = %.1fx (target >= 5: %s); DSA "
               "attention over %d contexts >= 4096: %.2f .. %.2f ms, max/min %.3f (target <= "
               "1.20: %s)\n",
               bench_dtype_tag(o->ics[i]), (long long)o->contexts[last], ratio,
               ratio >= 5.0 ? "MET" : "NOT MET", n, n ? lo : 0.0, n ? hi : 0.0,
               n ? hi / lo : 0.0,
               n < 2 ? "n/a" : lo <= 0 ? "INVALID (a derived time <= 0)"
                                       : hi / lo <= 1.2 ? "MET" : "NOT MET");
    }
    rc = 0;
out:
    dsc_model_free(m);
    free(buf);
    return rc;
}

/* ------------------------------------------------------------ prefill */

/* Attention FLOPs of prefilling N tokens from position 0 in CHUNK calls,
   visible keys only. DSA: a call goes sparse when its last position sees
   more than topk keys (dsc_dsa_sparse), and then every query of it runs the
   indexer over its visible keys and attends min(topk, visible) rows. */
static double prefill_flops(const cost_model *cm, int64_t N, int dsa) {
    double f = 0.0, H = (double)cm->H, core = 2 * H * (2 * (double)cm->dc + (double)cm->dr);
    for (int64_t p0 = 0; p0 < N; p0 += CHUNK) {
        int64_t n = N - p0 < CHUNK ? N - p0 : CHUNK;
        int sparse = dsa && p0 + n > cm->topk;
        for (int64_t t = p0; t < p0 + n; t++) {
            double vis = (double)(t + 1), k = sparse && vis > cm->topk ? (double)cm->topk : vis;
            f += cm->f_proj + cm->f_absorb + core * k + (dsa ? cm->f_key : 0);
            if (sparse) f += cm->f_query + 2 * (double)cm->HI * ((double)cm->DI + 1) * vis;
        }
    }
    return f;
}

typedef struct {
    double fwd, attn, others, others_ph; /* seconds; CPUs others kept busy */
} prow;

static int prefill_one(const dsc_model_t *m, const options *o, int64_t N, int dense,
                       float *logits, prow *r) {
    const dsc_config *cf = dsc_model_config(m);
    int64_t V = cf->vocab_size;
    int32_t *ids = malloc((size_t)N * sizeof *ids);
    dsc_ctx_t *c = ids ? new_ctx(m, o, N, CHUNK, dense, DSC_INDEX_CACHE_F32) : NULL;
    dsc_err err = {0};
    int rc = 1;
    if (!c) goto done;
    uint64_t st = BENCH_SEED + 7;
    for (int64_t i = 0; i < N; i++) ids[i] = (int32_t)(bench_mix64(&st) % (uint64_t)V);
    /* warm-up: one chunk pages the weights in (its cache rows are rewritten) */
    if (dsc_forward_last(c, ids, CHUNK < N ? CHUNK : N, 0, NULL, &err) != DSC_OK) goto fail;
    bench_mark m0 = bench_mark_now();
    for (int64_t p = 0; p < N; p += CHUNK) {
        int64_t n = N - p < CHUNK ? N - p : CHUNK;
        if (dsc_forward_last(c, ids + p, n, p, p + n == N ? logits : NULL, &err) != DSC_OK)
            goto fail;
    }
    bench_mark m1 = bench_mark_now();
    r->fwd = m1.wall - m0.wall, r->others = bench_others(m0, m1);
    if (!finite_rows(logits, V)) {
        fprintf(stderr, "error: non-finite logits after prefill of %lld\n", (long long)N);
        goto done;
    }
    r->attn = 0.0;
    if (o->phases) {
        double ph[BENCH_PH_N];
        for (int64_t p = 0; p < N; p += CHUNK) {
            int64_t n = N - p < CHUNK ? N - p : CHUNK;
            bench_forward_phases(c, ids + p, n, p, logits, ph, NULL);
            r->attn += ph[BENCH_PH_ATTN];
        }
        r->others_ph = bench_others(m1, bench_mark_now());
        if (!finite_rows(logits, V * ((N - 1) % CHUNK + 1))) {
            fprintf(stderr, "error: non-finite logits in the block-timed prefill\n");
            goto done;
        }
    }
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "error: prefill of %lld tokens: %s\n", (long long)N, err.msg);
done:
    dsc_ctx_free(c);
    free(ids);
    return rc;
}

static int run_prefill(const bench_store *st, const options *o, dsc_dtype dt) {
    bench_shapes s = dsa_shapes(0, o->dq_prefill);
    dsc_model_t *m = NULL;
    prow rows[BENCH_MAX_LIST][2];
    cost_model cm;
    float *logits = malloc((size_t)(CHUNK * s.V) * sizeof *logits);
    int rc = 1;
    printf("\n");
    bench_print_header("bench_dsa (prefill)", &s);
    if (!logits || bench_load_model(st, &s, dt, &m)) goto out;
    cost_init(m, &cm);
    printf("\n== prefill: dsc_forward_last over the prompt in %d-token calls, %s weights, %lld "
           "threads, absorbed MLA; then a block-timed pass for attention alone ==\n",
           CHUNK, bench_dtype_tag(dt), (long long)o->threads);
    for (int pi = 0; pi < o->n_prefill; pi++)
        for (int dsa = 0; dsa < 2; dsa++) {
            prow *r = &rows[pi][dsa];
            if (prefill_one(m, o, o->prefill[pi], !dsa, logits, r)) goto out;
            printf("  %6lld tokens, %-5s: forward %.2f s, attention %.2f s\n",
                   (long long)o->prefill[pi], dsa ? "DSA" : "dense", r->fwd, r->attn);
        }
    printf("\n== prefill (one layer: the forward is attention + a 256-wide FFN + a 1024 "
           "vocab) ==\n");
    printf("%6s | %-5s | %8s %8s | %8s %6s | %9s %8s | %7s | %4s %4s\n", "tokens", "mode",
           "fwd s", "tok/s", "attn s", "attn%", "attn GF", "GFLOP/s", "dns/DSA", "busy", "ph");
    for (int pi = 0; pi < o->n_prefill; pi++)
        for (int dsa = 0; dsa < 2; dsa++) {
            const prow *r = &rows[pi][dsa];
            double f = prefill_flops(&cm, o->prefill[pi], dsa), ta = o->phases ? r->attn : r->fwd;
            char ratio[16] = "";
            if (dsa) snprintf(ratio, sizeof ratio, "%.2fx", rows[pi][0].fwd / r->fwd);
            printf("%6lld | %-5s | %8.2f %8.0f | %8.2f %5.1f%% | %9.1f %8.1f | %7s | %4.2f %4.2f\n",
                   (long long)o->prefill[pi], dsa ? "DSA" : "dense", r->fwd,
                   (double)o->prefill[pi] / r->fwd, r->attn, 100.0 * r->attn / r->fwd, f * 1e-9,
                   f * 1e-9 / ta, ratio, r->others, r->others_ph);
        }
    printf("attn s = attention blocks of the block-timed pass (0 with --phases 0); GFLOP/s = "
           "attention FLOPs / attn s (fwd s with --phases 0);\nattention FLOPs: per token "
           "fixed %.4f G (projections, absorb), dense core 2 H v (2 dc + dr) over the v visible "
           "keys;\n  DSA (calls whose last query sees > %lld keys): core over min(%lld, v) rows "
           "+ indexer 2 H_I (D_I + 1) v + query %.4f G; key %.5f G every token\n"
           "dns/DSA = dense forward time / DSA forward time; busy / ph = CPUs others kept busy "
           "during the forward / the block-timed pass\n",
           (cm.f_proj + cm.f_absorb) * 1e-9, (long long)cm.topk, (long long)cm.topk,
           cm.f_query * 1e-9, cm.f_key * 1e-9);
    rc = 0;
out:
    dsc_model_free(m);
    free(logits);
    return rc;
}

/* ------------------------------------------------------------ main */

static const char usage[] =
    "usage: bench_dsa [options]\n"
    "  --contexts LIST     decode positions (default 1024,4096,16384,65536,131072)\n"
    "  --steps N           timed decode steps per measurement, median (default 7)\n"
    "  --index-caches LIST index key cache formats for DSA decode: f32,bf16,fp8\n"
    "                      (default f32,fp8; the first is the one the byte table uses)\n"
    "  --prefill LIST      prompt lengths, dense vs DSA (default 4096,16384; 0: none)\n"
    "  --index-fp8 0|1     fp8 index cache runs score as the official FP8 kernel\n"
    "                      (index_fp8: Hadamard + e4m3 q; default 0)\n"
    "  --phases 0|1        block-timed prefill pass for attention alone (default 1)\n"
    "  --dq-prefill N      q_lora_rank of the prefill model (default 1536, V3's)\n"
    "  --dtype T           weights f32, bf16 or fp8 (default bf16)\n"
    "  --threads N         (default 2)\n"
    "  --dir PATH          keep checkpoints in PATH/<tag>-<dtype> and reuse them\n";

int main(int argc, char **argv) {
    options o = {.steps = 7, .threads = 2, .dq_prefill = 1536, .phases = 1,
                 .contexts = {1024, 4096, 16384, 65536, 131072}, .n_contexts = 5,
                 .prefill = {4096, 16384}, .n_prefill = 2, .dtypes = {DSC_BF16}, .n_dtypes = 1,
                 .ics = {DSC_F32, DSC_F8_E4M3}, .n_ics = 2};
    const bench_opt opts[] = {
        {"--contexts", BENCH_OPT_LIST, o.contexts, &o.n_contexts, 1, (int64_t)1 << 20},
        {"--steps", BENCH_OPT_I64, &o.steps, NULL, 1, 10000},
        {"--index-caches", BENCH_OPT_DTYPES, o.ics, &o.n_ics, 0, 0},
        {"--prefill", BENCH_OPT_LIST, o.prefill, &o.n_prefill, 0, (int64_t)1 << 20},
        {"--phases", BENCH_OPT_I64, &o.phases, NULL, 0, 1},
        {"--index-fp8", BENCH_OPT_I64, &o.index_fp8, NULL, 0, 1},
        {"--dq-prefill", BENCH_OPT_I64, &o.dq_prefill, NULL, 1, 65536},
        {"--dtype", BENCH_OPT_DTYPES, o.dtypes, &o.n_dtypes, 0, 0},
        {"--threads", BENCH_OPT_I64, &o.threads, NULL, 1, 1024},
        {"--dir", BENCH_OPT_STR, &o.dir, NULL, 0, 0},
    };
    setvbuf(stdout, NULL, _IOLBF, 0); /* progress shows even when piped to a file */
    int pa = bench_parse_args(argc, argv, opts, (int)(sizeof opts / sizeof *opts), usage);
    if (pa <= 0) return pa < 0 ? 0 : 2;
    if (o.n_dtypes != 1 || o.n_ics > MAX_IC)
        return fprintf(stderr, "--dtype takes one dtype, --index-caches at most 3\n%s", usage), 2;
    if (o.n_prefill == 1 && o.prefill[0] == 0) o.n_prefill = 0;
    for (int i = 0; i < o.n_prefill; i++)
        if (o.prefill[i] < 1) return fprintf(stderr, "--prefill: lengths >= 1, or 0 alone\n"), 2;
    bench_set_threads((int)o.threads);

    bench_store store = {.tmp = 0};
    bench_shapes sd = dsa_shapes(1, 1536), sp = dsa_shapes(0, o.dq_prefill);
    int rc = 1;
    if (bench_store_open(&store, o.dir)) goto out;
    if (run_decode(&store, &o, o.dtypes[0])) goto out;
    bench_store_drop(&store, &sd, o.dtypes[0]); /* free the disk before the next model */
    if (o.n_prefill && run_prefill(&store, &o, o.dtypes[0])) goto out;
    rc = 0;
out:
    bench_store_drop(&store, &sd, o.dtypes[0]);
    bench_finish(&store, &sp, o.dtypes, 1);
    return rc;
}
