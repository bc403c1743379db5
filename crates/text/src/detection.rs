//! Parsing PaliGemma detection/segmentation output text into objects (spec §9, §10).
//!
//! The grammar follows the demo Space's `paligemma_parse.py` (`_SEGMENT_DETECT_RE` applied with
//! `re.match` until it fails, as in `extract_objs`), re-implemented by hand so that every match
//! is identical to Python's `re` module:
//!
//! ```text
//! (.*?)                       leading text, no newline (lazy: the first place the locs match)
//! (<loc\d{4}>){4}             ymin xmin ymax xmax, back to back
//! \s*  (<seg\d{3}>){16}?      optional mask codes, back to back
//! \s*  ([^;<>]+)?             optional label (longest run; keeps trailing spaces)
//! " "?  ("; ")?               optional separator
//! ```
//!
//! Leading free text and anything the grammar cannot match become [`Item::Text`] entries, in
//! order, so nothing is dropped. Validity follows big_vision's evaluator
//! (`evaluators/proj/paligemma/transfers/segmentation.py`): bins in the vocabulary range,
//! `ymax > ymin`, `xmax > xmin`, a non-empty pixel box, seg codes `<= 127`. Invalid objects are
//! kept with their [`ObjectProblem`]s, never repaired. Pixel boxes use the chosen
//! [`BoxConvention`] (default big_vision, see [`crate::detection_box`]).
//!
//! Deviations from Python: `\d` accepts ASCII digits only (Python also accepts other Unicode
//! decimal digits, which the model never emits).

use crate::detection_box::{
    self, BoxConvention, ImageSize, LocBins, MAX_SEG_CODE, NUM_SEG_CODES, NormBox, ObjectProblem,
    PixelBox,
};

/// How labels are reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LabelMode {
    /// Leading/trailing whitespace removed; a label that is only whitespace becomes `None`.
    #[default]
    Trimmed,
    /// Exactly as the demo's regex captures it (`"cat "` in `"cat ; dog"`).
    Exact,
}

/// Parser options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ParseOptions {
    /// Box convention (default [`BoxConvention::BigVision`]).
    pub convention: BoxConvention,
    /// Label reporting (default [`LabelMode::Trimmed`]).
    pub labels: LabelMode,
    /// Make labels unique like the demo app's `unique_labels=True`: a label already seen gets
    /// `'` appended until unique (a repeated missing label becomes `"'"`). Default off.
    pub unique_labels: bool,
}

/// One object found in the text.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectedObject {
    /// The label, `None` when the object has none.
    pub label: Option<String>,
    /// The four location bins as written.
    pub bins: LocBins,
    /// Normalised box in [`DetectedObject::convention`].
    pub box_norm: NormBox,
    /// Box in pixels of the original image in [`DetectedObject::convention`].
    pub box_px: PixelBox,
    /// The sixteen `<seg>` values, if present (as written; see `problems` for range).
    pub seg: Option<[u16; NUM_SEG_CODES]>,
    /// True when the seg tokens directly follow the locs (big_vision's token layout; the demo
    /// also accepts whitespace between them).
    pub segs_follow_locs: bool,
    /// Everything wrong with the object; empty when valid.
    pub problems: Vec<ObjectProblem>,
    /// The matched text, leading text excluded (the demo's `content`).
    pub text: String,
    /// The convention the boxes were computed in.
    pub convention: BoxConvention,
    /// The original image size the pixel box refers to.
    pub image: ImageSize,
}

impl DetectedObject {
    /// True when no [`ObjectProblem`] was found.
    pub fn is_valid(&self) -> bool {
        self.problems.is_empty()
    }

    /// True when the box alone is valid (seg-code problems ignored).
    pub fn box_is_valid(&self) -> bool {
        !self
            .problems
            .iter()
            .any(|p| !matches!(p, ObjectProblem::SegOutOfRange { .. }))
    }
}

/// A piece of the output, in text order.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// An object (four locs, optional segs and label).
    Object(DetectedObject),
    /// Text outside any object: free text, or a malformed object (see [`Item::is_malformed`]).
    Text(String),
}

impl Item {
    /// True for a [`Item::Text`] that contains `<loc` or `<seg`: the remains of an object the
    /// grammar rejected (fewer than 4 locs, spaced or short locs, fewer than 16 segs, ...).
    pub fn is_malformed(&self) -> bool {
        match self {
            Self::Object(_) => false,
            Self::Text(t) => t.contains("<loc") || t.contains("<seg"),
        }
    }

