//! Authentication during startup: trust, cleartext password, md5 and
//! SCRAM-SHA-256 (without channel binding: there is no TLS).
//!
//! Invariant: a rejection by the server (SQLSTATE class 28) or a method this
//! client cannot answer is an [`ReplicationError::Auth`], never retried.

use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{self, ChannelBinding, ScramSha256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio_postgres::fallible_iterator::FallibleIterator;

use super::ReplicationError;
use super::conn::{log_notice, server_error};
use super::wire::{self, Backend, Wire};

/// Runs the authentication exchange, up to AuthenticationOk.
pub(super) async fn authenticate(
    wire: &mut Wire,
    user: &str,
    password: Option<&[u8]>,
) -> Result<(), ReplicationError> {
    let need_password = || {
        password.ok_or_else(|| {
            ReplicationError::Auth("the server asks for a password and none is configured".into())
        })
    };
    loop {
        match read_auth(wire).await? {
            Message::AuthenticationOk => return Ok(()),
            Message::AuthenticationCleartextPassword => {
                frontend::password_message(need_password()?, wire.wbuf())?;
                wire.flush().await?;
            }
            Message::AuthenticationMd5Password(body) => {
                let hash = md5_hash(user.as_bytes(), need_password()?, body.salt());
                frontend::password_message(hash.as_bytes(), wire.wbuf())?;
                wire.flush().await?;
            }
            Message::AuthenticationSasl(body) => {
                let mut mechanisms = body.mechanisms();
                let mut scram = false;
                while let Some(m) = mechanisms.next().map_err(|e| {
                    ReplicationError::Protocol(format!("malformed SASL mechanism list: {e}"))
                })? {
                    scram |= m == sasl::SCRAM_SHA_256;
                }
                if !scram {
                    return Err(ReplicationError::Auth(
                        "the server offers no SASL mechanism this client supports \
                         (SCRAM-SHA-256 without channel binding)"
                            .into(),
                    ));
                }
                scram_exchange(wire, need_password()?).await?;
            }
            other => {
                return Err(ReplicationError::Auth(format!(
                    "unsupported authentication method requested by the server ({})",
                    wire::describe(&Backend::Message(other))
                )));
            }
        }
    }
}

/// SCRAM-SHA-256 without channel binding (there is no TLS).
async fn scram_exchange(wire: &mut Wire, password: &[u8]) -> Result<(), ReplicationError> {
    let auth_err = |e: std::io::Error| ReplicationError::Auth(format!("SCRAM exchange: {e}"));
    let mut scram = ScramSha256::new(password, ChannelBinding::unsupported());
    frontend::sasl_initial_response(sasl::SCRAM_SHA_256, scram.message(), wire.wbuf())?;
    wire.flush().await?;
    let Message::AuthenticationSaslContinue(body) = read_auth(wire).await? else {
        return Err(ReplicationError::Protocol(
            "expected AuthenticationSASLContinue".into(),
        ));
    };
    scram.update(body.data()).map_err(auth_err)?;
    frontend::sasl_response(scram.message(), wire.wbuf())?;
    wire.flush().await?;
    let Message::AuthenticationSaslFinal(body) = read_auth(wire).await? else {
        return Err(ReplicationError::Protocol(
            "expected AuthenticationSASLFinal".into(),
        ));
    };
    scram.finish(body.data()).map_err(auth_err)
}

/// Reads the next authentication message; an ErrorResponse becomes an error.
async fn read_auth(wire: &mut Wire) -> Result<Message, ReplicationError> {
    loop {
        match wire.read_message("authenticating").await? {
            Backend::Message(Message::NoticeResponse(n)) => log_notice(n.fields()),
            Backend::Message(Message::ErrorResponse(e)) => {
                let err = wire::server_error(e.fields());
                // Class 28: invalid authorization specification.
                return Err(if err.code.starts_with("28") {
                    ReplicationError::Auth(err.to_string())
                } else {
                    server_error(err)
                });
            }
            Backend::Message(m) => return Ok(m),
            Backend::CopyBothResponse => {
                return Err(ReplicationError::Protocol(
                    "unexpected CopyBothResponse while authenticating".into(),
                ));
            }
        }
    }
}
