#!/usr/bin/env python3
"""torch_check_ckpt.py — load a ddp-cnn checkpoint into the equivalent PyTorch module and evaluate it.

    python3 launch/torch_check_ckpt.py CKPT.safetensors [--data DIR] [--expect-acc X]

Proves that checkpoints are PyTorch state dicts as they are: the model tensors (everything not under
`optim.`: parameters, and batch norm's running_mean, running_var and num_batches_tracked, an int64 scalar) go
into `load_state_dict(strict=True)` unchanged -- of the module launch/torch_model.py builds from the
checkpoint's stored configuration (config_ini), or of the reference CNN for a file without one -- and the test
accuracy PyTorch computes in eval mode (running statistics) equals the one the trainer printed (within 1e-3
when --expect-acc is given; exit 1 otherwise). The safetensors file is parsed with the standard library
(launch/torch_model.py's reader: 8-byte length, JSON header, raw F32/I64), so neither the `safetensors` package
nor ddp-cnn code is involved. Needs Debian's python3-torch; a check, not a test dependency.
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_torch import Net, load_idx  # noqa: E402  the same reference CNN and IDX reader as the benchmark
from torch_model import build_model, load_safetensors, parse_config  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpt")
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--expect-acc", type=float)
    a = ap.parse_args()
    tensors, meta = load_safetensors(a.ckpt)
    sd = {k: v for k, v in tensors.items() if not k.startswith("optim.")}
    model = build_model(parse_config(meta["config_ini"])) if "config_ini" in meta else Net()
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
