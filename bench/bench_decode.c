/*
 * bench_decode.c - decode speed of dsc (one token per call) on the random
 * V2-Lite-shaped model of common.c, at several context lengths, against the
 * memory-bandwidth roofline measured in the same run. A benchmark, not a
 * test: it exits 0 whatever the speed, non-zero only when something fails
 * (a file cannot be written, the model does not load, a forward errs or
 * gives non-finite logits).
 *
 * Decode of one token is a matrix-vector product per weight: every weight
 * byte it touches is read once and used for 2 FLOPs, so memory bandwidth,
 * not arithmetic, bounds it. Hence:
 *  1. Bandwidth: a plain sum over a buffer far larger than any cache (2 GiB
 *     by default), per thread count, best of a few passes: at the start, at
 *     the end, and right before and after every decode measurement, since
 *     the host's bandwidth moves with what else runs on it.
 *  2. Bytes per token, counted from the loaded model's own tensors in their
 *     stored dtype: the embedding row, every attention weight, the dense FFN,
 *     router and shared experts, the routed experts the routing actually
 *     chose (read back after each MoE layer), the final norm and lm_head;
 *     plus the latent cache rows attention reads, and the fp32 copy of kv_b
 *     that mla.c writes per layer per call when it does not apply kv_b in
 *     place (detected in the run; decode applies it in place since 045911c).
 *  3. Per dtype, thread count and context P: the cache rows 0..P-1 of every
 *     layer are filled with N(0,1) values (see fill_cache: a shortcut, not a
 *     prefill), then one token at a time from position P: 2 warm-up steps,
 *     `steps` timed dsc_forward_last calls (greedy argmax feeds the next id),
 *     median and best kept; then as many steps timed block by block.
 *  4. The table: tokens/s, bytes/token, GB/s achieved, the roofline
 *     (bandwidth next to the row / bytes per token) and the ratio to it,
 *     also without lm_head and against the best bandwidth of the run.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "dsc.h"
#include "kernels/kernels.h"
#include "model/model.h"

#define WARMUP 2      /* untimed steps first: they page the weights in      */
#define BW_PASSES 8   /* bandwidth passes per report line, best kept         */
#define BW_NEAR 3     /* passes right before and right after each decode run */
#define BW_CHUNK ((int64_t)1 << 18) /* floats a thread sums in one go (1 MiB) */
#define BUSY_MAX 0.25 /* CPUs others may keep busy before a timing is redone */
#define TRIES 3       /* timings per measurement at most                     */

typedef struct {
    int64_t layers, vocab, steps, bw_mib;
    dsc_dtype dtypes[BENCH_MAX_LIST];
    int n_dtypes;
    int64_t threads[BENCH_MAX_LIST];
    int n_threads;
    int64_t contexts[BENCH_MAX_LIST];
    int n_contexts;
    const char *dir;
} options;

/* ------------------------------------------------------------ bandwidth */

/*
 * The host's memory bandwidth is shared with whatever else runs on it (other
 * VMs included, which no busy meter sees): on the 2-vCPU machine this was
 * written on, the same loop read 44 GB/s one minute and 78 the next. So the
 * buffer stays allocated for the whole run and is read right before and
 * right after every decode measurement; each row of the table is judged
 * against the bandwidth measured next to it, and also against the best
 * the run saw.
 */
typedef struct {
    float *a;
    int64_t n;                         /* floats in a                     */
    int threads[BENCH_MAX_LIST + 1];   /* 1, then those of --threads      */
    int n_threads;
    double best[BENCH_MAX_LIST + 1];   /* best GB/s (1e9 B/s) of the run  */
} bandwidth;

static double *bw_best(bandwidth *bw, int nt) {
    for (int i = 0; i < bw->n_threads; i++)
        if (bw->threads[i] == nt) return &bw->best[i];
    return NULL;
}

/* Sum of a[0..n), n a multiple of 32. The 32 partial sums, unrolled so
   they stay in registers, keep many independent additions in flight, so
   loads from memory, not the latency of one running sum, set the pace
   (without the unroll GCC keeps acc[] in memory and one core reads 30
   instead of 36 GB/s). Cloned for AVX2, which read 5-10% faster than the
   SSE2 baseline on one Zen 5 core; AVX-512 was no faster than AVX2. */
