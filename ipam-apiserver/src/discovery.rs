//! Discovery: `/version`, `/api`, `/apis`, the group and its resource list.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::json;
use ipam_k8s::resource::{API_VERSION, DEFS, GROUP, VERSION};

/// The Kubernetes API level these resources follow (k8s-openapi's `v1_34`), with this crate
/// named in the semver build metadata so nobody mistakes the server for kube-apiserver.
pub(super) async fn version() -> Response {
    json(
        StatusCode::OK,
        &json!({
            "major": "1",
            "minor": "34",
            "gitVersion": concat!("v1.34.0+ipam-k8s.", env!("CARGO_PKG_VERSION")),
            "gitCommit": "",
            "gitTreeState": "",
            "buildDate": "",
            "goVersion": "",
            "compiler": "",
            "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
        }),
    )
}

/// The legacy core group: served empty (this server has no core resources).
pub(super) async fn core_versions() -> Response {
    json(
        StatusCode::OK,
        &json!({"kind": "APIVersions", "versions": [], "serverAddressByClientCIDRs": []}),
    )
}

fn group_json() -> Value {
    let gv = json!({"groupVersion": API_VERSION, "version": VERSION});
    json!({
        "name": GROUP,
        "versions": [gv.clone()],
        "preferredVersion": gv,
    })
}

/// `APIGroupList` with the one group.
pub(super) async fn groups() -> Response {
    json(
        StatusCode::OK,
        &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [group_json()]}),
    )
}

/// The `APIGroup`.
pub(super) async fn group() -> Response {
    let mut g = group_json();
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    json(StatusCode::OK, &g)
}

/// The verbs every resource supports (no `deletecollection`: not implemented).
pub(crate) const VERBS: [&str; 7] = [
    "create", "delete", "get", "list", "patch", "update", "watch",
];

/// The `APIResourceList` of `crd.projectcalico.org/v1`.
pub(super) async fn resources() -> Response {
    let resources: Vec<Value> = DEFS
        .iter()
        .map(|d| {
            let mut r = json!({
                "name": d.plural(),
                "singularName": d.singular,
                "namespaced": false,
                "kind": d.kind_name(),
                "verbs": VERBS,
            });
            if !d.short_names.is_empty() {
                r["shortNames"] = json!(d.short_names);
            }
            r
        })
        .collect();
    json(
        StatusCode::OK,
        &json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": API_VERSION,
            "resources": resources,
        }),
    )
}
