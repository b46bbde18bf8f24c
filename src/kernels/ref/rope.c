/*
 * rope.c - rotary position embedding: frequencies (plain and YaRN), cos/sin
 * tables, and the rotation in both pair layouts.
 *
 * YaRN follows spec/deepseek.md section 3.2, which matches both the official
 * DeepSeek demo and transformers' _compute_yarn_parameters (truncate = true):
 *   f_i  = theta^(-2i/D), i = 0 .. D/2-1
 *   cd(r) = D * ln(L0 / (2 pi r)) / (2 ln theta)
 *   low  = max(floor(cd(beta_fast)), 0), high = min(ceil(cd(beta_slow)), D-1)
 *   ramp r_i = clamp((i - low) / (high - low), 0, 1)   (high += 0.001 if equal)
 *   f'_i = f_i * (1 - r_i) + (f_i / factor) * r_i
 * transformers writes the same blend as interpolation * (1 - e) +
 * extrapolation * e with e = 1 - ramp. So low-index (high-frequency) pairs,
 * r_i = 0, keep f_i; pairs past `high` are fully divided by the factor.
 * Everything is computed in double; only the tables are stored as fp32.
 */
#include <math.h>

#include "kernels/kernels.h"

static const double k_pi = 3.14159265358979323846;

/* The (fractional) pair-dimension index at which a frequency completes
   `rot` full rotations over the original context L0. */
static double correction_dim(double rot, double d, double theta, double l0) {
    return d * log(l0 / (2.0 * k_pi * rot)) / (2.0 * log(theta));
}

/* Frequency of pair i. For YaRN, [low, high] is the ramp range computed
   once by ramp_range(). */
static double pair_freq(const dsc_rope_params *p, int64_t i, double low, double high) {
    double f = pow(p->theta, -2.0 * (double)i / (double)p->dim);
    if (!p->yarn) return f;
    double r = ((double)i - low) / (high - low);
    r = r < 0.0 ? 0.0 : r > 1.0 ? 1.0 : r;
    return f * (1.0 - r) + (f / p->factor) * r;
}

static void ramp_range(const dsc_rope_params *p, double *low, double *high) {
    *low = *high = 0.0;
    if (!p->yarn) return;
    const double d = (double)p->dim, l0 = (double)p->original_max_pos;
    double lo = floor(correction_dim(p->beta_fast, d, p->theta, l0));
    double hi = ceil(correction_dim(p->beta_slow, d, p->theta, l0));
    if (lo < 0.0) lo = 0.0;
    if (hi > d - 1.0) hi = d - 1.0;
    if (lo == hi) hi += 0.001; /* avoid 0/0 in the ramp */
    *low = lo;
    *high = hi;
}

void dsc_rope_inv_freq(const dsc_rope_params *p, double *inv_freq) {
    double low, high;
    ramp_range(p, &low, &high);
    for (int64_t i = 0; i < p->dim / 2; i++) inv_freq[i] = pair_freq(p, i, low, high);
}

void dsc_rope_tables(const dsc_rope_params *p, int64_t n_pos, float *cos_t, float *sin_t) {
    const int64_t half = p->dim / 2;
    double low, high;
    ramp_range(p, &low, &high);
    for (int64_t i = 0; i < half; i++) {
        double f = pair_freq(p, i, low, high);
        for (int64_t pos = 0; pos < n_pos; pos++) {
            double a = (double)pos * f;
            size_t at = (size_t)pos * (size_t)half + (size_t)i;
            cos_t[at] = (float)(cos(a) * p->attention_factor);
            sin_t[at] = (float)(sin(a) * p->attention_factor);
        }
    }
}

void dsc_ref_rope(float *x, int64_t d, const float *cos_row, const float *sin_row,
                  int interleaved) {
    const int64_t half = d / 2;
    for (int64_t i = 0; i < half; i++) {
        int64_t a = interleaved ? 2 * i : i;
        int64_t b = interleaved ? 2 * i + 1 : i + half;
        double x0 = x[a], x1 = x[b], c = cos_row[i], s = sin_row[i];
        x[a] = (float)(x0 * c - x1 * s);
        x[b] = (float)(x0 * s + x1 * c);
    }
}
