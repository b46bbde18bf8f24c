#!/usr/bin/env python3
"""NSA parity fixtures for dsc's scalar NSA operator (src/nsa/; run by hand, never in CI).

Writes tests/fixtures/nsa/: inputs, fla's block selection, and the output and input gradients of
Native Sparse Attention in the configuration fla supports: l = d = l' (fla's `block_size`), mean-pooled
compressed keys/values, one q/k/v shared by the three branches, GQA with G = 16 query heads per KV head
(fla's naive_nsa asserts G >= 16 and a power of two), 1 initial + 2 local forced blocks inside n,
window of w keys including t.

Two references, cross-checked here:
  * fla  - flash-linear-attention's own naive reference `fla.ops.nsa.naive.naive_nsa` (fla-core 0.6.0),
           called as is, in float32, with torch autograd for the gradients. Two substitutions, both
           because this machine has no GPU: fla's `mean_pooling` is a Triton kernel, so it is replaced by
           `torch_mean_pooling` below (the kernel's semantics: the mean of each chunk of `block_size`
           tokens, a partial last chunk divided by its length; T here is a multiple of block_size); and
           naive_nsa computes its sliding-window branch with flash_attn_func(causal=True,
           window_size=(w-1, 0)), a CUDA-only package, so it is called with window_size=0 and the
           window branch is added here by `swa` (query t attends to keys t-w+1 .. t, exactly that
           flash-attn call), gated by g_swa as naive_nsa does.
  * f64  - `ref_nsa` below, a float64 transcription of the same naive code (naive_nsa casts q/k/v to
           float32 inside, so it cannot give float64 results). It uses fla's selection (computed by
           naive_nsa_topk in float64). Its empty compressed rows (t < block_size - 1) give 0 without
           forming NaN (fla: softmax over all -inf -> NaN -> nan_to_num), the same values.
The script asserts: fla's float32 and float64 selections are identical and every dynamic pick wins by a
relative margin >= MARGIN (so a float32 engine selects the same blocks); fla (float32) and ref_nsa
(float64) agree within 2e-5 relative on the output and every gradient; the float64 gradients of
ref_nsa match central finite differences on a sample of entries.

Files (little-endian, row-major, no headers; shapes in meta.json):
  q.f32 (T, HQ, K)   k.f32 (T, H, K)   v.f32 (T, H, V)   g.f32 (T, HQ, 3) [cmp, slc, swa]
  dout.f32 (T, HQ, V)  the cotangent: loss = sum(o * dout)
  sel.i32 (T, H, n)    selected blocks, ascending, -1 padded (fla's naive_nsa_topk, sorted)
  o.f32 dq.f32 dk.f32 dv.f32 dg.f32   fla naive_nsa in float32 (+ autograd)
  o.f64 dq.f64 dk.f64 dv.f64 dg.f64   ref_nsa in float64 (+ autograd)
Inputs are float32 values (exact in float64), so both precisions start from the same numbers.

Usage:  python3 tests/reference/make_nsa_fixtures.py [--out tests/fixtures/nsa]
Requires torch (2.15 used) and flash-linear-attention + fla-core 0.6.0 (pip install --no-deps
flash-linear-attention fla-core einops; triton must import, it is not run).
"""

import argparse
import json
import math
import os
import sys
import warnings

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMMAND = "python3 tests/reference/make_nsa_fixtures.py"

# the configuration (l = d = l' = BS, mean pooling, shared q/k/v)
T, HQ, H, K, V = 24, 32, 2, 6, 4
BS, N, W = 4, 4, 6
SEED = 20250611
MARGIN = 1e-3

torch.set_num_threads(1)
warnings.filterwarnings("ignore")


def torch_mean_pooling(x, chunk_size, cu_seqlens=None, head_first=False):
    """fla.ops.utils.pooling.mean_pooling (a Triton kernel) in torch: x [B, T, H, D] ->
    [B, ceil(T / chunk_size), H, D], the mean of each chunk (a partial last chunk by its length)."""
    assert cu_seqlens is None and not head_first
    B, Tn, Hn, D = x.shape
    out = []
    for c0 in range(0, Tn, chunk_size):
        out.append(x[:, c0:c0 + chunk_size].mean(1))
    return torch.stack(out, 1)


