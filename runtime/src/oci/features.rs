//! `strata features`: the OCI features document (runtime-spec features.md), what `runc features`
//! prints, for what strata implements.
//!
//! Written with `serde_json::json!` rather than oci-spec's `Features`, which serializes every
//! unset field as `null` and its annotations (a HashMap) in random order.

use crate::capabilities;
use libseccomp::{ScmpAction, ScmpArch, ScmpFilterContext, ScmpVersion};
use serde_json::{json, Value};
use std::str::FromStr;

pub use super::bundle::LAYERS_ANNOTATION;
/// What the features document says of the layers annotation.
const LAYERS_DOC: &str = "colon-separated layer directories, top first (relative to the bundle \
                          or absolute): the container's rootfs is their stack, with root.path \
                          as its upper directory, instead of root.path alone";

const HOOKS: &[&str] = &[
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
];

/// The mount(2) flags and propagation types a mount's `options` may name (runc's names).
const MOUNT_OPTIONS: &[&str] = &[
    "ro",
    "rw",
    "suid",
    "nosuid",
    "dev",
    "nodev",
    "exec",
    "noexec",
    "sync",
    "async",
    "dirsync",
    "remount",
    "mand",
    "nomand",
    "atime",
    "noatime",
    "diratime",
    "nodiratime",
    "relatime",
    "norelatime",
    "strictatime",
    "nostrictatime",
    "bind",
    "rbind",
    "private",
    "rprivate",
    "shared",
    "rshared",
    "slave",
    "rslave",
    "unbindable",
    "runbindable",
];

const NAMESPACES: &[&str] = &["cgroup", "ipc", "mount", "network", "pid", "user", "uts"];

/// The actions `seccomp` compiles (not SCMP_ACT_NOTIFY: no seccomp agents).
const SECCOMP_ACTIONS: &[&str] = &[
    "SCMP_ACT_ALLOW",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_LOG",
    "SCMP_ACT_TRACE",
    "SCMP_ACT_TRAP",
];

const SECCOMP_OPERATORS: &[&str] = &[
    "SCMP_CMP_EQ",
    "SCMP_CMP_GE",
    "SCMP_CMP_GT",
    "SCMP_CMP_LE",
    "SCMP_CMP_LT",
    "SCMP_CMP_MASKED_EQ",
    "SCMP_CMP_NE",
];

/// The filter flags `seccomp` accepts in a profile's `flags`.
const SECCOMP_FLAGS: &[&str] = &[
    "SECCOMP_FILTER_FLAG_TSYNC",
    "SECCOMP_FILTER_FLAG_LOG",
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
];

/// The architecture names the libseccomp crate knows; [`seccomp_archs`] keeps those the
/// installed libseccomp can add to a filter.
const SECCOMP_ARCHS: &[&str] = &[
    "SCMP_ARCH_AARCH64",
    "SCMP_ARCH_ARM",
    "SCMP_ARCH_LOONGARCH64",
    "SCMP_ARCH_M68K",
    "SCMP_ARCH_MIPS",
    "SCMP_ARCH_MIPS64",
    "SCMP_ARCH_MIPS64N32",
    "SCMP_ARCH_MIPSEL",
    "SCMP_ARCH_MIPSEL64",
    "SCMP_ARCH_MIPSEL64N32",
    "SCMP_ARCH_PARISC",
    "SCMP_ARCH_PARISC64",
    "SCMP_ARCH_PPC",
    "SCMP_ARCH_PPC64",
    "SCMP_ARCH_PPC64LE",
    "SCMP_ARCH_RISCV64",
    "SCMP_ARCH_S390",
    "SCMP_ARCH_S390X",
    "SCMP_ARCH_SH",
    "SCMP_ARCH_SHEB",
    "SCMP_ARCH_X32",
    "SCMP_ARCH_X86",
    "SCMP_ARCH_X86_64",
];

/// The architectures a profile's `architectures` may name on this host: those the installed
/// libseccomp adds to a filter (2.5 knows no LoongArch, M68K nor SuperH; and an architecture of
/// the other byte order cannot join the native one, so x86_64 lists no s390x).
fn seccomp_archs() -> Vec<&'static str> {
    SECCOMP_ARCHS
        .iter()
        .copied()
        .filter(|name| {
            let Ok(arch) = ScmpArch::from_str(name) else {
                return false;
            };
            let Ok(mut ctx) = ScmpFilterContext::new(ScmpAction::Allow) else {
                return false;
            };
            ctx.is_arch_present(arch).unwrap_or(false) || ctx.add_arch(arch).is_ok()
        })
        .collect()
}

/// Every capability strata knows, `CAP_` prefixed, in number order.
fn capability_names() -> Vec<&'static str> {
    (0..).map_while(capabilities::name).collect()
}

