/*
 * eval.c - `dsc eval`: how well a checkpoint predicts held-out text, and
 * whether it can retrieve a passkey hidden in long filler.
 *
 * Held-out text. --data is read and split exactly as `dsc train` splits it
 * (src/train/data.h: document k is held out when hash(seed, k) < val_frac),
 * with the same --val-frac (default 0.05) and --seed (default 0; pass the
 * seed the model was trained with). The held-out stream is every held-out
 * document as [BOS] ids [EOS], concatenated. The tokenizer is the -m
 * directory's.
 *
 * Loss (default). The stream s[0..n-1] is cut into windows of N = --ctx
 * tokens with stride N: window w feeds s[wN .. wN+N-1] at positions 0..N-1
 * (a fresh cache per window) and is scored on the next ids s[wN+1 .. wN+N];
 * the last window is shorter. So every id but the first is predicted exactly
 * once: n-1 tokens. Loss = mean next-token cross-entropy in nats (log-softmax
 * in double), ppl = exp(loss). The result is one line on stdout:
 *     eval: ctx 512  tokens 12345  loss 4.21000000  ppl 67.3565
 *
 * Passkey (--passkey). For each context length C of --ctx-list and depth D
 * of --depths, --trials prompts of C - 10 tokens:
 *     [BOS] filler[0..a) needle filler[a..F) question
 * with needle " The pass key is K. Remember it. K is the pass key." and
 * question " What is the pass key? The pass key is" (each tokenized on its
 * own; the strings live in cli/passkey.h, shared with `dsc train
 * --passkey-mix`), the filler F held-out ids (BOS/EOS removed; read cyclically from a
 * random offset), a = round(F x D / 100). K is a random 5-7 digit key. The
 * model then greedily generates up to 10 tokens (so prompt + answer fit C
 * positions); a trial is correct when the decoded answer starts, after
 * optional whitespace, with K's digits. Keys and offsets come from a
 * splitmix64 seeded by --trial-seed (default: --seed), drawn cell after cell
 * in --ctx-list then --depths order, so two runs share trials only with the
 * same seed, lists and --trials; another --trial-seed draws fresh trials
 * over the same held-out split. Output: a table on stdout (rows depth,
 * columns context, cells accuracy %), PREFIX.csv (ctx,depth,trials,correct)
 * and PREFIX.svg (a red-to-green heat map), PREFIX = -o (default "passkey").
 *
 * Contexts beyond the model's max_position_embeddings are run, with a
 * warning (as `dsc run -c` does): YaRN models are meant to extrapolate, and
 * for the others the table then shows how retrieval degrades.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "passkey.h"
#include "train/data.h"

#define PK_GEN 10        /* tokens generated per passkey trial     */
#define EVAL_BATCH 512   /* most tokens per forward call           */

static _Noreturn void fail(const char *fmt, const char *arg) {
    fprintf(stderr, "dsc: eval: ");
    fprintf(stderr, fmt, arg);
    fputc('\n', stderr);
    exit(1);
}

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "dsc: out of memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

/* "256,512" -> malloc'd values in [lo, hi]; exits 1 on a malformed list. */
static int64_t *parse_list(const char *s, const char *what, int64_t lo, int64_t hi, int64_t *n) {
    int64_t cap = 1;
    for (const char *p = s; *p; p++) cap += *p == ',';
    int64_t *v = xmalloc((size_t)cap * sizeof *v);
    int64_t k = 0;
    const char *p = s;
    for (;;) {
        char *end;
        errno = 0;
        long long x = strtoll(p, &end, 10);
        if (errno || end == p || (*end && *end != ',') || x < lo || x > hi) {
            fprintf(stderr, "dsc: eval: bad %s list '%s': expected comma-separated integers in "
                    "[%lld, %lld]\n", what, s, (long long)lo, (long long)hi);
            exit(1);
        }
        v[k++] = x;
        if (!*end) break;
        p = end + 1;
    }
    *n = k;
    return v;
}

