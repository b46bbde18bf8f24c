/*
 * dsc.h - the one public header of libdsc.
 *
 * libdsc loads DeepSeek-V2 / V3 checkpoints in Hugging Face layout
 * (config.json + safetensors shards) directly, keeps the weights memory-mapped
 * in their stored dtype (F32, BF16, F16, FP8 e4m3 with 128x128 block scales)
 * and runs the forward pass in fp32.
 *
 * Conventions
 *  - Every function that can fail returns a dsc_status and, when `err` is not
 *    NULL, writes a human-readable message into it (file, tensor, expected vs
 *    found). The library never exits, aborts or prints on bad input.
 *  - Handles (dsc_model_t, dsc_ctx_t) are opaque; each has a _new/_load and a
 *    _free. Freeing NULL is a no-op.
 *  - Sizes and counts are int64_t; token ids are int32_t.
 *  - There is no global mutable state: two models may be used from two
 *    threads at once. One context must not be used from two threads at once.
 */
#ifndef DSC_H
#define DSC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DSC_VERSION_MAJOR 0
#define DSC_VERSION_MINOR 1

/* Status codes. Only ever appended to. */
typedef enum {
    DSC_OK = 0,
    DSC_ERR_IO,          /* a file is missing or cannot be read / mapped       */
    DSC_ERR_FORMAT,      /* a file is malformed (JSON, safetensors header, ...) */
    DSC_ERR_CONFIG,      /* config.json has a bad or unsupported value         */
    DSC_ERR_UNSUPPORTED, /* valid input that this build does not handle         */
    DSC_ERR_SHAPE,       /* a tensor has the wrong shape or dtype               */
    DSC_ERR_MISSING,     /* a required tensor is absent, or an extra one found  */
    DSC_ERR_ARG,         /* a bad argument (out-of-range token id, n <= 0, ...) */
    DSC_ERR_OOM,         /* an allocation failed                                */
} dsc_status;

/* Static string naming a status, e.g. "format error". Never NULL. */
const char *dsc_status_str(dsc_status s);

/* Error details. Caller-owned; a function writes msg only when it fails. */
typedef struct {
    dsc_status code;
    char msg[1024];
} dsc_err;

/* Storage dtypes of weights. Only ever appended to. */
typedef enum {
    DSC_F32 = 0,
    DSC_BF16,
    DSC_F16,
    DSC_F8_E4M3,
} dsc_dtype;

const char *dsc_dtype_name(dsc_dtype t); /* "?" for an unknown value     */
size_t dsc_dtype_size(dsc_dtype t);      /* bytes per element; 0 if unknown */

/* Routing of the MoE gate (config `topk_method`). */
typedef enum {
    DSC_TOPK_GREEDY = 0,         /* V2-Lite: plain top-k                       */
    DSC_TOPK_GROUP_LIMITED,      /* V2: groups ranked by their max score        */
    DSC_TOPK_NOAUX_TC,           /* V3: biased scores, groups by top-2 sum      */
} dsc_topk_method;

typedef enum { DSC_SCORE_SOFTMAX = 0, DSC_SCORE_SIGMOID } dsc_scoring;

