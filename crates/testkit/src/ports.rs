//! Free loopback ports, chosen at run time.
//!
//! A port is picked at random below the kernel's ephemeral range (so that no
//! outgoing connection can take a stopped node's port meanwhile) and bound to
//! check that it is free; the listener is dropped so the server can bind it.
//! There is a small window in which another program could take the port; to
//! keep clusters of one test binary from ever
//! colliding with each other, every port handed out is remembered for the life
//! of the process and never handed out twice.

use std::net::TcpListener;
use std::sync::{Mutex, PoisonError};

/// Ports already given to a cluster by this test process.
static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());

/// A bound on bind attempts, so a machine out of ports fails loudly instead of
/// spinning.
const MAX_BIND_ATTEMPTS: usize = 1_000;

/// Ports below the kernel's ephemeral range (`ip_local_port_range`), from
/// 10000; the whole range above 1024 if that cannot be read.
fn non_ephemeral_range() -> (u16, u16) {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u16>().ok());
    match ephemeral_low {
        Some(low) if low > 12_000 => (10_000, low),
        _ => (1025, 65535),
    }
}

/// Returns `count` distinct ports that were free on 127.0.0.1 a moment ago.
pub fn free_ports(count: usize) -> Vec<u16> {
    // A panicking test may poison the lock; the list itself is still valid.
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
    // All listeners stay open until every port is chosen, so the OS cannot
    // offer the same port twice within one call.
    let mut listeners = Vec::with_capacity(count);
    let mut ports = Vec::with_capacity(count);
    let (low, high) = non_ephemeral_range();
    for _ in 0..MAX_BIND_ATTEMPTS {
        if ports.len() == count {
            break;
        }
        // Outside the kernel's ephemeral range: a node that is down for a
        // while must find its port free again, and the local port of some
        // outgoing connection is always taken from the ephemeral range.
        let port = rand::Rng::gen_range(&mut rand::thread_rng(), low..high);
        if handed_out.contains(&port) {
            continue;
        }
        let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) else {
            continue;
        };
        listeners.push(listener);
        handed_out.push(port);
        ports.push(port);
    }
    assert_eq!(
        ports.len(),
        count,
        "could not find {count} free loopback ports"
    );
    ports
}

/// Returns the first of `count` consecutive ports that were all free on
/// 127.0.0.1 a moment ago (for commands that number ports from a base, like
/// `raftkv playground --port N`).
pub fn free_port_block(count: u16) -> u16 {
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
    let (low, high) = non_ephemeral_range();
    for _ in 0..MAX_BIND_ATTEMPTS {
        let base = rand::Rng::gen_range(&mut rand::thread_rng(), low..high - count);
        let ports: Vec<u16> = (base..base + count).collect();
        if ports.iter().any(|p| handed_out.contains(p)) {
            continue;
        }
        let bound: Vec<TcpListener> = ports
            .iter()
            .map_while(|p| TcpListener::bind(("127.0.0.1", *p)).ok())
            .collect();
        if bound.len() == ports.len() {
            handed_out.extend(&ports);
            return base;
        }
    }
    panic!("could not find {count} consecutive free loopback ports");
}
