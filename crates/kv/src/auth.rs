//! etcd's authentication model as replicated state: users (with a password
//! hash, never the password), roles with key-range permissions, the
//! `enabled` flag, and the secret that signs tokens. Changed only through
//! the log (one `AuthChange` per entry), so every member holds the same
//! users and roles at the same index, and the permission check made when a
//! write is applied sees the auth state of that moment.
//!
//! Permissions follow etcd: a `[key, range_end)` range (an empty
//! `range_end` is the single key, `"\0"` every key from `key` on), read,
//! write or both; the `root` role may do anything. A request's range must lie
//! inside the union of the user's permitted ranges.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use raftkv_proto::authpb;
use raftkv_proto::etcdserverpb::{RequestOp, TxnRequest};
pub use raftkv_proto::internal::{auth_command, AuthCommand, AuthState};

/// The user and the role that may do anything (and that auth needs before
/// it can be enabled).
pub const ROOT: &str = "root";

// etcd's texts (api/v3rpc/rpctypes), which clients match on.
pub const USER_EMPTY: &str = "etcdserver: user name is empty";
pub const USER_EXISTS: &str = "etcdserver: user name already exists";
pub const USER_NOT_FOUND: &str = "etcdserver: user name not found";
pub const ROLE_EXISTS: &str = "etcdserver: role name already exists";
pub const ROLE_NOT_FOUND: &str = "etcdserver: role name not found";
pub const ROLE_EMPTY: &str = "etcdserver: role name is empty";
pub const ROOT_USER_MISSING: &str = "etcdserver: root user does not exist";
pub const ROOT_ROLE_MISSING: &str = "etcdserver: root user does not have root role";
pub const ROLE_NOT_GRANTED: &str = "etcdserver: role is not granted to the user";
pub const PERMISSION_NOT_GRANTED: &str = "etcdserver: permission is not granted to the role";
pub const PERMISSION_DENIED: &str = "etcdserver: permission denied";
pub const INVALID_AUTH_MGMT: &str = "etcdserver: invalid auth management";

/// What a permission allows (etcd's `authpb.Permission.Type` numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    Read = 0,
    Write = 1,
    ReadWrite = 2,
}

impl Access {
    pub fn from_etcd(value: i32) -> Option<Access> {
        match value {
            0 => Some(Access::Read),
            1 => Some(Access::Write),
            2 => Some(Access::ReadWrite),
            _ => None,
        }
    }

    fn allows(self, wanted: Access) -> bool {
        self == Access::ReadWrite || self == wanted
    }
}

/// Access to one key or key range.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Permission {
    pub access: Access,
    pub key: Bytes,
    /// etcd's convention: empty is the single key, `"\0"` is every key from
    /// `key` on.
    pub range_end: Bytes,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct User {
    /// A PHC string (argon2), or empty for a user without a password.
    pub password_hash: String,
    /// Authenticates without a password (by its certificate's CN).
    pub no_password: bool,
    pub roles: BTreeSet<String>,
    /// The auth revision at which this user was added or its password last
    /// changed: a token made before then is no longer good.
    pub since: u64,
}

/// One change, as it goes through the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthChange {
    /// `secret` signs tokens from now on (a new one each time auth is
    /// turned on, so tokens from before a disable are no longer good).
    Enable {
        secret: Bytes,
    },
    Disable,
    UserAdd {
        name: String,
        password_hash: String,
        no_password: bool,
    },
    UserDelete {
        name: String,
    },
    UserChangePassword {
        name: String,
        password_hash: String,
    },
    UserGrantRole {
        user: String,
        role: String,
    },
    UserRevokeRole {
        user: String,
        role: String,
    },
    RoleAdd {
        name: String,
    },
    RoleDelete {
        name: String,
    },
    RoleGrantPermission {
        role: String,
        permission: Permission,
    },
    RoleRevokePermission {
        role: String,
        key: Bytes,
        range_end: Bytes,
    },
}

/// The replicated auth state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthStore {
    pub enabled: bool,
    /// Goes up with every change (etcd's auth revision).
    pub revision: u64,
    pub users: BTreeMap<String, User>,
    /// Role name → its permissions (`root` holds none: it may do anything).
    pub roles: BTreeMap<String, Vec<Permission>>,
    /// Signs tokens; chosen by the proposer of the enable that turned auth on.
    pub secret: Bytes,
}

