//! `/metrics`: the Prometheus metrics of the datastore (`ipam-metrics`), for `ipamctl
//! serve` (computed from one read of the store per scrape, anonymous like every read) and
//! for the controller (what its passes computed, behind its own bearer token when it has
//! one).

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ipam_core::Datastore;
use ipam_core::check::{Snapshot, tally};
use ipam_metrics::plugin::read_stats_file;
use ipam_metrics::{CONTENT_TYPE, Metrics};

use crate::ApiServer;
use crate::access::Token;
use crate::object::{Status, StatusReason};

/// A router serving `metrics` as they are on `/metrics`; with a token, every request must
/// carry it (`Authorization: Bearer TOKEN`), else 401.
pub fn router(metrics: Arc<Metrics>, token: Option<Token>) -> Router {
    let app = Router::new()
        .route("/metrics", get(render))
        .with_state(metrics);
    match token {
        Some(t) => app.layer(axum::middleware::from_fn_with_state(Arc::new(t), bearer)),
        None => app,
    }
}

/// `ipamctl serve`'s `/metrics`: the store read once, counted and rendered.
pub(crate) async fn scrape<D: Datastore + 'static>(
    State(server): State<Arc<ApiServer<D>>>,
) -> Response {
    match Snapshot::read(server.store()).await {
        Ok(snapshot) => {
            let metrics = Metrics::new();
            metrics.observe(&tally(&snapshot));
            if let Some(path) = &server.options.plugin_stats {
                // A damaged file costs the plugin's metrics, not the datastore's.
                match read_stats_file(path) {
                    Ok(Some(stats)) => metrics.observe_plugin(stats),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "plugin metrics left out"),
                }
            }
            text(metrics.render())
        }
        Err(e) => Status::new(
            503,
            StatusReason::ServiceUnavailable,
            format!("datastore unavailable: {e}"),
        )
        .into_response(),
    }
}

async fn render(State(metrics): State<Arc<Metrics>>) -> Response {
    text(metrics.render())
}

fn text(body: String) -> Response {
    let mut resp = Response::new(Body::from(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(CONTENT_TYPE),
    );
    resp
}

/// Lets a request through only with the bearer token.
async fn bearer(State(token): State<Arc<Token>>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if presented.is_some_and(|p| token.matches(p.trim())) {
        return next.run(req).await;
    }
    let mut resp = (StatusCode::UNAUTHORIZED, "a bearer token is required\n").into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    resp
}
