//! `body_credentials: basic` (`credentials::body::rewrite`) on arbitrary form and JSON
//! bodies.
//!
//! Input: the first byte minus `b'0'` picks the content type (bits 0-2, see `TYPES`),
//! whether the request already has an `Authorization` header (bit 3) and
//! `grant_type_to_query` (bit 4); the rest is the body. Readable seeds: `0` form, `2`
//! JSON, `8` form with a header, `@` form with `grant_type_to_query`, `B` JSON with it. Properties:
//! - never panics; credentials in header and body are always refused;
//! - after a rewrite, the `Authorization: Basic` value decodes (with the token
//!   service's own parser) to exactly the `client_id`/`client_secret` of the body, the
//!   rewritten body holds neither field (nor `grant_type` when it moves to the query),
//!   and every other field is kept: for forms byte for byte and in order, for JSON in
//!   order with the same values;
//! - a body left alone carries no credentials a form or JSON parser would see.
#![no_main]

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use tollgate::credentials::body::rewrite;
use tollgate::token_service::parse_basic;

const TYPES: [Option<&str>; 8] = [
    Some("application/x-www-form-urlencoded"),
    Some("application/x-www-form-urlencoded; charset=UTF-8"),
    Some("application/json"),
    Some("application/vnd.api+json"),
    Some("Application/JSON ; charset=utf-8"),
    Some("text/plain"),
    Some("multipart/form-data; boundary=x"),
    None,
];

const CREDS: [&str; 2] = ["client_id", "client_secret"];

fn is_form(ct: Option<&str>) -> bool {
    ct.is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"))
}

fn is_json(ct: Option<&str>) -> bool {
    ct.is_some_and(|c| {
        let c = c
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        c == "application/json" || c.ends_with("+json")
    })
}

fn form_pairs(body: &[u8]) -> Vec<(&[u8], String, String)> {
    body.split(|b| *b == b'&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = form_urlencoded::parse(p).next().unwrap_or_default();
            (p, k.into_owned(), v.into_owned())
        })
        .collect()
}

fn field<'a>(pairs: &'a [(&[u8], String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(_, k, _)| k == name)
        .map(|(_, _, v)| v.as_str())
}

fn json_object(body: &[u8]) -> Option<Map<String, Value>> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    }
}

/// The top-level keys of a JSON object in order, with the value when it is a string.
/// Independent of `Value`, which refuses valid JSON such as `1e999` (out of f64 range).
struct Members(Vec<(String, Option<String>)>);

