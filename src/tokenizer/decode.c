/*
 * decode.c - ids -> text, one token at a time.
 *
 * A byte-level token may hold part of a UTF-8 character (an emoji is often
 * split over two or three tokens), so the stream keeps the incomplete tail of
 * a character in dsc_detok_state until the bytes that complete it arrive.
 * What comes out is always valid UTF-8: a byte sequence that can no longer
 * become a character is replaced by U+FFFD, one per "maximal subpart" (the
 * Unicode-recommended practice, which is also what Rust's from_utf8_lossy
 * does in the `tokenizers` ByteLevel decoder). Hence the concatenated output
 * of a stream equals `tokenizers`' decode of the same ids, and for ids that
 * came from encoding valid UTF-8 it is the original text.
 */
#include <string.h>

#include "tokenizer/tok.h"
#include "util/util.h"

static const char REPLACEMENT[3] = {(char)0xEF, (char)0xBF, (char)0xBD}; /* U+FFFD */

/* The bytes being decoded: the held-back ones, then the new token's. */
typedef struct {
    const unsigned char *a, *b;
    size_t na, nb;
} two_part;

static unsigned at(const two_part *x, size_t i) {
    return i < x->na ? x->a[i] : x->b[i - x->na];
}

/* Length a lead byte announces and the allowed range of the byte after it
   (narrower than 80..BF where overlong forms, surrogates or code points
   above U+10FFFF would follow); 0 for a byte that cannot start a character. */
static int lead_info(unsigned c, unsigned *lo, unsigned *hi) {
    *lo = 0x80;
    *hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) return 2;
    if (c >= 0xE0 && c <= 0xEF) {
        if (c == 0xE0) *lo = 0xA0;
        if (c == 0xED) *hi = 0x9F;
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (c == 0xF0) *lo = 0x90;
        if (c == 0xF4) *hi = 0x8F;
        return 4;
    }
    return 0;
}

/* Decode x into out (at most cap bytes). With `final` an incomplete last
   character becomes U+FFFD; otherwise its bytes are left for later and
   *held is their start. Returns the bytes written, or -1 when cap is too
   small (out may then hold a partial result; nothing else changes). */
static int64_t decode_lossy(const two_part *x, int final, char *out, int64_t cap, size_t *held) {
    size_t n = x->na + x->nb, i = 0;
    int64_t w = 0;
    *held = n;
    while (i < n) {
        unsigned c = at(x, i), lo, hi;
        if (c < 0x80) {
            if (w + 1 > cap) return -1;
            out[w++] = (char)c;
            i++;
            continue;
        }
        int len = lead_info(c, &lo, &hi);
        size_t k = 1; /* bytes of the sequence that are valid so far */
        while (len && k < (size_t)len && i + k < n) {
            unsigned d = at(x, i + k);
            if (k == 1 ? (d < lo || d > hi) : (d & 0xC0) != 0x80) break;
            k++;
        }
        if (len && k == (size_t)len) {
            if (w + len > cap) return -1;
            for (int j = 0; j < len; j++) out[w++] = (char)at(x, i + (size_t)j);
            i += (size_t)len;
            continue;
        }
        if (len && i + k == n && !final) { /* may still be completed */
            *held = i;
            break;
        }
        if (w + 3 > cap) return -1;
        memcpy(out + w, REPLACEMENT, 3);
        w += 3;
        i += k;
    }
    return w;
}

/*
 * Contract (adds to the header's): st must start zeroed; it holds at most 3
 * bytes between calls. A hole in the id range (an id with no token) decodes
 * to nothing. Returns -1, leaving st unchanged, for an id out of range, a
 * NULL tokenizer / state, a state that was not zeroed, or a cap smaller than
 * this token's output; 4 + 3 * (longest token's bytes) always suffices, and
 * for tokens of valid text the bound is 4 + the token's own bytes (DeepSeek-
 * V3's longest token has 128 bytes, so 64 is NOT always enough there).
 */
int64_t dsc_detokenize_piece(const dsc_tokenizer_t *t, int32_t id, int skip_special,
                             dsc_detok_state *st, char *out, int64_t cap) {
    if (!t || !st || id < 0 || id >= t->n_vocab || st->n_pend < 0 || st->n_pend > 3) return -1;
    if (!out) cap = 0;
    if (!(t->flags[id] & TOK_PRESENT) || (skip_special && (t->flags[id] & TOK_SPECIAL))) return 0;
    two_part x = {st->pend, (const unsigned char *)t->bytes + t->bytes_off[id],
                  (size_t)st->n_pend, (size_t)t->bytes_len[id]};
    size_t held;
    int64_t w = decode_lossy(&x, 0, out, cap, &held);
    if (w < 0) return -1;
    unsigned char keep[8];
    size_t nk = x.na + x.nb - held;
    DSC_CHECK(nk <= 3);
    for (size_t i = 0; i < nk; i++) keep[i] = (unsigned char)at(&x, held + i);
    memcpy(st->pend, keep, nk);
    st->n_pend = (int)nk;
    return w;
}

/* Emits the held bytes (they never form a complete character, so this is
   one U+FFFD, or nothing when none are held) and clears st. -1 when cap is
   too small (3 always suffices) or st is NULL / not a valid state. */
int64_t dsc_detok_flush(dsc_detok_state *st, char *out, int64_t cap) {
    if (!st || st->n_pend < 0 || st->n_pend > 3) return -1;
    if (!out) cap = 0;
    two_part x = {st->pend, NULL, (size_t)st->n_pend, 0};
    size_t held;
    int64_t w = decode_lossy(&x, 1, out, cap, &held);
    if (w < 0) return -1;
    st->n_pend = 0;
    return w;
}

const char *dsc_token_bytes(const dsc_tokenizer_t *t, int32_t id, size_t *len) {
    if (!t || id < 0 || id >= t->n_vocab) return NULL;
    if (len) *len = (size_t)t->bytes_len[id];
    return t->bytes + t->bytes_off[id];
}
