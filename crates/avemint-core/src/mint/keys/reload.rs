//! `LiveKeys`: the live key ring of a running instance, swapped atomically.
//!
//! Requests take an `Arc<KeyRing>` snapshot (a read lock held for one pointer
//! copy), so a reload never blocks or fails a request: a new ring is built off
//! to the side and swapped in only if it loads completely; otherwise the old one
//! stays and the problem is logged. The process's one watcher
//! (`avemint_base::reload::watch`) re-reads the directory when the manifest changes
//! (polled once a second: it works on shared volumes and mounted secrets, where
//! change notifications do not) and immediately on SIGHUP; `maintain_forever`
//! runs automatic rotation when configured.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use super::manifest::MANIFEST_FILE;
use super::rotation::{KeyDir, KeyPolicy, pem_files};
use super::{KeyError, KeyRing};
use avemint_base::clock::Clock;
pub use avemint_base::reload::Reload;
pub use avemint_base::secret::SecretKind;

/// How often automatic rotation checks whether a rotation or prune is due.
pub(crate) const MAINTAIN_INTERVAL: Duration = Duration::from_secs(30);

/// What the directory looked like at the last load: the manifest's bytes, or
/// (without a manifest) the key files' names, sizes and modification times.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fingerprint {
    Manifest(Vec<u8>),
    Files(Vec<(PathBuf, u64, Option<SystemTime>)>),
}

fn fingerprint(dir: &Path) -> Fingerprint {
    match std::fs::read(dir.join(MANIFEST_FILE)) {
        Ok(bytes) => Fingerprint::Manifest(bytes),
        Err(_) => Fingerprint::Files(
            pem_files(dir)
                .unwrap_or_default()
                .into_iter()
                .map(|p| {
                    let meta = std::fs::metadata(&p).ok();
                    let len = meta.as_ref().map_or(0, std::fs::Metadata::len);
                    let modified = meta.and_then(|m| m.modified().ok());
                    (p, len, modified)
                })
                .collect(),
        ),
    }
}

/// The live keys of one instance.
pub struct LiveKeys {
    dir: KeyDir,
    policy: KeyPolicy,
    ring: RwLock<Arc<KeyRing>>,
    seen: Mutex<Fingerprint>,
    /// Decides when automatic rotation and pruning are due, and stamps new keys.
    clock: Clock,
}

impl LiveKeys {
    /// Prepares the directory (a current and a next key, generated with the
    /// policy's algorithm; legacy files migrated) and loads it. A read-only
    /// directory (a mounted secret) is used as it is, if it holds a current key.
    pub fn open(dir: &Path, policy: KeyPolicy, clock: Clock) -> Result<Self, KeyError> {
        let key_dir = KeyDir::new(dir);
        if dir.exists() {
            // Refuse exposed keys before anything else touches them.
            super::rotation::check_all_private(dir)?;
        }
        if let Err(e) = key_dir.ensure(policy.algorithm, clock.now()) {
            match KeyRing::load(dir) {
                Ok(_) if matches!(e, KeyError::Io { .. } | KeyError::NotOwner { .. }) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "keys directory is not writable; using its keys as they are");
                }
                _ => return Err(e),
            }
        }
        Self::from_ring(key_dir, policy, KeyRing::load(dir)?, clock)
    }

    fn from_ring(dir: KeyDir, policy: KeyPolicy, ring: KeyRing, clock: Clock) -> Result<Self, KeyError> {
        let seen = fingerprint(dir.path());
        Ok(Self {
            dir,
            policy,
            ring: RwLock::new(Arc::new(ring)),
            seen: Mutex::new(seen),
            clock,
        })
    }

    /// The current snapshot.
    pub fn current(&self) -> Arc<KeyRing> {
        self.ring
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Re-reads the directory and swaps the new ring in. Returns true if the key set changed.
    /// On failure the previous ring stays in place.
    pub(crate) fn reload(&self) -> Result<bool, KeyError> {
        // Recorded before loading: if the load fails, the next change is noticed
        // (and a directory that stays broken is reported once, not every second).
        *self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = fingerprint(self.dir.path());
        let ring = KeyRing::load(self.dir.path())?;
        let mut slot = self.ring.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let changed = slot.etag() != ring.etag() || slot.signing_key().kid() != ring.signing_key().kid();
        if changed {
            tracing::info!(
                current = ring.signing_key().kid(),
                published = ring.keys().len(),
                "signing keys reloaded"
            );
        }
        *slot = Arc::new(ring);
        Ok(changed)
    }

    /// Reloads if the directory changed since the last load.
    pub(crate) fn reload_if_changed(&self) -> Result<bool, KeyError> {
        let now = fingerprint(self.dir.path());
        if *self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner) == now {
            return Ok(false);
        }
        self.reload()
    }

    /// Runs automatic rotation if configured, then reloads.
    fn maintain(&self) -> Result<(), KeyError> {
        self.dir.maintain(&self.policy, self.clock.now())?;
        self.reload_if_changed().map(|_| ())
    }

    /// Automatic rotation and pruning, checked every `MAINTAIN_INTERVAL` (changes made by
    /// `avemint keys` and SIGHUP are picked up by `avemint_base::reload::watch`, through [`Reload`]).
    pub async fn maintain_forever(self: Arc<Self>) {
        let mut maintain = tokio::time::interval(MAINTAIN_INTERVAL);
        maintain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            maintain.tick().await;
            let keys = self.clone();
            match tokio::task::spawn_blocking(move || keys.maintain()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    avemint_base::metrics::secret_reload(SecretKind::SigningKeys, false);
                    tracing::error!(error = %e, "signing keys not rotated or reloaded; the previous keys stay in use")
                }
                Err(e) => tracing::error!(error = %e, "key maintenance task failed"),
            }
        }
    }
}

