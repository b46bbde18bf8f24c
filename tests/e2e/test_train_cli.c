/*
 * test_train_cli.c - `dsc train` end to end, through the command line: a new
 * model from a tiny V3-shaped config (2 layers, 1 dense + 1 MoE with
 * noaux_tc routing) and the brown tokenizer, ~20 steps on a generated text.
 * Checks: exit 0; the loss falls; two runs with one seed log identical
 * losses; a run stopped at step 10 and resumed logs exactly the uninterrupted
 * run's steps 11..20; the result runs under `dsc run`; bad usage exits 2/1.
 * Dims are tiny so that the suite stays fast under ASan.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

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

/* Run `dsc ARGS` with stdout+stderr into tmpdir/NAME; returns the exit status
   (-1 when it did not exit normally) and the output in *out (malloc'd). */
static int run(dsc_t *t, const char *name, const char *args, char **out) {
    char cmd[4096], path[512];
    snprintf(path, sizeof path, "%s/%s", t->tmpdir, name);
    snprintf(cmd, sizeof cmd, "%s %s > '%s' 2>&1", t->dsc_bin, args, path);
    int st = system(cmd);
    if (out) *out = t_read_file(path, NULL);
    if (st == -1 || !WIFEXITED(st)) return -1;
    return WEXITSTATUS(st);
}

/* The loss text of each "step N/M  loss X" line, by step (1-based); returns
   how many steps were found. */
static int losses(const char *log, char lo[][32], double *v) {
    int n = 0;
    for (const char *p = log; p && (p = strstr(p, "step ")); p++) {
        int step, tot;
        char num[32];
        if (sscanf(p, "step %d/%d loss %31s", &step, &tot, num) == 3 && step >= 1 &&
            step <= NSTEP) {
            snprintf(lo[step], sizeof lo[0], "%s", num);
            v[step] = atof(num);
            n++;
        }
    }
    return n;
}

/* The test text: 200 lines of a small-vocabulary language (so a tiny model
   can learn something in 20 steps), a blank line after every 10th. */
static void write_data(dsc_t *t, char *path, size_t cap) {
    static const char *w[] = {"the", "cat", "sat", "on", "a", "mat", "and", "dog",
                              "ran", "to", "big", "red", "house", "while", "birds", "sang"};
    snprintf(path, cap, "%s/data.txt", t->tmpdir);
    FILE *f = fopen(path, "w");
    T_CHECK(t, f != NULL, "cannot write %s", path);
    if (!f) return;
    t_rng r = {42};
    for (int i = 0; i < 200; i++) {
        int n = 4 + (int)(t_rng_u64(&r) % 8);
        for (int j = 0; j < n; j++) fprintf(f, "%s%s", j ? " " : "", w[t_rng_u64(&r) % 16]);
        fprintf(f, ".\n%s", i % 10 == 9 ? "\n" : "");
    }
    fclose(f);
}

