/*
 * run.c - `dsc run` (one prompt, streamed continuation, llama.cpp-style
 * timings) and `dsc chat` (multi-turn, DeepSeek-V3 chat format, the cache
 * kept across turns).
 *
 * Text goes to stdout as it is generated; progress, timings and errors go to
 * stderr. Ctrl-C in chat stops the current answer only: the handler sets a
 * flag that the token callback reads. That flag is the one piece of global
 * mutable state in dsc, and it lives in the CLI because a signal handler has
 * nowhere else to write.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

static volatile sig_atomic_t interrupted;

static void on_sigint(int sig) {
    (void)sig;
    interrupted = 1;
}

typedef struct {
    const dsc_tokenizer_t *tok;  /* NULL: print ids */
    int print_ids;
    int check_interrupt;
    int64_t n_ids;
    dsc_detok_state ds;
    char *buf;       /* cli_piece_cap bytes */
    size_t cap;
} sink;

static void sink_init(sink *s, const dsc_tokenizer_t *tok, int print_ids, int check_interrupt) {
    memset(s, 0, sizeof *s);
    s->tok = tok;
    s->print_ids = print_ids || !tok;
    s->check_interrupt = check_interrupt;
    s->cap = cli_piece_cap(tok);
    s->buf = malloc(s->cap);
    if (!s->buf) {
        fprintf(stderr, "dsc: out of memory\n");
        exit(1);
    }
}

static int on_token(void *user, int32_t id) {
    sink *s = user;
    if (s->print_ids || !s->tok) {
        printf("%s%d", s->n_ids++ ? " " : "", id);
    } else {
        int64_t k = dsc_detokenize_piece(s->tok, id, 1, &s->ds, s->buf, (int64_t)s->cap);
        if (k > 0) fwrite(s->buf, 1, (size_t)k, stdout);
    }
    fflush(stdout);
    return s->check_interrupt && interrupted;
}

/* Emit what the decoder holds back and release the buffer. */
static void sink_flush(sink *s) {
    if (s->tok && !s->print_ids) {
        int64_t k = dsc_detok_flush(&s->ds, s->buf, (int64_t)s->cap);
        if (k > 0) fwrite(s->buf, 1, (size_t)k, stdout);
    }
    fflush(stdout);
    free(s->buf);
    s->buf = NULL;
}

/* The tokenizer in the model directory: required for text, optional for ids. */
static dsc_tokenizer_t *load_tokenizer(const cli_opts *o, int required) {
    dsc_tokenizer_t *t = NULL;
    dsc_err e = {0};
    if (dsc_tokenizer_load(o->model_dir, &t, &e) == DSC_OK) return t;
    if (required) {
        fprintf(stderr, "dsc: error (%s): %s\ndsc: (give token ids with --ids to run without a "
                "tokenizer)\n", dsc_status_str(e.code), e.msg);
        exit(1);
    }
    return NULL;
}

/* Text -> malloc'd ids with the tokenizer; NULL with e filled on error. */
static int32_t *try_encode(const dsc_tokenizer_t *t, const char *text, size_t len, int add_bos,
                           int64_t *n, dsc_err *e) {
    int64_t need = 0;
    if (dsc_tokenize(t, text, len, add_bos, NULL, 0, &need, e) != DSC_OK) return NULL;
    int32_t *ids = malloc((size_t)(need > 0 ? need : 1) * sizeof *ids);
    if (!ids) {
        fprintf(stderr, "dsc: out of memory\n");
        exit(1);
    }
    if (dsc_tokenize(t, text, len, add_bos, ids, need, n, e) != DSC_OK) {
        free(ids);
        return NULL;
    }
    return ids;
}

/* The same, exiting with the library's message on error. */
static int32_t *encode(const dsc_tokenizer_t *t, const char *text, size_t len, int add_bos,
                       int64_t *n) {
    dsc_err e = {0};
    int32_t *ids = try_encode(t, text, len, add_bos, n, &e);
    if (!ids) cli_die(&e);
    return ids;
}

