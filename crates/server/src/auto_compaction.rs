//! etcd's automatic compaction, on the leader: `revision` mode keeps the
//! last N revisions, `periodic` mode the revisions of the last period. The
//! leader proposes a `Compact` through the log (so every member compacts at
//! the same revision); followers only wait to lead.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use raftkv_replica::{Replica, Role, Write, WriteSession};

use crate::config::AutoCompaction;

/// How often revision mode looks (etcd: every 5 minutes; a compaction here
/// is one small log entry and drops what the window holds, so sooner).
const REVISION_CHECK: Duration = Duration::from_secs(5);

pub async fn run(replica: Replica, mode: AutoCompaction) {
    let (every, retention) = match mode {
        AutoCompaction::Off => return,
        AutoCompaction::Revisions(_) => (REVISION_CHECK, Duration::ZERO),
        // Samples every tenth of the period (at least a second apart).
        AutoCompaction::Period(period) => ((period / 10).max(Duration::from_secs(1)), period),
    };
    // (when, store revision then), oldest first: periodic mode compacts to
    // the newest sample at least a period old.
    let mut samples: VecDeque<(Instant, u64)> = VecDeque::new();
    loop {
        tokio::time::sleep(every).await;
        let (current, compacted) = {
            let kv = replica.kv();
            (kv.revision(), kv.compacted_revision())
        };
        let now = Instant::now();
        samples.push_back((now, current));
        let target = match mode {
            AutoCompaction::Off => return,
            AutoCompaction::Revisions(keep) => current.saturating_sub(keep),
            AutoCompaction::Period(_) => {
                let mut target = 0;
                while let Some((at, revision)) = samples.front().copied() {
                    if now.duration_since(at) < retention {
                        break;
                    }
                    target = revision;
                    samples.pop_front();
                }
                target
            }
        };
        if target <= compacted || replica.status().role != Role::Leader {
            continue;
        }
        match replica
            .write_as(
                Write::Compact(target),
                WriteSession::default(),
                raftkv_replica::Caller::Node,
            )
            .await
        {
            Ok(_) => tracing::info!("auto-compaction: compacted to revision {target}"),
            Err(e) => tracing::debug!("auto-compaction to {target}: {e}"),
        }
    }
}
