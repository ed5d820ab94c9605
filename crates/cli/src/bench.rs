//! `raftkv bench` (CONTRACT §7): the `raftkv-loadgen` engine driving a
//! RaftKV cluster through the client library. Ops put, get, mixed
//! (`--read-pct`), delete, scan; `--batch N` keys per operation (Batch /
//! BatchGet); closed loop, or open loop with `--rate`; `--warmup`; a
//! progress line each second; a final table per op or one JSON line.

use bytes::Bytes;
use raftkv_client::proto as pb;
use raftkv_client::{Client, ClientOptions, Consistency, ScanOptions};
use raftkv_loadgen::{Kind, Report, Settings, Target, Workload};
use serde_json::json;

use crate::args::{BenchArgs, BenchOp, GlobalArgs};
use crate::failure::Failure;
use crate::kv_cmd::consistency;
use crate::output::print_json;

/// Keys a scan asks for.
const SCAN_LIMIT: u32 = 10;

struct RaftKv {
    endpoints: Vec<String>,
    options: ClientOptions,
    consistency: Consistency,
}

struct Conn {
    client: Client,
    consistency: Consistency,
}

fn kind_of(e: &raftkv_client::Error) -> String {
    let text = e.to_string();
    text.split([':', ';'])
        .next()
        .unwrap_or("error")
        .trim()
        .to_string()
}

impl Target for RaftKv {
    type Conn = Conn;

    fn connect(&self, _: usize) -> Result<Conn, String> {
        Ok(Conn {
            client: Client::with_options(&self.endpoints, self.options.clone())
                .map_err(|e| e.to_string())?,
            consistency: self.consistency,
        })
    }

    async fn run(conn: &Conn, kind: Kind, keys: Vec<Bytes>, value: &Bytes) -> Result<(), String> {
        let client = &conn.client;
        let result = match kind {
            Kind::Put if keys.len() == 1 => client.put(keys[0].clone(), value.clone()).await,
            Kind::Put => {
                let ops = keys
                    .into_iter()
                    .map(|key| pb::BatchOp {
                        op: Some(pb::batch_op::Op::Put(pb::PutRequest {
                            key,
                            value: value.clone(),
                            session: None,
                        })),
                    })
                    .collect();
                client.batch(ops).await
            }
            Kind::Get if keys.len() == 1 => client
                .get_with(keys[0].clone(), conn.consistency)
                .await
                .map(|_| ()),
            Kind::Get => client.batch_get(keys, conn.consistency).await.map(|_| ()),
            Kind::Delete => client.delete(keys[0].clone()).await,
            Kind::Scan => {
                let options = ScanOptions {
                    limit: SCAN_LIMIT,
                    after: Some(keys[0].clone()),
                    consistency: conn.consistency,
                    ..Default::default()
                };
                client.scan("bench/", options).await.map(|_| ())
            }
        };
        result.map_err(|e| kind_of(&e))
    }
}

fn settings(args: &BenchArgs) -> Result<Settings, Failure> {
    fn usage(flag: &'static str) -> impl Fn(String) -> Failure {
        move |e| Failure::Usage(format!("{flag}: {e}"))
    }
    if args.clients == 0 {
        return Err(Failure::Usage("--clients must be at least 1".into()));
    }
    if args.keys == 0 {
        return Err(Failure::Usage("--keys must be at least 1".into()));
    }
    if args.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        return Err(Failure::Usage(
            "--rate must be a positive number of ops/s".into(),
        ));
    }
    if args.batch > 1 && matches!(args.op, BenchOp::Delete | BenchOp::Scan) {
        return Err(Failure::Usage(
            "--batch applies to put, get and mixed".into(),
        ));
    }
    Ok(Settings {
        clients: args.clients,
        connections: args.connections,
        workload: match args.op {
            BenchOp::Put => Workload::Only(Kind::Put),
            BenchOp::Get => Workload::Only(Kind::Get),
            BenchOp::Delete => Workload::Only(Kind::Delete),
            BenchOp::Scan => Workload::Only(Kind::Scan),
            BenchOp::Mixed => Workload::Mixed {
                read_pct: args.read_pct,
            },
        },
        keys: args.keys,
        key_size: args.key_size,
        value_size: raftkv_server::units::parse_size(&args.value_size)
            .map_err(usage("--value-size"))? as usize,
        batch: args.batch,
        duration: raftkv_server::units::parse_duration(&args.duration)
            .map_err(usage("--duration"))?,
        ops: args.ops,
        warmup: raftkv_server::units::parse_duration(&args.warmup).map_err(usage("--warmup"))?,
        rate: args.rate,
    })
}

pub async fn run(global: &GlobalArgs, args: BenchArgs) -> Result<(), Failure> {
    let settings = settings(&args)?;
    let target = RaftKv {
        endpoints: global.endpoints.clone(),
        options: crate::client_options(global)?,
        consistency: consistency(args.consistency),
    };
    // Validates the endpoints before any load starts.
    target.connect(0).map_err(Failure::Usage)?;
    if args.op != BenchOp::Put {
        eprintln!(
            "loading {} keys of {} bytes...",
            settings.keys, settings.value_size
        );
        raftkv_loadgen::load(&target, &settings)
            .await
            .map_err(Failure::Other)?;
    }
    let report = raftkv_loadgen::run(&target, &settings)
        .await
        .map_err(Failure::Other)?;
    print_report(&report, &args, &settings, global.json)
}

fn print_report(
    report: &Report,
    args: &BenchArgs,
    settings: &Settings,
    json_out: bool,
) -> Result<(), Failure> {
    let ops = report.total_ops();
    let errors = report.total_errors();
    let ops_per_sec = report.ops_per_sec();
    let elapsed_s = report.elapsed.as_secs_f64();
    let op = format!("{:?}", args.op).to_lowercase();
    if json_out {
        print_json(&json!({
            "op": op,
            "clients": settings.clients,
            "connections": settings.connection_count(),
            "value_size": settings.value_size,
            "keys": settings.keys,
            "batch": settings.batch,
            "rate": settings.rate,
            "duration_s": elapsed_s,
            "ops": ops,
            "ops_per_sec": ops_per_sec,
            "keys_per_sec": ops_per_sec * settings.batch as f64,
            "errors": errors,
            "error_rate": errors as f64 / (ops + errors).max(1) as f64,
            "errors_by_kind": report.errors,
            "latency_ms": Report::latency_json(&report.overall()),
            "by_op": report.by_op_json(),
        }))?;
        return Ok(());
    }
    let mode = match settings.rate {
        Some(rate) => format!("open loop at {rate} ops/s"),
        None => "closed loop".to_string(),
    };
    let batch = if settings.batch > 1 {
        format!(
            " ({:.0} keys/s, batch {})",
            ops_per_sec * settings.batch as f64,
            settings.batch
        )
    } else {
        String::new()
    };
    println!(
        "{op}: {ops} ops in {elapsed_s:.2}s = {ops_per_sec:.0} ops/s{batch}, {errors} errors \
         ({} clients on {} connections, {mode}, {}-byte values)",
        settings.clients,
        settings.connection_count(),
        settings.value_size
    );
    print!("{}", report.table());
    Ok(())
}
