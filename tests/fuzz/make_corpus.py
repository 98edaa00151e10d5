#!/usr/bin/env python3
"""make_corpus.py — (re)generate the seed corpus in tests/fuzz/corpus/<target>/: small valid files of every
kind each loader accepts, plus a few near-misses. Run from anywhere; the files are committed.
Inputs a fuzzer found crashing are added by hand next to these (named crash-<what>), and stay there."""
import gzip, json, os, struct, sys

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.join(here, "corpus")


def put(target, name, data):
    d = os.path.join(root, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def gz(b):
    return gzip.compress(b, mtime=0)


# ---- IDX: images idx3 (n x h x w u8) and labels idx1
def idx_images(n, h, w):
    return struct.pack(">IIII", 0x803, n, h, w) + bytes((i * 37 + 11) % 256 for i in range(n * h * w))


def idx_labels(n, classes=10):
    return struct.pack(">II", 0x801, n) + bytes(i % classes for i in range(n))


def idx_input(img, lab, limit=0, classes=10):
    return bytes([limit, (classes - 2) % 255]) + struct.pack("<I", len(img)) + img + lab


img, lab = idx_images(3, 4, 4), idx_labels(3)
put("idx", "raw_pair", idx_input(img, lab))
put("idx", "gz_images", idx_input(gz(img), lab))
put("idx", "gz_both", idx_input(gz(img), gz(lab)))
put("idx", "limit_2", idx_input(idx_images(5, 2, 3), idx_labels(5), limit=2))
put("idx", "classes_3", idx_input(img, idx_labels(3, 3), classes=3))
put("idx", "bad_label", idx_input(img, struct.pack(">II", 0x801, 3) + b"\x00\x01\x0c"))
put("idx", "truncated_gz", idx_input(gz(img)[:-5], lab))
put("idx", "trailing_bytes", idx_input(img + b"xx", lab))
put("idx", "count_mismatch", idx_input(img, idx_labels(2)))

# ---- IDX through the harness's gzip: [flags][limit][classes][len][raw image][raw labels]
def idx_gz_input(flags, img, lab, limit=0, classes=10):
    return bytes([flags, limit, (classes - 2) % 255]) + struct.pack("<I", len(img)) + img + lab


put("idx_gz", "gz_both", idx_gz_input(3, img, lab))
put("idx_gz", "gz_images", idx_gz_input(1, img, lab))
put("idx_gz", "cut_trailer", idx_gz_input(1 | 4 | (3 << 4), img, lab))
put("idx_gz", "garbage_after", idx_gz_input(1 | 8, img, lab))
put("idx_gz", "larger", idx_gz_input(3, idx_images(4, 28, 28), idx_labels(4)))

# ---- CIFAR-10: records of 1 label byte + 3072 pixels; [files-1 | limit<<2][len1][len2][files]
def cifar_records(n, first_label=0):
    out = b""
    for r in range(n):
        out += bytes([(first_label + r) % 10]) + bytes((r * 7 + i) % 256 for i in range(3072))
    return out


def cifar_input(files, limit=0):
    lens = [len(f) for f in files] + [0, 0]
    return bytes([(len(files) - 1) | (limit << 2)]) + struct.pack("<II", lens[0], lens[1]) + b"".join(files)


put("cifar10", "one_file", cifar_input([cifar_records(2)]))
put("cifar10", "two_files", cifar_input([cifar_records(1), cifar_records(2, 5)]))
put("cifar10", "limit_1", cifar_input([cifar_records(2)], limit=1))
put("cifar10", "gz_file", cifar_input([gz(cifar_records(1))]))
put("cifar10", "short_record", cifar_input([cifar_records(1)[:-1]]))

# ---- config: the ready configs, a minimal one, one with --set assignments after a NUL
for name in sorted(os.listdir(os.path.join(here, "..", "..", "configs"))):
    if name.endswith(".cfg"):
        with open(os.path.join(here, "..", "..", "configs", name), "rb") as f:
            put("config", name, f.read())
minimal = b"[net]\nchannels=1\nheight=8\nwidth=8\nbatch=4\n[conv]\nfilters=2\n[maxpool]\n[dense]\nunits=10\n[softmax]\n"
put("config", "minimal.cfg", minimal)
put("config", "with_sets", minimal + b"\0net.lr=0.5\0conv1.filters=3\0parallel.comm_timeout_s=2")
put("config", "all_sections.cfg", b"""# comment
[net]
batch=8 ; inline
epochs=2
optimizer=sgd
lr=0.01
momentum=0.8
nesterov=1
weight_decay=0.0001
no_decay=bias
schedule=step
steps=1,2
gamma=0.5
warmup_epochs=1.5
seed=7
channels=3
height=12
width=12
classes=4
threads=1
eval_batch=16
[data]
format=cifar10
cifar_dir=data/x
train_limit=10
[parallel]
bucket_kb=4
overlap=0
scaling=strong
lr_scaling=linear
comm_timeout_s=30
[conv]
name=c1
filters=4
size=3
stride=2
pad=1
activation=linear
[maxpool]
size=2
stride=1
[flatten]
[dense]
units=8
activation=relu
[dense]
units=4
[softmax]
""")
put("config", "bad_key.cfg", b"[net]\nchannels=1\nheight=8\nwidth=8\nbogus=1\n[softmax]\n")

# ---- safetensors
def safetensors(tensors, meta=None, pad=True):
    """tensors: list of (name, dtype, shape, raw bytes)."""
    header, data = {}, b""
    if meta is not None:
        header["__metadata__"] = meta
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + data


f32 = lambda *v: struct.pack("<%df" % len(v), *v)
put("safetensors", "tiny", safetensors(
    [("conv1.weight", "F32", [2, 1, 1, 2], f32(1, 2, 3, 4)), ("conv1.bias", "F32", [2], f32(0.5, -0.5))],
    {"format": "ddp-cnn-1", "epoch": "1", "global_step": "10"}))
put("safetensors", "dtypes", safetensors(
    [("a", "F16", [2], b"\x00\x3c\x00\x40"), ("b", "I64", [1], struct.pack("<q", -3)), ("c", "U8", [3], b"abc"),
     ("d", "BF16", [1], b"\x80\x3f"), ("e", "BOOL", [2], b"\x01\x00")]))
put("safetensors", "scalar_and_empty", safetensors(
    [("s", "F32", [], f32(7)), ("z", "F32", [0, 5], b""), ("m", "F32", [1, 1, 1, 1, 1], f32(2))]))
put("safetensors", "no_padding", safetensors([("x", "F32", [1], f32(1))], pad=False))
overlap = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                      "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}).encode()
overlap += b" " * ((8 - len(overlap) % 8) % 8)
put("safetensors", "overlap", struct.pack("<Q", len(overlap)) + overlap + f32(1, 2))
put("safetensors", "empty_header", struct.pack("<Q", 8) + b"{}      ")
print("corpus written to", root)
