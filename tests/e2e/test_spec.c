/*
 * test_spec.c - speculative decoding with the MTP module (gen/spec.c).
 *
 *  - the module's logits: the mean next-next-token CE of the inference
 *    module over a sequence equals the trainer's MTP loss (train/, itself
 *    checked against a PyTorch implementation written from the spec);
 *  - greedy speculation gives the plain greedy ids token for token, for
 *    draft_n 1..5, small prefill chunks, continued calls, and after the
 *    cache was rewritten by dsc_forward between calls; on the random v3
 *    fixture (drafts mostly rejected), on V3.2 (DSA, the module with its
 *    own indexer) and FP8 fixtures with a module, and on a model trained
 *    here on a repetitive text (drafts mostly accepted);
 *  - sampling: the joint distribution of the generated tokens matches the
 *    exact one computed from the main model alone (chi-square test,
 *    significance 0.001, fixed seeds so the outcome is reproducible);
 *  - bad input: --spec mtp on a model without MTP weights, AUTO falls back.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "dsc.h"
#include "gen/gen.h"
#include "gen/sample.h"
#include "model/model.h"
#include "test.h"
#include "train/model_train.h"

typedef struct {
    int32_t *ids;
    int64_t n, cap;
} idbuf;

static int collect(void *user, int32_t id) {
    idbuf *b = user;
    if (b->n < b->cap) b->ids[b->n] = id;
    b->n++;
    return 0;
}

static dsc_ctx_t *spec_ctx_v(dsc_t *t, dsc_model_t *m, dsc_spec_mode mode, int draft_n,
                             int64_t n_batch, int probe, int64_t draft_vocab) {
    dsc_ctx_params p = dsc_ctx_default_params();
    p.draft_vocab = draft_vocab;
    p.n_ctx = 256;
    p.n_batch = n_batch;
    p.spec = mode;
    p.draft_n = draft_n;
    p.spec_probe = probe;
    return t_new_ctx(t, m, &p);
}

static dsc_ctx_t *spec_ctx(dsc_t *t, dsc_model_t *m, dsc_spec_mode mode, int draft_n,
                           int64_t n_batch, int probe) {
    return spec_ctx_v(t, m, mode, draft_n, n_batch, probe, 0);
}

static dsc_sampler_t *sampler(dsc_t *t, const dsc_model_t *m, float temp, int top_k,
                              uint64_t seed) {
    dsc_sampler_params sp = dsc_sampler_default_params();
    sp.temp = temp;
    sp.top_k = top_k;
    sp.top_p = 1.0f;
    sp.min_p = 0.0f;
    sp.seed = seed;
    sp.ignore_eos = 1;
    sp.eos_id = (int32_t)dsc_model_config(m)->eos_token_id;
    dsc_sampler_t *s = NULL;
    dsc_err e = {0};
    T_CHECK(t, dsc_sampler_new(&sp, dsc_model_config(m)->vocab_size, &s, &e) == DSC_OK, "%s",
            e.msg);
    return s;
}

/* Greedy ids of one generate call into b (appended). */
static dsc_status gen(dsc_ctx_t *c, dsc_sampler_t *s, const int32_t *prompt, int64_t np,
                      int64_t n, idbuf *b, dsc_gen_stats *st, dsc_err *e) {
    return dsc_generate(c, s, prompt, np, n, -1, collect, b, st, e);
}

/* The inference module's CE on row p's target ids[p+2], averaged, equals the
   trainer's MTP loss on the same sequence (rel 1e-5: both fp32 over a few
   hundred values; the trainer's MTP matches PyTorch within 1e-5). */
