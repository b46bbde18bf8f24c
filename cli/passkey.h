/*
 * passkey.h - the passkey task's text, in one place: `dsc eval --passkey`
 * asks it (cli/eval.c) and `dsc train --passkey-mix` teaches it
 * (cli/train.c, through the training mix below, cli/passkey.c), so both
 * must use the very same needle and question.
 *
 *   [BOS] filler[0..a) needle filler[a..F) question [answer]
 *
 * needle   PASSKEY_NEEDLE with the key twice, e.g.
 *          " The pass key is 123456. Remember it. 123456 is the pass key."
 * question PASSKEY_QUESTION
 * answer   PASSKEY_ANSWER with the key (" 123456"): training only; eval lets
 *          the model generate it.
 * Each piece is tokenized on its own. The key is 5-7 digits, drawn by
 * passkey_key() from a splitmix64 state (digits first, then the value).
 */
#ifndef DSC_CLI_PASSKEY_H
#define DSC_CLI_PASSKEY_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "dsc.h"

#define PASSKEY_NEEDLE " The pass key is %s. Remember it. %s is the pass key."
#define PASSKEY_QUESTION " What is the pass key? The pass key is"
#define PASSKEY_ANSWER " %s"

/* splitmix64: the next 64 random bits of *st. */
static inline uint64_t passkey_rng(uint64_t *st) {
    uint64_t z = (*st += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* A random 5-7 digit key into key[16] (two draws from *st). */
static inline void passkey_key(uint64_t *st, char key[16]) {
    int digits = 5 + (int)(passkey_rng(st) % 3);
    uint64_t base = digits == 5 ? 10000 : digits == 6 ? 100000 : 1000000;
    snprintf(key, 16, "%llu", (unsigned long long)(base + passkey_rng(st) % (9 * base)));
}

/*
 * The training mix (`dsc train --passkey-mix F [--passkey-pack MIN]`):
 * sequence i of a run (ids[T+1]) is, with probability F, replaced by
 * passkey data, a pure function of (seed, i) so that a resumed run draws
 * the same examples:
 *  - pack 0: one example of T+1 ids, [BOS] filler needle filler question
 *    answer, the needle at a uniform depth;
 *  - pack MIN: examples one after the other, each of a log-uniform length
 *    in [max(MIN, need), what is left] (the last takes the rest, so none is
 *    shorter), i.e. retrievals over every distance up to T and more
 *    answers per token.
 * need = the shortest example (a 7-digit key, no filler). Filler is read
 * cyclically from the training text without BOS / EOS at a random
 * offset. An example whose key does not fit its length leaves its ids as
 * they were (only 7-digit keys can be that long; need rules it out).
 */
typedef struct {
    double frac;                 /* share of sequences replaced, [0, 1)      */
    int64_t pack;                /* 0, or the shortest packed example (MIN)  */
    int64_t need;                /* ids of the shortest example               */
    uint64_t seed;
    const dsc_tokenizer_t *tok;
    int32_t *fill;               /* (nf) owned: the text without BOS / EOS    */
    int64_t nf;
    int32_t q[64];               /* (nq) PASSKEY_QUESTION's ids               */
    int64_t nq;
    int32_t bos;                 /* -1: the tokenizer adds none               */
} passkey_mix;

/* Set pk up over text[0, n) (the training stream: its BOS / EOS ids are
   dropped from the copy pk keeps as filler). Returns 0, or -1 with a
   message in msg when T + 1 cannot hold an example, there is no filler,
   or memory runs out; passkey_mix_free releases pk either way. */
int passkey_mix_init(passkey_mix *pk, double frac, int64_t pack, uint64_t seed,
                     const dsc_tokenizer_t *tok, const int32_t *text, int64_t n, int64_t T,
                     char *msg, size_t cap);
void passkey_mix_seq(const passkey_mix *pk, int64_t i, int32_t *ids, int64_t T);
void passkey_mix_free(passkey_mix *pk);

#endif
