/*
 * bench_spec.c - speculative decoding with the MTP module (src/gen/spec.c)
 * against plain decoding, measured in the same run: acceptance per draft
 * position, tokens per verify pass, decode tokens/s with and without
 * speculation, routed experts touched per decoded token, and whether
 * greedy speculation gave the plain decoder's tokens. A benchmark, not a
 * test: it exits 0 whatever the speed, non-zero only when something fails
 * (a model does not load, a generate call errs, or greedy speculation
 * gave other tokens than plain greedy decoding: that is a bug).
 *
 * Models:
 *  - --model DIR: trained checkpoints with an MTP module (e.g. the demo
 *    model of `make demo`, build/demo-model, the default when present).
 *    Prompts are cut from the held-out end of a corpus (the last 1% of
 *    build/brown.txt, or data/brown.txt.xz, or --prompts FILE) and
 *    tokenized with the model's own tokenizer.
 *  - --v2lite 1: common.c's random DeepSeek-V2-Lite-shaped model (bf16,
 *    --layers, default 4) plus one MTP layer (enorm, hnorm, eh_proj, a MoE
 *    decoder block, shared_head.norm) in a second shard next to it; random
 *    prompt ids. Random weights: the drafts are essentially never accepted,
 *    so this part measures what speculation costs on V2-Lite's MoE (experts
 *    per verified token, the draft's price), not what it gains.
 *
 * Per model and thread count, one context per configuration: plain
 * decoding (spec NONE) and spec MTP for each draft_n x draft_vocab, with
 * spec_probe 0 (every step speculates). A configuration's measurement is
 * dsc_generate over every prompt (fresh cache, fixed-length: no EOS stop),
 * its time the sum of the calls' gen_s (the decode loop, prefill excluded);
 * tokens are n_gen - 1 per call (the first comes from the prefill's
 * logits), for both modes alike. The configurations take turns within each
 * repetition; the median over --reps is reported. Routed experts are read
 * from the context's own counter (the one spec.c's statistics use) between
 * the first token and the end of each call: per decoded token, for the
 * main model (plain steps or verify passes) and for the draft's MoE block.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"
#include "dsc.h"
#include "io/safetensors.h"
#include "kernels/kernels.h"
#include "model/model.h"

#define BUSY_MAX 0.25 /* CPUs others may keep busy before a timing is redone */
#define TRIES 3       /* timings per measurement at most                     */
#define REPS_MAX 64
#define MAX_MODELS 8
#define WARM_N 8      /* tokens of the untimed warm-up call per context       */
#define MTP_SUBDIR "spec-mtp-bf16"
#define PATH_CAP (BENCH_ROOT_CAP + 96)

typedef struct {
    const char *models[MAX_MODELS];
    int n_models;
    int64_t v2lite, layers, vocab, n, v2_n, n_prompts, v2_prompts, prompt_len, reps, seed;
    int64_t threads[BENCH_MAX_LIST];
    int n_threads;
    int64_t draft_n[BENCH_MAX_LIST];
    int n_draft_n;
    int64_t draft_vocab[BENCH_MAX_LIST];
    int n_draft_vocab; /* 0: the default per model */
    const char *prompts, *dir, *temp_s;
    double temp;
} options;

/* A model with its prompts. */
typedef struct {
    char name[64];
    dsc_model_t *m;
    dsc_tokenizer_t *tok; /* NULL: random prompt ids */
    int random;           /* random weights (no acceptance to expect) */
    int64_t V, n_gen;     /* vocabulary, tokens generated per prompt */
    int n_prompts;
    int64_t plen_max, plen[64];
    int32_t *ids; /* n_prompts x plen_max */
} bmodel;

/* One configuration (draft_n 0: plain decoding) at one thread count. */
typedef struct {
    int model, threads, draft_n;
    int64_t draft_vocab;
    dsc_ctx_t *c;
    double t[REPS_MAX], busy[REPS_MAX], t_med, busy_max;
    int redone;
    /* counters of the first repetition (sampling is seeded: every
       repetition makes the same tokens) */
    int64_t tokens, gen, steps, spec_tokens;
    int64_t drafted[DSC_SPEC_MAX_DRAFT], accepted[DSC_SPEC_MAX_DRAFT];
    int64_t ex_main, ex_draft; /* routed experts: main model, draft module */
    double spec_s, draft_s, verify_s; /* the speculation steps' time and its parts */
    int identical;             /* 1 / 0; -1: not checked (sampling)        */
    int diff_prompt;
    int64_t diff_pos;
} row;

