//! `lpmesh hq`: HQ's receiver and dashboard, its users and its stores.

use crate::*;
use lpmesh_hq::config::HqConfig;

use super::runtime;

pub fn run(config: Option<PathBuf>, cmd: Option<HqCommand>) -> Result<ExitCode> {
    match cmd {
        Some(HqCommand::Init { config }) => {
            let cfg = HqConfig::load(&config)?;
            let id = lpmesh_hq::service::init(&cfg)?;
            print_identity(&id);
            Ok(ExitCode::SUCCESS)
        }
        Some(HqCommand::RegisterStore { config, store, key }) => {
            let cfg = HqConfig::load(&config)?;
            runtime()?.block_on(lpmesh_hq::service::register_store(&cfg, &store, &key))?;
            println!("store {store} registered");
            Ok(ExitCode::SUCCESS)
        }
        Some(HqCommand::UnregisterStore { config, store }) => {
            let cfg = HqConfig::load(&config)?;
            if runtime()?.block_on(lpmesh_hq::service::unregister_store(&cfg, &store))? {
                println!(
                    "store {store} unregistered: its uploads are refused within {} s; its summaries stay",
                    lpmesh_hq::store::KEY_TTL.as_secs()
                );
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("no registered store named {store}");
                Ok(ExitCode::FAILURE)
            }
        }
        Some(HqCommand::User(cmd)) => user(cmd),
        Some(HqCommand::Summaries { config, store }) => {
            let cfg = HqConfig::load(&config)?;
            let rows = runtime()?.block_on(async {
                let db = lpmesh_hq::store::HqStore::open(
                    &cfg.data_dir,
                    cfg.database_url.as_deref(),
                    cfg.database_connections,
                )
                .await?;
                db.summaries(&lpmesh_hq::store::Filter {
                    store,
                    ..Default::default()
                })
                .await
            })?;
            let mut out = std::io::stdout().lock();
            for r in rows {
                writeln!(out, "{}", serde_json::to_string(&r.summary)?)?;
            }
            Ok(ExitCode::SUCCESS)
        }

        None => {
            let config = config.context("lpmesh hq needs --config FILE (see config/hq.example.toml)")?;
            let cfg = HqConfig::load(&config)?;
            serve(&cfg)
        }
    }
}

fn user(cmd: HqUserCommand) -> Result<ExitCode> {
    use lpmesh_hq::access::{new_user, HqRole};
    match cmd {
        HqUserCommand::Add {
            config,
            name,
            role,
            stores,
            password_stdin,
        } => {
            let cfg = HqConfig::load(&config)?;
            let role = HqRole::parse(&role).context("--role is admin or viewer")?;
            let stores: Vec<String> = stores.into_iter().filter(|s| !s.is_empty()).collect();
            let password = super::store::read_password(password_stdin)?;
            let now = chrono::Utc::now().timestamp_millis();
            let user = new_user(&name, role, stores, &password, now)?;
            runtime()?.block_on(lpmesh_hq::service::put_user(&cfg, user))?;
            println!("HQ user {name} ({}) saved; it can log in at once", role.as_str());
        }
        HqUserCommand::Remove { config, name } => {
            let cfg = HqConfig::load(&config)?;
            if !runtime()?.block_on(lpmesh_hq::service::remove_user(&cfg, &name))? {
                eprintln!("no HQ user named {name}");
                return Ok(ExitCode::FAILURE);
            }
            println!("HQ user {name} removed; their sessions end at their next request");
        }
        HqUserCommand::List { config } => {
            let cfg = HqConfig::load(&config)?;
            for u in runtime()?.block_on(lpmesh_hq::service::users(&cfg))? {
                let scope = if u.stores.is_empty() {
                    "every store".to_string()
                } else {
                    u.stores.join(",")
                };
                println!("{:<24} {:<7} {scope}", u.name, u.role.as_str());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_identity(id: &lpmesh_hq::service::Identity) {
    println!("HQ recipient    {}", id.recipient);
    println!(
        "certificate     {}{}",
        id.cert_path.display(),
        if id.self_signed { " (self-signed)" } else { "" }
    );
    println!("fingerprint     SHA-256 {}", id.fingerprint);
    println!(
        "stores need:    [hq] url = \"https://HOST:PORT\", recipient = \"{}\"{}",
        id.recipient,
        if id.self_signed {
            ", ca_cert = (a copy of the certificate above)"
        } else {
            ""
        }
    );
}

fn serve(cfg: &HqConfig) -> Result<ExitCode> {
    let stop = stop_flag();
    runtime()?.block_on(async {
        let started = lpmesh_hq::service::start(cfg).await?;
        print_identity(&started.identity);
        println!(
            "HQ uploads on https://{} ({} store); dashboard (login) at https://{}/",
            started.running.addr,
            started.state.store.kind(),
            started.dashboard.addr
        );
        if started.users == 0 {
            println!("no HQ user yet: add one with `lpmesh hq user add --config FILE --name NAME --role admin`");
        }
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        started.shutdown(std::time::Duration::from_secs(5)).await;
        println!("HQ stopped");
        Ok(ExitCode::SUCCESS)
    })
}
