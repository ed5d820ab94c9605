//! etcd's Auth service (`etcdctl user/role/auth`): users, roles and the
//! auth switch as replicated state. Every call is served by the leader (a
//! member that does not lead forwards it, with a token for its caller), so
//! a change is read back at once wherever it is asked; passwords are
//! hashed there, off the async threads, and only the hash goes into the log.

use bytes::Bytes;
use raftkv_kv::auth::{auth_command::Change, AuthCommand, AuthStore};
use raftkv_proto::etcdserverpb::auth_client::AuthClient;
use raftkv_proto::etcdserverpb::auth_server::Auth as AuthApi;
use raftkv_proto::etcdserverpb::*;
use raftkv_replica::{Caller, Replica, ReplicaError, Write, WriteSession};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::auth::{caller_of, forward_as, is_password_hash, Auth};
use crate::etcd_kv::{answered_here, etcd_header, etcd_status, is_forwarded, Forwarder};

const WAIT: std::time::Duration = std::time::Duration::from_secs(10);

pub struct EtcdAuth {
    pub replica: Replica,
    pub auth: Auth,
    pub forward: Forwarder,
}

type Reply<T> = Result<Response<T>, Status>;

impl EtcdAuth {
    /// The leader's Auth service if another member leads and `request`
    /// was not forwarded here already; `None`: serve it here.
    fn leader_for<T>(&self, request: &Request<T>) -> Result<Option<AuthClient<Channel>>, Status> {
        let status = self.replica.status();
        if status.leader_id == status.id || is_forwarded(request) {
            return Ok(None);
        }
        Ok(Some(AuthClient::new(self.forward.leader()?)))
    }

    /// `request` as the leader gets it: marked forwarded, with a token for
    /// its caller.
    fn forwarded<T>(&self, request: Request<T>) -> Request<T> {
        let caller = caller_of(&request);
        let mut forwarded = Forwarder::request(request.into_inner());
        forward_as(&self.replica, &caller, &mut forwarded);
        forwarded
    }

    fn header(&self) -> Option<ResponseHeader> {
        Some(etcd_header(&self.replica, None))
    }

    /// Proposes `change` as `caller`; answers once applied.
    async fn propose(&self, caller: Caller, change: Change) -> Result<(), Status> {
        self.replica
            .check_cluster_contact(false)
            .map_err(etcd_status)?;
        let write = Write::Auth(AuthCommand {
            change: Some(change),
        });
        let written = self
            .replica
            .write_as(write, WriteSession::default(), caller);
        match tokio::time::timeout(WAIT, written).await {
            Ok(result) => result.map(|_| ()).map_err(etcd_status),
            Err(_) => Err(etcd_status(ReplicaError::UnknownOutcome(
                "not applied in time".into(),
            ))),
        }
    }

    /// Refuses `caller` unless it is root (or the node), or `own` holds:
    /// what it asks about is its own (etcd lets users read themselves).
    fn root_or_own(
        &self,
        caller: &Caller,
        own: impl FnOnce(&AuthStore, &str) -> bool,
    ) -> Result<(), Status> {
        let kv = self.replica.kv();
        let store = kv.auth();
        let allowed = match caller {
            _ if !store.enabled => true,
            Caller::Node => true,
            Caller::User(user) => store.is_root(user) || own(store, user),
            Caller::Anonymous => false,
        };
        if allowed {
            Ok(())
        } else {
            Err(Status::permission_denied(crate::auth::PERMISSION_DENIED))
        }
    }

    /// The hash to store for a password given in clear or (etcd 3.5) as a
    /// hash already.
    async fn password_hash(&self, password: &str, hashed: &str) -> Result<String, Status> {
        if !hashed.is_empty() {
            if !is_password_hash(hashed) {
                return Err(Status::invalid_argument(
                    "etcdserver: hashedPassword must be an argon2id PHC string",
                ));
            }
            return Ok(hashed.to_string());
        }
        self.auth.hash_password(password).await
    }
}

/// Serves a call at the leader: forwards it there unless this member
/// leads, else runs `$here` with the request's caller and body.
macro_rules! at_leader {
    ($self:ident, $request:ident, $method:ident, |$caller:ident, $body:ident| $here:expr) => {{
        if let Some(mut leader) = $self.leader_for(&$request)? {
            let reply = leader.$method($self.forwarded($request)).await;
            return answered_here(&$self.replica, reply);
        }
        let $caller = caller_of(&$request);
        let $body = $request.into_inner();
        $here
    }};
}

#[tonic::async_trait]
impl AuthApi for EtcdAuth {
    async fn auth_enable(&self, request: Request<AuthEnableRequest>) -> Reply<AuthEnableResponse> {
        at_leader!(self, request, auth_enable, |caller, _body| {
            let secret: [u8; 32] = rand::random();
            self.propose(caller, Change::Enable(Bytes::copy_from_slice(&secret)))
                .await?;
            Ok(Response::new(AuthEnableResponse {
                header: self.header(),
            }))
        })
    }

