//! Integration tests, one binary: real PostgreSQL, RabbitMQ and SMTP server, one module per
//! capability.

mod admin;
mod binary;
mod browser;
mod claims;
mod cli;
mod contact;
mod contract;
mod dead_letter;
mod delivery;
mod digest;
mod dkim;
mod erasure;
mod fan_out;
mod helpers;
mod hostile;
mod newsletter;
mod ops;
mod outbox;
mod proxy;
mod reliability;
mod retention;
mod schema;
mod sessions;
mod smtp_client;
mod web;
