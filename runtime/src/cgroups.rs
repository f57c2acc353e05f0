//! cgroup v2 (and, on request, v1) control of the container's resources.
//!
//! Where the cgroup goes:
//! * as root: `<v2 mount>/strata/<id>`; the controllers the limits need are enabled in
//!   `cgroup.subtree_control` of the hierarchy root and of `strata` (cgroup v2 allows
//!   controllers only top-down, and `strata` holds no process, as the no-internal-process rule
//!   wants);
//! * as another user: `<own cgroup>/strata-<id>` when the caller's cgroup is delegated
//!   (writable); otherwise no cgroup, and limits fail with one line saying why.
//!
//! A requested controller that the v2 hierarchy lacks (cgroup v1 or hybrid hosts) is an error
//! naming the controller, unless `--cgroup-v1-fallback` asks for the v1 controllers
//! (`<v1 mount of the controller>/strata/<id>` each). With no limits at all the cgroup is still
//! created when possible: it lets the runtime kill everything left at exit (`cgroup.kill`).
//!
//! The container's first process joins the cgroup itself (writes 0 to `cgroup.procs`) before it
//! creates its cgroup namespace, so everything the container runs is born inside.
//! As root the cgroup also carries the device allowlist ([`devices`]): an eBPF program on
//! cgroup v2, the `devices` controller on v1 (a v1 host, or `--cgroup-v1-fallback`).
//!
//! [`Cgroup::destroy`] kills what is left (`cgroup.kill`) and removes the directory.

use crate::config::Limits;
use crate::devices;
use crate::error::CgroupError;
use crate::sys;
use log::{debug, info};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// cpu.max period, microseconds.
const CPU_PERIOD: u64 = 100_000;

#[derive(Debug)]
enum Kind {
    V2,
    /// (controller, directory) for each v1 controller in use.
    V1(Vec<(&'static str, PathBuf)>),
}

/// The container's cgroup.
#[derive(Debug)]
pub struct Cgroup {
    kind: Kind,
    /// The leaf directory (v2), or the first v1 directory.
    path: PathBuf,
    removed: bool,
}

fn io_err(what: impl Into<String>, path: &Path, err: io::Error) -> CgroupError {
    CgroupError::Io {
        what: what.into(),
        path: path.to_path_buf(),
        err,
    }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    debug!("cgroup: {} <- {value}", path.display());
    fs::write(path, value).map_err(|e| io_err(format!("writing '{value}' to"), path, e))
}

/// Mount points from /proc/self/mountinfo: (mount point, fstype, super options).
fn mounts() -> Vec<(PathBuf, String, String)> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let mountpoint = pre.split(' ').nth(4)?;
            let mut post = post.split(' ');
            let fstype = post.next()?.to_string();
            let _source = post.next();
            let opts = post.next().unwrap_or("").to_string();
            Some((PathBuf::from(unescape(mountpoint)), fstype, opts))
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space...).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let digits = std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("x");
            if let Ok(v) = u8::from_str_radix(digits, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup v2 mount point, if any (the first one, normally /sys/fs/cgroup or, on hybrid
/// hosts, /sys/fs/cgroup/unified).
pub fn v2_mount() -> Option<PathBuf> {
    mounts()
        .into_iter()
        .find(|(_, t, _)| t == "cgroup2")
        .map(|(p, _, _)| p)
}

/// True when /sys/fs/cgroup is a pure cgroup v2 hierarchy.
pub fn is_pure_v2() -> bool {
    v2_mount().is_some_and(|p| p == Path::new("/sys/fs/cgroup"))
}

/// The calling process's cgroup in the hierarchy `hier` ("" for v2, else a v1 controller).
fn own_cgroup(controller: Option<&str>) -> Option<String> {
    let text = fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|l| {
        let mut it = l.splitn(3, ':');
        let (_id, ctrls, path) = (it.next()?, it.next()?, it.next()?);
        match controller {
            None if ctrls.is_empty() => Some(path.to_string()),
            Some(c) if ctrls.split(',').any(|x| x == c) => Some(path.to_string()),
            _ => None,
        }
    })
}

fn join_rel(base: &Path, rel: &str) -> PathBuf {
    let rel = rel.trim_start_matches('/');
    if rel.is_empty() {
        base.to_path_buf()
    } else {
        base.join(rel)
    }
}

fn available(dir: &Path) -> Vec<String> {
    fs::read_to_string(dir.join("cgroup.controllers"))
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect()
}

fn writable(dir: &Path) -> bool {
    nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).is_ok()
        && nix::unistd::access(&dir.join("cgroup.procs"), nix::unistd::AccessFlags::W_OK).is_ok()
}

fn mkdir(path: &Path) -> Result<(), CgroupError> {
    match fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err("creating", path, e)),
    }
}

