//! Streamable HTTP transport: rmcp's `StreamableHttpService` behind axum, at `/mcp`, with an
//! optional bearer token. Loopback addresses may serve without a token (only local processes
//! reach them); any other address needs one, since whoever reaches the port can run commands.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use crate::{shut_down, PyroTools, Reaper, ServeConfig, ServeError};

/// Where and how to listen.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// The address to bind, e.g. `127.0.0.1:8765`.
    pub addr: SocketAddr,
    /// Clients must send `Authorization: Bearer TOKEN`; required on non-loopback addresses.
    pub bearer_token: Option<String>,
    /// Browser origins allowed besides loopback ones (`http://localhost:6274`,
    /// `http://127.0.0.1:…`, `http://[::1]:…` always are), e.g. `https://inspector.example`.
    pub allowed_origins: Vec<String>,
}

/// Whether a request's `Origin` may reach the server. The MCP specification asks servers to
/// validate it, against DNS rebinding: a web page can make a browser send requests to a
/// loopback port, but the browser always names the page's origin. A request without an
/// `Origin` comes from something that is not a browser page, and is left to the token and
/// Host checks. A loopback origin (any port) is a local tool such as the MCP Inspector.
pub fn origin_allowed(origin: &str, allowed: &[String]) -> bool {
    let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
    if allowed
        .iter()
        .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(&origin))
    {
        return true;
    }
    let Some(rest) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return false;
    };
    let host = if let Some(v6) = rest.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        rest.split(':').next().unwrap_or("")
    };
    if rest.contains('/') || rest.contains('@') {
        return false;
    }
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

async fn check_origin(
    State(allowed): State<Arc<Vec<String>>>,
    req: Request,
    next: Next,
) -> Response {
    let origin = req.headers().get(header::ORIGIN).map(|v| v.to_str());
    match origin {
        None => next.run(req).await,
        Some(Ok(o)) if origin_allowed(o, &allowed) => next.run(req).await,
        Some(o) => {
            let shown = o.unwrap_or("(not text)");
            tracing::warn!("refused a request from origin {shown}");
            (
                StatusCode::FORBIDDEN,
                format!(
                    "origin {shown} is not allowed: only loopback origins are, unless `pyro mcp serve --allow-origin ORIGIN` names it\n"
                ),
            )
                .into_response()
        }
    }
}

/// The path the MCP endpoint is served at.
pub const MCP_PATH: &str = "/mcp";

/// Compares in time independent of where the first difference is, so the token cannot be
/// guessed byte by byte from response times.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_token(State(token): State<Arc<String>>, req: Request, next: Next) -> Response {
    let ok = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| same(t.trim().as_bytes(), token.as_bytes()));
    if ok {
        next.run(req).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "missing or wrong bearer token\n",
        )
            .into_response()
    }
}

/// Serves MCP over streamable HTTP at `http://ADDR/mcp` until `shutdown` completes. Prints
/// nothing; the caller may announce the bound address, which `on_bound` receives (useful with
/// port 0).
pub async fn serve_http(
    pyro: pyro::Pyro,
    config: ServeConfig,
    http: HttpConfig,
    on_bound: impl FnOnce(SocketAddr),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let token = http.bearer_token.filter(|t| !t.is_empty());
    if !http.addr.ip().is_loopback() && token.is_none() {
        return Err(ServeError::TokenRequired(http.addr.to_string()));
    }
    let listener = tokio::net::TcpListener::bind(http.addr)
        .await
        .map_err(|source| ServeError::Http {
            addr: http.addr.to_string(),
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| ServeError::Http {
        addr: http.addr.to_string(),
        source,
    })?;
    let _reaper = Reaper::start(pyro.clone(), config.reap_interval);
    let tools = PyroTools::new(pyro.clone(), config.profile, config.roots);
    let ct = CancellationToken::new();
    let mut mcp_config = StreamableHttpServerConfig::default();
    mcp_config.cancellation_token = ct.child_token();
    if !bound.ip().is_loopback() {
        // rmcp only accepts loopback Host headers by default (against DNS rebinding); a
        // server on a public address is reached by other names, and the token guards it.
        mcp_config = mcp_config.disable_allowed_hosts();
    }
    let factory = tools.clone();
    let service: StreamableHttpService<PyroTools, LocalSessionManager> = StreamableHttpService::new(
        move || Ok(factory.clone()),
        Arc::new(LocalSessionManager::default()),
        mcp_config,
    );
    let mut router = axum::Router::new().nest_service(MCP_PATH, service).layer(
        axum::middleware::from_fn_with_state(Arc::new(http.allowed_origins), check_origin),
    );
    if let Some(t) = token {
        router = router.layer(axum::middleware::from_fn_with_state(
            Arc::new(t),
            require_token,
        ));
    }
    on_bound(bound);
    let stop = ct.clone();
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            shutdown.await;
            stop.cancel();
        })
        .await;
    ct.cancel();
    shut_down(&pyro, &tools).await;
    served.map_err(|source| ServeError::Http {
        addr: bound.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_or_named_origins_pass() {
        let named = vec!["https://inspector.example".to_string()];
        for ok in [
            "http://localhost:6274",
            "http://localhost",
            "http://127.0.0.1:8765",
            "https://127.0.0.2",
            "http://[::1]:3000",
            "HTTP://LOCALHOST:1",
            "https://inspector.example",
            "https://inspector.example/",
        ] {
            assert!(origin_allowed(ok, &named), "{ok}");
        }
        for bad in [
            "https://evil.example",
            "http://localhost.evil.example",
            "http://127.0.0.1.nip.io",
            "http://evil.example@127.0.0.1",
            "null",
            "file://",
            "http://10.0.0.1:8765",
            "https://inspector.example.evil",
        ] {
            assert!(!origin_allowed(bad, &named), "{bad}");
        }
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
    }
}
