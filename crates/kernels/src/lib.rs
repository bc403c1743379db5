//! Hand-written CPU kernels for the hot paths candle 0.11 leaves slow (performance issue,
//! part 2).
//!
//! - [`gemv_f32`] and [`gemv_bf16`]: `y = W · x` for a row-major `[rows, cols]` weight (the
//!   `nn.Linear` layout, so every output is one contiguous dot product), split by rows over
//!   threads. Decode at batch 1 is this operation; it is bound by how fast the weights stream
//!   from memory, so the bf16 variant reads half the bytes and accumulates in f32.
//!
//! Every kernel exists as a portable Rust loop and as AVX-512 / AVX2+FMA versions selected at run
//! time ([`Isa::detect`]). The `*_with` entry points take the [`Isa`] explicitly so tests can check
//! each SIMD path against the portable one. This is the only crate that allows `unsafe` (for
//! `std::arch` intrinsics); every unsafe block is behind a length check and a feature check.
#![allow(unsafe_code)]

mod gemv;
#[cfg(target_arch = "x86_64")]
mod x86;

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
    gemv::check(isa, w.len(), x.len(), y.len(), cols)?;
    gemv::run(w, x, y, cols, threads, |row, x| gemv::dot_f32(isa, row, x));
    Ok(())
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
    gemv::check(isa, w.len(), x.len(), y.len(), cols)?;
    gemv::run(w, x, y, cols, threads, |row, x| gemv::dot_bf16(isa, row, x));
    Ok(())
}
