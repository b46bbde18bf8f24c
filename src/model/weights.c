/*
 * weights.c - load a checkpoint directory and bind every tensor by name.
 *
 * Binding checks each expected tensor's dtype and exact shape, pairs every
 * F8_E4M3 weight with its `<name>_scale_inv` (F32, [ceil(rows/128)][ceil(cols/128)]),
 * and then walks the file's tensors: any tensor not bound is an error naming
 * it, except in the MTP layers (model.layers.{L .. L+num_nextn_predict_layers-1}.*).
 * Those are bound as MTP modules (for speculative decoding and training)
 * when the files hold them (their eh_proj is the marker; a checkpoint
 * exported without them loads as a model without MTP); their stored copies
 * of the embedding and the head (embed_tokens, shared_head.head) are left
 * unbound, as the main model's are the same tensors.
 */
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "util/util.h"

typedef struct {
    dsc_model_t *m;
    dsc_err *err;
    int64_t n_bound;
} binder;

static void count_params(dsc_model_t *m, const dsc_st_tensor *t) {
    m->info.n_params += t->numel;
    m->info.weight_bytes += (int64_t)t->nbytes;
    m->info.dtype_bytes[t->dtype] += (int64_t)t->nbytes;
}

/* Bind `name` as a matrix (rows, cols) or, with cols == 0, a vector (rows). */
static dsc_status bind(binder *b, dsc_wmat *w, const char *name, int64_t rows, int64_t cols) {
    dsc_model_t *m = b->m;
    dsc_st_tensor *t = dsc_st_find(m->st, name);
    if (!t)
        return dsc_err_set(b->err, DSC_ERR_MISSING,
                           "tensor \"%s\" is missing from the checkpoint (%s%s)", name,
                           dsc_st_file_path(m->st, 0), dsc_st_file_count(m->st) > 1
                           ? " and its other shards" : "");
    /* kernels read elements through typed pointers */
    if ((uintptr_t)t->data % dsc_dtype_size(t->dtype) != 0)
        return dsc_err_set(b->err, DSC_ERR_UNSUPPORTED,
                           "tensor \"%s\" in %s: data is not aligned to its %zu-byte elements "
                           "(re-save the file with tensors sorted by dtype size)", name,
                           dsc_st_file_path(m->st, t->file_index), dsc_dtype_size(t->dtype));
    int want_nd = cols ? 2 : 1;
    if (t->ndim != want_nd || t->shape[0] != rows || (cols && t->shape[1] != cols)) {
        char got[96] = "", want[64];
        size_t o = 0;
        for (int i = 0; i < t->ndim && o < sizeof got - 24; i++)
            o += (size_t)snprintf(got + o, sizeof got - o, "%s%lld", i ? ", " : "",
                                  (long long)t->shape[i]);
        if (cols)
            snprintf(want, sizeof want, "%lld, %lld", (long long)rows, (long long)cols);
        else
            snprintf(want, sizeof want, "%lld", (long long)rows);
        return dsc_err_set(b->err, DSC_ERR_SHAPE,
                           "tensor \"%s\" in %s has shape [%s], expected [%s]", name,
                           dsc_st_file_path(m->st, t->file_index), got, want);
    }
    memset(w, 0, sizeof *w);
    w->dtype = t->dtype;
    w->rows = rows;
    w->cols = cols ? cols : rows;
    if (!cols) w->rows = 1;
    w->data = t->data;
    count_params(m, t);
    b->n_bound++;
    if (t->dtype != DSC_F8_E4M3) return DSC_OK;

    /* FP8 needs its block scale; vectors are never stored in FP8. */
    char sname[512];
    snprintf(sname, sizeof sname, "%s_scale_inv", name);
    if (!cols)
        return dsc_err_set(b->err, DSC_ERR_SHAPE, "tensor \"%s\" is F8_E4M3 but is a vector",
                           name);
    dsc_st_tensor *s = dsc_st_find(m->st, sname);
    if (!s)
        return dsc_err_set(b->err, DSC_ERR_MISSING,
                           "tensor \"%s\" is F8_E4M3 but its scale \"%s\" is missing", name,
                           sname);
    int64_t sr = (rows + DSC_FP8_BLOCK - 1) / DSC_FP8_BLOCK;
    int64_t sc = (cols + DSC_FP8_BLOCK - 1) / DSC_FP8_BLOCK;
    if (s->dtype != DSC_F32 || s->ndim != 2 || s->shape[0] != sr || s->shape[1] != sc)
        return dsc_err_set(b->err, DSC_ERR_SHAPE,
                           "scale \"%s\" must be F32 [%lld, %lld] (128x128 blocks of [%lld, "
                           "%lld]); found %s with %d dims", sname, (long long)sr,
                           (long long)sc, (long long)rows, (long long)cols,
                           dsc_dtype_name(s->dtype), s->ndim);
    if ((uintptr_t)s->data % 4 != 0)
        return dsc_err_set(b->err, DSC_ERR_UNSUPPORTED, "scale \"%s\": data is not 4-byte "
                           "aligned", sname);
    w->scale = s->data;
    w->scale_cols = sc;
    m->info.weight_bytes += (int64_t)s->nbytes;
    m->info.dtype_bytes[DSC_F32] += (int64_t)s->nbytes;
    b->n_bound++;
    return DSC_OK;
}

