//! The byte stream to the server and the framing of protocol messages on it.
//!
//! Invariants:
//! - Reads are cancellation-safe: bytes read from the socket go into
//!   [`Wire::rbuf`] and are only removed from it when a complete message is
//!   parsed out, synchronously. Dropping a [`Wire::read_message`] future
//!   between two reads loses nothing.
//! - A parsed message owns a `Bytes` slice of the read buffer (no copy).
//! - Writes go through [`Wire::wbuf`]; [`Wire::flush`] writes it out whole.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use postgres_protocol::message::backend::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
#[cfg(unix)]
use tokio::net::UnixStream;
use tokio_postgres::fallible_iterator::FallibleIterator;

use super::{ReplicationError, ServerError};

/// How much the read buffer grows by when it runs out of room: large reads
/// are what let the stream keep up with the walsender.
const READ_RESERVE: usize = 128 * 1024;

/// Tag of CopyBothResponse, which `Message::parse` does not know.
const COPY_BOTH_RESPONSE_TAG: u8 = b'W';

/// The transport: TCP or a Unix-domain socket.
#[derive(Debug)]
pub(crate) enum Socket {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(UnixStream),
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(unix)]
            Socket::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(unix)]
            Socket::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
            #[cfg(unix)]
            Socket::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(unix)]
            Socket::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// A backend message: what `Message::parse` knows, plus CopyBothResponse.
pub(crate) enum Backend {
    Message(Message),
    CopyBothResponse,
}

/// A framed protocol connection.
pub(crate) struct Wire {
    /// The transport.
    io: Socket,
    /// Bytes read but not yet parsed into messages; survives cancellation.
    rbuf: BytesMut,
    /// Encoded messages not yet written.
    wbuf: BytesMut,
}

impl Wire {
    pub(crate) fn new(io: Socket) -> Self {
        Wire {
            io,
            rbuf: BytesMut::with_capacity(READ_RESERVE),
            wbuf: BytesMut::with_capacity(1024),
        }
    }

    /// The buffer to encode outgoing messages into.
    pub(crate) fn wbuf(&mut self) -> &mut BytesMut {
        &mut self.wbuf
    }

    /// Writes all buffered outgoing messages. Not cancellation-safe: a
    /// dropped flush may leave a message half-written.
    pub(crate) async fn flush(&mut self) -> Result<(), ReplicationError> {
        while self.wbuf.has_remaining() {
            let n = self.io.write(&self.wbuf).await?;
            if n == 0 {
                return Err(ReplicationError::Closed {
                    during: "writing to the server",
                });
            }
            self.wbuf.advance(n);
        }
        self.io.flush().await?;
        Ok(())
    }

    /// Parses one complete message from the read buffer, if there is one.
    pub(crate) fn try_parse(&mut self) -> Result<Option<Backend>, ReplicationError> {
        if self.rbuf.first() == Some(&COPY_BOTH_RESPONSE_TAG) {
            if self.rbuf.len() < 5 {
                return Ok(None);
            }
            let len = u32::from_be_bytes([self.rbuf[1], self.rbuf[2], self.rbuf[3], self.rbuf[4]]);
            let total = frame_len(len)?;
            if self.rbuf.len() < total {
                self.rbuf.reserve(total - self.rbuf.len());
                return Ok(None);
            }
            self.rbuf.advance(total);
            return Ok(Some(Backend::CopyBothResponse));
        }
        match Message::parse(&mut self.rbuf) {
            Ok(Some(m)) => Ok(Some(Backend::Message(m))),
            Ok(None) => Ok(None),
            Err(e) => Err(ReplicationError::Protocol(format!(
                "bad message from the server: {e}"
            ))),
        }
    }

    /// Reads the next message. Cancellation-safe. `during` names what was
    /// going on, for the error when the server closes the connection.
    pub(crate) async fn read_message(
        &mut self,
        during: &'static str,
    ) -> Result<Backend, ReplicationError> {
        loop {
            if let Some(m) = self.try_parse()? {
                return Ok(m);
            }
            if self.rbuf.capacity() - self.rbuf.len() < READ_RESERVE / 4 {
                self.rbuf.reserve(READ_RESERVE);
            }
            if self.io.read_buf(&mut self.rbuf).await? == 0 {
                return Err(ReplicationError::Closed { during });
            }
        }
    }

    /// Shuts down the write side (after a Terminate message).
    pub(crate) async fn shutdown(&mut self) {
        let _ = self.io.shutdown().await;
    }
}

/// Total size of a frame whose length field is `len`.
fn frame_len(len: u32) -> Result<usize, ReplicationError> {
    if len < 4 {
        return Err(ReplicationError::Protocol(format!(
            "invalid message length {len}"
        )));
    }
    Ok(len as usize + 1)
}

/// Collects the fields of an ErrorResponse or NoticeResponse.
pub(crate) fn server_error(
    fields: postgres_protocol::message::backend::ErrorFields<'_>,
) -> ServerError {
    let mut err = ServerError::default();
    let mut fields = fields;
    // A malformed field list still yields what was read before the fault.
    while let Ok(Some(f)) = fields.next() {
        let value = String::from_utf8_lossy(f.value_bytes()).into_owned();
        match f.type_() {
            b'S' if err.severity.is_empty() => err.severity = value,
            b'V' => err.severity = value,
            b'C' => err.code = value,
            b'M' => err.message = value,
            b'D' => err.detail = Some(value),
            b'H' => err.hint = Some(value),
            _ => {}
        }
    }
    err
}

/// A short name of a backend message, for protocol errors.
pub(crate) fn describe(m: &Backend) -> &'static str {
    let Backend::Message(m) = m else {
        return "CopyBothResponse";
    };
    match m {
        Message::AuthenticationOk => "AuthenticationOk",
        Message::BackendKeyData(_) => "BackendKeyData",
        Message::CommandComplete(_) => "CommandComplete",
        Message::CopyData(_) => "CopyData",
        Message::CopyDone => "CopyDone",
        Message::CopyInResponse(_) => "CopyInResponse",
        Message::CopyOutResponse(_) => "CopyOutResponse",
        Message::DataRow(_) => "DataRow",
        Message::EmptyQueryResponse => "EmptyQueryResponse",
        Message::ErrorResponse(_) => "ErrorResponse",
        Message::NoticeResponse(_) => "NoticeResponse",
        Message::NotificationResponse(_) => "NotificationResponse",
        Message::ParameterStatus(_) => "ParameterStatus",
        Message::ReadyForQuery(_) => "ReadyForQuery",
        Message::RowDescription(_) => "RowDescription",
        _ => "unexpected message",
    }
}

/// Connects the transport for one host.
pub(crate) async fn connect_tcp(host: &str, port: u16) -> io::Result<Socket> {
    let stream = TcpStream::connect((host, port)).await?;
    stream.set_nodelay(true)?;
    Ok(Socket::Tcp(stream))
}

/// Connects to the Unix socket `dir/.s.PGSQL.port`.
#[cfg(unix)]
pub(crate) async fn connect_unix(dir: &std::path::Path, port: u16) -> io::Result<Socket> {
    let path = dir.join(format!(".s.PGSQL.{port}"));
    Ok(Socket::Unix(UnixStream::connect(path).await?))
}
