#!/usr/bin/env python3
"""torch_model.py — the PyTorch nn.Module equivalent to any ddp-cnn config, and a safetensors reader.

    from torch_model import parse_config, config_of, build_model, load_safetensors
    cfg = parse_config(open("configs/fashion_resnet.cfg").read())   # or a checkpoint's stored config_ini
    cfg = config_of("configs/resnet50.cfg")   # a file ([include]/[repeat] expanded by the trainer) or a checkpoint
    model = build_model(cfg)            # parameters and buffers named as ddp-cnn names its tensors
    model.load_state_dict(tensors, strict=True)

    python3 launch/torch_model.py CONFIG_OR_CKPT     # print the module and its parameter count

Each layer section becomes a submodule registered under the layer's name, so the state dict keys are the
checkpoint's tensor names ("conv1.weight", "bn1.running_mean", ...). The graph follows the trainer's rules: a
layer reads the previous layer's output, [shortcut] adds the output of `from`, [route] concatenates `layers`
along channels; negative references are relative (-1 = the previous layer), non-negative ones absolute.
forward(x) returns the logits (the input of [softmax]); the loss is F.cross_entropy with net.label_smoothing.
Benchmarks and parity checks only: nothing in the trainer depends on PyTorch.
"""
import json
import struct
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

LEAKY_SLOPE = 0.1


# ---------------------------------------------------------------------------------------------------------
# Config: Darknet-style INI with repeated layer sections (configparser cannot hold those)

def _unquote(v):
    """A quoted config value ("..." with \\\\ \\" \\n \\t \\xHH escapes, as config_print writes one) as its text."""
    out, i = [], 1
    while i < len(v) and v[i] != '"':
        if v[i] == "\\":
            e = v[i + 1]
            if e == "x":
                out.append(chr(int(v[i + 2:i + 4], 16)))
                i += 4
                continue
            out.append({"n": "\n", "t": "\t"}.get(e, e))
            i += 2
            continue
        out.append(v[i])
        i += 1
    return "".join(out)


def parse_config(text):
    """{'net': {...}, 'data': {...}, 'parallel': {...}, 'layers': [(section, {key: value}), ...]} as strings.
    Reads what the trainer reads: comments, and quoted values continued on indented lines (config_print writes
    long or unusual values so)."""
    cfg = {"net": {}, "data": {}, "parallel": {}, "layers": []}
    cur, open_key = None, None
    for raw in text.splitlines():
        if open_key and raw[:1] in (" ", "\t") and raw.strip():  # a quoted value goes on
            cur[open_key] += raw.strip()
            if cur[open_key].endswith('"') and not cur[open_key].endswith('\\"'):
                cur[open_key], open_key = _unquote(cur[open_key]), None
            continue
        open_key = None
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            name = line[1:line.index("]")].strip()
            if name in ("net", "data", "parallel"):
                cur = cfg[name]
            else:
                cfg["layers"].append((name, {}))
                cur = cfg["layers"][-1][1]
            continue
        k, v = line.split("=", 1)
        k, v = k.strip(), v.strip()
        if v.startswith('"'):
            if len(v) > 1 and v.endswith('"') and not v.endswith('\\"'):
                v = _unquote(v)
            else:
                open_key = k
        else:
            v = v.split(" ;", 1)[0].strip()
        cur[k] = v
    return cfg


# ---------------------------------------------------------------------------------------------------------
# Layer kinds: names and keys from the trainer's own registry (trainer --list-layers --json)

_REGISTRY = None


def registry():
    """{section: kind} from `trainer --list-layers --json`: the trainer found as $TRAINER, else the repository's
    build/trainer. One source for the default names (conv1, pool1, drop1, bn1, ...)."""
    global _REGISTRY
    if _REGISTRY is None:
        import os
        import subprocess
        here = os.path.dirname(os.path.abspath(__file__))
        trainer = os.environ.get("TRAINER") or os.path.join(here, "..", "build", "trainer")
        try:
            # Not as a rank of the launcher this script may run under (mpirun's variables would make the
            # trainer join that job): the registry query is a plain process.
            env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_", "PMI_"))}
            out = subprocess.run([trainer, "--list-layers", "--json"], capture_output=True, text=True, check=True,
                                 env=env)
        except (OSError, subprocess.CalledProcessError) as e:
            raise RuntimeError(f"torch_model.py needs the trainer's layer registry: {trainer} --list-layers --json "
                               f"failed ({e}); build it (launch/test.sh) or set TRAINER") from None
        _REGISTRY = {k["section"]: k for k in json.loads(out.stdout)}
    return _REGISTRY