static void test_mtp_logits(dsc_t *t) {
    dsc_model_t *m = t_load_fixture(t, "v3");
    if (!m) return;
    const dsc_config *cf = dsc_model_config(m);
    int64_t n = 13, V = cf->vocab_size;
    int32_t ids[13];
    t_rng r = {11};
    for (int64_t i = 0; i < n; i++) ids[i] = (int32_t)(t_rng_u64(&r) % (uint64_t)V);
    dsc_ctx_t *c = spec_ctx(t, m, DSC_SPEC_MTP, 1, 64, 0);
    float *lg = malloc((size_t)((n - 1) * V) * sizeof *lg);
    dsc_err e = {0};
    dsc_train_model_t *tm = NULL;
    if (!c || !lg) goto done;
    T_CHECK(t, dsc_spec_mtp_logits(c, ids, n, lg, &e) == DSC_OK, "%s", e.msg);
    /* rows 0..n-3 predict ids[p+2] */
    double ce = 0.0;
    for (int64_t p = 0; p + 2 < n; p++) {
        const float *z = lg + p * V;
        double mx = z[0], s = 0.0;
        for (int64_t v = 1; v < V; v++) mx = z[v] > mx ? z[v] : mx;
        for (int64_t v = 0; v < V; v++) s += exp((double)z[v] - mx);
        ce += mx + log(s) - z[ids[p + 2]];
    }
    ce /= (double)(n - 2);
    /* the trainer: inputs ids[0..n-2], targets ids[1..n-1], MTP on top */
    T_CHECK(t, dsc_train_model_new_mtp(m, 1, n - 1, 0.3, &tm, &e) == DSC_OK, "%s", e.msg);
    if (!tm) goto done;
    double loss = 0, pce = 0, pbal = 0, pmtp = 0;
    T_CHECK(t, dsc_train_forward(tm, ids, 1, n - 1, &loss, &e) == DSC_OK, "%s", e.msg);
    dsc_train_loss_parts(tm, &pce, &pbal, &pmtp);
    T_CHECK(t, fabs(ce - pmtp) <= 1e-5 * fabs(pmtp), "MTP CE: inference %.9f, trainer %.9f", ce,
            pmtp);
done:
    dsc_train_model_free(tm);
    free(lg);
    dsc_ctx_free(c);
    dsc_model_free(m);
}

/* Plain and speculative greedy on the same calls: a prompt, n1 ids, then a
   second prompt and n2 more ids; plus, in between, a rewrite of the cache
   by dsc_forward at an earlier position (which the module must notice). */
static void greedy_same(dsc_t *t, dsc_model_t *m, const char *what, int draft_n,
                        int64_t n_batch, int probe, int64_t draft_vocab, const int32_t *prompt,
                        int64_t np, double *accept) {
    int64_t n1 = 24, n2 = 16;
    int32_t want[64], got[64];
    idbuf bw = {want, 0, 64}, bg = {got, 0, 64};
    dsc_ctx_t *cp = spec_ctx(t, m, DSC_SPEC_NONE, 0, n_batch, 0);
    dsc_ctx_t *cs = spec_ctx_v(t, m, DSC_SPEC_MTP, draft_n, n_batch, probe, draft_vocab);
    dsc_sampler_t *sp = sampler(t, m, 0.0f, 0, 1), *ss = sampler(t, m, 0.0f, 0, 1);
    dsc_err e = {0};
    dsc_gen_stats st = {0}, st2 = {0};
    int32_t more[3] = {prompt[0], prompt[1], prompt[np - 1]};
    if (!cp || !cs || !sp || !ss) goto done;
    for (int k = 0; k < 2; k++) {
        dsc_ctx_t *c = k ? cs : cp;
        dsc_sampler_t *s = k ? ss : sp;
        idbuf *b = k ? &bg : &bw;
        T_CHECK(t, gen(c, s, prompt, np, n1, b, k ? &st : NULL, &e) == DSC_OK, "%s", e.msg);
        /* rewrite positions np+2.. with other ids (as a user rolling back) */
        int64_t pos = np + 2;
        int32_t alt[2] = {more[2], more[0]};
        T_CHECK(t, dsc_forward(c, alt, 2, pos, NULL, &e) == DSC_OK, "%s", e.msg);
        T_CHECK(t, gen(c, s, more, 3, n2, b, k ? &st2 : NULL, &e) == DSC_OK, "%s", e.msg);
    }
    T_CHECK(t, bw.n == n1 + n2 && bg.n == bw.n, "%s: %lld vs %lld ids", what, (long long)bg.n,
            (long long)bw.n);
    for (int64_t i = 0; i < bw.n && i < bg.n; i++)
        if (want[i] != got[i]) {
            T_CHECK(t, 0, "%s (draft_n %d, n_batch %lld): id %lld is %d, plain greedy %d", what,
                    draft_n, (long long)n_batch, (long long)i, got[i], want[i]);
            break;
        }
    T_CHECK(t, st.spec.active && st.spec.n_steps > 0 && st.spec.n_drafted[0] > 0,
            "%s: no speculation steps (%lld)", what, (long long)st.spec.n_steps);
    int64_t timed = (probe < n1 ? probe : n1) - 1;
    T_CHECK(t, st.spec.n_plain == (timed > 0 ? timed : 0), "%s: %lld timed plain probe steps",
            what, (long long)st.spec.n_plain);
    if (accept) {
        int64_t dr = 0, ac = 0;
        for (int j = 0; j < DSC_SPEC_MAX_DRAFT; j++) {
            dr += st.spec.n_drafted[j] + st2.spec.n_drafted[j];
            ac += st.spec.n_accepted[j] + st2.spec.n_accepted[j];
        }
        *accept = dr ? (double)ac / (double)dr : 0.0;
    }
done:
    dsc_sampler_free(sp);
    dsc_sampler_free(ss);
    dsc_ctx_free(cp);
    dsc_ctx_free(cs);
}

