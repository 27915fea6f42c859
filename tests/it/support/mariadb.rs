//! A private MariaDB server for one test (Debian's `mariadb-server`, which
//! the `mysql` app manager reads like MySQL): `mariadb-install-db` into a
//! temporary directory, then `mariadbd` on a free loopback port with
//! `--skip-grant-tables` (any user, no password), stopped and removed on drop.

use super::postgres::{Guarded, wait_port};
use super::process::{free_port, temp_dir};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// A running MariaDB.
pub struct MariaDb {
    pub port: u16,
    dir: PathBuf,
    server: Option<Guarded>,
}

fn server_program() -> &'static str {
    if std::path::Path::new("/usr/sbin/mariadbd").is_file() {
        "/usr/sbin/mariadbd"
    } else {
        "mysqld"
    }
}

impl MariaDb {
    /// Installs the system tables and starts; returns once the port accepts connections.
    pub fn start() -> MariaDb {
        let dir = temp_dir("mariadb");
        let data = dir.join("data");
        let out = Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .arg("--user=root")
            .arg(format!("--datadir={}", data.display()))
            .arg("--skip-test-db")
            .arg("--auth-root-authentication-method=normal")
            .output()
            .expect(
                "mariadb-install-db is missing: run `make test-deps` (Debian's mariadb-server)",
            );
        assert!(
            out.status.success(),
            "mariadb-install-db failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut db = MariaDb {
            port: free_port(),
            dir,
            server: None,
        };
        db.resume();
        db
    }

    /// Starts the server (again) on the same port and data.
    pub fn resume(&mut self) {
        let args: Vec<String> = vec![
            "--no-defaults".into(),
            "--user=root".into(),
            format!("--datadir={}", self.dir.join("data").display()),
            format!("--port={}", self.port),
            "--bind-address=127.0.0.1".into(),
            format!("--socket={}", self.dir.join("mysqld.sock").display()),
            format!("--pid-file={}", self.dir.join("mysqld.pid").display()),
            "--skip-grant-tables".into(),
            "--skip-log-bin".into(),
            "--innodb-buffer-pool-size=16M".into(),
        ];
        let log = self.dir.join("server.log");
        self.server = Some(Guarded::spawn(server_program(), &args, &self.dir, &log));
        wait_port(self.port, Duration::from_secs(60), &log);
    }

    /// Stops the server, keeping its data for [`MariaDb::resume`].
    pub fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.stop("TERM");
        }
    }

    /// The `database.mysql` settings reaching this server (database `sockudo`, which the test creates).
    pub fn settings(&self) -> serde_json::Value {
        serde_json::json!({"host": "127.0.0.1", "port": self.port, "username": "root",
            "database": "sockudo", "connection_pool_size": 4})
    }

    /// A connection URL without a database, for creating it.
    pub fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}", self.port)
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        drop(self.server.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
