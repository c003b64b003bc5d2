//! HTTP handlers, thin: parse, call one domain function, map the result.

pub mod auth;
pub mod extract;
pub mod health;
pub mod logout;
pub mod me;
pub mod services;