static void test_greedy_fixture(dsc_t *t) {
    dsc_model_t *m = t_load_fixture(t, "v3");
    if (!m) return;
    const int32_t prompt[7] = {3, 17, 42, 5, 99, 64, 8};
    const int drafts[] = {1, 2, 3, 5};
    for (int i = 0; i < 4; i++) greedy_same(t, m, "v3", drafts[i], 64, 0, 0, prompt, 7, NULL);
    greedy_same(t, m, "v3 chunked", 2, 3, 4, 0, prompt, 7, NULL);
    greedy_same(t, m, "v3 draft vocab 40", 2, 64, 0, 40, prompt, 7, NULL);
    dsc_model_free(m);
    /* the module in the other layouts (tests/reference/make_mtp_fixtures.py):
       V3.2, whose module has its own DSA indexer and key cache (contexts
       past index_topk = 7, so both the main model and the module select
       sparsely), and FP8 block-scaled weights with an FP8 eh_proj */
    const char *more[2] = {"v32_mtp", "v3_fp8_mtp"};
    for (int f = 0; f < 2; f++) {
        m = t_load_fixture(t, more[f]);
        if (!m) continue;
        dsc_model_info in;
        dsc_model_get_info(m, &in);
        T_CHECK(t, in.n_mtp_modules == 1, "%s: MTP module not bound", more[f]);
        greedy_same(t, m, more[f], 2, 64, 0, 0, prompt, 7, NULL);
        greedy_same(t, m, more[f], 1, 4, 2, 0, prompt, 7, NULL);
        dsc_model_free(m);
    }
}

/* ---- a model trained here, whose module drafts well ---- */

#define TOKDIR "tests/fixtures/tokenizer_brown"

