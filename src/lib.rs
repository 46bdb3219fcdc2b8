//! modelgate: a tiny, fast, stateless HTTP router for OpenAI-compatible LLM inference.
//!
//! Layers (imports point downward only; `tests/layering.rs` enforces it):
//! - L0 pure: `buf`, `balance`, `slab`, `timer`, `hash`, `config`, `secrets`, `auth`, `ratelimit`,
//!   `resp`, `scan`, `multipart`, `router`, `h1`, `error`, `usage`, `metrics`, `accesslog`,
//!   `discovery`, `profile`
//! - L1 transport: `net`
//! - L2 protocol: `conn`, `upstream`, `admin`
//! - L3 runtime: `cli`, `control`, `server`, `worker`, `resolver`, `health`, `limitstore`,
//!   `prober`, `ready` (and `main.rs`)
//!
//! See `docs/ARCHITECTURE.md`.

pub mod accesslog;
pub mod auth;
pub mod balance;
pub mod buf;
pub mod config;
pub mod discovery;
pub mod error;
pub mod h1;
pub mod hash;
pub mod metrics;
pub mod multipart;
pub mod profile;
pub mod ratelimit;
pub mod resp;
pub mod router;
pub mod scan;
pub mod secrets;
pub mod slab;
pub mod timer;
pub mod usage;

pub mod net;

pub mod admin;
pub mod conn;
pub mod upstream;

pub mod cli;
pub mod control;
pub mod health;
pub mod limitstore;
pub mod prober;
pub mod ready;
pub mod resolver;
pub mod server;
pub mod worker;
