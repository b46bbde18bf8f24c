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

static void test_grads(dsc_t *t) {
    dsc_model_t *m = NULL;
    int32_t *tokens = NULL;
    dsc_train_model_t *tm = setup(t, &m, &tokens);
    double *want_loss = t_read_file("tests/fixtures/train_ref/loss.f64", NULL);
    dsc_st_set *g = NULL;
    dsc_err e = {0};
    T_CHECK(t, dsc_st_set_open_file("tests/fixtures/train_ref/grads.safetensors", &g, &e) ==
                   DSC_OK, "%s", e.msg);
    if (!tm || !want_loss || !g) goto done;
    double loss = 0;
    T_CHECK(t, dsc_train_forward_backward(tm, tokens, B, T, &loss, &e) == DSC_OK, "%s", e.msg);
    T_CHECK(t, fabs(loss - want_loss[0]) <= 1e-5 * fabs(want_loss[0]), "loss %.9f, torch %.9f",
            loss, want_loss[0]);
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
    printf("       loss %.9f (torch %.9f); %lld gradients, worst %.2e (%s)\n", loss, want_loss[0],
           (long long)checked, worst, worst_name);
done:
    dsc_st_set_close(g);
    free(want_loss);
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
    {"adamw_losses_vs_torch", test_adamw_losses},
    {"bias_update_vs_torch", test_bias_update},
    {NULL, NULL},
};
