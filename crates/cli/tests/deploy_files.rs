//! Acceptance (issue 23, deployment files): `deploy/gen.py` is the one
//! source of the node command line that the compose file, the Kubernetes
//! manifests and the systemd unit run. This machine has no container runtime
//! and no cluster, so:
//!
//! 1. the committed files must be what gen.py makes now (`--check`);
//! 2. the command line gen.py gives for a cluster on loopback (its `local`
//!    mode: the same function, with 127.0.0.1 and free ports) must form a
//!    cluster that serves, reports ready on /readyz, and takes a SIGTERM'd
//!    leader coming back with the same command line;
//! 3. the manifests are checked offline: parsed as YAML, with the fields a
//!    StatefulSet deployment relies on (stable names, headless Service that
//!    publishes not-ready pods, readiness on /readyz, a preStop, a grace
//!    period longer than a leader hand-over, a PodDisruptionBudget, a
//!    non-root user, a volume per pod), and the same for compose, the
//!    systemd unit and the Dockerfile.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use raftkv_testkit::{free_ports, NodeCommand, TestCluster};
use serde::Deserialize as _;
use serde_yaml::Value as Yaml;

use common::{bin, http_get};

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn gen(args: &[&str]) -> Output {
    let output = Command::new("python3")
        .arg(deploy_dir().join("gen.py"))
        .args(args)
        .output()
        .expect("python3 runs deploy/gen.py");
    assert!(
        output.status.success(),
        "deploy/gen.py {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn read(path: &str) -> String {
    std::fs::read_to_string(deploy_dir().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn wait_ready(metrics_address: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = http_get(metrics_address, "/readyz");
        if code == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{metrics_address}/readyz still answers {code}: {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_committed_files_are_what_the_generator_makes() {
    gen(&["--check"]);
}

#[test]
fn the_generated_command_line_forms_a_cluster_that_serves() {
    let base = tempfile::tempdir().unwrap();
    let ports: Vec<String> = free_ports(9).iter().map(u16::to_string).collect();
    let out = gen(&[
        "local",
        "--nodes",
        "3",
        "--base-dir",
        base.path().to_str().unwrap(),
        "--ports",
        &ports.join(","),
    ]);
    let nodes: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(nodes.len(), 3);
    let commands: Vec<NodeCommand> = nodes
        .iter()
        .map(|node| {
            let argv: Vec<String> = node["argv"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_string())
                .collect();
            assert_eq!(argv[0], "server", "{node}");
            let client = node["client"].as_str().unwrap();
            NodeCommand {
                id: node["id"].as_u64().unwrap(),
                argv,
                client_port: client.rsplit(':').next().unwrap().parse().unwrap(),
            }
        })
        .collect();
    let metrics = |id: u64| {
        nodes[id as usize - 1]["metrics"]
            .as_str()
            .unwrap()
            .to_string()
    };

    let mut cluster = TestCluster::start_commands(bin(), &commands);
    for id in cluster.ids() {
        wait_ready(&metrics(id));
    }
    cluster.cli(&["put", "deploy/k", "v"]).assert_ok();
    cluster.wait_caught_up(Duration::from_secs(20));
    for id in cluster.ids() {
        let got = cluster.cli_at(id, &["get", "deploy/k", "--consistency", "stale"]);
        got.assert_ok();
        assert_eq!(got.stdout_text().trim(), "v", "node {id}");
    }

    // What the manifests' preStop and grace period rely on: a leader stopped
    // with SIGTERM hands over, and comes back with the same command line.
    let leader = cluster.leader();
    cluster.stop(leader);
    cluster.cli(&["put", "deploy/k2", "v2"]).assert_ok();
    cluster.restart(leader);
    wait_ready(&metrics(leader));
    cluster.wait_caught_up(Duration::from_secs(20));
    let got = cluster.cli_at(leader, &["get", "deploy/k2", "--consistency", "stale"]);
    got.assert_ok();
    assert_eq!(got.stdout_text().trim(), "v2");
}

/// `value[a][b]...`, panicking with the path when a step is missing.
fn at<'a>(value: &'a Yaml, path: &[&str]) -> &'a Yaml {
    path.iter().fold(value, |v, key| {
        let next = match key.parse::<usize>() {
            Ok(i) => v.get(i),
            Err(_) => v.get(*key),
        };
        next.unwrap_or_else(|| panic!("no {path:?} (stopped at {key:?}) in {v:?}"))
    })
}

fn text<'a>(value: &'a Yaml, path: &[&str]) -> &'a str {
    at(value, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path:?} is not a string"))
}

fn number(value: &Yaml, path: &[&str]) -> u64 {
    at(value, path)
        .as_u64()
        .unwrap_or_else(|| panic!("{path:?} is not a number"))
}

#[test]
fn the_kubernetes_manifests_have_what_a_cluster_relies_on() {
    let text_of = read("k8s/raftkv.yaml");
    let docs: Vec<Yaml> = serde_yaml::Deserializer::from_str(&text_of)
        .map(|doc| Yaml::deserialize(doc).expect("valid YAML"))
        .filter(|doc| !doc.is_null())
        .collect();
    let of_kind = |kind: &str| -> Vec<&Yaml> {
        docs.iter()
            .filter(|d| d.get("kind").and_then(Yaml::as_str) == Some(kind))
            .collect()
    };
    for doc in &docs {
        text(doc, &["apiVersion"]);
        text(doc, &["metadata", "name"]);
    }

    let sets = of_kind("StatefulSet");
    assert_eq!(sets.len(), 1);
    let set = sets[0];
    let replicas = number(set, &["spec", "replicas"]);
    assert_eq!(replicas, 3);
    let labels = at(set, &["spec", "template", "metadata", "labels"]);
    assert_eq!(at(set, &["spec", "selector", "matchLabels"]), labels);
    // Stable names through a headless Service that publishes pods before
    // they are ready (members must find each other to become ready).
    let peer_service = text(set, &["spec", "serviceName"]);
    let headless = of_kind("Service")
        .into_iter()
        .find(|s| text(s, &["metadata", "name"]) == peer_service)
        .expect("the StatefulSet's serviceName is a Service here");
    assert_eq!(text(headless, &["spec", "clusterIP"]), "None");
    assert_eq!(
        at(headless, &["spec", "publishNotReadyAddresses"]).as_bool(),
        Some(true)
    );
    assert_eq!(at(headless, &["spec", "selector"]), labels);
    // Pods start together: each waits for the others to be ready.
    assert_eq!(text(set, &["spec", "podManagementPolicy"]), "Parallel");

    let pod = at(set, &["spec", "template", "spec"]);
    let grace = number(pod, &["terminationGracePeriodSeconds"]);
    // A hand-over takes at most two election timeouts (2 s by default).
    assert!(grace >= 10, "grace period {grace}s");
    assert_eq!(
        at(pod, &["securityContext", "runAsNonRoot"]).as_bool(),
        Some(true)
    );
    let container = at(pod, &["containers", "0"]);
    assert_eq!(
        text(container, &["readinessProbe", "httpGet", "path"]),
        "/readyz"
    );
    assert_eq!(
        text(container, &["livenessProbe", "httpGet", "path"]),
        "/livez"
    );
    let pre_stop = at(container, &["lifecycle", "preStop", "exec", "command"]);
    assert!(pre_stop.as_sequence().is_some_and(|c| !c.is_empty()));
    // The command line runs `raftkv server` with the data dir on the volume.
    let command = serde_yaml::to_string(at(container, &["command"])).unwrap();
    assert!(command.contains("raftkv server"), "{command}");
    assert!(
        command.contains("--data-dir /var/lib/raftkv/data"),
        "{command}"
    );
    assert!(command.contains("--peers"), "{command}");
    let claim = text(
        set,
        &["spec", "volumeClaimTemplates", "0", "metadata", "name"],
    );
    assert_eq!(text(container, &["volumeMounts", "0", "name"]), claim);
    assert_eq!(
        text(container, &["volumeMounts", "0", "mountPath"]),
        "/var/lib/raftkv"
    );

    let budgets = of_kind("PodDisruptionBudget");
    assert_eq!(budgets.len(), 1);
    assert_eq!(number(budgets[0], &["spec", "maxUnavailable"]), 1);
    assert_eq!(at(budgets[0], &["spec", "selector", "matchLabels"]), labels);
}

#[test]
fn compose_systemd_and_the_dockerfile_have_what_a_cluster_relies_on() {
    let compose: Yaml = serde_yaml::from_str(&read("compose.yaml")).expect("valid YAML");
    let services = at(&compose, &["services"]).as_mapping().unwrap();
    assert_eq!(services.len(), 3);
    for (name, service) in services {
        let name = name.as_str().unwrap();
        let command: Vec<&str> = at(service, &["command"])
            .as_sequence()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(command[0], "server", "{name}");
        assert!(command.contains(&"--peers"), "{name}: {command:?}");
        let volume = text(service, &["volumes", "0"]);
        let volume_name = volume.split(':').next().unwrap();
        at(&compose, &["volumes", volume_name]);
        assert_eq!(text(service, &["stop_signal"]), "SIGTERM");
        text(service, &["stop_grace_period"]);
    }

    let unit = read("systemd/raftkv@.service");
    for needed in [
        "[Service]",
        "ExecStart=/usr/local/bin/raftkv server",
        "User=raftkv",
        "KillSignal=SIGTERM",
        "StateDirectory=raftkv/%i",
        "Restart=on-failure",
        "[Install]",
    ] {
        assert!(unit.contains(needed), "the unit lacks {needed:?}:\n{unit}");
    }

    let dockerfile = read("Dockerfile");
    let stages = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .count();
    assert!(stages >= 2, "multi-stage:\n{dockerfile}");
    let user = dockerfile
        .lines()
        .rfind(|l| l.starts_with("USER "))
        .expect("a USER line");
    assert!(!user.contains("root") && user != "USER 0", "{user}");
    assert!(dockerfile.contains("VOLUME"), "{dockerfile}");
    assert!(dockerfile.contains("ENTRYPOINT"), "{dockerfile}");
}
