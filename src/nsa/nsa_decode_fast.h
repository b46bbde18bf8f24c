/*
 * nsa_decode_fast.h - the fast fp32 path of NSA decode: the same state as
 * the scalar reference (dsc_nsa_decode_f32 of nsa_decode.h: its raw K/V,
 * compressed blocks, length and rollback), filled the same way, with the
 * outputs computed by faster code:
 *
 *  - prefill of P > 1 tokens (dsc_nsa_decode_fast_prefill): the raw rows
 *    are copied and the blocks they complete compressed by the operator's
 *    own compress piece (dsc_nsa_compress_f32, in parallel over block
 *    ranges: the same values a step would store), then the P rows' outputs
 *    come from the fast operator's work items (dsc_nsa_fast_fwd_rows_f32:
 *    64-row tiles, GEMMs, OpenMP), in chunks of DSC_NSA_DFAST_CHUNK rows.
 *    It works for any starting length (a continuation after earlier
 *    tokens): the fast operator's tiles start at the first new position.
 *  - one token (dsc_nsa_decode_fast_step, and prefill with P = 1): per KV
 *    head, the G query heads of the group are scored against each key row
 *    in one pass (the row loaded once for the G heads; dot products over 8
 *    fp32 lanes, this file built with -O3 and SIMD clones): the visible
 *    compressed keys (selection scores and the cmp branch from the same
 *    scores), the selected blocks (runs of adjacent blocks read in place)
 *    and the window. Scratch is the state's own row scratch (st->ws); no
 *    allocation.
 *
 * Arithmetic: fp32 dot products and P.V sums (softmax sums, the selection
 * scores and the gate combination in double), exp by dsc_k_exp. So outputs
 * match the reference (dsc_nsa_decode_step_f32 / dsc_nsa_fwd_f64) to ~1e-6
 * of their magnitude and the selections are the reference's except where
 * two candidate blocks' group scores tie to ~1e-6 (see nsa_fast.h); the
 * state (raw rows, compressed blocks, hid) is bit-identical to the
 * reference's after the same calls (tests/unit/test_nsa_decode_fast.c).
 *
 * Mixing is fine: the reference's step / prefill / truncate / reset and
 * these functions may be called on one state in any order.
 *
 * Errors: as the reference's (DSC_ERR_ARG naming the problem, the state
 * untouched). Prefill runs in the caller's scratch
 * (dsc_nsa_decode_fast_prefill_bytes: the fast operator's per-thread tiles
 * and one chunk's branch outputs, a few MB); without it, it mallocs that
 * once per call, and if that fails it computes the rows by steps instead
 * (same results within the tolerance, no error). A step whose scratch does not fit the
 * state's row scratch (tiny capacities with a large n) runs the reference
 * step.
 */
#ifndef DSC_NSA_DECODE_FAST_H
#define DSC_NSA_DECODE_FAST_H

#include "nsa/nsa_decode.h"

/* Rows per fast-operator call in a prefill. */
#define DSC_NSA_DFAST_CHUNK 1024

/* As dsc_nsa_decode_step_f32 (nsa_decode_decl.h), without stats. */
dsc_status dsc_nsa_decode_fast_step(dsc_nsa_decode_f32 *st, const dsc_nsa_params_f32 *p,
                                    const float *q_t, const float *const k_t[3],
                                    const float *const v_t[3], const float *g_t, float *o_t,
                                    int32_t *sel_t, dsc_err *err);

/* As dsc_nsa_decode_prefill_f32: appends P >= 0 tokens at positions len ..
   len+P-1 (len may be > 0), writes their outputs o (P, H_q*d_v) stride ldo
   (0 = packed) and, when not NULL, selections sel (P, H_kv, n). threads:
   the OpenMP team of the fast operator and the compression (>= 1). Call
   from outside any OpenMP parallel region. scratch: scratch_bytes of the
   caller's (see dsc_nsa_decode_fast_prefill_bytes), or NULL. DSC_ERR_ARG,
   nothing written, as the reference's, or when threads < 1. */
dsc_status dsc_nsa_decode_fast_prefill(dsc_nsa_decode_f32 *st, const dsc_nsa_params_f32 *p,
                                       int64_t P, const dsc_nsa_in_f32 *in, float *o,
                                       int64_t ldo, int32_t *sel, int threads, void *scratch,
                                       size_t scratch_bytes, dsc_err *err);

/* *bytes: the scratch any prefill onto a state of capacity cap needs at
   `threads` threads (0 when cap < 2). */
dsc_status dsc_nsa_decode_fast_prefill_bytes(const dsc_nsa_config *c, int64_t cap, int threads,
                                             size_t *bytes, dsc_err *err);

#endif
