/*
 * optim.c - AdamW (torch.optim.AdamW semantics), LR schedule, grad clipping.
 * See optim.h for the update formula. The per-element loop is fp32 like
 * torch's fp32 parameters, so a C run and a torch run on the same numbers
 * agree to rounding; the scalar step size and bias corrections are double,
 * as torch computes them in Python floats.
 */
#include "train/optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "util/util.h"

struct dsc_adamw {
    dsc_adamw_params hp;
    int64_t n;
    int64_t t;            /* steps taken                                   */
    dsc_param *params;    /* (n) copies of the caller's descriptors        */
    int64_t *off;         /* (n+1) offsets of each parameter in moments    */
    float *m, *v;         /* (off[n]) first and second moments             */
};

int64_t dsc_param_numel(const dsc_param *p) {
    int64_t k = 1;
    for (int i = 0; i < p->ndim; i++) k *= p->shape[i];
    return k;
}

dsc_adamw_params dsc_adamw_default_params(void) {
    dsc_adamw_params p = {0.9, 0.95, 1e-8, 0.1};
    return p;
}

dsc_status dsc_adamw_new(const dsc_adamw_params *hp, const dsc_param *params, int64_t n,
                         dsc_adamw_t **out, dsc_err *err) {
    *out = NULL;
    dsc_adamw_params h = hp ? *hp : dsc_adamw_default_params();
    if (n <= 0 || !params)
        return dsc_err_set(err, DSC_ERR_ARG, "adamw: %lld parameters", (long long)n);
    if (!(h.beta1 >= 0 && h.beta1 < 1) || !(h.beta2 >= 0 && h.beta2 < 1) || !(h.eps >= 0) ||
        !(h.weight_decay >= 0))
        return dsc_err_set(err, DSC_ERR_ARG,
                           "adamw: beta1 %g / beta2 %g must be in [0, 1), eps %g and "
                           "weight_decay %g >= 0", h.beta1, h.beta2, h.eps, h.weight_decay);
    size_t total = 0;
    for (int64_t i = 0; i < n; i++) {
        const dsc_param *p = &params[i];
        const char *nm = p->name ? p->name : "(unnamed)";
        if (!p->data || !p->grad)
            return dsc_err_set(err, DSC_ERR_ARG, "adamw: parameter %s has no data or grad", nm);
        if (p->ndim < 0 || p->ndim > DSC_PARAM_MAX_DIMS)
            return dsc_err_set(err, DSC_ERR_ARG, "adamw: parameter %s has ndim %d", nm,
                               p->ndim);
        size_t k = 1;
        for (int d = 0; d < p->ndim; d++)
            if (p->shape[d] < 0 || !dsc_mul_ok(k, (size_t)p->shape[d], &k))
                return dsc_err_set(err, DSC_ERR_ARG, "adamw: parameter %s has a bad shape",
                                   nm);
        if (!dsc_add_ok(total, k, &total) || total > (size_t)INT64_MAX / 8)
            return dsc_err_set(err, DSC_ERR_ARG, "adamw: too many elements");
    }
    dsc_adamw_t *o = calloc(1, sizeof *o);
    if (!o) return dsc_err_set(err, DSC_ERR_OOM, "adamw: out of memory");
    o->hp = h;
    o->n = n;
    o->params = malloc((size_t)n * sizeof *o->params);
    o->off = malloc(((size_t)n + 1) * sizeof *o->off);
    /* calloc: moments start at zero, as torch's zeros_like state. */
    o->m = calloc(total ? total : 1, sizeof(float));
    o->v = calloc(total ? total : 1, sizeof(float));
    if (!o->params || !o->off || !o->m || !o->v) {
        dsc_adamw_free(o);
        return dsc_err_set(err, DSC_ERR_OOM, "adamw: out of memory for %zu moments", total);
    }
    memcpy(o->params, params, (size_t)n * sizeof *params);
    o->off[0] = 0;
    for (int64_t i = 0; i < n; i++) o->off[i + 1] = o->off[i] + dsc_param_numel(&params[i]);
    *out = o;
    return DSC_OK;
}

