//! The one-pass parse of a clean config: YAML text straight into the [`model`] structs,
//! without a `serde_yaml::Value` tree in between.
//!
//! [`load_str`](super::load_str) normally parses the text into a `Value` (the tree the
//! `${...}` substitution and the curly-quote check walk), then deserialises the model
//! from it with `serde_ignored` and `serde_path_to_error` (to name unknown keys and the
//! path of a type error). On a 10,000-route file building, walking and dropping that
//! tree was more than half the reload. A config that is fine needs none of it, so this
//! pass reads the model straight from serde_yaml's event stream and *gives up* (returns
//! `None`) at anything that would need the full treatment: an unknown key, a type
//! error, a YAML tag, a duplicate map key, a scalar that the `Value` route would have
//! typed differently. The caller then runs the `Value` route, which reports exactly
//! what it always did.
//!
//! Why the two routes build the same model when this one succeeds: a `Value` is what
//! serde_yaml's `deserialize_any` makes of each node, and `&Value` then hands a visitor
//! exactly what `deserialize_any` produced (a string only if the node was a string, a
//! number only if it was a number, ...). [`Strict`] accepts only what the `Value` route
//! accepts, so the visitors see the same calls with the same values. Where the two
//! differ (asked for a string, serde_yaml reads `name: 123` as "123"; `Value` keeps a
//! number and refuses it), this pass refuses too: a string is taken only if no plain
//! scalar with that text could be anything else ([`always_a_string`]), and numbers,
//! booleans and (in a text with tags) strings are read with `deserialize_any`.
//!
//! [`model`]: super::model

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::model::ConfigModel;

/// The model of `text`, or `None` when the text needs the full (`Value`) route: any
/// problem at all, or an empty document (which that route names as such).
pub fn parse(text: &str) -> Option<ConfigModel> {
    // Every YAML tag starts with `!`: without one, no node is tagged.
    let mode = Mode {
        untagged: !text.contains('!'),
    };
    let de = serde_yaml::Deserializer::from_str(text);
    let model = ConfigModel::deserialize(Strict(de, mode)).ok()?;
    // An empty document reads as an empty mapping here and as null there ("config file
    // is empty"); a model without `server` is refused by compile anyway, so let the
    // full route say why.
    model.server.is_some().then_some(model)
}

/// The error that sends a config down the full route. Never shown to anyone.
#[derive(Debug)]
pub struct GiveUp;

impl fmt::Display for GiveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("needs the full parse")
    }
}

impl std::error::Error for GiveUp {}

impl de::Error for GiveUp {
    fn custom<T: fmt::Display>(_: T) -> Self {
        GiveUp
    }
}

fn give_up<E: de::Error>() -> E {
    E::custom(GiveUp)
}

/// A serde_yaml deserializer (or one of its nested ones) that only yields what the
/// `Value` route would yield.
pub struct Strict<D>(D, Mode);

#[derive(Clone, Copy)]
pub struct Mode {
    /// The text has no tags, so a string can be read as such (`deserialize_str`) and
    /// checked afterwards with [`always_a_string`], instead of having serde_yaml try
    /// null, bool, integer and float on every plain scalar first (a tenth of the pass).
    untagged: bool,
}

