//! Hand-written CPU kernels for the hot paths candle 0.11 leaves slow (performance issue,
//! part 2).
//!
//! - [`gemv_f32`] and [`gemv_bf16`]: `y = W · x` for a row-major `[rows, cols]` weight (the
//!   `nn.Linear` layout, so every output is one contiguous dot product), split by rows over
//!   threads. Decode at batch 1 is this operation; it is bound by how fast the weights stream
//!   from memory, so the bf16 variant reads half the bytes and accumulates in f32.
//! - [`gemm_f32`]: `C = A · Wᵀ (+ bias)` for a few rows of `A` (batched decode: one row per
//!   sequence) on the same unpacked weight layout, reading each weight row once for all rows.
//! - [`gemm_f32_bf16`]: the same with bf16 weights widened exactly on load, for a bf16 weight
//!   that is not packed (a tied embedding as output head).
//! - [`gemm_bf16`]: bf16 GEMM on packed weights (AMX tiles, AVX-512 BF16), f32 accumulation.
//!
//! Every kernel exists as a portable Rust loop and as AVX-512 / AVX2+FMA versions selected at run
//! time ([`Isa::detect`]). The `*_with` entry points take the [`Isa`] explicitly so tests can check
//! each SIMD path against the portable one. This is the only crate that allows `unsafe` (for
//! `std::arch` intrinsics); every unsafe block is behind a length check and a feature check.
#![allow(unsafe_code)]

#[cfg(target_arch = "x86_64")]
mod amx;
mod gemm;
mod gemm_f32;
mod gemv;
#[cfg(target_arch = "x86_64")]
mod x86;
#[cfg(target_arch = "x86_64")]
mod x86_bf16;
#[cfg(target_arch = "x86_64")]
mod x86_f32;

pub use gemm::{GemmOut, PackedBf16};

/// `v` rounded to bf16, to nearest with ties to even; NaN stays a (quiet) NaN, overflow goes to
/// ±inf. The same bits as `bf16::from_f32`, without its branches, so loops over it vectorise
/// (the GEMM output tiles here, the model's casts).
#[inline(always)]
pub fn round_bf16(v: f32) -> bf16 {
    let bits = v.to_bits();
    let rounded = bits.wrapping_add(0x7FFF + ((bits >> 16) & 1)) >> 16;
    let nan = ((bits >> 16) | 0x0040) & 0xFFFF;
    bf16::from_bits((if v.is_nan() { nan } else { rounded }) as u16)
}

use half::bf16;

/// Invalid arguments to a kernel.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KernelError {
    /// A slice does not have the length the shape implies.
    #[error("{what} has {got} elements, expected {expected}")]
    Length {
        what: &'static str,
        got: usize,
        expected: usize,
    },
    /// The requested instruction set is not available on this CPU.
    #[error("{0:?} is not supported by this CPU")]
    Unsupported(Isa),
    /// The requested GEMM level is not available on this CPU (or not permitted by the OS).
    #[error("{0:?} GEMM is not supported by this CPU")]
    UnsupportedGemm(GemmIsa),
}

/// Instruction-set level of a kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Plain Rust (whatever the compiler auto-vectorises for the build target).
    Portable,
    /// x86-64 AVX2 + FMA (256-bit).
    Avx2,
    /// x86-64 AVX-512F (512-bit).
    Avx512,
}

impl Isa {
    /// The best level this CPU supports.
    pub fn detect() -> Self {
        Self::all()
            .into_iter()
            .rev()
            .find(|isa| isa.is_supported())
            .unwrap_or(Self::Portable)
    }

    /// All levels, slowest first.
    pub fn all() -> [Self; 3] {
        [Self::Portable, Self::Avx2, Self::Avx512]
    }

    /// Whether this CPU can run kernels of this level.
    pub fn is_supported(self) -> bool {
        match self {
            Self::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            Self::Avx2 | Self::Avx512 => false,
        }
    }
}

/// `y[r] = Σ_c w[r·cols + c] · x[c]` with the best [`Isa`] on `threads` threads.
///
/// # Errors
/// [`KernelError::Length`] when `w`, `x` or `y` do not match `rows × cols`.
pub fn gemv_f32(
    w: &[f32],
    x: &[f32],
    y: &mut [f32],
    cols: usize,
    threads: usize,
) -> Result<(), KernelError> {
    gemv_f32_with(Isa::detect(), w, x, y, cols, threads)
}

/// [`gemv_f32`] with an explicit instruction set.
///
/// # Errors
/// As [`gemv_f32`], and [`KernelError::Unsupported`] when the CPU lacks `isa`.
pub fn gemv_f32_with(
    isa: Isa,
    w: &[f32],
    x: &[f32],
    y: &mut [f32],
    cols: usize,
    threads: usize,
) -> Result<(), KernelError> {
    gemv_with(isa, w, x, y, cols, threads)
}

