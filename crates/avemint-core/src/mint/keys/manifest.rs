//! `manifest.json`: the on-disk source of truth for which key is in which state.
//!
//! Several instances share one keys directory, so the manifest (not any
//! process's memory) decides which key is **next** (published, not yet signing),
//! **current** (signing) and **retired** (published until every token it signed
//! has expired). It is replaced atomically (temp file, fsync, rename), after the
//! key files it names are on disk, so a reader never sees a manifest naming a
//! key that is not there yet. The state transitions here are pure functions of
//! the manifest and a clock, so they are unit-tested without files.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::KeyError;
use super::algorithms::Algorithm;
use super::fs::{io_error, write_atomic};
use avemint_base::clock::UnixTime;

/// The manifest's file name inside the keys directory.
pub(crate) const MANIFEST_FILE: &str = "manifest.json";
/// The only manifest format so far.
pub(crate) const MANIFEST_VERSION: u32 = 1;

/// A key's place in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    /// Published, not signing yet.
    Next,
    /// Signs new tokens. Exactly one key is current.
    Current,
    /// Published until the tokens it signed have expired, then pruned.
    Retired,
}

impl KeyState {
    /// The lower-case name (`next`, `current`, `retired`).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Next => "next",
            Self::Current => "current",
            Self::Retired => "retired",
        }
    }
}

/// One key as the manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyEntry {
    /// RFC 7638 thumbprint; checked against the key file on every load.
    pub kid: String,
    pub alg: Algorithm,
    /// The PKCS#8 PEM file's name inside the keys directory.
    pub file: String,
    /// When the key was created. A next key is published from then on.
    pub created: UnixTime,
    pub state: KeyState,
    /// When the key became current.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activated: Option<UnixTime>,
    /// When the key stopped signing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired: Option<UnixTime>,
}

/// The manifest document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub keys: Vec<KeyEntry>,
}

/// Why a lifecycle step cannot happen now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LifecycleError {
    #[error("there is no next key to promote; run `avemint keys generate` first")]
    NoNext,
    #[error(
        "the next key {kid} was published {age}s ago; verifiers may cache the JWKS for {lead}s, so it may sign only in {wait}s (use --force to rotate anyway)"
    )]
    NextTooNew {
        kid: String,
        age: u64,
        lead: u64,
        wait: u64,
    },
}

impl Default for Manifest {
    fn default() -> Self {
        Self {
            version: MANIFEST_VERSION,
            keys: Vec::new(),
        }
    }
}

