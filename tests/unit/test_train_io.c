/*
 * test_train_io.c - the training I/O layer: AdamW against an independent
 * double-precision transcription of the PyTorch AdamW documentation (and,
 * when the fixture exists, against torch.optim.AdamW itself), the LR
 * schedule and gradient clipping; the text -> packed-sequence pipeline and
 * its batch iterator; checkpoint save -> dsc_model_load round trip with
 * bit-identical logits, and optimizer-state resume.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dsc.h"
#include "io/safetensors.h"
#include "kernels/kernels.h"
#include "test.h"
#include "train/ckpt.h"
#include "train/data.h"
#include "train/optim.h"

#define NSTEP 10

/* Three tensors: a decayed matrix, an undecayed vector, a decayed matrix. */
enum { NP = 3 };
static const int64_t shapes[NP][2] = {{7, 5}, {9, 1}, {4, 6}};
static const int decays[NP] = {1, 0, 1};

/* Fixed inputs: params ~N(0,1), grads for each step ~N(0, 0.5^2). */
static void make_inputs(float *p[NP], float *g[NP][NSTEP]) {
    t_rng r = {42};
    for (int i = 0; i < NP; i++) {
        int64_t n = shapes[i][0] * shapes[i][1];
        for (int64_t j = 0; j < n; j++) p[i][j] = t_rng_normal(&r);
        for (int s = 0; s < NSTEP; s++)
            for (int64_t j = 0; j < n; j++) g[i][s][j] = 0.5f * t_rng_normal(&r);
    }
}

static double sched_lr(int s) {
    dsc_lr_schedule ls = {1e-2, 1e-3, 3, NSTEP};
    return dsc_lr_at(&ls, s);
}

/*
 * The algorithm box of the PyTorch AdamW docs, in double, written from the
 * formulas: theta <- theta - lr*lambda*theta; m <- b1 m + (1-b1) g;
 * v <- b2 v + (1-b2) g^2; mhat = m/(1-b1^t); vhat = v/(1-b2^t);
 * theta <- theta - lr * mhat / (sqrt(vhat) + eps).
 */
static void adamw_ref(double *th, const float *const *gs, int64_t n, int decay, double *out) {
    const double b1 = 0.9, b2 = 0.95, eps = 1e-8, wd = 0.1;
    double *m = calloc((size_t)n, sizeof *m), *v = calloc((size_t)n, sizeof *v);
    for (int t = 1; t <= NSTEP; t++) {
        double lr = sched_lr(t - 1);
        for (int64_t j = 0; j < n; j++) {
            double g = gs[t - 1][j];
            if (decay) th[j] -= lr * wd * th[j];
            m[j] = b1 * m[j] + (1 - b1) * g;
            v[j] = b2 * v[j] + (1 - b2) * g * g;
            double mh = m[j] / (1 - pow(b1, t)), vh = v[j] / (1 - pow(b2, t));
            th[j] -= lr * mh / (sqrt(vh) + eps);
        }
    }
    memcpy(out, th, (size_t)n * sizeof *out);
    free(m);
    free(v);
}

/* Run dsc's AdamW NSTEP steps; p[] holds the result. */
static dsc_adamw_t *run_adamw(dsc_t *t, float *p[NP], float *g[NP][NSTEP], float *gbuf[NP]) {
    dsc_param prm[NP];
    memset(prm, 0, sizeof prm);
    static const char *names[NP] = {"a.weight", "b.bias", "c.weight"};
    for (int i = 0; i < NP; i++) {
        prm[i].name = names[i];
        prm[i].data = p[i];
        prm[i].grad = gbuf[i];
        prm[i].ndim = 2;
        prm[i].shape[0] = shapes[i][0];
        prm[i].shape[1] = shapes[i][1];
        prm[i].decay = decays[i];
    }
    dsc_adamw_t *o = NULL;
    dsc_err e = {0};
    dsc_status s = dsc_adamw_new(NULL, prm, NP, &o, &e);
    T_CHECK(t, s == DSC_OK, "adamw_new: %s", e.msg);
    if (s != DSC_OK) return NULL;
    for (int st = 0; st < NSTEP; st++) {
        for (int i = 0; i < NP; i++)
            memcpy(gbuf[i], g[i][st], (size_t)(shapes[i][0] * shapes[i][1]) * sizeof(float));
        dsc_adamw_step(o, sched_lr(st));
    }
    return o;
}

