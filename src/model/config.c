/*
 * config.c - config.json -> dsc_config.
 *
 * Accepts the Hugging Face configs of DeepSeek-V2 / V2-Lite (deepseek_v2) and
 * DeepSeek-V3 (deepseek_v3), with RoPE scaling in either the Hub form
 * `rope_scaling: {type: yarn, ...}` or the transformers-5 form
 * `rope_parameters: {rope_type: yarn, rope_theta, ...}`.
 *
 * Policy: a field we need that is missing, of the wrong JSON type, or has a
 * value we do not implement is an error naming the field and the value.
 * Fields we do not use (torch_dtype, use_cache, ...) are ignored. Defaults for
 * absent optional fields follow transformers' configuration classes.
 *
 * NSA (our extension; transformers ignores these keys): "attention_type":
 * "nsa" (default "mla") makes every decoder layer (MTP's too) use Native
 * Sparse Attention with GQA (src/nsa/nsa.h) in place of MLA, configured by
 *   "nsa": {"num_key_value_heads": H_kv, "head_dim_k": d_k, "head_dim_v": d_v,
 *           "block_size": l, "stride": d, "select_block": l', "n_select": n,
 *           "window": w, "compress": "mlp" | "mean", "compress_hidden": m
 *           (the MLP's width; required for "mlp"), "shared_kv": false}
 * with num_attention_heads = H_q, checked by dsc_nsa_config_check (errors
 * name the config key). The MLA keys kv_lora_rank, qk_nope_head_dim and
 * v_head_dim are then optional and unused, q_lora_rank must be 0/null (q is
 * one q_proj) and deepseek_v32 (DSA) is refused. qk_rope_head_dim stays
 * required: RoPE (rope_theta, YaRN if configured) rotates the FIRST
 * qk_rope_head_dim dims of every query and key head (<= d_k), pairs as
 * rope_interleave says. softmax_scale is 1/sqrt(d_k).
 */
#include <math.h>
#include <string.h>

#include <jansson.h>

#include "model/model.h"
#include "nsa/nsa.h"
#include "util/util.h"

typedef struct {
    const char *path;
    dsc_err *err;
} cfg_ctx;

/* Integer field: JSON integer, or a real with an integral value. */
static dsc_status get_int(cfg_ctx *cx, json_t *obj, const char *key, int required,
                          int64_t def, int64_t lo, int64_t *out) {
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        if (required)
            return dsc_err_set(cx->err, DSC_ERR_CONFIG, "%s: field \"%s\" is missing",
                               cx->path, key);
        *out = def;
        return DSC_OK;
    }
    double d = json_is_real(v) ? json_real_value(v) : 0.0;
    if (json_is_integer(v)) {
        *out = json_integer_value(v);
    } else if (json_is_real(v) && d == floor(d) && fabs(d) < 9e15) {
        *out = (int64_t)d;
    } else {
        return dsc_err_set(cx->err, DSC_ERR_CONFIG,
                           "%s: field \"%s\" must be an integer", cx->path, key);
    }
    if (*out < lo)
        return dsc_err_set(cx->err, DSC_ERR_CONFIG,
                           "%s: field \"%s\" = %lld, expected >= %lld", cx->path, key,
                           (long long)*out, (long long)lo);
    return DSC_OK;
}

static dsc_status get_num(cfg_ctx *cx, json_t *obj, const char *key, int required,
                          double def, double *out) {
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        if (required)
            return dsc_err_set(cx->err, DSC_ERR_CONFIG, "%s: field \"%s\" is missing",
                               cx->path, key);
        *out = def;
        return DSC_OK;
    }
    if (!json_is_number(v))
        return dsc_err_set(cx->err, DSC_ERR_CONFIG, "%s: field \"%s\" must be a number",
                           cx->path, key);
    *out = json_number_value(v);
    if (!isfinite(*out))
        return dsc_err_set(cx->err, DSC_ERR_CONFIG, "%s: field \"%s\" is not finite",
                           cx->path, key);
    return DSC_OK;
}

static dsc_status get_bool(cfg_ctx *cx, json_t *obj, const char *key, int def, int *out) {
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return DSC_OK;
    }
    if (!json_is_boolean(v))
        return dsc_err_set(cx->err, DSC_ERR_CONFIG,
                           "%s: field \"%s\" must be true or false", cx->path, key);
    *out = json_is_true(v);
    return DSC_OK;
}

