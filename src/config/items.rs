//! Stage 1 for a long `routes:` list: the same readers, given one route at a time, and
//! a route whose text was read by an earlier load is not read again.
//!
//! A reload of a 10,000-route file spent ~90 % of its time in the YAML parser (~0.26 s,
//! bench/ANALYSIS.md), almost all of it re-reading routes that had not changed. Here the
//! text is cut into the `routes:` items and the rest ([`yaml::cut`]); the rest is read as
//! a document, each route not seen before is read by the route reader (all of them in
//! one document per thread, two threads when there are many), and each route seen before
//! is taken from what the last load read from exactly the same text. A route whose text
//! holds a `$` or a backslash is read every time (it may name a variable or a file,
//! `${env:..}` or an escaped `\x24{env:..}`, whose value may have changed).
//!
//! Whenever this cannot stand in for the one-document read exactly, it steps aside
//! (returns `None`) and the caller reads the whole text as before: when the text cannot
//! be cut on lines alone, and when the rest or any route reads with any problem, so
//! every message, hint and `line:col` is the one-document reader's. Debug builds (the
//! test suites) read every text both ways and panic when the two models differ.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::model::{self, ConfigModel, RouteModel};
use super::yaml::{self, cut, Cx, List};

/// Fewer routes than this to read are read on one thread.
const PARALLEL_FROM: usize = 256;

/// The routes the last load read, by their text (dedented), to be taken instead of
/// read again. Holds one config's routes: each load replaces it.
static READ_BEFORE: Mutex<Option<HashMap<Box<str>, RouteModel>>> = Mutex::new(None);

/// What [`read`] found: the model and the `${file:..}` paths named.
pub struct Read {
    pub model: ConfigModel,
    pub files: Vec<PathBuf>,
}

/// The model of `text`, its routes read one by one (see the module docs); `None` when
/// the whole text must be read as one document instead.
pub fn read(text: &str, base: &Path) -> Option<Read> {
    let cut = cut::cut(text, "routes")?;
    let mut cx = Cx::new(base, model::PLACES);
    let mut model = yaml::read::<ConfigModel>(&cut.rest, &mut cx).ok()??;
    if has_problems(&cx) || !model.routes.is_empty() {
        return None;
    }
    let mut files = std::mem::take(&mut cx.files);
    let texts: Vec<String> = cut
        .items
        .iter()
        .map(|item| {
            let mut s = String::with_capacity(item.len());
            cut::dedent_into(item, cut.indent, &mut s);
            s
        })
        .collect();
    let mut before = READ_BEFORE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .unwrap_or_default();
    let mut routes: Vec<Option<RouteModel>> =
        texts.iter().map(|t| before.remove(t.as_str())).collect();
    drop(before);
    let unread: Vec<usize> = (0..routes.len()).filter(|&i| routes[i].is_none()).collect();
    let read_some = |ids: &[usize]| read_routes(ids.iter().map(|&i| texts[i].as_str()), base);
    let fresh = if unread.len() >= PARALLEL_FROM {
        let (a, b) = unread.split_at(unread.len() / 2);
        let (a, b) = std::thread::scope(|s| {
            // A thread that cannot be made: this one reads both halves.
            let other = std::thread::Builder::new()
                .name("config-read".into())
                .spawn_scoped(s, || read_some(b));
            let first = read_some(a);
            let second = match other {
                Ok(h) => h.join().ok().flatten(),
                Err(_) => read_some(b),
            };
            (first, second)
        });
        let (mut a, b) = (a?, b?);
        a.0.extend(b.0);
        a.1.extend(b.1);
        a
    } else {
        read_some(&unread)?
    };
    if fresh.0.len() != unread.len() {
        return None;
    }
    files.extend(fresh.1);
    for (i, route) in unread.into_iter().zip(fresh.0) {
        routes[i] = Some(route);
    }
    // Remember what was read, unless it may have named something that can change
    // (`${env:..}`, `${file:..}`, also when spelt with an escape such as `\x24{`).
    let mut now = HashMap::with_capacity(texts.len());
    for (t, r) in texts.into_iter().zip(&routes) {
        if let Some(r) = r.as_ref().filter(|_| !may_substitute(&t)) {
            now.insert(t.into_boxed_str(), r.clone());
        }
    }
    *READ_BEFORE.lock().unwrap_or_else(|e| e.into_inner()) = Some(now);
    model.routes = routes.into_iter().flatten().collect();
    Some(Read { model, files })
}

