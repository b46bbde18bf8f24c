/*
 * ckpt.c - checkpoint directories: config.json, model.safetensors,
 * tokenizer copies, optimizer state; written whole, then renamed into place.
 * See ckpt.h for the layout and the crash-safety contract.
 */
#define _XOPEN_SOURCE 700
#include "train/ckpt.h"

#include <errno.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "io/safetensors.h"
#include "util/util.h"

#define PATH_CAP 4096

/* YaRN m for a factor and mscale, as config.c derives attention_factor. */
static double yarn_m(double factor, double mscale) {
    return factor <= 1.0 ? 1.0 : 0.1 * mscale * log(factor) + 1.0;
}

static const char *arch_of(const char *model_type) {
    if (!strcmp(model_type, "deepseek_v2")) return "DeepseekV2ForCausalLM";
    if (!strcmp(model_type, "deepseek_v32")) return "DeepseekV32ForCausalLM";
    return "DeepseekV3ForCausalLM";
}

dsc_status dsc_ckpt_config_json(const dsc_config *c, char **out, dsc_err *err) {
    *out = NULL;
    if (strcmp(c->model_type, "deepseek_v2") && strcmp(c->model_type, "deepseek_v3") &&
        strcmp(c->model_type, "deepseek_v32"))
        return dsc_err_set(err, DSC_ERR_ARG, "ckpt: model_type \"%s\" is not a DeepSeek type",
                           c->model_type);
    json_t *r = json_object();
    json_t *arch = json_array();
    json_array_append_new(arch, json_string(arch_of(c->model_type)));
    json_object_set_new(r, "architectures", arch);
    json_object_set_new(r, "model_type", json_string(c->model_type));
    const struct {
        const char *k;
        int64_t v;
    } ints[] = {
        {"vocab_size", c->vocab_size},
        {"hidden_size", c->hidden_size},
        {"intermediate_size", c->intermediate_size},
        {"num_hidden_layers", c->num_hidden_layers},
        {"num_attention_heads", c->num_attention_heads},
        {"num_key_value_heads", c->num_attention_heads},
        {"kv_lora_rank", c->kv_lora_rank},
        {"qk_nope_head_dim", c->qk_nope_head_dim},
        {"qk_rope_head_dim", c->qk_rope_head_dim},
        {"v_head_dim", c->v_head_dim},
        {"n_routed_experts", c->n_routed_experts},
        {"n_shared_experts", c->n_shared_experts},
        {"first_k_dense_replace", c->first_k_dense_replace},
        {"moe_layer_freq", c->moe_layer_freq},
        {"num_nextn_predict_layers", c->num_nextn_predict_layers},
        {"max_position_embeddings", c->max_position_embeddings},
    };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
        json_object_set_new(r, ints[i].k, json_integer(ints[i].v));
    /* 0 means "no query compression"; transformers spells that null. */
    json_object_set_new(r, "q_lora_rank", c->q_lora_rank > 0 ? json_integer(c->q_lora_rank)
                                                             : json_null());
    if (c->bos_token_id >= 0) json_object_set_new(r, "bos_token_id", json_integer(c->bos_token_id));
    if (c->eos_token_id >= 0) json_object_set_new(r, "eos_token_id", json_integer(c->eos_token_id));
    if (c->n_routed_experts > 0) {
        static const char *const topk[] = {"greedy", "group_limited_greedy", "noaux_tc"};
        json_object_set_new(r, "moe_intermediate_size", json_integer(c->moe_intermediate_size));
        json_object_set_new(r, "num_experts_per_tok", json_integer(c->num_experts_per_tok));
        json_object_set_new(r, "n_group", json_integer(c->n_group));
        json_object_set_new(r, "topk_group", json_integer(c->topk_group));
        json_object_set_new(r, "topk_method", json_string(topk[c->topk_method]));
        json_object_set_new(r, "scoring_func", json_string(c->scoring_func == DSC_SCORE_SIGMOID
                                                               ? "sigmoid" : "softmax"));
        json_object_set_new(r, "norm_topk_prob", json_boolean(c->norm_topk_prob));
        json_object_set_new(r, "routed_scaling_factor", json_real(c->routed_scaling_factor));
    }
    json_object_set_new(r, "rms_norm_eps", json_real(c->rms_norm_eps));
    json_object_set_new(r, "tie_word_embeddings", json_boolean(c->tie_word_embeddings));
    json_object_set_new(r, "rope_interleave", json_boolean(c->rope_interleave));
    json_object_set_new(r, "hidden_act", json_string("silu"));
    json_object_set_new(r, "attention_bias", json_false());
    json_object_set_new(r, "rope_theta", json_real(c->rope_theta));
    if (c->yarn) {
        json_t *y = json_object();
        json_object_set_new(y, "type", json_string("yarn"));
        json_object_set_new(y, "factor", json_real(c->yarn_factor));
        json_object_set_new(y, "original_max_position_embeddings",
                            json_integer(c->yarn_original_max_pos));
        json_object_set_new(y, "beta_fast", json_real(c->yarn_beta_fast));
        json_object_set_new(y, "beta_slow", json_real(c->yarn_beta_slow));
        json_object_set_new(y, "mscale", json_real(c->yarn_mscale));
        json_object_set_new(y, "mscale_all_dim", json_real(c->yarn_mscale_all_dim));
        /* Only spell attention_factor out when the loader would not derive
           the same value from the mscales (keeps the config Hub-shaped). */
        double derived = (c->yarn_mscale != 0.0 && c->yarn_mscale_all_dim != 0.0)
                             ? yarn_m(c->yarn_factor, c->yarn_mscale) /
                                   yarn_m(c->yarn_factor, c->yarn_mscale_all_dim)
                             : yarn_m(c->yarn_factor, 1.0);
        if (derived != c->yarn_attention_factor)
            json_object_set_new(y, "attention_factor", json_real(c->yarn_attention_factor));
        json_object_set_new(r, "rope_scaling", y);
    } else {
        json_object_set_new(r, "rope_scaling", json_null());
    }
    if (!strcmp(c->model_type, "deepseek_v32")) {
        json_object_set_new(r, "index_n_heads", json_integer(c->index_n_heads));
        json_object_set_new(r, "index_head_dim", json_integer(c->index_head_dim));
        json_object_set_new(r, "index_topk", json_integer(c->index_topk));
    }
    if (c->attention_nsa) {   /* our extension (config.c), ignored by transformers */
        json_t *o = json_object();
        json_object_set_new(o, "num_key_value_heads", json_integer(c->nsa_kv_heads));
        json_object_set_new(o, "head_dim_k", json_integer(c->nsa_head_dim_k));
        json_object_set_new(o, "head_dim_v", json_integer(c->nsa_head_dim_v));
        json_object_set_new(o, "block_size", json_integer(c->nsa_block_size));
        json_object_set_new(o, "stride", json_integer(c->nsa_stride));
        json_object_set_new(o, "select_block", json_integer(c->nsa_select_block));
        json_object_set_new(o, "n_select", json_integer(c->nsa_n_select));
        json_object_set_new(o, "window", json_integer(c->nsa_window));
        json_object_set_new(o, "compress", json_string(c->nsa_compress_mean ? "mean" : "mlp"));
        if (!c->nsa_compress_mean)
            json_object_set_new(o, "compress_hidden", json_integer(c->nsa_compress_hidden));
        json_object_set_new(o, "shared_kv", json_boolean(c->nsa_shared_kv));
        json_object_set_new(r, "attention_type", json_string("nsa"));
        json_object_set_new(r, "nsa", o);
    }
    json_object_set_new(r, "torch_dtype", json_string("float32"));
    /* JSON_REAL_PRECISION(17): every double reads back bit for bit. */
    *out = json_dumps(r, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(17));
    json_decref(r);
    if (!*out) return dsc_err_set(err, DSC_ERR_OOM, "ckpt: out of memory for config.json");
    return DSC_OK;
}

