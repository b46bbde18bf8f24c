/*
 * test_cli.c - the dsc command line as outside checks call it: exact output
 * of `dsc logits`, the report of `dsc info`, and exit codes on bad input
 * (1 for a library error with a message on stderr, 2 for bad usage).
 */
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "test.h"

/* Run `dsc ARGS`, capturing stdout+stderr into tmpdir/out.txt; returns the
   exit status (or -1 if it did not exit normally, e.g. a crash). */
static int run(dsc_t *t, const char *args, char **output) {
    char cmd[2048], out[512];
    snprintf(out, sizeof out, "%s/out.txt", t->tmpdir);
    snprintf(cmd, sizeof cmd, "%s %s > '%s' 2>&1", t->dsc_bin, args, out);
    int st = system(cmd);
    if (output) *output = t_read_file(out, NULL);
    if (st == -1 || !WIFEXITED(st)) return -1;
    return WEXITSTATUS(st);
}

static void expect(dsc_t *t, const char *args, int code, const char *needle) {
    char *o = NULL;
    int st = run(t, args, &o);
    T_CHECK(t, st == code, "dsc %s: exit %d, expected %d; output: %s", args, st, code,
            o ? o : "");
    T_CHECK(t, !needle || (o && strstr(o, needle)), "dsc %s: output lacks \"%s\": %s", args,
            needle, o ? o : "");
    free(o);
}

static void logits_file(dsc_t *t, const char *name) {
    char p[256];
    size_t nid = 0, nref = 0, nout = 0;
    snprintf(p, sizeof p, "tests/fixtures/%s/ref_ids.i32", name);
    int32_t *ids = t_read_file(p, &nid);
    snprintf(p, sizeof p, "tests/fixtures/%s/ref_logits.f64", name);
    double *ref = t_read_file(p, &nref);
    T_CHECK(t, ids && ref, "fixture %s missing", name);
    if (!ids || !ref) goto done;
    char list[4096] = "", args[4600], path[512];
    size_t o = 0;
    for (size_t i = 0; i < nid / 4; i++)
        o += (size_t)snprintf(list + o, sizeof list - o, "%s%d", i ? "," : "", ids[i]);
    snprintf(path, sizeof path, "%s/logits.bin", t->tmpdir);
    snprintf(args, sizeof args, "logits -m tests/fixtures/%s --ids %s -o %s -t 2", name, list,
             path);
    expect(t, args, 0, NULL);
    float *lg = t_read_file(path, &nout);
    T_CHECK(t, lg && nout * 2 == nref, "logits file has %zu bytes, expected %zu", nout, nref / 2);
    /* same bar as the library parity test */
    if (lg && nout * 2 == nref)
        t_close_f64(t, name, lg, ref, (int64_t)(nout / 4), 1e-4, 0);
    free(lg);
done:
    free(ids);
    free(ref);
}

static void test_logits_file(dsc_t *t) {
    logits_file(t, "v3");
    logits_file(t, "v32");
}

static void test_info(dsc_t *t) {
    expect(t, "info -m tests/fixtures/v3", 0, "latent");
    expect(t, "info -m tests/fixtures/v3", 0, "1 module(s)");
    expect(t, "info -m tests/fixtures/v3_fp8", 0, "F8_E4M3");
    expect(t, "info -m tests/fixtures/v2_lite", 0, "active per token");
    expect(t, "info -m tests/fixtures/v32", 0, "index cache");
}

