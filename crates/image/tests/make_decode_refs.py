#!/usr/bin/env python3
"""Writes Pillow / transformers decoding references for `tests/pillow_decode.rs`.

Not run in CI: the output, `tests/data/decode_refs.safetensors`, is committed.
Regenerate with a Python that has Pillow, numpy, safetensors and transformers, e.g.

    /work/refenv/bin/python crates/image/tests/make_decode_refs.py

For every case <name> the file holds (all uint8):
    file/<name>   the encoded image bytes (PNG / JPEG / WebP), shape [n]
    rgb/<name>    Image.open(f).convert("RGB")                            [h, w, 3]
    hf/<name>     transformers.image_transforms.convert_to_rgb(Image.open(f), return_numpy=True)
                  (alpha composited over white), only where it differs from rgb/<name>
except `composite`, a 256x256 RGBA PNG covering every (value, alpha) pair, whose
convert_to_rgb result is stored PNG-encoded as `hf_png/composite` to keep the file small.
Metadata records the Pillow, libjpeg-turbo, libwebp and transformers versions.

    --jpeg-extended N --out PATH   instead writes N random JPEGs (sizes 1..160, random
                                   subsampling, quality, progressive, optimize, restart
                                   intervals, greyscale) in the same layout, for a heavier local
                                   check: PALIGEMMA_DECODE_REFS=PATH cargo test -p
                                   paligemma-image --test pillow_decode
"""

import argparse

import io
import os
import struct
import zlib

import numpy as np
import PIL
import transformers
from PIL import Image, features
from safetensors.numpy import save_file
from transformers.image_transforms import convert_to_rgb


ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]


def raw_png(arr, color_type, bit_depth, palette=None, trns=None, interlace=False):
    """A minimal PNG writer for layouts Pillow cannot save (16-bit RGB(A)/LA, low bit depths,
    Adam7 interlacing). Filter type 0 on every row."""
    h, w = arr.shape[:2]

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    if interlace:
        rows = []
        for x0, y0, dx, dy in ADAM7:
            sub = arr[y0::dy, x0::dx]
            if sub.shape[0] and sub.shape[1]:
                rows.extend(sub)
    else:
        rows = list(arr)
    raw = b""
    for row in rows:
        if bit_depth == 16:
            rb = row.astype(">u2").tobytes()
        elif bit_depth == 8:
            rb = row.astype("u1").tobytes()
        else:
            vals = row.reshape(-1)
            per = 8 // bit_depth
            out = bytearray()
            for i in range(0, len(vals), per):
                byte = 0
                for j in range(per):
                    v = int(vals[i + j]) if i + j < len(vals) else 0
                    byte |= v << (8 - bit_depth * (j + 1))
                out.append(byte)
            rb = bytes(out)
        raw += b"\x00" + rb
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, int(interlace))
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
    if palette is not None:
        out += chunk(b"PLTE", bytes(palette))
    if trns is not None:
        out += chunk(b"tRNS", trns)
    return out + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def pil_bytes(img, fmt, **kw):
    b = io.BytesIO()
    img.save(b, format=fmt, **kw)
    return b.getvalue()


