#!/usr/bin/env python3
"""Reference-fixture generator for dsc (run by hand, never in CI).

Creates tiny random DeepSeek-V2/V3/V3.2 models with Hugging Face transformers' own
model classes and writes, per fixture directory tests/fixtures/<name>/:

  config.json                      Hugging Face style config (Hub or transformers-5 form)
  model.safetensors  (or shards + model.safetensors.index.json)
                                   weights under the real checkpoint tensor names
                                   (one tensor per routed expert, FP8 + _scale_inv, ...)
  ref_ids.i32                      input token ids, int32 little-endian
  ref_logits.f64                   expected logits [n_ids][vocab_size], float64 LE
  gen_prompt.i32, gen_ids.i32      (fixtures with a Gen spec) a prompt and the ids that
                                   transformers' greedy generate() appends to it, EOS masked
  tokenizer.json, tokenizer_config.json, gen_prompt.txt, gen_text.txt
                                   (fixtures with a tokenizer) copied tokenizer, the text prompt
                                   and the decoded generated ids
  indexer_ref.f64, indexer_topk.i32
                                   (V3.2 fixtures with indexer_ref) layer-0 lightning-indexer scores
                                   [n][n] (-inf for s > t) and selected keys [n][index_topk] (-1 padded)

Each fixture is a declarative `Fixture` spec (FIXTURES below: config values + storage and
reference options) run through the same pipeline (make_fixture).

The expected logits come from one forward pass (positions 0..n-1, no cache) of the
transformers model whose weights were read back *from the written files* (bf16
upcast exactly, fp8 dequantised exactly in float64), run entirely in float64
(see Float64Mode below: transformers keeps some float32 "islands" even after
model.double(); the mode upgrades them so no float32 arithmetic remains).
The generation references come from model.generate() (default KV cache) under the same mode.

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
  * router decisions have a safe margin (so float32 engines pick the same experts);
  * V3.2 (DSA): the indexer's top-k boundaries have a safe relative margin; transformers' indexer
    scores and selected sets (recorded inside its forward) equal the numpy spec's for every query and
    layer, without a cache and inside generate(); deliberately wrong indexer variants move the logits;
  * generation: generate()'s ids == a no-cache argmax loop == the numpy forward's argmaxes
    == transformers' float32 generate(); top-1/top-2 margins >= 1e-3 at every step.

Usage:  python3 tests/reference/make_fixtures.py [--out tests/fixtures] [--only NAME ...]
Requires: torch, transformers (5.24 used), tokenizers, safetensors, numpy.
The v3_tok fixture needs tests/fixtures/tokenizer_brown/ (tokenizer.json, tokenizer_config.json).
"""

import argparse
import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass

import numpy as np
import tokenizers
import torch
from torch.overrides import TorchFunctionMode
from safetensors.torch import save_file, load_file

import transformers
from transformers import AutoConfig, DeepseekV2ForCausalLM, DeepseekV3ForCausalLM, DeepseekV32ForCausalLM

torch.set_num_threads(1)  # deterministic reductions
warnings.filterwarnings("ignore")
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMMAND = "python3 tests/reference/make_fixtures.py"

# Router decisions closer than this (on the selection-score scale) are rejected:
# the ids are re-drawn with the next seed.
MIN_ROUTER_MARGIN = 1e-3

# DSA (V3.2) fixtures: for every query that sees more than index_topk tokens, the k-th and (k+1)-th
# lightning-indexer scores must differ by at least this much relative to max_s |I(t, s)| over the
# visible s (so a float32 engine selects the same tokens); otherwise the ids are re-drawn.
MIN_INDEX_MARGIN = 1e-4

# ----------------------------------------------------------------------------
# Fixture definitions: one small declarative spec per fixture
# ----------------------------------------------------------------------------

# Keys every config.json starts with (after architectures / model_type).
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

# Model dimensions and router choices, in config.json order. A spec's `dims` gives the
# sizes (and the V2 router choices); num_key_value_heads always equals num_attention_heads.
MODEL_KEYS = (
    "vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
    "first_k_dense_replace", "num_attention_heads", "num_key_value_heads", "q_lora_rank", "kv_lora_rank",
    "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "n_routed_experts", "n_shared_experts",
    "num_experts_per_tok", "n_group", "topk_group", "topk_method", "scoring_func", "norm_topk_prob",
    "routed_scaling_factor",
)

ARCHS = {
    "v2": dict(cls="DeepseekV2ForCausalLM", model_type="deepseek_v2",
               router=dict(scoring_func="softmax", norm_topk_prob=False)),
    "v3": dict(cls="DeepseekV3ForCausalLM", model_type="deepseek_v3",
               router=dict(topk_method="noaux_tc", scoring_func="sigmoid", norm_topk_prob=True,
                           routed_scaling_factor=2.5)),
    # V3.2-Exp: V3 + DeepSeek Sparse Attention (a lightning indexer in every layer)
    "v32": dict(cls="DeepseekV32ForCausalLM", model_type="deepseek_v32",
                router=dict(topk_method="noaux_tc", scoring_func="sigmoid", norm_topk_prob=True,
                            routed_scaling_factor=2.5)),
}

# The DSA indexer sizes (config.json keys, V3.2 only), from a spec's `index` tuple.
INDEX_KEYS = ("index_n_heads", "index_head_dim", "index_topk")

FP8_QUANT_CONFIG = {
    "activation_scheme": "dynamic",
    "fmt": "e4m3",
    "quant_method": "fp8",
    "weight_block_size": [128, 128],
}


@dataclass(frozen=True)
class Gen:
    """Greedy-generation reference: `n_new` ids after a prompt, EOS masked throughout
    (generate(..., min_new_tokens=n_new, max_new_tokens=n_new, do_sample=False)).
    Prompts are random ids (`prompt_len`, fixed seed sequence) or, for a fixture with a
    tokenizer, the candidate `texts` in order; the first one whose greedy path is safe
    (top-1/top-2 and router margins) is kept."""
    n_new: int = 24
    prompt_len: int = 8
    texts: tuple = ()


@dataclass(frozen=True)
class Fixture:
    name: str
    covers: str
    arch: str                   # "v2" | "v3" | "v32"
    form: str                   # config layout: "hub" (rope_scaling + rope_theta, torch_dtype,
                                #   ep_size for V3, as the released config.json files) or
                                #   "tf5" (transformers-5 rope_parameters, dtype)
    dims: dict                  # MODEL_KEYS values (vocab_size may come from `tokenizer`)
    yarn: tuple                 # (rope_theta, factor, original_max_position_embeddings, mscale = mscale_all_dim)
    max_pos: int                # max_position_embeddings
    seed: int                   # weights; ids are drawn with seed*1000 + attempt
    n_ids: int                  # length of ref_ids.i32
    storage: str = "f32"        # "f32" | "bf16" | "fp8"
    shards: int = 1
    mtp: bool = False           # one MTP module (layer num_hidden_layers) in the files
    rope_interleave: bool | None = None  # None: no rope_interleave key
    tie: bool = False           # tie_word_embeddings
    gen: Gen | None = None      # greedy-generation reference (gen_*.i32)
    tokenizer: str | None = None  # directory under the output root whose tokenizer files are copied
    index: tuple | None = None  # v32 only: (index_n_heads, index_head_dim, index_topk)
    scale_fmt: str | None = None  # fp8 only: quantization_config.scale_fmt; "ue8m0" -> power-of-two weight scales
    indexer_ref: bool = False   # v32: also write indexer_ref.f64 / indexer_topk.i32 (layer 0, ref ids)


