//! Reloading without a restart: secrets read from files (`*_FILE`) are re-read
//! when the file changes or on SIGHUP and swapped in atomically, and one
//! watcher drives every reload of the process (these secrets, the signing
//! keys of `mint::keys`, and on SIGHUP the configuration's routes and token
//! profiles, which the binary's `startup` reloads).
//!
//! Why: Ave rotates a client secret with no overlap (docs/ave-protocol.md §1.6),
//! session keys and hook secrets rotate on the operator's schedule, and none of
//! that should need a restart that drops in-flight requests.
//!
//! A [`LiveSecret`] hands out `Arc` snapshots (a read lock held for one pointer
//! copy, the pattern of `mint::keys::LiveKeys`), so a reload never blocks or
//! fails a request. Changes are found by the file's content (a SHA-256 digest of
//! what was read), polled every second: it follows the atomic renames and
//! symlink swaps of Kubernetes secret volumes and `systemd` credentials, and
//! works on shared volumes where change notifications do not. A reload that
//! fails (unreadable file, invalid value) keeps the old value, logs why (never
//! the value) and counts it in `avemint_secret_reloads_total`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use crate::secret::SecretKind;

/// How often the watched files are checked for changes.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// A SHA-256 digest of a file's content (compared, never shown).
#[derive(Clone, PartialEq, Eq)]
struct Digest([u8; 32]);

impl Digest {
    fn of(bytes: &[u8]) -> Self {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Self(out)
    }
}

/// The file a secret was read from, and a digest of what was read then.
#[derive(Clone)]
pub struct SecretFile {
    path: PathBuf,
    read: Digest,
    /// The setting that named the file, as the operator wrote it (e.g. `AVE_CLIENT_SECRET_FILE`, or the config
    /// file's `client_secret_file`), for log lines.
    setting: Option<String>,
}

impl std::fmt::Debug for SecretFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretFile({})", self.path.display())
    }
}

impl SecretFile {
    /// Reads a secret file: its text with surrounding whitespace (a trailing newline) removed, and where it came from.
    pub fn read(path: &Path) -> Result<(String, SecretFile), std::io::ErrorKind> {
        let bytes = std::fs::read(path).map_err(|e| e.kind())?;
        let file = SecretFile {
            path: path.to_owned(),
            read: Digest::of(&bytes),
            setting: None,
        };
        let text = String::from_utf8(bytes).map_err(|_| std::io::ErrorKind::InvalidData)?;
        Ok((text.trim().to_owned(), file))
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Names the setting the file was given by, as the operator wrote it (log lines then use this name).
    pub fn named(mut self, setting: impl Into<String>) -> Self {
        self.setting = Some(setting.into());
        self
    }

    /// The setting the file was given by, if named.
    pub fn setting(&self) -> Option<&str> {
        self.setting.as_deref()
    }
}

/// Why a reload was refused; never carries the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ReloadError {
    #[error("cannot read {path}: {kind}")]
    Read { path: String, kind: std::io::ErrorKind },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
}

/// Turns a file's text into the value in use (the same check as at start-up).
pub type Parse<T> = Box<dyn Fn(&str) -> Result<T, String> + Send + Sync>;

/// A value derived from a secret, re-read from its file when that changes.
pub struct LiveSecret<T> {
    kind: SecretKind,
    /// What it is, for log lines (e.g. "AVE_CLIENT_SECRET_FILE").
    name: String,
    source: Option<(PathBuf, Parse<T>)>,
    /// The digest of the content last read (also after a failed reload, so a file that stays broken is reported once).
    seen: Mutex<Option<Digest>>,
    value: RwLock<Arc<T>>,
}

impl<T: Send + Sync> LiveSecret<T> {
    /// A value that never reloads (given inline: the environment or the configuration file).
    pub fn fixed(kind: SecretKind, value: T) -> Self {
        Self {
            kind,
            name: String::new(),
            source: None,
            seen: Mutex::new(None),
            value: RwLock::new(Arc::new(value)),
        }
    }

    /// `value`, read from `file` (if any) and re-read from it with `parse` when it changes. Log lines name it by
    /// the setting that gave the file (`SecretFile::named`), else by `name`.
    pub fn new(
        kind: SecretKind,
        name: impl Into<String>,
        value: T,
        file: Option<&SecretFile>,
        parse: Parse<T>,
    ) -> Self {
        let Some(file) = file else {
            return Self::fixed(kind, value);
        };
        Self {
            kind,
            name: file.setting.clone().unwrap_or_else(|| name.into()),
            source: Some((file.path.clone(), parse)),
            seen: Mutex::new(Some(file.read.clone())),
            value: RwLock::new(Arc::new(value)),
        }
    }

    /// The value in use.
    pub fn current(&self) -> Arc<T> {
        self.value.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Re-reads the file and swaps the new value in if its content changed and is valid. Ok(true): swapped.
    pub(crate) fn reload_if_changed(&self) -> Result<bool, ReloadError> {
        let Some((path, parse)) = &self.source else {
            return Ok(false);
        };
        let shown = || path.display().to_string();
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => {
                // Reported once per failure kind; a file that comes back with the old content is no change.
                let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
                let marker = Digest::of(format!("unreadable: {:?}", e.kind()).as_bytes());
                if seen.as_ref() == Some(&marker) {
                    return Ok(false);
                }
                *seen = Some(marker);
                return Err(ReloadError::Read {
                    path: shown(),
                    kind: e.kind(),
                });
            }
        };
        let digest = Digest::of(&bytes);
        {
            let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
            if seen.as_ref() == Some(&digest) {
                return Ok(false);
            }
            *seen = Some(digest);
        }
        let text = String::from_utf8(bytes).map_err(|_| ReloadError::Invalid {
            path: shown(),
            reason: "not UTF-8 text".into(),
        })?;
        let value = parse(text.trim()).map_err(|reason| ReloadError::Invalid { path: shown(), reason })?;
        *self.value.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(value);
        Ok(true)
    }

