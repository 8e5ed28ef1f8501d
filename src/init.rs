//! `tollgate init`: not on the request path. Writes a commented starter `gateway.yaml`
//! that passes `tollgate validate` as written: one identity provider, one upstream, a
//! protected route and a public one, with the optional blocks (TLS, limits, upstream
//! credentials, permissions, CORS, rate limits, the token service) shown commented out;
//! and beside it `gateway.schema.json`, the config's JSON Schema its first line points
//! editors at.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The starter config. Kept valid by `tests/it/cli.rs` (written by the real binary, then
/// checked with `tollgate validate`).
pub const STARTER: &str = r#"# yaml-language-server: $schema=./gateway.schema.json
# gateway.yaml: tollgate's config. Written by `tollgate init`; edit it for your setup.
#
#   tollgate validate --config gateway.yaml   # check it: every problem, with line and key
#   tollgate run --config gateway.yaml        # serve it; edits are applied live
#
# Unknown keys are errors, so a typo never silently switches a check off. The first
# line points editors (VS Code's YAML extension, IntelliJ) at gateway.schema.json,
# written beside this file (`tollgate schema` prints it): completion and checks as you type.
# Any string may use ${env:NAME} or ${file:PATH} (keep secrets out of this file).
# Durations: 500ms, 30s, 10m, 1h.

server:
  listen: "127.0.0.1:8080"          # the public listener (HTTP/1.1 and h2c); 0.0.0.0:8080 for all interfaces
  admin_listen: "127.0.0.1:9901"    # /healthz /readyz /metrics /admin/*: never expose it publicly
  # tls:                            # HTTPS on `listen` (ALPN h2 + http/1.1); reloaded with the config
  #   cert: certs/server.pem
  #   key: certs/server-key.pem
  # limits:                         # the defaults
  #   max_header_bytes: 16384       # larger request head -> 431
  #   max_body_bytes: 10485760      # larger body -> 413
  #   header_read_timeout: 10s
  #   request_timeout: 60s          # end to end -> 504
  #   max_connections: 10000

# Who may sign the Bearer tokens routes accept.
issuers:
  - name: corp
    issuer: "https://idp.example.com"                        # the tokens' `iss`, exactly
    jwks_uri: "https://idp.example.com/.well-known/jwks.json"  # or discovery: <OIDC metadata URL>
    audiences: ["https://api.example.com"]                   # `aud` must contain one of these
    # algorithms: [RS256, ES256]    # default: every asymmetric algorithm; never `none` or HS*
    # leeway: 30s                   # clock skew allowed on exp/nbf

# The backends tollgate forwards to.
upstreams:
  - name: backend
    url: "http://127.0.0.1:9000"    # https:// upstreams are verified against the system roots
    connect_timeout: 5s             # -> 502
    timeout: 30s                    # until the response head -> 504
    # auth:                         # credentials tollgate adds on the way upstream
    #   type: oauth2_client_credentials
    #   token_url: "https://idp.example.com/oauth2/token"
    #   client_id: gateway
    #   client_secret: "${env:BACKEND_CLIENT_SECRET}"
    #   scope: "backend.read"

# The longest matching path_prefix wins (on a segment boundary: /api matches /api/x, not /apix).
routes:
  - name: api
    path_prefix: /api
    upstream: backend
    auth:                           # every route needs an auth block, or `auth: none`
      issuers: [corp]
      scopes: [api.read]            # every one is required
      # clients: [reporting-app]    # only these client ids
    # permissions:                  # when present, whatever no entry allows is denied
    #   - path: /api/reports/*      # `*` is one segment, a trailing /** any rest
    #     methods: [GET]
    #   - path: /api/admin/**
    #     methods: [GET, POST]
    #     scopes: [api.admin]       # extra scopes for this endpoint
    # rate_limits: [per-client]     # names from the top-level rate_limits below
    # cors:                         # for browser apps on another origin
    #   allow_origins: ["https://app.example.com"]
    #   allow_methods: [GET, POST]
    #   allow_headers: [Authorization, Content-Type]
  - name: public
    path_prefix: /public
    upstream: backend
    auth: none                      # no token needed

# Rate limits and quotas, listed by routes; counted after authorisation (429 when over):
# rate_limits:
#   - name: per-client
#     key: client                   # client | subject | ip | header:NAME
#     limit: 100
#     per: 1m                       # any 60 s (sliding); `window: fixed` + `per: 1d` = a daily quota
#     # store: redis                # count across replicas in stores.redis (default: local)
# stores:
#   redis:
#     url: "redis://redis:6379/0"

# tollgate can issue client_credentials tokens itself (routes accept them as issuer `local`):
# token_service:
#   path: /oauth2/token
#   issuer: "https://gateway.example.com"
#   audience: "https://api.example.com"
#   signing_key: keys/signing.pem   # shared by every replica; without it a key is made at start
#   clients:
#     - id: reporting-app
#       secret_hash: "${env:REPORTING_APP_SECRET_HASH}"   # made with: tollgate hash-secret
#       scopes: [api.read]
"#;

/// The file name the starter's first line gives editors (beside the config).
pub const SCHEMA_FILE: &str = "gateway.schema.json";

/// The text of `gateway.schema.json`: the config's JSON Schema, pretty-printed.
pub fn schema_text() -> String {
    let mut text = serde_json::to_string_pretty(&crate::config::model::schema())
        .expect("a JSON value always serialises");
    text.push('\n');
    text
}

/// What [`write`] did with [`SCHEMA_FILE`] beside the config.
#[derive(Debug, PartialEq)]
pub enum SchemaFile {
    Written(PathBuf),
    /// Already there with this version's schema.
    Current,
    /// There with other content, and not replaced (no `force`).
    Kept(PathBuf),
}

/// Writes [`STARTER`] to `path` and the schema its first line names beside it. An
/// existing file is left alone unless `force`; then it is replaced atomically (a
/// temporary file renamed over it), so a tollgate watching it never reads half a file.
/// Missing parent folders are created.
pub fn write(path: &Path, force: bool) -> Result<SchemaFile, String> {
    write_file(path, STARTER, force)?;
    let schema = path.with_file_name(SCHEMA_FILE);
    let text = schema_text();
    match std::fs::read_to_string(&schema) {
        Ok(old) if old == text => Ok(SchemaFile::Current),
        Ok(_) if !force => Ok(SchemaFile::Kept(schema)),
        _ => {
            write_file(&schema, &text, true)?;
            Ok(SchemaFile::Written(schema))
        }
    }
}

fn write_file(path: &Path, text: &str, force: bool) -> Result<(), String> {
    let shown = path.display();
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {shown}: {e}"))?;
    }
    if !force {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => {
                    format!("{shown} already exists; it was not changed (--force replaces it)")
                }
                _ => format!("cannot create {shown}: {e}"),
            })?;
        return f
            .write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| format!("cannot write {shown}: {e}"));
    }
    let tmp = temp_sibling(path);
    let result = std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("cannot write {shown}: {e}"));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn temp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "gateway.yaml".into());
    path.with_file_name(format!(".{name}.tollgate-init.{}", std::process::id()))
}
