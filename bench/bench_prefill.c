/*
 * bench_prefill.c - prefill speed of dsc on a random-weight model with
 * DeepSeek-V2-Lite's layer shapes, next to the fp32 GEMM peak measured on the
 * same shapes in the same run. A benchmark, not a test: it exits 0 whatever
 * the speed, non-zero only when something fails (a file cannot be written,
 * the model does not load, a forward errs or gives non-finite logits).
 *
 *  1. FLOPs per forward, counted analytically (2*m*n*k per matmul).
 *  2. GEMM peak: dsc_k_sgemm_nt (the fp32 BLAS path) on every projection
 *     shape of the forward, per thread count, in two passes (start and end,
 *     best kept). Weighted by how often the forward runs each shape, it is
 *     the ceiling the forward would reach if nothing but those GEMMs cost time.
 *  3. Per dtype, a checkpoint with the tensor names of spec §7.2 (config.json
 *     + model.safetensors, normal(0, 0.02) weights from a fixed seed, norms
 *     1; made and reused by common.c); per thread count a warm-up dsc_forward over `tokens` random ids at
 *     pos 0 with logits, the best of `reps` timed ones, as many runs phase by
 *     phase (attention / dense FFN / MoE / lm_head), and dsc_k_matmul alone
 *     on the model's own weights at the same shapes (for BF16/FP8 weights the
 *     library's packed kernel, not BLAS, is the real ceiling).
 *  4. The table.
 * Each measurement also says how many CPUs other processes kept busy: on a
 * small shared machine that, not dsc, can decide the time.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "dsc.h"
#include "kernels/kernels.h"
#include "model/model.h"

#define NG_MAX 16

typedef struct {
    int64_t layers, tokens, vocab, reps;
    dsc_dtype dtypes[BENCH_MAX_LIST];
    int n_dtypes;
    int64_t threads[BENCH_MAX_LIST];
    int n_threads;
    const char *dir;
} options;

/* ------------------------------------------------------------ FLOP model */

typedef struct {
    const char *name, *formula;
    double flops;
    int phase;
} fpart;

/* 2*m*n*k for every matmul the forward runs over n tokens at pos 0, absorbed
   MLA (mla.c). Causal attention counts the visible keys only: sum over t of
   (t+1) = n(n+1)/2 (the code computes a little more: whole 64-row blocks). */
static int flop_parts(const bench_shapes *s, int64_t n, fpart *p) {
    double N = (double)n, vis = N * (N + 1.0) / 2.0, L = (double)s->L;
    double d = (double)s->d, H = (double)s->H, dc = (double)s->dc, dr = (double)s->dr;
    double dqk = (double)(s->dn + s->dr), dmoe = (double)s->n_moe;
    int i = 0;
#define PART(nm, f, val, ph) p[i++] = (fpart){nm, f, (val), ph}
    PART("q_proj", "2 n (H dqk) d L", 2 * N * H * dqk * d * L, BENCH_PH_ATTN);
    PART("kv_a_proj", "2 n (dc+dr) d L", 2 * N * (dc + dr) * d * L, BENCH_PH_ATTN);
    PART("q_nope.W_UK", "2 n H dn dc L", 2 * N * H * (double)s->dn * dc * L, BENCH_PH_ATTN);
    PART("scores q.[c;k_pe]", "2 H n(n+1)/2 (dc+dr) L", 2 * H * vis * (dc + dr) * L, BENCH_PH_ATTN);
    PART("P.C", "2 H n(n+1)/2 dc L", 2 * H * vis * dc * L, BENCH_PH_ATTN);
    PART("o_lat.W_UV", "2 n H dc dv L", 2 * N * H * dc * (double)s->dv * L, BENCH_PH_ATTN);
    PART("o_proj", "2 n d (H dv) L", 2 * N * d * H * (double)s->dv * L, BENCH_PH_ATTN);
    PART("dense ffn", "3 * 2 n ff d n_dense", 6 * N * (double)s->ff * d * (double)s->n_dense,
         BENCH_PH_DENSE);
    PART("router", "2 n E d n_moe", 2 * N * (double)s->E * d * dmoe, BENCH_PH_MOE);
    PART("shared experts", "3 * 2 n (ns mff) d n_moe",
         6 * N * (double)(s->ns * s->mff) * d * dmoe, BENCH_PH_MOE);
    PART("routed experts", "3 * 2 (n K) mff d n_moe",
         6 * N * (double)s->K * (double)s->mff * d * dmoe, BENCH_PH_MOE);
    PART("lm_head", "2 n V d", 2 * N * (double)s->V * d, BENCH_PH_HEAD);
#undef PART
    return i;
}

