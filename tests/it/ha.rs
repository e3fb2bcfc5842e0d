//! Several daemons, one leader: the lease in the control database, on a
//! real server (its clock, its sessions), from separate sessions standing
//! for separate daemons.

use capra::catalog::lease::{self, Ask, Claimant};

use crate::support::{cluster, Capra};

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
    assert!(lease::release(&mut one, &a, 3, "stop").unwrap());
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
        fence::raise(&mut a, Box::new(cluster::b().client(&db)), &old, "h1", 1).unwrap(),
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
        fence::raise(&mut b, Box::new(cluster::b().client(&db)), &new, "h2", 2).unwrap(),
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
        fence::raise(&mut again, Box::new(cluster::b().client(&db)), &old, "h1", 1).unwrap(),
        Raised::Above {
            epoch: 2,
            holder: "daemon-b".into()
        }
    );
    assert_eq!(
        fence::raise(&mut b, Box::new(cluster::b().client(&db)), &new, "h2", 2).unwrap(),
        Raised::Ours
    );
}