/* String field; *out is NULL when absent/null. */
static dsc_status get_str(cfg_ctx *cx, json_t *obj, const char *key, const char **out) {
    json_t *v = json_object_get(obj, key);
    *out = NULL;
    if (!v || json_is_null(v)) return DSC_OK;
    if (!json_is_string(v))
        return dsc_err_set(cx->err, DSC_ERR_CONFIG, "%s: field \"%s\" must be a string",
                           cx->path, key);
    *out = json_string_value(v);
    return DSC_OK;
}

/* YaRN m = 0.1 * mscale * ln(factor) + 1 (1 when factor <= 1). */
static double yarn_get_mscale(double factor, double mscale) {
    return factor <= 1.0 ? 1.0 : 0.1 * mscale * log(factor) + 1.0;
}

/* rope_scaling (Hub) or rope_parameters (transformers 5): same keys except the
   type key and where rope_theta lives. */
static dsc_status parse_rope(cfg_ctx *cx, json_t *root, dsc_config *c) {
    json_t *rp = json_object_get(root, "rope_parameters");
    json_t *rs = json_object_get(root, "rope_scaling");
    json_t *r = NULL;
    const char *field = NULL;
    if (rp && !json_is_null(rp)) {
        r = rp;
        field = "rope_parameters";
    } else if (rs && !json_is_null(rs)) {
        r = rs;
        field = "rope_scaling";
    }
    DSC_TRY(get_num(cx, root, "rope_theta", 0, 10000.0, &c->rope_theta));
    c->yarn = 0;
    c->yarn_factor = 1.0;
    if (!r) return DSC_OK;
    if (!json_is_object(r))
        return dsc_err_set(cx->err, DSC_ERR_CONFIG, "%s: field \"%s\" must be an object",
                           cx->path, field);
    if (json_object_get(r, "rope_theta"))
        DSC_TRY(get_num(cx, r, "rope_theta", 1, 0, &c->rope_theta));
    const char *type = NULL;
    DSC_TRY(get_str(cx, r, "rope_type", &type));
    if (!type) DSC_TRY(get_str(cx, r, "type", &type));
    if (!type || !strcmp(type, "default")) return DSC_OK;
    if (strcmp(type, "yarn") != 0)
        return dsc_err_set(cx->err, DSC_ERR_CONFIG,
                           "%s: %s.type \"%s\" is not supported (only \"yarn\" or \"default\")",
                           cx->path, field, type);
    c->yarn = 1;
    DSC_TRY(get_num(cx, r, "factor", 1, 0, &c->yarn_factor));
    if (c->yarn_factor < 1.0)
        return dsc_err_set(cx->err, DSC_ERR_CONFIG, "%s: %s.factor = %g, expected >= 1",
                           cx->path, field, c->yarn_factor);
    DSC_TRY(get_int(cx, r, "original_max_position_embeddings", 0, c->max_position_embeddings,
                1, &c->yarn_original_max_pos));
    DSC_TRY(get_num(cx, r, "beta_fast", 0, 32.0, &c->yarn_beta_fast));
    DSC_TRY(get_num(cx, r, "beta_slow", 0, 1.0, &c->yarn_beta_slow));
    DSC_TRY(get_num(cx, r, "mscale", 0, 0.0, &c->yarn_mscale));
    DSC_TRY(get_num(cx, r, "mscale_all_dim", 0, 0.0, &c->yarn_mscale_all_dim));
    c->yarn_attention_factor = -1.0;
    if (json_object_get(r, "attention_factor"))
        DSC_TRY(get_num(cx, r, "attention_factor", 1, 0, &c->yarn_attention_factor));
    int truncate = 1;
    DSC_TRY(get_bool(cx, r, "truncate", 1, &truncate));
    if (!truncate)
        return dsc_err_set(cx->err, DSC_ERR_UNSUPPORTED,
                           "%s: %s.truncate = false is not supported", cx->path, field);
    return DSC_OK;
}

