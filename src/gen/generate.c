/*
 * generate.c - the prefill + decode loop on one context.
 *
 *   [pending ; prompt] --prefill in n_batch chunks--> logits of the last
 *   repeat: id = sample(logits); report id; stop on EOS / n_predict / a full
 *           context / the callback; else feed id (one absorbed-MLA decode
 *           step) and take its logits.
 *
 * The last sampled id is not fed before returning (nobody may need its
 * logits); it stays pending in the context and is fed first by the next
 * call. That is what lets `dsc chat` keep the cache across turns: the next
 * turn's prompt is appended behind the answer, never re-prefilled.
 */
#include <time.h>

#include "gen/gen.h"
#include "util/util.h"

double dsc_gen_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Feed ids[0..n) at the context's end in n_batch chunks; logits of the last
   token land in c->w.logits. */
static dsc_status feed(dsc_ctx_t *c, const int32_t *ids, int64_t n, dsc_err *err) {
    for (int64_t i = 0; i < n;) {
        int64_t step = n - i < c->p.n_batch ? n - i : c->p.n_batch;
        float *lg = i + step == n ? c->w.logits : NULL;
        DSC_TRY(dsc_forward_last(c, ids + i, step, c->n_past, lg, err));
        i += step;
    }
    return DSC_OK;
}

dsc_status dsc_gen_check(const dsc_ctx_t *c, const dsc_sampler_t *s, const int32_t *prompt,
                         int64_t n_prompt, int64_t n_in, dsc_err *err) {
    if (n_prompt < 0 || (n_prompt > 0 && !prompt))
        return dsc_err_set(err, DSC_ERR_ARG, "bad prompt (%lld ids)", (long long)n_prompt);
    if (dsc_sampler_vocab(s) != c->m->cfg.vocab_size)
        return dsc_err_set(err, DSC_ERR_ARG, "the sampler is for %lld ids, the model has %lld",
                           (long long)dsc_sampler_vocab(s), (long long)c->m->cfg.vocab_size);
    for (int64_t i = 0; i < n_prompt; i++)
        if (prompt[i] < 0 || prompt[i] >= c->m->cfg.vocab_size)
            return dsc_err_set(err, DSC_ERR_ARG,
                               "prompt token id %d at index %lld is out of range [0, %lld)",
                               prompt[i], (long long)i, (long long)c->m->cfg.vocab_size);
    if (n_in == 0 && c->n_past == 0)
        return dsc_err_set(err, DSC_ERR_ARG,
                           "nothing to generate from: empty prompt and an empty context");
    if (c->n_past + n_in > c->p.n_ctx)
        return dsc_err_set(err, DSC_ERR_ARG,
                           "the prompt (%lld tokens) does not fit the context: %lld of %lld "
                           "positions are used (raise -c)", (long long)n_in,
                           (long long)c->n_past, (long long)c->p.n_ctx);

    return DSC_OK;
}

dsc_status dsc_generate(dsc_ctx_t *c, dsc_sampler_t *s, const int32_t *prompt,
                        int64_t n_prompt, int64_t n_predict, int32_t eos_id, dsc_token_cb on_token,
                        void *user, dsc_gen_stats *stats, dsc_err *err) {
    if (c->spec.enabled)
        return dsc_spec_generate(c, s, prompt, n_prompt, n_predict, eos_id, on_token, user,
                                 stats, err);
    dsc_gen_stats st = {0};
    int32_t pending = c->pending;
    int64_t n_in = n_prompt + (pending >= 0);
    DSC_TRY(dsc_gen_check(c, s, prompt, n_prompt, n_in, err));

    double t0 = dsc_gen_now();
    if (pending >= 0) {
        /* feed the previous call's last id first; its logits are only
           needed when no prompt follows */
        c->pending = -1;
        DSC_TRY(feed(c, &pending, 1, err));
    }
    if (n_prompt > 0) DSC_TRY(feed(c, prompt, n_prompt, err));
    if (n_in == 0) {
        /* continue from the cache as it is: recompute the last position's
           logits (its cache row is rewritten with the same values) */
        int32_t last = c->w.tokens[c->n_past - 1];
        DSC_TRY(dsc_forward_last(c, &last, 1, c->n_past - 1, c->w.logits, err));
    }
    st.n_prompt = n_in;
    double t1 = dsc_gen_now();
    st.prompt_s = t1 - t0;

    for (;;) {
        if (n_predict >= 0 && st.n_gen >= n_predict) {
            st.stop = DSC_STOP_LENGTH;
            break;
        }
        int32_t id = dsc_sampler_sample(s, c->w.logits, c->w.tokens, c->n_past);
        st.n_gen++;
        int stop_cb = on_token ? on_token(user, id) : 0;
        c->pending = id;
        if (eos_id >= 0 && id == eos_id) {
            st.stop = DSC_STOP_EOS;
            break;
        }
        if (stop_cb) {
            st.stop = DSC_STOP_CALLBACK;
            break;
        }
        if (n_predict >= 0 && st.n_gen >= n_predict) {
            st.stop = DSC_STOP_LENGTH;
            break;
        }
        if (c->n_past + 1 > c->p.n_ctx) {
            st.stop = DSC_STOP_CONTEXT;
            break;
        }
        c->pending = -1;
        dsc_status s_ = dsc_forward_last(c, &id, 1, c->n_past, c->w.logits, err);
        if (s_ != DSC_OK) {
            st.gen_s = dsc_gen_now() - t1;
            if (stats) *stats = st;
            return s_;
        }
    }
    st.gen_s = dsc_gen_now() - t1;
    if (stats) *stats = st;
    return DSC_OK;
}
