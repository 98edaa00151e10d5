#!/usr/bin/env python3
# image_parity.py — src/image.c (through image_tool) against PIL, and against torchvision.transforms when it is
# importable: decode + convert("RGB"/"L"), Image.resize(BILINEAR), CenterCrop (with its zero padding),
# resized_crop and the evaluation path Resize(s) → CenterCrop. Prints the max abs difference of each case and
# fails when one exceeds the tolerance docs/images.md states (0: bit-exact).
#   image_parity.py IMAGE_TOOL TMPDIR
import os
import random
import subprocess
import sys

from PIL import Image

# LSB; docs/images.md, "Parity": bit-exact with Pillow 9 (Debian 12's, the reference the code follows); Pillow 10+
# rounds a few resampling cases differently (measured: 1 LSB with Pillow 13.0 from PyPI).
import PIL
TOLERANCE = 0 if int(PIL.__version__.split(".")[0]) < 10 else 1

try:
    import torchvision.transforms as T
    import torchvision.transforms.functional as TF
except Exception:  # torchvision is optional
    T = TF = None


def make_images(d):
    """Small images of every mode the loader must read, odd sizes, written with PIL."""
    rnd = random.Random(7)
    w, h = 37, 23
    # A smooth gradient plus noise: JPEG keeps detail, resampling has something to average.
    rgb = Image.new("RGB", (w, h))
    rgb.putdata([((x * 7 + rnd.randrange(40)) % 256, (y * 11 + rnd.randrange(40)) % 256, rnd.randrange(256))
                 for y in range(h) for x in range(w)])
    gray = rgb.convert("L")
    rgba = rgb.copy()
    rgba.putalpha(gray)
    out = {}
    def save(name, im, **kw):
        p = os.path.join(d, name)
        im.save(p, **kw)
        out[name] = p
    save("rgb.png", rgb)
    save("gray.png", gray)
    save("rgba.png", rgba)
    save("la.png", gray.convert("LA"))
    save("palette.png", rgb.convert("P", palette=Image.ADAPTIVE, colors=50))
    save("bits1.png", gray.convert("1"))
    save("rgb.jpg", rgb, quality=90)
    save("gray.jpg", gray, quality=90)
    save("rgb444.jpg", rgb, quality=95, subsampling=0)
    tall = rgb.transpose(Image.TRANSPOSE)  # 23 x 37: the other orientation for Resize(int)
    save("tall.png", tall)
    save("tall.jpg", tall, quality=85)
    save("one.png", Image.new("RGB", (1, 1), (200, 100, 50)))
    save("cmyk.jpg", rgb.convert("CMYK"), quality=90)  # PIL writes Adobe (inverted) CMYK
    # 16-bit gray (PIL clips it to 255 on conversion). Older PIL writes mode "I" as a 16-bit PNG, newer ones only
    # "I;16"; either way the file is the same.
    g16 = Image.new("I", (w, h))
    g16.putdata([(x * 29 + y * 3) % 600 for y in range(h) for x in range(w)])
    try:
        g16.save(os.path.join(d, "probe16.png"))
    except OSError:
        g16 = g16.convert("I;16")
    save("gray16.png", g16)
    big = rgb.resize((301, 199), Image.BICUBIC)  # strong downscales: kernels ~19 pixels wide
    save("big.jpg", big, quality=80)
    return out


def run_tool(tool, path, channels, oh, ow, *args):
    r = subprocess.run([tool, path, str(channels), str(oh), str(ow)] + [str(a) for a in args], capture_output=True)
    if r.returncode != 0:
        sys.exit(f"FAIL: image_tool {path} {args}: {r.stderr.decode().strip()}")
    return r.stdout


def chw(im):
    """PIL image → CHW bytes (as image_tool writes them)."""
    b, c = im.tobytes(), len(im.getbands())
    return bytes(b[i * c + ch] for ch in range(c) for i in range(im.width * im.height))


