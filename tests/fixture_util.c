/*
 * fixture_util.c - loading the committed reference fixtures
 * (tests/fixtures/<name>/), shared by the model-level test files.
 */
#include <stdlib.h>

#include "dsc.h"
#include "test.h"

dsc_model_t *t_load_fixture(dsc_t *t, const char *name) {
    char dir[256];
    snprintf(dir, sizeof dir, "tests/fixtures/%s", name);
    dsc_model_t *m = NULL;
    dsc_err e = {0};
    dsc_status s = dsc_model_load(dir, &m, &e);
    T_CHECK(t, s == DSC_OK, "load %s: %s", dir, e.msg);
    return m;
}

int32_t *t_fixture_ids(const char *name, const char *file, int64_t *n) {
    char p[256];
    size_t len = 0;
    snprintf(p, sizeof p, "tests/fixtures/%s/%s", name, file);
    int32_t *ids = t_read_file(p, &len);
    *n = (int64_t)(len / 4);
    return ids;
}

dsc_ctx_t *t_new_ctx(dsc_t *t, const dsc_model_t *m, const dsc_ctx_params *p) {
    dsc_ctx_t *c = NULL;
    dsc_err e = {0};
    T_CHECK(t, dsc_ctx_new(m, p, &c, &e) == DSC_OK, "ctx: %s", e.msg);
    return c;
}
