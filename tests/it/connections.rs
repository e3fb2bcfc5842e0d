//! libpq-style connections: sslmode really uses TLS, .pgpass and service
//! files work, control settings come from flags/env/files, passwords never
//! show.

use std::os::unix::fs::PermissionsExt;

use crate::support::{cluster, Capra};

#[test]
fn sslmode_require_really_uses_tls() {
    let t = cluster::tls();
    let db = t.create_db(&crate::support::unique("sec"));
    let c = Capra::install(cluster::a());
    let port = format!("port={}", t.port);
    let dbname = format!("dbname={db}");
    // The server rejects every non-TLS TCP login, so success proves TLS.
    let out = c.ok(&[
        "add",
        "db",
        "secure",
        &dbname,
        "host=127.0.0.1",
        &port,
        "user=postgres",
        "conn=sslmode=require",
    ]);
    assert!(out.contains("Added database \"secure\""), "{out}");
    let before = c.snapshot();
    let err = c.fails(
        &[
            "add",
            "db",
            "plain",
            &dbname,
            "host=127.0.0.1",
            &port,
            "user=postgres",
            "conn=sslmode=disable",
        ],
        1,
    );
    assert!(err.contains("no encryption"), "{err}");
    assert_eq!(before, c.snapshot());
    let list = c.ok(&["list", "dbs"]);
    assert!(list.contains("(sslmode=require)"), "{list}");
    // verify-full against a self-signed certificate without a root cert is refused clearly.
    let err = c.fails(
        &[
            "add",
            "db",
            "vf",
            &dbname,
            "host=127.0.0.1",
            &port,
            "user=postgres",
            "conn=sslmode=verify-full",
        ],
        1,
    );
    assert!(err.contains("needs a root certificate"), "{err}");
}

#[test]
fn pgpass_and_passwords_never_shown() {
    let t = cluster::tls();
    let db = t.create_db(&crate::support::unique("pw"));
    let c = Capra::install(cluster::a());
    let args = |name: &str| -> Vec<String> {
        vec![
            "add".into(),
            "db".into(),
            name.into(),
            format!("dbname={db}"),
            "host=127.0.0.1".into(),
            format!("port={}", t.port),
            "user=pwuser".into(),
            "conn=sslmode=require".into(),
        ]
    };
    let a1 = args("nopass");
    let err = c.fails(&strs(&a1), 1);
    assert!(err.contains("password"), "{err}");
    // ~/.pgpass with the right line, mode 0600.
    let pgpass = c.home_file(".pgpass", &format!("127.0.0.1:{}:*:pwuser:s3cret-pw\n", t.port));
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).unwrap();
    c.ok(&strs(&a1));
    // An explicit password is stored but never printed, listed or logged.
    let mut a2 = args("withpass");
    a2.push("pass=s3cret-pw".into());
    std::fs::remove_file(&pgpass).unwrap();
    c.ok(&strs(&a2));
    for out in [
        c.ok(&["list", "dbs"]),
        c.ok(&["list", "dbs", "-vv"]),
        c.snapshot(),
        c.ok(&["list", "all"]),
    ] {
        assert!(!out.contains("s3cret"), "password leaked: {out}");
    }
    assert!(c
        .ok(&["list", "dbs", "withpass", "--json"])
        .contains("\"password_set\": true"));
    // A wrong password: the error names the problem, not the password.
    let mut a3 = args("wrong");
    a3.push("pass=not-the-pw-xyz".into());
    let err = c.fails(&strs(&a3), 1);
    assert!(err.contains("password authentication failed"), "{err}");
    assert!(!err.contains("not-the-pw-xyz"), "{err}");
}

#[test]
fn service_file_and_control_settings_sources() {
    let a = cluster::a();
    let mut c = Capra::install(a);
    let db = a.create_db(&crate::support::unique("svc"));
    let svc = c.home_file(
        "services.conf",
        &format!("[mysvc]\nhost=127.0.0.1\nport={}\ndbname={db}\nuser=postgres\n", a.port),
    );
    c.env.push(("PGSERVICEFILE".into(), svc.display().to_string()));
    let out = c.ok(&["add", "db", "viasvc", "service=mysvc"]);
    assert!(out.contains("Added database \"viasvc\""), "{out}");
    let err = c.fails(&["add", "db", "nosvc", "service=nosuch"], 1);
    assert!(err.contains("service \"nosuch\" not found"), "{err}");

    // The control database from ~/.caprarc ...
    let ctl = c.ctl_db.clone();
    c.home_file(
        ".caprarc",
        &format!(
            "# capra\ndbhost = 127.0.0.1\ndbport = {}\ndbuser = postgres\ndbname = {ctl}\n",
            a.port
        ),
    );
    let r = c.run_raw(&["list".into(), "dbs".into()]);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains("viasvc"));
    // ... flags win over it ...
    let r = c.run_raw(&["-d".into(), "nosuchdb".into(), "list".into(), "dbs".into()]);
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("nosuchdb"), "{}", r.stderr);
    // ... and CAPRA_* environment wins over files.
    c.env.push(("CAPRA_DBNAME".into(), "alsonosuch".into()));
    let r = c.run_raw(&["list".into(), "dbs".into()]);
    assert!(r.stderr.contains("alsonosuch"), "{}", r.stderr);
    c.env.pop();
    // --config FILE comes before ~/.caprarc.
    let cf = c.home_file("other.conf", "dbname = fromconfigfile\n");
    let r = c.run_raw(&["--config".into(), cf.display().to_string(), "list".into(), "dbs".into()]);
    assert!(r.stderr.contains("fromconfigfile"), "{}", r.stderr);
    // A malformed config file is named with its line.
    let bad = c.home_file("bad.conf", "dbhost = x\nthis is wrong\n");
    let r = c.run_raw(&[
        "--config".into(),
        bad.display().to_string(),
        "list".into(),
        "dbs".into(),
    ]);
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("bad.conf:2:"), "{}", r.stderr);
    // PGHOST/PGPORT are the last resort.
    std::fs::remove_file(c.home().join(".caprarc")).unwrap();
    c.env.push(("PGHOST".into(), "127.0.0.1".into()));
    c.env.push(("PGPORT".into(), a.port.to_string()));
    let r = c.run_raw(&[
        "-U".into(),
        "postgres".into(),
        "-d".into(),
        ctl,
        "list".into(),
        "dbs".into(),
    ]);
    assert_eq!(r.code, Some(0), "{r:?}");
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(|s| s.as_str()).collect()
}
