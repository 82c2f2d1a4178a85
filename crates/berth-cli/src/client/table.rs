//! Plain-text tables: one row per JSON object, columns picked by key; and the units their cells
//! speak (cores, binary sizes, times relative to now).

use serde_json::Value;

/// A value as a cell: `-` for none, text without quotes.
pub fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// Bytes in binary units: `512 MiB`, `1.5 GiB`, `0 B`.
pub fn bytes(count: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = count as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value.fract() == 0.0 || value >= 100.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Thousandths of a core as cores: `0.5`, `2`, `1.25`.
pub fn cores(millis: u64) -> String {
    let text = format!("{:.3}", millis as f64 / 1000.0);
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// How long before `now_ms` the instant `at_ms` was: `12s ago`, `5m ago`, `3h ago`, `2d ago`
/// (`in 4m` for the future).
pub fn ago(at_ms: i64, now_ms: i64) -> String {
    let seconds = (now_ms - at_ms) / 1000;
    let magnitude = seconds.unsigned_abs();
    let span = match magnitude {
        0..60 => format!("{magnitude}s"),
        60..3600 => format!("{}m", magnitude / 60),
        3600..86400 => format!("{}h", magnitude / 3600),
        _ => format!("{}d", magnitude / 86400),
    };
    if seconds >= 0 {
        format!("{span} ago")
    } else {
        format!("in {span}")
    }
}

/// Now, Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

/// Renders `rows` with `columns` (`(header, key)` pairs; a key may be `a.b` for a nested field;
/// a header that starts with `+` is a column only `wide` shows).
pub fn render(rows: &[Value], columns: &[(&str, &str)], wide: bool) -> String {
    let columns: Vec<(&str, &str)> = columns
        .iter()
        .filter_map(|(header, key)| match header.strip_prefix('+') {
            Some(header) => wide.then_some((header, *key)),
            None => Some((*header, *key)),
        })
        .collect();
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
            &[("ID", "id"), ("NAME", "name"), ("+NODE", "node.name")],
            true,
        );
        assert_eq!(text, "ID  NAME   NODE\n1   local  a\n22  -      -");
        let narrow = render(&rows, &[("ID", "id"), ("+NODE", "node.name")], false);
        assert_eq!(narrow, "ID\n1\n22");
    }

    #[test]
    fn units_read_as_people_write_them() {
        assert_eq!(bytes(536_870_912), "512 MiB");
        assert_eq!(bytes(1_610_612_736), "1.5 GiB");
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(cores(1000), "1");
        assert_eq!(cores(500), "0.5");
        assert_eq!(cores(1250), "1.25");
        assert_eq!(ago(0, 12_000), "12s ago");
        assert_eq!(ago(0, 5 * 60_000), "5m ago");
        assert_eq!(ago(0, 3 * 3_600_000 + 5), "3h ago");
        assert_eq!(ago(0, 2 * 86_400_000), "2d ago");
        assert_eq!(ago(240_000, 0), "in 4m");
    }
}
