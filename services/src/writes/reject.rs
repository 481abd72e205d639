//! Why a group is not applied: the reason codes clients see, and the
//! classes of Postgres errors.
//!
//! Invariant: an error is *definite* (the group is rejected, and the
//! rejection recorded so a retry gets the same answer) only when it is the
//! data's fault: a rule, a constraint, a value, the table function. Errors
//! of the connection or the server (class 08, 53, 57, 58, XX) are
//! *transient*: the request fails and the client retries it. Serialization
//! failures and deadlocks are retried here, a few times, before the group
//! is rejected as `conflict`.

use tokio_postgres::error::SqlState;

/// The stable reason codes of rejected groups.
pub mod reason {
    /// The write rules do not allow the write.
    pub const PERMISSION_DENIED: &str = "permission_denied";
    /// A `reject_if_stale` column changed since the client read it.
    pub const STALE: &str = "stale";
    /// An update of a row that no longer exists.
    pub const NOT_FOUND: &str = "not_found";
    /// A table the service does not sync.
    pub const UNKNOWN_TABLE: &str = "unknown_table";
    /// A column the table (or the client's copy of it) does not have.
    pub const UNKNOWN_COLUMN: &str = "unknown_column";
    /// A value that does not fit its column (also SQLSTATE class 22).
    pub const INVALID_VALUE: &str = "invalid_value";
    /// SQLSTATE 23505.
    pub const UNIQUE_VIOLATION: &str = "unique_violation";
    /// SQLSTATE 23503.
    pub const FOREIGN_KEY_VIOLATION: &str = "foreign_key_violation";
    /// SQLSTATE 23514.
    pub const CHECK_VIOLATION: &str = "check_violation";
    /// SQLSTATE 23502.
    pub const NOT_NULL_VIOLATION: &str = "not_null_violation";
    /// Any other SQLSTATE of class 23 (e.g. an exclusion constraint).
    pub const CONSTRAINT_VIOLATION: &str = "constraint_violation";
    /// The table function (or a trigger) raised an exception.
    pub const REJECTED_BY_FUNCTION: &str = "rejected_by_function";
    /// Serialization failures or deadlocks persisted through the retries.
    pub const CONFLICT: &str = "conflict";
    /// Any other error Postgres reported for the group.
    pub const DATABASE_ERROR: &str = "database_error";
}

/// A refused group: the code, a message for people, the op refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Rejection {
    pub code: &'static str,
    pub message: String,
    pub op_index: u32,
}

/// How applying a group failed.
#[derive(Debug)]
pub(crate) enum GroupError {
    /// Definite: roll back, record, report.
    Rejected(Rejection),
    /// A serialization failure, a deadlock or a stale prepared statement:
    /// the group may go through when run again.
    Retry(String),
    /// Postgres could not be reached or failed for reasons of its own.
    Transient(tokio_postgres::Error),
    /// The ledger claim found the group recorded before: nothing was done;
    /// the answer is the recorded result.
    Recorded,
}

impl GroupError {
    pub(crate) fn rejected(code: &'static str, message: impl Into<String>, op_index: u32) -> Self {
        GroupError::Rejected(Rejection {
            code,
            message: message.into(),
            op_index,
        })
    }
}

/// What the failing statement was doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Reading or writing the table, or the bookkeeping tables.
    Write,
    /// Calling the table function (any error it raises is its verdict).
    Function,
}

/// Sorts a Postgres error into definite, retry or transient.
pub(crate) fn classify(e: tokio_postgres::Error, stage: Stage, op_index: u32) -> GroupError {
    let Some(db) = e.as_db_error() else {
        return GroupError::Transient(e);
    };
    let code = db.code();
    let class = &code.code()[..2.min(code.code().len())];
    if *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::T_R_DEADLOCK_DETECTED
        || *code == SqlState::LOCK_NOT_AVAILABLE
        || *code == SqlState::INVALID_SQL_STATEMENT_NAME
        || (*code == SqlState::FEATURE_NOT_SUPPORTED && db.message().contains("cached plan"))
    {
        return GroupError::Retry(db.message().to_string());
    }
    if matches!(class, "08" | "53" | "57" | "58" | "XX" | "F0") {
        return GroupError::Transient(e);
    }
    let message = db.message().to_string();
    let reason = if stage == Stage::Function {
        reason::REJECTED_BY_FUNCTION
    } else if *code == SqlState::UNIQUE_VIOLATION {
        reason::UNIQUE_VIOLATION
    } else if *code == SqlState::FOREIGN_KEY_VIOLATION {
        reason::FOREIGN_KEY_VIOLATION
    } else if *code == SqlState::CHECK_VIOLATION {
        reason::CHECK_VIOLATION
    } else if *code == SqlState::NOT_NULL_VIOLATION {
        reason::NOT_NULL_VIOLATION
    } else if class == "23" {
        reason::CONSTRAINT_VIOLATION
    } else if class == "22" {
        reason::INVALID_VALUE
    } else if *code == SqlState::RAISE_EXCEPTION {
        reason::REJECTED_BY_FUNCTION
    } else if *code == SqlState::INSUFFICIENT_PRIVILEGE {
        reason::PERMISSION_DENIED
    } else {
        reason::DATABASE_ERROR
    };
    GroupError::rejected(reason, message, op_index)
}
