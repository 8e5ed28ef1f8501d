//! The JSON Schema of the config model (`tollgate schema`, `gateway.schema.json`): not on
//! the request path. Editors (the YAML language server behind VS Code's YAML extension,
//! IntelliJ) use it to complete keys, show each key's description and underline a
//! misspelt key, a wrong type or an unknown value while the file is written.
//!
//! The schema is generated from the same declarations the reader uses: every
//! [`section!`](super::section) block describes itself (its keys, `additionalProperties:
//! false`, its doc comments as `description`, the keys the compile step requires, and a
//! key's fixed set of values where it has one), every field type through [`Schema`].
//! So a key that `tollgate validate` accepts cannot be missing from the schema.
//!
//! Draft-07: the draft the YAML language server supports fully. Its `$ref` ignores the
//! keys beside it, so nothing is shared through `definitions`: each place carries its
//! whole schema (the file is generated; its size does not matter).
//!
//! The output is a plain `serde_json::Value`: the schema is written by hand-made
//! functions here rather than derived, so `schemars`' types would only wrap the same
//! value (and add a dependency).
//!
//! The schema says what the text may look like. What needs the whole file or the disk
//! (references by name, certificate files, a method listed in `extension_methods`,
//! exclusive keys of an auth `type`) stays `tollgate validate`'s job.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

/// The draft the schema is written in.
pub const DRAFT: &str = "http://json-schema.org/draft-07/schema#";

/// A `${env:NAME}` or `${file:PATH}` reference somewhere in a text: such a text is
/// replaced by the variable's value or the file's content when the file is read, so it
/// stands for a value of any type.
pub const SUBSTITUTION: &str = r"\$\{(env|file):[^}]+\}";

/// A duration: numbers with a unit, e.g. `500ms`, `1.5s`, `1m30s`.
pub const DURATION: &str = r"^\s*(([0-9]+(\.[0-9]+)?|\.[0-9]+)(ms|s|m|h|d))+\s*$";

/// A listen address: `IPv4:PORT`, `[IPv6]:PORT` or `:PORT` (every interface).
pub const LISTEN_ADDRESS: &str =
    r"^(([0-9]{1,3}\.){3}[0-9]{1,3}|\[[0-9A-Fa-f:.]+(%[^\]]+)?\])?:[0-9]{1,5}$";

/// What a config node accepts, as a JSON Schema (draft-07).
pub trait Schema {
    fn schema() -> Value;
}

impl<T: Schema> Schema for Option<T> {
    fn schema() -> Value {
        T::schema()
    }
}

/// A mapping of free-form keys (`extra_params`, `claims`).
impl<T: Schema> Schema for BTreeMap<String, T> {
    fn schema() -> Value {
        json!({"type": "object", "additionalProperties": T::schema()})
    }
}

/// Text that is a `${env:..}` / `${file:..}` reference (or holds one).
pub fn substituted() -> Value {
    json!({"type": "string", "pattern": SUBSTITUTION})
}

/// `schema`, or text that is substituted into such a value when the file is read
/// (`port: "${env:PORT}"`).
pub fn or_substituted(schema: Value) -> Value {
    json!({"anyOf": [schema, substituted()]})
}

/// Plain text.
pub fn text() -> Value {
    json!({"type": "string"})
}

/// Text with `pattern`, or a substitution; `description` says what the pattern means.
pub fn text_matching(pattern: &str, description: &str) -> Value {
    json!({
        "anyOf": [{"type": "string", "pattern": pattern}, substituted()],
        "description": description,
    })
}

/// One of `values` (or a substitution).
pub fn one_of(values: &[&str]) -> Value {
    or_substituted(json!({"enum": values}))
}

/// A list of `item`.
pub fn list(item: Value) -> Value {
    json!({"type": "array", "items": item})
}

/// What a key of a [`section!`](super::section) says about its schema beyond its type:
/// written after the type, `"window" => pub window: Option<String> as choice(&["sliding",
/// "fixed"]),` (the functions of [`spec`] are in scope there).
#[derive(Default)]
pub struct Spec {
    /// Replaces the type's own schema.
    pub schema: Option<Value>,
    /// The compile step reports the key as missing when it is absent.
    pub required: bool,
    /// The key restricts access: a null value (`scopes:` with nothing after it) is an
    /// error, not "not given", which would lift the restriction.
    pub restricts: bool,
}

