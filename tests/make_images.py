#!/usr/bin/env python3
"""make_images.py — small image data sets for the streaming tests, with the Python standard library only.

  make_images.py fmnist IDX_DIR OUT N_TRAIN N_TEST
      The first N_TRAIN / N_TEST Fashion-MNIST images as 8-bit gray PNGs in torchvision ImageFolder trees
      OUT/train/c<label>/<index>.png and OUT/test/...; the same samples, in the folder's order (class by class,
      files sorted), as IDX files OUT/{train,test}-{images-idx3,labels-idx1}-ubyte, and as list files
      OUT/{train,test}.txt. So the folder, the list and the IDX path hold the same pixels in the same order.
  make_images.py png OUT W H C [--bad truncate|garbage|bomb]
      One PNG of W x H (C = 1 gray, 3 RGB, 4 RGBA; pixels a fixed pattern), or a broken one.
"""
import gzip
import os
import struct
import sys
import zlib


def png_bytes(w, h, c, pixel):
    color = {1: 0, 3: 2, 4: 6}[c]
    raw = bytearray()
    for y in range(h):
        raw.append(0)  # filter: none
        for x in range(w):
            raw.extend(pixel(x, y)[:c])
    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(bytes(raw), 6)) + chunk(b"IEND", b""))


def read_idx(path):
    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    rank = magic & 0xFF
    dims = struct.unpack(">" + "I" * rank, data[4:4 + 4 * rank])
    return dims, data[4 + 4 * rank:]


def write_idx(path, magic, dims, payload):
    with open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + struct.pack(">" + "I" * len(dims), *dims) + payload)


def fmnist(idx_dir, out, n_train, n_test):
    for split, n, stem in (("train", n_train, "train"), ("test", n_test, "t10k")):
        (_, rows, cols), images = read_idx(os.path.join(idx_dir, stem + "-images-idx3-ubyte.gz"))
        _, labels = read_idx(os.path.join(idx_dir, stem + "-labels-idx1-ubyte.gz"))
        per = rows * cols
        order = []
        for i in range(n):
            label = labels[i]
            d = os.path.join(out, split, "c%d" % label)
            os.makedirs(d, exist_ok=True)
            name = "%05d.png" % i
            px = images[i * per:(i + 1) * per]
            with open(os.path.join(d, name), "wb") as f:
                f.write(png_bytes(cols, rows, 1, lambda x, y: bytes([px[y * cols + x]])))
            order.append(("c%d" % label, name, i))
        order.sort()  # ImageFolder's order: class directories sorted, then files sorted
        write_idx(os.path.join(out, split + "-images-idx3-ubyte"), 0x803, (n, rows, cols),
                  b"".join(images[i * per:(i + 1) * per] for _, _, i in order))
        write_idx(os.path.join(out, split + "-labels-idx1-ubyte"), 0x801, (n,), bytes(labels[i] for _, _, i in order))
        with open(os.path.join(out, split + ".txt"), "w") as f:
            for cls, name, i in order:
                f.write("%s/%s/%s %d\n" % (split, cls, name, labels[i]))


def one_png(out, w, h, c, bad):
    pixel = lambda x, y: bytes([(x * 7 + y * 3) & 255, (x * 5) & 255, (y * 9) & 255, 255])
    if bad == "bomb":  # a valid header claiming w x h over the data of a 1x1 image: refused from the header
        data = bytearray(png_bytes(1, 1, c, pixel))
        ihdr = bytes(data[12:16]) + struct.pack(">II", w, h) + bytes(data[24:29])
        data[16:29] = ihdr[4:]
        data[29:33] = struct.pack(">I", zlib.crc32(ihdr) & 0xFFFFFFFF)
        with open(out, "wb") as f:
            f.write(bytes(data))
        return
    data = png_bytes(w, h, c, pixel)
    if bad == "truncate":
        data = data[:len(data) // 2]
    elif bad == "garbage":
        data = b"this is not an image, whatever its name says\n" * 4
    with open(out, "wb") as f:
        f.write(data)


def main(argv):
    if len(argv) >= 5 and argv[0] == "fmnist":
        fmnist(argv[1], argv[2], int(argv[3]), int(argv[4]))
    elif len(argv) >= 5 and argv[0] == "png":
        bad = argv[6] if len(argv) >= 7 and argv[5] == "--bad" else None
        one_png(argv[1], int(argv[2]), int(argv[3]), int(argv[4]), bad)
    else:
        sys.stderr.write(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
