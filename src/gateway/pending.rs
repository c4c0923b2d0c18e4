//! Pending handshakes per client address: TCP connections accepted and not
//! yet upgraded, counted per address so that one address cannot hold every
//! slot of `limits.max_pending_handshakes` and lock everyone else out.
//!
//! Only the accept loop takes slots; a slot is given back when it is
//! dropped (upgrade done, refused, failed or timed out). This module counts;
//! it does not close connections.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};

/// Counts pending handshakes by client address.
#[derive(Debug)]
pub struct PendingPerAddress {
    limit: usize,
    /// Only addresses with at least one pending handshake are kept, so the
    /// map is never larger than the number of pending handshakes.
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One pending handshake of one address; dropping it gives the slot back.
#[derive(Debug)]
pub struct PendingSlot {
    owner: Arc<PendingPerAddress>,
    address: IpAddr,
}

impl PendingPerAddress {
    pub fn new(limit: usize) -> Arc<PendingPerAddress> {
        Arc::new(PendingPerAddress { limit, counts: Mutex::new(HashMap::new()) })
    }

    /// A slot for a connection from `peer`, or `None` when that address
    /// already has `limit` handshakes pending.
    pub fn try_take(self: &Arc<Self>, peer: IpAddr) -> Option<PendingSlot> {
        let address = grouped(peer);
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let count = counts.entry(address).or_insert(0);
        if *count >= self.limit {
            if *count == 0 {
                counts.remove(&address);
            }
            return None;
        }
        *count += 1;
        Some(PendingSlot { owner: Arc::clone(self), address })
    }

    /// Addresses with a pending handshake.
    #[cfg(test)]
    fn addresses(&self) -> usize {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut counts = self.owner.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.address);
            }
        }
    }
}

/// The key a connection is counted under: an IPv4 address (also when it
/// arrives IPv4-mapped on a dual-stack listener), or the /64 network of an
/// IPv6 address, since one host usually holds a whole /64.
fn grouped(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V4(_) => peer,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !u128::from(u64::MAX))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn an_address_gets_at_most_the_limit_and_others_are_unaffected() {
        let pending = PendingPerAddress::new(2);
        let first = pending.try_take(ip("10.0.0.1")).unwrap();
        let _second = pending.try_take(ip("10.0.0.1")).unwrap();
        assert!(pending.try_take(ip("10.0.0.1")).is_none());
        let _other = pending.try_take(ip("10.0.0.2")).unwrap();
        drop(first);
        assert!(pending.try_take(ip("10.0.0.1")).is_some(), "a dropped slot is given back");
    }

    #[test]
    fn addresses_are_forgotten_when_their_last_slot_is_dropped() {
        let pending = PendingPerAddress::new(1);
        let slots: Vec<_> = (0..50).map(|i| pending.try_take(ip(&format!("10.0.1.{i}"))).unwrap()).collect();
        assert_eq!(pending.addresses(), 50);
        drop(slots);
        assert_eq!(pending.addresses(), 0);
    }

    #[test]
    fn ipv6_is_counted_per_64_and_mapped_ipv4_as_ipv4() {
        let pending = PendingPerAddress::new(1);
        let _a = pending.try_take(ip("2001:db8:1:2::1")).unwrap();
        assert!(pending.try_take(ip("2001:db8:1:2:ffff::9")).is_none(), "same /64");
        assert!(pending.try_take(ip("2001:db8:1:3::1")).is_some(), "another /64");
        let _v4 = pending.try_take(ip("192.0.2.7")).unwrap();
        assert!(pending.try_take(ip("::ffff:192.0.2.7")).is_none(), "mapped form of the same address");
    }
}
