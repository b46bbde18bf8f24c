/*
 * test_config.c - config.json parsing: accepted forms, derived values against
 * closed forms, and clear errors that name the offending field.
 */
#include <math.h>
#include <string.h>

#include "model/model.h"
#include "test.h"

/* A minimal V3-like config; %s is spliced in before the closing brace. */
#define V3_BASE                                                                \
    "{\"model_type\": \"deepseek_v3\", \"vocab_size\": 100, \"hidden_size\": 64,"  \
    " \"intermediate_size\": 96, \"moe_intermediate_size\": 32,"                 \
    " \"num_hidden_layers\": 3, \"num_attention_heads\": 3, \"q_lora_rank\": 24,"\
    " \"kv_lora_rank\": 16, \"qk_nope_head_dim\": 8, \"qk_rope_head_dim\": 8,"   \
    " \"v_head_dim\": 12, \"n_routed_experts\": 8, \"n_shared_experts\": 1,"     \
    " \"num_experts_per_tok\": 2,"                                              \
    " \"first_k_dense_replace\": 1, \"max_position_embeddings\": 4096"

static dsc_status parse(const char *extra, dsc_config *c, dsc_err *e) {
    char buf[4096];
    snprintf(buf, sizeof buf, "%s%s}", V3_BASE, extra);
    return dsc_config_parse(buf, strlen(buf), "config.json", c, e);
}

/* Expect failure with status st and a message containing `needle`. */
static void expect_err(dsc_t *t, const char *extra, dsc_status st, const char *needle) {
    dsc_config c;
    dsc_err e = {0};
    dsc_status s = parse(extra, &c, &e);
    T_CHECK(t, s == st, "config +[%s]: status %s, expected %s", extra, dsc_status_str(s),
            dsc_status_str(st));
    T_CHECK(t, s == DSC_OK || strstr(e.msg, needle), "message \"%s\" lacks \"%s\"", e.msg,
            needle);
}

static void test_defaults_v3(dsc_t *t) {
    dsc_config c;
    dsc_err e = {0};
    T_CHECK(t, parse("", &c, &e) == DSC_OK, "%s", e.msg);
    T_CHECK(t, c.topk_method == DSC_TOPK_NOAUX_TC, "V3 default topk_method noaux_tc");
    T_CHECK(t, c.scoring_func == DSC_SCORE_SIGMOID, "V3 default scoring sigmoid");
    T_CHECK(t, c.rope_interleave == 1, "rope_interleave defaults to true");
    T_CHECK(t, c.yarn == 0 && c.rope_theta == 10000.0, "plain rope, theta 10000");
    T_CHECK(t, fabs(c.softmax_scale - 1.0 / 4.0) < 1e-12, "scale = 16^-1/2 without YaRN");
    T_CHECK(t, dsc_config_layer_is_moe(&c, 0) == 0 && dsc_config_layer_is_moe(&c, 1) == 1,
            "first_k_dense_replace = 1");
}

/* Closed forms from the spec's table (§2.4): V3 s = 0.1352338, V2-Lite
   s = 0.1147214 for d_qk = 192, factor 40. Tolerance 5e-8: the table has 7
   significant digits. */
