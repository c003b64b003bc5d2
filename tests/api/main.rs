//! courier's API tests: one binary; each test gets its own database, port and provider.

mod cache;
mod config;
#[cfg(feature = "fault-injection")]
mod crash;
mod fake_provider;
mod faults;
mod health;
mod helpers;
mod hostile;
mod id_token;
mod linked;
mod login;
mod login_state;
mod logout;
mod logs;
mod openapi;
mod pending_logins;
mod request_bodies;
mod services;
mod session;
mod shutdown;
mod trace;
