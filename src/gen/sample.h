/*
 * sample.h - private to libdsc: the sampler's distribution and RNG, for
 * speculative decoding (gen/spec.c), which needs the distribution a token
 * is drawn from, not only a draw.
 */
#ifndef DSC_GEN_SAMPLE_H
#define DSC_GEN_SAMPLE_H

#include "dsc.h"

/*
 * The distribution dsc_sampler_sample would draw from for these logits and
 * history (steps 1-7 of sample.c; logits are modified in place the same
 * way): its support into ids and the probabilities into probs (both room
 * for vocab_size), sorted by decreasing probability; returns the count.
 * Greedy samplers (temp <= 0), and logits with nothing finite, give one id
 * of probability 1. Draws nothing from the RNG.
 */
int64_t dsc_sampler_dist(dsc_sampler_t *s, float *logits, const int32_t *history,
                         int64_t n_history, int32_t *ids, float *probs);
/* Whether the sampler always takes the argmax (temp <= 0). */
int dsc_sampler_is_greedy(const dsc_sampler_t *s);
/* The next uniform number in [0, 1) of the sampler's RNG. */
double dsc_sampler_uniform(dsc_sampler_t *s);
/* One id drawn from weights probs (n > 0, need not sum to 1) by the RNG. */
int32_t dsc_sampler_draw(dsc_sampler_t *s, const int32_t *ids, const float *probs, int64_t n);

#endif
