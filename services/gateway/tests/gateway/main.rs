//! The gateway over real gRPC on loopback, in front of canned vision and decoder servers
//! (the real tiers are tested in their own crates and end to end in the workspace `tests/`).

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

mod detect;
mod fakes;
mod generate;
mod models;
mod replicas;
