//! Every test file starts with `mod common;` and `use common::*;`: the harness itself is the
//! `modelgate-testkit` crate in `tests/kit/`, compiled once for all test binaries.

#![allow(unused_imports)]

pub use modelgate_testkit::*;
