/*
 * test_safetensors.c - the safetensors layer through its API only: writer /
 * reader round trip, sharded sets, one case per kind of malformed input (each
 * must fail with the right status and a message naming the file and tensor),
 * and a deterministic mutation fuzz loop meant to run under ASan + UBSan.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "io/safetensors.h"
#include "test.h"

static void tmp_path(dsc_t *t, char *buf, size_t cap, const char *name) {
    snprintf(buf, cap, "%s/%s", t->tmpdir, name);
}

/* A file of: the 8-byte little-endian prefix, hdr, then data_len bytes. */
static int write_st_raw(const char *path, uint64_t prefix, const char *hdr, size_t data_len) {
    size_t hl = strlen(hdr), n = 8 + hl + data_len;
    unsigned char *b = calloc(n, 1);
    if (!b) return -1;
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)(prefix >> (8 * i));
    memcpy(b + 8, hdr, hl);
    for (size_t i = 0; i < data_len; i++) b[8 + hl + i] = (unsigned char)(i * 7 + 1);
    int r = t_write_file(path, b, n);
    free(b);
    return r;
}

/* Open path; expect status want and a message naming the file and needle. */
static void expect_open(dsc_t *t, const char *what, const char *path, dsc_status want,
                        const char *needle) {
    dsc_st_set *s = NULL;
    dsc_err e = {0};
    dsc_status st = dsc_st_set_open_file(path, &s, &e);
    T_CHECK(t, st == want, "%s: status '%s', expected '%s' (%s)", what, dsc_status_str(st),
            dsc_status_str(want), e.msg);
    if (st != DSC_OK) {
        T_CHECK(t, s == NULL, "%s: set left behind on failure", what);
        T_CHECK(t, e.code == st, "%s: err.code %d != status %d", what, e.code, st);
        T_CHECK(t, strstr(e.msg, path) != NULL, "%s: message \"%s\" lacks the file", what,
                e.msg);
        T_CHECK(t, !needle || strstr(e.msg, needle), "%s: message \"%s\" lacks \"%s\"", what,
                e.msg, needle);
    }
    dsc_st_set_close(s);
}

/* ---- round trip ---- */

