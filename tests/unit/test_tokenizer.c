/*
 * test_tokenizer.c - the tokenizer against Hugging Face's ids, plus decoding,
 * error paths and the documented edge cases.
 *
 * Parity data: tests/fixtures/tokenizer_cases/cases.bin.xz, written by
 * tests/reference/make_tokenizer_cases.py (format described there): ~11,000
 * strings and, per tokenizer, the ids transformers' LlamaTokenizerFast gives
 * for tokenizer(text) (BOS included, as add_bos_token says). Tokenizers: the
 * real DeepSeek-V3 one (tests/data/, xz-compressed, unpacked into the scratch
 * directory with `xz -dc`), the small brown one (tests/fixtures/tokenizer_brown)
 * and variants of brown whose tokenizer.json gets a JSON patch (GPT-2 regex
 * ByteLevel with prefix space; every Split behavior, invert, String patterns;
 * lstrip / rstrip / single_word added tokens). Ids must match exactly: there
 * is no tolerance in tokenization.
 */
#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <jansson.h>

#include "dsc.h"
#include "test.h"
#include "tokenizer/tok.h"

#define CASES_XZ "tests/fixtures/tokenizer_cases/cases.bin.xz"
#define V3_XZ "tests/data/deepseek-v3-tokenizer/tokenizer.json.xz"
#define V3_CFG "tests/data/deepseek-v3-tokenizer/tokenizer_config.json"
#define BROWN_DIR "tests/fixtures/tokenizer_brown"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int file_exists(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0;
}

static int run_cmd(dsc_t *t, const char *cmd) {
    int rc = system(cmd);
    T_CHECK(t, rc == 0, "command failed (%d): %s", rc, cmd);
    return rc == 0;
}

/* Copy a small file; 1 on success. */
static int copy_file(dsc_t *t, const char *from, const char *to) {
    size_t n;
    void *b = t_read_file(from, &n);
    T_CHECK(t, b != NULL, "cannot read %s", from);
    int ok = b && t_write_file(to, b, n) == 0;
    T_CHECK(t, !b || ok, "cannot write %s", to);
    free(b);
    return ok;
}

/* dir receives <tmpdir>/<name>, created if needed. */
static void scratch_dir(dsc_t *t, const char *name, char *dir, size_t cap) {
    snprintf(dir, cap, "%s/%s", t->tmpdir, name);
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) T_CHECK(t, 0, "mkdir %s failed", dir);
}

/* The V3 tokenizer unpacked into the scratch directory (once per run). */
static int v3_dir(dsc_t *t, char *dir, size_t cap) {
    scratch_dir(t, "v3", dir, cap);
    char path[1024], cmd[4200];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    if (file_exists(path)) return 1;
    snprintf(cmd, sizeof cmd, "xz -dc '%s' > '%s.part' && mv '%s.part' '%s'", V3_XZ, path, path,
             path);
    if (!run_cmd(t, cmd)) return 0;
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    return copy_file(t, V3_CFG, path);
}

static dsc_tokenizer_t *load_or_fail(dsc_t *t, const char *dir) {
    dsc_tokenizer_t *tk = NULL;
    dsc_err e = {0};
    dsc_status s = dsc_tokenizer_load(dir, &tk, &e);
    T_CHECK(t, s == DSC_OK, "load %s: %s: %s", dir, dsc_status_str(s), e.msg);
    return tk;
}

/* Writes base/tokenizer.json with the top-level keys of patch (JSON text)
   replaced into dir, and copies base/tokenizer_config.json. */
static int patched_dir(dsc_t *t, const char *base, const char *name, const char *patch,
                       char *dir, size_t cap) {
    scratch_dir(t, name, dir, cap);
    char path[1024];
    snprintf(path, sizeof path, "%s/tokenizer.json", base);
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    json_t *p = patch && *patch ? json_loads(patch, 0, &je) : json_object();
    T_CHECK(t, root && p, "patching %s: %s", path, je.text);
    int ok = root && p && json_object_update(root, p) == 0;
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    ok = ok && json_dump_file(root, path, JSON_COMPACT) == 0;
    json_decref(root);
    json_decref(p);
    char from[1024];
    snprintf(from, sizeof from, "%s/tokenizer_config.json", base);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    return ok && copy_file(t, from, path);
}

/* Strict UTF-8 validity, written independently of the library's. */
static int valid_utf8(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t len = c < 0x80 ? 1 : c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3
                   : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
        if (!len || i + len > n) return 0;
        uint32_t cp = len == 1 ? c : len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < min_cp[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
        i += len;
    }
    return 1;
}