def swa(q, k, v, w, scale):
    """flash_attn_func(q, k, v, causal=True, window_size=(w-1, 0)) in torch: [B, T, HQ, K] queries,
    [B, T, H, *] keys/values (GQA by head // G); query t sees keys t-w+1 .. t."""
    G = q.shape[2] // k.shape[2]
    kr, vr = k.repeat_interleave(G, 2), v.repeat_interleave(G, 2)
    s = torch.einsum('bthd,bjhd->bhtj', q, kr) * scale
    i = torch.arange(q.shape[1])[:, None]
    j = torch.arange(k.shape[1])[None, :]
    s = s.masked_fill(~((j <= i) & (j > i - w)), float('-inf'))
    return torch.einsum('bhtj,bjhv->bthv', s.softmax(-1), vr)


def fla_nsa(q, k, v, g):
    """fla's naive_nsa (float32 inside) plus the window branch; q [T, HQ, K] etc. -> o, sel."""
    import fla.ops.nsa.naive as naive
    naive.mean_pooling = torch_mean_pooling
    scale = K ** -0.5
    o, sel = naive.naive_nsa(q[None], k[None], v[None], g_cmp=g[None, :, :, 0], g_slc=g[None, :, :, 1],
                             g_swa=None, block_counts=N, block_size=BS, window_size=0, scale=scale,
                             return_block_indices=True)
    o = o + swa(q[None], k[None], v[None], W, scale) * g[None, :, :, 2:3]
    return o[0], sel[0]


def ref_nsa(q, k, v, g, sel):
    """float64 transcription of naive_nsa (+ swa) with a given selection sel [T, H, N]."""
    G = HQ // H
    scale = K ** -0.5
    tc = T // BS
    kc = k.reshape(tc, BS, H, K).mean(1).repeat_interleave(G, 1)   # [TC, HQ, K]
    vc = v.reshape(tc, BS, H, V).mean(1).repeat_interleave(G, 1)
    t = torch.arange(T)
    # compressed branch: block c visible iff (c+1)*BS - 1 <= t; empty rows give 0
    allow = ((torch.arange(tc)[None, :] + 1) * BS - 1) <= t[:, None]          # [T, TC]
    any_vis = allow.any(1)
    s = torch.einsum('thd,chd->thc', q, kc) * scale
    s = s.masked_fill(~allow[:, None, :], float('-inf'))
    s = torch.where(any_vis[:, None, None], s, torch.zeros_like(s))
    p = s.softmax(-1) * any_vis[:, None, None]
    o_cmp = torch.einsum('thc,chv->thv', p, vc)
    # selected branch: tokens of the selected blocks, causal inside the current block
    tok_blk = torch.arange(T) // BS                                        # block of each key
    chosen = torch.zeros(T, H, T, dtype=torch.bool)
    for n in range(N):
        b = sel[:, :, n]                                                   # [T, H]
        chosen |= (tok_blk[None, None, :] == b[:, :, None]) & (b[:, :, None] >= 0)
    chosen &= torch.arange(T)[None, None, :] <= t[:, None, None]
    chosen = chosen.repeat_interleave(G, 1)                                # [T, HQ, T]
    kr, vr = k.repeat_interleave(G, 1), v.repeat_interleave(G, 1)
    s = torch.einsum('thd,jhd->thj', q, kr) * scale
    o_slc = torch.einsum('thj,jhv->thv', s.masked_fill(~chosen, float('-inf')).softmax(-1), vr)
    o_swa = swa(q[None], k[None], v[None], W, scale)[0]
    return (g[..., 0:1] * o_cmp + g[..., 1:2] * o_slc + g[..., 2:3] * o_swa)


def sorted_sel(sel):
    """fla's block_indices [T, H, S] in top-k order -> ascending ids, -1 at the end."""
    s = sel.clone()
    s[s < 0] = 1 << 30
    s = s.sort(-1).values
    s[s == 1 << 30] = -1
    return s


