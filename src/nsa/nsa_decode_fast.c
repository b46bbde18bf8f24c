/*
 * nsa_decode_fast.c - the fast fp32 path of NSA decode (design and
 * contracts in nsa_decode_fast.h; the oracle is nsa_decode_impl.inc).
 *
 * Layout: checks and the state's bookkeeping (append, compress), the row
 * kernels of a step (G heads x key rows), the step, the prefill.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "kernels/row_exp.h"
#include "kernels/kernels.h"
#include "nsa/nsa_decode_fast.h"
#include "nsa/nsa_fast.h"
#include "util/rows.h"
#include "util/util.h"

/* Plain-C row loops for the vectoriser (-O3, SIMD clones: util.h). */
#define ROW DSC_VEC_CLONES
#define CR 64   /* compressed blocks per compression work item */

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

#define NEED(ptr, what)                                                                 \
    do {                                                                                \
        if (!(ptr)) return dsc_err_set(err, DSC_ERR_ARG, "nsa decode: %s is NULL", what); \
    } while (0)

/* ---- checks and bookkeeping ---- */

/* The state's raw K/V as the operator's kv view (packed rows). */
static dsc_nsa_kv_f32 state_kv(const dsc_nsa_decode_f32 *st) {
    dsc_nsa_kv_f32 kv = {{st->k[0], st->k[1], st->k[2]}, st->c.H_kv * st->c.d_k,
                         {st->v[0], st->v[1], st->v[2]}, st->c.H_kv * st->c.d_v};
    return kv;
}

/* Compresses the blocks the first len tokens complete that the state does
   not hold yet, with the reference's compress piece (so the stored blocks
   are the ones its steps store), split over block ranges: each block is
   computed alone, so the split changes no bit. */
static void compress_to(dsc_nsa_decode_f32 *st, const dsc_nsa_params_f32 *p, int64_t len,
                        int threads) {
    int64_t nc = dsc_nsa_decode_n_cmp(&st->c, len), n0 = st->n_cmp;
    if (nc <= n0) return;
    dsc_nsa_kv_f32 kv = state_kv(st);
    int64_t items = (nc - n0 + CR - 1) / CR;
    int nt = (int)min64(threads, items);
    (void)nt;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1)
    for (int64_t it = 0; it < items; it++) {
        int64_t i0 = n0 + it * CR, i1 = min64(nc, i0 + CR);
        dsc_nsa_compress_f32(&st->c, i0, i1, &kv, p, st->k_cmp, st->v_cmp, st->hid_k, st->hid_v);
    }
    st->n_cmp = nc;
}

/* ---- row kernels: the G query heads of a group against key rows ---- */

/* Eight fp32 lanes (GCC vector extension: one AVX register, two SSE ones
   on the baseline clone); loads and stores through memcpy (unaligned). */
typedef float v8f __attribute__((vector_size(32)));

#define LD8(x, p) memcpy(&(x), (p), sizeof(v8f))   /* x = p[0 .. 8) */
#define HSUM8(x) (((x)[0] + (x)[1]) + ((x)[2] + (x)[3])) + (((x)[4] + (x)[5]) + ((x)[6] + (x)[7]))

/* S[gi*ldS + j] = Q[gi] . K[j] for gi < G, j < nr: Q (G, dk) packed, K rows
   of stride ldk. Four heads share each key row's load; each dot product
   runs over 8 fp32 lanes. */