static void test_round_trip(dsc_t *t) {
    t_rng r = {42};
    float f32[3 * 5 * 7], scalar = -1.25f;
    uint16_t bf16[13], f16[17];
    uint8_t f8[2 * 3 * 5];
    for (size_t i = 0; i < sizeof f32 / sizeof f32[0]; i++) f32[i] = t_rng_normal(&r);
    for (size_t i = 0; i < 13; i++) bf16[i] = (uint16_t)t_rng_u64(&r);
    for (size_t i = 0; i < 17; i++) f16[i] = (uint16_t)t_rng_u64(&r);
    for (size_t i = 0; i < sizeof f8; i++) f8[i] = (uint8_t)t_rng_u64(&r);
    /* Odd byte counts (26, 34, 30) put later tensors at odd offsets; the
       empty and the 0-dim tensors are edge cases of numel. */
    const dsc_st_write_entry w[] = {
        {"layers.0.w_f32", DSC_F32, 3, {3, 5, 7}, f32},
        {"b.bf16", DSC_BF16, 2, {1, 13}, bf16},
        {"a.f16 \xc3\xa9", DSC_F16, 1, {17}, f16},
        {"f8", DSC_F8_E4M3, 3, {2, 3, 5}, f8},
        {"empty", DSC_BF16, 2, {0, 4}, NULL},
        {"scalar", DSC_F32, 0, {0}, &scalar},
    };
    const int n = (int)(sizeof w / sizeof w[0]);
    char dir[512], path[600];
    tmp_path(t, dir, sizeof dir, "rt");
    T_CHECK(t, mkdir(dir, 0777) == 0, "mkdir %s", dir);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    dsc_err e = {0};
    T_CHECK(t, dsc_st_write(path, w, n, &e) == DSC_OK, "write: %s", e.msg);

    size_t len = 0;
    unsigned char *raw = t_read_file(path, &len);
    T_CHECK(t, raw && len >= 8, "cannot read back %s", path);
    if (!raw) return;
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = hl << 8 | raw[i];
    T_CHECK(t, hl % 8 == 0 && hl <= len - 8, "header length %llu not a multiple of 8",
            (unsigned long long)hl);
    /* Data contiguous after the padded header, in the given order. */
    size_t data_len = 3 * 5 * 7 * 4 + 13 * 2 + 17 * 2 + 30 + 4;
    T_CHECK(t, 8 + hl + data_len == len, "file is %zu bytes, expected %zu", len,
            (size_t)(8 + hl + data_len));
    T_CHECK(t, memcmp(raw + 8 + hl, f32, sizeof f32) == 0, "f32 bytes first in data");
    free(raw);

    /* Both entry points: the directory (single-file checkpoint) and the file. */
    for (int via_dir = 0; via_dir < 2; via_dir++) {
        dsc_st_set *s = NULL;
        dsc_status st = via_dir ? dsc_st_set_open(dir, &s, &e) : dsc_st_set_open_file(path, &s, &e);
        T_CHECK(t, st == DSC_OK, "open (via_dir %d): %s", via_dir, e.msg);
        if (st != DSC_OK) return;
        T_CHECK(t, dsc_st_count(s) == n, "count %lld", (long long)dsc_st_count(s));
        T_CHECK(t, dsc_st_file_bytes(s) == (int64_t)len, "file_bytes %lld, file %zu",
                (long long)dsc_st_file_bytes(s), len);
        T_CHECK(t, dsc_st_file_path(s, 0) && !strcmp(dsc_st_file_path(s, 0), path),
                "file path %s", dsc_st_file_path(s, 0));
        T_CHECK(t, dsc_st_file_path(s, 1) == NULL && dsc_st_at(s, n) == NULL &&
                       dsc_st_at(s, -1) == NULL,
                "out-of-range index gives NULL");
        for (int i = 0; i < n; i++) {
            const dsc_st_tensor *a = dsc_st_at(s, i);
            dsc_st_tensor *f = dsc_st_find(s, w[i].name);
            T_CHECK(t, a && a == f, "tensor %d: at and find disagree", i);
            if (!f) continue;
            T_CHECK(t, !strcmp(f->name, w[i].name), "order: %d is %s", i, f->name);
            T_CHECK(t, f->dtype == w[i].dtype && f->ndim == w[i].ndim, "%s: dtype/ndim",
                    f->name);
            int64_t numel = 1;
            for (int d = 0; d < f->ndim; d++) {
                T_CHECK(t, f->shape[d] == w[i].shape[d], "%s: shape[%d]", f->name, d);
                numel *= w[i].shape[d];
            }
            T_CHECK(t, f->numel == numel, "%s: numel %lld", f->name, (long long)f->numel);
            T_CHECK(t, f->nbytes == (size_t)numel * dsc_dtype_size(f->dtype), "%s: nbytes",
                    f->name);
            T_CHECK(t, f->file_index == 0 && f->used == 1, "%s: file_index/used", f->name);
            T_CHECK(t, f->nbytes == 0 || !memcmp(f->data, w[i].data, f->nbytes),
                    "%s: bytes differ", f->name);
        }
        /* Values survive exactly: the bytes are stored as given, so atol 0.
           "scalar" sits at an odd offset (the writer keeps the given order,
           contiguous), so it is copied out rather than read in place. */
        const dsc_st_tensor *x = dsc_st_find(s, "layers.0.w_f32");
        if (x) t_close_f32(t, "f32 values", x->data, f32, x->numel, 0.0, 0.0);
        x = dsc_st_find(s, "scalar");
        float sc = 0;
        if (x && x->nbytes == sizeof sc) memcpy(&sc, x->data, sizeof sc);
        t_close_f32(t, "scalar", &sc, &scalar, 1, 0.0, 0.0);
        T_CHECK(t, dsc_st_find(s, "missing") == NULL && dsc_st_find(s, "f") == NULL &&
                       dsc_st_find(s, "f8 ") == NULL,
                "absent names give NULL");
        dsc_st_set_close(s);
    }
    dsc_st_set_close(NULL);
}

