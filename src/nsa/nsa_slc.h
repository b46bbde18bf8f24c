/*
 * nsa_slc.h - the selected branch's per-token kernels of the fast NSA
 * operator (nsa_fast.c): one token's G query heads against its selected
 * keys, given as runs of adjacent raw rows (run u: rows ra[u] ..
 * ra[u] + rl[u] - 1, packed one after the other in the score rows, so run
 * u starts at column off_u = rl[0] + .. + rl[u-1]).
 *
 * Why not GEMM calls: the matrices are (G, d) x (d, run) with G = H_q /
 * H_kv (4 in the study models) and runs of 64..512 keys; a library GEMM's
 * call and packing overhead exceeds the arithmetic at that size (the
 * selected branch took ~75% of the operator's time through sgemm calls).
 * From G = 12 on (nsa_fast.c's SLC_GEMM_G) the GEMMs win again and are
 * used instead.
 * These are plain-C loops over 16-wide accumulators that the vectoriser
 * keeps in registers (DSC_VEC_CLONES, built with -O3), each output summed
 * in a fixed order: results are independent of the thread count and of
 * the CPU variant (fp-contract is off in ISO C mode).
 *
 * Shapes (element counts, every stride an int64_t):
 *   Q, X   (G, d) rows of stride ldq / ldx
 *   KT     the keys transposed: KT[e * ldt + row], e < d (so a run's keys
 *          are contiguous per dimension)
 *   K, V   row-major raw rows: V[row * ldv + e]
 *   S, P   (G, L) score rows of stride lds, L = sum of rl
 */
#ifndef DSC_NSA_SLC_H
#define DSC_NSA_SLC_H

#include <stdint.h>

/* S[g][off_u + j] = sum_e Q[g][e] KT[e][ra[u] + j], e summed in order. */
void dsc_nsa_slc_scores(int64_t G, int64_t d, const float *Q, int64_t ldq, const float *KT,
                        int64_t ldt, int64_t nr, const int64_t *ra, const int64_t *rl,
                        float *S, int64_t lds);

/* O[g][e] (= or += when accumulate) sum over the runs' keys j, in order,
   of P[g][j] V[row_j][e]; e < d. */
void dsc_nsa_slc_pv(int64_t G, int64_t d, const float *P, int64_t lds, const float *V,
                    int64_t ldv, int64_t nr, const int64_t *ra, const int64_t *rl, float *O,
                    int64_t ldo, int accumulate);

/* A[row_j][e] += sum_g P[g][j] X[g][e] (g summed in order first, then
   added), for every key j of the runs; e < d. */
void dsc_nsa_slc_outer(int64_t G, int64_t d, const float *P, int64_t lds, const float *X,
                       int64_t ldx, int64_t nr, const int64_t *ra, const int64_t *rl, float *A,
                       int64_t lda);

/* KT[e][t] = K[t][e] for t < T, e < d (the transposed copy the scores
   read; rows [t_lo, T) only, the rest untouched). */
void dsc_nsa_slc_transpose(int64_t t_lo, int64_t T, int64_t d, const float *K, int64_t ldk,
                           float *KT, int64_t ldt);

#endif
