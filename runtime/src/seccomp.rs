//! Seccomp: the system call filter of the command.
//!
//! A profile is the JSON of the OCI runtime spec's `linux.seccomp` (`defaultAction`,
//! `defaultErrnoRet`, `architectures`, `flags`, `syscalls[{names, action, errnoRet, args}]`)
//! with Docker's extensions (`archMap`, `includes`/`excludes` by capability, architecture and
//! kernel version, `name`, `comment`), so both an OCI profile and one written for
//! `docker --security-opt seccomp=FILE` work. Without `--seccomp`, Docker's default profile
//! (`seccomp/default.json`, from moby, Apache-2.0; see `seccomp/README.md`) applies.
//!
//! The profile is evaluated and compiled to BPF by libseccomp in the parent, before anything
//! is created, so a bad profile fails with one line and exit status 2; the command's process
//! only installs the finished program ([`Filter::load`]) just before execve.
//!
//! Syscall names that this libseccomp does not know at all (newer than it) are skipped, as
//! runc and crun do, so that Docker's newest profile still loads; a user profile says which
//! with one warning. Names it knows but that this architecture lacks (`chown32` on x86-64)
//! are left to libseccomp, which ignores them where they do not exist.
//!
//! Cost: libseccomp 2.5 takes about 20 ms of CPU for Docker's profile on x86-64, mostly in
//! generating the BPF for the three architectures (x86-64, x86, x32: about 1.4 ms for x86-64
//! alone). A cache of the compiled program keyed by the profile, the capabilities, the arch,
//! the kernel and libseccomp's version would remove it, at the price of a file that outlives
//! the run.

mod cache;

use crate::error::SeccompError;
use libseccomp::{ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext};
use libseccomp::{ScmpSyscall, ScmpVersion};
use log::{debug, warn};
use nix::errno::Errno;
use serde::Deserialize;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Docker's default profile (moby's profiles/seccomp/default.json, Apache-2.0).
const DEFAULT_PROFILE: &str = include_str!("seccomp/default.json");

/// What `--seccomp` / `--security-opt seccomp=` asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Choice {
    /// Docker's default profile (no option given).
    Default,
    /// No filter.
    Unconfined,
    /// A profile file.
    File(PathBuf),
}

impl Choice {
    pub fn parse(value: &str) -> Choice {
        match value {
            "unconfined" => Choice::Unconfined,
            file => Choice::File(PathBuf::from(file)),
        }
    }

    /// The compiled filter for a command with the bounding set `caps`; `None` if unconfined.
    pub fn filter(&self, caps: &[u32]) -> Result<Option<Filter>, SeccompError> {
        match self {
            Choice::Unconfined => Ok(None),
            Choice::Default => Filter::default_for(caps).map(Some),
            Choice::File(path) => Filter::from_file(path, caps).map(Some),
        }
    }
}

/// A profile as read from JSON.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Profile {
    pub default_action: String,
    pub default_errno_ret: Option<u32>,
    pub architectures: Option<Vec<String>>,
    pub arch_map: Option<Vec<ArchMap>>,
    pub flags: Option<Vec<String>>,
    pub listener_path: Option<String>,
    pub listener_metadata: Option<String>,
    pub syscalls: Option<Vec<Rule>>,
}

/// Docker's `archMap` entry: the sub-architectures filtered along with the native one.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ArchMap {
    pub architecture: String,
    pub sub_architectures: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    pub names: Option<Vec<String>>,
    /// Docker's older single-name form.
    pub name: Option<String>,
    pub action: String,
    pub errno_ret: Option<u32>,
    pub args: Option<Vec<Arg>>,
    pub comment: Option<String>,
    pub includes: Option<Condition>,
    pub excludes: Option<Condition>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Arg {
    pub index: u32,
    pub value: u64,
    #[serde(default)]
    pub value_two: u64,
    pub op: String,
}

/// Docker's `includes` / `excludes`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    pub caps: Option<Vec<String>>,
    pub arches: Option<Vec<String>>,
    pub min_kernel: Option<String>,
}

impl Profile {
    pub fn parse(json: &str) -> Result<Profile, String> {
        serde_json::from_str(json).map_err(|e| format!("bad JSON: {e}"))
    }
}

/// What `includes` and `excludes` are evaluated against.
#[derive(Clone, Debug)]
pub struct Target {
    /// Capability names (`CAP_SYS_ADMIN`...) of the command's bounding set.
    pub caps: Vec<&'static str>,
    pub arch: ScmpArch,
    /// The running kernel's (version, major revision).
    pub kernel: (u32, u32),
}