/* ---- the cases file ---- */

typedef struct {
    char name[32], base[16];
    char *patch;
    uint32_t n_used;
    int32_t **ids; /* [n_used], each ids[i] points into store */
    uint32_t *n_ids;
    int32_t *store;
} case_tok;

typedef struct {
    unsigned char *buf;
    size_t len;
    uint32_t n_tok, n_cases;
    case_tok tok[8];
    const char **text;
    uint32_t *text_len;
} case_file;

typedef struct {
    const unsigned char *p, *end;
    int bad;
} rd;

static uint32_t rd_u32(rd *r) {
    if (r->end - r->p < 4) {
        r->bad = 1;
        return 0;
    }
    uint32_t v = (uint32_t)r->p[0] | (uint32_t)r->p[1] << 8 | (uint32_t)r->p[2] << 16 |
                 (uint32_t)r->p[3] << 24;
    r->p += 4;
    return v;
}

static const unsigned char *rd_bytes(rd *r, size_t n) {
    if ((size_t)(r->end - r->p) < n) {
        r->bad = 1;
        return NULL;
    }
    const unsigned char *q = r->p;
    r->p += n;
    return q;
}

static void cases_free(case_file *cf) {
    for (uint32_t k = 0; k < cf->n_tok && k < 8; k++) {
        free(cf->tok[k].patch);
        free(cf->tok[k].ids);
        free(cf->tok[k].n_ids);
        free(cf->tok[k].store);
    }
    free(cf->text);
    free(cf->text_len);
    free(cf->buf);
    memset(cf, 0, sizeof *cf);
}

static int cases_load(dsc_t *t, case_file *cf) {
    memset(cf, 0, sizeof *cf);
    char path[1024], cmd[4200];
    snprintf(path, sizeof path, "%s/cases.bin", t->tmpdir);
    if (!file_exists(path)) {
        snprintf(cmd, sizeof cmd, "xz -dc '%s' > '%s.part' && mv '%s.part' '%s'", CASES_XZ, path,
                 path, path);
        if (!run_cmd(t, cmd)) return 0;
    }
    cf->buf = t_read_file(path, &cf->len);
    T_CHECK(t, cf->buf != NULL, "cannot read %s", path);
    if (!cf->buf) return 0;
    rd r = {cf->buf, cf->buf + cf->len, 0};
    const unsigned char *magic = rd_bytes(&r, 8);
    T_CHECK(t, magic && !memcmp(magic, "DSCTOKC1", 8), "%s: bad magic", path);
    cf->n_tok = rd_u32(&r);
    T_CHECK(t, cf->n_tok >= 2 && cf->n_tok <= 8, "%s: %u tokenizers", path, cf->n_tok);
    if (r.bad || !magic || cf->n_tok < 2 || cf->n_tok > 8) return 0;
    for (uint32_t k = 0; k < cf->n_tok; k++) {
        case_tok *ct = &cf->tok[k];
        uint32_t n = rd_u32(&r);
        const unsigned char *s = rd_bytes(&r, n);
        snprintf(ct->name, sizeof ct->name, "%.*s", (int)n, s ? (const char *)s : "");
        n = rd_u32(&r);
        s = rd_bytes(&r, n);
        snprintf(ct->base, sizeof ct->base, "%.*s", (int)n, s ? (const char *)s : "");
        n = rd_u32(&r);
        s = rd_bytes(&r, n);
        ct->patch = calloc(n + 1, 1);
        if (s && ct->patch) memcpy(ct->patch, s, n);
        ct->n_used = rd_u32(&r);
    }
    cf->n_cases = rd_u32(&r);
    cf->text = calloc(cf->n_cases + 1, sizeof *cf->text);
    cf->text_len = calloc(cf->n_cases + 1, sizeof *cf->text_len);
    if (!cf->text || !cf->text_len || r.bad) return 0;
    for (uint32_t i = 0; i < cf->n_cases; i++) {
        cf->text_len[i] = rd_u32(&r);
        cf->text[i] = (const char *)rd_bytes(&r, cf->text_len[i]);
    }
    for (uint32_t k = 0; k < cf->n_tok; k++) {
        case_tok *ct = &cf->tok[k];
        T_CHECK(t, ct->n_used <= cf->n_cases, "%s: uses %u cases of %u", ct->name, ct->n_used,
                cf->n_cases);
        if (ct->n_used > cf->n_cases) return 0;
        ct->ids = calloc(ct->n_used + 1, sizeof *ct->ids);
        ct->n_ids = calloc(ct->n_used + 1, sizeof *ct->n_ids);
        /* the ids in the file are not 4-byte aligned (strings come first):
           copied out, little-endian, into store (no larger than the rest) */
        ct->store = malloc((size_t)(r.end - r.p) + 4);
        if (!ct->ids || !ct->n_ids || !ct->store) return 0;
        size_t at = 0;
        for (uint32_t i = 0; i < ct->n_used && !r.bad; i++) {
            ct->n_ids[i] = rd_u32(&r);
            ct->ids[i] = ct->store + at;
            for (uint32_t j = 0; j < ct->n_ids[i] && !r.bad; j++)
                ct->store[at++] = (int32_t)rd_u32(&r);
        }
    }
    T_CHECK(t, !r.bad && r.p == r.end, "%s: truncated or trailing bytes", path);
    return !r.bad;
}

