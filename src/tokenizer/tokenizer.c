/*
 * tokenizer.c - loading a Hugging Face tokenizer (tokenizer.json and, when
 * present, tokenizer_config.json) and the small accessors of dsc.h.
 *
 * What is accepted from tokenizer.json (anything else: DSC_ERR_UNSUPPORTED
 * naming the field and its value, so a tokenizer that loads is one whose
 * encoding this code reproduces exactly):
 *   model          type "BPE" (or no type with merges), no dropout, no
 *                  continuing_subword_prefix / end_of_word_suffix, no
 *                  byte_fallback; ignore_merges and unk_token honoured; merges
 *                  as "a b" strings or ["a", "b"] pairs (a later duplicate
 *                  pair replaces an earlier one, as in `tokenizers`)
 *   normalizer     null, or a Sequence of such (identity: DeepSeek-V3 has an
 *                  empty Sequence)
 *   pre_tokenizer  ByteLevel, or a Sequence of Split steps (Regex or String
 *                  pattern, any behavior, invert) ending in ByteLevel
 *                  (add_prefix_space, use_regex: GPT-2's pattern)
 *   decoder        ByteLevel
 *   post_processor null or ByteLevel (it only adjusts offsets)
 *   truncation     null (padding is ignored: it only affects batches)
 * and from tokenizer_config.json: add_bos_token (absent: true for the Llama
 * tokenizer classes, whose constructor defaults to it, else false),
 * bos_token / eos_token (a string or an AddedToken object), add_eos_token
 * (true is unsupported). Regexes are compiled with PCRE2 in UTF + UCP mode;
 * `tokenizers` uses Oniguruma, and the two agree on the Unicode classes these
 * patterns use (tests/unit/test_tokenizer.c checks >10,000 strings).
 *
 * Errors: a missing tokenizer.json is DSC_ERR_IO naming the path; malformed
 * JSON or inconsistent contents (unknown merge token, id out of range, ...)
 * DSC_ERR_FORMAT naming the file and field.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include "tokenizer/tok.h"
#include "util/util.h"

/* GPT-2's pre-tokenizer pattern, which ByteLevel applies when use_regex. */
static const char GPT2_PATTERN[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

typedef struct {
    dsc_tokenizer_t *t;
    const char *path; /* for messages */
    dsc_err *err;
} ld;

static dsc_status unsupported(ld *l, const char *field, const char *value) {
    return dsc_err_set(l->err, DSC_ERR_UNSUPPORTED, "%s: %s %s%s%s is not supported", l->path,
                       field, value ? "'" : "", value ? value : "set", value ? "'" : "");
}

static dsc_status bad(ld *l, const char *what) {
    return dsc_err_set(l->err, DSC_ERR_FORMAT, "%s: %s", l->path, what);
}

/* Parse path into *root (an object). */
static dsc_status load_json(const char *path, json_t **root, dsc_err *err) {
    char *buf;
    size_t len;
    DSC_TRY(dsc_read_file(path, &buf, &len, err));
    json_error_t je;
    *root = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &je);
    free(buf);
    if (!*root)
        return dsc_err_set(err, DSC_ERR_FORMAT, "%s: malformed JSON at line %d column %d: %s",
                           path, je.line, je.column, je.text);
    if (!json_is_object(*root)) {
        json_decref(*root);
        *root = NULL;
        return dsc_err_set(err, DSC_ERR_FORMAT, "%s: top level is not a JSON object", path);
    }
    return DSC_OK;
}

/* "type" of an object, or NULL. */
static const char *type_of(const json_t *o) {
    return json_string_value(json_object_get(o, "type"));
}

static int get_bool(const json_t *o, const char *key, int def) {
    const json_t *v = json_object_get(o, key);
    return json_is_boolean(v) ? json_is_true(v) : def;
}

/* Whether string s is not null and not "" (an affix that would change BPE). */
static int nonempty_str(const json_t *v) {
    return v && !json_is_null(v) && !(json_is_string(v) && json_string_length(v) == 0);
}