typedef struct {
    float *p[NP], *g[NP][NSTEP], *gbuf[NP];
} adam_bufs;

static void bufs_alloc(adam_bufs *b) {
    for (int i = 0; i < NP; i++) {
        size_t n = (size_t)(shapes[i][0] * shapes[i][1]);
        b->p[i] = malloc(n * sizeof(float));
        b->gbuf[i] = malloc(n * sizeof(float));
        for (int s = 0; s < NSTEP; s++) b->g[i][s] = malloc(n * sizeof(float));
    }
    make_inputs(b->p, b->g);
}

static void bufs_free(adam_bufs *b) {
    for (int i = 0; i < NP; i++) {
        free(b->p[i]);
        free(b->gbuf[i]);
        for (int s = 0; s < NSTEP; s++) free(b->g[i][s]);
    }
}

static void test_adamw_closed_form(dsc_t *t) {
    adam_bufs b;
    bufs_alloc(&b);
    double *th[NP], *want[NP];
    for (int i = 0; i < NP; i++) {
        int64_t n = shapes[i][0] * shapes[i][1];
        th[i] = malloc((size_t)n * sizeof(double));
        want[i] = malloc((size_t)n * sizeof(double));
        for (int64_t j = 0; j < n; j++) th[i][j] = b.p[i][j];
        adamw_ref(th[i], (const float *const *)b.g[i], n, decays[i], want[i]);
    }
    dsc_adamw_t *o = run_adamw(t, b.p, b.g, b.gbuf);
    T_CHECK(t, o && dsc_adamw_steps(o) == NSTEP, "step count");
    for (int i = 0; i < NP; i++) {
        /* fp32 against double over 10 steps: each step moves a value by
           ~lr = 1e-2 with fp32 relative rounding ~6e-8 per operation, and the
           update's m/sqrt(v) ratio is well conditioned; 2e-6 absolute covers
           the ~1e-7 seen while failing any formula slip (>= 1e-4). */
        char what[64];
        snprintf(what, sizeof what, "param %d after %d steps", i, NSTEP);
        t_close_f64(t, what, b.p[i], want[i], shapes[i][0] * shapes[i][1], 2e-6, 1e-6);
        free(th[i]);
        free(want[i]);
    }
    dsc_adamw_free(o);
    bufs_free(&b);
}

/*
 * tests/fixtures/train/adamw_ref.bin (tests/reference/make_adamw_ref.py):
 * float32 params after NSTEP torch.optim.AdamW steps on make_inputs' numbers
 * (params passed in from this generator's dump), concatenated in order.
 */
static void test_adamw_torch_fixture(dsc_t *t) {
    size_t len = 0;
    float *ref = t_read_file("tests/fixtures/train/adamw_ref.bin", &len);
    T_CHECK(t, ref != NULL, "tests/fixtures/train/adamw_ref.bin missing");
    if (!ref) return;
    adam_bufs b;
    bufs_alloc(&b);
    dsc_adamw_t *o = run_adamw(t, b.p, b.g, b.gbuf);
    size_t total = 0;
    for (int i = 0; i < NP; i++) total += (size_t)(shapes[i][0] * shapes[i][1]);
    T_CHECK(t, len == total * sizeof(float), "fixture has %zu bytes, want %zu", len,
            total * sizeof(float));
    if (len == total * sizeof(float)) {
        const float *r = ref;
        for (int i = 0; i < NP; i++) {
            /* Same fp32 operations in the same order as torch's
               _single_tensor_adamw: agreement to a few ulps (1e-6 relative,
               1e-7 absolute for values near zero). */
            t_close_f32(t, "params vs torch", b.p[i], r, shapes[i][0] * shapes[i][1], 1e-7, 1e-6);
            r += shapes[i][0] * shapes[i][1];
        }
    }
    dsc_adamw_free(o);
    bufs_free(&b);
    free(ref);
}

/* Dump the inputs the torch generator reads (used once to make the fixture;
   kept as a test so the dump format is exercised). */
