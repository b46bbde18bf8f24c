/*
 * util.h - small internal helpers shared by every part of libdsc:
 * error reporting into a caller's dsc_err, the always-on internal invariant
 * check, overflow-checked size arithmetic, and the one map from random bits
 * to a uniform double.
 *
 * DSC_CHECK is for invariants of our own code only (a bug if it fires), never
 * for validating files or user input: those return a dsc_status.
 */
#ifndef DSC_UTIL_H
#define DSC_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "dsc.h"

/* Fill err (if not NULL) with code and a printf-style message; returns code. */
dsc_status dsc_err_set(dsc_err *err, dsc_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define DSC_CHECK(cond)                                                        \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "%s:%d: internal check failed: %s\n", __FILE__,    \
                    __LINE__, #cond);                                          \
            abort();                                                           \
        }                                                                      \
    } while (0)

/* Return from the calling function when x is not DSC_OK. */
#define DSC_TRY(x)                                                             \
    do {                                                                       \
        dsc_status s_ = (x);                                                   \
        if (s_ != DSC_OK) return s_;                                           \
    } while (0)

/* a*b and a+b on sizes; return 0 and leave *out alone on overflow. */
static inline int dsc_mul_ok(size_t a, size_t b, size_t *out) {
    return !__builtin_mul_overflow(a, b, out);
}
static inline int dsc_add_ok(size_t a, size_t b, size_t *out) {
    return !__builtin_add_overflow(a, b, out);
}

/* The top 53 bits of a 64-bit random word as a double uniform on [0, 1):
   every value k / 2^53, exactly. */
static inline double dsc_unit_from_u64(uint64_t r) {
    return (double)(r >> 11) * 0x1p-53;
}

/* Read a whole file into a malloc'd NUL-terminated buffer (caller frees). */
dsc_status dsc_read_file(const char *path, char **out, size_t *len, dsc_err *err);



/* Index of the calling thread inside an OpenMP team (0 without OpenMP). */
int dsc_thread_id(void);
/* Threads an OpenMP region gets by default (1 without OpenMP). */
int dsc_max_threads(void);

/*
 * fn(arg, i) for every i in [0, n), on up to nt threads. With nt <= 1 (or
 * n <= 1) it is a plain loop on the calling thread: libgomp makes a team
 * even for one thread, and that costs a futex call and a team allocation
 * per region (~0.4 us; a decode step of the demo model runs ~90 regions,
 * 40% of its time). Schedules, as OpenMP's:
 *   DSC_SCHED_BLOCKS  contiguous blocks, one per thread   (schedule(static))
 *   DSC_SCHED_CYCLIC  i on thread i mod nt; with n == nt, part i on thread
 *                     i, so part i may own scratch slot i (schedule(static, 1))
 *   DSC_SCHED_DYNAMIC one i at a time to whichever thread is free
 */
typedef enum { DSC_SCHED_BLOCKS, DSC_SCHED_CYCLIC, DSC_SCHED_DYNAMIC } dsc_sched;
typedef void (*dsc_item_fn)(void *arg, int64_t i);
void dsc_parallel_for(int nt, int64_t n, dsc_sched sched, dsc_item_fn fn, void *arg);
/*
 * DSC_VEC_CLONES marks a function of plain-C loops that the vectoriser
 * turns into SIMD code (its file built with -O3): with GCC on x86-64 it is
 * compiled for AVX-512 (x86-64-v4), AVX2 + FMA (x86-64-v3) and the
 * baseline, and the loader picks the one this CPU runs (an ifunc). ISO C
 * mode keeps fp-contract off, so the variants round every operation alike;
 * they differ only where a loop keeps several partial sums per lane width.
 * Off under AddressSanitizer (ifuncs resolve before it is up) and with
 * DSC_NO_CLONES.
 */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && \
    !defined(__SANITIZE_ADDRESS__) && !defined(DSC_NO_CLONES)
#define DSC_VEC_CLONES \
    __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define DSC_VEC_CLONES
#endif

#endif
