//! Secrets as a source of settings: a value set inline (`NAME`, the file's `key`) or read from a file whose path is
//! set (`NAME_FILE`, the file's `key_file`), never both; the file is kept so a reload can read it again.
//!
//! Why its own module: one rule for every secret (client secret, session keys, database URL, admin token, hook and
//! introspection secrets), and no secret value ever reaches an error line.

use std::fmt::Display;
use std::path::Path;

use super::loader::{Loader, Shape, Sourced};
use avemint_base::reload::SecretFile;

impl Loader<'_> {
    /// A required secret: see `secret_or_file`.
    pub(super) fn secret<T, E: Display>(
        &mut self,
        shape: Shape,
        env_name: &str,
        file_key: &str,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Option<(T, Option<SecretFile>)> {
        let (v, file) = match self.secret_or_file(shape, env_name, file_key) {
            Ok(Some((v, file))) => (Some(v), file),
            Ok(None) => (None, None),
            Err(()) => return None,
        };
        self.check_required(v, env_name, file_key, parse).map(|t| (t, file))
    }

    /// A secret from `NAME` or `NAME_FILE` in the environment, else from the file's `key` or `key_file`. Each pair
    /// is one setting: giving both of one pair is refused, naming both. `Ok(None)`: not set; `Err`: recorded.
    pub(super) fn secret_or_file(
        &mut self,
        shape: Shape,
        env_name: &str,
        file_key: &str,
    ) -> Result<Option<(Sourced, Option<SecretFile>)>, ()> {
        let path_key = format!("{file_key}_file");
        let path_env = format!("{env_name}_FILE");
        let in_file = self.take_file(file_key, shape);
        let path_in_file = self.take_file(&path_key, Shape::Text);
        let in_env = self.env.var(env_name);
        let path_in_env = self.env.var(&path_env);
        let (value, path) = if in_env.is_some() || path_in_env.is_some() {
            let value = in_env.map(|value| Sourced {
                value,
                origin: env_name.to_owned(),
            });
            let path = path_in_env.map(|value| Sourced {
                value,
                origin: path_env.clone(),
            });
            (value, path)
        } else {
            let value = in_file.map(|value| Sourced {
                value,
                origin: format!("config file `{file_key}`"),
            });
            let path = path_in_file.map(|value| Sourced {
                value,
                origin: format!("config file `{path_key}`"),
            });
            (value, path)
        };
        self.one_of(value, path)
    }

    /// A value given inline or as a file's path, not both.
    pub(super) fn one_of(
        &mut self,
        value: Option<Sourced>,
        path: Option<Sourced>,
    ) -> Result<Option<(Sourced, Option<SecretFile>)>, ()> {
        match (value, path) {
            (Some(v), Some(p)) => {
                self.errors.push(format!(
                    "{} and {} are both set; set only one of them",
                    v.origin, p.origin
                ));
                Err(())
            }
            (Some(v), None) => Ok(Some((v, None))),
            (None, Some(p)) => match SecretFile::read(Path::new(&p.value)) {
                Ok((value, file)) => {
                    let file = file.named(p.origin.clone());
                    Ok(Some((
                        Sourced {
                            value,
                            origin: p.origin,
                        },
                        Some(file),
                    )))
                }
                Err(kind) => {
                    self.errors
                        .push(format!("{}: cannot read {}: {kind}", p.origin, p.value));
                    Err(())
                }
            },
            (None, None) => Ok(None),
        }
    }
}
