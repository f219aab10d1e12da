//! Where the store lives: a SQLite path or a MariaDB DSN.
//!
//! MariaDB is named either in the Go driver form the reference server takes
//! (`user:password@tcp(host:3306)/whelm?parseTime=true`, PROTOCOLS.md
//! section 1) or as a URL (`mysql://user:pass@host:3306/whelm`). Anything
//! else given to `--db` is a SQLite file path.

use std::fmt;

/// Default MariaDB port.
pub const DEFAULT_MYSQL_PORT: u16 = 3306;

/// Why a DSN does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DsnError {
    /// The text after `@` is not `tcp(host[:port])` or `unix(/path)`.
    #[error("unsupported network in DSN (want tcp(host:port) or unix(/path))")]
    BadNetwork,
    /// No `/dbname` part.
    #[error("DSN names no database (want .../dbname)")]
    NoDatabase,
    /// The port is not a number in 1..=65535.
    #[error("invalid port in DSN")]
    BadPort,
    /// A `%XX` escape in a URL that is not valid.
    #[error("invalid percent escape in DSN")]
    BadEscape,
    /// Neither form.
    #[error(
        "not a MariaDB DSN (want user:pass@tcp(host:port)/db or mysql://user:pass@host:port/db)"
    )]
    NotMysql,
    /// An empty `--db` or `db` (SQLite would open a temporary database
    /// that is gone at exit).
    #[error("empty: give an SQLite file or a MariaDB DSN")]
    Empty,
}

/// How to reach MariaDB.
#[derive(Clone, PartialEq, Eq)]
pub struct MysqlDsn {
    /// Login name (may be empty).
    pub user: String,
    /// Password, if any. Never printed: see [`MysqlDsn`]'s `Display`.
    pub password: Option<String>,
    /// TCP host, or `None` when a Unix socket is used.
    pub host: Option<String>,
    /// TCP port.
    pub port: u16,
    /// Unix socket path (`unix(/path)` form).
    pub socket: Option<String>,
    /// Database name.
    pub database: String,
    /// `key=value` parameters after `?`, kept for the log line; `parseTime`,
    /// `charset` and `loc` are implied by how the store talks to MariaDB.
    pub params: Vec<(String, String)>,
}

impl fmt::Debug for MysqlDsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MysqlDsn({self})")
    }
}

impl fmt::Display for MysqlDsn {
    /// The DSN as a URL with the password masked.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("mysql://")?;
        if !self.user.is_empty() || self.password.is_some() {
            f.write_str(&percent_encode(&self.user))?;
            if self.password.is_some() {
                f.write_str(":***")?;
            }
            f.write_str("@")?;
        }
        match (&self.host, &self.socket) {
            (_, Some(sock)) => write!(f, "unix({sock})")?,
            (Some(h), None) if h.contains(':') => write!(f, "[{h}]:{}", self.port)?,
            (Some(h), None) => write!(f, "{h}:{}", self.port)?,
            (None, None) => write!(f, "127.0.0.1:{}", self.port)?,
        }
        write!(f, "/{}", percent_encode(&self.database))
    }
}

/// Escapes every byte outside RFC 3986's unreserved set, so that what
/// `Display` prints parses back to the same user and database.
fn percent_encode(s: &str) -> std::borrow::Cow<'_, str> {
    let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
    if s.bytes().all(plain) {
        return s.into();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for b in s.bytes() {
        if plain(b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out.into()
}

impl MysqlDsn {
    /// Parses either form.
    pub fn parse(s: &str) -> Result<MysqlDsn, DsnError> {
        let s = s.trim();
        if let Some(rest) = s.strip_prefix("mysql://") {
            parse_url(rest)
        } else if let Some(rest) = s.strip_prefix("mariadb://") {
            parse_url(rest)
        } else if looks_like_go_dsn(s) {
            parse_go(s)
        } else {
            Err(DsnError::NotMysql)
        }
    }

    /// The same server, another database (tests create their own).
    pub fn with_database(&self, db: &str) -> MysqlDsn {
        MysqlDsn {
            database: db.to_owned(),
            ..self.clone()
        }
    }
}

/// `true` for text in the Go driver form (`...@tcp(...)/db`, `.../db`).
pub fn looks_like_go_dsn(s: &str) -> bool {
    s.contains("@tcp(") || s.contains("@unix(") || s.starts_with("tcp(") || s.starts_with("unix(")
}

fn split_params(s: &str) -> (&str, Vec<(String, String)>) {
    match s.split_once('?') {
        None => (s, Vec::new()),
        Some((head, q)) => {
            let params = q
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (k.to_owned(), v.to_owned()),
                    None => (p.to_owned(), String::new()),
                })
                .collect();
            (head, params)
        }
    }
}

