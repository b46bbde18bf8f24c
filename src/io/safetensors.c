/*
 * safetensors.c - open, validate and memory-map safetensors checkpoints, and
 * write small safetensors files.
 *
 * Design. Every file of a set is mmapped read-only once; its JSON header is
 * parsed with jansson straight out of the mapping, validated entry by entry
 * and then dropped, so only the mappings and three arrays outlive the open:
 * one dsc_st_tensor per tensor, one pool holding every name, and an
 * open-addressing hash table (tensor index + 1, 0 = empty) for dsc_st_find.
 * Their sizes are known before any tensor is added: from the one header for a
 * single file, from the index's weight_map for a sharded set (every tensor of
 * a shard must be in the index under that shard, so the index bounds both the
 * count and the name bytes).
 *
 * What this is not: a general safetensors reader. Only the four weight dtypes
 * are bound, and any validation failure fails the whole open; nothing is
 * skipped or repaired.
 *
 * Untrusted input: every number from a header is range-checked before it is
 * used in an address, and all size arithmetic goes through dsc_mul_ok /
 * dsc_add_ok. A file that shrinks while mapped can still raise SIGBUS on
 * access; that is outside what validation at open can prevent.
 */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/util.h"

/* The reference implementation's limit; it keeps a hostile length prefix
   from making us parse (or allocate for) an absurd header. */
#define ST_MAX_HEADER 100000000u

#define ST_INDEX_NAME "model.safetensors.index.json"
#define ST_SINGLE_NAME "model.safetensors"

typedef struct {
    const char *path;          /* in dsc_st_set.paths */
    const unsigned char *map;  /* whole file, PROT_READ; NULL until mapped */
    size_t size;
} st_file;

struct dsc_st_set {
    st_file *files;
    int n_files;
    char *paths;               /* pool of every file path */
    dsc_st_tensor *tensors;    /* [cap], the first n in use */
    int64_t n, cap;
    char *names;               /* pool of every tensor name */
    size_t names_len, names_cap;
    int64_t *slots;            /* [n_slots] hash table: tensor index + 1 */
    size_t n_slots;
    int64_t file_bytes;
};

static const struct {
    const char *name;
    dsc_dtype dtype;
} st_dtypes[] = {
    {"F32", DSC_F32},
    {"BF16", DSC_BF16},
    {"F16", DSC_F16},
    {"F8_E4M3", DSC_F8_E4M3},
};

/* ---- small helpers ---- */

/* Length of the longest valid UTF-8 prefix of p[0..n) (RFC 3629: no
   overlong forms, no surrogates, nothing above U+10FFFF). */
static size_t utf8_valid_len(const unsigned char *p, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = p[i];
        size_t len;
        uint32_t cp, min;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            len = 2, cp = c & 0x1F, min = 0x80;
        } else if ((c & 0xF0) == 0xE0) {
            len = 3, cp = c & 0x0F, min = 0x800;
        } else if ((c & 0xF8) == 0xF0) {
            len = 4, cp = c & 0x07, min = 0x10000;
        } else {
            return i;
        }
        if (n - i < len) return i;
        for (size_t k = 1; k < len; k++) {
            if ((p[i + k] & 0xC0) != 0x80) return i;
            cp = cp << 6 | (p[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
        i += len;
    }
    return n;
}

/* Copy p[0..n) into out as printable ASCII (\xNN for the rest), truncated to
   fit; for showing bytes that may be neither UTF-8 nor printable. */
static void quote_bytes(char *out, size_t cap, const unsigned char *p, size_t n) {
    size_t o = 0;
    for (size_t i = 0; i < n && o + 5 < cap; i++) {
        if (p[i] >= 0x20 && p[i] < 0x7F && p[i] != '\\')
            out[o++] = (char)p[i];
        else
            o += (size_t)snprintf(out + o, cap - o, "\\x%02X", p[i]);
    }
    out[o] = '\0';
}

static void shape_str(char *out, size_t cap, const int64_t *shape, int ndim) {
    size_t o = (size_t)snprintf(out, cap, "[");
    for (int d = 0; d < ndim && o < cap; d++)
        o += (size_t)snprintf(out + o, cap - o, "%s%lld", d ? ", " : "", (long long)shape[d]);
    if (o < cap) snprintf(out + o, cap - o, "]");
}

/* malloc'd "dir/name" (no doubled slash when dir ends in one). */
static char *join_path(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    int slash = a > 0 && dir[a - 1] != '/';
    char *p = malloc(a + (size_t)slash + b + 1);
    if (!p) return NULL;
    memcpy(p, dir, a);
    if (slash) p[a] = '/';
    memcpy(p + a + slash, name, b + 1);
    return p;
}

/* A jansson integer in [0, INT64_MAX], or -1. */
static int64_t json_nonneg(const json_t *v) {
    if (!json_is_integer(v)) return -1;
    json_int_t x = json_integer_value(v);
    return x < 0 ? -1 : (int64_t)x;
}

/* FNV-1a: fast, and good enough for dotted tensor names at load <= 1/2. */
static uint64_t st_hash(const char *s) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h;
}

