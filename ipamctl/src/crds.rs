//! `ipamctl crds`: the CustomResourceDefinitions of the six resources, as YAML for
//! `kubectl apply -f -`.

use std::io::Write;

use super::{CtlError, EXIT_OK, Result};

/// Prints every CRD as one multi-document YAML stream.
pub fn run(out: &mut dyn Write) -> Result<u8> {
    out.write_all(manifests()?.as_bytes())
        .map_err(CtlError::Output)?;
    Ok(EXIT_OK)
}

/// The CRDs as one multi-document YAML stream (what `deploy/crds.yaml` holds).
pub fn manifests() -> Result<String> {
    let mut text = String::new();
    for crd in ipam_k8s::crds() {
        text.push_str("---\n");
        let doc = serde_yaml::to_string(&crd).map_err(|e| CtlError::Serialize(e.to_string()))?;
        text.push_str(&doc);
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deploy_crds_are_the_generated_ones() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/crds.yaml");
        let generated = manifests().unwrap();
        if std::env::var_os("IPAM_UPDATE_MANIFESTS").is_some() {
            std::fs::write(path, &generated).unwrap();
        }
        let on_disk = std::fs::read_to_string(path).expect("deploy/crds.yaml");
        assert_eq!(
            on_disk, generated,
            "deploy/crds.yaml is stale: rerun with IPAM_UPDATE_MANIFESTS=1"
        );
    }

    #[test]
    fn manifests_are_six_yaml_documents() {
        let text = manifests().unwrap();
        let docs: Vec<serde_json::Value> = text
            .split("---\n")
            .filter(|d| !d.trim().is_empty())
            .map(|d| serde_yaml::from_str(d).unwrap())
            .collect();
        assert_eq!(docs, ipam_k8s::crds());
    }
}
