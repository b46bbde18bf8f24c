/*
 * model_train.h - a trainable fp32 copy of a DeepSeek-V3-style model, and
 * its forward + backward for the next-token loss.
 *
 * dsc_train_model_new copies every weight the inference engine binds
 * (dequantising BF16 / F16 / FP8 block-scaled tensors) into one fp32
 * parameter block, makes one gradient block of the same layout, and lists
 * the tensors as dsc_param entries under their checkpoint names (for AdamW
 * and dsc_ckpt_save). Activations for at most (B, T) tokens are allocated
 * once, there too; a step allocates nothing.
 *
 * The forward is the model of spec §2 and §5, naive MLA (per-head K/V from
 * kv_b_proj), composed from the training ops of train/ops.h:
 *   h = Emb(x); per layer: h += MLA(RMSNorm(h)); h += FFN(RMSNorm(h))
 *   logits = lm_head(RMSNorm(h)); loss = mean CE(logits[:, t], x[:, t+1])
 * FFN is dense SwiGLU or DeepSeekMoE: shared experts + routed experts chosen
 * by dsc_moe_route (the inference routing, with V3's correction bias and
 * group limits). The choice of experts is not differentiated; the chosen
 * experts' gate weights are (dsc_op_gate_bwd into the router).
 *
 * Optional terms: the sequence-wise balance loss (dsc_train_set_balance_alpha)
 * and, for a checkpoint with num_nextn_predict_layers = 1, the MTP module
 * (spec §6, D = 1; see dsc_train_set_mtp_weight).
 *
 * Speed: the linears run on the fp32 GEMMs, attention on GEMM tiles, norms,
 * SwiGLU and the loss on the SIMD kernels of tk.h (each tested against its
 * ops.h reference). The attention of a layer sits behind one seam
 * (tm_attn_ops, tm_impl.h) for DSA / NSA to plug into.
 * DSA (deepseek_v32): the dense warm-up's form (attn_dsa.c). Attention is
 * dense MLA; each layer's lightning indexer is trained by a KL loss towards
 * MLA's head-summed attention on detached inputs (see
 * dsc_train_set_dsa_kl_weight); dsc_train_set_dsa_sparse switches to the
 * sparse stage (MLA over the indexer's top-k). What this is not (yet): MTP
 * with D > 1 (refused).
 */
#ifndef DSC_TRAIN_MODEL_TRAIN_H
#define DSC_TRAIN_MODEL_TRAIN_H

#include <stdint.h>

#include "dsc.h"
#include "train/optim.h"

typedef struct dsc_train_model dsc_train_model_t;

/*
 * Copy the weights of m into a new trainable model whose activations hold
 * up to max_b sequences of up to max_t input tokens. m is only read during
 * the call and may be freed afterwards. DSC_ERR_ARG for max_b or max_t < 1;
 * DSC_ERR_CONFIG for a DSA model without q_lora_rank, index_n_heads or with
 * index_head_dim < qk_rope_head_dim; DSC_ERR_OOM. An MTP
 * module in m's checkpoint is ignored (not loaded, not trained, not listed).
 */
dsc_status dsc_train_model_new(const dsc_model_t *m, int64_t max_b, int64_t max_t,
                               dsc_train_model_t **out, dsc_err *err);

/*
 * The same plus the MTP module (spec §6, D = 1; see dsc_train_set_mtp_weight)
 * with loss weight mtp_weight (V3: 0.3, later 0.1). m's config must have
 * num_nextn_predict_layers = 1 (0: DSC_ERR_MISSING, > 1: DSC_ERR_UNSUPPORTED).
 * The module model.layers.{L}.* (L = num_hidden_layers; the inference loader
 * skips it) is read from m's safetensors files (DSC_ERR_MISSING /
 * DSC_ERR_SHAPE when a tensor is absent or misshapen; F32/BF16/F16/FP8 as the
 * main weights). Its stored copies model.layers.{L}.embed_tokens.weight and
 * .shared_head.head.weight are not read: the module uses (and adds its
 * gradients into) the main embedding and lm_head.
 */
dsc_status dsc_train_model_new_mtp(const dsc_model_t *m, int64_t max_b, int64_t max_t,
                                   double mtp_weight, dsc_train_model_t **out, dsc_err *err);
void dsc_train_model_free(dsc_train_model_t *tm);

/* The model's configuration (a copy of the source model's). */
const dsc_config *dsc_train_model_config(const dsc_train_model_t *tm);