    /// True when it is read from a file (and so is watched).
    pub fn is_watched(&self) -> bool {
        self.source.is_some()
    }
}

/// Something the watcher reloads.
pub trait Reload: Send + Sync {
    /// The kind, for the metric.
    fn kind(&self) -> SecretKind;
    /// What it is, for log lines.
    fn name(&self) -> String;
    /// Reloads if changed (`forced`: SIGHUP asked; reload even if nothing looks changed). Ok(true): swapped.
    fn reload(&self, forced: bool) -> Result<bool, String>;
}

impl<T: Send + Sync> Reload for LiveSecret<T> {
    fn kind(&self) -> SecretKind {
        self.kind
    }

    fn name(&self) -> String {
        self.name.clone()
    }

    fn reload(&self, _forced: bool) -> Result<bool, String> {
        // Changes are found by content, so a forced reload is the same check.
        self.reload_if_changed().map_err(|e| e.to_string())
    }
}

/// Runs one reload step over `items`, logging and counting each outcome.
pub(crate) fn reload_all(items: &[Arc<dyn Reload>], forced: bool) {
    for item in items {
        reload_one(item.as_ref(), forced);
    }
}

/// Reloads `item` if its source changed, logging and counting the outcome; true when a new value was swapped in.
pub fn reload_one(item: &dyn Reload, forced: bool) -> bool {
    match item.reload(forced) {
        Ok(false) => false,
        Ok(true) => {
            crate::metrics::secret_reload(item.kind(), true);
            // The signing keys and the configuration say what is in use themselves.
            if !matches!(item.kind(), SecretKind::SigningKeys | SecretKind::Configuration) {
                tracing::info!(secret = %item.name(), "secret reloaded; the new value is in use");
            }
            true
        }
        Err(e) if item.kind() == SecretKind::Configuration => {
            crate::metrics::secret_reload(item.kind(), false);
            tracing::error!(error = %e, "configuration not reloaded; the running configuration stays in use");
            false
        }
        Err(e) => {
            crate::metrics::secret_reload(item.kind(), false);
            tracing::error!(secret = %item.name(), error = %e, "not reloaded; the previous value stays in use");
            false
        }
    }
}

/// The watcher of every reloadable item: polls every [`POLL_INTERVAL`] and
/// reloads at once on SIGHUP. The SIGHUP handler is installed before this
/// returns, so a signal sent once the service answers requests is never the
/// default "terminate".
pub fn watch(items: Vec<Arc<dyn Reload>>) -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; secrets and keys reload on change only");
            None
        }
    };
    let items: Arc<[Arc<dyn Reload>]> = items.into();
    async move {
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            #[cfg(unix)]
            let hup = async {
                match hangup.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hup = std::future::pending::<Option<()>>();
            let forced = tokio::select! {
                _ = poll.tick() => false,
                _ = hup => {
                    tracing::info!("SIGHUP: reloading the configuration, secrets and signing keys");
                    true
                }
            };
            let items = items.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || reload_all(&items, forced)).await {
                tracing::error!(error = %e, "reload task failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(dir: &Path, text: &str) -> LiveSecret<String> {
        let path = dir.join("secret");
        std::fs::write(&path, text).expect("write");
        let (value, file) = SecretFile::read(&path).expect("read");
        let parse: Parse<String> = Box::new(|s: &str| {
            if s.is_empty() {
                Err("must not be empty".to_owned())
            } else {
                Ok(s.to_owned())
            }
        });
        LiveSecret::new(SecretKind::ClientSecret, "TEST_FILE", value, Some(&file), parse)
    }

    #[test]
    fn a_changed_file_is_swapped_in_and_a_bad_one_keeps_the_old_value() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = live(dir.path(), "one\n");
        assert_eq!(*s.current(), "one");
        assert!(!s.reload_if_changed().expect("unchanged"));
        // An atomic rename, as Kubernetes and systemd do it.
        std::fs::write(dir.path().join("tmp"), "two\n").expect("write");
        std::fs::rename(dir.path().join("tmp"), dir.path().join("secret")).expect("rename");
        assert!(s.reload_if_changed().expect("changed"));
        assert_eq!(*s.current(), "two");
        std::fs::write(dir.path().join("secret"), "  \n").expect("write");
        let e = s.reload_if_changed().expect_err("empty");
        assert!(e.to_string().ends_with("must not be empty"), "{e}");
        assert_eq!(*s.current(), "two", "the old value stays");
        assert!(!s.reload_if_changed().expect("reported once"));
        std::fs::remove_file(dir.path().join("secret")).expect("rm");
        assert!(matches!(s.reload_if_changed(), Err(ReloadError::Read { .. })));
        assert!(!s.reload_if_changed().expect("reported once"));
        assert_eq!(*s.current(), "two");
        std::fs::write(dir.path().join("secret"), "three").expect("write");
        assert!(s.reload_if_changed().expect("back"));
        assert_eq!(*s.current(), "three");
    }

    #[test]
    fn a_fixed_value_never_reloads() {
        let s = LiveSecret::fixed(SecretKind::HookSecret, 7u8);
        assert!(!s.is_watched());
        assert!(!s.reload_if_changed().expect("nothing to do"));
        assert_eq!(*s.current(), 7);
    }
}
