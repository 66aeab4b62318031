//! The private-network keys a node connects with.
//!
//! A store changes its network key with each key epoch (after a revocation), and its members learn
//! the new one at different moments: one that was off during the revocation still has only the old
//! key when it comes back. So a node accepts connections under its current key only (a node that
//! holds no later key than the revoked one cannot connect to it), but dials with the current key
//! first and, address by address, with each older key it holds after a handshake fails. A member
//! that moved on therefore still reaches one that has not, which then learns the new epoch from it
//! by anti-entropy and moves on too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;

/// Addresses whose next key is remembered (peers of a store; cleared when it overflows).
const MAX_ADDRS: usize = 1024;

/// Shared by the transport (which reads a key for each connection) and the mesh actor.
#[derive(Clone)]
pub struct NetworkKeys(Arc<Mutex<Inner>>);

struct Inner {
    /// The current key first, never empty.
    keys: Vec<[u8; 32]>,
    /// Per address, which key the next dial uses (an index into `keys`).
    next: HashMap<Multiaddr, usize>,
}

impl NetworkKeys {
    pub fn new(current: [u8; 32]) -> Self {
        NetworkKeys(Arc::new(Mutex::new(Inner {
            keys: vec![current],
            next: HashMap::new(),
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The keys from now on, the current one first (repeats dropped; empty: no change). Whether they
    /// changed.
    pub fn set(&self, keys: &[[u8; 32]]) -> bool {
        let mut unique: Vec<[u8; 32]> = Vec::with_capacity(keys.len());
        for k in keys {
            if !unique.contains(k) {
                unique.push(*k);
            }
        }
        let mut inner = self.lock();
        if unique.is_empty() || unique == inner.keys {
            return false;
        }
        inner.keys = unique;
        inner.next.clear();
        true
    }

    /// The key for a connection someone else opened: the current one.
    pub fn accept(&self) -> [u8; 32] {
        self.lock().keys[0]
    }

    /// The key for the next connection to `addr`.
    pub fn dial(&self, addr: &Multiaddr) -> [u8; 32] {
        let inner = self.lock();
        let i = inner.next.get(&bare(addr)).copied().unwrap_or(0);
        inner.keys[i % inner.keys.len()]
    }

    /// A connection to `addr` failed after the TCP connection was made (a wrong key looks like
    /// that): the next one tries the next key.
    pub fn failed(&self, addr: &Multiaddr) {
        let mut inner = self.lock();
        if inner.keys.len() < 2 {
            return;
        }
        if inner.next.len() >= MAX_ADDRS {
            inner.next.clear();
        }
        let n = inner.keys.len();
        let i = inner.next.entry(bare(addr)).or_insert(0);
        *i = (*i + 1) % n;
    }

    /// How many keys are held.
    pub fn count(&self) -> usize {
        self.lock().keys.len()
    }
}

/// The address without the peer id the swarm may add to it.
fn bare(addr: &Multiaddr) -> Multiaddr {
    addr.iter().filter(|p| !matches!(p, Protocol::P2p(_))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dials_fall_back_to_older_keys_address_by_address_and_accept_only_the_current_one() {
        let (k0, k1) = ([0u8; 32], [1u8; 32]);
        let keys = NetworkKeys::new(k0);
        let a: Multiaddr = "/ip4/10.0.0.1/tcp/4001".parse().unwrap();
        let a_named: Multiaddr = format!("{a}/p2p/12D3KooWLJtG8fd2hkQzTn96MrLvThmnNQjTUFZwGEsLRz5EmSzc")
            .parse()
            .unwrap();
        let b: Multiaddr = "/ip4/10.0.0.2/tcp/4001".parse().unwrap();
        keys.failed(&a);
        assert_eq!(keys.dial(&a), k0, "one key: nothing to fall back to");
        assert!(keys.set(&[k1, k0, k1]));
        assert!(!keys.set(&[k1, k0]), "the same keys: no change");
        assert_eq!(keys.count(), 2);
        assert_eq!((keys.accept(), keys.dial(&a), keys.dial(&b)), (k1, k1, k1));
        keys.failed(&a_named);
        assert_eq!((keys.dial(&a), keys.dial(&a_named), keys.dial(&b)), (k0, k0, k1));
        assert_eq!(keys.accept(), k1, "a dial's fallback never changes what is accepted");
        keys.failed(&a);
        assert_eq!(keys.dial(&a), k1, "round again");
        keys.failed(&a);
        assert!(keys.set(&[[2; 32], k1, k0]));
        assert_eq!(
            keys.dial(&a),
            [2; 32],
            "a new epoch starts every address at the current key"
        );
        assert!(!keys.set(&[]));
    }
}
