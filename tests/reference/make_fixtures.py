#!/usr/bin/env python3
"""Reference-fixture generator for dsc (run by hand, never in CI).

Creates tiny random DeepSeek-V2/V3 models with Hugging Face transformers' own
model classes and writes, per fixture directory tests/fixtures/<name>/:

  config.json                      Hugging Face style config (Hub or transformers-5 form)
  model.safetensors  (or shards + model.safetensors.index.json)
                                   weights under the real checkpoint tensor names
                                   (one tensor per routed expert, FP8 + _scale_inv, ...)
  ref_ids.i32                      input token ids, int32 little-endian
  ref_logits.f64                   expected logits [n_ids][vocab_size], float64 LE

The expected logits come from one forward pass (positions 0..n-1, no cache) of the
transformers model whose weights were read back *from the written files* (bf16
upcast exactly, fp8 dequantised exactly in float64), run entirely in float64
(see Float64Mode below: transformers keeps some float32 "islands" even after
model.double(); the mode upgrades them so no float32 arithmetic remains).

Checks done for every fixture (the script aborts if one fails):
  * the files round-trip: tensors read back == tensors written (exactly);
  * transformers' own from_pretrained() on the directory (not for fp8) loads
    every parameter with no missing / unexpected keys (except the MTP layer) and
    gives identical weights -> the tensor names and the fused-expert split are right;
  * transformers' save_pretrained() of the same model writes the same tensor names
    and values as we did (MTP/scale tensors excluded);
  * an independent float64 numpy forward written from the spec (official DeepSeek
    semantics: complex/interleaved RoPE, -inf group masking, demo router) matches
    the reference logits;
  * router decisions have a safe margin (so float32 engines pick the same experts).

Usage:  python3 tests/reference/make_fixtures.py [--out tests/fixtures] [--only NAME ...]
Requires: torch, transformers (5.24 used), safetensors, numpy.
"""

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import warnings

import numpy as np
import torch
from torch.overrides import TorchFunctionMode
from safetensors.torch import save_file, load_file

import transformers
from transformers import AutoConfig, DeepseekV2ForCausalLM, DeepseekV3ForCausalLM

torch.set_num_threads(1)  # deterministic reductions
warnings.filterwarnings("ignore")
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMMAND = "python3 tests/reference/make_fixtures.py"

# Router decisions closer than this (on the selection-score scale) are rejected:
# the ids are re-drawn with the next seed.
MIN_ROUTER_MARGIN = 1e-3

# ----------------------------------------------------------------------------
# Fixture definitions
# ----------------------------------------------------------------------------

COMMON = {
    "attention_bias": False,
    "attention_dropout": 0.0,
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "rms_norm_eps": 1e-06,
    "use_cache": True,
    "pretraining_tp": 1,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "aux_loss_alpha": 0.001,
    "seq_aux": True,
    "moe_layer_freq": 1,
}


def v2_lite_config():
    c = {
        "architectures": ["DeepseekV2ForCausalLM"],
        "model_type": "deepseek_v2",
        **COMMON,
        "vocab_size": 112,
        "hidden_size": 96,
        "intermediate_size": 128,
        "moe_intermediate_size": 24,
        "num_hidden_layers": 3,
        "first_k_dense_replace": 1,
        "num_attention_heads": 3,
        "num_key_value_heads": 3,
        "q_lora_rank": None,
        "kv_lora_rank": 32,
        "qk_nope_head_dim": 16,
        "qk_rope_head_dim": 8,
        "v_head_dim": 12,
        "n_routed_experts": 8,
        "n_shared_experts": 2,
        "num_experts_per_tok": 3,
        "n_group": 1,
        "topk_group": 1,
        "topk_method": "greedy",
        "scoring_func": "softmax",
        "norm_topk_prob": False,
        "routed_scaling_factor": 1.0,
        "max_position_embeddings": 64,
        # Hub form (as in deepseek-ai/DeepSeek-V2-Lite/config.json). rope_theta is
        # small so that the 4 rope pairs of an 8-dim rope really blend (ramp 0, .5, 1, 1).
        "rope_theta": 10.0,
        "rope_scaling": {
            "type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": 16,
            "beta_fast": 32,
            "beta_slow": 1,
            "mscale": 0.707,
            "mscale_all_dim": 0.707,
        },
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": "4.33.1",
    }
    return c


def v2_config():
    c = {
        "architectures": ["DeepseekV2ForCausalLM"],
        "model_type": "deepseek_v2",
        **COMMON,
        "vocab_size": 144,
        "hidden_size": 80,
        "intermediate_size": 144,
        "moe_intermediate_size": 24,
        "num_hidden_layers": 3,
        "first_k_dense_replace": 1,
        "num_attention_heads": 5,
        "num_key_value_heads": 5,
        "q_lora_rank": 40,
        "kv_lora_rank": 48,
        "qk_nope_head_dim": 16,
        "qk_rope_head_dim": 32,
        "v_head_dim": 20,
        "n_routed_experts": 8,
        "n_shared_experts": 2,
        "num_experts_per_tok": 3,
        "n_group": 4,
        "topk_group": 2,
        "topk_method": "group_limited_greedy",
        "scoring_func": "softmax",
        "norm_topk_prob": False,
        "routed_scaling_factor": 16.0,
        "max_position_embeddings": 160,
        # transformers-5 form: no rope_scaling / rope_theta keys at top level.
        "rope_parameters": {
            "rope_type": "yarn",
            "rope_theta": 10000.0,
            "factor": 8.0,
            "original_max_position_embeddings": 20,
            "beta_fast": 32,
            "beta_slow": 1,
            "mscale": 0.707,
            "mscale_all_dim": 0.707,
        },
        "tie_word_embeddings": False,
        "dtype": "float32",
        "transformers_version": transformers.__version__,
    }
    return c