/* ------------------------------------------------------------ small helpers */

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(const double *v, int n) {
    double s[REPS_MAX];
    memcpy(s, v, (size_t)n * sizeof *s);
    qsort(s, (size_t)n, sizeof *s, cmp_double);
    return n % 2 ? s[n / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
}

static int file_exists(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0;
}

/* Whole file (or a command's output) into a NUL-terminated buffer. */
static char *slurp(FILE *f, size_t *len) {
    size_t cap = 1 << 20, n = 0;
    char *b = malloc(cap + 1);
    while (b) {
        size_t got = fread(b + n, 1, cap - n, f);
        n += got;
        if (n < cap) break;
        char *nb = realloc(b, 2 * cap + 1);
        if (!nb) free(b);
        b = nb;
        cap *= 2;
    }
    if (b) b[n] = 0;
    *len = n;
    return b;
}

/* The prompt corpus: --prompts, else build/brown.txt, else data/brown.txt.xz
   through xz -dc (run from the repository root). */
static char *load_corpus(const options *o, size_t *len, const char **src) {
    char *text = NULL;
    if (o->prompts || file_exists("build/brown.txt")) {
        *src = o->prompts ? o->prompts : "build/brown.txt";
        FILE *f = fopen(*src, "rb");
        if (!f) {
            fprintf(stderr, "error: cannot open %s: %s\n", *src, strerror(errno));
            return NULL;
        }
        text = slurp(f, len);
        fclose(f);
    } else {
        *src = "data/brown.txt.xz (xz -dc)";
        FILE *f = popen("xz -dc data/brown.txt.xz", "r");
        if (!f) {
            fprintf(stderr, "error: cannot run xz -dc data/brown.txt.xz\n");
            return NULL;
        }
        text = slurp(f, len);
        if (pclose(f) != 0) free(text), text = NULL;
    }
    if (!text || *len < 1000) {
        fprintf(stderr, "error: no usable prompt corpus from %s (give --prompts FILE)\n", *src);
        free(text);
        return NULL;
    }
    return text;
}

/* ------------------------------------------------------------ prompts */

/* n_prompts prompts of up to prompt_len ids each, from the last 1% of the
   text: prompt i starts at the first line after i/n of the way through it. */
static int text_prompts(bmodel *b, const options *o, const char *text, size_t len) {
    size_t tail = len - len / 100, span = len - tail;
    b->plen_max = o->prompt_len;
    b->ids = calloc((size_t)(b->n_prompts * b->plen_max), sizeof *b->ids);
    if (!b->ids) return fprintf(stderr, "error: out of memory\n"), 1;
    for (int i = 0; i < b->n_prompts; i++) {
        size_t at = tail + span * (size_t)i / (size_t)b->n_prompts;
        while (at < len && text[at] != '\n') at++;
        while (at < len && (text[at] == '\n' || text[at] == ' ' || text[at] == '\r')) at++;
        size_t take = (size_t)o->prompt_len * 16 + 64;
        if (take > len - at) take = len - at;
        while (take > 0 && at + take < len && ((unsigned char)text[at + take] & 0xC0) == 0x80)
            take--; /* never cut a UTF-8 character */
        int64_t need = 0;
        dsc_err err = {0};
        if (take == 0 ||
            dsc_tokenize(b->tok, text + at, take, -1, b->ids + i * b->plen_max, b->plen_max,
                         &need, &err) != DSC_OK || need < 1) {
            fprintf(stderr, "error: tokenizing prompt %d of %s: %s\n", i, b->name,
                    take ? err.msg : "the corpus ends there");
            return 1;
        }
        b->plen[i] = need < b->plen_max ? need : b->plen_max;
        char shown[48];
        size_t k = 0;
        for (size_t j = 0; j < take && k + 1 < sizeof shown; j++)
            shown[k++] = text[at + j] == '\n' ? ' ' : text[at + j];
        while (k > 0 && ((unsigned char)shown[k - 1] & 0x80)) k--; /* keep whole characters */
        shown[k] = 0;
        printf("  prompt %d: %lld tokens from byte %zu: \"%s...\"\n", i, (long long)b->plen[i],
               at, shown);
    }
    return 0;
}

static int random_prompts(bmodel *b, const options *o) {
    b->plen_max = o->prompt_len;
    b->ids = calloc((size_t)(b->n_prompts * b->plen_max), sizeof *b->ids);
    if (!b->ids) return fprintf(stderr, "error: out of memory\n"), 1;
    uint64_t st = BENCH_SEED + 11;
    for (int i = 0; i < b->n_prompts; i++) {
        b->plen[i] = b->plen_max;
        for (int64_t j = 0; j < b->plen_max; j++)
            b->ids[i * b->plen_max + j] = (int32_t)(bench_mix64(&st) % (uint64_t)b->V);
    }
    printf("  %d prompts of %lld random ids\n", b->n_prompts, (long long)b->plen_max);
    return 0;
}

/* ------------------------------------------------------------ V2-Lite + MTP */

/* The MTP layer (index s->L) of a V2-Lite-shaped model, the names of
   DeepSeek-V3's files: a MoE decoder block, enorm, hnorm, eh_proj and
   shared_head.norm. The stored copies of the embedding and head that V3
   files also hold are left out (the loader uses the main model's). */
typedef struct {
    char name[112];
    int64_t rows, cols; /* cols 0: a norm vector (ones) */
} mtp_t;

static int mtp_tensors(const bench_shapes *s, mtp_t *t) {
    int n = 0;
    long long l = (long long)s->L;
#define ADD(r, c, ...) \
    (snprintf(t[n].name, sizeof t[n].name, __VA_ARGS__), t[n].rows = (r), t[n].cols = (c), n++)
    ADD(s->d, 0, "model.layers.%lld.enorm.weight", l);
    ADD(s->d, 0, "model.layers.%lld.hnorm.weight", l);
    ADD(s->d, 2 * s->d, "model.layers.%lld.eh_proj.weight", l);
    ADD(s->d, 0, "model.layers.%lld.input_layernorm.weight", l);
    ADD(s->d, 0, "model.layers.%lld.post_attention_layernorm.weight", l);
    if (s->dq > 0) {
        ADD(s->dq, s->d, "model.layers.%lld.self_attn.q_a_proj.weight", l);
        ADD(s->dq, 0, "model.layers.%lld.self_attn.q_a_layernorm.weight", l);
        ADD(s->H * (s->dn + s->dr), s->dq, "model.layers.%lld.self_attn.q_b_proj.weight", l);
    } else {
        ADD(s->H * (s->dn + s->dr), s->d, "model.layers.%lld.self_attn.q_proj.weight", l);
    }
    ADD(s->dc + s->dr, s->d, "model.layers.%lld.self_attn.kv_a_proj_with_mqa.weight", l);
    ADD(s->dc, 0, "model.layers.%lld.self_attn.kv_a_layernorm.weight", l);
    ADD(s->H * (s->dn + s->dv), s->dc, "model.layers.%lld.self_attn.kv_b_proj.weight", l);
    ADD(s->d, s->H * s->dv, "model.layers.%lld.self_attn.o_proj.weight", l);
    ADD(s->E, s->d, "model.layers.%lld.mlp.gate.weight", l);
    ADD(s->ns * s->mff, s->d, "model.layers.%lld.mlp.shared_experts.gate_proj.weight", l);
    ADD(s->ns * s->mff, s->d, "model.layers.%lld.mlp.shared_experts.up_proj.weight", l);
    ADD(s->d, s->ns * s->mff, "model.layers.%lld.mlp.shared_experts.down_proj.weight", l);
    for (int64_t e = 0; e < s->E; e++) {
        ADD(s->mff, s->d, "model.layers.%lld.mlp.experts.%lld.gate_proj.weight", l, (long long)e);
        ADD(s->mff, s->d, "model.layers.%lld.mlp.experts.%lld.up_proj.weight", l, (long long)e);
        ADD(s->d, s->mff, "model.layers.%lld.mlp.experts.%lld.down_proj.weight", l, (long long)e);
    }
    ADD(s->d, 0, "model.layers.%lld.shared_head.norm.weight", l);
#undef ADD
    return n;
}

/* mtp.safetensors: bf16, matrices normal(0, 0.02) as windows into one pool
   (as common.c does), norms 1. */
static int write_mtp_shard(const char *path, const bench_shapes *s) {
    int cap = 32 + 3 * (int)s->E, nt, rc = 1;
    mtp_t *t = calloc((size_t)cap, sizeof *t);
    dsc_st_write_entry *ent = calloc((size_t)cap, sizeof *ent);
    float *f32 = NULL;
    uint16_t *pool = NULL, *ones = NULL;
    if (!t || !ent) goto done;
    nt = mtp_tensors(s, t);
    int64_t max_numel = 0, max_vec = 1;
    for (int i = 0; i < nt; i++) {
        int64_t numel = t[i].rows * (t[i].cols ? t[i].cols : 1);
        if (t[i].cols) max_numel = numel > max_numel ? numel : max_numel;
        else max_vec = t[i].rows > max_vec ? t[i].rows : max_vec;
    }
    int64_t P = max_numel + ((int64_t)1 << 20);
    f32 = malloc((size_t)P * sizeof *f32);
    pool = malloc((size_t)P * sizeof *pool);
    ones = malloc((size_t)max_vec * sizeof *ones);
    if (!f32 || !pool || !ones) goto done;
    bench_fill_normal(f32, P, 0.02f, BENCH_SEED + 77);
    for (int64_t i = 0; i < P; i++) pool[i] = dsc_f32_to_bf16(f32[i]);
    for (int64_t i = 0; i < max_vec; i++) ones[i] = dsc_f32_to_bf16(1.0f);
    for (int i = 0; i < nt; i++) {
        uint64_t st = BENCH_SEED ^ (uint64_t)(1000 + i);
        int64_t numel = t[i].rows * (t[i].cols ? t[i].cols : 1);
        ent[i] = (dsc_st_write_entry){.name = t[i].name, .dtype = DSC_BF16,
                                      .ndim = t[i].cols ? 2 : 1,
                                      .shape = {t[i].rows, t[i].cols}};
        int64_t off = (int64_t)(bench_mix64(&st) % (uint64_t)(P - numel + 1));
        ent[i].data = t[i].cols ? (const void *)(pool + off) : (const void *)ones;
    }
    dsc_err err = {0};
    if (dsc_st_write(path, ent, nt, &err) != DSC_OK) {
        fprintf(stderr, "error: writing %s: %s\n", path, err.msg);
        goto done;
    }
    printf("  MTP layer: %d tensors written to %s\n", nt, path);
    rc = 0;
done:
    if (rc && (!t || !ent || !f32 || !pool || !ones))
        fprintf(stderr, "error: out of memory writing the MTP layer\n");
    free(t);
    free(ent);
    free(f32);
    free(pool);
    free(ones);
    return rc;
}

/* The index of the two shards: every tensor of the main checkpoint (its
   model.safetensors, linked as main.safetensors) and of mtp.safetensors. */
static int write_index(const char *path, const char *main_file, const bench_shapes *s) {
    dsc_st_set *set = NULL;
    dsc_err err = {0};
    if (dsc_st_set_open_file(main_file, &set, &err) != DSC_OK) {
        fprintf(stderr, "error: %s\n", err.msg);
        return 1;
    }
    int cap = 32 + 3 * (int)s->E, rc = 1;
    mtp_t *t = calloc((size_t)cap, sizeof *t);
    FILE *f = t ? fopen(path, "wb") : NULL;
    if (f) {
        int nt = mtp_tensors(s, t), bad = 0;
        bad |= fprintf(f, "{\n  \"metadata\": {\"note\": \"bench_spec: V2-Lite shapes + MTP\"},\n"
                          "  \"weight_map\": {\n") < 0;
        int64_t n = dsc_st_count(set);
        for (int64_t i = 0; i < n; i++)
            bad |= fprintf(f, "    \"%s\": \"main.safetensors\",\n", dsc_st_at(set, i)->name) < 0;
        for (int i = 0; i < nt; i++)
            bad |= fprintf(f, "    \"%s\": \"mtp.safetensors\"%s\n", t[i].name,
                           i + 1 < nt ? "," : "") < 0;
        bad |= fprintf(f, "  }\n}\n") < 0;
        rc = (fclose(f) != 0) | bad;
    }
    if (rc) fprintf(stderr, "error: writing %s: %s\n", path, strerror(errno));
    free(t);
    dsc_st_set_close(set);
    return rc;
}

static void mtp_paths(const bench_store *st, char *dir, char *cfg, char *shard, char *link,
                      char *index) {
    snprintf(dir, PATH_CAP, "%s/%s", st->root, MTP_SUBDIR);
    snprintf(cfg, PATH_CAP, "%s/config.json", dir);
    snprintf(shard, PATH_CAP, "%s/mtp.safetensors", dir);
    snprintf(link, PATH_CAP, "%s/main.safetensors", dir);
    snprintf(index, PATH_CAP, "%s/model.safetensors.index.json", dir);
}

/* Delete the MTP directory (only when the store is a temp dir). */
static void mtp_drop(const bench_store *st) {
    char dir[PATH_CAP], cfg[PATH_CAP], shard[PATH_CAP], link[PATH_CAP], index[PATH_CAP];
    if (!st->tmp) return;
    mtp_paths(st, dir, cfg, shard, link, index);
    unlink(cfg);
    unlink(shard);
    unlink(link);
    unlink(index);
    rmdir(dir);
}

/*
 * common.c's V2-Lite checkpoint in bf16 (st->root/bf16, made or reused: the
 * same one bench_decode and bench_prefill use with the same --dir), then
 * st->root/spec-mtp-bf16: main.safetensors (a link to it), mtp.safetensors,
 * an index over both and its config.json with num_nextn_predict_layers 1
 * (written last, so a complete directory is reused).
 */
static int load_v2lite(const bench_store *st, const bench_shapes *s, dsc_model_t **out) {
    char dir[PATH_CAP], cfg[PATH_CAP], shard[PATH_CAP], link[PATH_CAP], index[PATH_CAP];
    char base_cfg[PATH_CAP], base_file[PATH_CAP];
    dsc_model_t *base = NULL;
    *out = NULL;
    if (bench_load_model(st, s, DSC_BF16, &base)) return 1;
    dsc_model_free(base);
    mtp_paths(st, dir, cfg, shard, link, index);
    snprintf(base_cfg, sizeof base_cfg, "%s/bf16/config.json", st->root);
    snprintf(base_file, sizeof base_file, "%s/bf16/model.safetensors", st->root);
    FILE *f = fopen(base_cfg, "rb");
    size_t len = 0;
    char *text = f ? slurp(f, &len) : NULL, *want = NULL, *have = NULL;
    if (f) fclose(f);
    const char *key = "  \"num_nextn_predict_layers\": 1,\n";
    char *nl = text ? strchr(text, '\n') : NULL;
    int rc = 1;
    if (!nl || !(want = malloc(len + strlen(key) + 1))) {
        fprintf(stderr, "error: cannot read %s\n", base_cfg);
        goto out;
    }
    size_t head = (size_t)(nl + 1 - text);
    memcpy(want, text, head);
    strcpy(want + head, key);
    strcat(want, text + head);
    f = fopen(cfg, "rb");
    have = f ? slurp(f, &len) : NULL;
    if (f) fclose(f);
    printf("\n== MTP layer for it in %s ==\n", dir);
    if (have && !strcmp(have, want) && file_exists(shard) && file_exists(link) &&
        file_exists(index)) {
        printf("  reusing it (config.json matches)\n");
    } else {
        double t0 = bench_now();
        if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
            fprintf(stderr, "error: cannot create %s: %s\n", dir, strerror(errno));
            goto out;
        }
        unlink(cfg);
        unlink(link);
        if (symlink("../bf16/model.safetensors", link) != 0) {
            fprintf(stderr, "error: cannot link %s: %s\n", link, strerror(errno));
            goto out;
        }
        if (write_mtp_shard(shard, s) || write_index(index, base_file, s)) goto out;
        f = fopen(cfg, "wb");
        int bad = !f || fputs(want, f) < 0;
        if ((f && fclose(f) != 0) || bad) {
            fprintf(stderr, "error: writing %s: %s\n", cfg, strerror(errno));
            goto out;
        }
        printf("  generated and written in %.1f s\n", bench_now() - t0);
    }
    dsc_err err = {0};
    if (dsc_model_load(dir, out, &err) != DSC_OK) {
        fprintf(stderr, "error: dsc_model_load(%s): %s\n", dir, err.msg);
        goto out;
    }
    rc = 0;
out:
    free(text);
    free(want);
    free(have);
    return rc;
}

