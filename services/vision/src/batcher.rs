//! Dynamic batching for the vision tier: preprocessed images wait in one bounded queue; a worker
//! takes the first, gathers more until `--max-batch` images or `--max-wait-us` have passed, runs
//! one batched SigLIP forward and routes each image's soft tokens back to its own caller.
//!
//! Workers are plain threads (the forward is long, CPU- or GPU-bound work that must not sit on
//! the async runtime); `--max-concurrent` of them run batches at once, one gathering while the
//! others compute. A request whose deadline passed, or whose caller went away (tonic drops the
//! handler future on cancellation or `grpc-timeout`), is dropped before the forward instead of
//! costing a batch slot. A failing or panicking forward fails only the requests of that batch.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::cache::Features;
use crate::error::VisionError;

/// Runs the model on `batch` images whose preprocessed pixels are concatenated in `pixels`
/// (`[batch, 3, H, W]` flattened); returns one [`Features`] per image, in order.
pub type EncodeBatch = dyn Fn(Vec<f32>, usize) -> Result<Vec<Features>, VisionError> + Send + Sync;

/// How requests are grouped into forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// Most images per forward (≥ 1).
    pub max_batch: usize,
    /// How long the first image of a batch waits for company.
    pub max_wait: Duration,
    /// Images queued for the encoder beyond which new requests are refused (≥ 1).
    pub max_waiting: usize,
    /// Forwards running at once (≥ 1).
    pub workers: usize,
}

/// Counters of a [`Batcher`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchStats {
    /// Forwards run.
    pub batches: u64,
    /// Images encoded by those forwards (mean batch size = `images / batches`).
    pub images: u64,
    /// Requests dropped before their forward: deadline passed or caller gone.
    pub expired: u64,
}

#[derive(Debug, Default)]
struct Counters {
    batches: AtomicU64,
    images: AtomicU64,
    expired: AtomicU64,
}

struct Job {
    pixels: Vec<f32>,
    deadline: Option<Instant>,
    reply: oneshot::Sender<Result<Arc<Features>, VisionError>>,
}

/// A queued image; dropping it withdraws the request (the worker skips it).
#[derive(Debug)]
pub struct Ticket(oneshot::Receiver<Result<Arc<Features>, VisionError>>);

impl Ticket {
    /// Waits for the image's soft tokens.
    ///
    /// # Errors
    /// [`VisionError::DeadlineExceeded`] when the deadline passed before the forward started;
    /// [`VisionError::EncodeFailed`] when the forward failed; [`VisionError::ShuttingDown`] when
    /// the workers stopped first.
    pub async fn wait(self) -> Result<Arc<Features>, VisionError> {
        self.0.await.map_err(|_| VisionError::ShuttingDown)?
    }
}

/// The queue in front of the encoder; dropping it lets the workers finish what is queued and
/// exit.
pub struct Batcher {
    queue: SyncSender<Job>,
    config: BatchConfig,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("config", &self.config)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Batcher {
    /// Starts `config.workers` worker threads running `encode`.
    ///
    /// # Errors
    /// The OS refused to start a thread.
    pub fn start(config: BatchConfig, encode: Arc<EncodeBatch>) -> std::io::Result<Self> {
        let config = BatchConfig {
            max_batch: config.max_batch.max(1),
            max_waiting: config.max_waiting.max(1),
            workers: config.workers.max(1),
            ..config
        };
        let (queue, rx) = sync_channel(config.max_waiting);
        let rx = Arc::new(Mutex::new(rx));
        let counters = Arc::new(Counters::default());
        for i in 0..config.workers {
            let (rx, encode, counters) = (Arc::clone(&rx), Arc::clone(&encode), counters.clone());
            std::thread::Builder::new()
                .name(format!("vision-batch-{i}"))
                .spawn(move || worker(&rx, config, &*encode, &counters))?;
        }
        Ok(Self {
            queue,
            config,
            counters,
        })
    }

    /// The effective configuration (counts clamped to ≥ 1).
    pub fn config(&self) -> BatchConfig {
        self.config
    }

    /// Queues one image's pixels and waits for its soft tokens ([`Self::submit`] then
    /// [`Ticket::wait`]).
    ///
    /// # Errors
    /// As [`Self::submit`] and [`Ticket::wait`].
    pub async fn encode(
        &self,
        pixels: Vec<f32>,
        deadline: Option<Instant>,
    ) -> Result<Arc<Features>, VisionError> {
        self.submit(pixels, deadline)?.wait().await
    }

    /// Queues one image's pixels without waiting.
    ///
    /// # Errors
    /// [`VisionError::QueueFull`] when `max_waiting` images are already queued (nothing is
    /// queued then); [`VisionError::ShuttingDown`] when the workers are gone.
    pub fn submit(
        &self,
        pixels: Vec<f32>,
        deadline: Option<Instant>,
    ) -> Result<Ticket, VisionError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            pixels,
            deadline,
            reply,
        };
        self.queue.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => VisionError::QueueFull {
                limit: self.config.max_waiting,
            },
            TrySendError::Disconnected(_) => VisionError::ShuttingDown,
        })?;
        Ok(Ticket(answer))
    }

    /// Counters since start.
    pub fn stats(&self) -> BatchStats {
        BatchStats {
            batches: self.counters.batches.load(Ordering::Relaxed),
            images: self.counters.images.load(Ordering::Relaxed),
            expired: self.counters.expired.load(Ordering::Relaxed),
        }
    }
}