/// A new v1 cpuset cgroup starts with no cpus and mems, and no process may join it then:
/// each level from the mount down to `place` takes its parent's where it has none.
fn inherit_cpuset(mount: &Path, place: &Path) -> Result<(), CgroupError> {
    let mut dir = mount.to_path_buf();
    for c in place.components() {
        let parent = dir.clone();
        dir.push(c);
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let mine = fs::read_to_string(dir.join(file)).unwrap_or_default();
            if mine.trim().is_empty() {
                let theirs = fs::read_to_string(parent.join(file))
                    .map_err(|e| io_err("reading", &parent.join(file), e))?;
                write(&dir.join(file), theirs.trim())?;
            }
        }
    }
    Ok(())
}

/// The cpu quota (None: no limit) and period, microseconds, when either is asked for
/// (`--cpus`, or an OCI bundle's quota or period).
fn cpu_quota_period(l: &Limits) -> Option<(Option<u64>, u64)> {
    let period = l.oci.cpu_period.unwrap_or(CPU_PERIOD);
    let quota = l.cpus.map(|c| (c * period as f64).round() as u64);
    (quota.is_some() || l.oci.cpu_period.is_some()).then_some((quota, period))
}

/// An OCI bundle's cpuset cpus and mems (the same files in v1 and v2).
fn write_cpuset(dir: &Path, o: &crate::config::OciLimits) -> Result<(), CgroupError> {
    for (file, v) in [
        ("cpuset.cpus", &o.cpuset_cpus),
        ("cpuset.mems", &o.cpuset_mems),
    ] {
        if let Some(v) = v {
            write(&dir.join(file), v)?;
            info!("cgroup: {file} = {v}");
        }
    }
    Ok(())
}

/// Enables `controllers` in `dir/cgroup.subtree_control` (those not enabled yet).
fn enable(dir: &Path, controllers: &[&str]) -> Result<(), CgroupError> {
    let file = dir.join("cgroup.subtree_control");
    let on = fs::read_to_string(&file).unwrap_or_default();
    let on: Vec<&str> = on.split_whitespace().collect();
    let missing: Vec<String> = controllers
        .iter()
        .filter(|c| !on.contains(c))
        .map(|c| format!("+{c}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    fs::write(&file, missing.join(" ")).map_err(|e| {
        let mut what = format!("enabling {} in", missing.join(" "));
        if e.raw_os_error() == Some(libc::EBUSY) {
            what.push_str(" (the cgroup holds processes: cgroup v2 allows controllers only for cgroups without processes; start strata from a cgroup of its own)");
        }
        io_err(what, &file, e)
    })
}

impl Cgroup {
    /// Creates the container's cgroup and writes the limits. `Ok(None)`: no cgroup could be
    /// created and none was needed.
    pub fn create(
        id: &str,
        limits: &Limits,
        v1_fallback: bool,
    ) -> Result<Option<Cgroup>, CgroupError> {
        Self::create_at(id, None, limits, v1_fallback)
    }

