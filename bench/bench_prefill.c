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
 *     1); per thread count a warm-up dsc_forward over `tokens` random ids at
 *     pos 0 with logits, the best of `reps` timed ones, as many runs phase by
 *     phase (attention / dense FFN / MoE / lm_head), and dsc_k_matmul alone
 *     on the model's own weights at the same shapes (for BF16/FP8 weights the
 *     library's packed kernel, not BLAS, is the real ceiling).
 *  4. The table.
 * Each measurement also says how many CPUs other processes kept busy: on a
 * small shared machine that, not dsc, can decide the time.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "dsc.h"
#include "io/safetensors.h"
#include "kernels/kernels.h"
#include "model/model.h"

#define MAX_LIST 8
#define NG_MAX 16
#define NAME_LEN 112
#define SEED 0x5eedULL
#define ROOT_CAP 4096                 /* --dir                                 */
#define DIR_CAP (ROOT_CAP + 16)       /* --dir/<dtype>                         */
#define FILE_CAP (DIR_CAP + 32)       /* --dir/<dtype>/model.safetensors       */
#define POOL_SLACK ((int64_t)1 << 20) /* lets even the biggest tensor start anywhere in 4 MiB */

/* V2-Lite shapes (spec §1.1); only layers and vocab are options. */
typedef struct {
    int64_t L, V, d, H, dn, dr, dv, dc, ff, mff, E, K, ns, n_dense, n_moe;
} shapes;

typedef struct {
    int64_t layers, tokens, vocab, reps;
    dsc_dtype dtypes[MAX_LIST];
    int n_dtypes;
    int threads[MAX_LIST];
    int n_threads;
    const char *dir;
} options;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/*
 * Other processes on the machine (a build, a test run) distort a benchmark
 * badly on few cores, so each measurement says how many CPUs the rest of the
 * machine kept busy meanwhile: all busy time in /proc/stat (steal included)
 * minus this process's own CPU time, over the wall time.
 */
typedef struct {
    double wall, busy, self;
} cpu_mark;

static cpu_mark cpu_now(void) {
    cpu_mark c = {now_s(), 0.0, 0.0};
    unsigned long long v[8] = {0};
    FILE *f = fopen("/proc/stat", "r");
    if (f && fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
                    &v[4], &v[5], &v[6], &v[7]) == 8)
        c.busy = (double)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / (double)sysconf(_SC_CLK_TCK);
    if (f) fclose(f);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    c.self = (double)ru.ru_utime.tv_sec + 1e-6 * (double)ru.ru_utime.tv_usec +
             (double)ru.ru_stime.tv_sec + 1e-6 * (double)ru.ru_stime.tv_usec;
    return c;
}

static double others_load(cpu_mark a, cpu_mark b) {
    double l = ((b.busy - a.busy) - (b.self - a.self)) / (b.wall - a.wall);
    return l > 0.0 ? l : 0.0; /* jiffies are coarse: a small negative is 0 */
}

/* OpenMP's default team size matters too: row-wise kernels (softmax) use it. */
static void set_threads(int nt) {
#ifdef _OPENMP
    omp_set_num_threads(nt);
#else
    (void)nt;
#endif
}

