//! Cutting a long block list of the top level (`routes:`) into its items' texts, so that
//! each item can be read on its own (and an item read before need not be read again, see
//! `config::items`). The cut is made on lines, before any YAML reader runs, and only
//! where lines alone say for certain where each item begins and ends; anything else
//! ([`cut`] returns `None`) is read as one document, as always.
//!
//! What makes lines enough: in block style, a list at indentation `n` holds every line
//! indented deeper than `n` that follows its `- `, until a line at `n` or less that is
//! not blank or a comment. A block scalar (`|`, `>`), a plain scalar's continuation lines
//! and nested blocks are all deeper than `n`, so they never end an item early. What could
//! make a line lie about structure is refused as a whole: a tab or a carriage return, a
//! directive or document marker (`%`, `---`, `...`), an anchor, alias or tag (`&`, `*`, `!`
//! where a node can begin: an alias in one item could name an anchor in another), a
//! complex key (`? `), a quote left open at the end of a line (a quoted scalar spanning
//! lines), a flow collection left open at the end of a line, and a top level in flow
//! style. These tests are coarse on purpose: a false alarm only costs the one-document
//! read.

/// A text with the items of one top-level block list cut out.
pub struct Cut<'t> {
    /// The document with the list's items replaced by `[]`.
    pub rest: String,
    /// Each item as written: its lines, from its `- ` to the next item (comments and
    /// blank lines after it included), the list's indentation included.
    pub items: Vec<&'t str>,
    /// The list's indentation (spaces before each `- `).
    pub indent: usize,
}

/// Cuts `text`'s top-level block list under `key` into items (see the module docs);
/// `None` when the text is not one that lines alone can cut, or has no such list.
pub fn cut<'t>(text: &'t str, key: &str) -> Option<Cut<'t>> {
    if text.starts_with('\u{feff}') || !plain_lines(text) {
        return None;
    }
    // The `key:` line at column 0, exactly once.
    let mut found = None;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if is_key_line(line, key) {
            if found.is_some() {
                return None;
            }
            found = Some((offset, offset + line.len()));
        }
        offset += line.len();
    }
    let (start, after) = found?;
    let mut items = Vec::new();
    let mut indent = None;
    let mut item = None;
    let mut end = text.len();
    let mut pos = after;
    for line in text[after..].split_inclusive('\n') {
        let body = line.strip_suffix('\n').unwrap_or(line);
        let trimmed = body.trim_start_matches(' ');
        let ind = body.len() - trimmed.len();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            pos += line.len();
            continue;
        }
        let n = *indent.get_or_insert(ind);
        let dash = trimmed == "-" || trimmed.starts_with("- ");
        if ind < n || (ind == n && !dash) {
            // Only a key of the top level ends the list; anything else is refused.
            if ind != 0 || dash {
                return None;
            }
            end = pos;
            break;
        }
        if ind == n {
            if let Some(s) = item {
                items.push(&text[s..pos]);
            }
            item = Some(pos);
        }
        pos += line.len();
    }
    items.push(&text[item?..end]);
    let mut rest = String::with_capacity(start + text.len() - end + key.len() + 6);
    rest.push_str(&text[..start]);
    rest.push_str(key);
    rest.push_str(": []\n");
    rest.push_str(&text[end..]);
    Some(Cut {
        rest,
        items,
        indent: indent?,
    })
}

/// Appends `item` to `out` with `indent` spaces taken off each line (fewer on a comment
/// or blank line that has fewer), so that items cut from one list read as a list of
/// their own.
pub fn dedent_into(item: &str, indent: usize, out: &mut String) {
    for line in item.split_inclusive('\n') {
        let spaces = line.len() - line.trim_start_matches(' ').len();
        out.push_str(&line[spaces.min(indent)..]);
    }
    if !out.ends_with('\n') {
        out.push('\n');
    }
}

/// `key:` alone on its line at column 0 (a comment after it allowed).
fn is_key_line(line: &str, key: &str) -> bool {
    let Some(rest) = line.strip_prefix(key).and_then(|r| r.strip_prefix(':')) else {
        return false;
    };
    let rest = rest.trim_end_matches(['\n', ' ']);
    rest.is_empty() || (rest.starts_with(' ') && rest.trim_start().starts_with('#'))
}

