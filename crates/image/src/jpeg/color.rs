//! Upsampling to full resolution (libjpeg "fancy" upsampling) and colour conversion.

use super::idct::idct_plane;
use super::{Component, JpegError, corrupt};

/// A component's samples at its own (downsampled) resolution, padded to whole blocks.
#[derive(Clone)]
pub(super) struct Plane {
    pub(super) data: Vec<u8>,
    pub(super) stride: usize,
    /// Real samples per row / rows.
    pub(super) w: usize,
    pub(super) h: usize,
}

pub(super) fn component_plane(c: &Component) -> Result<Plane, JpegError> {
    let Some(quant) = c.quant.as_ref() else {
        return corrupt("component never appeared in a scan");
    };
    let stride = c.bw * 8;
    let mut data = vec![0u8; stride * c.bh * 8];
    crate::simd::split_in_two(&mut data, 8 * stride, |by, rows| {
        let coefs = c.coefs.get(by * c.bw * 64..).unwrap_or_default();
        idct_plane(coefs, c.bw, quant, rows);
    });
    Ok(Plane {
        data,
        stride,
        w: c.ds_w,
        h: c.ds_h,
    })
}

crate::simd::avx2_dispatch! {
    fn rows_to_pixels(
        planes: &[Plane],
        factors: &[(usize, usize)],
        width: usize,
        ycc: bool,
        y0: usize,
        out: &mut [u8],
    ) = planes_to_pixels_body;
}

/// Upsamples and converts all rows into `out` (see [`planes_to_pixels_body`]), on two threads
/// for large images.
pub(super) fn planes_to_pixels(
    planes: &[Plane],
    factors: &[(usize, usize)],
    width: usize,
    ycc: bool,
    out: &mut [u8],
) {
    crate::simd::split_in_two(out, width * planes.len(), |y0, rows| {
        rows_to_pixels(planes, factors, width, ycc, y0, rows);
    });
}

/// Upsamples every component plane to `width` samples per row (plane `c` by the integer
/// factors `factors[c]`) and interleaves rows `y0..` into `out`: grey as is, three
/// components through YCbCr -> RGB when `ycc`, else as stored. Works a row at a time, so no
/// full-size intermediate planes exist.
#[inline(always)]
fn planes_to_pixels_body(
    planes: &[Plane],
    factors: &[(usize, usize)],
    width: usize,
    ycc: bool,
    y0: usize,
    out: &mut [u8],
) {
    let n = planes.len();
    if width == 0 || !(n == 1 || n == 3) || factors.len() != n {
        return;
    }
    let widest = planes.iter().map(|p| p.w).max().unwrap_or(0);
    let mut cs = vec![0i32; widest + 2];
    let mut rows = vec![0u8; 3 * width];
    for (y, dst) in (y0..).zip(out.chunks_exact_mut(width * n)) {
        if let [p] = planes {
            upsample_row(p, factors[0], y, dst, &mut cs);
            continue;
        }
        let (r0, rest) = rows.split_at_mut(width);
        let (r1, r2) = rest.split_at_mut(width);
        for ((p, &f), row) in planes
            .iter()
            .zip(factors)
            .zip([&mut *r0, &mut *r1, &mut *r2])
        {
            upsample_row(p, f, y, row, &mut cs);
        }
        if ycc {
            ycc_row(r0, r1, r2, dst);
        } else {
            for (((o, &a), &b), &c) in dst.chunks_exact_mut(3).zip(&*r0).zip(&*r1).zip(&*r2) {
                o.copy_from_slice(&[a, b, c]);
            }
        }
    }
}

