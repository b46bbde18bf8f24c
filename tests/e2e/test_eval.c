/*
 * test_eval.c - `dsc eval` (cli/eval.c) on tests/fixtures/dsc_trained (a
 * tiny model written by dsc train, with the brown tokenizer) and a text of
 * generated documents written here:
 *  - the loss line equals the mean next-token CE computed in this file from
 *    dsc_forward logits over the same held-out windows (stride --ctx, a fresh
 *    cache per window, the last one shorter);
 *  - --passkey prints a 3 x 2 table and writes a well-formed SVG heat map and
 *    a CSV of 6 rows;
 *  - bad input (no --data, no held-out text, --ctx 1, bad lists, a context
 *    too short for the prompt) exits 1 with a message.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "test.h"
#include "train/data.h"

#define MODEL "tests/fixtures/dsc_trained"

/* Run `dsc ARGS`, stdout into tmpdir/eval_out.txt and stderr into
   tmpdir/eval_err.txt; returns the exit status (-1: no normal exit). */
static int run(dsc_t *t, const char *args, char **out, char **err) {
    char cmd[4096], po[512], pe[512];
    snprintf(po, sizeof po, "%s/eval_out.txt", t->tmpdir);
    snprintf(pe, sizeof pe, "%s/eval_err.txt", t->tmpdir);
    snprintf(cmd, sizeof cmd, "%s %s > '%s' 2> '%s'", t->dsc_bin, args, po, pe);
    int st = system(cmd);
    if (out) *out = t_read_file(po, NULL);
    if (err) *err = t_read_file(pe, NULL);
    if (st == -1 || !WIFEXITED(st)) return -1;
    return WEXITSTATUS(st);
}

/* 60 documents of 6 sentences over the fixture's training words, blank
   lines between them; the path in buf. */
static const char *data_file(dsc_t *t, char *buf, size_t cap) {
    snprintf(buf, cap, "%s/eval_data.txt", t->tmpdir);
    FILE *f = fopen(buf, "w");
    T_CHECK(t, f != NULL, "cannot write %s", buf);
    if (!f) return buf;
    static const char *w[] = {"the", "river", "dog", "garden", "young", "small", "big", "cat",
                              "sat", "ran", "behind", "stayed", "arrived", "red", "house"};
    t_rng r = {11};
    for (int d = 0; d < 60; d++) {
        if (d) fputs("\n\n", f);
        for (int s = 0; s < 6; s++) {
            fputs(s ? " The" : "The", f);
            for (int k = 0; k < 7; k++) fprintf(f, " %s", w[t_rng_u64(&r) % 15]);
            fputc('.', f);
        }
    }
    fputc('\n', f);
    fclose(f);
    return buf;
}

/* The held-out loss, computed here: split with data.h, windows of N, one
   dsc_forward per window, log-softmax in double. */
