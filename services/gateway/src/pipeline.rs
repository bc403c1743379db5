//! The sequencing of one generation: image → vision replica → decoder replica → text deltas.
//!
//! 1. `Encode` on a vision replica; the soft-token chunks are collected whole (the gateway
//!    does not look inside them — the decoder validates the stream), so a failed vision call can
//!    be retried elsewhere and the decoder call can be replayed.
//! 2. `Generate` on a decoder replica with a client stream of those chunks followed by one
//!    `DecodeRequest`. The call counts as started (no more retries) once its first output
//!    message arrives.
//! 3. Generated ids become text deltas ([`crate::detokenize::TextStreamer`]) sent on a bounded channel; the last
//!    message carries the finish reason and usage.
//!
//! Dropping the future of [`Pipeline::run`] drops the decoder call, which resets its HTTP/2
//! stream: that is how a client that went away cancels generation in the decoder tier.

use std::sync::Arc;
use std::time::Instant;

use paligemma_proto::v1::decoder_client::DecoderClient;
use paligemma_proto::v1::vision_encoder_client::VisionEncoderClient;
use paligemma_proto::v1::{
    DecodeRequest, EncodeRequest, FinishReason, GenerateInput, GenerateOutput, GenerateResponse,
    SoftTokenChunk, Usage, generate_input, generate_output,
};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::Status;
use tonic::codec::Streaming;

use crate::detokenize::Detokenizer;
use crate::error::GatewayError;
use crate::replicas::{Pool, Tier};
use crate::validate::ValidRequest;

/// Where a request's responses go; `Err` is sent once, last.
pub type ResponseSender = mpsc::Sender<Result<GenerateResponse, Status>>;

/// What one request needs from the gateway: the tokenizer and the two tiers.
#[derive(Debug)]
pub struct Pipeline {
    /// The tokenizer, and the ids kept out of the text.
    pub detokenizer: Detokenizer,
    pub vision: Arc<Pool>,
    pub decoder: Arc<Pool>,
}

/// How a finished request went, for the log line.
struct Summary {
    prompt_tokens: usize,
    generated_tokens: u32,
    finish_reason: FinishReason,
    vision_ms: u128,
}

/// The client went away (the response channel closed).
struct ClientGone;

impl Pipeline {
    /// Runs one request, sending its responses (or one final error) to `out`.
    pub async fn run(&self, request: ValidRequest, request_id: &str, out: &ResponseSender) {
        let started = Instant::now();
        match self.generate(request, request_id, out).await {
            Ok(Ok(s)) => tracing::info!(
                request_id,
                prompt_tokens = s.prompt_tokens,
                generated_tokens = s.generated_tokens,
                finish_reason = s.finish_reason.as_str_name(),
                vision_ms = s.vision_ms,
                total_ms = started.elapsed().as_millis(),
                "generated"
            ),
            Ok(Err(ClientGone)) => tracing::info!(
                request_id,
                total_ms = started.elapsed().as_millis(),
                "client went away; generation cancelled"
            ),
            Err(err) => {
                tracing::warn!(request_id, error = %err, "generation failed");
                // Nobody to tell if this fails: the client is gone.
                let _ = out.send(Err(Status::from(err))).await;
            }
        }
    }

