//! Who may touch the fleet: join tokens and node revocation (`token`,
//! `node revoke`), users (`user`), the audit trail (`audit`), and this
//! client's own configuration (`login`, `logout`, `config`).

use super::{Table, age};
use crate::client::Client;
use anyhow::{Context as _, bail};
use harvester_api::identity::{ClientConfig, Context, Role, TokenRequest, UserRequest};
use std::path::Path;
use std::time::Duration;

/// Makes a join token and prints it, once: the hub keeps only its hash.
pub async fn token_create(
    client: &Client,
    ttl: Duration,
    uses: u32,
    description: &str,
    labels: Option<harvester_api::resources::Labels>,
) -> anyhow::Result<()> {
    let created = client
        .create_token(&TokenRequest {
            ttl_seconds: ttl.as_secs().max(1),
            uses,
            description: description.to_string(),
            labels,
        })
        .await?;
    println!("{}", created.token);
    eprintln!(
        "join token {}: {} use{}, expires in {}; shown once, keep it secret (a board reads it with --join-token-file)",
        created.info.id,
        uses,
        if uses == 1 { "" } else { "s" },
        until(created.info.expires)
    );
    Ok(())
}

fn until(ms: u64) -> String {
    super::span(ms.saturating_sub(harvester_api::now_ms()) / 1000)
}

pub async fn token_list(client: &Client) -> anyhow::Result<()> {
    let tokens = client.tokens().await?;
    if tokens.is_empty() {
        println!("No join tokens found.");
        return Ok(());
    }
    let mut t = Table::new(["ID", "USES LEFT", "EXPIRES IN", "AGE", "LABELS", "DESCRIPTION"]);
    let now = harvester_api::now_ms();
    for tok in tokens {
        let expires = if tok.expires <= now {
            "expired".to_string()
        } else {
            until(tok.expires)
        };
        t.row(vec![
            tok.id,
            tok.uses_left.to_string(),
            expires,
            age(tok.created),
            tok.labels
                .map_or_else(|| "(the board's, once)".to_string(), |l| super::labels(&l)),
            tok.description,
        ]);
    }
    t.print();
    Ok(())
}

pub async fn token_delete(client: &Client, id: &str) -> anyhow::Result<()> {
    client.delete_token(id).await?;
    println!("join token {id} deleted");
    Ok(())
}

pub async fn node_revoke(client: &Client, name: &str) -> anyhow::Result<()> {
    let r = client.revoke_node(name).await?;
    println!(
        "node/{} revoked: {} certificate{} stopped working; the board keeps running its plugins and needs a new join token to come back",
        r.node,
        r.certificates,
        if r.certificates == 1 { "" } else { "s" }
    );
    Ok(())
}

pub async fn user_create(client: &Client, name: &str, role: Role) -> anyhow::Result<()> {
    let created = client
        .create_user(&UserRequest {
            name: name.to_string(),
            role,
        })
        .await?;
    println!("{}", created.token);
    eprintln!(
        "user {} ({}) created; the token is shown once: give it to them for harvester login or the dashboard",
        created.info.name,
        created.info.role.as_str()
    );
    Ok(())
}

pub async fn user_list(client: &Client) -> anyhow::Result<()> {
    let mut t = Table::new(["NAME", "ROLE", "AGE"]);
    for u in client.users().await? {
        t.row(vec![u.name, u.role.as_str().to_string(), age(u.created)]);
    }
    t.print();
    Ok(())
}

pub async fn user_delete(client: &Client, name: &str) -> anyhow::Result<()> {
    client.delete_user(name).await?;
    println!("user {name} deleted: its token, sessions and open watches ended");
    Ok(())
}

pub async fn whoami(client: &Client) -> anyhow::Result<()> {
    let me = client.whoami().await?;
    println!("{} ({})", me.user, me.role.as_str());
    Ok(())
}

/// `since`: how far back.
pub async fn audit(client: &Client, since: Duration, user: Option<&str>) -> anyhow::Result<()> {
    let from = harvester_api::now_ms().saturating_sub(since.as_millis() as u64);
    let entries = client.audit(from, user).await?;
    if entries.is_empty() {
        println!("No writes recorded.");
        return Ok(());
    }
    let mut t = Table::new(["TIME", "USER", "ROLE", "ACTION", "STATUS", "OUTCOME", "SOURCE"]);
    for e in entries {
        t.row(vec![
            harvester_pki::rfc3339(std::time::UNIX_EPOCH + Duration::from_millis(e.time)),
            e.user,
            if e.role.is_empty() { "-".into() } else { e.role },
            e.action,
            e.status.to_string(),
            e.outcome,
            e.source,
        ]);
    }
    t.print();
    Ok(())
}