void dsc_adamw_free(dsc_adamw_t *o) {
    if (!o) return;
    free(o->params);
    free(o->off);
    free(o->m);
    free(o->v);
    free(o);
}

/* Scalars of one step, as torch's _single_tensor_adamw computes them. */
typedef struct {
    float step_size, one_m_b1, one_m_b2, b2, bc2_sqrt, eps;
} adamw_k;

/* Elements [0, k) of one parameter (plain loops for the vectoriser; sqrt
   and division are correctly rounded in every variant, so all give the
   same bits). */
DSC_VEC_CLONES static void adamw_span(float *restrict w, const float *restrict g,
                                      float *restrict m, float *restrict v, int64_t k,
                                      float keep, const adamw_k *c) {
    for (int64_t j = 0; j < k; j++) {
        float wj = w[j] * keep;
        float mj = m[j] + c->one_m_b1 * (g[j] - m[j]);
        float vj = c->b2 * v[j] + c->one_m_b2 * g[j] * g[j];
        /* Divide (not multiply by the inverse) exactly as torch does. */
        float denom = sqrtf(vj) / c->bc2_sqrt + c->eps;
        w[j] = wj - c->step_size * (mj / denom);
        m[j] = mj;
        v[j] = vj;
    }
}

/* Parts of the flattened parameter list: part t of nt covers elements
   [total t / nt, total (t+1) / nt) of the concatenation of all parameters;
   *first receives the index of the parameter holding the part's first
   element. Every element belongs to one part, so the parts can run on
   different threads without touching each other's data. */
static void flat_part(const int64_t *off, int64_t n, int t, int nt, int64_t *lo, int64_t *hi,
                      int64_t *first) {
    int64_t total = off[n];
    *lo = total * t / nt;
    *hi = total * (t + 1) / nt;
    int64_t a = 0, b = n; /* largest i with off[i] <= lo */
    while (b - a > 1) {
        int64_t mid = (a + b) / 2;
        if (off[mid] <= *lo) a = mid; else b = mid;
    }
    *first = a;
}

/* Threads for a pass over `total` elements. */
static int flat_threads(int64_t total) {
#ifdef _OPENMP
    return total > 65536 ? omp_get_max_threads() : 1;
#else
    (void)total;
    return 1;
#endif
}

void dsc_adamw_step(dsc_adamw_t *o, double lr) {
    o->t++;
    const double b1 = o->hp.beta1, b2 = o->hp.beta2;
    const double bc1 = 1.0 - pow(b1, (double)o->t);
    adamw_k c = {(float)(lr / bc1), (float)(1.0 - b1), (float)(1.0 - b2), (float)b2,
                 (float)sqrt(1.0 - pow(b2, (double)o->t)), (float)o->hp.eps};
    const float keep_decay = (float)(1.0 - lr * o->hp.weight_decay);
    const int nt = flat_threads(o->off[o->n]);
#pragma omp parallel for num_threads(nt) schedule(static, 1)
    for (int t = 0; t < nt; t++) {
        int64_t lo, hi, i;
        flat_part(o->off, o->n, t, nt, &lo, &hi, &i);
        for (; i < o->n && o->off[i] < hi; i++) {
            const dsc_param *p = &o->params[i];
            int64_t a = (lo > o->off[i] ? lo : o->off[i]) - o->off[i];
            int64_t e = (hi < o->off[i + 1] ? hi : o->off[i + 1]) - o->off[i];
            if (e > a && !p->frozen)
                adamw_span(p->data + a, p->grad + a, o->m + o->off[i] + a, o->v + o->off[i] + a,
                           e - a, p->decay ? keep_decay : 1.0f, &c);
        }
    }
}

