/*
 * model.h - the in-memory model: config, bound weights, inference context.
 *
 * Weights are dsc_wmat views into the mmapped safetensors files, in their
 * stored dtype; nothing is converted at load. The inference context owns two
 * allocations carved from size tables: the latent cache (lifetime: the
 * context's conversation) and the work buffers (lifetime: one forward call,
 * reused). dsc_forward allocates nothing.
 *
 * Shapes use the spec's names: d = hidden_size, H = heads, dc = kv_lora_rank,
 * dq = q_lora_rank, dn = qk_nope_head_dim, dr = qk_rope_head_dim,
 * dv = v_head_dim, dqk = dn + dr, E = routed experts, K = experts per token.
 */
#ifndef DSC_MODEL_H
#define DSC_MODEL_H

#include "dsc.h"
#include "io/safetensors.h"
#include "kernels/kernels.h"
#include "nsa/nsa.h"
#include "nsa/nsa_decode.h"

/* config.c: parse config.json text (path is used in messages only). */
dsc_status dsc_config_parse(const char *json_text, size_t len, const char *path,
                            dsc_config *cfg, dsc_err *err);
/* The RoPE/YaRN table parameters a config implies (MLA and the DSA indexer
   share them; the trainer builds the same tables). */
void dsc_config_rope_params(const dsc_config *c, dsc_rope_params *rp);
/* The NSA operator's config of an attention_type "nsa" model (scale 0:
   1/sqrt(d_k); see config.c for the config.json keys). */
void dsc_config_nsa(const dsc_config *c, dsc_nsa_config *o);
/* The NSA attention tensors of one layer, by slot, in the order the loader
   binds, init writes and the trainer lists them (under
   model.layers.{l}.self_attn.): q_proj, k_proj_{cmp,slc,win},
   v_proj_{cmp,slc,win} (k_proj, v_proj when shared_kv), gate_proj, o_proj,
   then for the MLP compression compress_k.{pe, w1.weight, w2.weight} and
   compress_v.*. pe is the intra-block position encoding (no weight decay). */
enum {
    DSC_NSA_W_Q = 0,
    DSC_NSA_W_K = 1,               /* + branch */
    DSC_NSA_W_V = 4,               /* + branch */
    DSC_NSA_W_GATE = 7,
    DSC_NSA_W_O,
    DSC_NSA_W_PE_K, DSC_NSA_W_W1_K, DSC_NSA_W_W2_K,
    DSC_NSA_W_PE_V, DSC_NSA_W_W1_V, DSC_NSA_W_W2_V,
    DSC_NSA_W_N
};
typedef struct {
    int slot;
    char name[40];           /* after "self_attn."  */
    int64_t rows, cols;
    int decay;               /* 1: a weight matrix; 0: pe */
} dsc_nsa_tensor;
/* Fills out[0 .. count-1] (count <= DSC_NSA_W_N) and returns the count. */
int dsc_nsa_tensors(const dsc_config *c, dsc_nsa_tensor *out);
/* Whether layer l uses MoE (else a dense SwiGLU FFN). */
int dsc_config_layer_is_moe(const dsc_config *c, int64_t l);

typedef struct {
    dsc_wmat gate, up, down;   /* gate/up: (ff, d)  down: (d, ff) */
} dsc_mlp;

