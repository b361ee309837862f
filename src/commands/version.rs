//! `berth version`: compose's three shapes (`pretty`, `--short`, `--format json`).

use crate::cli::VersionArgs;

pub fn render(args: &VersionArgs) -> String {
    let v = env!("CARGO_PKG_VERSION");
    if args.short {
        return v.to_string();
    }
    if args.format.eq_ignore_ascii_case("json") {
        return serde_json::json!({ "version": format!("v{v}") }).to_string();
    }
    // compose prints the pretty line for any other value too.
    format!("berth version v{v}")
}

pub fn run(args: &VersionArgs) -> anyhow::Result<u8> {
    println!("{}", render(args));
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_shapes() {
        let v = env!("CARGO_PKG_VERSION");
        let mut a = VersionArgs {
            format: "pretty".into(),
            short: false,
        };
        assert_eq!(render(&a), format!("berth version v{v}"));
        a.format = "json".into();
        let j: serde_json::Value = serde_json::from_str(&render(&a)).unwrap();
        assert_eq!(j, serde_json::json!({"version": format!("v{v}")}));
        a.short = true;
        assert_eq!(render(&a), v);
    }
}
