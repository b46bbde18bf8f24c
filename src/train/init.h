/*
 * init.h - a fresh, randomly initialised model directory from a config.
 *
 * dsc_train_init_save writes, through dsc_ckpt_save (F32, Hugging Face
 * layout), every tensor that the loader binds for the config:
 *   model.embed_tokens.weight, model.norm.weight, lm_head.weight (unless
 *   tie_word_embeddings), and per layer the norms, MLA (q_a_proj +
 *   q_a_layernorm + q_b_proj, or q_proj; kv_a_proj_with_mqa, kv_a_layernorm,
 *   kv_b_proj, o_proj), the DSA indexer for deepseek_v32, and either the dense
 *   SwiGLU MLP or the MoE (gate, e_score_correction_bias for noaux_tc,
 *   shared_experts.*, experts.E.*);
 * then, when num_nextn_predict_layers > 0, each MTP layer L (L =
 * num_hidden_layers, ...) with DeepSeek-V3's names (spec §6.3):
 *   model.layers.{L}.enorm.weight, .hnorm.weight, .eh_proj.weight (d, 2d),
 *   the decoder block under model.layers.{L}. (as a main layer L would be:
 *   MLA + dense MLP or MoE per the config), .shared_head.norm.weight, and
 *   (added by dsc_ckpt_save) the stored copies .embed_tokens.weight and
 *   .shared_head.head.weight of model.embed_tokens.weight / lm_head.weight.
 * Values (DeepSeek-V3 paper §4.2): every matrix ~ N(0, std^2), std 0.006 by
 * default; RMSNorm / LayerNorm weights 1; the LayerNorm bias and the router's
 * e_score_correction_bias 0 (the same for the MTP layers' tensors).
 *
 * Deterministic: each tensor draws from its own stream, seeded by
 * hash(seed, tensor name), so a tensor's values depend only on the seed, its
 * name and its shape (not on the order or on the other tensors).
 *
 * What this is not: sharded or memory-frugal. All values are held in one
 * fp32 allocation while writing, so it is for models that fit in memory.
 */
#ifndef DSC_TRAIN_INIT_H
#define DSC_TRAIN_INIT_H

#include <stdint.h>

#include "dsc.h"

typedef struct {
    uint64_t seed;               /* init seed                                      */
    double std;                  /* std of the matrices; 0.006 (DeepSeek-V3)       */
    const char *tokenizer_dir;   /* tokenizer files copied from here; NULL: none   */
} dsc_init_params;

dsc_init_params dsc_init_default_params(void);

/*
 * Write a new checkpoint for cfg into dir (created, or replaced whole, as
 * dsc_ckpt_save does). The result loads with dsc_model_load.
 * DSC_ERR_ARG for a config with a non-positive dimension or std < 0 (or not
 * finite); DSC_ERR_OOM; DSC_ERR_IO from writing.
 */
dsc_status dsc_train_init_save(const char *dir, const dsc_config *cfg, const dsc_init_params *p,
                               dsc_err *err);

#endif
