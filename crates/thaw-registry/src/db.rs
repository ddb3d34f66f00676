//! The two engines the registry runs on, behind one small interface.
//!
//! One host keeps its registry in an embedded SQLite file; many hosts share
//! one PostgreSQL database. Every operation of the registry is written once,
//! as a function of a [`Tx`], in the SQL both engines accept: placeholders
//! are written `?1`, `?2`, ... (PostgreSQL's `$1` is made from them here),
//! integers are 64-bit, booleans are integers, new rows' ids come back with
//! `RETURNING`. What differs between the engines stays in this file and in
//! `schema.rs`: connections, isolation, the retry of a transaction that
//! PostgreSQL aborted because it raced another one, and locking queue rows.
//!
//! Transactions come in three kinds ([`Kind`]). On SQLite all three are
//! the same (one connection, one writer, serializable by construction). On
//! PostgreSQL a `Write` runs SERIALIZABLE and is run again from the start
//! when the server aborts it for a conflict, so the closure that makes it
//! must not have effects outside the database; a `Read` sees one snapshot;
//! a `Queue` runs READ COMMITTED and takes its rows with
//! `FOR UPDATE SKIP LOCKED`, so workers claiming from one queue never wait
//! on, nor abort, each other.

use crate::RegistryError;
use std::sync::Mutex;
use std::time::Duration;

/// One value going into or coming out of a statement.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// What can be bound to a placeholder.
pub(crate) trait ToValue {
    fn to_value(&self) -> Value;
}

/// What a column can be read as.
pub(crate) trait FromValue: Sized {
    fn from_value(v: &Value) -> Option<Self>;
}

macro_rules! int_values {
    ($($t:ty),*) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> Value {
                Value::Int(*self as i64)
            }
        }
        impl FromValue for $t {
            fn from_value(v: &Value) -> Option<Self> {
                match v {
                    Value::Int(i) => <$t>::try_from(*i).ok(),
                    _ => None,
                }
            }
        }
    )*};
}
int_values!(i64, i32, u32, u8, usize);

impl ToValue for u64 {
    fn to_value(&self) -> Value {
        Value::Int(i64::try_from(*self).unwrap_or(i64::MAX))
    }
}
impl FromValue for u64 {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Int(i) => u64::try_from(*i).ok(),
            _ => None,
        }
    }
}
impl ToValue for bool {
    fn to_value(&self) -> Value {
        Value::Int(*self as i64)
    }
}
impl FromValue for bool {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Int(i) => Some(*i != 0),
            _ => None,
        }
    }
}
impl ToValue for str {
    fn to_value(&self) -> Value {
        Value::Text(self.to_string())
    }
}
impl ToValue for String {
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
}
impl FromValue for String {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Text(s) => Some(s.clone()),
            _ => None,
        }
    }
}
impl ToValue for std::borrow::Cow<'_, str> {
    fn to_value(&self) -> Value {
        Value::Text(self.to_string())
    }
}
impl ToValue for [u8] {
    fn to_value(&self) -> Value {
        Value::Blob(self.to_vec())
    }
}
impl ToValue for Vec<u8> {
    fn to_value(&self) -> Value {
        Value::Blob(self.clone())
    }
}
impl FromValue for Vec<u8> {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Blob(b) => Some(b.clone()),
            _ => None,
        }
    }
}
impl FromValue for f64 {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Real(r) => Some(*r),
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }
    }
}
impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value {
        (**self).to_value()
    }
}
impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value {
        match self {
            Some(v) => v.to_value(),
            None => Value::Null,
        }
    }
}
impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Null => Some(None),
            v => T::from_value(v).map(Some),
        }
    }
}

/// `params![a, b, c]`: the values bound to `?1`, `?2`, `?3`.
macro_rules! params {
    () => { &[] as &[$crate::db::Value] };
    ($($v:expr),+ $(,)?) => {
        &[$($crate::db::ToValue::to_value(&$v)),+] as &[$crate::db::Value]
    };
}
pub(crate) use params;

/// One row of a result.
#[derive(Debug)]
pub(crate) struct Row(Vec<Value>);

