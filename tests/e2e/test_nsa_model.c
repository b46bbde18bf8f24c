/*
 * test_nsa_model.c - a dsc model with NSA (attention_type "nsa", config.c)
 * in place of MLA, on the training side:
 *  - nsa_model_grad: a tiny NSA config (hidden 32, 2 dense layers, H_q 4 over
 *    H_kv 1, d_k 16 (8 roped), d_v 8, l 8, d 4, l' 8, n 3, w 8, MLP
 *    compression of width 16, T 40: the selection really selects) is
 *    initialised (std 0.2, so that gradients are far above fp32 noise),
 *    loaded and given to the trainer; the fp32 gradient of the whole-model
 *    loss is compared with central differences of the fp32 loss for three
 *    elements of every NSA tensor of both layers. Honest tolerance: the
 *    trainer is fp32 end to end (the fast operator has no f64 path), so the
 *    differences carry fp32 rounding of a loss of ~4 (eps 1e-2: ~1e-5 noise)
 *    plus O(eps^2) truncation; we ask |g - fd| <= 3e-2 |fd| + 3e-4. A
 *    perturbation that flips a top-n selection would show as a jump: none
 *    did at these inputs.
 *  - nsa_model_train_cli: `dsc train` on the NSA config (MoE in layer 1 as
 *    test_train_cli.c) for 20 steps: the loss falls, a run stopped after
 *    step 10 and resumed logs the uninterrupted run's losses bit for bit
 *    (the checkpoint's config.json keeps attention_type / nsa), `dsc info`
 *    prints the NSA architecture, `dsc run` generates (test_nsa_infer.c
 *    checks what it generates).
 *  - nsa_model_align_cli: `dsc train --nsa-align 100` (n 5: two free slots
 *    from t = 32 on) logs sel_kl each step, the logged loss is main +
 *    layers x W x sel_kl (to the 6 printed decimals), and over steps 11-20
 *    the KL is below 0.8 x that of the same run with W 1e-9 (logged, ~no
 *    gradient; from a random init the KL starts near 0 and grows as the
 *    attention sharpens, so the comparison is between runs, not steps),
 *    and --nsa-align on an MLA model exits 1 naming the need.
 *  - nsa_model_bad_config: l not a multiple of d, an unknown compress kind,
 *    a missing nsa field -> dsc train exits 1 naming the field.
 *  - nsa_model_no_inference: dsc_ctx_new on an NSA model works; with spec
 *    MTP -> DSC_ERR_UNSUPPORTED (no speculative decoding on NSA yet).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "model/model.h"
#include "test.h"
#include "train/init.h"
#include "train/model_train.h"

#define TOKDIR "tests/fixtures/tokenizer_brown"
#define NSTEP 20

#define NSA_KEYS                                                                        \
    " \"attention_type\": \"nsa\", \"nsa\": {\"num_key_value_heads\": 1, \"head_dim_k\": 16,\n" \
    "  \"head_dim_v\": 8, \"block_size\": %d, \"stride\": 4, \"select_block\": 8,\n"       \
    "  \"n_select\": 3, \"window\": 8, \"compress\": \"%s\", \"compress_hidden\": 16,\n"     \
    "  \"shared_kv\": false},\n"

/* dense: vocab 64, both layers dense; moe: vocab 4096 (brown tokenizer),
   layer 1 MoE */
static const char *CFG_DENSE =
    "{\"model_type\": \"deepseek_v3\", \"vocab_size\": 64, \"hidden_size\": 32,\n"
    " \"intermediate_size\": 48, \"num_hidden_layers\": 2, \"num_attention_heads\": 4,\n"
    " \"qk_rope_head_dim\": 8, \"n_routed_experts\": 0,\n" NSA_KEYS
    " \"max_position_embeddings\": 128, \"rms_norm_eps\": 1e-06, \"rope_theta\": 10000,\n"
    " \"rope_interleave\": false, \"tie_word_embeddings\": false}\n";

