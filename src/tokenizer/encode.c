/*
 * encode.c - dsc_tokenize: text -> ids, the pipeline of `tokenizers`'
 * Tokenizer.encode for the configurations tokenizer.c accepts:
 *
 *  1. the text must be valid UTF-8 (else DSC_ERR_ARG naming the offset of
 *     the first bad byte);
 *  2. added tokens are cut out of the raw text: first those with
 *     normalized = false over the whole text, then those with normalized =
 *     true inside each remaining gap (the normalizer is the identity, so its
 *     output is the gap itself). Each pass is leftmost-longest, like the
 *     Aho-Corasick matcher `tokenizers` uses; single_word / lstrip / rstrip
 *     are applied as it applies them;
 *  3. every gap goes through the pre-tokenizer's Split steps in order, each
 *     step splitting every piece of the previous one (a regex only ever sees
 *     one piece, so e.g. a lookahead at its end sees the end of the subject);
 *  4. the ByteLevel step: optional prefix space, optional GPT-2 regex split;
 *  5. BPE on the bytes of each resulting piece (bpe.c).
 * BOS is written first when asked for (see dsc_tokenize below).
 *
 * All scratch memory belongs to one call, so calls may run concurrently.
 */
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tok.h"
#include "util/util.h"

typedef struct {
    size_t s, e;
    int match;
} piece;

typedef struct {
    piece *v;
    size_t n, cap;
} piece_list;

typedef struct {
    const dsc_tokenizer_t *t;
    tok_out out;
    tok_bpe_scratch bpe;
    pcre2_match_data *md;
    piece_list lv[TOK_MAX_STEPS + 1]; /* one list per pre-tokenizer step */
    char *pfx;                         /* " " + piece for add_prefix_space */
    size_t pfx_cap;
    dsc_err *err;
} enc;

static dsc_status list_push(enc *c, piece_list *l, size_t s, size_t e, int match) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 64;
        piece *v = realloc(l->v, cap * sizeof *v);
        if (!v) return dsc_err_set(c->err, DSC_ERR_OOM, "tokenizer: no memory for pieces");
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = (piece){s, e, match};
    return DSC_OK;
}

/* Cover subj[0..n) with alternating gaps and matches of re, in order (the
   `find_matches` of `tokenizers`). Matches never overlap; an empty match
   contributes nothing and the search moves on by one character. */