static const char *SPEC_CONFIG =
    "{\"architectures\": [\"DeepseekV3ForCausalLM\"], \"model_type\": \"deepseek_v3\",\n"
    " \"vocab_size\": 4096, \"hidden_size\": 32, \"intermediate_size\": 48,\n"
    " \"moe_intermediate_size\": 16, \"num_hidden_layers\": 2, \"first_k_dense_replace\": 1,\n"
    " \"moe_layer_freq\": 1, \"num_attention_heads\": 2, \"num_key_value_heads\": 2,\n"
    " \"q_lora_rank\": 16, \"kv_lora_rank\": 16, \"qk_nope_head_dim\": 8,\n"
    " \"qk_rope_head_dim\": 8, \"v_head_dim\": 8, \"n_routed_experts\": 4,\n"
    " \"n_shared_experts\": 1, \"num_experts_per_tok\": 2, \"n_group\": 1, \"topk_group\": 1,\n"
    " \"topk_method\": \"noaux_tc\", \"scoring_func\": \"sigmoid\", \"norm_topk_prob\": true,\n"
    " \"routed_scaling_factor\": 1.0, \"num_nextn_predict_layers\": 1,\n"
    " \"max_position_embeddings\": 256, \"rms_norm_eps\": 1e-06, \"rope_theta\": 10000,\n"
    " \"bos_token_id\": 0, \"eos_token_id\": 1, \"tie_word_embeddings\": false}\n";

/* Train (once per run) a tiny MTP model on a text of repeated sentences,
   so that the module predicts the token after next well; NULL on failure. */
static dsc_model_t *trained(dsc_t *t) {
    char cfg[512], data[512], out[512], cmd[4096], log[600];
    snprintf(cfg, sizeof cfg, "%s/spec_config.json", t->tmpdir);
    snprintf(data, sizeof data, "%s/spec_data.txt", t->tmpdir);
    snprintf(out, sizeof out, "%s/spec_model", t->tmpdir);
    snprintf(log, sizeof log, "%s/spec_train.txt", t->tmpdir);
    dsc_model_t *m = NULL;
    dsc_err e = {0};
    char path[600];
    snprintf(path, sizeof path, "%s/config.json", out);
    FILE *probe = fopen(path, "r");
    if (!probe) {
        T_CHECK(t, t_write_file(cfg, SPEC_CONFIG, strlen(SPEC_CONFIG)) == 0, "cannot write %s",
                cfg);
        FILE *f = fopen(data, "w");
        T_CHECK(t, f != NULL, "cannot write %s", data);
        if (!f) return NULL;
        static const char *s[] = {"the cat sat on the mat.", "a dog ran to the big red house.",
                                  "birds sang while the sun rose."};
        t_rng r = {5};
        for (int i = 0; i < 400; i++) fprintf(f, "%s\n", s[t_rng_u64(&r) % 3]);
        fclose(f);
        snprintf(cmd, sizeof cmd,
                 "%s train -m %s --data %s --tokenizer " TOKDIR " --config %s --steps 150 "
                 "--batch 4 --seq 32 --lr 1e-2 --warmup 10 --val-frac 0.05 --seed 2 -t 2 "
                 "> '%s' 2>&1", t->dsc_bin, out, data, cfg, log);
        int st = system(cmd);
        T_CHECK(t, st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s failed (see %s)", cmd,
                log);
    } else {
        fclose(probe);
    }
    T_CHECK(t, dsc_model_load(out, &m, &e) == DSC_OK, "%s: %s", out, e.msg);
    return m;
}

/* Ids of a text in the bundled tokenizer (with BOS); 0 on failure. */
static int64_t text_ids(dsc_t *t, const char *text, int32_t *ids, int64_t cap) {
    dsc_tokenizer_t *tk = NULL;
    dsc_err e = {0};
    T_CHECK(t, dsc_tokenizer_load(TOKDIR, &tk, &e) == DSC_OK, "%s", e.msg);
    if (!tk) return 0;
    int64_t n = 0;
    T_CHECK(t, dsc_tokenize(tk, text, strlen(text), 1, ids, cap, &n, &e) == DSC_OK && n > 1 &&
                   n <= cap, "tokenize: %s", e.msg);
    dsc_tokenizer_free(tk);
    return n > 1 ? n : 0;
}

/* On the trained model most drafts are accepted (so the acceptance path and
   multi-token commits are what is tested) and the ids are still greedy's. */
