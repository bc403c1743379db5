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

// ---------------------------------------------------------------------------------------------
// Huffman tables and the entropy-coded bit reader

const LOOKAHEAD: u32 = 9;

#[derive(Clone)]
struct Huffman {
    /// For every 9-bit prefix: `(code length << 8) | symbol`, or 0 when the code is longer.
    lookup: Vec<u16>,
    /// Largest code of each length (index 1..=16), -1 when none.
    maxcode: [i32; 17],
    /// `values` index of the first code of each length, minus that code.
    valoffset: [i32; 17],
    values: Vec<u8>,
}

impl Huffman {
    fn new(counts: &[u8; 16], values: Vec<u8>) -> Result<Self, JpegError> {
        let total: usize = counts.iter().map(|&c| usize::from(c)).sum();
        if total != values.len() || total > 256 {
            return corrupt("Huffman table symbol count mismatch");
        }
        let mut maxcode = [-1i32; 17];
        let mut valoffset = [0i32; 17];
        let mut lookup = vec![0u16; 1 << LOOKAHEAD];
        let mut code: i32 = 0;
        let mut k: usize = 0;
        for len in 1..=16usize {
            let n = usize::from(counts[len - 1]);
            if n > 0 {
                valoffset[len] = k as i32 - code;
                for _ in 0..n {
                    if len as u32 <= LOOKAHEAD {
                        let shift = LOOKAHEAD - len as u32;
                        let first = (code as usize) << shift;
                        for slot in lookup.iter_mut().skip(first).take(1 << shift) {
                            *slot = ((len as u16) << 8) | u16::from(values[k]);
                        }
                    }
                    code += 1;
                    k += 1;
                }
                maxcode[len] = code - 1;
            }
            if code > (1 << len) {
                return corrupt("Huffman table has too many codes");
            }
            code <<= 1;
        }
        Ok(Self {
            lookup,
            maxcode,
            valoffset,
            values,
        })
    }
}

/// Reads entropy-coded bits, removing byte stuffing and stopping (feeding zeros) at a marker.
struct BitReader<'a> {
    data: &'a [u8],
    /// Next byte to load.
    pos: usize,
    acc: u64,
    nbits: u32,
    /// A marker (or the end of the data) was reached; `pos` is at its first 0xFF.
    at_marker: bool,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8], pos: usize) -> Self {
        Self {
            data,
            pos,
            acc: 0,
            nbits: 0,
            at_marker: false,
        }
    }

    fn fill(&mut self) {
        while self.nbits <= 56 {
            let mut byte = 0u8;
            if !self.at_marker {
                match self.data.get(self.pos) {
                    None => self.at_marker = true,
                    Some(&0xFF) => {
                        // Skip fill bytes; FF 00 is a literal FF, FF xx a marker.
                        let mut q = self.pos + 1;
                        while self.data.get(q) == Some(&0xFF) {
                            q += 1;
                        }
                        match self.data.get(q) {
                            Some(&0x00) => {
                                byte = 0xFF;
                                self.pos = q + 1;
                            }
                            _ => self.at_marker = true,
                        }
                    }
                    Some(&b) => {
                        byte = b;
                        self.pos += 1;
                    }
                }
            }
            self.acc |= u64::from(byte) << (56 - self.nbits);
            self.nbits += 8;
        }
    }

    fn bits(&mut self, n: u32) -> u32 {
        if n == 0 {
            return 0;
        }
        if self.nbits < n {
            self.fill();
        }
        let v = (self.acc >> (64 - n)) as u32;
        self.acc <<= n;
        self.nbits -= n;
        v
    }

    fn bit(&mut self) -> bool {
        self.bits(1) != 0
    }

    /// `n` bits as a signed JPEG magnitude (the "EXTEND" of the standard).
    fn receive_extend(&mut self, n: u32) -> Result<i32, JpegError> {
        if n == 0 {
            return Ok(0);
        }
        if n > 16 {
            return corrupt("coefficient magnitude category above 16");
        }
        let v = self.bits(n) as i32;
        Ok(if v < (1 << (n - 1)) {
            v - (1 << n) + 1
        } else {
            v
        })
    }

    fn decode(&mut self, table: &Huffman) -> Result<u8, JpegError> {
        if self.nbits < 16 {
            self.fill();
        }
        let peek = (self.acc >> (64 - LOOKAHEAD)) as usize;
        let hit = table.lookup.get(peek).copied().unwrap_or(0);
        if hit != 0 {
            let len = u32::from(hit >> 8);
            self.acc <<= len;
            self.nbits -= len;
            return Ok((hit & 0xFF) as u8);
        }
        let bits16 = (self.acc >> 48) as i32;
        for len in (LOOKAHEAD as usize + 1)..=16 {
            let code = bits16 >> (16 - len);
            if code <= table.maxcode[len] {
                self.acc <<= len;
                self.nbits -= len as u32;
                let idx = code + table.valoffset[len];
                return usize::try_from(idx)
                    .ok()
                    .and_then(|i| table.values.get(i).copied())
                    .ok_or_else(|| JpegError::Corrupt("bad Huffman code".into()));
            }
        }
        corrupt("bad Huffman code")
    }

    /// Drops buffered bits and consumes the expected restart marker.
    fn restart(&mut self) -> Result<(), JpegError> {
        self.acc = 0;
        self.nbits = 0;
        self.at_marker = false;
        let d = self.data;
        let mut q = self.pos;
        // Only fill bytes may precede the marker.
        while d.get(q) == Some(&0xFF) && d.get(q + 1) == Some(&0xFF) {
            q += 1;
        }
        match (d.get(q), d.get(q + 1)) {
            (Some(&0xFF), Some(&m)) if (0xD0..=0xD7).contains(&m) => {
                self.pos = q + 2;
                Ok(())
            }
            _ => corrupt("missing restart marker"),
        }
    }

    /// Position of the marker that ends this entropy-coded segment.
    fn end_of_segment(&self) -> usize {
        let d = self.data;
        let mut q = self.pos;
        while q < d.len() {
            if d[q] == 0xFF {
                let mut r = q + 1;
                while d.get(r) == Some(&0xFF) {
                    r += 1;
                }
                match d.get(r) {
                    Some(&0x00) => q = r + 1,
                    Some(m) if (0xD0..=0xD7).contains(m) => q = r + 1,
                    _ => return r.saturating_sub(1),
                }
            } else {
                q += 1;
            }
        }
        d.len()
    }
}

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
// Block decoding (sequential and the four progressive scan kinds)