    /// The text this item covers.
    pub fn text(&self) -> &str {
        match self {
            Self::Object(o) => &o.text,
            Self::Text(t) => t,
        }
    }
}

/// The parsed output.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ParsedOutput {
    /// Objects and text, in order; concatenating [`Item::text`] gives back the input.
    pub items: Vec<Item>,
}

impl ParsedOutput {
    /// All objects, valid or not.
    pub fn objects(&self) -> impl Iterator<Item = &DetectedObject> {
        self.items.iter().filter_map(|i| match i {
            Item::Object(o) => Some(o),
            Item::Text(_) => None,
        })
    }

    /// The objects without problems.
    pub fn valid_objects(&self) -> impl Iterator<Item = &DetectedObject> {
        self.objects().filter(|o| o.is_valid())
    }

    /// True when some part of the text is a malformed object.
    pub fn has_malformed(&self) -> bool {
        self.items.iter().any(Item::is_malformed)
    }

    /// The object big_vision's segmentation evaluator would score, if it counts it valid: the
    /// output must start with 4 locs immediately followed by 16 segs, all in range, with a
    /// non-empty box (the evaluator reads only the first 20 tokens). Meaningful when parsed with
    /// [`BoxConvention::BigVision`].
    pub fn big_vision_object(&self) -> Option<&DetectedObject> {
        match self.items.first() {
            Some(Item::Object(o)) if o.seg.is_some() && o.segs_follow_locs && o.is_valid() => {
                Some(o)
            }
            _ => None,
        }
    }
}

/// Parses generated text (the decoded ids after the prompt, `<loc>`/`<seg>` kept) for an
/// original image of `size`. Never fails: problems are reported per object.
pub fn parse_detections(text: &str, size: ImageSize, opts: &ParseOptions) -> ParsedOutput {
    let mut items = Vec::new();
    let mut seen: Vec<Option<String>> = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let Some(m) = match_object(rest) else {
            items.push(Item::Text(rest.to_owned()));
            break;
        };
        if m.start > 0 {
            items.push(Item::Text(rest[..m.start].to_owned()));
        }
        let mut label = m.label.map(|l| match opts.labels {
            LabelMode::Exact => l.to_owned(),
            LabelMode::Trimmed => l.trim().to_owned(),
        });
        if label.as_deref() == Some("") {
            label = None;
        }
        if opts.unique_labels {
            while seen.contains(&label) {
                label = Some(format!("{}'", label.unwrap_or_default()));
            }
            seen.push(label.clone());
        }
        let (box_norm, box_px, mut problems) = detection_box::boxes(m.bins, size, opts.convention);
        if let Some(seg) = &m.seg {
            for (index, &value) in seg.iter().enumerate() {
                if value > MAX_SEG_CODE {
                    problems.push(ObjectProblem::SegOutOfRange { index, value });
                }
            }
        }
        items.push(Item::Object(DetectedObject {
            label,
            bins: m.bins,
            box_norm,
            box_px,
            seg: m.seg,
            segs_follow_locs: m.segs_follow_locs,
            problems,
            text: rest[m.start..m.end].to_owned(),
            convention: opts.convention,
            image: size,
        }));
        rest = &rest[m.end..];
    }
    ParsedOutput { items }
}

/// One regex match: byte offsets into the searched string.
struct Match<'a> {
    start: usize,
    end: usize,
    bins: LocBins,
    seg: Option<[u16; NUM_SEG_CODES]>,
    segs_follow_locs: bool,
    label: Option<&'a str>,
}

/// `re.match(_SEGMENT_DETECT_RE, s)`.
fn match_object(s: &str) -> Option<Match<'_>> {
    // `(.*?)`: try each start position up to (and including) the first newline.
    let mut start = None;
    for (i, c) in s.char_indices() {
        if let Some(bins) = loc_quad(&s[i..]) {
            start = Some((i, bins));
            break;
        }
        if c == '\n' {
            return None;
        }
    }
    let (start, (bins, locs_len)) = start?;
    let mut pos = start + locs_len;
    pos += skip_space(&s[pos..]);
    let (seg, segs_follow_locs) = match seg_run(&s[pos..]) {
        Some((codes, len)) => {
            let adjacent = pos == start + locs_len;
            pos += len;
            (Some(codes), adjacent)
        }
        None => (None, false),
    };
    pos += skip_space(&s[pos..]);
    let label_len = s[pos..].find([';', '<', '>']).unwrap_or(s.len() - pos);
    let label = (label_len > 0).then(|| &s[pos..pos + label_len]);
    pos += label_len;
    if s[pos..].starts_with(' ') {
        pos += 1;
    }
    if s[pos..].starts_with("; ") {
        pos += 2;
    }
    Some(Match {
        start,
        end: pos,
        bins,
        seg,
        segs_follow_locs,
        label,
    })
}