/* ------------------------------------------------------------ generation */

typedef struct {
    dsc_ctx_t *c;
    int32_t *ids;
    int64_t n, cap, e_first; /* the context's expert counter at the first token */
} collector;

static int on_token(void *user, int32_t id) {
    collector *k = user;
    if (k->n == 0) k->e_first = k->c->experts_touched;
    if (k->n < k->cap) k->ids[k->n] = id;
    k->n++;
    return 0;
}

static dsc_sampler_t *new_sampler(const options *o, int64_t V, uint64_t seed) {
    dsc_sampler_params sp = dsc_sampler_default_params();
    sp.temp = (float)o->temp; /* pure temperature sampling: no top-k/p, min-p */
    sp.top_k = 0;
    sp.top_p = 1.0f;
    sp.min_p = 0.0f;
    sp.repeat_penalty = 1.0f;
    sp.seed = seed;
    sp.ignore_eos = 1;
    sp.eos_id = -1;
    dsc_sampler_t *s = NULL;
    dsc_err err = {0};
    if (dsc_sampler_new(&sp, V, &s, &err) != DSC_OK)
        fprintf(stderr, "error: dsc_sampler_new: %s\n", err.msg);
    return s;
}

/* One generate call on prompt p: out receives the ids (cap n_gen). */
static int gen_one(const bmodel *b, const options *o, row *r, int p, int64_t n, int32_t *out,
                   dsc_gen_stats *st, int64_t *experts) {
    dsc_err err = {0};
    dsc_sampler_t *s = new_sampler(o, b->V, (uint64_t)o->seed + (uint64_t)p);
    if (!s) return 1;
    dsc_ctx_reset(r->c);
    collector k = {r->c, out, 0, n, r->c->experts_touched};
    dsc_status rs = dsc_generate(r->c, s, b->ids + p * b->plen_max, b->plen[p], n, -1, on_token,
                                 &k, st, &err);
    dsc_sampler_free(s);
    if (rs != DSC_OK) {
        fprintf(stderr, "error: %s: dsc_generate (prompt %d, draft_n %d): %s\n", b->name, p,
                r->draft_n, err.msg);
        return 1;
    }
    if (st->n_gen != n) {
        fprintf(stderr, "error: %s: %lld tokens generated, %lld asked (stop %d)\n", b->name,
                (long long)st->n_gen, (long long)n, (int)st->stop);
        return 1;
    }
    *experts = r->c->experts_touched - k.e_first;
    return 0;
}

