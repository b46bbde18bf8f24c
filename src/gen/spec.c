/*
 * spec.c - speculative decoding with the model's MTP module as the draft
 * (spec §6; the loop of dsc_generate on a context made with a spec mode).
 *
 * The MTP module (model.layers.{L}.*) reads, for position p, the main
 * model's final hidden state h_p (after model.norm) and the embedding of
 * the token at p + 1, and predicts the token at p + 2:
 *   x = eh_proj([enorm(Emb(t_{p+1})) ; hnorm(h_p)]),  one decoder block
 *   over its own latent cache (layer L of the context's cache),
 *   logits = lm_head(shared_head.norm(x))        (embedding, head: shared)
 * One speculation step, with P = n_past and t the last committed token
 * (sampled, not fed yet):
 *   1. the module catches up on the rows it has not seen, the last being
 *      (h_{P-1}, t): its logits give the draft d_0 (drawn by the sampler's
 *      own rules); d_j for j > 0 comes from the module run again on its
 *      own output hidden and d_{j-1} at position P-1+j (the module reused
 *      recursively, as for draft_n > D);
 *   2. the main model runs once on [t, d_0 .. d_{N-1}] at P .. P+N (the
 *      weights are read once for N+1 tokens), giving the target
 *      distributions p_0 .. p_N;
 *   3. d_j is accepted with probability min(1, p_j(d_j) / q_j(d_j)) (greedy:
 *      when it is p_j's argmax); at the first rejection the token is drawn
 *      from max(0, p_j - q_j) normalised, and when all are accepted one more
 *      is drawn from p_N. Every committed token so follows the main model's
 *      distribution (Leviathan et al. 2023, Chen et al. 2023); greedy output
 *      is the plain greedy output token for token.
 *   4. rejected positions are rolled back by n_past (the main and MTP
 *      caches are indexed by position, so later writes replace them); the
 *      main hidden states of the kept rows wait in spec.h for the module.
 * The module's rows for the draft chain (positions >= P) are overwritten
 * when it catches up at the next step.
 *
 * Only the first MTP module drafts (DeepSeek-V3 / V3.2 ship one); further
 * modules in a checkpoint are loaded but not used.
 *
 * Measurement: the first spec_probe tokens of a call are decoded plainly
 * and all but the first (a warm-up) timed, so the call's stats give the
 * speedup; with DSC_SPEC_AUTO, the next SPEC_TRIAL speculation steps are
 * timed too, and the rest of the call decodes plainly if the best speculation step committed fewer tokens per
 * second than the best plain step (best, not mean: a stall from another
 * process only ever lengthens a step).
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "gen/gen.h"
#include "gen/sample.h"
#include "util/util.h"

/* AUTO's plain tokens when spec_probe is 0, and its timed spec steps. */
#define SPEC_PROBE_AUTO 4
#define SPEC_TRIAL 4

/* ---- the MTP module ---- */

/* The module on n rows at positions pos0..: h (n, d) main hidden states
   after the final norm (or the module's own output, recursing), next (n)
   the ids at p + 1. Leaves its output hidden of the last row in spec.g and,
   with logits != NULL, that row's logits (V). */
static void mtp_run(dsc_ctx_t *c, const float *h, const int32_t *next, int64_t n, int64_t pos0,
                    float *logits) {
    const dsc_model_t *m = c->m;
    const dsc_mtp *x = &m->mtp[0];
    dsc_work *w = &c->w;
    dsc_spec *sp = &c->spec;
    int64_t d = m->cfg.hidden_size;
    float eps = (float)m->cfg.rms_norm_eps;
    /* [enorm(Emb(next)) ; hnorm(h)]                                (n, 2d) */
    for (int64_t t = 0; t < n; t++) dsc_wmat_row(&m->embed, next[t], 0, d, w->ye + t * d);
    dsc_k_rmsnorm(c->k, w->xe, w->ye, &x->enorm, n, d, eps);
    dsc_k_rmsnorm(c->k, w->ye, h, &x->hnorm, n, d, eps);
    for (int64_t t = 0; t < n; t++) {
        memcpy(sp->cat + t * 2 * d, w->xe + t * d, (size_t)d * sizeof(float));
        memcpy(sp->cat + t * 2 * d + d, w->ye + t * d, (size_t)d * sizeof(float));
    }
    /* x = eh_proj(cat), then the module's block over cache layer L      (n, d) */
    dsc_k_matmul(c->k, w->x, sp->cat, &x->eh, n);
    dsc_block_forward(c, &x->ly, m->cfg.num_hidden_layers, n, pos0);
    const float *last = w->x + (n - 1) * d;
    memcpy(sp->g, last, (size_t)d * sizeof(float));
    if (logits) {
        /* the head's first draft_vocab rows only, when set (a view: rows are
           contiguous, and an FP8 head's scale rows follow the same order) */
        dsc_wmat head = m->lm_head;
        int64_t Vd = c->p.draft_vocab > 0 ? c->p.draft_vocab : head.rows;
        head.rows = Vd;
        dsc_k_rmsnorm(c->k, w->xn, last, &x->head_norm, 1, d, eps);
        dsc_k_matmul(c->k, logits, w->xn, &head, 1);
        for (int64_t v = Vd; v < m->lm_head.rows; v++) logits[v] = -INFINITY;
    }
}