/* --data's held-out split, as dsc train makes it; exits 1 when it is empty. */
static dsc_dataset_t *load_heldout(const cli_opts *o, const dsc_tokenizer_t *tok) {
    if (!o->train.data) fail("%s", "missing --data FILE (the text to evaluate on)");
    dsc_data_params dp = dsc_data_default_params();
    dp.seq_len = 1;
    dp.val_fraction = o->train.val_frac;
    dp.seed = o->seed_set ? o->sp.seed : 0;
    dsc_dataset_t *ds = NULL;
    dsc_err e = {0};
    if (dsc_data_load(o->train.data, tok, &dp, &ds, &e) != DSC_OK) {
        fprintf(stderr, "dsc: eval: cannot read --data %s: %s\n", o->train.data, e.msg);
        exit(1);
    }
    int64_t nd = dsc_data_n_docs(ds, DSC_SPLIT_VAL), nt = dsc_data_n_tokens(ds, DSC_SPLIT_VAL);
    if (nt < 2) {
        fprintf(stderr, "dsc: eval: --data %s has no held-out tokens at --val-frac %g --seed "
                "%llu (%lld of %lld documents held out); raise --val-frac\n", o->train.data,
                o->train.val_frac, (unsigned long long)dp.seed, (long long)nd,
                (long long)(nd + dsc_data_n_docs(ds, DSC_SPLIT_TRAIN)));
        exit(1);
    }
    if (!o->quiet)
        fprintf(stderr, "dsc: eval: %s: %lld held-out documents, %lld tokens (--val-frac %g "
                "--seed %llu)\n", o->train.data, (long long)nd, (long long)nt, o->train.val_frac,
                (unsigned long long)dp.seed);
    return ds;
}

static dsc_ctx_t *eval_ctx(const cli_opts *o, const dsc_model_t *m, int64_t n_ctx) {
    const dsc_config *c = dsc_model_config(m);
    if (n_ctx > c->max_position_embeddings && !o->quiet)
        fprintf(stderr, "dsc: eval: warning: context %lld exceeds the model's "
                "max_position_embeddings (%lld); positions past it are extrapolated%s\n",
                (long long)n_ctx, (long long)c->max_position_embeddings,
                c->yarn ? " (YaRN)" : "");
    dsc_ctx_params p = cli_ctx_params(o);
    p.n_ctx = n_ctx;
    p.n_batch = n_ctx < EVAL_BATCH ? n_ctx : EVAL_BATCH;
    dsc_ctx_t *ctx = NULL;
    dsc_err e = {0};
    if (dsc_ctx_new(m, &p, &ctx, &e) != DSC_OK) cli_die(&e);
    return ctx;
}

/* -log softmax(l)[target] over V logits, in double. */
static double token_ce(const float *l, int64_t V, int32_t target) {
    double mx = l[0];
    for (int64_t i = 1; i < V; i++)
        if (l[i] > mx) mx = l[i];
    double sum = 0;
    for (int64_t i = 0; i < V; i++) sum += exp((double)l[i] - mx);
    return log(sum) + mx - (double)l[target];
}

static int eval_loss(const cli_opts *o, dsc_model_t *m, const dsc_dataset_t *ds) {
    int64_t N = o->n_ctx > 0 ? o->n_ctx : 512;
    if (N < 2) {
        fprintf(stderr, "dsc: eval: --ctx %lld: a window needs at least 2 tokens\n",
                (long long)N);
        exit(1);
    }
    const int32_t *s = dsc_data_stream(ds, DSC_SPLIT_VAL);
    int64_t n = dsc_data_n_tokens(ds, DSC_SPLIT_VAL);
    int64_t V = dsc_model_config(m)->vocab_size;
    dsc_ctx_t *ctx = eval_ctx(o, m, N);
    int64_t B = dsc_ctx_batch(ctx);
    float *logits = xmalloc((size_t)B * (size_t)V * sizeof *logits);
    int64_t n_win = (n - 1 + N - 1) / N, counted = 0;
    double sum = 0, t0 = cli_now();
    dsc_err e = {0};
    for (int64_t w = 0; w < n_win; w++) {
        int64_t s0 = w * N, len = n - 1 - s0 < N ? n - 1 - s0 : N;
        dsc_ctx_reset(ctx);
        for (int64_t j = 0; j < len; j += B) {
            int64_t k = len - j < B ? len - j : B;
            if (dsc_forward(ctx, s + s0 + j, k, j, logits, &e) != DSC_OK) cli_die(&e);
            for (int64_t i = 0; i < k; i++)
                sum += token_ce(logits + i * V, V, s[s0 + j + i + 1]);
            counted += k;
        }
        if (!o->quiet)
            fprintf(stderr, "\rdsc: eval: window %lld/%lld, %lld tokens, loss so far %.4f, "
                    "%.0f tokens/s ", (long long)w + 1, (long long)n_win, (long long)counted,
                    sum / (double)counted, (double)counted / (cli_now() - t0));
    }
    if (!o->quiet) fprintf(stderr, "\n");
    double loss = sum / (double)counted;
    printf("eval: ctx %lld  tokens %lld  loss %.8f  ppl %.4f\n", (long long)N,
           (long long)counted, loss, exp(loss));
    free(logits);
    dsc_ctx_free(ctx);
    return 0;
}

