/*
 * test_train_cli.c - `dsc train` end to end, through the command line: a new
 * model from a tiny V3-shaped config (2 layers, 1 dense + 1 MoE with
 * noaux_tc routing) and the brown tokenizer, ~20 steps on a generated text.
 * Checks: exit 0; the loss falls; two runs with one seed log identical
 * losses; a run stopped at step 10 and resumed logs exactly the uninterrupted
 * run's steps 11..20; the result runs under `dsc run`; bad usage exits 2/1.
 * MTP: a config with num_nextn_predict_layers 1 trains with the MTP loss
 * logged, writes the module under DeepSeek-V3's names with the stored copies
 * of the embedding and head, and still runs. Bad input (empty / non-UTF-8
 * corpus, --seq over max_position_embeddings, unwritable OUT_DIR, a loss
 * that turns NaN/inf) exits 1 with a clear message; the last good
 * checkpoint survives the NaN and loads.
 * The run's files: train_log.csv has its documented header and one row per
 * step (val columns on evaluation steps), also across --stop-after + resume
 * with a lost step's row planted in it; loss.svg is a whole SVG document
 * with curves; the progress line has an ETA. --preset tiny writes exactly
 * the config.json of configs/demo-v3-tiny.json; an unknown preset, or
 * --preset with --config, exits 2. --time-budget 0.05 without --steps sizes
 * the schedule, stops by itself and leaves a loadable checkpoint.
 * --passkey-mix 0.5 is deterministic, resumes exactly and changes the data;
 * 1.5 is refused.
 * Dims are tiny so that the suite stays fast under ASan.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "io/safetensors.h"
#include "test.h"

#define TOKDIR "tests/fixtures/tokenizer_brown"
#define NSTEP 20

/* vocab 4096 as the brown tokenizer; everything else as small as it goes */
static const char *CONFIG =
    "{\"architectures\": [\"DeepseekV3ForCausalLM\"], \"model_type\": \"deepseek_v3\",\n"
    " \"vocab_size\": 4096, \"hidden_size\": 16, \"intermediate_size\": 24,\n"
    " \"moe_intermediate_size\": 8, \"num_hidden_layers\": 2, \"first_k_dense_replace\": 1,\n"
    " \"moe_layer_freq\": 1, \"num_attention_heads\": 2, \"num_key_value_heads\": 2,\n"
    " \"q_lora_rank\": 8, \"kv_lora_rank\": 8, \"qk_nope_head_dim\": 4,\n"
    " \"qk_rope_head_dim\": 4, \"v_head_dim\": 4, \"n_routed_experts\": 4,\n"
    " \"n_shared_experts\": 1, \"num_experts_per_tok\": 2, \"n_group\": 2, \"topk_group\": 1,\n"
    " \"topk_method\": \"noaux_tc\", \"scoring_func\": \"sigmoid\", \"norm_topk_prob\": true,\n"
    " \"routed_scaling_factor\": 2.5, \"num_nextn_predict_layers\": 0,\n"
    " \"max_position_embeddings\": 128, \"rms_norm_eps\": 1e-06, \"rope_theta\": 10000,\n"
    " \"bos_token_id\": 0, \"eos_token_id\": 1, \"tie_word_embeddings\": false}\n";

