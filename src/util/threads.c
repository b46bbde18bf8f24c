/* threads.c - the only place that asks OpenMP who is running, so that the
   rest of the code builds unchanged with NO_OMP=1, and the parallel loop
   that skips OpenMP for a single thread. */
#include "util.h"

#ifdef _OPENMP
#include <omp.h>
int dsc_thread_id(void) { return omp_get_thread_num(); }
int dsc_max_threads(void) { return omp_get_max_threads(); }
#else
int dsc_thread_id(void) { return 0; }
int dsc_max_threads(void) { return 1; }
#endif

void dsc_parallel_for(int nt, int64_t n, dsc_sched sched, dsc_item_fn fn, void *arg) {
    if (nt <= 1 || n <= 1) {
        for (int64_t i = 0; i < n; i++) fn(arg, i);
        return;
    }
    switch (sched) {
    case DSC_SCHED_BLOCKS:
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int64_t i = 0; i < n; i++) fn(arg, i);
        break;
    case DSC_SCHED_CYCLIC:
#pragma omp parallel for num_threads(nt) schedule(static, 1)
        for (int64_t i = 0; i < n; i++) fn(arg, i);
        break;
    case DSC_SCHED_DYNAMIC:
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
        for (int64_t i = 0; i < n; i++) fn(arg, i);
        break;
    }
}
