/*
 * tok.c - `dsc tokenize` (UTF-8 text on stdin -> ids on one line) and
 * `dsc detokenize` (ids -> text, special tokens included, no newline added).
 * Neither needs weights: the directory only has to hold tokenizer.json and
 * tokenizer_config.json.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static dsc_tokenizer_t *load(const cli_opts *o) {
    dsc_tokenizer_t *t = NULL;
    dsc_err e = {0};
    if (dsc_tokenizer_load(o->model_dir, &t, &e) != DSC_OK) cli_die(&e);
    return t;
}

int cmd_tokenize(const cli_opts *o) {
    dsc_tokenizer_t *t = load(o);
    size_t len = 0;
    char *text = cli_read_all(stdin, "stdin", &len);
    dsc_err e = {0};
    int64_t need = 0, n = 0;
    int add_bos = o->no_bos ? 0 : -1;
    if (dsc_tokenize(t, text, len, add_bos, NULL, 0, &need, &e) != DSC_OK) cli_die(&e);
    int32_t *ids = malloc((size_t)(need > 0 ? need : 1) * sizeof *ids);
    if (!ids) {
        fprintf(stderr, "dsc: out of memory\n");
        exit(1);
    }
    if (dsc_tokenize(t, text, len, add_bos, ids, need, &n, &e) != DSC_OK) cli_die(&e);
    for (int64_t i = 0; i < n; i++) printf("%s%d", i ? " " : "", ids[i]);
    printf("\n");
    free(ids);
    free(text);
    dsc_tokenizer_free(t);
    return 0;
}

int cmd_detokenize(const cli_opts *o) {
    if (!o->ids) cli_die_usage("detokenize needs --ids", NULL);
    dsc_tokenizer_t *t = load(o);
    int64_t n = 0;
    int32_t *ids = cli_parse_ids(o->ids, &n);
    dsc_detok_state st = {0};
    size_t cap = cli_piece_cap(t);
    char *buf = malloc(cap);
    if (!buf) {
        fprintf(stderr, "dsc: out of memory\n");
        return 1;
    }
    for (int64_t i = 0; i < n; i++) {
        int64_t k = dsc_detokenize_piece(t, ids[i], 0, &st, buf, (int64_t)cap);
        if (k < 0) {
            fflush(stdout);
            fprintf(stderr, "dsc: error: token id %d is out of range [0, %lld)\n", ids[i],
                    (long long)dsc_tokenizer_vocab(t));
            free(buf);
            free(ids);
            dsc_tokenizer_free(t);
            return 1;
        }
        fwrite(buf, 1, (size_t)k, stdout);
    }
    int64_t k = dsc_detok_flush(&st, buf, (int64_t)cap);
    if (k > 0) fwrite(buf, 1, (size_t)k, stdout);
    free(buf);
    free(ids);
    dsc_tokenizer_free(t);
    return 0;
}
