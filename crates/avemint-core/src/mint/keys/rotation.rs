//! The key lifecycle on disk: generate, rotate, prune, migrate old layouts, and
//! the timing rules that keep every verifier working through a rotation.
//!
//! Timing: verifiers may cache the JWKS for `JWKS_CACHE_LIFETIME` (the
//! `max-age` avemint sends). A next key therefore signs only after it has been
//! published at least that long, and a retired key stays published for
//! `RETIRED_HOLD` = the longest app-JWT lifetime avemint accepts plus that cache
//! lifetime. Every step takes the directory's write lock, re-reads the manifest
//! (other instances or the CLI may have changed it), writes new key files first
//! and the manifest last (atomically), and deletes files only after the
//! manifest no longer names them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::KeyError;
use super::algorithms::Algorithm;
use super::fs::{DirLock, check_private, ensure_dir, io_error, write_private};
use super::manifest::{KeyEntry, KeyState, Manifest, is_plain_pem_name};
use avemint_base::clock::UnixTime;

/// How long verifiers may cache the JWKS (`Cache-Control: max-age`), and so the
/// lead time a next key is published before it signs.
pub const JWKS_CACHE_LIFETIME: Duration = Duration::from_secs(300);
/// The longest app-JWT lifetime avemint accepts (`AVEMINT_TOKEN_TTL` maximum).
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(86_400);
/// How long a retired key stays published after it stopped signing.
pub(crate) const RETIRED_HOLD: Duration = Duration::from_secs(MAX_TOKEN_TTL.as_secs() + JWKS_CACHE_LIFETIME.as_secs());
/// The shortest automatic rotation period accepted.
pub(crate) const MIN_ROTATION: Duration = Duration::from_secs(3600);

/// How keys are made and rotated (from configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeyPolicy {
    /// The algorithm of newly generated keys (`AVEMINT_KEY_ALGORITHM`).
    pub algorithm: Algorithm,
    /// Rotate automatically this long after the current key started signing (`AVEMINT_KEY_ROTATION`).
    pub rotation: Option<Duration>,
}

/// Where the signing keys live and how they are made and rotated: what
/// `serve` and the `avemint keys` commands are configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeysSettings {
    /// `AVEMINT_KEYS_DIR`.
    pub dir: PathBuf,
    /// `AVEMINT_KEY_ALGORITHM` and `AVEMINT_KEY_ROTATION`.
    pub policy: KeyPolicy,
}

/// The longest automatic rotation period.
const MAX_ROTATION: Duration = Duration::from_secs(3650 * 86_400);

/// Why `AVEMINT_KEY_ROTATION` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "must be `off` or a period such as `30d`, `12h` or `90m` (units s, m, h, d, w), from {}h to {}d",
    MIN_ROTATION.as_secs() / 3600,
    MAX_ROTATION.as_secs() / 86_400
)]
pub struct RotationPeriodError;

/// `AVEMINT_KEY_ROTATION`: `off`, or a whole number with a unit (`s`, `m`, `h`, `d`, `w`), e.g. `30d`.
pub fn parse_rotation(raw: &str) -> Result<Option<Duration>, RotationPeriodError> {
    let s = raw.trim();
    if s.eq_ignore_ascii_case("off") || s.eq_ignore_ascii_case("never") {
        return Ok(None);
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or(RotationPeriodError)?;
    let (number, unit) = s.split_at(split);
    let n: u64 = number.parse().map_err(|_| RotationPeriodError)?;
    let unit = match unit.trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(RotationPeriodError),
    };
    let secs = n.checked_mul(unit).ok_or(RotationPeriodError)?;
    if secs < MIN_ROTATION.as_secs() || secs > MAX_ROTATION.as_secs() {
        return Err(RotationPeriodError);
    }
    Ok(Some(Duration::from_secs(secs)))
}

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    pub retired: String,
    pub current: String,
    pub next: String,
}

/// A keys directory and the lifecycle operations on it.
#[derive(Debug, Clone)]
pub struct KeyDir {
    dir: PathBuf,
}