/* Directory of the tokenizer a case block is for. */
static int case_tok_dir(dsc_t *t, const case_tok *ct, char *dir, size_t cap) {
    char base[512];
    if (!strcmp(ct->base, "v3")) {
        if (!v3_dir(t, base, sizeof base)) return 0;
    } else {
        snprintf(base, sizeof base, "%s", BROWN_DIR);
    }
    if (!ct->patch || !*ct->patch) {
        snprintf(dir, cap, "%s", base);
        return 1;
    }
    return patched_dir(t, base, ct->name, ct->patch, dir, cap);
}

/* Decode ids one at a time through a stream; every chunk must be valid
   UTF-8. The text goes to out (cap bytes); returns its length or -1. */
static int64_t stream_decode(dsc_t *t, const dsc_tokenizer_t *tk, const int32_t *ids, int64_t n,
                             int skip_special, char *out, int64_t cap, int64_t *n_held) {
    dsc_detok_state st = {{0}, 0};
    int64_t w = 0;
    char chunk[1024];
    if (n_held) *n_held = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t k = dsc_detokenize_piece(tk, ids[i], skip_special, &st, chunk, sizeof chunk);
        if (k < 0 || w + k > cap) return -1;
        if (!valid_utf8((const unsigned char *)chunk, (size_t)k)) {
            T_CHECK(t, 0, "id %d at %lld decoded to broken UTF-8", ids[i], (long long)i);
            return -1;
        }
        if (st.n_pend && n_held) (*n_held)++;
        memcpy(out + w, chunk, (size_t)k);
        w += k;
    }
    int64_t k = dsc_detok_flush(&st, chunk, sizeof chunk);
    if (k < 0 || w + k > cap) return -1;
    memcpy(out + w, chunk, (size_t)k);
    return w + k;
}

/* All cases of one tokenizer block: ids with add_bos -1 (and 0), and for the
   unpatched tokenizers the round trip decode(encode(s)) == s. */
