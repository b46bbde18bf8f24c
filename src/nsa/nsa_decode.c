/*
 * nsa_decode.c - NSA decode (see nsa_decode.h): the untyped helper, then
 * the float and double instances, each generated from nsa_decode_impl.inc
 * (every static helper there carries the instance's suffix, so both fit in
 * one file).
 */
#include "nsa/nsa_decode.h"

int64_t dsc_nsa_decode_n_cmp(const dsc_nsa_config *c, int64_t len) {
    return len >= 1 ? dsc_nsa_n_visible(c, len - 1) : 0;
}

#define DSC_NSA_T float
#define DSC_NSA(name) dsc_nsa_##name##_f32
#include "nsa/nsa_decode_impl.inc"
#undef DSC_NSA_T
#undef DSC_NSA

#define DSC_NSA_T double
#define DSC_NSA(name) dsc_nsa_##name##_f64
#include "nsa/nsa_decode_impl.inc"
#undef DSC_NSA_T
#undef DSC_NSA
