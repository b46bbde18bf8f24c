/*
 * main.c - the dsc command-line tool: argument parsing, `info`, `logits`, and
 * the command table. `run`/`chat` live in run.c, `tokenize`/`detokenize` in
 * tok.c. Only the CLI calls exit().
 *
 * Exit status: 0 on success, 1 on an error (message on stderr), 2 on bad usage.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: dsc <command> [options]\n"
            "\n"
            "commands:\n"
            "  info       -m DIR                      architecture, parameter counts, cache sizes\n"
            "  logits     -m DIR --ids 5,17,42 -o FILE  one forward pass over the ids at\n"
            "                                         positions 0..n-1; float32 LE [n][vocab]\n"
            "  run        -m DIR -p TEXT | --ids LIST  generate text (or ids) after a prompt\n"
            "  chat       -m DIR                      interactive chat (DeepSeek-V3 format)\n"
            "  tokenize   -m DIR [--no-bos]           ids of the UTF-8 text on stdin\n"
            "  detokenize -m DIR --ids LIST           text of the ids\n"
            "  train      -m OUT_DIR --data FILE --tokenizer DIR [--config CONFIG.json]\n"
            "                                         train a model (a new one from --config\n"
            "                                         when OUT_DIR is empty; resumes otherwise)\n"
            "  eval       -m DIR --data FILE [--ctx N]  held-out loss / perplexity at context N\n"
            "  eval       -m DIR --data FILE --passkey [--ctx-list L --depths L --trials N]\n"
            "                                         passkey retrieval: accuracy table,\n"
            "                                         OUT_PREFIX.svg heat map and .csv\n"
            "\n"
            "options:\n"
            "  -m, --model DIR        Hugging Face checkpoint directory (config.json +\n"
            "                         model.safetensors or an index + shards; tokenizer.json\n"
            "                         + tokenizer_config.json for text)\n"
            "  --ids LIST             comma-separated token ids\n"
            "  -o, --output FILE      output file (logits)\n"
            "  -p, --prompt TEXT      prompt text          -f, --file FILE   prompt from a file\n"
            "  -n, --predict N        tokens to generate (default -1: until EOS or a full context)\n"
            "  -c, --ctx-size N       context positions (default 4096, at most the model's)\n"
            "  -b, --batch-size N     most prompt tokens per forward pass (default 512)\n"
            "  -t, --threads N        threads (default: OpenMP's default)\n"
            "  --temp T               temperature (default 0.8; 0 = greedy)\n"
            "  --top-k K              keep the K most likely (default 40; 0 = off)\n"
            "  --top-p P              nucleus mass (default 0.95; 1 = off)\n"
            "  --min-p P              drop below P x the best (default 0.05; 0 = off)\n"
            "  --repeat-penalty R     penalise the last 64 ids (default 1.0 = off)\n"
            "  --seed S               sampling seed (default: random, printed)\n"
            "  --ignore-eos           never stop at EOS (its logit is set to -inf)\n"
            "  --print-ids            run: print generated ids, not text\n"
            "  --system TEXT          chat: system prompt\n"
            "  --no-bos               tokenize: do not add BOS\n"
            "  --attn MODE            absorbed (default) or naive MLA\n"
            "  --dense                DSA (V3.2) models: ignore the indexer, attend densely\n"
            "  --index-cache TYPE     DSA indexer key cache: f32 (default), bf16, fp8\n"
            "  --index-fp8            DSA: Hadamard + FP8 indexer scoring, as DeepSeek's kernels\n"
            "  --spec MODE            run/chat: speculative decoding with the model's MTP module\n"
            "                         as the draft: mtp (always), auto (only when measured to\n"
            "                         pay), none (default)\n"
            "  --draft-n N            tokens drafted per step (default: the MTP modules, 1);\n"
            "                         more reuses the module on its own output (at most 8)\n"
            "  --draft-vocab N        the draft scores only token ids < N (the frequent ones\n"
            "                         in a BPE vocabulary): a cheaper draft, same output\n"
            "  -q, --quiet            no progress or timings on stderr\n"
            "train options:\n"
            "  --data FILE            training text (UTF-8; a blank line ends a document)\n"
            "  --tokenizer DIR        tokenizer.json (+ tokenizer_config.json) to use and copy\n"
            "  --config FILE          config.json of a new model (OUT_DIR without a checkpoint)\n"
            "  --preset NAME          a built-in architecture instead of --config (vocab_size\n"
            "                         from the tokenizer):\n");
    cli_train_usage_presets(f);
    fprintf(f,
            "  --steps N              optimizer steps; the LR schedule ends there (default 100;\n"
            "                         resuming: the run's own)\n"
            "  --time-budget MIN      stop before MIN minutes; without --steps the schedule is\n"
            "                         sized to fit, from the speed of the first ~20 steps\n"
            "  --stop-after N         stop after step N (resumable; schedule still --steps)\n"
            "  --batch B  --seq T     sequences per step, tokens per sequence (default 4, 64)\n"
            "  --lr LR  --min-lr LR   peak and final learning rate (default 3e-4, lr/10)\n"
            "  --warmup N             linear warm-up steps, then cosine (default min(100, steps/10))\n"
            "  --wd W  --clip C       AdamW weight decay (0.1), max grad norm (1.0; 0 = off)\n"
            "  --bias-gamma G         aux-loss-free router bias step (1e-3; 0 = off)\n"
            "  --balance-alpha A      sequence-wise balance loss weight (V3: 1e-4; default 0)\n"
            "  --mtp-weight W         MTP loss weight, models with num_nextn_predict_layers 1 (0.3; 0 = off)\n"
            "  --dsa-stage S          deepseek_v32: none (default: everything trains, the indexer by\n"
            "                         its KL loss), warmup (dense warm-up: only the indexer trains)\n"
            "                         or sparse (MLA over the indexer's top-k; everything trains)\n"
            "  --dsa-kl-weight W      weight of the DSA indexer's KL loss (1)\n"
            "  --dsa-topk K           set the DSA model's index_topk (config.json) to K\n"
            "  --dsa-recall-every N   log the indexer's top-k recall every N steps (10; a\n"
            "                         metric that costs a dense attention pass)\n"
            "  --nsa-align W          NSA: weight of the selection alignment loss (KL of the\n"
            "                         selection scores to the selected branch's attention; 0 = off)\n"
            "  --eval-every N         validation loss + expert load every N steps (and at the end)\n"
            "  --save-every N         checkpoint every N steps (and at the end)\n"
            "  --val-frac F           share of documents held out for validation (0.05)\n"
            "  --passkey-mix F        replace a share F in [0, 1) of the training sequences by\n"
            "                         passkey examples (training filler, the needle and question\n"
            "                         of eval --passkey, then the key; default 0)\n"
            "  --passkey-pack MIN     pack several passkey examples, log-uniform lengths >= MIN,\n"
            "                         into each passkey sequence (default 0: one per sequence)\n"
            "  --init-std S           std of a new model's weights (0.006)\n"
            "  --seed S               train: init, split and batch order seed (default 0)\n"
            "  OUT_DIR also gets train_log.csv (one row per step) and loss.svg (loss plot)\n"
            "  -h, --help             this help\n"
            "\n"
            "eval options (the held-out documents of --data, split as train splits them with\n"
            "the same --val-frac and --seed; the tokenizer is the -m directory's):\n"
            "  --ctx N                tokens per window (default 512); windows of stride N\n"
            "  --passkey              passkey retrieval instead of the loss\n"
            "  --ctx-list L           passkey context lengths (default 256,512,1024)\n"
            "  --depths L             passkey depths, %% of the filler (default 0,25,50,75,100)\n"
            "  --trials N             passkey trials per cell (default 5)\n"
            "  --trial-seed S         seed of the passkey keys and filler offsets (default\n"
            "                         --seed's): fresh trials over the same held-out split\n"
            "  -o PREFIX              passkey: writes PREFIX.svg and PREFIX.csv (default passkey)\n");
}

_Noreturn void cli_die_usage(const char *msg, const char *arg) {
    fprintf(stderr, "dsc: %s%s%s\n\n", msg, arg ? ": " : "", arg ? arg : "");
    usage(stderr);
    exit(2);
}

_Noreturn void cli_die(const dsc_err *e) {
    fprintf(stderr, "dsc: error (%s): %s\n", dsc_status_str(e->code), e->msg);
    exit(1);
}

static int64_t parse_int(const char *s, const char *what) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end) cli_die_usage("expected an integer for", what);
    return v;
}

static uint64_t parse_seed(const char *s, const char *what) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || strchr(s, '-')) /* strtoull wraps " -1" */
        cli_die_usage("expected a non-negative integer for", what);
    return v;
}

