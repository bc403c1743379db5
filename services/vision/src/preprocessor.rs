//! Which image preprocessing a model directory asks for: the same search order as the CLI's
//! pipeline (and transformers' `AutoProcessor`), checked against the vision tower's input size.

use std::path::Path;

use paligemma_image::PreprocessorConfig;
use paligemma_model::ModelFiles;

use crate::error::VisionError;

/// `preprocessor_config.json` (hub checkpoints), else the `image_processor` section of
/// `processor_config.json` (what transformers 5.x `save_pretrained` writes), else the SigLIP
/// defaults at `image_size`.
///
/// # Errors
/// An unreadable or invalid config file, or a resize target other than
/// `image_size × image_size` pixels (the vision tower's input).
pub fn preprocessor_config(
    files: &ModelFiles,
    image_size: usize,
) -> Result<PreprocessorConfig, VisionError> {
    let processor_json = files.dir.join("processor_config.json");
    let cfg = if let Some(path) = &files.preprocessor_config {
        PreprocessorConfig::from_file(path).map_err(|source| VisionError::Preprocessor {
            path: path.clone(),
            source,
        })?
    } else if processor_json.is_file() {
        from_processor_json(&processor_json, image_size)?
    } else {
        PreprocessorConfig::square(image_size as u32)
    };
    if cfg.height as usize != image_size || cfg.width as usize != image_size {
        return Err(VisionError::PreprocessorSize {
            width: cfg.width,
            height: cfg.height,
            image_size,
        });
    }
    Ok(cfg)
}

fn from_processor_json(path: &Path, image_size: usize) -> Result<PreprocessorConfig, VisionError> {
    let bad_json = |message: String| VisionError::PreprocessorJson {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad_json(e.to_string()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad_json(e.to_string()))?;
    match value.get("image_processor") {
        Some(section) => PreprocessorConfig::from_json_value(section).map_err(|source| {
            VisionError::Preprocessor {
                path: path.to_path_buf(),
                source,
            }
        }),
        None => Ok(PreprocessorConfig::square(image_size as u32)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/models")
            .join(name)
    }

    fn scratch_dir(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("paligemma-vision-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn files_in(dir: &Path) -> ModelFiles {
        ModelFiles {
            dir: dir.to_path_buf(),
            config: dir.join("config.json"),
            weights: Vec::new(),
            tokenizer: None,
            preprocessor_config: Some(dir.join("preprocessor_config.json")).filter(|p| p.is_file()),
        }
    }

    #[test]
    fn fixture_preprocessor_config_matches_the_tower() {
        let files = ModelFiles::discover(&fixture("pg1-32")).unwrap();
        let cfg = preprocessor_config(&files, 32).unwrap();
        assert_eq!((cfg.width, cfg.height), (32, 32));
    }

    #[test]
    fn processor_config_section_is_used_when_preprocessor_config_is_absent() {
        let dir = scratch_dir("processor");
        let src = fixture("pg1-32").join("processor_config.json");
        std::fs::copy(src, dir.join("processor_config.json")).unwrap();
        let cfg = preprocessor_config(&files_in(&dir), 32).unwrap();
        assert_eq!((cfg.width, cfg.height), (32, 32));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn missing_configs_fall_back_to_siglip_defaults_at_the_tower_size() {
        let dir = scratch_dir("none");
        let cfg = preprocessor_config(&files_in(&dir), 48).unwrap();
        assert_eq!(cfg, PreprocessorConfig::square(48));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn resize_target_other_than_the_tower_size_is_refused() {
        let files = ModelFiles::discover(&fixture("pg1-32")).unwrap();
        let err = preprocessor_config(&files, 224).unwrap_err();
        assert!(
            matches!(
                err,
                VisionError::PreprocessorSize {
                    image_size: 224,
                    ..
                }
            ),
            "{err}"
        );
    }
}