typedef struct {
    dsc_wmat attn_norm;        /* (d)                                         */
    dsc_wmat ffn_norm;         /* (d)                                         */
    /* MLA */
    dsc_wmat q_a;              /* (dq, d)        absent when dq == 0           */
    dsc_wmat q_a_norm;         /* (dq)                                         */
    dsc_wmat q_b;              /* (H*dqk, dq)    or q_proj (H*dqk, d)          */
    dsc_wmat kv_a;             /* (dc + dr, d)   [c_raw ; k_pe_raw]            */
    dsc_wmat kv_a_norm;        /* (dc)                                         */
    dsc_wmat kv_b;             /* (H*(dn+dv), dc) per head: [W^UK (dn) ; W^UV (dv)] */
    dsc_wmat o;                /* (d, H*dv)                                    */
    /* DSA lightning indexer (deepseek_v32 only) */
    dsc_wmat idx_wq_b;         /* (H_I*D_I, dq)  from the normed q latent      */
    dsc_wmat idx_wk;           /* (D_I, d)       from x                        */
    dsc_wmat idx_k_norm_w;     /* (D_I) LayerNorm weight                        */
    dsc_wmat idx_k_norm_b;     /* (D_I) LayerNorm bias                          */
    dsc_wmat idx_weights;      /* (H_I, d)       per-head weights from x        */
    /* NSA (attention_type "nsa"; the MLA fields above unbound then except o) */
    struct {
        dsc_wmat q;            /* (H_q*d_k, d)   q_proj                        */
        dsc_wmat k[3], v[3];   /* (H_kv*d_k, d), (H_kv*d_v, d) per branch
                                  cmp, slc, win; only [0] when shared_kv       */
        dsc_wmat gate;         /* (3*H_q, d)     g = sigmoid(x gate^T), "(h 3)" */
        dsc_wmat pe_k, w1_k, w2_k; /* (H_kv*l, d_k), (H_kv*m, l*d_k), (H_kv*d_k, m) */
        dsc_wmat pe_v, w1_v, w2_v; /* (H_kv*l, d_v), (H_kv*m, l*d_v), (H_kv*d_v, m) */
    } nsa;                     /* o_proj is `o` (d, H_q*d_v)                   */
    /* FFN */
    int is_moe;
    dsc_mlp dense;             /* dense FFN (ff = intermediate_size)           */
    dsc_mlp shared;            /* MoE shared experts, ff = n_shared * moe_ff; unused if 0 */
    dsc_wmat router;           /* (E, d)                                       */
    dsc_wmat router_bias;      /* (E) e_score_correction_bias, noaux_tc only   */
    dsc_mlp *experts;          /* [E], ff = moe_intermediate_size              */
} dsc_layer;

/* One MTP module (spec §6): model.layers.{L + i}.* */
typedef struct {
    dsc_layer ly;              /* its decoder block (MLA, DSA indexer, FFN/MoE) */
    dsc_wmat enorm, hnorm;     /* (d) RMSNorm of the embedding / the hidden     */
    dsc_wmat eh;               /* (d, 2d) eh_proj over [enorm(e) ; hnorm(h)]    */
    dsc_wmat head_norm;        /* (d) shared_head.norm before the shared head   */
} dsc_mtp;

struct dsc_model {
    dsc_config cfg;
    dsc_st_set *st;            /* owns the mappings                            */
    dsc_wmat embed;            /* (V, d)                                       */
    dsc_wmat final_norm;       /* (d)                                          */
    dsc_wmat lm_head;          /* (V, d)  = embed when tied                    */
    dsc_layer *layers;         /* [n_layers]                                   */
    dsc_mlp *expert_pool;      /* one allocation for every layer's experts     */
    dsc_mtp *mtp;              /* [n_mtp] MTP modules, when the files hold them */
    dsc_mlp *mtp_expert_pool;  /* their experts                                */
    int64_t n_mtp;
    dsc_model_info info;
};

/* The bound matrix of an NSA slot of a layer (o is ly->o). */
dsc_wmat *dsc_nsa_slot(dsc_layer *ly, int slot);

/* weights.c: bind every tensor of the model from the opened set. */
dsc_status dsc_weights_bind(dsc_model_t *m, dsc_err *err);