static float parse_float(const char *s, const char *what) {
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || end == s || *end || v != v) cli_die_usage("expected a number for", what);
    return v;
}

void cli_parse(int argc, char **argv, cli_opts *o) {
    memset(o, 0, sizeof *o);
    o->attn = DSC_ATTN_ABSORBED;
    o->n_predict = -1;
    o->sp = dsc_sampler_default_params();
    o->train = cli_train_default_opts();
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define IS(s1, s2) (!strcmp(a, s1) || !strcmp(a, s2))
#define VALUE() (v ? (i++, v) : (cli_die_usage("missing value for", a), v))
        if (IS("-h", "--help")) {
            usage(stdout);
            exit(0);
        } else if (IS("-m", "--model")) {
            o->model_dir = VALUE();
        } else if (IS("--ids", "--ids")) {
            o->ids = VALUE();
        } else if (IS("-o", "--output")) {
            o->out = VALUE();
        } else if (IS("-p", "--prompt")) {
            o->prompt = VALUE();
        } else if (IS("-f", "--file")) {
            o->prompt_file = VALUE();
        } else if (IS("--system", "--system")) {
            o->system = VALUE();
        } else if (IS("-t", "--threads")) {
            int64_t t = parse_int(VALUE(), a);
            if (t < 1 || t > 4096) cli_die_usage("threads out of range", v);
            o->threads = (int)t;
        } else if (IS("-c", "--ctx-size") || IS("--ctx", "--ctx")) {
            o->n_ctx = parse_int(VALUE(), a);
            if (o->n_ctx < 1) cli_die_usage("context must be >= 1", v);
        } else if (IS("-b", "--batch-size")) {
            o->n_batch = parse_int(VALUE(), a);
            if (o->n_batch < 1) cli_die_usage("batch size must be >= 1", v);
        } else if (IS("-n", "--predict")) {
            o->n_predict = parse_int(VALUE(), a);
            if (o->n_predict < -1) cli_die_usage("-n must be >= -1", v);
        } else if (IS("--temp", "--temp")) {
            o->sp.temp = parse_float(VALUE(), a);
        } else if (IS("--top-k", "--top-k")) {
            int64_t k = parse_int(VALUE(), a);
            if (k < 0 || k > INT32_MAX) cli_die_usage("--top-k out of range", v);
            o->sp.top_k = (int32_t)k;
        } else if (IS("--top-p", "--top-p")) {
            o->sp.top_p = parse_float(VALUE(), a);
            if (o->sp.top_p <= 0 || o->sp.top_p > 1) cli_die_usage("--top-p must be in (0, 1]", v);
        } else if (IS("--min-p", "--min-p")) {
            o->sp.min_p = parse_float(VALUE(), a);
            if (o->sp.min_p < 0 || o->sp.min_p > 1) cli_die_usage("--min-p must be in [0, 1]", v);
        } else if (IS("--repeat-penalty", "--repeat-penalty")) {
            o->sp.repeat_penalty = parse_float(VALUE(), a);
            if (!(o->sp.repeat_penalty > 0)) cli_die_usage("--repeat-penalty must be > 0", v);
        } else if (IS("--seed", "-s")) {
            o->sp.seed = parse_seed(VALUE(), a);
            o->seed_set = 1;
        } else if (IS("--ignore-eos", "--ignore-eos")) {
            o->sp.ignore_eos = 1;
        } else if (IS("--print-ids", "--print-ids")) {
            o->print_ids = 1;
        } else if (IS("--no-bos", "--no-bos")) {
            o->no_bos = 1;
        } else if (IS("-q", "--quiet")) {
            o->quiet = 1;
        } else if (IS("--spec", "--spec")) {
            const char *m = VALUE();
            if (!strcmp(m, "mtp")) o->spec = DSC_SPEC_MTP;
            else if (!strcmp(m, "auto")) o->spec = DSC_SPEC_AUTO;
            else if (!strcmp(m, "none")) o->spec = DSC_SPEC_NONE;
            else cli_die_usage("--spec must be mtp, auto or none", m);
        } else if (IS("--draft-n", "--draft-n")) {
            int64_t dn = parse_int(VALUE(), a);
            if (dn < 1 || dn > DSC_SPEC_MAX_DRAFT) cli_die_usage("--draft-n must be 1..8", v);
            o->draft_n = (int)dn;
        } else if (IS("--draft-vocab", "--draft-vocab")) {
            o->draft_vocab = parse_int(VALUE(), a);
            if (o->draft_vocab < 0) cli_die_usage("--draft-vocab must be >= 0", v);
        } else if (IS("--index-fp8", "--index-fp8")) {
            o->index_fp8 = 1;
        } else if (IS("--dense", "--dense")) {
            o->dense = 1;
        } else if (IS("--index-cache", "--index-cache")) {
            const char *m = VALUE();
            if (!strcmp(m, "f32")) o->index_cache = DSC_INDEX_CACHE_F32;
            else if (!strcmp(m, "bf16")) o->index_cache = DSC_INDEX_CACHE_BF16;
            else if (!strcmp(m, "fp8")) o->index_cache = DSC_INDEX_CACHE_FP8;
            else cli_die_usage("--index-cache must be f32, bf16 or fp8", m);
        } else if (IS("--data", "--data")) {
            o->train.data = VALUE();
        } else if (IS("--tokenizer", "--tokenizer")) {
            o->train.tokenizer = VALUE();
        } else if (IS("--config", "--config")) {
            o->train.config = VALUE();
        } else if (IS("--preset", "--preset")) {
            o->train.preset = VALUE();
        } else if (IS("--time-budget", "--time-budget")) {
            o->train.time_budget = parse_float(VALUE(), a);
            if (!(o->train.time_budget > 0 && o->train.time_budget < 1e9))
                cli_die_usage("--time-budget must be > 0 (minutes)", v);
        } else if (IS("--steps", "--steps")) {
            o->train.steps = parse_int(VALUE(), a);
            if (o->train.steps < 1) cli_die_usage("--steps must be >= 1", v);
        } else if (IS("--stop-after", "--stop-after")) {
            o->train.stop_after = parse_int(VALUE(), a);
            if (o->train.stop_after < 0) cli_die_usage("--stop-after must be >= 0", v);
        } else if (IS("--batch", "--batch")) {
            o->train.batch = parse_int(VALUE(), a);
            if (o->train.batch < 1 || o->train.batch > (1 << 20)) cli_die_usage("--batch out of range", v);
        } else if (IS("--seq", "--seq")) {
            o->train.seq = parse_int(VALUE(), a);
            if (o->train.seq < 1 || o->train.seq > (1 << 24)) cli_die_usage("--seq out of range", v);
        } else if (IS("--warmup", "--warmup")) {
            o->train.warmup = parse_int(VALUE(), a);
            if (o->train.warmup < 0) cli_die_usage("--warmup must be >= 0", v);
        } else if (IS("--eval-every", "--eval-every")) {
            o->train.eval_every = parse_int(VALUE(), a);
            if (o->train.eval_every < 0) cli_die_usage("--eval-every must be >= 0", v);
        } else if (IS("--save-every", "--save-every")) {
            o->train.save_every = parse_int(VALUE(), a);
            if (o->train.save_every < 0) cli_die_usage("--save-every must be >= 0", v);
        } else if (IS("--lr", "--lr")) {
            o->train.lr = parse_float(VALUE(), a);
            if (!(o->train.lr > 0)) cli_die_usage("--lr must be > 0", v);
        } else if (IS("--min-lr", "--min-lr")) {
            o->train.min_lr = parse_float(VALUE(), a);
            if (o->train.min_lr < 0) cli_die_usage("--min-lr must be >= 0", v);
        } else if (IS("--wd", "--wd")) {
            o->train.wd = parse_float(VALUE(), a);
            if (o->train.wd < 0) cli_die_usage("--wd must be >= 0", v);
        } else if (IS("--clip", "--clip")) {
            o->train.clip = parse_float(VALUE(), a);
            if (o->train.clip < 0) cli_die_usage("--clip must be >= 0", v);
        } else if (IS("--bias-gamma", "--bias-gamma")) {
            o->train.bias_gamma = parse_float(VALUE(), a);
            if (o->train.bias_gamma < 0) cli_die_usage("--bias-gamma must be >= 0", v);
        } else if (IS("--val-frac", "--val-frac")) {
            o->train.val_frac = parse_float(VALUE(), a);
            if (o->train.val_frac < 0 || o->train.val_frac > 1) cli_die_usage("--val-frac must be in [0, 1]", v);
        } else if (IS("--balance-alpha", "--balance-alpha")) {
            o->train.balance_alpha = parse_float(VALUE(), a);
            if (o->train.balance_alpha < 0) cli_die_usage("--balance-alpha must be >= 0", v);
        } else if (IS("--mtp-weight", "--mtp-weight")) {
            o->train.mtp_weight = parse_float(VALUE(), a);
            if (!(o->train.mtp_weight >= 0 && o->train.mtp_weight <= 1e30)) cli_die_usage("--mtp-weight must be finite and >= 0", v);
        } else if (IS("--dsa-stage", "--dsa-stage")) {
            const char *m = VALUE();
            o->train.dsa_warmup = o->train.dsa_sparse = 0;
            if (!strcmp(m, "warmup")) o->train.dsa_warmup = 1;
            else if (!strcmp(m, "sparse")) o->train.dsa_sparse = 1;
            else if (strcmp(m, "none")) cli_die_usage("--dsa-stage must be none, warmup or sparse", m);
        } else if (IS("--dsa-kl-weight", "--dsa-kl-weight")) {
            o->train.dsa_kl_weight = parse_float(VALUE(), a);
            if (!(o->train.dsa_kl_weight >= 0 && o->train.dsa_kl_weight <= 1e30)) cli_die_usage("--dsa-kl-weight must be finite and >= 0", v);
        } else if (IS("--nsa-align", "--nsa-align")) {
            o->train.nsa_align = parse_float(VALUE(), a);
            if (!(o->train.nsa_align >= 0 && o->train.nsa_align <= 1e30)) cli_die_usage("--nsa-align must be finite and >= 0", v);
        } else if (IS("--dsa-topk", "--dsa-topk")) {
            o->train.dsa_topk = parse_int(VALUE(), a);
            if (o->train.dsa_topk < 1) cli_die_usage("--dsa-topk must be >= 1", v);
        } else if (IS("--dsa-recall-every", "--dsa-recall-every")) {
            o->train.dsa_recall_every = parse_int(VALUE(), a);
            if (o->train.dsa_recall_every < 1) cli_die_usage("--dsa-recall-every must be >= 1", v);
        } else if (IS("--passkey-mix", "--passkey-mix")) {
            o->train.passkey_mix = parse_float(VALUE(), a);
            if (!(o->train.passkey_mix >= 0 && o->train.passkey_mix < 1)) cli_die_usage("--passkey-mix must be in [0, 1)", v);
        } else if (IS("--passkey-pack", "--passkey-pack")) {
            o->train.passkey_pack = parse_int(VALUE(), a);
            if (o->train.passkey_pack < 0) cli_die_usage("--passkey-pack must be >= 0", v);
        } else if (IS("--init-std", "--init-std")) {
            o->train.init_std = parse_float(VALUE(), a);
            if (o->train.init_std < 0) cli_die_usage("--init-std must be >= 0", v);
        } else if (IS("--passkey", "--passkey")) {
            o->eval.passkey = 1;
        } else if (IS("--ctx-list", "--ctx-list")) {
            o->eval.ctx_list = VALUE();
        } else if (IS("--depths", "--depths")) {
            o->eval.depths = VALUE();
        } else if (IS("--trials", "--trials")) {
            o->eval.trials = parse_int(VALUE(), a);
            if (o->eval.trials < 1 || o->eval.trials > 1000000) cli_die_usage("--trials out of range", v);
        } else if (IS("--trial-seed", "--trial-seed")) {
            o->eval.trial_seed = parse_seed(VALUE(), a);
            o->eval.trial_seed_set = 1;
        } else if (IS("--attn", "--attn")) {
            const char *m = VALUE();
            if (!strcmp(m, "absorbed")) o->attn = DSC_ATTN_ABSORBED;
            else if (!strcmp(m, "naive")) o->attn = DSC_ATTN_NAIVE;
            else cli_die_usage("--attn must be absorbed or naive", m);
        } else {
            cli_die_usage("unknown option", a);
        }
#undef IS
#undef VALUE
    }
    if (!o->model_dir) cli_die_usage("missing -m DIR", NULL);
}