impl AuthStore {
    /// Applies a committed change; the refusal is etcd's text.
    pub fn apply(&mut self, change: &AuthChange) -> Result<(), &'static str> {
        match change {
            AuthChange::Enable { secret } => {
                let root = self.users.get(ROOT).ok_or(ROOT_USER_MISSING)?;
                if !root.roles.contains(ROOT) {
                    return Err(ROOT_ROLE_MISSING);
                }
                if !self.enabled {
                    self.secret = secret.clone();
                }
                self.enabled = true;
            }
            AuthChange::Disable => self.enabled = false,
            AuthChange::UserAdd {
                name,
                password_hash,
                no_password,
            } => {
                if name.is_empty() {
                    return Err(USER_EMPTY);
                }
                if self.users.contains_key(name) {
                    return Err(USER_EXISTS);
                }
                self.users.insert(
                    name.clone(),
                    User {
                        password_hash: password_hash.clone(),
                        no_password: *no_password,
                        roles: BTreeSet::new(),
                        since: self.revision + 1,
                    },
                );
            }
            AuthChange::UserDelete { name } => {
                if self.enabled && name == ROOT {
                    return Err(INVALID_AUTH_MGMT);
                }
                self.users.remove(name).ok_or(USER_NOT_FOUND)?;
            }
            AuthChange::UserChangePassword {
                name,
                password_hash,
            } => {
                let user = self.users.get_mut(name).ok_or(USER_NOT_FOUND)?;
                user.password_hash = password_hash.clone();
                user.since = self.revision + 1;
            }
            AuthChange::UserGrantRole { user, role } => {
                if role != ROOT && !self.roles.contains_key(role) {
                    return Err(ROLE_NOT_FOUND);
                }
                let user = self.users.get_mut(user).ok_or(USER_NOT_FOUND)?;
                user.roles.insert(role.clone());
            }
            AuthChange::UserRevokeRole { user, role } => {
                if self.enabled && user == ROOT && role == ROOT {
                    return Err(INVALID_AUTH_MGMT);
                }
                let user = self.users.get_mut(user).ok_or(USER_NOT_FOUND)?;
                if !user.roles.remove(role) {
                    return Err(ROLE_NOT_GRANTED);
                }
            }
            AuthChange::RoleAdd { name } => {
                if name.is_empty() {
                    return Err(ROLE_EMPTY);
                }
                if self.roles.contains_key(name) {
                    return Err(ROLE_EXISTS);
                }
                self.roles.insert(name.clone(), Vec::new());
            }
            AuthChange::RoleDelete { name } => {
                if self.enabled && name == ROOT {
                    return Err(INVALID_AUTH_MGMT);
                }
                self.roles.remove(name).ok_or(ROLE_NOT_FOUND)?;
                for user in self.users.values_mut() {
                    user.roles.remove(name);
                }
            }
            AuthChange::RoleGrantPermission { role, permission } => {
                let permissions = self.roles.get_mut(role).ok_or(ROLE_NOT_FOUND)?;
                // etcd: granting the same range again replaces its access.
                match permissions
                    .iter_mut()
                    .find(|p| p.key == permission.key && p.range_end == permission.range_end)
                {
                    Some(existing) => existing.access = permission.access,
                    None => permissions.push(permission.clone()),
                }
                permissions.sort();
            }
            AuthChange::RoleRevokePermission {
                role,
                key,
                range_end,
            } => {
                let permissions = self.roles.get_mut(role).ok_or(ROLE_NOT_FOUND)?;
                let before = permissions.len();
                permissions.retain(|p| !(p.key == *key && p.range_end == *range_end));
                if permissions.len() == before {
                    return Err(PERMISSION_NOT_GRANTED);
                }
            }
        }
        self.revision += 1;
        Ok(())
    }

    /// Whether `user` has the root role.
    pub fn is_root(&self, user: &str) -> bool {
        self.users.get(user).is_some_and(|u| u.roles.contains(ROOT))
    }

    /// Whether `user` may `access` every key of `[key, range_end)` (etcd's
    /// range convention). With auth disabled, everyone may.
    pub fn may(&self, user: &str, access: Access, key: &[u8], range_end: &[u8]) -> bool {
        if !self.enabled || self.is_root(user) {
            return true;
        }
        let Some(user) = self.users.get(user) else {
            return false;
        };
        let mut granted: Vec<Interval> = self.granted(user, access).collect();
        let Some(wanted) = Interval::of(key, range_end) else {
            // An empty range asks for nothing.
            return true;
        };
        granted.sort();
        covers(&granted, &wanted)
    }

    /// Whether `user` may read at least one key of `[key, range_end)` (a
    /// watch of a wider range is sent only the keys it may read; one of a
    /// range it may read nothing of is refused).
    pub fn may_read_any(&self, user: &str, key: &[u8], range_end: &[u8]) -> bool {
        if !self.enabled || self.is_root(user) {
            return true;
        }
        let Some(user) = self.users.get(user) else {
            return false;
        };
        let Some(wanted) = Interval::of(key, range_end) else {
            return false;
        };
        self.granted(user, Access::Read)
            .any(|granted| granted.overlaps(&wanted))
    }

    /// The key ranges `user`'s roles grant `access` to.
    fn granted<'a>(
        &'a self,
        user: &'a User,
        access: Access,
    ) -> impl Iterator<Item = Interval> + 'a {
        user.roles
            .iter()
            .filter_map(|role| self.roles.get(role))
            .flatten()
            .filter(move |p| p.access.allows(access))
            .filter_map(|p| Interval::of(&p.key, &p.range_end))
    }

    /// Whether `user` may read `key` (a watcher is sent only these).
    pub fn may_read_key(&self, user: &str, key: &[u8]) -> bool {
        self.may(user, Access::Read, key, &[])
    }
}

