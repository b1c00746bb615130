//! `meta.k8s.io/v1` Table responses: the printer columns, as `kubectl get` shows them.

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use ipam_k8s::resource::{PrinterColumn, ResourceDef};

/// A Table of `objects` (full objects as served) with list revision `rv`.
pub(super) fn table(
    def: &ResourceDef,
    objects: &[Value],
    rv: &str,
    include: Option<&str>,
) -> Value {
    let rows: Vec<Value> = objects.iter().map(|o| row(def, o, include)).collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv},
        "columnDefinitions": columns(def),
        "rows": rows,
    })
}

fn columns(def: &ResourceDef) -> Vec<Value> {
    let mut cols = vec![json!({
        "name": "Name",
        "type": "string",
        "format": "name",
        "description": "Name must be unique within a namespace.",
        "priority": 0,
    })];
    cols.extend(def.columns.iter().map(|c| {
        json!({"name": c.name, "type": c.type_, "format": "", "description": c.description,
               "priority": 0})
    }));
    cols
}

/// One row: the name, then each printer column's value.
pub(super) fn row(def: &ResourceDef, obj: &Value, include: Option<&str>) -> Value {
    let mut cells = vec![obj["metadata"]["name"].clone()];
    cells.extend(def.columns.iter().map(|c| cell(c, obj)));
    let object = match include {
        Some("None") => Value::Null,
        Some("Object") => obj.clone(),
        _ => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj["metadata"],
        }),
    };
    json!({"cells": cells, "object": object})
}

fn cell(col: &PrinterColumn, obj: &Value) -> Value {
    let mut v = obj;
    for key in col.json_path.split('.').filter(|k| !k.is_empty()) {
        v = &v[key];
    }
    match (col.type_, v) {
        (_, Value::Null) => Value::Null,
        ("date", Value::String(s)) => match OffsetDateTime::parse(s, &Rfc3339) {
            Ok(t) => json!(human_duration(OffsetDateTime::now_utc() - t)),
            Err(_) => json!("<invalid>"),
        },
        _ => v.clone(),
    }
}

/// A duration as `kubectl` prints ages: `45s`, `3m12s`, `5h`, `2d3h`, `400d`, `3y2d`.
pub(super) fn human_duration(d: time::Duration) -> String {
    let secs = d.whole_seconds().max(0);
    let (m, h, day) = (60, 3600, 86400);
    match secs {
        s if s < 2 * m => format!("{s}s"),
        s if s < 10 * m => match s % m {
            0 => format!("{}m", s / m),
            r => format!("{}m{r}s", s / m),
        },
        s if s < 3 * h => format!("{}m", s / m),
        s if s < 8 * h => match (s % h) / m {
            0 => format!("{}h", s / h),
            r => format!("{}h{r}m", s / h),
        },
        s if s < 48 * h => format!("{}h", s / h),
        s if s < 8 * day => match (s % day) / h {
            0 => format!("{}d", s / day),
            r => format!("{}d{r}h", s / day),
        },
        s if s < 2 * 365 * day => format!("{}d", s / day),
        s if s < 8 * 365 * day => match (s % (365 * day)) / day {
            0 => format!("{}y", s / (365 * day)),
            r => format!("{}y{r}d", s / (365 * day)),
        },
        s => format!("{}y", s / (365 * day)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipam_core::Kind;

    #[test]
    fn ages_read_like_kubectl() {
        let s = time::Duration::seconds;
        assert_eq!(human_duration(s(45)), "45s");
        assert_eq!(human_duration(s(192)), "3m12s");
        assert_eq!(human_duration(s(5 * 3600)), "5h");
        assert_eq!(human_duration(s(2 * 86400 + 3 * 3600)), "2d3h");
    }

    #[test]
    fn rows_follow_the_printer_columns() {
        let def = ResourceDef::of(Kind::BlockAffinity);
        let obj = json!({"metadata": {"name": "a", "creationTimestamp": null},
                         "spec": {"node": "n1", "cidr": "10.0.0.0/26", "state": "confirmed"}});
        let r = row(def, &obj, None);
        assert_eq!(
            r["cells"],
            json!(["a", "n1", "10.0.0.0/26", "confirmed", null])
        );
        assert_eq!(r["object"]["kind"], "PartialObjectMetadata");
    }
}
