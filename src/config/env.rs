//! The environment as a source of settings: the process's, an in-memory one (tests, the demo, benchmarks), or none.
//!
//! Why its own module: everything that reads settings takes an `Env`, so tests never touch the process environment.

use std::collections::BTreeMap;

/// Reads environment variables; injected so tests need not touch the process environment.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

/// An in-memory environment: tests, the demo and benchmarks build `Settings`
/// through the same loader as `serve`.
impl Env for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// An environment with nothing set.
pub(super) struct NoEnv;

impl Env for NoEnv {
    fn var(&self, _: &str) -> Option<String> {
        None
    }
}
