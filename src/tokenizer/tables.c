/*
 * tables.c - the tokenizer's lookup structures and character helpers: the two
 * open-addressing hash maps (64-bit key -> two ints; string -> id), GPT-2's
 * byte-level alphabet, strict UTF-8 decoding and the White_Space property.
 *
 * The maps use linear probing over a power-of-two table kept at most half
 * full, so a lookup touches one or two cache lines; they never delete.
 */
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tok.h"
#include "util/util.h"

/* splitmix64's finalizer: cheap and mixes every input bit into the low bits. */
static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* FNV-1a over the bytes, then mixed (FNV alone leaves weak low bits). */
static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 0xCBF29CE484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 0x100000001B3ull;
    return mix64(h);
}

/* Smallest power of two >= 2 * n (at least 16): load factor <= 1/2. */
static size_t table_cap(size_t n) {
    size_t cap = 16;
    while (cap < 2 * n) cap *= 2;
    return cap;
}

dsc_status tok_u64map_init(tok_u64map *m, size_t expected, dsc_err *err) {
    memset(m, 0, sizeof *m);
    m->cap = table_cap(expected);
    m->keys = calloc(m->cap, sizeof *m->keys);
    m->v0 = malloc(m->cap * sizeof *m->v0);
    m->v1 = malloc(m->cap * sizeof *m->v1);
    if (!m->keys || !m->v0 || !m->v1) {
        tok_u64map_free(m);
        return dsc_err_set(err, DSC_ERR_OOM, "tokenizer: cannot allocate a map of %zu slots",
                           table_cap(expected));
    }
    return DSC_OK;
}

void tok_u64map_free(tok_u64map *m) {
    free(m->keys);
    free(m->v0);
    free(m->v1);
    memset(m, 0, sizeof *m);
}

static void u64_insert(uint64_t *keys, int32_t *v0, int32_t *v1, size_t cap, uint64_t k1,
                       int32_t a, int32_t b) {
    size_t i = mix64(k1) & (cap - 1);
    while (keys[i] && keys[i] != k1) i = (i + 1) & (cap - 1);
    keys[i] = k1;
    v0[i] = a;
    v1[i] = b;
}

dsc_status tok_u64map_put(tok_u64map *m, uint64_t key, int32_t v0, int32_t v1, dsc_err *err) {
    DSC_CHECK(key < (1ull << 63));
    if (2 * (m->n + 1) > m->cap) {
        tok_u64map g;
        DSC_TRY(tok_u64map_init(&g, m->cap, err)); /* doubles the capacity */
        for (size_t i = 0; i < m->cap; i++)
            if (m->keys[i]) u64_insert(g.keys, g.v0, g.v1, g.cap, m->keys[i], m->v0[i], m->v1[i]);
        g.n = m->n;
        tok_u64map_free(m);
        *m = g;
    }
    size_t i = mix64(key + 1) & (m->cap - 1);
    while (m->keys[i] && m->keys[i] != key + 1) i = (i + 1) & (m->cap - 1);
    if (!m->keys[i]) m->n++;
    m->keys[i] = key + 1;
    m->v0[i] = v0;
    m->v1[i] = v1;
    return DSC_OK;
}

int tok_u64map_get(const tok_u64map *m, uint64_t key, int32_t *v0, int32_t *v1) {
    if (!m->cap) return 0;
    size_t i = mix64(key + 1) & (m->cap - 1);
    for (;;) {
        uint64_t k = m->keys[i];
        if (!k) return 0;
        if (k == key + 1) {
            if (v0) *v0 = m->v0[i];
            if (v1) *v1 = m->v1[i];
            return 1;
        }
        i = (i + 1) & (m->cap - 1);
    }
}