impl KeyDir {
    /// The keys directory at `dir` (nothing is read or created yet).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.dir
    }

    /// The manifest, or (with no manifest) one derived from legacy
    /// `es256-<unix>.pem` files: the newest is current, older ones are retired
    /// from the moment their successor was created. Never writes.
    pub fn read_manifest(&self) -> Result<Manifest, KeyError> {
        if let Some(m) = Manifest::read(&self.dir)? {
            return Ok(m);
        }
        self.legacy_manifest()
    }

    fn legacy_manifest(&self) -> Result<Manifest, KeyError> {
        let mut found = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Manifest::default()),
            Err(e) => return Err(io_error(&self.dir, &e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| io_error(&self.dir, &e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(created) = legacy_created(&name) else {
                continue;
            };
            let key = super::load_key(&self.dir, Algorithm::Es256, &name)?;
            found.push(KeyEntry {
                kid: key.kid().to_owned(),
                alg: Algorithm::Es256,
                file: name,
                created,
                state: KeyState::Retired,
                activated: Some(created),
                retired: None,
            });
        }
        found.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.file.cmp(&b.file)));
        let successors: Vec<UnixTime> = found.iter().skip(1).map(|k| k.created).collect();
        for (k, retired) in found.iter_mut().zip(successors) {
            k.retired = Some(retired);
        }
        if let Some(newest) = found.last_mut() {
            newest.state = KeyState::Current;
        }
        Ok(Manifest {
            keys: found,
            ..Manifest::default()
        })
    }

    /// Writes a new private key file for `alg` and returns its (state-less) entry.
    fn new_key(&self, alg: Algorithm, now: UnixTime) -> Result<KeyEntry, KeyError> {
        let der = alg.generate_pkcs8().map_err(|_| KeyError::Generation)?;
        let parsed = super::algorithms::ParsedKey::from_pkcs8(alg, &der).map_err(|_| KeyError::Generation)?;
        let kid = parsed.kid().to_owned();
        let short: String = kid.chars().filter(char::is_ascii_alphanumeric).take(8).collect();
        let file = format!("{}-{now}-{short}.pem", alg.short());
        let text = zeroize::Zeroizing::new(pem::encode(&pem::Pem::new("PRIVATE KEY", der.to_vec())));
        write_private(&self.dir.join(&file), text.as_bytes())?;
        tracing::info!(kid = %kid, alg = %alg, file = %file, "generated a signing key");
        Ok(KeyEntry {
            kid,
            alg,
            file,
            created: now,
            state: KeyState::Next,
            activated: None,
            retired: None,
        })
    }

    fn locked(&self) -> Result<DirLock, KeyError> {
        ensure_dir(&self.dir)?;
        DirLock::acquire(&self.dir)
    }

    fn remove_files(&self, gone: &[KeyEntry]) {
        for k in gone {
            let path = self.dir.join(&k.file);
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "could not remove a pruned key file");
            }
        }
    }

    /// Makes sure there is a current key and a next key (generating them with
    /// `alg`), writing a manifest if there was none (migrating legacy files).
    /// Returns true if anything changed.
    pub fn ensure(&self, alg: Algorithm, now: UnixTime) -> Result<bool, KeyError> {
        let _lock = self.locked()?;
        let had_manifest = Manifest::read(&self.dir)?.is_some();
        let mut m = self.read_manifest()?;
        let mut changed = !had_manifest;
        if m.current().is_none() {
            m.add(self.new_key(alg, now)?);
            changed = true;
        }
        if m.next().is_none() {
            m.add(self.new_key(alg, now)?);
            changed = true;
        }
        if changed {
            m.write(&self.dir)?;
        }
        Ok(changed)
    }

    /// `keys generate`: adds a key as next (or current if there is none). A
    /// previous next key, which never signed, is removed.
    pub(crate) fn generate(&self, alg: Algorithm, now: UnixTime) -> Result<KeyEntry, KeyError> {
        let _lock = self.locked()?;
        let mut m = self.read_manifest()?;
        let entry = self.new_key(alg, now)?;
        let replaced = m.add(entry.clone());
        m.write(&self.dir)?;
        if let Some(old) = replaced {
            self.remove_files(&[old]);
        }
        let stored = m.keys.iter().find(|k| k.kid == entry.kid).cloned().unwrap_or(entry);
        Ok(stored)
    }

    /// `keys rotate`: current → retired, next → current, and a new next key
    /// (with `alg`). Refused while the next key is younger than the JWKS cache
    /// lifetime unless `force`; with `force` and no next key, one is made first.
    pub fn rotate(&self, alg: Algorithm, now: UnixTime, force: bool) -> Result<Rotation, KeyError> {
        let _lock = self.locked()?;
        let mut m = self.read_manifest()?;
        if m.current().is_none() {
            return Err(KeyError::NoKeys { dir: self.dir.clone() });
        }
        if force {
            if m.next().is_none() {
                m.add(self.new_key(alg, now)?);
            }
        } else {
            m.check_next_ready(now, JWKS_CACHE_LIFETIME)?;
        }
        self.rotate_locked(&mut m, alg, now)
    }

    fn rotate_locked(&self, m: &mut Manifest, alg: Algorithm, now: UnixTime) -> Result<Rotation, KeyError> {
        let retired = m.current().map(|k| k.kid.clone()).unwrap_or_default();
        m.rotate(now)?;
        let current = m.current().map(|k| k.kid.clone()).unwrap_or_default();
        let next = self.new_key(alg, now)?;
        let next_kid = next.kid.clone();
        m.add(next);
        m.write(&self.dir)?;
        tracing::info!(retired = %retired, current = %current, next = %next_kid, "rotated signing keys");
        Ok(Rotation {
            retired,
            current,
            next: next_kid,
        })
    }

    /// `keys prune`: removes retired keys that stopped signing more than `RETIRED_HOLD` ago.
    pub(crate) fn prune(&self, now: UnixTime) -> Result<Vec<KeyEntry>, KeyError> {
        let _lock = self.locked()?;
        let mut m = self.read_manifest()?;
        let gone = m.prune(now, RETIRED_HOLD);
        if !gone.is_empty() {
            m.write(&self.dir)?;
            self.remove_files(&gone);
            for k in &gone {
                tracing::info!(kid = %k.kid, "pruned a retired signing key");
            }
        }
        Ok(gone)
    }

    /// Automatic rotation: rotates if `policy.rotation` is due and safe, prunes
    /// expired keys, and makes sure a next key exists. Cheap when nothing is due
    /// (only the manifest is read before taking the lock).
    pub(crate) fn maintain(&self, policy: &KeyPolicy, now: UnixTime) -> Result<Option<Rotation>, KeyError> {
        let Some(every) = policy.rotation else {
            return Ok(None);
        };
        let work = |m: &Manifest| {
            m.next().is_none()
                || m.rotation_due(now, every, JWKS_CACHE_LIFETIME)
                || !m.clone().prune(now, RETIRED_HOLD).is_empty()
        };
        if !work(&self.read_manifest()?) {
            return Ok(None);
        }
        let _lock = self.locked()?;
        // Another instance may have done it while this one waited for the lock.
        let mut m = self.read_manifest()?;
        let mut rotation = None;
        let mut changed = false;
        if m.next().is_none() {
            m.add(self.new_key(policy.algorithm, now)?);
            changed = true;
        }
        if m.rotation_due(now, every, JWKS_CACHE_LIFETIME) {
            rotation = Some(self.rotate_locked(&mut m, policy.algorithm, now)?);
            changed = false;
        }
        let gone = m.prune(now, RETIRED_HOLD);
        if changed || !gone.is_empty() {
            m.write(&self.dir)?;
        }
        self.remove_files(&gone);
        Ok(rotation)
    }
}

