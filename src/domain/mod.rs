//! Plain domain types that several layers share: storage reads and writes them, services
//! compute with them, the cache keeps them. A leaf: it imports nothing of courier but other
//! leaves, so that no storage module has to import a service module for a type.

pub mod session;
pub mod tokens;
pub mod user_agent;
