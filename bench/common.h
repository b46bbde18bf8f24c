/*
 * common.h - what every dsc benchmark shares.
 *
 *  - The model: DeepSeek-V2-Lite's layer shapes (or, for bench_dsa, V3.2's
 *    attention with the DSA indexer) with random weights, written once per
 *    dtype as config.json + model.safetensors (spec §7.2 names) and reused
 *    through --dir, so a benchmark needs no download.
 *  - The command line: a table of options, parsed in one place.
 *  - Clocks and the busy meter: on a small shared machine other processes
 *    (a build, a test run) can decide a timing, so every measurement also
 *    says how many CPUs the rest of the machine kept busy meanwhile.
 *  - One forward pass timed block by block, from the internals of model.h.
 *
 * Not a library: it prints progress to stdout and errors to stderr, and its
 * functions return 0 on success, non-zero after printing what failed.
 */
#ifndef DSC_BENCH_COMMON_H
#define DSC_BENCH_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "dsc.h"

#define BENCH_MAX_LIST 8    /* items in a list option (--threads 1,2)   */
#define BENCH_SEED 0x5eedULL
#define BENCH_ROOT_CAP 4096 /* --dir, and paths made under it            */

/* The shapes of a random checkpoint. bench_v2lite_shapes gives V2-Lite's
   (spec §1.1; only layers and vocab vary); bench_dsa.c starts from it and
   adds a q latent and the DSA indexer (a deepseek_v32 config). */
typedef struct {
    const char *desc;           /* "DeepSeek-V2-Lite", for the header          */
    const char *tag;            /* checkpoint dir <tag>-<dtype>; NULL: <dtype> */
    int64_t L, V;               /* layers, vocabulary                          */
    int64_t d, H;               /* hidden size, attention heads                */
    int64_t dq;                 /* q_lora_rank; 0: q_proj straight from x      */
    int64_t dn, dr, dv, dc;     /* qk_nope, qk_rope, v head dims; kv_lora_rank */
    int64_t ff, mff;            /* dense and per-expert intermediate sizes     */
    int64_t E, K, ns;           /* routed experts, chosen per token, shared    */
    int64_t n_dense, n_moe;     /* layer 0 is dense, the rest MoE              */
    int64_t HI, DI, topk;       /* DSA indexer heads x dim, top-k; 0: no DSA   */
    double mscale;              /* YaRN mscale = mscale_all_dim (V2 0.707, V3 1) */
} bench_shapes;

bench_shapes bench_v2lite_shapes(int64_t layers, int64_t vocab);
/* The first lines of every benchmark's output: CPU, SIMD, BLAS, model. */
void bench_print_header(const char *name, const bench_shapes *s);

/* ---- clocks ---- */
double bench_now(void); /* monotonic seconds */

/* A point in time with the machine's busy CPU time and this process's own. */
typedef struct {
    double wall, busy, self;
} bench_mark;
bench_mark bench_mark_now(void);
/* CPUs other processes kept busy between a and b (steal included). */
double bench_others(bench_mark a, bench_mark b);
/* OpenMP's default team size; row-wise kernels (softmax) use it. */
void bench_set_threads(int n_threads);

/* ---- random numbers (fixed seeds: runs are comparable) ---- */
uint64_t bench_mix64(uint64_t *state);
/* n normal(0, std) values, the same whatever the thread count. */
void bench_fill_normal(float *x, int64_t n, float std, uint64_t seed);

/* ---- command line ---- */
typedef enum {
    BENCH_OPT_I64,    /* dst: int64_t*, one value in [lo, hi]            */
    BENCH_OPT_LIST,   /* dst: int64_t[BENCH_MAX_LIST], values in [lo, hi] */
    BENCH_OPT_DTYPES, /* dst: dsc_dtype[BENCH_MAX_LIST]: f32, bf16, fp8  */
    BENCH_OPT_STR,    /* dst: const char **, borrowed from argv          */
} bench_opt_kind;

typedef struct {
    const char *name; /* "--layers" */
    bench_opt_kind kind;
    void *dst;
    int *count;       /* lists: receives the number of items */
    int64_t lo, hi;
} bench_opt;

/* Parse "--name value" pairs. Returns 1 to go on, 0 on bad usage (said on
   stderr, with usage), -1 when --help printed usage to stdout. */
int bench_parse_args(int argc, char **argv, const bench_opt *opts, int n_opts,
                     const char *usage);
const char *bench_dtype_tag(dsc_dtype t); /* "f32", "bf16", "fp8" */

/* ---- checkpoints ---- */

/* Where checkpoints live: --dir (kept) or a temp dir (deleted at the end). */
typedef struct {
    char root[BENCH_ROOT_CAP];
    int tmp;
} bench_store;

/* dir NULL: a fresh temp dir. */
int bench_store_open(bench_store *st, const char *dir);
/*
 * The checkpoint of dtype dt in st->root/<dtype> (or <tag>-<dtype>): reused
 * when its config.json matches these shapes, else generated (normal(0, 0.02)
 * weights from a fixed seed, norms 1, the indexer's LayerNorm bias 0; fp8 as
 * V3 / V3.2 files store it), then loaded and described. *m is the caller's
 * to free.
 */
int bench_load_model(const bench_store *st, const bench_shapes *s, dsc_dtype dt,
                     dsc_model_t **m);
/* Delete the checkpoint of shapes s in dtype dt when st is a temp dir
   (frees the disk early). */
void bench_store_drop(const bench_store *st, const bench_shapes *s, dsc_dtype dt);
/* The end of every run: delete the temp dir and what is left in it of the
   checkpoints of s (--dir is kept), then print the peak RSS. */
void bench_finish(bench_store *st, const bench_shapes *s, const dsc_dtype *dts, int n_dts);

/* ---- the forward pass block by block ---- */
enum { BENCH_PH_EMBED, BENCH_PH_ATTN, BENCH_PH_DENSE, BENCH_PH_MOE, BENCH_PH_HEAD, BENCH_PH_N };
extern const char *const bench_phase_name[BENCH_PH_N];

/*
 * The steps of dsc_forward for tokens pos0 .. pos0+n-1 with a clock around
 * each block (ph[BENCH_PH_*], seconds); logits for every token. It uses
 * model.h internals, so when forward.c changes this must follow; comparing
 * the phase sum with a timed dsc_forward shows any drift. When experts is
 * not NULL it receives the routed experts the MoE layers ran (summed over
 * layers), read from the routing itself.
 */
void bench_forward_phases(dsc_ctx_t *c, const int32_t *ids, int64_t n, int64_t pos0,
                          float *logits, double *ph, int64_t *experts);

#endif
