//! Write rules checked against a live database: table functions, and the
//! example app's schema.

use super::*;
use crate::schema::{MergeKind, load_dir};

const SQL: &str = "
CREATE TABLE items (id bigint PRIMARY KEY, owner text, likes int);
CREATE FUNCTION good(op jsonb) RETURNS jsonb LANGUAGE sql AS 'SELECT op->''new''';
CREATE FUNCTION wrong_type(op jsonb) RETURNS text LANGUAGE sql AS 'SELECT ''x''';
CREATE FUNCTION wrong_args(a int) RETURNS jsonb LANGUAGE sql AS 'SELECT NULL::jsonb';
";

fn rules_file(function: &str) -> String {
    format!(
        "[shapes.items]\ntable = \"items\"\n\n[tables.items]\ninsert = \"true\"\nfunction = \"{function}\"\n"
    )
}

#[test]
fn table_functions_are_looked_up() {
    let pg = cluster(SQL, false);
    runtime().block_on(async {
        let client = connect(&pg).await;
        let check = |function: &str| {
            let text = rules_file(function);
            let client = &client;
            async move {
                let source = SchemaSource::from_files(vec![(PathBuf::from("a.toml"), text)])
                    .unwrap_or_else(|e| panic!("{e}"));
                let catalog = Catalog::load(client, &source.tables())
                    .await
                    .expect("catalog");
                let mut rules = compile_rules(&source, &catalog).unwrap_or_else(|e| panic!("{e}"));
                match resolve_functions(&mut rules, client).await {
                    Ok(()) => Ok(rules.tables[0]
                        .function
                        .as_ref()
                        .and_then(|f| f.sql_name.clone())
                        .unwrap_or_default()),
                    Err(e) => Err(e.to_string()),
                }
            }
        };
        assert_eq!(check("good").await, Ok("public.good".to_string()));
        assert_eq!(check("public.GOOD").await, Ok("public.good".to_string()));
        assert_eq!(
            check("missing").await,
            Err("a.toml:6:12: function `missing(jsonb)` does not exist (to_regprocedure finds nothing): \
                 create it as `CREATE FUNCTION missing(op jsonb) RETURNS jsonb …`"
                .to_string())
        );
        assert_eq!(
            check("wrong_type").await,
            Err("a.toml:6:12: function `wrong_type(jsonb)` must return jsonb (the row to write, \
                 or NULL to skip the op)"
                .to_string())
        );
        assert!(
            check("wrong_args").await.is_err_and(|e| e.contains("does not exist")),
            "a function of other arguments is not it"
        );
    });
}

#[test]
fn the_example_app_accepts_its_owners_writes() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schema");
    let sql = std::fs::read_to_string(root.join("todo.sql")).expect("todo.sql");
    let toml = load_dir(&root).unwrap_or_else(|e| panic!("{e}"));
    let pg = cluster(&sql, false);
    runtime().block_on(async {
        let client = connect(&pg).await;
        let catalog = Catalog::load(&client, &toml.tables())
            .await
            .expect("catalog");
        let schema = compile(&toml, &catalog).unwrap_or_else(|e| panic!("{e}"));
        let mut rules = compile_rules(&toml, &catalog).unwrap_or_else(|e| panic!("{e}"));
        resolve_functions(&mut rules, &client)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let todos = schema.table_index("public", "todos").expect("todos");
        let likes = schema.tables[todos]
            .columns
            .iter()
            .position(|c| c.name == "likes")
            .expect("likes");
        let cfg = ApplierConfig {
            pg: pg.url(DB).parse().expect("url"),
            connections: 1,
            batches: 1,
            publication: None,
        };
        let applier = Applier::start(cfg, &schema, rules).await.expect("applier");
        assert_eq!(
            applier.merge_kind("public", "todos", likes),
            MergeKind::Counter
        );
        let alice = claims("alice");
        let results = applier
            .apply(
                "demo",
                &alice,
                &[
                    group(
                        1,
                        vec![
                            insert(
                                "todos",
                                100,
                                vec![
                                    col("list_id", int(1)),
                                    col("owner", text("alice")),
                                    col("title", text("Buy milk")),
                                    col("tags", text(r#"["food"]"#)),
                                    col("due", text("2030-01-02")),
                                    col("done", int(0)),
                                    col("notes", null()),
                                ],
                                hlc(1_000),
                            ),
                            update("todos", 100, vec![col("likes", int(2))], hlc(1_001)),
                        ],
                    ),
                    // Bob's list: alice may not write there, nor give her todo away.
                    group(
                        2,
                        vec![update(
                            "lists",
                            3,
                            vec![col("name", text("mine"))],
                            hlc(2_000),
                        )],
                    ),
                    group(
                        3,
                        vec![update(
                            "todos",
                            100,
                            vec![col("owner", text("bob"))],
                            hlc(2_000),
                        )],
                    ),
                    group(4, vec![delete("todos", 100, hlc(3_000))]),
                ],
            )
            .await
            .expect("apply");
        assert_eq!(
            outcomes(&results),
            [
                applied(),
                rejected("permission_denied"),
                rejected("permission_denied"),
                applied()
            ]
        );
    });
    assert_eq!(query(&pg, "SELECT count(*) FROM todos WHERE id = 100"), "0");
}
