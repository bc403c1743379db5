//! Huffman tables and the entropy-coded bit reader.

use super::{JpegError, corrupt};

pub(super) const LOOKAHEAD: u32 = 9;

#[derive(Clone)]
pub(super) struct Huffman {
    /// For every 9-bit prefix: `(code length << 8) | symbol`, or 0 when the code is longer.
    lookup: Vec<u16>,
    /// Largest code of each length (index 1..=16), -1 when none.
    maxcode: [i32; 17],
    /// `values` index of the first code of each length, minus that code.
    valoffset: [i32; 17],
    values: Vec<u8>,
}

impl Huffman {
    pub(super) fn new(counts: &[u8; 16], values: Vec<u8>) -> Result<Self, JpegError> {
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
pub(super) struct BitReader<'a> {
    data: &'a [u8],
    /// Next byte to load.
    pos: usize,
    acc: u64,
    nbits: u32,
    /// A marker (or the end of the data) was reached; `pos` is at its first 0xFF.
    at_marker: bool,
}

impl<'a> BitReader<'a> {
    pub(super) fn new(data: &'a [u8], pos: usize) -> Self {
        Self {
            data,
            pos,
            acc: 0,
            nbits: 0,
            at_marker: false,
        }
    }

    pub(super) fn fill(&mut self) {
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

    pub(super) fn bits(&mut self, n: u32) -> u32 {
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

    pub(super) fn bit(&mut self) -> bool {
        self.bits(1) != 0
    }

    /// `n` bits as a signed JPEG magnitude (the "EXTEND" of the standard).
    pub(super) fn receive_extend(&mut self, n: u32) -> Result<i32, JpegError> {
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

    pub(super) fn decode(&mut self, table: &Huffman) -> Result<u8, JpegError> {
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
    pub(super) fn restart(&mut self) -> Result<(), JpegError> {
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
    pub(super) fn end_of_segment(&self) -> usize {
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
