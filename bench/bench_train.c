/*
 * bench_train.c - training throughput (tokens/s) of dsc's trainer against
 * PyTorch eager (transformers' DeepseekV3ForCausalLM) on the same
 * architecture, batch, sequence length and thread count, in one run; and
 * the achieved GFLOP/s against the fp32 GEMM peak measured in the same run.
 * See bench/README.md ("bench_train") for the method and the FLOP formula.
 */
#include <errno.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"
#include "dsc.h"
#include "kernels/kernels.h"
#include "model/model.h"
#include "train/init.h"
#include "train/model_train.h"
#include "train/optim.h"

#define MAX_SHAPES 64
#define MAX_STEPS 1000

typedef struct {
    const char *config, *dir, *python, *script;
    int64_t batch, seq, steps, warmup, large, torch;
    int64_t threads[BENCH_MAX_LIST];
    int n_threads;
} opts_t;

/* One linear shape of the step: y (m, n) = x (m, k) W^T, run `count` times. */
typedef struct {
    const char *name;
    int64_t m, n, k, count;
    double t_nt, t_nn, t_tn; /* best seconds of one call: fwd, dx, dW */
} shape_t;

typedef struct {
    double tok_s, step_ms, fwd_ms;
    int ok;
    char init[32];
} torch_res;

/* ------------------------------------------------------------ helpers */

static int read_config(const char *path, dsc_config *cfg) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "bench_train: cannot open %s: %s\n", path, strerror(errno));
        return 1;
    }
    char *text = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 4096 > cap) {
            cap = cap ? 2 * cap : 16384;
            char *t = realloc(text, cap);
            if (!t) {
                free(text);
                fclose(f);
                return 1;
            }
            text = t;
        }
        size_t r = fread(text + len, 1, cap - len, f);
        len += r;
        if (r == 0) break;
    }
    fclose(f);
    dsc_err e = {0};
    dsc_status s = dsc_config_parse(text, len, path, cfg, &e);
    free(text);
    if (s != DSC_OK) {
        fprintf(stderr, "bench_train: %s: %s\n", path, e.msg);
        return 1;
    }
    return 0;
}

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(p);
}