static void test_bad_usage(dsc_t *t) {
    char args[600];
    expect(t, "", 2, "usage");
    expect(t, "frobnicate", 2, "unknown command");
    expect(t, "info", 2, "-m");
    expect(t, "info -m tests/fixtures/no-such-model", 1, "no-such-model");
    expect(t, "logits -m tests/fixtures/v3 --ids 1,2,x -o /dev/null", 2, "token id");
    expect(t, "logits -m tests/fixtures/v3 --ids 1,,2 -o /dev/null", 2, "token id");
    expect(t, "logits -m tests/fixtures/v3 --ids 1,2", 2, "-o");
    expect(t, "logits -m tests/fixtures/v3 --ids 1,99999999 -o /dev/null", 1, "out of range");
    expect(t, "logits -m tests/fixtures/v3 --ids 1,-3 -o /dev/null", 1, "out of range");
    expect(t, "logits -m tests/fixtures/v3 --ids 1 -t 0 -o /dev/null", 2, "threads");
    snprintf(args, sizeof args, "logits -m tests/fixtures/v3 --ids 1 -o %s/no/such/dir/x",
             t->tmpdir);
    expect(t, args, 1, "cannot write");
    expect(t, "--help", 0, "logits");
}

/* "a b c\n" line of ids vs an int32 file. */
static void expect_ids(dsc_t *t, const char *args, const char *want_file) {
    size_t nw = 0;
    int32_t *want = t_read_file(want_file, &nw);
    char *o = NULL;
    int st = run(t, args, &o);
    T_CHECK(t, want && st == 0, "dsc %s: exit %d: %s", args, st, o ? o : "");
    if (want && o) {
        char *p = o;
        size_t i = 0;
        for (; i < nw / 4; i++) {
            char *end;
            long v = strtol(p, &end, 10);
            if (end == p || v != want[i]) break;
            p = end;
        }
        T_CHECK(t, i == nw / 4 && (*p == '\n' || *p == 0), "dsc %s: ids differ from %s at %zu: "
                "%s", args, want_file, i, o);
    }
    free(want);
    free(o);
}

static char *ids_arg(const char *file) {
    size_t n = 0;
    int32_t *ids = t_read_file(file, &n);
    char *s = malloc(16 * (n / 4) + 2);
    if (!s) return NULL;
    s[0] = 0;
    size_t o = 0;
    for (size_t i = 0; ids && i < n / 4; i++) o += (size_t)sprintf(s + o, "%s%d", i ? "," : "", ids[i]);
    free(ids);
    return s;
}

/* The contract outside checks use: greedy ids after --ids, one line. */
static void test_run_print_ids(dsc_t *t) {
    const char *names[] = {"v2_lite", "v3", "v3_fp8", "v32"};
    for (int f = 0; f < 4; f++) {
        char pf[256], gf[256], args[1024];
        snprintf(pf, sizeof pf, "tests/fixtures/%s/gen_prompt.i32", names[f]);
        snprintf(gf, sizeof gf, "tests/fixtures/%s/gen_ids.i32", names[f]);
        char *ids = ids_arg(pf);
        snprintf(args, sizeof args, "run -m tests/fixtures/%s --ids %s -n 24 --temp 0 "
                 "--ignore-eos --print-ids -q", names[f], ids ? ids : "");
        expect_ids(t, args, gf);
        free(ids);
    }
}

/* Text in, greedy ids out, through the brown tokenizer of fixture v3_tok. */
static void test_run_text(dsc_t *t) {
    char *prompt = t_read_file("tests/fixtures/v3_tok/gen_prompt.txt", NULL);
    T_CHECK(t, prompt != NULL, "v3_tok fixture missing");
    if (!prompt) return;
    char args[1024], path[512];
    snprintf(args, sizeof args, "run -m tests/fixtures/v3_tok -p '%s' -n 24 --temp 0 "
             "--ignore-eos --print-ids -q", prompt);
    expect_ids(t, args, "tests/fixtures/v3_tok/gen_ids.i32");
    /* tokenize: stdin -> the same prompt ids transformers gave */
    snprintf(path, sizeof path, "%s/prompt.txt", t->tmpdir);
    t_write_file(path, prompt, strlen(prompt));
    snprintf(args, sizeof args, "tokenize -m tests/fixtures/v3_tok < %s", path);
    expect_ids(t, args, "tests/fixtures/v3_tok/gen_prompt.i32");
    /* detokenize the prompt ids (without BOS) gives the text back */
    char *ids = ids_arg("tests/fixtures/v3_tok/gen_prompt.i32");
    char *comma = ids ? strchr(ids, ',') : NULL;
    snprintf(args, sizeof args, "detokenize -m tests/fixtures/v3_tok --ids %s",
             comma ? comma + 1 : "0");
    char *o = NULL;
    int st = run(t, args, &o);
    T_CHECK(t, st == 0 && o && !strcmp(o, prompt), "detokenize gave [%s], want [%s]",
            o ? o : "", prompt);
    free(o);
    free(ids);
    /* text streaming works and the timings report the caches */
    snprintf(args, sizeof args, "run -m tests/fixtures/v3_tok -p '%s' -n 8 --temp 0.8 --seed 4",
             prompt);
    expect(t, args, 0, "prompt eval time");
    expect(t, args, 0, "KV cache");
    free(prompt);
}