__attribute__((target_clones("avx2", "default")))
static float sum_floats(const float *a, int64_t n) {
    float acc[32] = {0}, s = 0.0f;
    for (int64_t i = 0; i < n; i += 32) {
#pragma GCC unroll 32
        for (int j = 0; j < 32; j++) acc[j] += a[i + j];
    }
    for (int j = 0; j < 32; j++) s += acc[j];
    return s;
}

/* `passes` reads of the whole buffer on nt threads, each thread summing a
   contiguous range of whole chunks. Returns the best pass's GB/s and keeps
   the run's best in bw. */
static double bw_measure(bandwidth *bw, int nt, int passes) {
    double best = 1e30;
    for (int r = 0; r < passes; r++) {
        float total = 0.0f;
        double t0 = bench_now();
#pragma omp parallel for num_threads(nt) schedule(static) reduction(+ : total)
        for (int64_t c0 = 0; c0 < bw->n; c0 += BW_CHUNK) total += sum_floats(bw->a + c0, BW_CHUNK);
        double t = bench_now() - t0;
        volatile float sink = total; /* the sum is used: the reads cannot be dropped */
        (void)sink;
        best = t < best ? t : best;
    }
    double gbs = 1e-9 * (double)bw->n * sizeof(float) / best, *run_best = bw_best(bw, nt);
    if (run_best && gbs > *run_best) *run_best = gbs;
    return gbs;
}

/* Allocate and touch the buffer (pages mapped before any timing). */
static int bw_open(bandwidth *bw, const options *o) {
    bw->n = o->bw_mib * ((int64_t)1 << 20) / (int64_t)sizeof(float);
    bw->n -= bw->n % BW_CHUNK;
    bw->a = malloc((size_t)bw->n * sizeof *bw->a);
    if (!bw->a) {
        fprintf(stderr, "error: cannot allocate %lld MiB for the bandwidth loop\n",
                (long long)o->bw_mib);
        return 1;
    }
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < bw->n; i++) bw->a[i] = 1.0f;
    bw->threads[0] = 1;
    bw->n_threads = 1;
    for (int i = 0; i < o->n_threads; i++) {
        int seen = 0;
        for (int j = 0; j < bw->n_threads; j++) seen |= bw->threads[j] == (int)o->threads[i];
        if (!seen) bw->threads[bw->n_threads++] = (int)o->threads[i];
    }
    return 0;
}

static void bw_report(bandwidth *bw, const char *when) {
    printf("\n== memory bandwidth, %s: sum of %.0f MiB of floats, best of %d passes ==\n", when,
           (double)bw->n * sizeof(float) / (double)(1 << 20), BW_PASSES);
    for (int i = 0; i < bw->n_threads; i++) {
        bench_mark c0 = bench_mark_now();
        double gbs = bw_measure(bw, bw->threads[i], BW_PASSES);
        printf("  %d thread(s): %.1f GB/s (others busy %.2f CPU)\n", bw->threads[i], gbs,
               bench_others(c0, bench_mark_now()));
    }
}

/* ------------------------------------------------------------ bytes per token */

/* What one timed configuration measured. */
typedef struct {
    double med, best;         /* seconds per step: median and best timed step     */
    double others;            /* CPUs others kept busy during the kept timed loop */
    double phase[BENCH_PH_N]; /* median seconds per block, phase-timed steps      */
    int64_t experts;          /* routed experts one token ran (all MoE layers)    */
    int kvb_copy;             /* whether mla.c wrote its fp32 copy of kv_b        */
    int tries;
    double bw;                /* GB/s read right before/after it (the better)     */
} result;

/* Bytes the model reads per decode token, by block (BENCH_PH_*). */
typedef struct {
    double w[BENCH_PH_N]; /* weights as stored; moe: without the routed experts */
    double expert;        /* one routed expert (gate + up + down)               */
    double kvb_copy;      /* fp32 copy of kv_b, all layers, when one is made    */
    double kvb_elems;     /* kv_b elements, all layers                          */
    size_t kvb_size;      /* bytes per stored kv_b element                      */
    double cache_pos;     /* latent cache bytes of one position, all layers     */
    int64_t n_dense, n_moe, K, L;
} token_bytes;

