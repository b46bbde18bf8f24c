/*
 * bench_nsa.c - NSA (the fast fp32 operator, src/nsa/nsa_fast.h) against
 * dsc's own dense causal attention (src/train/tk.h) on the paper's
 * efficiency shapes (spec §3 / §4.2; project issue 6 item 5): 16 query
 * heads over 1 KV head, d_k 192, d_v 128, l 32, d 16, l' 64, n 16, w 512.
 * A benchmark, not a test: it exits 0 whatever the speed, non-zero only
 * when an allocation or a call fails or an output is not finite.
 *
 * Per sequence length T (one sequence):
 *  - dense: dsc_tk_attn_fwd / _bwd per query head, the heads in parallel
 *    (as src/train/attn_mla.c does), all heads reading the one K, V; the
 *    backward's K/V gradients go to per-thread buffers that are then added
 *    (timed: GQA needs that reduction);
 *  - NSA: dsc_nsa_fast_fwd_f32 / _bwd_f32 (selection, compression and the
 *    gates' gradient included), mean pooling and/or the MLP phi;
 *  - fwd+bwd = forward time + backward time (the backward alone needs the
 *    forward's saved outputs, produced untimed before each rep);
 *  - NSA's time split by branch (thread-seconds from the operator's own
 *    clocks, as a share of the sum);
 *  - decode memory read per token from the formula (spec §4.2):
 *    NSA s/d + n*l' + w token rows vs dense s.
 * See bench/README.md ("bench_nsa").
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "common.h"
#include "kernels/kernels.h"
#include "nsa/nsa.h"
#include "nsa/nsa_decode.h"
#include "nsa/nsa_fast.h"
#include "train/tk.h"

#define HQ 16
#define DK 192
#define DV 128

typedef struct {
    int64_t lens[BENCH_MAX_LIST];
    int n_lens;
    int64_t threads, reps, bwd, dense, shared, phi_hidden, chunks;
    const char *phi;
} options;

static int cmp_dbl(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_dbl);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static void *xmalloc(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p) fprintf(stderr, "bench_nsa: out of memory (%zu bytes)\n", bytes);
    return p;
}

static int all_finite(const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return 0;
    return 1;
}

/* One measurement: median ms over reps, and the CPUs others kept busy. */
typedef struct {
    double ms, others;
} meas;

/* ---- the inputs of one length ---- */
typedef struct {
    int64_t T;
    float *q, *k, *v, *g, *dO;
} inputs;

static void inputs_free(inputs *x) {
    free(x->q), free(x->k), free(x->v), free(x->g), free(x->dO);
    memset(x, 0, sizeof *x);
}

static int inputs_make(inputs *x, int64_t T) {
    memset(x, 0, sizeof *x);
    x->T = T;
    x->q = xmalloc((size_t)(T * HQ * DK) * sizeof(float));
    x->k = xmalloc((size_t)(T * DK) * sizeof(float));
    x->v = xmalloc((size_t)(T * DV) * sizeof(float));
    x->g = xmalloc((size_t)(T * HQ * 3) * sizeof(float));
    x->dO = xmalloc((size_t)(T * HQ * DV) * sizeof(float));
    if (!x->q || !x->k || !x->v || !x->g || !x->dO) return 1;
    bench_fill_normal(x->q, T * HQ * DK, 1.0f, BENCH_SEED + 1);
    bench_fill_normal(x->k, T * DK, 1.0f, BENCH_SEED + 2);
    bench_fill_normal(x->v, T * DV, 1.0f, BENCH_SEED + 3);
    bench_fill_normal(x->dO, T * HQ * DV, 1.0f, BENCH_SEED + 4);
    bench_fill_normal(x->g, T * HQ * 3, 1.0f, BENCH_SEED + 5);
    for (int64_t i = 0; i < T * HQ * 3; i++) x->g[i] = 1.0f / (1.0f + expf(-x->g[i]));
    return 0;
}

/* ---- dense: tk attention per head, K/V shared by the 16 heads ---- */

typedef struct {
    float *O, *lse, *dQ, *ws, *dKt, *dVt;  /* dKt/dVt: per-thread (T, DK)/(T, DV) */
    int64_t ws_floats;
} dense_bufs;

