/*
 * nsa_align.h - an alignment loss for NSA's block selection (training
 * only; an addition to the paper, in the spirit of DSA's indexer KL,
 * spec deepseek.md §4.6, and of later "selection alignment" proposals).
 *
 * Why: NSA picks its n blocks by the compressed branch's own attention
 * probabilities (nsa.h, Selection), and no gradient flows through that
 * choice. The compressed branch learns only from its output, so nothing
 * teaches it to rank first the blocks the selected branch would attend
 * to. In the long-context study (docs/long-context-study.md) that is what
 * lost far passkeys: with every block selected the model found them, with
 * its top n it did not. This loss trains the selection scores to match the
 * selected branch's attention, as DSA's indexer learns to match MLA's.
 *
 * Per query t and KV head (a "row"), over its FREE slots: the selected
 * blocks other than the forced ones (0, cur - 1, cur; cur = t / l'). Those
 * are full blocks before cur - 1, so every compressed block overlapping
 * them is visible and their scores are > 0. With s_j the group score of
 * block j (nsa.h, Selection steps 1-2: sum over the G heads of the
 * overlap-mapped compressed probabilities) and M_j the selected branch's
 * attention mass on block j's keys summed over the G heads:
 *     tau_j = M_j / sum_free M          (the target; no gradient)
 *     pi_j  = s_j / sum_free s
 *     KL    = sum_j tau_j log(tau_j / pi_j)
 *     dKL/ds_j = 1 / sum_free s - tau_j / s_j
 * A row with fewer than 2 free slots, no target mass or a score <= 0 or
 * not finite is skipped (kl = -1, gradient 0). With every block selected
 * (n >= t / l' + 1) this is the dense form, as DSA's warm-up; with n below
 * that, the sparse form restricted to the selected set, as DSA's sparse
 * stage.
 *
 * The backward adds, for each head h of the group, to the compressed
 * branch's dL/dp_cmp[t,h,i] the term scale * sum_j w(i,j) dKL/ds_j (w the
 * overlap weights), so the gradient reaches q and the compressed keys
 * (through phi to the cmp branch's raw keys and phi's parameters).
 */
#ifndef DSC_NSA_ALIGN_H
#define DSC_NSA_ALIGN_H

#include <stdint.h>

#include "nsa/nsa.h"

/* The alignment's buffers and weight, per sequence (nsa_fast.h's
   opts->align; NULL: off). Written by the forward, read by the backward. */
typedef struct {
    float *tgt;     /* (T, H_kv, n) tau per slot of sel, 0 off the free slots;
                       an input when tgt_given                               */
    float *gs;      /* (T, H_kv, n) dKL/ds per slot, 0 off the free slots     */
    float *kl;      /* (T, H_kv) each row's KL, -1 where skipped               */
    int tgt_given;  /* forward: read tgt instead of computing it (to hold the
                       target fixed, e.g. for finite differences)            */
    double scale;   /* backward: dL/dKL of every row (the loss is scale x the
                       sum of the rows' KL); 0: no alignment gradient        */
} dsc_nsa_align;

/* One row's loss for query t: sel (n slots of one KV head, ascending, -1
   padded), score[j] the group score of block j (j <= t / l'), P the G
   heads' selected-branch probabilities (row g at P + g * ldp, the
   selected keys in sel's order: slot u's block at columns [u l', (u+1) l')
   for every block but cur). Writes tgt (unless tgt_given), gs (n each) and
   *kl. */
void dsc_nsa_align_row(const dsc_nsa_config *c, int64_t t, const int32_t *sel,
                       const double *score, const float *P, int64_t ldp, int64_t G,
                       int tgt_given, float *tgt, float *gs, float *kl);

/* The extra dL/dp_cmp of one row: dp[i] = scale * sum over the free slots
   u of w(i, sel[u]) gs[u], for the nv compressed blocks visible to t
   (overwrites dp[0 .. nv)). Returns 0 when every term is 0 (nothing to add). */
int dsc_nsa_align_dp(const dsc_nsa_config *c, int64_t t, const int32_t *sel, const float *gs,
                     double scale, float *dp, int64_t nv);

#endif