/*
 * One timed pass of configuration r over every prompt: *t = the summed
 * gen_s. With first set, the counters are kept and, for speculation, the
 * ids are compared with the plain ones (ref); the plain pass keeps its ids
 * in ref.
 */
static int pass(const bmodel *b, const options *o, row *r, int first, int32_t *ref,
                int32_t *scratch, double *t) {
    *t = 0.0;
    for (int p = 0; p < b->n_prompts; p++) {
        dsc_gen_stats st;
        int64_t ex = 0;
        int32_t *out = r->draft_n == 0 ? ref + p * b->n_gen : scratch;
        if (gen_one(b, o, r, p, b->n_gen, out, &st, &ex)) return 1;
        *t += st.gen_s;
        if (!first) continue;
        r->tokens += st.n_gen - 1;
        r->gen += st.n_gen;
        r->steps += st.spec.n_steps;
        r->spec_s += st.spec.spec_s;
        r->draft_s += st.spec.draft_s;
        r->verify_s += st.spec.verify_s;
        r->spec_tokens += st.spec.n_spec_tokens;
        for (int j = 0; j < DSC_SPEC_MAX_DRAFT; j++)
            r->drafted[j] += st.spec.n_drafted[j], r->accepted[j] += st.spec.n_accepted[j];
        if (r->draft_n == 0) {
            r->ex_main += ex;
        } else {
            r->ex_main += st.spec.experts_spec + st.spec.experts_plain;
            r->ex_draft += ex - st.spec.experts_spec - st.spec.experts_plain;
        }
        if (r->draft_n > 0 && o->temp <= 0.0) {
            const int32_t *want = ref + p * b->n_gen;
            for (int64_t i = 0; i < b->n_gen && r->identical; i++)
                if (scratch[i] != want[i]) r->identical = 0, r->diff_prompt = p, r->diff_pos = i;
        }
    }
    return 0;
}

