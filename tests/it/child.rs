//! A real `openagents-runtime serve` child process over a test database: started on port 0,
//! its "listening on" line parsed, stdout drained; killed (SIGKILL) when dropped unless it was
//! stopped first.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};

use engine::testing::TestDb;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

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