    /// As [`create`](Self::create); `place` (as root): the cgroup's path under each
    /// hierarchy's mount instead of `strata/<id>` (an OCI bundle's `linux.cgroupsPath`).
    /// Missing parents are made (and left, as runc leaves them).
    pub fn create_at(
        id: &str,
        place: Option<&Path>,
        limits: &Limits,
        v1_fallback: bool,
    ) -> Result<Option<Cgroup>, CgroupError> {
        let default_place = Path::new("strata").join(id);
        let place = place.unwrap_or(&default_place);
        let needed = limits.controllers();
        let root = nix::unistd::geteuid().is_root();
        let v2 = v2_mount();

        // Where a v2 cgroup may go, and what it offers.
        let base = v2.as_ref().and_then(|m| {
            if root {
                Some(m.join(place.parent().unwrap_or(Path::new(""))))
            } else {
                let own = join_rel(m, &own_cgroup(None)?);
                writable(&own).then_some(own)
            }
        });
        let offered = match (&v2, &base) {
            (Some(m), _) if root => available(m),
            (_, Some(b)) => available(b),
            _ => Vec::new(),
        };
        let missing: Vec<(&str, &str)> = needed
            .iter()
            .copied()
            .filter(|(c, _)| !offered.iter().any(|o| o == c))
            .collect();

        if let Some(&(controller, option)) = missing.first() {
            if v1_fallback {
                return Self::create_v1(place, limits).map(Some);
            }
            let reason = match (&v2, &base) {
                (None, _) => "no cgroup v2 hierarchy is mounted".to_string(),
                (Some(m), None) => {
                    let own = join_rel(m, &own_cgroup(None).unwrap_or_default());
                    return Err(CgroupError::NotDelegated { path: own });
                }
                (Some(m), Some(b)) => {
                    let hybrid = m != Path::new("/sys/fs/cgroup");
                    format!(
                        "not available in the cgroup v2 hierarchy at {}{} (add --cgroup-v1-fallback to use the cgroup v1 controller)",
                        if root { m.display() } else { b.display() },
                        if hybrid { ", a hybrid v1/v2 host" } else { "" }
                    )
                }
            };
            return Err(CgroupError::ControllerUnavailable {
                controller,
                option,
                reason,
            });
        }
        let (Some(mount), Some(base)) = (v2, base) else {
            if root {
                // A cgroup v1 host: the devices controller still gives the allowlist.
                return Self::create_v1(place, limits).map(Some);
            }
            info!("cgroup: none (no delegated cgroup v2 hierarchy); no limits were asked for");
            return Ok(None);
        };
        let ctrls: Vec<&str> = needed.iter().map(|(c, _)| *c).collect();
        if root {
            // Top-down: each level enables the controllers for the next (no process lives
            // in these intermediate cgroups, as the no-internal-process rule wants).
            let mut dir = mount.clone();
            enable(&dir, &ctrls)?;
            for c in place.parent().unwrap_or(Path::new("")).components() {
                dir.push(c);
                mkdir(&dir)?;
                enable(&dir, &ctrls)?;
            }
        } else {
            enable(&base, &ctrls)?;
        }
        let leaf = if root {
            mount.join(place)
        } else {
            base.join(format!("strata-{id}"))
        };
        mkdir(&leaf)?;
        let mut cg = Cgroup {
            kind: Kind::V2,
            path: leaf,
            removed: false,
        };
        info!("cgroup: {}", cg.path.display());
        let limited = cg.write_v2_limits(limits).and_then(|()| {
            // As root; a user's container has no device access beyond its user namespace's.
            if root {
                cg.attach_device_filter()
            } else {
                Ok(())
            }
        });
        if let Err(e) = limited {
            let _ = cg.destroy();
            return Err(e);
        }
        Ok(Some(cg))
    }

    /// The device allowlist as an eBPF program on the v2 cgroup.
    fn attach_device_filter(&self) -> Result<(), CgroupError> {
        let errno_err = |what: &str, e: nix::errno::Errno| {
            io_err(what, &self.path, io::Error::from_raw_os_error(e as i32))
        };
        let prog = sys::load_device_program(&devices::program(devices::DEFAULT))
            .map_err(|e| errno_err("loading the device filter (eBPF) for", e))?;
        let dir = fs::File::open(&self.path).map_err(|e| io_err("opening", &self.path, e))?;
        sys::attach_device_program(&dir, &prog)
            .map_err(|e| errno_err("attaching the device filter (eBPF) to", e))?;
        info!("cgroup: device filter attached (eBPF)");
        Ok(())
    }

