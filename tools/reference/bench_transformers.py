#!/usr/bin/env python3
"""transformers side of `paligemma bench-compare` (a developer tool, never run in CI).

Two subcommands, both driven by the Rust benchmark:

    bench_transformers.py make --out DIR --shape mid|pg1-224|pg2-mid|pg2-3b-224
        Builds a randomly initialised PaliGemma of that shape with transformers, saves it with
        `save_pretrained` (safetensors, float32) and writes a 1 MP JPEG `image.jpg` next to it.
        Prints one JSON object (`weights_bytes`, `image`) on stdout.

    bench_transformers.py run --model DIR --dtype f32|bf16 --threads N [--decode-tokens K]
        Loads DIR (eager attention), times preprocessing, vision encode (batch 1 and 8),
        prefill (image tokens + 16 text tokens) and greedy decode with a KV cache, and prints one
        JSON object with milliseconds and the peak RSS of this process.

Pinned environment: tools/reference/requirements.txt (torch CPU, transformers 5.x).
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import transformers
from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration, SiglipImageProcessor

transformers.logging.set_verbosity_error()

TEXT_TOKENS = 16  # <bos> + 15 prompt tokens after the image tokens

SHAPES = {
    # PaliGemma-3B widths, 4 + 4 layers, 32k vocab: ~2 GB of f32 decoder weights.
    "mid": dict(text_layers=4, vision_layers=4, vocab=32768, image_token_index=32767),
    # The real PaliGemma 1 3B at 224 px.
    "pg1-224": dict(text_layers=18, vision_layers=27, vocab=257216, image_token_index=257152),
    # PaliGemma 2 3B widths (Gemma 2 2B decoder), 4 + 4 layers, 32k vocab.
    "pg2-mid": dict(
        text_layers=4, vision_layers=4, vocab=32768, image_token_index=32767, family="gemma2"
    ),
    # The real PaliGemma 2 3B at 224 px.
    "pg2-3b-224": dict(
        text_layers=26, vision_layers=27, vocab=257216, image_token_index=257152, family="gemma2"
    ),
}

# Gemma 1 2B and Gemma 2 2B widths; everything else is each config class's default, as on the
# Rust side (src/bench_compare.rs, CompareShape::config_json).
WIDTHS = {
    "gemma": dict(hidden_size=2048, intermediate_size=16384, num_key_value_heads=1),
    "gemma2": dict(hidden_size=2304, intermediate_size=9216, num_key_value_heads=4),
}


def build_config(shape: str) -> PaliGemmaConfig:
    s = SHAPES[shape]
    family = s.get("family", "gemma")
    widths = WIDTHS[family]
    return PaliGemmaConfig(
        text_config=dict(
            model_type=family,
            num_hidden_layers=s["text_layers"],
            num_attention_heads=8,
            head_dim=256,
            vocab_size=s["vocab"],
            hidden_activation="gelu_pytorch_tanh",
            **widths,
        ),
        vision_config=dict(
            model_type="siglip_vision_model",
            hidden_size=1152,
            intermediate_size=4304,
            num_hidden_layers=s["vision_layers"],
            num_attention_heads=16,
            patch_size=14,
            image_size=224,
            projection_dim=widths["hidden_size"],
        ),
        image_token_index=s["image_token_index"],
        projection_dim=widths["hidden_size"],
        hidden_size=widths["hidden_size"],
        vocab_size=s["vocab"],
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )


def make(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = build_config(args.shape)
    model = PaliGemmaForConditionalGeneration(config).eval()
    model.save_pretrained(out, safe_serialization=True)
    n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    # A 1 MP photo-like JPEG: smooth gradients plus noise, 4:2:0 like most cameras.
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:1000, 0:1000].astype(np.float32)
    base = np.stack([x / 4, y / 4, (x + y) / 8], axis=-1)
    img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    image_path = out / "image.jpg"
    Image.fromarray(img).save(image_path, quality=90)
    return {"weights_bytes": n_bytes, "image": str(image_path)}


def best_ms(fn, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, (time.perf_counter() - t) * 1e3)
    return best


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    model = PaliGemmaForConditionalGeneration.from_pretrained(
        args.model, dtype=dtype, attn_implementation="eager"
    ).eval()
    config = model.config
    size = config.vision_config.image_size
    result: dict = {"side": "transformers", "dtype": args.dtype, "threads": torch.get_num_threads()}

    image_bytes = Path(args.model, "image.jpg").read_bytes()
    processor = SiglipImageProcessor(size={"height": size, "width": size})

    def preprocess():
        image = Image.open(io.BytesIO(image_bytes)).convert("RGB")
        return processor(images=image, return_tensors="pt")["pixel_values"]

    pixels = preprocess()
    result["preprocess_ms"] = best_ms(preprocess, 5)

    def encode(batch: int):
        pix = pixels.to(dtype).expand(batch, -1, -1, -1).contiguous()
        out = model.get_image_features(pix)
        return getattr(out, "pooler_output", out)

    with torch.inference_mode():
        features = encode(1)
        result["vision_b1_ms"] = best_ms(lambda: encode(1), 2)
        if args.vision_batch > 1:
            result["vision_batch"] = args.vision_batch
            result["vision_batch_ms"] = best_ms(
                lambda: encode(args.vision_batch), 1
            )

        n_img = features.shape[1]
        ids = [config.image_token_index] * n_img + [config.bos_token_id]
        ids += [1000 + i for i in range(TEXT_TOKENS - 1)]
        input_ids = torch.tensor([ids])
        token_type_ids = torch.zeros_like(input_ids)
        is_image = input_ids == config.image_token_index
        embed = model.get_input_embeddings()
        lm = model.model.language_model

        def prefill():
            embeds = embed(input_ids)
            embeds = embeds.masked_scatter(is_image.unsqueeze(-1), features.to(embeds.dtype))
            return model(
                inputs_embeds=embeds,
                token_type_ids=token_type_ids,
                use_cache=True,
                logits_to_keep=1,
            )

        out = prefill()
        result["prefill_ms"] = best_ms(prefill, 2)
        result["prefill_tokens"] = len(ids)

        # Greedy decode through the Gemma model + LM head with the prefill's KV cache.
        cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
        token = out.logits[0, -1].argmax()
        pos = len(ids)

        def step(token, pos):
            o = lm(
                input_ids=token.view(1, 1),
                cache=cache,
                use_cache=True,
                position_ids=torch.tensor([[pos]]),
            )
            return model.lm_head(o.last_hidden_state[:, -1]).argmax(-1)[0]

        token = step(token, pos)  # warm-up
        pos += 1
        t = time.perf_counter()
        for _ in range(args.decode_tokens):
            token = step(token, pos)
            pos += 1
        result["decode_ms_per_token"] = (time.perf_counter() - t) * 1e3 / max(args.decode_tokens, 1)

    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("make")
    p.add_argument("--out", required=True)
    p.add_argument("--shape", choices=sorted(SHAPES), default="mid")
    p = sub.add_parser("run")
    p.add_argument("--model", required=True)
    p.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--decode-tokens", type=int, default=8)
    p.add_argument("--vision-batch", type=int, default=8)
    args = parser.parse_args()
    result = make(args) if args.cmd == "make" else run(args)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
