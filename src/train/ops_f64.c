/*
 * ops_f64.c - the double instance of the training ops (see ops.h): every
 * dsc_op_<name>_f64, generated from ops_impl.inc.
 */
#include "train/ops.h"

#define DSC_OP_T double
#define DSC_OP(name) dsc_op_##name##_f64
#include "train/ops_impl.inc"
