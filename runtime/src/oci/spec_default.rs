//! `strata spec`: the default config.json of a bundle, the one `crun spec` writes (and, but for
//! the hostname and ociVersion, `runc spec`): `sh` on a terminal, three capabilities, the usual
//! /proc, /dev, /sys mounts, new pid, network, ipc, uts and mount namespaces, the masked and
//! read-only /proc paths.
//!
//! Rootless (`--rootless`), as `crun spec --rootless`: a user namespace as well (placed before
//! the mount namespace) and /dev/pts without `gid=5` (no group 5 is mapped). Unlike crun, which
//! maps the caller to root when it runs the container, and like runc, the mappings are written
//! out: the current user and group as 0. Unlike runc, the network namespace stays and /sys
//! remains a sysfs mount (a user namespace's own network namespace allows it), and so does the
//! device rule.
//!
//! Built with `Default` and setters where oci-spec has them rather than the builders, whose
//! `build()` returns a Result (that nothing here could make an error).

use oci_spec::runtime::{
    Capability, LinuxCapabilities, LinuxDeviceCgroup, LinuxIdMappingBuilder, LinuxNamespace,
    LinuxNamespaceType, LinuxResources, Mount, PosixRlimitBuilder, PosixRlimitType, Process, Root,
    Spec, User,
};
use std::path::PathBuf;

/// The `ociVersion` written: crun's (runc 1.1 writes "1.0.2-dev"); every 1.x runtime reads it.
const OCI_VERSION: &str = "1.0.0";

/// The default config.json, as `crun spec` (or `crun spec --rootless`) writes it; the rootless
/// one maps the calling user and group to root.
pub fn default_spec(rootless: bool) -> Spec {
    let mut spec = Spec::default();
    spec.set_version(OCI_VERSION.into())
        .set_process(Some(process()))
        .set_root(Some(root()))
        .set_hostname(Some("strata".into()))
        .set_mounts(Some(mounts(rootless)))
        .set_annotations(None)
        .set_linux(Some(linux(rootless)));
    spec
}

fn process() -> Process {
    let caps: oci_spec::runtime::Capabilities = [
        Capability::AuditWrite,
        Capability::Kill,
        Capability::NetBindService,
    ]
    .into_iter()
    .collect();
    let mut c = LinuxCapabilities::default();
    c.set_bounding(Some(caps.clone()))
        .set_effective(Some(caps.clone()))
        .set_inheritable(Some(Default::default()))
        .set_permitted(Some(caps.clone()))
        .set_ambient(Some(caps));

    // These two have no setters; their builders cannot fail with every field given.
    let nofile = PosixRlimitBuilder::default()
        .typ(PosixRlimitType::RlimitNofile)
        .hard(1024u64)
        .soft(1024u64)
        .build()
        .unwrap_or_default();

    let mut p = Process::default();
    p.set_terminal(Some(true))
        .set_user(User::default())
        .set_args(Some(vec!["sh".into()]))
        .set_env(Some(vec![
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            "TERM=xterm".into(),
        ]))
        .set_cwd("/".into())
        .set_capabilities(Some(c))
        .set_rlimits(Some(vec![nofile]))
        .set_no_new_privileges(Some(true));
    p
}

fn root() -> Root {
    let mut r = Root::default();
    r.set_path("rootfs".into()).set_readonly(Some(true));
    r
}

fn mount(destination: &str, typ: &str, source: &str, options: &[&str]) -> Mount {
    let mut m = Mount::default();
    m.set_destination(destination.into())
        .set_typ(Some(typ.into()))
        .set_source(Some(PathBuf::from(source)))
        .set_options(if options.is_empty() {
            None
        } else {
            Some(options.iter().map(|o| o.to_string()).collect())
        });
    m
}

fn mounts(rootless: bool) -> Vec<Mount> {
    let pts: &[&str] = if rootless {
        &[
            "nosuid",
            "noexec",
            "newinstance",
            "ptmxmode=0666",
            "mode=0620",
        ]
    } else {
        &[
            "nosuid",
            "noexec",
            "newinstance",
            "ptmxmode=0666",
            "mode=0620",
            "gid=5",
        ]
    };
    vec![
        mount("/proc", "proc", "proc", &[]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount("/dev/pts", "devpts", "devpts", pts),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        ),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        ),
    ]
}