static dsc_status check_normalizer(ld *l, const json_t *n) {
    if (!n || json_is_null(n)) return DSC_OK;
    const char *ty = type_of(n);
    if (!ty) return bad(l, "normalizer has no type");
    if (strcmp(ty, "Sequence")) return unsupported(l, "normalizer.type", ty);
    const json_t *list = json_object_get(n, "normalizers");
    if (!json_is_array(list)) return bad(l, "normalizer Sequence without a normalizers array");
    size_t i;
    const json_t *v;
    json_array_foreach(list, i, v) DSC_TRY(check_normalizer(l, v));
    return DSC_OK;
}

static dsc_status parse_model_opts(ld *l, const json_t *m) {
    const char *ty = type_of(m);
    if (ty && strcmp(ty, "BPE")) return unsupported(l, "model.type", ty);
    if (!ty && !json_object_get(m, "merges")) return bad(l, "model has no type and no merges");
    const json_t *d = json_object_get(m, "dropout");
    if (d && !json_is_null(d) && !(json_is_number(d) && json_number_value(d) == 0.0))
        return unsupported(l, "model.dropout", NULL);
    if (nonempty_str(json_object_get(m, "continuing_subword_prefix")))
        return unsupported(l, "model.continuing_subword_prefix",
                           json_string_value(json_object_get(m, "continuing_subword_prefix")));
    if (nonempty_str(json_object_get(m, "end_of_word_suffix")))
        return unsupported(l, "model.end_of_word_suffix",
                           json_string_value(json_object_get(m, "end_of_word_suffix")));
    if (get_bool(m, "byte_fallback", 0)) return unsupported(l, "model.byte_fallback", "true");
    l->t->ignore_merges = get_bool(m, "ignore_merges", 0);
    if (!json_is_object(json_object_get(m, "vocab"))) return bad(l, "model.vocab is not an object");
    if (!json_is_array(json_object_get(m, "merges"))) return bad(l, "model.merges is not an array");
    return DSC_OK;
}

static dsc_status parse_pretok(ld *l, const json_t *p) {
    dsc_tokenizer_t *t = l->t;
    if (!p || json_is_null(p))
        return unsupported(l, "pre_tokenizer", "null (byte-level BPE needs ByteLevel)");
    const json_t *single[1] = {p};
    const json_t *list = NULL;
    size_t n = 1;
    const char *ty = type_of(p);
    if (ty && !strcmp(ty, "Sequence")) {
        list = json_object_get(p, "pretokenizers");
        if (!json_is_array(list)) return bad(l, "pre_tokenizer Sequence without pretokenizers");
        n = json_array_size(list);
    }
    int have_bl = 0;
    for (size_t i = 0; i < n; i++) {
        const json_t *s = list ? json_array_get(list, i) : single[0];
        const char *st = type_of(s);
        if (!st) return bad(l, "pre_tokenizer step without a type");
        if (have_bl) return unsupported(l, "pre_tokenizer step after ByteLevel", st);
        if (!strcmp(st, "ByteLevel")) {
            have_bl = 1;
            t->bl_prefix_space = get_bool(s, "add_prefix_space", 1);
            if (get_bool(s, "use_regex", 1)) {
                DSC_TRY(tok_regex_compile(GPT2_PATTERN, sizeof GPT2_PATTERN - 1, 0,
                                          "ByteLevel GPT-2 pattern", &t->bl_re, l->err));
            }
            continue;
        }
        if (strcmp(st, "Split")) return unsupported(l, "pre_tokenizer.type", st);
        if (t->n_steps == TOK_MAX_STEPS) return unsupported(l, "pre_tokenizer", "> 8 Split steps");
        tok_step *k = &t->steps[t->n_steps];
        const json_t *pat = json_object_get(s, "pattern");
        const json_t *rx = json_object_get(pat, "Regex"), *lit = json_object_get(pat, "String");
        const json_t *pv = json_is_string(rx) ? rx : lit;
        if (!json_is_string(pv)) return bad(l, "Split pattern is neither {Regex} nor {String}");
        const char *bh = json_string_value(json_object_get(s, "behavior"));
        static const char *const names[] = {"Removed", "Isolated", "MergedWithPrevious",
                                            "MergedWithNext", "Contiguous"};
        int b = -1;
        for (int j = 0; j < 5 && bh; j++)
            if (!strcmp(bh, names[j])) b = j;
        if (b < 0) return unsupported(l, "Split.behavior", bh ? bh : "(missing)");
        k->behavior = (tok_split_behavior)b;
        k->invert = get_bool(s, "invert", 0);
        char what[1100];
        snprintf(what, sizeof what, "%.1024s: pre_tokenizer Split %d", l->path, t->n_steps);
        /* counted first, so that free() releases a partly built step too */
        t->n_steps++;
        DSC_TRY(tok_regex_compile(json_string_value(pv), json_string_length(pv), pv == lit, what,
                                  &k->re, l->err));
    }
    if (!have_bl) return unsupported(l, "pre_tokenizer", "without a ByteLevel step");
    return DSC_OK;
}

