//! AMX-BF16 GEMM kernel (Sapphire Rapids and later), written with inline `asm!` because the AMX
//! intrinsics and `is_x86_feature_detected!("amx-*")` are unstable in Rust 1.95.
//!
//! Each step multiplies a 32×32-bf16 block of A by a 32×32 block of W (as two 16-column VNNI
//! tiles) into four 16×16 f32 accumulator tiles: tmm0-3 hold C, tmm4-5 the two A tiles, tmm6-7
//! the two W tiles. The accumulators stay in tiles for the whole `k` loop and are written out
//! once through a small scratch buffer, where the epilogue adds the bias and rounds.
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
    let steps = kp / KB;
    let cfg = TileConfig::all_full();
    let mut scratch = [0f32; 2 * TM * NW];
    // SAFETY: AMX is available and permitted (checked above); the config is a valid palette-1
    // description of 64 readable bytes.
    unsafe { asm!("ldtilecfg [{}]", in(reg) &raw const cfg, options(nostack, readonly)) };
    for u in u0..u1 {
        let b0 = p.w[u * NW * kp..].as_ptr();
        // SAFETY (for the offsets below): `p.w` holds at least u1·NW·kp elements, so both column
        // blocks of unit u (NB·kp elements each) are in bounds; `a` holds m_blocks·TM·kp.
        let b1 = unsafe { b0.add(NB * kp) };
        let mut mb = 0;
        while mb < m_blocks {
            let a0 = a[mb * TM * kp..].as_ptr();
            let two = mb + 1 < m_blocks;
            // SAFETY: tiles configured above on this thread; every tile load reads `steps`
            // consecutive 1 KiB tiles starting at a0/a1/b0/b1, all inside `a` and `p.w` as
            // shown above; the stores write 2·TM (or TM) rows of NW f32 into `scratch`.
            unsafe {
                if two {
                    tiles_2x2(a0, a0.add(TM * kp), b0, b1, steps, scratch.as_mut_ptr());
                } else {
                    tiles_1x2(a0, b0, b1, steps, scratch.as_mut_ptr());
                }
            }
            let rows = if two { 2 * TM } else { TM };
            out.tile(&scratch[..rows * NW], NW, mb * TM, u * NW, p.bias);
            mb += if two { 2 } else { 1 };
        }
    }
    // SAFETY: AMX is available; releasing returns the tile state to its initial value so the
    // OS need not save it on context switches.
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}

/// C[32×32] = Σ over `steps` of A(2 tiles) · B(2 tiles), stored row-major (stride NW f32).
///
/// # Safety
/// Tiles must be configured by `TileConfig::all_full` on this thread; `a0`, `a1`, `b0`, `b1`
/// must each be followed by `steps` KiB readable; `c` must have room for 32×32 f32.
unsafe fn tiles_2x2(
    a0: *const bf16,
    a1: *const bf16,
    b0: *const bf16,
    b1: *const bf16,
    steps: usize,
    c: *mut f32,
) {
    // SAFETY: guaranteed by the caller, see above.
    unsafe {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
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
            "tilestored [{c} + {cs}], tmm0",
            "tilestored [{c} + {cs} + 64], tmm1",
            "add {c}, 2048",
            "tilestored [{c} + {cs}], tmm2",
            "tilestored [{c} + {cs} + 64], tmm3",
            a0 = inout(reg) a0 => _,
            a1 = inout(reg) a1 => _,
            b0 = inout(reg) b0 => _,
            b1 = inout(reg) b1 => _,
            n = inout(reg) steps => _,
            c = inout(reg) c => _,
            s = in(reg) 64usize,
            cs = in(reg) NW * 4,
            options(nostack),
        );
    }
}

/// As [`tiles_2x2`] for a last block of 16 rows of A.
///
/// # Safety
/// As [`tiles_2x2`], with room for 16×32 f32 at `c`.
unsafe fn tiles_1x2(a0: *const bf16, b0: *const bf16, b1: *const bf16, steps: usize, c: *mut f32) {
    // SAFETY: guaranteed by the caller, see above.
    unsafe {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
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
            "tilestored [{c} + {cs}], tmm0",
            "tilestored [{c} + {cs} + 64], tmm1",
            a0 = inout(reg) a0 => _,
            b0 = inout(reg) b0 => _,
            b1 = inout(reg) b1 => _,
            n = inout(reg) steps => _,
            c = inout(reg) c => _,
            s = in(reg) 64usize,
            cs = in(reg) NW * 4,
            options(nostack),
        );
    }
}
