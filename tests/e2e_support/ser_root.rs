//! Nodes on another Kamailio than the host's: the one installed in a Debian
//! root (.ci/debian13-root.sh makes one with Kamailio 6.0), run as
//! `chroot DIR kamailio ...` beside the host's 5.6 nodes, loading the
//! module built for it (`make SER_ROOT=DIR`: build/<version>/sersync.so).
//!
//! The one helper that mounts is .ci/in-root.sh: /proc, /dev/shm, the
//! node's directory and the module's at the same paths inside the root, in
//! a mount namespace of the node's own. The mounts go when the node's last
//! process goes, whether the test passes, fails, panics or is killed:
//! nothing is ever left mounted for the harness to undo. The script execs
//! down to Kamailio, which keeps its PID, so the node is stopped, killed
//! and reaped as any other.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::config::repo_root;
use super::node::{Node, KAMAILIO};

/// Environment: the Debian 13 root (default DEFAULT_DEBIAN13_ROOT).
pub const DEBIAN13_ROOT_ENV: &str = "SERSYNC_DEBIAN13_ROOT";
pub const DEFAULT_DEBIAN13_ROOT: &str = "/var/cache/sersync/debian13";

/// A Debian root with its Kamailio and the module built for it.
#[derive(Clone, Debug)]
pub struct SerRoot {
    pub dir: PathBuf,
    /// Kamailio's version in the root, e.g. "6.0.1".
    pub version: String,
    /// A private copy of build/<version>/sersync.so (as
    /// `private_module_copy`: a `make` during the run cannot change it
    /// under the running nodes); "sersync.so" (Kamailio's module
    /// directory) with `deb`.
    pub module: PathBuf,
    /// A Debian package of the module (`make deb`): the node runs in a
    /// throwaway copy of the root (in-root.sh --throwaway) into which
    /// `apt-get install ./<deb>` installs it before Kamailio starts.
    pub deb: Option<PathBuf>,
}

/// `kamailio -V`'s version number.
fn kamailio_version(out: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(out);
    let rest = text.lines().next()?.strip_prefix("version: kamailio ")?;
    Some(rest.split_whitespace().next()?.to_string())
}

