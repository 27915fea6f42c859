//! A reader over a JSON object that collects every problem with its path.
//!
//! Each accessor marks its key as known, checks the type, and records an
//! error (with the JSON path) instead of stopping; [`Obj::finish`] warns about
//! every key nobody asked for, so typos do not pass silently, and
//! [`Obj::finish_strict`] refuses them where ignoring one would change what
//! the config does (a webhook's `filter`).

use super::{Diagnostics, Problem};
use serde_json::{Map, Value};

/// A JSON object being read, with the path it sits at.
pub(crate) struct Obj<'v> {
    pub path: String,
    map: Option<&'v Map<String, Value>>,
    known: Vec<&'static str>,
}

/// `path.key`, or `key` at the root.
pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl<'v> Obj<'v> {
    /// Reads `value` at `path` as an object; anything else is an error (null counts as empty).
    pub fn new(path: String, value: Option<&'v Value>, d: &mut Diagnostics) -> Self {
        let map = match value {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) => Some(m),
            Some(other) => {
                d.error(
                    &path,
                    format!("expected an object, found {}", type_name(other)),
                );
                None
            }
        };
        Self {
            path,
            map,
            known: Vec::new(),
        }
    }

    /// Whether the object was present.
    pub fn present(&self) -> bool {
        self.map.is_some()
    }

    /// The path of a key of this object.
    pub fn at(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// The raw value of a key (null counts as absent), marking it known.
    pub fn get(&mut self, key: &'static str) -> Option<&'v Value> {
        self.known.push(key);
        self.map?.get(key).filter(|v| !v.is_null())
    }

    /// Marks keys as known without reading them (settings of Sockudo that hookq has no use for).
    pub fn ignore(&mut self, keys: &[&'static str]) {
        self.known.extend_from_slice(keys);
    }

    /// A nested object (empty when absent).
    pub fn obj(&mut self, key: &'static str, d: &mut Diagnostics) -> Obj<'v> {
        let v = self.get(key);
        Obj::new(self.at(key), v, d)
    }

    fn typed<T>(
        &mut self,
        key: &'static str,
        d: &mut Diagnostics,
        want: &str,
        f: impl FnOnce(&'v Value) -> Option<T>,
    ) -> Option<T> {
        let v = self.get(key)?;
        let r = f(v);
        if r.is_none() {
            d.error(
                &self.at(key),
                format!("expected {want}, found {}", type_name(v)),
            );
        }
        r
    }

    /// An optional string.
    pub fn str(&mut self, key: &'static str, d: &mut Diagnostics) -> Option<String> {
        self.typed(key, d, "a string", |v| v.as_str().map(str::to_string))
    }

    /// An optional non-empty string.
    pub fn nonempty_str(&mut self, key: &'static str, d: &mut Diagnostics) -> Option<String> {
        let s = self.str(key, d)?;
        if s.trim().is_empty() {
            d.error(&self.at(key), "must not be empty");
            return None;
        }
        Some(s)
    }

    /// A boolean with a default.
    pub fn bool(&mut self, key: &'static str, default: bool, d: &mut Diagnostics) -> bool {
        self.typed(key, d, "true or false", Value::as_bool)
            .unwrap_or(default)
    }

    /// An optional whole number of at least `min`.
    pub fn opt_u64(&mut self, key: &'static str, min: u64, d: &mut Diagnostics) -> Option<u64> {
        let n = self.typed(key, d, "a whole number", Value::as_u64)?;
        if n < min {
            d.error(&self.at(key), format!("must be at least {min}, found {n}"));
            return None;
        }
        Some(n)
    }

    /// A whole number of at least `min`, with a default.
    pub fn u64(&mut self, key: &'static str, default: u64, min: u64, d: &mut Diagnostics) -> u64 {
        self.opt_u64(key, min, d).unwrap_or(default)
    }

    /// An array's elements with their paths (empty when absent).
    pub fn array(&mut self, key: &'static str, d: &mut Diagnostics) -> Vec<(String, &'v Value)> {
        let path = self.at(key);
        self.typed(key, d, "an array", Value::as_array)
            .map(|a| {
                a.iter()
                    .enumerate()
                    .map(|(i, v)| (format!("{path}[{i}]"), v))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A string-to-string map with paths for errors (empty when absent).
    pub fn string_map(&mut self, key: &'static str, d: &mut Diagnostics) -> Vec<(String, String)> {
        let path = self.at(key);
        let Some(map) = self.typed(key, d, "an object", Value::as_object) else {
            return Vec::new();
        };
        map.iter()
            .filter_map(|(k, v)| match v.as_str() {
                Some(s) => Some((k.clone(), s.to_string())),
                None => {
                    d.error(
                        &join(&path, k),
                        format!("expected a string, found {}", type_name(v)),
                    );
                    None
                }
            })
            .collect()
    }

    /// A string or an array of strings (empty when absent).
    pub fn strings(&mut self, key: &'static str, d: &mut Diagnostics) -> Vec<String> {
        let Some(v) = self.get(key) else {
            return Vec::new();
        };
        match v {
            Value::String(s) => vec![s.clone()],
            Value::Array(items) if items.iter().all(Value::is_string) => items
                .iter()
                .filter_map(|i| i.as_str().map(str::to_string))
                .collect(),
            other => {
                d.error(
                    &self.at(key),
                    format!(
                        "expected a string or an array of strings, found {}",
                        type_name(other)
                    ),
                );
                Vec::new()
            }
        }
    }

    /// An optional array of strings (a bare string is refused); each wrong element is an
    /// error at its index, and then the array counts as absent.
    pub fn string_array(&mut self, key: &'static str, d: &mut Diagnostics) -> Option<Vec<String>> {
        let path = self.at(key);
        let items = self.typed(key, d, "an array of strings", Value::as_array)?;
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match item.as_str() {
                Some(s) => out.push(s.to_string()),
                None => d.error(
                    &format!("{path}[{i}]"),
                    format!("expected a string, found {}", type_name(item)),
                ),
            }
        }
        // Only a whole array: indices of later checks then stay the file's.
        (out.len() == items.len()).then_some(out)
    }

    /// Whether a key is present (not null) without marking it known.
    pub fn has(&self, key: &str) -> bool {
        self.map
            .and_then(|m| m.get(key))
            .is_some_and(|v| !v.is_null())
    }

    fn unknown_keys(&self) -> impl Iterator<Item = &'v String> + '_ {
        self.map
            .into_iter()
            .flat_map(|m| m.keys())
            .filter(|k| !self.known.contains(&k.as_str()))
    }

    /// Warns about every key that no accessor asked for.
    pub fn finish(&self, d: &mut Diagnostics) {
        for key in self.unknown_keys() {
            d.warnings.push(Problem {
                path: join(&self.path, key),
                message: "unknown key, ignored".into(),
            });
        }
    }

    /// Refuses every key that no accessor asked for, where ignoring one would
    /// change what the config does (`why` says what); the message lists the known keys.
    pub fn finish_strict(&self, why: &str, d: &mut Diagnostics) {
        for key in self.unknown_keys() {
            d.error(
                &join(&self.path, key),
                format!("unknown key; {why} (known: {})", self.known.join(", ")),
            );
        }
    }
}