    async fn generate(
        &self,
        request: ValidRequest,
        request_id: &str,
        out: &ResponseSender,
    ) -> Result<Result<Summary, ClientGone>, GatewayError> {
        let started = Instant::now();
        let chunks = self.encode(&request, request_id).await?;
        let vision_ms = started.elapsed().as_millis();
        tracing::debug!(
            request_id,
            chunks = chunks.len(),
            vision_ms,
            "soft tokens received"
        );

        let prompt_tokens = request.prompt_ids.len();
        let inputs: Arc<[GenerateInput]> = chunks
            .into_iter()
            .map(|chunk| GenerateInput {
                kind: Some(generate_input::Kind::SoftTokens(chunk)),
            })
            .chain([GenerateInput {
                kind: Some(generate_input::Kind::Request(DecodeRequest {
                    prompt_ids: request.prompt_ids,
                    max_new_tokens: request.max_new_tokens,
                    sampling: request.sampling,
                    stop_ids: Vec::new(),
                    logprobs: request.logprobs,
                    request_id: request_id.to_string(),
                })),
            }])
            .collect();
        let (first, mut stream) = self.start_decode(inputs, request_id).await?;

        let mut streamer = self.detokenizer.stream();
        let mut generated_tokens = 0u32;
        let mut next = first;
        loop {
            let response = match next.and_then(|m| m.kind) {
                None => {
                    return Err(GatewayError::Protocol {
                        tier: Tier::Decoder,
                        what: "output stream ended without DecodeDone".into(),
                    });
                }
                Some(generate_output::Kind::Tokens(tokens)) => {
                    let mut text = String::new();
                    for &id in &tokens.ids {
                        text.push_str(&streamer.push(id)?);
                    }
                    let n = u32::try_from(tokens.ids.len()).unwrap_or(u32::MAX);
                    generated_tokens = generated_tokens.saturating_add(n);
                    GenerateResponse {
                        text,
                        token_ids: tokens.ids,
                        logprobs: tokens.logprobs,
                        ..Default::default()
                    }
                }
                Some(generate_output::Kind::Done(done)) => {
                    let usage = done.usage.unwrap_or(Usage {
                        prompt_tokens: u32::try_from(prompt_tokens).unwrap_or(u32::MAX),
                        generated_tokens,
                    });
                    let finish_reason = FinishReason::try_from(done.finish_reason)
                        .unwrap_or(FinishReason::Unspecified);
                    let last = GenerateResponse {
                        text: streamer.finish()?,
                        finish_reason: done.finish_reason,
                        usage: Some(usage),
                        ..Default::default()
                    };
                    if out.send(Ok(last)).await.is_err() {
                        return Ok(Err(ClientGone));
                    }
                    return Ok(Ok(Summary {
                        prompt_tokens,
                        generated_tokens,
                        finish_reason,
                        vision_ms,
                    }));
                }
            };
            if out.send(Ok(response)).await.is_err() {
                return Ok(Err(ClientGone));
            }
            next = stream.message().await.map_err(mid_stream_error)?;
        }
    }

    /// `Encode` on a vision replica, retried on the next one on transport failure.
    async fn encode(
        &self,
        request: &ValidRequest,
        request_id: &str,
    ) -> Result<Vec<SoftTokenChunk>, GatewayError> {
        let chunks = self
            .vision
            .call(request_id, |channel| {
                let encode = EncodeRequest {
                    image: request.image.clone(),
                    // The vision replica's own model: its id need not equal the gateway's.
                    model: String::new(),
                    wire_dtype: request.wire_dtype as i32,
                };
                async move {
                    let mut stream = VisionEncoderClient::new(channel)
                        .encode(encode)
                        .await?
                        .into_inner();
                    let mut chunks = Vec::new();
                    while let Some(chunk) = stream.message().await? {
                        chunks.push(chunk);
                    }
                    Ok(chunks)
                }
            })
            .await?;
        if chunks.is_empty() {
            return Err(GatewayError::Protocol {
                tier: Tier::Vision,
                what: "Encode returned no soft tokens".into(),
            });
        }
        Ok(chunks)
    }

    /// Opens `Generate` on a decoder replica and waits for its first output message; until
    /// then a transport failure moves the call to the next replica.
    async fn start_decode(
        &self,
        inputs: Arc<[GenerateInput]>,
        request_id: &str,
    ) -> Result<(Option<GenerateOutput>, Streaming<GenerateOutput>), GatewayError> {
        self.decoder
            .call(request_id, |channel| {
                let inputs = Arc::clone(&inputs);
                async move {
                    let outbound =
                        tokio_stream::iter(0..inputs.len()).map(move |i| inputs[i].clone());
                    let mut stream = DecoderClient::new(channel)
                        .generate(outbound)
                        .await?
                        .into_inner();
                    let first = stream.message().await?;
                    Ok((first, stream))
                }
            })
            .await
    }
}

/// A decoder failure after the first output: the replica's own status is forwarded; a local
/// transport failure becomes UNAVAILABLE naming the tier.
fn mid_stream_error(status: Status) -> GatewayError {
    if std::error::Error::source(&status).is_some() {
        GatewayError::Lost {
            tier: Tier::Decoder,
            message: status.message().to_string(),
        }
    } else {
        GatewayError::Peer {
            tier: Tier::Decoder,
            status,
        }
    }
}
