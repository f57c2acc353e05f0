//! The validated description of one container run, and the parsers of the option values.
//!
//! Everything that can be checked before anything is created is checked here, so bad input
//! fails with one line and exit status 2 and leaves nothing behind.

use crate::capabilities::CapSet;
use crate::error::ConfigError;
use crate::seccomp::{self, Filter};
use crate::ulimits::Ulimit;
use std::ffi::OsString;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

/// Which implementation mounts the layer stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    /// The kernel's overlay when this process may mount it, else stratafs.
    Auto,
    /// stratafs (FUSE).
    Fuse,
    /// The kernel's overlayfs, mounted with mount(2).
    Kernel,
}

impl Driver {
    pub fn parse(s: &str) -> Result<Driver, ConfigError> {
        match s {
            "auto" => Ok(Driver::Auto),
            "fuse" => Ok(Driver::Fuse),
            "kernel" => Ok(Driver::Kernel),
            _ => Err(bad("--driver", s, "expected auto, fuse or kernel")),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Net {
    /// A new network namespace with only `lo`, up.
    None,
    /// The host's network namespace.
    Host,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bind {
    /// Canonical host path.
    pub source: PathBuf,
    /// Absolute, normalized path in the container.
    pub target: PathBuf,
    pub read_only: bool,
}

/// One `io.max` line: `MAJ:MIN key=value...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IoMax {
    pub device: String,
    /// (key, value) with key in rbps, wbps, riops, wiops and value a number or `max`.
    pub settings: Vec<(String, String)>,
}

impl IoMax {
    pub fn line(&self) -> String {
        let mut s = self.device.clone();
        for (k, v) in &self.settings {
            s.push_str(&format!(" {k}={v}"));
        }
        s
    }
}

/// Resource limits; `None` leaves the kernel's default.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Limits {
    /// memory.max, bytes.
    pub memory: Option<u64>,
    /// Memory plus swap, bytes (as Docker's --memory-swap); `Some(None)` for unlimited swap.
    pub memory_swap: Option<Option<u64>>,
    /// CPUs worth of time per period (cpu.max).
    pub cpus: Option<f64>,
    /// cpu.weight, 1..=10000.
    pub cpu_weight: Option<u64>,
    /// pids.max.
    pub pids: Option<u64>,
    pub io_max: Vec<IoMax>,
    /// The rest come from an OCI bundle's `linux.resources` only.
    pub oci: OciLimits,
}

/// `linux.resources` settings beyond `strata run`'s options, kept as the spec gives them
/// (cgroup v1 semantics): v1 hosts write them as they are, v2 where it has an equivalent.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OciLimits {
    /// cpu.cfs_period_us (v2: cpu.max's period).
    pub cpu_period: Option<u64>,
    /// cpu.shares as given (v1 writes it exactly; v2 uses `cpu_weight`).
    pub cpu_shares: Option<u64>,
    pub cpu_rt_period: Option<u64>,
    pub cpu_rt_runtime: Option<i64>,
    pub cpuset_cpus: Option<String>,
    pub cpuset_mems: Option<String>,
    /// memory.soft_limit_in_bytes (v2: memory.low).
    pub memory_reservation: Option<u64>,
    /// memory.swappiness (v1 only).
    pub memory_swappiness: Option<u64>,
    /// memory.oom_control (v1 only).
    pub oom_kill_disable: bool,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }

    /// The cgroup controllers these limits need, with the option that needs each.
    pub fn controllers(&self) -> Vec<(&'static str, &'static str)> {
        let mut out = Vec::new();
        let o = &self.oci;
        if self.memory.is_some() {
            out.push(("memory", "--memory"));
        } else if self.memory_swap.is_some() {
            out.push(("memory", "--memory-swap"));
        } else if o.memory_reservation.is_some()
            || o.memory_swappiness.is_some()
            || o.oom_kill_disable
        {
            out.push(("memory", "linux.resources.memory"));
        }
        if self.cpus.is_some() {
            out.push(("cpu", "--cpus"));
        } else if self.cpu_weight.is_some() {
            out.push(("cpu", "--cpu-weight"));
        } else if o.cpu_period.is_some() || o.cpu_rt_period.is_some() || o.cpu_rt_runtime.is_some()
        {
            out.push(("cpu", "linux.resources.cpu"));
        }
        if o.cpuset_cpus.is_some() || o.cpuset_mems.is_some() {
            out.push(("cpuset", "linux.resources.cpu"));
        }
        if self.pids.is_some() {
            out.push(("pids", "--pids"));
        }
        if !self.io_max.is_empty() {
            out.push(("io", "--io-max"));
        }
        out
    }
}

