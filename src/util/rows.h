/*
 * rows.h - the max and the double sum of a row of floats (or doubles), over eight
 * interleaved partials: a single running max or sum is a chain of
 * dependent instructions (4+ cycles each), eight independent chains
 * vectorise and overlap. static inline, for the row loops of files built
 * with -O3 and DSC_VEC_CLONES (train/tk.c, nsa/nsa_fast.c), so each ISA
 * variant inlines its own copy. NaN entries are skipped by the max (they
 * still poison the sum).
 */
#ifndef DSC_UTIL_ROWS_H
#define DSC_UTIL_ROWS_H

#include <math.h>
#include <stdint.h>

static inline float dsc_row_max(const float *x, int64_t n) {
    float m[8] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY,
                  -INFINITY, -INFINITY, -INFINITY, -INFINITY};
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        for (int q = 0; q < 8; q++) m[q] = x[j + q] > m[q] ? x[j + q] : m[q];
    for (; j < n; j++) m[0] = x[j] > m[0] ? x[j] : m[0];
    for (int q = 1; q < 8; q++) m[0] = m[q] > m[0] ? m[q] : m[0];
    return m[0];
}

static inline double dsc_row_sum(const float *x, int64_t n) {
    double s[8] = {0};
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        for (int q = 0; q < 8; q++) s[q] += x[j + q];
    for (; j < n; j++) s[0] += x[j];
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

static inline double dsc_row_sum_d(const double *x, int64_t n) {
    double s[8] = {0};
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        for (int q = 0; q < 8; q++) s[q] += x[j + q];
    for (; j < n; j++) s[0] += x[j];
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

#endif
