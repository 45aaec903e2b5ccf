//! Semver ranges as cargo and npm write them.
//!
//! Accepted forms: `^1.2.3`, `~1.2`, `1.x`, `1.*`, `*`, `=1.0.0`, `>1`,
//! `>=1.2, <2` (comma) and `>=1.2 <2` (space), `>= 1.2` (space after the
//! operator), a bare `1.2.3` (cargo's meaning: caret, not npm's exact), npm
//! alternatives `^1 || ^2`, and npm hyphen ranges `1.2 - 1.4` (meaning
//! `>=1.2.0, <=1.4.x`). The empty string is refused: write `*` for any version.
//!
//! Each `||` alternative is turned into comma-separated cargo syntax and
//! evaluated by the `semver` crate, so matching is exactly cargo's, including
//! its pre-release rule: a pre-release version (`1.2.3-rc.1`) matches an
//! alternative only if one of that alternative's comparators names a
//! pre-release of the same `major.minor.patch` (so `^1.2.3-rc.0` matches
//! `1.2.3-rc.1` but not `1.3.0-rc.1`, and `^1` matches no pre-release at all).
//! npm applies the same rule. Build metadata never affects matching.
//!
//! Because that pre-release rule is not an interval of versions, the set handed
//! to the pubgrub solver is computed over the versions that actually exist
//! ([`VersionRange::ranges_over`]): exactly those of them the range matches.

use std::fmt;
use std::str::FromStr;

use pubgrub::Ranges;
use semver::{Version, VersionReq};
use serde::{Deserialize, Serialize};

/// Longest range text accepted, in bytes.
pub const MAX_RANGE_LEN: usize = 256;
/// Most `||` alternatives in one range.
pub const MAX_ALTERNATIVES: usize = 8;
/// Most comparators in one alternative.
pub const MAX_COMPARATORS: usize = 16;

/// Characters an operator is made of; a token of only these is joined to the
/// version after it (`>= 1.2`).
const OPERATOR_CHARS: &[char] = &['<', '>', '=', '^', '~'];

/// A parsed semver range that keeps the text it was written as.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VersionRange {
    text: String,
    alternatives: Vec<VersionReq>,
}

/// Why a range was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a semver range: {reason}")]
pub struct RangeError {
    /// The text as given (cut to [`MAX_RANGE_LEN`] bytes when longer).
    pub text: String,
    /// What is wrong with it.
    pub reason: String,
}

impl RangeError {
    fn new(text: &str, reason: impl Into<String>) -> Self {
        let mut cut = text.len().min(MAX_RANGE_LEN);
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        Self {
            text: text[..cut].to_owned(),
            reason: reason.into(),
        }
    }
}

impl VersionRange {
    /// Parses a cargo- or npm-style range.
    pub fn parse(text: &str) -> Result<Self, RangeError> {
        if text.len() > MAX_RANGE_LEN {
            return Err(RangeError::new(
                text,
                format!("{} bytes long, at most {MAX_RANGE_LEN} allowed", text.len()),
            ));
        }
        if text.trim().is_empty() {
            return Err(RangeError::new(text, "empty (write \"*\" for any version)"));
        }
        let parts: Vec<&str> = text.split("||").collect();
        if parts.len() > MAX_ALTERNATIVES {
            return Err(RangeError::new(
                text,
                format!(
                    "{} alternatives, at most {MAX_ALTERNATIVES} allowed",
                    parts.len()
                ),
            ));
        }
        let mut alternatives = Vec::with_capacity(parts.len());
        for part in parts {
            let cargo = to_cargo_syntax(part).map_err(|reason| RangeError::new(text, reason))?;
            let req =
                VersionReq::parse(&cargo).map_err(|e| RangeError::new(text, e.to_string()))?;
            alternatives.push(req);
        }
        Ok(Self {
            text: text.to_owned(),
            alternatives,
        })
    }

    /// The range matching every release (`*`).
    pub fn any() -> Self {
        Self {
            text: "*".to_owned(),
            alternatives: vec![VersionReq::STAR],
        }
    }

    /// The text the range was written as.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `version` is in the range (cargo's rules, see the module doc).
    pub fn contains(&self, version: &Version) -> bool {
        self.alternatives.iter().any(|req| req.matches(version))
    }

    /// The pubgrub version set of exactly those of `versions` that the range
    /// contains. Versions outside `versions` are in no set made this way, so
    /// build every set for a package over the same list of its versions.
    pub fn ranges_over<'a>(
        &self,
        versions: impl IntoIterator<Item = &'a Version>,
    ) -> Ranges<Version> {
        versions
            .into_iter()
            .filter(|v| self.contains(v))
            .map(|v| {
                (
                    std::ops::Bound::Included(v.clone()),
                    std::ops::Bound::Included(v.clone()),
                )
            })
            .collect()
    }
}

