//! Fuzz targets of keyward-core's parsers, each checked against a reference
//! model written here from the documented grammar (README, `KEY_REGEX`,
//! the `Scope` docs): the key parser, the scope grammar and its wildcard
//! matching, the id parsers and the field parsers. Budget and replay:
//! `tests/support/fuzz_runner.rs`.

#[path = "../../../tests/support/fuzz_runner.rs"]
mod fuzz_runner;

use std::collections::BTreeMap;

use fuzz_runner::fuzz;
use keyward_core::{
    ApiKeySecret, Description, Environment, KeyId, KeyKind, KeyName, Metadata, OptionalRef,
    OrganizationId, PresentedKey, Scope, Scopes,
};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;

const BASE62: &str = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const CROCKFORD: &str = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
const PREFIXES: [&str; 3] = ["sk_live", "sk_test", "sk_admin"];

/// Strings of every sort: arbitrary unicode, control characters, long runs,
/// and text made of the characters the grammars care about.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-z0-9_.:*A-Z -]{0,40}",
        "\\PC{0,200}",
        "[\\x00-\\x1f\\x7f\u{80}-\u{9f}]{1,8}",
        (any::<char>(), 0usize..3000).prop_map(|(c, n)| c.to_string().repeat(n)),
        vec(any::<u8>(), 0..80).prop_map(|bytes| String::from_utf8_lossy(&bytes).into_owned()),
    ]
}

// ---------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------

/// The documented format: `<prefix>_<32 base62>` then six base62 digits of
/// the CRC32 of everything before them, most significant first.
fn reference_key(prefix: &str, body: &str) -> String {
    let signed = format!("{prefix}_{body}");
    let mut checksum = crc32fast::hash(signed.as_bytes());
    let mut digits = [0u8; 6];
    for digit in digits.iter_mut().rev() {
        *digit = BASE62.as_bytes()[(checksum % 62) as usize];
        checksum /= 62;
    }
    format!(
        "{signed}{}",
        std::str::from_utf8(&digits).expect("base62 is ASCII")
    )
}

/// Whether `raw` has the shape of `KEY_REGEX` (`^sk_(live|test|admin)_[0-9A-Za-z]{38}$`).
fn has_key_shape(raw: &str) -> bool {
    PREFIXES.iter().any(|prefix| {
        raw.strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('_'))
            .is_some_and(|body| body.len() == 38 && body.bytes().all(|b| b.is_ascii_alphanumeric()))
    })
}

fn valid_key() -> impl Strategy<Value = String> {
    (
        proptest::sample::select(PREFIXES.to_vec()),
        "[0-9A-Za-z]{32}",
    )
        .prop_map(|(prefix, body)| reference_key(prefix, &body))
}

