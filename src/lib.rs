//! courier: a backend-for-frontend for single-page apps. See README.md and ../SPEC.

// No `unwrap`/`expect` outside tests: a request path answers with an error instead; the few
// start-up-only uses say why with an `#[allow]`.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod app_cache;
pub mod body_deadline;
pub mod cache;
pub mod check;
pub mod clock;
pub mod config;
pub mod connections;
pub mod crypto;
pub mod db;
pub mod domain;
pub mod dpop;
pub mod error;
pub mod fault;
pub mod housekeeping;
pub mod limits;
pub mod live;
pub mod metrics;
pub mod middleware;
pub mod oidc;
pub mod proxy;
pub mod request_context;
pub mod reseal;
pub mod routes;
pub mod services;
pub mod session;
pub mod sessions_command;
pub mod startup;
pub mod state;
pub mod telemetry;
pub mod tokens;
pub mod websocket;