/// The keys directory, reloaded by the process's one watcher: on a change of the directory, and always on SIGHUP.
impl Reload for LiveKeys {
    fn kind(&self) -> SecretKind {
        SecretKind::SigningKeys
    }

    fn name(&self) -> String {
        format!("signing keys in {}", self.dir.path().display())
    }

    fn reload(&self, forced: bool) -> Result<bool, String> {
        let result = if forced {
            LiveKeys::reload(self)
        } else {
            self.reload_if_changed()
        };
        result.map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mint::keys::Algorithm;
    use crate::mint::keys::rotation::MIN_ROTATION;
    use avemint_base::clock::{ManualClock, UnixTime};

    #[test]
    fn reload_swaps_on_change_and_keeps_the_old_ring_on_failure() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let keys = LiveKeys::open(tmp.path(), KeyPolicy::default(), Clock::System).expect("open");
        let before = keys.current();
        assert!(!keys.reload_if_changed().expect("no change"));
        KeyDir::new(tmp.path())
            .rotate(Algorithm::EdDsa, Clock::System.now(), true)
            .expect("rotate");
        assert!(keys.reload_if_changed().expect("changed"));
        let after = keys.current();
        assert_ne!(before.etag(), after.etag());
        assert_eq!(after.signing_key().kid(), before.kids()[1], "the next key now signs");
        assert!(
            after.kids().contains(&before.kids()[0]),
            "the retired key is still published"
        );
        // A broken directory leaves the ring as it was.
        std::fs::write(tmp.path().join(MANIFEST_FILE), b"{not json").expect("write");
        assert!(keys.reload_if_changed().is_err());
        assert_eq!(keys.current().etag(), after.etag());
        assert!(!keys.reload_if_changed().expect("reported once"));
    }

    /// Automatic rotation is due `MIN_ROTATION` (days) after the current key began signing: with a
    /// manual clock the watcher's step rotates exactly then, and the new ring is served at once.
    #[test]
    fn automatic_rotation_happens_when_the_clock_says_it_is_due() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let clock = ManualClock::new(UnixTime::from_secs(1_700_000_000));
        let policy = KeyPolicy {
            algorithm: Algorithm::Es256,
            rotation: Some(MIN_ROTATION),
        };
        let keys = LiveKeys::open(tmp.path(), policy, clock.clock()).expect("open");
        let first = keys.current().signing_key().kid().to_owned();
        clock.advance(MIN_ROTATION - Duration::from_secs(1));
        keys.maintain().expect("maintain");
        assert_eq!(keys.current().signing_key().kid(), first, "not due yet");
        clock.advance(Duration::from_secs(1));
        keys.maintain().expect("maintain");
        let ring = keys.current();
        assert_ne!(ring.signing_key().kid(), first, "rotated when due");
        assert!(
            ring.kids().contains(&first.as_str()),
            "the retired key is still published"
        );
        let manifest = KeyDir::new(tmp.path()).read_manifest().expect("manifest");
        let retired = manifest.keys.iter().find(|k| k.kid == first).expect("retired entry");
        assert_eq!(retired.retired, Some(clock.now()), "stamped with the clock's time");
    }
}
