//! Step 6 of the request path: `body_credentials: basic`.
//!
//! A third party that can only send `client_id`/`client_secret` in a form or JSON body,
//! in front of a token endpoint that wants `Authorization: Basic`: both fields are
//! removed from the body, `Authorization: Basic base64(urlencode(id):urlencode(secret))`
//! is added (RFC 6749 §2.3.1), every other field stays as it was, and Content-Length is
//! recomputed. Credentials in header and body, or only one of the two fields -> 400.
//! The body read is bounded by `max_body_bytes`; nothing of the secret is logged.

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

fn json(body: &Bytes, grant_to_query: bool) -> Result<Option<Parts>, GatewayError> {
    let Ok(serde_json::Value::Object(mut map)) = serde_json::from_slice::<serde_json::Value>(body)
    else {
        return Ok(None);
    };
    let mut take = |k: &str| -> Result<Option<String>, GatewayError> {
        match map.shift_remove(k) {
            None => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(GatewayError::BadRequest(format!("{k} must be a string"))),
        }
    };
    let id = take("client_id")?;
    let secret = take("client_secret")?;
    let grant = if grant_to_query {
        take("grant_type")?
    } else {
        None
    };
    if id.is_none() && secret.is_none() {
        return Ok(None);
    }
    let rest = serde_json::to_vec(&serde_json::Value::Object(map)).unwrap_or_default();
    Ok(Some((id, secret, Bytes::from(rest), grant)))
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
