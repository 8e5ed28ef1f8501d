//! Where every key of `gateway.yaml` stands (line and column), and `${env:..}` /
//! `${file:..}` substitution.
//!
//! serde_yaml does not tell where a value was, so the file is read a second time with
//! yaml-rust2's event parser to build a map from key path (`routes[2].upstream`) to its
//! position. Validation speaks in key paths; this map turns them into `file:line:col`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

/// Positions of every key path in one YAML document.
#[derive(Debug, Default)]
pub struct PosIndex {
    /// Position of the value at a path (for a map entry: its value).
    values: HashMap<String, Pos>,
    /// Position of the key of a map entry.
    keys: HashMap<String, Pos>,
}

impl PosIndex {
    pub fn build(text: &str) -> PosIndex {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        // A syntax error is reported by serde_yaml with its own location; the index is
        // then simply partial.
        let _ = parser.load(&mut builder, false);
        builder.index
    }

    /// Best position for a path: the value, else the key, else the nearest parent.
    pub fn value_pos(&self, path: &str) -> Option<Pos> {
        let mut p = path;
        loop {
            if let Some(pos) = self.values.get(p).or_else(|| self.keys.get(p)) {
                return Some(*pos);
            }
            p = parent_path(p)?;
        }
    }

    /// Position of the key itself (used for unknown keys), falling back to the value.
    pub fn key_pos(&self, path: &str) -> Option<Pos> {
        self.keys
            .get(path)
            .copied()
            .or_else(|| self.value_pos(path))
    }
}

fn parent_path(p: &str) -> Option<&str> {
    if p.is_empty() {
        return None;
    }
    let cut = p.rfind(['.', '[']).unwrap_or(0);
    Some(&p[..cut])
}

pub fn join_key(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

pub fn join_index(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

enum Frame {
    Map {
        path: String,
        pending_key: Option<String>,
    },
    Seq {
        path: String,
        next: usize,
    },
}

#[derive(Default)]
struct Builder {
    index: PosIndex,
    stack: Vec<Frame>,
}

fn pos(m: Marker) -> Pos {
    Pos {
        line: m.line(),
        col: m.col() + 1,
    }
}

impl Builder {
    /// The path of the node that starts now, advancing the parent's state.
    /// Returns None when the node is a map key (recorded by the caller).
    fn next_node_path(&mut self, scalar: Option<&str>, mark: Marker) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { path, next }) => {
                let p = join_index(path, *next);
                *next += 1;
                Some(p)
            }
            Some(Frame::Map { path, pending_key }) => match pending_key.take() {
                Some(key) => Some(join_key(path, &key)),
                None => {
                    // This node is a key.
                    let key = scalar.unwrap_or("?").to_owned();
                    let full = join_key(path, &key);
                    self.index.keys.entry(full).or_insert(pos(mark));
                    *pending_key = Some(key);
                    None
                }
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(ref v, ..) => {
                if let Some(p) = self.next_node_path(Some(v), mark) {
                    self.index.values.entry(p).or_insert(pos(mark));
                }
            }
            Event::Alias(_) => {
                if let Some(p) = self.next_node_path(None, mark) {
                    self.index.values.entry(p).or_insert(pos(mark));
                }
            }
            Event::MappingStart(..) => {
                let p = self.next_node_path(None, mark).unwrap_or_default();
                self.index.values.entry(p.clone()).or_insert(pos(mark));
                self.stack.push(Frame::Map {
                    path: p,
                    pending_key: None,
                });
            }
            Event::SequenceStart(..) => {
                let p = self.next_node_path(None, mark).unwrap_or_default();
                self.index.values.entry(p.clone()).or_insert(pos(mark));
                self.stack.push(Frame::Seq { path: p, next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

/// Resolves `${env:NAME}` and `${file:PATH}` in every string of the document.
/// `$${` stands for a literal `${`. Problems are returned as (path, message).
pub fn substitute(value: &mut serde_yaml::Value, base_dir: &Path) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    walk(value, String::new(), base_dir, &mut problems);
    problems
}

fn walk(
    value: &mut serde_yaml::Value,
    path: String,
    base: &Path,
    problems: &mut Vec<(String, String)>,
) {
    use serde_yaml::Value;
    match value {
        // A plain `${env:PORT}` standing where a number is expected is retyped.
        Value::String(s) if s.contains("${") => match expand(s, base) {
            Ok(new) => *value = retype(new),
            Err(msg) => problems.push((path, msg)),
        },
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                walk(item, join_index(&path, i), base, problems);
            }
        }
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let key = match k {
                    Value::String(s) => s.clone(),
                    other => serde_yaml::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_owned(),
                };
                walk(v, join_key(&path, &key), base, problems);
            }
        }
        Value::Tagged(t) => walk(&mut t.value, path, base, problems),
        _ => {}
    }
}

/// Numbers and booleans that came from a variable become numbers and booleans again;
/// nothing else is re-parsed, so a variable can never inject YAML structure.
fn retype(s: String) -> serde_yaml::Value {
    if let Ok(n) = s.parse::<u64>() {
        return serde_yaml::Value::Number(n.into());
    }
    match s.as_str() {
        "true" => serde_yaml::Value::Bool(true),
        "false" => serde_yaml::Value::Bool(false),
        _ => serde_yaml::Value::String(s),
    }
}

fn expand(s: &str, base: &Path) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = t;
            continue;
        }
        let Some(body) = tail.strip_prefix("${") else {
            out.push('$');
            rest = &tail[1..];
            continue;
        };
        let Some(end) = body.find('}') else {
            return Err("unterminated `${` (write `$${` for a literal `${`)".into());
        };
        let reference = &body[..end];
        if let Some(name) = reference.strip_prefix("env:") {
            match std::env::var(name) {
                Ok(v) => out.push_str(&v),
                Err(std::env::VarError::NotPresent) => {
                    return Err(format!("environment variable {name} is not set"))
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(format!("environment variable {name} is not valid UTF-8"))
                }
            }
        } else if let Some(file) = reference.strip_prefix("file:") {
            let p = resolve_path(base, file);
            match std::fs::read_to_string(&p) {
                Ok(mut v) => {
                    if v.ends_with('\n') {
                        v.pop();
                        if v.ends_with('\r') {
                            v.pop();
                        }
                    }
                    out.push_str(&v);
                }
                Err(e) => return Err(format!("cannot read file {}: {e}", p.display())),
            }
        } else {
            return Err(format!(
                "unknown reference `${{{reference}}}`: use ${{env:NAME}} or ${{file:PATH}}"
            ));
        }
        rest = &body[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Every `${file:PATH}` the document refers to (so that a change to one reloads).
pub fn file_references(value: &serde_yaml::Value, base: &Path) -> Vec<PathBuf> {
    use serde_yaml::Value;
    let mut out = Vec::new();
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            Value::String(s) => {
                let mut rest = s.as_str();
                while let Some(i) = rest.find("${file:") {
                    let body = &rest[i + 7..];
                    let Some(end) = body.find('}') else { break };
                    out.push(resolve_path(base, &body[..end]));
                    rest = &body[end..];
                }
            }
            Value::Sequence(items) => stack.extend(items.iter()),
            Value::Mapping(m) => stack.extend(m.values()),
            Value::Tagged(t) => stack.push(&t.value),
            _ => {}
        }
    }
    out
}