ROW static void qk_rows(const float *Q, int64_t G, int64_t dk, const float *K, int64_t ldk,
                        int64_t nr, float *S, int64_t ldS) {
    int64_t d8 = dk & ~(int64_t)7;
    for (int64_t j = 0; j < nr; j++) {
        const float *kr = K + j * ldk;
        int64_t gi = 0;
        for (; gi + 4 <= G; gi += 4) {
            const float *q0 = Q + gi * dk, *q1 = q0 + dk, *q2 = q1 + dk, *q3 = q2 + dk;
            v8f a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
            for (int64_t e = 0; e < d8; e += 8) {
                v8f k, x0, x1, x2, x3;
                LD8(k, kr + e);
                LD8(x0, q0 + e);
                LD8(x1, q1 + e);
                LD8(x2, q2 + e);
                LD8(x3, q3 + e);
                a0 += x0 * k;
                a1 += x1 * k;
                a2 += x2 * k;
                a3 += x3 * k;
            }
            float s0 = HSUM8(a0), s1 = HSUM8(a1), s2 = HSUM8(a2), s3 = HSUM8(a3);
            for (int64_t e = d8; e < dk; e++) {
                s0 += q0[e] * kr[e];
                s1 += q1[e] * kr[e];
                s2 += q2[e] * kr[e];
                s3 += q3[e] * kr[e];
            }
            S[gi * ldS + j] = s0;
            S[(gi + 1) * ldS + j] = s1;
            S[(gi + 2) * ldS + j] = s2;
            S[(gi + 3) * ldS + j] = s3;
        }
        for (; gi < G; gi++) {
            const float *q0 = Q + gi * dk;
            v8f a0 = {0};
            for (int64_t e = 0; e < d8; e += 8) {
                v8f k, x0;
                LD8(k, kr + e);
                LD8(x0, q0 + e);
                a0 += x0 * k;
            }
            float s0 = HSUM8(a0);
            for (int64_t e = d8; e < dk; e++) s0 += q0[e] * kr[e];
            S[gi * ldS + j] = s0;
        }
    }
}

/* O[gi*ldO + e] += sum_j P[gi*ldP + j] V[j][e] for gi < G, e < dv: each
   value row loaded once for the G heads, 8 lanes over e. */
ROW static void pv_rows(const float *Pm, int64_t ldP, int64_t G, const float *V, int64_t ldv,
                        int64_t nr, int64_t dv, float *O, int64_t ldO) {
    int64_t d8 = dv & ~(int64_t)7;
    for (int64_t j = 0; j < nr; j++) {
        const float *vr = V + j * ldv;
        for (int64_t gi = 0; gi < G; gi++) {
            float pj = Pm[gi * ldP + j];
            float *og = O + gi * ldO;
            for (int64_t e = 0; e < d8; e += 8) {
                v8f x, y;
                LD8(x, og + e);
                LD8(y, vr + e);
                x += pj * y;
                memcpy(og + e, &x, sizeof x);
            }
            for (int64_t e = d8; e < dv; e++) og[e] += pj * vr[e];
        }
    }
}

/* x[0, n) (n >= 1) becomes softmax(scale x) (exp by dsc_k_exp, the sum in
   double), as the fast operator's rows. */
ROW static void softmax_n(float *x, int64_t n, float scale) {
    float mx;
    float inv = (float)(1.0 / dsc_row_exp_sum(x, n, scale, &mx));
    for (int64_t j = 0; j < n; j++) x[j] *= inv;
}

/* ---- one step ---- */

/* Where a step's scratch lives in st->ws (bytes; 0: does not fit). */
typedef struct {
    double *score, *wt;
    int64_t *ra, *rl;
    float *ob, *S;
    int64_t gs;   /* query heads per pass over the keys (<= G) */
} step_ws;

static int step_plan(const dsc_nsa_decode_f32 *st, int64_t t, int64_t cols, step_ws *w) {
    const dsc_nsa_config *c = &st->c;
    dsc_nsa_sizes sz;
    if (dsc_nsa_sizes_get(c, st->cap, &sz, NULL) != DSC_OK) return 0;
    int64_t G = c->H_q / c->H_kv, nb = t / c->l_sel + 1, P = c->l_sel / c->d;
    size_t used = (size_t)(nb + 2 * P) * sizeof(double) + (size_t)(2 * c->n) * sizeof(int64_t) +
                  (size_t)(G * 3 * c->d_v) * sizeof(float);
    used = (used + 63) & ~(size_t)63;
    if (used + (size_t)cols * sizeof(float) > sz.row_scratch_bytes) return 0;
    int64_t gs = (int64_t)((sz.row_scratch_bytes - used) / ((size_t)cols * sizeof(float)));
    char *b = (char *)st->ws;
    w->score = (double *)b;
    w->wt = w->score + nb;
    w->ra = (int64_t *)(w->wt + 2 * P);
    w->rl = w->ra + c->n;
    w->ob = (float *)(w->rl + c->n);
    w->S = (float *)(b + used);
    w->gs = min64(G, gs);
    return 1;
}

