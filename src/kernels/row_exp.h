/*
 * row_exp.h - the core of a numerically stable softmax row, shared by the
 * fp32 attention kernels (train/tk.c, train/idx_target.c, nsa/nsa_fast.c,
 * nsa/nsa_decode_fast.c): x[0, n) (n >= 1) becomes exp(scale x - max) with
 * dsc_k_exp, and the sum of those, in double over util/rows.h's fixed eight
 * partials, is returned; *mx gets max(scale x). So the row's log-sum-exp is
 * mx + log(sum) and its softmax x / sum. static inline, for files built with
 * -O3 and DSC_VEC_CLONES: each ISA variant inlines its own copy.
 */
#ifndef DSC_KERNELS_ROW_EXP_H
#define DSC_KERNELS_ROW_EXP_H

#include <stdint.h>

#include "kernels/kernels.h"
#include "util/rows.h"

static inline double dsc_row_exp_sum(float *x, int64_t n, float scale, float *mx) {
    for (int64_t j = 0; j < n; j++) x[j] *= scale;
    float m = dsc_row_max(x, n);
    for (int64_t j = 0; j < n; j++) x[j] -= m;
    dsc_k_exp(NULL, x, x, n);
    *mx = m;
    return dsc_row_sum(x, n);
}

#endif