/* splitmix64: tiny, fast, and good enough for weights nobody reads. */
static uint64_t mix64(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* Uniform in (0, 1), never 0, so log() below is finite. */
static double unif(uint64_t *s) { return ((double)(mix64(s) >> 11) + 0.5) * 0x1p-53; }

/* n normal(0, std) values; chunks get their own seed so the result does not
   depend on the thread count. Box-Muller, two values per pair of uniforms. */
static void fill_normal(float *x, int64_t n, float std, uint64_t seed) {
    const int64_t chunk = (int64_t)1 << 20;
#pragma omp parallel for schedule(static)
    for (int64_t c0 = 0; c0 < n; c0 += chunk) {
        uint64_t s = seed ^ ((uint64_t)c0 * 0xD1B54A32D192ED03ULL);
        int64_t end = c0 + chunk < n ? c0 + chunk : n;
        for (int64_t i = c0; i < end; i += 2) {
            double r = sqrt(-2.0 * log(unif(&s))), th = 6.283185307179586 * unif(&s);
            x[i] = (float)(std * r * cos(th));
            if (i + 1 < end) x[i + 1] = (float)(std * r * sin(th));
        }
    }
}

/* ------------------------------------------------------------ FLOP model */

enum { PH_EMBED, PH_ATTN, PH_DENSE, PH_MOE, PH_HEAD, PH_N };
static const char *const phase_name[PH_N] = {"embed", "attention", "dense ffn", "moe ffn",
                                             "lm_head"};

typedef struct {
    const char *name, *formula;
    double flops;
    int phase;
} fpart;

/* 2*m*n*k for every matmul the forward runs over n tokens at pos 0, absorbed
   MLA (mla.c). Causal attention counts the visible keys only: sum over t of
   (t+1) = n(n+1)/2 (the code computes a little more: whole 64-row blocks). */
static int flop_parts(const shapes *s, int64_t n, fpart *p) {
    double N = (double)n, vis = N * (N + 1.0) / 2.0, L = (double)s->L;
    double d = (double)s->d, H = (double)s->H, dc = (double)s->dc, dr = (double)s->dr;
    double dqk = (double)(s->dn + s->dr), dmoe = (double)s->n_moe;
    int i = 0;
#define PART(nm, f, val, ph) p[i++] = (fpart){nm, f, (val), ph}
    PART("q_proj", "2 n (H dqk) d L", 2 * N * H * dqk * d * L, PH_ATTN);
    PART("kv_a_proj", "2 n (dc+dr) d L", 2 * N * (dc + dr) * d * L, PH_ATTN);
    PART("q_nope.W_UK", "2 n H dn dc L", 2 * N * H * (double)s->dn * dc * L, PH_ATTN);
    PART("scores q.[c;k_pe]", "2 H n(n+1)/2 (dc+dr) L", 2 * H * vis * (dc + dr) * L, PH_ATTN);
    PART("P.C", "2 H n(n+1)/2 dc L", 2 * H * vis * dc * L, PH_ATTN);
    PART("o_lat.W_UV", "2 n H dc dv L", 2 * N * H * dc * (double)s->dv * L, PH_ATTN);
    PART("o_proj", "2 n d (H dv) L", 2 * N * d * H * (double)s->dv * L, PH_ATTN);
    PART("dense ffn", "3 * 2 n ff d n_dense", 6 * N * (double)s->ff * d * (double)s->n_dense,
         PH_DENSE);
    PART("router", "2 n E d n_moe", 2 * N * (double)s->E * d * dmoe, PH_MOE);
    PART("shared experts", "3 * 2 n (ns mff) d n_moe",
         6 * N * (double)(s->ns * s->mff) * d * dmoe, PH_MOE);
    PART("routed experts", "3 * 2 (n K) mff d n_moe",
         6 * N * (double)s->K * (double)s->mff * d * dmoe, PH_MOE);
    PART("lm_head", "2 n V d", 2 * N * (double)s->V * d, PH_HEAD);
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

static int gemm_shapes(const shapes *s, int64_t n, gshape *g) {
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
        double t0 = now_s();
        if (w) dsc_k_matmul(k, c, a, w, g->m);
        else dsc_k_sgemm_nt(k, g->m, g->n, g->k, a, g->k, b, g->k, c, g->n, 0);
        double t = now_s() - t0;
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
        cpu_mark c0 = cpu_now();
        for (int i = 0; i < ng; i++) {
            const dsc_wmat *w = m ? pick_w(m, g[i].which) : NULL;
            if (m ? !w || g[i].count <= 0 : g[i].count <= 0 && g[i].which != W_NONE) continue;
            double ti = time_op(k, &g[i], a, b, w, c, reps);
            t[i] = t[i] <= 0 || ti < t[i] ? ti : t[i];
        }
        busy = others_load(c0, cpu_now());
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
    fill_normal(a, a_n, 1.0f, SEED + 1);
    fill_normal(b, b_n, 1.0f, SEED + 2);
    printf("\n== fp32 GEMM peak, pass %d of 2 ==\n", pass + 1);
    for (int ti = 0; ti < o->n_threads; ti++) {
        dsc_kctx *k = NULL;
        dsc_err err = {0};
        if (dsc_kctx_new(o->threads[ti], max_k, &k, &err) != DSC_OK) {
            fprintf(stderr, "error: dsc_kctx_new: %s\n", err.msg);
            goto done;
        }
        set_threads(o->threads[ti]);
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
    for (int ti = 0; ti < o->n_threads; ti++) printf("   GF/s %dt", o->threads[ti]);
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

/* ------------------------------------------------------------ checkpoint */

enum { T_NORM, T_PLAIN, T_LINEAR }; /* PLAIN: matrices V3's FP8 files keep in BF16 */

typedef struct {
    char name[NAME_LEN];
    int64_t rows, cols; /* cols == 0: a vector */
    int kind;
} tdesc;

static char *tadd(tdesc *list, int64_t *n, int kind, int64_t rows, int64_t cols) {
    tdesc *t = &list[(*n)++];
    t->kind = kind;
    t->rows = rows;
    t->cols = cols;
    return t->name;
}

/* Every tensor of spec §7.2, in file order. */
static int64_t build_tensors(const shapes *s, tdesc *t) {
    int64_t n = 0;
    snprintf(tadd(t, &n, T_PLAIN, s->V, s->d), NAME_LEN, "model.embed_tokens.weight");
    for (int64_t l = 0; l < s->L; l++) {
        long long ll = (long long)l;
        const char *pre = "model.layers.";
#define T(kind, r, c, fmt, ...) \
    snprintf(tadd(t, &n, kind, r, c), NAME_LEN, "%s%lld." fmt, pre, ll, __VA_ARGS__)
        T(T_NORM, s->d, 0, "%s", "input_layernorm.weight");
        T(T_NORM, s->d, 0, "%s", "post_attention_layernorm.weight");
        T(T_LINEAR, s->H * (s->dn + s->dr), s->d, "%s", "self_attn.q_proj.weight");
        T(T_LINEAR, s->dc + s->dr, s->d, "%s", "self_attn.kv_a_proj_with_mqa.weight");
        T(T_NORM, s->dc, 0, "%s", "self_attn.kv_a_layernorm.weight");
        T(T_LINEAR, s->H * (s->dn + s->dv), s->dc, "%s", "self_attn.kv_b_proj.weight");
        T(T_LINEAR, s->d, s->H * s->dv, "%s", "self_attn.o_proj.weight");
        if (l < s->n_dense) {
            T(T_LINEAR, s->ff, s->d, "%s", "mlp.gate_proj.weight");
            T(T_LINEAR, s->ff, s->d, "%s", "mlp.up_proj.weight");
            T(T_LINEAR, s->d, s->ff, "%s", "mlp.down_proj.weight");
            continue;
        }
        T(T_PLAIN, s->E, s->d, "%s", "mlp.gate.weight");
        T(T_LINEAR, s->ns * s->mff, s->d, "%s", "mlp.shared_experts.gate_proj.weight");
        T(T_LINEAR, s->ns * s->mff, s->d, "%s", "mlp.shared_experts.up_proj.weight");
        T(T_LINEAR, s->d, s->ns * s->mff, "%s", "mlp.shared_experts.down_proj.weight");
        for (int64_t e = 0; e < s->E; e++) {
            T(T_LINEAR, s->mff, s->d, "mlp.experts.%lld.gate_proj.weight", (long long)e);
            T(T_LINEAR, s->mff, s->d, "mlp.experts.%lld.up_proj.weight", (long long)e);
            T(T_LINEAR, s->d, s->mff, "mlp.experts.%lld.down_proj.weight", (long long)e);
        }
#undef T
    }
    snprintf(tadd(t, &n, T_NORM, s->d, 0), NAME_LEN, "model.norm.weight");
    snprintf(tadd(t, &n, T_PLAIN, s->V, s->d), NAME_LEN, "lm_head.weight");
    return n;
}

static int config_text(const shapes *s, dsc_dtype dt, char *buf, size_t cap) {
    const char *torch = dt == DSC_F32 ? "float32" : "bfloat16";
    const char *quant = dt == DSC_F8_E4M3
                            ? ",\n  \"quantization_config\": {\"quant_method\": \"fp8\", \"fmt\": "
                              "\"e4m3\", \"activation_scheme\": \"dynamic\", "
                              "\"weight_block_size\": [128, 128]}"
                            : "";
    int w = snprintf(buf, cap,
        "{\n  \"architectures\": [\"DeepseekV2ForCausalLM\"],\n  \"model_type\": \"deepseek_v2\",\n"
        "  \"vocab_size\": %lld, \"hidden_size\": %lld, \"intermediate_size\": %lld,\n"
        "  \"moe_intermediate_size\": %lld, \"num_hidden_layers\": %lld,\n"
        "  \"num_attention_heads\": %lld, \"num_key_value_heads\": %lld,\n"
        "  \"q_lora_rank\": null, \"kv_lora_rank\": %lld, \"qk_nope_head_dim\": %lld,\n"
        "  \"qk_rope_head_dim\": %lld, \"v_head_dim\": %lld,\n"
        "  \"n_routed_experts\": %lld, \"n_shared_experts\": %lld, \"num_experts_per_tok\": %lld,\n"
        "  \"first_k_dense_replace\": %lld, \"moe_layer_freq\": 1, \"topk_method\": \"greedy\",\n"
        "  \"scoring_func\": \"softmax\", \"n_group\": 1, \"topk_group\": 1,\n"
        "  \"norm_topk_prob\": false, \"routed_scaling_factor\": 1.0,\n"
        "  \"max_position_embeddings\": 163840, \"rope_theta\": 10000,\n"
        "  \"rope_scaling\": {\"type\": \"yarn\", \"factor\": 40, "
        "\"original_max_position_embeddings\": 4096,\n"
        "    \"beta_fast\": 32, \"beta_slow\": 1, \"mscale\": 0.707, \"mscale_all_dim\": 0.707},\n"
        "  \"rms_norm_eps\": 1e-06, \"hidden_act\": \"silu\", \"attention_bias\": false,\n"
        "  \"tie_word_embeddings\": false, \"bos_token_id\": 100000, \"eos_token_id\": 100001,\n"
        "  \"torch_dtype\": \"%s\"%s\n}\n",
        (long long)s->V, (long long)s->d, (long long)s->ff, (long long)s->mff, (long long)s->L,
        (long long)s->H, (long long)s->H, (long long)s->dc, (long long)s->dn, (long long)s->dr,
        (long long)s->dv, (long long)s->E, (long long)s->ns, (long long)s->K,
        (long long)s->n_dense, torch, quant);
    return w > 0 && (size_t)w < cap;
}

static int file_equals(const char *path, const char *text) {
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    size_t len = strlen(text);
    char *buf = malloc(len + 1);
    size_t got = buf ? fread(buf, 1, len + 1, f) : 0;
    int same = buf && got == len && memcmp(buf, text, len) == 0;
    free(buf);
    fclose(f);
    return same;
}

/*
 * Write dir/{model.safetensors,config.json}. dsc_st_write takes every tensor
 * at once, so instead of one buffer per tensor (9 GB at fp32 for 4 layers)
 * all tensors are windows at seeded offsets into one pool of normal values,
 * converted once per dtype: peak RSS is about one largest tensor. Each
 * window's contents differ (different offsets); speed cannot tell. FP8 uses
 * one scale for the whole pool (amax/448), so every _scale_inv block holds
 * the same value. config.json is written last: its presence means the
 * safetensors file is complete, which is what lets --dir reuse it.
 */
static int write_checkpoint(const char *dir, const shapes *s, dsc_dtype dt, const char *cfg) {
    int64_t cap = 3 + s->L * (10 + 3 * s->E), nt = 0, max_numel = 0, max_scales = 1;
    tdesc *t = calloc((size_t)cap, sizeof *t);
    char(*snames)[NAME_LEN + 16] = calloc((size_t)cap, sizeof *snames);
    dsc_st_write_entry *ent = calloc((size_t)(2 * cap), sizeof *ent);
    float *f32 = NULL, ones32[4096], sc_val = 1.0f, *scales = NULL;
    uint16_t *bf16 = NULL, ones16[4096];
    uint8_t *e4m3 = NULL;
    int rc = 1, oom = 1; /* until the writing starts, a failure is an allocation */
    if (!t || !snames || !ent) goto done;
    nt = build_tensors(s, t);
    for (int64_t i = 0; i < nt; i++) {
        int64_t numel = t[i].rows * (t[i].cols ? t[i].cols : 1);
        int64_t nsc = ((t[i].rows + 127) / 128) * ((t[i].cols + 127) / 128);
        max_numel = numel > max_numel ? numel : max_numel;
        max_scales = t[i].kind == T_LINEAR && nsc > max_scales ? nsc : max_scales;
    }
    if (s->d > 4096 || s->dc > 4096) goto done; /* the ones[] below; V2-Lite needs 2048 */
    for (int i = 0; i < 4096; i++) ones32[i] = 1.0f, ones16[i] = dsc_f32_to_bf16(1.0f);

    int64_t P = max_numel + POOL_SLACK;
    f32 = malloc((size_t)P * sizeof *f32);
    if (!f32) goto done;
    fill_normal(f32, P, 0.02f, SEED);
    if (dt != DSC_F32) {
        if (!(bf16 = malloc((size_t)P * sizeof *bf16))) goto done;
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < P; i++) bf16[i] = dsc_f32_to_bf16(f32[i]);
    }
    if (dt == DSC_F8_E4M3) {
        float amax = 0.0f;
        for (int64_t i = 0; i < P; i++) amax = fabsf(f32[i]) > amax ? fabsf(f32[i]) : amax;
        sc_val = amax / 448.0f; /* e4m3's largest finite value */
        e4m3 = malloc((size_t)P);
        scales = malloc((size_t)max_scales * sizeof *scales);
        if (!e4m3 || !scales) goto done;
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < P; i++) e4m3[i] = dsc_f32_to_e4m3(f32[i] / sc_val);
        for (int64_t i = 0; i < max_scales; i++) scales[i] = sc_val;
    }
    int64_t ne = 0;
    for (int64_t i = 0; i < nt; i++) {
        dsc_st_write_entry *e = &ent[ne++];
        uint64_t st = SEED ^ (uint64_t)(i + 1);
        int64_t numel = t[i].rows * (t[i].cols ? t[i].cols : 1);
        int64_t off = (int64_t)(mix64(&st) % (uint64_t)(P - numel + 1));
        e->name = t[i].name;
        e->ndim = t[i].cols ? 2 : 1;
        e->shape[0] = t[i].rows;
        e->shape[1] = t[i].cols;
        if (t[i].kind == T_NORM) {
            e->dtype = dt == DSC_F32 ? DSC_F32 : DSC_BF16;
            e->data = dt == DSC_F32 ? (const void *)ones32 : (const void *)ones16;
        } else if (dt == DSC_F32) {
            e->dtype = DSC_F32, e->data = f32 + off;
        } else if (dt == DSC_BF16 || t[i].kind == T_PLAIN) {
            e->dtype = DSC_BF16, e->data = bf16 + off;
        } else {
            e->dtype = DSC_F8_E4M3, e->data = e4m3 + off;
            dsc_st_write_entry *sc = &ent[ne++];
            snprintf(snames[i], sizeof snames[i], "%s_scale_inv", t[i].name);
            *sc = (dsc_st_write_entry){.name = snames[i], .dtype = DSC_F32, .ndim = 2,
                                       .shape = {(t[i].rows + 127) / 128, (t[i].cols + 127) / 128},
                                       .data = scales};
        }
    }
    /* the f32 pool is no longer referenced unless the checkpoint is fp32 */
    if (dt != DSC_F32) free(f32), f32 = NULL;

    char path[FILE_CAP];
    dsc_err err = {0};
    oom = 0;
    snprintf(path, sizeof path, "%s/config.json", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (dsc_st_write(path, ent, ne, &err) != DSC_OK) {
        fprintf(stderr, "error: writing %s: %s\n", path, err.msg);
        goto done;
    }
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "wb");
    int bad = !f || fputs(cfg, f) < 0;
    if ((f && fclose(f) != 0) || bad) {
        fprintf(stderr, "error: writing %s: %s\n", path, strerror(errno));
        goto done;
    }
    printf("  %lld tensors (+ %lld scales), pool of %.0f M values\n", (long long)nt,
           (long long)(ne - nt), (double)P / 1e6);
    rc = 0;
done:
    if (rc && oom) fprintf(stderr, "error: out of memory generating the checkpoint\n");
    free(t);
    free(snames);
    free(ent);
    free(f32);
    free(bf16);
    free(e4m3);
    free(scales);
    return rc;
}

/* ------------------------------------------------------------ prefill */

typedef struct {
    double first, best, phase[PH_N];
    double mm[NG_MAX]; /* dsc_k_matmul seconds per shape, on this model's weights */
    double others;     /* CPUs other processes used during the best run */
    double mm_busy;    /* the same during the dsc_k_matmul timing */
    int64_t runs;      /* timed dsc_forward runs (more than reps if disturbed) */
    double maxdiff;    /* logits vs this dtype's first thread count (-1: it is the first) */
    int64_t tok_min, tok_max;
} result;

/*
 * One forward, phase by phase: the same steps as dsc_forward (forward.c),
 * with a clock around each block. It uses the internals of model.h, so if
 * forward.c changes this must follow; the printed phase sum against the
 * timed dsc_forward shows any drift.
 */
static void forward_phases(dsc_ctx_t *c, const int32_t *ids, int64_t n, float *logits,
                           double *ph) {
    const dsc_model_t *m = c->m;
    const dsc_config *cf = &m->cfg;
    dsc_work *w = &c->w;
    int64_t d = cf->hidden_size;
    float eps = (float)cf->rms_norm_eps;
    for (int i = 0; i < PH_N; i++) ph[i] = 0.0;
    double t0 = now_s();
    for (int64_t t = 0; t < n; t++) dsc_wmat_row(&m->embed, ids[t], 0, d, w->x + t * d);
    ph[PH_EMBED] = now_s() - t0;
    for (int64_t l = 0; l < cf->num_hidden_layers; l++) {
        const dsc_layer *ly = &m->layers[l];
        t0 = now_s();
        dsc_k_rmsnorm(c->k, w->xn, w->x, &ly->attn_norm, n, d, eps);
        dsc_mla_forward(c, ly, l, n, 0);
        for (int64_t i = 0; i < n * d; i++) w->x[i] += w->y[i];
        double t1 = now_s();
        ph[PH_ATTN] += t1 - t0;
        dsc_k_rmsnorm(c->k, w->xn, w->x, &ly->ffn_norm, n, d, eps);
        dsc_ffn_forward(c, ly, n);
        for (int64_t i = 0; i < n * d; i++) w->x[i] += w->y[i];
        ph[ly->is_moe ? PH_MOE : PH_DENSE] += now_s() - t1;
    }
    t0 = now_s();
    dsc_k_rmsnorm(c->k, w->xn, w->x, &m->final_norm, n, d, eps);
    dsc_k_matmul(c->k, logits, w->xn, &m->lm_head, n);
    ph[PH_HEAD] = now_s() - t0;
}

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
    set_threads(nt);
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
        cpu_mark c0 = cpu_now();
        if (dsc_forward(c, ids, n, 0, logits, &err) != DSC_OK) {
            fprintf(stderr, "error: dsc_forward: %s\n", err.msg);
            goto done;
        }
        cpu_mark c1 = cpu_now();
        double t = c1.wall - c0.wall, busy = others_load(c0, c1);
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
        double ph[PH_N];
        forward_phases(c, ids, n, logits, ph);
        for (int p = 0; p < PH_N; p++)
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
           o->threads[ti], r->first, (long long)r->runs, r->best, r->others);
    if (ti > 0) printf(", logits vs %dt max |diff| %.2e", o->threads[0], r->maxdiff);
    if (r->tok_min >= 0)
        printf(", tokens/expert (last MoE layer) %lld..%lld", (long long)r->tok_min,
               (long long)r->tok_max);
    printf("\n    phases:");
    for (int p = 0; p < PH_N; p++) {
        sum += r->phase[p];
        printf(" %s %.0f ms", phase_name[p], 1e3 * r->phase[p]);
        if (fph[p] > 0 && r->phase[p] > 0) printf(" (%.0f GF/s)", 1e-9 * fph[p] / r->phase[p]);
        printf(p + 1 < PH_N ? "," : "");
    }
    printf("; sum %.0f ms\n    dsc_k_matmul alone, GF/s:", 1e3 * sum);
    for (int i = 0; i < ng; i++)
        if (r->mm[i] > 0) printf(" %s %.0f,", g[i].name, gflop(&g[i]) / r->mm[i]);
    printf(" weighted %.1f (others busy %.2f CPU)\n", weighted_peak(g, ng, r->mm, 1), r->mm_busy);
}

