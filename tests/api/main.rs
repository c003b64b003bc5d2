//! courier's API tests: one binary; each test gets its own database, port and provider.

mod cache;
mod check_online;
mod config;
#[cfg(feature = "fault-injection")]
mod crash;
mod dot;
mod dpop;
mod fake_provider;
mod faults;
mod fuzz;
mod health;
mod helpers;
mod hostile;
mod id_token;
mod issuer_param;
mod labels;
mod linked;
mod login;
mod login_state;
mod logout;
mod logout_token_compat;
mod logs;
mod openapi;
mod paths;
mod pending_logins;
mod refresh;
mod request_bodies;
mod reseal;
mod review_gaps;
mod service_tokens;
mod services;
mod session;
mod shutdown;
mod token_exchange;
mod trace;