/*
 * The trainable tensors, in checkpoint order, *n receiving the count. Each
 * entry's data / grad point into the model's two blocks; names are owned by
 * the model. Matrices have decay = 1; norms and the routers'
 * e_score_correction_bias have decay = 0. The correction bias is listed so
 * that checkpoints keep it, but its gradient is always zero (it is moved by
 * the load-balancing update, not by the loss). A tied lm_head is not a
 * separate entry. With MTP, the module's tensors follow the main model's,
 * under their checkpoint names: model.layers.{L}.enorm.weight, .hnorm.weight,
 * .eh_proj.weight (d, 2d), the decoder block's tensors (as a main layer's),
 * .shared_head.norm.weight (the two shared copies are not listed, so a
 * checkpoint saved from the list lacks them). Valid until
 * dsc_train_model_free.
 */
const dsc_param *dsc_train_model_params(const dsc_train_model_t *tm, int64_t *n);

/* The whole parameter / gradient block (*n floats each, same layout). */
float *dsc_train_model_data(dsc_train_model_t *tm, int64_t *n);
float *dsc_train_model_grad(dsc_train_model_t *tm, int64_t *n);

/*
 * One training pass over B sequences of T + 1 tokens (tokens (B, T+1),
 * row-major): the forward over inputs tokens[:, :T], *loss = mean
 * cross-entropy of the predictions against tokens[:, 1:] (targets < 0 are
 * ignored and not counted), then the backward, which first zeroes the
 * gradient block and then writes d loss / d param into it. Deterministic:
 * the same inputs give bit-identical gradients (checked at a fixed thread
 * count).
 * An id of -1 is padding (dsc_data's tail): not counted as a target, fed as
 * id 0 as an input (causal attention: padding at the end of a sequence
 * reaches only later padding).
 * DSC_ERR_ARG when B < 1, T < 1, T > max_t, B*T > max_b*max_t, or an id is
 * outside [0, vocab_size) and not -1.
 */
dsc_status dsc_train_forward_backward(dsc_train_model_t *tm, const int32_t *tokens, int64_t B,
                                      int64_t T, double *loss, dsc_err *err);

/* The forward and the loss only (gradients untouched); same checks. */
dsc_status dsc_train_forward(dsc_train_model_t *tm, const int32_t *tokens, int64_t B,
                             int64_t T, double *loss, dsc_err *err);

/*
 * Of the last forward: the experts chosen for each of its B*T tokens in MoE
 * layer l ((B*T, K) ids, in the order dsc_moe_route ranks them), or NULL
 * for a dense layer or l out of range; and the load, tokens routed to each
 * expert ((L, E) counts, rows of dense layers zero), for the auxiliary-loss-
 * free bias update. With MTP, l = L is the MTP layer (its B*(T-1) tokens)
 * and the load has L + 1 rows (row L zero when the MTP did not run). Valid
 * until the next pass.
 */
const int32_t *dsc_train_model_routing(const dsc_train_model_t *tm, int64_t l);
const int64_t *dsc_train_model_expert_load(const dsc_train_model_t *tm);

/*
 * Sequence-wise balance loss (spec §5.6; V3 eq. 17-20), added to the loss of
 * every following pass with weight alpha (0, the default, turns it off):
 * for each MoE layer and each sequence b of the batch,
 *   f_i = E/(K T) #{t : expert i among the K routed for token t}
 *   P_i = mean_t s_it / sum_j s_jt     (s = sigmoid/softmax of the router
 *                                       logits over all E experts, no bias)
 *   L_b = alpha sum_i f_i P_i;
 * the term is the mean of L_b over the B sequences, summed over the MoE
 * layers of the main model (not the MTP layer). f is the selection actually
 * routed (correction bias, group limits) and is a constant: the gradient
 * flows through P into the router weights and the hidden state.
 */
void dsc_train_set_balance_alpha(dsc_train_model_t *tm, double alpha);

/*
 * The parts of the last forward's loss: the next-token cross-entropy, the
 * balance term (alpha included; 0 when off) and the MTP cross-entropy
 * (unweighted; 0 without MTP). The loss returned is
 * ce + bal + mtp_weight * mtp.
 */
void dsc_train_loss_parts(const dsc_train_model_t *tm, double *ce, double *bal, double *mtp);

/*
 * Multi-token prediction (spec §6, D = 1), for a model made from a
 * checkpoint with an MTP module. For each sequence and i = 0..T-2, with h_i
 * the main model's final hidden state after model.norm:
 *   x_i = eh_proj([enorm(Emb(tok[i+1])) ; hnorm(h_i)])   (embedding first)
 * then the module's decoder block (MLA + FFN/MoE, causal over the T-1
 * positions, RoPE positions 0..T-2), shared_head.norm and the shared
 * lm_head predict tok[i+2]; mtp = mean CE over the counted (B, T-1)
 * targets, and the loss becomes ce + bal + lambda * mtp. lambda is set by
 * dsc_train_model_new_mtp and changed here (e.g. V3's 0.3 -> 0.1); 0 skips
 * the module (no forward, zero gradients for its tensors; no effect without
 * a module). T = 1 has no MTP target (mtp 0).
 * The balance loss does not include the MTP layer; the bias update
 * (dsc_train_update_bias) does.
 */
