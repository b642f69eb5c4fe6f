//! Agent authentication: bearer tokens from the tokens file.
//!
//! The file holds one `agent-id token [account=…] [region=…]` per line; blank lines and
//! lines starting with `#` are ignored, as is a `# comment` at the end of a line. Tokens
//! are kept only as SHA-256 digests and looked up by digest, so checking one takes the same
//! time whatever part of it is right, and no token is ever logged or shown in an error.
//!
//! `account=` and `region=` say under which accounts and regions the agent's records may
//! be published (comma-separated values, or `*` for any): a record names them in its own
//! `account-id` and `region` fields, which pick its output folder. Without them, an agent
//! may publish only under the aggregator's own `[flow_log] account_id` and `region`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use sha2::{Digest, Sha256};

/// Shortest token accepted: 16 characters (e.g. `openssl rand -hex 16` gives 32).
pub const MIN_TOKEN_LEN: usize = 16;

/// Which values of one field (account or region) an agent may publish under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowed {
    /// Only the aggregator's own `[flow_log]` value (no `account=`/`region=` on the line).
    Own,
    /// Any valid value (`*`).
    Any,
    /// These values.
    Only(Vec<String>),
}

impl Allowed {
    /// Whether `value` is allowed, given the aggregator's own value `own`.
    pub fn allows(&self, value: &str, own: &str) -> bool {
        match self {
            Allowed::Own => value == own,
            Allowed::Any => true,
            Allowed::Only(values) => values.iter().any(|v| v == value),
        }
    }

    /// What is allowed, for error messages.
    pub fn describe(&self, own: &str, key: &str) -> String {
        match self {
            Allowed::Own => format!(
                "only {own}, the aggregator's [flow_log] {key} (allow more with {}=… on the agent's tokens-file line)",
                if key == "account_id" {
                    "account"
                } else {
                    "region"
                }
            ),
            Allowed::Any => "any".into(),
            Allowed::Only(values) => values.join(", "),
        }
    }
}

/// An agent and what its token allows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The agent id the token belongs to.
    pub agent: Arc<str>,
    /// Accounts its records may be published under.
    pub accounts: Allowed,
    /// Regions its records may be published under.
    pub regions: Allowed,
}

pub use flowlog_transport::{MAX_AGENT_ID_LEN, validate_agent_id};

/// A tokens file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    /// The file cannot be read.
    #[error("tokens file {path}: cannot read: {source}")]
    Read {
        /// The file.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Lines of the file are wrong.
    #[error("tokens file {path}: {}", .lines.join("; "))]
    Lines {
        /// The file.
        path: String,
        /// One message per problem, each naming its line.
        lines: Vec<String>,
    },
}

impl TokensError {
    /// Every problem as a message naming the file (and line).
    pub fn problems(&self) -> Vec<String> {
        match self {
            TokensError::Read { path, source } => vec![format!("cannot read {path}: {source}")],
            TokensError::Lines { path, lines } => {
                lines.iter().map(|l| format!("{path} {l}")).collect()
            }
        }
    }
}

type Digest32 = [u8; 32];

fn digest(token: &str) -> Digest32 {
    Sha256::digest(token.as_bytes()).into()
}

/// The agents and their tokens (as digests).
#[derive(Debug, Default)]
pub struct TokenTable {
    by_digest: HashMap<Digest32, Arc<Grant>>,
}

/// Parses the `account=`/`region=` value of a line.
fn allowed(
    value: &str,
    check: fn(&str) -> Result<(), flowlog_formats::key::KeyError>,
) -> Result<Allowed, String> {
    if value == "*" {
        return Ok(Allowed::Any);
    }
    let mut values = Vec::new();
    for v in value.split(',') {
        check(v).map_err(|e| e.to_string())?;
        values.push(v.to_owned());
    }
    Ok(Allowed::Only(values))
}

