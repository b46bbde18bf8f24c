#!/usr/bin/env python3
"""Parity fixtures for dsc's DSA-indexer training ops (src/train/idx_ops.h; run by hand, never in CI).

Writes tests/fixtures/idx/: the inputs and torch-autograd loss and gradients of the lightning
indexer's KL training loss (spec §4.6, V32-paper §2.1), dense warm-up form and sparse form.

Where the reference comes from. transformers 5.24.0 (the installed version) has
`models/deepseek_v32/modeling_deepseek_v32.py` with `DeepseekV32Indexer`, but its forward is
`@torch.no_grad()` and returns top-k indices only: it has NO indexer loss / KL (spec §4.8 mentions an
`output_indexer_loss` in a newer tree; it is not in 5.24.0). So the loss is written here from the spec:
  score (HF DeepseekV32Indexer.forward / spec §4.3, minus Hadamard and FP8):
    k = RoPE_half(LayerNorm(xk; g, b, eps 1e-6)) on the first DR dims     (T, D)
    q = RoPE_half(qraw) per head on the first DR dims                     (T, H, D)
    I[t, s] = sum_h w[t, h] * relu(q[t, h] . k[s])  for s <= t, -inf else   (w already scaled)
  loss (spec §4.6): p_t = P[t] over the visible keys, L1-normalised; KL(p_t || softmax(I[t]))
    summed over the visible keys (xlogy, so 0 log 0 = 0), averaged over the T queries.
  sparse: the visible set of query t is sel[t] (the indexer's top-K of I[t] over s <= t, -1 padded
    when t + 1 < K); p is P gathered at sel and renormalised over it, softmax over the same set.
P is a constant (the indexer's inputs are detached): the head sum of random causal softmax
attention of HM heads (not normalised; the op normalises).

Checks made here: every visible q.k has |q.k| >= KINK (so finite differences and float32 never cross
a ReLU kink); float32 and float64 torch agree within 1e-5 relative (max-norm) on loss and gradients;
the float64 gradients match central finite differences on a sample.

Files (little-endian, row-major, no headers; float32 unless .i32; shapes in meta.json):
  inputs : xk (T, D)  g (D)  b (D)  qraw (T, H, D)  w (T, H)  cos, sin (T, DR/2)  P (T, T)
           sel.i32 (T, K)  Ps (T, K) = P gathered at sel (0 at padding)
  outputs, for f in dense, sparse (torch float32 + autograd):
           I_<f> (T, T or K)  loss_<f> (1)  dxk_<f>  dg_<f>  db_<f>  dqraw_<f>  dw_<f>

Usage:  python3 tests/reference/make_idx_fixtures.py [--out tests/fixtures/idx]
Requires torch (2.15 used).
"""

import argparse
import json
import os

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
T, H, D, DR, K, HM = 13, 3, 12, 8, 5, 2
EPS = 1e-6
KINK = 1e-2
SEED = 20250907


def rope_half(x, cos, sin):
    """Half-split RoPE on the first DR dims of the last axis: pairs (i, i + DR/2)."""
    half = DR // 2
    a, b, rest = x[..., :half], x[..., half:DR], x[..., DR:]
    return torch.cat([a * cos - b * sin, a * sin + b * cos, rest], dim=-1)


def forward(xk, g, b, qraw, w, cos, sin, P, sel):
    kn = torch.nn.functional.layer_norm(xk, (D,), g, b, EPS)
    k = rope_half(kn, cos, sin)                                   # (T, D)
    q = rope_half(qraw, cos[:, None, :], sin[:, None, :])        # (T, H, D)
    dots = torch.einsum("thd,sd->ths", q, k)
    I = torch.einsum("th,ths->ts", w, torch.relu(dots))          # (T, T)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    if sel is None:
        vis, Pm = causal, P
        Iv = I.masked_fill(~vis, float("-inf"))
    else:
        idx = sel.clamp(min=0).long()
        vis = (sel >= 0) & (sel <= torch.arange(T)[:, None])
        Iv = torch.gather(I, 1, idx).masked_fill(~vis, float("-inf"))
        Pm = torch.gather(P, 1, idx)
    Pm = Pm.masked_fill(~vis, 0.0)
    p = Pm / Pm.sum(-1, keepdim=True)
    logq = torch.log_softmax(Iv, dim=-1).masked_fill(~vis, 0.0)
    kl = (torch.xlogy(p, p) - p * logq).sum(-1)
    return Iv, kl.mean(), dots, vis