int dsc_train_model_has_mtp(const dsc_train_model_t *tm);
void dsc_train_set_mtp_weight(dsc_train_model_t *tm, double lambda);

/*
 * Auxiliary-loss-free balancing (V3 §2.1.2; spec §5.5), after a step: for
 * every noaux_tc MoE layer and expert, with load_i the (token, slot) picks
 * of the last forward and mean = sum(load)/E,
 *   b_i <- b_i + gamma * sign(mean - load_i)      (rounded to fp32)
 * so overloaded experts are chosen less (MTP layer included). The bias only selects experts and
 * gets no gradient. gamma 0 disables it.
 */
void dsc_train_update_bias(dsc_train_model_t *tm, float gamma);

/*
 * DSA's dense warm-up (spec §4.6), for a model whose config has index_topk
 * > 0 (deepseek_v32; dsc_train_model_is_dsa). The five indexer tensors of
 * each layer are listed as parameters under the names inference binds
 * (model.layers.{l}.self_attn.indexer.wq_b.weight, .wk.weight,
 * .k_norm.weight, .k_norm.bias, .weights_proj.weight; the LayerNorm's two
 * with decay = 0), after the layer's o_proj. Each layer's forward is dense
 * MLA, then the indexer on the detached normed q latent and layer input
 * (as src/model/dsa.c computes it), whose scores I are trained towards
 * P = MLA's attention probabilities summed over heads, L1-normalised per
 * query:  kl_l = mean over sequences and queries of KL(P_t || softmax I_t).
 * The loss becomes ce + bal + weight * sum_l kl_l (+ MTP); the KL's
 * gradient reaches the indexer tensors only (every other gradient is what
 * it would be without the term, bit for bit). weight defaults to 1; 0 keeps
 * the forward's statistics but adds no loss and no gradient.
 * dsc_train_dsa_stats: of the last forward, the unweighted KL and the recall
 * of the indexer's top-index_topk against P's (idx_ops.h), each averaged
 * over the layers (MTP's included when it ran); 0 for a model without DSA.
 * dsc_train_param_is_indexer: whether a listed tensor is an indexer's.
 */
/*
 * DSA's sparse stage (spec §4.6 step 2; attn_dsa.c), on = 1 (0: back to the
 * dense form above; ignored for a model without DSA). Each layer's forward
 * selects, per query t, the indexer's top-index_topk keys by its causal
 * scores I(t, 0..t) (all of them when t+1 <= index_topk; ties to the lower
 * position, dsc_k_topk_set's rule; not differentiated), and MLA attends over
 * that set only (tk_sparse.h), the same set for every head: all MLA weights
 * get the LM loss's gradient through it. The KL becomes
 * KL(p_{t,S_t} || softmax I(t, S_t)) on the selected set, with p = MLA's
 * (sparse) attention probabilities summed over heads and renormalised; its
 * gradient still reaches only the indexer tensors. The recall reported is
 * the selection's share of the DENSE attention's head-summed mass against
 * the best top-k's (the dense normalisers are recomputed for it).
 */
void dsc_train_set_dsa_sparse(dsc_train_model_t *tm, int on);
int dsc_train_model_is_dsa(const dsc_train_model_t *tm);
void dsc_train_set_dsa_kl_weight(dsc_train_model_t *tm, double weight);
/* The mean indexer KL and recall over the layers of the last forward; the
   recall is NAN when the forward did not compute it (it is a metric that
   costs a dense attention pass in the sparse stage, so it runs only on the
   forwards after dsc_train_set_dsa_recall(tm, 1); on by default). */
void dsc_train_dsa_stats(const dsc_train_model_t *tm, double *kl, double *recall);
void dsc_train_set_dsa_recall(dsc_train_model_t *tm, int on);

/* NSA (attention_type "nsa") models: the selection alignment loss
 * (src/nsa/nsa_align.h). With weight W > 0 every layer adds W x its mean
 * KL between the selected branch's attention mass per selected block and
 * the selection scores (over the free slots of every query and KV head) to
 * the loss; its gradient trains q and the compressed keys. 0 (the default)
 * is off; a no-op on other models. dsc_train_nsa_align_kl: the unweighted
 * KL of the last forward, averaged over the layers (NAN when off). */
int dsc_train_model_is_nsa(const dsc_train_model_t *tm);
void dsc_train_set_nsa_align(dsc_train_model_t *tm, double weight);
double dsc_train_nsa_align_kl(const dsc_train_model_t *tm);
int dsc_train_param_is_indexer(const dsc_param *p);

#endif