impl Row {
    /// Column `i` as a `T`; a column of another type or out of range is
    /// [`RegistryError::Corrupt`].
    pub fn get<T: FromValue>(&self, i: usize) -> Result<T, RegistryError> {
        let v = self
            .0
            .get(i)
            .ok_or_else(|| RegistryError::Corrupt(format!("no column {i} in a row")))?;
        T::from_value(v).ok_or_else(|| {
            RegistryError::Corrupt(format!(
                "column {i} holds {v:?}, not a {}",
                std::any::type_name::<T>()
            ))
        })
    }
}

/// Which engine a registry stands on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// What a transaction is for (see the module's documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Read,
    Write,
    Queue,
}

/// The database behind a registry, with its connections.
pub(crate) enum Store {
    Sqlite(Mutex<rusqlite::Connection>),
    Postgres(PgPool),
}

/// A transaction on either engine.
pub(crate) enum Tx<'c> {
    Sqlite(rusqlite::Transaction<'c>),
    Postgres(postgres::Transaction<'c>),
}

/// How many times a `Write` that PostgreSQL aborted for a conflict is run
/// again before the conflict is reported.
const WRITE_ATTEMPTS: u32 = 20;

impl Store {
    /// The PostgreSQL database's URL, if the records are there.
    pub fn postgres_url(&self) -> Option<&str> {
        match self {
            Store::Sqlite(_) => None,
            Store::Postgres(pool) => Some(&pool.url),
        }
    }

    pub fn engine(&self) -> Engine {
        match self {
            Store::Sqlite(_) => Engine::Sqlite,
            Store::Postgres(_) => Engine::Postgres,
        }
    }

    /// Runs `f` in one transaction of `kind`, committed when it returns
    /// `Ok`, rolled back when it returns an error.
    pub fn run<T>(
        &self,
        kind: Kind,
        mut f: impl FnMut(&mut Tx<'_>) -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        match self {
            Store::Sqlite(conn) => {
                let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
                let behavior = match kind {
                    Kind::Read => rusqlite::TransactionBehavior::Deferred,
                    Kind::Write | Kind::Queue => rusqlite::TransactionBehavior::Immediate,
                };
                let mut tx = Tx::Sqlite(conn.transaction_with_behavior(behavior)?);
                let out = f(&mut tx)?;
                tx.commit()?;
                Ok(out)
            }
            Store::Postgres(pool) => {
                let mut client = pool.take()?;
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    let result = (|| -> Result<T, RegistryError> {
                        let mut builder = client.build_transaction();
                        builder = match kind {
                            Kind::Read => builder
                                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                                .read_only(true),
                            Kind::Write => {
                                builder.isolation_level(postgres::IsolationLevel::Serializable)
                            }
                            Kind::Queue => {
                                builder.isolation_level(postgres::IsolationLevel::ReadCommitted)
                            }
                        };
                        let mut tx = Tx::Postgres(builder.start()?);
                        let out = f(&mut tx)?;
                        tx.commit()?;
                        Ok(out)
                    })();
                    match result {
                        Err(e) if e.is_conflict() && attempt < WRITE_ATTEMPTS => {
                            // Back off a little, differently for each
                            // contender, so that they stop meeting.
                            let ms = rand::random::<u64>() % (2 * attempt as u64).max(1);
                            std::thread::sleep(std::time::Duration::from_millis(ms));
                        }
                        Err(RegistryError::Postgres(e)) if e.is_closed() => {
                            // The connection is gone with the transaction:
                            // it is not given back.
                            return Err(RegistryError::Unavailable(format!(
                                "lost the connection to the database: {e}"
                            )));
                        }
                        other => {
                            pool.give_back(client);
                            return other;
                        }
                    }
                }
            }
        }
    }
}

