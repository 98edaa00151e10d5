#!/usr/bin/env python3
"""torch_check_ckpt.py — load a ddp-cnn checkpoint into the equivalent PyTorch module and evaluate it.

    python3 launch/torch_check_ckpt.py CKPT.safetensors [--data DIR] [--expect-acc X]

Proves that checkpoints are PyTorch state dicts as they are: the model tensors (everything not under
`optim.`) go into `load_state_dict(strict=True)` of the reference CNN unchanged, and the test accuracy PyTorch
computes equals the one the trainer printed (within 1e-3 when --expect-acc is given; exit 1 otherwise).
The safetensors file is parsed here with the standard library (8-byte length, JSON header, raw f32), so
neither the `safetensors` package nor ddp-cnn code is involved. Needs Debian's python3-torch; a check, not a
test dependency.
"""
import argparse
import json
import os
import struct
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_torch import Net, load_idx  # noqa: E402  the same reference CNN and IDX reader as the benchmark


def load_safetensors(path):
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    meta = header.pop("__metadata__", {})
    base = 8 + n
    out = {}
    for name, e in header.items():
        assert e["dtype"] == "F32", (name, e["dtype"])
        b, t = e["data_offsets"]
        out[name] = torch.frombuffer(bytearray(blob[base + b:base + t]), dtype=torch.float32).reshape(e["shape"])
    return out, meta


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpt")
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--expect-acc", type=float)
    a = ap.parse_args()
    tensors, meta = load_safetensors(a.ckpt)
    sd = {k: v for k, v in tensors.items() if not k.startswith("optim.")}
    model = Net()
    model.load_state_dict(sd, strict=True)
    model.eval()
    x, y = load_idx(f"{a.data}/t10k-images-idx3-ubyte.gz", f"{a.data}/t10k-labels-idx1-ubyte.gz")
    with torch.no_grad():
        logits = model(x)
        loss = F.cross_entropy(logits, y).item()
        acc = (logits.argmax(1) == y).float().mean().item()
    print(f"torch: loaded {len(sd)} tensors (+{len(tensors) - len(sd)} optimizer tensors, metadata keys "
          f"{sorted(meta)}); test loss {loss:.4f} test accuracy {acc:.4f}")
    if a.expect_acc is not None and abs(acc - a.expect_acc) > 1e-3:
        print(f"MISMATCH: trainer reported {a.expect_acc:.4f}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
