//! The command line's own parts, beside the commands in `main.rs`: the exit-code table and
//! the examples each command's `--help` shows, `send-test` and `bounces ingest`.

pub mod bounces;
pub mod exit;
pub mod help;
pub mod send_test;