impl Tx<'_> {
    fn commit(self) -> Result<(), RegistryError> {
        match self {
            Tx::Sqlite(tx) => tx.commit()?,
            Tx::Postgres(tx) => tx.commit()?,
        }
        Ok(())
    }

    /// Runs one statement; returns how many rows it changed.
    pub fn execute(&mut self, sql: &str, args: &[Value]) -> Result<usize, RegistryError> {
        match self {
            Tx::Sqlite(tx) => Ok(tx.execute(sql, rusqlite::params_from_iter(args.iter()))?),
            Tx::Postgres(tx) => {
                let args: Vec<&(dyn postgres::types::ToSql + Sync)> =
                    args.iter().map(|a| a as _).collect();
                Ok(tx.execute(pg_sql(sql).as_str(), &args)? as usize)
            }
        }
    }

    /// Runs several statements without arguments (schema changes).
    pub fn batch(&mut self, sql: &str) -> Result<(), RegistryError> {
        match self {
            Tx::Sqlite(tx) => tx.execute_batch(sql)?,
            Tx::Postgres(tx) => tx.batch_execute(sql)?,
        }
        Ok(())
    }

    /// Every row of a query.
    pub fn rows(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, RegistryError> {
        match self {
            Tx::Sqlite(tx) => {
                let mut stmt = tx.prepare_cached(sql)?;
                let columns = stmt.column_count();
                let mut rows = stmt.query(rusqlite::params_from_iter(args.iter()))?;
                let mut out = Vec::new();
                while let Some(row) = rows.next()? {
                    let mut values = Vec::with_capacity(columns);
                    for i in 0..columns {
                        values.push(match row.get_ref(i)? {
                            rusqlite::types::ValueRef::Null => Value::Null,
                            rusqlite::types::ValueRef::Integer(i) => Value::Int(i),
                            rusqlite::types::ValueRef::Real(r) => Value::Real(r),
                            rusqlite::types::ValueRef::Text(t) => {
                                Value::Text(String::from_utf8_lossy(t).into_owned())
                            }
                            rusqlite::types::ValueRef::Blob(b) => Value::Blob(b.to_vec()),
                        });
                    }
                    out.push(Row(values));
                }
                Ok(out)
            }
            Tx::Postgres(tx) => {
                let args: Vec<&(dyn postgres::types::ToSql + Sync)> =
                    args.iter().map(|a| a as _).collect();
                let rows = tx.query(pg_sql(sql).as_str(), &args)?;
                rows.iter().map(pg_row).collect()
            }
        }
    }

    /// Every row of a query, each made into a `T` by `f`.
    pub fn map<T>(
        &mut self,
        sql: &str,
        args: &[Value],
        f: impl Fn(&Row) -> Result<T, RegistryError>,
    ) -> Result<Vec<T>, RegistryError> {
        self.rows(sql, args)?.iter().map(f).collect()
    }

    /// The first row of a query, if any, made into a `T` by `f`.
    pub fn opt<T>(
        &mut self,
        sql: &str,
        args: &[Value],
        f: impl FnOnce(&Row) -> Result<T, RegistryError>,
    ) -> Result<Option<T>, RegistryError> {
        self.rows(sql, args)?.first().map(f).transpose()
    }

    /// The first row of a query, which must have one.
    pub fn one<T>(
        &mut self,
        sql: &str,
        args: &[Value],
        f: impl FnOnce(&Row) -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        self.opt(sql, args, f)?.ok_or_else(|| {
            RegistryError::Corrupt(format!("no row where one was certain: {}", first_line(sql)))
        })
    }

    /// `FOR UPDATE SKIP LOCKED` where the engine has it: rows another
    /// worker is claiming are passed over rather than waited for. SQLite
    /// has one writer at a time and needs nothing.
    pub fn skip_locked(&self) -> &'static str {
        match self {
            Tx::Sqlite(_) => "",
            Tx::Postgres(_) => " FOR UPDATE SKIP LOCKED",
        }
    }
}

fn first_line(sql: &str) -> &str {
    sql.trim().lines().next().unwrap_or_default()
}

/// `sql` with its `?N` placeholders written `$N`, as PostgreSQL wants
/// them; quoted text is left alone.
fn pg_sql(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quoted = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                quoted = !quoted;
                out.push(c);
            }
            '?' if !quoted && chars.peek().is_some_and(|n| n.is_ascii_digit()) => out.push('$'),
            c => out.push(c),
        }
    }
    out
}

