//! `etcd-bench`: the `raftkv bench` engine (crate `raftkv-loadgen`) driving
//! etcd v3 over gRPC, so RaftKV and etcd are measured by the same load
//! generator with the same workload on the same machine.
//!
//! ```sh
//! etcd-bench --endpoints 127.0.0.1:2379 --op put --clients 64 --duration 10s
//! etcd-bench --endpoints A,B,C --op get --clients 64 --keys 1000 --json
//! ```
//!
//! Client i talks to endpoint i mod N (etcd members forward writes to their
//! leader and serve linearizable reads through it). Gets are linearizable
//! (etcd's default) unless `--serializable`. `--op txn` puts through a `Txn`
//! with one compare on the key (version != -1, which always holds) and the
//! put as its success branch: the compare-and-swap path, each write one
//! transaction. `--watchers N` keeps N watch streams on the bench prefix
//! read while the load runs (and `--slow-watchers M`, M streams not read
//! until it ends): see `watchers.rs`.

mod watchers;

use raftkv_proto::etcdserverpb as pb;

use std::time::Duration;

use bytes::Bytes;
use pb::kv_client::KvClient;
use raftkv_loadgen::{Kind, Settings, Target, Workload};
use serde_json::json;
use tonic::transport::{Channel, Endpoint};

struct Etcd {
    endpoints: Vec<String>,
    serializable: bool,
    txn: bool,
}

struct Conn {
    kv: KvClient<Channel>,
    serializable: bool,
    txn: bool,
}

impl Target for Etcd {
    type Conn = Conn;

    fn connect(&self, client: usize) -> Result<Conn, String> {
        let address = &self.endpoints[client % self.endpoints.len()];
        let channel = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| format!("bad endpoint {address}: {e}"))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(1))
            .connect_lazy();
        Ok(Conn {
            kv: KvClient::new(channel),
            serializable: self.serializable,
            txn: self.txn,
        })
    }

    async fn run(conn: &Conn, kind: Kind, keys: Vec<Bytes>, value: &Bytes) -> Result<(), String> {
        let mut kv = conn.kv.clone();
        let put = pb::PutRequest {
            key: keys[0].clone(),
            value: value.clone(),
            ..Default::default()
        };
        let result = match kind {
            Kind::Put if conn.txn => kv
                .txn(pb::TxnRequest {
                    compare: vec![pb::Compare {
                        result: pb::compare::CompareResult::NotEqual as i32,
                        target: pb::compare::CompareTarget::Version as i32,
                        key: keys[0].clone(),
                        target_union: Some(pb::compare::TargetUnion::Version(-1)),
                        range_end: Bytes::new(),
                    }],
                    success: vec![pb::RequestOp {
                        request: Some(pb::request_op::Request::RequestPut(put)),
                    }],
                    failure: Vec::new(),
                })
                .await
                .map(|_| ()),
            Kind::Put => kv.put(put).await.map(|_| ()),
            Kind::Get => kv
                .range(pb::RangeRequest {
                    key: keys[0].clone(),
                    serializable: conn.serializable,
                    ..Default::default()
                })
                .await
                .map(|_| ()),
            Kind::Delete | Kind::Scan => return Err("unsupported by this driver".into()),
        };
        result.map_err(|status| format!("{:?}", status.code()))
    }
}

fn usage(message: &str) -> ! {
    eprintln!("error: {message}");
    eprintln!(
        "usage: etcd-bench --endpoints HOST:PORT[,..] [--op put|get|txn] [--clients N] [--connections N] \
         [--keys N] [--value-size B] [--duration S] [--warmup S] [--rate OPS] \
         [--serializable] [--watchers N] [--slow-watchers M] [--json]"
    );
    std::process::exit(2)
}

fn seconds(text: &str) -> Duration {
    let digits = text.trim_end_matches('s');
    Duration::from_secs_f64(digits.parse().unwrap_or_else(|_| usage("bad duration")))
}

