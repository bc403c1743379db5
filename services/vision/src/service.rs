//! `paligemma.v1.VisionEncoder`: one image in, a chunked soft-token stream out.
//!
//! An `Encode` call is checked (model id, image size, wire dtype), then decoded on a blocking
//! thread while holding one of `--preprocess-threads` permits. The decoded pixels are looked up
//! in the soft-token cache ([`crate::cache`]); a hit is answered at once, a miss is resized,
//! normalised and queued for the batched encoder ([`crate::batcher`]), and its result is cached.
//! The `[N, D]` soft tokens are framed by `paligemma_wire::to_chunks` (header, then ≤ 1 MiB
//! payload chunks) and streamed through a bounded channel that stops as soon as the client goes
//! away. Follows the tonic streaming example's backpressure pattern.

use std::sync::Arc;
use std::time::Duration;

use candle_core::{DType, Tensor};
use paligemma_image::PreprocessorConfig;
use paligemma_model::VisionEncoder;
use paligemma_proto::MAX_CHUNK_BYTES;
use paligemma_proto::v1::vision_encoder_server::{VisionEncoder as VisionRpc, VisionEncoderServer};
use paligemma_proto::v1::{
    EncodeRequest, SoftTokenChunk, VisionInfo, VisionInfoRequest, VisionStats,
};
use paligemma_wire::{SoftTokens, WireDtype, to_chunks};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::batcher::{BatchConfig, Batcher, EncodeBatch};
use crate::cache::{CacheKey, Features, SoftTokenCache};
use crate::error::VisionError;

/// Payload chunks buffered per call before the sender waits for the client (4 × 1 MiB).
const STREAM_DEPTH: usize = 4;
/// Room for the protobuf framing around the image bytes of an `EncodeRequest`.
const REQUEST_OVERHEAD_BYTES: usize = 64 << 10;

/// Per-request limits and batching/caching settings of a replica (see `VisionArgs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Batched forwards running at once (≥ 1).
    pub max_concurrent: usize,
    /// Largest encoded image file, in bytes.
    pub max_image_bytes: usize,
    /// Largest decoded image, in pixels.
    pub max_image_pixels: u64,
    /// Most images per forward (≥ 1).
    pub max_batch: usize,
    /// How long the first image of a batch waits for more.
    pub max_wait: Duration,
    /// Images queued for the encoder before RESOURCE_EXHAUSTED (≥ 1).
    pub max_waiting: usize,
    /// Soft-token cache bound in bytes (0 = off).
    pub cache_bytes: usize,
    /// Images decoded and preprocessed at once (≥ 1).
    pub preprocess_threads: usize,
}

/// The vision tier's gRPC service; cheap to clone (shared state behind an `Arc`).
#[derive(Debug, Clone)]
pub struct VisionService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    model_id: String,
    encoder: Arc<VisionEncoder>,
    preprocessor: PreprocessorConfig,
    fingerprint: String,
    limits: Limits,
    preprocess_permits: Arc<Semaphore>,
    batcher: Batcher,
    cache: SoftTokenCache,
}

/// An image after decoding: answered from the cache, or pixels for the encoder.
enum Prepared {
    Hit(Arc<Features>),
    Miss {
        key: Option<CacheKey>,
        pixels: Vec<f32>,
    },
}

impl VisionService {
    /// Wraps a loaded encoder and starts its batch workers. `fingerprint` is
    /// `ModelFiles::vision_fingerprint` of the checkpoint `encoder` came from; `preprocessor`
    /// must resize to the tower's input size.
    ///
    /// # Errors
    /// [`VisionError::Threads`] when the batch worker threads cannot be started.
    pub fn new(
        model_id: String,
        encoder: VisionEncoder,
        preprocessor: PreprocessorConfig,
        fingerprint: String,
        limits: Limits,
    ) -> Result<Self, VisionError> {
        let encoder = Arc::new(encoder);
        let batcher = Batcher::start(
            BatchConfig {
                max_batch: limits.max_batch,
                max_wait: limits.max_wait,
                max_waiting: limits.max_waiting,
                workers: limits.max_concurrent,
            },
            batch_forward(Arc::clone(&encoder), &preprocessor),
        )
        .map_err(VisionError::Threads)?;
        Ok(Self {
            inner: Arc::new(Inner {
                model_id,
                encoder,
                preprocessor,
                fingerprint,
                preprocess_permits: Arc::new(Semaphore::new(limits.preprocess_threads.max(1))),
                batcher,
                cache: SoftTokenCache::new(limits.cache_bytes),
                limits,
            }),
        })
    }

    /// The id clients name this model by.
    pub fn model_id(&self) -> &str {
        &self.inner.model_id
    }

    /// The limits and batching/caching settings this replica runs with.
    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    /// Fingerprint of the vision tower + projector weights, carried by every soft-token header.
    pub fn fingerprint(&self) -> &str {
        &self.inner.fingerprint
    }

