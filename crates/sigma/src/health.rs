//! The bodies of sigma's built-in `/healthz` and of the store's lines in
//! `/metrics` (dispatch answers both, [`crate::dispatch`]).

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