static dsc_ctx_t *make_ctx(const cli_opts *o, const dsc_model_t *m) {
    const dsc_config *c = dsc_model_config(m);
    dsc_ctx_params p = cli_ctx_params(o);
    int64_t def = c->max_position_embeddings < 4096 ? c->max_position_embeddings : 4096;
    p.n_ctx = o->n_ctx > 0 ? o->n_ctx : def;
    if (o->n_ctx > c->max_position_embeddings && !o->quiet)
        fprintf(stderr, "dsc: warning: -c %lld exceeds the model's max_position_embeddings "
                "(%lld); positions past it are extrapolated\n", (long long)o->n_ctx,
                (long long)c->max_position_embeddings);
    p.n_batch = o->n_batch > 0 ? o->n_batch : 512;
    p.spec = o->spec;
    p.draft_n = o->draft_n;
    p.draft_vocab = o->draft_vocab;
    dsc_ctx_t *ctx = NULL;
    dsc_err e = {0};
    if (dsc_ctx_new(m, &p, &ctx, &e) != DSC_OK) cli_die(&e);
    return ctx;
}

static dsc_sampler_t *make_sampler(const cli_opts *o, const dsc_model_t *m,
                                   const dsc_tokenizer_t *tok) {
    dsc_sampler_params sp = o->sp;
    const dsc_config *c = dsc_model_config(m);
    sp.eos_id = (int32_t)c->eos_token_id;
    if (sp.eos_id < 0 && tok) sp.eos_id = dsc_tokenizer_eos(tok);
    if (!o->seed_set) {
        sp.seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
        if (!o->quiet && sp.temp > 0)
            fprintf(stderr, "dsc: seed = %llu\n", (unsigned long long)sp.seed);
    }
    dsc_sampler_t *s = NULL;
    dsc_err e = {0};
    if (dsc_sampler_new(&sp, c->vocab_size, &s, &e) != DSC_OK) cli_die(&e);
    return s;
}

/* Speculation: acceptance per draft position, tokens per verify pass,
   measured speedup over the plain tokens at the start of the call, routed
   experts touched per token. */
static void print_spec(const dsc_ctx_t *ctx, const dsc_gen_stats *st) {
    if (!dsc_ctx_spec_enabled(ctx)) return;
    const dsc_spec_stats *ss = &st->spec;
    fprintf(stderr, "dsc: speculation      = %s\n", dsc_ctx_spec_note(ctx));
    if (!ss->active) return;
    fprintf(stderr, "dsc: acceptance       =");
    int64_t dr = 0, ac = 0;
    for (int j = 0; j < DSC_SPEC_MAX_DRAFT && ss->n_drafted[j]; j++) {
        fprintf(stderr, " draft %d: %.1f%% (%lld/%lld)", j + 1,
                100.0 * (double)ss->n_accepted[j] / (double)ss->n_drafted[j],
                (long long)ss->n_accepted[j], (long long)ss->n_drafted[j]);
        dr += ss->n_drafted[j];
        ac += ss->n_accepted[j];
    }
    fprintf(stderr, "; all %.1f%%\n", dr ? 100.0 * (double)ac / (double)dr : 0.0);
    double spec_rate = ss->spec_s > 0 ? (double)ss->n_spec_tokens / ss->spec_s : 0.0;
    double plain_rate = ss->plain_s > 0 ? (double)ss->n_plain / ss->plain_s : 0.0;
    fprintf(stderr, "dsc: spec decode      = %lld tokens in %lld verify passes (%.2f per pass), "
            "%.2f tokens per second", (long long)ss->n_spec_tokens, (long long)ss->n_steps,
            ss->n_steps ? (double)ss->n_spec_tokens / (double)ss->n_steps : 0.0, spec_rate);
    if (plain_rate > 0)
        fprintf(stderr, "; plain %.2f tokens per second (first %lld tokens): speedup %.2fx",
                plain_rate, (long long)ss->n_plain, spec_rate / plain_rate);
    fprintf(stderr, "\n");
    if (ss->experts_spec || ss->experts_plain)
        fprintf(stderr, "dsc: routed experts   = %.2f per token speculating (%.2f per pass), "
                "%.2f per token plain (sum over MoE layers)\n",
                ss->n_spec_tokens ? (double)ss->experts_spec / (double)ss->n_spec_tokens : 0.0,
                ss->n_steps ? (double)ss->experts_spec / (double)ss->n_steps : 0.0,
                ss->n_plain ? (double)ss->experts_plain / (double)ss->n_plain : 0.0);
}

