//! Who may write: reads are anonymous; a write needs the server to allow writes and then
//! either the bearer token or a Unix socket peer that is the server's own user (or root).

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::object::{Status, StatusReason};
use crate::{Error, Result};

/// A bearer token. Its `Debug` shows nothing of it, so it cannot reach a log.
#[derive(Clone)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// A token from its text (surrounding whitespace ignored); empty is refused.
    pub fn new(text: &str) -> Result<Token> {
        let text = text.trim();
        if text.is_empty() {
            return Err(Error::TokenEmpty);
        }
        Ok(Token(text.to_owned()))
    }

    /// Reads the token from `path`, which must be owned by the running user and readable by
    /// nobody else (mode 0600 or stricter): a token others can read authenticates nobody.
    pub fn from_file(path: &Path) -> Result<Token> {
        let io = |source| Error::TokenFile {
            path: path.to_owned(),
            source,
        };
        // The checks are made on the opened file, so a swap of the path between check and
        // read cannot slip another file in.
        let mut file = std::fs::File::open(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        let me = rustix::process::geteuid().as_raw();
        if meta.uid() != me {
            return Err(Error::TokenFileOwner {
                path: path.to_owned(),
                owner: meta.uid(),
                user: me,
            });
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(Error::TokenFileMode {
                path: path.to_owned(),
                mode,
            });
        }
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(io)?;
        Token::new(&text)
    }

    /// Whether `presented` is this token, compared in constant time.
    pub fn matches(&self, presented: &str) -> bool {
        self.0.as_bytes().ct_eq(presented.as_bytes()).into()
    }
}

/// Which writes the server takes.
#[derive(Clone, Debug, Default)]
pub enum Writes {
    /// None: every write is 403.
    #[default]
    ReadOnly,
    /// Writes with the bearer token (if any), or from a trusted Unix socket peer.
    Authenticated {
        /// The bearer token; without one only the Unix socket can write.
        token: Option<Token>,
    },
    /// Writes from anyone: for tests that stand in for a cluster, never for `ipamctl`.
    Unauthenticated,
}

/// What the listener learnt about the connection's peer.
#[derive(Clone, Copy, Debug, Default)]
pub struct Peer {
    /// The peer is the server's own user or root, proven by the kernel (SO_PEERCRED).
    pub trusted: bool,
}

/// Lets a request through, or answers 401/403 for a write it may not make.
pub(crate) async fn gate(State(writes): State<Arc<Writes>>, req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return next.run(req).await;
    }
    let token = match &*writes {
        Writes::Unauthenticated => return next.run(req).await,
        Writes::ReadOnly => {
            let msg = "this server is read-only; start it with --allow-writes to take writes";
            return Status::new(403, StatusReason::Forbidden, msg).into_response();
        }
        Writes::Authenticated { token } => token,
    };
    let peer = req
        .extensions()
        .get::<ConnectInfo<Peer>>()
        .map(|c| c.0)
        .unwrap_or_default();
    if peer.trusted {
        return next.run(req).await;
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match (token, presented) {
        (Some(t), Some(p)) if t.matches(p.trim()) => next.run(req).await,
        (_, Some(_)) => unauthorized("the bearer token is not valid"),
        (_, None) => unauthorized("a write needs a bearer token or the server's Unix socket"),
    }
}

fn unauthorized(msg: &str) -> Response {
    let mut resp = Status::new(401, StatusReason::Unauthorized, msg).into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_only_themselves_and_hide_in_debug() {
        let t = Token::new(" s3cret\n").unwrap();
        assert!(t.matches("s3cret"));
        assert!(!t.matches("s3cre"));
        assert!(!t.matches("s3cretx"));
        assert_eq!(format!("{t:?}"), "Token(..)");
        assert!(matches!(Token::new(" \n"), Err(Error::TokenEmpty)));
    }
}
