//! Project rules about how `src/` is put together, checked on the source text.
//!
//! Behaviour: no two modules (files) of `src/` import each other, directly or around a
//! loop, and the runtime model (what a request reads) never imports the config parser.
//! A helper or type in the wrong module shows up here as a cycle, naming its files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// `src/a/b.rs` -> `a::b`; `src/a/mod.rs` -> `a`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts.join("::")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of a file without comments, strings and its `#[cfg(test)]` part.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    let mut out = String::new();
    for line in text.lines() {
        let line = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        let mut in_str = false;
        for c in line.chars() {
            if c == '"' {
                in_str = !in_str;
            } else if !in_str {
                out.push(c);
            }
        }
        out.push('\n');
    }
    out
}

/// Every `crate::a::b...` path (also inside `use crate::{a, b::{c, d}}` groups) and
/// every `super::x` path, resolved to the deepest module that exists.
fn imports(module: &str, code: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let text = code;
    let mut parent: Vec<String> = module.split("::").map(str::to_owned).collect();
    parent.pop();
    let mut found = BTreeSet::new();
    let mut paths = Vec::new();
    for (root, base) in [("crate::", Vec::new()), ("super::", parent)] {
        let mut at = 0;
        while let Some(i) = text[at..].find(root) {
            let start = at + i;
            at = start + root.len();
            // `xcrate::` is not `crate::`.
            if text[..start]
                .chars()
                .last()
                .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
            {
                continue;
            }
            parse_tree(&text[at..], base.clone(), &mut paths);
        }
    }
    for path in paths {
        for n in (1..=path.len()).rev() {
            let m = path[..n].join("::");
            if modules.contains(&m) {
                if m != module {
                    found.insert(m);
                }
                break;
            }
        }
    }
    found
}

/// Reads `a::b::{c, d::e}` at the start of `s` (a path, or a tree of them; whitespace
/// allowed between tokens) into `out`; returns how many bytes it read.
fn parse_tree(s: &str, prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let b = s.as_bytes();
    let skip_ws = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    let mut path = prefix;
    let mut i = skip_ws(0);
    loop {
        let start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            i += 1;
        }
        if i > start {
            path.push(s[start..i].to_owned());
        }
        i = skip_ws(i);
        let group = i == start && b.get(i) == Some(&b'{');
        if group || s[i..].starts_with("::") {
            if !group {
                i = skip_ws(i + 2);
            }
            if b.get(i) == Some(&b'{') {
                i += 1;
                loop {
                    i = skip_ws(i);
                    if b.get(i) == Some(&b'}') {
                        return i + 1;
                    }
                    i += parse_tree(&s[i..], path.clone(), out);
                    i = skip_ws(i);
                    match b.get(i) {
                        Some(b',') => i += 1,
                        Some(b'}') => return i + 1,
                        _ => return i,
                    }
                }
            }
            continue;
        }
        if i > 0 && !path.is_empty() {
            out.push(path);
        }
        return i;
    }
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut g = BTreeMap::new();
    for f in &files {
        let m = module_of(&src, f);
        if m == "lib" || m == "main" {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        g.insert(m.clone(), imports(&m, &code(&text), &modules));
    }
    g
}

/// Strongly connected components with more than one module (Tarjan).
fn cycles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        t.index.insert(v, t.next);
        t.low.insert(v, t.next);
        t.next += 1;
        t.stack.push(v);
        t.on.insert(v);
        for w in t.g.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !t.g.contains_key(w) {
                continue;
            }
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low[v];
                t.low.insert(v, lv.min(lw));
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low[v];
                t.low.insert(v, lv.min(iw));
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                comp.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in g.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

#[test]
fn no_import_cycles_among_src_modules() {
    let g = graph();
    assert!(
        g.contains_key("stack") && g["stack"].contains("gate"),
        "graph misread: {g:?}"
    );
    let found = cycles(&g);
    let explain: Vec<String> = found
        .iter()
        .map(|c| {
            let edges: Vec<String> = c
                .iter()
                .flat_map(|a| {
                    g[a].iter()
                        .filter(|b| c.contains(b))
                        .map(move |b| format!("{a} -> {b}"))
                })
                .collect();
            format!("{{{}}}: {}", c.join(", "), edges.join("; "))
        })
        .collect();
    assert!(explain.is_empty(), "import cycles:\n{}", explain.join("\n"));
}

#[test]
fn the_runtime_model_does_not_import_the_config_parser() {
    let g = graph();
    let bad: Vec<&String> = g["runtime"]
        .iter()
        .filter(|m| *m == "config" || m.starts_with("config::"))
        .collect();
    assert!(bad.is_empty(), "runtime imports {bad:?}");
}

// The checker itself: a loop it is shown is found, `super::` and groups included.
#[test]
fn the_checker_finds_a_planted_cycle() {
    let modules: BTreeSet<String> = ["a", "a::b", "c", "d"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut g = BTreeMap::new();
    g.insert(
        "a".to_owned(),
        imports(
            "a",
            &code("use crate::{\n    c,\n    x::{y, z},\n};"),
            &modules,
        ),
    );
    g.insert(
        "a::b".to_owned(),
        imports("a::b", &code("use super::Thing; // crate::c"), &modules),
    );
    g.insert(
        "c".to_owned(),
        imports("c", &code("fn f() { crate::a::b::g() }"), &modules),
    );
    assert_eq!(g["a::b"], BTreeSet::from(["a".to_owned()]));
    assert_eq!(g["a"], BTreeSet::from(["c".to_owned()]));
    let d = imports(
        "d",
        &code("use crate::a::{b::B, C};\nlet s = \"crate::c\";"),
        &modules,
    );
    assert_eq!(d, BTreeSet::from(["a".to_owned(), "a::b".to_owned()]));
    assert_eq!(cycles(&g), vec![vec!["a", "a::b", "c"]]);
}
