/*
 * safetensors.h - memory-mapped, strictly validated safetensors files.
 *
 * A file is: 8-byte little-endian header length N, N bytes of JSON header
 * {"name": {"dtype": "BF16", "shape": [..], "data_offsets": [b, e]}, ...,
 *  "__metadata__": {str: str}}, then the data section. Offsets are relative to
 * the data section (byte 8 + N).
 *
 * Validation done at open (any failure -> DSC_ERR_FORMAT naming file and
 * tensor, nothing mapped is left behind): header length within the file and
 * <= 100 MB; JSON well-formed, UTF-8, no duplicate keys; every entry has a
 * known dtype, a shape of <= 8 non-negative ints, two offsets b <= e; element
 * count x dtype size == e - b computed without overflow; every range inside
 * the data section; no two ranges overlap. Unknown dtypes -> DSC_ERR_UNSUPPORTED
 * (e.g. "I64" is valid safetensors but not a weight dtype we bind).
 *
 * A dsc_st_set is a whole checkpoint: one file (model.safetensors) or the
 * shards named by model.safetensors.index.json. Every tensor in the index must
 * be found in the shard the index names, and every tensor of a shard must be in
 * the index (otherwise DSC_ERR_FORMAT / DSC_ERR_MISSING naming it).
 *
 * Ownership: the set owns the mappings; tensor data pointers stay valid until
 * dsc_st_set_close. Names are owned by the set.
 */
#ifndef DSC_SAFETENSORS_H
#define DSC_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "dsc.h"

#define DSC_ST_MAX_DIMS 8

typedef struct {
    const char *name;
    dsc_dtype dtype;
    int ndim;
    int64_t shape[DSC_ST_MAX_DIMS];
    int64_t numel;
    const void *data;   /* inside the read-only mapping */
    size_t nbytes;
    int file_index;     /* which file of the set */
    int used;           /* set by dsc_st_find; lets the caller report extras */
} dsc_st_tensor;

typedef struct dsc_st_set dsc_st_set;

/* Open the checkpoint in dir (see above). */
dsc_status dsc_st_set_open(const char *dir, dsc_st_set **out, dsc_err *err);
/* Open exactly one file as a set of one. */
dsc_status dsc_st_set_open_file(const char *path, dsc_st_set **out, dsc_err *err);
void dsc_st_set_close(dsc_st_set *s);

int64_t dsc_st_count(const dsc_st_set *s);
dsc_st_tensor *dsc_st_at(dsc_st_set *s, int64_t i);
/* Lookup by exact name; NULL when absent. Marks the tensor used. */
dsc_st_tensor *dsc_st_find(dsc_st_set *s, const char *name);
/* Total bytes of all files in the set. */
int64_t dsc_st_file_bytes(const dsc_st_set *s);
/* Number of files in the set. */
int dsc_st_file_count(const dsc_st_set *s);
/* The read-only mapping of file i (whole file); NULL/0 when out of range. */
void dsc_st_file_map(const dsc_st_set *s, int i, const void **base, size_t *len);
/* Path of file i of the set (for messages). */
const char *dsc_st_file_path(const dsc_st_set *s, int i);

/*
 * Writer: build a safetensors file in one call (used by tests, benchmarks and,
 * later, training checkpoints). Header keys keep the given order; the data
 * section starts 8-byte aligned and holds the tensors contiguously, 4-byte
 * dtypes first, then 2-byte, then 1-byte (each class in the given order), so
 * every tensor is aligned to its element size. The file appears at path only
 * when complete. Returns DSC_ERR_ARG on bad entries, DSC_ERR_IO on write failure.
 */
typedef struct {
    const char *name;
    dsc_dtype dtype;
    int ndim;
    int64_t shape[DSC_ST_MAX_DIMS];
    const void *data;   /* numel * dtype size bytes */
} dsc_st_write_entry;

dsc_status dsc_st_write(const char *path, const dsc_st_write_entry *entries, int64_t n,
                        dsc_err *err);

#endif