/*
 * Run the module over the waiting rows [mtp_n, mtp_n + n_h). A row's next
 * id is the cached token at p + 1, or `last` for the row of the context's
 * last position (whose next token is not fed yet); with last < 0 that row
 * keeps waiting. logits: the final row's draft logits (only with last >= 0).
 */
static void mtp_advance(dsc_ctx_t *c, int32_t last, float *logits) {
    dsc_spec *sp = &c->spec;
    int64_t d = c->m->cfg.hidden_size;
    int64_t rows = sp->n_h;
    if (rows > 0 && last < 0 && sp->mtp_n + rows == c->n_past) rows--;
    for (int64_t r0 = 0; r0 < rows; r0 += c->p.n_batch) {
        int64_t n = rows - r0 < c->p.n_batch ? rows - r0 : c->p.n_batch;
        for (int64_t t = 0; t < n; t++) {
            int64_t p = sp->mtp_n + r0 + t;
            sp->next[t] = p + 1 < c->n_past ? c->w.tokens[p + 1] : last;
        }
        int final = r0 + n == rows;
        mtp_run(c, sp->h + r0 * d, sp->next, n, sp->mtp_n + r0,
                final && last >= 0 ? logits : NULL);
    }
    memmove(sp->h, sp->h + rows * d, (size_t)((sp->n_h - rows) * d) * sizeof(float));
    sp->mtp_n += rows;
    sp->n_h -= rows;
}

/* The main model on n ids at the context's end; their hidden states join
   the waiting rows (made room for first), the last row's logits go to
   logits (may be NULL). */
static dsc_status main_feed(dsc_ctx_t *c, const int32_t *ids, int64_t n, float *logits,
                            dsc_err *err) {
    dsc_spec *sp = &c->spec;
    int64_t d = c->m->cfg.hidden_size;
    for (int64_t i = 0; i < n;) {
        int64_t step = n - i < c->p.n_batch ? n - i : c->p.n_batch;
        if (sp->n_h + step > sp->h_cap) mtp_advance(c, -1, NULL);
        float *hn = sp->h + sp->n_h * d;
        DSC_TRY(dsc_forward_hidden(c, ids + i, step, c->n_past, hn, err));
        sp->n_h += step;
        if (logits && i + step == n)
            dsc_k_matmul(c->k, logits, hn + (step - 1) * d, &c->m->lm_head, 1);
        i += step;
    }
    return DSC_OK;
}

/* Rows the module needs but whose hidden states are gone (the context was
   used by dsc_forward in between, or AUTO stopped tracking them): run the
   main model over those positions again (their cache rows are rewritten
   with the same values) and let the module see them. */
static dsc_status resync(dsc_ctx_t *c, dsc_err *err) {
    dsc_spec *sp = &c->spec;
    if (sp->mtp_n + sp->n_h == c->n_past) return DSC_OK;
    if (sp->mtp_n > c->n_past) sp->mtp_n = c->n_past;
    sp->n_h = 0;
    int64_t end = c->n_past;
    for (int64_t p = sp->mtp_n; p < end;) {
        int64_t step = end - p < c->p.n_batch ? end - p : c->p.n_batch;
        mtp_advance(c, -1, NULL);
        /* a copy: the forward writes the ids it reads into the token array */
        int32_t *ids = sp->next;
        memcpy(ids, c->w.tokens + p, (size_t)step * sizeof *ids);
        DSC_TRY(dsc_forward_hidden(c, ids, step, p, sp->h + sp->n_h * c->m->cfg.hidden_size,
                                   err));
        sp->n_h += step;
        p += step;
    }
    c->n_past = end;
    return DSC_OK;
}

