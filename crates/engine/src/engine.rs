//! The engine actor: one thread owns the [`Scheduler`] and the runner and loops
//! schedule → execute → update; requests arrive over a channel, each request's events leave
//! on its own bounded channel, and a `CancellationToken` (or a dropped receiver) aborts a
//! request, freeing its blocks before the next step. After TGI's `backends/v3/src/backend.rs`
//! batching loop and vLLM v1's `vllm/v1/engine/core.py` busy loop, with the state owned by one
//! thread instead of shared behind locks.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;

use candle_core::DType;
use paligemma_kv::{CacheGeometry, KvError};
use paligemma_model::GemmaDecoder;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::generate::FinishReason;
use crate::kv_store::{PagedKvStore, kv_layout};
use crate::runner::{ModelRunner, StepRunner};
use crate::scheduler::{EventKind, RequestEvent, Scheduler, SchedulerConfig, SchedulerStats};
use crate::sequence::{EngineRequest, RequestId};
use crate::submit_error::SubmitError;

/// Tokens per KV block unless configured (`--block-size`).
pub const DEFAULT_BLOCK_SIZE: usize = 16;
/// Requests waiting for admission at most (`--max-waiting`).
pub const DEFAULT_MAX_WAITING: usize = 256;
/// Tokens computed per step at most (`--max-batch-tokens`).
pub const DEFAULT_MAX_BATCH_TOKENS: usize = 8192;
/// Sequences per batch at most.
pub const DEFAULT_MAX_RUNNING: usize = 64;
/// Tokens the default KV budget holds: `--kv-cache-bytes` defaults to this × bytes per token.
pub const DEFAULT_CACHE_TOKENS: usize = 32 * 1024;