/// Relative paths in the config are relative to the config file's folder.
pub fn resolve_path(base: &Path, p: &str) -> PathBuf {
    let path = Path::new(p);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

/// Strings wrapped in typographic quotes are almost always a paste from a word processor.
pub fn curly_quote_problems(value: &serde_yaml::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    curly(value, String::new(), &mut out);
    out
}

pub const CURLY: [char; 6] = [
    '\u{201C}', '\u{201D}', '\u{2018}', '\u{2019}', '\u{201E}', '\u{00AB}',
];

fn curly(value: &serde_yaml::Value, path: String, out: &mut Vec<(String, String)>) {
    use serde_yaml::Value;
    match value {
        Value::String(s) => {
            let t = s.trim();
            if t.starts_with(CURLY) || t.ends_with(CURLY) {
                out.push((
                    path,
                    "value is wrapped in curly quotes (\u{201C}\u{201D} or \u{2018}\u{2019}), \
                     probably pasted from a document; YAML needs straight quotes: \" or '"
                        .to_owned(),
                ));
            }
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                curly(item, join_index(&path, i), out);
            }
        }
        Value::Mapping(map) => {
            for (k, v) in map {
                if let Value::String(key) = k {
                    curly(v, join_key(&path, key), out);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Behaviour: key paths map to 1-based line:col of the value and of the key.
    #[test]
    fn positions_of_nested_keys() {
        let text = "server:\n  listen: \"x\"\nroutes:\n  - name: a\n    upstream: bi\n  - name: b\n    hosts: [h1, h2]\n";
        let idx = PosIndex::build(text);
        assert_eq!(
            idx.value_pos("server.listen"),
            Some(Pos { line: 2, col: 11 })
        );
        assert_eq!(idx.key_pos("server.listen"), Some(Pos { line: 2, col: 3 }));
        assert_eq!(
            idx.value_pos("routes[0].upstream"),
            Some(Pos { line: 5, col: 15 })
        );
        assert_eq!(idx.key_pos("routes[1].name"), Some(Pos { line: 6, col: 5 }));
        assert_eq!(
            idx.value_pos("routes[1].hosts[1]"),
            Some(Pos { line: 7, col: 17 })
        );
        // Unknown deeper path falls back to the nearest parent.
        assert_eq!(
            idx.value_pos("routes[0].upstream.x"),
            Some(Pos { line: 5, col: 15 })
        );
    }

    // Behaviour: env and file references resolve; a missing one is a problem, not a panic.
    #[test]
    fn substitution() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("s.txt"), "from-file\n").unwrap();
        std::env::set_var("TOLLGATE_TEST_SUBST", "from-env");
        let mut v: serde_yaml::Value = serde_yaml::from_str(
            "a: \"${env:TOLLGATE_TEST_SUBST}/x\"\nb: \"${file:s.txt}\"\nc: \"$${env:X}\"\nd: \"${env:TOLLGATE_NOPE_NOT_SET}\"\n",
        )
        .unwrap();
        let problems = substitute(&mut v, dir.path());
        assert_eq!(v["a"], serde_yaml::Value::String("from-env/x".into()));
        assert_eq!(v["b"], serde_yaml::Value::String("from-file".into()));
        assert_eq!(v["c"], serde_yaml::Value::String("${env:X}".into()));
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].0, "d");
        assert!(problems[0].1.contains("TOLLGATE_NOPE_NOT_SET"));
    }

    #[test]
    fn curly_quotes_are_flagged() {
        let v: serde_yaml::Value =
            serde_yaml::from_str("scopes: [\u{201C}analytics.read\u{201D}, ok]").unwrap();
        let p = curly_quote_problems(&v);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].0, "scopes[0]");
    }
}
