//! `token create|list|delete` and `node revoke`: who may join the fleet,
//! and who may no longer.

use super::{Table, age};
use crate::client::Client;
use harvester_api::identity::TokenRequest;
use std::time::Duration;

/// Makes a join token and prints it, once: the hub keeps only its hash.
pub async fn token_create(client: &Client, ttl: Duration, uses: u32, description: &str) -> anyhow::Result<()> {
    let created = client
        .create_token(&TokenRequest {
            ttl_seconds: ttl.as_secs().max(1),
            uses,
            description: description.to_string(),
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
    let s = ms.saturating_sub(harvester_api::now_ms()) / 1000;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

pub async fn token_list(client: &Client) -> anyhow::Result<()> {
    let tokens = client.tokens().await?;
    if tokens.is_empty() {
        println!("No join tokens found.");
        return Ok(());
    }
    let mut t = Table::new(["ID", "USES LEFT", "EXPIRES IN", "AGE", "DESCRIPTION"]);
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
