#!/usr/bin/env python3
"""torch_parity.py DUMP.safetensors [--tol 1e-4] — ddp-cnn's loss and gradients (grad_dump) against PyTorch.

Builds the PyTorch module for the dump's stored config (launch/torch_model.py), loads the same parameters with
strict=True, runs the same batch in training mode and compares the mean loss and every parameter gradient:
error = max |ours − torch| / max(1e-3, max |torch|) per tensor. Prints one line per tensor and exits 1 when any
error exceeds the tolerance.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "launch"))
from torch_model import build_model, load_safetensors, parse_config  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dump")
    ap.add_argument("--tol", type=float, default=1e-4)
    a = ap.parse_args()
    torch.set_default_dtype(torch.float32)
    t, meta = load_safetensors(a.dump)
    model = build_model(parse_config(meta["config_ini"]))
    sd = {k: v for k, v in t.items() if not k.startswith("grad.") and k not in ("input", "labels", "loss")
          and not k.startswith("mask.") and not k.startswith("after.")}
    model.load_state_dict(sd, strict=True)
    for name, mod in model.named_modules():
        if ("mask." + name) in t:
            mod.mask = t["mask." + name]
    model.train()
    x, y = t["input"], t["labels"].long()
    loss = model.loss(model(x), y)
    loss.backward()
    worst = 0.0
    rows = [("loss", abs(loss.item() - t["loss"].item()) / max(1e-3, abs(loss.item())))]
    for name, p in model.named_parameters():
        ref = p.grad
        ours = t["grad." + name]
        rows.append((name, ((ours - ref).abs().max() / max(1e-3, ref.abs().max().item())).item()))
    for name, buf in model.named_buffers():  # running statistics after the one training forward
        if ("after." + name) in t:
            ref = buf.double()
            rows.append((name + " (after)", ((t["after." + name].double() - ref).abs().max()
                                             / max(1e-3, ref.abs().max().item())).item()))
    for name, err in rows:
        worst = max(worst, err)
        print(f"{name:32s} {err:.2e}{'  FAIL' if err > a.tol else ''}")
    print(f"worst {worst:.2e} (tolerance {a.tol:g})")
    sys.exit(1 if worst > a.tol else 0)


if __name__ == "__main__":
    main()