impl TokenTable {
    /// Reads and checks a tokens file.
    pub fn load(path: &Path) -> Result<TokenTable, TokensError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TokensError::Read {
            path: shown.clone(),
            source,
        })?;
        TokenTable::parse(&text, &shown)
    }

    /// Checks the text of a tokens file; `path` is used in errors only. Every bad line is
    /// reported; tokens never appear in the messages.
    pub fn parse(text: &str, path: &str) -> Result<TokenTable, TokensError> {
        let mut lines = Vec::new();
        let mut by_digest: HashMap<Digest32, Arc<Grant>> = HashMap::new();
        let mut agent_line: HashMap<String, usize> = HashMap::new();
        let mut digest_line: HashMap<Digest32, (usize, String)> = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace().take_while(|f| !f.starts_with('#'));
            let (Some(agent), token) = (fields.next(), fields.next()) else {
                continue;
            };
            let Some(token) = token else {
                lines.push(format!(
                    "line {n}: agent '{}' has no token (expected \"agent-id token\")",
                    agent.escape_debug()
                ));
                continue;
            };
            if let Err(e) = validate_agent_id(agent) {
                lines.push(format!("line {n}: {e}"));
                continue;
            }
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                lines.push(format!(
                    "line {n}: the token of '{agent}' holds characters other than printable ASCII"
                ));
                continue;
            }
            if token.len() < MIN_TOKEN_LEN {
                lines.push(format!(
                    "line {n}: the token of '{agent}' is {} characters long; at least {MIN_TOKEN_LEN} are required (e.g. openssl rand -hex 16)",
                    token.len()
                ));
                continue;
            }
            let mut accounts = Allowed::Own;
            let mut regions = Allowed::Own;
            let mut bad = false;
            for option in fields {
                let parsed = match option.split_once('=') {
                    Some(("account", v)) => {
                        allowed(v, flowlog_formats::key::validate_account_id).map(|a| accounts = a)
                    }
                    Some(("region", v)) => {
                        allowed(v, flowlog_formats::key::validate_region).map(|r| regions = r)
                    }
                    _ => Err(format!(
                        "'{}' is not account=… or region=… (expected \"agent-id token [account=ID,…|*] [region=NAME,…|*]\")",
                        option.escape_debug()
                    )),
                };
                if let Err(e) = parsed {
                    lines.push(format!("line {n}: agent '{agent}': {e}"));
                    bad = true;
                }
            }
            if bad {
                continue;
            }
            if let Some(first) = agent_line.get(agent) {
                lines.push(format!(
                    "line {n}: agent '{agent}' is already listed on line {first}"
                ));
                continue;
            }
            let d = digest(token);
            if let Some((first, other)) = digest_line.get(&d) {
                lines.push(format!(
                    "line {n}: agent '{agent}' has the same token as '{other}' on line {first}; every agent needs its own token"
                ));
                continue;
            }
            agent_line.insert(agent.to_owned(), n);
            digest_line.insert(d, (n, agent.to_owned()));
            by_digest.insert(
                d,
                Arc::new(Grant {
                    agent: Arc::from(agent),
                    accounts,
                    regions,
                }),
            );
        }
        if lines.is_empty() {
            Ok(TokenTable { by_digest })
        } else {
            Err(TokensError::Lines {
                path: path.to_owned(),
                lines,
            })
        }
    }

    /// Number of agents.
    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    /// Whether the file lists no agent.
    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    fn grant_of(&self, token: &str) -> Option<&Arc<Grant>> {
        self.by_digest.get(&digest(token))
    }
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `authorization` metadata.
    Missing,
    /// `authorization` is not `Bearer <token>`.
    Malformed,
    /// The token is not in the tokens file.
    Unknown,
    /// The token belongs to another agent.
    AgentMismatch {
        /// The agent the token belongs to.
        token_agent: Arc<str>,
    },
}

impl AuthFailure {
    /// The `reason` label (one of `telemetry::AUTH_FAILURE_REASONS`).
    pub fn reason(&self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Malformed => "malformed",
            AuthFailure::Unknown => "unknown",
            AuthFailure::AgentMismatch { .. } => "agent_mismatch",
        }
    }

    /// The gRPC status the caller gets (it never holds the token).
    pub fn status(&self, agent_id: &str) -> tonic::Status {
        match self {
            AuthFailure::Missing => {
                tonic::Status::unauthenticated("no token: send authorization: Bearer <token>")
            }
            AuthFailure::Malformed => tonic::Status::unauthenticated(
                "the authorization metadata is not \"Bearer <token>\"",
            ),
            AuthFailure::Unknown => tonic::Status::unauthenticated("unknown token"),
            AuthFailure::AgentMismatch { .. } => tonic::Status::permission_denied(format!(
                "the token does not belong to agent '{agent_id}'"
            )),
        }
    }
}

