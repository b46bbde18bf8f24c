/*
 * nsa_fast.c - the NSA operator in fp32 on GEMM tiles (contracts and the
 * design note in nsa_fast.h; the scalar oracle is nsa_impl.inc).
 *
 * Layout of this file: geometry and scratch layout, row kernels (softmax,
 * the backward's dS, the score map, top-n), compression, the forward work
 * item, the backward work item, phi's backward, the entry points.
 */
#include <math.h>
#include <string.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "kernels/row_exp.h"
#include "kernels/kernels.h"
#include "nsa/nsa_fast.h"
#include "nsa/nsa_slc.h"
#include "util/rows.h"
#include "util/util.h"

/* The row loops are plain C for the vectoriser: this file is built with
   -O3 and the functions holding them are DSC_VEC_CLONES (util.h). */
#define ROW DSC_VEC_CLONES
#define QB DSC_NSA_FAST_QB
#define CR 256   /* compressed blocks per MLP compression work item */
/* From this many query heads per KV head the selected branch runs on
   (G, d) x (d, run) library GEMMs: with 16 rows a GEMM reads each key once
   for all heads at full register-tile efficiency (bench_nsa's paper shapes,
   G 16, d_k 192: 5.2 s forward at 32k against 6.2 s for the per-token
   kernels); below it the per-token kernels of nsa_slc.h win (G 4, d_k 32:
   2.8x less time than 4-row GEMM calls, whose overhead dominates). */
#define SLC_GEMM_G 12

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- geometry ---- */

typedef struct {
    const dsc_nsa_config *c;
    int64_t T, Tc, nblk, H, Hq, G, dk, dv, n, lsel, w, m;
    int64_t r0;       /* the forward's first query position (0 but for fwd_rows);
                         query row t lives at row t - r0 of q, g, o, o_br, lse, sel */
    int64_t ldq, ldk, ldv, ldg, ldo;
    int64_t cols;     /* score tile columns: max(T_c, min(T, w + QB - 1), 1) */
    int64_t ntiles;   /* query tiles of QB tokens                            */
    int64_t P;        /* l' / d: compressed blocks per selection block       */
    int chunks, nsets, threads;
    float scale;
    const float *k[3], *v[3]; /* the raw keys / values branch b reads        */
    float *kt, *vt;   /* slc's keys (and, backward, values) transposed:
                         kt[(h d_k + e) ldt + t] (nsa_slc.h), in the shared
                         scratch, filled by the entry points                */
    int64_t ldt;      /* T rounded up to 16, + 16                          */
    int slc_gemm;     /* G >= SLC_GEMM_G: slc by library GEMMs (see slc_*)  */
    const dsc_nsa_align *al; /* the selection alignment, or NULL            */
} geo;

static void geo_init(geo *g, const dsc_nsa_config *c, int64_t T, const dsc_nsa_fast_opts *o) {
    memset(g, 0, sizeof *g);
    g->c = c;
    g->T = T;
    g->Tc = T >= c->l ? (T - c->l) / c->d + 1 : 0;
    g->nblk = (T + c->l_sel - 1) / c->l_sel;
    g->H = c->H_kv, g->Hq = c->H_q, g->G = c->H_q / c->H_kv;
    g->dk = c->d_k, g->dv = c->d_v, g->n = c->n, g->lsel = c->l_sel, g->w = c->w;
    g->m = c->phi == DSC_NSA_PHI_MLP ? c->phi_hidden : 0;
    g->cols = max64(1, max64(g->Tc, min64(T, c->w + QB - 1)));
    g->ntiles = (T + QB - 1) / QB;
    g->P = c->l_sel / c->d;
    g->chunks = o->chunks ? o->chunks : DSC_NSA_FAST_CHUNKS;
    g->nsets = c->shared_kv ? 1 : 2;
    g->threads = o->threads;
    g->scale = (float)dsc_nsa_scale(c);
    /* + 16: a row stride of a multiple of 4 KiB would put the d_k rows a
       score reads at the same L1 sets (measured 2x slower at T = 4096) */
    g->ldt = (T + 15) / 16 * 16 + 16;
    g->slc_gemm = g->G >= SLC_GEMM_G;
    g->al = o->align;
}

/* Scratch layout: a shared part, then one block per thread (64-byte
   aligned). Counts in elements; doubles first, then int64, then floats.
   The shared part: the forward's overlap weights (2 P doubles) or the
   backward's chunk accumulators, then (64-byte aligned, at kt_at) slc's
   transposed keys (H d_k rows of ldt), and in the backward its values,
   when the per-token kernels run (G < SLC_GEMM_G). */
typedef struct {
    size_t shared, thread; /* bytes */
    size_t kt_at;          /* bytes: g->kt's offset in the shared part */
} lay;

static size_t al64(size_t b) { return (b + 63) & ~(size_t)63; }

/* 0 on overflow. */
static int layout(const geo *g, int bwd, lay *L) {
    size_t fl = 0, db = 0, ix = 0, sh = 0;
    int64_t G = g->G, nl = g->n * g->lsel;
    int ok = 1;
    /* everything here is at most a few products of sizes dsc_nsa_sizes_get
       already checked, so double arithmetic with a final bound suffices */
    /* the transposed slc keys (and values): the per-token kernels' only */
    double tr = g->slc_gemm ? 0.0
                            : (double)g->H * (double)(g->dk + (bwd ? g->dv : 0)) * (double)g->ldt;
    double tot = 0;
    if (!bwd) {
        db = (size_t)(QB * g->nblk + g->n);
        ix = (size_t)(3 * g->n);
        fl = (size_t)(QB * g->cols + G * nl);
        if (g->m) fl += (size_t)(CR * g->m + g->m);
        sh = (size_t)(2 * g->P) * sizeof(double);
        tot = (double)QB * (double)g->cols + (double)G * (double)nl + tr;
    } else {
        ix = (size_t)(2 * g->n);
        fl = (size_t)(3 * QB * g->cols + QB * g->dv + QB * G * 3 + 2 * G * nl + G * g->dv);
        if (g->m) fl += (size_t)(2 * g->Tc * g->m + g->m);
        double per = (double)g->nsets * (double)g->T + (double)g->Tc;
        tot = (double)g->chunks * per * (double)g->H * (double)(g->dk + g->dv);
        sh = al64((size_t)tot * sizeof(float));
        tot += 2.0 * QB * (double)g->cols + tr;
    }
    if (tot * 8 * (double)g->threads > 9e18) ok = 0;
    L->kt_at = al64(sh);
    L->shared = L->kt_at + al64((size_t)tr * sizeof(float));
    L->thread = al64(db * sizeof(double) + ix * sizeof(int64_t) + fl * sizeof(float));
    return ok;
}

/* ---- row kernels ---- */

/* Row s[0, len) of raw scores becomes softmax(scale s) over the visible
   columns [a, b) and 0 elsewhere; returns the log-sum-exp (-inf, all 0,
   when nothing is visible: no 0/0). */