static void print_timings(const cli_opts *o, const dsc_model_t *m, const dsc_ctx_t *ctx,
                          double load_s, const dsc_gen_stats *st) {
    if (o->quiet) return;
    dsc_model_info in;
    dsc_model_get_info(m, &in);
    double pm = st->prompt_s * 1e3, gm = st->gen_s * 1e3;
    int64_t steps = st->n_gen > 0 ? st->n_gen - 1 : 0; /* the first id comes from the prefill */
    char w[32], kv[32], wk[32], per[32];
    cli_bytes(w, sizeof w, (double)in.weight_bytes);
    cli_bytes(kv, sizeof kv, (double)dsc_ctx_cache_bytes(ctx));
    cli_bytes(wk, sizeof wk, (double)dsc_ctx_work_bytes(ctx));
    cli_bytes(per, sizeof per, (double)in.latent_cache_values_per_token * 4);
    fprintf(stderr, "\n");
    fprintf(stderr, "dsc: load time        = %10.2f ms\n", load_s * 1e3);
    fprintf(stderr, "dsc: prompt eval time = %10.2f ms / %5lld tokens (%8.2f ms per token, "
            "%8.2f tokens per second)\n", pm, (long long)st->n_prompt,
            st->n_prompt ? pm / (double)st->n_prompt : 0.0,
            pm > 0 ? 1e3 * (double)st->n_prompt / pm : 0.0);
    fprintf(stderr, "dsc:        eval time = %10.2f ms / %5lld runs   (%8.2f ms per token, "
            "%8.2f tokens per second)\n", gm, (long long)steps,
            steps ? gm / (double)steps : 0.0, gm > 0 ? 1e3 * (double)steps / gm : 0.0);
    fprintf(stderr, "dsc:       total time = %10.2f ms / %5lld tokens\n",
            (load_s + st->prompt_s + st->gen_s) * 1e3, (long long)(st->n_prompt + st->n_gen));
    print_spec(ctx, st);
    fprintf(stderr, "dsc: memory: weights %s (mmapped, %s), KV cache %s (latent%s, %lld "
            "positions x %s/token latent), work buffers %s\n", w,
            dsc_dtype_name(in.dominant_dtype), kv,
            in.index_cache_values_per_token ? " + indexer keys" : "",
            (long long)dsc_ctx_size(ctx), per, wk);
}

static void report_stop(const cli_opts *o, const dsc_ctx_t *ctx, const dsc_gen_stats *st) {
    if (st->stop == DSC_STOP_CONTEXT)
        fprintf(stderr, "\ndsc: context full (%lld positions): generation stopped; raise -c\n",
                (long long)dsc_ctx_size(ctx));
    else if (!o->quiet && st->stop == DSC_STOP_EOS)
        fprintf(stderr, "\ndsc: end of sequence\n");
}

