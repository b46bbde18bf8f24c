/*
 * test_threads.c - dsc_parallel_for: every item runs exactly once for each
 * schedule, thread count and item count (including 0 and 1, which take the
 * plain loop), and the cyclic schedule with n == nt runs part i on thread i
 * (dispatch.c's parts own scratch slot i on that promise).
 */
#include <string.h>

#include "test.h"
#include "util/util.h"

#define MAX_ITEMS 64

typedef struct {
    int count[MAX_ITEMS];   /* times item i ran (one writer per item) */
    int thread[MAX_ITEMS];  /* the thread that ran it */
} visits;

static void visit(void *arg, int64_t i) {
    visits *v = arg;
    v->count[i]++;
    v->thread[i] = dsc_thread_id();
}

static void test_parallel_for_items(dsc_t *t) {
    const dsc_sched scheds[] = {DSC_SCHED_BLOCKS, DSC_SCHED_CYCLIC, DSC_SCHED_DYNAMIC};
    const int64_t ns[] = {0, 1, 2, 5, 17, MAX_ITEMS};
    for (size_t s = 0; s < sizeof scheds / sizeof scheds[0]; s++)
        for (int nt = 0; nt <= 3; nt++)
            for (size_t k = 0; k < sizeof ns / sizeof ns[0]; k++) {
                visits v;
                memset(&v, 0, sizeof v);
                dsc_parallel_for(nt, ns[k], scheds[s], visit, &v);
                for (int64_t i = 0; i < MAX_ITEMS; i++) {
                    int want = i < ns[k] ? 1 : 0;
                    T_CHECK(t, v.count[i] == want, "sched %zu, nt %d, n %lld: item %lld ran %d times",
                            s, nt, (long long)ns[k], (long long)i, v.count[i]);
                }
            }
}

static void test_parallel_for_cyclic_parts(dsc_t *t) {
    /* one thread (or no OpenMP): every part on the caller, thread 0 */
    int most = dsc_max_threads() < 4 ? dsc_max_threads() : 4;
    for (int nt = 1; nt <= most; nt++) {
        visits v;
        memset(&v, 0, sizeof v);
        dsc_parallel_for(nt, nt, DSC_SCHED_CYCLIC, visit, &v);
        for (int i = 0; i < nt; i++)
            T_CHECK(t, v.count[i] == 1 && v.thread[i] == i,
                    "nt %d: part %d ran %d times, on thread %d", nt, i, v.count[i], v.thread[i]);
    }
}

const dsc_test_case dsc_tests_threads[] = {
    {"parallel_for_items", test_parallel_for_items},
    {"parallel_for_cyclic_parts", test_parallel_for_cyclic_parts},
    {NULL, NULL},
};