static dsc_status parse_moe(cfg_ctx *cx, json_t *root, dsc_config *c, int is_v3) {
    DSC_TRY(get_int(cx, root, "n_routed_experts", 0, 0, 0, &c->n_routed_experts));
    DSC_TRY(get_int(cx, root, "n_shared_experts", 0, 0, 0, &c->n_shared_experts));
    DSC_TRY(get_int(cx, root, "first_k_dense_replace", 0, 0, 0, &c->first_k_dense_replace));
    DSC_TRY(get_int(cx, root, "moe_layer_freq", 0, 1, 1, &c->moe_layer_freq));
    if (c->n_routed_experts == 0) return DSC_OK;

    DSC_TRY(get_int(cx, root, "moe_intermediate_size", 1, 0, 1, &c->moe_intermediate_size));
    DSC_TRY(get_int(cx, root, "num_experts_per_tok", 1, 0, 1, &c->num_experts_per_tok));
    if (c->num_experts_per_tok > c->n_routed_experts)
        return dsc_err_set(cx->err, DSC_ERR_CONFIG,
                           "%s: num_experts_per_tok = %lld exceeds n_routed_experts = %lld",
                           cx->path, (long long)c->num_experts_per_tok,
                           (long long)c->n_routed_experts);

    const char *s = NULL;
    DSC_TRY(get_str(cx, root, "topk_method", &s));
    if (!s) s = is_v3 ? "noaux_tc" : "greedy";
    if (!strcmp(s, "greedy")) c->topk_method = DSC_TOPK_GREEDY;
    else if (!strcmp(s, "group_limited_greedy")) c->topk_method = DSC_TOPK_GROUP_LIMITED;
    else if (!strcmp(s, "noaux_tc")) c->topk_method = DSC_TOPK_NOAUX_TC;
    else
        return dsc_err_set(cx->err, DSC_ERR_CONFIG,
                           "%s: topk_method \"%s\" is not supported (greedy, "
                           "group_limited_greedy, noaux_tc)", cx->path, s);

    DSC_TRY(get_str(cx, root, "scoring_func", &s));
    if (!s) s = is_v3 ? "sigmoid" : "softmax";
    if (!strcmp(s, "softmax")) c->scoring_func = DSC_SCORE_SOFTMAX;
    else if (!strcmp(s, "sigmoid")) c->scoring_func = DSC_SCORE_SIGMOID;
    else
        return dsc_err_set(cx->err, DSC_ERR_CONFIG,
                           "%s: scoring_func \"%s\" is not supported (softmax, sigmoid)",
                           cx->path, s);

    int grouped = c->topk_method != DSC_TOPK_GREEDY;
    DSC_TRY(get_int(cx, root, "n_group", 0, 1, 1, &c->n_group));
    DSC_TRY(get_int(cx, root, "topk_group", 0, 1, 1, &c->topk_group));
    if (!grouped) {
        c->n_group = 1;
        c->topk_group = 1;
    }
    if (c->n_group > 256)
        return dsc_err_set(cx->err, DSC_ERR_UNSUPPORTED,
                           "%s: n_group = %lld is not supported (at most 256)", cx->path,
                           (long long)c->n_group);
    if (c->n_routed_experts % c->n_group != 0)
        return dsc_err_set(cx->err, DSC_ERR_CONFIG,
                           "%s: n_routed_experts = %lld is not a multiple of n_group = %lld",
                           cx->path, (long long)c->n_routed_experts, (long long)c->n_group);
    if (c->topk_group > c->n_group)
        return dsc_err_set(cx->err, DSC_ERR_CONFIG,
                           "%s: topk_group = %lld exceeds n_group = %lld", cx->path,
                           (long long)c->topk_group, (long long)c->n_group);
    if (c->topk_method == DSC_TOPK_NOAUX_TC && c->n_routed_experts / c->n_group < 2)
        return dsc_err_set(cx->err, DSC_ERR_CONFIG,
                           "%s: noaux_tc needs >= 2 experts per group (group score is a "
                           "top-2 sum); n_routed_experts/n_group = %lld",
                           cx->path, (long long)(c->n_routed_experts / c->n_group));
    if (c->topk_group * (c->n_routed_experts / c->n_group) < c->num_experts_per_tok)
        return dsc_err_set(cx->err, DSC_ERR_CONFIG,
                           "%s: topk_group groups hold fewer experts than "
                           "num_experts_per_tok = %lld", cx->path,
                           (long long)c->num_experts_per_tok);
    DSC_TRY(get_bool(cx, root, "norm_topk_prob", 0, &c->norm_topk_prob));
    DSC_TRY(get_num(cx, root, "routed_scaling_factor", 0, 1.0, &c->routed_scaling_factor));
    return DSC_OK;
}