static int cmp_dbl(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int64_t n) {
    qsort(v, (size_t)n, sizeof *v, cmp_dbl);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* The larger second config: hidden 256, 6 layers, 8 heads, vocab 4096. */
static const char large_json[] =
    "{\"architectures\": [\"DeepseekV3ForCausalLM\"], \"model_type\": \"deepseek_v3\",\n"
    " \"vocab_size\": 4096, \"hidden_size\": 256, \"intermediate_size\": 688,\n"
    " \"moe_intermediate_size\": 192, \"num_hidden_layers\": 6, \"num_attention_heads\": 8,\n"
    " \"num_key_value_heads\": 8, \"q_lora_rank\": 128, \"kv_lora_rank\": 128,\n"
    " \"qk_nope_head_dim\": 32, \"qk_rope_head_dim\": 16, \"v_head_dim\": 32,\n"
    " \"n_routed_experts\": 16, \"n_shared_experts\": 1, \"num_experts_per_tok\": 2,\n"
    " \"n_group\": 1, \"topk_group\": 1, \"topk_method\": \"noaux_tc\", \"scoring_func\": "
    "\"sigmoid\",\n"
    " \"norm_topk_prob\": true, \"routed_scaling_factor\": 1.0, \"first_k_dense_replace\": 1,\n"
    " \"max_position_embeddings\": 1024, \"rms_norm_eps\": 1e-06, \"rope_theta\": 10000.0,\n"
    " \"tie_word_embeddings\": false, \"bos_token_id\": 0, \"eos_token_id\": 1,\n"
    " \"hidden_act\": \"silu\", \"attention_bias\": false}\n";

/* ------------------------------------------------------------ FLOPs */

static int add_shape(shape_t *s, int *ns, const char *name, int64_t m, int64_t n, int64_t k,
                     int64_t count) {
    if (m <= 0 || n <= 0 || k <= 0 || count <= 0) return 0;
    for (int i = 0; i < *ns; i++)
        if (s[i].m == m && s[i].n == n && s[i].k == k) {
            s[i].count += count;
            return 0;
        }
    if (*ns >= MAX_SHAPES) return 1;
    shape_t *x = &s[(*ns)++];
    memset(x, 0, sizeof *x);
    x->name = name;
    x->m = m;
    x->n = n;
    x->k = k;
    x->count = count;
    return 0;
}

/* The linears of one training step over N tokens (routed experts: m =
   N*K/E, their average rows; count E per MoE layer). */
static int step_shapes(const dsc_config *c, int64_t N, shape_t *s, int *ns) {
    int64_t d = c->hidden_size, H = c->num_attention_heads, dq = c->q_lora_rank;
    int64_t dqk = c->qk_nope_head_dim + c->qk_rope_head_dim, dc = c->kv_lora_rank;
    int64_t dr = c->qk_rope_head_dim, dn = c->qk_nope_head_dim, dv = c->v_head_dim;
    int64_t E = c->n_routed_experts, K = c->num_experts_per_tok, mf = c->moe_intermediate_size;
    int64_t msh = mf * c->n_shared_experts, L = c->num_hidden_layers;
    int64_t n_moe = 0;
    for (int64_t l = 0; l < L; l++) n_moe += dsc_config_layer_is_moe(c, l) ? 1 : 0;
    int64_t n_dense = L - n_moe;
    int err = 0;
    *ns = 0;
    if (dq > 0) {
        err |= add_shape(s, ns, "q_a", N, dq, d, L);
        err |= add_shape(s, ns, "q_b", N, H * dqk, dq, L);
    } else {
        err |= add_shape(s, ns, "q", N, H * dqk, d, L);
    }
    err |= add_shape(s, ns, "kv_a", N, dc + dr, d, L);
    err |= add_shape(s, ns, "kv_b", N, H * (dn + dv), dc, L);
    err |= add_shape(s, ns, "o", N, d, H * dv, L);
    err |= add_shape(s, ns, "dense gate/up", N, c->intermediate_size, d, 2 * n_dense);
    err |= add_shape(s, ns, "dense down", N, d, c->intermediate_size, n_dense);
    if (E > 0) {
        err |= add_shape(s, ns, "router", N, E, d, n_moe);
        err |= add_shape(s, ns, "shared gate/up", N, msh, d, 2 * n_moe);
        err |= add_shape(s, ns, "shared down", N, d, msh, n_moe);
        int64_t me = (N * K + E - 1) / E;
        err |= add_shape(s, ns, "expert gate/up", me, mf, d, 2 * E * n_moe);
        err |= add_shape(s, ns, "expert down", me, d, mf, E * n_moe);
    }
    err |= add_shape(s, ns, "lm_head", N, c->vocab_size, d, 1);
    return err;
}

/* Forward FLOPs of the linears (2 m n k each); routed experts counted for
   exactly N*K rows, not the rounded average. */
static double linear_fwd_flops(const shape_t *s, int ns) {
    double f = 0;
    for (int i = 0; i < ns; i++) f += 2.0 * (double)s[i].m * (double)s[i].n * (double)s[i].k *
                                      (double)s[i].count;
    return f;
}

/* Causal attention forward: per sequence and head, scores (dqk) and P.V (dv)
   over the T(T+1)/2 visible (query, key) pairs. */
static double attn_fwd_flops(const dsc_config *c, int64_t B, int64_t T) {
    double dqk = (double)(c->qk_nope_head_dim + c->qk_rope_head_dim);
    double pairs = (double)T * (double)(T + 1) / 2.0;
    return 2.0 * (double)B * (double)c->num_attention_heads * (double)c->num_hidden_layers *
           (dqk + (double)c->v_head_dim) * pairs;
}

/* ------------------------------------------------------------ GEMM peak */

typedef enum { G_NT, G_NN, G_TN } gkind;

static double time_gemm(dsc_kctx *k, gkind g, const shape_t *s, float *a, float *b, float *c) {
    double best = 1e30, spent = 0;
    for (int rep = 0; rep < 50 && (rep < 3 || spent < 0.15); rep++) {
        double t0 = bench_now();
        if (g == G_NT)  /* y (m,n) = x (m,k) W^T,   W (n,k) */
            dsc_k_sgemm_nt(k, s->m, s->n, s->k, a, s->k, b, s->k, c, s->n, 0);
        else if (g == G_NN) /* dx (m,k) += dy (m,n) W (n,k) */
            dsc_k_sgemm_nn(k, s->m, s->k, s->n, a, s->n, b, s->k, c, s->k, 1);
        else            /* dW (n,k) += dy^T (n,m) x (m,k) */
            dsc_k_sgemm_tn(k, s->n, s->k, s->m, a, s->n, b, s->k, c, s->k, 1);
        double dt = bench_now() - t0;
        spent += dt;
        if (dt < best) best = dt;
    }
    return best;
}

/* Times every shape (fwd / dx / dW). Returns 0 on success. */
static int measure_gemms(int nt, shape_t *s, int ns) {
    int64_t maxe = 1, maxc = 1;
    for (int i = 0; i < ns; i++) {
        int64_t e[3] = {s[i].m * s[i].k, s[i].n * s[i].k, s[i].m * s[i].n};
        for (int j = 0; j < 3; j++)
            if (e[j] > maxe) maxe = e[j];
        if (s[i].k > maxc) maxc = s[i].k;
        if (s[i].n > maxc) maxc = s[i].n;
    }
    float *a = malloc((size_t)maxe * sizeof(float)), *b = malloc((size_t)maxe * sizeof(float));
    float *c = calloc((size_t)maxe, sizeof(float));
    dsc_kctx *k = NULL;
    dsc_err e = {0};
    if (!a || !b || !c || dsc_kctx_new(nt, maxc, &k, &e) != DSC_OK) {
        fprintf(stderr, "bench_train: GEMM setup failed: %s\n", e.msg[0] ? e.msg : "no memory");
        free(a);
        free(b);
        free(c);
        return 1;
    }
    bench_fill_normal(a, maxe, 1.0f, 11);
    bench_fill_normal(b, maxe, 0.02f, 12);
    for (int i = 0; i < ns; i++) {
        memset(c, 0, (size_t)maxe * sizeof(float));
        s[i].t_nt = time_gemm(k, G_NT, &s[i], a, b, c);
        s[i].t_nn = time_gemm(k, G_NN, &s[i], a, b, c);
        s[i].t_tn = time_gemm(k, G_TN, &s[i], a, b, c);
    }
    dsc_kctx_free(k);
    free(a);
    free(b);
    free(c);
    return 0;
}

/* ------------------------------------------------------------ torch */

static int file_exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0;
}