fn pg_row(row: &postgres::Row) -> Result<Row, RegistryError> {
    use postgres::types::Type;
    let mut values = Vec::with_capacity(row.len());
    for (i, column) in row.columns().iter().enumerate() {
        let ty = column.type_();
        let v = if *ty == Type::INT8 {
            row.try_get::<_, Option<i64>>(i)?.map(Value::Int)
        } else if *ty == Type::INT4 {
            row.try_get::<_, Option<i32>>(i)?
                .map(|v| Value::Int(v.into()))
        } else if *ty == Type::INT2 {
            row.try_get::<_, Option<i16>>(i)?
                .map(|v| Value::Int(v.into()))
        } else if *ty == Type::BOOL {
            row.try_get::<_, Option<bool>>(i)?
                .map(|v| Value::Int(v.into()))
        } else if *ty == Type::FLOAT8 {
            row.try_get::<_, Option<f64>>(i)?.map(Value::Real)
        } else if *ty == Type::TEXT || *ty == Type::VARCHAR || *ty == Type::NAME {
            row.try_get::<_, Option<String>>(i)?.map(Value::Text)
        } else if *ty == Type::BYTEA {
            row.try_get::<_, Option<Vec<u8>>>(i)?.map(Value::Blob)
        } else {
            return Err(RegistryError::Corrupt(format!(
                "column `{}` has type {ty}, which the registry does not read",
                column.name()
            )));
        };
        values.push(v.unwrap_or(Value::Null));
    }
    Ok(Row(values))
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Integer(*i),
            Value::Real(r) => ValueRef::Real(*r),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

impl postgres::types::ToSql for Value {
    fn to_sql(
        &self,
        ty: &postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use postgres::types::Type;
        match self {
            Value::Null => Ok(postgres::types::IsNull::Yes),
            Value::Int(i) => {
                if *ty == Type::INT8 {
                    i.to_sql(ty, out)
                } else if *ty == Type::INT4 {
                    i32::try_from(*i)?.to_sql(ty, out)
                } else if *ty == Type::INT2 {
                    i16::try_from(*i)?.to_sql(ty, out)
                } else if *ty == Type::BOOL {
                    (*i != 0).to_sql(ty, out)
                } else if *ty == Type::FLOAT8 {
                    (*i as f64).to_sql(ty, out)
                } else {
                    Err(format!("an integer cannot go where {ty} is wanted").into())
                }
            }
            Value::Real(r) => r.to_sql(ty, out),
            Value::Text(s) => s.as_str().to_sql(ty, out),
            Value::Blob(b) => b.as_slice().to_sql(ty, out),
        }
    }

    fn accepts(_: &postgres::types::Type) -> bool {
        // The type is checked against the value in `to_sql`.
        true
    }

    postgres::types::to_sql_checked!();
}

/// Connections to one PostgreSQL database, made when needed and kept for
/// the next transaction.
pub(crate) struct PgPool {
    url: String,
    idle: Mutex<Vec<postgres::Client>>,
}

/// Idle connections kept; more may be open while transactions run.
const IDLE_KEPT: usize = 16;

impl PgPool {
    pub fn connect(url: &str) -> Result<PgPool, RegistryError> {
        let pool = PgPool {
            url: url.to_string(),
            idle: Mutex::new(Vec::new()),
        };
        let client = pool.take()?;
        pool.give_back(client);
        Ok(pool)
    }

    fn take(&self) -> Result<postgres::Client, RegistryError> {
        loop {
            let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match idle {
                Some(c) if !c.is_closed() => return Ok(c),
                Some(_) => continue,
                None => break,
            }
        }
        connect(&self.url)
    }

    fn give_back(&self, client: postgres::Client) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if !client.is_closed() && idle.len() < IDLE_KEPT {
            idle.push(client);
        }
    }
}

impl Drop for PgPool {
    fn drop(&mut self) {
        // A client closes its connection by running a little of its own
        // runtime, which cannot happen on an async thread: the registry's
        // last reference may well go on one.
        let idle = std::mem::take(&mut *self.idle.lock().unwrap_or_else(|p| p.into_inner()));
        if !idle.is_empty() {
            let _ = std::thread::Builder::new()
                .name("thaw-pg-close".into())
                .spawn(move || drop(idle));
        }
    }
}

