/*
 * idx_target.c - fast fp32 kernels of the indexer's training path
 * (contracts in idx_target.h; the references they are tested against are
 * dsc_op_idx_kl / dsc_op_idx_recall and attn_dsa.c's double loops).
 *
 * Built with -O3: the row loops are plain C for the vectoriser in
 * DSC_VEC_CLONES functions (util.h), as in tk.c. Threads own whole rows
 * (query tiles for the attention, query rows for the KL and the recall),
 * so nothing is summed across threads.
 */
#include <math.h>
#include <string.h>

#include "kernels/row_exp.h"
#include "kernels/kernels.h"
#include "train/idx_target.h"
#include "train/tk.h"
#include "util/rows.h"
#include "util/util.h"

#define IT_ROW DSC_VEC_CLONES

/* Elements of a row handled at once through stack buffers (KL). */
#define CHUNK 512

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* c ? a : b by bit masks: the loops below select between values computed
   unconditionally, and GCC (trapping math) will not if-convert a ternary
   whose arm holds a conversion or an fp operation, so it would not
   vectorise them. */
static inline float fsel(int c, float a, float b) {
    uint32_t ua, ub, mk = (uint32_t)0 - (uint32_t)(c != 0);
    memcpy(&ua, &a, sizeof ua);
    memcpy(&ub, &b, sizeof ub);
    uint32_t u = (ua & mk) | (ub & ~mk);
    float r;
    memcpy(&r, &u, sizeof r);
    return r;
}

/* Whether any of x[0..n) is visible (> -inf): a loop without an exit, so
   that it vectorises. */
IT_ROW static int any_visible(const float *x, int64_t n) {
    int any = 0;
    for (int64_t j = 0; j < n; j++) any |= x[j] > -INFINITY;
    return any;
}

/* The visible entries (I > -inf) of a row of m lie in [*lo, *hi): the scans
   skip the -inf runs at both ends (a dense causal row: its future) in
   blocks of 256 and 16, then entry by entry. */
static void vis_span(const float *I, int64_t m, int64_t *lo, int64_t *hi) {
    int64_t a = 0, b = m;
    while (b >= 256 && !any_visible(I + b - 256, 256)) b -= 256;
    while (b >= 16 && !any_visible(I + b - 16, 16)) b -= 16;
    while (b > 0 && !(I[b - 1] > -INFINITY)) b--;
    while (b - a >= 256 && !any_visible(I + a, 256)) a += 256;
    while (b - a >= 16 && !any_visible(I + a, 16)) a += 16;
    while (a < b && !(I[a] > -INFINITY)) a++;
    *lo = a, *hi = b;
}

/* Threads for `work` element-operations: forking costs microseconds. */
static int threads_for(int n_threads, double work) {
    if (n_threads < 1) n_threads = 1;
    return work < 32768.0 ? 1 : n_threads;
}

/* ---- 1, 2. the attention's lse and head-summed probabilities ---- */

int64_t dsc_idxt_attn_scratch(const dsc_idxt_dims *d, int n_threads) {
    int nt = n_threads < 1 ? 1 : n_threads;
    return (int64_t)nt * DSC_TK_QB * (d->n > 0 ? d->n : 1);
}

/* Rows [i0, i0+rows) of a score tile S (rows, lk), row r seeing keys
   [0, i0+r+1): lse[r] = log sum exp(scale s), as tk.c's softmax_tile. */
IT_ROW static void lse_tile(float *S, float *lse, int64_t rows, int64_t lk, int64_t i0,
                            float scale) {
    for (int64_t r = 0; r < rows; r++) {
        float *s = S + r * lk;
        int64_t vis = i0 + r + 1;
        float mx;
        double sum = dsc_row_exp_sum(s, vis, scale, &mx);
        lse[r] = (float)((double)mx + log(sum));
    }
}

/* P rows [i0, i0+rows) (row stride ldp) get head h's probabilities
   exp(scale s - lse) from the score tile S (rows, lk), as tk.c's
   attn_bwd_tile computes them; first: the first head, which stores (and
   zeroes the columns past the diagonal) instead of adding. */
