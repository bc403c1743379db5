#!/usr/bin/env python3
"""Writes Pillow reference resizes for `tests/pillow_resize.rs`.

Not run in CI: the output, `tests/data/resize_refs.safetensors`, is committed.
Regenerate with a Python that has Pillow, numpy and safetensors, e.g.

    /work/refenv/bin/python crates/image/tests/make_resize_refs.py

Layout of the safetensors file (all tensors uint8, HWC):
    src/<name>                      source RGB image, shape [h, w, 3]
    out/<name>/<filter>/<W>x<H>     PIL Image.resize((W, H), <filter>) of src/<name>
    out/<name>/tv_<filter>/<W>x<H>  torchvision.transforms.v2.functional.resize of the uint8 CHW
                                    tensor to [H, W] with antialias=True (bicubic, bilinear;
                                    tv_nearest = InterpolationMode.NEAREST_EXACT), on the CPU
The Pillow / torch / torchvision versions and torch's CPU capability are stored in the file
metadata.

    --extended N --out PATH   instead writes N random (source size, target size, filter) cases
                              (sources up to 300 px per side) to PATH, for a heavier local check:
                              PALIGEMMA_RESIZE_REFS=PATH cargo test -p paligemma-image --test pillow_resize
"""

import argparse
import os

import numpy as np
import PIL
import torch
import torchvision
import torchvision.transforms.v2.functional as tvF
from PIL import Image
from safetensors.numpy import save_file
from torchvision.transforms import InterpolationMode

FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


TV_FILTERS = {
    "tv_nearest": InterpolationMode.NEAREST_EXACT,
    "tv_bilinear": InterpolationMode.BILINEAR,
    "tv_bicubic": InterpolationMode.BICUBIC,
}


def tv_resize(src, tw, th, mode):
    t = torch.from_numpy(np.ascontiguousarray(src)).permute(2, 0, 1).contiguous()
    try:
        out = tvF.resize(t, [th, tw], interpolation=mode, antialias=True)
    except RuntimeError as e:  # torch's AVX uint8 kernel asserts on some tiny outputs
        print(f"torchvision cannot resize {src.shape} to {th}x{tw} ({mode}): {str(e)[:60]}")
        return None
    return out.permute(1, 2, 0).contiguous().numpy()


def sources(rng):
    h, w = 49, 70
    yy, xx = np.mgrid[0:h, 0:w]
    smooth = np.stack(
        [
            128 + 100 * np.sin(xx / 9.0) * np.cos(yy / 7.0),
            255 * xx / (w - 1),
            255 * (1 - yy / (h - 1)),
        ],
        axis=-1,
    ) + rng.normal(0, 6, (h, w, 3))
    return {
        # uniform noise: every tap matters, worst case for rounding
        "noise": rng.integers(0, 256, (49, 70, 3), dtype=np.uint8),
        # photo-like: smooth structure plus mild noise
        "smooth": np.clip(np.rint(smooth), 0, 255).astype(np.uint8),
        # only 0 and 255: exercises clipping of bicubic/lanczos over/undershoot
        "binary": (rng.integers(0, 2, (17, 31, 3)) * 255).astype(np.uint8),
        "small": rng.integers(0, 256, (10, 13, 3), dtype=np.uint8),
        "column": rng.integers(0, 256, (9, 1, 3), dtype=np.uint8),
    }


# (W, H) targets per source: down 7x, down 1.5x, up ~2.3x, mixed, 1x1, identity, odd ratios.
TARGETS = {
    "noise": [(10, 7), (47, 33), (1, 1), (23, 64), (3, 49), (69, 45)],
    "smooth": [(10, 7), (32, 32), (1, 1), (70, 11), (24, 24)],
    "binary": [(71, 39), (7, 5), (40, 9), (31, 17), (1, 1), (5, 40)],
    "small": [(30, 23), (13, 10), (29, 4), (2, 3), (1, 1), (13, 31), (40, 3)],
    "column": [(1, 20), (5, 9), (3, 2), (1, 1), (7, 30)],
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--extended", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rng = np.random.default_rng(20240611)
    tensors = {}
    if args.extended:
        for i in range(args.extended):
            w, h = (int(v) for v in rng.integers(1, 301, 2))
            src = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            tensors[f"src/r{i}"] = src
            for _ in range(2):
                mode = rng.integers(0, 3)
                if mode == 0:  # anywhere
                    tw, th = (int(v) for v in rng.integers(1, 301, 2))
                else:  # near a ratio (hits edge rounding of supports)
                    s = rng.uniform(0.05, 4.0, 2)
                    tw, th = max(1, int(w * s[0])), max(1, int(h * s[1]))
                names = list(FILTERS) + list(TV_FILTERS)
                name = names[rng.integers(0, len(names))]
                if name in TV_FILTERS:
                    out = tv_resize(src, tw, th, TV_FILTERS[name])
                    if out is not None:
                        tensors[f"out/r{i}/{name}/{tw}x{th}"] = out
                else:
                    img = Image.fromarray(src, "RGB").resize((tw, th), FILTERS[name])
                    tensors[f"out/r{i}/{name}/{tw}x{th}"] = np.asarray(img)
        out = args.out or "/tmp/resize_refs_extended.safetensors"
    else:
        for name, src in sources(rng).items():
            tensors[f"src/{name}"] = np.ascontiguousarray(src)
            im = Image.fromarray(src, "RGB")
            for tw, th in TARGETS[name]:
                for fname, f in FILTERS.items():
                    if fname not in ("bicubic", "bilinear", "nearest") and name not in ("small", "column"):
                        continue
                    out_img = im.resize((tw, th), f)
                    tensors[f"out/{name}/{fname}/{tw}x{th}"] = np.asarray(out_img)
                # torchvision refs on a subset, to keep the file small
                if name == "small" or (name == "noise" and tw * th < 1500):
                    for fname, mode in TV_FILTERS.items():
                        out_arr = tv_resize(src, tw, th, mode)
                        if out_arr is not None:
                            tensors[f"out/{name}/{fname}/{tw}x{th}"] = out_arr
        out = args.out or os.path.join(os.path.dirname(__file__), "data", "resize_refs.safetensors")
    meta = {
        "pillow": PIL.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    save_file(tensors, out, metadata=meta)
    print(f"wrote {len(tensors)} tensors to {out} ({os.path.getsize(out)} bytes)")


if __name__ == "__main__":
    main()
