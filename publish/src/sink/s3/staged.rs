//! What this sink computes from a staged file: the parts a multipart upload cuts it into
//! ([`part_ranges`]), the `Content-MD5` of a range ([`md5_base64`]) and the ETag S3 gives
//! the object ([`expected_etag`]).

use std::path::Path;

use super::errors::staged_file_error;
use super::settings::{MAX_PARTS, MIB};
use crate::sink::SinkError;
use crate::sink::md5::{Md5, md5_of_file_range};

/// The ETag S3 gives an object of `path`'s `len` bytes when it is not encrypted with
/// SSE-KMS or SSE-C: the hex MD5 of the bytes for one PutObject; for a multipart upload of
/// `parts`, the hex MD5 of the concatenated part MD5s, then `-` and the part count.
pub(super) fn expected_etag(
    path: &Path,
    len: u64,
    parts: Option<Vec<(i32, u64, u64)>>,
) -> std::io::Result<String> {
    let hex = |digest: [u8; 16]| {
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    match parts {
        None => Ok(hex(md5_of_file_range(path, 0, len)?)),
        Some(parts) => {
            let mut composite = Md5::new();
            for &(_, offset, length) in &parts {
                composite.update(&md5_of_file_range(path, offset, length)?);
            }
            Ok(format!("{}-{}", hex(composite.finish()), parts.len()))
        }
    }
}

/// `(part number, offset, length)` of every part; the part size grows if the file would
/// need more than 10,000 parts.
pub(super) fn part_ranges(len: u64, part_size: u64) -> Vec<(i32, u64, u64)> {
    let min_for_count = len.div_ceil(MAX_PARTS).div_ceil(MIB) * MIB;
    let size = part_size.max(min_for_count).max(1);
    let mut parts = Vec::new();
    let mut offset = 0;
    let mut number = 1i32;
    while offset < len {
        let length = size.min(len - offset);
        parts.push((number, offset, length));
        offset += length;
        number = number.saturating_add(1);
    }
    parts
}

/// Returns the base64 MD5 of a file range (computed off the async runtime).
pub(super) async fn md5_base64(
    target: &str,
    path: &Path,
    offset: u64,
    length: u64,
) -> Result<String, SinkError> {
    let owned = path.to_owned();
    let digest = tokio::task::spawn_blocking(move || md5_of_file_range(&owned, offset, length))
        .await
        .map_err(|e| staged_file_error(target, path, Box::new(e)))?
        .map_err(|e| staged_file_error(target, path, Box::new(e)))?;
    Ok(aws_smithy_types::base64::encode(digest))
}

pub(super) fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cover_the_file() {
        assert_eq!(
            part_ranges(12 * MIB, 5 * MIB),
            vec![
                (1, 0, 5 * MIB),
                (2, 5 * MIB, 5 * MIB),
                (3, 10 * MIB, 2 * MIB)
            ]
        );
        assert_eq!(part_ranges(5 * MIB, 5 * MIB), vec![(1, 0, 5 * MIB)]);
        // 100 GiB with 5 MiB parts would be 20,480 parts: the part size grows.
        let big = part_ranges(100 * 1024 * MIB, 5 * MIB);
        assert!(big.len() as u64 <= MAX_PARTS);
        assert_eq!(big.iter().map(|p| p.2).sum::<u64>(), 100 * 1024 * MIB);
    }
}
