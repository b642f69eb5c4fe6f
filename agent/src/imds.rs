//! EC2 instance metadata discovery over IMDSv2.
//!
//! The agent asks the instance metadata service once, at startup, for what VPC Flow Logs
//! writes about an interface: the identity document (account, region, instance, AZ name),
//! the AZ id, and per MAC address the interface id, subnet id and VPC id. IMDSv2 means a
//! session token is first obtained with `PUT /latest/api/token`
//! (`X-aws-ec2-metadata-token-ttl-seconds`), then sent with every `GET` in
//! `X-aws-ec2-metadata-token`.
//!
//! The client is `aws_config::imds::Client` (token handling, retries, timeouts) run on a
//! small current-thread tokio runtime in a thread of its own, so discovery works from
//! synchronous code and from inside another runtime alike.

use std::error::Error as StdError;
use std::time::Duration;

use aws_config::imds::client::Client;
use aws_config::imds::client::error::ImdsError as AwsImdsError;
use serde::Deserialize;

/// The real metadata service's address.
pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";

/// Default time one request attempt may take (connect plus answer).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// Attempts per request (the client retries 5xx answers, 401 after a new token, and
/// transport errors).
const ATTEMPTS: u32 = 3;

/// Lifetime asked for the session token: discovery needs it for seconds only.
const TOKEN_TTL: Duration = Duration::from_secs(300);

const TOKEN_PATH: &str = "/latest/api/token";
const IDENTITY_PATH: &str = "/latest/dynamic/instance-identity/document";
const AZ_ID_PATH: &str = "/latest/meta-data/placement/availability-zone-id";
const MACS_PATH: &str = "/latest/meta-data/network/interfaces/macs/";

/// Where and how patiently to ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImdsSettings {
    /// Base URL of the service, without a trailing path (`http://169.254.169.254`).
    pub endpoint: String,
    /// Longest time one request attempt may take; each request is tried up to 3 times.
    pub timeout: Duration,
}

impl Default for ImdsSettings {
    fn default() -> Self {
        ImdsSettings {
            endpoint: DEFAULT_ENDPOINT.to_owned(),
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// The instance identity document's fields the agent uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceIdentity {
    /// `accountId`: the account owning the instance (12 digits).
    pub account_id: String,
    /// `region` (`eu-west-3`).
    pub region: String,
    /// `instanceId` (`i-…`).
    pub instance_id: String,
    /// `availabilityZone`: the AZ *name* (`eu-west-3a`), which flow logs do not write.
    pub availability_zone: String,
}

/// What the service says about one network interface, by MAC address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceIdentity {
    /// The interface's MAC address.
    pub mac: [u8; 6],
    /// `interface-id` (`eni-…`), if the service knows the MAC.
    pub interface_id: Option<String>,
    /// `subnet-id`.
    pub subnet_id: Option<String>,
    /// `vpc-id`.
    pub vpc_id: Option<String>,
}

/// Everything discovery found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    /// The identity document.
    pub identity: InstanceIdentity,
    /// `placement/availability-zone-id` (`euw3-az1`), if the service has it.
    pub az_id: Option<String>,
    /// The interfaces asked about (or all the service lists), in the order asked.
    pub interfaces: Vec<InterfaceIdentity>,
}

impl Discovery {
    /// Returns what the service said about the interface with `mac`.
    pub fn interface(&self, mac: [u8; 6]) -> Option<&InterfaceIdentity> {
        self.interfaces.iter().find(|i| i.mac == mac)
    }
}

/// Which interfaces to ask about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MacSelection {
    /// These MAC addresses (unknown ones come back without ids).
    These(Vec<[u8; 6]>),
    /// Every MAC the service lists under `network/interfaces/macs/`.
    All,
}