/// Engine limits; `kv_cache_bytes: None` derives the budget from the model
/// ([`DEFAULT_CACHE_TOKENS`] × bytes per token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    pub block_size: usize,
    pub kv_cache_bytes: Option<u64>,
    pub max_waiting: usize,
    pub max_batch_tokens: usize,
    pub max_running: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            block_size: DEFAULT_BLOCK_SIZE,
            kv_cache_bytes: None,
            max_waiting: DEFAULT_MAX_WAITING,
            max_batch_tokens: DEFAULT_MAX_BATCH_TOKENS,
            max_running: DEFAULT_MAX_RUNNING,
        }
    }
}

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("KV cache sizing: {0}")]
    Kv(#[from] KvError),
    #[error("allocating the KV cache: {0}")]
    Alloc(#[from] candle_core::Error),
    #[error("a limit is zero: `{field}` must be at least 1")]
    ZeroLimit { field: &'static str },
    #[error("spawning the engine thread: {0}")]
    Spawn(#[from] std::io::Error),
}

/// Metrics view of the engine, published after every step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub scheduler: SchedulerStats,
    /// Requests with a live event channel.
    pub live_requests: usize,
    /// Requests aborted by cancellation or a dropped receiver.
    pub cancelled: u64,
    /// Requests refused by the engine thread (queue full).
    pub rejected: u64,
}

enum Command {
    Submit {
        id: RequestId,
        req: Arc<EngineRequest>,
        events: mpsc::Sender<RequestEvent>,
        cancel: CancellationToken,
    },
}

/// A submitted request's event stream.
#[derive(Debug)]
pub struct RequestStream {
    pub id: RequestId,
    /// Bounded to the request's largest possible event count, so the engine never blocks.
    pub events: mpsc::Receiver<RequestEvent>,
}

/// Handle to the engine thread. Dropping every handle lets the thread finish its work and
/// exit; [`EngineHandle::shutdown`] also waits for it.
#[derive(Debug)]
pub struct EngineHandle {
    commands: std_mpsc::Sender<Command>,
    stats: watch::Receiver<EngineStats>,
    config: SchedulerConfig,
    geometry: CacheGeometry,
    next_id: AtomicU64,
    thread: Option<JoinHandle<()>>,
}

impl EngineHandle {
    /// Starts the engine thread for `decoder` with a paged cache sized by `cfg`.
    ///
    /// # Errors
    /// A budget below two blocks, a zero limit, allocation or thread failure.
    pub fn start(decoder: Arc<GemmaDecoder>, cfg: EngineConfig) -> Result<Self, StartError> {
        for (field, v) in [
            ("block_size", cfg.block_size),
            ("max_waiting", cfg.max_waiting),
            ("max_batch_tokens", cfg.max_batch_tokens),
            ("max_running", cfg.max_running),
        ] {
            if v == 0 {
                return Err(StartError::ZeroLimit { field });
            }
        }
        let dtype: DType = decoder.dtype();
        let layout = kv_layout(decoder.config(), dtype);
        let budget = cfg
            .kv_cache_bytes
            .unwrap_or(layout.bytes_per_token() * DEFAULT_CACHE_TOKENS as u64);
        let geometry = CacheGeometry::from_budget(layout, cfg.block_size, budget)?;
        tracing::info!(
            bytes_per_token = layout.bytes_per_token(),
            block_size = geometry.block_size,
            num_blocks = geometry.num_blocks,
            kv_cache_bytes = geometry.total_bytes(),
            token_capacity = geometry.token_capacity(),
            "paged KV cache"
        );
        let store = PagedKvStore::new(geometry, dtype, decoder.device())?;
        let config = SchedulerConfig {
            block_size: geometry.block_size,
            num_blocks: geometry.num_blocks,
            max_batch_tokens: cfg.max_batch_tokens,
            max_running: cfg.max_running,
            max_waiting: cfg.max_waiting,
            max_model_len: decoder.config().max_position_embeddings,
        };
        let scheduler = Scheduler::new(config)?;
        let runner = ModelRunner::new(decoder, store);
        let (commands, rx) = std_mpsc::channel();
        let (stats_tx, stats) = watch::channel(EngineStats {
            scheduler: scheduler.stats(),
            ..EngineStats::default()
        });
        let thread = std::thread::Builder::new()
            .name("paligemma-engine".into())
            .spawn(move || Actor::new(scheduler, runner, stats_tx).run(&rx))?;
        Ok(Self {
            commands,
            stats,
            config,
            geometry,
            next_id: AtomicU64::new(1),
            thread: Some(thread),
        })
    }

    pub fn geometry(&self) -> &CacheGeometry {
        &self.geometry
    }

    pub fn scheduler_config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// The latest published stats.
    pub fn stats(&self) -> EngineStats {
        *self.stats.borrow()
    }

    /// A receiver that changes after every step (for metrics exporters and tests).
    pub fn watch_stats(&self) -> watch::Receiver<EngineStats> {
        self.stats.clone()
    }

    /// Queues a request. Field and size checks happen here; a full waiting queue is reported
    /// as the stream's first event ([`EventKind::Rejected`]).
    ///
    /// # Errors
    /// [`SubmitError::Invalid`], [`SubmitError::TooLarge`], or [`SubmitError::ShutDown`].
    pub fn submit(
        &self,
        req: EngineRequest,
        cancel: CancellationToken,
    ) -> Result<RequestStream, SubmitError> {
        req.validate(self.config.max_model_len)?;
        Scheduler::check_fits(&self.config, &req)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // Every token and one end event per sample, plus a rejection: sends never wait.
        let capacity = req.n.saturating_mul(req.max_new_tokens.saturating_add(1)) + 1;
        let (events, rx) = mpsc::channel(capacity);
        self.commands
            .send(Command::Submit {
                id,
                req: Arc::new(req),
                events,
                cancel,
            })
            .map_err(|_| SubmitError::ShutDown)?;
        Ok(RequestStream { id, events: rx })
    }

    /// Stops taking requests and waits for the thread to finish the work it has.
    pub fn shutdown(mut self) {
        self.join();
    }

    fn join(&mut self) {
        let (tx, _) = std_mpsc::channel();
        drop(std::mem::replace(&mut self.commands, tx));
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("the engine thread panicked");
        }
    }
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        self.join();
    }
}