static void test_yarn_scale(dsc_t *t) {
    dsc_config c;
    dsc_err e = {0};
    const char *v3 = ", \"qk_nope_head_dim\": 128, \"qk_rope_head_dim\": 64,"
                     " \"rope_scaling\": {\"type\": \"yarn\", \"factor\": 40,"
                     " \"original_max_position_embeddings\": 4096, \"beta_fast\": 32,"
                     " \"beta_slow\": 1, \"mscale\": 1.0, \"mscale_all_dim\": 1.0}";
    /* duplicate keys are rejected, so splice dims through a fresh document */
    char buf[4096];
    snprintf(buf, sizeof buf,
             "{\"model_type\": \"deepseek_v3\", \"vocab_size\": 10, \"hidden_size\": 8,"
             " \"intermediate_size\": 8, \"num_hidden_layers\": 1, \"num_attention_heads\": 1,"
             " \"kv_lora_rank\": 4, \"v_head_dim\": 4 %s}", v3);
    T_CHECK(t, dsc_config_parse(buf, strlen(buf), "c", &c, &e) == DSC_OK, "%s", e.msg);
    T_CHECK(t, fabs(c.softmax_scale - 0.1352338) < 5e-8, "V3 scale %.9f", c.softmax_scale);
    T_CHECK(t, c.yarn && c.yarn_factor == 40 && c.yarn_original_max_pos == 4096, "yarn read");
    T_CHECK(t, fabs(c.yarn_attention_factor - 1.0) < 1e-12, "attention factor 1 when "
            "mscale == mscale_all_dim");

    snprintf(buf, sizeof buf,
             "{\"model_type\": \"deepseek_v2\", \"vocab_size\": 10, \"hidden_size\": 8,"
             " \"intermediate_size\": 8, \"num_hidden_layers\": 1, \"num_attention_heads\": 1,"
             " \"kv_lora_rank\": 4, \"v_head_dim\": 4, \"q_lora_rank\": null,"
             " \"qk_nope_head_dim\": 128, \"qk_rope_head_dim\": 64,"
             " \"rope_parameters\": {\"rope_type\": \"yarn\", \"rope_theta\": 10000.0,"
             " \"factor\": 40, \"original_max_position_embeddings\": 4096,"
             " \"mscale\": 0.707, \"mscale_all_dim\": 0.707}}");
    T_CHECK(t, dsc_config_parse(buf, strlen(buf), "c", &c, &e) == DSC_OK, "%s", e.msg);
    T_CHECK(t, fabs(c.softmax_scale - 0.1147214) < 5e-8, "V2-Lite scale %.9f", c.softmax_scale);
    T_CHECK(t, c.q_lora_rank == 0, "q_lora_rank null -> 0");
    T_CHECK(t, c.topk_method == DSC_TOPK_GREEDY, "V2 default greedy");
    T_CHECK(t, c.n_routed_experts == 0, "no experts -> all dense");
}

/* Both rope forms must give identical configs. */
static void test_rope_forms_agree(dsc_t *t) {
    dsc_config a, b;
    dsc_err e = {0};
    T_CHECK(t, parse(", \"rope_theta\": 5000, \"rope_scaling\": {\"type\": \"yarn\","
                     " \"factor\": 4, \"original_max_position_embeddings\": 16,"
                     " \"beta_fast\": 32, \"beta_slow\": 1, \"mscale\": 0.707,"
                     " \"mscale_all_dim\": 0.707}", &a, &e) == DSC_OK, "%s", e.msg);
    T_CHECK(t, parse(", \"rope_parameters\": {\"rope_type\": \"yarn\", \"rope_theta\": 5000,"
                     " \"factor\": 4, \"original_max_position_embeddings\": 16,"
                     " \"beta_fast\": 32, \"beta_slow\": 1, \"mscale\": 0.707,"
                     " \"mscale_all_dim\": 0.707}", &b, &e) == DSC_OK, "%s", e.msg);
    T_CHECK(t, memcmp(&a, &b, sizeof a) == 0, "Hub and transformers-5 rope forms differ");
    T_CHECK(t, a.rope_theta == 5000 && a.yarn_factor == 4, "values read");
}

