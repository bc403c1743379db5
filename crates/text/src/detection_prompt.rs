//! Task prompts for detection and segmentation: `detect a ; b` and `segment a ; b` (spec §8;
//! big_vision README `detect {things}` / `segment {things}`, model-card examples
//! `detect {obj} ; {obj}`).
//!
//! Labels are trimmed and checked: the output grammar ([`crate::detection`]) uses `;` between
//! objects and `<`/`>` around location tokens, and a newline would end the prompt, so labels
//! containing them are rejected rather than rewritten.

use crate::detection_error::DetectionError;

/// Characters a label must not contain.
const RESERVED: [char; 5] = [';', '<', '>', '\n', '\r'];

/// `"detect " + labels.join(" ; ")`.
///
/// # Errors
/// [`DetectionError::EmptyLabelList`] for no labels, [`DetectionError::EmptyLabel`] for a blank
/// label, [`DetectionError::ReservedCharacter`] for a label containing `;`, `<`, `>` or a
/// newline.
pub fn detect_prompt(labels: &[&str]) -> Result<String, DetectionError> {
    task_prompt("detect", labels)
}

/// `"segment " + labels.join(" ; ")`.
///
/// # Errors
/// As for [`detect_prompt`].
pub fn segment_prompt(labels: &[&str]) -> Result<String, DetectionError> {
    task_prompt("segment", labels)
}

fn task_prompt(task: &'static str, labels: &[&str]) -> Result<String, DetectionError> {
    if labels.is_empty() {
        return Err(DetectionError::EmptyLabelList { task });
    }
    let mut cleaned = Vec::with_capacity(labels.len());
    for (index, label) in labels.iter().enumerate() {
        let label = label.trim();
        if label.is_empty() {
            return Err(DetectionError::EmptyLabel { index });
        }
        if let Some(found) = label.chars().find(|c| RESERVED.contains(c)) {
            return Err(DetectionError::ReservedCharacter {
                index,
                label: label.to_owned(),
                found,
            });
        }
        cleaned.push(label);
    }
    Ok(format!("{task} {}", cleaned.join(" ; ")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_joined_with_spaced_semicolons() {
        assert_eq!(detect_prompt(&["cat"]).unwrap(), "detect cat");
        assert_eq!(detect_prompt(&["a", " b "]).unwrap(), "detect a ; b");
        assert_eq!(
            segment_prompt(&["red car", "猫"]).unwrap(),
            "segment red car ; 猫"
        );
    }

    #[test]
    fn empty_label_lists_are_errors() {
        let err = detect_prompt(&[]).unwrap_err();
        assert_eq!(err, DetectionError::EmptyLabelList { task: "detect" });
        assert!(err.to_string().contains("empty"), "{err}");
        assert!(segment_prompt(&[]).is_err());
    }

    #[test]
    fn blank_labels_are_errors() {
        assert_eq!(
            segment_prompt(&["cat", "  "]).unwrap_err(),
            DetectionError::EmptyLabel { index: 1 }
        );
    }

    #[test]
    fn labels_with_grammar_characters_are_errors() {
        for (label, found) in [
            ("a;b", ';'),
            ("<loc0001>", '<'),
            ("x>", '>'),
            ("a\nb", '\n'),
        ] {
            let err = detect_prompt(&["ok", label]).unwrap_err();
            assert!(
                matches!(err, DetectionError::ReservedCharacter { index: 1, found: f, .. } if f == found),
                "{label:?}: {err}"
            );
        }
    }
}