static void run_torch(const opts_t *o, const char *cfg_path, const char *model_dir, int64_t nt,
                      torch_res *r) {
    memset(r, 0, sizeof *r);
    if (!o->torch) return;
    if (!file_exists(o->script)) {
        printf("  torch: skipped, %s not found (run from the repository root or pass "
               "--torch-script)\n", o->script);
        return;
    }
    char cmd[3 * BENCH_ROOT_CAP];
    snprintf(cmd, sizeof cmd,
             "%s '%s' --config '%s' --model-dir '%s' --batch %lld --seq %lld --threads %lld "
             "--steps %lld --warmup %lld 2>&1",
             o->python, o->script, cfg_path, model_dir, (long long)o->batch, (long long)o->seq,
             (long long)nt, (long long)o->steps, (long long)o->warmup);
    fflush(stdout);
    FILE *p = popen(cmd, "r");
    if (!p) {
        printf("  torch: skipped, cannot run %s: %s\n", o->python, strerror(errno));
        return;
    }
    char line[4096];
    while (fgets(line, sizeof line, p)) {
        if (strncmp(line, "TORCH_RESULT", 12) == 0) {
            char init[32] = "?";
            double loss = 0;
            int thr = 0;
            if (sscanf(line, "TORCH_RESULT tok_s=%lf step_ms=%lf fwd_ms=%lf loss=%lf threads=%d "
                             "init=%31s",
                       &r->tok_s, &r->step_ms, &r->fwd_ms, &loss, &thr, init) == 6) {
                r->ok = 1;
                snprintf(r->init, sizeof r->init, "%s", init);
            }
        }
        printf("  torch| %s", line);
        size_t n = strlen(line);
        if (n && line[n - 1] != '\n') printf("\n");
    }
    int rc = pclose(p);
    if (!r->ok)
        printf("  torch: no result (exit status %d); python3 with torch and transformers is "
               "needed, skipped\n", rc);
}

