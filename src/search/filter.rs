//! The tag filter: an AND of ORs over `key:value` tags.
//!
//! Two spellings, both documented in `docs/api.md`:
//! - JSON: `{"all": [["category:dress"], ["color:red", "color:blue"]]}`
//! - compact (handy in a query string): `category:dress,color:red|color:blue`, where `,`
//!   separates the AND groups and `|` the alternatives inside a group.
//!
//! A value starting with `{` is read as JSON. Parsing never touches the catalogue.

use serde::{Deserialize, Serialize};

/// Most groups and alternatives accepted, to bound the work of one request.
const MAX_TERMS: usize = 64;

/// A tag filter: an AND of ORs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"all": [["category:dress"], ["color:red", "color:blue"]]}))]
pub struct TagFilter {
    /// Every group must match; a group matches when the product has any of its tags.
    pub all: Vec<Vec<String>>,
}

/// A filter as a client writes it, in either spelling (the schema of the `filter` option).
#[allow(dead_code)]
#[derive(utoipa::ToSchema)]
#[serde(untagged)]
#[schema(as = Filter)]
pub enum FilterSpec {
    /// Compact: `,` between the groups that must all match, `|` between the alternatives of a
    /// group: `category:dress,color:red|color:blue`.
    Compact(String),
    /// JSON: `{"all": [["category:dress"], ["color:red", "color:blue"]]}`.
    Json(TagFilter),
}

impl TagFilter {
    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// Parses either spelling. Errors are messages for a 400 `invalid_filter`.
    pub fn parse(input: &str) -> Result<Self, String> {
        let input = input.trim();
        if input.is_empty() {
            return Ok(Self::default());
        }
        let filter = if input.starts_with('{') {
            serde_json::from_str::<TagFilter>(input)
                .map_err(|e| format!("expected {{\"all\": [[\"key:value\", ...], ...]}}: {e}"))?
        } else {
            TagFilter {
                all: input
                    .split(',')
                    .map(|group| group.split('|').map(|t| t.trim().to_owned()).collect())
                    .collect(),
            }
        };
        filter.validated()
    }

    /// Checks every tag and group; normalises whitespace.
    pub fn validated(self) -> Result<Self, String> {
        let mut terms = 0;
        let mut all = Vec::with_capacity(self.all.len());
        for group in self.all {
            if group.is_empty() {
                return Err("a filter group must list at least one tag".into());
            }
            let mut out = Vec::with_capacity(group.len());
            for tag in group {
                let tag = tag.trim().to_owned();
                validate_tag(&tag)?;
                terms += 1;
                out.push(tag);
            }
            all.push(out);
        }
        if terms > MAX_TERMS {
            return Err(format!("a filter may name at most {MAX_TERMS} tags"));
        }
        Ok(TagFilter { all })
    }

    /// Whether a product with these tags passes.
    pub fn matches(&self, tags: &[String]) -> bool {
        self.all
            .iter()
            .all(|group| group.iter().any(|t| tags.contains(t)))
    }
}

