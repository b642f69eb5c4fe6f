//! Byte sizes of config values: `65536`, `"64MiB"`, `"75MB"`, `"512 KiB"`.

/// A text that is not a byte size; every message names the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// No number at the start.
    #[error("'{input}' is not a size such as 65536, \"64MiB\" or \"75MB\"")]
    NotASize {
        /// The text as given.
        input: String,
    },
    /// The number is followed by something other than a unit.
    #[error("unknown unit '{unit}' in '{input}' (use B, KB, MB, GB, KiB, MiB or GiB)")]
    UnknownUnit {
        /// What follows the number.
        unit: String,
        /// The text as given.
        input: String,
    },
    /// More bytes than a `u64` holds.
    #[error("'{input}' is too large")]
    TooLarge {
        /// The text as given.
        input: String,
    },
}

/// Parses a byte size: digits, optionally followed by a unit `B`, `kB`/`KB`, `MB`, `GB`
/// (powers of 1000) or `KiB`, `MiB`, `GiB` (powers of 1024); spaces around and between
/// are allowed.
///
/// # Errors
///
/// [`SizeError`] naming the text: no number, an unknown unit, or too large.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let t = text.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = t.split_at(digits);
    let input = || text.to_owned();
    let n: u64 = match number.parse() {
        Ok(n) => n,
        Err(_) if digits > 0 => return Err(SizeError::TooLarge { input: input() }),
        Err(_) => return Err(SizeError::NotASize { input: input() }),
    };
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => {
            return Err(SizeError::UnknownUnit {
                unit: other.to_owned(),
                input: input(),
            });
        }
    };
    n.checked_mul(factor)
        .ok_or(SizeError::TooLarge { input: input() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("8MiB"), Ok(8 << 20));
        assert_eq!(parse_size("8 MiB"), Ok(8 << 20));
        assert_eq!(parse_size(" 8MiB "), Ok(8 << 20));
        assert_eq!(parse_size("64kB"), Ok(64_000));
        assert_eq!(parse_size("64KB"), Ok(64_000));
        assert_eq!(parse_size("75MB"), Ok(75_000_000));
        assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4096B"), Ok(4096));
        assert_eq!(parse_size("75000000"), Ok(75_000_000));
        assert_eq!(parse_size("0"), Ok(0));
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("1.5MiB").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
        assert!(parse_size("5 parsecs").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("8mib").is_err());
    }

    #[test]
    fn errors_name_the_value() {
        assert_eq!(
            parse_size("lots").unwrap_err().to_string(),
            "'lots' is not a size such as 65536, \"64MiB\" or \"75MB\""
        );
        assert_eq!(
            parse_size("8 parsecs").unwrap_err().to_string(),
            "unknown unit 'parsecs' in '8 parsecs' (use B, KB, MB, GB, KiB, MiB or GiB)"
        );
        assert_eq!(
            parse_size("1.5MiB").unwrap_err().to_string(),
            "unknown unit '.5MiB' in '1.5MiB' (use B, KB, MB, GB, KiB, MiB or GiB)"
        );
        assert_eq!(
            parse_size("99999999999999999999GiB")
                .unwrap_err()
                .to_string(),
            "'99999999999999999999GiB' is too large"
        );
        assert_eq!(
            parse_size("18446744073709551615KiB")
                .unwrap_err()
                .to_string(),
            "'18446744073709551615KiB' is too large"
        );
    }
}
