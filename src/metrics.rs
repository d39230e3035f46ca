//! The gateway's metrics in the Prometheus text format, served at `/metrics` on the
//! admin listener.
//!
//! This is the mount point only: it renders nothing yet, until the metrics are
//! recorded.

/// Every metric, in the Prometheus text exposition format.
pub fn render() -> String {
    String::new()
}
