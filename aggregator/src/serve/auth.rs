//! Agent authentication: bearer tokens from the tokens file.
//!
//! The file holds one `agent-id token` per line; blank lines and lines starting with `#`
//! are ignored, as is a `# comment` after the token. Tokens are kept only as SHA-256
//! digests and looked up by digest, so checking one takes the same time whatever part of
//! it is right, and no token is ever logged or shown in an error.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use sha2::{Digest, Sha256};

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
    by_digest: HashMap<Digest32, Arc<str>>,
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
        let mut by_digest: HashMap<Digest32, Arc<str>> = HashMap::new();
        let mut agent_line: HashMap<String, usize> = HashMap::new();
        let mut digest_line: HashMap<Digest32, (usize, String)> = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let (Some(agent), token) = (fields.next(), fields.next()) else {
                continue;
            };
            let rest_is_comment = fields.next().is_none_or(|f| f.starts_with('#'));
            let Some(token) = token.filter(|t| !t.starts_with('#')) else {
                lines.push(format!(
                    "line {n}: agent '{}' has no token (expected \"agent-id token\")",
                    agent.escape_debug()
                ));
                continue;
            };
            if !rest_is_comment {
                lines.push(format!(
                    "line {n}: expected \"agent-id token\" (two fields, then an optional # comment)"
                ));
                continue;
            }
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
            by_digest.insert(d, Arc::from(agent));
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

    fn agent_of(&self, token: &str) -> Option<&Arc<str>> {
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
        let owner = self.identify(authorization)?;
        if *owner == *agent_id {
            Ok(())
        } else {
            Err(AuthFailure::AgentMismatch { token_agent: owner })
        }
    }

    /// Returns the agent the token in the `authorization` metadata belongs to.
    pub fn identify(&self, authorization: Option<&[u8]>) -> Result<Arc<str>, AuthFailure> {
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
            .agent_of(token)
            .map(Arc::clone)
            .ok_or(AuthFailure::Unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str =
        "# fleet\n\nweb-1 token-of-web-1\n  db.example.com   token-of-db # the database\n";

    #[test]
    fn parses_lines_and_comments() {
        let t = TokenTable::parse(FILE, "tokens").unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(
            t.agent_of("token-of-db").map(|a| &**a),
            Some("db.example.com")
        );
        assert!(t.agent_of("token-of-nobody").is_none());
        assert!(TokenTable::parse("", "tokens").unwrap().is_empty());
    }

    #[test]
    fn every_bad_line_is_named_and_no_token_is_shown() {
        let text = "a secret-a\na secret-b\nb\nc secret-a\nd secret-d extra\nbad/id secret-e\ne s\u{e9}cret\n";
        let e = TokenTable::parse(text, "tokens").unwrap_err();
        let problems = e.problems();
        assert_eq!(
            problems,
            vec![
                "tokens line 2: agent 'a' is already listed on line 1",
                "tokens line 3: agent 'b' has no token (expected \"agent-id token\")",
                "tokens line 4: agent 'c' has the same token as 'a' on line 1; every agent needs its own token",
                "tokens line 5: expected \"agent-id token\" (two fields, then an optional # comment)",
                "tokens line 6: the agent id 'bad/id' holds '/'; use letters, digits, '.', '-', '_', ':' or '@'",
                "tokens line 7: the token of 'e' holds characters other than printable ASCII",
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
    fn check_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, FILE).unwrap();
        let auth = Authenticator::load(&path).unwrap();
        let bearer = |t: &str| format!("Bearer {t}").into_bytes();
        assert_eq!(auth.check(Some(&bearer("token-of-web-1")), "web-1"), Ok(()));
        assert_eq!(auth.check(Some(b"bearer token-of-web-1"), "web-1"), Ok(()));
        assert_eq!(auth.check(None, "web-1"), Err(AuthFailure::Missing));
        assert_eq!(
            auth.check(Some(b"Basic dXNlcjpwdw=="), "web-1"),
            Err(AuthFailure::Malformed)
        );
        assert_eq!(
            auth.check(Some(b"token-of-web-1"), "web-1"),
            Err(AuthFailure::Malformed)
        );
        assert_eq!(
            auth.check(Some(&bearer("nope")), "web-1"),
            Err(AuthFailure::Unknown)
        );
        let e = auth
            .check(Some(&bearer("token-of-db")), "web-1")
            .unwrap_err();
        assert_eq!(e.reason(), "agent_mismatch");
        assert_eq!(e.status("web-1").code(), tonic::Code::PermissionDenied);
        assert_eq!(
            AuthFailure::Unknown.status("web-1").code(),
            tonic::Code::Unauthenticated
        );

        std::fs::write(&path, "web-1 new-token\n").unwrap();
        assert_eq!(auth.reload().unwrap(), 1);
        assert_eq!(auth.check(Some(&bearer("new-token")), "web-1"), Ok(()));
        assert_eq!(
            auth.check(Some(&bearer("token-of-web-1")), "web-1"),
            Err(AuthFailure::Unknown)
        );
        // A bad file keeps the tokens in force.
        std::fs::write(&path, "web-1\n").unwrap();
        assert!(auth.reload().unwrap_err().to_string().contains("line 1"));
        assert_eq!(auth.check(Some(&bearer("new-token")), "web-1"), Ok(()));
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