static void test_greedy_trained(dsc_t *t) {
    if (!t->dsc_bin) return;
    dsc_model_t *m = trained(t);
    if (!m) return;
    int32_t prompt[16];
    int64_t np = text_ids(t, "the cat sat on", prompt, 16);
    double acc = 0.0;
    for (int dn = 1; dn <= 3; dn++) {
        greedy_same(t, m, "trained", dn, 64, 2, dn == 2 ? 1024 : 0, prompt, np, &acc);
        T_CHECK(t, acc >= 0.5, "trained model, draft_n %d: acceptance %.2f < 0.5", dn, acc);
        if (t->failures) break;
    }
    dsc_model_free(m);
}

/* ---- sampling preserves the distribution ---- */

/* Upper 0.001 quantile of chi-square with k degrees of freedom
   (Wilson-Hilferty; within 1% of the exact value for k >= 3). */
static double chi2_crit(int k) {
    double z = 3.090232306167813; /* standard normal 0.999 quantile */
    double a = 2.0 / (9.0 * k);
    double x = 1.0 - a + z * sqrt(a);
    return k * x * x * x;
}

/*
 * Three tokens after a fixed prompt, sampled at temperature temp with top-k
 * 3, trials times with speculation (draft_n 2; the first token comes from
 * the prefill, the next two from one speculation step); their joint
 * frequencies against the exact joint distribution computed from the main
 * model alone (27 cells, those expecting < 5 merged). Fails when the
 * chi-square statistic exceeds the 0.001 critical value.
 */