void dsc_config_nsa(const dsc_config *c, dsc_nsa_config *o) {
    memset(o, 0, sizeof *o);
    o->l = c->nsa_block_size;
    o->d = c->nsa_stride;
    o->l_sel = c->nsa_select_block;
    o->n = c->nsa_n_select;
    o->w = c->nsa_window;
    o->H_q = c->num_attention_heads;
    o->H_kv = c->nsa_kv_heads;
    o->d_k = c->nsa_head_dim_k;
    o->d_v = c->nsa_head_dim_v;
    o->phi = c->nsa_compress_mean ? DSC_NSA_PHI_MEAN : DSC_NSA_PHI_MLP;
    o->phi_hidden = c->nsa_compress_mean ? 0 : c->nsa_compress_hidden;
    o->shared_kv = c->nsa_shared_kv;
    o->scale = 0.0;
}

int dsc_nsa_tensors(const dsc_config *c, dsc_nsa_tensor *out) {
    static const char *const br[3] = {"cmp", "slc", "win"};
    int64_t d = c->hidden_size, Hq = c->num_attention_heads, Hkv = c->nsa_kv_heads;
    int64_t dk = c->nsa_head_dim_k, dv = c->nsa_head_dim_v, l = c->nsa_block_size;
    int64_t m = c->nsa_compress_hidden;
    int n = 0;
#define T(s, r, cc, dec, ...)                                                   \
    do {                                                                       \
        out[n].slot = (s);                                                     \
        snprintf(out[n].name, sizeof out[n].name, __VA_ARGS__);                \
        out[n].rows = (r), out[n].cols = (cc), out[n].decay = (dec);           \
        n++;                                                                   \
    } while (0)
    T(DSC_NSA_W_Q, Hq * dk, d, 1, "q_proj.weight");
    int nb = c->nsa_shared_kv ? 1 : 3;
    for (int b = 0; b < nb; b++) {
        if (nb == 1) T(DSC_NSA_W_K, Hkv * dk, d, 1, "k_proj.weight");
        else T(DSC_NSA_W_K + b, Hkv * dk, d, 1, "k_proj_%s.weight", br[b]);
    }
    for (int b = 0; b < nb; b++) {
        if (nb == 1) T(DSC_NSA_W_V, Hkv * dv, d, 1, "v_proj.weight");
        else T(DSC_NSA_W_V + b, Hkv * dv, d, 1, "v_proj_%s.weight", br[b]);
    }
    T(DSC_NSA_W_GATE, 3 * Hq, d, 1, "gate_proj.weight");
    T(DSC_NSA_W_O, d, Hq * dv, 1, "o_proj.weight");
    if (!c->nsa_compress_mean) {
        T(DSC_NSA_W_PE_K, Hkv * l, dk, 0, "compress_k.pe");
        T(DSC_NSA_W_W1_K, Hkv * m, l * dk, 1, "compress_k.w1.weight");
        T(DSC_NSA_W_W2_K, Hkv * dk, m, 1, "compress_k.w2.weight");
        T(DSC_NSA_W_PE_V, Hkv * l, dv, 0, "compress_v.pe");
        T(DSC_NSA_W_W1_V, Hkv * m, l * dv, 1, "compress_v.w1.weight");
        T(DSC_NSA_W_W2_V, Hkv * dv, m, 1, "compress_v.w2.weight");
    }
#undef T
    return n;
}

dsc_wmat *dsc_nsa_slot(dsc_layer *ly, int slot) {
    switch (slot) {
    case DSC_NSA_W_Q: return &ly->nsa.q;
    case DSC_NSA_W_GATE: return &ly->nsa.gate;
    case DSC_NSA_W_O: return &ly->o;
    case DSC_NSA_W_PE_K: return &ly->nsa.pe_k;
    case DSC_NSA_W_W1_K: return &ly->nsa.w1_k;
    case DSC_NSA_W_W2_K: return &ly->nsa.w2_k;
    case DSC_NSA_W_PE_V: return &ly->nsa.pe_v;
    case DSC_NSA_W_W1_V: return &ly->nsa.w1_v;
    case DSC_NSA_W_W2_V: return &ly->nsa.w2_v;
    default:
        if (slot >= DSC_NSA_W_K && slot < DSC_NSA_W_K + 3) return &ly->nsa.k[slot - DSC_NSA_W_K];
        return &ly->nsa.v[slot - DSC_NSA_W_V];
    }
}

