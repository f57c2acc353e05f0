//! A bundle's `config.json` as a [`Config`]: the OCI form runs through the same process
//! sequence as `strata run --layer …`, with the settings only a bundle has in
//! [`OciSettings`].
//!
//! The root filesystem: `root.path` (relative to the bundle) is bind-mounted as the root, as
//! runc does; with the annotation `org.strata.layers` (layer directories, top first, joined by
//! ':', relative to the bundle or absolute) the root is that layer stack instead, with
//! `root.path` as its upper directory (writes land there), mounted by the driver that
//! `org.strata.driver` names (auto by default, as `strata run --driver`).

use crate::capabilities::CapSet;
use crate::config::{Config, Driver, IoMax, Limits, Net};
use crate::error::ConfigError;
use crate::rootfs::OciRootfs;
use crate::seccomp::Filter;
use crate::ulimits::Ulimit;
use nix::sched::CloneFlags;
use oci_spec::runtime::{Hooks, LinuxIdMapping, LinuxNamespaceType, Spec};
use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The annotation that makes the root filesystem a layer stack.
pub const LAYERS_ANNOTATION: &str = "org.strata.layers";
/// The annotation that chooses its driver (auto, fuse, kernel).
pub const DRIVER_ANNOTATION: &str = "org.strata.driver";

/// What a bundle asks for beyond [`Config`].
#[derive(Clone, Debug)]
pub struct OciSettings {
    pub id: String,
    /// The bundle directory, canonical.
    pub bundle: PathBuf,
    pub annotations: HashMap<String, String>,
    /// Namespaces to create (CLONE_NEW* flags; mount is always among them).
    pub create: CloneFlags,
    /// Namespaces to join (setns) instead, with the file naming each.
    pub join: Vec<(CloneFlags, PathBuf)>,
    /// uid/gid maps of a new user namespace (container, host, size).
    pub uid_map: Vec<(u32, u32, u32)>,
    pub gid_map: Vec<(u32, u32, u32)>,
    pub additional_gids: Vec<u32>,
    pub umask: Option<u32>,
    pub oom_score_adj: Option<i32>,
    pub hooks: Option<Hooks>,
    pub rootfs: OciRootfs,
    /// The bundle's root is a plain directory, bind-mounted (no layer stack).
    pub bind_root: bool,
    /// `--preserve-fds N`: descriptors 3..3+N stay open in the command.
    pub preserve_fds: u32,
    /// process.capabilities' other sets (the bounding set is `Config::caps`).
    pub caps: ProcessCaps,
    /// `linux.cgroupsPath`, checked: the cgroup's place under each hierarchy's mount
    /// (absolute: from the mount; relative: under `strata/`). `None`: `strata/<id>`.
    pub cgroups_path: Option<PathBuf>,
}

/// The effective, permitted, inheritable and ambient sets of `process.capabilities`.
#[derive(Clone, Copy, Debug)]
pub struct ProcessCaps {
    pub effective: CapSet,
    pub permitted: CapSet,
    pub inheritable: CapSet,
    pub ambient: CapSet,
}

fn conflict(msg: impl Into<String>) -> ConfigError {
    ConfigError::Conflict(msg.into())
}

/// Reads `<bundle>/config.json`.
pub fn load(bundle: &Path) -> Result<Spec, ConfigError> {
    let file = bundle.join("config.json");
    let text = std::fs::read_to_string(&file).map_err(|e| ConfigError::Path {
        what: "bundle config",
        path: file.clone(),
        reason: crate::error::io_text(&e),
    })?;
    let spec: Spec = serde_json::from_str(&text).map_err(|e| ConfigError::Path {
        what: "bundle config",
        path: file.clone(),
        reason: e.to_string(),
    })?;
    // The spec's valid-values rule: a version this runtime does not read is an error.
    let v = spec.version();
    let number = |p: &str| {
        let digits = p.split(['-', '+']).next().unwrap_or("");
        !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
    };
    let parts: Vec<&str> = v.split('.').collect();
    if parts.len() < 2 || parts[0] != "1" || !parts[1..].iter().all(|p| number(p)) {
        return Err(ConfigError::Path {
            what: "bundle config",
            path: file,
            reason: format!("ociVersion {v:?} is not a runtime spec version 1.x"),
        });
    }
    Ok(spec)
}