IT_ROW static void target_tile(float *Pr, int64_t ldp, float *S, const float *lse,
                               int64_t rows, int64_t lk, int64_t i0, float scale, int first) {
    for (int64_t r = 0; r < rows; r++) {
        float *p = S + r * lk, l = lse[r], *out = Pr + r * ldp;
        int64_t vis = i0 + r + 1;
        for (int64_t j = 0; j < vis; j++) p[j] = p[j] * scale - l;
        dsc_k_exp(NULL, p, p, vis);
        if (first) {
            memcpy(out, p, (size_t)vis * sizeof *out);
            memset(out + vis, 0, (size_t)(ldp - vis) * sizeof *out);
        } else {
            for (int64_t j = 0; j < vis; j++) out[j] += p[j];
        }
    }
}

/* Work items: (query tile, head) pairs, the largest tiles first so that
   the dynamic schedule ends balanced. */
void dsc_idxt_attn_lse(float *lse, const float *Q, const float *K, const dsc_idxt_dims *d,
                       float scale, int n_threads, float *ws) {
    int64_t n = d->n, H = d->heads, nb = (n + DSC_TK_QB - 1) / DSC_TK_QB;
    if (n <= 0 || H <= 0) return;
    const int nt = threads_for(n_threads, (double)n * (double)n * (double)H * (double)d->dqk);
    (void)nt; /* only read by the pragma, which NO_OMP builds ignore */
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int64_t it = 0; it < nb * H; it++) {
        int64_t b = nb - 1 - it / H, h = it % H;
        int64_t i0 = b * DSC_TK_QB, rows = min64(DSC_TK_QB, n - i0), lk = i0 + rows;
        float *S = ws + (int64_t)dsc_thread_id() * DSC_TK_QB * n;
        dsc_k_sgemm_nt(NULL, rows, lk, d->dqk, Q + i0 * d->ldq + h * d->dqk, d->ldq,
                       K + h * d->kstride, d->ldk, S, lk, 0);
        lse_tile(S, lse + h * n + i0, rows, lk, i0, scale);
    }
}

/* Fused: one score tile per (query tile, head) serves both; the row's
   exps, already computed for its lse, become the probabilities e / sum. */
IT_ROW static void lse_target_tile(float *Pr, int64_t ldp, float *S, float *lse, int64_t rows,
                                   int64_t lk, int64_t i0, float scale, int first) {
    for (int64_t r = 0; r < rows; r++) {
        float *s = S + r * lk, *out = Pr + r * ldp;
        int64_t vis = i0 + r + 1;
        float mx;
        double sum = dsc_row_exp_sum(s, vis, scale, &mx);
        lse[r] = (float)((double)mx + log(sum));
        float inv = (float)(1.0 / sum);
        if (first) {
            for (int64_t j = 0; j < vis; j++) out[j] = s[j] * inv;
            memset(out + vis, 0, (size_t)(ldp - vis) * sizeof *out);
        } else {
            for (int64_t j = 0; j < vis; j++) out[j] += s[j] * inv;
        }
    }
}

/* Work items: query tiles (each owns its P rows), heads in order inside.
   lse_out NULL: P from the given lse (2.); else the fused 1+2. */
static void target_run(float *lse_out, float *P, const float *Q, const float *K,
                       const float *lse, const dsc_idxt_dims *d, float scale, int n_threads,
                       float *ws) {
    int64_t n = d->n, H = d->heads, nb = (n + DSC_TK_QB - 1) / DSC_TK_QB;
    if (n <= 0) return;
    if (H <= 0) {
        memset(P, 0, (size_t)(n * n) * sizeof *P);
        return;
    }
    const int nt = threads_for(n_threads, (double)n * (double)n * (double)H * (double)d->dqk);
    (void)nt;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int64_t it = 0; it < nb; it++) {
        int64_t b = nb - 1 - it;
        int64_t i0 = b * DSC_TK_QB, rows = min64(DSC_TK_QB, n - i0), lk = i0 + rows;
        float *S = ws + (int64_t)dsc_thread_id() * DSC_TK_QB * n;
        for (int64_t h = 0; h < H; h++) {
            dsc_k_sgemm_nt(NULL, rows, lk, d->dqk, Q + i0 * d->ldq + h * d->dqk, d->ldq,
                           K + h * d->kstride, d->ldk, S, lk, 0);
            if (lse_out)
                lse_target_tile(P + i0 * n, n, S, lse_out + h * n + i0, rows, lk, i0, scale,
                                h == 0);
            else
                target_tile(P + i0 * n, n, S, lse + h * n + i0, rows, lk, i0, scale, h == 0);
        }
    }
}