fn parse_port(s: &str) -> Result<u16, DsnError> {
    match s.parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(DsnError::BadPort),
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`.
fn parse_host_port(s: &str) -> Result<(String, u16), DsnError> {
    if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or(DsnError::BadNetwork)?;
        let port = match after.strip_prefix(':') {
            Some(p) => parse_port(p)?,
            None if after.is_empty() => DEFAULT_MYSQL_PORT,
            None => return Err(DsnError::BadPort),
        };
        return Ok((h.to_owned(), port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) => Ok((h.to_owned(), parse_port(p)?)),
        None => Ok((s.to_owned(), DEFAULT_MYSQL_PORT)),
    }
}

/// Go form: `[user[:password]@][net[(addr)]]/dbname[?params]`. The password
/// may contain `@` and `:` (the last `@` before the network ends the
/// credentials, as in the Go driver).
fn parse_go(s: &str) -> Result<MysqlDsn, DsnError> {
    let (head, params) = split_params(s);
    let slash = head.rfind('/').ok_or(DsnError::NoDatabase)?;
    let (before, db) = (&head[..slash], &head[slash + 1..]);
    if db.is_empty() {
        return Err(DsnError::NoDatabase);
    }
    let (creds, net) = match before.rfind('@') {
        Some(at) => (Some(&before[..at]), &before[at + 1..]),
        None => (None, before),
    };
    let (user, password) = match creds {
        None => (String::new(), None),
        Some(c) => match c.split_once(':') {
            Some((u, p)) => (u.to_owned(), Some(p.to_owned())),
            None => (c.to_owned(), None),
        },
    };
    let mut dsn = MysqlDsn {
        user,
        password,
        host: Some("127.0.0.1".to_owned()),
        port: DEFAULT_MYSQL_PORT,
        socket: None,
        database: db.to_owned(),
        params,
    };
    if net.is_empty() || net == "tcp" {
        return Ok(dsn);
    }
    if let Some(addr) = net.strip_prefix("tcp(").and_then(|r| r.strip_suffix(')')) {
        let (h, p) = parse_host_port(addr)?;
        dsn.host = Some(h);
        dsn.port = p;
        Ok(dsn)
    } else if let Some(path) = net.strip_prefix("unix(").and_then(|r| r.strip_suffix(')')) {
        dsn.host = None;
        dsn.socket = Some(path.to_owned());
        Ok(dsn)
    } else {
        Err(DsnError::BadNetwork)
    }
}

fn percent_decode(s: &str) -> Result<String, DsnError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or(DsnError::BadEscape)?;
            let v = u8::from_str_radix(hex, 16).map_err(|_| DsnError::BadEscape)?;
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| DsnError::BadEscape)
}

/// URL form after `mysql://`: `[user[:pass]@]host[:port]/db[?params]`.
fn parse_url(s: &str) -> Result<MysqlDsn, DsnError> {
    let (head, params) = split_params(s);
    let (auth_host, db) = head.split_once('/').ok_or(DsnError::NoDatabase)?;
    if db.is_empty() {
        return Err(DsnError::NoDatabase);
    }
    let (creds, hostport) = match auth_host.rfind('@') {
        Some(at) => (Some(&auth_host[..at]), &auth_host[at + 1..]),
        None => (None, auth_host),
    };
    let (user, password) = match creds {
        None => (String::new(), None),
        Some(c) => match c.split_once(':') {
            Some((u, p)) => (percent_decode(u)?, Some(percent_decode(p)?)),
            None => (percent_decode(c)?, None),
        },
    };
    let (host, port) = if hostport.is_empty() {
        ("127.0.0.1".to_owned(), DEFAULT_MYSQL_PORT)
    } else {
        parse_host_port(hostport)?
    };
    Ok(MysqlDsn {
        user,
        password,
        host: Some(host),
        port,
        socket: None,
        database: percent_decode(db)?,
        params,
    })
}

/// The store a `--db` value (or `WHELM_DB_DSN`) selects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DbTarget {
    /// The embedded store: a SQLite file.
    Sqlite(std::path::PathBuf),
    /// MariaDB.
    Mysql(MysqlDsn),
}

impl DbTarget {
    /// `--db` value: a `mysql://` URL or Go DSN selects MariaDB, anything
    /// else is a SQLite path.
    pub fn from_db_arg(s: &str) -> Result<DbTarget, DsnError> {
        if s.strip_prefix("sqlite:").unwrap_or(s).trim().is_empty() {
            return Err(DsnError::Empty);
        }
        if s.starts_with("mysql://") || s.starts_with("mariadb://") || looks_like_go_dsn(s) {
            MysqlDsn::parse(s).map(DbTarget::Mysql)
        } else {
            let path = s.strip_prefix("sqlite:").unwrap_or(s);
            Ok(DbTarget::Sqlite(path.into()))
        }
    }
}

impl fmt::Display for DbTarget {
    /// `sqlite:PATH` or the masked MariaDB URL.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbTarget::Sqlite(p) => write!(f, "sqlite:{}", p.display()),
            DbTarget::Mysql(d) => d.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_db_is_refused() {
        for s in ["", " ", "sqlite:"] {
            assert!(
                matches!(DbTarget::from_db_arg(s), Err(DsnError::Empty)),
                "{s:?}"
            );
        }
        assert!(matches!(
            DbTarget::from_db_arg("x.db"),
            Ok(DbTarget::Sqlite(_))
        ));
    }