fn ns_flag(t: LinuxNamespaceType) -> Option<CloneFlags> {
    Some(match t {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::Time => return None,
    })
}

fn maps(m: Option<&Vec<LinuxIdMapping>>) -> Vec<(u32, u32, u32)> {
    m.map(|v| {
        v.iter()
            .map(|m| (m.container_id(), m.host_id(), m.size()))
            .collect()
    })
    .unwrap_or_default()
}

fn bundle_path(bundle: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        bundle.join(p)
    }
}

fn canonical_dir(what: &'static str, p: &Path) -> Result<PathBuf, ConfigError> {
    let err = |reason: String| ConfigError::Path {
        what,
        path: p.to_path_buf(),
        reason,
    };
    let c = std::fs::canonicalize(p).map_err(|e| err(crate::error::io_text(&e)))?;
    if !c.is_dir() {
        return Err(err("not a directory".into()));
    }
    Ok(c)
}

/// The cgroup limits of `linux.resources` (cgroup v1 semantics of the spec, written as v2's).
fn limits(spec: &Spec) -> Limits {
    let mut l = Limits::default();
    let Some(r) = spec.linux().as_ref().and_then(|l| l.resources().as_ref()) else {
        return l;
    };
    if let Some(m) = r.memory() {
        l.oci.memory_reservation = m.reservation().filter(|v| *v > 0).map(|v| v as u64);
        l.oci.memory_swappiness = m.swappiness().filter(|v| *v <= 100);
        l.oci.oom_kill_disable = m.disable_oom_killer().unwrap_or(false);
        l.memory = m.limit().filter(|v| *v > 0).map(|v| v as u64);
        if l.memory.is_some() {
            l.memory_swap = match m.swap() {
                Some(v) if v > 0 => Some(Some((v as u64).max(l.memory.unwrap_or(0)))),
                Some(-1) => Some(None),
                _ => None,
            };
        }
    }
    if let Some(c) = r.cpu() {
        let o = &mut l.oci;
        o.cpu_period = c.period().filter(|p| *p > 0);
        o.cpu_shares = c.shares().filter(|s| *s >= 2);
        o.cpu_rt_period = c.realtime_period().filter(|p| *p > 0);
        o.cpu_rt_runtime = c.realtime_runtime().filter(|r| *r != 0);
        o.cpuset_cpus = c.cpus().clone().filter(|s| !s.is_empty());
        o.cpuset_mems = c.mems().clone().filter(|s| !s.is_empty());
        if let (Some(q), p) = (c.quota().filter(|q| *q > 0), c.period()) {
            let period = p.filter(|p| *p > 0).unwrap_or(100_000);
            l.cpus = Some(q as f64 / period as f64);
        }
        // The conversion runc and crun use from cpu.shares (2..262144) to cpu.weight.
        if let Some(s) = c.shares().filter(|s| *s >= 2) {
            l.cpu_weight = Some((1 + ((s.min(262_144) - 2) * 9999) / 262_142).clamp(1, 10_000));
        }
    }
    if let Some(p) = r.pids() {
        if p.limit() > 0 {
            l.pids = Some(p.limit() as u64);
        }
    }
    if let Some(b) = r.block_io() {
        let mut by_dev: Vec<IoMax> = Vec::new();
        let mut add = |list: &Option<Vec<oci_spec::runtime::LinuxThrottleDevice>>, key: &str| {
            for d in list.iter().flatten() {
                let device = format!("{}:{}", d.major(), d.minor());
                let entry = match by_dev.iter_mut().position(|e| e.device == device) {
                    Some(i) => &mut by_dev[i],
                    None => {
                        by_dev.push(IoMax {
                            device,
                            settings: Vec::new(),
                        });
                        let last = by_dev.len() - 1;
                        &mut by_dev[last]
                    }
                };
                entry.settings.push((key.to_string(), d.rate().to_string()));
            }
        };
        add(b.throttle_read_bps_device(), "rbps");
        add(b.throttle_write_bps_device(), "wbps");
        add(b.throttle_read_iops_device(), "riops");
        add(b.throttle_write_iops_device(), "wiops");
        l.io_max = by_dev;
    }
    l
}

