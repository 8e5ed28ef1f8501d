//! Scalars of the config model: text, secrets, whole numbers, ports, booleans,
//! durations and listen addresses, each read from whatever YAML holds at its place
//! (a problem in words when it is the wrong kind: "expected a whole number, found
//! the text \"7\" (write it without quotes)").

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Serialize;

use serde_json::{json, Value};

use super::schema::{self, Schema};
use super::{Cx, Node};
use crate::secret::Secret;

/// A YAML number as serde hands it over.
#[derive(Clone, Copy)]
pub enum Number {
    U(u64),
    I(i64),
    F(f64),
}

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Number::U(n) => write!(f, "{n}"),
            Number::I(n) => write!(f, "{n}"),
            Number::F(n) => write!(f, "{n}"),
        }
    }
}

/// A scalar of the model: how it is made from text, a number or a boolean, and how
/// problems name what was expected. Each `from_*` returns the problem's message.
pub trait Scalar: Sized {
    /// "text", "a whole number", "true or false", ...
    const EXPECTED: &'static str;
    /// Never shown in a message (secrets).
    const SECRET: bool = false;
    /// `substituted`: the text came from `${env:..}` / `${file:..}` (so a number
    /// standing where a number belongs is taken as one).
    fn from_text(s: Cow<str>, substituted: bool) -> Result<Self, String>;
    fn from_number(n: Number) -> Result<Self, String> {
        Err(wrong(Self::EXPECTED, &found_number(n, Self::SECRET)))
    }
    fn from_bool(b: bool) -> Result<Self, String> {
        let found = if Self::SECRET {
            "true or false (the value is not shown)".to_owned()
        } else {
            format!("{b}")
        };
        Err(wrong(Self::EXPECTED, &found))
    }
}

fn wrong(expected: &str, found: &str) -> String {
    format!("expected {expected}, found {found}")
}

fn found_number(n: Number, secret: bool) -> String {
    if secret {
        "a number (the value is not shown): put it in quotes".to_owned()
    } else {
        format!("the number {n}")
    }
}

struct ScalarVisitor<'c, 'a, T>(&'c mut Cx<'a>, PhantomData<T>);

impl<T: Scalar> ScalarVisitor<'_, '_, T> {
    fn done(self, r: Result<T, String>) -> Option<T> {
        r.map_err(|m| self.0.error(m)).ok()
    }

    fn text(self, s: Cow<str>) -> Option<T> {
        match self.0.text(s) {
            Some((s, substituted)) => self.done(T::from_text(s, substituted)),
            None => None,
        }
    }
}

impl<'de, T: Scalar> Visitor<'de> for ScalarVisitor<'_, '_, T> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(T::EXPECTED)
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(self.text(Cow::Borrowed(s)))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
        Ok(self.text(Cow::Owned(s)))
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Self::Value, E> {
        Ok(self.done(T::from_bool(b)))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
        Ok(self.done(T::from_number(Number::U(n))))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
        Ok(self.done(T::from_number(Number::I(n))))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Self::Value, E> {
        Ok(self.done(T::from_number(Number::F(n))))
    }

    fn visit_u128<E: de::Error>(self, n: u128) -> Result<Self::Value, E> {
        Ok(self.done(T::from_number(Number::F(n as f64))))
    }

    fn visit_i128<E: de::Error>(self, n: i128) -> Result<Self::Value, E> {
        Ok(self.done(T::from_number(Number::F(n as f64))))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        T::read_scalar(d, self.0)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        self.0.wrong(T::EXPECTED, "a list");
        Ok(None)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        self.0.wrong(T::EXPECTED, "a mapping (key: value lines)");
        Ok(None)
    }
}

/// Reading any [`Scalar`].
trait ReadScalar: Scalar {
    fn read_scalar<'de, D: Deserializer<'de>>(d: D, cx: &mut Cx) -> Result<Option<Self>, D::Error> {
        d.deserialize_any(ScalarVisitor::<Self>(cx, PhantomData))
    }
}

impl<T: Scalar> ReadScalar for T {}

macro_rules! scalar_node {
    ($($t:ty),*) => {$(
        impl Node for $t {
            fn read<'de, D: Deserializer<'de>>(d: D, cx: &mut Cx) -> Result<Option<Self>, D::Error> {
                <$t as ReadScalar>::read_scalar(d, cx)
            }
        }
    )*};
}

scalar_node!(
    Word,
    String,
    Secret,
    u64,
    u16,
    f64,
    bool,
    DurationText,
    ListenAddr
);

/// A list item that is a word or a number as written (`on: [connect-failure, 503]`),
/// kept as text for the section's own check.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Word(pub String);

impl Scalar for Word {
    const EXPECTED: &'static str = "a word or a number";
    fn from_text(s: Cow<str>, _: bool) -> Result<Self, String> {
        Ok(Word(s.into_owned()))
    }
    fn from_number(n: Number) -> Result<Self, String> {
        Ok(Word(n.to_string()))
    }
}

impl Schema for Word {
    fn schema() -> Value {
        json!({"type": ["string", "integer"]})
    }
}

impl Scalar for String {
    const EXPECTED: &'static str = "text";
    fn from_text(s: Cow<str>, _: bool) -> Result<Self, String> {
        Ok(s.into_owned())
    }
    fn from_number(n: Number) -> Result<Self, String> {
        Err(format!(
            "expected text, found the number {n}: put it in quotes (\"{n}\") if it is meant as text"
        ))
    }
    fn from_bool(b: bool) -> Result<Self, String> {
        Err(format!(
            "expected text, found {b}: put it in quotes (\"{b}\") if it is meant as text"
        ))
    }
}