static void test_adamw_dump_inputs(dsc_t *t) {
    adam_bufs b;
    bufs_alloc(&b);
    char path[512];
    snprintf(path, sizeof path, "%s/adamw_inputs.bin", t->tmpdir);
    FILE *f = fopen(path, "wb");
    T_CHECK(t, f != NULL, "open %s", path);
    if (f) {
        for (int i = 0; i < NP; i++) {
            size_t n = (size_t)(shapes[i][0] * shapes[i][1]);
            fwrite(b.p[i], sizeof(float), n, f);
            for (int s = 0; s < NSTEP; s++) fwrite(b.g[i][s], sizeof(float), n, f);
        }
        fclose(f);
        const char *keep = getenv("DSC_ADAMW_DUMP");
        if (keep) {
            char cmd[1200];
            snprintf(cmd, sizeof cmd, "cp '%s' '%s'", path, keep);
            T_CHECK(t, system(cmd) == 0, "copy dump");
        }
    }
    bufs_free(&b);
}

static void test_lr_schedule(dsc_t *t) {
    dsc_lr_schedule s = {1e-3, 1e-4, 10, 110};
    T_CHECK(t, fabs(dsc_lr_at(&s, 0) - 1e-4) < 1e-15, "first warm-up step %g", dsc_lr_at(&s, 0));
    T_CHECK(t, fabs(dsc_lr_at(&s, 9) - 1e-3) < 1e-15, "last warm-up step");
    T_CHECK(t, fabs(dsc_lr_at(&s, 10) - 1e-3) < 1e-15, "cosine start");
    T_CHECK(t, fabs(dsc_lr_at(&s, 60) - 5.5e-4) < 1e-12, "cosine midpoint %g", dsc_lr_at(&s, 60));
    T_CHECK(t, fabs(dsc_lr_at(&s, 110) - 1e-4) < 1e-15, "floor at the end");
    T_CHECK(t, fabs(dsc_lr_at(&s, 100000) - 1e-4) < 1e-15, "floor after");
    for (int64_t k = 10; k < 110; k++)
        T_CHECK(t, dsc_lr_at(&s, k + 1) <= dsc_lr_at(&s, k), "not decreasing at %lld",
                (long long)k);
    dsc_lr_schedule nowarm = {2.0, 0.0, 0, 4};
    T_CHECK(t, dsc_lr_at(&nowarm, 0) == 2.0 && fabs(dsc_lr_at(&nowarm, 2) - 1.0) < 1e-15,
            "no warm-up");
}

static void test_clip_grad_norm(dsc_t *t) {
    float g1[3] = {3, 0, 0}, g2[2] = {0, 4}, d[5] = {0};
    dsc_param p[2];
    memset(p, 0, sizeof p);
    p[0].data = d, p[0].grad = g1, p[0].ndim = 1, p[0].shape[0] = 3;
    p[1].data = d, p[1].grad = g2, p[1].ndim = 1, p[1].shape[0] = 2;
    double n = dsc_clip_grad_norm(p, 2, 10.0);
    T_CHECK(t, n == 5.0 && g1[0] == 3 && g2[1] == 4, "under the limit: norm %g, unscaled", n);
    n = dsc_clip_grad_norm(p, 2, 1.0);
    T_CHECK(t, n == 5.0, "pre-clip norm %g", n);
    /* torch's coefficient max/(norm+1e-6): new norm 5/(5+1e-6) */
    double after = sqrt((double)g1[0] * g1[0] + (double)g2[1] * g2[1]);
    T_CHECK(t, fabs(after - 5.0 / (5.0 + 1e-6)) < 1e-6, "post-clip norm %g", after);
}

/* ---- data ---- */

#define NDOC 120

static const char *TOKDIR = "tests/fixtures/tokenizer_brown";

/* Document k of the synthetic corpus (distinct words, varying length,
   a non-ASCII character in some, internal newlines in others). */
static void synth_doc(int k, char *buf, size_t cap) {
    static const char *w[] = {"the", "jury", "said", "Fulton", "county", "election",
                              "café", "over", "deal", "of", "it"};
    size_t o = (size_t)snprintf(buf, cap, "Doc %d:", k);
    int n = 3 + (k * 7) % 40;
    for (int i = 0; i < n && o + 32 < cap; i++)
        o += (size_t)snprintf(buf + o, cap - o, "%s%s", (i % 13 == 12) ? "\n" : " ",
                              w[(k + i * 3) % 11]);
}

