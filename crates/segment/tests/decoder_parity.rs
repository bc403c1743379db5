//! The mask decoder against big_vision's own output on random weights
//! (`decoder-cases.npz` `logits`, from `vae-random.npz`; fixture README §2-3).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn codebook_width_and_size_are_read_from_the_file() {
    let dec = common::decoder();
    assert_eq!(dec.codebook_width(), 512);
    assert_eq!(dec.num_codes(), 128);
}

#[test]
fn batched_decode_matches_big_vision_logits_within_1e4() {
    let dec = common::decoder();
    let cases = common::Cases::open();
    let codes: Vec<u16> = cases.i32("codes").iter().map(|&c| c as u16).collect();
    let expected = cases.f32("logits");
    let n = codes.len() / 16;
    assert_eq!(n, 11);
    let batch: Vec<&[u16]> = codes.chunks_exact(16).collect();
    let ours = dec.decode_batch(&batch).unwrap();
    let mut worst = 0.0f32;
    for (i, logits) in ours.iter().enumerate() {
        let reference = &expected[i * 4096..(i + 1) * 4096];
        let scale = reference.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        let diff = max_abs_diff(logits.as_slice(), reference);
        assert!(
            diff <= 1e-4 * scale,
            "row {i}: max |diff| {diff} (scale {scale})"
        );
        worst = worst.max(diff);
    }
    eprintln!("decoder: max |ours - big_vision logits| over {n} rows = {worst:e}");
}

#[test]
fn single_decode_matches_the_demo_decoder_called_one_row_at_a_time() {
    let dec = common::decoder();
    let cases = common::Cases::open();
    let codes: Vec<u16> = cases.i32("codes").iter().map(|&c| c as u16).collect();
    let expected = cases.f32("logits_space_b1");
    let mut worst = 0.0f32;
    for (i, row) in codes.chunks_exact(16).enumerate() {
        let logits = dec.decode(row).unwrap();
        let diff = max_abs_diff(logits.as_slice(), &expected[i * 4096..(i + 1) * 4096]);
        assert!(diff <= 1e-4, "row {i}: {diff}");
        worst = worst.max(diff);
    }
    eprintln!("decoder: max |ours - demo b1 logits| = {worst:e}");
}