static const char *CFG_MOE =
    "{\"model_type\": \"deepseek_v3\", \"vocab_size\": 4096, \"hidden_size\": 32,\n"
    " \"intermediate_size\": 48, \"moe_intermediate_size\": 8, \"num_hidden_layers\": 2,\n"
    " \"first_k_dense_replace\": 1, \"moe_layer_freq\": 1, \"num_attention_heads\": 4,\n"
    " \"qk_rope_head_dim\": 8, \"n_routed_experts\": 4, \"n_shared_experts\": 1,\n"
    " \"num_experts_per_tok\": 2, \"n_group\": 2, \"topk_group\": 1,\n"
    " \"topk_method\": \"noaux_tc\", \"scoring_func\": \"sigmoid\", \"norm_topk_prob\": true,\n"
    " \"routed_scaling_factor\": 2.5,\n" NSA_KEYS
    " \"max_position_embeddings\": 128, \"rms_norm_eps\": 1e-06, \"rope_theta\": 10000,\n"
    " \"bos_token_id\": 0, \"eos_token_id\": 1, \"tie_word_embeddings\": false}\n";

static void fmt_cfg(char *out, size_t cap, const char *tmpl, int block, const char *compress) {
    snprintf(out, cap, tmpl, block, compress);
}

/* A new NSA model directory from config text; returns 0 on success. */
static int make_model(dsc_t *t, const char *dir, const char *text, double std) {
    dsc_config cfg;
    dsc_err e = {0};
    if (dsc_config_parse(text, strlen(text), "nsa_config", &cfg, &e) != DSC_OK) {
        T_CHECK(t, 0, "config: %s", e.msg);
        return -1;
    }
    dsc_init_params p = dsc_init_default_params();
    p.seed = 11;
    p.std = std;
    if (dsc_train_init_save(dir, &cfg, &p, &e) != DSC_OK) {
        T_CHECK(t, 0, "init: %s", e.msg);
        return -1;
    }
    return 0;
}

static void test_grad(dsc_t *t) {
    char text[4096], dir[512];
    fmt_cfg(text, sizeof text, CFG_DENSE, 8, "mlp");
    snprintf(dir, sizeof dir, "%s/nsa_fd", t->tmpdir);
    if (make_model(t, dir, text, 0.2)) return;
    dsc_model_t *m = NULL;
    dsc_err e = {0};
    T_CHECK(t, dsc_model_load(dir, &m, &e) == DSC_OK, "load: %s", e.msg);
    if (!m) return;
    T_CHECK(t, dsc_model_config(m)->attention_nsa == 1, "not an NSA model after the round trip");
    enum { T = 40 };
    dsc_train_model_t *tm = NULL;
    T_CHECK(t, dsc_train_model_new(m, 1, T, &tm, &e) == DSC_OK, "train model: %s", e.msg);
    if (!tm) {
        dsc_model_free(m);
        return;
    }
    int32_t tok[T + 1];
    t_rng r = {5};
    for (int i = 0; i <= T; i++) tok[i] = (int32_t)(t_rng_u64(&r) % 64);
    double loss = 0;
    T_CHECK(t, dsc_train_forward_backward(tm, tok, 1, T, &loss, &e) == DSC_OK, "fb: %s", e.msg);
    T_CHECK(t, isfinite(loss) && loss > 0, "loss %g", loss);
    int64_t np = 0;
    const dsc_param *ps = dsc_train_model_params(tm, &np);
    int checked = 0, kinds = 0, bad = 0;
    double worst = 0;
    for (int64_t i = 0; i < np; i++) {
        const dsc_param *p = &ps[i];
        if (!strstr(p->name, "self_attn.")) continue;
        kinds++;
        int64_t numel = p->shape[0] * (p->ndim == 2 ? p->shape[1] : 1);
        /* the gradient snapshot before perturbing (forward only below) */
        for (int k = 0; k < 3; k++) {
            int64_t j = (int64_t)(t_rng_u64(&r) % (uint64_t)numel);
            float g = p->grad[j], x0 = p->data[j];
            const float eps = 1e-2f;
            double lp = 0, lm = 0;
            p->data[j] = x0 + eps;
            dsc_train_forward(tm, tok, 1, T, &lp, &e);
            p->data[j] = x0 - eps;
            dsc_train_forward(tm, tok, 1, T, &lm, &e);
            p->data[j] = x0;
            double fd = (lp - lm) / (2.0 * (double)eps), err = fabs((double)g - fd);
            double tol = 3e-2 * fabs(fd) + 3e-4;
            if (err / tol > worst) worst = err / tol;
            if (err > tol) {
                bad++;
                T_CHECK(t, 0, "%s[%lld]: grad %.6g vs central difference %.6g", p->name,
                        (long long)j, (double)g, fd);
            }
            checked++;
        }
    }
    /* 2 layers x (q, 3 k, 3 v, gate, o, 6 compression) */
    T_CHECK(t, kinds == 2 * 15, "%d NSA tensors listed, expected 30", kinds);
    T_CHECK(t, checked == 3 * kinds && bad == 0, "%d of %d checks failed (worst err/tol %.3g)",
            bad, checked, worst);
    /* decay on matrices only: pe has none */
    for (int64_t i = 0; i < np; i++)
        if (strstr(ps[i].name, "self_attn."))
            T_CHECK(t, ps[i].decay == (strstr(ps[i].name, ".pe") == NULL), "%s: decay %d",
                    ps[i].name, ps[i].decay);
    dsc_train_model_free(tm);
    dsc_model_free(m);
}