/* dir/name into out (PATH_CAP bytes); DSC_ERR_ARG when it does not fit. */
static dsc_status join(char *out, const char *dir, const char *name, dsc_err *err) {
    int k = snprintf(out, PATH_CAP, "%s/%s", dir, name);
    if (k < 0 || k >= PATH_CAP)
        return dsc_err_set(err, DSC_ERR_ARG, "ckpt: path %s/%s is too long", dir, name);
    return DSC_OK;
}

static dsc_status write_text(const char *path, const char *text, size_t len, dsc_err *err) {
    FILE *f = fopen(path, "wb");
    if (!f) return dsc_err_set(err, DSC_ERR_IO, "%s: %s", path, strerror(errno));
    size_t w = fwrite(text, 1, len, f);
    int bad = w != len || fflush(f) != 0 || fsync(fileno(f)) != 0;
    if (fclose(f) != 0 || bad)
        return dsc_err_set(err, DSC_ERR_IO, "%s: write failed: %s", path, strerror(errno));
    return DSC_OK;
}

/* Copy src_dir/name into dst_dir/name; a missing optional file is skipped. */
static dsc_status copy_file(const char *src_dir, const char *dst_dir, const char *name,
                            int optional, dsc_err *err) {
    char src[PATH_CAP], dst[PATH_CAP];
    DSC_TRY(join(src, src_dir, name, err));
    DSC_TRY(join(dst, dst_dir, name, err));
    if (optional && access(src, F_OK) != 0) return DSC_OK;
    char *buf = NULL;
    size_t len = 0;
    DSC_TRY(dsc_read_file(src, &buf, &len, err));
    dsc_status s = write_text(dst, buf, len, err);
    free(buf);
    return s;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void rm_tree(const char *dir) { nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

static dsc_status fill_entry(dsc_st_write_entry *e, const char *name, int ndim,
                             const int64_t *shape, const float *data, dsc_err *err) {
    if (!name || !data || ndim < 0 || ndim > DSC_ST_MAX_DIMS)
        return dsc_err_set(err, DSC_ERR_ARG, "ckpt: tensor %s: bad name, data or ndim %d",
                           name ? name : "(null)", ndim);
    memset(e, 0, sizeof *e);
    e->name = name;
    e->dtype = DSC_F32;
    e->ndim = ndim;
    for (int d = 0; d < ndim; d++) e->shape[d] = shape[d];
    e->data = data;
    return DSC_OK;
}

/* optimizer.safetensors + trainer_state.json into tmp. */
static dsc_status save_optimizer(const char *tmp, dsc_adamw_t *o, const dsc_train_state *ts,
                                 dsc_err *err) {
    const int64_t n = dsc_adamw_count(o);
    dsc_st_write_entry *e = calloc((size_t)(2 * n), sizeof *e);
    char *names = calloc((size_t)(2 * n), 512);
    dsc_status s = DSC_OK;
    if (!e || !names) s = dsc_err_set(err, DSC_ERR_OOM, "ckpt: out of memory");
    for (int64_t i = 0; i < n && s == DSC_OK; i++) {
        const dsc_param *p = dsc_adamw_param(o, i);
        char *n1 = names + 2 * i * 512, *n2 = n1 + 512;
        if (!p->name || strlen(p->name) > 480) {
            s = dsc_err_set(err, DSC_ERR_ARG, "ckpt: optimizer parameter %lld has no name or "
                            "a name over 480 bytes", (long long)i);
            break;
        }
        snprintf(n1, 512, "%s.exp_avg", p->name);
        snprintf(n2, 512, "%s.exp_avg_sq", p->name);
        s = fill_entry(&e[2 * i], n1, p->ndim, p->shape, dsc_adamw_exp_avg(o, i), err);
        if (s == DSC_OK)
            s = fill_entry(&e[2 * i + 1], n2, p->ndim, p->shape, dsc_adamw_exp_avg_sq(o, i), err);
    }
    char path[PATH_CAP];
    if (s == DSC_OK) s = join(path, tmp, "optimizer.safetensors", err);
    if (s == DSC_OK) s = dsc_st_write(path, e, 2 * n, err);
    free(e);
    free(names);
    if (s != DSC_OK) return s;
    json_t *j = json_object();
    json_object_set_new(j, "step", json_integer(ts->step));
    json_object_set_new(j, "lr", json_real(ts->lr));
    /* The seed is a full uint64: stored as a decimal string, as JSON
       integers are signed (and often doubles in other readers). */
    char seed[32];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)ts->seed);
    json_object_set_new(j, "seed", json_string(seed));
    json_object_set_new(j, "data_batches", json_integer(ts->data_batches));
    char *txt = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(17));
    json_decref(j);
    if (!txt) return dsc_err_set(err, DSC_ERR_OOM, "ckpt: out of memory");
    s = join(path, tmp, "trainer_state.json", err);
    if (s == DSC_OK) s = write_text(path, txt, strlen(txt), err);
    free(txt);
    return s;
}

