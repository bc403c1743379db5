#!/usr/bin/env python3
"""Regenerate the PaliGemma golden-reference fixtures used by the Rust tests.

Usage (from the repository root):

    python tools/reference/make_fixtures.py --out tests/fixtures

Everything is deterministic: fixed seeds, single-threaded torch, a tiny BPE trainer
implemented here (independent of the `tokenizers` trainer), images drawn with numpy/PIL.
See tools/reference/README.md for what every output file contains.
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from safetensors.torch import save_file
from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE

import transformers
from transformers import (
    GemmaTokenizer,
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    PaliGemmaProcessor,
    SiglipImageProcessor,
)

try:  # transformers 5.x PIL backend
    from transformers import SiglipImageProcessorPil
except ImportError:  # pragma: no cover
    SiglipImageProcessorPil = None

torch.set_num_threads(1)
transformers.logging.set_verbosity_error()
torch.use_deterministic_algorithms(True)

MAX_NEW_TOKENS = 32
PIXEL_SIZES = (224, 32, 48)
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]  # ids 0..3 like Gemma
LOC_TOKENS = [f"<loc{i:04d}>" for i in range(1024)]
SEG_TOKENS = [f"<seg{i:03d}>" for i in range(128)]
IMAGE_TOKEN = "<image>"
NUM_MERGES = 260

# ----------------------------------------------------------------------------------------------
# a) tokenizer
# ----------------------------------------------------------------------------------------------

CORPUS = """\
caption en
caption es
answer en what is in the picture?
answer en what color is the car?
answer en how many people are there?
detect cat ; dog
detect person ; car ; bicycle
segment the cat
segment person
describe the image in detail
describe the picture
ocr
a photo of a cat sitting on a red chair next to the window.
a dog running on the green grass in the park.
two people are walking along the beach at sunset.
the quick brown fox jumps over the lazy dog.
there is a small house with a blue roof and a white door.
the sky is blue and the sun is shining over the mountains.
a man is riding a bicycle down the street in the city.
a woman holds an umbrella in the rain.
the cafe on the corner serves coffee and cake.
in the picture there is a table with a cup, a plate and a book.
the image shows a bird on a branch of a tree.
a black and white photo of an old car parked on the road.
the children are playing with a ball in the garden.
a train is crossing the bridge over the river.
this is a picture of a kitchen with a stove and a sink.
what is the man holding? he is holding a phone.
where is the cat? the cat is on the sofa.
how many dogs are in the image? there are 2 dogs.
the answer is 42, and the year was 1999.
there are 3 apples, 7 oranges and 10 bananas on the table.
a close up of a flower with yellow petals.
a boat on the lake with trees in the background.
the text on the sign says stop.
a plate of food with rice, meat and vegetables.
an airplane flying in the clear sky.
the street is full of cars and people at night.
a cat and a dog are sleeping together on the bed.
the building has many windows and a large door.
describe the image in detail: the image shows a living room with a sofa, a lamp and a painting on the wall.
The Café on the left is open. The cat is black. The dog is brown.
A Cat and A Dog in the picture. The image is dark.
"""


def _words(text: str) -> list[str]:
    """Normalise like the final tokenizer (" " -> "▁") and split into training words.

    Words start with "▁" when preceded by a space; newline runs are their own words, so no
    learned merge ever crosses a space or a newline boundary (the final tokenizer has no
    pre-tokenizer, like Gemma's, so this keeps encoding word-local)."""
    text = text.replace(" ", "▁")
    return re.findall(r"\n+|▁+[^▁\n]*|[^▁\n]+", text)


def train_bpe(corpus: str, num_merges: int):
    """Tiny deterministic BPE trainer (ties broken lexicographically)."""
    counts = collections.Counter(_words(corpus))
    words = {w: list(w) for w in counts}
    alphabet = sorted({c for w in counts for c in w})
    merges: list[tuple[str, str]] = []
    pieces: list[str] = []
    seen = set(alphabet)
    for _ in range(num_merges):
        pair_counts: collections.Counter = collections.Counter()
        for w, syms in words.items():
            c = counts[w]
            for a, b in zip(syms, syms[1:]):
                pair_counts[(a, b)] += c
        if not pair_counts:
            break
        best = min(pair_counts.items(), key=lambda kv: (-kv[1], kv[0]))
        (a, b), n = best
        if n < 2:
            break
        merges.append((a, b))
        new = a + b
        if new not in seen:
            pieces.append(new)
            seen.add(new)
        for w, syms in words.items():
            out, i = [], 0
            while i < len(syms):
                if i + 1 < len(syms) and syms[i] == a and syms[i + 1] == b:
                    out.append(new)
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            words[w] = out
    return alphabet, pieces, merges


def build_tokenizer() -> Tokenizer:
    alphabet, pieces, merges = train_bpe(CORPUS, NUM_MERGES)
    assert "\n" in alphabet and "▁" in alphabet
    vocab: dict[str, int] = {}
    for t in SPECIALS:
        vocab[t] = len(vocab)
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for t in alphabet + pieces:
        if t not in vocab:
            vocab[t] = len(vocab)
    for t in LOC_TOKENS + SEG_TOKENS + [IMAGE_TOKEN]:
        vocab[t] = len(vocab)
    tok = Tokenizer(
        BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True, dropout=None)
    )
    # Same pipeline as Gemma's tokenizer.json / transformers' GemmaTokenizer.
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous", invert=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in LOC_TOKENS + SEG_TOKENS])
    tok.add_special_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)])
    assert tok.get_vocab_size(with_added_tokens=True) == len(vocab)
    assert tok.token_to_id("\n") is not None
    return tok


