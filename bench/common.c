/*
 * common.c - the benchmarks' shared parts (see common.h): the random
 * V2-Lite-shaped checkpoint (or bench_dsa's deepseek_v32 one), the option
 * parser, clocks, the busy meter and the forward pass timed block by block.
 */
#include "common.h"

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

#include "io/safetensors.h"
#include "kernels/kernels.h"
#include "model/model.h"

#define NAME_LEN 112
#define DIR_CAP (BENCH_ROOT_CAP + 48) /* root/<tag>-<dtype>             */
#define FILE_CAP (DIR_CAP + 32)       /* root/<tag>-<dtype>/model.safetensors */
#define POOL_SLACK ((int64_t)1 << 20) /* lets even the biggest tensor start anywhere in 4 MiB */

bench_shapes bench_v2lite_shapes(int64_t layers, int64_t vocab) {
    bench_shapes s = {.desc = "DeepSeek-V2-Lite", .L = layers, .V = vocab, .d = 2048, .H = 16,
                      .dn = 128, .dr = 64, .dv = 128, .dc = 512, .ff = 10944, .mff = 1408,
                      .E = 64, .K = 6, .ns = 2, .mscale = 0.707};
    s.n_dense = s.L < 1 ? s.L : 1;
    s.n_moe = s.L - s.n_dense;
    return s;
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

void bench_print_header(const char *name, const bench_shapes *s) {
    char cpu[256];
    proc_field("/proc/cpuinfo", "model name", cpu, sizeof cpu);
    printf("dsc %s: CPU \"%s\", %ld online cpus, SIMD %s, GEMM %s\n", name, cpu,
           sysconf(_SC_NPROCESSORS_ONLN), dsc_kernels_simd_name(), dsc_kernels_blas_name());
    if (s->E > 0)
        printf("model: %s shapes, %lld layers (%lld dense + %lld MoE), vocab %lld, "
               "d %lld, H %lld, kv_lora %lld, %lld experts top-%lld + %lld shared (ff %lld)\n",
               s->desc, (long long)s->L, (long long)s->n_dense, (long long)s->n_moe,
               (long long)s->V, (long long)s->d, (long long)s->H, (long long)s->dc,
               (long long)s->E, (long long)s->K, (long long)s->ns, (long long)s->mff);
    else
        printf("model: %s, %lld dense layer(s) (ffn %lld), vocab %lld, d %lld, H %lld, "
               "kv_lora %lld\n",
               s->desc, (long long)s->L, (long long)s->ff, (long long)s->V, (long long)s->d,
               (long long)s->H, (long long)s->dc);
    if (s->dq > 0 || s->topk > 0)
        printf("  attention: q_lora %lld, nope %lld, rope %lld, v %lld; DSA indexer %lld heads "
               "x %lld, top-%lld; YaRN mscale %g\n",
               (long long)s->dq, (long long)s->dn, (long long)s->dr, (long long)s->dv,
               (long long)s->HI, (long long)s->DI, (long long)s->topk, s->mscale);
}

/* ------------------------------------------------------------ clocks */

double bench_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* All busy time in /proc/stat (user nice system irq softirq steal) and this
   process's CPU time: their difference over the wall time is what the rest
   of the machine used. */
bench_mark bench_mark_now(void) {
    bench_mark c = {bench_now(), 0.0, 0.0};
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

double bench_others(bench_mark a, bench_mark b) {
    double l = ((b.busy - a.busy) - (b.self - a.self)) / (b.wall - a.wall);
    return l > 0.0 ? l : 0.0; /* jiffies are coarse: a small negative is 0 */
}

void bench_set_threads(int n_threads) {
#ifdef _OPENMP
    omp_set_num_threads(n_threads);
#else
    (void)n_threads;
#endif
}

/* ------------------------------------------------------------ random */

/* splitmix64: tiny, fast, and good enough for weights nobody reads. */
uint64_t bench_mix64(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* Uniform in (0, 1), never 0, so log() below is finite. */
static double unif(uint64_t *s) { return ((double)(bench_mix64(s) >> 11) + 0.5) * 0x1p-53; }

/* Chunks get their own seed so the result does not depend on the thread
   count. Box-Muller, two values per pair of uniforms. */
void bench_fill_normal(float *x, int64_t n, float std, uint64_t seed) {
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

/* ------------------------------------------------------------ command line */

static int parse_i64(const char *s, int64_t lo, int64_t hi, int64_t *out) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return 0;
    *out = v;
    return 1;
}

static int parse_dtype(const char *s, dsc_dtype *out) {
    if (!strcmp(s, "f32") || !strcmp(s, "fp32")) *out = DSC_F32;
    else if (!strcmp(s, "bf16")) *out = DSC_BF16;
    else if (!strcmp(s, "fp8") || !strcmp(s, "f8_e4m3")) *out = DSC_F8_E4M3;
    else return 0;
    return 1;
}

/* A comma-separated list into o's array. 1: parsed, 0: said why not. */
static int parse_list(const bench_opt *o, const char *v) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s", v);
    *o->count = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        int i = *o->count, ok;
        if (i == BENCH_MAX_LIST)
            return fprintf(stderr, "%s: at most %d items\n", o->name, BENCH_MAX_LIST), 0;
        if (o->kind == BENCH_OPT_DTYPES) ok = parse_dtype(tok, (dsc_dtype *)o->dst + i);
        else ok = parse_i64(tok, o->lo, o->hi, (int64_t *)o->dst + i);
        if (!ok) return fprintf(stderr, "%s: bad item \"%s\"\n", o->name, tok), 0;
        (*o->count)++;
    }
    if (!*o->count) return fprintf(stderr, "%s: empty list\n", o->name), 0;
    return 1;
}

int bench_parse_args(int argc, char **argv, const bench_opt *opts, int n_opts,
                     const char *usage) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) return fputs(usage, stdout), -1;
        const bench_opt *o = NULL;
        for (int j = 0; j < n_opts && !o; j++) o = strcmp(a, opts[j].name) ? NULL : &opts[j];
        if (!o) {
            fprintf(stderr, "unknown option %s\n%s", a, usage);
            return 0;
        }
        if (!v) return fprintf(stderr, "%s needs a value\n", a), 0;
        i++;
        if (o->kind == BENCH_OPT_STR) {
            *(const char **)o->dst = v;
        } else if (o->kind == BENCH_OPT_I64) {
            if (!parse_i64(v, o->lo, o->hi, o->dst))
                return fprintf(stderr, "bad %s %s (%lld..%lld)\n", a, v, (long long)o->lo,
                               (long long)o->hi), 0;
        } else if (!parse_list(o, v)) {
            return 0;
        }
    }
    return 1;
}