static dsc_status bind_mlp(binder *b, dsc_mlp *mlp, const char *prefix, int64_t d,
                           int64_t ff) {
    char n[512];
    snprintf(n, sizeof n, "%s.gate_proj.weight", prefix);
    DSC_TRY(bind(b, &mlp->gate, n, ff, d));
    snprintf(n, sizeof n, "%s.up_proj.weight", prefix);
    DSC_TRY(bind(b, &mlp->up, n, ff, d));
    snprintf(n, sizeof n, "%s.down_proj.weight", prefix);
    DSC_TRY(bind(b, &mlp->down, n, d, ff));
    return DSC_OK;
}

static dsc_status bind_layer(binder *b, int64_t l, dsc_layer *ly) {
    const dsc_config *c = &b->m->cfg;
    int64_t d = c->hidden_size, H = c->num_attention_heads;
    int64_t dqk = c->qk_nope_head_dim + c->qk_rope_head_dim;
    char n[512];
#define NAME(fmt) (snprintf(n, sizeof n, "model.layers.%lld." fmt, (long long)l), n)
    DSC_TRY(bind(b, &ly->attn_norm, NAME("input_layernorm.weight"), d, 0));
    DSC_TRY(bind(b, &ly->ffn_norm, NAME("post_attention_layernorm.weight"), d, 0));
    if (c->attention_nsa) {   /* NSA in place of MLA (config.c) */
        dsc_nsa_tensor nt[DSC_NSA_W_N];
        int nn = dsc_nsa_tensors(c, nt);
        for (int i = 0; i < nn; i++) {
            snprintf(n, sizeof n, "model.layers.%lld.self_attn.%s", (long long)l, nt[i].name);
            DSC_TRY(bind(b, dsc_nsa_slot(ly, nt[i].slot), n, nt[i].rows, nt[i].cols));
        }
    } else if (c->q_lora_rank > 0) {
        DSC_TRY(bind(b, &ly->q_a, NAME("self_attn.q_a_proj.weight"), c->q_lora_rank, d));
        DSC_TRY(bind(b, &ly->q_a_norm, NAME("self_attn.q_a_layernorm.weight"), c->q_lora_rank, 0));
        DSC_TRY(bind(b, &ly->q_b, NAME("self_attn.q_b_proj.weight"), H * dqk, c->q_lora_rank));
    } else {
        DSC_TRY(bind(b, &ly->q_b, NAME("self_attn.q_proj.weight"), H * dqk, d));
    }
    if (!c->attention_nsa) {
        DSC_TRY(bind(b, &ly->kv_a, NAME("self_attn.kv_a_proj_with_mqa.weight"),
                 c->kv_lora_rank + c->qk_rope_head_dim, d));
        DSC_TRY(bind(b, &ly->kv_a_norm, NAME("self_attn.kv_a_layernorm.weight"),
                 c->kv_lora_rank, 0));
        DSC_TRY(bind(b, &ly->kv_b, NAME("self_attn.kv_b_proj.weight"),
                 H * (c->qk_nope_head_dim + c->v_head_dim), c->kv_lora_rank));
        DSC_TRY(bind(b, &ly->o, NAME("self_attn.o_proj.weight"), d, H * c->v_head_dim));
    }
    if (c->index_topk > 0) {
        int64_t HI = c->index_n_heads, DI = c->index_head_dim;
        DSC_TRY(bind(b, &ly->idx_wq_b, NAME("self_attn.indexer.wq_b.weight"), HI * DI,
                     c->q_lora_rank));
        DSC_TRY(bind(b, &ly->idx_wk, NAME("self_attn.indexer.wk.weight"), DI, d));
        DSC_TRY(bind(b, &ly->idx_k_norm_w, NAME("self_attn.indexer.k_norm.weight"), DI, 0));
        DSC_TRY(bind(b, &ly->idx_k_norm_b, NAME("self_attn.indexer.k_norm.bias"), DI, 0));
        DSC_TRY(bind(b, &ly->idx_weights, NAME("self_attn.indexer.weights_proj.weight"), HI, d));
    }

    ly->is_moe = dsc_config_layer_is_moe(c, l);
    if (!ly->is_moe) {
        snprintf(n, sizeof n, "model.layers.%lld.mlp", (long long)l);
        return bind_mlp(b, &ly->dense, n, d, c->intermediate_size);
    }
    int64_t E = c->n_routed_experts;
    DSC_TRY(bind(b, &ly->router, NAME("mlp.gate.weight"), E, d));
    if (c->topk_method == DSC_TOPK_NOAUX_TC)
        DSC_TRY(bind(b, &ly->router_bias, NAME("mlp.gate.e_score_correction_bias"), E, 0));
    if (c->n_shared_experts > 0) {
        snprintf(n, sizeof n, "model.layers.%lld.mlp.shared_experts", (long long)l);
        DSC_TRY(bind_mlp(b, &ly->shared, n, d, c->n_shared_experts * c->moe_intermediate_size));
    }
    for (int64_t e = 0; e < E; e++) {
        snprintf(n, sizeof n, "model.layers.%lld.mlp.experts.%lld", (long long)l,
                 (long long)e);
        DSC_TRY(bind_mlp(b, &ly->experts[e], n, d, c->moe_intermediate_size));
    }
#undef NAME
    return DSC_OK;
}

