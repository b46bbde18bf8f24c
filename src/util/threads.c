/* threads.c - the only place that asks OpenMP who is running, so that the
   rest of the code builds unchanged with NO_OMP=1. */
#include "util.h"

#ifdef _OPENMP
#include <omp.h>
int dsc_thread_id(void) { return omp_get_thread_num(); }
int dsc_max_threads(void) { return omp_get_max_threads(); }
#else
int dsc_thread_id(void) { return 0; }
int dsc_max_threads(void) { return 1; }
#endif