/// A tag is `key:value` with non-empty key and value, without the filter's separators.
pub fn validate_tag(tag: &str) -> Result<(), String> {
    let Some((key, value)) = tag.split_once(':') else {
        return Err(format!("tag `{tag}` is not of the form key:value"));
    };
    if key.trim().is_empty() || value.trim().is_empty() {
        return Err(format!("tag `{tag}` has an empty key or value"));
    }
    if tag.len() > 128 {
        return Err(format!("tag `{tag}` is longer than 128 bytes"));
    }
    if tag.chars().any(|c| c == ',' || c == '|' || c.is_control()) {
        return Err(format!(
            "tag `{tag}` contains `,`, `|` or a control character"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&[&str]]) -> Vec<Vec<String>> {
        v.iter()
            .map(|g| g.iter().map(|t| t.to_string()).collect())
            .collect()
    }

    #[test]
    fn both_spellings_agree() {
        let compact = TagFilter::parse("category:dress, color:red|color:blue").unwrap();
        let json =
            TagFilter::parse(r#"{"all": [["category:dress"], ["color:red", "color:blue"]]}"#)
                .unwrap();
        assert_eq!(compact, json);
        assert_eq!(
            compact.all,
            s(&[&["category:dress"], &["color:red", "color:blue"]])
        );
        assert!(TagFilter::parse("  ").unwrap().is_empty());
        assert!(TagFilter::parse(r#"{"all": []}"#).unwrap().is_empty());
    }

    #[test]
    fn bad_filters_are_rejected() {
        for bad in [
            "category",
            "category:",
            ":dress",
            "a:b,,c:d",
            "a:b|",
            r#"{"all": [[]]}"#,
            r#"{"all": "a:b"}"#,
            r#"{"any": [["a:b"]]}"#,
            r#"{"all": [["a:b"]"#,
        ] {
            assert!(TagFilter::parse(bad).is_err(), "{bad}");
        }
        let many = (0..65)
            .map(|i| format!("k:{i}"))
            .collect::<Vec<_>>()
            .join("|");
        assert!(TagFilter::parse(&many).is_err());
    }

    #[test]
    fn matching_is_and_of_ors() {
        let f = TagFilter::parse("category:dress,color:red|color:blue").unwrap();
        let tags = |v: &[&str]| v.iter().map(|t| t.to_string()).collect::<Vec<_>>();
        assert!(f.matches(&tags(&["category:dress", "color:blue"])));
        assert!(!f.matches(&tags(&["category:dress", "color:green"])));
        assert!(!f.matches(&tags(&["color:red"])));
        assert!(TagFilter::default().matches(&[]));
    }

    /// Properties of both spellings and of matching, on structured filters (random strings go
    /// through the fuzz target `tag_filter` and its replay, `tests/fuzz_replay.rs`).
    mod props {
        use super::*;
        use proptest::prelude::*;
        use proptest::test_runner::{Config, FileFailurePersistence, RngSeed};

        /// Deterministic: a fixed seed, no persistence file.
        fn config() -> Config {
            Config {
                cases: 256,
                rng_seed: RngSeed::Fixed(0xf117_e125),
                failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
                ..Config::default()
            }
        }

        /// A valid, trimmed tag: a small alphabet so that groups share tags.
        fn tag() -> impl Strategy<Value = String> {
            "[a-c][a-c ]{0,2}:[a-c :.é]{0,3}[a-c]"
        }

        fn filter() -> impl Strategy<Value = TagFilter> {
            prop::collection::vec(prop::collection::vec(tag(), 1..4), 0..5)
                .prop_map(|all| TagFilter { all })
        }

        fn compact(f: &TagFilter) -> String {
            f.all
                .iter()
                .map(|g| g.join("|"))
                .collect::<Vec<_>>()
                .join(",")
        }

        proptest! {
            #![proptest_config(config())]

            #[test]
            fn both_spellings_round_trip(f in filter()) {
                prop_assert_eq!(TagFilter::parse(&compact(&f)), Ok(f.clone()));
                let json = serde_json::to_string(&f).unwrap();
                prop_assert_eq!(TagFilter::parse(&json), Ok(f.clone()));
            }

            #[test]
            fn whitespace_around_tags_and_separators_is_ignored(
                f in filter(),
                pad in prop::collection::vec("[ \t\u{a0}]{0,2}", 32),
            ) {
                let mut pads = pad.iter().cycle();
                let spaced = f
                    .all
                    .iter()
                    .map(|g| {
                        g.iter()
                            .map(|t| format!("{}{t}{}", pads.next().unwrap(), pads.next().unwrap()))
                            .collect::<Vec<_>>()
                            .join("|")
                    })
                    .collect::<Vec<_>>()
                    .join(",");
                prop_assert_eq!(TagFilter::parse(&spaced), Ok(f));
            }

            #[test]
            fn matching_is_an_and_of_ors(
                f in filter(),
                tags in prop::collection::vec(tag(), 0..8),
            ) {
                let m = f.matches(&tags);
                // The AND: each group alone.
                let each = f
                    .all
                    .iter()
                    .all(|g| TagFilter { all: vec![g.clone()] }.matches(&tags));
                prop_assert_eq!(m, each);
                // The OR inside a group: one of its tags, compared as whole strings.
                for g in &f.all {
                    prop_assert_eq!(
                        TagFilter { all: vec![g.clone()] }.matches(&tags),
                        g.iter().any(|t| tags.iter().any(|u| u == t))
                    );
                }
                // Monotone: more tags never lose a match, fewer groups never lose one.
                if m {
                    let mut more = tags.clone();
                    more.push("z:z".into());
                    prop_assert!(f.matches(&more));
                    let mut fewer = f.clone();
                    fewer.all.pop();
                    prop_assert!(fewer.matches(&tags));
                }
            }

            #[test]
            fn term_limit_is_exact(n in 1usize..=(MAX_TERMS + 3), groups in 1usize..4) {
                let all: Vec<Vec<String>> = (0..n)
                    .map(|i| format!("k:{i}"))
                    .collect::<Vec<_>>()
                    .chunks(n.div_ceil(groups))
                    .map(<[String]>::to_vec)
                    .collect();
                let f = TagFilter { all };
                prop_assert_eq!(f.clone().validated().is_ok(), n <= MAX_TERMS);
                prop_assert_eq!(TagFilter::parse(&compact(&f)).is_ok(), n <= MAX_TERMS);
            }
        }
    }
}