static void test_train(dsc_t *t) {
    char cfg[512], data[512], args[3072], common[2048];
    snprintf(cfg, sizeof cfg, "%s/tiny_config.json", t->tmpdir);
    T_CHECK(t, t_write_file(cfg, CONFIG, strlen(CONFIG)) == 0, "cannot write %s", cfg);
    t_write_words(t, "data.txt", 200, data, sizeof data);
    snprintf(common, sizeof common,
             "--data %s --tokenizer " TOKDIR " --config %s --steps %d --batch 2 --seq 16 "
             "--lr 1e-2 --warmup 2 --eval-every 10 --save-every 10 --val-frac 0.2 --seed 7 -t 2",
             data, cfg, NSTEP);

    /* a: uninterrupted; b: the same again */
    static char la[NSTEP + 1][32], lb[NSTEP + 1][32], lc[NSTEP + 1][32];
    double va[NSTEP + 1] = {0}, vb[NSTEP + 1] = {0}, vc[NSTEP + 1] = {0};
    char *o = NULL;
    snprintf(args, sizeof args, "train -m %s/a %s", t->tmpdir, common);
    int st = t_run_dsc(t, "a.txt", args, &o);
    T_CHECK(t, st == 0, "dsc %s: exit %d: %s", args, st, o ? o : "");
    int na = t_log_steps(o, "loss ", NSTEP, va, la);
    T_CHECK(t, na == NSTEP, "run a logged %d steps: %s", na, o ? o : "");
    T_CHECK(t, o && strstr(o, "val loss") && strstr(o, "expert load max/mean: L1"),
            "no validation / expert load lines: %s", o ? o : "");
    free(o);
    if (na != NSTEP) return;
    /* measured: 8.32 -> 5.79 on this text; 0.5 leaves a wide margin */
    T_CHECK(t, va[NSTEP] < va[1] - 0.5, "loss did not fall: %g -> %g", va[1], va[NSTEP]);

    snprintf(args, sizeof args, "train -m %s/b %s", t->tmpdir, common);
    st = t_run_dsc(t, "b.txt", args, &o);
    T_CHECK(t, st == 0, "dsc %s: exit %d: %s", args, st, o ? o : "");
    int nb = t_log_steps(o, "loss ", NSTEP, vb, lb);
    free(o);
    T_CHECK(t, nb == NSTEP, "run b logged %d steps", nb);
    for (int s = 1; s <= NSTEP && nb == NSTEP; s++)
        T_CHECK(t, !strcmp(la[s], lb[s]), "same seed, step %d: loss %s vs %s", s, la[s], lb[s]);

    /* c: stopped after step 10 (the schedule still spans 20), then resumed */
    snprintf(args, sizeof args, "train -m %s/c %s --stop-after 10", t->tmpdir, common);
    st = t_run_dsc(t, "c1.txt", args, &o);
    T_CHECK(t, st == 0, "dsc %s: exit %d: %s", args, st, o ? o : "");
    int nc = t_log_steps(o, "loss ", NSTEP, vc, lc);
    free(o);
    T_CHECK(t, nc == 10, "run c logged %d steps before the stop", nc);
    snprintf(args, sizeof args, "train -m %s/c %s", t->tmpdir, common);
    st = t_run_dsc(t, "c2.txt", args, &o);
    T_CHECK(t, st == 0, "dsc %s: exit %d: %s", args, st, o ? o : "");
    T_CHECK(t, o && strstr(o, "resumed"), "second leg did not resume: %s", o ? o : "");
    memset(lc[11], 0, 10 * sizeof lc[11]);
    nc = t_log_steps(o, "loss ", NSTEP, vc, lc);
    free(o);
    T_CHECK(t, nc == 10, "resumed run logged %d steps", nc);
    for (int s = 1; s <= NSTEP; s++)
        T_CHECK(t, !strcmp(la[s], lc[s]), "resumed run, step %d: loss %s vs %s", s, lc[s],
                la[s]);

    /* the result is an ordinary model directory */
    snprintf(args, sizeof args, "run -m %s/a --ids 1,2,3 -n 4 --temp 0 --print-ids -q",
             t->tmpdir);
    st = t_run_dsc(t, "run.txt", args, &o);
    int ids[4], n = o ? sscanf(o, "%d %d %d %d", &ids[0], &ids[1], &ids[2], &ids[3]) : 0;
    T_CHECK(t, st == 0 && n == 4, "dsc %s: exit %d, %d ids: %s", args, st, n, o ? o : "");
    free(o);
    snprintf(args, sizeof args, "info -m %s/c", t->tmpdir);
    st = t_run_dsc(t, "info.txt", args, &o);
    T_CHECK(t, st == 0, "dsc %s: exit %d: %s", args, st, o ? o : "");
    free(o);
}

/* CONFIG with num_nextn_predict_layers 1 (the MTP layer is layer 2, MoE). */
static char *mtp_config(void) {
    const char *k = "\"num_nextn_predict_layers\": 0";
    const char *p = strstr(CONFIG, k);
    char *c = malloc(strlen(CONFIG) + 1);
    if (!c || !p) return c;
    memcpy(c, CONFIG, strlen(CONFIG) + 1);
    c[p - CONFIG + strlen(k) - 1] = '1';
    return c;
}