static void dense_fwd(const inputs *x, dense_bufs *b, int nt) {
    int64_t T = x->T;
    dsc_op_attn_dims ad = {T, DK, DV, HQ * DK, DK, DV, HQ * DV};
    float scale = (float)(1.0 / sqrt((double)DK));
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int64_t h = 0; h < HQ; h++) {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        dsc_tk_attn_fwd(b->O + h * DV, b->lse + h * T, x->q + h * DK, x->k, x->v, &ad, scale,
                        b->ws + tid * b->ws_floats);
    }
}

/* dQ, and dK/dV summed over heads into thread 0's buffers */
static void dense_bwd(const inputs *x, dense_bufs *b, int nt) {
    int64_t T = x->T;
    dsc_op_attn_dims ad = {T, DK, DV, HQ * DK, DK, DV, HQ * DV};
    float scale = (float)(1.0 / sqrt((double)DK));
    memset(b->dQ, 0, (size_t)(T * HQ * DK) * sizeof(float));
    memset(b->dKt, 0, (size_t)(nt * T * DK) * sizeof(float));
    memset(b->dVt, 0, (size_t)(nt * T * DV) * sizeof(float));
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int64_t h = 0; h < HQ; h++) {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        dsc_tk_attn_bwd(b->dQ + h * DK, b->dKt + tid * T * DK, b->dVt + tid * T * DV,
                        x->dO + h * DV, x->q + h * DK, x->k, x->v, b->O + h * DV, b->lse + h * T,
                        &ad, scale, b->ws + tid * b->ws_floats);
    }
    for (int th = 1; th < nt; th++) {
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int64_t i = 0; i < T * DK; i++) b->dKt[i] += b->dKt[th * T * DK + i];
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int64_t i = 0; i < T * DV; i++) b->dVt[i] += b->dVt[th * T * DV + i];
    }
}

/* ---- NSA ---- */

typedef struct {
    dsc_nsa_config c;
    dsc_nsa_sizes sz;
    float *o, *o_br, *lse, *kc, *vc, *hk, *hv, *par[6], *dpar[6];
    int32_t *sel;
    float *dq, *dk, *dv, *dg;
    void *ws;
    size_t fwd_bytes, bwd_bytes;
    dsc_nsa_fast_opts op;
    double prof_f[DSC_NSA_FAST_NT], prof_b[DSC_NSA_FAST_NT];
} nsa_run;

static void nsa_free(nsa_run *r) {
    free(r->o), free(r->o_br), free(r->lse), free(r->kc), free(r->vc), free(r->hk), free(r->hv);
    free(r->sel), free(r->dq), free(r->dk), free(r->dv), free(r->dg), free(r->ws);
    for (int i = 0; i < 6; i++) free(r->par[i]), free(r->dpar[i]);
}