def make_config(fx, tok=None):
    """config.json dict for a spec; `tok` (from tokenizer_info) sets vocab_size and bos/eos ids."""
    a = ARCHS[fx.arch]
    hub = fx.form == "hub"
    dims = {**a["router"], **fx.dims, "num_key_value_heads": fx.dims["num_attention_heads"]}
    c = {"architectures": [a["cls"]], "model_type": a["model_type"], **COMMON}
    if tok is not None:
        dims["vocab_size"] = tok["vocab_size"]
        c.update(bos_token_id=tok["bos_token_id"], eos_token_id=tok["eos_token_id"])
    assert set(dims) == set(MODEL_KEYS) and dims["vocab_size"] is not None, sorted(set(dims) ^ set(MODEL_KEYS))
    assert (fx.arch == "v32") == (fx.index is not None)
    if fx.arch in ("v3", "v32") and hub:
        c["ep_size"] = 1
    c.update((k, dims[k]) for k in MODEL_KEYS)
    if fx.index is not None:
        c.update(zip(INDEX_KEYS, fx.index))
    if fx.arch in ("v3", "v32"):
        c["num_nextn_predict_layers"] = int(fx.mtp)
    c["max_position_embeddings"] = fx.max_pos
    theta, factor, l0, mscale = fx.yarn
    yarn = {"factor": factor, "original_max_position_embeddings": l0, "beta_fast": 32, "beta_slow": 1,
            "mscale": mscale, "mscale_all_dim": mscale}
    if hub:
        c["rope_theta"] = theta
        c["rope_scaling"] = {"type": "yarn", **yarn}
    else:
        c["rope_parameters"] = {"rope_type": "yarn", "rope_theta": theta, **yarn}
    if fx.rope_interleave is not None:
        c["rope_interleave"] = fx.rope_interleave
    if fx.storage == "fp8":
        c["quantization_config"] = dict(FP8_QUANT_CONFIG)
        if fx.scale_fmt is not None:
            c["quantization_config"]["scale_fmt"] = fx.scale_fmt
    c["tie_word_embeddings"] = fx.tie
    c["torch_dtype" if hub else "dtype"] = "float32" if fx.storage == "f32" else "bfloat16"
    c["transformers_version"] = "4.33.1" if hub else transformers.__version__
    return c


def dims(vocab, hidden, inter, moe_inter, layers, dense, heads, q_lora, kv_lora, nope, rope, v,
         experts, shared, top_k, n_group, topk_group, **router):
    return dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, moe_intermediate_size=moe_inter,
                num_hidden_layers=layers, first_k_dense_replace=dense, num_attention_heads=heads,
                q_lora_rank=q_lora, kv_lora_rank=kv_lora, qk_nope_head_dim=nope, qk_rope_head_dim=rope,
                v_head_dim=v, n_routed_experts=experts, n_shared_experts=shared, num_experts_per_tok=top_k,
                n_group=n_group, topk_group=topk_group, **router)


