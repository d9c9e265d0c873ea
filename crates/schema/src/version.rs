//! Versions: SemVer 2.0, plus SSM's four-part numeric versions (`3.2.582.0`).
//!
//! Both kinds share one total order. Numeric versions compare as `a.b.c` first, then by
//! their fourth part (a SemVer version counts as `.0` there), then by pre-release (a
//! pre-release sorts before the release), then SemVer before numeric when everything else
//! ties (`1.2.3 < 1.2.3.0`), then by build metadata. The order agrees with equality, and
//! every version prints back exactly as it was written.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A molt version.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Version {
    /// A SemVer 2.0 version, e.g. `1.4.0` or `2.0.0-rc.1+build.5`.
    SemVer(semver::Version),
    /// An SSM-style four-part numeric version, e.g. `3.2.582.0`.
    Numeric([u64; 4]),
}

/// Why a string is not a version.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VersionError {
    #[error("empty version")]
    Empty,
    #[error("version {0:?} has a leading 'v'; write it without the 'v'")]
    LeadingV(String),
    #[error("version {0:?} has a numeric part with a leading zero")]
    LeadingZero(String),
    #[error("version {text:?} is neither SemVer 2.0 nor four-part numeric (a.b.c.d): {reason}")]
    Invalid { text: String, reason: String },
}

impl Version {
    /// `major.minor.patch`, the first three parts of either kind.
    pub fn triple(&self) -> (u64, u64, u64) {
        match self {
            Version::SemVer(v) => (v.major, v.minor, v.patch),
            Version::Numeric([a, b, c, _]) => (*a, *b, *c),
        }
    }

    /// True for a SemVer pre-release such as `1.2.0-rc.1`.
    pub fn is_prerelease(&self) -> bool {
        matches!(self, Version::SemVer(v) if !v.pre.is_empty())
    }

    fn fourth(&self) -> u64 {
        match self {
            Version::SemVer(_) => 0,
            Version::Numeric([_, _, _, d]) => *d,
        }
    }

    fn kind_rank(&self) -> u8 {
        match self {
            Version::SemVer(_) => 0,
            Version::Numeric(_) => 1,
        }
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.triple()
            .cmp(&other.triple())
            .then_with(|| self.fourth().cmp(&other.fourth()))
            .then_with(|| pre_of(self).cmp(&pre_of(other)))
            .then_with(|| self.kind_rank().cmp(&other.kind_rank()))
            .then_with(|| build_of(self).cmp(&build_of(other)))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The pre-release part; numeric versions have none (semver orders "none" above any pre-release).
fn pre_of(v: &Version) -> semver::Prerelease {
    match v {
        Version::SemVer(s) => s.pre.clone(),
        Version::Numeric(_) => semver::Prerelease::EMPTY,
    }
}

fn build_of(v: &Version) -> semver::BuildMetadata {
    match v {
        Version::SemVer(s) => s.build.clone(),
        Version::Numeric(_) => semver::BuildMetadata::EMPTY,
    }
}

impl FromStr for Version {
    type Err = VersionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(VersionError::Empty);
        }
        if s.starts_with(['v', 'V']) {
            return Err(VersionError::LeadingV(s.to_owned()));
        }
        let parts: Vec<&str> = s.split('.').collect();
        let all_digits = |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        if parts.len() == 4 && parts.iter().all(all_digits) {
            let mut out = [0u64; 4];
            for (slot, part) in out.iter_mut().zip(&parts) {
                if part.len() > 1 && part.starts_with('0') {
                    return Err(VersionError::LeadingZero(s.to_owned()));
                }
                *slot =
                    part.parse()
                        .map_err(|e: std::num::ParseIntError| VersionError::Invalid {
                            text: s.to_owned(),
                            reason: e.to_string(),
                        })?;
            }
            return Ok(Version::Numeric(out));
        }
        semver::Version::parse(s)
            .map(Version::SemVer)
            .map_err(|e| VersionError::Invalid {
                text: s.to_owned(),
                reason: e.to_string(),
            })
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Version::SemVer(v) => v.fmt(f),
            Version::Numeric([a, b, c, d]) => write!(f, "{a}.{b}.{c}.{d}"),
        }
    }
}

