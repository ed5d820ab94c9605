//! `--watchers N [--slow-watchers M]`: N watch streams on the bench prefix,
//! each read as fast as it comes, and M streams that read nothing until the
//! load ends, while the put load runs. Reports the events delivered to the
//! N (per second) and what happened to each slow stream once drained:
//! cancelled with a compact revision (it fell out of the history window and
//! was dropped) or still whole.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raftkv_proto::etcdserverpb as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

/// Watch streams sharing one HTTP/2 connection.
const STREAMS_PER_CONNECTION: usize = 100;

pub struct Watchers {
    events: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    slow: Vec<tokio::task::JoinHandle<SlowEnd>>,
    release_slow: tokio::sync::watch::Sender<bool>,
    started: Instant,
}

/// How a slow stream ended once it was read.
#[derive(Debug, Default)]
pub struct SlowEnd {
    /// Events it had queued for it.
    pub events: u64,
    /// Cancelled by the server, with this compact revision.
    pub compact_revision: Option<i64>,
}

fn channel(endpoint: &str) -> Result<Channel, String> {
    Ok(Endpoint::from_shared(format!("http://{endpoint}"))
        .map_err(|e| format!("bad endpoint {endpoint}: {e}"))?
        .tcp_nodelay(true)
        .connect_lazy())
}

async fn open(
    channel: Channel,
    prefix: &Bytes,
) -> Result<
    (
        mpsc::Sender<pb::WatchRequest>,
        tonic::Streaming<pb::WatchResponse>,
    ),
    String,
> {
    let (tx, rx) = mpsc::channel(1);
    let mut end = prefix.to_vec();
    *end.last_mut().expect("a prefix") += 1;
    let create = pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
            pb::WatchCreateRequest {
                key: prefix.clone(),
                range_end: Bytes::from(end),
                ..Default::default()
            },
        )),
    };
    tx.send(create).await.map_err(|e| e.to_string())?;
    let mut stream = pb::watch_client::WatchClient::new(channel)
        .max_decoding_message_size(64 * 1024 * 1024)
        .watch(ReceiverStream::new(rx))
        .await
        .map_err(|e| format!("watch: {e}"))?
        .into_inner();
    // The created reply: the watcher exists before the load starts.
    stream
        .message()
        .await
        .map_err(|e| format!("watch: {e}"))?
        .filter(|r| r.created)
        .ok_or("no created reply")?;
    Ok((tx, stream))
}

impl Watchers {
    pub async fn start(
        endpoints: &[String],
        prefix: &str,
        fast: usize,
        slow: usize,
    ) -> Result<Watchers, String> {
        let prefix = Bytes::from(prefix.to_string());
        let events = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (release_slow, released) = tokio::sync::watch::channel(false);
        let mut channels = Vec::new();
        let mut tasks = Vec::new();
        for i in 0..fast {
            if i % STREAMS_PER_CONNECTION == 0 {
                channels.push(channel(&endpoints[channels.len() % endpoints.len()])?);
            }
            let (requests, mut stream) = open(channels.last().unwrap().clone(), &prefix).await?;
            let (events, stop) = (events.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let _requests = requests;
                while !stop.load(Ordering::Relaxed) {
                    match stream.message().await {
                        Ok(Some(response)) => {
                            events.fetch_add(response.events.len() as u64, Ordering::Relaxed);
                        }
                        _ => break,
                    }
                }
            }));
        }
        let mut slow_tasks = Vec::new();
        for i in 0..slow {
            // Its own connection: HTTP/2 flow control then holds back only it.
            let channel = channel(&endpoints[i % endpoints.len()])?;
            let (requests, mut stream) = open(channel, &prefix).await?;
            let mut released = released.clone();
            slow_tasks.push(tokio::spawn(async move {
                let _requests = requests;
                let _ = released.wait_for(|go| *go).await;
                let mut end = SlowEnd::default();
                while let Ok(Ok(Some(response))) =
                    tokio::time::timeout(Duration::from_secs(5), stream.message()).await
                {
                    end.events += response.events.len() as u64;
                    if response.canceled {
                        end.compact_revision = Some(response.compact_revision);
                        break;
                    }
                }
                end
            }));
        }
        Ok(Watchers {
            events,
            stop,
            tasks,
            slow: slow_tasks,
            release_slow,
            started: Instant::now(),
        })
    }

    /// Stops the fast watchers, then reads the slow ones to their end.
    /// Returns (events delivered to the fast ones, per second over the
    /// run, how each slow one ended).
    pub async fn finish(self) -> (u64, f64, Vec<SlowEnd>) {
        let elapsed = self.started.elapsed().as_secs_f64();
        let events = self.events.load(Ordering::Relaxed);
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.abort();
        }
        let _ = self.release_slow.send(true);
        let mut slow = Vec::new();
        for task in self.slow {
            slow.push(task.await.unwrap_or_default());
        }
        (events, events as f64 / elapsed, slow)
    }
}
