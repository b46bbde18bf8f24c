/*
 * sample.c - choosing the next token from logits.
 *
 * The steps, in order (each one off when its parameter says so):
 *   1. repetition penalty on ids among the last repeat_last_n of the history
 *      (the CTRL / transformers rule: a positive logit is divided by the
 *      penalty, a negative one multiplied, each distinct id once);
 *   2. ignore_eos: the EOS logit becomes -inf (what transformers'
 *      min_new_tokens does);
 *   3. temp <= 0: greedy argmax (lowest id wins a tie), stop here;
 *   4. logits / temp;
 *   5. top-k: keep the k largest (ties at the boundary broken by lower id);
 *   6. top-p: keep the smallest prefix of the sorted candidates whose
 *      probability mass reaches p (always at least one);
 *   7. min-p: drop candidates whose probability is below min_p times the
 *      largest;
 *   8. draw from the renormalised distribution with the sampler's own RNG
 *      (splitmix64 seeded by `seed`: the same seed gives the same tokens).
 * This is llama.cpp's default order except that temperature is applied
 * before the truncations (as transformers does), so top-p sees the tempered
 * distribution.
 *
 * All scratch is allocated by dsc_sampler_new; sampling allocates nothing.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dsc.h"
#include "gen/sample.h"
#include "util/util.h"

typedef struct {
    float logit;
    int32_t id;
} cand;

struct dsc_sampler {
    dsc_sampler_params p;
    int64_t n_vocab;
    cand *c;            /* (n_vocab) candidates                          */
    uint8_t *seen;      /* (n_vocab) marks for the repetition penalty    */
    uint64_t rng;
};

dsc_sampler_params dsc_sampler_default_params(void) {
    dsc_sampler_params p;
    memset(&p, 0, sizeof p);
    p.temp = 0.8f;
    p.top_k = 40;
    p.top_p = 0.95f;
    p.min_p = 0.05f;
    p.repeat_penalty = 1.0f;
    p.repeat_last_n = 64;
    p.seed = 0x5eed;
    p.eos_id = -1;
    return p;
}

dsc_status dsc_sampler_new(const dsc_sampler_params *p, int64_t n_vocab, dsc_sampler_t **out,
                           dsc_err *err) {
    *out = NULL;
    if (n_vocab < 1 || n_vocab > INT32_MAX)
        return dsc_err_set(err, DSC_ERR_ARG, "sampler: vocabulary of %lld", (long long)n_vocab);
    if (!(p->repeat_penalty > 0.0f) || isnan(p->temp) || isnan(p->top_p) || isnan(p->min_p))
        return dsc_err_set(err, DSC_ERR_ARG,
                           "sampler: repeat_penalty must be > 0 and temp/top_p/min_p numbers");
    dsc_sampler_t *s = calloc(1, sizeof *s);
    if (s) {
        s->c = malloc((size_t)n_vocab * sizeof *s->c);
        s->seen = calloc((size_t)n_vocab, 1);
    }
    if (!s || !s->c || !s->seen) {
        dsc_sampler_free(s);
        return dsc_err_set(err, DSC_ERR_OOM, "sampler: cannot allocate for %lld ids",
                           (long long)n_vocab);
    }
    s->p = *p;
    s->n_vocab = n_vocab;
    s->rng = p->seed;
    *out = s;
    return DSC_OK;
}

int64_t dsc_sampler_vocab(const dsc_sampler_t *s) { return s ? s->n_vocab : 0; }

void dsc_sampler_free(dsc_sampler_t *s) {
    if (!s) return;
    free(s->c);
    free(s->seen);
    free(s);
}

