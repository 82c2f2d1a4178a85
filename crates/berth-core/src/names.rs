//! Deterministic, DNS-safe names for the containers and volumes Berth creates.
//!
//! An instance name is derived from a human base (a service or product name) and the allocation
//! it runs for, so the same allocation always maps to the same container (idempotent creates) and
//! two allocations never share one.

/// Longest instance name: one DNS label.
pub const MAX_INSTANCE_NAME_LEN: usize = 63;

/// The container name for `allocation` of something called `base`: `<slug>-<allocation slug>`,
/// lower-case letters, digits and `-` only, at most 63 characters. The allocation part is never
/// shortened, so distinct allocations give distinct names.
pub fn instance_name(base: &str, allocation: &str) -> String {
    let suffix = slug(allocation, MAX_INSTANCE_NAME_LEN - 2);
    let suffix = if suffix.is_empty() {
        "0".to_owned()
    } else {
        suffix
    };
    let room = MAX_INSTANCE_NAME_LEN - suffix.len() - 1;
    let head = slug(base, room);
    let head = if head.is_empty() {
        "instance".chars().take(room).collect()
    } else {
        head
    };
    format!("{head}-{suffix}")
}

/// The named volume that holds a container's data disk.
pub fn data_volume_name(container_name: &str) -> String {
    format!("{container_name}-data")
}

/// Lower-cases `text`, turns every run of other characters into one `-`, trims `-` at both ends
/// and cuts the result to `max` characters (again without a trailing `-`).
fn slug(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    for c in text.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    out.truncate(max);
    while out.ends_with('-') {
        out.pop();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dns_safe(name: &str) -> bool {
        name.len() <= MAX_INSTANCE_NAME_LEN
            && !name.starts_with('-')
            && !name.ends_with('-')
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    }

    #[test]
    fn same_input_same_name() {
        assert_eq!(instance_name("demo", "123"), "demo-123");
        assert_eq!(instance_name("demo", "123"), instance_name("demo", "123"));
    }

    #[test]
    fn allocations_never_share_a_name() {
        let long_base = "a-very-long-model-service-name-that-goes-on-and-on-past-a-dns-label";
        let first = instance_name(long_base, "01J9ZQ6T3K4M5N6P7Q8R9S0T1U");
        let second = instance_name(long_base, "01J9ZQ6T3K4M5N6P7Q8R9S0T1V");
        assert_ne!(first, second);
        assert!(dns_safe(&first), "{first}");
        assert!(dns_safe(&second), "{second}");
    }

    #[test]
    fn odd_characters_become_dashes() {
        let name = instance_name("GeoML Service_v2.0!!", "Alloc 7");
        assert_eq!(name, "geoml-service-v2-0-alloc-7");
        assert!(dns_safe(&name));
        assert_eq!(instance_name("???", "5"), "instance-5");
        assert_eq!(instance_name("x", "—"), "x-0");
    }

    #[test]
    fn data_volume_follows_the_container() {
        assert_eq!(data_volume_name("demo-123"), "demo-123-data");
    }
}
