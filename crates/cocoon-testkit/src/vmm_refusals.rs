//! Inputs the real VMMs refuse, with their exact answers (recorded from
//! Cloud Hypervisor v53.0 and Firecracker v1.16.1): the fake VMMs must
//! refuse them the same way (tests/vmm_fakes.rs), and the real ones still do
//! (tests/vmm_real.rs), so a fake-only test cannot pass on input a real VMM
//! rejects.

use std::io::{Read, Write};
use std::path::Path;

/// A CH command line (after `--api-socket <path> --kernel /nonexistent`)
/// and the error chain CH exits with (status 1).
pub struct CliCase {
    pub args: &'static [&'static str],
    pub chain: &'static [&'static str],
}

const fn parse(option: &'static str, error: &'static str) -> [&'static str; 3] {
    ["Error parsing config", option, error]
}

macro_rules! cli {
    ($args:expr, $option:expr, $error:expr) => {
        CliCase {
            args: $args,
            chain: &parse($option, $error),
        }
    };
}

pub const CH_CLI_CASES: &[CliCase] = &[
    cli!(
        &["--disk", "foo=bar"],
        "Error parsing --disk",
        "unknown option: foo"
    ),
    cli!(
        &["--disk", "path=/tmp/x,bogus=1"],
        "Error parsing --disk",
        "unknown option: bogus"
    ),
    cli!(
        &["--disk", "/tmp/x"],
        "Error parsing --disk",
        "unknown option: /tmp/x"
    ),
    cli!(
        &["--disk", "path=/tmp/x,readonly=yes"],
        "Error parsing --disk",
        "unable to convert yes for readonly"
    ),
    cli!(
        &["--disk", "path=/tmp/x,readonly=1"],
        "Error parsing --disk",
        "unable to convert 1 for readonly"
    ),
    cli!(
        &["--disk", "path=/tmp/a", "path=/tmp/b,num_queues=x"],
        "Error parsing --disk",
        "unable to convert x for num_queues"
    ),
    cli!(
        &["--cpus", "boot=x"],
        "Error parsing --cpus",
        "unable to convert x for boot"
    ),
    cli!(
        &["--cpus", "2"],
        "Error parsing --cpus",
        "unknown option: 2"
    ),
    cli!(
        &["--cpus", "boot=2,max=1"],
        "Error validating configuration",
        "Max CPUs (1) lower than boot CPUs (2)"
    ),
    cli!(
        &["--memory", "size=12Q"],
        "Error parsing --memory",
        "unable to convert 12Q for size"
    ),
    cli!(
        &["--memory", "size=1g"],
        "Error parsing --memory",
        "unable to convert 1g for size"
    ),
    cli!(
        &["--memory", "512M"],
        "Error parsing --memory",
        "unknown option: 512M"
    ),
    cli!(
        &["--memory", "size=512M,foo=on"],
        "Error parsing --memory",
        "unknown option: foo"
    ),
    cli!(
        &["--net", "tap=t0,mac=zz"],
        "Error parsing --net",
        "unable to convert zz for mac"
    ),
    cli!(
        &["--net", "tap=t0,bogus=1"],
        "Error parsing --net",
        "unknown option: bogus"
    ),
    cli!(
        &["--net", "tap=t0,mac=02:00:00:00:00:01,queue_size=abc"],
        "Error parsing --net",
        "unable to convert abc for queue_size"
    ),
    cli!(
        &["--serial", "bogus"],
        "Error parsing --serial",
        "unknown option: bogus"
    ),
    cli!(
        &["--serial", "file"],
        "Error parsing --serial",
        "invalid syntax: file"
    ),
    cli!(
        &["--serial", "socket="],
        "Error validating configuration",
        "Path missing when using socket console mode"
    ),
    cli!(
        &["--console", "pty,x=1"],
        "Error parsing --console",
        "unknown option: x"
    ),
    cli!(
        &["--balloon", "size=abc"],
        "Error parsing --balloon",
        "unable to convert abc for size"
    ),
    cli!(
        &["--balloon", "size=1M,deflate_on_oom=maybe"],
        "Error parsing --balloon",
        "unable to convert maybe for deflate_on_oom"
    ),
    cli!(
        &["--balloon", "size=1M,free_page_reporting=on,bogus=1"],
        "Error parsing --balloon",
        "unknown option: bogus"
    ),
];

/// The error chain in CH's stderr (its log lines left out).
pub fn ch_chain(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .skip_while(|l| !l.starts_with("Error: Cloud Hypervisor exited"))
        .skip(1)
        .filter_map(|l| l.trim().split_once(": ").map(|(_, e)| e.to_string()))
        .collect()
}

/// An API request and the VMM's answer: status and body.
pub struct ApiCase {
    pub method: &'static str,
    pub path: &'static str,
    pub body: &'static str,
    pub status: u16,
    pub response: &'static str,
}