void dsc_idxt_attn_target(float *P, const float *Q, const float *K, const float *lse,
                          const dsc_idxt_dims *d, float scale, int n_threads, float *ws) {
    target_run(NULL, P, Q, K, lse, d, scale, n_threads, ws);
}

void dsc_idxt_attn_lse_target(float *lse, float *P, const float *Q, const float *K,
                              const dsc_idxt_dims *d, float scale, int n_threads, float *ws) {
    target_run(lse, P, Q, K, NULL, d, scale, n_threads, ws);
}

/* ---- 3. KL ---- */

/* y[i] = log(x[i]) in double for x[i] > 0 finite (normal or subnormal),
   branch-free so that it vectorises: x = 2^e m, m in [sqrt(1/2), sqrt(2)),
   log m = 2 atanh(u), u = (m-1)/(m+1), |u| <= 0.1716, by its series to
   u^17 (the first term left out is < 1e-15 relative). */
static inline void log_f64(double *y, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        int sub = v < 1.17549435e-38f;
        float vs = sub ? v * 16777216.0f : v; /* 2^24: subnormals made normal */
        uint32_t u;
        memcpy(&u, &vs, sizeof u);
        int32_t e = (int32_t)(u >> 23) - 127 - (sub ? 24 : 0);
        uint32_t mb = (u & 0x007fffffu) | 0x3f800000u;
        float mf;
        memcpy(&mf, &mb, sizeof mf);
        double m = mf;
        int big = m > 1.4142135623730951;
        m = big ? 0.5 * m : m;
        double ed = (double)e + (big ? 1.0 : 0.0);
        double t = (m - 1.0) / (m + 1.0), t2 = t * t;
        double p = 1.0 / 17;
        p = 1.0 / 15 + t2 * p;
        p = 1.0 / 13 + t2 * p;
        p = 1.0 / 11 + t2 * p;
        p = 1.0 / 9 + t2 * p;
        p = 1.0 / 7 + t2 * p;
        p = 1.0 / 5 + t2 * p;
        p = 1.0 / 3 + t2 * p;
        y[i] = ed * 0.69314718055994530942 + 2.0 * t * (1.0 + t2 * p);
    }
}

/* Whether a row counts: some visible entry with P > 0, which is z > 0
   for P >= 0 (the contract); typically settled by the first entry. */
static int kl_row_counts(const float *I, const float *P, int64_t m) {
    for (int64_t j = 0; j < m; j++)
        if (I[j] > -INFINITY && P[j] > 0.0f) return 1;
    return 0;
}

/* z = sum of P over the visible entries of a row (returned) and the max
   of its visible I (*mx, -inf when none), over 16 partials each. */