/* The model configuration as read from config.json (read-only view). */
typedef struct {
    char model_type[32];          /* "deepseek_v2" / "deepseek_v3" / "deepseek_v32" */
    int64_t vocab_size;
    int64_t hidden_size;          /* d                                             */
    int64_t intermediate_size;    /* dense FFN width                               */
    int64_t moe_intermediate_size;
    int64_t num_hidden_layers;
    int64_t num_attention_heads;  /* H                                             */
    int64_t q_lora_rank;          /* 0 = no query compression (V2-Lite)            */
    int64_t kv_lora_rank;         /* d_c                                           */
    int64_t qk_nope_head_dim;
    int64_t qk_rope_head_dim;
    int64_t v_head_dim;
    int64_t n_routed_experts;     /* 0 = every layer dense                         */
    int64_t n_shared_experts;
    int64_t num_experts_per_tok;
    int64_t n_group, topk_group;
    int64_t first_k_dense_replace;
    int64_t moe_layer_freq;
    int64_t num_nextn_predict_layers; /* MTP layers present in the files (ignored) */
    int64_t max_position_embeddings;
    int64_t bos_token_id, eos_token_id; /* -1 when absent                         */
    dsc_topk_method topk_method;
    dsc_scoring scoring_func;
    int norm_topk_prob;
    int tie_word_embeddings;
    int rope_interleave;          /* 1: pairs (2i, 2i+1); 0: pairs (i, i+D/2)      */
    double routed_scaling_factor;
    double rms_norm_eps;
    double rope_theta;
    /* YaRN (rope_scaling / rope_parameters); yarn == 0 means plain RoPE. */
    int yarn;
    double yarn_factor, yarn_beta_fast, yarn_beta_slow;
    double yarn_mscale, yarn_mscale_all_dim;
    int64_t yarn_original_max_pos;
    double yarn_attention_factor; /* multiplies cos/sin (1.0 for DeepSeek configs) */
    double softmax_scale;         /* d_qk^-1/2 * m^2, precomputed                  */
    /* DeepSeek Sparse Attention (deepseek_v32); index_topk == 0: dense MLA. */
    int64_t index_n_heads;        /* H_I                                           */
    int64_t index_head_dim;       /* D_I; its first qk_rope_head_dim dims carry RoPE */
    int64_t index_topk;           /* k: keys each query attends to                 */
    int scale_ue8m0;              /* quantization_config.scale_fmt == "ue8m0"     */
    /* NSA (Native Sparse Attention, GQA) in place of MLA: our config.json
       extension "attention_type": "nsa" + an "nsa" object (config.c says
       which keys). attention_nsa == 0: MLA, and every nsa_* field is 0.
       NSA models are trainable (dsc train) and run (dsc_forward /
       dsc_generate, one NSA decode state per layer in the context; no
       speculative decoding: spec MTP is refused, AUTO decodes plainly). */
    int attention_nsa;
    int64_t nsa_kv_heads;         /* H_kv (num_attention_heads is H_q)             */
    int64_t nsa_head_dim_k;       /* d_k; RoPE on its first qk_rope_head_dims      */
    int64_t nsa_head_dim_v;       /* d_v                                           */
    int64_t nsa_block_size;       /* l   compression block                         */
    int64_t nsa_stride;           /* d   compression stride                        */
    int64_t nsa_select_block;     /* l'  selection block                           */
    int64_t nsa_n_select;         /* n   selected blocks (forced ones included)    */
    int64_t nsa_window;           /* w   sliding-window keys, t included           */
    int64_t nsa_compress_hidden;  /* m   compression MLP width (0 for mean)        */
    int nsa_compress_mean;        /* 1: "compress": "mean"; 0: "mlp"               */
    int nsa_shared_kv;            /* 1: one k_proj / v_proj for the three branches */
} dsc_config;

typedef struct dsc_model dsc_model_t;
typedef struct dsc_ctx dsc_ctx_t;

/*
 * Load the checkpoint in directory `dir`: config.json, then either
 * model.safetensors or model.safetensors.index.json + its shards. Tensors are
 * mmapped read-only and stay in their stored dtype. On failure *out is NULL
 * and err says what is wrong. The model owns its mappings until freed.
 */
dsc_status dsc_model_load(const char *dir, dsc_model_t **out, dsc_err *err);
void dsc_model_free(dsc_model_t *m);

/* Borrowed pointer, valid until dsc_model_free. */
const dsc_config *dsc_model_config(const dsc_model_t *m);

typedef struct {
    int64_t n_params;             /* every weight element the forward pass uses    */
    int64_t n_params_active;      /* per token: all but the unchosen routed experts */
    int64_t n_params_skipped;     /* elements in the files that are not used (MTP) */
    int64_t n_tensors;            /* tensors bound by the model                    */
    int64_t n_tensors_skipped;    /* tensors in the files left unused (MTP layers) */
    int64_t weight_bytes;         /* bytes of the bound tensors as stored          */
    int64_t file_bytes;           /* bytes of all safetensors files                */
    int64_t n_moe_layers, n_dense_layers;
    int64_t latent_cache_values_per_token;  /* (kv_lora_rank + rope) * layers      */
    int64_t index_cache_values_per_token;   /* index_head_dim * layers (DSA), else 0 */
    int64_t mha_cache_values_per_token;     /* H*(d_qk + d_v) * layers             */
    dsc_dtype dominant_dtype;     /* dtype holding most weight bytes               */
    int64_t dtype_bytes[4];       /* bound weight bytes per dsc_dtype              */
    /* MTP modules (model.layers.{L + i}.*), bound for speculative decoding
       when the files hold them; not counted in n_params / weight_bytes. */
    int64_t n_mtp_modules;        /* 0: none in the files (or config says 0)      */
    int64_t n_params_mtp;         /* their elements (the stored copies of the
                                     embedding and head excluded: the main
                                     model's are used)                            */
} dsc_model_info;

