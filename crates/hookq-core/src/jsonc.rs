//! JSON with comments: `//` and `/* */` comments and trailing commas, as
//! people write `config.json` files (the reference document's own example has
//! a `// ... other configurations` line).
//!
//! [`strip`] turns such text into plain JSON while keeping every byte offset
//! and line where it was (comments and dropped commas become spaces), so a
//! parser's "line 12 column 5" still points into the operator's file.

/// Replaces comments and trailing commas with spaces; everything else is kept as is.
pub fn strip(src: &str) -> String {
    let bytes = src.as_bytes();
    let mut out = bytes.to_vec();
    let mut i = 0;
    // The offset of a comma that may turn out to be trailing.
    let mut pending_comma: Option<usize> = None;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                pending_comma = None;
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    out[i] = b' ';
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let end = src[i + 2..]
                    .find("*/")
                    .map_or(bytes.len(), |e| i + 2 + e + 2);
                for b in &mut out[i..end] {
                    if *b != b'\n' {
                        *b = b' ';
                    }
                }
                i = end;
            }
            b',' => {
                pending_comma = Some(i);
                i += 1;
            }
            b'}' | b']' => {
                if let Some(c) = pending_comma.take() {
                    out[c] = b' ';
                }
                i += 1;
            }
            b if b.is_ascii_whitespace() => i += 1,
            _ => {
                pending_comma = None;
                i += 1;
            }
        }
    }
    // Only ASCII bytes were replaced by ASCII spaces, so the text is still UTF-8.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::strip;

    #[test]
    fn removes_comments_and_trailing_commas() {
        let src =
            "{\n  \"a\": [1, 2,], // two\n  /* block\n */ \"b\": \"x // not a comment, }\",\n}";
        let v: serde_json::Value = serde_json::from_str(&strip(src)).unwrap();
        assert_eq!(v["a"], serde_json::json!([1, 2]));
        assert_eq!(v["b"], "x // not a comment, }");
        assert_eq!(strip(src).lines().count(), src.lines().count());
    }

    #[test]
    fn keeps_escaped_quotes_and_commas_between_values() {
        let src = r#"{"a": "q\"/*", "b": [1, /* c */ 2]}"#;
        let v: serde_json::Value = serde_json::from_str(&strip(src)).unwrap();
        assert_eq!(v["a"], "q\"/*");
        assert_eq!(v["b"], serde_json::json!([1, 2]));
    }
}
