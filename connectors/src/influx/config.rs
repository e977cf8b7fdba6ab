//! Configuration of the InfluxDB sink.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::line_protocol::PointTags;
pub use crate::backoff::BackoffConfig;
use crate::validation::Problem;

/// Which write API the server speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InfluxApi {
    /// `POST /api/v2/write?org=…&bucket=…`, token authentication: InfluxDB
    /// 2.x and 3.x, victoria-metrics.
    #[default]
    V2,
    /// `POST /write?db=…&rp=…`, user and password: InfluxDB 1.x.
    V1,
}

impl InfluxApi {
    /// The path writes go to.
    pub fn write_path(self) -> &'static str {
        match self {
            InfluxApi::V2 => "/api/v2/write",
            InfluxApi::V1 => "/write",
        }
    }
}

/// Where the outage buffer keeps its lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BufferKind {
    /// A spool on disk (`spool_dir`): survives restarts and crashes. The
    /// default in a configuration file.
    #[default]
    Disk,
    /// In memory (`buffer_max_lines`): lost when the process ends.
    Memory,
}

/// When the spool forces what it wrote to disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpoolFsync {
    /// After every batch of records the sink takes in (default).
    #[default]
    Batch,
    /// Every `spool_fsync_interval_ms`.
    IntervalMs,
}

/// Where and how the sink writes. Secrets never sit in the file:
/// `token_env` (v2) and `password_env` (v1) name the environment variables
/// that hold them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InfluxSinkConfig {
    /// `"v2"` (default) or `"v1"` (InfluxDB 1.x).
    #[serde(default)]
    pub api: InfluxApi,
    /// Base URL of the server, e.g. `http://influxdb:8086`. Writes go to
    /// `<url>/api/v2/write` (v2) or `<url>/write` (v1).
    pub url: String,
    /// Organization (v2); servers without organizations ignore it.
    #[serde(default)]
    pub org: String,
    /// Bucket (v2 only, required there).
    #[serde(default)]
    pub bucket: String,
    /// Name of the environment variable holding the API token (v2). Absent
    /// or empty (or an empty token) means requests carry no authentication.
    #[serde(default)]
    pub token_env: Option<String>,
    /// Database (v1 only, required there).
    #[serde(default)]
    pub database: Option<String>,
    /// Retention policy (v1; default: the database's default policy).
    #[serde(default)]
    pub retention_policy: Option<String>,
    /// User name (v1, with `password_env`; absent: no authentication).
    #[serde(default)]
    pub username: Option<String>,
    /// Name of the environment variable holding the user's password (v1).
    #[serde(default)]
    pub password_env: Option<String>,
    /// A batch is written once this many lines are buffered...
    #[serde(default = "default_batch_max_lines")]
    pub batch_max_lines: usize,
    /// ...or once the oldest buffered line has waited this long.
    #[serde(default = "default_flush_interval_ms")]
    pub flush_interval_ms: u64,
    /// The most lines in one request while more than `batch_max_lines`
    /// wait (a backlog: after an outage, or a store slower than the
    /// machines); the sink also keeps such a request within what the last
    /// one's pace carries in a quarter of `request_timeout_ms`. Default:
    /// four times `batch_max_lines`; set it to `batch_max_lines` to keep
    /// every request at that size. Read through
    /// [`InfluxSinkConfig::backlog_batch_lines`].
    #[serde(default)]
    pub backlog_batch_max_lines: Option<usize>,
    /// `"disk"` (default: the spool) or `"memory"`.
    #[serde(default)]
    pub buffer: BufferKind,
    /// Lines kept in memory (`buffer = "memory"`) while the server is
    /// unreachable; beyond this the oldest are dropped (and counted).
    #[serde(default = "default_buffer_max_lines")]
    pub buffer_max_lines: usize,
    /// The spool's folder (default: `spool/influx` beside the configuration
    /// file). One gateway per folder.
    #[serde(default)]
    pub spool_dir: Option<PathBuf>,
    /// The spool's limit; beyond it the oldest lines are dropped (and
    /// counted), a segment (an eighth) at a time. Default 512 MiB.
    #[serde(default = "default_spool_max_bytes")]
    pub spool_max_bytes: u64,
    /// `"batch"` (default: forced to disk before the sink takes the next
    /// records) or `"interval_ms"` (every `spool_fsync_interval_ms`).
    #[serde(default)]
    pub spool_fsync: SpoolFsync,
    /// With `spool_fsync = "interval_ms"` (default 1000).
    #[serde(default = "default_spool_fsync_interval_ms")]
    pub spool_fsync_interval_ms: u64,
    /// Deadline of one write request, connecting included.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Retry delay after a failed write (default 500 ms doubling up to 60 s).
    #[serde(default = "default_backoff")]
    pub backoff: BackoffConfig,
    /// gzip the request bodies (every InfluxDB and victoria-metrics
    /// accepts it). Unset: gzip unless the store is on this host (a
    /// loopback address or `localhost`), where compressing saves no
    /// bandwidth and costs CPU on both ends; see [`Self::gzips_bodies`].
    #[serde(default)]
    pub gzip: Option<bool>,
    /// Where lines the server refuses one by one go, each after a comment
    /// with the time and the server's answer (default: `dead-letter/influx.lp`
    /// beside the configuration file; absent in a configuration built in
    /// code: refused lines are only logged and counted).
    #[serde(default)]
    pub dead_letter_path: Option<PathBuf>,
    /// The dead-letter file's limit; beyond it refused lines are only
    /// counted (default 16 MiB).
    #[serde(default = "default_dead_letter_max_bytes")]
    pub dead_letter_max_bytes: u64,
    /// Tags put on every line (the gateway's name and site tags, from its
    /// `[gateway]` section; not a key of `[influx]`).
    #[serde(skip)]
    pub point_tags: PointTags,
}