/* The fast row of token t (its raw rows and compressed blocks are in the
   state): selection into st->sel, output o_t. */
static void fast_row(dsc_nsa_decode_f32 *st, int64_t t, const float *q_t, const float *g_t,
                     float *o_t, step_ws *w) {
    const dsc_nsa_config *c = &st->c;
    int64_t H = c->H_kv, G = c->H_q / H, dk = c->d_k, dv = c->d_v, lp = c->l_sel;
    int64_t nv = dsc_nsa_n_visible(c, t), nb = t / lp + 1, P = lp / c->d, gs = w->gs;
    int64_t ldk = H * dk, ldv = H * dv;
    float scale = (float)dsc_nsa_scale(c);
    for (int64_t r = 0; r < P; r++) {
        w->wt[r] = dsc_nsa_overlap_weight(c, r, 0);
        w->wt[P + r] = dsc_nsa_overlap_weight(c, r, 1);
    }
    for (int64_t h = 0; h < H; h++) {
        const float *Qh = q_t + h * G * dk;
        float *ob = w->ob;   /* (G, 3, dv): the branch outputs of the group */
        memset(ob, 0, (size_t)(G * 3 * dv) * sizeof *ob);
        memset(w->score, 0, (size_t)nb * sizeof *w->score);

        /* cmp: scores over the visible compressed keys, softmax, P V_cmp;
           each head's P mapped onto the selection blocks (group score) */
        for (int64_t g0 = 0; g0 < G && nv > 0; g0 += gs) {
            int64_t gn = min64(gs, G - g0);
            qk_rows(Qh + g0 * dk, gn, dk, st->k_cmp + h * dk, ldk, nv, w->S, nv);
            for (int64_t gi = 0; gi < gn; gi++) {
                float *p = w->S + gi * nv;
                softmax_n(p, nv, scale);
                for (int64_t i0 = 0, k = 0; i0 < nv; i0 += P, k++)   /* map (nsa_fast.c) */
                    for (int64_t r = 0; r < P && i0 + r < nv; r++) {
                        double pi = p[i0 + r];
                        w->score[k] += w->wt[r] * pi;
                        if (w->wt[P + r] != 0) w->score[k + 1] += w->wt[P + r] * pi;
                    }
            }
            pv_rows(w->S, nv, gn, st->v_cmp + h * dv, ldv, nv, dv, ob + g0 * 3 * dv, 3 * dv);
        }

        /* selection: the reference's top-n rule on the group scores */
        int32_t *sel = st->sel + h * c->n;
        dsc_nsa_topn(c, t, w->score, sel);

        /* slc: runs of adjacent selected blocks (the current one clipped at
           t), scored in place, one softmax over all of them */
        int64_t nr = 0, L = 0;
        for (int64_t s = 0; s < c->n; s++) {
            if (sel[s] < 0) continue;
            int64_t a = (int64_t)sel[s] * lp, len = min64(lp, t - a + 1);
            if (nr > 0 && w->ra[nr - 1] + w->rl[nr - 1] == a)
                w->rl[nr - 1] += len;
            else
                w->ra[nr] = a, w->rl[nr] = len, nr++;
            L += len;
        }
        const float *Ks = st->k[DSC_NSA_SLC] + h * dk, *Vs = st->v[DSC_NSA_SLC] + h * dv;
        for (int64_t g0 = 0; g0 < G; g0 += gs) {
            int64_t gn = min64(gs, G - g0);
            for (int64_t u = 0, off = 0; u < nr; off += w->rl[u], u++)
                qk_rows(Qh + g0 * dk, gn, dk, Ks + w->ra[u] * ldk, ldk, w->rl[u], w->S + off, L);
            for (int64_t gi = 0; gi < gn; gi++) softmax_n(w->S + gi * L, L, scale);
            for (int64_t u = 0, off = 0; u < nr; off += w->rl[u], u++)
                pv_rows(w->S + off, L, gn, Vs + w->ra[u] * ldv, ldv, w->rl[u], dv,
                        ob + g0 * 3 * dv + dv, 3 * dv);
        }

        /* win: keys max(0, t-w+1) .. t */
        int64_t a = max64(0, t - c->w + 1), nw = t + 1 - a;
        const float *Kw = st->k[DSC_NSA_WIN] + a * ldk + h * dk;
        const float *Vw = st->v[DSC_NSA_WIN] + a * ldv + h * dv;
        for (int64_t g0 = 0; g0 < G; g0 += gs) {
            int64_t gn = min64(gs, G - g0);
            qk_rows(Qh + g0 * dk, gn, dk, Kw, ldk, nw, w->S, nw);
            for (int64_t gi = 0; gi < gn; gi++) softmax_n(w->S + gi * nw, nw, scale);
            pv_rows(w->S, nw, gn, Vw, ldv, nw, dv, ob + g0 * 3 * dv + 2 * dv, 3 * dv);
        }

        /* o = g_cmp o_cmp + g_slc o_slc + g_win o_win */
        for (int64_t gi = 0; gi < G; gi++) {
            int64_t qh = h * G + gi;
            const float *gg = g_t + qh * 3, *og = ob + gi * 3 * dv;
            double g0 = gg[0], g1 = gg[1], g2 = gg[2];
            float *ot = o_t + qh * dv;
            for (int64_t e = 0; e < dv; e++)
                ot[e] = (float)(g0 * og[e] + g1 * og[dv + e] + g2 * og[2 * dv + e]);
        }
    }
}