/* chat over a pipe: two turns, then /exit; positions grow across turns */
static void test_chat(dsc_t *t) {
    char path[512], args[1024];
    snprintf(path, sizeof path, "%s/chat.txt", t->tmpdir);
    const char *in = "Hello there\nAnd again\n/exit\n";
    t_write_file(path, in, strlen(in));
    snprintf(args, sizeof args, "chat -m tests/fixtures/v3_tok -n 6 --temp 0 < %s", path);
    char *o = NULL;
    int st = run(t, args, &o);
    T_CHECK(t, st == 0, "chat exit %d: %s", st, o ? o : "");
    /* the second turn's report shows more positions used than the first's */
    const char *a = o ? strstr(o, "positions used") : NULL;
    const char *b = a ? strstr(a + 1, "positions used") : NULL;
    T_CHECK(t, a && b, "chat did not report two turns: %s", o ? o : "");
    free(o);
    expect(t, "chat -m tests/fixtures/v3 < /dev/null", 1, "tokenizer");
}

static void test_run_limits(dsc_t *t) {
    /* same seed, same output */
    char *a = NULL, *b = NULL;
    const char *args = "run -m tests/fixtures/v3 --ids 5,17,42 -n 16 --temp 1.0 --top-k 0 "
                       "--top-p 1 --min-p 0 --seed 11 --ignore-eos --print-ids -q";
    run(t, args, &a);
    run(t, args, &b);
    T_CHECK(t, a && b && !strcmp(a, b) && strlen(a) > 16, "same seed: [%s] vs [%s]", a ? a : "",
            b ? b : "");
    free(a);
    free(b);
    expect(t, "run -m tests/fixtures/v3 --ids 1,2,3 -c 6 -n 50 --temp 0 --ignore-eos", 0,
           "context full");
    expect(t, "run -m tests/fixtures/v3 --ids 1,2,3,4 -c 3 -n 2", 1, "does not fit");
    expect(t, "run -m tests/fixtures/v3 -p hello -n 2", 1, "--ids");
    expect(t, "run -m tests/fixtures/v3 -n 2", 2, "exactly one of");
    expect(t, "run -m tests/fixtures/v3 --ids 1 --temp x", 2, "--temp");
    expect(t, "run -m tests/fixtures/v3 --ids 1 --top-p 2", 2, "--top-p");
    expect(t, "run -m tests/fixtures/v3 --ids 1 --bogus", 2, "unknown option");
    expect(t, "tokenize -m tests/fixtures/v3 < /dev/null", 1, "tokenizer.json");
    expect(t, "detokenize -m tests/fixtures/v3_tok --ids 999999", 1, "out of range");
}

const dsc_test_case dsc_tests_cli[] = {
    {"run_print_ids", test_run_print_ids},
    {"run_text", test_run_text},
    {"run_limits", test_run_limits},
    {"chat", test_chat},
    {"logits_file", test_logits_file},
    {"info", test_info},
    {"bad_usage", test_bad_usage},
    {NULL, NULL},
};
