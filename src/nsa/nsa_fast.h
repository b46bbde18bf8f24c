/*
 * nsa_fast.h - the NSA operator (nsa.h) in fp32 on GEMM tiles, forward and
 * backward, with OpenMP inside.
 *
 * Same contract as dsc_nsa_fwd_f32 / dsc_nsa_bwd_f32: the same config,
 * inputs, layouts, saved buffers (o_br, lse, k_cmp, v_cmp, hid_k, hid_v,
 * sel), flags (DSC_NSA_SEL_GIVEN) and gradients (added into, NULL skipped).
 * The scalar reference in nsa_impl.inc stays the oracle
 * (tests/unit/test_nsa_fast.c compares the two). What differs is
 * arithmetic, not meaning: sums are fp32 inside GEMM tiles (softmax row
 * sums and the selection scores stay in double), exp is dsc_k_exp. So the
 * selection is computed from fp32 compressed probabilities; it matches the
 * reference's except where two candidate blocks' group scores tie to ~1e-6
 * (none in the tests' inputs).
 *
 * How (spec §4.1, mapped to a CPU):
 *  - work item = (KV head h, tile of DSC_NSA_FAST_QB query tokens);
 *  - cmp: per query head of the group, S = Q_tile K_cmp^T over the
 *    compressed keys visible to the tile's last row, masked per row by
 *    block completion, softmax, O = P V_cmp (GEMMs); the probabilities P
 *    are mapped (overlap weights) and summed over the G heads into the
 *    tile's group scores, then the top-n (same rule as dsc_nsa_topn, by a
 *    linear scan) gives sel;
 *  - slc: per token, the G heads' queries against the runs of adjacent
 *    selected blocks (contiguous ranges of raw keys) by the per-token
 *    kernels of nsa_slc.h: scores from a transposed copy of the slc keys
 *    (made once per call, in the shared scratch), one softmax over the
 *    n*l' keys, P V from the values in place, when G < 12; from G = 12
 *    on, (G, d_k) x (d_k, run) library GEMMs on the keys in place (at
 *    G = 4 those were ~3x slower: call overhead; at G = 16 they are
 *    faster: full register tiles, each key read once for all heads);
 *  - win: per query head, banded causal attention of the tile against its
 *    w + QB - 1 keys;
 *  - the backward recomputes P from the saved lse per branch,
 *    dS = P (dP - rowsum(dO_b o_b)), and runs dQ, dK, dV as GEMMs. dQ rows
 *    belong to one work item; dK/dV of the raw and compressed keys are
 *    summed per "chunk" (a fixed set of tiles: tile % chunks), each chunk
 *    run by one thread in tile order, then the chunks are added in chunk
 *    order: results depend on the chunk count, never on the thread count
 *    (bitwise). slc's backward runs per token too (nsa_slc.h; dP from
 *    transposed values). phi's backward (mean, or the MLP by GEMMs) runs
 *    after.
 *  - compression: mean pooling through the reference's dsc_nsa_compress_f32
 *    (split over block ranges); the MLP by GEMMs (hid rounded to fp32 as
 *    the reference stores it, but summed in fp32).
 *
 * Memory: every saved buffer is O(T (H_q d_v + H_kv d_k)); nothing is
 * O(T^2). Scratch (one caller block, any malloc'd pointer) holds, per
 * thread, a score tile (QB x max(T_c, w + QB - 1) floats, two for the
 * backward) and the selection scores (QB x ceil(T/l') doubles); shared,
 * the transposed slc keys (H_kv d_k x T floats; for the backward also the
 * values, H_kv d_v x T), and for the backward `chunks` fp32 accumulators of the raw keys' and values'
 * gradients (T x H_kv x (d_k + d_v) each, per distinct k/v tensor of slc
 * and win) and of the compressed ones.
 *
 * Errors as in nsa.h: DSC_ERR_ARG naming the bad field or NULL pointer;
 * nothing written then.
 */
#ifndef DSC_NSA_FAST_H
#define DSC_NSA_FAST_H

#include <stddef.h>
#include <stdint.h>

#include "nsa/nsa.h"
#include "nsa/nsa_align.h"

/* Query tokens per work item. */
#define DSC_NSA_FAST_QB 64
/* Backward accumulation chunks when opts->chunks is 0. */
#define DSC_NSA_FAST_CHUNKS 4
#define DSC_NSA_FAST_MAX_CHUNKS 256