/* The widest score row of token t: visible compressed keys, selected keys
   (at most n blocks, at most t + 1 tokens), window keys. */
static int64_t step_cols(const dsc_nsa_config *c, int64_t t) {
    int64_t slc = min64(c->n * c->l_sel, t + 1), win = min64(c->w, t + 1);
    return max64(1, max64(dsc_nsa_n_visible(c, t), max64(slc, win)));
}

/* Appends token t's raw rows (already checked). */
static void append_row(dsc_nsa_decode_f32 *st, int64_t t, const float *const k_t[3],
                       const float *const v_t[3]) {
    const dsc_nsa_config *c = &st->c;
    int64_t rk = c->H_kv * c->d_k, rv = c->H_kv * c->d_v;
    for (int b = 0; b < (c->shared_kv ? 1 : 3); b++) {
        memcpy(st->k[b] + t * rk, k_t[b], (size_t)rk * sizeof(float));
        memcpy(st->v[b] + t * rv, v_t[b], (size_t)rv * sizeof(float));
    }
}

dsc_status dsc_nsa_decode_fast_step(dsc_nsa_decode_f32 *st, const dsc_nsa_params_f32 *p,
                                    const float *q_t, const float *const k_t[3],
                                    const float *const v_t[3], const float *g_t, float *o_t,
                                    int32_t *sel_t, dsc_err *err) {
    static const char *kn[3] = {"k_t[CMP]", "k_t[SLC]", "k_t[WIN]"};
    static const char *vn[3] = {"v_t[CMP]", "v_t[SLC]", "v_t[WIN]"};
    NEED(st, "state");
    const dsc_nsa_config *c = &st->c;
    if (st->len >= st->cap)
        return dsc_err_set(err, DSC_ERR_ARG,
                           "nsa decode: the state is full (len = capacity n_ctx = %lld); "
                           "truncate it or make a larger one",
                           (long long)st->cap);
    NEED(q_t, "q_t");
    NEED(g_t, "g_t");
    NEED(o_t, "o_t");
    NEED(k_t, "k_t");
    NEED(v_t, "v_t");
    for (int b = 0; b < (c->shared_kv ? 1 : 3); b++) {
        NEED(k_t[b], kn[b]);
        NEED(v_t[b], vn[b]);
    }
    DSC_TRY(dsc_nsa_decode_check_params_f32(c, p, err));
    int64_t t = st->len;
    step_ws w;
    if (!step_plan(st, t, step_cols(c, t), &w))   /* tiny state: the reference */
        return dsc_nsa_decode_step_f32(st, p, q_t, k_t, v_t, g_t, o_t, sel_t, NULL, err);
    append_row(st, t, k_t, v_t);
    compress_to(st, p, t + 1, 1);
    fast_row(st, t, q_t, g_t, o_t, &w);
    if (sel_t) memcpy(sel_t, st->sel, (size_t)(c->H_kv * c->n) * sizeof(int32_t));
    st->len = t + 1;
    return DSC_OK;
}

