//! `paligemma.v1.Decoder`: soft tokens + prompt ids in, a stream of generated ids out.
//!
//! A `Generate` call is read up to its `DecodeRequest` ([`crate::receive`]) and validated
//! ([`crate::validate`]) before anything touches the model; errors there are the call's status.
//! Then the request is submitted to the continuous-batching engine (one thread owning the
//! scheduler and the paged KV cache, shared by every call) and one task forwards its events to
//! the response stream; a second task watches the rest of the input stream. Generation stops
//! (and its KV blocks are freed before the engine's next step) when the response stream is
//! dropped (the send fails), when the input stream fails or breaks the protocol (the call's
//! `CancellationToken`), or at EOS/stop/length; the stream ends with a `DecodeDone`. A request
//! larger than the whole KV cache, or one beyond `--max-waiting`, is RESOURCE_EXHAUSTED.

use std::sync::Arc;

use candle_core::{DType, Tensor};
use paligemma_engine::{
    EngineConfig, EngineHandle, EngineRequest, EngineStats, EventKind,
    FinishReason as EngineFinish, StartError,
};
use paligemma_model::{DecoderFamily, GemmaDecoder, PaliGemmaConfig};
use paligemma_proto::v1::decoder_server::{Decoder as DecoderRpc, DecoderServer};
use paligemma_proto::v1::{
    DecodeDone, DecoderInfo, DecoderInfoRequest, FinishReason, GenerateInput, GenerateOutput,
    GeneratedTokens, Usage, generate_output,
};
use paligemma_wire::{Expected, SoftTokens};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::error::DecoderError;
use crate::receive::{expect_end, receive};
use crate::stats::{Stats, StatsSnapshot};
use crate::validate::{RequestLimits, ValidRequest, validate};

/// Output messages buffered per call before forwarding waits for the client.
const STREAM_DEPTH: usize = 8;

type OutputSender = mpsc::Sender<Result<GenerateOutput, Status>>;

/// The replica's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Sequences per batched step (≥ 1); the engine's `max_running`.
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
    engine: EngineHandle,
    stats: Stats,
}

impl DecoderService {
    /// Wraps a loaded decoder and starts its engine (paged KV cache sized by `engine`; its
    /// `max_running` is replaced by `limits.max_concurrent`). `fingerprint` is
    /// `ModelFiles::vision_fingerprint` of the checkpoint: only soft tokens carrying it are
    /// accepted.
    ///
    /// # Errors
    /// A KV budget below two blocks, a zero limit, or cache allocation failure.
    pub fn new(
        model_id: String,
        config: PaliGemmaConfig,
        decoder: GemmaDecoder,
        fingerprint: String,
        limits: Limits,
        engine: EngineConfig,
    ) -> Result<Self, StartError> {
        let engine = EngineHandle::start(
            Arc::new(decoder.clone()),
            EngineConfig {
                max_running: limits.max_concurrent.max(1),
                ..engine
            },
        )?;
        Ok(Self {
            inner: Arc::new(Inner {
                model_id,
                config,
                decoder,
                fingerprint,
                limits,
                engine,
                stats: Stats::default(),
            }),
        })
    }

    /// The engine's state for metrics: KV blocks used/free, running and waiting sequences,
    /// preemptions, tokens of the last step.
    pub fn engine_stats(&self) -> EngineStats {
        self.inner.engine.stats()
    }

    /// A receiver of [`Self::engine_stats`] that changes after every engine step.
    pub fn watch_engine_stats(&self) -> tokio::sync::watch::Receiver<EngineStats> {
        self.inner.engine.watch_stats()
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

    /// Submits one validated request to the engine and forwards its events to `tx` until it
    /// ends; a failed send (client gone) drops the event receiver, which aborts the request.
    async fn forward_events(
        &self,
        req: ValidRequest,
        soft_tokens: SoftTokens,
        tx: &OutputSender,
        stop: &CancellationToken,
    ) -> Result<Option<DecodeDone>, DecoderError> {
        let inner = &*self.inner;
        let started = Instant::now();
        let features = Tensor::from_vec(
            soft_tokens.to_f32(),
            (soft_tokens.rows, soft_tokens.cols),
            inner.decoder.device(),
        )?
        .to_dtype(inner.decoder.dtype())?;
        let prompt_tokens = req.prompt_ids.len();
        let request = EngineRequest {
            prompt_ids: req.prompt_ids,
            image_features: features,
            max_new_tokens: req.max_new_tokens,
            sampling: req.sampling,
            n: 1,
            eos_ids: inner.config.eos_token_ids.clone(),
            stop_ids: req.stop_ids,
            logprobs: req.logprobs,
        };
        let mut stream = inner.engine.submit(request, stop.clone())?;
        let _running = inner.stats.start();
        let mut generated = 0usize;
        while let Some(event) = stream.events.recv().await {
            match event.kind {
                EventKind::Token { token, logprob } => {
                    generated += 1;
                    let message = GenerateOutput {
                        kind: Some(generate_output::Kind::Tokens(GeneratedTokens {
                            ids: vec![token],
                            logprobs: logprob.into_iter().collect(),
                        })),
                    };
                    if tx.send(Ok(message)).await.is_err() {
                        inner.stats.finished(EngineFinish::Cancelled, generated);
                        return Ok(None);
                    }
                }
                EventKind::Finished(reason) => {
                    inner.stats.finished(reason, generated);
                    tracing::info!(
                        prompt_tokens,
                        soft_token_rows = soft_tokens.rows,
                        generated_tokens = generated,
                        finish_reason = reason.as_str(),
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "generated"
                    );
                    return Ok(Some(DecodeDone {
                        finish_reason: finish_reason(reason) as i32,
                        usage: Some(Usage {
                            prompt_tokens: prompt_tokens as u32,
                            generated_tokens: generated as u32,
                        }),
                    }));
                }
                EventKind::Failed(e) => {
                    inner.stats.failed();
                    return Err(DecoderError::Step(e));
                }
                EventKind::Rejected(e) => {
                    return Err(match Arc::try_unwrap(e) {
                        Ok(e) => DecoderError::Submit(e),
                        Err(shared) => DecoderError::invalid("request", shared.to_string()),
                    });
                }
            }
        }
        inner.stats.failed();
        Err(DecoderError::ShuttingDown)
    }

    /// Runs one generation through the engine and ends the stream with `DecodeDone` or the
    /// error's status. Cancels `stop` on return so the input watcher ends too.
    async fn run_generation(
        self,
        req: ValidRequest,
        soft_tokens: SoftTokens,
        tx: OutputSender,
        stop: CancellationToken,
    ) {
        let _stop_watcher = stop.clone().drop_guard();
        let last = match self.forward_events(req, soft_tokens, &tx, &stop).await {
            Ok(Some(done)) => Ok(GenerateOutput {
                kind: Some(generate_output::Kind::Done(done)),
            }),
            Ok(None) => return,
            Err(e) => Err(Status::from(e)),
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
