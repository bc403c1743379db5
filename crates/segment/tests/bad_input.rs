//! Bad input gives clear errors: unreadable, truncated or wrong-shape checkpoints, codes out of
//! range, objects without (valid) masks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use paligemma_segment::{MaskDecoder, SegmentError, object_mask};
use paligemma_text::{ImageSize, ParseOptions, parse_detections};

/// A temporary file removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str) -> Self {
        Self(std::env::temp_dir().join(format!(
            "paligemma-segment-{}-{tag}.npz",
            std::process::id()
        )))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `vae-random.npz` with `edit` applied to its tensor list, written to a temp file.
fn edited_checkpoint(tag: &str, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) -> TempFile {
    let mut tensors = Tensor::read_npz(common::fixture("vae-random.npz")).unwrap();
    edit(&mut tensors);
    let file = TempFile::new(tag);
    Tensor::write_npz(&tensors, &file.0).unwrap();
    file
}

#[test]
fn a_missing_file_is_an_npz_error_naming_the_path() {
    let err = MaskDecoder::from_npz("/nonexistent/vae-oid.npz").unwrap_err();
    assert!(matches!(err, SegmentError::Npz { .. }), "{err}");
    assert!(
        err.to_string().contains("/nonexistent/vae-oid.npz"),
        "{err}"
    );
}

#[test]
fn a_truncated_file_is_an_npz_error() {
    let bytes = std::fs::read(common::fixture("vae-random.npz")).unwrap();
    let file = TempFile::new("truncated");
    std::fs::write(&file.0, &bytes[..bytes.len() / 2]).unwrap();
    let err = MaskDecoder::from_npz(&file.0).unwrap_err();
    assert!(matches!(err, SegmentError::Npz { .. }), "{err}");
}

#[test]
fn a_weight_that_disagrees_with_the_codebook_width_is_a_shape_error() {
    // Codebook narrowed to 256 columns: decoder.0.weight [128, 512, 1, 1] no longer fits.
    let file = edited_checkpoint("narrow", |ts| {
        for (name, t) in ts.iter_mut() {
            if name == "_vq_vae._embedding" {
                *t = t.narrow(1, 0, 256).unwrap();
            }
        }
    });
    let err = MaskDecoder::from_npz(&file.0).unwrap_err();
    match &err {
        SegmentError::BadShape { name, actual, .. } => {
            assert_eq!(name, "decoder.0.weight");
            assert_eq!(actual, &vec![128, 512, 1, 1]);
        }
        other => panic!("expected BadShape, got {other}"),
    }
    assert!(err.to_string().contains("[128, 256, 1, 1]"), "{err}");
}

#[test]
fn a_codebook_that_is_not_a_matrix_is_a_shape_error() {
    let file = edited_checkpoint("flat-codebook", |ts| {
        for (name, t) in ts.iter_mut() {
            if name == "_vq_vae._embedding" {
                *t = t.flatten_all().unwrap();
            }
        }
    });
    let err = MaskDecoder::from_npz(&file.0).unwrap_err();
    assert!(
        matches!(&err, SegmentError::BadShape { name, .. } if name == "_vq_vae._embedding"),
        "{err}"
    );
}

#[test]
fn missing_tensors_and_wrong_dtypes_are_named() {
    let file = edited_checkpoint("missing", |ts| ts.retain(|(n, _)| n != "decoder.12.bias"));
    let err = MaskDecoder::from_npz(&file.0).unwrap_err();
    assert!(
        matches!(&err, SegmentError::MissingTensor { name, .. } if name == "decoder.12.bias"),
        "{err}"
    );
    let file = edited_checkpoint("f64", |ts| {
        for (name, t) in ts.iter_mut() {
            if name == "decoder.4.bias" {
                *t = t.to_dtype(DType::F64).unwrap();
            }
        }
    });
    let err = MaskDecoder::from_npz(&file.0).unwrap_err();
    assert!(
        matches!(&err, SegmentError::BadDType { name, .. } if name == "decoder.4.bias"),
        "{err}"
    );
}

#[test]
fn a_checkpoint_with_extra_encoder_tensors_still_loads() {
    let file = edited_checkpoint("extra", |ts| {
        let t = Tensor::zeros((16, 1, 4, 4), DType::F32, &Device::Cpu).unwrap();
        ts.push(("encoder.0.weight".to_owned(), t));
    });
    assert!(MaskDecoder::from_npz(&file.0).is_ok());
}

#[test]
fn out_of_range_and_miscounted_codes_are_errors() {
    let dec = common::decoder();
    let mut codes = [3u16; 16];
    codes[5] = 128;
    match dec.decode(&codes).unwrap_err() {
        SegmentError::CodeOutOfRange {
            index,
            value,
            codebook_size,
        } => assert_eq!((index, value, codebook_size), (5, 128, 128)),
        other => panic!("expected CodeOutOfRange, got {other}"),
    }
    assert!(matches!(
        dec.decode(&[0; 15]).unwrap_err(),
        SegmentError::WrongCodeCount {
            expected: 16,
            actual: 15
        }
    ));
    assert!(dec.decode_batch(&[]).unwrap().is_empty());
}

#[test]
fn objects_without_a_valid_mask_are_errors() {
    let dec = common::decoder();
    let size = ImageSize::new(640, 480).unwrap();
    let opts = ParseOptions::default();
    let detect = parse_detections("<loc0100><loc0200><loc0300><loc0400> cat", size, &opts);
    let obj = detect.objects().next().unwrap();
    assert!(matches!(
        object_mask(&dec, obj),
        Err(SegmentError::NoSegCodes)
    ));

    let segs = "<seg001>".repeat(16);
    let inverted = parse_detections(
        &format!("<loc0800><loc0700><loc0200><loc0100>{segs} x"),
        size,
        &opts,
    );
    let obj = inverted.objects().next().unwrap();
    let err = object_mask(&dec, obj).unwrap_err();
    assert!(
        matches!(err, SegmentError::InvalidObject(ref p) if p.len() == 2),
        "{err}"
    );
}

#[test]
fn masks_encode_as_rle_and_png_that_decode_back() {
    let dec = common::decoder();
    let size = ImageSize::new(160, 120).unwrap();
    let segs: String = [
        17, 16, 102, 63, 75, 76, 91, 3, 62, 18, 51, 118, 70, 9, 69, 16,
    ]
    .iter()
    .map(|c| format!("<seg{c:03}>"))
    .collect();
    let out = parse_detections(
        &format!("<loc0256><loc0128><loc0768><loc0896>{segs} person"),
        size,
        &ParseOptions::default(),
    );
    let mask = object_mask(&dec, out.objects().next().unwrap()).unwrap();
    assert_eq!(mask.area(), 3642);
    let rle = mask.to_coco_rle();
    assert_eq!(rle.size, [120, 160]);
    assert_eq!(
        rle.counts.iter().map(|&c| u64::from(c)).sum::<u64>(),
        160 * 120
    );
    assert_eq!(rle.to_mask().unwrap(), mask);
    let png = mask.to_png().unwrap();
    let back = image::load_from_memory(&png).unwrap().to_luma8();
    let bits: Vec<u8> = back.as_raw().iter().map(|&v| u8::from(v > 0)).collect();
    assert_eq!(bits, mask.as_slice());
}
