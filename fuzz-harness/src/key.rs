//! `key`: the object key parser and the key prefix parser.

use flowlog_formats::key::{self, KeyLayout, KeyPrefix};

/// Parses `data` (as text, invalid UTF-8 replaced) as an object key and as a key prefix.
///
/// - A parsed key's parts validate, and building the file name back from them gives the
///   input's file name when its hash token is a valid `hash8`; with a recognised layout,
///   building the whole key gives the input's tail.
/// - A parsed prefix has no `/` at its ends and parses to itself.
/// - Errors carry a message.
pub fn key(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match key::parse_key(&text) {
        Ok(parsed) => {
            key::validate_account_id(&parsed.account_id).unwrap_or_else(|e| fail(&e));
            key::validate_region(&parsed.region).unwrap_or_else(|e| fail(&e));
            key::validate_flow_log_id(&parsed.flow_log_id).unwrap_or_else(|e| fail(&e));
            let name = text.rsplit(['/', '\\']).next().unwrap_or_default();
            if key::validate_hash8(&parsed.hash8).is_ok() {
                match key::file_name(&parsed.parts()) {
                    Ok(rebuilt) => assert_eq!(rebuilt, name, "file name does not round-trip"),
                    Err(e) => fail(&e),
                }
                if let Some(layout) = parsed.layout {
                    let built = key::object_key(layout, &KeyPrefix::default(), &parsed.parts());
                    if let Ok(built) = built {
                        let normalised = text.replace('\\', "/");
                        assert!(
                            normalised.ends_with(&built),
                            "key {built:?} is not the tail of {normalised:?}"
                        );
                    }
                }
            }
        }
        Err(e) => crate::assert_has_message(&e),
    }
    match KeyPrefix::parse(&text) {
        Ok(prefix) => {
            assert!(!prefix.as_str().starts_with('/') && !prefix.as_str().ends_with('/'));
            assert_eq!(KeyPrefix::parse(prefix.as_str()).as_ref(), Ok(&prefix));
        }
        Err(e) => crate::assert_has_message(&e),
    }
    if let Ok(layout) = text.parse::<KeyLayout>() {
        assert_eq!(layout.to_string().parse::<KeyLayout>(), Ok(layout));
    }
}

fn fail(error: &key::KeyError) {
    panic!("a parsed key has an invalid part: {error}");
}