    /// What this replica serves (the `Info` RPC's answer).
    pub fn info(&self) -> VisionInfo {
        let inner = &*self.inner;
        let (num_image_tokens, hidden_size) = inner.encoder.output_shape();
        VisionInfo {
            model: inner.model_id.clone(),
            image_size: inner.encoder.config().vision.image_size as u32,
            num_image_tokens: num_image_tokens as u32,
            hidden_size: hidden_size as u32,
            weights_fingerprint: inner.fingerprint.clone(),
            dtype: dtype_name(inner.encoder.dtype()).to_string(),
            stats: Some(self.stats()),
        }
    }

    /// Cache and batching counters since start.
    pub fn stats(&self) -> VisionStats {
        let inner = &*self.inner;
        let cache = inner.cache.stats();
        let batches = inner.batcher.stats();
        VisionStats {
            cache_hits: cache.hits,
            cache_misses: cache.misses,
            cache_evictions: cache.evictions,
            cache_entries: cache.entries,
            cache_bytes: cache.bytes,
            cache_capacity_bytes: cache.capacity_bytes,
            batches: batches.batches,
            batched_images: batches.images,
            expired: batches.expired,
            max_batch: u32::try_from(inner.batcher.config().max_batch).unwrap_or(u32::MAX),
        }
    }

    /// The tonic server for this service, accepting requests up to `max_image_bytes` of image.
    pub fn into_server(self) -> VisionEncoderServer<Self> {
        let limit = self
            .inner
            .limits
            .max_image_bytes
            .saturating_add(REQUEST_OVERHEAD_BYTES);
        VisionEncoderServer::new(self).max_decoding_message_size(limit)
    }

    /// The wire dtype an `EncodeRequest.wire_dtype` value asks for; UNSPECIFIED is the model
    /// dtype (f32 → F32, bf16 → BF16, f16 → F16).
    ///
    /// # Errors
    /// [`VisionError::BadWireDtype`] for a value outside the enum.
    pub fn wire_dtype(&self, raw: i32) -> Result<WireDtype, VisionError> {
        match WireDtype::try_from(raw) {
            Ok(WireDtype::Unspecified) => Ok(match self.inner.encoder.dtype() {
                DType::BF16 => WireDtype::Bf16,
                DType::F16 => WireDtype::F16,
                _ => WireDtype::F32,
            }),
            Ok(dtype) => Ok(dtype),
            Err(_) => Err(VisionError::BadWireDtype(raw)),
        }
    }

    /// Checks an `EncodeRequest.model`: empty or this replica's id.
    ///
    /// # Errors
    /// [`VisionError::UnknownModel`].
    pub fn check_model(&self, requested: &str) -> Result<(), VisionError> {
        if requested.is_empty() || requested == self.inner.model_id {
            Ok(())
        } else {
            Err(VisionError::UnknownModel {
                requested: requested.to_string(),
                served: self.inner.model_id.clone(),
            })
        }
    }

    /// Checks the size of an encoded image file: non-empty and at most `max_image_bytes`.
    ///
    /// # Errors
    /// [`VisionError::EmptyImage`], [`VisionError::ImageTooLarge`].
    pub fn check_image(&self, image: &[u8]) -> Result<(), VisionError> {
        let limit = self.inner.limits.max_image_bytes;
        if image.is_empty() {
            Err(VisionError::EmptyImage)
        } else if image.len() > limit {
            Err(VisionError::ImageTooLarge {
                len: image.len(),
                limit,
            })
        } else {
            Ok(())
        }
    }

    /// Decodes `image`, then answers from the cache or preprocesses it for the encoder.
    /// Blocking (decoding and resizing are CPU work).
    fn prepare(&self, image: &[u8]) -> Result<Prepared, VisionError> {
        let inner = &*self.inner;
        let cfg = &inner.preprocessor;
        let opts = paligemma_image::decode_options(cfg, inner.limits.max_image_pixels);
        let decoded = paligemma_image::decode_with(image, &opts).map_err(VisionError::Image)?;
        let key = inner
            .cache
            .is_enabled()
            .then(|| CacheKey::new(&inner.fingerprint, cfg, &decoded));
        if let Some(hit) = key.as_ref().and_then(|k| inner.cache.get(k)) {
            return Ok(Prepared::Hit(hit));
        }
        let pixels = paligemma_image::preprocess(&decoded, cfg).map_err(VisionError::Image)?;
        Ok(Prepared::Miss {
            key,
            pixels: pixels.data,
        })
    }