static void test_no_inference(dsc_t *t) {
    char text[4096], dir[512];
    fmt_cfg(text, sizeof text, CFG_DENSE, 8, "mean");
    snprintf(dir, sizeof dir, "%s/nsa_ctx", t->tmpdir);
    if (make_model(t, dir, text, 0.02)) return;
    dsc_model_t *m = NULL;
    dsc_err e = {0};
    T_CHECK(t, dsc_model_load(dir, &m, &e) == DSC_OK, "load: %s", e.msg);
    if (!m) return;
    dsc_ctx_t *c = NULL;
    dsc_ctx_params p = dsc_ctx_default_params();
    p.spec = DSC_SPEC_MTP;
    dsc_status s = dsc_ctx_new(m, &p, &c, &e);
    T_CHECK(t, s == DSC_ERR_UNSUPPORTED && !c, "dsc_ctx_new, spec MTP, NSA model: status %d", s);
    T_CHECK(t, strstr(e.msg, "not supported on NSA models") != NULL, "message: %s", e.msg);
    dsc_ctx_free(c);
    c = NULL;
    s = dsc_ctx_new(m, NULL, &c, &e);
    T_CHECK(t, s == DSC_OK && c, "dsc_ctx_new on an NSA model: %s", e.msg);
    dsc_ctx_free(c);
    dsc_model_free(m);
}

static void test_train_cli(dsc_t *t) {
    char text[4096], cfg[512], data[512], args[3072], common[2048];
    fmt_cfg(text, sizeof text, CFG_MOE, 8, "mlp");
    snprintf(cfg, sizeof cfg, "%s/nsa_config.json", t->tmpdir);
    T_CHECK(t, t_write_file(cfg, text, strlen(text)) == 0, "cannot write %s", cfg);
    t_write_words(t, "nsa_data.txt", 300, data, sizeof data);
    snprintf(common, sizeof common,
             "--data %s --tokenizer " TOKDIR " --config %s --steps %d --batch 2 --seq 40 "
             "--lr 1e-2 --warmup 2 --eval-every 10 --save-every 10 --val-frac 0.2 --seed 7 -t 2",
             data, cfg, NSTEP);
    static char la[NSTEP + 1][32], lc[NSTEP + 1][32];
    double va[NSTEP + 1] = {0}, vc[NSTEP + 1] = {0};
    char *o = NULL;
    snprintf(args, sizeof args, "train -m %s/nsa_a %s", t->tmpdir, common);
    int st = t_run_dsc(t, "nsa_a.txt", args, &o);
    T_CHECK(t, st == 0, "dsc %s: exit %d: %s", args, st, o ? o : "");
    int na = t_log_steps(o, "loss ", NSTEP, va, la);
    T_CHECK(t, na == NSTEP, "run a logged %d steps: %s", na, o ? o : "");
    free(o);
    if (na != NSTEP) return;
    T_CHECK(t, va[NSTEP] < va[1] - 0.5, "loss did not fall: %g -> %g", va[1], va[NSTEP]);

    snprintf(args, sizeof args, "train -m %s/nsa_c %s --stop-after 10", t->tmpdir, common);
    st = t_run_dsc(t, "nsa_c1.txt", args, &o);
    T_CHECK(t, st == 0, "dsc %s: exit %d: %s", args, st, o ? o : "");
    int nc = t_log_steps(o, "loss ", NSTEP, vc, lc);
    free(o);
    T_CHECK(t, nc == 10, "run c logged %d steps before the stop", nc);
    snprintf(args, sizeof args, "train -m %s/nsa_c %s", t->tmpdir, common);
    st = t_run_dsc(t, "nsa_c2.txt", args, &o);
    T_CHECK(t, st == 0, "dsc %s: exit %d: %s", args, st, o ? o : "");
    T_CHECK(t, o && strstr(o, "resumed"), "second leg did not resume: %s", o ? o : "");
    free(o);
    {
        char path[600];
        snprintf(path, sizeof path, "%s/nsa_c2.txt", t->tmpdir);
        char *o2 = t_read_file(path, NULL);
        nc = t_log_steps(o2, "loss ", NSTEP, vc, lc);
        free(o2);
    }
    T_CHECK(t, nc == 10, "resumed run logged %d steps", nc);
    for (int s = 1; s <= NSTEP; s++)
        T_CHECK(t, !strcmp(la[s], lc[s]), "resumed run, step %d: loss %s vs %s", s, lc[s],
                la[s]);

    /* the checkpoint's config keeps the NSA keys */
    char path[600];
    snprintf(path, sizeof path, "%s/nsa_c/config.json", t->tmpdir);
    char *cj = t_read_file(path, NULL);
    T_CHECK(t, cj && strstr(cj, "\"attention_type\": \"nsa\"") && strstr(cj, "\"block_size\": 8"),
            "config.json lost the NSA keys: %s", cj ? cj : "(none)");
    free(cj);
    snprintf(args, sizeof args, "info -m %s/nsa_c", t->tmpdir);
    st = t_run_dsc(t, "nsa_info.txt", args, &o);
    T_CHECK(t, st == 0 && o && strstr(o, "NSA") && strstr(o, "1 KV heads"),
            "dsc %s: exit %d: %s", args, st, o ? o : "");
    free(o);
    snprintf(args, sizeof args, "run -m %s/nsa_a --ids 1,2,3 -n 4 --temp 0 --print-ids -q",
             t->tmpdir);
    st = t_run_dsc(t, "nsa_run.txt", args, &o);
    int ids[4], n = o ? sscanf(o, "%d %d %d %d", &ids[0], &ids[1], &ids[2], &ids[3]) : 0;
    T_CHECK(t, st == 0 && n == 4, "dsc %s: exit %d, %d ids: %s", args, st, n, o ? o : "");
    free(o);
}