def v3_config():
    c = {
        "architectures": ["DeepseekV3ForCausalLM"],
        "model_type": "deepseek_v3",
        **COMMON,
        "ep_size": 1,
        "vocab_size": 128,
        "hidden_size": 72,
        "intermediate_size": 112,
        "moe_intermediate_size": 16,
        "num_hidden_layers": 3,
        "first_k_dense_replace": 1,
        "num_attention_heads": 3,
        "num_key_value_heads": 3,
        "q_lora_rank": 40,
        "kv_lora_rank": 32,
        "qk_nope_head_dim": 16,
        "qk_rope_head_dim": 64,
        "v_head_dim": 24,
        "n_routed_experts": 12,
        "n_shared_experts": 1,
        "num_experts_per_tok": 4,
        "n_group": 4,
        "topk_group": 2,
        "topk_method": "noaux_tc",
        "scoring_func": "sigmoid",
        "norm_topk_prob": True,
        "routed_scaling_factor": 2.5,
        "num_nextn_predict_layers": 1,
        "max_position_embeddings": 640,
        "rope_theta": 10000,
        "rope_scaling": {
            "type": "yarn",
            "factor": 40,
            "original_max_position_embeddings": 16,
            "beta_fast": 32,
            "beta_slow": 1,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
        },
        "rope_interleave": True,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": "4.33.1",
    }
    return c


def v3_nointerleave_config():
    c = {
        "architectures": ["DeepseekV3ForCausalLM"],
        "model_type": "deepseek_v3",
        **COMMON,
        "vocab_size": 136,
        "hidden_size": 56,
        "intermediate_size": 96,
        "moe_intermediate_size": 16,
        "num_hidden_layers": 2,
        "first_k_dense_replace": 1,
        "num_attention_heads": 7,
        "num_key_value_heads": 7,
        "q_lora_rank": 24,
        "kv_lora_rank": 40,
        "qk_nope_head_dim": 8,
        "qk_rope_head_dim": 32,
        "v_head_dim": 12,
        "n_routed_experts": 8,
        "n_shared_experts": 1,
        "num_experts_per_tok": 2,
        "n_group": 2,
        "topk_group": 1,
        "topk_method": "noaux_tc",
        "scoring_func": "sigmoid",
        "norm_topk_prob": True,
        "routed_scaling_factor": 2.5,
        "num_nextn_predict_layers": 0,
        "max_position_embeddings": 64,
        "rope_parameters": {
            "rope_type": "yarn",
            "rope_theta": 10000.0,
            "factor": 4.0,
            "original_max_position_embeddings": 16,
            "beta_fast": 32,
            "beta_slow": 1,
            "mscale": 0.707,
            "mscale_all_dim": 0.707,
        },
        "rope_interleave": False,
        "tie_word_embeddings": True,
        "dtype": "float32",
        "transformers_version": transformers.__version__,
    }
    return c


def v3_bf16_config():
    c = {
        "architectures": ["DeepseekV3ForCausalLM"],
        "model_type": "deepseek_v3",
        **COMMON,
        "ep_size": 1,
        "vocab_size": 160,
        "hidden_size": 64,
        "intermediate_size": 96,
        "moe_intermediate_size": 24,
        "num_hidden_layers": 3,
        "first_k_dense_replace": 2,
        "num_attention_heads": 5,
        "num_key_value_heads": 5,
        "q_lora_rank": 48,
        "kv_lora_rank": 32,
        "qk_nope_head_dim": 12,
        "qk_rope_head_dim": 32,
        "v_head_dim": 20,
        "n_routed_experts": 8,
        "n_shared_experts": 1,
        "num_experts_per_tok": 2,
        "n_group": 4,
        "topk_group": 2,
        "topk_method": "noaux_tc",
        "scoring_func": "sigmoid",
        "norm_topk_prob": True,
        "routed_scaling_factor": 2.5,
        "num_nextn_predict_layers": 0,
        "max_position_embeddings": 640,
        # Hub form, and NO rope_interleave key (real V3 configs lack it; HF default True).
        "rope_theta": 10000,
        "rope_scaling": {
            "type": "yarn",
            "factor": 40,
            "original_max_position_embeddings": 16,
            "beta_fast": 32,
            "beta_slow": 1,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
        },
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.33.1",
    }
    return c


def v3_fp8_config():
    c = {
        "architectures": ["DeepseekV3ForCausalLM"],
        "model_type": "deepseek_v3",
        **COMMON,
        "ep_size": 1,
        "vocab_size": 168,
        "hidden_size": 160,
        "intermediate_size": 200,
        "moe_intermediate_size": 144,
        "num_hidden_layers": 2,
        "first_k_dense_replace": 1,
        "num_attention_heads": 3,
        "num_key_value_heads": 3,
        "q_lora_rank": 136,
        "kv_lora_rank": 144,
        "qk_nope_head_dim": 32,
        "qk_rope_head_dim": 64,
        "v_head_dim": 40,
        "n_routed_experts": 8,
        "n_shared_experts": 1,
        "num_experts_per_tok": 3,
        "n_group": 4,
        "topk_group": 2,
        "topk_method": "noaux_tc",
        "scoring_func": "sigmoid",
        "norm_topk_prob": True,
        "routed_scaling_factor": 2.5,
        "num_nextn_predict_layers": 0,
        "max_position_embeddings": 640,
        "rope_theta": 10000,
        "rope_scaling": {
            "type": "yarn",
            "factor": 40,
            "original_max_position_embeddings": 16,
            "beta_fast": 32,
            "beta_slow": 1,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
        },
        "quantization_config": {
            "activation_scheme": "dynamic",
            "fmt": "e4m3",
            "quant_method": "fp8",
            "weight_block_size": [128, 128],
        },
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.33.1",
    }
    return c