/* Many tensors through the hash table, with names differing in one digit. */
static void test_many_tensors(dsc_t *t) {
    enum { N = 3000 };
    static char names[N][48];
    static dsc_st_write_entry w[N];
    static uint8_t data[N];
    for (int i = 0; i < N; i++) {
        snprintf(names[i], sizeof names[i], "model.layers.%d.mlp.experts.%d.w", i / 64, i % 64);
        data[i] = (uint8_t)i;
        w[i] = (dsc_st_write_entry){names[i], DSC_F8_E4M3, 1, {1}, &data[i]};
    }
    char path[512];
    tmp_path(t, path, sizeof path, "many.safetensors");
    dsc_err e = {0};
    T_CHECK(t, dsc_st_write(path, w, N, &e) == DSC_OK, "%s", e.msg);
    dsc_st_set *s = NULL;
    T_CHECK(t, dsc_st_set_open_file(path, &s, &e) == DSC_OK, "%s", e.msg);
    if (!s) return;
    int bad = 0;
    for (int i = 0; i < N; i++) {
        const dsc_st_tensor *x = dsc_st_find(s, names[i]);
        if (!x || strcmp(x->name, names[i]) || *(const uint8_t *)x->data != (uint8_t)i) bad++;
        char absent[64];
        snprintf(absent, sizeof absent, "model.layers.%d.mlp.experts.%d.w", i / 64, 64 + i);
        if (dsc_st_find(s, absent)) bad++;
    }
    T_CHECK(t, bad == 0, "%d lookups wrong of %d", bad, 2 * N);
    dsc_st_set_close(s);
}

/* ---- sharded sets ---- */

#define SH1 "model-00001-of-00002.safetensors"
#define SH2 "model-00002-of-00002.safetensors"

/* Make dir with shards 1 {a, b} and 2 {c, d, e} and an index. extra1 / extra2
   add a tensor to shard 1 / 2; index is the index text (NULL: the right one). */
