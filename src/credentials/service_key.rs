//! Cloud Foundry service keys (and `VCAP_SERVICES` credentials objects) as the source of
//! an upstream's OAuth2 client credentials (`upstreams[].auth.service_key`), read when
//! the config is loaded.
//!
//! The credentials are taken from the object itself, or from its `uaa` block (XSUAA
//! bindings of other services: Destination, Connectivity, ...) or `oauth` block (SAP
//! Cloud Integration's runtime keys), or from its `credentials` block (a whole binding
//! as found in `VCAP_SERVICES`): `clientid`, `clientsecret`, and the token endpoint
//! `uaa.url` + `/oauth/token` when there is a `uaa` block, else `tokenurl`, else `url` +
//! `/oauth/token`. Errors name the missing field and never show a value.

use crate::secret::Secret;

/// What a service key provides for `oauth2_client_credentials`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceKey {
    pub token_url: String,
    pub client_id: String,
    pub client_secret: Secret,
}

/// Reads a service key (JSON text).
pub fn parse(text: &str) -> Result<ServiceKey, String> {
    let doc: serde_json::Value = serde_json::from_str(text.trim()).map_err(|e| {
        // serde_json's messages give a position, never the text.
        format!("the service key is not valid JSON ({e})")
    })?;
    let mut obj = doc
        .as_object()
        .ok_or("the service key must be a JSON object")?;
    // A binding (`VCAP_SERVICES` entry) carries the key in `credentials`.
    if let Some(c) = obj.get("credentials").and_then(|c| c.as_object()) {
        obj = c;
    }
    // SPEC: the token endpoint is `{uaa.url or url}/oauth/token` — the `uaa` block's
    // `url` first, wherever the client credentials are.
    let uaa_url = obj
        .get("uaa")
        .and_then(|b| b.get("url"))
        .and_then(|u| u.as_str())
        .filter(|u| !u.trim().is_empty())
        .map(str::to_owned);
    // XSUAA credentials of a bound service, or Cloud Integration's `oauth` block.
    for block in ["uaa", "oauth"] {
        if let Some(b) = obj.get(block).and_then(|b| b.as_object()) {
            if !obj.contains_key("clientid") {
                obj = b;
                break;
            }
        }
    }
    let field = |name: &str| -> Result<&str, String> {
        match obj.get(name) {
            Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Ok(s.as_str()),
            Some(serde_json::Value::String(_)) => {
                Err(format!("the service key's \"{name}\" is empty"))
            }
            Some(_) => Err(format!("the service key's \"{name}\" is not a string")),
            None => Err(format!("the service key has no \"{name}\"")),
        }
    };
    let client_id = field("clientid")?.to_owned();
    let client_secret = match field("clientsecret") {
        Ok(s) => Secret::new(s),
        Err(e) if obj.contains_key("certificate") || obj.get("credential-type").is_some_and(|t| t == "x509") => {
            return Err(format!(
                "{e}: it is an X.509 service key (credential-type x509); create one with credential-type binding-secret"
            ))
        }
        Err(e) => return Err(e),
    };
    let token_url = match (uaa_url, field("tokenurl")) {
        (Some(u), _) => format!("{}/oauth/token", u.trim_end_matches('/')),
        (None, Ok(u)) => u.to_owned(),
        (None, Err(_)) => format!("{}/oauth/token", field("url")?.trim_end_matches('/')),
    };
    Ok(ServiceKey {
        token_url,
        client_id,
        client_secret,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Behaviour: an XSUAA service key: token_url is {url}/oauth/token.
    #[test]
    fn xsuaa_key() {
        let k = parse(r#"{"clientid":"sb-app!t1","clientsecret":"s3cr3t","url":"https://sub.authentication.eu10.hana.ondemand.com/","uaadomain":"authentication.eu10.hana.ondemand.com","xsappname":"app!t1"}"#).unwrap();
        assert_eq!(
            k.token_url,
            "https://sub.authentication.eu10.hana.ondemand.com/oauth/token"
        );
        assert_eq!(k.client_id, "sb-app!t1");
        assert_eq!(k.client_secret.expose(), "s3cr3t");
    }

    // Behaviour: a service's key with a `uaa` block (the service's own `url` is not the
    // token endpoint); a VCAP_SERVICES binding with `credentials`; Cloud Integration's
    // `oauth` block with `tokenurl`.
    #[test]
    fn nested_keys() {
        let k = parse(r#"{"uri":"https://destination.cfapps.eu10.hana.ondemand.com","url":"https://svc","uaa":{"clientid":"c","clientsecret":"s","url":"https://sub.authentication.eu10.hana.ondemand.com"}}"#).unwrap();
        assert_eq!(
            k.token_url,
            "https://sub.authentication.eu10.hana.ondemand.com/oauth/token"
        );
        // The `uaa` block's url names the token endpoint also when the credentials
        // are the key's own (SPEC: `{uaa.url or url}/oauth/token`), in a binding too.
        let k = parse(r#"{"clientid":"sb-4","clientsecret":"s4","url":"https://svc","uaa":{"url":"https://uaa.example/"}}"#).unwrap();
        assert_eq!(k.token_url, "https://uaa.example/oauth/token");
        assert_eq!(k.client_id, "sb-4");
        let k = parse(r#"{"credentials":{"clientid":"c","clientsecret":"s","url":"https://ignored.example","uaa":{"url":"https://uaa.example"}}}"#).unwrap();
        assert_eq!(k.token_url, "https://uaa.example/oauth/token");
        let k = parse(r#"{"label":"xsuaa","credentials":{"clientid":"c","clientsecret":"s","url":"https://uaa"}}"#).unwrap();
        assert_eq!(k.token_url, "https://uaa/oauth/token");
        let k = parse(r#"{"oauth":{"clientid":"sb-cpi","clientsecret":"s","url":"https://tenant.it-cpi001-rt.cfapps.eu10.hana.ondemand.com","tokenurl":"https://tenant.authentication.eu10.hana.ondemand.com/oauth/token"}}"#).unwrap();
        assert_eq!(
            k.token_url,
            "https://tenant.authentication.eu10.hana.ondemand.com/oauth/token"
        );
        assert_eq!(k.client_id, "sb-cpi");
    }

    // Behaviour: problems name the field and never show a value.
    #[test]
    fn errors_name_the_field_not_the_value() {
        let e = parse(r#"{"clientid":"c","url":"https://uaa"}"#).unwrap_err();
        assert_eq!(e, "the service key has no \"clientsecret\"");
        let e = parse(r#"{"clientsecret":"hunter2","url":"https://uaa"}"#).unwrap_err();
        assert_eq!(e, "the service key has no \"clientid\"");
        let e = parse(r#"{"clientid":"c","clientsecret":"hunter2"}"#).unwrap_err();
        assert_eq!(e, "the service key has no \"url\"");
        let e = parse(r#"{"clientid":"c","clientsecret":"","url":"u"}"#).unwrap_err();
        assert!(e.contains("\"clientsecret\" is empty"), "{e}");
        let e = parse(r#"{"clientid":"c","clientsecret":hunter2}"#).unwrap_err();
        assert!(
            e.starts_with("the service key is not valid JSON") && !e.contains("hunter2"),
            "{e}"
        );
        let e = parse(r#"{"clientid":"c","certificate":"-----BEGIN","key":"k","url":"u","credential-type":"x509"}"#).unwrap_err();
        assert!(e.contains("x509"), "{e}");
        assert!(parse("[1]").is_err());
        assert!(format!(
            "{:?}",
            parse(r#"{"clientid":"c","clientsecret":"hunter2","url":"u"}"#).unwrap()
        )
        .contains("[redacted]"));
    }
}