/* ---- prefill ---- */

/* The P rows by steps (P small, or no memory for the fast operator). */
static dsc_status prefill_steps(dsc_nsa_decode_f32 *st, const dsc_nsa_params_f32 *p, int64_t P,
                                const dsc_nsa_in_f32 *in, int64_t ldq, int64_t ldg, float *o,
                                int64_t ldo, int32_t *sel, dsc_err *err) {
    const dsc_nsa_config *c = &st->c;
    int64_t ldk = in->kv.ldk ? in->kv.ldk : c->H_kv * c->d_k;
    int64_t ldv = in->kv.ldv ? in->kv.ldv : c->H_kv * c->d_v;
    for (int64_t i = 0; i < P; i++) {
        const float *kt[3] = {NULL, NULL, NULL}, *vt[3] = {NULL, NULL, NULL};
        for (int b = 0; b < (c->shared_kv ? 1 : 3); b++) {
            kt[b] = in->kv.k[b] + i * ldk;
            vt[b] = in->kv.v[b] + i * ldv;
        }
        DSC_TRY(dsc_nsa_decode_fast_step(st, p, in->q + i * ldq, kt, vt, in->g + i * ldg,
                                         o + i * ldo, sel ? sel + i * c->H_kv * c->n : NULL,
                                         err));
    }
    return DSC_OK;
}

/* A prefill's scratch for T tokens in all, in chunks of CH rows: the fast
   operator's forward bytes (fb, 64-aligned), then one chunk's o_br, lse
   and sel; *need: the total. */
static dsc_status prefill_layout(const dsc_nsa_config *c, int64_t T, int64_t CH, int threads,
                                 size_t *fb, size_t *need, dsc_err *err) {
    dsc_nsa_fast_opts op = {threads, 0, NULL, NULL};
    size_t fwd_bytes = 0;
    DSC_TRY(dsc_nsa_fast_sizes(c, T, &op, &fwd_bytes, NULL, err));
    size_t n_obr = (size_t)(CH * c->H_q * 3 * c->d_v), n_lse = (size_t)(CH * c->H_q * 3);
    size_t n_sel = (size_t)(CH * c->H_kv * c->n);
    *fb = (fwd_bytes + 63) & ~(size_t)63;
    *need = *fb + (n_obr + n_lse) * sizeof(float) + n_sel * sizeof(int32_t) + 64;
    return DSC_OK;
}

dsc_status dsc_nsa_decode_fast_prefill_bytes(const dsc_nsa_config *c, int64_t cap, int threads,
                                             size_t *bytes, dsc_err *err) {
    size_t fb = 0;
    *bytes = 0;
    if (cap < 2) return DSC_OK;   /* a prefill of one token runs as a step */
    return prefill_layout(c, cap, min64(cap, DSC_NSA_DFAST_CHUNK), threads, &fb, bytes, err);
}