/// Row `y` of plane `p` upsampled by `(fx, fy)` into `out` (the full image width). `cs` is
/// scratch of at least `p.w + 2` values.
#[inline(always)]
fn upsample_row(p: &Plane, (fx, fy): (usize, usize), y: usize, out: &mut [u8], cs: &mut [i32]) {
    let last_row = p.h.saturating_sub(1);
    let row = |i: usize| &p.data[i * p.stride..i * p.stride + p.w];
    match (fx, fy) {
        (1, 1) => {
            let src = row(y.min(last_row));
            for (o, &s) in out.iter_mut().zip(src) {
                *o = s;
            }
        }
        (2, 1) if p.w > 2 => {
            for (c, &s) in cs[1..=p.w].iter_mut().zip(row(y.min(last_row))) {
                *c = i32::from(s);
            }
            fancy_h(&mut cs[..p.w + 2], out, 1, 2, 2);
        }
        (1, 2) => {
            let (near, far, bias) = vertical_neighbours(y, last_row);
            for ((o, &a), &b) in out.iter_mut().zip(row(near)).zip(row(far)) {
                *o = ((3 * i32::from(a) + i32::from(b) + bias) >> 2) as u8;
            }
        }
        (2, 2) if p.w > 2 => {
            let (near, far, _) = vertical_neighbours(y, last_row);
            for ((c, &a), &b) in cs[1..=p.w].iter_mut().zip(row(near)).zip(row(far)) {
                *c = 3 * i32::from(a) + i32::from(b);
            }
            fancy_h(&mut cs[..p.w + 2], out, 8, 7, 4);
        }
        _ => {
            // Plain replication (libjpeg's h2v1/h2v2 "box" and generic integer upsamplers).
            let sy = (y / fy).min(last_row);
            let src = &p.data[sy * p.stride..(sy + 1) * p.stride];
            for (x, o) in out.iter_mut().enumerate() {
                *o = src[(x / fx).min(p.stride - 1)];
            }
        }
    }
}

/// For output row `y` of a 2:1 vertical upsampling: the nearer and the farther input row and
/// the rounding bias (libjpeg alternates 1 and 2); edge rows repeat.
#[inline(always)]
fn vertical_neighbours(y: usize, last_row: usize) -> (usize, usize, i32) {
    let i = (y / 2).min(last_row);
    if y.is_multiple_of(2) {
        (i, i.saturating_sub(1), 1)
    } else {
        (i, (i + 1).min(last_row), 2)
    }
}

/// libjpeg's horizontal triangle filter: `cs[1..=w]` holds the (possibly vertically filtered)
/// input samples; output `2j` is `(3 cs[j] + cs[j-1] + even) >> shift` and `2j + 1` is
/// `(3 cs[j] + cs[j+1] + odd) >> shift`, the first and last input repeating at the edges.
#[inline(always)]
fn fancy_h(cs: &mut [i32], out: &mut [u8], even: i32, odd: i32, shift: u32) {
    let w = cs.len() - 2;
    cs[0] = cs[1];
    cs[w + 1] = cs[w];
    let (prev, cur, next) = (&cs[..w], &cs[1..=w], &cs[2..]);
    let pairs = out.len() / 2;
    let (head, tail) = out.split_at_mut(2 * pairs);
    for (((o, &a), &c), &b) in head.chunks_exact_mut(2).zip(prev).zip(cur).zip(next) {
        o[0] = ((3 * c + a + even) >> shift) as u8;
        o[1] = ((3 * c + b + odd) >> shift) as u8;
    }
    if let ([o], Some(&a), Some(&c)) = (tail, prev.get(pairs), cur.get(pairs)) {
        *o = ((3 * c + a + even) >> shift) as u8;
    }
}

/// libjpeg's YCbCr -> RGB: its 16-bit fixed-point tables, evaluated directly (each table entry
/// is `round(k * (v - 128))` or a sum scaled by 2^16, exactly what is computed here).
#[inline(always)]
fn ycc_row(y: &[u8], cb: &[u8], cr: &[u8], out: &mut [u8]) {
    const HALF: i32 = 1 << 15;
    for (((o, &y), &cb), &cr) in out.chunks_exact_mut(3).zip(y).zip(cb).zip(cr) {
        let (y, cb, cr) = (i32::from(y), i32::from(cb) - 128, i32::from(cr) - 128);
        let r = y + ((91881 * cr + HALF) >> 16);
        let g = y + ((-22554 * cb - 46802 * cr + HALF) >> 16);
        let b = y + ((116130 * cb + HALF) >> 16);
        o.copy_from_slice(&[
            r.clamp(0, 255) as u8,
            g.clamp(0, 255) as u8,
            b.clamp(0, 255) as u8,
        ]);
    }
}

