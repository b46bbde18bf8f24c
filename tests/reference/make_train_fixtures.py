#!/usr/bin/env python3
"""Training-reference fixtures for dsc's C trainer (run by hand, never in CI).

Writes tests/fixtures/train_ref/: a tiny random DeepseekV3ForCausalLM (F32, real checkpoint names, experts
unfused), a fixed batch, and float64 losses + gradients for
  * the mean next-token cross-entropy (transformers' own V3 model under make_fixtures.Float64Mode),
  * CE + the sequence-wise balance loss (spec 5.6; written here from the spec: transformers 5.24 has no
    balance/aux loss for DeepSeek-V3),
  * CE + lambda * MTP CE (spec 6; the MTP wrapper is written here from the spec, its decoder block is
    transformers' DeepseekV3DecoderLayer),
plus float32 torch.optim.AdamW trajectories (10 steps), without and with the aux-loss-free bias update (spec 5.5).
Every gradient file is checked against float64 central finite differences (one entry of every tensor).
The README section (tests/fixtures/train_ref/README.md, also appended to tests/fixtures/README.md between
marker lines) documents the files and conventions.

Usage:  python3 tests/reference/make_train_fixtures.py [--out tests/fixtures/train_ref]
Requires torch (2.15 used), transformers (5.24 used), safetensors, numpy; imports make_fixtures.py.
"""

import argparse
import contextlib
import math
import os
import shutil
import sys

import numpy as np
import torch
from torch import nn
from safetensors.torch import save_file, load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402  (sets torch threads = 1, silences transformers)
from make_adamw_ref import lr_at  # noqa: E402  (same warm-up + cosine formula as tests/fixtures/train)
from transformers.models.deepseek_v3.modeling_deepseek_v3 import (  # noqa: E402
    DeepseekV3DecoderLayer, DeepseekV3RMSNorm, DeepseekV3TopkRouter)

ROOT = mf.ROOT
COMMAND = "python3 tests/reference/make_train_fixtures.py"

B, T = 2, 13                 # batch, sequence length (tokens.i32 holds T + 1 ids per row)
ALPHA = 1e-2                 # balance-loss weight (see README: larger than V3's 1e-4 so the term is visible in F32)
LAMBDA = 0.3                 # MTP loss weight
GAMMA = 1e-3                 # aux-loss-free bias step
N_STEPS = 10
LR_MAX, LR_MIN, WARMUP = 1e-3, 1e-4, 3
BETAS, EPS, WD, CLIP = (0.9, 0.95), 1e-8, 0.1, 1.0
FD_H = 1e-5                  # central-difference step (float64)
MIN_TRAJ_MARGIN = 1e-3       # router margin required at every step of the float32 AdamW runs

FX = mf.Fixture(
    "train_ref", arch="v3", form="hub", seed=2001, n_ids=B * (T + 1), mtp=False,
    dims=mf.dims(88, 40, 72, 20, 3, 1, 3, 24, 20, 12, 8, 10, 6, 1, 2, 3, 2),
    yarn=(100.0, 4.0, 8, 1.0), max_pos=64,
    covers="training reference: CE / balance loss / MTP gradients, AdamW trajectories")
FX_MTP = mf.Fixture(**{**FX.__dict__, "mtp": True})

MARK_BEGIN = "<!-- BEGIN train_ref (written by tests/reference/make_train_fixtures.py) -->"
MARK_END = "<!-- END train_ref -->"


# ----------------------------------------------------------------------------
# Router recording
# ----------------------------------------------------------------------------

class RouterLog:
    """Forward hooks on every DeepseekV3TopkRouter: records (module, router_logits [N,E], topk_indices [N,K])
    in call order (rows n = b*T_seq + t)."""

    def __init__(self, modules):
        self.calls = []
        self.handles = [m.register_forward_hook(self._hook) for m in modules
                        if isinstance(m, DeepseekV3TopkRouter)]

    def _hook(self, mod, inp, out):
        self.calls.append((mod, out[0], out[2]))

    def clear(self):
        self.calls = []


def router_stats(c, calls):
    """Margins of every routing decision (numpy spec router, make_fixtures.route) and a check that the
    spec's selection equals transformers'."""
    st = dict(expert_margin=math.inf, group_margin=math.inf, group_changed=0, tokens=0)
    for mod, z, idx in calls:
        bias = mod.e_score_correction_bias.detach().double().numpy()
        sidx, _ = mf.route(c, z.detach().double().numpy(), bias, st)
        assert (np.sort(sidx, 1) == np.sort(idx.numpy(), 1)).all()
    return st