fn default_spool_max_bytes() -> u64 {
    512 * 1024 * 1024
}
fn default_spool_fsync_interval_ms() -> u64 {
    1000
}
/// The smallest spool: a few segments of the smallest size.
pub const MIN_SPOOL_MAX_BYTES: u64 = 256 * 1024;

fn default_dead_letter_max_bytes() -> u64 {
    16 * 1024 * 1024
}

fn default_backoff() -> BackoffConfig {
    BackoffConfig {
        initial_ms: 500,
        max_ms: 60_000,
    }
}
fn default_batch_max_lines() -> usize {
    5000
}
/// `backlog_batch_max_lines` by default, in `batch_max_lines`.
const BACKLOG_BATCH_FACTOR: usize = 4;
fn default_flush_interval_ms() -> u64 {
    1000
}
fn default_buffer_max_lines() -> usize {
    100_000
}
fn default_request_timeout_ms() -> u64 {
    10_000
}

impl InfluxSinkConfig {
    /// A configuration with every optional key at its default, but for the
    /// buffer: in memory, as there is no configuration file to put a spool
    /// beside (see [`InfluxSinkConfig::with_spool`]).
    pub fn new(url: impl Into<String>, bucket: impl Into<String>) -> Self {
        Self {
            api: InfluxApi::V2,
            url: url.into(),
            org: String::new(),
            bucket: bucket.into(),
            token_env: None,
            database: None,
            retention_policy: None,
            username: None,
            password_env: None,
            batch_max_lines: default_batch_max_lines(),
            flush_interval_ms: default_flush_interval_ms(),
            backlog_batch_max_lines: None,
            buffer: BufferKind::Memory,
            buffer_max_lines: default_buffer_max_lines(),
            spool_dir: None,
            spool_max_bytes: default_spool_max_bytes(),
            spool_fsync: SpoolFsync::Batch,
            spool_fsync_interval_ms: default_spool_fsync_interval_ms(),
            request_timeout_ms: default_request_timeout_ms(),
            backoff: default_backoff(),
            gzip: None,
            dead_letter_path: None,
            dead_letter_max_bytes: default_dead_letter_max_bytes(),
            point_tags: PointTags::none(),
        }
    }

    /// An InfluxDB 1.x configuration (`api = "v1"`) writing to `database`,
    /// every optional key at its default.
    pub fn v1(url: impl Into<String>, database: impl Into<String>) -> Self {
        Self {
            api: InfluxApi::V1,
            database: Some(database.into()),
            ..Self::new(url, "")
        }
    }

    /// The same, buffering in a disk spool in `dir`.
    pub fn with_spool(self, dir: impl Into<PathBuf>) -> Self {
        Self {
            buffer: BufferKind::Disk,
            spool_dir: Some(dir.into()),
            ..self
        }
    }

