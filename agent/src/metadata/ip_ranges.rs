//! AWS `ip-ranges.json`: [`AwsIpRanges`], the AWS service of an address, for
//! `pkt-src-aws-service` and `pkt-dst-aws-service`.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use flowlog_formats::Text;
use ipnetwork::IpNetwork;
use serde::Deserialize;

use super::prefix::{IpPrefix, IpPrefixMap, NO_VALUE};

/// The service name AWS gives every one of its ranges.
pub const GENERIC_SERVICE: &str = "AMAZON";

/// The AWS address ranges of an `ip-ranges.json` file, for `pkt-src-aws-service` and
/// `pkt-dst-aws-service`.
///
/// Every AWS range is listed under `AMAZON` and most also under a specific service, so
/// an address usually matches several entries; the one written is chosen so:
/// 1. a specific service beats `AMAZON`, whatever the prefix lengths (an `AMAZON` prefix
///    inside an `S3` one is still S3; AWS's own example writes `S3` for such addresses);
/// 2. otherwise the longest matching prefix wins;
/// 3. for the very same prefix under several specific services, the service with the
///    fewest prefixes in the file (the narrowest subset, e.g. `ROUTE53_HEALTHCHECKS`
///    before `EC2`) wins, then the alphabetically first.
///
/// Addresses in no range (private addresses, other clouds) have no service (`-`).
pub struct AwsIpRanges {
    services: Vec<Text>,
    map: IpPrefixMap,
    prefixes: usize,
}

impl fmt::Debug for AwsIpRanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsIpRanges")
            .field("prefixes", &self.prefixes)
            .field("services", &self.services.len())
            .field("map", &self.map)
            .finish()
    }
}

/// An `ip-ranges.json` file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum IpRangesError {
    /// The file cannot be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not JSON of the expected shape.
    #[error("{} is not an AWS ip-ranges.json document", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// Cause, with line and column.
        #[source]
        source: serde_json::Error,
    },
    /// An entry is invalid.
    #[error("{}: {entry}: {problem}", path.display())]
    Entry {
        /// The file.
        path: PathBuf,
        /// JSON path of the value (`prefixes[12].ip_prefix`).
        entry: String,
        /// What is wrong.
        problem: String,
    },
    /// Neither list is present.
    #[error("{} has neither `prefixes` nor `ipv6_prefixes`", path.display())]
    NoPrefixes {
        /// The file.
        path: PathBuf,
    },
}

#[derive(Deserialize)]
struct RawIpRanges {
    prefixes: Option<Vec<RawV4Prefix>>,
    ipv6_prefixes: Option<Vec<RawV6Prefix>>,
}

#[derive(Deserialize)]
struct RawV4Prefix {
    ip_prefix: String,
    service: String,
}

#[derive(Deserialize)]
struct RawV6Prefix {
    ipv6_prefix: String,
    service: String,
}

impl AwsIpRanges {
    /// Reads an `ip-ranges.json` file (as published at
    /// `https://ip-ranges.amazonaws.com/ip-ranges.json`).
    pub fn load(path: &Path) -> Result<AwsIpRanges, IpRangesError> {
        let bytes = std::fs::read(path).map_err(|source| IpRangesError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&bytes, path)
    }