static void test_align_cli(dsc_t *t) {
    char text[4096], cfg[512], data[512], args[3072];
    fmt_cfg(text, sizeof text, CFG_MOE, 8, "mlp");
    char *ns = strstr(text, "\"n_select\": 3");
    T_CHECK(t, ns != NULL, "config template lost n_select");
    if (!ns) return;
    ns[strlen("\"n_select\": ")] = '5';
    snprintf(cfg, sizeof cfg, "%s/nsa_al_config.json", t->tmpdir);
    T_CHECK(t, t_write_file(cfg, text, strlen(text)) == 0, "cannot write %s", cfg);
    t_write_words(t, "nsa_data.txt", 300, data, sizeof data);
    /* the same run with W 100 (the KL is ~1e-3 here: a weight that lets its
       gradient count) and with W 1e-9 (the KL logged, ~no gradient) */
    double kl_tail[2] = {0, 0};
    for (int run = 0; run < 2; run++) {
        snprintf(args, sizeof args,
                 "train -m %s/nsa_al%d --data %s --tokenizer " TOKDIR " --config %s --steps %d "
                 "--batch 2 --seq 64 --lr 1e-2 --warmup 2 --eval-every 0 --val-frac 0.2 "
                 "--seed 7 -t 2 --nsa-align %s",
                 t->tmpdir, run, data, cfg, NSTEP, run ? "1e-9" : "100");
        char *o = NULL;
        int st = t_run_dsc(t, "nsa_al.txt", args, &o);
        T_CHECK(t, st == 0, "dsc %s: exit %d: %s", args, st, o ? o : "");
        static char tl[NSTEP + 1][32], tm_[NSTEP + 1][32], tk[NSTEP + 1][32];
        double vl[NSTEP + 1] = {0}, vm[NSTEP + 1] = {0}, vk[NSTEP + 1] = {0};
        int nl = t_log_steps(o, "loss ", NSTEP, vl, tl);
        int nm = t_log_steps(o, "main ", NSTEP, vm, tm_);
        int nk = t_log_steps(o, "sel_kl ", NSTEP, vk, tk);
        T_CHECK(t, nl == NSTEP && nm == NSTEP && nk == NSTEP, "logged %d / %d / %d steps: %s",
                nl, nm, nk, o ? o : "");
        free(o);
        if (nk != NSTEP) return;
        double w = run ? 1e-9 : 100.0;
        for (int s = 1; s <= NSTEP; s++) {
            T_CHECK(t, fabs(vl[s] - (vm[s] + 2 * w * vk[s])) <= 2e-6 + 2 * w * 5e-7,
                    "W %g, step %d: loss %s != main %s + 2 W sel_kl %s", w, s, tl[s], tm_[s],
                    tk[s]);
            if (s > NSTEP / 2) kl_tail[run] += vk[s];
        }
    }
    T_CHECK(t, kl_tail[0] < 0.8 * kl_tail[1],
            "the alignment loss did not lower the KL: steps 11-20 sum %g (W 100) vs %g (W 1e-9)",
            kl_tail[0], kl_tail[1]);
    if (getenv("DSC_TEST_VERBOSE"))
        fprintf(stderr, "  sel_kl steps 11-20: %g (W 100) vs %g (W 1e-9)\n", kl_tail[0], kl_tail[1]);
    char *o = NULL;
    int st;
    /* on an MLA model: a clear error */
    snprintf(args, sizeof args,
             "train -m %s/mla_al --data %s --tokenizer " TOKDIR
             " --config configs/demo-v3-tiny.json --steps 2 --batch 1 --seq 32 --nsa-align 1",
             t->tmpdir, data);
    st = t_run_dsc(t, "mla_al.txt", args, &o);
    T_CHECK(t, st == 1 && o && strstr(o, "--nsa-align needs an NSA model"), "dsc %s: exit %d: %s",
            args, st, o ? o : "");
    free(o);
}

