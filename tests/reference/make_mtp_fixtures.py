#!/usr/bin/env python3
"""Fixtures with an MTP module for the layouts the other MTP fixtures lack.

  tests/fixtures/v32_mtp     deepseek_v32 (DSA): the module's block has its own indexer
  tests/fixtures/v3_fp8_mtp  deepseek_v3 with F8_E4M3 block-scaled weights: the module is FP8

Each is the existing fixture (v32, v3_fp8) plus a module model.layers.{L}.*, L =
num_hidden_layers, laid out as DeepSeek-V3 ships it: the decoder block (here the last
main layer's tensors, float ones perturbed so the module differs from that layer),
enorm, hnorm, eh_proj (d, 2d; FP8 with weight_scale_inv in the FP8 fixture),
shared_head.norm, and the stored copies embed_tokens / shared_head.head. The main
model's file is not copied: the new directory is a two-shard checkpoint whose first
shard is a symlink to the original fixture's model.safetensors, and whose index maps
every tensor.

What the tests check with them is self-consistency (speculative greedy decoding equals
plain greedy decoding; the module binds with its dtypes), so no reference output is
stored. Run from the repository root: python3 tests/reference/make_mtp_fixtures.py
(needs torch and safetensors; CI never runs it).
"""
import json
import os

import torch
from safetensors import safe_open
from safetensors.torch import save_file

FP8_MAX = 448.0


def fp8_block(w):
    """(F8_E4M3 weight, F32 weight_scale_inv) with 128x128 blocks, as DeepSeek stores."""
    rows, cols = w.shape
    sr, sc = (rows + 127) // 128, (cols + 127) // 128
    scale = torch.empty(sr, sc, dtype=torch.float32)
    q = torch.empty(rows, cols, dtype=torch.float8_e4m3fn)
    for i in range(sr):
        for j in range(sc):
            blk = w[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128]
            s = max(blk.abs().max().item(), 1e-8) / FP8_MAX
            scale[i, j] = s
            q[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128] = (blk / s).to(torch.float8_e4m3fn)
    return q, scale


def make(src, dst, seed):
    g = torch.Generator().manual_seed(seed)
    with open(os.path.join(src, "config.json")) as f:
        cfg = json.load(f)
    L, d = cfg["num_hidden_layers"], cfg["hidden_size"]
    src_file = os.path.join(src, "model.safetensors")
    fp8 = False
    mtp = {}
    main_names = []
    with safe_open(src_file, "pt") as f:
        for name in f.keys():
            main_names.append(name)
            t = f.get_tensor(name)
            fp8 |= t.dtype == torch.float8_e4m3fn
            pre = f"model.layers.{L - 1}."
            if name.startswith(pre):
                new = f"model.layers.{L}." + name[len(pre):]
                if t.dtype in (torch.float32, torch.bfloat16, torch.float16) and \
                        not name.endswith("_scale_inv"):
                    noise = torch.randn(t.shape, generator=g, dtype=torch.float32)
                    t = (t.float() * (1.0 + 0.25 * noise)).to(t.dtype)
                mtp[new] = t.clone()
        emb = f.get_tensor("model.embed_tokens.weight")
        head = f.get_tensor("lm_head.weight") if "lm_head.weight" in f.keys() else emb
    fdt = emb.dtype if emb.dtype != torch.float8_e4m3fn else torch.bfloat16
    p = f"model.layers.{L}."
    for n in ("enorm", "hnorm"):
        mtp[p + n + ".weight"] = (1.0 + 0.1 * torch.randn(d, generator=g)).to(torch.float32)
    mtp[p + "shared_head.norm.weight"] = (1.0 + 0.1 * torch.randn(d, generator=g)).to(torch.float32)
    eh = 0.08 * torch.randn(d, 2 * d, generator=g)
    if fp8:
        q, s = fp8_block(eh)
        mtp[p + "eh_proj.weight"] = q
        mtp[p + "eh_proj.weight_scale_inv"] = s
    else:
        mtp[p + "eh_proj.weight"] = eh.to(fdt)
    mtp[p + "embed_tokens.weight"] = emb.clone()
    mtp[p + "shared_head.head.weight"] = head.clone()

    os.makedirs(dst, exist_ok=True)
    shard1, shard2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    link = os.path.join(dst, shard1)
    if os.path.lexists(link):
        os.remove(link)
    os.symlink(os.path.join("..", os.path.basename(src), "model.safetensors"), link)
    save_file(mtp, os.path.join(dst, shard2))
    wmap = {n: shard1 for n in main_names}
    wmap.update({n: shard2 for n in mtp})
    size = os.path.getsize(src_file) + os.path.getsize(os.path.join(dst, shard2))
    with open(os.path.join(dst, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": size}, "weight_map": dict(sorted(wmap.items()))},
                  f, indent=2)
    cfg["num_nextn_predict_layers"] = 1
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    print(f"{dst}: {len(mtp)} MTP tensors ({'FP8' if fp8 else str(fdt)}), "
          f"{os.path.getsize(os.path.join(dst, shard2))} bytes")


if __name__ == "__main__":
    make("tests/fixtures/v32", "tests/fixtures/v32_mtp", 101)
    make("tests/fixtures/v3_fp8", "tests/fixtures/v3_fp8_mtp", 102)