/* ---- one step ---- */

typedef struct {
    dsc_ctx_t *c;
    dsc_sampler_t *s;
    dsc_token_cb on_token;
    void *user;
    int32_t eos_id;
    int64_t n_predict;
    dsc_gen_stats *st;
    int greedy;
} loop_t;

/* Report a committed id; nonzero when generation stops after it (the stop
   reason is set). */
static int emit(loop_t *L, int32_t id) {
    dsc_gen_stats *st = L->st;
    st->n_gen++;
    int stop_cb = L->on_token ? L->on_token(L->user, id) : 0;
    if (L->eos_id >= 0 && id == L->eos_id) {
        st->stop = DSC_STOP_EOS;
        return 1;
    }
    if (stop_cb) {
        st->stop = DSC_STOP_CALLBACK;
        return 1;
    }
    if (L->n_predict >= 0 && st->n_gen >= L->n_predict) {
        st->stop = DSC_STOP_LENGTH;
        return 1;
    }
    return 0;
}

/* Probability of id in a candidate list (0 when absent). */
static float prob_of(const int32_t *ids, const float *p, int64_t n, int32_t id) {
    for (int64_t i = 0; i < n; i++)
        if (ids[i] == id) return p[i];
    return 0.0f;
}

/* The token after a rejected draft j: drawn from max(0, p - q_j). */
static int32_t draw_residual(loop_t *L, int64_t np, int j) {
    dsc_spec *sp = &L->c->spec;
    int64_t V = L->c->m->cfg.vocab_size;
    const int32_t *qi = sp->q_ids + (int64_t)j * V;
    const float *qp = sp->q_p + (int64_t)j * V;
    for (int64_t i = 0; i < sp->q_n[j]; i++) sp->dense[qi[i]] = qp[i];
    double mass = 0.0;
    for (int64_t i = 0; i < np; i++) {
        float r = sp->p_p[i] - sp->dense[sp->p_ids[i]];
        sp->p_p[i] = r > 0.0f ? r : 0.0f;
        mass += sp->p_p[i];
    }
    for (int64_t i = 0; i < sp->q_n[j]; i++) sp->dense[qi[i]] = 0.0f;
    /* p == q leaves nothing; a rejection then had probability 0, but keep
       the draw defined: p itself (the weights were overwritten: redraw) */
    if (mass <= 0.0) return sp->p_ids[0];
    return dsc_sampler_draw(L->s, sp->p_ids, sp->p_p, np);
}

/*
 * One speculation step after the committed, unfed id t (see the top of the
 * file): drafts N tokens, verifies them, reports the accepted ones and
 * returns in *next the token drawn after them (unreported), or stops
 * (*stopped = 1, the last reported id pending).
 */
