//! Network setup of one NIC: the engine's full path (namespace, CNI ADD, TAP,
//! address flush, ingress qdiscs and redirect filters) against the bare CNI
//! ADD of the same plugin chain into a fresh namespace, measured in the same
//! run with Debian's bridge + host-local + loopback plugins.
//!
//! Needs root and containernetworking-plugins. Everything runs inside a
//! namespace the bench creates (the CNI bridge lives there), and is removed.
//! Run: `cargo bench -p cocoon-engine --bench net_setup` (or bench/run.sh).

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cocoon_engine::model::Hypervisor;
use cocoon_engine::net::{self, NetContext, NetRequest, cni, netns};

const ROUNDS: usize = 30;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    if !Path::new("/usr/lib/cni/bridge").exists() {
        eprintln!("*** SKIPPED net_setup: containernetworking-plugins is not installed ***");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let host_ns = PathBuf::from(format!("/run/netns/cocoon-bench-{}", std::process::id()));
    netns::create(&host_ns).unwrap();
    // Everything below, the CNI bridge included, happens in the bench's namespace.
    let ns = std::fs::File::open(&host_ns).unwrap();
    rustix::thread::move_into_link_name_space(
        ns.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .unwrap();
    let conf = work.path().join("conf");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::write(
        conf.join("10-bench.conflist"),
        serde_json::json!({
            "cniVersion": "1.0.0", "name": "benchnet",
            "plugins": [
                {"type": "bridge", "bridge": "cnibench0", "isGateway": true, "ipMasq": false,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.201.0.0/16"}]], "dataDir": work.path().join("ipam")}},
                {"type": "loopback"}
            ]
        })
        .to_string(),
    )
    .unwrap();
    let ctx = NetContext {
        conf_dir: conf.clone(),
        bin_dirs: vec![PathBuf::from(net::DEBIAN_CNI_DIR)],
        marker_dir: work.path().join("markers"),
        scope: String::new(),
    };
    let list = cni::pick(cni::load(&conf).unwrap(), "", &conf).unwrap();
    let mut bare = Vec::new();
    let mut full = Vec::new();
    for round in 0..ROUNDS {
        // Baseline: a namespace and the plugin chain's ADD, nothing else.
        let id = format!("BENCHBARE{round:017}");
        let path = netns::path_for(&id);
        let call = cni::Call {
            container_id: &id,
            netns: &path,
            ifname: "eth0",
            args: None,
            bin_dirs: &ctx.bin_dirs,
        };
        let t = Instant::now();
        netns::create(&path).unwrap();
        let result = cni::add(&list, &call).unwrap();
        bare.push(t.elapsed());
        cni::del(&list, &call, Some(&result)).unwrap();
        netns::delete(&path).unwrap();

        // Ours: the same, plus TAP, flush, qdiscs and redirect filters.
        let id = format!("BENCHFULL{round:017}");
        let request = NetRequest {
            vm_id: &id,
            nics: 1,
            network: "",
            bridge: None,
            hypervisor: Hypervisor::CloudHypervisor,
            cpu: 1,
            queue_size: 0,
        };
        let t = Instant::now();
        let attached = net::attach(&ctx, &request).unwrap();
        full.push(t.elapsed());
        let mut vm = cocoon_engine::model::Vm::new(
            &id,
            Hypervisor::CloudHypervisor,
            cocoon_engine::model::VmConfig::new(
                "b".parse().unwrap(),
                "b",
                cocoon_engine::model::ImageType::Oci,
            ),
            work.path().into(),
            work.path().into(),
        );
        vm.network_configs = attached.configs;
        net::detach(&ctx, &vm, &attached.leases).unwrap();
    }
    netns::delete(&host_ns).unwrap();
    let (b, f) = (median(bare), median(full));
    println!("network setup of one NIC, median of {ROUNDS} (bridge + host-local + loopback)");
    println!(
        "  bare CNI ADD (netns + plugin chain)          {:8.2} ms",
        b.as_secs_f64() * 1e3
    );
    println!(
        "  cocoon (netns + ADD + TAP + tc redirects)    {:8.2} ms   {:+.2} ms  ({:.2}x)",
        f.as_secs_f64() * 1e3,
        (f.as_secs_f64() - b.as_secs_f64()) * 1e3,
        f.as_secs_f64() / b.as_secs_f64()
    );
}