ROW static double softmax_row(float *s, int64_t len, int64_t a, int64_t b, float scale) {
    if (b <= a) {
        memset(s, 0, (size_t)len * sizeof *s);
        return -INFINITY;
    }
    float *x = s + a;
    int64_t n = b - a;
    float mx;
    double sum = dsc_row_exp_sum(x, n, scale, &mx);
    float inv = (float)(1.0 / sum);
    for (int64_t j = 0; j < n; j++) x[j] *= inv;
    if (a > 0) memset(s, 0, (size_t)a * sizeof *s);
    if (len > b) memset(s + b, 0, (size_t)(len - b) * sizeof *s);
    return (double)mx + log(sum);
}

/* The backward's row: P = exp(scale S - lse) on [a, b), then
   dS = scale P (dP - D) (dP given in ds); both 0 outside [a, b). With dpa
   (the selection alignment's extra dL/dP over the row's columns, or NULL)
   dP += dpa and D += sum P dpa. */
ROW static void bwd_row(float *p, float *ds, int64_t len, int64_t a, int64_t b, float lse,
                        float D, float scale, const float *dpa) {
    if (b <= a) {
        memset(p, 0, (size_t)len * sizeof *p);
        memset(ds, 0, (size_t)len * sizeof *ds);
        return;
    }
    float *x = p + a, *y = ds + a;
    int64_t n = b - a;
    for (int64_t j = 0; j < n; j++) x[j] = x[j] * scale - lse;
    dsc_k_exp(NULL, x, x, n);
    if (dpa) {
        double da = 0;
        for (int64_t j = 0; j < n; j++) {
            da += (double)x[j] * dpa[a + j];
            y[j] += dpa[a + j];
        }
        D += (float)da;
    }
    for (int64_t j = 0; j < n; j++) y[j] = scale * x[j] * (y[j] - D);
    if (a > 0) {
        memset(p, 0, (size_t)a * sizeof *p);
        memset(ds, 0, (size_t)a * sizeof *ds);
    }
    if (len > b) {
        memset(p + b, 0, (size_t)(len - b) * sizeof *p);
        memset(ds + b, 0, (size_t)(len - b) * sizeof *ds);
    }
}

/* score[j] += w(i, j) p[i] for i < nv (dsc_nsa_map_scores' sum, same order
   per j): block i = k P + r lands in selection blocks k (weight wt[r]) and
   k + 1 (weight wt[P + r], 0 unless it straddles). Both stay <= the row's
   current block, as a visible block ends at or before t. */
static void map_row(const geo *g, const double *wt, const float *p, int64_t nv, double *score) {
    int64_t P = g->P;
    for (int64_t i0 = 0, k = 0; i0 < nv; i0 += P, k++) {
        int64_t e = min64(P, nv - i0);
        for (int64_t r = 0; r < e; r++) {
            double pi = p[i0 + r];
            score[k] += wt[r] * pi;
            if (wt[P + r] != 0) score[k + 1] += wt[P + r] * pi;
        }
    }
}

/* dsc_nsa_topn's rule in one scan: forced 0, cur-1, cur, then the best
   remaining candidates kept in a list sorted by (score desc, id asc) (a new
   score enters only if strictly better than the last, and goes behind
   equal ones, so ties go to the lower id as there). A NaN score defers to
   dsc_nsa_topn itself. bs, bi: n entries of scratch. */
static void topn_fast(const dsc_nsa_config *c, int64_t t, const double *score, int32_t *sel,
                      double *bs, int64_t *bi) {
    int64_t cur = t / c->l_sel, want = min64(c->n, cur + 1), k = 0;
    sel[k++] = 0;
    if (cur >= 2) sel[k++] = (int32_t)(cur - 1);
    if (cur >= 1) sel[k++] = (int32_t)cur;
    int64_t dyn = want - k, cnt = 0;
    if (dyn > 0) {
        for (int64_t j = 1; j < cur - 1; j++) {
            double s = score[j];
            if (isnan(s)) {
                dsc_nsa_topn(c, t, score, sel);
                return;
            }
            if (cnt == dyn && !(s > bs[cnt - 1])) continue;
            int64_t pos = cnt < dyn ? cnt++ : dyn - 1;
            while (pos > 0 && bs[pos - 1] < s) {
                bs[pos] = bs[pos - 1];
                bi[pos] = bi[pos - 1];
                pos--;
            }
            bs[pos] = s;
            bi[pos] = j;
        }
        for (int64_t s = 0; s < cnt; s++) sel[k++] = (int32_t)bi[s];
    }
    dsc_nsa_sel_finish(c, sel, k);
}

/* The selected keys of query t, KV head selection sh, as runs of adjacent
   raw rows: ra[i], rl[i]; the current block clipped at t. Returns the run
   count; *L the key count. */
static int64_t sel_runs(const geo *g, int64_t t, const int32_t *sh, int64_t *ra, int64_t *rl,
                        int64_t *L) {
    int64_t nr = 0, tot = 0;
    for (int64_t s = 0; s < g->n; s++) {
        if (sh[s] < 0) continue;
        int64_t a = (int64_t)sh[s] * g->lsel, len = min64(g->lsel, t - a + 1);
        if (nr > 0 && ra[nr - 1] + rl[nr - 1] == a)
            rl[nr - 1] += len;
        else
            ra[nr] = a, rl[nr] = len, nr++;
        tot += len;
    }
    *L = tot;
    return nr;
}

/* ---- per-thread scratch ---- */

typedef struct {
    double *score, *bs;
    int64_t *bi, *ra, *rl;
    float *S, *S2, *Ss, *Ss2, *dOb, *D, *dObg, *dpa, *mlp;
    double prof[DSC_NSA_FAST_NT];
} tws;

static void tws_fwd(const geo *g, char *base, tws *w) {
    memset(w, 0, sizeof *w);
    w->score = (double *)base;
    w->bs = w->score + QB * g->nblk;
    w->bi = (int64_t *)(w->bs + g->n);
    w->ra = w->bi + g->n;
    w->rl = w->ra + g->n;
    w->S = (float *)(w->rl + g->n);
    w->Ss = w->S + QB * g->cols;
    w->mlp = w->Ss + g->G * g->n * g->lsel;
}

static void tws_bwd(const geo *g, char *base, tws *w) {
    memset(w, 0, sizeof *w);
    int64_t nl = g->n * g->lsel;
    w->ra = (int64_t *)base;
    w->rl = w->ra + g->n;
    w->S = (float *)(w->rl + g->n);
    w->S2 = w->S + QB * g->cols;
    w->dOb = w->S2 + QB * g->cols;
    w->D = w->dOb + QB * g->dv;
    w->Ss = w->D + QB * g->G * 3;
    w->Ss2 = w->Ss + g->G * nl;
    w->dObg = w->Ss2 + g->G * nl;
    w->dpa = w->dObg + g->G * g->dv;
    w->mlp = w->dpa + QB * g->cols;
}

static int thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* ---- compression ---- */

/* One side of the MLP for KV head h, blocks [i0, i1): hid = W1 . vec(X+PE)
   as l GEMMs over the block's rows (row r of block i is raw row i*d + r:
   a strided matrix, read in place), then y = W2 . silu(hid). */