FIXTURES = [
    dict(name="v2_lite", config=v2_lite_config, storage="f32", n_ids=24, seed=1001,
         covers="V2-Lite shape: q_proj (no q_lora), greedy softmax top-k, no norm, scale 1.0, "
                "2 shared experts, rope 8 (complex/interleaved), Hub `rope_scaling` form"),
    dict(name="v2", config=v2_config, storage="f32", n_ids=28, seed=1002,
         covers="V2 shape: q_lora, group_limited_greedy (group max), routed_scaling 16, rope 32, "
                "transformers-5 `rope_parameters` form"),
    dict(name="v3", config=v3_config, storage="f32", n_ids=26, seed=1003, shards=2, mtp=True,
         covers="V3: noaux_tc sigmoid + nonzero e_score_correction_bias, group limiting drops groups, "
                "norm_topk_prob, x2.5, rope 64 interleaved, mscale 1.0; 2 shards + index; MTP layer 3 in files"),
    dict(name="v3_nointerleave", config=v3_nointerleave_config, storage="f32", n_ids=22, seed=1004,
         covers="V3 with rope_interleave=false (rotate-half pairs), tie_word_embeddings=true "
                "(no lm_head.weight in file), 7 heads, transformers-5 `rope_parameters` form"),
    dict(name="v3_bf16", config=v3_bf16_config, storage="bf16", n_ids=20, seed=1005,
         covers="V3, every tensor BF16 except e_score_correction_bias F32; first_k_dense_replace=2; "
                "no rope_interleave key (default true)"),
    dict(name="v3_fp8", config=v3_fp8_config, storage="fp8", n_ids=24, seed=1006,
         covers="V3 FP8 e4m3 block-128 weights + F32 _scale_inv with ragged edges in both dims; "
                "embed/lm_head/norms/gate BF16, bias F32; quantization_config"),
]

# ----------------------------------------------------------------------------
# float64 everywhere
# ----------------------------------------------------------------------------

_UPCAST = {
    torch.float32: torch.float64,
    torch.float16: torch.float64,
    torch.bfloat16: torch.float64,
    torch.complex64: torch.complex128,
}


class Float64Mode(TorchFunctionMode):
    """Turns every explicit float32 (or lower) dtype request into float64.

    transformers 5.24 computes several parts in float32 even after model.double():
    RMSNorm (`hidden_states.to(torch.float32)`), the routers (`.type(torch.float32)`),
    the rotary tables (`position_ids.float() * inv_freq.float()`, and
    `torch.arange(..., dtype=torch.float)` in the YaRN init), V2's complex RoPE
    (`xq.float()` -> complex64) and eager attention's `softmax(dtype=torch.float32)`.
    Inside this mode those requests become float64/complex128, so the result is a
    true float64 evaluation of exactly the same code. `self.low` records any op that
    still produced a low-precision floating tensor.
    """

    def __init__(self):
        super().__init__()
        self.low = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.float:
            func = torch.Tensor.double
        args = tuple(_UPCAST.get(a, a) if isinstance(a, torch.dtype) else a for a in args)
        if isinstance(kwargs.get("dtype"), torch.dtype):
            kwargs["dtype"] = _UPCAST.get(kwargs["dtype"], kwargs["dtype"])
        out = func(*args, **kwargs)
        for o in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(o, torch.Tensor) and o.dtype in _UPCAST:
                self.low.add(getattr(func, "__qualname__", str(func)))
        return out


# ----------------------------------------------------------------------------
# Names: HF in-memory (fused experts) <-> checkpoint (one tensor per expert)
# ----------------------------------------------------------------------------


def hf_to_checkpoint(sd, cfg):
    """Split transformers-5 fused experts into per-expert checkpoint tensors.

    transformers 5.24: experts.gate_up_proj is [E, 2*I, H]; for expert e,
    gate_up_proj[e] = cat([gate_proj_e.weight, up_proj_e.weight], dim=0)
    (rows 0..I-1 = gate, rows I..2I-1 = up; nn.Linear [out, in] orientation, no
    transpose), experts.down_proj is [E, H, I] = stack(down_proj_e.weight).
    """
    out = {}
    I = cfg["moe_intermediate_size"]
    for name, t in sd.items():
        if name.endswith("mlp.experts.gate_up_proj"):
            base = name[: -len("gate_up_proj")]
            assert t.shape[1] == 2 * I
            for e in range(t.shape[0]):
                out[f"{base}{e}.gate_proj.weight"] = t[e, :I, :].clone()
                out[f"{base}{e}.up_proj.weight"] = t[e, I:, :].clone()
        elif name.endswith("mlp.experts.down_proj"):
            base = name[: -len("down_proj")]
            for e in range(t.shape[0]):
                out[f"{base}{e}.down_proj.weight"] = t[e].clone()
        elif name == "lm_head.weight" and cfg.get("tie_word_embeddings"):
            continue  # HF omits the tied head from checkpoints
        else:
            out[name] = t.clone()
    return out


def checkpoint_to_hf(ck, cfg):
    """Inverse of hf_to_checkpoint; drops the MTP layer(s) (index >= num_hidden_layers)."""
    L = cfg["num_hidden_layers"]
    E = cfg["n_routed_experts"]
    out = {}
    experts = {}
    for name, t in ck.items():
        parts = name.split(".")
        if name.startswith("model.layers.") and int(parts[2]) >= L:
            continue  # MTP module: not part of the main model
        if ".mlp.experts." in name:
            layer = int(parts[2])
            e = int(parts[5])
            proj = parts[6]
            experts.setdefault(layer, {})[(e, proj)] = t
            continue
        out[name] = t
    for layer, d in experts.items():
        gu = torch.stack([torch.cat([d[(e, "gate_proj")], d[(e, "up_proj")]], 0) for e in range(E)])
        dn = torch.stack([d[(e, "down_proj")] for e in range(E)])
        out[f"model.layers.{layer}.mlp.experts.gate_up_proj"] = gu
        out[f"model.layers.{layer}.mlp.experts.down_proj"] = dn
    if cfg.get("tie_word_embeddings"):
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
    return out


# ----------------------------------------------------------------------------
# Random weights
# ----------------------------------------------------------------------------


def fill_value(name, shape, gen):
    """Deterministic random values for one tensor (float64), chosen so that every
    part of the network carries O(1) signal (HF's std 0.02 init would make the
    attention uniform and the router near-flat)."""
    if name.endswith("norm.weight"):  # all RMSNorm weights (incl. enorm/hnorm/shared_head.norm)
        return 0.6 + 0.8 * torch.rand(shape, generator=gen, dtype=torch.float64)
    if name.endswith("e_score_correction_bias"):
        # >= 0 so sigmoid(z) + b > 0: HF's 0-masking of dropped groups in other
        # versions and the official -inf masking then agree.
        return 0.2 * torch.rand(shape, generator=gen, dtype=torch.float64)
    if name.endswith("embed_tokens.weight"):
        return torch.randn(shape, generator=gen, dtype=torch.float64)
    if name.endswith("mlp.gate.weight"):
        return 1.5 * torch.randn(shape, generator=gen, dtype=torch.float64) / math.sqrt(shape[-1])
    # every other tensor is a Linear weight [out, in] (or fused [E, out, in])
    return torch.randn(shape, generator=gen, dtype=torch.float64) / math.sqrt(shape[-1])