/* ---- passkey ---- */

/* Text -> ids without BOS into a malloc'd array. */
static int32_t *encode(const dsc_tokenizer_t *t, const char *text, int64_t *n) {
    dsc_err e = {0};
    int64_t need = 0;
    if (dsc_tokenize(t, text, strlen(text), 0, NULL, 0, &need, &e) != DSC_OK) cli_die(&e);
    int32_t *ids = xmalloc((size_t)need * sizeof *ids);
    if (dsc_tokenize(t, text, strlen(text), 0, ids, need, n, &e) != DSC_OK) cli_die(&e);
    return ids;
}

typedef struct {
    int32_t ids[PK_GEN];
    int n;
} pk_answer;

static int pk_collect(void *user, int32_t id) {
    pk_answer *a = user;
    if (a->n < PK_GEN) a->ids[a->n++] = id;
    return a->n >= PK_GEN;
}

/* HSL hue h in [0, 120] (red .. green), saturation 0.65, lightness 0.55. */
static void heat_rgb(double acc, int rgb[3]) {
    double h = 120.0 * (acc < 0 ? 0 : acc > 1 ? 1 : acc) / 60.0, l = 0.55, s = 0.65;
    double c = (1 - fabs(2 * l - 1)) * s, x = c * (1 - fabs(fmod(h, 2.0) - 1)), mm = l - c / 2;
    double r = h < 1 ? c : x, g = h < 1 ? x : c, b = 0;
    rgb[0] = (int)lround(255 * (r + mm));
    rgb[1] = (int)lround(255 * (g + mm));
    rgb[2] = (int)lround(255 * (b + mm));
}

static void put_xml(FILE *f, const char *s) {
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '&') fputs("&amp;", f);
        else if (ch == '<') fputs("&lt;", f);
        else if (ch == '>') fputs("&gt;", f);
        else if (ch == '"') fputs("&quot;", f);
        else if (ch >= 0x20) fputc(ch, f);
    }
}

/* The heat map: rows depth (top: 0%), columns context, correct[d * nc + c]. */
static int write_svg(const char *path, const char *model, const int64_t *ctxs, int64_t nc,
                     const int64_t *deps, int64_t nd, const int64_t *correct, int64_t trials) {
    const int CW = 84, CH = 40, X0 = 110, Y0 = 74;
    int W = X0 + (int)nc * CW + 30, H = Y0 + (int)nd * CH + 70;
    if (W < 420) W = 420;
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
            "viewBox=\"0 0 %d %d\" font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\" "
            "font-size=\"12\">\n", W, H, W, H);
    fprintf(f, "<rect width=\"%d\" height=\"%d\" fill=\"white\"/>\n", W, H);
    fprintf(f, "<text x=\"%d\" y=\"24\" text-anchor=\"middle\" font-size=\"15\" "
            "font-weight=\"bold\">passkey retrieval: ", W / 2);
    put_xml(f, model);
    fprintf(f, "</text>\n<text x=\"%d\" y=\"44\" text-anchor=\"middle\" fill=\"#555\">"
            "accuracy over %lld trials per cell</text>\n", W / 2, (long long)trials);
    for (int64_t d = 0; d < nd; d++)
        for (int64_t c = 0; c < nc; c++) {
            double acc = (double)correct[d * nc + c] / (double)trials;
            int rgb[3];
            heat_rgb(acc, rgb);
            int x = X0 + (int)c * CW, y = Y0 + (int)d * CH;
            fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" "
                    "fill=\"rgb(%d,%d,%d)\" stroke=\"white\"/>\n", x, y, CW, CH, rgb[0], rgb[1],
                    rgb[2]);
            fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">%.0f%%</text>\n",
                    x + CW / 2, y + CH / 2 + 4, 100.0 * acc);
        }
    for (int64_t c = 0; c < nc; c++)
        fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">%lld</text>\n",
                X0 + (int)c * CW + CW / 2, Y0 + (int)nd * CH + 18, (long long)ctxs[c]);
    for (int64_t d = 0; d < nd; d++)
        fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">%lld</text>\n", X0 - 8,
                Y0 + (int)d * CH + CH / 2 + 4, (long long)deps[d]);
    fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" font-size=\"13\">context length"
            "</text>\n", X0 + (int)nc * CW / 2, Y0 + (int)nd * CH + 44);
    fprintf(f, "<text x=\"30\" y=\"%d\" text-anchor=\"middle\" font-size=\"13\" "
            "transform=\"rotate(-90 30 %d)\">depth (%%)</text>\n", Y0 + (int)nd * CH / 2,
            Y0 + (int)nd * CH / 2);
    fputs("</svg>\n", f);
    return fclose(f) == 0 ? 0 : -1;
}