/// Everything `strata run` was asked to do, validated.
#[derive(Clone, Debug)]
pub struct Config {
    /// Canonical layer directories, top first.
    pub layers: Vec<PathBuf>,
    pub upper: Option<PathBuf>,
    pub driver: Driver,
    pub read_only: bool,
    pub limits: Limits,
    pub cgroup_v1_fallback: bool,
    pub hostname: Option<String>,
    /// The command's whole environment.
    pub env: Vec<(String, String)>,
    pub workdir: PathBuf,
    pub user: Option<(u32, u32)>,
    pub net: Net,
    pub binds: Vec<Bind>,
    pub tmpfs: Vec<PathBuf>,
    /// The capability bounding set of the command.
    pub caps: CapSet,
    /// -t: a terminal of the container's own, relayed to the caller's.
    pub tty: bool,
    /// `--ulimit`s of the command.
    pub ulimits: Vec<Ulimit>,
    /// no_new_privs on the command (the default; `--security-opt no-new-privileges=false`).
    pub no_new_privs: bool,
    /// The compiled seccomp filter; `None` when unconfined.
    pub seccomp: Option<Filter>,
    pub command: Vec<OsString>,
    /// The OCI form's settings (`strata create`/`run` with a bundle); `None` for `strata run`.
    pub oci: Option<Box<crate::oci::bundle::OciSettings>>,
}

/// The option values as given on the command line (see `main`).
#[derive(Clone, Debug, Default)]
pub struct RawArgs {
    pub layers: Vec<PathBuf>,
    pub upper: Option<PathBuf>,
    pub driver: String,
    pub read_only: bool,
    pub memory: Option<String>,
    pub memory_swap: Option<String>,
    pub cpus: Option<String>,
    pub cpu_weight: Option<String>,
    pub pids: Option<String>,
    pub io_max: Vec<String>,
    pub cgroup_v1_fallback: bool,
    pub hostname: Option<String>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub net: String,
    pub binds: Vec<String>,
    pub tmpfs: Vec<String>,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub tty: bool,
    pub seccomp: Option<String>,
    pub security_opt: Vec<String>,
    pub ulimit: Vec<String>,
    pub command: Vec<OsString>,
}

/// `--security-opt KEY=VALUE` (Docker's option), one field per key known.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecurityOpts {
    /// `seccomp=FILE|unconfined`.
    pub seccomp: Option<String>,
    /// `no-new-privileges[=true|false]` (Docker also spells it with ':').
    pub no_new_privs: Option<bool>,
}

pub fn parse_security_opts(opts: &[String]) -> Result<SecurityOpts, ConfigError> {
    let mut out = SecurityOpts::default();
    for o in opts {
        let (key, value) = o
            .split_once('=')
            .or_else(|| o.split_once(':'))
            .unwrap_or((o.as_str(), ""));
        match key {
            "no-new-privileges" => {
                out.no_new_privs = Some(match value {
                    "" | "true" => true,
                    "false" => false,
                    _ => {
                        return Err(bad(
                            "--security-opt",
                            o,
                            "expected no-new-privileges[=true|false]",
                        ))
                    }
                })
            }
            "seccomp" if !value.is_empty() => out.seccomp = Some(value.to_string()),
            "seccomp" => {
                return Err(bad(
                    "--security-opt",
                    o,
                    "expected seccomp=FILE or seccomp=unconfined",
                ))
            }
            _ => {
                return Err(ConfigError::Conflict(format!(
                    "unknown --security-opt '{o}' (known: seccomp=FILE|unconfined, no-new-privileges[=true|false])"
                )))
            }
        }
    }
    Ok(out)
}

/// The default PATH of the container's environment.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Longest hostname the kernel accepts (HOST_NAME_MAX).
pub const HOSTNAME_MAX: usize = 64;

fn bad(option: &'static str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::BadValue {
        option,
        value: value.to_string(),
        reason: reason.into(),
    }
}