static dsc_tokenizer_t *load_tok(dsc_t *t) {
    dsc_tokenizer_t *tok = NULL;
    dsc_err e = {0};
    dsc_status s = dsc_tokenizer_load(TOKDIR, &tok, &e);
    T_CHECK(t, s == DSC_OK, "tokenizer: %s", e.msg);
    return tok;
}

static dsc_dataset_t *load_synth(dsc_t *t, dsc_tokenizer_t *tok, int64_t seq_len, double vf,
                                 uint64_t seed) {
    char path[512], doc[2048];
    snprintf(path, sizeof path, "%s/synth.txt", t->tmpdir);
    FILE *f = fopen(path, "wb");
    if (!f) return NULL;
    for (int k = 0; k < NDOC; k++) {
        synth_doc(k, doc, sizeof doc);
        /* separators vary: one blank line, several, one with spaces/CR */
        fprintf(f, "%s\n%s", doc, k % 3 == 0 ? "\n" : k % 3 == 1 ? "\n\n\n" : " \t\r\n");
    }
    fclose(f);
    dsc_data_params p = dsc_data_default_params();
    p.seq_len = seq_len;
    p.val_fraction = vf;
    p.seed = seed;
    dsc_dataset_t *d = NULL;
    dsc_err e = {0};
    dsc_status s = dsc_data_load(path, tok, &p, &d, &e);
    T_CHECK(t, s == DSC_OK, "data_load: %s", e.msg);
    return d;
}

static void test_data_docs(dsc_t *t) {
    dsc_tokenizer_t *tok = load_tok(t);
    if (!tok) return;
    dsc_dataset_t *d = load_synth(t, tok, 31, 0.15, 7);
    if (!d) {
        dsc_tokenizer_free(tok);
        return;
    }
    int seen[NDOC] = {0};
    int32_t bos = dsc_tokenizer_bos(tok), eos = dsc_tokenizer_eos(tok);
    T_CHECK(t, dsc_tokenizer_adds_bos(tok) && bos >= 0 && eos >= 0, "brown adds BOS, has EOS");
    int32_t *ids = malloc(4096 * sizeof *ids);
    char doc[2048];
    for (int sp = 0; sp < 2; sp++) {
        const int32_t *st = dsc_data_stream(d, (dsc_split)sp);
        int64_t nd = dsc_data_n_docs(d, (dsc_split)sp), nt = dsc_data_n_tokens(d, (dsc_split)sp);
        T_CHECK(t, nd > 0, "split %d has no documents", sp);
        for (int64_t j = 0; j < nd; j++) {
            int64_t k = dsc_data_doc_index(d, (dsc_split)sp, j);
            int64_t a = dsc_data_doc_start(d, (dsc_split)sp, j);
            int64_t b = j + 1 < nd ? dsc_data_doc_start(d, (dsc_split)sp, j + 1) : nt;
            T_CHECK(t, k >= 0 && k < NDOC, "doc index %lld", (long long)k);
            if (k < 0 || k >= NDOC) continue;
            seen[k]++;
            /* The stream slice is exactly BOS + tokenize(doc) + EOS. */
            synth_doc((int)k, doc, sizeof doc);
            int64_t n = 0;
            dsc_tokenize(tok, doc, strlen(doc), 0, ids, 4096, &n, NULL);
            int ok = b - a == n + 2 && st[a] == bos && st[b - 1] == eos &&
                     !memcmp(st + a + 1, ids, (size_t)n * sizeof *ids);
            T_CHECK(t, ok, "document %lld (split %d) is not BOS+ids+EOS in the stream",
                    (long long)k, sp);
        }
        /* Packing: the valid parts of the sequences concatenate to the stream. */
        int64_t L = dsc_data_seq_len(d) + 1, pos = 0;
        int32_t *seq = malloc((size_t)L * sizeof *seq);
        for (int64_t i = 0; i < dsc_data_n_seqs(d, (dsc_split)sp); i++) {
            int64_t k = dsc_data_seq(d, (dsc_split)sp, i, seq);
            T_CHECK(t, k > 0 && k <= L && (k == L || i == dsc_data_n_seqs(d, (dsc_split)sp) - 1),
                    "sequence %lld has %lld valid", (long long)i, (long long)k);
            T_CHECK(t, !memcmp(seq, st + pos, (size_t)k * sizeof *seq), "sequence %lld differs",
                    (long long)i);
            for (int64_t j = k; j < L; j++) T_CHECK(t, seq[j] == -1, "pad is -1");
            pos += k;
        }
        T_CHECK(t, pos == nt, "packed %lld of %lld stream ids", (long long)pos, (long long)nt);
        free(seq);
    }
    /* Every document in exactly one split (no train/val overlap, none lost). */
    for (int k = 0; k < NDOC; k++) T_CHECK(t, seen[k] == 1, "document %d seen %d times", k, seen[k]);
    free(ids);
    dsc_data_free(d);
    dsc_tokenizer_free(tok);
}