#[cfg(test)]
mod reference {
    //! The whole-plane upsampler and table-driven colour conversion this module replaced,
    //! kept to check the row-wise versions against.
    use super::Plane;

    impl Plane {
        fn at(&self, x: usize, y: usize) -> i32 {
            i32::from(self.data[y * self.stride + x])
        }
    }

    /// Upsamples `p` by integer factors `(fx, fy)` into a `width` x `height` plane.
    pub(super) fn upsample(
        p: &Plane,
        fx: usize,
        fy: usize,
        width: usize,
        height: usize,
    ) -> Vec<u8> {
        let mut out = vec![0u8; width * height];
        let last_row = p.h.saturating_sub(1);
        let last_col = p.w.saturating_sub(1);
        match (fx, fy) {
            (1, 1) => {
                for y in 0..height {
                    out[y * width..(y + 1) * width]
                        .copy_from_slice(&p.data[y * p.stride..y * p.stride + width]);
                }
            }
            (2, 1) if p.w > 2 => {
                for y in 0..height {
                    let row = &mut out[y * width..(y + 1) * width];
                    for (x, dst) in row.iter_mut().enumerate() {
                        let i = x / 2;
                        let v = p.at(i, y) * 3;
                        let s = if x % 2 == 0 {
                            if i == 0 {
                                v + p.at(0, y) + 1
                            } else {
                                v + p.at(i - 1, y) + 1
                            }
                        } else if i == last_col {
                            v + p.at(i, y) + 2
                        } else {
                            v + p.at(i + 1, y) + 2
                        };
                        *dst = (s >> 2) as u8;
                    }
                }
            }
            (1, 2) => {
                for y in 0..height {
                    let i = y / 2;
                    let (other, bias) = if y % 2 == 0 {
                        (i.saturating_sub(1), 1)
                    } else {
                        ((i + 1).min(last_row), 2)
                    };
                    for x in 0..width {
                        let s = p.at(x, i) * 3 + p.at(x, other) + bias;
                        out[y * width + x] = (s >> 2) as u8;
                    }
                }
            }
            (2, 2) if p.w > 2 => {
                let mut colsum = vec![0i32; p.w];
                for y in 0..height {
                    let i = y / 2;
                    let other = if y % 2 == 0 {
                        i.saturating_sub(1)
                    } else {
                        (i + 1).min(last_row)
                    };
                    for (x, s) in colsum.iter_mut().enumerate() {
                        *s = p.at(x, i) * 3 + p.at(x, other);
                    }
                    let row = &mut out[y * width..(y + 1) * width];
                    for (x, dst) in row.iter_mut().enumerate() {
                        let i = x / 2;
                        let this = colsum[i] * 3;
                        let s = if x % 2 == 0 {
                            let last = if i == 0 { colsum[0] } else { colsum[i - 1] };
                            this + last + 8
                        } else {
                            let next = if i == last_col {
                                colsum[i]
                            } else {
                                colsum[i + 1]
                            };
                            this + next + 7
                        };
                        *dst = (s >> 4) as u8;
                    }
                }
            }
            _ => {
                // Plain replication (libjpeg's h2v1/h2v2 "box" and generic integer upsamplers).
                for y in 0..height {
                    let sy = (y / fy).min(last_row);
                    for x in 0..width {
                        out[y * width + x] = p.data[sy * p.stride + (x / fx).min(p.stride - 1)];
                    }
                }
            }
        }
        out
    }