/* A tensor's bytes in its stored dtype; FP8 adds its block scales. */
static double wbytes(const dsc_wmat *w) {
    if (!w->data) return 0.0;
    double b = (double)w->rows * (double)w->cols * (double)dsc_dtype_size(w->dtype);
    if (w->dtype == DSC_F8_E4M3)
        b += (double)((w->rows + DSC_FP8_BLOCK - 1) / DSC_FP8_BLOCK) * (double)w->scale_cols * 4;
    return b;
}

static double mlp_bytes(const dsc_mlp *m) {
    return wbytes(&m->gate) + wbytes(&m->up) + wbytes(&m->down);
}

static void count_bytes(const dsc_model_t *m, token_bytes *b) {
    const dsc_config *cf = dsc_model_config(m);
    memset(b, 0, sizeof *b);
    b->L = cf->num_hidden_layers;
    b->K = cf->num_experts_per_tok;
    /* one row of the embedding */
    b->w[BENCH_PH_EMBED] = wbytes(&m->embed) / (double)m->embed.rows;
    for (int64_t l = 0; l < b->L; l++) {
        const dsc_layer *ly = &m->layers[l];
        b->w[BENCH_PH_ATTN] += wbytes(&ly->attn_norm) + wbytes(&ly->q_a) + wbytes(&ly->q_a_norm) +
                               wbytes(&ly->q_b) + wbytes(&ly->kv_a) + wbytes(&ly->kv_a_norm) +
                               wbytes(&ly->kv_b) + wbytes(&ly->o);
        double kvb_n = (double)ly->kv_b.rows * (double)ly->kv_b.cols;
        b->kvb_elems += kvb_n;
        b->kvb_size = dsc_dtype_size(ly->kv_b.dtype);
        if (ly->kv_b.dtype != DSC_F32) b->kvb_copy += 4.0 * kvb_n;
        if (ly->is_moe) {
            b->n_moe++;
            b->w[BENCH_PH_MOE] += wbytes(&ly->ffn_norm) + wbytes(&ly->router) +
                                  wbytes(&ly->router_bias) +
                                  (cf->n_shared_experts > 0 ? mlp_bytes(&ly->shared) : 0.0);
            b->expert = mlp_bytes(&ly->experts[0]); /* every expert has the same shapes */
        } else {
            b->n_dense++;
            b->w[BENCH_PH_DENSE] += wbytes(&ly->ffn_norm) + mlp_bytes(&ly->dense);
        }
    }
    b->w[BENCH_PH_HEAD] = wbytes(&m->final_norm) + wbytes(&m->lm_head);
    b->cache_pos = (double)(cf->kv_lora_rank + cf->qk_rope_head_dim) * 4.0 * (double)b->L;
}

/* Bytes per block of one token at context P, for the routed experts and
   the kv_b copy r saw: weights, plus for attention the P cache rows read,
   the new row written and the kv_b copy. Returns the total. */
static double phase_bytes(const token_bytes *b, int64_t P, const result *r, double *pb) {
    double sum = 0.0;
    for (int p = 0; p < BENCH_PH_N; p++) pb[p] = b->w[p];
    pb[BENCH_PH_ATTN] += b->cache_pos * (double)(P + 1) + (r->kvb_copy ? b->kvb_copy : 0.0);
    pb[BENCH_PH_MOE] += b->expert * (double)r->experts;
    for (int p = 0; p < BENCH_PH_N; p++) sum += pb[p];
    return sum;
}