static const dsc_ckpt_tensor *find_tensor(const dsc_ckpt_save_params *p, const char *name) {
    for (int64_t i = 0; i < p->n_tensors; i++)
        if (p->tensors[i].name && !strcmp(p->tensors[i].name, name)) return &p->tensors[i];
    return NULL;
}

static dsc_status save_into(const char *tmp, const dsc_ckpt_save_params *p, dsc_err *err) {
    char path[PATH_CAP];
    char *cfg = NULL;
    DSC_TRY(dsc_ckpt_config_json(p->cfg, &cfg, err));
    dsc_status s = join(path, tmp, "config.json", err);
    if (s == DSC_OK) s = write_text(path, cfg, strlen(cfg), err);
    free(cfg);
    DSC_TRY(s);

    /* MTP layers: room for the two stored copies of each (see ckpt.h) */
    int64_t n_mtp = p->cfg->num_nextn_predict_layers > 0 ? p->cfg->num_nextn_predict_layers : 0;
    if (n_mtp > 1024) n_mtp = 1024;
    dsc_st_write_entry *e = calloc((size_t)(p->n_tensors + 2 * n_mtp), sizeof *e);
    char *copy_names = calloc((size_t)(2 * n_mtp + 1), 96);
    if (!e || !copy_names) {
        free(e);
        free(copy_names);
        return dsc_err_set(err, DSC_ERR_OOM, "ckpt: out of memory");
    }
    int64_t n = p->n_tensors;
    for (int64_t i = 0; i < n && s == DSC_OK; i++)
        s = fill_entry(&e[i], p->tensors[i].name, p->tensors[i].ndim, p->tensors[i].shape,
                       p->tensors[i].data, err);
    const dsc_ckpt_tensor *emb = find_tensor(p, "model.embed_tokens.weight");
    const dsc_ckpt_tensor *head = find_tensor(p, "lm_head.weight");
    if (!head) head = emb;   /* tied */
    for (int64_t k = 0; k < n_mtp && s == DSC_OK && emb; k++) {
        long long L = (long long)(p->cfg->num_hidden_layers + k);
        char probe[96];
        snprintf(probe, sizeof probe, "model.layers.%lld.enorm.weight", L);
        if (!find_tensor(p, probe)) continue;   /* the module is not in the list */
        static const char *const what[2] = {"embed_tokens.weight", "shared_head.head.weight"};
        for (int w = 0; w < 2 && s == DSC_OK; w++) {
            char *nm = copy_names + (2 * k + w) * 96;
            snprintf(nm, 96, "model.layers.%lld.%s", L, what[w]);
            if (find_tensor(p, nm)) continue;   /* the caller gave it */
            const dsc_ckpt_tensor *src = w ? head : emb;
            s = fill_entry(&e[n++], nm, src->ndim, src->shape, src->data, err);
        }
    }
    if (s == DSC_OK) s = join(path, tmp, "model.safetensors", err);
    if (s == DSC_OK) s = dsc_st_write(path, e, n, err);
    free(e);
    free(copy_names);
    DSC_TRY(s);

    if (p->tokenizer_dir) {
        DSC_TRY(copy_file(p->tokenizer_dir, tmp, "tokenizer.json", 0, err));
        DSC_TRY(copy_file(p->tokenizer_dir, tmp, "tokenizer_config.json", 1, err));
    }
    if (p->opt) DSC_TRY(save_optimizer(tmp, p->opt, &p->state, err));
    return DSC_OK;
}