def wrap_tokenizer(tok: Tokenizer, workdir: Path):
    """Save the raw tokenizer.json and load it through transformers' GemmaTokenizer."""
    workdir.mkdir(parents=True, exist_ok=True)
    tok.save(str(workdir / "tokenizer.json"))
    hf_tok = GemmaTokenizer(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token=None,
        add_bos_token=False,
        add_eos_token=False,
    )
    return hf_tok


# ----------------------------------------------------------------------------------------------
# c) images
# ----------------------------------------------------------------------------------------------


def make_images(out: Path) -> dict[str, Path]:
    d = out / "images"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1234)
    paths = {}

    # photo.jpg: 320x240, sky gradient, sun, textured ground, hard-edged house, thin lines.
    w, h = 320, 240
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    t = yy / h
    img[..., 0] = 70 + 120 * t
    img[..., 1] = 130 + 80 * t
    img[..., 2] = 230 - 60 * t
    sun = np.exp(-(((xx - 250) ** 2 + (yy - 50) ** 2) / (2 * 25.0**2)))
    img += sun[..., None] * np.array([180, 140, 20], np.float32)
    ground = yy > 150 + 10 * np.sin(xx / 23.0)
    tex = rng.normal(0, 18, (h, w)).astype(np.float32)
    g = np.stack([60 + 0.3 * (yy - 150) + tex, 120 + tex * 0.8, 40 + tex * 0.5], -1)
    img = np.where(ground[..., None], g, img)
    img = np.clip(img, 0, 255).astype(np.uint8)
    pil = Image.fromarray(img, "RGB")
    dr = ImageDraw.Draw(pil)
    dr.rectangle([60, 110, 140, 190], fill=(200, 60, 50), outline=(20, 20, 20), width=2)
    dr.polygon([(55, 110), (100, 70), (145, 110)], fill=(90, 40, 30))
    dr.rectangle([90, 150, 110, 190], fill=(60, 40, 20))
    dr.ellipse([180, 170, 230, 220], fill=(240, 240, 240), outline=(0, 0, 0))
    for k in range(6):
        dr.line([(0, 20 + 7 * k), (120, 5 + 9 * k)], fill=(255, 255, 255), width=1)
    paths["photo"] = d / "photo.jpg"
    pil.save(paths["photo"], format="JPEG", quality=90, subsampling=0, optimize=False)

    # rgba.png: 200x200 RGBA, colourful pattern, alpha = radial ramp + fully transparent/opaque
    # squares. Transparent pixels carry non-zero colour so "drop alpha" != "composite".
    w = h = 200
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rgb = np.stack(
        [
            128 + 127 * np.sin(xx / 13.0),
            128 + 127 * np.cos(yy / 17.0),
            (xx + yy) * 255.0 / 398.0,
        ],
        -1,
    )
    r = np.sqrt((xx - 100) ** 2 + (yy - 100) ** 2)
    alpha = np.clip(255 - r * 2.2, 0, 255)
    alpha[10:50, 10:50] = 0
    alpha[150:190, 150:190] = 255
    alpha[150:190, 10:50] = 128
    rgba = np.concatenate([rgb, alpha[..., None]], -1)
    paths["rgba"] = d / "rgba.png"
    Image.fromarray(np.clip(rgba, 0, 255).astype(np.uint8), "RGBA").save(paths["rgba"])

    # grey.png: 150x100 mode L, gradient + checkerboard + a few lines.
    w, h = 150, 100
    yy, xx = np.mgrid[0:h, 0:w]
    gimg = (xx * 255 // (w - 1)).astype(np.float32)
    checker = ((xx // 10 + yy // 10) % 2) == 0
    gimg = np.where((yy > 50) & checker, 255 - gimg, gimg)
    gimg[20:23, :] = 0
    gimg[:, 70:72] = 255
    paths["grey"] = d / "grey.png"
    Image.fromarray(gimg.astype(np.uint8), "L").save(paths["grey"])

    # wide.webp: 300x120 RGB, lossless (lossy WebP decoders differ between libraries).
    w, h = 300, 120
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    wimg = np.stack(
        [
            255 * (xx / w),
            128 + 100 * np.sign(np.sin(xx / 7.0)) * (yy < 60),
            255 * (yy / h),
        ],
        -1,
    )
    wimg += rng.normal(0, 6, wimg.shape)
    paths["wide"] = d / "wide.webp"
    Image.fromarray(np.clip(wimg, 0, 255).astype(np.uint8), "RGB").save(paths["wide"], format="WEBP", lossless=True)

    # tall.png: 40x300 RGB: width is upscaled, height downscaled at 224 and 48.
    w, h = 40, 300
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    timg = np.stack(
        [
            np.where((yy // 25) % 2 == 0, 230, 30) + 0 * xx,
            255 * xx / (w - 1) + 0 * yy,
            128 + 120 * np.sin(yy / 9.0 + xx / 5.0),
        ],
        -1,
    )
    paths["tall"] = d / "tall.png"
    Image.fromarray(np.clip(timg, 0, 255).astype(np.uint8), "RGB").save(paths["tall"])
    return paths


# ----------------------------------------------------------------------------------------------
# b) models
# ----------------------------------------------------------------------------------------------

CASES = {
    "pg1-32": dict(
        gemma=1, image_size=32, layers=2, hidden=64, heads=4, kv_heads=1,
        image="photo", prompt="caption en",
    ),
    "pg1-48-gqa": dict(
        gemma=1, image_size=48, layers=2, hidden=64, heads=4, kv_heads=2,
        image="wide", prompt="answer en what is in the picture?",
    ),
    "pg2-32": dict(
        gemma=2, image_size=32, layers=4, hidden=48, heads=4, kv_heads=2, sliding_window=4096,
        image="rgba", prompt="detect cat ; dog",
    ),
    "pg2-48-window": dict(
        gemma=2, image_size=48, layers=4, hidden=48, heads=4, kv_heads=2, sliding_window=8,
        image="grey", prompt="describe the image in detail",
    ),
}
HEAD_DIM = 16
TEXT_INTERMEDIATE = 128
PATCH = 8
QUERY_PRE_ATTN_SCALAR = 24
ATTN_SOFTCAP = 5.0
FINAL_SOFTCAP = 10.0


def make_config(case: dict, tok_len: int, image_token_id: int, **overrides) -> PaliGemmaConfig:
    text_vocab = ((tok_len + 63) // 64) * 64
    text = dict(
        model_type="gemma" if case["gemma"] == 1 else "gemma2",
        vocab_size=text_vocab,
        hidden_size=case["hidden"],
        intermediate_size=TEXT_INTERMEDIATE,
        num_hidden_layers=case["layers"],
        num_attention_heads=case["heads"],
        num_key_value_heads=case["kv_heads"],
        head_dim=HEAD_DIM,
        hidden_activation="gelu_pytorch_tanh",
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        max_position_embeddings=8192,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=1,
    )
    if case["gemma"] == 2:
        text.update(
            query_pre_attn_scalar=QUERY_PRE_ATTN_SCALAR,
            attn_logit_softcapping=ATTN_SOFTCAP,
            final_logit_softcapping=FINAL_SOFTCAP,
            sliding_window=case["sliding_window"],
        )
    text.update(overrides)
    vision = dict(
        model_type="siglip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        patch_size=PATCH,
        image_size=case["image_size"],
        num_channels=3,
        hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=1e-6,
        vision_use_head=False,
    )
    cfg = PaliGemmaConfig(
        text_config=text,
        vision_config=vision,
        image_token_index=image_token_id,
        vocab_size=tok_len,
        projection_dim=case["hidden"],
        hidden_size=case["hidden"],
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=1,
    )
    return cfg


def reinit_weights(model: torch.nn.Module, seed: int, gemma2: bool = False) -> None:
    """Large-spread init so that greedy output is varied (see README).

    Gemma 2 post-norms (post_attention_layernorm / post_feedforward_layernorm) get offset mean 2.0
    (scale ~3): with offsets ~0 the tied, sqrt(H)-scaled input embedding dominates the residual
    stream of these tiny models and greedy decoding just repeats the last token forever."""
    gen = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    done = set()
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if id(p) in done:
            continue
        done.add(id(p))
        mod_name, _, pname = name.rpartition(".")
        mod = modules[mod_name]
        cls = type(mod).__name__
        shape = p.shape
        with torch.no_grad():
            if isinstance(mod, torch.nn.LayerNorm):
                if pname == "weight":
                    p.copy_(1.0 + 0.1 * torch.randn(shape, generator=gen))
                else:
                    p.copy_(0.2 * torch.randn(shape, generator=gen))
            elif "RMSNorm" in cls:
                # stored as offset: scale = 1 + w
                post = gemma2 and ("post_attention_layernorm" in name or "post_feedforward_layernorm" in name)
                p.copy_((2.0 if post else 0.0) + 0.2 * torch.randn(shape, generator=gen))
            else:  # Linear / Embedding / Conv2d weights and all biases
                p.copy_(0.2 * torch.randn(shape, generator=gen))


def processor_for(hf_tok, size: int, n_tokens: int, pil_backend: bool = False) -> PaliGemmaProcessor:
    cls = SiglipImageProcessorPil if pil_backend else SiglipImageProcessor
    ip = cls(size={"height": size, "width": size}, image_seq_length=n_tokens)
    return PaliGemmaProcessor(image_processor=ip, tokenizer=copy.deepcopy(hf_tok))


def proc_inputs(processor, image, prompt):
    enc = processor(images=image, text=prompt, return_tensors="pt")
    enc = dict(enc)
    enc.pop("labels", None)
    return enc


@torch.no_grad()
def greedy(model, enc, dtype=torch.float32):
    enc = dict(enc)
    enc["pixel_values"] = enc["pixel_values"].to(dtype)
    out = model.generate(
        **enc,
        do_sample=False,
        max_new_tokens=MAX_NEW_TOKENS,
        output_logits=True,
        return_dict_in_generate=True,
        eos_token_id=1,
        pad_token_id=0,
    )
    L = enc["input_ids"].shape[1]
    tokens = out.sequences[0, L:].clone()
    logits = torch.stack([lg[0].float() for lg in out.logits], 0)
    return tokens, logits


@torch.no_grad()
def full_forward(model, enc, gen_tokens=None, token_type_ids="processor", dtype=torch.float32):
    """Single no-cache forward over prompt (+ optional generated tokens as suffix)."""
    ids = enc["input_ids"]
    tti = enc["token_type_ids"]
    if gen_tokens is not None and len(gen_tokens):
        ids = torch.cat([ids, gen_tokens[None]], 1)
        tti = torch.cat([tti, torch.ones((1, len(gen_tokens)), dtype=tti.dtype)], 1)
    kwargs = dict(
        input_ids=ids,
        pixel_values=enc["pixel_values"].to(dtype),
        attention_mask=torch.ones_like(ids),
        use_cache=False,
    )
    if token_type_ids == "processor":
        kwargs["token_type_ids"] = tti
    elif token_type_ids == "none":
        pass
    elif token_type_ids == "ones":
        kwargs["token_type_ids"] = torch.ones_like(tti)
    return model(**kwargs).logits[0].float()


def check_greedy(tokens, logits, tok_len, image_id, label):
    """Return (ok, reason, stats)."""
    t = tokens.tolist()
    top2 = torch.topk(logits, 2, dim=-1).values
    margins = (top2[:, 0] - top2[:, 1]).tolist()
    stats = dict(distinct=len(set(t)), min_margin=min(margins) if margins else None)
    if len(t) != MAX_NEW_TOKENS:
        return False, f"{label}: stopped early ({len(t)} tokens)", stats
    if 1 in t:
        return False, f"{label}: <eos> generated", stats
    if 0 in t or image_id in t or 2 in t or 3 in t:
        return False, f"{label}: generated <pad>/<bos>/<unk>/<image>", stats
    if max(t) >= tok_len:
        return False, f"{label}: generated an id beyond the tokenizer (padding rows)", stats
    if len(set(t)) < 8:
        return False, f"{label}: only {len(set(t))} distinct tokens", stats
    return True, "", stats


def dump_json(obj) -> str:
    """Pretty JSON, but with lists of numbers / short strings kept on one line."""
    text = json.dumps(obj, indent=1, ensure_ascii=False)

    def collapse(m):
        items = [x.strip() for x in m.group(1).split(",")]
        return "[" + ", ".join(items) + "]"

    text = re.sub(r"\[\s*((?:-?[0-9.e+-]+,\s*)*-?[0-9.e+-]+)\s*\]", collapse, text)
    return text + "\n"


def save_model_dir(model, processor, model_dir: Path):
    if model_dir.exists():
        shutil.rmtree(model_dir)
    model.save_pretrained(model_dir, safe_serialization=True)
    processor.save_pretrained(model_dir)
    # transformers 5 keeps the image-processor settings inside processor_config.json; real hub
    # checkpoints also ship a standalone preprocessor_config.json, so write that as well.
    processor.image_processor.save_pretrained(model_dir)
    # Re-serialise tokenizer.json compactly (same content, ~40% smaller than the pretty print).
    tj = model_dir / "tokenizer.json"
    data = json.loads(tj.read_text(encoding="utf-8"))
    tj.write_text(json.dumps(data, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
    for f in model_dir.iterdir():
        os.chmod(f, 0o644)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures")
    ap.add_argument("--max-seed-tries", type=int, default=200)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for sub in ("models", "images", "reference"):
        if (out / sub).exists():
            shutil.rmtree(out / sub)
    (out / "reference").mkdir(parents=True)
    report: dict = {
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": __import__("tokenizers").__version__,
            "numpy": np.__version__,
            "pillow": Image.__version__,
            "safetensors": __import__("safetensors").__version__,
        }
    }

    # ---- tokenizer ---------------------------------------------------------------------------
    raw_tok = build_tokenizer()
    tmp = out / "models" / "_tokenizer_tmp"
    hf_tok = wrap_tokenizer(raw_tok, tmp)
    tok_len = len(hf_tok)
    image_id = raw_tok.token_to_id(IMAGE_TOKEN)
    nl_id = raw_tok.token_to_id("\n")
    assert tok_len == raw_tok.get_vocab_size(True), (tok_len, raw_tok.get_vocab_size(True))
    for t in LOC_TOKENS[:3] + LOC_TOKENS[-2:] + SEG_TOKENS[:2] + SEG_TOKENS[-1:]:
        ids = raw_tok.encode(t, add_special_tokens=False).ids
        assert len(ids) == 1 and raw_tok.decode(ids, skip_special_tokens=True) == t, (t, ids)
    report["tokenizer"] = dict(size=tok_len, image_id=image_id, newline_id=nl_id,
                               loc0000=raw_tok.token_to_id("<loc0000>"), seg000=raw_tok.token_to_id("<seg000>"))

    # ---- images ------------------------------------------------------------------------------
    img_paths = make_images(out)

    def open_img(stem):
        im = Image.open(img_paths[stem])
        im.load()
        return im

    # ---- pixels ------------------------------------------------------------------------------
    pix = {}
    pix_diff = {}
    for stem in img_paths:
        for s in PIXEL_SIZES:
            tv = SiglipImageProcessor(size={"height": s, "width": s})
            pv = tv(images=open_img(stem), return_tensors="pt")["pixel_values"][0].float().contiguous()
            # exact uint8 code of the resized image: pv == (u8 - 127.5) / 127.5 in f32
            u8 = torch.round(pv * 127.5 + 127.5).clamp(0, 255).to(torch.uint8)
            recon = (u8.float() - 127.5) / 127.5
            assert torch.equal(recon, pv), f"{stem}_{s}: torchvision pixels are not (u8-127.5)/127.5"
            if s == 224:
                pix[f"{stem}_{s}_u8"] = u8.contiguous()
            else:
                pix[f"{stem}_{s}"] = pv
            if SiglipImageProcessorPil is not None:  # PIL backend: stored for 32/48 only (size budget)
                pp = SiglipImageProcessorPil(size={"height": s, "width": s})
                pvp = torch.from_numpy(np.asarray(pp(images=open_img(stem), return_tensors="np")["pixel_values"][0])).float()
                u8p = torch.round(pvp * 127.5 + 127.5).clamp(0, 255).to(torch.uint8)
                reconp = (u8p.float() - 127.5) / 127.5
                pil_recon_err = (reconp - pvp).abs().max().item()
                assert pil_recon_err < 1e-6, (stem, s, pil_recon_err)
                if s != 224:
                    pix[f"{stem}_{s}_pil"] = pvp.contiguous()
                d = (u8.int() - u8p.int()).abs()
                pix_diff[f"{stem}_{s}"] = dict(
                    max_abs_pixel_value=(pv - pvp).abs().max().item(),
                    max_abs_u8_levels=int(d.max()),
                    frac_differing=float((d > 0).float().mean()),
                    pil_exact_vs_u8_formula=pil_recon_err,
                )
    # A single metadata key keeps the file byte-deterministic (safetensors writes metadata in hash order).
    save_file(pix, str(out / "reference" / "pixels.safetensors"), metadata={"description": (
        "[3,S,S] channels-first RGB. <stem>_<S> (S in 32,48): pixel_values[0] f32 from the default "
        "(torchvision) SiglipImageProcessor; <stem>_<S>_pil: same from SiglipImageProcessorPil; "
        "<stem>_224_u8: uint8 resized image from the torchvision backend, pixel_values = (u8 - 127.5)/127.5 "
        "in f32 (bit-exact)."
    )})
    report["pixel_backend_diff"] = pix_diff

    # ---- tokenizer cases ---------------------------------------------------------------------
    tok_texts = [
        "caption en",
        "hello world",
        "The quick brown fox jumps over the lazy dog.",
        "café ünïcode 日本",
        "emoji 🙂 ok",
        "12345 and 67.89",
        "  leading spaces",
        "trailing spaces  ",
        " ",
        "",
        "\n",
        "line one\nline two\n\n",
        "tabs\tand\ttabs",
        "UPPER lower MiXeD",
        "<loc0012><loc1023> cat",
        "detect cat ; dog",
        "<loc0000><loc0001><loc0511><loc1023><seg000><seg005><seg127> dog ; cat",
        "segment the cat<seg005>",
        "a<loc0100>b",
        "answer en what is in the picture?",
        "<0x41> is not a byte token",
        "<image><bos>caption en\n",
    ]
    tok_cases = []
    for text in tok_texts:
        ids = hf_tok.encode(text, add_special_tokens=False)
        raw_ids = raw_tok.encode(text, add_special_tokens=False).ids
        assert ids == raw_ids, (text, ids, raw_ids)
        tok_cases.append(dict(text=text, ids=ids, decoded=hf_tok.decode(ids, skip_special_tokens=True),
                              tokens=hf_tok.convert_ids_to_tokens(ids)))

    # ---- models ------------------------------------------------------------------------------
    proc_cases = []
    report["cases"] = {}
    for case_name, case in CASES.items():
        S = case["image_size"]
        N = (S // PATCH) ** 2
        model_dir = out / "models" / case_name
        processor = processor_for(hf_tok, S, N)
        image = open_img(case["image"])
        enc = proc_inputs(processor, image, case["prompt"])
        ids = enc["input_ids"][0].tolist()
        assert ids[:N] == [image_id] * N and ids[N] == 2 and ids.count(2) == 1 and ids[-1] == nl_id, ids
        assert enc["token_type_ids"].sum() == 0

        chosen = None
        tries = []
        for seed in range(1000 + 17 * len(report["cases"]), 1000 + 17 * len(report["cases"]) + args.max_seed_tries):
            torch.manual_seed(seed)
            cfg = make_config(case, tok_len, image_id)
            model = PaliGemmaForConditionalGeneration(cfg).eval()
            reinit_weights(model, seed, gemma2=case["gemma"] == 2)
            model.config._attn_implementation = "eager"
            model.set_attn_implementation("eager")
            toks, lg = greedy(model, enc)
            ok, why, st = check_greedy(toks, lg, tok_len, image_id, "f32")
            if ok and st["min_margin"] < 2e-3:
                ok, why = False, f"f32 min top1-top2 margin {st['min_margin']:.2e} too small"
            if ok:
                mb = copy.deepcopy(model).to(torch.bfloat16)
                btoks, blg = greedy(mb, enc, torch.bfloat16)
                ok, why, bst = check_greedy(btoks, blg, tok_len, image_id, "bf16")
                if ok and bst["min_margin"] <= 0.0:
                    ok, why = False, "bf16: exact top-1 tie in some step"
            tries.append((seed, why))
            if ok:
                chosen = seed
                break
        assert chosen is not None, f"{case_name}: no seed satisfied the greedy criteria: {tries[-5:]}"

        save_model_dir(model, processor, model_dir)
        # Reload everything from disk: the fixtures are what the saved checkpoint produces.
        del model
        processor = PaliGemmaProcessor.from_pretrained(model_dir)
        model = PaliGemmaForConditionalGeneration.from_pretrained(
            model_dir, dtype=torch.float32, attn_implementation="eager").eval()
        enc2 = proc_inputs(processor, open_img(case["image"]), case["prompt"])
        assert torch.equal(enc2["input_ids"], enc["input_ids"]) and torch.equal(enc2["pixel_values"], enc["pixel_values"])
        enc = enc2
        with torch.no_grad():
            feats = model.get_image_features(enc["pixel_values"]).pooler_output[0].float()
        prefill = full_forward(model, enc)
        tokens, step_logits = greedy(model, enc)
        ok, why, st = check_greedy(tokens, step_logits, tok_len, image_id, "f32 reloaded")
        assert ok, why

        mb = PaliGemmaForConditionalGeneration.from_pretrained(
            model_dir, dtype=torch.bfloat16, attn_implementation="eager").eval()
        with torch.no_grad():
            bfeats = mb.get_image_features(enc["pixel_values"].to(torch.bfloat16)).pooler_output[0].float()
        btokens, bstep = greedy(mb, enc, torch.bfloat16)
        ok, why, bst = check_greedy(btokens, bstep, tok_len, image_id, "bf16 reloaded")
        assert ok and bst["min_margin"] > 0.0, (why, bst)

        # ---- measurements ----
        m = {}
        m["seed"] = chosen
        m["seeds_tried"] = len(tries)
        m["tokens"] = tokens.tolist()
        m["bf16_tokens"] = btokens.tolist()
        m["bf16_first_divergence"] = next((i for i, (a, b) in enumerate(zip(m["tokens"], m["bf16_tokens"])) if a != b), None)
        m["distinct_tokens"] = st["distinct"]
        m["f32_min_top2_margin"] = st["min_margin"]
        m["bf16_min_top2_margin"] = bst["min_margin"]
        m["decoded"] = processor.tokenizer.decode(tokens.tolist(), skip_special_tokens=True)
        m["step0_vs_prefill_last_maxabs"] = (step_logits[0] - prefill[-1]).abs().max().item()
        # teacher-forced single forward (no cache) over prompt + generated tokens (suffix = token_type 1)
        tf = full_forward(model, enc, tokens[:-1])
        L = enc["input_ids"].shape[1]
        m["teacher_forced_vs_steps_maxabs"] = (tf[L - 1:] - step_logits).abs().max().item()
        m["logit_abs_max"] = prefill.abs().max().item()
        m["logit_std"] = prefill.std().item()
        causal = full_forward(model, enc, token_type_ids="none")
        ones = full_forward(model, enc, token_type_ids="ones")
        m["causal_vs_prefix_prefill_maxabs"] = (causal - prefill).abs().max().item()
        m["causal_vs_prefix_prefill_lastrow_maxabs"] = (causal[-1] - prefill[-1]).abs().max().item()
        m["causal_vs_prefix_prefill_lastrow_argmax_same"] = bool(causal[-1].argmax() == prefill[-1].argmax())
        m["tti_none_equals_tti_ones"] = bool(torch.equal(causal, ones))
        m["image_features_absmax"] = feats.abs().max().item()
        m["bf16_vs_f32_image_features_maxabs"] = (bfeats - feats).abs().max().item()
        m["bf16_vs_f32_step0_logits_maxabs"] = (bstep[0] - step_logits[0]).abs().max().item()

        sd = {k: v.clone() for k, v in model.state_dict().items()}
        if case["gemma"] == 2:
            for label, ov in (
                ("no_attn_softcap", dict(attn_logit_softcapping=None)),
                ("no_final_softcap", dict(final_logit_softcapping=None)),
                ("no_softcaps", dict(attn_logit_softcapping=None, final_logit_softcapping=None)),
            ):
                alt = PaliGemmaForConditionalGeneration(make_config(case, tok_len, image_id, **ov)).eval()
                alt.load_state_dict(sd)
                alt.set_attn_implementation("eager")
                a_pre = full_forward(alt, enc)
                a_tf = full_forward(alt, enc, tokens[:-1])[L - 1:]
                m[f"{label}_prefill_maxabs"] = (a_pre - prefill).abs().max().item()
                m[f"{label}_steps_maxabs"] = (a_tf - step_logits).abs().max().item()
                m[f"{label}_steps_argmax_agree"] = int((a_tf.argmax(-1) == step_logits.argmax(-1)).sum())
            alt = PaliGemmaForConditionalGeneration(
                make_config(case, tok_len, image_id, sliding_window=4096 if case["sliding_window"] != 4096 else 2)
            ).eval()
            alt.load_state_dict(sd)
            alt.set_attn_implementation("eager")
            a_pre = full_forward(alt, enc)
            a_tf = full_forward(alt, enc, tokens[:-1])[L - 1:]
            a_tok, _ = greedy(alt, enc)
            key = "window_4096" if case["sliding_window"] != 4096 else "window_2"
            m[f"{key}_prefill_maxabs"] = (a_pre - prefill).abs().max().item()
            m[f"{key}_steps_maxabs"] = (a_tf - step_logits).abs().max().item()
            m[f"{key}_steps_argmax_agree"] = int((a_tf.argmax(-1) == step_logits.argmax(-1)).sum())
            m[f"{key}_greedy_tokens"] = a_tok.tolist()
        report["cases"][case_name] = m

        # ---- write reference ----
        tensors = {
            "pixel_values": enc["pixel_values"].float().contiguous(),
            "input_ids": enc["input_ids"][0].to(torch.int64).contiguous(),
            "image_features": feats.contiguous(),
            "prefill_logits": prefill.contiguous(),
            "step_logits": step_logits.contiguous(),
            "tokens": tokens.to(torch.int64).contiguous(),
            "bf16_tokens": btokens.to(torch.int64).contiguous(),
            "bf16_step_logits": bstep.contiguous(),
            "bf16_image_features": bfeats.contiguous(),
        }
        save_file(tensors, str(out / "reference" / f"{case_name}.safetensors"))
        notes = [
            f"PaliGemma {case['gemma']} (text model_type {'gemma' if case['gemma'] == 1 else 'gemma2'}), "
            f"{case['heads']} heads / {case['kv_heads']} kv heads, head_dim {HEAD_DIM}, hidden {case['hidden']}, "
            f"{case['layers']} text layers, text vocab {model.config.text_config.vocab_size}, tokenizer {tok_len}.",
            "Reference: transformers eager attention, float32, greedy generate (do_sample=False) with the "
            "processor's token_type_ids; step_logits are raw logits (after the final softcap for PG2).",
            "bf16_*: same checkpoint loaded with dtype=torch.bfloat16, pixel_values cast to bf16; logits upcast to f32.",
            "image_features: multi_modal_projector output, no scaling (HF-5 scatters them unscaled).",
        ]
        if case["gemma"] == 2:
            notes.append(
                f"query_pre_attn_scalar {QUERY_PRE_ATTN_SCALAR}, attn softcap {ATTN_SOFTCAP}, final softcap "
                f"{FINAL_SOFTCAP}, sliding_window {case['sliding_window']} on even layers (layer_types "
                f"{model.config.text_config.layer_types})."
            )
        if case["image"] == "rgba":
            notes.append("rgba.png is alpha-composited onto WHITE by the processor before resizing.")
        meta = {
            "model_dir": f"models/{case_name}",
            "image": f"images/{img_paths[case['image']].name}",
            "prompt": case["prompt"],
            "image_size": S,
            "num_image_tokens": N,
            "max_new_tokens": MAX_NEW_TOKENS,
            "prompt_len": L,
            "text_vocab_size": model.config.text_config.vocab_size,
            "tokenizer_size": tok_len,
            "image_token_id": image_id,
            "tokens": tokens.tolist(),
            "bf16_tokens": btokens.tolist(),
            "decoded": m["decoded"],
            "notes": " ".join(notes),
        }
        (out / "reference" / f"{case_name}.json").write_text(dump_json(meta), encoding="utf-8")

        if case_name in ("pg1-32", "pg2-48-window"):
            prompts = (["caption en", "answer en what is this? ", "detect cat <loc0100> dog"]
                       if case_name == "pg1-32" else ["describe the image in detail"])
            for p in prompts:
                e = proc_inputs(processor, open_img("photo"), p)
                proc_cases.append(dict(prompt=p, num_image_tokens=N, input_ids=e["input_ids"][0].tolist(),
                                       token_type_ids=e["token_type_ids"][0].tolist()))

    shutil.rmtree(tmp)
    # reload the tokenizer as saved in a model dir to make sure the saved files reproduce the cases
    saved = PaliGemmaProcessor.from_pretrained(out / "models" / "pg1-32").tokenizer
    raw_saved = Tokenizer.from_file(str(out / "models" / "pg1-32" / "tokenizer.json"))
    for c in tok_cases:
        assert saved.encode(c["text"], add_special_tokens=False) == c["ids"], c
        assert raw_saved.encode(c["text"], add_special_tokens=False).ids == c["ids"], c
        assert raw_saved.decode(c["ids"], skip_special_tokens=True) == c["decoded"], c
    report["saved_tokenizer_class"] = type(saved).__name__
    report["saved_image_processor_class"] = type(
        PaliGemmaProcessor.from_pretrained(out / "models" / "pg1-32").image_processor).__name__

    (out / "reference" / "tokenizer_cases.json").write_text(
        dump_json(dict(tokenizer=tok_cases, processor=proc_cases)), encoding="utf-8")
    (out / "reference" / "generation_report.json").write_text(dump_json(report), encoding="utf-8")
    print(dump_json(report))


if __name__ == "__main__":
    main()
