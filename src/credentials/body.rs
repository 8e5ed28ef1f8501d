//! Step 6 of the request path: `body_credentials: basic`.
//!
//! A third party that can only send `client_id`/`client_secret` in a form or JSON body,
//! in front of a token endpoint that wants `Authorization: Basic`: both fields are
//! removed from the body, `Authorization: Basic base64(urlencode(id):urlencode(secret))`
//! is added (RFC 6749 §2.3.1), every other field stays as it was, and Content-Length is
//! recomputed. Credentials in header and body, or only one of the two fields -> 400.
//! The body read is bounded by `max_body_bytes`; nothing of the secret is logged.
//! The step itself is `body_layer::BodyCredentialsLayer`.

use bytes::Bytes;
use http::header::{
    HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING,
};

use super::basic_header;
use crate::error::GatewayError;

/// The rewritten body and the `Authorization` value, or None when the body carries
/// no credentials (it is then forwarded unchanged).
pub fn rewrite(
    headers: &HeaderMap,
    body: &Bytes,
    grant_type_to_query: bool,
) -> Result<Option<(Bytes, HeaderValue, Option<String>)>, GatewayError> {
    let ct = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let (id, secret, rest, grant) = if ct == "application/x-www-form-urlencoded" {
        form(body, grant_type_to_query)?
    } else if ct == "application/json" || ct.ends_with("+json") {
        match json(body, grant_type_to_query)? {
            Some(x) => x,
            None => return Ok(None),
        }
    } else {
        return Ok(None);
    };
    match (id, secret) {
        (None, None) => Ok(None),
        (Some(id), Some(secret)) => {
            if headers.contains_key(AUTHORIZATION) {
                return Err(GatewayError::BadRequest(
                    "client credentials in both the Authorization header and the body; send them in one place".into(),
                ));
            }
            if id.is_empty() {
                return Err(GatewayError::BadRequest(
                    "client_id in the body is empty".into(),
                ));
            }
            Ok(Some((rest, basic_header(&id, &secret), grant)))
        }
        (Some(_), None) => Err(GatewayError::BadRequest(
            "client_id in the body without client_secret".into(),
        )),
        (None, Some(_)) => Err(GatewayError::BadRequest(
            "client_secret in the body without client_id".into(),
        )),
    }
}

type Parts = (Option<String>, Option<String>, Bytes, Option<String>);

/// Keeps every other field's bytes exactly as sent.
fn form(body: &Bytes, grant_to_query: bool) -> Result<Parts, GatewayError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| GatewayError::BadRequest("form body is not UTF-8".into()))?;
    let (mut id, mut secret, mut grant) = (None, None, None);
    let mut kept: Vec<&str> = Vec::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = form_urlencoded::parse(pair.as_bytes())
            .next()
            .unwrap_or_default();
        let slot = match k.as_ref() {
            "client_id" => &mut id,
            "client_secret" => &mut secret,
            "grant_type" if grant_to_query => &mut grant,
            _ => {
                kept.push(pair);
                continue;
            }
        };
        if slot.replace(v.into_owned()).is_some() {
            return Err(GatewayError::BadRequest(format!(
                "{k} is given more than once"
            )));
        }
    }
    Ok((id, secret, Bytes::from(kept.join("&")), grant))
}

