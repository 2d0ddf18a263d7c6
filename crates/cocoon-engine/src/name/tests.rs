use super::*;

const RULE: &str = "must start with a letter or digit and contain only letters, digits, '.', '_' or '-' (at most 63 characters)";

fn refusal(what: &str, name: &str) -> String {
    format!("invalid {what} name {name:?}: {RULE}")
}

#[test]
fn names_that_pass() {
    let longest = "a".repeat(63);
    for ok in [
        "a", "0", "my-vm", "VM.1_x", "0abc", "a..b", "a-", "a.", &longest,
    ] {
        let name: VmName = ok.parse().unwrap();
        assert_eq!(name.as_str(), ok);
        assert_eq!(name.to_string(), ok);
        assert_eq!(&*name, ok);
        let name = SnapshotName::try_from(ok.to_string()).unwrap();
        assert_eq!(String::from(name), ok);
    }
}

#[test]
fn names_that_are_refused_with_the_exact_message() {
    let too_long = "a".repeat(64);
    for bad in [
        "",
        ".",
        "..",
        ".hidden",
        "-flag",
        "_x",
        "a/b",
        "../etc",
        "/abs",
        "a\0b",
        "\0",
        "ü",
        "aé",
        "has space",
        "tab\t",
        "line\n",
        "x?y=1",
        "a:b",
        "a\\b",
        &too_long,
    ] {
        let err = bad.parse::<VmName>().unwrap_err();
        assert_eq!(
            err,
            SpecError::Name {
                what: "VM",
                name: bad.to_string()
            }
        );
        assert_eq!(err.to_string(), refusal("VM", bad));
        let err = SnapshotName::try_from(bad).unwrap_err();
        assert_eq!(err.to_string(), refusal("snapshot", bad));
    }
}

#[test]
fn the_length_limit_counts_bytes() {
    // 62 ASCII bytes and one two-byte character: 63 characters, 64 bytes,
    // and not ASCII anyway.
    let text = format!("{}é", "a".repeat(62));
    assert!(text.parse::<VmName>().is_err());
    assert!("a".repeat(63).parse::<VmName>().is_ok());
    assert!("a".repeat(64).parse::<VmName>().is_err());
}

#[test]
fn serde_validates_what_it_reads() {
    let name: VmName = serde_json::from_str("\"web-1\"").unwrap();
    assert_eq!(serde_json::to_string(&name).unwrap(), "\"web-1\"");
    let err = serde_json::from_str::<VmName>("\"../../etc/cron.d/x\"").unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&refusal("VM", "../../etc/cron.d/x")),
        "{err}"
    );
    let err = serde_json::from_str::<SnapshotName>("\"\"").unwrap_err();
    assert!(
        err.to_string().starts_with(&refusal("snapshot", "")),
        "{err}"
    );
    assert!(serde_json::from_str::<VmName>("7").is_err());
}

#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Record {
    #[serde(default, with = "or_empty")]
    name: Option<SnapshotName>,
}

#[test]
fn an_optional_name_is_stored_as_cocoon_does() {
    let none = Record { name: None };
    assert_eq!(serde_json::to_string(&none).unwrap(), r#"{"name":""}"#);
    assert_eq!(
        serde_json::from_str::<Record>(r#"{"name":""}"#).unwrap(),
        none
    );
    assert_eq!(serde_json::from_str::<Record>("{}").unwrap(), none);
    let some: Record = serde_json::from_str(r#"{"name":"base"}"#).unwrap();
    assert_eq!(some.name.as_deref(), Some("base"));
    let err = serde_json::from_str::<Record>(r#"{"name":"a/b"}"#).unwrap_err();
    assert!(
        err.to_string().starts_with(&refusal("snapshot", "a/b")),
        "{err}"
    );
    assert_eq!(optional::<VmKind>(String::new()).unwrap(), None);
    assert!(optional::<VmKind>("..".into()).is_err());
}

#[test]
fn a_name_keeps_its_text_across_kinds() {
    let snapshot: SnapshotName = "base".parse().unwrap();
    let vm: VmName = snapshot.to_kind();
    assert_eq!(vm, "base");
}

#[test]
fn hot_plug_names_follow_upstreams_rules() {
    use super::{DeviceId, FsTag, PciAddress};
    for ok in ["a", "Share_1", "0-x", &"a".repeat(36)] {
        assert_eq!(ok.parse::<FsTag>().unwrap().as_str(), ok);
    }
    for bad in ["", "_a", "-a", "a.b", "a/b", "a b", &"a".repeat(37)] {
        assert!(bad.parse::<FsTag>().is_err(), "{bad:?}");
    }
    for (given, bdf) in [
        ("01:00.0", "0000:01:00.0"),
        ("0000:AF:1f.7", "0000:af:1f.7"),
        ("/sys/bus/pci/devices/0000:01:00.0", "0000:01:00.0"),
        ("/sys/bus/pci/devices/0000:01:00.0/", "0000:01:00.0"),
    ] {
        assert_eq!(given.parse::<PciAddress>().unwrap().as_str(), bdf);
    }
    for bad in [
        "",
        "1:0.0",
        "01:00.8",
        "0000:01:00",
        "0000:0g:00.0",
        "/sys/bus/pci/devices/01:00.0",
        "/sys/bus/pci/devices/0000:01:00.0/../x",
        "/sys/class/net/eth0",
        "../0000:01:00.0",
    ] {
        assert!(bad.parse::<PciAddress>().is_err(), "{bad:?}");
    }
    for ok in ["gpu0", "A.b-c_d", &"a".repeat(64)] {
        assert_eq!(ok.parse::<DeviceId>().unwrap().as_str(), ok);
    }
    for bad in ["", "cocoon-x", ".a", "a/b", "a:b", &"a".repeat(65)] {
        assert!(bad.parse::<DeviceId>().is_err(), "{bad:?}");
    }
}