static void test_train(dsc_t *t) {
    char cfg[512], data[512], args[3072], common[2048];
    snprintf(cfg, sizeof cfg, "%s/tiny_config.json", t->tmpdir);
    T_CHECK(t, t_write_file(cfg, CONFIG, strlen(CONFIG)) == 0, "cannot write %s", cfg);
    write_data(t, data, sizeof data);
    snprintf(common, sizeof common,
             "--data %s --tokenizer " TOKDIR " --config %s --steps %d --batch 2 --seq 16 "
             "--lr 1e-2 --warmup 2 --eval-every 10 --save-every 10 --val-frac 0.2 --seed 7 -t 2",
             data, cfg, NSTEP);

    /* a: uninterrupted; b: the same again */
    static char la[NSTEP + 1][32], lb[NSTEP + 1][32], lc[NSTEP + 1][32];
    double va[NSTEP + 1] = {0}, vb[NSTEP + 1] = {0}, vc[NSTEP + 1] = {0};
    char *o = NULL;
    snprintf(args, sizeof args, "train -m %s/a %s", t->tmpdir, common);
    int st = run(t, "a.txt", args, &o);
    T_CHECK(t, st == 0, "dsc %s: exit %d: %s", args, st, o ? o : "");
    int na = losses(o, la, va);
    T_CHECK(t, na == NSTEP, "run a logged %d steps: %s", na, o ? o : "");
    T_CHECK(t, o && strstr(o, "val loss") && strstr(o, "expert load max/mean: L1"),
            "no validation / expert load lines: %s", o ? o : "");
    free(o);
    if (na != NSTEP) return;
    /* measured: 8.32 -> 5.79 on this text; 0.5 leaves a wide margin */
    T_CHECK(t, va[NSTEP] < va[1] - 0.5, "loss did not fall: %g -> %g", va[1], va[NSTEP]);

    snprintf(args, sizeof args, "train -m %s/b %s", t->tmpdir, common);
    st = run(t, "b.txt", args, &o);
    T_CHECK(t, st == 0, "dsc %s: exit %d: %s", args, st, o ? o : "");
    int nb = losses(o, lb, vb);
    free(o);
    T_CHECK(t, nb == NSTEP, "run b logged %d steps", nb);
    for (int s = 1; s <= NSTEP && nb == NSTEP; s++)
        T_CHECK(t, !strcmp(la[s], lb[s]), "same seed, step %d: loss %s vs %s", s, la[s], lb[s]);

    /* c: stopped after step 10 (the schedule still spans 20), then resumed */
    snprintf(args, sizeof args, "train -m %s/c %s --stop-after 10", t->tmpdir, common);
    st = run(t, "c1.txt", args, &o);
    T_CHECK(t, st == 0, "dsc %s: exit %d: %s", args, st, o ? o : "");
    int nc = losses(o, lc, vc);
    free(o);
    T_CHECK(t, nc == 10, "run c logged %d steps before the stop", nc);
    snprintf(args, sizeof args, "train -m %s/c %s", t->tmpdir, common);
    st = run(t, "c2.txt", args, &o);
    T_CHECK(t, st == 0, "dsc %s: exit %d: %s", args, st, o ? o : "");
    T_CHECK(t, o && strstr(o, "resumed"), "second leg did not resume: %s", o ? o : "");
    memset(lc[11], 0, 10 * sizeof lc[11]);
    nc = losses(o, lc, vc);
    free(o);
    T_CHECK(t, nc == 10, "resumed run logged %d steps", nc);
    for (int s = 1; s <= NSTEP; s++)
        T_CHECK(t, !strcmp(la[s], lc[s]), "resumed run, step %d: loss %s vs %s", s, lc[s],
                la[s]);

    /* the result is an ordinary model directory */
    snprintf(args, sizeof args, "run -m %s/a --ids 1,2,3 -n 4 --temp 0 --print-ids -q",
             t->tmpdir);
    st = run(t, "run.txt", args, &o);
    int ids[4], n = o ? sscanf(o, "%d %d %d %d", &ids[0], &ids[1], &ids[2], &ids[3]) : 0;
    T_CHECK(t, st == 0 && n == 4, "dsc %s: exit %d, %d ids: %s", args, st, n, o ? o : "");
    free(o);
    snprintf(args, sizeof args, "info -m %s/c", t->tmpdir);
    st = run(t, "info.txt", args, &o);
    T_CHECK(t, st == 0, "dsc %s: exit %d: %s", args, st, o ? o : "");
    free(o);
}

static void test_train_usage(dsc_t *t) {
    char args[1024];
    char *o = NULL;
    snprintf(args, sizeof args, "train -m %s/u --tokenizer " TOKDIR, t->tmpdir);
    int st = run(t, "u1.txt", args, &o);
    T_CHECK(t, st == 2 && o && strstr(o, "--data"), "no --data: exit %d: %s", st, o ? o : "");
    free(o);
    /* an empty OUT_DIR needs --config */
    snprintf(args, sizeof args, "train -m %s/u --tokenizer " TOKDIR " --data %s/u.txt",
             t->tmpdir, t->tmpdir);
    st = run(t, "u2.txt", args, &o);
    T_CHECK(t, st == 1 && o && strstr(o, "--config"), "no --config: exit %d: %s", st,
            o ? o : "");
    free(o);
    st = run(t, "u3.txt", "train -m x --data y --steps 0", &o);
    T_CHECK(t, st == 2, "--steps 0: exit %d: %s", st, o ? o : "");
    free(o);
}

const dsc_test_case dsc_tests_train_cli[] = {
    {"train_cli", test_train},
    {"train_cli_usage", test_train_usage},
    {NULL, NULL},
};
