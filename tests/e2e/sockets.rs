//! Socket creation in jobs: the kinds on `[sockets] allow` work, everything else (raw,
//! packet, ICMP ping, SCTP, vsock, XDP, other netlink) fails with EPERM and is counted
//! and recorded on the job. Each refusal is paired with allowed kinds in the same job.
use std::process::Command;

use tollgate::record::EventRecord;
use tollgate_e2e::{Agent, netns::NetnsHost, output, require_root, stderr, stdout};

/// (name, family, type, protocol) as python's socket module spells them.
const KINDS: &[(&str, &str)] = &[
    ("tcp4", "socket.AF_INET, socket.SOCK_STREAM, 0"),
    ("tcp6", "socket.AF_INET6, socket.SOCK_STREAM, 0"),
    ("udp4", "socket.AF_INET, socket.SOCK_DGRAM, 0"),
    ("udp6", "socket.AF_INET6, socket.SOCK_DGRAM, 0"),
    ("unix", "socket.AF_UNIX, socket.SOCK_STREAM, 0"),
    ("unix_dgram", "socket.AF_UNIX, socket.SOCK_DGRAM, 0"),
    ("netlink_route", "socket.AF_NETLINK, socket.SOCK_RAW, 0"),
    (
        "raw_icmp",
        "socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP",
    ),
    (
        "raw6_icmp",
        "socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6",
    ),
    (
        "ping4",
        "socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP",
    ),
    (
        "ping6",
        "socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_ICMPV6",
    ),
    (
        "packet",
        "socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3)",
    ),
    (
        "packet_dgram",
        "socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(3)",
    ),
    ("sctp", "socket.AF_INET, socket.SOCK_STREAM, 132"),
    ("vsock", "40, socket.SOCK_STREAM, 0"),
    ("xdp", "44, socket.SOCK_RAW, 0"),
    ("netlink_audit", "socket.AF_NETLINK, socket.SOCK_RAW, 9"),
];

const ALLOWED_BY_DEFAULT: &[&str] = &[
    "tcp4",
    "tcp6",
    "udp4",
    "udp6",
    "unix",
    "unix_dgram",
    "netlink_route",
];

/// The kinds that need BPF LSM (not IPv4 or IPv6).
const OTHER_FAMILIES: &[&str] = &[
    "unix",
    "unix_dgram",
    "netlink_route",
    "packet",
    "packet_dgram",
    "vsock",
    "xdp",
    "netlink_audit",
];

/// The probe creates each kind but `skip`.
fn probe_script(skip: &[&str]) -> String {
    let mut script = String::from("import socket\n");
    for (name, args) in KINDS.iter().filter(|(name, _)| !skip.contains(name)) {
        script.push_str(&format!(
            "try:\n    s = socket.socket({args}); s.close(); print('{name} ok')\n\
             except OSError as e:\n    print('{name} errno', e.errno)\n"
        ));
    }
    script
}

/// Runs the probe in `netns` (where ping sockets are open to every group), directly or
/// through `via` (a command prefix that puts it in a job), creating every kind but `skip`.
fn probe(
    via: Option<&Agent>,
    netns: &str,
    labels: &[(&str, &str)],
    skip: &[&str],
) -> Vec<(String, String)> {
    let script = probe_script(skip);
    // nsenter, not `ip netns exec`: ip opens a netlink socket of its own, which a job
    // whose allow list lacks netlink cannot.
    let net = format!("--net=/run/netns/{netns}");
    let cmd = ["nsenter", &net, "python3", "-c", &script];
    let out = match via {
        Some(agent) => agent.run_job(labels, &cmd),
        None => output(Command::new(cmd[0]).args(&cmd[1..])),
    };
    assert!(out.status.success(), "probe: {}", stderr(&out));
    stdout(&out)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The kinds a job may not create that only BPF LSM refuses: where it is not `covered`,
/// the probe must not create them in a job.
fn unrefusable(covered: bool, allowed: &[&str]) -> Vec<&'static str> {
    if covered {
        return Vec::new();
    }
    OTHER_FAMILIES
        .iter()
        .copied()
        .filter(|kind| !allowed.contains(kind))
        .collect()
}

fn result<'a>(results: &'a [(String, String)], name: &str) -> &'a str {
    results
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no result for {name}: {results:?}"))
}

fn events(agent: &Agent, job: Option<&str>) -> Vec<EventRecord> {
    let args: Vec<&str> = job.map(|j| ["--job", j]).into_iter().flatten().collect();
    agent.events(&args)
}

fn open_ping_sockets(netns: &str) {
    let out = output(Command::new("ip").args([
        "netns",
        "exec",
        netns,
        "sysctl",
        "-qw",
        "net.ipv4.ping_group_range=0 2147483647",
    ]));
    assert!(out.status.success(), "sysctl: {}", stderr(&out));
}