dsc_status tok_strmap_init(tok_strmap *m, size_t expected, dsc_err *err) {
    m->cap = table_cap(expected);
    m->slots = malloc(m->cap * sizeof *m->slots);
    if (!m->slots)
        return dsc_err_set(err, DSC_ERR_OOM, "tokenizer: cannot allocate a map of %zu slots",
                           m->cap);
    memset(m->slots, 0xff, m->cap * sizeof *m->slots); /* every slot -1 */
    return DSC_OK;
}

void tok_strmap_free(tok_strmap *m) {
    free(m->slots);
    m->slots = NULL;
    m->cap = 0;
}

/* Slot holding s, or the empty slot where it would go. */
static size_t str_slot(const tok_strmap *m, const char *s, size_t len) {
    size_t i = hash_bytes(s, len) & (m->cap - 1);
    for (;;) {
        int32_t id = m->slots[i];
        if (id < 0) return i;
        if ((size_t)m->len[id] == len && !memcmp(m->arena + m->off[id], s, len)) return i;
        i = (i + 1) & (m->cap - 1);
    }
}

int32_t tok_strmap_put(tok_strmap *m, int32_t id, int replace) {
    size_t i = str_slot(m, m->arena + m->off[id], (size_t)m->len[id]);
    int32_t old = m->slots[i];
    if (old < 0 || replace) m->slots[i] = id;
    return old;
}

int32_t tok_strmap_get(const tok_strmap *m, const char *s, size_t len) {
    if (!m->cap) return -1;
    return m->slots[str_slot(m, s, len)];
}

/* ---- byte-level alphabet ---- */

/* Bytes GPT-2 keeps as their own code point: '!'..'~', 0xA1..0xAC, 0xAE..0xFF. */
static int byte_is_printable(unsigned b) {
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
}

uint32_t tok_byte_to_cp(unsigned char b) {
    if (byte_is_printable(b)) return b;
    /* the others get 0x100 + (their rank among the non-printable bytes):
       0x00-0x20 are ranks 0-32, 0x7F-0xA0 ranks 33-66, 0xAD rank 67 */
    if (b <= 0x20) return 0x100u + b;
    if (b <= 0xA0) return 0x100u + 33 + (b - 0x7Fu);
    return 0x100u + 67; /* 0xAD */
}

int tok_cp_to_byte(uint32_t cp) {
    if (cp < 0x100) return byte_is_printable(cp) ? (int)cp : -1;
    if (cp <= 0x100 + 32) return (int)(cp - 0x100);
    if (cp <= 0x100 + 66) return (int)(cp - 0x100 - 33 + 0x7F);
    if (cp == 0x100 + 67) return 0xAD;
    return -1;
}

/* ---- UTF-8 ---- */

size_t tok_utf8_len(const unsigned char *s, size_t n, uint32_t *cp) {
    if (n == 0) return 0;
    unsigned c = s[0];
    if (c < 0x80) {
        if (cp) *cp = c;
        return 1;
    }
    size_t len;
    uint32_t v, lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
        v = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        v = c & 0x0F;
        if (c == 0xE0) lo = 0xA0;      /* no overlong forms */
        if (c == 0xED) hi = 0x9F;      /* no surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        v = c & 0x07;
        if (c == 0xF0) lo = 0x90;      /* no overlong forms */
        if (c == 0xF4) hi = 0x8F;      /* <= U+10FFFF */
    } else {
        return 0;
    }
    if (n < len) return 0;
    if (s[1] < lo || s[1] > hi) return 0;
    v = (v << 6) | (s[1] & 0x3F);
    for (size_t i = 2; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        v = (v << 6) | (s[i] & 0x3F);
    }
    if (cp) *cp = v;
    return len;
}

size_t tok_utf8_check(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        size_t l = tok_utf8_len(s + i, n - i, NULL);
        if (!l) return i;
        i += l;
    }
    return n;
}

int tok_is_space(uint32_t c) {
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

int tok_utf8_put(uint32_t cp, char *out) {
    unsigned char *o = (unsigned char *)out;
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | (cp >> 6));
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | (cp >> 18));
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}