static void mlp_fwd_item(const geo *g, const float *x, int64_t ld, int64_t din, const float *pe,
                         const float *w1, const float *w2, float *y, float *hid, int64_t h,
                         int64_t i0, int64_t i1, float *buf) {
    int64_t l = g->c->l, d = g->c->d, m = g->m, H = g->H, rows = i1 - i0;
    const float *W1 = w1 + h * m * l * din, *W2 = w2 + h * din * m, *PE = pe + h * l * din;
    float *hh = hid + (i0 * H + h) * m, *bias = buf + CR * m;
    for (int64_t r = 0; r < l; r++)
        dsc_k_sgemm_nt(NULL, rows, m, din, x + (i0 * d + r) * ld + h * din, d * ld, W1 + r * din,
                       l * din, hh, H * m, r > 0);
    for (int64_t a = 0; a < m; a++) {   /* W1 . vec(PE), the same for every block */
        double s = 0;
        for (int64_t k = 0; k < l * din; k++) s += (double)W1[a * l * din + k] * PE[k];
        bias[a] = (float)s;
    }
    for (int64_t i = 0; i < rows; i++)
        for (int64_t a = 0; a < m; a++) {
            float z = hh[i * H * m + a] += bias[a];
            buf[i * m + a] = (float)((double)z / (1.0 + exp(-(double)z)));
        }
    dsc_k_sgemm_nt(NULL, rows, din, m, buf, m, W2, m, y + (i0 * H + h) * din, H * din, 0);
}

static void compress(const geo *g, const dsc_nsa_in_f32 *in, const dsc_nsa_params_f32 *p,
                     dsc_nsa_saved_f32 *sv, char *scratch, const lay *L) {
    int64_t Tc = g->Tc, nr = (Tc + CR - 1) / CR;
    if (Tc == 0) return;
    const int nt = g->threads;
    (void)nt;
    if (!g->m) {
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
        for (int64_t r = 0; r < nr; r++)
            dsc_nsa_compress_f32(g->c, r * CR, min64(Tc, (r + 1) * CR), &in->kv, p, sv->k_cmp,
                                 sv->v_cmp, NULL, NULL);
        return;
    }
    int64_t items = 2 * g->H * nr;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int64_t it = 0; it < items; it++) {
        int side = (int)(it / (g->H * nr));
        int64_t h = it / nr % g->H, r = it % nr;
        tws w;
        tws_fwd(g, scratch + L->shared + (size_t)thread_id() * L->thread, &w);
        int64_t i0 = r * CR, i1 = min64(Tc, i0 + CR);
        if (side == 0)
            mlp_fwd_item(g, g->k[DSC_NSA_CMP], g->ldk, g->dk, p->pe_k, p->w1_k, p->w2_k,
                         sv->k_cmp, sv->hid_k, h, i0, i1, w.mlp);
        else
            mlp_fwd_item(g, g->v[DSC_NSA_CMP], g->ldv, g->dv, p->pe_v, p->w1_v, p->w2_v,
                         sv->v_cmp, sv->hid_v, h, i0, i1, w.mlp);
    }
}

/* ---- the selected branch's products, by G (SLC_GEMM_G) ---- */

/* S[g][off_u + j] = Q_g . K[ra_u + j] (K rows of stride ldk; KT its
   transposed copy, for the kernels) */
static void slc_scores(const geo *g, const float *Q, int64_t d, const float *K, int64_t ldk,
                       const float *KT, int64_t nr, const int64_t *ra, const int64_t *rl,
                       float *S, int64_t lds) {
    if (!g->slc_gemm) {
        dsc_nsa_slc_scores(g->G, d, Q, d, KT, g->ldt, nr, ra, rl, S, lds);
        return;
    }
    for (int64_t u = 0, off = 0; u < nr; off += rl[u], u++)
        dsc_k_sgemm_nt(NULL, g->G, rl[u], d, Q, d, K + ra[u] * ldk, ldk, S + off, lds, 0);
}

/* O[g] (= or +=) sum_j P[g][j] V[row_j] */
static void slc_pv(const geo *g, int64_t d, const float *P, int64_t lds, const float *V,
                   int64_t ldv, int64_t nr, const int64_t *ra, const int64_t *rl, float *O,
                   int64_t ldo, int accumulate) {
    if (!g->slc_gemm) {
        dsc_nsa_slc_pv(g->G, d, P, lds, V, ldv, nr, ra, rl, O, ldo, accumulate);
        return;
    }
    for (int64_t u = 0, off = 0; u < nr; off += rl[u], u++)
        dsc_k_sgemm_nn(NULL, g->G, d, rl[u], P + off, lds, V + ra[u] * ldv, ldv, O, ldo,
                       accumulate || u > 0);
}

/* A[row_j] += sum_g P[g][j] X[g] */
static void slc_outer(const geo *g, int64_t d, const float *P, int64_t lds, const float *X,
                      int64_t nr, const int64_t *ra, const int64_t *rl, float *A, int64_t lda) {
    if (!g->slc_gemm) {
        dsc_nsa_slc_outer(g->G, d, P, lds, X, d, nr, ra, rl, A, lda);
        return;
    }
    for (int64_t u = 0, off = 0; u < nr; off += rl[u], u++)
        dsc_k_sgemm_tn(NULL, rl[u], d, g->G, P + off, lds, X, d, A + ra[u] * lda, lda, 1);
}

/* ---- forward work item: KV head h, query tile [t0, t0 + rows) ---- */