/* Drain n batches of an iterator into out (n * batch * (seq_len+1) ids). */
static void drain(dsc_data_iter_t *it, int64_t n, int64_t B, int64_t L, int32_t *out) {
    for (int64_t i = 0; i < n; i++) dsc_data_iter_next(it, out + i * B * L, NULL);
}

static void test_data_batches(dsc_t *t) {
    dsc_tokenizer_t *tok = load_tok(t);
    if (!tok) return;
    dsc_dataset_t *d = load_synth(t, tok, 63, 0.1, 3);
    dsc_dataset_t *d2 = load_synth(t, tok, 63, 0.1, 3);
    if (!d || !d2) goto done;
    T_CHECK(t, dsc_data_n_tokens(d, DSC_SPLIT_TRAIN) == dsc_data_n_tokens(d2, DSC_SPLIT_TRAIN) &&
               !memcmp(dsc_data_stream(d, DSC_SPLIT_TRAIN), dsc_data_stream(d2, DSC_SPLIT_TRAIN),
                       (size_t)dsc_data_n_tokens(d, DSC_SPLIT_TRAIN) * 4),
            "two loads differ");
    const int64_t B = 4, L = 64, NB = 60;
    const int64_t ns = dsc_data_n_seqs(d, DSC_SPLIT_TRAIN);
    int32_t *a = malloc((size_t)(NB * B * L) * 4), *b = malloc((size_t)(NB * B * L) * 4);
    int32_t *c = malloc((size_t)(NB * B * L) * 4);
    dsc_data_iter_t *i1 = NULL, *i2 = NULL, *i3 = NULL;
    dsc_err e = {0};
    T_CHECK(t, dsc_data_iter_new(d, DSC_SPLIT_TRAIN, B, 1, 99, &i1, &e) == DSC_OK, "%s", e.msg);
    T_CHECK(t, dsc_data_iter_new(d2, DSC_SPLIT_TRAIN, B, 1, 99, &i2, &e) == DSC_OK, "%s", e.msg);
    T_CHECK(t, dsc_data_iter_new(d, DSC_SPLIT_TRAIN, B, 1, 100, &i3, &e) == DSC_OK, "%s", e.msg);
    if (!i1 || !i2 || !i3) goto done2;
    T_CHECK(t, NB * B > 2 * ns, "test wants > 2 epochs (%lld seqs)", (long long)ns);
    drain(i1, NB, B, L, a);
    drain(i2, NB, B, L, b);
    drain(i3, NB, B, L, c);
    T_CHECK(t, !memcmp(a, b, (size_t)(NB * B * L) * 4), "same seed, different batches");
    T_CHECK(t, memcmp(a, c, (size_t)(NB * B * L) * 4) != 0, "another seed, same batches");
    /* The first epoch is a permutation: each sequence exactly once (matched
       by content; equal sequences count as a multiset). */
    {
        int32_t *seq = malloc((size_t)L * 4);
        int *hit = calloc((size_t)ns, sizeof *hit);
        for (int64_t q = 0; q < ns; q++)
            for (int64_t i = 0; i < ns; i++) {
                dsc_data_seq(d, DSC_SPLIT_TRAIN, i, seq);
                if (!hit[i] && !memcmp(seq, a + q * L, (size_t)L * 4)) {
                    hit[i]++;
                    break;
                }
            }
        for (int64_t i = 0; i < ns; i++)
            T_CHECK(t, hit[i] == 1, "sequence %lld taken %d times in epoch 0", (long long)i, hit[i]);
        free(seq);
        free(hit);
    }
    /* Seek reproduces the tail of the stream of batches (resume). */
    dsc_data_iter_seek(i3, 0);
    dsc_data_iter_free(i3);
    i3 = NULL;
    T_CHECK(t, dsc_data_iter_new(d, DSC_SPLIT_TRAIN, B, 1, 99, &i3, &e) == DSC_OK, "%s", e.msg);
    dsc_data_iter_seek(i3, 17);
    drain(i3, NB - 17, B, L, c);
    T_CHECK(t, !memcmp(a + 17 * B * L, c, (size_t)((NB - 17) * B * L) * 4), "seek(17) differs");
done2:
    dsc_data_iter_free(i1);
    dsc_data_iter_free(i2);
    dsc_data_iter_free(i3);
    free(a);
    free(b);
    free(c);
done:
    dsc_data_free(d);
    dsc_data_free(d2);
    dsc_tokenizer_free(tok);
}

