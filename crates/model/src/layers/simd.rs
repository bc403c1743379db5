//! Compiling the element-wise loops (casts, GELU, norms, softmax, residual adds) for the vector
//! width the CPU has.
//!
//! The default x86-64 target only guarantees SSE2, so these loops vectorised four lanes wide;
//! [`simd_dispatch!`] defines a function that runs an `#[inline(always)]` body compiled with
//! AVX-512F (16 lanes) or AVX2 + FMA (8 lanes) when the CPU has them (checked at run time, cached
//! by the standard library) and the baseline build otherwise. All builds are the same safe Rust;
//! Rust never contracts `a * b + c` into an FMA by itself, so every build computes bit-identical
//! results and only instruction selection differs.
//!
//! This is the crate's only `unsafe`: calling a `#[target_feature]` function is unsafe because
//! executing those instructions on a CPU without them is undefined behaviour, and each call is
//! guarded by `is_x86_feature_detected!` on the line before it.

/// `simd_dispatch!(pub(crate) fn name(a: A, b: B) -> R = body_fn);` defines `name`, which calls
/// `body_fn(a, b)` (an `#[inline(always)]` function) in the widest build the CPU runs.
macro_rules! simd_dispatch {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? = $body:path;) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                fn avx512($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU supports AVX-512F (checked just above; it implies AVX2
                    // and FMA), the only requirement for calling this `target_feature` build.
                    #[allow(unsafe_code)]
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU supports AVX2 and FMA (checked just above).
                    #[allow(unsafe_code)]
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}

pub(crate) use simd_dispatch;
