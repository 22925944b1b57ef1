//! Integration tests over real sockets against an in-process server.

mod support;

mod auth;
mod bad_input;
mod cancellation;
mod closing;
mod cluster;
mod compression;
mod consumers;
mod faulty_broker;
mod http_transports;
mod liveness;
mod openapi;
mod panics;
mod permissions;
mod presence;
mod properties;
mod publish;
mod reclaim;
mod recovery;
mod socketio;
