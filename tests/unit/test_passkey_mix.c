/*
 * test_passkey_mix.c - the passkey training mix of `dsc train --passkey-mix
 * F [--passkey-pack MIN]` (cli/passkey.c), on the Brown tokenizer and a
 * filler of tokenized text. Checked by decoding the generated ids back to
 * text (exact closed forms, no tolerance):
 *  - every replaced sequence is a chain of examples that tile all T+1 ids
 *    (none left unwritten), each "[BOS] filler needle filler question
 *    answer" with the same 5-7 digit key in the needle and the answer;
 *  - pack 0: exactly one example per replaced sequence;
 *  - pack MIN: every example >= max(MIN, need) ids; lengths spread (short
 *    ones < 4 MIN and long ones > T/2 both occur) and the mean count per
 *    sequence that of the packer's log-uniform law, solved exactly by
 *    tests/reference/passkey_pack_count.py;
 *  - frac 0 leaves every id; a sequence is a pure function of (seed, i);
 *  - a T too short for one example is refused with the message.
 */
#include <stdlib.h>
#include <string.h>

#include "../../cli/passkey.h"
#include "test.h"

#define TOK_DIR "tests/fixtures/tokenizer_brown"
#define UNSET (-7)

static const char *FILLER =
    "The jury further said in term end presentments that the City Executive Committee, "
    "which had over-all charge of the election, deserves the praise and thanks of the "
    "City of Atlanta for the manner in which the election was conducted. ";

/* A fresh mix over FILLER's ids; 0 when it cannot be set up. */
static int mix_new(dsc_t *t, const dsc_tokenizer_t *tok, double frac, int64_t pack, int64_t T,
                   passkey_mix *pk, char *msg, size_t cap) {
    int32_t fill[512];
    int64_t n = 0;
    dsc_err e = {0};
    dsc_status s = dsc_tokenize(tok, FILLER, strlen(FILLER), 0, fill, 512, &n, &e);
    T_CHECK(t, s == DSC_OK && n > 10 && n <= 512, "tokenize filler: %s", e.msg);
    return passkey_mix_init(pk, frac, pack, 7, tok, fill, n <= 512 ? n : 0, T, msg, cap) == 0;
}

/* Text of ids[0, n) (special tokens as text). */
static char *detok(const dsc_tokenizer_t *tok, const int32_t *ids, int64_t n) {
    size_t cap = (size_t)n * 64 + 64, len = 0;
    char *out = malloc(cap);
    dsc_detok_state st = {{0}, 0};
    for (int64_t i = 0; i < n && out; i++) {
        int64_t k = dsc_detokenize_piece(tok, ids[i], 0, &st, out + len, (int64_t)(cap - len));
        if (k < 0) {
            free(out);
            return NULL;
        }
        len += (size_t)k;
    }
    if (out) {
        len += (size_t)dsc_detok_flush(&st, out + len, (int64_t)(cap - len));
        out[len] = 0;
    }
    return out;
}

/* One example ids[0, n): well formed (BOS first, the needle with key K
   once, the question then " K" at the end). Returns 1 when it is. */
static int check_example(dsc_t *t, const dsc_tokenizer_t *tok, const passkey_mix *pk,
                         const int32_t *ids, int64_t n, const char *where) {
    T_CHECK(t, pk->bos < 0 || ids[0] == pk->bos, "%s: does not start with BOS (%d)", where,
            ids[0]);
    char *s = detok(tok, ids + (pk->bos >= 0), n - (pk->bos >= 0));
    T_CHECK(t, s != NULL, "%s: cannot decode", where);
    if (!s) return 0;
    const char *q = strstr(s, PASSKEY_QUESTION), *q2 = q ? strstr(q + 1, PASSKEY_QUESTION) : NULL;
    char key[32] = "", needle[200];
    int ok = q && !q2 && sscanf(q + strlen(PASSKEY_QUESTION), " %31[0-9]", key) == 1;
    size_t kl = strlen(key);
    ok = ok && kl >= 5 && kl <= 7 && key[0] != '0' &&
         !strcmp(q + strlen(PASSKEY_QUESTION), (snprintf(needle, sizeof needle, " %s", key), needle));
    snprintf(needle, sizeof needle, PASSKEY_NEEDLE, key, key);
    const char *nd = ok ? strstr(s, needle) : NULL;
    ok = ok && nd && nd < q && !strstr(nd + 1, needle);
    T_CHECK(t, ok, "%s: not [BOS] filler needle filler question answer (key '%s'): ...%s", where,
            key, q ? q : s);
    free(s);
    return ok;
}

/* Sequence i of a mix checked; returns its example count (0: untouched),
   lengths into len[] (at most 64). */
