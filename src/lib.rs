//! courier: a backend-for-frontend for single-page apps. See README.md and ../SPEC.

pub mod body_deadline;
pub mod cache;
pub mod check;
pub mod clock;
pub mod config;
pub mod connections;
pub mod crypto;
pub mod db;
pub mod error;
pub mod fault;
pub mod housekeeping;
pub mod limits;
pub mod metrics;
pub mod middleware;
pub mod oidc;
pub mod proxy;
pub mod reseal;
pub mod routes;
pub mod services;
pub mod session;
pub mod startup;
pub mod telemetry;
pub mod tokens;