static void print_bytes(const token_bytes *b, const options *o, dsc_dtype dt, const result *r,
                        const dsc_config *cf) {
    const double MB = 1e-6;
    double weights = b->expert * (double)r->experts;
    for (int p = 0; p < BENCH_PH_N; p++) weights += b->w[p];
    printf("\n== bytes read per decode token, %s weights as stored (1 MB = 1e6 B) ==\n",
           bench_dtype_tag(dt));
    printf("  %-30s %9.3f MB\n", "embedding row", b->w[BENCH_PH_EMBED] * MB);
    printf("  %-30s %9.2f MB  q_proj, kv_a, kv_b, o_proj, norms; %lld layers\n",
           "attention weights", b->w[BENCH_PH_ATTN] * MB, (long long)b->L);
    printf("  %-30s %9.2f MB  %lld layer(s)\n", "dense FFN", b->w[BENCH_PH_DENSE] * MB,
           (long long)b->n_dense);
    printf("  %-30s %9.2f MB  %lld layer(s)\n", "router + shared experts + norm",
           b->w[BENCH_PH_MOE] * MB, (long long)b->n_moe);
    printf("  %-30s %9.2f MB  %lld run per token, counted from the routing (%lld/layer x "
           "%lld layers), %.2f MB each\n",
           "routed experts", b->expert * (double)r->experts * MB, (long long)r->experts,
           (long long)b->K, (long long)b->n_moe, b->expert * MB);
    printf("  %-30s %9.2f MB\n", "final norm + lm_head", b->w[BENCH_PH_HEAD] * MB);
    printf("  %-30s %9.2f MB\n", "= weights per token", weights * MB);
    if (b->kvb_copy > 0)
        printf("  kv_b fp32 copy: %.2f M elements x (%zu B read, in the attention weights, + 4 B "
               "written) = %.2f MB written per call, +%.1f%% over the weights: %s\n",
               b->kvb_elems * 1e-6, b->kvb_size, b->kvb_copy * MB, 100.0 * b->kvb_copy / weights,
               r->kvb_copy ? "MADE by this decode, counted below"
                           : "not made by this decode (kv_b applied from its stored dtype)");
    else
        printf("  kv_b is stored F32: attention uses it in place, no copy\n");
    for (int i = 0; i < o->n_contexts; i++) {
        int64_t P = o->contexts[i];
        double lat = b->cache_pos * (double)P;
        /* as coded, each head reads the layer's rows twice (scores, then P.C) */
        double coded = 2.0 * (double)cf->num_attention_heads * lat;
        printf("  latent cache at context %6lld: %lld x %lld x 4 B x %lld layers = %7.1f MB read "
               "once per layer; as coded 2 x %lld heads read it = %.0f MB unless the layer's "
               "%.1f MB stays in the caches\n",
               (long long)P, (long long)P, (long long)(cf->kv_lora_rank + cf->qk_rope_head_dim),
               (long long)b->L, lat * MB, (long long)cf->num_attention_heads, coded * MB,
               lat / (double)b->L * MB);
    }
}

/* ------------------------------------------------------------ decode */

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int64_t n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/*
 * Benchmark shortcut: fill the latent cache rows 0..P-1 of every layer
 * directly (model.h internals) instead of prefilling P tokens, which would
 * take minutes at 16k. Values have the magnitudes the model writes: the
 * normalised latent has RMS 1 (kv_a_layernorm, weight 1) and the rotated
 * k_pe of a 0.02-std projection of a unit-RMS input has std ~0.9, so both
 * parts are N(0,1). Decode reads these rows like real ones; only the
 * attention weights, whose values do not change the speed, differ.
 */
static void fill_cache(dsc_ctx_t *c, int64_t P) {
    const dsc_config *cf = &c->m->cfg;
    int64_t row = cf->kv_lora_rank + cf->qk_rope_head_dim;
    for (int64_t l = 0; l < cf->num_hidden_layers; l++)
        bench_fill_normal(c->cache + l * dsc_ctx_size(c) * row, P * row, 1.0f,
                          BENCH_SEED + 10 + (uint64_t)l);
    /* dsc_forward refuses a position past n_past (no gaps since 21c2951):
       the rows are filled, so say so (their token ids are never read) */
    c->n_past = P;
}

/* Greedy next id; 0 when a logit is not finite (reported by the caller). */
static int32_t argmax(const float *x, int64_t n, int *finite) {
    int64_t best = 0;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(x[i])) *finite = 0;
        if (x[i] > x[best]) best = i;
    }
    return (int32_t)best;
}