#[test]
fn a_job_creates_only_the_sockets_on_the_allow_list() {
    if !require_root() {
        return;
    }
    let host = NetnsHost::create(11);
    open_ping_sockets(&host.name);
    let agent = Agent::start();
    // Without BPF LSM (the agent says so), other families are detected, not refused:
    // see the next test.
    let covered = agent.status().coverage.socket_families;
    // The agent reports the kernel it probed, and names what it lacks where it does.
    let status = agent.status();
    assert!(
        !matches!(status.kernel.release.as_str(), "" | "unknown"),
        "{status:?}"
    );
    match agent.gap("socket_families") {
        Some(reason) => {
            assert!(!covered, "{reason}");
            assert!(reason.contains("lsm="), "{reason}");
            eprintln!("other families are detected, not refused: {reason}");
        }
        None => assert!(covered, "{status:?}"),
    }
    // Where the kernel's active LSMs include bpf (read here from securityfs, which the
    // agent mounts where nothing was), the agent tried the program itself: a gap then
    // is the kernel refusing it, never the agent missing the list.
    let active = std::fs::read_to_string("/sys/kernel/security/lsm")
        .expect("the agent mounts securityfs where nothing was, and the kernel lists its LSMs");
    if active.trim().split(',').any(|lsm| lsm == "bpf")
        && kernel_at_least(&status.kernel.release, 6, 0)
        && let Some(reason) = agent.gap("socket_families")
    {
        assert!(
            reason.contains("socket_post_create: eBPF program"),
            "bpf is an active LSM ({}), yet the agent did not try its program: {reason}",
            active.trim()
        );
    }
    // `tollgate status` (TOML) says the same.
    let plain = tollgate_e2e::output(agent.tollgate().arg("status"));
    let text = String::from_utf8_lossy(&plain.stdout);
    assert!(
        plain.status.success(),
        "{}",
        String::from_utf8_lossy(&plain.stderr)
    );
    assert!(
        text.contains("[kernel]") && text.contains("release = "),
        "{text}"
    );
    assert_eq!(
        text.contains("feature = \"socket_families\""),
        !covered,
        "{text}"
    );

    // Control: outside a job, as root, every kind this kernel has is created.
    let direct = probe(None, &host.name, &[], &[]);
    for name in ["raw_icmp", "ping4", "ping6", "packet", "netlink_audit"] {
        assert_eq!(result(&direct, name), "ok", "{name} directly: {direct:?}");
    }

    let labels = [("repo", "acme/sneaky")];
    // Without BPF LSM the probe leaves out the other families it may not create: the
    // scan would kill it for them (the next test), racing what it prints.
    let skip = unrefusable(covered, ALLOWED_BY_DEFAULT);
    let in_job = probe(Some(&agent), &host.name, &labels, &skip);
    let eperm = format!("errno {}", libc::EPERM);
    let mut refused = Vec::new();
    for (name, _) in KINDS.iter().filter(|(name, _)| !skip.contains(name)) {
        let here = result(&direct, name);
        let there = result(&in_job, name);
        if ALLOWED_BY_DEFAULT.contains(name) {
            assert_eq!(there, here, "{name}: allowed kinds behave as outside a job");
        } else if here != "ok" {
            // The kernel lacks it (no sctp or vsock module): the same error in a job.
            assert_eq!(there, here, "{name}");
        } else if covered || !OTHER_FAMILIES.contains(name) {
            assert_eq!(there, eperm, "{name} in a job: {in_job:?}");
            refused.push(*name);
        }
    }
    assert!(refused.len() >= 4, "refused: {refused:?}");

    let recorded = tollgate_e2e::wait_for(
        "the refusals on record",
        std::time::Duration::from_secs(10),
        || {
            let events = events(&agent, None);
            (events.len() >= refused.len()).then_some(events)
        },
    );
    assert_eq!(recorded.len(), refused.len(), "{recorded:#?}");
    // All on the one job that made them.
    let job = recorded[0]
        .job_id
        .as_deref()
        .expect("attributed to the job");
    assert!(
        recorded.iter().all(|e| e.job_id.as_deref() == Some(job)),
        "{recorded:#?}"
    );
    assert_eq!(events(&agent, Some(job)).len(), refused.len());
    for event in &recorded {
        assert_eq!(event.kind, "socket_refused");
        assert_eq!(event.action, "refused");
        assert_eq!(event.comm, "python3");
        assert_eq!(event.uid, 0);
    }
    let details: Vec<&str> = recorded.iter().map(|e| e.detail.as_str()).collect();
    for expected in ["inet/raw/icmp", "inet/dgram/icmp", "inet6/dgram/icmpv6"] {
        assert!(details.contains(&expected), "{expected} in {details:?}");
    }
    if covered {
        for expected in ["packet/raw/768", "packet/dgram/768", "netlink/raw/audit"] {
            assert!(details.contains(&expected), "{expected} in {details:?}");
        }
    }
    assert_eq!(
        agent.metric("tollgate_bpf_events_total{event=\"refused_socket\"}"),
        refused.len() as f64
    );
    // No connection was made, so none is on record.
    assert!(agent.sessions(None).is_empty());
}