static dsc_status spec_step(loop_t *L, int32_t t, int N, int32_t *next, int *stopped,
                            dsc_err *err) {
    dsc_ctx_t *c = L->c;
    dsc_spec *sp = &c->spec;
    dsc_spec_stats *ss = &L->st->spec;
    int64_t V = c->m->cfg.vocab_size, P = c->n_past;
    int32_t *tok = c->w.tokens, vids[DSC_SPEC_MAX_DRAFT + 1];
    float qd[DSC_SPEC_MAX_DRAFT];

    /* 1. drafts: the module catches up, its last row (h_{P-1}, t) gives d_0 */
    double t0 = dsc_gen_now();
    vids[0] = t;
    tok[P] = t; /* history for the samplers; rewritten by the verify pass */
    mtp_advance(c, t, sp->qlogits);
    for (int j = 0; j < N; j++) {
        float *ql = sp->qlogits + (int64_t)j * V;
        if (j > 0) mtp_run(c, sp->g, &vids[j], 1, P - 1 + j, ql);
        int32_t *qi = sp->q_ids + (int64_t)j * V;
        float *qp = sp->q_p + (int64_t)j * V;
        sp->q_n[j] = dsc_sampler_dist(L->s, ql, tok, P + 1 + j, qi, qp);
        int32_t d = L->greedy ? qi[0] : dsc_sampler_draw(L->s, qi, qp, sp->q_n[j]);
        qd[j] = prob_of(qi, qp, sp->q_n[j], d);
        vids[j + 1] = d;
        tok[P + 1 + j] = d;
    }

    /* 2. verify [t, d_0 .. d_{N-1}] in one pass                       (N+1, V) */
    double t1 = dsc_gen_now();
    ss->draft_s += t1 - t0;
    int64_t e0 = c->experts_touched, d = c->m->cfg.hidden_size;
    float *hn = sp->h + sp->n_h * d; /* n_h is 0 after the catch-up */
    DSC_TRY(dsc_forward_hidden(c, vids, N + 1, P, hn, err));
    dsc_k_matmul(c->k, sp->logits, hn, &c->m->lm_head, N + 1);
    ss->experts_spec += c->experts_touched - e0;
    ss->n_steps++;
    ss->verify_s += dsc_gen_now() - t1;

    /* 3. accept a prefix */
    int a = 0;
    int32_t after = -1;
    for (int j = 0; j < N; j++) {
        int32_t dj = vids[j + 1];
        int64_t np = dsc_sampler_dist(L->s, sp->logits + (int64_t)j * V, tok, P + 1 + j,
                                      sp->p_ids, sp->p_p);
        ss->n_drafted[j]++;
        int ok;
        if (L->greedy) {
            ok = sp->p_ids[0] == dj;
        } else {
            float pd = prob_of(sp->p_ids, sp->p_p, np, dj);
            ok = dsc_sampler_uniform(L->s) * (double)qd[j] < (double)pd;
        }
        if (!ok) {
            after = L->greedy ? sp->p_ids[0] : draw_residual(L, np, j);
            break;
        }
        ss->n_accepted[j]++;
        a++;
        ss->n_spec_tokens++;
        if (emit(L, dj)) {
            /* d_j reported and pending: positions P .. P+j are fed */
            c->n_past = P + 1 + j;
            sp->n_h = j + 1;
            c->pending = dj;
            *stopped = 1;
            return DSC_OK;
        }
    }
    if (after < 0) {
        /* every draft accepted: one more token from p_N */
        after = dsc_sampler_sample(L->s, sp->logits + (int64_t)N * V, tok, P + 1 + N);
    }

    /* 4. keep t and the accepted drafts */
    c->n_past = P + 1 + a;
    sp->n_h = a + 1;
    *next = after;
    return DSC_OK;
}

/* One plain decode step: feed t, draw the next token; with count, its
   routed experts go into the stats. */
static dsc_status plain_step(loop_t *L, int32_t t, int track, int count, int32_t *next,
                             dsc_err *err) {
    dsc_ctx_t *c = L->c;
    int64_t e0 = c->experts_touched;
    if (track) {
        DSC_TRY(main_feed(c, &t, 1, c->w.logits, err));
    } else {
        DSC_TRY(dsc_forward_last(c, &t, 1, c->n_past, c->w.logits, err));
    }
    if (count) L->st->spec.experts_plain += c->experts_touched - e0;
    *next = dsc_sampler_sample(L->s, c->w.logits, c->w.tokens, c->n_past);
    return DSC_OK;
}

