/*
 * init.c - random initialisation of a new model directory (see init.h).
 *
 * The tensor list is built once, in the loader's order (weights.c), as a
 * table of (name, shape, kind); the values are then carved from one fp32
 * block and filled per tensor from a splitmix64 stream seeded by
 * hash(seed, name), Box-Muller for the normals.
 */
#include "train/init.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "train/ckpt.h"
#include "util/util.h"

typedef enum { INIT_NORMAL = 0, INIT_ONES, INIT_ZEROS } init_kind;

typedef struct {
    dsc_ckpt_tensor *t;   /* [cap] names malloc'd, data carved later */
    init_kind *kind;      /* [cap]                                   */
    int64_t n, cap;
    int oom;
} tlist;

dsc_init_params dsc_init_default_params(void) {
    dsc_init_params p = {0};
    p.std = 0.006;
    return p;
}

/* Append tensor `name` of shape (rows) or, with cols > 0, (rows, cols). */
static void add(tlist *l, init_kind k, int64_t rows, int64_t cols, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void add(tlist *l, init_kind k, int64_t rows, int64_t cols, const char *fmt, ...) {
    if (l->oom) return;
    if (l->n == l->cap) {
        int64_t cap = l->cap ? 2 * l->cap : 64;
        dsc_ckpt_tensor *t = realloc(l->t, (size_t)cap * sizeof *t);
        if (t) l->t = t;
        init_kind *kd = t ? realloc(l->kind, (size_t)cap * sizeof *kd) : NULL;
        if (kd) l->kind = kd;
        if (!t || !kd) {
            l->oom = 1;
            return;
        }
        l->cap = cap;
    }
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    dsc_ckpt_tensor *t = &l->t[l->n];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    if (!t->name) {
        l->oom = 1;
        return;
    }
    t->ndim = cols > 0 ? 2 : 1;
    t->shape[0] = rows;
    t->shape[1] = cols;
    l->kind[l->n++] = k;
}

static void add_mlp(tlist *l, const char *prefix, int64_t d, int64_t ff) {
    add(l, INIT_NORMAL, ff, d, "%s.gate_proj.weight", prefix);
    add(l, INIT_NORMAL, ff, d, "%s.up_proj.weight", prefix);
    add(l, INIT_NORMAL, d, ff, "%s.down_proj.weight", prefix);
}

/* One decoder block's tensors under model.layers.{i}. (weights.c's order):
   norms, MLA, the DSA indexer for deepseek_v32, dense MLP or MoE. */
static void add_block(tlist *l, const dsc_config *c, int64_t i) {
    int64_t d = c->hidden_size, H = c->num_attention_heads;
    int64_t dqk = c->qk_nope_head_dim + c->qk_rope_head_dim;
    long long li = (long long)i;
#define P "model.layers.%lld."
    add(l, INIT_ONES, d, 0, P "input_layernorm.weight", li);
    add(l, INIT_ONES, d, 0, P "post_attention_layernorm.weight", li);
    /* NSA in place of MLA (config.c): every projection normal like the
       other matrices, so gate_proj starts near 0 and every gate near 0.5
       (no branch favoured; lucidrains' window-favouring gate init is not
       copied); pe normal too (a small random shift per block position). */
    if (c->attention_nsa) {
        dsc_nsa_tensor nt[DSC_NSA_W_N];
        int nn = dsc_nsa_tensors(c, nt);
        for (int k = 0; k < nn; k++)
            add(l, INIT_NORMAL, nt[k].rows, nt[k].cols, P "self_attn.%s", li, nt[k].name);
    } else if (c->q_lora_rank > 0) {   /* MLA (spec §2.1) */
        add(l, INIT_NORMAL, c->q_lora_rank, d, P "self_attn.q_a_proj.weight", li);
        add(l, INIT_ONES, c->q_lora_rank, 0, P "self_attn.q_a_layernorm.weight", li);
        add(l, INIT_NORMAL, H * dqk, c->q_lora_rank, P "self_attn.q_b_proj.weight", li);
    } else {
        add(l, INIT_NORMAL, H * dqk, d, P "self_attn.q_proj.weight", li);
    }
    if (!c->attention_nsa) {
        add(l, INIT_NORMAL, c->kv_lora_rank + c->qk_rope_head_dim, d,
            P "self_attn.kv_a_proj_with_mqa.weight", li);
        add(l, INIT_ONES, c->kv_lora_rank, 0, P "self_attn.kv_a_layernorm.weight", li);
        add(l, INIT_NORMAL, H * (c->qk_nope_head_dim + c->v_head_dim), c->kv_lora_rank,
            P "self_attn.kv_b_proj.weight", li);
        add(l, INIT_NORMAL, d, H * c->v_head_dim, P "self_attn.o_proj.weight", li);
    }
    /* DSA lightning indexer (spec §4.2) */
    if (c->index_topk > 0) {
        int64_t HI = c->index_n_heads, DI = c->index_head_dim;
        add(l, INIT_NORMAL, HI * DI, c->q_lora_rank, P "self_attn.indexer.wq_b.weight", li);
        add(l, INIT_NORMAL, DI, d, P "self_attn.indexer.wk.weight", li);
        add(l, INIT_ONES, DI, 0, P "self_attn.indexer.k_norm.weight", li);
        add(l, INIT_ZEROS, DI, 0, P "self_attn.indexer.k_norm.bias", li);
        add(l, INIT_NORMAL, HI, d, P "self_attn.indexer.weights_proj.weight", li);
    }
    char prefix[128];
    if (!dsc_config_layer_is_moe(c, i)) {
        snprintf(prefix, sizeof prefix, "model.layers.%lld.mlp", li);
        add_mlp(l, prefix, d, c->intermediate_size);
        return;
    }
    /* DeepSeekMoE (spec §5): router, correction bias, shared, routed */
    int64_t E = c->n_routed_experts;
    add(l, INIT_NORMAL, E, d, P "mlp.gate.weight", li);
    if (c->topk_method == DSC_TOPK_NOAUX_TC)
        add(l, INIT_ZEROS, E, 0, P "mlp.gate.e_score_correction_bias", li);
    if (c->n_shared_experts > 0) {
        snprintf(prefix, sizeof prefix, "model.layers.%lld.mlp.shared_experts", li);
        add_mlp(l, prefix, d, c->n_shared_experts * c->moe_intermediate_size);
    }
    for (int64_t e = 0; e < E; e++) {
        snprintf(prefix, sizeof prefix, "model.layers.%lld.mlp.experts.%lld", li, (long long)e);
        add_mlp(l, prefix, d, c->moe_intermediate_size);
    }
#undef P
}

/* Every tensor weights.c binds for c, in its order, then the MTP layers
   (spec §6.3; their stored copies of the embedding and head are added by
   dsc_ckpt_save). */
static void build_list(tlist *l, const dsc_config *c) {
    int64_t d = c->hidden_size;
    add(l, INIT_NORMAL, c->vocab_size, d, "model.embed_tokens.weight");
    add(l, INIT_ONES, d, 0, "model.norm.weight");
    if (!c->tie_word_embeddings) add(l, INIT_NORMAL, c->vocab_size, d, "lm_head.weight");
    for (int64_t i = 0; i < c->num_hidden_layers; i++) add_block(l, c, i);
    for (int64_t k = 0; k < c->num_nextn_predict_layers; k++) {
        long long li = (long long)(c->num_hidden_layers + k);
        add(l, INIT_ONES, d, 0, "model.layers.%lld.enorm.weight", li);
        add(l, INIT_ONES, d, 0, "model.layers.%lld.hnorm.weight", li);
        add(l, INIT_NORMAL, d, 2 * d, "model.layers.%lld.eh_proj.weight", li);
        add_block(l, c, c->num_hidden_layers + k);
        add(l, INIT_ONES, d, 0, "model.layers.%lld.shared_head.norm.weight", li);
    }
}

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Stream seed of one tensor: FNV-1a of its name, mixed with the run seed. */
static uint64_t tensor_seed(uint64_t seed, const char *name) {
    uint64_t h = 0xCBF29CE484222325ull;
    for (const char *p = name; *p; p++) h = (h ^ (unsigned char)*p) * 0x100000001B3ull;
    uint64_t s = seed ^ h;
    return splitmix64(&s);
}

/* (0, 1]: 53 random bits, never 0 (log below). */
static double uniform01(uint64_t *s) { return ((double)(splitmix64(s) >> 11) + 1.0) * 0x1p-53; }

static void fill(float *x, int64_t n, init_kind k, double std, uint64_t seed) {
    if (k != INIT_NORMAL) {
        for (int64_t i = 0; i < n; i++) x[i] = k == INIT_ONES ? 1.0f : 0.0f;
        return;
    }
    uint64_t s = seed;
    for (int64_t i = 0; i < n; i += 2) {   /* Box-Muller, two normals per draw */
        double r = sqrt(-2.0 * log(uniform01(&s))), a = 6.283185307179586 * uniform01(&s);
        x[i] = (float)(std * r * cos(a));
        if (i + 1 < n) x[i + 1] = (float)(std * r * sin(a));
    }
}

static int config_ok(const dsc_config *c) {
    if (c->vocab_size < 1 || c->hidden_size < 1 || c->num_hidden_layers < 0 ||
        c->num_attention_heads < 1 || c->qk_rope_head_dim < 0 || c->qk_nope_head_dim < 0 ||
        c->q_lora_rank < 0 ||
        (!c->attention_nsa && (c->kv_lora_rank < 1 || c->v_head_dim < 1)) ||
        c->num_nextn_predict_layers < 0)
        return 0;
    for (int64_t l = 0; l < c->num_hidden_layers + c->num_nextn_predict_layers; l++) {
        int moe = dsc_config_layer_is_moe(c, l);
        if (!moe && c->intermediate_size < 1) return 0;
        if (moe && (c->n_routed_experts < 1 || c->moe_intermediate_size < 1)) return 0;
    }
    return 1;
}

dsc_status dsc_train_init_save(const char *dir, const dsc_config *cfg, const dsc_init_params *p,
                               dsc_err *err) {
    if (!(p->std >= 0 && isfinite(p->std)))
        return dsc_err_set(err, DSC_ERR_ARG, "init: std must be finite and >= 0 (got %g)",
                           p->std);
    if (!config_ok(cfg))
        return dsc_err_set(err, DSC_ERR_ARG, "init: the config has a non-positive dimension");
    tlist l = {0};
    build_list(&l, cfg);
    float *block = NULL;
    dsc_status s = DSC_OK;
    size_t total = 0;
    for (int64_t i = 0; i < l.n && !l.oom; i++) {
        size_t numel = (size_t)l.t[i].shape[0];
        if (l.t[i].ndim == 2 && !dsc_mul_ok(numel, (size_t)l.t[i].shape[1], &numel)) l.oom = 1;
        if (!dsc_add_ok(total, numel, &total)) l.oom = 1;
    }
    size_t bytes = 0;
    if (!l.oom && !dsc_mul_ok(total ? total : 1, sizeof(float), &bytes)) l.oom = 1;
    if (!l.oom) block = malloc(bytes);
    if (l.oom || !block) {
        s = dsc_err_set(err, DSC_ERR_OOM, "init: cannot allocate %zu parameters", total);
        goto done;
    }
    size_t off = 0;
    for (int64_t i = 0; i < l.n; i++) {
        dsc_ckpt_tensor *t = &l.t[i];
        int64_t numel = t->shape[0] * (t->ndim == 2 ? t->shape[1] : 1);
        fill(block + off, numel, l.kind[i], p->std, tensor_seed(p->seed, t->name));
        t->data = block + off;
        off += (size_t)numel;
    }
    dsc_ckpt_save_params sp = {0};
    sp.cfg = cfg;
    sp.tensors = l.t;
    sp.n_tensors = l.n;
    sp.tokenizer_dir = p->tokenizer_dir;
    s = dsc_ckpt_save(dir, &sp, err);
done:
    for (int64_t i = 0; i < l.n; i++) free((char *)l.t[i].name);
    free(l.t);
    free(l.kind);
    free(block);
    return s;
}