static void dist_case(dsc_t *t, dsc_model_t *m, const char *what, float temp, int trials,
                      const int32_t *prompt, int64_t np, double *accept) {
    const dsc_config *cf = dsc_model_config(m);
    int64_t V = cf->vocab_size;
    enum { K = 3 };
    dsc_ctx_t *cp = spec_ctx(t, m, DSC_SPEC_NONE, 0, 64, 0);
    dsc_ctx_t *cs = spec_ctx(t, m, DSC_SPEC_MTP, 2, 64, 0);
    dsc_sampler_t *sd = sampler(t, m, temp, K, 1);
    float *lg = malloc((size_t)V * sizeof *lg), *lg2 = malloc((size_t)V * sizeof *lg2);
    float *lg3 = malloc((size_t)V * sizeof *lg3);
    int32_t *ids = malloc((size_t)V * sizeof *ids);
    float *pr = malloc((size_t)V * sizeof *pr);
    dsc_err e = {0};
    /* exact: P(a) P(b | a) P(c | a b) over the top-3 supports */
    int32_t cell_id[K * K * K][3];
    double cell_p[K * K * K];
    int n_cells = 0;
    if (!cp || !cs || !sd || !lg || !lg2 || !lg3 || !ids || !pr) goto done;
    int32_t seq[16];
    memcpy(seq, prompt, (size_t)np * sizeof *seq);
    T_CHECK(t, dsc_forward_last(cp, prompt, np, 0, lg, &e) == DSC_OK, "%s", e.msg);
    int64_t na = dsc_sampler_dist(sd, lg, prompt, np, ids, pr);
    int32_t A[K];
    float PA[K];
    for (int64_t i = 0; i < na; i++) A[i] = ids[i], PA[i] = pr[i];
    for (int64_t i = 0; i < na; i++) {
        seq[np] = A[i];
        T_CHECK(t, dsc_forward_last(cp, &A[i], 1, np, lg2, &e) == DSC_OK, "%s", e.msg);
        int64_t nb = dsc_sampler_dist(sd, lg2, seq, np + 1, ids, pr);
        int32_t Bi[K];
        float PB[K];
        for (int64_t j = 0; j < nb; j++) Bi[j] = ids[j], PB[j] = pr[j];
        for (int64_t j = 0; j < nb; j++) {
            seq[np + 1] = Bi[j];
            T_CHECK(t, dsc_forward_last(cp, &Bi[j], 1, np + 1, lg3, &e) == DSC_OK, "%s", e.msg);
            int64_t nc = dsc_sampler_dist(sd, lg3, seq, np + 2, ids, pr);
            for (int64_t k = 0; k < nc; k++) {
                cell_id[n_cells][0] = A[i];
                cell_id[n_cells][1] = Bi[j];
                cell_id[n_cells][2] = ids[k];
                cell_p[n_cells++] = (double)PA[i] * PB[j] * pr[k];
            }
        }
    }
    /* speculative samples */
    int64_t count[K * K * K + 1] = {0};
    int64_t drafted = 0, acc = 0;
    for (int r = 0; r < trials; r++) {
        int32_t out[3];
        idbuf b = {out, 0, 3};
        dsc_sampler_t *s = sampler(t, m, temp, K, 1000 + (uint64_t)r);
        dsc_gen_stats st = {0};
        dsc_ctx_reset(cs);
        dsc_status rc = dsc_generate(cs, s, prompt, np, 3, -1, collect, &b, &st, &e);
        dsc_sampler_free(s);
        if (rc != DSC_OK || b.n != 3) {
            T_CHECK(t, 0, "%s: generate: %s (%lld ids)", what, e.msg, (long long)b.n);
            break;
        }
        drafted += st.spec.n_drafted[0] + st.spec.n_drafted[1];
        acc += st.spec.n_accepted[0] + st.spec.n_accepted[1];
        int c = 0;
        while (c < n_cells && !(cell_id[c][0] == out[0] && cell_id[c][1] == out[1] &&
                                cell_id[c][2] == out[2]))
            c++;
        count[c]++; /* c == n_cells: outside the support (must not happen) */
    }
    T_CHECK(t, count[n_cells] == 0, "%s: %lld samples outside the sampler's support", what,
            (long long)count[n_cells]);
    /* merge cells expecting < 5 into one */
    double chi = 0.0, small_e = 0.0;
    int64_t small_o = 0;
    int dof = -1;
    for (int c = 0; c < n_cells; c++) {
        double ex = cell_p[c] * trials;
        if (ex < 5.0) {
            small_e += ex;
            small_o += count[c];
            continue;
        }
        chi += (count[c] - ex) * (count[c] - ex) / ex;
        dof++;
    }
    if (small_e >= 1e-9) {
        chi += (small_o - small_e) * (small_o - small_e) / small_e;
        dof++;
    }
    double crit = dof >= 1 ? chi2_crit(dof) : 0.0;
    T_CHECK(t, dof >= 3 && chi <= crit,
            "%s: chi-square %.2f > %.2f (%d dof, significance 0.001, %d samples)", what, chi,
            crit, dof, trials);
    if (accept) *accept = drafted ? (double)acc / (double)drafted : 0.0;
    if (getenv("DSC_TEST_VERBOSE"))
        fprintf(stderr, "    %s: chi2 %.2f / crit %.2f (%d dof), acceptance %.2f\n", what, chi,
                crit, dof, drafted ? (double)acc / (double)drafted : 0.0);
done:
    free(lg);
    free(lg2);
    free(lg3);
    free(ids);
    free(pr);
    dsc_sampler_free(sd);
    dsc_ctx_free(cp);
    dsc_ctx_free(cs);
}

static void test_sampling_distribution(dsc_t *t) {
    dsc_model_t *m = t_load_fixture(t, "v3");
    if (m) {
        const int32_t prompt[5] = {3, 17, 42, 5, 99};
        dist_case(t, m, "v3 temp 2", 2.0f, 3000, prompt, 5, NULL);
        dsc_model_free(m);
    }
    if (!t->dsc_bin) return;
    m = trained(t);
    if (m) {
        int32_t prompt[16];
        int64_t np = text_ids(t, "a dog ran", prompt, 16);
        double acc = 0.0;
        dist_case(t, m, "trained temp 3", 3.0f, 3000, prompt, np, &acc);
        T_CHECK(t, acc >= 0.3, "trained model: acceptance %.2f under sampling", acc);
        dsc_model_free(m);
    }
}