static int check_seq(dsc_t *t, const dsc_tokenizer_t *tok, const passkey_mix *pk, int64_t i,
                     int64_t T, int64_t *len) {
    int32_t *ids = malloc((size_t)(T + 1) * sizeof *ids);
    for (int64_t j = 0; j <= T; j++) ids[j] = UNSET;
    passkey_mix_seq(pk, i, ids, T);
    int untouched = 1;
    for (int64_t j = 0; j <= T; j++) untouched &= ids[j] == UNSET;
    int n = 0;
    if (!untouched) {
        for (int64_t j = 0; j <= T; j++) T_CHECK(t, ids[j] != UNSET, "seq %lld: id %lld unwritten",
                                                 (long long)i, (long long)j);
        for (int64_t a = 0; a <= T && n < 64;) {   /* examples start at BOS ids */
            int64_t b = a + 1;
            while (b <= T && ids[b] != pk->bos) b++;
            char where[64];
            snprintf(where, sizeof where, "seq %lld example %d", (long long)i, n);
            check_example(t, tok, pk, ids + a, b - a, where);
            len[n++] = b - a;
            a = b;
        }
    }
    free(ids);
    return n;
}

static void test_mix(dsc_t *t) {
    dsc_tokenizer_t *tok = NULL;
    dsc_err e = {0};
    T_CHECK(t, dsc_tokenizer_load(TOK_DIR, &tok, &e) == DSC_OK, "%s", e.msg);
    if (!tok) return;
    T_CHECK(t, dsc_tokenizer_adds_bos(tok) && dsc_tokenizer_bos(tok) >= 0,
            "the test splits examples at BOS: the Brown tokenizer must add one");
    char msg[256];
    const int64_t T = 4095, MIN = 128, SEQS = 60;
    passkey_mix one, pack, none;
    int ok = mix_new(t, tok, 0.999, 0, T, &one, msg, sizeof msg) &&
             mix_new(t, tok, 0.999, MIN, T, &pack, msg, sizeof msg) &&
             mix_new(t, tok, 0.0, MIN, T, &none, msg, sizeof msg);
    T_CHECK(t, ok, "passkey_mix_init: %s", msg);
    if (ok) {
        int64_t len[64], total = 0, n_short = 0, n_long = 0, n_ex = 0;
        for (int64_t i = 0; i < SEQS; i++) {
            int n = check_seq(t, tok, &one, i, T, len);
            T_CHECK(t, n == 1 && len[0] == T + 1, "pack 0, seq %lld: %d examples", (long long)i, n);
            n = check_seq(t, tok, &pack, i, T, len);
            T_CHECK(t, n >= 1, "pack, seq %lld untouched at frac 0.999", (long long)i);
            int64_t sum = 0;
            for (int k = 0; k < n; k++) {
                sum += len[k];
                T_CHECK(t, len[k] >= MIN && len[k] >= pack.need, "seq %lld: example of %lld ids",
                        (long long)i, (long long)len[k]);
                n_short += len[k] < 4 * MIN;
                n_long += len[k] > (T + 1) / 2;
            }
            T_CHECK(t, sum == T + 1, "seq %lld: examples cover %lld of %lld ids", (long long)i,
                    (long long)sum, (long long)(T + 1));
            n_ex += n;
            total++;
            T_CHECK(t, check_seq(t, tok, &none, i, T, len) == 0, "frac 0 changed seq %lld",
                    (long long)i);
        }
        /* the expected count for T+1 = 4096, MIN = 128 is 6.1065
           (tests/reference/passkey_pack_count.py: the packer's law solved
           exactly); over 60 sequences the mean's sd is ~0.2, so +-1 is ~5
           sd: a wrong length law (uniform: ~3.5, one per sequence: 1) fails */
        double mean = (double)n_ex / (double)total;
        T_CHECK(t, fabs(mean - 6.1065) < 1.0, "%.2f examples per packed sequence (want 6.11)",
                mean);
        T_CHECK(t, n_short > SEQS / 2 && n_long > 0, "lengths not spread: %lld short, %lld long",
                (long long)n_short, (long long)n_long);
        /* a pure function of (seed, i) */
        int32_t *a = malloc((size_t)(T + 1) * sizeof *a), *b = malloc((size_t)(T + 1) * sizeof *b);
        memset(a, 0, (size_t)(T + 1) * sizeof *a);
        memset(b, 0, (size_t)(T + 1) * sizeof *b);
        passkey_mix_seq(&pack, 5, a, T);
        passkey_mix_seq(&pack, 5, b, T);
        T_CHECK(t, !memcmp(a, b, (size_t)(T + 1) * sizeof *a), "seq 5 drawn twice differs");
        passkey_mix_seq(&pack, 6, b, T);
        T_CHECK(t, memcmp(a, b, (size_t)(T + 1) * sizeof *a), "seq 5 and 6 are equal");
        free(a);
        free(b);
        if (getenv("DSC_TEST_VERBOSE"))
            printf("      %.2f examples per packed sequence, %lld < %lld ids, %lld > %lld ids\n",
                   mean, (long long)n_short, (long long)(4 * MIN), (long long)n_long,
                   (long long)((T + 1) / 2));
    }
    passkey_mix_free(&one);
    passkey_mix_free(&pack);
    passkey_mix_free(&none);
    /* too short for one example */
    passkey_mix bad;
    ok = mix_new(t, tok, 0.5, 0, 16, &bad, msg, sizeof msg);
    T_CHECK(t, !ok && strstr(msg, "too short for a passkey example"), "T 16 accepted (%s)", msg);
    dsc_tokenizer_free(tok);
}

const dsc_test_case dsc_tests_passkey_mix[] = {
    {"passkey_mix", test_mix},
    {NULL, NULL},
};