static void test_bad_config(dsc_t *t) {
    char text[4096], cfg[512], data[512], args[3072];
    t_write_words(t, "nsa_data.txt", 300, data, sizeof data);
    static const struct {
        int block;
        const char *compress, *want;
    } cases[] = {
        {6, "mlp", "must be a multiple of the stride"},
        {8, "conv", "nsa.compress \"conv\" is not supported"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        fmt_cfg(text, sizeof text, CFG_MOE, cases[i].block, cases[i].compress);
        snprintf(cfg, sizeof cfg, "%s/nsa_bad%zu.json", t->tmpdir, i);
        T_CHECK(t, t_write_file(cfg, text, strlen(text)) == 0, "cannot write %s", cfg);
        snprintf(args, sizeof args,
                 "train -m %s/nsa_bad%zu --data %s --tokenizer " TOKDIR " --config %s --steps 2 "
                 "--batch 1 --seq 16 -t 1", t->tmpdir, i, data, cfg);
        char *o = NULL;
        int st = t_run_dsc(t, "nsa_bad.txt", args, &o);
        T_CHECK(t, st == 1 && o && strstr(o, cases[i].want), "case %zu: exit %d: %s", i, st,
                o ? o : "");
        free(o);
    }
    /* a missing field is named */
    fmt_cfg(text, sizeof text, CFG_MOE, 8, "mlp");
    char *p = strstr(text, "\"window\": 8, ");
    if (p) memmove(p, p + strlen("\"window\": 8, "), strlen(p + strlen("\"window\": 8, ")) + 1);
    snprintf(cfg, sizeof cfg, "%s/nsa_bad_missing.json", t->tmpdir);
    T_CHECK(t, t_write_file(cfg, text, strlen(text)) == 0, "cannot write %s", cfg);
    snprintf(args, sizeof args,
             "train -m %s/nsa_badm --data %s --tokenizer " TOKDIR " --config %s --steps 2 "
             "--batch 1 --seq 16 -t 1", t->tmpdir, data, cfg);
    char *o = NULL;
    int st = t_run_dsc(t, "nsa_badm.txt", args, &o);
    T_CHECK(t, st == 1 && o && strstr(o, "\"window\" is missing"), "exit %d: %s", st, o ? o : "");
    free(o);
}

const dsc_test_case dsc_tests_nsa_model[] = {
    {"nsa_model_grad", test_grad},
    {"nsa_model_no_inference", test_no_inference},
    {"nsa_model_train_cli", test_train_cli},
    {"nsa_model_align_cli", test_align_cli},
    {"nsa_model_bad_config", test_bad_config},
    {NULL, NULL},
};