impl Scalar for Secret {
    const EXPECTED: &'static str = "text";
    const SECRET: bool = true;
    fn from_text(s: Cow<str>, _: bool) -> Result<Self, String> {
        Ok(Secret::new(s.into_owned()))
    }
}

impl Scalar for u64 {
    const EXPECTED: &'static str = "a whole number";
    fn from_text(s: Cow<str>, substituted: bool) -> Result<Self, String> {
        match s.trim().parse::<u64>() {
            Ok(n) if substituted => Ok(n),
            Ok(_) => Err(format!(
                "expected a whole number, found the text \"{s}\" (write it without quotes)"
            )),
            // A substituted value is never shown: it may come from a secret's file.
            Err(_) if substituted => {
                Err("expected a whole number, and the substituted value is not one".into())
            }
            Err(_) => Err(format!("expected a whole number, found \"{s}\"")),
        }
    }
    fn from_number(n: Number) -> Result<Self, String> {
        match n {
            Number::U(n) => Ok(n),
            Number::I(n) => Err(format!("must not be negative, found {n}")),
            Number::F(f) => Err(format!("expected a whole number, found {f}")),
        }
    }
}

/// A number that may have a fraction (`tracing.sample_ratio: 0.25`); whole numbers too.
impl Scalar for f64 {
    const EXPECTED: &'static str = "a number";
    fn from_text(s: Cow<str>, substituted: bool) -> Result<Self, String> {
        match s.trim().parse::<f64>() {
            Ok(n) if substituted => Ok(n),
            Ok(_) => Err(format!(
                "expected a number, found the text \"{s}\" (write it without quotes)"
            )),
            Err(_) if substituted => {
                Err("expected a number, and the substituted value is not one".into())
            }
            Err(_) => Err(format!("expected a number, found \"{s}\"")),
        }
    }
    fn from_number(n: Number) -> Result<Self, String> {
        Ok(match n {
            Number::U(n) => n as f64,
            Number::I(n) => n as f64,
            Number::F(n) => n,
        })
    }
}

impl Scalar for u16 {
    const EXPECTED: &'static str = "a port number (1-65535)";
    fn from_text(s: Cow<str>, substituted: bool) -> Result<Self, String> {
        let n = u64::from_text(s, substituted)?;
        Self::from_number(Number::U(n))
    }
    fn from_number(n: Number) -> Result<Self, String> {
        match n {
            Number::U(n @ 1..=65535) => Ok(n as u16),
            n => Err(format!("expected a port number (1-65535), found {n}")),
        }
    }
}

impl Scalar for bool {
    const EXPECTED: &'static str = "true or false";
    fn from_text(s: Cow<str>, substituted: bool) -> Result<Self, String> {
        match (&*s, substituted) {
            ("true", true) => Ok(true),
            ("false", true) => Ok(false),
            ("true" | "false", false) => Err(format!(
                "expected true or false, found the text \"{s}\" (write it without quotes)"
            )),
            (_, true) => Err("expected true or false, and the substituted value is neither".into()),
            _ => Err(format!("expected true or false, found \"{s}\"")),
        }
    }
    fn from_bool(b: bool) -> Result<Self, String> {
        Ok(b)
    }
}

/// A duration as written (`30s`, `1.5s`, `1m30s`); `validate::parse_duration` reads it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct DurationText(pub String);

impl AsRef<str> for DurationText {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Scalar for DurationText {
    const EXPECTED: &'static str = "a duration such as \"30s\"";
    fn from_text(s: Cow<str>, _: bool) -> Result<Self, String> {
        Ok(DurationText(s.into_owned()))
    }
    fn from_number(n: Number) -> Result<Self, String> {
        Err(format!(
            "a duration needs a unit: write \"{n}s\" (or ms, m, h, d)"
        ))
    }
}

/// A listen address as written (`127.0.0.1:8080`). A bare number is kept as its text,
/// so that the check can say what to write instead.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct ListenAddr(pub String);

impl Scalar for ListenAddr {
    const EXPECTED: &'static str = "an address such as \"127.0.0.1:8080\"";
    fn from_text(s: Cow<str>, _: bool) -> Result<Self, String> {
        Ok(ListenAddr(s.into_owned()))
    }
    fn from_number(n: Number) -> Result<Self, String> {
        Ok(ListenAddr(n.to_string()))
    }
}

impl Schema for String {
    fn schema() -> Value {
        schema::text()
    }
}

impl Schema for Secret {
    fn schema() -> Value {
        schema::text()
    }
}

impl Schema for u64 {
    fn schema() -> Value {
        schema::or_substituted(json!({"type": "integer", "minimum": 0}))
    }
}

impl Schema for u16 {
    fn schema() -> Value {
        schema::or_substituted(json!({"type": "integer", "minimum": 1, "maximum": 65535}))
    }
}

impl Schema for f64 {
    fn schema() -> Value {
        schema::or_substituted(json!({"type": "number"}))
    }
}

impl Schema for bool {
    fn schema() -> Value {
        schema::or_substituted(json!({"type": "boolean"}))
    }
}

impl Schema for DurationText {
    fn schema() -> Value {
        schema::text_matching(
            schema::DURATION,
            "A duration: a number and a unit (ms, s, m, h, d), e.g. 500ms, 1.5s, 30s, 1m30s.",
        )
    }
}

impl Schema for ListenAddr {
    fn schema() -> Value {
        schema::text_matching(
            schema::LISTEN_ADDRESS,
            "An address and port: \"127.0.0.1:8080\" (this machine only), \"0.0.0.0:8080\" \
             or \":8080\" (every interface), \"[::1]:8080\".",
        )
    }
}