    /// Parses `ip-ranges.json` content; `path` names it in errors.
    pub fn from_json(json: &[u8], path: &Path) -> Result<AwsIpRanges, IpRangesError> {
        let raw: RawIpRanges =
            serde_json::from_slice(json).map_err(|source| IpRangesError::Json {
                path: path.to_path_buf(),
                source,
            })?;
        if raw.prefixes.is_none() && raw.ipv6_prefixes.is_none() {
            return Err(IpRangesError::NoPrefixes {
                path: path.to_path_buf(),
            });
        }
        let entries = raw
            .prefixes
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                (
                    format!("prefixes[{i}]"),
                    "ip_prefix",
                    p.ip_prefix,
                    false,
                    p.service,
                )
            })
            .chain(
                raw.ipv6_prefixes
                    .unwrap_or_default()
                    .into_iter()
                    .enumerate()
                    .map(|(i, p)| {
                        (
                            format!("ipv6_prefixes[{i}]"),
                            "ipv6_prefix",
                            p.ipv6_prefix,
                            true,
                            p.service,
                        )
                    }),
            );
        let entry_error = |entry: String, problem: String| IpRangesError::Entry {
            path: path.to_path_buf(),
            entry,
            problem,
        };
        let mut services: Vec<Text> = Vec::new();
        let mut counts: Vec<usize> = Vec::new();
        let mut parsed: Vec<(IpNetwork, u32)> = Vec::new();
        for (at, key, prefix, v6, service) in entries {
            let network: IpNetwork = prefix
                .contains('/')
                .then(|| prefix.parse().ok())
                .flatten()
                .filter(|n: &IpNetwork| n.is_ipv6() == v6)
                .ok_or_else(|| {
                    entry_error(
                        format!("{at}.{key}"),
                        format!(
                            "'{prefix}' is not an {} CIDR",
                            if v6 { "IPv6" } else { "IPv4" }
                        ),
                    )
                })?;
            if service.is_empty() || !service.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(entry_error(
                    format!("{at}.service"),
                    format!("'{service}' is not a service name such as S3"),
                ));
            }
            let index = match services.iter().position(|s| **s == *service) {
                Some(i) => i,
                None => {
                    services.push(service.as_str().into());
                    counts.push(0);
                    services.len() - 1
                }
            };
            if let Some(c) = counts.get_mut(index) {
                *c += 1;
            }
            parsed.push((network, u32::try_from(index).unwrap_or(NO_VALUE)));
        }
        // Rank: specific services before AMAZON, then the narrowest subset, then by name.
        let mut order: Vec<usize> = (0..services.len()).collect();
        order.sort_by(|&a, &b| {
            let key = |i: usize| {
                (
                    services.get(i).is_some_and(|s| &**s == GENERIC_SERVICE),
                    counts.get(i).copied().unwrap_or(0),
                    services.get(i).cloned(),
                )
            };
            key(a).cmp(&key(b))
        });
        let mut rank = vec![0u32; services.len()];
        for (position, &service) in order.iter().enumerate() {
            if let Some(r) = rank.get_mut(service) {
                *r = u32::try_from(position).unwrap_or(u32::MAX);
            }
        }
        let prefixes = parsed.len();
        let map = IpPrefixMap::build(parsed.into_iter().map(|(network, value)| {
            let index = usize::try_from(value).unwrap_or(usize::MAX);
            IpPrefix {
                network,
                value,
                rank: rank.get(index).copied().unwrap_or(u32::MAX),
                generic: services.get(index).is_some_and(|s| &**s == GENERIC_SERVICE),
            }
        }));
        Ok(AwsIpRanges {
            services,
            map,
            prefixes,
        })
    }

    /// Returns the AWS service `address` belongs to, per the rules above.
    pub fn service(&self, address: IpAddr) -> Option<&Text> {
        let index = usize::try_from(self.map.lookup(address)?).ok()?;
        self.services.get(index)
    }

    /// Prefix entries read from the file (both lists).
    pub fn prefix_count(&self) -> usize {
        self.prefixes
    }

    /// Distinct service names in the file.
    pub fn services(&self) -> &[Text] {
        &self.services
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::test_support::SAMPLE;

    fn sample() -> AwsIpRanges {
        AwsIpRanges::from_json(SAMPLE.as_bytes(), Path::new("ip-ranges.json")).unwrap()
    }

    fn service(r: &AwsIpRanges, a: &str) -> Option<String> {
        r.service(a.parse().unwrap()).map(|s| s.to_string())
    }

    #[test]
    fn ip_ranges_pick_the_specific_service_then_the_longest_prefix() {
        let r = sample();
        assert_eq!(r.prefix_count(), 16);
        let cases = [
            ("52.95.128.179", Some("S3")),   // S3 and AMAZON share the /21
            ("52.95.130.9", Some("S3")),     // an AMAZON /24 inside the S3 /21
            ("52.95.136.0", Some("AMAZON")), // just past the /21: the AMAZON /15
            ("52.94.0.0", Some("AMAZON")),
            ("52.95.255.255", Some("AMAZON")),
            ("52.96.0.0", None),
            ("52.93.255.255", None),
            ("3.5.1.10", Some("ROUTE53_HEALTHCHECKS")), // the narrowest subset at a /26
            ("3.5.1.64", Some("EC2")),                  // back in the EC2 /16
            ("3.5.2.1", Some("EC2")),
            ("3.5.255.255", Some("EC2")),
            ("3.6.0.0", None),
            ("13.33.255.255", Some("CLOUDFRONT")),
            ("10.0.0.1", None),
            ("0.0.0.0", None),
            ("255.255.255.255", Some("AMAZON")),
            ("2600:1fa0:4000::1", Some("S3")),
            ("2600:1fa0:40ff:ffff::1", Some("S3")),
            ("2600:1fa0:4100::1", Some("AMAZON")),
            ("2600:1f18:4fff::1", Some("EC2")),
            ("2600:1f18:5000::1", Some("AMAZON")),
            ("2600:2000::1", None),
            ("fd00::1", None),
            ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some("DYNAMODB")),
            ("::", None),
        ];
        for (address, expected) in cases {
            assert_eq!(service(&r, address).as_deref(), expected, "{address}");
        }
    }

    #[test]
    fn ip_ranges_errors_name_the_file_and_the_entry() {
        let path = Path::new("/etc/flowlog/ip-ranges.json");
        let bad_prefix = r#"{"prefixes": [{"ip_prefix": "3.5.0.0/16", "service": "EC2"}, {"ip_prefix": "3.5.0/16", "service": "EC2"}]}"#;
        let e = AwsIpRanges::from_json(bad_prefix.as_bytes(), path).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/flowlog/ip-ranges.json: prefixes[1].ip_prefix: '3.5.0/16' is not an IPv4 CIDR"
        );
        let v4_in_v6 = r#"{"ipv6_prefixes": [{"ipv6_prefix": "3.5.0.0/16", "service": "EC2"}]}"#;
        let e = AwsIpRanges::from_json(v4_in_v6.as_bytes(), path).unwrap_err();
        assert!(
            e.to_string().contains("ipv6_prefixes[0].ipv6_prefix"),
            "{e}"
        );
        let bad_service = r#"{"prefixes": [{"ip_prefix": "3.5.0.0/16", "service": "E C2"}]}"#;
        let e = AwsIpRanges::from_json(bad_service.as_bytes(), path).unwrap_err();
        assert!(e.to_string().contains("prefixes[0].service"), "{e}");
        let missing_service = "{\"prefixes\": [\n{\"ip_prefix\": \"3.5.0.0/16\"}]}";
        let e = AwsIpRanges::from_json(missing_service.as_bytes(), path).unwrap_err();
        let text = flowlog_runtime::error_chain(&e);
        assert!(
            text.starts_with("/etc/flowlog/ip-ranges.json is not an AWS ip-ranges.json document")
                && text.contains("service")
                && text.contains("line 2"),
            "{text}"
        );
        let e = AwsIpRanges::from_json(b"{\"syncToken\": \"1\"}", path).unwrap_err();
        assert!(e.to_string().contains("neither"), "{e}");
        let e = AwsIpRanges::load(Path::new("/nonexistent/ip-ranges.json")).unwrap_err();
        assert!(
            flowlog_runtime::error_chain(&e)
                .starts_with("cannot read /nonexistent/ip-ranges.json: "),
            "{e}"
        );
    }
}
