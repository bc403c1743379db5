//! AMX-BF16 GEMM kernel (Sapphire Rapids and later), written with inline `asm!` because the AMX
//! intrinsics and `is_x86_feature_detected!("amx-*")` are unstable in Rust 1.95.
//!
//! Each step multiplies a 32×32-bf16 block of A by a 32×32 block of W (as two 16-column VNNI
//! tiles) into four 16×16 f32 accumulator tiles: tmm0-3 hold C, tmm4-5 the two A tiles, tmm6-7
//! the two W tiles. The accumulators stay in tiles for the whole `k` loop and are written out
//! once through a small scratch buffer, where the epilogue adds the bias and rounds — unless
//! packed A outgrows L2 (long `k`: SigLIP fc2, Gemma down_proj), in which case `k` is cut in
//! chunks, every column block of the thread runs one chunk before the next, and the partial
//! sums go through an f32 buffer between chunks (256×4304×1152: 780 → 950 GFLOP/s).
//!
//! Tile registers are per-thread state the compiler never touches, so configuring them in one
//! `asm!` block and using them in later ones is sound as long as the same thread does both.

use std::arch::asm;
use std::sync::OnceLock;

use half::bf16;

use crate::gemm::{KB, NB, NW, OutPtr, Problem, Store, padded_k};

/// Rows of A per tile.
const TM: usize = 16;

/// Whether the CPU has AMX-TILE and AMX-BF16 and the OS let this process use the tile data
/// state (Linux needs an explicit request per process; other systems are treated as unsupported).
pub(crate) fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| cpu_has_amx() && request_permission())
}

fn cpu_has_amx() -> bool {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    if __cpuid(0).eax < 7 {
        return false;
    }
    let edx = __cpuid_count(7, 0).edx;
    let (amx_bf16, amx_tile) = (edx >> 22 & 1 == 1, edx >> 24 & 1 == 1);
    amx_bf16 && amx_tile
}

#[cfg(target_os = "linux")]
fn request_permission() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl(ARCH_REQ_XCOMP_PERM) only changes which XSAVE components this process
    // may use; it takes two integers and touches no memory of ours. It fails (non-zero) on
    // kernels without AMX support, which we then treat as no AMX.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    rc == 0
}

#[cfg(not(target_os = "linux"))]
fn request_permission() -> bool {
    false
}

/// The 64-byte LDTILECFG operand: palette 1, every tile 16 rows of 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

impl TileConfig {
    fn all_full() -> Self {
        let mut cfg = Self {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            colsb: [0; 16],
            rows: [0; 16],
        };
        for t in 0..8 {
            cfg.colsb[t] = 64;
            cfg.rows[t] = TM as u8;
        }
        cfg
    }
}

/// Packs `A: [m, k]` into tiles: for each block of 16 rows, for each 32-wide `k` step, a
/// contiguous 16×32 bf16 tile (1 KiB), zero-padded in both dimensions.
pub(crate) fn pack_a(a: &[bf16], m: usize, k: usize) -> Vec<bf16> {
    let kp = padded_k(k);
    let mut out = vec![bf16::ZERO; m.div_ceil(TM) * TM * kp];
    for (r, row) in a.chunks_exact(k.max(1)).take(m).enumerate() {
        let block = &mut out[(r / TM) * TM * kp..];
        for (step, src) in row[..k].chunks(KB).enumerate() {
            let dst = step * TM * KB + (r % TM) * KB;
            block[dst..dst + src.len()].copy_from_slice(src);
        }
    }
    out
}

