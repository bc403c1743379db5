//! `paligemma`: the command-line entry point (generation and benchmarks today; the gRPC tiers
//! and the one-process stack join as `serve` and `up`).

mod annotate;
mod bench;
mod bench_compare;
mod bench_stack;
mod detect;
mod generate;
mod pipeline;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

// Every candle op allocates its output; with glibc those multi-MB buffers are fresh mmaps that
// page-fault on first touch and are unmapped on drop (~15 % of a bf16 vision forward in
// `clear_page_erms` / `exc_page_fault`). mimalloc keeps and reuses them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "paligemma",
    version,
    about = "Serve and run PaliGemma (1 and 2) vision-language models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text for one image and prompt with a local checkpoint.
    Generate(generate::GenerateArgs),
    /// Detect objects (`detect a ; b`) with a local checkpoint: JSON boxes, optional drawing.
    Detect(detect::DetectArgs),
    /// Segment objects (`segment a ; b`) with a local checkpoint and a VQ-VAE (`--vae`).
    Segment(detect::DetectArgs),
    /// Time vision encode, prefill and decode on random weights of a real PaliGemma shape.
    Bench(bench::BenchArgs),
    /// Measure soft-token transfer over gRPC vs in-process, and the gateway's own per-request
    /// overhead.
    BenchStack(bench_stack::BenchStackArgs),
    /// Side-by-side with Hugging Face transformers on identical random weights (needs the
    /// tools/reference Python environment for the comparison).
    BenchCompare(bench_compare::BenchCompareArgs),
    /// Run one tier's gRPC server (vision, decoder or gateway), as deployed.
    Serve(serve::ServeArgs),
    /// Run all three tiers in one process on loopback (gateway on 127.0.0.1:50051).
    Up(serve::UpArgs),
}

pub use paligemma_rpc::{DtypeArg, parse_device};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => generate::run(&args),
        Command::Detect(args) => detect::run(&args, detect::Task::Detect),
        Command::Segment(args) => detect::run(&args, detect::Task::Segment),
        Command::Bench(args) => bench::run(&args),
        Command::BenchStack(args) => bench_stack::run(&args),
        Command::BenchCompare(args) => bench_compare::run(&args),
        Command::Serve(args) => serve::serve(args),
        Command::Up(args) => serve::up(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
