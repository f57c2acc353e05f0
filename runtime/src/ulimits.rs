//! `--ulimit NAME=SOFT[:HARD]`, as Docker's: resource limits of the container's command.
//!
//! Names as Docker's (`nofile`, `nproc`, `core`...), values numbers or `-1`/`unlimited`; one
//! value sets both limits; a soft limit above the hard one is refused before anything starts
//! (exit 2). The command process sets them while it still has its capabilities; a host that
//! refuses (raising a hard limit needs CAP_SYS_RESOURCE, and nofile cannot exceed
//! fs.nr_open) makes the run fail with one line naming the limit (exit 125), as crun and runc
//! fail.

use nix::sys::resource::{setrlimit, Resource, RLIM_INFINITY};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ulimit {
    pub name: &'static str,
    resource: Resource,
    pub soft: u64,
    pub hard: u64,
}

const NAMES: &[(&str, Resource)] = &[
    ("as", Resource::RLIMIT_AS),
    ("core", Resource::RLIMIT_CORE),
    ("cpu", Resource::RLIMIT_CPU),
    ("data", Resource::RLIMIT_DATA),
    ("fsize", Resource::RLIMIT_FSIZE),
    ("locks", Resource::RLIMIT_LOCKS),
    ("memlock", Resource::RLIMIT_MEMLOCK),
    ("msgqueue", Resource::RLIMIT_MSGQUEUE),
    ("nice", Resource::RLIMIT_NICE),
    ("nofile", Resource::RLIMIT_NOFILE),
    ("nproc", Resource::RLIMIT_NPROC),
    ("rss", Resource::RLIMIT_RSS),
    ("rtprio", Resource::RLIMIT_RTPRIO),
    ("rttime", Resource::RLIMIT_RTTIME),
    ("sigpending", Resource::RLIMIT_SIGPENDING),
    ("stack", Resource::RLIMIT_STACK),
];

fn value(s: &str) -> Result<u64, String> {
    match s {
        "-1" | "unlimited" => Ok(RLIM_INFINITY),
        _ => s
            .parse()
            .map_err(|_| format!("'{s}' is not a number (or -1/unlimited)")),
    }
}

impl Ulimit {
    pub fn parse(spec: &str) -> Result<Ulimit, String> {
        let (name, values) = spec
            .split_once('=')
            .ok_or("expected NAME=SOFT[:HARD], e.g. nofile=1024:2048")?;
        let &(name, resource) = NAMES.iter().find(|(n, _)| *n == name).ok_or_else(|| {
            let known: Vec<&str> = NAMES.iter().map(|(n, _)| *n).collect();
            format!("unknown limit '{name}' (known: {})", known.join(", "))
        })?;
        let (soft, hard) = match values.split_once(':') {
            Some((s, h)) => (value(s)?, value(h)?),
            None => {
                let v = value(values)?;
                (v, v)
            }
        };
        if soft > hard {
            return Err(format!("soft limit {soft} above the hard limit {hard}"));
        }
        Ok(Ulimit {
            name,
            resource,
            soft,
            hard,
        })
    }

    /// The limit of an OCI bundle's `process.rlimits` (`RLIMIT_NOFILE`...).
    pub fn from_oci(kind: &str, soft: u64, hard: u64) -> Result<Ulimit, String> {
        let lower = kind.to_ascii_lowercase();
        let bare = lower.strip_prefix("rlimit_").unwrap_or(&lower);
        let &(name, resource) = NAMES
            .iter()
            .find(|(n, _)| *n == bare)
            .ok_or_else(|| format!("unknown rlimit '{kind}'"))?;
        if soft > hard {
            return Err(format!(
                "{kind}: soft limit {soft} above the hard limit {hard}"
            ));
        }
        Ok(Ulimit {
            name,
            resource,
            soft,
            hard,
        })
    }

    /// Sets the limit on the calling process; the error is the line to show.
    pub fn apply(&self) -> Result<(), String> {
        setrlimit(self.resource, self.soft, self.hard).map_err(|e| {
            let (_, host_hard) =
                nix::sys::resource::getrlimit(self.resource).unwrap_or((0, RLIM_INFINITY));
            let shown = |v: u64| {
                if v == RLIM_INFINITY {
                    "unlimited".to_string()
                } else {
                    v.to_string()
                }
            };
            format!(
                "--ulimit {}={}:{}: the host refuses it (hard limit here {}): {}",
                self.name,
                shown(self.soft),
                shown(self.hard),
                shown(host_hard),
                e.desc()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_syntax() {
        let u = Ulimit::parse("nofile=1024:2048").unwrap();
        assert_eq!((u.name, u.soft, u.hard), ("nofile", 1024, 2048));
        let u = Ulimit::parse("core=0").unwrap();
        assert_eq!((u.soft, u.hard), (0, 0));
        let u = Ulimit::parse("stack=-1").unwrap();
        assert_eq!(u.hard, RLIM_INFINITY);
        assert!(Ulimit::parse("nofile=10:5").unwrap_err().contains("above"));
        assert!(Ulimit::parse("files=10")
            .unwrap_err()
            .contains("unknown limit"));
        assert!(Ulimit::parse("nofile").is_err());
        assert!(Ulimit::parse("nofile=lots").is_err());
    }
}
