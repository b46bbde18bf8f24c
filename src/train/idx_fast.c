/*
 * idx_fast.c - the indexer score op in fp32 on GEMM tiles and SIMD loops
 * (contract and design in idx_fast.h; the scalar reference it is tested
 * against is idx_impl.inc).
 *
 * The row loops are plain C for the vectoriser: this file is built with -O3
 * and the functions holding them are DSC_VEC_CLONES (util.h). The GEMMs are
 * dsc_k_sgemm_* with a NULL context: one thread each, called from inside
 * this file's OpenMP loops.
 */
#include <math.h>
#include <string.h>

#include "kernels/kernels.h"
#include "train/idx_fast.h"
#include "util/util.h"

#define ROW DSC_VEC_CLONES

/* dk partials of the backward: at most this many chunks of tiles (fixed,
   so the sums do not depend on the thread count; also the most threads
   the backward can use). */
#define IDXF_CHUNKS 16
/* Floats of one dense score tile (QB*H_I rows x a key block): small enough
   to stay in L2 between the GEMM that writes it and the loops that read
   it. */
#define IDXF_TILE 65536

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
static int64_t pad16(int64_t x) { return (x + 15) & ~(int64_t)15; }

/* Sizes shared by the scratch query and the four passes. */
typedef struct {
    int64_t n, H, D, kk, kkp; /* kkp: kk rounded up to 16 (row stride)    */
    int64_t tiles, chunks;    /* query tiles; dk partials                 */
    int64_t kb;               /* keys per dense score block (mult. of 16) */
    int64_t part;             /* floats of the dk partials: chunks * n * D */
    int64_t dense_thr;        /* floats per thread, dense form            */
    int64_t sparse_thr;       /* floats per thread, sparse form           */
} geo;

static geo make_geo(int64_t n, int64_t H, int64_t D, int64_t kk) {
    geo g;
    g.n = n, g.H = H, g.D = D, g.kk = kk > 0 ? kk : 0, g.kkp = pad16(g.kk);
    g.tiles = (n + DSC_IDXF_QB - 1) / DSC_IDXF_QB;
    g.chunks = min64(g.tiles, IDXF_CHUNKS);
    int64_t kb = (IDXF_TILE / (DSC_IDXF_QB * max64(H, 1))) & ~(int64_t)15;
    g.kb = min64(max64(kb, 64), pad16(max64(n, 1)));
    g.part = pad16(g.chunks * n * D); /* keeps the per-thread doubles aligned */
    /* score tile, dw's row sums (QB*H doubles), a row of products */
    g.dense_thr = pad16(DSC_IDXF_QB * H * g.kb) + pad16(2 * DSC_IDXF_QB * H) + g.kb;
    /* gathered keys, H score rows, the dk rows C, a row of products */
    g.sparse_thr = 2 * pad16(D * g.kkp) + pad16(H * g.kkp) + g.kkp;
    return g;
}

int64_t dsc_idxf_scratch(int64_t n, int64_t heads, int64_t dim, int64_t kk, int n_threads) {
    geo g = make_geo(n, heads, dim, kk);
    int64_t thr = g.dense_thr;
    if (kk > 0) thr = max64(thr, g.sparse_thr);
    return g.part + (int64_t)(n_threads > 0 ? n_threads : 1) * thr;
}

/* Visible keys of row r within a block starting v0 - 1 keys before the
   row's tile (v0 = i0 - kb0 + 1), clipped to the block's nb columns. */
static int64_t block_vis(int64_t v0, int64_t r, int64_t nb) {
    return min64(max64(v0 + r, 0), nb);
}

/* y[c] += x[c] (D values). */
ROW static void add_row(float *y, const float *x, int64_t D) {
    for (int64_t c = 0; c < D; c++) y[c] += x[c];
}

/* ---- dense forward ---- */

/* I[r][0, nb) of the tile's rows from the scores A ((rows*H) x nb, row
   (r, h)): the visible columns get sum_h w[r,h] ReLU(A), the rest
   -INFINITY. */