static void fwd_item(const geo *g, const dsc_nsa_in_f32 *in, float *o, dsc_nsa_saved_f32 *sv,
                     int want_sel, const double *wt, int64_t h, int64_t tile, tws *w) {
    const dsc_nsa_config *c = g->c;
    int64_t t0 = g->r0 + tile * QB, rows = min64(QB, g->T - t0), tl = t0 + rows - 1;
    int64_t u0 = t0 - g->r0;   /* t0's row in q, g, o and the saved buffers */
    int64_t H = g->H, Hq = g->Hq, G = g->G, dk = g->dk, dv = g->dv, n = g->n;
    int64_t ldob = Hq * 3 * dv, ldl = Hq * 3, nb = tl / g->lsel + 1;
    float scale = g->scale, *S = w->S;
    double t_a = now_s(), t_b;

    /* cmp: per head of the group, S = Q K_cmp^T masked by block completion,
       softmax, O = P V_cmp; P summed into the group's selection scores */
    int64_t nvm = dsc_nsa_n_visible(c, tl);
    const dsc_nsa_align *al = g->al;
    int want_score = want_sel || al;
    if (want_score) memset(w->score, 0, (size_t)(rows * nb) * sizeof(double));
    for (int64_t gi = 0; gi < G; gi++) {
        int64_t qh = h * G + gi;
        float *ob = sv->o_br + ((u0 * Hq + qh) * 3 + DSC_NSA_CMP) * dv;
        float *ls = sv->lse + (u0 * Hq + qh) * 3 + DSC_NSA_CMP;
        if (nvm == 0) {
            for (int64_t r = 0; r < rows; r++) {
                ls[r * ldl] = -INFINITY;
                memset(ob + r * ldob, 0, (size_t)dv * sizeof *ob);
            }
            continue;
        }
        dsc_k_sgemm_nt(NULL, rows, nvm, dk, in->q + u0 * g->ldq + qh * dk, g->ldq,
                       sv->k_cmp + h * dk, H * dk, S, nvm, 0);
        for (int64_t r = 0; r < rows; r++)
            ls[r * ldl] = (float)softmax_row(S + r * nvm, nvm, 0,
                                             dsc_nsa_n_visible(c, t0 + r), scale);
        dsc_k_sgemm_nn(NULL, rows, dv, nvm, S, nvm, sv->v_cmp + h * dv, H * dv, ob, ldob, 0);
        if (want_score)
            for (int64_t r = 0; r < rows; r++)
                map_row(g, wt, S + r * nvm, dsc_nsa_n_visible(c, t0 + r), w->score + r * nb);
    }
    t_b = now_s();
    w->prof[DSC_NSA_FAST_T_CMP] += t_b - t_a;
    t_a = t_b;

    /* selection: top-n of the group scores, per token */
    if (want_sel)
        for (int64_t r = 0; r < rows; r++)
            topn_fast(c, t0 + r, w->score + r * nb, sv->sel + ((u0 + r) * H + h) * n, w->bs,
                      w->bi);
    t_b = now_s();
    w->prof[DSC_NSA_FAST_T_SELECT] += t_b - t_a;
    t_a = t_b;

    /* slc: per token, the G heads' queries (G, d_k) against the runs of
       selected keys (nsa_slc.h: the transposed keys, the values in place) */
    const float *Ks = g->k[DSC_NSA_SLC] + h * dk, *Vs = g->v[DSC_NSA_SLC] + h * dv;
    const float *KTh = g->kt ? g->kt + h * dk * g->ldt : NULL;
    int64_t ldS = n * g->lsel;
    for (int64_t r = 0; r < rows; r++) {
        int64_t t = t0 + r, ur = u0 + r, L;
        int64_t nr = sel_runs(g, t, sv->sel + (ur * H + h) * n, w->ra, w->rl, &L);
        const float *Qg = in->q + ur * g->ldq + h * G * dk;
        slc_scores(g, Qg, dk, Ks, g->ldk, KTh, nr, w->ra, w->rl, w->Ss, ldS);
        for (int64_t gi = 0; gi < G; gi++)
            sv->lse[(ur * Hq + h * G + gi) * 3 + DSC_NSA_SLC] =
                (float)softmax_row(w->Ss + gi * ldS, L, 0, L, scale);
        float *ob = sv->o_br + ((ur * Hq + h * G) * 3 + DSC_NSA_SLC) * dv;
        slc_pv(g, dv, w->Ss, ldS, Vs, g->ldv, nr, w->ra, w->rl, ob, 3 * dv, 0);
        if (al)
            dsc_nsa_align_row(c, t, sv->sel + (ur * H + h) * n, w->score + r * nb, w->Ss, ldS, G,
                              al->tgt_given, al->tgt + (ur * H + h) * n,
                              al->gs + (ur * H + h) * n, al->kl + ur * H + h);
    }
    t_b = now_s();
    w->prof[DSC_NSA_FAST_T_SLC] += t_b - t_a;
    t_a = t_b;

    /* win: banded causal attention, keys [max(0, t0-w+1), t0 + rows) */
    int64_t k0 = max64(0, t0 - g->w + 1), nk = t0 + rows - k0;
    const float *Kw = g->k[DSC_NSA_WIN] + h * dk + k0 * g->ldk;
    const float *Vw = g->v[DSC_NSA_WIN] + h * dv + k0 * g->ldv;
    for (int64_t gi = 0; gi < G; gi++) {
        int64_t qh = h * G + gi;
        dsc_k_sgemm_nt(NULL, rows, nk, dk, in->q + u0 * g->ldq + qh * dk, g->ldq, Kw, g->ldk, S,
                       nk, 0);
        float *ls = sv->lse + (u0 * Hq + qh) * 3 + DSC_NSA_WIN;
        for (int64_t r = 0; r < rows; r++) {
            int64_t t = t0 + r;
            ls[r * ldl] =
                (float)softmax_row(S + r * nk, nk, max64(0, t - g->w + 1) - k0, t + 1 - k0, scale);
        }
        dsc_k_sgemm_nn(NULL, rows, dv, nk, S, nk, Vw, g->ldv,
                       sv->o_br + ((u0 * Hq + qh) * 3 + DSC_NSA_WIN) * dv, ldob, 0);
    }
    t_b = now_s();
    w->prof[DSC_NSA_FAST_T_WIN] += t_b - t_a;
    t_a = t_b;

    /* o = g_cmp o_cmp + g_slc o_slc + g_win o_win */
    for (int64_t r = 0; r < rows; r++) {
        int64_t u = u0 + r;
        for (int64_t gi = 0; gi < G; gi++) {
            int64_t qh = h * G + gi;
            const float *gg = in->g + u * g->ldg + qh * 3;
            const float *ob = sv->o_br + (u * Hq + qh) * 3 * dv;
            float *ot = o + u * g->ldo + qh * dv;
            double g0 = gg[0], g1 = gg[1], g2 = gg[2];
            for (int64_t e = 0; e < dv; e++)
                ot[e] = (float)(g0 * ob[e] + g1 * ob[dv + e] + g2 * ob[2 * dv + e]);
        }
    }
    w->prof[DSC_NSA_FAST_T_REST] += now_s() - t_a;
}

/* ---- backward ---- */

/* The chunk accumulators (fp32, zeroed per call): per chunk, nsets raw
   (T, H*d_k) + (T, H*d_v) pairs (slc and win; one shared set when
   shared_kv), then the compressed (T_c, H*d_k) + (T_c, H*d_v). */
typedef struct {
    float *base;
    size_t per_chunk;     /* floats */
} accs;

static float *acc_k(const geo *g, const accs *a, int c, int set) {
    return a->base + (size_t)c * a->per_chunk + (size_t)(set * g->T * g->H * (g->dk + g->dv));
}
static float *acc_v(const geo *g, const accs *a, int c, int set) {
    return acc_k(g, a, c, set) + g->T * g->H * g->dk;
}
static float *acc_kc(const geo *g, const accs *a, int c) { return acc_k(g, a, c, g->nsets); }
static float *acc_vc(const geo *g, const accs *a, int c) {
    return acc_kc(g, a, c) + g->Tc * g->H * g->dk;
}

/* The tile-wise branches' backward (cmp or win) for head qh: P and dS
   tiles over keys [k0, k0 + nk) of K, V (rows stride ldk / ldv; K, V
   point at key k0), visible range per row from vis(); dQ into dq, dK / dV
   into the accumulators aK, aV (row stride H*d; pointing at key k0).
   dpa: NULL, or (cmp) the selection alignment's extra dL/dP of the tile's
   rows (row stride nk), the same for every head of the group. */