/// Firecracker before InstanceStart: unknown, missing and mistyped fields
/// (FC's structs deny unknown fields), and a drive whose file is missing
/// (FC opens it at `PUT /drives`).
pub const FC_API_CASES: &[ApiCase] = &[
    ApiCase {
        method: "PUT",
        path: "/machine-config",
        body: r#"{"vcpu_count":1,"mem_size_mib":128,"bogus":true}"#,
        status: 400,
        response: r#"{"fault_message":"An error occurred when deserializing the json body of a request: unknown field `bogus`, expected one of `vcpu_count`, `mem_size_mib`, `smt`, `cpu_template`, `track_dirty_pages`, `huge_pages` at line 1 column 42."}"#,
    },
    ApiCase {
        method: "PUT",
        path: "/machine-config",
        body: r#"{"vcpu_count":"1","mem_size_mib":128}"#,
        status: 400,
        response: r#"{"fault_message":"An error occurred when deserializing the json body of a request: invalid type: string \"1\", expected u8 at line 1 column 17."}"#,
    },
    ApiCase {
        method: "PUT",
        path: "/machine-config",
        body: r#"{"vcpu_count":1}"#,
        status: 400,
        response: r#"{"fault_message":"An error occurred when deserializing the json body of a request: missing field `mem_size_mib` at line 1 column 16."}"#,
    },
    ApiCase {
        method: "PUT",
        path: "/machine-config",
        body: r#"{"vcpu_count":1,"mem_size_mib":128,"smt":"no"}"#,
        status: 400,
        response: r#"{"fault_message":"An error occurred when deserializing the json body of a request: invalid type: string \"no\", expected a boolean at line 1 column 45."}"#,
    },
    ApiCase {
        method: "PUT",
        path: "/drives/rootfs",
        body: r#"{"drive_id":"rootfs","path_on_host":"/nonexistent/disk.raw","is_root_device":false,"is_read_only":false}"#,
        status: 400,
        response: r#"{"fault_message":"Drive config error: Unable to create the virtio block device: Virtio backend error: Error manipulating the backing file: No such file or directory (os error 2) /nonexistent/disk.raw"}"#,
    },
    ApiCase {
        method: "PUT",
        path: "/drives/rootfs",
        body: r#"{"drive_id":"rootfs","path_on_host":"/dev/null","is_root_device":false,"is_read_only":false,"bogus":1}"#,
        status: 400,
        response: r#"{"fault_message":"An error occurred when deserializing the json body of a request: unknown field `bogus`, expected one of `drive_id`, `partuuid`, `is_root_device`, `cache_type`, `is_read_only`, `path_on_host`, `rate_limiter`, `io_engine`, `socket` at line 1 column 99."}"#,
    },
    ApiCase {
        method: "PUT",
        path: "/drives/rootfs",
        body: r#"{"drive_id":"rootfs","path_on_host":"/dev/null","is_read_only":false}"#,
        status: 400,
        response: r#"{"fault_message":"An error occurred when deserializing the json body of a request: missing field `is_root_device` at line 1 column 69."}"#,
    },
    ApiCase {
        method: "PUT",
        path: "/boot-source",
        body: r#"{"kernel_image_path":"/dev/null","x":1}"#,
        status: 400,
        response: r#"{"fault_message":"An error occurred when deserializing the json body of a request: unknown field `x`, expected one of `kernel_image_path`, `initrd_path`, `boot_args` at line 1 column 36."}"#,
    },
    ApiCase {
        method: "PUT",
        path: "/network-interfaces/eth0",
        body: r#"{"iface_id":"eth0","host_dev_name":"tapx","bogus":1}"#,
        status: 400,
        response: r#"{"fault_message":"An error occurred when deserializing the json body of a request: unknown field `bogus`, expected one of `iface_id`, `host_dev_name`, `guest_mac`, `mtu`, `rx_rate_limiter`, `tx_rate_limiter` at line 1 column 49."}"#,
    },
    ApiCase {
        method: "PUT",
        path: "/network-interfaces/eth0",
        body: r#"{"iface_id":"eth0"}"#,
        status: 400,
        response: r#"{"fault_message":"An error occurred when deserializing the json body of a request: missing field `host_dev_name` at line 1 column 19."}"#,
    },
    ApiCase {
        method: "PUT",
        path: "/balloon",
        body: r#"{"amount_mib":"64","deflate_on_oom":true}"#,
        status: 400,
        response: r#"{"fault_message":"An error occurred when deserializing the json body of a request: invalid type: string \"64\", expected u32 at line 1 column 18."}"#,
    },
    ApiCase {
        method: "PUT",
        path: "/balloon",
        body: r#"{"amount_mib":64,"deflate_on_oom":true,"bogus":1}"#,
        status: 400,
        response: r#"{"fault_message":"An error occurred when deserializing the json body of a request: unknown field `bogus`, expected one of `amount_mib`, `deflate_on_oom`, `stats_polling_interval_s`, `free_page_hinting`, `free_page_reporting` at line 1 column 46."}"#,
    },
    ApiCase {
        method: "PUT",
        path: "/entropy",
        body: r#"{"bogus":1}"#,
        status: 400,
        response: r#"{"fault_message":"An error occurred when deserializing the json body of a request: unknown field `bogus`, expected `rate_limiter` at line 1 column 8."}"#,
    },
    ApiCase {
        method: "PATCH",
        path: "/vm",
        body: r#"{"state":"Paused","x":1}"#,
        status: 400,
        response: r#"{"fault_message":"An error occurred when deserializing the json body of a request: unknown field `x`, expected `state` at line 1 column 21."}"#,
    },
    ApiCase {
        method: "PUT",
        path: "/actions",
        body: r#"{"action_type":"InstanceStart","x":1}"#,
        status: 400,
        response: r#"{"fault_message":"An error occurred when deserializing the json body of a request: unknown field `x`, expected `action_type` at line 1 column 34."}"#,
    },
    ApiCase {
        method: "PUT",
        path: "/snapshot/create",
        body: r#"{"snapshot_path":"/tmp/a","mem_file_path":"/tmp/b","x":1}"#,
        status: 400,
        response: r#"{"fault_message":"An error occurred when deserializing the json body of a request: unknown field `x`, expected one of `snapshot_type`, `snapshot_path`, `mem_file_path` at line 1 column 54."}"#,
    },
    ApiCase {
        method: "PUT",
        path: "/snapshot/load",
        body: r#"{"snapshot_path":"/nonexistent","mem_backend":{"backend_type":"File","backend_path":"/x"},"bogus":1}"#,
        status: 400,
        response: r#"{"fault_message":"An error occurred when deserializing the json body of a request: unknown field `bogus`, expected one of `snapshot_path`, `mem_file_path`, `mem_backend`, `enable_diff_snapshots`, `track_dirty_pages`, `resume_vm`, `network_overrides`, `vsock_override`, `clock_realtime` at line 1 column 97."}"#,
    },
];