/* AUTO on the random fixture, whose drafts are always rejected: the output
   is still plain greedy's, and the measurement turns speculation off (a
   step that commits one token in a verify pass plus a draft pass is slower
   than a plain step by construction). */
static void test_auto(dsc_t *t) {
    dsc_model_t *m = t_load_fixture(t, "v3");
    if (!m) return;
    const int32_t prompt[5] = {3, 17, 42, 5, 99};
    int32_t want[48], got[48];
    idbuf bw = {want, 0, 48}, bg = {got, 0, 48};
    dsc_ctx_t *cp = spec_ctx(t, m, DSC_SPEC_NONE, 0, 64, 0);
    dsc_ctx_t *ca = spec_ctx(t, m, DSC_SPEC_AUTO, 1, 64, 4);
    dsc_sampler_t *sp = sampler(t, m, 0.0f, 0, 1), *sa = sampler(t, m, 0.0f, 0, 1);
    dsc_err e = {0};
    dsc_gen_stats st = {0};
    if (cp && ca && sp && sa) {
        T_CHECK(t, gen(cp, sp, prompt, 5, 40, &bw, NULL, &e) == DSC_OK, "%s", e.msg);
        T_CHECK(t, gen(ca, sa, prompt, 5, 40, &bg, &st, &e) == DSC_OK, "%s", e.msg);
        T_CHECK(t, bw.n == 40 && bg.n == 40 && !memcmp(want, got, sizeof(int32_t) * 40),
                "auto: ids differ from plain greedy");
        T_CHECK(t, st.spec.n_steps == 4 && strstr(dsc_ctx_spec_note(ca), "auto: plain"),
                "auto: %lld speculation steps, note \"%s\"", (long long)st.spec.n_steps,
                dsc_ctx_spec_note(ca));
    }
    dsc_sampler_free(sp);
    dsc_sampler_free(sa);
    dsc_ctx_free(cp);
    dsc_ctx_free(ca);
    dsc_model_free(m);
}

/* ---- bad input ---- */

static void test_spec_bad_input(dsc_t *t) {
    dsc_model_t *m = t_load_fixture(t, "v2_lite");
    if (!m) return;
    dsc_ctx_params p = dsc_ctx_default_params();
    p.n_ctx = 64;
    p.spec = DSC_SPEC_MTP;
    dsc_ctx_t *c = NULL;
    dsc_err e = {0};
    T_CHECK(t, dsc_ctx_new(m, &p, &c, &e) == DSC_ERR_MISSING && !c && strstr(e.msg, "MTP"),
            "--spec mtp without MTP weights: %s", e.msg);
    p.spec = DSC_SPEC_AUTO;
    T_CHECK(t, dsc_ctx_new(m, &p, &c, &e) == DSC_OK && c, "auto: %s", e.msg);
    if (c) {
        T_CHECK(t, !dsc_ctx_spec_enabled(c) && strstr(dsc_ctx_spec_note(c), "no MTP"),
                "auto without MTP: %s", dsc_ctx_spec_note(c));
        dsc_ctx_free(c);
        c = NULL;
    }
    p.spec = DSC_SPEC_MTP;
    p.draft_n = DSC_SPEC_MAX_DRAFT + 1;
    T_CHECK(t, dsc_ctx_new(m, &p, &c, &e) == DSC_ERR_ARG && !c, "draft_n too large: %s", e.msg);
    p.draft_n = 1;
    p.spec = (dsc_spec_mode)7;
    T_CHECK(t, dsc_ctx_new(m, &p, &c, &e) == DSC_ERR_ARG && !c, "bad mode: %s", e.msg);
    dsc_model_free(m);
}

const dsc_test_case dsc_tests_spec[] = {
    {"mtp_logits", test_mtp_logits},
    {"greedy_fixture", test_greedy_fixture},
    {"greedy_trained", test_greedy_trained},
    {"sampling_distribution", test_sampling_distribution},
    {"auto", test_auto},
    {"bad_input", test_spec_bad_input},
    {NULL, NULL},
};
