/*
 * ref.c - the scalar reference kernels: the oracle every fast kernel is
 * tested against. Written for obviousness, not speed: plain loops, sums in
 * double, no SIMD, no threads. Not meant for the model's hot path (the
 * exception is dsc_ref_topk, which has no fast twin and is O(n*k)).
 */
#include <math.h>
#include <string.h>

#include "kernels/kernels.h"

/* Columns dequantized at a time: a stack buffer, so the reference, too,
   never allocates. */
#define REF_CHUNK 256

void dsc_ref_matmul(float *y, const float *x, const dsc_wmat *w, int64_t m) {
    const int64_t rows = w->rows, cols = w->cols;
    float wbuf[REF_CHUNK];
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t i = 0; i < m; i++) {
            const float *xi = x + (size_t)i * (size_t)cols;
            double acc = 0.0;
            for (int64_t c0 = 0; c0 < cols; c0 += REF_CHUNK) {
                int64_t n = cols - c0 < REF_CHUNK ? cols - c0 : REF_CHUNK;
                dsc_wmat_row(w, r, c0, n, wbuf);
                for (int64_t c = 0; c < n; c++) acc += (double)xi[c0 + c] * (double)wbuf[c];
            }
            y[(size_t)i * (size_t)rows + (size_t)r] = (float)acc;
        }
    }
}

void dsc_ref_sgemm_nt(int64_t m, int64_t n, int64_t k, const float *a, int64_t lda,
                      const float *b, int64_t ldb, float *c, int64_t ldc, int accumulate) {
    for (int64_t i = 0; i < m; i++) {
        for (int64_t j = 0; j < n; j++) {
            double acc = 0.0;
            for (int64_t p = 0; p < k; p++)
                acc += (double)a[(size_t)i * (size_t)lda + (size_t)p] *
                       (double)b[(size_t)j * (size_t)ldb + (size_t)p];
            float *cij = &c[(size_t)i * (size_t)ldc + (size_t)j];
            *cij = accumulate ? (float)((double)*cij + acc) : (float)acc;
        }
    }
}

void dsc_ref_sgemm_tn(int64_t m, int64_t n, int64_t k, const float *a, int64_t lda,
                      const float *b, int64_t ldb, float *c, int64_t ldc, int accumulate) {
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            double acc = 0.0;
            for (int64_t p = 0; p < k; p++)
                acc += (double)a[(size_t)p * (size_t)lda + (size_t)i] *
                       (double)b[(size_t)p * (size_t)ldb + (size_t)j];
            float *cij = &c[(size_t)i * (size_t)ldc + (size_t)j];
            *cij = accumulate ? (float)((double)*cij + acc) : (float)acc;
        }
}

void dsc_ref_sgemm_nn(int64_t m, int64_t n, int64_t k, const float *a, int64_t lda,
                      const float *b, int64_t ldb, float *c, int64_t ldc, int accumulate) {
    for (int64_t i = 0; i < m; i++) {
        for (int64_t j = 0; j < n; j++) {
            double acc = 0.0;
            for (int64_t p = 0; p < k; p++)
                acc += (double)a[(size_t)i * (size_t)lda + (size_t)p] *
                       (double)b[(size_t)p * (size_t)ldb + (size_t)j];
            float *cij = &c[(size_t)i * (size_t)ldc + (size_t)j];
            *cij = accumulate ? (float)((double)*cij + acc) : (float)acc;
        }
    }
}

/* Norm weights are a vector of d values stored as a 1 x d or a d x 1
   matrix. Both layouts put element i at flat index i, and for FP8 both put
   its scale at scale[i / 128], so one flat read serves both. */
static float vec_get(const dsc_wmat *w, int64_t i) {
    switch (w->dtype) {
    case DSC_F32: return ((const float *)w->data)[i];
    case DSC_BF16: return dsc_bf16_to_f32(((const uint16_t *)w->data)[i]);
    case DSC_F16: return dsc_f16_to_f32(((const uint16_t *)w->data)[i]);
    case DSC_F8_E4M3:
        return dsc_e4m3_to_f32(((const uint8_t *)w->data)[i]) * w->scale[i / DSC_FP8_BLOCK];
    }
    return NAN;
}

void dsc_ref_rmsnorm(float *y, const float *x, const dsc_wmat *w, int64_t n, int64_t d,
                     float eps) {
    for (int64_t r = 0; r < n; r++) {
        const float *xr = x + (size_t)r * (size_t)d;
        float *yr = y + (size_t)r * (size_t)d;
        double ss = 0.0;
        for (int64_t i = 0; i < d; i++) ss += (double)xr[i] * (double)xr[i];
        double inv = 1.0 / sqrt(ss / (double)d + (double)eps);
        /* every x of the row has been read, so y may alias x */
        for (int64_t i = 0; i < d; i++) yr[i] = (float)((double)vec_get(w, i) * (double)xr[i] * inv);
    }
}

void dsc_ref_softmax(float *x, int64_t n, int64_t d) {
    for (int64_t r = 0; r < n; r++) {
        float *xr = x + (size_t)r * (size_t)d;
        float mx = -INFINITY;
        for (int64_t i = 0; i < d; i++)
            if (xr[i] > mx) mx = xr[i];
        if (mx == -INFINITY) {
            /* nothing to attend to: define the row as all zeros, not the
               0/0 = NaN the formula would give */
            for (int64_t i = 0; i < d; i++) xr[i] = 0.0f;
            continue;
        }
        double sum = 0.0;
        for (int64_t i = 0; i < d; i++) sum += exp((double)xr[i] - (double)mx);
        for (int64_t i = 0; i < d; i++) xr[i] = (float)(exp((double)xr[i] - (double)mx) / sum);
    }
}

void dsc_ref_silu_mul(float *out, const float *g, const float *u, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        double gv = g[i];
        out[i] = (float)(gv / (1.0 + exp(-gv)) * (double)u[i]);
    }
}

/* Whether x[a] ranks strictly above x[b]: larger first, NaN below every
   number, ties (and NaN vs NaN) by the lower index. */
static int ranks_above(const float *x, int32_t a, int32_t b) {
    int na = isnan(x[a]), nb = isnan(x[b]);
    if (na != nb) return nb;
    if (!na && x[a] != x[b]) return x[a] > x[b];
    return a < b;
}

void dsc_ref_topk(const float *x, int64_t n, int64_t k, int32_t *idx) {
    if (k <= 0) return;
    /* insertion into a sorted list of the best k seen so far */
    int64_t have = 0;
    for (int64_t i = 0; i < n; i++) {
        int32_t cand = (int32_t)i;
        if (have == k && !ranks_above(x, cand, idx[k - 1])) continue;
        int64_t pos = have < k ? have++ : k - 1;
        while (pos > 0 && ranks_above(x, cand, idx[pos - 1])) {
            idx[pos] = idx[pos - 1];
            pos--;
        }
        idx[pos] = cand;
    }
}