/* Fill info with the counts and sizes computed at load (never fails). */
void dsc_model_get_info(const dsc_model_t *m, dsc_model_info *info);

/* How attention is computed. Both read the same latent cache. */
typedef enum {
    DSC_ATTN_ABSORBED = 0, /* W^UK folded into the query, W^UV after attention  */
    DSC_ATTN_NAIVE,        /* per-head K/V decompressed from the cached latents  */
} dsc_attn_mode;

/* Speculative decoding with the model's MTP modules as the draft (spec §6). */
typedef enum {
    DSC_SPEC_NONE = 0,  /* plain decoding                                          */
    DSC_SPEC_MTP,       /* always speculate; dsc_ctx_new fails with DSC_ERR_MISSING
                           when the model has no MTP module                         */
    DSC_SPEC_AUTO,      /* speculate if the model has MTP modules and a measurement
                           at the start of each dsc_generate call says it pays;
                           plain decoding otherwise (dsc_ctx_spec_note says why)    */
} dsc_spec_mode;

/* Most tokens drafted per speculation step. */
#define DSC_SPEC_MAX_DRAFT 8

/* Storage of the DSA indexer's key cache (one index_head_dim key per token). */
typedef enum {
    DSC_INDEX_CACHE_F32 = 0,
    DSC_INDEX_CACHE_BF16,
    DSC_INDEX_CACHE_FP8,   /* e4m3 + one fp32 scale per token (the official layout) */
} dsc_index_cache_type;

typedef struct {
    int64_t n_ctx;        /* positions the latent cache holds (>= 1)                */
    int64_t n_batch;      /* most tokens one dsc_forward call may take (>= 1)       */
    int n_threads;        /* 0 = OpenMP default                                     */
    dsc_attn_mode attn;
    int dense;            /* DSA models: 1 = ignore the indexer, attend densely     */
    dsc_index_cache_type index_cache;
    /* DSA models: score as the official kernels do: Hadamard-rotate indexer
       q and k (index_head_dim must be a power of two), quantise both to FP8
       e4m3 (q per token and head, k per token; scale amax/448, rounded up to
       a power of two for ue8m0 checkpoints). Implies an FP8 key cache. Off by
       default, as transformers scores in fp32. */
    int index_fp8;
    /* Speculative decoding (dsc_generate): the MTP chain drafts draft_n
       tokens per step (0: the model's number of MTP modules; more than
       that reuses the last module on its own output), the main model
       verifies them in one pass. The context then also holds each MTP
       module's latent (and DSA key) cache. */
    dsc_spec_mode spec;
    int draft_n;          /* 0..DSC_SPEC_MAX_DRAFT                                 */
    int64_t draft_vocab;  /* > 0: the draft's head scores only ids [0, draft_vocab)
                             (byte-level BPE ids are roughly in merge-frequency
                             order, so these are the common tokens): a cheaper
                             draft, still exact output (drafts outside are just
                             never proposed); 0 = the whole vocabulary       */
    int spec_probe;       /* tokens decoded plainly at the start of each call to
                             measure the speedup (AUTO: to choose; AUTO uses 4
                             when this is 0); default 4                         */
} dsc_ctx_params;

dsc_ctx_params dsc_ctx_default_params(void);

/*
 * Create an inference context: the latent KV cache for n_ctx positions and
 * every activation buffer for n_batch tokens, allocated once here; nothing is
 * allocated by dsc_forward. The model must outlive the context. p NULL means
 * dsc_ctx_default_params(); n_batch is clamped to n_ctx; n_ctx <= 2^31-1.
 */
