//! Collections of the config model: lists (with holes where an element could not be
//! read, so later elements keep their index), free-form mappings, and the blocks of
//! fixed keys the section files declare with [`section!`] (unknown, repeated and
//! misspelt keys are reported here).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Serialize;

use super::schema::{self, Schema};
use super::{Cx, Node, Seed, Seg};

/// A YAML list. An element that could not be read is kept as a hole, so that every
/// later element keeps its index in problems (`methods[3]`); [`List::iter`] skips holes.
#[derive(Debug, Clone)]
pub struct List<T>(Vec<Option<T>>);

impl<T> Default for List<T> {
    fn default() -> Self {
        List(Vec::new())
    }
}

impl<T> List<T> {
    /// The elements that could be read, with their index in the file.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &T)> + '_ {
        self.0
            .iter()
            .enumerate()
            .filter_map(|(i, x)| Some((i, x.as_ref()?)))
    }

    /// The elements that could be read.
    pub fn values(&self) -> impl Iterator<Item = &T> + '_ {
        self.0.iter().flatten()
    }

    /// Elements as written, holes included.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether an element could not be read.
    pub fn has_holes(&self) -> bool {
        self.0.iter().any(Option::is_none)
    }

    /// The elements that could be read, by value.
    pub fn into_values(self) -> impl Iterator<Item = T> {
        self.0.into_iter().flatten()
    }
}

impl<T: Clone> List<T> {
    pub fn to_vec(&self) -> Vec<T> {
        self.values().cloned().collect()
    }
}

impl<T> FromIterator<T> for List<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        List(iter.into_iter().map(Some).collect())
    }
}

impl<T: Serialize> Serialize for List<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.values())
    }
}

impl<T: Schema> Schema for List<T> {
    fn schema() -> serde_json::Value {
        schema::list(T::schema())
    }
}

impl<T: Node> Node for List<T> {
    fn read<'de, D: Deserializer<'de>>(d: D, cx: &mut Cx) -> Result<Option<Self>, D::Error> {
        d.deserialize_any(ListVisitor::<T>(cx, PhantomData))
    }
}

struct ListVisitor<'c, 'a, T>(&'c mut Cx<'a>, PhantomData<T>);

impl<'c, 'a, T> ListVisitor<'c, 'a, T> {
    fn not_a_list(self, found: &str) -> Option<List<T>> {
        self.0.wrong("a list", found);
        None
    }
}

impl<'de, T: Node> Visitor<'de> for ListVisitor<'_, '_, T> {
    type Value = Option<List<T>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let cx = self.0;
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(4));
        loop {
            cx.path.push(Seg::Index(out.len()));
            let next = seq.next_element_seed(Seed::<T>::new(cx))?;
            cx.path.pop();
            match next {
                Some(x) => out.push(x),
                None => break,
            }
        }
        Ok(Some(List(out)))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        let found = format!("\"{s}\" (write a list: [{s}])");
        Ok(self.not_a_list(&found))
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Self::Value, E> {
        Ok(self.not_a_list(&format!("{b}")))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
        Ok(self.not_a_list(&format!("the number {n}")))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
        Ok(self.not_a_list(&format!("the number {n}")))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Self::Value, E> {
        Ok(self.not_a_list(&format!("the number {n}")))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(self.not_a_list("a mapping (key: value lines); list items start with \"- \""))
    }
}

/// A mapping of free-form keys to values (`extra_params`).
impl<T: Node> Node for BTreeMap<String, T> {
    fn read<'de, D: Deserializer<'de>>(d: D, cx: &mut Cx) -> Result<Option<Self>, D::Error> {
        d.deserialize_any(MapVisitor::<T>(cx, PhantomData))
    }
}

struct MapVisitor<'c, 'a, T>(&'c mut Cx<'a>, PhantomData<T>);