    const SCALEBITS: u32 = 16;
    const ONE_HALF: i64 = 1 << (SCALEBITS - 1);

    fn fix(x: f64) -> i64 {
        (x * f64::from(1u32 << SCALEBITS) + 0.5) as i64
    }

    pub(super) fn ycc_to_rgb(y: &[u8], cb: &[u8], cr: &[u8]) -> Vec<u8> {
        let (mut cr_r, mut cb_b, mut cr_g, mut cb_g) =
            ([0i32; 256], [0i32; 256], [0i64; 256], [0i64; 256]);
        for i in 0..256usize {
            let x = i as i64 - 128;
            cr_r[i] = ((fix(1.40200) * x + ONE_HALF) >> SCALEBITS) as i32;
            cb_b[i] = ((fix(1.77200) * x + ONE_HALF) >> SCALEBITS) as i32;
            cr_g[i] = -fix(0.71414) * x;
            cb_g[i] = -fix(0.34414) * x + ONE_HALF;
        }
        let clamp = |v: i32| v.clamp(0, 255) as u8;
        let mut out = Vec::with_capacity(y.len() * 3);
        for ((&y, &cb), &cr) in y.iter().zip(cb).zip(cr) {
            let (y, cb, cr) = (i32::from(y), usize::from(cb), usize::from(cr));
            let g = ((cb_g[cb] + cr_g[cr]) >> SCALEBITS) as i32;
            out.extend_from_slice(&[clamp(y + cr_r[cr]), clamp(y + g), clamp(y + cb_b[cb])]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plane(seed: &mut u64, w: usize, h: usize) -> Plane {
        let stride = w.div_ceil(8) * 8;
        let rows = h.div_ceil(8) * 8;
        let data = (0..stride * rows)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                (*seed >> 24) as u8
            })
            .collect();
        Plane { data, stride, w, h }
    }

    #[test]
    fn row_wise_upsampling_and_colour_equal_the_reference() {
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        for width in [1usize, 2, 3, 4, 5, 7, 8, 9, 16, 17, 31, 64, 101] {
            for height in [1usize, 2, 3, 5, 8, 13] {
                for (fx, fy) in [
                    (1, 1),
                    (2, 1),
                    (1, 2),
                    (2, 2),
                    (4, 1),
                    (3, 2),
                    (1, 4),
                    (4, 4),
                ] {
                    let luma = plane(&mut seed, width, height);
                    let chroma: Vec<Plane> = (0..2)
                        .map(|_| plane(&mut seed, width.div_ceil(fx), height.div_ceil(fy)))
                        .collect();
                    let full: Vec<Vec<u8>> = std::iter::once(&luma)
                        .chain(&chroma)
                        .zip([(1, 1), (fx, fy), (fx, fy)])
                        .map(|(p, (a, b))| reference::upsample(p, a, b, width, height))
                        .collect();
                    let want = reference::ycc_to_rgb(&full[0], &full[1], &full[2]);
                    let planes = [luma, chroma[0].clone(), chroma[1].clone()];
                    let factors = [(1, 1), (fx, fy), (fx, fy)];
                    let mut got = vec![0u8; width * height * 3];
                    planes_to_pixels(&planes, &factors, width, true, &mut got);
                    assert_eq!(got, want, "{width}x{height} {fx}x{fy}");
                }
            }
        }
    }

    #[test]
    fn colour_arithmetic_equals_the_tables_for_every_chroma_pair() {
        let (cb, cr): (Vec<u8>, Vec<u8>) = (0..=255u8)
            .flat_map(|a| (0..=255u8).map(move |b| (a, b)))
            .unzip();
        for y in [0u8, 1, 77, 128, 200, 254, 255] {
            let ys = vec![y; cb.len()];
            let mut got = vec![0u8; 3 * cb.len()];
            ycc_row(&ys, &cb, &cr, &mut got);
            assert_eq!(got, reference::ycc_to_rgb(&ys, &cb, &cr), "y = {y}");
        }
    }
}
