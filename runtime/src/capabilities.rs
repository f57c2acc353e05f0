//! The container's capability set: Docker's default less CAP_MKNOD, changed by `--cap-add` and
//! `--cap-drop` with Docker's rules (names with or without `CAP_`, any case; `ALL`).
//!
//! Docker keeps CAP_MKNOD because its device cgroup makes the nodes useless; strata drops it as
//! well, so a device node cannot even be made (the device filter stays, for `--cap-add MKNOD`).

/// Capability names by number (linux/capability.h), as profiles and Docker spell them.
const NAMES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Docker's default set (moby's `oci/caps/defaults.go`) without MKNOD.
const DEFAULT: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "NET_RAW",
    "SYS_CHROOT",
    "AUDIT_WRITE",
    "SETFCAP",
];

pub const SYS_ADMIN: u32 = 21;

/// A set of capabilities, as a bit mask (bit N: capability N).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapSet(u64);

impl CapSet {
    pub fn default_set() -> CapSet {
        CapSet(
            DEFAULT
                .iter()
                .filter_map(|n| number(n))
                .fold(0, |m, c| m | 1 << c),
        )
    }

    /// Applies `--cap-add` and `--cap-drop` as Docker does: `--cap-add ALL` starts from every
    /// capability, `--cap-drop ALL` from none; then the named drops, then the named adds.
    /// An unknown name is the error.
    pub fn with_changes(add: &[String], drop: &[String]) -> Result<CapSet, String> {
        let parse = |list: &[String]| -> Result<(bool, u64), String> {
            let mut all = false;
            let mut mask = 0u64;
            for name in list {
                if name.eq_ignore_ascii_case("ALL") {
                    all = true;
                } else {
                    let c = number(name).ok_or_else(|| name.clone())?;
                    mask |= 1 << c;
                }
            }
            Ok((all, mask))
        };
        let (add_all, add) = parse(add)?;
        let (drop_all, drop) = parse(drop)?;
        let every = (1u64 << NAMES.len()) - 1;
        let base = if add_all {
            every
        } else if drop_all {
            0
        } else {
            CapSet::default_set().0
        };
        // Docker: with --cap-add ALL the drops still apply; with --cap-drop ALL the adds do.
        let set = if add_all {
            base & !drop
        } else {
            (base & !drop) | add
        };
        Ok(CapSet(set))
    }

    /// The set of the named capabilities (an OCI bundle's bounding set); an unknown name is
    /// the error.
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<CapSet, String> {
        let mut mask = 0u64;
        for n in names {
            mask |= 1 << number(n).ok_or_else(|| n.to_string())?;
        }
        Ok(CapSet(mask))
    }

    /// Bit N set: capability N.
    pub fn mask(&self) -> u64 {
        self.0
    }

    pub fn contains(&self, cap: u32) -> bool {
        cap < 64 && self.0 & (1 << cap) != 0
    }

    /// The capability numbers, in order.
    pub fn numbers(&self) -> Vec<u32> {
        (0..NAMES.len() as u32)
            .filter(|c| self.contains(*c))
            .collect()
    }

    /// The names (`CAP_CHOWN`...), in number order.
    pub fn names(&self) -> Vec<String> {
        self.numbers()
            .into_iter()
            .filter_map(name)
            .map(String::from)
            .collect()
    }
}

/// The name of capability `cap` (`CAP_SYS_ADMIN`...).
pub fn name(cap: u32) -> Option<&'static str> {
    NAMES.get(cap as usize).copied()
}

/// The number of a capability named with or without `CAP_`, in any case.
pub fn number(name: &str) -> Option<u32> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    NAMES
        .iter()
        .position(|n| n.strip_prefix("CAP_") == Some(bare))
        .map(|i| i as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn default_has_no_mknod_nor_sys_admin() {
        let d = CapSet::default_set();
        assert!(!d.contains(27));
        assert!(!d.contains(SYS_ADMIN));
        assert!(d.contains(0) && d.contains(31));
        assert_eq!(d.names().len(), DEFAULT.len());
    }

    #[test]
    fn docker_rules() {
        let add = CapSet::with_changes(&s(&["mknod", "CAP_SYS_ADMIN"]), &s(&["chown"])).unwrap();
        assert!(add.contains(27) && add.contains(21) && !add.contains(0));
        let only = CapSet::with_changes(&s(&["NET_RAW"]), &s(&["ALL"])).unwrap();
        assert_eq!(only.names(), vec!["CAP_NET_RAW"]);
        let all = CapSet::with_changes(&s(&["all"]), &s(&["SYS_ADMIN"])).unwrap();
        assert!(all.contains(40) && !all.contains(21));
        assert_eq!(
            CapSet::with_changes(&s(&["CAP_FLY"]), &[]).unwrap_err(),
            "CAP_FLY"
        );
    }

    #[test]
    fn names_round_trip() {
        for (i, n) in NAMES.iter().enumerate() {
            assert_eq!(number(n), Some(i as u32));
            assert_eq!(number(&n.to_lowercase()), Some(i as u32));
            assert_eq!(number(&n[4..]), Some(i as u32));
        }
        assert_eq!(number("CAP_CHECKPOINT_RESTORE"), Some(40));
    }
}
