//! AWS regions, their partitions' DNS domains, and URL templates.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A region name such as `us-east-1` or `cn-north-1`, checked at construction:
/// lower-case ASCII letters, digits and single hyphens, 3 to 32 characters, ending in
/// a digit. The check keeps a region safe to put in a host name, a bucket name and a
/// file-system path (`state/tuf/<region>/`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Region(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid region {name:?}: {reason} (regions look like us-east-1)")]
pub struct BadRegion {
    pub name: String,
    pub reason: &'static str,
}

/// An AWS partition, which decides the DNS domain of a region's endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Partition {
    /// `aws`: `amazonaws.com`.
    Aws,
    /// `aws-cn` (`cn-*`): `amazonaws.com.cn`.
    AwsCn,
    /// `aws-iso` (`us-iso-*`): `c2s.ic.gov`.
    AwsIso,
    /// `aws-iso-b` (`us-isob-*`): `sc2s.sgov.gov`.
    AwsIsoB,
    /// `aws-iso-e` (`eu-isoe-*`): `cloud.adc-e.uk`.
    AwsIsoE,
    /// `aws-iso-f` (`us-isof-*`): `csp.hci.ic.gov`.
    AwsIsoF,
}

impl Partition {
    pub fn domain(self) -> &'static str {
        match self {
            Partition::Aws => "amazonaws.com",
            Partition::AwsCn => "amazonaws.com.cn",
            Partition::AwsIso => "c2s.ic.gov",
            Partition::AwsIsoB => "sc2s.sgov.gov",
            Partition::AwsIsoE => "cloud.adc-e.uk",
            Partition::AwsIsoF => "csp.hci.ic.gov",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Partition::Aws => "aws",
            Partition::AwsCn => "aws-cn",
            Partition::AwsIso => "aws-iso",
            Partition::AwsIsoB => "aws-iso-b",
            Partition::AwsIsoE => "aws-iso-e",
            Partition::AwsIsoF => "aws-iso-f",
        }
    }
}

impl Region {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The partition, as SSM and the AWS SDKs tell it from the name's prefix.
    pub fn partition(&self) -> Partition {
        let r = self.0.as_str();
        if r.starts_with("cn-") {
            Partition::AwsCn
        } else if r.starts_with("us-isob-") {
            Partition::AwsIsoB
        } else if r.starts_with("us-isof-") {
            Partition::AwsIsoF
        } else if r.starts_with("us-iso-") {
            Partition::AwsIso
        } else if r.starts_with("eu-isoe-") {
            Partition::AwsIsoE
        } else {
            Partition::Aws
        }
    }

    /// The DNS domain for this region: the override when one is set, else the partition's.
    pub fn domain<'a>(&self, override_domain: Option<&'a str>) -> &'a str
    where
        'static: 'a,
    {
        override_domain.unwrap_or(self.partition().domain())
    }
}

