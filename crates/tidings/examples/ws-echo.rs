//! A WebSocket echo server for the Autobahn|Testsuite (`scripts/autobahn.sh`):
//! `cargo run --release --example ws-echo -- --listen 127.0.0.1:9001`.
//!
//! It serves `tidings::transport::websocket::echo_router`, which upgrades with
//! the limits of the default configuration and reads, answers and closes
//! through the same code as the server's `/ws`, permessage-deflate included.
//! `--max-message-size BYTES` raises `connection.max_message_size` (the
//! compression cases 12 and 13 send messages of up to 128 KiB). It is an
//! example, never part of the `tidings` binary.

use std::net::SocketAddr;

use tidings::config::Config;
use tidings::transport::websocket::echo_router;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut listen = SocketAddr::from(([127, 0, 0, 1], 9001));
    let mut config = Config::default();
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--listen", Some(address)) => listen = address.parse()?,
            ("--max-message-size", Some(bytes)) => {
                config.connection.max_message_size = bytes.parse()?
            }
            _ => {
                return Err(format!(
                    "usage: ws-echo [--listen ADDRESS] [--max-message-size BYTES]; got {arg}"
                )
                .into())
            }
        }
    }
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("ws-echo listening on {}", listener.local_addr()?);
    axum::serve(listener, echo_router(config)).await?;
    Ok(())
}
