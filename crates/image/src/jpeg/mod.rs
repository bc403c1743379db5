//! A JPEG decoder that reproduces libjpeg-turbo's output (as used by Pillow) sample for sample.
//!
//! This module owns JPEG decoding for [`crate::decode()`]. The `image` crate's JPEG decoder
//! (zune-jpeg) uses a different inverse DCT and chroma upsampling, which moves 4:2:0 images by
//! several grey levels against Pillow; this decoder instead follows libjpeg-turbo's default
//! decompression path (the one Pillow's `Image.open(...).convert("RGB")` takes), described here
//! in our own words:
//!
//! * Huffman-coded baseline, extended-sequential and progressive JPEG, 8-bit samples, one
//!   (greyscale) or three components, restart markers.
//! * Coefficients are dequantised with the table in force when the component's first scan
//!   started, and inverse-transformed with the accurate integer DCT ("ISLOW": 13-bit constants,
//!   two fraction bits kept between the column and the row pass, results rounded, level-shifted
//!   by 128 and saturated to `0..=255`).
//! * Chroma upsampling is libjpeg's "fancy" (triangle) filter: for 2:1 horizontally, each output
//!   sample is `(3 * nearer + farther + 1 or 2) >> 2`; for 2:1 in both directions the vertical
//!   triangle is applied first (`3 * nearer row + farther row`) and then the horizontal one with
//!   a `>> 4`, rounding by 8 or 7 alternately; the first and last columns use only their own
//!   column, and the rows above the first and below the last real row repeat the edge row.
//!   Widths of two or fewer samples, and other integer ratios, replicate samples instead.
//! * YCbCr → RGB uses libjpeg's 16-bit fixed-point tables (`R = Y + round(1.402 (Cr-128))`,
//!   `G = Y + ((-0.34414 (Cb-128) - 0.71414 (Cr-128) + 1/2) >> 16)`, `B = Y + round(1.772
//!   (Cb-128))`, clamped). Three-component files are YCbCr unless an Adobe marker says
//!   `transform = 0` or, without JFIF/Adobe markers, the component ids are `'R' 'G' 'B'`.
//!
//! Anything else (arithmetic coding, 12-bit, lossless, CMYK/YCCK, non-integer sampling ratios,
//! DNL) is reported as [`JpegError::Unsupported`]; malformed data as [`JpegError::Corrupt`].
//! The caller falls back to zune-jpeg for both. No input can make this module panic: every
//! table index is checked or bounded by construction.

/// Why this decoder did not produce an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JpegError {
    /// A valid JPEG feature this decoder does not implement.
    Unsupported(String),
    /// The data is malformed or truncated.
    Corrupt(String),
    /// The frame header announces more pixels than allowed.
    TooLarge { width: u32, height: u32 },
}

/// A decoded image: `channels` is 1 (grey) or 3 (RGB), samples interleaved row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JpegImage {
    pub width: u32,
    pub height: u32,
    pub channels: usize,
    pub data: Vec<u8>,
}

fn corrupt<T>(msg: impl Into<String>) -> Result<T, JpegError> {
    Err(JpegError::Corrupt(msg.into()))
}

fn unsupported<T>(msg: impl Into<String>) -> Result<T, JpegError> {
    Err(JpegError::Unsupported(msg.into()))
}

/// Zig-zag index → natural (row-major) index, padded with 63s so that a corrupt run length that
/// overshoots lands on the last coefficient, as libjpeg does.
#[rustfmt::skip]
const NATURAL_ORDER: [usize; 80] = [
     0,  1,  8, 16,  9,  2,  3, 10, 17, 24, 32, 25, 18, 11,  4,  5,
    12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13,  6,  7, 14, 21, 28,
    35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51,
    58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
    63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63,
];

fn natural(k: usize) -> usize {
    NATURAL_ORDER.get(k).copied().unwrap_or(63)
}

mod color;
mod huffman;
mod idct;
mod scan;

use color::{component_plane, planes_to_pixels};
use huffman::Huffman;
use scan::decode_scan;

// ---------------------------------------------------------------------------------------------
// Frame and scan structures

struct Component {
    id: u8,
    h: usize,
    v: usize,
    tq: usize,
    /// Quantisation table latched at this component's first scan.
    quant: Option<[u16; 64]>,
    /// Blocks per row / column in the coefficient grid (padded to whole MCUs).
    bw: usize,
    bh: usize,
    /// Real (downsampled) sample width and height of this component.
    ds_w: usize,
    ds_h: usize,
    coefs: Vec<i16>,
    dc_pred: i32,
}