/* Index of the tensor called name, or -1. Does not mark it used. */
static int64_t st_lookup(const dsc_st_set *s, const char *name) {
    if (!s->slots) return -1;
    size_t mask = s->n_slots - 1;
    for (size_t h = (size_t)st_hash(name) & mask;; h = (h + 1) & mask) {
        int64_t v = s->slots[h];
        if (v == 0) return -1;
        if (!strcmp(s->tensors[v - 1].name, name)) return v - 1;
    }
}

/* ---- one file: map, header, entries ---- */

/* An I/O failure on f (e: errno, or 0); for a shard the message also names
   the index that lists it. */
static dsc_status io_error(dsc_err *err, const st_file *f, const char *index_path,
                           const char *what, int e) {
    return dsc_err_set(err, DSC_ERR_IO, "%s: %s%s%s%s%s%s", f->path, what, e ? ": " : "",
                       e ? strerror(e) : "", index_path ? " (a shard listed in " : "",
                       index_path ? index_path : "", index_path ? ")" : "");
}

/* Map f->path whole. index_path is the index naming it, or NULL. */
static dsc_status map_file(st_file *f, const char *index_path, dsc_err *err) {
    int fd = open(f->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return io_error(err, f, index_path, "cannot open", errno);
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return io_error(err, f, index_path, "cannot stat", e);
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return io_error(err, f, index_path, "not a regular file", 0);
    }
    if (sb.st_size < 8) {
        close(fd);
        return dsc_err_set(err, DSC_ERR_FORMAT,
                           "%s: file is %lld bytes, too short for the 8-byte header length "
                           "(empty or truncated)",
                           f->path, (long long)sb.st_size);
    }
    size_t size = (size_t)sb.st_size;
    void *m = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (m == MAP_FAILED) return io_error(err, f, index_path, "cannot mmap", e);
    f->map = m;
    f->size = size;
    return DSC_OK;
}

/* Parse the header of a mapped file into *root (a JSON object, caller
   decrefs); *data_off is where the data section starts (8 + N). */
static dsc_status parse_header(const st_file *f, json_t **root, size_t *data_off,
                               dsc_err *err) {
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = n << 8 | f->map[i];
    if (n > ST_MAX_HEADER)
        return dsc_err_set(err, DSC_ERR_FORMAT,
                           "%s: header length %llu exceeds the limit of %u bytes", f->path,
                           (unsigned long long)n, ST_MAX_HEADER);
    if (n > f->size - 8)
        return dsc_err_set(err, DSC_ERR_FORMAT,
                           "%s: header length %llu runs past the end of the file "
                           "(8 + %llu > %zu bytes)",
                           f->path, (unsigned long long)n, (unsigned long long)n, f->size);
    const unsigned char *hdr = f->map + 8;
    /* jansson would reject bad UTF-8 too, but only with a byte position;
       showing the string it sits in names the tensor. */
    size_t bad = utf8_valid_len(hdr, (size_t)n);
    if (bad < n) {
        size_t b = bad, e = bad + 1;
        while (b > 0 && hdr[b - 1] != '"' && bad - b < 64) b--;
        while (e < n && hdr[e] != '"' && e - bad < 64) e++;
        char q[300];
        quote_bytes(q, sizeof q, hdr + b, e - b);
        return dsc_err_set(err, DSC_ERR_FORMAT,
                           "%s: header is not valid UTF-8 at byte %zu, in \"%s\" "
                           "(tensor names must be UTF-8)",
                           f->path, bad, q);
    }
    json_error_t je;
    json_t *r = json_loadb((const char *)hdr, (size_t)n, JSON_REJECT_DUPLICATES, &je);
    if (!r)
        return dsc_err_set(err, DSC_ERR_FORMAT, "%s: header is not valid JSON (byte %d): %s",
                           f->path, je.position, je.text);
    if (!json_is_object(r)) {
        json_decref(r);
        return dsc_err_set(err, DSC_ERR_FORMAT, "%s: header is JSON but not an object",
                           f->path);
    }
    *root = r;
    *data_off = 8 + (size_t)n;
    return DSC_OK;
}

static int looks_like_dtype(const char *s) {
    size_t n = strlen(s);
    if (n == 0 || n > 16 || !(s[0] >= 'A' && s[0] <= 'Z')) return 0;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
            return 0;
    return 1;
}

static dsc_status parse_dtype(const char *path, const char *name, const json_t *v,
                              dsc_dtype *out, dsc_err *err) {
    if (!json_is_string(v))
        return dsc_err_set(err, DSC_ERR_FORMAT, "%s: tensor '%s': dtype is not a string", path,
                           name);
    const char *s = json_string_value(v);
    for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++) {
        if (!strcmp(s, st_dtypes[i].name)) {
            *out = st_dtypes[i].dtype;
            return DSC_OK;
        }
    }
    /* Other safetensors dtypes (I64, F8_E5M2, BOOL, ...) are well-formed files
       we choose not to bind; anything else is a broken header. */
    if (looks_like_dtype(s))
        return dsc_err_set(err, DSC_ERR_UNSUPPORTED,
                           "%s: tensor '%s' has dtype %s; supported: F32, BF16, F16, F8_E4M3",
                           path, name, s);
    return dsc_err_set(err, DSC_ERR_FORMAT, "%s: tensor '%s': \"%s\" is not a dtype", path,
                       name, s);
}

