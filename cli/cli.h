/*
 * cli.h - shared by the files of the dsc command-line tool: the parsed
 * options and the helpers every subcommand uses. The CLI is the only part of
 * dsc that prints to the terminal on its own or calls exit().
 */
#ifndef DSC_CLI_H
#define DSC_CLI_H

#include <stdint.h>
#include <stdio.h>

#include "dsc.h"

/* `dsc train` options (cli/train.c); defaults from cli_train_default_opts(). */
typedef struct {
    const char *data;         /* --data FILE: UTF-8 text, blank line between documents */
    const char *tokenizer;    /* --tokenizer DIR (default: the -m checkpoint's)        */
    const char *config;       /* --config FILE: config.json of a new model             */
    int64_t steps;            /* --steps N: length of the run and of the LR schedule;
                                 0 = not given (the checkpoint's run, else 100)         */
    int64_t stop_after;       /* --stop-after N: end after step N; 0 = at --steps      */
    int64_t batch;            /* --batch B: sequences per step                         */
    int64_t seq;              /* --seq T: tokens per sequence                          */
    int64_t warmup;           /* --warmup N; -1 = min(100, steps/10)                   */
    int64_t eval_every;       /* --eval-every N; 0 = at the end only                   */
    int64_t save_every;       /* --save-every N; 0 = at the end only                   */
    double lr, min_lr;        /* --lr, --min-lr (-1 = lr/10)                           */
    double wd;                /* --wd: AdamW weight decay on matrices                  */
    double clip;              /* --clip: max global grad norm; 0 = off                 */
    double bias_gamma;        /* --bias-gamma: aux-loss-free balancing step; 0 = off   */
    double val_frac;          /* --val-frac: share of documents held out               */
    double init_std;          /* --init-std: std of a new model's matrices             */
    double balance_alpha;     /* --balance-alpha: sequence-wise balance loss; 0 = off  */
    double mtp_weight;        /* --mtp-weight: MTP loss weight (models with MTP); 0 = off */
    int dsa_warmup;           /* --dsa-stage warmup: only the DSA indexer trains       */
    int dsa_sparse;           /* --dsa-stage sparse: MLA over the indexer's top-k      */
    double dsa_kl_weight;     /* --dsa-kl-weight: the indexer's KL loss weight (1)     */
    int64_t dsa_recall_every; /* --dsa-recall-every N: idx_recall every N steps (10)   */
    int64_t dsa_topk;         /* --dsa-topk K: set the model's index_topk; 0 = keep    */
    double nsa_align;         /* --nsa-align W: NSA selection alignment weight; 0 = off */
    const char *preset;       /* --preset NAME: built-in architecture of a new model   */
    double time_budget;       /* --time-budget MINUTES: stop before; 0 = none          */
    double passkey_mix;       /* --passkey-mix F: share of passkey sequences, [0, 1)   */
    int64_t passkey_pack;     /* --passkey-pack MIN: examples per such sequence >= 1 (0: one) */
} cli_train_opts;

/* `dsc eval` options (cli/eval.c); --data, --val-frac, --seed and --ctx are
   shared with train / run (o->train.data, o->train.val_frac, o->sp.seed,
   o->n_ctx). */
typedef struct {
    int passkey;              /* --passkey: the passkey-retrieval task            */
    const char *ctx_list;     /* --ctx-list 256,512: passkey context lengths       */
    const char *depths;       /* --depths 0,25,50,75,100: needle depth, % of filler */
    int64_t trials;           /* --trials N: per (ctx, depth) cell; 0 = default 5  */
    uint64_t trial_seed;      /* --trial-seed S: seeds the passkey draws            */
    int trial_seed_set;       /* else they are seeded by --seed (the split's seed) */
} cli_eval_opts;

typedef struct {
    const char *model_dir;
    const char *ids;          /* --ids "5,17,42"                          */
    const char *out;          /* -o FILE                                  */
    const char *prompt;       /* -p TEXT                                  */
    const char *prompt_file;  /* -f FILE                                  */
    const char *system;       /* --system TEXT (chat)                     */
    int threads;              /* -t; 0 = OpenMP default                    */
    int64_t n_ctx;            /* -c; 0 = command default                   */
    int64_t n_batch;          /* -b; 0 = 512                               */
    int64_t n_predict;        /* -n; -1 = until EOS or full context        */
    dsc_attn_mode attn;
    dsc_sampler_params sp;
    int seed_set;
    int print_ids;            /* --print-ids                              */
    int no_bos;               /* --no-bos                                 */
    int quiet;                /* -q                                       */
    int dense;                /* --dense: DSA models attend densely        */
    dsc_index_cache_type index_cache; /* --index-cache f32|bf16|fp8       */
    int index_fp8;            /* --index-fp8: official FP8 indexer scoring */
    dsc_spec_mode spec;       /* --spec none|mtp|auto                      */
    int draft_n;              /* --draft-n N (0: the model's MTP modules)  */
    int64_t draft_vocab;      /* --draft-vocab N (0: the whole vocabulary) */
    cli_train_opts train;     /* train only                                */
    cli_eval_opts eval;       /* eval only                                 */
} cli_opts;

