//! The TOML file as a source of settings (`--config`, `AVEMINT_CONFIG`): read once as a table, each setting taken
//! out type-checked, and whatever is left at the end refused as an unknown key.
//!
//! Why its own module: how a file value is typed and which keys are unknown is the file's concern only.

use std::path::{Path, PathBuf};

use super::ConfigErrors;
use super::env::Env;
use super::loader::{Loader, Shape};

impl<'a> Loader<'a> {
    /// Reads the file named by `--config` or `AVEMINT_CONFIG`, if any.
    pub(super) fn new(config_path: Option<&Path>, env: &'a dyn Env) -> Result<Self, ConfigErrors> {
        let path = config_path
            .map(Path::to_path_buf)
            .or_else(|| env.var("AVEMINT_CONFIG").map(PathBuf::from));
        let has_file = path.is_some();
        let file = match path {
            Some(p) => {
                let text = std::fs::read_to_string(&p).map_err(|e| {
                    ConfigErrors(vec![format!("config file {}: cannot read: {}", p.display(), e.kind())])
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigErrors(vec![format!("config file {}: {}", p.display(), e.message())]))?
            }
            None => toml::Table::new(),
        };
        Ok(Self {
            env,
            file,
            errors: Vec::new(),
            defaults: Vec::new(),
            has_file,
            #[cfg(test)]
            asked: Default::default(),
        })
    }

    /// `built` if nothing went wrong; otherwise every problem, and every file key nobody read.
    pub(super) fn finish<T>(mut self, built: Option<T>) -> Result<T, ConfigErrors> {
        for key in self.file.keys() {
            self.errors.push(format!("config file: unknown key `{key}`"));
        }
        match built {
            Some(t) if self.errors.is_empty() => Ok(t),
            _ => Err(ConfigErrors(self.errors)),
        }
    }

    /// Takes `key` out of the file as it is: every top-level key is read through here.
    pub(super) fn take(&mut self, key: &str) -> Option<toml::Value> {
        #[cfg(test)]
        self.asked.insert(key.to_owned());
        self.file.remove(key)
    }

    /// Takes `key` out of the file, type-checked.
    pub(super) fn take_file(&mut self, key: &str, shape: Shape) -> Option<String> {
        let v = self.take(key)?;
        let text = shape.text(v);
        if text.is_none() {
            self.errors.push(format!("config file `{key}`: {}", shape.expected()));
        }
        text
    }
}
