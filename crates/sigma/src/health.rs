//! The bodies of sigma's built-in `/healthz` and `/metrics` (dispatch
//! answers both, [`crate::dispatch`]).

/// The body of `/healthz`: `ok` on the embedded store; with PostgreSQL
/// `ok` or `degraded` (the node keeps serving what does not need the
/// store) and a line per dependency state, e.g. `store postgres up` and
/// `store_listen up` (the cross-node `&db` change feed).
pub fn health_text(s: crate::store::StoreStatus) -> String {
    if s.kind == "redb" {
        return "ok\n".to_owned();
    }
    let word = |up: bool| if up { "up" } else { "down" };
    format!(
        "{}\nstore {} {}\nstore_listen {}\n",
        if s.up && s.listening {
            "ok"
        } else {
            "degraded"
        },
        s.kind,
        word(s.up),
        word(s.listening)
    )
}

/// The `/healthz` response ([`health_text`]).
pub fn health_response(s: crate::store::StoreStatus) -> sigma_http::Response {
    let mut r = sigma_core::response::plain(200, "");
    r.body = health_text(s).into();
    r
}

/// The store's lines of `/metrics`.
pub fn store_metrics(s: crate::store::StoreStatus) -> String {
    format!(
        "# HELP sigma_store_up 1 while the store answers (PostgreSQL: the last operation reached it).\n\
         # TYPE sigma_store_up gauge\n\
         sigma_store_up{{kind=\"{kind}\"}} {up}\n\
         # HELP sigma_store_unavailable_total Store operations that failed because the store was unreachable.\n\
         # TYPE sigma_store_unavailable_total counter\n\
         sigma_store_unavailable_total{{kind=\"{kind}\"}} {failures}\n",
        kind = s.kind,
        up = u8::from(s.up),
        failures = s.failures
    )
}

/// The whole `/metrics` response: sigma's counters, the store's lines and
/// every route's destination samples.
pub fn metrics_response(
    metrics: &crate::metrics::Metrics,
    open: usize,
    store: crate::store::StoreStatus,
    routes: &crate::route::RouteTable,
) -> sigma_http::Response {
    let mut body = metrics.render(open);
    body.push_str(&store_metrics(store));
    crate::metrics::render_samples(
        &mut body,
        routes
            .routes()
            .iter()
            .map(|r| (r.path.as_str(), r.dest.metrics())),
    );
    sigma_http::Response::new(
        200,
        vec![sigma_http::Header::new(
            &b"Content-Type"[..],
            &b"text/plain; version=0.0.4; charset=utf-8"[..],
        )],
        body,
    )
}
