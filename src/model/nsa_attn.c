/*
 * nsa_attn.c - NSA (Native Sparse Attention with GQA, src/nsa/nsa.h) as the
 * inference attention of an attention_type "nsa" model, the layer math of
 * the trainer (src/train/attn_nsa.c) on the decode state (nsa_decode.h):
 *
 *   q      = x W_q^T                            (n, H_q*d_k)
 *   k_b    = x W_k_b^T, v_b = x W_v_b^T         b = cmp, slc, win (one pair
 *                                               when shared_kv)
 *   g      = sigmoid(x W_gate^T)                (n, 3*H_q), row h*3 + b
 *   RoPE   on the first qk_rope_head_dim dims of every head of q and of
 *          every branch's k, at positions pos0 .. pos0+n-1, with the
 *          context's tables (the trainer's: same rope params), pairs per
 *          rope_interleave
 *   o      = the layer's decode state: truncate to pos0 when it holds more
 *            (a rewrite / rollback), then append the n tokens with the fast
 *            fp32 path (nsa_decode_fast.h): one token by a vectorised step,
 *            n > 1 by the fast operator's tiles. The state it fills is the
 *            reference's, bit for bit; the outputs match the reference's
 *            (n single steps) within fp32 rounding (~1e-6 relative), so a
 *            split of a sequence into calls changes outputs only there
 *   y      = o W_o^T
 * The state keeps every raw K/V row and the compressed blocks; a step
 * allocates nothing (a prefill of n > 1 mallocs its tile scratch once per
 * call). What this is not: batched over sequences.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "model/model.h"
#include "nsa/nsa_decode_fast.h"
#include "util/util.h"

/* The six phi tensors of a layer, in the order of w->nsa_phi. */
static void phi_mats(const dsc_layer *ly, const dsc_wmat *out[6]) {
    out[0] = &ly->nsa.pe_k, out[1] = &ly->nsa.w1_k, out[2] = &ly->nsa.w2_k;
    out[3] = &ly->nsa.pe_v, out[4] = &ly->nsa.w1_v, out[5] = &ly->nsa.w2_v;
}

int64_t dsc_nsa_phi_floats(const dsc_model_t *m) {
    const dsc_config *cf = &m->cfg;
    if (!cf->attention_nsa || cf->nsa_compress_mean) return 0;
    int need = 0;
    int64_t floats = 0;
    for (int64_t l = 0; l < cf->num_hidden_layers; l++) {
        const dsc_wmat *p[6];
        phi_mats(&m->layers[l], p);
        int64_t f = 0;
        for (int i = 0; i < 6; i++) {
            need |= p[i]->dtype != DSC_F32;
            f += p[i]->rows * p[i]->cols;
        }
        if (f > floats) floats = f;
    }
    return need ? floats : 0;
}

void dsc_nsa_phi_load(dsc_ctx_t *c) {
    int64_t per = dsc_nsa_phi_floats(c->m);
    if (per == 0) return;
    for (int64_t l = 0; l < c->m->cfg.num_hidden_layers; l++) {
        const dsc_wmat *mt[6];
        phi_mats(&c->m->layers[l], mt);
        float *at = c->w.nsa_phi + l * per;
        for (int i = 0; i < 6; i++) {
            if (mt[i]->dtype == DSC_F32) continue;
            for (int64_t r = 0; r < mt[i]->rows; r++)
                dsc_wmat_row(mt[i], r, 0, mt[i]->cols, at + r * mt[i]->cols);
            at += mt[i]->rows * mt[i]->cols;
        }
    }
}

/* phi's parameters of layer l as fp32: the mapped data of an F32 tensor,
   else its copy made by dsc_nsa_phi_load (same order). */
static void phi_params(dsc_ctx_t *c, const dsc_layer *ly, int64_t l, dsc_nsa_params_f32 *p) {
    memset(p, 0, sizeof *p);
    if (c->m->cfg.nsa_compress_mean) return;
    const dsc_wmat *mt[6];
    phi_mats(ly, mt);
    const float *dst[6];
    const float *at = c->w.nsa_phi ? c->w.nsa_phi + l * dsc_nsa_phi_floats(c->m) : NULL;
    for (int i = 0; i < 6; i++) {
        if (mt[i]->dtype == DSC_F32) {
            dst[i] = mt[i]->data;
            continue;
        }
        dst[i] = at;
        at += mt[i]->rows * mt[i]->cols;
    }
    p->pe_k = dst[0], p->w1_k = dst[1], p->w2_k = dst[2];
    p->pe_v = dst[3], p->w1_v = dst[4], p->w2_v = dst[5];
}