def balance_loss(c, calls, seq_len):
    """Spec 5.6, summed over the given router calls (MoE layers), averaged over sequences."""
    E, K = c["n_routed_experts"], c["num_experts_per_tok"]
    total = 0.0
    for _, z, idx in calls:
        s = torch.sigmoid(z).view(-1, seq_len, E)                        # [B, T, E]
        with torch.no_grad():
            cnt = torch.zeros(s.shape[0], E, dtype=s.dtype)
            cnt.scatter_add_(1, idx.view(s.shape[0], -1), torch.ones_like(idx.view(s.shape[0], -1), dtype=s.dtype))
            f = cnt * (E / (K * seq_len))                                  # [B, E], no gradient
        p = (s / s.sum(-1, keepdim=True)).mean(1)                         # [B, E]
        total = total + ALPHA * (f * p).sum(-1).mean()
    return total


# ----------------------------------------------------------------------------
# MTP module (spec 6.1, D = 1)
# ----------------------------------------------------------------------------

class MTP(nn.Module):
    """h'_i = eh_proj([enorm(Emb(t_{i+1})) ; hnorm(h_i)]) (embedding first), h = Block(h') over positions
    0..T-2 (causal), logits = lm_head(shared_head.norm(h)); Emb and lm_head are the main model's."""

    def __init__(self, cfg, layer_idx):
        super().__init__()
        H = cfg.hidden_size
        self.enorm = DeepseekV3RMSNorm(H, eps=cfg.rms_norm_eps)
        self.hnorm = DeepseekV3RMSNorm(H, eps=cfg.rms_norm_eps)
        self.eh_proj = nn.Linear(2 * H, H, bias=False)
        self.block = DeepseekV3DecoderLayer(cfg, layer_idx)
        self.shared_head = nn.Module()
        self.shared_head.norm = DeepseekV3RMSNorm(H, eps=cfg.rms_norm_eps)

    def forward(self, main, h, next_ids):
        """main: the DeepseekV3ForCausalLM; h: its final hidden (post model.norm) [B, n, H] for positions
        0..n-1; next_ids: t_{i+1} [B, n]. Returns logits [B, n, V] predicting t_{i+2}."""
        e = main.model.embed_tokens(next_ids)
        x = self.eh_proj(torch.cat([self.enorm(e), self.hnorm(h)], dim=-1))
        n = x.shape[1]
        pos = torch.arange(n).unsqueeze(0)
        cos_sin = main.model.rotary_emb(x, pos)
        mask = torch.full((n, n), -math.inf, dtype=x.dtype).triu(1)[None, None]
        x = self.block(x, attention_mask=mask, position_ids=pos, position_embeddings=cos_sin)
        return main.lm_head(self.shared_head.norm(x))


def mtp_hf_name(L, name):
    """MTP module parameter name -> name in the checkpoint (fused experts still fused)."""
    return f"model.layers.{L}." + (name[len("block."):] if name.startswith("block.") else name)


def build_mtp(cfg, ck, L, f64_mode):
    """MTP module with the layer-L tensors of the checkpoint dict ck (experts fused here)."""
    I, E = cfg.moe_intermediate_size, cfg.n_routed_experts
    p = f"model.layers.{L}."
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64 if f64_mode else torch.float32)
    try:
        if f64_mode is not None:
            with f64_mode:
                mtp = MTP(cfg, L)
        else:
            mtp = MTP(cfg, L)
    finally:
        torch.set_default_dtype(old)
    dt = torch.float64 if f64_mode is not None else torch.float32
    sd = {}
    for n in mtp.state_dict():
        hn = mtp_hf_name(L, n)
        if hn.endswith("mlp.experts.gate_up_proj"):
            sd[n] = torch.stack([torch.cat([ck[f"{p}mlp.experts.{e}.gate_proj.weight"],
                                            ck[f"{p}mlp.experts.{e}.up_proj.weight"]], 0) for e in range(E)])
            assert sd[n].shape[1] == 2 * I
        elif hn.endswith("mlp.experts.down_proj"):
            sd[n] = torch.stack([ck[f"{p}mlp.experts.{e}.down_proj.weight"] for e in range(E)])
        else:
            sd[n] = ck[hn]
    mtp.load_state_dict({k: v.to(dt) for k, v in sd.items()}, strict=True)
    return mtp.eval()


# ----------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------

def ce(logits, targets):
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="mean")


def losses(c, m, mtp, log, tok, variant):
    """variant 'ce' | 'bal' | 'mtp'. Returns (total, parts dict). tok: [B, T+1] long."""
    log.clear()
    inp, tgt = tok[:, :-1], tok[:, 1:]
    h = m.model(input_ids=inp, use_cache=False).last_hidden_state       # post final norm
    main_ce = ce(m.lm_head(h), tgt)
    n_main = len(log.calls)
    if variant == "ce":
        return main_ce, dict(ce=main_ce)
    if variant == "bal":
        lb = balance_loss(c, log.calls[:n_main], inp.shape[1])
        return main_ce + lb, dict(ce=main_ce, bal=lb)
    if variant == "mtp":
        lg = mtp(m, h[:, :-1], inp[:, 1:])                              # positions 0..T-2
        mtp_ce = ce(lg, tok[:, 2:])                                      # targets t_{i+2}
        return main_ce + LAMBDA * mtp_ce, dict(ce=main_ce, mtp=mtp_ce)
    raise ValueError(variant)