dsc_status dsc_spec_generate(dsc_ctx_t *c, dsc_sampler_t *s, const int32_t *prompt,
                             int64_t n_prompt, int64_t n_predict, int32_t eos_id,
                             dsc_token_cb on_token, void *user, dsc_gen_stats *stats,
                             dsc_err *err) {
    dsc_gen_stats st = {0};
    dsc_spec *sp = &c->spec;
    int32_t pending = c->pending;
    int64_t n_in = n_prompt + (pending >= 0);
    DSC_TRY(dsc_gen_check(c, s, prompt, n_prompt, n_in, err));
    loop_t L = {c, s, on_token, user, eos_id, n_predict, &st, 0};
    L.greedy = dsc_sampler_is_greedy(s);
    dsc_status rs = DSC_OK;

    double t0 = dsc_gen_now();
    rs = resync(c, err);
    if (rs == DSC_OK && pending >= 0) {
        c->pending = -1;
        rs = main_feed(c, &pending, 1, n_prompt > 0 ? NULL : c->w.logits, err);
    }
    if (rs == DSC_OK && n_prompt > 0) rs = main_feed(c, prompt, n_prompt, c->w.logits, err);
    if (rs == DSC_OK && n_in == 0) {
        /* continue from the cache as it is: the last position again */
        int32_t last = c->w.tokens[c->n_past - 1];
        c->n_past--;
        rs = main_feed(c, &last, 1, c->w.logits, err);
    }
    if (rs != DSC_OK) return rs;
    st.n_prompt = n_in;
    double t1 = dsc_gen_now();
    st.prompt_s = t1 - t0;

    int auto_mode = c->p.spec == DSC_SPEC_AUTO, use_spec = 1, track = 1;
    int64_t probe = c->p.spec_probe, n_probed = 0;
    /* AUTO compares the best plain step with the best speculation step
       (tokens per second of each): a stall from another process only ever
       lengthens a step, so the best is the stable figure on a busy machine */
    double plain_best = 0.0, spec_best = 0.0;
    if (auto_mode && probe == 0) probe = SPEC_PROBE_AUTO;
    int32_t id = dsc_sampler_sample(s, c->w.logits, c->w.tokens, c->n_past);
    for (;;) {
        if (emit(&L, id)) {
            c->pending = id;
            break;
        }
        if (c->n_past + 1 > c->p.n_ctx) {
            st.stop = DSC_STOP_CONTEXT;
            c->pending = id;
            break;
        }
        int room = (int)(c->p.n_ctx - c->n_past - 1);
        int N = sp->draft_n < room ? sp->draft_n : room;
        int32_t next = -1;
        double ta = dsc_gen_now();
        if (n_probed < probe || !use_spec || N < 1 || sp->n_h < 1) {
            /* probe steps after the first (a warm-up: caches, thread pool)
               are timed and counted */
            int timed = n_probed > 0 && n_probed < probe;
            rs = plain_step(&L, id, track, timed, &next, err);
            if (timed) {
                double dt = dsc_gen_now() - ta;
                st.spec.n_plain++;
                st.spec.plain_s += dt;
                if (dt > 0 && 1.0 / dt > plain_best) plain_best = 1.0 / dt;
            }
            if (n_probed < probe) n_probed++;
        } else {
            int stopped = 0;
            int64_t k0 = st.spec.n_spec_tokens;
            st.spec.active = 1;
            rs = spec_step(&L, id, N, &next, &stopped, err);
            double dt = dsc_gen_now() - ta;
            st.spec.spec_s += dt;
            st.spec.n_spec_tokens++; /* t itself was committed by the step's pass */
            if (dt > 0 && (double)(st.spec.n_spec_tokens - k0) / dt > spec_best)
                spec_best = (double)(st.spec.n_spec_tokens - k0) / dt;
            if (rs == DSC_OK && stopped) break;
            if (auto_mode && st.spec.n_steps == SPEC_TRIAL && plain_best > 0) {
                double plain = plain_best, spec = spec_best;
                if (spec < plain) {
                    use_spec = 0;
                    track = 0; /* resync() catches the module up if it is used again */
                    snprintf(sp->note, sizeof sp->note,
                             "auto: plain decoding (speculation at best %.1f tok/s < plain "
                             "%.1f tok/s)",
                             spec, plain);
                } else {
                    snprintf(sp->note, sizeof sp->note,
                             "auto: speculation (at best %.1f tok/s >= plain %.1f tok/s)",
                             spec, plain);
                }
            }
        }
        if (rs != DSC_OK) break;
        id = next;
    }
    st.gen_s = dsc_gen_now() - t1;
    if (stats) *stats = st;
    return rs;
}

dsc_status dsc_spec_mtp_logits(dsc_ctx_t *c, const int32_t *ids, int64_t n, float *logits,
                               dsc_err *err) {
    dsc_spec *sp = &c->spec;
    if (!sp->enabled)
        return dsc_err_set(err, DSC_ERR_ARG, "the context was not made for speculation");
    if (n < 2 || n > c->p.n_batch)
        return dsc_err_set(err, DSC_ERR_ARG, "%lld ids: expected 2..%lld (n_batch)",
                           (long long)n, (long long)c->p.n_batch);
    dsc_ctx_reset(c);
    DSC_TRY(main_feed(c, ids, n, NULL, err));
    int64_t d = c->m->cfg.hidden_size, V = c->m->cfg.vocab_size;
    for (int64_t p = 0; p + 1 < n; p++)
        mtp_run(c, sp->h + p * d, ids + p + 1, 1, p, logits + p * V);
    memmove(sp->h, sp->h + (n - 1) * d, (size_t)d * sizeof(float));
    sp->mtp_n = n - 1;
    sp->n_h = 1;
    return DSC_OK;
}
