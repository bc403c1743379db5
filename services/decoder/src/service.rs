//! `paligemma.v1.Decoder`: soft tokens + prompt ids in, a stream of generated ids out.
//!
//! A `Generate` call is read up to its `DecodeRequest` ([`crate::receive`]) and validated
//! ([`crate::validate`]) before anything touches the model; errors there are the call's status.
//! Then one task waits for one of `--max-concurrent` permits and runs the engine's generation
//! loop on a blocking thread, sending each token through a bounded channel; a second task
//! watches the rest of the input stream. Generation stops (and its KV cache is freed) when the
//! response stream is dropped (the send fails), when the input stream fails or breaks the
//! protocol, or at EOS/stop/length; the stream ends with a `DecodeDone`.

use std::sync::Arc;

use candle_core::{DType, Tensor};
use paligemma_engine::{FinishReason as EngineFinish, GenerateRequest, generate};
use paligemma_model::{DecoderFamily, GemmaDecoder, PaliGemmaConfig};
use paligemma_proto::v1::decoder_server::{Decoder as DecoderRpc, DecoderServer};
use paligemma_proto::v1::{
    DecodeDone, DecoderInfo, DecoderInfoRequest, FinishReason, GenerateInput, GenerateOutput,
    GeneratedTokens, Usage, generate_output,
};
use paligemma_wire::{Expected, SoftTokens};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::error::DecoderError;
use crate::receive::{expect_end, receive};
use crate::stats::{Stats, StatsSnapshot};
use crate::validate::{RequestLimits, ValidRequest, validate};

/// Output messages buffered per call before generation waits for the client.
const STREAM_DEPTH: usize = 8;

type OutputSender = mpsc::Sender<Result<GenerateOutput, Status>>;

/// The replica's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Generations running at once (≥ 1).
    pub max_concurrent: usize,
    /// Largest `max_new_tokens` a request may ask for.
    pub max_new_tokens_limit: usize,
    /// Images per request (soft-token rows ≤ this × tokens per image).
    pub max_images: usize,
}

/// The decoder tier's gRPC service; cheap to clone (shared state behind an `Arc`).
#[derive(Debug, Clone)]
pub struct DecoderService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    model_id: String,
    config: PaliGemmaConfig,
    decoder: GemmaDecoder,
    fingerprint: String,
    limits: Limits,
    permits: Arc<Semaphore>,
    stats: Stats,
}

impl DecoderService {
    /// Wraps a loaded decoder. `fingerprint` is `ModelFiles::vision_fingerprint` of the
    /// checkpoint: only soft tokens carrying it are accepted.
    pub fn new(
        model_id: String,
        config: PaliGemmaConfig,
        decoder: GemmaDecoder,
        fingerprint: String,
        limits: Limits,
    ) -> Self {
        let permits = Arc::new(Semaphore::new(limits.max_concurrent.max(1)));
        Self {
            inner: Arc::new(Inner {
                model_id,
                config,
                decoder,
                fingerprint,
                limits,
                permits,
                stats: Stats::default(),
            }),
        }
    }

    /// What this replica serves (the `Info` RPC's answer).
    pub fn info(&self) -> DecoderInfo {
        let inner = &*self.inner;
        let text = &inner.config.text;
        DecoderInfo {
            model: inner.model_id.clone(),
            decoder_family: match text.family {
                DecoderFamily::Gemma => "gemma",
                DecoderFamily::Gemma2 => "gemma2",
            }
            .to_string(),
            hidden_size: text.hidden_size as u32,
            vocab_size: text.vocab_size as u32,
            max_position_embeddings: text.max_position_embeddings as u32,
            vision_fingerprint: inner.fingerprint.clone(),
            dtype: match inner.decoder.dtype() {
                DType::BF16 => "bf16",
                DType::F16 => "f16",
                DType::F32 => "f32",
                _ => "other",
            }
            .to_string(),
            image_token_id: inner.config.image_token_index,
            eos_token_ids: inner.config.eos_token_ids.clone(),
        }
    }