static dsc_status check_rest(ld *l, const json_t *root) {
    const json_t *d = json_object_get(root, "decoder");
    const char *ty = type_of(d);
    if (!ty || strcmp(ty, "ByteLevel")) return unsupported(l, "decoder.type", ty ? ty : "null");
    const json_t *pp = json_object_get(root, "post_processor");
    ty = type_of(pp);
    if (pp && !json_is_null(pp) && (!ty || strcmp(ty, "ByteLevel")))
        return unsupported(l, "post_processor.type", ty ? ty : "?");
    const json_t *tr = json_object_get(root, "truncation");
    if (tr && !json_is_null(tr)) return unsupported(l, "truncation", NULL);
    return DSC_OK;
}

/* Store string s (n bytes) as the form of id, and its bytes: decoded through
   the byte-level alphabet when every character is in it, else as is. */
static void store_token(dsc_tokenizer_t *t, int32_t id, const char *s, size_t n, int64_t *fpos,
                        int64_t *bpos) {
    memcpy(t->forms + *fpos, s, n);
    t->form_off[id] = *fpos;
    t->form_len[id] = (int32_t)n;
    *fpos += (int64_t)n;
    char *b = t->bytes + *bpos;
    size_t k = 0, i = 0;
    while (i < n) {
        uint32_t cp;
        size_t cl = tok_utf8_len((const unsigned char *)s + i, n - i, &cp);
        int byte = cl ? tok_cp_to_byte(cp) : -1;
        if (byte < 0) break;
        b[k++] = (char)byte;
        i += cl;
    }
    if (i < n) { /* not byte-level: the raw text */
        memcpy(b, s, n);
        k = n;
    }
    t->bytes_off[id] = *bpos;
    t->bytes_len[id] = (int32_t)k;
    *bpos += (int64_t)k;
    if ((int32_t)k > t->max_token_bytes) t->max_token_bytes = (int32_t)k;
    t->flags[id] |= TOK_PRESENT;
}

static dsc_status get_id(ld *l, const json_t *v, const char *what, int32_t *id) {
    json_int_t x = json_is_integer(v) ? json_integer_value(v) : -1;
    if (x < 0 || x >= INT32_MAX) {
        char m[160];
        snprintf(m, sizeof m, "%s: id is not an integer in [0, 2^31-1)", what);
        return bad(l, m);
    }
    *id = (int32_t)x;
    return DSC_OK;
}