static double heldout_ce(dsc_t *t, const char *data, int64_t N, double vf, uint64_t seed,
                         int64_t *count) {
    dsc_err e = {0};
    dsc_tokenizer_t *tok = NULL;
    dsc_dataset_t *ds = NULL;
    dsc_model_t *m = NULL;
    dsc_ctx_t *ctx = NULL;
    double sum = 0;
    *count = 0;
    T_CHECK(t, dsc_tokenizer_load(MODEL, &tok, &e) == DSC_OK, "%s", e.msg);
    dsc_data_params dp = dsc_data_default_params();
    dp.seq_len = N;
    dp.val_fraction = vf;
    dp.seed = seed;
    if (tok) T_CHECK(t, dsc_data_load(data, tok, &dp, &ds, &e) == DSC_OK, "%s", e.msg);
    m = t_load_fixture(t, "dsc_trained");
    if (ds && m) {
        dsc_ctx_params p = dsc_ctx_default_params();
        p.n_ctx = p.n_batch = N;
        ctx = t_new_ctx(t, m, &p);
    }
    if (ctx) {
        const int32_t *s = dsc_data_stream(ds, DSC_SPLIT_VAL);
        int64_t n = dsc_data_n_tokens(ds, DSC_SPLIT_VAL), V = dsc_model_config(m)->vocab_size;
        float *lg = malloc((size_t)(N * V) * sizeof *lg);
        for (int64_t s0 = 0; lg && s0 + 1 < n; s0 += N) {
            int64_t len = n - 1 - s0 < N ? n - 1 - s0 : N;
            dsc_ctx_reset(ctx);
            T_CHECK(t, dsc_forward(ctx, s + s0, len, 0, lg, &e) == DSC_OK, "%s", e.msg);
            for (int64_t i = 0; i < len; i++) {
                const float *l = lg + i * V;
                double mx = -INFINITY, z = 0;
                for (int64_t v = 0; v < V; v++) mx = l[v] > mx ? l[v] : mx;
                for (int64_t v = 0; v < V; v++) z += exp((double)l[v] - mx);
                sum += mx + log(z) - (double)l[s[s0 + i + 1]];
            }
            *count += len;
        }
        free(lg);
    }
    dsc_ctx_free(ctx);
    dsc_model_free(m);
    dsc_data_free(ds);
    dsc_tokenizer_free(tok);
    return *count ? sum / (double)*count : NAN;
}

static void test_loss_matches(dsc_t *t) {
    if (!t->dsc_bin) return;
    char data[512], args[1024];
    data_file(t, data, sizeof data);
    /* two splits: the default one and another --val-frac / --seed */
    static const struct { double vf; unsigned seed; const char *opt; } sp[] = {
        {0.05, 0, ""}, {0.2, 3, "--val-frac 0.2 --seed 3"}};
    for (int k = 0; k < 2; k++) {
        snprintf(args, sizeof args, "eval -m " MODEL " --data %s --ctx 32 -t 2 %s", data,
                 sp[k].opt);
        char *out = NULL, *err = NULL;
        int st = run(t, args, &out, &err);
        T_CHECK(t, st == 0, "dsc %s: exit %d: %s", args, st, err ? err : "");
        long long ctx = 0, tokens = 0;
        double loss = NAN, ppl = NAN;
        int got = out ? sscanf(out, "eval: ctx %lld tokens %lld loss %lf ppl %lf", &ctx, &tokens,
                               &loss, &ppl) : 0;
        T_CHECK(t, got == 4, "unexpected result line: %s", out ? out : "(none)");
        int64_t count = 0;
        double want = heldout_ce(t, data, 32, sp[k].vf, sp[k].seed, &count);
        if (got == 4) {
            T_CHECK(t, ctx == 32, "ctx %lld", ctx);
            T_CHECK(t, tokens == count && count > 32, "tokens %lld, expected %lld", tokens,
                    (long long)count);
            /* the same forward passes in both (only the thread count may
               differ); the line prints 8 decimals: 1e-6 covers rounding and
               reduction order */
            T_CHECK(t, fabs(loss - want) <= 1e-6, "split %d: loss %.8f, in-process %.8f", k,
                    loss, want);
            T_CHECK(t, fabs(ppl - exp(want)) <= 1e-3 * exp(want), "ppl %.4f vs exp(loss) %.4f",
                    ppl, exp(want));
            fprintf(stderr, "    eval: split %d: cli %.8f, in-process %.8f (|d| %.2g), %lld "
                    "tokens\n", k, loss, want, fabs(loss - want), (long long)count);
        }
        free(out);
        free(err);
    }
}

static int count_of(const char *s, const char *needle) {
    int n = 0;
    for (const char *p = s; s && (p = strstr(p, needle)); p += strlen(needle)) n++;
    return n;
}

/* The first 4 keys of the passkey progress lines ("... key 123456: ..."),
   comma-separated, into buf ("" if none). */