/* Decode at context P with nt threads: WARMUP steps, then the timed loop
   (redone while others kept the machine busy, TRIES at most, the lowest
   median kept), then as many phase-timed steps at the same positions. */
static int run_decode(const dsc_model_t *m, const options *o, int nt, int64_t P, float *logits,
                      result *r) {
    const dsc_config *cf = dsc_model_config(m);
    int64_t V = cf->vocab_size, S = o->steps, p0 = P + WARMUP;
    dsc_ctx_params cp = dsc_ctx_default_params();
    cp.n_ctx = p0 + S + 1;
    cp.n_batch = 1;
    cp.n_threads = nt;
    cp.attn = DSC_ATTN_ABSORBED;
    bench_set_threads(nt);
    dsc_ctx_t *c = NULL;
    dsc_err err = {0};
    double *t = malloc((size_t)S * sizeof *t), *ph = malloc((size_t)(S * BENCH_PH_N) * sizeof *ph);
    if (!t || !ph || dsc_ctx_new(m, &cp, &c, &err) != DSC_OK) {
        fprintf(stderr, "error: dsc_ctx_new (n_ctx %lld): %s\n", (long long)cp.n_ctx,
                t && ph ? err.msg : "out of memory");
        free(t);
        free(ph);
        return 1;
    }
    fill_cache(c, P);
    int rc = 1, finite = 1;
    uint64_t st = BENCH_SEED + 5;
    int32_t id = (int32_t)(bench_mix64(&st) % (uint64_t)V), id0;
    for (int64_t i = 0; i < WARMUP; i++) {
        if (dsc_forward_last(c, &id, 1, P + i, logits, &err) != DSC_OK) goto fail;
        id = argmax(logits, V, &finite);
    }
    id0 = id;
    memset(r, 0, sizeof *r);
    r->med = 1e30;
    /* mla.c may dequantise kv_b into w.kvb on every call; a NaN planted there
       shows whether this decode does (the copy overwrites it) */
    if (c->w.kvb) c->w.kvb[0] = NAN;
    for (int tries = 0; tries < TRIES && (tries == 0 || r->others > BUSY_MAX); tries++) {
        bench_mark c0 = bench_mark_now();
        id = id0; /* the same positions and ids each try: the cache is rewritten alike */
        for (int64_t i = 0; i < S; i++) {
            double t0 = bench_now();
            if (dsc_forward_last(c, &id, 1, p0 + i, logits, &err) != DSC_OK) goto fail;
            t[i] = bench_now() - t0;
            id = argmax(logits, V, &finite);
        }
        double busy = bench_others(c0, bench_mark_now()), med = median(t, S);
        r->tries++;
        /* median() sorted t: t[0] is this try's best step */
        if (med < r->med) r->med = med, r->best = t[0], r->others = busy;
    }
    r->kvb_copy = c->w.kvb && !isnan(c->w.kvb[0]);
    for (int64_t i = 0; i < S; i++) {
        int64_t ex = 0;
        bench_forward_phases(c, &id, 1, p0 + i, logits, ph + i * BENCH_PH_N, &ex);
        r->experts = ex > r->experts ? ex : r->experts;
        id = argmax(logits, V, &finite);
    }
    for (int p = 0; p < BENCH_PH_N; p++) {
        for (int64_t i = 0; i < S; i++) t[i] = ph[i * BENCH_PH_N + p];
        r->phase[p] = median(t, S);
    }
    if (!finite) {
        fprintf(stderr, "error: non-finite logits decoding at context %lld\n", (long long)P);
        goto done;
    }
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "error: decode step at context %lld: %s\n", (long long)P, err.msg);
done:
    dsc_ctx_free(c);
    free(t);
    free(ph);
    return rc;
}

