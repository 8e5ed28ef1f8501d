//! Stage 1 of 3: `gateway.yaml` text -> the config model, in one pass.
//!
//! serde-saphyr reads the text straight into the model types of the section files
//! (`server.rs`, `routes.rs`, ...): there is no tree of YAML values in between. Reading
//! never stops at a problem. Every node is read by a [`Node`] impl that accepts
//! whatever the YAML holds at that place and records in [`Cx`] what is wrong with it (a
//! value of the wrong kind, an unknown or repeated key, an unset `${env:..}`), so one
//! pass finds every problem of that kind; only a YAML syntax error stops it. Problems
//! carry key paths (`routes[2].upstream`); `source.rs` turns them into `line:col` once
//! there is something to report. The section files then check the values and compile
//! them (stage 2 and 3).
//!
//! [`scalar`] reads text, numbers and booleans; [`block`] lists, mappings and the
//! blocks of named keys the section files declare with [`section!`](section).
//!
//! Why not `#[derive(Deserialize)]`: serde's derive stops at the first problem (and
//! `deny_unknown_fields` at the first unknown key), so a file with ten mistakes would
//! take ten rounds of `tollgate validate`. The [`section!`](section) macro writes
//! the same struct with a reader that collects instead, and knows its own keys for
//! "did you mean" hints.

mod block;
pub mod cut;
mod scalar;
pub mod schema;

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::de::{DeserializeSeed, Deserializer, MapAccess};

pub(crate) use block::section;
pub use block::{read_section, List, Section};
pub use scalar::{DurationText, ListenAddr, Number, Scalar, Word};
pub use schema::Schema;

use super::subst;
use super::validate::{self as v, Problems};

/// Where reading is, and what it found: the key path of the node being read, the
/// problems so far, the folder `${file:..}` paths are relative to and the files named.
pub struct Cx<'a> {
    base: &'a Path,
    /// Every block of the file and its keys (`model::PLACES`): where an unknown key
    /// that its own block cannot explain belongs.
    places: Places,
    path: Vec<Seg>,
    pub problems: Problems,
    /// Every `${file:..}` named (read or not: a file that appears later reloads).
    pub files: Vec<PathBuf>,
}

/// One step of a key path. Keys of the model are `&'static str`: a path is only
/// written out when a problem is recorded.
enum Seg {
    Key(&'static str),
    Name(String),
    Index(usize),
}

/// `(place, keys)` of every block: `("upstreams[]", &["name", "url", ...])`.
pub type Places = &'static [(&'static str, &'static [&'static str])];

impl<'a> Cx<'a> {
    /// `places`: the blocks of the document, for "is a key of" hints.
    pub fn new(base: &'a Path, places: Places) -> Self {
        Cx {
            base,
            places,
            path: Vec::with_capacity(8),
            problems: Problems::default(),
            files: Vec::new(),
        }
    }

    /// The folder `${file:..}` paths are relative to.
    pub fn base(&self) -> &'a Path {
        self.base
    }

    /// The key path of the node being read (`routes[2].permissions[0].methods`).
    pub fn path(&self) -> String {
        let mut out = String::new();
        for seg in &self.path {
            match seg {
                Seg::Key(k) => push_key(&mut out, k),
                Seg::Name(k) => push_key(&mut out, k),
                Seg::Index(i) => {
                    use fmt::Write;
                    let _ = write!(out, "[{i}]");
                }
            }
        }
        out
    }

    pub fn error(&mut self, message: impl Into<String>) {
        let path = self.path();
        self.problems.add(path, message);
    }

    /// A value of the wrong kind: `expected a whole number, found a list`.
    pub fn wrong(&mut self, expected: &str, found: &str) {
        self.error(format!("expected {expected}, found {found}"));
    }

    /// A key this place does not have, with the closest key it does have, or else the
    /// places that have such a key ("\"timeout\" is a key of upstreams[]").
    fn unknown_key(&mut self, key: &str, here: &[&'static str]) {
        let mut path = self.path();
        push_key(&mut path, key);
        let message = match v::suggest(key, here) {
            Some(h) => format!("unknown key \"{key}\" (did you mean \"{h}\"?)"),
            None => {
                let places = places_with_key(self.places, key);
                if places.is_empty() {
                    format!("unknown key \"{key}\"")
                } else {
                    format!(
                        "unknown key \"{key}\" here (\"{key}\" is a key of {})",
                        places.join(", ")
                    )
                }
            }
        };
        self.problems.at_key(path, message);
    }

    fn duplicate_key(&mut self, key: &str) {
        let mut path = self.path();
        push_key(&mut path, key);
        self.problems.at_key(
            path,
            format!("\"{key}\" is given twice in the same block (remove one)"),
        );
    }

    /// A string as written, after `${env:..}` / `${file:..}` substitution. `None`
    /// when a reference cannot be resolved (recorded). The flag says whether anything
    /// was substituted.
    pub fn text<'s>(&mut self, s: Cow<'s, str>) -> Option<(Cow<'s, str>, bool)> {
        // Nearly every value is plain ASCII without `$`: one look at each byte.
        if !s.bytes().any(|b| b == b'$' || !b.is_ascii()) {
            return Some((s, false));
        }
        if let Some(problem) = curly_quotes(&s) {
            self.error(problem);
        }
        if !s.contains('$') {
            return Some((s, false));
        }
        self.files.extend(subst::file_references(&s, self.base));
        match subst::expand(&s, self.base) {
            Ok(Cow::Borrowed(_)) => Some((s, false)),
            Ok(Cow::Owned(expanded)) => Some((Cow::Owned(expanded), true)),
            Err(message) => {
                self.error(message);
                None
            }
        }
    }
}

