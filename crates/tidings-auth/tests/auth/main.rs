//! Integration tests of `tidings-auth`, in one binary to keep linking cheap.

mod algorithms;
mod claims;
mod common;
mod config;
mod mint;
mod security;