IT_ROW static double kl_row_stats(const float *I, const float *P, int64_t m, float *mx) {
    double s[16] = {0};
    float x[16];
    for (int q = 0; q < 16; q++) x[q] = -INFINITY;
    int64_t j = 0;
    for (; j + 16 <= m; j += 16)
        for (int q = 0; q < 16; q++) {
            int v = I[j + q] > -INFINITY;
            float iv = fsel(v, I[j + q], -INFINITY);
            s[q] += (double)fsel(v, P[j + q], 0.0f);
            x[q] = iv > x[q] ? iv : x[q];
        }
    for (; j < m; j++) {
        int v = I[j] > -INFINITY;
        float iv = fsel(v, I[j], -INFINITY);
        s[0] += (double)fsel(v, P[j], 0.0f);
        x[0] = iv > x[0] ? iv : x[0];
    }
    for (int q = 1; q < 16; q++) x[0] = x[q] > x[0] ? x[q] : x[0];
    *mx = x[0];
    for (int q = 0; q < 8; q++) s[q] += s[q + 8];
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

/*
 * KL of a counted row (mass z) and its gradient. With lse = log sum_V
 * exp(I) and p = P / z:
 *   KL = sum_{V, P > 0} p (log p - (I - lse)) = S / z - log z + lse,
 *   S  = sum_{V, P > 0} P (log P - I)          (sum_V p = 1)
 *   dI += (exp(I - lse) - p) * gscale          on V
 */
IT_ROW static double kl_row(float *dI, const float *I, const float *P, int64_t m,
                            double gscale) {
    float buf[CHUNK];
    double lp[CHUNK];
    float mx;
    double z = kl_row_stats(I, P, m, &mx);
    if (!(z > 0)) return 0.0; /* only with NaN in P (outside the contract) */
    double se = 0.0;
    for (int64_t j0 = 0; j0 < m; j0 += CHUNK) {
        int64_t len = min64(CHUNK, m - j0);
        const float *x = I + j0;
        for (int64_t i = 0; i < len; i++) buf[i] = x[i] > -INFINITY ? x[i] - mx : -INFINITY;
        dsc_k_exp(NULL, buf, buf, len);
        se += dsc_row_sum(buf, len);
    }
    double lse = (double)mx + log(se), invz = 1.0 / z, S = 0.0;
    for (int64_t j0 = 0; j0 < m; j0 += CHUNK) {
        int64_t len = min64(CHUNK, m - j0);
        const float *x = I + j0, *pr = P + j0;
        for (int64_t i = 0; i < len; i++)
            buf[i] = fsel((x[i] > -INFINITY) & (pr[i] > 0.0f), pr[i], 1.0f);
        log_f64(lp, buf, len);
        for (int64_t i = 0; i < len; i++) {
            int use = (x[i] > -INFINITY) & (pr[i] > 0.0f);
            double xd = fsel(use, x[i], 0.0f), pd = fsel(use, pr[i], 0.0f);
            lp[i] = pd * (lp[i] - xd);
        }
        S += dsc_row_sum_d(lp, len);
        if (!dI) continue;
        float *g = dI + j0;
        /* not visible: garbage, never used */
        for (int64_t i = 0; i < len; i++) buf[i] = (float)((double)x[i] - lse);
        dsc_k_exp(NULL, buf, buf, len);
        for (int64_t i = 0; i < len; i++) {
            float d = (float)(((double)buf[i] - (double)pr[i] * invz) * gscale), gd = g[i] + d;
            g[i] = fsel(x[i] > -INFINITY, gd, g[i]);
        }
    }
    return S * invz - log(z) + lse;
}

double dsc_idxt_kl(float *dI, const float *I, const float *P, int64_t n, int64_t m,
                   double dscale, int n_threads, double *row_ws) {
    if (n <= 0 || m <= 0) return 0.0;
    const int nt = threads_for(n_threads, (double)n * (double)m * 8.0);
    (void)nt;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 8)
    for (int64_t t = 0; t < n; t++) row_ws[t] = kl_row_counts(I + t * m, P + t * m, m);
    int64_t count = 0;
    for (int64_t t = 0; t < n; t++) count += row_ws[t] > 0;
    if (count == 0) return 0.0;
    double gscale = dscale / (double)count;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 8)
    for (int64_t t = 0; t < n; t++) {
        if (!(row_ws[t] > 0)) continue;
        int64_t lo, hi, o = t * m;
        vis_span(I + o, m, &lo, &hi);
        o += lo;
        row_ws[t] = kl_row(dI ? dI + o : NULL, I + o, P + o, hi - lo, gscale);
    }
    double total = 0.0;
    for (int64_t t = 0; t < n; t++) total += row_ws[t];
    return dscale * total / (double)count;
}

/* ---- 4. recall ---- */

/*
 * Selection on keys: a float's bits mapped to a uint32 whose unsigned order
 * is the float order (negative: all bits flipped; positive: sign bit set),
 * with -0 made +0 first (they compare equal, so they must tie). Entries that
 * are not visible get key 0, below every real key (-inf maps to 0x007fffff),
 * so they are never selected while k <= |V|.
 */