/* Elements of one routed expert (gate + up + down). */
static int64_t expert_params(const dsc_config *c) {
    return 3 * c->hidden_size * c->moe_intermediate_size;
}

/* The MTP modules, when config and files have them. Their tensors are
   counted apart (n_params_mtp), not in the main model's figures. */
static dsc_status bind_mtp(binder *b) {
    dsc_model_t *m = b->m;
    const dsc_config *c = &m->cfg;
    int64_t L = c->num_hidden_layers, D = c->num_nextn_predict_layers, d = c->hidden_size;
    int64_t E = c->n_routed_experts;
    char n[512];
    snprintf(n, sizeof n, "model.layers.%lld.eh_proj.weight", (long long)L);
    if (D <= 0 || !dsc_st_find(m->st, n)) return DSC_OK;
    m->mtp = calloc((size_t)D, sizeof *m->mtp);
    m->mtp_expert_pool = E > 0 ? calloc((size_t)(D * E), sizeof *m->mtp_expert_pool) : NULL;
    if (!m->mtp || (E > 0 && !m->mtp_expert_pool))
        return dsc_err_set(b->err, DSC_ERR_OOM, "cannot allocate the MTP module table");
    dsc_model_info keep = m->info;
    int64_t bound0 = b->n_bound;
    for (int64_t i = 0; i < D; i++) {
        dsc_mtp *x = &m->mtp[i];
        int64_t l = L + i;
        x->ly.experts = m->mtp_expert_pool ? m->mtp_expert_pool + i * E : NULL;
        DSC_TRY(bind_layer(b, l, &x->ly));
#define NAME(fmt) (snprintf(n, sizeof n, "model.layers.%lld." fmt, (long long)l), n)
        DSC_TRY(bind(b, &x->enorm, NAME("enorm.weight"), d, 0));
        DSC_TRY(bind(b, &x->hnorm, NAME("hnorm.weight"), d, 0));
        DSC_TRY(bind(b, &x->eh, NAME("eh_proj.weight"), d, 2 * d));
        DSC_TRY(bind(b, &x->head_norm, NAME("shared_head.norm.weight"), d, 0));
#undef NAME
    }
    int64_t n_mtp_params = m->info.n_params - keep.n_params;
    m->info = keep;
    m->info.n_mtp_modules = D;
    m->info.n_params_mtp = n_mtp_params;
    m->n_mtp = D;
    b->n_bound = bound0;
    return DSC_OK;
}

