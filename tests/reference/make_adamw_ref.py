#!/usr/bin/env python3
"""Make tests/fixtures/train/adamw_ref.bin: torch.optim.AdamW on the numbers
that tests/unit/test_train_io.c generates.

The C test owns the inputs (its splitmix64 + Box-Muller generator); it dumps
them when asked:

    DSC_ADAMW_DUMP=/tmp/adamw_inputs.bin ./dsc_tests train_io/adamw_dump_inputs
    python3 tests/reference/make_adamw_ref.py /tmp/adamw_inputs.bin

Dump layout (float32, little-endian), for each tensor in order: its params,
then its NSTEP gradients. Output: the float32 params after NSTEP steps,
tensors concatenated in order.

Settings mirror the test: betas (0.9, 0.95), eps 1e-8, weight decay 0.1 on
the matrices a and c, 0 on b; the learning rate of step s (0-based) is the
schedule max 1e-2, floor 1e-3, warm-up 3, total 10 (linear warm-up
max*(s+1)/warmup, then cosine to the floor), set on the param groups before
each step, as a training loop does.
"""
import math
import sys

import numpy as np
import torch

SHAPES = [(7, 5), (9, 1), (4, 6)]
DECAY = [True, False, True]
NSTEP = 10


def lr_at(step, max_lr=1e-2, min_lr=1e-3, warmup=3, total=10):
    if step < warmup:
        return max_lr * (step + 1) / warmup
    if step >= total:
        return min_lr
    prog = (step - warmup) / (total - warmup)
    return min_lr + 0.5 * (max_lr - min_lr) * (1.0 + math.cos(math.pi * prog))


def main():
    raw = np.fromfile(sys.argv[1], dtype="<f4")
    out = sys.argv[2] if len(sys.argv) > 2 else "tests/fixtures/train/adamw_ref.bin"
    params, grads, off = [], [], 0
    for shp in SHAPES:
        n = shp[0] * shp[1]
        params.append(torch.nn.Parameter(torch.from_numpy(raw[off:off + n].copy()).view(shp)))
        off += n
        grads.append([torch.from_numpy(raw[off + s * n:off + (s + 1) * n].copy()).view(shp)
                      for s in range(NSTEP)])
        off += NSTEP * n
    assert off == raw.size, (off, raw.size)
    groups = [{"params": [p], "weight_decay": 0.1 if d else 0.0}
              for p, d in zip(params, DECAY)]
    # foreach=False: the single-tensor path, the per-element order dsc follows.
    opt = torch.optim.AdamW(groups, lr=lr_at(0), betas=(0.9, 0.95), eps=1e-8, foreach=False)
    for s in range(NSTEP):
        for g in opt.param_groups:
            g["lr"] = lr_at(s)
        for p, gs in zip(params, grads):
            p.grad = gs[s].clone()
        opt.step()
    np.concatenate([p.detach().numpy().ravel() for p in params]).astype("<f4").tofile(out)
    print(f"wrote {out}: torch {torch.__version__}")


if __name__ == "__main__":
    main()