ROW static void dense_fwd_block(float *I, int64_t ldi, const float *A, const float *w,
                                int64_t rows, int64_t H, int64_t nb, int64_t v0) {
    for (int64_t r = 0; r < rows; r++) {
        int64_t v = block_vis(v0, r, nb);
        float *o = I + r * ldi;
        const float *a = A + r * H * nb, *wr = w + r * H;
        if (v > 0) {
            float w0 = wr[0];
            for (int64_t j = 0; j < v; j++) o[j] = w0 * (a[j] > 0.0f ? a[j] : 0.0f);
            for (int64_t h = 1; h < H; h++) {
                const float *ah = a + h * nb;
                float wh = wr[h];
                for (int64_t j = 0; j < v; j++) o[j] += wh * (ah[j] > 0.0f ? ah[j] : 0.0f);
            }
        }
        for (int64_t j = v; j < nb; j++) o[j] = -INFINITY;
    }
}

/* One tile of queries [i0, i0+rows): A = Q_tile K_blk^T per key block. */
static void dense_fwd_tile(const geo *g, float *I, const float *q, const float *k,
                           const float *w, int64_t i0, float *A) {
    int64_t n = g->n, H = g->H, D = g->D;
    int64_t rows = min64(DSC_IDXF_QB, n - i0), lk = i0 + rows, M = rows * H;
    const float *Qt = q + i0 * H * D; /* (rows*H, D): rows (t, h) */
    for (int64_t kb0 = 0; kb0 < lk; kb0 += g->kb) {
        int64_t nb = min64(g->kb, lk - kb0);
        dsc_k_sgemm_nt(NULL, M, nb, D, Qt, D, k + kb0 * D, D, A, nb, 0);
        dense_fwd_block(I + i0 * n + kb0, n, A, w + i0 * H, rows, H, nb, i0 - kb0 + 1);
    }
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = lk; j < n; j++) I[(i0 + r) * n + j] = -INFINITY;
}

/* ---- dense backward ---- */

/* sum of p[0, v) in double (eight partial sums, so the loop vectorises). */
static inline double sum_d(const float *p, int64_t v) {
    double acc[8] = {0};
    int64_t j = 0;
    for (; j + 8 <= v; j += 8)
        for (int l = 0; l < 8; l++) acc[l] += (double)p[j + l];
    double s = 0.0;
    for (; j < v; j++) s += p[j];
    for (int l = 0; l < 8; l++) s += acc[l];
    return s;
}

/* One score row a[0, v) becomes G = dI * w * 1[a > 0]; with p, returns
   the row sum of dI * ReLU(a) (products in fp32 into p, summed in double),
   else 0. Where a <= 0, dI is multiplied but the select drops it. */
ROW static double grad_row(float *restrict a, float *restrict p, const float *restrict gi,
                           float wh, int64_t v) {
    if (!p) {
        for (int64_t j = 0; j < v; j++) a[j] = a[j] > 0.0f ? gi[j] * wh : 0.0f;
        return 0.0;
    }
    for (int64_t j = 0; j < v; j++) {
        float x = a[j], g = gi[j];
        p[j] = x > 0.0f ? g * x : 0.0f;
        a[j] = x > 0.0f ? g * wh : 0.0f;
    }
    return sum_d(p, v);
}

/*
 * In place, the block A becomes G on the visible columns and 0 elsewhere
 * (dI is not read there); with dwa, dwa[r*H + h] += the visible row sum of
 * dI * ReLU(A) (p: nb floats of scratch).
 */
static void dense_bwd_block(float *A, double *dwa, float *p, const float *dI, int64_t ldi,
                            const float *w, int64_t rows, int64_t H, int64_t nb, int64_t v0) {
    for (int64_t r = 0; r < rows; r++) {
        int64_t v = block_vis(v0, r, nb);
        for (int64_t h = 0; h < H; h++) {
            float *a = A + (r * H + h) * nb;
            double s = grad_row(a, dwa ? p : NULL, dI + r * ldi, w[r * H + h], v);
            if (dwa) dwa[r * H + h] += s;
            if (v < nb) memset(a + v, 0, (size_t)(nb - v) * sizeof *a);
        }
    }
}

/* One tile: per key block, recompute A, make G, then dq_tile += G K_blk and
   pk[blk] += G^T Q_tile (pk: the tile's chunk partial of dk, or NULL). */