/// Reads a token from a file, or stdin for `-`.
fn read_token(file: &Path) -> anyhow::Result<String> {
    let text = if file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin().read_line(&mut s)?;
        s
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read the token {}", file.display()))?
    };
    Ok(text.trim().to_string())
}

/// Logs in to the hub at `server` with a user's token: checks the hub
/// presents the CA the token names, asks who the token is, and writes a
/// context (server, CA, credential) into the client configuration, made
/// current.
pub async fn login(
    server: &str,
    token_file: &Path,
    context: Option<&str>,
    config: Option<&Path>,
) -> anyhow::Result<()> {
    let token = harvester_pki::JoinToken::parse_user_token(&read_token(token_file)?).map_err(|_| {
        anyhow::anyhow!("not a user token: expected H10<CA hash>::<user>.<secret> as harvester user create prints it")
    })?;
    let url = reqwest::Url::parse(server).with_context(|| format!("{server:?} is not a URL"))?;
    if url.scheme() != "https" {
        bail!("{server}: login is for hubs speaking TLS (https://HOST:PORT)");
    }
    let host = url.host_str().context("the URL has no host")?.to_string();
    let port = url.port_or_known_default().unwrap_or(443);
    let probe = token.clone();
    let ca = tokio::task::spawn_blocking(move || {
        harvester_pki::tls::probe_hub(&host, port, &probe, std::time::Duration::from_secs(5))
    })
    .await?
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let server = server.trim_end_matches('/').to_string();
    let name = context.map(str::to_string).unwrap_or_else(|| {
        format!("{}@{}", token.id, url.host_str().unwrap_or_default())
            + &url.port().map(|p| format!(":{p}")).unwrap_or_default()
    });
    let ctx = Context {
        name: name.clone(),
        server: server.clone(),
        certificate_authority_data: ca,
        token: token.credential(),
    };
    // Checked before it is written: a wrong or deleted token is refused now.
    let path = match config {
        Some(p) => p.to_path_buf(),
        None => crate::client::default_config_path().context("no HOME: give --config FILE")?,
    };
    let mut file = if path.exists() {
        crate::client::read_config(&path)?
    } else {
        ClientConfig::default()
    };
    let probe_config = ClientConfig {
        current_context: name.clone(),
        contexts: vec![ctx.clone()],
    };
    let tmp = tempfile::NamedTempFile::new()?;
    crate::client::write_config(tmp.path(), &probe_config)?;
    let me = Client::new(None, Some(tmp.path()), None)?.whoami().await?;
    file.upsert(ctx);
    file.current_context = name.clone();
    crate::client::write_config(&path, &file)?;
    println!(
        "logged in to {server} as {} ({}); context {name} is current, in {}",
        me.user,
        me.role.as_str(),
        path.display()
    );
    Ok(())
}

fn config_file(config: Option<&Path>) -> anyhow::Result<(std::path::PathBuf, ClientConfig)> {
    let path = crate::client::config_path(config).context(
        "no client configuration: harvester login URL --token-file FILE makes one (or set HARVESTER_CONFIG)",
    )?;
    let file = crate::client::read_config(&path)?;
    Ok((path, file))
}

/// Forgets a context (the current one by default).
pub fn logout(context: Option<&str>, config: Option<&Path>) -> anyhow::Result<()> {
    let (path, mut file) = config_file(config)?;
    let name = file
        .context(context)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        .name
        .clone();
    file.contexts.retain(|c| c.name != name);
    if file.current_context == name {
        file.current_context = String::new();
    }
    crate::client::write_config(&path, &file)?;
    println!("logged out of {name}: its credential is gone from {}", path.display());
    Ok(())
}

pub fn use_context(name: &str, config: Option<&Path>) -> anyhow::Result<()> {
    let (path, mut file) = config_file(config)?;
    file.context(Some(name))
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    file.current_context = name.to_string();
    crate::client::write_config(&path, &file)?;
    println!("switched to context {name}");
    Ok(())
}

pub fn get_contexts(config: Option<&Path>) -> anyhow::Result<()> {
    let (_, file) = config_file(config)?;
    let mut t = Table::new(["CURRENT", "NAME", "SERVER", "USER"]);
    for c in &file.contexts {
        t.row(vec![
            if c.name == file.current_context {
                "*".into()
            } else {
                String::new()
            },
            c.name.clone(),
            c.server.clone(),
            c.token.split('.').next().unwrap_or_default().to_string(),
        ]);
    }
    t.print();
    Ok(())
}