fn decode_block_sequential(
    r: &mut BitReader<'_>,
    dc: &Huffman,
    ac: &Huffman,
    pred: &mut i32,
    block: &mut [i16],
) -> Result<(), JpegError> {
    let s = u32::from(r.decode(dc)?);
    *pred = pred.wrapping_add(r.receive_extend(s)?);
    block[0] = *pred as i16;
    let mut k = 1usize;
    while k < 64 {
        let rs = r.decode(ac)?;
        let (run, size) = (usize::from(rs >> 4), u32::from(rs & 15));
        if size != 0 {
            k += run;
            block[natural(k)] = r.receive_extend(size)? as i16;
            k += 1;
        } else if run == 15 {
            k += 16;
        } else {
            break;
        }
    }
    Ok(())
}

fn decode_dc_first(
    r: &mut BitReader<'_>,
    dc: &Huffman,
    pred: &mut i32,
    al: u32,
    block: &mut [i16],
) -> Result<(), JpegError> {
    let s = u32::from(r.decode(dc)?);
    *pred = pred.wrapping_add(r.receive_extend(s)?);
    block[0] = ((*pred as u32) << al) as i32 as i16;
    Ok(())
}

fn decode_ac_first(
    r: &mut BitReader<'_>,
    ac: &Huffman,
    scan: &Scan,
    eobrun: &mut u32,
    block: &mut [i16],
) -> Result<(), JpegError> {
    if *eobrun > 0 {
        *eobrun -= 1;
        return Ok(());
    }
    let mut k = scan.ss;
    while k <= scan.se {
        let rs = r.decode(ac)?;
        let (run, size) = (u32::from(rs >> 4), u32::from(rs & 15));
        if size != 0 {
            k += run as usize;
            let v = r.receive_extend(size)?;
            block[natural(k)] = ((v as u32) << scan.al) as i32 as i16;
            k += 1;
        } else if run == 15 {
            k += 16;
        } else {
            *eobrun = (1u32 << run) - 1;
            if run > 0 {
                *eobrun += r.bits(run);
            }
            break;
        }
    }
    Ok(())
}