impl Component {
    fn block(&mut self, bx: usize, by: usize) -> Option<&mut [i16]> {
        let i = (by * self.bw + bx) * 64;
        self.coefs.get_mut(i..i + 64)
    }
}

struct Frame {
    width: usize,
    height: usize,
    progressive: bool,
    comps: Vec<Component>,
    hmax: usize,
    vmax: usize,
    mcux: usize,
    mcuy: usize,
}

struct Scan {
    /// Indices into `Frame::comps`, with their DC and AC table ids.
    comps: Vec<(usize, usize, usize)>,
    ss: usize,
    se: usize,
    ah: u32,
    al: u32,
}

fn be16(d: &[u8], p: usize) -> Result<usize, JpegError> {
    match (d.get(p), d.get(p + 1)) {
        (Some(&a), Some(&b)) => Ok(usize::from(a) << 8 | usize::from(b)),
        _ => corrupt("truncated marker segment"),
    }
}

/// The payload of the marker segment whose length field starts at `p`.
fn segment(d: &[u8], p: usize) -> Result<&[u8], JpegError> {
    let len = be16(d, p)?;
    if len < 2 {
        return corrupt("marker segment length below 2");
    }
    d.get(p + 2..p + len)
        .ok_or_else(|| JpegError::Corrupt("truncated marker segment".into()))
}

fn parse_sof(seg: &[u8], progressive: bool, max_pixels: u64) -> Result<Frame, JpegError> {
    if seg.len() < 6 {
        return corrupt("short SOF segment");
    }
    if seg[0] != 8 {
        return unsupported(format!("{}-bit samples", seg[0]));
    }
    let height = usize::from(seg[1]) << 8 | usize::from(seg[2]);
    let width = usize::from(seg[3]) << 8 | usize::from(seg[4]);
    let n = usize::from(seg[5]);
    if height == 0 {
        return unsupported("image height defined by a DNL marker");
    }
    if width == 0 {
        return corrupt("zero image width");
    }
    if (width as u64) * (height as u64) > max_pixels {
        return Err(JpegError::TooLarge {
            width: width as u32,
            height: height as u32,
        });
    }
    if n != 1 && n != 3 {
        return unsupported(format!("{n} colour components"));
    }
    if seg.len() < 6 + 3 * n {
        return corrupt("short SOF segment");
    }
    let mut comps = Vec::with_capacity(n);
    for c in 0..n {
        let b = &seg[6 + 3 * c..9 + 3 * c];
        let (h, v) = (usize::from(b[1] >> 4), usize::from(b[1] & 15));
        if !(1..=4).contains(&h) || !(1..=4).contains(&v) {
            return corrupt("sampling factor outside 1..=4");
        }
        if b[2] > 3 {
            return corrupt("quantisation table id above 3");
        }
        comps.push(Component {
            id: b[0],
            h,
            v,
            tq: usize::from(b[2]),
            quant: None,
            bw: 0,
            bh: 0,
            ds_w: 0,
            ds_h: 0,
            coefs: Vec::new(),
            dc_pred: 0,
        });
    }
    let hmax = comps.iter().map(|c| c.h).max().unwrap_or(1);
    let vmax = comps.iter().map(|c| c.v).max().unwrap_or(1);
    if comps.iter().any(|c| hmax % c.h != 0 || vmax % c.v != 0) {
        return unsupported("non-integer chroma sampling ratio");
    }
    let mcux = width.div_ceil(8 * hmax);
    let mcuy = height.div_ceil(8 * vmax);
    for c in &mut comps {
        c.ds_w = (width * c.h).div_ceil(hmax);
        c.ds_h = (height * c.v).div_ceil(vmax);
        c.bw = mcux * c.h;
        c.bh = mcuy * c.v;
        c.coefs = vec![0; c.bw * c.bh * 64];
    }
    Ok(Frame {
        width,
        height,
        progressive,
        comps,
        hmax,
        vmax,
        mcux,
        mcuy,
    })
}

// ---------------------------------------------------------------------------------------------
// Top level