/// One edit of a key's bytes; positions are taken modulo the length.
#[derive(Debug, Clone)]
enum Edit {
    Replace(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Swap(usize, usize),
    Truncate(usize),
    FlipCase(usize),
    Append(String),
}

fn edit() -> impl Strategy<Value = Edit> {
    let byte = prop_oneof![
        proptest::sample::select(BASE62.as_bytes().to_vec()),
        any::<u8>()
    ];
    prop_oneof![
        (any::<usize>(), byte.clone()).prop_map(|(i, b)| Edit::Replace(i, b)),
        (any::<usize>(), byte).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<usize>().prop_map(Edit::Delete),
        (any::<usize>(), any::<usize>()).prop_map(|(i, j)| Edit::Swap(i, j)),
        any::<usize>().prop_map(Edit::Truncate),
        any::<usize>().prop_map(Edit::FlipCase),
        text().prop_map(Edit::Append),
    ]
}

fn apply(key: &str, edits: &[Edit]) -> Vec<u8> {
    let mut bytes = key.as_bytes().to_vec();
    for edit in edits {
        let len = bytes.len().max(1);
        match edit {
            Edit::Replace(i, b) if !bytes.is_empty() => bytes[i % len] = *b,
            Edit::Insert(i, b) => bytes.insert(i % (bytes.len() + 1), *b),
            Edit::Delete(i) if !bytes.is_empty() => {
                bytes.remove(i % len);
            }
            Edit::Swap(i, j) if !bytes.is_empty() => bytes.swap(i % len, j % len),
            Edit::Truncate(n) => bytes.truncate(n % (bytes.len() + 1)),
            Edit::FlipCase(i) if !bytes.is_empty() => {
                let b = &mut bytes[i % len];
                *b = if b.is_ascii_lowercase() {
                    b.to_ascii_uppercase()
                } else {
                    b.to_ascii_lowercase()
                };
            }
            Edit::Append(tail) => bytes.extend_from_slice(tail.as_bytes()),
            _ => {}
        }
    }
    bytes
}

/// Both parsers agree, and whatever parses has the documented shape and
/// checksum and keeps its text.
fn check_key_parse(raw: &str) -> Result<(), TestCaseError> {
    let owned = ApiKeySecret::parse(raw);
    let borrowed = PresentedKey::parse(raw);
    prop_assert_eq!(owned.as_ref().err(), borrowed.as_ref().err());
    if let (Ok(owned), Ok(borrowed)) = (owned, borrowed) {
        prop_assert!(has_key_shape(raw));
        let (prefix, body) = raw.rsplit_once('_').expect("a parsed key has a prefix");
        prop_assert_eq!(reference_key(prefix, &body[..32]), raw);
        prop_assert_eq!(owned.expose(), raw);
        prop_assert_eq!(borrowed.expose(), raw);
        prop_assert_eq!(owned.kind(), borrowed.kind());
        let expected_kind = if prefix == "sk_admin" {
            KeyKind::Admin
        } else {
            KeyKind::Standard
        };
        prop_assert_eq!(owned.kind(), expected_kind);
        let expected_env = if prefix == "sk_test" {
            Environment::Test
        } else {
            Environment::Live
        };
        prop_assert_eq!(owned.environment(), expected_env);
        prop_assert!(!format!("{owned:?}").contains(raw), "Debug shows the key");
        prop_assert!(
            !format!("{borrowed:?}").contains(raw),
            "Debug shows the key"
        );
    }
    Ok(())
}

#[test]
fn key_parser_takes_any_string() {
    let input = prop_oneof![
        text(),
        "sk_(live|test|admin|prod)_[0-9A-Za-z]{30,45}",
        valid_key(),
    ];
    fuzz("core::key_parser", 1000, input, |raw| check_key_parse(&raw));
}

#[test]
fn key_parser_rejects_every_changed_key() {
    let input = (valid_key(), vec(edit(), 1..6));
    fuzz("core::key_mutations", 1000, input, |(key, edits)| {
        prop_assert!(ApiKeySecret::parse(&key).is_ok(), "reference key rejected");
        let changed = apply(&key, &edits);
        let changed = String::from_utf8_lossy(&changed);
        check_key_parse(&changed)?;
        // CRC32 catches every change up to 32 bits long; a longer change
        // slips through with odds of 2^-32, far beyond any run's reach.
        prop_assert_eq!(
            ApiKeySecret::parse(&changed).is_ok(),
            changed == key,
            "changed key {:?} from {:?}",
            changed,
            key
        );
        Ok(())
    });
}

#[test]
fn generated_keys_match_the_reference_format() {
    let kinds = proptest::sample::select(vec![
        (KeyKind::Standard, Environment::Live),
        (KeyKind::Standard, Environment::Test),
        (KeyKind::Admin, Environment::Live),
    ]);
    fuzz("core::key_generate", 500, kinds, |(kind, environment)| {
        let key = ApiKeySecret::generate(kind, environment);
        let raw = key.expose();
        prop_assert!(has_key_shape(raw));
        let (prefix, body) = raw.rsplit_once('_').expect("a key has a prefix");
        prop_assert_eq!(reference_key(prefix, &body[..32]), raw);
        prop_assert_eq!(key.display_prefix(), &raw[..12]);
        prop_assert_eq!(
            key.partial_hint(),
            format!("{}...{}", &raw[..12], &raw[raw.len() - 4..])
        );
        check_key_parse(raw)
    });
}

// ---------------------------------------------------------------------------
// Scopes
// ---------------------------------------------------------------------------

/// A scope as the model sees it: its segments, `None` standing for `*`.
type ModelScope = Vec<Option<String>>;

/// The documented grammar: `*`, or `:`-separated segments of `[a-z0-9_.-]`
/// whose last may be `*`; at most 128 characters.
fn model_parse(raw: &str) -> Option<ModelScope> {
    if raw.is_empty() || raw.len() > 128 {
        return None;
    }
    let segments: Vec<&str> = raw.split(':').collect();
    let last = segments.len() - 1;
    segments
        .iter()
        .enumerate()
        .map(|(i, segment)| {
            if *segment == "*" && i == last {
                Some(None)
            } else if !segment.is_empty()
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
            {
                Some(Some((*segment).to_owned()))
            } else {
                None
            }
        })
        .collect()
}

/// `*` grants everything; `a:b:*` grants every scope that starts with the
/// segments `a`, `b` and has at least one more; anything else grants itself.
fn model_grants(held: &ModelScope, required: &ModelScope) -> bool {
    match held.split_last() {
        Some((None, stem)) => required.len() > stem.len() && required[..stem.len()] == *stem,
        _ => held == required,
    }
}

/// Scope-like text from a small alphabet, so that grants and near-misses
/// are common.
fn scope_text() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        Just("a".to_owned()),
        Just("b".to_owned()),
        Just("ab".to_owned()),
        Just("*".to_owned()),
        Just(String::new()),
        "[a-z0-9_.*A-Z -]{1,4}",
    ];
    vec(segment, 1..5).prop_map(|segments| segments.join(":"))
}