int64_t dsc_adamw_steps(const dsc_adamw_t *o) { return o->t; }
void dsc_adamw_set_steps(dsc_adamw_t *o, int64_t t) { o->t = t < 0 ? 0 : t; }
int64_t dsc_adamw_count(const dsc_adamw_t *o) { return o->n; }

const dsc_param *dsc_adamw_param(const dsc_adamw_t *o, int64_t i) {
    return i >= 0 && i < o->n ? &o->params[i] : NULL;
}
float *dsc_adamw_exp_avg(dsc_adamw_t *o, int64_t i) {
    return i >= 0 && i < o->n ? o->m + o->off[i] : NULL;
}
float *dsc_adamw_exp_avg_sq(dsc_adamw_t *o, int64_t i) {
    return i >= 0 && i < o->n ? o->v + o->off[i] : NULL;
}

double dsc_lr_at(const dsc_lr_schedule *s, int64_t step) {
    if (step < 0) step = 0;
    if (step < s->warmup_steps)
        return s->max_lr * (double)(step + 1) / (double)s->warmup_steps;
    if (step >= s->total_steps) return s->min_lr;
    /* Here warmup <= step < total, so the span is positive. */
    double prog = (double)(step - s->warmup_steps) / (double)(s->total_steps - s->warmup_steps);
    return s->min_lr + 0.5 * (s->max_lr - s->min_lr) * (1.0 + cos(M_PI * prog));
}

/* Sum of squares of x[0, k), in eight double partial sums. */
DSC_VEC_CLONES static double sumsq_span(const float *x, int64_t k) {
    double acc[8] = {0};
    int64_t j = 0;
    for (; j + 8 <= k; j += 8)
        for (int q = 0; q < 8; q++) acc[q] += (double)x[j + q] * (double)x[j + q];
    for (; j < k; j++) acc[0] += (double)x[j] * (double)x[j];
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/* The norm's partial sums are per part of the flattened list and added in
   part order, so the norm is the same on every run with the same thread
   count. */
#define CLIP_MAX_PARTS 256

double dsc_clip_grad_norm(const dsc_param *params, int64_t n, double max_norm) {
    /* offsets of the flattened list (on the stack for short lists) */
    int64_t stack_off[129], *off = n < 129 ? stack_off : malloc((size_t)(n + 1) * sizeof *off);
    double ss = 0.0;
    if (!off) {
        /* no memory for the offsets: the same sum, one thread */
        for (int64_t i = 0; i < n; i++) ss += sumsq_span(params[i].grad, dsc_param_numel(&params[i]));
    } else {
        off[0] = 0;
        for (int64_t i = 0; i < n; i++) off[i + 1] = off[i] + dsc_param_numel(&params[i]);
        int nt = flat_threads(off[n]);
        nt = nt > CLIP_MAX_PARTS ? CLIP_MAX_PARTS : nt;
        double part[CLIP_MAX_PARTS];
#pragma omp parallel for num_threads(nt) schedule(static, 1)
        for (int t = 0; t < nt; t++) {
            int64_t lo, hi, i;
            flat_part(off, n, t, nt, &lo, &hi, &i);
            double acc = 0.0;
            for (; i < n && off[i] < hi; i++) {
                int64_t a = (lo > off[i] ? lo : off[i]) - off[i];
                int64_t e = (hi < off[i + 1] ? hi : off[i + 1]) - off[i];
                if (e > a) acc += sumsq_span(params[i].grad + a, e - a);
            }
            part[t] = acc;
        }
        for (int t = 0; t < nt; t++) ss += part[t];
        if (off != stack_off) free(off);
    }
    double norm = sqrt(ss);
    if (!(max_norm > 0) || !isfinite(norm) || norm <= max_norm) return norm;
    const float coef = (float)(max_norm / (norm + 1e-6));
    for (int64_t i = 0; i < n; i++) {
        float *g = params[i].grad;
        const int64_t k = dsc_param_numel(&params[i]);
        for (int64_t j = 0; j < k; j++) g[j] *= coef;
    }
    return norm;
}
