//! Real services the tests start on loopback: Redis (and nginx in front of several
//! gateways).

// Each suite uses the part of these it needs.
#![allow(dead_code)]

pub mod nginx;
pub mod redis;
pub mod remote;
pub mod scale;