static int nsa_setup(nsa_run *r, const options *o, dsc_nsa_phi phi, int64_t T) {
    memset(r, 0, sizeof *r);
    r->c = (dsc_nsa_config){.l = 32, .d = 16, .l_sel = 64, .n = 16, .w = 512, .H_q = HQ,
                            .H_kv = 1, .d_k = DK, .d_v = DV, .phi = phi,
                            .phi_hidden = o->phi_hidden, .shared_kv = (int)o->shared};
    dsc_err err = {0};
    r->op = (dsc_nsa_fast_opts){(int)o->threads, (int)o->chunks, NULL, NULL};
    if (dsc_nsa_sizes_get(&r->c, T, &r->sz, &err) != DSC_OK ||
        dsc_nsa_fast_sizes(&r->c, T, &r->op, &r->fwd_bytes, &r->bwd_bytes, &err) != DSC_OK) {
        fprintf(stderr, "bench_nsa: %s\n", err.msg);
        return 1;
    }
    size_t f = sizeof(float);
    r->o = xmalloc((size_t)(T * HQ * DV) * f);
    r->o_br = xmalloc((size_t)r->sz.o_br * f);
    r->lse = xmalloc((size_t)r->sz.lse * f);
    r->kc = xmalloc((size_t)r->sz.k_cmp * f + f);
    r->vc = xmalloc((size_t)r->sz.v_cmp * f + f);
    r->hk = xmalloc((size_t)r->sz.hid * f + f);
    r->hv = xmalloc((size_t)r->sz.hid * f + f);
    r->sel = xmalloc((size_t)r->sz.sel * sizeof(int32_t));
    r->dq = xmalloc((size_t)(T * HQ * DK) * f);
    r->dk = xmalloc((size_t)(T * DK) * f * (o->shared ? 1 : 3));
    r->dv = xmalloc((size_t)(T * DV) * f * (o->shared ? 1 : 3));
    r->dg = xmalloc((size_t)(T * HQ * 3) * f);
    r->ws = xmalloc(r->fwd_bytes > r->bwd_bytes ? r->fwd_bytes : r->bwd_bytes);
    if (!r->o || !r->o_br || !r->lse || !r->kc || !r->vc || !r->hk || !r->hv || !r->sel ||
        !r->dq || !r->dk || !r->dv || !r->dg || !r->ws)
        return 1;
    if (phi == DSC_NSA_PHI_MLP) {
        const int64_t cnt[6] = {r->sz.pe_k, r->sz.w1_k, r->sz.w2_k,
                                r->sz.pe_v, r->sz.w1_v, r->sz.w2_v};
        const double sc[6] = {0.5, 1.0 / sqrt(32.0 * DK), 1.0 / sqrt((double)o->phi_hidden),
                              0.5, 1.0 / sqrt(32.0 * DV), 1.0 / sqrt((double)o->phi_hidden)};
        for (int i = 0; i < 6; i++) {
            r->par[i] = xmalloc((size_t)cnt[i] * f);
            r->dpar[i] = xmalloc((size_t)cnt[i] * f);
            if (!r->par[i] || !r->dpar[i]) return 1;
            bench_fill_normal(r->par[i], cnt[i], (float)sc[i], BENCH_SEED + 10 + (uint64_t)i);
        }
    }
    return 0;
}

/* The same K/V for the three branches when independent (the paper's
   layout costs the same work; only the tensors differ). */
static dsc_nsa_in_f32 nsa_in(const inputs *x) {
    dsc_nsa_in_f32 in = {x->q, 0, {{x->k, x->k, x->k}, 0, {x->v, x->v, x->v}, 0}, x->g, 0};
    return in;
}

static int nsa_fwd(const inputs *x, nsa_run *r, double *prof) {
    dsc_nsa_in_f32 in = nsa_in(x);
    dsc_nsa_params_f32 pp = {r->par[0], r->par[1], r->par[2], r->par[3], r->par[4], r->par[5]};
    dsc_nsa_saved_f32 sv = {r->o_br, r->lse, r->kc, r->vc, r->hk, r->hv, r->sel};
    dsc_err err = {0};
    r->op.prof = prof;
    dsc_status s = dsc_nsa_fast_fwd_f32(&r->c, x->T, &in, &pp, r->o, 0, &sv, 0, &r->op, r->ws,
                                        &err);
    if (s != DSC_OK) fprintf(stderr, "bench_nsa: fwd: %s\n", err.msg);
    return s != DSC_OK;
}

static int nsa_bwd(const inputs *x, nsa_run *r, int shared, double *prof) {
    int64_t T = x->T;
    memset(r->dq, 0, (size_t)(T * HQ * DK) * sizeof(float));
    memset(r->dk, 0, (size_t)(T * DK) * sizeof(float) * (shared ? 1 : 3));
    memset(r->dv, 0, (size_t)(T * DV) * sizeof(float) * (shared ? 1 : 3));
    memset(r->dg, 0, (size_t)(T * HQ * 3) * sizeof(float));
    dsc_nsa_in_f32 in = nsa_in(x);
    dsc_nsa_params_f32 pp = {r->par[0], r->par[1], r->par[2], r->par[3], r->par[4], r->par[5]};
    dsc_nsa_saved_f32 sv = {r->o_br, r->lse, r->kc, r->vc, r->hk, r->hv, r->sel};
    dsc_nsa_grads_f32 gr = {r->dq,
                            {r->dk, shared ? NULL : r->dk + T * DK, shared ? NULL : r->dk + 2 * T * DK},
                            {r->dv, shared ? NULL : r->dv + T * DV, shared ? NULL : r->dv + 2 * T * DV},
                            r->dg, r->dpar[0], r->dpar[1], r->dpar[2], r->dpar[3], r->dpar[4],
                            r->dpar[5]};
    dsc_err err = {0};
    r->op.prof = prof;
    dsc_status s = dsc_nsa_fast_bwd_f32(&r->c, T, &in, &pp, &sv, x->dO, 0, &gr, &r->op, r->ws,
                                        &err);
    if (s != DSC_OK) fprintf(stderr, "bench_nsa: bwd: %s\n", err.msg);
    return s != DSC_OK;
}

