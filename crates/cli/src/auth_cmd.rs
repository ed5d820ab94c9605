//! `user`, `role` and `auth`: etcd's Auth service on the node's port (any
//! member answers; the leader serves it). Outputs follow etcdctl's words.

use bytes::Bytes;
use raftkv_client::prefix_end;
use raftkv_proto::authpb;
use raftkv_proto::etcdserverpb::auth_client::AuthClient;
use raftkv_proto::etcdserverpb::*;
use serde_json::json;

use crate::args::{AuthCommand, PermissionArg, RoleCommand, UserCommand};
use crate::etcd_cmd::{channel, status_failure, timed};
use crate::failure::Failure;
use crate::output::print_json;
use crate::ClientFlags;

async fn auth_client(flags: &ClientFlags) -> Result<AuthClient<raftkv_client::Channel>, Failure> {
    Ok(AuthClient::new(channel(flags).await?))
}

/// Runs one Auth call, again (on a fresh connection) while the cluster
/// answers "unavailable" — no leader yet, a member restarting — until
/// `--timeout`.
async fn call<T, F, Fut>(flags: &ClientFlags, mut attempt: F) -> Result<T, Failure>
where
    F: FnMut(AuthClient<raftkv_client::Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let deadline = std::time::Instant::now() + flags.timeout;
    let mut backoff = std::time::Duration::from_millis(50);
    loop {
        let status = match attempt(auth_client(flags).await?).await {
            Ok(reply) => return Ok(reply.into_inner()),
            Err(status) => status,
        };
        let again = status.code() == tonic::Code::Unavailable
            && std::time::Instant::now() + backoff < deadline;
        if !again {
            return Err(status_failure(status));
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(std::time::Duration::from_millis(500));
    }
}

/// Prints `text` (or, with --json, `value`).
fn done(flags: &ClientFlags, text: String, value: serde_json::Value) -> Result<(), Failure> {
    if flags.json {
        print_json(&value)
    } else {
        outln!("{text}")
    }
}

/// NAME:PASSWORD, or NAME with the password from RAFTKV_NEW_PASSWORD or
/// asked for on the terminal (twice, to catch a typo).
fn name_and_password(given: &str) -> Result<(String, String), Failure> {
    if let Some((name, password)) = given.split_once(':') {
        return Ok((name.to_string(), password.to_string()));
    }
    if let Ok(password) = std::env::var("RAFTKV_NEW_PASSWORD") {
        return Ok((given.to_string(), password));
    }
    let ask = |prompt: String| {
        rpassword::prompt_password(prompt).map_err(|_| {
            Failure::Usage(format!(
                "no password for {given}: give NAME:PASSWORD or RAFTKV_NEW_PASSWORD (there is \
                 no terminal to ask on)"
            ))
        })
    };
    if given.is_empty() {
        return Err(Failure::Usage("the user name is empty".into()));
    }
    let password = ask(format!("Password of {given}: "))?;
    if ask(format!("Type password of {given} again for confirmation: "))? != password {
        return Err(Failure::Usage("the passwords do not match".into()));
    }
    Ok((given.to_string(), password))
}

pub async fn user(flags: &ClientFlags, command: UserCommand) -> Result<(), Failure> {
    match command {
        UserCommand::Add { name, no_password } => {
            let (name, password) = if no_password {
                if name.contains(':') {
                    return Err(Failure::Usage(format!(
                        "user add {name} --no-password: give the name only (a user without a \
                         password has none to give)"
                    )));
                }
                (name, String::new())
            } else {
                name_and_password(&name)?
            };
            let request = AuthUserAddRequest {
                name: name.clone(),
                password,
                options: Some(authpb::UserAddOptions { no_password }),
                hashed_password: String::new(),
            };
            call(flags, |mut a| {
                let r = request.clone();
                async move { a.user_add(timed(flags, r)).await }
            })
            .await?;
            done(
                flags,
                format!("User {name} created"),
                json!({"user": name, "created": true}),
            )
        }
        UserCommand::Delete { name } => {
            let request = AuthUserDeleteRequest { name: name.clone() };
            call(flags, |mut a| {
                let r = request.clone();
                async move { a.user_delete(timed(flags, r)).await }
            })
            .await?;
            done(
                flags,
                format!("User {name} deleted"),
                json!({"user": name, "deleted": true}),
            )
        }
        UserCommand::Get { name } => {
            let request = AuthUserGetRequest { name: name.clone() };
            let reply = call(flags, |mut a| {
                let r = request.clone();
                async move { a.user_get(timed(flags, r)).await }
            })
            .await?;
            done(
                flags,
                format!("User: {name}\nRoles: {}", reply.roles.join(" ")),
                json!({"user": name, "roles": reply.roles}),
            )
        }
        UserCommand::List => {
            let reply = call(flags, |mut a| {
                let r = AuthUserListRequest {};
                async move { a.user_list(timed(flags, r)).await }
            })
            .await?;
            done(flags, reply.users.join("\n"), json!({"users": reply.users}))
        }
        UserCommand::Passwd { name } => {
            let (name, password) = name_and_password(&name)?;
            let request = AuthUserChangePasswordRequest {
                name: name.clone(),
                password,
                hashed_password: String::new(),
            };
            call(flags, |mut a| {
                let r = request.clone();
                async move { a.user_change_password(timed(flags, r)).await }
            })
            .await?;
            done(
                flags,
                "Password updated".into(),
                json!({"user": name, "password_changed": true}),
            )
        }
        UserCommand::GrantRole { user, role } => {
            let request = AuthUserGrantRoleRequest {
                user: user.clone(),
                role: role.clone(),
            };
            call(flags, |mut a| {
                let r = request.clone();
                async move { a.user_grant_role(timed(flags, r)).await }
            })
            .await?;
            done(
                flags,
                format!("Role {role} is granted to user {user}"),
                json!({"user": user, "role": role, "granted": true}),
            )
        }
        UserCommand::RevokeRole { user, role } => {
            let request = AuthUserRevokeRoleRequest {
                name: user.clone(),
                role: role.clone(),
            };
            call(flags, |mut a| {
                let r = request.clone();
                async move { a.user_revoke_role(timed(flags, r)).await }
            })
            .await?;
            done(
                flags,
                format!("Role {role} is revoked from user {user}"),
                json!({"user": user, "role": role, "revoked": true}),
            )
        }
    }
}

/// KEY, [KEY, RANGE_END), or (--prefix) every key starting with KEY.
fn key_range(
    key: &str,
    range_end: Option<String>,
    prefix: bool,
) -> Result<(Bytes, Bytes), Failure> {
    let key = Bytes::copy_from_slice(key.as_bytes());
    match (range_end, prefix) {
        (Some(_), true) => Err(Failure::Usage(
            "give RANGE_END or --prefix, not both".into(),
        )),
        (Some(end), false) => Ok((key, Bytes::from(end.into_bytes()))),
        (None, true) if key.is_empty() => {
            Ok((Bytes::from_static(b"\0"), Bytes::from_static(b"\0")))
        }
        (None, true) => {
            let end = prefix_end(&key);
            Ok((key, end))
        }
        (None, false) => Ok((key, Bytes::new())),
    }
}

/// A permission's keys as etcdctl shows them.
fn describe_keys(key: &[u8], range_end: &[u8]) -> String {
    let key_text = String::from_utf8_lossy(key);
    match (key, range_end) {
        ([0], [0]) => "every key".to_string(),
        (_, []) => key_text.into_owned(),
        (_, [0]) => format!("[{key_text}, <open ended>"),
        (_, end) if end == prefix_end(key).as_ref() => format!(
            "[{key_text}, {}) (prefix {key_text})",
            String::from_utf8_lossy(end)
        ),
        (_, end) => format!("[{key_text}, {})", String::from_utf8_lossy(end)),
    }
}

pub async fn role(flags: &ClientFlags, command: RoleCommand) -> Result<(), Failure> {
    match command {
        RoleCommand::Add { name } => {
            let request = AuthRoleAddRequest { name: name.clone() };
            call(flags, |mut a| {
                let r = request.clone();
                async move { a.role_add(timed(flags, r)).await }
            })
            .await?;
            done(
                flags,
                format!("Role {name} created"),
                json!({"role": name, "created": true}),
            )
        }
        RoleCommand::Delete { name } => {
            let request = AuthRoleDeleteRequest { role: name.clone() };
            call(flags, |mut a| {
                let r = request.clone();
                async move { a.role_delete(timed(flags, r)).await }
            })
            .await?;
            done(
                flags,
                format!("Role {name} deleted"),
                json!({"role": name, "deleted": true}),
            )
        }
        RoleCommand::Get { name } => {
            let request = AuthRoleGetRequest { role: name.clone() };
            let reply = call(flags, |mut a| {
                let r = request.clone();
                async move { a.role_get(timed(flags, r)).await }
            })
            .await?;
            if flags.json {
                let permissions: Vec<serde_json::Value> = reply
                    .perm
                    .iter()
                    .map(|p| {
                        json!({
                            "permission": match p.perm_type {
                                0 => "read",
                                1 => "write",
                                _ => "readwrite",
                            },
                            "key": String::from_utf8_lossy(&p.key),
                            "range_end": String::from_utf8_lossy(&p.range_end),
                        })
                    })
                    .collect();
                return print_json(&json!({"role": name, "permissions": permissions}));
            }
            outln!("Role {name}")?;
            for (title, kinds) in [("KV Read:", [0, 2]), ("KV Write:", [1, 2])] {
                outln!("{title}")?;
                for p in reply.perm.iter().filter(|p| kinds.contains(&p.perm_type)) {
                    outln!("\t{}", describe_keys(&p.key, &p.range_end))?;
                }
            }
            Ok(())
        }
        RoleCommand::List => {
            let reply = call(flags, |mut a| {
                let r = AuthRoleListRequest {};
                async move { a.role_list(timed(flags, r)).await }
            })
            .await?;
            done(flags, reply.roles.join("\n"), json!({"roles": reply.roles}))
        }
        RoleCommand::GrantPermission {
            role,
            permission,
            key,
            range_end,
            prefix,
        } => {
            let (key, range_end) = key_range(&key, range_end, prefix)?;
            let perm_type = match permission {
                PermissionArg::Read => authpb::permission::Type::Read,
                PermissionArg::Write => authpb::permission::Type::Write,
                PermissionArg::Readwrite => authpb::permission::Type::Readwrite,
            };
            let request = AuthRoleGrantPermissionRequest {
                name: role.clone(),
                perm: Some(authpb::Permission {
                    perm_type: perm_type as i32,
                    key,
                    range_end,
                }),
            };
            call(flags, |mut a| {
                let r = request.clone();
                async move { a.role_grant_permission(timed(flags, r)).await }
            })
            .await?;
            done(
                flags,
                format!("Role {role} updated"),
                json!({"role": role, "updated": true}),
            )
        }
        RoleCommand::RevokePermission {
            role,
            key,
            range_end,
            prefix,
        } => {
            let (key, range_end) = key_range(&key, range_end, prefix)?;
            let request = AuthRoleRevokePermissionRequest {
                role: role.clone(),
                key,
                range_end,
            };
            call(flags, |mut a| {
                let r = request.clone();
                async move { a.role_revoke_permission(timed(flags, r)).await }
            })
            .await?;
            done(
                flags,
                format!("Permission of range is revoked from role {role}"),
                json!({"role": role, "revoked": true}),
            )
        }
    }
}

pub async fn auth(flags: &ClientFlags, command: AuthCommand) -> Result<(), Failure> {
    match command {
        AuthCommand::Enable => {
            call(flags, |mut a| {
                let r = AuthEnableRequest {};
                async move { a.auth_enable(timed(flags, r)).await }
            })
            .await?;
            done(
                flags,
                "Authentication Enabled".into(),
                json!({"enabled": true}),
            )
        }
        AuthCommand::Disable => {
            call(flags, |mut a| {
                let r = AuthDisableRequest {};
                async move { a.auth_disable(timed(flags, r)).await }
            })
            .await?;
            done(
                flags,
                "Authentication Disabled".into(),
                json!({"enabled": false}),
            )
        }
        AuthCommand::Status => {
            let reply = call(flags, |mut a| {
                let r = AuthStatusRequest {};
                async move { a.auth_status(timed(flags, r)).await }
            })
            .await?;
            done(
                flags,
                format!(
                    "Authentication Status: {}\nAuthRevision: {}",
                    reply.enabled, reply.auth_revision
                ),
                json!({"enabled": reply.enabled, "auth_revision": reply.auth_revision}),
            )
        }
    }
}
