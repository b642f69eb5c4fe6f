//! Classification of failures into [`SinkErrorKind`]s, transient or permanent, with
//! their messages: SDK errors by the SDK's error kind, the HTTP status and the S3 error
//! code ([`classify_sdk_error`]), and errors reading the staged file
//! ([`staged_file_error`]).

use std::path::Path;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

use crate::sink::{BoxError, SinkError, SinkErrorKind};

pub(super) fn staged_file_error(target: &str, path: &Path, source: BoxError) -> SinkError {
    let missing = source
        .downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound);
    let kind = if missing {
        SinkErrorKind::LocalPermanent
    } else {
        SinkErrorKind::LocalIo
    };
    let reason = format!("cannot read the staged file {}: {source}", path.display());
    SinkError::failed("put", target, kind, reason, Some(source))
}

pub(super) fn http_status<E>(err: &SdkError<E, HttpResponse>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

pub(super) fn bucket_region_header<E>(err: &SdkError<E, HttpResponse>) -> Option<String> {
    err.raw_response()
        .and_then(|r| r.headers().get("x-amz-bucket-region"))
        .filter(|r| !r.is_empty())
        .map(str::to_owned)
}

/// Returns the innermost error's message: for connection problems this is the useful
/// part ("Connection refused (os error 111)"), the outer layers are SDK plumbing.
pub(super) fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut current = err;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

/// Maps an SDK error to a [`SinkError`] (plus the bucket's region if the response named
/// it). `conditional`: the request carried `If-None-Match`.
pub(super) fn classify_sdk_error<E>(
    op: &'static str,
    target: String,
    conditional: bool,
    configured_region: &str,
    endpoint: &str,
    err: SdkError<E, HttpResponse>,
) -> (SinkError, Option<String>)
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = http_status(&err);
    let code = err.code().map(str::to_owned);
    let message = err.message().map(str::to_owned);
    let region_hint = bucket_region_header(&err)
        .or_else(|| message.as_deref().and_then(expected_region_in_message));
    let (kind, summary) = match &err {
        SdkError::ServiceError(_) => classify_service_error(
            status,
            code.as_deref(),
            conditional,
            configured_region,
            region_hint.as_deref(),
        ),
        SdkError::TimeoutError(_) => (
            SinkErrorKind::Timeout,
            format!("request to {endpoint} timed out"),
        ),
        SdkError::DispatchFailure(failure) => {
            if failure.is_timeout() {
                (
                    SinkErrorKind::Timeout,
                    format!("connecting to {endpoint} timed out"),
                )
            } else if failure.is_io() {
                (
                    SinkErrorKind::Unreachable,
                    format!("cannot reach {endpoint}"),
                )
            } else if failure.is_user() {
                (
                    SinkErrorKind::InvalidConfig,
                    "the request could not be sent (client configuration)".to_owned(),
                )
            } else {
                (
                    SinkErrorKind::Unreachable,
                    format!(
                        "the request to {endpoint} could not be sent (credentials or endpoint)"
                    ),
                )
            }
        }
        SdkError::ResponseError(_) => (
            SinkErrorKind::Transient,
            "invalid or truncated response".to_owned(),
        ),
        SdkError::ConstructionFailure(_) => (
            SinkErrorKind::InvalidRequest,
            "the request could not be built".to_owned(),
        ),
        _ => (SinkErrorKind::Other, "unexpected sdk error".to_owned()),
    };
    let reason = match (&err, code.as_deref(), status) {
        (SdkError::ServiceError(_), Some(code), _) => match message.as_deref() {
            Some(message) if !message.is_empty() => format!("{summary} ({code}): {message}"),
            _ => format!("{summary} ({code})"),
        },
        (SdkError::ServiceError(_), None, Some(status)) => format!("{summary} (http {status})"),
        (SdkError::ServiceError(_), None, None) => summary,
        _ => format!("{summary}: {}", root_cause(&err)),
    };
    let hint = if kind == SinkErrorKind::WrongRegion {
        region_hint
    } else {
        None
    };
    (
        SinkError::failed(op, target, kind, reason, Some(Box::new(err))),
        hint,
    )
}