static void print_run(int nt, int64_t P, const result *r, const token_bytes *b) {
    double pb[BENCH_PH_N], sum = 0.0;
    phase_bytes(b, P, r, pb);
    printf("  %d thread(s), context %6lld: median %.1f ms/token, best %.1f (others busy %.2f "
           "CPU, %d tr%s)\n    blocks (median):",
           nt, (long long)P, 1e3 * r->med, 1e3 * r->best, r->others, r->tries,
           r->tries > 1 ? "ies" : "y");
    for (int p = 0; p < BENCH_PH_N; p++) {
        sum += r->phase[p];
        printf(" %s %.2f ms", bench_phase_name[p], 1e3 * r->phase[p]);
        if (r->phase[p] > 0 && pb[p] > 1e5) printf(" (%.1f GB/s)", 1e-9 * pb[p] / r->phase[p]);
        printf(p + 1 < BENCH_PH_N ? "," : "");
    }
    printf("; sum %.1f ms\n", 1e3 * sum);
}

/* ------------------------------------------------------------ main */

static const char legend[] =
    "MB/tok = weights touched as stored + kv_b fp32 copy if made + latent cache read once per "
    "layer\nGB/s   = MB/tok x tok/s (best = the fastest step, ms)\n"
    "bw     = GB/s the read loop reached at the same threads right before/after this row "
    "(the better)\nroof/s = bw / MB/tok; ratio = GB/s / bw (target >= 60% at context 0); "
    "r_best = GB/s / the run's best bw\nhead   = final norm + lm_head, ms (block-timed "
    "median); xh rat = the ratio without it\n"
    "busy   = CPUs other processes kept busy during the timed steps\n";

static const char usage[] =
    "usage: bench_decode [options]\n"
    "  --layers N       layers (default 4: 1 dense + 3 MoE)\n"
    "  --vocab N        vocabulary (default 102400, V2-Lite's)\n"
    "  --dtypes LIST    f32,bf16,fp8 (default bf16)\n"
    "  --threads LIST   e.g. 1,2 (default 2); bandwidth is also measured at 1\n"
    "  --contexts LIST  positions decoded from (default 0,4096,16384)\n"
    "  --steps N        timed tokens per context, median reported (default 32)\n"
    "  --bw-mib N       MiB summed by the bandwidth loop (default 2048)\n"
    "  --dir PATH       keep checkpoints in PATH/<dtype> and reuse them when their\n"
    "                   config matches (default: a temp dir, deleted at the end)\n";

