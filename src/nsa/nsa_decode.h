/*
 * nsa_decode.h - incremental (decode) NSA for one sequence: a state that
 * appends tokens one at a time (or many, prefill) and gives each new token
 * the output the whole-sequence forward (nsa.h) gives it.
 *
 * The state (spec §2.7) holds, for a capacity of n_ctx = cap tokens:
 *   - the full raw K/V of every branch for every position 0 .. len-1
 *     (never truncated to the window: selection can address any past
 *     block); k[b] (cap, H_kv*d_k), v[b] (cap, H_kv*d_v), packed; one set
 *     when shared_kv (k[1..2] then alias k[0]);
 *   - the compressed K/V of every complete compression block: block i
 *     (raw tokens [i*d, i*d + l - 1]) is computed, with the operator's
 *     compress piece, in the step that appends its last token i*d + l - 1;
 *     so n_cmp = n_visible(len - 1) rows of k_cmp (T_c, H_kv, d_k), v_cmp
 *     (T_c, H_kv, d_v) and, for the MLP, hid_k / hid_v (T_c, H_kv, m);
 *   - the pending tail: the raw rows after the last complete block need no
 *     buffer of their own, they are already in the raw K/V;
 *   - scratch for the row functions and the last step's selection.
 * Nothing else per token is kept: select_row needs q_t and the compressed
 * keys, attend_row the raw rows <= t, the compressed rows and sel_t.
 *
 * Equality with the forward: a step runs exactly the operator's pieces the
 * forward runs for that row (compress of the same blocks from the same raw
 * rows, select_row, attend_row), on the same values, so outputs and
 * selections are bit-identical to dsc_nsa_fwd_* for every position
 * (tests/unit/test_nsa_decode.c checks it within the stated tolerances and
 * reports the measured difference).
 *
 * Memory: one block of dsc_nsa_decode_sizes_* bytes, either the caller's
 * (dsc_nsa_decode_init_*) or one malloc (dsc_nsa_decode_new_*). No
 * allocation per token. phi's parameters are not copied: every call that
 * may compress takes them (NULL is fine for mean pooling).
 *
 * Read accounting (dsc_nsa_decode_stats, filled by a step when asked):
 * what a group-centric kernel (spec §4.1: one program per token and KV
 * head, each K/V row loaded once for the G query heads of the group) must
 * read from the caches for the new token t, s = t + 1 tokens long, counted
 * in tokens PER KV HEAD, where one token = one key row (d_k elements) plus
 * one value row (d_v elements) of that head; bytes per KV head are
 * count * (d_k + d_v) * sizeof(element), and all heads read H_kv times that.
 *   cmp  = n_visible(t) = (s - l)/d + 1 (0 when s < l): every visible
 *          compressed key/value; the selection scores reuse the same
 *          compressed keys, so they are counted once;
 *   slc  = sum over the selected blocks j of min(l', s - j*l'): the raw
 *          tokens of the selected blocks up to t. As block cur = t/l' is
 *          always selected and every other one is complete, this is
 *          (k - 1)*l' + (t mod l') + 1 with k = min(n, t/l' + 1), the same
 *          for every KV head;
 *   win  = min(w, s);
 *   raw  = the raw token rows actually distinct among slc and win, the max
 *          over KV heads: slc + win with independent K/V (different
 *          tensors), |slc tokens ∪ window| with shared_kv (where the window
 *          mostly lies inside the forced local blocks);
 *   compress = raw tokens read to build the compressed block completed by
 *          this step: l, or 0 (phi's weights are not counted).
 * cmp + slc + win <= floor(s/d) + n*l' + w with no boundary term (the
 * paper's Table 4 count s/d + n*l' + w): floor((s-l)/d) + 1 <= floor(s/d)
 * since l >= d, at most n blocks of at most l' tokens, at most w window
 * tokens. What is NOT counted: q_t, g_t, the output, phi's weights, and the
 * extra loads of this scalar reference (it re-reads every K/V row once per
 * query head, G times, and the compressed keys twice, in select_row and
 * attend_row).
 *
 * Errors: every function validates its arguments first and returns
 * DSC_ERR_ARG with a message naming the problem, leaving the state exactly
 * as it was (nothing written); nothing exits or aborts on bad input.
 * Threading: a state belongs to one thread at a time.
 *
 * What this is not: a batch of sequences, a paged cache, or anything fast
 * (it is the reference the fast decode will be tested against).
 */
#ifndef DSC_NSA_DECODE_H
#define DSC_NSA_DECODE_H

#include "nsa/nsa.h"

/* Reads of one step for its token, per KV head (see the file comment). */
typedef struct {
    int64_t t;         /* the token's position (len before the step)       */
    int64_t cmp;       /* compressed tokens: n_visible(t)                  */
    int64_t slc;       /* raw tokens of the selected blocks, <= t          */
    int64_t win;       /* window tokens: min(w, t + 1)                     */
    int64_t raw;       /* distinct raw rows among slc and win (max over heads) */
    int64_t compress;  /* raw tokens read to build a new compressed block: l or 0 */
} dsc_nsa_decode_stats;

/* Compressed blocks complete in a prefix of len tokens: n_visible(len-1),
   0 for len < l. */
int64_t dsc_nsa_decode_n_cmp(const dsc_nsa_config *c, int64_t len);

/* ---- the typed instances: dsc_nsa_decode_<name>_f32 / _f64 ---- */

#define DSC_NSA_T float
#define DSC_NSA(name) dsc_nsa_##name##_f32
#include "nsa/nsa_decode_decl.h"
#undef DSC_NSA_T
#undef DSC_NSA

#define DSC_NSA_T double
#define DSC_NSA(name) dsc_nsa_##name##_f64
#include "nsa/nsa_decode_decl.h"
#undef DSC_NSA_T
#undef DSC_NSA

#endif