static void test_errors_name_field(dsc_t *t) {
    expect_err(t, ", \"topk_method\": \"best\"", DSC_ERR_CONFIG, "topk_method");
    expect_err(t, ", \"scoring_func\": \"relu\"", DSC_ERR_CONFIG, "scoring_func");
    expect_err(t, ", \"rope_scaling\": {\"type\": \"linear\", \"factor\": 2}", DSC_ERR_CONFIG,
               "rope_scaling");
    expect_err(t, ", \"rope_scaling\": {\"type\": \"yarn\"}", DSC_ERR_CONFIG, "factor");
    expect_err(t, ", \"hidden_act\": \"gelu\"", DSC_ERR_CONFIG, "hidden_act");
    expect_err(t, ", \"norm_topk_prob\": 3", DSC_ERR_CONFIG, "norm_topk_prob");
    expect_err(t, ", \"n_group\": 3", DSC_ERR_CONFIG, "n_group");
    expect_err(t, ", \"topk_group\": 5", DSC_ERR_CONFIG, "topk_group");
    expect_err(t, ", \"qk_rope_head_dim\": 7", DSC_ERR_FORMAT, "");   /* duplicate key */
    expect_err(t, ", \"attention_bias\": true", DSC_ERR_UNSUPPORTED, "attention_bias");
    expect_err(t, ", \"quantization_config\": {\"quant_method\": \"gptq\"}", DSC_ERR_UNSUPPORTED,
               "quant_method");
    expect_err(t, ", \"num_nextn_predict_layers\": -1", DSC_ERR_CONFIG,
               "num_nextn_predict_layers");
    expect_err(t, ", \"rope_theta\": \"big\"", DSC_ERR_CONFIG, "rope_theta");
    /* dimensions whose products would overflow are refused up front */
    dsc_config cbig;
    dsc_err ebig = {0};
    const char *huge = "{\"model_type\": \"deepseek_v3\", \"vocab_size\": 10, \"hidden_size\": 8, "
                       "\"intermediate_size\": 8, \"num_hidden_layers\": 1, "
                       "\"num_attention_heads\": 4611686018427387905, \"kv_lora_rank\": 4, "
                       "\"v_head_dim\": 4, \"qk_nope_head_dim\": 0, \"qk_rope_head_dim\": 4}";
    T_CHECK(t, dsc_config_parse(huge, strlen(huge), "c", &cbig, &ebig) == DSC_ERR_CONFIG &&
                   strstr(ebig.msg, "num_attention_heads"), "2^62 heads: %s", ebig.msg);

    dsc_config c;
    dsc_err e = {0};
    const char *bad[][3] = {
        {"{\"model_type\": \"deepseek_v32\", \"vocab_size\": 10, \"hidden_size\": 8, "
         "\"intermediate_size\": 8, \"num_hidden_layers\": 1, \"num_attention_heads\": 1, "
         "\"kv_lora_rank\": 4, \"v_head_dim\": 4, \"qk_nope_head_dim\": 4, "
         "\"qk_rope_head_dim\": 4}", "index_n_heads", "c"},
        {"{\"model_type\": \"deepseek_v32\", \"vocab_size\": 10, \"hidden_size\": 8, "
         "\"intermediate_size\": 8, \"num_hidden_layers\": 1, \"num_attention_heads\": 1, "
         "\"kv_lora_rank\": 4, \"v_head_dim\": 4, \"qk_nope_head_dim\": 4, "
         "\"qk_rope_head_dim\": 4, \"index_n_heads\": 2, \"index_head_dim\": 8, "
         "\"index_topk\": 0}", "index_topk", "c"},
        {"{\"model_type\": \"deepseek_v32\", \"vocab_size\": 10, \"hidden_size\": 8, "
         "\"intermediate_size\": 8, \"num_hidden_layers\": 1, \"num_attention_heads\": 1, "
         "\"kv_lora_rank\": 4, \"v_head_dim\": 4, \"qk_nope_head_dim\": 4, "
         "\"qk_rope_head_dim\": 4, \"index_n_heads\": 2, \"index_head_dim\": 8, "
         "\"index_topk\": 3}", "q_lora_rank", "c"},
        {"{\"model_type\": \"llama\"}", "model_type", "c"},
        {"{\"vocab_size\": 3}", "model_type", "c"},
        {"{\"model_type\": \"deepseek_v3\", \"vocab_size\": \"many\"}", "vocab_size", "c"},
        {"{\"model_type\": \"deepseek_v3\", \"vocab_size\": 10}", "hidden_size", "c"},
        {"{\"model_type\": \"deepseek_v3\", \"vocab_size\": 2.5}", "vocab_size", "c"},
        {"{\"model_type\": \"deepseek_v3\",", "JSON", "f"},
        {"[1, 2]", "object", "f"},
        {"", "JSON", "f"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        dsc_status want = bad[i][2][0] == 'u'   ? DSC_ERR_UNSUPPORTED
                          : bad[i][2][0] == 'c' ? DSC_ERR_CONFIG
                                                : DSC_ERR_FORMAT;
        dsc_status s = dsc_config_parse(bad[i][0], strlen(bad[i][0]), "x/config.json", &c, &e);
        T_CHECK(t, s == want, "[%s]: %s, expected %s", bad[i][0], dsc_status_str(s),
                dsc_status_str(want));
        T_CHECK(t, strstr(e.msg, bad[i][1]) && strstr(e.msg, "x/config.json"),
                "message \"%s\" lacks \"%s\" or the path", e.msg, bad[i][1]);
    }
}

const dsc_test_case dsc_tests_config[] = {
    {"defaults_v3", test_defaults_v3},
    {"yarn_softmax_scale", test_yarn_scale},
    {"rope_forms_agree", test_rope_forms_agree},
    {"errors_name_field", test_errors_name_field},
    {NULL, NULL},
};