impl Target {
    /// What of the machine the compiled program depends on (for the cache's key).
    fn machine(&self) -> String {
        format!("{:?} {}.{}", self.arch, self.kernel.0, self.kernel.1)
    }

    /// This host, for a command whose bounding set is `caps` (capability numbers).
    pub fn native(caps: &[u32]) -> Target {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        Target {
            caps: caps.iter().filter_map(|&c| cap_name(c)).collect(),
            arch: ScmpArch::native(),
            kernel: parse_kernel(&release).unwrap_or((0, 0)),
        }
    }
}

use crate::capabilities::name as cap_name;

/// The architecture's name in `includes.arches` / `excludes.arches` (Docker's, from Go's
/// GOARCH: amd64, arm64...).
fn arch_name(arch: ScmpArch) -> &'static str {
    match arch {
        ScmpArch::X86 => "x86",
        ScmpArch::X8664 => "amd64",
        ScmpArch::X32 => "x32",
        ScmpArch::Arm => "arm",
        ScmpArch::Aarch64 => "arm64",
        ScmpArch::Loongarch64 => "loong64",
        ScmpArch::Mips => "mips",
        ScmpArch::Mips64 => "mips64",
        ScmpArch::Mips64N32 => "mips64n32",
        ScmpArch::Mipsel => "mipsel",
        ScmpArch::Mipsel64 => "mipsel64",
        ScmpArch::Mipsel64N32 => "mipsel64n32",
        ScmpArch::Ppc => "ppc",
        ScmpArch::Ppc64 => "ppc64",
        ScmpArch::Ppc64Le => "ppc64le",
        ScmpArch::S390 => "s390",
        ScmpArch::S390X => "s390x",
        ScmpArch::Riscv64 => "riscv64",
        _ => "unknown",
    }
}

/// `"4.8"` or a release such as `"6.1.0-18-amd64"`: (4, 8), (6, 1).
fn parse_kernel(s: &str) -> Option<(u32, u32)> {
    let mut parts = s.trim().split(['.', '-']);
    let version = parts.next()?.parse().ok()?;
    let major = parts.next().unwrap_or("0").parse().ok()?;
    Some((version, major))
}

fn kernel_at_least(min: &str, t: &Target) -> Result<bool, String> {
    let min = parse_kernel(min).ok_or_else(|| format!("bad minKernel '{min}'"))?;
    Ok(t.kernel >= min)
}