/// Output columns `[u0·NW, u1·NW)` from `a` packed by [`pack_a`] and `p.w` packed in the pair
/// layout of `gemm.rs`.
pub(crate) fn columns<T: Store>(p: &Problem<'_>, a: &[bf16], out: OutPtr<T>, u0: usize, u1: usize) {
    let kp = padded_k(p.k);
    let m_blocks = p.m.div_ceil(TM);
    let lengths_ok = a.len() == m_blocks * TM * kp && p.w.len() >= u1 * NW * kp && kp > 0;
    // Guaranteed by `gemm::check` (the only caller); the unsafe code below relies on it.
    assert!(
        available() && lengths_ok,
        "gemm kernel called with unchecked arguments"
    );
    if u0 >= u1 {
        return;
    }
    let steps = kp / KB;
    let cfg = TileConfig::all_full();
    // SAFETY: AMX is available and permitted (checked above); the config is a valid palette-1
    // description of 64 readable bytes.
    unsafe { asm!("ldtilecfg [{}]", in(reg) &raw const cfg, options(nostack, readonly)) };
    // Groups of about GROUP_BLOCKS; never a small leftover group, which would stream all of W
    // again for a few rows (272-row prefill: one group of 17 blocks, not 16 + 1).
    let groups = (m_blocks + GROUP_BLOCKS / 2) / GROUP_BLOCKS;
    let group = m_blocks.div_ceil(groups.max(1));
    let chunk = chunk_steps(group, steps);
    if group == m_blocks && chunk >= steps {
        whole_k(p, a, out, u0, u1, steps);
    } else {
        for mb0 in (0..m_blocks).step_by(group) {
            blocked_k(
                p,
                a,
                out,
                (u0, u1),
                (mb0, (mb0 + group).min(m_blocks)),
                steps,
                chunk,
            );
        }
    }
    // SAFETY: AMX is available; releasing returns the tile state to its initial value so the
    // OS need not save it on context switches.
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}

/// Bytes of packed A one `k` chunk may span: above this A no longer stays in L2 while W's
/// column blocks stream past it (SigLIP fc2: 2.2 MB; Gemma down_proj at 272 rows: 8.9 MB).
const A_CHUNK_BYTES: usize = 512 << 10;

/// Row blocks (of 16) multiplied together against each column block of W. Larger `m` (batched
/// vision: 2048 rows) runs in groups of this many, each streaming W once, so that a group's A
/// stays in L2 with `k` chunks long enough to amortise carrying partial sums.
const GROUP_BLOCKS: usize = 16;

/// `k` steps per chunk so that a chunk of packed A fits [`A_CHUNK_BYTES`].
fn chunk_steps(m_blocks: usize, steps: usize) -> usize {
    let step_bytes = m_blocks * TM * KB * std::mem::size_of::<bf16>();
    (A_CHUNK_BYTES / step_bytes.max(1)).clamp(1, steps.max(1))
}

/// Each 32×32 output block over the whole `k` in tiles, written out through a scratch block.
fn whole_k<T: Store>(
    p: &Problem<'_>,
    a: &[bf16],
    out: OutPtr<T>,
    u0: usize,
    u1: usize,
    steps: usize,
) {
    let kp = steps * KB;
    let m_blocks = p.m.div_ceil(TM);
    let mut scratch = [0f32; 2 * TM * NW];
    let stride = NW * 4;
    for u in u0..u1 {
        let b0 = p.w[u * NW * kp..].as_ptr();
        // SAFETY (for the offsets below): `p.w` holds at least u1·NW·kp elements, so both column
        // blocks of unit u (NB·kp elements each) are in bounds; `a` holds m_blocks·TM·kp.
        let b1 = unsafe { b0.add(NB * kp) };
        let mut mb = 0;
        while mb < m_blocks {
            let a0 = a[mb * TM * kp..].as_ptr();
            let two = mb + 1 < m_blocks;
            let c = scratch.as_mut_ptr();
            // SAFETY: tiles configured by the caller on this thread; every tile load reads
            // `steps` consecutive 1 KiB tiles starting at a0/a1/b0/b1, all inside `a` and `p.w`
            // as shown above; the stores write 2·TM (or TM) rows of NW f32 into `scratch`.
            unsafe {
                if two {
                    zero_2x2();
                    mul_2x2(a0, a0.add(TM * kp), b0, b1, steps);
                    store_2x2(c, stride);
                } else {
                    zero_1x2();
                    mul_1x2(a0, b0, b1, steps);
                    store_1x2(c, stride);
                }
            }
            let rows = if two { 2 * TM } else { TM };
            out.tile(&scratch[..rows * NW], NW, mb * TM, u * NW, p.bias);
            mb += if two { 2 } else { 1 };
        }
    }
}

