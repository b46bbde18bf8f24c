/*
 * main.c - the dsc command-line tool. The only place in dsc that calls exit().
 *
 *   dsc info   -m DIR                         architecture, parameters, cache sizes
 *   dsc logits -m DIR --ids 5,17,42 -o FILE   float32 LE logits [n][vocab]
 *
 * Common options: -t THREADS, -c CTX, --attn absorbed|naive.
 * Exit status: 0 on success, 1 on a library error (message on stderr), 2 on
 * bad usage.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dsc.h"

typedef struct {
    const char *model_dir;
    const char *ids;
    const char *out;
    int threads;
    int64_t n_ctx;
    dsc_attn_mode attn;
} cli_opts;

static void usage(FILE *f) {
    fprintf(f,
            "usage: dsc <command> [options]\n"
            "\n"
            "commands:\n"
            "  info   -m DIR                        print architecture, parameter counts\n"
            "                                       and KV-cache bytes per token\n"
            "  logits -m DIR --ids 5,17,42 -o FILE  one forward pass over the ids at\n"
            "                                       positions 0..n-1; writes float32\n"
            "                                       little-endian logits [n][vocab_size]\n"
            "\n"
            "options:\n"
            "  -m, --model DIR     Hugging Face checkpoint directory (config.json +\n"
            "                      model.safetensors or model.safetensors.index.json)\n"
            "  --ids LIST          comma-separated token ids\n"
            "  -o, --output FILE   output file\n"
            "  -t, --threads N     threads (default: OpenMP's default)\n"
            "  -c, --ctx N         context size for the latent cache (default: number of ids)\n"
            "  --attn MODE         absorbed (default) or naive MLA\n"
            "  -h, --help          this help\n");
}

static _Noreturn void die_usage(const char *msg, const char *arg) {
    fprintf(stderr, "dsc: %s%s%s\n\n", msg, arg ? ": " : "", arg ? arg : "");
    usage(stderr);
    exit(2);
}

static _Noreturn void die(const dsc_err *e) {
    fprintf(stderr, "dsc: error (%s): %s\n", dsc_status_str(e->code), e->msg);
    exit(1);
}

static int64_t parse_int(const char *s, const char *what) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end) die_usage("expected an integer for", what);
    return v;
}

static void parse_args(int argc, char **argv, cli_opts *o) {
    memset(o, 0, sizeof *o);
    o->attn = DSC_ATTN_ABSORBED;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define NEED_VALUE()                                                           \
    do {                                                                       \
        if (!v) die_usage("missing value for", a);                            \
        i++;                                                                   \
    } while (0)
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            exit(0);
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            NEED_VALUE();
            o->model_dir = v;
        } else if (!strcmp(a, "--ids")) {
            NEED_VALUE();
            o->ids = v;
        } else if (!strcmp(a, "-o") || !strcmp(a, "--output")) {
            NEED_VALUE();
            o->out = v;
        } else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            NEED_VALUE();
            o->threads = (int)parse_int(v, a);
            if (o->threads < 1 || o->threads > 4096) die_usage("threads out of range", v);
        } else if (!strcmp(a, "-c") || !strcmp(a, "--ctx")) {
            NEED_VALUE();
            o->n_ctx = parse_int(v, a);
            if (o->n_ctx < 1) die_usage("context must be >= 1", v);
        } else if (!strcmp(a, "--attn")) {
            NEED_VALUE();
            if (!strcmp(v, "absorbed")) o->attn = DSC_ATTN_ABSORBED;
            else if (!strcmp(v, "naive")) o->attn = DSC_ATTN_NAIVE;
            else die_usage("--attn must be absorbed or naive", v);
        } else {
            die_usage("unknown option", a);
        }
#undef NEED_VALUE
    }
    if (!o->model_dir) die_usage("missing -m DIR", NULL);
}

/* "5,17,42" -> malloc'd int32 array. Range is checked by the library. */
static int32_t *parse_ids(const char *s, int64_t *n) {
    int64_t cap = 1;
    for (const char *p = s; *p; p++) cap += *p == ',';
    int32_t *ids = malloc((size_t)cap * sizeof *ids);
    if (!ids) {
        fprintf(stderr, "dsc: out of memory\n");
        exit(1);
    }
    int64_t k = 0;
    const char *p = s;
    while (*p) {
        char *end;
        errno = 0;
        long long v = strtoll(p, &end, 10);
        if (errno || end == p || (*end && *end != ',') || v < INT32_MIN || v > INT32_MAX)
            die_usage("bad token id list", s);
        ids[k++] = (int32_t)v;
        p = *end ? end + 1 : end;
        if (*end == ',' && !*p) die_usage("bad token id list", s);
    }
    if (k == 0) die_usage("empty token id list", s);
    *n = k;
    return ids;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void human(char *buf, size_t n, double v, const char *unit) {
    const char *pre[] = {"", "K", "M", "G", "T"};
    int i = 0;
    double step = !strcmp(unit, "B") ? 1024.0 : 1000.0;
    while (v >= step && i < 4) {
        v /= step;
        i++;
    }
    snprintf(buf, n, "%.2f %s%s%s", v, pre[i], !strcmp(unit, "B") && i ? "i" : "", unit);
}

static int cmd_info(const cli_opts *o) {
    dsc_err e = {0};
    dsc_model_t *m;
    double t0 = now_s();
    if (dsc_model_load(o->model_dir, &m, &e) != DSC_OK) die(&e);
    double t_load = now_s() - t0;
    const dsc_config *c = dsc_model_config(m);
    dsc_model_info in;
    dsc_model_get_info(m, &in);
    char b1[32], b2[32], b3[32];

    printf("model        : %s (%s)\n", o->model_dir, c->model_type);
    printf("layers       : %lld (%lld dense FFN + %lld MoE), hidden %lld, vocab %lld\n",
           (long long)c->num_hidden_layers, (long long)in.n_dense_layers,
           (long long)in.n_moe_layers, (long long)c->hidden_size, (long long)c->vocab_size);
    if (c->q_lora_rank > 0)
        printf("attention    : MLA, %lld heads, q_lora_rank %lld, ", (long long)c->num_attention_heads,
               (long long)c->q_lora_rank);
    else
        printf("attention    : MLA, %lld heads, no q compression, ",
               (long long)c->num_attention_heads);
    printf("kv_lora_rank %lld, qk %lld nope + %lld rope, v %lld, softmax scale %.7f\n",
           (long long)c->kv_lora_rank, (long long)c->qk_nope_head_dim,
           (long long)c->qk_rope_head_dim, (long long)c->v_head_dim, c->softmax_scale);
    if (c->yarn)
        printf("rope         : YaRN factor %g over %lld positions (beta %g/%g, mscale %g/%g), "
               "theta %g, %s pairs\n",
               c->yarn_factor, (long long)c->yarn_original_max_pos, c->yarn_beta_fast,
               c->yarn_beta_slow, c->yarn_mscale, c->yarn_mscale_all_dim, c->rope_theta,
               c->rope_interleave ? "interleaved" : "half-split");
    else
        printf("rope         : theta %g, %s pairs\n", c->rope_theta,
               c->rope_interleave ? "interleaved" : "half-split");
    if (c->n_routed_experts > 0) {
        static const char *meth[] = {"greedy", "group_limited_greedy", "noaux_tc"};
        printf("moe          : %lld routed experts (top %lld, %s, %s, groups %lld/%lld, "
               "norm_topk_prob %s, scale %g) + %lld shared, width %lld\n",
               (long long)c->n_routed_experts, (long long)c->num_experts_per_tok,
               meth[c->topk_method], c->scoring_func == DSC_SCORE_SIGMOID ? "sigmoid" : "softmax",
               (long long)c->topk_group, (long long)c->n_group,
               c->norm_topk_prob ? "true" : "false", c->routed_scaling_factor,
               (long long)c->n_shared_experts, (long long)c->moe_intermediate_size);
    }
    if (c->num_nextn_predict_layers > 0)
        printf("mtp          : %lld layer(s) in the files, NOT used by this build "
               "(%lld tensors, %lld params skipped)\n",
               (long long)c->num_nextn_predict_layers, (long long)in.n_tensors_skipped,
               (long long)in.n_params_skipped);
    printf("params       : %lld total, %lld active per token (%.1f%%)\n",
           (long long)in.n_params, (long long)in.n_params_active,
           in.n_params ? 100.0 * (double)in.n_params_active / (double)in.n_params : 0.0);
    human(b1, sizeof b1, (double)in.weight_bytes, "B");
    human(b2, sizeof b2, (double)in.file_bytes, "B");
    printf("weights      : %s resident, mmapped in stored dtype (files %s);", b1, b2);
    for (int t = 0; t < 4; t++)
        if (in.dtype_bytes[t]) {
            human(b3, sizeof b3, (double)in.dtype_bytes[t], "B");
            printf(" %s %s", dsc_dtype_name((dsc_dtype)t), b3);
        }
    printf("\n");
    int64_t lat = in.latent_cache_values_per_token, mha = in.mha_cache_values_per_token;
    human(b1, sizeof b1, (double)lat * 4, "B");
    human(b2, sizeof b2, (double)mha * 4, "B");
    printf("kv cache     : latent %lld values/token (%lld per layer) = %s/token fp32; "
           "standard MHA %lld values/token = %s/token fp32 (%.1fx larger)\n",
           (long long)lat, (long long)(c->kv_lora_rank + c->qk_rope_head_dim), b1,
           (long long)mha, b2, lat ? (double)mha / (double)lat : 0.0);
    human(b1, sizeof b1, (double)lat * 2, "B");
    human(b2, sizeof b2, (double)mha * 2, "B");
    printf("               in bf16: latent %s/token vs MHA %s/token\n", b1, b2);
    printf("load time    : %.1f ms\n", t_load * 1e3);
    dsc_model_free(m);
    return 0;
}

static int cmd_logits(const cli_opts *o) {
    if (!o->ids) die_usage("logits needs --ids", NULL);
    if (!o->out) die_usage("logits needs -o FILE", NULL);
    int64_t n;
    int32_t *ids = parse_ids(o->ids, &n);
    dsc_err e = {0};
    dsc_model_t *m;
    if (dsc_model_load(o->model_dir, &m, &e) != DSC_OK) die(&e);
    const dsc_config *c = dsc_model_config(m);
    dsc_ctx_params p = dsc_ctx_default_params();
    p.n_ctx = o->n_ctx > 0 ? o->n_ctx : n;
    p.n_batch = n;
    p.n_threads = o->threads;
    p.attn = o->attn;
    dsc_ctx_t *ctx;
    if (dsc_ctx_new(m, &p, &ctx, &e) != DSC_OK) die(&e);
    size_t count = (size_t)n * (size_t)c->vocab_size;
    float *logits = malloc(count * sizeof *logits);
    if (!logits) {
        fprintf(stderr, "dsc: cannot allocate %zu logits\n", count);
        exit(1);
    }
    double t0 = now_s();
    if (dsc_forward(ctx, ids, n, 0, logits, &e) != DSC_OK) die(&e);
    double dt = now_s() - t0;
    FILE *f = fopen(o->out, "wb");
    if (!f || fwrite(logits, sizeof *logits, count, f) != count || fclose(f) != 0) {
        fprintf(stderr, "dsc: cannot write %s: %s\n", o->out, strerror(errno));
        exit(1);
    }
    fprintf(stderr, "dsc: %lld tokens -> %s [%lld x %lld] float32 in %.1f ms (%.1f tokens/s)\n",
            (long long)n, o->out, (long long)n, (long long)c->vocab_size, dt * 1e3,
            (double)n / dt);
    free(logits);
    free(ids);
    dsc_ctx_free(ctx);
    dsc_model_free(m);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
        printf("dsc %d.%d\n", DSC_VERSION_MAJOR, DSC_VERSION_MINOR);
        return 0;
    }
    cli_opts o;
    if (!strcmp(cmd, "info")) {
        parse_args(argc, argv, &o);
        return cmd_info(&o);
    }
    if (!strcmp(cmd, "logits")) {
        parse_args(argc, argv, &o);
        return cmd_logits(&o);
    }
    die_usage("unknown command", cmd);
}
