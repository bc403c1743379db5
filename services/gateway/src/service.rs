//! The `paligemma.v1.PaliGemma` service: request ids, validation, and the streaming and unary
//! faces of one `Pipeline`. Detect and Segment run the unary face on their task prompt and
//! parse the text it produces ([`crate::detect`]).

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use paligemma_model::{DecoderFamily, PaliGemmaConfig};
use paligemma_proto::v1::decoder_client::DecoderClient;
use paligemma_proto::v1::pali_gemma_server::{PaliGemma, PaliGemmaServer};
use paligemma_proto::v1::{
    DecoderInfo, DecoderInfoRequest, DetectRequest, DetectResponse, GenerateRequest,
    GenerateResponse, GenerateResult, ListModelsRequest, ListModelsResponse, ModelCard,
    ModelInfoRequest, SegmentRequest, SegmentResponse,
};
use paligemma_segment::{MaskDecoder, SegmentError};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::detect::{
    DetectFields, Generated, Task, image_size, into_segment, structured_response, validate_detect,
};
use crate::error::GatewayError;
use crate::pipeline::Pipeline;
use crate::replicas::{Pool, Tier};
use crate::validate::{Limits, ValidRequest, validate};

/// Metadata key of the request id, read from requests (if a client sets one) and set on
/// responses.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Responses buffered per streaming request before the decoder is slowed down.
const STREAM_BUFFER: usize = 16;
/// How long `ListModels`/`ModelInfo` wait for a decoder replica's `Info`.
const INFO_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest client-chosen request id accepted, in bytes.
const MAX_REQUEST_ID_LEN: usize = 64;

/// The gateway: cheap to clone (shared state behind an `Arc`).
#[derive(Debug, Clone)]
pub struct GatewayService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: PaliGemmaConfig,
    limits: Limits,
    pipeline: Pipeline,
    /// The VQ-VAE mask decoder of `--vae`; `None` = Segment unavailable.
    masks: Option<Arc<MaskDecoder>>,
    ids: RequestIds,
    resolve_interval: Option<Duration>,
}