static dsc_status check_metadata(const char *path, const json_t *v, dsc_err *err) {
    if (!json_is_object(v))
        return dsc_err_set(err, DSC_ERR_FORMAT, "%s: __metadata__ is not an object", path);
    const char *k;
    json_t *x;
    json_object_foreach((json_t *)v, k, x) {
        if (!json_is_string(x))
            return dsc_err_set(err, DSC_ERR_FORMAT,
                               "%s: __metadata__ value of '%s' is not a string", path, k);
    }
    return DSC_OK;
}

/* Validate one header entry and fill t (all but name and file_index). */
static dsc_status parse_entry(const st_file *f, size_t data_off, const char *name,
                              const json_t *v, dsc_st_tensor *t, dsc_err *err) {
    const char *path = f->path;
    if (!json_is_object(v))
        return dsc_err_set(err, DSC_ERR_FORMAT, "%s: tensor '%s': entry is not an object",
                           path, name);
    const json_t *dt = NULL, *shape = NULL, *offs = NULL;
    const char *k;
    json_t *x;
    json_object_foreach((json_t *)v, k, x) {
        if (!strcmp(k, "dtype"))
            dt = x;
        else if (!strcmp(k, "shape"))
            shape = x;
        else if (!strcmp(k, "data_offsets"))
            offs = x;
        else
            return dsc_err_set(err, DSC_ERR_FORMAT,
                               "%s: tensor '%s': unexpected key '%s' "
                               "(expected dtype, shape, data_offsets)",
                               path, name, k);
    }
    if (!dt || !shape || !offs)
        return dsc_err_set(err, DSC_ERR_FORMAT, "%s: tensor '%s': missing '%s'", path, name,
                           !dt ? "dtype" : !shape ? "shape" : "data_offsets");
    dsc_status st = parse_dtype(path, name, dt, &t->dtype, err);
    if (st != DSC_OK) return st;

    if (!json_is_array(shape))
        return dsc_err_set(err, DSC_ERR_FORMAT, "%s: tensor '%s': shape is not an array", path,
                           name);
    size_t nd = json_array_size(shape);
    if (nd > DSC_ST_MAX_DIMS)
        return dsc_err_set(err, DSC_ERR_FORMAT,
                           "%s: tensor '%s': shape has %zu dims, at most %d supported", path,
                           name, nd, DSC_ST_MAX_DIMS);
    t->ndim = (int)nd;
    size_t numel = 1;
    for (size_t d = 0; d < nd; d++) {
        int64_t dim = json_nonneg(json_array_get(shape, d));
        if (dim < 0)
            return dsc_err_set(err, DSC_ERR_FORMAT,
                               "%s: tensor '%s': shape[%zu] is not a non-negative integer",
                               path, name, d);
        t->shape[d] = dim;
        if (!dsc_mul_ok(numel, (size_t)dim, &numel) || numel > (size_t)INT64_MAX) {
            char sh[256];
            shape_str(sh, sizeof sh, t->shape, (int)d + 1);
            return dsc_err_set(err, DSC_ERR_FORMAT,
                               "%s: tensor '%s': element count of shape %s%s overflows", path,
                               name, sh, d + 1 < nd ? "..." : "");
        }
    }
    t->numel = (int64_t)numel;

    if (!json_is_array(offs) || json_array_size(offs) != 2)
        return dsc_err_set(err, DSC_ERR_FORMAT,
                           "%s: tensor '%s': data_offsets is not [begin, end]", path, name);
    int64_t b = json_nonneg(json_array_get(offs, 0));
    int64_t e = json_nonneg(json_array_get(offs, 1));
    if (b < 0 || e < 0)
        return dsc_err_set(err, DSC_ERR_FORMAT,
                           "%s: tensor '%s': data_offsets are not non-negative integers", path,
                           name);
    if (b > e)
        return dsc_err_set(err, DSC_ERR_FORMAT,
                           "%s: tensor '%s': data_offsets [%lld, %lld] are reversed", path,
                           name, (long long)b, (long long)e);
    char sh[256];
    shape_str(sh, sizeof sh, t->shape, t->ndim);
    size_t nbytes;
    if (!dsc_mul_ok(numel, dsc_dtype_size(t->dtype), &nbytes))
        return dsc_err_set(err, DSC_ERR_FORMAT, "%s: tensor '%s': byte size of %s %s overflows",
                           path, name, dsc_dtype_name(t->dtype), sh);
    if ((uint64_t)(e - b) != (uint64_t)nbytes)
        return dsc_err_set(err, DSC_ERR_FORMAT,
                           "%s: tensor '%s': %s %s needs %zu bytes but data_offsets "
                           "[%lld, %lld] hold %lld",
                           path, name, dsc_dtype_name(t->dtype), sh, nbytes, (long long)b,
                           (long long)e, (long long)(e - b));
    size_t data_size = f->size - data_off;
    if ((uint64_t)e > (uint64_t)data_size)
        return dsc_err_set(err, DSC_ERR_FORMAT,
                           "%s: tensor '%s': data_offsets [%lld, %lld] run past the end of "
                           "the data section (%zu bytes; truncated file?)",
                           path, name, (long long)b, (long long)e, data_size);
    t->data = f->map + data_off + (size_t)b;
    t->nbytes = nbytes;
    t->used = 0;
    return DSC_OK;
}

