/*
 * idx_f64.c - the double instance of the indexer training ops (see idx_ops.h):
 * every dsc_op_idx_<name>_f64, generated from idx_impl.inc.
 */
#include "train/idx_ops.h"

#define DSC_OP_T double
#define DSC_OP(name) dsc_op_##name##_f64
#include "train/idx_impl.inc"
