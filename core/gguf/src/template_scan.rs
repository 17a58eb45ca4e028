//! Flags chat templates that look like Jinja template-injection payloads.
//!
//! gguftool never renders a template; this is a warning for users whose
//! runtime will. A hit is a reason to read the template, not proof of harm.

/// Substrings typical of sandbox escapes and code execution in Jinja.
pub const SUSPICIOUS_PATTERNS: &[&str] = &[
    "__class__",
    "__mro__",
    "__subclasses__",
    "__globals__",
    "__builtins__",
    "__import__",
    "__init__",
    "__getattribute__",
    "__dict__",
    "func_globals",
    "os.popen",
    "os.system",
    "subprocess",
    "popen(",
    "eval(",
    "exec(",
    "lipsum",
    "cycler",
    "joiner",
    "request.",
    "config.items",
    "self._templatereference",
    "attr(",
    "|attr",
];

/// Metadata keys that hold chat templates: the default and named ones.
pub fn is_template_key(key: &str) -> bool {
    key == "tokenizer.chat_template" || key.starts_with("tokenizer.chat_template.")
}

/// The suspicious patterns found in `template` (case-insensitive).
pub fn scan(template: &str) -> Vec<&'static str> {
    let lower = template.to_ascii_lowercase();
    SUSPICIOUS_PATTERNS
        .iter()
        .copied()
        .filter(|p| lower.contains(p))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn benign_template_passes_and_payload_is_flagged() {
        let benign = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>{% endfor %}";
        assert!(scan(benign).is_empty());
        let evil = "{{ cycler.__init__.__globals__.os.popen('id').read() }}";
        let hits = scan(evil);
        assert!(
            hits.contains(&"__globals__") && hits.contains(&"os.popen"),
            "{hits:?}"
        );
    }
}
