//! Per-client-address connection limit on the public listener.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Counts open public connections per client IP address.
#[derive(Debug)]
pub(crate) struct ConnectionLimiter {
    max_per_address: u32,
    open: Arc<Mutex<HashMap<IpAddr, u32>>>,
}

/// One counted connection; dropping it frees the slot.
#[derive(Debug)]
pub(crate) struct ConnectionPermit {
    addr: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, u32>>>,
}

impl ConnectionLimiter {
    pub(crate) fn new(max_per_address: u32) -> Self {
        Self {
            max_per_address,
            open: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Counts a new connection from `addr`, or returns `None` when that address already has
    /// the maximum open.
    pub(crate) fn acquire(&self, addr: IpAddr) -> Option<ConnectionPermit> {
        let mut open = lock(&self.open);
        let count = open.entry(addr).or_insert(0);
        if *count >= self.max_per_address {
            return None;
        }
        *count += 1;
        Some(ConnectionPermit {
            addr,
            open: self.open.clone(),
        })
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut open = lock(&self.open);
        if let Some(count) = open.get_mut(&self.addr) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.addr);
            }
        }
    }
}

fn lock(open: &Mutex<HashMap<IpAddr, u32>>) -> std::sync::MutexGuard<'_, HashMap<IpAddr, u32>> {
    open.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_counted_per_address() {
        let limiter = ConnectionLimiter::new(2);
        let first: IpAddr = "192.0.2.1".parse().unwrap();
        let second: IpAddr = "192.0.2.2".parse().unwrap();
        let a = limiter.acquire(first).unwrap();
        let _b = limiter.acquire(first).unwrap();
        assert!(limiter.acquire(first).is_none());
        assert!(limiter.acquire(second).is_some());
        drop(a);
        assert!(limiter.acquire(first).is_some());
    }
}