typedef struct {
    size_t b, e;
    int64_t i;
} st_range;

static int range_cmp(const void *pa, const void *pb) {
    const st_range *a = pa, *b = pb;
    if (a->b != b->b) return a->b < b->b ? -1 : 1;
    if (a->e != b->e) return a->e < b->e ? -1 : 1;
    return 0;
}

/* No two non-empty ranges of file fi (tensors first..n-1) may overlap. After
   sorting by begin, any overlap shows up between neighbours: if i < j overlap
   then begin[i+1] <= begin[j] < end[i], so i and i+1 overlap. Empty ranges
   hold no bytes and are skipped. */
static dsc_status check_overlaps(dsc_st_set *s, int fi, int64_t first, size_t data_off,
                                 dsc_err *err) {
    const st_file *f = &s->files[fi];
    size_t cnt = (size_t)(s->n - first);
    if (cnt < 2) return DSC_OK;
    st_range *r = malloc(cnt * sizeof *r);
    if (!r)
        return dsc_err_set(err, DSC_ERR_OOM, "%s: cannot allocate %zu ranges", f->path, cnt);
    size_t k = 0;
    for (int64_t i = first; i < s->n; i++) {
        const dsc_st_tensor *t = &s->tensors[i];
        if (t->nbytes == 0) continue;
        size_t b = (size_t)((const unsigned char *)t->data - (f->map + data_off));
        r[k++] = (st_range){b, b + t->nbytes, i};
    }
    qsort(r, k, sizeof *r, range_cmp);
    dsc_status st = DSC_OK;
    for (size_t j = 1; j < k && st == DSC_OK; j++) {
        if (r[j].b < r[j - 1].e)
            st = dsc_err_set(err, DSC_ERR_FORMAT,
                             "%s: tensors '%s' [%zu, %zu) and '%s' [%zu, %zu) overlap", f->path,
                             s->tensors[r[j - 1].i].name, r[j - 1].b, r[j - 1].e,
                             s->tensors[r[j].i].name, r[j].b, r[j].e);
    }
    free(r);
    return st;
}

/*
 * Validate and append every tensor of file fi (already mapped, header in
 * root). For a shard, weight_map is the index's map, shard this file's name in
 * it and index_path the index (for messages); each tensor must be mapped to
 * this shard. For a single file weight_map is NULL.
 */
static dsc_status add_file(dsc_st_set *s, int fi, const json_t *root, size_t data_off,
                           const json_t *weight_map, const char *shard,
                           const char *index_path, dsc_err *err) {
    const st_file *f = &s->files[fi];
    int64_t first = s->n;
    const char *name;
    json_t *v;
    json_object_foreach((json_t *)root, name, v) {
        dsc_status st;
        if (!strcmp(name, "__metadata__")) {
            st = check_metadata(f->path, v, err);
            if (st != DSC_OK) return st;
            continue;
        }
        if (weight_map) {
            const json_t *want = json_object_get(weight_map, name);
            if (!want)
                return dsc_err_set(err, DSC_ERR_FORMAT,
                                   "%s: tensor '%s' is not listed in the index %s", f->path,
                                   name, index_path);
            if (strcmp(json_string_value(want), shard) != 0)
                return dsc_err_set(err, DSC_ERR_FORMAT,
                                   "%s: tensor '%s' is in this shard but the index %s puts "
                                   "it in '%s' (a tensor may be in one shard only)",
                                   f->path, name, index_path, json_string_value(want));
        }
        /* The capacity came from this header or from the index; the check
           above makes every appended name a distinct index key. */
        size_t len = strlen(name) + 1;
        DSC_CHECK(s->n < s->cap && len <= s->names_cap - s->names_len);
        dsc_st_tensor *t = &s->tensors[s->n];
        st = parse_entry(f, data_off, name, v, t, err);
        if (st != DSC_OK) return st;
        memcpy(s->names + s->names_len, name, len);
        t->name = s->names + s->names_len;
        t->file_index = fi;
        s->names_len += len;
        s->n++;
    }
    return check_overlaps(s, fi, first, data_off, err);
}

/* ---- the set ---- */