/* ------------------------------------------------------------ GEMM peak */

/* The loaded model's weight of that shape, for timing dsc_k_matmul alone;
   W_NONE: a reference shape that is not in the forward. */
enum { W_Q, W_KVA, W_O, W_DGATE, W_DDOWN, W_ROUTER, W_SGATE, W_SDOWN, W_EGATE, W_EDOWN, W_HEAD,
       W_NONE };

typedef struct {
    const char *name;
    int64_t m, n, k;
    double count; /* times per forward */
    int which;    /* W_* */
} gshape;

static int gemm_shapes(const bench_shapes *s, int64_t n, gshape *g) {
    int64_t me = (n * s->K + s->E / 2) / s->E; /* rows an expert sees if routing is even */
    double L = (double)s->L, nd = (double)s->n_dense, nm = (double)s->n_moe;
    int64_t sff = s->ns * s->mff;
    int i = 0;
    me = me > 0 ? me : 1;
#define SHAPE(nm_, m_, n_, k_, c_, w_) g[i++] = (gshape){nm_, m_, n_, k_, c_, w_}
    SHAPE("q_proj", n, s->H * (s->dn + s->dr), s->d, L, W_Q);
    SHAPE("kv_a_proj", n, s->dc + s->dr, s->d, L, W_KVA);
    SHAPE("o_proj", n, s->d, s->H * s->dv, L, W_O);
    SHAPE("dense gate/up", n, s->ff, s->d, 2 * nd, W_DGATE);
    SHAPE("dense down", n, s->d, s->ff, nd, W_DDOWN);
    SHAPE("router", n, s->E, s->d, nm, W_ROUTER);
    SHAPE("shared gate/up", n, sff, s->d, 2 * nm, W_SGATE);
    SHAPE("shared down", n, s->d, sff, nm, W_SDOWN);
    SHAPE("expert gate/up", me, s->mff, s->d, 2 * nm * (double)s->E, W_EGATE);
    SHAPE("expert down", me, s->d, s->mff, nm * (double)s->E, W_EDOWN);
    SHAPE("lm_head", n, s->V, s->d, 1, W_HEAD);
    SHAPE("square 2048^3", 2048, 2048, 2048, 0, W_NONE);
#undef SHAPE
    return i;
}

/* Best time of C = A B^T at shape g: dsc_k_sgemm_nt with b, or dsc_k_matmul
   with w when w is set. One warm-up, then at least `reps` runs and at least
   0.3 s in all (small shapes are noisy), at most 50. */
static double time_op(dsc_kctx *k, const gshape *g, const float *a, const float *b,
                      const dsc_wmat *w, float *c, int64_t reps) {
    double best = 1e30, spent = 0.0;
    for (int64_t r = -1; r < 50 && (r < reps || spent < 0.3); r++) {
        double t0 = bench_now();
        if (w) dsc_k_matmul(k, c, a, w, g->m);
        else dsc_k_sgemm_nt(k, g->m, g->n, g->k, a, g->k, b, g->k, c, g->n, 0);
        double t = bench_now() - t0;
        if (r < 0) continue;
        spent += t;
        best = t < best ? t : best;
    }
    return best;
}

static double gflop(const gshape *g) { return 2e-9 * (double)g->m * (double)g->n * (double)g->k; }

/* FLOP-weighted peak over the forward's shapes (time[i] per shape), with
   or without lm_head: the forward's GEMM flops over their time at these rates. */
static double weighted_peak(const gshape *g, int ng, const double *time, int with_head) {
    double f = 0.0, t = 0.0;
    for (int i = 0; i < ng; i++) {
        if (g[i].count <= 0 || (g[i].which == W_HEAD && !with_head)) continue;
        f += g[i].count * gflop(&g[i]);
        t += g[i].count * time[i];
    }
    return t > 0 ? f / t : 0.0;
}

