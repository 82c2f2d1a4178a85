//! Plain-text tables: one row per JSON object, columns picked by key.

use serde_json::Value;

fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// Renders `rows` with `columns` (`(header, key)` pairs; a key may be `a.b` for a nested field).
pub fn render(rows: &[Value], columns: &[(&str, &str)]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            columns
                .iter()
                .map(|(_, key)| cell(key.split('.').fold(row, |value, part| &value[part])))
                .collect()
        })
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(index, (header, _))| {
            cells
                .iter()
                .map(|row| row[index].chars().count())
                .chain([header.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |values: Vec<String>| {
        values
            .iter()
            .zip(&widths)
            .map(|(value, width)| format!("{value:<width$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = vec![line(
        columns
            .iter()
            .map(|(header, _)| (*header).to_owned())
            .collect(),
    )];
    out.extend(cells.into_iter().map(line));
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn columns_line_up_and_nested_keys_resolve() {
        let rows = vec![
            json!({"id": 1, "name": "local", "node": {"name": "a"}}),
            json!({"id": 22, "name": null}),
        ];
        let text = render(
            &rows,
            &[("ID", "id"), ("NAME", "name"), ("NODE", "node.name")],
        );
        assert_eq!(text, "ID  NAME   NODE\n1   local  a\n22  -      -");
    }
}