static dsc_status find_matches(enc *c, const pcre2_code *re, const char *subj, size_t n,
                               piece_list *l) {
    l->n = 0;
    size_t prev = 0, off = 0;
    while (off < n) {
        int rc = pcre2_match(re, (PCRE2_SPTR)subj, n, off, PCRE2_NO_UTF_CHECK, c->md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return dsc_err_set(c->err, DSC_ERR_UNSUPPORTED,
                               "tokenizer: pre-tokenizer regex failed on a %zu-byte piece: %s", n,
                               (const char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(c->md);
        size_t ms = ov[0], me = ov[1];
        if (me == ms) {
            size_t l1 = tok_utf8_len((const unsigned char *)subj + ms, n - ms, NULL);
            off = ms + (l1 ? l1 : 1);
            continue;
        }
        if (ms > prev) DSC_TRY(list_push(c, l, prev, ms, 0));
        DSC_TRY(list_push(c, l, ms, me, 1));
        prev = off = me;
    }
    if (prev < n) DSC_TRY(list_push(c, l, prev, n, 0));
    return DSC_OK;
}

/* Turn the covering list into the pieces a Split step keeps, in place
   (SplitDelimiterBehavior of `tokenizers`; `match` is already inverted). */
static void apply_behavior(piece_list *l, tok_split_behavior b) {
    size_t w = 0;
    int prev_match = 0;
    switch (b) {
    case TOK_SPLIT_ISOLATED:
        return;
    case TOK_SPLIT_REMOVED:
        for (size_t i = 0; i < l->n; i++)
            if (!l->v[i].match) l->v[w++] = l->v[i];
        break;
    case TOK_SPLIT_MERGED_PREV: /* a match joins the piece before it */
        for (size_t i = 0; i < l->n; i++) {
            piece p = l->v[i];
            if (p.match && !prev_match && w > 0)
                l->v[w - 1].e = p.e;
            else
                l->v[w++] = p;
            prev_match = p.match;
        }
        break;
    case TOK_SPLIT_MERGED_NEXT: { /* a match joins the piece after it */
        for (size_t i = l->n; i-- > 0;) {
            piece p = l->v[i];
            /* built back to front at the end of the array, then moved down */
            if (p.match && !prev_match && w > 0)
                l->v[l->n - w].s = p.s;
            else
                l->v[l->n - ++w] = p;
            prev_match = p.match;
        }
        memmove(l->v, l->v + (l->n - w), w * sizeof *l->v);
        break;
    }
    case TOK_SPLIT_CONTIGUOUS: /* runs of matches, and runs of gaps, join */
        for (size_t i = 0; i < l->n; i++) {
            piece p = l->v[i];
            if (p.match == prev_match && w > 0)
                l->v[w - 1].e = p.e;
            else
                l->v[w++] = p;
            prev_match = p.match;
        }
        break;
    }
    l->n = w;
}

/* Steps 4 and 5 for one piece p[0..n). */
static dsc_status byte_level(enc *c, const char *p, size_t n) {
    const dsc_tokenizer_t *t = c->t;
    if (t->bl_prefix_space && p[0] != ' ') {
        if (n + 1 > c->pfx_cap) {
            char *b = realloc(c->pfx, n + 1);
            if (!b) return dsc_err_set(c->err, DSC_ERR_OOM, "tokenizer: no memory");
            c->pfx = b;
            c->pfx_cap = n + 1;
        }
        c->pfx[0] = ' ';
        memcpy(c->pfx + 1, p, n);
        p = c->pfx;
        n++;
    }
    if (!t->bl_re) return tok_bpe(t, (const unsigned char *)p, n, &c->bpe, &c->out, c->err);
    piece_list *l = &c->lv[TOK_MAX_STEPS];
    DSC_TRY(find_matches(c, t->bl_re, p, n, l));
    for (size_t i = 0; i < l->n; i++)
        DSC_TRY(tok_bpe(t, (const unsigned char *)p + l->v[i].s, l->v[i].e - l->v[i].s, &c->bpe,
                        &c->out, c->err));
    return DSC_OK;
}

/* Pre-tokenizer step `k` (and the ones after it) on the piece p[0..n). */
static dsc_status pretok(enc *c, const char *p, size_t n, int k) {
    if (n == 0) return DSC_OK;
    if (k == c->t->n_steps) return byte_level(c, p, n);
    const tok_step *st = &c->t->steps[k];
    piece_list *l = &c->lv[k];
    DSC_TRY(find_matches(c, st->re, p, n, l));
    if (st->invert)
        for (size_t i = 0; i < l->n; i++) l->v[i].match = !l->v[i].match;
    apply_behavior(l, st->behavior);
    /* the deeper steps use other lists, so l stays intact while we recurse */
    for (size_t i = 0; i < l->n; i++)
        DSC_TRY(pretok(c, p + l->v[i].s, l->v[i].e - l->v[i].s, k + 1));
    return DSC_OK;
}

/* The longest token of trie starting at text[pos] and ending by `end`:
   its index in t->added and its length, or -1. */
static int64_t trie_longest(const tok_trie *tr, const unsigned char *text, size_t pos,
                            size_t end, size_t *len) {
    int64_t best = -1;
    int32_t node = 0;
    for (size_t i = pos; i < end; i++) {
        int32_t child;
        if (!tok_u64map_get(&tr->edges, ((uint64_t)node << 8) | text[i], &child, NULL)) break;
        node = child;
        if (tr->node_tok[node] >= 0) {
            best = tr->node_tok[node];
            *len = i + 1 - pos;
        }
    }
    return best;
}

/* Whether the character before `pos` (after segment start s) / at `pos`
   (before e) is a word character, for single_word tokens. */
static int word_before(const enc *c, const unsigned char *text, size_t s, size_t pos) {
    if (pos == s) return 0;
    size_t b = pos - 1;
    while (b > s && (text[b] & 0xC0) == 0x80) b--;
    int rc = pcre2_match(c->t->re_word, text + b, pos - b, 0, PCRE2_ANCHORED | PCRE2_NO_UTF_CHECK,
                         c->md, NULL);
    return rc >= 0;
}

static int word_after(const enc *c, const unsigned char *text, size_t pos, size_t e) {
    if (pos == e) return 0;
    int rc = pcre2_match(c->t->re_word, text + pos, e - pos, 0,
                         PCRE2_ANCHORED | PCRE2_NO_UTF_CHECK, c->md, NULL);
    return rc >= 0;
}

/* Cut the added tokens of trie `tr` out of text[s..e): each match becomes its
   id, each gap goes to the normalized pass (pass 0) or the pre-tokenizer
   (pass 1). The `split_with_indices` rules of `tokenizers`: a single_word
   match needs non-word characters (or the segment's ends) on both sides and
   is otherwise dropped; lstrip takes the white space before it (not before
   the previous match's end), rstrip the white space after it. The search
   goes on after what rstrip took (`tokenizers` goes on from the match's
   end, which differs only for a token that begins with white space). */
static dsc_status split_added(enc *c, const char *text, size_t s, size_t e, int pass) {
    const dsc_tokenizer_t *t = c->t;
    const tok_trie *tr = pass == 0 ? &t->trie_raw : &t->trie_norm;
    const unsigned char *u = (const unsigned char *)text;
    size_t from = s; /* end of the previous match */
    size_t pos = s;
    while (tr->n_nodes > 1 && pos < e) {
        if (!tr->first[u[pos]]) {
            pos++;
            continue;
        }
        size_t mlen = 0;
        int64_t k = trie_longest(tr, u, pos, e, &mlen);
        if (k < 0) {
            pos++;
            continue;
        }
        const tok_added *a = &t->added[k];
        size_t ms = pos, me = pos + mlen;
        if (a->single_word && (word_before(c, u, s, ms) || word_after(c, u, me, e))) {
            pos = me; /* the matcher consumed it: no shorter retry here */
            continue;
        }
        if (a->lstrip) {
            size_t b = ms;
            while (b > s) {
                size_t cs = b - 1;
                while (cs > s && (u[cs] & 0xC0) == 0x80) cs--;
                uint32_t cp;
                if (!tok_utf8_len(u + cs, b - cs, &cp) || !tok_is_space(cp)) break;
                b = cs;
            }
            ms = b > from ? b : from;
        }
        if (a->rstrip) {
            uint32_t cp;
            size_t l1;
            while (me < e && (l1 = tok_utf8_len(u + me, e - me, &cp)) && tok_is_space(cp)) me += l1;
        }
        if (ms > from) {
            if (pass == 0)
                DSC_TRY(split_added(c, text, from, ms, 1));
            else
                DSC_TRY(pretok(c, text + from, ms - from, 0));
        }
        tok_emit(&c->out, a->id);
        from = pos = me;
    }
    if (e > from) {
        if (pass == 0) return split_added(c, text, from, e, 1);
        return pretok(c, text + from, e - from, 0);
    }
    return DSC_OK;
}

/*
 * add_bos: -1 follows the config the way transformers' LlamaTokenizerFast
 * does for tokenizer(text): its post-processor puts BOS before the ids when
 * add_bos_token is true (also for the empty text, and also when the text
 * itself starts with the BOS string). Nothing else is added: no EOS (configs
 * with add_eos_token true are refused at load).
 */
dsc_status dsc_tokenize(const dsc_tokenizer_t *t, const char *text, size_t len, int add_bos,
                        int32_t *ids, int64_t cap, int64_t *n_out, dsc_err *err) {
    if (n_out) *n_out = 0;
    if (!t || !n_out || (!text && len) || cap < 0 || (!ids && cap > 0))
        return dsc_err_set(err, DSC_ERR_ARG, "dsc_tokenize: NULL tokenizer, text, ids or n_out");
    size_t bad = tok_utf8_check((const unsigned char *)text, len);
    if (bad < len)
        return dsc_err_set(err, DSC_ERR_ARG,
                           "dsc_tokenize: invalid UTF-8 at byte offset %zu (byte 0x%02X)", bad,
                           (unsigned)(unsigned char)text[bad]);
    int bos = add_bos < 0 ? t->add_bos : add_bos != 0;
    if (bos && t->bos_id < 0)
        return dsc_err_set(err, DSC_ERR_ARG, "dsc_tokenize: BOS asked for, but the tokenizer has none");

    enc c;
    memset(&c, 0, sizeof c);
    c.t = t;
    c.out = (tok_out){ids, cap, 0};
    c.err = err;
    c.md = pcre2_match_data_create(1, NULL);
    if (!c.md) return dsc_err_set(err, DSC_ERR_OOM, "dsc_tokenize: no memory");
    if (bos) tok_emit(&c.out, t->bos_id);
    dsc_status st = len ? split_added(&c, text, 0, len, 0) : DSC_OK;
    pcre2_match_data_free(c.md);
    tok_bpe_scratch_free(&c.bpe);
    for (int i = 0; i <= TOK_MAX_STEPS; i++) free(c.lv[i].v);
    free(c.pfx);
    if (st == DSC_OK) *n_out = c.out.n;
    return st;
}
