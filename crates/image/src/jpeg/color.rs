//! Upsampling to full resolution (libjpeg "fancy" upsampling) and colour conversion.

use super::idct::idct_block;
use super::{Component, JpegError, corrupt};

/// A component's samples at its own (downsampled) resolution, padded to whole blocks.
pub(super) struct Plane {
    data: Vec<u8>,
    stride: usize,
    /// Real samples per row / rows.
    w: usize,
    h: usize,
}

impl Plane {
    fn at(&self, x: usize, y: usize) -> i32 {
        i32::from(self.data[y * self.stride + x])
    }
}

pub(super) fn component_plane(c: &Component) -> Result<Plane, JpegError> {
    let Some(quant) = c.quant.as_ref() else {
        return corrupt("component never appeared in a scan");
    };
    let stride = c.bw * 8;
    let mut data = vec![0u8; stride * c.bh * 8];
    for by in 0..c.bh {
        for bx in 0..c.bw {
            let i = (by * c.bw + bx) * 64;
            let out = &mut data[by * 8 * stride + bx * 8..];
            idct_block(&c.coefs[i..i + 64], quant, out, stride);
        }
    }
    Ok(Plane {
        data,
        stride,
        w: c.ds_w,
        h: c.ds_h,
    })
}

/// Upsamples `p` by integer factors `(fx, fy)` into a `width` x `height` plane.
pub(super) fn upsample(p: &Plane, fx: usize, fy: usize, width: usize, height: usize) -> Vec<u8> {
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