/// Keeps every other member's text exactly as sent (numbers are never re-printed: a
/// 30-digit integer or `1.10` reaches the upstream unchanged).
fn json(body: &Bytes, grant_to_query: bool) -> Result<Option<Parts>, GatewayError> {
    let Ok(text) = std::str::from_utf8(body) else {
        return Ok(None);
    };
    if !text.trim_start().starts_with('{')
        || serde_json::from_str::<serde::de::IgnoredAny>(text).is_err()
    {
        return Ok(None);
    }
    let Some(members) = json_members(text) else {
        return Ok(None);
    };
    let (mut id, mut secret, mut grant) = (None, None, None);
    let mut kept: Vec<&str> = Vec::new();
    for (key, value, member) in members {
        let slot = match key.as_str() {
            "client_id" => &mut id,
            "client_secret" => &mut secret,
            "grant_type" if grant_to_query => &mut grant,
            _ => {
                kept.push(member);
                continue;
            }
        };
        let Ok(serde_json::Value::String(v)) = serde_json::from_str(value) else {
            return Err(GatewayError::BadRequest(format!("{key} must be a string")));
        };
        if slot.replace(v).is_some() {
            return Err(GatewayError::BadRequest(format!(
                "{key} is given more than once"
            )));
        }
    }
    if id.is_none() && secret.is_none() {
        return Ok(None);
    }
    let rest = format!("{{{}}}", kept.join(","));
    Ok(Some((id, secret, Bytes::from(rest), grant)))
}

