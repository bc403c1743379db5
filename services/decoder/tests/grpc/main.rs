//! The decoder tier over real gRPC on 127.0.0.1:0, fed soft tokens from the in-process vision
//! encoder and prompt ids from the transformers reference fixtures.
//!
//! - `generate`: greedy tokens equal the reference; logprobs, stop ids, sampling, `Info`.
//! - `malformed`: every malformed stream and bad request field gets its own code and message,
//!   and none reaches the model.
//! - `cancel`: a client that goes away stops its generation and frees its slot.

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

mod cancel;
mod capacity;
mod generate;
mod malformed;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use paligemma_decoder_service::{DecoderArgs, DecoderService};
use paligemma_model::{LoadOptions, ModelFiles, VisionEncoder};
use paligemma_proto::v1::decoder_client::DecoderClient;
use paligemma_proto::v1::{
    DecodeDone, DecodeRequest, GenerateInput, SoftTokenChunk, generate_input, generate_output,
};
use paligemma_rpc::{DtypeArg, ModelArgs};
use paligemma_wire::{SoftTokens, WireDtype, to_chunks};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

pub fn model_dir(case: &str) -> PathBuf {
    fixtures().join("models").join(case)
}

pub fn args(case: &str, dtype: DtypeArg) -> DecoderArgs {
    DecoderArgs::new(ModelArgs {
        model: model_dir(case),
        model_id: None,
        dtype,
        device: "cpu".into(),
    })
}

/// The transformers reference tensors of a fixture case.
pub struct Reference(HashMap<String, Tensor>);

impl Reference {
    pub fn load(case: &str) -> Self {
        let path = fixtures().join(format!("reference/{case}.safetensors"));
        Self(candle_core::safetensors::load(path, &Device::Cpu).unwrap())
    }

    pub fn ids(&self, name: &str) -> Vec<u32> {
        self.0[name]
            .to_dtype(DType::I64)
            .unwrap()
            .to_vec1::<i64>()
            .unwrap()
            .into_iter()
            .map(|v| v as u32)
            .collect()
    }

    pub fn pixel_values(&self) -> &Tensor {
        &self.0["pixel_values"]
    }
}

/// Soft tokens of the reference image from the in-process encoder at `dtype`, as `wire`, and
/// the checkpoint's vision fingerprint.
pub fn encode(case: &str, dtype: DType, wire: WireDtype) -> (SoftTokens, String) {
    let files = ModelFiles::discover(&model_dir(case)).unwrap();
    let opts = LoadOptions {
        dtype,
        ..LoadOptions::default()
    };
    let encoder = VisionEncoder::load(&files, &opts).unwrap();
    let features = encoder
        .encode(Reference::load(case).pixel_values())
        .unwrap()
        .squeeze(0)
        .unwrap();
    let (rows, cols) = features.dims2().unwrap();
    let values: Vec<f32> = features
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let tokens = SoftTokens::from_f32(rows, cols, &values, wire).unwrap();
    (tokens, files.vision_fingerprint().unwrap())
}

/// Synthetic soft tokens of a given shape (for streams the model must never see).
pub fn synthetic(rows: usize, cols: usize) -> SoftTokens {
    let values: Vec<f32> = (0..rows * cols).map(|i| (i % 31) as f32 * 0.01).collect();
    SoftTokens::from_f32(rows, cols, &values, WireDtype::F32).unwrap()
}

pub fn chunk(c: SoftTokenChunk) -> GenerateInput {
    GenerateInput {
        kind: Some(generate_input::Kind::SoftTokens(c)),
    }
}

pub fn request(r: DecodeRequest) -> GenerateInput {
    GenerateInput {
        kind: Some(generate_input::Kind::Request(r)),
    }
}

/// The whole input of a call: `tokens` in chunks of at most `max_chunk` bytes, then `req`.
pub fn inputs(
    tokens: &SoftTokens,
    fingerprint: &str,
    max_chunk: usize,
    req: DecodeRequest,
) -> Vec<GenerateInput> {
    let mut inputs: Vec<_> = to_chunks(tokens, fingerprint, max_chunk)
        .into_iter()
        .map(chunk)
        .collect();
    inputs.push(request(req));
    inputs
}

/// A greedy request for the reference prompt of `case`.
pub fn reference_request(case: &str, max_new_tokens: u32) -> DecodeRequest {
    DecodeRequest {
        prompt_ids: Reference::load(case).ids("input_ids"),
        max_new_tokens,
        request_id: format!("test-{case}"),
        ..DecodeRequest::default()
    }
}

pub struct Running {
    pub addr: SocketAddr,
    pub service: DecoderService,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub async fn start(args: DecoderArgs) -> Self {
        let service = paligemma_decoder_service::load(args).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(paligemma_decoder_service::run(
            service.clone(),
            listener,
            shutdown.clone(),
        ));
        Self {
            addr,
            service,
            shutdown,
            task,
        }
    }

    pub async fn client(&self) -> DecoderClient<Channel> {
        DecoderClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

/// What a successful call streamed back.
#[derive(Debug)]
pub struct Outcome {
    pub ids: Vec<u32>,
    pub logprobs: Vec<f32>,
    pub done: DecodeDone,
}

/// Sends `inputs` and reads the whole response.
pub async fn call(
    client: &mut DecoderClient<Channel>,
    inputs: Vec<GenerateInput>,
) -> Result<Outcome, tonic::Status> {
    let mut stream = client
        .generate(tokio_stream::iter(inputs))
        .await?
        .into_inner();
    let (mut ids, mut logprobs) = (Vec::new(), Vec::new());
    while let Some(message) = stream.message().await? {
        match message.kind {
            Some(generate_output::Kind::Tokens(t)) => {
                ids.extend(t.ids);
                logprobs.extend(t.logprobs);
            }
            Some(generate_output::Kind::Done(done)) => {
                assert!(stream.message().await?.is_none(), "DecodeDone must be last");
                return Ok(Outcome {
                    ids,
                    logprobs,
                    done,
                });
            }
            None => panic!("empty GenerateOutput"),
        }
    }
    panic!("stream ended without DecodeDone after {} tokens", ids.len());
}

/// Sends `inputs` expecting a failure.
pub async fn refused(
    client: &mut DecoderClient<Channel>,
    inputs: Vec<GenerateInput>,
) -> tonic::Status {
    match call(client, inputs).await {
        Ok(outcome) => panic!("expected an error, got {outcome:?}"),
        Err(status) => status,
    }
}
