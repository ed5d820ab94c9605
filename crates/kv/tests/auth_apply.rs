//! Users and roles as replicated state: auth changes go through the log,
//! and every write is checked again when it is applied, against the users
//! and roles of that moment (so a permission revoked while a write was in
//! flight holds). A snapshot keeps all of it.

use bytes::Bytes;
use raftkv_kv::auth::{auth_command::Change, AuthCommand, AuthStore};
use raftkv_kv::{ApplyOutcome, Command, KvState, Op, SessionLimits, CURRENT_RULES};
use raftkv_proto::{authpb, etcdserverpb as pb};

struct Log {
    state: KvState,
    index: u64,
}

impl Log {
    fn new() -> Log {
        Log {
            state: KvState::new(SessionLimits::default()),
            index: 0,
        }
    }

    fn apply(&mut self, cmd: Command) -> ApplyOutcome {
        self.index += 1;
        self.state.apply(self.index, 1, &cmd)
    }

    fn auth(&mut self, user: &str, change: Change) -> ApplyOutcome {
        self.apply(Command {
            auth: Some(AuthCommand {
                change: Some(change),
            }),
            user: user.into(),
            ..Default::default()
        })
    }

    fn put(&mut self, user: &str, key: &str) -> ApplyOutcome {
        self.apply(Command {
            ops: vec![Op {
                key: Bytes::copy_from_slice(key.as_bytes()),
                value: Bytes::from_static(b"v"),
                delete: false,
            }],
            user: user.into(),
            rules: CURRENT_RULES,
            ..Default::default()
        })
    }
}

fn user_add(name: &str) -> Change {
    Change::UserAdd(pb::AuthUserAddRequest {
        name: name.into(),
        hashed_password: format!("hash-of-{name}"),
        ..Default::default()
    })
}

fn grant_role(user: &str, role: &str) -> Change {
    Change::UserGrantRole(pb::AuthUserGrantRoleRequest {
        user: user.into(),
        role: role.into(),
    })
}

fn prefix_permission(role: &str, prefix: &str) -> Change {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    Change::RoleGrantPermission(pb::AuthRoleGrantPermissionRequest {
        name: role.into(),
        perm: Some(authpb::Permission {
            perm_type: authpb::permission::Type::Readwrite as i32,
            key: Bytes::copy_from_slice(prefix.as_bytes()),
            range_end: Bytes::from(end),
        }),
    })
}

fn applied(outcome: ApplyOutcome) {
    assert!(matches!(outcome, ApplyOutcome::Applied), "{outcome:?}");
}

fn denied(outcome: ApplyOutcome) -> String {
    match outcome {
        ApplyOutcome::Denied(why) => why,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// root with the root role, alice with readwrite on `a/`, auth on.
fn enabled() -> Log {
    let mut log = Log::new();
    applied(log.auth("", user_add("root")));
    applied(log.auth("", grant_role("root", "root")));
    applied(log.auth("", user_add("alice")));
    applied(log.auth(
        "",
        Change::RoleAdd(pb::AuthRoleAddRequest { name: "a".into() }),
    ));
    applied(log.auth("", prefix_permission("a", "a/")));
    applied(log.auth("", grant_role("alice", "a")));
    applied(log.auth("", Change::Enable(Bytes::from_static(b"secret"))));
    log
}

#[test]
fn writes_are_checked_against_the_users_and_roles_when_applied() {
    let mut log = enabled();
    applied(log.put("alice", "a/1"));
    assert_eq!(log.state.get(b"a/1"), Some(Bytes::from_static(b"v")));
    assert_eq!(
        denied(log.put("alice", "b/1")),
        "user alice may not write key b/1"
    );
    assert_eq!(denied(log.put("", "a/2")), "etcdserver: user name is empty");
    assert_eq!(
        denied(log.put("mallory", "a/2")),
        "etcdserver: user name not found"
    );
    applied(log.put("root", "b/1"));
    // Revoked while a write was in flight: the write is refused when it
    // is applied, though it was allowed when it was asked.
    applied(log.auth(
        "root",
        Change::RoleRevokePermission(pb::AuthRoleRevokePermissionRequest {
            role: "a".into(),
            key: Bytes::from_static(b"a/"),
            range_end: Bytes::from_static(b"a0"),
        }),
    ));
    assert_eq!(
        denied(log.put("alice", "a/2")),
        "user alice may not write key a/2"
    );
    assert_eq!(log.state.get(b"a/2"), None);
}

#[test]
fn only_root_changes_auth_once_it_is_on_and_only_root_compacts() {
    let mut log = enabled();
    assert_eq!(
        denied(log.auth("alice", user_add("eve"))),
        "etcdserver: permission denied"
    );
    applied(log.auth("root", user_add("eve")));
    assert!(log.state.auth().has_user("eve"));
    applied(log.put("root", "a/1"));
    let compact = |user: &str, by_node| Command {
        compact_revision: 2,
        user: user.into(),
        by_node,
        ..Default::default()
    };
    assert_eq!(
        denied(log.apply(compact("alice", false))),
        "etcdserver: permission denied"
    );
    // What a node does on its own (automatic compaction) needs no user.
    applied(log.apply(compact("", true)));
    // Disabled again by root: anyone writes anything.
    applied(log.auth("root", Change::Disable(true)));
    applied(log.put("", "b/2"));
}

#[test]
fn a_snapshot_keeps_users_roles_and_the_switch() {
    let log = enabled();
    let mut records = Vec::new();
    log.state
        .write_snapshot(b"", |r| {
            records.push(Bytes::copy_from_slice(r));
            Ok::<(), ()>(())
        })
        .unwrap();
    let mut iter = records.into_iter();
    let (restored, _) =
        KvState::restore_snapshot(SessionLimits::default(), || Ok::<_, ()>(iter.next())).unwrap();
    assert_eq!(restored.auth(), log.state.auth());
    assert!(restored.auth().enabled);
    assert_eq!(&restored.auth().secret[..], b"secret");
    assert_eq!(
        restored.auth().users["alice"].password_hash,
        "hash-of-alice"
    );
    // And a state that never used auth writes none.
    assert_eq!(
        KvState::new(SessionLimits::default()).auth(),
        &AuthStore::default()
    );
}