impl Serialize for Version {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    #[test]
    fn parses_both_kinds() {
        assert!(matches!(v("1.4.0"), Version::SemVer(_)));
        assert_eq!(v("3.2.582.0"), Version::Numeric([3, 2, 582, 0]));
        assert!(matches!(v("2.0.0-rc.1+build.5"), Version::SemVer(_)));
    }

    #[test]
    fn rejects_bad_text() {
        assert_eq!("".parse::<Version>(), Err(VersionError::Empty));
        assert!(matches!(
            "v1.2.3".parse::<Version>(),
            Err(VersionError::LeadingV(_))
        ));
        assert!(matches!(
            "1.02.3.4".parse::<Version>(),
            Err(VersionError::LeadingZero(_))
        ));
        for bad in [
            "1",
            "1.2",
            "1.2.3.4.5",
            "1.2.3.x",
            "a.b.c",
            "1.2.3.-4",
            "1..2.3",
            " 1.2.3",
        ] {
            assert!(bad.parse::<Version>().is_err(), "{bad} should not parse");
        }
        assert!(matches!(
            "99999999999999999999.0.0.0".parse::<Version>(),
            Err(VersionError::Invalid { .. })
        ));
    }

    #[test]
    fn order_table() {
        let ordered = [
            "0.9.0",
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-beta",
            "1.0.0",
            "1.0.0.0",
            "1.0.0.1",
            "1.0.1",
            "1.0.1.0",
            "1.0.10",
            "3.2.582.0",
            "3.2.1000.0",
            "3.10.0",
        ];
        for pair in ordered.windows(2) {
            assert!(v(pair[0]) < v(pair[1]), "{} < {}", pair[0], pair[1]);
        }
        assert!(v("1.0.0.1") > v("1.0.0-rc.1"));
    }

    fn version_strategy() -> impl Strategy<Value = String> {
        let num = 0u64..40;
        let semver = (
            num.clone(),
            num.clone(),
            num.clone(),
            proptest::option::of("(alpha|beta|rc)(\\.(0|[1-9][0-9]?))?"),
            proptest::option::of("build\\.[0-9]{1,2}"),
        )
            .prop_map(|(a, b, c, pre, build)| {
                let mut s = format!("{a}.{b}.{c}");
                if let Some(p) = pre {
                    s.push('-');
                    s.push_str(&p);
                }
                if let Some(m) = build {
                    s.push('+');
                    s.push_str(&m);
                }
                s
            });
        let numeric = (num.clone(), num.clone(), num.clone(), num)
            .prop_map(|(a, b, c, d)| format!("{a}.{b}.{c}.{d}"));
        prop_oneof![semver, numeric]
    }

    proptest! {
        #[test]
        fn round_trips_text(s in version_strategy()) {
            let parsed: Version = s.parse().unwrap();
            prop_assert_eq!(parsed.to_string(), s);
        }

        #[test]
        fn order_is_total_and_consistent(a in version_strategy(), b in version_strategy(), c in version_strategy()) {
            let (a, b, c) = (v(&a), v(&b), v(&c));
            // antisymmetry, and agreement with Eq
            prop_assert_eq!(a.cmp(&b), b.cmp(&a).reverse());
            prop_assert_eq!(a.cmp(&b) == Ordering::Equal, a == b);
            // transitivity
            if a <= b && b <= c {
                prop_assert!(a <= c);
            }
        }

        #[test]
        fn numeric_order_is_lexicographic(x in proptest::array::uniform4(0u64..1000), y in proptest::array::uniform4(0u64..1000)) {
            prop_assert_eq!(Version::Numeric(x).cmp(&Version::Numeric(y)), x.cmp(&y));
        }

        #[test]
        fn semver_order_matches_semver_crate(a in version_strategy(), b in version_strategy()) {
            if let (Ok(sa), Ok(sb)) = (semver::Version::parse(&a), semver::Version::parse(&b)) {
                prop_assert_eq!(v(&a).cmp(&v(&b)), sa.cmp(&sb));
            }
        }

        #[test]
        fn never_panics_on_garbage(s in "\\PC{0,24}") {
            let _ = s.parse::<Version>();
        }
    }
}