dsc_status dsc_ckpt_save(const char *dir, const dsc_ckpt_save_params *p, dsc_err *err) {
    if (!dir || !p || !p->cfg || p->n_tensors < 1 || !p->tensors)
        return dsc_err_set(err, DSC_ERR_ARG, "ckpt: no directory, config or tensors");
    if (strlen(dir) > PATH_CAP - 64)
        return dsc_err_set(err, DSC_ERR_ARG, "ckpt: directory name too long");
    char tmp[PATH_CAP], old[PATH_CAP];
    snprintf(tmp, sizeof tmp, "%s.tmp.XXXXXX", dir);
    if (!mkdtemp(tmp))
        return dsc_err_set(err, DSC_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
    dsc_status s = save_into(tmp, p, err);
    if (s != DSC_OK) {
        rm_tree(tmp);
        return s;
    }
    /* Move an existing checkpoint aside, put the new one in place, then
       delete the old: at every moment one complete checkpoint exists. */
    int had_old = 0;
    snprintf(old, sizeof old, "%s.old.XXXXXX", dir);
    if (access(dir, F_OK) == 0) {
        if (!mkdtemp(old) || rename(dir, old) != 0) {
            s = dsc_err_set(err, DSC_ERR_IO, "%s: cannot move the old checkpoint aside: %s",
                            dir, strerror(errno));
            rm_tree(tmp);
            return s;
        }
        had_old = 1;
    }
    if (rename(tmp, dir) != 0) {
        s = dsc_err_set(err, DSC_ERR_IO, "%s: cannot rename %s into place: %s", dir, tmp,
                        strerror(errno));
        if (had_old && rename(old, dir) != 0) {
            /* Leave both on disk; the message names the old one's place. */
            return dsc_err_set(err, DSC_ERR_IO, "%s: rename failed and the old checkpoint "
                               "is left at %s", dir, old);
        }
        rm_tree(tmp);
        return s;
    }
    if (had_old) rm_tree(old);
    return DSC_OK;
}

dsc_status dsc_ckpt_check_writable(const char *dir, dsc_err *err) {
    if (!dir || !*dir) return dsc_err_set(err, DSC_ERR_ARG, "ckpt: no directory");
    if (strlen(dir) > PATH_CAP - 64)
        return dsc_err_set(err, DSC_ERR_ARG, "ckpt: directory name too long");
    struct stat sb;
    if (stat(dir, &sb) == 0 && !S_ISDIR(sb.st_mode))
        return dsc_err_set(err, DSC_ERR_IO, "%s exists and is not a directory", dir);
    char tmp[PATH_CAP], probe[PATH_CAP + 16];
    snprintf(tmp, sizeof tmp, "%s.tmp.XXXXXX", dir);
    if (!mkdtemp(tmp))
        return dsc_err_set(err, DSC_ERR_IO, "cannot write checkpoints to %s: creating %s "
                           "failed: %s", dir, tmp, strerror(errno));
    dsc_status s = DSC_OK;
    snprintf(probe, sizeof probe, "%s/probe", tmp);
    FILE *f = fopen(probe, "wb");
    if (!f || fclose(f) != 0)
        s = dsc_err_set(err, DSC_ERR_IO, "cannot write checkpoints to %s: writing %s failed: "
                        "%s", dir, probe, strerror(errno));
    rm_tree(tmp);
    return s;
}

dsc_status dsc_ckpt_load_optimizer(const char *dir, dsc_adamw_t *o, dsc_train_state *state,
                                   dsc_err *err) {
    char path[PATH_CAP];
    DSC_TRY(join(path, dir, "optimizer.safetensors", err));
    dsc_st_set *set = NULL;
    DSC_TRY(dsc_st_set_open_file(path, &set, err));
    dsc_status s = DSC_OK;
    for (int64_t i = 0; i < dsc_adamw_count(o) && s == DSC_OK; i++) {
        const dsc_param *p = dsc_adamw_param(o, i);
        for (int which = 0; which < 2 && s == DSC_OK; which++) {
            char nm[600];
            snprintf(nm, sizeof nm, "%s.%s", p->name ? p->name : "", which ? "exp_avg_sq"
                                                                          : "exp_avg");
            dsc_st_tensor *t = dsc_st_find(set, nm);
            if (!t) {
                s = dsc_err_set(err, DSC_ERR_MISSING, "%s: tensor %s is missing", path, nm);
                break;
            }
            int ok = t->dtype == DSC_F32 && t->ndim == p->ndim;
            for (int d = 0; ok && d < p->ndim; d++) ok = t->shape[d] == p->shape[d];
            if (!ok) {
                s = dsc_err_set(err, DSC_ERR_SHAPE, "%s: tensor %s is not F32 of the "
                                "parameter's shape", path, nm);
                break;
            }
            memcpy(which ? dsc_adamw_exp_avg_sq(o, i) : dsc_adamw_exp_avg(o, i), t->data,
                   t->nbytes);
        }
    }
    dsc_st_set_close(set);
    DSC_TRY(s);

    DSC_TRY(join(path, dir, "trainer_state.json", err));
    json_error_t je;
    json_t *j = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!j) return dsc_err_set(err, DSC_ERR_FORMAT, "%s: %s", path, je.text);
    json_t *step = json_object_get(j, "step"), *lr = json_object_get(j, "lr");
    json_t *seed = json_object_get(j, "seed"), *nb = json_object_get(j, "data_batches");
    if (!json_is_integer(step) || !json_is_number(lr) || !json_is_string(seed) ||
        !json_is_integer(nb)) {
        json_decref(j);
        return dsc_err_set(err, DSC_ERR_FORMAT, "%s: needs integer step, data_batches, "
                           "number lr, string seed", path);
    }
    state->step = json_integer_value(step);
    state->lr = json_number_value(lr);
    state->seed = strtoull(json_string_value(seed), NULL, 10);
    state->data_batches = json_integer_value(nb);
    json_decref(j);
    dsc_adamw_set_steps(o, state->step);
    return DSC_OK;
}