#[test]
fn the_allow_list_is_configurable() {
    if !require_root() {
        return;
    }
    let host = NetnsHost::create(12);
    open_ping_sockets(&host.name);
    let agent = Agent::start_with(
        "[sockets]\nallow = [\"inet/stream/tcp\", \"inet/dgram/icmp\", \"packet/raw\", \"unix\"]\n",
    );
    let covered = agent.status().coverage.socket_families;
    let skip = unrefusable(covered, &["unix", "unix_dgram", "packet"]);
    let in_job = probe(Some(&agent), &host.name, &[("repo", "acme/ops")], &skip);
    let eperm = format!("errno {}", libc::EPERM);
    assert_eq!(result(&in_job, "tcp4"), "ok");
    assert_eq!(result(&in_job, "ping4"), "ok", "now allowed");
    assert_eq!(result(&in_job, "unix"), "ok");
    assert_eq!(result(&in_job, "udp4"), eperm, "no longer allowed");
    assert_eq!(result(&in_job, "tcp6"), eperm, "not listed");
    assert_eq!(result(&in_job, "raw_icmp"), eperm);
    if covered {
        assert_eq!(result(&in_job, "packet"), "ok", "now allowed");
        assert_eq!(result(&in_job, "packet_dgram"), eperm, "only SOCK_RAW");
        assert_eq!(result(&in_job, "netlink_route"), eperm, "not listed");
    }

    // A bad entry is refused with the file, line and key.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.toml");
    std::fs::write(
        &path,
        "[sockets]\nallow = [\"inet/stream/tcp\", \"packet/rawr\"]\n",
    )
    .expect("config");
    let bad = output(
        Command::new(tollgate_e2e::agent::tollgate_bin())
            .args(["agent", "--check-config", "--config"])
            .arg(&path),
    );
    assert!(!bad.status.success());
    let message = stderr(&bad);
    assert!(message.contains("agent.toml:2:"), "{message}");
    assert!(message.contains("sockets.allow"), "{message}");
    assert!(message.contains("unknown socket type `rawr`"), "{message}");
}

/// A python script that opens `kind`, says so, and holds it for `hold` seconds, printing
/// `survived` if nothing stopped it.
fn holder(args: &str, hold: u32) -> String {
    format!(
        "import socket, sys, time\n\
         try:\n    s = socket.socket({args})\n\
         except OSError as e:\n    print('errno', e.errno, flush=True); sys.exit(0)\n\
         print('open', flush=True)\n\
         time.sleep({hold})\n\
         print('survived', flush=True)\n"
    )
}

#[test]
fn a_refused_socket_the_kernel_cannot_refuse_is_found_and_its_process_killed() {
    if !require_root() {
        return;
    }
    let agent = Agent::start();
    let covered = agent.status().coverage.socket_families;
    let labels = [("repo", "acme/sneaky")];
    // Allowed control: a process holding a unix and a netlink socket lives on.
    let kept = agent.run_job(
        &labels,
        &[
            "python3",
            "-c",
            &format!(
                "{}\n",
                holder("socket.AF_NETLINK, socket.SOCK_RAW, 0", 2).replace(
                    "s = socket",
                    "u = socket.socket(socket.AF_UNIX); s = socket"
                )
            ),
        ],
    );
    assert_eq!(stdout(&kept), "open\nsurvived\n", "{}", stderr(&kept));

    let packet = agent.run_job(
        &labels,
        &[
            "python3",
            "-c",
            &holder("socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3)", 5),
        ],
    );
    let events = tollgate_e2e::wait_for(
        "the packet socket on record",
        std::time::Duration::from_secs(10),
        || {
            let events = events(&agent, None);
            (!events.is_empty()).then_some(events)
        },
    );
    assert_eq!(events.len(), 1, "{events:#?}");
    let event = &events[0];
    // (The protocol reads back as 0 from a packet socket; the LSM hook sees 768.)
    assert!(event.detail.starts_with("packet/raw/"), "{event:?}");
    assert_eq!(event.comm, "python3");
    if covered {
        // Refused at creation.
        assert_eq!(stdout(&packet), format!("errno {}\n", libc::EPERM));
        assert_eq!(event.kind, "socket_refused");
        assert_eq!(event.action, "refused");
    } else {
        // Created, found within the scan interval, and the process killed.
        assert_eq!(stdout(&packet), "open\n", "{}", stderr(&packet));
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(packet.status.signal(), Some(libc::SIGKILL));
        assert_eq!(event.kind, "socket_detected");
        assert_eq!(event.action, "killed");
        assert_eq!(
            agent.metric("tollgate_job_events_total{action=\"killed\",kind=\"socket_detected\"}"),
            1.0
        );
    }
    assert!(event.job_id.is_some());
}

/// Whether `release` (`uname -r`) is at least `major.minor`.
fn kernel_at_least(release: &str, major: u32, minor: u32) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    found >= (major, minor)
}