int32_t *cli_parse_ids(const char *s, int64_t *n) {
    int64_t cap = 1;
    for (const char *p = s; *p; p++) cap += *p == ',';
    int32_t *ids = malloc((size_t)cap * sizeof *ids);
    if (!ids) {
        fprintf(stderr, "dsc: out of memory\n");
        exit(1);
    }
    int64_t k = 0;
    const char *p = s;
    while (*p) {
        char *end;
        errno = 0;
        long long v = strtoll(p, &end, 10);
        if (errno || end == p || (*end && *end != ',') || v < INT32_MIN || v > INT32_MAX)
            cli_die_usage("bad token id list", s);
        ids[k++] = (int32_t)v;
        p = *end ? end + 1 : end;
        if (*end == ',' && !*p) cli_die_usage("bad token id list", s);
    }
    if (k == 0) cli_die_usage("empty token id list", s);
    *n = k;
    return ids;
}

char *cli_read_all(FILE *f, const char *what, size_t *len) {
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (!buf) {
            fprintf(stderr, "dsc: out of memory reading %s\n", what);
            exit(1);
        }
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap) break;
        cap *= 2;
        buf = realloc(buf, cap);
    }
    if (ferror(f)) {
        fprintf(stderr, "dsc: cannot read %s: %s\n", what, strerror(errno));
        exit(1);
    }
    *len = n;
    return buf;
}

