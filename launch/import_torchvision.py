#!/usr/bin/env python3
"""import_torchvision.py — a torchvision model's weights as a ddp-cnn checkpoint (fine-tuning, --eval, --predict).

    python3 launch/import_torchvision.py --arch resnet18|resnet50|mobilenet_v2 [--weights FILE.pth]
        [--num-classes N] [--class-names FILE] [--seed S] [--trainer PATH] --out FILE.safetensors

Builds torchvision.models.<arch>() (its own random initialisation, seeded by --seed, unless --weights gives a
state dict saved with torch.save, e.g. a download of torchvision's pretrained weights) and writes its state dict
as a safetensors file the trainer reads with --init-from, --eval and --predict, with no --config:

  * tensors: torchvision's state-dict names as they are (configs/<arch>.cfg names its layers after torchvision's
    modules: conv1.weight, layer1.0.bn1.running_mean, ..., fc.bias), float32 as F32, every batch norm's
    num_batches_tracked as a 0-dim I64 (the trainer keeps it as a float: a count above 2^24 is clamped to 2^24);
  * __metadata__: config_ini, the effective configuration `trainer --config configs/<arch>.cfg --print-config`
    prints (with --num-classes N: --set net.classes=N --set fc.units=N, classifier.1.units=N for mobilenet_v2),
    which --eval / --predict / --init-from read when no --config is given; format "ddp-cnn-weights-1" (weights
    only: --resume refuses it, naming the format); provenance (source, torch and torchvision versions, weights);
    with --class-names (one name per line, index order) class_names, which --predict prints for image files.

Without --num-classes the classes are the weights' head's (else 1000). A weights file whose head has another
shape than --num-classes (ImageNet's 1000 classes, --num-classes 10) keeps its other tensors, and the new head
takes torchvision's initialisation (or the trainer's: --init-from with --init-exclude fc). Before writing, the state dict is loaded with strict=True into
the module launch/torch_model.py builds from config_ini (the trainer's own layer plan), so a name or shape the
trainer would refuse is an error here (exit 2), not at training time. No download: nothing here fetches weights.
"""
import argparse
import json
import os
import struct
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ARCHS = {"resnet18": "fc", "resnet50": "fc", "mobilenet_v2": "classifier.1"}  # arch -> its classifier layer
FORMAT = "ddp-cnn-weights-1"
COUNT_MAX = 1 << 24


def die(msg, code=2):
    print(f"import_torchvision.py: {msg}", file=sys.stderr)
    sys.exit(code)


def find_trainer(given):
    for t in (given, os.environ.get("TRAINER"), os.path.join(ROOT, "build", "trainer")):
        if t and os.access(t, os.X_OK):
            return os.path.abspath(t)
    die("no trainer found (give --trainer PATH or set TRAINER; build it with launch/test.sh)")


def config_text(trainer, arch, classes, head):
    cfg = os.path.join(ROOT, "configs", f"{arch}.cfg")
    if not os.path.isfile(cfg):
        die(f"{cfg} does not exist: the trainer has no configuration for {arch} yet")
    cmd = [trainer, "--config", cfg, "--print-config", "--set", f"net.classes={classes}", "--set",
           f"{head}.units={classes}"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        die(f"{' '.join(cmd)} failed (exit {p.returncode}): {p.stderr.strip()}")
    return p.stdout


def read_weights(path):
    """A state dict from a torch.save file: plain, {"state_dict": ...} of a training script, keys "module.*" of DDP."""
    import torch
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a missing file, not a torch.save file, a pickle of more than tensors
        die(f"--weights {path}: cannot read a state dict: {type(e).__name__}: {str(e).splitlines()[0]}")
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        die(f"--weights {path}: holds a {type(sd).__name__}, not a state dict of tensors")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}


def state_dict_of(arch, sd, classes, seed, weights):
    """torchvision.models.<arch>(num_classes=classes), seeded, with the tensors of sd (None: random init)."""
    import torch
    import torchvision
    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=classes)
    if sd is not None:
        own = model.state_dict()
        head = ARCHS[arch]
        skipped = [k for k in sd if k.startswith(head + ".") and k in own and sd[k].shape != own[k].shape]
        sd = {k: v for k, v in sd.items() if k not in skipped}
        try:
            missing, unexpected = model.load_state_dict(sd, strict=False)
        except RuntimeError as e:  # a shape that differs outside the head
            die(f"--weights {weights}: not a torchvision {arch} state dict: {str(e).splitlines()[-1].strip()}")
        if unexpected or set(missing) - set(skipped):
            die(f"--weights {weights}: not a torchvision {arch} state dict (missing "
                f"{sorted(set(missing) - set(skipped))[:5]}, unexpected {sorted(unexpected)[:5]})")
        if skipped:  # another number of classes: the new head keeps torchvision's initialisation
            print(f"import_torchvision.py: --weights {weights}: {', '.join(skipped)} of another shape: the "
                  f"{classes}-class head keeps torchvision's random initialisation", file=sys.stderr)
    return model.state_dict(), torch.__version__, torchvision.__version__