static void tile_bwd(const geo *g, const dsc_nsa_in_f32 *in, const dsc_nsa_saved_f32 *sv,
                     const float *dO, float *dq, int b, int64_t qh, int64_t t0, int64_t rows,
                     const float *K, int64_t ldk, const float *V, int64_t ldv, int64_t k0,
                     int64_t nk, float *aK, float *aV, const float *dpa, tws *w) {
    int64_t dk = g->dk, dv = g->dv, Hq = g->Hq, G = g->G, H = g->H;
    float *P = w->S, *dS = w->S2, scale = g->scale;
    const float *Qt = in->q + t0 * g->ldq + qh * dk;
    for (int64_t r = 0; r < rows; r++) {   /* dO_b = g_b dO */
        int64_t t = t0 + r;
        float gb = in->g[t * g->ldg + qh * 3 + b];
        const float *src = dO + t * g->ldo + qh * dv;
        for (int64_t e = 0; e < dv; e++) w->dOb[r * dv + e] = gb * src[e];
    }
    dsc_k_sgemm_nt(NULL, rows, nk, dk, Qt, g->ldq, K, ldk, P, nk, 0);
    dsc_k_sgemm_nt(NULL, rows, nk, dv, w->dOb, dv, V, ldv, dS, nk, 0);
    for (int64_t r = 0; r < rows; r++) {
        int64_t t = t0 + r, a, e;
        if (b == DSC_NSA_CMP)
            a = 0, e = dsc_nsa_n_visible(g->c, t);
        else
            a = max64(0, t - g->w + 1) - k0, e = t + 1 - k0;
        bwd_row(P + r * nk, dS + r * nk, nk, a, e, sv->lse[(t * Hq + qh) * 3 + b],
                w->D[(r * G + qh % G) * 3 + b], scale, dpa ? dpa + r * nk : NULL);
    }
    if (dq) dsc_k_sgemm_nn(NULL, rows, dk, nk, dS, nk, K, ldk, dq + t0 * g->ldq + qh * dk, g->ldq, 1);
    dsc_k_sgemm_tn(NULL, nk, dk, rows, dS, nk, Qt, g->ldq, aK, H * dk, 1);
    dsc_k_sgemm_tn(NULL, nk, dv, rows, P, nk, w->dOb, dv, aV, H * dv, 1);
}

static void bwd_tile(const geo *g, const dsc_nsa_in_f32 *in, const dsc_nsa_saved_f32 *sv,
                     const float *dO, dsc_nsa_grads_f32 *gr, const accs *ac, int ch, int64_t h,
                     int64_t tile, tws *w) {
    const dsc_nsa_config *c = g->c;
    int64_t t0 = tile * QB, rows = min64(QB, g->T - t0), tl = t0 + rows - 1;
    int64_t H = g->H, Hq = g->Hq, G = g->G, dk = g->dk, dv = g->dv, n = g->n;
    float scale = g->scale;
    double t_a = now_s(), t_b;

    /* gates: dg_b = dO . o_b; D_b = rowsum(dO_b o_b) = g_b dg_b */
    for (int64_t r = 0; r < rows; r++) {
        int64_t t = t0 + r;
        for (int64_t gi = 0; gi < G; gi++) {
            int64_t qh = h * G + gi;
            const float *d = dO + t * g->ldo + qh * dv;
            for (int b = 0; b < 3; b++) {
                const float *ob = sv->o_br + ((t * Hq + qh) * 3 + b) * dv;
                double s = 0;
                for (int64_t e = 0; e < dv; e++) s += (double)d[e] * ob[e];
                if (gr->dg) gr->dg[t * g->ldg + qh * 3 + b] += (float)s;
                w->D[(r * G + gi) * 3 + b] = (float)(in->g[t * g->ldg + qh * 3 + b] * s);
            }
        }
    }
    t_b = now_s();
    w->prof[DSC_NSA_FAST_T_REST] += t_b - t_a;
    t_a = t_b;

    /* cmp (with the selection alignment's dL/dP, built once for the
       group's heads: it depends on the KV head's selection only) */
    int64_t nvm = dsc_nsa_n_visible(c, tl);
    const float *dpa = NULL;
    if (nvm > 0 && g->al && g->al->scale != 0.0) {
        int any = 0;
        for (int64_t r = 0; r < rows; r++) {
            int64_t t = t0 + r;
            any |= dsc_nsa_align_dp(c, t, sv->sel + (t * H + h) * n, g->al->gs + (t * H + h) * n,
                                    g->al->scale, w->dpa + r * nvm, dsc_nsa_n_visible(c, t));
        }
        if (any) dpa = w->dpa;
    }
    if (nvm > 0)
        for (int64_t gi = 0; gi < G; gi++)
            tile_bwd(g, in, sv, dO, gr->dq, DSC_NSA_CMP, h * G + gi, t0, rows, sv->k_cmp + h * dk,
                     H * dk, sv->v_cmp + h * dv, H * dv, 0, nvm, acc_kc(g, ac, ch) + h * dk,
                     acc_vc(g, ac, ch) + h * dv, dpa, w);
    t_b = now_s();
    w->prof[DSC_NSA_FAST_T_CMP] += t_b - t_a;
    t_a = t_b;

    /* win */
    int sw = g->nsets - 1;   /* win's accumulator set: 0 shared, else 1 */
    int64_t k0 = max64(0, t0 - g->w + 1), nk = t0 + rows - k0;
    for (int64_t gi = 0; gi < G; gi++)
        tile_bwd(g, in, sv, dO, gr->dq, DSC_NSA_WIN, h * G + gi, t0, rows,
                 g->k[DSC_NSA_WIN] + k0 * g->ldk + h * dk, g->ldk,
                 g->v[DSC_NSA_WIN] + k0 * g->ldv + h * dv, g->ldv, k0, nk,
                 acc_k(g, ac, ch, sw) + k0 * H * dk + h * dk,
                 acc_v(g, ac, ch, sw) + k0 * H * dv + h * dv, NULL, w);
    t_b = now_s();
    w->prof[DSC_NSA_FAST_T_WIN] += t_b - t_a;
    t_a = t_b;

    /* slc: per token, recompute S = Q_g K_sel^T, P = exp(S - lse),
       dP = dO_b V^T, dS; dQ += dS K, dK += dS^T Q_g, dV += P^T dO_b
       (nsa_slc.h; S and dP from the transposed keys and values) */
    const float *Ks = g->k[DSC_NSA_SLC] + h * dk, *Vs = g->v[DSC_NSA_SLC] + h * dv;
    const float *KTh = g->kt ? g->kt + h * dk * g->ldt : NULL;
    const float *VTh = g->vt ? g->vt + h * dv * g->ldt : NULL;
    float *aK = acc_k(g, ac, ch, 0) + h * dk, *aV = acc_v(g, ac, ch, 0) + h * dv;
    int64_t ldS = n * g->lsel;
    for (int64_t r = 0; r < rows; r++) {
        int64_t t = t0 + r, L;
        int64_t nr = sel_runs(g, t, sv->sel + (t * H + h) * n, w->ra, w->rl, &L);
        const float *Qg = in->q + t * g->ldq + h * G * dk;
        for (int64_t gi = 0; gi < G; gi++) {
            int64_t qh = h * G + gi;
            float gb = in->g[t * g->ldg + qh * 3 + DSC_NSA_SLC];
            const float *src = dO + t * g->ldo + qh * dv;
            for (int64_t e = 0; e < dv; e++) w->dObg[gi * dv + e] = gb * src[e];
        }
        slc_scores(g, Qg, dk, Ks, g->ldk, KTh, nr, w->ra, w->rl, w->Ss, ldS);
        slc_scores(g, w->dObg, dv, Vs, g->ldv, VTh, nr, w->ra, w->rl, w->Ss2, ldS);
        for (int64_t gi = 0; gi < G; gi++)
            bwd_row(w->Ss + gi * ldS, w->Ss2 + gi * ldS, L, 0, L,
                    sv->lse[(t * Hq + h * G + gi) * 3 + DSC_NSA_SLC],
                    w->D[(r * G + gi) * 3 + DSC_NSA_SLC], scale, NULL);
        if (gr->dq)
            slc_pv(g, dk, w->Ss2, ldS, Ks, g->ldk, nr, w->ra, w->rl,
                   gr->dq + t * g->ldq + h * G * dk, dk, 1);
        slc_outer(g, dk, w->Ss2, ldS, Qg, nr, w->ra, w->rl, aK, H * dk);
        slc_outer(g, dv, w->Ss, ldS, w->dObg, nr, w->ra, w->rl, aV, H * dv);
    }
    w->prof[DSC_NSA_FAST_T_SLC] += now_s() - t_a;
}

