/*
 * data.h - text file -> token ids -> packed fixed-length training sequences.
 *
 * Pipeline (dsc_data_load):
 *  1. The file is read in chunks of lines; a document ends at a blank line
 *     (a line empty or holding only spaces, tabs, '\r') or at end of file.
 *     Only the current document's text is held; documents are tokenized one
 *     at a time, so memory is the largest document's text + all the ids
 *     (4 bytes per token). A file without blank lines is one document and is
 *     then held whole (tokenizing across an arbitrary cut would change ids).
 *  2. Document k (0-based, counting non-empty documents) goes to validation
 *     when hash(seed, k) / 2^64 < val_fraction, else to training: the split
 *     depends only on the index and the seed, not on contents or order of
 *     processing.
 *  3. Each split is one stream: for each document [BOS] ids [EOS] (BOS when
 *     the tokenizer adds BOS by default, EOS when it has one). The stream is
 *     cut into consecutive, non-overlapping sequences of seq_len+1 ids
 *     (inputs ids[0..seq_len-1], targets ids[1..seq_len]); the last one is
 *     padded with pad_id (by default -1: padding, which the trainer feeds as
 *     id 0 and does not count as a target) and reports fewer valid ids.
 *     Every stream id is in
 *     exactly one sequence, once.
 *
 * Batches (dsc_data_iter): sequences of one split in an order shuffled per
 * epoch by a seeded Fisher-Yates (epoch e uses hash(seed, e)); a batch that
 * runs past the end of an epoch continues into the next. Same seed, same
 * batches. The iterator allocates its permutation once; _next allocates
 * nothing.
 */
#ifndef DSC_TRAIN_DATA_H
#define DSC_TRAIN_DATA_H

#include <stdint.h>

#include "dsc.h"

typedef enum { DSC_SPLIT_TRAIN = 0, DSC_SPLIT_VAL = 1 } dsc_split;

typedef struct {
    int64_t seq_len;        /* tokens of input per sequence (sequence = seq_len+1 ids) */
    double val_fraction;    /* share of documents held out, in [0, 1]; e.g. 0.01        */
    uint64_t seed;          /* split hash seed                                          */
    int32_t pad_id;         /* fills the tail of the last sequence; < 0: -1 (padding)   */
} dsc_data_params;

dsc_data_params dsc_data_default_params(void);

typedef struct dsc_dataset dsc_dataset_t;

/*
 * Read and tokenize the UTF-8 text file at path. The tokenizer is only used
 * during the call. Errors: DSC_ERR_IO (open/read), DSC_ERR_ARG (invalid
 * UTF-8, naming the document and byte offset in the file; seq_len < 1;
 * val_fraction outside [0, 1]), DSC_ERR_OOM.
 */
dsc_status dsc_data_load(const char *path, const dsc_tokenizer_t *tok, const dsc_data_params *p,
                         dsc_dataset_t **out, dsc_err *err);
void dsc_data_free(dsc_dataset_t *d);

int64_t dsc_data_seq_len(const dsc_dataset_t *d);
/* Documents, stream ids and packed sequences of a split. */
int64_t dsc_data_n_docs(const dsc_dataset_t *d, dsc_split s);
int64_t dsc_data_n_tokens(const dsc_dataset_t *d, dsc_split s);
int64_t dsc_data_n_seqs(const dsc_dataset_t *d, dsc_split s);
/* The whole stream of a split (n_tokens ids; borrowed), and where document j
   of the split starts in it and which file document index it was. */
const int32_t *dsc_data_stream(const dsc_dataset_t *d, dsc_split s);
int64_t dsc_data_doc_start(const dsc_dataset_t *d, dsc_split s, int64_t j);
int64_t dsc_data_doc_index(const dsc_dataset_t *d, dsc_split s, int64_t j);

/* Copy sequence i of a split into ids[seq_len+1]; returns how many are real
   stream ids (the rest are pad_id), or -1 when i is out of range. */
int64_t dsc_data_seq(const dsc_dataset_t *d, dsc_split s, int64_t i, int32_t *ids);

typedef struct dsc_data_iter dsc_data_iter_t;

/* Iterator over a split in batches of `batch` sequences; shuffle 0 keeps
   stream order (e.g. for validation). DSC_ERR_ARG when the split has no
   sequences or batch < 1. The dataset must outlive the iterator. */
dsc_status dsc_data_iter_new(const dsc_dataset_t *d, dsc_split s, int64_t batch, int shuffle,
                             uint64_t seed, dsc_data_iter_t **out, dsc_err *err);
void dsc_data_iter_free(dsc_data_iter_t *it);
/* Fill ids[batch][seq_len+1] and n_valid[batch] (may be NULL) with the next
   batch; returns the epoch of the batch's first sequence. */
int64_t dsc_data_iter_next(dsc_data_iter_t *it, int32_t *ids, int64_t *n_valid);
/* Position the iterator as if `batches` batches had been taken (resume). */
void dsc_data_iter_seek(dsc_data_iter_t *it, int64_t batches);

#endif
