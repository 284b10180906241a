//! Who may call what: a tower layer in front of every gRPC service that
//! sees the method path, establishes the [`Caller`] (a verified certificate
//! identity, the admin bearer token, or — on a plaintext port — nobody in
//! particular) and checks it against the server's role table. Unknown
//! methods are denied. The caller is put into the request's extensions for
//! handlers that log it or bind an agent id to it.

use std::fmt;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use subtle::ConstantTimeEq;
use tonic::Status;
use tracing::warn;

use crate::identity::{Identity, Role};
use crate::server::{LogLimiter, Peer};

/// Who made a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A verified client certificate.
    Peer(Identity),
    /// The admin bearer token (role admin).
    Token,
    /// A plaintext port: no identity at all.
    Anonymous,
}

impl Caller {
    /// The role the call is checked as (`None`: anonymous).
    pub fn role(&self) -> Option<Role> {
        match self {
            Caller::Peer(id) => Some(id.role),
            Caller::Token => Some(Role::Admin),
            Caller::Anonymous => None,
        }
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Peer(id) => write!(f, "{id}"),
            Caller::Token => f.write_str("admin bearer token"),
            Caller::Anonymous => f.write_str("anonymous (plaintext)"),
        }
    }
}

/// Who may call a method.
#[derive(Debug, Clone, Copy)]
pub enum Allow {
    Roles(&'static [Role]),
    /// Any authenticated peer (health checking, reflection).
    AnyPeer,
}

/// One row of the role table: a full method path (`/pkg.Service/Method`) or
/// a service prefix ending in `/`.
pub type Rule = (&'static str, Allow);

/// The admin bearer token. Its `Debug` never shows it.
#[derive(Clone)]
pub struct Token(Arc<str>);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// The file's contents, surrounding whitespace trimmed; at least 16 bytes.
    pub fn from_file(path: &Path) -> Result<Token, String> {
        let raw = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let text = String::from_utf8(raw)
            .map_err(|_| format!("{}: the token is not UTF-8", path.display()))?;
        Token::new(text.trim()).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn new(token: &str) -> Result<Token, String> {
        if token.len() < 16 {
            return Err("the admin token must be at least 16 characters".into());
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the admin token must be printable ASCII without spaces".into());
        }
        Ok(Token(token.into()))
    }

    /// The token itself, to send it (clients only; never log it).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Constant-time comparison (the length is not secret).
    pub fn matches(&self, given: &[u8]) -> bool {
        self.0.len() == given.len() && bool::from(self.0.as_bytes().ct_eq(given))
    }
}

/// The server's access policy.
#[derive(Debug, Clone)]
pub struct Access {
    /// Whether the port is TLS (then every caller must be authenticated).
    pub tls: bool,
    pub token: Option<Token>,
    pub table: &'static [Rule],
}

impl Access {
    /// The caller of `path`, or why it may not call it.
    pub fn authorize(
        &self,
        peer: Option<&Peer>,
        headers: &http::HeaderMap,
        path: &str,
    ) -> Result<Caller, Status> {
        let identity = peer.and_then(|p| p.identity.clone());
        let bearer = headers
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes().strip_prefix(b"Bearer ").unwrap_or(b""));
        let caller = match (identity, bearer) {
            (Some(id), _) => Caller::Peer(id),
            (None, Some(given)) => match &self.token {
                Some(t) if t.matches(given) => Caller::Token,
                Some(_) => return Err(Status::unauthenticated("invalid bearer token")),
                None => {
                    return Err(Status::unauthenticated(
                        "bearer token given, but this server accepts none (no --admin-token-file)",
                    ));
                }
            },
            (None, None) if self.tls => {
                return Err(Status::unauthenticated(
                    "no client certificate and no bearer token",
                ));
            }
            (None, None) => Caller::Anonymous,
        };
        let rule = self.table.iter().find(|(p, _)| {
            if p.ends_with('/') {
                path.starts_with(p)
            } else {
                path == *p
            }
        });
        let Some(role) = caller.role() else {
            // Plaintext: everything is open, except that a configured token
            // guards the admin methods.
            let admin_only = matches!(rule, Some((_, Allow::Roles(rs))) if rs == &[Role::Admin]);
            if self.token.is_some() && admin_only {
                return Err(Status::unauthenticated(format!(
                    "{path} needs the admin bearer token (authorization: Bearer …)"
                )));
            }
            return Ok(caller);
        };
        match rule {
            Some((_, Allow::AnyPeer)) => Ok(caller),
            Some((_, Allow::Roles(rs))) if rs.contains(&role) => Ok(caller),
            Some(_) => Err(Status::permission_denied(format!(
                "role {role} ({caller}) may not call {path}"
            ))),
            None => Err(Status::permission_denied(format!(
                "role {role} ({caller}) may not call {path}: no such method"
            ))),
        }
    }
}

/// The tower layer enforcing an [`Access`].
#[derive(Debug, Clone)]
pub struct AuthLayer {
    access: Arc<Access>,
    denials: Arc<LogLimiter>,
}

impl AuthLayer {
    pub fn new(access: Access) -> Self {
        AuthLayer {
            access: Arc::new(access),
            denials: Arc::new(LogLimiter::new(Duration::from_secs(1))),
        }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    layer: AuthLayer,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Auth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_string();
        let peer = req.extensions().get::<Peer>().cloned();
        match self
            .layer
            .access
            .authorize(peer.as_ref(), req.headers(), &path)
        {
            Ok(caller) => {
                req.extensions_mut().insert(caller);
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(inner.call(req))
            }
            Err(status) => {
                if let Some(suppressed) = self.layer.denials.allow() {
                    warn!(
                        peer = %peer.map(|p| p.addr.to_string()).unwrap_or_default(),
                        method = %path,
                        code = ?status.code(),
                        reason = %status.message(),
                        suppressed,
                        "call refused"
                    );
                }
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &[Rule] = &[
        ("/a.Admin/", Allow::Roles(&[Role::Admin])),
        ("/a.Probe/Connect", Allow::Roles(&[Role::Agent])),
        ("/grpc.health.v1.Health/", Allow::AnyPeer),
    ];

    fn peer(role: Role) -> Peer {
        Peer {
            addr: "127.0.0.1:1".parse().expect("addr"),
            identity: Some(Identity::new("td", role, "x").expect("id")),
        }
    }

    #[test]
    fn roles_tokens_and_plaintext() {
        let token = Token::new("0123456789abcdef0123").expect("token");
        let tls = Access {
            tls: true,
            token: Some(token.clone()),
            table: TABLE,
        };
        let none = http::HeaderMap::new();
        assert!(
            tls.authorize(Some(&peer(Role::Admin)), &none, "/a.Admin/Get")
                .is_ok()
        );
        let e = tls
            .authorize(Some(&peer(Role::Proxy)), &none, "/a.Admin/Get")
            .expect_err("proxy");
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("role proxy") && e.message().contains("/a.Admin/Get"));
        let e = tls
            .authorize(Some(&peer(Role::Agent)), &none, "/a.Probe/Other")
            .expect_err("unknown");
        assert!(e.message().contains("no such method"), "{}", e.message());
        assert!(
            tls.authorize(
                Some(&peer(Role::Proxy)),
                &none,
                "/grpc.health.v1.Health/Check"
            )
            .is_ok()
        );
        let anon = Peer {
            identity: None,
            ..peer(Role::Admin)
        };
        let e = tls
            .authorize(Some(&anon), &none, "/a.Admin/Get")
            .expect_err("no cert");
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        let mut good = http::HeaderMap::new();
        good.insert(
            "authorization",
            "Bearer 0123456789abcdef0123".parse().expect("header"),
        );
        assert_eq!(
            tls.authorize(Some(&anon), &good, "/a.Admin/Get")
                .expect("token"),
            Caller::Token
        );
        let e = tls
            .authorize(Some(&anon), &good, "/a.Probe/Connect")
            .expect_err("token is admin only");
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        let mut bad = http::HeaderMap::new();
        bad.insert(
            "authorization",
            "Bearer 0123456789abcdef0124".parse().expect("h"),
        );
        let e = tls
            .authorize(Some(&anon), &bad, "/a.Admin/Get")
            .expect_err("bad");
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(!e.message().contains("0123"), "the token is never echoed");

        let plain = Access {
            tls: false,
            token: Some(token),
            table: TABLE,
        };
        assert!(
            plain
                .authorize(Some(&anon), &none, "/a.Probe/Connect")
                .is_ok()
        );
        let e = plain
            .authorize(Some(&anon), &none, "/a.Admin/Get")
            .expect_err("guarded");
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(plain.authorize(Some(&anon), &good, "/a.Admin/Get").is_ok());
        assert!(format!("{:?}", plain.token).contains("redacted"));
    }
}