/* A context for r, and an untimed call that pages its weights in. */
static int open_row(const bmodel *b, const options *o, row *r, int32_t *scratch) {
    dsc_ctx_params p = dsc_ctx_default_params();
    p.n_ctx = b->plen_max + b->n_gen + DSC_SPEC_MAX_DRAFT + 2;
    p.n_batch = p.n_ctx; /* the prompt in one chunk; spec.c keeps every hidden row */
    p.n_threads = r->threads;
    p.spec = r->draft_n > 0 ? DSC_SPEC_MTP : DSC_SPEC_NONE;
    p.draft_n = r->draft_n;
    p.draft_vocab = r->draft_vocab;
    p.spec_probe = 0;
    dsc_err err = {0};
    if (dsc_ctx_new(b->m, &p, &r->c, &err) != DSC_OK) {
        fprintf(stderr, "error: %s: dsc_ctx_new (draft_n %d, draft_vocab %lld): %s\n", b->name,
                r->draft_n, (long long)r->draft_vocab, err.msg);
        return 1;
    }
    dsc_gen_stats st;
    int64_t ex;
    return gen_one(b, o, r, 0, b->n_gen < WARM_N ? b->n_gen : WARM_N, scratch, &st, &ex);
}

static void fmt_vocab(char *buf, size_t cap, int64_t dv) {
    if (dv > 0) snprintf(buf, cap, "%lld", (long long)dv);
    else snprintf(buf, cap, "full");
}

/* "81 (92/80/71)": all drafts, then by position. */
static void fmt_accept(char *buf, size_t cap, const row *r) {
    int64_t d = 0, a = 0;
    for (int j = 0; j < r->draft_n; j++) d += r->drafted[j], a += r->accepted[j];
    int w = snprintf(buf, cap, "%.0f (", d ? 100.0 * (double)a / (double)d : 0.0);
    for (int j = 0; j < r->draft_n && w > 0 && (size_t)w < cap; j++)
        w += snprintf(buf + w, cap - (size_t)w, "%s%.0f", j ? "/" : "",
                      r->drafted[j] ? 100.0 * (double)r->accepted[j] / (double)r->drafted[j]
                                    : 0.0);
    if (w > 0 && (size_t)w < cap) snprintf(buf + w, cap - (size_t)w, ")");
}

static double tok_s(const row *r) { return r->t_med > 0 ? (double)r->tokens / r->t_med : 0.0; }

static double per_tok(int64_t ex, const row *r) {
    return r->tokens ? (double)ex / (double)r->tokens : 0.0;
}

static const char *ident_str(const row *r) {
    return r->identical < 0 ? "n/a" : r->identical ? "yes" : "NO";
}

/*
 * Every configuration of model b at `threads` threads: rows[0] plain, then
 * draft_n x draft_vocab. Each repetition runs them in turn (so drift hits
 * them alike); a timing during which others kept more than BUSY_MAX CPUs
 * busy is redone (TRIES at most, the fastest kept).
 */
static int run_group(const bmodel *b, const options *o, row *rows, int nr, int32_t *ref,
                     int32_t *scratch) {
    for (int i = 0; i < nr; i++)
        if (open_row(b, o, &rows[i], scratch)) return 1;
    for (int rep = 0; rep < o->reps; rep++) {
        for (int i = 0; i < nr; i++) {
            row *r = &rows[i];
            double best = 1e30, busy = 0.0;
            for (int tr = 0; tr < TRIES && (tr == 0 || busy > BUSY_MAX); tr++) {
                double t;
                bench_mark m0 = bench_mark_now();
                if (pass(b, o, r, rep == 0 && tr == 0, ref, scratch, &t)) return 1;
                double bz = bench_others(m0, bench_mark_now());
                if (tr > 0) r->redone++;
                if (t < best) best = t, busy = bz;
            }
            r->t[rep] = best;
            r->busy[rep] = busy;
        }
    }
    const row *pl = &rows[0];
    for (int i = 0; i < nr; i++) {
        row *r = &rows[i];
        r->t_med = median(r->t, (int)o->reps);
        r->busy_max = 0.0;
        for (int rep = 0; rep < o->reps; rep++)
            r->busy_max = r->busy[rep] > r->busy_max ? r->busy[rep] : r->busy_max;
        if (r->draft_n == 0) {
            printf("  thr %d  plain                 : %lld tokens, %8.1f tok/s (median %.3f s of "
                   "%lld), experts %.2f/token, busy %.2f%s\n",
                   r->threads, (long long)r->tokens, tok_s(r), r->t_med, (long long)o->reps,
                   per_tok(r->ex_main, r), r->busy_max, r->redone ? " (redone)" : "");
            continue;
        }
        char dv[24], acc[96];
        fmt_vocab(dv, sizeof dv, r->draft_vocab);
        fmt_accept(acc, sizeof acc, r);
        printf("  thr %d  draft_n %d vocab %-6s: acc %% %s, %.2f tok/pass, %8.1f tok/s "
               "(%.2fx), experts %.2f/token (+%.2f draft), identical %s, busy %.2f%s\n",
               r->threads, r->draft_n, dv, acc,
               r->steps ? (double)r->spec_tokens / (double)r->steps : 0.0, tok_s(r),
               tok_s(pl) > 0 ? tok_s(r) / tok_s(pl) : 0.0, per_tok(r->ex_main, r),
               per_tok(r->ex_draft, r), ident_str(r), r->busy_max, r->redone ? " (redone)" : "");
        if (r->steps > 0) {
            double us = 1e6 / (double)r->steps;
            printf("         per pass %.0f us = draft %.0f + verify %.0f + accept %.0f; plain "
                   "%.0f us/token\n",
                   r->spec_s * us, r->draft_s * us, r->verify_s * us,
                   (r->spec_s - r->draft_s - r->verify_s) * us,
                   pl->tokens ? 1e6 * pl->t_med / (double)pl->tokens : 0.0);
        }
        if (r->identical == 0)
            printf("  *** BUG: greedy speculation differs from plain greedy decoding: prompt %d, "
                   "token %lld ***\n", r->diff_prompt, (long long)r->diff_pos);
    }
    for (int i = 0; i < nr; i++) dsc_ctx_free(rows[i].c), rows[i].c = NULL;
    return 0;
}