/* The "nsa" object (attention_type "nsa"), see the file comment. */
static dsc_status parse_nsa(cfg_ctx *cx, json_t *root, dsc_config *c) {
    json_t *o = json_object_get(root, "nsa");
    if (!o || !json_is_object(o))
        return dsc_err_set(cx->err, DSC_ERR_CONFIG,
                           "%s: attention_type \"nsa\" needs an object \"nsa\" (num_key_value_"
                           "heads, head_dim_k, head_dim_v, block_size, stride, select_block, "
                           "n_select, window, compress, compress_hidden)", cx->path);
    c->attention_nsa = 1;
    DSC_TRY(get_int(cx, o, "num_key_value_heads", 1, 0, 1, &c->nsa_kv_heads));
    DSC_TRY(get_int(cx, o, "head_dim_k", 1, 0, 1, &c->nsa_head_dim_k));
    DSC_TRY(get_int(cx, o, "head_dim_v", 1, 0, 1, &c->nsa_head_dim_v));
    DSC_TRY(get_int(cx, o, "block_size", 1, 0, 1, &c->nsa_block_size));
    DSC_TRY(get_int(cx, o, "stride", 1, 0, 1, &c->nsa_stride));
    DSC_TRY(get_int(cx, o, "select_block", 1, 0, 1, &c->nsa_select_block));
    DSC_TRY(get_int(cx, o, "n_select", 1, 0, 1, &c->nsa_n_select));
    DSC_TRY(get_int(cx, o, "window", 1, 0, 1, &c->nsa_window));
    const char *cm = NULL;
    DSC_TRY(get_str(cx, o, "compress", &cm));
    if (!cm || !strcmp(cm, "mlp")) c->nsa_compress_mean = 0;
    else if (!strcmp(cm, "mean")) c->nsa_compress_mean = 1;
    else
        return dsc_err_set(cx->err, DSC_ERR_CONFIG,
                           "%s: nsa.compress \"%s\" is not supported (mlp, mean)", cx->path, cm);
    DSC_TRY(get_int(cx, o, "compress_hidden", !c->nsa_compress_mean, 0, c->nsa_compress_mean ? 0 : 1,
                    &c->nsa_compress_hidden));
    if (c->nsa_compress_mean) c->nsa_compress_hidden = 0;
    DSC_TRY(get_bool(cx, o, "shared_kv", 0, &c->nsa_shared_kv));
    const int64_t cap = (int64_t)1 << 20;
    const struct {
        const char *k;
        int64_t v;
    } lim[] = {{"num_key_value_heads", c->nsa_kv_heads}, {"head_dim_k", c->nsa_head_dim_k},
               {"head_dim_v", c->nsa_head_dim_v},     {"block_size", c->nsa_block_size},
               {"stride", c->nsa_stride},             {"select_block", c->nsa_select_block},
               {"n_select", c->nsa_n_select},         {"window", c->nsa_window},
               {"compress_hidden", c->nsa_compress_hidden}};
    for (size_t i = 0; i < sizeof lim / sizeof lim[0]; i++)
        if (lim[i].v > cap)
            return dsc_err_set(cx->err, DSC_ERR_CONFIG, "%s: nsa.%s = %lld exceeds %lld",
                               cx->path, lim[i].k, (long long)lim[i].v, (long long)cap);
    dsc_nsa_config nc;
    dsc_config_nsa(c, &nc);
    dsc_err e = {0};
    if (dsc_nsa_config_check(&nc, &e) != DSC_OK)
        return dsc_err_set(cx->err, DSC_ERR_CONFIG,
                           "%s: bad \"nsa\" config: %s (keys: block_size = l, stride = d, "
                           "select_block = l_sel, n_select = n, window = w, num_attention_heads "
                           "= H_q, num_key_value_heads = H_kv, compress_hidden = phi_hidden)",
                           cx->path, e.msg);
    return DSC_OK;
}

