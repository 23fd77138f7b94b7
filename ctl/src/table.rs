//! A tiny aligned-table and key/value renderer for human output (`-o table`).
//!
//! Hand-rolled on purpose: thirty lines beat a dependency, and the format must stay stable
//! for people who grep it. Columns are left-aligned, separated by two spaces, with no
//! trailing whitespace; widths count characters, not bytes.

/// Render `rows` under `headers` as an aligned table, one line per row, ending in `\n`.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header_row).chain(rows) {
        let mut line = String::new();
        for (i, width) in widths.iter().enumerate() {
            let cell = row.get(i).map(String::as_str).unwrap_or("");
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            line.extend(std::iter::repeat_n(
                ' ',
                width.saturating_sub(cell.chars().count()),
            ));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Render `key: value` lines with the values aligned.
pub fn render_kv(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.chars().count()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in pairs {
        let pad = width - k.chars().count();
        let line = format!("{k}:{}  {v}", " ".repeat(pad));
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_on_the_widest_cell() {
        let t = render(
            &["NAME", "WEIGHT"],
            &[vec!["openai-a".into(), "3".into()], vec!["é".into(), "10".into()]],
        );
        assert_eq!(t, "NAME      WEIGHT\nopenai-a  3\né         10\n");
    }

    #[test]
    fn empty_table_has_headers_only_and_no_trailing_spaces() {
        assert_eq!(render(&["A", "LONGER"], &[]), "A  LONGER\n");
        assert_eq!(render(&["A", "B"], &[vec!["x".into(), "".into()]]), "A  B\nx\n");
    }

    #[test]
    fn kv_aligns_values() {
        assert_eq!(
            render_kv(&[("name", "a".into()), ("base_url", "b".into())]),
            "name:      a\nbase_url:  b\n"
        );
    }
}