static void check_block(dsc_t *t, const case_file *cf, const case_tok *ct) {
    char dir[512];
    if (!case_tok_dir(t, ct, dir, sizeof dir)) return;
    double t0 = now_s();
    dsc_tokenizer_t *tk = load_or_fail(t, dir);
    double load_s = now_s() - t0;
    if (!tk) return;
    int round_trip = !ct->patch || !*ct->patch;
    int64_t cap = 1 << 16, n_ids = 0, bytes = 0;
    int32_t *ids = malloc((size_t)cap * sizeof *ids);
    char *text = malloc(1 << 20);
    int mismatches = 0, rt_fail = 0;
    double enc_s = 0.0;
    for (uint32_t i = 0; i < ct->n_used && ids && text; i++) {
        int64_t n = 0;
        dsc_err e = {0};
        double t1 = now_s();
        dsc_status s = dsc_tokenize(tk, cf->text[i], cf->text_len[i], -1, ids, cap, &n, &e);
        enc_s += now_s() - t1;
        bytes += cf->text_len[i];
        if (s != DSC_OK || n > cap) {
            T_CHECK(t, 0, "%s case %u: %s %s", ct->name, i, dsc_status_str(s), e.msg);
            continue;
        }
        n_ids += n;
        const int32_t *want = ct->ids[i];
        int64_t nw = ct->n_ids[i], d = 0;
        while (d < n && d < nw && ids[d] == want[d]) d++;
        if (d < n || d < nw) {
            if (mismatches++ < 10)
                T_CHECK(t, 0,
                        "%s case %u (%u bytes \"%.60s\"): %lld ids, want %lld; first difference "
                        "at id %lld: got %d want %d",
                        ct->name, i, cf->text_len[i], cf->text[i], (long long)n, (long long)nw,
                        (long long)d, d < n ? ids[d] : -1, d < nw ? want[d] : -1);
            continue;
        }
        /* add_bos 0: the same ids without the BOS */
        int64_t n0 = 0;
        s = dsc_tokenize(tk, cf->text[i], cf->text_len[i], 0, ids, cap, &n0, &e);
        T_CHECK(t, s == DSC_OK && n0 == nw - 1 && (n0 == 0 || !memcmp(ids, want + 1, 4 * n0)),
                "%s case %u: add_bos 0 differs", ct->name, i);
        if (round_trip) {
            int64_t k = stream_decode(t, tk, ids, n0, 0, text, 1 << 20, NULL);
            if (k != (int64_t)cf->text_len[i] || memcmp(text, cf->text[i], (size_t)k)) {
                if (rt_fail++ < 5)
                    T_CHECK(t, 0, "%s case %u: decode(encode(s)) != s (%lld vs %u bytes)",
                            ct->name, i, (long long)k, cf->text_len[i]);
            }
        }
    }
    T_CHECK(t, mismatches == 0, "%s: %d of %u cases differ", ct->name, mismatches, ct->n_used);
    printf("    tokenizer %-12s: %u/%u cases match (%lld ids)%s; load %.0f ms, encode %.1f MB/s\n",
           ct->name, ct->n_used - (uint32_t)mismatches, ct->n_used, (long long)n_ids,
           round_trip ? (rt_fail ? ", ROUND TRIP FAILS" : ", round trip ok") : "",
           1e3 * load_s, enc_s > 0 ? (double)bytes / enc_s / 1e6 : 0.0);
    free(ids);
    free(text);
    dsc_tokenizer_free(tk);
}

static void run_blocks(dsc_t *t, const char *which) {
    case_file cf;
    if (cases_load(t, &cf)) {
        int found = 0;
        for (uint32_t k = 0; k < cf.n_tok; k++) {
            int is_base = !cf.tok[k].patch || !*cf.tok[k].patch;
            if (!strcmp(which, "variants") ? !is_base : !strcmp(cf.tok[k].name, which)) {
                found++;
                check_block(t, &cf, &cf.tok[k]);
            }
        }
        T_CHECK(t, found > 0, "no case block for %s", which);
        T_CHECK(t, cf.n_cases >= 10000, "only %u cases", cf.n_cases);
    }
    cases_free(&cf);
}

static void test_parity_v3(dsc_t *t) { run_blocks(t, "v3"); }
static void test_parity_brown(dsc_t *t) { run_blocks(t, "brown"); }
static void test_parity_variants(dsc_t *t) { run_blocks(t, "variants"); }

/* Load time and the ids of the chat tokens, read back from the file. */
static void test_v3_tokens(dsc_t *t) {
    char dir[512];
    if (!v3_dir(t, dir, sizeof dir)) return;
    double t0 = now_s();
    dsc_tokenizer_t *tk = load_or_fail(t, dir);
    double dt = now_s() - t0;
    if (!tk) return;
    printf("    DeepSeek-V3 tokenizer.json (7.8 MB) loaded in %.0f ms\n", 1e3 * dt);
    T_CHECK(t, dsc_tokenizer_vocab(tk) == 128815, "vocab %lld", (long long)dsc_tokenizer_vocab(tk));
    T_CHECK(t, dsc_tokenizer_bos(tk) == 0 && dsc_tokenizer_eos(tk) == 1, "bos %d eos %d",
            dsc_tokenizer_bos(tk), dsc_tokenizer_eos(tk));
    T_CHECK(t, dsc_tokenizer_adds_bos(tk) == 1, "V3 adds BOS");
    static const struct {
        const char *s;
        int32_t id;
    } want[] = {{"<｜begin▁of▁sentence｜>", 0}, {"<｜end▁of▁sentence｜>", 1},
                {"<｜▁pad▁｜>", 2},             {"<｜User｜>", 128803},
                {"<｜Assistant｜>", 128804},     {"<｜tool▁sep｜>", 128814},
                {"Ġthe", 270},                   {"no such token", -1}};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        int32_t id = dsc_tokenizer_find(tk, want[i].s);
        T_CHECK(t, id == want[i].id, "find(%s) = %d, want %d", want[i].s, id, want[i].id);
        size_t n = 0;
        const char *b = id >= 0 ? dsc_token_bytes(tk, id, &n) : NULL;
        if (id >= 0 && strncmp(want[i].s, "Ġ", 2))
            T_CHECK(t, b && n == strlen(want[i].s) && !memcmp(b, want[i].s, n),
                    "bytes of %d are not its content", id);
    }
    size_t n = 0;
    const char *b = dsc_token_bytes(tk, 270, &n);
    T_CHECK(t, b && n == 4 && !memcmp(b, " the", 4), "bytes of 'Ġthe' are \" the\"");
    T_CHECK(t, dsc_token_bytes(tk, -1, &n) == NULL && dsc_token_bytes(tk, 128815, &n) == NULL,
            "out-of-range ids have no bytes");
    T_CHECK(t, tk->max_token_bytes == 128, "longest V3 token: %d bytes", tk->max_token_bytes);
    dsc_tokenizer_free(tk);
}