/* ---- timing ---- */

/* reps of fn's timed part; pre (untimed) before each */
#define TIMED(out, reps, pre, body)                                                \
    do {                                                                           \
        double v_[64];                                                             \
        double busy_ = 0;                                                          \
        for (int r_ = 0; r_ < (reps); r_++) {                                      \
            pre;                                                                   \
            bench_mark a_ = bench_mark_now();                                      \
            body;                                                                  \
            bench_mark b_ = bench_mark_now();                                      \
            v_[r_] = 1e3 * (b_.wall - a_.wall);                                    \
            busy_ += bench_others(a_, b_) * (b_.wall - a_.wall);                   \
        }                                                                          \
        double tw_ = 0;                                                            \
        for (int r_ = 0; r_ < (reps); r_++) tw_ += v_[r_] / 1e3;                   \
        (out).ms = median(v_, (reps));                                             \
        (out).others = tw_ > 0 ? busy_ / tw_ : 0;                                  \
    } while (0)

typedef struct {
    int64_t T;
    meas dense_f, dense_b, nsa_f[2], nsa_b[2];
    int have_dense, have_nsa[2];
    double prof_f[2][DSC_NSA_FAST_NT], prof_b[2][DSC_NSA_FAST_NT];
} row;

static const char *const ph_name[DSC_NSA_FAST_NT] = {"phi", "cmp", "select", "slc", "win",
                                                     "rest"};

static void print_split(const char *what, const double *p) {
    double tot = 0;
    for (int i = 0; i < DSC_NSA_FAST_NT; i++) tot += p[i];
    printf("    %-8s", what);
    for (int i = 0; i < DSC_NSA_FAST_NT; i++)
        printf(" %s %4.1f%%", ph_name[i], tot > 0 ? 100 * p[i] / tot : 0);
    printf("\n");
}

static const char usage[] =
    "usage: bench_nsa [options]\n"
    "  --lens LIST        sequence lengths (default 4096,8192,16384,32768)\n"
    "  --threads N        OpenMP threads (default 2)\n"
    "  --reps N           timed reps, median (default 3, and 1 for T >= 16384)\n"
    "  --no-bwd           forward only (also --bwd 0)\n"
    "  --dense 0|1        run the dense baseline (default 1)\n"
    "  --phi mean|mlp|both  NSA compression (default both)\n"
    "  --phi-hidden N     the MLP phi's hidden width (default 128)\n"
    "  --shared 0|1       one K/V for the three branches (default 1; 0: the paper's\n"
    "                     independent K/V, fed the same tensor three times)\n"
    "  --chunks N         the backward's accumulation chunks (default 0: 4)\n";

/* The reads of decoding token s-1 (position s-1, s tokens in the
   context) with the benchmark's l, d, l', n, w; tiny heads (the counts do
   not depend on them). 0 on success. */
