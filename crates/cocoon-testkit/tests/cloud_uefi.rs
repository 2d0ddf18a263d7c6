//! The cloud-image path end to end with a real UEFI boot: the test cloud
//! image (cocoon_testkit::cloud_guest: GPT, ESP, systemd-boot, Debian's cloud
//! kernel, a busybox stand-in for cloud-init) is imported whole, imported in
//! parts and pulled over HTTP into one content-addressed blob; `cocoon vm
//! create` prepares its overlay and cidata disk (the fake CH stands in for the
//! VMM, real CNI plugins give the NIC its MAC and address), and qemu (TCG)
//! with Debian's OVMF boots exactly those disks: the guest must come up with
//! the hostname and the MAC-matched address the engine wrote. A clone of a
//! first-boot snapshot must come up with its own. `on_qemu`: the same image
//! on the engine's own QEMU backend (`vm run --qemu`, q35 with OVMF).

#[allow(dead_code)]
#[path = "cloud_image/http.rs"]
mod http;
#[path = "cloud_uefi/on_qemu.rs"]
mod on_qemu;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cocoon_testkit::CocoonEnv;
use cocoon_testkit::cloud_guest::{self, qemu};
use serde_json::Value;

const FAKE: &str = env!("CARGO_BIN_EXE_fake-vmm");
/// OVMF, systemd-boot and Linux under TCG on two shared cores: tens of
/// seconds; a stuck boot must not take minutes.
const BOOT_LIMIT: Duration = Duration::from_secs(240);

fn bin() -> String {
    cocoon_testkit::cocoon_bin()
}

/// Everything a test needs, or a loud skip naming what is missing.
fn prerequisites(test: &str, boot: bool) -> Option<(cloud_guest::Inputs, Option<Tools>)> {
    if Command::new("qemu-img").arg("--version").output().is_err() {
        cocoon_testkit::skip(
            test,
            "qemu-img is not installed (apt-get install qemu-utils)",
        );
        return None;
    }
    let inputs = match cloud_guest::Inputs::find() {
        Ok(inputs) => inputs,
        Err(why) => {
            cocoon_testkit::skip(test, &why);
            return None;
        }
    };
    if !boot {
        return Some((inputs, None));
    }
    let Some(qemu) = qemu::binary() else {
        cocoon_testkit::skip(
            test,
            "qemu-system-x86_64 not found (apt-get install qemu-system-x86)",
        );
        return None;
    };
    let ovmf = match qemu::Ovmf::find() {
        Ok(ovmf) => ovmf,
        Err(why) => {
            cocoon_testkit::skip(test, &why);
            return None;
        }
    };
    if !Path::new("/usr/lib/cni/bridge").exists() {
        cocoon_testkit::skip(
            test,
            "containernetworking-plugins is not installed (the NIC's MAC and address come from CNI)",
        );
        return None;
    }
    Some((inputs, Some(Tools { qemu, ovmf })))
}

struct Tools {
    qemu: PathBuf,
    ovmf: qemu::Ovmf,
}

/// A private cocoon whose CH is the fake and whose firmware is a stand-in
/// file (qemu boots OVMF instead), run inside a test network namespace with
/// a CNI bridge when `netns` is set.
struct Lab {
    env: CocoonEnv,
    firmware: PathBuf,
    netns: Option<String>,
}

impl Lab {
    fn new() -> Lab {
        let env = CocoonEnv::new(bin());
        let firmware = env.path().join("CLOUDHV.fd");
        std::fs::write(&firmware, b"stand-in: qemu boots OVMF").unwrap();
        Lab {
            env,
            firmware,
            netns: None,
        }
    }