    #[test]
    fn go_form_reference_example() {
        let d = MysqlDsn::parse("user:password@tcp(host:3306)/whelm?parseTime=true").unwrap();
        assert_eq!(d.user, "user");
        assert_eq!(d.password.as_deref(), Some("password"));
        assert_eq!(d.host.as_deref(), Some("host"));
        assert_eq!(d.port, 3306);
        assert_eq!(d.database, "whelm");
        assert_eq!(d.params, vec![("parseTime".into(), "true".into())]);
        assert_eq!(d.to_string(), "mysql://user:***@host:3306/whelm");
    }

    #[test]
    fn display_parses_back() {
        for s in [
            "us%r@tcp(host)/whelm",
            "a@b@tcp(host)/whelm",
            "mysql://u%2Fx@[::1]:3307/d%20b",
            "root@tcp([fe80::1]:3306)/test",
        ] {
            let d = MysqlDsn::parse(s).unwrap();
            assert_eq!(MysqlDsn::parse(&d.to_string()), Ok(d.clone()), "{s} -> {d}");
        }
        let d = MysqlDsn::parse("us%r@tcp(host)/whelm").unwrap();
        assert_eq!(d.to_string(), "mysql://us%25r@host:3306/whelm");
    }

    #[test]
    fn go_form_variants() {
        let d = MysqlDsn::parse("root@tcp(127.0.0.1)/test").unwrap();
        assert_eq!((d.user.as_str(), d.password.as_deref()), ("root", None));
        assert_eq!(d.port, 3306);
        let d = MysqlDsn::parse("u:p@ss:w@rd@tcp(db.example:3307)/w?a=1&b").unwrap();
        assert_eq!(d.password.as_deref(), Some("p@ss:w@rd"));
        assert_eq!(d.host.as_deref(), Some("db.example"));
        assert_eq!(d.port, 3307);
        assert_eq!(d.params.len(), 2);
        let d = MysqlDsn::parse("u@tcp([::1]:3310)/w").unwrap();
        assert_eq!((d.host.as_deref(), d.port), (Some("::1"), 3310));
        let d = MysqlDsn::parse("u:p@unix(/run/mysqld/mysqld.sock)/whelm").unwrap();
        assert_eq!(d.socket.as_deref(), Some("/run/mysqld/mysqld.sock"));
        assert_eq!(d.host, None);
        assert_eq!(
            d.to_string(),
            "mysql://u:***@unix(/run/mysqld/mysqld.sock)/whelm"
        );
    }

    #[test]
    fn url_form() {
        let d = MysqlDsn::parse("mysql://root@127.0.0.1:3306/test").unwrap();
        assert_eq!(d.user, "root");
        assert_eq!(d.password, None);
        assert_eq!(d.host.as_deref(), Some("127.0.0.1"));
        assert_eq!(d.database, "test");
        assert_eq!(d.to_string(), "mysql://root@127.0.0.1:3306/test");
        let d = MysqlDsn::parse("mysql://a%40b:p%3Aw@h/db?x=y").unwrap();
        assert_eq!(d.user, "a@b");
        assert_eq!(d.password.as_deref(), Some("p:w"));
        assert_eq!(d.port, 3306);
        assert!(!d.to_string().contains("p:w"));
    }

    #[test]
    fn errors() {
        assert_eq!(MysqlDsn::parse("mysql://h:3306"), Err(DsnError::NoDatabase));
        assert_eq!(
            MysqlDsn::parse("mysql://h:3306/"),
            Err(DsnError::NoDatabase)
        );
        assert_eq!(MysqlDsn::parse("mysql://h:99999/d"), Err(DsnError::BadPort));
        assert_eq!(MysqlDsn::parse("mysql://h:x/d"), Err(DsnError::BadPort));
        assert_eq!(MysqlDsn::parse("u@tcp(h:0)/d"), Err(DsnError::BadPort));
        assert_eq!(MysqlDsn::parse("u@tcp(h:1)"), Err(DsnError::NoDatabase));
        assert_eq!(MysqlDsn::parse("whelm.db"), Err(DsnError::NotMysql));
        assert_eq!(
            MysqlDsn::parse("mysql://a%zz@h/d"),
            Err(DsnError::BadEscape)
        );
    }

    #[test]
    fn db_arg_selects_backend() {
        assert_eq!(
            DbTarget::from_db_arg("whelm.db").unwrap(),
            DbTarget::Sqlite("whelm.db".into())
        );
        assert_eq!(
            DbTarget::from_db_arg("/tmp/x/y.db").unwrap().to_string(),
            "sqlite:/tmp/x/y.db"
        );
        assert!(matches!(
            DbTarget::from_db_arg("mysql://root@localhost/w").unwrap(),
            DbTarget::Mysql(_)
        ));
        assert!(matches!(
            DbTarget::from_db_arg("u:p@tcp(h:1)/w").unwrap(),
            DbTarget::Mysql(_)
        ));
        assert!(DbTarget::from_db_arg("mysql://h").is_err());
    }
}