static dsc_status alloc_tensors(dsc_st_set *s, int64_t cap, size_t names_cap, dsc_err *err) {
    s->tensors = calloc(cap > 0 ? (size_t)cap : 1, sizeof *s->tensors);
    s->names = malloc(names_cap > 0 ? names_cap : 1);
    if (!s->tensors || !s->names)
        return dsc_err_set(err, DSC_ERR_OOM, "cannot allocate the table of %lld tensors",
                           (long long)cap);
    s->cap = cap;
    s->names_cap = names_cap;
    return DSC_OK;
}

static dsc_status build_hash(dsc_st_set *s, dsc_err *err) {
    size_t want, cap = 16;
    if (!dsc_mul_ok((size_t)s->n, 2, &want))
        return dsc_err_set(err, DSC_ERR_OOM, "too many tensors (%lld)", (long long)s->n);
    while (cap < want) cap *= 2;
    s->slots = calloc(cap, sizeof *s->slots);
    if (!s->slots)
        return dsc_err_set(err, DSC_ERR_OOM, "cannot allocate a hash table of %zu slots", cap);
    s->n_slots = cap;
    for (int64_t i = 0; i < s->n; i++) {
        const dsc_st_tensor *t = &s->tensors[i];
        size_t h = (size_t)st_hash(t->name) & (cap - 1);
        for (; s->slots[h]; h = (h + 1) & (cap - 1)) {
            const dsc_st_tensor *o = &s->tensors[s->slots[h] - 1];
            if (!strcmp(o->name, t->name))
                return dsc_err_set(err, DSC_ERR_FORMAT, "tensor '%s' is in both %s and %s",
                                   t->name, s->files[o->file_index].path,
                                   s->files[t->file_index].path);
        }
        s->slots[h] = i + 1;
    }
    return DSC_OK;
}

void dsc_st_set_close(dsc_st_set *s) {
    if (!s) return;
    for (int i = 0; s->files && i < s->n_files; i++)
        if (s->files[i].map) munmap((void *)s->files[i].map, s->files[i].size);
    free(s->files);
    free(s->paths);
    free(s->tensors);
    free(s->names);
    free(s->slots);
    free(s);
}

/* Sum of the file sizes, overflow-checked. */
static dsc_status sum_file_bytes(dsc_st_set *s, dsc_err *err) {
    size_t total = 0;
    for (int i = 0; i < s->n_files; i++)
        if (!dsc_add_ok(total, s->files[i].size, &total) || total > (size_t)INT64_MAX)
            return dsc_err_set(err, DSC_ERR_FORMAT, "total size of the files overflows");
    s->file_bytes = (int64_t)total;
    return DSC_OK;
}

dsc_status dsc_st_set_open_file(const char *path, dsc_st_set **out, dsc_err *err) {
    if (!out) return dsc_err_set(err, DSC_ERR_ARG, "dsc_st_set_open_file: out is NULL");
    *out = NULL;
    if (!path) return dsc_err_set(err, DSC_ERR_ARG, "dsc_st_set_open_file: path is NULL");
    dsc_st_set *s = calloc(1, sizeof *s);
    size_t plen = strlen(path) + 1;
    if (s) s->files = calloc(1, sizeof *s->files);
    if (s && s->files) s->paths = malloc(plen);
    if (!s || !s->paths) {
        dsc_st_set_close(s);
        return dsc_err_set(err, DSC_ERR_OOM, "%s: cannot allocate the set", path);
    }
    memcpy(s->paths, path, plen);
    s->n_files = 1;
    s->files[0].path = s->paths;

    json_t *root = NULL;
    size_t data_off = 0;
    dsc_status st = map_file(&s->files[0], NULL, err);
    if (st == DSC_OK) st = parse_header(&s->files[0], &root, &data_off, err);
    if (st == DSC_OK) {
        int64_t cnt = 0;
        size_t names = 0;
        const char *k;
        json_t *v;
        json_object_foreach(root, k, v) {
            if (strcmp(k, "__metadata__") != 0) cnt++, names += strlen(k) + 1;
        }
        st = alloc_tensors(s, cnt, names, err);
    }
    if (st == DSC_OK) st = add_file(s, 0, root, data_off, NULL, NULL, NULL, err);
    json_decref(root);
    if (st == DSC_OK) st = build_hash(s, err);
    if (st == DSC_OK) st = sum_file_bytes(s, err);
    if (st != DSC_OK) {
        dsc_st_set_close(s);
        return st;
    }
    *out = s;
    return DSC_OK;
}

/* A shard must live next to the index: a plain, non-empty file name. */
static int shard_name_ok(const char *n) {
    return n[0] != '\0' && !strchr(n, '/') && !strstr(n, "..");
}

/*
 * Read the index, list its distinct shards (in order of first mention; the
 * "shards" object maps a name to its file index, so each is opened once) and
 * size the set from the weight_map.
 */