/// The places (at most three) that have a key named `key`.
pub fn places_with_key(places: Places, key: &str) -> Vec<&'static str> {
    places
        .iter()
        .filter(|(_, keys)| keys.contains(&key))
        .map(|(place, _)| *place)
        .take(3)
        .collect()
}

fn push_key(out: &mut String, key: &str) {
    if !out.is_empty() {
        out.push('.');
    }
    out.push_str(key);
}

/// Strings wrapped in typographic quotes are almost always a paste from a word processor.
fn curly_quotes(s: &str) -> Option<&'static str> {
    const CURLY: [char; 6] = [
        '\u{201C}', '\u{201D}', '\u{2018}', '\u{2019}', '\u{201E}', '\u{00AB}',
    ];
    let t = s.trim();
    (t.starts_with(CURLY) || t.ends_with(CURLY)).then_some(
        "value is wrapped in curly quotes (\u{201C}\u{201D} or \u{2018}\u{2019}), probably \
         pasted from a document; YAML needs straight quotes: \" or '",
    )
}

/// Something a config node reads into. `Ok(None)` means "absent or unusable": null, or
/// a value whose problem was recorded in [`Cx`]. `Err` is only ever the YAML reader's
/// own error (a syntax error), which ends reading.
pub trait Node: Sized {
    fn read<'de, D: Deserializer<'de>>(d: D, cx: &mut Cx) -> Result<Option<Self>, D::Error>;
}

/// Reads `T` as a map value, a list element or the document (a `DeserializeSeed`).
pub struct Seed<'c, 'a, T>(pub &'c mut Cx<'a>, PhantomData<T>);

impl<'c, 'a, T> Seed<'c, 'a, T> {
    pub fn new(cx: &'c mut Cx<'a>) -> Self {
        Seed(cx, PhantomData)
    }
}

impl<'de, T: Node> DeserializeSeed<'de> for Seed<'_, '_, T> {
    type Value = Option<T>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<T>, D::Error> {
        T::read(d, self.0)
    }
}

/// The value of a struct field: [`Node::read`], absent or unusable as the default.
pub fn field<'de, F: Node + Default, A: MapAccess<'de>>(
    map: &mut A,
    cx: &mut Cx,
) -> Result<F, A::Error> {
    Ok(map.next_value_seed(Seed::<F>::new(cx))?.unwrap_or_default())
}

/// The value of a key that restricts access ([`schema::Spec::restricts`]): like
/// [`field`], but a null value is an error. Read as "not given", `scopes:` left empty
/// would lift the restriction it was written to impose.
pub fn field_not_null<'de, F: Node + Default, A: MapAccess<'de>>(
    map: &mut A,
    cx: &mut Cx,
) -> Result<F, A::Error> {
    Ok(map
        .next_value_seed(NotNull::<F>(cx, PhantomData))?
        .unwrap_or_default())
}

struct NotNull<'c, 'a, T>(&'c mut Cx<'a>, PhantomData<T>);

impl<T> NotNull<'_, '_, T> {
    fn refuse(self) -> Option<T> {
        self.0.error(
            "no value: this key restricts access, and left empty it would lift that \
             restriction; give it its values, or remove the key if none is meant",
        );
        None
    }
}

impl<'de, T: Node> DeserializeSeed<'de> for NotNull<'_, '_, T> {
    type Value = Option<T>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<T>, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de, T: Node> serde::de::Visitor<'de> for NotNull<'_, '_, T> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a value")
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Option<T>, E> {
        Ok(self.refuse())
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Option<T>, E> {
        Ok(self.refuse())
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<T>, D::Error> {
        T::read(d, self.0)
    }
}

impl<T: Node> Node for Option<T> {
    fn read<'de, D: Deserializer<'de>>(d: D, cx: &mut Cx) -> Result<Option<Self>, D::Error> {
        T::read(d, cx).map(Some)
    }
}

/// Why reading stopped: the text is not YAML (or not a mapping at the top).
pub struct Stop {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// The options every read uses. Duplicate keys are passed through to the readers
/// above (which report them and carry on); `<<` is an ordinary (unknown) key; only
/// `true`/`false` are booleans (YAML 1.2: `on`, `yes`, `no` are text); `0755` stays
/// text; tags the reader does not know are refused; a file can hold a few million
/// nodes (a 10,000-route config has ~300,000).
fn options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_events: 50_000_000,
            max_nodes: 20_000_000,
        },
        with_snippet: false,
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::PassThrough,
        merge_keys: serde_saphyr::MergeKeyPolicy::AsOrdinary,
        strict_booleans: true,
        leading_zero_numbers_as_strings: true,
        non_finite_float_policy: serde_saphyr::NonFiniteFloatPolicy::PassThrough,
        reject_unsupported_tags: true,
    }
}