static dsc_status parse_root(cfg_ctx *cx, json_t *root, dsc_config *c) {
    const char *mt = NULL;
    DSC_TRY(get_str(cx, root, "model_type", &mt));
    if (!mt)
        return dsc_err_set(cx->err, DSC_ERR_CONFIG, "%s: field \"model_type\" is missing",
                           cx->path);
    int is_v32 = !strcmp(mt, "deepseek_v32");
    if (strcmp(mt, "deepseek_v2") != 0 && strcmp(mt, "deepseek_v3") != 0 && !is_v32)
        return dsc_err_set(cx->err, DSC_ERR_CONFIG,
                           "%s: model_type \"%s\" is not supported (deepseek_v2, deepseek_v3, "
                           "deepseek_v32)", cx->path, mt);
    snprintf(c->model_type, sizeof c->model_type, "%s", mt);
    int is_v3 = !strcmp(mt, "deepseek_v3") || is_v32;

    DSC_TRY(get_int(cx, root, "vocab_size", 1, 0, 1, &c->vocab_size));
    DSC_TRY(get_int(cx, root, "hidden_size", 1, 0, 1, &c->hidden_size));
    DSC_TRY(get_int(cx, root, "num_hidden_layers", 1, 0, 1, &c->num_hidden_layers));
    DSC_TRY(get_int(cx, root, "num_attention_heads", 1, 0, 1, &c->num_attention_heads));
    const char *at = NULL;
    DSC_TRY(get_str(cx, root, "attention_type", &at));
    if (at && strcmp(at, "mla") != 0 && strcmp(at, "nsa") != 0)
        return dsc_err_set(cx->err, DSC_ERR_CONFIG,
                           "%s: attention_type \"%s\" is not supported (mla, nsa)", cx->path, at);
    int mla = !at || !strcmp(at, "mla");
    DSC_TRY(get_int(cx, root, "q_lora_rank", 0, 0, 0, &c->q_lora_rank));
    DSC_TRY(get_int(cx, root, "kv_lora_rank", mla, 0, mla, &c->kv_lora_rank));
    DSC_TRY(get_int(cx, root, "qk_nope_head_dim", mla, 0, 0, &c->qk_nope_head_dim));
    DSC_TRY(get_int(cx, root, "qk_rope_head_dim", 1, 0, 2, &c->qk_rope_head_dim));
    DSC_TRY(get_int(cx, root, "v_head_dim", mla, 0, mla, &c->v_head_dim));
    if (!mla) {
        DSC_TRY(parse_nsa(cx, root, c));
        if (is_v32)
            return dsc_err_set(cx->err, DSC_ERR_CONFIG,
                               "%s: attention_type \"nsa\" with deepseek_v32 (DSA) is not "
                               "supported", cx->path);
        if (c->q_lora_rank > 0)
            return dsc_err_set(cx->err, DSC_ERR_CONFIG,
                               "%s: attention_type \"nsa\" needs q_lora_rank = 0 or null (q is "
                               "one q_proj), got %lld", cx->path, (long long)c->q_lora_rank);
        if (c->qk_rope_head_dim > c->nsa_head_dim_k)
            return dsc_err_set(cx->err, DSC_ERR_CONFIG,
                               "%s: qk_rope_head_dim = %lld exceeds nsa.head_dim_k = %lld (RoPE "
                               "rotates the first qk_rope_head_dim dims of each head)", cx->path,
                               (long long)c->qk_rope_head_dim, (long long)c->nsa_head_dim_k);
    }
    if (c->qk_rope_head_dim % 2 != 0)
        return dsc_err_set(cx->err, DSC_ERR_CONFIG,
                           "%s: qk_rope_head_dim = %lld must be even", cx->path,
                           (long long)c->qk_rope_head_dim);
    DSC_TRY(get_int(cx, root, "max_position_embeddings", 0, 4096, 1,
                &c->max_position_embeddings));
    DSC_TRY(get_int(cx, root, "num_nextn_predict_layers", 0, 0, 0,
                &c->num_nextn_predict_layers));
    DSC_TRY(get_int(cx, root, "bos_token_id", 0, -1, -1, &c->bos_token_id));
    DSC_TRY(get_int(cx, root, "eos_token_id", 0, -1, -1, &c->eos_token_id));
    DSC_TRY(get_num(cx, root, "rms_norm_eps", 0, 1e-6, &c->rms_norm_eps));
    DSC_TRY(get_bool(cx, root, "tie_word_embeddings", 0, &c->tie_word_embeddings));
    DSC_TRY(get_bool(cx, root, "rope_interleave", 1, &c->rope_interleave));

    const char *act = NULL;
    DSC_TRY(get_str(cx, root, "hidden_act", &act));
    if (act && strcmp(act, "silu") != 0)
        return dsc_err_set(cx->err, DSC_ERR_CONFIG,
                           "%s: hidden_act \"%s\" is not supported (silu)", cx->path, act);
    int bias = 0;
    DSC_TRY(get_bool(cx, root, "attention_bias", 0, &bias));
    if (bias)
        return dsc_err_set(cx->err, DSC_ERR_UNSUPPORTED,
                           "%s: attention_bias = true is not supported (DeepSeek linears "
                           "are bias-free)", cx->path);

    DSC_TRY(parse_moe(cx, root, c, is_v3));
    if (is_v32) {
        DSC_TRY(get_int(cx, root, "index_n_heads", 1, 0, 1, &c->index_n_heads));
        DSC_TRY(get_int(cx, root, "index_head_dim", 1, 0, 1, &c->index_head_dim));
        DSC_TRY(get_int(cx, root, "index_topk", 1, 0, 1, &c->index_topk));
        if (c->index_head_dim < c->qk_rope_head_dim)
            return dsc_err_set(cx->err, DSC_ERR_CONFIG,
                               "%s: index_head_dim = %lld is smaller than qk_rope_head_dim = "
                               "%lld (the indexer ropes its first qk_rope_head_dim dims)",
                               cx->path, (long long)c->index_head_dim,
                               (long long)c->qk_rope_head_dim);
        if (c->q_lora_rank <= 0)
            return dsc_err_set(cx->err, DSC_ERR_CONFIG,
                               "%s: deepseek_v32 needs q_lora_rank > 0 (the indexer query is "
                               "projected from the q latent)", cx->path);
    }
    int64_t n_dense = 0;
    for (int64_t l = 0; l < c->num_hidden_layers; l++)
        n_dense += !dsc_config_layer_is_moe(c, l);
    DSC_TRY(get_int(cx, root, "intermediate_size", n_dense > 0, 0, n_dense > 0 ? 1 : 0,
                &c->intermediate_size));
    DSC_TRY(parse_rope(cx, root, c));

    json_t *q = json_object_get(root, "quantization_config");
    if (q && !json_is_null(q)) {
        const char *qm = NULL;
        if (!json_is_object(q))
            return dsc_err_set(cx->err, DSC_ERR_CONFIG,
                               "%s: quantization_config must be an object", cx->path);
        DSC_TRY(get_str(cx, q, "quant_method", &qm));
        if (!qm || strcmp(qm, "fp8") != 0)
            return dsc_err_set(cx->err, DSC_ERR_UNSUPPORTED,
                               "%s: quantization_config.quant_method \"%s\" is not supported "
                               "(fp8)", cx->path, qm ? qm : "(missing)");
        const char *fmt = NULL;
        DSC_TRY(get_str(cx, q, "scale_fmt", &fmt));
        if (fmt && strcmp(fmt, "ue8m0") != 0)
            return dsc_err_set(cx->err, DSC_ERR_UNSUPPORTED,
                               "%s: quantization_config.scale_fmt \"%s\" is not supported "
                               "(ue8m0 or absent)", cx->path, fmt);
        c->scale_ue8m0 = fmt != NULL;
        json_t *bs = json_object_get(q, "weight_block_size");
        if (bs && !(json_is_array(bs) && json_array_size(bs) == 2 &&
                    json_integer_value(json_array_get(bs, 0)) == DSC_FP8_BLOCK &&
                    json_integer_value(json_array_get(bs, 1)) == DSC_FP8_BLOCK))
            return dsc_err_set(cx->err, DSC_ERR_UNSUPPORTED,
                               "%s: quantization_config.weight_block_size must be [128, 128]",
                               cx->path);
    }

    /* Upper bounds keep every product of dimensions far inside int64_t (and
       ids inside int32_t), whatever a config claims. */
    const struct {
        const char *name;
        int64_t v, max;
    } lim[] = {
        {"vocab_size", c->vocab_size, (int64_t)1 << 28},
        {"hidden_size", c->hidden_size, (int64_t)1 << 20},
        {"intermediate_size", c->intermediate_size, (int64_t)1 << 24},
        {"moe_intermediate_size", c->moe_intermediate_size, (int64_t)1 << 24},
        {"num_hidden_layers", c->num_hidden_layers, (int64_t)1 << 14},
        {"num_attention_heads", c->num_attention_heads, (int64_t)1 << 14},
        {"q_lora_rank", c->q_lora_rank, (int64_t)1 << 20},
        {"kv_lora_rank", c->kv_lora_rank, (int64_t)1 << 20},
        {"qk_nope_head_dim", c->qk_nope_head_dim, (int64_t)1 << 14},
        {"qk_rope_head_dim", c->qk_rope_head_dim, (int64_t)1 << 14},
        {"v_head_dim", c->v_head_dim, (int64_t)1 << 14},
        {"n_routed_experts", c->n_routed_experts, (int64_t)1 << 16},
        {"n_shared_experts", c->n_shared_experts, (int64_t)1 << 10},
        {"num_nextn_predict_layers", c->num_nextn_predict_layers, (int64_t)1 << 10},
        {"index_n_heads", c->index_n_heads, (int64_t)1 << 14},
        {"index_head_dim", c->index_head_dim, (int64_t)1 << 14},
        {"index_topk", c->index_topk, (int64_t)1 << 24},
    };
    for (size_t i = 0; i < sizeof lim / sizeof lim[0]; i++)
        if (lim[i].v > lim[i].max)
            return dsc_err_set(cx->err, DSC_ERR_CONFIG, "%s: field \"%s\" = %lld exceeds %lld",
                               cx->path, lim[i].name, (long long)lim[i].v,
                               (long long)lim[i].max);

    /* Softmax scale: d_qk^-1/2, times m^2 with m from mscale_all_dim (the
       transformers rule, applied whenever YaRN is on). */
    double dqk = (double)(c->qk_nope_head_dim + c->qk_rope_head_dim);
    c->softmax_scale = 1.0 / sqrt(dqk);
    if (c->yarn && c->yarn_mscale_all_dim != 0.0) {
        double m = yarn_get_mscale(c->yarn_factor, c->yarn_mscale_all_dim);
        c->softmax_scale *= m * m;
    }
    /* cos/sin multiplier: explicit attention_factor, else the ratio
       m(mscale)/m(mscale_all_dim) when both are given, else m(1). */
    if (c->yarn && c->yarn_attention_factor < 0) {
        if (c->yarn_mscale != 0.0 && c->yarn_mscale_all_dim != 0.0)
            c->yarn_attention_factor = yarn_get_mscale(c->yarn_factor, c->yarn_mscale) /
                                       yarn_get_mscale(c->yarn_factor, c->yarn_mscale_all_dim);
        else
            c->yarn_attention_factor = yarn_get_mscale(c->yarn_factor, 1.0);
    }
    if (!c->yarn) c->yarn_attention_factor = 1.0;
    if (c->attention_nsa) c->softmax_scale = 1.0 / sqrt((double)c->nsa_head_dim_k);
    return DSC_OK;
}