/* Emoji spread over several byte-level tokens: the stream holds back the
   incomplete character and never emits broken UTF-8. */
static void test_stream_decode(dsc_t *t) {
    dsc_tokenizer_t *tk = load_or_fail(t, BROWN_DIR);
    if (!tk) return;
    const char *s = "Family 👨‍👩‍👧‍👦, flag 🇺🇸, 😀 and 日本語 done";
    int32_t ids[256];
    int64_t n = 0;
    dsc_err e = {0};
    T_CHECK(t, dsc_tokenize(tk, s, strlen(s), 0, ids, 256, &n, &e) == DSC_OK, "%s", e.msg);
    char out[512];
    int64_t held = 0;
    int64_t k = stream_decode(t, tk, ids, n, 0, out, sizeof out, &held);
    T_CHECK(t, k == (int64_t)strlen(s) && !memcmp(out, s, strlen(s)), "stream round trip");
    T_CHECK(t, held >= 8, "only %lld tokens ended inside a character", (long long)held);

    /* the 4-byte emoji 😀 (F0 9F 98 80) one byte per token: nothing comes out
       until the last byte; a flush in between gives U+FFFD */
    int32_t b[4];
    const unsigned char emo[4] = {0xF0, 0x9F, 0x98, 0x80};
    for (int i = 0; i < 4; i++) b[i] = tk->byte_id[emo[i]];
    dsc_detok_state st = {{0}, 0};
    char c[64];
    for (int i = 0; i < 3; i++)
        T_CHECK(t, dsc_detokenize_piece(tk, b[i], 0, &st, c, sizeof c) == 0 && st.n_pend == i + 1,
                "byte %d of the emoji is held", i);
    T_CHECK(t, dsc_detokenize_piece(tk, b[3], 0, &st, c, sizeof c) == 4 && !memcmp(c, emo, 4) &&
                   st.n_pend == 0,
            "the last byte completes the emoji");
    dsc_detokenize_piece(tk, b[0], 0, &st, c, sizeof c);
    dsc_detokenize_piece(tk, b[1], 0, &st, c, sizeof c);
    T_CHECK(t, dsc_detok_flush(&st, c, sizeof c) == 3 && !memcmp(c, "\xEF\xBF\xBD", 3) &&
                   st.n_pend == 0,
            "flush of an incomplete character gives one U+FFFD and clears the state");
    T_CHECK(t, dsc_detok_flush(&st, c, sizeof c) == 0, "flush of nothing");
    /* an incomplete character followed by ASCII: U+FFFD then the ASCII */
    dsc_detokenize_piece(tk, b[0], 0, &st, c, sizeof c);
    int32_t a = tk->byte_id['A'];
    T_CHECK(t, dsc_detokenize_piece(tk, a, 0, &st, c, sizeof c) == 4 &&
                   !memcmp(c, "\xEF\xBF\xBD" "A", 4),
            "broken sequence replaced, ASCII kept");
    /* a lone continuation byte can never start a character */
    T_CHECK(t, dsc_detokenize_piece(tk, tk->byte_id[0x80], 0, &st, c, sizeof c) == 3 &&
                   st.n_pend == 0,
            "lone continuation byte -> U+FFFD at once");
    /* special tokens: text unless skipped; the chat tokens are not special */
    T_CHECK(t, dsc_detokenize_piece(tk, 0, 1, &st, c, sizeof c) == 0, "BOS skipped");
    int64_t m = dsc_detokenize_piece(tk, 0, 0, &st, c, sizeof c);
    T_CHECK(t, m == (int64_t)strlen("<｜begin▁of▁sentence｜>") && !memcmp(c, "<｜begin", 7),
            "BOS as text");
    T_CHECK(t, dsc_detokenize_piece(tk, 2, 1, &st, c, sizeof c) == (int64_t)strlen("<｜User｜>"),
            "<｜User｜> is not special (as in V3): kept with skip_special");
    /* errors: bad id, too small a buffer (state unchanged) */
    T_CHECK(t, dsc_detokenize_piece(tk, -1, 0, &st, c, sizeof c) == -1, "id -1");
    T_CHECK(t, dsc_detokenize_piece(tk, 4096, 0, &st, c, sizeof c) == -1, "id = vocab");
    dsc_detokenize_piece(tk, b[0], 0, &st, c, sizeof c);
    T_CHECK(t, dsc_detokenize_piece(tk, 0, 0, &st, c, 5) == -1 && st.n_pend == 1,
            "cap too small: -1, state kept");
    dsc_tokenizer_free(tk);
}