/// Parses a DHT segment (one or more tables) into the DC/AC table slots.
fn parse_dht(
    seg: &[u8],
    dc_tables: &mut [Option<Huffman>; 4],
    ac_tables: &mut [Option<Huffman>; 4],
) -> Result<(), JpegError> {
    let mut p = 0usize;
    while p < seg.len() {
        let Some(counts) = seg.get(p + 1..p + 17) else {
            return corrupt("short DHT segment");
        };
        let mut c = [0u8; 16];
        c.copy_from_slice(counts);
        let n: usize = c.iter().map(|&x| usize::from(x)).sum();
        let Some(values) = seg.get(p + 17..p + 17 + n) else {
            return corrupt("short DHT segment");
        };
        let table = Huffman::new(&c, values.to_vec())?;
        let (class, id) = (seg[p] >> 4, usize::from(seg[p] & 15));
        match (class, id) {
            (0, 0..=3) => dc_tables[id] = Some(table),
            (1, 0..=3) => ac_tables[id] = Some(table),
            _ => return corrupt("bad Huffman table class or id"),
        }
        p += 17 + n;
    }
    Ok(())
}

/// Parses a DQT segment (one or more tables, stored in natural order).
fn parse_dqt(seg: &[u8], qtables: &mut [Option<[u16; 64]>; 4]) -> Result<(), JpegError> {
    let mut p = 0usize;
    while p < seg.len() {
        let (prec, id) = (seg[p] >> 4, usize::from(seg[p] & 15));
        if id > 3 || prec > 1 {
            return corrupt("bad quantisation table header");
        }
        let size = if prec == 0 { 64 } else { 128 };
        let Some(vals) = seg.get(p + 1..p + 1 + size) else {
            return corrupt("short DQT segment");
        };
        let mut t = [0u16; 64];
        for (k, slot) in NATURAL_ORDER.iter().take(64).enumerate() {
            t[*slot] = if prec == 0 {
                u16::from(vals[k])
            } else {
                u16::from(vals[2 * k]) << 8 | u16::from(vals[2 * k + 1])
            };
        }
        qtables[id] = Some(t);
        p += 1 + size;
    }
    Ok(())
}

/// Parses and validates an SOS header; latches the quantisation tables of its components.
fn parse_sos(
    seg: &[u8],
    frame: &mut Frame,
    qtables: &[Option<[u16; 64]>; 4],
) -> Result<Scan, JpegError> {
    let ns = usize::from(seg.first().copied().unwrap_or(0));
    if ns == 0 || ns > 4 || seg.len() < 1 + 2 * ns + 3 {
        return corrupt("bad SOS segment");
    }
    let mut comps = Vec::with_capacity(ns);
    for j in 0..ns {
        let (id, t) = (seg[1 + 2 * j], seg[2 + 2 * j]);
        let Some(ci) = frame.comps.iter().position(|c| c.id == id) else {
            return corrupt("scan names an unknown component");
        };
        comps.push((ci, usize::from(t >> 4), usize::from(t & 15)));
    }
    let tail = &seg[1 + 2 * ns..];
    let scan = Scan {
        comps,
        ss: usize::from(tail[0]),
        se: usize::from(tail[1]),
        ah: u32::from(tail[2] >> 4),
        al: u32::from(tail[2] & 15),
    };
    if frame.progressive {
        let ok = if scan.ss == 0 {
            scan.se == 0
        } else {
            scan.ss <= scan.se && scan.se <= 63 && scan.comps.len() == 1
        };
        if !ok || scan.al > 13 || scan.ah > 13 {
            return corrupt("bad progressive scan parameters");
        }
    } else if scan.ss != 0 || scan.se != 63 || scan.ah != 0 || scan.al != 0 {
        return corrupt("bad sequential scan parameters");
    }
    for &(ci, _, _) in &scan.comps {
        let c = &mut frame.comps[ci];
        if c.quant.is_none() {
            match qtables[c.tq] {
                Some(q) => c.quant = Some(q),
                None => return corrupt("component uses an undefined quantisation table"),
            }
        }
    }
    Ok(scan)
}

/// Inverse DCT, upsampling and colour conversion of a fully decoded frame.
fn finish_frame(
    frame: &Frame,
    jfif: bool,
    adobe_transform: Option<u8>,
) -> Result<JpegImage, JpegError> {
    let (w, h) = (frame.width, frame.height);
    let mut planes = Vec::with_capacity(frame.comps.len());
    let mut factors = Vec::with_capacity(frame.comps.len());
    for c in &frame.comps {
        planes.push(component_plane(c)?);
        factors.push((frame.hmax / c.h, frame.vmax / c.v));
    }
    let channels = match planes.len() {
        1 => 1,
        3 => 3,
        _ => return unsupported("component count"),
    };
    let ids: Vec<u8> = frame.comps.iter().map(|c| c.id).collect();
    // libjpeg's guess of the colour space of a three-component file.
    let rgb = match adobe_transform {
        _ if jfif => false,
        Some(t) => t == 0,
        None => ids == [b'R', b'G', b'B'],
    };
    let mut data = vec![0u8; w * h * channels];
    planes_to_pixels(&planes, &factors, w, channels == 3 && !rgb, &mut data);
    Ok(JpegImage {
        width: w as u32,
        height: h as u32,
        channels,
        data,
    })
}