FIXTURES = [
    # V2-Lite (deepseek-ai/DeepSeek-V2-Lite/config.json form). rope_theta is small so that
    # the 4 rope pairs of an 8-dim rope really blend (ramp 0, .5, 1, 1).
    Fixture("v2_lite", arch="v2", form="hub", seed=1001, n_ids=24, gen=Gen(),
            dims=dims(112, 96, 128, 24, 3, 1, 3, None, 32, 16, 8, 12, 8, 2, 3, 1, 1,
                      topk_method="greedy", routed_scaling_factor=1.0),
            yarn=(10.0, 4.0, 16, 0.707), max_pos=64,
            covers="V2-Lite shape: q_proj (no q_lora), greedy softmax top-k, no norm, scale 1.0, "
                   "2 shared experts, rope 8 (complex/interleaved), Hub `rope_scaling` form"),
    Fixture("v2", arch="v2", form="tf5", seed=1002, n_ids=28,
            dims=dims(144, 80, 144, 24, 3, 1, 5, 40, 48, 16, 32, 20, 8, 2, 3, 4, 2,
                      topk_method="group_limited_greedy", routed_scaling_factor=16.0),
            yarn=(10000.0, 8.0, 20, 0.707), max_pos=160,
            covers="V2 shape: q_lora, group_limited_greedy (group max), routed_scaling 16, rope 32, "
                   "transformers-5 `rope_parameters` form"),
    Fixture("v3", arch="v3", form="hub", seed=1003, n_ids=26, shards=2, mtp=True, rope_interleave=True, gen=Gen(),
            dims=dims(128, 72, 112, 16, 3, 1, 3, 40, 32, 16, 64, 24, 12, 1, 4, 4, 2),
            yarn=(10000, 40, 16, 1.0), max_pos=640,
            covers="V3: noaux_tc sigmoid + nonzero e_score_correction_bias, group limiting drops groups, "
                   "norm_topk_prob, x2.5, rope 64 interleaved, mscale 1.0; 2 shards + index; MTP layer 3 in files"),
    Fixture("v3_nointerleave", arch="v3", form="tf5", seed=1004, n_ids=22, rope_interleave=False, tie=True,
            dims=dims(136, 56, 96, 16, 2, 1, 7, 24, 40, 8, 32, 12, 8, 1, 2, 2, 1),
            yarn=(10000.0, 4.0, 16, 0.707), max_pos=64,
            covers="V3 with rope_interleave=false (rotate-half pairs), tie_word_embeddings=true "
                   "(no lm_head.weight in file), 7 heads, transformers-5 `rope_parameters` form"),
    # Hub form and NO rope_interleave key (real V3 configs lack it; HF default True).
    Fixture("v3_bf16", arch="v3", form="hub", storage="bf16", seed=1005, n_ids=20,
            dims=dims(160, 64, 96, 24, 3, 2, 5, 48, 32, 12, 32, 20, 8, 1, 2, 4, 2),
            yarn=(10000, 40, 16, 1.0), max_pos=640,
            covers="V3, every tensor BF16 except e_score_correction_bias F32; first_k_dense_replace=2; "
                   "no rope_interleave key (default true)"),
    Fixture("v3_fp8", arch="v3", form="hub", storage="fp8", seed=1006, n_ids=24, gen=Gen(),
            dims=dims(168, 160, 200, 144, 2, 1, 3, 136, 144, 32, 64, 40, 8, 1, 3, 4, 2),
            yarn=(10000, 40, 16, 1.0), max_pos=640,
            covers="V3 FP8 e4m3 block-128 weights + F32 _scale_inv with ragged edges in both dims; "
                   "embed/lm_head/norms/gate BF16, bias F32; quantization_config"),
    # vocab_size and bos/eos ids come from the brown-corpus tokenizer; hidden 48 (not 64) and
    # 9 ref ids keep the directory under 1.5 MB with a 4096-token vocabulary.
    Fixture("v3_tok", arch="v3", form="hub", storage="bf16", seed=1007, n_ids=9, tokenizer="tokenizer_brown",
            gen=Gen(texts=("The jury said", "The jury further said", "It was a quiet day in the city",
                           "He said that the", "The committee")),
            dims=dims(None, 48, 64, 16, 2, 1, 4, 32, 32, 12, 16, 16, 8, 1, 2, 4, 2),
            yarn=(10000, 40, 8, 1.0), max_pos=640,
            covers="V3 BF16 with a real byte-level BPE tokenizer (tokenizer.json + tokenizer_config.json "
                   "copied from tokenizer_brown); vocab_size and bos/eos ids from it; text prompt generation"),
    # V3.2-Exp (DSA). index_topk 7 < the number of visible tokens for most queries, so the indexer's
    # selection really drops keys; 5 indexer heads of 24 dims whose first 16 (= qk_rope_head_dim) carry RoPE.
    # (3 indexer heads do not work: I(t,s) is exactly 0 whenever every head's dot product is <= 0, i.e. for
    # ~1/8 of the pairs, and a query whose 3 weights are all negative has its top scores all 0, so every
    # draw had exact ties at some top-k boundary.)
    Fixture("v32", arch="v32", form="hub", seed=1008, n_ids=26, gen=Gen(), index=(5, 24, 7), indexer_ref=True,
            dims=dims(128, 72, 112, 16, 3, 1, 3, 40, 32, 16, 16, 24, 12, 1, 4, 4, 2),
            yarn=(1000.0, 40, 20, 1.0), max_pos=640,
            covers="V3.2 DSA: lightning indexer (5 heads x 24, rope 16 first, half-split; LayerNorm+bias key; "
                   "ReLU; top-7 of up to 31 visible tokens) masking MLA; V3 MoE/MLA otherwise; "
                   "layer-0 indexer scores and top-k sets"),
    Fixture("v32_fp8", arch="v32", form="hub", storage="fp8", scale_fmt="ue8m0", seed=1009, n_ids=24, gen=Gen(),
            index=(5, 96, 9),
            dims=dims(168, 160, 200, 144, 2, 1, 3, 136, 144, 32, 64, 40, 8, 1, 3, 4, 2),
            yarn=(10000, 40, 16, 1.0), max_pos=640,
            covers="V3.2 FP8: as v3_fp8 plus indexer wq_b/wk F8_E4M3 + _scale_inv (ragged), weights_proj BF16, "
                   "k_norm F32; scale_fmt ue8m0 (power-of-two weight scales); 5 indexer heads x 96, rope 64, top-9"),
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
    if name.endswith("indexer.k_norm.bias"):  # the indexer key LayerNorm's bias: clearly non-zero
        return 0.5 * torch.randn(shape, generator=gen, dtype=torch.float64)
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
    """Tensors the real V3 / V3.2 checkpoint stores as F8_E4M3 (spec 7.3, 7.4)."""
    if not name.endswith(".weight"):
        return False
    if ".self_attn.indexer." in name:  # V3.2: wq_b and wk are FP8; k_norm and weights_proj are not
        return name.rsplit(".", 2)[-2] in ("wq_b", "wk")
    if ".self_attn." in name and name.rsplit(".", 2)[-2] in (
            "q_proj", "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"):
        return True
    if ".mlp." in name and name.rsplit(".", 2)[-2] in ("gate_proj", "up_proj", "down_proj"):
        return True
    return False


def fp8_quantize(w, pow2=False):
    """Block-128 e4m3 quantisation. Returns (fp8 tensor, float32 scale_inv [ceil(r/128), ceil(c/128)]).
    pow2 (scale_fmt "ue8m0"): the block scale amax/448 is rounded up to a power of two."""
    w = w.to(torch.float64)
    R, C = w.shape
    nr, nc = (R + BLOCK - 1) // BLOCK, (C + BLOCK - 1) // BLOCK
    scale = torch.zeros(nr, nc, dtype=torch.float32)
    q = torch.zeros(R, C, dtype=torch.float8_e4m3fn)
    for i in range(nr):
        for j in range(nc):
            blk = w[i * BLOCK:(i + 1) * BLOCK, j * BLOCK:(j + 1) * BLOCK]
            s = blk.abs().max().item() / FP8_MAX
            if pow2:
                s = 2.0 ** math.ceil(math.log2(s))
            s = torch.tensor(s, dtype=torch.float32)
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


# Tensors kept in F32 by the bf16 and fp8 encodings: the router bias (as in the real V3 checkpoint) and,
# for V3.2, the indexer key LayerNorm (its checkpoint dtype is unverified, spec section 10; F32 here so that a
# file mixes F8_E4M3, BF16 (indexer.weights_proj) and F32 tensors inside one indexer).
KEEP_F32 = ("e_score_correction_bias", "indexer.k_norm.weight", "indexer.k_norm.bias")


def encode(ck, storage, scale_fmt=None):
    """checkpoint dict (float32) -> tensors as stored in the files."""
    out = {}
    for name, t in ck.items():
        if storage == "f32":
            out[name] = t.to(torch.float32).contiguous()
        elif storage == "bf16":
            out[name] = t.to(torch.float32 if name.endswith(KEEP_F32) else torch.bfloat16).contiguous()
        elif storage == "fp8":
            if name.endswith(KEEP_F32):
                out[name] = t.to(torch.float32).contiguous()
            elif is_fp8_weight(name):
                q, s = fp8_quantize(t, pow2=scale_fmt == "ue8m0")
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

CLASSES = {"DeepseekV2ForCausalLM": DeepseekV2ForCausalLM, "DeepseekV3ForCausalLM": DeepseekV3ForCausalLM,
           "DeepseekV32ForCausalLM": DeepseekV32ForCausalLM}


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


def layernorm(x, w, b, eps):
    mu = np.mean(x, axis=-1, keepdims=True)
    var = np.mean((x - mu) ** 2, axis=-1, keepdims=True)
    return w * ((x - mu) / np.sqrt(var + eps)) + b


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


# Deliberately wrong DSA variants (spec_forward's `variant`): the README reports how far each one moves the
# logits, i.e. which engine mistakes the v32 fixtures detect.
DSA_VARIANTS = {
    "dense": "no indexer mask (plain V3 attention)",
    "rope_interleaved": "indexer RoPE on interleaved pairs (2i, 2i+1)",
    "rope_last": "indexer RoPE on the last qk_rope_head_dim dims",
    "rms_key": "indexer key RMSNorm (no mean, no bias) instead of LayerNorm",
    "no_relu": "no ReLU on the per-head dot products",
    "topk_then_causal": "top-k over all keys (future included), causal mask afterwards",
}


def indexer_scores(c, W, p, x, cq, pos, inv_freq, variant=None, causal=True):
    """Spec 4.3 (official demo order, without the FP8 / Hadamard steps, which do not change the exact
    result): the lightning-indexer scores I[t, s] of one layer, -inf for s > t.
    x: input_layernorm output [T, H]; cq: q_a_layernorm output [T, q_lora_rank]."""
    T = x.shape[0]
    nh, hd, dr = c["index_n_heads"], c["index_head_dim"], c["qk_rope_head_dim"]
    pi = p + "self_attn.indexer."

    def rope(v):  # rope slice FIRST in each indexer head, half-split (NeoX) pairs (i, i + dr/2), MLA's YaRN table
        if variant == "rope_last":
            return np.concatenate([v[..., :-dr], apply_rope(v[..., -dr:], pos, inv_freq, False)], -1)
        return np.concatenate([apply_rope(v[..., :dr], pos, inv_freq, variant == "rope_interleaved"), v[..., dr:]], -1)

    q = rope((cq @ W[pi + "wq_b.weight"].T).reshape(T, nh, hd).transpose(1, 0, 2))  # [nh, T, hd]
    k = x @ W[pi + "wk.weight"].T
    if variant == "rms_key":
        k = rmsnorm(k, W[pi + "k_norm.weight"], 1e-6)
    else:
        k = layernorm(k, W[pi + "k_norm.weight"], W[pi + "k_norm.bias"], 1e-6)  # [T, hd], one key for all heads
    k = rope(k)
    w = (x @ W[pi + "weights_proj.weight"].T) * nh ** -0.5  # [T, nh], may be negative
    dots = q @ k.T[None] * hd ** -0.5  # [nh, T(query), T(key)]
    if variant != "no_relu":
        dots = np.maximum(dots, 0.0)  # ReLU per head, before the weighted head sum
    I = np.einsum("tj,jts->ts", w, dots)
    return I + np.triu(np.full((T, T), -np.inf), 1) if causal else I


def index_select(I, topk, stats):
    """Top-k of each row among the visible keys (k = min(topk, t + 1)); sorted ascending. Records the
    relative boundary margin (k-th minus (k+1)-th score over max |I| of the row) where tokens are dropped."""
    sel = []
    for t in range(I.shape[0]):
        row = I[t, :t + 1]
        order = np.argsort(-row, kind="stable")
        k = min(topk, t + 1)
        sel.append(sorted(order[:k].tolist()))
        if t + 1 > topk:
            m = (row[order[k - 1]] - row[order[k]]) / np.abs(row).max()
            stats["index_margin"] = min(stats["index_margin"], m)
            stats["index_dropped"] += 1
            stats["index_diag_dropped"] += int(t not in sel[-1])
        stats["index_queries"] += 1
    return sel


def spec_forward(c, W, ids, variant=None):
    """W: checkpoint-named float64 numpy arrays. Returns logits [T, V] and router (and indexer) stats.
    variant: one of DSA_VARIANTS (a deliberately wrong indexer) or None."""
    eps = c["rms_norm_eps"]
    H = c["hidden_size"]
    nh = c["num_attention_heads"]
    dn, dr, dv = c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"]
    kr = c["kv_lora_rank"]
    T = len(ids)
    pos = np.arange(T, dtype=np.float64)
    inv_freq, _ = yarn_inv_freq(c)
    interleaved = c["model_type"] == "deepseek_v2" or c.get("rope_interleave", True)
    dsa = c["model_type"] == "deepseek_v32"
    if dsa:
        interleaved = True  # HF V3.2 MLA always uses the interleaved layout (no rope_interleave switch)
    scale = softmax_scale(c)
    stats = dict(expert_margin=np.inf, group_margin=np.inf, group_changed=0, tokens=0)
    if dsa:
        stats.update(index_margin=np.inf, index_dropped=0, index_diag_dropped=0, index_queries=0,
                     index_scores=[], index_sel=[])
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
        if dsa and variant != "dense":  # spec 4.4: keys outside the query's top-k set get -inf, for every head
            I = indexer_scores(c, W, p, x, cq, pos, inv_freq, variant)
            sel = index_select(I, c["index_topk"], stats)
            if variant == "topk_then_causal":
                raw = indexer_scores(c, W, p, x, cq, pos, inv_freq, causal=False)
                sel = [[s_ for s_ in np.argsort(-raw[t], kind="stable")[:c["index_topk"]] if s_ <= t] for t in range(T)]
            keep = np.zeros((T, T), dtype=bool)
            for t, st_ in enumerate(sel):
                keep[t, st_] = True
            sc = np.where(keep[None], sc, -np.inf)
            stats["index_scores"].append(I)
            stats["index_sel"].append(sel)
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


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    return path


def write_i32(path, ids):
    np.asarray(ids, dtype="<i4").tofile(path)
    return path


def first_safe(candidates, evaluate, what):
    """evaluate(candidate) -> (ok, result) for each candidate in turn; the first ok result wins."""
    for attempt, cand in enumerate(candidates):
        ok, res = evaluate(cand)
        if ok:
            return attempt, res
    raise RuntimeError(f"no {what} with safe margins")


def random_ids(seed, n, vocab, exclude=()):
    """n ids drawn uniformly from range(vocab) minus `exclude` (torch generator `seed`)."""
    g = torch.Generator().manual_seed(seed)
    if not exclude:
        return torch.randint(0, vocab, (n,), generator=g).tolist()
    allowed = [i for i in range(vocab) if i not in exclude]
    return [allowed[i] for i in torch.randint(0, len(allowed), (n,), generator=g).tolist()]


def random_checkpoint(fx, c, d):
    """Random float32 weights: HF state dict (fused experts) and checkpoint dict (+ MTP)."""
    cfg = load_hf_config(d)
    assert cfg.model_type == c["model_type"]
    torch.manual_seed(0)
    model = CLASSES[cfg.architectures[0]](cfg).eval()
    gen = torch.Generator().manual_seed(fx.seed)
    sd = {}
    for n, t in sorted(model.state_dict().items()):
        if n == "lm_head.weight" and c.get("tie_word_embeddings"):
            continue
        sd[n] = fill_value(n, tuple(t.shape), gen).float()
    if c.get("tie_word_embeddings"):
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    ck = hf_to_checkpoint(sd, c)
    if fx.mtp:
        assert c.get("num_nextn_predict_layers", 0) == 1
        ck.update(make_mtp_tensors(c, gen))
    return sd, ck


def store_and_read_back(fx, c, d, sd, ck):
    """Writes the weight files, reads them back (bit-exact check) and decodes them to float64."""
    stored = encode(ck, fx.storage, fx.scale_fmt)
    written = write_weights(d, stored, fx.shards)
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
        if fx.storage == "f32":
            assert torch.equal(hf64[n], sd[n].double()), n
        elif fx.storage == "bf16" and not n.endswith(KEEP_F32):
            assert torch.equal(hf64[n], sd[n].bfloat16().double()), n
        else:  # fp8 (and the F32 bias of bf16: exact, rel = 0)
            rel = ((hf64[n] - sd[n].double()).abs().max() / sd[n].double().abs().max()).item()
            worst_q = max(worst_q, rel)
    if fx.storage == "fp8":
        print(f"  fp8 quantisation: worst max|dW|/max|W| over tensors = {worst_q:.3g}")
        assert worst_q < 0.07
    return written, back, ck64, hf64, len(stored)


def reference_model(d, c, hf64):
    """The transformers model in true float64 (Float64Mode) with the weights from the files."""
    mode = Float64Mode()
    m = build_model(d, hf64, f64_mode=mode)
    inv = m.model.rotary_emb.inv_freq
    assert inv.dtype == torch.float64
    np_inv, ramp = yarn_inv_freq(c)
    assert np.allclose(inv.numpy(), np_inv, rtol=1e-14, atol=0), (inv, np_inv)
    assert m.model.rotary_emb.attention_scaling == 1.0
    assert abs(m.model.layers[0].self_attn.scaling - softmax_scale(c)) < 1e-15
    return m, mode, ramp


def router_margin(st):
    return min(st["expert_margin"], st["group_margin"])


def index_margin(st):
    """Smallest relative indexer top-k boundary margin (inf without an indexer or with nothing dropped)."""
    return st.get("index_margin", math.inf)


def safe_margins(st):
    return router_margin(st) >= MIN_ROUTER_MARGIN and index_margin(st) >= MIN_INDEX_MARGIN


class IndexerTrace(TorchFunctionMode):
    """Records, for every call of a DSA indexer module (transformers' DeepseekV32Indexer), the scores it
    passes to its final `topk` (already causally masked by transformers) and the indices it returns.
    Only observes: the call is forwarded unchanged (outer modes such as Float64Mode still apply)."""

    def __init__(self, model):
        super().__init__()
        self.calls = []  # (layer, scores [S, T] float64, indices [S, k] int)
        self.active = None
        self.hooks = []
        for i, layer in enumerate(model.model.layers):
            ix = layer.self_attn.indexer
            self.hooks.append(ix.register_forward_pre_hook(lambda mod, args, i=i: self._enter(i)))
            self.hooks.append(ix.register_forward_hook(lambda mod, args, out: self._leave(out)))

    def _enter(self, i):
        self.active = [i, None]

    def _leave(self, out):
        i, scores = self.active
        assert scores is not None and out.dtype == torch.int32 and out.shape[0] == 1
        self.calls.append((i, scores, out[0].long().clone()))
        self.active = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.active is not None and func is torch.Tensor.topk:
            assert self.active[1] is None  # exactly one topk per indexer call
            self.active[1] = args[0][0].detach().clone()
        return func(*args, **kwargs)

    def remove(self):
        for h in self.hooks:
            h.remove()


def hf_indexer_forward(m, ids, f64_mode):
    """One no-cache float64 forward with the indexer trace: per layer (scores [T, T], indices [T, k])."""
    tr = IndexerTrace(m)
    f64_mode.low.clear()
    try:
        with torch.no_grad(), f64_mode, tr:
            m(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=False)
    finally:
        tr.remove()
    assert not f64_mode.low, f"float32 ops left in the float64 forward: {f64_mode.low}"
    assert [l for l, _, _ in tr.calls] == list(range(len(m.model.layers)))
    return [(sc, ix) for _, sc, ix in tr.calls]


def check_indexer(c, hf_calls, st, q0=0):
    """transformers' indexer (scores and selected sets) against the numpy spec for queries q0, q0+1, ...
    hf_calls: per layer (scores [S, T], indices [S, k]) of a forward whose first query has position q0.
    Returns the max |HF - spec| score difference relative to the layer's max |I| (rows can cancel to ~0)."""
    worst = 0.0
    for l, (sc, ix) in enumerate(hf_calls):
        S, T = sc.shape
        full = st["index_scores"][l]
        scale = np.abs(full[np.isfinite(full)]).max()
        assert ix.shape == (S, min(c["index_topk"], T))
        for r in range(S):
            t = q0 + r
            assert T == t + 1 if S == 1 else T == S + q0
            ref = st["index_scores"][l][t, :t + 1]
            got = sc[r, :t + 1].numpy()
            worst = max(worst, np.abs(got - ref).max() / scale)
            # transformers adds the additive causal mask (finfo.min) to the future keys
            assert (sc[r, t + 1:] <= torch.finfo(sc.dtype).min / 2).all()
            vis = sorted(i for i in ix[r].tolist() if i <= t)
            assert vis == st["index_sel"][l][t], (l, t, vis, st["index_sel"][l][t])
    assert worst < 1e-12, worst
    return worst


def check_hf_loader(fx, c, d, hf64, back, ids, plain):
    """transformers' own from_pretrained must load our files to the same weights, and its
    save_pretrained must write our names and values."""
    cls = CLASSES[c["architectures"][0]]
    m2, info = cls.from_pretrained(d, dtype=torch.float32, attn_implementation="eager",
                                   experts_implementation="eager", output_loading_info=True)
    L = c["num_hidden_layers"]
    unexpected = [k for k in info["unexpected_keys"] if not k.startswith(f"model.layers.{L}.")]
    assert not unexpected and not info["missing_keys"] and not info["mismatched_keys"], info
    if fx.mtp:
        print(f"  HF from_pretrained ignored {len(info['unexpected_keys'])} MTP tensors (model.layers.{L}.*)")
    for n, t in m2.state_dict().items():
        assert torch.equal(t, hf64[n].float()), n
    d_hf_load = (forward(m2, ids) - forward(plain, ids)).abs().max().item()
    assert d_hf_load == 0.0
    with tempfile.TemporaryDirectory() as tmp:
        m2.save_pretrained(tmp)
        theirs = read_weights(tmp)
    ours = {n: t for n, t in back.items() if not n.startswith(f"model.layers.{L}.")}
    assert set(theirs) == set(ours), sorted(set(theirs) ^ set(ours))[:10]
    for n in ours:
        assert torch.equal(theirs[n].float(), ours[n].float()), n
    return d_hf_load


# ----------------------------------------------------------------------------
# Tokenizer (fixtures with `tokenizer`)
# ----------------------------------------------------------------------------

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
BOS_TEXT = "<｜begin▁of▁sentence｜>"
EOS_TEXT = "<｜end▁of▁sentence｜>"


def _token_text(t):
    return t["content"] if isinstance(t, dict) else t


def copy_tokenizer(src, d):
    for fn in TOKENIZER_FILES:
        p = os.path.join(src, fn)
        if not os.path.exists(p):
            raise SystemExit(f"{os.path.relpath(p, ROOT)} is missing: the tokenizer must exist before this fixture")
        shutil.copyfile(p, os.path.join(d, fn))
    return [os.path.join(d, fn) for fn in TOKENIZER_FILES]


def tokenizer_info(d):
    """vocab_size, bos/eos ids and a text -> ids function with tokenizer_config.json's add_bos/add_eos.

    transformers 5.24's AutoTokenizer drops add_bos_token/add_eos_token from tokenizer_config.json
    whenever a tokenizer.json exists (tokenization_utils_base.py), so the ids would depend only on
    tokenizer.json's post_processor. PreTrainedTokenizerFast is therefore built with those flags
    passed explicitly (the transformers 4.x LlamaTokenizerFast behaviour); the result is checked
    against AutoTokenizer and the raw `tokenizers` encoding, which differ only by the added tokens."""
    with open(os.path.join(d, "tokenizer_config.json")) as f:
        tc = json.load(f)
    bos, eos = _token_text(tc["bos_token"]), _token_text(tc["eos_token"])
    assert (bos, eos) == (BOS_TEXT, EOS_TEXT), (bos, eos)
    add_bos, add_eos = bool(tc.get("add_bos_token", False)), bool(tc.get("add_eos_token", False))
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=os.path.join(d, "tokenizer.json"), bos_token=bos,
                                               eos_token=eos, add_bos_token=add_bos, add_eos_token=add_eos)
    raw = tokenizers.Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    auto = transformers.AutoTokenizer.from_pretrained(d)
    vocab = raw.get_vocab_size(with_added_tokens=True)
    assert vocab == len(tok) == max(raw.get_vocab(with_added_tokens=True).values()) + 1
    bos_id, eos_id = raw.token_to_id(bos), raw.token_to_id(eos)
    assert (bos_id, eos_id) == (tok.bos_token_id, tok.eos_token_id) == (auto.bos_token_id, auto.eos_token_id)

    def encode_text(text):
        ids = tok(text)["input_ids"]
        plain = raw.encode(text, add_special_tokens=False).ids
        assert ids == [bos_id] * add_bos + plain + [eos_id] * add_eos, (ids, plain)
        auto_ids = auto(text)["input_ids"]
        assert auto_ids in (ids, plain), auto_ids
        return ids, auto_ids == ids

    return dict(vocab_size=vocab, bos_token_id=bos_id, eos_token_id=eos_id, add_bos=add_bos, add_eos=add_eos,
                encode=encode_text, decode=lambda ids, skip=False: tok.decode(ids, skip_special_tokens=skip))