int cmd_run(const cli_opts *o) {
    if (!!o->prompt + !!o->prompt_file + !!o->ids != 1)
        cli_die_usage("run needs exactly one of -p TEXT, -f FILE or --ids LIST", NULL);
    double load_s = 0;
    dsc_model_t *m = cli_load_model(o, &load_s);
    dsc_tokenizer_t *tok = load_tokenizer(o, !o->ids);

    int64_t n = 0;
    int32_t *ids;
    if (o->ids) {
        ids = cli_parse_ids(o->ids, &n);
    } else {
        size_t len = 0;
        char *text;
        if (o->prompt) {
            len = strlen(o->prompt);
            text = malloc(len + 1);
            if (text) memcpy(text, o->prompt, len + 1);
        } else {
            FILE *f = fopen(o->prompt_file, "rb");
            if (!f) {
                fprintf(stderr, "dsc: cannot open %s: %s\n", o->prompt_file, strerror(errno));
                exit(1);
            }
            text = cli_read_all(f, o->prompt_file, &len);
            fclose(f);
        }
        ids = encode(tok, text, len, o->no_bos ? 0 : -1, &n);
        if (!o->print_ids && o->prompt) {
            fwrite(text, 1, len, stdout); /* echo the prompt as llama.cpp does */
            fflush(stdout);
        }
        free(text);
    }

    dsc_ctx_t *ctx = make_ctx(o, m);
    dsc_sampler_t *smp = make_sampler(o, m, tok);
    sink out;
    sink_init(&out, tok, o->print_ids, 0);
    dsc_gen_stats st = {0};
    dsc_err e = {0};
    const dsc_config *c = dsc_model_config(m);
    int32_t eos = (int32_t)c->eos_token_id;
    if (eos < 0 && tok) eos = dsc_tokenizer_eos(tok);
    dsc_status s = dsc_generate(ctx, smp, ids, n, o->n_predict, eos, on_token, &out, &st, &e);
    sink_flush(&out);
    if (out.print_ids) printf("\n");
    fflush(stdout);
    if (s != DSC_OK) cli_die(&e);
    report_stop(o, ctx, &st);
    print_timings(o, m, ctx, load_s, &st);
    free(ids);
    dsc_sampler_free(smp);
    dsc_ctx_free(ctx);
    dsc_tokenizer_free(tok);
    dsc_model_free(m);
    return 0;
}

/* Append k ids to a growing buffer. */
static void push_ids(const int32_t *ids, int64_t k, int32_t **buf, int64_t *n, int64_t *cap) {
    if (*n + k > *cap) {
        *cap = 2 * (*n + k) + 16;
        *buf = realloc(*buf, (size_t)*cap * sizeof **buf);
        if (!*buf) {
            fprintf(stderr, "dsc: out of memory\n");
            exit(1);
        }
    }
    memcpy(*buf + *n, ids, (size_t)k * sizeof *ids);
    *n += k;
}

/* Append text's ids to a growing buffer. */
static void push_text(const dsc_tokenizer_t *t, const char *text, int add_bos, int32_t **buf,
                      int64_t *n, int64_t *cap) {
    int64_t k = 0;
    int32_t *ids = encode(t, text, strlen(text), add_bos, &k);
    push_ids(ids, k, buf, n, cap);
    free(ids);
}