/// Decodes a JPEG file the way libjpeg-turbo (through Pillow) would.
pub(crate) fn decode_jpeg(data: &[u8], max_pixels: u64) -> Result<JpegImage, JpegError> {
    if data.get(0..2) != Some(&[0xFF, 0xD8]) {
        return corrupt("missing SOI marker");
    }
    let mut pos = 2usize;
    let mut qtables: [Option<[u16; 64]>; 4] = [None; 4];
    let mut dc_tables: [Option<Huffman>; 4] = [None, None, None, None];
    let mut ac_tables: [Option<Huffman>; 4] = [None, None, None, None];
    let mut frame: Option<Frame> = None;
    let mut restart_interval = 0usize;
    let mut jfif = false;
    let mut adobe_transform: Option<u8> = None;

    loop {
        // Find the next marker, skipping fill bytes (and, leniently, stray data bytes).
        while pos < data.len() && data[pos] != 0xFF {
            pos += 1;
        }
        while data.get(pos + 1) == Some(&0xFF) {
            pos += 1;
        }
        let Some(&marker) = data.get(pos + 1) else {
            return corrupt("unexpected end of data (no EOI)");
        };
        pos += 2;
        // Markers without a length segment.
        match marker {
            0xD9 => break,
            0xD0..=0xD7 | 0x01 | 0x00 => continue,
            _ => {}
        }
        let seg = segment(data, pos)?;
        pos += 2 + seg.len();
        match marker {
            0xC0..=0xC2 => {
                if frame.is_some() {
                    return corrupt("second frame header");
                }
                frame = Some(parse_sof(seg, marker == 0xC2, max_pixels)?);
            }
            0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => {
                return unsupported(format!("JPEG process SOF{}", marker - 0xC0));
            }
            0xCC => return unsupported("arithmetic coding"),
            0xDC => return unsupported("DNL marker"),
            0xC4 => parse_dht(seg, &mut dc_tables, &mut ac_tables)?,
            0xDB => parse_dqt(seg, &mut qtables)?,
            0xDD => {
                let Some(&[hi, lo]) = seg.first_chunk::<2>() else {
                    return corrupt("short DRI segment");
                };
                restart_interval = usize::from(hi) << 8 | usize::from(lo);
            }
            0xE0 => jfif |= seg.starts_with(b"JFIF\0"),
            0xEE if seg.starts_with(b"Adobe") && seg.len() >= 12 => {
                adobe_transform = Some(seg[11]);
            }
            0xDA => {
                let Some(fr) = frame.as_mut() else {
                    return corrupt("scan before frame header");
                };
                let scan = parse_sos(seg, fr, &qtables)?;
                pos = decode_scan(
                    data,
                    pos,
                    fr,
                    &scan,
                    &dc_tables,
                    &ac_tables,
                    restart_interval,
                )?;
            }
            // APPn, COM and anything else with a length: skipped.
            _ => {}
        }
    }

    match frame {
        Some(frame) => finish_frame(&frame, jfif, adobe_transform),
        None => corrupt("no frame header"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::huffman::BitReader;
    use super::idct::idct_block;
    use super::*;

    #[test]
    fn idct_of_a_dc_only_block_is_flat_and_level_shifted() {
        let mut coefs = [0i16; 64];
        coefs[0] = 80; // DC 80 * q 2 / 8 = 20 above mid-grey
        let quant = [2u16; 64];
        let mut out = [0u8; 64];
        idct_block(&coefs, &quant, &mut out, 8);
        assert!(out.iter().all(|&v| v == 148), "{out:?}");
    }

    #[test]
    fn idct_saturates_extreme_values() {
        let mut coefs = [0i16; 64];
        coefs[0] = i16::MAX;
        let mut out = [0u8; 64];
        idct_block(&coefs, &[255u16; 64], &mut out, 8);
        assert!(out.iter().all(|&v| v == 255));
        coefs[0] = i16::MIN;
        idct_block(&coefs, &[255u16; 64], &mut out, 8);
        assert!(out.iter().all(|&v| v == 0));
    }

    #[test]
    fn ycc_conversion_matches_libjpeg_tables() {
        // Values computed with libjpeg's formulas: grey stays grey, pure chroma saturates.
        let ycc_to_rgb = |y: u8, cb: u8, cr: u8| {
            let p = |v: u8| color::Plane {
                data: vec![v; 64],
                stride: 8,
                w: 1,
                h: 1,
            };
            let mut out = vec![0u8; 3];
            planes_to_pixels(&[p(y), p(cb), p(cr)], &[(1, 1); 3], 1, true, &mut out);
            out
        };
        assert_eq!(ycc_to_rgb(128, 128, 128), vec![128, 128, 128]);
        assert_eq!(ycc_to_rgb(76, 85, 255), vec![254, 0, 0]);
        assert_eq!(ycc_to_rgb(0, 0, 0), vec![0, 135, 0]);
    }

    #[test]
    fn huffman_tables_reject_overfull_code_sets() {
        let mut counts = [0u8; 16];
        counts[0] = 3; // three 1-bit codes cannot exist
        assert!(Huffman::new(&counts, vec![1, 2, 3]).is_err());
        counts[0] = 2;
        assert!(Huffman::new(&counts, vec![1, 2]).is_ok());
        assert!(Huffman::new(&counts, vec![1]).is_err());
    }

    #[test]
    fn bit_reader_unstuffs_and_stops_at_markers() {
        let data = [0xAB, 0xFF, 0x00, 0x12, 0xFF, 0xD9];
        let mut r = BitReader::new(&data, 0);
        assert_eq!(r.bits(8), 0xAB);
        assert_eq!(r.bits(8), 0xFF);
        assert_eq!(r.bits(8), 0x12);
        assert_eq!(r.bits(16), 0);
        assert_eq!(r.end_of_segment(), 4);
    }

    /// Decodes every JPEG in a reference file with this decoder alone (no fallback) and
    /// compares with Pillow's RGB; returns the number of JPEGs checked.
    fn check_reference_jpegs(path: &str) -> usize {
        let bytes = std::fs::read(path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut n = 0;
        for name in st.names() {
            let Some(case) = name.strip_prefix("file/jpeg") else {
                continue;
            };
            let file = st.tensor(name).unwrap();
            let want = st.tensor(&format!("rgb/jpeg{case}")).unwrap();
            let img = decode_jpeg(file.data(), 1 << 30).unwrap_or_else(|e| panic!("{name}: {e:?}"));
            let rgb: Vec<u8> = if img.channels == 1 {
                img.data.iter().flat_map(|&v| [v, v, v]).collect()
            } else {
                img.data
            };
            assert_eq!(
                want.shape(),
                [img.height as usize, img.width as usize, 3],
                "{name}"
            );
            assert!(rgb == want.data(), "{name} differs from Pillow");
            n += 1;
        }
        n
    }

    #[test]
    fn reference_jpegs_decode_exactly_like_pillow_without_fallback() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/decode_refs.safetensors"
        );
        assert!(check_reference_jpegs(path) >= 10);
        if let Ok(extra) = std::env::var("PALIGEMMA_DECODE_REFS") {
            eprintln!("{extra}: {} JPEGs exact", check_reference_jpegs(&extra));
        }
    }

    #[test]
    fn fixture_photo_decodes_without_fallback() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/images/photo.jpg"
        );
        let img = decode_jpeg(&std::fs::read(path).unwrap(), 1 << 30).unwrap();
        assert_eq!((img.width, img.height, img.channels), (320, 240, 3));
    }

    #[test]
    fn corrupted_jpegs_never_panic() {
        // Every truncation and many single-byte corruptions of a real progressive 4:2:0 file.
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/decode_refs.safetensors"
        );
        let bytes = std::fs::read(path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for case in [
            "jpeg_420_progressive",
            "jpeg_420_optimized_restart",
            "jpeg_grey",
        ] {
            let good = st.tensor(&format!("file/{case}")).unwrap().data().to_vec();
            for cut in 0..good.len() {
                let _ = decode_jpeg(&good[..cut], 1 << 20);
            }
            let mut seed = 0x2545_F491_4F6C_DD1Du64;
            for _ in 0..3000 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let mut bad = good.clone();
                let i = (seed as usize) % bad.len();
                bad[i] = (seed >> 32) as u8;
                let _ = decode_jpeg(&bad, 1 << 20);
            }
        }
    }

    #[test]
    fn non_jpeg_and_truncated_input_are_errors() {
        assert!(decode_jpeg(&[], 1 << 20).is_err());
        assert!(decode_jpeg(&[0xFF, 0xD8], 1 << 20).is_err());
        assert!(decode_jpeg(&[0xFF, 0xD8, 0xFF, 0xC0, 0x00], 1 << 20).is_err());
    }
}
