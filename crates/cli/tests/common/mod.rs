//! Helpers shared by the acceptance test binaries (each `tests/*.rs` includes
//! this module): the binary's path, a background writer that records exactly
//! which writes were acknowledged, and full scans through the client library.
//!
//! The writer behaves like an ordinary application: it calls `put` and never
//! handles redirects or leader changes itself; it retries only on the errors a
//! caller is told to retry (timeout, unavailable, unknown outcome), printing
//! each one. Any other error fails the test.

#![allow(dead_code)] // each test binary uses a different subset

pub mod storage;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use raftkv_client::{Client, Consistency, Error, ScanOptions};

/// The `raftkv` binary cargo built for these tests.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_raftkv"))
}

/// A gRPC channel to a node (or an etcd member) at `address` (HOST:PORT).
pub async fn grpc_channel(address: &str) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Is this an error an application is expected to retry?
pub fn is_retryable(error: &Error) -> bool {
    matches!(
        error,
        Error::Timeout(_)
            | Error::Unavailable(_)
            | Error::UnknownOutcome(_)
            | Error::NoLeader { .. }
    )
}

/// One write the cluster acknowledged.
#[derive(Debug, Clone)]
pub struct AckedWrite {
    pub key: String,
    pub value: String,
    /// When the application first tried this write (before any retry).
    pub first_attempt: Instant,
    pub acked_at: Instant,
}

/// What a [`Writer`] did.
#[derive(Debug)]
pub struct WriterReport {
    pub acked: Vec<AckedWrite>,
    /// Retryable errors it saw and retried (printed as they happened).
    pub retried_errors: Vec<String>,
}

/// A background task writing `PREFIX00000000`, `PREFIX00000001`, ... in order.
pub struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<AckedWrite>>>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

/// Pause before retrying a failed put, so a down cluster is not hammered.
const WRITER_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// How long [`Writer::stop`] waits for the in-flight put to finish.
const WRITER_STOP_WAIT: Duration = Duration::from_secs(60);

impl Writer {
    /// Starts writing through `client` on the current tokio runtime.
    pub fn spawn(client: Client, prefix: &str) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(write_loop(
            client,
            prefix.to_string(),
            stop.clone(),
            acked.clone(),
        ));
        Writer { stop, acked, task }
    }

    pub fn acked_count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// The first acknowledged write whose first attempt began after `instant`.
    pub fn first_started_after(&self, instant: Instant) -> Option<AckedWrite> {
        self.acked
            .lock()
            .unwrap()
            .iter()
            .find(|w| w.first_attempt > instant)
            .cloned()
    }

    /// Waits (at most `timeout`) until `count` writes are acknowledged.
    pub async fn wait_for_acks(&self, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.acked_count() < count {
            assert!(
                Instant::now() < deadline,
                "writer: only {} of {count} writes acknowledged after {timeout:?}",
                self.acked_count()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops after the write in flight (which is not counted unless acked).
    pub async fn stop(self) -> WriterReport {
        self.stop.store(true, Ordering::SeqCst);
        let retried_errors = match tokio::time::timeout(WRITER_STOP_WAIT, self.task).await {
            Err(_) => panic!("writer did not stop within {WRITER_STOP_WAIT:?}"),
            Ok(Err(join_error)) if join_error.is_panic() => {
                std::panic::resume_unwind(join_error.into_panic())
            }
            Ok(Err(join_error)) => panic!("writer task failed: {join_error}"),
            Ok(Ok(errors)) => errors,
        };
        let acked = std::mem::take(&mut *self.acked.lock().unwrap());
        WriterReport {
            acked,
            retried_errors,
        }
    }
}

async fn write_loop(
    client: Client,
    prefix: String,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<AckedWrite>>>,
) -> Vec<String> {
    let mut retried_errors = Vec::new();
    for sequence in 0u64.. {
        let key = format!("{prefix}{sequence:08}");
        let value = format!("value-{sequence}");
        let first_attempt = Instant::now();
        loop {
            if stop.load(Ordering::SeqCst) {
                return retried_errors;
            }
            match client
                .put(Bytes::from(key.clone()), Bytes::from(value.clone()))
                .await
            {
                Ok(()) => {
                    let write = AckedWrite {
                        key: key.clone(),
                        value: value.clone(),
                        first_attempt,
                        acked_at: Instant::now(),
                    };
                    acked.lock().unwrap().push(write);
                    break;
                }
                Err(error) if is_retryable(&error) => {
                    eprintln!("writer: put {key} failed, retrying: {error}");
                    retried_errors.push(format!("{key}: {error}"));
                    tokio::time::sleep(WRITER_RETRY_PAUSE).await;
                }
                Err(error) => {
                    panic!("writer: put {key} failed with a non-retryable error: {error:?}")
                }
            }
        }
    }
    unreachable!("u64 sequence exhausted")
}

/// Every pair under `prefix`, paging with `after`, at `consistency`.
pub async fn scan_all(
    client: &Client,
    prefix: &str,
    consistency: Consistency,
) -> BTreeMap<Bytes, Bytes> {
    const PAGE_LIMIT: u32 = 1000;
    const MAX_PAGES: usize = 10_000;
    let mut all = BTreeMap::new();
    let mut after: Option<Bytes> = None;
    for _ in 0..MAX_PAGES {
        let options = ScanOptions {
            limit: PAGE_LIMIT as _,
            after: after.clone(),
            consistency,
            ..Default::default()
        };
        let page = client
            .scan(Bytes::from(prefix.to_string()), options)
            .await
            .unwrap_or_else(|e| panic!("scan {prefix:?} after {after:?}: {e}"));
        let last = page.pairs.last().map(|(key, _)| key.clone());
        for (key, value) in page.pairs {
            assert!(
                all.insert(key.clone(), value).is_none(),
                "scan returned {key:?} twice"
            );
        }
        if !page.more {
            return all;
        }
        after = page.next_after.or(last);
        assert!(
            after.is_some(),
            "scan says more keys remain but gives no cursor"
        );
    }
    panic!("scan {prefix:?} did not finish within {MAX_PAGES} pages")
}

/// Checks that every acknowledged write is present with its value in `state`.
pub fn assert_all_acked_present(
    acked: &[AckedWrite],
    state: &BTreeMap<Bytes, Bytes>,
    context: &str,
) {
    let missing: Vec<&AckedWrite> = acked
        .iter()
        .filter(|w| state.get(w.key.as_bytes()).map(|v| &v[..]) != Some(w.value.as_bytes()))
        .collect();
    assert!(
        missing.is_empty(),
        "{context}: {} of {} acknowledged writes missing or wrong, first: {:?}",
        missing.len(),
        acked.len(),
        missing.first()
    );
}

/// `GET path` over HTTP/1.1: (status code, body).
pub fn http_get(address: &str, path: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    std::io::Write::write_fmt(
        &mut stream,
        format_args!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"),
    )
    .expect("send");
    let mut response = String::new();
    std::io::Read::read_to_string(&mut stream, &mut response).expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    (code, body.to_string())
}

/// The value of the first sample line starting with `prefix`.
pub fn sample(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {prefix:?} in:\n{text}"))
}

/// Copies directory `from` to `to` (files and subdirectories).
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
