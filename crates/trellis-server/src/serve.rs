//! The HTTP side: routes, the authentication layer, and the accept loop (TLS with rustls,
//! or plain HTTP when asked for explicitly).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::{resources, Server};

/// All routes. Cluster-scoped kinds live at `/v1/<plural>[/<name>]`, namespaced ones at
/// `/v1/namespaces/<ns>/<plural>[/<name>]` (and `/v1/<plural>` lists them across
/// namespaces).
pub fn router(server: Arc<Server>) -> Router {
    let api = Router::new()
        .route("/v1/{plural}", get(resources::list).post(resources::create))
        .route(
            "/v1/{plural}/{name}",
            get(resources::get)
                .put(resources::update)
                .delete(resources::delete),
        )
        .route(
            "/v1/namespaces/{ns}/{plural}",
            get(resources::list).post(resources::create),
        )
        .route(
            "/v1/namespaces/{ns}/{plural}/{name}",
            get(resources::get)
                .put(resources::update)
                .delete(resources::delete),
        )
        .route("/v1/nodes/{name}/heartbeat", post(resources::heartbeat))
        .route(
            "/v1/nodes/{name}/subnets/{network}",
            post(resources::acquire_subnet),
        )
        .layer(middleware::from_fn_with_state(server.clone(), authenticate));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .merge(api)
        .with_state(server)
}

/// Put the caller's [`crate::auth::Role`] into the request, or answer 401.
async fn authenticate(
    State(server): State<Arc<Server>>,
    mut req: Request,
    next: Next,
) -> Result<Response, crate::ApiError> {
    let header = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    let role = server.tokens.authenticate(header)?;
    req.extensions_mut().insert(role);
    Ok(next.run(req).await)
}

/// Serve `router` on `listener` until the process ends: over TLS when `tls` is given,
/// plain HTTP otherwise.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> std::io::Result<()> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let svc = TowerToHyperService::new(router.clone());
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let http = hyper::server::conn::http1::Builder::new();
            let r = match acceptor {
                Some(a) => match a.accept(tcp).await {
                    Ok(tls) => http.serve_connection(TokioIo::new(tls), svc).await,
                    Err(e) => {
                        tracing::debug!(%peer, "TLS handshake: {e}");
                        return;
                    }
                },
                None => http.serve_connection(TokioIo::new(tcp), svc).await,
            };
            if let Err(e) = r {
                tracing::debug!(%peer, "connection: {e}");
            }
        });
    }
}