/* The loaded model's weight with shape W_* (first dense / first MoE layer). */
static const dsc_wmat *pick_w(const dsc_model_t *m, int which) {
    const dsc_layer *l0 = &m->layers[0], *ld = NULL, *lm = NULL;
    for (int64_t l = m->cfg.num_hidden_layers - 1; l >= 0; l--)
        *(m->layers[l].is_moe ? &lm : &ld) = &m->layers[l];
    switch (which) {
    case W_Q: return &l0->q_b;
    case W_KVA: return &l0->kv_a;
    case W_O: return &l0->o;
    case W_DGATE: return ld ? &ld->dense.gate : NULL;
    case W_DDOWN: return ld ? &ld->dense.down : NULL;
    case W_ROUTER: return lm ? &lm->router : NULL;
    case W_SGATE: return lm ? &lm->shared.gate : NULL;
    case W_SDOWN: return lm ? &lm->shared.down : NULL;
    case W_EGATE: return lm ? &lm->experts[0].gate : NULL;
    case W_EDOWN: return lm ? &lm->experts[0].down : NULL;
    case W_HEAD: return &m->lm_head;
    default: return NULL;
    }
}

/* Time every shape of g: dsc_k_sgemm_nt on a/b, or, when m is set,
   dsc_k_matmul on m's own weights. t[i] keeps each shape's best (0: not
   run). While other processes kept more than a quarter CPU busy, the whole
   set runs again, 3 times at most. Returns that load. */
static double time_set(dsc_kctx *k, const gshape *g, int ng, const float *a, const float *b,
                       const dsc_model_t *m, float *c, int64_t reps, double *t) {
    double busy = 0.0;
    for (int tries = 0; tries < 3 && (tries == 0 || busy > 0.25); tries++) {
        bench_mark c0 = bench_mark_now();
        for (int i = 0; i < ng; i++) {
            const dsc_wmat *w = m ? pick_w(m, g[i].which) : NULL;
            if (m ? !w || g[i].count <= 0 : g[i].count <= 0 && g[i].which != W_NONE) continue;
            double ti = time_op(k, &g[i], a, b, w, c, reps);
            t[i] = t[i] <= 0 || ti < t[i] ? ti : t[i];
        }
        busy = bench_others(c0, bench_mark_now());
    }
    return busy;
}

/*
 * dsc_k_sgemm_nt on every shape, per thread count. Run twice, at the start
 * and at the end, keeping each shape's best: on a shared machine one pass
 * can coincide with someone's build. The second pass prints the table.
 */
