//! Gemma 1 and Gemma 2 decoders (transformers `modeling_gemma.py` / `modeling_gemma2.py`,
//! spec §5), one implementation: the family is a config field, not a copied file.
//!
//! Checkpoint tree under `language_model.model.`: `embed_tokens`, `layers.N.{input_layernorm,
//! self_attn.{q,k,v,o}_proj, post_attention_layernorm, mlp.{gate,up,down}_proj}` plus, for
//! Gemma 2, `pre_feedforward_layernorm` and `post_feedforward_layernorm`; `norm`. In Gemma 1
//! `post_attention_layernorm` is the pre-MLP norm; in Gemma 2 it is a real post-attention norm.
//!
//! The decoder holds weights only; per-sequence state lives in the caller's [`KvCache`].

use candle_core::{DType, Device, IndexOp, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::config::{DecoderFamily, LayerAttention, TextConfig};
use crate::kv_cache::KvCache;
use crate::layers::attention::{AttentionParams, attend};
use crate::layers::elementwise::add;
use crate::layers::linear::Linear;
use crate::layers::mlp::GatedMlp;
use crate::layers::norm::RmsNorm;
use crate::layers::rope::Rope;
use crate::layers::softcap;
use crate::mask::MaskSpec;

/// Which positions of a forward pass need logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsRows {
    /// Only the last token (generation).
    Last,
    /// Every token of the pass (scoring, parity tests).
    All,
}

/// Inputs of one decoder forward pass over a single sequence.
#[derive(Debug, Clone, Copy)]
pub struct DecoderInput<'a> {
    /// Input embeddings of the new tokens, `[T, hidden]` in the model dtype: scaled text
    /// embeddings with the image soft tokens spliced in (see `PaliGemma::embed_prompt`).
    pub embeds: &'a Tensor,
    /// Length of the bidirectional prefix of the sequence (image + `<bos>` + prompt + `\n`).
    pub prefix_len: usize,
    pub logits: LogitsRows,
}

#[derive(Debug, Clone)]
struct Attention {
    /// `q_proj`, `k_proj`, `v_proj` stacked into one layer at load.
    qkv_proj: Linear,
    o_proj: Linear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    scale: f64,
    softcap: Option<f64>,
    window: Option<usize>,
}