static int eval_passkey(const cli_opts *o, dsc_model_t *m, const dsc_tokenizer_t *tok,
                        const dsc_dataset_t *ds) {
    int64_t nc, nd;
    int64_t *ctxs = parse_list(o->eval.ctx_list ? o->eval.ctx_list : "256,512,1024",
                               "--ctx-list", 2, INT32_MAX, &nc);
    int64_t *deps = parse_list(o->eval.depths ? o->eval.depths : "0,25,50,75,100", "--depths",
                               0, 100, &nd);
    int64_t trials = o->eval.trials > 0 ? o->eval.trials : 5;
    const char *prefix = o->out ? o->out : "passkey";

    /* filler: the held-out stream without its BOS / EOS ids */
    const int32_t *s = dsc_data_stream(ds, DSC_SPLIT_VAL);
    int64_t n = dsc_data_n_tokens(ds, DSC_SPLIT_VAL), nf = 0;
    int32_t bos = dsc_tokenizer_bos(tok), eos = dsc_tokenizer_eos(tok);
    int32_t *fill = xmalloc((size_t)n * sizeof *fill);
    for (int64_t i = 0; i < n; i++)
        if (s[i] != bos && s[i] != eos) fill[nf++] = s[i];
    if (nf == 0) fail("%s", "the held-out documents hold no filler text");

    int64_t max_ctx = 0;
    for (int64_t c = 0; c < nc; c++) max_ctx = ctxs[c] > max_ctx ? ctxs[c] : max_ctx;
    dsc_ctx_t *ctx = eval_ctx(o, m, max_ctx);
    dsc_sampler_params sp = dsc_sampler_default_params();
    sp.temp = 0;
    sp.eos_id = eos;
    dsc_sampler_t *smp = NULL;
    dsc_err e = {0};
    if (dsc_sampler_new(&sp, dsc_model_config(m)->vocab_size, &smp, &e) != DSC_OK) cli_die(&e);
    int32_t *prompt = xmalloc((size_t)max_ctx * sizeof *prompt);
    int64_t *correct = calloc((size_t)(nc * nd), sizeof *correct);
    size_t pcap = cli_piece_cap(tok);
    char *ans = xmalloc(PK_GEN * pcap + 8);
    int64_t nq;
    int32_t *q = encode(tok, PASSKEY_QUESTION, &nq);
    int nb = dsc_tokenizer_adds_bos(tok) && bos >= 0;
    uint64_t tseed = o->eval.trial_seed_set ? o->eval.trial_seed : o->seed_set ? o->sp.seed : 0;
    uint64_t rng = tseed ^ 0x70A55CE7ull;
    double t0 = cli_now();

    for (int64_t c = 0; c < nc; c++)
        for (int64_t d = 0; d < nd; d++)
            for (int64_t tr = 0; tr < trials; tr++) {
                char key[16], needle[160];
                passkey_key(&rng, key);
                snprintf(needle, sizeof needle, PASSKEY_NEEDLE, key, key);
                int64_t nn;
                int32_t *nid = encode(tok, needle, &nn);
                int64_t P = ctxs[c] - PK_GEN, F = P - nb - nn - nq;
                if (F < 0) {
                    fprintf(stderr, "dsc: eval: --ctx-list %lld is too short for the passkey "
                            "prompt (needs at least %lld)\n", (long long)ctxs[c],
                            (long long)(nb + nn + nq + PK_GEN));
                    exit(1);
                }
                int64_t off = (int64_t)(passkey_rng(&rng) % (uint64_t)nf);
                int64_t a = (F * deps[d] + 50) / 100, np = 0;
                if (nb) prompt[np++] = bos;
                for (int64_t i = 0; i < a; i++) prompt[np++] = fill[(off + i) % nf];
                memcpy(prompt + np, nid, (size_t)nn * sizeof *nid);
                np += nn;
                for (int64_t i = a; i < F; i++) prompt[np++] = fill[(off + i) % nf];
                memcpy(prompt + np, q, (size_t)nq * sizeof *q);
                np += nq;
                free(nid);

                pk_answer pa = {{0}, 0};
                dsc_ctx_reset(ctx);
                if (dsc_generate(ctx, smp, prompt, np, PK_GEN, eos, pk_collect, &pa, NULL,
                                 &e) != DSC_OK)
                    cli_die(&e);
                dsc_detok_state st = {{0}, 0};
                int64_t len = 0;
                for (int i = 0; i < pa.n; i++) {
                    int64_t k = dsc_detokenize_piece(tok, pa.ids[i], 1, &st, ans + len,
                                                     (int64_t)pcap);
                    if (k > 0) len += k;
                }
                int64_t k = dsc_detok_flush(&st, ans + len, (int64_t)pcap);
                if (k > 0) len += k;
                ans[len] = 0;
                const char *p = ans;
                while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
                int ok = !strncmp(p, key, strlen(key));
                correct[d * nc + c] += ok;
                if (!o->quiet)
                    fprintf(stderr, "\rdsc: eval: passkey ctx %lld depth %lld%% trial %lld/%lld "
                            "key %s: %s  (%.1f s)   ", (long long)ctxs[c], (long long)deps[d],
                            (long long)tr + 1, (long long)trials, key,
                            ok ? "correct" : "wrong  ", cli_now() - t0);
            }
    if (!o->quiet) fprintf(stderr, "\n");

    printf("passkey accuracy (%%), %lld trials per cell (trial seed %llu), model %s\n",
           (long long)trials, (unsigned long long)tseed, o->model_dir);
    printf("%-12s", "depth\\ctx");
    for (int64_t c = 0; c < nc; c++) printf(" %8lld", (long long)ctxs[c]);
    printf("\n");
    for (int64_t d = 0; d < nd; d++) {
        printf("%-12lld", (long long)deps[d]);
        for (int64_t c = 0; c < nc; c++)
            printf(" %8.1f", 100.0 * (double)correct[d * nc + c] / (double)trials);
        printf("\n");
    }

    size_t plen = strlen(prefix) + 8;
    char *path = xmalloc(plen);
    snprintf(path, plen, "%s.csv", prefix);
    FILE *f = fopen(path, "wb");
    if (!f) fail("cannot write %s", path);
    fprintf(f, "ctx,depth,trials,correct\n");
    for (int64_t c = 0; c < nc; c++)
        for (int64_t d = 0; d < nd; d++)
            fprintf(f, "%lld,%lld,%lld,%lld\n", (long long)ctxs[c], (long long)deps[d],
                    (long long)trials, (long long)correct[d * nc + c]);
    if (fclose(f) != 0) fail("cannot write %s", path);
    if (!o->quiet) fprintf(stderr, "dsc: eval: wrote %s", path);
    snprintf(path, plen, "%s.svg", prefix);
    if (write_svg(path, o->model_dir, ctxs, nc, deps, nd, correct, trials) != 0)
        fail("cannot write %s", path);
    if (!o->quiet) fprintf(stderr, " and %s\n", path);

    free(path);
    free(q);
    free(ans);
    free(correct);
    free(prompt);
    free(fill);
    free(ctxs);
    free(deps);
    dsc_sampler_free(smp);
    dsc_ctx_free(ctx);
    return 0;
}