/* Work buffers of one context, carved from one allocation (forward.c). */
typedef struct {
    float *x;        /* (B, d) residual stream                     */
    float *xn;       /* (B, d) normed input of a block             */
    float *qa;       /* (B, dq)                                    */
    float *q;        /* (B, H*dqk) per head [q_nope (dn) ; q_pe (dr)] */
    float *kva;      /* (B, dc + dr)                               */
    float *attn;     /* (B, H*dv) concatenated head outputs        */
    float *ffn_g;    /* (B, ff_max)                                */
    float *ffn_u;    /* (B, ff_max)                                */
    float *y;        /* (B, d) block output before the residual add */
    float *ye;       /* (B, d) one expert's output rows            */
    float *xe;       /* (B, d) one expert's gathered input rows    */
    float *router;   /* (B, E) affinities                          */
    float *sel_score;/* (B, E) selection scores (biased / masked)  */
    int32_t *sel_idx;/* (B, K) chosen experts per token            */
    float *sel_w;    /* (B, K) gate weights of the chosen experts  */
    int32_t *tok_of; /* (E, B) tokens routed to each expert        */
    float *tok_w;    /* (E, B) their gate weights                  */
    int64_t *n_tok;  /* (E)                                        */
    float *kvb;      /* (H*(dn+dv), dc) dequantised kv_b of one layer, when not F32 */
    float *rope_cos; /* (n_ctx, dr/2)                              */
    float *rope_sin; /* (n_ctx, dr/2)                              */
    float *head_ws;  /* per thread: naive attention scratch, head_ws_floats each */
    int64_t head_ws_floats;
    float *group_ws; /* (n_group) group scores of one token        */
    float *logits;   /* (V) last-token logits for dsc_generate      */
    /* DSA */
    float *idx_q;    /* (B, H_I*D_I) indexer queries (roped)        */
    float *idx_k;    /* (B, D_I) new indexer keys before caching    */
    float *idx_w;    /* (B, H_I) per-head weights, scaled            */
    int32_t *sel;    /* (B, topk) selected key positions per query  */
    int64_t *n_sel;  /* (B) how many of sel are used                */
    float *qfull;    /* (QB, H, dc+dr) absorbed queries [q_lat ; q_pe] */
    float *olat;     /* (QB, H, dc) latent attention outputs        */
    float *mqa_s;    /* (mqa_rows*H, n_ctx) absorbed attention scores */
    int64_t mqa_rows;
    float *gather;   /* (topk, dc+dr) selected cache rows           */
    float *sscore;   /* (H, topk) sparse attention scores           */
    float *iscore;   /* (QB, n_ctx) indexer scores I(t, s)          */
    float *dsa_ws;   /* per thread: dsa_ws_floats                   */
    int64_t dsa_ws_floats;
    int32_t *tokens; /* (n_ctx) ids at each cached position         */
    /* NSA (attention_type "nsa"; all NULL otherwise) */
    float *nsa_q;    /* (B, H_q*d_k) queries, roped                   */
    float *nsa_k[3]; /* (B, H_kv*d_k) keys per branch, roped; [0] only when shared_kv */
    float *nsa_v[3]; /* (B, H_kv*d_v) values per branch               */
    float *nsa_g;    /* (B, 3*H_q) gates, sigmoid applied             */
    float *nsa_o;    /* (B, H_q*d_v) operator output                  */
    float *nsa_phi;  /* phi's parameters as fp32 where stored in another dtype, per
                        layer (dsc_nsa_phi_floats each): pe_k, w1_k, w2_k, pe_v,
                        w1_v, w2_v back to back */
    void *nsa_prefill;    /* NSA prefill scratch (nsa_prefill_bytes)             */
    size_t nsa_prefill_bytes;
} dsc_work;

/* Speculative decoding state of a context (gen/spec.c). Positions
   [mtp_n, mtp_n + n_h) of the main model have their final normed hidden
   states in h (rows), waiting for the MTP module: the module's row for
   position p needs the token at p + 1. */
