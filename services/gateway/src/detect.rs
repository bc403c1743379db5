//! Detect and Segment: structured `<loc>`/`<seg>` output (spec §9, §10).
//!
//! A [`DetectRequest`] or [`SegmentRequest`] becomes a [`ValidDetect`]: the labels are turned
//! into the task prompt (`detect a ; b` / `segment a ; b`, [`paligemma_text::detect_prompt`])
//! and the result goes through the same [`validate`] and pipeline as `GenerateUnary`. The
//! generated text is then parsed with [`parse_detections`] against the ORIGINAL image's size,
//! read from the image header only (decoding the image is the vision tier's job, and an image
//! it rejects is rejected with its status before the header matters). Segment decodes a mask
//! for every valid object with 16 seg codes ([`paligemma_segment::object_mask`]).
//!
//! This file owns the request rules specific to the two RPCs and the conversion of parsed
//! objects to the proto; the service wiring lives in [`crate::service`].

use std::io::Cursor;

use paligemma_proto::v1 as pb;
use paligemma_proto::v1::{DetectRequest, DetectResponse, SegmentRequest, SegmentResponse};
use paligemma_segment::{MaskDecoder, SegmentError, object_mask};
use paligemma_text::{
    BoxConvention, DetectedObject, ImageSize, Item, LabelMode, ParseOptions, Tokenizer,
    detect_prompt, parse_detections, segment_prompt,
};

use crate::error::{GatewayError, ValidationError};
use crate::validate::{Limits, ValidRequest, validate};

/// Which structured task a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// Boxes only (`detect ...`).
    Detect,
    /// Boxes and masks (`segment ...`).
    Segment,
}

/// The fields Detect and Segment requests share (Detect never asks for PNGs).
#[derive(Debug, Clone, Default)]
pub struct DetectFields {
    pub image: Vec<u8>,
    pub labels: Vec<String>,
    pub model: String,
    pub max_new_tokens: u32,
    pub box_convention: i32,
    pub exact_labels: bool,
    pub return_png: bool,
}

impl From<DetectRequest> for DetectFields {
    fn from(r: DetectRequest) -> Self {
        Self {
            image: r.image,
            labels: r.labels,
            model: r.model,
            max_new_tokens: r.max_new_tokens,
            box_convention: r.box_convention,
            exact_labels: r.exact_labels,
            return_png: false,
        }
    }
}

impl From<SegmentRequest> for DetectFields {
    fn from(r: SegmentRequest) -> Self {
        Self {
            image: r.image,
            labels: r.labels,
            model: r.model,
            max_new_tokens: r.max_new_tokens,
            box_convention: r.box_convention,
            exact_labels: r.exact_labels,
            return_png: r.return_png,
        }
    }
}

/// A Detect/Segment request that passed every rule.
#[derive(Debug, Clone)]
pub struct ValidDetect {
    /// The generation to run (prompt = the task prompt; greedy).
    pub generate: ValidRequest,
    /// How to parse the output.
    pub options: ParseOptions,
    /// Segment: also encode each mask as PNG.
    pub return_png: bool,
}

/// Checks the task-specific fields (labels, box convention), builds the task prompt, and
/// validates the rest as a [`pb::GenerateRequest`]; every broken rule is reported together.
///
/// # Errors
/// [`GatewayError::Invalid`] naming each field at fault (`labels`, `box_convention`, `image`,
/// `model`, `max_new_tokens`); [`GatewayError::Text`] if the tokenizer fails.
pub fn validate_detect(
    task: Task,
    fields: DetectFields,
    limits: &Limits,
    tokenizer: &Tokenizer,
) -> Result<ValidDetect, GatewayError> {
    let mut errors = Vec::new();
    let labels: Vec<&str> = fields.labels.iter().map(String::as_str).collect();
    let prompt = match task {
        Task::Detect => detect_prompt(&labels),
        Task::Segment => segment_prompt(&labels),
    };
    let prompt = match prompt {
        Ok(p) if p.len() > limits.max_prompt_bytes => {
            errors.push(ValidationError::LabelsTooLarge {
                size: p.len(),
                limit: limits.max_prompt_bytes,
            });
            String::new()
        }
        Ok(p) => p,
        Err(e) => {
            errors.push(ValidationError::Labels(e));
            String::new()
        }
    };
    let convention = match pb::BoxConvention::try_from(fields.box_convention) {
        Ok(pb::BoxConvention::Unspecified | pb::BoxConvention::BigVision) => {
            BoxConvention::BigVision
        }
        Ok(pb::BoxConvention::Demo) => BoxConvention::Demo,
        Err(_) => {
            errors.push(ValidationError::BoxConvention(fields.box_convention));
            BoxConvention::default()
        }
    };
    let request = pb::GenerateRequest {
        image: fields.image,
        prompt,
        model: fields.model,
        max_new_tokens: fields.max_new_tokens,
        ..Default::default()
    };
    let generate = match validate(request, limits, tokenizer) {
        Ok(valid) => valid,
        Err(GatewayError::Invalid(more)) => {
            errors.extend(more);
            return Err(GatewayError::Invalid(errors));
        }
        Err(other) => return Err(other),
    };
    if !errors.is_empty() {
        return Err(GatewayError::Invalid(errors));
    }
    let labels = if fields.exact_labels {
        LabelMode::Exact
    } else {
        LabelMode::Trimmed
    };
    Ok(ValidDetect {
        generate,
        options: ParseOptions {
            convention,
            labels,
            unique_labels: false,
        },
        return_png: fields.return_png,
    })
}