double cli_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void cli_bytes(char *buf, size_t n, double v) {
    const char *pre[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int i = 0;
    while (v >= 1024.0 && i < 4) {
        v /= 1024.0;
        i++;
    }
    snprintf(buf, n, i ? "%.2f %s" : "%.0f %s", v, pre[i]);
}

size_t cli_piece_cap(const dsc_tokenizer_t *t) {
    size_t longest = 0;
    for (int64_t i = 0; t && i < dsc_tokenizer_vocab(t); i++) {
        size_t len = 0;
        if (dsc_token_bytes(t, (int32_t)i, &len) && len > longest) longest = len;
    }
    return 4 + 3 * longest;
}

static int load_progress(void *user, double done) {
    int *last = user;
    int pct = (int)(done * 100.0);
    if (pct != *last) {
        fprintf(stderr, "\rdsc: loading weights %3d%%", pct);
        *last = pct;
    }
    return 0;
}

dsc_ctx_params cli_ctx_params(const cli_opts *o) {
    dsc_ctx_params p = dsc_ctx_default_params();
    p.n_threads = o->threads;
    p.attn = o->attn;
    p.dense = o->dense;
    p.index_cache = o->index_cache;
    p.index_fp8 = o->index_fp8;
    return p;
}

dsc_model_t *cli_load_model(const cli_opts *o, double *load_s) {
    double t0 = cli_now();
    dsc_err e = {0};
    dsc_model_t *m = NULL;
    if (dsc_model_load(o->model_dir, &m, &e) != DSC_OK) cli_die(&e);
    /* Fault the weights in up front (with a progress line for large models)
       when they fit in memory; otherwise mmap pages them in on demand. */
    dsc_model_info in;
    dsc_model_get_info(m, &in);
    double ram = (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGESIZE);
    if ((double)in.file_bytes < 0.8 * ram) {
        int last = -1;
        int show = !o->quiet && in.file_bytes > (256 << 20);
        dsc_model_prefetch(m, show ? load_progress : NULL, &last);
        if (show) fprintf(stderr, "\n");
    }
    if (load_s) *load_s = cli_now() - t0;
    return m;
}

int cmd_info(const cli_opts *o) {
    dsc_model_t *m;
    double t_load = 0;
    m = cli_load_model(o, &t_load);
    const dsc_config *c = dsc_model_config(m);
    dsc_model_info in;
    dsc_model_get_info(m, &in);
    char b1[32], b2[32], b3[32];

    printf("model        : %s (%s)\n", o->model_dir, c->model_type);
    printf("layers       : %lld (%lld dense FFN + %lld MoE), hidden %lld, vocab %lld\n",
           (long long)c->num_hidden_layers, (long long)in.n_dense_layers,
           (long long)in.n_moe_layers, (long long)c->hidden_size, (long long)c->vocab_size);
    if (c->attention_nsa)
        printf("attention    : NSA, %lld query heads over %lld "
               "KV heads, d_k %lld (first %lld roped), d_v %lld,\n               block %lld "
               "stride %lld, select %lld x %lld, window %lld, compress %s%s, scale %.7f\n",
               (long long)c->num_attention_heads, (long long)c->nsa_kv_heads,
               (long long)c->nsa_head_dim_k, (long long)c->qk_rope_head_dim,
               (long long)c->nsa_head_dim_v, (long long)c->nsa_block_size,
               (long long)c->nsa_stride, (long long)c->nsa_n_select,
               (long long)c->nsa_select_block, (long long)c->nsa_window,
               c->nsa_compress_mean ? "mean" : "mlp", c->nsa_shared_kv ? ", shared k/v" : "",
               c->softmax_scale);
    else if (c->q_lora_rank > 0)
        printf("attention    : MLA, %lld heads, q_lora_rank %lld, ", (long long)c->num_attention_heads,
               (long long)c->q_lora_rank);
    else
        printf("attention    : MLA, %lld heads, no q compression, ",
               (long long)c->num_attention_heads);
    if (!c->attention_nsa)
        printf("kv_lora_rank %lld, qk %lld nope + %lld rope, v %lld, softmax scale %.7f\n",
               (long long)c->kv_lora_rank, (long long)c->qk_nope_head_dim,
               (long long)c->qk_rope_head_dim, (long long)c->v_head_dim, c->softmax_scale);
    if (c->yarn)
        printf("rope         : YaRN factor %g over %lld positions (beta %g/%g, mscale %g/%g), "
               "theta %g, %s pairs\n",
               c->yarn_factor, (long long)c->yarn_original_max_pos, c->yarn_beta_fast,
               c->yarn_beta_slow, c->yarn_mscale, c->yarn_mscale_all_dim, c->rope_theta,
               c->rope_interleave ? "interleaved" : "half-split");
    else
        printf("rope         : theta %g, %s pairs\n", c->rope_theta,
               c->rope_interleave ? "interleaved" : "half-split");
    if (c->n_routed_experts > 0) {
        static const char *meth[] = {"greedy", "group_limited_greedy", "noaux_tc"};
        printf("moe          : %lld routed experts (top %lld, %s, %s, groups %lld/%lld, "
               "norm_topk_prob %s, scale %g) + %lld shared, width %lld\n",
               (long long)c->n_routed_experts, (long long)c->num_experts_per_tok,
               meth[c->topk_method], c->scoring_func == DSC_SCORE_SIGMOID ? "sigmoid" : "softmax",
               (long long)c->topk_group, (long long)c->n_group,
               c->norm_topk_prob ? "true" : "false", c->routed_scaling_factor,
               (long long)c->n_shared_experts, (long long)c->moe_intermediate_size);
    }
    if (c->index_topk > 0) {
        int64_t per = in.index_cache_values_per_token;
        cli_bytes(b1, sizeof b1, (double)per * 4);
        cli_bytes(b2, sizeof b2, (double)(per / c->index_head_dim) * (c->index_head_dim + 4));
        printf("dsa          : lightning indexer %lld heads x %lld (rope on the first %lld, "
               "half-split), top-%lld keys per query\n", (long long)c->index_n_heads,
               (long long)c->index_head_dim, (long long)c->qk_rope_head_dim,
               (long long)c->index_topk);
        printf("index cache  : %lld values/token (%lld per layer) = %s/token fp32, %s/token "
               "fp8 + scale\n", (long long)per, (long long)c->index_head_dim, b1, b2);
    }
    if (in.n_mtp_modules > 0)
        printf("mtp          : %lld module(s), %lld params, loaded for speculative decoding "
               "(run --spec mtp); %lld stored copies of the embedding/head skipped\n",
               (long long)in.n_mtp_modules, (long long)in.n_params_mtp,
               (long long)in.n_tensors_skipped);
    else if (c->num_nextn_predict_layers > 0)
        printf("mtp          : config says %lld layer(s), the files hold none\n",
               (long long)c->num_nextn_predict_layers);
    printf("params       : %lld total, %lld active per token (%.1f%%)\n",
           (long long)in.n_params, (long long)in.n_params_active,
           in.n_params ? 100.0 * (double)in.n_params_active / (double)in.n_params : 0.0);
    cli_bytes(b1, sizeof b1, (double)in.weight_bytes);
    cli_bytes(b2, sizeof b2, (double)in.file_bytes);
    printf("weights      : %s resident, mmapped in stored dtype (files %s);", b1, b2);
    for (int t = 0; t < 4; t++)
        if (in.dtype_bytes[t]) {
            cli_bytes(b3, sizeof b3, (double)in.dtype_bytes[t]);
            printf(" %s %s", dsc_dtype_name((dsc_dtype)t), b3);
        }
    printf("\n");
    int64_t lat = in.latent_cache_values_per_token, mha = in.mha_cache_values_per_token;
    cli_bytes(b1, sizeof b1, (double)lat * 4);
    cli_bytes(b2, sizeof b2, (double)mha * 4);
    if (!c->attention_nsa) {   /* NSA: no latent cache (a decode state per layer) */
        printf("kv cache     : latent %lld values/token (%lld per layer) = %s/token fp32; "
               "standard MHA %lld values/token = %s/token fp32 (%.1fx larger)\n",
               (long long)lat, (long long)(c->kv_lora_rank + c->qk_rope_head_dim), b1,
               (long long)mha, b2, lat ? (double)mha / (double)lat : 0.0);
        cli_bytes(b1, sizeof b1, (double)lat * 2);
        cli_bytes(b2, sizeof b2, (double)mha * 2);
        printf("               in bf16: latent %s/token vs MHA %s/token\n", b1, b2);
    }
    printf("load time    : %.1f ms\n", t_load * 1e3);
    dsc_model_free(m);
    return 0;
}

int cmd_logits(const cli_opts *o) {
    if (!o->ids) cli_die_usage("logits needs --ids", NULL);
    if (!o->out) cli_die_usage("logits needs -o FILE", NULL);
    int64_t n;
    int32_t *ids = cli_parse_ids(o->ids, &n);
    dsc_err e = {0};
    if (o->n_ctx > 0 && n > o->n_ctx) {
        fprintf(stderr, "dsc: %lld ids do not fit -c %lld\n", (long long)n, (long long)o->n_ctx);
        exit(1);
    }
    dsc_model_t *m = cli_load_model(o, NULL);
    const dsc_config *c = dsc_model_config(m);
    dsc_ctx_params p = cli_ctx_params(o);
    p.n_ctx = o->n_ctx > 0 ? o->n_ctx : n;
    p.n_batch = n;
    dsc_ctx_t *ctx;
    if (dsc_ctx_new(m, &p, &ctx, &e) != DSC_OK) cli_die(&e);
    size_t count = (size_t)n * (size_t)c->vocab_size;
    float *logits = malloc(count * sizeof *logits);
    if (!logits) {
        fprintf(stderr, "dsc: cannot allocate %zu logits\n", count);
        exit(1);
    }
    double t0 = cli_now();
    if (dsc_forward(ctx, ids, n, 0, logits, &e) != DSC_OK) cli_die(&e);
    double dt = cli_now() - t0;
    FILE *f = fopen(o->out, "wb");
    if (!f || fwrite(logits, sizeof *logits, count, f) != count || fclose(f) != 0) {
        fprintf(stderr, "dsc: cannot write %s: %s\n", o->out, strerror(errno));
        exit(1);
    }
    fprintf(stderr, "dsc: %lld tokens -> %s [%lld x %lld] float32 in %.1f ms (%.1f tokens/s)\n",
            (long long)n, o->out, (long long)n, (long long)c->vocab_size, dt * 1e3,
            (double)n / dt);
    free(logits);
    free(ids);
    dsc_ctx_free(ctx);
    dsc_model_free(m);
    return 0;
}

int main(int argc, char **argv) {
    static const struct {
        const char *name;
        int (*fn)(const cli_opts *);
    } cmds[] = {
        {"info", cmd_info},         {"logits", cmd_logits},     {"run", cmd_run},
        {"chat", cmd_chat},         {"tokenize", cmd_tokenize}, {"detokenize", cmd_detokenize},
        {"train", cmd_train},       {"eval", cmd_eval},
    };
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
        printf("dsc %d.%d\n", DSC_VERSION_MAJOR, DSC_VERSION_MINOR);
        return 0;
    }
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        if (!strcmp(cmd, cmds[i].name)) {
            cli_opts o;
            cli_parse(argc, argv, &o);
            return cmds[i].fn(&o);
        }
    cli_die_usage("unknown command", cmd);
}
