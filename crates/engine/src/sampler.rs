//! Choosing the next token from logits: greedy, or temperature → top-k → top-p → draw, in the
//! order transformers' `generate` applies its logits warpers.

use crate::error::EngineError;
use crate::rng::SplitMix64;

/// How to pick tokens. `temperature == 0` means greedy (argmax) and ignores the rest.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// Divides the logits; 0 = greedy. Must be finite and ≥ 0.
    pub temperature: f32,
    /// Keep only the k most likely tokens; 0 = no limit.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`; 1 = off.
    pub top_p: f32,
    /// Seed of the sampler's generator; the same seed and inputs give the same tokens.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// # Errors
    /// Negative or non-finite temperature, `top_p` outside (0, 1].
    pub fn validate(&self) -> Result<(), EngineError> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(EngineError::invalid(
                "temperature",
                format!("{} must be finite and >= 0", self.temperature),
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(EngineError::invalid(
                "top_p",
                format!("{} must be in (0, 1]", self.top_p),
            ));
        }
        Ok(())
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }
}

/// Per-sequence sampler state.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: SplitMix64,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        Self {
            params,
            rng: SplitMix64::new(params.seed),
        }
    }

    /// Picks a token id from one row of logits.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.params.is_greedy() {
            return argmax(logits);
        }
        let t = self.params.temperature;
        let mut candidates: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.is_nan())
            .map(|(i, &l)| (i as u32, l / t))
            .collect();
        if candidates.is_empty() {
            return 0;
        }
        // Descending by logit; ties keep the lower id first (stable sort).
        candidates.sort_by(|a, b| b.1.total_cmp(&a.1));
        if self.params.top_k > 0 {
            candidates.truncate(self.params.top_k);
        }
        let max = f64::from(candidates[0].1);
        let mut probs: Vec<f64> = candidates
            .iter()
            .map(|c| (f64::from(c.1) - max).exp())
            .collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if self.params.top_p < 1.0 {
            let mut cumulative = 0.0;
            let keep = probs
                .iter()
                .position(|p| {
                    cumulative += p;
                    cumulative >= f64::from(self.params.top_p)
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
        }
        let total: f64 = probs.iter().sum();
        let mut u = self.rng.next_f64() * total;
        for (i, p) in probs.iter().enumerate() {
            if u < *p {
                return candidates[i].0;
            }
            u -= p;
        }
        candidates[probs.len() - 1].0
    }
}

/// Index of the largest logit; the first one on ties (as `torch.argmax`), NaN never wins.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_value = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_value {
            best = i;
            best_value = v;
        }
    }
    best as u32
}

/// `log softmax(logits)[token]` of the unmodified distribution (temperature 1, no filtering).
pub fn logprob(logits: &[f32], token: u32) -> f32 {
    let max = logits
        .iter()
        .copied()
        .filter(|v| !v.is_nan())
        .fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits
        .iter()
        .filter(|v| !v.is_nan())
        .map(|&v| f64::from(v - max).exp())
        .sum();
    let chosen = logits
        .get(token as usize)
        .copied()
        .unwrap_or(f32::NEG_INFINITY);
    (f64::from(chosen - max) - sum.ln()) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(temperature: f32, top_k: usize, top_p: f32, seed: u64) -> Sampler {
        Sampler::new(SamplingParams {
            temperature,
            top_k,
            top_p,
            seed,
        })
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::new(SamplingParams::default());
        assert_eq!(s.sample(&[0.1, 3.0, 3.0, -1.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 1.0]), 1);
    }

    #[test]
    fn same_seed_gives_same_tokens_and_other_seeds_differ() {
        let logits: Vec<f32> = (0..50).map(|i| ((i * 7) % 13) as f32 * 0.3).collect();
        let draw = |seed| {
            let mut s = sampler(1.0, 0, 1.0, seed);
            (0..40).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn top_k_one_is_greedy() {
        let logits = [0.5, 2.0, 1.9, -3.0];
        let mut s = sampler(5.0, 1, 1.0, 3);
        for _ in 0..20 {
            assert_eq!(s.sample(&logits), 1);
        }
    }

    #[test]
    fn top_p_keeps_the_smallest_nucleus() {
        // probs ≈ [0.665, 0.245, 0.090]: top_p 0.6 keeps only the first, 0.8 the first two.
        let logits = [2.0f32, 1.0, 0.0];
        let mut s = sampler(1.0, 0, 0.6, 11);
        assert!((0..50).all(|_| s.sample(&logits) == 0));
        let mut s = sampler(1.0, 0, 0.8, 11);
        let drawn: std::collections::HashSet<u32> = (0..200).map(|_| s.sample(&logits)).collect();
        assert_eq!(drawn, [0, 1].into_iter().collect());
    }

    #[test]
    fn sampling_frequencies_follow_the_distribution() {
        let logits = [0.0f32, (3.0f32).ln()]; // p = [0.25, 0.75]
        let mut s = sampler(1.0, 0, 1.0, 99);
        let ones = (0..4000).filter(|_| s.sample(&logits) == 1).count();
        assert!((2800..3200).contains(&ones), "{ones}");
    }

    #[test]
    fn invalid_parameters_name_the_field() {
        let p = SamplingParams {
            temperature: -1.0,
            ..SamplingParams::default()
        };
        assert!(
            p.validate()
                .unwrap_err()
                .to_string()
                .contains("temperature")
        );
        let p = SamplingParams {
            top_p: 0.0,
            ..SamplingParams::default()
        };
        assert!(p.validate().unwrap_err().to_string().contains("top_p"));
    }

    #[test]
    fn logprob_is_log_softmax() {
        let lp = logprob(&[0.0, (3.0f32).ln()], 1);
        assert!((lp - 0.75f32.ln()).abs() < 1e-6);
    }
}