impl Manifest {
    /// Reads `dir/manifest.json`; `None` when it does not exist.
    pub(crate) fn read(dir: &Path) -> Result<Option<Self>, KeyError> {
        let path = dir.join(MANIFEST_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(&path, &e)),
        };
        let manifest: Self = serde_json::from_slice(&bytes).map_err(|e| KeyError::Manifest {
            path: path.clone(),
            reason: format!("not a valid manifest (line {} column {})", e.line(), e.column()),
        })?;
        manifest.check().map_err(|reason| KeyError::Manifest { path, reason })?;
        Ok(Some(manifest))
    }

    /// Writes `dir/manifest.json` atomically (temp file, fsync, rename, fsync of the directory).
    pub(crate) fn write(&self, dir: &Path) -> Result<(), KeyError> {
        self.check().map_err(|reason| KeyError::Manifest {
            path: dir.join(MANIFEST_FILE),
            reason,
        })?;
        let mut text = serde_json::to_vec_pretty(self).map_err(|_| KeyError::Manifest {
            path: dir.join(MANIFEST_FILE),
            reason: "could not be serialized".into(),
        })?;
        text.push(b'\n');
        write_atomic(dir, MANIFEST_FILE, &text)
    }

    /// Structural rules: known version, unique kids and files, plain file names,
    /// at most one next key, exactly one current key unless empty.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.version != MANIFEST_VERSION {
            return Err(format!("unsupported manifest version {}", self.version));
        }
        let mut kids = std::collections::HashSet::new();
        let mut files = std::collections::HashSet::new();
        for k in &self.keys {
            if !kids.insert(k.kid.as_str()) {
                return Err(format!("kid {} appears twice", k.kid));
            }
            if !files.insert(k.file.as_str()) {
                return Err(format!("file {} appears twice", k.file));
            }
            // Written as unsigned numbers: a time before 1970 is not one avemint wrote.
            if [Some(k.created), k.activated, k.retired]
                .into_iter()
                .flatten()
                .any(|t| t < UnixTime::EPOCH)
            {
                return Err(format!("kid {} has a time before 1970", k.kid));
            }
            if !is_plain_pem_name(&k.file) {
                return Err(format!(
                    "file name {:?} must be a plain `*.pem` name inside the keys directory",
                    k.file
                ));
            }
        }
        let count = |s: KeyState| self.keys.iter().filter(|k| k.state == s).count();
        if count(KeyState::Next) > 1 {
            return Err("more than one key is `next`".into());
        }
        if !self.keys.is_empty() && count(KeyState::Current) != 1 {
            return Err("exactly one key must be `current`".into());
        }
        Ok(())
    }

    /// The signing key's entry.
    pub fn current(&self) -> Option<&KeyEntry> {
        self.keys.iter().find(|k| k.state == KeyState::Current)
    }

    /// The next key's entry.
    pub(crate) fn next(&self) -> Option<&KeyEntry> {
        self.keys.iter().find(|k| k.state == KeyState::Next)
    }

    /// Adds a freshly generated key: current if there is none, otherwise next.
    /// A previous next key (which never signed anything) is dropped and returned,
    /// so its file can be removed.
    pub(crate) fn add(&mut self, mut entry: KeyEntry) -> Option<KeyEntry> {
        if self.current().is_none() {
            entry.state = KeyState::Current;
            entry.activated = Some(entry.created);
            self.keys.push(entry);
            return None;
        }
        let replaced = self
            .keys
            .iter()
            .position(|k| k.state == KeyState::Next)
            .map(|i| self.keys.remove(i));
        entry.state = KeyState::Next;
        entry.activated = None;
        self.keys.push(entry);
        replaced
    }

    /// Checks that the next key has been published for at least `lead`.
    pub(crate) fn check_next_ready(&self, now: UnixTime, lead: Duration) -> Result<(), LifecycleError> {
        let next = self.next().ok_or(LifecycleError::NoNext)?;
        let age = now.saturating_duration_since(next.created).as_secs();
        if age < lead.as_secs() {
            return Err(LifecycleError::NextTooNew {
                kid: next.kid.clone(),
                age,
                lead: lead.as_secs(),
                wait: lead.as_secs() - age,
            });
        }
        Ok(())
    }

    /// current → retired, next → current. The caller adds a new next key.
    pub(crate) fn rotate(&mut self, now: UnixTime) -> Result<(), LifecycleError> {
        if self.next().is_none() {
            return Err(LifecycleError::NoNext);
        }
        for k in &mut self.keys {
            match k.state {
                KeyState::Current => {
                    k.state = KeyState::Retired;
                    k.retired = Some(now);
                }
                KeyState::Next => {
                    k.state = KeyState::Current;
                    k.activated = Some(now);
                }
                KeyState::Retired => {}
            }
        }
        Ok(())
    }

    /// True when automatic rotation (every `every`) is due at `now` and safe (the
    /// next key has been published for `lead`).
    pub(crate) fn rotation_due(&self, now: UnixTime, every: Duration, lead: Duration) -> bool {
        let Some(current) = self.current() else {
            return false;
        };
        let since = current.activated.unwrap_or(current.created);
        since + every <= now && self.check_next_ready(now, lead).is_ok()
    }

    /// Removes retired keys that stopped signing at least `hold` ago and returns them.
    pub(crate) fn prune(&mut self, now: UnixTime, hold: Duration) -> Vec<KeyEntry> {
        let expired = |k: &KeyEntry| k.state == KeyState::Retired && k.retired.unwrap_or(k.created) + hold <= now;
        let (gone, kept): (Vec<_>, Vec<_>) = self.keys.drain(..).partition(expired);
        self.keys = kept;
        gone
    }
}

