/*
 * test_trained_ckpt.c - a checkpoint written by `dsc train` is a Hugging Face
 * checkpoint: transformers' DeepseekV3ForCausalLM loads it (no missing or
 * unexpected keys) and its logits equal dsc's.
 *
 * Fixture tests/fixtures/dsc_trained/ (tests/reference/make_trained_ckpt_fixture.py):
 * the config.json, model.safetensors (F32) and tokenizer files that
 * `dsc train` wrote after 30 steps on a tiny V3 model (1 dense + 2 MoE layers,
 * noaux_tc, q_lora, YaRN); ref_logits.f64 are transformers' float64 logits of
 * that directory for the ids in ref_ids.i32 (router margins >= 1e-3, so an
 * fp32 engine routes as the reference does).
 *
 * Checked through the binary (`dsc logits`, as test_cli.c) and through the
 * library (dsc_model_load + dsc_forward, absorbed and naive MLA).
 * Tolerance: max |logit diff| <= 1e-4, the bar of the other parity tests
 * (fp32 rounding gives ~2e-6 on this model; |logits| < 5).
 */
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "dsc.h"
#include "test.h"

#define FIX "dsc_trained"
#define VOCAB 4096
#define TOL 1e-4

typedef struct {
    int32_t *ids;
    int64_t n;
    double *ref;
} ref_t;

static int load_ref(dsc_t *t, ref_t *r) {
    size_t nref = 0;
    r->ids = t_fixture_ids(FIX, "ref_ids.i32", &r->n);
    r->ref = t_read_file("tests/fixtures/" FIX "/ref_logits.f64", &nref);
    int ok = r->ids && r->ref && r->n > 0 && nref == (size_t)r->n * VOCAB * 8;
    T_CHECK(t, ok, "fixture %s: missing or inconsistent ref files (%lld ids, %zu logit bytes)", FIX,
            (long long)r->n, nref);
    if (!ok) {
        free(r->ids);
        free(r->ref);
    }
    return ok;
}

/* `dsc logits` on the trained checkpoint equals transformers' logits. */
static void test_cli_logits(dsc_t *t) {
    ref_t r;
    if (!load_ref(t, &r)) return;
    char list[2048] = "", cmd[4096], out[512], log[512];
    size_t o = 0;
    for (int64_t i = 0; i < r.n; i++)
        o += (size_t)snprintf(list + o, sizeof list - o, "%s%d", i ? "," : "", r.ids[i]);
    snprintf(out, sizeof out, "%s/trained_logits.bin", t->tmpdir);
    snprintf(log, sizeof log, "%s/trained_logits.txt", t->tmpdir);
    snprintf(cmd, sizeof cmd, "%s logits -m tests/fixtures/" FIX " --ids %s -o '%s' -t 2 > '%s' 2>&1",
             t->dsc_bin, list, out, log);
    int st = system(cmd);
    char *msg = t_read_file(log, NULL);
    T_CHECK(t, st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "dsc logits failed (%d): %s", st,
            msg ? msg : "");
    free(msg);
    size_t nout = 0;
    float *lg = t_read_file(out, &nout);
    T_CHECK(t, lg && nout == (size_t)r.n * VOCAB * 4, "logits file has %zu bytes, expected %lld", nout,
            (long long)(r.n * VOCAB * 4));
    if (lg && nout == (size_t)r.n * VOCAB * 4)
        t_close_f64(t, "dsc logits vs transformers", lg, r.ref, r.n * VOCAB, TOL, 0);
    free(lg);
    free(r.ids);
    free(r.ref);
}

/* The library on the same directory, in both MLA modes. */
static void test_library_forward(dsc_t *t) {
    dsc_model_t *m = t_load_fixture(t, FIX);
    if (!m) return;
    ref_t r;
    if (!load_ref(t, &r)) {
        dsc_model_free(m);
        return;
    }
    float *lg = malloc((size_t)(r.n * VOCAB) * sizeof *lg);
    for (int mode = 0; mode < 2; mode++) {
        dsc_ctx_params p = dsc_ctx_default_params();
        p.n_ctx = r.n;
        p.n_batch = r.n;
        p.n_threads = 2;
        p.attn = mode ? DSC_ATTN_NAIVE : DSC_ATTN_ABSORBED;
        dsc_ctx_t *c = NULL;
        dsc_err e = {0};
        if (dsc_ctx_new(m, &p, &c, &e) != DSC_OK) {
            T_CHECK(t, 0, "ctx: %s", e.msg);
            continue;
        }
        dsc_status s = dsc_forward(c, r.ids, r.n, 0, lg, &e);
        T_CHECK(t, s == DSC_OK, "forward: %s", e.msg);
        if (s == DSC_OK)
            t_close_f64(t, mode ? "naive MLA vs transformers" : "absorbed MLA vs transformers", lg,
                        r.ref, r.n * VOCAB, TOL, 0);
        dsc_ctx_free(c);
    }
    free(lg);
    free(r.ids);
    free(r.ref);
    dsc_model_free(m);
}

const dsc_test_case dsc_tests_trained_ckpt[] = {
    {"cli_logits", test_cli_logits},
    {"library_forward", test_library_forward},
    {NULL, NULL},
};
