/*
 * nsa_f64.c - the double instance of the NSA operator (see nsa.h): every
 * dsc_nsa_<name>_f64, generated from nsa_impl.inc. The instance the
 * finite-difference tests check.
 */
#include "nsa/nsa.h"

#define DSC_NSA_T double
#define DSC_NSA(name) dsc_nsa_##name##_f64
#include "nsa/nsa_impl.inc"
