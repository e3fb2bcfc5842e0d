//! Several daemons, one leader: the lease in the control database, on a
//! real server (its clock, its sessions), from separate sessions standing
//! for separate daemons.

use std::time::{Duration, Instant};

use capra::catalog::lease::{self, Ask, Claimant};

use crate::support::cluster::{Cluster, Opts};
use crate::support::daemon::{wait_for, Daemon};
use crate::support::proxy::Proxy;
use crate::support::smtp::{mail_settings, Smtp};
use crate::support::{cluster, fixtures, load, Capra};

fn ask(held: i64, secs: f64) -> Ask {
    Ask {
        held,
        floor: 0,
        may_take: true,
        secs,
    }
}

#[test]
fn the_lease_is_taken_once_renewed_by_its_holder_and_taken_over_only_when_lost() {
    let c = Capra::install(cluster::a());
    let (mut one, mut two) = (cluster::a().client(&c.ctl_db), cluster::a().client(&c.ctl_db));
    let a = Claimant {
        id: "daemon-a",
        host: "h1",
        pid: 11,
    };
    let b = Claimant {
        id: "daemon-b",
        host: "h2",
        pid: 22,
    };

    let held = lease::take_or_renew(&mut one, &a, ask(0, 30.0))
        .unwrap()
        .expect("a free lease is taken");
    assert_eq!(held.epoch, 1);
    assert_eq!(
        lease::take_or_renew(&mut two, &b, ask(0, 30.0)).unwrap(),
        None,
        "held and alive"
    );
    let again = lease::take_or_renew(&mut one, &a, ask(1, 30.0))
        .unwrap()
        .expect("renewed");
    assert_eq!(again, held, "a renewal keeps the term");
    // Renew-only never takes.
    let only = Ask {
        may_take: false,
        ..ask(0, 30.0)
    };
    assert_eq!(lease::take_or_renew(&mut two, &b, only).unwrap(), None);

    // Expired by the server's clock: the standby takes a new term.
    lease::take_or_renew(&mut one, &a, ask(1, 0.3))
        .unwrap()
        .expect("renewed short");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let took = lease::take_or_renew(&mut two, &b, ask(0, 30.0))
        .unwrap()
        .expect("an expired lease is taken");
    assert_eq!(took.epoch, 2);
    // The old holder can renew nothing any more.
    assert_eq!(
        lease::take_or_renew(
            &mut one,
            &a,
            Ask {
                may_take: false,
                ..ask(1, 30.0)
            }
        )
        .unwrap(),
        None
    );

    // The holder's session gone (kill -9 of its daemon): taken at once,
    // long before the lease would expire.
    drop(two);
    let gone = std::time::Instant::now();
    let took = loop {
        if let Some(h) = lease::take_or_renew(&mut one, &a, ask(0, 30.0)).unwrap() {
            break h;
        }
        assert!(gone.elapsed().as_secs() < 5, "the dead holder's lease was not taken");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(took.epoch, 3);

    // A release frees it at once; a floor lifts the next term above every
    // fence seen (a control database that forgot the last term).
    assert!(lease::release(&mut one, &a, 3, "stop", 0).unwrap());
    let mut three = cluster::a().client(&c.ctl_db);
    let high = lease::take_or_renew(
        &mut three,
        &b,
        Ask {
            floor: 41,
            ..ask(0, 30.0)
        },
    )
    .unwrap()
    .unwrap();
    assert_eq!(high.epoch, 42);
    let l = lease::read(&mut three).unwrap();
    assert_eq!(
        l.holder.map(|h| (h.0, h.1, h.2)),
        Some(("daemon-b".into(), "h2".into(), 22))
    );
    assert!(l.left.is_some_and(|s| s > 20.0));
}

#[test]
fn two_standbys_racing_for_a_free_lease_get_one_leader() {
    let c = Capra::install(cluster::a());
    for round in 0..10 {
        let db = c.ctl_db.clone();
        // Every racer's session stays open until all have tried: a
        // holder whose session is gone may rightly be replaced.
        let start = std::sync::Arc::new(std::sync::Barrier::new(4));
        let end = std::sync::Arc::new(std::sync::Barrier::new(4));
        let winners: Vec<bool> = (0..4)
            .map(|i| {
                let (db, start, end) = (db.clone(), start.clone(), end.clone());
                std::thread::spawn(move || {
                    let mut s = cluster::a().client(&db);
                    let id = format!("d{round}-{i}");
                    let me = Claimant {
                        id: &id,
                        host: "h",
                        pid: i,
                    };
                    start.wait();
                    let won = lease::take_or_renew(&mut s, &me, ask(0, 30.0)).unwrap().is_some();
                    end.wait();
                    won
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        assert_eq!(winners.iter().filter(|w| **w).count(), 1, "round {round}: {winners:?}");
        // Free it for the next round (each racer's session is gone).
        cluster::a().exec(&c.ctl_db, "UPDATE capra.lease SET holder = NULL");
    }
}

#[test]
fn each_run_names_its_daemon_and_sync_on_the_databases_it_writes() {
    let (c, src, tgt) =
        crate::support::fixtures::synced("kidname", "CREATE TABLE t (id int PRIMARY KEY, v text)", &["t"], &[]);
    // An audit trigger on the target, firing even for a replica's writes.
    cluster::b().exec(
        &tgt,
        "CREATE TABLE audit (who text, at timestamptz DEFAULT clock_timestamp());
         CREATE FUNCTION note() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN INSERT INTO public.audit (who) VALUES (current_setting('application_name')); RETURN NULL; END $$;
         CREATE TRIGGER note AFTER INSERT OR UPDATE OR DELETE ON t FOR EACH ROW EXECUTE FUNCTION note();
         ALTER TABLE t ENABLE ALWAYS TRIGGER note;",
    );
    let d = c.start();
    cluster::a().exec(&src, "INSERT INTO t VALUES (1, 'a'), (2, 'b')");
    c.ok(&["kick", "s", "60"]);
    let who = cluster::b().query(&tgt, "SELECT DISTINCT who FROM audit");
    assert_eq!(who, vec![Some(format!("capra KID (pid {}) s", d.pid))]);
}

#[test]
fn a_raised_fence_ends_the_old_terms_open_writes_and_refuses_its_next_ones() {
    use capra::capture::fence::{self, Raised, Term};
    let db = cluster::b().create_db(&crate::support::unique("fenced"));
    cluster::b().exec(&db, "CREATE TABLE t (id int PRIMARY KEY)");
    let term = |epoch: i64, holder: &str| Term {
        installation: "inst".into(),
        epoch,
        holder: holder.into(),
    };
    let (old, new) = (term(1, "daemon-a"), term(2, "daemon-b"));
    let mut a = cluster::b().client(&db);
    fence::ensure(&mut a).unwrap();
    assert_eq!(
        fence::raise(&mut a, Box::new(cluster::b().client(&db)), &old, "h1", 1, 10_000).unwrap(),
        Raised::Ours
    );
    // The old leader is frozen with a write open.
    a.batch_execute(&format!("BEGIN; {}; INSERT INTO t VALUES (1)", fence::check_sql(&old)))
        .unwrap();
    // The new leader raises the fence: it does not wait for the frozen
    // one, it ends its transaction.
    let mut b = cluster::b().client(&db);
    let started = std::time::Instant::now();
    assert_eq!(
        fence::raise(&mut b, Box::new(cluster::b().client(&db)), &new, "h2", 2, 10_000).unwrap(),
        Raised::Ours
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(
        a.batch_execute("COMMIT").is_err(),
        "the old leader's write can never commit"
    );
    assert_eq!(
        cluster::b().query(&db, "SELECT count(*) FROM t"),
        vec![Some("0".into())]
    );
    // Its next write is refused at once, with the fence's SQLSTATE.
    let mut again = cluster::b().client(&db);
    let e = again
        .batch_execute(&format!("BEGIN; {}; INSERT INTO t VALUES (2)", fence::check_sql(&old)))
        .unwrap_err();
    assert!(fence::is_fenced(&e), "{e:?}");
    let _ = again.batch_execute("ROLLBACK");
    // The new term writes; the old one cannot raise the fence back.
    b.batch_execute(&format!(
        "BEGIN; {}; INSERT INTO t VALUES (3); COMMIT",
        fence::check_sql(&new)
    ))
    .unwrap();
    assert_eq!(
        fence::raise(&mut again, Box::new(cluster::b().client(&db)), &old, "h1", 1, 10_000).unwrap(),
        Raised::Above {
            epoch: 2,
            holder: "daemon-b".into()
        }
    );
    assert_eq!(
        fence::raise(&mut b, Box::new(cluster::b().client(&db)), &new, "h2", 2, 10_000).unwrap(),
        Raised::Ours
    );
}

// --- several daemons ------------------------------------------------------

/// The leading daemon's pid by the lease on `ctl` (None while no lease runs).
fn leader(ctl: &Cluster, c: &Capra) -> Option<i32> {
    ctl.query(
        &c.ctl_db,
        "SELECT pid::text FROM capra.lease WHERE holder IS NOT NULL AND lease_until > clock_timestamp()",
    )
    .into_iter()
    .next()
    .flatten()
    .and_then(|p| p.parse().ok())
}

fn epoch(ctl: &Cluster, c: &Capra) -> i64 {
    ctl.query(&c.ctl_db, "SELECT epoch::text FROM capra.lease")[0]
        .as_deref()
        .unwrap()
        .parse()
        .unwrap()
}

/// An audit of pgbench_accounts on a target, written when each writing
/// transaction commits (a deferred constraint trigger, firing for a
/// replica's writes too), with the writer's application_name; `sleep`
/// seconds per row keep capra's transactions open a little longer.
fn audit(cl: &Cluster, db: &str, sleep: f64) {
    cl.exec(
        db,
        &format!(
            "CREATE TABLE public.audit (app text, at timestamptz);
             CREATE FUNCTION public.audit_note() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN
                 INSERT INTO public.audit VALUES (current_setting('application_name'), clock_timestamp());
                 PERFORM pg_sleep({sleep});
                 RETURN NULL;
               END $$;
             CREATE CONSTRAINT TRIGGER audit_note AFTER INSERT OR UPDATE OR DELETE ON pgbench_accounts
               DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION public.audit_note();
             ALTER TABLE pgbench_accounts ENABLE ALWAYS TRIGGER audit_note;"
        ),
    );
}

/// Rows the audit holds from daemon `pid`'s runs.
fn writes_of(cl: &Cluster, db: &str, pid: i32) -> i64 {
    cl.query(
        db,
        &format!("SELECT count(*)::text FROM public.audit WHERE app LIKE 'capra KID (pid {pid}) %'"),
    )[0]
    .as_deref()
    .unwrap()
    .parse()
    .unwrap()
}

/// Fails unless every write of the old leader committed before the new
/// leader's first.
#[track_caller]
fn old_writes_end_before_new_ones(cl: &Cluster, db: &str, old: i32, new: i32) {
    let r = cl.query(
        db,
        &format!(
            "SELECT concat_ws(' | ',
                    max(at) FILTER (WHERE app LIKE 'capra KID (pid {old}) %'),
                    min(at) FILTER (WHERE app LIKE 'capra KID (pid {new}) %'),
                    coalesce(max(at) FILTER (WHERE app LIKE 'capra KID (pid {old}) %')
                               < min(at) FILTER (WHERE app LIKE 'capra KID (pid {new}) %'),
                             count(*) FILTER (WHERE app LIKE 'capra KID (pid {old}) %') = 0))
               FROM public.audit"
        ),
    );
    let line = r[0].clone().unwrap_or_default();
    println!("last write of the old leader | first of the new | in order (no old write counts): {line}");
    assert!(
        line.ends_with("| t"),
        "the old leader (pid {old}) wrote after the new one (pid {new}) began: {line}"
    );
}

/// Replication converged: one more run, then `capra compare` finds every
/// table identical (exit 0).
#[track_caller]
fn converged(c: &Capra, sync: &str, load: std::thread::JoinHandle<(bool, String)>) {
    let (ok, out) = load.join().unwrap();
    assert!(ok, "pgbench failed: {out}");
    c.ok(&["kick", sync, "120"]);
    let out = c.ok(&["compare", sync]);
    assert!(out.contains("identical"), "{out}");
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: plain kill(2).
    unsafe { libc::kill(pid, sig) };
}

#[test]
fn standbys_take_over_from_a_killed_leader_within_seconds_and_nothing_is_lost() {
    let a = cluster::a();
    let (c, src, _tgts) = fixtures::pgbench_sync(&[cluster::b()], &["onetimecopy=1"]);
    c.ok(&["set", "ha_lease=3"]);
    let smtp = Smtp::start();
    mail_settings(&c, smtp.port);
    let (s1, s2) = (c.sibling(), c.sibling());
    let homes = [&c, &s1, &s2];
    let first = c.start();
    c.ok(&["kick", "bench", "120"]);
    let second = s1.start();

    // Both listed; a third daemon on the same piddir is refused.
    let st = c.ok(&["status"]);
    assert!(
        st.contains(&format!("PID of capra daemon: {} (host", first.pid)) && st.contains("leader, lease left"),
        "{st}"
    );
    assert!(
        st.contains(&format!("Standby capra daemon: {} (host", second.pid)),
        "{st}"
    );
    let doc: serde_json::Value = serde_json::from_str(&c.ok(&["--json", "status"])).unwrap();
    let roles: Vec<(i64, String)> = doc["daemons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["pid"].as_i64().unwrap(), d["role"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(
        roles,
        vec![
            (first.pid as i64, "leader".to_string()),
            (second.pid as i64, "standby".to_string())
        ]
    );
    let err = s1.fails(&["start"], 1);
    assert!(err.contains("already running with piddir"), "{err}");

    // Under load, kill -9 whoever leads, three times; each killed daemon
    // comes back as a standby.
    let load = load::pgbench_for(a, src.clone(), 15, 200);
    let mut running: Vec<Option<Daemon<'_>>> = vec![Some(first), Some(second), None];
    let mut times = Vec::new();
    for round in 0..3 {
        std::thread::sleep(Duration::from_millis(1500));
        let old = leader(a, &c).expect("a leader");
        let i = running
            .iter()
            .position(|d| d.as_ref().is_some_and(|d| d.pid == old))
            .expect("the leader is one of ours");
        let t0 = Instant::now();
        running[i].as_ref().unwrap().kill9();
        wait_for(15, "a standby to take the lease", || {
            leader(a, &c).is_some_and(|p| p != old)
        });
        times.push(t0.elapsed().as_secs_f64());
        let new = leader(a, &c).unwrap();
        let j = running
            .iter()
            .position(|d| d.as_ref().is_some_and(|d| d.pid == new))
            .unwrap();
        homes[j].wait_for(10, "the takeover in the new leader's log", || {
            homes[j].log().contains(&format!("took over from pid {old} on"))
        });
        // The killed daemon's slot: a new standby (in the free one, if any).
        running[i] = None;
        let k = running.iter().position(|d| d.is_none()).unwrap();
        running[k] = Some(homes[k].start());
        println!(
            "round {round}: pid {old} killed, pid {new} leads after {:.2}s",
            times[round]
        );
    }
    println!("takeover after kill -9: {times:?} s");
    assert!(
        times.iter().all(|t| *t <= 5.0),
        "takeovers took {times:?} s (goal: 3 s)"
    );
    converged(&c, "bench", load);
    // Every run the dead leaders left open is closed; the takeover mailed.
    let open = a.query(
        &c.ctl_db,
        "SELECT count(*)::text FROM capra.run WHERE state = 'running' AND epoch < (SELECT epoch FROM capra.lease)",
    );
    assert_eq!(open[0].as_deref(), Some("0"));
    wait_for(20, "the takeover mail", || !smtp.with("took over as leader").is_empty());
    drop(running);
}

#[test]
fn a_leader_frozen_past_its_lease_never_commits_after_the_new_one_begins() {
    let (a, b) = (cluster::a(), cluster::b());
    let (c, src, tgts) = fixtures::pgbench_sync(&[b], &["onetimecopy=1"]);
    c.ok(&["set", "ha_lease=3"]);
    let s1 = c.sibling();
    let one = c.start();
    c.ok(&["kick", "bench", "120"]);
    audit(b, &tgts[0], 0.003);
    let two = s1.start();
    let load = load::pgbench_for(a, src.clone(), 25, 200);

    // Freeze the leader while it holds a transaction open on the target.
    let in_tx = format!(
        "SELECT count(*)::text FROM pg_stat_activity
          WHERE application_name LIKE 'capra KID (pid {}) %' AND xact_start IS NOT NULL",
        one.pid
    );
    let open = || b.query(&tgts[0], &in_tx)[0].as_deref() != Some("0");
    let mut frozen = false;
    for _ in 0..50 {
        wait_for(10, "the leader to write to the target", open);
        signal(one.pid, libc::SIGSTOP);
        if open() {
            frozen = true;
            break;
        }
        signal(one.pid, libc::SIGCONT);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(frozen, "never caught the leader inside a transaction");
    let t0 = Instant::now();
    wait_for(15, "the standby to take over", || leader(a, &c) == Some(two.pid));
    let took = t0.elapsed().as_secs_f64();
    println!("takeover after SIGSTOP: {took:.2}s (lease 3s)");
    assert!(took <= 3.0 + 5.0, "took {took:.2}s");
    // Replication goes on while the old leader stays frozen: its open
    // transaction was ended, the new leader writes.
    wait_for(20, "the new leader's writes on the target", || {
        writes_of(b, &tgts[0], two.pid) > 0
    });
    assert!(!open(), "the frozen leader's transaction is still open");

    signal(one.pid, libc::SIGCONT);
    c.wait_for(30, "the old leader to stand by", || {
        c.log().contains("Standing by again")
            && c.ok(&["status"])
                .contains(&format!("Standby capra daemon: {} (host", one.pid))
    });
    assert!(one.alive());
    converged(&c, "bench", load);
    old_writes_end_before_new_ones(b, &tgts[0], one.pid, two.pid);
}

#[test]
fn a_partition_from_one_target_keeps_the_leader_and_one_from_the_control_database_moves_it() {
    let (a, b) = (cluster::a(), cluster::b());
    let src = fixtures::pgbench(a, "hasrc");
    let tgt = b.create_db(&cluster::unique("hatgt"));
    fixtures::pg_pipe((a, &src), &["--schema-only"], (b, &tgt), false);
    let (pctl, ptgt) = (Proxy::start(a.port), Proxy::start(b.port));
    let service = |port: u16| format!("[tgt]\nhost=127.0.0.1\nport={port}\ndbname={tgt}\nuser=postgres\n");
    // The standby (c) reaches everything directly; the leader (l) reaches
    // the control database and the target through relays that can go silent.
    let c = Capra::install(a);
    c.home_file(".pg_service.conf", &service(b.port));
    let mut l = c.sibling();
    l.home_file(".pg_service.conf", &service(ptgt.port));
    let at = l.global.iter().position(|g| g == "-p").unwrap() + 1;
    l.global[at] = pctl.port.to_string();
    c.add_db("src", a, &src);
    c.ok(&["add", "db", "tgt", "service=tgt"]);
    c.ok(&[
        "add",
        "all",
        "tables",
        "db=src",
        "relgroup=bench",
        "-T",
        "pgbench_history",
    ]);
    c.ok(&[
        "add",
        "sync",
        "bench",
        "relgroup=bench",
        "dbs=src:source,tgt:target",
        "onetimecopy=1",
    ]);
    c.ok(&["set", "ha_lease=3"]);
    let lead = l.start();
    l.ok(&["kick", "bench", "120"]);
    audit(b, &tgt, 0.0);
    let stand = c.start();
    let load = load::pgbench_for(a, src.clone(), 32, 200);
    std::thread::sleep(Duration::from_secs(2));

    // The leader loses only the target for three leases: it keeps leading.
    let e0 = epoch(a, &c);
    ptgt.freeze();
    std::thread::sleep(Duration::from_secs(9));
    assert_eq!(leader(a, &c), Some(lead.pid), "the leader changed: {}", c.log());
    assert_eq!(epoch(a, &c), e0, "a new term began");
    assert!(!c.log().contains("Leading"), "the standby led: {}", c.log());
    ptgt.thaw();
    l.wait_for(30, "the leader to write to the target again", || {
        let n = writes_of(b, &tgt, lead.pid);
        std::thread::sleep(Duration::from_millis(500));
        writes_of(b, &tgt, lead.pid) > n
    });

    // The leader loses the control database: it stops writing, the
    // standby leads, and once the path is back the old one stands by.
    pctl.freeze();
    let t0 = Instant::now();
    wait_for(15, "the standby to lead", || leader(a, &c) == Some(stand.pid));
    println!("takeover after a control partition: {:.2}s", t0.elapsed().as_secs_f64());
    wait_for(20, "the new leader's writes", || writes_of(b, &tgt, stand.pid) > 0);
    pctl.thaw();
    l.wait_for(40, "the old leader to stand by", || {
        l.log().contains("Standing by again")
            && c.ok(&["status"])
                .contains(&format!("Standby capra daemon: {} (host", lead.pid))
    });
    converged(&c, "bench", load);
    old_writes_end_before_new_ones(b, &tgt, lead.pid, stand.pid);
}

#[test]
fn handover_terminated_lease_session_and_control_restart_leave_one_leader() {
    let (a, b) = (cluster::a(), cluster::b());
    let ctl = Cluster::start("ha_ctl", Opts::default());
    let src = a.create_db(&cluster::unique("ha_src"));
    let tgt = b.create_db(&cluster::unique("ha_tgt"));
    a.exec(&src, "CREATE TABLE t (id int PRIMARY KEY, v text)");
    b.exec(&tgt, "CREATE TABLE t (id int PRIMARY KEY, v text)");
    let c = Capra::install(&ctl);
    c.add_db("src", a, &src);
    c.add_db("tgt", b, &tgt);
    c.ok(&["add", "table", "t", "db=src", "relgroup=g"]);
    c.ok(&["add", "sync", "s", "relgroup=g", "dbs=src:source,tgt:target"]);
    let err = c.fails(&["set", "ha_lease=2"], 2);
    assert!(err.contains("from 3 to 600"), "{err}");
    c.ok(&["set", "ha_lease=3"]);
    let s1 = c.sibling();
    let one = c.start();
    let err = c.fails(&["ha", "handover"], 1);
    assert!(err.contains("no standby daemon runs"), "{err}");
    s1.private_rc();
    let out = s1.ok(&["start", "test"]);
    assert!(out.contains("as a standby; leader pid"), "{out}");
    let two_pid: i32 = out
        .split("pid ")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let two = Daemon::adopt(&s1, two_pid);
    let arrives = |v: &str| {
        a.exec(
            &src,
            &format!(
                "INSERT INTO t VALUES ({}, '{v}')",
                v.len() as i32 * 1000 + v.as_bytes()[0] as i32
            ),
        );
        c.ok(&["kick", "s", "60"]);
        let n = b.query(&tgt, &format!("SELECT count(*)::text FROM t WHERE v = '{v}'"));
        assert_eq!(n[0].as_deref(), Some("1"), "{v} did not arrive");
    };
    arrives("first");

    // Handover: the standby leads within a second or two, the roles swap.
    let out = c.ok(&["ha", "handover"]);
    assert!(
        out.contains(&format!("pid {} on", two.pid)) && out.contains("leads now"),
        "{out}"
    );
    let st = c.ok(&["status"]);
    assert!(st.contains(&format!("PID of capra daemon: {} (host", two.pid)), "{st}");
    c.wait_for(10, "the old leader listed as a standby", || {
        c.ok(&["status"])
            .contains(&format!("Standby capra daemon: {} (host", one.pid))
    });
    arrives("handed");

    // The daemon that handed over is a standby like any other: when the
    // new leader dies, it takes over again.
    std::thread::sleep(Duration::from_millis(3500)); // the handover's cool-off
    two.kill9();
    wait_for(5, "the old leader to lead again", || leader(&ctl, &c) == Some(one.pid));
    drop(two);
    let two = s1.start();
    arrives("again");

    // A fence above the leader's term (a control database that forgot
    // terms): the leader stands by and gives the lease up with that epoch,
    // the next term goes above it, and replication goes on.
    let e0 = epoch(&ctl, &c);
    b.exec(&tgt, "UPDATE capra.fence SET epoch = epoch + 100");
    a.exec(&src, "INSERT INTO t VALUES (-1, 'fenced')");
    c.wait_for(60, "the row written after the fence was raised by hand", || {
        b.query(&tgt, "SELECT count(*)::text FROM t WHERE v = 'fenced'")[0].as_deref() == Some("1")
    });
    let e1 = epoch(&ctl, &c);
    assert!(e1 > e0 + 100, "epoch {e0} -> {e1}");
    c.wait_for(15, "both daemons listed again", || {
        let st = c.ok(&["status"]);
        st.contains("PID of capra daemon:") && st.contains("Standby capra daemon:")
    });

    // The leader's lease session ended by a DBA: the standby takes over at
    // once, unless the leader reconnects and renews first; either way one
    // leads and the other stands by.
    std::thread::sleep(Duration::from_secs(3)); // the handover's cool-off
    ctl.exec(&c.ctl_db, "SELECT pg_terminate_backend(backend_pid) FROM capra.lease");
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    wait_for(2, "a leader after pg_terminate_backend", || leader(&ctl, &c).is_some());
    let now = leader(&ctl, &c).unwrap();
    println!(
        "after pg_terminate_backend: pid {now} leads ({:.2}s)",
        t0.elapsed().as_secs_f64()
    );
    let other = if now == one.pid { two.pid } else { one.pid };
    c.wait_for(15, "one leader and one standby", || {
        let st = c.ok(&["status"]);
        st.contains(&format!("PID of capra daemon: {now} (host"))
            && st.contains(&format!("Standby capra daemon: {other} (host"))
    });
    arrives("terminated");

    // The control database restarts: still one leader, at most one new term.
    let e0 = epoch(&ctl, &c);
    ctl.stop_immediate();
    std::thread::sleep(Duration::from_secs(1));
    ctl.resume();
    wait_for(20, "a leader after the control restart", || leader(&ctl, &c).is_some());
    let st = c.ok(&["status"]);
    assert_eq!(st.matches("PID of capra daemon").count(), 1, "{st}");
    let e1 = epoch(&ctl, &c);
    assert!(e1 - e0 <= 1, "epoch went from {e0} to {e1}");
    arrives("restarted");
    drop(two);
    drop(one);

    // The target kept only capra's fence, which goes with the database.
    let fence = b.query(&tgt, "SELECT to_regclass('capra.fence')::text");
    assert_eq!(fence[0].as_deref(), Some("capra.fence"));
    c.ok(&["deactivate", "s"]);
    c.ok(&["remove", "sync", "s"]);
    c.ok(&["remove", "db", "tgt"]);
    let left = b.query(&tgt, "SELECT count(*)::text FROM pg_namespace WHERE nspname = 'capra'");
    assert_eq!(left[0].as_deref(), Some("0"), "capra's schema is left on the target");
}