dsc_status dsc_ctx_new(const dsc_model_t *m, const dsc_ctx_params *p,
                       dsc_ctx_t **out, dsc_err *err);
void dsc_ctx_free(dsc_ctx_t *c);

/* Bytes held by the context: the latent cache (with the DSA indexer's key
   cache), and the rest (activations). */
int64_t dsc_ctx_cache_bytes(const dsc_ctx_t *c);
int64_t dsc_ctx_work_bytes(const dsc_ctx_t *c);

/*
 * Run the model on n tokens at positions pos0 .. pos0+n-1, appending their
 * latents to the cache (positions before pos0 must have been filled by earlier
 * calls). When logits is not NULL it receives float32 [n][vocab_size].
 * Checks: 1 <= n <= n_batch, 0 <= pos0 <= n_past (no gap), pos0 + n <= n_ctx,
 * 0 <= ids[i] < vocab_size.
 */
dsc_status dsc_forward(dsc_ctx_t *c, const int32_t *ids, int64_t n, int64_t pos0,
                       float *logits, dsc_err *err);

/*
 * Like dsc_forward, but computes logits only for the last of the n tokens:
 * logits receives float32 [vocab_size] (prefill of a prompt needs no more,
 * and the lm_head is a third of prefill time). logits may be NULL.
 */
dsc_status dsc_forward_last(dsc_ctx_t *c, const int32_t *ids, int64_t n, int64_t pos0,
                            float *logits, dsc_err *err);

/* Positions the context holds (its n_ctx) and the most tokens per call. */
int64_t dsc_ctx_size(const dsc_ctx_t *c);
int64_t dsc_ctx_batch(const dsc_ctx_t *c);

/* Tokens in the cache: positions 0..n_past-1 hold the ids of the last
   forward calls (a forward at pos0 sets n_past = pos0 + n). The pointer is
   valid until the next call on the context. */
int64_t dsc_ctx_n_past(const dsc_ctx_t *c);
const int32_t *dsc_ctx_tokens(const dsc_ctx_t *c);
/* Forget every cached token (n_past = 0). */
void dsc_ctx_reset(dsc_ctx_t *c);

/* Whether dsc_generate speculates on this context (its spec mode is not
   NONE and the model has MTP modules; AUTO may still decide per call), the
   tokens it drafts per step, and a one-line note on the choice (e.g. why
   AUTO decoded plainly in the last call); never NULL. */
int dsc_ctx_spec_enabled(const dsc_ctx_t *c);
int dsc_ctx_spec_draft_n(const dsc_ctx_t *c);
const char *dsc_ctx_spec_note(const dsc_ctx_t *c);

/*
 * Touch every page of the weight files so that they are resident before the
 * first token (mmap loads lazily). progress (may be NULL) is called with the
 * fraction done, at most ~100 times; returning nonzero stops early.
 */
void dsc_model_prefetch(const dsc_model_t *m, int (*progress)(void *user, double done),
                        void *user);

/* ------------------------------------------------------------------------
 * Tokenizer: Hugging Face tokenizer.json (byte-level BPE with merges, the
 * pre-tokenizer's regex splits via PCRE2, added/special tokens matched before
 * BPE) + tokenizer_config.json (add_bos_token, bos/eos tokens).
 * ------------------------------------------------------------------------ */
typedef struct dsc_tokenizer dsc_tokenizer_t;

/* Load dir/tokenizer.json and dir/tokenizer_config.json (the latter may be
   absent: then no BOS is added). Unsupported model or pre-tokenizer types
   (and add_eos_token: true) are DSC_ERR_UNSUPPORTED naming the field; a
   missing tokenizer.json is DSC_ERR_IO; malformed JSON is DSC_ERR_FORMAT. */
dsc_status dsc_tokenizer_load(const char *dir, dsc_tokenizer_t **out, dsc_err *err);
void dsc_tokenizer_free(dsc_tokenizer_t *t);

