//! Each case builds the real disk image and reads it back with a FAT reader,
//! comparing every file byte for byte.

use std::collections::BTreeMap;
use std::io::{Cursor, Read};
use std::net::IpAddr;

use super::*;

fn dns() -> Vec<IpAddr> {
    vec!["8.8.8.8".parse().unwrap(), "1.1.1.1".parse().unwrap()]
}

fn static_nic(mac: &str, ip: &str, gateway: &str, prefix: u8) -> CidataNic {
    CidataNic {
        mac: mac.into(),
        address: Some(IpConfig {
            ip: ip.into(),
            gateway: gateway.into(),
            prefix,
        }),
    }
}

fn root() -> Option<Credentials> {
    Some(Credentials {
        user: "root".into(),
        password: "cocoon".into(),
    })
}

/// The image's files by name, its label (boot sector and root directory) and volume id.
struct ReadBack {
    files: BTreeMap<String, String>,
    label: String,
    root_label: Option<String>,
    volume_id: u32,
    fat12: bool,
}

fn read_back(image: &[u8]) -> ReadBack {
    assert_eq!(image.len(), IMAGE_BYTES);
    let fs = fatfs::FileSystem::new(Cursor::new(image.to_vec()), fatfs::FsOptions::new()).unwrap();
    let mut files = BTreeMap::new();
    for entry in fs.root_dir().iter() {
        let entry = entry.unwrap();
        let mut text = String::new();
        entry.to_file().read_to_string(&mut text).unwrap();
        files.insert(entry.file_name(), text);
    }
    let root_label = fs.read_volume_label_from_root_dir().unwrap();
    ReadBack {
        files,
        label: fs.volume_label(),
        root_label,
        volume_id: fs.volume_id(),
        fat12: fs.fat_type() == fatfs::FatType::Fat12,
    }
}

fn disk(spec: &CidataSpec<'_>) -> BTreeMap<String, String> {
    let read = read_back(&image(spec, 0x1234_abcd).unwrap());
    assert!(read.fat12);
    assert_eq!(read.label, "cidata");
    assert_eq!(read.root_label.as_deref(), Some("cidata"));
    assert_eq!(read.volume_id, 0x1234_abcd);
    read.files
}

fn expect(files: &[(&str, &str)]) -> BTreeMap<String, String> {
    files
        .iter()
        .map(|(n, c)| (n.to_string(), c.to_string()))
        .collect()
}

#[test]
fn single_static_nic_as_root() {
    let nics = [static_nic("02:00:00:00:00:01", "10.0.0.2", "10.0.0.1", 24)];
    let dns = dns();
    let files = disk(&CidataSpec {
        instance_id: "01J0000000000000000000VMID",
        hostname: "web",
        credentials: root(),
        nics: &nics,
        mounts: &[],
        dns: &dns,
    });
    assert_eq!(
        files,
        expect(&[
            (
                "meta-data",
                "instance-id: 01J0000000000000000000VMID\nlocal-hostname: web\n"
            ),
            (
                "user-data",
                "#cloud-config
chpasswd:
  expire: false
  list:
    - 'root:cocoon'
ssh_pwauth: true
disable_root: false
write_files:
  - path: /etc/systemd/network/15-cocoon-id0.network
    owner: root:root
    permissions: '0644'
    content: |
      [Match]
      MACAddress=02:00:00:00:00:01

      [Network]
      Address=10.0.0.2/24
      Gateway=10.0.0.1
      DNS=8.8.8.8
      DNS=1.1.1.1
      RequiredForOnline=yes
"
            ),
            (
                "network-config",
                "version: 2
ethernets:
  id0:
    match:
      macaddress: \"02:00:00:00:00:01\"
    addresses:
      - 10.0.0.2/24
    routes:
      - to: default
        via: 10.0.0.1
    nameservers:
      addresses:
        - 8.8.8.8
        - 1.1.1.1
"
            ),
        ])
    );
}