def make_mtp_tensors(cfg, gen):
    """Random tensors of one MTP module at layer index num_hidden_layers (V3 layout)."""
    L = cfg["num_hidden_layers"]
    H = cfg["hidden_size"]
    V = cfg["vocab_size"]
    nh = cfg["num_attention_heads"]
    dn, dr, dv = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
    qr, kr = cfg["q_lora_rank"], cfg["kv_lora_rank"]
    I, E = cfg["moe_intermediate_size"], cfg["n_routed_experts"]
    Is = I * cfg["n_shared_experts"]
    p = f"model.layers.{L}."
    shapes = {
        p + "embed_tokens.weight": (V, H),
        p + "enorm.weight": (H,),
        p + "hnorm.weight": (H,),
        p + "eh_proj.weight": (H, 2 * H),
        p + "input_layernorm.weight": (H,),
        p + "post_attention_layernorm.weight": (H,),
        p + "self_attn.q_a_proj.weight": (qr, H),
        p + "self_attn.q_a_layernorm.weight": (qr,),
        p + "self_attn.q_b_proj.weight": (nh * (dn + dr), qr),
        p + "self_attn.kv_a_proj_with_mqa.weight": (kr + dr, H),
        p + "self_attn.kv_a_layernorm.weight": (kr,),
        p + "self_attn.kv_b_proj.weight": (nh * (dn + dv), kr),
        p + "self_attn.o_proj.weight": (H, nh * dv),
        p + "mlp.gate.weight": (E, H),
        p + "mlp.gate.e_score_correction_bias": (E,),
        p + "mlp.shared_experts.gate_proj.weight": (Is, H),
        p + "mlp.shared_experts.up_proj.weight": (Is, H),
        p + "mlp.shared_experts.down_proj.weight": (H, Is),
        p + "shared_head.norm.weight": (H,),
        p + "shared_head.head.weight": (V, H),
    }
    for e in range(E):
        shapes[p + f"mlp.experts.{e}.gate_proj.weight"] = (I, H)
        shapes[p + f"mlp.experts.{e}.up_proj.weight"] = (I, H)
        shapes[p + f"mlp.experts.{e}.down_proj.weight"] = (H, I)
    return {n: fill_value(n, s, gen).float() for n, s in sorted(shapes.items())}


# ----------------------------------------------------------------------------
# Storage encodings
# ----------------------------------------------------------------------------

FP8_MAX = 448.0
BLOCK = 128


def is_fp8_weight(name):
    """Tensors the real V3 checkpoint stores as F8_E4M3 (spec 7.3)."""
    if not name.endswith(".weight"):
        return False
    if ".self_attn." in name and name.rsplit(".", 2)[-2] in (
            "q_proj", "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"):
        return True
    if ".mlp." in name and name.rsplit(".", 2)[-2] in ("gate_proj", "up_proj", "down_proj"):
        return True
    return False


def fp8_quantize(w):
    """Block-128 e4m3 quantisation. Returns (fp8 tensor, float32 scale_inv [ceil(r/128), ceil(c/128)])."""
    w = w.to(torch.float64)
    R, C = w.shape
    nr, nc = (R + BLOCK - 1) // BLOCK, (C + BLOCK - 1) // BLOCK
    scale = torch.zeros(nr, nc, dtype=torch.float32)
    q = torch.zeros(R, C, dtype=torch.float8_e4m3fn)
    for i in range(nr):
        for j in range(nc):
            blk = w[i * BLOCK:(i + 1) * BLOCK, j * BLOCK:(j + 1) * BLOCK]
            s = torch.tensor(blk.abs().max().item() / FP8_MAX, dtype=torch.float32)
            assert s.item() > 0
            scale[i, j] = s
            qb = (blk / s.double()).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
            q[i * BLOCK:(i + 1) * BLOCK, j * BLOCK:(j + 1) * BLOCK] = qb
    return q, scale


def fp8_dequantize(q, scale_inv):
    """fp8 value * scale_inv[r // 128][c // 128], exactly, in float64."""
    R, C = q.shape
    s = scale_inv.to(torch.float64)
    s = s.repeat_interleave(BLOCK, 0)[:R].repeat_interleave(BLOCK, 1)[:, :C]
    return q.to(torch.float64) * s


def encode(ck, storage):
    """checkpoint dict (float32) -> tensors as stored in the files."""
    out = {}
    for name, t in ck.items():
        if storage == "f32":
            out[name] = t.to(torch.float32).contiguous()
        elif storage == "bf16":
            out[name] = t.to(torch.float32 if name.endswith("e_score_correction_bias") else torch.bfloat16).contiguous()
        elif storage == "fp8":
            if name.endswith("e_score_correction_bias"):
                out[name] = t.to(torch.float32).contiguous()
            elif is_fp8_weight(name):
                q, s = fp8_quantize(t)
                out[name] = q.contiguous()
                out[name + "_scale_inv"] = s.contiguous()
            else:
                out[name] = t.to(torch.bfloat16).contiguous()
        else:
            raise ValueError(storage)
    return out


def decode(stored):
    """tensors from the files -> float64 checkpoint dict (bf16 upcast, fp8 dequantised)."""
    out = {}
    for name, t in stored.items():
        if name.endswith("_scale_inv"):
            continue
        if t.dtype == torch.float8_e4m3fn:
            out[name] = fp8_dequantize(t, stored[name + "_scale_inv"])
        else:
            out[name] = t.to(torch.float64)
    return out


# ----------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------


def nbytes(t):
    return t.numel() * t.element_size()