/* phi's backward for one side and KV head h (MLP): dy = the compressed
   gradient (T_c, H*din) -> raw rows of dx (stride ld; may be NULL) and the
   parameter gradients (each may be NULL). buf: 2 T_c m + m floats. */
static void mlp_bwd_item(const geo *g, const float *x, int64_t ld, int64_t din, const float *pe,
                         const float *w1, const float *w2, const float *hid, const float *dy,
                         float *dx, int64_t ldx, float *gpe, float *gw1, float *gw2, int64_t h,
                         float *buf) {
    int64_t l = g->c->l, d = g->c->d, m = g->m, H = g->H, Tc = g->Tc;
    const float *W1 = w1 + h * m * l * din, *W2 = w2 + h * din * m, *PE = pe + h * l * din;
    float *act = buf, *dh = buf + Tc * m, *cs = dh + Tc * m;
    /* act = silu(hid); dh = silu'(hid) (dy W2) */
    dsc_k_sgemm_nn(NULL, Tc, m, din, dy + h * din, H * din, W2, m, dh, m, 0);
    for (int64_t i = 0; i < Tc; i++)
        for (int64_t a = 0; a < m; a++) {
            double z = hid[(i * H + h) * m + a], sg = 1.0 / (1.0 + exp(-z));
            act[i * m + a] = (float)(z * sg);
            dh[i * m + a] = (float)(dh[i * m + a] * (sg + z * sg * (1 - sg)));
        }
    for (int64_t a = 0; a < m; a++) {
        double s = 0;
        for (int64_t i = 0; i < Tc; i++) s += dh[i * m + a];
        cs[a] = (float)s;
    }
    /* dW2 += dy^T act */
    if (gw2) dsc_k_sgemm_tn(NULL, din, m, Tc, dy + h * din, H * din, act, m, gw2 + h * din * m, m, 1);
    /* dW1[:, r*din:] += dh^T X_r + colsum(dh) PE[r] */
    if (gw1) {
        float *G1 = gw1 + h * m * l * din;
        for (int64_t r = 0; r < l; r++)
            dsc_k_sgemm_tn(NULL, m, din, Tc, dh, m, x + r * ld + h * din, d * ld, G1 + r * din,
                           l * din, 1);
        for (int64_t a = 0; a < m; a++)
            for (int64_t k = 0; k < l * din; k++) G1[a * l * din + k] += cs[a] * PE[k];
    }
    /* dX_r = dh W1[:, r*din:], added to raw rows i*d + r (distinct for a
       fixed r, so one GEMM per r with row stride d*ldx) */
    if (dx)
        for (int64_t r = 0; r < l; r++)
            dsc_k_sgemm_nn(NULL, Tc, din, m, dh, m, W1 + r * din, l * din, dx + r * ldx + h * din,
                           d * ldx, 1);
    /* dPE = sum_i dX_i = colsum(dh) W1 */
    if (gpe)
        for (int64_t k = 0; k < l * din; k++) {
            double s = 0;
            for (int64_t a = 0; a < m; a++) s += (double)cs[a] * W1[a * l * din + k];
            gpe[h * l * din + k] += (float)s;
        }
}

/* ---- validation ---- */

#define NEED(ptr, what)                                                              \
    do {                                                                             \
        if (!(ptr)) return dsc_err_set(err, DSC_ERR_ARG, "nsa_fast: %s is NULL", what); \
    } while (0)

static dsc_status check_common(const dsc_nsa_config *c, int64_t T, const dsc_nsa_in_f32 *in,
                               const dsc_nsa_params_f32 *p, int need_phi,
                               const dsc_nsa_saved_f32 *sv, const dsc_nsa_fast_opts *o,
                               void *scratch, dsc_nsa_sizes *sz,
                               dsc_err *err) {
    static const char *kn[3] = {"in->kv.k[CMP]", "in->kv.k[SLC]", "in->kv.k[WIN]"};
    static const char *vn[3] = {"in->kv.v[CMP]", "in->kv.v[SLC]", "in->kv.v[WIN]"};
    DSC_TRY(dsc_nsa_sizes_get(c, T, sz, err));
    NEED(o, "opts");
    if (o->threads < 1 || o->chunks < 0 || o->chunks > DSC_NSA_FAST_MAX_CHUNKS)
        return dsc_err_set(err, DSC_ERR_ARG, "nsa_fast: opts threads = %d (>= 1), chunks = %d "
                           "(0 .. %d)", o->threads, o->chunks, DSC_NSA_FAST_MAX_CHUNKS);
    NEED(in, "in");
    NEED(in->q, "in->q");
    NEED(in->g, "in->g");
    for (int b = 0; b < (c->shared_kv ? 1 : 3); b++) {
        NEED(in->kv.k[b], kn[b]);
        NEED(in->kv.v[b], vn[b]);
    }
    NEED(sv, "saved");
    NEED(sv->o_br, "saved->o_br");
    NEED(sv->lse, "saved->lse");
    NEED(sv->sel, "saved->sel");
    if (sz->n_cmp > 0) {
        NEED(sv->k_cmp, "saved->k_cmp");
        NEED(sv->v_cmp, "saved->v_cmp");
    }
    if (c->phi == DSC_NSA_PHI_MLP && need_phi) {
        NEED(p, "params (MLP compression)");
        NEED(p->pe_k, "params->pe_k");
        NEED(p->w1_k, "params->w1_k");
        NEED(p->w2_k, "params->w2_k");
        NEED(p->pe_v, "params->pe_v");
        NEED(p->w1_v, "params->w1_v");
        NEED(p->w2_v, "params->w2_v");
        if (sz->n_cmp > 0) {
            NEED(sv->hid_k, "saved->hid_k");
            NEED(sv->hid_v, "saved->hid_v");
        }
    }
    NEED(scratch, "scratch");
    return DSC_OK;
}

