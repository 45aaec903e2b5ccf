//! A table of nodes × state that redraws in place on a terminal and prints
//! only the rows that changed otherwise (logs, pipes, CI).

use std::io::Write;

/// Rows shown last, and how they were drawn.
#[derive(Debug)]
pub struct LiveTable {
    in_place: bool,
    drawn: usize,
    last: Vec<String>,
}

impl LiveTable {
    /// In place when `in_place` (stdout is a terminal and people watch it).
    pub fn new(in_place: bool) -> Self {
        Self {
            in_place,
            drawn: 0,
            last: Vec::new(),
        }
    }

    /// Shows `rows` (the header included), redrawing or printing changes.
    pub fn show(&mut self, rows: &[String]) {
        let out = self.render(rows);
        if out.is_empty() {
            return;
        }
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(out.as_bytes());
        let _ = stdout.flush();
    }

    /// What `show` writes for `rows`, given what was shown before.
    fn render(&mut self, rows: &[String]) -> String {
        let mut out = String::new();
        if rows == self.last.as_slice() {
            return out;
        }
        if self.in_place {
            if self.drawn > 0 {
                out.push_str(&format!("\x1b[{}A", self.drawn));
            }
            for row in rows {
                out.push_str(&format!("\x1b[2K    {row}\n"));
            }
            self.drawn = rows.len();
        } else {
            for (i, row) in rows.iter().enumerate() {
                // The header prints once; a data row prints when it changed.
                if self.last.get(i) != Some(row) && (i > 0 || self.last.is_empty()) {
                    out.push_str(&format!("    {row}\n"));
                }
            }
        }
        self.last = rows.to_vec();
        out
    }

    /// Forgets what was drawn: the next `show` starts a new table.
    pub fn finish(&mut self) {
        self.drawn = 0;
        self.last.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(r: &[&str]) -> Vec<String> {
        r.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn in_a_log_only_changed_rows_print_and_the_header_once() {
        let mut t = LiveTable::new(false);
        assert_eq!(t.render(&rows(&["h", "a", "b"])), "    h\n    a\n    b\n");
        assert_eq!(t.render(&rows(&["h", "a", "b"])), "");
        assert_eq!(t.render(&rows(&["h", "a", "c"])), "    c\n");
        t.finish();
        assert_eq!(t.render(&rows(&["h", "a"])), "    h\n    a\n");
    }

    #[test]
    fn on_a_terminal_the_table_redraws_over_itself() {
        let mut t = LiveTable::new(true);
        assert_eq!(t.render(&rows(&["h", "a"])), "\x1b[2K    h\n\x1b[2K    a\n");
        assert_eq!(
            t.render(&rows(&["h", "b"])),
            "\x1b[2A\x1b[2K    h\n\x1b[2K    b\n"
        );
        t.finish();
        assert!(
            !t.render(&rows(&["h"])).contains("\x1b[2A"),
            "a finished table is not drawn over"
        );
    }
}
