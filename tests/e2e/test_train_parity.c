/*
 * test_train_parity.c - the C trainer against PyTorch autograd and
 * torch.optim.AdamW (tests/fixtures/train_ref, made by
 * tests/reference/make_train_fixtures.py: a tiny DeepseekV3ForCausalLM,
 * B = 2 sequences of T = 13, mean next-token cross-entropy).
 *
 * Tolerances: the loss to 1e-5 relative and every parameter gradient to 1e-4
 * relative to the tensor's largest gradient (fp32 forward/backward against a
 * float64 reference: a few hundred fp32 roundings per value); the 10 AdamW
 * losses to 1e-5 relative (the fixture's own float64 replay of the float32
 * run agrees to 1.2e-6, and routing margins stay >= 1.4e-3 on the path).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "io/safetensors.h"
#include "test.h"
#include "train/model_train.h"
#include "train/optim.h"

#define B 2
#define T 13

static dsc_train_model_t *setup(dsc_t *t, dsc_model_t **mp, int32_t **tokens) {
    *mp = t_load_fixture(t, "train_ref");
    int64_t n = 0;
    *tokens = t_fixture_ids("train_ref", "tokens.i32", &n);
    T_CHECK(t, *tokens && n == B * (T + 1), "train_ref/tokens.i32: %lld ids", (long long)n);
    if (!*mp || !*tokens || n != B * (T + 1)) return NULL;
    dsc_train_model_t *tm = NULL;
    dsc_err e = {0};
    T_CHECK(t, dsc_train_model_new(*mp, B, T, &tm, &e) == DSC_OK, "%s", e.msg);
    return tm;
}

/* Every parameter's gradient against grads_file (absent entries only for the
   routing biases); returns the worst relative error, printing it. */
static double check_grads(dsc_t *t, dsc_train_model_t *tm, const char *grads_file) {
    char path[256];
    snprintf(path, sizeof path, "tests/fixtures/train_ref/%s", grads_file);
    dsc_st_set *g = NULL;
    dsc_err e = {0};
    T_CHECK(t, dsc_st_set_open_file(path, &g, &e) == DSC_OK, "%s", e.msg);
    if (!g) return INFINITY;
    int64_t np = 0, checked = 0;
    const dsc_param *ps = dsc_train_model_params(tm, &np);
    double worst = 0;
    const char *worst_name = "";
    for (int64_t i = 0; i < np; i++) {
        dsc_st_tensor *ref = dsc_st_find(g, ps[i].name);
        if (!ref) {
            /* tensors without a gradient (the routing bias) are absent */
            T_CHECK(t, strstr(ps[i].name, "e_score_correction_bias") != NULL,
                    "no torch gradient for %s", ps[i].name);
            continue;
        }
        int64_t n = dsc_param_numel(&ps[i]);
        T_CHECK(t, ref->dtype == DSC_F32 && ref->numel == n, "%s: shape/dtype", ps[i].name);
        if (ref->dtype != DSC_F32 || ref->numel != n) continue;
        const float *r = ref->data;
        double mx = 0, md = 0;
        for (int64_t j = 0; j < n; j++) {
            mx = fmax(mx, fabs(r[j]));
            md = fmax(md, fabs((double)ps[i].grad[j] - r[j]));
        }
        double rel = mx > 0 ? md / mx : md;
        if (rel > worst) worst = rel, worst_name = ps[i].name;
        T_CHECK(t, rel <= 1e-4, "%s: gradient differs from torch by %.2e of its max", ps[i].name,
                rel);
        checked++;
    }
    /* every reference entry has a parameter */
    int64_t n_ref = dsc_st_count(g);
    T_CHECK(t, n_ref == checked, "%s: %lld entries, %lld checked", grads_file, (long long)n_ref,
            (long long)checked);
    printf("       %s: %lld gradients, worst %.2e (%s)\n", grads_file, (long long)checked,
           worst, worst_name);
    dsc_st_set_close(g);
    return worst;
}

/* One forward/backward; the loss parts against loss_file ([total] or
   [total, ce, part]; part = bal or mtp) and the gradients against
   grads_file. */
static void check_pass(dsc_t *t, dsc_train_model_t *tm, const int32_t *tokens,
                       const char *loss_file, int part_is_mtp, const char *grads_file) {
    char path[256];
    size_t len = 0;
    snprintf(path, sizeof path, "tests/fixtures/train_ref/%s", loss_file);
    double *want = t_read_file(path, &len);
    T_CHECK(t, want && len >= 8, "%s", path);
    if (!want || len < 8) {
        free(want);
        return;
    }
    double loss = 0, got[3] = {0, 0, 0};
    dsc_err e = {0};
    T_CHECK(t, dsc_train_forward_backward(tm, tokens, B, T, &loss, &e) == DSC_OK, "%s", e.msg);
    got[0] = loss;
    double bal = 0, mtp = 0;
    dsc_train_loss_parts(tm, &got[1], &bal, &mtp);
    got[2] = part_is_mtp ? mtp : bal;
    static const char *what[3] = {"total", "ce", "part"};
    for (size_t k = 0; k < len / 8 && k < 3; k++)
        T_CHECK(t, fabs(got[k] - want[k]) <= 1e-5 * fabs(want[k]), "%s %s: %.9f, torch %.9f",
                loss_file, what[k], got[k], want[k]);
    printf("       %s: loss %.9f (torch %.9f)", loss_file, loss, want[0]);
    if (len >= 24) printf(", ce %.9f (%.9f), %s %.9f (%.9f)", got[1], want[1],
                          part_is_mtp ? "mtp" : "bal", got[2], want[2]);
    printf("\n");
    free(want);
    check_grads(t, tm, grads_file);
}