def f64_loss(c, m, mtp, log, tok, variant, mode, grad):
    mode.low.clear()
    with mode:
        if grad:
            for mod in (m, mtp):
                mod.zero_grad(set_to_none=True)
            total, parts = losses(c, m, mtp, log, tok, variant)
            total.backward()
        else:
            with torch.no_grad():
                total, parts = losses(c, m, mtp, log, tok, variant)
    assert not mode.low, f"float32 ops left in the float64 computation: {mode.low}"
    assert total.dtype == torch.float64
    return total.item(), {k: v.item() for k, v in parts.items()}


# ----------------------------------------------------------------------------
# Names: checkpoint tensor entry -> (parameter, index)
# ----------------------------------------------------------------------------

def param_table(m, mtp, L):
    t = {n: p for n, p in m.named_parameters()}
    if mtp is not None:
        t.update({mtp_hf_name(L, n): p for n, p in mtp.named_parameters()})
    return t


def locate(table, name, idx, I):
    """(parameter, index) of checkpoint tensor `name` at multi-index idx."""
    parts = name.split(".")
    if ".mlp.experts." in name:
        base = ".".join(parts[:5])
        e, proj = int(parts[5]), parts[6]
        if proj == "gate_proj":
            return table[base + ".gate_up_proj"], (e, idx[0], idx[1])
        if proj == "up_proj":
            return table[base + ".gate_up_proj"], (e, I + idx[0], idx[1])
        return table[base + ".down_proj"], (e, idx[0], idx[1])
    return table[name], tuple(idx)


def grads_checkpoint(c, table):
    g = {}
    for n, p in table.items():
        assert p.grad is not None, n
        g[n] = p.grad.detach().clone()
    return mf.hf_to_checkpoint(g, c)


def fd_check(c, m, mtp, log, tok, variant, mode, grads64, stored, L, seed):
    """One entry of every gradient tensor (random among entries with |g| >= 0.1 max|g| of the tensor)
    against a float64 central difference. Returns rows (name, idx, g64, g_stored, fd)."""
    table = param_table(m, mtp, L)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for name in sorted(grads64, key=mf._natural_key):
        g = grads64[name]
        big = (g.abs() >= 0.1 * g.abs().max()).nonzero()
        if g.abs().max() == 0:
            rows.append((name, None, 0.0, 0.0, 0.0))
            continue
        idx = big[torch.randint(0, len(big), (1,), generator=gen).item()].tolist()
        p, pidx = locate(table, name, idx, c["moe_intermediate_size"])
        with torch.no_grad():
            x0 = p.data[pidx].item()
            p.data[pidx] = x0 + FD_H
            lp, _ = f64_loss(c, m, mtp, log, tok, variant, mode, False)
            p.data[pidx] = x0 - FD_H
            lm, _ = f64_loss(c, m, mtp, log, tok, variant, mode, False)
            p.data[pidx] = x0
        rows.append((name, idx, g[tuple(idx)].item(), stored[name][tuple(idx)].item(), (lp - lm) / (2 * FD_H)))
    return rows


def rel(a, b):
    d = max(abs(a), abs(b))
    return 0.0 if d == 0 else abs(a - b) / d


# ----------------------------------------------------------------------------
# AdamW trajectories (float32 or float64)
# ----------------------------------------------------------------------------

def adamw_run(c, d, hf, tok, bias_update, f64):
    mode = mf.Float64Mode() if f64 else None
    m = mf.build_model(d, hf, f64_mode=mode)
    log = RouterLog(m.modules())
    params = [p for _, p in m.named_parameters()]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": WD},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=lr_at(0, LR_MAX, LR_MIN, WARMUP, N_STEPS), betas=BETAS, eps=EPS,
                            foreach=False)
    E = c["n_routed_experts"]
    K = c["num_experts_per_tok"]
    out = dict(loss=[], gnorm=[], lr=[], loads=[], margin=[])
    ctx = mode if mode is not None else contextlib.nullcontext()
    for s in range(N_STEPS):
        lr = lr_at(s, LR_MAX, LR_MIN, WARMUP, N_STEPS)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        with ctx:
            loss, _ = losses(c, m, None, log, tok, "ce")
            loss.backward()
        st = router_stats(c, log.calls)
        out["margin"].append(min(st["expert_margin"], st["group_margin"]))
        loads = [torch.bincount(idx.reshape(-1), minlength=E) for _, _, idx in log.calls]
        out["loads"].append(torch.stack(loads))
        out["loss"].append(loss.item())
        out["gnorm"].append(torch.nn.utils.clip_grad_norm_(params, CLIP, foreach=False).item())
        out["lr"].append(lr)
        opt.step()
        if bias_update:
            mean_load = B * T * K / E
            with torch.no_grad():
                for (mod, _, _), load in zip(log.calls, loads):
                    sign = torch.sign(mean_load - load.to(torch.float64)).to(mod.e_score_correction_bias.dtype)
                    mod.e_score_correction_bias.add_(GAMMA * sign)
    out["biases"] = torch.stack([mod.e_score_correction_bias.detach().clone() for mod, _, _ in log.calls])
    return out


