//! What the sections compiled later may refer to by name (issuers, upstreams, named
//! rate limits), handed from `compile.rs` to `routes.rs` and the shared `auth.rs` block;
//! and the fingerprint that identifies compiled settings across reloads.

use std::collections::HashMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::ratelimit;
use crate::auth::Issuer;
use crate::upstream::Upstream;

/// What the routes (and `server.admin_auth`) may refer to by name.
pub struct Refs<'a> {
    /// Compiled issuers, `local` (the token service) last: `AuthRule` indexes these.
    pub issuers: &'a [Arc<Issuer>],
    /// Every issuer name the file declares, compiled or not.
    pub issuer_names: Vec<&'a str>,
    /// Whether every entry of `issuers:` could be read (else a name is never "unknown":
    /// it may be the unreadable entry's).
    pub issuers_complete: bool,
    pub has_token_service: bool,
    pub upstreams: HashMap<&'a str, &'a Arc<Upstream>>,
    /// Every upstream name the file declares, compiled or not.
    pub upstream_names: Vec<&'a str>,
    pub upstreams_complete: bool,
    /// `server.extension_methods`: methods routes may name besides the standard ones.
    pub extension_methods: &'a [String],
    /// Loaded for `tollgate::layer`: routes need no `upstream`.
    pub embedded: bool,
    /// The named `rate_limits` routes may list.
    pub limits: &'a ratelimit::Compiled,
}

impl Refs<'_> {
    /// Declared in the file (it may have failed to compile: its own problem says why).
    pub fn issuer_declared(&self, name: &str) -> bool {
        !self.issuers_complete
            || self.issuer_names.contains(&name)
            || (name == "local" && self.has_token_service)
    }

    pub fn upstream_declared(&self, name: &str) -> bool {
        !self.upstreams_complete || self.upstream_names.contains(&name)
    }
}

/// A stable identity of an issuer's settings (length-prefixed parts, SHA-256): verified
/// tokens cached under one issuer are not trusted under a changed one.
pub fn fingerprint(parts: &[&str]) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in parts {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().into()
}