/* The first plain greedy continuation, as text (shows the model is sane). */
static void show_sample(const bmodel *b, const int32_t *ref) {
    if (!b->tok) return;
    char text[400], piece[512];
    size_t w = 0;
    dsc_detok_state ds = {0};
    for (int64_t i = 0; i < b->n_gen && w < 200; i++) {
        int64_t k = dsc_detokenize_piece(b->tok, ref[i], 1, &ds, piece, sizeof piece);
        for (int64_t j = 0; j < k && w + 1 < sizeof text; j++)
            text[w++] = piece[j] == '\n' ? ' ' : piece[j];
    }
    while (w > 0 && ((unsigned char)text[w - 1] & 0x80)) w--;
    text[w] = 0;
    printf("  prompt 0, plain: \"%s...\"\n", text);
}

/* ------------------------------------------------------------ main */

static const char usage[] =
    "usage: bench_spec [options]   (run from the repository root)\n"
    "  --model DIR        trained checkpoint with an MTP module; repeatable or a comma list\n"
    "                     (default build/demo-model when it exists)\n"
    "  --v2lite 0|1       also the random V2-Lite-shaped model + MTP layer (default 1)\n"
    "  --layers N         its layers (default 4: 1 dense + 3 MoE), --vocab N (102400)\n"
    "  --dir PATH         its checkpoints: PATH/bf16 (as bench_decode) and PATH/" MTP_SUBDIR "\n"
    "                     (default: a temp dir, deleted at the end)\n"
    "  --prompts FILE     UTF-8 corpus; prompts come from its last 1% (default build/brown.txt,\n"
    "                     else data/brown.txt.xz through xz -dc)\n"
    "  --n-prompts N      prompts per trained model (default 8)\n"
    "  --prompt-len N     tokens per prompt (default 32)\n"
    "  -n N               tokens generated per prompt, trained models (default 128)\n"
    "  --v2lite-n N       the same for the V2-Lite model (default 32)\n"
    "  --v2lite-prompts N prompts for the V2-Lite model (default 2)\n"
    "  --threads LIST     e.g. 1,2 (default 1,2)\n"
    "  --draft-n LIST     drafts per step (default 1,2,3)\n"
    "  --draft-vocab LIST draft head rows, 0 = full (default 0 and vocab/4 when vocab > 2048)\n"
    "  --temp T           sampling temperature, 0 = greedy (default 0; e.g. 0.8)\n"
    "  --seed N           sampling seed (prompt i uses N + i; default 1)\n"
    "  --reps N           timed passes per configuration, median reported (default 3)\n";

