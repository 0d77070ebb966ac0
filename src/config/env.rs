//! The environment as a source of settings: the process's, an in-memory one (tests, the demo, benchmarks), one laid
//! over another (`avemint dev`), or none.
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

/// Values laid over another environment (`avemint dev`: the emulator's client, throw-away keys, the in-memory
/// store): a name set in `over` wins, and hides its `_FILE` form below it, so the two never meet as "both set".
pub struct Overlay<E> {
    pub over: BTreeMap<String, String>,
    pub under: E,
}

impl<E: Env> Env for Overlay<E> {
    fn var(&self, name: &str) -> Option<String> {
        if let Some(v) = self.over.get(name) {
            return Some(v.clone());
        }
        if name
            .strip_suffix("_FILE")
            .is_some_and(|stem| self.over.contains_key(stem))
        {
            return None;
        }
        self.under.var(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overlay_wins_and_hides_the_file_form_below_it() {
        let under: BTreeMap<String, String> = [("A", "below"), ("A_FILE", "/x"), ("B", "b"), ("C_FILE", "/c")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let env = Overlay {
            over: [("A".to_owned(), "over".to_owned())].into_iter().collect(),
            under,
        };
        assert_eq!(env.var("A").as_deref(), Some("over"));
        assert_eq!(env.var("A_FILE"), None);
        assert_eq!(env.var("B").as_deref(), Some("b"));
        assert_eq!(env.var("C_FILE").as_deref(), Some("/c"));
        assert_eq!(env.var("D"), None);
    }
}