static void test_grads(dsc_t *t) {
    dsc_model_t *m = NULL;
    int32_t *tokens = NULL;
    dsc_train_model_t *tm = setup(t, &m, &tokens);
    if (tm) check_pass(t, tm, tokens, "loss.f64", 0, "grads.safetensors");
    free(tokens);
    dsc_train_model_free(tm);
    dsc_model_free(m);
}

/* The sequence-wise balance loss (alpha 0.01) added to the CE. */
static void test_balance_grads(dsc_t *t) {
    dsc_model_t *m = NULL;
    int32_t *tokens = NULL;
    dsc_train_model_t *tm = setup(t, &m, &tokens);
    if (tm) {
        dsc_train_set_balance_alpha(tm, 0.01);
        check_pass(t, tm, tokens, "loss_bal.f64", 0, "grads_bal.safetensors");
        /* alpha back to 0: the plain loss again */
        dsc_train_set_balance_alpha(tm, 0.0);
        check_pass(t, tm, tokens, "loss.f64", 0, "grads.safetensors");
    }
    free(tokens);
    dsc_train_model_free(tm);
    dsc_model_free(m);
}

/* Copy tests/fixtures/train_ref/<from> to <dir>/<to>. */
static int copy_fixture(const char *from, const char *dir, const char *to) {
    char src[256], dst[512];
    size_t len = 0;
    snprintf(src, sizeof src, "tests/fixtures/train_ref/%s", from);
    snprintf(dst, sizeof dst, "%s/%s", dir, to);
    void *buf = t_read_file(src, &len);
    FILE *f = buf ? fopen(dst, "wb") : NULL;
    int ok = f && fwrite(buf, 1, len, f) == len;
    if (f) ok = fclose(f) == 0 && ok;
    free(buf);
    return ok;
}

/* MTP (D = 1, lambda 0.3) from the checkpoint with num_nextn_predict_layers
   1: the loss parts and every gradient, MTP tensors included. */
static void test_mtp_grads(dsc_t *t) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s/train_ref_mtp", t->tmpdir);
    dsc_model_t *m = NULL;
    dsc_train_model_t *tm = NULL;
    dsc_err e = {0};
    int64_t n = 0;
    int32_t *tokens = t_fixture_ids("train_ref", "tokens.i32", &n);
    T_CHECK(t, tokens && n == B * (T + 1), "train_ref/tokens.i32: %lld ids", (long long)n);
    int ok = mkdir(dir, 0700) == 0 && copy_fixture("config_mtp.json", dir, "config.json") &&
             copy_fixture("model_mtp.safetensors", dir, "model.safetensors");
    T_CHECK(t, ok, "cannot copy the MTP fixture to %s", dir);
    if (!ok || !tokens || n != B * (T + 1)) goto done;
    T_CHECK(t, dsc_model_load(dir, &m, &e) == DSC_OK, "load %s: %s", dir, e.msg);
    if (!m) goto done;
    /* the plain constructor ignores the module */
    T_CHECK(t, dsc_train_model_new(m, B, T, &tm, &e) == DSC_OK, "%s", e.msg);
    T_CHECK(t, tm && !dsc_train_model_has_mtp(tm), "MTP module loaded by dsc_train_model_new");
    dsc_train_model_free(tm);
    tm = NULL;
    T_CHECK(t, dsc_train_model_new_mtp(m, B, T, 0.3, &tm, &e) == DSC_OK, "%s", e.msg);
    if (!tm) goto done;
    T_CHECK(t, dsc_train_model_has_mtp(tm), "no MTP module");
    check_pass(t, tm, tokens, "loss_mtp.f64", 1, "grads_mtp.safetensors");
    /* routing of the MTP layer: B*(T-1) tokens, its load row counts them */
    int64_t L = dsc_train_model_config(tm)->num_hidden_layers;
    int64_t E = dsc_train_model_config(tm)->n_routed_experts;
    int64_t K = dsc_train_model_config(tm)->num_experts_per_tok, sum = 0;
    const int64_t *load = dsc_train_model_expert_load(tm);
    for (int64_t i = 0; i < E; i++) sum += load[L * E + i];
    T_CHECK(t, dsc_train_model_routing(tm, L) && sum == B * (T - 1) * K,
            "MTP layer load %lld, want %d", (long long)sum, B * (T - 1) * (int)K);
    /* weight 0: the plain CE and its gradients (the MTP tensors' zero) */
    dsc_train_set_mtp_weight(tm, 0.0);
    double loss = 0;
    T_CHECK(t, dsc_train_forward_backward(tm, tokens, B, T, &loss, &e) == DSC_OK, "%s", e.msg);
    double *want = t_read_file("tests/fixtures/train_ref/loss.f64", NULL);
    T_CHECK(t, want && fabs(loss - want[0]) <= 1e-5 * want[0], "lambda 0: loss %.9f", loss);
    free(want);
    /* a checkpoint without the module cannot train MTP */
    dsc_train_model_free(tm);
    tm = NULL;
    dsc_model_free(m);
    m = t_load_fixture(t, "train_ref");
    T_CHECK(t, m && dsc_train_model_new_mtp(m, B, T, 0.3, &tm, &e) == DSC_ERR_MISSING && !tm,
            "MTP from a checkpoint without it");