static inline uint32_t fkey(float x) {
    float y = x + 0.0f; /* -0 -> +0 */
    uint32_t u;
    memcpy(&u, &y, sizeof u);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

static inline float fkey_inv(uint32_t k) {
    uint32_t u = (k & 0x80000000u) ? (k & 0x7fffffffu) : ~k;
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* The k-th largest of key[0..n) (1 <= k <= n) by MSB-first radix selection:
   digits of 11, 11 and 10 bits, each a histogram, then the candidates that
   share the chosen digits are compacted into cand (n entries); a few left
   are finished by counting. */
static uint32_t kth_key(const uint32_t *key, int64_t n, int64_t k, uint32_t *cand) {
    static const int shift[3] = {21, 10, 0}, bits[3] = {11, 11, 10};
    uint32_t hist[2048];
    const uint32_t *src = key;
    int64_t nc = n;
    for (int lv = 0; lv < 3; lv++) {
        if (nc <= 24) {
            /* the value with fewer than k above it and at least k at or above */
            for (int64_t i = 0; i < nc; i++) {
                int64_t gt = 0, ge = 0;
                for (int64_t j = 0; j < nc; j++) gt += src[j] > src[i], ge += src[j] >= src[i];
                if (gt < k && ge >= k) return src[i];
            }
        }
        int sh = shift[lv];
        uint32_t mask = (1u << bits[lv]) - 1, top = 0;
        memset(hist, 0, ((size_t)mask + 1) * sizeof *hist);
        for (int64_t i = 0; i < nc; i++) {
            uint32_t b = (src[i] >> sh) & mask;
            hist[b]++;
            top = b > top ? b : top;
        }
        uint32_t b = top;
        int64_t above = 0;
        while (above + hist[b] < (uint32_t)k) above += hist[b--];
        k -= above;
        int64_t m = 0;
        for (int64_t i = 0; i < nc; i++) {
            uint32_t v = src[i];
            cand[m] = v;
            m += ((v >> sh) & mask) == b;
        }
        src = cand;
        nc = m;
    }
    return src[0]; /* every bit chosen: all candidates are equal */
}

/* Keys of row x over [0, n), visible where I > -inf; returns |V|. */
IT_ROW static int64_t row_keys(uint32_t *key, const float *I, const float *x, int64_t n) {
    int64_t nv = 0;
    for (int64_t j = 0; j < n; j++) {
        int v = I[j] > -INFINITY;
        uint32_t kx = fkey(x[j]);
        key[j] = v ? kx : 0u;
        nv += v;
    }
    return nv;
}

/* Sum of P where key > thr (in a fixed order), and how many. */
IT_ROW static double sum_above(const uint32_t *key, const float *P, int64_t n, uint32_t thr,
                               int64_t *cnt) {
    double s[8] = {0};
    int64_t c = 0, j = 0;
    for (; j + 8 <= n; j += 8)
        for (int q = 0; q < 8; q++) {
            int a = key[j + q] > thr;
            s[q] += (double)fsel(a, P[j + q], 0.0f);
            c += a;
        }
    for (; j < n; j++) {
        int a = key[j] > thr;
        s[0] += (double)fsel(a, P[j], 0.0f);
        c += a;
    }
    *cnt = c;
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

/* recall_t of one row, or -1 when it does not count. key, cand: m each. */
static double recall_row(const float *I, const float *P, int64_t m, int64_t k, uint32_t *key,
                         uint32_t *cand) {
    int64_t lo, hi;
    vis_span(I, m, &lo, &hi);
    int64_t n = hi - lo;
    I += lo, P += lo;
    int64_t nv = row_keys(key, I, I, n), kt = min64(k, nv), cnt;
    if (kt <= 0) return -1.0;
    if (kt == nv) {
        /* A = B = V */
        double all = sum_above(key, P, n, 0u, &cnt);
        return all > 0 ? all / all : -1.0;
    }
    /* A: above the k-th I, then its ties from the lowest column. When
       every tie is taken (always, unless values repeat) A is the set at or
       above the k-th: one vectorised pass. thr - 1 >= 0: thr is the key of
       a visible value. */
    uint32_t thr = kth_key(key, n, kt, cand);
    double got = sum_above(key, P, n, thr - 1, &cnt);
    if (cnt != kt) {
        got = sum_above(key, P, n, thr, &cnt);
        for (int64_t j = 0, left = kt - cnt; j < n && left > 0; j++)
            if (key[j] == thr) got += P[j], left--;
    }
    /* B: the kt largest P, the same way (so that A = B gives exactly 1) */
    row_keys(key, I, P, n);
    uint32_t pthr = kth_key(key, n, kt, cand);
    double best = sum_above(key, P, n, pthr - 1, &cnt);
    if (cnt != kt) {
        best = sum_above(key, P, n, pthr, &cnt);
        best += (double)(kt - cnt) * (double)fkey_inv(pthr);
    }
    return best > 0 ? got / best : -1.0;
}

int64_t dsc_idxt_recall_scratch(int64_t n, int64_t m, int n_threads) {
    int nt = n_threads < 1 ? 1 : n_threads;
    return (n > 0 ? n : 1) + (int64_t)nt * (m > 0 ? m : 1);
}

double dsc_idxt_recall(const float *I, const float *P, int64_t n, int64_t m, int64_t k,
                       int n_threads, double *ws) {
    if (n <= 0 || m <= 0) return 0.0;
    const int nt = threads_for(n_threads, (double)n * (double)m * 4.0);
    (void)nt;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 8)
    for (int64_t t = 0; t < n; t++) {
        uint32_t *key = (uint32_t *)(ws + n + (int64_t)dsc_thread_id() * m);
        ws[t] = recall_row(I + t * m, P + t * m, m, k, key, key + m);
    }
    double total = 0.0;
    int64_t count = 0;
    for (int64_t t = 0; t < n; t++)
        if (ws[t] >= 0) total += ws[t], count++;
    return count ? total / (double)count : 0.0;
}

/* ---- 5. causal top-k selection ---- */

int64_t dsc_idxt_select_scratch(int64_t n, int n_threads) {
    int nt = n_threads < 1 ? 1 : n_threads;
    return (int64_t)nt * 3 * (n > 0 ? n : 1);
}

/* Rows per work item: each row after the first starts from the previous
   row's threshold (neighbouring rows of I are alike). */
#define SEL_CHUNK 16

/* key[j] of x[j] for j < n, NaN ranked below every number (dsc_k_topk_set's
   rule: key 0); returns how many keys are >= g. */
IT_ROW static int64_t sel_keys(uint32_t *key, const float *x, int64_t n, uint32_t g) {
    int64_t c = 0;
    for (int64_t j = 0; j < n; j++) {
        uint32_t k = x[j] == x[j] ? fkey(x[j]) : 0u;
        key[j] = k;
        c += k >= g;
    }
    return c;
}

/* The keys >= g with their positions, in position order; returns the count. */
IT_ROW static int64_t sel_compact(uint32_t *ck, uint32_t *ci, const uint32_t *key, int64_t n,
                                  uint32_t g) {
    int64_t m = 0;
    for (int64_t j = 0; j < n; j++) {
        ck[m] = key[j];
        ci[m] = (uint32_t)j;
        m += key[j] >= g;
    }
    return m;
}

/* row (kk) := the kk positions of the largest keys, ties at the threshold
   from the lowest position, given candidates (ck[i], ci[i]) in position
   order that hold every key >= the kk-th largest (nc >= kk); cand: nc
   uint32s of scratch. Returns the threshold key. */
static uint32_t sel_take(int32_t *row, const uint32_t *ck, const uint32_t *ci, int64_t nc,
                         int64_t kk, uint32_t *cand) {
    uint32_t thr = kth_key(ck, nc, kk, cand);
    int64_t gt = 0, m = 0;
    for (int64_t i = 0; i < nc; i++) gt += ck[i] > thr;
    for (int64_t i = 0, ties = kk - gt; i < nc; i++) {
        int take = ck[i] > thr || (ck[i] == thr && ties > 0);
        ties -= ck[i] == thr && take;
        if (take) row[m++] = (int32_t)ci[i];
    }
    return thr;
}

void dsc_idxt_select(int32_t *sel, const float *I, int64_t n, int64_t kk, int n_threads,
                     uint32_t *ws) {
    if (n <= 0 || kk <= 0) return;
    const int nt = threads_for(n_threads, (double)n * (double)n * 2.0);
    (void)nt;
    int64_t nch = (n + SEL_CHUNK - 1) / SEL_CHUNK;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int64_t ch = 0; ch < nch; ch++) {
        uint32_t *key = ws + (int64_t)dsc_thread_id() * 3 * n, *ck = key + n, *ci = key + 2 * n;
        uint32_t guess = 0; /* 0: every key is a candidate (the first row) */
        for (int64_t t = ch * SEL_CHUNK; t < n && t < (ch + 1) * SEL_CHUNK; t++) {
            int32_t *row = sel + t * kk;
            int64_t nv = t + 1;
            if (nv <= kk) {
                for (int64_t m = 0; m < nv; m++) row[m] = (int32_t)m;
                for (int64_t m = nv; m < kk; m++) row[m] = -1;
                continue;
            }
            /* candidates: the keys >= the previous row's threshold when at
               least kk of them are (then they hold the top kk and all its
               ties), else every key */
            if (sel_keys(key, I + t * n, nv, guess) < kk) guess = 0;
            int64_t nc = sel_compact(ck, ci, key, nv, guess);
            guess = sel_take(row, ck, ci, nc, kk, key);
        }
    }
}