impl Attention {
    fn new(cfg: &TextConfig, kind: LayerAttention, vb: VarBuilder<'_>) -> Result<Self> {
        let (h, hd) = (cfg.hidden_size, cfg.head_dim);
        let (heads, kv_heads) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        Ok(Self {
            qkv_proj: Linear::stacked(
                h,
                &[
                    ("q_proj", heads * hd),
                    ("k_proj", kv_heads * hd),
                    ("v_proj", kv_heads * hd),
                ],
                false,
                vb.clone(),
            )?,
            o_proj: Linear::new(heads * hd, h, false, vb.pp("o_proj"))?,
            heads,
            kv_heads,
            head_dim: hd,
            scale: cfg.query_pre_attn_scalar.powf(-0.5),
            softcap: cfg.attn_logit_softcapping,
            window: match kind {
                LayerAttention::Full => None,
                LayerAttention::Sliding { window } => Some(window),
            },
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        ctx: &PassContext,
        layer: usize,
        kv: &mut dyn KvCache,
    ) -> Result<Tensor> {
        let [q, k, v] = self.qkv(x)?;
        let out = self.attend_rows(&q, &k, &v, ctx, layer, kv)?;
        self.o_proj.forward(&out)
    }

    /// `x: [T, hidden]` → q `[T, heads·hd]`, k and v `[T, kv_heads·hd]`.
    fn qkv(&self, x: &Tensor) -> Result<[Tensor; 3]> {
        let (q, kv) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
        let y = self.qkv_proj.forward(x)?;
        let parts = Linear::split(&y, &[q, kv, kv])?;
        <[Tensor; 3]>::try_from(parts)
            .map_err(|_| candle_core::Error::Msg("qkv: three parts".into()))
    }

    /// Batched form: the projections run once over the rows of every sequence; attention runs
    /// per sequence on its rows, with its own positions, mask and cache.
    fn forward_batch(
        &self,
        x: &Tensor,
        segments: &[Segment],
        layer: usize,
        caches: &mut [&mut dyn KvCache],
    ) -> Result<Tensor> {
        let [q, k, v] = self.qkv(x)?;
        let mut outs = Vec::with_capacity(segments.len());
        for (seg, kv) in segments.iter().zip(caches.iter_mut()) {
            let rows = |y: &Tensor| y.narrow(0, seg.start, seg.len);
            outs.push(self.attend_rows(
                &rows(&q)?,
                &rows(&k)?,
                &rows(&v)?,
                &seg.ctx,
                layer,
                &mut **kv,
            )?);
        }
        let out = if outs.len() == 1 {
            outs.pop()
                .ok_or_else(|| candle_core::Error::Msg("empty batch".into()))?
        } else {
            Tensor::cat(&outs, 0)?
        };
        self.o_proj.forward(&out)
    }

    /// Attention of one sequence's projected rows `q: [T, heads·hd]`, `k, v: [T, kv_heads·hd]`
    /// → `[T, heads·hd]`, storing the new keys/values in `kv`.
    fn attend_rows(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        ctx: &PassContext,
        layer: usize,
        kv: &mut dyn KvCache,
    ) -> Result<Tensor> {
        let t = q.dim(0)?;
        let heads_first = |y: &Tensor, n: usize| -> Result<Tensor> {
            y.reshape((t, n, self.head_dim))?
                .transpose(0, 1)?
                .contiguous()
        };
        let q = heads_first(q, self.heads)?;
        let k = heads_first(k, self.kv_heads)?;
        let v = heads_first(v, self.kv_heads)?;
        let q = Rope::apply(&q, &ctx.cos, &ctx.sin)?;
        let k = Rope::apply(&k, &ctx.cos, &ctx.sin)?;
        let (k, v) = kv.append(layer, &k, &v)?;
        let mask = if self.window.is_some() {
            ctx.sliding_mask.as_ref()
        } else {
            ctx.full_mask.as_ref()
        };
        let params = AttentionParams {
            scale: self.scale,
            softcap: self.softcap,
            mask,
        };
        attend(&q, &k, &v, params)?
            .transpose(0, 1)?
            .reshape((t, self.heads * self.head_dim))
    }
}

#[derive(Debug, Clone)]
struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    /// Gemma 2 only.
    pre_feedforward_layernorm: Option<RmsNorm>,
    /// Gemma 2 only.
    post_feedforward_layernorm: Option<RmsNorm>,
    mlp: GatedMlp,
}

impl DecoderLayer {
    fn new(cfg: &TextConfig, layer: usize, vb: VarBuilder<'_>) -> Result<Self> {
        let (h, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        let norm = |name: &str| RmsNorm::new(h, eps, vb.pp(name));
        let gemma2 = cfg.family == DecoderFamily::Gemma2;
        Ok(Self {
            input_layernorm: norm("input_layernorm")?,
            self_attn: Attention::new(cfg, cfg.layer_attention[layer], vb.pp("self_attn"))?,
            post_attention_layernorm: norm("post_attention_layernorm")?,
            pre_feedforward_layernorm: gemma2
                .then(|| norm("pre_feedforward_layernorm"))
                .transpose()?,
            post_feedforward_layernorm: gemma2
                .then(|| norm("post_feedforward_layernorm"))
                .transpose()?,
            mlp: GatedMlp::new(h, cfg.intermediate_size, vb.pp("mlp"))?,
        })
    }

    /// The layer around an attention function (single-sequence or batched): norms, residuals
    /// and MLP run on all rows of `x` at once.
    fn forward_with(
        &self,
        x: &Tensor,
        attention: impl FnOnce(&Attention, &Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let attn = attention(&self.self_attn, &self.input_layernorm.forward(x)?)?;
        match (
            &self.pre_feedforward_layernorm,
            &self.post_feedforward_layernorm,
        ) {
            (Some(pre_ffw), Some(post_ffw)) => {
                let h = add(x, &self.post_attention_layernorm.forward(&attn)?)?;
                let m = self.mlp.forward(&pre_ffw.forward(&h)?)?;
                add(&h, &post_ffw.forward(&m)?)
            }
            _ => {
                let h = add(x, &attn)?;
                let m = self
                    .mlp
                    .forward(&self.post_attention_layernorm.forward(&h)?)?;
                add(&h, &m)
            }
        }
    }
}

/// Rows `start..start + len` of a batched pass belong to one sequence with this context.
struct Segment {
    start: usize,
    len: usize,
    ctx: PassContext,
}

/// Per-pass values shared by all layers: RoPE tables and the two masks.
struct PassContext {
    cos: Tensor,
    sin: Tensor,
    full_mask: Option<Tensor>,
    sliding_mask: Option<Tensor>,
}

/// The Gemma decoder with its tied LM head.
#[derive(Debug, Clone)]
pub struct GemmaDecoder {
    embed_tokens: Tensor,
    /// √hidden rounded to the model dtype, as a `[1]`-shaped tensor (spec §4).
    embed_scale: Tensor,
    /// Id of the `<image>` placeholder whose rows soft tokens replace.
    image_token_index: u32,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    rope: Rope,
    cfg: TextConfig,
    dtype: DType,
    device: Device,
}

impl GemmaDecoder {
    /// `vb` points at `language_model.model`; `lm_head` is the untied head if the checkpoint
    /// has one (otherwise the embedding matrix is used, as Gemma ties them).
    pub fn new(
        cfg: &TextConfig,
        image_token_index: u32,
        vb: VarBuilder<'_>,
        lm_head: Option<Tensor>,
    ) -> Result<Self> {
        let embed_tokens = vb
            .pp("embed_tokens")
            .get((cfg.vocab_size, cfg.hidden_size), "weight")?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::new(cfg, i, vb.pp("layers").pp(i)))
            .collect::<Result<_>>()?;
        let dtype = vb.dtype();
        let device = vb.device().clone();
        let embed_scale =
            Tensor::new(&[(cfg.hidden_size as f32).sqrt()], &device)?.to_dtype(dtype)?;
        Ok(Self {
            lm_head: Linear::from_weight(lm_head.unwrap_or_else(|| embed_tokens.clone()), None),
            embed_tokens,
            embed_scale,
            image_token_index,
            layers,
            norm: RmsNorm::new(cfg.hidden_size, cfg.rms_norm_eps, vb.pp("norm"))?,
            rope: Rope::new(cfg.head_dim, cfg.rope_theta),
            cfg: cfg.clone(),
            dtype,
            device,
        })
    }

    pub fn config(&self) -> &TextConfig {
        &self.cfg
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Text embeddings `[T, hidden]`, multiplied by √hidden rounded to the model dtype.
    ///
    /// # Errors
    /// An id outside the vocabulary.
    pub fn embed_tokens(&self, ids: &[u32]) -> Result<Tensor> {
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= self.cfg.vocab_size) {
            candle_core::bail!(
                "token id {bad} is outside the vocabulary of {} rows",
                self.cfg.vocab_size
            );
        }
        let ids = Tensor::new(ids, &self.device)?;
        self.embed_tokens
            .index_select(&ids, 0)?
            .broadcast_mul(&self.embed_scale)
    }

    /// Input embeddings `[L, D]` of a prompt: text rows scaled by √D, and the rows of
    /// `image_features` (`[K, D]`, K = number of `<image>` ids in `ids`) placed, in order, at
    /// the `<image>` positions.
    ///
    /// # Errors
    /// Empty prompt, ids outside the vocabulary, or a number of `<image>` ids different from
    /// the number of soft-token rows.
    pub fn embed_prompt(&self, ids: &[u32], image_features: &Tensor) -> crate::Result<Tensor> {
        use crate::ModelError;
        if ids.is_empty() {
            return Err(ModelError::Input("empty prompt".into()));
        }
        let image_id = self.image_token_index;
        let (rows, width) = image_features.dims2()?;
        let placeholders = ids.iter().filter(|&&id| id == image_id).count();
        if placeholders != rows {
            return Err(ModelError::Input(format!(
                "prompt has {placeholders} <image> tokens but {rows} soft-token rows were given"
            )));
        }
        if width != self.cfg.hidden_size {
            return Err(ModelError::Input(format!(
                "soft tokens are {width} wide, the decoder expects {}",
                self.cfg.hidden_size
            )));
        }
        let text = self
            .embed_tokens(ids)
            .map_err(|e| ModelError::Input(e.to_string()))?;
        if rows == 0 {
            return Ok(text);
        }
        // Gather from [text rows ; image rows]: position i takes text row i, or the next image row.
        let table = Tensor::cat(
            &[
                &text,
                &image_features
                    .to_device(&self.device)?
                    .to_dtype(self.dtype)?,
            ],
            0,
        )?;
        let mut next_image = ids.len() as u32;
        let index: Vec<u32> = (0..ids.len() as u32)
            .zip(ids)
            .map(|(i, &id)| {
                if id == image_id {
                    next_image += 1;
                    next_image - 1
                } else {
                    i
                }
            })
            .collect();
        let index = Tensor::new(index.as_slice(), &self.device)?;
        Ok(table.index_select(&index, 0)?)
    }

    /// RoPE tables and masks of a pass of `t` new tokens after `past` cached ones.
    fn pass_context(&self, past: usize, t: usize, prefix_len: usize) -> Result<PassContext> {
        let positions: Vec<usize> = (past + 1..=past + t).collect();
        let (cos, sin) = self.rope.cos_sin(&positions, self.dtype, &self.device)?;
        let spec = MaskSpec {
            past_len: past,
            new_len: t,
            prefix_len,
        };
        let window = self.cfg.layer_attention.iter().find_map(|l| match l {
            LayerAttention::Sliding { window } => Some(*window),
            LayerAttention::Full => None,
        });
        Ok(PassContext {
            cos,
            sin,
            full_mask: spec.to_tensor(None, &self.device)?,
            sliding_mask: match window {
                Some(w) => spec.to_tensor(Some(w), &self.device)?,
                None => None,
            },
        })
    }

    /// Final norm, LM head and Gemma 2's softcap on hidden rows → f32 logits.
    fn logits(&self, h: &Tensor) -> Result<Tensor> {
        let mut logits = self.lm_head.forward(&self.norm.forward(h)?)?;
        if let Some(cap) = self.cfg.final_logit_softcapping {
            logits = softcap(&logits, cap)?;
        }
        logits.to_dtype(DType::F32)
    }

    /// Runs the new tokens through every layer, appending their keys/values to `kv`.
    ///
    /// Returns f32 logits `[rows, vocab_size]` (after Gemma 2's final softcap), one row per
    /// position selected by `input.logits`. RoPE positions are 1-based, as in transformers.
    pub fn forward(&self, input: &DecoderInput<'_>, kv: &mut dyn KvCache) -> Result<Tensor> {
        let t = input.embeds.dim(0)?;
        if t == 0 {
            candle_core::bail!("decoder forward needs at least one token");
        }
        let ctx = self.pass_context(kv.seq_len(), t, input.prefix_len)?;
        let mut h = input.embeds.to_dtype(self.dtype)?;
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward_with(&h, |attn, x| attn.forward(x, &ctx, i, kv))?;
        }
        let h = match input.logits {
            LogitsRows::Last => h.i(t - 1..t)?,
            LogitsRows::All => h,
        };
        self.logits(&h)
    }

