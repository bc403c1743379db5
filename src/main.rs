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

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_e` (libmimalloc-sys 0.1.49 names options
/// 14 and 16 but not this one).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory for reuse instead of returning it to the OS. Activations of a forward are
/// tens of MB each; mimalloc returned them between ops, so every op's output page-faulted and
/// was zeroed again by the kernel: bf16 vision encode batch 8 ≈ 940 → 740 ms (alternating runs,
/// mid shape). The process's resident size then stays at its peak, which is what a replica is
/// sized for anyway. `MIMALLOC_PURGE_DELAY` in the environment (milliseconds) still wins.
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: setting an option takes no pointers; mimalloc reads this one when it next decides
    // whether to purge, so changing it while allocating is fine.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1)
    };
}

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
    keep_freed_memory();
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