def selection_margin(q, k, sel):
    """The smallest relative gap between the last dynamic pick and the best block left out."""
    G = HQ // H
    tc = T // BS
    kc = k.reshape(tc, BS, H, K).mean(1).repeat_interleave(G, 1)
    s = torch.einsum('thd,chd->thc', q, kc) * K ** -0.5
    allow = ((torch.arange(tc)[None, :] + 1) * BS - 1) <= torch.arange(T)[:, None]
    s = s.masked_fill(~allow[:, None, :], float('-inf'))
    p = torch.nan_to_num(s.softmax(-1), nan=0.0).reshape(T, H, G, tc).sum(2)   # [T, H, TC]
    worst = math.inf
    for t in range(T):
        cur = t // BS
        forced = {0, cur, cur - 1}
        for h in range(H):
            picked = [int(b) for b in sel[t, h] if b >= 0 and int(b) not in forced]
            left = [b for b in range(cur + 1) if b not in forced and b not in picked]
            if picked and left:
                lo = min(p[t, h, b].item() for b in picked)
                hi = max(p[t, h, b].item() for b in left)
                worst = min(worst, (lo - hi) / max(lo, 1e-300))
    return worst


def grads(fn, q, k, v, g, dout):
    xs = [x.clone().requires_grad_(True) for x in (q, k, v, g)]
    o = fn(*xs)
    (o * dout).sum().backward()
    return o.detach(), [x.grad.detach() for x in xs]


