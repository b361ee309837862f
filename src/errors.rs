//! How berth renders an error for people: below both the CLI (`commands/`, `main.rs`) and the
//! supervisor, which sends the rendered text back over its socket.

/// Render an error chain the way berth prints it: the top message, then each cause.
pub fn render_error(e: &anyhow::Error) -> String {
    let mut s = format!("error: {e}");
    for cause in e.chain().skip(1) {
        s.push_str(&format!("\n  caused by: {cause}"));
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_the_chain_top_first() {
        let e = anyhow::anyhow!("root cause")
            .context("middle")
            .context("top");
        assert_eq!(
            super::render_error(&e),
            "error: top\n  caused by: middle\n  caused by: root cause"
        );
    }
}