void dsc_config_rope_params(const dsc_config *c, dsc_rope_params *rp) {
    memset(rp, 0, sizeof *rp);
    rp->dim = c->qk_rope_head_dim;
    rp->theta = c->rope_theta;
    rp->yarn = c->yarn;
    rp->factor = c->yarn_factor;
    rp->beta_fast = c->yarn_beta_fast;
    rp->beta_slow = c->yarn_beta_slow;
    rp->original_max_pos = c->yarn_original_max_pos;
    rp->attention_factor = c->yarn_attention_factor;
}

int dsc_config_layer_is_moe(const dsc_config *c, int64_t l) {
    return c->n_routed_experts > 0 && l >= c->first_k_dense_replace &&
           l % c->moe_layer_freq == 0;
}

dsc_status dsc_config_parse(const char *json_text, size_t len, const char *path,
                            dsc_config *cfg, dsc_err *err) {
    memset(cfg, 0, sizeof *cfg);
    json_error_t je;
    json_t *root = json_loadb(json_text, len, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return dsc_err_set(err, DSC_ERR_FORMAT, "%s: invalid JSON at line %d column %d: %s",
                           path, je.line, je.column, je.text);
    cfg_ctx cx = {path, err};
    dsc_status s;
    if (!json_is_object(root))
        s = dsc_err_set(err, DSC_ERR_FORMAT, "%s: top level is not a JSON object", path);
    else
        s = parse_root(&cx, root, cfg);
    json_decref(root);
    return s;
}
