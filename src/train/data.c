/*
 * data.c - documents from a text file, tokenized, split, packed; batches.
 * See data.h for the contract. Everything here is load-time work except
 * dsc_data_iter_next / dsc_data_seq, which only copy ids.
 */
#include "train/data.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/util.h"

/* A growable array of int32 or int64 (load time only). */
typedef struct {
    void *p;
    int64_t n, cap;
} vec;

static int vec_reserve(vec *v, int64_t want, size_t elem) {
    if (want <= v->cap) return 1;
    int64_t c = v->cap ? v->cap : 1024;
    while (c < want) c *= 2;
    void *q = realloc(v->p, (size_t)c * elem);
    if (!q) return 0;
    v->p = q;
    v->cap = c;
    return 1;
}

typedef struct {
    vec ids;        /* int32: the packed stream                 */
    vec start;      /* int64: where each document starts in ids */
    vec index;      /* int64: file document index of each       */
} split_data;

struct dsc_dataset {
    int64_t seq_len;
    int32_t pad_id;
    split_data sp[2];
};

dsc_data_params dsc_data_default_params(void) {
    dsc_data_params p = {1024, 0.01, 1234, -1};
    return p;
}

/* splitmix64's finalizer: a good 64-bit mix of a counter. */
static uint64_t mix64(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint64_t hash2(uint64_t seed, uint64_t k) { return mix64(seed ^ mix64(k)); }

static int is_blank(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n') return 0;
    return 1;
}

/* Tokenize one document straight into the tail of its split's stream. */
static dsc_status add_doc(dsc_dataset_t *d, const dsc_tokenizer_t *tok, const dsc_data_params *p,
                          const char *text, size_t len, int64_t doc, int64_t file_off,
                          const char *path, dsc_err *err) {
    int val = dsc_unit_from_u64(hash2(p->seed, (uint64_t)doc)) < p->val_fraction;
    split_data *s = &d->sp[val];
    int32_t bos = dsc_tokenizer_adds_bos(tok) ? dsc_tokenizer_bos(tok) : -1;
    int32_t eos = dsc_tokenizer_eos(tok);
    if (!vec_reserve(&s->start, s->start.n + 1, sizeof(int64_t)) ||
        !vec_reserve(&s->index, s->index.n + 1, sizeof(int64_t)))
        return dsc_err_set(err, DSC_ERR_OOM, "%s: out of memory", path);
    /* Guess one id per 2 bytes, retry with the exact count if short. */
    int64_t guess = (int64_t)(len / 2) + 16;
    for (int attempt = 0; attempt < 2; attempt++) {
        if (!vec_reserve(&s->ids, s->ids.n + guess + 2, sizeof(int32_t)))
            return dsc_err_set(err, DSC_ERR_OOM, "%s: out of memory for %lld ids", path,
                               (long long)(s->ids.n + guess));
        int32_t *dst = (int32_t *)s->ids.p + s->ids.n + (bos >= 0);
        int64_t need = 0;
        dsc_err e2 = {0};
        dsc_status st = dsc_tokenize(tok, text, len, 0, dst, guess, &need, &e2);
        if (st != DSC_OK)
            return dsc_err_set(err, st, "%s: document %lld (byte %lld of the file): %s", path,
                               (long long)doc, (long long)file_off, e2.msg);
        if (need > guess) {
            guess = need;
            continue;
        }
        int32_t *ids = s->ids.p;
        ((int64_t *)s->start.p)[s->start.n++] = s->ids.n;
        ((int64_t *)s->index.p)[s->index.n++] = doc;
        if (bos >= 0) ids[s->ids.n] = bos;
        s->ids.n += (bos >= 0) + need;
        if (eos >= 0) ids[s->ids.n++] = eos;
        return DSC_OK;
    }
    return dsc_err_set(err, DSC_ERR_FORMAT, "%s: document %lld: tokenizer count changed", path,
                       (long long)doc);
}

dsc_status dsc_data_load(const char *path, const dsc_tokenizer_t *tok, const dsc_data_params *p,
                         dsc_dataset_t **out, dsc_err *err) {
    *out = NULL;
    dsc_data_params prm = p ? *p : dsc_data_default_params();
    if (prm.seq_len < 1 || !(prm.val_fraction >= 0 && prm.val_fraction <= 1))
        return dsc_err_set(err, DSC_ERR_ARG, "data: seq_len %lld must be >= 1, val_fraction "
                           "%g in [0, 1]", (long long)prm.seq_len, prm.val_fraction);
    FILE *f = fopen(path, "rb");
    if (!f) return dsc_err_set(err, DSC_ERR_IO, "%s: %s", path, strerror(errno));
    dsc_dataset_t *d = calloc(1, sizeof *d);
    if (!d) {
        fclose(f);
        return dsc_err_set(err, DSC_ERR_OOM, "data: out of memory");
    }
    d->seq_len = prm.seq_len;
    d->pad_id = prm.pad_id >= 0 ? prm.pad_id : -1;
    char *line = NULL, *doc = NULL;
    size_t line_cap = 0, doc_len = 0, doc_cap = 0;
    int64_t n_docs = 0, off = 0, doc_off = 0;
    dsc_status st = DSC_OK;
    for (;;) {
        ssize_t r = getline(&line, &line_cap, f);
        int eof = r < 0;
        if (eof && ferror(f)) {
            st = dsc_err_set(err, DSC_ERR_IO, "%s: read error at byte %lld", path,
                             (long long)off);
            break;
        }
        if (eof || is_blank(line, (size_t)r)) {
            /* End of a document: drop its final newline (the separator). */
            if (doc_len > 0 && doc[doc_len - 1] == '\n') doc_len--;
            if (doc_len > 0 && doc[doc_len - 1] == '\r') doc_len--;
            if (doc_len > 0) {
                st = add_doc(d, tok, &prm, doc, doc_len, n_docs++, doc_off, path, err);
                if (st != DSC_OK) break;
            }
            doc_len = 0;
            if (eof) break;
            off += r;
            doc_off = off;
            continue;
        }
        if (doc_len + (size_t)r > doc_cap) {
            size_t c = doc_cap ? doc_cap : 4096;
            while (c < doc_len + (size_t)r) c *= 2;
            char *q = realloc(doc, c);
            if (!q) {
                st = dsc_err_set(err, DSC_ERR_OOM, "%s: out of memory for a document", path);
                break;
            }
            doc = q;
            doc_cap = c;
        }
        memcpy(doc + doc_len, line, (size_t)r);
        doc_len += (size_t)r;
        off += r;
    }
    free(line);
    free(doc);
    fclose(f);
    if (st != DSC_OK) {
        dsc_data_free(d);
        return st;
    }
    *out = d;
    return DSC_OK;
}

void dsc_data_free(dsc_dataset_t *d) {
    if (!d) return;
    for (int s = 0; s < 2; s++) {
        free(d->sp[s].ids.p);
        free(d->sp[s].start.p);
        free(d->sp[s].index.p);
    }
    free(d);
}

int64_t dsc_data_seq_len(const dsc_dataset_t *d) { return d->seq_len; }
int64_t dsc_data_n_docs(const dsc_dataset_t *d, dsc_split s) { return d->sp[s].start.n; }
int64_t dsc_data_n_tokens(const dsc_dataset_t *d, dsc_split s) { return d->sp[s].ids.n; }
int64_t dsc_data_n_seqs(const dsc_dataset_t *d, dsc_split s) {
    return (d->sp[s].ids.n + d->seq_len) / (d->seq_len + 1);
}
const int32_t *dsc_data_stream(const dsc_dataset_t *d, dsc_split s) { return d->sp[s].ids.p; }
int64_t dsc_data_doc_start(const dsc_dataset_t *d, dsc_split s, int64_t j) {
    return j >= 0 && j < d->sp[s].start.n ? ((const int64_t *)d->sp[s].start.p)[j] : -1;
}
int64_t dsc_data_doc_index(const dsc_dataset_t *d, dsc_split s, int64_t j) {
    return j >= 0 && j < d->sp[s].index.n ? ((const int64_t *)d->sp[s].index.p)[j] : -1;
}

int64_t dsc_data_seq(const dsc_dataset_t *d, dsc_split s, int64_t i, int32_t *ids) {
    if (i < 0 || i >= dsc_data_n_seqs(d, s)) return -1;
    const int64_t L = d->seq_len + 1, n = d->sp[s].ids.n;
    const int64_t a = i * L;
    const int64_t k = n - a < L ? n - a : L;
    memcpy(ids, (const int32_t *)d->sp[s].ids.p + a, (size_t)k * sizeof(int32_t));
    for (int64_t j = k; j < L; j++) ids[j] = d->pad_id;
    return k;
}

struct dsc_data_iter {
    const dsc_dataset_t *d;
    dsc_split s;
    int64_t batch, n;     /* sequences per batch, sequences in the split */
    int shuffle;
    uint64_t seed;
    int64_t epoch, pos;   /* next sequence: perm[pos] of epoch           */
    int64_t *perm;        /* (n) order of the current epoch              */
};

/* The order of epoch e: a pure function of (seed, e). */
static void iter_shuffle(dsc_data_iter_t *it) {
    for (int64_t i = 0; i < it->n; i++) it->perm[i] = i;
    if (!it->shuffle) return;
    uint64_t state = hash2(it->seed, (uint64_t)it->epoch);
    for (int64_t i = it->n - 1; i > 0; i--) {
        state = mix64(state);
        /* Multiply-high maps 64 random bits to [0, i] without a modulo. */
        int64_t j = (int64_t)(((unsigned __int128)state * (uint64_t)(i + 1)) >> 64);
        int64_t t = it->perm[i];
        it->perm[i] = it->perm[j];
        it->perm[j] = t;
    }
}

dsc_status dsc_data_iter_new(const dsc_dataset_t *d, dsc_split s, int64_t batch, int shuffle,
                             uint64_t seed, dsc_data_iter_t **out, dsc_err *err) {
    *out = NULL;
    int64_t n = dsc_data_n_seqs(d, s);
    if (batch < 1 || n < 1)
        return dsc_err_set(err, DSC_ERR_ARG, "data: batch %lld over a split of %lld sequences",
                           (long long)batch, (long long)n);
    dsc_data_iter_t *it = calloc(1, sizeof *it);
    if (it) it->perm = malloc((size_t)n * sizeof *it->perm);
    if (!it || !it->perm) {
        if (it) free(it);
        return dsc_err_set(err, DSC_ERR_OOM, "data: out of memory for %lld sequences",
                           (long long)n);
    }
    it->d = d;
    it->s = s;
    it->batch = batch;
    it->n = n;
    it->shuffle = shuffle;
    it->seed = seed;
    iter_shuffle(it);
    *out = it;
    return DSC_OK;
}

void dsc_data_iter_free(dsc_data_iter_t *it) {
    if (!it) return;
    free(it->perm);
    free(it);
}

int64_t dsc_data_iter_next(dsc_data_iter_t *it, int32_t *ids, int64_t *n_valid) {
    int64_t first_epoch = -1;
    const int64_t L = it->d->seq_len + 1;
    for (int64_t b = 0; b < it->batch; b++) {
        if (it->pos == it->n) {
            it->epoch++;
            it->pos = 0;
            iter_shuffle(it);
        }
        if (first_epoch < 0) first_epoch = it->epoch;
        int64_t k = dsc_data_seq(it->d, it->s, it->perm[it->pos++], ids + b * L);
        if (n_valid) n_valid[b] = k;
    }
    return first_epoch;
}

void dsc_data_iter_seek(dsc_data_iter_t *it, int64_t batches) {
    int64_t total = batches * it->batch;
    it->epoch = total / it->n;
    it->pos = total % it->n;
    iter_shuffle(it);
}