fn worker(rx: &Mutex<Receiver<Job>>, config: BatchConfig, encode: &EncodeBatch, c: &Counters) {
    loop {
        // Only the gathering worker holds the queue; the others are computing meanwhile.
        let jobs = {
            let rx = rx.lock().unwrap_or_else(PoisonError::into_inner);
            match gather(&rx, config) {
                Some(jobs) => jobs,
                None => return,
            }
        };
        run(jobs, encode, c);
    }
}

/// Blocks for one job, then takes more until the batch is full or `max_wait` has passed since
/// the first arrived. `None` once the queue is closed and empty.
fn gather(rx: &Receiver<Job>, config: BatchConfig) -> Option<Vec<Job>> {
    let first = rx.recv().ok()?;
    let until = Instant::now() + config.max_wait;
    let mut jobs = vec![first];
    while jobs.len() < config.max_batch {
        let left = until.saturating_duration_since(Instant::now());
        let next = if left.is_zero() {
            rx.try_recv().ok()
        } else {
            // Timed out or closed: either way the batch is complete.
            rx.recv_timeout(left).ok()
        };
        match next {
            Some(job) => jobs.push(job),
            None => break,
        }
    }
    Some(jobs)
}

fn run(jobs: Vec<Job>, encode: &EncodeBatch, c: &Counters) {
    let now = Instant::now();
    let mut live = Vec::with_capacity(jobs.len());
    for job in jobs {
        if job.reply.is_closed() {
            c.expired.fetch_add(1, Ordering::Relaxed);
        } else if job.deadline.is_some_and(|d| d <= now) {
            c.expired.fetch_add(1, Ordering::Relaxed);
            let _ = job.reply.send(Err(VisionError::DeadlineExceeded));
        } else {
            live.push(job);
        }
    }
    if live.is_empty() {
        return;
    }
    let batch = live.len();
    let mut pixels = Vec::with_capacity(live.iter().map(|j| j.pixels.len()).sum());
    for job in &mut live {
        pixels.append(&mut job.pixels);
    }
    c.batches.fetch_add(1, Ordering::Relaxed);
    c.images.fetch_add(batch as u64, Ordering::Relaxed);
    let started = Instant::now();
    let outcome = catch_unwind(AssertUnwindSafe(|| encode(pixels, batch)));
    tracing::debug!(
        batch,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "vision batch"
    );
    let failure = match outcome {
        Ok(Ok(features)) if features.len() == batch => {
            for (job, f) in live.into_iter().zip(features) {
                let _ = job.reply.send(Ok(Arc::new(f)));
            }
            return;
        }
        Ok(Ok(features)) => format!("{} outputs for a batch of {batch}", features.len()),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "the encoder panicked".to_string(),
    };
    tracing::error!(batch, error = %failure, "vision batch failed");
    for job in live {
        let _ = job
            .reply
            .send(Err(VisionError::EncodeFailed(failure.clone())));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::Barrier;

    /// A fake encoder: each image's single value becomes `[value, batch size]`.
    fn echo() -> Arc<EncodeBatch> {
        Arc::new(|pixels: Vec<f32>, batch: usize| {
            Ok(pixels
                .iter()
                .map(|&v| Features {
                    rows: 1,
                    cols: 2,
                    values: vec![v, batch as f32],
                })
                .collect())
        })
    }

    fn config(max_batch: usize, max_wait_ms: u64) -> BatchConfig {
        BatchConfig {
            max_batch,
            max_wait: Duration::from_millis(max_wait_ms),
            max_waiting: 64,
            workers: 1,
        }
    }

    #[tokio::test]
    async fn concurrent_requests_share_one_forward_and_get_their_own_results() {
        let batcher = Arc::new(Batcher::start(config(4, 5_000), echo()).unwrap());
        let calls = (0..4).map(|i| {
            let b = Arc::clone(&batcher);
            tokio::spawn(async move { b.encode(vec![i as f32], None).await })
        });
        let results = futures_join(calls).await;
        for (i, r) in results.into_iter().enumerate() {
            assert_eq!(r.unwrap().values, vec![i as f32, 4.0], "request {i}");
        }
        assert_eq!(
            batcher.stats(),
            BatchStats {
                batches: 1,
                images: 4,
                expired: 0
            }
        );
    }

    #[tokio::test]
    async fn a_lone_request_runs_after_max_wait() {
        let batcher = Batcher::start(config(8, 1), echo()).unwrap();
        let f = batcher.encode(vec![7.0], None).await.unwrap();
        assert_eq!(f.values, vec![7.0, 1.0]);
    }

    #[tokio::test]
    async fn expired_deadlines_are_refused_without_running_the_encoder() {
        let batcher = Batcher::start(config(8, 1), echo()).unwrap();
        let past = Instant::now();
        let err = batcher.encode(vec![1.0], Some(past)).await.unwrap_err();
        assert!(matches!(err, VisionError::DeadlineExceeded), "{err:?}");
        assert_eq!(batcher.stats().batches, 0);
        assert_eq!(batcher.stats().expired, 1);
    }

    #[tokio::test]
    async fn a_full_queue_refuses_instead_of_waiting() {
        // The encoder blocks on a barrier, so the one worker stays busy with the first image.
        let gate = Arc::new(Barrier::new(2));
        let g = Arc::clone(&gate);
        let blocking: Arc<EncodeBatch> = Arc::new(move |pixels: Vec<f32>, _| {
            g.wait();
            Ok(vec![
                Features {
                    rows: 1,
                    cols: 1,
                    values: vec![0.0]
                };
                pixels.len()
            ])
        });
        let cfg = BatchConfig {
            max_waiting: 1,
            ..config(1, 0)
        };
        let batcher = Batcher::start(cfg, blocking).unwrap();
        let first = batcher.submit(vec![1.0], None).unwrap();
        while batcher.stats().batches == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        // The worker is busy with the first image; the second takes the only queue slot.
        let second = batcher.submit(vec![2.0], None).unwrap();
        let third = batcher.submit(vec![3.0], None).unwrap_err();
        assert!(
            matches!(third, VisionError::QueueFull { limit: 1 }),
            "{third:?}"
        );
        gate.wait();
        first.wait().await.unwrap();
        gate.wait();
        second.wait().await.unwrap();
        assert_eq!(batcher.stats().images, 2);
    }

    #[tokio::test]
    async fn a_panicking_forward_fails_its_batch_and_the_worker_survives() {
        let flaky: Arc<EncodeBatch> = Arc::new(|pixels: Vec<f32>, _| {
            assert!(pixels[0] >= 0.0, "negative pixel");
            Ok(vec![
                Features {
                    rows: 1,
                    cols: 1,
                    values: vec![pixels[0]]
                };
                1
            ])
        });
        let batcher = Batcher::start(config(1, 0), flaky).unwrap();
        let err = batcher.encode(vec![-1.0], None).await.unwrap_err();
        assert!(matches!(err, VisionError::EncodeFailed(_)), "{err:?}");
        let ok = batcher.encode(vec![2.0], None).await.unwrap();
        assert_eq!(ok.values, vec![2.0]);
    }

    async fn futures_join<T: Send + 'static>(
        handles: impl Iterator<Item = tokio::task::JoinHandle<T>>,
    ) -> Vec<T> {
        let mut out = Vec::new();
        for h in handles.collect::<Vec<_>>() {
            out.push(h.await.unwrap());
        }
        out
    }
}