# ----------------------------------------------------------------------------
# Greedy generation reference
# ----------------------------------------------------------------------------

# A greedy step whose best and second-best logits (after EOS masking) are closer than this
# is rejected: the prompt is re-drawn.
MIN_LOGIT_MARGIN = 1e-3


def top2_margin(scores):
    top = torch.topk(scores, 2).values
    return (top[0] - top[1]).item()


def hf_generate(m, prompt, n_new, eos, f64_mode=None, trace=None):
    """transformers generate(), greedy, EOS masked for all n_new steps, default (dynamic) KV cache.
    Returns (new ids, processed scores per step, raw logits per step, forward input lengths).
    trace: an IndexerTrace to run inside (records the indexer of every forward)."""
    x = torch.tensor([prompt], dtype=torch.long)
    lengths = []
    hook = m.model.register_forward_pre_hook(
        lambda mod, args, kw: lengths.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    trace = trace if trace is not None else contextlib.nullcontext()
    kwargs = dict(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=n_new, min_new_tokens=n_new,
                  do_sample=False, eos_token_id=eos, pad_token_id=eos, return_dict_in_generate=True,
                  output_scores=True, output_logits=True)
    try:
        with torch.no_grad():
            if f64_mode is None:
                out = m.generate(**kwargs)
            else:
                f64_mode.low.clear()
                with f64_mode, trace:
                    out = m.generate(**kwargs)
    finally:
        hook.remove()
    seq = out.sequences[0].tolist()
    assert seq[:len(prompt)] == prompt and len(seq) == len(prompt) + n_new
    return seq[len(prompt):], [s[0] for s in out.scores], [lg[0] for lg in out.logits], lengths


def greedy_reference(fx, c, W, ref_model, mode, plain, prompt):
    """Runs the checks of one candidate prompt; ok when the greedy path is safe."""
    n_new, eos = fx.gen.n_new, c["eos_token_id"]
    trace = IndexerTrace(ref_model) if fx.index is not None else None
    try:
        gen, scores, logits, lengths = hf_generate(ref_model, prompt, n_new, eos, mode, trace)
    finally:
        if trace is not None:
            trace.remove()
    assert not mode.low, f"float32 ops left in float64 generate: {mode.low}"
    assert all(s.dtype == torch.float64 for s in scores + logits)
    # one prefill over the prompt, then one token per step against the cache
    assert lengths == [(1, len(prompt))] + [(1, 1)] * (n_new - 1), lengths
    eos_picked = 0
    for s, lg in zip(scores, logits):
        keep = torch.arange(lg.numel()) != eos
        assert torch.equal(s[keep], lg[keep]) and s[eos].item() == -math.inf  # only EOS is touched
        eos_picked += int(torch.argmax(lg).item() == eos)
    margins = [top2_margin(s) for s in scores]
    # independent numpy forward over everything the engine evaluates (prompt + gen[:-1]); a path with an
    # unsafe router / indexer decision is rejected at once (with exact indexer ties the checks below
    # could legitimately disagree)
    full = prompt + gen[:-1]
    spec_logits, st = spec_forward(c, W, full)
    if not safe_margins(st):
        return False, dict(min_margin=min(margins), nocache_margin=math.inf, router_margin=router_margin(st),
                           index_margin=index_margin(st), f32_agrees=None)
    # sanity: a plain argmax loop over the full sequence, no cache
    seq, d_cache, nocache_margin = list(prompt), 0.0, math.inf
    for t in range(n_new):
        lg = forward(ref_model, seq, mode)[-1]
        d_cache = max(d_cache, (lg - logits[t]).abs().max().item())
        lg = lg.clone()
        lg[eos] = -math.inf
        nocache_margin = min(nocache_margin, top2_margin(lg))
        seq.append(int(torch.argmax(lg)))
    assert seq[len(prompt):] == gen, (seq[len(prompt):], gen)
    spec_tail = spec_logits[len(prompt) - 1:].copy()
    spec_tail[:, eos] = -np.inf
    assert spec_tail.argmax(-1).tolist() == gen
    ref_full = forward(ref_model, full, mode).numpy()
    d_spec = np.abs(ref_full - spec_logits).max()
    assert d_spec < 1e-10, d_spec
    d_idx_cache = None
    if trace is not None:
        # the indexer inside generate (prefill over the prompt, then one query against the indexer-key
        # cache per step) selects exactly the spec's top-k sets of the full no-cache sequence
        L = c["num_hidden_layers"]
        assert len(trace.calls) == L * n_new
        q0, d_idx_cache = 0, 0.0
        for f in range(n_new):
            calls = [(sc, ix) for _, sc, ix in trace.calls[f * L:(f + 1) * L]]
            assert [l for l, _, _ in trace.calls[f * L:(f + 1) * L]] == list(range(L))
            d_idx_cache = max(d_idx_cache, check_indexer(c, calls, st, q0))
            q0 += calls[0][0].shape[0]
        assert q0 == len(full)
    # what a float32 evaluation (HF float32, with cache) picks
    f32_gen = hf_generate(plain, prompt, n_new, eos)[0]
    res = dict(prompt=prompt, gen=gen, min_margin=min(margins), nocache_margin=nocache_margin,
               eos_picked=eos_picked, d_cache=d_cache, d_spec=d_spec, router_margin=router_margin(st),
               index_margin=index_margin(st), index_dropped=st.get("index_dropped"),
               index_queries=st.get("index_queries"), d_idx_cache=d_idx_cache, f32_agrees=f32_gen == gen)
    ok = min(margins) >= MIN_LOGIT_MARGIN and nocache_margin >= MIN_LOGIT_MARGIN and res["f32_agrees"]
    return ok, res


def make_generation(fx, c, d, W, ref_model, mode, plain, tok):
    V = c["vocab_size"]
    specials = (c["bos_token_id"], c["eos_token_id"])
    if fx.gen.texts:
        cands = fx.gen.texts
        to_ids = lambda text: tok["encode"](text)[0]
    else:
        # random prompts without BOS/EOS, fixed seed sequence
        cands = (fx.seed * 1000 + 500 + a for a in range(200))
        to_ids = lambda s: random_ids(s, fx.gen.prompt_len, V, specials)

    def evaluate(cand):
        prompt = to_ids(cand)
        ok, g = greedy_reference(fx, c, W, ref_model, mode, plain, prompt)
        if ok and fx.gen.texts:
            # the continuation must decode to valid UTF-8 (no partial byte sequence) and
            # prompt text + continuation text must be the decoding of the whole sequence
            g["gen_text"] = tok["decode"](g["gen"])
            ok = "\ufffd" not in g["gen_text"] and tok["decode"](prompt + g["gen"], True) == cand + g["gen_text"]
        if not ok:
            print(f"  prompt candidate {cand!r} rejected: margin {min(g['min_margin'], g['nocache_margin']):.3g}, "
                  f"router margin {g['router_margin']:.3g}, indexer margin {g['index_margin']:.3g}, "
                  f"float32 agrees {g['f32_agrees']}"
                  + (f", text {g.get('gen_text')!r}" if fx.gen.texts else ""))
        return ok, g

    attempt, g = first_safe(cands, evaluate, "generation prompt")
    files = []
    if fx.gen.texts:
        g["text"] = fx.gen.texts[attempt]
        g["auto_same"] = tok["encode"](g["text"])[1]
        for fn, s in (("gen_prompt.txt", g["text"]), ("gen_text.txt", g["gen_text"])):
            with open(os.path.join(d, fn), "w", encoding="utf-8", newline="") as f:
                f.write(s)
            files.append(os.path.join(d, fn))
    files.append(write_i32(os.path.join(d, "gen_prompt.i32"), g["prompt"]))
    files.append(write_i32(os.path.join(d, "gen_ids.i32"), g["gen"]))
    g["attempt"] = attempt
    print(f"  generation: prompt {g['prompt']}" + (f" = {g['text']!r}" if fx.gen.texts else "")
          + f" (candidate {attempt})")
    print(f"    greedy {len(g['gen'])} ids {g['gen']}" + (f" = {g['gen_text']!r}" if fx.gen.texts else ""))
    print(f"    min top-1/top-2 margin {g['min_margin']:.3g} (no-cache loop {g['nocache_margin']:.3g}), "
          f"EOS was the raw argmax at {g['eos_picked']} steps, router margin {g['router_margin']:.3g}")
    print(f"    max|cache - no-cache logits| = {g['d_cache']:.3g}, max|ref - numpy spec| = {g['d_spec']:.3g}, "
          f"HF float32 generate agrees: {g['f32_agrees']}")
    if fx.index is not None:
        print(f"    indexer on the path: min top-k boundary margin {g['index_margin']:.3g} (relative), dropped tokens "
              f"for {g['index_dropped']}/{g['index_queries']} (query, layer) pairs; generate's cached indexer "
              f"selects the no-cache spec sets (max score diff {g['d_idx_cache']:.3g} relative)")
    return files, g


def write_indexer_ref(d, c, ids, layer0, st):
    """indexer_ref.f64: layer-0 indexer scores [n][n] (float64 LE, -inf for s > t) from transformers;
    indexer_topk.i32: [n][index_topk] the selected visible keys of each query, ascending, -1 padded."""
    sc, ix = layer0
    n, k = len(ids), c["index_topk"]
    I = np.full((n, n), -np.inf)
    top = np.full((n, k), -1, dtype="<i4")
    for t in range(n):
        I[t, :t + 1] = sc[t, :t + 1].numpy()
        vis = sorted(i for i in ix[t].tolist() if i <= t)
        assert vis == st["index_sel"][0][t] and len(vis) == min(k, t + 1)
        top[t, :len(vis)] = vis
    assert np.array_equal(np.isfinite(I), np.isfinite(st["index_scores"][0]))
    assert np.abs(I - st["index_scores"][0])[np.isfinite(I)].max() <= 1e-12 * np.abs(I[np.isfinite(I)]).max()
    p1, p2 = os.path.join(d, "indexer_ref.f64"), os.path.join(d, "indexer_topk.i32")
    np.ascontiguousarray(I.astype("<f8")).tofile(p1)
    top.tofile(p2)
    return [p1, p2]


# ----------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------


def make_fixture(fx, out_root):
    d = os.path.join(out_root, fx.name)
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    print(f"\n=== {fx.name} ===")
    files, tok = [], None
    if fx.tokenizer:
        files += copy_tokenizer(os.path.join(out_root, fx.tokenizer), d)
        tok = tokenizer_info(d)
    c = make_config(fx, tok)
    cpath = write_json(os.path.join(d, "config.json"), c)

    # 1-3. random weights -> files -> read back (exact) -> float64
    sd, ck = random_checkpoint(fx, c, d)
    written, back, ck64, hf64, n_tensors = store_and_read_back(fx, c, d, sd, ck)

    # 4. reference: transformers, float64 throughout, weights from the files
    ref_model, mode, ramp = reference_model(d, c, hf64)

    # 5. ids: re-draw until every router decision has a safe margin
    W = {n: t.numpy() for n, t in ck64.items()}

    def try_ids(seed):
        ids = random_ids(seed, fx.n_ids, c["vocab_size"])
        spec_logits, st = spec_forward(c, W, ids)
        return safe_margins(st), (ids, spec_logits, st)

    ids_attempt, (ids, spec_logits, st) = first_safe((fx.seed * 1000 + a for a in range(200)), try_ids,
                                                     "id sequence")
    ref = forward(ref_model, ids, mode)
    d_spec = np.abs(ref.numpy() - spec_logits).max()
    dsa = None
    if fx.index is not None:
        hf_calls = hf_indexer_forward(ref_model, ids, mode)
        dsa = dict(attempt=ids_attempt, d_scores=check_indexer(c, hf_calls, st), layer0=hf_calls[0], variants={})
        with np.errstate(invalid="ignore"):
            for v in DSA_VARIANTS:
                vl = spec_forward(c, W, ids, v)[0]
                bad = int((~np.isfinite(vl)).any(-1).sum())
                fin = np.isfinite(vl).all(-1)
                dsa["variants"][v] = (np.abs(vl - spec_logits)[fin].max() if fin.any() else math.nan, bad)
                assert bad or dsa["variants"][v][0] > 0.1, (v, dsa["variants"][v])  # the fixture detects it

    # 6. cross-checks against plain transformers
    plain = build_model(d, hf64)                            # float32 weights, HF dtype islands
    d_plain32 = (forward(plain, ids).double() - ref).abs().max().item()
    plain64 = build_model(d, hf64).double()
    plain64.load_state_dict({k: v for k, v in hf64.items()}, strict=False)
    d_plain64 = (forward(plain64, ids) - ref).abs().max().item()
    d_hf_load = None if fx.storage == "fp8" else check_hf_loader(fx, c, d, hf64, back, ids, plain)

    # 7. outputs
    ids_path = write_i32(os.path.join(d, "ref_ids.i32"), ids)
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
    if dsa is not None:
        print(f"  indexer: ids candidate {dsa['attempt']}, min top-k boundary margin {index_margin(st):.3g} "
              f"(relative), selection dropped tokens for {st['index_dropped']}/{st['index_queries']} "
              f"(query, layer) pairs, the query's own token not selected in {st['index_diag_dropped']}; "
              f"max|HF - spec| indexer scores {dsa['d_scores']:.3g} (relative)")
        for v, (dv, bad) in dsa["variants"].items():
            print(f"    wrong variant {v}: max|logits - ref| {dv:.3g}" + (f", {bad} rows non-finite" if bad else ""))
    print(f"  |logits| max {np.abs(r).max():.4f}, std {r.std():.4f}")
    print(f"  max|ref - numpy spec forward| = {d_spec:.3g}")
    print(f"  max|ref - HF .double() (float32 islands)| = {d_plain64:.3g}")
    print(f"  max|ref - HF float32| = {d_plain32:.3g}")
    if d_hf_load is not None:
        print("  HF from_pretrained(dir): all weights identical, no missing/unexpected keys; "
              "HF save_pretrained writes the same names/values")
    assert d_spec < 1e-10, d_spec
    assert d_plain64 < 1e-4, d_plain64

    # 8. greedy generation reference
    g = None
    files += [cpath] + written + [ids_path, log_path]
    if fx.indexer_ref:
        files += write_indexer_ref(d, c, ids, dsa["layer0"], st)
    if fx.gen is not None:
        gen_files, g = make_generation(fx, c, d, W, ref_model, mode, plain, tok)
        files += gen_files
    for p in files:
        print(f"  wrote {os.path.relpath(p, ROOT)}  ({os.path.getsize(p)} bytes, sha256 {sha(p)})")
    assert sorted(os.listdir(d)) == sorted(os.path.basename(p) for p in files)
    size = sum(os.path.getsize(p) for p in files)
    print(f"  total {size} bytes")
    return dict(fx=fx, c=c, ids=ids, size=size, st=st, d_spec=d_spec, d_plain64=d_plain64, dsa=dsa,
                d_plain32=d_plain32, ramp=ramp, n_tensors=n_tensors, gen=g, tok=tok,
                files=[os.path.basename(p) for p in files])


# ----------------------------------------------------------------------------
# README
# ----------------------------------------------------------------------------


def _ids(ids):
    return ", ".join(str(i) for i in ids)


def _names(results):
    return ", ".join("`" + r["fx"].name + "`" for r in results)


def dsa_readme(dsas):
    """README section for the DeepSeek-V3.2 (DSA) fixtures."""
    if not dsas:
        return []
    ref = [r for r in dsas if r["fx"].indexer_ref]
    lines = [
        "## DeepSeek Sparse Attention (V3.2)",
        "",
        "`config.json` adds `index_n_heads`, `index_head_dim` and `index_topk` (model_type `deepseek_v32`,",
        "`DeepseekV32ForCausalLM`). Every layer has a lightning indexer:",
        "`model.layers.N.self_attn.indexer.{wq_b,wk,weights_proj}.weight` and",
        "`model.layers.N.self_attn.indexer.k_norm.{weight,bias}` (a LayerNorm, eps 1e-6). Semantics (spec section 4,",
        "FINDINGS.md section 11): `I(t,s) = sum_j w_tj * D_I^-1/2 * ReLU(q_tj . k_s)`, `w_t = weights_proj(x_t) * H_I^-1/2`,",
        "`q_t = wq_b(c_q)` per head and `k_s = LayerNorm(wk(x_s))`, the first `qk_rope_head_dim` dims of each rotated",
        "with half-split pairs and MLA's YaRN table; `-inf` for s > t before the top-k; each query attends",
        "(all MLA heads) only to its top-`min(index_topk, t+1)` keys. No Hadamard / FP8 activation quantisation",
        "(transformers skips both; the Hadamard rotation does not change I in exact arithmetic).",
        "",
        "Margins: wherever tokens are dropped (t + 1 > index_topk), the k-th and (k+1)-th largest scores of the",
        f"query differ by >= {MIN_INDEX_MARGIN:g} x max_s |I(t,s)| (s <= t) at every layer, for the ref ids and for the whole",
        "generation path; ids / prompts failing this are re-drawn. transformers' indexer (its scores, recorded",
        "at its `topk`, and its selected sets) is checked against the numpy spec for every query and layer, in",
        "the no-cache forward and inside `generate()` (prefill + one query per step against the indexer-key cache).",
        "",
        "| fixture | indexer heads x dim (rope first) | index_topk | storage of wq_b / wk / weights_proj / k_norm | "
        "ref ids: (query, layer) pairs with dropped keys | own token not selected | min boundary margin (ref ids) | "
        "generation path: pairs with dropped keys | min boundary margin (generation) | max rel diff HF vs spec scores |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in dsas:
        c, st, g, fx = r["c"], r["st"], r["gen"], r["fx"]
        stor = "F8_E4M3 + F32 scale / F8_E4M3 + F32 scale / BF16 / F32" if fx.storage == "fp8" else "F32 / F32 / F32 / F32"
        lines.append(
            f"| `{fx.name}` | {c['index_n_heads']} x {c['index_head_dim']} ({c['qk_rope_head_dim']}) | "
            f"{c['index_topk']} | {stor} | {st['index_dropped']}/{st['index_queries']} | {st['index_diag_dropped']} | "
            f"{index_margin(st):.2e} | "
            + (f"{g['index_dropped']}/{g['index_queries']} | {g['index_margin']:.2e} | " if g else "- | - | ")
            + f"{max(r['dsa']['d_scores'], (g or {}).get('d_idx_cache') or 0):.1e} |")
    lines += [
        "",
        "The DSA part matters: the logits move by the amounts below when the numpy spec forward is run with a",
        "deliberately wrong indexer (so an engine making one of these mistakes fails the fixture):",
        "",
        "| mistake | " + " | ".join(f"max abs logit change, `{r['fx'].name}`" for r in dsas) + " |",
        "| --- |" + " --- |" * len(dsas),
    ]
    for v, what in DSA_VARIANTS.items():
        cells = []
        for r in dsas:
            dv, bad = r["dsa"]["variants"][v]
            cells.append(f"NaN in {bad}/{len(r['ids'])} rows (an early query selects no visible key; the NaN spreads)"
                         if bad else f"{dv:.2f}")
        lines.append(f"| {what} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "(Positive constant factors such as H_I^-1/2 and D_I^-1/2 do not change the top-k sets, so the logits",
        "cannot detect them; `indexer_ref.f64` does.)",
        "",
    ]
    for r in ref:
        n, k = len(r["ids"]), r["c"]["index_topk"]
        lines += [
            f"`{r['fx'].name}` also holds the layer-0 indexer for its `ref_ids.i32` (from transformers in float64, equal",
            "to the numpy spec to ~1e-15):",
            "",
            f"- `indexer_ref.f64`: float64 LE `[{n}][{n}]`, row t = query, column s = key: I(t,s) for s <= t,",
            "  IEEE `-inf` for s > t (the causal mask).",
            f"- `indexer_topk.i32`: int32 LE `[{n}][{k}]`: the keys query t selects (top-`min({k}, t+1)` of row t,",
            "  visible keys only), sorted ascending, padded with -1 when t + 1 < index_topk.",
            "",
        ]
    return lines


def write_readme(out_root, results):
    gens = [r for r in results if r["gen"] is not None]
    toks = [r for r in results if r["tok"] is not None]
    dsas = [r for r in results if r["dsa"] is not None]
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
        f"{_names(gens)} also hold a greedy-generation reference (`gen_prompt.i32`, `gen_ids.i32`;",
        f"see below), and {_names(toks)} a tokenizer and a text prompt.",
        f"{_names(dsas)} are DeepSeek-V3.2 (DeepSeek Sparse Attention) fixtures; see the DSA section below.",
        "",
        "| fixture | class | covers | layers (dense) | hidden / heads | q_lora / kv_lora | nope / rope / v | "
        "experts (top-k, groups) / shared | vocab | ids | storage | size |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        c, fx = r["c"], r["fx"]
        grp = f"{c['n_group']}/{c['topk_group']}"
        lines.append(
            f"| `{fx.name}` | {c['architectures'][0]} | {fx.covers} | {c['num_hidden_layers']} "
            f"({c['first_k_dense_replace']}) | {c['hidden_size']} / {c['num_attention_heads']} | "
            f"{'null' if c['q_lora_rank'] is None else c['q_lora_rank']} / {c['kv_lora_rank']} | {c['qk_nope_head_dim']} / {c['qk_rope_head_dim']} / "
            f"{c['v_head_dim']} | {c['n_routed_experts']} (top {c['num_experts_per_tok']}, {grp}) / "
            f"{c['n_shared_experts']} | {c['vocab_size']} | {len(r['ids'])} | {fx.storage.upper()}"
            f"{', 2 shards' if fx.shards > 1 else ''} | {r['size'] / 1024:.0f} KiB |"
        )
    lines += [
        "",
        "Checks made when generating (see the script): file round trip; transformers' own",
        "`from_pretrained` loads every parameter from the directory with no missing/unexpected keys",
        "(except the MTP layer) and `save_pretrained` writes the same names and values (all but fp8);",
        "an independent float64 numpy forward written from the spec (official semantics) agrees;",
        "router decisions (group and expert top-k) have margins >= 1e-3 on the selection-score scale,",
        "so a float32 engine routes identically; for the DSA fixtures every lightning-indexer top-k boundary",
        f"has a relative margin >= {MIN_INDEX_MARGIN:g} (see the DSA section).",
        "",
        "| fixture | max abs diff vs numpy spec forward | vs plain HF `.double()` | vs HF float32 | "
        "min router margin | top-k changed by group limit | YaRN ramp |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        st = r["st"]
        lines.append(
            f"| `{r['fx'].name}` | {r['d_spec']:.1e} | {r['d_plain64']:.1e} | {r['d_plain32']:.1e} | "
            f"{router_margin(st):.2e} | {st['group_changed']}/{st['tokens']} | "
            f"{', '.join(f'{x:.3g}' for x in r['ramp'][:6])}{' ...' if len(r['ramp']) > 6 else ''} |"
        )
    lines += [
        "",
        "Suggested tolerances for an engine: float64 math ~1e-9 absolute; float32 math with exact",
        "weight upcast ~1e-4 absolute (|logits| are O(1), except `v3_nointerleave` whose tied head",
        "gives |logits| up to ~41: use ~1e-5 relative to max|logit| there). The 'vs HF float32' column",
        "shows what a float32 evaluation of the same model gives.",
        "",
        "## Greedy generation",
        "",
        "`gen_prompt.i32` holds the prompt ids and `gen_ids.i32` the ids generated after it (both int32 LE).",
        "They are what transformers' `model.generate(prompt, max_new_tokens=N, min_new_tokens=N, do_sample=False)`",
        f"returns (N = {'/'.join(sorted({str(len(r['gen']['gen'])) for r in gens}))}), run in float64 on the "
        "weights read back from the files, with generate's default",
        "KV cache (one forward over the whole prompt, then one forward per new token). `min_new_tokens = N`",
        "sets the EOS logit to -inf at every step, so EOS is never picked: an engine matches this by",
        "masking EOS before the argmax (dsc `--ignore-eos`). No other logits processor is active (checked:",
        "the processed scores equal the raw logits except at EOS). The prompt is fed verbatim (no BOS is",
        "added to it); random prompts contain neither BOS nor EOS. Prompt + N exceeds",
        "`original_max_position_embeddings`.",
        "",
        "Checks: the ids equal a plain argmax loop (EOS masked) over the full sequence without a cache; the",
        "numpy spec forward over prompt + ids[:-1] gives the same argmaxes and logits; transformers in",
        f"float32 generates the same ids; at every step the top-1 / top-2 margin is >= {MIN_LOGIT_MARGIN:g} (cache and",
        f"no-cache logits) and every router decision on the path has a margin >= {MIN_ROUTER_MARGIN:g} (DSA fixtures:",
        f"and every indexer top-k boundary a relative margin >= {MIN_INDEX_MARGIN:g}). A prompt failing",
        "any of these is re-drawn (random prompts: generator seeds seed*1000+500, +501, ...; text prompts:",
        "the next candidate text in the script).",
        "",
        "| fixture | prompt ids | generated ids | min top-1/top-2 margin | steps where EOS was the raw argmax | "
        "min router margin on the path | max abs diff cache vs no-cache logits |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in gens:
        g = r["gen"]
        lines.append(
            f"| `{r['fx'].name}` | {_ids(g['prompt'])} | {_ids(g['gen'])} | "
            f"{min(g['min_margin'], g['nocache_margin']):.2e} | {g['eos_picked']} | {g['router_margin']:.2e} | "
            f"{g['d_cache']:.1e} |"
        )
    lines += [
        "",
        "Minimum top-1/top-2 margin over all generation references: "
        f"{min(min(r['gen']['min_margin'], r['gen']['nocache_margin']) for r in gens):.2e}.",
        "",
    ]
    lines += dsa_readme(dsas)
    for r in toks:
        t, g, name = r["tok"], r["gen"], r["fx"].name
        lines += [
            f"## Tokenizer fixture `{name}`",
            "",
            f"`tokenizer.json` and `tokenizer_config.json` are byte copies of `tests/fixtures/{r['fx'].tokenizer}/`",
            f"(byte-level BPE, {t['vocab_size']} ids including the added tokens). `config.json` takes `vocab_size`",
            f"= {t['vocab_size']}, `bos_token_id` = {t['bos_token_id']} (`{BOS_TEXT}`) and `eos_token_id` = "
            f"{t['eos_token_id']} (`{EOS_TEXT}`) from it.",
            "",
            f"- `gen_prompt.txt`: the prompt `{g['text']}` (UTF-8, no trailing newline).",
            "- `gen_prompt.i32`: its ids from `transformers.PreTrainedTokenizerFast(tokenizer_file=tokenizer.json,",
            f"  bos_token, eos_token, add_bos_token={str(t['add_bos']).lower()}, "
            f"add_eos_token={str(t['add_eos']).lower()})`, the flags taken from",
            f"  `tokenizer_config.json`: {_ids(g['prompt'])}"
            + (f" (BOS {t['bos_token_id']} first)." if t["add_bos"] else "."),
            f"  `AutoTokenizer.from_pretrained(dir)` in transformers {transformers.__version__} gives "
            + ("the same ids." if g["auto_same"] else
               "the same ids without\n  the leading BOS: it drops `add_bos_token` / `add_eos_token` from "
               "`tokenizer_config.json` whenever a\n  `tokenizer.json` exists, and this `tokenizer.json` has a "
               "plain ByteLevel post-processor (FINDINGS.md section 10)."),
            "- `gen_ids.i32`: the greedy ids after that prompt, as above.",
            "- `gen_text.txt`: `decode(gen_ids)` with the same tokenizer (UTF-8, no trailing newline, special",
            "  tokens kept, no clean-up of spaces): "
            f"`{g['gen_text']}`.",
            "",
        ]
    lines += [
        "Notes:",
        "- `v3` also contains `model.layers.3.*` (an MTP module: embed_tokens copy, enorm, hnorm, eh_proj,",
        "  a full MoE decoder block, shared_head.norm, shared_head.head) that the forward must ignore.",
        "- `v3_nointerleave` has `tie_word_embeddings: true`; its files contain no `lm_head.weight`.",
        "- `v3_bf16`, `v3_fp8` and `v3_tok` have no `rope_interleave` key (default true), like the real V3 config.",
        "- `v2` and `v3_nointerleave` use the transformers-5 `rope_parameters` form (with `rope_theta`",
        "  inside); the others use the Hub form (`rope_scaling` with `type`, top-level `rope_theta`).",
        "- `v32` and `v32_fp8` have no `rope_interleave` key; transformers' V3.2 MLA is always interleaved.",
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
    unknown = set(a.only or ()) - {fx.name for fx in FIXTURES}
    if unknown:
        ap.error(f"unknown fixture(s): {', '.join(sorted(unknown))}")
    results = [make_fixture(fx, a.out) for fx in FIXTURES if not a.only or fx.name in a.only]
    if not a.only:
        write_readme(a.out, results)


if __name__ == "__main__":
    main()
