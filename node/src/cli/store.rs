//! The store's membership and secrets: `init`, `invite`, `join`, `members`, `revoke`, `store-key`,
//! `store-ca`, `status` and the tablet users (`user`).

use crate::*;

pub fn store_key(data: &Path) -> Result<ExitCode> {
    let secrets = lpmesh_mesh::keys::StoreSecrets::load(data)?;
    let key = secrets.signing_key()?.public();
    let text = lpmesh_hq::envelope::store_key_to_string(&key).context("the store key is not Ed25519")?;
    println!("{text}");
    eprintln!(
        "register it at HQ: lpmesh hq register-store --config HQ.toml --store {} --key {text}",
        secrets.store
    );
    Ok(ExitCode::SUCCESS)
}

pub fn store_ca(data: &Path, out: Option<PathBuf>) -> Result<ExitCode> {
    let secrets = lpmesh_mesh::keys::StoreSecrets::load(data)?;
    // What the node serves now (after a revocation, its key epoch's CA), else the store's.
    let current = std::fs::read_to_string(data.join("ui-tls").join(lpmesh_node::runtime::ui::CURRENT_CA_FILE)).ok();
    let Some(cert_pem) = current.or(secrets.ui_ca.map(|c| c.cert_pem)) else {
        eprintln!(
            "store {} has no certificate authority (made before store CAs): each node's UI shows its own, from https://NODE:PORT/ca.crt",
            secrets.store
        );
        return Ok(ExitCode::FAILURE);
    };
    let der = lpmesh_web::tls::first_der(&cert_pem).context("the store's CA certificate is not PEM")?;
    println!("SHA-256 {}", lpmesh_web::tls::fingerprint(&der));
    if let Some(out) = out {
        std::fs::write(&out, &cert_pem).with_context(|| format!("cannot write {}", out.display()))?;
        eprintln!("store {}'s CA certificate written to {}", secrets.store, out.display());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn revoke(node: &str, data: &Path) -> Result<ExitCode> {
    let revoked = lpmesh_node::node::revoke(data, node)?;
    println!("revoked {revoked}: start this node; every member drops it as soon as it hears");
    Ok(ExitCode::SUCCESS)
}

pub fn members(data: &Path, json: bool) -> Result<ExitCode> {
    let Some(list) = lpmesh_node::node::read_members(data)? else {
        println!(
            "this store has no member list (created before invitations): every holder of its network key can connect"
        );
        return Ok(ExitCode::SUCCESS);
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        for m in &list {
            let when = m
                .admitted_at_ms
                .and_then(chrono::DateTime::from_timestamp_millis)
                .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
                .unwrap_or_default();
            match (&m.admitted_by, m.founder) {
                (_, true) => println!("{}  founder", m.node),
                (Some(by), _) => println!(
                    "{}  admitted by {by} at {when}, priority {}",
                    m.node,
                    m.priority.unwrap_or(0)
                ),
                (None, _) => println!("{}", m.node),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn init(store: &str, data: &Path, manager: Option<String>, password_stdin: bool) -> Result<ExitCode> {
    // Checked before anything is created: a refused password leaves no half-made store.
    let first = match manager {
        Some(name) => {
            let password = read_password(password_stdin)?;
            lpmesh_node::ui::auth::check_new_user(&name, &password)?;
            Some((name, password))
        }
        None => None,
    };
    let peer = lpmesh_node::node::init(store, data)?;
    println!("store {store} created in {}; this node is {peer}", data.display());
    if let Some((name, password)) = first {
        lpmesh_node::ui::auth::Users::new(data).add(&name, lpmesh_node::ui::auth::Role::Manager, &password)?;
        println!("manager {name} can log in on every node of the store once this node runs");
    }
    println!(
        "next: start this node, then `lpmesh invite --data {}` makes a single-use invitation for each other node",
        data.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[allow(clippy::too_many_arguments)]
pub fn invite(
    data: PathBuf,
    bootstrap: Vec<String>,
    expires: std::time::Duration,
    enrol: Option<String>,
    serve: Option<String>,
    priority: u8,
    node: Option<String>,
) -> Result<ExitCode> {
    let grant = lpmesh_mesh::enrol::Grant { name: node, priority };
    let show = |inv: &lpmesh_mesh::enrol::Invitation, token: &lpmesh_mesh::enrol::Token| {
        eprintln!(
            "invitation {} for store {}: works once, until {} UTC; on the new node run `lpmesh join --data DIR` and paste it",
            inv.id,
            inv.store,
            chrono::DateTime::from_timestamp_millis(inv.expires_ms as i64)
                .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
                .unwrap_or_default()
        );
        println!("{}", token.encode());
        let _ = std::io::Write::flush(&mut std::io::stdout());
    };
    match serve {
        Some(listen) => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let admitted = rt.block_on(lpmesh_node::node::invite_and_serve(
                &data, bootstrap, expires, grant, &listen, show,
            ))?;
            eprintln!("admitted node {}", admitted.node.to_peer_id());
        }
        None => {
            let (inv, token) = lpmesh_node::node::invite(&data, bootstrap, expires, grant, enrol)?;
            show(&inv, &token);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn join(data: &Path, token_file: Option<PathBuf>) -> Result<ExitCode> {
    let token = match token_file {
        Some(f) => std::fs::read_to_string(&f).with_context(|| format!("reading the token from {}", f.display()))?,
        None => {
            if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                eprintln!("paste the invitation token and press Enter:");
            }
            let mut line = String::new();
            std::io::BufRead::read_line(&mut std::io::stdin().lock(), &mut line)
                .context("reading the token from standard input")?;
            line
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let admitted_as = lpmesh_mesh::enrol::Token::decode(&token).ok().and_then(|t| t.name);
    let (store, bootstrap, peer) = rt.block_on(lpmesh_node::node::join(&token, data))?;
    println!("joined store {store} in {}; this node is {peer}", data.display());
    if let Some(name) = admitted_as {
        println!("admitted as node {name:?}: its configuration must say node = {name:?}");
    }
    if !bootstrap.is_empty() {
        println!("add to [mesh] bootstrap in this node's configuration: {bootstrap:?}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn read_password(from_stdin: bool) -> Result<String> {
    use std::io::{BufRead, IsTerminal};
    let tty = !from_stdin && std::io::stdin().is_terminal();
    if tty {
        eprint!("password: ");
        // Keep the password off the screen.
        let _ = std::process::Command::new("stty").arg("-echo").status();
    }
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    if tty {
        let _ = std::process::Command::new("stty").arg("echo").status();
        eprintln!();
    }
    read.context("cannot read the password")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

pub fn user(cmd: UserCommand) -> Result<ExitCode> {
    use lpmesh_node::ui::auth::{Role, Users};
    match cmd {
        UserCommand::Add {
            data,
            role,
            name,
            password_stdin,
        } => {
            let role = Role::parse(&role).context("--role is manager or security")?;
            let password = read_password(password_stdin)?;
            Users::new(&data).add(&name, role, &password)?;
            println!(
                "user {name} ({role:?}) saved in {}; every node of the store takes it once this node runs",
                data.display()
            );
        }
        UserCommand::Remove { data, name } => {
            let here = Users::new(&data).remove(&name)?;
            let whose = if here {
                ""
            } else {
                " (not in this node's file: removed from the store all the same)"
            };
            println!("user {name} removed{whose}; every node of the store ends its sessions once this node runs");
        }
        UserCommand::List { data } => {
            let view = std::fs::read(data.join(lpmesh_node::ui::auth::VIEW_FILE))
                .ok()
                .and_then(|b| serde_json::from_slice::<lpmesh_node::ui::auth::UsersView>(&b).ok());
            match view {
                Some(v) => {
                    for (name, role) in &v.users {
                        println!("{name:<24} {role:?}");
                    }
                    let at = chrono::DateTime::from_timestamp_millis(v.at_ms)
                        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
                        .unwrap_or_default();
                    eprintln!("the store's users as this node last saw them ({at}); changes made here since appear once it runs");
                }
                None => {
                    for u in Users::new(&data).load()? {
                        println!("{:<24} {:?}", u.name, u.role);
                    }
                    eprintln!("this node's own file: the store's list appears here once the node has run");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn status(data: &Path, json: bool) -> Result<ExitCode> {
    let Some((st, age_ms)) = lpmesh_node::uplink::read_status(data)
        .with_context(|| format!("cannot read the uplink status in {}", data.display()))?
    else {
        println!(
            "no uplink status in {}: the node has not run with an [hq] section yet",
            data.display()
        );
        return Ok(ExitCode::FAILURE);
    };
    if json {
        println!("{}", serde_json::to_string(&st)?);
        return Ok(ExitCode::SUCCESS);
    }
    let when = |ms: Option<i64>| {
        ms.and_then(chrono::DateTime::from_timestamp_millis)
            .map_or("never".to_string(), |t| {
                let ago = (chrono::Utc::now() - t).num_seconds().max(0);
                format!("{} ({ago} s ago)", t.format("%Y-%m-%d %H:%M:%S UTC"))
            })
    };
    println!("node            {}", st.node);
    println!(
        "uplink leader   {}{}",
        st.leader.as_deref().unwrap_or("none (no heartbeats heard)"),
        if st.am_leader { "  (this node)" } else { "" }
    );
    println!(
        "HQ              {} ({})",
        st.hq_url,
        if st.hq_reachable { "reachable" } else { "unreachable" }
    );
    println!("last sync       {}", when(st.last_sync_ms));
    println!(
        "outbox          {} period(s) waiting, {} held by HQ as here",
        st.outbox, st.periods_done
    );
    if let Some(e) = &st.last_error {
        println!("last error      {e}");
    }
    if age_ms > 10_000 {
        println!(
            "(written {} s ago: the node is not running, or is stuck)",
            age_ms / 1000
        );
    }
    Ok(ExitCode::SUCCESS)
}
