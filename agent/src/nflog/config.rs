//! The `[firewall]` config section: [`FirewallConfig`] as written, validated into
//! [`FirewallSettings`] by [`validate_config`].

use serde::Deserialize;

/// The `[firewall]` section as written.
///
/// ```toml
/// [firewall]
/// nflog_group = 100
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct FirewallConfig {
    /// NFLOG group (0-65535) that the host firewall's drop rules log to. Absent: the agent
    /// does not listen, and every record has `action` ACCEPT.
    pub nflog_group: Option<i64>,
}

/// Validated `[firewall]` settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FirewallSettings {
    /// NFLOG group to bind; `None` = firewall drops are not learnt.
    pub nflog_group: Option<u16>,
}

/// Validates the `[firewall]` section, reporting each problem to `add` as `(key, problem)`.
pub fn validate_config(
    raw: Option<FirewallConfig>,
    add: &mut dyn FnMut(&str, String),
) -> FirewallSettings {
    let Some(group) = raw.and_then(|r| r.nflog_group) else {
        return FirewallSettings::default();
    };
    match u16::try_from(group) {
        Ok(group) => FirewallSettings {
            nflog_group: Some(group),
        },
        Err(_) => {
            add(
                "firewall.nflog_group",
                format!("{group} is not an NFLOG group (0-65535)"),
            );
            FirewallSettings::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_section() {
        let mut problems = Vec::new();
        let mut add = |k: &str, p: String| problems.push((k.to_owned(), p));
        assert_eq!(validate_config(None, &mut add), FirewallSettings::default());
        let raw = |g| Some(FirewallConfig { nflog_group: g });
        assert_eq!(
            validate_config(raw(None), &mut add),
            FirewallSettings::default()
        );
        assert_eq!(validate_config(raw(Some(0)), &mut add).nflog_group, Some(0));
        assert_eq!(
            validate_config(raw(Some(65535)), &mut add).nflog_group,
            Some(65535)
        );
        validate_config(raw(Some(65536)), &mut add);
        validate_config(raw(Some(-1)), &mut add);
        assert_eq!(problems.len(), 2);
        assert!(problems.iter().all(|(k, _)| k == "firewall.nflog_group"));
        assert!(problems[0].1.contains("65536"), "{problems:?}");
    }
}