impl FromStr for Region {
    type Err = BadRegion;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason| BadRegion {
            name: s.to_owned(),
            reason,
        };
        if !(3..=32).contains(&s.len()) {
            return Err(bad("must be 3 to 32 characters"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(bad("only lower-case letters, digits and '-' are allowed"));
        }
        if s.starts_with('-') || s.contains("--") {
            return Err(bad("misplaced '-'"));
        }
        if !s.ends_with(|c: char| c.is_ascii_digit()) {
            return Err(bad("must end with a digit"));
        }
        if !s.contains('-') {
            return Err(bad("must contain '-'"));
        }
        Ok(Region(s.to_owned()))
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Region {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Region {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A URL or name template with `{placeholder}`s, checked when parsed.
///
/// molt's placeholders are `{bucket}`, `{region}` and `{domain}`; SSM's `UriFormat`
/// uses `{Region}`, `{PackageName}`, `{PackageVersion}` and `{FileName}`. `{{` and `}}`
/// stand for literal braces. An unknown placeholder or an unbalanced brace is an error
/// when the template is parsed, not when it is used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    text: String,
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    Var(Var),
}

/// The placeholders a template may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Var {
    Bucket,
    Region,
    Domain,
    /// SSM's `{Region}`.
    SsmRegion,
    PackageName,
    PackageVersion,
    FileName,
}

impl Var {
    fn from_name(name: &str) -> Option<Var> {
        Some(match name {
            "bucket" => Var::Bucket,
            "region" => Var::Region,
            "domain" => Var::Domain,
            "Region" => Var::SsmRegion,
            "PackageName" => Var::PackageName,
            "PackageVersion" => Var::PackageVersion,
            "FileName" => Var::FileName,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Var::Bucket => "bucket",
            Var::Region => "region",
            Var::Domain => "domain",
            Var::SsmRegion => "Region",
            Var::PackageName => "PackageName",
            Var::PackageVersion => "PackageVersion",
            Var::FileName => "FileName",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error(
        "template {template:?} uses unknown placeholder {{{name}}}; known: {{bucket}}, {{region}}, {{domain}}, {{Region}}, {{PackageName}}, {{PackageVersion}}, {{FileName}}"
    )]
    UnknownPlaceholder { template: String, name: String },
    #[error(
        "template {template:?} has an unbalanced brace at byte {at}; write {{{{ or }}}} for a literal brace"
    )]
    Unbalanced { template: String, at: usize },
    #[error(
        "template {template:?} needs a value for {{{name}}}, which this context does not provide"
    )]
    MissingValue {
        template: String,
        name: &'static str,
    },
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|p| p.1) == Some('{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek().map(|p| p.1) == Some('}') => {
                    chars.next();
                    lit.push('}');
                }
                '{' => {
                    let rest = &text[i + 1..];
                    let end = rest.find('}').ok_or(TemplateError::Unbalanced {
                        template: text.to_owned(),
                        at: i,
                    })?;
                    let name = &rest[..end];
                    let var =
                        Var::from_name(name).ok_or_else(|| TemplateError::UnknownPlaceholder {
                            template: text.to_owned(),
                            name: name.to_owned(),
                        })?;
                    if !lit.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut lit)));
                    }
                    parts.push(Part::Var(var));
                    // skip the name and the closing brace
                    for _ in 0..=name.chars().count() {
                        chars.next();
                    }
                }
                '}' => {
                    return Err(TemplateError::Unbalanced {
                        template: text.to_owned(),
                        at: i,
                    });
                }
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Literal(lit));
        }
        Ok(Template {
            text: text.to_owned(),
            parts,
        })
    }

    /// The placeholders this template uses, each once, in order.
    pub fn vars(&self) -> Vec<Var> {
        let mut out: Vec<Var> = Vec::new();
        for p in &self.parts {
            if let Part::Var(v) = p
                && !out.contains(v)
            {
                out.push(*v);
            }
        }
        out
    }

    /// Fills in the placeholders. Every placeholder the template uses must have a value.
    pub fn render(&self, values: &BTreeMap<Var, String>) -> Result<String, TemplateError> {
        let mut out = String::with_capacity(self.text.len() + 32);
        for p in &self.parts {
            match p {
                Part::Literal(s) => out.push_str(s),
                Part::Var(v) => out.push_str(values.get(v).ok_or(TemplateError::MissingValue {
                    template: self.text.clone(),
                    name: v.name(),
                })?),
            }
        }
        Ok(out)
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// Where a region's repository lives: the operator's source template and bucket
/// template, filled in for one region. There is no default bucket: a global default
/// name is a name anyone could register.
#[derive(Clone, Debug)]
pub struct SourceTemplate {
    pub source: Template,
    pub bucket: Option<Template>,
    pub domain_override: Option<String>,
}

impl SourceTemplate {
    /// The repository base URL for `region`, e.g.
    /// `https://{bucket}.s3.{region}.{domain}/` with `bucket = "acme-molt-{region}"`.
    pub fn url_for(&self, region: &Region) -> Result<String, TemplateError> {
        let mut values = BTreeMap::new();
        values.insert(Var::Region, region.to_string());
        values.insert(Var::SsmRegion, region.to_string());
        values.insert(
            Var::Domain,
            region.domain(self.domain_override.as_deref()).to_owned(),
        );
        if let Some(bucket) = &self.bucket {
            // The bucket template may itself use {region} and {domain}.
            values.insert(Var::Bucket, bucket.render(&values)?);
        }
        self.source.render(&values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Region {
        s.parse().unwrap()
    }

    #[test]
    fn partitions_and_domains() {
        let table = [
            ("us-east-1", "aws", "amazonaws.com"),
            ("eu-west-2", "aws", "amazonaws.com"),
            ("us-gov-west-1", "aws", "amazonaws.com"),
            ("cn-north-1", "aws-cn", "amazonaws.com.cn"),
            ("cn-northwest-1", "aws-cn", "amazonaws.com.cn"),
            ("us-iso-east-1", "aws-iso", "c2s.ic.gov"),
            ("us-isob-east-1", "aws-iso-b", "sc2s.sgov.gov"),
            ("eu-isoe-west-1", "aws-iso-e", "cloud.adc-e.uk"),
            ("us-isof-south-1", "aws-iso-f", "csp.hci.ic.gov"),
        ];
        for (region, partition, domain) in table {
            assert_eq!(r(region).partition().name(), partition, "{region}");
            assert_eq!(r(region).domain(None), domain, "{region}");
            assert_eq!(r(region).domain(Some("example.test")), "example.test");
        }
    }

    #[test]
    fn bad_regions() {
        for bad in [
            "",
            "us",
            "US-EAST-1",
            "us_east_1",
            "us-east-",
            "-us-east-1",
            "us--east-1",
            "../etc",
            "useast1",
            "us-east-1/x",
        ] {
            assert!(bad.parse::<Region>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn source_templates() {
        let t = SourceTemplate {
            source: Template::parse("https://{bucket}.s3.{region}.{domain}/").unwrap(),
            bucket: Some(Template::parse("acme-molt-{region}").unwrap()),
            domain_override: None,
        };
        assert_eq!(
            t.url_for(&r("cn-north-1")).unwrap(),
            "https://acme-molt-cn-north-1.s3.cn-north-1.amazonaws.com.cn/"
        );
        assert_eq!(
            t.url_for(&r("us-east-1")).unwrap(),
            "https://acme-molt-us-east-1.s3.us-east-1.amazonaws.com/"
        );
        let no_bucket = SourceTemplate { bucket: None, ..t };
        assert!(matches!(
            no_bucket.url_for(&r("us-east-1")),
            Err(TemplateError::MissingValue { name: "bucket", .. })
        ));
    }

    #[test]
    fn ssm_uri_format() {
        let t = Template::parse(
            "https://s3.{Region}.amazonaws.com/amazon-ssm-{Region}/{PackageName}/{PackageVersion}/{FileName}",
        )
        .unwrap();
        assert_eq!(
            t.vars(),
            vec![
                Var::SsmRegion,
                Var::PackageName,
                Var::PackageVersion,
                Var::FileName
            ]
        );
        let values = BTreeMap::from([
            (Var::SsmRegion, "us-east-1".to_owned()),
            (Var::PackageName, "molt-agent".to_owned()),
            (Var::PackageVersion, "1.4.0".to_owned()),
            (Var::FileName, "molt-agent-linux-amd64.tar.gz".to_owned()),
        ]);
        assert_eq!(
            t.render(&values).unwrap(),
            "https://s3.us-east-1.amazonaws.com/amazon-ssm-us-east-1/molt-agent/1.4.0/molt-agent-linux-amd64.tar.gz"
        );
    }

    #[test]
    fn template_errors() {
        assert!(matches!(
            Template::parse("https://{bukket}/"),
            Err(TemplateError::UnknownPlaceholder { name, .. }) if name == "bukket"
        ));
        assert!(matches!(
            Template::parse("https://{region/"),
            Err(TemplateError::Unbalanced { .. })
        ));
        assert!(matches!(
            Template::parse("https://region}/"),
            Err(TemplateError::Unbalanced { .. })
        ));
        let lit = Template::parse("a{{b}}c-{region}").unwrap();
        let values = BTreeMap::from([(Var::Region, "us-east-1".to_owned())]);
        assert_eq!(lit.render(&values).unwrap(), "a{b}c-us-east-1");
    }
}