static int decode_reads(int64_t s, dsc_nsa_decode_stats *out) {
    memset(out, 0, sizeof *out);
    dsc_nsa_config c = {32, 16, 64, 16, 512, 1, 1, 4, 4, DSC_NSA_PHI_MEAN, 0, 1, 0.0};
    dsc_err e = {0};
    dsc_nsa_decode_f32 *st = NULL;
    float *q = malloc((size_t)s * 4 * sizeof *q), *k = malloc((size_t)s * 4 * sizeof *k);
    float *v = malloc((size_t)s * 4 * sizeof *v), *g = malloc((size_t)s * 3 * sizeof *g);
    float *o = malloc((size_t)s * 4 * sizeof *o);
    int rc = 1;
    if (!q || !k || !v || !g || !o || dsc_nsa_decode_new_f32(&c, s, &st, &e) != DSC_OK) goto done;
    uint64_t r = 12345;
    for (int64_t i = 0; i < s * 4; i++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        q[i] = (float)((double)(r >> 11) / 9007199254740992.0 - 0.5);
        k[i] = q[i] * 0.7f;
        v[i] = q[i] * -1.3f;
    }
    for (int64_t i = 0; i < s * 3; i++) g[i] = 0.5f;
    dsc_nsa_in_f32 in = {q, 0, {{k, NULL, NULL}, 0, {v, NULL, NULL}, 0}, g, 0};
    if (s > 1 && dsc_nsa_decode_prefill_f32(st, NULL, s - 1, &in, o, 0, NULL, &e) != DSC_OK)
        goto done;
    const float *kt[3] = {k + (s - 1) * 4, NULL, NULL}, *vt[3] = {v + (s - 1) * 4, NULL, NULL};
    if (dsc_nsa_decode_step_f32(st, NULL, q + (s - 1) * 4, kt, vt, g + (s - 1) * 3,
                                o + (s - 1) * 4, NULL, out, &e) != DSC_OK)
        goto done;
    rc = 0;
done:
    if (rc) fprintf(stderr, "bench_nsa: decode reads at s = %lld: %s\n", (long long)s, e.msg);
    dsc_nsa_decode_free_f32(st);
    free(q);
    free(k);
    free(v);
    free(g);
    free(o);
    return rc;
}

