/*
 * kctx.c - the kernel context (thread count, per-thread weight-panel
 * scratch, chosen SIMD variant) and the run-time ISA choice.
 *
 * The ISA is chosen in dsc_kctx_new from __builtin_cpu_supports (which also
 * checks that the OS saves the wide registers) and stored in the context;
 * nothing is cached in globals.
 */
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "kernels/cpu/kcpu.h"
#include "util/util.h"

/* Rows of a dequantized weight panel (a multiple of the 16-row packing
   group): one FP8 scale block, 128 x cols fp32 per thread (1 MiB at 2048
   columns, 9 MiB at V3's widest 18432). */
#define PANEL_ROWS 128

/* Below this many multiply-adds per thread, another thread costs more than
   it saves (fork/join is a few microseconds, ~10^5 multiply-adds). */
#define MIN_WORK_PER_THREAD 65536.0

int dsc_simd_supported(const dsc_simd_ops *ops) {
    if (ops == &dsc_simd_scalar) return 1;
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
               __builtin_cpu_supports("f16c");
    if (ops == &dsc_simd_avx2) return avx2;
    if (ops == &dsc_simd_avx512)
        return avx2 && __builtin_cpu_supports("avx512f") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx512dq");
    return 0;
}

const dsc_simd_ops *dsc_simd_best(void) {
    if (dsc_simd_supported(&dsc_simd_avx512)) return &dsc_simd_avx512;
    if (dsc_simd_supported(&dsc_simd_avx2)) return &dsc_simd_avx2;
    return &dsc_simd_scalar;
}

const char *dsc_kernels_simd_name(void) { return dsc_simd_best()->name; }

dsc_status dsc_kctx_new(int n_threads, int64_t max_cols, dsc_kctx **out, dsc_err *err) {
    *out = NULL;
    if (max_cols < 0)
        return dsc_err_set(err, DSC_ERR_ARG, "kernel context: max_cols %lld < 0",
                           (long long)max_cols);
    if (n_threads <= 0) {
#ifdef _OPENMP
        n_threads = omp_get_max_threads();
#else
        n_threads = 1;
#endif
    }
    dsc_kctx *k = calloc(1, sizeof *k);
    if (!k) return dsc_err_set(err, DSC_ERR_OOM, "kernel context: out of memory");
    k->n_threads = n_threads;
    k->max_cols = max_cols;
    k->ops = dsc_simd_best();
    k->panel_rows = PANEL_ROWS;
    size_t per = 0, total = 0, bytes = 0;
    if (!dsc_mul_ok((size_t)PANEL_ROWS, (size_t)max_cols, &per) ||
        !dsc_mul_ok(per, (size_t)n_threads, &total) ||
        !dsc_mul_ok(total, sizeof(float), &bytes) || bytes > (size_t)INT64_MAX / 2) {
        free(k);
        return dsc_err_set(err, DSC_ERR_ARG, "kernel context: %d threads x %lld columns is too large",
                           n_threads, (long long)max_cols);
    }
    k->panel_floats = (int64_t)per;
    if (bytes > 0) {
        /* aligned_alloc wants a multiple of the alignment */
        k->scratch = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
        if (!k->scratch) {
            free(k);
            return dsc_err_set(err, DSC_ERR_OOM,
                               "kernel context: cannot allocate %zu bytes of panel scratch", bytes);
        }
    }
    *out = k;
    return DSC_OK;
}

void dsc_kctx_free(dsc_kctx *k) {
    if (!k) return;
    free(k->scratch);
    free(k);
}

int dsc_kctx_threads(const dsc_kctx *k) { return k->n_threads; }

int64_t dsc_kctx_bytes(const dsc_kctx *k) {
    return (int64_t)sizeof *k + k->panel_floats * (int64_t)k->n_threads * (int64_t)sizeof(float);
}

const char *dsc_kctx_simd_name(const dsc_kctx *k) { return k->ops->name; }

dsc_status dsc_kctx_set_simd(dsc_kctx *k, const char *name) {
    const dsc_simd_ops *all[] = {&dsc_simd_scalar, &dsc_simd_avx2, &dsc_simd_avx512};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        if (strcmp(all[i]->name, name) != 0) continue;
        if (!dsc_simd_supported(all[i])) return DSC_ERR_UNSUPPORTED;
        k->ops = all[i];
        return DSC_OK;
    }
    return DSC_ERR_ARG;
}

int dsc_kctx_threads_for(const dsc_kctx *k, double work) {
    int nt = k ? k->n_threads : 1;
    double most = work / MIN_WORK_PER_THREAD;
    if (most < 1.0) most = 1.0;
    if ((double)nt > most) nt = (int)most;
    return nt;
}

void dsc_kcpu_split(int64_t n, int nt, int t, int64_t align, int64_t *lo, int64_t *hi) {
    int64_t a = n * t / nt, b = n * (t + 1) / nt;
    a -= a % align;
    b = t == nt - 1 ? n : b - b % align;
    *lo = a;
    *hi = b;
}