static dsc_status open_index(const char *dir, const char *index_path, dsc_st_set *s,
                             dsc_err *err) {
    char *text;
    size_t len;
    dsc_status st = dsc_read_file(index_path, &text, &len, err);
    if (st != DSC_OK) return st;
    json_error_t je;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    free(text);
    if (!root)
        return dsc_err_set(err, DSC_ERR_FORMAT, "%s: not valid JSON (line %d, column %d): %s",
                           index_path, je.line, je.column, je.text);
    json_t *shards = json_object();
    json_t *wm = json_object_get(root, "weight_map");
    const char *name;
    json_t *v;
    size_t names = 0, paths = 0;
    if (!shards) {
        st = dsc_err_set(err, DSC_ERR_OOM, "%s: cannot allocate", index_path);
    } else if (!json_is_object(root) || !json_is_object(wm) || json_object_size(wm) == 0) {
        st = dsc_err_set(err, DSC_ERR_FORMAT, "%s: no weight_map object with tensors",
                         index_path);
    } else {
        json_object_foreach(wm, name, v) {
            const char *sh = json_string_value(v);
            if (!sh) {
                st = dsc_err_set(err, DSC_ERR_FORMAT,
                                 "%s: weight_map value of tensor '%s' is not a string",
                                 index_path, name);
                break;
            }
            if (!shard_name_ok(sh)) {
                st = dsc_err_set(err, DSC_ERR_FORMAT,
                                 "%s: shard '%s' of tensor '%s' is not a plain file name "
                                 "(no '/' or '..' allowed)",
                                 index_path, sh, name);
                break;
            }
            names += strlen(name) + 1;
            if (!json_object_get(shards, sh)) {
                if (json_object_set_new(shards, sh, json_integer(s->n_files)) != 0) {
                    st = dsc_err_set(err, DSC_ERR_OOM, "%s: cannot allocate", index_path);
                    break;
                }
                s->n_files++;
                paths += strlen(dir) + strlen(sh) + 2;
            }
        }
    }
    if (st == DSC_OK) {
        s->files = calloc((size_t)s->n_files, sizeof *s->files);
        s->paths = malloc(paths);
        if (!s->files || !s->paths)
            st = dsc_err_set(err, DSC_ERR_OOM, "%s: cannot allocate %d shards", index_path,
                             s->n_files);
    }
    if (st == DSC_OK) st = alloc_tensors(s, (int64_t)json_object_size(wm), names, err);
    size_t po = 0;
    json_object_foreach(shards, name, v) {
        if (st != DSC_OK) break;
        int fi = (int)json_integer_value(v);
        char *p = join_path(dir, name);
        if (!p) {
            st = dsc_err_set(err, DSC_ERR_OOM, "%s: cannot allocate", index_path);
            break;
        }
        size_t pl = strlen(p) + 1;
        DSC_CHECK(pl <= paths - po);
        memcpy(s->paths + po, p, pl);
        free(p);
        st_file *f = &s->files[fi];
        f->path = s->paths + po;
        po += pl;
        json_t *hdr = NULL;
        size_t data_off = 0;
        st = map_file(f, index_path, err);
        if (st == DSC_OK) st = parse_header(f, &hdr, &data_off, err);
        if (st == DSC_OK) st = add_file(s, fi, hdr, data_off, wm, name, index_path, err);
        json_decref(hdr);
    }
    if (st == DSC_OK) st = build_hash(s, err);
    if (st == DSC_OK && s->n != s->cap) {
        /* Every tensor found was mapped to its shard, so the missing ones are
           exactly the index keys not in the table. */
        json_object_foreach(wm, name, v) {
            if (st_lookup(s, name) < 0) {
                st = dsc_err_set(err, DSC_ERR_MISSING,
                                 "%s: tensor '%s' is listed in %s but not present in shard %s",
                                 dir, name, index_path, json_string_value(v));
                break;
            }
        }
        DSC_CHECK(st != DSC_OK);
    }
    json_decref(shards);
    json_decref(root);
    return st;
}

dsc_status dsc_st_set_open(const char *dir, dsc_st_set **out, dsc_err *err) {
    if (!out) return dsc_err_set(err, DSC_ERR_ARG, "dsc_st_set_open: out is NULL");
    *out = NULL;
    if (!dir) return dsc_err_set(err, DSC_ERR_ARG, "dsc_st_set_open: dir is NULL");
    char *single = join_path(dir, ST_SINGLE_NAME);
    char *index = join_path(dir, ST_INDEX_NAME);
    dsc_status st = DSC_OK;
    struct stat sb;
    if (!single || !index) {
        st = dsc_err_set(err, DSC_ERR_OOM, "%s: cannot allocate", dir);
    } else if (stat(single, &sb) == 0 || errno != ENOENT) {
        /* Like Hugging Face, a single file wins over an index; a file that
           exists but cannot be read is reported by the open. */
        st = dsc_st_set_open_file(single, out, err);
    } else if (stat(index, &sb) == 0 || errno != ENOENT) {
        dsc_st_set *s = calloc(1, sizeof *s);
        if (!s) st = dsc_err_set(err, DSC_ERR_OOM, "%s: cannot allocate", dir);
        if (st == DSC_OK) st = open_index(dir, index, s, err);
        if (st == DSC_OK) st = sum_file_bytes(s, err);
        if (st == DSC_OK)
            *out = s;
        else
            dsc_st_set_close(s);
    } else {
        st = dsc_err_set(err, DSC_ERR_IO, "%s: no checkpoint: neither %s nor %s exists", dir,
                         ST_SINGLE_NAME, ST_INDEX_NAME);
    }
    free(single);
    free(index);
    return st;
}