static int run_gemm_peaks(const options *o, const gshape *g, int ng, double (*sg)[NG_MAX],
                          double *others, int pass) {
    int64_t a_n = 0, b_n = 0, c_n = 0, max_k = 0;
    for (int i = 0; i < ng; i++) {
        a_n = g[i].m * g[i].k > a_n ? g[i].m * g[i].k : a_n;
        b_n = g[i].n * g[i].k > b_n ? g[i].n * g[i].k : b_n;
        c_n = g[i].m * g[i].n > c_n ? g[i].m * g[i].n : c_n;
        max_k = g[i].k > max_k ? g[i].k : max_k;
    }
    float *a = malloc((size_t)a_n * sizeof *a), *b = malloc((size_t)b_n * sizeof *b);
    float *c = malloc((size_t)c_n * sizeof *c);
    int rc = 1;
    if (!a || !b || !c) {
        fprintf(stderr, "error: cannot allocate GEMM buffers\n");
        goto done;
    }
    /* operand values do not matter for speed; keep them normal (no denormals) */
    bench_fill_normal(a, a_n, 1.0f, BENCH_SEED + 1);
    bench_fill_normal(b, b_n, 1.0f, BENCH_SEED + 2);
    printf("\n== fp32 GEMM peak, pass %d of 2 ==\n", pass + 1);
    for (int ti = 0; ti < o->n_threads; ti++) {
        dsc_kctx *k = NULL;
        dsc_err err = {0};
        if (dsc_kctx_new((int)o->threads[ti], max_k, &k, &err) != DSC_OK) {
            fprintf(stderr, "error: dsc_kctx_new: %s\n", err.msg);
            goto done;
        }
        bench_set_threads((int)o->threads[ti]);
        if (pass == 0) memset(sg[ti], 0, sizeof sg[ti]);
        double busy = time_set(k, g, ng, a, b, NULL, c, o->reps, sg[ti]);
        others[ti] = pass == 0 || busy > others[ti] ? busy : others[ti];
        dsc_kctx_free(k);
    }
    rc = 0;
    if (pass == 0) goto done;
    printf("dsc_k_sgemm_nt, C[M][N] = A[M][K] . B[N][K]^T, best of 2 passes x >= %lld runs\n",
           (long long)o->reps);
    printf("%-15s %6s %7s %6s %9s", "shape", "M", "N", "K", "x/forward");
    for (int ti = 0; ti < o->n_threads; ti++) printf("   GF/s %dt", (int)o->threads[ti]);
    printf("\n");
    for (int i = 0; i < ng; i++) {
        if (g[i].count <= 0 && g[i].which != W_NONE) continue; /* e.g. MoE shapes at 1 layer */
        printf("%-15s %6lld %7lld %6lld %9.0f", g[i].name, (long long)g[i].m, (long long)g[i].n,
               (long long)g[i].k, g[i].count);
        for (int ti = 0; ti < o->n_threads; ti++) printf(" %10.1f", gflop(&g[i]) / sg[ti][i]);
        printf("\n");
    }
    printf("%-40s", "FLOP-weighted peak (forward's shapes)");
    for (int ti = 0; ti < o->n_threads; ti++) printf(" %10.1f", weighted_peak(g, ng, sg[ti], 1));
    printf("\n%-40s", "  the same without lm_head");
    for (int ti = 0; ti < o->n_threads; ti++) printf(" %10.1f", weighted_peak(g, ng, sg[ti], 0));
    printf("\n%-40s", "CPUs others kept busy (worse pass)");
    for (int ti = 0; ti < o->n_threads; ti++) printf(" %10.2f", others[ti]);
    printf("\n");
done:
    free(a);
    free(b);
    free(c);
    return rc;
}

/* ------------------------------------------------------------ prefill */

typedef struct {
    double first, best, phase[BENCH_PH_N];
    double mm[NG_MAX]; /* dsc_k_matmul seconds per shape, on this model's weights */
    double others;     /* CPUs other processes used during the best run */
    double mm_busy;    /* the same during the dsc_k_matmul timing */
    int64_t runs;      /* timed dsc_forward runs (more than reps if disturbed) */
    double maxdiff;    /* logits vs this dtype's first thread count (-1: it is the first) */
    int64_t tok_min, tok_max;
} result;

/* Bench one loaded model at one thread count: warm-up + reps dsc_forward,
   reps phase-by-phase runs, then dsc_k_matmul alone on the forward's weight
   shapes. ref holds rows 0 and n-1 of the first thread count's logits
   (filled when r->maxdiff is -1). x: random activations, n x widest K. */