def check_against_config(sd, ini, trainer):
    """strict=True into the module torch_model.py builds from the stored configuration: the trainer's tensors."""
    os.environ["TRAINER"] = trainer  # torch_model.py's layer registry: the trainer that printed the config
    sys.path.insert(0, HERE)
    import inspect
    import torch_model
    from export_onnx import build_model  # torch_model.py's module, dotted layer names nested
    from torch_model import parse_config
    cfg = parse_config(ini)
    grouped = any(k == "conv" and keys.get("groups", "1") != "1" for k, keys in cfg["layers"])
    if grouped and "groups" not in inspect.getsource(torch_model.CfgNet):
        print("import_torchvision.py: note: launch/torch_model.py does not model grouped convolutions yet; tensor "
              "names not checked here (the trainer checks them when it loads the file)", file=sys.stderr)
        return
    import contextlib
    import torch
    # names and shapes only: on the meta device no memory is allocated and no initialisation runs (torch >= 2.0)
    meta = torch.device("meta") if hasattr(torch.device("cpu"), "__enter__") else contextlib.nullcontext()
    try:
        with meta:
            ref = build_model(cfg)
    except (ValueError, KeyError) as e:  # a layer kind or key torch_model.py does not model yet
        print(f"import_torchvision.py: note: launch/torch_model.py cannot build this configuration ({e}); "
              f"tensor names not checked here (the trainer checks them when it loads the file)", file=sys.stderr)
        return
    want = ref.state_dict()
    extra = sorted(set(sd) - set(want))
    lost = sorted(set(want) - set(sd))
    if extra or lost:
        die(f"the torchvision state dict and the trainer's model differ: only in torchvision {extra[:5]}, "
            f"only in the trainer's {lost[:5]}")
    for k, v in sd.items():
        if tuple(v.shape) != tuple(want[k].shape):
            die(f"tensor '{k}': torchvision's shape {list(v.shape)}, the trainer's {list(want[k].shape)}")


def safetensors_bytes(sd, meta):
    """8-byte little-endian header length, JSON header (space-padded to 8 bytes), raw little-endian data."""
    import torch
    header, blobs, off = {}, [], 0
    for name, t in sd.items():
        t = t.detach().cpu().contiguous()
        if t.dtype == torch.int64 or name.endswith("num_batches_tracked"):
            v = int(t.reshape(-1)[0]) if t.numel() == 1 else None
            if v is None or v < 0:
                die(f"tensor '{name}': not a count ({t})")
            if v > COUNT_MAX:
                print(f"import_torchvision.py: {name} = {v}, clamped to 2^24 (the trainer's float count)",
                      file=sys.stderr)
            t, dtype = torch.tensor(min(v, COUNT_MAX), dtype=torch.int64).reshape(t.shape), "I64"
        elif t.is_floating_point():
            t, dtype = t.to(torch.float32), "F32"
            if not bool(torch.isfinite(t).all()):
                die(f"tensor '{name}' holds NaN or Inf (the trainer refuses such a file)")
        else:
            die(f"tensor '{name}' has dtype {t.dtype}: neither floating point nor a count")
        b = t.numpy().tobytes() if t.numel() else b""
        if sys.byteorder != "little":
            die("needs a little-endian host")
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    header = {"__metadata__": meta, **header}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def write_atomic(path, data):
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        die(f"--out {path}: {e.strerror or e}", 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", required=True, choices=sorted(ARCHS))
    ap.add_argument("--weights", help="a torchvision state dict saved with torch.save (.pth); default: random init")
    ap.add_argument("--num-classes", type=int, help="classifier size (default: the --weights head's, else 1000)")
    ap.add_argument("--class-names", help="a text file, one class name per line, in index order")
    ap.add_argument("--seed", type=int, default=0, help="torch.manual_seed before torchvision's initialisation")
    ap.add_argument("--trainer", help="the trainer binary (default: $TRAINER, else build/trainer)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    if a.num_classes is not None and not 1 <= a.num_classes <= 1 << 20:
        die(f"--num-classes {a.num_classes}: not in [1, 2^20]")
    if not a.out.endswith(".safetensors"):
        die(f"--out {a.out}: name a .safetensors file")
    if os.path.exists(a.out):
        with open(a.out, "rb") as f:
            head = f.read(9)
        if os.path.getsize(a.out) and not (len(head) == 9 and head[8:9] == b"{"):
            die(f"--out {a.out}: refusing to overwrite an existing file that is not a safetensors file")
    trainer = find_trainer(a.trainer)
    wsd = read_weights(a.weights) if a.weights else None
    classes = a.num_classes
    if classes is None:  # the weights' head, else torchvision's (and the config's) 1000
        bias = (wsd or {}).get(ARCHS[a.arch] + ".bias")
        classes = int(bias.shape[0]) if bias is not None and bias.dim() == 1 else 1000
    ini = config_text(trainer, a.arch, classes, ARCHS[a.arch])
    sd, tv_torch, tv = state_dict_of(a.arch, wsd, classes, a.seed, a.weights)
    check_against_config(sd, ini, trainer)
    meta = {"format": FORMAT, "source": f"torchvision.models.{a.arch}", "torch": tv_torch, "torchvision": tv,
            "weights": os.path.basename(a.weights) if a.weights else f"torchvision random init, torch.manual_seed({a.seed})",
            "config": f"configs/{a.arch}.cfg", "config_ini": ini}
    if a.class_names:
        with open(a.class_names, encoding="utf-8") as f:
            names = [ln.rstrip("\r\n") for ln in f if ln.strip()]
        if len(names) != classes:
            die(f"--class-names {a.class_names}: {len(names)} names for {classes} classes")
        meta["class_names"] = json.dumps(names, separators=(",", ":"))
    write_atomic(a.out, safetensors_bytes(sd, meta))
    n_par = sum(v.numel() for k, v in sd.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    print(f"{a.out}: torchvision {a.arch}, {len(sd)} tensors ({n_par} parameters), {classes} classes, "
          f"{meta['weights']}; config from configs/{a.arch}.cfg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
