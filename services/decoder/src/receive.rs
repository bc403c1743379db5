//! Reading a `Generate` call's input stream: soft-token chunks through a validating
//! [`Assembler`], then exactly one `DecodeRequest`, and nothing after it.
//!
//! Nothing here touches the model: a stream that fails any check is answered with the error's
//! status before a single tensor is built.

use paligemma_proto::v1::{DecodeRequest, GenerateInput, generate_input};
use paligemma_wire::{Assembler, Expected, SoftTokens};
use tokio_stream::{Stream, StreamExt};
use tonic::Status;

use crate::error::DecoderError;

/// What the input stream delivered up to and including its `DecodeRequest`.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// The reassembled `[N, D]` soft tokens, checked against `expected`.
    pub soft_tokens: SoftTokens,
    /// The request as sent; see [`crate::validate::validate`].
    pub request: DecodeRequest,
}

/// Reads `inbound` until its `DecodeRequest`: every soft-token chunk goes through an
/// [`Assembler`] built from `expected`, and the stream is complete (length and CRC-32 checked)
/// when the request arrives. Messages after the request are left unread (see
/// [`expect_end`]).
///
/// # Errors
/// The first problem found: a malformed soft-token stream ([`DecoderError::Wire`]), an empty
/// message, the stream ending without a request, or the client's own stream error.
pub async fn receive<S>(inbound: &mut S, expected: Expected) -> Result<Received, DecoderError>
where
    S: Stream<Item = Result<GenerateInput, Status>> + Unpin,
{
    let mut assembler = Assembler::new(expected);
    loop {
        let Some(message) = inbound.next().await else {
            return Err(DecoderError::MissingRequest);
        };
        match message.map_err(DecoderError::Client)?.kind {
            Some(generate_input::Kind::SoftTokens(chunk)) => assembler.push(chunk)?,
            Some(generate_input::Kind::Request(request)) => {
                let soft_tokens = assembler.finish()?;
                return Ok(Received {
                    soft_tokens,
                    request,
                });
            }
            None => return Err(DecoderError::EmptyMessage),
        }
    }
}

/// Waits for the rest of the input stream, which must be empty: returns when the client
/// half-closes.
///
/// # Errors
/// [`DecoderError::SecondRequest`] / [`DecoderError::ChunkAfterRequest`] /
/// [`DecoderError::EmptyMessage`] for any further message, [`DecoderError::Client`] when the
/// client's stream fails (it went away).
pub async fn expect_end<S>(inbound: &mut S) -> Result<(), DecoderError>
where
    S: Stream<Item = Result<GenerateInput, Status>> + Unpin,
{
    match inbound.next().await {
        None => Ok(()),
        Some(Err(status)) => Err(DecoderError::Client(status)),
        Some(Ok(message)) => Err(match message.kind {
            Some(generate_input::Kind::SoftTokens(_)) => DecoderError::ChunkAfterRequest,
            Some(generate_input::Kind::Request(_)) => DecoderError::SecondRequest,
            None => DecoderError::EmptyMessage,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paligemma_wire::{MAX_CHUNK_BYTES, SoftTokenChunk, WireDtype, WireError, to_chunks};

    const FP: &str = "xxh3:00000000000000aa";

    fn expected(cols: usize, per_image: usize, max_rows: usize) -> Expected {
        Expected {
            cols,
            rows_multiple_of: per_image,
            max_rows,
            fingerprint: FP.into(),
        }
    }

    fn tokens(rows: usize, cols: usize) -> SoftTokens {
        let values: Vec<f32> = (0..rows * cols).map(|i| (i % 977) as f32 * 0.25).collect();
        SoftTokens::from_f32(rows, cols, &values, WireDtype::F32).unwrap()
    }

    fn chunk(c: SoftTokenChunk) -> Result<GenerateInput, Status> {
        Ok(GenerateInput {
            kind: Some(generate_input::Kind::SoftTokens(c)),
        })
    }

    fn request() -> Result<GenerateInput, Status> {
        Ok(GenerateInput {
            kind: Some(generate_input::Kind::Request(DecodeRequest {
                prompt_ids: vec![1, 2, 3],
                max_new_tokens: 4,
                ..DecodeRequest::default()
            })),
        })
    }

    fn stream_of(t: &SoftTokens, max_chunk: usize) -> Vec<Result<GenerateInput, Status>> {
        let mut inputs: Vec<_> = to_chunks(t, FP, max_chunk).into_iter().map(chunk).collect();
        inputs.push(request());
        inputs
    }

    #[tokio::test]
    async fn soft_tokens_larger_than_4_mib_pass_through_in_1_mib_chunks() {
        // 1024 rows × 2048 wide × f32 = 8 MiB: the PaliGemma 1 448-px case.
        let t = tokens(1024, 2048);
        assert!(t.data.len() > 4 << 20);
        let inputs = stream_of(&t, MAX_CHUNK_BYTES);
        assert_eq!(inputs.len(), 1 + 8 + 1);
        let mut inbound = tokio_stream::iter(inputs);
        let got = receive(&mut inbound, expected(2048, 1024, 1024))
            .await
            .unwrap();
        assert_eq!(got.soft_tokens, t);
        assert_eq!(got.request.prompt_ids, vec![1, 2, 3]);
        expect_end(&mut inbound).await.unwrap();
    }

    #[tokio::test]
    async fn the_request_must_follow_a_complete_stream() {
        let t = tokens(16, 8);
        let mut inputs = stream_of(&t, 100);
        let _last_payload = inputs.remove(inputs.len() - 2);
        let err = receive(&mut tokio_stream::iter(inputs), expected(8, 16, 16))
            .await
            .unwrap_err();
        assert!(
            matches!(err, DecoderError::Wire(WireError::Truncated { .. })),
            "{err}"
        );

        let err = receive(&mut tokio_stream::iter([request()]), expected(8, 16, 16))
            .await
            .unwrap_err();
        assert!(matches!(err, DecoderError::Wire(WireError::Empty)), "{err}");
    }

    #[tokio::test]
    async fn a_stream_without_a_request_is_refused() {
        let mut inputs = stream_of(&tokens(16, 8), 100);
        inputs.pop();
        let err = receive(&mut tokio_stream::iter(inputs), expected(8, 16, 16))
            .await
            .unwrap_err();
        assert!(matches!(err, DecoderError::MissingRequest), "{err}");
    }

    #[tokio::test]
    async fn messages_after_the_request_are_refused() {
        let t = tokens(16, 8);
        let extra_chunk = to_chunks(&t, FP, 100).pop().unwrap();
        for (extra, want) in [
            (chunk(extra_chunk), "soft_tokens: "),
            (request(), "request: a second"),
            (Ok(GenerateInput { kind: None }), "kind: "),
        ] {
            let mut inputs = stream_of(&t, 100);
            inputs.push(extra);
            let mut inbound = tokio_stream::iter(inputs);
            receive(&mut inbound, expected(8, 16, 16)).await.unwrap();
            let err = expect_end(&mut inbound).await.unwrap_err();
            assert!(err.to_string().starts_with(want), "{err}");
        }
    }

    #[tokio::test]
    async fn a_failing_client_stream_is_reported_as_such() {
        let inputs = vec![Err(Status::cancelled("client went away"))];
        let err = receive(&mut tokio_stream::iter(inputs), expected(8, 16, 16))
            .await
            .unwrap_err();
        assert!(matches!(err, DecoderError::Client(_)), "{err}");
    }
}
