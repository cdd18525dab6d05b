//! Child processes for crash tests. A real `openagents-runtime serve` over a test database:
//! started on port 0, its "listening on" line parsed, stdout drained; killed (SIGKILL) when
//! dropped unless it was stopped first. And this test binary re-run as a child that runs one
//! ignored test ([`spawn_test_process`]), told where its journal is ([`database_spec`]).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};

use engine::testing::TestDb;
use engine::DatabaseConfig;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use crate::app::TEST_SECRET;

pub struct ServeChild {
    pub child: Child,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
}

impl Drop for ServeChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServeChild {
    /// Starts `serve` over `db` (PostgreSQL URL, or the SQLite file in `data_dir`) with the test
    /// signing secret and `extra` arguments, and waits until it listens.
    pub fn start(db: &TestDb, data_dir: &Path, extra: &[&str]) -> ServeChild {
        let mut command = Command::new(env!("CARGO_BIN_EXE_openagents-runtime"));
        command
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(["--data-dir", data_dir.to_str().unwrap()])
            .args(["--shutdown-grace-secs", "20"])
            .args(extra)
            .env("OA_RUNTIME_SIGNATURE_SECRET", TEST_SECRET)
            .env("OA_AUDIT_KEY", crate::audit_log::TEST_AUDIT_KEY)
            .env_remove("DATABASE_URL")
            .env(
                "RUST_LOG",
                if std::env::var_os("TEST_LOG").is_some() {
                    "info"
                } else {
                    "warn"
                },
            )
            .stdout(Stdio::piped())
            .stderr(if std::env::var_os("TEST_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            });
        if let Some(url) = &db.url {
            command.args(["--database-url", url]);
            command.args(["--db-max-connections", "8"]);
        }
        let mut child = command.spawn().expect("spawn openagents-runtime serve");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let base = loop {
            let line = lines
                .next()
                .expect("the child prints where it listens")
                .expect("readable stdout");
            if let Some(rest) = line.strip_prefix("openagents-runtime listening on ") {
                break rest.trim().to_owned();
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        ServeChild { child, base }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no drain, no lease release, transactions cut wherever they are.
    pub fn kill_9(&self) {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL).expect("SIGKILL the child");
    }

    /// SIGTERM, then waits for the exit status.
    pub async fn terminate(mut self) -> ExitStatus {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM).expect("SIGTERM the child");
        let mut child = std::mem::replace(
            &mut self.child,
            Command::new("true").spawn().expect("spawn true"),
        );
        tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap()
    }
}

/// This test binary re-run to execute only `test`: an ignored test that does nothing unless
/// `env` is set, and reads `spec` (JSON) from it.
pub fn spawn_test_process(test: &str, env: &str, spec: &Value, stdout: Stdio) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            test,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(env, spec.to_string())
        .stdout(stdout)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn a child test process")
}

/// Where a child process finds `db`'s journal: `{"database_url": …}` (PostgreSQL) or
/// `{"sqlite_path": …}` (the embedded file), read back with [`database_config`].
pub fn database_spec(db: &TestDb) -> Value {
    match (&db.url, &db.data_dir) {
        (Some(url), _) => json!({ "database_url": url }),
        (None, Some(data)) => {
            json!({ "sqlite_path": data.join(engine::db::SQLITE_FILE).to_str().unwrap() })
        }
        _ => unreachable!("a test database is PostgreSQL or SQLite"),
    }
}

/// The journal a child was given in `spec` by [`database_spec`].
pub fn database_config(spec: &Value, max_connections: u32) -> DatabaseConfig {
    match spec["database_url"].as_str() {
        Some(url) => DatabaseConfig::Postgres {
            url: url.to_owned(),
            max_connections,
        },
        None => DatabaseConfig::Sqlite {
            path: spec["sqlite_path"].as_str().unwrap().into(),
        },
    }
}
