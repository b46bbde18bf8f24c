/*
 * ops_f32.c - the float instance of the training ops (see ops.h): every
 * dsc_op_<name>_f32, generated from ops_impl.inc.
 */
#include "train/ops.h"

#define DSC_OP_T float
#define DSC_OP(name) dsc_op_##name##_f32
#include "train/ops_impl.inc"