/* ------------------------------------------------------------ main */

static void usage(FILE *f) {
    fprintf(f,
        "usage: bench_prefill [options]\n"
        "  --layers N      layers (default 4: 1 dense + 3 MoE)\n"
        "  --tokens N      prompt length (default 512)\n"
        "  --vocab N       vocabulary (default 102400, V2-Lite's)\n"
        "  --dtypes LIST   f32,bf16,fp8 (default f32,bf16)\n"
        "  --threads LIST  e.g. 1,2 (default 1,2)\n"
        "  --dir PATH      keep checkpoints in PATH/<dtype> and reuse them when their\n"
        "                  config matches (default: a temp dir, deleted at the end)\n"
        "  --reps N        timed forwards per configuration, best reported (default 2)\n");
}

static int parse_i64(const char *s, int64_t lo, int64_t *out) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < lo) return 0;
    *out = v;
    return 1;
}

/* 1: go on, 0: bad usage, -1: help printed. */
static int parse_args(int argc, char **argv, options *o) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) return usage(stdout), -1;
        if (!v) return fprintf(stderr, "%s needs a value\n", a), 0;
        i++;
        int64_t *num = !strcmp(a, "--layers") ? &o->layers : !strcmp(a, "--tokens") ? &o->tokens
                     : !strcmp(a, "--vocab")  ? &o->vocab  : !strcmp(a, "--reps")   ? &o->reps
                                                                                    : NULL;
        if (num) {
            if (!parse_i64(v, 1, num)) return fprintf(stderr, "bad %s %s\n", a, v), 0;
        } else if (!strcmp(a, "--dir")) {
            o->dir = v;
        } else if (!strcmp(a, "--dtypes") || !strcmp(a, "--threads")) {
            int is_dt = a[2] == 'd', *cnt = is_dt ? &o->n_dtypes : &o->n_threads;
            char buf[256];
            snprintf(buf, sizeof buf, "%s", v);
            *cnt = 0;
            for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok;
                 tok = strtok_r(NULL, ",", &save)) {
                int64_t x;
                if (*cnt == MAX_LIST) return fprintf(stderr, "%s: at most %d\n", a, MAX_LIST), 0;
                if (!is_dt && parse_i64(tok, 1, &x) && x <= 1024) o->threads[(*cnt)++] = (int)x;
                else if (is_dt && (!strcmp(tok, "f32") || !strcmp(tok, "fp32")))
                    o->dtypes[(*cnt)++] = DSC_F32;
                else if (is_dt && !strcmp(tok, "bf16")) o->dtypes[(*cnt)++] = DSC_BF16;
                else if (is_dt && (!strcmp(tok, "fp8") || !strcmp(tok, "f8_e4m3")))
                    o->dtypes[(*cnt)++] = DSC_F8_E4M3;
                else return fprintf(stderr, "%s: bad item \"%s\"\n", a, tok), 0;
            }
            if (!*cnt) return fprintf(stderr, "%s: empty list\n", a), 0;
        } else {
            fprintf(stderr, "unknown option %s\n", a);
            usage(stderr);
            return 0;
        }
    }
    return 1;
}