#[tokio::main]
async fn main() {
    let mut endpoints = vec!["127.0.0.1:2379".to_string()];
    let mut settings = Settings {
        prefix: "bench/".into(),
        clients: 16,
        connections: raftkv_loadgen::DEFAULT_CONNECTIONS,
        workload: Workload::Only(Kind::Put),
        keys: 1000,
        key_size: 16,
        value_size: 256,
        batch: 1,
        duration: Duration::from_secs(10),
        ops: None,
        warmup: Duration::ZERO,
        rate: None,
    };
    let (mut serializable, mut json_out, mut txn) = (false, false, false);
    let (mut fast_watchers, mut slow_watchers) = (0usize, 0usize);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{arg} needs a value")))
        };
        match arg.as_str() {
            "--endpoints" => endpoints = value().split(',').map(str::to_string).collect(),
            "--op" => {
                settings.workload = match value().as_str() {
                    "put" => Workload::Only(Kind::Put),
                    "get" => Workload::Only(Kind::Get),
                    "txn" => {
                        txn = true;
                        Workload::Only(Kind::Put)
                    }
                    _ => usage("--op is put, get or txn"),
                }
            }
            "--clients" => {
                settings.clients = value().parse().unwrap_or_else(|_| usage("--clients"))
            }
            "--connections" => {
                settings.connections = value().parse().unwrap_or_else(|_| usage("--connections"))
            }
            "--keys" => settings.keys = value().parse().unwrap_or_else(|_| usage("--keys")),
            "--value-size" => {
                settings.value_size = value().parse().unwrap_or_else(|_| usage("--value-size"))
            }
            "--duration" => settings.duration = seconds(&value()),
            "--warmup" => settings.warmup = seconds(&value()),
            "--rate" => settings.rate = Some(value().parse().unwrap_or_else(|_| usage("--rate"))),
            "--serializable" => serializable = true,
            "--watchers" => fast_watchers = value().parse().unwrap_or_else(|_| usage("--watchers")),
            "--slow-watchers" => {
                slow_watchers = value().parse().unwrap_or_else(|_| usage("--slow-watchers"))
            }
            "--json" => json_out = true,
            other => usage(&format!("unknown argument {other}")),
        }
    }
    let target = Etcd {
        endpoints,
        serializable,
        txn,
    };
    if settings.workload == Workload::Only(Kind::Get) {
        eprintln!("loading {} keys...", settings.keys);
        if let Err(e) = raftkv_loadgen::load(&target, &settings).await {
            usage(&e);
        }
    }
    let watching = if fast_watchers + slow_watchers > 0 {
        let started = watchers::Watchers::start(
            &target.endpoints,
            &settings.prefix,
            fast_watchers,
            slow_watchers,
        )
        .await;
        Some(started.unwrap_or_else(|e| usage(&e)))
    } else {
        None
    };
    let report = match raftkv_loadgen::run(&target, &settings).await {
        Ok(report) => report,
        Err(e) => usage(&e),
    };
    let watched = match watching {
        Some(w) => {
            let (events, per_sec, slow) = w.finish().await;
            let slow: Vec<_> = slow
                .iter()
                .map(|s| json!({"events": s.events, "compact_revision": s.compact_revision}))
                .collect();
            json!({"watchers": fast_watchers, "events": events, "events_per_sec": per_sec, "slow": slow})
        }
        None => serde_json::Value::Null,
    };
    if json_out {
        println!(
            "{}",
            json!({
                "target": "etcd",
                "clients": settings.clients,
                "connections": settings.connection_count(),
                "value_size": settings.value_size,
                "ops": report.total_ops(),
                "ops_per_sec": report.ops_per_sec(),
                "errors": report.total_errors(),
                "errors_by_kind": report.errors,
                "latency_ms": raftkv_loadgen::Report::latency_json(&report.overall()),
                "watch": watched,
            })
        );
    } else {
        println!(
            "etcd: {} ops in {:.2}s = {:.0} ops/s, {} errors ({} clients)",
            report.total_ops(),
            report.elapsed.as_secs_f64(),
            report.ops_per_sec(),
            report.total_errors(),
            settings.clients
        );
        print!("{}", report.table());
    }
}
