#!/usr/bin/env python3
"""bench_torch.py — the reference CNN in PyTorch on the CPU, for a side-by-side with ddp-cnn.

Same model (Conv 32 3x3 relu, MaxPool 2, Conv 64 3x3 relu, MaxPool 2, Dense 64 relu, Dense 10), Adam 1e-3
with eps 1e-7, sparse categorical cross-entropy, same batch and threads, data already in memory as float
tensors (so only the training step is timed). Prints one line: `torch images_per_s=<v> ...`.
Benchmark only: nothing in the test suite depends on PyTorch.
"""
import argparse
import gzip
import struct
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def load_idx(images_path, labels_path):
    with gzip.open(images_path, "rb") as f:
        magic, n, rows, cols = struct.unpack(">IIII", f.read(16))
        assert magic == 0x803, images_path
        x = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8).reshape(n, 1, rows, cols)
    with gzip.open(labels_path, "rb") as f:
        magic, n2 = struct.unpack(">II", f.read(8))
        assert magic == 0x801 and n2 == n, labels_path
        y = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8).long()
    return x.float().div_(255.0), y


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.dense1 = nn.Linear(1600, 64)
        self.dense2 = nn.Linear(64, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.dense1(torch.flatten(x, 1)))
        return self.dense2(x)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=20)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    x, y = load_idx(f"{a.data}/train-images-idx3-ubyte.gz", f"{a.data}/train-labels-idx1-ubyte.gz")
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
    perm = torch.randperm(x.shape[0])

    def step(i):
        idx = perm[(i * a.batch) % (x.shape[0] - a.batch):][: a.batch]
        xb, yb = x[idx], y[idx]
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        return loss

    for i in range(a.warmup):
        step(i)
    t0 = time.perf_counter()
    for i in range(a.steps):
        step(i)
    dt = time.perf_counter() - t0
    print(f"torch images_per_s={a.steps * a.batch / dt:.1f} step_ms={dt / a.steps * 1e3:.3f} "
          f"batch={a.batch} threads={a.threads} version={torch.__version__}")


if __name__ == "__main__":
    main()
