//! Integration tests, one binary: real PostgreSQL, RabbitMQ and SMTP server, one module per
//! capability.

mod cli;
mod contact;
mod dead_letter;
mod delivery;
mod digest;
mod helpers;
mod ops;
mod retention;
mod sessions;