/// Classifies a response the store sent: by S3 error code first, then by HTTP status.
fn classify_service_error(
    status: Option<u16>,
    code: Option<&str>,
    conditional: bool,
    configured_region: &str,
    region_hint: Option<&str>,
) -> (SinkErrorKind, String) {
    use SinkErrorKind as K;
    let wrong_region = || {
        let reason = match region_hint {
            Some(region) => format!(
                "wrong region: the bucket is in {region}, not {configured_region}; set region = \"{region}\""
            ),
            None => format!("wrong region: the bucket is not in {configured_region}"),
        };
        (K::WrongRegion, reason)
    };
    let not_implemented = || {
        if conditional {
            (
                K::Unsupported,
                "the store does not support conditional writes (If-None-Match); set if_none_match = false".to_owned(),
            )
        } else {
            (
                K::Unsupported,
                "the store does not implement this request".to_owned(),
            )
        }
    };
    let by_code = match code {
        Some("AccessDenied" | "AllAccessDisabled" | "AccountProblem" | "AccessControlListNotSupported") => {
            Some((K::AccessDenied, "access denied".to_owned()))
        }
        Some("InvalidAccessKeyId") => {
            Some((K::Credentials, "invalid credentials: the access key id is not known to the store".to_owned()))
        }
        Some("SignatureDoesNotMatch") => Some((
            K::Credentials,
            "invalid credentials: the request signature does not match (check the secret access key)".to_owned(),
        )),
        Some("InvalidToken" | "InvalidSecurity" | "MissingSecurityHeader" | "CredentialsNotSupported") => {
            Some((K::Credentials, "invalid credentials".to_owned()))
        }
        Some("ExpiredToken" | "TokenRefreshRequired" | "RequestExpired" | "RequestTimeTooSkewed") => {
            Some((K::Transient, "credentials expired or clock skew".to_owned()))
        }
        Some("NoSuchBucket") => Some((K::NoSuchBucket, "no such bucket".to_owned())),
        Some("PermanentRedirect" | "AuthorizationHeaderMalformed" | "IllegalLocationConstraintException") => {
            Some(wrong_region())
        }
        Some("TemporaryRedirect") => Some((K::Transient, "temporary redirect".to_owned())),
        Some(c) if c.starts_with("KMS.") && c.contains("Throttl") => Some((K::Throttled, "kms throttling".to_owned())),
        Some(c) if c.starts_with("KMS.") || c.starts_with("KMS") => {
            Some((K::Kms, "kms key error (check sse key id, key state and kms permissions)".to_owned()))
        }
        Some(
            "SlowDown"
            | "Throttling"
            | "ThrottlingException"
            | "ThrottledException"
            | "RequestThrottled"
            | "RequestThrottledException"
            | "TooManyRequestsException"
            | "ProvisionedThroughputExceededException"
            | "RequestLimitExceeded"
            | "BandwidthLimitExceeded"
            | "LimitExceededException"
            | "PriorRequestNotComplete",
        ) => Some((K::Throttled, "throttled".to_owned())),
        Some("RequestTimeout" | "RequestTimeoutException") => {
            Some((K::ServerError, "the store timed out reading the request".to_owned()))
        }
        Some("InternalError" | "InternalFailure" | "ServiceUnavailable") => {
            Some((K::ServerError, "server error".to_owned()))
        }
        Some("OperationAborted" | "ConditionalRequestConflict" | "NoSuchUpload") => {
            Some((K::Conflict, "conflicting concurrent operation".to_owned()))
        }
        Some("BadDigest" | "XAmzContentSHA256Mismatch" | "IncompleteBody") => {
            Some((K::Transient, "the body arrived corrupted or incomplete".to_owned()))
        }
        Some("NotImplemented") => Some(not_implemented()),
        Some(
            "InvalidArgument"
            | "InvalidRequest"
            | "InvalidStorageClass"
            | "EntityTooLarge"
            | "EntityTooSmall"
            | "InvalidPart"
            | "InvalidPartOrder"
            | "MalformedXML"
            | "InvalidDigest"
            | "KeyTooLongError"
            | "MetadataTooLarge"
            | "InvalidBucketName"
            | "MissingContentLength"
            | "InvalidEncryptionAlgorithmError"
            | "InvalidObjectState"
            | "UnexpectedContent",
        ) => Some((K::InvalidRequest, "the store refused the request as invalid".to_owned())),
        _ => None,
    };
    if let Some(found) = by_code {
        return found;
    }
    match status {
        Some(301) => wrong_region(),
        Some(307) => (K::Transient, "temporary redirect".to_owned()),
        Some(400) => (K::InvalidRequest, "bad request".to_owned()),
        Some(401 | 403) => (K::AccessDenied, "access denied".to_owned()),
        Some(404) => (K::Other, "not found".to_owned()),
        Some(405) => (K::Unsupported, "method not allowed".to_owned()),
        Some(408) => (K::ServerError, "request timeout".to_owned()),
        Some(409) => (K::Conflict, "conflict".to_owned()),
        Some(429) => (K::Throttled, "throttled".to_owned()),
        Some(501) => not_implemented(),
        Some(s) if s >= 500 => (K::ServerError, "server error".to_owned()),
        _ => (K::Other, "unexpected response".to_owned()),
    }
}