    /// What a soft-token stream must look like: `[k × num_image_tokens, hidden_size]` with
    /// 1 ≤ k ≤ `max_images`, carrying this checkpoint's vision fingerprint.
    pub fn expected(&self) -> Expected {
        let inner = &*self.inner;
        let per_image = inner.config.num_image_tokens();
        Expected {
            cols: inner.config.text.hidden_size,
            rows_multiple_of: per_image,
            max_rows: per_image.saturating_mul(inner.limits.max_images),
            fingerprint: inner.fingerprint.clone(),
        }
    }

    /// What a `DecodeRequest` is validated against.
    pub fn request_limits(&self) -> RequestLimits {
        let inner = &*self.inner;
        RequestLimits {
            vocab_size: inner.config.text.vocab_size,
            image_token_id: inner.config.image_token_index,
            max_position_embeddings: inner.config.text.max_position_embeddings,
            max_new_tokens_limit: inner.limits.max_new_tokens_limit,
        }
    }

    /// Counters of the generations this replica ran.
    pub fn stats(&self) -> StatsSnapshot {
        self.inner.stats.snapshot()
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> DecoderServer<Self> {
        DecoderServer::new(self)
    }

    /// Runs one validated generation to its end on the calling (blocking) thread, sending each
    /// token to `tx`; stops early when `tx`'s receiver is gone or `stop` is cancelled.
    fn generate_blocking(
        &self,
        req: &ValidRequest,
        soft_tokens: &SoftTokens,
        tx: &OutputSender,
        stop: &CancellationToken,
    ) -> Result<DecodeDone, DecoderError> {
        let inner = &*self.inner;
        let _running = inner.stats.start();
        let started = Instant::now();
        let features = Tensor::from_vec(
            soft_tokens.to_f32(),
            (soft_tokens.rows, soft_tokens.cols),
            inner.decoder.device(),
        )?
        .to_dtype(inner.decoder.dtype())?;
        let request = GenerateRequest {
            prompt_ids: &req.prompt_ids,
            image_features: &features,
            max_new_tokens: req.max_new_tokens,
            sampling: req.sampling,
            eos_ids: &inner.config.eos_token_ids,
            stop_ids: &req.stop_ids,
            logprobs: req.logprobs,
            keep_logits: false,
        };
        let result = generate(&inner.decoder, &request, |id, logprob| {
            if stop.is_cancelled() {
                return false;
            }
            let tokens = GeneratedTokens {
                ids: vec![id],
                logprobs: logprob.into_iter().collect(),
            };
            let message = GenerateOutput {
                kind: Some(generate_output::Kind::Tokens(tokens)),
            };
            tx.blocking_send(Ok(message)).is_ok()
        });
        let output = match result {
            Ok(output) => output,
            Err(e) => {
                inner.stats.failed();
                return Err(e.into());
            }
        };
        inner
            .stats
            .finished(output.finish_reason, output.tokens.len());
        tracing::info!(
            prompt_tokens = req.prompt_ids.len(),
            soft_token_rows = soft_tokens.rows,
            generated_tokens = output.tokens.len(),
            finish_reason = output.finish_reason.as_str(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "generated"
        );
        Ok(DecodeDone {
            finish_reason: finish_reason(output.finish_reason) as i32,
            usage: Some(Usage {
                prompt_tokens: req.prompt_ids.len() as u32,
                generated_tokens: output.tokens.len() as u32,
            }),
        })
    }

    /// Waits for a permit (or `stop`), generates, and ends the stream with `DecodeDone` or the
    /// error's status. Cancels `stop` on return so the input watcher ends too.
    async fn run_generation(
        self,
        req: ValidRequest,
        soft_tokens: SoftTokens,
        tx: OutputSender,
        stop: CancellationToken,
    ) {
        let _stop_watcher = stop.clone().drop_guard();
        let acquire = Arc::clone(&self.inner.permits).acquire_owned();
        let permit = match paligemma_rpc::until_cancelled(&stop, acquire).await {
            None => {
                tracing::debug!("client went away while queued");
                return;
            }
            Some(Err(_closed)) => {
                let _ = tx.send(Err(DecoderError::ShuttingDown.into())).await;
                return;
            }
            Some(Ok(permit)) => permit,
        };
        let (gen_tx, gen_stop) = (tx.clone(), stop.clone());
        let span = tracing::Span::current();
        let result = paligemma_rpc::blocking("generation", move || {
            let _permit = permit;
            let _span = span.enter();
            self.generate_blocking(&req, &soft_tokens, &gen_tx, &gen_stop)
        })
        .await;
        let last = match result {
            Ok(Ok(done)) => Ok(GenerateOutput {
                kind: Some(generate_output::Kind::Done(done)),
            }),
            Ok(Err(e)) => Err(Status::from(e)),
            Err(status) => Err(status),
        };
        // Fails only if the client is gone, and then there is no one to tell.
        let _ = tx.send(last).await;
    }
}

/// Watches the input stream after its `DecodeRequest`: a half-close is fine; another message
/// fails the call with INVALID_ARGUMENT; a failed stream (client gone) stops generation.
async fn watch_input(
    mut inbound: Streaming<GenerateInput>,
    tx: OutputSender,
    stop: CancellationToken,
) {
    match paligemma_rpc::until_cancelled(&stop, expect_end(&mut inbound)).await {
        None | Some(Ok(())) => {}
        Some(Err(DecoderError::Client(status))) => {
            tracing::debug!(code = ?status.code(), "client stream ended abnormally; stopping");
            stop.cancel();
        }
        Some(Err(e)) => {
            tracing::info!(error = %e, "protocol error after the request; stopping");
            let _ = tx.send(Err(e.into())).await;
            stop.cancel();
        }
    }
}

fn finish_reason(reason: EngineFinish) -> FinishReason {
    match reason {
        EngineFinish::Eos => FinishReason::Eos,
        EngineFinish::Length => FinishReason::Length,
        EngineFinish::Stop => FinishReason::Stop,
        EngineFinish::Cancelled => FinishReason::Cancelled,
    }
}

#[tonic::async_trait]
impl DecoderRpc for DecoderService {
    type GenerateStream = ReceiverStream<Result<GenerateOutput, Status>>;

    async fn generate(
        &self,
        request: Request<Streaming<GenerateInput>>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        let mut inbound = request.into_inner();
        let checked = async {
            let received = receive(&mut inbound, self.expected()).await?;
            let rows = received.soft_tokens.rows;
            let valid = validate(received.request, rows, &self.request_limits())?;
            Ok::<_, DecoderError>((valid, received.soft_tokens))
        };
        let (valid, soft_tokens) = match checked.await {
            Ok(ok) => ok,
            Err(e) => {
                let status = Status::from(e);
                tracing::info!(
                    tier = "decoder",
                    rpc = "Generate",
                    code = ?status.code(),
                    message = status.message(),
                    "generate refused"
                );
                return Err(status);
            }
        };
        let span = tracing::info_span!(
            "rpc",
            tier = "decoder",
            rpc = "Generate",
            request_id = %valid.request_id,
            model_fingerprint = %self.inner.fingerprint,
        );
        let (tx, rx) = mpsc::channel(STREAM_DEPTH);
        let stop = CancellationToken::new();
        tokio::spawn(watch_input(inbound, tx.clone(), stop.clone()).instrument(span.clone()));
        tokio::spawn(
            self.clone()
                .run_generation(valid, soft_tokens, tx, stop)
                .instrument(span),
        );
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn info(
        &self,
        _request: Request<DecoderInfoRequest>,
    ) -> Result<Response<DecoderInfo>, Status> {
        Ok(Response::new(self.info()))
    }
}