typedef struct {
    int enabled;     /* spec mode set and the model has an MTP module      */
    int draft_n;     /* tokens drafted per step                            */
    int64_t mtp_n;   /* MTP cache rows valid: positions 0..mtp_n-1          */
    int64_t n_h;     /* rows of h                                          */
    int64_t h_cap;   /* capacity of h in rows                              */
    float *h;        /* (h_cap, d) main hidden states after the final norm */
    float *cat;      /* (n_batch, 2d) [enorm(e) ; hnorm(h)]                */
    float *g;        /* (d) the module's last output hidden (recursion)    */
    float *logits;   /* (draft_n + 1, V) verify logits                     */
    float *qlogits;  /* (draft_n, V) draft logits                          */
    int32_t *q_ids;  /* (draft_n, V) draft candidates (sampling)           */
    float *q_p;      /* (draft_n, V) their probabilities                   */
    int64_t *q_n;    /* (draft_n) candidate counts                         */
    int32_t *p_ids;  /* (V) main candidates                                */
    float *p_p;      /* (V) their probabilities                            */
    float *dense;    /* (V) scratch, zero between uses                     */
    int32_t *next;   /* (h_cap) next ids of the rows the module runs on     */
    char note[160];  /* why speculation is (not) used                      */
} dsc_spec;

struct dsc_ctx {
    const dsc_model_t *m;
    dsc_ctx_params p;
    int n_threads;
    dsc_kctx *k;
    float *cache;    /* (L, n_ctx, dc + dr) normed latent ; rotated k_pe */
    void *index_cache; /* DSA: (L, n_ctx) keys of D_I in p.index_cache's format */
    int64_t cache_bytes;
    /* NSA: one decode state per layer (f32, capacity n_ctx), the structs
       and their buffers carved from the one block nsa_mem */
    dsc_nsa_config nsa;
    dsc_nsa_decode_f32 *nsa_st;  /* [num_hidden_layers]              */
    void *nsa_mem;
    void *work_mem;
    int64_t work_bytes;
    dsc_work w;
    int64_t n_past;  /* positions 0..n_past-1 are in the cache     */
    int force_sparse;/* tests: DSA path even when it keeps every key */
    /* tests: when dbg_scores is set, the indexer copies layer dbg_layer's
       scores I(t, .) (rows of n_ctx, -inf where masked) and selections (rows
       of index_topk, -1 padded) of each query of the call, by call index t */
    int64_t dbg_layer;
    float *dbg_scores;
    int32_t *dbg_sel;
    int32_t pending; /* sampled but not yet fed (-1: none)         */
    int64_t experts_touched; /* distinct routed experts per MoE layer call, summed */
    dsc_spec spec;
};

/* forward.c: the checks of a forward call at pos0 (DSC_ERR_ARG). */
dsc_status dsc_forward_check(const dsc_ctx_t *c, const int32_t *ids, int64_t n, int64_t pos0,
                             dsc_err *err);
/* One decoder block on the n rows of w->x, in place; attention over cache
   layer l (l >= num_hidden_layers: an MTP module's cache). */
void dsc_block_forward(dsc_ctx_t *c, const dsc_layer *ly, int64_t l, int64_t n, int64_t pos0);
/* The main model on n tokens (checked as dsc_forward), leaving the final
   hidden states after model.norm in hn (n, d). */
dsc_status dsc_forward_hidden(dsc_ctx_t *c, const int32_t *ids, int64_t n, int64_t pos0,
                              float *hn, dsc_err *err);

/* mla.c: attention block for tokens pos0..pos0+n-1; reads w->xn, writes w->y. */
void dsc_mla_forward(dsc_ctx_t *c, const dsc_layer *ly, int64_t l, int64_t n, int64_t pos0);
/* nsa_attn.c: NSA in place of MLA (attention_type "nsa"), the same contract:
   tokens pos0..pos0+n-1 of layer l, reads w->xn, writes w->y. A pos0 below
   the layer state's length first truncates the state to pos0 (rollback). */
void dsc_nsa_attn_forward(dsc_ctx_t *c, const dsc_layer *ly, int64_t l, int64_t n, int64_t pos0);
/* Floats of w->nsa_phi one layer needs (0 when every phi tensor is F32 or
   the compression is the mean); w->nsa_phi holds every layer's, filled
   once by dsc_nsa_phi_load when the context is made (not per token). */