impl Rule {
    /// Whether the rule applies to `t`, as moby's `setupSeccomp` decides: excluded when the
    /// architecture is listed, when any listed capability is in the set, or when the kernel
    /// is at least `minKernel`; included only when the architecture is listed, every listed
    /// capability is in the set and the kernel is at least `minKernel`.
    pub fn applies_to(&self, t: &Target) -> Result<bool, String> {
        let arch = arch_name(t.arch);
        if let Some(ex) = &self.excludes {
            if ex.arches.iter().flatten().any(|a| a == arch)
                || ex
                    .caps
                    .iter()
                    .flatten()
                    .any(|c| t.caps.contains(&c.as_str()))
            {
                return Ok(false);
            }
            if let Some(k) = &ex.min_kernel {
                if kernel_at_least(k, t)? {
                    return Ok(false);
                }
            }
        }
        if let Some(inc) = &self.includes {
            if let Some(arches) = inc.arches.as_ref().filter(|a| !a.is_empty()) {
                if !arches.iter().any(|a| a == arch) {
                    return Ok(false);
                }
            }
            if !inc
                .caps
                .iter()
                .flatten()
                .all(|c| t.caps.contains(&c.as_str()))
            {
                return Ok(false);
            }
            if let Some(k) = &inc.min_kernel {
                if !kernel_at_least(k, t)? {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// The syscall names, from `names` or Docker's older `name`.
    pub fn names(&self) -> Result<Vec<&str>, String> {
        match (&self.name, &self.names) {
            (Some(_), Some(n)) if !n.is_empty() => Err(format!(
                "a rule has both 'name' and 'names' ({})",
                n.join(", ")
            )),
            (Some(n), _) => Ok(vec![n.as_str()]),
            (None, Some(n)) => Ok(n.iter().map(String::as_str).collect()),
            (None, None) => Ok(Vec::new()),
        }
    }
}

/// An action name with its errno (`errnoRet`, EPERM when absent, as runc).
fn action(name: &str, errno_ret: Option<u32>) -> Result<ScmpAction, String> {
    let ret = errno_ret.unwrap_or(libc::EPERM as u32);
    let ret16 = || u16::try_from(ret).map_err(|_| format!("errnoRet {ret} is out of range"));
    Ok(match name {
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => ScmpAction::KillThread,
        "SCMP_ACT_KILL_PROCESS" => ScmpAction::KillProcess,
        "SCMP_ACT_TRAP" => ScmpAction::Trap,
        "SCMP_ACT_ERRNO" => ScmpAction::Errno(i32::from(ret16()?)),
        "SCMP_ACT_TRACE" => ScmpAction::Trace(ret16()?),
        "SCMP_ACT_ALLOW" => ScmpAction::Allow,
        "SCMP_ACT_LOG" => ScmpAction::Log,
        "SCMP_ACT_NOTIFY" => {
            return Err("SCMP_ACT_NOTIFY (a seccomp agent) is not supported".into())
        }
        other => return Err(format!("unknown action '{other}'")),
    })
}

fn condition(a: &Arg) -> Result<ScmpArgCompare, String> {
    if a.index > 5 {
        return Err(format!(
            "argument index {} is out of range (0 to 5)",
            a.index
        ));
    }
    let (op, datum) = match a.op.as_str() {
        "SCMP_CMP_NE" => (ScmpCompareOp::NotEqual, a.value),
        "SCMP_CMP_LT" => (ScmpCompareOp::Less, a.value),
        "SCMP_CMP_LE" => (ScmpCompareOp::LessOrEqual, a.value),
        "SCMP_CMP_EQ" => (ScmpCompareOp::Equal, a.value),
        "SCMP_CMP_GE" => (ScmpCompareOp::GreaterEqual, a.value),
        "SCMP_CMP_GT" => (ScmpCompareOp::Greater, a.value),
        // The spec's masked form: (arg & value) == valueTwo.
        "SCMP_CMP_MASKED_EQ" => (ScmpCompareOp::MaskedEqual(a.value), a.value_two),
        other => return Err(format!("unknown operator '{other}'")),
    };
    Ok(ScmpArgCompare::new(a.index, op, datum))
}

/// Filter flags (seccomp(2)) of the profile's `flags`.
fn flags(names: &[String]) -> Result<u32, String> {
    names.iter().try_fold(0, |acc, f| {
        Ok(acc
            | match f.as_str() {
                "SECCOMP_FILTER_FLAG_TSYNC" => 1,
                "SECCOMP_FILTER_FLAG_LOG" => 2,
                "SECCOMP_FILTER_FLAG_SPEC_ALLOW" => 4,
                other => return Err(format!("unknown flag '{other}'")),
            })
    })
}

fn libseccomp_version() -> String {
    ScmpVersion::current()
        .map(|v| format!("libseccomp {}.{}.{}", v.major, v.minor, v.micro))
        .unwrap_or_else(|_| "libseccomp".into())
}

/// One BPF instruction (struct sock_filter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

/// A compiled filter, ready to install.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    pub program: Vec<Insn>,
    /// seccomp(2) flags (SECCOMP_FILTER_FLAG_*).
    pub flags: u32,
    /// Names this libseccomp does not know, skipped.
    pub skipped: Vec<String>,
}

impl Filter {
    /// Docker's default profile for a command whose bounding set is `caps` (capability
    /// numbers; a future --cap-add extends it).
    pub fn default_for(caps: &[u32]) -> Result<Filter, SeccompError> {
        let t = Target::native(caps);
        let f = cache::get_or_compile(DEFAULT_PROFILE, caps, &t.machine(), || {
            Profile::parse(DEFAULT_PROFILE).and_then(|p| Filter::compile(&p, &t))
        })
        .map_err(SeccompError::Default)?;
        if !f.skipped.is_empty() {
            debug!(
                "seccomp: the default profile's syscalls unknown to {} are skipped: {}",
                libseccomp_version(),
                f.skipped.join(", ")
            );
        }
        Ok(f)
    }

    /// The profile in `path`.
    pub fn from_file(path: &Path, caps: &[u32]) -> Result<Filter, SeccompError> {
        let err = |reason: String| SeccompError::Profile {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(crate::error::io_text(&e)))?;
        Filter::from_json(&text, caps, &path.display().to_string()).map_err(err)
    }

    /// A profile given as JSON text (an OCI bundle's `linux.seccomp`), named `what` in the
    /// warning about skipped syscalls.
    pub fn from_json(text: &str, caps: &[u32], what: &str) -> Result<Filter, String> {
        let t = Target::native(caps);
        let f = cache::get_or_compile(text, caps, &t.machine(), || {
            Profile::parse(text).and_then(|p| Filter::compile(&p, &t))
        })?;
        if !f.skipped.is_empty() {
            warn!(
                "seccomp profile {what}: syscalls unknown to {} skipped: {}",
                libseccomp_version(),
                f.skipped.join(", ")
            );
        }
        Ok(f)
    }

    /// Evaluates `p` for `t` and compiles it with libseccomp.
    pub fn compile(p: &Profile, t: &Target) -> Result<Filter, String> {
        if p.listener_path.is_some() {
            return Err("listenerPath: seccomp agents are not supported".into());
        }
        let flags = flags(p.flags.as_deref().unwrap_or_default())?;
        let default = action(&p.default_action, p.default_errno_ret)?;
        let lib = |what: String| move |e: libseccomp::error::SeccompError| format!("{what}: {e}");
        let mut ctx = ScmpFilterContext::new(default).map_err(lib("libseccomp".into()))?;
        // A binary tree of syscall numbers instead of a linear list: each system call of the
        // command walks ~log2(n) comparisons, not up to n (libseccomp >= 2.5; same effect).
        if let Err(e) = ctx.set_ctl_optimize(2) {
            debug!("seccomp: no binary-tree optimisation: {e}");
        }

        let mut arches = Vec::new();
        match (&p.architectures, &p.arch_map) {
            (Some(a), Some(m)) if !a.is_empty() && !m.is_empty() => {
                return Err("both 'architectures' and 'archMap' are given; use one".into())
            }
            (Some(a), _) if !a.is_empty() => arches.extend(a.iter().map(String::as_str)),
            (_, Some(map)) => {
                for m in map {
                    if ScmpArch::from_str(&m.architecture).ok() == Some(t.arch) {
                        arches.push(m.architecture.as_str());
                        arches.extend(m.sub_architectures.iter().flatten().map(String::as_str));
                    }
                }
            }
            _ => {}
        }
        for name in arches {
            let arch =
                ScmpArch::from_str(name).map_err(|_| format!("unknown architecture '{name}'"))?;
            let present = ctx.is_arch_present(arch).map_err(lib(name.into()))?;
            if !present {
                ctx.add_arch(arch).map_err(lib(name.into()))?;
            }
        }

        let mut skipped = Vec::new();
        for rule in p.syscalls.iter().flatten() {
            let names = rule.names()?;
            let what = || names.first().copied().unwrap_or("(no name)");
            let act =
                action(&rule.action, rule.errno_ret).map_err(|e| format!("{}: {e}", what()))?;
            let conds = rule
                .args
                .iter()
                .flatten()
                .map(condition)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{}: {e}", what()))?;
            if !rule.applies_to(t)? || act == default {
                // libseccomp refuses a rule whose action is the default; it adds nothing.
                continue;
            }
            // Conditions on distinct arguments must all hold (one rule); several on the same
            // argument are alternatives (one rule each), as runc reads the spec.
            let mut seen = [false; 6];
            let repeated = rule
                .args
                .iter()
                .flatten()
                .any(|a| std::mem::replace(&mut seen[a.index as usize], true));
            let groups: Vec<&[ScmpArgCompare]> = if repeated {
                conds.chunks(1).collect()
            } else {
                vec![&conds[..]]
            };
            for name in names {
                let sys = match ScmpSyscall::from_name(name) {
                    Ok(s) => s,
                    Err(_) => {
                        if !skipped.iter().any(|s| s == name) {
                            skipped.push(name.to_string());
                        }
                        continue;
                    }
                };
                for g in &groups {
                    ctx.add_rule_conditional(act, sys, g)
                        .map_err(lib(format!("syscall {name}")))?;
                }
            }
        }
        let program = export(&ctx)?;
        Ok(Filter {
            program,
            flags,
            skipped,
        })
    }

    /// Installs the filter on this process (after no_new_privs; the next execve keeps it).
    pub fn load(&self) -> Result<(), Errno> {
        let prog: Vec<libc::sock_filter> = self
            .program
            .iter()
            .map(|i| libc::sock_filter {
                code: i.code,
                jt: i.jt,
                jf: i.jf,
                k: i.k,
            })
            .collect();
        crate::sys::seccomp_set_filter(&prog, self.flags)
    }
}

/// The BPF program of `ctx` (libseccomp 2.5 exports only to a file descriptor: a memfd).
fn export(ctx: &ScmpFilterContext) -> Result<Vec<Insn>, String> {
    let fail = |e: &dyn std::fmt::Display| format!("exporting the filter: {e}");
    let fd =
        nix::sys::memfd::memfd_create(c"strata-seccomp", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
            .map_err(|e| fail(&e))?;
    let mut file = std::fs::File::from(fd);
    ctx.export_bpf(&file).map_err(|e| fail(&e))?;
    let mut bytes = Vec::new();
    file.rewind()
        .and_then(|()| file.read_to_end(&mut bytes))
        .map_err(|e| fail(&e))?;
    Ok(bytes
        .chunks_exact(8)
        .map(|b| Insn {
            code: u16::from_ne_bytes([b[0], b[1]]),
            jt: b[2],
            jf: b[3],
            k: u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Docker's default capabilities (with CAP_MKNOD, as Docker's rules are tested here).
    const DEFAULT_CAPS: &[u32] = &[0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31];

    fn target(caps: &[u32], arch: ScmpArch) -> Target {
        Target {
            caps: caps.iter().filter_map(|&c| cap_name(c)).collect(),
            arch,
            kernel: (6, 1),
        }
    }

    fn default_profile() -> Profile {
        Profile::parse(DEFAULT_PROFILE).unwrap()
    }

    /// The rules of the default profile that apply, with the actions, naming `name`.
    fn rules_for<'a>(p: &'a Profile, t: &Target, name: &str) -> Vec<&'a Rule> {
        p.syscalls
            .iter()
            .flatten()
            .filter(|r| r.names().unwrap().contains(&name) && r.applies_to(t).unwrap())
            .collect()
    }

    #[test]
    fn cap_names_match_numbers() {
        assert_eq!(cap_name(21), Some("CAP_SYS_ADMIN"));
        assert_eq!(cap_name(18), Some("CAP_SYS_CHROOT"));
        assert_eq!(cap_name(40), Some("CAP_CHECKPOINT_RESTORE"));
        assert_eq!(cap_name(41), None);
    }

    #[test]
    fn default_profile_without_sys_admin() {
        let p = default_profile();
        assert_eq!(p.default_action, "SCMP_ACT_ERRNO");
        assert_eq!(p.default_errno_ret, Some(1));
        let t = target(DEFAULT_CAPS, ScmpArch::X8664);
        // clone only without namespace flags; clone3 -> ENOSYS so libc falls back to clone.
        let clone = rules_for(&p, &t, "clone");
        assert_eq!(clone.len(), 1);
        let args = clone[0].args.as_ref().unwrap();
        assert_eq!(
            (args[0].index, args[0].op.as_str()),
            (0, "SCMP_CMP_MASKED_EQ")
        );
        let clone3 = rules_for(&p, &t, "clone3");
        assert_eq!(clone3.len(), 1);
        assert_eq!(clone3[0].action, "SCMP_ACT_ERRNO");
        assert_eq!(clone3[0].errno_ret, Some(libc::ENOSYS as u32));
        for denied in ["unshare", "mount", "setns", "keyctl", "bpf", "reboot"] {
            assert!(rules_for(&p, &t, denied).is_empty(), "{denied} is allowed");
        }
        // CAP_SYS_CHROOT is in the set; arch_prctl is x86-64's.
        assert_eq!(rules_for(&p, &t, "chroot").len(), 1);
        assert_eq!(rules_for(&p, &t, "arch_prctl").len(), 1);
        assert!(rules_for(&p, &t, "riscv_flush_icache").is_empty());
        assert_eq!(rules_for(&p, &t, "personality").len(), 5);
        assert_eq!(rules_for(&p, &t, "execve").len(), 1);
    }

    #[test]
    fn default_profile_with_sys_admin_and_other_arches() {
        let p = default_profile();
        let mut caps = DEFAULT_CAPS.to_vec();
        caps.push(21);
        let t = target(&caps, ScmpArch::X8664);
        let clone = rules_for(&p, &t, "clone");
        assert_eq!(clone.len(), 1);
        assert!(
            clone[0].args.is_none(),
            "clone unrestricted with CAP_SYS_ADMIN"
        );
        let clone3 = rules_for(&p, &t, "clone3");
        assert_eq!(clone3.len(), 1);
        assert_eq!(clone3[0].action, "SCMP_ACT_ALLOW");
        assert_eq!(rules_for(&p, &t, "unshare").len(), 1);

        // s390x: clone's flags are its second argument.
        let t = target(DEFAULT_CAPS, ScmpArch::S390X);
        let clone = rules_for(&p, &t, "clone");
        assert_eq!(clone.len(), 1);
        assert_eq!(clone[0].args.as_ref().unwrap()[0].index, 1);
        assert!(rules_for(&p, &t, "arch_prctl").is_empty());
    }

    #[test]
    fn min_kernel() {
        let p = default_profile();
        let mut t = target(DEFAULT_CAPS, ScmpArch::X8664);
        assert_eq!(rules_for(&p, &t, "ptrace").len(), 1);
        t.kernel = (4, 4);
        assert!(rules_for(&p, &t, "ptrace").is_empty());
        assert_eq!(parse_kernel("6.1.0-18-amd64"), Some((6, 1)));
        assert_eq!(parse_kernel("5.10"), Some((5, 10)));
        assert_eq!(parse_kernel("x"), None);
    }

    #[test]
    fn default_profile_compiles() {
        let f = Filter::default_for(DEFAULT_CAPS).unwrap();
        assert!(f.program.len() > 100, "{} instructions", f.program.len());
        assert_eq!(f.flags, 0);
        // BPF_RET | BPF_K: a program ends with a return.
        assert_eq!(f.program.last().unwrap().code, 0x06);
        assert!(f.program.len() <= 4096, "over BPF_MAXINSNS");
    }

    fn compile(json: &str) -> Result<Filter, String> {
        let t = target(DEFAULT_CAPS, ScmpArch::native());
        Profile::parse(json).and_then(|p| Filter::compile(&p, &t))
    }

    #[test]
    fn user_profiles() {
        let f = compile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_X86"],
                "syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":42},
                            {"names":["getpid"],"action":"SCMP_ACT_ALLOW"},
                            {"names":["personality"],"action":"SCMP_ACT_ERRNO",
                             "args":[{"index":0,"value":8,"op":"SCMP_CMP_EQ"},
                                     {"index":0,"value":9,"op":"SCMP_CMP_EQ"}]},
                            {"names":["no_such_syscall_x"],"action":"SCMP_ACT_KILL"}]}"#,
        )
        .unwrap();
        assert_eq!(f.skipped, vec!["no_such_syscall_x".to_string()]);
        assert!(compile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","flags":["SECCOMP_FILTER_FLAG_LOG"]}"#
        )
        .is_ok_and(|f| f.flags == 2));
        // OCI profiles may leave syscalls out or null.
        assert!(compile(r#"{"defaultAction":"SCMP_ACT_LOG","syscalls":null}"#).is_ok());
    }

    #[test]
    fn bad_profiles() {
        let cases = [
            ("{", "bad JSON"),
            (r#"{"syscalls":[]}"#, "missing field `defaultAction`"),
            (
                r#"{"defaultAction":"SCMP_ACT_NOPE"}"#,
                "unknown action 'SCMP_ACT_NOPE'",
            ),
            (
                r#"{"defaultAction":"SCMP_ACT_ALLOW","sycalls":[]}"#,
                "unknown field `sycalls`",
            ),
            (
                r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_DENY"}]}"#,
                "mkdir: unknown action 'SCMP_ACT_DENY'",
            ),
            (
                r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO","args":[{"index":6,"value":1,"op":"SCMP_CMP_EQ"}]}]}"#,
                "out of range",
            ),
            (
                r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO","args":[{"index":0,"value":1,"op":"SCMP_CMP_LIKE"}]}]}"#,
                "unknown operator 'SCMP_CMP_LIKE'",
            ),
            (
                r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_NOTIFY"}]}"#,
                "not supported",
            ),
            (
                r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_VAX"]}"#,
                "unknown architecture 'SCMP_ARCH_VAX'",
            ),
            (
                r#"{"defaultAction":"SCMP_ACT_ALLOW","flags":["SECCOMP_FILTER_FLAG_X"]}"#,
                "unknown flag",
            ),
            (
                r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":70000}"#,
                "out of range",
            ),
        ];
        for (json, want) in cases {
            let e = compile(json).unwrap_err();
            assert!(e.contains(want), "{json}: {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn choices() {
        assert_eq!(Choice::parse("unconfined"), Choice::Unconfined);
        assert_eq!(
            Choice::parse("/x.json"),
            Choice::File(PathBuf::from("/x.json"))
        );
        assert_eq!(Choice::Unconfined.filter(&[]).unwrap(), None);
        let e = Choice::parse("/nonexistent-strata.json")
            .filter(&[])
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "seccomp profile /nonexistent-strata.json: No such file or directory"
        );
    }
}
