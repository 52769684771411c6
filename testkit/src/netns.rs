//! Network namespaces for partition tests: real processes on a small network the test can cut
//! and heal.
//!
//! A [`Net`] of n namespaces looks like this (`X` is a subnet byte unique on the host):
//!
//! ```text
//!   root namespace (the test)        hub namespace `<prefix>h`          namespace i `<prefix>n<i>`
//!   <prefix>r  10.213.X.1/24  ──veth──  uplink ─┐
//!                                               br0 ── p<i>  ──veth──  eth0  10.213.X.(10+i)/24
//! ```
//!
//! The bridge lives in a namespace of its own, not in the root namespace: with `br_netfilter`
//! loaded (Docker loads it), frames crossing a bridge go through the iptables `FORWARD` chain of
//! the bridge's namespace, and Docker sets that chain's policy to `DROP`. The hub namespace has
//! no firewall rules, so nothing global has to be changed; the root namespace is just one more
//! host on the segment (no forwarding there).
//!
//! A partition is an nftables table (`inet switchyard_partition`) inside each namespace that
//! drops *input* from the addresses of the other groups. Both sides drop, so both directions
//! are cut; nothing is dropped on output because a dropped output packet fails the sender's
//! `send` with `EPERM`, which a real partition never does. Dropped, not rejected: connects time
//! out and established TCP connections stall, then resume after [`Net::heal`].

use std::{
    ffi::OsStr,
    fmt,
    fs::{File, OpenOptions},
    io::{self, Write},
    net::Ipv4Addr,
    path::Path,
    process::{Command, ExitStatus, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use nix::{
    fcntl::{Flock, FlockArg},
    sys::signal::{Signal, kill},
    unistd::Pid,
};

/// The environment variable that turns "namespaces are not available" from a test failure into
/// a skip (see [`netns_or_skip`]).
pub const SKIP_ENV: &str = "SWITCHYARD_SKIP_NETNS";

/// The nftables table a partition lives in, inside each namespace.
const TABLE: &str = "inet switchyard_partition";

/// Serialises the choice of subnets between the nets of every process on the host (a subnet is
/// free until its address is on the root link).
const LOCK_FILE: &str = "/run/switchyard-netns.lock";

/// Namespaces per net: their addresses are .10 to .250.
const MAX_NAMESPACES: usize = 241;

/// Numbers the nets of this process (their names and, mixed with the pid, their first subnet
/// guess).
static NEXT_NET: AtomicU32 = AtomicU32::new(0);

/// What went wrong setting up, changing or removing a [`Net`].
#[derive(Debug)]
pub enum NetError {
    /// A command could not be run (not installed, or its pipes failed).
    Io { command: String, error: io::Error },
    /// A command exited with a failure status.
    Failed {
        command: String,
        status: ExitStatus,
        stderr: String,
    },
    /// The lock file that serialises the choice of subnets could not be opened or locked.
    Lock(io::Error),
    /// Every /24 of 10.213.0.0/16 overlaps an address on this host.
    NoFreeSubnet,
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io { command, error } => write!(f, "`{command}` could not run: {error}"),
            Self::Failed {
                command,
                status,
                stderr,
            } => write!(f, "`{command}` failed ({status}): {stderr}"),
            Self::Lock(error) => write!(f, "locking {LOCK_FILE}: {error}"),
            Self::NoFreeSubnet => write!(f, "every /24 of 10.213.0.0/16 is in use on this host"),
        }
    }
}

impl std::error::Error for NetError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { error, .. } | Self::Lock(error) => Some(error),
            Self::Failed { .. } | Self::NoFreeSubnet => None,
        }
    }
}

/// n network namespaces on one bridged /24, reachable from the test process; see the module
/// documentation. Dropping it deletes the namespaces and links (best effort) but kills nothing:
/// stop the processes started with [`Net::command`] first, or they live on, disconnected.
pub struct Net {
    /// `sy<pid>x<counter>`: every name this net creates starts with it (see [`cleanup_stale`]).
    prefix: String,
    /// The namespaces' names, by index.
    namespaces: Vec<String>,
    /// `X` in 10.213.X.0/24.
    subnet: u8,
}

