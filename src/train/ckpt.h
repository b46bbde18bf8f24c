/*
 * ckpt.h - training checkpoints in Hugging Face layout.
 *
 * dsc_ckpt_save writes a directory that dsc_model_load (and transformers)
 * can read as it is:
 *   config.json             from a dsc_config (every field config.c reads)
 *   model.safetensors       the given tensors, F32, under the caller's names;
 *                           for a config with num_nextn_predict_layers > 0,
 *                           each MTP layer L present in the list (it has
 *                           model.layers.{L}.enorm.weight) also gets the
 *                           stored copies DeepSeek-V3's files hold (spec
 *                           §6.3), unless given: model.layers.{L}.embed_tokens
 *                           .weight = model.embed_tokens.weight and
 *                           model.layers.{L}.shared_head.head.weight =
 *                           lm_head.weight (the embedding when tied)
 *   tokenizer.json, tokenizer_config.json   copied when tokenizer_dir is set
 *   optimizer.safetensors   <name>.exp_avg / <name>.exp_avg_sq per parameter
 *   trainer_state.json      {"step", "lr", "seed", "data_batches"}
 * (the last two only when an optimizer is given). Everything is written into
 * a fresh sibling directory "<dir>.tmp.XXXXXX" and renamed onto dir only once
 * complete; an existing dir is moved aside first and deleted after the
 * rename, so a crash leaves either the old or the new checkpoint whole (plus
 * at most a stray temporary directory).
 */
#ifndef DSC_TRAIN_CKPT_H
#define DSC_TRAIN_CKPT_H

#include <stdint.h>

#include "dsc.h"
#include "train/optim.h"

typedef struct {
    const char *name;       /* checkpoint name, e.g. "model.layers.0.mlp.gate_proj.weight" */
    int ndim;
    int64_t shape[DSC_PARAM_MAX_DIMS];
    const float *data;      /* product(shape) floats                                      */
} dsc_ckpt_tensor;

typedef struct {
    int64_t step;           /* optimizer steps done                     */
    double lr;              /* learning rate of the last step           */
    uint64_t seed;          /* run seed (data order, init)              */
    int64_t data_batches;   /* batches consumed (dsc_data_iter_seek)    */
} dsc_train_state;

typedef struct {
    const dsc_config *cfg;
    const dsc_ckpt_tensor *tensors;
    int64_t n_tensors;
    const char *tokenizer_dir;   /* NULL: no tokenizer files                 */
    dsc_adamw_t *opt;            /* NULL: weights only (read, not changed)   */
    dsc_train_state state;       /* written with the optimizer               */
} dsc_ckpt_save_params;

/* Write the checkpoint directory `dir` (see above). DSC_ERR_ARG for a bad
   tensor entry or config; DSC_ERR_IO naming the file that failed. */
dsc_status dsc_ckpt_save(const char *dir, const dsc_ckpt_save_params *p, dsc_err *err);

/* Whether checkpoints can be written to dir: it must be a directory or not
   exist, and a temporary sibling "<dir>.tmp.XXXXXX" (where dsc_ckpt_save
   writes) must be creatable and writable; the probe is removed again.
   DSC_ERR_IO with a message naming dir otherwise. */
dsc_status dsc_ckpt_check_writable(const char *dir, dsc_err *err);

/* The config.json text for cfg (malloc'd, caller frees). Parsing it with
   the loader gives back cfg field for field. */
dsc_status dsc_ckpt_config_json(const dsc_config *cfg, char **out, dsc_err *err);

/* Resume: read dir/optimizer.safetensors into opt's moments (every parameter
   must be present with its shape; DSC_ERR_MISSING / DSC_ERR_SHAPE otherwise)
   and dir/trainer_state.json into *state; sets opt's step count. */
dsc_status dsc_ckpt_load_optimizer(const char *dir, dsc_adamw_t *opt, dsc_train_state *state,
                                   dsc_err *err);

#endif
