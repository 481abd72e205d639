//! The `Write` call of the running service: authentication, request checks,
//! results, the merge kinds in the `Schema` message, and the commit LSN
//! reached by a checkpoint that carries the written row.

use std::time::Duration;

use outpost_proto::v1::sync_client::SyncClient;
use outpost_proto::v1::sync_response::Message;
use outpost_proto::v1::{SyncRequest, WriteRequest};
use tonic::Code;

use super::*;
use crate::config::ServiceConfig;

const SQL: &str = "CREATE TABLE items (id bigint PRIMARY KEY, owner text NOT NULL, \
                   title text, likes int NOT NULL DEFAULT 0);";

const SCHEMA: &str = r#"
[shapes.items]
table = "items"
where = "owner = auth.sub"

[tables.items]
insert = "new.owner = auth.sub"
update = "old.owner = auth.sub AND new.owner = auth.sub"

[tables.items.merge]
likes = "counter"
"#;

const SECRET: &str = "write-test-secret";

fn request<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        let value = format!("Bearer {token}").parse().expect("metadata");
        request.metadata_mut().insert("authorization", value);
    }
    request
}

#[test]
fn the_write_call_applies_and_the_stream_confirms() {
    let pg = cluster(SQL, false);
    let schema_dir = tempfile::tempdir().expect("dir");
    std::fs::write(schema_dir.path().join("app.toml"), SCHEMA).expect("schema file");
    let data_dir = tempfile::tempdir().expect("dir");
    let url = pg.url(DB);
    let schema_path = schema_dir.path().display().to_string();
    let data_path = data_dir.path().display().to_string();
    let env = |name: &str| match name {
        "OUTPOST_DATABASE_URL" => Some(url.clone()),
        "OUTPOST_SCHEMA_DIR" => Some(schema_path.clone()),
        "OUTPOST_DATA_DIR" => Some(data_path.clone()),
        "OUTPOST_LISTEN" => Some("127.0.0.1:0".into()),
        "OUTPOST_AUTH_HS256_SECRET" => Some(SECRET.into()),
        _ => None,
    };
    let cfg = ServiceConfig::load_with(None, &env).expect("config");
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() + 3600)
        .unwrap_or(u64::MAX);
    let token = crate::auth::sign_hs256(SECRET, &serde_json::json!({"sub": "alice", "exp": exp}))
        .expect("token");
    runtime().block_on(async {
        let service = crate::service::start(cfg).await.expect("service");
        let mut client = SyncClient::connect(format!("http://{}", service.addr))
            .await
            .expect("connect");
        let write = |client_id: &str, groups: Vec<OpGroup>| WriteRequest {
            client_id: client_id.into(),
            groups,
        };
        let like = |seq| {
            group(
                seq,
                vec![update("items", 1, vec![col("likes", int(1))], hlc(seq))],
            )
        };

        let refused = client
            .write(request(write("c", vec![like(1)]), None))
            .await
            .expect_err("no token");
        assert_eq!(refused.code(), Code::Unauthenticated);
        let refused = client
            .write(request(write("", vec![like(1)]), Some(&token)))
            .await
            .expect_err("no client id");
        assert_eq!(refused.code(), Code::InvalidArgument);

        let create = group(
            1,
            vec![insert(
                "items",
                1,
                vec![col("owner", text("alice")), col("title", text("hello"))],
                hlc(1),
            )],
        );
        let response = client
            .write(request(
                write("c", vec![create, like(2), like(2)]),
                Some(&token),
            ))
            .await
            .expect("write")
            .into_inner();
        assert_eq!(
            outcomes(&response.results),
            [applied(), applied(), (Status::Duplicate, String::new())]
        );
        let commit_lsn = response.results[1].commit_lsn;
        assert!(commit_lsn > 0);

        let mut stream = client
            .sync(request(
                SyncRequest {
                    client_id: "c".into(),
                    ..SyncRequest::default()
                },
                Some(&token),
            ))
            .await
            .expect("sync")
            .into_inner();
        let mut saw_row = false;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let message = tokio::time::timeout_at(deadline, stream.message())
                .await
                .expect("a checkpoint at or past the commit LSN in time")
                .expect("stream")
                .and_then(|m| m.message)
                .expect("a message");
            match message {
                Message::Schema(schema) => {
                    let items = schema
                        .tables
                        .iter()
                        .find(|t| t.name == "items")
                        .expect("items");
                    let merges: Vec<(&str, &str)> = items
                        .columns
                        .iter()
                        .map(|c| (c.name.as_str(), c.merge.as_str()))
                        .collect();
                    assert_eq!(
                        merges,
                        [
                            ("id", "lww"),
                            ("owner", "lww"),
                            ("title", "lww"),
                            ("likes", "counter")
                        ]
                    );
                }
                Message::Data(batch) => {
                    saw_row |= batch
                        .ops
                        .iter()
                        .any(|op| op.key == [int(1)] && op.values.get(3) == Some(&int(1)));
                }
                Message::Checkpoint(c) if c.lsn >= commit_lsn => break,
                _ => {}
            }
        }
        assert!(
            saw_row,
            "the checkpoint past the commit LSN holds the written row"
        );
        service.shutdown().await.expect("shutdown");
    });
}