static int bench_ctx(const dsc_model_t *m, const options *o, int nt, const int32_t *ids,
                     const gshape *g, int ng, const float *x, float *logits, float *ref,
                     result *r) {
    const dsc_config *cf = dsc_model_config(m);
    int64_t n = o->tokens, V = cf->vocab_size;
    dsc_ctx_params cp = dsc_ctx_default_params();
    cp.n_ctx = n;
    cp.n_batch = n;
    cp.n_threads = nt;
    cp.attn = DSC_ATTN_ABSORBED;
    bench_set_threads(nt);
    dsc_ctx_t *c = NULL;
    dsc_err err = {0};
    if (dsc_ctx_new(m, &cp, &c, &err) != DSC_OK) {
        fprintf(stderr, "error: dsc_ctx_new: %s\n", err.msg);
        return 1;
    }
    int rc = 1;
    r->best = 1e30;
    /* i = -1 is the warm-up (it pages the weights in). A run during which
       other processes kept more than a quarter CPU busy does not count
       towards reps (with 2 threads on 2 cores one descheduled thread stalls
       every barrier); at most 3 x reps runs. */
    for (int64_t i = -1, clean = 0; clean < o->reps && r->runs < 3 * o->reps; i++) {
        bench_mark c0 = bench_mark_now();
        if (dsc_forward(c, ids, n, 0, logits, &err) != DSC_OK) {
            fprintf(stderr, "error: dsc_forward: %s\n", err.msg);
            goto done;
        }
        bench_mark c1 = bench_mark_now();
        double t = c1.wall - c0.wall, busy = bench_others(c0, c1);
        if (i < 0) {
            r->first = t;
            continue;
        }
        r->runs++;
        clean += busy < 0.25;
        if (t < r->best) r->best = t, r->others = busy;
    }
    for (int64_t i = 0; i < n * V; i++)
        if (!isfinite(logits[i])) {
            fprintf(stderr, "error: logit [%lld][%lld] = %g is not finite\n",
                    (long long)(i / V), (long long)(i % V), (double)logits[i]);
            goto done;
        }
    /* same weights, same ids: thread counts should agree to rounding */
    for (int k = 0; k < 2; k++) {
        const float *row = logits + (k ? n - 1 : 0) * V;
        if (r->maxdiff < 0) { /* the first thread count: keep its rows */
            memcpy(ref + k * V, row, (size_t)V * sizeof *ref);
            continue;
        }
        for (int64_t j = 0; j < V; j++) {
            double dd = fabs((double)row[j] - (double)ref[k * V + j]);
            r->maxdiff = dd > r->maxdiff ? dd : r->maxdiff;
        }
    }
    /* tokens per expert in the last MoE layer: the M its expert GEMMs saw */
    r->tok_min = r->tok_max = -1;
    int moe = dsc_config_layer_is_moe(cf, cf->num_hidden_layers - 1);
    for (int64_t e = 0; moe && e < cf->n_routed_experts; e++) {
        int64_t v = c->w.n_tok[e];
        r->tok_min = r->tok_min < 0 || v < r->tok_min ? v : r->tok_min;
        r->tok_max = v > r->tok_max ? v : r->tok_max;
    }
    /* each phase's best over reps runs: one noisy run must not decide */
    for (int64_t i = 0; i < o->reps; i++) {
        double ph[BENCH_PH_N];
        bench_forward_phases(c, ids, n, 0, logits, ph, NULL);
        for (int p = 0; p < BENCH_PH_N; p++)
            r->phase[p] = i == 0 || ph[p] < r->phase[p] ? ph[p] : r->phase[p];
    }
    /* the matmul the forward calls, alone, on its own weights (logits as y) */
    r->mm_busy = time_set(c->k, g, ng, x, NULL, m, logits, o->reps, r->mm);
    rc = 0;
done:
    dsc_ctx_free(c);
    return rc;
}

static void print_run(const options *o, int ti, const result *r, const gshape *g, int ng,
                      const double *fph) {
    double sum = 0.0;
    printf("  %d thread(s): warm-up %.2f s, best of %lld %.3f s (others busy %.2f CPU)",
           (int)o->threads[ti], r->first, (long long)r->runs, r->best, r->others);
    if (ti > 0) printf(", logits vs %dt max |diff| %.2e", (int)o->threads[0], r->maxdiff);
    if (r->tok_min >= 0)
        printf(", tokens/expert (last MoE layer) %lld..%lld", (long long)r->tok_min,
               (long long)r->tok_max);
    printf("\n    phases:");
    for (int p = 0; p < BENCH_PH_N; p++) {
        sum += r->phase[p];
        printf(" %s %.0f ms", bench_phase_name[p], 1e3 * r->phase[p]);
        if (fph[p] > 0 && r->phase[p] > 0) printf(" (%.0f GF/s)", 1e-9 * fph[p] / r->phase[p]);
        printf(p + 1 < BENCH_PH_N ? "," : "");
    }
    printf("; sum %.0f ms\n    dsc_k_matmul alone, GF/s:", 1e3 * sum);
    for (int i = 0; i < ng; i++)
        if (r->mm[i] > 0) printf(" %s %.0f,", g[i].name, gflop(&g[i]) / r->mm[i]);
    printf(" weighted %.1f (others busy %.2f CPU)\n", weighted_peak(g, ng, r->mm, 1), r->mm_busy);
}

