//! `paligemma.v1.VisionEncoder`: one image in, a chunked soft-token stream out.
//!
//! An `Encode` call is checked (model id, image size, wire dtype), then decoded, preprocessed
//! and run through SigLIP + projector on a blocking thread while holding one of
//! `--max-concurrent` permits; the `[N, D]` result is framed by `paligemma_wire::to_chunks`
//! (header, then ≤ 1 MiB payload chunks) and streamed through a bounded channel that stops as
//! soon as the client goes away. Follows the tonic streaming example's backpressure pattern.

use std::sync::Arc;

use candle_core::{DType, Tensor};
use paligemma_image::PreprocessorConfig;
use paligemma_model::VisionEncoder;
use paligemma_proto::MAX_CHUNK_BYTES;
use paligemma_proto::v1::vision_encoder_server::{VisionEncoder as VisionRpc, VisionEncoderServer};
use paligemma_proto::v1::{EncodeRequest, SoftTokenChunk, VisionInfo, VisionInfoRequest};
use paligemma_wire::{SoftTokens, WireDtype, to_chunks};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::error::VisionError;

/// Payload chunks buffered per call before the sender waits for the client (4 × 1 MiB).
const STREAM_DEPTH: usize = 4;
/// Room for the protobuf framing around the image bytes of an `EncodeRequest`.
const REQUEST_OVERHEAD_BYTES: usize = 64 << 10;

/// Per-request limits of a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Encodes running at once (≥ 1).
    pub max_concurrent: usize,
    /// Largest encoded image file, in bytes.
    pub max_image_bytes: usize,
    /// Largest decoded image, in pixels.
    pub max_image_pixels: u64,
}

/// The vision tier's gRPC service; cheap to clone (shared state behind an `Arc`).
#[derive(Debug, Clone)]
pub struct VisionService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    model_id: String,
    encoder: VisionEncoder,
    preprocessor: PreprocessorConfig,
    fingerprint: String,
    limits: Limits,
    permits: Arc<Semaphore>,
}

impl VisionService {
    /// Wraps a loaded encoder. `fingerprint` is `ModelFiles::vision_fingerprint` of the
    /// checkpoint `encoder` came from; `preprocessor` must resize to the tower's input size.
    pub fn new(
        model_id: String,
        encoder: VisionEncoder,
        preprocessor: PreprocessorConfig,
        fingerprint: String,
        limits: Limits,
    ) -> Self {
        let permits = Arc::new(Semaphore::new(limits.max_concurrent.max(1)));
        Self {
            inner: Arc::new(Inner {
                model_id,
                encoder,
                preprocessor,
                fingerprint,
                limits,
                permits,
            }),
        }
    }

    /// The id clients name this model by.
    pub fn model_id(&self) -> &str {
        &self.inner.model_id
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

    /// Decodes, preprocesses and encodes one image file into `[N, D]` soft tokens of `wire`
    /// dtype. Blocking (runs the model); the gRPC handler calls it on a blocking thread.
    ///
    /// # Errors
    /// Empty or oversized image; undecodable image ([`VisionError::Image`]); model failures.
    pub fn encode_image(&self, image: &[u8], wire: WireDtype) -> Result<SoftTokens, VisionError> {
        self.check_image(image)?;
        let inner = &*self.inner;
        let pixels = paligemma_image::preprocess_bytes_with(
            image,
            &inner.preprocessor,
            inner.limits.max_image_pixels,
        )
        .map_err(VisionError::Image)?;
        let [b, c, h, w] = pixels.shape();
        let pixels = Tensor::from_vec(pixels.data, (b, c, h, w), inner.encoder.device())?;
        let features = inner.encoder.encode(&pixels)?;
        let (_, rows, cols) = features.dims3()?;
        let values = features
            .squeeze(0)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok(SoftTokens::from_f32(rows, cols, &values, wire)?)
    }

    async fn encode_checked(&self, req: EncodeRequest) -> Result<SoftTokens, Status> {
        self.check_model(&req.model)?;
        let wire = self.wire_dtype(req.wire_dtype)?;
        // Cheap refusals first, so a bad request never waits for a permit.
        self.check_image(&req.image)?;
        let permit = Arc::clone(&self.inner.permits)
            .acquire_owned()
            .await
            .map_err(|_| VisionError::ShuttingDown)?;
        let service = self.clone();
        let image = req.image;
        let tokens = paligemma_rpc::blocking("vision encode", move || {
            let _permit = permit;
            service.encode_image(&image, wire)
        })
        .await??;
        Ok(tokens)
    }
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
            let req = request.into_inner();
            let image_bytes = req.image.len();
            let started = Instant::now();
            let tokens = match self.encode_checked(req).await {
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
