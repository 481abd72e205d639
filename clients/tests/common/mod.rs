//! A scripted in-process Outpost `Sync` service and message builders for
//! client tests.
#![allow(dead_code)]

use futures::Stream;
use outpost_proto::v1::sync_response::Message;
use outpost_proto::v1::sync_server::{Sync, SyncServer};
use outpost_proto::v1::{
    BucketChecksum, Checkpoint, ColumnSchema, DataBatch, Keepalive, RowOp, Schema, SyncRequest,
    SyncResponse, TableSchema, Value, row_op, value::Kind,
};
use outpost_proto::{bucket_checksum_add, row_hash};
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use tonic::{Request, Response, Status};

/// What the fake service does on one `Sync` call.
pub enum Script {
    /// Fails the call with this status.
    Fail(Status),
    /// Sends these messages, then keeps the stream open.
    Send(Vec<SyncResponse>),
    /// Sends these messages, then ends the stream.
    SendAndClose(Vec<SyncResponse>),
}

/// One call the fake service received.
#[derive(Debug, Clone)]
pub struct Call {
    pub authorization: Option<String>,
    pub request: SyncRequest,
}

#[derive(Clone, Default)]
pub struct Fake {
    scripts: Arc<Mutex<VecDeque<Script>>>,
    calls: Arc<Mutex<Vec<Call>>>,
}

impl Fake {
    pub fn new(scripts: Vec<Script>) -> Self {
        Fake {
            scripts: Arc::new(Mutex::new(scripts.into())),
            calls: Arc::default(),
        }
    }
    pub fn push(&self, script: Script) {
        self.scripts.lock().expect("lock").push_back(script);
    }
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("lock").clone()
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<SyncResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Sync for Fake {
    type SyncStream = ResponseStream;

    async fn write(
        &self,
        _request: Request<outpost_proto::v1::WriteRequest>,
    ) -> Result<Response<outpost_proto::v1::WriteResponse>, Status> {
        Err(Status::unimplemented(
            "the scripted service takes no writes",
        ))
    }

    async fn sync(
        &self,
        request: Request<SyncRequest>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        self.calls.lock().expect("lock").push(Call {
            authorization,
            request: request.into_inner(),
        });
        let script = self.scripts.lock().expect("lock").pop_front();
        let stream: ResponseStream = match script {
            None => return Err(Status::unavailable("no more scripted streams")),
            Some(Script::Fail(status)) => return Err(status),
            Some(Script::Send(messages)) => Box::pin(futures::StreamExt::chain(
                futures::stream::iter(messages.into_iter().map(Ok)),
                futures::stream::pending(),
            )),
            Some(Script::SendAndClose(messages)) => {
                Box::pin(futures::stream::iter(messages.into_iter().map(Ok)))
            }
        };
        Ok(Response::new(stream))
    }
}

/// Serves the fake on a free port; the server stops when the handle drops.
pub async fn serve(fake: Fake) -> (String, AbortOnDrop) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let handle = tokio::spawn(serve_on(fake, listener));
    (format!("http://{addr}"), AbortOnDrop(handle))
}

pub async fn serve_on(fake: Fake, listener: tokio::net::TcpListener) {
    tonic::transport::Server::builder()
        .add_service(SyncServer::new(fake))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await
        .expect("serve");
}

/// Stops a spawned server when the test ends.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub fn int(i: i64) -> Value {
    Value {
        kind: Some(Kind::Integer(i)),
    }
}
pub fn text(s: &str) -> Value {
    Value {
        kind: Some(Kind::Text(s.into())),
    }
}

pub fn schema() -> SyncResponse {
    let col = |name: &str, ty: &str| ColumnSchema {
        name: name.into(),
        pg_type: String::new(),
        sqlite_type: ty.into(),
        nullable: true,
        merge: "lww".into(),
    };
    SyncResponse {
        message: Some(Message::Schema(Schema {
            version: "v1".into(),
            tables: vec![TableSchema {
                name: "todos".into(),
                columns: vec![col("id", "INTEGER"), col("title", "TEXT")],
                primary_key: vec![0],
            }],
        })),
    }
}

pub fn data(bucket: &str, rows: &[(i64, &str)]) -> SyncResponse {
    SyncResponse {
        message: Some(Message::Data(DataBatch {
            bucket: bucket.into(),
            ops: rows
                .iter()
                .map(|(id, title)| RowOp {
                    op_id: 1,
                    kind: row_op::Kind::Put as i32,
                    table: "todos".into(),
                    key: vec![int(*id)],
                    values: vec![int(*id), text(title)],
                })
                .collect(),
        })),
    }
}

pub fn bucket(name: &str, rows: &[(i64, &str)]) -> BucketChecksum {
    BucketChecksum {
        bucket: name.into(),
        checksum: rows.iter().fold(0, |acc, (id, title)| {
            bucket_checksum_add(
                acc,
                row_hash("todos", &[int(*id)], &[int(*id), text(title)]),
            )
        }),
        count: rows.len() as u64,
    }
}

pub fn checkpoint(op_id: u64, buckets: Vec<BucketChecksum>) -> SyncResponse {
    SyncResponse {
        message: Some(Message::Checkpoint(Checkpoint {
            op_id,
            lsn: 0x1_0000_0000 + op_id,
            epoch: "e1".into(),
            buckets,
        })),
    }
}

pub fn keepalive() -> SyncResponse {
    SyncResponse {
        message: Some(Message::Keepalive(Keepalive { lsn: 1 })),
    }
}

pub const A: &[(i64, &str)] = &[(1, "one"), (2, "two")];
pub const B: &[(i64, &str)] = &[(3, "three")];

/// The initial download of buckets a and b, closed by checkpoint 10.
pub fn initial() -> Vec<SyncResponse> {
    vec![
        schema(),
        data("a", A),
        keepalive(),
        data("b", B),
        checkpoint(10, vec![bucket("a", A), bucket("b", B)]),
    ]
}