/// `es256-<unix>.pem` → the unix time.
fn legacy_created(name: &str) -> Option<UnixTime> {
    let secs: u64 = name.strip_prefix("es256-")?.strip_suffix(".pem")?.parse().ok()?;
    Some(UnixTime::from_unsigned(secs))
}

/// Private key files in `dir` (for the permission check), manifest or not.
pub(crate) fn pem_files(dir: &Path) -> Result<Vec<PathBuf>, KeyError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_error(dir, &e))? {
        let entry = entry.map_err(|e| io_error(dir, &e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_plain_pem_name(&name) {
            out.push(dir.join(name));
        }
    }
    out.sort();
    Ok(out)
}

/// Refuses to go on if any private key file in `dir` is readable by group or others.
pub(crate) fn check_all_private(dir: &Path) -> Result<(), KeyError> {
    for path in pem_files(dir)? {
        check_private(&path)?;
    }
    Ok(())
}

/// "3d 4h", "12m", "45s": an age for people.
pub(crate) fn format_age(age: Duration) -> String {
    match age.as_secs() {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        s => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> UnixTime {
        UnixTime::from_secs(secs)
    }

    #[test]
    fn rotation_periods() {
        assert_eq!(parse_rotation("off"), Ok(None));
        assert_eq!(parse_rotation("30d"), Ok(Some(Duration::from_secs(30 * 86_400))));
        assert_eq!(parse_rotation("12h"), Ok(Some(Duration::from_secs(12 * 3600))));
        assert_eq!(parse_rotation(" 2w "), Ok(Some(Duration::from_secs(14 * 86_400))));
        assert_eq!(parse_rotation("90m"), Ok(Some(Duration::from_secs(5400))));
        for bad in [
            "",
            "30",
            "d",
            "-1d",
            "1.5d",
            "59m",
            "30 days",
            "3651d",
            "99999999999999999999w",
        ] {
            assert!(parse_rotation(bad).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn rotation_parser_never_panics_and_respects_bounds(s in "\\PC{0,12}") {
            if let Ok(Some(d)) = parse_rotation(&s) {
                proptest::prop_assert!(d >= MIN_ROTATION && d.as_secs() <= 3650 * 86_400);
            }
        }
    }

    #[test]
    fn ensure_then_rotate_then_prune_on_disk() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = KeyDir::new(tmp.path().join("keys"));
        assert!(dir.ensure(Algorithm::Es256, t(1000)).expect("ensure"));
        assert!(!dir.ensure(Algorithm::Es256, t(1001)).expect("again"), "idempotent");
        let m = dir.read_manifest().expect("manifest");
        let (current, next) = (m.current().expect("current").clone(), m.next().expect("next").clone());
        assert!(matches!(
            dir.rotate(Algorithm::EdDsa, t(1100), false),
            Err(KeyError::Lifecycle(_))
        ));
        let r = dir.rotate(Algorithm::EdDsa, t(1300), false).expect("rotate");
        assert_eq!(
            (r.retired.as_str(), r.current.as_str()),
            (current.kid.as_str(), next.kid.as_str())
        );
        let m = dir.read_manifest().expect("manifest");
        assert_eq!(m.next().expect("new next").alg, Algorithm::EdDsa);
        assert_eq!(m.keys.len(), 3);
        assert!(dir.prune(t(1299) + RETIRED_HOLD).expect("prune").is_empty());
        let gone = dir.prune(t(1300) + RETIRED_HOLD).expect("prune");
        assert_eq!(gone.len(), 1);
        assert!(!dir.path().join(&current.file).exists(), "file removed");
        assert_eq!(pem_files(dir.path()).expect("files").len(), 2);
    }

    #[test]
    fn legacy_files_are_migrated_newest_current() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = KeyDir::new(tmp.path());
        for created in [100u64, 200] {
            let der = Algorithm::Es256.generate_pkcs8().expect("gen");
            let text = pem::encode(&pem::Pem::new("PRIVATE KEY", der.to_vec()));
            write_private(&tmp.path().join(format!("es256-{created}.pem")), text.as_bytes()).expect("write");
        }
        let m = dir.read_manifest().expect("legacy");
        assert_eq!(m.current().expect("current").file, "es256-200.pem");
        let old = m.keys.iter().find(|k| k.file == "es256-100.pem").expect("old");
        assert_eq!((old.state, old.retired), (KeyState::Retired, Some(t(200))));
        dir.ensure(Algorithm::Es256, t(300)).expect("migrate");
        let m = Manifest::read(tmp.path()).expect("read").expect("written");
        assert_eq!(m.current().expect("current").file, "es256-200.pem");
        assert!(m.next().is_some());
    }

    #[test]
    fn automatic_rotation_happens_when_due_and_only_then() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = KeyDir::new(tmp.path());
        dir.ensure(Algorithm::Es256, t(0)).expect("ensure");
        let policy = KeyPolicy {
            algorithm: Algorithm::Rs256,
            rotation: Some(MIN_ROTATION),
        };
        assert_eq!(dir.maintain(&policy, t(-1) + MIN_ROTATION).expect("maintain"), None);
        let r = dir.maintain(&policy, t(0) + MIN_ROTATION).expect("maintain");
        assert!(r.is_some());
        let m = dir.read_manifest().expect("manifest");
        assert_eq!(m.next().expect("next").alg, Algorithm::Rs256);
        assert_eq!(dir.maintain(&policy, t(1) + MIN_ROTATION).expect("again"), None);
        let off = KeyPolicy::default();
        assert_eq!(dir.maintain(&off, t(i64::MAX / 2)).expect("off"), None);
    }

    #[test]
    fn ages_read_naturally() {
        assert_eq!(format_age(Duration::from_secs(5)), "5s");
        assert_eq!(format_age(Duration::from_secs(125)), "2m");
        assert_eq!(format_age(Duration::from_secs(3 * 3600 + 120)), "3h 2m");
        assert_eq!(format_age(Duration::from_secs(2 * 86_400 + 3 * 3600)), "2d 3h");
    }
}
