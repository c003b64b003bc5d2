//! Providers: discovery, the login flow and ID-token checks. All HTTP to providers lives here.

pub mod client_auth;
pub mod grants;
pub mod http;
pub mod id_token;
pub mod login;
pub mod login_options;
pub mod logout_token;
pub mod par;
pub mod pending;
pub mod registry;
pub mod revocation;
pub mod token_endpoint;

pub use registry::{Provider, ProviderRegistry};
