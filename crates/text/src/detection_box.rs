//! Location bins → boxes on the original image, in the two conventions PaliGemma code uses
//! (spec §9):
//!
//! * [`BoxConvention::BigVision`] (the default) follows big_vision's evaluator
//!   `big_vision/evaluators/proj/paligemma/transfers/segmentation.py`: `norm = bin / 1023`, pixel
//!   `int(norm * size)` (float64 product, truncated). It is the exact inverse of big_vision's
//!   encoder (`pp/proj/paligemma/segmentation.py`: `bin = round(norm * 1023)`), i.e. how the model
//!   was trained, hence the default.
//! * [`BoxConvention::Demo`] follows the demo Space's `paligemma_parse.py` `extract_objs`:
//!   `norm = bin / 1024`, pixel `round(norm * size)` with Python's round-half-to-even.
//!
//! The two differ by under 0.1 % of the image size (often one pixel). A bin is a position on
//! the square model input, which maps linearly to the original image on each axis (the image was
//! squashed, not padded), so pixels are computed per axis from the original width and height.
//!
//! This file owns the box value types and the validity rules ([`ObjectProblem`]); the text
//! grammar lives in [`crate::detection`].

use crate::detection_error::DetectionError;

/// Largest `<locNNNN>` value in the vocabulary (`<loc0000>`..`<loc1023>`).
pub const MAX_LOC_BIN: u16 = 1023;
/// Largest `<segNNN>` value in the vocabulary (`<seg000>`..`<seg127>`).
pub const MAX_SEG_CODE: u16 = 127;
/// Number of `<seg>` tokens that encode one mask.
pub const NUM_SEG_CODES: usize = 16;

/// How location bins become normalised and pixel coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum BoxConvention {
    /// big_vision evaluator: `bin / 1023`, pixels truncated (`int()` of a float64 product).
    #[default]
    BigVision,
    /// Demo Space (`extract_objs`): `bin / 1024`, pixels rounded half to even.
    Demo,
}

impl BoxConvention {
    /// The normalised coordinate (`0.0..=1.0` for vocabulary bins) of `bin`.
    pub fn normalise(self, bin: u16) -> f64 {
        match self {
            Self::BigVision => f64::from(bin) / 1023.0,
            Self::Demo => f64::from(bin) / 1024.0,
        }
    }

    /// The pixel coordinate of normalised coordinate `norm` on an axis of `size` pixels.
    ///
    /// Saturates at `u32::MAX` for absurd inputs (only out-of-vocabulary bins exceed `size`).
    pub fn to_pixel(self, norm: f64, size: u32) -> u32 {
        let exact = norm * f64::from(size);
        match self {
            // Float-to-int casts truncate toward zero, as Python's `int()` does.
            Self::BigVision => exact as u32,
            Self::Demo => exact.round_ties_even() as u32,
        }
    }
}

/// The original image's size in pixels (both at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ImageSize {
    width: u32,
    height: u32,
}

impl ImageSize {
    /// # Errors
    /// [`DetectionError::EmptyImage`] if either dimension is zero.
    pub fn new(width: u32, height: u32) -> Result<Self, DetectionError> {
        if width == 0 || height == 0 {
            return Err(DetectionError::EmptyImage { width, height });
        }
        Ok(Self { width, height })
    }

    /// Width in pixels.
    pub fn width(self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(self) -> u32 {
        self.height
    }
}

/// The four location bins as the model emits them: `(ymin, xmin, ymax, xmax)`, each the value
/// of a `<locNNNN>` token (four decimal digits, so up to 9999; only `0..=1023` are vocabulary
/// tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LocBins {
    pub ymin: u16,
    pub xmin: u16,
    pub ymax: u16,
    pub xmax: u16,
}

impl LocBins {
    /// The bins in model order `[ymin, xmin, ymax, xmax]`.
    pub fn to_array(self) -> [u16; 4] {
        [self.ymin, self.xmin, self.ymax, self.xmax]
    }
}

/// A box in normalised coordinates (fractions of the image height/width), model order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NormBox {
    pub ymin: f64,
    pub xmin: f64,
    pub ymax: f64,
    pub xmax: f64,
}

/// A box in pixels of the original image: rows `ymin..ymax`, columns `xmin..xmax` (end
/// exclusive, as the references slice `mask[y1:y2, x1:x2]`). Not reordered: an inverted box
/// stays inverted and is reported through [`ObjectProblem`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PixelBox {
    pub ymin: u32,
    pub xmin: u32,
    pub ymax: u32,
    pub xmax: u32,
}

impl PixelBox {
    /// Width in pixels (0 for an empty or inverted box).
    pub fn width(&self) -> u32 {
        self.xmax.saturating_sub(self.xmin)
    }

    /// Height in pixels (0 for an empty or inverted box).
    pub fn height(&self) -> u32 {
        self.ymax.saturating_sub(self.ymin)
    }

    /// True when the box covers no pixel.
    pub fn is_empty(&self) -> bool {
        self.width() == 0 || self.height() == 0
    }

    /// The box as `[x1, y1, x2, y2]` (the demo's `xyxy` order).
    pub fn to_xyxy(&self) -> [u32; 4] {
        [self.xmin, self.ymin, self.xmax, self.ymax]
    }
}

/// An image axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Axis {
    /// Rows (`ymin`/`ymax`).
    Y,
    /// Columns (`xmin`/`xmax`).
    X,
}

