//! Property tests: what an operator types — flags' values and `--config`
//! files — is parsed or refused with a message, never a panic, whatever the
//! text. `PROPTEST_CASES=N` runs more cases (the long mode).

use proptest::prelude::*;
use raftkv_server::config::check_address;
use raftkv_server::units::{parse_duration, parse_size};
use raftkv_server::{parse_peers, ConfigFile, ServerConfig};

/// Text made of what these values are made of, and anything else.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9a-zA-Z=:,\\[\\]. \"#/_-]{0,40}",
        any::<String>(),
        "[0-9]{1,25}(ms|s|m|h|KiB|MiB|GiB|kB|MB|GB|B)?",
    ]
}

const KEYS: &[&str] = &[
    "id",
    "data-dir",
    "listen",
    "advertise",
    "listen-peer",
    "advertise-peer",
    "peers",
    "join",
    "learner",
    "corruption-check-interval",
    "quota-bytes",
    "force-new-cluster",
    "snapshot-entries",
    "wal-segment-size",
    "max-value-size",
    "election-timeout",
    "heartbeat-interval",
    "lease-read",
    "metrics-listen",
    "auto-compaction-mode",
    "auto-compaction-retention",
    "max-request-bytes",
    "cert-file",
    "key-file",
    "client-cert-auth",
    "peer-cert-file",
    "peer-trusted-ca-file",
];

proptest! {
    #![proptest_config(ProptestConfig {
        // PROPTEST_CASES (default 256) sets the number of cases.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn flag_values_are_parsed_or_refused(value in text()) {
        let _ = parse_duration(&value);
        let _ = parse_size(&value);
        let _ = parse_peers(&value);
        let _ = check_address(&value, "--listen");
    }

    #[test]
    fn config_files_are_read_or_refused(
        lines in proptest::collection::vec((0..KEYS.len(), text(), any::<bool>()), 0..8),
    ) {
        let toml: String = lines
            .iter()
            .map(|(key, value, quoted)| {
                if *quoted {
                    format!("{} = {:?}\n", KEYS[*key], value)
                } else {
                    format!("{} = {}\n", KEYS[*key], value)
                }
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raftkv.toml");
        std::fs::write(&path, &toml).unwrap();
        if let Ok(file) = ConfigFile::load(&path) {
            let mut config = ServerConfig::default();
            if file.apply_to(&mut config).is_ok() {
                let _ = config.validate();
            }
        }
    }
}