/* Whether a tensor name belongs to an MTP layer (index >= num_hidden_layers). */
static int is_mtp_tensor(const dsc_config *c, const char *name) {
    const char *p = "model.layers.";
    if (strncmp(name, p, strlen(p)) != 0) return 0;
    char *end;
    long long l = strtoll(name + strlen(p), &end, 10);
    return *end == '.' && l >= c->num_hidden_layers &&
           l < c->num_hidden_layers + c->num_nextn_predict_layers;
}

dsc_status dsc_weights_bind(dsc_model_t *m, dsc_err *err) {
    const dsc_config *c = &m->cfg;
    binder b = {m, err, 0};
    int64_t L = c->num_hidden_layers, E = c->n_routed_experts;
    memset(&m->info, 0, sizeof m->info);
    m->layers = calloc((size_t)L, sizeof *m->layers);
    int64_t n_moe = 0;
    for (int64_t l = 0; l < L; l++) n_moe += dsc_config_layer_is_moe(c, l);
    size_t pool = 0;
    if (!dsc_mul_ok((size_t)n_moe, (size_t)E, &pool) || !m->layers)
        return dsc_err_set(err, DSC_ERR_OOM, "cannot allocate the layer table");
    m->expert_pool = pool ? calloc(pool, sizeof *m->expert_pool) : NULL;
    if (pool && !m->expert_pool)
        return dsc_err_set(err, DSC_ERR_OOM, "cannot allocate the expert table");

    DSC_TRY(bind(&b, &m->embed, "model.embed_tokens.weight", c->vocab_size, c->hidden_size));
    DSC_TRY(bind(&b, &m->final_norm, "model.norm.weight", c->hidden_size, 0));
    if (c->tie_word_embeddings) {
        m->lm_head = m->embed;
        if (dsc_st_find(m->st, "lm_head.weight"))
            DSC_TRY(bind(&b, &m->lm_head, "lm_head.weight", c->vocab_size, c->hidden_size));
    } else {
        DSC_TRY(bind(&b, &m->lm_head, "lm_head.weight", c->vocab_size, c->hidden_size));
    }
    int64_t moe_i = 0;
    for (int64_t l = 0; l < L; l++) {
        if (dsc_config_layer_is_moe(c, l)) m->layers[l].experts = m->expert_pool + E * moe_i++;
        DSC_TRY(bind_layer(&b, l, &m->layers[l]));
    }
    DSC_TRY(bind_mtp(&b));

    /* Every tensor of the files must be bound or be part of an MTP layer. */
    int64_t n = dsc_st_count(m->st), unexpected = 0;
    char first[3][256];
    for (int64_t i = 0; i < n; i++) {
        dsc_st_tensor *t = dsc_st_at(m->st, i);
        if (t->used) continue;
        if (is_mtp_tensor(c, t->name)) {
            m->info.n_tensors_skipped++;
            if (!strstr(t->name, "_scale_inv")) m->info.n_params_skipped += t->numel;
            continue;
        }
        if (unexpected < 3)
            snprintf(first[unexpected], sizeof first[0], "%s", t->name);
        unexpected++;
    }
    if (unexpected)
        return dsc_err_set(err, DSC_ERR_MISSING,
                           "%lld unexpected tensor(s) in the checkpoint, e.g. \"%s\"%s%s%s%s "
                           "(not used by a %s model with this config)",
                           (long long)unexpected, first[0], unexpected > 1 ? ", \"" : "",
                           unexpected > 1 ? first[1] : "", unexpected > 1 ? "\"" : "",
                           unexpected > 2 ? ", ..." : "", c->model_type);

    dsc_model_info *in = &m->info;
    in->n_tensors = b.n_bound;
    in->file_bytes = dsc_st_file_bytes(m->st);
    in->n_moe_layers = n_moe;
    in->n_dense_layers = L - n_moe;
    in->n_params_active =
        in->n_params - n_moe * (E - c->num_experts_per_tok) * expert_params(c);
    in->latent_cache_values_per_token = L * (c->kv_lora_rank + c->qk_rope_head_dim);
    in->index_cache_values_per_token = c->index_topk > 0 ? L * c->index_head_dim : 0;
    in->mha_cache_values_per_token =
        L * c->num_attention_heads *
        (c->qk_nope_head_dim + c->qk_rope_head_dim + c->v_head_dim);
    in->dominant_dtype = DSC_F32;
    for (int t = 1; t < 4; t++)
        if (in->dtype_bytes[t] > in->dtype_bytes[in->dominant_dtype]) in->dominant_dtype = t;
    return DSC_OK;
}

