//! SigLIP vision tower (transformers `modeling_siglip.py`, `SiglipVisionTransformer` without the
//! pooling head; big_vision `vit.py` with `pool_type="none"`), spec §3.
//!
//! Struct tree = checkpoint tree under `vision_tower.vision_model.`:
//! `embeddings.{patch_embedding, position_embedding}`, `encoder.layers.N.{layer_norm1,
//! self_attn.{q,k,v,out}_proj, layer_norm2, mlp.{fc1, fc2}}`, `post_layernorm`.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::config::VisionConfig;
use crate::layers::attention::{AttentionParams, attend};
use crate::layers::elementwise::add;
use crate::layers::linear::Linear;
use crate::layers::mlp::Mlp;
use crate::layers::norm::LayerNorm;

/// Patch embedding (a stride-`p` convolution, computed as one matmul over flattened patches)
/// plus the learned position embedding.
#[derive(Debug, Clone)]
struct Embeddings {
    /// Conv weight flattened to `[hidden, C·p·p]` (PyTorch `[out, in, kh, kw]` order).
    patch: Linear,
    /// `[num_patches, hidden]`.
    position: Tensor,
    patch_size: usize,
    channels: usize,
}

impl Embeddings {
    fn new(cfg: &VisionConfig, vb: VarBuilder<'_>) -> Result<Self> {
        let (h, c, p) = (cfg.hidden_size, cfg.num_channels, cfg.patch_size);
        let conv = vb.pp("patch_embedding");
        let weight = conv.get((h, c, p, p), "weight")?.reshape((h, c * p * p))?;
        let bias = conv.get(h, "bias")?;
        let position = vb
            .pp("position_embedding")
            .get((cfg.num_image_tokens(), h), "weight")?;
        Ok(Self {
            patch: Linear::from_weight(weight, Some(bias)),
            position,
            patch_size: p,
            channels: c,
        })
    }

    /// `pixels: [B, C, S, S]` → `[B, (S/p)², hidden]`, patches in row-major order.
    fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let (b, c, height, width) = pixels.dims4()?;
        let p = self.patch_size;
        if c != self.channels {
            candle_core::bail!(
                "pixel_values has {c} channels, the vision tower expects {}",
                self.channels
            );
        }
        let (gh, gw) = (height / p, width / p);
        let patches = pixels
            .reshape((b, c, gh, p, gw, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b * gh * gw, c * p * p))?;
        let x = self.patch.forward(&patches)?.reshape((b, gh * gw, ()))?;
        x.broadcast_add(&self.position)
    }
}

#[derive(Debug, Clone)]
struct SelfAttention {
    /// `q_proj`, `k_proj`, `v_proj` stacked into one layer at load.
    qkv_proj: Linear,
    out_proj: Linear,
    heads: usize,
    scale: f64,
}

impl SelfAttention {
    fn new(cfg: &VisionConfig, vb: VarBuilder<'_>) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            qkv_proj: Linear::stacked(
                h,
                &[("q_proj", h), ("k_proj", h), ("v_proj", h)],
                true,
                vb.clone(),
            )?,
            out_proj: Linear::new(h, h, true, vb.pp("out_proj"))?,
            heads: cfg.num_attention_heads,
            scale: (cfg.head_dim() as f64).powf(-0.5),
        })
    }

    /// `x: [B·N, hidden]` rows of `images` images (no mask: every patch sees every patch of its
    /// own image). Images are folded into the head dimension, so one batched matmul serves all.
    fn forward(&self, x: &Tensor, images: usize) -> Result<Tensor> {
        let (rows, hidden) = x.dims2()?;
        let n = rows / images;
        let head_dim = hidden / self.heads;
        // One strided copy per projection straight out of the stacked output.
        let qkv = self
            .qkv_proj
            .forward(x)?
            .reshape((images, n, 3, self.heads, head_dim))?;
        let split = |i: usize| -> Result<Tensor> {
            qkv.narrow(2, i, 1)?
                .squeeze(2)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((images * self.heads, n, head_dim))
        };
        let (q, k, v) = (split(0)?, split(1)?, split(2)?);
        let params = AttentionParams {
            scale: self.scale,
            softcap: None,
            mask: None,
        };
        let out = attend(&q, &k, &v, params)?
            .reshape((images, self.heads, n, head_dim))?
            .transpose(1, 2)?
            .reshape((rows, hidden))?;
        self.out_proj.forward(&out)
    }
}

#[derive(Debug, Clone)]
struct EncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: SelfAttention,
    layer_norm2: LayerNorm,
    mlp: Mlp,
}

impl EncoderLayer {
    fn new(cfg: &VisionConfig, vb: VarBuilder<'_>) -> Result<Self> {
        let (h, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        Ok(Self {
            layer_norm1: LayerNorm::new(h, eps, vb.pp("layer_norm1"))?,
            self_attn: SelfAttention::new(cfg, vb.pp("self_attn"))?,
            layer_norm2: LayerNorm::new(h, eps, vb.pp("layer_norm2"))?,
            mlp: Mlp::new(h, cfg.intermediate_size, vb.pp("mlp"))?,
        })
    }

    fn forward(&self, x: &Tensor, images: usize) -> Result<Tensor> {
        let attn = self
            .self_attn
            .forward(&self.layer_norm1.forward(x)?, images)?;
        let h = add(x, &attn)?;
        add(&h, &self.mlp.forward(&self.layer_norm2.forward(&h)?)?)
    }
}

/// The SigLIP encoder: embeddings, pre-LN transformer layers, final LayerNorm.
#[derive(Debug, Clone)]
pub struct VisionTower {
    embeddings: Embeddings,
    layers: Vec<EncoderLayer>,
    post_layernorm: LayerNorm,
    image_size: usize,
}

impl VisionTower {
    /// `vb` points at `vision_tower.vision_model`.
    pub fn new(cfg: &VisionConfig, vb: VarBuilder<'_>) -> Result<Self> {
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| EncoderLayer::new(cfg, vb.pp("encoder.layers").pp(i)))
            .collect::<Result<_>>()?;
        Ok(Self {
            embeddings: Embeddings::new(cfg, vb.pp("embeddings"))?,
            layers,
            post_layernorm: LayerNorm::new(
                cfg.hidden_size,
                cfg.layer_norm_eps,
                vb.pp("post_layernorm"),
            )?,
            image_size: cfg.image_size,
        })
    }

    /// `pixels: [B, C, S, S]` in the model dtype → `last_hidden_state` `[B, N, hidden]`.
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = pixels.dims4()?;
        if h != self.image_size || w != self.image_size {
            candle_core::bail!(
                "pixel_values are {h}x{w}, the vision tower expects {0}x{0}",
                self.image_size
            );
        }
        let x = self.embeddings.forward(pixels)?;
        let (images, n, hidden) = x.dims3()?;
        let mut h = x.reshape((images * n, hidden))?;
        for layer in &self.layers {
            h = layer.forward(&h, images)?;
        }
        self.post_layernorm
            .forward(&h)?
            .reshape((images, n, hidden))
    }
}
