//! Objects only: serde's derived structs accept a JSON object *or* an array of
//! the fields in order (`"meta": [null, null]`), but the contract's objects are
//! objects. Fields holding a struct use these with `deserialize_with`.

use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};

/// Deserializes `T` from a JSON object only.
pub fn object<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    deserializer.deserialize_map(ObjectVisitor(PhantomData))
}

/// Deserializes `Option<T>` from `null` or a JSON object only.
pub fn optional_object<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    deserializer.deserialize_option(OptionalObjectVisitor(PhantomData))
}

struct ObjectVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::deserialize(MapAccessDeserializer::new(map))
    }
}

struct OptionalObjectVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for OptionalObjectVisitor<T> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("null or a JSON object")
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Option<T>, E> {
        Ok(None)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Option<T>, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Option<T>, D::Error> {
        object(deserializer).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        a: u8,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Outer {
        #[serde(deserialize_with = "super::object")]
        inner: Inner,
        #[serde(default, deserialize_with = "super::optional_object")]
        maybe: Option<Inner>,
    }

    #[test]
    fn objects_pass_and_arrays_do_not() {
        let ok: Outer = serde_json::from_str(r#"{"inner":{"a":1},"maybe":{"a":2}}"#).unwrap();
        assert_eq!(ok.maybe, Some(Inner { a: 2 }));
        let absent: Outer = serde_json::from_str(r#"{"inner":{"a":1}}"#).unwrap();
        assert_eq!(absent.maybe, None);
        let null: Outer = serde_json::from_str(r#"{"inner":{"a":1},"maybe":null}"#).unwrap();
        assert_eq!(null.maybe, None);
        assert!(serde_json::from_str::<Outer>(r#"{"inner":[1]}"#).is_err());
        assert!(serde_json::from_str::<Outer>(r#"{"inner":{"a":1},"maybe":[2]}"#).is_err());
        assert!(serde_json::from_str::<Outer>(r#"{"inner":{"a":1,"b":2}}"#).is_err());
    }
}