struct Live {
    events: mpsc::Sender<RequestEvent>,
    cancel: CancellationToken,
    /// Samples that have not yet ended.
    open: usize,
}

struct Actor<R: StepRunner> {
    scheduler: Scheduler,
    runner: R,
    live: HashMap<RequestId, Live>,
    stats_tx: watch::Sender<EngineStats>,
    cancelled: u64,
    rejected: u64,
}

impl<R: StepRunner> Actor<R> {
    fn new(scheduler: Scheduler, runner: R, stats_tx: watch::Sender<EngineStats>) -> Self {
        Self {
            scheduler,
            runner,
            live: HashMap::new(),
            stats_tx,
            cancelled: 0,
            rejected: 0,
        }
    }

    fn run(mut self, rx: &std_mpsc::Receiver<Command>) {
        let mut open = true;
        loop {
            if !self.scheduler.has_work() {
                if !open {
                    return;
                }
                match rx.recv() {
                    Ok(cmd) => self.handle(cmd),
                    Err(_) => return,
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(cmd) => self.handle(cmd),
                    Err(std_mpsc::TryRecvError::Empty) => break,
                    Err(std_mpsc::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            self.reap_cancelled();
            self.step();
            self.publish();
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Submit {
                id,
                req,
                events,
                cancel,
            } => {
                let n = req.n;
                match self.scheduler.add(id, req) {
                    Ok(()) => {
                        self.live.insert(
                            id,
                            Live {
                                events,
                                cancel,
                                open: n,
                            },
                        );
                    }
                    Err(e) => {
                        self.rejected += 1;
                        let _ = events.try_send(RequestEvent {
                            request: id,
                            sample: 0,
                            kind: EventKind::Rejected(Arc::new(e)),
                        });
                    }
                }
            }
        }
        self.publish();
    }

    /// Aborts requests whose token fired or whose receiver is gone, freeing their blocks.
    fn reap_cancelled(&mut self) {
        let gone: Vec<RequestId> = self
            .live
            .iter()
            .filter(|(_, l)| l.cancel.is_cancelled() || l.events.is_closed())
            .map(|(&id, _)| id)
            .collect();
        for id in gone {
            self.scheduler.abort(id);
            self.cancelled += 1;
            if let Some(l) = self.live.remove(&id) {
                let _ = l.events.try_send(RequestEvent {
                    request: id,
                    sample: 0,
                    kind: EventKind::Finished(FinishReason::Cancelled),
                });
            }
        }
    }

    fn step(&mut self) {
        if !self.scheduler.has_work() {
            return;
        }
        let plan = self.scheduler.schedule();
        if plan.is_empty() {
            return;
        }
        let _span = tracing::debug_span!(
            "step",
            batch_size = plan.seqs.len(),
            num_prefill_tokens = plan.num_prefill_tokens(),
            num_decode_seqs = plan.num_decode_seqs(),
        )
        .entered();
        let out = self.runner.execute(&plan, &self.scheduler);
        for ev in self.scheduler.update(&plan, out) {
            self.route(ev);
        }
    }

    fn route(&mut self, ev: RequestEvent) {
        let id = ev.request;
        let Some(live) = self.live.get_mut(&id) else {
            return;
        };
        let ends = matches!(
            ev.kind,
            EventKind::Finished(_) | EventKind::Failed(_) | EventKind::Rejected(_)
        );
        if live.events.try_send(ev).is_err() {
            // Receiver gone (a full channel cannot happen: it is sized for every event).
            self.scheduler.abort(id);
            self.cancelled += 1;
            self.live.remove(&id);
            return;
        }
        if ends {
            live.open = live.open.saturating_sub(1);
            if live.open == 0 {
                self.live.remove(&id);
            }
        }
    }

    fn publish(&self) {
        self.stats_tx.send_replace(EngineStats {
            scheduler: self.scheduler.stats(),
            live_requests: self.live.len(),
            cancelled: self.cancelled,
            rejected: self.rejected,
        });
    }
}
