//! `${env:NAME}` and `${file:PATH}` in any string value of `gateway.yaml`, resolved
//! while the text is read (`yaml.rs`), before any check sees the value.
//!
//! `$${` stands for a literal `${`. A file's content loses one trailing newline (so
//! that `echo secret > file` works). A variable can never inject YAML structure: the
//! result is always the one string value it stood in.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

/// `s` with every reference resolved (borrowed when there was none), or the problem
/// with the first one that cannot be. Messages name the variable or file, never a value.
pub fn expand<'s>(s: &'s str, base: &Path) -> Result<Cow<'s, str>, String> {
    if !s.contains("${") {
        return Ok(Cow::Borrowed(s));
    }
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
        out.push_str(&resolve(&body[..end], base)?);
        rest = &body[end + 1..];
    }
    out.push_str(rest);
    Ok(Cow::Owned(out))
}

fn resolve(reference: &str, base: &Path) -> Result<String, String> {
    if let Some(name) = reference.strip_prefix("env:") {
        return match std::env::var(name) {
            Ok(v) => Ok(v),
            Err(std::env::VarError::NotPresent) => {
                Err(format!("environment variable {name} is not set"))
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                Err(format!("environment variable {name} is not valid UTF-8"))
            }
        };
    }
    if let Some(file) = reference.strip_prefix("file:") {
        let p = resolve_path(base, file);
        return match std::fs::read_to_string(&p) {
            Ok(mut v) => {
                if v.ends_with('\n') {
                    v.pop();
                    if v.ends_with('\r') {
                        v.pop();
                    }
                }
                Ok(v)
            }
            Err(e) => Err(format!("cannot read file {}: {e}", p.display())),
        };
    }
    Err(format!(
        "unknown reference `${{{reference}}}`: use ${{env:NAME}} or ${{file:PATH}}"
    ))
}

/// Every `${file:PATH}` in `s` (so that a change to one reloads the config).
pub fn file_references(s: &str, base: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find("${file:") {
        if rest[..i].ends_with('$') {
            // `$${file:..}` is literal text.
            rest = &rest[i + 7..];
            continue;
        }
        let body = &rest[i + 7..];
        let Some(end) = body.find('}') else { break };
        out.push(resolve_path(base, &body[..end]));
        rest = &body[end..];
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

#[cfg(test)]
mod tests {
    use super::*;

    // Behaviour: env and file references resolve; a missing one is a problem naming
    // it; `$${` is a literal.
    #[test]
    fn substitution() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("s.txt"), "from-file\n").unwrap();
        std::env::set_var("TOLLGATE_TEST_SUBST", "from-env");
        let x = |s| expand(s, dir.path());
        assert_eq!(x("${env:TOLLGATE_TEST_SUBST}/x").unwrap(), "from-env/x");
        assert_eq!(x("${file:s.txt}").unwrap(), "from-file");
        assert_eq!(x("$${env:X}").unwrap(), "${env:X}");
        assert!(matches!(x("plain $ text").unwrap(), Cow::Borrowed(_)));
        let e = x("${env:TOLLGATE_NOPE_NOT_SET}").unwrap_err();
        assert!(e.contains("TOLLGATE_NOPE_NOT_SET"), "{e}");
        assert!(x("${file:missing.txt}")
            .unwrap_err()
            .contains("missing.txt"));
        assert!(x("${nope:x}").unwrap_err().contains("unknown reference"));
        assert!(x("${env:X").unwrap_err().contains("unterminated"));
        assert_eq!(
            file_references("${file:a}-$${file:b}-${file:c}", Path::new("/d")),
            [PathBuf::from("/d/a"), PathBuf::from("/d/c")]
        );
    }
}