int main(int argc, char **argv) {
    options o = {.lens = {4096, 8192, 16384, 32768}, .n_lens = 4, .threads = 2, .reps = 0,
                 .bwd = 1, .dense = 1, .shared = 1, .phi_hidden = 128, .chunks = 0,
                 .phi = "both"};
    /* --no-bwd is a flag; the shared parser takes "--name value" pairs */
    char **av = xmalloc((size_t)(argc + 1) * sizeof *av);
    int ac = 0;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--no-bwd"))
            o.bwd = 0;
        else
            av[ac++] = argv[i];
    }
    const bench_opt opts[] = {
        {"--lens", BENCH_OPT_LIST, o.lens, &o.n_lens, 1, 1 << 20},
        {"--threads", BENCH_OPT_I64, &o.threads, NULL, 1, 256},
        {"--reps", BENCH_OPT_I64, &o.reps, NULL, 0, 64},
        {"--bwd", BENCH_OPT_I64, &o.bwd, NULL, 0, 1},
        {"--dense", BENCH_OPT_I64, &o.dense, NULL, 0, 1},
        {"--phi", BENCH_OPT_STR, &o.phi, NULL, 0, 0},
        {"--phi-hidden", BENCH_OPT_I64, &o.phi_hidden, NULL, 1, 4096},
        {"--shared", BENCH_OPT_I64, &o.shared, NULL, 0, 1},
        {"--chunks", BENCH_OPT_I64, &o.chunks, NULL, 0, DSC_NSA_FAST_MAX_CHUNKS},
    };
    int pr = bench_parse_args(ac, av, opts, (int)(sizeof opts / sizeof opts[0]), usage);
    free(av);
    if (pr <= 0) return pr < 0 ? 0 : 2;
    int run_phi[2] = {!strcmp(o.phi, "mean") || !strcmp(o.phi, "both"),
                      !strcmp(o.phi, "mlp") || !strcmp(o.phi, "both")};
    if (!run_phi[0] && !run_phi[1]) {
        fprintf(stderr, "bad --phi %s\n%s", o.phi, usage);
        return 2;
    }
    int nt = (int)o.threads;
    bench_set_threads(nt);
    printf("dsc bench_nsa: SIMD %s, GEMM %s, %d threads\n", dsc_kernels_simd_name(),
           dsc_kernels_blas_name(), nt);
    printf("shapes: %d query heads over 1 KV head, d_k %d, d_v %d; NSA l 32, d 16, l' 64, "
           "n 16, w 512, %s K/V, chunks %lld; MLP phi hidden %lld\n",
           HQ, DK, DV, o.shared ? "shared" : "independent (same tensor x3)",
           (long long)(o.chunks ? o.chunks : DSC_NSA_FAST_CHUNKS), (long long)o.phi_hidden);
    printf("reps: %s; busy = CPUs other processes kept busy meanwhile (rerun if high)\n\n",
           o.reps ? "as given" : "3 (1 for T >= 16384), median");

    row rows[BENCH_MAX_LIST];
    memset(rows, 0, sizeof rows);
    double dense_f_per_t2 = 0, dense_b_per_t2 = 0;
    int rc = 0;
    for (int li = 0; li < o.n_lens && !rc; li++) {
        int64_t T = o.lens[li];
        int reps = o.reps ? (int)o.reps : (T >= 16384 ? 1 : 3);
        row *R = &rows[li];
        R->T = T;
        inputs x;
        if (inputs_make(&x, T)) {
            inputs_free(&x);
            rc = 1;
            break;
        }
        printf("T = %lld:\n", (long long)T);
        fflush(stdout);
        if (o.dense) {
            if (dense_f_per_t2 > 0)
                printf("  dense: expect ~%.0f s (fwd %d + fwd/bwd %d reps, from the last length)\n",
                       (double)T * T * (dense_f_per_t2 * (2 * reps) + dense_b_per_t2 * reps) / 1e3,
                       reps, reps);
            fflush(stdout);
            dense_bufs b = {0};
            b.ws_floats = dsc_tk_attn_scratch(T);
            b.O = xmalloc((size_t)(T * HQ * DV) * sizeof(float));
            b.lse = xmalloc((size_t)(T * HQ) * sizeof(float));
            b.dQ = xmalloc((size_t)(T * HQ * DK) * sizeof(float));
            b.ws = xmalloc((size_t)(nt * b.ws_floats) * sizeof(float));
            b.dKt = xmalloc((size_t)(nt * T * DK) * sizeof(float));
            b.dVt = xmalloc((size_t)(nt * T * DV) * sizeof(float));
            if (!b.O || !b.lse || !b.dQ || !b.ws || !b.dKt || !b.dVt) rc = 1;
            if (!rc) {
                TIMED(R->dense_f, reps, (void)0, dense_fwd(&x, &b, nt));
                if (o.bwd) TIMED(R->dense_b, reps, dense_fwd(&x, &b, nt), dense_bwd(&x, &b, nt));
                R->have_dense = 1;
                if (!all_finite(b.O, T * HQ * DV) || (o.bwd && !all_finite(b.dQ, T * HQ * DK))) {
                    fprintf(stderr, "bench_nsa: dense output not finite\n");
                    rc = 1;
                }
                dense_f_per_t2 = R->dense_f.ms / ((double)T * T);
                dense_b_per_t2 = R->dense_b.ms / ((double)T * T);
                printf("  dense fwd %.1f ms (busy %.2f)", R->dense_f.ms, R->dense_f.others);
                if (o.bwd) printf(", bwd %.1f ms (busy %.2f)", R->dense_b.ms, R->dense_b.others);
                printf("\n");
            }
            free(b.O), free(b.lse), free(b.dQ), free(b.ws), free(b.dKt), free(b.dVt);
        }
        for (int pi = 0; pi < 2 && !rc; pi++) {
            if (!run_phi[pi]) continue;
            nsa_run r;
            if (nsa_setup(&r, &o, pi ? DSC_NSA_PHI_MLP : DSC_NSA_PHI_MEAN, T)) {
                nsa_free(&r);
                rc = 1;
                break;
            }
            if (nsa_fwd(&x, &r, NULL)) rc = 1;   /* warm-up: pages the buffers in */
            if (!rc) TIMED(R->nsa_f[pi], reps, memset(R->prof_f[pi], 0, sizeof R->prof_f[pi]),
                           rc |= nsa_fwd(&x, &r, R->prof_f[pi]));
            if (!rc && o.bwd)
                TIMED(R->nsa_b[pi], reps,
                      (rc |= nsa_fwd(&x, &r, NULL), memset(R->prof_b[pi], 0, sizeof R->prof_b[pi])),
                      rc |= nsa_bwd(&x, &r, (int)o.shared, R->prof_b[pi]));
            if (!rc && (!all_finite(r.o, T * HQ * DV) || (o.bwd && (!all_finite(r.dq, T * HQ * DK) ||
                                                               !all_finite(r.dk, T * DK))))) {
                fprintf(stderr, "bench_nsa: NSA output not finite\n");
                rc = 1;
            }
            if (!rc) {
                R->have_nsa[pi] = 1;
                printf("  nsa (%s) fwd %.1f ms (busy %.2f)", pi ? "mlp" : "mean", R->nsa_f[pi].ms,
                       R->nsa_f[pi].others);
                if (o.bwd)
                    printf(", bwd %.1f ms (busy %.2f)", R->nsa_b[pi].ms, R->nsa_b[pi].others);
                printf("; scratch fwd %.0f MiB, bwd %.0f MiB\n", r.fwd_bytes / 1048576.0,
                       r.bwd_bytes / 1048576.0);
            }
            fflush(stdout);
            nsa_free(&r);
        }
        inputs_free(&x);
    }
    if (rc) return 1;

    printf("\n== time (ms, median) ==\n");
    printf("%7s %-5s | %12s %12s %8s | %14s %14s %8s\n", "T", "phi", "dense fwd", "nsa fwd",
           "speedup", "dense fwd+bwd", "nsa fwd+bwd", "speedup");
    for (int li = 0; li < o.n_lens; li++) {
        const row *R = &rows[li];
        for (int pi = 0; pi < 2; pi++) {
            if (!R->have_nsa[pi]) continue;
            double df = R->dense_f.ms, nf = R->nsa_f[pi].ms;
            double db = df + R->dense_b.ms, nb = nf + R->nsa_b[pi].ms;
            printf("%7lld %-5s | ", (long long)R->T, pi ? "mlp" : "mean");
            if (R->have_dense) printf("%12.1f ", df); else printf("%12s ", "-");
            printf("%12.1f ", nf);
            if (R->have_dense) printf("%7.2fx | ", df / nf); else printf("%8s | ", "-");
            if (o.bwd) {
                if (R->have_dense) printf("%14.1f ", db); else printf("%14s ", "-");
                printf("%14.1f ", nb);
                if (R->have_dense) printf("%7.2fx", db / nb); else printf("%8s", "-");
            }
            printf("\n");
        }
    }
    printf("\n== NSA time split by branch (share of thread-seconds in the operator) ==\n");
    for (int li = 0; li < o.n_lens; li++)
        for (int pi = 0; pi < 2; pi++) {
            if (!rows[li].have_nsa[pi]) continue;
            printf("  T %lld, %s:\n", (long long)rows[li].T, pi ? "mlp" : "mean");
            print_split("fwd", rows[li].prof_f[pi]);
            if (o.bwd) print_split("bwd", rows[li].prof_b[pi]);
        }
    printf("\n== decode memory read per token (token rows of K/V per KV head, spec §4.2) ==\n");
    printf("measured: one decode step of a dsc_nsa_decode state after s-1 tokens (the\n"
           "counts depend only on l, d, l', n, w and s, so the state is built with\n"
           "d_k = d_v = 4, one head); cmp + slc + win = rows read; raw = distinct raw\n"
           "rows (the window and the selected blocks overlap); bytes at the benchmark's\n"
           "d_k 192 + d_v 128 fp32 = rows x 1280 B\n");
    printf("%7s | %10s | %18s | %6s %6s %5s %6s | %9s | %8s\n", "s", "dense (s)",
           "s/d + n*l' + w", "cmp", "slc", "win", "read", "raw", "ratio");
    for (int li = 0; li < o.n_lens; li++) {
        int64_t s = o.lens[li], nsa = s / 16 + 16 * 64 + 512;
        dsc_nsa_decode_stats ds;
        int ok = decode_reads(s, &ds) == 0;
        int64_t rd = ok ? ds.cmp + ds.slc + ds.win : 0;
        printf("%7lld | %10lld | %18lld | %6lld %6lld %5lld %6lld | %9lld | %7.2fx\n",
               (long long)s, (long long)s, (long long)nsa, (long long)ds.cmp,
               (long long)ds.slc, (long long)ds.win, (long long)rd, (long long)ds.raw,
               ok && rd ? (double)s / (double)rd : 0.0);
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("\npeak RSS %.0f MiB\n", ru.ru_maxrss / 1024.0);
    return 0;
}
