//! Config keys as users write them, and unknown keys collected from the settings structs
//! themselves: a key is unknown when serde passes over it (`serde_ignored`), so no list of
//! keys is kept beside the structs.

use serde::de::DeserializeOwned;

/// Returns a key as it is written in TOML: bare if it can be, else quoted, so that a
/// problem names even an empty or odd key (`[""]` is the section `""`).
pub fn toml_key(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

/// A key path as written in TOML (`interface[0]."odd key"`), each part quoted when it must
/// be; empty for the root.
pub fn key_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Map { parent, key } => match key_path(parent) {
            p if p.is_empty() => toml_key(key),
            p => format!("{p}.{}", toml_key(key)),
        },
        Path::Seq { parent, index } => format!("{}[{index}]", key_path(parent)),
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => key_path(parent),
    }
}

/// Deserializes `value` into `T` and returns the paths (relative to `value`) of every key
/// `T` has no field for. When a value has the wrong type, serde stops there; the keys are
/// then asked one by one, so that every unknown one is still returned beside the error.
pub fn deserialize_with_unknown<T: DeserializeOwned>(
    value: toml::Value,
) -> (Result<T, toml::de::Error>, Vec<String>) {
    let mut unknown = Vec::new();
    let result = serde_ignored::deserialize(value.clone(), |path| unknown.push(key_path(&path)));
    if result.is_err()
        && let toml::Value::Table(keys) = value
    {
        unknown.clear();
        for (key, v) in keys {
            let mut one = toml::Table::new();
            one.insert(key, v);
            let _: Result<T, _> = serde_ignored::deserialize(toml::Value::Table(one), |path| {
                unknown.push(key_path(&path));
            });
        }
    }
    (result, unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, serde::Deserialize)]
    struct Inner {
        #[allow(dead_code)]
        a: Option<u32>,
    }

    #[derive(Debug, Default, serde::Deserialize)]
    struct Outer {
        #[allow(dead_code)]
        n: Option<u32>,
        #[allow(dead_code)]
        #[serde(default)]
        list: Vec<Inner>,
    }

    fn table(text: &str) -> toml::Value {
        toml::Value::Table(text.parse().unwrap())
    }

    #[test]
    fn unknown_keys_are_named_as_written() {
        let (r, unknown) = deserialize_with_unknown::<Outer>(table(
            "x = 1\n\"a b\" = 2\n[[list]]\na = 1\nb = 2\n",
        ));
        assert!(r.is_ok());
        assert_eq!(unknown, ["\"a b\"", "list[0].b", "x"]);
    }

    #[test]
    fn a_bad_value_does_not_hide_the_unknown_keys_after_it() {
        let (r, unknown) = deserialize_with_unknown::<Outer>(table("n = \"x\"\nz = 1\n"));
        assert!(r.is_err());
        assert_eq!(unknown, ["z"]);
    }
}
