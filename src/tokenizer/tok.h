/*
 * tok.h - internals of the tokenizer (src/tokenizer/), shared by its files:
 *
 *   tokenizer.c  loading tokenizer.json / tokenizer_config.json, accessors
 *   tables.c     the hash maps, the GPT-2 byte <-> unicode table, UTF-8 helpers
 *   regex.c      compiling pre-tokenizer regexes with PCRE2 so that they match
 *                what Oniguruma (the engine of `tokenizers`) matches
 *   uranges.c    generated: code points PCRE2 10.42's Unicode tables lack
 *   bpe.c        the BPE merge loop on the bytes of one pre-token
 *   encode.c     dsc_tokenize: added tokens, pre-tokenizer steps, BOS
 *   decode.c     dsc_detokenize_piece / dsc_detok_flush (streaming UTF-8)
 *
 * What a loaded tokenizer is, in the terms of Hugging Face `tokenizers`:
 * model BPE over bytes (each vocabulary string is stored decoded through the
 * byte-level alphabet, so BPE runs directly on the input bytes), a normalizer
 * that is the identity (null or an empty Sequence), a pre-tokenizer that is a
 * list of Split steps followed by one ByteLevel step, added tokens matched in
 * the raw text first, and the ByteLevel decoder. Anything else is refused at
 * load time with DSC_ERR_UNSUPPORTED, so encode never meets it.
 *
 * Nothing here is mutable after load: a tokenizer may be shared by threads.
 */
#ifndef DSC_TOK_H
#define DSC_TOK_H

#include <stddef.h>
#include <stdint.h>

#ifndef PCRE2_CODE_UNIT_WIDTH
#define PCRE2_CODE_UNIT_WIDTH 8
#endif
#include <pcre2.h>

#include "dsc.h"

/* ---- hash maps (tables.c) ---- */

/* Open-addressing map from a 64-bit key to two int32 values. Keys must be
   < 2^63 (the slot stores key + 1 so that 0 marks an empty slot). Used for
   merges ((left id << 32 | right id) -> rank, merged id) and for the edges of
   the added-token trie ((node << 8 | byte) -> child node). */
typedef struct {
    uint64_t *keys;   /* [cap], key + 1, 0 = empty */
    int32_t *v0, *v1; /* [cap] */
    size_t cap;       /* power of two */
    size_t n;
} tok_u64map;

/* Map from a byte string to an int32 id. The map stores only ids; the string
   of id i is arena + off[i] (len[i] bytes), arrays owned by the tokenizer. */
typedef struct {
    int32_t *slots;         /* [cap], id or -1 */
    size_t cap;             /* power of two */
    const char *arena;      /* strings of id i: arena + off[i], len[i] */
    const int64_t *off;
    const int32_t *len;
} tok_strmap;

dsc_status tok_u64map_init(tok_u64map *m, size_t expected, dsc_err *err);
void tok_u64map_free(tok_u64map *m);
/* Insert or overwrite; DSC_ERR_OOM when growing fails. */
dsc_status tok_u64map_put(tok_u64map *m, uint64_t key, int32_t v0, int32_t v1, dsc_err *err);
/* 1 and the values when present, 0 otherwise. */
int tok_u64map_get(const tok_u64map *m, uint64_t key, int32_t *v0, int32_t *v1);

/* The map is sized once for `expected` strings (it never grows). */
dsc_status tok_strmap_init(tok_strmap *m, size_t expected, dsc_err *err);
void tok_strmap_free(tok_strmap *m);
/* Insert id (whose string is already in the arena). Returns the id that
   held an equal string before (-1 when none); that id stays unless replace. */
int32_t tok_strmap_put(tok_strmap *m, int32_t id, int replace);
int32_t tok_strmap_get(const tok_strmap *m, const char *s, size_t len);

/* ---- byte-level alphabet and UTF-8 (tables.c) ---- */

/* GPT-2's byte -> code point table: printable Latin-1 bytes map to
   themselves, the other 68 bytes to U+0100.. in byte order. */
uint32_t tok_byte_to_cp(unsigned char b);
/* Inverse: the byte for code point cp, or -1 when cp is not in the alphabet. */
int tok_cp_to_byte(uint32_t cp);

/* Length of the valid UTF-8 sequence at s[0..n), 0 when it is invalid or
   truncated. Strict: no overlong forms, no surrogates, <= U+10FFFF. */
size_t tok_utf8_len(const unsigned char *s, size_t n, uint32_t *cp);
/* Offset of the first invalid byte of s[0..n), or n when all is valid. */
size_t tok_utf8_check(const unsigned char *s, size_t n);
/* Unicode White_Space property (what Rust's char::is_whitespace tests). */
int tok_is_space(uint32_t cp);
/* Encode cp as UTF-8 into out (4 bytes room); returns the length. */
int tok_utf8_put(uint32_t cp, char *out);

