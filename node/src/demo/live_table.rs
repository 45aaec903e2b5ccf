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
        if rows == self.last.as_slice() {
            return;
        }
        let mut out = std::io::stdout().lock();
        if self.in_place {
            if self.drawn > 0 {
                let _ = write!(out, "\x1b[{}A", self.drawn);
            }
            for row in rows {
                let _ = writeln!(out, "\x1b[2K    {row}");
            }
            self.drawn = rows.len();
        } else {
            for (i, row) in rows.iter().enumerate() {
                // The header prints once; a data row prints when it changed.
                if self.last.get(i) != Some(row) && (i > 0 || self.last.is_empty()) {
                    let _ = writeln!(out, "    {row}");
                }
            }
        }
        let _ = out.flush();
        self.last = rows.to_vec();
    }

    /// Forgets what was drawn: the next `show` starts a new table.
    pub fn finish(&mut self) {
        self.drawn = 0;
        self.last.clear();
    }
}
