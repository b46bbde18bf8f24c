/*
 * nsa_test.h - what the NSA test suites share: phi's six random parameter
 * tensors (MLP compression), drawn in one order with the scales that keep
 * the compressed keys O(1), so every suite tests the same kind of data.
 */
#ifndef DSC_TESTS_NSA_TEST_H
#define DSC_TESTS_NSA_TEST_H

#include <math.h>

#include "nsa/nsa.h"
#include "test.h"

/* par[i] (and n_par[i] when not NULL): pe_k, w1_k, w2_k, pe_v, w1_v, w2_v of
   sizes sz, normal with std 0.5 (pe), 1/sqrt(fan-in) (w1, w2), from r. */
static inline void t_nsa_phi_rnd(t_pool *pl, t_rng *r, const dsc_nsa_config *c,
                                 const dsc_nsa_sizes *sz, double *par[6], int64_t n_par[6]) {
    int64_t m = c->phi_hidden;
    const int64_t cnt[6] = {sz->pe_k, sz->w1_k, sz->w2_k, sz->pe_v, sz->w1_v, sz->w2_v};
    const double sc[6] = {0.5, 1.0 / sqrt((double)(c->l * c->d_k)), 1.0 / sqrt((double)m),
                          0.5, 1.0 / sqrt((double)(c->l * c->d_v)), 1.0 / sqrt((double)m)};
    for (int i = 0; i < 6; i++) {
        if (n_par) n_par[i] = cnt[i];
        par[i] = t_rnd(pl, r, cnt[i], sc[i]);
    }
}

#endif