    async fn auth_disable(
        &self,
        request: Request<AuthDisableRequest>,
    ) -> Reply<AuthDisableResponse> {
        at_leader!(self, request, auth_disable, |caller, _body| {
            self.propose(caller, Change::Disable(true)).await?;
            Ok(Response::new(AuthDisableResponse {
                header: self.header(),
            }))
        })
    }

    async fn auth_status(&self, request: Request<AuthStatusRequest>) -> Reply<AuthStatusResponse> {
        at_leader!(self, request, auth_status, |_caller, _body| {
            let kv = self.replica.kv();
            let store = kv.auth();
            Ok(Response::new(AuthStatusResponse {
                header: self.header(),
                enabled: store.enabled,
                auth_revision: store.revision,
            }))
        })
    }

    async fn authenticate(
        &self,
        request: Request<AuthenticateRequest>,
    ) -> Reply<AuthenticateResponse> {
        at_leader!(self, request, authenticate, |_caller, body| {
            self.auth.check_password(&body.name, &body.password).await?;
            Ok(Response::new(AuthenticateResponse {
                header: self.header(),
                token: self.auth.issue_token(&body.name)?,
            }))
        })
    }

    async fn user_add(&self, request: Request<AuthUserAddRequest>) -> Reply<AuthUserAddResponse> {
        at_leader!(self, request, user_add, |caller, body| {
            let no_password = body.options.as_ref().is_some_and(|o| o.no_password);
            let hashed_password = if no_password {
                String::new()
            } else {
                if body.password.is_empty() && body.hashed_password.is_empty() {
                    return Err(Status::invalid_argument(
                        "etcdserver: password is empty (give one, or --no-password)",
                    ));
                }
                self.password_hash(&body.password, &body.hashed_password)
                    .await?
            };
            let change = Change::UserAdd(AuthUserAddRequest {
                password: String::new(),
                hashed_password,
                ..body
            });
            self.propose(caller, change).await?;
            Ok(Response::new(AuthUserAddResponse {
                header: self.header(),
            }))
        })
    }

    async fn user_get(&self, request: Request<AuthUserGetRequest>) -> Reply<AuthUserGetResponse> {
        at_leader!(self, request, user_get, |caller, body| {
            self.root_or_own(&caller, |_, user| user == body.name)?;
            let kv = self.replica.kv();
            let user = kv
                .auth()
                .users
                .get(&body.name)
                .ok_or_else(|| Status::failed_precondition(raftkv_kv::auth::USER_NOT_FOUND))?;
            Ok(Response::new(AuthUserGetResponse {
                header: self.header(),
                roles: user.roles.iter().cloned().collect(),
            }))
        })
    }

    async fn user_list(
        &self,
        request: Request<AuthUserListRequest>,
    ) -> Reply<AuthUserListResponse> {
        at_leader!(self, request, user_list, |_caller, _body| {
            let users = self.replica.kv().auth().users.keys().cloned().collect();
            Ok(Response::new(AuthUserListResponse {
                header: self.header(),
                users,
            }))
        })
    }

    async fn user_delete(
        &self,
        request: Request<AuthUserDeleteRequest>,
    ) -> Reply<AuthUserDeleteResponse> {
        at_leader!(self, request, user_delete, |caller, body| {
            self.propose(caller, Change::UserDelete(body)).await?;
            Ok(Response::new(AuthUserDeleteResponse {
                header: self.header(),
            }))
        })
    }

    async fn user_change_password(
        &self,
        request: Request<AuthUserChangePasswordRequest>,
    ) -> Reply<AuthUserChangePasswordResponse> {
        at_leader!(self, request, user_change_password, |caller, body| {
            if body.password.is_empty() && body.hashed_password.is_empty() {
                return Err(Status::invalid_argument(
                    "etcdserver: password is empty (give one)",
                ));
            }
            let no_password = {
                let kv = self.replica.kv();
                let user = kv.auth().users.get(&body.name).map(|u| u.no_password);
                user.ok_or_else(|| Status::failed_precondition(raftkv_kv::auth::USER_NOT_FOUND))?
            };
            if no_password {
                return Err(Status::failed_precondition(format!(
                    "etcdserver: user {} was added with --no-password: it logs in by its \
                     client certificate only",
                    body.name
                )));
            }
            let hashed_password = self
                .password_hash(&body.password, &body.hashed_password)
                .await?;
            let change = Change::UserChangePassword(AuthUserChangePasswordRequest {
                name: body.name,
                password: String::new(),
                hashed_password,
            });
            self.propose(caller, change).await?;
            Ok(Response::new(AuthUserChangePasswordResponse {
                header: self.header(),
            }))
        })
    }