    fn write_v2_limits(&self, l: &Limits) -> Result<(), CgroupError> {
        let p = &self.path;
        if let Some(m) = l.memory {
            write(&p.join("memory.max"), &m.to_string())?;
            info!("cgroup: memory.max = {m}");
        }
        if let Some(swap) = l.memory_swap {
            let v = match (swap, l.memory) {
                (Some(total), Some(m)) => (total - m).to_string(),
                _ => "max".to_string(),
            };
            write(&p.join("memory.swap.max"), &v)?;
            info!("cgroup: memory.swap.max = {v}");
        }
        let o = &l.oci;
        if let Some((quota, period)) = cpu_quota_period(l) {
            let quota = quota.map_or_else(|| "max".to_string(), |q| q.to_string());
            let v = format!("{quota} {period}");
            write(&p.join("cpu.max"), &v)?;
            info!("cgroup: cpu.max = {v}");
        }
        write_cpuset(p, o)?;
        if let Some(r) = o.memory_reservation {
            write(&p.join("memory.low"), &r.to_string())?;
            info!("cgroup: memory.low = {r}");
        }
        if o.memory_swappiness.is_some() || o.oom_kill_disable || o.cpu_rt_period.is_some() {
            debug!("cgroup v2 has no swappiness, OOM-killer switch or realtime period: not set");
        }
        if let Some(w) = l.cpu_weight {
            write(&p.join("cpu.weight"), &w.to_string())?;
            info!("cgroup: cpu.weight = {w}");
        }
        if let Some(n) = l.pids {
            write(&p.join("pids.max"), &n.to_string())?;
            info!("cgroup: pids.max = {n}");
        }
        for io in &l.io_max {
            write(&p.join("io.max"), &io.line())?;
            info!("cgroup: io.max += {}", io.line());
        }
        Ok(())
    }

