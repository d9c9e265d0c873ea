//! The version parser (`molt_schema::version`): any text either is refused or parses to
//! a version that prints back exactly as it was written, reads back equal (as text and as
//! JSON), and takes its place in one total order that agrees with equality.
//!
//! The input is up to three lines; each line that is a version is checked, and the versions
//! are then compared with each other.

#![no_main]

use std::cmp::Ordering;

use libfuzzer_sys::fuzz_target;
use molt_schema::Version;
use molt_schema::resolve::Target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let versions: Vec<Version> = text.splitn(3, '\n').filter_map(check_one).collect();
    for a in &versions {
        assert_eq!(a.cmp(a), Ordering::Equal);
        for b in &versions {
            assert_eq!(
                a.cmp(b),
                b.cmp(a).reverse(),
                "{a} vs {b}: not antisymmetric"
            );
            assert_eq!(
                a.cmp(b) == Ordering::Equal,
                a == b,
                "{a} vs {b}: the order disagrees with equality"
            );
            assert_eq!(a.partial_cmp(b), Some(a.cmp(b)));
            for c in &versions {
                if a <= b && b <= c {
                    assert!(a <= c, "{a} <= {b} <= {c} but not {a} <= {c}");
                }
            }
        }
    }
});

/// Parses one string; when it is a version, checks the round trips.
fn check_one(s: &str) -> Option<Version> {
    let parsed = s.parse::<Version>();
    // `--target-version` reads the same text.
    match (s.parse::<Target>(), &parsed) {
        (Ok(Target::Exact(t)), Ok(v)) => assert_eq!(&t, v),
        (Ok(Target::Latest | Target::Stable), Err(_)) | (Err(_), Err(_)) => {}
        (t, v) => panic!("{s:?}: Target {t:?} disagrees with Version {v:?}"),
    }
    let v = parsed.ok()?;
    let shown = v.to_string();
    assert_eq!(shown, s, "a version must print back exactly as written");
    let reread: Version = shown
        .parse()
        .unwrap_or_else(|e| panic!("{shown:?} was printed but does not parse: {e}"));
    assert_eq!(reread, v);
    let json = serde_json::to_string(&v).expect("a version serialises");
    let from_json: Version = serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("{json} was serialised but does not deserialise: {e}"));
    assert_eq!(from_json, v);
    // The parts agree with the text.
    let (a, b, c) = v.triple();
    assert!(s.starts_with(&format!("{a}.{b}.{c}")));
    let before_build = s.split('+').next().unwrap_or_default();
    assert_eq!(v.is_prerelease(), before_build.contains('-'));
    Some(v)
}