/// A command with an `AuthCommand` that carries no change.
pub const EMPTY_AUTH_COMMAND: &str = "an auth command without a change";

impl AuthChange {
    /// The change an `AuthCommand` from the log carries.
    pub fn from_command(command: &AuthCommand) -> Result<AuthChange, &'static str> {
        use auth_command::Change as C;
        Ok(match command.change.as_ref().ok_or(EMPTY_AUTH_COMMAND)? {
            C::Enable(secret) => AuthChange::Enable {
                secret: secret.clone(),
            },
            C::Disable(_) => AuthChange::Disable,
            C::UserAdd(r) => AuthChange::UserAdd {
                name: r.name.clone(),
                password_hash: r.hashed_password.clone(),
                no_password: r.options.as_ref().is_some_and(|o| o.no_password),
            },
            C::UserDelete(r) => AuthChange::UserDelete {
                name: r.name.clone(),
            },
            C::UserChangePassword(r) => AuthChange::UserChangePassword {
                name: r.name.clone(),
                password_hash: r.hashed_password.clone(),
            },
            C::UserGrantRole(r) => AuthChange::UserGrantRole {
                user: r.user.clone(),
                role: r.role.clone(),
            },
            C::UserRevokeRole(r) => AuthChange::UserRevokeRole {
                user: r.name.clone(),
                role: r.role.clone(),
            },
            C::RoleAdd(r) => AuthChange::RoleAdd {
                name: r.name.clone(),
            },
            C::RoleDelete(r) => AuthChange::RoleDelete {
                name: r.role.clone(),
            },
            C::RoleGrantPermission(r) => {
                let perm = r.perm.as_ref().ok_or(PERMISSION_NOT_GIVEN)?;
                AuthChange::RoleGrantPermission {
                    role: r.name.clone(),
                    permission: Permission {
                        access: Access::from_etcd(perm.perm_type).ok_or(PERMISSION_NOT_GIVEN)?,
                        key: perm.key.clone(),
                        range_end: perm.range_end.clone(),
                    },
                }
            }
            C::RoleRevokePermission(r) => AuthChange::RoleRevokePermission {
                role: r.role.clone(),
                key: r.key.clone(),
                range_end: r.range_end.clone(),
            },
        })
    }
}

/// A grant without a permission, or with an unknown kind.
pub const PERMISSION_NOT_GIVEN: &str = "etcdserver: permission not given";

impl AuthStore {
    /// The state as a snapshot keeps it.
    pub fn to_state(&self) -> AuthState {
        AuthState {
            enabled: self.enabled,
            revision: self.revision,
            secret: self.secret.clone(),
            users: self
                .users
                .iter()
                .map(|(name, user)| authpb::User {
                    name: Bytes::copy_from_slice(name.as_bytes()),
                    password: Bytes::copy_from_slice(user.password_hash.as_bytes()),
                    roles: user.roles.iter().cloned().collect(),
                    options: Some(authpb::UserAddOptions {
                        no_password: user.no_password,
                    }),
                })
                .collect(),
            user_since: self.users.values().map(|user| user.since).collect(),
            roles: self
                .roles
                .iter()
                .map(|(name, permissions)| authpb::Role {
                    name: Bytes::copy_from_slice(name.as_bytes()),
                    key_permission: permissions.iter().map(etcd_permission).collect(),
                })
                .collect(),
        }
    }

