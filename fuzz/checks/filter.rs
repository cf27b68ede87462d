//! The invariants of the `tag_filter` fuzz target, shared with its replay test.
//!
//! It exists so that the libFuzzer target (`fuzz/fuzz_targets/tag_filter.rs`) and the stable
//! replay of its corpus (`tests/fuzz_replay.rs`) check exactly the same thing: both include this
//! file with `#[path]`. Parsing must never panic, and a filter that parses must be canonical
//! (trimmed, valid tags, within the term limit), survive both spellings unchanged, parse the same
//! way through the search options, and match exactly as an AND of ORs.

use snapshop::config::SearchSettings;
use snapshop::search::filter::{validate_tag, TagFilter};
use snapshop::search::{RawOptions, SearchError};

/// Most tags a filter may name (`filter::MAX_TERMS`, private there).
const MAX_TERMS: usize = 64;

/// The compact spelling of a parsed filter: `,` between groups, `|` inside one.
pub fn compact(f: &TagFilter) -> String {
    f.all
        .iter()
        .map(|g| g.join("|"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The filter as `POST /v1/search` resolves it from the `filter` option.
fn through_options(filter: serde_json::Value) -> Result<TagFilter, String> {
    RawOptions {
        filter: Some(filter),
        ..RawOptions::default()
    }
    .resolve(&SearchSettings::default())
    .map(|o| o.filter)
    .map_err(|e| match e {
        SearchError::Filter(message) => message,
        other => panic!("the default options fail with something else than the filter: {other}"),
    })
}

/// The whole check on one input (read as UTF-8, lossily). Panics when an invariant fails.
pub fn check(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let text = text.as_ref();

    if let Ok(()) = validate_tag(text) {
        let (key, value) = text.split_once(':').expect("a valid tag has a colon");
        assert!(!key.trim().is_empty() && !value.trim().is_empty());
        assert!(text.len() <= 128);
        assert!(!text.chars().any(|c| c == ',' || c == '|' || c.is_control()));
    }

    let parsed = TagFilter::parse(text);
    // The query-string path and the JSON-options path agree where both accept: the string
    // option is the same parser, and a JSON text is also accepted as a JSON value.
    assert_eq!(
        through_options(serde_json::Value::String(text.to_owned())),
        parsed.clone(),
        "a string `filter` option is TagFilter::parse"
    );
    if text.trim_start().starts_with('{') {
        if let (Ok(value), Ok(f)) = (serde_json::from_str::<serde_json::Value>(text), &parsed) {
            assert_eq!(
                through_options(value).as_ref(),
                Ok(f),
                "JSON text vs JSON value"
            );
        }
    }
    let f = match parsed {
        Ok(f) => f,
        Err(message) => {
            assert!(!message.is_empty());
            return;
        }
    };

    // Canonical: every group non-empty, every tag valid and trimmed, within the limit.
    let mut terms = 0;
    for group in &f.all {
        assert!(!group.is_empty(), "empty group in {f:?}");
        for tag in group {
            assert_eq!(tag, tag.trim(), "untrimmed tag {tag:?}");
            validate_tag(tag).unwrap_or_else(|e| panic!("parsed an invalid tag: {e}"));
            terms += 1;
        }
    }
    assert!(terms <= MAX_TERMS, "{terms} terms");
    assert_eq!(f.is_empty(), f.all.is_empty());
    assert_eq!(
        f.clone().validated().as_ref(),
        Ok(&f),
        "validated is idempotent"
    );

    // Both spellings round-trip.
    let json = serde_json::to_string(&f).expect("a filter serialises");
    assert_eq!(TagFilter::parse(&json).as_ref(), Ok(&f), "JSON {json}");
    assert_eq!(
        through_options(serde_json::to_value(&f).expect("a filter serialises")).as_ref(),
        Ok(&f)
    );
    let short = compact(&f);
    // A first tag starting with `{` makes the compact text read as JSON (documented): only the
    // JSON spelling can say such a filter.
    if !short.starts_with('{') {
        assert_eq!(TagFilter::parse(&short).as_ref(), Ok(&f), "compact {short}");
    }

    // matches() is an AND of ORs over the groups.
    let every: Vec<String> = f.all.iter().flatten().cloned().collect();
    assert!(f.matches(&every));
    assert_eq!(f.matches(&[]), f.is_empty());
    let firsts: Vec<String> = f.all.iter().map(|g| g[0].clone()).collect();
    assert!(f.matches(&firsts));
    let lasts: Vec<String> = f.all.iter().map(|g| g[g.len() - 1].clone()).collect();
    assert!(f.matches(&lasts));
    for (i, group) in f.all.iter().enumerate() {
        // Without any tag of group i (a tag shared with other groups goes too), group i
        // cannot match, so the filter cannot.
        let without: Vec<String> = every
            .iter()
            .filter(|t| !group.contains(t))
            .cloned()
            .collect();
        assert!(
            !f.matches(&without),
            "group {i} has no tag left yet matched"
        );
    }
    // Extra tags never hurt.
    let mut more = firsts;
    more.push("zz-fuzz:extra".into());
    assert!(f.matches(&more));
}