void dsc_nsa_attn_forward(dsc_ctx_t *c, const dsc_layer *ly, int64_t l, int64_t n,
                          int64_t pos0) {
    const dsc_config *cf = &c->m->cfg;
    dsc_work *w = &c->w;
    dsc_kctx *k = c->k;
    dsc_nsa_decode_f32 *st = &c->nsa_st[l];
    int64_t Hq = cf->num_attention_heads, Hkv = cf->nsa_kv_heads;
    int64_t dk = cf->nsa_head_dim_k, dr = cf->qk_rope_head_dim;
    int nb = cf->nsa_shared_kv ? 1 : 3;

    /* projections                                   (n, H*d) each */
    dsc_k_matmul(k, w->nsa_q, w->xn, &ly->nsa.q, n);
    for (int b = 0; b < nb; b++) {
        dsc_k_matmul(k, w->nsa_k[b], w->xn, &ly->nsa.k[b], n);
        dsc_k_matmul(k, w->nsa_v[b], w->xn, &ly->nsa.v[b], n);
    }
    /* g = sigmoid(x W_gate^T), in double as the trainer */
    dsc_k_matmul(k, w->nsa_g, w->xn, &ly->nsa.gate, n);
    for (int64_t i = 0; i < n * 3 * Hq; i++)
        w->nsa_g[i] = (float)(1.0 / (1.0 + exp(-(double)w->nsa_g[i])));
    /* RoPE on the first dr dims of every head of q and every branch's k */
    if (dr > 0)
        for (int64_t t = 0; t < n; t++) {
            int64_t p = pos0 + t;
            const float *cs = w->rope_cos + p * (dr / 2), *sn = w->rope_sin + p * (dr / 2);
            for (int64_t h = 0; h < Hq; h++)
                dsc_ref_rope(w->nsa_q + t * Hq * dk + h * dk, dr, cs, sn, cf->rope_interleave);
            for (int b = 0; b < nb; b++)
                for (int64_t h = 0; h < Hkv; h++)
                    dsc_ref_rope(w->nsa_k[b] + t * Hkv * dk + h * dk, dr, cs, sn,
                                 cf->rope_interleave);
        }

    /* the state: drop positions >= pos0 (a rewrite), then append the n */
    dsc_err e = {0};
    dsc_status s = DSC_OK;
    if (pos0 < st->len) s = dsc_nsa_decode_truncate_f32(st, pos0, &e);
    DSC_CHECK(st->len == pos0 || s != DSC_OK);
    dsc_nsa_in_f32 in;
    memset(&in, 0, sizeof in);
    in.q = w->nsa_q;
    for (int b = 0; b < 3; b++) {
        int bb = cf->nsa_shared_kv ? 0 : b;
        in.kv.k[b] = w->nsa_k[bb];
        in.kv.v[b] = w->nsa_v[bb];
    }
    in.g = w->nsa_g;
    dsc_nsa_params_f32 pp;
    phi_params(c, ly, l, &pp);
    /* the fast fp32 path (nsa_decode_fast.h): one token vectorised, a
       prefill of n > 1 on the fast operator's tiles, from any pos0 */
    if (s == DSC_OK)
        s = dsc_nsa_decode_fast_prefill(st, &pp, n, &in, w->nsa_o, 0, NULL, dsc_kctx_threads(k),
                                        w->nsa_prefill, w->nsa_prefill_bytes, &e);
    /* cannot fail with a checked config, pos0 <= n_past and pos0 + n <= n_ctx
       (dsc_forward_check); an internal invariant, not input validation */
    if (s != DSC_OK) fprintf(stderr, "dsc: NSA layer %lld: %s\n", (long long)l, e.msg);
    DSC_CHECK(s == DSC_OK);

    /* y = o W_o^T                                              (n, d) */
    dsc_k_matmul(k, w->y, w->nsa_o, &ly->o, n);
}
