//! Cloud Foundry service keys (`credentials::service_key::parse`, behind
//! `upstreams[].auth.service_key`): the JSON an operator's file or environment variable
//! holds.
//!
//! Properties:
//! - no panic, whatever the bytes;
//! - an accepted key has a non-empty client id and secret, and a token URL that is the
//!   key's `tokenurl` or ends in `/oauth/token`;
//! - a refusal never echoes a value of the key: a key that is JSON is refused with one of
//!   a closed set of messages (naming a field, never holding a value); only text that is
//!   not JSON gets serde_json's own message, which gives a position, not the text;
//! - the secret never shows in `Debug`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::credentials::service_key::parse;

/// Every refusal of a key that is JSON.
fn known_refusals() -> Vec<String> {
    let mut out = vec!["the service key must be a JSON object".to_owned()];
    for f in ["clientid", "clientsecret", "tokenurl", "url"] {
        for m in [
            format!("the service key has no \"{f}\""),
            format!("the service key's \"{f}\" is empty"),
            format!("the service key's \"{f}\" is not a string"),
        ] {
            out.push(format!("{m}: it is an X.509 service key (credential-type x509); create one with credential-type binding-secret"));
            out.push(m);
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse(text) {
        Ok(k) => {
            assert!(!k.client_id.trim().is_empty());
            assert!(!k.client_secret.expose().trim().is_empty());
            assert!(
                k.token_url.ends_with("/oauth/token") || text.contains("tokenurl"),
                "{}",
                k.token_url
            );
            let dbg = format!("{k:?}");
            assert!(dbg.contains("[redacted]"));
            // What Debug prints besides the id and URL: a secret that is part of it (a
            // secret `secret` is in `client_secret`) proves nothing.
            let skeleton =
                "ServiceKey { token_url: \"\", client_id: \"\", client_secret: [redacted] }";
            // The other fields as Debug prints them: escaping can make a secret of them
            // (a URL with `\` prints `\\`, which a secret `a\\b` matches; found).
            let shown = |field: &str| format!("{field:?}");
            if k.client_secret.expose().len() >= 6
                && !skeleton.contains(k.client_secret.expose())
                && !shown(&k.client_id).contains(k.client_secret.expose())
                && !shown(&k.token_url).contains(k.client_secret.expose())
            {
                assert!(!dbg.contains(k.client_secret.expose()), "{dbg}");
            }
        }
        Err(e) => {
            if serde_json::from_str::<serde_json::Value>(text.trim()).is_ok() {
                assert!(known_refusals().contains(&e), "unexpected refusal {e:?}");
            } else {
                assert!(
                    e.starts_with("the service key is not valid JSON ("),
                    "{e:?}"
                );
                let serde = &e["the service key is not valid JSON (".len()..];
                assert!(
                    serde.contains(" at line ") || serde.starts_with("EOF while parsing"),
                    "serde_json's message gives a position: {e:?}"
                );
            }
        }
    }
});
