//! Drawing detections on an image for `paligemma detect|segment --out`: translucent masks,
//! box outlines and labels in a tiny built-in 3×5 bitmap font (so no font dependency).
//!
//! Everything is clipped to the image: boxes at or beyond its edges, one-pixel images, empty
//! or very long labels and characters the font lacks (drawn as `?`) never panic. The font has
//! digits, Latin letters (lowercase drawn as capitals) and a little punctuation.

use image::{Rgb, RgbImage};
use paligemma_segment::BinaryMask;
use paligemma_text::PixelBox;

/// Opacity of a mask tint.
const MASK_ALPHA: f32 = 0.45;
/// Box and label colours, cycled per object.
const PALETTE: [[u8; 3]; 8] = [
    [230, 25, 75],
    [60, 180, 75],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
    [255, 225, 25],
];
/// Glyph cell: 3 columns, 5 rows, 1 column of spacing.
const GLYPH_W: i64 = 3;
const GLYPH_H: i64 = 5;

/// One object to draw.
#[derive(Debug, Clone, Copy)]
pub struct Annotation<'a> {
    /// Drawn above the box (inside it when the box touches the top edge).
    pub label: &'a str,
    /// Pixel box of the image (end exclusive).
    pub box_px: PixelBox,
    /// Tinted where set; ignored unless its size equals the image's.
    pub mask: Option<&'a BinaryMask>,
}

/// Draws every annotation on `img`: all masks first, then boxes and labels on top.
pub fn draw(img: &mut RgbImage, annotations: &[Annotation<'_>]) {
    for (i, a) in annotations.iter().enumerate() {
        if let Some(mask) = a.mask {
            tint(img, mask, PALETTE[i % PALETTE.len()]);
        }
    }
    let scale = i64::from((img.width().min(img.height()) / 240).clamp(1, 4));
    for (i, a) in annotations.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let b = a.box_px;
        let (x0, y0, x1, y1) = (
            i64::from(b.xmin),
            i64::from(b.ymin),
            i64::from(b.xmax),
            i64::from(b.ymax),
        );
        let t = scale;
        fill(img, x0, y0, x1, y0 + t, color, 1.0);
        fill(img, x0, y1 - t, x1, y1, color, 1.0);
        fill(img, x0, y0, x0 + t, y1, color, 1.0);
        fill(img, x1 - t, y0, x1, y1, color, 1.0);
        label(img, a.label, x0, y0, scale, color);
    }
}

/// Blends `color` over the pixels set in `mask`.
fn tint(img: &mut RgbImage, mask: &BinaryMask, color: [u8; 3]) {
    if (mask.width(), mask.height()) != img.dimensions() {
        return;
    }
    let width = mask.width() as usize;
    for (i, _) in mask.as_slice().iter().enumerate().filter(|(_, v)| **v != 0) {
        let (x, y) = ((i % width) as u32, (i / width) as u32);
        blend(img.get_pixel_mut(x, y), color, MASK_ALPHA);
    }
}

/// A label on a filled background above the box at (`x`, `y`), or inside it at the top edge.
fn label(img: &mut RgbImage, text: &str, x: i64, y: i64, scale: i64, color: [u8; 3]) {
    if text.is_empty() {
        return;
    }
    let pad = scale;
    let n = i64::try_from(text.chars().count()).unwrap_or(i64::MAX / 8);
    let w = (n * (GLYPH_W + 1) * scale).saturating_add(pad);
    let h = GLYPH_H * scale + 2 * pad;
    let top = if y >= h { y - h } else { y };
    fill(img, x, top, x.saturating_add(w), top + h, color, 1.0);
    let luma = 299 * u32::from(color[0]) + 587 * u32::from(color[1]) + 114 * u32::from(color[2]);
    let ink = if luma > 150_000 {
        [0, 0, 0]
    } else {
        [255, 255, 255]
    };
    let right = i64::from(img.width());
    for (k, c) in text.chars().enumerate() {
        let gx = x + pad + i64::try_from(k).unwrap_or(i64::MAX / 8) * (GLYPH_W + 1) * scale;
        if gx >= right {
            break;
        }
        for (row, bits) in glyph(c).iter().enumerate() {
            for col in 0..GLYPH_W {
                if bits & (0b100 >> col) != 0 {
                    let px = gx + col * scale;
                    let py = top + pad + row as i64 * scale;
                    fill(img, px, py, px + scale, py + scale, ink, 1.0);
                }
            }
        }
    }
}