/// Failure of discovery: names the URL asked and why it failed.
#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    /// The endpoint is not a usable URL.
    #[error("imds_endpoint '{endpoint}' is not a URL")]
    Endpoint {
        /// The configured endpoint.
        endpoint: String,
        /// Why it was refused.
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
    /// The discovery thread or its runtime could not be started.
    #[error("cannot start the instance metadata client")]
    Runtime(#[source] std::io::Error),
    /// The discovery thread ended without an answer.
    #[error("the instance metadata client stopped unexpectedly")]
    Aborted,
    /// No session token: the `PUT` failed.
    #[error("PUT {url} (IMDSv2 session token) failed")]
    Token {
        /// The token URL.
        url: String,
        /// The client's error.
        #[source]
        source: Box<AwsImdsError>,
    },
    /// A `GET` failed before an answer arrived.
    #[error("GET {url} failed")]
    Request {
        /// The URL asked.
        url: String,
        /// The client's error.
        #[source]
        source: Box<AwsImdsError>,
    },
    /// A `GET` was answered with an error status.
    #[error("GET {url} answered HTTP {status}")]
    Status {
        /// The URL asked.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// An answer is not what the service sends.
    #[error("GET {url}: {problem}")]
    Invalid {
        /// The URL asked.
        url: String,
        /// What is wrong with the answer.
        problem: String,
    },
}

impl ImdsError {
    /// Returns the message with the deepest cause appended (`GET … failed: Connection
    /// refused`), for one-line reports such as config problems.
    pub fn with_cause(&self) -> String {
        let mut root: Option<&dyn StdError> = None;
        let mut next = self.source();
        while let Some(e) = next {
            root = Some(e);
            next = e.source();
        }
        match root {
            Some(cause) => format!("{self}: {cause}"),
            None => self.to_string(),
        }
    }
}

/// Formats a MAC address as the service does (`0e:49:61:0f:c3:11`).
pub fn format_mac(mac: [u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

/// Parses `aa:bb:cc:dd:ee:ff` (either case).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Asks the metadata service at `settings.endpoint` for the instance's identity, its AZ id
/// and the interfaces in `macs`. Blocks until done; runs its own runtime on a thread.
pub fn discover(settings: &ImdsSettings, macs: MacSelection) -> Result<Discovery, ImdsError> {
    let settings = settings.clone();
    let thread = std::thread::Builder::new()
        .name("imds-discovery".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(ImdsError::Runtime)?;
            runtime.block_on(discover_async(&settings, macs))
        })
        .map_err(ImdsError::Runtime)?;
    thread.join().map_err(|_| ImdsError::Aborted)?
}

/// The client plus the base URL used in error messages.
struct Imds {
    client: Client,
    base: String,
}

impl Imds {
    fn new(settings: &ImdsSettings) -> Result<Imds, ImdsError> {
        let base = settings.endpoint.trim_end_matches('/').to_owned();
        let client = Client::builder()
            .endpoint(&base)
            .map_err(|source| ImdsError::Endpoint {
                endpoint: settings.endpoint.clone(),
                source,
            })?
            .max_attempts(ATTEMPTS)
            .token_ttl(TOKEN_TTL)
            .connect_timeout(settings.timeout)
            .read_timeout(settings.timeout)
            .operation_attempt_timeout(settings.timeout)
            .operation_timeout(settings.timeout * (ATTEMPTS + 2))
            .build();
        Ok(Imds { client, base })
    }

    /// GETs `path`; `Ok(None)` for 404 (the service has no such key).
    async fn get(&self, path: &str) -> Result<Option<String>, ImdsError> {
        let url = format!("{}{path}", self.base);
        match self.client.get(path).await {
            Ok(body) => Ok(Some(body.as_ref().to_owned())),
            Err(AwsImdsError::ErrorResponse(response)) => {
                let status = response.response().status().as_u16();
                if status == 404 {
                    Ok(None)
                } else {
                    Err(ImdsError::Status { url, status })
                }
            }
            Err(source @ AwsImdsError::FailedToLoadToken(_)) => Err(ImdsError::Token {
                url: format!("{}{TOKEN_PATH}", self.base),
                source: Box::new(source),
            }),
            Err(source) => Err(ImdsError::Request {
                url,
                source: Box::new(source),
            }),
        }
    }

    /// GETs `path`, which must exist.
    async fn get_required(&self, path: &str) -> Result<String, ImdsError> {
        self.get(path).await?.ok_or_else(|| ImdsError::Status {
            url: format!("{}{path}", self.base),
            status: 404,
        })
    }

    /// GETs `path` as a single-line value: trimmed, `None` if missing or empty.
    async fn get_value(&self, path: &str) -> Result<Option<String>, ImdsError> {
        Ok(self
            .get(path)
            .await?
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty()))
    }

    fn invalid(&self, path: &str, problem: String) -> ImdsError {
        ImdsError::Invalid {
            url: format!("{}{path}", self.base),
            problem,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IdentityDocument {
    account_id: String,
    region: String,
    instance_id: String,
    #[serde(default)]
    availability_zone: String,
}

async fn discover_async(
    settings: &ImdsSettings,
    macs: MacSelection,
) -> Result<Discovery, ImdsError> {
    let imds = Imds::new(settings)?;
    let document = imds.get_required(IDENTITY_PATH).await?;
    let doc: IdentityDocument = serde_json::from_str(&document).map_err(|e| {
        imds.invalid(
            IDENTITY_PATH,
            format!("not an instance identity document: {e}"),
        )
    })?;
    let identity = InstanceIdentity {
        account_id: doc.account_id,
        region: doc.region,
        instance_id: doc.instance_id,
        availability_zone: doc.availability_zone,
    };
    let az_id = imds.get_value(AZ_ID_PATH).await?;
    let macs = match macs {
        MacSelection::These(macs) => macs,
        MacSelection::All => {
            let listing = imds.get(MACS_PATH).await?.unwrap_or_default();
            let mut found = Vec::new();
            for line in listing.lines().map(str::trim).filter(|l| !l.is_empty()) {
                let mac = parse_mac(line.trim_end_matches('/')).ok_or_else(|| {
                    imds.invalid(MACS_PATH, format!("'{line}' is not a MAC address"))
                })?;
                found.push(mac);
            }
            found
        }
    };
    let mut interfaces = Vec::with_capacity(macs.len());
    for mac in macs {
        let at = format!("{MACS_PATH}{}/", format_mac(mac));
        interfaces.push(InterfaceIdentity {
            mac,
            interface_id: imds.get_value(&format!("{at}interface-id")).await?,
            subnet_id: imds.get_value(&format!("{at}subnet-id")).await?,
            vpc_id: imds.get_value(&format!("{at}vpc-id")).await?,
        });
    }
    Ok(Discovery {
        identity,
        az_id,
        interfaces,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_round_trip_in_the_services_form() {
        let mac = [0x0e, 0x49, 0x61, 0x0f, 0xc3, 0x11];
        assert_eq!(format_mac(mac), "0e:49:61:0f:c3:11");
        assert_eq!(parse_mac("0E:49:61:0f:c3:11"), Some(mac));
        for bad in [
            "0e:49:61:0f:c3",
            "0e:49:61:0f:c3:11:00",
            "0e:49:61:0f:c3:1",
            "zz:49:61:0f:c3:11",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_refused_connection_names_the_token_url_and_the_cause() {
        // Bind then drop a listener: nothing listens on that port afterwards.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let settings = ImdsSettings {
            endpoint: format!("http://127.0.0.1:{port}"),
            timeout: Duration::from_millis(300),
        };
        let e = discover(&settings, MacSelection::All).unwrap_err();
        let text = e.with_cause();
        assert!(
            text.starts_with(&format!("PUT http://127.0.0.1:{port}/latest/api/token")),
            "{text}"
        );
        assert!(text.to_lowercase().contains("refused"), "{text}");
    }

    #[test]
    fn a_bad_endpoint_is_named() {
        let settings = ImdsSettings {
            endpoint: "http://exa mple".into(),
            timeout: DEFAULT_TIMEOUT,
        };
        let e = discover(&settings, MacSelection::All).unwrap_err();
        assert!(e.to_string().contains("'http://exa mple'"), "{e}");
    }
}