# ----------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------

def write_f64(path, vals):
    np.asarray(vals, dtype="<f8").tofile(path)
    return path


def save_st(path, tensors):
    names = sorted(tensors, key=mf._natural_key)
    save_file({n: tensors[n].to(torch.float32).contiguous() for n in names}, path, metadata={"format": "pt"})
    back = load_file(path)
    assert set(back) == set(tensors)
    for n in names:
        assert torch.equal(back[n], tensors[n].to(torch.float32)), n
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "train_ref"))
    ap.add_argument("--no-readme", action="store_true", help="do not touch tests/fixtures/README.md")
    a = ap.parse_args()
    print(f"torch {torch.__version__}, transformers {mf.transformers.__version__}")
    d = a.out
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    files = []

    # config + weights
    c = mf.make_config(FX)
    c_mtp = mf.make_config(FX_MTP)
    assert c["num_nextn_predict_layers"] == 0 and c_mtp["num_nextn_predict_layers"] == 1
    files.append(mf.write_json(os.path.join(d, "config.json"), c))
    L = c["num_hidden_layers"]
    sd, ck = mf.random_checkpoint(FX_MTP, c_mtp, d)
    p = f"model.layers.{L}."
    # the stored copies of the shared embedding / head (as in the real V3 checkpoint) equal the main ones
    ck[p + "embed_tokens.weight"] = ck["model.embed_tokens.weight"].clone()
    ck[p + "shared_head.head.weight"] = ck["lm_head.weight"].clone()
    ck_main = {n: t for n, t in ck.items() if not n.startswith(p)}
    files.append(save_st(os.path.join(d, "model.safetensors"), ck_main))
    files.append(save_st(os.path.join(d, "model_mtp.safetensors"), ck))
    files.append(mf.write_json(os.path.join(d, "config_mtp.json"), c_mtp))
    ck64 = {n: t.double() for n, t in load_file(os.path.join(d, "model_mtp.safetensors")).items()}
    hf64 = mf.checkpoint_to_hf(ck64, c)
    assert set(hf64) == set(sd)

    mode = mf.Float64Mode()
    m = mf.build_model(d, hf64, f64_mode=mode)
    cfg = m.config
    mtp = build_mtp(cfg, ck64, L, mode)
    log = RouterLog(list(m.modules()) + list(mtp.modules()))
    np_inv, ramp = mf.yarn_inv_freq(c)
    assert np.allclose(m.model.rotary_emb.inv_freq.numpy(), np_inv, rtol=1e-14, atol=0)

    # tokens: re-draw until every routing decision (main layers + MTP layer) has a safe margin
    def try_ids(seed):
        ids = mf.random_ids(seed, B * (T + 1), c["vocab_size"])
        tok = torch.tensor(ids, dtype=torch.long).view(B, T + 1)
        f64_loss(c, m, mtp, log, tok, "mtp", mode, False)
        st = router_stats(c, log.calls)
        if min(st["expert_margin"], st["group_margin"]) < mf.MIN_ROUTER_MARGIN:
            return False, None
        # the float32 AdamW trajectories must route with safe margins at every step as well
        r32 = {key: adamw_run(c, d, hf32, tok, bias, f64=False) for key, bias in (("plain", False), ("bias", True))}
        ok = all(min(r["margin"]) >= MIN_TRAJ_MARGIN for r in r32.values())
        print(f"  candidate {seed}: static margin ok, trajectory margins "
              f"{[float(round(min(r['margin']), 6)) for r in r32.values()]}")
        return ok, (tok, st, r32)

    hf32 = {k: v.float() for k, v in hf64.items()}
    attempt, (tok, st, runs32) = mf.first_safe((FX.seed * 1000 + k for k in range(400)), try_ids, "token batch")
    files.append(mf.write_i32(os.path.join(d, "tokens.i32"), tok.numpy()))
    print(f"tokens (attempt {attempt}): {tok.tolist()}")
    print(f"router (f64, main + MTP layers): min expert margin {st['expert_margin']:.3g}, min group margin "
          f"{st['group_margin']:.3g}, group limit changed {st['group_changed']}/{st['tokens']}")

    # gradients
    res = {}
    for variant, lname, gname, model_mtp in (("ce", "loss.f64", "grads.safetensors", None),
                                              ("bal", "loss_bal.f64", "grads_bal.safetensors", None),
                                              ("mtp", "loss_mtp.f64", "grads_mtp.safetensors", mtp)):
        total, parts = f64_loss(c, m, mtp, log, tok, variant, mode, True)
        table = param_table(m, model_mtp, L)
        g64 = grads_checkpoint(c, table)
        if model_mtp is None:
            for q in mtp.parameters():
                assert q.grad is None
        vals = [total] + [parts[k] for k in ("ce", "bal", "mtp") if k in parts and variant != "ce"]
        files.append(write_f64(os.path.join(d, lname), vals))
        files.append(save_st(os.path.join(d, gname), g64))
        stored = load_file(os.path.join(d, gname))
        rows = fd_check(c, m, model_mtp, log, tok, variant, mode, g64, stored, L, seed={"ce": 1, "bal": 2, "mtp": 3}[variant])
        checked = [r for r in rows if r[1] is not None]
        e64 = max(rel(r[2], r[4]) for r in checked)
        e32 = max(rel(r[3], r[4]) for r in checked)
        zero = [r[0] for r in rows if r[1] is None]
        res[variant] = dict(total=total, parts=parts, n=len(checked), e64=e64, e32=e32, zero=zero,
                            ntensors=len(g64), nelem=sum(t.numel() for t in g64.values()),
                            gmax=max(t.abs().max().item() for t in g64.values()))
        print(f"[{variant}] loss {total:.15g} parts {parts}; {len(g64)} gradient tensors; FD check of "
              f"{len(checked)} entries (one per tensor): max rel err f64 grad {e64:.2e}, stored F32 grad {e32:.2e}"
              + (f"; all-zero tensors: {zero}" if zero else ""))
        worst = sorted(checked, key=lambda r: -rel(r[2], r[4]))[:3]
        for r in worst:
            print(f"    {r[0]}{r[1]}: grad {r[2]:.10e} fd {r[4]:.10e} rel {rel(r[2], r[4]):.2e}")
        assert e64 < 1e-5 and e32 < 1e-5, (variant, e64, e32)
    # balance-loss and MTP gradients differ from plain CE ones where they should
    g_ce = load_file(os.path.join(d, "grads.safetensors"))
    g_bal = load_file(os.path.join(d, "grads_bal.safetensors"))
    g_mtp = load_file(os.path.join(d, "grads_mtp.safetensors"))
    d_bal = max((g_bal[n] - g_ce[n]).abs().max().item() for n in g_ce)
    res["d_bal"] = d_bal
    assert set(g_mtp) - set(g_ce) == {n for n in ck if n.startswith(p)} - {p + "embed_tokens.weight",
                                                                           p + "shared_head.head.weight",
                                                                           p + "mlp.gate.e_score_correction_bias"}
    print(f"max |grads_bal - grads| = {d_bal:.3g}")

    # AdamW trajectories
    runs = {}
    for key, bias in (("plain", False), ("bias", True)):
        r32 = adamw_run(c, d, hf32, tok, bias, f64=False)
        assert r32["loss"] == runs32[key]["loss"]  # deterministic
        r64 = adamw_run(c, d, hf64, tok, bias, f64=True)
        runs[key] = (r32, r64)
        dl = max(abs(x - y) for x, y in zip(r32["loss"], r64["loss"]))
        same = all(torch.equal(x, y) for x, y in zip(r32["loads"], r64["loads"]))
        print(f"AdamW {key}: losses f32 {[f'{x:.7f}' for x in r32['loss']]}")
        print(f"    max |f32 - f64| loss {dl:.2e}; routing loads identical in f32/f64: {same}; "
              f"min router margin over steps (f32) {min(r32['margin']):.3g}; grad norms "
              f"{[f'{x:.4f}' for x in r32['gnorm']]}")
        if bias:
            print(f"    loads per step (MoE layers x experts): {[x.tolist() for x in r32['loads']]}")
            db = (r32["biases"].double() - r64["biases"]).abs().max().item()
            print(f"    final biases (f32): {r32['biases'].tolist()} (max |f32 - f64| {db:.2e})")
    rp, rb = runs["plain"][0], runs["bias"][0]
    files.append(write_f64(os.path.join(d, "adamw_losses.f64"), rp["loss"]))
    files.append(write_f64(os.path.join(d, "adamw_gradnorms.f64"), rp["gnorm"]))
    files.append(write_f64(os.path.join(d, "adamw_bias_losses.f64"), rb["loss"]))
    files.append(write_f64(os.path.join(d, "adamw_bias_gradnorms.f64"), rb["gnorm"]))
    files.append(mf.write_i32(os.path.join(d, "adamw_bias_loads.i32"), torch.stack(rb["loads"]).numpy()))
    np.ascontiguousarray(rb["biases"].numpy().astype("<f4")).tofile(os.path.join(d, "final_biases.f32"))
    files.append(os.path.join(d, "final_biases.f32"))
    init_b = torch.stack([ck[f"model.layers.{i}.mlp.gate.e_score_correction_bias"]
                          for i in range(c["first_k_dense_replace"], L)])
    # exact replay of the documented rule in float32 from the initial biases and the recorded loads
    rep = init_b.clone()
    K, E = c["num_experts_per_tok"], c["n_routed_experts"]
    for loads in rb["loads"]:
        rep += torch.tensor(GAMMA, dtype=torch.float32) * torch.sign(B * T * K / E - loads.double()).float()
    assert torch.equal(rep, rb["biases"]), "bias rule replay mismatch"

    readme = readme_section(c, tok, res, runs, st, ramp, files, d)
    files.append(os.path.join(d, "README.md"))
    with open(files[-1], "w") as f:
        f.write("\n".join(["# " + readme[0][3:]] + readme[1:]) + "\n")
    for q in files:
        print(f"  wrote {os.path.relpath(q, ROOT)}  ({os.path.getsize(q)} bytes, sha256 {mf.sha(q)})")
    assert sorted(os.listdir(d)) == sorted(os.path.basename(q) for q in files)
    print(f"  total {sum(os.path.getsize(q) for q in files)} bytes")
    if not a.no_readme:
        append_readme(os.path.join(os.path.dirname(d), "README.md"), readme)