def expanded_config(path):
    """A config file as the trainer reads it: one with [include] or [repeat] sections (configs/resnet50.cfg,
    mobilenet_v2.cfg) is expanded by the trainer itself (`--print-config`, the trainer found as registry() finds
    it), so the expansion rules live in one place."""
    import os
    import subprocess
    text = open(path).read()
    if not any(line.strip().startswith(("[include]", "[repeat]")) for line in text.splitlines()):
        return parse_config(text)
    here = os.path.dirname(os.path.abspath(__file__))
    trainer = os.environ.get("TRAINER") or os.path.join(here, "..", "build", "trainer")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_", "PMI_"))}  # as registry()
    try:
        out = subprocess.run([trainer, "--config", path, "--print-config"], capture_output=True, text=True,
                             check=True, env=env)
    except (OSError, subprocess.CalledProcessError) as e:
        err = (getattr(e, "stderr", "") or "").strip()
        raise RuntimeError(f"torch_model.py needs the trainer to expand {path}: {trainer} --print-config failed "
                           f"({err or e}); build it (launch/test.sh) or set TRAINER") from None
    return parse_config(out.stdout)


# The trainer's activation names (trainer --list-layers) as PyTorch functions; gelu is the exact erf form.
ACTIVATIONS = {
    "linear": lambda x: x,
    "relu": F.relu,
    "leaky": lambda x: F.leaky_relu(x, LEAKY_SLOPE),
    "relu6": F.relu6,
    "sigmoid": torch.sigmoid,
    "silu": F.silu,
    "hardswish": F.hardswish,
    "gelu": lambda x: F.gelu(x, approximate="none"),
}


def act_fn(name):
    return ACTIVATIONS[name]


def refs(spec, i):
    out = []
    for s in spec.split(","):
        v = int(s)
        out.append(i + v if v < 0 else v)
    return out


# ---------------------------------------------------------------------------------------------------------
# The module

class Dropout(nn.Module):
    """nn.Dropout, or (parity checks) multiplied by a given keep mask so that both sides drop the same units."""

    def __init__(self, rate):
        super().__init__()
        self.rate = rate
        self.mask = None

    def forward(self, x):
        if not self.training or self.rate == 0:
            return x
        if self.mask is not None:
            return x * self.mask / (1.0 - self.rate)
        return F.dropout(x, self.rate, True)