/// The version of the Kamailio installed in `dir` ("/": the host's).
fn root_kamailio_version(dir: &Path) -> String {
    let out = Command::new("chroot")
        .arg(dir)
        .args(["kamailio", "-V"])
        .output()
        .unwrap_or_else(|e| panic!("chroot {} kamailio -V: {e}", dir.display()));
    kamailio_version(&out.stdout).unwrap_or_else(|| {
        panic!(
            "chroot {} kamailio -V names no version: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

impl SerRoot {
    /// The Debian 13 root of `SERSYNC_DEBIAN13_ROOT` (default
    /// /var/cache/sersync/debian13) and its module; panics, saying how to
    /// make them, when either is missing.
    /// Made once per test process (tests run in threads of one process).
    pub fn debian13() -> SerRoot {
        static ROOT: std::sync::OnceLock<SerRoot> = std::sync::OnceLock::new();
        ROOT.get_or_init(|| {
            let dir = std::env::var_os(DEBIAN13_ROOT_ENV)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DEBIAN13_ROOT));
            Self::open(&dir)
        })
        .clone()
    }

    /// Call once per process and root: the module copy's name is the
    /// version's and the process's.
    pub fn open(dir: &Path) -> SerRoot {
        assert!(
            dir.join(".sersync-root").is_file(),
            "{} is not a Debian root made by .ci/debian13-root.sh: make it \
             with `.ci/debian13-root.sh {}` (about a minute; `make test` \
             in CI runs after .ci/run made it)",
            dir.display(),
            dir.display()
        );
        let version = root_kamailio_version(dir);
        let built = repo_root().join("build").join(&version).join("sersync.so");
        assert!(
            built.is_file(),
            "{} is missing: build the module for the root's Kamailio {version} \
             with `make SER_ROOT={}` (`make test` does)",
            built.display(),
            dir.display()
        );
        let copies = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e");
        fs::create_dir_all(&copies).expect("creating e2e dir");
        let module = copies.join(format!("sersync-{version}-{}.so", std::process::id()));
        let tmp = module.with_extension("so.tmp");
        fs::copy(&built, &tmp).unwrap_or_else(|e| panic!("copying {}: {e}", built.display()));
        fs::rename(&tmp, &module).expect("renaming the module copy");
        SerRoot {
            dir: dir.to_path_buf(),
            version,
            module,
            deb: None,
        }
    }

    /// `dir` ("/": the host's own system) with the package `deb` of the
    /// module built for its Kamailio installed into a throwaway copy of it
    /// when a node starts; the node loads "sersync.so" from Kamailio's
    /// module directory, where the package put it.
    pub fn with_deb(dir: &Path, deb: &Path) -> SerRoot {
        assert!(
            deb.is_file(),
            "{} is missing: build it with `make deb` (SER_ROOT=DIR for a \
             root's Kamailio; `make test` does)",
            deb.display()
        );
        SerRoot {
            dir: dir.to_path_buf(),
            version: root_kamailio_version(dir),
            module: PathBuf::from("sersync.so"),
            deb: Some(deb.to_path_buf()),
        }
    }

    /// `kamailio` run inside the root by .ci/in-root.sh, with `binds`
    /// mounted at their own paths; the process becomes Kamailio's main
    /// process (every step execs).
    pub fn kamailio_command(&self, binds: &[&Path]) -> Command {
        let mut c = Command::new("bash");
        c.arg(repo_root().join(".ci/in-root.sh"));
        if self.deb.is_some() {
            c.arg("--throwaway");
        }
        c.arg(&self.dir);
        let deb_dir = self.deb.as_deref().and_then(Path::parent);
        for b in binds.iter().copied().chain(deb_dir) {
            c.arg("--bind").arg(b);
        }
        c.arg("--");
        match &self.deb {
            None => {
                c.arg("kamailio");
            }
            // the whole installation, as the README gives it; its output
            // goes to the node's log. Without debconf's pre-install hook
            // (70debconf: the package asks nothing), which apt leaves
            // behind as a process in the node's group.
            Some(deb) => {
                c.args(["sh", "-c"])
                    .arg(
                        "rm -f /etc/apt/apt.conf.d/70debconf \
                         && apt-get install -y -q --no-install-recommends \"$0\" >&2 \
                         && exec kamailio \"$@\"",
                    )
                    .arg(deb);
            }
        }
        c
    }
}

impl Node {
    /// The command that starts this node's Kamailio: the host's, or the
    /// root's with the node's directory and its module mounted.
    pub(super) fn kamailio_command(&self) -> Command {
        match &self.ser_root {
            None => Command::new(KAMAILIO),
            Some(root) => {
                let module_dir = root.module.parent().filter(|_| root.module.is_absolute());
                let binds: Vec<&Path> = module_dir.into_iter().chain([&*self.dir]).collect();
                root.kamailio_command(&binds)
            }
        }
    }

    /// Runs the node on `root`'s Kamailio from its next start, loading the
    /// module built for it (the same directory, journal and database: an
    /// upgrade in place). The node must be stopped.
    pub fn use_ser_root(&mut self, root: &SerRoot) {
        assert!(!self.is_running(), "{}: stop it before", self.name());
        let cfg = self.dir.join("kamailio.cfg");
        let text = fs::read_to_string(&cfg).expect("reading kamailio.cfg");
        let mut replaced = 0;
        let lines: Vec<String> = text
            .lines()
            .map(|l| {
                if l.starts_with("loadmodule \"") && l.contains("sersync") {
                    replaced += 1;
                    format!("loadmodule \"{}\"", root.module.display())
                } else {
                    l.to_string()
                }
            })
            .collect();
        assert_eq!(replaced, 1, "{}: no sersync loadmodule line", cfg.display());
        fs::write(&cfg, lines.join("\n") + "\n").expect("writing kamailio.cfg");
        self.ser_root = Some(root.clone());
    }

    /// Kamailio's version this node runs ("5.6.3", "6.0.1"), from
    /// core.version.
    pub fn ser_version(&self) -> String {
        let v = self
            .rpc("core.version", serde_json::json!([]))
            .unwrap_or_else(|e| panic!("core.version on {}: {e}", self.name()));
        v.as_str()
            .and_then(|s| kamailio_version(format!("version: {s}").as_bytes()))
            .unwrap_or_else(|| panic!("{}: core.version {v}", self.name()))
    }
}