/// One npm or cargo alternative (no `||`) as the comma-separated cargo syntax
/// the `semver` crate parses.
fn to_cargo_syntax(alternative: &str) -> Result<String, String> {
    let raw: Vec<&str> = alternative
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|t| !t.is_empty())
        .collect();
    if raw.is_empty() {
        return Err("an empty alternative between \"||\"".to_owned());
    }
    // npm hyphen range: the whole alternative is `A - B`.
    if let [low, "-", high] = raw.as_slice() {
        if low.starts_with(OPERATOR_CHARS) || high.starts_with(OPERATOR_CHARS) {
            return Err("a hyphen range joins two plain versions (\"1.2 - 1.4\")".to_owned());
        }
        return Ok(format!(">={low}, <={high}"));
    }
    let mut comparators: Vec<String> = Vec::new();
    let mut pending_operator: Option<&str> = None;
    for token in raw {
        if token == "-" {
            return Err("a hyphen range must be the whole alternative (\"1.2 - 1.4\")".to_owned());
        }
        if token.chars().all(|c| OPERATOR_CHARS.contains(&c)) {
            if pending_operator.is_some() {
                return Err(format!("operator {token:?} follows another operator"));
            }
            pending_operator = Some(token);
            continue;
        }
        comparators.push(match pending_operator.take() {
            Some(op) => format!("{op}{token}"),
            None => token.to_owned(),
        });
    }
    if let Some(op) = pending_operator {
        return Err(format!("operator {op:?} has no version after it"));
    }
    if comparators.len() > MAX_COMPARATORS {
        return Err(format!(
            "{} comparators, at most {MAX_COMPARATORS} allowed",
            comparators.len()
        ));
    }
    Ok(comparators.join(", "))
}

impl fmt::Display for VersionRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for VersionRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VersionRange({:?})", self.text)
    }
}

