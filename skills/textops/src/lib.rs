//! Small text transforms, private to the transform skill.

/// Lower-case ASCII letters and digits joined by single `-`; everything else
/// separates words.
pub fn slugify(text: &str) -> String {
    let mut slug = String::with_capacity(text.len());
    for word in text
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        if !slug.is_empty() {
            slug.push('-');
        }
        slug.extend(word.chars().map(|c| c.to_ascii_lowercase()));
    }
    slug
}

/// Number of whitespace-separated words.
pub fn word_count(text: &str) -> usize {
    text.split_whitespace().count()
}

/// Each whitespace-separated word with its first letter upper-cased and the
/// rest lower-cased, joined by single spaces.
pub fn title_case(text: &str) -> String {
    let words: Vec<String> = text
        .split_whitespace()
        .map(|word| {
            let mut chars = word.chars();
            match chars.next() {
                Some(first) => first
                    .to_uppercase()
                    .chain(chars.flat_map(char::to_lowercase))
                    .collect(),
                None => String::new(),
            }
        })
        .collect();
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transforms() {
        assert_eq!(slugify("  Hello, World! 42 "), "hello-world-42");
        assert_eq!(word_count("a  b\tc\n"), 3);
        assert_eq!(title_case("hELLO   wORLD"), "Hello World");
    }
}
