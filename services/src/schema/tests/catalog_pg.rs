//! The catalog of a real Postgres, and compiling against it.

use std::path::PathBuf;

use crate::pgcluster::PgCluster;
use crate::pgtypes::TypeKind;
use crate::schema::types::{SqlType, TextKind};
use crate::schema::{Catalog, SchemaSource, compile};

pub(super) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Connects to `db`, driving the connection on the runtime.
pub(super) async fn connect(pg: &PgCluster, db: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&pg.url(db), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

const SETUP: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
ALTER TYPE mood ADD VALUE 'meh' BEFORE 'ok';
CREATE DOMAIN email AS varchar(200) CHECK (VALUE LIKE '%@%');
CREATE DOMAIN score AS numeric(10, 2);
CREATE TABLE items (
    gone int,
    region text NOT NULL,
    id bigint NOT NULL,
    contact email,
    points score,
    feeling mood,
    tags text[],
    moods mood[],
    body tsvector,
    title text COLLATE "C.utf8",
    code char(3),
    doubled bigint GENERATED ALWAYS AS (id * 2) STORED,
    PRIMARY KEY (region, id)
);
ALTER TABLE items DROP COLUMN gone;
CREATE VIEW item_view AS SELECT * FROM items;
CREATE SCHEMA app;
CREATE TABLE app.notes (id uuid PRIMARY KEY, owner text);
CREATE TABLE app.keyless (a int);
"#;

fn source(text: &str) -> SchemaSource {
    SchemaSource::from_files(vec![(PathBuf::from("s.toml"), text.to_string())])
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn catalog_reads_columns_types_keys_and_collations() {
    let pg = PgCluster::start().expect("cluster");
    pg.create_database("cat").expect("db");
    pg.psql("cat", SETUP).expect("setup");
    runtime().block_on(async {
        let client = connect(&pg, "cat").await;
        let wanted = [
            ("public", "items"),
            ("public", "item_view"),
            ("public", "missing"),
            ("app", "notes"),
            ("nope", "x"),
        ]
        .map(|(s, t)| (s.to_string(), t.to_string()));
        let catalog = Catalog::load(&client, &wanted).await.expect("catalog");
        let items = catalog.table("public", "items").expect("items");
        let names: Vec<&str> = items.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            ["region", "id", "contact", "points", "feeling", "tags", "moods", "body", "title", "code"]
        );
        let by = |n: &str| items.columns.iter().find(|c| c.name == n).expect("column");
        assert_eq!(items.primary_key, [0, 1]);
        assert!(by("region").not_null && !by("contact").not_null);
        assert_eq!(by("contact").type_name, "email");
        assert_eq!(by("contact").sql_type, SqlType::Text(TextKind::Varchar));
        assert_eq!(by("contact").kind, Some(TypeKind::Text));
        assert_eq!(by("points").sql_type, SqlType::Numeric);
        match &by("feeling").sql_type {
            SqlType::Enum(e) => assert_eq!(e.labels, ["sad", "meh", "ok", "happy"]),
            other => panic!("{other:?}"),
        }
        assert_eq!(by("tags").kind, Some(TypeKind::Array(Box::new(TypeKind::Text))));
        assert_eq!(by("moods").kind, Some(TypeKind::Array(Box::new(TypeKind::Text))));
        assert_eq!(by("body").kind, None);
        assert_eq!(by("code").sql_type, SqlType::Text(TextKind::Bpchar));
        assert_eq!(by("code").type_name, "character(3)");
        let title = by("title").collation.as_ref().expect("collation");
        assert!(!title.byte_order, "{title:?}");
        let region = by("region").collation.as_ref().expect("collation");
        assert!(region.byte_order && region.name == "C", "{region:?}");
        assert!(catalog.table("app", "notes").is_some());
        assert!(catalog.table("public", "item_view").is_none());

        let errors = compile(
            &source(
                "[shapes.a]\ntable = \"item_view\"\n[shapes.b]\ntable = \"missing\"\n[shapes.c]\ntable = \"nope.x\"\n[shapes.d]\ntable = \"items\"\nwhere = \"title < 'x' OR feeling < 'ok' OR feeling = 'bad'\"\n",
            ),
            &catalog,
        )
        .expect_err("errors")
        .to_string();
        assert_eq!(
            errors,
            [
                "s.toml:2:9: `public.item_view` is a view, not a table; only tables can be synced",
                "s.toml:4:9: unknown table `missing` in schema `public` (tables in `public`: items)",
                "s.toml:6:9: schema `nope` does not exist",
                "s.toml:9:10: `<` on text is not supported here: the collation `C.utf8` does not sort by byte value, and Outpost orders text only as the C collation does. Use `=`, `<>`, IN or LIKE, or give the column `COLLATE \"C\"`",
                "s.toml:9:53: invalid input value for enum mood: \"bad\"",
            ]
            .join("\n")
        );

        let schema = compile(
            &source(
                "[shapes.mine]\ntable = \"items\"\nwhere = \"region = auth.region AND feeling >= 'meh' AND code = 'ab' AND contact LIKE '%@x.org'\"\n[shapes.notes]\ntable = \"app.notes\"\nwhere = \"owner = auth.sub\"\n",
            ),
            &catalog,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(schema.tables[0].synced, [0, 1, 2, 3, 4, 5, 6, 8, 9]);
        assert_eq!(schema.tables[1].client_name, "app_notes");
        let row = [
            Some("eu"),
            Some("7"),
            Some("me@x.org"),
            Some("1.50"),
            Some("ok"),
            None,
            None,
            None,
            Some("t"),
            Some("ab "),
        ];
        let mut out = Vec::new();
        schema.route(0, &row, &mut out);
        assert_eq!(out, [r#"mine#0["eu"]"#]);
        let mut sad = row;
        sad[4] = Some("sad");
        out.clear();
        schema.route(0, &sad, &mut out);
        assert!(out.is_empty());
    });
}

#[test]
fn a_database_collation_other_than_c_refuses_text_ordering() {
    let pg = PgCluster::start().expect("cluster");
    pg.psql(
        "postgres",
        "CREATE DATABASE utf TEMPLATE template0 LOCALE 'C.utf8';",
    )
    .expect("db");
    pg.psql(
        "utf",
        "CREATE TABLE t (id int PRIMARY KEY, s text, c text COLLATE \"C\");",
    )
    .expect("table");
    runtime().block_on(async {
        let client = connect(&pg, "utf").await;
        let catalog = Catalog::load(&client, &[("public".into(), "t".into())])
            .await
            .expect("catalog");
        let err = compile(
            &source(
                "[shapes.a]\ntable = \"t\"\nwhere = \"s > 'a' AND c > 'a' AND s ILIKE 'x%'\"\n",
            ),
            &catalog,
        )
        .expect_err("refused")
        .to_string();
        assert!(
            err.starts_with(
                "s.toml:3:10: `>` on text is not supported here: the collation `C.utf8`"
            ),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");

        // ILIKE folds case as this locale does (`C` columns: ASCII only).
        let words = [
            "École",
            "ÉCOLE",
            "école",
            "straße",
            "STRASSE",
            "Σίσυφος",
            "ΣΊΣΥΦΟΣ",
            "İstanbul",
            "istanbul",
            "ǅemal",
            "Ǆ",
            "ABC",
            "abc",
        ];
        for (id, w) in words.iter().enumerate() {
            client
                .execute("INSERT INTO t VALUES ($1, $2, $2)", &[&(id as i32), w])
                .await
                .expect("insert");
        }
        let patterns = [
            "école%",
            "%SS%",
            "σίσυφος",
            "i%",
            "%ß%",
            "ǆ%",
            "ǆ",
            "a%",
            "%Σ",
            "%ς",
        ];
        for column in ["s", "c"] {
            for p in patterns {
                let clause = format!("{column} ILIKE '{p}'");
                let schema = compile(
                    &source(&format!(
                        "[shapes.a]\ntable = \"t\"\nwhere = \"{clause}\"\n"
                    )),
                    &catalog,
                )
                .unwrap_or_else(|e| panic!("{e}"));
                let expected: Vec<i32> = client
                    .query(&format!("SELECT id FROM t WHERE {clause} ORDER BY id"), &[])
                    .await
                    .expect("query")
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                let mut got = Vec::new();
                for (id, w) in words.iter().enumerate() {
                    let id_text = id.to_string();
                    let row = [Some(id_text.as_str()), Some(*w), Some(*w)];
                    let mut out = Vec::new();
                    schema.route(0, &row, &mut out);
                    if !out.is_empty() {
                        got.push(id as i32);
                    }
                }
                assert_eq!(got, expected, "{clause}");
            }
        }
    });
}

#[test]
fn the_example_schema_compiles_against_its_database() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schema");
    let source = crate::schema::load_dir(&root).unwrap_or_else(|e| panic!("{e}"));
    let pg = PgCluster::start().expect("cluster");
    pg.create_database("todo").expect("db");
    let sql = std::fs::read_to_string(root.join("todo.sql")).expect("todo.sql");
    pg.psql("todo", &sql).expect("load todo.sql");
    runtime().block_on(async {
        let client = connect(&pg, "todo").await;
        let catalog = Catalog::load(&client, &source.tables())
            .await
            .expect("catalog");
        let schema = compile(&source, &catalog).unwrap_or_else(|e| panic!("{e}"));
        assert!(!schema.shapes.is_empty());
        let claims = serde_json::json!({"sub": "alice"});
        let buckets = schema
            .user_buckets(&[], claims.as_object().expect("object"))
            .expect("buckets");
        assert!(
            buckets.iter().all(|b| b.ends_with(r#"["alice"]"#)),
            "{buckets:?}"
        );
    });
}
