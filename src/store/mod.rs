//! The state instances share when several run behind one load balancer.
pub(crate) mod sessions;