class CfgNet(nn.Module):
    """The config's network. Layer names may hold dots (torchvision's module paths): "layer1.0.conv1" is nested as
    self.layer1 -> "0" -> conv1 (plain containers), so state_dict() names its weight "layer1.0.conv1.weight" as
    torchvision's ResNet does, and getattr(self, "layer1.0.conv1") finds it."""

    def add_module(self, name, module):
        if "." not in name:
            return super().add_module(name, module)
        parent = self
        *path, leaf = name.split(".")
        for p in path:
            child = parent._modules.get(p)
            if child is None:
                child = nn.Module()
                nn.Module.add_module(parent, p, child)
            parent = child
        nn.Module.add_module(parent, leaf, module)
        self.__dict__.setdefault("_dotted", {})[name] = module
        return None

    def __getattr__(self, name):
        dotted = self.__dict__.get("_dotted")
        if dotted is not None and name in dotted:
            return dotted[name]
        return super().__getattr__(name)

    def __init__(self, cfg):
        super().__init__()
        net = cfg["net"]
        c, h, w = int(net["channels"]), int(net["height"]), int(net["width"])
        self.classes = int(net.get("classes", 10))
        self.label_smoothing = float(net.get("label_smoothing", 0))
        self.plan = []  # (kind, name, input indices, options)
        shapes = []     # output (c, h, w) per layer; h = w = 0 once flat
        names = {}
        for i, (kind, keys) in enumerate(cfg["layers"]):
            name = keys.get("name") or self._default_name(kind, names)
            names.setdefault(kind, 0)
            names[kind] += 1
            prev = (c, h, w) if i == 0 else shapes[i - 1]
            ins = [i - 1]
            act = keys.get("activation", "relu" if kind == "conv" else "linear")
            bias = keys.get("bias", "1") == "1"
            opt = {"act": act}
            if kind == "conv":
                size, stride, pad = int(keys.get("size", 3)), int(keys.get("stride", 1)), int(keys.get("pad", 0))
                groups, dil = int(keys.get("groups", 1)), int(keys.get("dilation", 1))
                k = int(keys["filters"])
                self.add_module(name, nn.Conv2d(prev[0], k, size, stride, pad, dilation=dil, groups=groups, bias=bias))
                span = dil * (size - 1) + 1
                out = (k, (prev[1] + 2 * pad - span) // stride + 1, (prev[2] + 2 * pad - span) // stride + 1)
            elif kind == "maxpool":
                size = int(keys.get("size", 2))
                stride = int(keys.get("stride", 0)) or size
                pad = int(keys.get("pad", 0))
                opt.update(size=size, stride=stride, pad=pad)
                out = (prev[0], (prev[1] + 2 * pad - size) // stride + 1, (prev[2] + 2 * pad - size) // stride + 1)
            elif kind == "avgpool":
                size = int(keys.get("size", 0))
                stride = int(keys.get("stride", 0)) or size
                opt.update(size=size, stride=stride)
                out = (prev[0], 1, 1) if size == 0 else (prev[0], (prev[1] - size) // stride + 1,
                                                         (prev[2] - size) // stride + 1)
            elif kind == "dense":
                n_in = prev[0] * max(prev[1], 1) * max(prev[2], 1)
                units = int(keys["units"])
                self.add_module(name, nn.Linear(n_in, units, bias=bias))
                out = (units, 0, 0)
            elif kind == "flatten":
                out = (prev[0] * prev[1] * prev[2], 0, 0)
            elif kind == "batchnorm":
                eps, mom = float(keys.get("eps", 1e-5)), float(keys.get("momentum", 0.1))
                bn = nn.BatchNorm2d if prev[1] > 0 else nn.BatchNorm1d
                self.add_module(name, bn(prev[0], eps=eps, momentum=mom))
                out = prev
            elif kind == "shortcut":
                ins = [i - 1] + refs(keys["from"], i)
                out = prev
            elif kind == "route":
                ins = refs(keys["layers"], i)
                out = (sum(shapes[j][0] for j in ins),) + shapes[ins[0]][1:]
            elif kind == "dropout":
                self.add_module(name, Dropout(float(keys.get("rate", 0.5))))
                out = prev
            elif kind == "softmax":
                out = prev
            else:
                raise ValueError(f"layer {i}: unknown kind [{kind}]")
            self.plan.append((kind, name, ins, opt))
            shapes.append(out)
        if self.plan[-1][0] != "softmax":
            raise ValueError("the last layer must be [softmax]")

    @staticmethod
    def _default_name(kind, counts):
        k = registry()[kind]
        if k["terminal"] and counts.get(kind, 0) == 0:
            return kind
        return f"{k['prefix']}{counts.get(kind, 0) + 1}"

    def forward(self, x):
        outs = []
        for kind, name, ins, opt in self.plan:
            a = x if ins[0] < 0 else outs[ins[0]]
            act = act_fn(opt["act"])
            if kind in ("conv", "batchnorm"):
                y = act(getattr(self, name)(a))
            elif kind == "dense":
                y = act(getattr(self, name)(a.flatten(1)))
            elif kind == "maxpool":
                y = F.max_pool2d(a, opt["size"], opt["stride"], opt["pad"])
            elif kind == "avgpool":
                y = F.adaptive_avg_pool2d(a, 1) if opt["size"] == 0 else F.avg_pool2d(a, opt["size"], opt["stride"])
            elif kind == "flatten":
                y = a.flatten(1)
            elif kind == "shortcut":
                y = act(a + outs[ins[1]])
            elif kind == "route":
                y = torch.cat([outs[j] for j in ins], 1) if len(ins) > 1 else outs[ins[0]]
            elif kind == "dropout":
                y = getattr(self, name)(a)
            elif kind == "softmax":
                return a  # the logits
            outs.append(y)
        return outs[-1]

    def loss(self, logits, labels):
        return F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing if self.training else 0.0)


def build_model(cfg):
    return CfgNet(cfg)


# ---------------------------------------------------------------------------------------------------------
# safetensors (standard library only: 8-byte length, JSON header, raw little-endian tensors)

_DTYPES = {"F32": (torch.float32, 4), "I64": (torch.int64, 8), "F64": (torch.float64, 8), "I32": (torch.int32, 4)}


def load_safetensors(path):
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    meta = header.pop("__metadata__", {})
    base = 8 + n
    out = {}
    for name, e in header.items():
        dt, _ = _DTYPES[e["dtype"]]
        b, t = e["data_offsets"]
        out[name] = torch.frombuffer(bytearray(blob[base + b:base + t]), dtype=dt).reshape(e["shape"]).clone()
    return out, meta


def config_of(path):
    """A config file's text, or a checkpoint's stored configuration (metadata config_ini)."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:1] != b"[" and len(head) >= 9 and head[8:9] == b"{":
        _, meta = load_safetensors(path)
        return parse_config(meta["config_ini"])
    return expanded_config(path)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    m = build_model(config_of(sys.argv[1]))
    print(m)
    print("parameters:", sum(p.numel() for p in m.parameters()))
