/*
 * idx_fast.h - the DSA lightning indexer's score op (idx_ops.h §1) in fp32,
 * forward and backward, dense and sparse forms, with OpenMP inside.
 *
 * Same contract as dsc_op_idx_score_fwd_f32 / _bwd_f32: the same shapes
 * (q (n, H_I, D_I), k (n, D_I), w (n, H_I); dense I (n, n), sparse sel and
 * I (n, kk)), the same -INFINITY at the entries that are not visible, dI
 * ignored there whatever it holds, gradients ADDED into dq/dk/dw (NULL
 * skips one), ReLU'(0) = 0. The scalar reference in idx_impl.inc stays
 * the oracle (tests/unit/test_idx_fast.c compares the two). What differs
 * is arithmetic, not meaning: dot products and gradient sums are fp32
 * (GEMM tiles, SIMD lanes); only dw's row sums (of fp32 products) stay in
 * double.
 *
 * How:
 *  - dense: a tile of DSC_IDXF_QB queries is, with its H_I heads, a
 *    (QB*H_I, D_I) matrix of q (rows (t, h), in place), so one GEMM gives
 *    the scores A = Q_tile K_blk^T of every head against a block of keys
 *    (the keys 0..last visible, in blocks that keep A in L2). The forward
 *    reduces A over heads into I (w[t,h] * ReLU); the backward recomputes
 *    A, turns it in place into G = dI * w * 1[A > 0] (dw's row sums taken
 *    on the way), then dq_tile += G K_blk (its rows belong to the tile) and
 *    dk_blk += G^T Q_tile (GEMMs).
 *  - sparse: per query, the selected key rows are gathered into a (kk, D_I)
 *    matrix (zero rows for padding and future keys, so their scores and
 *    gradients are exactly 0), and the same steps run as small GEMMs:
 *    A = Q_t Kg^T (H_I, kk), dq_t += G Kg, C = G^T Q_t (kk, D_I), whose
 *    rows are added into dk at the selected keys.
 *  - threads: queries in tiles of DSC_IDXF_QB, an OpenMP loop over tiles
 *    inside the call (num_threads(n_threads)). dk receives every tile's
 *    contribution: the backward sums it per "chunk" (a fixed set of tiles,
 *    tile % chunks, run by one thread in tile order) into a partial, then
 *    adds the partials in chunk order. The chunk count depends on n only,
 *    so every output is bitwise the same at any thread count (and the
 *    backward uses at most that many threads).
 *
 * Memory: nothing is O(n^2) beyond I/dI themselves. Scratch (ws, from the
 * caller, any malloc'd float block) holds the backward's dk partials
 * (chunks x n x D_I, chunks = min(tiles, 16)) and, per thread, a score
 * tile (QB*H_I x a key block of ~65536 / (QB*H_I) keys) or, sparse, the
 * gathered keys and their dk rows (2 x kk x D_I) and the scores (H_I x kk).
 */
#ifndef DSC_TRAIN_IDX_FAST_H
#define DSC_TRAIN_IDX_FAST_H

#include <stdint.h>

#include "train/idx_ops.h"

/* Query rows per tile (and per work item of the sparse form). */
#define DSC_IDXF_QB 64

/*
 * Floats of ws that dsc_idxf_score_fwd / _bwd need for these dims (kk
 * only matters for the sparse form; pass 0 for dense-only use) with up to
 * n_threads threads. One block serves both directions and both forms.
 */
int64_t dsc_idxf_scratch(int64_t n, int64_t heads, int64_t dim, int64_t kk, int n_threads);

/*
 * I = the index scores, as dsc_op_idx_score_fwd_f32: sel NULL gives the
 * dense (n, n) form, else the sparse (n, d->kk) one. n_threads >= 1; ws
 * holds dsc_idxf_scratch(d->n, d->heads, d->dim, kk, n_threads) floats.
 */
void dsc_idxf_score_fwd(float *I, const float *q, const float *k, const float *w,
                        const int32_t *sel, const dsc_idx_dims *d, int n_threads, float *ws);

/*
 * The backward, as dsc_op_idx_score_bwd_f32: dq, dk, dw += the gradients
 * from dI (same shape as I), any of them NULL to skip. Bitwise the same
 * result for any n_threads. ws as for the forward.
 */
void dsc_idxf_score_bwd(float *dq, float *dk, float *dw, const float *dI, const float *q,
                        const float *k, const float *w, const int32_t *sel,
                        const dsc_idx_dims *d, int n_threads, float *ws);

#endif /* DSC_TRAIN_IDX_FAST_H */