impl Config {
    pub fn from_args(raw: RawArgs) -> Result<Config, ConfigError> {
        if raw.layers.is_empty() {
            return Err(ConfigError::Conflict(
                "at least one --layer DIR is needed".into(),
            ));
        }
        let layers = raw
            .layers
            .iter()
            .map(|l| existing_dir("layer", l))
            .collect::<Result<Vec<_>, _>>()?;
        let upper = raw
            .upper
            .as_ref()
            .map(|u| existing_dir("upper", u))
            .transpose()?;
        if let Some(u) = &upper {
            if let Some(l) = layers.iter().find(|l| u.starts_with(l) || l.starts_with(u)) {
                return Err(ConfigError::Conflict(format!(
                    "--upper {} overlaps the layer {}",
                    u.display(),
                    l.display()
                )));
            }
            if raw.read_only {
                return Err(ConfigError::Conflict(
                    "--read-only and --upper do not go together".into(),
                ));
            }
        }
        let driver = Driver::parse(&raw.driver)?;

        let memory = raw
            .memory
            .as_deref()
            .map(|s| parse_size(s).map_err(|r| bad("--memory", s, r)))
            .transpose()?;
        let memory_swap = match raw.memory_swap.as_deref() {
            None => None,
            Some("-1") | Some("max") => Some(None),
            Some(s) => {
                let v = parse_size(s).map_err(|r| bad("--memory-swap", s, r))?;
                match memory {
                    None => {
                        return Err(ConfigError::Conflict(
                            "--memory-swap needs --memory (it is the total of memory and swap)"
                                .into(),
                        ))
                    }
                    Some(m) if v < m => {
                        return Err(bad(
                            "--memory-swap",
                            s,
                            "smaller than --memory (it is the total of memory and swap)",
                        ))
                    }
                    _ => Some(Some(v)),
                }
            }
        };
        let cpus = raw
            .cpus
            .as_deref()
            .map(|s| parse_cpus(s).map_err(|r| bad("--cpus", s, r)))
            .transpose()?;
        let cpu_weight = raw
            .cpu_weight
            .as_deref()
            .map(|s| parse_count(s, 1, 10_000).map_err(|r| bad("--cpu-weight", s, r)))
            .transpose()?;
        let pids = raw
            .pids
            .as_deref()
            .map(|s| parse_count(s, 1, i64::MAX as u64).map_err(|r| bad("--pids", s, r)))
            .transpose()?;
        let io_max = raw
            .io_max
            .iter()
            .map(|s| parse_io_max(s).map_err(|r| bad("--io-max", s, r)))
            .collect::<Result<Vec<_>, _>>()?;
        let limits = Limits {
            memory,
            memory_swap,
            cpus,
            cpu_weight,
            pids,
            io_max,
            oci: Default::default(),
        };

        let hostname = raw
            .hostname
            .as_deref()
            .map(|h| check_hostname(h).map(|()| h.to_string()))
            .transpose()?;

        let mut env: Vec<(String, String)> = vec![
            ("PATH".into(), DEFAULT_PATH.into()),
            ("HOME".into(), "/".into()),
        ];
        let user = raw.user.as_deref().map(parse_user).transpose()?;
        if user.is_none_or(|(uid, _)| uid == 0) {
            env[1].1 = "/root".into();
        }
        if nix::unistd::isatty(std::io::stdin()).unwrap_or(false) {
            if let Ok(term) = std::env::var("TERM") {
                env.push(("TERM".into(), term));
            }
        }
        for e in &raw.env {
            let (k, v) = match e.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => match std::env::var(e) {
                    Ok(v) => (e.clone(), v),
                    Err(_) => continue,
                },
            };
            if k.is_empty() || k.contains('\0') || v.contains('\0') {
                return Err(bad("--env", e, "expected NAME=VALUE"));
            }
            env.retain(|(n, _)| *n != k);
            env.push((k, v));
        }