/* Time split (thread-seconds, summed over threads) into opts->prof. */
enum {
    DSC_NSA_FAST_T_COMPRESS = 0, /* phi forward (fwd) / phi backward (bwd)     */
    DSC_NSA_FAST_T_CMP,          /* compressed branch (fwd: incl. score map)   */
    DSC_NSA_FAST_T_SELECT,       /* top-n (fwd only)                           */
    DSC_NSA_FAST_T_SLC,          /* selected branch                            */
    DSC_NSA_FAST_T_WIN,          /* sliding window branch                      */
    DSC_NSA_FAST_T_REST,         /* gates / combine / dg, chunk reduction      */
    DSC_NSA_FAST_NT
};

typedef struct {
    int threads;   /* OpenMP team size of the call (>= 1)                      */
    int chunks;    /* backward accumulation chunks, <= 256 (0: DSC_NSA_FAST_CHUNKS) */
    double *prof;  /* NULL, or DSC_NSA_FAST_NT doubles the call ADDS into      */
    dsc_nsa_align *align; /* NULL, or the selection alignment loss (nsa_align.h):
                             the whole-sequence forward writes its buffers, the
                             backward adds its gradient; fwd_rows ignores it */
} dsc_nsa_fast_opts;

/* Scratch bytes of dsc_nsa_fast_fwd_f32 and _bwd_f32 for T tokens with
   these options (threads and chunks). DSC_ERR_ARG on a bad config, T < 1,
   threads < 1, chunks < 0, or an overflow. */
dsc_status dsc_nsa_fast_sizes(const dsc_nsa_config *c, int64_t T, const dsc_nsa_fast_opts *o,
                              size_t *fwd_bytes, size_t *bwd_bytes, dsc_err *err);

/* As dsc_nsa_fwd_f32 / dsc_nsa_bwd_f32 (nsa_decl.h), with scratch of
   dsc_nsa_fast_sizes' fwd_bytes / bwd_bytes for the same T and options.
   Call from outside any OpenMP parallel region. */
dsc_status dsc_nsa_fast_fwd_f32(const dsc_nsa_config *c, int64_t T, const dsc_nsa_in_f32 *in,
                                const dsc_nsa_params_f32 *p, float *o, int64_t ldo,
                                dsc_nsa_saved_f32 *sv, int flags, const dsc_nsa_fast_opts *opts,
                                void *scratch, dsc_err *err);
dsc_status dsc_nsa_fast_bwd_f32(const dsc_nsa_config *c, int64_t T, const dsc_nsa_in_f32 *in,
                                const dsc_nsa_params_f32 *p, const dsc_nsa_saved_f32 *sv,
                                const float *dO, int64_t ldo, dsc_nsa_grads_f32 *gr,
                                const dsc_nsa_fast_opts *opts, void *scratch, dsc_err *err);

/* The forward of the P query rows at positions t0 .. t0+P-1 of a longer
   sequence, for a decode state's prefill (nsa_decode_fast.h): the same
   work items as dsc_nsa_fast_fwd_f32 (tiles of DSC_NSA_FAST_QB rows from
   t0), which is the case t0 = 0, P = T, with the compression already done.
   Reads:
     in->q, in->g   the P rows (row i = position t0 + i), strides ldq / ldg;
     in->kv         the raw keys / values of positions 0 .. t0+P-1 (row t =
                    position t);
     sv->k_cmp, sv->v_cmp  the compressed blocks of the first t0+P tokens
                    (dsc_nsa_n_visible(t0+P-1) rows; read only; hid unused).
   Writes o (P, H_q*d_v) stride ldo, and sv->o_br (P, H_q, 3, d_v), sv->lse
   (P, H_q, 3), sv->sel (P, H_kv, n) for the P rows (row i = position t0+i);
   the selection is always computed. Scratch: dsc_nsa_fast_sizes' fwd_bytes
   for T = t0 + P. DSC_ERR_ARG (nothing written) on a bad config, t0 < 0,
   P < 1, or a NULL pointer it needs. phi's parameters are not read. */
dsc_status dsc_nsa_fast_fwd_rows_f32(const dsc_nsa_config *c, int64_t t0, int64_t P,
                                     const dsc_nsa_in_f32 *in, float *o, int64_t ldo,
                                     dsc_nsa_saved_f32 *sv, const dsc_nsa_fast_opts *opts,
                                     void *scratch, dsc_err *err);

#endif
