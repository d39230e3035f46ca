//! `${NAME}` environment expansion in config values (`env`, `headers` and `url`).
//!
//! `$$` is a literal `$`, and any `$` not starting `${NAME}` (NAME: a letter or `_`, then letters,
//! digits or `_`) is literal too. Expanded values are not expanded again.

/// Expands `${NAME}` from `env`; `$$` is a literal `$` and any other `$` is literal.
/// Returns the name of the first missing variable on failure.
pub(super) fn expand_env(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
            continue;
        }
        let braced = after.strip_prefix('{').and_then(|b| b.split_once('}'));
        match braced {
            Some((name, tail)) if is_var_name(name) => {
                out.push_str(&env(name).ok_or_else(|| name.to_string())?);
                rest = tail;
            }
            _ => {
                out.push('$');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn is_var_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}