static void keys_of(const char *err, char *buf, size_t cap) {
    buf[0] = 0;
    size_t len = 0;
    const char *p = err;
    for (int n = 0; p && n < 4 && (p = strstr(p, " key ")); n++) {
        p += 5;
        size_t k = strspn(p, "0123456789");
        if (len + k + 2 > cap) break;
        memcpy(buf + len, p, k);
        len += k;
        buf[len++] = ',';
        buf[len] = 0;
    }
}

static void test_passkey(dsc_t *t) {
    if (!t->dsc_bin) return;
    char data[512], args[2048], prefix[512], path[600];
    data_file(t, data, sizeof data);
    snprintf(prefix, sizeof prefix, "%s/pk", t->tmpdir);
    snprintf(args, sizeof args,
             "eval -m " MODEL " --data %s --passkey --ctx-list 64,96 --depths 0,50,100 "
             "--trials 2 --seed 4 -t 2 -o %s", data, prefix);
    char *out = NULL, *err = NULL;
    int st = run(t, args, &out, &err);
    T_CHECK(t, st == 0, "dsc %s: exit %d: %s", args, st, err ? err : "");
    /* table: a header, a column line, then one row per depth with 2 cells */
    T_CHECK(t, out && strstr(out, "passkey accuracy") && strstr(out, "depth\\ctx"),
            "no table: %s", out ? out : "");
    int cells = 0, rows = 0;
    for (const char *p = out ? strstr(out, "depth\\ctx") : NULL; p && (p = strchr(p, '\n'));) {
        p++;
        long long d;
        double a, b;
        if (sscanf(p, "%lld %lf %lf", &d, &a, &b) == 3) {
            rows++;
            cells += 2;
            T_CHECK(t, a >= 0 && a <= 100 && b >= 0 && b <= 100, "cell out of range: %.40s", p);
        }
    }
    T_CHECK(t, rows == 3 && cells == 6, "table has %d rows / %d cells: %s", rows, cells,
            out ? out : "");
    snprintf(path, sizeof path, "%s.svg", prefix);
    char *svg = t_read_file(path, NULL);
    T_CHECK(t, svg != NULL, "no %s", path);
    if (svg) {
        T_CHECK(t, !strncmp(svg, "<svg", 4) || !strncmp(svg, "<?xml", 5), "SVG header: %.40s",
                svg);
        T_CHECK(t, strstr(svg, "</svg>") != NULL, "SVG not closed");
        T_CHECK(t, count_of(svg, "<rect") >= 6, "%d <rect in the SVG", count_of(svg, "<rect"));
        T_CHECK(t, strstr(svg, "context length") && strstr(svg, "depth (%)"), "axis labels");
    }
    snprintf(path, sizeof path, "%s.csv", prefix);
    char *csv = t_read_file(path, NULL);
    T_CHECK(t, csv != NULL, "no %s", path);
    if (csv) {
        T_CHECK(t, !strncmp(csv, "ctx,depth,trials,correct\n", 25), "CSV header: %.40s", csv);
        T_CHECK(t, count_of(csv, "\n") == 7, "CSV has %d lines, expected 7", count_of(csv, "\n"));
        int n64 = count_of(csv, "\n64,"), n96 = count_of(csv, "\n96,");
        T_CHECK(t, n64 == 3 && n96 == 3, "CSV rows: %d x 64, %d x 96", n64, n96);
    }

    /* --trial-seed: by default the draws are seeded by --seed, so naming that
       seed draws the same keys (the progress lines name them) and changes
       nothing; another seed draws other keys and is named in the header. */
    char *out2 = NULL, *err2 = NULL, *csv2 = NULL;
    snprintf(args, sizeof args,
             "eval -m " MODEL " --data %s --passkey --ctx-list 64,96 --depths 0,50,100 "
             "--trials 2 --seed 4 --trial-seed 4 -t 2 -o %s2", data, prefix);
    st = run(t, args, &out2, &err2);
    T_CHECK(t, st == 0, "dsc %s: exit %d: %s", args, st, err2 ? err2 : "");
    T_CHECK(t, out && out2 && !strcmp(out, out2), "--trial-seed 4 changed the table:\n%s\n%s",
            out ? out : "", out2 ? out2 : "");
    char keys[2][64];
    keys_of(err, keys[0], sizeof keys[0]);
    keys_of(err2, keys[1], sizeof keys[1]);
    T_CHECK(t, keys[0][0] && !strcmp(keys[0], keys[1]), "--trial-seed 4 drew other keys: %s / %s",
            keys[0], keys[1]);
    T_CHECK(t, out && strstr(out, "(trial seed 4)"), "header lacks the trial seed: %s",
            out ? out : "");
    snprintf(path, sizeof path, "%s2.csv", prefix);
    csv2 = t_read_file(path, NULL);
    T_CHECK(t, csv && csv2 && !strcmp(csv, csv2), "--trial-seed 4 changed the CSV");
    free(out2);
    free(err2);
    out2 = NULL;
    err2 = NULL;
    snprintf(args, sizeof args,
             "eval -m " MODEL " --data %s --passkey --ctx-list 64,96 --depths 0,50,100 "
             "--trials 2 --seed 4 --trial-seed 5 -t 2 -o %s3", data, prefix);
    st = run(t, args, &out2, &err2);
    T_CHECK(t, st == 0 && out2 && strstr(out2, "(trial seed 5)"), "--trial-seed 5: exit %d: %s",
            st, out2 ? out2 : "");
    keys_of(err2, keys[1], sizeof keys[1]);
    T_CHECK(t, keys[1][0] && strcmp(keys[0], keys[1]), "--trial-seed 5 drew the same keys: %s",
            keys[1]);
    free(err2);
    snprintf(args, sizeof args, "eval -m " MODEL " --data %s --passkey --trial-seed ' -1'", data);
    st = run(t, args, NULL, NULL);
    T_CHECK(t, st == 2, "--trial-seed ' -1': exit %d, expected 2", st);
    free(out2);
    free(csv2);
    free(svg);
    free(csv);
    free(out);
    free(err);
}