/// The original image's width and height, from its header alone.
///
/// # Errors
/// [`ValidationError::ImageHeader`] when the format is unknown or the header unreadable, or
/// a dimension is zero.
pub fn image_size(image: &[u8]) -> Result<ImageSize, ValidationError> {
    let header = |e: &dyn std::fmt::Display| ValidationError::ImageHeader(e.to_string());
    let (width, height) = image::ImageReader::new(Cursor::new(image))
        .with_guessed_format()
        .map_err(|e| header(&e))?
        .into_dimensions()
        .map_err(|e| header(&e))?;
    ImageSize::new(width, height).map_err(|e| header(&e))
}

/// What a pipeline run produced, for [`structured_response`].
#[derive(Debug, Clone)]
pub struct Generated {
    /// The generated text without `<eos>`.
    pub text: String,
    pub usage: Option<pb::Usage>,
    /// The original image's size.
    pub size: ImageSize,
}

/// Parses `generated` and, when `masks` is given, decodes the mask of each valid object with
/// seg codes. CPU-bound with masks: call it from a blocking thread.
///
/// Objects with problems, and pieces of text that look like objects but do not parse, go to
/// `invalid`; so does an object whose codes the configured codebook cannot decode.
///
/// # Errors
/// [`GatewayError::Mask`] when decoding or encoding a mask fails for another reason.
pub fn structured_response(
    generated: Generated,
    options: &ParseOptions,
    masks: Option<(&MaskDecoder, bool)>,
) -> Result<DetectResponse, GatewayError> {
    let parsed = parse_detections(&generated.text, generated.size, options);
    let mut objects = Vec::new();
    let mut invalid = Vec::new();
    for item in &parsed.items {
        match item {
            Item::Object(obj) if obj.is_valid() => {
                let mask = match (masks, obj.seg.is_some()) {
                    (Some((decoder, png)), true) => match mask(decoder, obj, png)? {
                        Ok(mask) => Some(mask),
                        Err(problem) => {
                            invalid.push(invalid_object(&obj.text, vec![problem]));
                            continue;
                        }
                    },
                    _ => None,
                };
                objects.push(object(obj, mask));
            }
            Item::Object(obj) => {
                let problems = obj.problems.iter().map(ToString::to_string).collect();
                invalid.push(invalid_object(&obj.text, problems));
            }
            Item::Text(text) if item.is_malformed() => invalid.push(invalid_object(
                text,
                vec![
                    "not an object: expected 4 <loc> tokens back to back, optionally 16 <seg> \
                     tokens, then a label"
                        .to_string(),
                ],
            )),
            Item::Text(_) => {}
        }
    }
    Ok(DetectResponse {
        objects,
        invalid,
        raw_text: generated.text,
        usage: generated.usage,
        image_width: generated.size.width(),
        image_height: generated.size.height(),
    })
}

/// The Segment face of a [`DetectResponse`] (the two messages have the same fields).
pub fn into_segment(r: DetectResponse) -> SegmentResponse {
    SegmentResponse {
        objects: r.objects,
        invalid: r.invalid,
        raw_text: r.raw_text,
        usage: r.usage,
        image_width: r.image_width,
        image_height: r.image_height,
    }
}

/// The object's mask; `Ok(Err(problem))` when the object cannot have one (a problem of the
/// model output, reported with the object), `Err` when the decoder itself fails.
fn mask(
    decoder: &MaskDecoder,
    obj: &DetectedObject,
    png: bool,
) -> Result<Result<pb::Mask, String>, GatewayError> {
    let binary = match object_mask(decoder, obj) {
        Ok(m) => m,
        Err(
            e @ (SegmentError::WrongCodeCount { .. }
            | SegmentError::CodeOutOfRange { .. }
            | SegmentError::NoSegCodes
            | SegmentError::InvalidObject(_)
            | SegmentError::BadBox { .. }),
        ) => return Ok(Err(e.to_string())),
        Err(
            e @ (SegmentError::Npz { .. }
            | SegmentError::MissingTensor { .. }
            | SegmentError::BadShape { .. }
            | SegmentError::BadDType { .. }
            | SegmentError::BadMaskSize { .. }
            | SegmentError::Compute(_)
            | SegmentError::Resize(_)
            | SegmentError::Png(_)),
        ) => return Err(GatewayError::Mask(e)),
    };
    let rle = binary.to_coco_rle();
    Ok(Ok(pb::Mask {
        size: rle.size.to_vec(),
        counts: rle.counts,
        png: if png {
            binary.to_png().map_err(GatewayError::Mask)?
        } else {
            Vec::new()
        },
        area: binary.area(),
    }))
}

