//! Bench peer: a minimal axum hello-world. `GET /echo` (and any other
//! path) answers an empty `200`, like sigma's `&echo` with no body and
//! nginx's `return 200 ""`. One tokio worker thread, as `sigma serve
//! --workers 1` gets.
//!
//! Usage: `axum-hello ADDR` (default `127.0.0.1:3001`); prints
//! `listening on ADDR` when ready.

use axum::Router;

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3001".to_string());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let app = Router::new().fallback(|| async {});
        let listener = tokio::net::TcpListener::bind(&addr).await?;
        println!("listening on {}", listener.local_addr()?);
        // TCP_NODELAY, as sigma and nginx set on their connections.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, app).await
    })
}