fn any_scope_text() -> impl Strategy<Value = String> {
    prop_oneof![3 => scope_text(), 1 => text()]
}

#[test]
fn scope_parser_follows_the_grammar() {
    fuzz("core::scope_parse", 1000, any_scope_text(), |raw| {
        let parsed = Scope::parse(&raw);
        prop_assert_eq!(parsed.is_ok(), model_parse(&raw).is_some(), "{:?}", raw);
        if let Ok(scope) = parsed {
            prop_assert_eq!(scope.as_str(), raw.as_str());
            prop_assert_eq!(scope.to_string(), raw);
        } else if let Err(error) = parsed {
            let description = error.description();
            prop_assert!(!description.is_empty() && description.len() < 200);
        }
        Ok(())
    });
}

#[test]
fn scope_grants_follow_the_model() {
    let pair = (scope_text(), scope_text());
    fuzz("core::scope_grants", 1000, pair, |(held, required)| {
        let (Some(model_held), Some(model_required)) = (model_parse(&held), model_parse(&required))
        else {
            return Ok(());
        };
        let (held_scope, required_scope) = (
            Scope::parse(&held).unwrap(),
            Scope::parse(&required).unwrap(),
        );
        prop_assert_eq!(
            held_scope.grants(&required_scope),
            model_grants(&model_held, &model_required),
            "{} grants {}?",
            held,
            required
        );
        // The documented anchors.
        prop_assert!(Scope::parse("*").unwrap().grants(&required_scope));
        prop_assert!(held_scope.grants(&held_scope) || held.ends_with('*'));
        if let Some((stem, _)) = required.rsplit_once(':') {
            let wildcard = Scope::parse(&format!("{stem}:*")).unwrap();
            prop_assert!(
                wildcard.grants(&required_scope),
                "{}:* grants {}",
                stem,
                required
            );
        }
        Ok(())
    });
}

