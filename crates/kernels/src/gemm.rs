//! bf16 GEMM `C = A · Wᵀ (+ bias)`: shape checks, weight packing, the split over threads, the
//! output epilogue and the portable kernel. The SIMD kernels live in `amx.rs` and `x86_bf16.rs`.
//!
//! Packed weight layout (the AMX/AVX-512 BF16 levels): `n` padded to a multiple of [`NB`] and `k`
//! to a multiple of [`KB`] with zeros. For each block of 16 output columns, for each pair of `k`
//! values `p`, the 16 columns' `(W[c][2p], W[c][2p+1])` pairs lie next to each other (32 bf16,
//! 64 bytes). That row is what `vdpbf16ps` consumes as one operand and what AMX wants for the B
//! tile (16 such rows make a 16×32 "VNNI" tile). The portable level keeps `W` row-major.

use half::bf16;

use crate::{GemmIsa, KernelError};

/// Output columns per packed column block (one AMX tile / one zmm of f32).
pub(crate) const NB: usize = 16;
/// `k` granularity of the packed layout: one AMX tile row of bf16.
pub(crate) const KB: usize = 32;
/// Columns per unit of work handed to a thread: two column blocks, the width of the kernels.
pub(crate) const NW: usize = 2 * NB;

/// A weight `W: [n, k]` rearranged once for the GEMM kernels of one [`GemmIsa`].
#[derive(Clone)]
pub struct PackedBf16 {
    isa: GemmIsa,
    n: usize,
    k: usize,
    data: Vec<bf16>,
}

impl PackedBf16 {
    /// Packs the row-major `w: [n, k]` for `isa` on `threads` threads.
    ///
    /// # Errors
    /// [`KernelError::Length`] when `w.len() != n · k`; [`KernelError::UnsupportedGemm`] when the
    /// CPU lacks `isa`.
    pub fn new(
        isa: GemmIsa,
        w: &[bf16],
        n: usize,
        k: usize,
        threads: usize,
    ) -> Result<Self, KernelError> {
        if !isa.is_supported() {
            return Err(KernelError::UnsupportedGemm(isa));
        }
        expect_len("w", w.len(), n.saturating_mul(k))?;
        let data = match isa {
            GemmIsa::Portable => w.to_vec(),
            _ => pack_pairs(w, n, k, threads),
        };
        Ok(Self { isa, n, k, data })
    }

    /// The row-major `[n, k]` weight back.
    pub fn unpack(&self) -> Vec<bf16> {
        if self.isa == GemmIsa::Portable {
            return self.data.clone();
        }
        let kp = padded_k(self.k);
        let mut w = vec![bf16::ZERO; self.n * self.k];
        for (col, row) in w.chunks_exact_mut(self.k.max(1)).enumerate() {
            let block = &self.data[(col / NB) * NB * kp..];
            for (i, v) in row.iter_mut().enumerate() {
                *v = block[(i / 2) * 2 * NB + 2 * (col % NB) + i % 2];
            }
        }
        w
    }

    /// The level the layout was made for.
    pub fn isa(&self) -> GemmIsa {
        self.isa
    }

    /// Output features (rows of `W`).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Input features (columns of `W`).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Bytes held, padding included.
    pub fn size_bytes(&self) -> usize {
        self.data.len() * 2
    }

    pub(crate) fn data(&self) -> &[bf16] {
        &self.data
    }
}

impl std::fmt::Debug for PackedBf16 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedBf16")
            .field("isa", &self.isa)
            .field("n", &self.n)
            .field("k", &self.k)
            .finish_non_exhaustive()
    }
}

pub(crate) fn padded_k(k: usize) -> usize {
    k.div_ceil(KB) * KB
}

pub(crate) fn padded_n(n: usize) -> usize {
    n.div_ceil(NW) * NW
}

fn pack_pairs(w: &[bf16], n: usize, k: usize, threads: usize) -> Vec<bf16> {
    let (kp, np) = (padded_k(k), padded_n(n));
    let mut out = vec![bf16::ZERO; np * kp];
    if out.is_empty() {
        return out;
    }
    let blocks = np / NB;
    let per = blocks.div_ceil(threads.clamp(1, blocks));
    if per >= blocks {
        // One part: no thread to start (attention packs small blocks per call).
        pack_blocks(w, n, k, 0, &mut out);
        return out;
    }
    std::thread::scope(|s| {
        for (part, dst) in out.chunks_mut(per * NB * kp).enumerate() {
            s.spawn(move || pack_blocks(w, n, k, part * per, dst));
        }
    });
    out
}