/// `y = W · x` for bf16 weights, f32 activations and f32 accumulation, best [`Isa`].
///
/// # Errors
/// [`KernelError::Length`] when `w`, `x` or `y` do not match `rows × cols`.
pub fn gemv_bf16(
    w: &[bf16],
    x: &[f32],
    y: &mut [f32],
    cols: usize,
    threads: usize,
) -> Result<(), KernelError> {
    gemv_bf16_with(Isa::detect(), w, x, y, cols, threads)
}

/// [`gemv_bf16`] with an explicit instruction set.
///
/// # Errors
/// As [`gemv_bf16`], and [`KernelError::Unsupported`] when the CPU lacks `isa`.
pub fn gemv_bf16_with(
    isa: Isa,
    w: &[bf16],
    x: &[f32],
    y: &mut [f32],
    cols: usize,
    threads: usize,
) -> Result<(), KernelError> {
    gemv_with(isa, w, x, y, cols, threads)
}

/// `out[i·n + j] = Σ_c a[i·k + c] · w[j·k + c] (+ bias[j])` for row-major `a: [m, k]` and
/// `w: [n, k]` (the `nn.Linear` layout, unpacked), summed in f32, with the best [`Isa`] on
/// `threads` threads. Made for small `m` (batched decode): each weight row is read once and
/// dotted with all `m` rows; at large `m` a cache-blocked GEMM does better.
///
/// # Errors
/// [`KernelError::Length`] when a slice does not match `m`, `n`, `k`.
#[allow(clippy::too_many_arguments)]
pub fn gemm_f32(
    a: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    threads: usize,
) -> Result<(), KernelError> {
    gemm_f32_with(Isa::detect(), a, w, bias, out, m, n, k, threads)
}

/// [`gemm_f32`] with an explicit instruction set.
///
/// # Errors
/// As [`gemm_f32`], and [`KernelError::Unsupported`] when the CPU lacks `isa`.
#[allow(clippy::too_many_arguments)]
pub fn gemm_f32_with(
    isa: Isa,
    a: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    threads: usize,
) -> Result<(), KernelError> {
    few_rows_with(isa, a, w, bias, out, m, n, k, threads)
}

/// [`gemm_f32`] with a bf16 weight `w: [n, k]` (unpacked, `nn.Linear` layout), each element
/// widened exactly to f32 as it is loaded: f32 activations, f32 products and sums, f32 output.
/// Reads each weight row once for all `m` rows, and needs no packed copy of `w`.
///
/// # Errors
/// [`KernelError::Length`] when a slice does not match `m`, `n`, `k`.
#[allow(clippy::too_many_arguments)]
pub fn gemm_f32_bf16(
    a: &[f32],
    w: &[bf16],
    bias: Option<&[f32]>,
    out: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    threads: usize,
) -> Result<(), KernelError> {
    gemm_f32_bf16_with(Isa::detect(), a, w, bias, out, m, n, k, threads)
}

/// [`gemm_f32_bf16`] with an explicit instruction set.
///
/// # Errors
/// As [`gemm_f32_bf16`], and [`KernelError::Unsupported`] when the CPU lacks `isa`.
#[allow(clippy::too_many_arguments)]
pub fn gemm_f32_bf16_with(
    isa: Isa,
    a: &[f32],
    w: &[bf16],
    bias: Option<&[f32]>,
    out: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    threads: usize,
) -> Result<(), KernelError> {
    few_rows_with(isa, a, w, bias, out, m, n, k, threads)
}

/// The gemv for either weight type: check, then split rows over threads.
fn gemv_with<W: gemm_f32::Weight>(
    isa: Isa,
    w: &[W],
    x: &[f32],
    y: &mut [f32],
    cols: usize,
    threads: usize,
) -> Result<(), KernelError> {
    gemv::check(isa, w.len(), x.len(), y.len(), cols)?;
    gemv::run(w, x, y, cols, threads, |row, x| gemv::dot(isa, row, x));
    Ok(())
}

/// The few-rows GEMM for either weight type.
#[allow(clippy::too_many_arguments)]
fn few_rows_with<W: gemm_f32::Weight>(
    isa: Isa,
    a: &[f32],
    w: &[W],
    bias: Option<&[f32]>,
    out: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    threads: usize,
) -> Result<(), KernelError> {
    let p = gemm_f32::Problem {
        a,
        w,
        bias,
        m,
        n,
        k,
    };
    gemm_f32::check(isa, &p, out.len())?;
    gemm_f32::run(isa, &p, out, threads);
    Ok(())
}