impl<'de> serde::Deserialize<'de> for Members {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Members, A::Error> {
                let mut out = Vec::new();
                while let Some(k) = m.next_key::<String>()? {
                    let v = m.next_value::<StrOrOther>()?;
                    out.push((k, v.0));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

struct StrOrOther(Option<String>);

impl<'de> serde::Deserialize<'de> for StrOrOther {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = StrOrOther;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any value")
            }
            fn visit_str<E>(self, s: &str) -> Result<StrOrOther, E> {
                Ok(StrOrOther(Some(s.to_owned())))
            }
            fn visit_bool<E>(self, _: bool) -> Result<StrOrOther, E> {
                Ok(StrOrOther(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<StrOrOther, E> {
                Ok(StrOrOther(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<StrOrOther, E> {
                Ok(StrOrOther(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<StrOrOther, E> {
                Ok(StrOrOther(None))
            }
            fn visit_unit<E>(self) -> Result<StrOrOther, E> {
                Ok(StrOrOther(None))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<StrOrOther, A::Error> {
                while m
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(StrOrOther(None))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut s: A,
            ) -> Result<StrOrOther, A::Error> {
                while s.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(StrOrOther(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// `Members` of a body, or None when it is not a JSON object. JSON is UTF-8 (RFC 8259
/// §8.1); serde only checks that in the strings it reads, not in those it skips.
fn json_members(body: &[u8]) -> Option<Vec<(String, Option<String>)>> {
    std::str::from_utf8(body).ok()?;
    let mut de = serde_json::Deserializer::from_slice(body);
    let m = <Members as serde::Deserialize>::deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(m.0)
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, body)) = data.split_first() else {
        return;
    };
    let flags = flags.wrapping_sub(b'0');
    let ct = TYPES[(flags & 7) as usize];
    let has_auth = flags & 8 != 0;
    let to_query = flags & 16 != 0;
    let mut headers = HeaderMap::new();
    if let Some(c) = ct {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(c));
    }
    if has_auth {
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Basic eDp5"));
    }
    let body = Bytes::copy_from_slice(body);
    let result = rewrite(&headers, &body, to_query);

    // What the body carries, read independently.
    let (id, secret, grant) = if is_form(ct) {
        let pairs = form_pairs(&body);
        (
            field(&pairs, "client_id").map(str::to_owned),
            field(&pairs, "client_secret").map(str::to_owned),
            field(&pairs, "grant_type").map(str::to_owned),
        )
    } else if is_json(ct) {
        let m = json_members(&body).unwrap_or_default();
        let s = |k: &str| m.iter().find(|(x, _)| x == k).and_then(|(_, v)| v.clone());
        (s("client_id"), s("client_secret"), s("grant_type"))
    } else {
        (None, None, None)
    };

    match result {
        Ok(Some((rest, auth, moved_grant))) => {
            assert!(!has_auth, "credentials in header and body must be refused");
            if is_json(ct) && json_members(&body).is_none() {
                assert!(
                    std::str::from_utf8(&body).is_ok(),
                    "rewrote a body that is not UTF-8"
                );
                // Valid JSON this reference cannot read (a number beyond f64, which serde
                // can only skip): check what can be checked without it.
                assert!(serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_ok());
                assert!(serde_json::from_slice::<serde::de::IgnoredAny>(&rest).is_ok());
                assert!(rest.starts_with(b"{"));
                let (id, _) = parse_basic(&auth)
                    .ok()
                    .flatten()
                    .expect("Basic value parses");
                assert!(!id.is_empty());
                return;
            }
            let (Some(id), Some(secret)) = (id, secret) else {
                panic!("rewrote a body without both credentials: {body:?}");
            };
            assert!(!id.is_empty());
            assert!(
                auth.is_sensitive(),
                "the Basic value must be marked sensitive"
            );
            assert_eq!(
                parse_basic(&auth).ok().flatten(),
                Some((id.clone(), secret.clone())),
                "Basic header does not carry the body's credentials"
            );
            if to_query {
                assert_eq!(moved_grant, grant, "grant_type moved wrongly");
            } else {
                assert!(moved_grant.is_none());
            }
            let removed: &[&str] = if to_query {
                &["client_id", "client_secret", "grant_type"]
            } else {
                &CREDS
            };
            if is_form(ct) {
                let before = form_pairs(&body);
                let after = form_pairs(&rest);
                let kept: Vec<&[u8]> = before
                    .iter()
                    .filter(|(_, k, _)| !removed.contains(&k.as_str()))
                    .map(|(p, _, _)| *p)
                    .collect();
                let got: Vec<&[u8]> = after.iter().map(|(p, _, _)| *p).collect();
                assert_eq!(
                    got, kept,
                    "other form fields must keep their bytes and order"
                );
            } else {
                let before = json_members(&body).expect("rewrote a non-object");
                for k in CREDS {
                    let n = before.iter().filter(|(x, _)| x == k).count();
                    assert_eq!(n, 1, "{k} given {n} times, yet rewritten");
                }
                let kept: Vec<&String> = before
                    .iter()
                    .map(|(k, _)| k)
                    .filter(|k| !removed.contains(&k.as_str()))
                    .collect();
                let after = json_members(&rest).expect("rewritten JSON body is an object");
                let got: Vec<&String> = after.iter().map(|(k, _)| k).collect();
                assert_eq!(got, kept, "other JSON members must stay, in order");
                // Where `Value` can read the body, the values are the same too.
                if let Some(mut before) = json_object(&body) {
                    for k in removed {
                        before.shift_remove(*k);
                    }
                    let after = json_object(&rest).expect("rewritten JSON body is readable");
                    let b: Vec<(&String, &Value)> = before.iter().collect();
                    let a: Vec<(&String, &Value)> = after.iter().collect();
                    assert_eq!(a, b, "other JSON fields must keep their values and order");
                }
            }
        }
        Ok(None) => {
            assert!(
                id.is_none() && secret.is_none(),
                "body with credentials forwarded unchanged: {body:?}"
            );
        }
        Err(_) => {}
    }
});