/// As [`whole_k`] for row blocks `mb0..mb1`, in chunks of `chunk` steps (all column blocks of
/// the thread per chunk, so the chunk of A stays in L2), partial sums kept in an f32 buffer for
/// these rows and the thread's columns.
fn blocked_k<T: Store>(
    p: &Problem<'_>,
    a: &[bf16],
    out: OutPtr<T>,
    (u0, u1): (usize, usize),
    (mb0, mb1): (usize, usize),
    steps: usize,
    chunk: usize,
) {
    let kp = steps * KB;
    let ld = (u1 - u0) * NW;
    let mut acc = vec![0f32; (mb1 - mb0) * TM * ld];
    let stride = ld * 4;
    for c0 in (0..steps).step_by(chunk) {
        let n = chunk.min(steps - c0);
        for u in u0..u1 {
            // SAFETY (for the offsets below): as in `whole_k`; c0 + n <= steps, so each tile
            // run stays inside its block of A or W. `acc` has (mb1 − mb0)·TM rows of `ld` f32
            // and the unit's 32 columns start at (u − u0)·NW.
            let b0 = unsafe { p.w[u * NW * kp..].as_ptr().add(c0 * NB * KB) };
            let b1 = unsafe { b0.add(NB * kp) };
            let mut mb = mb0;
            while mb < mb1 {
                let a0 = unsafe { a[mb * TM * kp..].as_ptr().add(c0 * TM * KB) };
                let two = mb + 1 < mb1;
                let c = acc[(mb - mb0) * TM * ld + (u - u0) * NW..].as_mut_ptr();
                // SAFETY: tiles configured by the caller on this thread; loads and stores of C
                // cover 2·TM (or TM) rows × NW columns at row stride `ld` inside `acc`.
                unsafe {
                    match (two, c0 == 0) {
                        (true, true) => zero_2x2(),
                        (true, false) => load_2x2(c, stride),
                        (false, true) => zero_1x2(),
                        (false, false) => load_1x2(c, stride),
                    }
                    if two {
                        mul_2x2(a0, a0.add(TM * kp), b0, b1, n);
                        store_2x2(c, stride);
                    } else {
                        mul_1x2(a0, b0, b1, n);
                        store_1x2(c, stride);
                    }
                }
                mb += if two { 2 } else { 1 };
            }
        }
    }
    out.tile(&acc, ld, mb0 * TM, u0 * NW, p.bias);
}

// The tile routines below share one contract.
//
// # Safety
// Tiles must be configured by `TileConfig::all_full` on this thread. `mul_*`: `a0`, `a1`, `b0`,
// `b1` must each be followed by `steps ≥ 1` KiB readable. `load_*` / `store_*`: `c` must address
// 16 (1x2) or 32 (2x2) rows of 32 f32 at a row stride of `stride` bytes.

/// C tiles tmm0-3 = 0.
unsafe fn zero_2x2() {
    // SAFETY: see the contract above.
    unsafe {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem)
        )
    };
}

/// C tiles tmm0-1 = 0.
unsafe fn zero_1x2() {
    // SAFETY: see the contract above.
    unsafe { asm!("tilezero tmm0", "tilezero tmm1", options(nostack, nomem)) };
}