        let workdir = match raw.workdir.as_deref() {
            None => PathBuf::from("/"),
            Some(w) => container_path("--workdir", w)?,
        };
        let net = match raw.net.as_str() {
            "none" => Net::None,
            "host" => Net::Host,
            other => return Err(bad("--net", other, "expected none or host")),
        };
        let binds = raw
            .binds
            .iter()
            .map(|b| parse_bind(b))
            .collect::<Result<Vec<_>, _>>()?;
        let tmpfs = raw
            .tmpfs
            .iter()
            .map(|t| container_path("--tmpfs", t))
            .collect::<Result<Vec<_>, _>>()?;
        let caps = CapSet::with_changes(&raw.cap_add, &raw.cap_drop).map_err(|name| {
            let option = if raw.cap_add.contains(&name) {
                "--cap-add"
            } else {
                "--cap-drop"
            };
            bad(option, &name, "unknown capability")
        })?;
        let ulimits = raw
            .ulimit
            .iter()
            .map(|u| Ulimit::parse(u).map_err(|r| bad("--ulimit", u, r)))
            .collect::<Result<Vec<_>, _>>()?;
        if raw.command.is_empty() {
            return Err(ConfigError::Conflict(
                "no command given (strata run [OPTIONS] -- CMD [ARGS...])".into(),
            ));
        }
        // Last: compiling a profile is the dearest check.
        let security = parse_security_opts(&raw.security_opt)?;
        let seccomp = match (raw.seccomp.as_deref(), security.seccomp.as_deref()) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Conflict(
                    "--seccomp and --security-opt seccomp= do not go together".into(),
                ))
            }
            (Some(""), None) => return Err(bad("--seccomp", "", "expected FILE or unconfined")),
            (Some(v), None) | (None, Some(v)) => seccomp::Choice::parse(v),
            (None, None) => seccomp::Choice::Default,
        }
        .filter(&caps.numbers())?;
        Ok(Config {
            layers,
            upper,
            driver,
            read_only: raw.read_only,
            limits,
            cgroup_v1_fallback: raw.cgroup_v1_fallback,
            hostname,
            env,
            workdir,
            user,
            net,
            binds,
            tmpfs,
            caps,
            tty: raw.tty,
            ulimits,
            no_new_privs: security.no_new_privs.unwrap_or(true),
            seccomp,
            command: raw.command,
            oci: None,
        })
    }
}

fn existing_dir(what: &'static str, path: &Path) -> Result<PathBuf, ConfigError> {
    let err = |reason: String| ConfigError::Path {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let canon = std::fs::canonicalize(path).map_err(|e| err(crate::error::io_text(&e)))?;
    if !canon.is_dir() {
        return Err(err("not a directory".into()));
    }
    if canon.as_os_str().as_encoded_bytes().contains(&b',') {
        return Err(err(
            "a ',' in the path is not supported by overlay mount options".into(),
        ));
    }
    Ok(canon)
}

/// A size such as `64M`, `1G`, `512k`, `1.5G` or `4096` (bytes). Multiples are binary (1K =
/// 1024), as in Docker; `B`, `KB`/`KiB`... are accepted too.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.starts_with('-') {
        return Err("must be positive".into());
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    if num.is_empty() {
        return Err("not a size (use a number with K, M, G or T, e.g. 64M)".into());
    }
    let mult: u64 = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(format!("unknown size suffix '{suffix}' (use K, M, G or T)")),
    };
    let value: f64 = num
        .parse()
        .map_err(|_| "not a size (use a number with K, M, G or T, e.g. 64M)".to_string())?;
    let bytes = value * mult as f64;
    if !bytes.is_finite() || bytes >= 9.2e18 {
        return Err("too large".into());
    }
    let bytes = bytes as u64;
    if bytes == 0 {
        return Err("must be greater than zero".into());
    }
    Ok(bytes)
}

/// A positive number of CPUs; at least 0.01 (cpu.max's smallest quota is 1 ms per 100 ms).
pub fn parse_cpus(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| "not a number of CPUs (e.g. 0.5, 2)".to_string())?;
    if !v.is_finite() || v <= 0.0 {
        return Err("must be greater than zero".into());
    }
    if v < 0.01 {
        return Err("must be at least 0.01".into());
    }
    if v > 10_000.0 {
        return Err("too large".into());
    }
    Ok(v)
}

/// An integer within `min..=max`.
pub fn parse_count(s: &str, min: u64, max: u64) -> Result<u64, String> {
    let t = s.trim();
    if t.starts_with('-') {
        return Err("must be positive".into());
    }
    let v: u64 = t.parse().map_err(|_| "not a whole number".to_string())?;
    if v < min {
        return Err(if min == 1 {
            "must be greater than zero".into()
        } else {
            format!("must be at least {min}")
        });
    }
    if v > max {
        return Err(format!("must be at most {max}"));
    }
    Ok(v)
}

