//! Shared fixture access for the segment crate's tests: `tests/fixtures/postprocess/` at the
//! workspace root (copied from the reference fixture set; see its README).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use candle_core::npy::NpzTensors;
use paligemma_segment::MaskDecoder;

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/postprocess")
        .join(name)
}

pub fn decoder() -> MaskDecoder {
    MaskDecoder::from_npz(fixture("vae-random.npz")).expect("load vae-random.npz")
}

/// `decoder-cases.npz`, read array by array.
pub struct Cases(NpzTensors);

impl Cases {
    pub fn open() -> Self {
        Self(NpzTensors::new(fixture("decoder-cases.npz")).expect("open decoder-cases.npz"))
    }

    pub fn has(&self, name: &str) -> bool {
        self.0.get_shape_and_dtype(name).is_ok()
    }

    pub fn shape(&self, name: &str) -> Vec<usize> {
        self.0.get_shape_and_dtype(name).unwrap().0.dims().to_vec()
    }

    fn flat(&self, name: &str) -> candle_core::Tensor {
        self.0
            .get(name)
            .unwrap()
            .unwrap_or_else(|| panic!("no array {name}"))
            .flatten_all()
            .unwrap()
    }

    pub fn f32(&self, name: &str) -> Vec<f32> {
        self.flat(name).to_vec1().unwrap()
    }

    pub fn f64(&self, name: &str) -> Vec<f64> {
        self.flat(name).to_vec1().unwrap()
    }

    pub fn i32(&self, name: &str) -> Vec<i32> {
        self.flat(name).to_vec1().unwrap()
    }

    pub fn u8(&self, name: &str) -> Vec<u8> {
        self.flat(name).to_vec1().unwrap()
    }
}