/* ------------------------------------------------------------ one config */

typedef struct {
    char name[64];
    int64_t nt;
    double tok_s, step_ms, fwd_ms, bwd_ms, opt_ms, gflops, peak, lin_ms, lin_fwd_ms, busy;
    torch_res tr;
} row_t;

static int bench_config(const opts_t *o, const char *name, const char *cfg_path,
                        const char *model_dir, row_t *rows, int *n_rows) {
    dsc_config cfg;
    if (read_config(cfg_path, &cfg)) return 1;
    const int64_t B = o->batch, T = o->seq, N = B * T;
    dsc_err e = {0};

    /* the checkpoint: reused from --dir when its config parses to the same dims */
    char cfg2[BENCH_ROOT_CAP + 32];
    snprintf(cfg2, sizeof cfg2, "%s/config.json", model_dir);
    dsc_config old;
    int reuse = file_exists(cfg2) && read_config(cfg2, &old) == 0 &&
                old.vocab_size == cfg.vocab_size && old.hidden_size == cfg.hidden_size &&
                old.num_hidden_layers == cfg.num_hidden_layers &&
                old.num_attention_heads == cfg.num_attention_heads &&
                old.intermediate_size == cfg.intermediate_size &&
                old.moe_intermediate_size == cfg.moe_intermediate_size &&
                old.n_routed_experts == cfg.n_routed_experts &&
                old.num_experts_per_tok == cfg.num_experts_per_tok &&
                old.q_lora_rank == cfg.q_lora_rank && old.kv_lora_rank == cfg.kv_lora_rank;
    if (!reuse) {
        dsc_init_params ip = dsc_init_default_params();
        ip.seed = BENCH_SEED;
        if (dsc_train_init_save(model_dir, &cfg, &ip, &e) != DSC_OK) {
            fprintf(stderr, "bench_train: init %s: %s\n", model_dir, e.msg);
            return 1;
        }
    }
    dsc_model_t *m = NULL;
    if (dsc_model_load(model_dir, &m, &e) != DSC_OK) {
        fprintf(stderr, "bench_train: load %s: %s\n", model_dir, e.msg);
        return 1;
    }

    shape_t sh[MAX_SHAPES];
    int ns = 0;
    if (step_shapes(&cfg, N, sh, &ns)) {
        dsc_model_free(m);
        return 1;
    }
    /* exact FLOPs: routed experts on N*K rows in all */
    double f_lin = linear_fwd_flops(sh, ns);
    for (int i = 0; i < ns; i++)
        if (sh[i].m != N) {
            f_lin -= 2.0 * (double)sh[i].m * sh[i].n * sh[i].k * (double)sh[i].count;
            f_lin += 2.0 * (double)(N * cfg.num_experts_per_tok) / (double)cfg.n_routed_experts *
                     sh[i].n * sh[i].k * (double)sh[i].count;
        }
    double f_att = attn_fwd_flops(&cfg, B, T);
    double f_step = 3.0 * f_lin + 3.0 * f_att;

    printf("\n== %s: %s, B %lld, T %lld (%lld tokens/step), %s\n", name, cfg_path, (long long)B,
           (long long)T, (long long)N, reuse ? "checkpoint reused" : "new checkpoint");
    printf("   d %lld, %lld layers, H %lld, q_lora %lld, kv_lora %lld, dqk %lld+%lld, dv %lld, "
           "ff %lld, %lld experts top-%lld + %lld shared (ff %lld), vocab %lld\n",
           (long long)cfg.hidden_size, (long long)cfg.num_hidden_layers,
           (long long)cfg.num_attention_heads, (long long)cfg.q_lora_rank,
           (long long)cfg.kv_lora_rank, (long long)cfg.qk_nope_head_dim,
           (long long)cfg.qk_rope_head_dim, (long long)cfg.v_head_dim,
           (long long)cfg.intermediate_size, (long long)cfg.n_routed_experts,
           (long long)cfg.num_experts_per_tok, (long long)cfg.n_shared_experts,
           (long long)cfg.moe_intermediate_size, (long long)cfg.vocab_size);
    printf("   FLOPs/step = 6 x %.3f M linear params touched/token x %lld tokens (%.3f G; %d "
           "shapes) + 3 x %.3f G causal attention fwd = %.3f GFLOP (%.1f%% attention)\n",
           f_lin / 2.0 / (double)N / 1e6, (long long)N, 3.0 * f_lin / 1e9, ns, f_att / 1e9,
           f_step / 1e9, 100.0 * 3.0 * f_att / f_step);

    int32_t *tok = malloc((size_t)(B * (T + 1)) * sizeof *tok);
    double *times = malloc((size_t)(o->steps + o->warmup) * sizeof(double));
    double *ftimes = malloc((size_t)(o->steps) * sizeof(double));
    double *otimes = malloc((size_t)(o->steps) * sizeof(double));
    if (!tok || !times || !ftimes || !otimes) {
        dsc_model_free(m);
        free(tok);
        free(times);
        free(ftimes);
        free(otimes);
        return 1;
    }
    uint64_t st = 77;
    for (int64_t i = 0; i < B * (T + 1); i++)
        tok[i] = (int32_t)(bench_mix64(&st) % (uint64_t)cfg.vocab_size);

    int rc = 0;
    for (int ti = 0; ti < o->n_threads && !rc; ti++) {
        int64_t nt = o->threads[ti];
        bench_set_threads((int)nt);
        /* GEMM peak at these threads */
        if (measure_gemms((int)nt, sh, ns)) {
            rc = 1;
            break;
        }
        double t_nt = 0, t_lin = 0, f_nt = 0;
        for (int i = 0; i < ns; i++) {
            double f = 2.0 * (double)sh[i].m * sh[i].n * sh[i].k;
            f_nt += f * (double)sh[i].count;
            t_nt += sh[i].t_nt * (double)sh[i].count;
            t_lin += (sh[i].t_nt + sh[i].t_nn + sh[i].t_tn) * (double)sh[i].count;
        }
        double peak = f_nt / t_nt / 1e9;
        printf("-- %lld thread(s): sgemm_nt peak (FLOP-weighted over the step's shapes) %.1f "
               "GFLOP/s\n", (long long)nt, peak);
        for (int i = 0; i < ns; i++)
            printf("     %-15s m %5lld n %5lld k %5lld  x%-4lld  nt %6.1f  nn %6.1f  tn %6.1f "
                   "GFLOP/s\n", sh[i].name, (long long)sh[i].m, (long long)sh[i].n,
                   (long long)sh[i].k, (long long)sh[i].count,
                   2.0 * sh[i].m * sh[i].n * sh[i].k / sh[i].t_nt / 1e9,
                   2.0 * sh[i].m * sh[i].n * sh[i].k / sh[i].t_nn / 1e9,
                   2.0 * sh[i].m * sh[i].n * sh[i].k / sh[i].t_tn / 1e9);

        /* the trainer picks its thread count (OpenMP default) when it is made */
        dsc_train_model_t *tm = NULL;
        if (dsc_train_model_new(m, B, T, &tm, &e) != DSC_OK) {
            fprintf(stderr, "bench_train: train model: %s\n", e.msg);
            rc = 1;
            break;
        }
        int64_t np = 0;
        const dsc_param *params = dsc_train_model_params(tm, &np);
        dsc_adamw_params hp = dsc_adamw_default_params();
        dsc_adamw_t *opt = NULL;
        if (dsc_adamw_new(&hp, params, np, &opt, &e) != DSC_OK) {
            fprintf(stderr, "bench_train: adamw: %s\n", e.msg);
            dsc_train_model_free(tm);
            rc = 1;
            break;
        }
        double loss = 0;
        bench_mark m0 = bench_mark_now();
        for (int64_t s = 0; s < o->warmup + o->steps && !rc; s++) {
            double t0 = bench_now();
            if (dsc_train_forward_backward(tm, tok, B, T, &loss, &e) != DSC_OK || !isfinite(loss)) {
                fprintf(stderr, "bench_train: step: %s (loss %g)\n", e.msg, loss);
                rc = 1;
            }
            double t1 = bench_now();
            dsc_adamw_step(opt, 1e-4);
            double t2 = bench_now();
            times[s] = t2 - t0;
            if (s >= o->warmup) otimes[s - o->warmup] = t2 - t1;
        }
        bench_mark m1 = bench_mark_now();
        for (int64_t s = 0; s < o->steps && !rc; s++) {
            double t0 = bench_now();
            if (dsc_train_forward(tm, tok, B, T, &loss, &e) != DSC_OK) rc = 1;
            ftimes[s] = bench_now() - t0;
        }
        dsc_adamw_free(opt);
        dsc_train_model_free(tm);
        if (rc) break;
        double *tm_steps = times + o->warmup;
        printf("     dsc steps ms:");
        for (int64_t s = 0; s < o->steps; s++) printf(" %.1f", tm_steps[s] * 1e3);
        printf("  (loss %.4f)\n", loss);
        row_t *r = &rows[(*n_rows)++];
        snprintf(r->name, sizeof r->name, "%s", name);
        r->nt = nt;
        r->step_ms = median(tm_steps, o->steps) * 1e3;
        r->fwd_ms = median(ftimes, o->steps) * 1e3;
        r->opt_ms = median(otimes, o->steps) * 1e3;
        r->bwd_ms = r->step_ms - r->fwd_ms - r->opt_ms;
        r->tok_s = (double)N / (r->step_ms / 1e3);
        r->gflops = f_step / (r->step_ms / 1e3) / 1e9;
        r->peak = peak;
        r->lin_ms = t_lin * 1e3;
        r->lin_fwd_ms = t_nt * 1e3;
        r->busy = bench_others(m0, m1);
        printf("     dsc: %.1f tok/s, step %.1f ms = fwd %.1f + bwd %.1f + AdamW %.1f; "
               "%.2f GFLOP/s (%.0f%% of peak); busy %.2f\n",
               r->tok_s, r->step_ms, r->fwd_ms, r->bwd_ms, r->opt_ms, r->gflops,
               100.0 * r->gflops / peak, r->busy);
        printf("     linears at the timed GEMM speed: fwd %.1f ms, fwd+bwd %.1f ms (%.0f%% of "
               "the fwd+bwd); the rest (attention, MoE routing/gather, norms, RoPE, CE, "
               "elementwise) %.1f ms\n",
               r->lin_fwd_ms, r->lin_ms, 100.0 * r->lin_ms / (r->fwd_ms + r->bwd_ms),
               r->fwd_ms + r->bwd_ms - r->lin_ms);
        run_torch(o, cfg_path, model_dir, nt, &r->tr);
    }
    free(tok);
    free(times);
    free(ftimes);
    free(otimes);
    dsc_model_free(m);
    return rc;
}