/// Cloud Hypervisor started with only `--api-socket`, in this order: CH
/// refuses mistyped fields (400, its "Failed to deserialize JSON" chain)
/// and ignores unknown ones.
pub const CH_API_CASES: &[ApiCase] = &[
    ApiCase {
        method: "PUT",
        path: "/api/v1/vm.resize",
        body: r#"{"desired_vcpus":"2"}"#,
        status: 400,
        response: r#"["Failed to deserialize JSON","invalid type: string \"2\", expected u32 at line 1 column 20"]"#,
    },
    ApiCase {
        method: "PUT",
        path: "/api/v1/vm.create",
        body: r#"{"cpus":{"boot_vcpus":"1","max_vcpus":1},"memory":{"size":134217728},"payload":{"kernel":"/nonexistent"}}"#,
        status: 400,
        response: r#"["Failed to deserialize JSON","invalid type: string \"1\", expected u32 at line 1 column 25"]"#,
    },
    ApiCase {
        method: "PUT",
        path: "/api/v1/vm.create",
        body: r#"{"cpus":{"boot_vcpus":1,"max_vcpus":1},"memory":{"size":134217728},"payload":{"kernel":"/nonexistent"},"bogus":1}"#,
        status: 204,
        response: "",
    },
    ApiCase {
        method: "PUT",
        path: "/api/v1/vm.remove-device",
        body: r#"{"id":"x","y":1}"#,
        status: 500,
        response: r#"["Error from API","The device could not be removed from the VM","No device with id \"x\" to remove"]"#,
    },
];

/// One HTTP/1.1 request on a unix socket: (status, body).
pub fn http(socket: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = std::os::unix::net::UnixStream::connect(socket)
        .unwrap_or_else(|e| panic!("{}: {e}", socket.display()));
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nAccept: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // Read until the whole answer is in (the VMMs may keep the connection
    // open despite `Connection: close`).
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(done) = complete(&response) {
            return done;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => response.extend_from_slice(&buf[..n]),
        }
    }
    complete(&response).unwrap_or_else(|| {
        panic!(
            "incomplete HTTP answer: {:?}",
            String::from_utf8_lossy(&response)
        )
    })
}

/// (status, body) once `response` holds a whole HTTP answer.
fn complete(response: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(response);
    let (head, rest) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let lower = head.to_ascii_lowercase();
    if lower.contains("transfer-encoding: chunked") {
        return rest.contains("0\r\n\r\n").then(|| (status, dechunk(rest)));
    }
    let length = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|n| n.trim().parse::<usize>().ok())
        .unwrap_or(0);
    (rest.len() >= length).then(|| (status, rest[..length].to_string()))
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}