/* Parse argv[2..] into o (argv[1] is the command); exits 2 on bad usage. */
void cli_parse(int argc, char **argv, cli_opts *o);
_Noreturn void cli_die_usage(const char *msg, const char *arg);
_Noreturn void cli_die(const dsc_err *e);
/* "5,17,42" -> malloc'd ids (exits 2 on a malformed list). */
int32_t *cli_parse_ids(const char *s, int64_t *n);
double cli_now(void);
/* All of f into a malloc'd buffer (*len bytes); exits on a read error. */
char *cli_read_all(FILE *f, const char *what, size_t *len);
/* Load the model (with a progress line on stderr unless quiet); exits on error. */
dsc_model_t *cli_load_model(const cli_opts *o, double *load_s);
/* Context parameters from the options every command that runs a model
   shares (-t, --attn, --dense, --index-cache, --index-fp8); the rest default. */
dsc_ctx_params cli_ctx_params(const cli_opts *o);
/* Bytes that always hold one streamed token piece (dsc_detokenize_piece). */
size_t cli_piece_cap(const dsc_tokenizer_t *t);
/* Human-readable bytes, e.g. "1.25 GiB". */
void cli_bytes(char *buf, size_t n, double v);

int cmd_info(const cli_opts *o);
int cmd_logits(const cli_opts *o);
int cmd_run(const cli_opts *o);
int cmd_chat(const cli_opts *o);
int cmd_tokenize(const cli_opts *o);
int cmd_detokenize(const cli_opts *o);
int cmd_train(const cli_opts *o);
int cmd_eval(const cli_opts *o);
cli_train_opts cli_train_default_opts(void);
/* The --preset lines of the help text (names and what they are). */
void cli_train_usage_presets(FILE *f);

/* `dsc train`'s log (cli/train_log.c): one row per optimizer step, kept in
   memory and written with every checkpoint as train_log.csv and loss.svg.
   A value that does not apply is NAN (written as an empty field). */
typedef struct {
    int64_t step;             /* 1-based optimizer step                          */
    double loss;              /* optimised total: lm + balance + mtp_weight x mtp */
    double lm;                /* next-token cross-entropy                        */
    double mtp;               /* MTP cross-entropy, unweighted (NAN: no MTP)     */
    double balance;           /* balance loss, alpha included (NAN: off)         */
    double lr, grad_norm;     /* of this step; grad norm before clipping         */
    double tok_s;             /* tokens per second of this step                  */
    double elapsed_s;         /* training wall time since step 0, all runs       */
    double val_loss, val_mtp; /* validation CE / MTP CE (NAN: not evaluated)     */
    double idx_kl, idx_recall;/* DSA indexer KL (unweighted) and top-k recall,
                                 layer means (NAN: not a DSA model)              */
} cli_log_row;

typedef struct {
    cli_log_row *rows;        /* n rows in increasing step order (owned)         */
    int64_t n, cap;
} cli_train_log;

/* Append r; rows of steps >= r->step are dropped first. 0, or -1 (no memory). */
int cli_log_add(cli_train_log *l, const cli_log_row *r);
/* Replace l's rows by those of a train_log.csv at path with step <= max_step.
   0 on success, 1 when there is no such file (l is empty), -1 on a malformed
   file or read error with a message in msg (the rows before it are kept). */
int cli_log_read_csv(cli_train_log *l, const char *path, int64_t max_step, char *msg,
                     size_t cap);
/* Write the rows of steps <= max_step as CSV / as the SVG loss plot with the
   given title. 0, or -1 with errno set. */
int cli_log_write_csv(const cli_train_log *l, const char *path, int64_t max_step);
int cli_log_write_svg(const cli_train_log *l, const char *path, int64_t max_step,
                      const char *title);
void cli_log_free(cli_train_log *l);

#endif
