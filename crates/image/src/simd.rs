//! Compiling hot loops twice: for the baseline target and for AVX2.
//!
//! The default x86-64 target only guarantees SSE2, which has no 32-bit lane multiply, so the
//! `i32` arithmetic of the IDCT, colour conversion and resampling vectorises poorly there.
//! [`avx2_dispatch!`] defines a function that runs an `#[inline(always)]` body compiled with
//! AVX2 enabled when the CPU has it (checked at run time, cached by the standard library), and
//! the baseline build of the same body otherwise. Both builds are the same safe Rust, so they
//! compute identical results; only instruction selection differs.
//!
//! This is the crate's only `unsafe`: calling a `#[target_feature]` function is unsafe
//! because executing AVX2 instructions on a CPU without them is undefined behaviour, and the
//! call is guarded by `is_x86_feature_detected!("avx2")` on the line before it.

/// `avx2_dispatch!(pub(crate) fn name(a: A, b: B) -> R = body_fn);` defines `name`, which
/// calls `body_fn(a, b)` (an `#[inline(always)]` function) in an AVX2 build when available.
macro_rules! avx2_dispatch {
    ($vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? = $body:path;) => {
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU supports AVX2 (checked just above), the only requirement
                    // for calling a function compiled with `target_feature(enable = "avx2")`.
                    #[allow(unsafe_code)]
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}

pub(crate) use avx2_dispatch;

/// Work below this many output bytes is not worth a second thread.
const PARALLEL_MIN_BYTES: usize = 1 << 17;

/// Calls `f(first_unit, chunk)` on `data` split in two at a multiple of `unit` elements (the
/// second half on a scoped helper thread) when `data` is big enough, else once on all of it.
/// The stages using it compute each output row independently, so the split cannot change
/// results.
pub(crate) fn split_in_two<T: Send>(
    data: &mut [T],
    unit: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    let units = data.len().checked_div(unit).unwrap_or(0);
    if units < 2 || std::mem::size_of_val(data) < PARALLEL_MIN_BYTES {
        f(0, data);
        return;
    }
    let mid = units / 2;
    let (a, b) = data.split_at_mut(mid * unit);
    std::thread::scope(|s| {
        s.spawn(|| f(mid, b));
        f(0, a);
    });
}
