/*
 * regex.c - pre-tokenizer regexes: written for Oniguruma (the engine of
 * Hugging Face `tokenizers`), compiled with PCRE2 in UTF + UCP mode.
 *
 * The syntax these patterns use means the same in both engines; two
 * character classes do not, and an exhaustive comparison over every code
 * point (tests/reference/make_tokenizer_cases.py --unicode-table) found
 * exactly these differences, which the rewrite below removes:
 *  - \s: PCRE2 also matches U+180E MONGOLIAN VOWEL SEPARATOR (a space before
 *    Unicode 6.3, kept in PCRE2's list of horizontal spaces); Oniguruma, like
 *    the White_Space property, does not. \s becomes the explicit White_Space
 *    list (the same as tok_is_space), \S its complement.
 *  - \p{L} \p{N} \p{P} \p{S} \p{M}: PCRE2 10.42 has Unicode 14 tables,
 *    Oniguruma in `tokenizers` 0.23 Unicode 16: ~10,000 code points assigned
 *    since (new emoji, scripts, CJK extension I) are in the class for one and
 *    unassigned for the other. The class gets uranges.c's ranges added.
 * Inside a bracket class \s and \p{X} are expanded in place; \S and \P{X}
 * cannot be (PCRE2 has no class subtraction) and stay as they are, as do
 * patterns using \Q...\E quoting. Neither DeepSeek-V3's nor GPT-2's pattern
 * has those forms.
 */
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tok.h"
#include "util/util.h"

/* White_Space (matches tok_is_space), written for inside a bracket class. */
static const char SPACE_SET[] = "\\t\\n\\x{0B}\\f\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}"
                                "\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}";

typedef struct {
    char *s;
    size_t n, cap;
    int oom;
} sbuf;

static void put(sbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = 2 * (b->n + n + 1);
        char *p = realloc(b->s, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->s = p;
        b->cap = cap;
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
}

static void puts_(sbuf *b, const char *s) { put(b, s, strlen(s)); }

/* "\p{X}" followed by the extra ranges of class X (bracket-class contents). */
static void put_class(sbuf *b, const tok_uclass *u) {
    char tmp[48];
    snprintf(tmp, sizeof tmp, "\\p{%c}", u->name);
    puts_(b, tmp);
    for (size_t i = 0; i < u->n; i++) {
        snprintf(tmp, sizeof tmp, "\\x{%X}-\\x{%X}", (unsigned)u->ranges[i][0],
                 (unsigned)u->ranges[i][1]);
        puts_(b, tmp);
    }
}

/* The class a \p / \P escape at pat[i] names, and the escape's length;
   NULL when it is not one of L N P S M (then it is left alone). */
static const tok_uclass *uclass_at(const char *pat, size_t n, size_t i, size_t *len) {
    char name = 0;
    if (i + 2 < n && pat[i + 2] != '{') {
        name = pat[i + 2];
        *len = 3;
    } else if (i + 4 < n && pat[i + 2] == '{' && pat[i + 4] == '}') {
        name = pat[i + 3];
        *len = 5;
    }
    for (int k = 0; k < TOK_N_UCLASSES && name; k++)
        if (tok_uclasses[k].name == name) return &tok_uclasses[k];
    return NULL;
}

/* The rewritten pattern (malloc'd, NUL-terminated) or NULL on OOM; *out_n
   its length. A pattern with \Q is returned unchanged. */
static char *rewrite(const char *pat, size_t n, size_t *out_n) {
    sbuf b = {0};
    int in_class = 0;
    for (size_t i = 0; i < n;) {
        char c = pat[i];
        if (c == '\\' && i + 1 < n) {
            char d = pat[i + 1];
            size_t len = 2;
            const tok_uclass *u = (d == 'p' || d == 'P') ? uclass_at(pat, n, i, &len) : NULL;
            if (d == 'Q') { /* quoting: do not try to follow it */
                free(b.s);
                b = (sbuf){0};
                put(&b, pat, n);
                break;
            }
            if (u && (!in_class || d == 'p')) {
                if (!in_class) puts_(&b, d == 'P' ? "[^" : "[");
                put_class(&b, u);
                if (!in_class) puts_(&b, "]");
            } else if (d == 's' || (d == 'S' && !in_class)) {
                if (!in_class) puts_(&b, d == 'S' ? "[^" : "[");
                puts_(&b, SPACE_SET);
                if (!in_class) puts_(&b, "]");
            } else {
                put(&b, pat + i, len);
            }
            i += len;
            continue;
        }
        if (c == '[' && !in_class) {
            /* "[", "[^", then a "]" right there is a literal member */
            size_t j = i + 1;
            if (j < n && pat[j] == '^') j++;
            if (j < n && pat[j] == ']') j++;
            put(&b, pat + i, j - i);
            i = j;
            in_class = 1;
            continue;
        }
        if (c == '[' && in_class && i + 1 < n && pat[i + 1] == ':') { /* [:alpha:] */
            const char *end = NULL;
            for (size_t j = i + 2; j + 1 < n; j++)
                if (pat[j] == ':' && pat[j + 1] == ']') {
                    end = pat + j + 2;
                    break;
                }
            if (end) {
                put(&b, pat + i, (size_t)(end - (pat + i)));
                i = (size_t)(end - pat);
                continue;
            }
        }
        if (c == ']' && in_class) in_class = 0;
        put(&b, &c, 1);
        i++;
    }
    if (n == 0) put(&b, "", 0);
    if (b.oom) {
        free(b.s);
        return NULL;
    }
    *out_n = b.n;
    return b.s;
}

dsc_status tok_regex_compile(const char *pat, size_t len, int literal, const char *what,
                             pcre2_code **out, dsc_err *err) {
    *out = NULL;
    size_t n = len;
    char *rw = literal ? NULL : rewrite(pat, len, &n);
    if (!literal && !rw) return dsc_err_set(err, DSC_ERR_OOM, "%s: no memory for the regex", what);
    int ec = 0;
    PCRE2_SIZE eo = 0;
    /* PCRE2_LITERAL admits UTF but not UCP (which only matters for classes) */
    uint32_t opts = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)(rw ? rw : pat), n, opts, &ec, &eo, NULL);
    free(rw);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ec, msg, sizeof msg);
        /* the offset is in the rewritten pattern, so quote the original */
        return dsc_err_set(err, DSC_ERR_FORMAT, "%s: regex /%.200s/ does not compile: %s", what,
                           pat, (const char *)msg);
    }
    /* JIT makes matching several times faster; when the platform has no JIT
       the interpreter gives the same matches, so a failure is not an error. */
    (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
    *out = re;
    return DSC_OK;
}