int64_t dsc_nsa_phi_floats(const dsc_model_t *m);
void dsc_nsa_phi_load(dsc_ctx_t *c);
/* Scratch floats one naive-attention thread needs (dsc_work.head_ws). */
int64_t dsc_mla_head_ws_floats(const dsc_config *cfg, int64_t n_ctx, int64_t n_batch);
/* Query rows per absorbed (MQA-form) attention block. */
int64_t dsc_mla_mqa_rows(const dsc_config *cfg, int64_t n_batch);
/* Absorbed queries [q_nope_i W^UK_i ; q_pe_i] of rows [t0, t0+rows) into
   w->qfull (rows, H, dc+dr), and outputs W^UV_i o_lat_i from w->olat
   (rows, H, dc) into w->attn. kvb: kv_b_proj as fp32, or NULL to apply it
   from its stored dtype. Shared by dense absorbed MLA and DSA. */
void dsc_mla_absorb_q(dsc_ctx_t *c, const dsc_layer *ly, const float *kvb, int64_t t0,
                      int64_t rows);
void dsc_mla_absorb_out(dsc_ctx_t *c, const dsc_layer *ly, const float *kvb, int64_t t0,
                        int64_t rows);

/* dsa.c: DeepSeek Sparse Attention. dsc_dsa_attend replaces the dense head
   loop: indexer queries, scores, top-k, then sparse absorbed attention over
   the selected latent rows into w->attn.
   kvb: kv_b_proj as fp32, or NULL to stream it from its stored dtype. */
/* Whether some query of this call sees more than index_topk keys (else the
   selection keeps everything and dense attention is used, identically). */
int dsc_dsa_sparse(const dsc_ctx_t *c, int64_t n, int64_t pos0);
/* Indexer keys of the n new tokens into the layer's key cache (for every
   call of a DSA context, so that later calls can select among them; a
   context made with p.dense has no indexer cache and never calls this). */
void dsc_dsa_keys(dsc_ctx_t *c, const dsc_layer *ly, int64_t l, int64_t n, int64_t pos0);
/* Per-thread scratch floats of the indexer (dsc_work.dsa_ws). */
int64_t dsc_dsa_ws_floats(const dsc_config *cf, int64_t n_ctx);
void dsc_dsa_attend(dsc_ctx_t *c, const dsc_layer *ly, int64_t l, int64_t n, int64_t pos0,
                    const float *kvb);
/* The official FP8 scoring pieces (exposed for tests): the orthonormal
   Sylvester Hadamard transform of n = 2^m values, in place, and the FP8
   block scale max(amax, 1e-4)/448 (rounded up to 2^e when ue8m0). */
void dsc_dsa_hadamard(float *v, int64_t n);
float dsc_dsa_fp8_scale(const float *v, int64_t n, int ue8m0);
/* Bytes of one cached indexer key in the context's format. */
int64_t dsc_dsa_key_bytes(const dsc_config *cf, dsc_index_cache_type t);
/* The n consecutive cached keys at rows (of d dims, format t) as fp32 rows
   (n, d): an fp32 cache's rows themselves (scored in place, no copy), else
   BF16 / FP8 decoded into scratch (n * d floats), which is returned. */
const float *dsc_dsa_block_keys(dsc_index_cache_type t, const unsigned char *rows, int64_t n,
                               int64_t d, float *scratch);
/* Query rows per sparse-attention block (sizes qfull/olat). */
#define DSC_DSA_QB 16

/* moe.c: FFN block (dense or MoE); reads w->xn, writes w->y. */
void dsc_ffn_forward(dsc_ctx_t *c, const dsc_layer *ly, int64_t n);
/* Routing for n tokens: from router affinities, fill sel_idx / sel_w.
   Exposed for the unit test of the -inf group rule. */
void dsc_moe_route(const dsc_config *cfg, const float *logits, const float *bias,
                   int64_t n, float *scores, float *sel_score, float *group_ws,
                   int32_t *sel_idx, float *sel_w);

#endif