int main(int argc, char **argv) {
    options o = {.layers = 4, .vocab = 102400, .steps = 32, .bw_mib = 2048,
                 .dtypes = {DSC_BF16}, .n_dtypes = 1, .threads = {2}, .n_threads = 1,
                 .contexts = {0, 4096, 16384}, .n_contexts = 3};
    const bench_opt opts[] = {
        {"--layers", BENCH_OPT_I64, &o.layers, NULL, 1, 1000},
        {"--vocab", BENCH_OPT_I64, &o.vocab, NULL, 1, INT32_MAX},
        {"--steps", BENCH_OPT_I64, &o.steps, NULL, 1, 100000},
        {"--bw-mib", BENCH_OPT_I64, &o.bw_mib, NULL, 64, 1 << 20},
        {"--dtypes", BENCH_OPT_DTYPES, o.dtypes, &o.n_dtypes, 0, 0},
        {"--threads", BENCH_OPT_LIST, o.threads, &o.n_threads, 1, 1024},
        {"--contexts", BENCH_OPT_LIST, o.contexts, &o.n_contexts, 0, (int64_t)1 << 24},
        {"--dir", BENCH_OPT_STR, &o.dir, NULL, 0, 0},
    };
    setvbuf(stdout, NULL, _IOLBF, 0); /* progress shows even when piped to a file */
    int pa = bench_parse_args(argc, argv, opts, (int)(sizeof opts / sizeof *opts), usage);
    if (pa <= 0) return pa < 0 ? 0 : 2;
    bench_shapes s = bench_v2lite_shapes(o.layers, o.vocab);
    bench_print_header("bench_decode", &s);
    printf("decode step: dsc_forward_last on 1 token, greedy argmax of its logits\n");

    result res[BENCH_MAX_LIST][BENCH_MAX_LIST][BENCH_MAX_LIST]; /* [dtype][threads][context] */
    token_bytes tb[BENCH_MAX_LIST];
    bandwidth bw = {0};
    float *logits = malloc((size_t)s.V * sizeof *logits);
    bench_store store = {.tmp = 0};
    int rc = 1;
    if (!logits) {
        fprintf(stderr, "error: out of memory for logits\n");
        goto out;
    }
    if (bw_open(&bw, &o)) goto out;
    bw_report(&bw, "at the start");
    if (bench_store_open(&store, o.dir)) goto out;
    for (int di = 0; di < o.n_dtypes; di++) {
        dsc_model_t *m = NULL;
        if (bench_load_model(&store, &s, o.dtypes[di], &m)) goto out;
        count_bytes(m, &tb[di]);
        for (int ti = 0; ti < o.n_threads; ti++)
            for (int ci = 0; ci < o.n_contexts; ci++) {
                result *r = &res[di][ti][ci];
                int nt = (int)o.threads[ti];
                double before = bw_measure(&bw, nt, BW_NEAR);
                if (run_decode(m, &o, nt, o.contexts[ci], logits, r)) {
                    dsc_model_free(m);
                    goto out;
                }
                double after = bw_measure(&bw, nt, BW_NEAR);
                r->bw = before > after ? before : after;
                if (ti == 0 && ci == 0)
                    print_bytes(&tb[di], &o, o.dtypes[di], r, dsc_model_config(m));
                print_run(nt, o.contexts[ci], r, &tb[di]);
            }
        dsc_model_free(m);
        bench_store_drop(&store, &s, o.dtypes[di]); /* free the disk before the next dtype's */
    }
    bw_report(&bw, "at the end");

    printf("\n== decode: 1 token per call at context P, %lld layers, vocab %lld; median of %lld "
           "steps after %d warm-up; %s ==\n",
           (long long)s.L, (long long)s.V, (long long)o.steps, WARMUP, dsc_kernels_simd_name());
    printf("%-5s %3s %6s | %6s %6s %6s | %7s %5s | %5s %6s %5s %6s | %6s %6s | %4s\n", "dtype",
           "thr", "ctx", "tok/s", "ms/tok", "best", "MB/tok", "GB/s", "bw", "roof/s", "ratio",
           "r_best", "head", "xh rat", "busy");
    for (int di = 0; di < o.n_dtypes; di++)
        for (int ti = 0; ti < o.n_threads; ti++)
            for (int ci = 0; ci < o.n_contexts; ci++) {
                const result *r = &res[di][ti][ci];
                double pb[BENCH_PH_N], run_best = *bw_best(&bw, (int)o.threads[ti]);
                double bytes = phase_bytes(&tb[di], o.contexts[ci], r, pb);
                double gbs = 1e-9 * bytes / r->med, tx = r->med - r->phase[BENCH_PH_HEAD];
                double gx = tx > 0 ? 1e-9 * (bytes - pb[BENCH_PH_HEAD]) / tx : 0.0;
                printf("%-5s %3d %6lld | %6.2f %6.1f %6.1f | %7.1f %5.1f | %5.1f %6.2f %4.0f%% "
                       "%5.0f%% | %6.1f %5.0f%% | %4.2f\n",
                       bench_dtype_tag(o.dtypes[di]), (int)o.threads[ti],
                       (long long)o.contexts[ci], 1.0 / r->med, 1e3 * r->med, 1e3 * r->best,
                       bytes * 1e-6, gbs, r->bw, 1e9 * r->bw / bytes, 100.0 * gbs / r->bw,
                       100.0 * gbs / run_best, 1e3 * r->phase[BENCH_PH_HEAD], 100.0 * gx / r->bw,
                       r->others);
            }
    printf("best bandwidth of the run:");
    for (int i = 0; i < bw.n_threads; i++)
        printf(" %d thread(s) %.1f GB/s;", bw.threads[i], bw.best[i]);
    printf("\n");
    fputs(legend, stdout);
    rc = 0;
out:
    bench_finish(&store, &s, o.dtypes, o.n_dtypes);
    free(logits);
    free(bw.a);
    return rc;
}