/// Applies one correction bit to an already non-zero coefficient.
fn refine(r: &mut BitReader<'_>, coef: &mut i16, p1: i32, m1: i32) {
    if r.bit() {
        let c = i32::from(*coef);
        if c & p1 == 0 {
            *coef = if c >= 0 { c + p1 } else { c + m1 } as i16;
        }
    }
}

fn decode_ac_refine(
    r: &mut BitReader<'_>,
    ac: &Huffman,
    scan: &Scan,
    eobrun: &mut u32,
    block: &mut [i16],
) -> Result<(), JpegError> {
    let p1: i32 = 1 << scan.al;
    let m1: i32 = -1 << scan.al;
    let mut k = scan.ss;
    if *eobrun == 0 {
        while k <= scan.se {
            let rs = r.decode(ac)?;
            let mut run = i32::from(rs >> 4);
            let size = rs & 15;
            let mut value = 0i32;
            if size != 0 {
                if size != 1 {
                    return corrupt("refinement coefficient size is not 1");
                }
                value = if r.bit() { p1 } else { m1 };
            } else if run != 15 {
                *eobrun = 1u32 << run;
                if run > 0 {
                    *eobrun += r.bits(run as u32);
                }
                break;
            }
            // Skip `run` zero coefficients, refining the non-zero ones passed on the way.
            while k <= scan.se {
                let pos = natural(k);
                if block[pos] != 0 {
                    refine(r, &mut block[pos], p1, m1);
                } else {
                    if run == 0 {
                        break;
                    }
                    run -= 1;
                }
                k += 1;
            }
            if value != 0 && k <= 63 {
                block[natural(k)] = value as i16;
            }
            k += 1;
        }
    }
    if *eobrun > 0 {
        while k <= scan.se {
            let pos = natural(k);
            if block[pos] != 0 {
                refine(r, &mut block[pos], p1, m1);
            }
            k += 1;
        }
        *eobrun -= 1;
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ScanKind {
    Sequential,
    DcFirst,
    DcRefine,
    AcFirst,
    AcRefine,
}

/// Decodes one scan starting at `pos`; returns the position of the marker that follows it.
fn decode_scan(
    data: &[u8],
    pos: usize,
    frame: &mut Frame,
    scan: &Scan,
    dc_tables: &[Option<Huffman>; 4],
    ac_tables: &[Option<Huffman>; 4],
    restart_interval: usize,
) -> Result<usize, JpegError> {
    let kind = if !frame.progressive {
        ScanKind::Sequential
    } else if scan.ss == 0 {
        if scan.ah == 0 {
            ScanKind::DcFirst
        } else {
            ScanKind::DcRefine
        }
    } else if scan.ah == 0 {
        ScanKind::AcFirst
    } else {
        ScanKind::AcRefine
    };
    let needs_dc = matches!(kind, ScanKind::Sequential | ScanKind::DcFirst);
    let needs_ac = matches!(
        kind,
        ScanKind::Sequential | ScanKind::AcFirst | ScanKind::AcRefine
    );
    let mut tables: Vec<(Option<&Huffman>, Option<&Huffman>)> = Vec::new();
    for &(_, td, ta) in &scan.comps {
        let dc = dc_tables.get(td).and_then(Option::as_ref);
        let ac = ac_tables.get(ta).and_then(Option::as_ref);
        if (needs_dc && dc.is_none()) || (needs_ac && ac.is_none()) {
            return corrupt("scan uses an undefined Huffman table");
        }
        tables.push((dc, ac));
    }
    for &(ci, _, _) in &scan.comps {
        frame.comps[ci].dc_pred = 0;
    }

    let mut r = BitReader::new(data, pos);
    let mut eobrun = 0u32;
    let decode_one = |r: &mut BitReader<'_>,
                      comp: &mut Component,
                      t: (Option<&Huffman>, Option<&Huffman>),
                      bx: usize,
                      by: usize,
                      eobrun: &mut u32|
     -> Result<(), JpegError> {
        let mut pred = comp.dc_pred;
        let Some(block) = comp.block(bx, by) else {
            return corrupt("block outside the coefficient grid");
        };
        let (dc, ac) = t;
        match (kind, dc, ac) {
            (ScanKind::Sequential, Some(dc), Some(ac)) => {
                decode_block_sequential(r, dc, ac, &mut pred, block)?;
            }
            (ScanKind::DcFirst, Some(dc), _) => decode_dc_first(r, dc, &mut pred, scan.al, block)?,
            (ScanKind::DcRefine, _, _) => {
                if r.bit() {
                    block[0] = (i32::from(block[0]) | (1 << scan.al)) as i16;
                }
            }
            (ScanKind::AcFirst, _, Some(ac)) => decode_ac_first(r, ac, scan, eobrun, block)?,
            (ScanKind::AcRefine, _, Some(ac)) => decode_ac_refine(r, ac, scan, eobrun, block)?,
            _ => return corrupt("scan uses an undefined Huffman table"),
        }
        comp.dc_pred = pred;
        Ok(())
    };

    let mut mcus_done = 0usize;
    let restart = |r: &mut BitReader<'_>,
                   frame: &mut Frame,
                   eobrun: &mut u32,
                   mcus_done: usize|
     -> Result<(), JpegError> {
        if restart_interval > 0 && mcus_done > 0 && mcus_done.is_multiple_of(restart_interval) {
            r.restart()?;
            *eobrun = 0;
            for &(ci, _, _) in &scan.comps {
                frame.comps[ci].dc_pred = 0;
            }
        }
        Ok(())
    };

    if let [(ci, _, _)] = scan.comps[..] {
        // Non-interleaved: one block per MCU, over the component's own block grid.
        let t = tables[0];
        let (bw, bh) = {
            let c = &frame.comps[ci];
            (c.ds_w.div_ceil(8), c.ds_h.div_ceil(8))
        };
        for by in 0..bh {
            for bx in 0..bw {
                restart(&mut r, frame, &mut eobrun, mcus_done)?;
                decode_one(&mut r, &mut frame.comps[ci], t, bx, by, &mut eobrun)?;
                mcus_done += 1;
            }
        }
    } else {
        for my in 0..frame.mcuy {
            for mx in 0..frame.mcux {
                restart(&mut r, frame, &mut eobrun, mcus_done)?;
                for (j, &(ci, _, _)) in scan.comps.iter().enumerate() {
                    let (h, v) = (frame.comps[ci].h, frame.comps[ci].v);
                    for y in 0..v {
                        for x in 0..h {
                            decode_one(
                                &mut r,
                                &mut frame.comps[ci],
                                tables[j],
                                mx * h + x,
                                my * v + y,
                                &mut eobrun,
                            )?;
                        }
                    }
                }
                mcus_done += 1;
            }
        }
    }
    Ok(r.end_of_segment())
}

// ---------------------------------------------------------------------------------------------
// Inverse DCT (libjpeg's accurate integer "ISLOW" transform)

const CONST_BITS: u32 = 13;
const PASS1_BITS: u32 = 2;
const FIX_0_298631336: i64 = 2446;
const FIX_0_390180644: i64 = 3196;
const FIX_0_541196100: i64 = 4433;
const FIX_0_765366865: i64 = 6270;
const FIX_0_899976223: i64 = 7373;
const FIX_1_175875602: i64 = 9633;
const FIX_1_501321110: i64 = 12299;
const FIX_1_847759065: i64 = 15137;
const FIX_1_961570560: i64 = 16069;
const FIX_2_053119869: i64 = 16819;
const FIX_2_562915447: i64 = 20995;
const FIX_3_072711026: i64 = 25172;

fn descale(x: i64, n: u32) -> i64 {
    (x + (1 << (n - 1))) >> n
}

/// One 8-point 1-D inverse DCT; `get(i)` yields input `i`, outputs are unscaled sums.
fn idct_1d(i: [i64; 8]) -> [i64; 8] {
    // Even part.
    let z1 = (i[2] + i[6]) * FIX_0_541196100;
    let tmp2 = z1 - i[6] * FIX_1_847759065;
    let tmp3 = z1 + i[2] * FIX_0_765366865;
    let tmp0 = (i[0] + i[4]) << CONST_BITS;
    let tmp1 = (i[0] - i[4]) << CONST_BITS;
    let (tmp10, tmp13) = (tmp0 + tmp3, tmp0 - tmp3);
    let (tmp11, tmp12) = (tmp1 + tmp2, tmp1 - tmp2);
    // Odd part.
    let (t0, t1, t2, t3) = (i[7], i[5], i[3], i[1]);
    let z5 = (t0 + t2 + t1 + t3) * FIX_1_175875602;
    let z1 = -(t0 + t3) * FIX_0_899976223;
    let z2 = -(t1 + t2) * FIX_2_562915447;
    let z3 = -(t0 + t2) * FIX_1_961570560 + z5;
    let z4 = -(t1 + t3) * FIX_0_390180644 + z5;
    let o0 = t0 * FIX_0_298631336 + z1 + z3;
    let o1 = t1 * FIX_2_053119869 + z2 + z4;
    let o2 = t2 * FIX_3_072711026 + z2 + z3;
    let o3 = t3 * FIX_1_501321110 + z1 + z4;
    [
        tmp10 + o3,
        tmp11 + o2,
        tmp12 + o1,
        tmp13 + o0,
        tmp13 - o0,
        tmp12 - o1,
        tmp11 - o2,
        tmp10 - o3,
    ]
}

/// Dequantises and inverse-transforms one block into `out` (8 rows of `stride`).
fn idct_block(coefs: &[i16], quant: &[u16; 64], out: &mut [u8], stride: usize) {
    let mut ws = [0i64; 64];
    for col in 0..8 {
        let mut inp = [0i64; 8];
        for (row, v) in inp.iter_mut().enumerate() {
            let k = row * 8 + col;
            *v = i64::from(coefs[k]) * i64::from(quant[k]);
        }
        let o = idct_1d(inp);
        for (row, v) in o.iter().enumerate() {
            ws[row * 8 + col] = descale(*v, CONST_BITS - PASS1_BITS);
        }
    }
    for row in 0..8 {
        let mut inp = [0i64; 8];
        inp.copy_from_slice(&ws[row * 8..row * 8 + 8]);
        let o = idct_1d(inp);
        let line = &mut out[row * stride..row * stride + 8];
        for (dst, v) in line.iter_mut().zip(o) {
            // libjpeg-turbo's SIMD transforms saturate (the C code's range table agrees for
            // every in-range value).
            *dst = (descale(v, CONST_BITS + PASS1_BITS + 3) + 128).clamp(0, 255) as u8;
        }
    }
}

/// A component's samples at its own (downsampled) resolution, padded to whole blocks.
struct Plane {
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

fn component_plane(c: &Component) -> Result<Plane, JpegError> {
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

// ---------------------------------------------------------------------------------------------
// Upsampling to full resolution (libjpeg "fancy" upsampling)

/// Upsamples `p` by integer factors `(fx, fy)` into a `width` x `height` plane.
fn upsample(p: &Plane, fx: usize, fy: usize, width: usize, height: usize) -> Vec<u8> {
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

// ---------------------------------------------------------------------------------------------
// Colour conversion

const SCALEBITS: u32 = 16;
const ONE_HALF: i64 = 1 << (SCALEBITS - 1);

fn fix(x: f64) -> i64 {
    (x * f64::from(1u32 << SCALEBITS) + 0.5) as i64
}

fn ycc_to_rgb(y: &[u8], cb: &[u8], cr: &[u8]) -> Vec<u8> {
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
    for c in &frame.comps {
        let plane = component_plane(c)?;
        planes.push(upsample(&plane, frame.hmax / c.h, frame.vmax / c.v, w, h));
    }
    let (channels, data) = match planes.as_slice() {
        [grey] => (1, grey.clone()),
        [a, b, c] => {
            let ids: Vec<u8> = frame.comps.iter().map(|c| c.id).collect();
            // libjpeg's guess of the colour space of a three-component file.
            let rgb = match adobe_transform {
                _ if jfif => false,
                Some(t) => t == 0,
                None => ids == [b'R', b'G', b'B'],
            };
            if rgb {
                let mut out = Vec::with_capacity(w * h * 3);
                for ((&r, &g), &b) in a.iter().zip(b).zip(c) {
                    out.extend_from_slice(&[r, g, b]);
                }
                (3, out)
            } else {
                (3, ycc_to_rgb(a, b, c))
            }
        }
        _ => return unsupported("component count"),
    };
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
        assert_eq!(ycc_to_rgb(&[128], &[128], &[128]), vec![128, 128, 128]);
        assert_eq!(ycc_to_rgb(&[76], &[85], &[255]), vec![254, 0, 0]);
        assert_eq!(ycc_to_rgb(&[0], &[0], &[0]), vec![0, 135, 0]);
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