int64_t dsc_st_count(const dsc_st_set *s) { return s ? s->n : 0; }

dsc_st_tensor *dsc_st_at(dsc_st_set *s, int64_t i) {
    return (s && i >= 0 && i < s->n) ? &s->tensors[i] : NULL;
}

dsc_st_tensor *dsc_st_find(dsc_st_set *s, const char *name) {
    if (!s || !name) return NULL;
    int64_t i = st_lookup(s, name);
    if (i < 0) return NULL;
    s->tensors[i].used = 1;
    return &s->tensors[i];
}

int64_t dsc_st_file_bytes(const dsc_st_set *s) { return s ? s->file_bytes : 0; }
int dsc_st_file_count(const dsc_st_set *s) { return s ? s->n_files : 0; }

const char *dsc_st_file_path(const dsc_st_set *s, int i) {
    return (s && i >= 0 && i < s->n_files) ? s->files[i].path : NULL;
}

/* ---- writer ---- */

/* Bytes of e's data into *out; 0 on a negative dim or overflow. */
static int entry_nbytes(const dsc_st_write_entry *e, size_t *out) {
    size_t numel = 1;
    for (int d = 0; d < e->ndim; d++)
        if (e->shape[d] < 0 || !dsc_mul_ok(numel, (size_t)e->shape[d], &numel)) return 0;
    return dsc_mul_ok(numel, dsc_dtype_size(e->dtype), out);
}

/*
 * Data layout: tensors are stored by descending element size (4-, then 2-,
 * then 1-byte dtypes), each class in the given order. With the data section
 * 8-byte aligned this aligns every tensor to its element size, which the
 * kernels need (the reference writer gets the same effect by sorting on
 * dtype). Header keys stay in the given order.
 */
static int size_class(dsc_dtype t) {
    size_t z = dsc_dtype_size(t);
    return z == 4 ? 0 : z == 2 ? 1 : 2;
}

/* Check entries and add them to the header object root, in order. */
static dsc_status build_header(const char *path, const dsc_st_write_entry *entries, int64_t n,
                               json_t *root, dsc_err *err) {
    /* class totals first (bad entries are reported by the main loop) */
    size_t tot[3] = {0, 0, 0};
    for (int64_t i = 0; i < n; i++) {
        size_t nb;
        const dsc_st_write_entry *e = &entries[i];
        if ((unsigned)e->dtype >= sizeof st_dtypes / sizeof st_dtypes[0] || e->ndim < 0 ||
            e->ndim > DSC_ST_MAX_DIMS || !entry_nbytes(e, &nb))
            continue;
        if (!dsc_add_ok(tot[size_class(e->dtype)], nb, &tot[size_class(e->dtype)]))
            return dsc_err_set(err, DSC_ERR_ARG, "%s: total size overflows", path);
    }
    size_t next[3] = {0, tot[0], 0};
    if (!dsc_add_ok(tot[0], tot[1], &next[2]))
        return dsc_err_set(err, DSC_ERR_ARG, "%s: total size overflows", path);
    for (int64_t i = 0; i < n; i++) {
        const dsc_st_write_entry *e = &entries[i];
        size_t len = e->name ? strlen(e->name) : 0;
        if (!e->name || utf8_valid_len((const unsigned char *)e->name, len) != len)
            return dsc_err_set(err, DSC_ERR_ARG, "%s: entry %lld: name is NULL or not UTF-8",
                               path, (long long)i);
        if (!strcmp(e->name, "__metadata__"))
            return dsc_err_set(err, DSC_ERR_ARG, "%s: tensor name '__metadata__' is reserved",
                               path);
        if (json_object_get(root, e->name))
            return dsc_err_set(err, DSC_ERR_ARG, "%s: tensor '%s' given twice", path, e->name);
        if ((unsigned)e->dtype >= sizeof st_dtypes / sizeof st_dtypes[0] || e->ndim < 0 ||
            e->ndim > DSC_ST_MAX_DIMS)
            return dsc_err_set(err, DSC_ERR_ARG, "%s: tensor '%s': bad dtype %d or ndim %d",
                               path, e->name, (int)e->dtype, e->ndim);
        size_t nbytes, end, off = 0;
        if (entry_nbytes(e, &nbytes)) off = next[size_class(e->dtype)];
        if (!entry_nbytes(e, &nbytes) || !dsc_add_ok(off, nbytes, &end) ||
            end > (size_t)INT64_MAX)
            return dsc_err_set(err, DSC_ERR_ARG,
                               "%s: tensor '%s': negative dim, or the size overflows", path,
                               e->name);
        if (nbytes > 0 && !e->data)
            return dsc_err_set(err, DSC_ERR_ARG, "%s: tensor '%s': data is NULL", path,
                               e->name);
        json_t *shape = json_array();
        for (int d = 0; shape && d < e->ndim; d++) {
            if (json_array_append_new(shape, json_integer(e->shape[d])) != 0) {
                json_decref(shape);
                shape = NULL;
            }
        }
        /* Key order dtype, shape, data_offsets, as the reference writes it;
           jansson keeps insertion order (since 2.8). "o" steals shape. */
        json_t *t = shape ? json_pack("{s:s, s:o, s:[I, I]}", "dtype", dsc_dtype_name(e->dtype),
                                      "shape", shape, "data_offsets", (json_int_t)off,
                                      (json_int_t)end)
                          : NULL;
        if (!t || json_object_set_new(root, e->name, t) != 0)
            return dsc_err_set(err, DSC_ERR_OOM, "%s: cannot allocate the header", path);
        next[size_class(e->dtype)] = end;
    }
    return DSC_OK;
}