static void expect_arg_error(dsc_t *t, const dsc_tokenizer_t *tk, const char *s, size_t len,
                             const char *needle) {
    int32_t ids[64];
    int64_t n = 7;
    dsc_err e = {0};
    dsc_status st = dsc_tokenize(tk, s, len, -1, ids, 64, &n, &e);
    T_CHECK(t, st == DSC_ERR_ARG && strstr(e.msg, needle) && n == 0,
            "invalid UTF-8: status %s, message \"%s\" lacks \"%s\"", dsc_status_str(st), e.msg,
            needle);
}

static void test_invalid_utf8(dsc_t *t) {
    dsc_tokenizer_t *tk = load_or_fail(t, BROWN_DIR);
    if (!tk) return;
    expect_arg_error(t, tk, "abc\xff" "def", 7, "byte offset 3");
    expect_arg_error(t, tk, "\x80", 1, "byte offset 0");
    expect_arg_error(t, tk, "ok \xC0\xAF", 5, "byte offset 3");          /* overlong '/' */
    expect_arg_error(t, tk, "xy\xED\xA0\x80", 5, "byte offset 2");       /* surrogate */
    expect_arg_error(t, tk, "\xF4\x90\x80\x80", 4, "byte offset 0");     /* > U+10FFFF */
    expect_arg_error(t, tk, "end \xE2\x82", 6, "byte offset 4");         /* truncated */
    expect_arg_error(t, tk, "日本\xE8\xAA", 8, "byte offset 6");
    int32_t ids[8];
    int64_t n = 0;
    dsc_err e = {0};
    T_CHECK(t, dsc_tokenize(tk, "a\0b", 3, 0, ids, 8, &n, &e) == DSC_OK && n >= 2,
            "NUL is valid UTF-8");
    dsc_tokenizer_free(tk);
}

/* cap smaller than needed: OK, *n_out says how many, the first cap written. */
static void test_buffers_and_bos(dsc_t *t) {
    dsc_tokenizer_t *tk = load_or_fail(t, BROWN_DIR);
    if (!tk) return;
    const char *s = "The jury said it did find that many of Georgia's registration laws";
    int32_t full[128], part[5];
    int64_t n = 0, m = 0;
    dsc_err e = {0};
    T_CHECK(t, dsc_tokenize(tk, s, strlen(s), -1, full, 128, &n, &e) == DSC_OK && n > 5, "%s",
            e.msg);
    T_CHECK(t, full[0] == 0, "BOS first by default (add_bos_token true)");
    T_CHECK(t, dsc_tokenize(tk, s, strlen(s), -1, part, 5, &m, &e) == DSC_OK && m == n &&
                   !memcmp(part, full, sizeof part),
            "short buffer: ok, n_out = %lld, prefix written", (long long)m);
    T_CHECK(t, dsc_tokenize(tk, s, strlen(s), 1, NULL, 0, &m, &e) == DSC_OK && m == n,
            "counting only (ids NULL, cap 0)");
    T_CHECK(t, dsc_tokenize(tk, "", 0, -1, full, 128, &m, &e) == DSC_OK && m == 1 && full[0] == 0,
            "empty text -> [BOS], as LlamaTokenizerFast");
    T_CHECK(t, dsc_tokenize(tk, "", 0, 0, full, 128, &m, &e) == DSC_OK && m == 0, "empty, no BOS");
    T_CHECK(t, dsc_tokenize(tk, NULL, 0, 1, full, 128, &m, &e) == DSC_OK && m == 1,
            "NULL text of length 0 is the empty text");
    T_CHECK(t, dsc_tokenize(tk, "x", 1, 0, full, -1, &m, &e) == DSC_ERR_ARG, "cap < 0");
    T_CHECK(t, dsc_tokenize(tk, "x", 1, 0, full, 1, NULL, &e) == DSC_ERR_ARG, "n_out NULL");
    const char *chat = "<｜begin▁of▁sentence｜>sys<｜User｜>hi<｜Assistant｜>";
    T_CHECK(t, dsc_tokenize(tk, chat, strlen(chat), -1, full, 128, &m, &e) == DSC_OK && m >= 5 &&
                   full[0] == 0 && full[1] == 0,
            "BOS is added even before a BOS in the text (as transformers does)");
    dsc_tokenizer_free(tk);
}

