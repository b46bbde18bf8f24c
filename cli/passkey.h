/*
 * passkey.h - the passkey task's text, in one place: `dsc eval --passkey`
 * asks it (cli/eval.c) and `dsc train --passkey-mix` teaches it
 * (cli/train.c), so both must use the very same needle and question.
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

#include <stdint.h>
#include <stdio.h>

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

#endif