/// Instruction-set level of the bf16 GEMM kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemmIsa {
    /// Plain Rust: exact f32 products of bf16, f32 sums.
    Portable,
    /// x86-64 AVX-512F + AVX512_BF16 (`vdpbf16ps`).
    Avx512Bf16,
    /// x86-64 AMX-TILE + AMX-BF16 (`tdpbf16ps`), with the OS's permission to use tile data.
    Amx,
}

impl GemmIsa {
    /// The best level this CPU supports.
    pub fn detect() -> Self {
        Self::all()
            .into_iter()
            .rev()
            .find(|isa| isa.is_supported())
            .unwrap_or(Self::Portable)
    }

    /// All levels, slowest first.
    pub fn all() -> [Self; 3] {
        [Self::Portable, Self::Avx512Bf16, Self::Amx]
    }

    /// Whether this CPU (and OS) can run kernels of this level. Asking about [`GemmIsa::Amx`]
    /// requests the Linux per-process permission for AMX tile data the first time.
    pub fn is_supported(self) -> bool {
        match self {
            Self::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Self::Avx512Bf16 => x86_bf16::available(),
            #[cfg(target_arch = "x86_64")]
            Self::Amx => amx::available(),
            #[cfg(not(target_arch = "x86_64"))]
            Self::Avx512Bf16 | Self::Amx => false,
        }
    }
}

/// `out[i][j] = Σ_k a[i·k + k'] · w[j·k + k'] (+ bias[j])` for row-major `a: [m, k]` and
/// `w: [n, k]` (the `nn.Linear` layout), accumulated in f32, with the best [`GemmIsa`] on
/// `threads` threads (AMX from 64 rows, see [`gemm_bf16_packed`]). `w` is rearranged on every
/// call; use [`gemm_bf16_packed`] to do that once.
///
/// # Errors
/// [`KernelError::Length`] when a slice does not match `m`, `n`, `k`.
#[allow(clippy::too_many_arguments)]
pub fn gemm_bf16(
    a: &[bf16],
    w: &[bf16],
    bias: Option<&[f32]>,
    out: GemmOut<'_>,
    m: usize,
    n: usize,
    k: usize,
    threads: usize,
) -> Result<(), KernelError> {
    let isa = gemm::kernel_for(GemmIsa::detect(), m);
    gemm_bf16_with(isa, a, w, bias, out, m, n, k, threads)
}

/// [`gemm_bf16`] with an explicit level.
///
/// # Errors
/// As [`gemm_bf16`], and [`KernelError::UnsupportedGemm`] when the CPU lacks `isa`.
#[allow(clippy::too_many_arguments)]
pub fn gemm_bf16_with(
    isa: GemmIsa,
    a: &[bf16],
    w: &[bf16],
    bias: Option<&[f32]>,
    out: GemmOut<'_>,
    m: usize,
    n: usize,
    k: usize,
    threads: usize,
) -> Result<(), KernelError> {
    if isa == GemmIsa::Portable {
        // The portable layout is W itself: no copy.
        let p = gemm::Problem {
            a,
            m,
            n,
            k,
            w,
            bias,
        };
        gemm::check(isa, &p, out_len(&out))?;
        gemm::run(isa, &p, out, threads);
        return Ok(());
    }
    let packed = PackedBf16::new(isa, w, n, k, threads)?;
    run_packed(isa, a, &packed, bias, out, m, threads)
}

/// [`gemm_bf16`] with a weight packed beforehand (on its [`PackedBf16::isa`] level). An
/// AMX-packed weight runs on the AVX-512 BF16 kernel below 64 rows, where AMX gains nothing.
///
/// # Errors
/// [`KernelError::Length`] when `a`, `bias` or `out` do not match `m`, `w.n()`, `w.k()`.
pub fn gemm_bf16_packed(
    a: &[bf16],
    w: &PackedBf16,
    bias: Option<&[f32]>,
    out: GemmOut<'_>,
    m: usize,
    threads: usize,
) -> Result<(), KernelError> {
    run_packed(gemm::kernel_for(w.isa(), m), a, w, bias, out, m, threads)
}

/// Runs the `kernel` level (which must share `w`'s layout) on a packed weight.
fn run_packed(
    kernel: GemmIsa,
    a: &[bf16],
    w: &PackedBf16,
    bias: Option<&[f32]>,
    out: GemmOut<'_>,
    m: usize,
    threads: usize,
) -> Result<(), KernelError> {
    let p = gemm::Problem {
        a,
        m,
        n: w.n(),
        k: w.k(),
        w: w.data(),
        bias,
    };
    gemm::check(kernel, &p, out_len(&out))?;
    gemm::run(kernel, &p, out, threads);
    Ok(())
}

fn out_len(out: &GemmOut<'_>) -> usize {
    match out {
        GemmOut::F32(s) => s.len(),
        GemmOut::Bf16(s) => s.len(),
    }
}