static void test_data_errors(dsc_t *t) {
    dsc_tokenizer_t *tok = load_tok(t);
    if (!tok) return;
    dsc_dataset_t *d = NULL;
    dsc_err e = {0};
    dsc_status s = dsc_data_load("/nonexistent/x.txt", tok, NULL, &d, &e);
    T_CHECK(t, s == DSC_ERR_IO && d == NULL && strstr(e.msg, "x.txt"), "missing file: %s", e.msg);
    char path[512];
    snprintf(path, sizeof path, "%s/bad.txt", t->tmpdir);
    t_write_file(path, "good text\n\nbad \xff byte\n", 20);
    s = dsc_data_load(path, tok, NULL, &d, &e);
    T_CHECK(t, s == DSC_ERR_ARG && strstr(e.msg, "document 1"), "invalid UTF-8: %s", e.msg);
    dsc_tokenizer_free(tok);
}

/* ---- checkpoints ---- */

typedef struct {
    dsc_ckpt_tensor *t;
    float **bufs;
    int64_t n;
} f32_tensors;

/* Every tensor of a bf16 fixture, upcast to F32 under its own name. */
static int load_as_f32(const char *dir, f32_tensors *o) {
    dsc_st_set *set = NULL;
    if (dsc_st_set_open(dir, &set, NULL) != DSC_OK) return 0;
    o->n = dsc_st_count(set);
    o->t = calloc((size_t)o->n, sizeof *o->t);
    o->bufs = calloc((size_t)o->n, sizeof *o->bufs);
    for (int64_t i = 0; i < o->n; i++) {
        dsc_st_tensor *x = dsc_st_at(set, i);
        o->bufs[i] = malloc((size_t)(x->numel ? x->numel : 1) * sizeof(float));
        for (int64_t j = 0; j < x->numel; j++)
            o->bufs[i][j] = x->dtype == DSC_BF16 ? dsc_bf16_to_f32(((const uint16_t *)x->data)[j])
                            : x->dtype == DSC_F32 ? ((const float *)x->data)[j] : NAN;
        o->t[i].name = strdup(x->name);
        o->t[i].ndim = x->ndim;
        for (int k = 0; k < x->ndim; k++) o->t[i].shape[k] = x->shape[k];
        o->t[i].data = o->bufs[i];
    }
    dsc_st_set_close(set);
    return 1;
}

static void free_f32(f32_tensors *o) {
    for (int64_t i = 0; i < o->n; i++) {
        free((void *)o->t[i].name);
        free(o->bufs[i]);
    }
    free(o->t);
    free(o->bufs);
}

static int forward_logits(dsc_model_t *m, const int32_t *ids, int64_t n, float *out) {
    dsc_ctx_params cp = dsc_ctx_default_params();
    cp.n_ctx = 64;
    cp.n_batch = 64;
    dsc_ctx_t *c = NULL;
    if (dsc_ctx_new(m, &cp, &c, NULL) != DSC_OK) return 0;
    dsc_status s = dsc_forward(c, ids, n, 0, out, NULL);
    dsc_ctx_free(c);
    return s == DSC_OK;
}