/// Whether a scalar with this text is a string however it was written. Asked for a
/// string, serde_yaml hands over the text of any scalar; the `Value` route types a
/// plain scalar first (`~`, `true`, `8080`, `1e3`, `.inf`, `0x1F`: null, bool, integer,
/// float) and then refuses it where a string is wanted. A text that a plain scalar
/// could type (or that merely looks close: `1d`) is left to the full route.
fn always_a_string(s: &str) -> bool {
    // Every character of anything serde_yaml reads as an integer (decimal, 0x, 0o, 0b,
    // signed) or a finite float (digits, `.`, exponent, `.inf`, `.nan`).
    const NUMBER: &[u8] = b"0123456789+-.abcdefABCDEFxoinIN";
    match s.as_bytes().first() {
        None => false,
        Some(b'+' | b'-' | b'.' | b'0'..=b'9') => s.bytes().any(|b| !NUMBER.contains(&b)),
        Some(_) => !matches!(
            s,
            "~" | "null" | "Null" | "NULL" | "true" | "True" | "TRUE" | "false" | "False" | "FALSE"
        ),
    }
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Strict<D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.0.deserialize_any(Any(v, self.1))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.0.deserialize_any(Scalar(v, Kind::Bool))
    }

    fn deserialize_u8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.0.deserialize_any(Scalar(v, Kind::Number))
    }

    fn deserialize_u16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.0.deserialize_any(Scalar(v, Kind::Number))
    }

    fn deserialize_u32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.0.deserialize_any(Scalar(v, Kind::Number))
    }

    fn deserialize_u64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.0.deserialize_any(Scalar(v, Kind::Number))
    }

    fn deserialize_i8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.0.deserialize_any(Scalar(v, Kind::Number))
    }

    fn deserialize_i16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.0.deserialize_any(Scalar(v, Kind::Number))
    }

    fn deserialize_i32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.0.deserialize_any(Scalar(v, Kind::Number))
    }

    fn deserialize_i64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.0.deserialize_any(Scalar(v, Kind::Number))
    }

    fn deserialize_f32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.0.deserialize_any(Scalar(v, Kind::Number))
    }

    fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.0.deserialize_any(Scalar(v, Kind::Number))
    }

    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.string(v)
    }

    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.string(v)
    }

    /// Struct field names: `&Value` accepts string keys only.
    fn deserialize_identifier<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.string(v)
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.0.deserialize_option(Opt(v, self.1))
    }

    /// serde_yaml reads a plain empty scalar as an empty sequence and refuses `~` or
    /// `null`, where `Value` reads both as empty: stricter, so safe.
    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.0.deserialize_seq(Seq(v, self.1))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Self::Error> {
        // serde's derived visitor refuses a field given twice, as `Value` refuses a
        // duplicate key.
        self.0.deserialize_struct(name, fields, Map(v, self.1))
    }

    /// Only `extra_params` is a free-form map; a duplicate key there is refused by
    /// `Value` and silently merged by a map visitor, so maps take the full route.
    fn deserialize_map<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(give_up())
    }

    /// A key the model does not know: the full route names it.
    fn deserialize_ignored_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(give_up())
    }

    fn deserialize_i128<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(give_up())
    }

    fn deserialize_u128<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(give_up())
    }

    fn deserialize_char<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(give_up())
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(give_up())
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(give_up())
    }

    fn deserialize_unit<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(give_up())
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: V,
    ) -> Result<V::Value, Self::Error> {
        Err(give_up())
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: V,
    ) -> Result<V::Value, Self::Error> {
        Err(give_up())
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, _: V) -> Result<V::Value, Self::Error> {
        Err(give_up())
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: usize,
        _: V,
    ) -> Result<V::Value, Self::Error> {
        Err(give_up())
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        Err(give_up())
    }
}

impl<'de, D: Deserializer<'de>> Strict<D> {
    fn string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, D::Error> {
        if self.1.untagged {
            self.0.deserialize_str(Text(v))
        } else {
            self.0.deserialize_any(Scalar(v, Kind::Str))
        }
    }
}

/// A string read with `deserialize_str` from a text without tags: passed on when the
/// `Value` route would have held the same string.
struct Text<V>(V);