def append_readme(path, section):
    text = open(path).read() if os.path.exists(path) else ""
    if MARK_BEGIN in text:
        text = text[:text.index(MARK_BEGIN)].rstrip("\n") + "\n" + text[text.index(MARK_END) + len(MARK_END):].lstrip("\n")
    text = text.rstrip("\n") + "\n\n" + MARK_BEGIN + "\n" + "\n".join(section) + "\n" + MARK_END + "\n"
    with open(path, "w") as f:
        f.write(text)
    print(f"updated {os.path.relpath(path, ROOT)}")


def readme_section(c, tok, res, runs, st, ramp, files, d):
    L, E, K = c["num_hidden_layers"], c["n_routed_experts"], c["num_experts_per_tok"]
    nm = L - c["first_k_dense_replace"]
    sizes = {os.path.basename(q): os.path.getsize(q) for q in files}
    rp, rb = runs["plain"], runs["bias"]
    dl = lambda r: max(abs(x - y) for x, y in zip(r[0]["loss"], r[1]["loss"]))  # noqa: E731
    return [
        "## Training reference `train_ref`",
        "",
        f"Generated by `{COMMAND}` (torch {torch.__version__.split('+')[0]}, transformers "
        f"{mf.transformers.__version__}); do not edit by hand. Full log of the numbers below: run the script.",
        "",
        f"Model: DeepseekV3ForCausalLM, {L} layers (layer 0 dense, {nm} MoE), hidden {c['hidden_size']}, "
        f"{c['num_attention_heads']} heads, q_lora {c['q_lora_rank']}, kv_lora {c['kv_lora_rank']}, "
        f"nope/rope/v {c['qk_nope_head_dim']}/{c['qk_rope_head_dim']}/{c['v_head_dim']}, "
        f"dense inter {c['intermediate_size']}, {E} routed experts of {c['moe_intermediate_size']} (top {K}, "
        f"{c['n_group']} groups, top {c['topk_group']} groups) + {c['n_shared_experts']} shared, noaux_tc sigmoid, "
        f"norm_topk_prob, x{c['routed_scaling_factor']}, vocab {c['vocab_size']}, YaRN (theta "
        f"{c['rope_theta']}, factor {c['rope_scaling']['factor']}, original "
        f"{c['rope_scaling']['original_max_position_embeddings']}, mscale 1.0; ramp "
        f"{', '.join(f'{x:.3g}' for x in ramp)}), no `rope_interleave` key (default true, as the real V3 config), "
        "untied head, rms eps 1e-6. Weights: random as in make_fixtures.py (seed "
        f"{FX.seed}), non-zero `e_score_correction_bias` in [0, 0.2]. Attention and experts: transformers' eager paths.",
        "",
        "All gradients and the `loss*.f64` files come from transformers' own model run in true float64",
        "(make_fixtures.Float64Mode, no float32 op left) on the weights read back from `model_mtp.safetensors`; routing",
        f"decisions of the batch (main and MTP layers) have margins >= {mf.MIN_ROUTER_MARGIN:g} (min expert margin "
        f"{st['expert_margin']:.3g}, min group margin {st['group_margin']:.3g}; group limiting changes the top-k for "
        f"{st['group_changed']}/{st['tokens']} (token, layer) pairs).",
        "",
        "| file | dtype / layout | content |",
        "| --- | --- | --- |",
        f"| `config.json` ({sizes['config.json']} B) | JSON, Hub form | the model, `num_nextn_predict_layers: 0` |",
        f"| `model.safetensors` ({sizes['model.safetensors']} B) | F32 | main-model weights, real checkpoint names, "
        "one tensor per routed expert, incl. `mlp.gate.e_score_correction_bias` |",
        f"| `tokens.i32` ({sizes['tokens.i32']} B) | int32 LE `[{B}][{T + 1}]` | the batch; inputs = `[:, :-1]` "
        f"(T = {T}), targets = `[:, 1:]` |",
        f"| `loss.f64` ({sizes['loss.f64']} B) | float64 LE `[1]` | mean next-token CE over the B*T = {B * T} targets |",
        f"| `grads.safetensors` ({sizes['grads.safetensors']} B) | F32 (computed in float64) | dLoss/dW of `loss.f64` "
        "for every trainable tensor, same names and shapes as `model.safetensors`; "
        "**no entry for `e_score_correction_bias`** (no gradient) |",
        f"| `loss_bal.f64` ({sizes['loss_bal.f64']} B) | float64 LE `[3]` | total, CE part, balance part "
        f"(alpha = {ALPHA:g}) |",
        f"| `grads_bal.safetensors` ({sizes['grads_bal.safetensors']} B) | F32 | gradient of the total of "
        "`loss_bal.f64`, names as `grads.safetensors` |",
        f"| `config_mtp.json` ({sizes['config_mtp.json']} B) | JSON | same model, `num_nextn_predict_layers: 1` |",
        f"| `model_mtp.safetensors` ({sizes['model_mtp.safetensors']} B) | F32 | `model.safetensors` + the MTP "
        f"module `model.layers.{L}.*` (enorm, hnorm, eh_proj [H][2H], input_layernorm, self_attn.*, "
        "post_attention_layernorm, mlp.* (MoE, bias), shared_head.norm, and the stored copies "
        f"`model.layers.{L}.embed_tokens.weight` / `model.layers.{L}.shared_head.head.weight`, bit-equal to "
        "`model.embed_tokens.weight` / `lm_head.weight`) |",
        f"| `loss_mtp.f64` ({sizes['loss_mtp.f64']} B) | float64 LE `[3]` | total = main CE + {LAMBDA:g} x MTP CE, "
        "main CE, MTP CE |",
        f"| `grads_mtp.safetensors` ({sizes['grads_mtp.safetensors']} B) | F32 | gradient of the total: every "
        f"`grads.safetensors` name + every trainable `model.layers.{L}.*` tensor; **no entries for the two copies** "
        "(the embedding and head are shared: their MTP contributions are in `model.embed_tokens.weight` and "
        "`lm_head.weight`) nor for the bias |",
        f"| `adamw_losses.f64` ({sizes['adamw_losses.f64']} B) | float64 LE `[{N_STEPS}]` | float32 AdamW run: loss "
        "(CE) computed before step s (s = 0..9), value of the float32 loss |",
        f"| `adamw_gradnorms.f64` ({sizes['adamw_gradnorms.f64']} B) | float64 LE `[{N_STEPS}]` | the global grad "
        "norm before clipping at each step (as returned by `clip_grad_norm_`) |",
        f"| `adamw_bias_losses.f64`, `adamw_bias_gradnorms.f64` ({sizes['adamw_bias_losses.f64']} B each) | "
        f"float64 LE `[{N_STEPS}]` | the same with the bias update |",
        f"| `adamw_bias_loads.i32` ({sizes['adamw_bias_loads.i32']} B) | int32 LE `[{N_STEPS}][{nm}][{E}]` | "
        "loads used by the bias update of step s, MoE layers in order |",
        f"| `final_biases.f32` ({sizes['final_biases.f32']} B) | float32 LE `[{nm}][{E}]` | "
        f"`e_score_correction_bias` of layers {c['first_k_dense_replace']}..{L - 1} after the {N_STEPS} steps |",
        "",
        "Conventions:",
        "",
        f"- **CE**: `mean over all B*T (b, t)` of `-log softmax(lm_head(norm(h_t)))[tok[b, t+1]]` (no ignore index, "
        "no padding). Positions restart at 0 in every row; causal attention within the row.",
        "- **Routing gradient**: the selection (bias, group limit, top-k) is not differentiated; the gate values "
        "`w = 2.5 * s_e / sum_{chosen} s` of the chosen experts are (through sigmoid(router logits) into "
        "`mlp.gate.weight` and the hidden state). `+1e-20` in the denominator as transformers.",
        f"- **Balance loss** (spec 5.6, written in the script; transformers 5.24 has no balance/aux loss for V3): "
        f"for each MoE layer and each sequence b: `f_i = E/(K*T) * #{{t : i in sel(t)}}`, sel = the top-K the "
        "model actually routes to (biased scores, group limit); `s'_it = s_it / sum_j s_jt` with `s = sigmoid(router "
        "logits)` over all experts (unbiased); `P_i = mean_t s'_it`; `L_b = alpha * sum_i f_i P_i`; the term is the "
        f"mean over sequences, **summed over the {nm} MoE layers**; gradient through P only (f is a constant). "
        f"alpha = {ALPHA:g}, larger than V3's 1e-4 so that the term's gradient (max |grads_bal - grads| = "
        f"{res['d_bal']:.2e}) is well above F32 resolution; the trainer takes alpha as a parameter.",
        f"- **MTP** (D = 1, spec 6, written in the script): `h_i` = the main model's final hidden **after** "
        f"`model.norm` (as vLLM; not confirmed for DeepSeek's training), i = 0..T-2; "
        "`x_i = eh_proj(cat(enorm(Emb(tok[b, i+1])), hnorm(h_i)))` (**embedding first**; transformers' MtpLayer "
        f"default order agrees), then the decoder block `model.layers.{L}.*` (MLA + MoE, causal over its T-1 positions, "
        "RoPE positions 0..T-2, same YaRN tables), then `shared_head.norm`, then `lm_head` (shared). MTP CE = mean "
        f"over the B*(T-1) = {B * (T - 1)} positions of `-log p(tok[b, i+2])`. Total = CE + {LAMBDA:g} * MTP CE. "
        "Emb/head are the main tensors (shared; the stored copies are unused).",
        f"- **AdamW** (float32 model, plain transformers float32 with its own float32 islands, the fixed batch "
        f"`tokens.i32` every step): `torch.optim.AdamW(foreach=False)`, betas {BETAS}, eps {EPS:g}, weight decay "
        f"{WD:g} on tensors with ndim >= 2 (all matrices incl. embedding, lm_head, `mlp.gate.weight`, experts; "
        "the norm weights get 0), lr of step s (0-based) set before the step: "
        f"`{LR_MAX:g}*(s+1)/{WARMUP}` for s < {WARMUP}, else `{LR_MIN:g} + 0.5*({LR_MAX:g}-{LR_MIN:g})*(1+cos(pi*(s-{WARMUP})"
        f"/({N_STEPS}-{WARMUP})))` (`make_adamw_ref.lr_at`). Each step: loss + backward, "
        f"`clip_grad_norm_(all params, {CLIP:g}, foreach=False)` (total = sqrt(sum of squared per-tensor norms); grads "
        "scaled by `min(1, max_norm/(total + 1e-6))`), `opt.step()`. The fused HF expert tensors are elementwise the "
        "same as per-expert ones.",
        f"- **Bias update** (spec 5.5, written in the script): after `opt.step()` of step s, for every MoE layer and "
        f"expert i: `load_i` = number of (token, slot) selections of expert i in step s's forward over the whole batch "
        f"(sum over the B*T tokens and K slots, so sum_i load_i = B*T*K = {B * T * K}); `mean = B*T*K/E = "
        f"{B * T * K / E:.4f}`; `b_i <- fl32(b_i + fl32({GAMMA:g}) * sign(mean - load_i))` (sign(0) = 0; cannot "
        "occur here since the mean is not an integer). The bias is a float32 buffer; the loss is plain CE. The "
        "script replays this rule from the initial biases and `adamw_bias_loads.i32` and gets `final_biases.f32` "
        "bit-exactly.",
        "",
        "Checks (in the script): files read back bit-exactly; every gradient file: one entry of every tensor (random "
        "among entries with |g| >= 0.1 max|g| of that tensor) vs a float64 central difference (h = "
        f"{FD_H:g}) of the same loss:",
        "",
        "| gradient file | loss | tensors | entries checked | max rel err (float64 grad vs FD) | "
        "max rel err (stored F32 vs FD) |",
        "| --- | --- | --- | --- | --- | --- |",
    ] + [
        f"| `{g}` | {res[v]['total']:.12g} | {res[v]['ntensors']} | {res[v]['n']} | {res[v]['e64']:.1e} | "
        f"{res[v]['e32']:.1e} |"
        for v, g in (("ce", "grads.safetensors"), ("bal", "grads_bal.safetensors"), ("mtp", "grads_mtp.safetensors"))
    ] + [
        "",
        f"AdamW: the same runs repeated in float64 give losses within {dl(rp):.1e} (plain) and {dl(rb):.1e} "
        "(bias update) of the float32 ones, with identical routing at every step; min router margin over the float32 "
        f"steps {min(rp[0]['margin']):.3g} (plain), {min(rb[0]['margin']):.3g} (bias). A float32 trainer should match "
        "the losses to ~1e-5 relative.",
        "",
        "- plain losses: " + ", ".join(f"{x:.6f}" for x in rp[0]["loss"]),
        "- bias-update losses: " + ", ".join(f"{x:.6f}" for x in rb[0]["loss"]),
        "",
        "Note: `make_fixtures.py` rewrites `tests/fixtures/README.md` from scratch; this section lives between",
        "marker comments and is re-appended by `make_train_fixtures.py` (and kept in `train_ref/README.md`).",
    ]


if __name__ == "__main__":
    main()
