//! Registrations with sipp: the `Reg` rows of the injection CSV
//! (tests/e2e/register.xml), the command every sipp run shares, one-shot
//! runs over UDP (`sipp_register`), SER-0.9 style aliases, and a sipp that
//! keeps its TCP connection (`SippKeep`).

use std::fmt::Write as _;
use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::config::{e2e_dir, SIP_PORT};
use super::node::Node;
use super::processes::{tail, wait_until, ChildGuard, ParentDeath};

pub const SIPP: &str = "sipp";

/// One REGISTER: the row of the injection CSV (see tests/e2e/register.xml).
#[derive(Clone, Debug)]
pub struct Reg {
    pub user: String,
    /// Contact tag: the contact is sip:<user>-<tag>@<source ip>:5099.
    pub tag: String,
    pub expires: u32,
    pub instance: bool,
    pub reg_id: bool,
    pub path: bool,
    pub nat: bool,
    pub flags: bool,
    pub replace: bool,
    pub cseq: u32,
    pub uuid: u64,
    /// Contact q-value in thousandths (ul.dump's Q), None: no q parameter.
    pub q: Option<u16>,
    /// false: no Allow header (usrloc then stores "all methods").
    pub allow: bool,
    /// The contact's host; None: sipp's source address.
    pub host: Option<String>,
}

impl Reg {
    pub fn new(user: impl Into<String>, expires: u32) -> Reg {
        Reg {
            user: user.into(),
            tag: "a".into(),
            expires,
            instance: false,
            reg_id: false,
            path: false,
            nat: false,
            flags: false,
            replace: false,
            cseq: 1,
            uuid: 0,
            q: None,
            allow: true,
            host: None,
        }
    }

    /// The contact address usrloc stores for this registration.
    pub fn address(&self, source_ip: &str, transport: Transport) -> String {
        let host = self.host.as_deref().unwrap_or(source_ip);
        format!(
            "sip:{}-{}@{host}:5099;transport={}",
            self.user,
            self.tag,
            transport.upper()
        )
    }

    pub fn instance_urn(&self) -> String {
        format!("<urn:uuid:00000000-0000-4000-8000-{:012}>", self.uuid)
    }

    /// The same registration with Expires: 0.
    pub fn deregistration(&self) -> Reg {
        Reg {
            expires: 0,
            cseq: self.cseq + 1,
            ..self.clone()
        }
    }

    fn csv_row(&self, source_ip: &str) -> String {
        let pick =
            |on: bool, yes: &str, no: &str| if on { yes.to_string() } else { no.to_string() };
        format!(
            "{};{};{};{};{};{};{};{};{};{};{:012};{};{};{}",
            self.user,
            self.expires,
            self.tag,
            pick(self.instance, "+sip.instance", "x-no-instance"),
            pick(self.reg_id, "reg-id", "x-no-reg-id"),
            pick(self.path, "Path", "X-No-Path"),
            pick(self.nat, "X-NAT", "X-No-NAT"),
            pick(self.flags, "X-Flags", "X-No-Flags"),
            pick(self.replace, "X-Replace", "X-No-Replace"),
            self.cseq,
            self.uuid,
            match self.q {
                Some(q) => format!("q={}.{:03}", q / 1000, q % 1000),
                None => "x-no-q".to_string(),
            },
            pick(self.allow, "Allow", "X-No-Allow"),
            self.host.as_deref().unwrap_or(source_ip)
        )
    }
}

/// `n` users `<prefix><i>` with a mix of what save() stores: Path (with a
/// received parameter, path_use_received), X-NAT (received from
/// fix_nated_register), +sip.instance with and without reg-id, a branch
/// flag (cflags), q-values, no Allow header (all methods), varied Expires
/// and CSeq.
pub fn mixed_users(prefix: &str, n: usize, uuid_base: u64) -> Vec<Reg> {
    (0..n)
        .map(|i| {
            let mut r = Reg::new(format!("{prefix}{i:05}"), 1800 + ((i * 37) % 1800) as u32);
            r.path = i % 4 == 1;
            r.nat = i % 5 == 2;
            r.instance = i % 3 == 0;
            r.reg_id = i % 6 == 0;
            r.flags = i % 7 == 3;
            r.cseq = 1 + (i % 1000) as u32;
            r.uuid = uuid_base + i as u64;
            r.q = (i % 9 == 4).then_some(((i * 7) % 1001) as u16);
            r.allow = i % 8 != 5;
            r
        })
        .collect()
}