/// C tiles tmm0-3 from 32×32 f32 at `c`.
unsafe fn load_2x2(c: *const f32, stride: usize) {
    // SAFETY: see the contract above.
    unsafe {
        asm!(
            "tileloadd tmm0, [{c} + {cs}]",
            "tileloadd tmm1, [{c} + {cs} + 64]",
            "add {c}, {half}",
            "tileloadd tmm2, [{c} + {cs}]",
            "tileloadd tmm3, [{c} + {cs} + 64]",
            c = inout(reg) c => _,
            cs = in(reg) stride,
            half = in(reg) TM * stride,
            options(nostack, readonly),
        )
    };
}

/// C tiles tmm0-1 from 16×32 f32 at `c`.
unsafe fn load_1x2(c: *const f32, stride: usize) {
    // SAFETY: see the contract above.
    unsafe {
        asm!(
            "tileloadd tmm0, [{c} + {cs}]",
            "tileloadd tmm1, [{c} + {cs} + 64]",
            c = in(reg) c,
            cs = in(reg) stride,
            options(nostack, readonly),
        )
    };
}

/// C tiles tmm0-3 to 32×32 f32 at `c`.
unsafe fn store_2x2(c: *mut f32, stride: usize) {
    // SAFETY: see the contract above.
    unsafe {
        asm!(
            "tilestored [{c} + {cs}], tmm0",
            "tilestored [{c} + {cs} + 64], tmm1",
            "add {c}, {half}",
            "tilestored [{c} + {cs}], tmm2",
            "tilestored [{c} + {cs} + 64], tmm3",
            c = inout(reg) c => _,
            cs = in(reg) stride,
            half = in(reg) TM * stride,
            options(nostack),
        )
    };
}

/// C tiles tmm0-1 to 16×32 f32 at `c`.
unsafe fn store_1x2(c: *mut f32, stride: usize) {
    // SAFETY: see the contract above.
    unsafe {
        asm!(
            "tilestored [{c} + {cs}], tmm0",
            "tilestored [{c} + {cs} + 64], tmm1",
            c = in(reg) c,
            cs = in(reg) stride,
            options(nostack),
        )
    };
}

/// C(tmm0-3) += Σ over `steps` of A(2 tiles) · B(2 tiles).
unsafe fn mul_2x2(
    a0: *const bf16,
    a1: *const bf16,
    b0: *const bf16,
    b1: *const bf16,
    steps: usize,
) {
    // SAFETY: see the contract above.
    unsafe {
        asm!(
            "2:",
            "tileloadd tmm4, [{a0} + {s}]",
            "tileloadd tmm6, [{b0} + {s}]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b1} + {s}]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{a1} + {s}]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "add {a0}, 1024",
            "add {a1}, 1024",
            "add {b0}, 1024",
            "add {b1}, 1024",
            "dec {n}",
            "jnz 2b",
            a0 = inout(reg) a0 => _,
            a1 = inout(reg) a1 => _,
            b0 = inout(reg) b0 => _,
            b1 = inout(reg) b1 => _,
            n = inout(reg) steps => _,
            s = in(reg) 64usize,
            options(nostack, readonly),
        );
    }
}

/// C(tmm0-1) += Σ over `steps` of A(1 tile) · B(2 tiles).
unsafe fn mul_1x2(a0: *const bf16, b0: *const bf16, b1: *const bf16, steps: usize) {
    // SAFETY: see the contract above.
    unsafe {
        asm!(
            "2:",
            "tileloadd tmm4, [{a0} + {s}]",
            "tileloadd tmm6, [{b0} + {s}]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b1} + {s}]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "add {a0}, 1024",
            "add {b0}, 1024",
            "add {b1}, 1024",
            "dec {n}",
            "jnz 2b",
            a0 = inout(reg) a0 => _,
            b0 = inout(reg) b0 => _,
            b1 = inout(reg) b1 => _,
            n = inout(reg) steps => _,
            s = in(reg) 64usize,
            options(nostack, readonly),
        );
    }
}
