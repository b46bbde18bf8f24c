/*
 * gen.h - private to src/gen/: what generate.c and spec.c share.
 */
#ifndef DSC_GEN_GEN_H
#define DSC_GEN_GEN_H

#include "model/model.h"

double dsc_gen_now(void);

/* The argument checks of dsc_generate (DSC_ERR_ARG; nothing is fed).
   n_in: prompt ids plus the pending one. */
dsc_status dsc_gen_check(const dsc_ctx_t *c, const dsc_sampler_t *s, const int32_t *prompt,
                         int64_t n_prompt, int64_t n_in, dsc_err *err);

/* dsc_generate on a context with speculation enabled (spec.c); same
   contract. */
dsc_status dsc_spec_generate(dsc_ctx_t *c, dsc_sampler_t *s, const int32_t *prompt,
                             int64_t n_prompt, int64_t n_predict, int32_t eos_id,
                             dsc_token_cb on_token, void *user, dsc_gen_stats *stats,
                             dsc_err *err);

/* Tests: the MTP module's logits for rows 0..n-2 of ids (row p reads the
   main model's hidden state at p and ids[p+1], and predicts ids[p+2]),
   computed one row at a time after a fresh prefill of the n ids (the
   context is reset; 2 <= n <= n_batch). logits: (n-1, V). */
dsc_status dsc_spec_mtp_logits(dsc_ctx_t *c, const int32_t *ids, int64_t n, float *logits,
                               dsc_err *err);

#endif