/// Writes sipp's injection file for a sipp sending from `source_ip`; no
/// field may hold a ';'.
pub fn write_injection_csv(path: &Path, regs: &[Reg], source_ip: &str) {
    let mut s = String::from("SEQUENTIAL\n");
    for r in regs {
        assert!(!r.user.contains(';') && !r.tag.contains(';'));
        s.push_str(&r.csv_row(source_ip));
        s.push('\n');
    }
    fs::write(path, s).expect("writing injection CSV");
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    pub fn upper(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
        }
    }
}

static SIPP_SEQ: AtomicU64 = AtomicU64::new(1);

pub(super) fn sipp_run_dir(node: &Node, label: &str) -> PathBuf {
    let n = SIPP_SEQ.fetch_add(1, Ordering::Relaxed);
    let d = node
        .dir
        .parent()
        .unwrap_or(&node.dir)
        .join("sipp")
        .join(format!("{n:03}-{label}"));
    fs::create_dir_all(&d).expect("creating sipp dir");
    d
}

/// sipp against `node` from its own address, running `scenario` (a file
/// name under tests/e2e/, or a path) with `dir/users.csv` as injection
/// file, `n` calls at `rate`/s, errors to `dir/errors.log`. One-shot runs
/// add `-timeout`; loads that run until told to stop do not.
pub fn sipp_command(
    node: &Node,
    scenario: &Path,
    dir: &Path,
    n: usize,
    rate: u32,
    transport: &str,
) -> Command {
    let mut cmd = sipp_base(scenario, dir);
    cmd.arg(format!("{}:{SIP_PORT}", node.ip))
        .arg("-inf")
        .arg(dir.join("users.csv"))
        .args(["-m", &n.to_string(), "-r", &rate.to_string(), "-rp", "1000"])
        .args(["-l", &n.clamp(1, 2000).to_string()])
        .args(["-t", transport])
        .args(["-i", &node.ip, "-bind_local"]);
    cmd
}

/// What every sipp run shares: `scenario` (under tests/e2e/, or a path),
/// errors to `dir/errors.log`, run in `dir`, no terminal, its own process
/// group, killed with the test.
pub(super) fn sipp_base(scenario: &Path, dir: &Path) -> Command {
    let mut cmd = Command::new(SIPP);
    cmd.arg("-sf")
        .arg(e2e_dir().join(scenario))
        .args(["-trace_err", "-error_file"])
        .arg(dir.join("errors.log"))
        .arg("-nostdin")
        .current_dir(dir)
        .stdin(Stdio::null())
        .process_group(0)
        .pre_exec_parent_death(libc::SIGKILL);
    cmd
}

/// Registers `regs` on `node` over UDP (sipp -t u1, from the node's own
/// address) and waits for sipp; panics unless every REGISTER got its 200.
pub fn sipp_register(node: &Node, regs: &[Reg], rate: u32, label: &str) {
    let dir = sipp_run_dir(node, label);
    write_injection_csv(&dir.join("users.csv"), regs, &node.ip);
    let out = File::create(dir.join("sipp.out")).expect("sipp.out");
    let mut cmd = sipp_command(
        node,
        Path::new("register.xml"),
        &dir,
        regs.len(),
        rate,
        "u1",
    );
    cmd.args(["-timeout", "120"]);
    cmd.args(["-trace_stat", "-stf"])
        .arg(dir.join("stat.csv"))
        .stdout(out.try_clone().expect("fd"))
        .stderr(out);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("starting sipp: {e}"));
    let guard = ChildGuard(Some(child.id()));
    let status = child.wait().expect("waiting for sipp");
    std::mem::forget(guard);
    let (ok, failed) = sipp_stat_counts(&dir.join("stat.csv"));
    let errors = fs::read_to_string(dir.join("errors.log")).unwrap_or_default();
    assert!(
        status.success() && ok == Some(regs.len() as u64) && failed == Some(0),
        "sipp {label} on {}: exit {status}, successful {ok:?} of {}, failed {failed:?}\n\
         errors (first lines):\n{}\nsipp output tail:\n{}\nnode log tail:\n{}",
        node.name(),
        regs.len(),
        errors.lines().take(15).collect::<Vec<_>>().join("\n"),
        tail(&dir.join("sipp.out"), 20),
        node.log_tail(10)
    );
}

