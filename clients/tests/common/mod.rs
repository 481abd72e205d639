//! A scripted in-process Outpost `Sync` service and message builders for
//! client tests: `Sync` calls play scripted streams (fixed or fed live by the
//! test), `Write` calls are answered by scripted responders.
#![allow(dead_code)]

use futures::Stream;
use outpost_client::Replica;
use outpost_proto::v1::sync_response::Message;
use outpost_proto::v1::sync_server::{Sync, SyncServer};
use outpost_proto::v1::{
    BucketChecksum, Checkpoint, ColumnSchema, DataBatch, GroupResult, Keepalive, RowOp, Schema,
    SyncRequest, SyncResponse, TableSchema, Value, WriteRequest, WriteResponse, group_result,
    row_op, value::Kind,
};
use outpost_proto::{bucket_checksum_add, row_hash};
use std::collections::VecDeque;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::{Request, Response, Status};

/// What the fake service does on one `Sync` call.
pub enum Script {
    /// Fails the call with this status.
    Fail(Status),
    /// Sends these messages, then keeps the stream open.
    Send(Vec<SyncResponse>),
    /// Sends these messages, then ends the stream.
    SendAndClose(Vec<SyncResponse>),
    /// Sends what the test sends on the other end; ends when it is dropped.
    Live(tokio::sync::mpsc::UnboundedReceiver<SyncResponse>),
}

/// Answers a `Write` request.
pub type Responder = Box<dyn FnMut(&WriteRequest) -> Result<WriteResponse, Status> + Send>;

/// What the fake service does on one `Write` call.
pub enum WriteScript {
    /// Fails the call with this status.
    Fail(Status),
    /// Answers with what the responder returns.
    Respond(Responder),
    /// Never answers.
    Hang,
}

/// One `Write` call the fake service received.
#[derive(Debug, Clone)]
pub struct WriteCall {
    pub authorization: Option<String>,
    pub request: WriteRequest,
}

impl WriteCall {
    pub fn seqs(&self) -> Vec<u64> {
        self.request.groups.iter().map(|g| g.seq).collect()
    }
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
    write_scripts: Arc<Mutex<VecDeque<WriteScript>>>,
    /// Answers `Write` calls once the scripts are used up (else: unimplemented).
    write_default: Arc<Mutex<Option<Responder>>>,
    writes: Arc<Mutex<Vec<WriteCall>>>,
}

impl Fake {
    pub fn new(scripts: Vec<Script>) -> Self {
        Fake {
            scripts: Arc::new(Mutex::new(scripts.into())),
            ..Fake::default()
        }
    }
    pub fn push_write(&self, script: WriteScript) {
        self.write_scripts.lock().expect("lock").push_back(script);
    }
    /// Answers every further `Write` call (once the scripts are used up).
    pub fn answer_writes(
        &self,
        mut responder: impl FnMut(&WriteRequest) -> WriteResponse + Send + 'static,
    ) {
        self.handle_writes(move |request| Ok(responder(request)));
    }
    /// Like [`Fake::answer_writes`], and the handler may fail the call.
    pub fn handle_writes(
        &self,
        handler: impl FnMut(&WriteRequest) -> Result<WriteResponse, Status> + Send + 'static,
    ) {
        *self.write_default.lock().expect("lock") = Some(Box::new(handler));
    }
    pub fn writes(&self) -> Vec<WriteCall> {
        self.writes.lock().expect("lock").clone()
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
        request: Request<WriteRequest>,
    ) -> Result<Response<WriteResponse>, Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let request = request.into_inner();
        self.writes.lock().expect("lock").push(WriteCall {
            authorization,
            request: request.clone(),
        });
        let script = self.write_scripts.lock().expect("lock").pop_front();
        match script {
            Some(WriteScript::Fail(status)) => Err(status),
            Some(WriteScript::Respond(mut respond)) => respond(&request).map(Response::new),
            Some(WriteScript::Hang) => futures::future::pending().await,
            None => match self.write_default.lock().expect("lock").as_mut() {
                Some(respond) => respond(&request).map(Response::new),
                None => Err(Status::unimplemented(
                    "the scripted service takes no writes",
                )),
            },
        }
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
            Some(Script::Live(rx)) => Box::pin(futures::StreamExt::map(
                tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
                Ok,
            )),
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

/// An address with nothing listening yet, for a service that comes up later.
///
/// On 127.0.0.2, not 127.0.0.1: [`serve`] binds 127.0.0.1 port 0, and the
/// port freed here could be handed to another test's server, which this
/// test's retrying client would then reach.
pub fn unused_addr() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    listener.local_addr().expect("addr")
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

/// A batch that removes these todo ids from the bucket.
pub fn removes(bucket: &str, ids: &[i64]) -> SyncResponse {
    SyncResponse {
        message: Some(Message::Data(DataBatch {
            bucket: bucket.into(),
            ops: ids
                .iter()
                .map(|id| RowOp {
                    op_id: 1,
                    kind: row_op::Kind::Remove as i32,
                    table: "todos".into(),
                    key: vec![int(*id)],
                    values: vec![],
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

/// A checkpoint at op `op_id`, LSN `0x1_0000_0000 + op_id`.
pub fn checkpoint(op_id: u64, buckets: Vec<BucketChecksum>) -> SyncResponse {
    SyncResponse {
        message: Some(Message::Checkpoint(Checkpoint {
            op_id,
            lsn: lsn(op_id),
            epoch: "e1".into(),
            buckets,
        })),
    }
}

/// The LSN of [`checkpoint`] `op_id`.
pub fn lsn(op_id: u64) -> u64 {
    0x1_0000_0000 + op_id
}

/// One answer per group of the request, from `answer(seq)`.
pub fn answer_each(
    request: &WriteRequest,
    mut answer: impl FnMut(u64) -> GroupResult,
) -> WriteResponse {
    WriteResponse {
        results: request.groups.iter().map(|g| answer(g.seq)).collect(),
    }
}

pub fn applied(seq: u64, commit_lsn: u64) -> GroupResult {
    GroupResult {
        seq,
        status: group_result::Status::Applied as i32,
        commit_lsn,
        reason_code: String::new(),
        message: String::new(),
        op_index: 0,
    }
}

pub fn duplicate(seq: u64, commit_lsn: u64) -> GroupResult {
    GroupResult {
        status: group_result::Status::Duplicate as i32,
        ..applied(seq, commit_lsn)
    }
}

pub fn rejected(seq: u64, code: &str, message: &str) -> GroupResult {
    GroupResult {
        seq,
        status: group_result::Status::Rejected as i32,
        commit_lsn: 0,
        reason_code: code.into(),
        message: message.into(),
        op_index: 0,
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

/// Every todo in the replica at `db`, ordered by id.
pub fn todos(db: &Path) -> Vec<(i64, String)> {
    let replica = Replica::open_read_only(db).expect("open");
    let mut stmt = replica
        .connection()
        .prepare("SELECT id, title FROM todos ORDER BY id")
        .expect("prepare");
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

/// Awaits `f`, failing the test after 20 seconds.
pub async fn with_timeout<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("timed out")
}
