//! Tests of the replication client: the decoder on hand-built frames and
//! arbitrary bytes, and the client against a real Postgres cluster.

mod decode;
mod live_conn;
mod live_stream;
mod support;
