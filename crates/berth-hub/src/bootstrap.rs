//! First start: the first admin (with a token shown once and, for `berth up`, written to a 0600
//! file) and the local Docker engine as node `local`.

use std::path::Path;

use berth_store::nodes::{self, NodeRecord};
use berth_store::operations::{self, NewOperation};
use berth_store::users::{self, Quotas, Role};
use berth_store::{StoreError, secrets};
use serde_json::json;

use crate::state::HubState;

/// What bootstrapping found or made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bootstrap {
    /// The admin token created now, when there was no user yet.
    pub new_admin_token: Option<String>,
    /// The id of node `local`, when it was asked for.
    pub local_node: Option<i64>,
}

/// Creates the admin when the hub has no user (writing its token to `token_file` when given), and
/// registers node `local` at `docker_host` when `docker_host` is given and no node has that name.
pub async fn ensure(
    state: &HubState,
    token_file: Option<&Path>,
    docker_host: Option<&str>,
) -> Result<Bootstrap, StoreError> {
    let mut transaction = state.store.begin().await?;
    let mut new_admin_token = None;
    if users::count_users(&mut transaction).await? == 0 {
        let admin =
            users::create_user(&mut transaction, "admin", Role::Admin, &Quotas::default()).await?;
        let issued = users::issue_token(&mut transaction, admin.id, "bootstrap").await?;
        if let Some(file) = token_file {
            secrets::write_private(file, &format!("{}\n", issued.token)).map_err(|err| {
                StoreError::Invalid(format!("cannot write {}: {err}", file.display()))
            })?;
        }
        operations::record(
            &mut transaction,
            &NewOperation {
                user_id: None,
                action: "user.create".to_owned(),
                target_kind: "user".to_owned(),
                target_id: admin.id.to_string(),
                node_id: None,
                service_id: None,
                outcome: "ok".to_owned(),
                detail: json!({"name": "admin", "role": "admin", "reason": "first start"}),
            },
        )
        .await?;
        new_admin_token = Some(issued.token);
    }
    let mut local_node = None;
    if let Some(docker_host) = docker_host {
        local_node = Some(
            match nodes::find_by_name(&mut transaction, "local").await? {
                Some(existing) => existing.id,
                None => {
                    let mut record = NodeRecord::new("local", "docker");
                    record.docker_address = docker_host.to_owned();
                    record.use_tls = false;
                    record.public_ip = "127.0.0.1".to_owned();
                    record.private_ip = "127.0.0.1".to_owned();
                    record.origin = "embedded".to_owned();
                    record.remark = "the Docker engine of the machine running berth up".to_owned();
                    let stored = nodes::insert(&mut transaction, &record).await?;
                    operations::record(
                        &mut transaction,
                        &NewOperation {
                            user_id: None,
                            action: "node.create".to_owned(),
                            target_kind: "node".to_owned(),
                            target_id: stored.id.to_string(),
                            node_id: Some(stored.id),
                            service_id: None,
                            outcome: "ok".to_owned(),
                            detail: json!({"name": "local", "docker_address": docker_host}),
                        },
                    )
                    .await?;
                    stored.id
                }
            },
        );
    }
    transaction.commit().await?;
    Ok(Bootstrap {
        new_admin_token,
        local_node,
    })
}