#[test]
fn multiple_nics_static_and_dhcp() {
    let nics = [
        static_nic("02:00:00:00:00:01", "10.0.0.2", "10.0.0.1", 24),
        static_nic("02:00:00:00:00:02", "192.168.7.9", "", 16),
        CidataNic {
            mac: "02:00:00:00:00:03".into(),
            address: None,
        },
    ];
    let dns = ["9.9.9.9".parse().unwrap()];
    let files = disk(&CidataSpec {
        instance_id: "i-2",
        hostname: "multi",
        credentials: None,
        nics: &nics,
        mounts: &[],
        dns: &dns,
    });
    assert_eq!(
        files["user-data"],
        "#cloud-config
write_files:
  - path: /etc/systemd/network/15-cocoon-id0.network
    owner: root:root
    permissions: '0644'
    content: |
      [Match]
      MACAddress=02:00:00:00:00:01

      [Network]
      Address=10.0.0.2/24
      Gateway=10.0.0.1
      DNS=9.9.9.9
      RequiredForOnline=yes
  - path: /etc/systemd/network/15-cocoon-id1.network
    owner: root:root
    permissions: '0644'
    content: |
      [Match]
      MACAddress=02:00:00:00:00:02

      [Network]
      Address=192.168.7.9/16
      DNS=9.9.9.9
      RequiredForOnline=no
  - path: /etc/systemd/network/15-cocoon-id2.network
    owner: root:root
    permissions: '0644'
    content: |
      [Match]
      MACAddress=02:00:00:00:00:03

      [Network]
      DHCP=ipv4
      RequiredForOnline=no
"
    );
    assert_eq!(
        files["network-config"],
        "version: 2
ethernets:
  id0:
    match:
      macaddress: \"02:00:00:00:00:01\"
    addresses:
      - 10.0.0.2/24
    routes:
      - to: default
        via: 10.0.0.1
    nameservers:
      addresses:
        - 9.9.9.9
  id1:
    match:
      macaddress: \"02:00:00:00:00:02\"
    addresses:
      - 192.168.7.9/16
    nameservers:
      addresses:
        - 9.9.9.9
  id2:
    match:
      macaddress: \"02:00:00:00:00:03\"
    dhcp4: true
"
    );
    assert_eq!(
        files["meta-data"],
        "instance-id: i-2\nlocal-hostname: multi\n"
    );
}

#[test]
fn dhcp_nic_and_no_nics() {
    let nics = [CidataNic {
        mac: "02:aa:bb:cc:dd:ee".into(),
        address: None,
    }];
    let dns = dns();
    let files = disk(&CidataSpec {
        instance_id: "i-3",
        hostname: "dhcp",
        credentials: None,
        nics: &nics,
        mounts: &[],
        dns: &dns,
    });
    assert_eq!(
        files["network-config"],
        "version: 2\nethernets:\n  id0:\n    match:\n      macaddress: \"02:aa:bb:cc:dd:ee\"\n    dhcp4: true\n"
    );
    assert!(files["user-data"].contains("      DHCP=ipv4\n      RequiredForOnline=yes\n"));
    assert!(!files["user-data"].contains("DNS="));

    // Without NICs there is no network-config at all.
    let files = disk(&CidataSpec {
        instance_id: "i-4",
        hostname: "offline",
        credentials: None,
        nics: &[],
        mounts: &[],
        dns: &dns,
    });
    assert_eq!(
        files,
        expect(&[
            ("meta-data", "instance-id: i-4\nlocal-hostname: offline\n"),
            ("user-data", "#cloud-config\n"),
        ])
    );
}

#[test]
fn custom_user_gets_an_account_and_sudo() {
    let files = disk(&CidataSpec {
        instance_id: "i-5",
        hostname: "dev",
        credentials: Some(Credentials {
            user: "alice".into(),
            password: "it's a secret".into(),
        }),
        nics: &[],
        mounts: &[],
        dns: &[],
    });
    assert_eq!(
        files["user-data"],
        r#"#cloud-config
chpasswd:
  expire: false
  list:
    - 'alice:it''s a secret'
ssh_pwauth: true
runcmd:
  - [sh, -c, 'id "$1" >/dev/null 2>&1 || useradd -m -s /bin/bash -N "$1"', sh, 'alice']
  - [usermod, -aG, sudo, 'alice']
  - [sh, -c, 'printf "%s\n" "$1" | chpasswd', sh, 'alice:it''s a secret']
  - [sh, -c, 'echo "$1 ALL=(ALL) NOPASSWD:ALL" > "/etc/sudoers.d/cocoon-$1"', sh, 'alice']
"#
    );
}