/* ------------------------------------------------------------ main */

static const char usage[] =
    "usage: bench_prefill [options]\n"
    "  --layers N      layers (default 4: 1 dense + 3 MoE)\n"
    "  --tokens N      prompt length (default 512)\n"
    "  --vocab N       vocabulary (default 102400, V2-Lite's)\n"
    "  --dtypes LIST   f32,bf16,fp8 (default f32,bf16)\n"
    "  --threads LIST  e.g. 1,2 (default 1,2)\n"
    "  --dir PATH      keep checkpoints in PATH/<dtype> and reuse them when their\n"
    "                  config matches (default: a temp dir, deleted at the end)\n"
    "  --reps N        timed forwards per configuration, best reported (default 2)\n";

int main(int argc, char **argv) {
    options o = {.layers = 4, .tokens = 512, .vocab = 102400, .reps = 2,
                 .dtypes = {DSC_F32, DSC_BF16}, .n_dtypes = 2, .threads = {1, 2}, .n_threads = 2};
    const bench_opt opts[] = {
        {"--layers", BENCH_OPT_I64, &o.layers, NULL, 1, 1000},
        {"--tokens", BENCH_OPT_I64, &o.tokens, NULL, 1, 1 << 20},
        {"--vocab", BENCH_OPT_I64, &o.vocab, NULL, 1, INT32_MAX},
        {"--reps", BENCH_OPT_I64, &o.reps, NULL, 1, 1000},
        {"--dtypes", BENCH_OPT_DTYPES, o.dtypes, &o.n_dtypes, 0, 0},
        {"--threads", BENCH_OPT_LIST, o.threads, &o.n_threads, 1, 1024},
        {"--dir", BENCH_OPT_STR, &o.dir, NULL, 0, 0},
    };
    setvbuf(stdout, NULL, _IOLBF, 0); /* progress shows even when piped to a file */
    int pa = bench_parse_args(argc, argv, opts, (int)(sizeof opts / sizeof *opts), usage);
    if (pa <= 0) return pa < 0 ? 0 : 2;
    bench_shapes s = bench_v2lite_shapes(o.layers, o.vocab);
    int64_t n = o.tokens;
    bench_print_header("bench_prefill", &s);

    fpart fp[16];
    int nfp = flop_parts(&s, n, fp);
    double ftot = 0.0, fph[BENCH_PH_N] = {0};
    for (int i = 0; i < nfp; i++) ftot += fp[i].flops, fph[fp[i].phase] += fp[i].flops;
    printf("\n== FLOPs per forward, n = %lld tokens at pos 0 (2*m*n*k per matmul) ==\n",
           (long long)n);
    for (int i = 0; i < nfp; i++)
        printf("%-18s %-26s %9.2f GFLOP %5.1f%%\n", fp[i].name, fp[i].formula, fp[i].flops * 1e-9,
               100.0 * fp[i].flops / ftot);
    printf("%-45s %9.2f GFLOP\n", "total", ftot * 1e-9);

    gshape g[NG_MAX];
    double sg[BENCH_MAX_LIST][NG_MAX], g_others[BENCH_MAX_LIST];
    int ng = gemm_shapes(&s, n, g);
    if (run_gemm_peaks(&o, g, ng, sg, g_others, 0)) return 1;

    /* logits double as the output of the matmul timing: size for both */
    int64_t y_n = n * s.V, x_n = 0;
    for (int i = 0; i < ng; i++) {
        y_n = g[i].m * g[i].n > y_n ? g[i].m * g[i].n : y_n;
        x_n = g[i].m * g[i].k > x_n ? g[i].m * g[i].k : x_n;
    }
    int32_t *ids = malloc((size_t)n * sizeof *ids);
    float *logits = malloc((size_t)y_n * sizeof *logits), *x = malloc((size_t)x_n * sizeof *x);
    float *ref = malloc(2 * (size_t)s.V * sizeof *ref);
    result res[BENCH_MAX_LIST][BENCH_MAX_LIST];
    memset(res, 0, sizeof res);
    bench_store store = {.tmp = 0};
    int rc = 1;
    if (!ids || !logits || !x || !ref) {
        fprintf(stderr, "error: out of memory for ids/logits\n");
        goto out;
    }
    uint64_t st = BENCH_SEED + 3;
    for (int64_t i = 0; i < n; i++) ids[i] = (int32_t)(bench_mix64(&st) % (uint64_t)s.V);
    bench_fill_normal(x, x_n, 1.0f, BENCH_SEED + 4);
    if (bench_store_open(&store, o.dir)) goto out;

    for (int di = 0; di < o.n_dtypes; di++) {
        dsc_model_t *m = NULL;
        if (bench_load_model(&store, &s, o.dtypes[di], &m)) goto out;
        for (int ti = 0; ti < o.n_threads; ti++) {
            result *r = &res[di][ti];
            r->maxdiff = ti == 0 ? -1.0 : 0.0;
            if (bench_ctx(m, &o, (int)o.threads[ti], ids, g, ng, x, logits, ref, r)) {
                dsc_model_free(m);
                goto out;
            }
            print_run(&o, ti, r, g, ng, fph);
        }
        dsc_model_free(m);
        bench_store_drop(&store, &s, o.dtypes[di]); /* free the disk before the next dtype's */
    }

    if (run_gemm_peaks(&o, g, ng, sg, g_others, 1)) goto out;
    printf("\n== prefill: %lld tokens at pos 0, %lld layers, vocab %lld; %.1f GFLOP/forward "
           "(%.1f without lm_head); %s, %s ==\n",
           (long long)n, (long long)s.L, (long long)s.V, ftot * 1e-9,
           (ftot - fph[BENCH_PH_HEAD]) * 1e-9, dsc_kernels_simd_name(), dsc_kernels_blas_name());
    printf("%-5s %3s %7s %8s %7s | %6s %6s | %6s %6s | %7s %7s %6s | %4s\n", "dtype", "thr",
           "tok/s", "fwd ms", "GFLOP/s", "sgemm", "ratio", "matmul", "ratio", "head ms",
           "xh GF/s", "ratio", "busy");
    for (int di = 0; di < o.n_dtypes; di++)
        for (int ti = 0; ti < o.n_threads; ti++) {
            const result *r = &res[di][ti];
            double gf = 1e-9 * ftot / r->best, pk = weighted_peak(g, ng, sg[ti], 1);
            double mk = weighted_peak(g, ng, r->mm, 1), tx = r->best - r->phase[BENCH_PH_HEAD];
            double gx = tx > 0 ? 1e-9 * (ftot - fph[BENCH_PH_HEAD]) / tx : 0.0;
            double px = weighted_peak(g, ng, sg[ti], 0);
            printf("%-5s %3d %7.1f %8.0f %7.1f | %6.1f %5.0f%% | %6.1f %5.0f%% | %7.0f %7.1f "
                   "%5.0f%% | %4.2f\n",
                   bench_dtype_tag(o.dtypes[di]), (int)o.threads[ti], (double)n / r->best,
                   1e3 * r->best, gf, pk, 100.0 * gf / pk, mk, 100.0 * gf / mk,
                   1e3 * r->phase[BENCH_PH_HEAD], gx, 100.0 * gx / px, r->others);
        }
    printf("sgemm  = FLOP-weighted dsc_k_sgemm_nt (fp32 BLAS) peak on the forward's projection "
           "shapes, same threads\n         (ratio = GFLOP/s / sgemm; target >= 50%%)\n"
           "matmul = the same weighting of dsc_k_matmul alone on this dtype's weights\n"
           "xh     = without lm_head (its time from the phase runs), ratio vs sgemm without "
           "lm_head\nbusy   = CPUs other processes kept busy during the best forward (GEMM: "
           "see above)\n");
    rc = 0;
out:
    bench_finish(&store, &s, o.dtypes, o.n_dtypes);
    free(ids);
    free(logits);
    free(x);
    free(ref);
    return rc;
}