static void test_train_mtp(dsc_t *t) {
    char cfg[512], data[512], args[3072], path[600];
    snprintf(cfg, sizeof cfg, "%s/mtp_config.json", t->tmpdir);
    char *ctext = mtp_config();
    T_CHECK(t, ctext && t_write_file(cfg, ctext, strlen(ctext)) == 0, "cannot write %s", cfg);
    free(ctext);
    t_write_words(t, "data.txt", 200, data, sizeof data);
    snprintf(args, sizeof args,
             "train -m %s/m --data %s --tokenizer " TOKDIR " --config %s --steps 6 --batch 2 "
             "--seq 16 --lr 1e-2 --warmup 1 --val-frac 0.2 --seed 3 -t 2",
             t->tmpdir, data, cfg);
    char *o = NULL;
    int st = t_run_dsc(t, "m.txt", args, &o);
    T_CHECK(t, st == 0, "dsc %s: exit %d: %s", args, st, o ? o : "");
    T_CHECK(t, o && strstr(o, "MTP (D = 1) weight 0.3") && strstr(o, "step 6/6  loss ") &&
               strstr(o, "  main ") && strstr(o, "  mtp ") && strstr(o, "val loss"),
            "no MTP loss parts logged: %s", o ? o : "");
    /* total = main + 0.3 mtp on a logged step */
    double tot = 0, main_ = 0, mtp = 0;
    const char *p = o ? strstr(o, "step 6/6") : NULL;
    int n = p ? sscanf(p, "step 6/6 loss %lf main %lf mtp %lf", &tot, &main_, &mtp) : 0;
    T_CHECK(t, n == 3 && tot > 0 && mtp > 0 && fabs(tot - (main_ + 0.3 * mtp)) < 1e-5,
            "loss parts %d: %g vs %g + 0.3 x %g", n, tot, main_, mtp);
    free(o);
    if (st != 0) return;

    /* the module under DeepSeek-V3's names, with the stored copies */
    snprintf(path, sizeof path, "%s/m/model.safetensors", t->tmpdir);
    dsc_st_set *set = NULL;
    dsc_err e = {0};
    T_CHECK(t, dsc_st_set_open_file(path, &set, &e) == DSC_OK, "%s: %s", path, e.msg);
    if (!set) return;
    static const char *const names[] = {
        "model.layers.2.enorm.weight", "model.layers.2.hnorm.weight",
        "model.layers.2.eh_proj.weight", "model.layers.2.input_layernorm.weight",
        "model.layers.2.self_attn.q_a_proj.weight", "model.layers.2.self_attn.kv_b_proj.weight",
        "model.layers.2.mlp.gate.weight", "model.layers.2.mlp.gate.e_score_correction_bias",
        "model.layers.2.mlp.shared_experts.down_proj.weight",
        "model.layers.2.mlp.experts.3.up_proj.weight", "model.layers.2.shared_head.norm.weight",
        "model.layers.2.embed_tokens.weight", "model.layers.2.shared_head.head.weight"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        T_CHECK(t, dsc_st_find(set, names[i]) != NULL, "%s: no %s", path, names[i]);
    dsc_st_tensor *eh = dsc_st_find(set, "model.layers.2.eh_proj.weight");
    T_CHECK(t, eh && eh->ndim == 2 && eh->shape[0] == 16 && eh->shape[1] == 32,
            "eh_proj is not (d, 2d)");
    const char *pairs[2][2] = {{"model.layers.2.embed_tokens.weight", "model.embed_tokens.weight"},
                               {"model.layers.2.shared_head.head.weight", "lm_head.weight"}};
    for (int i = 0; i < 2; i++) {
        dsc_st_tensor *x = dsc_st_find(set, pairs[i][0]), *y = dsc_st_find(set, pairs[i][1]);
        T_CHECK(t, x && y && x->nbytes == y->nbytes && !memcmp(x->data, y->data, x->nbytes),
                "%s is not a copy of %s", pairs[i][0], pairs[i][1]);
    }
    dsc_st_set_close(set);

    /* inference binds the module (for speculative decoding) and runs */
    snprintf(args, sizeof args, "info -m %s/m", t->tmpdir);
    st = t_run_dsc(t, "m_info.txt", args, &o);
    T_CHECK(t, st == 0 && o && strstr(o, "mtp") && strstr(o, "1 module(s)"),
            "dsc %s: exit %d: %s", args, st, o ? o : "");
    free(o);
    snprintf(args, sizeof args, "run -m %s/m --ids 1,2,3 -n 4 --temp 0 --print-ids -q",
             t->tmpdir);
    st = t_run_dsc(t, "m_run.txt", args, &o);
    T_CHECK(t, st == 0, "dsc %s: exit %d: %s", args, st, o ? o : "");
    free(o);

    /* resume with --mtp-weight 0: the module stays in the files */
    snprintf(args, sizeof args,
             "train -m %s/m --data %s --steps 8 --batch 2 --seq 16 --lr 1e-2 --warmup 1 "
             "--val-frac 0.2 --mtp-weight 0 -t 2", t->tmpdir, data);
    st = t_run_dsc(t, "m2.txt", args, &o);
    T_CHECK(t, st == 0 && o && strstr(o, "resumed") && strstr(o, "not trained (weight 0)") &&
               !strstr(o, "  mtp "), "dsc %s: exit %d: %s", args, st, o ? o : "");
    free(o);
    set = NULL;
    T_CHECK(t, dsc_st_set_open_file(path, &set, &e) == DSC_OK, "%s: %s", path, e.msg);
    T_CHECK(t, set && dsc_st_find(set, "model.layers.2.eh_proj.weight") &&
               dsc_st_find(set, "model.layers.2.shared_head.head.weight"),
            "MTP module lost after --mtp-weight 0");
    if (set) dsc_st_set_close(set);
}

/* Exit 1 with `want` in the output. */
static void expect_fail(dsc_t *t, const char *name, const char *args, const char *want) {
    char *o = NULL;
    int st = t_run_dsc(t, name, args, &o);
    T_CHECK(t, st == 1 && o && strstr(o, want), "dsc %s: exit %d (want 1, \"%s\"): %s", args,
            st, want, o ? o : "");
    free(o);
}

static void test_train_bad_input(dsc_t *t) {
    char cfg[512], data[512], bad[512], args[4096], common[1024];
    snprintf(cfg, sizeof cfg, "%s/tiny_config.json", t->tmpdir);
    T_CHECK(t, t_write_file(cfg, CONFIG, strlen(CONFIG)) == 0, "cannot write %s", cfg);
    t_write_words(t, "data.txt", 200, data, sizeof data);
    snprintf(common, sizeof common,
             "--tokenizer " TOKDIR " --config %s --steps 20 --batch 2 --seq 16 --warmup 2 "
             "--val-frac 0.2 --seed 5 -t 2", cfg);

    /* empty corpus (and one of blank lines only) */
    snprintf(bad, sizeof bad, "%s/empty.txt", t->tmpdir);
    T_CHECK(t, t_write_file(bad, "", 0) == 0, "cannot write %s", bad);
    snprintf(args, sizeof args, "train -m %s/e1 --data %s %s", t->tmpdir, bad, common);
    expect_fail(t, "e1.txt", args, "holds no text");
    T_CHECK(t, t_write_file(bad, "\n  \n\n", 5) == 0, "cannot write %s", bad);
    expect_fail(t, "e1b.txt", args, "holds no text");

    /* not UTF-8 */
    snprintf(bad, sizeof bad, "%s/latin1.txt", t->tmpdir);
    T_CHECK(t, t_write_file(bad, "caf\xe9 au lait.\n", 15) == 0, "cannot write %s", bad);
    snprintf(args, sizeof args, "train -m %s/e2 --data %s %s", t->tmpdir, bad, common);
    expect_fail(t, "e2.txt", args, "not UTF-8");

    /* --seq over max_position_embeddings (128) */
    snprintf(args, sizeof args, "train -m %s/e3 --data %s %s --seq 129", t->tmpdir, data, common);
    expect_fail(t, "e3.txt", args, "max_position_embeddings");

    /* unwritable OUT_DIR: under a regular file (fails even as root) */
    snprintf(args, sizeof args, "train -m %s/data.txt/out --data %s %s", t->tmpdir, data, common);
    expect_fail(t, "e4.txt", args, "cannot write checkpoints");
    snprintf(args, sizeof args, "train -m %s --data %s %s", data, data, common);
    expect_fail(t, "e4b.txt", args, "not a directory");

    /* NaN/inf: 4 good steps (checkpoint of step 4), then an absurd lr */
    char *o = NULL;
    snprintf(args, sizeof args, "train -m %s/nan --data %s %s --lr 1e-2 --stop-after 4",
             t->tmpdir, data, common);
    int st = t_run_dsc(t, "n1.txt", args, &o);
    T_CHECK(t, st == 0, "dsc %s: exit %d: %s", args, st, o ? o : "");
    free(o);
    snprintf(args, sizeof args, "train -m %s/nan --data %s %s --lr 1e30 --save-every 1 "
             "--eval-every 1", t->tmpdir, data, common);
    st = t_run_dsc(t, "n2.txt", args, &o);
    const char *p = o ? strstr(o, "keeps the last good checkpoint (step ") : NULL;
    T_CHECK(t, st == 1 && o && strstr(o, "not finite") && p, "lr 1e30: exit %d: %s", st,
            o ? o : "");
    long long good = p ? atoll(p + strlen("keeps the last good checkpoint (step ")) : -1;
    free(o);
    T_CHECK(t, good >= 4 && good < 20, "last good step %lld", good);
    char path[600];
    snprintf(path, sizeof path, "%s/nan/trainer_state.json", t->tmpdir);
    char *js = t_read_file(path, NULL), want[64];
    snprintf(want, sizeof want, "\"step\": %lld,", good);
    T_CHECK(t, js && strstr(js, want), "%s is not of step %lld: %s", path, good, js ? js : "");
    free(js);
    snprintf(args, sizeof args, "run -m %s/nan --ids 1,2,3 -n 4 --temp 0 --print-ids -q",
             t->tmpdir);
    st = t_run_dsc(t, "n3.txt", args, &o);
    int ids[4], n = o ? sscanf(o, "%d %d %d %d", &ids[0], &ids[1], &ids[2], &ids[3]) : 0;
    T_CHECK(t, st == 0 && n == 4, "dsc %s: exit %d: %s", args, st, o ? o : "");
    free(o);
    /* and training resumes from it */
    snprintf(args, sizeof args, "train -m %s/nan --data %s %s --lr 1e-2 --stop-after %lld",
             t->tmpdir, data, common, good + 1);
    st = t_run_dsc(t, "n4.txt", args, &o);
    T_CHECK(t, st == 0 && o && strstr(o, "resumed"), "dsc %s: exit %d: %s", args, st,
            o ? o : "");
    free(o);
}

static void test_train_usage(dsc_t *t) {
    char args[1024];
    char *o = NULL;
    snprintf(args, sizeof args, "train -m %s/u --tokenizer " TOKDIR, t->tmpdir);
    int st = t_run_dsc(t, "u1.txt", args, &o);
    T_CHECK(t, st == 2 && o && strstr(o, "--data"), "no --data: exit %d: %s", st, o ? o : "");
    free(o);
    /* an empty OUT_DIR needs --config */
    snprintf(args, sizeof args, "train -m %s/u --tokenizer " TOKDIR " --data %s/u.txt",
             t->tmpdir, t->tmpdir);
    st = t_run_dsc(t, "u2.txt", args, &o);
    T_CHECK(t, st == 1 && o && strstr(o, "--config"), "no --config: exit %d: %s", st,
            o ? o : "");
    free(o);
    st = t_run_dsc(t, "u3.txt", "train -m x --data y --steps 0", &o);
    T_CHECK(t, st == 2, "--steps 0: exit %d: %s", st, o ? o : "");
    free(o);
}

/* The rows of DIR/train_log.csv (their steps, in file order, in steps[0,
   cap)); -1 when the file is missing or its header is not the documented
   one. Rows with a validation loss are counted in *n_val. */
static int csv_steps(const char *dir, int *steps, int cap, int *n_val) {
    static const char *HEADER = "step,loss,lm,mtp,balance,lr,grad_norm,tokens_per_s,"
                                "elapsed_s,val_loss,val_mtp,idx_kl,idx_recall\n";
    char path[700];
    snprintf(path, sizeof path, "%s/train_log.csv", dir);
    char *csv = t_read_file(path, NULL);
    if (!csv || strncmp(csv, HEADER, strlen(HEADER))) {
        free(csv);
        return -1;
    }
    int n = 0;
    *n_val = 0;
    for (char *p = csv + strlen(HEADER); *p; p = strchr(p, '\n') + 1) {
        if (!strchr(p, '\n')) break;
        if (n < cap) steps[n] = atoi(p);
        n++;
        /* fields 10 and 11 (val_loss, val_mtp) follow the 9th comma */
        const char *q = p;
        for (int k = 0; k < 9 && q; k++) q = strchr(q + 1, ',');
        if (q && q[1] != ',' && q[1] != '\n') (*n_val)++;
    }
    free(csv);
    return n;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Whether the trainer_state.json of dir is of `step`. */
static int state_step_is(const char *dir, int step) {
    char path[700], want[64];
    snprintf(path, sizeof path, "%s/trainer_state.json", dir);
    snprintf(want, sizeof want, "\"step\": %d,", step);
    char *js = t_read_file(path, NULL);
    int ok = js && strstr(js, want);
    free(js);
    return ok;
}

/* train_log.csv, loss.svg and train_run.json: a run stopped after step 7
   (checkpoints at 5 and 7), a row of a lost step 8 planted in the log as an
   interrupted run would leave it, then the resume to step 12 (without
   --steps: the schedule's length comes from train_run.json). */
static void test_train_log(dsc_t *t) {
    char cfg[512], data[512], args[3072], common[2048], dir[600], path[700];
    snprintf(cfg, sizeof cfg, "%s/log_config.json", t->tmpdir);
    T_CHECK(t, t_write_file(cfg, CONFIG, strlen(CONFIG)) == 0, "cannot write %s", cfg);
    t_write_words(t, "data.txt", 200, data, sizeof data);
    snprintf(dir, sizeof dir, "%s/log", t->tmpdir);
    snprintf(common, sizeof common,
             "train -m %s --data %s --tokenizer " TOKDIR " --config %s --batch 2 --seq 16 "
             "--lr 1e-2 --warmup 2 --eval-every 5 --save-every 5 --val-frac 0.2 --seed 7 -t 2",
             dir, data, cfg);
    char *o = NULL;
    snprintf(args, sizeof args, "%s --steps 12 --stop-after 7", common);
    int st = t_run_dsc(t, "log1.txt", args, &o);
    T_CHECK(t, st == 0, "dsc %s: exit %d: %s", args, st, o ? o : "");
    const char *p = o ? strstr(o, "step 3/12 ") : NULL;
    const char *nl = p ? strchr(p, '\n') : NULL, *eta = p ? strstr(p, "  eta ") : NULL;
    T_CHECK(t, p && eta && eta < nl, "no eta on the progress line: %s", o ? o : "");
    free(o);
    int steps[64], n_val = 0, n = csv_steps(dir, steps, 64, &n_val);
    T_CHECK(t, n == 7 && n_val == 2, "train_log.csv after step 7: %d rows, %d with val loss "
            "(want 7, 2: steps 5 and 7)", n, n_val);
    for (int i = 0; i < n && i < 7; i++)
        T_CHECK(t, steps[i] == i + 1, "row %d: step %d", i, steps[i]);
    snprintf(path, sizeof path, "%s/train_run.json", dir);
    char *js = t_read_file(path, NULL);
    T_CHECK(t, js && strstr(js, "\"steps\": 12"), "%s: %s", path, js ? js : "(missing)");
    free(js);

    /* an interrupted run's step 8, not in the checkpoint */
    snprintf(path, sizeof path, "%s/train_log.csv", dir);
    FILE *f = fopen(path, "ab");
    T_CHECK(t, f != NULL, "cannot append to %s", path);
    if (f) {
        fputs("8,99.0,99.0,,,1e-3,1.0,1.0,1.0,,\n", f);
        fclose(f);
    }
    st = t_run_dsc(t, "log2.txt", common, &o);
    T_CHECK(t, st == 0 && o && strstr(o, "resumed") && strstr(o, "steps 8..12 of 12"),
            "dsc %s: exit %d: %s", common, st, o ? o : "");
    free(o);
    n = csv_steps(dir, steps, 64, &n_val);
    T_CHECK(t, n == 12 && n_val == 4 && state_step_is(dir, 12),
            "train_log.csv after the resume: %d rows (%d with val loss), want 12 (4)", n, n_val);
    for (int i = 0; i < n && i < 12; i++)
        T_CHECK(t, steps[i] == i + 1, "row %d: step %d (want one row per step)", i, steps[i]);
    char *csv = t_read_file(path, NULL);
    /* the planted row's own text: a bare "99.0" also occurs in a tokens/s like 19899.0 */
    T_CHECK(t, csv && !strstr(csv, "\n8,99.0,99.0,"), "the lost step's row survived: %s",
            csv ? csv : "");
    free(csv);

    /* loss.svg: a whole SVG document with curves and labels */
    snprintf(path, sizeof path, "%s/loss.svg", dir);
    char *svg = t_read_file(path, NULL);
    T_CHECK(t, svg && (!strncmp(svg, "<?xml", 5) || !strncmp(svg, "<svg", 4)) &&
               strstr(svg, "<svg xmlns=\"http://www.w3.org/2000/svg\"") &&
               strstr(svg, "<polyline") && strstr(svg, ">step</text>") &&
               strstr(svg, "validation loss") && strstr(svg, "</svg>\n"),
            "%s is not the loss plot: %.300s", path, svg ? svg : "(missing)");
    if (svg) {   /* every element closed: as many "<" tags opened as closed */
        int open = 0, closed = 0;
        for (const char *q = svg; (q = strchr(q, '<')); q++) {
            if (q[1] == '?') continue;
            if (q[1] == '/') closed++;
            else open++;
            const char *e = strchr(q, '>');
            if (e && e[-1] == '/') closed++;
        }
        T_CHECK(t, open == closed, "%s: %d elements opened, %d closed", path, open, closed);
    }
    free(svg);
    snprintf(path, sizeof path, "%s.next", dir);
    T_CHECK(t, access(path, F_OK) != 0, "the staging directory %s was left behind", path);
}

/* --preset: tiny is configs/demo-v3-tiny.json; bad uses are refused. */
static void test_train_preset(dsc_t *t) {
    char data[512], args[3072], path[700];
    t_write_words(t, "data.txt", 200, data, sizeof data);
    char *o = NULL;
    snprintf(args, sizeof args, "train -m %s/pt --data %s --tokenizer " TOKDIR " --preset tiny "
             "--steps 2 --batch 2 --seq 16 -t 2", t->tmpdir, data);
    int st = t_run_dsc(t, "pt.txt", args, &o);
    T_CHECK(t, st == 0 && o && strstr(o, "preset tiny") && strstr(o, "step 2/2 "),
            "dsc %s: exit %d: %s", args, st, o ? o : "");
    free(o);
    snprintf(path, sizeof path, "%s/pt/config.json", t->tmpdir);
    char *js = t_read_file(path, NULL);
    T_CHECK(t, js && strstr(js, "\"hidden_size\": 128,") && strstr(js, "\"vocab_size\": 4096,"),
            "%s: %s", path, js ? js : "(missing)");
    /* the same config.json as from the demo config */
    snprintf(args, sizeof args, "train -m %s/pc --data %s --tokenizer " TOKDIR
             " --config configs/demo-v3-tiny.json --steps 1 --batch 2 --seq 16 -t 2",
             t->tmpdir, data);
    st = t_run_dsc(t, "pc.txt", args, &o);
    T_CHECK(t, st == 0, "dsc %s: exit %d: %s", args, st, o ? o : "");
    free(o);
    snprintf(path, sizeof path, "%s/pc/config.json", t->tmpdir);
    char *jc = t_read_file(path, NULL);
    T_CHECK(t, js && jc && !strcmp(js, jc), "preset tiny differs from configs/demo-v3-tiny.json:"
            "\n%s\nvs\n%s", js ? js : "", jc ? jc : "");
    free(js);
    free(jc);

    snprintf(args, sizeof args, "train -m %s/pb --data %s --tokenizer " TOKDIR " --preset huge",
             t->tmpdir, data);
    st = t_run_dsc(t, "pb.txt", args, &o);
    T_CHECK(t, st == 2 && o && strstr(o, "unknown --preset \"huge\" (presets: tiny, small)"),
            "bad preset: exit %d: %s", st, o ? o : "");
    free(o);
    snprintf(args, sizeof args, "train -m %s/pb --data %s --tokenizer " TOKDIR " --preset tiny "
             "--config configs/demo-v3-tiny.json", t->tmpdir, data);
    st = t_run_dsc(t, "pb2.txt", args, &o);
    T_CHECK(t, st == 2 && o && strstr(o, "--preset and --config"), "both: exit %d: %s", st,
            o ? o : "");
    free(o);
    st = t_run_dsc(t, "ph.txt", "train --help", &o);
    T_CHECK(t, st == 0 && o && strstr(o, "--preset NAME") && strstr(o, " tiny ") &&
               strstr(o, " small ") && strstr(o, "--time-budget"),
            "train --help: exit %d: %s", st, o ? o : "");
    free(o);
}

/* --time-budget 0.05 (3 s) without --steps: the schedule is sized from the
   measured speed, the run stops by itself and leaves a loadable checkpoint
   whose train_run.json keeps the schedule. */
static void test_train_budget(dsc_t *t) {
    char cfg[512], data[512], args[3072], dir[600], path[700];
    snprintf(cfg, sizeof cfg, "%s/budget_config.json", t->tmpdir);
    T_CHECK(t, t_write_file(cfg, CONFIG, strlen(CONFIG)) == 0, "cannot write %s", cfg);
    t_write_words(t, "data.txt", 200, data, sizeof data);
    snprintf(dir, sizeof dir, "%s/budget", t->tmpdir);
    snprintf(args, sizeof args, "train -m %s --data %s --tokenizer " TOKDIR " --config %s "
             "--batch 2 --seq 16 --lr 1e-2 --eval-every 200 --val-frac 0.2 --seed 7 -t 2 "
             "--time-budget 0.05", dir, data, cfg);
    char *o = NULL;
    double t0 = now_s();
    int st = t_run_dsc(t, "budget.txt", args, &o);
    double dt = now_s() - t0;
    const char *p = o ? strstr(o, "time budget 0.05 min: ~") : NULL;
    long long sized = p ? atoll(p + strlen("time budget 0.05 min: ~")) : 0;
    T_CHECK(t, st == 0 && p && sized > 22 && strstr(o, " s/step"), "dsc %s: exit %d: %s", args,
            st, o ? o : "");
    /* 3 s of training, plus loading and the last save; generous for ASan */
    T_CHECK(t, dt < 20, "a 3 s budget took %.1f s", dt);
    free(o);
    snprintf(path, sizeof path, "%s/train_run.json", dir);
    char *js = t_read_file(path, NULL), want[64];
    snprintf(want, sizeof want, "\"steps\": %lld,", sized);
    T_CHECK(t, js && strstr(js, want) && strstr(js, "\"time_budget_min\": 0.05"), "%s: %s",
            path, js ? js : "(missing)");
    free(js);
    snprintf(path, sizeof path, "%s/trainer_state.json", dir);
    js = t_read_file(path, NULL);
    p = js ? strstr(js, "\"step\": ") : NULL;
    long long done = p ? atoll(p + 8) : 0;
    T_CHECK(t, done > 22 && done <= sized, "stopped at step %lld of %lld", done, sized);
    free(js);
    int first = 0, n_val = 0, n = csv_steps(dir, &first, 1, &n_val);
    /* a validation every 200 steps and one at the end (the same row when
       the run happens to stop on a multiple of 200) */
    T_CHECK(t, n == done && first == 1 && n_val == (int)(done / 200) + (done % 200 != 0),
            "train_log.csv: %d rows from step %d, %d with val loss; checkpoint step %lld", n,
            first, n_val, done);
    snprintf(args, sizeof args, "run -m %s --ids 1,2,3 -n 4 --temp 0 --print-ids -q", dir);
    st = t_run_dsc(t, "budget_run.txt", args, &o);
    T_CHECK(t, st == 0, "dsc %s: exit %d: %s", args, st, o ? o : "");
    free(o);
}

/* --passkey-mix 0.5: 6 steps, deterministic, 3 + resume + 3 == 6, and it
   changes the data (step 1's loss differs from an unmixed run's); a bad
   share (1.5) is bad usage, a --seq too short for the example exits 1. */
static void test_train_passkey_mix(dsc_t *t) {
    char cfg[512], data[512], args[3072], common[2048];
    snprintf(cfg, sizeof cfg, "%s/tiny_config.json", t->tmpdir);
    T_CHECK(t, t_write_file(cfg, CONFIG, strlen(CONFIG)) == 0, "cannot write %s", cfg);
    t_write_words(t, "data.txt", 200, data, sizeof data);
    snprintf(common, sizeof common,
             "--data %s --tokenizer " TOKDIR " --config %s --steps 6 --batch 2 --seq 64 "
             "--lr 1e-2 --warmup 1 --save-every 3 --val-frac 0.2 --seed 3 -t 2", data, cfg);
    static char l[4][NSTEP + 1][32];
    double v[NSTEP + 1];
    const char *leg[4] = {"pka", "pkb", "pkc", "pkn"};
    char *o = NULL;
    for (int r = 0; r < 4; r++) {
        int n = 0;
        for (int part = 0; part < (r == 2 ? 2 : 1); part++) {
            snprintf(args, sizeof args, "train -m %s/%s %s%s%s", t->tmpdir, leg[r], common,
                     r == 3 ? "" : " --passkey-mix 0.5",
                     r == 2 && part == 0 ? " --stop-after 3" : "");
            int st = t_run_dsc(t, "pk.txt", args, &o);
            T_CHECK(t, st == 0, "dsc %s: exit %d: %s", args, st, o ? o : "");
            if (r < 3)
                T_CHECK(t, o && strstr(o, "passkey mix 0.5"), "no passkey mix line: %s",
                        o ? o : "");
            n += t_log_steps(o, "loss ", NSTEP, v, l[r]);
            free(o);
        }
        T_CHECK(t, n == 6, "run %s logged %d steps", leg[r], n);
    }
    for (int s = 1; s <= 6; s++) {
        T_CHECK(t, l[0][s][0] && !strcmp(l[0][s], l[1][s]), "same seed, step %d: %s vs %s", s,
                l[0][s], l[1][s]);
        T_CHECK(t, !strcmp(l[0][s], l[2][s]), "resumed, step %d: %s vs %s", s, l[2][s],
                l[0][s]);
    }
    T_CHECK(t, strcmp(l[0][1], l[3][1]), "--passkey-mix 0.5 left step 1 unchanged (%s)",
            l[0][1]);

    snprintf(args, sizeof args, "train -m %s/pkbad %s --passkey-mix 1.5", t->tmpdir, common);
    int st = t_run_dsc(t, "pk_bad.txt", args, &o);
    T_CHECK(t, st == 2 && o && strstr(o, "--passkey-mix"), "dsc %s: exit %d (want 2): %s",
            args, st, o ? o : "");
    free(o);
    snprintf(args, sizeof args, "train -m %s/pkshort %s --passkey-mix 0.5 --seq 16", t->tmpdir,
             common);
    expect_fail(t, "pk_short.txt", args, "too short for a passkey example");
}

const dsc_test_case dsc_tests_train_cli[] = {
    {"train_cli", test_train},
    {"train_cli_usage", test_train_usage},
    {"train_cli_mtp", test_train_mtp},
    {"train_cli_bad_input", test_train_bad_input},
    {"train_cli_log", test_train_log},
    {"train_cli_preset", test_train_preset},
    {"train_cli_budget", test_train_budget},
    {"train_cli_passkey_mix", test_train_passkey_mix},
    {NULL, NULL},
};
