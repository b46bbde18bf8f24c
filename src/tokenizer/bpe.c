/*
 * bpe.c - byte-pair encoding of one pre-token.
 *
 * The pre-token's bytes start as one symbol each (the id of the one-byte
 * token), kept in a doubly linked list over an array. Every adjacent pair
 * that has a merge goes into a min-heap ordered by (merge rank, position of
 * the left symbol); the loop pops the lowest, skips entries made stale by an
 * earlier merge, merges, and pushes the two pairs the merge created. This is
 * the order `tokenizers` applies merges in (lowest rank first, leftmost among
 * equal ranks), so the ids are identical. Cost: O(n log n) per pre-token.
 *
 * Working on bytes instead of byte-level characters is equivalent because
 * the byte <-> character mapping is a bijection: every vocabulary string made
 * of byte-level characters was stored as its bytes at load time.
 */
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tok.h"
#include "util/util.h"

struct tok_sym {
    int32_t id;
    int32_t prev, next; /* neighbours in the list, -1 at the ends */
    int32_t alive;      /* 0 once merged into its left neighbour */
};

struct tok_heap_item {
    int32_t rank;
    int32_t pos;    /* index of the left symbol */
    int32_t merged; /* the id the merge produces (to recognise stale entries) */
};

static int item_less(const struct tok_heap_item *a, const struct tok_heap_item *b) {
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static void heap_push(struct tok_heap_item *h, size_t *n, struct tok_heap_item it) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!item_less(&it, &h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = it;
}

static struct tok_heap_item heap_pop(struct tok_heap_item *h, size_t *n) {
    struct tok_heap_item top = h[0], last = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && item_less(&h[c + 1], &h[c])) c++;
        if (!item_less(&h[c], &last)) break;
        h[i] = h[c];
        i = c;
    }
    if (*n) h[i] = last;
    return top;
}

/* Push the pair starting at symbol pos when it has a merge. */
static void push_pair(const dsc_tokenizer_t *t, const struct tok_sym *sym, int32_t pos,
                      struct tok_heap_item *h, size_t *nh) {
    int32_t nx = sym[pos].next;
    if (nx < 0) return;
    uint64_t key = ((uint64_t)(uint32_t)sym[pos].id << 32) | (uint32_t)sym[nx].id;
    int32_t rank, merged;
    if (tok_u64map_get(&t->merges, key, &rank, &merged))
        heap_push(h, nh, (struct tok_heap_item){rank, pos, merged});
}

static dsc_status scratch_reserve(tok_bpe_scratch *sc, size_t n, dsc_err *err) {
    if (n > sc->sym_cap) {
        size_t cap = n < 64 ? 64 : n;
        struct tok_sym *s = realloc(sc->sym, cap * sizeof *s);
        if (!s) return dsc_err_set(err, DSC_ERR_OOM, "tokenizer: no memory for a %zu-byte word", n);
        sc->sym = s;
        sc->sym_cap = cap;
    }
    size_t hn; /* at most n-1 initial pairs plus 2 per merge (n-1 merges) */
    if (!dsc_mul_ok(n, 3, &hn))
        return dsc_err_set(err, DSC_ERR_OOM, "tokenizer: word of %zu bytes too long", n);
    if (hn > sc->heap_cap) {
        size_t cap = hn < 192 ? 192 : hn;
        struct tok_heap_item *h = realloc(sc->heap, cap * sizeof *h);
        if (!h) return dsc_err_set(err, DSC_ERR_OOM, "tokenizer: no memory for a %zu-byte word", n);
        sc->heap = h;
        sc->heap_cap = cap;
    }
    return DSC_OK;
}

void tok_bpe_scratch_free(tok_bpe_scratch *sc) {
    free(sc->sym);
    free(sc->heap);
    memset(sc, 0, sizeof *sc);
}

/* With ignore_merges, a pre-token that is itself in the vocabulary is that
   token. The vocabulary is keyed by the byte-level string, so the bytes are
   mapped to it first. Returns the id or -1. */
static int32_t whole_word(const dsc_tokenizer_t *t, const unsigned char *s, size_t n,
                          tok_bpe_scratch *sc) {
    /* Each byte becomes at most 2 UTF-8 bytes; the symbol array has room for
       n * sizeof(struct tok_sym) >= 2n bytes and is not in use yet. */
    char *form = (char *)sc->sym;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += (size_t)tok_utf8_put(tok_byte_to_cp(s[i]), form + k);
    return tok_strmap_get(&t->by_form, form, k);
}

dsc_status tok_bpe(const dsc_tokenizer_t *t, const unsigned char *s, size_t n,
                   tok_bpe_scratch *sc, tok_out *out, dsc_err *err) {
    if (n == 1 && t->byte_id[s[0]] >= 0) { /* most common case: no list needed */
        tok_emit(out, t->byte_id[s[0]]);
        return DSC_OK;
    }
    if (n > INT32_MAX / 4)
        return dsc_err_set(err, DSC_ERR_ARG, "tokenizer: a pre-token of %zu bytes is too long", n);
    DSC_TRY(scratch_reserve(sc, n, err));
    if (t->ignore_merges) {
        int32_t id = whole_word(t, s, n, sc);
        if (id >= 0) {
            tok_emit(out, id);
            return DSC_OK;
        }
    }
    struct tok_sym *sym = sc->sym;
    int32_t ns = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = t->byte_id[s[i]];
        /* A byte without a token becomes the unknown token, or is dropped
           when the model has none (what `tokenizers` does); byte-level
           vocabularies normally have all 256. */
        if (id < 0) id = t->unk_id;
        if (id < 0) continue;
        sym[ns] = (struct tok_sym){id, ns - 1, ns + 1, 1};
        ns++;
    }
    if (ns == 0) return DSC_OK;
    sym[ns - 1].next = -1;

    struct tok_heap_item *h = sc->heap;
    size_t nh = 0;
    for (int32_t i = 0; i + 1 < ns; i++) push_pair(t, sym, i, h, &nh);
    while (nh) {
        struct tok_heap_item top = heap_pop(h, &nh);
        struct tok_sym *a = &sym[top.pos];
        if (!a->alive || a->next < 0) continue;
        struct tok_sym *b = &sym[a->next];
        /* Stale when either side changed since the push: the pair now
           present must still produce the same merged id. */
        uint64_t key = ((uint64_t)(uint32_t)a->id << 32) | (uint32_t)b->id;
        int32_t merged;
        if (!tok_u64map_get(&t->merges, key, NULL, &merged) || merged != top.merged) continue;
        a->id = merged;
        b->alive = 0;
        a->next = b->next;
        if (b->next >= 0) sym[b->next].prev = top.pos;
        if (a->prev >= 0) push_pair(t, sym, a->prev, h, &nh);
        push_pair(t, sym, top.pos, h, &nh);
    }
    for (int32_t i = 0; i >= 0; i = sym[i].next) tok_emit(out, sym[i].id);
    return DSC_OK;
}
