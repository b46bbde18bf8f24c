#!/usr/bin/env python3
"""dsc-trained checkpoint fixture (run by hand, never in CI): tests/fixtures/dsc_trained/.

Checks the issue's requirement that `dsc train` writes checkpoints in Hugging Face layout that
transformers' DeepseekV3ForCausalLM loads, with logits equal to `dsc logits`.

  1. builds dsc (`make -j2`; a no-op when up to date);
  2. trains a tiny DeepSeek-V3 model (3 layers: 1 dense + 2 MoE with noaux_tc routing, q_lora, YaRN)
     with `./build/dsc train` for 30 steps on a deterministic generated English-like text and the brown
     tokenizer (vocab 4096), fixed seed, one thread;
  3. keeps config.json, model.safetensors, tokenizer.json, tokenizer_config.json (the optimizer and trainer
     state are dropped) in tests/fixtures/dsc_trained/ (BF16 copy only if the F32 file exceeds 1.5 MB);
  4. loads that directory with transformers' DeepseekV3ForCausalLM.from_pretrained (eager) and requires
     no missing / unexpected / mismatched keys and weights equal to the files; then writes
     ref_ids.i32 and ref_logits.f64: the float64 logits of transformers' model (make_fixtures.py's
     Float64Mode, weights read back from the files) for ~20 ids, cross-checked against make_fixtures.py's
     independent numpy spec forward, with router margins >= 1e-3 (so an fp32 engine routes identically);
  5. writes tests/fixtures/dsc_trained/README.md.

Usage:  python3 tests/reference/make_trained_ckpt_fixture.py [--out tests/fixtures/dsc_trained]
Requires: torch, transformers (5.24 used), tokenizers, safetensors, numpy.
"""

import argparse
import io
import itertools
import json
import logging
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import tokenizers
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402  (helpers: Float64Mode, name mapping, loaders, spec forward)

import transformers  # noqa: E402
from transformers import DeepseekV3ForCausalLM  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

ROOT = mf.ROOT
COMMAND = "python3 tests/reference/make_trained_ckpt_fixture.py"
TOKDIR = os.path.join(ROOT, "tests", "fixtures", "tokenizer_brown")
KEEP = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
MAX_BYTES = 1536 * 1024
N_IDS = 20
STEPS = 30
SEED = 7
TRAIN_ARGS = ["--steps", str(STEPS), "--batch", "4", "--seq", "64", "--lr", "1e-2", "--warmup", "3",
              "--init-std", "0.02", "--seed", str(SEED), "--eval-every", str(STEPS), "-t", "1"]