impl FromStr for VersionRange {
    type Err = RangeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for VersionRange {
    type Error = RangeError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<VersionRange> for String {
    fn from(range: VersionRange) -> Self {
        range.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    /// (range, versions it matches, versions it does not match)
    const TABLE: &[(&str, &[&str], &[&str])] = &[
        (
            "^1.2.3",
            &["1.2.3", "1.9.0", "1.2.3+build"],
            &["1.2.2", "2.0.0", "1.3.0-rc.1"],
        ),
        ("^0.2.3", &["0.2.3", "0.2.9"], &["0.3.0", "0.2.2"]),
        ("~1.2", &["1.2.0", "1.2.9"], &["1.3.0", "1.1.9"]),
        ("~1.2.3", &["1.2.3", "1.2.8"], &["1.3.0", "1.2.2"]),
        ("1.x", &["1.0.0", "1.99.3"], &["2.0.0", "0.9.0"]),
        ("1.*", &["1.0.0", "1.5.0"], &["2.0.0"]),
        ("1.2.x", &["1.2.0", "1.2.7"], &["1.3.0"]),
        ("*", &["0.0.1", "7.3.2"], &["1.0.0-alpha"]),
        ("x", &["3.0.0"], &[]),
        (
            ">=1.2, <2",
            &["1.2.0", "1.9.9"],
            &["2.0.0", "1.1.9", "2.0.0-alpha"],
        ),
        (">=1.2 <2", &["1.2.0", "1.9.9"], &["2.0.0", "1.1.9"]),
        (">= 1.2, < 2", &["1.5.0"], &["2.0.0"]),
        ("=1.0.0", &["1.0.0", "1.0.0+meta"], &["1.0.1", "1.0.0-rc.1"]),
        ("1.2.3", &["1.2.3", "1.4.0"], &["2.0.0", "1.2.2"]),
        ("^1 || ^3", &["1.0.0", "3.1.0"], &["2.0.0", "4.0.0"]),
        ("<1.0.0 || >=2.0.0", &["0.9.0", "2.0.0"], &["1.5.0"]),
        ("1.2 - 1.4", &["1.2.0", "1.4.9"], &["1.1.9", "1.5.0"]),
        ("1.2.3 - 2", &["1.2.3", "2.9.0"], &["1.2.2", "3.0.0"]),
        (">1.2.3", &["1.2.4"], &["1.2.3"]),
        ("<=1.2", &["1.2.9", "1.0.0"], &["1.3.0"]),
        (
            "^1.2.3-rc.1",
            &["1.2.3-rc.1", "1.2.3-rc.2", "1.2.3", "1.5.0"],
            &["1.2.3-rc.0", "1.3.0-rc.1"],
        ),
        (
            ">=1.0.0-beta, <2",
            &["1.0.0-beta", "1.0.0-rc.1", "1.5.0"],
            &["1.0.0-alpha", "1.5.0-rc.1"],
        ),
    ];

    #[test]
    fn range_table() {
        for (range, yes, no) in TABLE {
            let r = VersionRange::parse(range).unwrap_or_else(|e| panic!("{range}: {e}"));
            for s in *yes {
                assert!(r.contains(&v(s)), "{range} should contain {s}");
            }
            for s in *no {
                assert!(!r.contains(&v(s)), "{range} should not contain {s}");
            }
            assert_eq!(r.to_string(), *range, "Display keeps the original text");
        }
    }

    #[test]
    fn refusals_keep_the_text_and_say_why() {
        for bad in [
            "",
            "  ",
            "^1.x.y",
            "banana",
            ">=",
            ">= >= 1",
            "1 - ",
            "^1 ||",
            "|| ^1",
            ">1 - 2",
            "1 - 2 - 3",
            "1.2.3.4",
        ] {
            let err = VersionRange::parse(bad).unwrap_err();
            assert_eq!(err.text, bad);
            assert!(
                err.to_string()
                    .starts_with(&format!("{bad:?} is not a semver range: ")),
                "{err}"
            );
        }
        let long = "1".repeat(MAX_RANGE_LEN + 1);
        assert!(VersionRange::parse(&long).is_err());
        let many = ["^1"; MAX_ALTERNATIVES + 1].join(" || ");
        assert!(VersionRange::parse(&many).is_err());
        let comparators = vec![">=1"; MAX_COMPARATORS + 1].join(", ");
        assert!(VersionRange::parse(&comparators).is_err());
    }

    #[test]
    fn ranges_over_is_exactly_the_matching_versions() {
        let versions: Vec<Version> = ["0.9.0", "1.0.0", "1.2.0-rc.1", "1.2.0", "1.9.0", "2.0.0"]
            .iter()
            .map(|s| v(s))
            .collect();
        let r = VersionRange::parse("^1.0").unwrap();
        let set = r.ranges_over(&versions);
        for version in &versions {
            assert_eq!(set.contains(version), r.contains(version), "{version}");
        }
        assert!(
            !set.contains(&v("1.1.0")),
            "versions not listed are in no set"
        );
    }

    #[test]
    fn serde_goes_through_parse() {
        #[derive(Deserialize, Serialize)]
        struct T {
            r: VersionRange,
        }
        let t: T = toml::from_str("r = \">=1.2 <2\"").unwrap();
        assert_eq!(t.r.as_str(), ">=1.2 <2");
        assert!(toml::from_str::<T>("r = \"nope\"").is_err());
    }

    fn version_strategy() -> impl Strategy<Value = Version> {
        (
            0u64..4,
            0u64..4,
            0u64..4,
            prop_oneof![
                Just(""),
                Just("alpha"),
                Just("alpha.1"),
                Just("rc.1"),
                Just("0")
            ],
        )
            .prop_map(|(major, minor, patch, pre)| {
                let mut version = Version::new(major, minor, patch);
                version.pre = semver::Prerelease::new(pre).unwrap();
                version
            })
    }

    /// A comparator in cargo syntax: operator, then 1 to 3 numeric parts or a
    /// wildcard, sometimes with a pre-release.
    fn comparator_strategy() -> impl Strategy<Value = String> {
        (
            prop_oneof![
                Just(""),
                Just("^"),
                Just("~"),
                Just("="),
                Just(">"),
                Just(">="),
                Just("<"),
                Just("<=")
            ],
            0u64..4,
            prop::option::of(0u64..4),
            prop::option::of(0u64..4),
            prop_oneof![Just(""), Just("-alpha"), Just("-rc.1")],
        )
            .prop_map(|(op, major, minor, patch, pre)| match (minor, patch) {
                (Some(minor), Some(patch)) => format!("{op}{major}.{minor}.{patch}{pre}"),
                (Some(minor), None) => format!("{op}{major}.{minor}"),
                (None, _) => format!("{op}{major}"),
            })
    }

    proptest! {
        #[test]
        fn agrees_with_cargo_on_cargo_syntax(
            comparators in prop::collection::vec(comparator_strategy(), 1..4),
            version in version_strategy(),
        ) {
            let text = comparators.join(", ");
            let cargo = VersionReq::parse(&text);
            let ours = VersionRange::parse(&text);
            match (cargo, ours) {
                (Ok(req), Ok(range)) => prop_assert_eq!(range.contains(&version), req.matches(&version)),
                (Err(_), Err(_)) => {}
                (cargo, ours) => prop_assert!(false, "{text}: cargo {cargo:?}, ours {ours:?}"),
            }
        }

        #[test]
        fn parse_never_panics(text in ".{0,80}") {
            let _ = VersionRange::parse(&text);
        }
    }
}
