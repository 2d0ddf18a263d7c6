//! Reading the VMMs' command lines: `--name value` / `--name=value` flags,
//! multi-value flags (`--disk a b c`) and Cloud Hypervisor's
//! `key=value,key=value` option syntax. Kept apart so the launch code and
//! CH's command-line validation read the arguments the same way.

pub fn arg_value(args: &[String], names: &[&str]) -> Option<String> {
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        for name in names {
            if arg == name {
                return iter.next().cloned();
            }
            if let Some(value) = arg.strip_prefix(&format!("{name}=")) {
                return Some(value.to_string());
            }
        }
    }
    None
}

/// Every value after `--name` up to the next option (`--disk a b c`).
pub fn arg_values(args: &[String], name: &str) -> Vec<String> {
    args.iter()
        .skip_while(|a| *a != name)
        .skip(1)
        .take_while(|a| !a.starts_with("--"))
        .cloned()
        .collect()
}

/// Every value CH's command line gives `option` (repeatable options take
/// several values after one flag, and the flag may repeat).
pub fn all_values(args: &[String], option: &str) -> Vec<String> {
    let multi = matches!(option, "--disk" | "--net");
    let mut values = Vec::new();
    let mut iter = args.iter().peekable();
    while let Some(arg) = iter.next() {
        if let Some(v) = arg.strip_prefix(&format!("{option}=")) {
            values.push(v.to_string());
        } else if arg == option {
            while let Some(v) = iter.next_if(|v| !v.starts_with("--")) {
                values.push(v.clone());
                if !multi {
                    break;
                }
            }
        }
    }
    values
}

/// CH's `key=value,key=value` option syntax: the value of `key` (or the whole
/// option when it has no keys, e.g. `--api-socket /path`).
pub fn ch_option(option: &str, key: &str) -> Option<String> {
    if !option.contains('=') {
        return Some(option.to_string());
    }
    option
        .split(',')
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(str::to_string))
}