static void dense_bwd_tile(const geo *g, float *dq, float *pk, float *dw, const float *dI,
                           const float *q, const float *k, const float *w, int64_t i0,
                           float *area) {
    int64_t n = g->n, H = g->H, D = g->D;
    int64_t rows = min64(DSC_IDXF_QB, n - i0), lk = i0 + rows, M = rows * H;
    const float *Qt = q + i0 * H * D;
    float *A = area;
    double *dwa = dw ? (double *)(area + pad16(DSC_IDXF_QB * H * g->kb)) : NULL;
    float *p = area + pad16(DSC_IDXF_QB * H * g->kb) + pad16(2 * DSC_IDXF_QB * H);
    if (dwa) memset(dwa, 0, (size_t)M * sizeof *dwa);
    for (int64_t kb0 = 0; kb0 < lk; kb0 += g->kb) {
        int64_t nb = min64(g->kb, lk - kb0);
        const float *Kb = k + kb0 * D;
        dsc_k_sgemm_nt(NULL, M, nb, D, Qt, D, Kb, D, A, nb, 0);
        dense_bwd_block(A, dwa, p, dI + i0 * n + kb0, n, w + i0 * H, rows, H, nb, i0 - kb0 + 1);
        if (dq) dsc_k_sgemm_nn(NULL, M, D, nb, A, nb, Kb, D, dq + i0 * H * D, D, 1);
        if (pk) dsc_k_sgemm_tn(NULL, nb, D, M, A, nb, Qt, D, pk + kb0 * D, D, 1);
    }
    if (dwa)
        for (int64_t i = 0; i < M; i++) dw[i0 * H + i] += (float)dwa[i];
}

/* ---- sparse form ---- */

/* Kg[j] = k[sel[j]] for the visible columns of query t, 0 for the others
   (so their scores, and then their G, are exactly 0). */
ROW static void sparse_gather(float *Kg, const geo *g, const float *k, const int32_t *sel_t,
                              int64_t t) {
    int64_t D = g->D;
    for (int64_t j = 0; j < g->kk; j++) {
        int64_t s = sel_t[j];
        float *o = Kg + j * D;
        if (s >= 0 && s <= t) {
            const float *ks = k + s * D;
            for (int64_t c = 0; c < D; c++) o[c] = ks[c];
        } else {
            for (int64_t c = 0; c < D; c++) o[c] = 0.0f;
        }
    }
}

/* o[j] = sum_h w_h ReLU(A[h][j]), A (H, kk) with row stride kkp. */
ROW static void sparse_fwd_reduce(float *o, const float *A, int64_t kkp, const float *wt,
                                  int64_t H, int64_t kk) {
    float w0 = wt[0];
    for (int64_t j = 0; j < kk; j++) o[j] = w0 * (A[j] > 0.0f ? A[j] : 0.0f);
    for (int64_t h = 1; h < H; h++) {
        const float *a = A + h * kkp;
        float wh = wt[h];
        for (int64_t j = 0; j < kk; j++) o[j] += wh * (a[j] > 0.0f ? a[j] : 0.0f);
    }
}

/* Query t: A = Q_t Kg^T, (H, D) x (D, kk), then the head reduction. */
static void sparse_fwd_row(const geo *g, float *I, const float *q, const float *k,
                           const float *w, const int32_t *sel, int64_t t, float *area) {
    int64_t H = g->H, D = g->D, kk = g->kk, kkp = g->kkp;
    float *Kg = area, *A = area + pad16(kkp * D);
    const int32_t *st = sel + t * kk;
    float *o = I + t * kk;
    sparse_gather(Kg, g, k, st, t);
    dsc_k_sgemm_nt(NULL, H, kk, D, q + t * H * D, D, Kg, D, A, kkp, 0);
    sparse_fwd_reduce(o, A, kkp, w + t * H, H, kk);
    for (int64_t j = 0; j < kk; j++)
        if (!(st[j] >= 0 && st[j] <= t)) o[j] = -INFINITY;
}

/*
 * Query t: recompute A = Q_t Kg^T, make G (H, kk) in place (dw on the
 * way), dq_t += G Kg, and C = G^T Q_t (kk, D), whose row j is added into
 * the chunk partial pk at key sel[t][j].
 */
