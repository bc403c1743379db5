//! The waiting queue, first come first served, after vLLM v1
//! `vllm/v1/core/sched/request_queue.py` (`FCFSRequestQueue`): new requests join the back,
//! preempted ones return to the front so they are the first readmitted. Bounded for new
//! arrivals only (`--max-waiting`); a preempted sequence is never refused.

use std::collections::VecDeque;

use crate::sequence::{RequestId, Sequence};
use crate::submit_error::SubmitError;

#[derive(Debug)]
pub struct RequestQueue {
    queue: VecDeque<Sequence>,
    max_waiting: usize,
}

impl RequestQueue {
    pub fn new(max_waiting: usize) -> Self {
        Self {
            queue: VecDeque::new(),
            max_waiting,
        }
    }

    /// Appends a new arrival.
    ///
    /// # Errors
    /// [`SubmitError::QueueFull`] at `max_waiting` requests.
    pub fn push_new(&mut self, seq: Sequence) -> Result<(), SubmitError> {
        if self.queue.len() >= self.max_waiting {
            return Err(SubmitError::QueueFull {
                max_waiting: self.max_waiting,
            });
        }
        self.queue.push_back(seq);
        Ok(())
    }

    /// Returns a preempted sequence to the front.
    pub fn push_preempted(&mut self, seq: Sequence) {
        self.queue.push_front(seq);
    }

    pub fn front(&self) -> Option<&Sequence> {
        self.queue.front()
    }

    pub fn front_mut(&mut self) -> Option<&mut Sequence> {
        self.queue.front_mut()
    }

    pub fn pop_front(&mut self) -> Option<Sequence> {
        self.queue.pop_front()
    }

    /// Removes and returns every sequence of `request`.
    pub fn remove_request(&mut self, request: RequestId) -> Vec<Sequence> {
        let (gone, keep): (Vec<_>, Vec<_>) =
            self.queue.drain(..).partition(|s| s.request_id == request);
        self.queue = keep.into();
        gone
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}
