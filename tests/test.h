/*
 * test.h - the tiny test harness shared by every test file.
 *
 * A suite is a NULL-terminated array of dsc_test_case; tests/runner.c lists
 * the suites. A case receives a dsc_t and records failures with T_CHECK /
 * t_close; it passes when it recorded none. Tests run from the repository root
 * (fixtures are read from tests/fixtures/), use fixed seeds, and state why
 * each tolerance has its value next to the comparison.
 */
#ifndef DSC_TEST_H
#define DSC_TEST_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>

#include "dsc.h"

typedef struct {
    const char *name;     /* current case */
    int failures;         /* failures recorded in the current case */
    const char *dsc_bin;  /* path of the dsc CLI, for CLI tests (may be NULL) */
    const char *tmpdir;   /* a private scratch directory for this run */
} dsc_t;

typedef struct {
    const char *name;
    void (*fn)(dsc_t *t);
} dsc_test_case;

void t_fail(dsc_t *t, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define T_CHECK(t, cond, ...)                                                  \
    do {                                                                       \
        if (!(cond)) t_fail((t), __FILE__, __LINE__, __VA_ARGS__);             \
    } while (0)

/* Compare n values: fails (once, reporting the worst index) when any
   |got - want| > atol + rtol*|want|, or when either side is NaN. Returns the
   max abs difference. */
double t_close_f32(dsc_t *t, const char *what, const float *got, const float *want,
                   int64_t n, double atol, double rtol);
double t_close_f64(dsc_t *t, const char *what, const float *got, const double *want,
                   int64_t n, double atol, double rtol);

/* Deterministic generator for test data (splitmix64). */
typedef struct { uint64_t s; } t_rng;
uint64_t t_rng_u64(t_rng *r);
float t_rng_uniform(t_rng *r);          /* [0, 1) */
float t_rng_normal(t_rng *r);           /* N(0, 1) */

/* A case's allocations, freed together by t_pool_free. An allocation
   failure aborts: that is a harness bug, not a finding. */
typedef struct {
    void *p[256];
    int n;
} t_pool;
void *t_palloc(t_pool *pl, int64_t bytes);   /* zeroed */
void t_pool_free(t_pool *pl);
double *t_dalloc(t_pool *pl, int64_t n);
float *t_falloc(t_pool *pl, int64_t n);
/* n normal values * scale, rounded to float so that an fp32 and an fp64
   instance of an op see the same inputs. */
double *t_rnd(t_pool *pl, t_rng *r, int64_t n, double scale);
/* A float copy of n doubles (NULL for NULL). */
float *t_to_f32(t_pool *pl, const double *x, int64_t n);

/* Run `dsc ARGS` (t->dsc_bin) with stdout+stderr into tmpdir/NAME; returns
   the exit status (-1 when it did not exit normally) and, when out is not
   NULL, the output in *out (malloc'd, NULL if unreadable). */
int t_run_dsc(dsc_t *t, const char *name, const char *args, char **out);

/* The value after KEY (e.g. "loss ", "main ", "idx_kl ") on each "step N/M"
   line of a `dsc train` log, for 1 <= N <= max_step: v[N] (v may be NULL)
   and, when text is not NULL, its text (text[N], up to 31 chars). Returns
   how many steps had KEY on their line. */
int t_log_steps(const char *log, const char *key, int max_step, double *v, char (*text)[32]);

/* Write tmpdir/NAME: `lines` sentences of a 16-word language (fixed seed),
   a blank line (document break) after every 10th, so a tiny model learns
   something in a few steps; its path goes to path (cap bytes). */
void t_write_words(dsc_t *t, const char *name, int lines, char *path, size_t cap);

/* Read a whole file (malloc'd, caller frees); NULL on failure. */
void *t_read_file(const char *path, size_t *len);
/* Write bytes to a file; 0 on success. */
int t_write_file(const char *path, const void *data, size_t len);

/* fixture_util.c: the model in tests/fixtures/<name> (a failed load is
   recorded as a failure; NULL then), and an int32 file of that directory
   (*n ids; NULL when missing). Callers free / dsc_model_free. */
dsc_model_t *t_load_fixture(dsc_t *t, const char *name);
int32_t *t_fixture_ids(const char *name, const char *file, int64_t *n);
/* A context for m with parameters p (a failure is recorded; NULL then). */
dsc_ctx_t *t_new_ctx(dsc_t *t, const dsc_model_t *m, const dsc_ctx_params *p);

#endif