/// The top-level members of a JSON object already known to be valid: (decoded key, raw
/// value, raw `"key": value` text), in order.
fn json_members(text: &str) -> Option<Vec<(String, &str, &str)>> {
    let b = text.as_bytes();
    let ws = |mut i: usize| {
        while b.get(i).is_some_and(|c| c.is_ascii_whitespace()) {
            i += 1;
        }
        i
    };
    // End (exclusive) of the string starting at `i`.
    let string_end = |mut i: usize| -> Option<usize> {
        i += 1;
        loop {
            match b.get(i)? {
                b'"' => return Some(i + 1),
                b'\\' => i += 2,
                _ => i += 1,
            }
        }
    };
    // End (exclusive) of the value starting at `i`.
    let value_end = |mut i: usize| -> Option<usize> {
        match b.get(i)? {
            b'"' => string_end(i),
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match b.get(i)? {
                        b'"' => {
                            i = string_end(i)?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth = depth.checked_sub(1)?;
                            if depth == 0 {
                                return Some(i + 1);
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
            }
            _ => {
                while b
                    .get(i)
                    .is_some_and(|c| !matches!(c, b',' | b'}' | b']') && !c.is_ascii_whitespace())
                {
                    i += 1;
                }
                Some(i)
            }
        }
    };
    let mut out = Vec::new();
    let mut i = ws(0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = ws(i + 1);
    if b.get(i) == Some(&b'}') {
        return Some(out);
    }
    loop {
        let start = i;
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = string_end(i)?;
        let key: String = serde_json::from_str(text.get(start..key_end)?).ok()?;
        i = ws(key_end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        let v_start = ws(i + 1);
        let v_end = value_end(v_start)?;
        out.push((key, text.get(v_start..v_end)?, text.get(start..v_end)?));
        i = ws(v_end);
        match b.get(i)? {
            b',' => i = ws(i + 1),
            b'}' => return Some(out),
            _ => return None,
        }
    }
}

/// Applies a rewrite to the outgoing headers.
pub fn apply_headers(h: &mut HeaderMap, auth: HeaderValue, len: usize) {
    h.insert(AUTHORIZATION, auth);
    h.remove(TRANSFER_ENCODING);
    h.insert(CONTENT_LENGTH, HeaderValue::from(len));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(ct: &str, auth: bool) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(CONTENT_TYPE, ct.parse().unwrap());
        if auth {
            m.insert(AUTHORIZATION, "Basic eDp5".parse().unwrap());
        }
        m
    }

    // Behaviour: form credentials move to Basic; other fields keep their exact bytes.
    #[test]
    fn form_rewrite() {
        let body = Bytes::from(
            "grant_type=client_credentials&client_id=my+id&scope=a%20b&client_secret=p%40ss%3A1",
        );
        let (rest, auth, _) = rewrite(&h("application/x-www-form-urlencoded", false), &body, false)
            .unwrap()
            .unwrap();
        assert_eq!(rest, "grant_type=client_credentials&scope=a%20b");
        assert_eq!(auth, basic_header("my id", "p@ss:1"));
    }

    #[test]
    fn json_rewrite_keeps_order() {
        let body = Bytes::from(
            r#"{"grant_type":"client_credentials","client_id":"a","client_secret":"b","resource_type":"x"}"#,
        );
        let (rest, _, _) = rewrite(&h("application/json", false), &body, false)
            .unwrap()
            .unwrap();
        assert_eq!(
            rest,
            r#"{"grant_type":"client_credentials","resource_type":"x"}"#
        );
    }

    // Behaviour: other JSON members reach the upstream as sent, numbers included (the
    // JSON was re-printed before: this integer came back as 1.2345678901214567e29, a
    // different number). Found by the `body_credentials` fuzz target.
    #[test]
    fn json_rewrite_keeps_member_text() {
        let body = Bytes::from(
            r#"{"graot_type":"clienntials","client_id":"a'\u0000","client_secret":"\ud83d\ude00","big":123456789012145678901234567890}"#,
        );
        let (rest, auth, _) = rewrite(&h("application/json", false), &body, false)
            .unwrap()
            .unwrap();
        assert_eq!(
            rest,
            r#"{"graot_type":"clienntials","big":123456789012145678901234567890}"#
        );
        assert_eq!(auth, basic_header("a'\0", "\u{1f600}"));
        let body = Bytes::from(
            " { \"f\" : 1.10 , \"client_id\":\"a\", \"o\": {\"x\": [1, \"}\"]},\"client_secret\" : \"b\" } ",
        );
        let (rest, _, _) = rewrite(&h("application/json", false), &body, false)
            .unwrap()
            .unwrap();
        assert_eq!(rest, r#"{"f" : 1.10,"o": {"x": [1, "}"]}}"#);
        // Valid JSON that serde_json's `Value` cannot hold (a number beyond f64) is
        // still rewritten, not forwarded with the credentials in it.
        let body = Bytes::from(
            r#"{"client_id":"a","client_secret":"b","n":12345678901234567e8901234567890}"#,
        );
        let (rest, _, _) = rewrite(&h("application/json", false), &body, false)
            .unwrap()
            .unwrap();
        assert_eq!(rest, r#"{"n":12345678901234567e8901234567890}"#);
        // A credential given twice is refused, as in forms.
        let body = Bytes::from(r#"{"client_id":"a","client_secret":"b","client_id":"c"}"#);
        assert!(rewrite(&h("application/json", false), &body, false).is_err());
        let body = Bytes::from(r#"{"client_id":"a","client_secret":7}"#);
        assert!(rewrite(&h("application/json", false), &body, false).is_err());
        for not_an_object in [r#"["client_id"]"#, r#"{"client_id":"a""#, "", "null"] {
            assert!(rewrite(
                &h("application/json", false),
                &Bytes::from(not_an_object),
                false
            )
            .unwrap()
            .is_none());
        }
    }

    // Behaviour: both places, or half the credentials -> 400.
    #[test]
    fn refusals() {
        let ct = "application/x-www-form-urlencoded";
        assert!(rewrite(
            &h(ct, true),
            &Bytes::from("client_id=a&client_secret=b"),
            false
        )
        .is_err());
        assert!(rewrite(&h(ct, false), &Bytes::from("client_id=a"), false).is_err());
        assert!(rewrite(&h(ct, false), &Bytes::from("client_secret=b"), false).is_err());
        assert!(rewrite(
            &h(ct, false),
            &Bytes::from("client_id=a&client_id=c&client_secret=b"),
            false
        )
        .is_err());
        assert!(rewrite(&h(ct, false), &Bytes::from("grant_type=x"), false)
            .unwrap()
            .is_none());
    }

    #[test]
    fn grant_type_to_query() {
        let body = Bytes::from("grant_type=client_credentials&client_id=a&client_secret=b");
        let (rest, _, g) = rewrite(&h("application/x-www-form-urlencoded", false), &body, true)
            .unwrap()
            .unwrap();
        assert_eq!(rest, "");
        assert_eq!(g.as_deref(), Some("client_credentials"));
    }
}