impl<'de, V: Visitor<'de>> Visitor<'de> for Text<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.expecting(f)
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<V::Value, E> {
        if always_a_string(s) {
            self.0.visit_str(s)
        } else {
            Err(give_up())
        }
    }

    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<V::Value, E> {
        if always_a_string(s) {
            self.0.visit_borrowed_str(s)
        } else {
            Err(give_up())
        }
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<V::Value, E> {
        if always_a_string(&s) {
            self.0.visit_string(s)
        } else {
            Err(give_up())
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bool,
    Number,
    Str,
}

/// A scalar the model asked for by type, read with `deserialize_any`: passed on only if
/// `Value` would have held that type (a string, a bool, a number).
struct Scalar<V>(V, Kind);

impl<'de, V: Visitor<'de>> Visitor<'de> for Scalar<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.expecting(f)
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<V::Value, E> {
        match self.1 {
            Kind::Bool => self.0.visit_bool(b),
            _ => Err(give_up()),
        }
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<V::Value, E> {
        match self.1 {
            Kind::Number => self.0.visit_u64(n),
            _ => Err(give_up()),
        }
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<V::Value, E> {
        match self.1 {
            Kind::Number => self.0.visit_i64(n),
            _ => Err(give_up()),
        }
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<V::Value, E> {
        match self.1 {
            Kind::Number => self.0.visit_f64(n),
            _ => Err(give_up()),
        }
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<V::Value, E> {
        match self.1 {
            Kind::Str => self.0.visit_str(s),
            _ => Err(give_up()),
        }
    }

    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<V::Value, E> {
        match self.1 {
            Kind::Str => self.0.visit_borrowed_str(s),
            _ => Err(give_up()),
        }
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<V::Value, E> {
        match self.1 {
            Kind::Str => self.0.visit_string(s),
            _ => Err(give_up()),
        }
    }

    // Everything else (null, sequences, maps, tagged nodes, 128-bit numbers) gives up
    // through the default methods' "invalid type" errors.
}

/// `deserialize_any` asked for by the model itself (`auth: none` or a block): strings,
/// sequences and maps are passed on, wrapped; anything else takes the full route.
struct Any<V>(V, Mode);

impl<'de, V: Visitor<'de>> Visitor<'de> for Any<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.expecting(f)
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<V::Value, E> {
        self.0.visit_str(s)
    }

    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<V::Value, E> {
        self.0.visit_borrowed_str(s)
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<V::Value, E> {
        self.0.visit_string(s)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, a: A) -> Result<V::Value, A::Error> {
        self.0.visit_seq(Items(a, self.1))
    }

    fn visit_map<A: MapAccess<'de>>(self, a: A) -> Result<V::Value, A::Error> {
        self.0.visit_map(Entries(a, self.1))
    }
}

struct Opt<V>(V, Mode);

impl<'de, V: Visitor<'de>> Visitor<'de> for Opt<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.expecting(f)
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.0.visit_none()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.0.visit_some(Strict(d, self.1))
    }
}

struct Seq<V>(V, Mode);

impl<'de, V: Visitor<'de>> Visitor<'de> for Seq<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.expecting(f)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, a: A) -> Result<V::Value, A::Error> {
        self.0.visit_seq(Items(a, self.1))
    }
}

struct Map<V>(V, Mode);

impl<'de, V: Visitor<'de>> Visitor<'de> for Map<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.expecting(f)
    }

    fn visit_map<A: MapAccess<'de>>(self, a: A) -> Result<V::Value, A::Error> {
        self.0.visit_map(Entries(a, self.1))
    }
}

struct Items<A>(A, Mode);

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Items<A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        self.0.next_element_seed(Wrapped(seed, self.1))
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

struct Entries<A>(A, Mode);

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Entries<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        self.0.next_key_seed(Wrapped(seed, self.1))
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        self.0.next_value_seed(Wrapped(seed, self.1))
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

/// A seed whose deserializer is wrapped in [`Strict`].
struct Wrapped<T>(T, Mode);