    /// The state a snapshot kept; the refusal says what is malformed.
    pub fn from_state(state: &AuthState) -> Result<AuthStore, String> {
        let text = |bytes: &Bytes, what: &str| {
            String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what} name is not UTF-8"))
        };
        let mut store = AuthStore {
            enabled: state.enabled,
            revision: state.revision,
            secret: state.secret.clone(),
            ..Default::default()
        };
        for (i, user) in state.users.iter().enumerate() {
            store.users.insert(
                text(&user.name, "a user")?,
                User {
                    password_hash: text(&user.password, "a password hash")?,
                    no_password: user.options.as_ref().is_some_and(|o| o.no_password),
                    roles: user.roles.iter().cloned().collect(),
                    since: state.user_since.get(i).copied().unwrap_or(0),
                },
            );
        }
        for role in &state.roles {
            let mut permissions = Vec::new();
            for p in &role.key_permission {
                permissions.push(Permission {
                    access: Access::from_etcd(p.perm_type)
                        .ok_or_else(|| format!("permission kind {}", p.perm_type))?,
                    key: p.key.clone(),
                    range_end: p.range_end.clone(),
                });
            }
            permissions.sort();
            store.roles.insert(text(&role.name, "a role")?, permissions);
        }
        Ok(store)
    }

    /// Whether `user` names a user that exists.
    pub fn has_user(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// Why `user` may not do everything `txn` asks (etcd's rules: read on
    /// the keys compared and ranged, and on what a `prev_kv` returns;
    /// write on the keys put and deleted), or `Ok`.
    pub fn check_txn(&self, user: &str, txn: &TxnRequest) -> Result<(), Denied> {
        for compare in &txn.compare {
            self.check(user, Access::Read, &compare.key, &compare.range_end)?;
        }
        for op in txn.success.iter().chain(&txn.failure) {
            self.check_op(user, op)?;
        }
        Ok(())
    }

    fn check_op(&self, user: &str, op: &RequestOp) -> Result<(), Denied> {
        use raftkv_proto::etcdserverpb::request_op::Request;
        match &op.request {
            Some(Request::RequestRange(r)) => self.check(user, Access::Read, &r.key, &r.range_end),
            Some(Request::RequestPut(r)) => {
                self.check(user, Access::Write, &r.key, &[])?;
                if r.prev_kv {
                    self.check(user, Access::Read, &r.key, &[])?;
                }
                Ok(())
            }
            Some(Request::RequestDeleteRange(r)) => {
                self.check(user, Access::Write, &r.key, &r.range_end)?;
                if r.prev_kv {
                    self.check(user, Access::Read, &r.key, &r.range_end)?;
                }
                Ok(())
            }
            Some(Request::RequestTxn(t)) => self.check_txn(user, t),
            None => Ok(()),
        }
    }

    /// `may`, as the refusal to give when not.
    pub fn check(
        &self,
        user: &str,
        access: Access,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), Denied> {
        if self.may(user, access, key, range_end) {
            return Ok(());
        }
        Err(Denied {
            user: user.to_string(),
            access,
            key: Bytes::copy_from_slice(key),
            range_end: Bytes::copy_from_slice(range_end),
        })
    }
}

/// A refused access: who, what kind, which keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denied {
    pub user: String,
    pub access: Access,
    pub key: Bytes,
    pub range_end: Bytes,
}

impl std::fmt::Display for Denied {
    /// "user alice may not write key b/1" (or "keys [b/, b0)").
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verb = match self.access {
            Access::Read => "read",
            Access::Write => "write",
            Access::ReadWrite => "read and write",
        };
        let key = printable(&self.key);
        match (&self.key[..], &self.range_end[..]) {
            (_, []) => write!(f, "user {} may not {verb} key {key}", self.user),
            ([0], [0]) => write!(f, "user {} may not {verb} every key", self.user),
            (_, [0]) => write!(f, "user {} may not {verb} keys from {key} on", self.user),
            (_, end) => write!(
                f,
                "user {} may not {verb} keys [{key}, {})",
                self.user,
                printable(end)
            ),
        }
    }
}

/// Key bytes for a message: text as it is, other bytes escaped.
fn printable(key: &[u8]) -> String {
    key.escape_ascii().to_string()
}