/* Resolve one merge to its three ids. */
static dsc_status merge_ids(ld *l, size_t i, const json_t *m, char **cat, size_t *cat_cap,
                            int32_t ids[3]) {
    const dsc_tokenizer_t *t = l->t;
    const char *a, *b;
    size_t na, nb;
    if (json_is_string(m)) { /* "a b": exactly one space */
        const char *s = json_string_value(m), *sp = strchr(s, ' ');
        size_t n = json_string_length(m);
        if (!sp || memchr(sp + 1, ' ', n - (size_t)(sp + 1 - s))) goto malformed;
        a = s;
        na = (size_t)(sp - s);
        b = sp + 1;
        nb = n - na - 1;
    } else if (json_is_array(m) && json_array_size(m) == 2 &&
               json_is_string(json_array_get(m, 0)) && json_is_string(json_array_get(m, 1))) {
        a = json_string_value(json_array_get(m, 0));
        na = json_string_length(json_array_get(m, 0));
        b = json_string_value(json_array_get(m, 1));
        nb = json_string_length(json_array_get(m, 1));
    } else {
        goto malformed;
    }
    if (na + nb > *cat_cap) {
        size_t cap = 2 * (na + nb);
        char *c = realloc(*cat, cap);
        if (!c) return dsc_err_set(l->err, DSC_ERR_OOM, "tokenizer: no memory");
        *cat = c;
        *cat_cap = cap;
    }
    memcpy(*cat, a, na);
    memcpy(*cat + na, b, nb);
    ids[0] = tok_strmap_get(&t->by_form, a, na);
    ids[1] = tok_strmap_get(&t->by_form, b, nb);
    ids[2] = tok_strmap_get(&t->by_form, *cat, na + nb);
    for (int k = 0; k < 3; k++)
        if (ids[k] < 0) {
            const char *s = k == 0 ? a : k == 1 ? b : *cat;
            int n = (int)(k == 0 ? na : k == 1 ? nb : na + nb);
            return dsc_err_set(l->err, DSC_ERR_FORMAT,
                               "%s: model.merges[%zu]: '%.*s' is not in the vocabulary", l->path,
                               i, n > 200 ? 200 : n, s);
        }
    return DSC_OK;
malformed:
    return dsc_err_set(l->err, DSC_ERR_FORMAT,
                       "%s: model.merges[%zu] is neither \"a b\" nor [\"a\", \"b\"]", l->path, i);
}

static dsc_status build_trie(ld *l, tok_trie *tr, int normalized) {
    dsc_tokenizer_t *t = l->t;
    int64_t max_nodes = 1;
    for (int64_t k = 0; k < t->n_added; k++)
        if (t->added[k].normalized == normalized) max_nodes += t->added[k].len;
    tr->node_tok = malloc((size_t)max_nodes * sizeof *tr->node_tok);
    if (!tr->node_tok) return dsc_err_set(l->err, DSC_ERR_OOM, "tokenizer: no memory");
    DSC_TRY(tok_u64map_init(&tr->edges, (size_t)max_nodes, l->err));
    tr->node_tok[0] = -1;
    tr->n_nodes = 1;
    for (int64_t k = 0; k < t->n_added; k++) {
        const tok_added *a = &t->added[k];
        if (a->normalized != normalized) continue;
        const unsigned char *s = (const unsigned char *)t->forms + a->off;
        int32_t node = 0;
        for (int32_t i = 0; i < a->len; i++) {
            uint64_t key = ((uint64_t)node << 8) | s[i];
            int32_t child;
            if (!tok_u64map_get(&tr->edges, key, &child, NULL)) {
                child = (int32_t)tr->n_nodes++;
                tr->node_tok[child] = -1;
                DSC_TRY(tok_u64map_put(&tr->edges, key, child, 0, l->err));
            }
            node = child;
        }
        if (tr->node_tok[node] < 0) tr->node_tok[node] = (int32_t)k; /* first one wins */
        tr->first[s[0]] = 1;
    }
    return DSC_OK;
}

