#!/usr/bin/env python3
"""PyTorch companion of bench_train (run by it through popen, or by hand).

Builds transformers' DeepseekV3ForCausalLM from a dsc config.json (eager attention, eager
experts, float32), then times training steps on CPU exactly as bench_train times dsc's:
one step = zero_grad + forward over tokens[:, :T] + mean cross-entropy against tokens[:, 1:]
(all T positions, no HF label shift) + backward + AdamW (betas 0.9/0.95, eps 1e-8, wd 0.1).
No gradient clipping on either side. Warm-up steps first, then the median of `--steps`.

The weights are those of the dsc checkpoint in --model-dir when transformers can load it
(the same values dsc trains, so the routing is the same); otherwise transformers' own random
init from the same config (said on stdout). The speed of a step does not depend on the values,
except through how evenly the router spreads the tokens.

The last line of stdout is machine-read by bench_train:
  TORCH_RESULT tok_s=<f> step_ms=<f> fwd_ms=<f> loss=<f> threads=<n> init=<dsc|random>
"""

import argparse
import json
import os
import statistics
import sys
import time
import warnings


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="config.json (dsc / Hugging Face form)")
    ap.add_argument("--model-dir", default=None, help="dsc checkpoint to load the weights from")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1234)
    a = ap.parse_args()

    import torch
    torch.set_num_threads(a.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    warnings.filterwarnings("ignore")
    import transformers
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM
    transformers.logging.set_verbosity_error()

    with open(a.config) as f:
        cd = json.load(f)
    # MLA: one KV head per query head (dsc's configs may leave it out; transformers needs it)
    cd.setdefault("num_key_value_heads", cd["num_attention_heads"])
    cfg = DeepseekV3Config(**{k: v for k, v in cd.items() if k != "architectures"})
    cfg._attn_implementation = "eager"
    cfg._experts_implementation = "eager"
    model, init = None, "random"
    if a.model_dir:
        try:
            model, info = DeepseekV3ForCausalLM.from_pretrained(
                a.model_dir, config=cfg, dtype=torch.float32, attn_implementation="eager",
                experts_implementation="eager", output_loading_info=True)
            init = "dsc"
            if info.get("missing_keys") or info.get("unexpected_keys"):
                print(f"note: {len(info.get('missing_keys') or [])} missing / "
                      f"{len(info.get('unexpected_keys') or [])} unexpected keys in {a.model_dir}")
                init = "dsc-partial"
        except Exception as ex:  # noqa: BLE001 - any failure falls back to a fresh init
            print(f"note: could not load {a.model_dir} ({type(ex).__name__}: {ex}); "
                  "random init instead")
            model = None
    if model is None:
        torch.manual_seed(a.seed)
        model = DeepseekV3ForCausalLM(cfg).float()
    assert model.config._attn_implementation == "eager"
    model.train()
    c = model.config
    n_par = sum(p.numel() for p in model.parameters())
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{torch.get_num_threads()} thread(s), {n_par} params, weights: {init}, "
          f"attn {c._attn_implementation}, experts {getattr(c, '_experts_implementation', '?')}")

    V = c.vocab_size
    g = torch.Generator().manual_seed(a.seed)
    tokens = torch.randint(0, V, (a.batch, a.seq + 1), generator=g)
    inp, tgt = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    # decay only matrices (as dsc: norms and the router bias get none)
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    nodecay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": nodecay, "weight_decay": 0.0}],
                            lr=1e-4, betas=(0.9, 0.95), eps=1e-8, foreach=True)

    def step():
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        logits = model(input_ids=inp, use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), tgt.reshape(-1))
        t1 = time.perf_counter()
        loss.backward()
        opt.step()
        t2 = time.perf_counter()
        return t2 - t0, t1 - t0, float(loss)

    for _ in range(a.warmup):
        step()
    times, fwds, loss = [], [], float("nan")
    for _ in range(a.steps):
        dt, df, loss = step()
        times.append(dt)
        fwds.append(df)
    med = statistics.median(times)
    fmed = statistics.median(fwds)
    tok_s = a.batch * a.seq / med
    print("steps ms: " + " ".join(f"{t * 1e3:.1f}" for t in times))
    print(f"TORCH_RESULT tok_s={tok_s:.3f} step_ms={med * 1e3:.3f} fwd_ms={fmed * 1e3:.3f} "
          f"loss={loss:.6f} threads={torch.get_num_threads()} init={init}")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