/// Reads route texts (each a one-item list) as one list; `None` on any problem or
/// when not every text gave one route.
fn read_routes<'t>(
    texts: impl Iterator<Item = &'t str>,
    base: &Path,
) -> Option<(Vec<RouteModel>, Vec<PathBuf>)> {
    let mut doc = String::new();
    let mut n = 0;
    for t in texts {
        doc.push_str(t);
        n += 1;
    }
    if n == 0 {
        return Some((Vec::new(), Vec::new()));
    }
    let mut cx = Cx::new(base, model::PLACES);
    let list = yaml::read::<List<RouteModel>>(&doc, &mut cx).ok()??;
    if has_problems(&cx) || list.len() != n || list.has_holes() {
        return None;
    }
    Some((list.into_values().collect(), cx.files))
}

/// Whether a route's text may hold a `${...}` reference: a `$`, or a backslash (a
/// double-quoted escape can spell `$` or `{`). Such a route is read on every load.
fn may_substitute(text: &str) -> bool {
    text.contains(['$', '\\'])
}

fn has_problems(cx: &Cx) -> bool {
    !cx.problems.errors.is_empty() || !cx.problems.warnings.is_empty()
}

/// Debug builds: the model [`read`] gave must be the one-document read's, exactly.
#[cfg(any(test, debug_assertions))]
pub fn check_same(text: &str, base: &Path, by_items: &Read) {
    let mut cx = Cx::new(base, model::PLACES);
    let whole = yaml::read::<ConfigModel>(text, &mut cx);
    let whole = match whole {
        Ok(Some(m)) if !has_problems(&cx) => m,
        // Never the text itself: it may hold secrets. The models print them redacted.
        _ => panic!(
            "read by items, but the whole text reads with problems: {:?}",
            cx.problems
                .errors
                .iter()
                .map(|p| &p.path)
                .collect::<Vec<_>>()
        ),
    };
    assert_eq!(
        format!("{:?}", whole),
        format!("{:?}", by_items.model),
        "the model read by items differs from the one-document read"
    );
    let (mut a, mut b) = (cx.files, by_items.files.clone());
    a.sort();
    b.sort();
    assert_eq!(a, b, "the files named differ");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> &'static Path {
        Path::new(".")
    }

    /// A config whose routes use what a hand-written file may hold: comments between
    /// and inside items (some at column 0), a block scalar whose lines look like items,
    /// quoted values with `#` and `: `, flow lists, `${env:..}`, an item that opens with
    /// a bare `-`, and a list that ends with comments before the next section.
    fn varied(n: usize, changed: Option<usize>, var: &str) -> String {
        let mut s = String::from("# top\nserver:\n  listen: \"127.0.0.1:0\"\nroutes:\n");
        for i in 0..n {
            let flag = changed == Some(i);
            match i % 5 {
                0 => s.push_str(&format!("  - name: r{i}\n    path_prefix: /r{i}\n    upstream: u\n    auth: none\n    strip_cookies: {flag}\n")),
                1 => s.push_str(&format!("# column 0\n  - name: \"r{i} # not a comment\"\n    path_prefix: '/r{i}'\n    upstream: u   # trailing\n    auth: none\n    hosts: [a.example, \"b.example\"]\n    strip_cookies: {flag}\n\n")),
                2 => s.push_str(&format!("  -\n    name: |-\n      - r{i}, not an item\n      routes:\n    path_prefix: /r{i}\n    upstream: u\n    auth: none\n    strip_cookies: {flag}\n")),
                3 => s.push_str(&format!("  - name: r{i}\n    path_prefix: /r{i}/${{env:{var}}}\n    upstream: u\n    auth: none\n    strip_cookies: {flag}\n")),
                _ => s.push_str(&format!("  - {{name: r{i}, path_prefix: /r{i}, upstream: u, auth: none, strip_cookies: {flag}}}\n  # after\n")),
            }
        }
        s.push_str("# end of routes\nupstreams:\n  - name: u\n    url: \"http://127.0.0.1:1\"\n");
        s
    }

    fn by_items(text: &str) -> Read {
        let r = read(text, base()).expect("read by items");
        check_same(text, base(), &r);
        r
    }

    // Behaviour: routes read one by one give exactly the model of the one-document
    // read, on first read, when read again (taken from what was read), and after one
    // route changed (that one read again, the new value in the model).
    #[test]
    fn routes_read_by_items_are_the_one_document_model() {
        std::env::set_var("TOLLGATE_ITEMS_TEST", "a");
        let text = varied(600, None, "TOLLGATE_ITEMS_TEST");
        let first = by_items(&text);
        assert_eq!(first.model.routes.len(), 600);
        let again = by_items(&text);
        assert_eq!(format!("{:?}", again.model), format!("{:?}", first.model));
        let changed = varied(600, Some(100), "TOLLGATE_ITEMS_TEST");
        let after = by_items(&changed);
        let r100 = after.model.routes.iter().nth(100).unwrap().1;
        assert_eq!(r100.strip_cookies, Some(true));
        // A `${env:..}` route is read again every time: a changed variable shows.
        std::env::set_var("TOLLGATE_ITEMS_TEST", "b");
        let env = by_items(&changed);
        let r3 = env.model.routes.iter().nth(3).unwrap().1;
        assert!(
            format!("{:?}", r3.path_prefix).contains("/r3/b"),
            "{:?}",
            r3.path_prefix
        );
    }

    // Behaviour: a reference spelt with an escape (`\x24{env:..}`, `\u0024{file:..}`)
    // is resolved on every load like a plain one: the variable's new value and the
    // file named are there on the second read too (found by review: such routes were
    // remembered and served the old value).
    #[test]
    fn escaped_references_are_read_again_on_every_load() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("n.txt"), "from-file").unwrap();
        let text = "routes:\n  - name: \"\\x24{env:TOLLGATE_ITEMS_TEST_3}\"\n    path_prefix: /a\n  - name: \"\\u0024{file:n.txt}\"\n    path_prefix: /b\n";
        for value in ["one", "two"] {
            std::env::set_var("TOLLGATE_ITEMS_TEST_3", value);
            let r = read(text, dir.path()).expect("read by items");
            check_same(text, dir.path(), &r);
            let names: Vec<_> = r.model.routes.values().map(|x| x.name.clone()).collect();
            assert_eq!(
                names,
                [Some(value.to_owned()), Some("from-file".to_owned())]
            );
            assert_eq!(r.files, [dir.path().join("n.txt")]);
        }
    }

    // Behaviour: a route with a problem hands the whole text to the one-document read
    // (which reports it at its line), and so does a text the lines cannot cut.
    #[test]
    fn problems_and_uncuttable_texts_are_read_as_one_document() {
        std::env::set_var("TOLLGATE_ITEMS_TEST_2", "a");
        let good = varied(20, None, "TOLLGATE_ITEMS_TEST_2");
        assert!(read(&good, base()).is_some());
        let text = good.replace("  - name: r5\n", "  - name: r5\n    upstraem: u\n");
        assert_ne!(text, good);
        assert!(read(&text, base()).is_none());
        let aliased = "routes:\n  - &r {name: a, path_prefix: /a, upstream: u, auth: none}\nupstreams:\n  - name: u\n    url: \"http://127.0.0.1:1\"\n";
        assert!(read(aliased, base()).is_none());
    }

    // Behaviour: every YAML config in the repository (the shipped one, the fuzz seeds,
    // the policy tests' and the deployment's) is either left to the one-document read or
    // read by items to the same model.
    #[test]
    fn the_repositorys_configs_read_the_same_by_items() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = vec![
            root.join("gateway.yaml"),
            root.join("deploy/kubernetes/gateway.yaml"),
        ];
        for dir in ["fuzz/seeds/config", "fuzz/seeds/cases"] {
            for e in std::fs::read_dir(root.join(dir)).unwrap() {
                files.push(e.unwrap().path());
            }
        }
        let mut by = 0;
        for f in files {
            let Ok(text) = std::fs::read_to_string(&f) else {
                continue;
            };
            if let Some(r) = read(&text, f.parent().unwrap()) {
                check_same(&text, f.parent().unwrap(), &r);
                by += 1;
            }
        }
        assert!(by >= 2, "the shipped configs are read by items");
    }
}
