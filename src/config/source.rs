//! Where every key of `gateway.yaml` stands (line and column).
//!
//! Checks speak in key paths (`routes[2].upstream`); this index turns them into
//! `file:line:col`. It is built from the YAML parser's events (granit-parser, the
//! parser serde-saphyr reads with) only when there is a problem or warning to report:
//! a clean file is read once.

use std::collections::HashMap;

use serde_saphyr::granit_parser::{Event, Parser, Span, StructureStyle};

/// 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

/// Positions of every key path in one YAML document.
#[derive(Debug, Default)]
pub struct PosIndex {
    /// Position of the value at a path (for a map entry: its value), for scalars and
    /// flow collections (`[a, b]`, `{a: b}`).
    values: HashMap<String, Pos>,
    /// Position of the key of a map entry.
    keys: HashMap<String, Pos>,
    /// Where a block collection starts (its first entry): used for a block that has
    /// no key of its own (a list item, the document).
    blocks: HashMap<String, Pos>,
}

impl PosIndex {
    pub fn build(text: &str) -> PosIndex {
        let mut builder = Builder::default();
        // A syntax error is reported by the reader with its own location; the index
        // is then simply partial.
        for event in Parser::new_from_str(text) {
            let Ok((event, span)) = event else { break };
            builder.on_event(event, span);
        }
        builder.index
    }

    /// Best position for a path: the value, else the key (a block mapping or list is
    /// pointed at by its key), else where the block starts, else the nearest parent.
    pub fn value_pos(&self, path: &str) -> Option<Pos> {
        let mut p = path;
        loop {
            let found = self.values.get(p).or_else(|| self.keys.get(p));
            if let Some(pos) = found.or_else(|| self.blocks.get(p)) {
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

fn join_key(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
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

fn pos(span: Span) -> Pos {
    Pos {
        line: span.start.line(),
        col: span.start.col() + 1,
    }
}

impl Builder {
    /// The path of the node that starts now, advancing the parent's state.
    /// Returns None when the node is a map key (recorded here).
    fn next_node_path(&mut self, scalar: Option<&str>, at: Pos) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { path, next }) => {
                let p = format!("{path}[{next}]");
                *next += 1;
                Some(p)
            }
            Some(Frame::Map { path, pending_key }) => match pending_key.take() {
                Some(key) => Some(join_key(path, &key)),
                None => {
                    // This node is a key.
                    let key = scalar.unwrap_or("?").to_owned();
                    let full = join_key(path, &key);
                    self.index.keys.entry(full).or_insert(at);
                    *pending_key = Some(key);
                    None
                }
            },
        }
    }

    fn collection_at(&mut self, path: &str, style: StructureStyle, at: Pos) {
        let map = match style {
            StructureStyle::Flow => &mut self.index.values,
            _ => &mut self.index.blocks,
        };
        map.entry(path.to_owned()).or_insert(at);
    }

    fn on_event(&mut self, ev: Event, span: Span) {
        let at = pos(span);
        match ev {
            Event::Scalar(ref v, ..) => {
                if let Some(p) = self.next_node_path(Some(v), at) {
                    self.index.values.entry(p).or_insert(at);
                }
            }
            Event::Alias(_) => {
                if let Some(p) = self.next_node_path(None, at) {
                    self.index.values.entry(p).or_insert(at);
                }
            }
            Event::MappingStart(style, ..) => {
                let p = self.next_node_path(None, at).unwrap_or_default();
                self.collection_at(&p, style, at);
                self.stack.push(Frame::Map {
                    path: p,
                    pending_key: None,
                });
            }
            Event::SequenceStart(style, ..) => {
                let p = self.next_node_path(None, at).unwrap_or_default();
                self.collection_at(&p, style, at);
                self.stack.push(Frame::Seq { path: p, next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
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
}
