//! Full-image masks and their encodings: COCO uncompressed RLE (pycocotools'
//! `{"size": [h, w], "counts": [...]}`: column-major runs, starting with a run of zeros) and
//! 8-bit greyscale PNG (via the `image` crate).
//!
//! Owns only the mask containers; decoding and pasting live in [`crate::decoder`] and
//! [`crate::paste`].

use std::io::Cursor;

use image::{GrayImage, ImageFormat};
use serde::{Deserialize, Serialize};

use crate::error::SegmentError;

fn check_len(width: u32, height: u32, actual: usize) -> Result<(), SegmentError> {
    let expected = width as usize * height as usize;
    if actual != expected {
        return Err(SegmentError::BadMaskSize {
            width,
            height,
            expected,
            actual,
        });
    }
    Ok(())
}

fn encode_png(width: u32, height: u32, data: Vec<u8>) -> Result<Vec<u8>, SegmentError> {
    let img = GrayImage::from_raw(width, height, data)
        .ok_or_else(|| SegmentError::Png("buffer does not match the mask size".into()))?;
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, ImageFormat::Png)
        .map_err(|e| SegmentError::Png(e.to_string()))?;
    Ok(out.into_inner())
}

/// A binary mask the size of the original image: row-major, one byte per pixel, 0 or 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryMask {
    width: u32,
    height: u32,
    data: Vec<u8>,
}

impl BinaryMask {
    /// An all-zero mask.
    pub fn zeros(width: u32, height: u32) -> Self {
        Self {
            width,
            height,
            data: vec![0; width as usize * height as usize],
        }
    }

    /// Wraps row-major bytes; any non-zero byte counts as 1.
    ///
    /// # Errors
    /// [`SegmentError::BadMaskSize`] if `data.len() != width * height`.
    pub fn from_vec(width: u32, height: u32, mut data: Vec<u8>) -> Result<Self, SegmentError> {
        check_len(width, height, data.len())?;
        for v in &mut data {
            *v = u8::from(*v != 0);
        }
        Ok(Self {
            width,
            height,
            data,
        })
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Row-major 0/1 bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.data
    }

    /// Mutable access for pasting (crate-internal: values must stay 0/1).
    pub(crate) fn data_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }

    /// Number of pixels set.
    pub fn area(&self) -> u64 {
        self.data.iter().map(|&v| u64::from(v)).sum()
    }

    /// COCO uncompressed RLE: runs over the column-major (Fortran-order) pixels, alternating
    /// zeros and ones and starting with zeros (a leading 0 count when the first pixel is set).
    pub fn to_coco_rle(&self) -> CocoRle {
        let (w, h) = (self.width as usize, self.height as usize);
        let mut counts = Vec::new();
        let mut current = 0u8;
        let mut run = 0u32;
        for x in 0..w {
            for y in 0..h {
                let v = self.data[y * w + x];
                if v != current {
                    counts.push(run);
                    run = 0;
                    current = v;
                }
                run += 1;
            }
        }
        counts.push(run);
        CocoRle {
            size: [self.height, self.width],
            counts,
        }
    }

    /// An 8-bit greyscale PNG, 255 where set, 0 elsewhere.
    ///
    /// # Errors
    /// [`SegmentError::Png`] if encoding fails.
    pub fn to_png(&self) -> Result<Vec<u8>, SegmentError> {
        let data = self.data.iter().map(|&v| v * 255).collect();
        encode_png(self.width, self.height, data)
    }
}

/// COCO's uncompressed run-length encoding, as pycocotools writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CocoRle {
    /// `[height, width]`.
    pub size: [u32; 2],
    /// Alternating run lengths (zeros first) over column-major pixels.
    pub counts: Vec<u32>,
}

impl CocoRle {
    /// Decodes back to a mask.
    ///
    /// # Errors
    /// [`SegmentError::BadMaskSize`] if the runs do not add up to `height * width`.
    pub fn to_mask(&self) -> Result<BinaryMask, SegmentError> {
        let [h, w] = self.size;
        let total: usize = self.counts.iter().map(|&c| c as usize).sum();
        check_len(w, h, total)?;
        let (w, h) = (w as usize, h as usize);
        let mut data = vec![0u8; w * h];
        let mut i = 0usize;
        for (k, &run) in self.counts.iter().enumerate() {
            let v = (k % 2) as u8;
            for j in i..i + run as usize {
                data[(j % h) * w + j / h] = v;
            }
            i += run as usize;
        }
        BinaryMask::from_vec(self.size[1], self.size[0], data)
    }
}

