/*
 * nsa_decode_decl.h - the state type and prototypes of one instance of NSA
 * decode. Included twice by nsa_decode.h with DSC_NSA_T (float / double)
 * and DSC_NSA(name) set, as nsa_decl.h; so it has no include guard on
 * purpose. Contracts are here, the design in nsa_decode.h; R below is the
 * storage type.
 */

/* One sequence's decode state. Every field is read-only for the caller
   (tests and benchmarks read them); change it only through the functions
   below. Row t of a raw buffer is the token at position t. */
typedef struct {
    dsc_nsa_config c;     /* a checked copy of the config                    */
    int64_t cap;          /* n_ctx: the most tokens it holds                  */
    int64_t len;          /* tokens held: positions 0 .. len-1                */
    int64_t n_cmp;        /* compressed blocks held: dsc_nsa_decode_n_cmp(len) */
    int64_t cap_cmp;      /* compressed rows it has room for: n_cmp(cap)      */
    DSC_NSA_T *k[3];      /* (cap, H_kv*d_k) raw keys per branch; shared: all k[0]   */
    DSC_NSA_T *v[3];      /* (cap, H_kv*d_v) raw values per branch; shared: all v[0] */
    DSC_NSA_T *k_cmp;     /* (cap_cmp, H_kv, d_k) compressed keys             */
    DSC_NSA_T *v_cmp;     /* (cap_cmp, H_kv, d_v) compressed values           */
    DSC_NSA_T *hid_k;     /* (cap_cmp, H_kv, m) MLP pre-activations (NULL for mean) */
    DSC_NSA_T *hid_v;     /* (cap_cmp, H_kv, m)                                */
    int32_t *sel;         /* (H_kv, n) the last row's selection (stale after truncate) */
    double *ws;           /* row scratch of the operator for T = cap          */
    void *mem;            /* the block everything above lives in              */
    size_t mem_bytes;
    int owned;            /* 1: mem (with this struct) came from _new        */
} DSC_NSA(decode);

/* *bytes = the memory block a state of capacity cap needs (the state struct
   itself not included). DSC_ERR_ARG on a bad config, cap < 1, or sizes
   that overflow. */
dsc_status DSC_NSA(decode_sizes)(const dsc_nsa_config *c, int64_t cap, size_t *bytes,
                                 dsc_err *err);

/* Sets *st up, empty (len 0), with its buffers carved from mem: bytes >=
   decode_sizes' value, aligned for double (malloc's is). The caller owns
   mem and the struct; both must outlive every use of *st; there is nothing
   to free. DSC_ERR_ARG (*st untouched) on a bad config, cap < 1, NULL st
   or mem, a block too small or misaligned. */
dsc_status DSC_NSA(decode_init)(DSC_NSA(decode) *st, const dsc_nsa_config *c, int64_t cap,
                                void *mem, size_t bytes, dsc_err *err);

/* The same in one malloc (struct and buffers together): *out, freed by
   decode_free. DSC_ERR_ARG as init, DSC_ERR_OOM when malloc fails; *out is
   NULL on failure. */
dsc_status DSC_NSA(decode_new)(const dsc_nsa_config *c, int64_t cap, DSC_NSA(decode) **out,
                               dsc_err *err);
/* Frees a state from decode_new (NULL is fine; one from init is left
   alone: its memory is the caller's). */
void DSC_NSA(decode_free)(DSC_NSA(decode) *st);

/* Empties the state (len = 0, no compressed block); keeps its memory. */
void DSC_NSA(decode_reset)(DSC_NSA(decode) *st);

/* Appends the token at position t = st->len and computes its output.
     q_t (H_q*d_k)  head h at q_t + h*d_k
     k_t[b] (H_kv*d_k), v_t[b] (H_kv*d_v): branch b's key / value of the
                    token (shared_kv: only k_t[0], v_t[0] are read; the other
                    entries may be NULL)
     g_t (H_q*3)    g_t[h*3 + b], as nsa.h
     p              phi's parameters (MLP; may be NULL for mean pooling)
   Writes o_t (H_q*d_v), and when not NULL sel_t (H_kv, n) (the selection
   the forward makes for row t) and *stats (the reads, nsa_decode.h). Then
   len = t + 1, and if token t completes compression block i (t = i*d+l-1)
   that block was compressed first. o_t and sel_t must not alias the
   state. DSC_ERR_ARG, the state and outputs untouched, when the state is
   full (len == cap) or a pointer it needs is NULL. */
dsc_status DSC_NSA(decode_step)(DSC_NSA(decode) *st, const DSC_NSA(params) *p,
                                const DSC_NSA_T *q_t, const DSC_NSA_T *const k_t[3],
                                const DSC_NSA_T *const v_t[3], const DSC_NSA_T *g_t,
                                DSC_NSA_T *o_t, int32_t *sel_t, dsc_nsa_decode_stats *stats,
                                dsc_err *err);

/* Appends P >= 0 tokens at positions len .. len+P-1 (the state need not be
   empty): row i of in (q, kv, g, layouts and strides as nsa.h; 0 = packed)
   is the token at position len + i. Writes their outputs to o (P, H_q*d_v)
   stride ldo (0 = packed) and, when not NULL, their selections to sel
   (P, H_kv, n). The result (outputs, selections and state) is identical to
   P decode_steps: the raw rows are copied and the new compressed blocks
   made in one compress call, then select_row + attend_row per row.
   DSC_ERR_ARG, nothing written, when len + P > cap, P < 0, or a pointer
   it needs is NULL. */
dsc_status DSC_NSA(decode_prefill)(DSC_NSA(decode) *st, const DSC_NSA(params) *p, int64_t P,
                                   const DSC_NSA(in) *in, DSC_NSA_T *o, int64_t ldo,
                                   int32_t *sel, dsc_err *err);

/* Rollback: keeps positions 0 .. pos-1 and drops the rest, with every
   compressed block that covered a dropped token (for speculative decoding:
   after a rejected draft, step again from pos). 0 <= pos <= len, else
   DSC_ERR_ARG and the state unchanged. pos = len is a no-op. */
dsc_status DSC_NSA(decode_truncate)(DSC_NSA(decode) *st, int64_t pos, dsc_err *err);

/* DSC_ERR_ARG naming the first NULL parameter phi needs (MLP compression;
   mean pooling needs none): the check every call that may compress makes. */
dsc_status DSC_NSA(decode_check_params)(const dsc_nsa_config *c, const DSC_NSA(params) *p,
                                        dsc_err *err);