/* Write the whole file to f; 0 on any short write. */
static int write_all(FILE *f, const char *hdr, size_t hlen, size_t padded,
                     const dsc_st_write_entry *entries, int64_t n) {
    unsigned char prefix[8];
    for (int i = 0; i < 8; i++) prefix[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    static const char spaces[8] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};
    if (fwrite(prefix, 1, 8, f) != 8 || fwrite(hdr, 1, hlen, f) != hlen ||
        fwrite(spaces, 1, padded - hlen, f) != padded - hlen)
        return 0;
    for (int cls = 0; cls < 3; cls++)
        for (int64_t i = 0; i < n; i++) {
            size_t nbytes = 0;
            if (size_class(entries[i].dtype) != cls) continue;
            DSC_CHECK(entry_nbytes(&entries[i], &nbytes)); /* build_header checked it */
            if (nbytes > 0 && fwrite(entries[i].data, 1, nbytes, f) != nbytes) return 0;
        }
    return 1;
}

/*
 * The file is written to "<path>.partial" and renamed over path only once
 * every byte reached the file system, so a failed write neither leaves a
 * truncated file at path nor destroys an older one there.
 */
dsc_status dsc_st_write(const char *path, const dsc_st_write_entry *entries, int64_t n,
                        dsc_err *err) {
    if (!path || n < 0 || (n > 0 && !entries))
        return dsc_err_set(err, DSC_ERR_ARG, "dsc_st_write: bad arguments");
    json_t *root = json_object();
    if (!root) return dsc_err_set(err, DSC_ERR_OOM, "%s: cannot allocate the header", path);
    dsc_status st = build_header(path, entries, n, root, err);
    char *hdr = st == DSC_OK ? json_dumps(root, JSON_COMPACT) : NULL;
    json_decref(root);
    if (st != DSC_OK) return st;
    if (!hdr) return dsc_err_set(err, DSC_ERR_OOM, "%s: cannot serialize the header", path);

    /* Pad with spaces to a multiple of 8 so the data section starts 8-byte
       aligned, as the reference writer does. */
    size_t hlen = strlen(hdr), padded = (hlen + 7) & ~(size_t)7;
    char *tmp = malloc(strlen(path) + sizeof ".partial");
    if (padded > ST_MAX_HEADER || !tmp) {
        st = !tmp ? dsc_err_set(err, DSC_ERR_OOM, "%s: cannot allocate", path)
                  : dsc_err_set(err, DSC_ERR_ARG, "%s: header of %zu bytes exceeds %u", path,
                                padded, ST_MAX_HEADER);
        free(hdr);
        free(tmp);
        return st;
    }
    strcpy(tmp, path);
    strcat(tmp, ".partial");

    FILE *f = NULL;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    int e = errno;
    if (fd >= 0 && !(f = fdopen(fd, "wb"))) {
        e = errno;
        close(fd);
        unlink(tmp);
    }
    if (!f) {
        st = dsc_err_set(err, DSC_ERR_IO, "%s: cannot create: %s", tmp, strerror(e));
    } else {
        int ok = write_all(f, hdr, hlen, padded, entries, n);
        e = errno;
        if (fclose(f) != 0 && ok) ok = 0, e = errno;
        if (ok && rename(tmp, path) != 0) ok = 0, e = errno;
        if (!ok) {
            unlink(tmp);
            st = dsc_err_set(err, DSC_ERR_IO, "%s: write failed: %s", path, strerror(e));
        }
    }
    free(hdr);
    free(tmp);
    return st;
}

void dsc_st_file_map(const dsc_st_set *s, int i, const void **base, size_t *len) {
    *base = NULL;
    *len = 0;
    if (!s || i < 0 || i >= s->n_files) return;
    *base = s->files[i].map;
    *len = s->files[i].size;
}