/// A file name with no directory part, not hidden, ending in `.pem`.
pub(crate) fn is_plain_pem_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name.ends_with(".pem")
        && !name.contains(['/', '\\'])
        && name != ".pem"
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LEAD: Duration = Duration::from_secs(300);
    const HOLD: Duration = Duration::from_secs(1000);

    fn t(secs: i64) -> UnixTime {
        UnixTime::from_secs(secs)
    }

    fn entry(kid: &str, created: i64) -> KeyEntry {
        KeyEntry {
            kid: kid.into(),
            alg: Algorithm::Es256,
            file: format!("{kid}.pem"),
            created: t(created),
            state: KeyState::Next,
            activated: None,
            retired: None,
        }
    }

    #[test]
    fn first_key_is_current_then_next_and_a_new_next_replaces_the_old() {
        let mut m = Manifest::default();
        assert!(m.add(entry("a", 10)).is_none());
        assert_eq!(m.current().map(|k| k.kid.as_str()), Some("a"));
        assert_eq!(m.current().and_then(|k| k.activated), Some(t(10)));
        assert!(m.add(entry("b", 20)).is_none());
        assert_eq!(m.next().map(|k| k.kid.as_str()), Some("b"));
        let dropped = m.add(entry("c", 30)).expect("old next dropped");
        assert_eq!(dropped.kid, "b");
        assert_eq!(m.next().map(|k| k.kid.as_str()), Some("c"));
        m.check().expect("valid");
    }

    #[test]
    fn rotation_retires_current_and_promotes_next() {
        let mut m = Manifest::default();
        m.add(entry("a", 0));
        assert_eq!(m.rotate(t(5)), Err(LifecycleError::NoNext));
        m.add(entry("b", 0));
        m.rotate(t(500)).expect("rotates");
        let a = m.keys.iter().find(|k| k.kid == "a").expect("a");
        assert_eq!((a.state, a.retired), (KeyState::Retired, Some(t(500))));
        let b = m.current().expect("current");
        assert_eq!((b.kid.as_str(), b.activated), ("b", Some(t(500))));
        assert!(m.next().is_none());
        m.check().expect("valid");
    }

    #[test]
    fn a_next_key_signs_only_after_the_cache_lifetime() {
        let mut m = Manifest::default();
        m.add(entry("a", 0));
        m.add(entry("b", 1000));
        assert!(matches!(
            m.check_next_ready(t(1299), LEAD),
            Err(LifecycleError::NextTooNew { wait: 1, .. })
        ));
        assert!(m.check_next_ready(t(1300), LEAD).is_ok());
        // Due after `every` since activation, and only once the next key is old enough.
        let every = Duration::from_secs(1200);
        assert!(!m.rotation_due(t(1199), every, LEAD));
        assert!(!m.rotation_due(t(1250), every, LEAD), "next too new");
        assert!(m.rotation_due(t(1300), every, LEAD));
    }

    #[test]
    fn prune_keeps_retired_keys_for_the_hold_and_never_touches_current_or_next() {
        let mut m = Manifest::default();
        m.add(entry("a", 0));
        m.add(entry("b", 0));
        m.rotate(t(100)).expect("rotate");
        m.add(entry("c", 100));
        assert!(m.prune(t(1099), HOLD).is_empty());
        let gone = m.prune(t(1100), HOLD);
        assert_eq!(gone.iter().map(|k| k.kid.as_str()).collect::<Vec<_>>(), vec!["a"]);
        assert_eq!(m.keys.len(), 2);
        assert!(m.prune(UnixTime::from_secs(i64::MAX), HOLD).is_empty());
    }

    #[test]
    fn check_refuses_broken_manifests() {
        let mut m = Manifest::default();
        m.add(entry("a", 0));
        let mut two_current = m.clone();
        two_current.keys.push(KeyEntry {
            state: KeyState::Current,
            ..entry("b", 0)
        });
        assert!(two_current.check().is_err());
        let mut dup = m.clone();
        dup.keys.push(entry("a", 1));
        assert!(dup.check().is_err());
        let mut escape = m.clone();
        escape.keys[0].file = "../etc/passwd.pem".into();
        assert!(escape.check().is_err());
        let mut version = m;
        version.version = 2;
        assert!(version.check().is_err());
    }

    proptest! {
        /// Whatever sequence of adds, rotations and prunes happens, the manifest stays
        /// valid and the signing key is never removed.
        #[test]
        fn lifecycle_keeps_invariants(ops in proptest::collection::vec(0u8..3, 1..40)) {
            let mut m = Manifest::default();
            m.add(entry("k0", 0));
            let mut now = 0i64;
            let mut n = 0;
            for op in ops {
                now += 400;
                match op {
                    0 => { n += 1; m.add(entry(&format!("k{n}"), now)); }
                    1 => { let _ = m.rotate(t(now)); }
                    _ => { m.prune(t(now), HOLD); }
                }
                prop_assert!(m.check().is_ok());
                prop_assert!(m.current().is_some());
            }
        }
    }
}