    async fn user_grant_role(
        &self,
        request: Request<AuthUserGrantRoleRequest>,
    ) -> Reply<AuthUserGrantRoleResponse> {
        at_leader!(self, request, user_grant_role, |caller, body| {
            self.propose(caller, Change::UserGrantRole(body)).await?;
            Ok(Response::new(AuthUserGrantRoleResponse {
                header: self.header(),
            }))
        })
    }

    async fn user_revoke_role(
        &self,
        request: Request<AuthUserRevokeRoleRequest>,
    ) -> Reply<AuthUserRevokeRoleResponse> {
        at_leader!(self, request, user_revoke_role, |caller, body| {
            self.propose(caller, Change::UserRevokeRole(body)).await?;
            Ok(Response::new(AuthUserRevokeRoleResponse {
                header: self.header(),
            }))
        })
    }

    async fn role_add(&self, request: Request<AuthRoleAddRequest>) -> Reply<AuthRoleAddResponse> {
        at_leader!(self, request, role_add, |caller, body| {
            self.propose(caller, Change::RoleAdd(body)).await?;
            Ok(Response::new(AuthRoleAddResponse {
                header: self.header(),
            }))
        })
    }

    async fn role_get(&self, request: Request<AuthRoleGetRequest>) -> Reply<AuthRoleGetResponse> {
        at_leader!(self, request, role_get, |caller, body| {
            // Under the lock `root_or_own` holds: no second one taken here
            // (a read lock taken twice can wait forever behind a writer).
            let has_role = |store: &AuthStore, user: &str| {
                store
                    .users
                    .get(user)
                    .is_some_and(|u| u.roles.contains(&body.role))
            };
            self.root_or_own(&caller, has_role)?;
            let kv = self.replica.kv();
            let store = kv.auth();
            if body.role == raftkv_kv::auth::ROOT && !store.roles.contains_key(&body.role) {
                // root holds no permissions: it may do anything.
                return Ok(Response::new(AuthRoleGetResponse {
                    header: self.header(),
                    perm: Vec::new(),
                }));
            }
            let perm = store
                .roles
                .get(&body.role)
                .ok_or_else(|| Status::failed_precondition(raftkv_kv::auth::ROLE_NOT_FOUND))?
                .iter()
                .map(raftkv_kv::auth::etcd_permission)
                .collect();
            Ok(Response::new(AuthRoleGetResponse {
                header: self.header(),
                perm,
            }))
        })
    }

    async fn role_list(
        &self,
        request: Request<AuthRoleListRequest>,
    ) -> Reply<AuthRoleListResponse> {
        at_leader!(self, request, role_list, |_caller, _body| {
            let roles = self.replica.kv().auth().roles.keys().cloned().collect();
            Ok(Response::new(AuthRoleListResponse {
                header: self.header(),
                roles,
            }))
        })
    }

    async fn role_delete(
        &self,
        request: Request<AuthRoleDeleteRequest>,
    ) -> Reply<AuthRoleDeleteResponse> {
        at_leader!(self, request, role_delete, |caller, body| {
            self.propose(caller, Change::RoleDelete(body)).await?;
            Ok(Response::new(AuthRoleDeleteResponse {
                header: self.header(),
            }))
        })
    }

    async fn role_grant_permission(
        &self,
        request: Request<AuthRoleGrantPermissionRequest>,
    ) -> Reply<AuthRoleGrantPermissionResponse> {
        at_leader!(self, request, role_grant_permission, |caller, body| {
            if let Some(perm) = &body.perm {
                if perm.key.is_empty() {
                    return Err(Status::invalid_argument(
                        "etcdserver: the permission's key is empty (for every key: key \\0 and \
                         range end \\0, `--prefix \"\"` on the command line)",
                    ));
                }
                let end = &perm.range_end[..];
                if !end.is_empty() && end != b"\0" && end <= &perm.key[..] {
                    return Err(Status::invalid_argument(
                        "etcdserver: the permission's range end must come after its key",
                    ));
                }
            }
            self.propose(caller, Change::RoleGrantPermission(body))
                .await?;
            Ok(Response::new(AuthRoleGrantPermissionResponse {
                header: self.header(),
            }))
        })
    }

    async fn role_revoke_permission(
        &self,
        request: Request<AuthRoleRevokePermissionRequest>,
    ) -> Reply<AuthRoleRevokePermissionResponse> {
        at_leader!(self, request, role_revoke_permission, |caller, body| {
            self.propose(caller, Change::RoleRevokePermission(body))
                .await?;
            Ok(Response::new(AuthRoleRevokePermissionResponse {
                header: self.header(),
            }))
        })
    }
}