/* As the reference's check: ids -1 or in [0, t/l'], distinct. */
static dsc_status check_sel(const dsc_nsa_config *c, int64_t T, const int32_t *sel,
                            dsc_err *err) {
    for (int64_t t = 0; t < T; t++)
        for (int64_t h = 0; h < c->H_kv; h++) {
            const int32_t *sh = sel + (t * c->H_kv + h) * c->n;
            for (int64_t s = 0; s < c->n; s++) {
                int dup = 0;
                for (int64_t u = 0; u < s; u++) dup |= sh[u] >= 0 && sh[u] == sh[s];
                if (sh[s] < -1 || sh[s] > t / c->l_sel || dup)
                    return dsc_err_set(err, DSC_ERR_ARG,
                                       "nsa_fast: given selection sel[t=%lld][h=%lld][%lld] = %d "
                                       "is not a distinct block in [0, %lld] or -1",
                                       (long long)t, (long long)h, (long long)s, (int)sh[s],
                                       (long long)(t / c->l_sel));
            }
        }
    return DSC_OK;
}

static void geo_io(geo *g, const dsc_nsa_in_f32 *in, int64_t ldo) {
    const dsc_nsa_config *c = g->c;
    g->ldq = in->ldq ? in->ldq : c->H_q * c->d_k;
    g->ldk = in->kv.ldk ? in->kv.ldk : c->H_kv * c->d_k;
    g->ldv = in->kv.ldv ? in->kv.ldv : c->H_kv * c->d_v;
    g->ldg = in->ldg ? in->ldg : 3 * c->H_q;
    g->ldo = ldo ? ldo : c->H_q * c->d_v;
    for (int b = 0; b < 3; b++) {
        g->k[b] = in->kv.k[c->shared_kv ? 0 : b];
        g->v[b] = in->kv.v[c->shared_kv ? 0 : b];
    }
}

static void prof_add(const dsc_nsa_fast_opts *o, const tws *w) {
    if (!o->prof) return;
#pragma omp critical(dsc_nsa_fast_prof)
    for (int i = 0; i < DSC_NSA_FAST_NT; i++) o->prof[i] += w->prof[i];
}

/* ---- entry points ---- */

dsc_status dsc_nsa_fast_sizes(const dsc_nsa_config *c, int64_t T, const dsc_nsa_fast_opts *o,
                              size_t *fwd_bytes, size_t *bwd_bytes, dsc_err *err) {
    dsc_nsa_sizes sz;
    DSC_TRY(dsc_nsa_sizes_get(c, T, &sz, err));
    NEED(o, "opts");
    if (o->threads < 1 || o->chunks < 0 || o->chunks > DSC_NSA_FAST_MAX_CHUNKS)
        return dsc_err_set(err, DSC_ERR_ARG, "nsa_fast: opts threads = %d (>= 1), chunks = %d "
                           "(0 .. %d)", o->threads, o->chunks, DSC_NSA_FAST_MAX_CHUNKS);
    geo g;
    geo_init(&g, c, T, o);
    lay lf, lb;
    if (!layout(&g, 0, &lf) || !layout(&g, 1, &lb))
        return dsc_err_set(err, DSC_ERR_ARG, "nsa_fast: scratch for T = %lld overflows",
                           (long long)T);
    if (fwd_bytes) *fwd_bytes = lf.shared + (size_t)o->threads * lf.thread;
    if (bwd_bytes) *bwd_bytes = lb.shared + (size_t)o->threads * lb.thread;
    return DSC_OK;
}

/* The overlap weights of compressed block r of a period, in selection
   block 0 (wt[r]) and 1 (wt[P + r]), at the start of the scratch. */
static double *overlap_weights(const dsc_nsa_config *c, const geo *g, char *base) {
    double *wt = (double *)base;
    for (int64_t r = 0; r < g->P; r++) {
        wt[r] = dsc_nsa_overlap_weight(c, r, 0);
        wt[g->P + r] = dsc_nsa_overlap_weight(c, r, 1);
    }
    return wt;
}

/* slc's raw keys (and for the backward values) of every KV head,
   transposed into the shared scratch for dsc_nsa_slc_scores. */
static void slc_transposed(geo *g, char *base, const lay *L, int bwd) {
    if (g->slc_gemm) return;   /* the GEMMs read the keys in place */
    g->kt = (float *)(base + L->kt_at);
    g->vt = bwd ? g->kt + g->H * g->dk * g->ldt : NULL;
    dsc_nsa_slc_transpose(0, g->T, g->H * g->dk, g->k[DSC_NSA_SLC], g->ldk, g->kt, g->ldt);
    if (bwd)
        dsc_nsa_slc_transpose(0, g->T, g->H * g->dv, g->v[DSC_NSA_SLC], g->ldv, g->vt, g->ldt);
}

/* The forward's work items (KV head, query tile) over the threads, the
   last tiles (most compressed keys) first, for the balance. */
static void fwd_tiles(const geo *g, const dsc_nsa_in_f32 *in, float *o, dsc_nsa_saved_f32 *sv,
                      int want_sel, const double *wt, char *base, const lay *L,
                      const dsc_nsa_fast_opts *opts) {
    int64_t items = g->H * g->ntiles;
    const int nt = g->threads;
    (void)nt;
#pragma omp parallel num_threads(nt)
    {
        tws w;
        tws_fwd(g, base + L->shared + (size_t)thread_id() * L->thread, &w);
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < items; it++)
            fwd_item(g, in, o, sv, want_sel, wt, it % g->H, g->ntiles - 1 - it / g->H, &w);
        prof_add(opts, &w);
    }
}

dsc_status dsc_nsa_fast_fwd_f32(const dsc_nsa_config *c, int64_t T, const dsc_nsa_in_f32 *in,
                                const dsc_nsa_params_f32 *p, float *o, int64_t ldo,
                                dsc_nsa_saved_f32 *sv, int flags, const dsc_nsa_fast_opts *opts,
                                void *scratch, dsc_err *err) {
    dsc_nsa_sizes sz;
    DSC_TRY(check_common(c, T, in, p, 1, sv, opts, scratch, &sz, err));
    NEED(o, "o");
    if (flags & DSC_NSA_SEL_GIVEN) DSC_TRY(check_sel(c, T, sv->sel, err));
    if (opts->align) {
        NEED(opts->align->tgt, "opts->align->tgt");
        NEED(opts->align->gs, "opts->align->gs");
        NEED(opts->align->kl, "opts->align->kl");
    }
    geo g;
    geo_init(&g, c, T, opts);
    geo_io(&g, in, ldo);
    lay L;
    layout(&g, 0, &L);
    char *base = scratch;
    const double *wt = overlap_weights(c, &g, base);
    slc_transposed(&g, base, &L, 0);
    double t0 = now_s();
    compress(&g, in, p, sv, base, &L);
    if (opts->prof) opts->prof[DSC_NSA_FAST_T_COMPRESS] += (now_s() - t0) * g.threads;
    fwd_tiles(&g, in, o, sv, !(flags & DSC_NSA_SEL_GIVEN), wt, base, &L, opts);
    return DSC_OK;
}