# The model dsc trains: tiny V3 (3 layers, 1 dense + 2 MoE with noaux_tc and group limiting), q_lora,
# YaRN (factor 8 over 16 original positions; mscale == mscale_all_dim so HF's attention_factor is 1).
CONFIG = {
    "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
    "vocab_size": 4096, "hidden_size": 32, "intermediate_size": 48, "moe_intermediate_size": 16,
    "num_hidden_layers": 3, "first_k_dense_replace": 1, "moe_layer_freq": 1,
    "num_attention_heads": 2, "num_key_value_heads": 2, "q_lora_rank": 16, "kv_lora_rank": 16,
    "qk_nope_head_dim": 8, "qk_rope_head_dim": 64, "v_head_dim": 8,
    "n_routed_experts": 8, "n_shared_experts": 1, "num_experts_per_tok": 2, "n_group": 4, "topk_group": 2,
    "topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": True, "routed_scaling_factor": 2.5,
    "num_nextn_predict_layers": 0, "max_position_embeddings": 128, "rms_norm_eps": 1e-06,
    "rope_theta": 10000,
    "rope_scaling": {"type": "yarn", "factor": 8, "original_max_position_embeddings": 16,
                     "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
    "bos_token_id": 0, "eos_token_id": 1, "tie_word_embeddings": False,
}

WORDS = {
    "det": ["the", "a", "one", "every", "that", "this"],
    "adj": ["big", "small", "red", "old", "quiet", "happy", "dark", "green", "long", "young"],
    "noun": ["cat", "dog", "house", "river", "child", "teacher", "garden", "city", "bird", "road",
             "window", "letter", "farmer", "horse", "tree", "boat"],
    "verb": ["saw", "found", "liked", "followed", "painted", "watched", "helped", "carried", "opened", "heard"],
    "iverb": ["slept", "waited", "sang", "ran", "smiled", "laughed", "arrived", "stayed"],
    "prep": ["near", "under", "behind", "across", "beside", "over", "into"],
    "adv": ["slowly", "quietly", "again", "today", "early", "later"],
    "conj": ["and", "but", "while", "because"],
}


def write_text(path, n_lines=400, seed=SEED):
    """Deterministic English-like sentences from a small grammar; a blank line after every 10th line."""
    r = random.Random(seed)
    pick = lambda k: r.choice(WORDS[k])  # noqa: E731

    def np_():
        return " ".join([pick("det")] + ([pick("adj")] if r.random() < 0.5 else []) + [pick("noun")])

    def clause():
        if r.random() < 0.5:
            s = f"{np_()} {pick('verb')} {np_()}"
        else:
            s = f"{np_()} {pick('iverb')}"
        if r.random() < 0.4:
            s += f" {pick('prep')} {np_()}"
        if r.random() < 0.3:
            s += f" {pick('adv')}"
        return s

    lines = []
    for i in range(n_lines):
        s = clause()
        if r.random() < 0.35:
            s += f" {pick('conj')} {clause()}"
        lines.append(s[0].upper() + s[1:] + ".")
        if i % 10 == 9:
            lines.append("")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return lines


def run(cmd, **kw):
    print("+ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT, check=True, **kw)


def train(tmp):
    run(["make", "-j2"], stdout=subprocess.DEVNULL)
    data = os.path.join(tmp, "data.txt")
    lines = write_text(data)
    cfg = mf.write_json(os.path.join(tmp, "config.json"), CONFIG)
    out = os.path.join(tmp, "out")
    cmd = ["./build/dsc", "train", "-m", out, "--data", data, "--tokenizer", TOKDIR, "--config", cfg] + TRAIN_ARGS
    p = run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = p.stdout
    tail = [l.replace(out, "OUT") for l in log.splitlines() if l.startswith(("step 1/", f"step {STEPS}", "dsc:"))]
    # without the timings, so that the README is reproducible byte for byte
    tail = [re.sub(r" in [0-9.]+ s \([0-9]+ tok/s\)| [0-9]+ tok/s", "", " ".join(l.split()))
            for l in tail if " saved " not in l]
    print("\n".join(tail))
    shown = ["./build/dsc", "train", "-m", "OUT", "--data", "data.txt", "--tokenizer",
             "tests/fixtures/tokenizer_brown", "--config", "config.json"] + TRAIN_ARGS
    return out, lines, tail, " ".join(shown), sorted(os.listdir(out))


def store(src, d):
    """Copy the kept files; BF16 (bias F32) only when the F32 weights are over MAX_BYTES."""
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    for fn in KEEP:
        shutil.copy(os.path.join(src, fn), os.path.join(d, fn))
    path = os.path.join(d, "model.safetensors")
    storage = "F32 (as dsc train wrote it, byte for byte)"
    if os.path.getsize(path) > MAX_BYTES:
        st = mf.read_weights(d)
        bf = {n: (t if n.endswith("e_score_correction_bias") else t.bfloat16()) for n, t in st.items()}
        save_file(bf, path, metadata={"format": "pt"})
        storage = "BF16 (converted from dsc's F32 file; e_score_correction_bias kept F32)"
    return storage


class LogCapture:
    """Everything transformers logs (warnings included) while active."""

    def __enter__(self):
        self.buf = io.StringIO()
        self.h = logging.StreamHandler(self.buf)
        self.lg = logging.getLogger("transformers")
        self.old = self.lg.level
        self.lg.addHandler(self.h)
        self.lg.setLevel(logging.WARNING)
        return self

    def __exit__(self, *a):
        self.lg.removeHandler(self.h)
        self.lg.setLevel(self.old)
        self.text = self.buf.getvalue().strip()


def hf_load(d, c, hf64):
    """transformers' own from_pretrained on the directory: report keys and warnings, compare weights."""
    import warnings as w
    with LogCapture() as cap, w.catch_warnings(record=True) as pyw:
        w.simplefilter("always")
        m, info = DeepseekV3ForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager",
                                                        experts_implementation="eager", output_loading_info=True)
    keys = {k: sorted(info[k]) for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")}
    warns = [l for l in cap.text.splitlines() if l.strip()] + [str(x.message) for x in pyw]
    print(f"  from_pretrained: {keys}; {len(warns)} log/warning lines")
    for l in warns:
        print("    " + l)
    assert not any(keys.values()), f"transformers reports key problems: {keys}"
    sd = m.state_dict()
    assert set(sd) == set(hf64), sorted(set(sd) ^ set(hf64))
    for n, t in sd.items():
        assert torch.equal(t, hf64[n].float()), n
    m.eval()
    return m, keys, warns


def candidate_ids(lines, tok):
    """BOS + the encoding of consecutive sentences of the training text's grammar (new draws), cut to N_IDS."""
    r = random.Random(SEED + 1)
    while True:
        i = r.randrange(len(lines) - 8)
        text = " ".join(l for l in lines[i:i + 8] if l)
        ids = [tok["bos_token_id"]] + tok["tokenizer"].encode(text, add_special_tokens=False).ids
        if len(ids) >= N_IDS:
            yield ids[:N_IDS]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "dsc_trained"))
    a = ap.parse_args()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, numpy {np.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        src, lines, tail, train_cmd, written = train(tmp)
        storage = store(src, a.out)
    d = a.out
    c = json.load(open(os.path.join(d, "config.json")))
    stored = mf.read_weights(d)
    dtypes = sorted({str(t.dtype).replace("torch.", "") for t in stored.values()})
    ck64 = mf.decode(stored)
    hf64 = mf.checkpoint_to_hf(ck64, c)

    plain, keys, warns = hf_load(d, c, hf64)
    ref, mode, ramp = mf.reference_model(d, c, hf64)
    W = {n: t.numpy() for n, t in ck64.items()}
    tok = {"tokenizer": tokenizers.Tokenizer.from_file(os.path.join(d, "tokenizer.json")),
           "bos_token_id": c["bos_token_id"]}

    def evaluate(ids):
        spec, st = mf.spec_forward(c, W, ids)
        return mf.router_margin(st) >= mf.MIN_ROUTER_MARGIN, (ids, spec, st)

    attempt, (ids, spec, st) = mf.first_safe(itertools.islice(candidate_ids(lines, tok), 200), evaluate, "id sequence")
    assert len(ids) > CONFIG["rope_scaling"]["original_max_position_embeddings"]
    logits = mf.forward(ref, ids, mode).numpy()
    d_spec = float(np.abs(logits - spec).max())
    d_f32 = float(np.abs(mf.forward(plain, ids).double().numpy() - logits).max())
    assert d_spec < 1e-12, d_spec
    mf.write_i32(os.path.join(d, "ref_ids.i32"), ids)
    logits.astype("<f8").tofile(os.path.join(d, "ref_logits.f64"))
    text = tok["tokenizer"].decode(ids[1:])
    print(f"  ids (attempt {attempt}): {ids}\n  = BOS + {text!r}")
    print(f"  |logits| max {np.abs(logits).max():.3f}; vs numpy spec {d_spec:.2g}; vs HF float32 {d_f32:.2g}; "
          f"router margin {mf.router_margin(st):.3g}; group limit changed {st['group_changed']}/{st['tokens']}")

    sizes = {fn: os.path.getsize(os.path.join(d, fn)) for fn in sorted(os.listdir(d)) if fn != "README.md"}
    hf_keys = ", ".join(f"{k}: {v if v else 'none'}" for k, v in keys.items())
    readme = f"""# dsc_trained: a checkpoint written by `dsc train`, loaded by transformers

Generated by `{COMMAND}` (torch {torch.__version__}, transformers {transformers.__version__},
numpy {np.__version__}); do not edit by hand. Checked by `tests/e2e/test_trained_ckpt.c`.

**What it is.** The model directory that `dsc train` wrote after {STEPS} steps of training a new tiny
DeepSeek-V3 model (3 layers: 1 dense + 2 MoE, 8 routed experts top-2 in 4 groups / keep 2, noaux_tc sigmoid
router with the aux-loss-free bias update, 1 shared expert, q_lora 16, kv_lora 16, nope/rope/v 8/64/8,
YaRN factor 8 over 16 original positions, hidden 32, 2 heads, vocab 4096 = the brown tokenizer) on a
deterministic generated English-like text ({len([l for l in lines if l])} sentences, written by the
script). Kept: {", ".join(KEEP)} (dsc also wrote {", ".join(f for f in written if f not in KEEP)}; dropped).
Weights: {storage}; dtypes in the file: {", ".join(dtypes)}.

**Training command** (in a temporary directory; `config.json` = `CONFIG` in the script, `data.txt` =
`write_text()`):

    {train_cmd}

Log: {" | ".join(tail)}

**transformers' view.** `DeepseekV3ForCausalLM.from_pretrained(dir, dtype=float32, attn_implementation="eager",
experts_implementation="eager", output_loading_info=True)` on this directory as committed:
{hf_keys}. Log / warning lines while loading: {len(warns)}{"" if not warns else " (" + " / ".join(warns) + ")"}.
Every parameter equals the file's tensors (per-expert `gate_proj`/`up_proj`/`down_proj` fused by the
loader into `experts.gate_up_proj` / `experts.down_proj`, FINDINGS.md section 5).

**Reference.** `ref_ids.i32`: {len(ids)} ids = BOS + the brown-tokenizer encoding of new sentences of the
training grammar ({text!r}). `ref_logits.f64`: float64 LE `[{len(ids)}][{c["vocab_size"]}]`, one forward pass
(positions 0..{len(ids) - 1}, no cache) of transformers' model in true float64 (make_fixtures.py's
`Float64Mode`, weights read back from the files). Checks: make_fixtures.py's independent numpy spec
forward agrees to {d_spec:.2g}; transformers in float32 (the plain `from_pretrained` model) differs by
{d_f32:.2g}; router margins (top-k and group boundaries on the selection-score scale) >= {mf.router_margin(st):.3g}
(threshold {mf.MIN_ROUTER_MARGIN}); group limiting changes the top-k for {st["group_changed"]}/{st["tokens"]}
token-layer pairs; YaRN ramp {", ".join(f"{v:.3g}" for v in ramp)}; max |logit| {np.abs(logits).max():.3f}.

| file | bytes |
| --- | --- |
""" + "".join(f"| `{fn}` | {n} |\n" for fn, n in sizes.items())
    with open(os.path.join(d, "README.md"), "w") as f:
        f.write(readme)
    print(f"wrote {d}: " + ", ".join(f"{fn} {n}" for fn, n in sizes.items()))


if __name__ == "__main__":
    main()