fn linux(rootless: bool) -> oci_spec::runtime::Linux {
    use LinuxNamespaceType::*;
    let kinds: &[LinuxNamespaceType] = if rootless {
        &[Pid, Network, Ipc, Uts, User, Mount]
    } else {
        &[Pid, Network, Ipc, Uts, Mount]
    };
    let namespaces = kinds
        .iter()
        .map(|&t| {
            let mut ns = LinuxNamespace::default();
            ns.set_typ(t);
            ns
        })
        .collect();

    let mut deny_all = LinuxDeviceCgroup::default();
    deny_all.set_allow(false).set_access(Some("rwm".into()));
    let mut resources = LinuxResources::default();
    resources.set_devices(Some(vec![deny_all]));

    let mut l = oci_spec::runtime::Linux::default();
    l.set_resources(Some(resources))
        .set_namespaces(Some(namespaces))
        .set_masked_paths(Some(
            [
                "/proc/acpi",
                "/proc/asound",
                "/proc/kcore",
                "/proc/keys",
                "/proc/latency_stats",
                "/proc/timer_list",
                "/proc/timer_stats",
                "/proc/sched_debug",
                "/sys/firmware",
                "/proc/scsi",
            ]
            .map(String::from)
            .to_vec(),
        ))
        .set_readonly_paths(Some(
            [
                "/proc/bus",
                "/proc/fs",
                "/proc/irq",
                "/proc/sys",
                "/proc/sysrq-trigger",
            ]
            .map(String::from)
            .to_vec(),
        ));
    if rootless {
        let map = |host_id: u32| {
            vec![LinuxIdMappingBuilder::default()
                .container_id(0u32)
                .host_id(host_id)
                .size(1u32)
                .build()
                .unwrap_or_default()]
        };
        l.set_uid_mappings(Some(map(nix::unistd::geteuid().as_raw())))
            .set_gid_mappings(Some(map(nix::unistd::getegid().as_raw())));
    }
    l
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// `crun spec` in a temporary directory, if crun is installed.
    fn crun_spec(rootless: bool) -> Option<Value> {
        let dir = std::env::temp_dir().join(format!(
            "strata-crun-spec-{}-{rootless}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).ok()?;
        let mut cmd = std::process::Command::new("crun");
        cmd.arg("spec").current_dir(&dir);
        if rootless {
            cmd.arg("--rootless");
        }
        let ok = cmd.status().ok()?.success();
        let text = std::fs::read_to_string(dir.join("config.json")).ok();
        let _ = std::fs::remove_dir_all(&dir);
        serde_json::from_str(&text.filter(|_| ok)?).ok()
    }

    /// What crun writes: by running it, else the copy captured from crun 1.8.1.
    fn reference(rootless: bool) -> Value {
        crun_spec(rootless).unwrap_or_else(|| {
            let text = if rootless {
                include_str!("testdata/crun-spec-rootless.json")
            } else {
                include_str!("testdata/crun-spec.json")
            };
            serde_json::from_str(text).unwrap()
        })
    }

    /// Capability lists are sets (and a HashSet in oci-spec): compared sorted.
    fn sort_caps(v: &mut Value) {
        if let Some(Value::Object(caps)) = v.pointer_mut("/process/capabilities") {
            for list in caps.values_mut() {
                if let Value::Array(a) = list {
                    a.sort_by_key(|c| c.to_string());
                }
            }
        }
    }

    fn ours(rootless: bool) -> Value {
        let spec = default_spec(rootless);
        let text = serde_json::to_string_pretty(&spec).unwrap();
        // Round trip: what we write reads back as the same spec.
        let back: Spec = serde_json::from_str(&text).unwrap();
        assert_eq!(back, spec);
        let mut v: Value = serde_json::from_str(&text).unwrap();
        sort_caps(&mut v);
        v
    }

    fn same_as_crun(rootless: bool) {
        let mut want = reference(rootless);
        sort_caps(&mut want);
        let mut got = ours(rootless);
        assert_eq!(got["hostname"], "strata");
        // The only differences from crun: the hostname, and the mappings crun leaves to run time.
        got["hostname"] = want["hostname"].clone();
        if rootless {
            let linux = got["linux"].as_object_mut().unwrap();
            let uid = linux.remove("uidMappings").unwrap();
            let gid = linux.remove("gidMappings").unwrap();
            let euid = nix::unistd::geteuid().as_raw();
            assert_eq!(
                uid,
                serde_json::json!([{"containerID": 0, "hostID": euid, "size": 1}])
            );
            assert_eq!(gid[0]["hostID"], nix::unistd::getegid().as_raw());
        }
        for key in [
            "ociVersion",
            "process",
            "root",
            "hostname",
            "mounts",
            "linux",
        ] {
            assert_eq!(got[key], want[key], "{key}");
        }
        assert_eq!(got, want);
    }

    #[test]
    fn default_is_crun_spec() {
        same_as_crun(false);
    }

    #[test]
    fn rootless_is_crun_spec_rootless_with_mappings() {
        same_as_crun(true);
        let v = ours(true);
        let ns: Vec<&str> = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(ns, ["pid", "network", "ipc", "uts", "user", "mount"]);
        assert!(!ns.contains(&"cgroup"));
    }

    #[test]
    fn runc_differs_only_in_hostname_and_version() {
        let mut runc: Value =
            serde_json::from_str(include_str!("testdata/runc-spec.json")).unwrap();
        let mut got = ours(false);
        sort_caps(&mut runc);
        assert_eq!(runc["ociVersion"], "1.0.2-dev");
        got["ociVersion"] = runc["ociVersion"].clone();
        got["hostname"] = runc["hostname"].clone();
        // runc omits the empty inheritable set.
        got["process"]["capabilities"]
            .as_object_mut()
            .unwrap()
            .remove("inheritable");
        assert_eq!(got, runc);
    }
}