/* Expect loading dir to fail with st and a message containing both needles. */
static void expect_load_error(dsc_t *t, const char *dir, dsc_status st, const char *n1,
                              const char *n2) {
    static char sentinel; /* any non-NULL value: the load must reset *out */
    dsc_tokenizer_t *tk = (dsc_tokenizer_t *)(void *)&sentinel;
    dsc_err e = {0};
    dsc_status s = dsc_tokenizer_load(dir, &tk, &e);
    T_CHECK(t, s == st && tk == NULL, "load %s: %s, expected %s", dir, dsc_status_str(s),
            dsc_status_str(st));
    T_CHECK(t, s == DSC_OK || (strstr(e.msg, n1) && (!n2 || strstr(e.msg, n2))),
            "message \"%s\" lacks \"%s\" / \"%s\"", e.msg, n1, n2 ? n2 : "");
    if (s == DSC_OK) dsc_tokenizer_free(tk);
}

static void test_load_errors(dsc_t *t) {
    char dir[512], path[1024];
    snprintf(dir, sizeof dir, "%s/no_such_dir", t->tmpdir);
    expect_load_error(t, dir, DSC_ERR_IO, "no_such_dir/tokenizer.json", NULL);

    scratch_dir(t, "malformed", dir, sizeof dir);
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    t_write_file(path, "{\"model\": {\"type\": \"BPE\",", 26);
    expect_load_error(t, dir, DSC_ERR_FORMAT, "tokenizer.json", "malformed JSON");

    static const struct {
        const char *name, *patch;
        dsc_status st;
        const char *n1, *n2;
    } cases[] = {
        {"wordpiece", "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}", DSC_ERR_UNSUPPORTED,
         "model.type", "WordPiece"},
        {"nfc", "{\"normalizer\": {\"type\": \"NFC\"}}", DSC_ERR_UNSUPPORTED, "normalizer.type",
         "NFC"},
        {"metaspace", "{\"pre_tokenizer\": {\"type\": \"Metaspace\"}}", DSC_ERR_UNSUPPORTED,
         "pre_tokenizer.type", "Metaspace"},
        {"behavior", "{\"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [{\"type\":"
                     " \"Split\", \"pattern\": {\"Regex\": \"a\"}, \"behavior\": \"Sideways\"},"
                     " {\"type\": \"ByteLevel\"}]}}",
         DSC_ERR_UNSUPPORTED, "Split.behavior", "Sideways"},
        {"nobytelevel", "{\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"String\": \" \"},"
                        " \"behavior\": \"Isolated\"}}",
         DSC_ERR_UNSUPPORTED, "pre_tokenizer", "ByteLevel"},
        {"badregex", "{\"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [{\"type\":"
                     " \"Split\", \"pattern\": {\"Regex\": \"(\"}, \"behavior\": \"Isolated\"},"
                     " {\"type\": \"ByteLevel\"}]}}",
         DSC_ERR_FORMAT, "Split 0", "regex"},
        {"decoder", "{\"decoder\": {\"type\": \"WordPiece\"}}", DSC_ERR_UNSUPPORTED,
         "decoder.type", "WordPiece"},
        {"template", "{\"post_processor\": {\"type\": \"TemplateProcessing\"}}",
         DSC_ERR_UNSUPPORTED, "post_processor.type", "TemplateProcessing"},
        {"badmerge", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1},"
                     " \"merges\": [\"a b\"]}}",
         DSC_ERR_FORMAT, "merges[0]", "'ab'"},
        {"badid", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": -3}, \"merges\": []}}",
         DSC_ERR_FORMAT, "model.vocab", "id"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (!patched_dir(t, BROWN_DIR, cases[i].name, cases[i].patch, dir, sizeof dir)) continue;
        expect_load_error(t, dir, cases[i].st, cases[i].n1, cases[i].n2);
    }

    /* tokenizer_config.json: malformed -> format error; absent -> no BOS */
    if (patched_dir(t, BROWN_DIR, "badcfg", "", dir, sizeof dir)) {
        snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
        t_write_file(path, "{\"add_bos_token\": tru", 21);
        expect_load_error(t, dir, DSC_ERR_FORMAT, "tokenizer_config.json", "malformed JSON");
        remove(path);
        dsc_tokenizer_t *tk = load_or_fail(t, dir);
        if (tk) {
            T_CHECK(t, !dsc_tokenizer_adds_bos(tk) && dsc_tokenizer_bos(tk) == -1 &&
                           dsc_tokenizer_eos(tk) == -1,
                    "no config: no BOS / EOS");
            int32_t ids[4];
            int64_t n = 0;
            dsc_err e = {0};
            T_CHECK(t, dsc_tokenize(tk, "a", 1, 1, ids, 4, &n, &e) == DSC_ERR_ARG,
                    "add_bos 1 without a BOS token");
            dsc_tokenizer_free(tk);
        }
        t_write_file(path, "{\"add_eos_token\": true}", 23);
        expect_load_error(t, dir, DSC_ERR_UNSUPPORTED, "add_eos_token", NULL);
    }
}