static void test_bad_input(dsc_t *t) {
    if (!t->dsc_bin) return;
    char data[512], args[1024];
    data_file(t, data, sizeof data);
    static const struct { const char *opts, *msg; } cases[] = {
        {"", "missing --data"},
        {"--data %s --ctx 1", "at least 2 tokens"},
        {"--data %s --val-frac 0", "no held-out tokens"},
        {"--data /nonexistent/eval.txt", "cannot read"},
        {"--data %s --passkey --ctx-list 64,x", "bad --ctx-list"},
        {"--data %s --passkey --ctx-list 64,", "bad --ctx-list"},
        {"--data %s --passkey --ctx-list 1", "bad --ctx-list"},
        {"--data %s --passkey --depths 0,101", "bad --depths"},
        {"--data %s --passkey --ctx-list 12 --depths 50", "too short"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char opts[700];
        snprintf(opts, sizeof opts, cases[i].opts, data);
        snprintf(args, sizeof args, "eval -m " MODEL " %s -o %s/bad", opts, t->tmpdir);
        char *err = NULL;
        int st = run(t, args, NULL, &err);
        T_CHECK(t, st == 1, "dsc %s: exit %d, expected 1: %s", args, st, err ? err : "");
        T_CHECK(t, err && strstr(err, cases[i].msg), "dsc %s: stderr lacks \"%s\": %s", args,
                cases[i].msg, err ? err : "");
        free(err);
    }
}

const dsc_test_case dsc_tests_eval[] = {
    {"loss_matches", test_loss_matches},
    {"passkey", test_passkey},
    {"bad_input", test_bad_input},
    {NULL, NULL},
};
