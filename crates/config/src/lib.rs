//! Where Lookit Local keeps its files ([`Home`]), what the user configured ([`Config`]) and the
//! secrets it generated for itself ([`Secrets`]).
//!
//! Invariants:
//! - A [`Config`] value only exists if every key was known, well typed and valid; a bad file or
//!   environment override is a [`ConfigError`] naming the key and where it came from.
//! - Secrets are generated once, stored owner-readable only (0600) and never printed: their
//!   `Debug` is redacted and [`Config`] holds none of them.

mod error;
mod home;
mod load;
mod schema;
mod secrets;

pub use error::ConfigError;
pub use home::Home;
pub use load::ENV_PREFIX;
pub use schema::*;
pub use secrets::{random_token, write_private, Secrets, SecretsError};
