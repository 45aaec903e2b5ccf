//! Terminal output: colour only on a terminal and never under `NO_COLOR`.

use std::io::IsTerminal;

/// How to decorate text for the terminal.
#[derive(Debug, Clone, Copy)]
pub struct Ui {
    color: bool,
}

impl Ui {
    /// For stdout: colour when it is a terminal and `NO_COLOR` is unset.
    pub fn from_env() -> Self {
        Self {
            color: !no_color() && std::io::stdout().is_terminal(),
        }
    }

    /// For stderr: colour when it is a terminal and `NO_COLOR` is unset.
    pub fn from_env_stderr() -> Self {
        Self {
            color: !no_color() && std::io::stderr().is_terminal(),
        }
    }

    /// Whether colour is on.
    pub fn color(&self) -> bool {
        self.color
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    /// A step heading.
    pub fn step(&self, text: &str) -> String {
        self.paint("1;36", text)
    }

    /// Something that worked.
    pub fn ok(&self, text: &str) -> String {
        self.paint("32", text)
    }

    /// Something refused or failed (expected or not).
    pub fn bad(&self, text: &str) -> String {
        self.paint("31", text)
    }

    /// Secondary detail.
    pub fn dim(&self, text: &str) -> String {
        self.paint("2", text)
    }
}

fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}