impl GatewayService {
    pub(crate) fn new(
        config: PaliGemmaConfig,
        limits: Limits,
        pipeline: Pipeline,
        masks: Option<Arc<MaskDecoder>>,
        resolve_interval: Option<Duration>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                limits,
                pipeline,
                masks,
                ids: RequestIds::new(),
                resolve_interval,
            }),
        }
    }

    /// Period of the DNS refresh of the tier addresses; `None` = resolved once.
    pub fn resolve_interval(&self) -> Option<Duration> {
        self.inner.resolve_interval
    }

    /// The tonic service, accepting messages big enough for the largest allowed image.
    pub fn into_server(self) -> PaliGemmaServer<Self> {
        let limit = self.inner.limits.max_image_bytes + self.inner.limits.max_prompt_bytes;
        PaliGemmaServer::new(self).max_decoding_message_size(limit.saturating_add(64 << 10))
    }

    /// The id clients name the model by.
    pub fn model_id(&self) -> &str {
        &self.inner.limits.model_id
    }

    pub(crate) fn pools(&self) -> [&Arc<Pool>; 2] {
        [&self.inner.pipeline.vision, &self.inner.pipeline.decoder]
    }

    /// Re-resolves the addresses of both tiers now (the periodic refresh does the same).
    pub async fn refresh_replicas(&self) {
        for pool in self.pools() {
            pool.refresh().await;
        }
    }

    /// Current replica addresses of a tier.
    pub fn replica_addresses(&self, tier: Tier) -> Vec<std::net::SocketAddr> {
        match tier {
            Tier::Vision => self.inner.pipeline.vision.addresses(),
            Tier::Decoder => self.inner.pipeline.decoder.addresses(),
        }
    }

    fn start<T>(&self, request: Request<T>, rpc: &'static str) -> (String, T, tracing::Span) {
        let id = self.inner.ids.for_request(&request);
        let span = tracing::info_span!("rpc", tier = "gateway", rpc, request_id = %id);
        (id, request.into_inner(), span)
    }

    /// [`validate`], logging the outcome (lengths only, never the prompt).
    fn validate(&self, request: GenerateRequest) -> Result<ValidRequest, Status> {
        let (image_bytes, prompt_bytes) = (request.image.len(), request.prompt.len());
        let inner = &self.inner;
        let result = validate(
            request,
            &inner.limits,
            inner.pipeline.detokenizer.tokenizer(),
        );
        logged(result, image_bytes, prompt_bytes, |v| v)
    }

    /// Runs `valid` to completion and gathers the whole result (the unary face of the
    /// pipeline). Runs inside the calling handler (no spawn): if the client goes away tonic
    /// drops the handler, and with it the decoder call.
    async fn run_unary(&self, valid: ValidRequest, id: &str) -> Result<GenerateResult, Status> {
        let (tx, mut rx) = mpsc::channel(STREAM_BUFFER);
        let pipeline = &self.inner.pipeline;
        // Owns the only sender: when the run ends the channel closes, ending `collect`.
        let produce = async move { pipeline.run(valid, id, &tx).await };
        let collect = async move {
            let mut result = GenerateResult::default();
            while let Some(response) = rx.recv().await {
                let r = response?;
                result.text.push_str(&r.text);
                result.token_ids.extend(r.token_ids);
                result.logprobs.extend(r.logprobs);
                if r.finish_reason != 0 {
                    result.finish_reason = r.finish_reason;
                }
                if r.usage.is_some() {
                    result.usage = r.usage;
                }
            }
            Ok::<_, Status>(result)
        };
        let ((), result) = tokio::join!(produce, collect);
        result
    }

    /// Detect or Segment: validate, generate on the task prompt, parse (and decode masks).
    async fn structured(
        &self,
        task: Task,
        fields: DetectFields,
        id: &str,
        span: tracing::Span,
    ) -> Result<DetectResponse, Status> {
        let masks = match task {
            Task::Detect => None,
            Task::Segment => match &self.inner.masks {
                Some(m) => Some(Arc::clone(m)),
                None => {
                    span.in_scope(|| tracing::info!("segment refused: no --vae configured"));
                    return Err(GatewayError::NoMaskDecoder.into());
                }
            },
        };
        let image_bytes = fields.image.len();
        let label_bytes = fields.labels.iter().map(String::len).sum();
        let valid = span.in_scope(|| {
            let inner = &self.inner;
            let result = validate_detect(
                task,
                fields,
                &inner.limits,
                inner.pipeline.detokenizer.tokenizer(),
            );
            logged(result, image_bytes, label_bytes, |v| &v.generate)
        })?;
        // Read now, reported only after generation: an image the vision tier cannot decode
        // is rejected there, with its own status.
        let size = image_size(&valid.generate.image);
        let result = self
            .run_unary(valid.generate, id)
            .instrument(span.clone())
            .await?;
        let size = size.map_err(|e| GatewayError::Invalid(vec![e]))?;
        let generated = Generated {
            text: result.text,
            usage: result.usage,
            size,
        };
        let (options, png) = (valid.options, valid.return_png);
        let response = match masks {
            None => structured_response(generated, &options, None),
            Some(decoder) => tokio::task::spawn_blocking(move || {
                structured_response(generated, &options, Some((&decoder, png)))
            })
            .await
            .unwrap_or_else(|e| {
                Err(GatewayError::Mask(SegmentError::Compute(format!(
                    "mask task failed: {e}"
                ))))
            }),
        };
        let _enter = span.enter();
        match response {
            Ok(r) => {
                tracing::info!(
                    request_id = id,
                    objects = r.objects.len(),
                    invalid = r.invalid.len(),
                    "parsed structured output"
                );
                Ok(r)
            }
            Err(err) => {
                tracing::error!(request_id = id, error = %err, "structured output failed");
                Err(err.into())
            }
        }
    }

    async fn card(&self, request_id: &str) -> ModelCard {
        let config = &self.inner.config;
        let info = self.decoder_info(request_id).await.unwrap_or_default();
        ModelCard {
            id: self.inner.limits.model_id.clone(),
            image_size: to_u32(config.vision.image_size),
            num_image_tokens: to_u32(config.num_image_tokens()),
            decoder_family: match config.text.family {
                DecoderFamily::Gemma => "gemma",
                DecoderFamily::Gemma2 => "gemma2",
            }
            .to_string(),
            dtype: info.dtype,
            max_position_embeddings: to_u32(config.text.max_position_embeddings),
            max_new_tokens_limit: self.inner.limits.max_new_tokens_limit,
            vision_fingerprint: info.vision_fingerprint,
        }
    }

    /// A decoder replica's `Info` (dtype and vision fingerprint are known only there);
    /// `None` if no replica answers in time.
    async fn decoder_info(&self, request_id: &str) -> Option<DecoderInfo> {
        let call = self
            .inner
            .pipeline
            .decoder
            .call(request_id, |channel| async move {
                let info = DecoderClient::new(channel)
                    .info(DecoderInfoRequest {})
                    .await?;
                Ok(info.into_inner())
            });
        match tokio::time::timeout(INFO_TIMEOUT, call).await {
            Ok(Ok(info)) => Some(info),
            Ok(Err(e)) => {
                tracing::debug!(request_id, error = %e, "decoder Info failed; card left partial");
                None
            }
            Err(_) => {
                tracing::debug!(request_id, "decoder Info timed out; card left partial");
                None
            }
        }
    }
}

