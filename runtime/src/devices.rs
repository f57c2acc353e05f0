//! The device allowlist: which device nodes the container may open, whatever nodes it has.
//!
//! Enforced by the cgroup the container runs in: on cgroup v2 (pure or the hybrid hosts'
//! unified hierarchy) an eBPF `BPF_PROG_TYPE_CGROUP_DEVICE` program attached to it, as crun,
//! runc and youki do; on cgroup v1 the `devices` controller's `devices.deny`/`devices.allow`.
//! The list is Docker's default: any node may be *made* (`m`; CAP_MKNOD is not in the default
//! set anyway), but only these may be read or written.

/// What a rule covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Char,
    Block,
}

/// One allowed (kind, major, minor) with its accesses; `None` is any number.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    pub kind: Kind,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    /// Bits of [`MKNOD`], [`READ`], [`WRITE`].
    pub access: u32,
}

pub const MKNOD: u32 = 1;
pub const READ: u32 = 2;
pub const WRITE: u32 = 4;
const RWM: u32 = MKNOD | READ | WRITE;

const fn char_dev(major: u32, minor: Option<u32>) -> Rule {
    Rule {
        kind: Kind::Char,
        major: Some(major),
        minor,
        access: RWM,
    }
}

/// Docker's default allowlist (null, zero, full, random, urandom, tty, console, ptmx, pts,
/// tun) and `m` on every node.
pub const DEFAULT: &[Rule] = &[
    Rule {
        kind: Kind::Char,
        major: None,
        minor: None,
        access: MKNOD,
    },
    Rule {
        kind: Kind::Block,
        major: None,
        minor: None,
        access: MKNOD,
    },
    char_dev(1, Some(3)),    // null
    char_dev(1, Some(5)),    // zero
    char_dev(1, Some(7)),    // full
    char_dev(1, Some(8)),    // random
    char_dev(1, Some(9)),    // urandom
    char_dev(5, Some(0)),    // tty
    char_dev(5, Some(1)),    // console
    char_dev(5, Some(2)),    // ptmx
    char_dev(136, None),     // pts/*
    char_dev(10, Some(200)), // net/tun
];

impl Rule {
    /// The cgroup v1 `devices.allow` line: `c 1:3 rwm`.
    pub fn v1_line(&self) -> String {
        let num = |n: Option<u32>| n.map(|v| v.to_string()).unwrap_or_else(|| "*".into());
        let mut access = String::new();
        for (bit, c) in [(READ, 'r'), (WRITE, 'w'), (MKNOD, 'm')] {
            if self.access & bit != 0 {
                access.push(c);
            }
        }
        let kind = match self.kind {
            Kind::Char => 'c',
            Kind::Block => 'b',
        };
        format!("{kind} {}:{} {access}", num(self.major), num(self.minor))
    }
}

// eBPF encoding (linux/bpf.h, linux/bpf_common.h).
const BPF_LDX_MEM_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const BPF_ALU32_AND_K: u8 = 0x54;
const BPF_ALU32_RSH_K: u8 = 0x74;
const BPF_ALU64_MOV_K: u8 = 0xb7;
const BPF_ALU64_MOV_X: u8 = 0xbf;
const BPF_JMP_JNE_K: u8 = 0x55;
const BPF_JMP_JNE_X: u8 = 0x5d;
const BPF_EXIT: u8 = 0x95;
/// struct bpf_cgroup_dev_ctx's `type` values in the low 16 bits of `access_type`.
const BPF_DEVCG_DEV_BLOCK: i32 = 1;
const BPF_DEVCG_DEV_CHAR: i32 = 2;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    u64::from(code)
        | u64::from(dst | (src << 4)) << 8
        | u64::from(off as u16) << 16
        | u64::from(imm as u32) << 32
}

