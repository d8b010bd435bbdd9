//! The tunnel's tests on real servers: Postgres from `scripts/test-services`, a bore server and
//! stand-in API and panel in-process on loopback.

mod bore;
mod common;
mod ngrok;
