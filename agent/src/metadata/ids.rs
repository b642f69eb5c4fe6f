//! Checks of the shape of EC2 identifiers: VPC, subnet, instance and network interface
//! ids, availability zone ids, and sublocations.

/// Checks `{prefix}` followed by 8 or 17 lowercase hex digits, the shape of EC2 ids.
fn hex_id(value: &str, prefix: &str, what: &str, example: &str) -> Result<(), String> {
    let ok = value.strip_prefix(prefix).is_some_and(|hex| {
        (hex.len() == 8 || hex.len() == 17)
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{value}' is not {what} such as {example} ('{prefix}' then 8 or 17 lowercase hex digits)"
        ))
    }
}

/// Checks a VPC id (`vpc-0a1b2c3d4e5f60718`).
pub fn validate_vpc_id(value: &str) -> Result<(), String> {
    hex_id(value, "vpc-", "a VPC id", "vpc-0a1b2c3d4e5f60718")
}

/// Checks a subnet id (`subnet-0a1b2c3d4e5f60718`).
pub fn validate_subnet_id(value: &str) -> Result<(), String> {
    hex_id(value, "subnet-", "a subnet id", "subnet-0a1b2c3d4e5f60718")
}

/// Checks an instance id (`i-0a1b2c3d4e5f60718`).
pub fn validate_instance_id(value: &str) -> Result<(), String> {
    hex_id(value, "i-", "an instance id", "i-0a1b2c3d4e5f60718")
}

/// Checks a network interface id (`eni-0a1b2c3d4e5f60718`).
pub fn validate_interface_id(value: &str) -> Result<(), String> {
    hex_id(value, "eni-", "an interface id", "eni-0a1b2c3d4e5f60718")
}

/// Lowercase letters and digits in `-`-separated groups, none empty.
fn dash_groups(value: &str) -> Option<Vec<&str>> {
    let groups: Vec<&str> = value.split('-').collect();
    let ok = value.len() <= 64
        && groups.iter().all(|g| {
            !g.is_empty()
                && g.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        });
    ok.then_some(groups)
}

/// Checks an availability zone *id* (`euw3-az1`, `use1-az4`, `usw2-lax1-az1`), not a zone
/// name such as `eu-west-3a`.
pub fn validate_az_id(value: &str) -> Result<(), String> {
    let ok = dash_groups(value).is_some_and(|groups| {
        let first = groups.first().copied().unwrap_or("");
        let last = groups.last().copied().unwrap_or("");
        let letters = first.bytes().take_while(u8::is_ascii_lowercase).count();
        groups.len() >= 2
            && letters >= 2
            && first.len() > letters
            && first.bytes().skip(letters).all(|b| b.is_ascii_digit())
            && last.len() > 2
            && last.starts_with("az")
            && last.bytes().skip(2).all(|b| b.is_ascii_digit())
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{value}' is not an availability zone id such as euw3-az1 (the zone id, not its name such as eu-west-3a)"
        ))
    }
}

/// The `sublocation-type` values of VPC Flow Logs.
pub const SUBLOCATION_TYPES: [&str; 3] = ["wavelength", "outpost", "localzone"];

pub(super) fn validate_sublocation_id(value: &str) -> Result<(), String> {
    if dash_groups(value).is_some() {
        Ok(())
    } else {
        Err(format!(
            "'{value}' is not a sublocation id such as op-0a1b2c3d4e5f60718 or usw2-lax1-az1 (lowercase letters, digits, '-')"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert!(validate_vpc_id("vpc-abcdefab012345678").is_ok());
        assert!(validate_vpc_id("vpc-0a1b2c3d").is_ok());
        assert!(validate_vpc_id("vpc-ABCDEFAB012345678").is_err());
        assert!(validate_vpc_id("subnet-abcdefab012345678").is_err());
        assert!(validate_subnet_id("subnet-aaaaaaaa012345678").is_ok());
        assert!(validate_subnet_id("subnet-aaaaaaaa01234567").is_err());
        assert!(validate_instance_id("i-0c50d5961bcb2d47b").is_ok());
        assert!(validate_instance_id("i-0c50d5961bcb2d47").is_err());
        assert!(validate_interface_id("eni-1235b8ca123456789").is_ok());
        for good in ["euw3-az1", "use1-az4", "apse2-az3", "usw2-lax1-az1"] {
            assert!(validate_az_id(good).is_ok(), "{good}");
        }
        for bad in [
            "eu-west-3a",
            "euw3",
            "az1",
            "euw3-az",
            "EUW3-az1",
            "euw3-az1 ",
            "w3-az1",
        ] {
            assert!(validate_az_id(bad).is_err(), "{bad}");
        }
        assert!(
            validate_az_id("eu-west-3a")
                .unwrap_err()
                .contains("not its name")
        );
    }
}