/// Blends `color` over the rectangle columns `x0..x1`, rows `y0..y1`, clipped to the image.
fn fill(img: &mut RgbImage, x0: i64, y0: i64, x1: i64, y1: i64, color: [u8; 3], alpha: f32) {
    let (w, h) = (i64::from(img.width()), i64::from(img.height()));
    let (x0, x1) = (x0.clamp(0, w), x1.clamp(0, w));
    let (y0, y1) = (y0.clamp(0, h), y1.clamp(0, h));
    for y in y0..y1 {
        for x in x0..x1 {
            // In range: clamped to the image's u32 dimensions above.
            blend(img.get_pixel_mut(x as u32, y as u32), color, alpha);
        }
    }
}

fn blend(pixel: &mut Rgb<u8>, color: [u8; 3], alpha: f32) {
    for (p, c) in pixel.0.iter_mut().zip(color) {
        let v = f32::from(*p) * (1.0 - alpha) + f32::from(c) * alpha;
        *p = v.round().clamp(0.0, 255.0) as u8;
    }
}

/// The 3×5 glyph of `c`, rows top to bottom, bit 2 = left column.
fn glyph(c: char) -> [u8; 5] {
    match c.to_ascii_uppercase() {
        'A' => [0b010, 0b101, 0b111, 0b101, 0b101],
        'B' => [0b110, 0b101, 0b110, 0b101, 0b110],
        'C' => [0b011, 0b100, 0b100, 0b100, 0b011],
        'D' => [0b110, 0b101, 0b101, 0b101, 0b110],
        'E' => [0b111, 0b100, 0b110, 0b100, 0b111],
        'F' => [0b111, 0b100, 0b110, 0b100, 0b100],
        'G' => [0b011, 0b100, 0b101, 0b101, 0b011],
        'H' => [0b101, 0b101, 0b111, 0b101, 0b101],
        'I' => [0b111, 0b010, 0b010, 0b010, 0b111],
        'J' => [0b001, 0b001, 0b001, 0b101, 0b010],
        'K' => [0b101, 0b101, 0b110, 0b101, 0b101],
        'L' => [0b100, 0b100, 0b100, 0b100, 0b111],
        'M' => [0b101, 0b111, 0b111, 0b101, 0b101],
        'N' => [0b110, 0b101, 0b101, 0b101, 0b101],
        'O' => [0b010, 0b101, 0b101, 0b101, 0b010],
        'P' => [0b110, 0b101, 0b110, 0b100, 0b100],
        'Q' => [0b010, 0b101, 0b101, 0b110, 0b011],
        'R' => [0b110, 0b101, 0b110, 0b101, 0b101],
        'S' => [0b011, 0b100, 0b010, 0b001, 0b110],
        'T' => [0b111, 0b010, 0b010, 0b010, 0b010],
        'U' => [0b101, 0b101, 0b101, 0b101, 0b111],
        'V' => [0b101, 0b101, 0b101, 0b101, 0b010],
        'W' => [0b101, 0b101, 0b111, 0b111, 0b101],
        'X' => [0b101, 0b101, 0b010, 0b101, 0b101],
        'Y' => [0b101, 0b101, 0b010, 0b010, 0b010],
        'Z' => [0b111, 0b001, 0b010, 0b100, 0b111],
        '0' => [0b111, 0b101, 0b101, 0b101, 0b111],
        '1' => [0b010, 0b110, 0b010, 0b010, 0b111],
        '2' => [0b110, 0b001, 0b010, 0b100, 0b111],
        '3' => [0b110, 0b001, 0b010, 0b001, 0b110],
        '4' => [0b101, 0b101, 0b111, 0b001, 0b001],
        '5' => [0b111, 0b100, 0b110, 0b001, 0b110],
        '6' => [0b011, 0b100, 0b111, 0b101, 0b111],
        '7' => [0b111, 0b001, 0b010, 0b010, 0b010],
        '8' => [0b111, 0b101, 0b111, 0b101, 0b111],
        '9' => [0b111, 0b101, 0b111, 0b001, 0b110],
        ' ' => [0; 5],
        '-' => [0b000, 0b000, 0b111, 0b000, 0b000],
        '_' => [0b000, 0b000, 0b000, 0b000, 0b111],
        '.' => [0b000, 0b000, 0b000, 0b000, 0b010],
        ',' => [0b000, 0b000, 0b000, 0b010, 0b100],
        ':' => [0b000, 0b010, 0b000, 0b010, 0b000],
        '\'' => [0b010, 0b010, 0b000, 0b000, 0b000],
        '/' => [0b001, 0b001, 0b010, 0b100, 0b100],
        '(' => [0b010, 0b100, 0b100, 0b100, 0b010],
        ')' => [0b010, 0b001, 0b001, 0b001, 0b010],
        _ => [0b110, 0b001, 0b010, 0b000, 0b010],
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pbox(ymin: u32, xmin: u32, ymax: u32, xmax: u32) -> PixelBox {
        PixelBox {
            ymin,
            xmin,
            ymax,
            xmax,
        }
    }

    #[test]
    fn drawing_at_and_beyond_the_image_edges_never_panics() {
        let long = "a very long label with ünïcödé and symbols <>;{}".repeat(10);
        let boxes = [
            pbox(0, 0, 1, 1),
            pbox(0, 0, 5000, 5000),
            pbox(3, 4, 3, 4),
            pbox(9, 9, 2, 2),
            pbox(u32::MAX - 1, u32::MAX - 1, u32::MAX, u32::MAX),
        ];
        for (w, h) in [(1, 1), (2, 7), (33, 5), (640, 480)] {
            let mut img = RgbImage::new(w, h);
            let mask = BinaryMask::from_vec(w, h, vec![1; (w * h) as usize]).unwrap();
            let wrong_size = BinaryMask::zeros(3, 3);
            let annotations: Vec<_> = boxes
                .iter()
                .enumerate()
                .map(|(i, &box_px)| Annotation {
                    label: if i % 2 == 0 { &long } else { "" },
                    box_px,
                    mask: Some(if i == 0 { &mask } else { &wrong_size }),
                })
                .collect();
            draw(&mut img, &annotations);
        }
    }

    #[test]
    fn a_box_outline_is_drawn_and_its_inside_left_alone() {
        let mut img = RgbImage::new(40, 40);
        let a = Annotation {
            label: "",
            box_px: pbox(10, 10, 30, 30),
            mask: None,
        };
        draw(&mut img, &[a]);
        assert_eq!(img.get_pixel(10, 20).0, PALETTE[0]);
        assert_eq!(img.get_pixel(29, 20).0, PALETTE[0]);
        assert_eq!(img.get_pixel(20, 20).0, [0, 0, 0]);
        assert_eq!(img.get_pixel(5, 5).0, [0, 0, 0]);
    }

    #[test]
    fn a_mask_tints_only_its_pixels_and_a_label_sits_above_the_box() {
        let mut img = RgbImage::new(40, 40);
        let mut data = vec![0u8; 40 * 40];
        data[25 * 40 + 25] = 1;
        let mask = BinaryMask::from_vec(40, 40, data).unwrap();
        let a = Annotation {
            label: "cat",
            box_px: pbox(20, 20, 35, 35),
            mask: Some(&mask),
        };
        draw(&mut img, &[a]);
        assert_ne!(img.get_pixel(25, 25).0, [0, 0, 0]);
        assert_eq!(img.get_pixel(26, 26).0, [0, 0, 0]);
        // The label background covers the rows just above the box.
        assert_ne!(img.get_pixel(21, 19).0, [0, 0, 0]);
    }

    #[test]
    fn every_glyph_fits_its_three_columns() {
        for c in (' '..='~').chain(['é', '猫']) {
            assert!(glyph(c).iter().all(|row| *row < 8), "{c:?}");
        }
        assert_eq!(glyph('a'), glyph('A'));
    }
}
