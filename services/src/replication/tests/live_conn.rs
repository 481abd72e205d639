//! Connection, authentication, commands, slots and publications against a
//! real Postgres.

use crate::pgcluster::PgClusterOptions;

use super::super::*;
use super::support::*;

#[tokio::test]
async fn trust_connection_identifies_the_system_with_fixed_session_settings() {
    let pg = cluster();
    let mut conn = connect(&pg).await;
    assert!(conn.parameter("server_version").is_some());

    let info = conn.identify_system().await.unwrap();
    assert!(!info.systemid.is_empty());
    assert_eq!(info.timeline, 1);
    assert!(info.xlogpos > Lsn::ZERO);
    assert_eq!(info.dbname.as_deref(), Some("db"));

    let rows = conn
        .simple_query(
            "SELECT current_setting('DateStyle'), current_setting('TimeZone'), \
             current_setting('IntervalStyle'), current_setting('extra_float_digits'), \
             current_setting('client_encoding')",
        )
        .await
        .unwrap();
    let expected = ["ISO, MDY", "UTC", "postgres", "3", "UTF8"];
    assert_eq!(
        rows,
        vec![
            expected
                .iter()
                .map(|s| Some(s.to_string()))
                .collect::<Vec<_>>()
        ]
    );

    // Several statements, NULLs, empty results.
    let rows = conn
        .simple_query("SELECT 1, NULL::text; SELECT 'x' WHERE false; SELECT 'é'")
        .await
        .unwrap();
    assert_eq!(
        rows,
        vec![
            vec![Some("1".to_string()), None],
            vec![Some("é".to_string())]
        ]
    );

    // A server error keeps the connection usable.
    let err = conn.simple_query("SELECT * FROM nope").await.unwrap_err();
    assert_eq!(err.sqlstate(), Some("42P01"));
    assert!(!err.is_transient());
    assert!(err.to_string().contains("nope"), "{err}");
    assert_eq!(
        conn.simple_query("SELECT 2").await.unwrap(),
        vec![vec![Some("2".to_string())]]
    );
    conn.close().await.unwrap();
}

#[tokio::test]
async fn unix_socket_and_connection_errors() {
    let pg = cluster();
    let socket_dir = pg.data_dir().parent().unwrap().to_path_buf();
    let mut cfg = tokio_postgres::Config::new();
    cfg.host_path(&socket_dir)
        .port(pg.port())
        .user("postgres")
        .dbname("db");
    let mut conn = ReplicationConn::connect(&cfg).await.unwrap();
    conn.identify_system().await.unwrap();

    let mut tls = config(&pg);
    tls.ssl_mode(tokio_postgres::config::SslMode::Require);
    let err = ReplicationConn::connect(&tls).await.unwrap_err();
    assert!(matches!(err, ReplicationError::Config(_)), "{err}");
    assert!(err.to_string().contains("sslmode=require"));

    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let closed: tokio_postgres::Config = format!("postgres://postgres@127.0.0.1:{port}/db")
        .parse()
        .unwrap();
    let err = ReplicationConn::connect(&closed).await.unwrap_err();
    assert!(matches!(err, ReplicationError::Connect { .. }), "{err:?}");
    assert!(err.is_transient());

    let mut no_db = config(&pg);
    no_db.dbname("missing");
    let err = ReplicationConn::connect(&no_db).await.unwrap_err();
    assert_eq!(err.sqlstate(), Some("3D000"), "{err}");
}

#[tokio::test]
async fn password_authentication_md5_scram_cleartext() {
    let hba = [
        "md5_user md5",
        "scram_user scram-sha-256",
        "clear_user password",
    ];
    let extra_hba = hba
        .iter()
        .flat_map(|l| {
            let (user, method) = l.split_once(' ').unwrap();
            [
                format!("host all {user} 127.0.0.1/32 {method}"),
                format!("host replication {user} 127.0.0.1/32 {method}"),
            ]
        })
        .collect();
    let pg = cluster_with(PgClusterOptions {
        extra_hba,
        ..Default::default()
    });
    pg.psql(
        "postgres",
        "SET password_encryption = 'md5';
         CREATE ROLE md5_user LOGIN REPLICATION PASSWORD 'md5 secret';
         SET password_encryption = 'scram-sha-256';
         CREATE ROLE scram_user LOGIN REPLICATION PASSWORD 'scram secret';
         CREATE ROLE clear_user LOGIN REPLICATION PASSWORD 'clear secret';",
    )
    .unwrap();

    for (user, password) in [
        ("md5_user", "md5 secret"),
        ("scram_user", "scram secret"),
        ("clear_user", "clear secret"),
    ] {
        let mut cfg = config(&pg);
        cfg.user(user).password(password);
        let mut conn = ReplicationConn::connect(&cfg)
            .await
            .unwrap_or_else(|e| panic!("{user}: {e}"));
        let info = conn.identify_system().await.unwrap();
        assert_eq!(info.dbname.as_deref(), Some("db"));
        let rows = conn.simple_query("SELECT current_user").await.unwrap();
        assert_eq!(rows, vec![vec![Some(user.to_string())]]);

        cfg.password("wrong");
        let err = ReplicationConn::connect(&cfg).await.unwrap_err();
        assert!(matches!(err, ReplicationError::Auth(_)), "{user}: {err:?}");
        assert!(!err.is_transient());

        let mut no_password = config(&pg);
        no_password.user(user);
        let err = ReplicationConn::connect(&no_password).await.unwrap_err();
        assert!(matches!(err, ReplicationError::Auth(_)), "{user}: {err:?}");
    }
}