/// Fills `dst` with column blocks `first..` of the pair layout.
fn pack_blocks(w: &[bf16], n: usize, k: usize, first: usize, dst: &mut [bf16]) {
    let kp = padded_k(k);
    // Written in destination order: each block reads its 16 weight rows front to back, so the
    // reads stream and every output cache line is filled once.
    for (b, dst) in dst.chunks_exact_mut(NB * kp).enumerate() {
        let block = first + b;
        let cols = NB.min(n.saturating_sub(block * NB));
        let rows: Vec<&[bf16]> = (0..cols)
            .map(|c| &w[(block * NB + c) * k..(block * NB + c + 1) * k])
            .collect();
        let whole = k / 2;
        for (pair, line) in dst.chunks_exact_mut(2 * NB).take(whole).enumerate() {
            for (c, row) in rows.iter().enumerate() {
                line[2 * c] = row[2 * pair];
                line[2 * c + 1] = row[2 * pair + 1];
            }
        }
        if k % 2 == 1 {
            let line = &mut dst[whole * 2 * NB..];
            for (c, row) in rows.iter().enumerate() {
                line[2 * c] = row[k - 1];
            }
        }
    }
}

pub(crate) fn expect_len(
    what: &'static str,
    got: usize,
    expected: usize,
) -> Result<(), KernelError> {
    if got == expected {
        Ok(())
    } else {
        Err(KernelError::Length {
            what,
            got,
            expected,
        })
    }
}

/// Where the kernel writes `C: [m, n]`.
pub enum GemmOut<'a> {
    /// f32 results.
    F32(&'a mut [f32]),
    /// Results rounded once to bf16 (round to nearest even).
    Bf16(&'a mut [bf16]),
}

impl GemmOut<'_> {
    fn len(&self) -> usize {
        match self {
            Self::F32(s) => s.len(),
            Self::Bf16(s) => s.len(),
        }
    }
}

/// An output element type.
pub(crate) trait Store: Copy + Send + Sync {
    fn from_acc(v: f32) -> Self;

    /// `dst[c] = from_acc(src[c] + bias[c])`, as one branch-free loop the compiler vectorises.
    #[inline(always)]
    fn store_row(dst: &mut [Self], src: &[f32], bias: Option<&[f32]>) {
        match bias {
            Some(b) => {
                for ((d, s), b) in dst.iter_mut().zip(src).zip(b) {
                    *d = Self::from_acc(s + b);
                }
            }
            None => {
                for (d, s) in dst.iter_mut().zip(src) {
                    *d = Self::from_acc(*s);
                }
            }
        }
    }
}

impl Store for f32 {
    #[inline(always)]
    fn from_acc(v: f32) -> Self {
        v
    }
}

impl Store for bf16 {
    #[inline(always)]
    fn from_acc(v: f32) -> Self {
        crate::round_bf16(v)
    }
}

/// The output `C: [m, n]` shared by the threads, each writing a disjoint range of columns.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr<T> {
    ptr: *mut T,
    m: usize,
    n: usize,
}

// SAFETY: threads only write through `OutPtr::write`, each to its own columns (see `run`).
unsafe impl<T: Send> Send for OutPtr<T> {}
// SAFETY: as above; no thread reads the output.
unsafe impl<T: Send> Sync for OutPtr<T> {}

impl<T: Store> OutPtr<T> {
    /// Writes `acc + bias[col]` for the valid part of a `rows × cols` tile of accumulators
    /// (row stride `ld`) whose top-left is `C[row0][col0]`.
    ///
    /// Callers split columns between threads so no two threads write the same element.
    pub(crate) fn tile(
        &self,
        acc: &[f32],
        ld: usize,
        row0: usize,
        col0: usize,
        bias: Option<&[f32]>,
    ) {
        let rows = (acc.len() / ld).min(self.m.saturating_sub(row0));
        let cols = ld.min(self.n.saturating_sub(col0));
        let bias = bias.map(|b| &b[col0..col0 + cols]);
        for r in 0..rows {
            let src = &acc[r * ld..r * ld + cols];
            let base = (row0 + r) * self.n + col0;
            // SAFETY: row0 + r < m and col0 + cols <= n, so `base..base + cols` is inside the
            // m·n output (its length was checked by `check`); these columns belong to this
            // thread alone, so no other reference to them exists while this one lives.
            let dst = unsafe { std::slice::from_raw_parts_mut(self.ptr.add(base), cols) };
            T::store_row(dst, src, bias);
        }
    }
}

/// Arguments shared by every kernel: `A: [m, k]`, the weight, the bias.
pub(crate) struct Problem<'a> {
    pub a: &'a [bf16],
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// Row-major `[n, k]` for the portable level, the packed layout otherwise.
    pub w: &'a [bf16],
    pub bias: Option<&'a [f32]>,
}

pub(crate) fn check(isa: GemmIsa, p: &Problem<'_>, out_len: usize) -> Result<(), KernelError> {
    if !isa.is_supported() {
        return Err(KernelError::UnsupportedGemm(isa));
    }
    expect_len("a", p.a.len(), p.m.saturating_mul(p.k))?;
    let w_len = match isa {
        GemmIsa::Portable => p.n.saturating_mul(p.k),
        _ => padded_n(p.n).saturating_mul(padded_k(p.k)),
    };
    expect_len("w", p.w.len(), w_len)?;
    if let Some(b) = p.bias {
        expect_len("bias", b.len(), p.n)?;
    }
    expect_len("out", out_len, p.m.saturating_mul(p.n))
}

