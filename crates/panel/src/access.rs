//! Who may talk to the panel: a client on this machine that knows the instance token, through a
//! Host header naming the panel itself (no DNS rebinding) and without a foreign Origin (no
//! cross-site calls from a web page the user has open).
//!
//! The UI shell (`/`, `/assets/*`) is served after the Host and Origin checks but without the
//! token: the browser cannot send the token on the first page load (it sits in the URL fragment)
//! and the shell holds no data. Everything under `/api` needs the token.

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, HOST, ORIGIN};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use secrecy::{ExposeSecret, SecretString};
use std::sync::Arc;

use crate::error::ApiError;

/// What a request is checked against.
pub struct AccessPolicy {
    token: SecretString,
    /// The accepted Host header values: `127.0.0.1:<port>` and `localhost:<port>`.
    hosts: [String; 2],
}

impl AccessPolicy {
    pub fn new(token: SecretString, port: u16) -> Self {
        Self {
            token,
            hosts: [format!("127.0.0.1:{port}"), format!("localhost:{port}")],
        }
    }

    fn check_host_and_origin(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let host = headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .ok_or_else(|| ApiError::Forbidden("the request has no Host header".into()))?;
        if !self.hosts.iter().any(|accepted| accepted == host) {
            return Err(ApiError::Forbidden(format!(
                "Host {host:?} is not this panel: use http://{}",
                self.hosts[0]
            )));
        }
        if let Some(origin) = headers.get(ORIGIN) {
            // Same origin only: the scheme is http and the authority is the Host just checked.
            let same_origin = origin.to_str().ok() == Some(format!("http://{host}").as_str());
            if !same_origin {
                return Err(ApiError::Forbidden(
                    "cross-origin requests are refused".to_string(),
                ));
            }
        }
        Ok(())
    }

    fn check_token(&self, headers: &HeaderMap, query: Option<&str>) -> Result<(), ApiError> {
        let from_header = headers
            .get(AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "));
        // EventSource cannot set headers, so `?token=` is accepted too.
        let from_query =
            query.and_then(|q| q.split('&').find_map(|pair| pair.strip_prefix("token=")));
        let presented = from_header.or(from_query).ok_or(ApiError::Unauthorized)?;
        if constant_time_eq(presented.as_bytes(), self.token.expose_secret().as_bytes()) {
            Ok(())
        } else {
            Err(ApiError::Unauthorized)
        }
    }
}

/// Compares without an early exit, so the time taken does not reveal how much of a guess matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Middleware for every route: Host and Origin.
pub async fn require_local_origin(
    State(policy): State<Arc<AccessPolicy>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    policy.check_host_and_origin(request.headers())?;
    Ok(next.run(request).await)
}

/// Middleware for `/api`: the token.
pub async fn require_token(
    State(policy): State<Arc<AccessPolicy>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    policy.check_token(request.headers(), request.uri().query())?;
    Ok(next.run(request).await)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn policy() -> AccessPolicy {
        AccessPolicy::new(SecretString::from("s3cret"), 4000)
    }

    fn headers(pairs: &[(axum::http::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(name.clone(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn only_the_panel_host_and_its_own_origin_pass() {
        let p = policy();
        assert!(p
            .check_host_and_origin(&headers(&[(HOST, "127.0.0.1:4000")]))
            .is_ok());
        assert!(p
            .check_host_and_origin(&headers(&[(HOST, "localhost:4000")]))
            .is_ok());
        assert!(p
            .check_host_and_origin(&headers(&[
                (HOST, "localhost:4000"),
                (ORIGIN, "http://localhost:4000")
            ]))
            .is_ok());
        for bad in [
            headers(&[(HOST, "evil.example:4000")]),
            headers(&[(HOST, "127.0.0.1:4001")]),
            headers(&[]),
            headers(&[(HOST, "127.0.0.1:4000"), (ORIGIN, "http://evil.example")]),
            headers(&[(HOST, "127.0.0.1:4000"), (ORIGIN, "null")]),
            headers(&[(HOST, "127.0.0.1:4000"), (ORIGIN, "http://localhost:4000")]),
        ] {
            assert!(p.check_host_and_origin(&bad).is_err(), "{bad:?} passed");
        }
    }

    #[test]
    fn the_token_comes_from_the_header_or_the_query() {
        let p = policy();
        assert!(p
            .check_token(&headers(&[(AUTHORIZATION, "Bearer s3cret")]), None)
            .is_ok());
        assert!(p
            .check_token(&HeaderMap::new(), Some("a=1&token=s3cret"))
            .is_ok());
        assert!(p.check_token(&HeaderMap::new(), None).is_err());
        assert!(p
            .check_token(&headers(&[(AUTHORIZATION, "Bearer s3cre")]), None)
            .is_err());
        assert!(p.check_token(&HeaderMap::new(), Some("token=")).is_err());
    }
}