/// Successful and failed call counts (cumulative) from sipp's -trace_stat
/// CSV, last line.
fn sipp_stat_counts(path: &Path) -> (Option<u64>, Option<u64>) {
    let text = fs::read_to_string(path).unwrap_or_default();
    let Some(header) = text.lines().next() else {
        return (None, None);
    };
    let Some(last) = text.lines().rfind(|l| !l.trim().is_empty()) else {
        return (None, None);
    };
    let cols: Vec<&str> = header.split(';').collect();
    let vals: Vec<&str> = last.split(';').collect();
    let get = |name: &str| {
        cols.iter()
            .position(|c| *c == name)
            .and_then(|i| vals.get(i))
            .and_then(|v| v.trim().parse().ok())
    };
    (get("SuccessfulCall(C)"), get("FailedCall(C)"))
}

/// A sipp holding one TCP connection with registrations made over it.
pub struct SippKeep {
    child: Option<Child>,
    pub dir: PathBuf,
    pub count: usize,
}

/// Registers `regs` on `node` over one TCP connection (sipp -t t1) and
/// returns once every REGISTER has its 200 OK; sipp then idles in the
/// scenario's long pause, keeping the connection until `kill`.
pub fn sipp_register_keep(node: &Node, regs: &[Reg], rate: u32, label: &str) -> SippKeep {
    let dir = sipp_run_dir(node, label);
    write_injection_csv(&dir.join("users.csv"), regs, &node.ip);
    let out = File::create(dir.join("sipp.out")).expect("sipp.out");
    let mut cmd = sipp_command(
        node,
        Path::new("register_keep.xml"),
        &dir,
        regs.len(),
        rate,
        "t1",
    );
    cmd.args(["-timeout", "120"]);
    cmd.args(["-trace_msg", "-message_file"])
        .arg(dir.join("messages.log"))
        .stdout(out.try_clone().expect("fd"))
        .stderr(out);
    let child = cmd.spawn().unwrap_or_else(|e| panic!("starting sipp: {e}"));
    let mut keep = SippKeep {
        child: Some(child),
        dir: dir.clone(),
        count: regs.len(),
    };
    let mut oks = 0;
    let mut exited = None;
    let done = wait_until(Duration::from_secs(60), || {
        oks = fs::read_to_string(dir.join("messages.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("SIP/2.0 200"))
            .count();
        if let Some(st) = keep
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            exited = Some(st);
            return true;
        }
        oks >= regs.len()
    });
    let errors = fs::read_to_string(dir.join("errors.log")).unwrap_or_default();
    assert!(
        done && exited.is_none() && oks == regs.len() && errors.trim().is_empty(),
        "sipp {label} (TCP) on {}: {oks} of {} REGISTERs got 200 OK, exited {exited:?}\n\
         errors:\n{}\nsipp output tail:\n{}\nnode log tail:\n{}",
        node.name(),
        regs.len(),
        errors.lines().take(15).collect::<Vec<_>>().join("\n"),
        tail(&dir.join("sipp.out"), 20),
        node.log_tail(10)
    );
    keep
}

impl SippKeep {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL: the kernel closes the connection (Kamailio sees it lost).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for SippKeep {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Registers SER-0.9 style aliases on `node` (tests/e2e/register_alias.xml):
/// each (alias user, SIP URI it stands for) goes to the usrloc table
/// "aliases". Panics unless every REGISTER got its 200.
pub fn sipp_register_aliases(node: &Node, aliases: &[(&str, &str)], label: &str) {
    let dir = sipp_run_dir(node, label);
    let mut csv = String::from("SEQUENTIAL\n");
    for (a, uri) in aliases {
        assert!(!a.contains(';') && !uri.contains(';'));
        let _ = writeln!(csv, "{a};{uri}");
    }
    fs::write(dir.join("users.csv"), csv).expect("writing injection CSV");
    let out = File::create(dir.join("sipp.out")).expect("sipp.out");
    let mut cmd = sipp_command(
        node,
        Path::new("register_alias.xml"),
        &dir,
        aliases.len(),
        10,
        "u1",
    );
    cmd.args(["-timeout", "120"]);
    cmd.args(["-trace_stat", "-stf"])
        .arg(dir.join("stat.csv"))
        .stdout(out.try_clone().expect("fd"))
        .stderr(out);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("starting sipp: {e}"));
    let guard = ChildGuard(Some(child.id()));
    let status = child.wait().expect("waiting for sipp");
    std::mem::forget(guard);
    let (ok, _) = sipp_stat_counts(&dir.join("stat.csv"));
    assert!(
        status.success() && ok == Some(aliases.len() as u64),
        "sipp {label} on {}: exit {status}, successful {ok:?} of {}\nerrors:\n{}\nnode log tail:\n{}",
        node.name(),
        aliases.len(),
        tail(&dir.join("errors.log"), 10),
        node.log_tail(10)
    );
}