impl<'de, T: DeserializeSeed<'de>> DeserializeSeed<'de> for Wrapped<T> {
    type Value = T::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<T::Value, D::Error> {
        self.0.deserialize(Strict(d, self.1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "server:\n  listen: \"127.0.0.1:0\"\nupstreams:\n  - name: u\n    url: \"http://127.0.0.1:1\"\nroutes:\n  - name: r\n    path_prefix: /\n    upstream: u\n    auth: none\n";

    /// What the full route makes of the same text (no substitution, no checks).
    fn via_value(text: &str) -> Option<ConfigModel> {
        let value: serde_yaml::Value = serde_yaml::from_str(text).ok()?;
        if value.is_null() {
            return None;
        }
        let mut unknown = false;
        let mut on_unknown = |_: serde_ignored::Path| unknown = true;
        let de = serde_ignored::Deserializer::new(&value, &mut on_unknown);
        let m: ConfigModel = serde_path_to_error::deserialize(de).ok()?;
        (!unknown).then_some(m)
    }

    /// This pass on `text`, without and with a tag-free `!` (which switches it to
    /// reading every scalar with `deserialize_any`); whatever it accepts, the full
    /// route must read identically.
    fn same(text: &str) -> [Option<String>; 2] {
        [text.to_owned(), format!("{text}\n# !\n")].map(|text| {
            let fast = parse(&text).map(|m| format!("{m:?}"));
            if let Some(f) = &fast {
                assert_eq!(
                    Some(f.clone()),
                    via_value(&text).map(|m| format!("{m:?}")),
                    "{text}"
                );
            }
            fast
        })
    }

    // Behaviour: a clean config is read in one pass, into the model the Value route builds.
    #[test]
    fn clean_config_is_read_in_one_pass() {
        assert!(same(BASE).iter().all(Option::is_some));
        let full = "server:\n  listen: \"127.0.0.1:0\"\n  admin_listen: 127.0.0.1:9\n  limits: {max_connections: 5, max_body_bytes: 0x10, request_timeout: 3s}\n  redirect_https_port: 8443\nissuers:\n  - name: i\n    issuer: https://idp\n    jwks_uri: http://127.0.0.1:1/j\n    audiences: [a, 'b', \"c\"]\n    skip_audience_check: true\n    leeway: ~\nupstreams:\n  - &up {name: u, url: \"http://127.0.0.1:1\", auth: {type: basic, username: x, password: \"y\"}}\nroutes:\n  - name: r\n    path_prefix: /a\n    upstream: u\n    auth: {issuers: [i], scopes: [s]}\n    permissions:\n      - {path: /a/b, methods: [GET], scopes: []}\n    cors: {allow_origins: [\"https://x\"], allow_credentials: false}\n    hosts:\n    grant_type_to_query:\n  - name: r2\n    path_prefix: /b\n    upstream: u\n    auth: none\n";
        assert!(same(full).iter().all(Option::is_some));
        // Strings that a plain scalar would type otherwise, quoted: read as strings
        // when scalars are typed first, left to the full route otherwise.
        for quoted in [
            "\"123\"", "'true'", "\"~\"", "\"1e3\"", "\".inf\"", "\"0x1F\"", "\"1d\"",
        ] {
            let text = BASE.replace("name: r", &format!("name: {quoted}"));
            assert_eq!(same(&text).map(|m| m.is_some()), [false, true], "{text}");
        }
        // Plain strings that start like numbers but cannot be one.
        let text = BASE.replace(
            "name: r",
            "name: 1h30m\n    hosts: [-a.example, .well-known]",
        );
        assert!(same(&text).iter().all(Option::is_some), "{text}");
    }

    // Behaviour: the string check passes nothing a plain YAML scalar could type as
    // null, bool, integer or float.
    #[test]
    fn always_a_string_is_conservative() {
        for s in [
            "",
            "~",
            "null",
            "NULL",
            "True",
            "false",
            "0",
            "+5",
            "-5",
            "0x1f",
            "0o17",
            "0b101",
            "-0x1f",
            "1e3",
            "1E-3",
            "-.5",
            ".5",
            "5.",
            ".inf",
            "-.Inf",
            "+.INF",
            ".nan",
            ".NaN",
            "123456789012345678901234567890",
            "0123",
        ] {
            assert!(!always_a_string(s), "{s:?}");
            // (A number too large for a Value is an error there.)
            let typed = serde_yaml::from_str::<serde_yaml::Value>(s);
            assert!(
                !typed.as_ref().is_ok_and(|t| t.is_string()) || s == "0123",
                "{s:?} -> {typed:?}"
            );
        }
        for s in [
            "a",
            "GET",
            "/x",
            "127.0.0.1:8080",
            "30s",
            "1h",
            "-my-host",
            ".well-known",
            "yes",
        ] {
            assert!(always_a_string(s), "{s:?}");
            let typed: serde_yaml::Value = serde_yaml::from_str(s).unwrap();
            assert!(typed.is_string(), "{s:?} -> {typed:?}");
        }
    }

    // Behaviour: anything the Value route would refuse, flag or type differently makes
    // this pass give up (the full route then reports it as before).
    #[test]
    fn gives_up_where_the_value_route_differs() {
        for text in [
            // a number, a bool and null where a string is wanted (serde_yaml alone
            // would read them as "123", "true", "null")
            &BASE.replace("name: r", "name: 123"),
            &BASE.replace("name: r", "name: true"),
            &BASE.replace("name: r", "name: null"),
            &BASE.replace("auth: none", "auth: none\n    body_credentials: 5"),
            // a quoted number where a number is wanted
            &BASE.replace("server:\n", "server:\n  redirect_https_port: \"8443\"\n"),
            // unknown keys, duplicate keys, tags, maps, a non-string key
            &BASE.replace("auth: none", "auth: none\n    upstraem: u"),
            &BASE.replace("auth: none", "auth: none\n    upstream: u"),
            &BASE.replace("name: r", "name: !tag r"),
            &BASE.replace("auth: none", "auth: {issuers: [i], 1: x}"),
            &BASE.replace(
                "url: \"http://127.0.0.1:1\"",
                "url: \"http://127.0.0.1:1\"\n    auth: {type: oauth2_client_credentials, extra_params: {a: b}}",
            ),
            // two documents
            &format!("{BASE}---\n{BASE}"),
            // a null sequence, an empty or null document, a bare mapping
            &BASE.replace("routes:", "issuers: ~\nroutes:"),
            "",
            "# nothing\n",
            "~\n",
            "{}\n",
            "- a\n",
            "server: [\n",
        ] {
            assert_eq!(same(text), [None, None], "{text}");
        }
    }
}