static uint64_t next_u64(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Descending logit, then ascending id: a total order, so sorting is
   deterministic whatever the qsort implementation. */
static int cand_cmp(const void *a, const void *b) {
    const cand *x = a, *y = b;
    if (x->logit != y->logit) return x->logit > y->logit ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

/* Move the k best candidates of c[0..n) to the front, sorted, the others
   behind them in some order. A bounded min-heap keeps the k best seen so
   far: O(n log k). */
static void top_k_sorted(cand *c, int64_t n, int64_t k) {
    if (k >= n) {
        qsort(c, (size_t)n, sizeof *c, cand_cmp);
        return;
    }
    /* heap in c[0..k): the root is the worst kept (largest by cand_cmp) */
    for (int64_t i = 0; i < n; i++) {
        cand x = c[i];
        int64_t pos;
        if (i < k) {
            pos = i; /* sift up */
            while (pos > 0 && cand_cmp(&c[(pos - 1) / 2], &x) < 0) {
                c[pos] = c[(pos - 1) / 2];
                pos = (pos - 1) / 2;
            }
            c[pos] = x;
            continue;
        }
        if (cand_cmp(&x, &c[0]) >= 0) continue; /* not better than the worst kept */
        c[i] = c[0]; /* the evicted root takes x's place: c stays a permutation, so
                        the sorted-prefix path of prepare can call this again */
        pos = 0; /* replace the root, sift down */
        for (;;) {
            int64_t l = 2 * pos + 1, r = l + 1, big = pos;
            const cand *bv = &x;
            if (l < k && cand_cmp(&c[l], bv) > 0) big = l, bv = &c[l];
            if (r < k && cand_cmp(&c[r], bv) > 0) big = r;
            if (big == pos) break;
            c[pos] = c[big];
            pos = big;
        }
        c[pos] = x;
    }
    qsort(c, (size_t)k, sizeof *c, cand_cmp);
}

/* Below this many candidates a full sort is cheap; above it, without
   top-k, only a growing sorted prefix is made (see prepare). */
#define PREFIX_MIN 256

/* Whether the top-p or min-p cut falls inside the sorted prefix c[0..k)
   (sum: the mass of all candidates, mx: the largest logit). */
static int cut_inside(const dsc_sampler_params *p, const cand *c, int64_t k, double mx,
                      double sum) {
    if (p->min_p > 0.0f && (double)c[k - 1].logit - mx < log((double)p->min_p)) return 1;
    if (p->top_p < 1.0f) {
        double acc = 0.0;
        for (int64_t i = 0; i < k; i++) {
            acc += exp((double)c[i].logit - mx) / sum;
            if (acc >= p->top_p) return 1;
        }
    }
    return 0;
}

/* Steps 1-7: the candidates to draw from, left sorted in s->c[0..*n) with
   their tempered logits; *mx is the first one's. Returns -1 for greedy
   (then *best is the argmax), 0 when no logit is finite (*best = 0), 1
   otherwise. */
static int prepare(dsc_sampler_t *s, float *logits, const int32_t *history, int64_t n_history,
                   int64_t *n_out, double *mx_out, int32_t *best_out) {
    const dsc_sampler_params *p = &s->p;
    int64_t V = s->n_vocab;

    /* 1. repetition penalty, once per distinct recent id */
    if (p->repeat_penalty != 1.0f && history && n_history > 0) {
        int64_t from = p->repeat_last_n > 0 && n_history > p->repeat_last_n
                           ? n_history - p->repeat_last_n : 0;
        for (int64_t i = from; i < n_history; i++) {
            int32_t id = history[i];
            if (id < 0 || id >= V || s->seen[id]) continue;
            s->seen[id] = 1;
            logits[id] = logits[id] > 0 ? logits[id] / p->repeat_penalty
                                        : logits[id] * p->repeat_penalty;
        }
        for (int64_t i = from; i < n_history; i++)
            if (history[i] >= 0 && history[i] < V) s->seen[history[i]] = 0;
    }
    /* 2. EOS never chosen */
    if (p->ignore_eos && p->eos_id >= 0 && p->eos_id < V) logits[p->eos_id] = -INFINITY;

    /* 3. greedy; NaN never wins */
    if (p->temp <= 0.0f) {
        int32_t best = 0;
        for (int64_t i = 1; i < V; i++)
            if (logits[i] > logits[best] || isnan(logits[best])) best = (int32_t)i;
        *best_out = best;
        return -1;
    }

    /* 4.-5. temperature, candidates, top-k */
    int64_t n = 0;
    for (int64_t i = 0; i < V; i++)
        if (!isnan(logits[i]) && logits[i] > -INFINITY)
            s->c[n++] = (cand){logits[i] / p->temp, (int32_t)i};
    *best_out = 0;
    if (n == 0) return 0;
    int64_t k = p->top_k > 0 && p->top_k < n ? p->top_k : n;
    double mx, sum = 0.0;
    if (k == n && n > PREFIX_MIN && (p->top_p < 1.0f || p->min_p > 0.0f)) {
        /* no top-k on a large vocabulary: sort only a prefix that holds the
           top-p / min-p cut, not all n candidates (O(n log k0), not
           O(n log n): 129k ids took ~15 ms to sort). The mass of all n is
           the normaliser, as it is for a full sort. */
        mx = s->c[0].logit;
        for (int64_t i = 1; i < n; i++) mx = s->c[i].logit > mx ? s->c[i].logit : mx;
        for (int64_t i = 0; i < n; i++) sum += exp((double)s->c[i].logit - mx);
        for (int64_t k0 = PREFIX_MIN;; k0 *= 4) {
            if (k0 >= n) {
                top_k_sorted(s->c, n, n);
                break;
            }
            top_k_sorted(s->c, n, k0);
            if (cut_inside(p, s->c, k0, mx, sum)) {
                k = k0;
                break;
            }
        }
    } else {
        top_k_sorted(s->c, n, k);
        /* probabilities of the survivors (in double, for the cumulative sums) */
        mx = s->c[0].logit;
        for (int64_t i = 0; i < k; i++) sum += exp((double)s->c[i].logit - mx);
    }
    n = k;

    /* 6. top-p on the sorted prefix */
    if (p->top_p < 1.0f) {
        double acc = 0.0;
        int64_t keep = n;
        for (int64_t i = 0; i < n; i++) {
            acc += exp((double)s->c[i].logit - mx) / sum;
            if (acc >= p->top_p) {
                keep = i + 1;
                break;
            }
        }
        n = keep;
    }
    /* 7. min-p relative to the best (the first) */
    if (p->min_p > 0.0f) {
        double cut = log((double)p->min_p);
        int64_t keep = 1;
        while (keep < n && (double)s->c[keep].logit - mx >= cut) keep++;
        n = keep;
    }
    *n_out = n;
    *mx_out = mx;
    return 1;
}

int32_t dsc_sampler_sample(dsc_sampler_t *s, float *logits, const int32_t *history,
                           int64_t n_history) {
    int64_t n = 0;
    double mx = 0.0;
    int32_t best = 0;
    if (prepare(s, logits, history, n_history, &n, &mx, &best) <= 0) return best;

    /* 8. draw */
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += exp((double)s->c[i].logit - mx);
    double u = dsc_unit_from_u64(next_u64(&s->rng)) * sum;
    double acc = 0.0;
    for (int64_t i = 0; i < n; i++) {
        acc += exp((double)s->c[i].logit - mx);
        if (u < acc) return s->c[i].id;
    }
    return s->c[n - 1].id;
}

int64_t dsc_sampler_dist(dsc_sampler_t *s, float *logits, const int32_t *history,
                         int64_t n_history, int32_t *ids, float *probs) {
    int64_t n = 0;
    double mx = 0.0;
    int32_t best = 0;
    if (prepare(s, logits, history, n_history, &n, &mx, &best) <= 0) {
        ids[0] = best;
        probs[0] = 1.0f;
        return 1;
    }
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += exp((double)s->c[i].logit - mx);
    for (int64_t i = 0; i < n; i++) {
        ids[i] = s->c[i].id;
        probs[i] = (float)(exp((double)s->c[i].logit - mx) / sum);
    }
    return n;
}

int dsc_sampler_is_greedy(const dsc_sampler_t *s) { return s->p.temp <= 0.0f; }

double dsc_sampler_uniform(dsc_sampler_t *s) {
    return dsc_unit_from_u64(next_u64(&s->rng));
}

int32_t dsc_sampler_draw(dsc_sampler_t *s, const int32_t *ids, const float *probs, int64_t n) {
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += probs[i];
    double u = dsc_sampler_uniform(s) * sum, acc = 0.0;
    for (int64_t i = 0; i < n; i++) {
        acc += probs[i];
        if (u < acc) return ids[i];
    }
    return ids[n - 1];
}
