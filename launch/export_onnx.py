#!/usr/bin/env python3
"""export_onnx.py — a ddp-cnn checkpoint as an ONNX model (inference elsewhere: onnxruntime, TensorRT, ...).

    python3 launch/export_onnx.py CKPT.safetensors --out model.onnx [--opset N] [--height H --width W]
        [--softmax] [--no-check] [--trainer PATH]

The module is the one launch/torch_model.py builds from the checkpoint's stored configuration (metadata
config_ini), its tensors loaded with strict=True (optimizer state "optim.*" dropped), in eval mode (batch norm
from its running statistics, dropout off); torch.onnx.export (the TorchScript exporter, dynamo=False: it needs
no onnxscript) writes it with input "input" [N, C, H, W] float32 and output "logits" [N, classes] (with
--softmax "probabilities"), the batch axis N dynamic. C, H, W are the configuration's (--height/--width
override them, for a model whose global average pool takes any size). The input is what the trainer's
evaluation feeds the network: the image after its eval transforms (resize, center crop) and `normalize`
((pixel/255 - mean) / std per channel), NCHW.

Then, unless --no-check (or onnxruntime is not importable: a note says so), the file is checked with
onnx.checker and run by onnxruntime (CPU) on a random batch of 3, whose logits must equal PyTorch's within
1e-4 of their scale; the measured difference is printed. Exit 0 on success, 1 when the check fails, 2 on bad
input.

torch_model.py registers each layer as a submodule under the layer's name; names with dots (torchvision's
"layer1.0.conv1", which configs/resnet*.cfg use) are registered here as nested submodules instead, so the state
dict keys are the checkpoint's tensor names still (build_model below; used by import_torchvision.py too).
"""
import argparse
import inspect
import os
import sys
import warnings

import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import torch_model  # noqa: E402
from torch_model import load_safetensors, parse_config  # noqa: E402


def build_model(cfg):
    """The project's PyTorch module of a config (launch/torch_model.py; dotted layer names nest as torchvision's)."""
    return torch_model.build_model(cfg)


def load_checkpoint_model(path):
    """(module in eval mode with the checkpoint's tensors, parsed config, metadata)."""
    tensors, meta = load_safetensors(path)
    if "config_ini" not in meta:
        raise ValueError(f"{path}: holds no stored configuration (metadata config_ini)")
    cfg = parse_config(meta["config_ini"])
    model = build_model(cfg)
    sd = {k: v for k, v in tensors.items() if not k.startswith("optim.")}
    model.load_state_dict(sd, strict=True)
    model.eval()
    return model, cfg, meta


class _WithSoftmax(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return torch.softmax(self.m(x), dim=1)


def export(model, shape, out, opset, softmax):
    # eval mode on the wrapper too: torch.onnx.export restores the exported module's mode afterwards, recursively
    net = (_WithSoftmax(model) if softmax else model).eval()
    name = "probabilities" if softmax else "logits"
    x = torch.zeros((2,) + shape)
    kw = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    with warnings.catch_warnings():  # "legacy TorchScript-based ONNX export": chosen (no onnxscript needed)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, (x,), out, input_names=["input"], output_names=[name], opset_version=opset,
                          dynamic_axes={"input": {0: "batch"}, name: {0: "batch"}}, do_constant_folding=True, **kw)
    return net, name


def check(net, shape, out):
    try:
        import numpy as np
        import onnx
        import onnxruntime as ort
    except ImportError as e:
        print(f"export_onnx.py: note: {e.name} is not importable: the file is not checked", file=sys.stderr)
        return 0
    onnx.checker.check_model(onnx.load(out))
    sess = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(0)
    x = torch.randn((3,) + shape, generator=g)
    net.eval()
    with torch.no_grad():
        ref = net(x).numpy()
    got = sess.run(None, {"input": x.numpy()})[0]
    diff = float(np.abs(got - ref).max())
    scale = max(1e-3, float(np.abs(ref).max()))
    ok = got.shape == ref.shape and diff <= 1e-4 * scale
    print(f"onnxruntime {ort.__version__} on a random batch of 3: max |ort - torch| {diff:.3g} "
          f"(scale {scale:.3g}){'' if ok else '  MISMATCH'}")
    return 0 if ok else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpt")
    ap.add_argument("--out", required=True)
    ap.add_argument("--opset", type=int, default=17)
    ap.add_argument("--height", type=int)
    ap.add_argument("--width", type=int)
    ap.add_argument("--softmax", action="store_true", help="output probabilities instead of logits")
    ap.add_argument("--no-check", action="store_true", help="skip the onnx.checker + onnxruntime check")
    ap.add_argument("--trainer", help="the trainer for torch_model.py's layer registry (default: $TRAINER, "
                                      "else build/trainer)")
    a = ap.parse_args()
    if a.trainer:
        os.environ["TRAINER"] = a.trainer
    if not a.out.endswith(".onnx"):
        print(f"export_onnx.py: --out {a.out}: name an .onnx file", file=sys.stderr)
        return 2
    if os.path.abspath(a.out) == os.path.abspath(a.ckpt):
        print("export_onnx.py: --out is the checkpoint", file=sys.stderr)
        return 2
    try:
        model, cfg, _ = load_checkpoint_model(a.ckpt)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        print(f"export_onnx.py: {a.ckpt}: {e}", file=sys.stderr)
        return 2
    net = cfg["net"]
    shape = (int(net["channels"]), a.height or int(net["height"]), a.width or int(net["width"]))
    ex, _ = export(model, shape, a.out, a.opset, a.softmax)
    print(f"{a.out}: {a.ckpt} ({sum(p.numel() for p in model.parameters())} parameters), input [N,{shape[0]},"
          f"{shape[1]},{shape[2]}], opset {a.opset}, output {'probabilities' if a.softmax else 'logits'} "
          f"[N,{model.classes}]")
    return 0 if a.no_check else check(ex, shape, a.out)


if __name__ == "__main__":
    sys.exit(main())
