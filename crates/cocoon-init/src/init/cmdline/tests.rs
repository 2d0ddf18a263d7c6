use super::*;

const CH: &str = "console=hvc0 loglevel=3 boot=cocoon-overlay cocoon.layers=cocoon-layer2,cocoon-layer1,cocoon-layer0 cocoon.cow=cocoon-cow clocksource=kvm-clock rw net.ifnames=0 cocoon.hostname=web ip=10.0.0.5::10.0.0.1:255.255.255.0:web:eth0:off:8.8.8.8:1.1.1.1 ip=192.168.1.9:::255.255.0.0::eth1:off";

#[test]
fn the_cloud_hypervisor_line_parses() {
    let args = parse(CH).unwrap();
    assert_eq!(
        args.layers,
        ["cocoon-layer2", "cocoon-layer1", "cocoon-layer0"].map(|s| DiskRef::Serial(s.into()))
    );
    assert_eq!(args.cow, Some(DiskRef::Serial("cocoon-cow".into())));
    assert_eq!(args.timeout, Duration::from_secs(10));
    assert_eq!(args.effective_hostname(), Some("web"));
    assert!(!args.reboot_ends_vm);
    assert_eq!(
        args.ips,
        [
            IpConfig {
                address: "10.0.0.5".parse().unwrap(),
                prefix: 24,
                gateway: Some("10.0.0.1".parse().unwrap()),
                hostname: Some("web".into()),
                device: "eth0".into(),
                dns: vec!["8.8.8.8".parse().unwrap(), "1.1.1.1".parse().unwrap()],
            },
            IpConfig {
                address: "192.168.1.9".parse().unwrap(),
                prefix: 16,
                gateway: None,
                hostname: None,
                device: "eth1".into(),
                dns: vec![],
            },
        ]
    );
    assert_eq!(args.name_servers().len(), 2);
}

#[test]
fn the_firecracker_line_parses() {
    let line = "console=ttyS0 reboot=k loglevel=3 pci=off cocoon.layers=/dev/vdb,/dev/vda cocoon.cow=/dev/vdc cocoon.timeout=3 rw";
    let args = parse(line).unwrap();
    assert_eq!(
        args.layers,
        [
            DiskRef::Path("/dev/vdb".into()),
            DiskRef::Path("/dev/vda".into())
        ]
    );
    assert_eq!(args.cow, Some(DiskRef::Path("/dev/vdc".into())));
    assert_eq!(args.timeout, Duration::from_secs(3));
    assert!(args.reboot_ends_vm);
    assert_eq!(args.effective_hostname(), None);
}

#[test]
fn the_ip_hostname_stands_in_and_name_servers_are_not_repeated() {
    let args = parse("ip=10.0.0.2::10.0.0.1:255.255.255.252:vm1:eth0:off:9.9.9.9 ip=10.1.0.2:::255.255.255.255::eth1:off:9.9.9.9:1.1.1.1 -- cocoon.hostname=ignored").unwrap();
    assert_eq!(args.effective_hostname(), Some("vm1"));
    assert_eq!(args.ips[0].prefix, 30);
    assert_eq!(args.ips[1].prefix, 32);
    assert_eq!(
        args.name_servers(),
        [
            "9.9.9.9".parse::<Ipv4Addr>().unwrap(),
            "1.1.1.1".parse().unwrap()
        ]
    );
    assert!(parse("ip=off ip=none").unwrap().ips.is_empty());
}

#[test]
fn hostile_values_are_refused() {
    for bad in [
        "cocoon.layers=/dev/../etc/passwd",
        "cocoon.layers=/dev/a/b",
        "cocoon.layers=a,,b",
        "cocoon.layers=",
        "cocoon.cow=/dev/",
        "cocoon.cow=averyveryveryverylongserial",
        "cocoon.timeout=-1",
        "cocoon.timeout=1e9",
        "cocoon.timeout=999999",
        "cocoon.hostname=a/b",
        "cocoon.hostname=-x",
        "cocoon.hostname=",
        "ip=10.0.0.1",
        "ip=10.0.0.300::10.0.0.1:255.255.255.0:h:eth0:off",
        "ip=10.0.0.3::10.0.0.1:255.0.255.0:h:eth0:off",
        "ip=10.0.0.3::10.0.0.1:255.255.255.0:h:eth0:dhcp",
        "ip=10.0.0.3::10.0.0.1:255.255.255.0:h:../x:off",
        "ip=10.0.0.3::10.0.0.1:255.255.255.0:h:averyverylongifname:off",
        "ip=10.0.0.3::10.0.0.1:255.255.255.0:h;rm:eth0:off",
        "ip=10.0.0.3::10.0.0.1:255.255.255.0:h:eth0:off:dns",
    ] {
        assert!(parse(bad).is_err(), "{bad} was accepted");
    }
}

#[test]
fn netmasks_become_prefixes() {
    assert_eq!(prefix_of("255.255.255.0"), Some(24));
    assert_eq!(prefix_of("255.255.255.255"), Some(32));
    assert_eq!(prefix_of("0.0.0.0"), Some(0));
    assert_eq!(prefix_of("255.255.128.0"), Some(17));
    assert_eq!(prefix_of("255.255.0.255"), None);
    assert_eq!(prefix_of("0.255.255.255"), None);
    assert_eq!(prefix_of("24"), None);
}
