//! Counters of what the replica's generations did: the seam for metrics and for tests that
//! must observe a generation stopping (a cancelled client frees its KV cache).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use paligemma_engine::FinishReason;

/// A point-in-time copy of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Generations on the model right now.
    pub running: usize,
    /// Generations that reached the model (every stream that passed validation and got a
    /// permit).
    pub started: u64,
    /// Ended by the model's `<eos>`.
    pub finished_eos: u64,
    /// Ended at `max_new_tokens`.
    pub finished_length: u64,
    /// Ended by a caller-supplied stop id.
    pub finished_stop: u64,
    /// Stopped early because the client went away or broke the protocol mid-generation.
    pub finished_cancelled: u64,
    /// Ended by an engine or model error.
    pub failed: u64,
    /// Tokens generated over all generations.
    pub generated_tokens: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Stats {
    running: AtomicUsize,
    started: AtomicU64,
    eos: AtomicU64,
    length: AtomicU64,
    stop: AtomicU64,
    cancelled: AtomicU64,
    failed: AtomicU64,
    generated_tokens: AtomicU64,
}

/// Marks one generation running until dropped.
pub(crate) struct Running<'a>(&'a Stats);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Stats {
    pub(crate) fn start(&self) -> Running<'_> {
        self.started.fetch_add(1, Ordering::SeqCst);
        self.running.fetch_add(1, Ordering::SeqCst);
        Running(self)
    }

    pub(crate) fn finished(&self, reason: FinishReason, tokens: usize) {
        let counter = match reason {
            FinishReason::Eos => &self.eos,
            FinishReason::Length => &self.length,
            FinishReason::Stop => &self.stop,
            FinishReason::Cancelled => &self.cancelled,
        };
        counter.fetch_add(1, Ordering::SeqCst);
        self.generated_tokens
            .fetch_add(tokens as u64, Ordering::SeqCst);
    }

    pub(crate) fn failed(&self) {
        self.failed.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            running: self.running.load(Ordering::SeqCst),
            started: self.started.load(Ordering::SeqCst),
            finished_eos: self.eos.load(Ordering::SeqCst),
            finished_length: self.length.load(Ordering::SeqCst),
            finished_stop: self.stop.load(Ordering::SeqCst),
            finished_cancelled: self.cancelled.load(Ordering::SeqCst),
            failed: self.failed.load(Ordering::SeqCst),
            generated_tokens: self.generated_tokens.load(Ordering::SeqCst),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_counts_until_the_guard_drops_and_finishes_are_tallied_by_reason() {
        let stats = Stats::default();
        {
            let _a = stats.start();
            let _b = stats.start();
            assert_eq!(stats.snapshot().running, 2);
            stats.finished(FinishReason::Cancelled, 3);
            stats.finished(FinishReason::Length, 5);
        }
        stats.failed();
        let s = stats.snapshot();
        assert_eq!(
            s,
            StatsSnapshot {
                running: 0,
                started: 2,
                finished_length: 1,
                finished_cancelled: 1,
                failed: 1,
                generated_tokens: 8,
                ..StatsSnapshot::default()
            }
        );
    }
}