/* Everything from the parsed tokenizer.json. */
static dsc_status build(ld *l, const json_t *root) {
    dsc_tokenizer_t *t = l->t;
    const json_t *model = json_object_get(root, "model");
    if (!json_is_object(model)) return bad(l, "no model object");
    DSC_TRY(parse_model_opts(l, model));
    DSC_TRY(check_normalizer(l, json_object_get(root, "normalizer")));
    DSC_TRY(parse_pretok(l, json_object_get(root, "pre_tokenizer")));
    DSC_TRY(check_rest(l, root));
    const json_t *vocab = json_object_get(model, "vocab");
    const json_t *merges = json_object_get(model, "merges");
    const json_t *added = json_object_get(root, "added_tokens");
    if (added && !json_is_array(added)) return bad(l, "added_tokens is not an array");

    /* sizes first, so that every table is allocated once */
    int64_t max_id = -1, text_bytes = 0;
    for (void *it = json_object_iter((json_t *)vocab); it;
         it = json_object_iter_next((json_t *)vocab, it)) {
        int32_t id = -1;
        DSC_TRY(get_id(l, json_object_iter_value(it), "model.vocab entry", &id));
        if (id > max_id) max_id = id;
        text_bytes += (int64_t)json_object_iter_key_len(it);
    }
    size_t i;
    const json_t *a;
    json_array_foreach(added, i, a) {
        const json_t *c = json_object_get(a, "content");
        int32_t id = -1;
        char what[64];
        snprintf(what, sizeof what, "added_tokens[%zu]", i);
        DSC_TRY(get_id(l, json_object_get(a, "id"), what, &id));
        if (!json_is_string(c) || json_string_length(c) == 0 || json_string_length(c) > 65536)
            return bad(l, "an added token has no content (or over 64 KiB)");
        if (id > max_id) max_id = id;
        text_bytes += (int64_t)json_string_length(c);
    }
    if (max_id < 0) return bad(l, "the vocabulary is empty");
    /* ids index dense tables: refuse a few entries claiming a huge id space */
    int64_t n_entries = (int64_t)json_object_size(vocab) + (int64_t)json_array_size(added);
    if (max_id >= (1 << 24) || max_id >= 4 * n_entries + 1024)
        return bad(l, "token ids are too sparse or too large (highest id vs entries)");
    t->n_vocab = max_id + 1;
    size_t nv = (size_t)t->n_vocab;
    t->bytes = malloc((size_t)text_bytes + 1);
    t->forms = malloc((size_t)text_bytes + 1);
    t->bytes_off = calloc(nv, sizeof *t->bytes_off);
    t->bytes_len = calloc(nv, sizeof *t->bytes_len);
    t->form_off = calloc(nv, sizeof *t->form_off);
    t->form_len = calloc(nv, sizeof *t->form_len);
    t->flags = calloc(nv, 1);
    t->added = calloc(json_array_size(added) + 1, sizeof *t->added);
    if (!t->bytes || !t->forms || !t->bytes_off || !t->bytes_len || !t->form_off ||
        !t->form_len || !t->flags || !t->added)
        return dsc_err_set(l->err, DSC_ERR_OOM, "tokenizer: no memory for %lld tokens",
                           (long long)nv);
    t->by_form = (tok_strmap){.arena = t->forms, .off = t->form_off, .len = t->form_len};
    DSC_TRY(tok_strmap_init(&t->by_form, nv, l->err));

    int64_t fpos = 0, bpos = 0;
    for (void *it = json_object_iter((json_t *)vocab); it;
         it = json_object_iter_next((json_t *)vocab, it)) {
        int32_t id = (int32_t)json_integer_value(json_object_iter_value(it));
        if (t->flags[id] & TOK_PRESENT) {
            char m[96];
            snprintf(m, sizeof m, "model.vocab: id %d is used twice", id);
            return bad(l, m);
        }
        store_token(t, id, json_object_iter_key(it), json_object_iter_key_len(it), &fpos, &bpos);
        tok_strmap_put(&t->by_form, id, 0);
    }
    for (int b = 0; b < 256; b++) {
        char s[4];
        int n = tok_utf8_put(tok_byte_to_cp((unsigned char)b), s);
        t->byte_id[b] = tok_strmap_get(&t->by_form, s, (size_t)n);
    }
    t->unk_id = -1;
    const json_t *unk = json_object_get(model, "unk_token");
    if (json_is_string(unk)) {
        t->unk_id = tok_strmap_get(&t->by_form, json_string_value(unk), json_string_length(unk));
        if (t->unk_id < 0) return bad(l, "model.unk_token is not in the vocabulary");
    }

    /* merges: resolved against the model vocabulary only (as `tokenizers`) */
    DSC_TRY(tok_u64map_init(&t->merges, json_array_size(merges), l->err));
    char *cat = NULL;
    size_t cat_cap = 0;
    const json_t *m;
    dsc_status st = DSC_OK;
    json_array_foreach(merges, i, m) {
        int32_t ids[3] = {-1, -1, -1};
        if (i >= INT32_MAX) st = bad(l, "too many merges");
        if (st == DSC_OK) st = merge_ids(l, i, m, &cat, &cat_cap, ids);
        if (st == DSC_OK)
            st = tok_u64map_put(&t->merges, ((uint64_t)(uint32_t)ids[0] << 32) | (uint32_t)ids[1],
                                (int32_t)i, ids[2], l->err);
        if (st != DSC_OK) break;
    }
    free(cat);
    DSC_TRY(st);

    /* added tokens: an id shared with the vocabulary must carry the same
       string; the content maps to the added id for dsc_tokenizer_find */
    int any_single_word = 0;
    json_array_foreach(added, i, a) {
        const json_t *c = json_object_get(a, "content");
        const char *s = json_string_value(c);
        size_t n = json_string_length(c);
        int32_t id = (int32_t)json_integer_value(json_object_get(a, "id"));
        if (t->flags[id] & TOK_PRESENT) {
            if ((size_t)t->form_len[id] != n || memcmp(t->forms + t->form_off[id], s, n)) {
                char msg[160];
                snprintf(msg, sizeof msg, "added_tokens[%zu]: id %d is also a different vocab token",
                         i, id);
                return bad(l, msg);
            }
        } else {
            store_token(t, id, s, n, &fpos, &bpos);
        }
        tok_strmap_put(&t->by_form, id, 1);
        int special = get_bool(a, "special", 0);
        tok_added *ad = &t->added[t->n_added++];
        /* matched against the content itself (not its byte-level decoding) */
        *ad = (tok_added){.id = id,
                          .len = (int32_t)n,
                          .off = t->form_off[id],
                          .special = (unsigned char)special,
                          .lstrip = (unsigned char)get_bool(a, "lstrip", 0),
                          .rstrip = (unsigned char)get_bool(a, "rstrip", 0),
                          .single_word = (unsigned char)get_bool(a, "single_word", 0),
                          .normalized = (unsigned char)get_bool(a, "normalized", !special)};
        t->flags[id] |= TOK_ADDED | (special ? TOK_SPECIAL : 0);
        any_single_word |= ad->single_word;
    }
    DSC_TRY(build_trie(l, &t->trie_raw, 0));
    DSC_TRY(build_trie(l, &t->trie_norm, 1));
    if (any_single_word) {
        /* Rust's Unicode \w, which `tokenizers` uses for single_word */
        static const char word[] = "[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\p{Join_Control}]";
        DSC_TRY(tok_regex_compile(word, sizeof word - 1, 0, "single_word", &t->re_word, l->err));
    }
    return DSC_OK;
}

