/*
 * runner.c - runs every test suite and ends with the line
 * "N passed, N failed"; exits 1 if any case failed.
 *
 * usage: dsc_tests [--dsc PATH] [FILTER]
 *   --dsc PATH  the dsc binary, for the CLI tests (default build/dsc)
 *   FILTER      run only cases whose "suite/name" contains FILTER
 */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "test.h"

extern const dsc_test_case dsc_tests_kernels[];
extern const dsc_test_case dsc_tests_kernels_exp[];
extern const dsc_test_case dsc_tests_safetensors[];
extern const dsc_test_case dsc_tests_config[];
extern const dsc_test_case dsc_tests_model[];
extern const dsc_test_case dsc_tests_tokenizer[];
extern const dsc_test_case dsc_tests_sampler[];
extern const dsc_test_case dsc_tests_generate[];
extern const dsc_test_case dsc_tests_dsa[];
extern const dsc_test_case dsc_tests_dsa_train[];
extern const dsc_test_case dsc_tests_train_ops[];
extern const dsc_test_case dsc_tests_idx_ops[];
extern const dsc_test_case dsc_tests_idx_target[];
extern const dsc_test_case dsc_tests_idx_fast[];
extern const dsc_test_case dsc_tests_tk[];
extern const dsc_test_case dsc_tests_tk_sparse[];
extern const dsc_test_case dsc_tests_train_io[];
extern const dsc_test_case dsc_tests_train_model[];
extern const dsc_test_case dsc_tests_train_parity[];
extern const dsc_test_case dsc_tests_trained_ckpt[];
extern const dsc_test_case dsc_tests_cli[];
extern const dsc_test_case dsc_tests_train_cli[];
extern const dsc_test_case dsc_tests_eval[];
extern const dsc_test_case dsc_tests_passkey_mix[];
extern const dsc_test_case dsc_tests_spec[];
extern const dsc_test_case dsc_tests_nsa[];
extern const dsc_test_case dsc_tests_nsa_fast[];
extern const dsc_test_case dsc_tests_nsa_align[];
extern const dsc_test_case dsc_tests_nsa_decode[];
extern const dsc_test_case dsc_tests_nsa_decode_fast[];
extern const dsc_test_case dsc_tests_nsa_model[];
extern const dsc_test_case dsc_tests_nsa_infer[];
extern const dsc_test_case dsc_tests_threads[];

static const struct {
    const char *name;
    const dsc_test_case *cases;
} suites[] = {
    {"kernels", dsc_tests_kernels},
    {"kernels_exp", dsc_tests_kernels_exp},
    {"threads", dsc_tests_threads},
    {"safetensors", dsc_tests_safetensors},
    {"config", dsc_tests_config},
    {"model", dsc_tests_model},
    {"tokenizer", dsc_tests_tokenizer},
    {"sampler", dsc_tests_sampler},
    {"generate", dsc_tests_generate},
    {"dsa", dsc_tests_dsa},
    {"dsa_train", dsc_tests_dsa_train},
    {"train_ops", dsc_tests_train_ops},
    {"idx_ops", dsc_tests_idx_ops},
    {"idx_target", dsc_tests_idx_target},
    {"idx_fast", dsc_tests_idx_fast},
    {"tk", dsc_tests_tk},
    {"tk_sparse", dsc_tests_tk_sparse},
    {"train_io", dsc_tests_train_io},
    {"train_model", dsc_tests_train_model},
    {"train_parity", dsc_tests_train_parity},
    {"trained_ckpt", dsc_tests_trained_ckpt},
    {"cli", dsc_tests_cli},
    {"train_cli", dsc_tests_train_cli},
    {"eval", dsc_tests_eval},
    {"passkey_mix", dsc_tests_passkey_mix},
    {"spec", dsc_tests_spec},
    {"nsa", dsc_tests_nsa},
    {"nsa_fast", dsc_tests_nsa_fast},
    {"nsa_align", dsc_tests_nsa_align},
    {"nsa_decode", dsc_tests_nsa_decode},
    {"nsa_decode_fast", dsc_tests_nsa_decode_fast},
    {"nsa_model", dsc_tests_nsa_model},
    {"nsa_infer", dsc_tests_nsa_infer},
};

