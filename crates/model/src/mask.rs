//! PaliGemma's prefix-LM attention mask (spec §6.5, matching transformers 5.x and big_vision).
//!
//! The prefix — image tokens, `<bos>`, prompt and the `\n` separator — is one bidirectional
//! block; every later (generated or suffix) token attends causally. Gemma 2's sliding layers
//! additionally drop keys `window` or more tokens behind the query, except that two prefix tokens
//! always see each other (transformers 5.x ORs the prefix block into the sliding mask).

use candle_core::{Device, Result, Tensor};

/// Which keys the tokens of one forward pass may attend to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaskSpec {
    /// Tokens already in the KV cache before this pass.
    pub past_len: usize,
    /// Tokens processed in this pass (queries).
    pub new_len: usize,
    /// Length of the bidirectional prefix, counted from the first token of the sequence.
    pub prefix_len: usize,
}

impl MaskSpec {
    /// Total keys visible to this pass.
    pub fn kv_len(&self) -> usize {
        self.past_len + self.new_len
    }

    /// Whether query at absolute position `q` may attend to key at absolute position `k`.
    pub fn allowed(&self, q: usize, k: usize, window: Option<usize>) -> bool {
        let both_prefix = q < self.prefix_len && k < self.prefix_len;
        let causal = k <= q && window.is_none_or(|w| q - k < w);
        both_prefix || causal
    }

    /// The additive f32 mask `[new_len, kv_len]` (0 or -inf), or `None` when every query may see
    /// every key (the common prefill and decode cases), so callers skip the add entirely.
    pub fn to_tensor(&self, window: Option<usize>, device: &Device) -> Result<Option<Tensor>> {
        let (t, s) = (self.new_len, self.kv_len());
        let mut data = Vec::with_capacity(t * s);
        let mut any_blocked = false;
        for qi in 0..t {
            let q = self.past_len + qi;
            for k in 0..s {
                if self.allowed(q, k, window) {
                    data.push(0f32);
                } else {
                    any_blocked = true;
                    data.push(f32::NEG_INFINITY);
                }
            }
        }
        if !any_blocked {
            return Ok(None);
        }
        Tensor::from_vec(data, (t, s), device).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(spec: MaskSpec, window: Option<usize>) -> Vec<String> {
        (0..spec.new_len)
            .map(|qi| {
                (0..spec.kv_len())
                    .map(|k| {
                        if spec.allowed(spec.past_len + qi, k, window) {
                            '1'
                        } else {
                            '.'
                        }
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn prefix_is_bidirectional_and_suffix_causal() {
        let spec = MaskSpec {
            past_len: 0,
            new_len: 5,
            prefix_len: 3,
        };
        assert_eq!(
            pattern(spec, None),
            ["111..", "111..", "111..", "1111.", "11111"]
        );
    }

    #[test]
    fn prefix_only_prefill_and_decode_need_no_mask() -> Result<()> {
        let dev = Device::Cpu;
        let prefill = MaskSpec {
            past_len: 0,
            new_len: 6,
            prefix_len: 6,
        };
        assert!(prefill.to_tensor(None, &dev)?.is_none());
        let decode = MaskSpec {
            past_len: 6,
            new_len: 1,
            prefix_len: 6,
        };
        assert!(decode.to_tensor(None, &dev)?.is_none());
        Ok(())
    }

    #[test]
    fn sliding_window_spares_the_prefix_block_only() {
        // Prefix of 4, window 2: prefix tokens see the whole prefix; later tokens see 2 keys.
        let spec = MaskSpec {
            past_len: 0,
            new_len: 6,
            prefix_len: 4,
        };
        assert_eq!(
            pattern(spec, Some(2)),
            ["1111..", "1111..", "1111..", "1111..", "...11.", "....11"]
        );
        let decode = MaskSpec {
            past_len: 6,
            new_len: 1,
            prefix_len: 4,
        };
        assert_eq!(pattern(decode, Some(2)), [".....11"]);
    }
}