fn document() -> Value {
    let mut annotations = serde_json::Map::new();
    annotations.insert(LAYERS_ANNOTATION.into(), LAYERS_DOC.into());
    annotations.insert(
        "org.strata.version".into(),
        env!("CARGO_PKG_VERSION").into(),
    );
    if let Ok(v) = ScmpVersion::current() {
        annotations.insert(
            "io.github.seccomp.libseccomp.version".into(),
            format!("{}.{}.{}", v.major, v.minor, v.micro).into(),
        );
    }
    json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.2.0",
        "hooks": HOOKS,
        "mountOptions": MOUNT_OPTIONS,
        "linux": {
            "namespaces": NAMESPACES,
            "capabilities": capability_names(),
            "cgroup": {
                "v1": true,
                "v2": true,
                "systemd": false,
                "systemdUser": false,
            },
            "seccomp": {
                "enabled": true,
                "actions": SECCOMP_ACTIONS,
                "operators": SECCOMP_OPERATORS,
                "archs": seccomp_archs(),
                "knownFlags": SECCOMP_FLAGS,
            },
            "apparmor": { "enabled": false },
            "selinux": { "enabled": false },
            "intelRdt": { "enabled": false },
        },
        "annotations": annotations,
    })
}

/// The features document, pretty-printed as `runc features` prints it.
pub fn features_json() -> String {
    // A Value always serializes (its keys are strings).
    serde_json::to_string_pretty(&document()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::Features;

    fn strings(v: &Value) -> Vec<&str> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect()
    }

    #[test]
    fn valid_document_with_the_keys() {
        let text = features_json();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["ociVersionMin"], "1.0.0");
        assert_eq!(v["ociVersionMax"], "1.2.0");
        assert_eq!(strings(&v["hooks"]), HOOKS);
        assert!(strings(&v["mountOptions"]).contains(&"rbind"));
        let linux = &v["linux"];
        assert_eq!(
            strings(&linux["namespaces"]),
            ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"]
        );
        let caps = strings(&linux["capabilities"]);
        assert_eq!(caps.first(), Some(&"CAP_CHOWN"));
        assert!(caps.contains(&"CAP_SYS_ADMIN") && caps.contains(&"CAP_CHECKPOINT_RESTORE"));
        assert_eq!(
            linux["cgroup"],
            json!({"v1": true, "v2": true, "systemd": false, "systemdUser": false})
        );
        let seccomp = &linux["seccomp"];
        assert_eq!(seccomp["enabled"], true);
        assert!(!strings(&seccomp["actions"]).contains(&"SCMP_ACT_NOTIFY"));
        assert_eq!(strings(&seccomp["operators"]).len(), 7);
        let archs = strings(&seccomp["archs"]);
        assert!(archs.contains(&"SCMP_ARCH_X86_64") && archs.contains(&"SCMP_ARCH_AARCH64"));
        for off in ["apparmor", "selinux", "intelRdt"] {
            assert_eq!(linux[off]["enabled"], false, "{off}");
        }
        assert!(v["annotations"][LAYERS_ANNOTATION]
            .as_str()
            .unwrap()
            .contains("colon-separated"));

        // oci-spec's typed reading (actions, archs and namespaces are enums there) accepts it.
        let f: Features = serde_json::from_str(&text).unwrap();
        assert_eq!(f.oci_version_max(), "1.2.0");
        let s = f.linux().as_ref().unwrap().seccomp().as_ref().unwrap();
        assert_eq!(s.archs().as_ref().unwrap().len(), archs.len());
    }

    /// The names runc uses for what we share: a client comparing the two sees the same words.
    #[test]
    fn names_are_runcs() {
        let runc: Value =
            serde_json::from_str(include_str!("testdata/runc-features.json")).unwrap();
        let ours: Value = serde_json::from_str(&features_json()).unwrap();
        let runc_opts = strings(&runc["mountOptions"]);
        for o in strings(&ours["mountOptions"]) {
            assert!(runc_opts.contains(&o), "{o}");
        }
        assert_eq!(ours["hooks"], runc["hooks"]);
        assert_eq!(ours["linux"]["namespaces"], runc["linux"]["namespaces"]);
        assert_eq!(ours["linux"]["capabilities"], runc["linux"]["capabilities"]);
        assert_eq!(
            ours["linux"]["seccomp"]["operators"],
            runc["linux"]["seccomp"]["operators"]
        );
        let runc_actions = strings(&runc["linux"]["seccomp"]["actions"]);
        for a in strings(&ours["linux"]["seccomp"]["actions"]) {
            assert!(runc_actions.contains(&a), "{a}");
        }
    }
}
