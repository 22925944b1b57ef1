//! The Socket.IO endpoint with the echo handlers the upstream Engine.IO and
//! Socket.IO protocol test suites expect (`socketio/engine.io-protocol`,
//! `socketio/socket.io-protocol`, folder `test-suite`), on `localhost:3000`:
//! `cargo run --release --example socketio-conformance [-- --listen ADDRESS]`.
//!
//! It serves `tidings::transport::socketio::conformance_router`: the same
//! Engine.IO and packet code as the server's `/socket.io/`, with pingInterval
//! 300 ms, pingTimeout 200 ms, maxPayload 1e6, namespaces `/` and `/custom`,
//! `message` → `message-back`, `message-with-ack` acknowledged, `auth` echoed;
//! and `/engine.io/` for the Engine.IO suite, where every message is echoed.
//! It is an example, never part of the `tidings` binary.

use std::net::SocketAddr;

use tidings::transport::socketio::conformance_router;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut listen = SocketAddr::from(([127, 0, 0, 1], 3000));
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--listen", Some(address)) => listen = address.parse()?,
            _ => {
                return Err(
                    format!("usage: socketio-conformance [--listen ADDRESS]; got {arg}").into(),
                )
            }
        }
    }
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!(
        "socketio-conformance listening on {}",
        listener.local_addr()?
    );
    axum::serve(listener, conformance_router()).await?;
    Ok(())
}
