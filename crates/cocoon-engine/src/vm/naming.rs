//! cocoon's default VM names (`cmd/core/helpers.go: sanitizeVMName`).

/// `cocoon-<repository without library/>[-<tag unless latest>]` with `/` → `-`,
/// at most 63 characters; a reference that does not parse (a URL) becomes
/// `cocoon-` plus the reference with `/` and `:` replaced.
pub fn default_vm_name(image: &str) -> String {
    let name = match crate::image::oci::parse_reference(image) {
        Ok(r) if !image.contains("://") => {
            let repo = r
                .repository()
                .strip_prefix("library/")
                .unwrap_or(r.repository());
            let mut name = format!("cocoon-{}", repo.replace('/', "-"));
            match r.tag() {
                Some(tag) if tag != "latest" => {
                    name.push('-');
                    name.push_str(tag);
                }
                _ => {}
            }
            name
        }
        _ => format!(
            "cocoon-{}",
            image
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .replace(['/', ':'], "-")
        ),
    };
    let mut name: String = name.chars().take(63).collect();
    while name.ends_with(['-', '.', '_']) {
        name.pop();
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_references() {
        assert_eq!(default_vm_name("ubuntu"), "cocoon-ubuntu");
        assert_eq!(default_vm_name("ubuntu:24.04"), "cocoon-ubuntu-24.04");
        assert_eq!(
            default_vm_name("ghcr.io/cocoonstack/cocoon/ubuntu:24.04"),
            "cocoon-cocoonstack-cocoon-ubuntu-24.04"
        );
        assert_eq!(
            default_vm_name("127.0.0.1:5000/test/guest:v1"),
            "cocoon-test-guest-v1"
        );
        assert!(default_vm_name(&format!("r/{}", "x".repeat(100))).len() <= 63);
    }
}