    /// One forward pass over several sequences (continuous batching): `inputs[i]` is run
    /// against `caches[i]`, each with its own positions, prefix-LM mask and cached length.
    ///
    /// The token rows of all sequences are stacked into one `[ΣT, hidden]` matrix for every
    /// linear layer, norm and MLP (one weight read per step for the whole batch); only
    /// attention runs per sequence. Returns, per sequence, f32 logits `[rows_i, vocab_size]` as
    /// [`GemmaDecoder::forward`] would.
    ///
    /// # Errors
    /// `inputs` and `caches` of different lengths, a sequence with no tokens, device errors, or
    /// a cache without room.
    pub fn forward_batch(
        &self,
        inputs: &[DecoderInput<'_>],
        caches: &mut [&mut dyn KvCache],
    ) -> Result<Vec<Tensor>> {
        if inputs.len() != caches.len() {
            candle_core::bail!(
                "forward_batch got {} inputs but {} caches",
                inputs.len(),
                caches.len()
            );
        }
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        let mut segments = Vec::with_capacity(inputs.len());
        let mut start = 0;
        for (input, kv) in inputs.iter().zip(caches.iter()) {
            let len = input.embeds.dim(0)?;
            if len == 0 {
                candle_core::bail!("decoder forward needs at least one token per sequence");
            }
            let ctx = self.pass_context(kv.seq_len(), len, input.prefix_len)?;
            segments.push(Segment { start, len, ctx });
            start += len;
        }
        let embeds = inputs
            .iter()
            .map(|i| i.embeds.to_dtype(self.dtype))
            .collect::<Result<Vec<_>>>()?;
        let mut h = Tensor::cat(&embeds, 0)?;
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward_with(&h, |attn, x| attn.forward_batch(x, &segments, i, caches))?;
        }
        let mut picked = Vec::with_capacity(inputs.len());
        let mut counts = Vec::with_capacity(inputs.len());
        for (input, seg) in inputs.iter().zip(&segments) {
            let (from, n) = match input.logits {
                LogitsRows::Last => (seg.start + seg.len - 1, 1),
                LogitsRows::All => (seg.start, seg.len),
            };
            picked.push(h.narrow(0, from, n)?);
            counts.push(n);
        }
        let logits = self.logits(&Tensor::cat(&picked, 0)?)?;
        let mut out = Vec::with_capacity(counts.len());
        let mut row = 0;
        for n in counts {
            out.push(logits.narrow(0, row, n)?);
            row += n;
        }
        Ok(out)
    }
}
