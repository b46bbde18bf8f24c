/*
 * nsa_f32.c - the float instance of the NSA operator (see nsa.h): every
 * dsc_nsa_<name>_f32, generated from nsa_impl.inc.
 */
#include "nsa/nsa.h"

#define DSC_NSA_T float
#define DSC_NSA(name) dsc_nsa_##name##_f32
#include "nsa/nsa_impl.inc"