#[tokio::test]
async fn slot_snapshot_is_usable_while_the_connection_is_idle() {
    let pg = cluster();
    pg.psql(
        "db",
        "CREATE TABLE items (id int PRIMARY KEY); INSERT INTO items SELECT generate_series(1, 10);",
    )
    .unwrap();
    let mut conn = connect(&pg).await;
    let slot = conn.create_slot("outpost_slot", false).await.unwrap();
    assert!(slot.consistent_point > Lsn::ZERO);
    assert!(!slot.snapshot_name.is_empty());

    // Rows committed after the slot was created are not in the snapshot.
    let client = sql(&pg).await;
    client
        .batch_execute("INSERT INTO items SELECT generate_series(11, 15)")
        .await
        .unwrap();
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT '{}'",
            slot.snapshot_name
        ))
        .await
        .unwrap();
    let count: i64 = client
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 10);
    client.batch_execute("COMMIT").await.unwrap();

    let info = conn.slot_info("outpost_slot").await.unwrap().unwrap();
    assert_eq!(info.plugin.as_deref(), Some("pgoutput"));
    assert_eq!(info.database.as_deref(), Some("db"));
    assert!(!info.active);
    assert!(!info.temporary);
    assert_eq!(info.confirmed_flush_lsn, Some(slot.consistent_point));
    assert!(info.restart_lsn.is_some());
    assert_eq!(conn.slot_info("other").await.unwrap(), None);

    let err = conn.create_slot("outpost_slot", false).await.unwrap_err();
    assert_eq!(err.sqlstate(), Some("42710"), "{err}");
    let err = conn.create_slot("Bad-Name", false).await.unwrap_err();
    assert!(matches!(err, ReplicationError::InvalidName { .. }), "{err}");

    conn.drop_slot("outpost_slot").await.unwrap();
    assert_eq!(conn.slot_info("outpost_slot").await.unwrap(), None);

    let temp = conn.create_slot("temp_slot", true).await.unwrap();
    assert!(temp.consistent_point > Lsn::ZERO);
    let info = conn.slot_info("temp_slot").await.unwrap().unwrap();
    assert!(info.temporary);
    // A temporary slot goes away with its session.
    conn.close().await.unwrap();
    let mut other = connect(&pg).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while other.slot_info("temp_slot").await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "temporary slot survived"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn publications_are_created_or_checked() {
    let pg = cluster();
    pg.psql(
        "db",
        "CREATE TABLE a (id int PRIMARY KEY);
         CREATE TABLE \"B b\" (id int PRIMARY KEY);
         CREATE SCHEMA s; CREATE TABLE s.c (id int PRIMARY KEY);
         CREATE PUBLICATION inserts_only FOR TABLE a WITH (publish = 'insert');
         CREATE PUBLICATION everything FOR ALL TABLES;
         CREATE PUBLICATION filtered FOR TABLE a WHERE (id > 0);",
    )
    .unwrap();
    let mut conn = connect(&pg).await;
    let tables = |names: &[(&str, &str)]| -> Vec<(String, String)> {
        names
            .iter()
            .map(|(s, t)| (s.to_string(), t.to_string()))
            .collect()
    };
    let two = tables(&[("public", "a"), ("public", "B b")]);

    let err = conn
        .ensure_publication("sync", &two, false)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ReplicationError::PublicationMissing(_)),
        "{err}"
    );

    conn.ensure_publication("sync", &two, true).await.unwrap();
    let rows = conn
        .simple_query(
            "SELECT tablename FROM pg_publication_tables WHERE pubname = 'sync' ORDER BY 1",
        )
        .await
        .unwrap();
    assert_eq!(
        rows,
        vec![vec![Some("B b".to_string())], vec![Some("a".to_string())]]
    );
    // Existing and complete: nothing to do, also for a subset.
    conn.ensure_publication("sync", &two, true).await.unwrap();
    conn.ensure_publication("sync", &two[..1], false)
        .await
        .unwrap();

    let three = tables(&[("public", "a"), ("public", "B b"), ("s", "c")]);
    let err = conn
        .ensure_publication("sync", &three, true)
        .await
        .unwrap_err();
    match &err {
        ReplicationError::PublicationIncomplete { missing_tables, .. } => {
            assert_eq!(missing_tables, &vec!["\"s\".\"c\"".to_string()]);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("\"s\".\"c\""), "{err}");
    assert!(!err.is_transient());

    conn.ensure_publication("everything", &three, false)
        .await
        .unwrap();

    let err = conn
        .ensure_publication("inserts_only", &two[..1], false)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("updates") && text.contains("deletes"),
        "{text}"
    );

    let err = conn
        .ensure_publication("filtered", &two[..1], false)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("row filter"), "{err}");

    let err = conn
        .ensure_publication("missing_table", &tables(&[("public", "zz")]), true)
        .await
        .unwrap_err();
    assert_eq!(err.sqlstate(), Some("42P01"), "{err}");
}
