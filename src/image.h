// image.h — one JPEG or PNG held in memory to one u8 CHW sample, with torchvision's spatial transforms.
//
// The reference is torchvision on PIL images: ImageFolder loads with Image.open(f).convert("RGB") (convert("L")
// for one channel), Resize/CenterCrop/RandomResizedCrop run on the PIL image, and the resampling is PIL's
// Image.resize(BILINEAR). Decoding (libjpeg-turbo for both) and resampling reproduce PIL bit for bit, so a
// model trained here sees the pixels torchvision would have fed it (measured: docs/images.md, "Parity").
// Flip and padded crop are the backend gather's own draws (src/gather_aug.h), so moving them between the
// loader and the gather changes no bit.
//
// Channel rules (as PIL's convert("RGB") / convert("L")):
//   gray → 3 channels: replicated.           RGB → 1 channel: L = (R*19595 + G*38470 + B*7471 + 0x8000) >> 16.
//   alpha (RGBA, gray+alpha, tRNS): dropped, not composited: PIL's convert("RGB") drops it too.
//   palette: expanded through PLTE; an index past the PLTE's entries reads PIL's default gray ramp (i, i, i).
//   PNG gray of 1, 2, 4 bits: scaled to 8 bits (v * 255, * 0x55, * 0x11), as PIL's unpackers.
//   16-bit PNG: RGB, RGBA and gray+alpha keep the high byte (PIL's ";16B" unpackers); 16-bit gray saturates at
//   255 (PIL opens it as mode "I"/"I;16" and clips to 0..255 on conversion: most such images come out white, in
//   torchvision too). Parity first; docs/images.md says how to change this.
//   CMYK/YCCK JPEG: read as Adobe (inverted) CMYK as PIL always does, then PIL's cmyk2rgb:
//   R = clip(K' - K'*C/255) with C = 255 - stored c, K' = stored k, K'*C/255 rounded as PIL's MULDIV255.
//   EXIF orientation: ignored (torchvision's PIL loader does not apply it either).
//   Gamma, ICC profiles, sBIT: ignored (PIL's convert ignores them).
#pragma once
#include <stddef.h>
#include <stdint.h>

typedef struct image_tf {
    int channels;            // output channels: 1 or 3
    int out_h, out_w;        // output size
    long long max_pixels;    // width*height above this is refused from the header, before decoding (decompression bomb)
    int dct_scaling;         // 1: decode a JPEG at 1/2, 1/4 or 1/8 scale (TurboJPEG scaling factors) when the region
                             // that will be resampled still has at least 2x the output's size on each side after scaling
    // training path: random_resized_crop (rrc=1) OR (resize if > 0, then center crop to out_h x out_w); then flip, then crop_pad
    int rrc;
    double rrc_scale[2];     // torchvision defaults 0.08, 1.0
    double rrc_ratio[2];     // 3/4, 4/3
    int resize;              // shorter side to this many pixels (bilinear, antialiased); 0: no resize
    int flip;                // horizontal flip with p = 1/2 (training only)
    int crop_pad;            // random crop after zero padding by N (training only), as src/gather_aug.h
    uint64_t seed;
} image_tf;

// Per-thread scratch (the TurboJPEG handle and buffers that grow to the largest image seen), so the loader's
// threads neither share state nor allocate per sample.
typedef struct image_ctx image_ctx;
image_ctx *image_ctx_create(void);  // NULL when out of memory
void image_ctx_free(image_ctx *c);

// One sample: decode buf (JPEG or PNG, told apart by magic bytes, never by the name), convert to tf->channels, apply the
// training (training=1) or evaluation (training=0: resize if > 0, then center crop) transforms, write
// tf->channels x out_h x out_w bytes (CHW) to out. Thread-safe with one ctx per thread. Every random choice depends only
// on (tf->seed, epoch, index). Returns ST_OK, ST_INPUT (bad file: the message in err is "NAME: reason", one line) or
// ST_RUNTIME (out of memory). Never calls ERR()/err_set: the error state in common.c is global, not per thread.
int image_sample(image_ctx *c, const image_tf *tf, int training, const char *name, const uint8_t *buf, size_t n,
                 int64_t epoch, int64_t index, uint8_t *out, char *err, size_t err_len);

// ---------------------------------------------------------------------------------------------------------
// The pieces image_sample is made of, for the tests, tests/image_tool.c and the trainer's --predict.

// An interleaved (HWC) u8 image. data is owned and grown by the functions below (cap bytes allocated), so a
// zero-initialised image_u8 can be passed to any of them and reused across calls; image_free releases it.
typedef struct image_u8 {
    int w, h, c;  // c: 1 or 3
    uint8_t *data;
    size_t cap;
} image_u8;
void image_free(image_u8 *im);

// The header only: width and height, and whether buf is a JPEG (else a PNG). ST_INPUT for anything that is
// neither, a corrupt header or a zero size. max_pixels is not checked here.
int image_info(image_ctx *c, const char *name, const uint8_t *buf, size_t n, int *w, int *h, int *is_jpeg, char *err,
               size_t err_len);

// Decode to `channels` (1 or 3) by the rules above. w*h > max_pixels is refused from the header (ST_INPUT),
// before any pixel is decoded; max_pixels <= 0 sets no limit. scale_denom (1, 2, 4 or 8) decodes a JPEG at 1/scale_denom size by TurboJPEG's
// DCT scaling (out is ceil(w / scale_denom) wide); a PNG always decodes at full size.
int image_decode(image_ctx *c, const char *name, const uint8_t *buf, size_t n, int channels, long long max_pixels,
                 int scale_denom, image_u8 *out, char *err, size_t err_len);

// PIL's Image.resize((w, h), BILINEAR) exactly: a triangle filter widened by the downscale factor (antialias),
// coefficients in 22-bit fixed point, a horizontal pass then a vertical one, each rounded and clipped to u8.
// src and dst must differ. ST_RUNTIME when out of memory.
int image_resize(const image_u8 *src, int w, int h, image_u8 *dst);

// PIL's Image.crop((left, top, left + w, top + h)): the box may reach outside the image, which reads zeros.
int image_crop(const image_u8 *src, int top, int left, int h, int w, image_u8 *dst);

// torchvision's CenterCrop((h, w)): zero padding first where the image is smaller than the crop (left/top get
// (c - W) // 2, right/bottom (c - W + 1) // 2), then top = round((H - h) / 2), left = round((W - w) / 2) with
// Python's round (half to even).
int image_center_crop(const image_u8 *src, int h, int w, image_u8 *dst);

// torchvision's Resize(size) output for a w x h image: the shorter side becomes size, the longer
// int(size * long / short) (truncated).
void image_resize_dims(int w, int h, int size, int *out_w, int *out_h);

// torchvision's RandomResizedCrop.get_params for a w x h image: 10 tries of area * U(scale) and
// exp(U(log ratio[0], log ratio[1])), else the central crop clamped to the ratio range. The box (top, left,
// crop_h, crop_w) always lies inside the image. The uniforms are a counter-based stream of
// gather_aug_hash(seed, epoch, index) (53-bit doubles), separate from the bits gather_aug_draw uses.
void image_rrc_params(uint64_t seed, int64_t epoch, int64_t index, int w, int h, const double scale[2],
                      const double ratio[2], int *top, int *left, int *crop_h, int *crop_w);

// The DCT scale image_sample decodes at (1, 2, 4 or 8): the largest denominator whose scaled region
// (region_w x region_h of the full image) still has at least twice target_w x target_h on each side.
int image_dct_denom(int region_w, int region_h, int target_w, int target_h);