impl Spec {
    /// The key restricts access: see [`Spec::restricts`].
    pub fn restricting(mut self) -> Self {
        self.restricts = true;
        self
    }

    /// The key is required as well.
    pub fn required(mut self) -> Self {
        self.required = true;
        self
    }

    /// This schema instead of the type's.
    pub fn schema(mut self, schema: Value) -> Self {
        self.schema = Some(schema);
        self
    }
}

/// The constructors of [`Spec`], in scope after `as` in a [`section!`](super::section).
pub mod spec {
    pub use super::{list, one_of, or_substituted, substituted, text_matching};
    use super::{Spec, Value};

    /// The compile step reports the key as missing when it is absent.
    pub fn required() -> Spec {
        Spec {
            required: true,
            ..Spec::default()
        }
    }

    /// The key restricts access: a null value is an error (see [`Spec::restricts`]).
    pub fn restricting() -> Spec {
        Spec {
            restricts: true,
            ..Spec::default()
        }
    }

    /// Text that is one of `values`.
    pub fn choice(values: &[&str]) -> Spec {
        schema(super::one_of(values))
    }

    /// Text matching `pattern` (`description` says what it means to a reader).
    pub fn matching(pattern: &str, description: &str) -> Spec {
        schema(super::text_matching(pattern, description))
    }

    /// This schema instead of the type's.
    pub fn schema(schema: Value) -> Spec {
        Spec {
            schema: Some(schema),
            ..Spec::default()
        }
    }
}

/// Doc comment lines as one description: lines of a paragraph joined with a space,
/// paragraphs with a blank line.
pub fn prose(lines: &[&str]) -> String {
    let mut out = String::new();
    let mut blank = false;
    for line in lines.iter().flat_map(|l| l.split('\n')) {
        let line = line.trim();
        if line.is_empty() {
            blank = !out.is_empty();
            continue;
        }
        if blank {
            out.push_str("\n\n");
            blank = false;
        } else if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(line);
    }
    out
}

/// `schema` with `description` in front of the one it has (if any).
pub fn describe(mut schema: Value, description: &str) -> Value {
    if description.is_empty() {
        return schema;
    }
    if let Value::Object(o) = &mut schema {
        let text = match o.get("description").and_then(Value::as_str) {
            Some(own) if !own.is_empty() => format!("{description}\n\n{own}"),
            _ => description.to_owned(),
        };
        o.insert("description".into(), Value::String(text));
    }
    schema
}

/// The schema of one key of a section: the `spec`'s schema or else `T`'s, described by
/// the key's doc comment.
pub fn property<T: Schema>(spec: &mut Spec, docs: &[&str]) -> Value {
    let schema = spec.schema.take().unwrap_or_else(T::schema);
    describe(schema, &prose(docs))
}

/// The schema of a [`section!`](super::section) block: exactly these keys.
pub fn section(properties: Map<String, Value>, required: Vec<&str>) -> Value {
    let mut o = Map::new();
    o.insert("type".into(), json!("object"));
    o.insert("properties".into(), Value::Object(properties));
    if !required.is_empty() {
        o.insert("required".into(), json!(required));
    }
    o.insert("additionalProperties".into(), json!(false));
    Value::Object(o)
}

/// The whole document for the top-level block `T`.
pub fn document<T: Schema>(title: &str, description: &str) -> Value {
    let mut o = Map::new();
    o.insert("$schema".into(), json!(DRAFT));
    o.insert("title".into(), json!(title));
    o.insert("description".into(), json!(description));
    if let Value::Object(body) = T::schema() {
        o.extend(body);
    }
    Value::Object(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Behaviour: doc comments become readable descriptions (lines joined, paragraphs
    // kept).
    #[test]
    fn prose_joins_lines() {
        assert_eq!(
            prose(&[" One", " two.", "", " Three."]),
            "One two.\n\nThree."
        );
        assert_eq!(prose(&[]), "");
    }
}