/* Number of ids (highest id + 1, added tokens included). */
int64_t dsc_tokenizer_vocab(const dsc_tokenizer_t *t);
/* BOS / EOS ids from tokenizer_config.json (-1 when none). */
int32_t dsc_tokenizer_bos(const dsc_tokenizer_t *t);
int32_t dsc_tokenizer_eos(const dsc_tokenizer_t *t);
/* Whether encoding adds BOS by default (tokenizer_config add_bos_token). */
int dsc_tokenizer_adds_bos(const dsc_tokenizer_t *t);
/* Id of a token given by its string as spelled in tokenizer.json (e.g.
   "<｜User｜>", or "Ġthe" for " the"); -1 if none. */
int32_t dsc_tokenizer_find(const dsc_tokenizer_t *t, const char *token);

/*
 * Encode len bytes of UTF-8 text. add_bos: -1 as the config says, 0 never,
 * 1 always. Added/special tokens appearing in the text are matched as such.
 * Writes at most cap ids; *n_out is the number the text needs (call again
 * with a larger buffer when *n_out > cap; nothing else is an error then).
 * Invalid UTF-8 is DSC_ERR_ARG naming the byte offset; add_bos = 1 on a
 * tokenizer without a BOS token is DSC_ERR_ARG.
 */
dsc_status dsc_tokenize(const dsc_tokenizer_t *t, const char *text, size_t len, int add_bos,
                        int32_t *ids, int64_t cap, int64_t *n_out, dsc_err *err);

/*
 * Streaming decode: the bytes of token id, appended to what st holds back.
 * Complete UTF-8 characters are written to out (at most cap bytes) and their
 * count returned; an incomplete trailing character is held in st until the
 * next call (a sequence that can no longer complete becomes U+FFFD, as the
 * tokenizers package decodes). 4 + 3 x the longest token's bytes always
 * suffice (388 for DeepSeek-V3, whose longest tokens are 128 bytes). Special
 * tokens decode to their text unless skip_special. Returns -1 for an id out
 * of range or a cap too small for this token (st unchanged then).
 * dsc_detok_flush emits what is held (invalid leftovers as U+FFFD).
 * A dsc_detok_state must start zeroed.
 */
typedef struct {
    unsigned char pend[8];
    int n_pend;
} dsc_detok_state;
int64_t dsc_detokenize_piece(const dsc_tokenizer_t *t, int32_t id, int skip_special,
                             dsc_detok_state *st, char *out, int64_t cap);
int64_t dsc_detok_flush(dsc_detok_state *st, char *out, int64_t cap);

/* Bytes of one token as stored (byte-level decoded, may be part of a UTF-8
   character); *len receives the count. NULL for an id out of range. */
const char *dsc_token_bytes(const dsc_tokenizer_t *t, int32_t id, size_t *len);

/* ------------------------------------------------------------------------
 * Sampling.
 * ------------------------------------------------------------------------ */
typedef struct {
    float temp;             /* <= 0: greedy (argmax, lowest id on ties)           */
    int32_t top_k;          /* <= 0: off                                          */
    float top_p;            /* >= 1: off                                          */
    float min_p;            /* <= 0: off                                          */
    float repeat_penalty;   /* 1: off; applied to ids in the last repeat_last_n   */
    int32_t repeat_last_n;  /* how many recent ids the penalty looks at           */
    uint64_t seed;
    int ignore_eos;         /* EOS logit set to -inf                               */
    int32_t eos_id;         /* -1: none                                           */
} dsc_sampler_params;

dsc_sampler_params dsc_sampler_default_params(void);

typedef struct dsc_sampler dsc_sampler_t;
/* Scratch for a vocabulary of n_vocab ids, allocated once here. */
dsc_status dsc_sampler_new(const dsc_sampler_params *p, int64_t n_vocab, dsc_sampler_t **out,
                           dsc_err *err);
void dsc_sampler_free(dsc_sampler_t *s);
/* The vocabulary size the sampler was made for. */
int64_t dsc_sampler_vocab(const dsc_sampler_t *s);
/* Choose the next id from logits [n_vocab] (n_vocab floats, modified in
   place). history is the ids so far (prompt and generated), for the
   repetition penalty (repeat_last_n <= 0: the whole history). Returns 0 when
   every logit is NaN or -inf. */