impl Net {
    /// Whether namespaces can be made here (root, `ip` and `nft` installed); the reason if not.
    pub fn available() -> Result<(), String> {
        if !nix::unistd::geteuid().is_root() {
            return Err("network namespaces need root, and this process is not root".into());
        }
        for (program, arg, package) in [("ip", "-V", "iproute2"), ("nft", "--version", "nftables")]
        {
            run(program, &[arg], None)
                .map_err(|error| format!("{error} (Debian package `{package}`)"))?;
        }
        Ok(())
    }

    /// Creates `n` namespaces (at most 241) on a fresh bridge, after removing what crashed
    /// earlier runs left behind ([`cleanup_stale`]).
    pub fn new(n: usize) -> Result<Net, NetError> {
        assert!(
            n <= MAX_NAMESPACES,
            "a net holds at most {MAX_NAMESPACES} namespaces"
        );
        cleanup_stale()?;
        let pid = std::process::id();
        // Wrapped so the root link's name, `sy<pid>x<counter>r`, fits Linux's 15 characters.
        let counter = NEXT_NET.fetch_add(1, Ordering::Relaxed) % 10_000;
        let prefix = format!("sy{pid}x{counter}");
        let _lock = lock()?;
        let subnet = free_subnet(pid.wrapping_mul(31).wrapping_add(counter))?;
        let net = Net {
            namespaces: (0..n).map(|i| format!("{prefix}n{i}")).collect(),
            prefix,
            subnet,
        };
        // On failure `net` is dropped here, which removes whatever was made.
        net.build()?;
        Ok(net)
    }