dsc_status dsc_model_load(const char *dir, dsc_model_t **out, dsc_err *err) {
    *out = NULL;
    dsc_model_t *m = calloc(1, sizeof *m);
    if (!m) return dsc_err_set(err, DSC_ERR_OOM, "cannot allocate the model");
    char path[4096];
    char *text = NULL;
    size_t len = 0;
    dsc_status s = DSC_OK;
    if ((size_t)snprintf(path, sizeof path, "%s/config.json", dir) >= sizeof path)
        s = dsc_err_set(err, DSC_ERR_ARG, "model directory path is too long (%zu bytes)",
                        strlen(dir));
    if (s == DSC_OK) s = dsc_read_file(path, &text, &len, err);
    if (s == DSC_OK) s = dsc_config_parse(text, len, path, &m->cfg, err);
    free(text);
    if (s == DSC_OK) s = dsc_st_set_open(dir, &m->st, err);
    if (s == DSC_OK) s = dsc_weights_bind(m, err);
    if (s != DSC_OK) {
        dsc_model_free(m);
        return s;
    }
    *out = m;
    return DSC_OK;
}

void dsc_model_free(dsc_model_t *m) {
    if (!m) return;
    dsc_st_set_close(m->st);
    free(m->layers);
    free(m->expert_pool);
    free(m->mtp);
    free(m->mtp_expert_pool);
    free(m);
}

const dsc_config *dsc_model_config(const dsc_model_t *m) { return &m->cfg; }

void dsc_model_get_info(const dsc_model_t *m, dsc_model_info *info) { *info = m->info; }

void dsc_model_prefetch(const dsc_model_t *m, int (*progress)(void *user, double done),
                        void *user) {
    /* One read per page faults every page in; the volatile sum keeps the
       compiler from dropping the reads. Reporting is in ~1% steps. */
    int64_t total = dsc_st_file_bytes(m->st), done = 0, next_report = 0;
    volatile unsigned char sink = 0;
    const size_t page = 4096;
    for (int f = 0; f < dsc_st_file_count(m->st); f++) {
        const void *base;
        size_t len;
        dsc_st_file_map(m->st, f, &base, &len);
        const unsigned char *p = base;
        for (size_t off = 0; off < len; off += page) {
            sink ^= p[off];
            done += (int64_t)(len - off < page ? len - off : page);
            if (progress && done >= next_report) {
                if (progress(user, total ? (double)done / (double)total : 1.0)) return;
                next_report = done + total / 100 + 1;
            }
        }
    }
    if (progress) progress(user, 1.0);
    (void)sink;
}