    fn create_v1(place: &Path, l: &Limits) -> Result<Cgroup, CgroupError> {
        let mounts = mounts();
        let mut dirs: Vec<(&'static str, PathBuf)> = Vec::new();
        let mut cg = Cgroup {
            kind: Kind::V1(Vec::new()),
            path: PathBuf::new(),
            removed: false,
        };
        let mut wanted = l.controllers();
        let devices = nix::unistd::geteuid().is_root();
        if devices {
            wanted.push(("devices", "the device allowlist"));
        }
        for (controller, option) in wanted {
            let v1name = if controller == "io" {
                "blkio"
            } else {
                controller
            };
            let Some((mnt, _, _)) = mounts
                .iter()
                .find(|(_, t, o)| t == "cgroup" && o.split(',').any(|x| x == v1name))
            else {
                if controller == "devices" {
                    log::warn!("no device cgroup on this host: device nodes are kept out by nodev mounts and the lack of CAP_MKNOD only");
                    continue;
                }
                return Err(CgroupError::ControllerUnavailable {
                    controller,
                    option,
                    reason: format!(
                        "neither cgroup v2 nor a cgroup v1 '{v1name}' hierarchy offers it"
                    ),
                });
            };
            let leaf = mnt.join(place);
            let res = place
                .parent()
                .map(|p| mnt.join(p))
                .map_or(Ok(()), |b| {
                    fs::create_dir_all(&b).map_err(|e| io_err("creating", &b, e))
                })
                .and_then(|()| mkdir(&leaf))
                .and_then(|()| {
                    if v1name == "cpuset" {
                        inherit_cpuset(mnt, place)
                    } else {
                        Ok(())
                    }
                });
            dirs.push((v1name, leaf.clone()));
            cg.kind = Kind::V1(dirs.clone());
            if let Err(e) = res {
                let _ = cg.destroy();
                return Err(e);
            }
            info!("cgroup (v1 fallback): {}", leaf.display());
        }
        cg.path = dirs.first().map(|d| d.1.clone()).unwrap_or_default();
        if let Err(e) = cg.write_v1_limits(l) {
            let _ = cg.destroy();
            return Err(e);
        }
        Ok(cg)
    }

    fn v1_dir(&self, controller: &str) -> Option<&Path> {
        match &self.kind {
            Kind::V1(d) => d
                .iter()
                .find(|(c, _)| *c == controller)
                .map(|(_, p)| p.as_path()),
            Kind::V2 => None,
        }
    }

    fn write_v1_limits(&self, l: &Limits) -> Result<(), CgroupError> {
        if let Some(d) = self.v1_dir("devices") {
            write(&d.join("devices.deny"), "a")?;
            for rule in devices::DEFAULT {
                write(&d.join("devices.allow"), &rule.v1_line())?;
            }
            info!("cgroup (v1 fallback): device allowlist");
        }
        let o = &l.oci;
        if let Some(d) = self.v1_dir("memory") {
            if let Some(m) = l.memory {
                write(&d.join("memory.limit_in_bytes"), &m.to_string())?;
            }
            if let Some(r) = o.memory_reservation {
                write(&d.join("memory.soft_limit_in_bytes"), &r.to_string())?;
            }
            if let Some(v) = o.memory_swappiness {
                write(&d.join("memory.swappiness"), &v.to_string())?;
            }
            if o.oom_kill_disable {
                write(&d.join("memory.oom_control"), "1")?;
            }
            if let Some(swap) = l.memory_swap {
                let v = swap.map(|t| t.to_string()).unwrap_or_else(|| "-1".into());
                write(&d.join("memory.memsw.limit_in_bytes"), &v)?;
            }
        }
        if let Some(d) = self.v1_dir("cpu") {
            if let Some((quota, period)) = cpu_quota_period(l) {
                write(&d.join("cpu.cfs_period_us"), &period.to_string())?;
                if let Some(q) = quota {
                    write(&d.join("cpu.cfs_quota_us"), &q.to_string())?;
                }
            }
            // The period before the runtime: the kernel checks runtime <= period.
            if let Some(p) = o.cpu_rt_period {
                write(&d.join("cpu.rt_period_us"), &p.to_string())?;
            }
            if let Some(r) = o.cpu_rt_runtime {
                write(&d.join("cpu.rt_runtime_us"), &r.to_string())?;
            }
            if let Some(s) = o.cpu_shares {
                write(&d.join("cpu.shares"), &s.to_string())?;
            } else if let Some(w) = l.cpu_weight {
                // The conversion runc and systemd use between cpu.weight and cpu.shares.
                let shares = 2 + ((w - 1) * 262_142) / 9_999;
                write(&d.join("cpu.shares"), &shares.to_string())?;
            }
        }
        if let Some(d) = self.v1_dir("cpuset") {
            write_cpuset(d, o)?;
        }
        if let Some(d) = self.v1_dir("pids") {
            if let Some(n) = l.pids {
                write(&d.join("pids.max"), &n.to_string())?;
            }
        }
        if let Some(d) = self.v1_dir("blkio") {
            for io in &l.io_max {
                for (k, v) in &io.settings {
                    let file = match k.as_str() {
                        "rbps" => "blkio.throttle.read_bps_device",
                        "wbps" => "blkio.throttle.write_bps_device",
                        "riops" => "blkio.throttle.read_iops_device",
                        _ => "blkio.throttle.write_iops_device",
                    };
                    let v = if v == "max" { "0" } else { v };
                    write(&d.join(file), &format!("{} {v}", io.device))?;
                }
            }
        }
        Ok(())
    }

    /// The cgroup directory (v2 leaf, or the first v1 directory).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every directory of the cgroup (one per hierarchy in use).
    pub fn paths(&self) -> Vec<PathBuf> {
        match &self.kind {
            Kind::V2 => vec![self.path.clone()],
            Kind::V1(d) => d.iter().map(|(_, p)| p.clone()).collect(),
        }
    }

    /// Whether this is a set of cgroup v1 directories (each move into one waits for an RCU
    /// grace period: see [`attach`](Self::attach)).
    pub fn is_v1(&self) -> bool {
        matches!(self.kind, Kind::V1(_))
    }

    /// Moves process `pid` into the cgroup (from outside: the parent moves init while init
    /// builds the root filesystem, so the grace period a v1 move waits for is not on the
    /// start-up's critical path).
    pub fn attach(&self, pid: i32) -> Result<(), CgroupError> {
        self.write_procs(&pid.to_string())
    }

    /// Moves the calling process into the cgroup.
    pub fn join(&self) -> Result<(), CgroupError> {
        self.write_procs("0")
    }

    /// Writes `pid` to `cgroup.procs` of every directory of the cgroup.
    fn write_procs(&self, pid: &str) -> Result<(), CgroupError> {
        self.paths()
            .iter()
            .try_for_each(|d| write(&d.join("cgroup.procs"), pid))
    }

    /// The `cgroup.procs` files of the calling process's current cgroups (one per hierarchy in
    /// use), opened now: writing 0 to them later (see [`leave`]) takes a process back there,
    /// even from inside a new cgroup namespace (the namespace is checked at open).
    pub fn origin(&self) -> Vec<fs::File> {
        let paths: Vec<PathBuf> = match &self.kind {
            Kind::V2 => v2_mount()
                .zip(own_cgroup(None))
                .map(|(m, rel)| join_rel(&m, &rel).join("cgroup.procs"))
                .into_iter()
                .collect(),
            Kind::V1(dirs) => {
                let mounts = mounts();
                // The device allowlist counts nothing: no need to leave it (and each v1
                // migration waits for an RCU grace period, milliseconds).
                dirs.iter()
                    .filter(|(c, _)| *c != "devices")
                    .filter_map(|(c, _)| {
                        let (m, _, _) = mounts
                            .iter()
                            .find(|(_, t, o)| t == "cgroup" && o.split(',').any(|x| x == *c))?;
                        Some(join_rel(m, &own_cgroup(Some(c))?).join("cgroup.procs"))
                    })
                    .collect()
            }
        };
        paths
            .iter()
            .filter_map(|p| fs::OpenOptions::new().write(true).open(p).ok())
            .collect()
    }

    /// How many processes the OOM killer has killed in the cgroup.
    pub fn oom_kills(&self) -> u64 {
        let (file, key) = match &self.kind {
            Kind::V2 => (self.path.join("memory.events"), "oom_kill"),
            Kind::V1(_) => match self.v1_dir("memory") {
                Some(d) => (d.join("memory.oom_control"), "oom_kill"),
                None => return 0,
            },
        };
        fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == key).then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0)
    }

    /// Kills every process left in the cgroup and removes it.
    pub fn destroy(&mut self) -> Result<(), CgroupError> {
        if self.removed {
            return Ok(());
        }
        for dir in &self.paths() {
            remove_dir(dir)?;
        }
        self.removed = true;
        Ok(())
    }
}