    fn build(&self) -> Result<(), NetError> {
        let (hub, root_link) = (self.hub(), self.root_link());
        let root_addr = format!("{}/24", self.root_addr());
        ip(&["netns", "add", &hub])?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        ip(&[
            "link", "add", &root_link, "type", "veth", "peer", "name", "uplink", "netns", &hub,
        ])?;
        ip(&["-n", &hub, "link", "set", "uplink", "master", "br0", "up"])?;
        ip(&["addr", "add", &root_addr, "dev", &root_link])?;
        ip(&["link", "set", &root_link, "up"])?;
        for (i, ns) in self.namespaces.iter().enumerate() {
            let port = format!("p{i}");
            let addr = format!("{}/24", self.addr(i));
            ip(&["netns", "add", ns])?;
            ip(&[
                "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                ns,
            ])?;
            ip(&["-n", &hub, "link", "set", &port, "master", "br0", "up"])?;
            ip(&["-n", ns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// The address of namespace `i`: 10.213.X.(10+i).
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        assert!(i < self.namespaces.len(), "no namespace {i} in this net");
        Ipv4Addr::new(10, 213, self.subnet, 10 + i as u8)
    }

    /// The address of the test process (root namespace) on this net, 10.213.X.1: where
    /// processes in the namespaces reach servers the test runs itself.
    pub fn root_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.subnet, 1)
    }

    /// The name of namespace `i` (for `ip netns exec` and `ip -n`).
    pub fn name(&self, i: usize) -> &str {
        &self.namespaces[i]
    }

    /// A command that runs `program` inside namespace `i` (`ip netns exec <name> <program>`,
    /// which execs: the child's pid is the program's). Add arguments, environment and stdio,
    /// then spawn it; it is the caller's to kill.
    pub fn command(&self, i: usize, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", self.name(i)]).arg(program);
        command
    }

    /// Cuts every link between namespaces in different groups, both directions, TCP and UDP
    /// alike (packets are dropped, not refused). Namespaces in no group keep every link, and the
    /// test process reaches every namespace. Replaces the previous partition. IPv4 only, as
    /// are the net's addresses.
    pub fn partition(&self, groups: &[&[usize]]) -> Result<(), NetError> {
        let mut listed = groups.concat();
        let total = listed.len();
        listed.sort_unstable();
        listed.dedup();
        assert!(
            listed.len() == total && listed.last().is_none_or(|&i| i < self.namespaces.len()),
            "groups must name namespaces of this net, each at most once: {groups:?}"
        );
        let group_of = |i: usize| groups.iter().position(|group| group.contains(&i));
        for i in 0..self.namespaces.len() {
            let blocked: Vec<String> = match group_of(i) {
                None => Vec::new(),
                Some(own) => (0..self.namespaces.len())
                    .filter(|&j| group_of(j).is_some_and(|other| other != own))
                    .map(|j| self.addr(j).to_string())
                    .collect(),
            };
            self.set_blocked(i, &blocked)?;
        }
        Ok(())
    }

    /// Cuts namespace `i` off from every other namespace (not from the test process).
    pub fn isolate(&self, i: usize) -> Result<(), NetError> {
        let rest: Vec<usize> = (0..self.namespaces.len()).filter(|&j| j != i).collect();
        self.partition(&[&[i], &rest])
    }

    /// Restores every link [`Net::partition`] cut.
    pub fn heal(&self) -> Result<(), NetError> {
        self.partition(&[])
    }

    /// Replaces namespace `i`'s partition table with one dropping input from `blocked` (no
    /// table when empty). Creating the table before deleting it makes the delete never fail.
    fn set_blocked(&self, i: usize, blocked: &[String]) -> Result<(), NetError> {
        let mut ruleset = format!("table {TABLE} {{}}\ndelete table {TABLE}\n");
        if !blocked.is_empty() {
            ruleset += &format!(
                "table {TABLE} {{\n  chain input {{\n    type filter hook input priority filter; policy accept;\n    ip saddr {{ {} }} drop\n  }}\n}}\n",
                blocked.join(", ")
            );
        }
        let exec = ["netns", "exec", self.name(i), "nft", "-f", "-"];
        run("ip", &exec, Some(&ruleset)).map(drop)
    }

    fn hub(&self) -> String {
        format!("{}h", self.prefix)
    }

    fn root_link(&self) -> String {
        format!("{}r", self.prefix)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // The root link and the hub first: that takes the bridge and every veth with it.
        let removals = [
            remove_link(&self.root_link()),
            remove_namespace(&self.hub()),
        ]
        .into_iter()
        .chain(self.namespaces.iter().map(|ns| remove_namespace(ns)));
        for result in removals {
            if let Err(error) = result {
                eprintln!("netns: removing {}: {error}", self.prefix);
            }
        }
    }
}

/// A [`Net`] of `n` namespaces, or `None` when namespaces are not available here and
/// `SWITCHYARD_SKIP_NETNS=1` is set (the reason is printed). Panics with the reason when they
/// are not available and the variable is not set, and when creating them fails: a test that
/// needs namespaces fails rather than passing without having run.
pub fn netns_or_skip(n: usize) -> Option<Net> {
    if let Err(reason) = Net::available() {
        if std::env::var_os(SKIP_ENV).is_some_and(|value| value == "1") {
            eprintln!("skipped: network namespaces are not available: {reason} ({SKIP_ENV}=1)");
            return None;
        }
        panic!(
            "network namespaces are not available: {reason}; set {SKIP_ENV}=1 to skip the tests that need them"
        );
    }
    match Net::new(n) {
        Ok(net) => Some(net),
        Err(error) => panic!("creating {n} network namespaces: {error}"),
    }
}

/// Removes the namespaces and root links of earlier runs of this harness whose process is no
/// longer alive (names `sy<pid>x<counter>…`), killing the processes still running in those
/// namespaces. Safe while other test processes run: their pids are alive. Returns how many
/// namespaces and links it removed.
pub fn cleanup_stale() -> Result<usize, NetError> {
    let stale = |name: &&str| owner_pid(name).is_some_and(|pid| !is_alive(pid));
    let namespaces = ip(&["netns", "list"])?;
    let links = ip(&["-o", "link", "show"])?;
    let mut removed = 0;
    for ns in namespaces
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(stale)
    {
        // Processes the dead owner left running in it: nobody else will ever stop them.
        let pids = ip(&["netns", "pids", ns]).unwrap_or_default();
        for pid in pids.split_whitespace().filter_map(|pid| pid.parse().ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        remove_namespace(ns)?;
        removed += 1;
    }
    // `12: syNx0r@if5: <...>`: the name ends at the `@` of a veth.
    let link_names = links
        .lines()
        .filter_map(|l| l.split(':').nth(1)?.trim().split('@').next());
    for link in link_names.filter(stale) {
        remove_link(link)?;
        removed += 1;
    }
    Ok(removed)
}

/// The pid in a name this harness made: `sy<pid>x<counter>` then `h`, `r` or `n<i>`.
fn owner_pid(name: &str) -> Option<u32> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let (pid, rest) = name.strip_prefix("sy")?.split_once('x')?;
    let kind_at = rest.find(|c: char| !c.is_ascii_digit())?;
    let (counter, kind) = rest.split_at(kind_at);
    let kind_ok = kind == "h" || kind == "r" || kind.strip_prefix('n').is_some_and(digits);
    (digits(pid) && digits(counter) && kind_ok)
        .then(|| pid.parse().ok())
        .flatten()
}

fn is_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Deletes a namespace; one already gone (another process cleaning up too) is no error.
fn remove_namespace(name: &str) -> Result<(), NetError> {
    match ip(&["netns", "del", name]) {
        Err(_) if !Path::new("/run/netns").join(name).exists() => Ok(()),
        result => result.map(drop),
    }
}

/// Deletes a link of the root namespace (and its veth peer); one already gone is no error.
fn remove_link(name: &str) -> Result<(), NetError> {
    match ip(&["link", "del", name]) {
        Err(_) if !Path::new("/sys/class/net").join(name).exists() => Ok(()),
        result => result.map(drop),
    }
}

/// Takes the host-wide lock on subnet choice; released when the returned guard drops.
fn lock() -> Result<Flock<File>, NetError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK_FILE)
        .map_err(NetError::Lock)?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| NetError::Lock(errno.into()))
}