int32_t dsc_sampler_sample(dsc_sampler_t *s, float *logits, const int32_t *history,
                           int64_t n_history);

/* ------------------------------------------------------------------------
 * Generation: prefill + sample loop over a context.
 * ------------------------------------------------------------------------ */
typedef enum {
    DSC_STOP_EOS = 0,    /* the EOS id was sampled (and reported)                */
    DSC_STOP_LENGTH,     /* n_predict tokens were sampled                        */
    DSC_STOP_CONTEXT,    /* the context is full                                   */
    DSC_STOP_CALLBACK,   /* on_token asked to stop                                */
} dsc_stop_reason;

/* Speculation counters of one dsc_generate call (all 0 when it decoded
   plainly throughout). */
typedef struct {
    int active;          /* speculation ran (AUTO: the measurement chose it)      */
    int64_t n_steps;     /* verify passes of the main model                       */
    int64_t n_drafted[DSC_SPEC_MAX_DRAFT];   /* drafts at step position j        */
    int64_t n_accepted[DSC_SPEC_MAX_DRAFT];  /* of them accepted                 */
    int64_t n_spec_tokens;  /* tokens committed by speculation steps              */
    double spec_s;       /* seconds of the speculation steps                      */
    double draft_s;      /* of them: the MTP module (catch-up, drafts, their head
                            and sampler)                                         */
    double verify_s;     /* of them: the main model's pass and head; the rest of
                            spec_s is the acceptance (the sampler per position)  */
    int64_t n_plain;     /* timed plain tokens: the first spec_probe of the call
                            but the first (a warm-up), for AUTO and the speedup   */
    double plain_s;      /* seconds of those                                      */
    /* routed experts touched: distinct experts per MoE layer and main-model
       pass, summed, over the speculation steps and over the timed plain steps */
    int64_t experts_spec, experts_plain;
} dsc_spec_stats;

typedef struct {
    int64_t n_prompt;    /* tokens prefilled by the call (a pending one included) */
    int64_t n_gen;       /* tokens sampled by the call                            */
    double prompt_s;     /* seconds of prefill                                    */
    double gen_s;        /* seconds of the sample/decode loop                     */
    dsc_stop_reason stop;
    dsc_spec_stats spec;
} dsc_gen_stats;

/* Called for each sampled id (EOS included); return nonzero to stop. */
typedef int (*dsc_token_cb)(void *user, int32_t id);

/*
 * Append prompt at the context's end, prefilling in n_batch chunks (the
 * prompt may be empty when the context already holds tokens: generation then
 * continues from its last position), then sample up to n_predict
 * ids (< 0: until EOS or a full context). Each sampled id is reported before
 * it is fed to the model; the last one is kept pending and is fed at the
 * start of the next dsc_generate call, so a chat can continue the cache
 * without re-prefilling earlier turns. eos_id < 0: no EOS stop.
 * The sampler must be made for the model's vocab_size.
 * On a context made with a spec mode (dsc_ctx_params.spec), decoding is
 * speculative: each step the MTP chain drafts draft_n tokens after the last
 * committed one, the main model runs on all of them in one pass, and the
 * standard rule accepts a prefix (greedy: a draft is kept when it is the
 * argmax; sampling: kept with probability min(1, p/q), else the token is
 * drawn from max(0, p - q) normalised, p and q the sampler's final
 * distributions of the main model and the draft), so the output is the
 * plain decoder's (greedy: token for token; sampling: in distribution). The
 * first spec_probe tokens of a call are decoded plainly to measure the
 * speedup (and, for AUTO, to choose). Rejected drafts are rolled back in every
 * cache. Callbacks see each token once, in order, as without speculation.
 * Errors (DSC_ERR_ARG, nothing is fed): the prompt does not fit the context,
 * a prompt id is out of range, a sampler of another vocabulary size; or any
 * dsc_forward error.
 */
dsc_status dsc_generate(dsc_ctx_t *c, dsc_sampler_t *s, const int32_t *prompt,
                        int64_t n_prompt, int64_t n_predict, int32_t eos_id, dsc_token_cb on_token,
                        void *user, dsc_gen_stats *stats, dsc_err *err);

#ifdef __cplusplus
}
#endif
#endif /* DSC_H */