const char *bench_dtype_tag(dsc_dtype t) {
    return t == DSC_F32 ? "f32" : t == DSC_BF16 ? "bf16" : "fp8";
}

/* ------------------------------------------------------------ checkpoint */

/* PLAIN: matrices V3's FP8 files keep in BF16; ZERO: a vector of zeros */
enum { T_NORM, T_PLAIN, T_LINEAR, T_ZERO };

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
static int64_t build_tensors(const bench_shapes *s, tdesc *t) {
    int64_t n = 0;
    snprintf(tadd(t, &n, T_PLAIN, s->V, s->d), NAME_LEN, "model.embed_tokens.weight");
    for (int64_t l = 0; l < s->L; l++) {
        long long ll = (long long)l;
        const char *pre = "model.layers.";
#define T(kind, r, c, fmt, ...) \
    snprintf(tadd(t, &n, kind, r, c), NAME_LEN, "%s%lld." fmt, pre, ll, __VA_ARGS__)
        T(T_NORM, s->d, 0, "%s", "input_layernorm.weight");
        T(T_NORM, s->d, 0, "%s", "post_attention_layernorm.weight");
        if (s->dq > 0) {
            T(T_LINEAR, s->dq, s->d, "%s", "self_attn.q_a_proj.weight");
            T(T_NORM, s->dq, 0, "%s", "self_attn.q_a_layernorm.weight");
            T(T_LINEAR, s->H * (s->dn + s->dr), s->dq, "%s", "self_attn.q_b_proj.weight");
        } else {
            T(T_LINEAR, s->H * (s->dn + s->dr), s->d, "%s", "self_attn.q_proj.weight");
        }
        T(T_LINEAR, s->dc + s->dr, s->d, "%s", "self_attn.kv_a_proj_with_mqa.weight");
        T(T_NORM, s->dc, 0, "%s", "self_attn.kv_a_layernorm.weight");
        T(T_LINEAR, s->H * (s->dn + s->dv), s->dc, "%s", "self_attn.kv_b_proj.weight");
        T(T_LINEAR, s->d, s->H * s->dv, "%s", "self_attn.o_proj.weight");
        if (s->topk > 0) { /* spec §4.2: wq_b and wk FP8 in V3.2 files, weights_proj not */
            T(T_LINEAR, s->HI * s->DI, s->dq, "%s", "self_attn.indexer.wq_b.weight");
            T(T_LINEAR, s->DI, s->d, "%s", "self_attn.indexer.wk.weight");
            T(T_NORM, s->DI, 0, "%s", "self_attn.indexer.k_norm.weight");
            T(T_ZERO, s->DI, 0, "%s", "self_attn.indexer.k_norm.bias");
            T(T_PLAIN, s->HI, s->d, "%s", "self_attn.indexer.weights_proj.weight");
        }
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

/* config.json for s. V2-Lite's text is what it always was (so --dir
   checkpoints made before stay reusable); with topk > 0 it becomes a
   deepseek_v32 config (spec §1: q_lora_rank required, index_* keys). */
static int config_text(const bench_shapes *s, dsc_dtype dt, char *buf, size_t cap) {
    const char *torch = dt == DSC_F32 ? "float32" : "bfloat16";
    const char *quant = dt == DSC_F8_E4M3
                            ? ",\n  \"quantization_config\": {\"quant_method\": \"fp8\", \"fmt\": "
                              "\"e4m3\", \"activation_scheme\": \"dynamic\", "
                              "\"weight_block_size\": [128, 128]}"
                            : "";
    int v32 = s->topk > 0;
    char qlora[32], dsa[160];
    snprintf(qlora, sizeof qlora, s->dq > 0 ? "%lld" : "null", (long long)s->dq);
    snprintf(dsa, sizeof dsa,
             v32 ? "  \"index_n_heads\": %lld, \"index_head_dim\": %lld, \"index_topk\": %lld,\n"
                 : "",
             (long long)s->HI, (long long)s->DI, (long long)s->topk);
    int w = snprintf(buf, cap,
        "{\n  \"architectures\": [\"%s\"],\n  \"model_type\": \"%s\",\n"
        "  \"vocab_size\": %lld, \"hidden_size\": %lld, \"intermediate_size\": %lld,\n"
        "  \"moe_intermediate_size\": %lld, \"num_hidden_layers\": %lld,\n"
        "  \"num_attention_heads\": %lld, \"num_key_value_heads\": %lld,\n"
        "  \"q_lora_rank\": %s, \"kv_lora_rank\": %lld, \"qk_nope_head_dim\": %lld,\n"
        "  \"qk_rope_head_dim\": %lld, \"v_head_dim\": %lld,\n%s"
        "  \"n_routed_experts\": %lld, \"n_shared_experts\": %lld, \"num_experts_per_tok\": %lld,\n"
        "  \"first_k_dense_replace\": %lld, \"moe_layer_freq\": 1, \"topk_method\": \"greedy\",\n"
        "  \"scoring_func\": \"softmax\", \"n_group\": 1, \"topk_group\": 1,\n"
        "  \"norm_topk_prob\": false, \"routed_scaling_factor\": 1.0,\n"
        "  \"max_position_embeddings\": 163840, \"rope_theta\": 10000,\n"
        "  \"rope_scaling\": {\"type\": \"yarn\", \"factor\": 40, "
        "\"original_max_position_embeddings\": 4096,\n"
        "    \"beta_fast\": 32, \"beta_slow\": 1, \"mscale\": %g, \"mscale_all_dim\": %g},\n"
        "  \"rms_norm_eps\": 1e-06, \"hidden_act\": \"silu\", \"attention_bias\": false,\n"
        "  \"tie_word_embeddings\": false, \"bos_token_id\": %d, \"eos_token_id\": %d,\n"
        "  \"torch_dtype\": \"%s\"%s\n}\n",
        v32 ? "DeepseekV32ForCausalLM" : "DeepseekV2ForCausalLM",
        v32 ? "deepseek_v32" : "deepseek_v2", (long long)s->V, (long long)s->d,
        (long long)s->ff, (long long)s->mff, (long long)s->L, (long long)s->H, (long long)s->H,
        qlora, (long long)s->dc, (long long)s->dn, (long long)s->dr, (long long)s->dv, dsa,
        (long long)s->E, (long long)s->ns, (long long)s->K, (long long)s->n_dense, s->mscale,
        s->mscale, v32 ? 0 : 100000, v32 ? 1 : 100001, torch, quant);
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
static int write_checkpoint(const char *dir, const bench_shapes *s, dsc_dtype dt,
                            const char *cfg) {
    int64_t cap = 3 + s->L * (18 + 3 * s->E), nt = 0, max_numel = 0, max_scales = 1, max_vec = 1;
    tdesc *t = calloc((size_t)cap, sizeof *t);
    char(*snames)[NAME_LEN + 16] = calloc((size_t)cap, sizeof *snames);
    dsc_st_write_entry *ent = calloc((size_t)(2 * cap), sizeof *ent);
    float *f32 = NULL, *vec32 = NULL, sc_val = 1.0f, *scales = NULL;
    uint16_t *bf16 = NULL, *vec16 = NULL; /* vectors: max_vec ones, then max_vec zeros */
    uint8_t *e4m3 = NULL;
    int rc = 1, oom = 1; /* until the writing starts, a failure is an allocation */
    if (!t || !snames || !ent) goto done;
    nt = build_tensors(s, t);
    for (int64_t i = 0; i < nt; i++) {
        int64_t numel = t[i].rows * (t[i].cols ? t[i].cols : 1);
        int64_t nsc = ((t[i].rows + 127) / 128) * ((t[i].cols + 127) / 128);
        max_numel = numel > max_numel ? numel : max_numel;
        max_scales = t[i].kind == T_LINEAR && nsc > max_scales ? nsc : max_scales;
        max_vec = !t[i].cols && t[i].rows > max_vec ? t[i].rows : max_vec;
    }
    vec32 = calloc((size_t)(2 * max_vec), sizeof *vec32);
    vec16 = calloc((size_t)(2 * max_vec), sizeof *vec16); /* bf16 zero is all-zero bits */
    if (!vec32 || !vec16) goto done;
    for (int64_t i = 0; i < max_vec; i++) vec32[i] = 1.0f, vec16[i] = dsc_f32_to_bf16(1.0f);

    int64_t P = max_numel + POOL_SLACK;
    f32 = malloc((size_t)P * sizeof *f32);
    if (!f32) goto done;
    bench_fill_normal(f32, P, 0.02f, BENCH_SEED);
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
        uint64_t st = BENCH_SEED ^ (uint64_t)(i + 1);
        int64_t numel = t[i].rows * (t[i].cols ? t[i].cols : 1);
        int64_t off = (int64_t)(bench_mix64(&st) % (uint64_t)(P - numel + 1));
        e->name = t[i].name;
        e->ndim = t[i].cols ? 2 : 1;
        e->shape[0] = t[i].rows;
        e->shape[1] = t[i].cols;
        if (t[i].kind == T_NORM || t[i].kind == T_ZERO) {
            int64_t at = t[i].kind == T_ZERO ? max_vec : 0;
            e->dtype = dt == DSC_F32 ? DSC_F32 : DSC_BF16;
            e->data = dt == DSC_F32 ? (const void *)(vec32 + at) : (const void *)(vec16 + at);
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
    free(vec32);
    free(vec16);
    free(e4m3);
    free(scales);
    return rc;
}

int bench_store_open(bench_store *st, const char *dir) {
    st->tmp = !dir;
    snprintf(st->root, sizeof st->root, "%s", dir ? dir : "/tmp/dsc_bench_XXXXXX");
    int made = st->tmp ? mkdtemp(st->root) != NULL : mkdir(st->root, 0755) == 0 || errno == EEXIST;
    if (!made) {
        fprintf(stderr, "error: cannot create %s: %s\n", st->root, strerror(errno));
        st->tmp = 0; /* nothing of ours to delete */
        return 1;
    }
    return 0;
}

/* root/<dtype>, or root/<tag>-<dtype>: shapes with a tag never overwrite
   V2-Lite's checkpoints when benchmarks share one --dir. */
static void ckpt_dir(const bench_store *st, const bench_shapes *s, dsc_dtype dt, char *dir) {
    if (s->tag) snprintf(dir, DIR_CAP, "%s/%.24s-%s", st->root, s->tag, bench_dtype_tag(dt));
    else snprintf(dir, DIR_CAP, "%s/%s", st->root, bench_dtype_tag(dt));
}

int bench_load_model(const bench_store *st, const bench_shapes *s, dsc_dtype dt,
                     dsc_model_t **m) {
    char dir[DIR_CAP], path[FILE_CAP], cfg[4096];
    *m = NULL;
    ckpt_dir(st, s, dt, dir);
    snprintf(path, sizeof path, "%s/config.json", dir);
    if ((mkdir(dir, 0755) != 0 && errno != EEXIST) || !config_text(s, dt, cfg, sizeof cfg)) {
        fprintf(stderr, "error: cannot create %s: %s\n", dir, strerror(errno));
        return 1;
    }
    printf("\n== %s checkpoint in %s ==\n", bench_dtype_tag(dt), dir);
    double t0 = bench_now();
    if (file_equals(path, cfg)) {
        printf("  reusing it (config.json matches)\n");
    } else {
        if (write_checkpoint(dir, s, dt, cfg)) return 1;
        printf("  generated and written in %.1f s\n", bench_now() - t0);
    }
    dsc_err err = {0};
    t0 = bench_now();
    if (dsc_model_load(dir, m, &err) != DSC_OK) {
        fprintf(stderr, "error: dsc_model_load(%s): %s\n", dir, err.msg);
        return 1;
    }
    dsc_model_info info;
    dsc_model_get_info(*m, &info);
    printf("  loaded in %.2f s: %.3f G params (%.3f G active/token), %.2f GiB of weights\n",
           bench_now() - t0, (double)info.n_params * 1e-9, (double)info.n_params_active * 1e-9,
           (double)info.weight_bytes / (double)(1 << 30));
    return 0;
}

/* Delete what write_checkpoint made (names known: no recursive removal). */
void bench_store_drop(const bench_store *st, const bench_shapes *s, dsc_dtype dt) {
    char dir[DIR_CAP], path[FILE_CAP];
    if (!st->tmp) return;
    ckpt_dir(st, s, dt, dir);
    snprintf(path, sizeof path, "%s/config.json", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    unlink(path);
    rmdir(dir);
}

void bench_finish(bench_store *st, const bench_shapes *s, const dsc_dtype *dts, int n_dts) {
    char hwm[64];
    for (int i = 0; st->tmp && s && i < n_dts; i++) bench_store_drop(st, s, dts[i]);
    if (st->tmp) rmdir(st->root);
    st->tmp = 0;
    proc_field("/proc/self/status", "VmHWM", hwm, sizeof hwm);
    printf("peak RSS %s (includes the mapped weights)\n", hwm);
}

/* ------------------------------------------------------------ phases */

const char *const bench_phase_name[BENCH_PH_N] = {"embed", "attention", "dense ffn", "moe ffn",
                                                  "lm_head"};

void bench_forward_phases(dsc_ctx_t *c, const int32_t *ids, int64_t n, int64_t pos0,
                          float *logits, double *ph, int64_t *experts) {
    const dsc_model_t *m = c->m;
    const dsc_config *cf = &m->cfg;
    dsc_work *w = &c->w;
    int64_t d = cf->hidden_size;
    float eps = (float)cf->rms_norm_eps;
    for (int i = 0; i < BENCH_PH_N; i++) ph[i] = 0.0;
    if (experts) *experts = 0;
    double t0 = bench_now();
    for (int64_t t = 0; t < n; t++) dsc_wmat_row(&m->embed, ids[t], 0, d, w->x + t * d);
    ph[BENCH_PH_EMBED] = bench_now() - t0;
    for (int64_t l = 0; l < cf->num_hidden_layers; l++) {
        const dsc_layer *ly = &m->layers[l];
        t0 = bench_now();
        dsc_k_rmsnorm(c->k, w->xn, w->x, &ly->attn_norm, n, d, eps);
        dsc_mla_forward(c, ly, l, n, pos0);
        for (int64_t i = 0; i < n * d; i++) w->x[i] += w->y[i];
        double t1 = bench_now();
        ph[BENCH_PH_ATTN] += t1 - t0;
        dsc_k_rmsnorm(c->k, w->xn, w->x, &ly->ffn_norm, n, d, eps);
        dsc_ffn_forward(c, ly, n);
        for (int64_t i = 0; i < n * d; i++) w->x[i] += w->y[i];
        ph[ly->is_moe ? BENCH_PH_MOE : BENCH_PH_DENSE] += bench_now() - t1;
        /* n_tok holds this layer's tokens per expert until the next MoE layer */
        for (int64_t e = 0; experts && ly->is_moe && e < cf->n_routed_experts; e++)
            *experts += w->n_tok[e] > 0;
    }
    t0 = bench_now();
    dsc_k_rmsnorm(c->k, w->xn, w->x, &m->final_norm, n, d, eps);
    dsc_k_matmul(c->k, logits, w->xn, &m->lm_head, n);
    ph[BENCH_PH_HEAD] = bench_now() - t0;
}
