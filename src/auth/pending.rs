//! Sockets that have not finished `hello`, counted per client address, so that idle
//! half-open sockets from one place cannot exhaust the gateway (`maxPendingPerIp`).
//!
//! IPv6 clients are counted per /64, the block one host usually holds. The map holds an
//! entry only while that address has a pending socket, so it is bounded by the number of
//! pending sockets (which `maxSessions` bounds).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};

/// Pending sockets per client address.
#[derive(Debug)]
pub struct PendingPerIp {
    limit: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

impl PendingPerIp {
    /// At most `limit` pending sockets per address.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// The configured limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Counts a new pending socket from `peer`, unless that address has `limit` already.
    pub fn enter(self: &Arc<Self>, peer: IpAddr) -> Option<PendingSlot> {
        let address = block_of(peer);
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let count = counts.entry(address).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(PendingSlot {
            owner: self.clone(),
            address,
        })
    }

    /// Pending sockets of `peer`'s address.
    pub fn count(&self, peer: IpAddr) -> usize {
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.get(&block_of(peer)).copied().unwrap_or(0)
    }

    fn leave(&self, address: IpAddr) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&address) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&address);
            }
        }
    }
}

/// One pending socket; dropping it (once `hello` is done, or the socket gone) frees it.
#[derive(Debug)]
pub struct PendingSlot {
    owner: Arc<PendingPerIp>,
    address: IpAddr,
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.owner.leave(self.address);
    }
}

/// The address a client is counted under: IPv4 as is (also when mapped into IPv6), IPv6
/// by its /64.
fn block_of(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V4(_) => peer,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_has_its_own_count() {
        let pending = PendingPerIp::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = pending.enter(a).unwrap();
        let _second = pending.enter(a).unwrap();
        assert!(pending.enter(a).is_none());
        assert!(pending.enter(b).is_some());
        drop(first);
        assert_eq!(pending.count(a), 1);
        assert!(pending.enter(a).is_some());
    }

    #[test]
    fn entries_leave_the_map_with_their_last_socket() {
        let pending = PendingPerIp::new(1);
        let slots: Vec<_> = (0..100u8)
            .map(|i| pending.enter(IpAddr::from([10, 0, 0, i])).unwrap())
            .collect();
        assert_eq!(pending.counts.lock().unwrap().len(), 100);
        drop(slots);
        assert!(pending.counts.lock().unwrap().is_empty());
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let pending = PendingPerIp::new(1);
        let _one = pending.enter("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert!(
            pending
                .enter("2001:db8:1:2:ffff::9".parse().unwrap())
                .is_none()
        );
        assert!(pending.enter("2001:db8:1:3::1".parse().unwrap()).is_some());
        let _v4 = pending.enter("192.0.2.1".parse().unwrap()).unwrap();
        assert!(pending.enter("::ffff:192.0.2.1".parse().unwrap()).is_none());
    }
}