int cmd_eval(const cli_opts *o) {
    if (!o->train.data) fail("%s", "missing --data FILE (the text to evaluate on)");
    if (!o->eval.passkey && o->n_ctx > 0 && o->n_ctx < 2) {
        fprintf(stderr, "dsc: eval: --ctx %lld: a window needs at least 2 tokens\n",
                (long long)o->n_ctx);
        exit(1);
    }
    if (o->eval.passkey) {   /* check the lists before the slow part */
        int64_t k;
        free(parse_list(o->eval.ctx_list ? o->eval.ctx_list : "2", "--ctx-list", 2, INT32_MAX,
                        &k));
        free(parse_list(o->eval.depths ? o->eval.depths : "0", "--depths", 0, 100, &k));
    }
    dsc_tokenizer_t *tok = NULL;
    dsc_err e = {0};
    if (dsc_tokenizer_load(o->model_dir, &tok, &e) != DSC_OK) {
        fprintf(stderr, "dsc: eval: the model directory %s needs a tokenizer: %s\n",
                o->model_dir, e.msg);
        exit(1);
    }
    dsc_dataset_t *ds = load_heldout(o, tok);
    dsc_model_t *m = cli_load_model(o, NULL);
    int rc = o->eval.passkey ? eval_passkey(o, m, tok, ds) : eval_loss(o, m, ds);
    dsc_model_free(m);
    dsc_data_free(ds);
    dsc_tokenizer_free(tok);
    return rc;
}
