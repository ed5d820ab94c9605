//! Free loopback ports, chosen at run time.
//!
//! The OS picks a free port when we bind `127.0.0.1:0`; we read it and drop the
//! listener so the server can bind it. There is a small window in which another
//! program could take the port; to keep clusters of one test binary from ever
//! colliding with each other, every port handed out is remembered for the life
//! of the process and never handed out twice.

use std::net::TcpListener;
use std::sync::{Mutex, PoisonError};

/// Ports already given to a cluster by this test process.
static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());

/// A bound on bind attempts, so a machine out of ports fails loudly instead of
/// spinning.
const MAX_BIND_ATTEMPTS: usize = 1_000;

/// Returns `count` distinct ports that were free on 127.0.0.1 a moment ago.
pub fn free_ports(count: usize) -> Vec<u16> {
    // A panicking test may poison the lock; the list itself is still valid.
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
    // All listeners stay open until every port is chosen, so the OS cannot
    // offer the same port twice within one call.
    let mut listeners = Vec::with_capacity(count);
    let mut ports = Vec::with_capacity(count);
    for _ in 0..MAX_BIND_ATTEMPTS {
        if ports.len() == count {
            break;
        }
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        listeners.push(listener);
        if !handed_out.contains(&port) {
            handed_out.push(port);
            ports.push(port);
        }
    }
    assert_eq!(
        ports.len(),
        count,
        "could not find {count} free loopback ports"
    );
    ports
}