    /// The most lines in one request while a backlog waits: with one
    /// request out at a time, a store kept waiting for each next request
    /// takes in more in fewer, larger ones (BENCHMARKS.md §32, §37).
    pub fn backlog_batch_lines(&self) -> usize {
        self.backlog_batch_max_lines
            .unwrap_or(self.batch_max_lines.saturating_mul(BACKLOG_BATCH_FACTOR))
    }

    pub fn flush_interval(&self) -> Duration {
        Duration::from_millis(self.flush_interval_ms)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// Whether request bodies are gzipped: `gzip` when set, otherwise
    /// unless `url` names this host. On issue 10's workload (a store on
    /// loopback, 1 ms polls) gzip cost the gateway 8-10 % of its CPU and
    /// the store 15-32 % of its own (BENCHMARKS.md §19) for bandwidth
    /// loopback does not need; across a network the body is 3-5x smaller.
    pub fn gzips_bodies(&self) -> bool {
        self.gzip.unwrap_or_else(|| !names_this_host(&self.url))
    }

    /// Every problem of this section; `path` is its key path in the file
    /// (e.g. `sinks.influx`).
    pub fn validate(&self, path: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        let at = |key: &str| format!("{path}.{key}");

        match url::Url::parse(&self.url) {
            Err(e) => problems.push(Problem::new(at("url"), format!("not a URL: {e}"))),
            Ok(url) => {
                if !matches!(url.scheme(), "http" | "https") {
                    problems.push(Problem::new(
                        at("url"),
                        format!("scheme must be http or https, not {:?}", url.scheme()),
                    ));
                }
                if url.host_str().is_none_or(str::is_empty) {
                    problems.push(Problem::new(at("url"), "has no host"));
                }
                // The client always posts to the write path at the root, so
                // a path (e.g. behind a reverse proxy) would be silently
                // ignored.
                if !matches!(url.path(), "" | "/") {
                    problems.push(Problem::new(
                        at("url"),
                        format!(
                            "a path ({}) is not supported: writes always go to {}",
                            url.path(),
                            self.api.write_path()
                        ),
                    ));
                }
                if url.query().is_some() || url.fragment().is_some() {
                    problems.push(Problem::new(at("url"), "must not have a query or fragment"));
                }
                if !url.username().is_empty() || url.password().is_some() {
                    problems.push(Problem::new(
                        at("url"),
                        match self.api {
                            InfluxApi::V2 => "must not carry credentials: use token_env",
                            InfluxApi::V1 => {
                                "must not carry credentials: use username and password_env"
                            }
                        },
                    ));
                }
            }
        }
        match self.api {
            InfluxApi::V2 => {
                if self.bucket.trim().is_empty() {
                    problems.push(Problem::new(at("bucket"), "must not be empty"));
                }
                let v1_only = [
                    ("database", self.database.is_some()),
                    ("retention_policy", self.retention_policy.is_some()),
                    ("username", self.username.is_some()),
                    ("password_env", self.password_env.is_some()),
                ];
                for (key, set) in v1_only {
                    if set {
                        problems.push(Problem::new(
                            at(key),
                            "only with api = \"v1\" (InfluxDB 1.x)",
                        ));
                    }
                }
            }
            InfluxApi::V1 => {
                match self.database.as_deref() {
                    None => {
                        problems.push(Problem::new(at("database"), "required with api = \"v1\""))
                    }
                    Some(db) if db.trim().is_empty() => {
                        problems.push(Problem::new(at("database"), "must not be empty"));
                    }
                    Some(_) => {}
                }
                if self
                    .retention_policy
                    .as_deref()
                    .is_some_and(|rp| rp.trim().is_empty())
                {
                    problems.push(Problem::new(
                        at("retention_policy"),
                        "must not be empty (leave it out for the database's default)",
                    ));
                }
                let v2_only = [
                    ("bucket", !self.bucket.is_empty()),
                    ("org", !self.org.is_empty()),
                    ("token_env", self.token_env.is_some()),
                ];
                for (key, set) in v2_only {
                    if set {
                        problems.push(Problem::new(
                            at(key),
                            "only with api = \"v2\" (InfluxDB 1.x writes to `database`)",
                        ));
                    }
                }
                match (&self.username, &self.password_env) {
                    (Some(user), _) if user.trim().is_empty() => {
                        problems.push(Problem::new(at("username"), "must not be empty"));
                    }
                    (Some(_), None) => {
                        problems.push(Problem::new(at("password_env"), "required with username"))
                    }
                    (None, Some(_)) => {
                        problems.push(Problem::new(at("username"), "required with password_env"))
                    }
                    _ => {}
                }
            }
        }
        for (key, name) in [
            ("token_env", self.token_env.as_deref()),
            ("password_env", self.password_env.as_deref()),
        ] {
            if let Some(name) = name {
                // An empty token_env means "no token" (documented above).
                let empty_refused = key == "password_env" && name.is_empty();
                if empty_refused || name.contains('=') || name.contains('\0') {
                    problems.push(Problem::new(
                        at(key),
                        format!("{name:?} is not an environment variable name"),
                    ));
                }
            }
        }
        if self.batch_max_lines == 0 {
            problems.push(Problem::new(
                at("batch_max_lines"),
                "must be greater than 0",
            ));
        }
        if let Some(backlog) = self.backlog_batch_max_lines {
            if backlog < self.batch_max_lines {
                problems.push(Problem::new(
                    at("backlog_batch_max_lines"),
                    format!(
                        "must be at least batch_max_lines ({})",
                        self.batch_max_lines
                    ),
                ));
            }
        }
        if self.buffer_max_lines == 0 {
            problems.push(Problem::new(
                at("buffer_max_lines"),
                "must be greater than 0",
            ));
        }
        match self.buffer {
            BufferKind::Disk => {
                if self.spool_dir.is_none() {
                    problems.push(Problem::new(
                        at("spool_dir"),
                        "required with buffer = \"disk\"",
                    ));
                }
                if self.spool_max_bytes < MIN_SPOOL_MAX_BYTES {
                    problems.push(Problem::new(
                        at("spool_max_bytes"),
                        format!("must be at least {MIN_SPOOL_MAX_BYTES}"),
                    ));
                }
                if self.spool_fsync == SpoolFsync::IntervalMs && self.spool_fsync_interval_ms == 0 {
                    problems.push(Problem::new(
                        at("spool_fsync_interval_ms"),
                        "must be greater than 0",
                    ));
                }
            }
            BufferKind::Memory => {
                if self.spool_dir.is_some() {
                    problems.push(Problem::new(at("spool_dir"), "only with buffer = \"disk\""));
                }
            }
        }
        if self.buffer == BufferKind::Memory
            && self.batch_max_lines > self.buffer_max_lines
            && self.buffer_max_lines > 0
        {
            problems.push(Problem::new(
                at("batch_max_lines"),
                format!(
                    "must not exceed buffer_max_lines ({})",
                    self.buffer_max_lines
                ),
            ));
        }
        if self.flush_interval_ms == 0 {
            problems.push(Problem::new(
                at("flush_interval_ms"),
                "must be greater than 0",
            ));
        }
        if self.request_timeout_ms == 0 {
            problems.push(Problem::new(
                at("request_timeout_ms"),
                "must be greater than 0",
            ));
        }
        problems.extend(self.backoff.validate(&at("backoff")));
        problems
    }
}

/// Whether `url`'s host is this machine: `localhost` (and its subdomains,
/// which resolvers answer with loopback) or a loopback address. Anything
/// else, names included, counts as another host.
fn names_this_host(url: &str) -> bool {
    let Ok(url) = url::Url::parse(url) else {
        return false;
    };
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_unset_means_every_store_but_one_on_this_host() {
        let gzips = |url: &str, gzip: Option<bool>| {
            let mut config = InfluxSinkConfig::new(url, "plant");
            config.gzip = gzip;
            config.gzips_bodies()
        };
        for local in [
            "http://127.0.0.1:8086",
            "http://127.8.9.10:8086",
            "http://localhost:8086",
            "http://LocalHost.:8086",
            "http://db.localhost:8086",
            "http://[::1]:8086",
        ] {
            assert!(!gzips(local, None), "{local}");
            assert!(gzips(local, Some(true)), "{local}");
        }
        for remote in [
            "http://10.0.0.5:8086",
            "http://influxdb:8086",
            "https://influx.example:8086",
            "http://localhost.example:8086",
            "http://[fe80::1]:8086",
        ] {
            assert!(gzips(remote, None), "{remote}");
            assert!(!gzips(remote, Some(false)), "{remote}");
        }
        let config: InfluxSinkConfig = toml::from_str(
            r#"
            url = "http://127.0.0.1:8086"
            bucket = "plant"
            gzip = true
            "#,
        )
        .unwrap();
        assert_eq!(config.gzip, Some(true));
    }

    fn paths(problems: &[Problem]) -> Vec<&str> {
        problems.iter().map(|p| p.path.as_str()).collect()
    }

    #[test]
    fn minimal_file_takes_defaults() {
        let config: InfluxSinkConfig = toml::from_str(
            r#"
            url = "http://localhost:8086"
            bucket = "plant"
            "#,
        )
        .unwrap();
        assert_eq!(
            config,
            InfluxSinkConfig {
                buffer: BufferKind::Disk,
                ..InfluxSinkConfig::new("http://localhost:8086", "plant")
            }
        );
        assert_eq!(config.spool_max_bytes, 512 * 1024 * 1024);
        assert_eq!(config.spool_fsync, SpoolFsync::Batch);
        // The gateway puts the spool beside the configuration file; without
        // one, a disk buffer has no place.
        assert_eq!(paths(&config.validate("influx")), ["influx.spool_dir"]);
        let config = config.with_spool("/var/lib/ironbridge/spool");
        assert_eq!(config.batch_max_lines, 5000);
        assert_eq!(config.flush_interval_ms, 1000);
        assert_eq!(config.buffer_max_lines, 100_000);
        assert_eq!(config.request_timeout_ms, 10_000);
        assert_eq!(
            config.backoff,
            BackoffConfig {
                initial_ms: 500,
                max_ms: 60_000
            }
        );
        assert!(config.validate("influx").is_empty());
    }

    #[test]
    fn full_file_parses() {
        let config: InfluxSinkConfig = toml::from_str(
            r#"
            url = "https://influx.example:8086"
            org = "acme"
            bucket = "plant"
            token_env = "INFLUX_TOKEN"
            batch_max_lines = 100
            flush_interval_ms = 250
            buffer_max_lines = 1000
            request_timeout_ms = 2000
            backoff = { initial_ms = 100, max_ms = 5000 }
            spool_dir = "spool"
            spool_max_bytes = 1048576
            spool_fsync = "interval_ms"
            spool_fsync_interval_ms = 200
            "#,
        )
        .unwrap();
        assert_eq!(config.token_env.as_deref(), Some("INFLUX_TOKEN"));
        assert_eq!(config.spool_fsync, SpoolFsync::IntervalMs);
        assert_eq!(config.spool_fsync_interval_ms, 200);
        assert_eq!(
            config.backoff,
            BackoffConfig {
                initial_ms: 100,
                max_ms: 5000
            }
        );
        assert!(config.validate("influx").is_empty());
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let top = toml::from_str::<InfluxSinkConfig>(
            "url = \"http://h\"\nbucket = \"b\"\ntoken = \"secret\"\n",
        );
        assert!(top.is_err());
        let nested = toml::from_str::<InfluxSinkConfig>(
            "url = \"http://h\"\nbucket = \"b\"\nbackoff = { initial = 1 }\n",
        );
        assert!(nested.is_err());
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let mut config = InfluxSinkConfig::new("ftp://h/some/path?x=1", " ");
        config.batch_max_lines = 0;
        config.buffer_max_lines = 0;
        config.flush_interval_ms = 0;
        config.request_timeout_ms = 0;
        config.backoff = BackoffConfig {
            initial_ms: 0,
            max_ms: 0,
        };
        config.token_env = Some("A=B".into());
        let problems = config.validate("sinks.influx");
        assert_eq!(
            paths(&problems),
            [
                "sinks.influx.url",
                "sinks.influx.url",
                "sinks.influx.url",
                "sinks.influx.bucket",
                "sinks.influx.token_env",
                "sinks.influx.batch_max_lines",
                "sinks.influx.buffer_max_lines",
                "sinks.influx.flush_interval_ms",
                "sinks.influx.request_timeout_ms",
                "sinks.influx.backoff.initial_ms",
            ],
            "{problems:?}"
        );
    }

    #[test]
    fn batch_larger_than_buffer_and_inverted_backoff_are_problems() {
        let mut config = InfluxSinkConfig::new("http://h:8086/", "b");
        config.batch_max_lines = 10;
        config.buffer_max_lines = 5;
        config.backoff = BackoffConfig {
            initial_ms: 1000,
            max_ms: 10,
        };
        let problems = config.validate("x");
        assert_eq!(paths(&problems), ["x.batch_max_lines", "x.backoff.max_ms"]);
    }

    #[test]
    fn backlog_batch_defaults_to_four_batches_and_may_not_be_smaller_than_one() {
        let mut config = InfluxSinkConfig::new("http://h:8086/", "b");
        config.batch_max_lines = 300;
        assert_eq!(config.backlog_batch_lines(), 1200);
        config.backlog_batch_max_lines = Some(300);
        assert!(config.validate("x").is_empty());
        assert_eq!(config.backlog_batch_lines(), 300);
        config.backlog_batch_max_lines = Some(299);
        let problems = config.validate("x");
        assert_eq!(paths(&problems), ["x.backlog_batch_max_lines"]);
        assert!(
            problems[0]
                .to_string()
                .contains("at least batch_max_lines (300)"),
            "{problems:?}"
        );
    }

    #[test]
    fn v1_file_parses_and_validates() {
        let config: InfluxSinkConfig = toml::from_str(
            r#"
            api = "v1"
            url = "http://influx1:8086"
            database = "plant"
            retention_policy = "one_year"
            username = "gateway"
            password_env = "INFLUX_PASSWORD"
            buffer = "memory"
            "#,
        )
        .unwrap();
        assert_eq!(config.api, InfluxApi::V1);
        assert_eq!(config.database.as_deref(), Some("plant"));
        assert_eq!(config.retention_policy.as_deref(), Some("one_year"));
        assert!(config.validate("influx").is_empty());
        assert!(InfluxSinkConfig::v1("http://h:8086", "plant")
            .validate("influx")
            .is_empty());
    }

    #[test]
    fn keys_of_the_other_api_and_missing_ones_are_problems() {
        let mut v1 = InfluxSinkConfig::v1("http://h:8086/x", " ");
        v1.bucket = "b".into();
        v1.org = "o".into();
        v1.token_env = Some("T".into());
        v1.password_env = Some(String::new());
        v1.retention_policy = Some(String::new());
        let problems = v1.validate("influx");
        assert_eq!(
            paths(&problems),
            [
                "influx.url",
                "influx.database",
                "influx.retention_policy",
                "influx.bucket",
                "influx.org",
                "influx.token_env",
                "influx.username",
                "influx.password_env",
            ],
            "{problems:?}"
        );
        assert!(problems[0].message.contains("/write"), "{problems:?}");

        let mut v1 = InfluxSinkConfig::v1("http://h:8086", "plant");
        v1.database = None;
        v1.username = Some("u".into());
        assert_eq!(
            paths(&v1.validate("influx")),
            ["influx.database", "influx.password_env"]
        );

        let mut v2 = InfluxSinkConfig::new("http://h:8086", "b");
        v2.database = Some("d".into());
        v2.username = Some("u".into());
        let problems = v2.validate("influx");
        assert_eq!(paths(&problems), ["influx.database", "influx.username"]);
        assert!(problems[0].message.contains("v1"), "{problems:?}");

        let unknown_api = toml::from_str::<InfluxSinkConfig>(
            "api = \"v3\"\nurl = \"http://h\"\nbucket = \"b\"\n",
        );
        assert!(unknown_api.is_err());
    }

    #[test]
    fn spool_keys_are_checked() {
        let mut config = InfluxSinkConfig::new("http://h:8086", "b").with_spool("s");
        config.spool_max_bytes = 1000;
        config.spool_fsync = SpoolFsync::IntervalMs;
        config.spool_fsync_interval_ms = 0;
        assert_eq!(
            paths(&config.validate("influx")),
            ["influx.spool_max_bytes", "influx.spool_fsync_interval_ms"]
        );
        let mut memory = InfluxSinkConfig::new("http://h:8086", "b");
        memory.spool_dir = Some("s".into());
        assert_eq!(paths(&memory.validate("influx")), ["influx.spool_dir"]);
        for bad in ["buffer = \"ssd\"", "spool_fsync = \"always\""] {
            let text = format!("url = \"http://h\"\nbucket = \"b\"\n{bad}\n");
            assert!(toml::from_str::<InfluxSinkConfig>(&text).is_err(), "{bad}");
        }
    }

    #[test]
    fn unparsable_and_credentialed_urls_are_problems() {
        let config = InfluxSinkConfig::new("not a url", "b");
        assert_eq!(paths(&config.validate("x")), ["x.url"]);
        let config = InfluxSinkConfig::new("http://user:pw@h:8086", "b");
        assert_eq!(paths(&config.validate("x")), ["x.url"]);
    }
}