dsc_status dsc_nsa_fast_bwd_f32(const dsc_nsa_config *c, int64_t T, const dsc_nsa_in_f32 *in,
                                const dsc_nsa_params_f32 *p, const dsc_nsa_saved_f32 *sv,
                                const float *dO, int64_t ldo, dsc_nsa_grads_f32 *gr,
                                const dsc_nsa_fast_opts *opts, void *scratch, dsc_err *err) {
    dsc_nsa_sizes sz;
    DSC_TRY(check_common(c, T, in, p, 1, sv, opts, scratch, &sz, err));
    NEED(dO, "dO");
    NEED(gr, "grads");
    DSC_TRY(check_sel(c, T, sv->sel, err));
    if (opts->align) {
        NEED(opts->align->gs, "opts->align->gs");
        if (!isfinite(opts->align->scale))
            return dsc_err_set(err, DSC_ERR_ARG, "nsa_fast: opts->align->scale = %g is not finite",
                               opts->align->scale);
    }
    geo g;
    geo_init(&g, c, T, opts);
    geo_io(&g, in, ldo);
    lay L;
    layout(&g, 1, &L);
    char *base = scratch;
    slc_transposed(&g, base, &L, 1);
    int64_t H = g.H, dk = g.dk, dv = g.dv, Tc = g.Tc;
    accs ac = {(float *)base,
               (size_t)((g.nsets * T + Tc) * H * (dk + dv))};
    const int nt = g.threads, C = g.chunks;
    (void)nt;
    double ta = now_s();
#pragma omp parallel for num_threads(nt) schedule(static, 1)
    for (int ch = 0; ch < C; ch++) memset(ac.base + ch * ac.per_chunk, 0, ac.per_chunk * sizeof(float));
    double t_zero = now_s() - ta;

    /* the tiles, by chunk: chunk ch runs tiles ch, ch + C, ... in order */
    int64_t items = (int64_t)C * H;
#pragma omp parallel num_threads(nt)
    {
        tws w;
        tws_bwd(&g, base + L.shared + (size_t)thread_id() * L.thread, &w);
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < items; it++) {
            int ch = (int)(it / H);
            int64_t h = it % H;
            for (int64_t tile = ch; tile < g.ntiles; tile += C)
                bwd_tile(&g, in, sv, dO, gr, &ac, ch, h, tile, &w);
        }
        prof_add(opts, &w);
    }

    /* reduce the chunks in chunk order: raw sets into dk / dv, the
       compressed ones into chunk 0's */
    ta = now_s();
    int cmp_dst = c->shared_kv ? 0 : DSC_NSA_CMP;
    for (int set = 0; set < g.nsets; set++) {
        int b = c->shared_kv ? 0 : (set == 0 ? DSC_NSA_SLC : DSC_NSA_WIN);
        float *dK = gr->dk[b], *dV = gr->dv[b];
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int64_t t = 0; t < T; t++) {
            const float *src[DSC_NSA_FAST_MAX_CHUNKS];
            for (int side = 0; side < 2; side++) {
                float *dst = side ? dV : dK;
                int64_t wd = H * (side ? dv : dk), ld = side ? g.ldv : g.ldk;
                if (!dst) continue;
                for (int ch = 0; ch < C; ch++)
                    src[ch] = (side ? acc_v(&g, &ac, ch, set) : acc_k(&g, &ac, ch, set)) + t * wd;
                for (int64_t e = 0; e < wd; e++) {
                    float s = 0;
                    for (int ch = 0; ch < C; ch++) s += src[ch][e];
                    dst[t * ld + e] += s;
                }
            }
        }
    }
    float *dkc = acc_kc(&g, &ac, 0), *dvc = acc_vc(&g, &ac, 0);
    if (Tc > 0) {
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int64_t i = 0; i < Tc; i++)
            for (int ch = 1; ch < C; ch++) {
                const float *sk = acc_kc(&g, &ac, ch), *svv = acc_vc(&g, &ac, ch);
                for (int64_t e = 0; e < H * dk; e++) dkc[i * H * dk + e] += sk[i * H * dk + e];
                for (int64_t e = 0; e < H * dv; e++) dvc[i * H * dv + e] += svv[i * H * dv + e];
            }
    }
    if (opts->prof) opts->prof[DSC_NSA_FAST_T_REST] += (now_s() - ta + t_zero) * nt;

    /* phi's backward into the cmp branch's raw k / v and the parameters */
    ta = now_s();
    float *dKr = gr->dk[cmp_dst], *dVr = gr->dv[cmp_dst];
    if (Tc > 0 && !g.m) {
        /* mean: raw row t gets 1/l of every block that contains it */
        int64_t l = c->l, d = c->d;
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int64_t t = 0; t < T; t++) {
            int64_t ia = t >= l ? (t - l) / d + 1 : 0, ib = min64(Tc - 1, t / d);
            if (ia > ib) continue;
            for (int side = 0; side < 2; side++) {
                float *dst = side ? dVr : dKr;
                const float *src = side ? dvc : dkc;
                int64_t wd = H * (side ? dv : dk), ld = side ? g.ldv : g.ldk;
                if (!dst) continue;
                for (int64_t e = 0; e < wd; e++) {
                    double s = 0;
                    for (int64_t i = ia; i <= ib; i++) s += src[i * wd + e];
                    dst[t * ld + e] += (float)(s / (double)l);
                }
            }
        }
    } else if (Tc > 0) {
        int64_t items2 = 2 * H;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
        for (int64_t it = 0; it < items2; it++) {
            int side = (int)(it / H);
            int64_t h = it % H;
            tws w;
            tws_bwd(&g, base + L.shared + (size_t)thread_id() * L.thread, &w);
            if (side == 0)
                mlp_bwd_item(&g, g.k[DSC_NSA_CMP], g.ldk, dk, p->pe_k, p->w1_k, p->w2_k, sv->hid_k,
                             dkc, dKr, g.ldk, gr->pe_k, gr->w1_k, gr->w2_k, h, w.mlp);
            else
                mlp_bwd_item(&g, g.v[DSC_NSA_CMP], g.ldv, dv, p->pe_v, p->w1_v, p->w2_v, sv->hid_v,
                             dvc, dVr, g.ldv, gr->pe_v, gr->w1_v, gr->w2_v, h, w.mlp);
        }
    }
    if (opts->prof) opts->prof[DSC_NSA_FAST_T_COMPRESS] += (now_s() - ta) * nt;
    return DSC_OK;
}

dsc_status dsc_nsa_fast_fwd_rows_f32(const dsc_nsa_config *c, int64_t t0, int64_t P,
                                     const dsc_nsa_in_f32 *in, float *o, int64_t ldo,
                                     dsc_nsa_saved_f32 *sv, const dsc_nsa_fast_opts *opts,
                                     void *scratch, dsc_err *err) {
    if (t0 < 0 || P < 1)
        return dsc_err_set(err, DSC_ERR_ARG, "nsa_fast: fwd_rows t0 = %lld (>= 0), P = %lld (>= 1)",
                           (long long)t0, (long long)P);
    dsc_nsa_sizes sz;
    DSC_TRY(check_common(c, t0 + P, in, NULL, 0, sv, opts, scratch, &sz, err));
    NEED(o, "o");
    geo g;
    geo_init(&g, c, t0 + P, opts);
    g.al = NULL;   /* the alignment is the whole-sequence forward's only */
    geo_io(&g, in, ldo);
    g.r0 = t0;
    g.ntiles = (P + QB - 1) / QB;
    lay L;
    layout(&g, 0, &L);
    char *base = scratch;
    slc_transposed(&g, base, &L, 0);
    fwd_tiles(&g, in, o, sv, 1, overlap_weights(c, &g, base), base, &L, opts);
    return DSC_OK;
}
