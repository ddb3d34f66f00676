//! Who is calling the control API, and what they may do.
//!
//! Every `/v1` request but the OpenAPI document carries a bearer token:
//! the admin token (`DATA_DIR/token` or `THAW_TOKEN`), or a namespace key.
//! A key reaches its own namespace only, and there only what its role
//! allows; a key of another namespace is told `forbidden` whether or not
//! the namespace it named exists, so keys learn nothing of other tenants.
//! Keys are looked up on every request: a revoked key fails at once.

use crate::errors::ApiError;
use axum::http::StatusCode;
use thaw_registry::{KeyInfo, Role, DEFAULT_NAMESPACE};

/// The holder of a valid token.
#[derive(Debug, Clone)]
pub enum Caller {
    Admin,
    Key(KeyInfo),
}

/// What an operation needs of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// List, versions, aliases, logs, secret names, metrics.
    Read,
    /// Call a function through the API.
    Invoke,
    /// Change anything inside the namespace.
    Deploy,
    /// Namespaces, keys, the platform's runtime and metrics.
    Admin,
}

impl Caller {
    /// Recorded as a version's `deployed_by`.
    pub fn name(&self) -> String {
        match self {
            Caller::Admin => "admin".into(),
            Caller::Key(k) => k.name.clone(),
        }
    }

    pub fn role(&self) -> &'static str {
        match self {
            Caller::Admin => "admin",
            Caller::Key(k) => k.role.as_str(),
        }
    }

    /// The namespace meant when a route names none (`/v1/functions/...`):
    /// a key's own, or `default` for the admin.
    pub fn home(&self) -> &str {
        match self {
            Caller::Admin => DEFAULT_NAMESPACE,
            Caller::Key(k) => &k.namespace,
        }
    }

    /// Whether this caller may do what `need` says in `namespace`.
    pub fn allow(&self, namespace: &str, need: Need) -> Result<(), ApiError> {
        let Caller::Key(key) = self else {
            return Ok(());
        };
        if need == Need::Admin {
            return Err(forbidden("this needs the admin token".to_string()));
        }
        if key.namespace != namespace {
            return Err(forbidden(format!(
                "this key belongs to namespace `{}` and reaches nothing else",
                key.namespace
            )));
        }
        let granted = match key.role {
            Role::Deploy => true,
            Role::Read => need == Need::Read,
            Role::Invoke => need == Need::Invoke,
        };
        if granted {
            Ok(())
        } else {
            Err(forbidden(format!(
                "a `{}` key cannot do this (it needs a `{}` key)",
                key.role.as_str(),
                match need {
                    Need::Read => "read",
                    Need::Invoke => "invoke",
                    _ => "deploy",
                }
            )))
        }
    }
}

fn forbidden(message: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(namespace: &str, role: Role) -> Caller {
        Caller::Key(KeyInfo {
            id: "k".into(),
            name: "k".into(),
            namespace: namespace.into(),
            role,
            created_ms: 0,
            expires_ms: None,
            revoked_ms: None,
        })
    }

    #[test]
    fn roles_reach_their_own_namespace_only() {
        let table = [
            (Role::Deploy, [true, true, true, false]),
            (Role::Read, [true, false, false, false]),
            (Role::Invoke, [false, true, false, false]),
        ];
        let needs = [Need::Read, Need::Invoke, Need::Deploy, Need::Admin];
        for (role, allowed) in table {
            let caller = key("team-a", role);
            for (need, ok) in needs.iter().zip(allowed) {
                assert_eq!(
                    caller.allow("team-a", *need).is_ok(),
                    ok,
                    "{role:?} {need:?}"
                );
                let other = caller.allow("team-b", *need).unwrap_err();
                assert_eq!(other.status, StatusCode::FORBIDDEN);
            }
        }
        for need in needs {
            assert!(Caller::Admin.allow("anything", need).is_ok());
        }
        assert_eq!(key("team-a", Role::Read).home(), "team-a");
        assert_eq!(Caller::Admin.home(), "default");
    }
}