/// `<loc\d{4}>` four times at the start of `s`: the bins and the byte length.
fn loc_quad(s: &str) -> Option<(LocBins, usize)> {
    let mut v = [0u16; 4];
    let mut pos = 0;
    for slot in &mut v {
        *slot = token(&s[pos..], "<loc", 4)?;
        pos += "<loc>".len() + 4;
    }
    let bins = LocBins {
        ymin: v[0],
        xmin: v[1],
        ymax: v[2],
        xmax: v[3],
    };
    Some((bins, pos))
}

/// `<seg\d{3}>` sixteen times at the start of `s`: the codes and the byte length.
fn seg_run(s: &str) -> Option<([u16; NUM_SEG_CODES], usize)> {
    let mut codes = [0u16; NUM_SEG_CODES];
    let mut pos = 0;
    for slot in &mut codes {
        *slot = token(&s[pos..], "<seg", 3)?;
        pos += "<seg>".len() + 3;
    }
    Some((codes, pos))
}

/// `prefix` + exactly `digits` ASCII digits + `>` at the start of `s`.
fn token(s: &str, prefix: &str, digits: usize) -> Option<u16> {
    let body = s.strip_prefix(prefix)?.as_bytes();
    if body.len() <= digits || body[digits] != b'>' {
        return None;
    }
    body[..digits].iter().try_fold(0u16, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + u16::from(b - b'0'))
    })
}

/// Byte length of the leading run of Python `\s` characters (Unicode whitespace plus the
/// ASCII information separators U+001C..U+001F, which `str.isspace` also counts).
fn skip_space(s: &str) -> usize {
    s.char_indices()
        .find(|&(_, c)| !(c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)))
        .map_or(s.len(), |(i, _)| i)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(text: &str) -> ParsedOutput {
        let size = ImageSize::new(640, 480).unwrap();
        parse_detections(text, size, &ParseOptions::default())
    }

    #[test]
    fn multi_object_output_yields_trimmed_labels_by_default() {
        let out = parse(
            "<loc0123><loc0045><loc0890><loc0710> cat ; <loc0100><loc0200><loc0300><loc0400> dog",
        );
        let labels: Vec<_> = out.objects().map(|o| o.label.clone().unwrap()).collect();
        assert_eq!(labels, ["cat", "dog"]);
        let cat = out.objects().next().unwrap();
        assert_eq!(
            cat.box_px,
            PixelBox {
                ymin: 57,
                xmin: 28,
                ymax: 417,
                xmax: 444
            }
        );
        assert!(cat.is_valid());
    }

    #[test]
    fn items_concatenate_back_to_the_input() {
        let text =
            "Sure: <loc0010><loc0020><loc0500> x ; <loc0010><loc0020><loc0500><loc0600> car;;";
        let out = parse(text);
        let joined: String = out.items.iter().map(Item::text).collect();
        assert_eq!(joined, text);
        assert!(out.has_malformed());
        assert_eq!(out.objects().count(), 1);
    }

    #[test]
    fn a_newline_before_the_first_loc_stops_parsing() {
        let out = parse("caption:\n<loc0100><loc0200><loc0300><loc0400> cat");
        assert_eq!(out.items.len(), 1);
        assert!(out.items[0].is_malformed());
    }

    #[test]
    fn seg_codes_out_of_range_are_problems() {
        let segs = "<seg200>".to_owned() + &"<seg001>".repeat(15);
        let out = parse(&format!("<loc0100><loc0100><loc0900><loc0900>{segs} thing"));
        let obj = out.objects().next().unwrap();
        assert!(obj.box_is_valid());
        assert_eq!(
            obj.problems,
            vec![ObjectProblem::SegOutOfRange {
                index: 0,
                value: 200
            }]
        );
        assert!(out.big_vision_object().is_none());
    }

    #[test]
    fn short_tokens_are_not_tokens() {
        assert_eq!(token("<loc123>", "<loc", 4), None);
        assert_eq!(token("<loc0123>", "<loc", 4), Some(123));
        assert_eq!(token("<seg0012>", "<seg", 3), None);
        assert_eq!(token("<loc12a4>", "<loc", 4), None);
    }
}