int main(int argc, char **argv) {
    options o = {.v2lite = 1, .layers = 4, .vocab = 102400, .n = 128, .v2_n = 32,
                 .n_prompts = 8, .v2_prompts = 2, .prompt_len = 32, .reps = 3, .seed = 1,
                 .threads = {1, 2}, .n_threads = 2, .draft_n = {1, 2, 3}, .n_draft_n = 3};
    const bench_opt opts[] = {
        {"--v2lite", BENCH_OPT_I64, &o.v2lite, NULL, 0, 1},
        {"--layers", BENCH_OPT_I64, &o.layers, NULL, 1, 1000},
        {"--vocab", BENCH_OPT_I64, &o.vocab, NULL, 2, INT32_MAX},
        {"--dir", BENCH_OPT_STR, &o.dir, NULL, 0, 0},
        {"--prompts", BENCH_OPT_STR, &o.prompts, NULL, 0, 0},
        {"--n-prompts", BENCH_OPT_I64, &o.n_prompts, NULL, 1, 64},
        {"--prompt-len", BENCH_OPT_I64, &o.prompt_len, NULL, 1, 4096},
        {"-n", BENCH_OPT_I64, &o.n, NULL, 2, 1 << 20},
        {"--v2lite-n", BENCH_OPT_I64, &o.v2_n, NULL, 2, 1 << 20},
        {"--v2lite-prompts", BENCH_OPT_I64, &o.v2_prompts, NULL, 1, 64},
        {"--threads", BENCH_OPT_LIST, o.threads, &o.n_threads, 1, 1024},
        {"--draft-n", BENCH_OPT_LIST, o.draft_n, &o.n_draft_n, 1, DSC_SPEC_MAX_DRAFT},
        {"--draft-vocab", BENCH_OPT_LIST, o.draft_vocab, &o.n_draft_vocab, 0, INT32_MAX},
        {"--temp", BENCH_OPT_STR, &o.temp_s, NULL, 0, 0},
        {"--seed", BENCH_OPT_I64, &o.seed, NULL, 0, INT64_MAX / 2},
        {"--reps", BENCH_OPT_I64, &o.reps, NULL, 1, REPS_MAX},
    };
    setvbuf(stdout, NULL, _IOLBF, 0); /* progress shows even when piped to a file */

    /* --model may repeat (and take a comma list): collect it apart */
    char **args = malloc((size_t)(argc + 1) * sizeof *args);
    int nargs = 0;
    if (!args) return 1;
    args[nargs++] = argv[0];
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--model") != 0) {
            args[nargs++] = argv[i];
            continue;
        }
        if (i + 1 >= argc) return fprintf(stderr, "--model needs a value\n"), free(args), 2;
        char *list = argv[++i];
        for (char *save = NULL, *tk = strtok_r(list, ",", &save); tk;
             tk = strtok_r(NULL, ",", &save)) {
            if (o.n_models == MAX_MODELS)
                return fprintf(stderr, "--model: at most %d\n", MAX_MODELS), free(args), 2;
            o.models[o.n_models++] = tk;
        }
    }
    int pa = bench_parse_args(nargs, args, opts, (int)(sizeof opts / sizeof *opts), usage);
    free(args);
    if (pa <= 0) return pa < 0 ? 0 : 2;
    if (o.temp_s) {
        char *end;
        o.temp = strtod(o.temp_s, &end);
        if (*end || end == o.temp_s || !(o.temp >= 0.0 && o.temp <= 100.0))
            return fprintf(stderr, "bad --temp %s\n", o.temp_s), 2;
    }
    if (!o.n_models && file_exists("build/demo-model/config.json"))
        o.models[o.n_models++] = "build/demo-model";
    if (!o.n_models && !o.v2lite) {
        fprintf(stderr, "no model: pass --model DIR (a trained checkpoint with an MTP module; "
                        "`make demo` makes build/demo-model) or --v2lite 1\n%s", usage);
        return 2;
    }

    bench_shapes s = bench_v2lite_shapes(o.layers, o.vocab);
    if (o.v2lite) {
        bench_print_header("bench_spec", &s);
    } else {
        printf("dsc bench_spec: %ld online cpus, SIMD %s, GEMM %s\n",
               sysconf(_SC_NPROCESSORS_ONLN), dsc_kernels_simd_name(), dsc_kernels_blas_name());
    }
    printf("decoding: %s; spec_probe 0; prompts of <= %lld tokens; each measurement: every "
           "prompt, median of %lld\n",
           o.temp > 0 ? "temperature sampling (no top-k/top-p/min-p), seeded" : "greedy (temp 0)",
           (long long)o.prompt_len, (long long)o.reps);
    if (o.temp > 0) printf("temperature %g, seed %lld + prompt index\n", o.temp, (long long)o.seed);

    bmodel bm[MAX_MODELS + 1];
    memset(bm, 0, sizeof bm);
    int nbm = 0, rc = 1, mismatch = 0, n_rows = 0;
    row *rows = NULL;
    int32_t *ref = NULL, *scratch = NULL;
    bench_store store = {.tmp = 0};
    char *text = NULL;
    size_t text_len = 0;

    for (int i = 0; i < o.n_models; i++) {
        bmodel *b = &bm[nbm];
        const char *base = strrchr(o.models[i], '/');
        base = base && base[1] ? base + 1 : o.models[i];
        snprintf(b->name, sizeof b->name, "%s", base);
        printf("\n== trained model %s ==\n", o.models[i]);
        dsc_err err = {0};
        if (dsc_model_load(o.models[i], &b->m, &err) != DSC_OK) {
            fprintf(stderr, "error: dsc_model_load(%s): %s\n", o.models[i], err.msg);
            goto out;
        }
        nbm++;
        dsc_model_info info;
        dsc_model_get_info(b->m, &info);
        const dsc_config *cf = dsc_model_config(b->m);
        b->V = cf->vocab_size;
        b->n_gen = o.n;
        b->n_prompts = (int)o.n_prompts;
        printf("  %s, %lld layers (%lld MoE: %lld experts top-%lld), d %lld, vocab %lld, "
               "%lld MTP module(s)\n",
               cf->model_type, (long long)cf->num_hidden_layers, (long long)info.n_moe_layers,
               (long long)cf->n_routed_experts, (long long)cf->num_experts_per_tok,
               (long long)cf->hidden_size, (long long)b->V, (long long)info.n_mtp_modules);
        if (info.n_mtp_modules == 0) {
            fprintf(stderr, "error: %s has no MTP module (model.layers.%lld.eh_proj.weight)\n",
                    o.models[i], (long long)cf->num_hidden_layers);
            goto out;
        }
        dsc_model_prefetch(b->m, NULL, NULL);
        if (dsc_tokenizer_load(o.models[i], &b->tok, &err) != DSC_OK) {
            printf("  no tokenizer (%s): random prompt ids\n", err.msg);
            b->tok = NULL;
            if (random_prompts(b, &o)) goto out;
            continue;
        }
        const char *src = "";
        if (!text && !(text = load_corpus(&o, &text_len, &src))) goto out;
        if (*src) printf("  corpus %s (%zu bytes); prompts from its last 1%%\n", src, text_len);
        if (text_prompts(b, &o, text, text_len)) goto out;
    }
    if (o.v2lite) {
        bmodel *b = &bm[nbm];
        printf("\n== random V2-Lite-shaped model + MTP layer (bf16, %lld of V2-Lite's 27 layers; "
               "random weights: drafts are essentially never accepted, this part measures the "
               "cost of speculation) ==\n",
               (long long)o.layers);
        if (bench_store_open(&store, o.dir)) goto out;
        if (load_v2lite(&store, &s, &b->m)) goto out;
        nbm++;
        snprintf(b->name, sizeof b->name, "v2lite-L%lld (random)", (long long)o.layers);
        b->random = 1;
        b->V = s.V;
        b->n_gen = o.v2_n;
        b->n_prompts = (int)o.v2_prompts;
        dsc_model_info info;
        dsc_model_get_info(b->m, &info);
        printf("  loaded: %.3f G params (%.3f G active/token), MTP module %.3f G params, "
               "%.2f GiB of files\n",
               (double)info.n_params * 1e-9, (double)info.n_params_active * 1e-9,
               (double)info.n_params_mtp * 1e-9, (double)info.file_bytes / (double)(1 << 30));
        double t0 = bench_now();
        dsc_model_prefetch(b->m, NULL, NULL);
        printf("  prefetched in %.1f s\n", bench_now() - t0);
        if (random_prompts(b, &o)) goto out;
    }

    /* the configurations: per model and thread count, plain then every
       draft_n x draft_vocab */
    int per_cfg = 1 + o.n_draft_n * (o.n_draft_vocab ? o.n_draft_vocab : 2);
    rows = calloc((size_t)(nbm * o.n_threads * per_cfg), sizeof *rows);
    int64_t ref_n = 0, scr_n = 0;
    for (int i = 0; i < nbm; i++) {
        int64_t a = bm[i].n_prompts * bm[i].n_gen;
        ref_n = a > ref_n ? a : ref_n;
        scr_n = bm[i].n_gen > scr_n ? bm[i].n_gen : scr_n;
    }
    ref = malloc((size_t)ref_n * sizeof *ref);
    scratch = malloc((size_t)scr_n * sizeof *scratch);
    if (!rows || !ref || !scratch) {
        fprintf(stderr, "error: out of memory\n");
        goto out;
    }
    for (int i = 0; i < nbm; i++) {
        bmodel *b = &bm[i];
        int64_t dvs[BENCH_MAX_LIST];
        int ndv = 0;
        if (o.n_draft_vocab) {
            for (int k = 0; k < o.n_draft_vocab; k++) {
                if (o.draft_vocab[k] <= b->V)
                    dvs[ndv++] = o.draft_vocab[k] < b->V ? o.draft_vocab[k] : 0; /* V: full */
                else
                    printf("  (draft_vocab %lld > vocab %lld: skipped for %s)\n",
                           (long long)o.draft_vocab[k], (long long)b->V, b->name);
            }
        } else {
            dvs[ndv++] = 0;
            if (b->V > 2048) dvs[ndv++] = b->V / 4;
        }
        printf("\n== %s: %d prompts x %lld tokens ==\n", b->name, b->n_prompts,
               (long long)b->n_gen);
        for (int ti = 0; ti < o.n_threads; ti++) {
            row *g = &rows[n_rows];
            int nr = 0;
            g[nr++] = (row){.model = i, .threads = (int)o.threads[ti], .identical = -1};
            for (int di = 0; di < o.n_draft_n; di++)
                for (int vi = 0; vi < ndv; vi++)
                    g[nr++] = (row){.model = i, .threads = (int)o.threads[ti],
                                    .draft_n = (int)o.draft_n[di], .draft_vocab = dvs[vi],
                                    .identical = o.temp > 0 ? -1 : 1};
            bench_set_threads((int)o.threads[ti]);
            if (run_group(b, &o, g, nr, ref, scratch)) {
                for (int k = 0; k < nr; k++) dsc_ctx_free(g[k].c);
                goto out;
            }
            if (ti == 0) show_sample(b, ref);
            n_rows += nr;
        }
    }

    printf("\n== speculative decoding with the MTP module vs plain decoding (%s) ==\n\n",
           o.temp > 0 ? "temperature sampling" : "greedy");
    printf("| model | thr | draft_n | draft_vocab | accept %% all (by position) | tok/pass | "
           "plain tok/s | spec tok/s | speedup | experts/tok plain -> spec (+draft) | "
           "identical | busy |\n");
    printf("| --- | --: | --: | --: | --- | --: | --: | --: | --: | --- | --- | --: |\n");
    const row *pl = NULL;
    for (int i = 0; i < n_rows; i++) {
        const row *r = &rows[i];
        if (r->draft_n == 0) {
            pl = r;
            continue;
        }
        char dv[24], acc[96];
        fmt_vocab(dv, sizeof dv, r->draft_vocab);
        fmt_accept(acc, sizeof acc, r);
        double busy = r->busy_max > pl->busy_max ? r->busy_max : pl->busy_max;
        printf("| %s | %d | %d | %s | %s | %.2f | %.1f | %.1f | %.2fx | %.2f -> %.2f (+%.2f) | "
               "%s | %.2f |\n",
               bm[r->model].name, r->threads, r->draft_n, dv, acc,
               r->steps ? (double)r->spec_tokens / (double)r->steps : 0.0, tok_s(pl), tok_s(r),
               tok_s(pl) > 0 ? tok_s(r) / tok_s(pl) : 0.0, per_tok(pl->ex_main, pl),
               per_tok(r->ex_main, r), per_tok(r->ex_draft, r), ident_str(r), busy);
        mismatch |= r->identical == 0;
    }
    printf("\naccept %%    = drafts accepted / drafted, all positions, then position 1..draft_n\n"
           "tok/pass    = tokens committed per verify pass of the main model (1 + accepted)\n"
           "tok/s       = decoded tokens (n_gen - 1 per prompt) / summed gen_s, median of the "
           "reps; speedup = spec / plain, same threads, same run\n"
           "experts/tok = distinct routed experts per MoE layer and main-model pass, summed, per "
           "decoded token;\n"
           "              +draft: the MTP module's own MoE block (its catch-up over the prompt "
           "included)\n"
           "identical   = greedy: every prompt's tokens equal plain decoding's (n/a when "
           "sampling)\n"
           "busy        = most CPUs other processes kept busy during the row's or its "
           "baseline's kept timings\n");
    if (o.temp <= 0) {
        for (int i = 0; i < nbm; i++) {
            if (bm[i].random) continue;
            double acc1 = -1, best = 0;
            const row *br = NULL;
            for (int k = 0; k < n_rows; k++) {
                const row *r = &rows[k];
                if (r->model != i) continue;
                if (r->draft_n == 0) {
                    pl = r;
                    continue;
                }
                if (acc1 < 0 && r->drafted[0])
                    acc1 = 100.0 * (double)r->accepted[0] / (double)r->drafted[0];
                double sp = tok_s(pl) > 0 ? tok_s(r) / tok_s(pl) : 0.0;
                if (sp > best) best = sp, br = r;
            }
            if (!br) continue;
            char dv[24];
            fmt_vocab(dv, sizeof dv, br->draft_vocab);
            printf("targets, %s at temp 0: acceptance of the first draft %.0f%% (target >= 70%%); "
                   "best speedup %.2fx at %d thr, draft_n %d, draft_vocab %s (target >= 1.4x)\n",
                   bm[i].name, acc1, best, br->threads, br->draft_n, dv);
        }
    }
    if (mismatch)
        printf("\n*** BUG: greedy speculation gave other tokens than plain greedy decoding "
               "(identical = NO above) ***\n");
    rc = mismatch ? 1 : 0;
out:
    for (int i = 0; i < nbm; i++) {
        dsc_model_free(bm[i].m);
        dsc_tokenizer_free(bm[i].tok);
        free(bm[i].ids);
    }
    free(rows);
    free(ref);
    free(scratch);
    free(text);
    mtp_drop(&store);
    dsc_dtype bf = DSC_BF16;
    bench_finish(&store, &s, &bf, 1);
    return rc;
}