static int make_sharded(dsc_t *t, const char *dir, const char *extra1, const char *extra2,
                        const char *index) {
    static const float v[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    dsc_st_write_entry s1[3] = {{"a", DSC_F32, 1, {2}, v}, {"b", DSC_BF16, 2, {2, 3}, v}};
    dsc_st_write_entry s2[4] = {{"c", DSC_F32, 1, {8}, v},
                                {"d", DSC_F8_E4M3, 1, {5}, v},
                                {"e", DSC_F16, 0, {0}, v}};
    int n1 = 2, n2 = 3;
    if (extra1) s1[n1++] = (dsc_st_write_entry){extra1, DSC_F32, 1, {1}, v};
    if (extra2) s2[n2++] = (dsc_st_write_entry){extra2, DSC_F32, 1, {1}, v};
    char p[700];
    dsc_err e = {0};
    if (mkdir(dir, 0777) != 0) return -1;
    snprintf(p, sizeof p, "%s/%s", dir, SH1);
    if (dsc_st_write(p, s1, n1, &e) != DSC_OK) return -1;
    snprintf(p, sizeof p, "%s/%s", dir, SH2);
    if (dsc_st_write(p, s2, n2, &e) != DSC_OK) return -1;
    char idx[1024];
    if (!index) {
        snprintf(idx, sizeof idx,
                 "{\"metadata\": {\"total_size\": 45}, \"weight_map\": {\"a\": \"%s\", "
                 "\"c\": \"%s\", \"b\": \"%s\", \"d\": \"%s\", \"e\": \"%s\"}}",
                 SH1, SH2, SH1, SH2, SH2);
        index = idx;
    }
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
    (void)t;
    return t_write_file(p, index, strlen(index));
}

static void test_sharded(dsc_t *t) {
    char dir[512];
    tmp_path(t, dir, sizeof dir, "sharded");
    T_CHECK(t, make_sharded(t, dir, NULL, NULL, NULL) == 0, "cannot make %s", dir);
    dsc_st_set *s = NULL;
    dsc_err e = {0};
    T_CHECK(t, dsc_st_set_open(dir, &s, &e) == DSC_OK, "%s", e.msg);
    if (!s) return;
    T_CHECK(t, dsc_st_count(s) == 5, "count %lld", (long long)dsc_st_count(s));
    for (int64_t i = 0; i < dsc_st_count(s); i++)
        T_CHECK(t, dsc_st_at(s, i)->used == 0, "%s used before any find", dsc_st_at(s, i)->name);
    const char *names = "abcde";
    int64_t total = 0;
    for (int i = 0; i < 2; i++) {
        const char *p = dsc_st_file_path(s, i);
        size_t len = 0;
        void *b = p ? t_read_file(p, &len) : NULL;
        T_CHECK(t, b != NULL, "file %d: path %s", i, p ? p : "(null)");
        free(b);
        total += (int64_t)len;
    }
    T_CHECK(t, dsc_st_file_bytes(s) == total, "file_bytes %lld, files %lld",
            (long long)dsc_st_file_bytes(s), (long long)total);
    for (int i = 0; i < 5; i++) {
        char nm[2] = {names[i], 0};
        dsc_st_tensor *x = dsc_st_find(s, nm);
        T_CHECK(t, x && x->used, "tensor %s not found or not marked used", nm);
        if (!x) continue;
        const char *shard = (i == 0 || i == 1) ? SH1 : SH2;
        const char *p = dsc_st_file_path(s, x->file_index);
        T_CHECK(t, p && strstr(p, shard), "%s: file %s, expected %s", nm, p, shard);
    }
    const float *c = dsc_st_find(s, "c") ? dsc_st_find(s, "c")->data : NULL;
    T_CHECK(t, c && c[0] == 1 && c[7] == 8, "values of c");
    dsc_st_set_close(s);
}

/* Sharded directories that must fail, each in a directory of its own. */
static void test_sharded_bad(dsc_t *t) {
    char idx[1024];
    static const struct {
        const char *label, *extra1, *extra2;
        int index_kind; /* 0 good, 1 missing shard, 2 tensor absent, 3 ../ , 4 / , 5 not JSON,
                           6 no weight_map */
        dsc_status want;
        const char *needle1, *needle2;
    } cases[] = {
        {"not_in_index", "x", NULL, 0, DSC_ERR_FORMAT, "'x'", "index.json"},
        {"two_shards", NULL, "a", 0, DSC_ERR_FORMAT, "'a'", SH1},
        {"missing_shard", NULL, NULL, 1, DSC_ERR_IO, "model-00003-of-00003.safetensors",
         "index.json"},
        {"absent_tensor", NULL, NULL, 2, DSC_ERR_MISSING, "'zz'", SH2},
        {"dotdot", NULL, NULL, 3, DSC_ERR_FORMAT, "../evil.safetensors", "plain file name"},
        {"slash", NULL, NULL, 4, DSC_ERR_FORMAT, "sub/x.safetensors", "plain file name"},
        {"index_not_json", NULL, NULL, 5, DSC_ERR_FORMAT, "index.json", "JSON"},
        {"no_weight_map", NULL, NULL, 6, DSC_ERR_FORMAT, "index.json", "weight_map"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        const char *index = NULL;
        const char *sh_b = SH1, *sh_extra = "";
        switch (cases[k].index_kind) {
        case 1: sh_extra = ", \"q\": \"model-00003-of-00003.safetensors\""; break;
        case 2: sh_extra = ", \"zz\": \"model-00002-of-00002.safetensors\""; break;
        case 3: sh_b = "../evil.safetensors"; break;
        case 4: sh_b = "sub/x.safetensors"; break;
        }
        if (cases[k].index_kind == 5) {
            index = "{\"weight_map\": {\"a\": ";
        } else if (cases[k].index_kind == 6) {
            index = "{\"metadata\": {}}";
        } else if (cases[k].index_kind != 0) {
            snprintf(idx, sizeof idx,
                     "{\"weight_map\": {\"a\": \"%s\", \"b\": \"%s\", \"c\": \"%s\", "
                     "\"d\": \"%s\", \"e\": \"%s\"%s}}",
                     SH1, sh_b, SH2, SH2, SH2, sh_extra);
            index = idx;
        }
        char dir[512];
        tmp_path(t, dir, sizeof dir, cases[k].label);
        T_CHECK(t, make_sharded(t, dir, cases[k].extra1, cases[k].extra2, index) == 0,
                "cannot make %s", dir);
        dsc_st_set *s = NULL;
        dsc_err e = {0};
        dsc_status st = dsc_st_set_open(dir, &s, &e);
        T_CHECK(t, st == cases[k].want && s == NULL, "%s: status '%s', expected '%s' (%s)",
                cases[k].label, dsc_status_str(st), dsc_status_str(cases[k].want), e.msg);
        T_CHECK(t, strstr(e.msg, cases[k].needle1) && strstr(e.msg, cases[k].needle2),
                "%s: message \"%s\" lacks \"%s\" or \"%s\"", cases[k].label, e.msg,
                cases[k].needle1, cases[k].needle2);
        dsc_st_set_close(s);
    }

    /* A directory holding neither file says which files it looked for. */
    char dir[512];
    tmp_path(t, dir, sizeof dir, "empty_dir");
    T_CHECK(t, mkdir(dir, 0777) == 0, "mkdir");
    dsc_st_set *s = NULL;
    dsc_err e = {0};
    dsc_status st = dsc_st_set_open(dir, &s, &e);
    T_CHECK(t, st == DSC_ERR_IO && s == NULL, "empty dir: %s", dsc_status_str(st));
    T_CHECK(t, strstr(e.msg, "model.safetensors.index.json") && strstr(e.msg, dir),
            "empty dir message: %s", e.msg);
}

/* ---- malformed single files ---- */

/* A header with the one tensor "t". */
#define T1(dt, shape, offs)                                                    \
    "{\"t\":{\"dtype\":\"" dt "\",\"shape\":" shape ",\"data_offsets\":" offs "}}"

static void test_bad_headers(dsc_t *t) {
    static const struct {
        const char *label, *hdr;
        size_t data_len;
        dsc_status want;
        const char *needle;
    } cases[] = {
        {"ok_baseline", T1("F32", "[2]", "[0,8]"), 8, DSC_OK, NULL},
        {"ok_metadata_gap_empty",
         "{\"__metadata__\":{\"format\":\"pt\"},\"a\":{\"dtype\":\"F16\",\"shape\":[2],"
         "\"data_offsets\":[8,12]},\"z\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[9,9]}}",
         16, DSC_OK, NULL},
        {"not_json", "{\"t\": {\"dtype\": ", 0, DSC_ERR_FORMAT, "JSON"},
        {"json_array", "[1, 2, 3]", 0, DSC_ERR_FORMAT, "not an object"},
        {"truncated_data", T1("F32", "[4]", "[0,16]"), 8, DSC_ERR_FORMAT, "'t'"},
        {"offsets_reversed", T1("F32", "[2]", "[8,0]"), 8, DSC_ERR_FORMAT, "reversed"},
        {"offset_2p64", T1("F32", "[2]", "[0,18446744073709551615]"), 8, DSC_ERR_FORMAT,
         "too big"},
        {"offset_2p63m1", T1("F8_E4M3", "[2]", "[9223372036854775805,9223372036854775807]"), 8,
         DSC_ERR_FORMAT, "'t'"},
        {"shape_overflow", T1("F32", "[1099511627776,1099511627776]", "[0,8]"), 8,
         DSC_ERR_FORMAT, "overflows"},
        {"bytes_overflow", T1("F32", "[4611686018427387904]", "[0,8]"), 8, DSC_ERR_FORMAT,
         "overflows"},
        {"size_mismatch", T1("F32", "[3]", "[0,8]"), 16, DSC_ERR_FORMAT, "needs 12 bytes"},
        {"overlap",
         "{\"first\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"second\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
         16, DSC_ERR_FORMAT, "'first' [0, 8) and 'second' [4, 12) overlap"},
        {"overlap_unsorted",
         "{\"big\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
         "\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[16,20]},"
         "\"inner\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
         24, DSC_ERR_FORMAT, "'big' [0, 16) and 'inner' [4, 8) overlap"},
        {"duplicate",
         "{\"dup\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"dup\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
         8, DSC_ERR_FORMAT, "dup"},
        {"non_utf8_name",
         "{\"bad\xff name\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
         8, DSC_ERR_FORMAT, "bad\\xFF name"},
        {"overlong_utf8",
         "{\"x\xc0\xafy\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
         8, DSC_ERR_FORMAT, "UTF-8"},
        {"nul_in_name", "{\"a\\u0000b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
         8, DSC_ERR_FORMAT, "NUL"},
        {"dtype_i64", T1("I64", "[1]", "[0,8]"), 8, DSC_ERR_UNSUPPORTED, "'t' has dtype I64"},
        {"dtype_e5m2", T1("F8_E5M2", "[1]", "[0,1]"), 8, DSC_ERR_UNSUPPORTED, "F8_E5M2"},
        {"dtype_bool", T1("BOOL", "[1]", "[0,1]"), 8, DSC_ERR_UNSUPPORTED, "BOOL"},
        {"dtype_garbage", T1("bf16 ", "[1]", "[0,2]"), 8, DSC_ERR_FORMAT, "'t'"},
        {"dtype_number", "{\"t\":{\"dtype\":3,\"shape\":[1],\"data_offsets\":[0,4]}}", 8,
         DSC_ERR_FORMAT, "'t'"},
        {"shape_negative", T1("F32", "[-1]", "[0,4]"), 8, DSC_ERR_FORMAT, "shape[0]"},
        {"shape_real", T1("F32", "[1, 2.5]", "[0,4]"), 8, DSC_ERR_FORMAT, "shape[1]"},
        {"shape_string", T1("F32", "[\"2\"]", "[0,8]"), 8, DSC_ERR_FORMAT, "shape[0]"},
        {"shape_9_dims", T1("F32", "[1,1,1,1,1,1,1,1,1]", "[0,4]"), 8, DSC_ERR_FORMAT,
         "9 dims"},
        {"shape_not_array", T1("F32", "2", "[0,8]"), 8, DSC_ERR_FORMAT, "'t'"},
        {"offsets_three", T1("F32", "[1]", "[0,4,8]"), 8, DSC_ERR_FORMAT, "data_offsets"},
        {"offsets_negative", T1("F32", "[1]", "[-4,0]"), 8, DSC_ERR_FORMAT, "data_offsets"},
        {"missing_offsets", "{\"t\":{\"dtype\":\"F32\",\"shape\":[1]}}", 8, DSC_ERR_FORMAT,
         "missing 'data_offsets'"},
        {"extra_key",
         "{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}}", 8,
         DSC_ERR_FORMAT, "'x'"},
        {"entry_not_object", "{\"t\":[1]}", 0, DSC_ERR_FORMAT, "'t'"},
        {"metadata_not_strings", "{\"__metadata__\":{\"k\":1}}", 0, DSC_ERR_FORMAT, "'k'"},
        {"lone_surrogate", "{\"\\ud800\":{}}", 0, DSC_ERR_FORMAT, "Unicode"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        char path[600];
        char name[128];
        snprintf(name, sizeof name, "bad_%s.safetensors", cases[k].label);
        tmp_path(t, path, sizeof path, name);
        T_CHECK(t, write_st_raw(path, strlen(cases[k].hdr), cases[k].hdr, cases[k].data_len) == 0,
                "write %s", path);
        expect_open(t, cases[k].label, path, cases[k].want, cases[k].needle);
    }
}

/* Problems with the file and its length prefix rather than the JSON. */
static void test_bad_lengths(dsc_t *t) {
    const char *hdr = T1("F32", "[2]", "[0,8]");
    uint64_t hl = strlen(hdr);
    char path[600];
    static const unsigned char five[5] = {1, 0, 0, 0, 0};

    tmp_path(t, path, sizeof path, "len_empty.safetensors");
    T_CHECK(t, t_write_file(path, five, 0) == 0, "write");
    expect_open(t, "empty file", path, DSC_ERR_FORMAT, "0 bytes");

    tmp_path(t, path, sizeof path, "len_short.safetensors");
    T_CHECK(t, t_write_file(path, five, sizeof five) == 0, "write");
    expect_open(t, "5-byte file", path, DSC_ERR_FORMAT, "5 bytes");

    static const struct {
        const char *label;
        uint64_t prefix;
        const char *needle;
    } cases[] = {
        {"past_eof", 0, "past the end of the file"}, /* prefix = file size - 7 */
        {"2^63", 1ull << 63, "9223372036854775808"},
        {"2^64-1", ~0ull, "exceeds the limit"},
        {"limit+1", 100000001ull, "100000001"},
        {"zero", 0, "JSON"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        char name[64];
        snprintf(name, sizeof name, "len_%zu.safetensors", k);
        tmp_path(t, path, sizeof path, name);
        uint64_t prefix = k == 0 ? hl + 8 + 1 : cases[k].prefix;
        T_CHECK(t, write_st_raw(path, prefix, hdr, 8) == 0, "write");
        expect_open(t, cases[k].label, path, DSC_ERR_FORMAT, cases[k].needle);
    }

    tmp_path(t, path, sizeof path, "no_such_file.safetensors");
    expect_open(t, "missing file", path, DSC_ERR_IO, "cannot open");
    expect_open(t, "a directory", t->tmpdir, DSC_ERR_IO, "regular file");
}

/* ---- writer argument checks ---- */

static void test_write_bad(dsc_t *t) {
    static const float v[4] = {0};
    char path[600], partial[700];
    dsc_err e = {0};
    tmp_path(t, path, sizeof path, "w_bad.safetensors");
    const dsc_st_write_entry dup[] = {{"x", DSC_F32, 1, {1}, v}, {"x", DSC_F32, 1, {1}, v}};
    T_CHECK(t, dsc_st_write(path, dup, 2, &e) == DSC_ERR_ARG && strstr(e.msg, "'x'"),
            "duplicate name: %s", e.msg);
    const dsc_st_write_entry neg[] = {{"n", DSC_F32, 2, {2, -1}, v}};
    T_CHECK(t, dsc_st_write(path, neg, 1, &e) == DSC_ERR_ARG, "negative dim");
    const dsc_st_write_entry nine[] = {{"n", DSC_F32, 9, {1}, v}};
    T_CHECK(t, dsc_st_write(path, nine, 1, &e) == DSC_ERR_ARG, "9 dims");
    const dsc_st_write_entry meta[] = {{"__metadata__", DSC_F32, 1, {1}, v}};
    T_CHECK(t, dsc_st_write(path, meta, 1, &e) == DSC_ERR_ARG, "reserved name");
    const dsc_st_write_entry utf[] = {{"a\xff", DSC_F32, 1, {1}, v}};
    T_CHECK(t, dsc_st_write(path, utf, 1, &e) == DSC_ERR_ARG, "non-UTF-8 name");
    const dsc_st_write_entry nul[] = {{"n", DSC_F32, 1, {4}, NULL}};
    T_CHECK(t, dsc_st_write(path, nul, 1, &e) == DSC_ERR_ARG, "NULL data");
    T_CHECK(t, access(path, F_OK) != 0, "a file was left after bad arguments");

    const dsc_st_write_entry ok[] = {{"n", DSC_F32, 1, {4}, v}};
    tmp_path(t, path, sizeof path, "no_such_dir/x.safetensors");
    T_CHECK(t, dsc_st_write(path, ok, 1, &e) == DSC_ERR_IO && strstr(e.msg, path),
            "missing directory: %s", e.msg);
    /* Renaming over a directory fails after the data was written; the
       partial file must be gone. */
    char dir[600];
    tmp_path(t, dir, sizeof dir, "w_is_dir");
    T_CHECK(t, mkdir(dir, 0777) == 0, "mkdir");
    T_CHECK(t, dsc_st_write(dir, ok, 1, &e) == DSC_ERR_IO && strstr(e.msg, dir),
            "target is a directory: %s", e.msg);
    snprintf(partial, sizeof partial, "%s.partial", dir);
    T_CHECK(t, access(partial, F_OK) != 0, "partial file %s left behind", partial);
    /* Zero tensors is a valid (if useless) file. */
    tmp_path(t, path, sizeof path, "w_empty.safetensors");
    dsc_st_set *s = NULL;
    T_CHECK(t, dsc_st_write(path, NULL, 0, &e) == DSC_OK, "%s", e.msg);
    T_CHECK(t, dsc_st_set_open_file(path, &s, &e) == DSC_OK && dsc_st_count(s) == 0, "%s",
            e.msg);
    dsc_st_set_close(s);
}

/* ---- fuzz ---- */

/*
 * Mutate valid files 2000 times (seeded) and open each. An open must either
 * fail with a message or succeed with every tensor inside the file. The
 * mapping's base is not in the API, but the files are smaller than a page and
 * mmap returns page-aligned addresses, so a data pointer's offset within its
 * page is its file offset; the bytes there must match the file.
 */
static void test_fuzz(dsc_t *t) {
    static const float v[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
    const dsc_st_write_entry w[] = {
        {"model.embed.weight", DSC_BF16, 2, {3, 2}, v},
        {"model.layers.0.scale_inv", DSC_F32, 1, {3}, v},
        {"model.layers.0.w", DSC_F8_E4M3, 2, {2, 5}, v},
        {"h", DSC_F16, 0, {0}, v},
    };
    char p0[600], p1[600], path[600];
    tmp_path(t, p0, sizeof p0, "fuzz_base0.safetensors");
    tmp_path(t, p1, sizeof p1, "fuzz_base1.safetensors");
    tmp_path(t, path, sizeof path, "fuzz.safetensors");
    dsc_err e = {0};
    T_CHECK(t, dsc_st_write(p0, w, 4, &e) == DSC_OK, "%s", e.msg);
    const char *h1 = "{\"__metadata__\":{\"format\":\"pt\"},"
                     "\"a\":{\"dtype\":\"F32\",\"shape\":[2,1],\"data_offsets\":[0,8]},"
                     "\"b\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[8,14]},"
                     "\"c\":{\"dtype\":\"F8_E4M3\",\"shape\":[0,7],\"data_offsets\":[14,14]}}";
    T_CHECK(t, write_st_raw(p1, strlen(h1), h1, 16) == 0, "write");
    size_t len[2];
    unsigned char *base[2] = {t_read_file(p0, &len[0]), t_read_file(p1, &len[1])};
    long page = sysconf(_SC_PAGESIZE);
    T_CHECK(t, base[0] && base[1] && len[0] < (size_t)page && len[1] < (size_t)page,
            "fuzz bases");
    if (!base[0] || !base[1]) goto done;

    static const char tokens[] = "{}[]\",:0123456789-.eE \\u";
    unsigned char buf[4096];
    /* One rng call per statement, so every compiler makes the same files. */
    t_rng r = {20240601};
    int n_ok = 0, n_fail = 0;
    for (int it = 0; it < 2000; it++) {
        int b = it & 1;
        size_t n = len[b];
        memcpy(buf, base[b], n);
        uint64_t hl = 0;
        for (int i = 7; i >= 0; i--) hl = hl << 8 | buf[i];
        size_t hend = 8 + (size_t)hl;
        int kind = (int)(t_rng_u64(&r) % 5);
        if (kind == 0 || kind == 4) { /* flip bytes in the prefix or header */
            int k = 1 + (int)(t_rng_u64(&r) % 4);
            while (k--) {
                size_t at = t_rng_u64(&r) % hend;
                buf[at] ^= (unsigned char)(1 + t_rng_u64(&r) % 255);
            }
        }
        if (kind == 1) { /* JSON-significant characters in the header */
            int k = 1 + (int)(t_rng_u64(&r) % 3);
            while (k--) {
                size_t at = 8 + t_rng_u64(&r) % hl;
                buf[at] = (unsigned char)tokens[t_rng_u64(&r) % (sizeof tokens - 1)];
            }
        }
        if (kind == 2) { /* another length prefix */
            uint64_t nl = hl + (t_rng_u64(&r) % 33) - 16; /* near the true length */
            if (t_rng_u64(&r) & 1) { /* any size */
                unsigned sh = (unsigned)(t_rng_u64(&r) % 64);
                nl = t_rng_u64(&r) >> sh;
            }
            for (int i = 0; i < 8; i++) buf[i] = (unsigned char)(nl >> (8 * i));
        }
        if (kind == 3 || kind == 4) n = t_rng_u64(&r) % (n + 1); /* truncate */

        if (t_write_file(path, buf, n) != 0) {
            T_CHECK(t, 0, "write %s", path);
            break;
        }
        dsc_st_set *s = NULL;
        e.msg[0] = 0;
        dsc_status st = dsc_st_set_open_file(path, &s, &e);
        if (st != DSC_OK) {
            n_fail++;
            T_CHECK(t, s == NULL && e.code == st && strstr(e.msg, path), "it %d: %s", it, e.msg);
            T_CHECK(t, st == DSC_ERR_FORMAT || st == DSC_ERR_UNSUPPORTED, "it %d: %s: %s", it,
                    dsc_status_str(st), e.msg);
            continue;
        }
        n_ok++;
        for (int64_t i = 0; i < dsc_st_count(s); i++) {
            const dsc_st_tensor *x = dsc_st_at(s, i);
            size_t off = (size_t)((uintptr_t)x->data % (uintptr_t)page);
            uint64_t dl = 0;
            for (int j = 7; j >= 0; j--) dl = dl << 8 | buf[j];
            int ok = x->ndim >= 0 && x->ndim <= DSC_ST_MAX_DIMS && x->numel >= 0 &&
                     x->nbytes == (size_t)x->numel * dsc_dtype_size(x->dtype) &&
                     off >= 8 + dl && off <= n && x->nbytes <= n - off &&
                     memcmp(x->data, buf + off, x->nbytes) == 0 &&
                     dsc_st_find(s, x->name) == x;
            T_CHECK(t, ok, "it %d: tensor '%s' at file offset %zu, %zu bytes, file %zu", it,
                    x->name, off, x->nbytes, n);
        }
        dsc_st_set_close(s);
    }
    /* Both outcomes must occur, or the mutations are not exercising much. */
    T_CHECK(t, n_ok > 20 && n_fail > 20, "fuzz outcomes: %d ok, %d failed", n_ok, n_fail);
done:
    free(base[0]);
    free(base[1]);
}

const dsc_test_case dsc_tests_safetensors[] = {
    {"round_trip", test_round_trip},
    {"many_tensors", test_many_tensors},
    {"sharded", test_sharded},
    {"sharded_bad", test_sharded_bad},
    {"bad_headers", test_bad_headers},
    {"bad_lengths", test_bad_lengths},
    {"write_bad", test_write_bad},
    {"fuzz", test_fuzz},
    {NULL, NULL},
};