static void test_ckpt_roundtrip(dsc_t *t) {
    const char *fx = "tests/fixtures/v3_bf16";
    dsc_model_t *m0 = NULL, *m1 = NULL;
    dsc_err e = {0};
    dsc_status s = dsc_model_load(fx, &m0, &e);
    T_CHECK(t, s == DSC_OK, "load fixture: %s", e.msg);
    f32_tensors w = {0};
    if (s != DSC_OK || !load_as_f32(fx, &w)) {
        dsc_model_free(m0);
        return;
    }
    const dsc_config *c0 = dsc_model_config(m0);
    char dir[512];
    snprintf(dir, sizeof dir, "%s/ckpt_v3", t->tmpdir);
    dsc_ckpt_save_params sp = {0};
    sp.cfg = c0;
    sp.tensors = w.t;
    sp.n_tensors = w.n;
    sp.tokenizer_dir = TOKDIR;
    /* Save twice: the second replaces the first (rename path with an old dir). */
    for (int rep = 0; rep < 2; rep++) {
        s = dsc_ckpt_save(dir, &sp, &e);
        T_CHECK(t, s == DSC_OK, "save %d: %s", rep, e.msg);
    }
    s = dsc_model_load(dir, &m1, &e);
    T_CHECK(t, s == DSC_OK, "load saved checkpoint: %s", e.msg);
    if (s == DSC_OK) {
        T_CHECK(t, !memcmp(c0, dsc_model_config(m1), sizeof *c0),
                "config.json does not read back as the same dsc_config");
        dsc_model_info i0, i1;
        dsc_model_get_info(m0, &i0);
        dsc_model_get_info(m1, &i1);
        T_CHECK(t, i0.n_params == i1.n_params && i0.n_tensors == i1.n_tensors &&
                       i1.dominant_dtype == DSC_F32,
                "info: params %lld/%lld tensors %lld/%lld", (long long)i0.n_params,
                (long long)i1.n_params, (long long)i0.n_tensors, (long long)i1.n_tensors);
        int32_t ids[12];
        for (int i = 0; i < 12; i++) ids[i] = (int32_t)((i * 37 + 5) % c0->vocab_size);
        int64_t V = c0->vocab_size;
        float *l0 = malloc((size_t)(12 * V) * 4), *l1 = malloc((size_t)(12 * V) * 4);
        int ok = forward_logits(m0, ids, 12, l0) && forward_logits(m1, ids, 12, l1);
        T_CHECK(t, ok, "forward failed");
        /* bf16 -> f32 is exact and both runs take the same kernels on the
           same values: identical logits, no tolerance. */
        if (ok) t_close_f32(t, "logits bf16 vs saved f32", l1, l0, 12 * V, 0.0, 0.0);
        free(l0);
        free(l1);
    }
    /* The tokenizer copy loads. */
    dsc_tokenizer_t *tok = NULL;
    T_CHECK(t, dsc_tokenizer_load(dir, &tok, &e) == DSC_OK, "tokenizer copy: %s", e.msg);
    dsc_tokenizer_free(tok);
    /* No temporary or old directories are left beside it. */
    char cmd[700];
    snprintf(cmd, sizeof cmd, "test -z \"$(ls -d '%s'.* 2>/dev/null)\"", dir);
    T_CHECK(t, system(cmd) == 0, "leftover %s.tmp/.old directories", dir);
    dsc_model_free(m1);
    dsc_model_free(m0);
    free_f32(&w);
}

