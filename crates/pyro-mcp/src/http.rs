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
    let mut router = axum::Router::new().nest_service(MCP_PATH, service);
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
    fn tokens_compare_exactly() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
    }
}
