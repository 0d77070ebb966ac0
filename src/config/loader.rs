//! The loader: each setting looked up in the environment and then the file (the environment wins), parsed, and every
//! problem recorded as one line naming where the value came from.
//!
//! Why its own module: the lookups every component's settings are written with (`optional`, `or`, `required`,
//! `secret`) and the `Shape` each names, apart from the sources they read (`env`, `file`, `secrets`).

use std::fmt::Display;

use super::env::Env;

/// How a setting is written in the TOML file.
#[derive(Debug, Clone, Copy)]
pub(super) enum Shape {
    /// A string.
    Text,
    /// A whole number.
    Number,
    /// An array of strings (comma-separated in the environment).
    List,
    /// A boolean (`true`/`false`, `on`/`off` or `1`/`0` in the environment).
    Switch,
}

impl Shape {
    /// The file value as the text the environment would hold, or `None` if it has another type.
    pub(super) fn text(self, value: toml::Value) -> Option<String> {
        match (self, value) {
            (Shape::Text, toml::Value::String(s)) => Some(s),
            (Shape::Number, toml::Value::Integer(n)) => Some(n.to_string()),
            (Shape::Switch, toml::Value::Boolean(b)) => Some(b.to_string()),
            (Shape::Switch, toml::Value::String(s)) => Some(s),
            (Shape::List, toml::Value::Array(items)) => items
                .into_iter()
                .map(|v| match v {
                    toml::Value::String(s) => Some(s),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()
                .map(|v| v.join(",")),
            _ => None,
        }
    }

    pub(super) fn expected(self) -> &'static str {
        match self {
            Shape::Text => "must be a string",
            Shape::Number => "must be a whole number",
            Shape::List => "must be an array of strings",
            Shape::Switch => "must be true or false",
        }
    }
}

/// A value and where it came from, for error messages.
pub(super) struct Sourced {
    pub(super) value: String,
    pub(super) origin: String,
}

/// Reads settings from the environment and the file's table, recording every problem.
pub(super) struct Loader<'a> {
    pub(super) env: &'a dyn Env,
    /// The file's top-level keys not read yet.
    pub(super) file: toml::Table,
    pub(super) errors: Vec<String>,
    /// Defaults taken for what is usually set (see `Settings::defaults`).
    pub(super) defaults: Vec<String>,
    /// A configuration file is read: a missing setting is then named by its file key too.
    pub(super) has_file: bool,
    /// Every file key asked for (`[spa]`'s as `spa.KEY`): a test holds docs/configuration.md to them.
    #[cfg(test)]
    pub(super) asked: std::collections::BTreeSet<String>,
}

impl Loader<'_> {
    /// Takes `file_key` out of the file (type-checked) and reads `env_name`; the environment wins.
    pub(super) fn pick(&mut self, env_name: &str, file_key: &str, shape: Shape) -> Option<Sourced> {
        let origin = format!("config file `{file_key}`");
        let file = self.take_file(file_key, shape);
        match self.env.var(env_name) {
            Some(value) => Some(Sourced {
                value,
                origin: env_name.to_owned(),
            }),
            None => file.map(|value| Sourced { value, origin }),
        }
    }

    pub(super) fn check<T, E: Display>(&mut self, v: Sourced, parse: impl FnOnce(&str) -> Result<T, E>) -> Option<T> {
        parse(&v.value)
            .map_err(|e| self.errors.push(format!("{}: {e}", v.origin)))
            .ok()
    }

    /// An optional setting: `None` when unset (or invalid: then the problem is recorded).
    pub(super) fn optional<T, E: Display>(
        &mut self,
        shape: Shape,
        env_name: &str,
        file_key: &str,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Option<T> {
        let v = self.pick(env_name, file_key, shape)?;
        self.check(v, parse)
    }

    /// A setting with a default (also returned when the value is invalid: the problem is recorded).
    pub(super) fn or<T, E: Display>(
        &mut self,
        shape: Shape,
        env_name: &str,
        file_key: &str,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> T {
        self.optional(shape, env_name, file_key, parse).unwrap_or(default)
    }

    /// A required text setting.
    pub(super) fn required<T, E: Display>(
        &mut self,
        env_name: &str,
        file_key: &str,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Option<T> {
        let v = self.pick(env_name, file_key, Shape::Text);
        self.check_required(v, env_name, file_key, parse)
    }

    /// `v` parsed, or a "required" line when it is absent (naming the file key too when a file is read).
    pub(super) fn check_required<T, E: Display>(
        &mut self,
        v: Option<Sourced>,
        env_name: &str,
        file_key: &str,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Option<T> {
        match v {
            Some(v) => self.check(v, parse),
            None if self.has_file => {
                self.errors
                    .push(format!("{env_name} is required (or `{file_key}` in the config file)"));
                None
            }
            None => {
                self.errors.push(format!("{env_name} is required"));
                None
            }
        }
    }

    /// How the setting `env_name` / `file_key` is written where it is set (the environment wins), for messages that
    /// name it: `NAME`, or `config file `key``; `NAME` when it is not set at all. Ask before the value is read.
    pub(super) fn written(&self, env_name: &str, file_key: &str) -> String {
        if self.env.var(env_name).is_none() && self.file.contains_key(file_key) {
            format!("config file `{file_key}`")
        } else {
            env_name.to_owned()
        }
    }

    /// True when neither the environment nor the file sets `env_name` / `file_key` (a setting with no `_FILE`
    /// form: only names the loader reads are asked for).
    pub(super) fn unset(&self, env_name: &str, file_key: &str) -> bool {
        self.env.var(env_name).is_none() && !self.file.contains_key(file_key)
    }
}