/// The [`Config`] of container `id` from the bundle in `bundle`.
pub fn config(id: &str, bundle: &Path) -> Result<Config, ConfigError> {
    let bundle = canonical_dir("bundle", bundle)?;
    let spec = load(&bundle)?;
    config_of(id, &bundle, &spec)
}

/// The [`Config`] of `spec` (`strata exec` changes its process first).
pub fn config_of(id: &str, bundle: &Path, spec: &Spec) -> Result<Config, ConfigError> {
    let bundle = bundle.to_path_buf();
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| conflict("config.json has no process"))?;
    let args: Vec<OsString> = process
        .args()
        .as_ref()
        .map(|a| a.iter().map(OsString::from).collect())
        .unwrap_or_default();
    if args.is_empty() {
        return Err(conflict("config.json: process.args is empty"));
    }
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| conflict("config.json has no root"))?;
    let root_dir = canonical_dir(
        "root.path",
        &bundle_path(&bundle, &root.path().to_string_lossy()),
    )?;
    let read_only = root.readonly().unwrap_or(false);
    let annotations = spec.annotations().clone().unwrap_or_default();

    let (layers, upper, bind_root) = match annotations.get(LAYERS_ANNOTATION) {
        Some(list) => {
            let layers = list
                .split(':')
                .filter(|s| !s.is_empty())
                .map(|l| canonical_dir("layer", &bundle_path(&bundle, l)))
                .collect::<Result<Vec<_>, _>>()?;
            if layers.is_empty() {
                return Err(conflict(format!("{LAYERS_ANNOTATION}: no layer given")));
            }
            (layers, (!read_only).then(|| root_dir.clone()), false)
        }
        None => (vec![root_dir.clone()], None, true),
    };
    let driver = match annotations.get(DRIVER_ANNOTATION) {
        Some(d) => Driver::parse(d)?,
        None => Driver::Auto,
    };

    let linux = spec.linux().as_ref();
    let mut create = CloneFlags::empty();
    let mut join = Vec::new();
    for ns in linux
        .and_then(|l| l.namespaces().as_ref())
        .into_iter()
        .flatten()
    {
        let Some(flag) = ns_flag(ns.typ()) else {
            return Err(conflict("the time namespace is not supported"));
        };
        match ns.path() {
            Some(p) if !p.as_os_str().is_empty() => join.push((flag, p.clone())),
            _ => create |= flag,
        }
    }
    if !create.contains(CloneFlags::CLONE_NEWNS)
        && !join.iter().any(|(f, _)| *f == CloneFlags::CLONE_NEWNS)
    {
        // The root filesystem is built in a mount namespace of the container's own.
        create |= CloneFlags::CLONE_NEWNS;
    }
    let uid_map = maps(linux.and_then(|l| l.uid_mappings().as_ref()));
    let gid_map = maps(linux.and_then(|l| l.gid_mappings().as_ref()));
    if create.contains(CloneFlags::CLONE_NEWUSER)
        && (uid_map.is_empty() || gid_map.is_empty())
        && nix::unistd::geteuid().is_root()
    {
        return Err(conflict(
            "a new user namespace needs linux.uidMappings and linux.gidMappings",
        ));
    }
    let hostname = spec.hostname().clone().filter(|h| !h.is_empty());
    if let Some(h) = &hostname {
        if !create.contains(CloneFlags::CLONE_NEWUTS)
            && !join.iter().any(|(f, _)| *f == CloneFlags::CLONE_NEWUTS)
        {
            return Err(conflict(
                "config.json sets a hostname without a new uts namespace",
            ));
        }
        crate::config::check_hostname(h)?;
    }

    let user = process.user();
    let mut env = Vec::new();
    for e in process.env().iter().flatten() {
        let (k, v) = e.split_once('=').unwrap_or((e.as_str(), ""));
        if k.is_empty() || e.contains('\0') {
            return Err(conflict(format!(
                "config.json: bad process.env entry '{e}'"
            )));
        }
        env.retain(|(n, _): &(String, String)| n != k);
        env.push((k.to_string(), v.to_string()));
    }
    let cwd = process.cwd();
    if !cwd.is_absolute() {
        return Err(conflict(format!(
            "config.json: process.cwd '{}' is not absolute",
            cwd.display()
        )));
    }
    let pcaps = process.capabilities().as_ref();
    let set_of = |set: Option<&oci_spec::runtime::Capabilities>| -> Result<CapSet, ConfigError> {
        let names: Vec<String> = set
            .map(|set| {
                set.iter()
                    .filter_map(|c| serde_json::to_value(c).ok()?.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        CapSet::from_names(names.iter().map(String::as_str))
            .map_err(|n| conflict(format!("config.json: unknown capability {n}")))
    };
    let caps = set_of(pcaps.and_then(|c| c.bounding().as_ref()))?;
    let process_caps = ProcessCaps {
        effective: set_of(pcaps.and_then(|c| c.effective().as_ref()))?,
        permitted: set_of(pcaps.and_then(|c| c.permitted().as_ref()))?,
        inheritable: set_of(pcaps.and_then(|c| c.inheritable().as_ref()))?,
        ambient: set_of(pcaps.and_then(|c| c.ambient().as_ref()))?,
    };
    let ulimits = process
        .rlimits()
        .iter()
        .flatten()
        .map(|r| {
            let kind = serde_json::to_value(r.typ())
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            Ulimit::from_oci(&kind, r.soft(), r.hard())
                .map_err(|e| conflict(format!("config.json: process.rlimits: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let seccomp = match linux.and_then(|l| l.seccomp().as_ref()) {
        None => None,
        Some(s) => {
            let text = serde_json::to_string(s).map_err(|e| conflict(e.to_string()))?;
            Some(
                Filter::from_json(&text, &caps.numbers(), "of config.json")
                    .map_err(|e| conflict(format!("config.json: linux.seccomp: {e}")))?,
            )
        }
    };
    let rootfs = OciRootfs::from_spec(spec, &bundle)?;
    let cgroups_path = match linux.and_then(|l| l.cgroups_path().as_ref()) {
        None => None,
        Some(p) if p.as_os_str().is_empty() => None,
        // systemd's slice:prefix:name form (--systemd-cgroup): strata manages cgroupfs only.
        Some(p) if p.to_string_lossy().contains(':') => {
            log::debug!(
                "linux.cgroupsPath {} is systemd's form: using strata/{id}",
                p.display()
            );
            None
        }
        Some(p) => {
            if p.components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(conflict(format!(
                    "config.json: linux.cgroupsPath {} leaves the cgroup hierarchy (..)",
                    p.display()
                )));
            }
            let rel: PathBuf = p
                .components()
                .filter(|c| matches!(c, std::path::Component::Normal(_)))
                .collect();
            if rel.as_os_str().is_empty() {
                return Err(conflict(format!(
                    "config.json: linux.cgroupsPath {} is the hierarchy's root",
                    p.display()
                )));
            }
            Some(if p.is_absolute() {
                rel
            } else {
                Path::new("strata").join(rel)
            })
        }
    };

    let oci = OciSettings {
        id: id.to_string(),
        bundle: bundle.clone(),
        annotations,
        create,
        join,
        uid_map,
        gid_map,
        additional_gids: user.additional_gids().clone().unwrap_or_default(),
        umask: user.umask(),
        oom_score_adj: process.oom_score_adj(),
        hooks: spec.hooks().clone(),
        rootfs,
        bind_root,
        preserve_fds: 0,
        caps: process_caps,
        cgroups_path,
    };
    Ok(Config {
        layers,
        upper,
        driver,
        read_only,
        limits: limits(spec),
        // Hybrid hosts: the v1 controllers, as runc uses them there.
        cgroup_v1_fallback: true,
        hostname,
        env,
        workdir: cwd.clone(),
        user: Some((user.uid(), user.gid())),
        net: if create.contains(CloneFlags::CLONE_NEWNET) {
            Net::None
        } else {
            Net::Host
        },
        binds: Vec::new(),
        tmpfs: Vec::new(),
        caps,
        tty: process.terminal().unwrap_or(false),
        ulimits,
        no_new_privs: process.no_new_privileges().unwrap_or(false),
        seccomp,
        command: args,
        oci: Some(Box::new(oci)),
    })
}