/// `MAJ:MIN key=value...` or `/dev/BLOCKDEV key=value...`, keys rbps, wbps (sizes, e.g. 1M),
/// riops, wiops (counts); each value may be `max`.
pub fn parse_io_max(s: &str) -> Result<IoMax, String> {
    let mut words = s.split_whitespace();
    let dev = words
        .next()
        .ok_or("expected 'MAJ:MIN rbps=... wbps=...' or '/dev/DISK wbps=...'")?;
    let device = if dev.starts_with('/') {
        let md =
            std::fs::metadata(dev).map_err(|e| format!("{dev}: {}", crate::error::io_text(&e)))?;
        if !md.file_type().is_block_device() {
            return Err(format!("{dev} is not a block device"));
        }
        let rdev = md.rdev();
        format!(
            "{}:{}",
            nix::sys::stat::major(rdev),
            nix::sys::stat::minor(rdev)
        )
    } else {
        let (maj, min) = dev
            .split_once(':')
            .ok_or("expected the device as MAJ:MIN or a /dev path")?;
        if maj.parse::<u32>().is_err() || min.parse::<u32>().is_err() {
            return Err("expected the device as MAJ:MIN or a /dev path".into());
        }
        dev.to_string()
    };
    let mut settings = Vec::new();
    for w in words {
        let (k, v) = w
            .split_once('=')
            .ok_or(format!("expected key=value, got '{w}'"))?;
        let value = match (k, v) {
            (_, "max") => "max".to_string(),
            ("rbps" | "wbps", v) => parse_size(v).map_err(|r| format!("{k}: {r}"))?.to_string(),
            ("riops" | "wiops", v) => parse_count(v, 1, u64::MAX)
                .map_err(|r| format!("{k}: {r}"))?
                .to_string(),
            _ => return Err(format!("unknown key '{k}' (use rbps, wbps, riops, wiops)")),
        };
        settings.push((k.to_string(), value));
    }
    if settings.is_empty() {
        return Err("no limit given (rbps=, wbps=, riops=, wiops=)".into());
    }
    Ok(IoMax { device, settings })
}

/// A hostname: 1 to 64 characters among letters, digits, '-' and '.'.
pub fn check_hostname(h: &str) -> Result<(), ConfigError> {
    if h.is_empty() {
        return Err(bad("--hostname", h, "empty"));
    }
    if h.len() > HOSTNAME_MAX {
        return Err(bad(
            "--hostname",
            h,
            format!("longer than {HOSTNAME_MAX} characters"),
        ));
    }
    if !h
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        || h.starts_with(['-', '.'])
    {
        return Err(bad(
            "--hostname",
            h,
            "only letters, digits, '-' and '.' (not first) are allowed",
        ));
    }
    Ok(())
}

/// `UID` or `UID:GID` (numbers; GID defaults to UID).
pub fn parse_user(s: &str) -> Result<(u32, u32), ConfigError> {
    let num = |v: &str| {
        v.parse::<u32>()
            .ok()
            .filter(|&n| n != u32::MAX)
            .ok_or_else(|| bad("--user", s, "expected UID or UID:GID (numbers)"))
    };
    match s.split_once(':') {
        None => {
            let u = num(s)?;
            Ok((u, u))
        }
        Some((u, g)) => Ok((num(u)?, num(g)?)),
    }
}

/// An absolute path in the container, normalized; `..` is refused.
pub fn container_path(option: &'static str, s: &str) -> Result<PathBuf, ConfigError> {
    let p = Path::new(s);
    if !p.is_absolute() {
        return Err(bad(option, s, "must be an absolute path"));
    }
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir => return Err(bad(option, s, "'..' is not allowed")),
            Component::Prefix(_) => return Err(bad(option, s, "not a path")),
        }
    }
    Ok(out)
}