/// Kills every process in the cgroup directory `dir` and removes it (gone already: fine).
pub fn remove_dir(dir: &Path) -> Result<(), CgroupError> {
    if !dir.exists() {
        return Ok(());
    }
    let kill = dir.join("cgroup.kill");
    if kill.exists() {
        let _ = fs::write(&kill, "1");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        let pids: Vec<i32> = procs
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        if pids.is_empty() {
            match fs::remove_dir(dir) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) if Instant::now() > deadline => return Err(io_err("removing", dir, e)),
                Err(_) => {}
            }
        } else {
            for pid in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            if Instant::now() > deadline {
                return Err(io_err(
                    "removing",
                    dir,
                    io::Error::from_raw_os_error(libc::EBUSY),
                ));
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    debug!("cgroup: removed {}", dir.display());
    Ok(())
}

/// The cgroup directories that a container with this id may have left (where
/// [`Cgroup::create`] puts them) and that exist.
pub fn leftovers(id: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for (mount, fstype, opts) in mounts() {
        match fstype.as_str() {
            "cgroup2" => {
                out.push(mount.join("strata").join(id));
                if let Some(own) = own_cgroup(None) {
                    out.push(join_rel(&mount, &own).join(format!("strata-{id}")));
                }
            }
            "cgroup" if !opts.split(',').any(|o| o.starts_with("name=")) => {
                out.push(mount.join("strata").join(id));
            }
            _ => {}
        }
    }
    out.sort();
    out.dedup();
    out.retain(|p| p.is_dir());
    out
}

/// Moves the calling process back to the cgroups opened by [`Cgroup::origin`] (the
/// intermediate process, once the container's init is born, so that it does not count in the
/// container's limits).
pub fn leave(origin: &[fs::File]) {
    use std::io::Write;
    for mut f in origin {
        if let Err(e) = f.write_all(b"0") {
            debug!("cgroup: leaving: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/x\\"), "/x\\");
    }

    #[test]
    fn joins_relative_cgroup_paths() {
        assert_eq!(
            join_rel(Path::new("/sys/fs/cgroup"), "/"),
            PathBuf::from("/sys/fs/cgroup")
        );
        assert_eq!(join_rel(Path::new("/c"), "/a/b"), PathBuf::from("/c/a/b"));
    }
}