/* ------------------------------------------------------------ main */

static const char usage[] =
    "usage: bench_train [options]\n"
    "  --config PATH        config.json of the first model (configs/demo-v3-tiny.json)\n"
    "  --large 0|1          also a larger model: d 256, 6 layers, 8 heads, 16 experts (1)\n"
    "  --batch N            sequences per step (8)\n"
    "  --seq N              tokens per sequence (128)\n"
    "  --threads LIST       thread counts (1,2)\n"
    "  --steps N            timed steps, median reported (5)\n"
    "  --warmup N           untimed steps first (2)\n"
    "  --dir PATH           keep the checkpoints in PATH/<name> and reuse them (temp dir)\n"
    "  --torch 0|1          run the PyTorch companion (1)\n"
    "  --python CMD         python interpreter (python3)\n"
    "  --torch-script PATH  the companion (bench/bench_train_torch.py)\n";

int main(int argc, char **argv) {
    opts_t o = {"configs/demo-v3-tiny.json", NULL, "python3", "bench/bench_train_torch.py",
                8, 128, 5, 2, 1, 1, {1, 2}, 2};
    const bench_opt opts[] = {
        {"--config", BENCH_OPT_STR, &o.config, NULL, 0, 0},
        {"--large", BENCH_OPT_I64, &o.large, NULL, 0, 1},
        {"--batch", BENCH_OPT_I64, &o.batch, NULL, 1, 4096},
        {"--seq", BENCH_OPT_I64, &o.seq, NULL, 1, 1 << 16},
        {"--threads", BENCH_OPT_LIST, o.threads, &o.n_threads, 1, 1024},
        {"--steps", BENCH_OPT_I64, &o.steps, NULL, 1, MAX_STEPS},
        {"--warmup", BENCH_OPT_I64, &o.warmup, NULL, 0, MAX_STEPS},
        {"--dir", BENCH_OPT_STR, &o.dir, NULL, 0, 0},
        {"--torch", BENCH_OPT_I64, &o.torch, NULL, 0, 1},
        {"--python", BENCH_OPT_STR, &o.python, NULL, 0, 0},
        {"--torch-script", BENCH_OPT_STR, &o.script, NULL, 0, 0},
    };
    int pa = bench_parse_args(argc, argv, opts, (int)(sizeof opts / sizeof *opts), usage);
    if (pa <= 0) return pa < 0 ? 0 : 2;

    char root[BENCH_ROOT_CAP];
    int tmp = o.dir == NULL;
    if (tmp) {
        snprintf(root, sizeof root, "/tmp/dsc_bench_train_XXXXXX");
        if (!mkdtemp(root)) {
            fprintf(stderr, "bench_train: mkdtemp: %s\n", strerror(errno));
            return 1;
        }
    } else {
        snprintf(root, sizeof root, "%s", o.dir);
        if (mkdir(root, 0755) != 0 && errno != EEXIST) {
            fprintf(stderr, "bench_train: mkdir %s: %s\n", root, strerror(errno));
            return 1;
        }
    }
    printf("dsc bench_train: %ld online cpus, SIMD %s, GEMM %s; B %lld, T %lld, warm-up %lld, "
           "median of %lld steps (forward + backward + AdamW)\n",
           sysconf(_SC_NPROCESSORS_ONLN), dsc_kernels_simd_name(), dsc_kernels_blas_name(),
           (long long)o.batch, (long long)o.seq, (long long)o.warmup, (long long)o.steps);

    row_t rows[2 * BENCH_MAX_LIST];
    int n_rows = 0, rc = 0;
    char mdir[BENCH_ROOT_CAP + 32], lpath[BENCH_ROOT_CAP + 32];
    snprintf(mdir, sizeof mdir, "%s/demo", root);
    rc = bench_config(&o, "demo", o.config, mdir, rows, &n_rows);
    if (!rc && o.large) {
        snprintf(lpath, sizeof lpath, "%s/large.json", root);
        FILE *f = fopen(lpath, "w");
        if (!f || fputs(large_json, f) < 0 || fclose(f) != 0) {
            fprintf(stderr, "bench_train: cannot write %s\n", lpath);
            rc = 1;
        } else {
            snprintf(mdir, sizeof mdir, "%s/large", root);
            rc = bench_config(&o, "large", lpath, mdir, rows, &n_rows);
        }
    }

    printf("\n| model | thr | dsc tok/s | torch tok/s | dsc/torch | dsc step ms (fwd/bwd/opt) | "
           "torch step ms (fwd) | dsc GFLOP/s | sgemm peak | %% peak | busy |\n");
    printf("|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (int i = 0; i < n_rows; i++) {
        const row_t *r = &rows[i];
        char tt[32] = "-", ratio[32] = "-", tms[48] = "-";
        if (r->tr.ok) {
            snprintf(tt, sizeof tt, "%.0f", r->tr.tok_s);
            snprintf(ratio, sizeof ratio, "%.2fx", r->tok_s / r->tr.tok_s);
            snprintf(tms, sizeof tms, "%.1f (%.1f)", r->tr.step_ms, r->tr.fwd_ms);
        }
        printf("| %s | %lld | %.0f | %s | %s | %.1f (%.1f/%.1f/%.1f) | %s | %.2f | %.1f | %.0f%% "
               "| %.2f |\n", r->name, (long long)r->nt, r->tok_s, tt, ratio, r->step_ms,
               r->fwd_ms, r->bwd_ms, r->opt_ms, tms, r->gflops, r->peak,
               100.0 * r->gflops / r->peak, r->busy);
    }
    printf("target: dsc/torch >= 1.0x (goal 2x). GFLOP/s = (6 x linear params touched/token x tokens + "
           "3 x causal attention fwd) FLOPs / median step; peak = dsc_k_sgemm_nt on the step's shapes.\n");
    if (tmp) nftw(root, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
    return rc;
}