#[test]
fn scope_lists_follow_the_model() {
    let lists = (vec(any_scope_text(), 0..80), vec(scope_text(), 0..6));
    fuzz("core::scopes", 300, lists, |(held, required)| {
        let parsed = Scopes::parse(&held);
        let models: Option<Vec<ModelScope>> = held.iter().map(|raw| model_parse(raw)).collect();
        match (&parsed, models) {
            (Ok(scopes), Some(_)) => {
                prop_assert!(held.len() <= 64);
                let mut expected: Vec<String> = held.clone();
                expected.sort();
                expected.dedup();
                prop_assert_eq!(scopes.to_strings(), expected);
                let required: Vec<Scope> = required
                    .iter()
                    .filter_map(|raw| Scope::parse(raw).ok())
                    .collect();
                let model = required.iter().all(|needed| {
                    let needed = model_parse(needed.as_str()).expect("parsed scopes fit the model");
                    held.iter()
                        .any(|raw| model_grants(&model_parse(raw).expect("held parsed"), &needed))
                });
                prop_assert_eq!(scopes.grant_all(&required), model);
            }
            (Err((index, _)), models) => match index {
                None => prop_assert!(held.len() > 64),
                Some(i) => {
                    prop_assert!(held.len() <= 64 && models.is_none());
                    prop_assert!(model_parse(&held[*i]).is_none(), "scope {} rejected", i);
                    prop_assert!(held[..*i].iter().all(|raw| model_parse(raw).is_some()));
                }
            },
            (Ok(_), None) => prop_assert!(false, "an invalid scope was accepted"),
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------
// Ids and fields
// ---------------------------------------------------------------------------

fn model_key_id(raw: &str) -> bool {
    raw.strip_prefix("key_").is_some_and(|ulid| {
        ulid.len() == 26
            && ulid.bytes().all(|b| CROCKFORD.as_bytes().contains(&b))
            && ulid.as_bytes()[0] <= b'7'
    })
}

#[test]
fn id_parsers_follow_their_grammar() {
    let input = prop_oneof![
        text(),
        "key_[0-9A-Z]{24,28}",
        "key_[0-7][0-9A-HJKMNP-TV-Z]{25}",
        "[A-Za-z0-9_.-]{0,70}",
    ];
    fuzz("core::ids", 1000, input, |raw| {
        let key_id = KeyId::parse(&raw);
        prop_assert_eq!(key_id.is_ok(), model_key_id(&raw), "key id {:?}", raw);
        if let Ok(id) = key_id {
            prop_assert_eq!(id.as_str(), raw.as_str());
        }
        let organization = OrganizationId::parse(&raw);
        let model = (1..=64).contains(&raw.chars().count())
            && raw
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        prop_assert_eq!(organization.is_ok(), model, "organization {:?}", raw);
        let reference = OptionalRef::parse(&raw);
        let model = raw.is_empty()
            || (raw.chars().count() <= 128
                && raw
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.:@-".contains(c)));
        prop_assert_eq!(reference.is_ok(), model, "reference {:?}", raw);
        prop_assert_eq!(reference.ok().flatten().is_none(), raw.is_empty() || !model);
        let generated = KeyId::generate();
        prop_assert!(model_key_id(generated.as_str()));
        Ok(())
    });
}

#[test]
fn text_fields_follow_their_rules() {
    fuzz("core::text_fields", 1000, text(), |raw| {
        let chars = raw.chars().count();
        let name = !raw.trim().is_empty() && chars <= 128 && !raw.chars().any(char::is_control);
        prop_assert_eq!(KeyName::parse(&raw).is_ok(), name, "name {:?}", raw);
        let description = chars <= 1024
            && !raw
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\t');
        prop_assert_eq!(
            Description::parse(&raw).is_ok(),
            description,
            "description {:?}",
            raw
        );
        Ok(())
    });
}

#[test]
fn metadata_follows_its_rules() {
    let entries = btree_map(
        prop_oneof![text(), "[a-z]{1,3}"],
        prop_oneof![text(), "[a-z]{0,3}"],
        0..40,
    );
    fuzz(
        "core::metadata",
        300,
        entries,
        |map: BTreeMap<String, String>| {
            let parsed = Metadata::parse(&map);
            let key_ok = |k: &String| {
                (1..=64).contains(&k.chars().count())
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
            };
            let value_ok =
                |v: &String| v.chars().count() <= 512 && !v.chars().any(char::is_control);
            let model = map.len() <= 32 && map.iter().all(|(k, v)| key_ok(k) && value_ok(v));
            prop_assert_eq!(parsed.is_ok(), model);
            if let Ok(metadata) = parsed {
                prop_assert_eq!(metadata.as_map(), &map);
            }
            Ok(())
        },
    );
}