static void test_ckpt_optimizer_resume(dsc_t *t) {
    adam_bufs b;
    bufs_alloc(&b);
    dsc_adamw_t *o = run_adamw(t, b.p, b.g, b.gbuf);
    if (!o) {
        bufs_free(&b);
        return;
    }
    /* A minimal dense config: only the optimizer files matter here. */
    dsc_model_t *m = NULL;
    dsc_err e = {0};
    dsc_status s = dsc_model_load("tests/fixtures/v3_bf16", &m, &e);
    T_CHECK(t, s == DSC_OK, "%s", e.msg);
    if (s != DSC_OK) goto out;
    dsc_ckpt_tensor ct[NP];
    memset(ct, 0, sizeof ct);
    for (int i = 0; i < NP; i++) {
        const dsc_param *p = dsc_adamw_param(o, i);
        ct[i].name = p->name;
        ct[i].ndim = p->ndim;
        ct[i].shape[0] = p->shape[0];
        ct[i].shape[1] = p->shape[1];
        ct[i].data = p->data;
    }
    char dir[512];
    snprintf(dir, sizeof dir, "%s/ckpt_opt", t->tmpdir);
    dsc_ckpt_save_params sp = {0};
    sp.cfg = dsc_model_config(m);
    sp.tensors = ct;
    sp.n_tensors = NP;
    sp.opt = o;
    sp.state.step = NSTEP;
    sp.state.lr = sched_lr(NSTEP - 1);
    sp.state.seed = 0xFEDCBA9876543210ull;
    sp.state.data_batches = 123;
    s = dsc_ckpt_save(dir, &sp, &e);
    T_CHECK(t, s == DSC_OK, "save: %s", e.msg);
    /* A fresh optimizer over copies of the saved params, state loaded. */
    adam_bufs b2;
    bufs_alloc(&b2);
    dsc_param prm[NP];
    for (int i = 0; i < NP; i++) {
        prm[i] = *dsc_adamw_param(o, i);
        memcpy(b2.p[i], b.p[i], (size_t)(shapes[i][0] * shapes[i][1]) * 4);
        prm[i].data = b2.p[i];
        prm[i].grad = b2.gbuf[i];
    }
    dsc_adamw_t *o2 = NULL;
    dsc_train_state st = {0};
    T_CHECK(t, dsc_adamw_new(NULL, prm, NP, &o2, &e) == DSC_OK, "%s", e.msg);
    if (o2) {
        s = dsc_ckpt_load_optimizer(dir, o2, &st, &e);
        T_CHECK(t, s == DSC_OK, "load optimizer: %s", e.msg);
        T_CHECK(t, st.step == NSTEP && st.seed == 0xFEDCBA9876543210ull &&
                       st.data_batches == 123 && st.lr == sched_lr(NSTEP - 1) &&
                       dsc_adamw_steps(o2) == NSTEP,
                "trainer state");
        /* One more identical step on both: bit-identical results. */
        for (int i = 0; i < NP; i++) {
            size_t n = (size_t)(shapes[i][0] * shapes[i][1]);
            memcpy(b.gbuf[i], b.g[i][0], n * 4);
            memcpy(b2.gbuf[i], b.g[i][0], n * 4);
        }
        dsc_adamw_step(o, 1e-3);
        dsc_adamw_step(o2, 1e-3);
        for (int i = 0; i < NP; i++)
            t_close_f32(t, "resumed step", b2.p[i], b.p[i], shapes[i][0] * shapes[i][1], 0, 0);
        /* A missing parameter in the file is reported by name. */
        dsc_param extra[NP + 1];
        memcpy(extra, prm, sizeof prm);
        extra[NP] = prm[0];
        extra[NP].name = "not.there";
        dsc_adamw_t *o3 = NULL;
        if (dsc_adamw_new(NULL, extra, NP + 1, &o3, &e) == DSC_OK) {
            s = dsc_ckpt_load_optimizer(dir, o3, &st, &e);
            T_CHECK(t, s == DSC_ERR_MISSING && strstr(e.msg, "not.there.exp_avg"),
                    "missing state: %s", e.msg);
            dsc_adamw_free(o3);
        }
    }
    dsc_adamw_free(o2);
    bufs_free(&b2);
out:
    dsc_model_free(m);
    dsc_adamw_free(o);
    bufs_free(&b);
}

const dsc_test_case dsc_tests_train_io[] = {
    {"adamw_closed_form", test_adamw_closed_form},
    {"adamw_torch_fixture", test_adamw_torch_fixture},
    {"adamw_dump_inputs", test_adamw_dump_inputs},
    {"lr_schedule", test_lr_schedule},
    {"clip_grad_norm", test_clip_grad_norm},
    {"data_docs", test_data_docs},
    {"data_batches", test_data_batches},
    {"data_errors", test_data_errors},
    {"ckpt_roundtrip", test_ckpt_roundtrip},
    {"ckpt_optimizer_resume", test_ckpt_optimizer_resume},
    {NULL, NULL},
};