impl<'de, T: Node> Visitor<'de> for MapVisitor<'_, '_, T> {
    type Value = Option<BTreeMap<String, T>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a mapping")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let cx = self.0;
        let mut out = BTreeMap::new();
        let mut refused = false;
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let key = match key {
                Key::Text(k) => k,
                // `1_000:`, `0x10:`, `true:` are read by YAML as a number or a boolean
                // and printed back differently from how they are written: a
                // name made of them (a claim, a token-request parameter) would silently
                // be another name. Refused, with the way out.
                Key::Scalar(kind, printed) => {
                    refused = true;
                    cx.error(format!(
                        "the key {printed} is read as {kind}, not as a name: put it in \
                         quotes exactly as the name is spelt (\"...\": value)"
                    ));
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
                Key::Other(what) => {
                    refused = true;
                    cx.error(format!("{what}: keys must be text"));
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            let key = key.into_owned();
            if out.contains_key(&key) {
                cx.duplicate_key(&key);
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            cx.path.push(Seg::Name(key));
            let value = map.next_value_seed(Seed::<T>::new(cx))?;
            let Some(Seg::Name(key)) = cx.path.pop() else {
                unreachable!("the segment pushed above")
            };
            if let Some(value) = value {
                out.insert(key, value);
            }
        }
        // Nothing left but refused keys: the problem is recorded once, not again as
        // "an empty map" by whatever checks the map.
        if refused && out.is_empty() {
            return Ok(None);
        }
        Ok(Some(out))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        self.0.wrong("a mapping (key: value lines)", "text");
        Ok(None)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        self.0.wrong("a mapping (key: value lines)", "a list");
        Ok(None)
    }
}

/// A mapping key as read: text (borrowed from the file when it can be), or a
/// description of something that is not text.
enum Key<'de> {
    Text(Cow<'de, str>),
    /// A plain scalar YAML reads as a number or boolean: what it is, and how serde
    /// prints it (not necessarily as written: `1_000` is `1000`).
    Scalar(&'static str, String),
    Other(String),
}

struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key<'de>, D::Error> {
        d.deserialize_any(KeySeed)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Key<'de>, E> {
        Ok(Key::Text(Cow::Borrowed(s)))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Key<'de>, E> {
        Ok(Key::Text(Cow::Owned(s.to_owned())))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Key<'de>, E> {
        Ok(Key::Text(Cow::Owned(s)))
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Key<'de>, E> {
        Ok(Key::Scalar("a boolean", b.to_string()))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Key<'de>, E> {
        Ok(Key::Scalar("a number", n.to_string()))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Key<'de>, E> {
        Ok(Key::Scalar("a number", n.to_string()))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Key<'de>, E> {
        Ok(Key::Scalar("a number", n.to_string()))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Key<'de>, E> {
        Ok(Key::Other("an empty key".into()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Key<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Key::Other("a list used as a key".into()))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Key<'de>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Key::Other("a mapping used as a key".into()))
    }
}

/// A block of `gateway.yaml` with fixed keys (`server`, a route, an upstream's `auth`):
/// written with [`section!`](section), which implements this and [`Node`].
pub trait Section: Default {
    /// Every key, in the order they are documented.
    const KEYS: &'static [&'static str];
    /// Reads the value of `KEYS[i]` into its field.
    fn read_key<'de, A: MapAccess<'de>>(
        &mut self,
        i: usize,
        map: &mut A,
        cx: &mut Cx,
    ) -> Result<(), A::Error>;
}

/// [`Node::read`] of a [`Section`].
pub fn read_section<'de, S: Section, D: Deserializer<'de>>(
    d: D,
    cx: &mut Cx,
) -> Result<Option<S>, D::Error> {
    d.deserialize_any(SectionVisitor::<S>(cx, PhantomData))
}

struct SectionVisitor<'c, 'a, S>(&'c mut Cx<'a>, PhantomData<S>);

impl<'c, 'a, S> SectionVisitor<'c, 'a, S> {
    fn not_a_mapping(self, found: &str) -> Option<S> {
        self.0.wrong("a mapping (key: value lines)", found);
        None
    }
}

impl<'de, S: Section> Visitor<'de> for SectionVisitor<'_, '_, S> {
    type Value = Option<S>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a mapping")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let cx = self.0;
        let mut out = S::default();
        let mut seen = 0u64;
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let key = match key {
                // A block's own keys are words: `1000:` is an unknown key like any other.
                Key::Text(k) => k,
                Key::Scalar(_, k) => Cow::Owned(k),
                Key::Other(what) => {
                    cx.error(format!("{what}: keys must be text"));
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            let Some(i) = S::KEYS.iter().position(|k| *k == key) else {
                cx.unknown_key(&key, S::KEYS);
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            if seen & (1 << i) != 0 {
                cx.duplicate_key(&key);
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            seen |= 1 << i;
            cx.path.push(Seg::Key(S::KEYS[i]));
            out.read_key(i, &mut map, cx)?;
            cx.path.pop();
        }
        Ok(Some(out))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        // The text is not shown: a value in the wrong place may be a secret.
        Ok(self.not_a_mapping("text"))
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Self::Value, E> {
        Ok(self.not_a_mapping(&format!("{b}")))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
        Ok(self.not_a_mapping(&format!("the number {n}")))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
        Ok(self.not_a_mapping(&format!("the number {n}")))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Self::Value, E> {
        Ok(self.not_a_mapping(&format!("the number {n}")))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(self.not_a_mapping("a list (remove the \"- \")"))
    }
}

/// Declares a block of `gateway.yaml`: a struct whose fields are read by [`Node`]
/// (absent or unusable values become the field's `Default`), with `KEYS` for
/// suggestions, a `Serialize` impl under the YAML key names (`GET /admin/config`) and
/// its JSON Schema ([`Schema`]: the fields' doc comments are the keys' descriptions, so
/// write them for the people who edit the file; the struct's doc is for the code).
///
/// After a field's type, `as SPEC` says more about the key for the schema (the
/// functions of [`schema::spec`] are in scope): `required()` when the compile step
/// reports it missing, `restricting()` for a key that restricts access (a null value is
/// then an error instead of "not given"; the only `as` that affects reading), `choice(&[..])` for a fixed set of values, `matching(..)` for a
/// pattern, `schema(..)` for a schema of its own; `.required()` adds to any of them.
/// Only doc comments may stand on the struct and its fields.
///
/// ```ignore
/// section! {
///     /// `upstreams[]`
///     pub struct UpstreamModel {
///         "name" => pub name: Option<String> as required(),
///         /// Until the response head arrives (default 30s).
///         "timeout" => pub timeout: Option<DurationText>,
///         "window" => pub window: Option<String> as choice(&["sliding", "fixed"]),
///     }
/// }
/// ```
macro_rules! section {
    (
        $(#[doc = $doc:literal])*
        pub struct $name:ident {
            $(
                $(#[doc = $fdoc:literal])*
                $key:literal => pub $field:ident : $ty:ty $(as $spec:expr)?,
            )*
        }
    ) => {
        $(#[doc = $doc])*
        #[derive(Debug, Clone, Default, serde::Serialize)]
        pub struct $name {
            $(
                $(#[doc = $fdoc])*
                #[serde(rename = $key)]
                pub $field: $ty,
            )*
        }

        impl $crate::config::yaml::Section for $name {
            const KEYS: &'static [&'static str] = &[$($key),*];

            fn read_key<'de, A: serde::de::MapAccess<'de>>(
                &mut self,
                i: usize,
                map: &mut A,
                cx: &mut $crate::config::yaml::Cx,
            ) -> Result<(), A::Error> {
                let mut n = 0usize;
                $(
                    if i == n {
                        #[allow(unused_imports)]
                        use $crate::config::yaml::schema::spec::*;
                        let restricts = None::<$crate::config::yaml::schema::Spec>
                            $(.or(Some($spec)))?
                            .is_some_and(|s| s.restricts);
                        self.$field = if restricts {
                            $crate::config::yaml::field_not_null(map, cx)?
                        } else {
                            $crate::config::yaml::field(map, cx)?
                        };
                        return Ok(());
                    }
                    n += 1;
                )*
                let _ = n;
                map.next_value::<serde::de::IgnoredAny>().map(|_| ())
            }
        }

        impl $crate::config::yaml::Node for $name {
            fn read<'de, D: serde::Deserializer<'de>>(
                d: D,
                cx: &mut $crate::config::yaml::Cx,
            ) -> Result<Option<Self>, D::Error> {
                $crate::config::yaml::read_section(d, cx)
            }
        }

        impl $crate::config::yaml::Schema for $name {
            fn schema() -> serde_json::Value {
                #[allow(unused_imports)]
                use $crate::config::yaml::schema::spec::*;
                let mut properties = serde_json::Map::new();
                let mut required: Vec<&str> = Vec::new();
                $(
                    let mut spec: $crate::config::yaml::schema::Spec =
                        None$(.or(Some($spec)))?.unwrap_or_default();
                    if spec.required {
                        required.push($key);
                    }
                    properties.insert(
                        $key.into(),
                        $crate::config::yaml::schema::property::<$ty>(&mut spec, &[$($fdoc),*]),
                    );
                )*
                $crate::config::yaml::schema::section(properties, required)
            }
        }
    };
}

pub(crate) use section;