/// The program for `rules`: returns 1 (allow) for the first rule that covers the access,
/// 0 (EPERM) when none does. Registers: r2 type, r3 access, r4 major, r5 minor.
pub fn program(rules: &[Rule]) -> Vec<u64> {
    // struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; } in r1.
    let mut p = vec![
        insn(BPF_LDX_MEM_W, 2, 1, 0, 0),
        insn(BPF_ALU32_AND_K, 2, 0, 0, 0xffff),
        insn(BPF_LDX_MEM_W, 3, 1, 0, 0),
        insn(BPF_ALU32_RSH_K, 3, 0, 0, 16),
        insn(BPF_LDX_MEM_W, 4, 1, 4, 0),
        insn(BPF_LDX_MEM_W, 5, 1, 8, 0),
    ];
    for r in rules {
        // Each check jumps past the rest of this rule's block when it does not match.
        let mut checks: Vec<(u8, u8, i32)> = Vec::new(); // (code, reg, imm)
        let kind = match r.kind {
            Kind::Char => BPF_DEVCG_DEV_CHAR,
            Kind::Block => BPF_DEVCG_DEV_BLOCK,
        };
        checks.push((BPF_JMP_JNE_K, 2, kind));
        if let Some(m) = r.major {
            checks.push((BPF_JMP_JNE_K, 4, m as i32));
        }
        if let Some(m) = r.minor {
            checks.push((BPF_JMP_JNE_K, 5, m as i32));
        }
        let access_check = r.access & RWM != RWM;
        // Instructions after the plain checks: [mov, and, jne] if access_check, then mov, exit.
        let tail = if access_check { 3 } else { 0 } + 2;
        let n = checks.len();
        for (i, (code, reg, imm)) in checks.into_iter().enumerate() {
            let skip = (n - i - 1) + tail;
            p.push(insn(code, reg, 0, skip as i16, imm));
        }
        if access_check {
            // r1 = access & allowed; the request is covered when nothing was masked off.
            p.push(insn(BPF_ALU64_MOV_X, 1, 3, 0, 0));
            p.push(insn(BPF_ALU32_AND_K, 1, 0, 0, r.access as i32));
            p.push(insn(BPF_JMP_JNE_X, 1, 3, 2, 0)); // r1 != r3: not covered
        }
        p.push(insn(BPF_ALU64_MOV_K, 0, 0, 0, 1));
        p.push(insn(BPF_EXIT, 0, 0, 0, 0));
    }
    p.push(insn(BPF_ALU64_MOV_K, 0, 0, 0, 0));
    p.push(insn(BPF_EXIT, 0, 0, 0, 0));
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small interpreter of the instructions `program` emits, to check its logic without
    /// the kernel (the kernel's verifier and the e2e tests check the rest).
    fn run(prog: &[u64], access_type: u32, major: u32, minor: u32) -> u64 {
        let mut r = [0u64; 11];
        let ctx = [access_type, major, minor];
        let mut pc = 0usize;
        loop {
            let i = prog[pc];
            let code = i as u8;
            let dst = ((i >> 8) & 0xf) as usize;
            let src = ((i >> 12) & 0xf) as usize;
            let off = (i >> 16) as u16 as i16;
            let imm = (i >> 32) as u32 as i32;
            pc += 1;
            match code {
                BPF_LDX_MEM_W => r[dst] = u64::from(ctx[off as usize / 4]),
                BPF_ALU32_AND_K => r[dst] = (r[dst] as u32 & imm as u32) as u64,
                BPF_ALU32_RSH_K => r[dst] = ((r[dst] as u32) >> imm) as u64,
                BPF_ALU64_MOV_K => r[dst] = imm as i64 as u64,
                BPF_ALU64_MOV_X => r[dst] = r[src],
                BPF_JMP_JNE_K => {
                    if r[dst] != imm as i64 as u64 {
                        pc = (pc as i64 + off as i64) as usize;
                    }
                }
                BPF_JMP_JNE_X => {
                    if r[dst] != r[src] {
                        pc = (pc as i64 + off as i64) as usize;
                    }
                }
                BPF_EXIT => return r[0],
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    fn at(kind: i32, access: u32) -> u32 {
        (access << 16) | kind as u32
    }

    #[test]
    fn default_allowlist() {
        let p = program(DEFAULT);
        let c = BPF_DEVCG_DEV_CHAR;
        let b = BPF_DEVCG_DEV_BLOCK;
        assert_eq!(run(&p, at(c, READ | WRITE), 1, 3), 1, "null");
        assert_eq!(run(&p, at(c, READ), 136, 42), 1, "pts");
        assert_eq!(run(&p, at(c, READ), 1, 1), 0, "mem");
        assert_eq!(run(&p, at(b, READ), 254, 0), 0, "a disk");
        assert_eq!(run(&p, at(b, WRITE), 7, 0), 0, "loop0");
        assert_eq!(run(&p, at(b, MKNOD), 7, 0), 1, "mknod is allowed");
        assert_eq!(run(&p, at(c, MKNOD | READ), 1, 1), 0);
    }

    #[test]
    fn v1_lines() {
        assert_eq!(DEFAULT[0].v1_line(), "c *:* m");
        assert_eq!(DEFAULT[2].v1_line(), "c 1:3 rwm");
        assert_eq!(DEFAULT[10].v1_line(), "c 136:* rwm");
    }
}