static const char *dt_tag(dsc_dtype t) {
    return t == DSC_F32 ? "f32" : t == DSC_BF16 ? "bf16" : "fp8";
}

/* Delete what write_checkpoint made (names known: no recursive removal). */
static void remove_checkpoint(const char *dir) {
    char path[FILE_CAP];
    snprintf(path, sizeof path, "%s/config.json", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    unlink(path);
    rmdir(dir);
}

/* First "key : value" line of a /proc file whose key starts with `key`. */
static void proc_field(const char *file, const char *key, char *out, size_t cap) {
    char line[512];
    FILE *f = fopen(file, "r");
    snprintf(out, cap, "?");
    while (f && fgets(line, sizeof line, f)) {
        char *colon = strchr(line, ':');
        if (strncmp(line, key, strlen(key)) != 0 || !colon) continue;
        for (colon++; *colon == ' ' || *colon == '\t'; colon++) {}
        colon[strcspn(colon, "\n")] = 0;
        snprintf(out, cap, "%s", colon);
        break;
    }
    if (f) fclose(f);
}

int main(int argc, char **argv) {
    options o = {.layers = 4, .tokens = 512, .vocab = 102400, .reps = 2,
                 .dtypes = {DSC_F32, DSC_BF16}, .n_dtypes = 2, .threads = {1, 2}, .n_threads = 2};
    setvbuf(stdout, NULL, _IOLBF, 0); /* progress shows even when piped to a file */
    int pa = parse_args(argc, argv, &o);
    if (pa <= 0) return pa < 0 ? 0 : 2;
    shapes s = {.L = o.layers, .V = o.vocab, .d = 2048, .H = 16, .dn = 128, .dr = 64, .dv = 128,
                .dc = 512, .ff = 10944, .mff = 1408, .E = 64, .K = 6, .ns = 2};
    s.n_dense = s.L < 1 ? s.L : 1;
    s.n_moe = s.L - s.n_dense;
    int64_t n = o.tokens;

    char cpu[256], hwm[64];
    proc_field("/proc/cpuinfo", "model name", cpu, sizeof cpu);
    printf("dsc bench_prefill: CPU \"%s\", %ld online cpus, SIMD %s, GEMM %s\n", cpu,
           sysconf(_SC_NPROCESSORS_ONLN), dsc_kernels_simd_name(), dsc_kernels_blas_name());
    printf("model: DeepSeek-V2-Lite shapes, %lld layers (%lld dense + %lld MoE), vocab %lld, "
           "d %lld, H %lld, kv_lora %lld, %lld experts top-%lld + %lld shared (ff %lld)\n",
           (long long)s.L, (long long)s.n_dense, (long long)s.n_moe, (long long)s.V,
           (long long)s.d, (long long)s.H, (long long)s.dc, (long long)s.E, (long long)s.K,
           (long long)s.ns, (long long)s.mff);

    fpart fp[16];
    int nfp = flop_parts(&s, n, fp);
    double ftot = 0.0, fph[PH_N] = {0};
    for (int i = 0; i < nfp; i++) ftot += fp[i].flops, fph[fp[i].phase] += fp[i].flops;
    printf("\n== FLOPs per forward, n = %lld tokens at pos 0 (2*m*n*k per matmul) ==\n",
           (long long)n);
    for (int i = 0; i < nfp; i++)
        printf("%-18s %-26s %9.2f GFLOP %5.1f%%\n", fp[i].name, fp[i].formula, fp[i].flops * 1e-9,
               100.0 * fp[i].flops / ftot);
    printf("%-45s %9.2f GFLOP\n", "total", ftot * 1e-9);

    gshape g[NG_MAX];
    double sg[MAX_LIST][NG_MAX], g_others[MAX_LIST];
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
    result res[MAX_LIST][MAX_LIST];
    memset(res, 0, sizeof res);
    char root[ROOT_CAP], dir[DIR_CAP], cfg[4096], path[FILE_CAP];
    int rc = 1, tmp = !o.dir;
    if (!ids || !logits || !x || !ref) {
        fprintf(stderr, "error: out of memory for ids/logits\n");
        goto out;
    }
    uint64_t st = SEED + 3;
    for (int64_t i = 0; i < n; i++) ids[i] = (int32_t)(mix64(&st) % (uint64_t)s.V);
    fill_normal(x, x_n, 1.0f, SEED + 4);
    snprintf(root, sizeof root, "%s", o.dir ? o.dir : "/tmp/dsc_bench_XXXXXX");
    int made = tmp ? mkdtemp(root) != NULL : mkdir(root, 0755) == 0 || errno == EEXIST;
    if (!made) {
        fprintf(stderr, "error: cannot create %s: %s\n", root, strerror(errno));
        tmp = 0;
        goto out;
    }

    for (int di = 0; di < o.n_dtypes; di++) {
        dsc_dtype dt = o.dtypes[di];
        snprintf(dir, sizeof dir, "%s/%s", root, dt_tag(dt));
        snprintf(path, sizeof path, "%s/config.json", dir);
        if ((mkdir(dir, 0755) != 0 && errno != EEXIST) || !config_text(&s, dt, cfg, sizeof cfg)) {
            fprintf(stderr, "error: cannot create %s: %s\n", dir, strerror(errno));
            goto out;
        }
        printf("\n== %s checkpoint in %s ==\n", dt_tag(dt), dir);
        double t0 = now_s();
        if (file_equals(path, cfg)) {
            printf("  reusing it (config.json matches)\n");
        } else {
            if (write_checkpoint(dir, &s, dt, cfg)) goto out;
            printf("  generated and written in %.1f s\n", now_s() - t0);
        }
        dsc_model_t *m = NULL;
        dsc_err err = {0};
        t0 = now_s();
        if (dsc_model_load(dir, &m, &err) != DSC_OK) {
            fprintf(stderr, "error: dsc_model_load(%s): %s\n", dir, err.msg);
            goto out;
        }
        dsc_model_info info;
        dsc_model_get_info(m, &info);
        printf("  loaded in %.2f s: %.3f G params (%.3f G active/token), %.2f GiB of weights\n",
               now_s() - t0, (double)info.n_params * 1e-9, (double)info.n_params_active * 1e-9,
               (double)info.weight_bytes / (double)(1 << 30));
        for (int ti = 0; ti < o.n_threads; ti++) {
            result *r = &res[di][ti];
            r->maxdiff = ti == 0 ? -1.0 : 0.0;
            if (bench_ctx(m, &o, o.threads[ti], ids, g, ng, x, logits, ref, r)) {
                dsc_model_free(m);
                goto out;
            }
            print_run(&o, ti, r, g, ng, fph);
        }
        dsc_model_free(m);
        if (tmp) remove_checkpoint(dir); /* free the disk before the next dtype's */
    }

    if (run_gemm_peaks(&o, g, ng, sg, g_others, 1)) goto out;
    printf("\n== prefill: %lld tokens at pos 0, %lld layers, vocab %lld; %.1f GFLOP/forward "
           "(%.1f without lm_head); %s, %s ==\n",
           (long long)n, (long long)s.L, (long long)s.V, ftot * 1e-9,
           (ftot - fph[PH_HEAD]) * 1e-9, dsc_kernels_simd_name(), dsc_kernels_blas_name());
    printf("%-5s %3s %7s %8s %7s | %6s %6s | %6s %6s | %7s %7s %6s | %4s\n", "dtype", "thr",
           "tok/s", "fwd ms", "GFLOP/s", "sgemm", "ratio", "matmul", "ratio", "head ms",
           "xh GF/s", "ratio", "busy");
    for (int di = 0; di < o.n_dtypes; di++)
        for (int ti = 0; ti < o.n_threads; ti++) {
            const result *r = &res[di][ti];
            double gf = 1e-9 * ftot / r->best, pk = weighted_peak(g, ng, sg[ti], 1);
            double mk = weighted_peak(g, ng, r->mm, 1), tx = r->best - r->phase[PH_HEAD];
            double gx = tx > 0 ? 1e-9 * (ftot - fph[PH_HEAD]) / tx : 0.0;
            double px = weighted_peak(g, ng, sg[ti], 0);
            printf("%-5s %3d %7.1f %8.0f %7.1f | %6.1f %5.0f%% | %6.1f %5.0f%% | %7.0f %7.1f "
                   "%5.0f%% | %4.2f\n",
                   dt_tag(o.dtypes[di]), o.threads[ti], (double)n / r->best, 1e3 * r->best, gf,
                   pk, 100.0 * gf / pk, mk, 100.0 * gf / mk, 1e3 * r->phase[PH_HEAD], gx,
                   100.0 * gx / px, r->others);
        }
    printf("sgemm  = FLOP-weighted dsc_k_sgemm_nt (fp32 BLAS) peak on the forward's projection "
           "shapes, same threads\n         (ratio = GFLOP/s / sgemm; target >= 50%%)\n"
           "matmul = the same weighting of dsc_k_matmul alone on this dtype's weights\n"
           "xh     = without lm_head (its time from the phase runs), ratio vs sgemm without "
           "lm_head\nbusy   = CPUs other processes kept busy during the best forward (GEMM: "
           "see above)\n");
    rc = 0;
out:
    for (int di = 0; tmp && di < o.n_dtypes; di++) {
        snprintf(dir, sizeof dir, "%s/%s", root, dt_tag(o.dtypes[di]));
        remove_checkpoint(dir);
    }
    if (tmp) rmdir(root);
    proc_field("/proc/self/status", "VmHWM", hwm, sizeof hwm);
    printf("peak RSS %s (includes the mapped weights)\n", hwm);
    free(ids);
    free(logits);
    free(x);
    free(ref);
    return rc;
}