done:
    free(tokens);
    dsc_train_model_free(tm);
    dsc_model_free(m);
}

/* 10 AdamW steps (warm-up 3 to 1e-3, cosine to 1e-4 at 10, clip 1.0,
   weight decay 0.1 on matrices) on the fixed batch: the losses before each
   step equal torch's. */
static void adamw_run(dsc_t *t, float gamma, const char *loss_file, const char *bias_file);

static void test_adamw_losses(dsc_t *t) {
    adamw_run(t, 0.0f, "adamw_losses.f64", NULL);
}

/* The same run with the auxiliary-loss-free bias update (gamma 1e-3) after
   every step: losses, and the final biases bit for bit (the same fp32
   additions of +-gamma in the same order). */
static void test_bias_update(dsc_t *t) {
    adamw_run(t, 1e-3f, "adamw_bias_losses.f64", "final_biases.f32");
}

static void adamw_run(dsc_t *t, float gamma, const char *loss_file, const char *bias_file) {
    dsc_model_t *m = NULL;
    int32_t *tokens = NULL;
    dsc_train_model_t *tm = setup(t, &m, &tokens);
    char path[256];
    snprintf(path, sizeof path, "tests/fixtures/train_ref/%s", loss_file);
    double *want = t_read_file(path, NULL);
    dsc_adamw_t *o = NULL;
    dsc_err e = {0};
    if (!tm || !want) goto done;
    int64_t np = 0;
    const dsc_param *ps = dsc_train_model_params(tm, &np);
    dsc_adamw_params hp = dsc_adamw_default_params();
    T_CHECK(t, dsc_adamw_new(&hp, ps, np, &o, &e) == DSC_OK, "%s", e.msg);
    dsc_lr_schedule sched = {1e-3, 1e-4, 3, 10};
    double worst = 0;
    for (int s = 0; o && s < 10; s++) {
        double loss = 0;
        T_CHECK(t, dsc_train_forward_backward(tm, tokens, B, T, &loss, &e) == DSC_OK, "%s",
                e.msg);
        double rel = fabs(loss - want[s]) / fabs(want[s]);
        worst = fmax(worst, rel);
        T_CHECK(t, rel <= 1e-5, "step %d: loss %.9f, torch %.9f", s, loss, want[s]);
        dsc_clip_grad_norm(ps, np, 1.0);
        dsc_adamw_step(o, dsc_lr_at(&sched, s));
        dsc_train_update_bias(tm, gamma);
    }
    printf("       10 AdamW steps%s: losses within %.2e relative of torch\n",
           gamma ? " + bias updates" : "", worst);
    if (bias_file && o) {
        size_t len = 0;
        snprintf(path, sizeof path, "tests/fixtures/train_ref/%s", bias_file);
        float *wb = t_read_file(path, &len);
        int64_t k = 0, bad = 0;
        for (int64_t i = 0; wb && i < np; i++) {
            if (!strstr(ps[i].name, "e_score_correction_bias")) continue;
            for (int64_t j = 0; j < dsc_param_numel(&ps[i]) && (size_t)(k + 1) * 4 <= len; j++)
                bad += ps[i].data[j] != wb[k++];
        }
        T_CHECK(t, wb && (size_t)k * 4 == len && bad == 0,
                "final biases: %lld of %lld differ from torch's", (long long)bad, (long long)k);
        free(wb);
    }
done:
    dsc_adamw_free(o);
    free(want);
    free(tokens);
    dsc_train_model_free(tm);
    dsc_model_free(m);
}

const dsc_test_case dsc_tests_train_parity[] = {
    {"grads_vs_torch", test_grads},
    {"balance_grads_vs_torch", test_balance_grads},
    {"mtp_grads_vs_torch", test_mtp_grads},
    {"adamw_losses_vs_torch", test_adamw_losses},
    {"bias_update_vs_torch", test_bias_update},
    {NULL, NULL},
};