/// The first `X`, from `start` on, whose 10.213.X.0/24 overlaps no address on this host.
fn free_subnet(start: u32) -> Result<u8, NetError> {
    let taken: Vec<(Ipv4Addr, u8)> = ip(&["-4", "-o", "addr", "show"])?
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            words.find(|&w| w == "inet")?;
            let (addr, len) = words.next()?.split_once('/')?;
            Some((addr.parse().ok()?, len.parse().ok()?))
        })
        .collect();
    (0..256)
        .map(|step| ((start + step) % 256) as u8)
        .find(|&x| {
            let ours = Ipv4Addr::new(10, 213, x, 0);
            !taken
                .iter()
                .any(|&(addr, len)| overlaps(ours, 24, addr, len))
        })
        .ok_or(NetError::NoFreeSubnet)
}

/// Whether networks `a/a_len` and `b/b_len` share an address.
fn overlaps(a: Ipv4Addr, a_len: u8, b: Ipv4Addr, b_len: u8) -> bool {
    let len = a_len.min(b_len).min(32);
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    u32::from(a) & mask == u32::from(b) & mask
}

fn ip(args: &[&str]) -> Result<String, NetError> {
    run("ip", args, None)
}

/// Runs `program args` to completion, feeding it `input`: its stdout, or an error naming the
/// command and carrying its stderr.
fn run(program: &str, args: &[&str], input: Option<&str>) -> Result<String, NetError> {
    let command = || format!("{program} {}", args.join(" "));
    let io_error = |error| NetError::Io {
        command: command(),
        error,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_error)?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        // A write error means the command exited early; its status and stderr tell why.
        let _ = stdin.write_all(input.as_bytes());
    }
    let output = child.wait_with_output().map_err(io_error)?;
    if !output.status.success() {
        return Err(NetError::Failed {
            command: command(),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_reads_only_names_this_harness_makes() {
        let check =
            |name: &str, expected: Option<u32>| assert_eq!(owner_pid(name), expected, "{name}");
        check("sy123x0h", Some(123));
        check("sy123x0r", Some(123));
        check("sy123x45n2", Some(123));
        check("sy123x45n", None);
        check("sy123x45q", None);
        check("sy123x45", None);
        check("syx0h", None);
        check("sy12ax0h", None);
        check("eth0", None);
        check("docker0", None);
    }

    #[test]
    fn overlaps_compares_the_shorter_prefix() {
        let check = |a: [u8; 4], a_len, b: [u8; 4], b_len, expected| {
            assert_eq!(
                overlaps(a.into(), a_len, b.into(), b_len),
                expected,
                "{a:?}/{a_len} {b:?}/{b_len}"
            );
        };
        check([10, 213, 5, 0], 24, [10, 213, 5, 77], 24, true);
        check([10, 213, 5, 0], 24, [10, 213, 6, 1], 24, false);
        check([10, 213, 5, 0], 24, [10, 0, 0, 1], 8, true);
        check([10, 213, 5, 0], 24, [10, 213, 5, 9], 32, true);
        check([10, 213, 5, 0], 24, [192, 0, 2, 2], 24, false);
        check([10, 213, 5, 0], 24, [0, 0, 0, 0], 0, true);
    }
}
