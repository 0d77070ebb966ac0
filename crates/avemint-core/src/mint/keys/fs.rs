//! File-system primitives for the keys directory: private files created 0600,
//! atomic replacement (temp file + fsync + rename), the permission check that
//! refuses group/world-readable keys, and the advisory lock that serialises
//! writers (CLI commands and instances rotating automatically) sharing one directory.
//!
//! Ownership: the service reads its keys as the directory's owner. A writer
//! running as root gives every file it creates to that owner (and group); a
//! writer running as any other user who does not own the directory is refused
//! before it changes anything, with the command to run instead, since files
//! it made would be unreadable to the service (mode 0600).

use std::io::Write;
use std::path::Path;

use super::KeyError;

/// The lock file serialising writers of one keys directory.
pub(crate) const LOCK_FILE: &str = ".lock";

pub(crate) fn io_error(path: &Path, e: &std::io::Error) -> KeyError {
    KeyError::Io {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

/// Creates `dir` (mode 0700) if it does not exist.
pub(crate) fn ensure_dir(dir: &Path) -> Result<(), KeyError> {
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, &e))?;
        set_mode(dir, 0o700).map_err(|e| io_error(dir, &e))?;
    }
    Ok(())
}

/// Writes a new private file (mode 0600, owned like its directory); fails if it exists.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    let mut f = open_private(path, true).map_err(|e| io_error(path, &e))?;
    adopt(path)?;
    f.write_all(bytes).map_err(|e| io_error(path, &e))?;
    f.sync_all().map_err(|e| io_error(path, &e))
}

/// Replaces `dir/name` atomically with `bytes` (mode 0600).
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), KeyError> {
    let suffix = hex::encode(avemint_base::secret::random_bytes::<6>());
    let tmp = dir.join(format!(".{name}.{}.{suffix}.tmp", std::process::id()));
    let target = dir.join(name);
    let result = write_private(&tmp, bytes).and_then(|()| {
        std::fs::rename(&tmp, &target).map_err(|e| io_error(&target, &e))?;
        sync_dir(dir)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(unix)]
fn open_private(path: &Path, create_new: bool) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).mode(0o600);
    if create_new {
        opts.create_new(true);
    } else {
        opts.create(true).truncate(false);
    }
    opts.open(path)
}

#[cfg(not(unix))]
fn open_private(path: &Path, create_new: bool) -> std::io::Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true);
    if create_new {
        opts.create_new(true);
    } else {
        opts.create(true).truncate(false);
    }
    opts.open(path)
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<(), KeyError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, &e))
}

#[cfg(not(unix))]
fn sync_dir(_: &Path) -> Result<(), KeyError> {
    Ok(())
}

#[cfg(unix)]
pub(crate) fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
pub(crate) fn set_mode(_: &Path, _: u32) -> std::io::Result<()> {
    Ok(())
}

/// Gives `path`, just created, to the owner and group of its directory when they differ from its own: only root can
/// (and, by `check_writer`, only root writes into a directory it does not own).
#[cfg(unix)]
fn adopt(path: &Path) -> Result<(), KeyError> {
    use std::os::unix::fs::MetadataExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let d = std::fs::metadata(dir).map_err(|e| io_error(dir, &e))?;
    let f = std::fs::metadata(path).map_err(|e| io_error(path, &e))?;
    if (f.uid(), f.gid()) != (d.uid(), d.gid()) && f.uid() == 0 {
        std::os::unix::fs::chown(path, Some(d.uid()), Some(d.gid())).map_err(|e| io_error(path, &e))?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn adopt(_: &Path) -> Result<(), KeyError> {
    Ok(())
}

/// Refuses a writer that is neither root nor the directory's owner (see the module doc).
#[cfg(unix)]
pub(crate) fn check_writer(dir: &Path) -> Result<(), KeyError> {
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(dir).map_err(|e| io_error(dir, &e))?.uid();
    let me = rustix::process::geteuid().as_raw();
    if me == 0 || me == owner {
        return Ok(());
    }
    Err(KeyError::NotOwner {
        dir: dir.to_owned(),
        owner: user_name(owner).unwrap_or_else(|| format!("#{owner}")),
    })
}

#[cfg(not(unix))]
pub(crate) fn check_writer(_: &Path) -> Result<(), KeyError> {
    Ok(())
}

/// The name of user `uid` in `/etc/passwd`, if it is there.
#[cfg(unix)]
fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id = fields.nth(1)?.parse::<u32>().ok()?;
        (id == uid).then(|| name.to_owned())
    })
}

/// Refuses a private key file readable (or writable) by group or others.
#[cfg(unix)]
pub(crate) fn check_private(path: &Path) -> Result<(), KeyError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| io_error(path, &e))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions {
            path: path.to_owned(),
            mode: mode & 0o777,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
pub(crate) fn check_private(_: &Path) -> Result<(), KeyError> {
    Ok(())
}

/// An exclusive advisory lock on `dir/.lock`, released on drop.
pub(crate) struct DirLock {
    file: std::fs::File,
}

impl DirLock {
    /// Blocks until this process holds the directory's write lock.
    pub(crate) fn acquire(dir: &Path) -> Result<Self, KeyError> {
        let path = dir.join(LOCK_FILE);
        check_writer(dir)?;
        let file = open_private(&path, false).map_err(|e| io_error(&path, &e))?;
        adopt(&path)?;
        file.lock().map_err(|e| io_error(&path, &e))?;
        Ok(Self { file })
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}