/// A permission as etcd's API gives it.
pub fn etcd_permission(p: &Permission) -> authpb::Permission {
    authpb::Permission {
        perm_type: p.access as i32,
        key: p.key.clone(),
        range_end: p.range_end.clone(),
    }
}

/// `[start, end)` of keys; `end` `None` is unbounded.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Interval {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl Interval {
    fn overlaps(&self, other: &Interval) -> bool {
        let before =
            |start: &Vec<u8>, end: &Option<Vec<u8>>| end.as_ref().is_none_or(|e| start < e);
        before(&self.start, &other.end) && before(&other.start, &self.end)
    }

    /// etcd's (key, range_end); `None` for an empty range.
    fn of(key: &[u8], range_end: &[u8]) -> Option<Interval> {
        match range_end {
            [] => {
                // The single key: [key, key + "\0").
                let mut end = key.to_vec();
                end.push(0);
                Some(Interval {
                    start: key.to_vec(),
                    end: Some(end),
                })
            }
            [0] => Some(Interval {
                start: key.to_vec(),
                end: None,
            }),
            end if end > key => Some(Interval {
                start: key.to_vec(),
                end: Some(end.to_vec()),
            }),
            _ => None,
        }
    }
}

/// Whether the union of `granted` (sorted by start) holds all of `wanted`.
fn covers(granted: &[Interval], wanted: &Interval) -> bool {
    // The point up to which `wanted` is covered so far.
    let mut reached: Vec<u8> = wanted.start.clone();
    for interval in granted {
        if interval.start > reached {
            // A gap before this interval (later ones start later still).
            break;
        }
        match &interval.end {
            None => return true,
            Some(end) if *end > reached => reached = end.clone(),
            Some(_) => {}
        }
        if wanted.end.as_ref().is_some_and(|want| reached >= *want) {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with_alice(permissions: &[(Access, &str, &str)]) -> AuthStore {
        let mut auth = AuthStore::default();
        let add = |auth: &mut AuthStore, change| auth.apply(&change).unwrap();
        add(
            &mut auth,
            AuthChange::UserAdd {
                name: ROOT.into(),
                password_hash: "h".into(),
                no_password: false,
            },
        );
        add(
            &mut auth,
            AuthChange::UserGrantRole {
                user: ROOT.into(),
                role: ROOT.into(),
            },
        );
        add(
            &mut auth,
            AuthChange::UserAdd {
                name: "alice".into(),
                password_hash: "h".into(),
                no_password: false,
            },
        );
        add(&mut auth, AuthChange::RoleAdd { name: "a".into() });
        for (access, key, end) in permissions {
            add(
                &mut auth,
                AuthChange::RoleGrantPermission {
                    role: "a".into(),
                    permission: Permission {
                        access: *access,
                        key: Bytes::copy_from_slice(key.as_bytes()),
                        range_end: Bytes::copy_from_slice(end.as_bytes()),
                    },
                },
            );
        }
        add(
            &mut auth,
            AuthChange::UserGrantRole {
                user: "alice".into(),
                role: "a".into(),
            },
        );
        add(
            &mut auth,
            AuthChange::Enable {
                secret: Bytes::from_static(b"s"),
            },
        );
        auth
    }

    #[test]
    fn a_wider_range_is_readable_in_part_if_any_permission_overlaps_it() {
        let auth = store_with_alice(&[(Access::ReadWrite, "a/", "a0")]);
        assert!(
            auth.may_read_any("alice", b"\0", b"\0"),
            "every key: a/ is in it"
        );
        assert!(auth.may_read_any("alice", b"a/x", b""));
        assert!(auth.may_read_any("alice", b"0", b"b"));
        assert!(!auth.may_read_any("alice", b"b/", b"b0"));
        assert!(
            !auth.may_read_any("alice", b"a0", b"\0"),
            "from a0 on: none of a/"
        );
        assert!(!auth.may_read_any("bob", b"\0", b"\0"));
    }

    #[test]
    fn a_prefix_permission_covers_its_keys_and_ranges_only() {
        let auth = store_with_alice(&[(Access::ReadWrite, "a/", "a0")]);
        assert!(auth.may("alice", Access::Write, b"a/1", b""));
        assert!(auth.may("alice", Access::Read, b"a/", b"a0"));
        assert!(auth.may("alice", Access::Read, b"a/x", b"a/y"));
        assert!(!auth.may("alice", Access::Write, b"b/1", b""));
        assert!(!auth.may("alice", Access::Read, b"a/", b"b"));
        assert!(!auth.may("alice", Access::Read, b"", b"\0"));
        assert!(auth.may(ROOT, Access::Write, b"", b"\0"));
        assert!(!auth.may("mallory", Access::Read, b"a/1", b""));
        assert!(auth.may_read_key("alice", b"a/z"));
        assert!(!auth.may_read_key("alice", b"b"));
    }

    #[test]
    fn ranges_are_covered_by_the_union_of_permissions_and_by_kind() {
        let auth = store_with_alice(&[
            (Access::Read, "a", "c"),
            (Access::Read, "c", "e"),
            (Access::Write, "x", ""),
            (Access::Read, "z", "\0"),
        ]);
        assert!(auth.may("alice", Access::Read, b"b", b"d"));
        assert!(!auth.may("alice", Access::Read, b"b", b"f"));
        assert!(!auth.may("alice", Access::Write, b"b", b""));
        assert!(auth.may("alice", Access::Write, b"x", b""));
        assert!(!auth.may("alice", Access::Write, b"x0", b""));
        assert!(auth.may("alice", Access::Read, b"zz", b"\0"));
    }

    #[test]
    fn auth_needs_root_and_etcd_refuses_what_etcd_refuses() {
        let mut auth = AuthStore::default();
        let enable = AuthChange::Enable {
            secret: Bytes::from_static(b"s"),
        };
        assert_eq!(auth.apply(&enable), Err(ROOT_USER_MISSING));
        auth.apply(&AuthChange::UserAdd {
            name: ROOT.into(),
            password_hash: "h".into(),
            no_password: false,
        })
        .unwrap();
        assert_eq!(auth.apply(&enable), Err(ROOT_ROLE_MISSING));
        assert_eq!(
            auth.apply(&AuthChange::UserGrantRole {
                user: ROOT.into(),
                role: "nope".into()
            }),
            Err(ROLE_NOT_FOUND)
        );
        auth.apply(&AuthChange::UserGrantRole {
            user: ROOT.into(),
            role: ROOT.into(),
        })
        .unwrap();
        auth.apply(&enable).unwrap();
        assert!(auth.enabled);
        assert_eq!(
            auth.apply(&AuthChange::UserDelete { name: ROOT.into() }),
            Err(INVALID_AUTH_MGMT)
        );
        assert_eq!(
            auth.apply(&AuthChange::UserAdd {
                name: ROOT.into(),
                password_hash: String::new(),
                no_password: true
            }),
            Err(USER_EXISTS)
        );
        // Enabled again while on: the secret stays; turned on again after a
        // disable: a new one (tokens from before are no longer good).
        auth.apply(&AuthChange::Enable {
            secret: Bytes::from_static(b"again"),
        })
        .unwrap();
        assert_eq!(auth.secret, Bytes::from_static(b"s"));
        auth.apply(&AuthChange::Disable).unwrap();
        auth.apply(&AuthChange::Enable {
            secret: Bytes::from_static(b"other"),
        })
        .unwrap();
        assert_eq!(auth.secret, Bytes::from_static(b"other"));
        // A password change moves the user's `since` (its tokens end).
        let since = auth.users[ROOT].since;
        auth.apply(&AuthChange::UserChangePassword {
            name: ROOT.into(),
            password_hash: "h2".into(),
        })
        .unwrap();
        assert!(auth.users[ROOT].since > since);
    }

    #[test]
    fn revoking_a_role_or_a_permission_takes_access_away() {
        let mut auth = store_with_alice(&[(Access::ReadWrite, "a/", "a0")]);
        let revision = auth.revision;
        auth.apply(&AuthChange::RoleRevokePermission {
            role: "a".into(),
            key: Bytes::from_static(b"a/"),
            range_end: Bytes::from_static(b"a0"),
        })
        .unwrap();
        assert!(auth.revision > revision);
        assert!(!auth.may("alice", Access::Read, b"a/1", b""));
        let mut auth = store_with_alice(&[(Access::ReadWrite, "a/", "a0")]);
        auth.apply(&AuthChange::UserRevokeRole {
            user: "alice".into(),
            role: "a".into(),
        })
        .unwrap();
        assert!(!auth.may("alice", Access::Read, b"a/1", b""));
        assert_eq!(
            auth.apply(&AuthChange::UserRevokeRole {
                user: "alice".into(),
                role: "a".into()
            }),
            Err(ROLE_NOT_GRANTED)
        );
    }
}
