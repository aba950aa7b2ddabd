//! Settings (the REGISTER_* knobs) and configurations (what replicates).

use std::time::Duration;

use crate::common::*;

#[derive(Clone, Debug)]
pub struct Settings {
    pub runs: usize,
    pub burst_n: usize,
    pub rate_n: usize,
    pub rate: u32,
    pub window: u32,
    pub m64_n: usize,
    pub catchup_n: usize,
    pub children: u32,
    pub db_mode: u32,
    pub hash_size: u32,
    pub shm_mb: u32,
    pub probe_every: Duration,
    pub converge_timeout: Duration,
    pub pin: bool,
    /// A lowest-priority CPU burner runs beside the bench (REGISTER_AWAKE,
    /// default 1): idle vCPUs wake slowly and bound a burst's rate, which
    /// made node 1 alone the slowest configuration (BENCHMARKS.md).
    pub awake: bool,
    pub configs: Vec<Repl>,
    pub parts: Vec<String>,
}

impl Settings {
    pub fn from_env() -> Settings {
        let quick = std::env::var("REGISTER_QUICK").is_ok_and(|v| v == "1");
        let nproc: usize = sh("nproc").parse().unwrap_or(1);
        let configs = std::env::var("REGISTER_CONFIGS")
            .unwrap_or_else(|_| {
                "none,sersync-1,sersync-2,sersync-journal-1,dmq-1,dmq-2".to_string()
            })
            .split(',')
            .map(|s| Repl::parse(s.trim()).unwrap_or_else(|| panic!("unknown configuration {s:?}")))
            .collect();
        Settings {
            runs: env_or("REGISTER_RUNS", if quick { 1 } else { 3 }),
            burst_n: env_or("REGISTER_BURST_N", if quick { 10_000 } else { 50_000 }),
            rate_n: env_or("REGISTER_RATE_N", if quick { 10_000 } else { 50_000 }),
            rate: env_or("REGISTER_RATE", 3000),
            window: env_or("REGISTER_WINDOW", 20),
            m64_n: env_or("REGISTER_M64_N", 20_000),
            catchup_n: env_or("REGISTER_CATCHUP_N", if quick { 20_000 } else { 100_000 }),
            children: env_or("REGISTER_CHILDREN", 4),
            db_mode: env_or("REGISTER_DB_MODE", 0),
            hash_size: env_or("REGISTER_HASH_SIZE", 14),
            shm_mb: env_or("REGISTER_SHM_MB", 1024),
            probe_every: Duration::from_millis(env_or("REGISTER_PROBE_MS", 20)),
            converge_timeout: Duration::from_secs(env_or("REGISTER_CONVERGE_TIMEOUT_S", 60)),
            pin: env_or("REGISTER_PIN", u8::from(nproc >= 2)) == 1 && nproc >= 2,
            awake: env_or("REGISTER_AWAKE", 1u8) == 1,
            configs,
            parts: std::env::var("REGISTER_PARTS")
                .unwrap_or_else(|_| "load,m64,catchup".into())
                .split(',')
                .map(|s| s.trim().to_string())
                .collect(),
        }
    }

    pub fn part(&self, p: &str) -> bool {
        self.parts.iter().any(|x| x == p)
    }

    /// The configurations of `candidates` this run measures.
    pub fn chosen(&self, candidates: &[Repl]) -> Vec<Repl> {
        candidates
            .iter()
            .copied()
            .filter(|r| self.configs.contains(r))
            .collect()
    }
}

/// What replicates node 1's registrations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Repl {
    None,
    Sersync { peers: usize, journal: bool },
    Dmq { peers: usize },
}

impl Repl {
    const SERSYNC_1: Repl = Repl::Sersync {
        peers: 1,
        journal: false,
    };
    const DMQ_1: Repl = Repl::Dmq { peers: 1 };
    /// What the m64 part measures (those of them REGISTER_CONFIGS names).
    pub const M64_PART: [Repl; 3] = [Repl::None, Repl::SERSYNC_1, Repl::DMQ_1];
    /// What the catch-up part measures (those of them REGISTER_CONFIGS names).
    pub const CATCHUP_PART: [Repl; 2] = [Repl::SERSYNC_1, Repl::DMQ_1];

    pub fn parse(s: &str) -> Option<Repl> {
        Some(match s {
            "none" => Repl::None,
            "sersync-1" => Repl::SERSYNC_1,
            "sersync-2" => Repl::Sersync {
                peers: 2,
                journal: false,
            },
            "sersync-journal-1" => Repl::Sersync {
                peers: 1,
                journal: true,
            },
            "sersync-journal-2" => Repl::Sersync {
                peers: 2,
                journal: true,
            },
            "dmq-1" => Repl::DMQ_1,
            "dmq-2" => Repl::Dmq { peers: 2 },
            _ => return None,
        })
    }

    pub fn label(self) -> String {
        match self {
            Repl::None => "none".into(),
            Repl::Sersync { peers, journal } => {
                format!("sersync{}-{peers}", if journal { "-journal" } else { "" })
            }
            Repl::Dmq { peers } => format!("dmq-{peers}"),
        }
    }

    pub fn peers(self) -> usize {
        match self {
            Repl::None => 0,
            Repl::Sersync { peers, .. } | Repl::Dmq { peers } => peers,
        }
    }

    pub fn nodes(self) -> usize {
        self.peers() + 1
    }
}
