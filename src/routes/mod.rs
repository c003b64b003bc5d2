//! HTTP handlers: each parses the request, calls one domain function and maps its typed error
//! (`error`) or result to a response.

pub mod auth;
mod error;
pub mod extract;
pub mod health;
pub mod logout;
pub mod me;
pub mod services;
pub mod sessions;