/// The tokens in force; reloaded from the file on request (SIGHUP).
#[derive(Debug)]
pub struct Authenticator {
    path: PathBuf,
    table: RwLock<Arc<TokenTable>>,
}

impl Authenticator {
    /// Loads the tokens file.
    pub fn load(path: &Path) -> Result<Authenticator, TokensError> {
        let table = TokenTable::load(path)?;
        Ok(Authenticator {
            path: path.to_owned(),
            table: RwLock::new(Arc::new(table)),
        })
    }

    /// The tokens file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of agents in force.
    pub fn agents(&self) -> usize {
        self.current().len()
    }

    fn current(&self) -> Arc<TokenTable> {
        Arc::clone(&self.table.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Re-reads the tokens file. A file that does not load leaves the old tokens in force.
    /// Returns the number of agents now in force.
    pub fn reload(&self) -> Result<usize, TokensError> {
        let table = TokenTable::load(&self.path)?;
        let n = table.len();
        *self.table.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(table);
        Ok(n)
    }

    /// Checks the `authorization` metadata of a call made as `agent_id`.
    pub fn check(&self, authorization: Option<&[u8]>, agent_id: &str) -> Result<(), AuthFailure> {
        let grant = self.identify(authorization)?;
        if *grant.agent == *agent_id {
            Ok(())
        } else {
            Err(AuthFailure::AgentMismatch {
                token_agent: Arc::clone(&grant.agent),
            })
        }
    }

    /// Returns the agent the token in the `authorization` metadata belongs to, and what it
    /// may publish.
    pub fn identify(&self, authorization: Option<&[u8]>) -> Result<Arc<Grant>, AuthFailure> {
        let header = authorization.ok_or(AuthFailure::Missing)?;
        let header = std::str::from_utf8(header).map_err(|_| AuthFailure::Malformed)?;
        let (scheme, token) = header
            .trim()
            .split_once(' ')
            .ok_or(AuthFailure::Malformed)?;
        let token = token.trim();
        if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
            return Err(AuthFailure::Malformed);
        }
        self.current()
            .grant_of(token)
            .map(Arc::clone)
            .ok_or(AuthFailure::Unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# fleet\n\nweb-1 token-of-web-1.long\n  db.example.com   token-of-db.longer # the database\n";

    #[test]
    fn parses_lines_and_comments() {
        let t = TokenTable::parse(FILE, "tokens").unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(
            t.grant_of("token-of-db.longer").map(|g| &*g.agent),
            Some("db.example.com")
        );
        assert!(t.grant_of("token-of-nobody").is_none());
        assert!(TokenTable::parse("", "tokens").unwrap().is_empty());
    }

    #[test]
    fn every_bad_line_is_named_and_no_token_is_shown() {
        let text = "a secret-a-0123456789\na secret-b-0123456789\nb\nc secret-a-0123456789\nd secret-d-0123456789 extra\nbad/id secret-e-0123456789\ne s\u{e9}cret-0123456789\nf secret\ng secret-g-0123456789 account=12 region=*\n";
        let e = TokenTable::parse(text, "tokens").unwrap_err();
        let problems = e.problems();
        assert_eq!(
            problems,
            vec![
                "tokens line 2: agent 'a' is already listed on line 1",
                "tokens line 3: agent 'b' has no token (expected \"agent-id token\")",
                "tokens line 4: agent 'c' has the same token as 'a' on line 1; every agent needs its own token",
                "tokens line 5: agent 'd': 'extra' is not account=… or region=… (expected \"agent-id token [account=ID,…|*] [region=NAME,…|*]\")",
                "tokens line 6: the agent id 'bad/id' holds '/'; use letters, digits, '.', '-', '_', ':' or '@'",
                "tokens line 7: the token of 'e' holds characters other than printable ASCII",
                "tokens line 8: the token of 'f' is 6 characters long; at least 16 are required (e.g. openssl rand -hex 16)",
                "tokens line 9: agent 'g': account id '12' must be exactly 12 digits",
            ]
        );
        let shown = e.to_string();
        assert!(!shown.contains("secret"), "{shown}");
        assert!(
            TokenTable::load(Path::new("/nonexistent/tokens"))
                .unwrap_err()
                .to_string()
                .starts_with("tokens file /nonexistent/tokens: cannot read")
        );
    }

    #[test]
    fn token_lines_grant_accounts_and_regions() {
        let text = "web-1 token-of-web-1.long\n\
                    db-1 token-of-db-1.long account=123456789012,210987654321 region=* # two accounts\n";
        let t = TokenTable::parse(text, "tokens").unwrap();
        let web = t.grant_of("token-of-web-1.long").unwrap();
        assert_eq!(
            (&web.accounts, &web.regions),
            (&Allowed::Own, &Allowed::Own)
        );
        assert!(web.accounts.allows("111111111111", "111111111111"));
        assert!(!web.accounts.allows("210987654321", "111111111111"));
        let db = t.grant_of("token-of-db-1.long").unwrap();
        assert_eq!(db.regions, Allowed::Any);
        assert!(db.accounts.allows("210987654321", "111111111111"));
        assert!(!db.accounts.allows("111111111111", "111111111111"));
        assert!(db.regions.allows("eu-west-1", "us-east-1"));
    }

    #[test]
    fn check_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, FILE).unwrap();
        let auth = Authenticator::load(&path).unwrap();
        let bearer = |t: &str| format!("Bearer {t}").into_bytes();
        assert_eq!(
            auth.check(Some(&bearer("token-of-web-1.long")), "web-1"),
            Ok(())
        );
        assert_eq!(
            auth.check(Some(b"bearer token-of-web-1.long"), "web-1"),
            Ok(())
        );
        assert_eq!(auth.check(None, "web-1"), Err(AuthFailure::Missing));
        assert_eq!(
            auth.check(Some(b"Basic dXNlcjpwdw=="), "web-1"),
            Err(AuthFailure::Malformed)
        );
        assert_eq!(
            auth.check(Some(b"token-of-web-1.long"), "web-1"),
            Err(AuthFailure::Malformed)
        );
        assert_eq!(
            auth.check(Some(&bearer("nope")), "web-1"),
            Err(AuthFailure::Unknown)
        );
        let e = auth
            .check(Some(&bearer("token-of-db.longer")), "web-1")
            .unwrap_err();
        assert_eq!(e.reason(), "agent_mismatch");
        assert_eq!(e.status("web-1").code(), tonic::Code::PermissionDenied);
        assert_eq!(
            AuthFailure::Unknown.status("web-1").code(),
            tonic::Code::Unauthenticated
        );

        std::fs::write(&path, "web-1 new-token-0123456789\n").unwrap();
        assert_eq!(auth.reload().unwrap(), 1);
        assert_eq!(
            auth.check(Some(&bearer("new-token-0123456789")), "web-1"),
            Ok(())
        );
        assert_eq!(
            auth.check(Some(&bearer("token-of-web-1.long")), "web-1"),
            Err(AuthFailure::Unknown)
        );
        // A bad file keeps the tokens in force.
        std::fs::write(&path, "web-1\n").unwrap();
        assert!(auth.reload().unwrap_err().to_string().contains("line 1"));
        assert_eq!(
            auth.check(Some(&bearer("new-token-0123456789")), "web-1"),
            Ok(())
        );
        assert_eq!(auth.agents(), 1);
    }

    #[test]
    fn agent_ids() {
        assert!(validate_agent_id("ip-10-0-0-1.eu-west-1.compute.internal").is_ok());
        assert!(validate_agent_id("").is_err());
        assert!(validate_agent_id("a b").is_err());
        assert!(validate_agent_id(&"x".repeat(256)).is_err());
    }
}
