/*
 * v16.h - sixteen fp32 lanes as a GCC vector type, for the hand-blocked
 * row kernels of files built with -O3 and DSC_VEC_CLONES (one AVX-512
 * register, two AVX ones, four SSE ones on the baseline clone), and its
 * unaligned loads and stores through memcpy. They are macros: a vector
 * argument or return value would change the ABI of the baseline clone.
 * Used by train/tk_sparse.c and nsa/nsa_slc.c.
 */
#ifndef DSC_KERNELS_V16_H
#define DSC_KERNELS_V16_H

#include <stdint.h>
#include <string.h>

#define DSC_V16_LANES 16

typedef float v16f __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));

/* x = p[0 .. 16); p[0 .. 16) = x */
#define LD16(x, p) memcpy(&(x), (p), sizeof(v16f))
#define ST16(p, x) memcpy((p), &(x), sizeof(v16f))
/* x = p[0 .. w) zero-padded to 16 lanes; p[0 .. w) = x's first w (w < 16) */
#define LD16P(x, p, w)                                          \
    do {                                                        \
        float t_[DSC_V16_LANES] = {0};                          \
        memcpy(t_, (p), (size_t)(w) * sizeof *t_);              \
        memcpy(&(x), t_, sizeof(v16f));                         \
    } while (0)
#define ST16P(p, x, w) memcpy((p), &(x), (size_t)(w) * sizeof(float))
/* w <= 16 floats: the whole-vector form when w is 16 */
#define LDW(x, p, w)                                            \
    do {                                                        \
        if ((w) == DSC_V16_LANES)                               \
            LD16(x, p);                                         \
        else                                                    \
            LD16P(x, p, w);                                     \
    } while (0)
#define STW(p, x, w)                                            \
    do {                                                        \
        if ((w) == DSC_V16_LANES)                               \
            ST16(p, x);                                         \
        else                                                    \
            ST16P(p, x, w);                                     \
    } while (0)

#endif