def run(inputs, dtype, sparse_sel):
    ts = [torch.tensor(x, dtype=dtype, requires_grad=(i in (0, 1, 2, 3, 4))) for i, x in enumerate(inputs)]
    xk, g, b, qraw, w, cos, sin, P = ts
    Iv, loss, dots, vis = forward(xk, g, b, qraw, w, cos, sin, P, sparse_sel)
    loss.backward()
    return Iv.detach(), loss.detach(), [t.grad.detach() for t in (xk, g, b, qraw, w)], dots.detach()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "idx"))
    args = ap.parse_args()
    rng = np.random.default_rng(SEED)
    f32 = lambda *s, scale=1.0: (rng.standard_normal(s) * scale).astype(np.float32)
    xk, g, b = f32(T, D), 1.0 + f32(D, scale=0.2), f32(D, scale=0.2)
    qraw, w = f32(T, H, D, scale=0.5), f32(T, H, scale=0.7)
    inv = 1.0 / (10000.0 ** (np.arange(DR // 2) * 2.0 / DR))
    ang = np.arange(T)[:, None] * inv[None, :]
    cos, sin = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
    logits = rng.standard_normal((HM, T, T)) * 1.5
    logits = np.where(np.tril(np.ones((T, T), bool)), logits, -np.inf)
    att = np.exp(logits - logits.max(-1, keepdims=True))
    att /= att.sum(-1, keepdims=True)
    P = att.sum(0).astype(np.float32)                            # head sum, rows sum to HM
    inputs = [xk, g, b, qraw, w, cos, sin, P]

    # sparse selection: the indexer's own top-K over the visible keys (float64), -1 padded
    I64, _, _, dots = run(inputs, torch.float64, None)
    Iv = I64.numpy()
    sel = -np.ones((T, K), np.int32)
    for t in range(T):
        order = sorted(range(t + 1), key=lambda s: (-Iv[t, s], s))[:K]
        sel[t, : len(order)] = order
    vis = np.tril(np.ones((T, T), bool))
    kink = np.abs(dots.numpy()).transpose(0, 2, 1)[vis].min()
    assert kink >= KINK, f"a visible q.k is {kink:.2e} from the ReLU kink; change SEED"
    Ps = np.where(sel >= 0, np.take_along_axis(P, np.maximum(sel, 0), 1), 0).astype(np.float32)

    os.makedirs(args.out, exist_ok=True)
    put = lambda name, a: np.ascontiguousarray(a).tofile(os.path.join(args.out, name))
    for name, a in zip(["xk", "g", "b", "qraw", "w", "cos", "sin", "P"], inputs):
        put(name + ".f32", a)
    put("sel.i32", sel)
    put("Ps.f32", Ps)
    report = {}
    for form, s in (("dense", None), ("sparse", torch.tensor(sel))):
        I32, l32, g32, _ = run(inputs, torch.float32, s)
        _, l64, g64, _ = run(inputs, torch.float64, s)
        errs = [abs(l32.item() - l64.item()) / abs(l64.item())]
        for a, c in zip(g32, g64):
            errs.append((a.double() - c).abs().max().item() / c.abs().max().item())
        assert max(errs) < 1e-5, f"{form}: torch float32 vs float64 {errs}"
        # finite differences of the float64 loss on a sample of qraw / xk / w entries
        h = 1e-6
        for vi, shape in ((3, (T, H, D)), (0, (T, D)), (4, (T, H))):
            for flat in rng.choice(int(np.prod(shape)), 6, replace=False):
                pert = []
                for sgn in (1, -1):
                    x = [np.array(v, np.float64) for v in inputs]
                    x[vi].reshape(-1)[flat] += sgn * h
                    pert.append(run(x, torch.float64, s)[1].item())
                fd = (pert[0] - pert[1]) / (2 * h)
                an = g64[[0, 1, 2, 3, 4].index(vi)].reshape(-1)[flat].item()
                scale = g64[[0, 1, 2, 3, 4].index(vi)].abs().max().item()
                assert abs(fd - an) <= 1e-6 * scale, f"{form}: fd {fd} vs autograd {an}"
        put(f"I_{form}.f32", I32.numpy().astype(np.float32))
        put(f"loss_{form}.f32", np.array([l32.item()], np.float32))
        for name, a in zip(["dxk", "dg", "db", "dqraw", "dw"], g32):
            put(f"{name}_{form}.f32", a.numpy().astype(np.float32))
        report[form] = {"loss_f32": l32.item(), "loss_f64": l64.item(), "max_rel_f32_vs_f64": max(errs)}
    meta = {"T": T, "H": H, "D": D, "DR": DR, "K": K, "HM": HM, "eps": EPS, "seed": SEED,
            "min_abs_visible_qk": float(kink), "torch": torch.__version__,
            "reference": "written from spec 4.6 (transformers 5.24.0 DeepseekV32Indexer has no loss)",
            "forms": report}
    with open(os.path.join(args.out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