def center_crop(im, h, w):
    """torchvision.transforms.functional.center_crop on a PIL image, restated (for machines without it)."""
    W, H = im.size
    if w > W or h > H:
        l, t = (w - W) // 2 if w > W else 0, (h - H) // 2 if h > H else 0
        r, b = (w - W + 1) // 2 if w > W else 0, (h - H + 1) // 2 if h > H else 0
        padded = Image.new(im.mode, (W + l + r, H + t + b), 0)
        padded.paste(im, (l, t))
        im = padded
        W, H = im.size
        if (W, H) == (w, h):
            return im
    top, left = int(round((H - h) / 2.0)), int(round((W - w) / 2.0))
    return im.crop((left, top, left + w, top + h))


def resize_short(im, size):
    """torchvision Resize(int) on a PIL image, restated: shorter side = size, longer int(size * long / short)."""
    W, H = im.size
    short, long_ = (W, H) if W <= H else (H, W)
    new_long = int(size * long_ / short)
    ow, oh = (size, new_long) if W <= H else (new_long, size)
    return im.resize((ow, oh), Image.BILINEAR)


def main():
    tool, d = sys.argv[1], sys.argv[2]
    worst, cases = 0, 0
    def check(label, got, want):
        nonlocal worst, cases
        if len(got) != len(want):
            sys.exit(f"FAIL: {label}: {len(got)} bytes, want {len(want)}")
        diff = max((abs(a - b) for a, b in zip(got, want)), default=0)
        worst, cases = max(worst, diff), cases + 1
        print(f"{'ok  ' if diff <= TOLERANCE else 'FAIL'} {label}: max abs diff {diff}")
        if diff > TOLERANCE:
            sys.exit(f"FAIL: {label}: max abs diff {diff} > {TOLERANCE}")
    for name, path in make_images(d).items():
        for channels, mode in ((3, "RGB"), (1, "L")):
            im = Image.open(path).convert(mode)
            W, H = im.size
            tag = f"{name} {mode}"
            # Pure resizes: down, up, anisotropic, to 1x1 and identity.
            for (rw, rh) in ((16, 10), (50, 31), (9, 40), (1, 1), (W, H), (3 * W, 2)):
                want = im.resize((rw, rh), Image.BILINEAR)
                check(f"{tag} resize {rw}x{rh}", run_tool(tool, path, channels, rh, rw, "resize", rw, rh), chw(want))
            for (ch, cw) in ((10, 10), (H, max(W - 1, 1)), (H + 3, W + 4), (2 * H + 1, 5)):
                check(f"{tag} center_crop {ch}x{cw}", run_tool(tool, path, channels, ch, cw, "center_crop"),
                      chw(center_crop(im, ch, cw)))
            for size, (oh, ow) in ((20, (16, 16)), (8, (8, 8)), (30, (31, 33)), (64, (56, 56))):
                want = center_crop(resize_short(im, size), oh, ow)
                got = run_tool(tool, path, channels, oh, ow, "eval", size)
                check(f"{tag} eval resize {size} crop {oh}x{ow}", got, chw(want))
                if T is not None:
                    tv = T.Compose([T.Resize(size), T.CenterCrop((oh, ow))])(im)
                    check(f"{tag} eval (torchvision) {size} {oh}x{ow}", got, chw(tv))
            for (t, l, h, w), (oh, ow) in (((2, 3, 15, 20), (8, 8)), ((0, 0, H, W), (24, 24)), ((5, 1, 7, 31), (13, 5))):
                if t + h > H or l + w > W:
                    continue
                want = im.crop((l, t, l + w, t + h)).resize((ow, oh), Image.BILINEAR)
                got = run_tool(tool, path, channels, oh, ow, "resized_crop", t, l, h, w)
                check(f"{tag} resized_crop {t},{l} {h}x{w} → {oh}x{ow}", got, chw(want))
                if TF is not None:
                    check(f"{tag} resized_crop (torchvision)", got, chw(TF.resized_crop(im, t, l, h, w, [oh, ow])))
    print(f"PASS: {cases} cases, max abs diff {worst} (tolerance {TOLERANCE}); torchvision "
          f"{'compared' if T is not None else 'not importable: PIL only'}")


if __name__ == "__main__":
    main()
