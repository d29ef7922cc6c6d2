//! The tools without a transport: the same calls, parameters, results and errors as over MCP,
//! for a front door in the same process (the Python SDK). rmcp can only route a call that came
//! through a session (its request context needs a live peer), so this names each tool's method
//! once more; a test checks the list against the router's.

use rmcp::handler::server::wrapper::Parameters;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use super::PyroTools;
use crate::render::ToolError;

/// The arguments as a tool's parameters, or the error rmcp's router would give (worded for
/// an SDK caller, who has no `tools/list` to read).
fn params<T: serde::de::DeserializeOwned>(
    tool: &str,
    args: Map<String, Value>,
) -> Result<Parameters<T>, ToolError> {
    serde_json::from_value(Value::Object(args))
        .map(Parameters)
        .map_err(|e| {
            ToolError::invalid(
                format!("{tool}: {e}"),
                Some("check the call's keyword arguments: names, types and limits"),
            )
        })
}

/// Names each tool's method once: `plain` tools take only their parameters, `cancellable`
/// ones also the call's cancellation. Defines the routing and the list of routed names.
macro_rules! direct_tools {
    (plain: [$($p:ident),* $(,)?]; cancellable: [$($c:ident),* $(,)?]) => {
        /// Every tool [`PyroTools::call_direct`] routes.
        #[cfg(test)]
        pub(super) const DIRECT_TOOLS: &[&str] = &[$(stringify!($p),)* $(stringify!($c),)*];

        impl PyroTools {
            /// The tool's own result, or `None` for a name no tool has.
            async fn route_direct(
                &self,
                name: &str,
                args: Map<String, Value>,
                ct: CancellationToken,
            ) -> Result<Option<super::ToolResult>, ToolError> {
                Ok(match name {
                    $(stringify!($p) => Some(self.$p(params(name, args)?).await),)*
                    $(stringify!($c) => Some(self.$c(params(name, args)?, ct).await),)*
                    _ => None,
                })
            }
        }
    };
}

direct_tools!(
    plain: [
        vm_list_environments, vm_create, vm_start, vm_stop, vm_delete, vm_status,
        vm_network_info, vm_reap_expired, workspace_create, workspace_list, workspace_update,
        workspace_status, workspace_sync_push, workspace_logs, workspace_file_list,
        workspace_file_read, workspace_file_write, workspace_disk_list, workspace_disk_read,
        workspace_disk_export, workspace_patch_apply, workspace_diff,
        workspace_export, workspace_reset, workspace_delete, workspace_stop, workspace_start,
        shell_open, shell_read, shell_write, shell_signal, shell_close, shell_list,
        service_start, service_list, service_status, service_logs, service_stop,
        snapshot_create, snapshot_list, snapshot_delete,
    ];
    cancellable: [vm_run, vm_exec, workspace_exec]
);

impl PyroTools {
    /// Calls the tool `name` with `args` as an MCP client would, without a session: the
    /// tool's structured result, or its error. `cancel` is the call's cancellation (as an MCP
    /// `notifications/cancelled` is): a run's sandbox is removed, an exec's command stopped.
    /// Tools outside this server's profile do not exist here either.
    pub async fn call_direct(
        &self,
        name: &str,
        args: Map<String, Value>,
        cancel: CancellationToken,
    ) -> Result<Value, ToolError> {
        let unknown = || {
            ToolError::invalid(
                format!("there is no tool {name:?}"),
                Some("see tool_names() for the tools this server offers"),
            )
        };
        if !self.tool_router.has_route(name) {
            return Err(unknown());
        }
        let result = self
            .route_direct(name, args, cancel)
            .await?
            .ok_or_else(unknown)?
            .map_err(|e| ToolError {
                kind: "internal".into(),
                message: e.message.to_string(),
                hint: None,
            })?;
        let body = result.structured_content.unwrap_or(Value::Null);
        if result.is_error != Some(true) {
            return Ok(body);
        }
        let error = &body["error"];
        let text = |k: &str| error[k].as_str().map(str::to_string);
        Err(ToolError {
            kind: text("kind").unwrap_or_else(|| "internal".into()),
            message: text("message").unwrap_or_else(|| body.to_string()),
            hint: text("hint"),
        })
    }
}