/// `SRC:DST[:ro|rw]`.
pub fn parse_bind(s: &str) -> Result<Bind, ConfigError> {
    let parts: Vec<&str> = s.split(':').collect();
    let (src, dst, ro) = match parts.as_slice() {
        [src, dst] => (*src, *dst, false),
        [src, dst, "ro"] => (*src, *dst, true),
        [src, dst, "rw"] => (*src, *dst, false),
        _ => return Err(bad("--bind", s, "expected SRC:DST or SRC:DST:ro")),
    };
    let source = std::fs::canonicalize(src).map_err(|e| ConfigError::Path {
        what: "bind source",
        path: PathBuf::from(src),
        reason: crate::error::io_text(&e),
    })?;
    let target = container_path("--bind", dst)?;
    if target == Path::new("/") {
        return Err(bad("--bind", s, "cannot bind over /"));
    }
    Ok(Bind {
        source,
        target,
        read_only: ro,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert!(parse_size("12XB")
            .unwrap_err()
            .contains("unknown size suffix 'XB'"));
        assert!(parse_size("0").unwrap_err().contains("greater than zero"));
        assert!(parse_size("-5M").unwrap_err().contains("positive"));
        assert!(parse_size("M").is_err());
        assert!(parse_size("1..2M").is_err());
        assert!(parse_size("99999999T").is_err());
    }

    #[test]
    fn cpus_and_counts() {
        assert_eq!(parse_cpus("0.5"), Ok(0.5));
        assert!(parse_cpus("0").is_err());
        assert!(parse_cpus("-1").is_err());
        assert!(parse_cpus("nan").is_err());
        assert!(parse_cpus("0.001").is_err());
        assert_eq!(parse_count("20", 1, 100), Ok(20));
        assert!(parse_count("0", 1, 100).is_err());
        assert!(parse_count("-3", 1, 100).is_err());
        assert!(parse_count("101", 1, 100).is_err());
    }

    #[test]
    fn io_max() {
        let io = parse_io_max("8:0 rbps=1M wiops=100").unwrap();
        assert_eq!(io.line(), "8:0 rbps=1048576 wiops=100");
        assert!(parse_io_max("8:0").is_err());
        assert!(parse_io_max("8:0 foo=1").is_err());
        assert!(parse_io_max("sda wbps=1").is_err());
        assert_eq!(parse_io_max("7:1 wbps=max").unwrap().line(), "7:1 wbps=max");
    }

    #[test]
    fn hostnames() {
        assert!(check_hostname("box-1.example").is_ok());
        assert!(check_hostname(&"a".repeat(64)).is_ok());
        assert!(check_hostname(&"a".repeat(65)).is_err());
        assert!(check_hostname("").is_err());
        assert!(check_hostname("a b").is_err());
        assert!(check_hostname("-a").is_err());
    }

    #[test]
    fn users_and_paths() {
        assert_eq!(parse_user("1000").unwrap(), (1000, 1000));
        assert_eq!(parse_user("1000:100").unwrap(), (1000, 100));
        assert!(parse_user("bob").is_err());
        assert_eq!(
            container_path("--workdir", "/a/./b/").unwrap(),
            PathBuf::from("/a/b")
        );
        assert!(container_path("--workdir", "a").is_err());
        assert!(container_path("--workdir", "/a/../b").is_err());
    }

    #[test]
    fn security_opts() {
        let o =
            |v: &[&str]| parse_security_opts(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(o(&[]).unwrap(), SecurityOpts::default());
        assert_eq!(
            o(&["seccomp=unconfined"]).unwrap().seccomp.as_deref(),
            Some("unconfined")
        );
        assert_eq!(
            o(&["seccomp=/a=b.json"]).unwrap().seccomp.as_deref(),
            Some("/a=b.json")
        );
        assert!(o(&["seccomp="]).is_err());
        assert_eq!(
            o(&["apparmor=unconfined"]).unwrap_err().to_string(),
            "unknown --security-opt 'apparmor=unconfined' (known: seccomp=FILE|unconfined, no-new-privileges[=true|false])"
        );
    }

    #[test]
    fn binds() {
        let b = parse_bind("/tmp:/mnt/x:ro").unwrap();
        assert!(b.read_only);
        assert_eq!(b.target, PathBuf::from("/mnt/x"));
        assert!(parse_bind("/tmp").is_err());
        assert!(parse_bind("/tmp:/x:rx").is_err());
        assert!(parse_bind("/nonexistent-strata:/x").is_err());
        assert!(parse_bind("/tmp:/").is_err());
    }
}