/// Runs `p` on `threads` threads, writing into `out`. Arguments were checked by [`check`].
pub(crate) fn run(isa: GemmIsa, p: &Problem<'_>, out: GemmOut<'_>, threads: usize) {
    debug_assert_eq!(out.len(), p.m * p.n);
    match out {
        GemmOut::F32(o) => run_typed(isa, p, o, threads),
        GemmOut::Bf16(o) => run_typed(isa, p, o, threads),
    }
}

/// Below this many rows an AMX-packed weight runs on the AVX-512 BF16 kernel (same layout).
/// At 1-4 rows both stream W equally fast; at 16-63 rows AMX is up to ~3x faster (bench `gemm`),
/// which this gives up on purpose: the two round differently (AMX sums a tile row's products
/// more exactly than the sequential `vdpbf16ps` chain), and on the tiny parity checkpoints
/// (16-50 rows) AMX rounding turns a one-ulp gap between two logits into an exact tie that
/// flips a greedy bf16 token vs transformers. Real prefill and vision shapes (>= 256 rows) use
/// AMX either way.
pub(crate) const AMX_MIN_ROWS: usize = 64;

/// The kernel to run for `m` rows on a weight packed for `packed`.
pub(crate) fn kernel_for(packed: GemmIsa, m: usize) -> GemmIsa {
    if packed == GemmIsa::Amx && m < AMX_MIN_ROWS && GemmIsa::Avx512Bf16.is_supported() {
        GemmIsa::Avx512Bf16
    } else {
        packed
    }
}

fn run_typed<T: Store>(isa: GemmIsa, p: &Problem<'_>, out: &mut [T], threads: usize) {
    let ptr = OutPtr {
        ptr: out.as_mut_ptr(),
        m: p.m,
        n: p.n,
    };
    if p.m == 0 || p.n == 0 {
        return;
    }
    if p.k == 0 {
        // No products: C is the bias (or zero). The kernels assume at least one k step.
        let zeros = vec![0f32; p.n];
        for r in 0..p.m {
            ptr.tile(&zeros, p.n, r, 0, p.bias);
        }
        return;
    }
    // A is rearranged once here and shared by the threads (it is small next to W: m·k vs n·k).
    let a = match isa {
        #[cfg(target_arch = "x86_64")]
        GemmIsa::Amx => crate::amx::pack_a(p.a, p.m, p.k),
        #[cfg(target_arch = "x86_64")]
        GemmIsa::Avx512Bf16 => crate::x86_bf16::pack_a(p.a, p.m, p.k),
        _ => Vec::new(),
    };
    // Units of NW columns; threads get contiguous ranges so each streams its own part of W.
    let units = p.n.div_ceil(NW);
    let threads = threads.clamp(1, units);
    let per = units.div_ceil(threads);
    let work = |u0: usize, u1: usize| kernel(isa, p, &a, ptr, u0, u1.min(units));
    if threads == 1 {
        work(0, units);
        return;
    }
    std::thread::scope(|s| {
        let work = &work;
        for t in 1..threads {
            s.spawn(move || work(t * per, (t + 1) * per));
        }
        work(0, per);
    });
}

/// Columns `[u0·NW, u1·NW)` of the output (clipped to `n`); `a` is A as packed for `isa`.
fn kernel<T: Store>(
    isa: GemmIsa,
    p: &Problem<'_>,
    a: &[bf16],
    out: OutPtr<T>,
    u0: usize,
    u1: usize,
) {
    if u0 >= u1 {
        return;
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        GemmIsa::Amx => crate::amx::columns(p, a, out, u0, u1),
        #[cfg(target_arch = "x86_64")]
        GemmIsa::Avx512Bf16 => crate::x86_bf16::columns(p, a, out, u0, u1),
        _ => {
            let _ = a;
            portable(p, out, u0, u1)
        }
    }
}

/// Rows handled together by the portable kernel, so each weight row is read once per group.
const PORTABLE_ROWS: usize = 4;

pub(crate) fn portable<T: Store>(p: &Problem<'_>, out: OutPtr<T>, u0: usize, u1: usize) {
    let (c0, c1) = (u0 * NW, (u1 * NW).min(p.n));
    let k = p.k;
    let mut a32 = vec![0f32; PORTABLE_ROWS * k];
    let mut acc = vec![0f32; PORTABLE_ROWS * (c1 - c0)];
    for r0 in (0..p.m).step_by(PORTABLE_ROWS) {
        let rows = PORTABLE_ROWS.min(p.m - r0);
        for (d, s) in a32.iter_mut().zip(&p.a[r0 * k..(r0 + rows) * k]) {
            *d = s.to_f32();
        }
        let width = c1 - c0;
        for c in c0..c1 {
            let w = &p.w[c * k..(c + 1) * k];
            for r in 0..rows {
                acc[r * width + c - c0] = crate::gemv::dot_portable(w, &a32[r * k..(r + 1) * k]);
            }
        }
        out.tile(&acc[..rows * width], width, r0, c0, p.bias);
    }
}