def write_weights(d, stored, shards):
    names = sorted(stored, key=_natural_key)
    if shards == 1:
        path = os.path.join(d, "model.safetensors")
        save_file({n: stored[n] for n in names}, path, metadata={"format": "pt"})
        return [path]
    total = sum(nbytes(stored[n]) for n in names)
    # Greedy split by size in natural name order -> a layer may straddle two shards,
    # as in the real V3 checkpoint.
    groups, cur, acc = [], [], 0
    for n in names:
        if len(groups) < shards - 1 and acc >= total * (len(groups) + 1) / shards:
            groups.append(cur)
            cur = []
        cur.append(n)
        acc += nbytes(stored[n])
    groups.append(cur)
    assert len(groups) == shards
    paths, weight_map = [], {}
    for i, g in enumerate(groups):
        fn = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: stored[n] for n in g}, os.path.join(d, fn), metadata={"format": "pt"})
        paths.append(os.path.join(d, fn))
        for n in g:
            weight_map[n] = fn
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    ipath = os.path.join(d, "model.safetensors.index.json")
    with open(ipath, "w") as f:
        json.dump(index, f, indent=2)
        f.write("\n")
    return [ipath] + paths


def read_weights(d):
    ipath = os.path.join(d, "model.safetensors.index.json")
    if os.path.exists(ipath):
        with open(ipath) as f:
            index = json.load(f)
        out = {}
        for fn in sorted(set(index["weight_map"].values())):
            part = load_file(os.path.join(d, fn))
            for n, t in part.items():
                assert index["weight_map"][n] == fn, n
                out[n] = t
        assert set(out) == set(index["weight_map"])
        assert index["metadata"]["total_size"] == sum(nbytes(t) for t in out.values())
        return out
    return load_file(os.path.join(d, "model.safetensors"))


def _natural_key(name):
    return [int(p) if p.isdigit() else p for p in name.split(".")]


# ----------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------

CLASSES = {"DeepseekV2ForCausalLM": DeepseekV2ForCausalLM, "DeepseekV3ForCausalLM": DeepseekV3ForCausalLM}


def load_hf_config(d):
    cfg = AutoConfig.from_pretrained(d)
    cfg._attn_implementation = "eager"
    cfg._experts_implementation = "eager"
    return cfg


def build_model(d, sd, f64_mode=None):
    """Fresh transformers model from the config in d with state dict sd (strict)."""
    cfg = load_hf_config(d)
    cls = CLASSES[cfg.architectures[0]]
    if f64_mode is not None:
        old = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            with f64_mode:
                m = cls(cfg)
        finally:
            torch.set_default_dtype(old)
        m = m.double()
    else:
        m = cls(cfg)
    m.eval()
    assert m.config._attn_implementation == "eager"
    assert m.config._experts_implementation == "eager"
    dt = torch.float64 if f64_mode is not None else torch.float32
    missing, unexpected = m.load_state_dict({k: v.to(dt) for k, v in sd.items()}, strict=False)
    assert not unexpected, unexpected
    # the only allowed "missing" key is a tied lm_head (it shares storage with embed_tokens)
    assert all(k == "lm_head.weight" and cfg.tie_word_embeddings for k in missing), missing
    if cfg.tie_word_embeddings:
        assert m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()
    return m


def forward(m, ids, f64_mode=None):
    with torch.no_grad():
        x = torch.tensor([ids], dtype=torch.long)
        if f64_mode is None:
            return m(input_ids=x, use_cache=False).logits[0]
        f64_mode.low.clear()
        with f64_mode:
            out = m(input_ids=x, use_cache=False).logits[0]
        assert not f64_mode.low, f"float32 ops left in the float64 forward: {f64_mode.low}"
        assert out.dtype == torch.float64
        return out


# ----------------------------------------------------------------------------
# Independent float64 numpy forward (official DeepSeek semantics, from the spec)
# ----------------------------------------------------------------------------


def rope_params(c):
    """(theta, yarn dict) from either config form."""
    if "rope_parameters" in c:
        rp = dict(c["rope_parameters"])
        theta = rp["rope_theta"]
    else:
        rp = dict(c["rope_scaling"])
        theta = c["rope_theta"]
    return float(theta), rp


