//! The per-call bound on log bytes.

/// Bytes of log messages left in the current call, and what was dropped.
#[derive(Debug)]
pub(crate) struct LogBudget {
    per_call: usize,
    left: usize,
    dropped: usize,
}

impl LogBudget {
    pub(crate) fn new(per_call: usize) -> Self {
        Self {
            per_call,
            left: per_call,
            dropped: 0,
        }
    }

    /// Starts a new call with a full budget; returns the bytes dropped in the
    /// previous one.
    pub(crate) fn reset(&mut self) -> usize {
        self.left = self.per_call;
        std::mem::take(&mut self.dropped)
    }

    /// The part of `message` that fits in the budget (cut at a character
    /// boundary), charging it; `None` when nothing fits.
    pub(crate) fn admit<'m>(&mut self, message: &'m str) -> Option<&'m str> {
        let mut end = message.len().min(self.left);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        self.left -= end;
        self.dropped += message.len() - end;
        (end > 0 || message.is_empty()).then(|| &message[..end])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_until_the_bound_then_counts_drops() {
        let mut budget = LogBudget::new(8);
        assert_eq!(budget.admit("hello"), Some("hello"));
        assert_eq!(budget.admit("world"), Some("wor"));
        assert_eq!(budget.admit("again"), None);
        assert_eq!(budget.reset(), 2 + 5);
        assert_eq!(budget.admit("fresh"), Some("fresh"));
        assert_eq!(budget.reset(), 0);
    }

    #[test]
    fn cuts_at_a_character_boundary() {
        let mut budget = LogBudget::new(2);
        assert_eq!(budget.admit("é!"), Some("é"));
        assert_eq!(budget.reset(), 1);
    }
}