/// A soft mask the size of the original image: row-major bytes, `value / 255` is the mask
/// probability (the demo's convention).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoftMask {
    width: u32,
    height: u32,
    data: Vec<u8>,
}

impl SoftMask {
    /// An all-zero mask.
    pub fn zeros(width: u32, height: u32) -> Self {
        Self {
            width,
            height,
            data: vec![0; width as usize * height as usize],
        }
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Row-major bytes (`0..=255`).
    pub fn as_slice(&self) -> &[u8] {
        &self.data
    }

    pub(crate) fn data_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }

    /// Pixels whose value is above `min_exclusive` (127 gives soft > 0.5).
    pub fn threshold(&self, min_exclusive: u8) -> BinaryMask {
        BinaryMask {
            width: self.width,
            height: self.height,
            data: self
                .data
                .iter()
                .map(|&v| u8::from(v > min_exclusive))
                .collect(),
        }
    }

    /// An 8-bit greyscale PNG of the values.
    ///
    /// # Errors
    /// [`SegmentError::Png`] if encoding fails.
    pub fn to_png(&self) -> Result<Vec<u8>, SegmentError> {
        encode_png(self.width, self.height, self.data.clone())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// 3 rows x 4 columns:
    /// ```text
    /// 0 1 1 0
    /// 0 1 0 0
    /// 1 1 0 1
    /// ```
    /// Column-major: col0 = 0 0 1, col1 = 1 1 1, col2 = 1 0 0, col3 = 0 0 1
    /// → 0 0 | 1 1 1 1 1 | 0 0 0 0 | 1 → counts [2, 5, 4, 1].
    fn example() -> BinaryMask {
        BinaryMask::from_vec(4, 3, vec![0, 1, 1, 0, 0, 1, 0, 0, 1, 1, 0, 1]).unwrap()
    }

    #[test]
    fn coco_rle_matches_a_hand_computed_example() {
        let rle = example().to_coco_rle();
        assert_eq!(rle.size, [3, 4]);
        assert_eq!(rle.counts, vec![2, 5, 4, 1]);
        assert_eq!(rle.to_mask().unwrap(), example());
    }

    #[test]
    fn coco_rle_starts_with_a_zero_run_when_the_first_pixel_is_set() {
        let m = BinaryMask::from_vec(2, 2, vec![1, 1, 1, 0]).unwrap();
        // Column-major: 1 1 | 1 0 → counts [0, 3, 1].
        assert_eq!(m.to_coco_rle().counts, vec![0, 3, 1]);
        assert_eq!(BinaryMask::zeros(3, 2).to_coco_rle().counts, vec![6]);
    }

    #[test]
    fn coco_rle_serialises_like_pycocotools() {
        let json = serde_json::to_string(&example().to_coco_rle()).unwrap();
        assert_eq!(json, r#"{"size":[3,4],"counts":[2,5,4,1]}"#);
        let back: CocoRle = serde_json::from_str(&json).unwrap();
        assert_eq!(back.to_mask().unwrap(), example());
    }

    #[test]
    fn rle_with_wrong_total_is_an_error() {
        let rle = CocoRle {
            size: [2, 2],
            counts: vec![1, 1],
        };
        assert!(matches!(
            rle.to_mask(),
            Err(SegmentError::BadMaskSize {
                expected: 4,
                actual: 2,
                ..
            })
        ));
    }

    #[test]
    fn png_round_trips_through_the_image_crate() {
        let m = example();
        let png = m.to_png().unwrap();
        let back = image::load_from_memory_with_format(&png, ImageFormat::Png)
            .unwrap()
            .to_luma8();
        assert_eq!((back.width(), back.height()), (4, 3));
        let bits: Vec<u8> = back.as_raw().iter().map(|&v| u8::from(v == 255)).collect();
        assert_eq!(bits, m.as_slice());
        assert!(back.as_raw().iter().all(|&v| v == 0 || v == 255));

        let mut soft = SoftMask::zeros(2, 1);
        soft.data_mut().copy_from_slice(&[7, 200]);
        let back = image::load_from_memory(&soft.to_png().unwrap())
            .unwrap()
            .to_luma8();
        assert_eq!(back.as_raw(), &vec![7, 200]);
        assert_eq!(soft.threshold(127).as_slice(), &[0, 1]);
    }

    #[test]
    fn mask_buffers_of_the_wrong_length_are_errors() {
        assert!(BinaryMask::from_vec(2, 2, vec![0; 3]).is_err());
    }
}