/* One tokenizer used by several threads at once gives each the same ids
   (all per-call state lives in the call). */
typedef struct {
    const dsc_tokenizer_t *tk;
    const char *text;
    size_t len;
    int32_t *ids;
    int64_t cap, n;
    dsc_status st;
} thread_job;

static void *encode_job(void *arg) {
    thread_job *j = arg;
    for (int rep = 0; rep < 20 && j->st == DSC_OK; rep++)
        j->st = dsc_tokenize(j->tk, j->text, j->len, -1, j->ids, j->cap, &j->n, NULL);
    return NULL;
}

static void test_threads(dsc_t *t) {
    dsc_tokenizer_t *tk = load_or_fail(t, BROWN_DIR);
    if (!tk) return;
    char text[8192];
    size_t len = 0;
    static const char *const parts[] = {"The jury's 1962 report, ", "日本語のテキスト ",
                                        "👨‍👩‍👧 and 🇺🇸\n", "<｜User｜>hi<｜Assistant｜>", "  x = 42;\t"};
    for (int i = 0; len + 64 < sizeof text; i++) {
        size_t n = strlen(parts[i % 5]);
        memcpy(text + len, parts[i % 5], n);
        len += n;
    }
    enum { NT = 4 };
    thread_job jobs[NT];
    pthread_t th[NT];
    int32_t *want = malloc(sizeof(int32_t) * 8192);
    int64_t nw = 0;
    T_CHECK(t, want && dsc_tokenize(tk, text, len, -1, want, 8192, &nw, NULL) == DSC_OK, "serial");
    int started[NT];
    for (int i = 0; i < NT; i++) {
        jobs[i] = (thread_job){tk, text, len, malloc(sizeof(int32_t) * 8192), 8192, 0, DSC_OK};
        started[i] = jobs[i].ids && pthread_create(&th[i], NULL, encode_job, &jobs[i]) == 0;
    }
    for (int i = 0; i < NT; i++) {
        T_CHECK(t, started[i], "thread %d did not start", i);
        if (started[i]) pthread_join(th[i], NULL);
        T_CHECK(t, jobs[i].st == DSC_OK && jobs[i].n == nw && jobs[i].ids &&
                       !memcmp(jobs[i].ids, want, sizeof(int32_t) * (size_t)nw),
                "thread %d: different ids", i);
        free(jobs[i].ids);
    }
    free(want);
    dsc_tokenizer_free(tk);
}

const dsc_test_case dsc_tests_tokenizer[] = {
    {"v3_load_and_chat_tokens", test_v3_tokens},
    {"parity_v3", test_parity_v3},
    {"parity_brown", test_parity_brown},
    {"parity_brown_variants", test_parity_variants},
    {"stream_decode", test_stream_decode},
    {"invalid_utf8", test_invalid_utf8},
    {"buffers_and_bos", test_buffers_and_bos},
    {"load_errors", test_load_errors},
    {"threads", test_threads},
    {NULL, NULL},
};