/// Reads the whole document as `T` (the config's top level). `Ok(None)`: the document
/// is empty.
pub fn read<T: Node>(text: &str, cx: &mut Cx) -> Result<Option<T>, Stop> {
    let result =
        serde_saphyr::with_deserializer_from_str_with_options(text, options(), |d| T::read(d, cx));
    result.map_err(|e| stop(text, &e))
}

/// A reader error in words for the admin: the parser's sentence without its own
/// location suffix, and a plain one for tabs in indentation.
fn stop(text: &str, e: &serde_saphyr::Error) -> Stop {
    let (line, column) = e
        .location()
        .map(|l| (l.line() as usize, l.column() as usize))
        .unwrap_or((1, 1));
    if let Some((tl, tc)) = indentation_tab(text, line) {
        return Stop {
            line: tl,
            column: tc,
            message: "YAML syntax error: a tab in the indentation; YAML indents with \
                      spaces only (replace the tab with spaces)"
                .into(),
        };
    }
    let full = e.to_string();
    let message = full
        .rsplit_once(" at line ")
        .map(|(m, _)| m)
        .unwrap_or(&full)
        .trim();
    Stop {
        line: line.max(1),
        column: column.max(1),
        message: format!("YAML syntax error: {message}"),
    }
}

/// The first tab in the leading whitespace of a line up to one past `line` (a tab the
/// parser stopped at, or one that made it misread the line before).
fn indentation_tab(text: &str, line: usize) -> Option<(usize, usize)> {
    if !text.contains('\t') {
        return None;
    }
    text.lines().take(line + 1).enumerate().find_map(|(i, l)| {
        let indent = l.len() - l.trim_start_matches([' ', '\t']).len();
        l[..indent].find('\t').map(|c| (i + 1, c + 1))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    section! {
        pub struct Inner {
            "name" => pub name: Option<String>,
            "port" => pub port: Option<u16>,
        }
    }

    section! {
        pub struct Top {
            "inner" => pub inner: Option<Inner>,
            "items" => pub items: List<Inner>,
            "count" => pub count: Option<u64>,
            "on" => pub on: bool,
            "secret" => pub secret: Option<Secret>,
            "wait" => pub wait: Option<DurationText>,
        }
    }

    fn read_top(text: &str) -> (Option<Top>, Vec<(String, String)>) {
        let mut cx = Cx::new(Path::new("."), &[]);
        let top = read::<Top>(text, &mut cx).ok().flatten();
        let p = cx.problems.errors.iter();
        (
            top,
            p.map(|p| (p.path.clone(), p.message.clone())).collect(),
        )
    }

    // Behaviour: every problem is found in one read, each at its key path, and the
    // rest of the document is still read.
    #[test]
    fn every_problem_in_one_pass() {
        let (top, problems) = read_top(
            "inner: {name: a, port: 99999, nmae: b}\nitems:\n  - name: x\n  - 5\n  - name: [y]\n    port: 80\ncount: \"7\"\non: yes\nsecret: 12345\nwait: 30\nextra: 1\n",
        );
        let paths: Vec<&str> = problems.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "inner.port",
                "inner.nmae",
                "items[1]",
                "items[2].name",
                "count",
                "on",
                "secret",
                "wait",
                "extra"
            ],
            "{problems:#?}"
        );
        let text = format!("{problems:?}");
        assert!(text.contains("did you mean \\\"name\\\""), "{text}");
        assert!(!text.contains("12345"), "a secret is never echoed: {text}");
        assert!(text.contains("write \\\"30s\\\""), "{text}");
        let top = top.unwrap();
        assert_eq!(top.inner.unwrap().name.as_deref(), Some("a"));
        // The hole at items[1] keeps items[2] at its index.
        let items: Vec<usize> = top.items.iter().map(|(i, _)| i).collect();
        assert_eq!(items, [0, 2]);
        assert_eq!(top.items.len(), 3);
    }

    // Behaviour: a repeated key is a problem, not a silent override.
    #[test]
    fn duplicate_keys() {
        let (_, problems) = read_top("count: 1\ncount: 2\n");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].1.contains("twice"), "{problems:?}");
    }

    // Behaviour: an empty document is "nothing", a syntax error stops with its place.
    #[test]
    fn empty_and_broken_documents() {
        let mut cx = Cx::new(Path::new("."), &[]);
        assert!(matches!(read::<Top>("# nothing\n", &mut cx), Ok(None)));
        let e = read::<Top>("inner: [a\n", &mut cx).err().unwrap();
        assert!(
            e.message.starts_with("YAML syntax error: "),
            "{}",
            e.message
        );
        assert!(!e.message.contains(" at line "), "{}", e.message);
        let e = read::<Top>("inner:\n\tname: a\n", &mut cx).err().unwrap();
        assert_eq!((e.line, e.column), (2, 1));
        assert!(e.message.contains("indents with spaces"), "{}", e.message);
    }
}