int cmd_chat(const cli_opts *o) {
    dsc_model_t *m = cli_load_model(o, NULL);
    dsc_tokenizer_t *tok = load_tokenizer(o, 1);
    const char *user_tag = "<\xef\xbd\x9cUser\xef\xbd\x9c>";
    const char *asst_tag = "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>";
    if (dsc_tokenizer_find(tok, user_tag) < 0 || dsc_tokenizer_find(tok, asst_tag) < 0) {
        fprintf(stderr, "dsc: error: the tokenizer in %s has no %s / %s tokens; chat needs the "
                "DeepSeek-V3 chat format (use dsc run)\n", o->model_dir, user_tag, asst_tag);
        exit(1);
    }
    dsc_ctx_t *ctx = make_ctx(o, m);
    dsc_sampler_t *smp = make_sampler(o, m, tok);
    const dsc_config *c = dsc_model_config(m);
    int32_t eos = (int32_t)c->eos_token_id;
    if (eos < 0) eos = dsc_tokenizer_eos(tok);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint; /* no SA_RESTART: a read at the prompt returns EINTR */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);

    if (!o->quiet)
        fprintf(stderr, "dsc: chat with %s: type a message; Ctrl-C stops an answer, /reset "
                "starts over, /exit quits.\n", o->model_dir);
    char *line = NULL;
    size_t line_cap = 0;
    int32_t *prompt = NULL;
    int64_t cap = 0;
    int first = 1, closed = 1; /* closed: the last answer ended with EOS */
    for (;;) {
        printf("> ");
        fflush(stdout);
        interrupted = 0;
        errno = 0;
        ssize_t got = getline(&line, &line_cap, stdin);
        if (got < 0) {
            if (errno == EINTR) {
                clearerr(stdin);
                printf("\n");
                continue;
            }
            printf("\n");
            break;
        }
        while (got > 0 && (line[got - 1] == '\n' || line[got - 1] == '\r')) line[--got] = 0;
        if (!strcmp(line, "/exit") || !strcmp(line, "/quit")) break;
        if (!strcmp(line, "/reset")) {
            dsc_ctx_reset(ctx);
            first = 1;
            closed = 1;
            continue;
        }
        if (got == 0) continue;

        /* [BOS system] | [EOS if the last answer was cut]  <User> text <Assistant> */
        int64_t n = 0;
        if (first && o->system) push_text(tok, o->system, -1, &prompt, &n, &cap);
        else if (first) push_text(tok, "", -1, &prompt, &n, &cap);
        if (!first && !closed && eos >= 0) push_ids(&eos, 1, &prompt, &n, &cap);
        push_text(tok, user_tag, 0, &prompt, &n, &cap);
        dsc_err te = {0};
        int64_t nl = 0;
        int32_t *lids = try_encode(tok, line, (size_t)got, 0, &nl, &te);
        if (!lids) {
            /* a bad line (e.g. invalid UTF-8) costs the line, not the chat */
            fprintf(stderr, "dsc: error (%s): %s\n", dsc_status_str(te.code), te.msg);
            continue;
        }
        push_ids(lids, nl, &prompt, &n, &cap);
        free(lids);
        push_text(tok, asst_tag, 0, &prompt, &n, &cap);

        sink out;
        sink_init(&out, tok, 0, 1);
        dsc_gen_stats st = {0};
        dsc_err e = {0};
        dsc_status s = dsc_generate(ctx, smp, prompt, n, o->n_predict, eos, on_token, &out, &st,
                                    &e);
        sink_flush(&out);
        printf("\n");
        if (s != DSC_OK) {
            fprintf(stderr, "dsc: error (%s): %s\n", dsc_status_str(e.code), e.msg);
            if (s == DSC_ERR_ARG) fprintf(stderr, "dsc: /reset starts a new conversation\n");
            continue;
        }
        first = 0;
        closed = st.stop == DSC_STOP_EOS;
        if (st.stop == DSC_STOP_CONTEXT)
            fprintf(stderr, "dsc: context full (%lld positions); /reset starts over\n",
                    (long long)dsc_ctx_size(ctx));
        if (st.stop == DSC_STOP_CALLBACK) fprintf(stderr, "dsc: (stopped)\n");
        if (!o->quiet)
            fprintf(stderr, "dsc: %lld prompt tokens, %lld generated at %.2f tokens/s; %lld of "
                    "%lld positions used\n", (long long)st.n_prompt, (long long)st.n_gen,
                    st.gen_s > 0 && st.n_gen > 1 ? (double)(st.n_gen - 1) / st.gen_s : 0.0,
                    (long long)dsc_ctx_n_past(ctx), (long long)dsc_ctx_size(ctx));
    }
    free(line);
    free(prompt);
    dsc_sampler_free(smp);
    dsc_ctx_free(ctx);
    dsc_tokenizer_free(tok);
    dsc_model_free(m);
    return 0;
}