/// Whether nothing in the text can make its lines lie about its block structure (see
/// the module docs). Quoted scalars are followed (a `#`, `&` or `[` inside one is text);
/// one still open at the end of its line is refused.
fn plain_lines(text: &str) -> bool {
    if text.contains(['\t', '\r']) {
        return false;
    }
    for line in text.lines() {
        if line.starts_with(['%', '{', '[', '"', '\''])
            || line.starts_with("---")
            || line.starts_with("...")
        {
            return false;
        }
        let b = line.as_bytes();
        let mut depth = 0i32;
        let mut i = 0;
        while i < b.len() {
            let c = b[i];
            // Where a node may begin: the line's start, or after a space or an indicator.
            let node_start = i == 0 || matches!(b[i - 1], b' ' | b'[' | b'{' | b',' | b'-' | b':');
            match c {
                b'"' | b'\'' if node_start => {
                    // To the closing quote on this line (`\x` escapes in double quotes,
                    // `''` in single ones), or refused.
                    i += 1;
                    loop {
                        match b.get(i) {
                            None => return false,
                            Some(b'\\') if c == b'"' => i += 2,
                            Some(&q) if q == c => {
                                if c == b'\'' && b.get(i + 1) == Some(&b'\'') {
                                    i += 2;
                                } else {
                                    break;
                                }
                            }
                            Some(_) => i += 1,
                        }
                    }
                }
                b'&' | b'*' | b'!' if node_start => return false,
                b'?' if node_start && matches!(b.get(i + 1), None | Some(b' ')) => return false,
                b'[' | b'{' => depth += 1,
                b']' | b'}' => depth -= 1,
                b'#' if i == 0 || b[i - 1] == b' ' => break,
                _ => {}
            }
            i += 1;
        }
        if depth != 0 {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "server:\n  listen: \"127.0.0.1:0\"\nroutes:   # the routes\n  - name: a\n    path_prefix: /a/*\n    methods: [\"*\"]\n\n  # about b\n  - name: b\n    note: |\n      - not an item\n      text\n  -\n    name: c\nupstreams:\n  - name: u\n";

    // Behaviour: the items of the list are cut where each `- ` at the list's indentation
    // begins, comments and blank lines stay with the item before them, and the rest of
    // the document keeps everything else with the list replaced by `[]`.
    #[test]
    fn cuts_the_items_of_the_list() {
        let c = cut(DOC, "routes").unwrap();
        assert_eq!(c.indent, 2);
        assert_eq!(
            c.items,
            [
                "  - name: a\n    path_prefix: /a/*\n    methods: [\"*\"]\n\n  # about b\n",
                "  - name: b\n    note: |\n      - not an item\n      text\n",
                "  -\n    name: c\n",
            ]
        );
        assert_eq!(
            c.rest,
            "server:\n  listen: \"127.0.0.1:0\"\nroutes: []\nupstreams:\n  - name: u\n"
        );
        let mut out = String::new();
        dedent_into(c.items[2], c.indent, &mut out);
        assert_eq!(out, "-\n  name: c\n");
        // A list at column 0, ending the file without a newline.
        let c = cut("routes:\n- name: a\n- name: b", "routes").unwrap();
        assert_eq!((c.indent, c.items), (0, vec!["- name: a\n", "- name: b"]));
    }

    // Behaviour: whatever lines alone cannot cut for certain is left to the one-document
    // read.
    #[test]
    fn refuses_what_lines_cannot_tell() {
        for (doc, why) in [
            ("routes:\n  - &a {name: a}\n  - *a\n", "anchor and alias"),
            ("routes:\n  - name: !!str a\n", "tag"),
            ("routes:\n  - ? name\n    : a\n", "complex key"),
            (
                "routes:\n  - name: \"a\n    b\"\n",
                "quoted scalar over two lines",
            ),
            (
                "routes:\n  - methods: [GET,\n      POST]\n",
                "flow list over two lines",
            ),
            ("routes:\n\t- name: a\n", "tab"),
            ("routes:\r\n  - name: a\r\n", "carriage return"),
            ("%YAML 1.2\n---\nroutes:\n  - name: a\n", "directive"),
            (
                "routes:\n  - name: a\n---\nroutes:\n  - name: b\n",
                "two documents",
            ),
            (
                "routes:\n  - name: a\nroutes:\n  - name: b\n",
                "the key twice",
            ),
            ("{routes:\n  [a]}\n", "flow top level"),
            ("routes: [a, b]\n", "flow list"),
            ("routes:\n  name: a\n", "a mapping"),
            ("routes:\nserver: {}\n", "an empty list"),
            (
                "routes:\n    - name: a\n  - name: b\n",
                "uneven indentation",
            ),
            (
                "server:\n  routes:\n    - name: a\n",
                "not at the top level",
            ),
        ] {
            assert!(cut(doc, "routes").is_none(), "{why}: {doc:?}");
        }
        // Markers inside values are not structure.
        assert!(cut(
            "routes:\n  - path: /api/*\n    methods: [\"*\"]\n    d: it is 5*3 # a&b\n",
            "routes"
        )
        .is_some());
    }
}