def write(path, t, dtype):
    np.ascontiguousarray(t.detach().cpu().numpy().astype(dtype)).tofile(path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "nsa"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    gen = torch.Generator().manual_seed(SEED)
    # float32 values; q scaled up so the compressed softmax is peaked and the picks well separated
    q = (torch.randn(T, HQ, K, generator=gen) * 2.0).float()
    k = torch.randn(T, H, K, generator=gen).float()
    v = torch.randn(T, H, V, generator=gen).float()
    g = torch.rand(T, HQ, 3, generator=gen).float()
    dout = torch.randn(T, HQ, V, generator=gen).float()

    # fla in float32 (its native precision) and its selection in float64 (naive_nsa_topk keeps the
    # input dtype): they must agree, with a margin
    o32, g32 = grads(lambda *a: fla_nsa(*a)[0], q, k, v, g, dout)
    _, sel32 = fla_nsa(q, k, v, g)
    _, sel64 = fla_nsa(q.double(), k.double(), v.double(), g.double())
    sel = sorted_sel(sel64)
    assert torch.equal(sorted_sel(sel32), sel), "fla float32 and float64 selections differ"
    margin = selection_margin(q.double(), k.double(), sel)
    assert margin >= MARGIN, f"selection margin {margin:.2e} < {MARGIN}: change the seed"

    # float64 reference with that selection; cross-check against fla
    qd, kd, vd, gd, dd = (x.double() for x in (q, k, v, g, dout))
    o64, g64 = grads(lambda *a: ref_nsa(*a, sel), qd, kd, vd, gd, dd)
    report = {}
    for name, a, b in [("o", o32, o64)] + list(zip(["dq", "dk", "dv", "dg"], g32, g64)):
        assert torch.isfinite(a).all() and torch.isfinite(b).all(), name
        err = ((a.double() - b).abs().max() / b.abs().max()).item()
        report[name] = err
        assert err < 2e-5, f"fla float32 vs float64 reference: {name} rel err {err:.2e}"

    # finite differences of the float64 gradients on a sample of entries
    def loss(qq, kk, vv, gg):
        return (ref_nsa(qq, kk, vv, gg, sel) * dd).sum().item()
    fd_worst = 0.0
    rng = np.random.default_rng(SEED)
    xs = [qd, kd, vd, gd]
    for which in range(4):
        for _ in range(12):
            idx = tuple(int(rng.integers(0, s)) for s in xs[which].shape)
            h = 1e-6
            xp = [x.clone() for x in xs]
            xm = [x.clone() for x in xs]
            xp[which][idx] += h
            xm[which][idx] -= h
            fd = (loss(*xp) - loss(*xm)) / (2 * h)
            an = g64[which][idx].item()
            fd_worst = max(fd_worst, abs(fd - an) / max(g64[which].abs().max().item(), 1e-30))
    assert fd_worst < 1e-7, f"finite differences: {fd_worst:.2e}"

    out = args.out
    write(os.path.join(out, "q.f32"), q, np.float32)
    write(os.path.join(out, "k.f32"), k, np.float32)
    write(os.path.join(out, "v.f32"), v, np.float32)
    write(os.path.join(out, "g.f32"), g, np.float32)
    write(os.path.join(out, "dout.f32"), dout, np.float32)
    write(os.path.join(out, "sel.i32"), sel, np.int32)
    for name, a, b in [("o", o32, o64)] + list(zip(["dq", "dk", "dv", "dg"], g32, g64)):
        write(os.path.join(out, name + ".f32"), a, np.float32)
        write(os.path.join(out, name + ".f64"), b, np.float64)
    meta = {
        "generated_by": COMMAND,
        "torch": torch.__version__,
        "fla": "flash-linear-attention / fla-core 0.6.0, fla.ops.nsa.naive.naive_nsa",
        "T": T, "H_q": HQ, "H_kv": H, "d_k": K, "d_v": V,
        "l": BS, "d": BS, "l_sel": BS, "n": N, "w": W, "phi": "mean", "shared_kv": 1,
        "scale": K ** -0.5, "seed": SEED,
        "selection_margin": margin,
        "fla_f32_vs_f64_rel_err": report,
        "fd_rel_err_f64": fd_worst,
    }
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(README.format(cmd=COMMAND, T=T, HQ=HQ, H=H, K=K, V=V, BS=BS, N=N, W=W,
                              margin=margin, fd=fd_worst,
                              errs=", ".join(f"{k} {v:.1e}" for k, v in report.items())))
    print(json.dumps(meta, indent=1))


README = """# NSA parity fixtures (fla naive_nsa)

Generated by `{cmd}` (torch, fla-core 0.6.0); do not edit by hand. Read by
`tests/unit/test_nsa.c` (case `nsa/fla`). Everything the script does and why is in its docstring.

Configuration (fla's): T = {T} tokens, H_q = {HQ} query heads over H_kv = {H} KV heads (G = 16),
d_k = {K}, d_v = {V}, l = d = l' = {BS} (fla's block_size), mean-pooled compression, q/k/v shared by the
three branches, n = {N} selected blocks including block 0 and the current and previous blocks, window
w = {W} keys including t, scale = 1/sqrt(d_k). In dsc terms: `dsc_nsa_config` {{l = d = l_sel = {BS},
n = {N}, w = {W}, phi = DSC_NSA_PHI_MEAN, shared_kv = 1, scale = 0}}.

All files little-endian, row-major, no header:

| file | shape | what |
| --- | --- | --- |
| `q.f32` | (T, H_q, d_k) | queries (inputs are float32 values; the float64 runs use them exactly) |
| `k.f32`, `v.f32` | (T, H_kv, d_k), (T, H_kv, d_v) | keys, values |
| `g.f32` | (T, H_q, 3) | gates in (0, 1): cmp, slc, swa (fla's `g_proj` layout) |
| `dout.f32` | (T, H_q, d_v) | cotangent: the loss is sum(o * dout) |
| `sel.i32` | (T, H_kv, n) | fla's `naive_nsa_topk` selection, sorted ascending, -1 padded |
| `o.f32`, `dq.f32`, `dk.f32`, `dv.f32`, `dg.f32` | as o, q, k, v, g | fla's `naive_nsa` in float32 + autograd |
| `o.f64`, ... `dg.f64` | same | the script's float64 transcription of `naive_nsa` + autograd |
| `meta.json` | | the configuration and the checks below |

Checks made when generating: fla's float32 and float64 selections are identical and every dynamic pick
beats the best block left out by a relative margin of {margin:.3f}; fla (float32) against the float64
transcription, max error relative to each tensor's max: {errs}; float64 gradients against central
finite differences: {fd:.1e} relative.

Two substitutions because fla's naive path needs a GPU for two pieces (see the script): fla's Triton
`mean_pooling` is replaced by the same mean in torch, and the sliding-window branch (fla calls
flash-attn with `window_size=(w-1, 0)`) is computed in torch with exactly that mask.
"""


if __name__ == "__main__":
    sys.exit(main())