/* A token named in tokenizer_config.json: a string or {"content": ...}.
   *id is -1 when the field is absent or null. */
static dsc_status config_token(ld *l, const json_t *cfg, const char *key, int32_t *id) {
    *id = -1;
    const json_t *v = json_object_get(cfg, key);
    if (!v || json_is_null(v)) return DSC_OK;
    if (json_is_object(v)) v = json_object_get(v, "content");
    if (!json_is_string(v)) {
        char m[96];
        snprintf(m, sizeof m, "%s is neither a string nor an object with content", key);
        return bad(l, m);
    }
    *id = tok_strmap_get(&l->t->by_form, json_string_value(v), json_string_length(v));
    if (*id < 0)
        return dsc_err_set(l->err, DSC_ERR_FORMAT, "%s: %s '%s' is not a token of tokenizer.json",
                           l->path, key, json_string_value(v));
    return DSC_OK;
}

static dsc_status load_config(ld *l, const json_t *cfg) {
    dsc_tokenizer_t *t = l->t;
    DSC_TRY(config_token(l, cfg, "bos_token", &t->bos_id));
    DSC_TRY(config_token(l, cfg, "eos_token", &t->eos_id));
    const char *cls = json_string_value(json_object_get(cfg, "tokenizer_class"));
    int llama = cls && (!strcmp(cls, "LlamaTokenizerFast") || !strcmp(cls, "LlamaTokenizer"));
    t->add_bos = get_bool(cfg, "add_bos_token", llama);
    if (get_bool(cfg, "add_eos_token", 0)) return unsupported(l, "add_eos_token", "true");
    if (t->add_bos && t->bos_id < 0) return bad(l, "add_bos_token is true but bos_token is unset");
    return DSC_OK;
}