#[test]
fn data_disks_become_mounts_by_virtio_serial() {
    use crate::model::{Hypervisor, ImageType, StorageConfig, VmConfig};
    let mut vm = Vm::new(
        "id",
        Hypervisor::CloudHypervisor,
        VmConfig::new("db".parse().unwrap(), "img", ImageType::Cloudimg),
        "/run/x".into(),
        "/log/x".into(),
    );
    let entry = |serial: &str, role, mount: &str, fstype| StorageConfig {
        vmm_path: None,
        external: false,
        slot: None,
        path: format!("/run/x/{serial}").into(),
        ro: false,
        serial: serial.into(),
        role,
        mount_point: mount.into(),
        fstype,
        direct_io: None,
        directio_mode: None,
    };
    vm.storage_configs = vec![
        entry("", StorageRole::Cow, "", None),
        entry(
            "pg",
            StorageRole::Data,
            "/var/lib/postgresql",
            Some(FsType::Ext4),
        ),
        entry("raw", StorageRole::Data, "", Some(FsType::None)),
        entry("logs", StorageRole::Data, "/mnt/logs", Some(FsType::Ext4)),
    ];
    let mounts = mounts_of(&vm);
    let files = disk_files(&mounts);
    assert_eq!(
        files["user-data"],
        "#cloud-config
chpasswd:
  expire: false
  list:
    - 'root:cocoon'
ssh_pwauth: true
disable_root: false
mounts:
  - ['/dev/disk/by-id/virtio-pg', '/var/lib/postgresql', 'ext4', 'defaults,nofail', '0', '2']
  - ['/dev/disk/by-id/virtio-logs', '/mnt/logs', 'ext4', 'defaults,nofail', '0', '2']
"
    );
}

fn disk_files(mounts: &[CidataMount]) -> BTreeMap<String, String> {
    disk(&CidataSpec {
        instance_id: "i-6",
        hostname: "db",
        credentials: root(),
        nics: &[],
        mounts,
        dns: &[],
    })
}

#[test]
fn written_disks_get_fresh_volume_ids_and_mode_0600() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE_NAME);
    let spec = CidataSpec {
        instance_id: "i-7",
        hostname: "ids",
        credentials: root(),
        nics: &[],
        mounts: &[],
        dns: &[],
    };
    write(&spec, &path).unwrap();
    let first = read_back(&std::fs::read(&path).unwrap());
    write(&spec, &path).unwrap();
    let second = read_back(&std::fs::read(&path).unwrap());
    assert_ne!(first.volume_id, second.volume_id);
    assert_ne!(first.volume_id, 0x1234_5678, "fatfs's fixed default");
    assert_eq!(first.files, second.files);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, [FILE_NAME], "no temporary file is left");

    // blkid (util-linux) is a second, independent reader of the label and type.
    if let Ok(out) = std::process::Command::new("blkid")
        .args(["-p", "-o", "export"])
        .arg(&path)
        .output()
    {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("LABEL=cidata\n"), "{text}");
        assert!(text.contains("TYPE=vfat\n"), "{text}");
        assert!(text.contains("VERSION=FAT12\n"), "{text}");
        let uuid = format!(
            "UUID={:04X}-{:04X}\n",
            second.volume_id >> 16,
            second.volume_id & 0xffff
        );
        assert!(text.contains(&uuid), "{text} vs {uuid}");
    }
}

#[test]
fn control_characters_are_refused() {
    let spec = CidataSpec {
        instance_id: "i-8",
        hostname: "x",
        credentials: Some(Credentials {
            user: "root".into(),
            password: "two\nlines".into(),
        }),
        nics: &[],
        mounts: &[],
        dns: &[],
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE_NAME);
    let err = write(&spec, &path).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the cloud-init password contains a control character; use printable characters only"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