/// Why a parsed object is invalid. Nothing is fixed silently: an inverted box keeps its
/// coordinates and is reported here. The rules are big_vision's evaluator's (the demo applies
/// none of them and returns such objects with an empty mask).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ObjectProblem {
    /// A `<locNNNN>` value above [`MAX_LOC_BIN`] (not a vocabulary token).
    #[error("loc token {index} (0 = ymin .. 3 = xmax) is {value}, above the maximum {MAX_LOC_BIN}")]
    LocOutOfRange {
        /// Position among the four loc tokens.
        index: usize,
        /// The value written in the text.
        value: u16,
    },
    /// `max <= min` on an axis, in bins (inverted or zero-size box).
    #[error("box is empty or inverted on axis {axis:?}: min bin {min}, max bin {max}")]
    EmptyOrInverted {
        /// The offending axis.
        axis: Axis,
        /// The `ymin`/`xmin` bin.
        min: u16,
        /// The `ymax`/`xmax` bin.
        max: u16,
    },
    /// The bins form a proper box but it covers no pixel after conversion.
    #[error("box {bins:?} covers no pixel of the image after conversion")]
    EmptyPixelBox {
        /// The bins in model order.
        bins: [u16; 4],
    },
    /// A `<segNNN>` value above [`MAX_SEG_CODE`] (not a vocabulary token).
    #[error("seg token {index} is {value}, above the maximum {MAX_SEG_CODE}")]
    SegOutOfRange {
        /// Position among the sixteen seg tokens.
        index: usize,
        /// The value written in the text.
        value: u16,
    },
}

/// The box of `bins` in `convention`, plus every box problem found (empty when valid).
pub(crate) fn boxes(
    bins: LocBins,
    size: ImageSize,
    convention: BoxConvention,
) -> (NormBox, PixelBox, Vec<ObjectProblem>) {
    let n = |b| convention.normalise(b);
    let norm = NormBox {
        ymin: n(bins.ymin),
        xmin: n(bins.xmin),
        ymax: n(bins.ymax),
        xmax: n(bins.xmax),
    };
    let px = PixelBox {
        ymin: convention.to_pixel(norm.ymin, size.height),
        xmin: convention.to_pixel(norm.xmin, size.width),
        ymax: convention.to_pixel(norm.ymax, size.height),
        xmax: convention.to_pixel(norm.xmax, size.width),
    };
    let mut problems = Vec::new();
    for (index, value) in bins.to_array().into_iter().enumerate() {
        if value > MAX_LOC_BIN {
            problems.push(ObjectProblem::LocOutOfRange { index, value });
        }
    }
    for (axis, min, max) in [
        (Axis::Y, bins.ymin, bins.ymax),
        (Axis::X, bins.xmin, bins.xmax),
    ] {
        if max <= min {
            problems.push(ObjectProblem::EmptyOrInverted { axis, min, max });
        }
    }
    if problems.is_empty() && px.is_empty() {
        problems.push(ObjectProblem::EmptyPixelBox {
            bins: bins.to_array(),
        });
    }
    (norm, px, problems)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn bins(ymin: u16, xmin: u16, ymax: u16, xmax: u16) -> LocBins {
        LocBins {
            ymin,
            xmin,
            ymax,
            xmax,
        }
    }

    #[test]
    fn big_vision_truncates_the_float64_product() {
        // (279 / 1023) * 55 = 14.999999999999998 in float64: int() gives 14.
        assert_eq!(
            BoxConvention::BigVision.to_pixel(BoxConvention::BigVision.normalise(279), 55),
            14
        );
        assert_eq!(BoxConvention::BigVision.normalise(1023), 1.0);
    }

    #[test]
    fn demo_rounds_half_to_even() {
        let d = BoxConvention::Demo;
        // 512/1024 * 333 = 166.5 -> 166; 256/1024 * 333 = 83.25 -> 83; 192/1024*1000 = 187.5 -> 188.
        assert_eq!(d.to_pixel(d.normalise(512), 333), 166);
        assert_eq!(d.to_pixel(d.normalise(192), 1000), 188);
        assert_eq!(d.to_pixel(d.normalise(1023), 224), 224);
    }

    #[test]
    fn zero_sized_images_are_rejected() {
        assert_eq!(
            ImageSize::new(0, 5),
            Err(DetectionError::EmptyImage {
                width: 0,
                height: 5
            })
        );
        assert!(ImageSize::new(1, 1).is_ok());
    }

    #[test]
    fn inverted_boxes_are_reported_not_reordered() {
        let size = ImageSize::new(640, 480).unwrap();
        let (_, px, problems) = boxes(bins(800, 700, 200, 100), size, BoxConvention::BigVision);
        assert_eq!(px.ymin, 375);
        assert!(px.is_empty());
        assert_eq!(problems.len(), 2);
        assert!(matches!(
            problems[0],
            ObjectProblem::EmptyOrInverted { axis: Axis::Y, .. }
        ));
    }

    #[test]
    fn boxes_empty_after_truncation_are_invalid() {
        let size = ImageSize::new(1000, 100).unwrap();
        let (_, px, problems) = boxes(bins(0, 1, 1, 1022), size, BoxConvention::BigVision);
        assert_eq!(
            px,
            PixelBox {
                ymin: 0,
                xmin: 0,
                ymax: 0,
                xmax: 999
            }
        );
        assert_eq!(
            problems,
            vec![ObjectProblem::EmptyPixelBox {
                bins: [0, 1, 1, 1022]
            }]
        );
    }

    #[test]
    fn out_of_vocabulary_locs_are_invalid() {
        let size = ImageSize::new(640, 480).unwrap();
        let (_, _, problems) = boxes(bins(1024, 0, 500, 500), size, BoxConvention::Demo);
        assert_eq!(
            problems,
            vec![
                ObjectProblem::LocOutOfRange {
                    index: 0,
                    value: 1024
                },
                ObjectProblem::EmptyOrInverted {
                    axis: Axis::Y,
                    min: 1024,
                    max: 500
                }
            ]
        );
    }
}