/// Finds the region in an `AuthorizationHeaderMalformed` message:
/// "the region 'us-east-1' is wrong; expecting 'eu-west-1'".
fn expected_region_in_message(message: &str) -> Option<String> {
    let rest = &message[message.find("expecting '")? + "expecting '".len()..];
    let region = &rest[..rest.find('\'')?];
    (!region.is_empty()).then(|| region.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_errors_are_classified() {
        let c =
            |status, code| classify_service_error(Some(status), code, false, "us-east-1", None).0;
        assert_eq!(c(403, Some("AccessDenied")), SinkErrorKind::AccessDenied);
        assert_eq!(
            c(403, Some("SignatureDoesNotMatch")),
            SinkErrorKind::Credentials
        );
        assert_eq!(
            c(403, Some("InvalidAccessKeyId")),
            SinkErrorKind::Credentials
        );
        assert_eq!(c(404, Some("NoSuchBucket")), SinkErrorKind::NoSuchBucket);
        assert_eq!(c(503, Some("SlowDown")), SinkErrorKind::Throttled);
        assert_eq!(c(400, Some("RequestTimeout")), SinkErrorKind::ServerError);
        assert_eq!(c(500, Some("InternalError")), SinkErrorKind::ServerError);
        assert_eq!(c(502, None), SinkErrorKind::ServerError);
        assert_eq!(c(429, None), SinkErrorKind::Throttled);
        assert_eq!(c(400, Some("KMS.NotFoundException")), SinkErrorKind::Kms);
        assert_eq!(
            c(400, Some("KMS.ThrottlingException")),
            SinkErrorKind::Throttled
        );
        assert_eq!(
            c(400, Some("InvalidArgument")),
            SinkErrorKind::InvalidRequest
        );
        assert_eq!(c(301, None), SinkErrorKind::WrongRegion);
        assert_eq!(c(403, None), SinkErrorKind::AccessDenied);
        assert!(c(503, Some("SlowDown")).is_retryable());
        assert!(!c(403, Some("AccessDenied")).is_retryable());

        let (kind, reason) =
            classify_service_error(Some(501), Some("NotImplemented"), true, "us-east-1", None);
        assert_eq!(kind, SinkErrorKind::Unsupported);
        assert!(reason.contains("if_none_match = false"), "{reason}");

        let (kind, reason) = classify_service_error(
            Some(301),
            Some("PermanentRedirect"),
            false,
            "us-east-1",
            Some("eu-west-1"),
        );
        assert_eq!(kind, SinkErrorKind::WrongRegion);
        assert!(reason.contains("the bucket is in eu-west-1"), "{reason}");
    }

    #[test]
    fn region_from_authorization_header_malformed() {
        assert_eq!(
            expected_region_in_message(
                "The authorization header is malformed; the region 'us-east-1' is wrong; expecting 'eu-west-1'"
            ),
            Some("eu-west-1".to_owned())
        );
        assert_eq!(expected_region_in_message("nothing here"), None);
    }
}