static void sparse_bwd_row(const geo *g, float *dq, float *pk, float *dw, const float *dI,
                           const float *q, const float *k, const float *w,
                           const int32_t *sel, int64_t t, float *area) {
    int64_t H = g->H, D = g->D, kk = g->kk, kkp = g->kkp;
    float *Kg = area, *G = area + pad16(kkp * D), *C = G + pad16(H * kkp);
    float *p = C + pad16(kkp * D);
    const int32_t *st = sel + t * kk;
    const float *qt = q + t * H * D;
    sparse_gather(Kg, g, k, st, t);
    dsc_k_sgemm_nt(NULL, H, kk, D, qt, D, Kg, D, G, kkp, 0);
    for (int64_t h = 0; h < H; h++) {
        /* columns that are not visible hold 0 (gathered as zero): the
           select gives G = 0 there, whatever dI holds */
        double s = grad_row(G + h * kkp, dw ? p : NULL, dI + t * kk, w[t * H + h], kk);
        if (dw) dw[t * H + h] += (float)s;
    }
    if (dq) dsc_k_sgemm_nn(NULL, H, D, kk, G, kkp, Kg, D, dq + t * H * D, D, 1);
    if (!pk) return;
    dsc_k_sgemm_tn(NULL, kk, D, H, G, kkp, qt, D, C, D, 0);
    for (int64_t j = 0; j < kk; j++) {
        int64_t s = st[j];
        if (s >= 0 && s <= t) add_row(pk + s * D, C + j * D, D);
    }
}

/* ---- entry points ---- */

void dsc_idxf_score_fwd(float *I, const float *q, const float *k, const float *w,
                        const int32_t *sel, const dsc_idx_dims *d, int n_threads, float *ws) {
    geo g = make_geo(d->n, d->heads, d->dim, sel ? d->kk : 0);
    const int nt = n_threads > 0 ? n_threads : 1;
    const int64_t stride = sel ? g.sparse_thr : g.dense_thr;
    (void)nt; /* only read by the pragmas, which NO_OMP builds ignore */
    /* the last tiles (most keys) first, for the balance */
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int64_t it = g.tiles - 1; it >= 0; it--) {
        float *area = ws + (int64_t)dsc_thread_id() * stride;
        int64_t i0 = it * DSC_IDXF_QB;
        if (!sel) {
            dense_fwd_tile(&g, I, q, k, w, i0, area);
            continue;
        }
        for (int64_t t = i0; t < min64(i0 + DSC_IDXF_QB, g.n); t++)
            sparse_fwd_row(&g, I, q, k, w, sel, t, area);
    }
}

void dsc_idxf_score_bwd(float *dq, float *dk, float *dw, const float *dI, const float *q,
                        const float *k, const float *w, const int32_t *sel,
                        const dsc_idx_dims *d, int n_threads, float *ws) {
    if (!dq && !dk && !dw) return;
    geo g = make_geo(d->n, d->heads, d->dim, sel ? d->kk : 0);
    const int nt = n_threads > 0 ? n_threads : 1;
    const int64_t stride = sel ? g.sparse_thr : g.dense_thr, nD = g.n * g.D;
    (void)nt;
    /* chunk c: tiles c, c + chunks, ... in order, its dk sum in ws + c n D;
       the chunks with the largest tiles first */
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int64_t c = g.chunks - 1; c >= 0; c--) {
        float *area = ws + g.part + (int64_t)dsc_thread_id() * stride;
        float *pk = dk ? ws + c * nD : NULL;
        if (pk) memset(pk, 0, (size_t)nD * sizeof *pk);
        for (int64_t it = c; it < g.tiles; it += g.chunks) {
            int64_t i0 = it * DSC_IDXF_QB;
            if (!sel) {
                dense_bwd_tile(&g, dq, pk, dw, dI, q, k, w, i0, area);
                continue;
            }
            for (int64_t t = i0; t < min64(i0 + DSC_IDXF_QB, g.n); t++)
                sparse_bwd_row(&g, dq, pk, dw, dI, q, k, w, sel, t, area);
        }
    }
    if (!dk || g.chunks == 0) return;
    /* dk += ((p_0 + p_1) + p_2) + ..., elementwise in chunk order */
    const int64_t span = 4096;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t i0 = 0; i0 < nD; i0 += span) {
        int64_t len = min64(span, nD - i0);
        for (int64_t c = 1; c < g.chunks; c++) add_row(ws + i0, ws + c * nD + i0, len);
        add_row(dk + i0, ws + i0, len);
    }
}