/// Logs how validation went (sizes only, never the prompt or labels: `prompt_bytes` is the
/// prompt's length, or the labels' total for Detect/Segment) and maps the error.
fn logged<T>(
    result: Result<T, GatewayError>,
    image_bytes: usize,
    prompt_bytes: usize,
    request: impl Fn(&T) -> &ValidRequest,
) -> Result<T, Status> {
    match result {
        Ok(valid) => {
            let r = request(&valid);
            tracing::debug!(
                image_bytes,
                prompt_tokens = r.prompt_ids.len(),
                max_new_tokens = r.max_new_tokens,
                "request accepted"
            );
            Ok(valid)
        }
        Err(err @ GatewayError::Invalid(_)) => {
            tracing::info!(image_bytes, prompt_bytes, error = %err, "request rejected");
            Err(err.into())
        }
        Err(err) => {
            tracing::error!(error = %err, "request validation failed");
            Err(err.into())
        }
    }
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn with_request_id<T>(mut response: Response<T>, id: &str) -> Response<T> {
    if let Ok(value) = MetadataValue::try_from(id) {
        response.metadata_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

#[tonic::async_trait]
impl PaliGemma for GatewayService {
    type GenerateStream = ReceiverStream<Result<GenerateResponse, Status>>;

    async fn generate(
        &self,
        request: Request<GenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        let (id, request, span) = self.start(request, "Generate");
        let valid = span.in_scope(|| self.validate(request))?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let inner = Arc::clone(&self.inner);
        let request_id = id.clone();
        tokio::spawn(
            async move {
                // Whatever the pipeline awaits (vision, decoder), a client that goes away
                // drops it, and with it the decoder call.
                tokio::select! {
                    () = tx.closed() => tracing::info!(request_id, "client went away; generation cancelled"),
                    () = inner.pipeline.run(valid, &request_id, &tx) => {}
                }
            }
            .instrument(span),
        );
        Ok(with_request_id(Response::new(ReceiverStream::new(rx)), &id))
    }

    async fn generate_unary(
        &self,
        request: Request<GenerateRequest>,
    ) -> Result<Response<GenerateResult>, Status> {
        let (id, request, span) = self.start(request, "GenerateUnary");
        let valid = span.in_scope(|| self.validate(request))?;
        let result = self.run_unary(valid, &id).instrument(span).await?;
        Ok(with_request_id(Response::new(result), &id))
    }

    async fn detect(
        &self,
        request: Request<DetectRequest>,
    ) -> Result<Response<DetectResponse>, Status> {
        let (id, request, span) = self.start(request, "Detect");
        let response = self
            .structured(Task::Detect, request.into(), &id, span)
            .await?;
        Ok(with_request_id(Response::new(response), &id))
    }

    async fn segment(
        &self,
        request: Request<SegmentRequest>,
    ) -> Result<Response<SegmentResponse>, Status> {
        let (id, request, span) = self.start(request, "Segment");
        let response = self
            .structured(Task::Segment, request.into(), &id, span)
            .await?;
        Ok(with_request_id(Response::new(into_segment(response)), &id))
    }

    async fn list_models(
        &self,
        request: Request<ListModelsRequest>,
    ) -> Result<Response<ListModelsResponse>, Status> {
        let (id, _, span) = self.start(request, "ListModels");
        let card = self.card(&id).instrument(span).await;
        Ok(Response::new(ListModelsResponse { models: vec![card] }))
    }

    async fn model_info(
        &self,
        request: Request<ModelInfoRequest>,
    ) -> Result<Response<ModelCard>, Status> {
        let (id, request, span) = self.start(request, "ModelInfo");
        if !request.model.is_empty() && request.model != self.inner.limits.model_id {
            return Err(GatewayError::ModelNotFound {
                requested: request.model,
                served: self.inner.limits.model_id.clone(),
            }
            .into());
        }
        Ok(Response::new(self.card(&id).instrument(span).await))
    }
}

/// Request ids: the client's `x-request-id` when it is short printable ASCII, else a
/// process-random base plus a counter, as 16 hex digits.
#[derive(Debug)]
struct RequestIds {
    base: u64,
    next: AtomicU64,
}

impl RequestIds {
    fn new() -> Self {
        Self {
            base: RandomState::new().hash_one(std::process::id()),
            next: AtomicU64::new(0),
        }
    }

    fn for_request<T>(&self, request: &Request<T>) -> String {
        let from_client = request
            .metadata()
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| {
                !v.is_empty()
                    && v.len() <= MAX_REQUEST_ID_LEN
                    && v.bytes().all(|b| b.is_ascii_graphic())
            });
        match from_client {
            Some(id) => id.to_string(),
            None => {
                let n = self.next.fetch_add(1, Ordering::Relaxed);
                format!("{:016x}", self.base.wrapping_add(n))
            }
        }
    }
}