dsc_status dsc_tokenizer_load(const char *dir, dsc_tokenizer_t **out, dsc_err *err) {
    if (!out) return dsc_err_set(err, DSC_ERR_ARG, "dsc_tokenizer_load: out is NULL");
    *out = NULL;
    if (!dir) return dsc_err_set(err, DSC_ERR_ARG, "dsc_tokenizer_load: dir is NULL");
    size_t dl = strlen(dir);
    char *path = malloc(dl + 32);
    dsc_tokenizer_t *t = calloc(1, sizeof *t);
    if (!path || !t) {
        free(path);
        free(t);
        return dsc_err_set(err, DSC_ERR_OOM, "dsc_tokenizer_load: no memory");
    }
    t->bos_id = t->eos_id = -1;
    ld l = {t, path, err};
    json_t *root = NULL;
    snprintf(path, dl + 32, "%s/tokenizer.json", dir);
    dsc_status st = load_json(path, &root, err);
    if (st == DSC_OK) st = build(&l, root);
    json_decref(root);
    root = NULL;
    if (st == DSC_OK) {
        snprintf(path, dl + 32, "%s/tokenizer_config.json", dir);
        struct stat sb;
        if (stat(path, &sb) == 0 || errno != ENOENT) { /* absent: no BOS, no EOS */
            st = load_json(path, &root, err);
            if (st == DSC_OK) st = load_config(&l, root);
            json_decref(root);
        }
    }
    free(path);
    if (st != DSC_OK) {
        dsc_tokenizer_free(t);
        return st;
    }
    *out = t;
    return DSC_OK;
}

void dsc_tokenizer_free(dsc_tokenizer_t *t) {
    if (!t) return;
    free(t->bytes);
    free(t->bytes_off);
    free(t->bytes_len);
    free(t->forms);
    free(t->form_off);
    free(t->form_len);
    free(t->flags);
    tok_strmap_free(&t->by_form);
    tok_u64map_free(&t->merges);
    free(t->added);
    tok_u64map_free(&t->trie_raw.edges);
    free(t->trie_raw.node_tok);
    tok_u64map_free(&t->trie_norm.edges);
    free(t->trie_norm.node_tok);
    pcre2_code_free(t->re_word);
    for (int i = 0; i < t->n_steps; i++) pcre2_code_free(t->steps[i].re);
    pcre2_code_free(t->bl_re);
    free(t);
}

int64_t dsc_tokenizer_vocab(const dsc_tokenizer_t *t) { return t ? t->n_vocab : 0; }
int32_t dsc_tokenizer_bos(const dsc_tokenizer_t *t) { return t ? t->bos_id : -1; }
int32_t dsc_tokenizer_eos(const dsc_tokenizer_t *t) { return t ? t->eos_id : -1; }
int dsc_tokenizer_adds_bos(const dsc_tokenizer_t *t) { return t ? t->add_bos : 0; }

/* The string as written in tokenizer.json: an added token's content, or a
   vocabulary entry in its byte-level spelling ("Ġthe", not " the"). */
int32_t dsc_tokenizer_find(const dsc_tokenizer_t *t, const char *token) {
    if (!t || !token) return -1;
    return tok_strmap_get(&t->by_form, token, strlen(token));
}