    /// Decodes, preprocesses and encodes one image file into `[N, D]` soft tokens of `wire`
    /// dtype, through the cache and the batcher; `deadline` bounds the wait for the encoder.
    /// Returns the tokens and whether they came from the cache.
    ///
    /// # Errors
    /// Empty, oversized or undecodable image (INVALID_ARGUMENT), full queue
    /// (RESOURCE_EXHAUSTED), deadline passed (DEADLINE_EXCEEDED), model failures (INTERNAL).
    pub async fn encode_image(
        &self,
        image: Vec<u8>,
        wire: WireDtype,
        deadline: Option<std::time::Instant>,
    ) -> Result<(SoftTokens, bool), Status> {
        self.check_image(&image)?;
        let permit = Arc::clone(&self.inner.preprocess_permits)
            .acquire_owned()
            .await
            .map_err(|_| VisionError::ShuttingDown)?;
        let service = self.clone();
        let prepared = paligemma_rpc::blocking("vision preprocess", move || {
            let _permit = permit;
            service.prepare(&image)
        })
        .await??;
        let (features, hit) = match prepared {
            Prepared::Hit(features) => (features, true),
            Prepared::Miss { key, pixels } => {
                let features = self.inner.batcher.encode(pixels, deadline).await?;
                if let Some(key) = key {
                    self.inner.cache.insert(key, Arc::clone(&features));
                }
                (features, false)
            }
        };
        let tokens = SoftTokens::from_f32(features.rows, features.cols, &features.values, wire)
            .map_err(VisionError::Wire)?;
        Ok((tokens, hit))
    }

    async fn encode_checked(
        &self,
        req: EncodeRequest,
        deadline: Option<std::time::Instant>,
    ) -> Result<(SoftTokens, bool), Status> {
        self.check_model(&req.model)?;
        let wire = self.wire_dtype(req.wire_dtype)?;
        self.encode_image(req.image, wire, deadline).await
    }
}

/// The batcher's forward: `batch` images' pixels → SigLIP + projector → one [`Features`] each.
fn batch_forward(encoder: Arc<VisionEncoder>, cfg: &PreprocessorConfig) -> Arc<EncodeBatch> {
    let (height, width) = (cfg.height as usize, cfg.width as usize);
    Arc::new(move |pixels: Vec<f32>, batch: usize| {
        let pixels = Tensor::from_vec(pixels, (batch, 3, height, width), encoder.device())?;
        let features = encoder.encode(&pixels)?;
        let (_, rows, cols) = features.dims3()?;
        let values = features
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok(values
            .chunks_exact(rows * cols)
            .map(|v| Features {
                rows,
                cols,
                values: v.to_vec(),
            })
            .collect())
    })
}

/// The absolute deadline a `grpc-timeout` header asks for (`<digits><H|M|S|m|u|n>`).
fn grpc_deadline(metadata: &MetadataMap) -> Option<std::time::Instant> {
    let raw = metadata.get("grpc-timeout")?.to_str().ok()?;
    let timeout = parse_grpc_timeout(raw)?;
    std::time::Instant::now().checked_add(timeout)
}

fn parse_grpc_timeout(raw: &str) -> Option<Duration> {
    let (digits, unit) = raw.split_at(raw.len().checked_sub(1)?);
    // The spec allows at most 8 digits.
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        DType::F32 => "f32",
        _ => "other",
    }
}

#[tonic::async_trait]
impl VisionRpc for VisionService {
    type EncodeStream = ReceiverStream<Result<SoftTokenChunk, Status>>;

    async fn encode(
        &self,
        request: Request<EncodeRequest>,
    ) -> Result<Response<Self::EncodeStream>, Status> {
        let request_id = request
            .metadata()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let span = tracing::info_span!(
            "rpc",
            tier = "vision",
            rpc = "Encode",
            request_id = %request_id,
            model_fingerprint = %self.inner.fingerprint,
        );
        async move {
            let deadline = grpc_deadline(request.metadata());
            let req = request.into_inner();
            let image_bytes = req.image.len();
            let started = Instant::now();
            let (tokens, cache_hit) = match self.encode_checked(req, deadline).await {
                Ok(tokens) => tokens,
                Err(status) => {
                    tracing::info!(code = ?status.code(), message = status.message(), "encode refused");
                    return Err(status);
                }
            };
            tracing::info!(
                image_bytes,
                rows = tokens.rows,
                cols = tokens.cols,
                wire_dtype = ?tokens.dtype,
                cache_hit,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "encoded"
            );
            let chunks = to_chunks(&tokens, &self.inner.fingerprint, MAX_CHUNK_BYTES);
            let (tx, rx) = mpsc::channel(STREAM_DEPTH);
            tokio::spawn(
                async move {
                    for chunk in chunks {
                        if tx.send(Ok(chunk)).await.is_err() {
                            tracing::debug!("client went away; stopping the soft-token stream");
                            break;
                        }
                    }
                }
                .in_current_span(),
            );
            Ok(Response::new(ReceiverStream::new(rx)))
        }
        .instrument(span)
        .await
    }

    async fn info(
        &self,
        _request: Request<VisionInfoRequest>,
    ) -> Result<Response<VisionInfo>, Status> {
        Ok(Response::new(self.info()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("10S"), Some(Duration::from_secs(10)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("99u"), Some(Duration::from_micros(99)));
        assert_eq!(parse_grpc_timeout("7n"), Some(Duration::from_nanos(7)));
        for bad in ["", "S", "12", "1x", "123456789S", "-1S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }
}
