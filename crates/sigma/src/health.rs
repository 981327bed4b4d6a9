//! The bodies of sigma's built-in `/healthz` and `/metrics` (dispatch
//! answers both, [`crate::dispatch`]).

/// The dependencies `/healthz` and `/metrics` report on: the store, and
/// Redis when `[cluster] redis` is set.
#[derive(Clone)]
pub struct Deps {
    /// The store's connection state.
    pub store: std::sync::Arc<dyn crate::store::StoreHealth>,
    /// The connection to Redis (`[cluster] redis`), if any.
    pub cluster: Option<std::sync::Arc<sigma_store::Cluster>>,
}

/// The body of `/healthz`: `ok` on the embedded store without Redis; else
/// `ok` or `degraded` (the node keeps serving what does not need the
/// failed dependency) and a line per dependency state, e.g. `store
/// postgres up`, `store_listen up` (the cross-node `&db` change feed),
/// `redis up` and `redis_pubsub up` (cross-node broadcast).
pub fn health_text(deps: &Deps) -> String {
    let s = deps.store.status();
    let redis = deps.cluster.as_ref().map(|c| c.status());
    if s.kind == "redb" && redis.is_none() {
        return "ok\n".to_owned();
    }
    let word = |up: bool| if up { "up" } else { "down" };
    let mut ok = true;
    let mut lines = String::new();
    if s.kind != "redb" {
        ok &= s.up && s.listening;
        lines.push_str(&format!(
            "store {} {}\nstore_listen {}\n",
            s.kind,
            word(s.up),
            word(s.listening)
        ));
    }
    if let Some(r) = redis {
        ok &= r.commands && r.pubsub;
        lines.push_str(&format!(
            "redis {}\nredis_pubsub {}\n",
            word(r.commands),
            word(r.pubsub)
        ));
    }
    format!("{}\n{lines}", if ok { "ok" } else { "degraded" })
}

/// The `/healthz` response ([`health_text`]).
pub fn health_response(deps: &Deps) -> sigma_http::Response {
    let mut r = sigma_core::response::plain(200, "");
    r.body = health_text(deps).into();
    r
}

/// The dependencies' lines of `/metrics`.
pub fn deps_metrics(deps: &Deps) -> String {
    let s = deps.store.status();
    let mut out = format!(
        "# HELP sigma_store_up 1 while the store answers (PostgreSQL: the last operation reached it).\n\
         # TYPE sigma_store_up gauge\n\
         sigma_store_up{{kind=\"{kind}\"}} {up}\n\
         # HELP sigma_store_unavailable_total Store operations that failed because the store was unreachable.\n\
         # TYPE sigma_store_unavailable_total counter\n\
         sigma_store_unavailable_total{{kind=\"{kind}\"}} {failures}\n",
        kind = s.kind,
        up = u8::from(s.up),
        failures = s.failures
    );
    if let Some(r) = deps.cluster.as_ref().map(|c| c.status()) {
        out.push_str(&format!(
            "# HELP sigma_redis_up 1 while Redis answers commands (conn=\"commands\") and delivers publications (conn=\"pubsub\").\n\
             # TYPE sigma_redis_up gauge\n\
             sigma_redis_up{{conn=\"commands\"}} {}\n\
             sigma_redis_up{{conn=\"pubsub\"}} {}\n\
             # HELP sigma_redis_unavailable_total Redis operations that failed because Redis was unreachable.\n\
             # TYPE sigma_redis_unavailable_total counter\n\
             sigma_redis_unavailable_total {}\n\
             # HELP sigma_redis_lost_total Times the pub/sub connection to Redis was lost (its subscribers were closed with 1011).\n\
             # TYPE sigma_redis_lost_total counter\n\
             sigma_redis_lost_total {}\n",
            u8::from(r.commands),
            u8::from(r.pubsub),
            r.failures,
            r.lost
        ));
    }
    out
}

/// The whole `/metrics` response: sigma's counters, the dependencies' lines and
/// every route's destination samples.
pub fn metrics_response(
    metrics: &crate::metrics::Metrics,
    open: usize,
    deps: &Deps,
    routes: &crate::route::RouteTable,
) -> sigma_http::Response {
    let mut body = metrics.render(open);
    body.push_str(&deps_metrics(deps));
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
