//! A throw-away PostgreSQL cluster for tests and `lpmesh bench hq`: `initdb` into a temporary directory,
//! `pg_ctl start` on a free loopback port, removed again on drop. PostgreSQL refuses to run as root, so
//! as root the cluster belongs to Debian's `postgres` user and the commands run through `runuser`.
//! `scripts/setup.sh` installs the server (`postgresql`).

use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
#[error("test PostgreSQL: {0}")]
pub struct PgError(String);

pub struct TestPg {
    dir: PathBuf,
    bin: PathBuf,
    as_user: Option<String>,
    pub port: u16,
    /// Server options, with `{port}` for the port.
    opts: String,
}

fn find_bin() -> Result<PathBuf, PgError> {
    if let Ok(p) = std::env::var("LPMESH_PG_BIN") {
        return Ok(PathBuf::from(p));
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|_| PgError("no PostgreSQL server in /usr/lib/postgresql: run scripts/setup.sh".into()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort();
    found
        .pop()
        .ok_or_else(|| PgError("no initdb under /usr/lib/postgresql/*/bin: run scripts/setup.sh".into()))
}

fn free_port() -> Result<u16, PgError> {
    lpmesh_web::clock::free_loopback_port().map_err(|e| PgError(e.to_string()))
}

fn is_root() -> bool {
    // The uid of the process owning /proc/self is ours.
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

impl TestPg {
    /// A cluster for tests: fsync off (a crash of the test machine loses nothing that matters).
    pub fn start() -> Result<TestPg, PgError> {
        Self::start_with(false)
    }

    /// `durable`: fsync on, as in production (what `lpmesh bench hq` measures).
    pub fn start_with(durable: bool) -> Result<TestPg, PgError> {
        Self::start_inner(durable, None)
    }

    /// A cluster that also speaks TLS with this certificate chain and key (PEM); plain connections
    /// still work, so a test can show what each `sslmode` does.
    pub fn start_tls(cert_pem: &[u8], key_pem: &[u8]) -> Result<TestPg, PgError> {
        Self::start_inner(false, Some((cert_pem, key_pem)))
    }

    fn start_inner(durable: bool, tls: Option<(&[u8], &[u8])>) -> Result<TestPg, PgError> {
        let bin = find_bin()?;
        let as_user = is_root().then(|| "postgres".to_string());
        let dir = std::env::temp_dir().join(format!("lpmesh-pg-{}-{}", std::process::id(), rand::random::<u32>()));
        std::fs::create_dir_all(&dir).map_err(|e| PgError(e.to_string()))?;
        if let Some(u) = &as_user {
            run(Command::new("chown").arg(format!("{u}:")).arg(&dir))?;
        }
        let port = free_port()?;
        let mut opts = format!(
            "-p {{port}} -k {} -c listen_addresses=127.0.0.1 -c fsync={} -c max_connections=50",
            dir.display(),
            if durable { "on" } else { "off" }
        );
        if let Some((cert, key)) = tls {
            use std::os::unix::fs::PermissionsExt;
            let (c, k) = (dir.join("server.crt"), dir.join("server.key"));
            std::fs::write(&c, cert).map_err(|e| PgError(e.to_string()))?;
            std::fs::write(&k, key).map_err(|e| PgError(e.to_string()))?;
            // PostgreSQL refuses a key others can read, or one its user does not own.
            std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).map_err(|e| PgError(e.to_string()))?;
            if let Some(u) = &as_user {
                run(Command::new("chown").arg(format!("{u}:")).arg(&c).arg(&k))?;
            }
            opts.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                c.display(),
                k.display()
            ));
        }
        let mut pg = TestPg {
            opts,
            dir,
            bin,
            as_user,
            port,
        };
        let data = pg.dir.join("data");
        pg.cmd("initdb", |c| {
            c.args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "-D"])
                .arg(&data);
        })?;
        let opts = pg.opts.replace("{port}", &pg.port.to_string());
        let log = pg.dir.join("server.log");
        let started = pg.cmd("pg_ctl", |c| {
            c.args(["-w", "-t", "30", "-D"])
                .arg(&data)
                .args(["-l"])
                .arg(&log)
                .args(["-o", &opts, "start"]);
        });
        if let Err(e) = started {
            // A port taken in between is the usual cause: try once more on another.
            pg.port = free_port()?;
            let opts = opts.replace(&format!("-p {} ", port), &format!("-p {} ", pg.port));
            pg.cmd("pg_ctl", |c| {
                c.args(["-w", "-t", "30", "-D"])
                    .arg(&data)
                    .args(["-l"])
                    .arg(&log)
                    .args(["-o", &opts, "start"]);
            })
            .map_err(|e2| PgError(format!("{e}; then {e2}")))?;
        }
        Ok(pg)
    }

    fn cmd(&self, tool: &str, args: impl FnOnce(&mut Command)) -> Result<(), PgError> {
        let exe = self.bin.join(tool);
        let mut c = match &self.as_user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        args(&mut c);
        run(&mut c)
    }

    /// A connection string for `tokio_postgres`.
    pub fn url(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres dbname=postgres", self.port)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops the server as a crash does (`pg_ctl stop -m immediate`: no checkpoint, WAL replay at the
    /// next start).
    pub fn crash(&self) -> Result<(), PgError> {
        let data = self.dir.join("data");
        self.cmd("pg_ctl", |c| {
            c.args(["-w", "-D"]).arg(&data).args(["-m", "immediate", "stop"]);
        })
    }

    /// Starts the server again on the same port, with the settings it had.
    pub fn restart(&self) -> Result<(), PgError> {
        let data = self.dir.join("data");
        let log = self.dir.join("server.log");
        let opts = self.opts.replace("{port}", &self.port.to_string());
        self.cmd("pg_ctl", |c| {
            c.args(["-w", "-t", "60", "-D"])
                .arg(&data)
                .args(["-l"])
                .arg(&log)
                .args(["-o", &opts, "start"]);
        })
    }
}

fn run(c: &mut Command) -> Result<(), PgError> {
    let out = c.output().map_err(|e| PgError(format!("{c:?}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(PgError(format!(
            "{c:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

impl Drop for TestPg {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = self.cmd("pg_ctl", |c| {
            c.args(["-w", "-D"]).arg(&data).args(["-m", "immediate", "stop"]);
        });
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