def photo_like(rng, h, w, noise=8.0):
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack(
        [
            128 + 90 * np.sin(xx / 3.1) * np.cos(yy / 4.3),
            255 * xx / max(w - 1, 1),
            200 * ((xx // 6 + yy // 5) % 2),  # hard edges
        ],
        axis=-1,
    )
    return np.clip(np.rint(base + rng.normal(0, noise, (h, w, 3))), 0, 255).astype(np.uint8)


def cases(rng):
    h, w = 13, 19  # odd sizes: partial MCUs / chroma edges
    rgb = photo_like(rng, h, w)
    alpha = rng.integers(0, 256, (h, w), dtype=np.uint8)
    alpha[0, :4] = [0, 255, 1, 128]
    rgba = np.dstack([rgb, alpha])
    grey = rgb[..., 0]
    out = {}
    # --- PNG ---
    out["png_rgb8"] = pil_bytes(Image.fromarray(rgb, "RGB"), "PNG")
    out["png_rgba8"] = pil_bytes(Image.fromarray(rgba, "RGBA"), "PNG")
    out["png_l8"] = pil_bytes(Image.fromarray(grey, "L"), "PNG")
    out["png_la8"] = pil_bytes(Image.fromarray(np.dstack([grey, alpha]), "LA"), "PNG")
    pal = Image.fromarray(rgb, "RGB").quantize(colors=23)
    out["png_p8"] = pil_bytes(pal, "PNG")
    pal_t = pal.copy()
    pal_t.info["transparency"] = bytes(int(v) for v in rng.integers(0, 256, 23))
    out["png_p8_trns"] = pil_bytes(pal_t, "PNG", transparency=pal_t.info["transparency"])
    out["png_l8_trns"] = pil_bytes(Image.fromarray(grey, "L"), "PNG", transparency=int(grey[0, 0]))
    out["png_rgb8_trns"] = pil_bytes(Image.fromarray(rgb, "RGB"), "PNG", transparency=tuple(int(v) for v in rgb[0, 0]))
    out["png_l1"] = raw_png(rng.integers(0, 2, (h, w)), 0, 1)
    out["png_l2"] = raw_png(rng.integers(0, 4, (h, w)), 0, 2)
    out["png_l4"] = raw_png(rng.integers(0, 16, (h, w)), 0, 4)
    out["png_p4"] = raw_png(rng.integers(0, 9, (h, w)), 3, 4, palette=rng.integers(0, 256, 27))
    v16 = rng.integers(0, 65536, (h, w, 4))
    v16[0, :6, 0] = [0, 200, 255, 256, 1000, 65535]
    out["png_l16"] = raw_png(v16[..., 0], 0, 16)
    out["png_la16"] = raw_png(v16[..., :2], 4, 16)
    out["png_rgb16"] = raw_png(v16[..., :3], 2, 16)
    out["png_rgba16"] = raw_png(v16, 6, 16)
    out["png_rgb8_adam7"] = raw_png(rgb, 2, 8, interlace=True)
    # --- JPEG (libjpeg-turbo) ---
    im = Image.fromarray(photo_like(rng, 19, 21), "RGB")
    out["jpeg_444"] = pil_bytes(im, "JPEG", quality=90, subsampling=0)
    out["jpeg_422"] = pil_bytes(im, "JPEG", quality=90, subsampling=1)
    out["jpeg_420"] = pil_bytes(im, "JPEG", quality=75, subsampling=2)
    out["jpeg_420_q100"] = pil_bytes(Image.fromarray(rng.integers(0, 256, (17, 18, 3), dtype=np.uint8)), "JPEG", quality=100, subsampling=2)
    out["jpeg_420_progressive"] = pil_bytes(im, "JPEG", quality=80, subsampling=2, progressive=True)
    out["jpeg_444_progressive"] = pil_bytes(im, "JPEG", quality=95, subsampling=0, progressive=True)
    out["jpeg_420_optimized_restart"] = pil_bytes(im, "JPEG", quality=85, optimize=True, restart_marker_blocks=2)
    out["jpeg_grey"] = pil_bytes(im.convert("L"), "JPEG", quality=88)
    out["jpeg_q20"] = pil_bytes(im, "JPEG", quality=20)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation "rotate 90": must be ignored
    out["jpeg_exif_rotated"] = pil_bytes(im, "JPEG", quality=90, exif=exif.tobytes())
    # --- WebP (libwebp) ---
    out["webp_lossless_rgb"] = pil_bytes(Image.fromarray(rgb, "RGB"), "WEBP", lossless=True)
    out["webp_lossless_rgba"] = pil_bytes(Image.fromarray(rgba, "RGBA"), "WEBP", lossless=True)
    out["webp_lossy_rgb"] = pil_bytes(im, "WEBP", quality=80)
    out["webp_lossy_rgba"] = pil_bytes(Image.fromarray(np.dstack([np.asarray(im), np.full((19, 21), 200, np.uint8)]), "RGBA"), "WEBP", quality=80)
    return out


def random_jpegs(rng, n):
    out = {}
    for i in range(n):
        h, w = (int(v) for v in rng.integers(1, 161, 2))
        if rng.random() < 0.5:
            arr = photo_like(rng, h, w, noise=float(rng.uniform(0, 40)))
        else:
            arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        im = Image.fromarray(arr, "RGB")
        if rng.random() < 0.15:
            im = im.convert("L")
        kw = dict(quality=int(rng.integers(1, 101)), subsampling=int(rng.integers(0, 3)))
        if rng.random() < 0.4:
            kw["progressive"] = True
        if rng.random() < 0.3:
            kw["optimize"] = True
        if rng.random() < 0.3:
            kw["restart_marker_blocks"] = int(rng.integers(1, 9))
        out[f"jpeg_r{i}"] = pil_bytes(im, "JPEG", **kw)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jpeg-extended", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rng = np.random.default_rng(7)
    tensors = {}
    if args.jpeg_extended:
        for name, data in random_jpegs(rng, args.jpeg_extended).items():
            tensors[f"file/{name}"] = np.frombuffer(data, dtype=np.uint8).copy()
            tensors[f"rgb/{name}"] = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        out = args.out or "/tmp/decode_refs_extended.safetensors"
        save_file(tensors, out)
        print(f"wrote {len(tensors)} tensors to {out} ({os.path.getsize(out)} bytes)")
        return
    for name, data in cases(rng).items():
        im = Image.open(io.BytesIO(data))
        tensors[f"file/{name}"] = np.frombuffer(data, dtype=np.uint8).copy()
        tensors[f"rgb/{name}"] = np.asarray(im.convert("RGB"))
        hf = convert_to_rgb(Image.open(io.BytesIO(data)), return_numpy=True)
        if not np.array_equal(hf, tensors[f"rgb/{name}"]):
            tensors[f"hf/{name}"] = hf
        print(f"{name:28} {im.format:5} {im.mode:6} {im.size} {len(data)} bytes")
    # every (value, alpha) pair: R = v, G = 255 - v, B = 7v mod 256, A = a
    v = np.arange(256, dtype=np.uint8)[None, :].repeat(256, 0)
    a = np.arange(256, dtype=np.uint8)[:, None].repeat(256, 1)
    grid = np.dstack([v, 255 - v, (v.astype(int) * 7 % 256).astype(np.uint8), a])
    data = pil_bytes(Image.fromarray(grid, "RGBA"), "PNG")
    tensors["file/composite"] = np.frombuffer(data, dtype=np.uint8).copy()
    hf = convert_to_rgb(Image.open(io.BytesIO(data)), return_numpy=True)
    tensors["hf_png/composite"] = np.frombuffer(pil_bytes(Image.fromarray(hf, "RGB"), "PNG"), dtype=np.uint8).copy()
    meta = {
        "pillow": PIL.__version__,
        "libjpeg_turbo": str(features.version("libjpeg_turbo")),
        "libwebp": str(features.version("webp")),
        "transformers": transformers.__version__,
    }
    out = os.path.join(os.path.dirname(__file__), "data", "decode_refs.safetensors")
    save_file(tensors, out, metadata=meta)
    print(f"wrote {len(tensors)} tensors to {out} ({os.path.getsize(out)} bytes)")


if __name__ == "__main__":
    main()
