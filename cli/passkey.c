/*
 * passkey.c - the passkey training mix (contract in passkey.h).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "passkey.h"

/* Ids of text (no BOS) into ids[cap]; returns the count, -1 when over cap
   or when the text does not encode. */
static int64_t encode(const dsc_tokenizer_t *tok, const char *text, int32_t *ids, int64_t cap) {
    dsc_err e = {0};
    int64_t n = 0;
    if (dsc_tokenize(tok, text, strlen(text), 0, ids, cap, &n, &e) != DSC_OK) return -1;
    return n > cap ? -1 : n;
}

static double unit(uint64_t *r) {   /* uniform in [0, 1) */
    return (double)(passkey_rng(r) >> 11) * (1.0 / 9007199254740992.0);
}

/* One example of exactly len ids into ids, the key and depth drawn from
   *r. Returns 0 (ids untouched) when the key does not fit len. */
static int example(const passkey_mix *pk, uint64_t *r, int32_t *ids, int64_t len) {
    char key[16], text[160];
    int32_t nid[128], ans[32];
    passkey_key(r, key);
    snprintf(text, sizeof text, PASSKEY_NEEDLE, key, key);
    int64_t nn = encode(pk->tok, text, nid, 128);
    snprintf(text, sizeof text, PASSKEY_ANSWER, key);
    int64_t na = encode(pk->tok, text, ans, 32);
    int64_t nb = pk->bos >= 0, F = len - nb - nn - pk->nq - na;
    if (nn < 0 || na < 0 || F < 0) return 0;
    int64_t a = (int64_t)(passkey_rng(r) % (uint64_t)(F + 1));   /* the depth */
    int64_t off = (int64_t)(passkey_rng(r) % (uint64_t)pk->nf), n = 0;
    if (nb) ids[n++] = pk->bos;
    for (int64_t j = 0; j < a; j++) ids[n++] = pk->fill[(off + j) % pk->nf];
    memcpy(ids + n, nid, (size_t)nn * sizeof *nid);
    n += nn;
    for (int64_t j = a; j < F; j++) ids[n++] = pk->fill[(off + j) % pk->nf];
    memcpy(ids + n, pk->q, (size_t)pk->nq * sizeof *ids);
    n += pk->nq;
    memcpy(ids + n, ans, (size_t)na * sizeof *ans);
    return 1;
}

void passkey_mix_seq(const passkey_mix *pk, int64_t i, int32_t *ids, int64_t T) {
    uint64_t r = pk->seed * 0x100000001B3ull ^ (uint64_t)i * 0xD1B54A32D192ED03ull ^ 0x5A55C0DEull;
    if (unit(&r) >= pk->frac) return;
    if (!pk->pack) {
        example(pk, &r, ids, T + 1);
        return;
    }
    int64_t lo = pk->pack > pk->need ? pk->pack : pk->need;
    for (int64_t n = 0; n < T + 1;) {
        int64_t left = T + 1 - n, len = left;
        if (left >= 2 * lo) {
            len = (int64_t)((double)lo * exp(unit(&r) * log((double)left / (double)lo)));
            if (len < lo) len = lo;
            if (left - len < lo) len = left;
        }
        example(pk, &r, ids + n, len);
        n += len;
    }
}

int passkey_mix_init(passkey_mix *pk, double frac, int64_t pack, uint64_t seed,
                     const dsc_tokenizer_t *tok, const int32_t *text, int64_t n, int64_t T,
                     char *msg, size_t cap) {
    memset(pk, 0, sizeof *pk);
    pk->frac = frac;
    pk->pack = pack;
    pk->seed = seed;
    pk->tok = tok;
    pk->fill = malloc((size_t)(n > 0 ? n : 1) * sizeof *pk->fill);
    if (!pk->fill) {
        snprintf(msg, cap, "out of memory for %lld filler ids", (long long)n);
        return -1;
    }
    int32_t bos = dsc_tokenizer_bos(tok), eos = dsc_tokenizer_eos(tok);
    for (int64_t i = 0; i < n; i++)
        if (text[i] != bos && text[i] != eos) pk->fill[pk->nf++] = text[i];
    pk->bos = dsc_tokenizer_adds_bos(tok) ? bos : -1;
    pk->nq = encode(tok, PASSKEY_QUESTION, pk->q, 64);
    char needle[160];
    int32_t tmp[128];
    snprintf(needle, sizeof needle, PASSKEY_NEEDLE, "9999999", "9999999");
    int64_t nn = encode(tok, needle, tmp, 128);
    int64_t na = encode(tok, " 9999999", tmp, 128);
    pk->need = (pk->bos >= 0) + nn + pk->nq + na;
    if (pk->nf == 0 || pk->nq < 0 || nn < 0 || na < 0 || T + 1 < pk->need) {
        snprintf(msg, cap, "--seq %lld is too short for a passkey example (needs at least %lld)%s",
                 (long long)T, (long long)(pk->need - 1),
                 pk->nf == 0 ? ", or the training split has no filler text" : "");
        passkey_mix_free(pk);
        return -1;
    }
    return 0;
}

void passkey_mix_free(passkey_mix *pk) {
    free(pk->fill);
    pk->fill = NULL;
    pk->nf = 0;
}
