//! A route's `cors:` block: which browser origins may call it, with which methods and
//! headers. Compiles to [`Cors`], which `cors.rs` (the request step) applies to
//! preflights and responses.

use super::validate::{self as v, At, Problems};
use super::yaml::{section, DurationText, List};
use crate::cors::{Cors, OriginPattern};

section! {
    pub struct CorsModel {
        /// Origins allowed, e.g. https://app.example.com, https://*.example.com or "*".
        "allow_origins" => pub allow_origins: List<String>,
        /// Methods allowed.
        "allow_methods" => pub allow_methods: List<String> as schema(v::methods_schema()),
        /// Request headers allowed.
        "allow_headers" => pub allow_headers: List<String>,
        /// Response headers the browser may read.
        "expose_headers" => pub expose_headers: List<String>,
        /// Allow cookies and Authorization (never with origin "*").
        "allow_credentials" => pub allow_credentials: bool,
        /// How long a browser may cache a preflight answer.
        "max_age" => pub max_age: Option<DurationText>,
    }
}

pub fn compile(c: &CorsModel, path: At, methods: &[String], p: &mut Problems) -> Option<Cors> {
    let origins = origins(c, path, p);
    for (j, m) in c.allow_methods.iter() {
        v::method(p, path.key("allow_methods").index(j), m, methods);
    }
    for (key, list) in [
        ("allow_headers", &c.allow_headers),
        ("expose_headers", &c.expose_headers),
    ] {
        for (j, h) in list.iter() {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                p.add(
                    path.key(key).index(j).to_string(),
                    format!("invalid header name \"{h}\""),
                );
            }
        }
    }
    let max_age = c
        .max_age
        .as_ref()
        .map(|m| v::duration(p, path.key("max_age"), Some(m), std::time::Duration::ZERO));
    Cors::new(
        origins,
        &c.allow_methods.to_vec(),
        &c.allow_headers.to_vec(),
        &c.expose_headers.to_vec(),
        c.allow_credentials,
        max_age,
    )
    .map_err(|e| p.add(path.to_string(), e))
    .ok()
}

fn origins(c: &CorsModel, path: At, p: &mut Problems) -> Vec<OriginPattern> {
    let opath = path.key("allow_origins");
    if c.allow_origins.is_empty() {
        p.add(opath.to_string(), "list at least one origin");
    }
    let mut origins = Vec::with_capacity(c.allow_origins.len());
    for (j, o) in c.allow_origins.iter() {
        match OriginPattern::parse(o) {
            Ok(OriginPattern::Any) if c.allow_credentials => p.add(
                opath.index(j).to_string(),
                "\"*\" together with allow_credentials: true is not allowed (browsers refuse it, and it would let any site read credentialed responses); list the origins",
            ),
            Ok(x) => origins.push(x),
            Err(e) => p.add(opath.index(j).to_string(), e),
        }
    }
    origins
}