void t_fail(dsc_t *t, const char *file, int line, const char *fmt, ...) {
    t->failures++;
    fprintf(stderr, "    FAIL %s (%s:%d): ", t->name, file, line);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

static double close_any(dsc_t *t, const char *what, const float *got, const float *wf,
                        const double *wd, int64_t n, double atol, double rtol) {
    double maxd = 0.0;
    int64_t worst = -1;
    double worst_excess = 0.0;
    int64_t nan_at = -1;
    for (int64_t i = 0; i < n; i++) {
        double g = got[i], w = wf ? (double)wf[i] : wd[i];
        if (isnan(g) || isnan(w)) {
            if (nan_at < 0) nan_at = i;
            continue;
        }
        double d = fabs(g - w);
        if (d > maxd) maxd = d;
        double excess = d - (atol + rtol * fabs(w));
        if (excess > 0 && (worst < 0 || excess > worst_excess)) {
            worst = i;
            worst_excess = excess;
        }
    }
    if (nan_at >= 0)
        t_fail(t, __FILE__, __LINE__, "%s: NaN at index %lld", what, (long long)nan_at);
    if (worst >= 0) {
        double w = wf ? (double)wf[worst] : wd[worst];
        t_fail(t, __FILE__, __LINE__,
               "%s: index %lld got %.9g want %.9g (|d|=%.3g > atol %.1g + rtol %.1g); "
               "max |d| %.3g over %lld values",
               what, (long long)worst, (double)got[worst], w, fabs(got[worst] - w), atol,
               rtol, maxd, (long long)n);
    }
    return maxd;
}

double t_close_f32(dsc_t *t, const char *what, const float *got, const float *want,
                   int64_t n, double atol, double rtol) {
    return close_any(t, what, got, want, NULL, n, atol, rtol);
}

double t_close_f64(dsc_t *t, const char *what, const float *got, const double *want,
                   int64_t n, double atol, double rtol) {
    return close_any(t, what, got, NULL, want, n, atol, rtol);
}

uint64_t t_rng_u64(t_rng *r) {
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

float t_rng_uniform(t_rng *r) { return (float)((t_rng_u64(r) >> 40) * (1.0 / 16777216.0)); }

float t_rng_normal(t_rng *r) {
    double u1 = ((t_rng_u64(r) >> 11) + 1.0) * (1.0 / 9007199254740993.0);
    double u2 = (t_rng_u64(r) >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

void *t_palloc(t_pool *pl, int64_t bytes) {
    void *p = calloc(1, (size_t)(bytes > 0 ? bytes : 1));
    if (!p || pl->n >= (int)(sizeof pl->p / sizeof pl->p[0])) abort();
    pl->p[pl->n++] = p;
    return p;
}

void t_pool_free(t_pool *pl) {
    for (int i = 0; i < pl->n; i++) free(pl->p[i]);
    pl->n = 0;
}

double *t_dalloc(t_pool *pl, int64_t n) { return t_palloc(pl, n * (int64_t)sizeof(double)); }
float *t_falloc(t_pool *pl, int64_t n) { return t_palloc(pl, n * (int64_t)sizeof(float)); }

double *t_rnd(t_pool *pl, t_rng *r, int64_t n, double scale) {
    double *x = t_dalloc(pl, n);
    for (int64_t i = 0; i < n; i++) x[i] = (double)(float)(t_rng_normal(r) * scale);
    return x;
}

float *t_to_f32(t_pool *pl, const double *x, int64_t n) {
    if (!x) return NULL;
    float *y = t_falloc(pl, n);
    for (int64_t i = 0; i < n; i++) y[i] = (float)x[i];
    return y;
}

int t_run_dsc(dsc_t *t, const char *name, const char *args, char **out) {
    char cmd[4096], path[512];
    snprintf(path, sizeof path, "%s/%s", t->tmpdir, name);
    snprintf(cmd, sizeof cmd, "%s %s > '%s' 2>&1", t->dsc_bin, args, path);
    int st = system(cmd);
    if (out) *out = t_read_file(path, NULL);
    if (st == -1 || !WIFEXITED(st)) return -1;
    return WEXITSTATUS(st);
}

int t_log_steps(const char *log, const char *key, int max_step, double *v, char (*text)[32]) {
    int n = 0;
    size_t kl = strlen(key);
    for (const char *p = log; p && (p = strstr(p, "step ")); p++) {
        int step, tot;
        const char *q = strstr(p, key), *nl = strchr(p, '\n');
        char num[32];
        if (sscanf(p, "step %d/%d", &step, &tot) != 2 || step < 1 || step > max_step || !q ||
            (nl && q > nl) || sscanf(q + kl, "%31s", num) != 1)
            continue;
        if (v) v[step] = atof(num);
        if (text) snprintf(text[step], sizeof text[0], "%s", num);
        n++;
    }
    return n;
}

void t_write_words(dsc_t *t, const char *name, int lines, char *path, size_t cap) {
    static const char *w[] = {"the", "cat", "sat", "on", "a", "mat", "and", "dog",
                              "ran", "to", "big", "red", "house", "while", "birds", "sang"};
    snprintf(path, cap, "%s/%s", t->tmpdir, name);
    FILE *f = fopen(path, "w");
    T_CHECK(t, f != NULL, "cannot write %s", path);
    if (!f) return;
    t_rng r = {42};
    for (int i = 0; i < lines; i++) {
        int n = 4 + (int)(t_rng_u64(&r) % 8);
        for (int j = 0; j < n; j++) fprintf(f, "%s%s", j ? " " : "", w[t_rng_u64(&r) % 16]);
        fprintf(f, ".\n%s", i % 10 == 9 ? "\n" : "");
    }
    fclose(f);
}

void *t_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    if (n < 0) {
        fclose(f);
        return NULL;
    }
    char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) {
        buf[n] = 0;
        if (len) *len = (size_t)n;
    }
    return buf;
}

int t_write_file(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = fwrite(data, 1, len, f);
    return (fclose(f) == 0 && w == len) ? 0 : -1;
}

int main(int argc, char **argv) {
    const char *filter = NULL;
    dsc_t t = {0};
    t.dsc_bin = "build/dsc";
    /* default: the dsc built next to this binary (BUILD=... builds both) */
    static char self_dsc[4096];
    const char *slash = strrchr(argv[0], '/');
    if (slash && (size_t)(slash - argv[0]) + 5 < sizeof self_dsc) {
        snprintf(self_dsc, sizeof self_dsc, "%.*s/dsc", (int)(slash - argv[0]), argv[0]);
        t.dsc_bin = self_dsc;
    }
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--dsc") && i + 1 < argc)
            t.dsc_bin = argv[++i];
        else
            filter = argv[i];
    }
    char tmpl[] = "/tmp/dsc_tests.XXXXXX";
    if (!mkdtemp(tmpl)) {
        perror("mkdtemp");
        return 2;
    }
    t.tmpdir = tmpl;

    int passed = 0, failed = 0;
    for (size_t s = 0; s < sizeof suites / sizeof suites[0]; s++) {
        for (const dsc_test_case *c = suites[s].cases; c->name; c++) {
            char full[256];
            snprintf(full, sizeof full, "%s/%s", suites[s].name, c->name);
            if (filter && !strstr(full, filter)) continue;
            t.name = full;
            t.failures = 0;
            c->fn(&t);
            if (t.failures) {
                failed++;
                printf("FAIL %s\n", full);
            } else {
                passed++;
                printf("ok   %s\n", full);
            }
            fflush(stdout);
        }
    }
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpl);
    if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", tmpl);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