fn object(obj: &DetectedObject, mask: Option<pb::Mask>) -> pb::DetectedObject {
    let (n, p) = (obj.box_norm, obj.box_px);
    pb::DetectedObject {
        label: obj.label.clone().unwrap_or_default(),
        r#box: Some(pb::NormalizedBox {
            ymin: n.ymin,
            xmin: n.xmin,
            ymax: n.ymax,
            xmax: n.xmax,
        }),
        box_px: Some(pb::PixelBox {
            ymin: p.ymin,
            xmin: p.xmin,
            ymax: p.ymax,
            xmax: p.xmax,
        }),
        loc_bins: obj.bins.to_array().map(u32::from).to_vec(),
        seg: obj
            .seg
            .map(|s| s.map(u32::from).to_vec())
            .unwrap_or_default(),
        mask,
    }
}

fn invalid_object(text: &str, problems: Vec<String>) -> pb::InvalidObject {
    pb::InvalidObject {
        text: text.to_string(),
        problems,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use paligemma_proto::v1::WireDtype;

    use super::*;

    fn tokenizer() -> Tokenizer {
        let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/models/pg1-32/tokenizer.json");
        Tokenizer::from_file(&path).unwrap()
    }

    fn limits() -> Limits {
        Limits {
            model_id: "pg1-32".into(),
            max_image_bytes: 100,
            max_prompt_bytes: 40,
            default_max_new_tokens: 64,
            max_new_tokens_limit: 1024,
            context: 200,
            default_wire_dtype: WireDtype::Unspecified,
            num_image_tokens: 16,
        }
    }

    fn fields(labels: &[&str]) -> DetectFields {
        DetectFields {
            image: vec![1, 2, 3],
            labels: labels.iter().map(ToString::to_string).collect(),
            ..Default::default()
        }
    }

    fn broken(err: GatewayError) -> Vec<&'static str> {
        match err {
            GatewayError::Invalid(e) => e.iter().map(ValidationError::field).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn labels_become_the_task_prompt() {
        let tok = tokenizer();
        let valid =
            validate_detect(Task::Segment, fields(&["cat", "dog"]), &limits(), &tok).unwrap();
        let layout = paligemma_text::PromptLayout::build(&tok, "segment cat ; dog", 16).unwrap();
        assert_eq!(valid.generate.prompt_ids, layout.ids);
        assert_eq!(valid.options.convention, BoxConvention::BigVision);
    }

    #[test]
    fn bad_labels_and_other_fields_are_reported_together() {
        let tok = tokenizer();
        let mut f = fields(&[]);
        f.box_convention = 9;
        f.image.clear();
        let err = validate_detect(Task::Detect, f, &limits(), &tok).unwrap_err();
        assert_eq!(broken(err), ["labels", "box_convention", "image"]);
        let err = validate_detect(Task::Detect, fields(&["a;b"]), &limits(), &tok).unwrap_err();
        assert_eq!(broken(err), ["labels"]);
        let long = "x".repeat(50);
        let err = validate_detect(Task::Detect, fields(&[&long]), &limits(), &tok).unwrap_err();
        assert_eq!(broken(err), ["labels"]);
    }

    #[test]
    fn the_image_size_comes_from_the_header() {
        let img = image::RgbImage::new(7, 3);
        let mut png = Cursor::new(Vec::new());
        img.write_to(&mut png, image::ImageFormat::Png).unwrap();
        let size = image_size(png.get_ref()).unwrap();
        assert_eq!((size.width(), size.height()), (7, 3));
        let err = image_size(b"not an image").unwrap_err();
        assert_eq!(err.field(), "image");
    }

    #[test]
    fn valid_invalid_and_malformed_objects_are_sorted_apart() {
        let text = "<loc0100><loc0200><loc0300><loc0400> cat ; \
                    <loc0500><loc0100><loc0400><loc0200> dog ; <loc0001><loc0002> x";
        let generated = Generated {
            text: text.into(),
            usage: None,
            size: ImageSize::new(1023, 2046).unwrap(),
        };
        let size = generated.size;
        let r = structured_response(generated, &ParseOptions::default(), None).unwrap();
        assert_eq!(r.objects.len(), 1);
        assert_eq!(r.objects[0].label, "cat");
        assert_eq!(r.objects[0].loc_bins, [100, 200, 300, 400]);
        let px = r.objects[0].box_px.unwrap();
        let parsed = parse_detections(text, size, &ParseOptions::default());
        let want = parsed.objects().next().unwrap().box_px;
        assert_eq!(
            (px.ymin, px.xmin, px.ymax, px.xmax),
            (want.ymin, want.xmin, want.ymax, want.xmax)
        );
        assert!(
            px.ymin.abs_diff(200) <= 1 && px.xmax.abs_diff(400) <= 1,
            "{px:?}"
        );
        assert_eq!(r.invalid.len(), 2, "{:?}", r.invalid);
        assert!(
            r.invalid[0].problems[0].contains("inverted"),
            "{:?}",
            r.invalid
        );
        assert_eq!((r.image_width, r.image_height), (1023, 2046));
        assert_eq!(r.raw_text, text);
    }
}
