//! Inputs shared by the tests of the metadata submodules: a sample `ip-ranges.json` and the
//! smallest valid agent config.

/// A hand-written extract in the shape of AWS's file: nested and overlapping ranges,
/// every specific range repeated under AMAZON, as AWS publishes them.
pub(super) const SAMPLE: &str = r#"{
  "syncToken": "1704067200",
  "createDate": "2024-01-01-00-00-00",
  "prefixes": [
    {"ip_prefix": "52.94.0.0/15", "region": "GLOBAL", "service": "AMAZON", "network_border_group": "GLOBAL"},
    {"ip_prefix": "52.95.128.0/21", "region": "ap-southeast-2", "service": "AMAZON", "network_border_group": "ap-southeast-2"},
    {"ip_prefix": "52.95.128.0/21", "region": "ap-southeast-2", "service": "S3", "network_border_group": "ap-southeast-2"},
    {"ip_prefix": "52.95.130.0/24", "region": "ap-southeast-2", "service": "AMAZON", "network_border_group": "ap-southeast-2"},
    {"ip_prefix": "3.5.0.0/16", "region": "eu-west-3", "service": "AMAZON", "network_border_group": "eu-west-3"},
    {"ip_prefix": "3.5.0.0/16", "region": "eu-west-3", "service": "EC2", "network_border_group": "eu-west-3"},
    {"ip_prefix": "3.5.1.0/26", "region": "eu-west-3", "service": "EC2", "network_border_group": "eu-west-3"},
    {"ip_prefix": "3.5.1.0/26", "region": "eu-west-3", "service": "ROUTE53_HEALTHCHECKS", "network_border_group": "eu-west-3"},
    {"ip_prefix": "3.5.2.0/24", "region": "eu-west-3", "service": "EC2", "network_border_group": "eu-west-3"},
    {"ip_prefix": "13.32.0.0/15", "region": "GLOBAL", "service": "CLOUDFRONT", "network_border_group": "GLOBAL"},
    {"ip_prefix": "255.255.255.0/24", "region": "GLOBAL", "service": "AMAZON", "network_border_group": "GLOBAL"}
  ],
  "ipv6_prefixes": [
    {"ipv6_prefix": "2600:1f00::/24", "region": "GLOBAL", "service": "AMAZON", "network_border_group": "GLOBAL"},
    {"ipv6_prefix": "2600:1fa0:4000::/40", "region": "eu-west-3", "service": "S3", "network_border_group": "eu-west-3"},
    {"ipv6_prefix": "2600:1fa0:4000::/40", "region": "eu-west-3", "service": "AMAZON", "network_border_group": "eu-west-3"},
    {"ipv6_prefix": "2600:1f18:4000::/36", "region": "eu-west-3", "service": "EC2", "network_border_group": "eu-west-3"},
    {"ipv6_prefix": "ffff:ffff:ffff:ffff::/64", "region": "GLOBAL", "service": "DYNAMODB", "network_border_group": "GLOBAL"}
  ]
}"#;

pub(super) const BASE: &str = "[flow_log]\nid = \"fl-0a1b2c3d4e5f60718\"\naccount_id = \"123456789012\"\nregion = \"eu-west-3\"\n";