dsc_status dsc_nsa_decode_fast_prefill(dsc_nsa_decode_f32 *st, const dsc_nsa_params_f32 *p,
                                       int64_t P, const dsc_nsa_in_f32 *in, float *o,
                                       int64_t ldo, int32_t *sel, int threads, void *scratch,
                                       size_t scratch_bytes, dsc_err *err) {
    static const char *kn[3] = {"in->kv.k[CMP]", "in->kv.k[SLC]", "in->kv.k[WIN]"};
    static const char *vn[3] = {"in->kv.v[CMP]", "in->kv.v[SLC]", "in->kv.v[WIN]"};
    NEED(st, "state");
    const dsc_nsa_config *c = &st->c;
    if (P < 0 || P > st->cap - st->len)
        return dsc_err_set(err, DSC_ERR_ARG,
                           "nsa decode: prefill of P = %lld tokens onto len = %lld does not fit "
                           "the capacity n_ctx = %lld",
                           (long long)P, (long long)st->len, (long long)st->cap);
    if (threads < 1)
        return dsc_err_set(err, DSC_ERR_ARG, "nsa decode: threads = %d (>= 1)", threads);
    if (P == 0) return DSC_OK;
    NEED(in, "in");
    NEED(in->q, "in->q");
    NEED(in->g, "in->g");
    NEED(o, "o");
    int nkv = c->shared_kv ? 1 : 3;
    for (int b = 0; b < nkv; b++) {
        NEED(in->kv.k[b], kn[b]);
        NEED(in->kv.v[b], vn[b]);
    }
    DSC_TRY(dsc_nsa_decode_check_params_f32(c, p, err));

    int64_t t0 = st->len, H = c->H_kv, rk = H * c->d_k, rv = H * c->d_v;
    int64_t ldq = in->ldq ? in->ldq : c->H_q * c->d_k, ldg = in->ldg ? in->ldg : c->H_q * 3;
    int64_t ldk = in->kv.ldk ? in->kv.ldk : rk, ldv = in->kv.ldv ? in->kv.ldv : rv;
    if (!ldo) ldo = c->H_q * c->d_v;
    if (P == 1) return prefill_steps(st, p, P, in, ldq, ldg, o, ldo, sel, err);

    /* scratch: the fast operator's for T = t0 + P, then one chunk's o_br,
       lse, sel: the caller's when it is large enough, else one malloc */
    dsc_nsa_fast_opts op = {threads, 0, NULL, NULL};
    size_t fb = 0, need = 0;
    int64_t CH = min64(P, DSC_NSA_DFAST_CHUNK);
    DSC_TRY(prefill_layout(c, t0 + P, CH, threads, &fb, &need, err));
    size_t n_obr = (size_t)(CH * c->H_q * 3 * c->d_v), n_lse = (size_t)(CH * c->H_q * 3);
    char *own = NULL, *mem = scratch;
    if (!mem || scratch_bytes < need) mem = own = malloc(need);
    if (!mem) return prefill_steps(st, p, P, in, ldq, ldg, o, ldo, sel, err);

    for (int64_t i = 0; i < P; i++)
        for (int b = 0; b < nkv; b++) {
            memcpy(st->k[b] + (t0 + i) * rk, in->kv.k[b] + i * ldk, (size_t)rk * sizeof(float));
            memcpy(st->v[b] + (t0 + i) * rv, in->kv.v[b] + i * ldv, (size_t)rv * sizeof(float));
        }
    compress_to(st, p, t0 + P, threads);

    dsc_nsa_saved_f32 sv = {(float *)(mem + fb), NULL, st->k_cmp, st->v_cmp, NULL, NULL, NULL};
    sv.lse = sv.o_br + n_obr;
    sv.sel = (int32_t *)(sv.lse + n_lse);
    dsc_status s = DSC_OK;
    for (int64_t i = 0; i < P && s == DSC_OK; i += CH) {
        int64_t np = min64(CH, P - i);
        dsc_nsa_in_f32 rin = {in->q + i * ldq, ldq, state_kv(st), in->g + i * ldg, ldg};
        s = dsc_nsa_fast_fwd_rows_f32(c, t0 + i, np, &rin, o + i * ldo, ldo, &sv, &op, mem, err);
        if (s == DSC_OK && sel)
            memcpy(sel + i * H * c->n, sv.sel, (size_t)(np * H * c->n) * sizeof(int32_t));
        if (s == DSC_OK && i + np == P)   /* the state keeps the last row's selection */
            memcpy(st->sel, sv.sel + (np - 1) * H * c->n, (size_t)(H * c->n) * sizeof(int32_t));
    }
    free(own);
    /* cannot fail after the checks above; never leave a half-made state */
    DSC_CHECK(s == DSC_OK);
    st->len = t0 + P;
    return DSC_OK;
}