    /// A namespace with a CNI bridge and host-local addresses in a random /24.
    fn with_network(mut self) -> Lab {
        let mut tag = [0u8; 4];
        getrandom::fill(&mut tag).unwrap();
        let tag = u32::from_le_bytes(tag);
        let ns = format!("cocoon-cu-{tag:08x}");
        let ok = Command::new("ip")
            .args(["netns", "add", &ns])
            .status()
            .unwrap();
        assert!(ok.success(), "ip netns add {ns}");
        self.netns = Some(ns);
        let subnet = format!("10.{}.{}", 100 + (tag >> 24) % 100, (tag >> 16) & 0xff);
        let conf = self.path("cni");
        std::fs::create_dir_all(&conf).unwrap();
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "testnet",
            "plugins": [
                {"type": "bridge", "bridge": format!("ccu{:06x}", tag & 0xff_ffff), "isGateway": true,
                 "ipMasq": false, "ipam": {"type": "host-local", "ranges": [[{"subnet": format!("{subnet}.0/24")}]],
                 "dataDir": self.path("ipam")}},
                {"type": "loopback"}
            ]
        });
        std::fs::write(conf.join("10-test.conflist"), conflist.to_string()).unwrap();
        self
    }

    fn path(&self, name: &str) -> PathBuf {
        self.env.path().join(name)
    }

    fn cmd(&self) -> Command {
        let std = self.env.std_cmd();
        let mut cmd = match &self.netns {
            None => std,
            Some(ns) => {
                let mut cmd = Command::new("nsenter");
                cmd.arg(format!("--net=/run/netns/{ns}"))
                    .arg(std.get_program())
                    .args(std.get_args());
                for (k, v) in std.get_envs() {
                    match v {
                        Some(v) => cmd.env(k, v),
                        None => cmd.env_remove(k),
                    };
                }
                cmd
            }
        };
        for proxy in ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"] {
            cmd.env_remove(proxy);
        }
        cmd.env("COCOON_CH_BINARY", FAKE)
            .env("COCOON_FC_BINARY", FAKE)
            .env("COCOON_FIRMWARE_PATH", &self.firmware)
            .env("COCOON_TERMINATE_GRACE_PERIOD_SECONDS", "1");
        cmd
    }

    fn ok(&self, args: &[&str]) -> String {
        cocoon_testkit::run_ok(self.cmd(), args)
    }

    fn inspect(&self, vm: &str) -> Value {
        serde_json::from_str(&self.ok(&["vm", "inspect", vm])).unwrap()
    }

    /// `image ls -o json`, by name: the image id.
    fn image_ids(&self) -> Vec<(String, String)> {
        let images: Value = serde_json::from_str(&self.ok(&["image", "ls", "-o", "json"])).unwrap();
        let mut ids: Vec<(String, String)> = images
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["name"].as_str().unwrap().to_string(),
                    i["id"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        ids.sort();
        ids
    }

    fn blobs(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.env.root_dir().join("images/blobs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Ok(out) = self.cmd().args(["vm", "ls", "-o", "json"]).output()
            && let Ok(Value::Array(vms)) = serde_json::from_slice::<Value>(&out.stdout)
        {
            for vm in vms {
                let id = vm["id"].as_str().unwrap_or_default().to_string();
                let _ = self.cmd().args(["vm", "rm", "--force", &id]).output();
            }
        }
        cocoon_testkit::kill_all_under(&self.env.root_dir());
        if let Some(ns) = &self.netns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn sha256_hex(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).unwrap();
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The test image, built once per inputs (a few seconds the first time).
fn test_image(inputs: &cloud_guest::Inputs) -> PathBuf {
    let image = cloud_guest::qcow2(inputs);
    let info = Command::new("qemu-img")
        .args(["info", "--output=json", "-U"])
        .arg(&image)
        .output()
        .unwrap();
    assert!(info.status.success(), "{info:?}");
    let info: Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["format"], "qcow2", "{info}");
    assert_eq!(info["format-specific"]["data"]["compat"], "1.1", "{info}");
    image
}

/// `image import` of the file, `image import` of its parts and `image pull`
/// over HTTP agree on the content-addressed id and share one blob.
#[test]
fn import_parts_and_pull_give_one_blob() {
    let test = "import_parts_and_pull_give_one_blob";
    let Some((inputs, _)) = prerequisites(test, false) else {
        return;
    };
    let image = test_image(&inputs);
    let hex = sha256_hex(&image);
    let lab = Lab::new();

    lab.ok(&["image", "import", "local/uefi", image.to_str().unwrap()]);

    // Three parts, cut where nothing lines up with a qcow2 cluster.
    let bytes = std::fs::read(&image).unwrap();
    let cuts = [
        0,
        bytes.len() / 3 + 7,
        2 * bytes.len() / 3 + 13,
        bytes.len(),
    ];
    let parts: Vec<String> = cuts
        .windows(2)
        .enumerate()
        .map(|(i, w)| {
            let part = lab.path(&format!("uefi.qcow2.part{i}"));
            std::fs::write(&part, &bytes[w[0]..w[1]]).unwrap();
            part.to_str().unwrap().to_string()
        })
        .collect();
    let mut args = vec!["image", "import", "local/uefi-parts"];
    args.extend(parts.iter().map(String::as_str));
    lab.ok(&args);

    let server = http::Server::start();
    server.put("/images/uefi.qcow2", http::Resource::file(bytes, "uefi"));
    let url = server.url("/images/uefi.qcow2");
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    lab.ok(&["image", "pull", &url]);

    let id = format!("sha256:{hex}");
    let mut want = vec![
        ("local/uefi".to_string(), id.clone()),
        ("local/uefi-parts".to_string(), id.clone()),
        (url.clone(), id.clone()),
    ];
    want.sort();
    assert_eq!(lab.image_ids(), want);
    assert_eq!(
        lab.blobs(),
        [format!("{hex}.qcow2")],
        "one blob for all three"
    );
    // A qcow2 v3 without a backing file is stored as it came.
    let blob = lab.env.root_dir().join(format!("images/blobs/{hex}.qcow2"));
    assert_eq!(sha256_hex(&blob), hex);
}

/// The NIC the engine recorded: MAC and `ip/prefix`.
fn nic_of(vm: &Value) -> (String, String) {
    let nics = vm["network_configs"].as_array().unwrap();
    assert_eq!(nics.len(), 1, "{vm}");
    let net = &nics[0]["network"];
    (
        nics[0]["mac"].as_str().unwrap().to_ascii_lowercase(),
        format!(
            "{}/{}",
            net["ip"].as_str().unwrap(),
            net["prefix"].as_u64().unwrap()
        ),
    )
}

/// Boots a VM's disks as `vm inspect` records them; returns the guest's
/// report lines, after checking it came up and powered off cleanly.
fn boot(tools: &Tools, lab: &Lab, vm: &Value, label: &str) -> Vec<String> {
    boot_with(
        tools,
        lab,
        qemu::UefiBoot::from_inspect(vm, tools.ovmf.clone()),
        label,
    )
}

fn boot_with(tools: &Tools, lab: &Lab, boot: qemu::UefiBoot, label: &str) -> Vec<String> {
    let console_log = lab.path(&format!("{label}.console"));
    let outcome = boot.run(&tools.qemu, &console_log, BOOT_LIMIT);
    eprintln!(
        "{label}: UEFI boot to power-off took {:.1}s (qemu TCG, OVMF, systemd-boot)",
        outcome.elapsed.as_secs_f64()
    );
    let context = format!(
        "console:\n{}\nqemu:\n{}",
        outcome.console, outcome.qemu_output
    );
    assert!(
        !outcome.console.contains(cloud_guest::PANIC_MARKER),
        "{context}"
    );
    assert!(
        outcome.console.contains(cloud_guest::READY_MARKER),
        "no ready marker within {BOOT_LIMIT:?}: {context}"
    );
    // The UEFI path: OVMF started the disk's boot loader, systemd-boot
    // handed the kernel its entry's command line and the initrd.
    for step in [
        "BdsDxe: starting Boot",
        "EFI stub: Loaded initrd",
        // systemd-boot names the entry's initrd on the command line.
        r"Command line: initrd=\cocoon\initrd.img console=ttyS0,115200 panic=-1",
    ] {
        assert!(outcome.console.contains(step), "no {step:?}: {context}");
    }
    assert!(
        outcome.exit_status.is_some_and(|s| s.success()),
        "the guest did not power off: {:?}\n{context}",
        outcome.exit_status
    );
    let reports = cloud_guest::reports(&outcome.console);
    eprintln!("{label}: the guest reported {reports:#?}");
    reports
}

/// The reports that say the guest took this identity.
fn assert_identity(reports: &[String], id: &str, name: &str, mac: &str, address: &str) {
    assert!(
        reports.contains(&format!("instance-id {id}")),
        "{reports:#?}"
    );
    assert!(
        reports.contains(&format!("hostname {name}")),
        "{reports:#?}"
    );
    let nics: Vec<&String> = reports.iter().filter(|r| r.starts_with("nic ")).collect();
    assert_eq!(nics.len(), 1, "one NIC, one address: {reports:#?}");
    let words: Vec<&str> = nics[0].split_whitespace().collect();
    assert_eq!(
        (words[2], words[3], words[4], words[5]),
        ("mac", mac, "address", address),
        "{reports:#?}"
    );
}

/// `vm create` prepares the overlay and the cidata disk; the firmware boots
/// the overlay and the guest applies the cidata identity. A clone of a
/// first-boot snapshot gets a regenerated cidata disk, and booting its disks
/// shows the clone's identity, not the source's.
#[test]
fn engine_prepared_disks_boot_under_uefi_with_the_cidata_identity() {
    let test = "engine_prepared_disks_boot_under_uefi_with_the_cidata_identity";
    let Some((inputs, Some(tools))) = prerequisites(test, true) else {
        return;
    };
    let image = test_image(&inputs);
    let lab = Lab::new().with_network();
    lab.ok(&["image", "import", "local/uefi", image.to_str().unwrap()]);

    let id = lab
        .ok(&[
            "vm",
            "create",
            "--nics",
            "1",
            "--name",
            "uefi-src",
            "--storage",
            "12G",
            "local/uefi",
        ])
        .trim()
        .to_string();
    let vm = lab.inspect("uefi-src");
    let roles: Vec<&str> = vm["storage_configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["cow", "cidata"], "{vm}");
    let (mac, address) = nic_of(&vm);
    let reports = boot(&tools, &lab, &vm, "source");
    assert_identity(&reports, &id, "uefi-src", &mac, &address);

    // First boot on the (fake) VMM, a snapshot of it, and a clone.
    lab.ok(&["vm", "start", "uefi-src"]);
    lab.ok(&["snapshot", "save", "--name", "first-boot", "uefi-src"]);
    let clone_id = lab
        .ok(&["vm", "clone", "--name", "uefi-clone", "first-boot"])
        .trim()
        .to_string();
    let clone = lab.inspect("uefi-clone");
    let (clone_mac, clone_address) = nic_of(&clone);
    assert_ne!(clone_id, id);
    assert_ne!(
        (clone_mac.as_str(), clone_address.as_str()),
        (mac.as_str(), address.as_str())
    );
    let roles: Vec<&str> = clone["storage_configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["cow", "cidata"], "{clone}");
    // Under its own MAC, the clone's disks take the clone's identity.
    let reports = boot(&tools, &lab, &clone, "clone");
    assert_identity(
        &reports,
        &clone_id,
        "uefi-clone",
        &clone_mac,
        &clone_address,
    );
    assert!(
        !reports
            .iter()
            .any(|r| r.contains(&address) || r.contains(&id)),
        "the source's identity leaked into the clone: {reports:#?}"
    );

    // The address follows the MAC, not the NIC's position: behind the
    // source's MAC, the clone's network-config entry matches no NIC.
    let mut boot = qemu::UefiBoot::from_inspect(&clone, tools.ovmf.clone());
    boot.macs = vec![mac.clone()];
    let reports = boot_with(&tools, &lab, boot, "clone-with-source-mac");
    assert!(
        reports.contains(&format!("nic {clone_mac} absent")),
        "{reports:#?}"
    );
    assert!(
        !reports.iter().any(|r| r.contains(" address ")),
        "{reports:#?}"
    );
}

/// A bridge-mode NIC has no address from the engine: network-config asks
/// for DHCP on the MAC-matched NIC, and the guest takes the lease qemu's
/// user network offers.
#[test]
fn a_bridge_nic_without_an_address_asks_for_dhcp() {
    let test = "a_bridge_nic_without_an_address_asks_for_dhcp";
    let Some((inputs, Some(tools))) = prerequisites(test, true) else {
        return;
    };
    let image = test_image(&inputs);
    let lab = Lab::new().with_network();
    let ns = lab.netns.clone().unwrap();
    let bridge = format!("bcu{}", &ns[ns.len() - 6..]);
    let ok = Command::new("ip")
        .args(["-n", &ns, "link", "add", &bridge, "type", "bridge"])
        .status()
        .unwrap();
    assert!(ok.success(), "ip link add {bridge}");
    lab.ok(&["image", "import", "local/uefi", image.to_str().unwrap()]);
    let id = lab
        .ok(&[
            "vm",
            "create",
            "--nics",
            "1",
            "--bridge",
            &bridge,
            "--name",
            "dhcp",
            "local/uefi",
        ])
        .trim()
        .to_string();
    let vm = lab.inspect("dhcp");
    let nic = &vm["network_configs"][0];
    assert_eq!(nic["backend"], "bridge", "{vm}");
    assert!(nic["network"].is_null(), "{vm}");
    let mac = nic["mac"].as_str().unwrap().to_ascii_lowercase();
    let reports = boot(&tools, &lab, &vm, "dhcp");
    // qemu's user network leases the first guest address of 10.0.2.0/24.
    assert_identity(&reports, &id, "dhcp", &mac, "10.0.2.15/24");
}