/* ---- the loaded tokenizer ---- */

enum { TOK_PRESENT = 1, TOK_SPECIAL = 2, TOK_ADDED = 4 };

/* Split behaviours, as in `tokenizers` SplitDelimiterBehavior. */
typedef enum {
    TOK_SPLIT_REMOVED = 0,
    TOK_SPLIT_ISOLATED,
    TOK_SPLIT_MERGED_PREV,
    TOK_SPLIT_MERGED_NEXT,
    TOK_SPLIT_CONTIGUOUS,
} tok_split_behavior;

#define TOK_MAX_STEPS 8 /* pre-tokenizer Split steps, plus the ByteLevel one */

typedef struct {
    pcre2_code *re;     /* Split: its pattern; ByteLevel with use_regex: GPT-2's */
    tok_split_behavior behavior;
    int invert;
} tok_step;

typedef struct {
    int32_t id;
    int32_t len;        /* bytes of content */
    int64_t off;        /* content at tok->forms + off */
    unsigned char special, lstrip, rstrip, single_word, normalized;
} tok_added;

/* Trie over the contents of one class of added tokens. Node 0 is the root;
   node_tok[n] is the index into tok->added of the token ending at node n, or
   -1. first[b] says whether any token starts with byte b (a cheap filter). */
typedef struct {
    tok_u64map edges;
    int32_t *node_tok;
    int64_t n_nodes;
    unsigned char first[256];
} tok_trie;

struct dsc_tokenizer {
    int64_t n_vocab;          /* highest id + 1 */
    /* per id [n_vocab]: stored bytes (decoded through the byte-level alphabet
       when every char is in it, else the raw UTF-8 of the string, as the
       ByteLevel decoder does), and the string as written in tokenizer.json */
    char *bytes;              /* arena of token bytes */
    int64_t *bytes_off;
    int32_t *bytes_len;
    char *forms;              /* arena of tokenizer.json strings (for find) */
    int64_t *form_off;
    int32_t *form_len;
    unsigned char *flags;     /* TOK_* */
    int32_t max_token_bytes;  /* longest bytes_len */

    tok_strmap by_form;       /* tokenizer.json string -> id (vocab + added) */
    tok_u64map merges;        /* (left, right) -> (rank, merged id) */
    int32_t byte_id[256];     /* id of the one-byte token of each byte, -1 if none */
    int32_t unk_id;           /* model.unk_token id, -1 when none */
    int ignore_merges;        /* whole pre-token looked up before merging */

    tok_added *added;         /* [n_added] */
    int64_t n_added;
    tok_trie trie_raw;        /* added tokens with normalized = false */
    tok_trie trie_norm;       /* normalized = true: matched second */
    pcre2_code *re_word;      /* \w for single_word tokens (NULL when none) */

    tok_step steps[TOK_MAX_STEPS];
    int n_steps;              /* Split steps; the ByteLevel step comes after */
    int bl_prefix_space;      /* ByteLevel add_prefix_space */
    pcre2_code *bl_re;        /* ByteLevel use_regex: the GPT-2 pattern, else NULL */

    int32_t bos_id, eos_id;
    int add_bos;
};

/* ---- encode internals ---- */

/* Growable scratch for the BPE of one pre-token (encode.c owns one per call). */
typedef struct {
    struct tok_sym *sym;
    size_t sym_cap;
    struct tok_heap_item *heap;
    size_t heap_cap;
} tok_bpe_scratch;

/* Where encoded ids go: the first cap are stored, all are counted. */
typedef struct {
    int32_t *ids;
    int64_t cap;
    int64_t n;
} tok_out;

static inline void tok_emit(tok_out *o, int32_t id) {
    if (o->n < o->cap) o->ids[o->n] = id;
    o->n++;
}

/* BPE of the bytes s[0..n) (n >= 1), ids appended to out. */
dsc_status tok_bpe(const dsc_tokenizer_t *t, const unsigned char *s, size_t n,
                   tok_bpe_scratch *sc, tok_out *out, dsc_err *err);
void tok_bpe_scratch_free(tok_bpe_scratch *sc);

/* Compile a pattern with UTF + UCP (and JIT when available); a regex (not
   literal) is first rewritten as regex.c explains. Failure: DSC_ERR_FORMAT
   naming `what` and quoting PCRE2's message (or DSC_ERR_OOM), *out NULL. */
dsc_status tok_regex_compile(const char *pat, size_t len, int literal, const char *what,
                             pcre2_code **out, dsc_err *err);

/* Code points to add to \p{name} (uranges.c): ranges [lo, hi]. */
#define TOK_N_UCLASSES 5
typedef struct {
    char name; /* 'L', 'N', 'P', 'S', 'M' */
    const uint32_t (*ranges)[2];
    size_t n;
} tok_uclass;
extern const tok_uclass tok_uclasses[TOK_N_UCLASSES];

#endif
