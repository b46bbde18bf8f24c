/*
 * optim.h - AdamW, the learning-rate schedule and global gradient clipping.
 *
 * AdamW follows torch.optim.AdamW (amsgrad=False, maximize=False) step for
 * step, in fp32 per element with the scalar factors in double:
 *     p  <- p * (1 - lr*wd)                      (decoupled decay, first)
 *     m  <- m + (1-b1)*(g - m)                   (torch's exp_avg.lerp_)
 *     v  <- b2*v + (1-b2)*g*g
 *     p  <- p - lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)
 * with t the 1-based step count. Weight decay applies only to parameters
 * flagged `decay` (matrices); norms, biases and the router bias get none,
 * as in DeepSeek-V3 / GPT-style recipes.
 *
 * The optimizer owns its moment buffers (one allocation, made at _new); the
 * parameter and gradient arrays are the caller's and must outlive it.
 * dsc_adamw_step and dsc_clip_grad_norm allocate nothing.
 */
#ifndef DSC_TRAIN_OPTIM_H
#define DSC_TRAIN_OPTIM_H

#include <stdint.h>

#include "dsc.h"

#define DSC_PARAM_MAX_DIMS 8

/* One trainable tensor, fp32, contiguous. */
typedef struct {
    const char *name;     /* checkpoint name; borrowed, must outlive the optimizer */
    float *data;          /* numel values, updated in place                         */
    float *grad;          /* numel values, read by step, scaled by clipping         */
    int ndim;
    int64_t shape[DSC_PARAM_MAX_DIMS];
    int decay;            /* 1: apply weight decay (matrices); 0: none              */
    int frozen;           /* 1: dsc_adamw_step leaves data and moments as they are
                             (no update, no decay); 0: trained                     */
} dsc_param;

/* Elements of a parameter (product of its shape; 1 for ndim 0). */
int64_t dsc_param_numel(const dsc_param *p);

typedef struct {
    double beta1, beta2;  /* 0.9, 0.95 (DeepSeek-V3)                                */
    double eps;           /* 1e-8 (torch default)                                   */
    double weight_decay;  /* 0.1, applied to dsc_param.decay tensors only           */
} dsc_adamw_params;

dsc_adamw_params dsc_adamw_default_params(void);

typedef struct dsc_adamw dsc_adamw_t;

/*
 * Make an optimizer for n parameters (copied; the arrays they point to are
 * borrowed). Moments start at zero, step count 0. DSC_ERR_ARG for n <= 0, a
 * NULL data/grad, a bad shape or beta outside [0, 1); DSC_ERR_OOM.
 */
dsc_status dsc_adamw_new(const dsc_adamw_params *hp, const dsc_param *params, int64_t n,
                         dsc_adamw_t **out, dsc_err *err);
void dsc_adamw_free(dsc_adamw_t *o);

/* One AdamW step at learning rate lr over every parameter (step count += 1). */
void dsc_adamw_step(dsc_adamw_t *o, double lr);

/* Steps taken so far (the t of the last step); settable when resuming. */
int64_t dsc_adamw_steps(const dsc_adamw_t *o);
void dsc_adamw_set_steps(dsc_adamw_t *o, int64_t t);

int64_t dsc_adamw_count(const dsc_adamw_t *o);
/* Parameter i (NULL when out of range) and its moments exp_avg / exp_avg_sq
   (numel floats each, owned by the optimizer, writable for resuming). */
const dsc_param *dsc_adamw_param(const dsc_adamw_t *o, int64_t i);
float *dsc_adamw_exp_avg(dsc_adamw_t *o, int64_t i);
float *dsc_adamw_exp_avg_sq(dsc_adamw_t *o, int64_t i);

/*
 * Learning rate at 0-based step `step`: linear warm-up max_lr*(step+1)/warmup
 * for step < warmup, then cosine from max_lr down to min_lr reached at
 * total_steps, and min_lr after. A pure function of its arguments.
 */
typedef struct {
    double max_lr, min_lr;
    int64_t warmup_steps;   /* >= 0                                 */
    int64_t total_steps;    /* end of the cosine; >= warmup_steps   */
} dsc_lr_schedule;

double dsc_lr_at(const dsc_lr_schedule *s, int64_t step);

/*
 * Global L2 norm of all gradients (accumulated in double); when it exceeds
 * max_norm (> 0) every gradient is scaled by max_norm / (norm + 1e-6), as
 * torch.nn.utils.clip_grad_norm_ does. Returns the norm before clipping
 * (possibly inf/NaN: then nothing is scaled, so the caller can skip the step).
 */
double dsc_clip_grad_norm(const dsc_param *params, int64_t n, double max_norm);

#endif
