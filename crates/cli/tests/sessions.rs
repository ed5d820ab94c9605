//! Client sessions are bounded, and a dropped session never lets a retried
//! write apply twice (Raft thesis §6.3). The servers run with a session
//! table of one session (`RAFTKV_TEST_SESSION_LIMITS`, a test-only setting).

mod common;

use std::time::Duration;

use bytes::Bytes;
use raftkv_proto::v1::kv_client::KvClient;
use raftkv_proto::v1::{ErrorDetail, ErrorKind, PutRequest, WriteSession};
use raftkv_testkit::TestCluster;

use common::bin;

/// One session at most; one is dropped for another after 300 ms idle (log time).
const LIMITS: &str = "max_sessions=1,min_idle_ms=300";

/// A raw `KV.Put` with a given session, as a client retrying a write sends it.
async fn raw_put(
    address: &str,
    key: &str,
    value: &str,
    session: WriteSession,
) -> Result<(), ErrorDetail> {
    let mut kv = KvClient::connect(format!("http://{address}"))
        .await
        .expect("connect");
    let request = PutRequest {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
        session: Some(session),
    };
    match kv.put(request).await {
        Ok(_) => Ok(()),
        Err(status) => Err(prost::Message::decode(status.details()).expect("error detail")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_from_a_dropped_session_is_refused_and_the_client_starts_a_new_one() {
    let cluster =
        TestCluster::start_with_env(bin(), 1, &[], &[("RAFTKV_TEST_SESSION_LIMITS", LIMITS)]);
    let address = cluster.address(cluster.leader());
    // Client A's first two writes, as its library sends them.
    let a = WriteSession {
        client_id: 0xa,
        seq: 1,
        first_incomplete_seq: 1,
    };
    raw_put(&address, "k", "0", a)
        .await
        .expect("A's first write");
    let a2 = WriteSession {
        seq: 2,
        first_incomplete_seq: 2,
        ..a
    };
    raw_put(&address, "k", "1", a2)
        .await
        .expect("A's second write");
    // (Its reply is lost.) B's session cannot push A's out while A may still
    // be retrying: refused, retryable, without effect.
    let b = WriteSession {
        client_id: 0xb,
        seq: 1,
        first_incomplete_seq: 1,
    };
    let refused = raw_put(&address, "k", "2", b)
        .await
        .expect_err("table full");
    assert_eq!(refused.kind, ErrorKind::Unavailable as i32, "{refused:?}");
    assert!(refused.retryable);
    // Once A has been idle long enough, B's session replaces it.
    let mut b_done = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if raw_put(&address, "k", "2", b).await.is_ok() {
            b_done = true;
            break;
        }
    }
    assert!(b_done, "B's write went through once A's session was idle");
    // A retries its second write: refused as expired, not applied again.
    let expired = raw_put(&address, "k", "1", a2)
        .await
        .expect_err("A's session was dropped");
    assert_eq!(
        expired.kind,
        ErrorKind::SessionExpired as i32,
        "{expired:?}"
    );
    assert!(!expired.retryable);
    let out = cluster.cli(&["get", "k"]);
    out.assert_ok();
    assert_eq!(
        out.stdout_text().trim_end(),
        "2",
        "a reader never sees 1, 2, 1"
    );

    // The client library: its session is dropped while it is idle; its next
    // write is refused as expired on the first attempt, so it starts a new
    // session and the write goes through once.
    let client = cluster.client();
    client.put("lib", "first").await.expect("library write");
    tokio::time::sleep(Duration::from_millis(400)).await;
    for round in 0..20 {
        // Another session's writes move log time on and push the library's out.
        let c = WriteSession {
            client_id: 0xc0 + round,
            seq: 1,
            first_incomplete_seq: 1,
        };
        if raw_put(&address, "other", "x", c).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client
        .put("lib", "second")
        .await
        .expect("the library starts a new session and writes");
    assert_eq!(
        client.get("lib").await.unwrap(),
        Bytes::from_static(b"second")
    );
}