/// Opens a connection to the database at `url`, bounded against a network
/// that goes away: without these bounds a query sent just before a worker
/// lost its link waits for TCP to give up (a quarter of an hour), and the
/// worker keeps acting on a lease it can no longer renew. The URL's own
/// settings win where it has them.
pub(crate) fn connect(url: &str) -> Result<postgres::Client, RegistryError> {
    let unavailable = |e: &dyn std::fmt::Display| {
        RegistryError::Unavailable(format!(
            "cannot connect to the database at {}: {e}",
            redact(url)
        ))
    };
    let mut config: postgres::Config = url.parse().map_err(|e| unavailable(&e))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(5));
    }
    if config.get_tcp_user_timeout().is_none() {
        // Sent data unacknowledged this long: the server is gone.
        config.tcp_user_timeout(Duration::from_secs(5));
    }
    if config.get_keepalives_interval().is_none() {
        // An idle connection (a LISTEN) notices a lost peer in about 10 s.
        config
            .keepalives_idle(Duration::from_secs(4))
            .keepalives_interval(Duration::from_secs(2))
            .keepalives_retries(3);
    }
    if config.get_options().is_none() {
        // A worker that vanished in the middle of a transaction would
        // otherwise hold its row locks until the server's own keepalive
        // gives up on it (two hours by default), stalling every other
        // worker's schedules and queue behind them.
        config.options("-c idle_in_transaction_session_timeout=60000");
    }
    config.connect(postgres::NoTls).map_err(|e| unavailable(&e))
}

/// A database URL with its password replaced, fit for a message.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

impl RegistryError {
    /// PostgreSQL aborted the transaction because it raced another one
    /// (serialization failure or deadlock): running it again will do.
    fn is_conflict(&self) -> bool {
        match self {
            RegistryError::Postgres(e) => matches!(
                e.code(),
                Some(&postgres::error::SqlState::T_R_SERIALIZATION_FAILURE)
                    | Some(&postgres::error::SqlState::T_R_DEADLOCK_DETECTED)
            ),
            _ => false,
        }
    }

    /// The statement broke a uniqueness rule (two live keys with one name).
    pub(crate) fn is_unique_violation(&self) -> bool {
        match self {
            RegistryError::Db(rusqlite::Error::SqliteFailure(e, _)) => {
                e.code == rusqlite::ErrorCode::ConstraintViolation
            }
            RegistryError::Postgres(e) => {
                e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION)
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_dollars_outside_quotes() {
        assert_eq!(
            pg_sql("SELECT a FROM t WHERE b = ?1 AND c = '?2' AND d IN (?2, ?10)"),
            "SELECT a FROM t WHERE b = $1 AND c = '?2' AND d IN ($2, $10)"
        );
    }

    #[test]
    fn passwords_do_not_reach_messages() {
        assert_eq!(
            redact("postgres://thaw:s3cret@db.example:5432/thaw"),
            "postgres://thaw:***@db.example:5432/thaw"
        );
        assert_eq!(redact("postgres://thaw@db/thaw"), "postgres://thaw@db/thaw");
        assert_eq!(
            redact("host=/run/pg dbname=thaw"),
            "host=/run/pg dbname=thaw"
        );
    }

    #[test]
    fn values_read_back_as_their_types_only() {
        let row = Row(vec![
            Value::Int(7),
            Value::Null,
            Value::Text("x".into()),
            Value::Int(-1),
        ]);
        assert_eq!(row.get::<i64>(0).unwrap(), 7);
        assert_eq!(row.get::<Option<i64>>(1).unwrap(), None);
        assert_eq!(row.get::<String>(2).unwrap(), "x");
        assert!(row.get::<i64>(2).is_err(), "text is not a number");
        assert!(row.get::<u32>(3).is_err(), "-1 is no u32");
        assert!(row.get::<i64>(9).is_err(), "no such column");
    }
}
