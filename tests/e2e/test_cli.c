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

static void test_logits_file(dsc_t *t) {
    size_t nid = 0, nref = 0, nout = 0;
    int32_t *ids = t_read_file("tests/fixtures/v3/ref_ids.i32", &nid);
    double *ref = t_read_file("tests/fixtures/v3/ref_logits.f64", &nref);
    T_CHECK(t, ids && ref, "fixture v3 missing");
    if (!ids || !ref) goto done;
    char list[4096] = "", args[4600], path[512];
    size_t o = 0;
    for (size_t i = 0; i < nid / 4; i++)
        o += (size_t)snprintf(list + o, sizeof list - o, "%s%d", i ? "," : "", ids[i]);
    snprintf(path, sizeof path, "%s/logits.bin", t->tmpdir);
    snprintf(args, sizeof args, "logits -m tests/fixtures/v3 --ids %s -o %s -t 2", list, path);
    expect(t, args, 0, NULL);
    float *lg = t_read_file(path, &nout);
    T_CHECK(t, lg && nout * 2 == nref, "logits file has %zu bytes, expected %zu", nout, nref / 2);
    /* same bar as the library parity test */
    if (lg && nout * 2 == nref) t_close_f64(t, "dsc logits v3", lg, ref, (int64_t)(nout / 4), 1e-4, 0);
    free(lg);
done:
    free(ids);
    free(ref);
}

static void test_info(dsc_t *t) {
    expect(t, "info -m tests/fixtures/v3", 0, "latent");
    expect(t, "info -m tests/fixtures/v3", 0, "NOT used");
    expect(t, "info -m tests/fixtures/v3_fp8", 0, "F8_E4M3");
    expect(t, "info -m tests/fixtures/v2_lite", 0, "active per token");
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

const dsc_test_case dsc_tests_cli[] = {
    {"logits_file", test_logits_file},
    {"info", test_info},
    {"bad_usage", test_bad_usage},
    {NULL, NULL},
};
