/*
 * convert.c - scalar dtype conversions and per-row weight dequantization.
 *
 * Every conversion here is exact in the direction narrow -> f32 (each bf16,
 * f16 and e4m3 value is representable in f32) and rounds to nearest, ties to
 * even, in the direction f32 -> narrow. They work on bit patterns, never on
 * the current FP rounding mode, so they give the same answer everywhere.
 * These are both the oracle for the SIMD paths and the scalar fallback.
 */
#include <math.h>
#include <string.h>

#include "kernels/kernels.h"

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Round a non-negative double holding an exact value to the nearest integer,
   ties to even. Used where the scaled value is exact (a power-of-two scaling
   of a float), so no double rounding can occur. */
static double rne(double v) {
    double q = floor(v);
    double frac = v - q;
    if (frac > 0.5 || (frac == 0.5 && fmod(q, 2.0) != 0.0)) q += 1.0;
    return q;
}

/* ---------------- bf16: the top half of an f32 ---------------- */

float dsc_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

uint16_t dsc_f32_to_bf16(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        /* NaN: truncating could clear every payload bit left in the top half
           and turn it into inf, so force the quiet bit. Sign is kept. */
        return (uint16_t)((u >> 16) | 0x0040u);
    }
    /* Adding 0x7fff plus the lowest kept bit rounds half to even; a carry
       out of the mantissa bumps the exponent, and max finite rounds to inf
       exactly as IEEE RNE requires. */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* ---------------- f16: 1.5.10, bias 15 ---------------- */

float dsc_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1fu;
    uint32_t m = h & 0x3ffu;
    if (e == 0x1f) return bits_f32(sign | 0x7f800000u | (m << 13)); /* inf / NaN, payload kept */
    if (e == 0) {
        /* zero or subnormal: m * 2^-24, exact in f32 (a normal f32) */
        float v = (float)m * 0x1p-24f;
        return sign ? -v : v;
    }
    return bits_f32(sign | ((e + 112u) << 23) | (m << 13));
}

uint16_t dsc_f32_to_f16(float f) {
    uint32_t u = f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return sign | 0x7e00u;            /* NaN -> quiet NaN */
    uint32_t e32 = a >> 23;
    if (e32 >= 143) return sign | 0x7c00u;                 /* >= 2^16 (and inf) */
    if (e32 >= 113) {
        /* normal f16 range: keep 10 mantissa bits, round the 13 dropped bits
           to nearest even. A carry propagates into the exponent, and 65520
           and above round to 0x7c00 = inf as they should. */
        uint32_t m = a & 0x7fffffu;
        uint32_t h = ((e32 - 112u) << 10) | (m >> 13);
        uint32_t rem = m & 0x1fffu;
        if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;
        return sign | (uint16_t)h;
    }
    /* subnormal (or zero) f16: count units of 2^-24. The double product is
       exact; q == 1024 is the smallest normal, whose code is also 1024. */
    double q = rne((double)bits_f32(a) * 0x1p24);
    return sign | (uint16_t)q;
}

/* ---------------- e4m3fn: 1.4.3, bias 7, no inf ---------------- */

float dsc_e4m3_to_f32(uint8_t b) {
    uint32_t e = (b >> 3) & 0xf, m = b & 0x7;
    if (e == 0xf && m == 0x7) return NAN; /* S.1111.111 */
    float v;
    if (e == 0) {
        v = (float)m * (1.0f / 512.0f); /* (m/8) * 2^-6, exact */
    } else {
        /* (1+m/8) * 2^(e-7): rebias the exponent (7 -> 127), widen the
           mantissa; built from bits because ldexpf per weight is slow */
        uint32_t u = ((e + 120u) << 23) | (m << 20);
        memcpy(&v, &u, sizeof v);
    }
    return (b & 0x80) ? -v : v;
}

uint8_t dsc_f32_to_e4m3(float f) {
    if (isnan(f)) return 0x7f;
    uint8_t sign = signbit(f) ? 0x80 : 0x00;
    double a = fabs((double)f);
    /* Saturate: everything at or above max finite (inf included) maps to 448.
       Plain RNE would already give 448 up to 464; beyond that e4m3fn has no
       larger finite value and no inf. */
    if (a >= 448.0) return sign | 0x7e;
    if (a < 0x1p-6) {
        /* subnormal range: units of 2^-9; q == 8 is the smallest normal,
           whose code is also 8 */
        return sign | (uint8_t)rne(a * 0x1p9);
    }
    int e2;
    double mant = frexp(a, &e2);                           /* a = mant * 2^e2, mant in [0.5,1) */
    int e = e2 - 1;                                        /* a = (2*mant) * 2^e */
    double q = rne((2.0 * mant - 1.0) * 8.0);              /* exact: 2*mant has <= 24 bits */
    if (q == 8.0) {
        q = 0.0;
        e++;
    }
    return sign | (uint8_t)(((e + 7) << 3) | (int)q);
}

/* ---------------- weight rows ---------------- */

void dsc_wmat_row(const dsc_wmat *w, int64_t r, int64_t c0, int64_t n, float *out) {
    size_t base = (size_t)r * (size_t)w->cols + (size_t)c0;
    switch (w->dtype) {
    case DSC_F32:
        memcpy(out, (const float *)w->data + base, (size_t)n * sizeof(float));
        break;
    case DSC_BF16: {
        const uint16_t *p = (const uint16_t *)w->data + base;
        for (int64_t i = 0; i < n; i++) out[i] = dsc_bf16_to_f32(p[i]);
        break;
    }
    case DSC_F16: {
        const uint16_t *p = (const uint16_t *)w->data + base;
        for (int64_t i = 0; i < n; i++) out[i] = dsc_f16_to_f32(p[i]);
        break;
    }
    case DSC_F8_E4M3: {
        const uint8_t *p = (const uint8_t *)w->data + base;
        const float *srow = w->scale + (size_t)(r / DSC_FP8_BLOCK) * (size_t)w->scale_cols;
        for (int64_t i = 0; i < n; i++)
            out[i] = dsc_e4m3_to_f32(p[i]) * srow[(c0 + i) / DSC_FP8_BLOCK];
        break;
    }
    }
}
