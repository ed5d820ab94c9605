//! `raftkv bench` (docs/REFERENCE.md §7): the `raftkv-loadgen` engine driving a
//! RaftKV cluster through the client library. Ops put, get, mixed
//! (`--read-pct`), delete, scan; `--batch N` keys per operation (Batch /
//! BatchGet); closed loop, or open loop with `--rate`; `--warmup`; a
//! progress line each second; a final table per op or one JSON line.

use bytes::Bytes;
use raftkv_client::proto as pb;
use raftkv_client::{Client, ClientOptions, Consistency, ScanOptions};
use raftkv_loadgen::{Kind, Report, Settings, Target, Workload};
use serde_json::json;

use crate::args::{BenchArgs, BenchOp};
use crate::failure::Failure;
use crate::kv_cmd::consistency;
use crate::output::print_json;
use crate::ClientFlags;

/// Keys a scan asks for.
const SCAN_LIMIT: u32 = 10;

struct RaftKv {
    endpoints: Vec<String>,
    options: ClientOptions,
    consistency: Consistency,
    prefix: Bytes,
}

struct Conn {
    client: Client,
    consistency: Consistency,
    prefix: Bytes,
}

impl Target for RaftKv {
    type Conn = Conn;

    fn connect(&self, _: usize) -> Result<Conn, String> {
        Ok(Conn {
            client: Client::with_options(&self.endpoints, self.options.clone())
                .map_err(|e| e.to_string())?,
            consistency: self.consistency,
            prefix: self.prefix.clone(),
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
                client.scan(conn.prefix.clone(), options).await.map(|_| ())
            }
        };
        result.map_err(|e| e.kind().to_string())
    }
}

/// `bench/` and a run id of 6 hex digits from the clock, so that runs do not
/// read or overwrite each other's keys.
fn run_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "bench/{:06x}/",
        (nanos as u64 ^ u64::from(std::process::id())) & 0xff_ffff
    )
}

fn settings(args: &BenchArgs) -> Result<Settings, Failure> {
    fn usage(flag: &'static str) -> impl Fn(String) -> Failure {
        move |e| Failure::Usage(format!("{flag}: {e}"))
    }
    if args.clients == 0 {
        return Err(Failure::Usage("--clients must be at least 1".into()));
    }
    if args.key_size > 4096 {
        return Err(Failure::Usage(
            "--key-size: keys are at most 4096 bytes".into(),
        ));
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
    let prefix = args.prefix.clone().unwrap_or_else(run_prefix);
    if prefix.is_empty() {
        return Err(Failure::Usage("--prefix must not be empty".into()));
    }
    Ok(Settings {
        prefix,
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

pub async fn run(flags: &ClientFlags, args: BenchArgs) -> Result<(), Failure> {
    let settings = settings(&args)?;
    let target = RaftKv {
        endpoints: flags.endpoints.clone(),
        options: flags.options(),
        consistency: consistency(args.consistency),
        prefix: Bytes::from(settings.prefix.clone()),
    };
    // Validates the endpoints before any load starts.
    target.connect(0).map_err(Failure::Usage)?;
    errln!(
        "keys: {} .. {} ({} of them){}",
        String::from_utf8_lossy(&raftkv_loadgen::key_of(
            &settings.prefix,
            0,
            settings.key_size
        )),
        String::from_utf8_lossy(&raftkv_loadgen::key_of(
            &settings.prefix,
            settings.keys - 1,
            settings.key_size
        )),
        settings.keys,
        if args.cleanup {
            ", deleted at the end (--cleanup)"
        } else {
            "; they stay in the store (delete them with --cleanup)"
        }
    );
    if args.op != BenchOp::Put {
        errln!(
            "loading {} keys of {} bytes...",
            settings.keys,
            settings.value_size
        );
        raftkv_loadgen::load(&target, &settings)
            .await
            .map_err(Failure::Other)?;
    }
    let report = raftkv_loadgen::run(&target, &settings)
        .await
        .map_err(Failure::Other);
    // The figures first: a failed cleanup must not lose them.
    let report = report?;
    print_report(&report, &args, &settings, flags.json)?;
    if report.total_ops() == 0 && report.total_errors() > 0 {
        // Nothing was measured: say why, as any other command would.
        let kinds: Vec<String> = report
            .errors
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let probe = flags.client()?.status().await.err();
        return Err(Failure::Other(format!(
            "every operation failed ({}){}",
            kinds.join(", "),
            probe.map_or(String::new(), |e| format!(": {e}"))
        )));
    }
    if args.cleanup {
        cleanup(flags, &settings).await?;
    }
    Ok(())
}

/// Deletes every key the run could have written, a thousand per atomic batch.
async fn cleanup(flags: &ClientFlags, settings: &Settings) -> Result<(), Failure> {
    let client = flags.client()?;
    let keys: Vec<u64> = (0..settings.keys).collect();
    for chunk in keys.chunks(1000) {
        let ops = chunk
            .iter()
            .map(|&i| pb::BatchOp {
                op: Some(pb::batch_op::Op::Delete(pb::DeleteRequest {
                    key: raftkv_loadgen::key_of(&settings.prefix, i, settings.key_size),
                    session: None,
                })),
            })
            .collect();
        client
            .batch(ops)
            .await
            .map_err(|e| Failure::Other(format!("--cleanup: {e}")))?;
    }
    errln!(
        "deleted the {} keys under {}",
        settings.keys,
        settings.prefix
    );
    Ok(())
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
    outln!(
        "{op}: {ops} ops in {elapsed_s:.2}s = {ops_per_sec:.0} ops/s{batch}, {errors} errors \
         ({} clients on {} connections, {mode}, {}-byte values)",
        settings.clients,
        settings.connection_count(),
        settings.value_size
    )?;
    outln!("{}", report.table().trim_end())
}