def yarn_inv_freq(c):
    """Spec 3.2: YaRN-blended inverse frequencies for the rope dims."""
    theta, rp = rope_params(c)
    D = c["qk_rope_head_dim"]
    L0 = rp["original_max_position_embeddings"]
    factor = float(rp["factor"])
    bf, bs = rp.get("beta_fast", 32), rp.get("beta_slow", 1)
    i = np.arange(D // 2, dtype=np.float64)
    f = theta ** (-2.0 * i / D)

    def cd(r):
        return D * math.log(L0 / (2 * math.pi * r)) / (2 * math.log(theta))

    low = max(math.floor(cd(bf)), 0)
    high = min(math.ceil(cd(bs)), D - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((i - low) / (high - low), 0.0, 1.0)
    return f * (1 - ramp) + (f / factor) * ramp, ramp


def softmax_scale(c):
    _, rp = rope_params(c)
    s = (c["qk_nope_head_dim"] + c["qk_rope_head_dim"]) ** -0.5
    factor = float(rp["factor"])
    if factor > 1:
        m = 0.1 * rp["mscale_all_dim"] * math.log(factor) + 1.0
        s *= m * m
    return s


def rmsnorm(x, w, eps):
    return w * (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps))


def apply_rope(x, pos, inv_freq, interleaved):
    """x [..., T, D] (T axis = -2). interleaved: complex pairs (2i, 2i+1) as the official
    demo (and HF V2 / HF V3 rope_interleave=true up to an output permutation);
    otherwise half-split pairs (i, i + D/2) as HF V3 rope_interleave=false."""
    ang = pos[:, None] * inv_freq[None, :]  # [T, D/2]
    cos, sin = np.cos(ang), np.sin(ang)
    y = np.empty_like(x)
    if interleaved:
        a, b = x[..., 0::2], x[..., 1::2]
        y[..., 0::2] = a * cos - b * sin
        y[..., 1::2] = a * sin + b * cos
    else:
        h = x.shape[-1] // 2
        a, b = x[..., :h], x[..., h:]
        y[..., :h] = a * cos - b * sin
        y[..., h:] = a * sin + b * cos
    return y


def silu(x):
    return x / (1.0 + np.exp(-x))


def swiglu(x, g, u, d):
    return (silu(x @ g.T) * (x @ u.T)) @ d.T


def route(c, z, bias, stats):
    """Official demo gate (spec 5.2/5.3). z: router logits [T, E]. Returns (idx, weights)."""
    T, E = z.shape
    if c["scoring_func"] == "softmax":
        zz = z - z.max(-1, keepdims=True)
        s = np.exp(zz) / np.exp(zz).sum(-1, keepdims=True)
    else:
        s = 1.0 / (1.0 + np.exp(-z))
    sel = s + bias if bias is not None else s.copy()
    k = c["num_experts_per_tok"]
    G = c["n_group"] or 1
    method = c["topk_method"]
    idx = np.zeros((T, k), dtype=np.int64)
    for t in range(T):
        cand = sel[t].copy()
        free = np.argsort(-sel[t], kind="stable")[:k]
        if method in ("group_limited_greedy", "noaux_tc") and G > 1:
            g = cand.reshape(G, E // G)
            if method == "group_limited_greedy":
                gs = g.max(-1)
            else:
                gs = np.sort(g, -1)[:, -2:].sum(-1)
            order = np.argsort(-gs, kind="stable")
            keep = order[: c["topk_group"]]
            stats["group_margin"] = min(stats["group_margin"], gs[order[c["topk_group"] - 1]] - gs[order[c["topk_group"]]])
            mask = np.full(G, True)
            mask[keep] = False
            cand = np.where(np.repeat(mask, E // G), -np.inf, cand)
        order = np.argsort(-cand, kind="stable")
        idx[t] = order[:k]
        stats["expert_margin"] = min(stats["expert_margin"], cand[order[k - 1]] - cand[order[k]])
        if set(order[:k].tolist()) != set(free.tolist()):
            stats["group_changed"] += 1
        stats["tokens"] += 1
    w = np.take_along_axis(s, idx, 1)
    if c["norm_topk_prob"]:
        w = w / w.sum(-1, keepdims=True)
    w = w * c["routed_scaling_factor"]
    return idx, w


def spec_forward(c, W, ids):
    """W: checkpoint-named float64 numpy arrays. Returns logits [T, V] and router stats."""
    eps = c["rms_norm_eps"]
    H = c["hidden_size"]
    nh = c["num_attention_heads"]
    dn, dr, dv = c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"]
    kr = c["kv_lora_rank"]
    T = len(ids)
    pos = np.arange(T, dtype=np.float64)
    inv_freq, _ = yarn_inv_freq(c)
    interleaved = c["model_type"] == "deepseek_v2" or c.get("rope_interleave", True)
    scale = softmax_scale(c)
    stats = dict(expert_margin=np.inf, group_margin=np.inf, group_changed=0, tokens=0)
    h = W["model.embed_tokens.weight"][np.array(ids)]
    causal = np.triu(np.full((T, T), -np.inf), 1)
    for l in range(c["num_hidden_layers"]):
        p = f"model.layers.{l}."
        x = rmsnorm(h, W[p + "input_layernorm.weight"], eps)
        if c["q_lora_rank"] is None:
            q = x @ W[p + "self_attn.q_proj.weight"].T
        else:
            cq = rmsnorm(x @ W[p + "self_attn.q_a_proj.weight"].T, W[p + "self_attn.q_a_layernorm.weight"], eps)
            q = cq @ W[p + "self_attn.q_b_proj.weight"].T
        q = q.reshape(T, nh, dn + dr).transpose(1, 0, 2)  # [nh, T, dqk]
        q_nope, q_pe = q[..., :dn], apply_rope(q[..., dn:], pos, inv_freq, interleaved)
        kv = x @ W[p + "self_attn.kv_a_proj_with_mqa.weight"].T
        lat = rmsnorm(kv[:, :kr], W[p + "self_attn.kv_a_layernorm.weight"], eps)
        k_pe = apply_rope(kv[:, kr:], pos, inv_freq, interleaved)  # [T, dr], shared by all heads
        kvb = (lat @ W[p + "self_attn.kv_b_proj.weight"].T).reshape(T, nh, dn + dv).transpose(1, 0, 2)
        k_nope, v = kvb[..., :dn], kvb[..., dn:]
        sc = (q_nope @ k_nope.transpose(0, 2, 1) + q_pe @ k_pe.T[None]) * scale + causal
        sc = np.exp(sc - sc.max(-1, keepdims=True))
        pr = sc / sc.sum(-1, keepdims=True)
        o = (pr @ v).transpose(1, 0, 2).reshape(T, nh * dv)
        h = h + o @ W[p + "self_attn.o_proj.weight"].T
        x = rmsnorm(h, W[p + "post_attention_layernorm.weight"], eps)
        if l < c["first_k_dense_replace"]:
            y = swiglu(x, W[p + "mlp.gate_proj.weight"], W[p + "mlp.up_proj.weight"], W[p + "mlp.down_proj.weight"])
        else:
            z = x @ W[p + "mlp.gate.weight"].T
            bias = W.get(p + "mlp.gate.e_score_correction_bias")
            idx, wt = route(c, z, bias, stats)
            y = swiglu(x, W[p + "mlp.shared_experts.gate_proj.weight"], W[p + "mlp.shared_experts.up_proj.weight"],
                       W[p + "mlp.shared_experts.down_proj.weight"])
            for t in range(T):
                for j in range(idx.shape[1]):
                    e = idx[t, j]
                    pe = f"{p}mlp.experts.{e}."
                    y[t] += wt[t, j] * swiglu(x[t:t + 1], W[pe + "gate_proj.weight"], W[pe + "up_proj.weight"],
                                              W[pe + "down_proj.weight"])[0]
        h = h + y
    h = rmsnorm(h, W["model.norm.weight"], eps)
    head = W["model.embed_tokens.weight"] if c.get("tie_word_embeddings") else W["lm_head.weight"]
    return h @ head.T, stats


# ----------------------------------------------------------------------------
# One fixture
# ----------------------------------------------------------------------------


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def make_fixture(fx, out_root):
    name = fx["name"]
    d = os.path.join(out_root, name)
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    c = fx["config"]()
    print(f"\n=== {name} ===")
    cpath = os.path.join(d, "config.json")
    with open(cpath, "w") as f:
        json.dump(c, f, indent=2)
        f.write("\n")

    # 1. transformers model from the written config, with our random weights
    cfg = load_hf_config(d)
    cls = CLASSES[cfg.architectures[0]]
    assert cfg.model_type == c["model_type"]
    torch.manual_seed(0)
    model = cls(cfg).eval()
    gen = torch.Generator().manual_seed(fx["seed"])
    sd = {}
    for n, t in sorted(model.state_dict().items()):
        if n == "lm_head.weight" and c.get("tie_word_embeddings"):
            continue
        sd[n] = fill_value(n, tuple(t.shape), gen).float()
    if c.get("tie_word_embeddings"):
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]

    # 2. checkpoint names, MTP extras, storage dtype, files
    ck = hf_to_checkpoint(sd, c)
    if fx.get("mtp"):
        assert c.get("num_nextn_predict_layers", 0) == 1
        ck.update(make_mtp_tensors(c, gen))
    stored = encode(ck, fx["storage"])
    written = write_weights(d, stored, fx.get("shards", 1))

    # 3. read back and check the round trip (exact)
    back = read_weights(d)
    assert set(back) == set(stored)
    for n in stored:
        assert back[n].dtype == stored[n].dtype and back[n].shape == stored[n].shape, n
        assert torch.equal(back[n].view(torch.uint8), stored[n].view(torch.uint8)), n
    ck64 = decode(back)
    hf64 = checkpoint_to_hf(ck64, c)
    assert set(hf64) == set(sd), set(hf64) ^ set(sd)
    worst_q = 0.0
    for n in sd:
        if fx["storage"] == "f32":
            assert torch.equal(hf64[n], sd[n].double()), n
        elif fx["storage"] == "bf16" and not n.endswith("e_score_correction_bias"):
            assert torch.equal(hf64[n], sd[n].bfloat16().double()), n
        else:
            rel = ((hf64[n] - sd[n].double()).abs().max() / sd[n].double().abs().max()).item()
            worst_q = max(worst_q, rel)
    if fx["storage"] == "fp8":
        print(f"  fp8 quantisation: worst max|dW|/max|W| over tensors = {worst_q:.3g}")
        assert worst_q < 0.07

    # 4. reference: transformers, float64 throughout, weights from the files
    mode = Float64Mode()
    ref_model = build_model(d, hf64, f64_mode=mode)
    inv = ref_model.model.rotary_emb.inv_freq
    assert inv.dtype == torch.float64
    np_inv, ramp = yarn_inv_freq(c)
    assert np.allclose(inv.numpy(), np_inv, rtol=1e-14, atol=0), (inv, np_inv)
    assert ref_model.model.rotary_emb.attention_scaling == 1.0
    assert abs(ref_model.model.layers[0].self_attn.scaling - softmax_scale(c)) < 1e-15

    # 5. ids: re-draw until every router decision has a safe margin
    W = {n: t.numpy() for n, t in ck64.items()}
    for attempt in range(200):
        g = torch.Generator().manual_seed(fx["seed"] * 1000 + attempt)
        ids = torch.randint(0, c["vocab_size"], (fx["n_ids"],), generator=g).tolist()
        spec_logits, st = spec_forward(c, W, ids)
        margin = min(st["expert_margin"], st["group_margin"])
        if margin >= MIN_ROUTER_MARGIN:
            break
    else:
        raise RuntimeError("no id sequence with a safe router margin")
    ref = forward(ref_model, ids, mode)
    d_spec = np.abs(ref.numpy() - spec_logits).max()

    # 6. cross-checks against plain transformers
    plain = build_model(d, hf64)                            # float32 weights, HF dtype islands
    d_plain32 = (forward(plain, ids).double() - ref).abs().max().item()
    plain64 = build_model(d, hf64)
    plain64 = plain64.double()
    plain64.load_state_dict({k: v for k, v in hf64.items()}, strict=False)
    d_plain64 = (forward(plain64, ids) - ref).abs().max().item()

    d_hf_load = None
    if fx["storage"] != "fp8":
        # transformers' own loader must accept our files and produce the same weights
        m2, info = cls.from_pretrained(d, dtype=torch.float32, attn_implementation="eager",
                                       experts_implementation="eager", output_loading_info=True)
        L = c["num_hidden_layers"]
        unexpected = [k for k in info["unexpected_keys"] if not k.startswith(f"model.layers.{L}.")]
        assert not unexpected and not info["missing_keys"] and not info["mismatched_keys"], info
        if fx.get("mtp"):
            print(f"  HF from_pretrained ignored {len(info['unexpected_keys'])} MTP tensors (model.layers.{L}.*)")
        for n, t in m2.state_dict().items():
            assert torch.equal(t, hf64[n].float()), n
        d_hf_load = (forward(m2, ids) - forward(plain, ids)).abs().max().item()
        assert d_hf_load == 0.0
        # and its writer must produce our names (and values)
        with tempfile.TemporaryDirectory() as tmp:
            m2.save_pretrained(tmp)
            theirs = read_weights(tmp)
        ours = {n: t for n, t in back.items() if not n.startswith(f"model.layers.{L}.")}
        assert set(theirs) == set(ours), sorted(set(theirs) ^ set(ours))[:10]
        for n in ours:
            assert torch.equal(theirs[n].float(), ours[n].float()), n

    # 7. outputs
    ids_path = os.path.join(d, "ref_ids.i32")
    np.asarray(ids, dtype="<i4").tofile(ids_path)
    log_path = os.path.join(d, "ref_logits.f64")
    r = np.ascontiguousarray(ref.numpy().astype("<f8"))
    assert r.shape == (len(ids), c["vocab_size"])
    r.tofile(log_path)

    print(f"  ids ({len(ids)}): {ids}")
    print(f"  yarn ramp: {np.round(ramp, 4).tolist()}")
    print(f"  softmax scale: {softmax_scale(c):.10f}")
    print(f"  router: min expert margin {st['expert_margin']:.3g}, min group margin "
          f"{st['group_margin']:.3g}, group limiting changed the top-k for {st['group_changed']}/{st['tokens']} "
          f"(token, MoE layer) pairs")
    print(f"  |logits| max {np.abs(r).max():.4f}, std {r.std():.4f}")
    print(f"  max|ref - numpy spec forward| = {d_spec:.3g}")
    print(f"  max|ref - HF .double() (float32 islands)| = {d_plain64:.3g}")
    print(f"  max|ref - HF float32| = {d_plain32:.3g}")
    if d_hf_load is not None:
        print("  HF from_pretrained(dir): all weights identical, no missing/unexpected keys; "
              "HF save_pretrained writes the same names/values")
    assert d_spec < 1e-10, d_spec
    assert d_plain64 < 1e-4, d_plain64

    files = [cpath] + written + [ids_path, log_path]
    for p in files:
        print(f"  wrote {os.path.relpath(p, ROOT)}  ({os.path.getsize(p)} bytes, sha256 {sha(p)})")
    size = sum(os.path.getsize(p) for p in files)
    print(f"  total {size} bytes")
    return dict(fx=fx, c=c, ids=ids, size=size, st=st, d_spec=d_spec, d_plain64=d_plain64,
                d_plain32=d_plain32, ramp=ramp, n_tensors=len(stored),
                files=[os.path.basename(p) for p in files])


# ----------------------------------------------------------------------------
# README
# ----------------------------------------------------------------------------


def write_readme(out_root, results):
    lines = [
        "# Reference fixtures",
        "",
        f"Generated by `{COMMAND}` (torch {torch.__version__.split('+')[0]}, transformers "
        f"{transformers.__version__}); do not edit by hand. Semantics and the transformers details",
        "they rely on are in `tests/reference/FINDINGS.md`.",
        "",
        "Each directory holds `config.json`, the weights under real checkpoint tensor names",
        "(`model.safetensors`, or shards + `model.safetensors.index.json`), `ref_ids.i32`",
        "(int32 LE token ids) and `ref_logits.f64` (float64 LE, `[n_ids][vocab_size]`, row = position).",
        "The logits are one forward pass over positions 0..n-1 without a cache, computed by the",
        "transformers model in float64 (no float32 anywhere) from the weights read back from the files",
        "(BF16 upcast exactly; FP8 dequantised exactly as `e4m3 * scale_inv[r//128][c//128]` in float64,",
        "weights only: no activation quantisation). Every sequence is longer than",
        "`original_max_position_embeddings` and every YaRN factor is > 1 (softmax scale includes m^2).",
        "",
        "| fixture | class | covers | layers (dense) | hidden / heads | q_lora / kv_lora | nope / rope / v | "
        "experts (top-k, groups) / shared | vocab | ids | storage | size |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        c, fx = r["c"], r["fx"]
        grp = f"{c['n_group']}/{c['topk_group']}"
        lines.append(
            f"| `{fx['name']}` | {c['architectures'][0]} | {fx['covers']} | {c['num_hidden_layers']} "
            f"({c['first_k_dense_replace']}) | {c['hidden_size']} / {c['num_attention_heads']} | "
            f"{'null' if c['q_lora_rank'] is None else c['q_lora_rank']} / {c['kv_lora_rank']} | {c['qk_nope_head_dim']} / {c['qk_rope_head_dim']} / "
            f"{c['v_head_dim']} | {c['n_routed_experts']} (top {c['num_experts_per_tok']}, {grp}) / "
            f"{c['n_shared_experts']} | {c['vocab_size']} | {len(r['ids'])} | {fx['storage'].upper()}"
            f"{', 2 shards' if fx.get('shards', 1) > 1 else ''} | {r['size'] / 1024:.0f} KiB |"
        )
    lines += [
        "",
        "Checks made when generating (see the script): file round trip; transformers' own",
        "`from_pretrained` loads every parameter from the directory with no missing/unexpected keys",
        "(except the MTP layer) and `save_pretrained` writes the same names and values (all but fp8);",
        "an independent float64 numpy forward written from the spec (official semantics) agrees;",
        "router decisions (group and expert top-k) have margins >= 1e-3 on the selection-score scale,",
        "so a float32 engine routes identically.",
        "",
        "| fixture | max abs diff vs numpy spec forward | vs plain HF `.double()` | vs HF float32 | "
        "min router margin | top-k changed by group limit | YaRN ramp |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        st = r["st"]
        gm = st["group_margin"]
        lines.append(
            f"| `{r['fx']['name']}` | {r['d_spec']:.1e} | {r['d_plain64']:.1e} | {r['d_plain32']:.1e} | "
            f"{min(st['expert_margin'], gm):.2e} | {st['group_changed']}/{st['tokens']} | "
            f"{', '.join(f'{x:.3g}' for x in r['ramp'][:6])}{' ...' if len(r['ramp']) > 6 else ''} |"
        )
    lines += [
        "",
        "Suggested tolerances for an engine: float64 math ~1e-9 absolute; float32 math with exact",
        "weight upcast ~1e-4 absolute (|logits| are O(1), except `v3_nointerleave` whose tied head",
        "gives |logits| up to ~41: use ~1e-5 relative to max|logit| there). The 'vs HF float32' column",
        "shows what a float32 evaluation of the same model gives.",
        "",
        "Notes:",
        "- `v3` also contains `model.layers.3.*` (an MTP module: embed_tokens copy, enorm, hnorm, eh_proj,",
        "  a full MoE decoder block, shared_head.norm, shared_head.head) that the forward must ignore.",
        "- `v3_nointerleave` has `tie_word_embeddings: true`; its files contain no `lm_head.weight`.",
        "- `v3_bf16` and `v3_fp8` have no `rope_interleave` key (default true), like the real V3 config.",
        "- `v2` and `v3_nointerleave` use the transformers-5 `rope_parameters` form (with `rope_theta`",
        "  inside); the others use the Hub form (`rope_scaling` with `type`, top-level `rope_theta`).",
        "",
    ]
    with open(os.path.join(out_root, "README.md"), "w") as f:
        f.write("\n".join(lines))
    print(f"\nwrote {os.path.relpath(os.path.join(out_root, 'README.md'), ROOT)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures"))
    ap.add_argument("--only", nargs="*", help="fixture names (README is only written for a full run)")
    a = ap.parse_args()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, numpy {np.__version__}")
    os.makedirs(a.out, exist_ok=True)
    results = []
    for fx in FIXTURES:
        if a.only and fx["name"] not in a.only:
            continue
        results.append(make_fixture(fx, a.out))
    if not a.only:
        write_readme(a.out, results)


if __name__ == "__main__":
    main()
